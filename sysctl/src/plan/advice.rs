//! What to change: one recommendation per limit that holds fewer sessions
//! than requested, with the value that would let them fit, plus the notes
//! that explain the arithmetic (two sockets per loopback session, where the
//! per-socket figure comes from, what tcp_mem's row assumes).

use super::rows::{source_addrs, tcp_mem_max_bytes, usable_ephemeral_ports};
use super::{LimitKind, Plan, Role, Scope, REUSEPORT_SIGMAS, STORM_SKB_BYTES};
use crate::limits::nofile_for;
use crate::units::{bytes, grouped};

/// Bytes of one conntrack entry (nf_conntrack slab object), for sizing.
const CONNTRACK_ENTRY_BYTES: u64 = 320;

/// Fill `plan.changes` and `plan.notes`.
pub(super) fn advise(plan: &mut Plan) {
    let n = plan.request.sessions;
    let mut changes = Vec::new();
    descriptor_advice(plan, &mut changes);
    for limit in plan.limits.iter().filter(|l| l.sessions < n) {
        match limit.scope {
            Scope::Host => changes.push(host_advice(plan, limit.kind, limit.sessions)),
            Scope::HostIfTracked => changes.push(format!(
                "only if conntrack starts tracking the sessions (it tracks nothing now): {}",
                host_advice(plan, limit.kind, limit.sessions)
            )),
            Scope::PerProcess => {}
        }
    }
    if let Some(change) = reserved_port_advice(plan) {
        changes.push(change);
    }
    if changes.is_empty() {
        changes.push(format!(
            "nothing: {} sessions fit as the host stands",
            grouped(n)
        ));
    }
    plan.changes = changes;
    plan.notes = notes(plan);
}

/// RLIMIT_NOFILE and fs.nr_open: raise what may be raised, else split.
fn descriptor_advice(plan: &Plan, changes: &mut Vec<String>) {
    let n = plan.request.sessions;
    let facts = &plan.facts;
    let needed = nofile_for(n);
    if n <= plan.per_process_max {
        if facts.nofile_hard < needed {
            changes.push(format!(
                "raise RLIMIT_NOFILE to {needed} (hard {} today; this process may raise it): \
                 `c10m-sysctl limits --sessions {n}` prints the systemd LimitNOFILE= drop-in \
                 and the limits.conf lines",
                grouped(facts.nofile_hard)
            ));
        } else if facts.nofile_soft < needed {
            changes.push(format!(
                "raise the soft RLIMIT_NOFILE to {needed} (`ulimit -n {needed}`; the hard \
                 limit {} allows it, no privilege needed)",
                grouped(facts.nofile_hard)
            ));
        }
        return;
    }
    let split = plan
        .processes
        .iter()
        .map(|split| {
            let how = if split.role == "server" && split.processes > 1 {
                format!(
                    " (one port via SO_REUSEPORT; its hash is uneven, so each is sized for \
                     the mean {} + {REUSEPORT_SIGMAS}σ)",
                    grouped(n / split.processes)
                )
            } else {
                String::new()
            };
            format!(
                "{} {} processes of at most {} sessions each{how}",
                split.processes,
                split.role,
                grouped(split.sessions_each)
            )
        })
        .collect::<Vec<_>>()
        .join(" and ");
    if facts.nofile_hard_raisable {
        changes.push(format!(
            "one process cannot exceed fs.nr_open ({}): set fs.nr_open >= {needed} and \
             RLIMIT_NOFILE to {needed} (`c10m-sysctl limits --sessions {n}`), or run {split}",
            grouped(facts.nr_open)
        ));
    } else {
        let soft = if facts.nofile_soft < facts.nofile_hard {
            format!(", each raising its soft limit to {}", facts.nofile_hard)
        } else {
            String::new()
        };
        // RLIMIT_NOFILE bounds each descriptor table, and the server and
        // loadgen give each worker its own: one process per role holds the
        // sessions with enough workers.
        let tables = n.div_ceil(plan.per_process_max.max(1));
        changes.push(format!(
            "the hard RLIMIT_NOFILE is {} and cannot be raised here (no CAP_SYS_RESOURCE), \
             so one descriptor table holds at most {} sessions. It bounds each table, not the \
             process: run one process per role with a table per worker — c10m-server \
             --max-sessions {n} (its --descriptors auto takes io_uring direct descriptors, \
             else a table per worker thread, and {tables} or more workers) and c10m-loadgen \
             (each driver thread has its own table: {tables} or more drivers) — or run \
             {split}{soft}",
            grouped(facts.nofile_hard),
            grouped(plan.per_process_max)
        ));
    }
}

/// The change that lifts one host-wide limit to `n` sessions.
fn host_advice(plan: &Plan, kind: LimitKind, fits: u64) -> String {
    let n = plan.request.sessions;
    let sockets = plan.sockets_per_session;
    let facts = &plan.facts;
    match kind {
        LimitKind::Memory => format!(
            "memory: {} sessions need {} ({} B each) but {} is usable, enough for {}; \
             lower --sessions, add RAM, or split the roles over hosts",
            grouped(n),
            bytes(n.saturating_mul(plan.bytes_per_session)),
            grouped(plan.bytes_per_session),
            bytes(plan.usable_memory_bytes),
            grouped(fits)
        ),
        LimitKind::FileMax => format!(
            "set fs.file-max >= {} ({} open now + {} sessions x {sockets} descriptors)",
            grouped(facts.files_open + n * sockets),
            grouped(facts.files_open),
            grouped(n)
        ),
        LimitKind::EpollWatches => format!(
            "set fs.epoll.max_user_watches >= {} ({} sessions x {sockets} watches; \
             epoll backend, counted per user)",
            grouped(n * sockets),
            grouped(n)
        ),
        LimitKind::Conntrack => format!(
            "set net.netfilter.nf_conntrack_max >= {} (one entry per connection, ~{} B \
             each = {}), or keep conntrack off the session path (raw-table NOTRACK)",
            grouped(n + facts.conntrack_count.unwrap_or(0)),
            CONNTRACK_ENTRY_BYTES,
            bytes(n * CONNTRACK_ENTRY_BYTES)
        ),
        LimitKind::TcpMem => {
            let pages = (n * sockets * STORM_SKB_BYTES).div_ceil(facts.page_size_bytes);
            format!(
                "set net.ipv4.tcp_mem max >= {} pages ({}) so a synchronized heartbeat \
                 storm is not dropped (today {})",
                grouped(pages),
                bytes(pages * facts.page_size_bytes),
                bytes(tcp_mem_max_bytes(facts))
            )
        }
        LimitKind::EphemeralPorts => {
            let per_source = usable_ephemeral_ports(facts) * plan.request.target_ports;
            format!(
                "the 4-tuple space holds {} connections: use >= {} source addresses \
                 (--source-addrs; the loadgen binds each with IP_BIND_ADDRESS_NO_PORT), \
                 more target ports, or a wider net.ipv4.ip_local_port_range",
                grouped(fits),
                grouped(n.div_ceil(per_source.max(1)))
            )
        }
        LimitKind::NofileHard | LimitKind::NofileSoft | LimitKind::NrOpen => String::new(),
    }
}

/// When connect() may pick the server's port, reserve it.
fn reserved_port_advice(plan: &Plan) -> Option<String> {
    let facts = &plan.facts;
    let port = plan.request.server_port;
    let exposed = plan.request.role != Role::Server
        && facts.port_range.contains(port)
        && !facts.reserved_ports.contains(port);
    exposed.then(|| {
        format!(
            "reserve the server's ports: net.ipv4.ip_local_reserved_ports = {port}-{} \
             (ip_local_port_range {}-{} includes port {port}, so a client socket could take it)",
            port.saturating_add(99),
            facts.port_range.low,
            facts.port_range.high
        )
    })
}

fn notes(plan: &Plan) -> Vec<String> {
    let request = &plan.request;
    let mut notes = Vec::new();
    if request.role == Role::Both {
        notes.push(
            "role both: server and loadgen share this host, so each session is a loopback \
             connection with two sockets (one per end): 2 descriptors, 2 epoll watches, \
             2 x the per-socket kernel memory"
                .to_string(),
        );
    }
    notes.push(format!(
        "kernel memory per socket {} B (measured here: TCP 2,368 + sock_inode 832 + dentry \
         192 + filp 192 + epoll item 128; --per-socket-bytes overrides); user memory {} B \
         per end; {}% of RAM is kept free",
        grouped(request.per_socket_bytes),
        request.user_bytes_per_end,
        super::MEMORY_RESERVE_PERCENT
    ));
    notes.push(format!(
        "tcp_mem is no cap on idle sessions: its row assumes a storm in which every socket \
         holds one ~{} skb at once",
        bytes(STORM_SKB_BYTES)
    ));
    if plan.limits.iter().any(|l| l.kind == LimitKind::Conntrack) {
        notes.push(
            "nf_conntrack is loaded: its table binds only while a stateful rule or NAT makes \
             it track the sessions; with 0 entries in use it is left out of the verdict"
                .to_string(),
        );
    }
    if request.role != Role::Server {
        let facts = &plan.facts;
        notes.push(format!(
            "ephemeral ports: {}-{} less {} reserved = {} per (source address, target \
             address, target port)",
            facts.port_range.low,
            facts.port_range.high,
            grouped(facts.reserved_ports.count_within(facts.port_range)),
            grouped(usable_ephemeral_ports(facts))
        ));
    }
    if request.role != Role::Server && request.source_addrs.is_none() {
        notes.push(format!(
            "source addresses: {} assumed ({}); pass --source-addrs",
            grouped(source_addrs(request)),
            if request.role == Role::Both {
                "127.0.0.0/8 for the loopback testbed"
            } else {
                "one host address"
            }
        ));
    }
    notes
}
