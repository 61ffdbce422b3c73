//! Statistics: per-worker counters published without locks, and the
//! process-wide report printed each interval and written as JSON on exit.
//!
//! Each worker owns one [`WorkerStats`] (on its own cache line) and is its
//! only writer: it stores its plain [`Counters`] into the atomics once per
//! loop turn. The stats thread reads them with relaxed loads; a report may
//! mix values from two adjacent turns, which is fine for counters.
#![forbid(unsafe_code)]

use crate::core::{CloseReason, Counters};
use crate::lag::LagReading;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's published counters and gauges.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerStats {
    sessions_open: AtomicU64,
    spill_bytes: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    shed: AtomicU64,
    shed_lag: AtomicU64,
    loop_lag_us: AtomicU64,
    loop_lag_max_us: AtomicU64,
    lag_shedding: AtomicU64,
    closed: [AtomicU64; 7],
    heartbeats: AtomicU64,
    commands: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    spilled_frames: AtomicU64,
    spilled_writes: AtomicU64,
    accept_errors_fd: AtomicU64,
    recv_enobufs: AtomicU64,
    recv_rearms: AtomicU64,
}

/// Counters and gauges at one moment: of one worker, or summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub sessions_open: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Refused busy by the accept gate (rate limit or overload).
    #[serde(default)]
    pub shed: u64,
    /// Of `shed`: refused while the worker's loop lagged past `--max-lag`.
    #[serde(default)]
    pub shed_lag: u64,
    /// Workers answering new connections busy for loop lag now (a gauge).
    #[serde(default)]
    pub lag_shedding: u64,
    /// Lag of the last wheel tick, µs (the largest over workers when summed).
    #[serde(default)]
    pub loop_lag_us: u64,
    /// Largest tick lag since start, µs (the largest over workers).
    #[serde(default)]
    pub loop_lag_max_us: u64,
    pub closed: Closed,
    pub heartbeats: u64,
    pub commands: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub spill_bytes: u64,
    pub spilled_frames: u64,
    pub spilled_writes: u64,
    pub accept_errors_fd: u64,
    /// io_uring: multishot recvs ended by an empty provided-buffer ring.
    #[serde(default)]
    pub recv_enobufs: u64,
    /// io_uring: multishot recvs the kernel ended and the worker re-armed.
    #[serde(default)]
    pub recv_rearms: u64,
}

/// Sessions closed, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub peer: u64,
    pub evicted: u64,
    pub protocol: u64,
    pub reset: u64,
    pub overflow: u64,
    pub shutdown: u64,
    /// Partial frame held past --frame-timeout (slowloris).
    #[serde(default)]
    pub frame_timeout: u64,
}

impl WorkerStats {
    /// Called by the owning worker only.
    pub fn publish(&self, c: &Counters, sessions_open: usize, spill_bytes: usize, lag: LagReading) {
        self.sessions_open.store(sessions_open as u64, Relaxed);
        self.spill_bytes.store(spill_bytes as u64, Relaxed);
        self.accepted.store(c.accepted, Relaxed);
        self.rejected.store(c.rejected, Relaxed);
        self.shed.store(c.shed, Relaxed);
        self.shed_lag.store(c.shed_lag, Relaxed);
        self.loop_lag_us.store(lag.last_us, Relaxed);
        self.loop_lag_max_us.store(lag.max_us, Relaxed);
        self.lag_shedding.store(u64::from(lag.shedding), Relaxed);
        for (slot, value) in self.closed.iter().zip(c.closed) {
            slot.store(value, Relaxed);
        }
        self.heartbeats.store(c.heartbeats, Relaxed);
        self.commands.store(c.commands, Relaxed);
        self.bytes_in.store(c.bytes_in, Relaxed);
        self.bytes_out.store(c.bytes_out, Relaxed);
        self.spilled_frames.store(c.spilled_frames, Relaxed);
        self.spilled_writes.store(c.spilled_writes, Relaxed);
        self.accept_errors_fd.store(c.accept_errors_fd, Relaxed);
        self.recv_enobufs.store(c.recv_enobufs, Relaxed);
        self.recv_rearms.store(c.recv_rearms, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let closed = |r: CloseReason| self.closed[r as usize].load(Relaxed);
        Snapshot {
            sessions_open: self.sessions_open.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            shed: self.shed.load(Relaxed),
            shed_lag: self.shed_lag.load(Relaxed),
            lag_shedding: self.lag_shedding.load(Relaxed),
            loop_lag_us: self.loop_lag_us.load(Relaxed),
            loop_lag_max_us: self.loop_lag_max_us.load(Relaxed),
            closed: Closed {
                peer: closed(CloseReason::Peer),
                evicted: closed(CloseReason::Evicted),
                protocol: closed(CloseReason::Protocol),
                reset: closed(CloseReason::Reset),
                overflow: closed(CloseReason::Overflow),
                shutdown: closed(CloseReason::Shutdown),
                frame_timeout: closed(CloseReason::FrameTimeout),
            },
            heartbeats: self.heartbeats.load(Relaxed),
            commands: self.commands.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            spill_bytes: self.spill_bytes.load(Relaxed),
            spilled_frames: self.spilled_frames.load(Relaxed),
            spilled_writes: self.spilled_writes.load(Relaxed),
            accept_errors_fd: self.accept_errors_fd.load(Relaxed),
            recv_enobufs: self.recv_enobufs.load(Relaxed),
            recv_rearms: self.recv_rearms.load(Relaxed),
        }
    }
}

impl Snapshot {
    /// The counters alone: the gauges (sessions open, spill bytes, lag now,
    /// workers shedding) zeroed. What outlives the process that counted
    /// them: a died or upgraded child's under a supervisor, an upgraded
    /// process's in its successor ([`Lineage`]).
    pub fn counters(mut self) -> Snapshot {
        self.sessions_open = 0;
        self.spill_bytes = 0;
        self.lag_shedding = 0;
        self.loop_lag_us = 0;
        self
    }
}

/// What a process that upgraded in place hands its successor, so the
/// successor's counters and CPU go on from the old process's instead of
/// starting at zero (a supervisor's children keep theirs in the supervisor
/// instead: see `supervisor::Totals`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Every counter of this process and its predecessors; gauges zero.
    pub counters: Snapshot,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// Upgrades in place so far, this one included.
    pub upgrades: u64,
}

impl Lineage {
    /// What a process hands on: its own counters (`own`, summed over its
    /// workers) and CPU, on top of what it inherited.
    pub fn hand_on(inherited: Option<&Lineage>, own: Snapshot, usage: ProcessUsage) -> Lineage {
        let base = inherited.copied().unwrap_or_default();
        let mut counters = base.counters;
        counters += own.counters();
        Lineage {
            counters,
            cpu_user_s: base.cpu_user_s + usage.cpu_user_s,
            cpu_sys_s: base.cpu_sys_s + usage.cpu_sys_s,
            upgrades: base.upgrades + 1,
        }
    }

    /// Adds what the predecessors counted to this process's report.
    pub fn apply(&self, report: &mut Report) {
        report.totals += self.counters;
        report.cpu_user_s += self.cpu_user_s;
        report.cpu_sys_s += self.cpu_sys_s;
        report.upgrades = self.upgrades;
    }
}

impl std::ops::AddAssign for Closed {
    fn add_assign(&mut self, o: Closed) {
        self.peer += o.peer;
        self.evicted += o.evicted;
        self.protocol += o.protocol;
        self.reset += o.reset;
        self.overflow += o.overflow;
        self.shutdown += o.shutdown;
        self.frame_timeout += o.frame_timeout;
    }
}

impl std::ops::AddAssign for Snapshot {
    fn add_assign(&mut self, o: Snapshot) {
        self.sessions_open += o.sessions_open;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.shed += o.shed;
        self.shed_lag += o.shed_lag;
        self.lag_shedding += o.lag_shedding;
        // Lag is per worker: the worst one speaks for the sum.
        self.loop_lag_us = self.loop_lag_us.max(o.loop_lag_us);
        self.loop_lag_max_us = self.loop_lag_max_us.max(o.loop_lag_max_us);
        self.closed += o.closed;
        self.heartbeats += o.heartbeats;
        self.commands += o.commands;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.spill_bytes += o.spill_bytes;
        self.spilled_frames += o.spilled_frames;
        self.spilled_writes += o.spilled_writes;
        self.accept_errors_fd += o.accept_errors_fd;
        self.recv_enobufs += o.recv_enobufs;
        self.recv_rearms += o.recv_rearms;
    }
}

impl std::iter::Sum for Snapshot {
    fn sum<I: Iterator<Item = Snapshot>>(iter: I) -> Snapshot {
        let mut total = Snapshot::default();
        for s in iter {
            total += s;
        }
        total
    }
}

/// The process report: the `--stats-json` file and the per-interval line.
/// Key names are part of the results schema (DESIGN.md): add, never rename.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub totals: Snapshot,
    pub uptime_s: f64,
    pub max_sessions: u64,
    /// VmRSS of this process now.
    pub rss_bytes: u64,
    /// VmRSS once the workers were up, before any session.
    pub rss_baseline_bytes: u64,
    /// (rss_bytes − rss_baseline_bytes) / sessions_open; 0 with no session.
    pub rss_bytes_per_session: f64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// Server processes summed in this report (1 without a supervisor).
    #[serde(default = "one")]
    pub procs: u64,
    /// Child processes restarted by the supervisor after dying.
    #[serde(default)]
    pub restarts: u64,
    /// Sessions that were open in children that died (lost, not closed).
    #[serde(default)]
    pub sessions_lost: u64,
    /// Connections this process's listeners dropped since start (accept
    /// queue full, SYN dropped: SO_MEMINFO drops per listener, summed; the
    /// namespace's TcpExt ListenOverflows only where SO_MEMINFO is refused):
    /// the overload signal behind fast reject.
    #[serde(default)]
    pub listen_overflows: u64,
    /// Upgrades in place this server went through (`c10m-server upgrade`,
    /// SIGUSR2): its counters and CPU include its predecessors'.
    #[serde(default)]
    pub upgrades: u64,
    /// Per worker (one process), or per child process (supervisor).
    pub workers: Vec<Snapshot>,
}

fn one() -> u64 {
    1
}

impl Report {
    /// Builds a report from worker snapshots and process readings.
    pub fn new(workers: Vec<Snapshot>, process: ProcessUsage, baseline_rss: u64) -> Report {
        let totals: Snapshot = workers.iter().copied().sum();
        let growth = process.rss_bytes.saturating_sub(baseline_rss) as f64;
        Report {
            totals,
            uptime_s: 0.0,
            max_sessions: 0,
            rss_bytes: process.rss_bytes,
            rss_baseline_bytes: baseline_rss,
            rss_bytes_per_session: if totals.sessions_open == 0 {
                0.0
            } else {
                growth / totals.sessions_open as f64
            },
            cpu_user_s: process.cpu_user_s,
            cpu_sys_s: process.cpu_sys_s,
            procs: 1,
            restarts: 0,
            sessions_lost: 0,
            listen_overflows: 0,
            upgrades: 0,
            workers,
        }
    }

    /// One line for humans and scripts: `key=value` pairs, rates over
    /// `since` (the previous report) when given.
    pub fn line(&self, since: Option<&Report>) -> String {
        let t = &self.totals;
        let (dt, prev_hb, prev_acc) = match since {
            Some(p) => (
                self.uptime_s - p.uptime_s,
                p.totals.heartbeats,
                p.totals.accepted,
            ),
            None => (self.uptime_s, 0, 0),
        };
        let rate = |now: u64, before: u64| {
            if dt > 0.0 {
                (now.saturating_sub(before)) as f64 / dt
            } else {
                0.0
            }
        };
        let procs = if self.procs > 1 {
            format!(
                " procs={} restarts={} lost={}",
                self.procs, self.restarts, self.sessions_lost
            )
        } else {
            String::new()
        };
        let upgrades = if self.upgrades > 0 {
            format!(" upgrades={}", self.upgrades)
        } else {
            String::new()
        };
        format!(
            "stats t={:.1}s open={} accepted={} accepts/s={:.0} rejected={} shed={} \
             shed_lag={} lag_shedding={} loop_lag_ms={:.1} loop_lag_max_ms={:.1} \
             closed=peer:{},evicted:{},protocol:{},reset:{},overflow:{},shutdown:{},frame_timeout:{} \
             heartbeats={} hb/s={:.0} in={} out={} spill={} accept_fd_errors={} \
             enobufs={} rearms={} rss={} rss/session={:.1}B cpu=user:{:.2}s,sys:{:.2}s{}{}",
            self.uptime_s,
            t.sessions_open,
            t.accepted,
            rate(t.accepted, prev_acc),
            t.rejected,
            t.shed,
            t.shed_lag,
            t.lag_shedding,
            t.loop_lag_us as f64 / 1000.0,
            t.loop_lag_max_us as f64 / 1000.0,
            t.closed.peer,
            t.closed.evicted,
            t.closed.protocol,
            t.closed.reset,
            t.closed.overflow,
            t.closed.shutdown,
            t.closed.frame_timeout,
            t.heartbeats,
            rate(t.heartbeats, prev_hb),
            t.bytes_in,
            t.bytes_out,
            t.spill_bytes,
            t.accept_errors_fd,
            t.recv_enobufs,
            t.recv_rearms,
            self.rss_bytes,
            self.rss_bytes_per_session,
            self.cpu_user_s,
            self.cpu_sys_s,
            procs,
            upgrades,
        )
    }
}

/// Memory and CPU of this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessUsage {
    pub rss_bytes: u64,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
}

impl ProcessUsage {
    /// Reads VmRSS from /proc/self/status and CPU times from getrusage.
    /// A missing /proc reads as 0 RSS rather than failing the server.
    pub fn read() -> ProcessUsage {
        let rss_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_vm_rss(&s))
            .unwrap_or(0);
        let (cpu_user_s, cpu_sys_s) =
            match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
                Ok(u) => (seconds(u.user_time()), seconds(u.system_time())),
                Err(_) => (0.0, 0.0),
            };
        ProcessUsage {
            rss_bytes,
            cpu_user_s,
            cpu_sys_s,
        }
    }
}

fn seconds(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// VmRSS in bytes from the text of /proc/PID/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counters_come_back_in_a_snapshot_and_sum() {
        let stats = WorkerStats::default();
        let mut c = Counters {
            accepted: 5,
            heartbeats: 9,
            recv_enobufs: 4,
            recv_rearms: 6,
            ..Counters::default()
        };
        c.closed[CloseReason::Evicted as usize] = 2;
        c.shed_lag = 4;
        let lag = LagReading {
            last_us: 700,
            max_us: 9000,
            shedding: true,
        };
        stats.publish(&c, 3, 10, lag);
        let s = stats.snapshot();
        assert_eq!((s.shed_lag, s.lag_shedding), (4, 1));
        assert_eq!((s.loop_lag_us, s.loop_lag_max_us), (700, 9000));
        assert_eq!((s.accepted, s.heartbeats, s.closed.evicted), (5, 9, 2));
        assert_eq!((s.sessions_open, s.spill_bytes), (3, 10));
        assert_eq!((s.recv_enobufs, s.recv_rearms), (4, 6));
        let total: Snapshot = [s, s].into_iter().sum();
        assert_eq!((total.accepted, total.closed.evicted), (10, 4));
        assert_eq!((total.recv_enobufs, total.recv_rearms), (8, 12));
        let line = Report::new(vec![total], ProcessUsage::default(), 0).line(None);
        assert!(line.contains(" enobufs=8 rearms=12 "), "{line}");
        assert_eq!((total.shed_lag, total.lag_shedding), (8, 2), "counts sum");
        let calm = Snapshot {
            loop_lag_us: 100,
            loop_lag_max_us: 20_000,
            ..Snapshot::default()
        };
        let total: Snapshot = [s, calm].into_iter().sum();
        assert_eq!(
            (total.loop_lag_us, total.loop_lag_max_us),
            (700, 20_000),
            "lag is the worst worker's, not a sum"
        );
    }

    #[test]
    fn rss_per_session_is_growth_over_baseline() {
        let w = Snapshot {
            sessions_open: 1000,
            ..Snapshot::default()
        };
        let usage = ProcessUsage {
            rss_bytes: 1_064_000,
            ..ProcessUsage::default()
        };
        let r = Report::new(vec![w], usage, 1_000_000);
        assert_eq!(r.rss_bytes_per_session, 64.0);
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "sessions_open",
            "accepted",
            "rejected",
            "heartbeats",
            "bytes_in",
            "bytes_out",
            "spill_bytes",
            "rss_bytes",
            "rss_bytes_per_session",
            "cpu_user_s",
            "cpu_sys_s",
            "recv_enobufs",
            "recv_rearms",
        ] {
            assert!(json.get(key).is_some(), "missing key {key}");
        }
        for key in ["peer", "evicted", "protocol", "reset"] {
            assert!(json["closed"].get(key).is_some(), "missing closed.{key}");
        }
    }

    #[test]
    fn a_lineage_carries_counters_and_cpu_not_gauges_through_upgrades() {
        let own = Snapshot {
            sessions_open: 7,
            spill_bytes: 100,
            lag_shedding: 1,
            loop_lag_us: 500,
            loop_lag_max_us: 9_000,
            accepted: 10,
            heartbeats: 40,
            closed: Closed {
                peer: 3,
                ..Closed::default()
            },
            ..Snapshot::default()
        };
        let usage = ProcessUsage {
            rss_bytes: 1 << 20,
            cpu_user_s: 1.5,
            cpu_sys_s: 2.0,
        };
        let first = Lineage::hand_on(None, own, usage);
        assert_eq!(first.upgrades, 1);
        assert_eq!(
            (first.counters.accepted, first.counters.heartbeats),
            (10, 40)
        );
        assert_eq!(first.counters.closed.peer, 3);
        assert_eq!(
            (first.counters.sessions_open, first.counters.spill_bytes),
            (0, 0),
            "the sessions are counted again where they went"
        );
        assert_eq!(
            (first.counters.lag_shedding, first.counters.loop_lag_us),
            (0, 0)
        );
        assert_eq!(first.counters.loop_lag_max_us, 9_000);
        // The successor counts on from there, and hands on the sum.
        let second = Lineage::hand_on(Some(&first), own, usage);
        assert_eq!(second.upgrades, 2);
        assert_eq!(
            (second.counters.accepted, second.counters.heartbeats),
            (20, 80)
        );
        assert_eq!((second.cpu_user_s, second.cpu_sys_s), (3.0, 4.0));
        let mut r = Report::new(vec![own], usage, 0);
        second.apply(&mut r);
        assert_eq!(r.totals.accepted, 30);
        assert_eq!(r.totals.sessions_open, 7, "only this process's sessions");
        assert_eq!((r.cpu_user_s, r.upgrades), (4.5, 2));
        assert!(r.line(None).ends_with(" upgrades=2"), "{}", r.line(None));
        let plain = Report::new(vec![own], usage, 0).line(None);
        assert!(!plain.contains("upgrades="), "{plain}");
        // A report from before the field reads as no upgrade.
        let mut json = serde_json::to_value(&r).unwrap();
        json.as_object_mut().unwrap().remove("upgrades");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.upgrades, 0);
    }

    #[test]
    fn vm_rss_parses_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(ProcessUsage::read().rss_bytes > 0);
    }
}
