//! `RunClock`: the run's time base. Every time in a run is measured from one
//! epoch on CLOCK_MONOTONIC, which is system-wide, so child processes given
//! the parent's epoch agree with it to the microsecond. Heartbeat payloads
//! carry µs since this epoch.
#![forbid(unsafe_code)]

use nix::time::{clock_gettime, ClockId};

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunClock {
    epoch_ns: u64,
}

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// CLOCK_REALTIME now, in ns (the clock of the kernel's receive
/// timestamps).
pub fn realtime_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME is always there");
    (t.tv_sec().max(0) as u64) * 1_000_000_000 + t.tv_nsec() as u64
}

impl RunClock {
    /// A clock whose epoch is now.
    pub fn start() -> Self {
        RunClock {
            epoch_ns: monotonic_ns(),
        }
    }

    pub fn from_epoch_ns(epoch_ns: u64) -> Self {
        RunClock { epoch_ns }
    }

    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }

    /// µs since the epoch.
    pub fn now_us(&self) -> u64 {
        monotonic_ns().saturating_sub(self.epoch_ns) / 1_000
    }

    /// The run time (µs) of `realtime_ns`, a CLOCK_REALTIME time in the
    /// recent past, given the pair (`now_us`, `now_realtime_ns`) read
    /// together just now. A time not in the past (the wall clock was set
    /// back meanwhile) maps to `now_us`.
    pub fn run_us_of_realtime(now_us: u64, now_realtime_ns: u64, realtime_ns: u64) -> u64 {
        now_us.saturating_sub(now_realtime_ns.saturating_sub(realtime_ns) / 1_000)
    }

    /// Absolute CLOCK_MONOTONIC ns of `ms` after the epoch (for timerfd).
    pub fn abs_ns(&self, ms: u32) -> u64 {
        self.epoch_ns + u64::from(ms) * 1_000_000
    }
}
