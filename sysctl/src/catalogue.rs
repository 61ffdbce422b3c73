//! The key catalogue: every sysctl this tool knows, its value shape and
//! bounds, and what it does for a host holding millions of idle sessions.
//!
//! A profile may only name keys listed here. That is deliberate: a typo in a
//! tuning profile (`net.ipv4.tcp_rmen`) must fail at parse time with file and
//! line, not be written to a kernel that silently ignores or rejects it.
//! Bounds are the kernel's own where it has them (e.g. fs.nr_open ≥ 64,
//! tcp_rmem ≥ 1); elsewhere the C type's limit (`INT_MAX`, `LONG_MAX`).

use crate::value::{ValueKind, INT_MAX, LONG_MAX};

/// One known key.
#[derive(Debug)]
pub struct KeySpec {
    /// Dotted name, as in sysctl.d (`net.ipv4.tcp_mem`).
    pub key: &'static str,
    pub kind: ValueKind,
    /// What the key does, and why it matters at millions of sessions.
    pub what: &'static str,
}

/// Every key a profile may set, in the order `explain --list` prints them.
pub static CATALOGUE: &[KeySpec] = &[
    KeySpec {
        key: "fs.nr_open",
        // sysctl_nr_open_min = BITS_PER_LONG; max = INT_MAX rounded down to 64.
        kind: ValueKind::int(64, 2_147_483_584),
        what: "Ceiling on RLIMIT_NOFILE for any process, root included: no process \
               can hold more descriptors than this. Each session is one socket, so one \
               descriptor; a process holding N sessions needs RLIMIT_NOFILE (and so \
               fs.nr_open) of at least N plus a few for listeners, epoll and stdio. \
               Raising it costs nothing until descriptors are used.",
    },
    KeySpec {
        key: "fs.file-max",
        kind: ValueKind::int(0, LONG_MAX),
        what: "System-wide number of open files (struct file) across all processes. \
               Every socket holds one; with server and loadgen on one host a session \
               holds two. Unprivileged processes get ENFILE past it (CAP_SYS_ADMIN \
               may exceed it). fs.file-nr shows how many are open now.",
    },
    KeySpec {
        key: "fs.epoll.max_user_watches",
        kind: ValueKind::int(0, LONG_MAX),
        what: "Per-user limit on descriptors registered in epoll instances; each \
               watch costs ~128 B of kernel memory (eventpoll_epi). The epoll backend \
               registers every session, so a user running a server and a loadgen \
               needs two watches per loopback session. The default is ~4% of RAM \
               divided by the cost of a watch.",
    },
    KeySpec {
        key: "net.core.somaxconn",
        kind: ValueKind::int(0, INT_MAX),
        what: "Cap on a listening socket's accept queue (listen()'s backlog is clamped \
               to it). During a connection ramp or a reconnect storm the queue absorbs \
               connections completed while the server is busy; overflow drops the \
               final ACK and the client retries after a 1 s SYN timeout.",
    },
    KeySpec {
        key: "net.ipv4.tcp_max_syn_backlog",
        kind: ValueKind::int(0, INT_MAX),
        what: "Maximum half-open connections (SYN received, handshake incomplete) per \
               listener before SYN cookies (or drops) take over. Sized with somaxconn \
               for the ramp.",
    },
    KeySpec {
        key: "net.ipv4.tcp_child_ehash_entries",
        // 0 (share the initial namespace's table) or 128..=16 Mi, rounded
        // up to a power of two by the kernel.
        kind: ValueKind::int(0, 16_777_216),
        what: "Size of the established-connection hash table given to each network \
               namespace created AFTER it is set (0: new namespaces share the \
               initial namespace's table, sized once at boot: 262,144 buckets on a \
               24 GiB host). Every segment received looks its socket up in this table; \
               a loopback million is 2 M sockets, ~8 per bucket, and the chain walk \
               was 6-7% of all CPU. A campaign run in its own namespace created after \
               setting 2,097,152 gets ~1 socket per bucket, for 16 MiB.",
    },
    KeySpec {
        key: "net.ipv4.tcp_no_metrics_save",
        kind: ValueKind::int(0, 1),
        what: "1: do not cache per-destination TCP metrics (RTT, cwnd) when a \
               connection closes. The cache is keyed by (source, destination) \
               address; a loadgen spreading over 65,536 loopback sources fills it \
               with 65,536 entries in a 16,384-bucket table that every connect \
               then searches (2% of a million-session ramp's CPU). Loopback has \
               nothing to learn from it.",
    },
    KeySpec {
        key: "net.ipv4.tcp_syncookies",
        kind: ValueKind::int(0, 2),
        what: "SYN cookies: 1 = only when the SYN backlog overflows (default), \
               2 = always, 0 = never. With cookies a ramp that overflows the backlog \
               still completes, at the cost of TCP options on those connections.",
    },
    KeySpec {
        key: "net.core.netdev_max_backlog",
        kind: ValueKind::int(1, INT_MAX),
        what: "Per-CPU input queue for packets handed to the stack by netif_rx, \
               which is how loopback delivers every segment. A heartbeat storm over \
               lo overflows the default 1000 in about a millisecond of softirq lag; \
               the drops surface as retransmits (200 ms RTO, 1 s SYN retry) and \
               inflate measured latency.",
    },
    KeySpec {
        key: "net.ipv4.ip_local_port_range",
        kind: ValueKind::PortRange,
        what: "Ephemeral ports the kernel picks for connect() without bind(). Each \
               (source address, destination address, destination port) can hold at \
               most this many connections, minus ip_local_reserved_ports; the \
               loadgen multiplies it by source addresses (127.0.0.0/8 on loopback) \
               and target ports.",
    },
    KeySpec {
        key: "net.ipv4.ip_local_reserved_ports",
        kind: ValueKind::PortList,
        what: "Ports the kernel never hands out as ephemeral ports (explicit bind() \
               still works). When ip_local_port_range covers the server's ports, \
               reserve them, or a client socket can take the server's port before \
               the server binds it (EADDRINUSE at start).",
    },
    KeySpec {
        key: "net.ipv4.tcp_mem",
        kind: ValueKind::triple(1, LONG_MAX),
        what: "Pages (not bytes) all TCP sockets together may use for queued data: \
               below `min` no pressure; above `pressure` the stack shrinks buffers; \
               at `max` new allocations fail (packets dropped, writes block). Idle \
               sockets queue nothing; a synchronized heartbeat storm briefly queues \
               one small skb (~1 KiB truesize) per socket.",
    },
    KeySpec {
        key: "net.ipv4.tcp_rmem",
        kind: ValueKind::triple(1, INT_MAX),
        what: "Per-socket receive buffer: min (kept even under memory pressure), \
               default (initial), max (autotuning ceiling), in bytes. Buffers are \
               charged only for queued data, so an idle socket costs nothing here; \
               the min matters because it is honoured per socket under pressure.",
    },
    KeySpec {
        key: "net.ipv4.tcp_wmem",
        kind: ValueKind::triple(1, INT_MAX),
        what: "Per-socket send buffer: min, default, max in bytes, charged only for \
               unsent or unacknowledged data. A heartbeat reply is tens of bytes.",
    },
    KeySpec {
        key: "net.core.rmem_default",
        kind: ValueKind::int(256, INT_MAX),
        what: "Default receive buffer for non-TCP sockets (TCP uses tcp_rmem).",
    },
    KeySpec {
        key: "net.core.wmem_default",
        kind: ValueKind::int(256, INT_MAX),
        what: "Default send buffer for non-TCP sockets (TCP uses tcp_wmem).",
    },
    KeySpec {
        key: "net.core.rmem_max",
        kind: ValueKind::int(256, INT_MAX),
        what: "Largest receive buffer a process may request with SO_RCVBUF.",
    },
    KeySpec {
        key: "net.core.wmem_max",
        kind: ValueKind::int(256, INT_MAX),
        what: "Largest send buffer a process may request with SO_SNDBUF.",
    },
    KeySpec {
        key: "net.netfilter.nf_conntrack_max",
        kind: ValueKind::int(0, INT_MAX),
        what: "Connection-tracking table size (one entry per connection, ~320 B). \
               Exists only when nf_conntrack is loaded; tracks traffic only when a \
               stateful rule or NAT needs it. When full, new connections' SYNs are \
               dropped (\"nf_conntrack: table full\"). Best kept off the session \
               path (raw-table NOTRACK); otherwise sized for every session.",
    },
    KeySpec {
        key: "net.netfilter.nf_conntrack_tcp_timeout_established",
        kind: ValueKind::int(0, INT_MAX),
        what: "Seconds an idle established connection stays in the conntrack table \
               (default 432000 = 5 days). Idle sessions heartbeat far more often.",
    },
    KeySpec {
        key: "net.ipv4.tcp_tw_reuse",
        kind: ValueKind::int(0, 2),
        what: "Reuse a TIME_WAIT 4-tuple for a new outgoing connection when \
               timestamps prove it safe: 0 = off, 1 = on, 2 = loopback only \
               (default). Matters for a loadgen with session churn, which closes \
               first and so holds the TIME_WAIT.",
    },
    KeySpec {
        key: "net.ipv4.tcp_fin_timeout",
        kind: ValueKind::int(1, INT_MAX),
        what: "Seconds an orphaned connection waits in FIN_WAIT_2 (default 60).",
    },
    KeySpec {
        key: "net.ipv4.tcp_max_tw_buckets",
        kind: ValueKind::int(0, INT_MAX),
        what: "Most TIME_WAIT sockets the host keeps; beyond it they are destroyed \
               at once (logged).",
    },
    KeySpec {
        key: "net.ipv4.tcp_max_orphans",
        kind: ValueKind::int(0, INT_MAX),
        what: "Most sockets not attached to any descriptor (closed, still \
               finishing); beyond it they are reset. A mass disconnect of millions \
               of sessions creates orphans in a burst.",
    },
    KeySpec {
        key: "net.ipv4.tcp_keepalive_time",
        kind: ValueKind::int(1, 32767),
        what: "Seconds of idleness before the kernel sends keepalive probes, for \
               sockets with SO_KEEPALIVE only. c10m sessions heartbeat in user space \
               instead; 10 M sessions at the default 7200 s would still cost \
               ~1,400 probes/s.",
    },
    KeySpec {
        key: "net.ipv4.tcp_keepalive_intvl",
        kind: ValueKind::int(1, 32767),
        what: "Seconds between keepalive probes (SO_KEEPALIVE sockets only).",
    },
    KeySpec {
        key: "net.ipv4.tcp_keepalive_probes",
        kind: ValueKind::int(1, 127),
        what: "Unanswered keepalive probes before the connection is dropped \
               (SO_KEEPALIVE sockets only). Harmless to change on a host whose \
               sessions do not set SO_KEEPALIVE.",
    },
    KeySpec {
        key: "net.ipv4.tcp_syn_retries",
        kind: ValueKind::int(1, 127),
        what: "SYN retransmits before connect() gives up (default 6, ~127 s). A \
               loadgen that should report refused or overloaded servers promptly \
               wants fewer.",
    },
    KeySpec {
        key: "net.ipv4.tcp_synack_retries",
        kind: ValueKind::int(0, 255),
        what: "SYN-ACK retransmits for a half-open passive connection (default 5).",
    },
    KeySpec {
        key: "net.ipv4.tcp_slow_start_after_idle",
        kind: ValueKind::int(0, 1),
        what: "Reset the congestion window after an idle period. Irrelevant to \
               single-segment heartbeats; matters when idle sessions burst data.",
    },
    KeySpec {
        key: "vm.min_free_kbytes",
        kind: ValueKind::int(0, INT_MAX),
        what: "Memory the kernel keeps free for atomic allocations (e.g. skbs in \
               softirq). Hosts filling most RAM with socket slab may need more.",
    },
];

/// The catalogue entry for a dotted key.
pub fn lookup(key: &str) -> Option<&'static KeySpec> {
    CATALOGUE.iter().find(|spec| spec.key == key)
}

/// The closest known key, for "did you mean" in errors: same last component,
/// or within a small edit distance.
pub fn suggest(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let by_name = CATALOGUE
        .iter()
        .find(|spec| spec.key.rsplit('.').next() == Some(last));
    let closest = || {
        CATALOGUE
            .iter()
            .map(|spec| (edit_distance(key, spec.key), spec.key))
            .min()
            .filter(|&(distance, _)| distance <= 3)
            .map(|(_, name)| name)
    };
    by_name.map(|spec| spec.key).or_else(closest)
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_documented() {
        for (i, spec) in CATALOGUE.iter().enumerate() {
            assert!(
                spec.what.len() > 40,
                "{} needs a real description",
                spec.key
            );
            assert!(
                CATALOGUE[i + 1..].iter().all(|other| other.key != spec.key),
                "{} listed twice",
                spec.key
            );
        }
    }

    #[test]
    fn suggestions_catch_typos() {
        assert_eq!(suggest("net.ipv4.tcp_rmen"), Some("net.ipv4.tcp_rmem"));
        assert_eq!(suggest("net.ipv6.tcp_mem"), Some("net.ipv4.tcp_mem"));
        assert_eq!(suggest("kernel.totally_unrelated_thing"), None);
    }
}
