//! Host limits that decide how many sessions one process can hold:
//! RLIMIT_NOFILE (raised soft → hard at start-up), fs.nr_open and
//! fs.file-max. Every message names the limit, its value and the fix.
#![forbid(unsafe_code)]

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept back from sessions: stdio, and per worker an epoll
/// instance, its waker and its listener, plus slack for a rejected
/// connection in flight, /proc reads and the stats file.
pub fn reserved_fds(workers: usize) -> u64 {
    16 + 4 * workers as u64
}

/// RLIMIT_NOFILE before and after raising the soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (needs no privilege).
pub fn raise_nofile() -> nix::Result<NoFile> {
    let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NoFile {
        soft_before,
        soft,
        hard,
    })
}

/// Direct-descriptor slots of a ring kept back from sessions (a refused
/// connection holds one until its BUSY reply and close complete): at most
/// this many, and a sixteenth of a small table.
pub const DIRECT_SLACK: u64 = 64;

fn direct_slack(slots: u64) -> u64 {
    (slots / 16).clamp(1, DIRECT_SLACK)
}

/// Sessions one ring with `slots` direct descriptors holds: its slots less
/// the slack.
pub fn direct_ring_capacity(slots: u64) -> u64 {
    slots.saturating_sub(direct_slack(slots))
}

/// Slots in each worker ring's direct-descriptor table: the kernel allows
/// at most RLIMIT_NOFILE (soft) per ring, and counts none of them in the
/// process's descriptor table.
pub fn direct_slots(nofile: &NoFile) -> u32 {
    nofile.soft.min(u64::from(crate::sys::uring::MAX_SLOTS)) as u32
}

/// Where the sessions' descriptors live (`--descriptors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Descriptors {
    /// `plain` when --max-sessions fits the process's table (or is unset),
    /// else `direct` on io_uring and `thread` on epoll.
    #[default]
    Auto,
    /// The process's descriptor table, shared by every worker:
    /// RLIMIT_NOFILE caps the process.
    Plain,
    /// A descriptor table per worker thread: RLIMIT_NOFILE caps each
    /// worker (either backend).
    Thread,
    /// io_uring direct descriptors: a registered file table per worker
    /// ring, of up to RLIMIT_NOFILE slots.
    Direct,
}

impl Descriptors {
    pub fn name(self) -> &'static str {
        match self {
            Descriptors::Auto => "auto",
            Descriptors::Plain => "plain",
            Descriptors::Thread => "thread",
            Descriptors::Direct => "direct",
        }
    }
}

/// Descriptors a worker thread's own table keeps back from sessions
/// (`--descriptors thread`): stdio, its listener, its poller or wake
/// descriptor, and slack for a refused connection in flight.
pub const THREAD_RESERVE: u64 = 16;

/// Sessions one table holds (a worker thread's, or one of a worker's
/// io_uring rings'), or `None` for the shared process table.
pub fn per_table_capacity(nofile: &NoFile, descriptors: Descriptors) -> Option<u64> {
    match descriptors {
        Descriptors::Thread => Some(nofile.soft.saturating_sub(THREAD_RESERVE)),
        Descriptors::Direct => Some(direct_ring_capacity(u64::from(direct_slots(nofile)))),
        Descriptors::Auto | Descriptors::Plain => None,
    }
}

/// Sessions this process can hold under its descriptor limit: `plain`
/// (and `auto`, before it is resolved) descriptors share the process's
/// table; with `thread` or `direct` each worker has a table of its own.
pub fn session_capacity(nofile: &NoFile, workers: usize, descriptors: Descriptors) -> u64 {
    match per_table_capacity(nofile, descriptors) {
        Some(each) => workers as u64 * each,
        None => nofile.soft.saturating_sub(reserved_fds(workers)),
    }
}

/// Most workers the layout picks by itself (and `--workers` accepts).
pub const MAX_WORKERS: usize = 1024;

/// How one server process holds its sessions: the resolved
/// `--descriptors`, the worker count, the rings each worker owns, and why
/// (for the start-up line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Never `Auto`.
    pub descriptors: Descriptors,
    pub workers: usize,
    /// io_uring rings per worker, each with a table of its own (`direct`);
    /// 1 otherwise.
    pub rings: usize,
    /// One token without spaces, e.g. `auto:over-process-table,io_uring`.
    pub why: String,
}

impl Layout {
    /// Sessions the process holds under its descriptor limits.
    pub fn capacity(&self, nofile: &NoFile) -> u64 {
        self.rings as u64 * session_capacity(nofile, self.workers, self.descriptors)
    }
}

/// Resolves `--descriptors`, the worker count and the rings per worker for
/// one process.
///
/// `auto`: `plain` while `max_sessions` fits the process's table (or is
/// unset), else `direct` with io_uring, else `thread`. With `direct` each
/// worker owns as many io_uring rings as `max_sessions` needs tables (a
/// worker per CPU, whatever the sessions). With `thread`, unless the user
/// gave `--workers`, the workers grow to the tables `max_sessions` needs
/// (threads may outnumber CPUs); a given `--workers` is kept, and
/// [`capacity_warning`] says what it misses.
pub fn layout(
    asked: Descriptors,
    uring: bool,
    max_sessions: Option<u64>,
    nofile: &NoFile,
    workers: usize,
    workers_given: bool,
) -> Result<Layout, String> {
    let (descriptors, why) = match asked {
        Descriptors::Direct if !uring => {
            return Err(
                "--descriptors direct needs the io_uring backend, and this server runs \
                 epoll; use --descriptors thread (a table per worker thread) or plain"
                    .to_string(),
            )
        }
        Descriptors::Auto => {
            let fits = max_sessions
                .is_none_or(|m| m <= session_capacity(nofile, workers, Descriptors::Plain));
            match (fits, uring) {
                (true, _) => (Descriptors::Plain, "auto:fits-process-table"),
                (false, true) => (Descriptors::Direct, "auto:over-process-table,io_uring"),
                (false, false) => (Descriptors::Thread, "auto:over-process-table,epoll"),
            }
        }
        forced => (forced, "forced"),
    };
    let mut workers = workers.max(1);
    let mut rings = 1;
    if let (Some(max), Some(each)) = (max_sessions, per_table_capacity(nofile, descriptors)) {
        let tables = max.div_ceil(each.max(1));
        if descriptors == Descriptors::Direct {
            rings =
                (tables.div_ceil(workers as u64) as usize).clamp(1, crate::sys::uring::MAX_SHARDS);
        } else if !workers_given {
            workers = workers.max(tables.min(MAX_WORKERS as u64) as usize);
        }
    }
    Ok(Layout {
        descriptors,
        workers,
        rings,
        why: why.to_string(),
    })
}

/// RLIMIT_MEMLOCK after raising its soft limit to the hard one, and
/// whether this process has CAP_IPC_LOCK (which exempts it).
///
/// Without CAP_IPC_LOCK the kernel counts every io_uring ring's memory
/// (SQ, CQ, provided-buffer ring entries) against the user's
/// RLIMIT_MEMLOCK: with the common 8 MiB, 29 worker rings fit and the 30th
/// fails with ENOMEM (measured on Linux 6.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemLock {
    pub soft: u64,
    pub hard: u64,
    pub ipc_lock: bool,
}

impl MemLock {
    /// Raises the soft limit to the hard one (no privilege needed) and
    /// reads CAP_IPC_LOCK from /proc/self/status.
    pub fn raise() -> MemLock {
        let (mut soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).unwrap_or((0, 0));
        if soft < hard && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_ok() {
            soft = hard;
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        MemLock {
            soft,
            hard,
            ipc_lock: has_capability(&status, CAP_IPC_LOCK),
        }
    }

    /// How many rings of `ring_bytes` fit, or `None` when unbounded.
    pub fn rings_that_fit(&self, ring_bytes: u64) -> Option<u64> {
        if self.ipc_lock || self.soft == u64::MAX || self.soft == libc::RLIM_INFINITY {
            return None;
        }
        Some(self.soft / ring_bytes.max(1))
    }

    /// Why `rings` rings of `ring_bytes` cannot be set up, naming the limit,
    /// its value and the fixes; `None` when they fit.
    pub fn shortfall(&self, rings: u64, ring_bytes: u64) -> Option<String> {
        let fit = self.rings_that_fit(ring_bytes)?;
        if rings <= fit {
            return None;
        }
        let need_kib = (rings * ring_bytes).div_ceil(1024);
        Some(format!(
            "RLIMIT_MEMLOCK is {} KiB (hard {} KiB) and this process lacks CAP_IPC_LOCK, so the \
             kernel counts io_uring ring memory against it: {rings} worker rings of ~{} KiB \
             need {need_kib} KiB, and {fit} fit. Raise it (ulimit -l {need_kib}, \
             LimitMEMLOCK={} in the systemd unit, a memlock line in limits.conf), grant \
             CAP_IPC_LOCK, or use --backend epoll (--descriptors thread holds as many sessions)",
            self.soft / 1024,
            self.hard / 1024,
            ring_bytes.div_ceil(1024),
            need_kib * 1024,
        ))
    }
}

/// CAP_IPC_LOCK's bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// Whether bit `cap` is set in the `CapEff:` line of a /proc/PID/status.
fn has_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

/// Reads an integer sysctl such as `fs/file-max`; `None` if unreadable.
pub fn read_sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The warning printed when `--max-sessions` cannot be met by one process,
/// naming the binding limit and how to lift it.
pub fn capacity_warning(
    max_sessions: u64,
    workers: usize,
    nofile: &NoFile,
    descriptors: Descriptors,
) -> Option<String> {
    let capacity = session_capacity(nofile, workers, descriptors);
    if max_sessions <= capacity {
        return None;
    }
    if let Some(per_worker) = per_table_capacity(nofile, descriptors) {
        let per_worker = per_worker.max(1);
        let table = if descriptors == Descriptors::Direct {
            "ring holds"
        } else {
            "thread's descriptor table holds"
        };
        return Some(format!(
            "warning: --max-sessions {max_sessions} cannot be met: with --descriptors {} \
             each worker's {table} {per_worker} sessions (RLIMIT_NOFILE {} slots, less \
             slack), so {workers} workers hold at most {capacity}. Use --workers {} (threads \
             may outnumber CPUs) or leave --workers unset, or raise the hard RLIMIT_NOFILE.",
            descriptors.name(),
            nofile.soft,
            max_sessions.div_ceil(per_worker)
        ));
    }
    let need = max_sessions + reserved_fds(workers);
    let mut msg = format!(
        "warning: --max-sessions {max_sessions} cannot be met: RLIMIT_NOFILE is {} (hard {}), \
         {max_sessions} sessions need {need} descriptors; this process holds at most {capacity}. ",
        nofile.soft, nofile.hard
    );
    let nr_open = read_sysctl("fs/nr_open");
    if nofile.soft == nofile.hard {
        msg.push_str(
            "Raise the hard limit (LimitNOFILE= in the systemd unit, or a nofile line in \
             /etc/security/limits.conf; needs CAP_SYS_RESOURCE), or spread the sessions over \
             several processes",
        );
        if let Some(nr_open) = nr_open.filter(|n| *n < need) {
            msg.push_str(&format!(
                "; fs.nr_open is {nr_open}, so also raise it (sysctl -w fs.nr_open={need})"
            ));
        }
        msg.push('.');
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_keeps_descriptors_back_for_the_server_itself() {
        let n = NoFile {
            soft_before: 1024,
            soft: 20000,
            hard: 20000,
        };
        assert_eq!(session_capacity(&n, 2, Descriptors::Plain), 20000 - 24);
        assert!(capacity_warning(15_000, 2, &n, Descriptors::Plain).is_none());
        let w = capacity_warning(1_000_000, 2, &n, Descriptors::Plain).unwrap();
        assert!(w.contains("RLIMIT_NOFILE is 20000"), "{w}");
        assert!(w.contains("1000024 descriptors"), "{w}");
        assert!(w.contains("LimitNOFILE"), "{w}");
    }

    #[test]
    fn direct_descriptors_give_each_worker_a_table_of_its_own() {
        let n = NoFile {
            soft_before: 1024,
            soft: 20000,
            hard: 20000,
        };
        assert_eq!(direct_slots(&n), 20000);
        assert_eq!(
            session_capacity(&n, 2, Descriptors::Direct),
            2 * (20000 - DIRECT_SLACK)
        );
        assert!(capacity_warning(39_000, 2, &n, Descriptors::Direct).is_none());
        assert!(capacity_warning(39_000, 2, &n, Descriptors::Plain).is_some());
        let w = capacity_warning(100_000, 2, &n, Descriptors::Direct).unwrap();
        assert!(w.contains("each worker's ring holds 19936 sessions"), "{w}");
        assert!(w.contains("2 workers hold at most 39872"), "{w}");
        assert!(w.contains("Use --workers 6"), "{w}");
        let small = NoFile { soft: 48, ..n };
        assert_eq!(session_capacity(&small, 1, Descriptors::Direct), 45);
        assert_eq!(
            session_capacity(&n, 3, Descriptors::Thread),
            3 * (20000 - THREAD_RESERVE)
        );
        let w = capacity_warning(100_000, 2, &n, Descriptors::Thread).unwrap();
        assert!(
            w.contains("each worker's thread's descriptor table holds 19984 sessions"),
            "{w}"
        );
        assert!(w.contains("Use --workers 6"), "{w}");
    }

    #[test]
    fn auto_picks_the_shared_table_while_it_fits_then_a_table_per_worker() {
        let n = NoFile {
            soft_before: 1024,
            soft: 20000,
            hard: 20000,
        };
        let pick = |asked, uring, max, workers, given| {
            layout(asked, uring, max, &n, workers, given).unwrap()
        };
        let l = pick(Descriptors::Auto, true, None, 2, false);
        assert_eq!((l.descriptors, l.workers), (Descriptors::Plain, 2));
        assert_eq!(l.why, "auto:fits-process-table");
        let l = pick(Descriptors::Auto, true, Some(19_976), 2, false);
        assert_eq!(l.descriptors, Descriptors::Plain);
        // io_uring: a worker per CPU, each with as many rings as needed.
        let l = pick(Descriptors::Auto, true, Some(1_000_000), 2, false);
        assert_eq!(
            (l.descriptors, l.workers, l.rings),
            (Descriptors::Direct, 2, 26)
        );
        assert_eq!(l.why, "auto:over-process-table,io_uring");
        assert!(l.capacity(&n) >= 1_000_000);
        assert!(
            Layout {
                rings: 25,
                ..l.clone()
            }
            .capacity(&n)
                < 1_000_000
        );
        let l = pick(Descriptors::Direct, true, Some(1_000_000), 54, true);
        assert_eq!((l.workers, l.rings), (54, 1));
        let l = pick(Descriptors::Auto, false, Some(1_000_000), 2, false);
        assert_eq!((l.descriptors, l.workers), (Descriptors::Thread, 51));
        assert_eq!(l.why, "auto:over-process-table,epoll");
        // More CPUs than tables needed: one worker per CPU, one ring each.
        let l = pick(Descriptors::Auto, true, Some(30_000), 8, false);
        assert_eq!(
            (l.descriptors, l.workers, l.rings),
            (Descriptors::Direct, 8, 1)
        );
        // A given --workers is kept (the capacity warning speaks).
        let l = pick(Descriptors::Thread, false, Some(1_000_000), 4, true);
        assert_eq!(
            (l.descriptors, l.workers, l.why.as_str()),
            (Descriptors::Thread, 4, "forced")
        );
        let l = pick(Descriptors::Plain, true, Some(1_000_000), 2, false);
        assert_eq!((l.descriptors, l.workers), (Descriptors::Plain, 2));
        let e = layout(Descriptors::Direct, false, None, &n, 2, false).unwrap_err();
        assert!(
            e.contains("--descriptors direct needs the io_uring backend"),
            "{e}"
        );
    }

    #[test]
    fn memlock_names_the_limit_the_rings_need_and_the_fixes() {
        let m = MemLock {
            soft: 8 << 20,
            hard: 8 << 20,
            ipc_lock: false,
        };
        let ring = 280 * 1024;
        assert_eq!(m.rings_that_fit(ring), Some(29));
        assert!(m.shortfall(29, ring).is_none());
        let w = m.shortfall(51, ring).unwrap();
        assert!(w.contains("RLIMIT_MEMLOCK is 8192 KiB"), "{w}");
        assert!(
            w.contains("51 worker rings of ~280 KiB need 14280 KiB, and 29 fit"),
            "{w}"
        );
        assert!(w.contains("ulimit -l 14280"), "{w}");
        assert!(w.contains("CAP_IPC_LOCK"), "{w}");
        let privileged = MemLock {
            ipc_lock: true,
            ..m
        };
        assert!(privileged.shortfall(1_000, ring).is_none());
        assert!(has_capability(
            "Name:\tx\nCapEff:\t0000000000004000\n",
            CAP_IPC_LOCK
        ));
        assert!(!has_capability("CapEff:\t000001ffffffbfff\n", CAP_IPC_LOCK));
    }

    #[test]
    fn raising_nofile_reaches_the_hard_limit() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
    }
}
