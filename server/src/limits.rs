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
    nofile.soft.min(u64::from(u32::MAX)) as u32
}

/// Sessions this process can hold under its descriptor limit: plain
/// descriptors share the process's table; with `direct` (io_uring direct
/// descriptors) each worker's ring has a table of its own.
pub fn session_capacity(nofile: &NoFile, workers: usize, direct: bool) -> u64 {
    if direct {
        workers as u64 * direct_ring_capacity(u64::from(direct_slots(nofile)))
    } else {
        nofile.soft.saturating_sub(reserved_fds(workers))
    }
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
    direct: bool,
) -> Option<String> {
    let capacity = session_capacity(nofile, workers, direct);
    if max_sessions <= capacity {
        return None;
    }
    if direct {
        let per_worker = (capacity / workers.max(1) as u64).max(1);
        return Some(format!(
            "warning: --max-sessions {max_sessions} cannot be met: with --descriptors direct \
             each worker's ring holds {per_worker} sessions (RLIMIT_NOFILE {} slots, less \
             slack), so {workers} workers hold at most {capacity}. Use --workers {} (threads \
             may outnumber CPUs), or raise the hard RLIMIT_NOFILE.",
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
        assert_eq!(session_capacity(&n, 2, false), 20000 - 24);
        assert!(capacity_warning(15_000, 2, &n, false).is_none());
        let w = capacity_warning(1_000_000, 2, &n, false).unwrap();
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
        assert_eq!(session_capacity(&n, 2, true), 2 * (20000 - DIRECT_SLACK));
        assert!(capacity_warning(39_000, 2, &n, true).is_none());
        assert!(capacity_warning(39_000, 2, &n, false).is_some());
        let w = capacity_warning(100_000, 2, &n, true).unwrap();
        assert!(w.contains("each worker's ring holds 19936 sessions"), "{w}");
        assert!(w.contains("2 workers hold at most 39872"), "{w}");
        assert!(w.contains("Use --workers 6"), "{w}");
        let small = NoFile { soft: 48, ..n };
        assert_eq!(session_capacity(&small, 1, true), 45);
    }

    #[test]
    fn raising_nofile_reaches_the_hard_limit() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
    }
}
