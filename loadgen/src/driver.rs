//! `Driver`: one pinned thread, one mio loop, pumping a slice of the
//! sessions through their sans-IO state machines.
//!
//! Each driver thread has a descriptor table of its own
//! ([`c10m_server::sys::private_fd_table`]), so RLIMIT_NOFILE bounds one
//! driver's sockets, not the process's: one process with D drivers holds
//! D × (RLIMIT_NOFILE less a reserve) sessions ([`crate::procs::layout`]).
//!
//! Driver `g` of `D` owns the global session ids `g, g + D, g + 2D, ...`
//! (so the ramp interleaves evenly) and keeps, per session, the 16-byte
//! [`ClientSession`], a 12-byte wheel entry and the 4-byte socket (a std
//! `TcpStream` registered through its fd: mio's wrapper is 16 bytes in
//! debug builds): 32 bytes,
//! in three vectors that grow as the ramp opens sessions (so the pages are
//! touched by sessions, not by the warm-up).
//!
//! - **Time.** A timerfd armed at the absolute CLOCK_MONOTONIC time of the
//!   next deadline wakes the loop to the microsecond (epoll_wait's timeout
//!   has millisecond granularity and rounds up, which would add up to 1 ms
//!   of send lag to every heartbeat). Heartbeats are due on whole
//!   milliseconds; the payload is the intended time in µs since the epoch.
//! - **Tokens.** `gen << 32 | index`; an event whose generation no longer
//!   matches the session's is for a closed connection and is dropped.
//!   `TIMER` is the top value.
//! - **Reads.** Edge-triggered: read until `WouldBlock`, except that a read
//!   shorter than the buffer proves the socket drained (as tokio also
//!   relies on with epoll), which saves a syscall per reply. A partial
//!   reply waits in a per-driver spill map (rare: replies are ~15 bytes).
//! - **Writes.** A heartbeat is written at once; the rare short write goes
//!   to a spill map and WRITABLE interest until flushed.
//! - **Connects.** Paced by a token bucket and bounded by an in-flight cap;
//!   reconnects (churn, outages, retries) skip the bucket but not the cap.
//! - **Reporting.** Counters and interval histograms are copied into a
//!   mutex-guarded [`DriverReport`] at every whole second of the run, which
//!   the fleet reads; nothing is shared on the hot path.
//! - **End.** Heartbeats stop at the end of the last phase; the loop then
//!   waits for outstanding replies up to the grace deadline, closes every
//!   socket (FIN) and returns.
#![forbid(unsafe_code)]

use crate::clock::RunClock;
use crate::model::HeartbeatModel;
use crate::plan::AddressPlan;
use crate::ramp::TokenBucket;
use crate::scenario::Timeline;
use crate::session::{ClientSession, State, Step};
use crate::stats::{Counters, ErrorKind, Histos};
use crate::wheel::DeadlineWheel;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;

/// Which sessions a driver owns and how it paces them.
#[derive(Debug, Clone)]
pub struct DriverSpec {
    pub first_sid: u64,
    pub stride: u64,
    pub count: u64,
    pub cpu: Option<usize>,
    pub rate_per_s: f64,
    pub max_inflight: u32,
    pub connect_timeout_ms: u32,
    pub timeline: Timeline,
}

/// What a driver publishes every second.
#[derive(Debug, Default)]
pub struct DriverReport {
    /// Cumulative.
    pub counters: Counters,
    /// Since the reader last took them.
    pub histos: Histos,
    /// The first message of each error kind (for hints).
    pub first_errors: BTreeMap<&'static str, String>,
}

/// Shared between a driver thread and its fleet.
#[derive(Debug, Default)]
pub struct DriverShared {
    pub stop: AtomicBool,
    pub finished: AtomicBool,
    pub report: Mutex<DriverReport>,
}

/// See the module docs.
pub struct Driver {
    spec: DriverSpec,
    plan: Arc<AddressPlan>,
    model: Arc<HeartbeatModel>,
    clock: RunClock,
    shared: Arc<DriverShared>,
    poll: Poll,
    events: Events,
    timer: TimerFd,
    armed_ms: Option<u32>,
    sessions: Vec<ClientSession>,
    sockets: Vec<Option<TcpStream>>,
    wheel: DeadlineWheel,
    pending: VecDeque<u32>,
    read_spill: HashMap<u32, Vec<u8>>,
    write_spill: HashMap<u32, Vec<u8>>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    digits: Vec<u8>,
    due: Vec<u32>,
    bucket: TokenBucket,
    inflight: u32,
    counters: Counters,
    histos: Histos,
    first_errors: BTreeMap<&'static str, String>,
    held_recorded: bool,
    next_flush_ms: u32,
}

fn token(idx: u32, gen: u16) -> Token {
    Token((usize::from(gen) << 32) | idx as usize)
}

impl Driver {
    /// Builds the driver and allocates (and touches) everything that does
    /// not grow with sessions, so that it is part of the warm baseline.
    pub fn prepare(
        spec: DriverSpec,
        plan: Arc<AddressPlan>,
        model: Arc<HeartbeatModel>,
        shared: Arc<DriverShared>,
    ) -> io::Result<Driver> {
        if let Some(cpu) = spec.cpu {
            // Best effort: a CPU outside our cpuset only costs locality.
            let _ = c10m_server::sys::pin_current_thread(cpu);
        }
        // RLIMIT_NOFILE bounds each descriptor table: with one of its own,
        // this driver holds up to RLIMIT_NOFILE sockets whatever the
        // process's other drivers hold.
        c10m_server::sys::private_fd_table(&[]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving a driver thread its own descriptor table: {e}"),
            )
        })?;
        let poll = Poll::new()?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        poll.registry().register(
            &mut SourceFd(&timer.as_fd().as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        let count = spec.count as usize;
        let bucket = TokenBucket::new(spec.rate_per_s, (spec.rate_per_s / 100.0).max(1.0), 0);
        Ok(Driver {
            poll,
            events: Events::with_capacity(1024),
            timer,
            armed_ms: None,
            sessions: Vec::with_capacity(count),
            sockets: Vec::with_capacity(count),
            wheel: DeadlineWheel::new(0, count),
            pending: VecDeque::with_capacity(spec.max_inflight as usize),
            read_spill: HashMap::new(),
            write_spill: HashMap::new(),
            scratch: crate::resident::resident(READ_BUF, 0u8),
            out: Vec::with_capacity(64),
            digits: Vec::with_capacity(20),
            due: Vec::with_capacity(1024),
            bucket,
            inflight: 0,
            counters: Counters::default(),
            histos: Histos::new(),
            first_errors: BTreeMap::new(),
            held_recorded: false,
            next_flush_ms: 1_000,
            spec,
            plan,
            model,
            clock: RunClock::from_epoch_ns(0),
            shared,
        })
    }

    /// Heartbeats sent on live connections and not answered yet.
    fn unanswered(&self) -> u64 {
        let c = &self.counters;
        c.heartbeats_sent
            .saturating_sub(c.heartbeats_answered + c.heartbeats_lost)
    }

    fn sid(&self, idx: u32) -> u64 {
        self.spec.first_sid + u64::from(idx) * self.spec.stride
    }

    /// Runs the loop from the epoch of `clock` until the run's end.
    pub fn run(mut self, clock: RunClock) -> io::Result<()> {
        self.clock = clock;
        let result = self.run_loop();
        self.shutdown();
        result
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let tl = self.spec.timeline.clone();
        loop {
            let now_us = self.clock.now_us();
            let now = (now_us / 1_000) as u32;
            if self.shared.stop.load(Ordering::Relaxed) || now >= tl.deadline_ms {
                return Ok(());
            }
            self.record_held(now);
            // Closes that fell due by the end are still planned closes.
            self.expire(now, now_us);
            if now >= tl.end_ms && self.unanswered() == 0 {
                return Ok(());
            }
            self.start_connects(now, now_us);
            if now >= self.next_flush_ms {
                self.flush();
                self.next_flush_ms = (now / 1_000 + 1) * 1_000;
            }
            let wake = self.next_wake(now, now_us, &tl);
            self.arm(wake)?;
            let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            let polled = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(250)));
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.events = events;
                    return Err(e);
                }
            }
            let now_us = self.clock.now_us();
            // A reply read now may let a planned close (a drain's first)
            // go ahead: what was held at the hold's end is counted first.
            self.record_held((now_us / 1_000) as u32);
            for event in events.iter() {
                self.dispatch(event, now_us);
            }
            self.events = events;
        }
    }

    /// Sessions open when the hold ended, taken once, before anything at
    /// or past that moment closes one.
    fn record_held(&mut self, now: u32) {
        if !self.held_recorded && now >= self.spec.timeline.hold_end_ms {
            self.counters.held_at_end = self.counters.open;
            self.held_recorded = true;
        }
    }

    fn dispatch(&mut self, event: &mio::event::Event, now_us: u64) {
        if event.token() == TIMER {
            // Not read: the expiration count is reset by the re-arm that
            // always follows (timerfd_settime zeroes it), and every expiry
            // wakes the edge-triggered registration anew. Saves a read per
            // timer wake-up (~0.7 syscalls per heartbeat in the million
            // layout).
            self.armed_ms = None;
            return;
        }
        let idx = (event.token().0 & 0xFFFF_FFFF) as u32;
        let gen = (event.token().0 >> 32) as u16;
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        if s.gen() != gen {
            return; // stale: that connection is gone
        }
        match s.state() {
            State::Connecting => self.on_connect_event(idx, now_us),
            State::Open => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(idx, now_us);
                }
                let s = &self.sessions[idx as usize];
                if event.is_writable() && s.gen() == gen && s.has_write_spill() {
                    self.flush_write(idx, now_us);
                }
            }
            State::Waiting | State::Done => {}
        }
    }

    fn next_wake(&self, now: u32, now_us: u64, tl: &Timeline) -> u32 {
        let mut wake = self.next_flush_ms.min(tl.deadline_ms);
        if let Some(t) = self.wheel.next_deadline() {
            wake = wake.min(t);
        }
        if !self.held_recorded {
            wake = wake.min(tl.hold_end_ms);
        }
        if now < tl.end_ms {
            wake = wake.min(tl.end_ms);
            let ramping = (self.sessions.len() as u64) < self.spec.count;
            if ramping && self.inflight < self.spec.max_inflight {
                let t = self.bucket.next_token_us(now_us).div_ceil(1_000);
                wake = wake.min(t.min(u64::from(u32::MAX)) as u32);
            }
        }
        wake
    }

    fn arm(&mut self, wake_ms: u32) -> io::Result<()> {
        if self.armed_ms == Some(wake_ms) {
            return Ok(());
        }
        let at = TimeSpec::from(Duration::from_nanos(self.clock.abs_ns(wake_ms)));
        self.timer.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        self.armed_ms = Some(wake_ms);
        Ok(())
    }

    fn expire(&mut self, now: u32, now_us: u64) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(now, &mut due);
        for &idx in &due {
            self.advance(idx, now, now_us);
        }
        due.clear();
        self.due = due;
    }

    /// Runs a session's steps until it waits.
    fn advance(&mut self, idx: u32, now: u32, now_us: u64) {
        let sid = self.sid(idx);
        loop {
            let s = &mut self.sessions[idx as usize];
            let outstanding = u64::from(s.outstanding());
            match s.poll(&self.model, sid, now) {
                Step::Heartbeat { intended_ms } => {
                    if !self.send_heartbeat(idx, intended_ms, now, now_us) {
                        return;
                    }
                }
                Step::ConnectTimeout => {
                    // Deadlines are checked before the loop reads its events:
                    // on a starved host the handshake may have completed long
                    // ago with its event still unread. Only a socket that is
                    // still unconnected has timed out (the late connect's
                    // latency is recorded as it is).
                    if self.established(idx) {
                        self.on_connect_event(idx, now_us);
                    } else {
                        self.fail(idx, ErrorKind::Timeout, now, None);
                    }
                    return;
                }
                Step::Close(_) => {
                    self.counters.closes_planned += 1;
                    self.counters.open -= 1;
                    self.drop_connection(idx, outstanding);
                }
                Step::Connect => {
                    self.pending.push_back(idx);
                    return;
                }
                Step::Wait(Some(t)) => {
                    self.wheel.schedule(idx, t);
                    return;
                }
                Step::Wait(None) => return,
            }
        }
    }

    /// Closes the socket and forgets spilled bytes; `lost` heartbeats of
    /// this connection will never be answered.
    fn drop_connection(&mut self, idx: u32, lost: u64) {
        self.counters.heartbeats_lost += lost;
        self.sockets[idx as usize] = None;
        if !self.read_spill.is_empty() {
            self.read_spill.remove(&idx);
        }
        if !self.write_spill.is_empty() {
            self.write_spill.remove(&idx);
        }
    }

    /// Counts a failure, closes the connection, schedules the retry.
    fn fail(&mut self, idx: u32, kind: ErrorKind, now: u32, err: Option<String>) {
        self.counters.error(kind);
        // A busy refusal names when to come back: never retry before it.
        let not_before = match (&err, kind) {
            (Some(text), ErrorKind::Busy) => c10m_server::wire::parse_busy(text.as_bytes())
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
            _ => None,
        };
        if let Some(text) = err {
            self.first_errors.entry(kind.key()).or_insert(text);
        }
        let s = &self.sessions[idx as usize];
        match s.state() {
            State::Connecting => self.inflight -= 1,
            State::Open => self.counters.open -= 1,
            State::Waiting | State::Done => {}
        }
        self.drop_connection(idx, u64::from(s.outstanding()));
        let sid = self.sid(idx);
        match self.sessions[idx as usize].failed(&self.model, sid, now, not_before) {
            Some(t) => self.wheel.schedule(idx, t),
            None => self.wheel.cancel(idx),
        }
    }

    fn start_connects(&mut self, now: u32, now_us: u64) {
        if now >= self.spec.timeline.end_ms {
            return;
        }
        while self.inflight < self.spec.max_inflight {
            if let Some(idx) = self.pending.pop_front() {
                self.connect(idx, now, now_us);
            } else if (self.sessions.len() as u64) < self.spec.count && self.bucket.try_take(now_us)
            {
                let sid = self.sid(self.sessions.len() as u32);
                self.sessions
                    .push(ClientSession::new(self.model.class_of(sid)));
                self.sockets.push(None);
                let idx = self.wheel.push_entry();
                self.connect(idx, now, now_us);
            } else {
                return;
            }
        }
    }

    fn connect(&mut self, idx: u32, now: u32, now_us: u64) {
        let (source, target) = self.plan.endpoints(self.sid(idx));
        self.counters.connects_started += 1;
        self.inflight += 1;
        let s = &mut self.sessions[idx as usize];
        let deadline = s.start_connect(now_us, self.spec.connect_timeout_ms);
        let tok = token(idx, s.gen());
        self.wheel.schedule(idx, deadline);
        let opened = bytes::open_socket(source, target).and_then(|stream| {
            let fd = stream.as_raw_fd();
            let both = Interest::READABLE | Interest::WRITABLE;
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), tok, both)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => self.sockets[idx as usize] = Some(stream),
            Err(e) => self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
        }
    }

    /// True if the session's socket has completed its handshake.
    fn established(&self, idx: u32) -> bool {
        self.sockets[idx as usize]
            .as_ref()
            .is_some_and(|s| matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok())
    }

    fn on_connect_event(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let Some(stream) = self.sockets[idx as usize].as_mut() else {
            return;
        };
        let status = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => stream.peer_addr().map(drop),
        };
        match status {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => return self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
        }
        if !self.set_write_interest(idx, false, now) {
            return;
        }
        self.inflight -= 1;
        self.counters.connects_ok += 1;
        self.counters.open += 1;
        let sid = self.sid(idx);
        let s = &mut self.sessions[idx as usize];
        let latency = s.connect_latency_us(now_us);
        if !s.has_connected_before() {
            self.counters.ramp_connected += 1;
            self.counters.ramp_last_us = now_us;
        }
        self.histos.connect.saturating_record(u64::from(latency));
        match s.connected(&self.model, sid, now) {
            Some(t) => self.wheel.schedule(idx, t),
            None => self.wheel.cancel(idx),
        }
    }

    /// Publishes counters and interval histograms to the fleet.
    fn flush(&mut self) {
        let mut report = self.shared.report.lock().unwrap_or_else(|p| p.into_inner());
        report.counters = self.counters.clone();
        report.histos.add(&self.histos);
        for (k, v) in &self.first_errors {
            report.first_errors.entry(k).or_insert_with(|| v.clone());
        }
        drop(report);
        self.histos.reset();
    }

    fn shutdown(&mut self) {
        if !self.held_recorded {
            self.counters.held_at_end = self.counters.open;
        }
        // Publish the last second before closing thousands of sockets takes
        // its time, then close them (FIN; closing also leaves the epoll set).
        self.flush();
        self.sockets.clear();
        self.counters.open = 0;
        self.flush();
        self.shared.finished.store(true, Ordering::Release);
    }
}

mod bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_session_footprint_fits_32_bytes() {
        let per_session = std::mem::size_of::<ClientSession>()
            + 12 // wheel entry: next, prev, deadline
            + std::mem::size_of::<Option<TcpStream>>();
        assert!(per_session <= 32, "{per_session}");
    }

    #[test]
    fn tokens_carry_index_and_generation() {
        let t = token(123_456, 7);
        assert_eq!(t.0 & 0xFFFF_FFFF, 123_456);
        assert_eq!(t.0 >> 32, 7);
        assert_ne!(token(u32::MAX - 1, u16::MAX), TIMER);
    }
}
