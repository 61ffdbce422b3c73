//! `plan`: how many sessions fit on a host, which limit binds first, and
//! what to change.
//!
//! Pure: [`compute`] takes a [`PlanRequest`] and [`HostFacts`] and touches
//! nothing, so tests feed fixed facts. Every limit is turned into "sessions
//! that fit under it", with its scope:
//! - per process: RLIMIT_NOFILE soft and hard, fs.nr_open. More processes
//!   get around these (the design's supervisor runs K processes sharing a
//!   port with SO_REUSEPORT), so they decide the process count, not whether
//!   the host can hold the sessions.
//! - host: memory, fs.file-max, fs.epoll.max_user_watches, the ephemeral
//!   4-tuple space, nf_conntrack_max, and tcp_mem under a heartbeat storm.
//!
//! With role `both` (server and loadgen on one host, over loopback) every
//! session is a connection with two ends, so two sockets, two descriptors
//! and two epoll watches; the report says so.

mod advice;
mod report;
mod rows;

use serde::Serialize;
use thiserror::Error;

use crate::facts::HostFacts;
use crate::limits::{nofile_for, FD_HEADROOM};

/// Kernel memory per idle TCP socket, measured on the project's host
/// (6.18, /proc/slabinfo deltas): TCP 2368 B + sock_inode_cache 832 +
/// dentry 192 + filp 192, plus the 128 B epoll item (eventpoll_epi).
pub const DEFAULT_PER_SOCKET_BYTES: u64 = 2368 + 832 + 192 + 192 + 128;
/// User-space bytes per session per end: the design's session record is
/// ≤ 32 B; 64 allows for slab rounding and the deadline wheel's links.
pub const DEFAULT_USER_BYTES_PER_END: u64 = 64;
/// Queued bytes per socket in a synchronized heartbeat storm: one small
/// skb (struct sk_buff + head ≈ 1 KiB truesize). Assumed, not measured.
pub const STORM_SKB_BYTES: u64 = 1024;
/// Share of MemTotal kept free for page cache, the rest of the system and
/// slab fragmentation, in percent.
pub const MEMORY_RESERVE_PERCENT: u64 = 10;
/// 127.0.0.0/8 without the network and broadcast addresses.
pub const LOOPBACK_SOURCES: u64 = (1 << 24) - 2;
/// SO_REUSEPORT hashes connections to processes; size each for the mean
/// plus this many standard deviations so none meets its descriptor cap.
pub const REUSEPORT_SIGMAS: f64 = 4.0;

/// Which ends of the sessions run on the planned host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Loadgen,
    /// Server and loadgen on one host over loopback.
    Both,
}

impl Role {
    /// Sockets (and descriptors, and epoll watches) per session on the host.
    pub fn sockets_per_session(self) -> u64 {
        match self {
            Role::Both => 2,
            Role::Server | Role::Loadgen => 1,
        }
    }

    fn connects(self) -> bool {
        self != Role::Server
    }

    fn accepts(self) -> bool {
        self != Role::Loadgen
    }
}

/// What to plan for.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRequest {
    pub sessions: u64,
    pub role: Role,
    pub per_socket_bytes: u64,
    pub user_bytes_per_end: u64,
    /// Source addresses the loadgen binds; `None`: 127.0.0.0/8 for role
    /// both, one for role loadgen.
    pub source_addrs: Option<u64>,
    pub target_ports: u64,
    pub server_port: u16,
}

/// Where a limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    PerProcess,
    Host,
    /// A host limit that applies only if something switches it on: the
    /// conntrack table, while it tracks nothing.
    HostIfTracked,
}

/// Which limit a row is, for recommendations and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    NofileHard,
    NofileSoft,
    NrOpen,
    Memory,
    FileMax,
    EpollWatches,
    EphemeralPorts,
    Conntrack,
    TcpMem,
}

/// One limit and how many sessions fit under it.
#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    pub kind: LimitKind,
    pub name: &'static str,
    /// The limit as it stands, in words.
    pub setting: String,
    pub sessions: u64,
    pub scope: Scope,
}

/// How many processes of one role, and how big.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessSplit {
    pub role: &'static str,
    pub processes: u64,
    /// Largest share any process is sized for.
    pub sessions_each: u64,
    pub nofile_each: u64,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub request: PlanRequest,
    pub facts: HostFacts,
    pub sockets_per_session: u64,
    pub bytes_per_session: u64,
    pub usable_memory_bytes: u64,
    /// Smallest first.
    pub limits: Vec<Limit>,
    /// The smallest limit that applies now (conditional ones excluded).
    pub binding: LimitKind,
    /// Sessions the host holds with enough processes.
    pub host_capacity: u64,
    pub host_binding: LimitKind,
    /// Fits as the host stands, one process per role.
    pub fits_as_is: bool,
    /// Fits once split over `processes` (no sysctl change).
    pub fits_with_processes: bool,
    /// Sessions one process can hold once its soft limit is raised (and its
    /// hard limit too, where it may).
    pub per_process_max: u64,
    pub hard_limit_raisable: bool,
    pub processes: Vec<ProcessSplit>,
    pub changes: Vec<String>,
    pub notes: Vec<String>,
}

/// A plan cannot be made from these facts.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("RLIMIT_NOFILE allows {allowed} descriptors per process; a process needs more than {required} for itself")]
    NoDescriptors { allowed: u64, required: u64 },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
}

/// Make the plan.
pub fn compute(request: &PlanRequest, facts: &HostFacts) -> Result<Plan, PlanError> {
    for (what, value) in [
        ("--sessions", request.sessions),
        ("--per-socket-bytes", request.per_socket_bytes),
        ("--target-ports", request.target_ports),
        ("--source-addrs", request.source_addrs.unwrap_or(1)),
    ] {
        if value == 0 {
            return Err(PlanError::Zero { what });
        }
    }
    let sockets = request.role.sockets_per_session();
    let per_process_max = per_process_max(facts);
    if per_process_max == 0 {
        return Err(PlanError::NoDescriptors {
            allowed: facts.nofile_hard.min(facts.nr_open),
            required: FD_HEADROOM,
        });
    }
    let bytes_per_session =
        sockets * request.per_socket_bytes + sockets * request.user_bytes_per_end;
    let usable_memory_bytes = usable_memory(facts);

    let mut limits = rows::limits(request, facts, bytes_per_session);
    limits.sort_by_key(|limit| limit.sessions);
    let first = |scope: Option<Scope>| {
        limits
            .iter()
            .find(|limit| match scope {
                Some(scope) => limit.scope == scope,
                None => limit.scope != Scope::HostIfTracked,
            })
            .map(|limit| (limit.sessions, limit.kind))
            .unwrap_or((u64::MAX, LimitKind::Memory))
    };
    let (binding_sessions, binding) = first(None);
    let (host_capacity, host_binding) = first(Some(Scope::Host));
    let processes = split(request, per_process_max);
    let mut plan = Plan {
        request: request.clone(),
        facts: facts.clone(),
        sockets_per_session: sockets,
        bytes_per_session,
        usable_memory_bytes,
        fits_as_is: binding_sessions >= request.sessions,
        fits_with_processes: host_capacity >= request.sessions,
        limits,
        binding,
        host_capacity,
        host_binding,
        per_process_max,
        hard_limit_raisable: facts.nofile_hard_raisable,
        processes,
        changes: Vec::new(),
        notes: Vec::new(),
    };
    advice::advise(&mut plan);
    Ok(plan)
}

/// Memory left for sessions: MemAvailable minus a reserve of MemTotal.
pub fn usable_memory(facts: &HostFacts) -> u64 {
    let reserve = facts.mem_total_bytes / 100 * MEMORY_RESERVE_PERCENT;
    facts.mem_available_bytes.saturating_sub(reserve)
}

/// Sessions one process can hold once it raises what it may: the soft limit
/// up to the hard one always; the hard one up to fs.nr_open with
/// CAP_SYS_RESOURCE.
pub fn per_process_max(facts: &HostFacts) -> u64 {
    let ceiling = if facts.nofile_hard_raisable {
        facts.nr_open
    } else {
        facts.nofile_hard.min(facts.nr_open)
    };
    ceiling.saturating_sub(FD_HEADROOM)
}

/// Processes per role when one process cannot hold every session.
fn split(request: &PlanRequest, cap: u64) -> Vec<ProcessSplit> {
    let n = request.sessions;
    let mut out = Vec::new();
    if request.role.accepts() {
        let processes = if n <= cap {
            1
        } else {
            reuseport_processes(n, cap)
        };
        let sessions_each = reuseport_share(n, processes).min(n);
        out.push(ProcessSplit {
            role: "server",
            processes,
            sessions_each,
            nofile_each: nofile_for(sessions_each),
        });
    }
    if request.role.connects() {
        let processes = n.div_ceil(cap);
        let sessions_each = n.div_ceil(processes);
        out.push(ProcessSplit {
            role: "loadgen",
            processes,
            sessions_each,
            nofile_each: nofile_for(sessions_each),
        });
    }
    out
}

/// The share a process must be sized for when the kernel hashes `n`
/// connections over `k` processes: mean + [`REUSEPORT_SIGMAS`] · √mean
/// (binomial spread), rounded up.
pub fn reuseport_share(n: u64, k: u64) -> u64 {
    if k <= 1 {
        return n;
    }
    let mean = n as f64 / k as f64;
    (mean + REUSEPORT_SIGMAS * mean.sqrt()).ceil() as u64
}

/// Fewest processes `k` whose hashed share stays within `cap` sessions.
pub fn reuseport_processes(n: u64, cap: u64) -> u64 {
    // Largest mean m with m + z·√m ≤ cap: √m = (−z + √(z² + 4·cap)) / 2.
    let z = REUSEPORT_SIGMAS;
    let root = (-z + (z * z + 4.0 * cap as f64).sqrt()) / 2.0;
    let max_mean = (root * root).max(f64::MIN_POSITIVE);
    let mut k = ((n as f64 / max_mean).ceil() as u64)
        .max(n.div_ceil(cap))
        .max(2);
    while k > 2 && reuseport_share(n, k - 1) <= cap {
        k -= 1;
    }
    while reuseport_share(n, k) > cap {
        k += 1;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{PortRange, PortSet};

    #[test]
    fn reuseport_sizing_leaves_room_for_the_hash() {
        // 1 M sessions, 19,900 per process: 51 would average 19,608 but the
        // hash's +4σ (560) overflows; 52 average 19,231 + 555 = 19,786.
        assert_eq!(reuseport_processes(1_000_000, 19_900), 52);
        assert_eq!(reuseport_share(1_000_000, 52), 19_786);
        assert!(reuseport_share(1_000_000, 51) > 19_900);
        assert_eq!(reuseport_share(5, 1), 5);
    }

    /// The project's test VM: 24 GiB, hard RLIMIT_NOFILE 20,000 that cannot
    /// be raised, default sysctls, conntrack loaded but idle.
    fn test_vm() -> HostFacts {
        HostFacts {
            mem_total_bytes: 24_683_584 * 1024,
            mem_available_bytes: 24_375_668 * 1024,
            page_size_bytes: 4096,
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nofile_hard_raisable: false,
            nr_open: 1_048_576,
            file_max: 2_466_116,
            files_open: 362,
            port_range: PortRange {
                low: 32768,
                high: 60999,
            },
            reserved_ports: PortSet::default(),
            tcp_mem_pages: [287_892, 383_858, 575_784],
            conntrack_max: Some(262_144),
            conntrack_count: Some(0),
            epoll_max_user_watches: Some(5_491_378),
        }
    }

    fn request(sessions: u64, role: Role) -> PlanRequest {
        PlanRequest {
            sessions,
            role,
            per_socket_bytes: DEFAULT_PER_SOCKET_BYTES,
            user_bytes_per_end: DEFAULT_USER_BYTES_PER_END,
            source_addrs: None,
            target_ports: 1,
            server_port: 7000,
        }
    }

    fn has_change(plan: &Plan, text: &str) -> bool {
        plan.changes.iter().any(|change| change.contains(text))
    }

    #[test]
    fn unraisable_hard_limit_binds_and_splits_into_processes() {
        let plan = compute(&request(1_000_000, Role::Both), &test_vm()).unwrap();
        assert_eq!(plan.binding, LimitKind::NofileHard);
        assert_eq!(plan.sockets_per_session, 2);
        assert_eq!(plan.bytes_per_session, 2 * 3712 + 2 * 64);
        // Conntrack tracks nothing, so tcp_mem's storm row binds host-wide.
        assert_eq!(plan.host_binding, LimitKind::TcpMem);
        assert_eq!(plan.host_capacity, 575_784 * 4096 / 2048);
        assert!(!plan.fits_as_is && plan.fits_with_processes);
        let split: Vec<(&str, u64, u64)> = plan
            .processes
            .iter()
            .map(|s| (s.role, s.processes, s.sessions_each))
            .collect();
        assert_eq!(split, [("server", 52, 19_786), ("loadgen", 51, 19_608)]);
        assert!(has_change(
            &plan,
            "cannot be raised here (no CAP_SYS_RESOURCE)"
        ));
        assert!(has_change(
            &plan,
            "run 52 server processes of at most 19,786"
        ));
        // The limit bounds each table: one process per role, a table per worker.
        assert!(has_change(
            &plan,
            "run one process per role with a table per worker"
        ));
        assert!(has_change(&plan, "and 51 or more workers"));
        assert!(has_change(&plan, "51 or more drivers"));
        assert!(has_change(&plan, "only if conntrack starts tracking"));
        assert!(plan.notes[0].contains("two sockets"));
        assert!(plan
            .render()
            .contains("binds first: RLIMIT_NOFILE hard (19,900 sessions per process)"));
    }

    #[test]
    fn a_raisable_hard_limit_is_raised_instead() {
        let mut facts = test_vm();
        facts.nofile_hard_raisable = true;
        let plan = compute(&request(500_000, Role::Server), &facts).unwrap();
        assert!(has_change(&plan, "raise RLIMIT_NOFILE to 500100"));
        assert_eq!(plan.processes[0].processes, 1);
        let plan = compute(&request(2_000_000, Role::Server), &facts).unwrap();
        assert!(has_change(&plan, "set fs.nr_open >= 2000100"));
    }

    #[test]
    fn a_low_soft_limit_is_raised_without_privilege() {
        let mut facts = test_vm();
        facts.nofile_soft = 1024;
        let plan = compute(&request(10_000, Role::Server), &facts).unwrap();
        assert_eq!(plan.binding, LimitKind::NofileSoft);
        assert!(has_change(&plan, "raise the soft RLIMIT_NOFILE to 10100"));
        assert!(plan.fits_with_processes);
    }

    #[test]
    fn memory_caps_what_no_sysctl_can_fix() {
        let plan = compute(&request(10_000_000, Role::Both), &test_vm()).unwrap();
        assert!(!plan.fits_with_processes);
        assert!(has_change(&plan, "memory: 10,000,000 sessions need"));
        assert!(plan.verdict().contains("memory holds at most"));
    }

    #[test]
    fn tracked_conntrack_binds_and_one_source_address_runs_out_of_ports() {
        let mut facts = test_vm();
        facts.conntrack_count = Some(44);
        let plan = compute(&request(200_000, Role::Loadgen), &facts).unwrap();
        assert_eq!(plan.host_binding, LimitKind::EphemeralPorts);
        assert_eq!(plan.host_capacity, 28_232);
        assert!(has_change(&plan, "use >= 8 source addresses"));
        let plan = compute(&request(300_000, Role::Both), &facts).unwrap();
        assert_eq!(plan.host_binding, LimitKind::Conntrack);
        assert!(has_change(
            &plan,
            "set net.netfilter.nf_conntrack_max >= 300,044"
        ));
    }

    #[test]
    fn a_wide_port_range_must_reserve_the_server_port() {
        let mut facts = test_vm();
        facts.port_range = PortRange {
            low: 1024,
            high: 65535,
        };
        let plan = compute(&request(1000, Role::Both), &facts).unwrap();
        assert!(has_change(
            &plan,
            "net.ipv4.ip_local_reserved_ports = 7000-7099"
        ));
        facts.reserved_ports = PortSet::parse("7000-7099").unwrap();
        let plan = compute(&request(1000, Role::Both), &facts).unwrap();
        assert!(plan.fits_as_is);
        assert!(has_change(&plan, "nothing: 1,000 sessions fit"));
    }

    #[test]
    fn impossible_inputs_are_errors() {
        assert!(matches!(
            compute(&request(0, Role::Both), &test_vm()),
            Err(PlanError::Zero { .. })
        ));
        let mut facts = test_vm();
        facts.nofile_hard = 64;
        let err = compute(&request(1, Role::Both), &facts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RLIMIT_NOFILE allows 64 descriptors per process; a process needs more than 100 for itself"
        );
    }

    #[test]
    fn per_socket_default_is_the_measured_figure() {
        assert_eq!(DEFAULT_PER_SOCKET_BYTES, 3712);
    }
}
