//! `TokenBucket`: the ramp's connect pacing, sans-IO (time in µs).
//!
//! Tokens accrue at `rate` per second up to `burst`; each new connection
//! takes one. The small burst bounds how fast the ramp catches up after a
//! stall (a stall must not turn into a SYN flood that overflows the
//! server's backlog); the driver's in-flight cap bounds it further.
#![forbid(unsafe_code)]

/// See the module docs.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_us: f64,
    burst: f64,
    tokens: f64,
    last_us: u64,
}

impl TokenBucket {
    /// A bucket starting empty at `now_us`.
    pub fn new(rate_per_s: f64, burst: f64, now_us: u64) -> Self {
        TokenBucket {
            rate_per_us: rate_per_s / 1e6,
            burst: burst.max(1.0),
            tokens: 0.0,
            last_us: now_us,
        }
    }

    fn refill(&mut self, now_us: u64) {
        if now_us > self.last_us {
            let gained = (now_us - self.last_us) as f64 * self.rate_per_us;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.last_us = now_us;
        }
    }

    /// Takes a token if one is available at `now_us`.
    pub fn try_take(&mut self, now_us: u64) -> bool {
        self.refill(now_us);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is available (`now_us` if one already is).
    pub fn next_token_us(&self, now_us: u64) -> u64 {
        let mut probe = self.clone();
        probe.refill(now_us);
        if probe.tokens >= 1.0 || self.rate_per_us <= 0.0 {
            return now_us;
        }
        now_us + ((1.0 - probe.tokens) / self.rate_per_us).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_at_the_rate_and_bounds_catch_up() {
        let mut b = TokenBucket::new(1_000.0, 10.0, 0);
        let mut granted = 0u64;
        let mut now = 0u64;
        while now < 10_000_000 {
            if b.try_take(now) {
                granted += 1;
            } else {
                now = b.next_token_us(now);
            }
        }
        assert!((9_990..=10_000).contains(&granted), "{granted}");
        // After a 5 s stall only the burst is available at once.
        now += 5_000_000;
        let mut burst = 0;
        while b.try_take(now) {
            burst += 1;
        }
        assert_eq!(burst, 10);
        assert_eq!(b.next_token_us(now), now + 1_000);
    }
}
