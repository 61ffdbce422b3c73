//! The io_uring side of a `Driver`: its sessions' sockets are io_uring
//! direct descriptors in [`ClientRings`] (session `idx` is slot `idx`),
//! so one driver per CPU holds any number of sessions with none in a
//! descriptor table (see `c10m_server::sys::uring::client` for the
//! requests and the wait).
//!
//! - **Tags.** Every request carries `kind << 48 | gen << 32 | idx`: a
//!   completion whose generation is not the session's is for a closed
//!   connection and is dropped.
//! - **Connect.** One linked chain (socket, options, bind, connect); its
//!   completion (or a failed step's) ends the connect. Then what reads
//!   the connection is armed (see Reads).
//! - **Waiting.** On lazy rings (Linux 6.1+, see `ClientRings`) replies
//!   wake nothing: the loop sleeps until its next deadline, but at most
//!   [`REPLY_POLL_US`] (or the heartbeat tick, `--tick`, if longer: the
//!   heartbeats of a tick go out in one turn, and the next turn is the next
//!   tick's) while heartbeats await answers and
//!   [`CONNECT_POLL_US`] while connects (or handshakes) are in flight,
//!   then takes whatever arrived. A round trip ends at the kernel's
//!   receive time of the reply (its SO_TIMESTAMPNS), so the wait is not
//!   in it; a connect's latency ends when the loop sees its completion, at
//!   most [`CONNECT_POLL_US`] late.
//! - **Reads, deferred** (`--uring-recv deferred`, the default). Nothing
//!   waits on a socket for its replies, so a reply's arrival wakes no one:
//!   on loopback the server's send runs the delivery, and waking a waiter
//!   (io_uring's poll callback queueing work on this driver's ring) was
//!   ~10 % of the server's CPU (results/million/profile-server-tick4-100k).
//!   Each turn receives once without waiting (`recv_now`: MSG_DONTWAIT,
//!   completing in its submission) on every session that sent at least
//!   half a reply poll (the tick, or [`REPLY_POLL_US`]) before: in effect
//!   the turn after the sleep that follows a tick's sends, a tick later,
//!   when a reply (RTT p50 ~1 ms) is almost always there. (Not the turn
//!   right after the sends, which their inline send completions end at
//!   once: receiving there found nothing and more than doubled the
//!   driver's CPU, `results/million/recv-ab-100k/`.) A session whose reply is not there yet
//!   gets a one-shot POLLIN poll, and a recv when it fires. Every
//!   connection keeps a POLLRDHUP poll, which arriving bytes do not run
//!   (the kernel's wake-up names POLLIN, which it does not ask for) and
//!   the server's FIN or RST fires: the connection is then read to its end.
//!   A round trip still ends at the kernel's receive time (SO_TIMESTAMPNS).
//! - **Reads, armed** (`--uring-recv armed`). A multishot recv for the
//!   connection's life. Each recv completion's bytes are parsed at once;
//!   one that ends the recv (ENOBUFS when the ring's buffers ran dry, or
//!   the kernel ending it) is re-armed at the end of the turn; ENOBUFS is
//!   counted (`recv_enobufs`).
//! - **Writes.** A heartbeat is handed to the kernel whole (MSG_WAITALL);
//!   one due while the previous send of the session is in flight waits in
//!   the write spill until that send completes.
//! - **Close.** Cancels the session's armed requests (its recv or polls,
//!   or its connect) by tag and closes the slot; the socket's last
//!   reference then drops and sends the FIN.
#![forbid(unsafe_code)]

use super::{Driver, Sent, SocketIo};
use crate::clock::RunClock;
use crate::proto::ProtocolKind;
use crate::scenario::UringRecv;
use crate::session::State;
use crate::stats::ErrorKind;
use c10m_server::sys::uring::client::{ClientRings, Completion, Kind};
use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

/// Provided buffers per ring (the kernel's ring of them must be a power
/// of two) and their payload size: a reply is 24 bytes, so a buffer holds
/// one; a longer one (a server's error text) spans buffers and is joined
/// by the read spill. Each buffer also holds the RECVMSG header and the
/// arrival time (`RECVMSG_HEAD`, 48 B): 80 KiB per ring. The count is what
/// matters: a ring whose sessions get more replies between two of the
/// driver's enters than it has buffers ends their recvs with ENOBUFS, and
/// they wait for the next turn. Eager rings take a buffer when the reply
/// arrives and hold it until the driver's turn: 512 of them ran dry
/// 248 113 times in a million's drain (run 26), where the host's CPUs are
/// saturated and turns last long, and 2 048 were used until lazy rings
/// came. Lazy rings take buffers only inside the driver's enter and it
/// gives them back at once in the same turn.
pub const URING_BUFFERS: u16 = 1024;

/// The size of a ring's provided buffers for `protocol`: an HTTP response
/// is a few hundred bytes (nginx's to a GET: ~160), every other answer a
/// few dozen at most (a websocket upgrade's ~130 B, once, spans buffers).
fn buffer_size(protocol: ProtocolKind) -> u32 {
    match protocol {
        ProtocolKind::Http => 512,
        _ => 32,
    }
}

/// The longest a lazy driver sleeps while heartbeats await answers: how
/// late it may see a reply (the round trip is measured from the reply's
/// arrival time regardless). The million's drivers have heartbeats due
/// every millisecond, so this adds no wake-up there.
pub const REPLY_POLL_US: u64 = 1_000;

/// The longest a lazy driver sleeps while connects or handshakes are in
/// flight: a connect's latency is measured when its completion is seen.
pub const CONNECT_POLL_US: u64 = 100;

const CONNECT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
/// Deferred reads: the connection's POLLRDHUP poll.
const HUP: u64 = 3;
/// Deferred reads: a late reply's POLLIN poll.
const READABLE: u64 = 4;

fn tag(kind: u64, gen: u16, idx: u32) -> u64 {
    kind << 48 | u64::from(gen) << 32 | u64::from(idx)
}

fn untag(tag: u64) -> (u64, u16, u32) {
    (tag >> 48, (tag >> 32) as u16, tag as u32)
}

/// See the module docs.
pub struct UringIo {
    rings: ClientRings,
    completions: Vec<Completion>,
    data: Vec<u8>,
    /// Recvs to re-arm at the end of the turn: (index, generation).
    rearm: Vec<(u32, u16)>,
    recv: UringRecv,
    /// Deferred: sessions that sent in this turn (index, generation).
    sent: Vec<(u32, u16)>,
    /// Deferred: sessions that sent in earlier turns, oldest first, and
    /// when each turn's sends went out (run µs) with how many there were.
    sent_before: VecDeque<(u32, u16)>,
    sent_marks: VecDeque<(u64, usize)>,
    /// Deferred: sessions to receive on at the next turn.
    recv_again: Vec<(u32, u16)>,
    /// Deferred: this turn's recvs (resident).
    recv_batch: Vec<(u32, u16)>,
    /// Deferred: sessions with a POLLIN poll armed (a late reply).
    waiting: HashSet<u32>,
    /// Deferred: sessions whose POLLRDHUP poll fired, read to their end.
    ending: HashSet<u32>,
    /// CLOCK_REALTIME when this turn's run time was read (to place the
    /// replies' arrival times on the run clock).
    now_realtime_ns: u64,
}

impl UringIo {
    /// Rings for `sessions` slots, `slots_per_ring` each, made on the
    /// calling (driver) thread.
    pub fn new(
        sessions: u64,
        slots_per_ring: u32,
        protocol: ProtocolKind,
        recv: UringRecv,
    ) -> io::Result<UringIo> {
        let size = buffer_size(protocol);
        let rings = ClientRings::new(sessions, slots_per_ring, URING_BUFFERS, size)?;
        Ok(UringIo {
            rings,
            completions: Vec::with_capacity(4096),
            data: Vec::with_capacity(64 * 1024),
            rearm: Vec::with_capacity(1024),
            recv,
            sent: Vec::with_capacity(4096),
            sent_before: VecDeque::with_capacity(4096),
            sent_marks: VecDeque::with_capacity(64),
            recv_again: Vec::new(),
            recv_batch: Vec::with_capacity(4096),
            waiting: HashSet::new(),
            ending: HashSet::new(),
            now_realtime_ns: 0,
        })
    }
}

impl SocketIo for UringIo {
    fn open(
        &mut self,
        idx: u32,
        gen: u16,
        source: Option<SocketAddrV4>,
        target: SocketAddrV4,
    ) -> io::Result<()> {
        self.rings
            .connect(idx, tag(CONNECT, gen, idx), source, target)
    }

    fn send(&mut self, idx: u32, gen: u16, bytes: &[u8]) -> io::Result<Sent> {
        self.rings.send(idx, tag(SEND, gen, idx), bytes)?;
        if self.recv == UringRecv::Deferred {
            self.sent.push((idx, gen));
        }
        Ok(Sent::InFlight)
    }

    fn want_writable(&mut self, _idx: u32, _gen: u16, _on: bool) -> io::Result<()> {
        Ok(()) // sends wait in the kernel: never a partial one
    }

    fn close(&mut self, idx: u32, gen: u16, state: State) {
        // The armed requests hold the socket: cancel them, then close.
        let mut armed = [0; 2];
        let mut n = 0;
        let mut arm = |t: u64| {
            armed[n] = t;
            n += 1;
        };
        match (state, self.recv) {
            (State::Connecting, _) => arm(tag(CONNECT, gen, idx)),
            (_, UringRecv::Armed) => arm(tag(RECV, gen, idx)),
            (_, UringRecv::Deferred) => {
                // A POLLRDHUP poll that fired is gone already.
                if !self.ending.remove(&idx) {
                    arm(tag(HUP, gen, idx));
                }
                if self.waiting.remove(&idx) {
                    arm(tag(READABLE, gen, idx));
                }
            }
        }
        // A slot that cannot be closed (its ring's SQ refused the request)
        // is closed with the rings at the end of the run.
        let _ = self.rings.close(idx, &armed[..n]);
    }

    fn late_connect(_d: &mut Driver<Self>, _idx: u32, _now_us: u64) -> bool {
        // Every completion is taken before the deadlines are checked.
        false
    }

    fn turn(d: &mut Driver<Self>, wake_ms: u32) -> io::Result<()> {
        let now_us = d.clock.now_us();
        let mut timeout = (u64::from(wake_ms) * 1_000)
            .saturating_sub(now_us)
            .min(250_000);
        if d.io.rings.lazy() || d.io.recv == UringRecv::Deferred {
            if d.inflight > 0 {
                timeout = timeout.min(CONNECT_POLL_US);
            } else if d.unanswered() > 0 || !d.write_spill.is_empty() {
                timeout = timeout.min(REPLY_POLL_US.max(u64::from(d.model.tick_ms) * 1_000));
            }
        }
        if !d.io.sent.is_empty() {
            // This turn's sends go out in the wait.
            let UringIo {
                sent,
                sent_before,
                sent_marks,
                ..
            } = &mut d.io;
            sent_marks.push_back((now_us, sent.len()));
            sent_before.extend(sent.drain(..));
        }
        d.io.rings.wait(Duration::from_micros(timeout))?;
        let now_us = d.clock.now_us();
        d.io.now_realtime_ns = crate::clock::realtime_ns();
        // A reply read now may let a planned close (a drain's first) go
        // ahead: what was held at the hold's end is counted first.
        d.record_held((now_us / 1_000) as u32);
        if d.io.recv == UringRecv::Deferred {
            d.recv_due_now(now_us);
        }
        let mut completions = std::mem::take(&mut d.io.completions);
        let mut data = std::mem::take(&mut d.io.data);
        completions.clear();
        data.clear();
        d.io.rings.take(&mut completions, &mut data);
        for c in &completions {
            d.complete(c, &data, now_us);
        }
        d.io.completions = completions;
        d.io.data = data;
        let mut rearm = std::mem::take(&mut d.io.rearm);
        for &(idx, gen) in &rearm {
            let s = &d.sessions[idx as usize];
            if s.gen() == gen && s.wire_state() == State::Open {
                d.arm_recv(idx, now_us);
            }
        }
        rearm.clear();
        d.io.rearm = rearm;
        Ok(())
    }

    fn close_all(d: &mut Driver<Self>) {
        for idx in 0..d.sessions.len() as u32 {
            let s = &d.sessions[idx as usize];
            if matches!(s.state(), State::Open | State::Connecting) {
                let (gen, state) = (s.gen(), s.wire_state());
                d.io.close(idx, gen, state);
            }
        }
        // Submit the closes: the FINs go out now, not when the rings close.
        let _ = d.io.rings.wait(Duration::ZERO);
    }
}

impl Driver<UringIo> {
    /// Arms what reads session `idx`'s new connection: its multishot recv
    /// (armed) or its POLLRDHUP poll (deferred).
    fn arm_recv(&mut self, idx: u32, now_us: u64) {
        let gen = self.sessions[idx as usize].gen();
        let armed = match self.io.recv {
            UringRecv::Armed => self.io.rings.recv(idx, tag(RECV, gen, idx)),
            UringRecv::Deferred => {
                self.io
                    .rings
                    .poll(idx, tag(HUP, gen, idx), nix::libc::POLLRDHUP as u32)
            }
        };
        if let Err(e) = armed {
            let now = (now_us / 1_000) as u32;
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
    }

    /// Deferred: receives, without waiting, on every session that sent
    /// at least half a reply poll ago (the tick, or [`REPLY_POLL_US`] if
    /// longer: so the turn after the sleep that follows the sends, not
    /// the one right after them, which their send completions end at
    /// once) or whose recv is due again; once each.
    fn recv_due_now(&mut self, now_us: u64) {
        let defer_us = REPLY_POLL_US.max(u64::from(self.model.tick_ms) * 1_000) / 2;
        let mut due = std::mem::take(&mut self.io.recv_batch);
        let mut n = 0;
        while let Some(&(at, count)) = self.io.sent_marks.front() {
            if at + defer_us > now_us {
                break;
            }
            n += count;
            self.io.sent_marks.pop_front();
        }
        due.extend(self.io.sent_before.drain(..n));
        due.append(&mut self.io.recv_again);
        if due.len() > 1 {
            due.sort_unstable();
            due.dedup();
        }
        for &(idx, gen) in &due {
            let s = &self.sessions[idx as usize];
            if s.gen() == gen && s.wire_state() == State::Open && !self.io.waiting.contains(&idx) {
                self.recv_now(idx, gen, now_us);
            }
        }
        due.clear();
        self.io.recv_batch = due;
    }

    fn recv_now(&mut self, idx: u32, gen: u16, now_us: u64) {
        if let Err(e) = self.io.rings.recv_now(idx, tag(RECV, gen, idx)) {
            let now = (now_us / 1_000) as u32;
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
    }

    /// Deferred: session `idx` awaits bytes that have not arrived: a
    /// POLLIN poll wakes the driver when they do.
    fn await_bytes(&mut self, idx: u32, gen: u16, now_us: u64) {
        if !self.io.waiting.insert(idx) {
            return;
        }
        if let Err(e) = self
            .io
            .rings
            .poll(idx, tag(READABLE, gen, idx), nix::libc::POLLIN as u32)
        {
            self.io.waiting.remove(&idx);
            let now = (now_us / 1_000) as u32;
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
    }

    /// Deferred: session `idx` awaits a reply (or a handshake's answer).
    fn expects_bytes(&self, idx: u32) -> bool {
        let s = &self.sessions[idx as usize];
        s.outstanding() > 0 || s.handshaking() || s.has_read_spill()
    }

    /// Deferred: a recv_now's completion on an open session.
    fn complete_recv_now(&mut self, c: &Completion, data: &[u8], now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let (_, gen, idx) = untag(c.tag);
        if c.result == -nix::libc::EAGAIN {
            // Late, or the peer's FIN came with nothing (ending: read on).
            if self.io.ending.contains(&idx) || self.expects_bytes(idx) {
                self.await_bytes(idx, gen, now_us);
            }
            return;
        }
        if let Some(e) = c.error() {
            return self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
        if c.result == 0 {
            return self.fail(idx, ErrorKind::Eof, now, None);
        }
        if !self.take_bytes(c, data, now_us) {
            return;
        }
        // A full record may have left bytes behind, and a connection the
        // server ended is read to its end: receive again next turn.
        let full = c.data.len() >= self.io.rings.recv_now_len();
        if full || self.io.ending.contains(&idx) {
            self.io.recv_again.push((idx, gen));
        } else if self.expects_bytes(idx) {
            self.await_bytes(idx, gen, now_us);
        }
    }

    /// Hands a recv's bytes to the session; false if that ended it.
    fn take_bytes(&mut self, c: &Completion, data: &[u8], now_us: u64) -> bool {
        let idx = untag(c.tag).2;
        let bytes = &data[c.data.clone()];
        self.scratch[..bytes.len()].copy_from_slice(bytes);
        let arrived_us = match c.rx_realtime_ns {
            0 => now_us,
            rx => RunClock::run_us_of_realtime(now_us, self.io.now_realtime_ns, rx),
        };
        self.ingest(idx, bytes.len(), now_us, arrived_us)
    }

    fn complete(&mut self, c: &Completion, data: &[u8], now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let (kind, gen, idx) = untag(c.tag);
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        if s.gen() != gen {
            return; // stale: that connection is gone
        }
        let state = s.wire_state();
        let failed = |d: &mut Self, e: io::Error| {
            d.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        };
        match (kind, state) {
            (CONNECT, State::Connecting) => match c.error() {
                Some(e) => failed(self, e),
                None if c.kind == Kind::Op => {
                    self.arm_recv(idx, now_us);
                    if self.sessions[idx as usize].gen() == gen {
                        self.on_tcp_connected(idx, now_us);
                    }
                }
                None => {}
            },
            (RECV, State::Open) if self.io.recv == UringRecv::Deferred => {
                self.complete_recv_now(c, data, now_us);
            }
            (HUP, State::Open) | (READABLE, State::Open) => {
                if kind == READABLE {
                    self.io.waiting.remove(&idx);
                }
                match c.error() {
                    // A cancelled poll (its connection closed) is stale.
                    Some(_) if c.result == -nix::libc::ECANCELED => {}
                    Some(e) => failed(self, e),
                    None => {
                        if kind == HUP {
                            // The server's FIN or RST: read to the end.
                            self.io.ending.insert(idx);
                        }
                        self.recv_now(idx, gen, now_us);
                    }
                }
            }
            (RECV, State::Open) => {
                if c.result == -(nix::errno::Errno::ENOBUFS as i32) {
                    self.counters.recv_enobufs += 1;
                    self.io.rearm.push((idx, gen));
                    return;
                }
                if let Some(e) = c.error() {
                    return failed(self, e);
                }
                if c.result == 0 {
                    return self.fail(idx, ErrorKind::Eof, now, None);
                }
                if self.take_bytes(c, data, now_us) && !c.more {
                    self.io.rearm.push((idx, gen));
                }
            }
            (SEND, State::Open) => {
                if let Some(e) = c.error() {
                    return failed(self, e);
                }
                // The session's previous send is done: the next one (the
                // heartbeats that came due meanwhile) may go.
                let pending = if self.write_spill.is_empty() {
                    None
                } else {
                    self.write_spill.remove(&idx)
                };
                match pending {
                    Some(bytes) => {
                        if let Err(e) = self.io.rings.send(idx, tag(SEND, gen, idx), &bytes) {
                            failed(self, e);
                        }
                    }
                    None => self.sessions[idx as usize].set_write_spill(false),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_kind_generation_and_index() {
        let t = tag(SEND, 0xBEEF, 4_000_000_000);
        assert_eq!(untag(t), (SEND, 0xBEEF, 4_000_000_000));
        assert!(t < c10m_server::sys::uring::client::MAX_TAG);
    }
}
