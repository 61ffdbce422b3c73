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

    /// Absolute CLOCK_MONOTONIC ns of `ms` after the epoch (for timerfd).
    pub fn abs_ns(&self, ms: u32) -> u64 {
        self.epoch_ns + u64::from(ms) * 1_000_000
    }
}
