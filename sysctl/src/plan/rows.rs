//! One [`Limit`] per constraint: the setting as it stands and how many
//! sessions fit under it. Unsorted; [`super::compute`] orders them.

use super::{
    usable_memory, Limit, LimitKind, PlanRequest, Scope, LOOPBACK_SOURCES, STORM_SKB_BYTES,
};
use crate::facts::HostFacts;
use crate::limits::FD_HEADROOM;
use crate::plan::Role;
use crate::units::{bytes, grouped};

/// Every limit that applies to `request` on a host with `facts`.
pub(super) fn limits(
    request: &PlanRequest,
    facts: &HostFacts,
    bytes_per_session: u64,
) -> Vec<Limit> {
    let sockets = request.role.sockets_per_session();
    let raisable = if facts.nofile_hard_raisable {
        "raisable to fs.nr_open (CAP_SYS_RESOURCE)"
    } else {
        "cannot be raised: no CAP_SYS_RESOURCE"
    };
    let mut rows = vec![
        Limit {
            kind: LimitKind::NofileHard,
            name: "RLIMIT_NOFILE hard",
            setting: format!("{}, {raisable}", nofile(facts.nofile_hard)),
            sessions: facts.nofile_hard.saturating_sub(FD_HEADROOM),
            scope: Scope::PerProcess,
        },
        Limit {
            kind: LimitKind::NofileSoft,
            name: "RLIMIT_NOFILE soft",
            setting: format!(
                "{}, raisable to hard (ulimit -n)",
                nofile(facts.nofile_soft)
            ),
            sessions: facts.nofile_soft.saturating_sub(FD_HEADROOM),
            scope: Scope::PerProcess,
        },
        Limit {
            kind: LimitKind::NrOpen,
            name: "fs.nr_open",
            setting: grouped(facts.nr_open),
            sessions: facts.nr_open.saturating_sub(FD_HEADROOM),
            scope: Scope::PerProcess,
        },
        Limit {
            kind: LimitKind::Memory,
            name: "memory",
            setting: format!(
                "{} usable of {} available, {} B/session",
                bytes(usable_memory(facts)),
                bytes(facts.mem_available_bytes),
                grouped(bytes_per_session)
            ),
            sessions: usable_memory(facts) / bytes_per_session,
            scope: Scope::Host,
        },
        Limit {
            kind: LimitKind::FileMax,
            name: "fs.file-max",
            setting: format!(
                "{} ({} open now)",
                grouped(facts.file_max),
                grouped(facts.files_open)
            ),
            sessions: facts.file_max.saturating_sub(facts.files_open) / sockets,
            scope: Scope::Host,
        },
        Limit {
            kind: LimitKind::TcpMem,
            name: "net.ipv4.tcp_mem max (storm)",
            setting: format!(
                "{} pages = {}",
                grouped(facts.tcp_mem_pages[2]),
                bytes(tcp_mem_max_bytes(facts))
            ),
            sessions: tcp_mem_max_bytes(facts) / (sockets * STORM_SKB_BYTES),
            scope: Scope::Host,
        },
    ];
    if let Some(watches) = facts.epoll_max_user_watches {
        rows.push(Limit {
            kind: LimitKind::EpollWatches,
            name: "fs.epoll.max_user_watches",
            setting: format!("{} per user", grouped(watches)),
            sessions: watches / sockets,
            scope: Scope::Host,
        });
    }
    if let Some(max) = facts.conntrack_max {
        let used = facts.conntrack_count.unwrap_or(0);
        rows.push(Limit {
            kind: LimitKind::Conntrack,
            name: "net.netfilter.nf_conntrack_max",
            setting: format!("{} ({} in use)", grouped(max), grouped(used)),
            sessions: max.saturating_sub(used),
            // Nothing tracked, not even this host's own connections: the
            // hooks are off, so the table binds only once a rule needs it.
            scope: if used == 0 {
                Scope::HostIfTracked
            } else {
                Scope::Host
            },
        });
    }
    if request.role != Role::Server {
        let ports = usable_ephemeral_ports(facts);
        let sources = source_addrs(request);
        rows.push(Limit {
            kind: LimitKind::EphemeralPorts,
            name: "ephemeral ports (4-tuples)",
            setting: format!(
                "{} ports x {} sources x {} target port(s)",
                grouped(ports),
                grouped(sources),
                grouped(request.target_ports)
            ),
            sessions: ports
                .saturating_mul(sources)
                .saturating_mul(request.target_ports),
            scope: Scope::Host,
        });
    }
    rows
}

fn nofile(value: u64) -> String {
    if value == u64::MAX {
        "unlimited".to_string()
    } else {
        grouped(value)
    }
}

pub(super) fn tcp_mem_max_bytes(facts: &HostFacts) -> u64 {
    facts.tcp_mem_pages[2].saturating_mul(facts.page_size_bytes)
}

/// Ephemeral ports connect() may pick: the range less reserved ports in it.
pub(super) fn usable_ephemeral_ports(facts: &HostFacts) -> u64 {
    facts.port_range.port_count() - facts.reserved_ports.count_within(facts.port_range)
}

/// Source addresses the loadgen spreads over.
pub(super) fn source_addrs(request: &PlanRequest) -> u64 {
    request.source_addrs.unwrap_or(match request.role {
        Role::Both => LOOPBACK_SOURCES,
        Role::Server | Role::Loadgen => 1,
    })
}
