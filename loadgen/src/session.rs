//! `ClientSession`: one synthetic client's record and state machine, sans-IO.
//!
//! The record is 16 bytes (asserted below; the budget is 32): the next
//! intended heartbeat, the next planned transition, a connection generation,
//! and a few one-byte fields. There is no timestamp of the last send: the
//! heartbeat payload carries its intended time, and the reply echoes it.
//! Everything else — class schedule, lifetimes, storms — is recomputed from
//! the [`HeartbeatModel`] on demand.
//!
//! # Call order (the driver's contract)
//!
//! 1. [`ClientSession::new`] when the ramp first grants a connect, then
//!    [`start_connect`](ClientSession::start_connect) → a wheel deadline
//!    (the connect timeout).
//! 2. When the socket is established: [`connected`](ClientSession::connected)
//!    → the next deadline.
//! 3. When a deadline expires: call [`poll`](ClientSession::poll) until it
//!    returns [`Step::Wait`], acting on each step. Several heartbeats may be
//!    due at once after a stall; each is sent with its own intended time
//!    (open loop: a stall shows up as latency, not as fewer samples).
//! 4. For each heartbeat reply: [`answered`](ClientSession::answered).
//! 5. On any failure (connect error or timeout, reset, EOF, protocol error):
//!    [`failed`](ClientSession::failed) → a retry deadline or none.
//!
//! The generation changes whenever a connection ends, so an event that
//! arrives for a previous connection of the same slot is recognised as stale.
#![forbid(unsafe_code)]

use crate::model::{CloseCause, HeartbeatModel};

/// Lifecycle of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// A connect is in flight; `transition_ms` is its deadline.
    Connecting,
    /// Established; heartbeats run; `transition_ms` is the planned close.
    Open,
    /// Closed; `transition_ms` is when to connect again.
    Waiting,
    /// Closed for good.
    Done,
}

/// What the driver must do next for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send `PING <intended time>`.
    Heartbeat { intended_ms: u32 },
    /// The connect deadline passed: close the socket and call `failed`.
    ConnectTimeout,
    /// Planned close (churn, outage, drain): close the socket now. The
    /// session already moved to `Waiting` or `Done`. A close falls due with
    /// heartbeats still unanswered only after [`CLOSE_GRACE_MS`].
    Close(CloseCause),
    /// Time to connect again: queue a connect, then `start_connect`.
    Connect,
    /// Nothing due before this deadline (`None`: nothing ever).
    Wait(Option<u32>),
}

const NEVER: u32 = u32::MAX;

/// Longest a planned close waits for the replies to heartbeats already
/// sent. A client that logs off, or a phone that roams, does not send
/// another heartbeat, and a well-behaved one lets the last reply arrive:
/// closing on top of an outstanding heartbeat made its RTT sample vanish
/// (5.5 % of all heartbeats in a million-session run), so every RTT
/// percentile silently left out the slowest replies. Past the grace the
/// close goes ahead and the heartbeats count as unanswered.
pub const CLOSE_GRACE_MS: u32 = 2_000;
const FLAG_CONNECTED_BEFORE: u8 = 1 << 0;
const FLAG_READ_SPILL: u8 = 1 << 1;
const FLAG_WRITE_SPILL: u8 = 1 << 2;
/// A planned close is due and waits for outstanding replies
/// (`transition_ms` is then the end of the grace).
const FLAG_CLOSING: u8 = 1 << 3;
const CAUSE_SHIFT: u8 = 4;
/// Connected at the TCP level; the protocol's handshake (sent) awaits
/// its answer. The session stays `Connecting` until then.
const FLAG_HANDSHAKE: u8 = 1 << 6;

/// One client's record; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSession {
    next_beat_ms: u32,
    transition_ms: u32,
    gen: u16,
    outstanding: u8,
    class: u8,
    state: State,
    failures: u8,
    flags: u8,
}

impl ClientSession {
    pub fn new(class: u8) -> Self {
        ClientSession {
            next_beat_ms: NEVER,
            transition_ms: NEVER,
            gen: 0,
            outstanding: 0,
            class,
            state: State::Waiting,
            failures: 0,
            flags: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Connection generation; part of the event token.
    pub fn gen(&self) -> u16 {
        self.gen
    }

    pub fn class(&self) -> u8 {
        self.class
    }

    /// Heartbeats sent on this connection and not yet answered (saturates).
    pub fn outstanding(&self) -> u8 {
        self.outstanding
    }

    /// A connect starts at `now_us`; returns its deadline (ms). While the
    /// connect is in flight the heartbeat field is unused, so it holds the
    /// start time's low 32 bits in µs (wraps after 71 min, far beyond any
    /// connect timeout) for [`connect_latency_us`](Self::connect_latency_us).
    pub fn start_connect(&mut self, now_us: u64, timeout_ms: u32) -> u32 {
        self.state = State::Connecting;
        self.next_beat_ms = now_us as u32;
        self.transition_ms = ((now_us / 1_000) as u32).saturating_add(timeout_ms);
        self.transition_ms
    }

    /// Time since `start_connect`, in µs (only while `Connecting`).
    pub fn connect_latency_us(&self, now_us: u64) -> u32 {
        (now_us as u32).wrapping_sub(self.next_beat_ms)
    }

    /// True once any connection of this session was established.
    pub fn has_connected_before(&self) -> bool {
        self.flags & FLAG_CONNECTED_BEFORE != 0
    }

    /// The socket is established; returns the next deadline.
    pub fn connected(&mut self, model: &HeartbeatModel, sid: u64, now_ms: u32) -> Option<u32> {
        let first_life = self.flags & FLAG_CONNECTED_BEFORE == 0;
        self.flags |= FLAG_CONNECTED_BEFORE;
        self.state = State::Open;
        self.outstanding = 0;
        self.next_beat_ms = model.first_beat(sid, self.class, now_ms, first_life);
        let (at, cause) = match model.planned_close(sid, self.gen, now_ms) {
            Some((at, cause)) => (at, cause as u8 + 1),
            None => (NEVER, 0),
        };
        self.transition_ms = at;
        self.flags = (self.flags & !(0b11 << CAUSE_SHIFT)) | (cause << CAUSE_SHIFT);
        self.deadline(model)
    }

    fn close_cause(&self) -> Option<CloseCause> {
        match (self.flags >> CAUSE_SHIFT) & 0b11 {
            1 => Some(CloseCause::Churn),
            2 => Some(CloseCause::Outage),
            3 => Some(CloseCause::Drain),
            _ => None,
        }
    }

    /// The earliest time `poll` has something to do.
    pub fn deadline(&self, model: &HeartbeatModel) -> Option<u32> {
        let t = match self.state {
            State::Open => {
                let beat = if self.next_beat_ms < model.end_ms {
                    self.next_beat_ms
                } else {
                    NEVER
                };
                beat.min(self.transition_ms)
            }
            State::Connecting | State::Waiting => self.transition_ms,
            State::Done => NEVER,
        };
        (t != NEVER).then_some(t)
    }

    /// Advances the session to `now_ms`; see [`Step`]. Call until `Wait`.
    pub fn poll(&mut self, model: &HeartbeatModel, sid: u64, now_ms: u32) -> Step {
        match self.state {
            State::Connecting if now_ms >= self.transition_ms => Step::ConnectTimeout,
            State::Waiting if now_ms >= self.transition_ms => Step::Connect,
            State::Open
                if now_ms >= self.transition_ms
                    && self.outstanding > 0
                    && self.flags & FLAG_CLOSING == 0 =>
            {
                // Stop heartbeating; close once the replies are in.
                self.flags |= FLAG_CLOSING;
                self.next_beat_ms = NEVER;
                self.transition_ms = self.transition_ms.saturating_add(CLOSE_GRACE_MS);
                Step::Wait(self.deadline(model))
            }
            State::Open if self.close_due(now_ms) => {
                let cause = self.close_cause().unwrap_or(CloseCause::Drain);
                // A close that waited for replies happened now, not when planned.
                let closed_at = if self.flags & FLAG_CLOSING != 0 {
                    now_ms
                } else {
                    self.transition_ms
                };
                self.end_connection();
                self.wait_until(model.reconnect_at(sid, self.gen, cause, closed_at));
                Step::Close(cause)
            }
            State::Open if now_ms >= self.next_beat_ms && self.next_beat_ms < model.end_ms => {
                let intended_ms = self.next_beat_ms;
                self.next_beat_ms = model.next_beat(sid, self.class, intended_ms);
                self.outstanding = self.outstanding.saturating_add(1);
                Step::Heartbeat { intended_ms }
            }
            _ => Step::Wait(self.deadline(model)),
        }
    }

    /// True when a planned close is due: its time has come and no reply
    /// is outstanding, or the grace for outstanding replies is over. The
    /// driver checks it after the replies it reads, and then polls.
    pub fn close_due(&self, now_ms: u32) -> bool {
        if self.state != State::Open {
            return false;
        }
        if self.flags & FLAG_CLOSING != 0 {
            self.outstanding == 0 || now_ms >= self.transition_ms
        } else {
            self.outstanding == 0 && now_ms >= self.transition_ms
        }
    }

    /// A heartbeat reply arrived: the connection is healthy.
    pub fn answered(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.failures = 0;
    }

    /// The connection failed or was closed by the peer; returns the retry
    /// deadline (`None`: the session is done). `not_before`: the server's
    /// retry-after, when it refused the session busy.
    pub fn failed(
        &mut self,
        model: &HeartbeatModel,
        sid: u64,
        now_ms: u32,
        not_before: Option<u32>,
    ) -> Option<u32> {
        self.failures = self.failures.saturating_add(1);
        self.end_connection();
        let retry = model.retry_at(sid, self.gen, self.failures, now_ms, not_before);
        self.wait_until(retry);
        retry
    }

    /// Stops the session for good (end of run).
    pub fn finish(&mut self) {
        if matches!(self.state, State::Open | State::Connecting) {
            self.end_connection();
        }
        self.state = State::Done;
    }

    fn end_connection(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        self.outstanding = 0;
        self.next_beat_ms = NEVER;
        self.flags &= FLAG_CONNECTED_BEFORE;
    }

    fn wait_until(&mut self, at: Option<u32>) {
        match at {
            Some(t) => {
                self.state = State::Waiting;
                self.transition_ms = t;
            }
            None => {
                self.state = State::Done;
                self.transition_ms = NEVER;
            }
        }
    }

    /// The TCP connection is up and the protocol's handshake awaits its
    /// answer (the state is still `Connecting`).
    pub fn handshaking(&self) -> bool {
        self.flags & FLAG_HANDSHAKE != 0
    }

    pub fn set_handshaking(&mut self, on: bool) {
        self.set_flag(FLAG_HANDSHAKE, on);
    }

    /// A connect that completed past its deadline (its event read late,
    /// `Driver`'s late-connect path) still has its handshake to do: give
    /// it until `at_ms`; returns the new deadline.
    pub fn extend_connect_deadline(&mut self, at_ms: u32) -> u32 {
        if self.state == State::Connecting && self.transition_ms < at_ms {
            self.transition_ms = at_ms;
        }
        self.transition_ms
    }

    /// The state of the connection itself: `Open` while a handshake is
    /// under way (its socket is connected and read), else [`state`](Self::state).
    pub fn wire_state(&self) -> State {
        if self.handshaking() {
            State::Open
        } else {
            self.state
        }
    }

    /// The driver holds a partial reply for this session in its spill area.
    pub fn has_read_spill(&self) -> bool {
        self.flags & FLAG_READ_SPILL != 0
    }

    pub fn set_read_spill(&mut self, on: bool) {
        self.set_flag(FLAG_READ_SPILL, on);
    }

    /// The driver holds unsent request bytes for this session.
    pub fn has_write_spill(&self) -> bool {
        self.flags & FLAG_WRITE_SPILL != 0
    }

    pub fn set_write_spill(&mut self, on: bool) {
        self.set_flag(FLAG_WRITE_SPILL, on);
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fits_the_budget() {
        assert!(std::mem::size_of::<ClientSession>() <= 32);
        assert_eq!(std::mem::size_of::<ClientSession>(), 16);
    }

    fn model() -> HeartbeatModel {
        HeartbeatModel::fixed(7, 1_000, 0.0, 10_000)
    }

    #[test]
    fn a_handshake_keeps_the_session_connecting_and_reads_as_open_on_the_wire() {
        let m = model();
        let mut s = ClientSession::new(0);
        assert_eq!(s.start_connect(1_000_000, 5_000), 6_000);
        s.set_handshaking(true);
        assert_eq!(
            (s.state(), s.wire_state()),
            (State::Connecting, State::Open)
        );
        // Still under the connect timeout, which covers the handshake.
        assert_eq!(s.deadline(&m), Some(6_000));
        assert_eq!(s.poll(&m, 0, 6_000), Step::ConnectTimeout);
        // A late connect's handshake gets a new deadline, never an earlier one.
        assert_eq!(s.extend_connect_deadline(9_000), 9_000);
        assert_eq!(s.extend_connect_deadline(7_000), 9_000);
        assert!(s.connected(&m, 0, 7_000).is_some());
        assert!(
            s.handshaking(),
            "the driver clears the flag when the answer arrives"
        );
        s.set_handshaking(false);
        assert_eq!(s.wire_state(), State::Open);
        // Any end of the connection clears it.
        s.set_handshaking(true);
        s.failed(&m, 0, 7_500, None);
        assert!(!s.handshaking());
        assert_eq!(
            s.extend_connect_deadline(u32::MAX - 1),
            s.deadline(&m).unwrap()
        );
    }

    #[test]
    fn connect_then_beats_then_stop_at_end() {
        let m = model();
        let mut s = ClientSession::new(0);
        assert_eq!(s.start_connect(0, 500), 500);
        assert_eq!(s.connect_latency_us(1_234), 1_234);
        assert_eq!(s.poll(&m, 1, 100), Step::Wait(Some(500)));
        let first = s.connected(&m, 1, 100).unwrap();
        assert!((100..1_100).contains(&first));
        let mut beats = vec![];
        let mut now = first;
        loop {
            match s.poll(&m, 1, now) {
                Step::Heartbeat { intended_ms } => beats.push(intended_ms),
                Step::Wait(Some(t)) => now = t,
                Step::Wait(None) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(beats.len(), 10);
        assert!(beats.windows(2).all(|w| w[1] - w[0] == 1_000));
        assert_eq!(s.outstanding(), 10);
        s.answered();
        assert_eq!(s.outstanding(), 9);
    }

    #[test]
    fn late_poll_sends_every_missed_beat_with_its_own_time() {
        let m = model();
        let mut s = ClientSession::new(0);
        s.start_connect(0, 500);
        let first = s.connected(&m, 3, 0).unwrap();
        let mut sent = vec![];
        while let Step::Heartbeat { intended_ms } = s.poll(&m, 3, first + 2_500) {
            sent.push(intended_ms);
        }
        assert_eq!(sent, vec![first, first + 1_000, first + 2_000]);
    }

    #[test]
    fn timeout_then_retry_with_backoff_and_new_generation() {
        let m = model();
        let mut s = ClientSession::new(0);
        s.start_connect(0, 500);
        assert_eq!(s.poll(&m, 1, 500), Step::ConnectTimeout);
        let retry = s.failed(&m, 1, 500, None).unwrap();
        assert!((1_000..=2_000).contains(&retry), "{retry}");
        assert_eq!(s.gen(), 1);
        assert_eq!(s.state(), State::Waiting);
        assert_eq!(s.poll(&m, 1, retry), Step::Connect);
    }

    #[test]
    fn a_busy_refusal_waits_its_retry_after_and_the_herd_spreads() {
        let m = HeartbeatModel::fixed(7, 1_000, 0.0, 60_000);
        let mut retries = Vec::new();
        for sid in 0..1000 {
            let mut s = ClientSession::new(0);
            s.start_connect(0, 0);
            // Refused at t=0 with retry-after=10 s: far past the 1 s backoff.
            let retry = s.failed(&m, sid, 0, Some(10_000)).unwrap();
            assert!((10_000..=15_000).contains(&retry), "sid {sid}: {retry}");
            retries.push(retry);
        }
        // Spread over the window, not one instant: every half-second bucket
        // of the 5 s window gets some of the thousand.
        for bucket in 0..10 {
            let lo = 10_000 + bucket * 500;
            assert!(retries.iter().any(|r| (lo..lo + 500).contains(r)), "{lo}");
        }
    }

    fn churning_model() -> HeartbeatModel {
        let mut m = HeartbeatModel::fixed(7, 1_000, 0.0, 600_000);
        m.churn = Some(crate::model::Churn {
            lifetime: crate::model::Lifetime::Exponential { mean_ms: 5_000.0 },
            reconnect_ms: 1_000,
        });
        m
    }

    /// Opens a session and runs it, sending every heartbeat, until its
    /// planned close is due; returns (close time, heartbeats sent).
    fn run_to_close(s: &mut ClientSession, m: &HeartbeatModel, sid: u64) -> (u32, u32) {
        s.start_connect(0, 500);
        let mut now = s.connected(m, sid, 0).unwrap();
        let mut sent = 0;
        loop {
            if now >= s.transition_ms {
                return (now, sent);
            }
            match s.poll(m, sid, now) {
                Step::Heartbeat { .. } => sent += 1,
                Step::Wait(Some(t)) => now = t,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_planned_close_waits_for_outstanding_replies() {
        let m = churning_model();
        let (sid, mut s, due, sent) = (0..100)
            .find_map(|sid| {
                let mut s = ClientSession::new(0);
                let (due, sent) = run_to_close(&mut s, &m, sid);
                (sent >= 2).then_some((sid, s, due, sent))
            })
            .unwrap();
        // Every heartbeat but the last was answered; the last is in flight.
        for _ in 1..sent {
            s.answered();
        }
        assert_eq!(s.outstanding(), 1);
        // Due, but the reply is outstanding: no close, no more heartbeats.
        assert_eq!(s.poll(&m, sid, due), Step::Wait(Some(due + CLOSE_GRACE_MS)));
        assert!(!s.close_due(due + 10));
        assert_eq!(
            s.poll(&m, sid, due + 1_500),
            Step::Wait(Some(due + CLOSE_GRACE_MS))
        );
        // The reply arrives: the close is due at once.
        s.answered();
        assert!(s.close_due(due + 1_600));
        assert_eq!(s.poll(&m, sid, due + 1_600), Step::Close(CloseCause::Churn));
        assert_eq!(s.state(), State::Waiting);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_planned_close_goes_ahead_after_the_grace() {
        let m = churning_model();
        let (sid, mut s, due) = (0..100)
            .find_map(|sid| {
                let mut s = ClientSession::new(0);
                let (due, sent) = run_to_close(&mut s, &m, sid);
                (sent >= 1).then_some((sid, s, due))
            })
            .unwrap();
        assert!(s.outstanding() > 0);
        assert_eq!(s.poll(&m, sid, due), Step::Wait(Some(due + CLOSE_GRACE_MS)));
        let outstanding = s.outstanding();
        assert!(s.close_due(due + CLOSE_GRACE_MS));
        // The driver reads `outstanding` before polling the close: lost.
        assert_eq!(outstanding, s.outstanding());
        assert_eq!(
            s.poll(&m, sid, due + CLOSE_GRACE_MS),
            Step::Close(CloseCause::Churn)
        );
    }

    #[test]
    fn a_planned_close_with_nothing_outstanding_is_immediate() {
        let m = churning_model();
        let mut s = ClientSession::new(0);
        let (due, sent) = run_to_close(&mut s, &m, 5);
        for _ in 0..sent {
            s.answered();
        }
        assert!(s.close_due(due));
        assert_eq!(s.poll(&m, 5, due), Step::Close(CloseCause::Churn));
    }

    #[test]
    fn flags_do_not_leak_across_connections() {
        let m = model();
        let mut s = ClientSession::new(0);
        s.start_connect(0, 500);
        s.connected(&m, 1, 0);
        s.set_read_spill(true);
        s.set_write_spill(true);
        s.failed(&m, 1, 10, None);
        assert!(!s.has_read_spill() && !s.has_write_spill());
    }
}
