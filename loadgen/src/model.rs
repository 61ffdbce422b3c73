//! `HeartbeatModel`: what a production client population does, as pure
//! functions of `(seed, session id, time)`.
//!
//! Nothing here holds per-session state or reads a clock: every decision is
//! a hash of the run's seed, the session's global id and the input time, so
//! a session's whole life can be recomputed from the few numbers its
//! 16-byte record keeps ([`crate::session::ClientSession`]), the schedule is
//! the same whatever the thread/process layout, and the models are tested on
//! simulated time.
//!
//! Times are milliseconds since the run's epoch (`u32`: 49 days). The
//! ramp ends at `ramp_end_ms`; phases follow; `end_ms` is when heartbeats
//! stop.
//!
//! - **Classes**: weighted; each has its own interval and jitter (uniform in
//!   `interval × (1 ± jitter)`, so the mean interval is exact).
//! - **First heartbeat** ([`FirstBeat`]): by default a session opened by
//!   the ramp sends its first heartbeat at a uniform phase in
//!   `[0, interval)` so the load is flat from the start (a population that
//!   was already connected); with `first_heartbeat = "interval"` it waits
//!   one jittered interval, as after a mass reconnect (a server restart:
//!   every client's keepalive timer starts when it connects). A session
//!   that *re*connects always starts a regular interval after connecting.
//! - **Churn**: each connection lives an exponential or log-normal time, then
//!   the client closes and reconnects after a jittered delay.
//! - **Storms**: a fraction of sessions send one extra heartbeat inside a
//!   window; the storm message counts as activity, so the regular schedule
//!   restarts from it.
//! - **Outages**: a fraction of sessions are dropped at once and reconnect on
//!   a jittered exponential backoff schedule; the attempts that fall inside
//!   the outage are taken to have failed, the first after it succeeds.
//! - **Drain**: every session closes at a uniform time inside the window and
//!   does not come back.
//! - **Tick**: heartbeats fall on multiples of `tick_ms` (1 by default),
//!   so a client thread sends a tick's heartbeats in one wake-up; intervals
//!   are rounded to the nearest tick and first heartbeats and storms up to
//!   the next, and the intended time (from which lag and round trips are
//!   measured) is the on-tick one. Closes and reconnects keep their
//!   millisecond.
#![forbid(unsafe_code)]

/// One weighted client class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientClass {
    pub name: String,
    pub weight: f64,
    pub interval_ms: u32,
    /// Fraction in `[0, 1)`: intervals are uniform in `interval × (1 ± jitter)`.
    pub jitter: f64,
}

/// How long a connection lives before the client closes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lifetime {
    Exponential {
        mean_ms: f64,
    },
    /// Log-normal with the given mean and log-space sigma.
    LogNormal {
        mean_ms: f64,
        sigma: f64,
    },
}

impl Lifetime {
    pub fn mean_ms(&self) -> f64 {
        match *self {
            Lifetime::Exponential { mean_ms } | Lifetime::LogNormal { mean_ms, .. } => mean_ms,
        }
    }

    /// Inverse-transform sample from two uniforms in `[0, 1)`.
    pub fn sample(&self, u1: f64, u2: f64) -> f64 {
        match *self {
            Lifetime::Exponential { mean_ms } => -mean_ms * (1.0 - u1).ln(),
            Lifetime::LogNormal { mean_ms, sigma } => {
                // Box-Muller; mu chosen so that E[X] = mean.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let mu = mean_ms.ln() - sigma * sigma / 2.0;
                (mu + sigma * z).exp()
            }
        }
    }
}

/// Session churn: close after a sampled lifetime, reconnect after a
/// jittered delay (uniform in `[0.5, 1.5] × reconnect_ms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    pub lifetime: Lifetime,
    pub reconnect_ms: u32,
}

/// A heartbeat storm: `fraction` of sessions send inside `[at, at + window)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Storm {
    pub at_ms: u32,
    pub window_ms: u32,
    pub fraction: f64,
}

/// An outage: `fraction` of sessions drop at `at_ms`; they retry at
/// `base × 2^k` (capped at `max`, each ×[0.5, 1.5) jitter) and the first
/// attempt at or after `at + down` succeeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub at_ms: u32,
    pub down_ms: u32,
    pub fraction: f64,
    pub backoff_base_ms: u32,
    pub backoff_max_ms: u32,
}

/// Every session closes at a uniform time in `[at, at + window)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    pub at_ms: u32,
    pub window_ms: u32,
}

/// Backoff after a failed connect or an unplanned close.
pub const RETRY_BASE_MS: u32 = 1_000;
pub const RETRY_MAX_MS: u32 = 30_000;

/// Independent random streams: one per decision, so that adding a storm does
/// not shift every session's jitter.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Stream {
    Class = 1,
    Phase,
    Jitter,
    StormPick,
    StormTime,
    Life1,
    Life2,
    Reconnect,
    OutagePick,
    OutageBackoff,
    DrainTime,
    Retry,
}

/// When a ramp session sends its first heartbeat; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstBeat {
    /// A uniform phase in `[0, interval)` after connecting: flat load.
    #[default]
    Spread,
    /// One jittered interval after connecting: a reconnect wave.
    Interval,
}

/// The population's behaviour; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatModel {
    pub seed: u64,
    pub classes: Vec<ClientClass>,
    pub churn: Option<Churn>,
    pub storms: Vec<Storm>,
    pub outages: Vec<Outage>,
    pub drain: Option<Drain>,
    /// When heartbeats stop (end of the last phase).
    pub end_ms: u32,
    pub first: FirstBeat,
    /// Heartbeats fall on multiples of this many ms (see [`Self::on_tick`]).
    pub tick_ms: u32,
}

/// Why a planned close happens; decides whether and when to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    Churn,
    Outage,
    Drain,
}

impl HeartbeatModel {
    /// A single class model: `interval ± jitter`, no churn, no storms.
    pub fn fixed(seed: u64, interval_ms: u32, jitter: f64, end_ms: u32) -> Self {
        HeartbeatModel {
            seed,
            classes: vec![ClientClass {
                name: "default".into(),
                weight: 1.0,
                interval_ms,
                jitter,
            }],
            churn: None,
            storms: Vec::new(),
            outages: Vec::new(),
            drain: None,
            end_ms,
            first: FirstBeat::Spread,
            tick_ms: 1,
        }
    }

    /// `t` rounded up to the heartbeat tick: the time a heartbeat that
    /// falls due at `t` is sent.
    pub fn on_tick(&self, t: u32) -> u32 {
        let tick = u64::from(self.tick_ms.max(1));
        (u64::from(t).div_ceil(tick) * tick).min(u64::from(u32::MAX)) as u32
    }

    fn unit(&self, stream: Stream, sid: u64, k: u64) -> f64 {
        unit(self.seed, stream as u64, sid, k)
    }

    /// The class of session `sid` (index into `classes`).
    pub fn class_of(&self, sid: u64) -> u8 {
        let total: f64 = self.classes.iter().map(|c| c.weight).sum();
        let mut pick = self.unit(Stream::Class, sid, 0) * total;
        for (i, class) in self.classes.iter().enumerate() {
            if pick < class.weight {
                return i as u8;
            }
            pick -= class.weight;
        }
        (self.classes.len() - 1) as u8
    }

    fn class(&self, class: u8) -> &ClientClass {
        &self.classes[usize::from(class)]
    }

    /// First heartbeat of a connection made at `connected_ms`. `first_life`
    /// is true for the ramp's connection (a uniform phase, unless
    /// [`FirstBeat::Interval`]), false for a reconnect (one regular interval).
    pub fn first_beat(&self, sid: u64, class: u8, connected_ms: u32, first_life: bool) -> u32 {
        if first_life && self.first == FirstBeat::Spread {
            let c = self.class(class);
            let phase = (self.unit(Stream::Phase, sid, 0) * f64::from(c.interval_ms)) as u32;
            let t = self.storm_before(sid, connected_ms, connected_ms.saturating_add(phase.max(1)));
            self.on_tick(t)
        } else {
            self.next_beat(sid, class, connected_ms)
        }
    }

    /// The heartbeat after one intended at `prev_ms`: a jittered interval
    /// later, or earlier if a storm picks this session in between. With a
    /// tick over 1 ms the jittered time is rounded to the nearest tick (so
    /// the mean interval stays exact) and a storm's time up to the next.
    pub fn next_beat(&self, sid: u64, class: u8, prev_ms: u32) -> u32 {
        let c = self.class(class);
        let u = self.unit(Stream::Jitter, sid, u64::from(prev_ms));
        let factor = 1.0 + c.jitter * (2.0 * u - 1.0);
        let tick = f64::from(self.tick_ms.max(1));
        let exact = f64::from(prev_ms) + f64::from(c.interval_ms) * factor;
        let nearest = ((exact / tick).round() * tick).min(f64::from(u32::MAX)) as u32;
        let regular = nearest.max(self.on_tick(prev_ms.saturating_add(1)));
        self.on_tick(self.storm_before(sid, prev_ms, regular))
    }

    /// The earliest storm time of `sid` in `(after, regular)`, else `regular`.
    fn storm_before(&self, sid: u64, after: u32, regular: u32) -> u32 {
        let mut best = regular;
        for (i, _) in self.storms.iter().enumerate() {
            if let Some(t) = self.storm_time(sid, i) {
                if t > after && t < best {
                    best = t;
                }
            }
        }
        best
    }

    /// When storm `i` makes session `sid` send, if it picks the session.
    pub fn storm_time(&self, sid: u64, i: usize) -> Option<u32> {
        let s = &self.storms[i];
        if self.unit(Stream::StormPick, sid, i as u64) >= s.fraction {
            return None;
        }
        let offset = self.unit(Stream::StormTime, sid, i as u64) * f64::from(s.window_ms);
        Some(s.at_ms + offset as u32)
    }

    /// The planned close of connection `gen` made at `connected_ms`: the
    /// earliest of churn, an outage that picks this session, and the drain.
    pub fn planned_close(
        &self,
        sid: u64,
        gen: u16,
        connected_ms: u32,
    ) -> Option<(u32, CloseCause)> {
        let mut best: Option<(u32, CloseCause)> = None;
        let mut consider = |t: u32, cause| match best {
            Some((b, _)) if b <= t => {}
            _ => best = Some((t, cause)),
        };
        if let Some(churn) = &self.churn {
            let k = u64::from(gen);
            let life = churn.lifetime.sample(
                self.unit(Stream::Life1, sid, k),
                self.unit(Stream::Life2, sid, k),
            );
            let life = life.clamp(1.0, f64::from(u32::MAX / 2)) as u32;
            consider(connected_ms.saturating_add(life), CloseCause::Churn);
        }
        for (i, o) in self.outages.iter().enumerate() {
            if o.at_ms > connected_ms && self.unit(Stream::OutagePick, sid, i as u64) < o.fraction {
                consider(o.at_ms, CloseCause::Outage);
            }
        }
        if let Some(d) = &self.drain {
            let t =
                d.at_ms + (self.unit(Stream::DrainTime, sid, 0) * f64::from(d.window_ms)) as u32;
            consider(t.max(connected_ms.saturating_add(1)), CloseCause::Drain);
        }
        best
    }

    /// When a session closed for `cause` at `closed_ms` connects again
    /// (`None`: it stays closed).
    pub fn reconnect_at(
        &self,
        sid: u64,
        gen: u16,
        cause: CloseCause,
        closed_ms: u32,
    ) -> Option<u32> {
        let t = match cause {
            CloseCause::Drain => return None,
            CloseCause::Churn => {
                let base = f64::from(self.churn.map_or(RETRY_BASE_MS, |c| c.reconnect_ms));
                let u = self.unit(Stream::Reconnect, sid, u64::from(gen));
                closed_ms.saturating_add((base * (0.5 + u)) as u32)
            }
            CloseCause::Outage => {
                let (i, o) = self
                    .outages
                    .iter()
                    .enumerate()
                    .find(|(_, o)| o.at_ms == closed_ms)?;
                self.outage_return(sid, i, o)?
            }
        };
        self.before_drain(t)
    }

    /// First backoff attempt at or after the end of outage `i`.
    fn outage_return(&self, sid: u64, i: usize, o: &Outage) -> Option<u32> {
        let up = u64::from(o.at_ms) + u64::from(o.down_ms);
        let mut t = u64::from(o.at_ms);
        let mut delay = u64::from(o.backoff_base_ms.max(1));
        for k in 0..64u64 {
            let u = self.unit(Stream::OutageBackoff, sid, (i as u64) << 32 | k);
            t += ((delay as f64) * (0.5 + u)).max(1.0) as u64;
            if t >= up {
                return u32::try_from(t).ok();
            }
            delay = (delay * 2).min(u64::from(o.backoff_max_ms.max(1)));
        }
        None
    }

    /// Retry after a failed connect or an unplanned close: jittered
    /// exponential backoff on the consecutive-failure count.
    /// When a failed session tries again: exponential backoff from
    /// RETRY_BASE_MS doubling to RETRY_MAX_MS, jittered ×0.5–1.5; never
    /// before a server's retry-after (`not_before`), and then spread over
    /// half the wait again so refused clients do not return as one herd.
    pub fn retry_at(
        &self,
        sid: u64,
        gen: u16,
        failures: u8,
        now_ms: u32,
        not_before: Option<u32>,
    ) -> Option<u32> {
        let delay = (u64::from(RETRY_BASE_MS) << failures.saturating_sub(1).min(16))
            .min(u64::from(RETRY_MAX_MS));
        let u = self.unit(Stream::Retry, sid, u64::from(gen));
        let backoff = now_ms.saturating_add((delay as f64 * (0.5 + u)) as u32);
        let at = match not_before {
            Some(nb) => {
                let wait = f64::from(nb.saturating_sub(now_ms));
                backoff.max(nb.saturating_add((wait * 0.5 * u) as u32))
            }
            None => backoff,
        };
        self.before_drain(at)
    }

    /// No (re)connect at or after the drain starts or the run ends.
    fn before_drain(&self, t: u32) -> Option<u32> {
        let stop = self.drain.map_or(self.end_ms, |d| d.at_ms.min(self.end_ms));
        (t < stop).then_some(t)
    }

    /// Mean heartbeat interval over the population, in ms (for planning).
    pub fn mean_interval_ms(&self) -> f64 {
        let total: f64 = self.classes.iter().map(|c| c.weight).sum();
        self.classes
            .iter()
            .map(|c| c.weight / total / f64::from(c.interval_ms))
            .sum::<f64>()
            .recip()
    }
}

/// A uniform value in `[0, 1)`, a hash of its inputs (SplitMix64 finalizer
/// over a combination of the four words).
pub fn unit(seed: u64, stream: u64, sid: u64, k: u64) -> f64 {
    let mut x = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ sid.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ k.wrapping_mul(0x1656_67B1_9E37_79F9).rotate_left(29);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
