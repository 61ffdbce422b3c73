//! `AcceptGate`: fast reject before any session state exists.
//!
//! A worker asks the gate about each accepted connection. The gate says
//! "busy" when the worker's accept token bucket (`--accept-rate`, new
//! sessions per second per worker, one second of burst) is empty, or while
//! the server is overloaded (listen-queue drops sustained for
//! `--overload-after`, a loop lagging past `--max-lag`, a spill area over half
//! its budget). A busy connection gets `-ERR BUSY retry-after=<s>` and is
//! closed at once: the excess is served lossily, the sessions already held
//! are not touched. Sans-IO: the caller passes the time.
#![forbid(unsafe_code)]

/// The gate's answer for one new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Admit,
    /// Refuse; the client should retry after this many seconds.
    Busy {
        retry_after_s: u32,
    },
}

#[derive(Debug, Clone)]
pub struct AcceptGate {
    /// Tokens per nanosecond; 0: no rate limit.
    per_ns: f64,
    burst: f64,
    tokens: f64,
    last_ns: u64,
    /// What to tell clients refused for overload (and for a full server).
    pub retry_after_s: u32,
}

impl AcceptGate {
    /// `rate`: new sessions per second (0: unlimited).
    pub fn new(rate: u32, retry_after_s: u32) -> Self {
        let burst = f64::from(rate.max(1));
        AcceptGate {
            per_ns: f64::from(rate) / 1e9,
            burst,
            tokens: burst,
            last_ns: 0,
            retry_after_s: retry_after_s.max(1),
        }
    }

    /// Decides for one connection accepted at `now_ns` (monotonic).
    pub fn check(&mut self, now_ns: u64, overloaded: bool) -> Gate {
        if overloaded {
            return Gate::Busy {
                retry_after_s: self.retry_after_s,
            };
        }
        if self.per_ns == 0.0 {
            return Gate::Admit;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed * self.per_ns).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Gate::Admit;
        }
        // Time until one token, rounded up to whole seconds (at least 1).
        let wait_s = ((1.0 - self.tokens) / self.per_ns / 1e9).ceil() as u32;
        Gate::Busy {
            retry_after_s: wait_s.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_rate_holds_over_time_with_one_second_of_burst() {
        let mut gate = AcceptGate::new(100, 5);
        let mut admitted = 0;
        // 10 s of 1 000 attempts per second, one every millisecond.
        for ms in 0..10_000u64 {
            if gate.check(ms * 1_000_000, false) == Gate::Admit {
                admitted += 1;
            }
        }
        // 100 of burst, then 100 per second.
        assert!((1090..=1101).contains(&admitted), "{admitted}");
    }

    #[test]
    fn busy_answers_say_when_to_come_back() {
        let mut gate = AcceptGate::new(1, 7);
        assert_eq!(gate.check(0, false), Gate::Admit);
        assert_eq!(gate.check(S / 10, false), Gate::Busy { retry_after_s: 1 });
        assert_eq!(gate.check(S + S / 10, false), Gate::Admit);
        assert_eq!(gate.check(2 * S, true), Gate::Busy { retry_after_s: 7 });
        let mut open = AcceptGate::new(0, 5);
        assert!((0..10_000).all(|i| open.check(i, false) == Gate::Admit));
    }
}
