//! `Driver`: one pinned thread pumping a slice of the sessions through
//! their sans-IO state machines, over one of two socket interfaces
//! ([`SocketIo`]):
//!
//! - **epoll** (`epoll::EpollIo`): one mio loop; each driver thread has a
//!   descriptor table of its own ([`c10m_server::sys::private_fd_table`]),
//!   so RLIMIT_NOFILE bounds one driver's sockets, not the process's: one
//!   process with D drivers holds D × (RLIMIT_NOFILE less a reserve)
//!   sessions ([`crate::procs::layout`]).
//! - **io_uring** (`uring::UringIo`): the driver's sockets are io_uring
//!   direct descriptors, in as many rings as its sessions need tables (the
//!   kernel bounds each ring's table by RLIMIT_NOFILE, not the process),
//!   so one driver per CPU holds any number of sessions. See that module.
//!
//! Driver `g` of `D` owns the global session ids `g, g + D, g + 2D, ...`
//! (so the ramp interleaves evenly) and keeps, per session, the 16-byte
//! [`ClientSession`] and a 12-byte wheel entry, plus (epoll) the 4-byte
//! socket (a std `TcpStream` registered through its fd: mio's wrapper is
//! 16 bytes in debug builds): 32 bytes (28 on io_uring, where the socket
//! is a slot numbered by the session's index), in vectors that grow as the
//! ramp opens sessions (so the pages are touched by sessions, not by the
//! warm-up).
//!
//! - **Time.** The loop sleeps until the absolute CLOCK_MONOTONIC time of
//!   the next deadline, to the microsecond (a timerfd on epoll, whose own
//!   timeout has millisecond granularity and rounds up, which would add up
//!   to 1 ms of send lag to every heartbeat; ppoll with a 1 ns timer slack
//!   on io_uring). Heartbeats are due on whole ticks (`--tick`, 1 ms by
//!   default: a longer one wakes the driver less often, see
//!   [`crate::model::HeartbeatModel::on_tick`]); the payload is the
//!   intended time in µs since the epoch.
//! - **Generations.** Every event or completion carries the session's
//!   index and connection generation; one whose generation no longer
//!   matches the session's is for a closed connection and is dropped.
//! - **Reads.** A partial reply waits in a per-driver spill map (rare:
//!   replies are ~15 bytes).
//! - **Writes.** A heartbeat is written at once; the rare short write (or,
//!   on io_uring, a heartbeat due while the previous send is in flight)
//!   goes to a spill map until the socket takes it.
//! - **Connects.** Paced by a token bucket and bounded by an in-flight cap;
//!   reconnects (churn, outages, retries) skip the bucket but not the cap.
//! - **Reporting.** Counters and interval histograms are copied into a
//!   mutex-guarded [`DriverReport`] at every whole second of the run, which
//!   the fleet reads; nothing is shared on the hot path.
//! - **End.** Heartbeats stop at the end of the last phase; the loop then
//!   waits for outstanding replies up to the grace deadline, closes every
//!   socket (FIN) and returns.

use crate::clock::RunClock;
use crate::model::HeartbeatModel;
use crate::plan::AddressPlan;
use crate::procs::DriverIo;
use crate::proto::{Codec, ProtocolConfig};
use crate::ramp::TokenBucket;
use crate::scenario::Timeline;
use crate::session::{ClientSession, State, Step};
use crate::stats::{Counters, ErrorKind, Histos};
use crate::wheel::DeadlineWheel;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod bytes;
mod epoll;
mod uring;

pub use uring::URING_BUFFERS;

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
    pub io: DriverIo,
    pub protocol: ProtocolConfig,
    /// The run's seed (MQTT client ids, websocket keys).
    pub seed: u64,
    /// This process's shard of a distributed run: its local session ids
    /// map to global ones.
    pub shard: Option<crate::scenario::ShardConfig>,
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

/// What a socket interface did with a heartbeat's bytes.
enum Sent {
    /// All written.
    All,
    /// Handed to the kernel whole; its completion is still to come (later
    /// heartbeats of the session wait in the write spill until then).
    InFlight,
    /// Only this many bytes were taken; the rest waits for writability.
    Partial(usize),
}

/// A driver's socket interface: how sessions' connections are opened,
/// written, closed and waited on. Session `idx`'s connection of
/// generation `gen` is the one these calls name.
trait SocketIo: Sized {
    /// Starts connecting.
    fn open(
        &mut self,
        idx: u32,
        gen: u16,
        source: Option<SocketAddrV4>,
        target: SocketAddrV4,
    ) -> io::Result<()>;
    /// Writes (or hands over) one heartbeat.
    fn send(&mut self, idx: u32, gen: u16, bytes: &[u8]) -> io::Result<Sent>;
    /// Asks for (or stops asking for) writability (after `Sent::Partial`).
    fn want_writable(&mut self, idx: u32, gen: u16, on: bool) -> io::Result<()>;
    /// Closes the connection (FIN); `state` is the session's state while
    /// it was open or connecting.
    fn close(&mut self, idx: u32, gen: u16, state: State);
    /// The driver took a new session (index = sessions so far).
    fn added(&mut self) {}
    /// A connect whose deadline passed: true if it had in fact completed
    /// and is now handled as such.
    fn late_connect(d: &mut Driver<Self>, idx: u32, now_us: u64) -> bool;
    /// Sleeps until the absolute run time `wake_ms` (or an event), then
    /// handles whatever arrived.
    fn turn(d: &mut Driver<Self>, wake_ms: u32) -> io::Result<()>;
    /// Closes every connection at the end of the run.
    fn close_all(d: &mut Driver<Self>);
}

/// A prepared driver, on either socket interface.
pub struct Prepared(Either);

enum Either {
    Epoll(Box<Driver<epoll::EpollIo>>),
    Uring(Box<Driver<uring::UringIo>>),
}

impl Prepared {
    /// Runs the loop from the epoch of `clock` until the run's end.
    pub fn run(self, clock: RunClock) -> io::Result<()> {
        match self.0 {
            Either::Epoll(d) => (*d).run(clock),
            Either::Uring(d) => (*d).run(clock),
        }
    }
}

/// Builds the driver and allocates (and touches) everything that does not
/// grow with sessions, so that it is part of the warm baseline.
pub fn prepare(
    spec: DriverSpec,
    plan: Arc<AddressPlan>,
    model: Arc<HeartbeatModel>,
    shared: Arc<DriverShared>,
) -> io::Result<Prepared> {
    if let Some(cpu) = spec.cpu {
        // Best effort: a CPU outside our cpuset only costs locality.
        let _ = c10m_server::sys::pin_current_thread(cpu);
    }
    Ok(Prepared(match spec.io {
        DriverIo::Epoll => {
            let io = epoll::EpollIo::new(spec.count as usize)?;
            Either::Epoll(Box::new(Driver::new(spec, plan, model, shared, io)))
        }
        DriverIo::Uring {
            slots_per_ring,
            recv,
        } => {
            let io = uring::UringIo::new(spec.count, slots_per_ring, spec.protocol.kind, recv)?;
            Either::Uring(Box::new(Driver::new(spec, plan, model, shared, io)))
        }
    }))
}

/// See the module docs.
struct Driver<I> {
    spec: DriverSpec,
    plan: Arc<AddressPlan>,
    model: Arc<HeartbeatModel>,
    clock: RunClock,
    shared: Arc<DriverShared>,
    io: I,
    sessions: Vec<ClientSession>,
    wheel: DeadlineWheel,
    pending: VecDeque<u32>,
    read_spill: HashMap<u32, Vec<u8>>,
    write_spill: HashMap<u32, Vec<u8>>,
    codec: Codec,
    /// Protocols whose replies do not echo the send time: the intended
    /// times (ms) of each session's outstanding heartbeats, oldest first,
    /// only while some are outstanding.
    fifo: HashMap<u32, VecDeque<u32>>,
    spare_fifos: Vec<VecDeque<u32>>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    due: Vec<u32>,
    bucket: TokenBucket,
    inflight: u32,
    counters: Counters,
    histos: Histos,
    first_errors: BTreeMap<&'static str, String>,
    held_recorded: bool,
    next_flush_ms: u32,
}

impl<I: SocketIo> Driver<I> {
    fn new(
        spec: DriverSpec,
        plan: Arc<AddressPlan>,
        model: Arc<HeartbeatModel>,
        shared: Arc<DriverShared>,
        io: I,
    ) -> Driver<I> {
        let count = spec.count as usize;
        let bucket = TokenBucket::new(spec.rate_per_s, (spec.rate_per_s / 100.0).max(1.0), 0);
        let host = plan.targets.first().map_or_else(
            || std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            |t| std::net::SocketAddr::V4(*t),
        );
        Driver {
            io,
            sessions: Vec::with_capacity(count),
            wheel: DeadlineWheel::new(0, count),
            pending: VecDeque::with_capacity(spec.max_inflight as usize),
            read_spill: HashMap::new(),
            write_spill: HashMap::new(),
            codec: Codec::new(&spec.protocol, host, spec.seed),
            fifo: HashMap::new(),
            spare_fifos: Vec::new(),
            scratch: crate::resident::resident(READ_BUF, 0u8),
            out: Vec::with_capacity(512),
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
        }
    }

    /// Heartbeats sent on live connections and not answered yet.
    fn unanswered(&self) -> u64 {
        let c = &self.counters;
        c.heartbeats_sent
            .saturating_sub(c.heartbeats_answered + c.heartbeats_lost)
    }

    fn sid(&self, idx: u32) -> u64 {
        let local = self.spec.first_sid + u64::from(idx) * self.spec.stride;
        self.spec.shard.map_or(local, |s| s.global(local))
    }

    /// Runs the loop from the epoch of `clock` until the run's end.
    fn run(mut self, clock: RunClock) -> io::Result<()> {
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
            I::turn(self, wake)?;
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
            let (gen, state) = (s.gen(), s.state());
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
                    if self.sessions[idx as usize].handshaking() {
                        let text = format!(
                            "no answer to the {} handshake within the connect timeout ({} ms)",
                            self.codec.kind().name(),
                            self.spec.connect_timeout_ms
                        );
                        self.fail(idx, ErrorKind::Handshake, now, Some(text));
                    } else if !I::late_connect(self, idx, now_us) {
                        self.fail(idx, ErrorKind::Timeout, now, None);
                    }
                    return;
                }
                Step::Close(_) => {
                    self.counters.closes_planned += 1;
                    self.counters.open -= 1;
                    self.goodbye(idx, gen);
                    self.drop_connection(idx, (gen, state), outstanding);
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

    /// Closes session `idx`'s connection, whose generation and state were
    /// `was` while it lived, and forgets spilled bytes; `lost` heartbeats
    /// of it will never be answered.
    fn drop_connection(&mut self, idx: u32, was: (u16, State), lost: u64) {
        self.counters.heartbeats_lost += lost;
        self.io.close(idx, was.0, was.1);
        if !self.read_spill.is_empty() {
            self.read_spill.remove(&idx);
        }
        if !self.fifo.is_empty() {
            if let Some(mut q) = self.fifo.remove(&idx) {
                q.clear();
                self.spare_fifos.push(q);
            }
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
        let was = (s.gen(), s.wire_state());
        match s.state() {
            State::Connecting => self.inflight -= 1,
            State::Open => self.counters.open -= 1,
            State::Waiting | State::Done => {}
        }
        self.drop_connection(idx, was, u64::from(s.outstanding()));
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
                self.io.added();
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
        let gen = s.gen();
        self.wheel.schedule(idx, deadline);
        if let Err(e) = self.io.open(idx, gen, source, target) {
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
    }

    /// Session `idx`'s TCP connect completed: send the protocol's
    /// handshake and wait for its answer, or, without one, the session is
    /// connected.
    fn on_tcp_connected(&mut self, idx: u32, now_us: u64) {
        if !self.codec.has_handshake() {
            return self.on_connected(idx, now_us);
        }
        let now = (now_us / 1_000) as u32;
        let sid = self.sid(idx);
        self.codec.handshake(sid, &mut self.out);
        let s = &mut self.sessions[idx as usize];
        s.set_handshaking(true);
        if s.deadline(&self.model).is_some_and(|t| t <= now) {
            // A late connect (its deadline's expiry took the wheel entry):
            // the handshake gets a connect timeout of its own.
            let at = s.extend_connect_deadline(now.saturating_add(self.spec.connect_timeout_ms));
            self.wheel.schedule(idx, at);
        }
        self.send_out(idx, now);
    }

    /// Session `idx`'s connect (and handshake) completed: count it and
    /// schedule its first heartbeat.
    fn on_connected(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
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

    /// Sends one heartbeat; false if the connection failed doing so.
    fn send_heartbeat(&mut self, idx: u32, intended_ms: u32, now: u32, now_us: u64) -> bool {
        let intended_us = u64::from(intended_ms) * 1_000;
        self.histos
            .send_lag
            .saturating_record(now_us.saturating_sub(intended_us));
        self.codec.heartbeat(intended_us, &mut self.out);
        self.counters.heartbeats_sent += 1;
        if !self.codec.echoes() {
            let spare = &mut self.spare_fifos;
            self.fifo
                .entry(idx)
                .or_insert_with(|| spare.pop().unwrap_or_default())
                .push_back(intended_ms);
        }
        self.send_out(idx, now)
    }

    /// Sends what the session said before a planned close (MQTT
    /// DISCONNECT, a websocket close frame), if its protocol says one and
    /// nothing is waiting to be sent before it; its outcome does not matter.
    fn goodbye(&mut self, idx: u32, gen: u16) {
        if self.write_spill.contains_key(&idx) || !self.codec.goodbye(&mut self.out) {
            return;
        }
        let _ = self.io.send(idx, gen, &self.out);
    }

    /// Sends `out` on session `idx`'s connection, after any bytes already
    /// waiting; false if the connection failed doing so.
    fn send_out(&mut self, idx: u32, now: u32) -> bool {
        let s = &mut self.sessions[idx as usize];
        if s.has_write_spill() {
            self.write_spill
                .entry(idx)
                .or_default()
                .extend_from_slice(&self.out);
            return true;
        }
        let gen = s.gen();
        match self.io.send(idx, gen, &self.out) {
            Ok(Sent::All) => true,
            Ok(Sent::InFlight) => {
                self.sessions[idx as usize].set_write_spill(true);
                true
            }
            Ok(Sent::Partial(written)) => {
                self.counters.write_spills += 1;
                let rest = self.out[written..].to_vec();
                self.write_spill.insert(idx, rest);
                self.set_write_interest(idx, true, now)
            }
            Err(e) => {
                self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
                false
            }
        }
    }

    /// Marks session `idx` as waiting for writability (or not) and asks
    /// the socket interface for it; false if the connection failed.
    fn set_write_interest(&mut self, idx: u32, on: bool, now: u32) -> bool {
        let s = &mut self.sessions[idx as usize];
        s.set_write_spill(on);
        let gen = s.gen();
        if let Err(e) = self.io.want_writable(idx, gen, on) {
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
            return false;
        }
        true
    }

    /// Serves the `n` bytes just read into `scratch` for session `idx`,
    /// which arrived at `arrived_us` (≤ `now_us`); false if the session's
    /// connection ended doing so (a protocol error, or a planned close that
    /// was waiting for these replies).
    fn ingest(&mut self, idx: u32, n: usize, now_us: u64, arrived_us: u64) -> bool {
        let now = (now_us / 1_000) as u32;
        let spilled = self.sessions[idx as usize].has_read_spill();
        let mut buf = if spilled {
            let mut buf = self.read_spill.remove(&idx).unwrap_or_default();
            buf.extend_from_slice(&self.scratch[..n]);
            buf
        } else {
            Vec::new()
        };
        let bytes = if spilled {
            &buf[..]
        } else {
            &self.scratch[..n]
        };
        let sid = self.sid(idx);
        let mut ctx = bytes::Replies {
            codec: &mut self.codec,
            session: &mut self.sessions[idx as usize],
            sid,
            // Empty for the echoing protocols: no hashing per read.
            fifo: if self.fifo.is_empty() {
                None
            } else {
                self.fifo.get_mut(&idx)
            },
            counters: &mut self.counters,
            histos: &mut self.histos,
            arrived_us,
            connected: false,
            send: Vec::new(),
        };
        let result = ctx.consume(bytes);
        let (connected, send) = (ctx.connected, std::mem::take(&mut ctx.send));
        let rest = match result {
            Ok(used) if spilled => {
                buf.drain(..used);
                buf
            }
            Ok(used) => bytes[used..].to_vec(),
            Err((kind, text)) => {
                self.fail(idx, kind, now, Some(text));
                return false;
            }
        };
        if !self.fifo.is_empty() && self.fifo.get(&idx).is_some_and(VecDeque::is_empty) {
            if let Some(q) = self.fifo.remove(&idx) {
                self.spare_fifos.push(q);
            }
        }
        let s = &mut self.sessions[idx as usize];
        s.set_read_spill(!rest.is_empty());
        if !rest.is_empty() {
            self.counters.read_spills += 1;
            self.read_spill.insert(idx, rest);
        }
        if connected {
            self.on_connected(idx, arrived_us);
        }
        if !send.is_empty() {
            self.out.clear();
            self.out.extend_from_slice(&send);
            if !self.send_out(idx, now) {
                return false;
            }
        }
        if self.sessions[idx as usize].close_due(now) {
            // A planned close was waiting for these replies.
            self.wheel.cancel(idx);
            self.advance(idx, now, now_us);
            return false;
        }
        true
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
        // its time, then close them (FIN).
        self.flush();
        if self.codec.has_goodbye() {
            for idx in 0..self.sessions.len() as u32 {
                let s = &self.sessions[idx as usize];
                if s.state() == State::Open {
                    let gen = s.gen();
                    self.goodbye(idx, gen);
                }
            }
        }
        I::close_all(self);
        self.counters.open = 0;
        self.flush();
        self.shared.finished.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_session_footprint_fits_32_bytes() {
        let per_session = std::mem::size_of::<ClientSession>()
            + 12 // wheel entry: next, prev, deadline
            + std::mem::size_of::<Option<std::net::TcpStream>>();
        assert!(per_session <= 32, "{per_session}");
    }
}
