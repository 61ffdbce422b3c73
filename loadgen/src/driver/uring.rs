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
//!   completion (or a failed step's) ends the connect. Then a multishot
//!   recv is armed for the connection's life.
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
//! - **Reads.** Each recv completion's bytes are parsed at once; one that
//!   ends the recv (ENOBUFS when the ring's buffers ran dry, or the kernel
//!   ending it) is re-armed at the end of the turn; ENOBUFS is counted
//!   (`recv_enobufs`).
//! - **Writes.** A heartbeat is handed to the kernel whole (MSG_WAITALL);
//!   one due while the previous send of the session is in flight waits in
//!   the write spill until that send completes.
//! - **Close.** Cancels the session's recv (or connect) by tag and closes
//!   the slot; the socket's last reference then drops and sends the FIN.
#![forbid(unsafe_code)]

use super::{Driver, Sent, SocketIo};
use crate::clock::RunClock;
use crate::proto::ProtocolKind;
use crate::session::State;
use crate::stats::ErrorKind;
use c10m_server::sys::uring::client::{ClientRings, Completion, Kind};
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
    /// CLOCK_REALTIME when this turn's run time was read (to place the
    /// replies' arrival times on the run clock).
    now_realtime_ns: u64,
}

impl UringIo {
    /// Rings for `sessions` slots, `slots_per_ring` each, made on the
    /// calling (driver) thread.
    pub fn new(sessions: u64, slots_per_ring: u32, protocol: ProtocolKind) -> io::Result<UringIo> {
        let size = buffer_size(protocol);
        let rings = ClientRings::new(sessions, slots_per_ring, URING_BUFFERS, size)?;
        Ok(UringIo {
            rings,
            completions: Vec::with_capacity(4096),
            data: Vec::with_capacity(64 * 1024),
            rearm: Vec::with_capacity(1024),
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
        Ok(Sent::InFlight)
    }

    fn want_writable(&mut self, _idx: u32, _gen: u16, _on: bool) -> io::Result<()> {
        Ok(()) // sends wait in the kernel: never a partial one
    }

    fn close(&mut self, idx: u32, gen: u16, state: State) {
        // The armed request holds the socket: cancel it, then close.
        let armed = match state {
            State::Connecting => tag(CONNECT, gen, idx),
            _ => tag(RECV, gen, idx),
        };
        // A slot that cannot be closed (its ring's SQ refused the request)
        // is closed with the rings at the end of the run.
        let _ = self.rings.close(idx, &[armed]);
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
        if d.io.rings.lazy() {
            if d.inflight > 0 {
                timeout = timeout.min(CONNECT_POLL_US);
            } else if d.unanswered() > 0 || !d.write_spill.is_empty() {
                timeout = timeout.min(REPLY_POLL_US.max(u64::from(d.model.tick_ms) * 1_000));
            }
        }
        d.io.rings.wait(Duration::from_micros(timeout))?;
        let now_us = d.clock.now_us();
        d.io.now_realtime_ns = crate::clock::realtime_ns();
        // A reply read now may let a planned close (a drain's first) go
        // ahead: what was held at the hold's end is counted first.
        d.record_held((now_us / 1_000) as u32);
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
    fn arm_recv(&mut self, idx: u32, now_us: u64) {
        let gen = self.sessions[idx as usize].gen();
        if let Err(e) = self.io.rings.recv(idx, tag(RECV, gen, idx)) {
            let now = (now_us / 1_000) as u32;
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
        }
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
                let bytes = &data[c.data.clone()];
                self.scratch[..bytes.len()].copy_from_slice(bytes);
                let arrived_us = match c.rx_realtime_ns {
                    0 => now_us,
                    rx => RunClock::run_us_of_realtime(now_us, self.io.now_realtime_ns, rx),
                };
                if self.ingest(idx, bytes.len(), now_us, arrived_us) && !c.more {
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
