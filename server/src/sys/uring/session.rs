//! Per-session requests of the io_uring worker: multishot recv, sends,
//! the POLLOUT wait of a write-blocked session, and close. The contract
//! (which bit means what, and in which order the core is driven) is in
//! the module doc of [`super`].

use super::userdata::{UserData, IGNORE};
use super::{on_target, Cqe, Descriptor, SendRecord, Target, Worker, BGID};
use crate::core::{CloseReason, Verdict};
use crate::table::Token;
use io_uring::{cqueue, opcode, squeue};
use std::io;

/// A multishot recv is in flight.
pub(super) const RECV_ARMED: u8 = 1;
/// ...and a cancel for it was submitted (the session is write-blocked).
pub(super) const RECV_CANCELLED: u8 = 2;
/// A send is in flight; the session's next recv completions wait for it.
pub(super) const SEND_IN_FLIGHT: u8 = 4;
/// A one-shot POLLOUT is in flight (the session is write-blocked).
pub(super) const POLL_OUT_ARMED: u8 = 8;

/// Most spilled bytes one flush send carries.
const FLUSH_MAX: usize = 64 * 1024;

impl<D: Descriptor> Worker<D> {
    pub(super) fn io(&self, key: u32) -> u8 {
        self.core.io_state(key)
    }

    fn set_io(&mut self, key: u32, bits: u8, on: bool) {
        let io = self.core.io_state(key);
        self.core
            .set_io_state(key, if on { io | bits } else { io & !bits });
    }

    pub(super) fn target(&self, key: u32) -> Target {
        self.core.handle(key).target()
    }

    pub(super) fn admit(&mut self, socket: D, now: u32) {
        if D::DIRECT && self.core.sessions() >= self.direct_capacity {
            // Its slots are this worker's alone: full here is full, whatever
            // the process-wide count says. The slack slots stay free for
            // accepting and answering such connections, so none waits
            // unanswered in the listen queue.
            let busy = self.control.refusal_full(&mut self.core.counters);
            return self.refuse(socket, &busy);
        }
        let now_ns = self.clock.elapsed_ns(std::time::Instant::now());
        let spill = self.core.spill_bytes();
        if let Some(busy) = self.control.refusal(now_ns, spill, &mut self.core.counters) {
            return self.refuse(socket, &busy);
        }
        let token = self.core.open(socket, now);
        if UserData::Recv(token).encode().is_none() {
            // A key past 2^30 cannot be told apart in user_data.
            return self.close(token.key(), CloseReason::Reset);
        }
        self.resume_reading(token.key());
    }

    /// Answers a refused connection `busy` and closes it: one write into
    /// its empty send buffer (it cannot block), as the epoll backend does.
    /// A plain descriptor is written and closed here; a direct one has no
    /// descriptor to write through, so a send SQE and a close follow it
    /// (the send completes inside the enter that submits it, before the
    /// close runs; its completion finds no session and frees its bytes).
    fn refuse(&mut self, socket: D, busy: &[u8]) {
        if !D::DIRECT {
            if let Target::Fd(fd) = socket.target() {
                // SAFETY: the descriptor is open and owned by `socket`,
                // which outlives this write; `busy` is a live buffer.
                let _ = unsafe { libc::write(fd.0, busy.as_ptr().cast(), busy.len()) };
            }
            return self.close_socket(socket);
        }
        let staged = self.arena.stage(busy);
        // Token of no session: its completion only frees the bytes.
        self.submit_send(socket.target(), Token::reserved(0), staged, false);
        self.close_socket(socket);
    }

    /// Queues a non-blocking send of `staged` to `target` for the session
    /// of `token`; false (the bytes freed) when user_data cannot number it.
    fn submit_send(
        &mut self,
        target: Target,
        token: Token,
        staged: super::Staged,
        flush: bool,
    ) -> bool {
        let slot = self.sends.insert(SendRecord {
            token,
            staged,
            flush,
        });
        let Some(ud) = UserData::Send(slot as u32).encode() else {
            // More sends in flight than user_data can number (never near).
            self.sends.remove(slot);
            self.arena.release(staged);
            return false;
        };
        let sqe = on_target!(target, t => opcode::Send::new(
            t,
            self.arena.ptr(staged, 0),
            staged.len() as u32
        )
        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        .build()
        .user_data(ud));
        let shard = target.shard();
        self.queue(shard, sqe);
        self.shards[shard].pending_sends += 1;
        true
    }

    /// Queues the close of a socket no session holds (any more).
    pub(super) fn close_socket(&mut self, socket: D) {
        let target = socket.into_target();
        let close = on_target!(target, t => opcode::Close::new(t)
            .build()
            .user_data(IGNORE)
            .flags(squeue::Flags::SKIP_SUCCESS));
        let shard = target.shard();
        self.queue(shard, close);
        if D::DIRECT {
            // The CLOSE frees the slot before any later accept of this ring
            // runs (requests of one ring are issued in submission order).
            self.shards[shard].occupied -= 1;
        }
    }

    /// Arms the multishot recv unless one is in flight or the session is
    /// write-blocked.
    pub(super) fn resume_reading(&mut self, key: u32) {
        if self.io(key) & RECV_ARMED != 0 || self.core.is_write_blocked(key) || self.exporting {
            return;
        }
        let token = self.core.token(key);
        let ud = UserData::Recv(token)
            .encode()
            .expect("admitted keys fit user_data");
        let target = self.target(key);
        let sqe = on_target!(target, t => opcode::RecvMulti::new(t, BGID)
            .build()
            .user_data(ud));
        self.queue(target.shard(), sqe);
        self.set_io(key, RECV_ARMED, true);
        self.recvs_armed += 1;
    }

    /// One recv completion (fresh or held back).
    pub(super) fn on_recv(&mut self, cqe: Cqe, now: u32) -> io::Result<()> {
        let UserData::Recv(token) = UserData::decode(cqe.user_data) else {
            return Ok(());
        };
        let (res, flags) = (cqe.result, cqe.flags);
        let more = cqueue::more(flags);
        let Some(key) = self.core.resolve(token) else {
            // Stale: the session closed (a client still writing after its
            // protocol error keeps a multishot recv completing). The kernel
            // handed us its buffer all the same: take it, then give it back
            // unread.
            if let Some(bid) = cqueue::buffer_select(flags) {
                let shard = usize::from(cqe.shard);
                self.shards[shard]
                    .bufs()
                    .take(bid, 0)
                    .map_err(io::Error::other)?;
                self.give_back(shard, bid)?;
            }
            self.recvs_armed -= usize::from(!more);
            return Ok(());
        };
        if self.io(key) & SEND_IN_FLIGHT != 0 {
            self.deferred.push(cqe);
            return Ok(());
        }
        // Ended by the kernel rather than by a cancel of ours: the re-arm
        // below (or at the end of the turn, for ENOBUFS) is counted.
        let kernel_ended = !more && self.io(key) & RECV_CANCELLED == 0 && -res != libc::ECANCELED;
        if !more {
            self.recvs_armed -= 1;
            self.set_io(key, RECV_ARMED | RECV_CANCELLED, false);
        }
        if res > 0 {
            let bid = cqueue::buffer_select(flags)
                .ok_or_else(|| io::Error::other("recv completion without a provided buffer"))?;
            let shard = usize::from(cqe.shard);
            let data = self.shards[shard]
                .bufs
                .as_mut()
                .expect("buffer ring present while running")
                .take(bid, res as usize)
                .map_err(io::Error::other)?;
            self.out.clear();
            let verdict = self.core.ingest(key, now, data, &mut self.out);
            self.give_back(shard, bid)?;
            if !self.reply(key, verdict) {
                return Ok(());
            }
        } else if res == 0 {
            self.close(key, CloseReason::Peer);
            return Ok(());
        } else if -res == libc::ENOBUFS {
            // Nothing was read: the bytes wait in the socket for the re-arm,
            // once this turn has given its buffers back.
            self.core.counters.recv_enobufs += 1;
            self.core.counters.recv_rearms += 1;
            self.rearm.push(token);
            return Ok(());
        } else if !matches!(-res, libc::ECANCELED | libc::EINTR | libc::EAGAIN) {
            self.close(key, CloseReason::Reset);
            return Ok(());
        }
        if !more {
            if kernel_ended && !self.core.is_write_blocked(key) {
                self.core.counters.recv_rearms += 1;
            }
            self.resume_reading(key);
        }
        Ok(())
    }

    fn give_back(&mut self, shard: usize, bid: u16) -> io::Result<()> {
        self.shards[shard]
            .bufs()
            .give_back(bid)
            .map_err(io::Error::other)
    }

    /// Sends (or, when blocked, queues) the replies in `self.out`, then
    /// applies the verdict. False when the session was closed.
    fn reply(&mut self, key: u32, verdict: Verdict) -> bool {
        if self.core.is_write_blocked(key) {
            // Bytes the kernel had already received: their replies go behind
            // the blocked ones, as if the write took nothing.
            let verdict = match verdict {
                Verdict::Open => self.core.after_write(key, &self.out, 0),
                closing => closing,
            };
            if let Verdict::Close(reason) = verdict {
                self.close(key, reason);
                return false;
            }
            self.block(key);
            return true;
        }
        if !self.out.is_empty() {
            let staged = self.arena.stage(&self.out);
            self.send(key, staged, false);
        }
        if let Verdict::Close(reason) = verdict {
            // Best effort: the send above is submitted before the close.
            self.close(key, reason);
            return false;
        }
        true
    }

    /// Queues a non-blocking send of `staged` for a session.
    fn send(&mut self, key: u32, staged: super::Staged, flush: bool) {
        if !self.submit_send(self.target(key), self.core.token(key), staged, flush) {
            return self.close(key, CloseReason::Reset);
        }
        self.set_io(key, SEND_IN_FLIGHT, true);
    }

    pub(super) fn on_send(&mut self, slot: u32, res: i32) {
        let Some(record) = self.sends.try_remove(slot as usize) else {
            return;
        };
        let Some(key) = self.core.resolve(record.token) else {
            return self.arena.release(record.staged); // closed meanwhile
        };
        self.set_io(key, SEND_IN_FLIGHT, false);
        if res < 0 && -res != libc::EAGAIN {
            self.arena.release(record.staged);
            return self.close(key, CloseReason::Reset);
        }
        let written = res.max(0) as usize;
        if !record.flush {
            let verdict = self
                .core
                .after_write(key, self.arena.bytes(record.staged), written);
            self.arena.release(record.staged);
            if let Verdict::Close(reason) = verdict {
                return self.close(key, reason);
            }
            if self.core.is_write_blocked(key) {
                self.block(key);
            }
            return;
        }
        let whole = written == record.staged.len();
        self.arena.release(record.staged);
        if self.core.flushed(key, written) {
            self.resume_reading(key);
        } else if whole {
            self.flush(key); // the socket took it all: more may fit
        } else {
            self.wait_writable(key);
        }
    }

    /// The session is write-blocked: stop its reads, wait for POLLOUT.
    fn block(&mut self, key: u32) {
        let io = self.io(key);
        if io & RECV_ARMED != 0 && io & RECV_CANCELLED == 0 {
            let ud = UserData::Recv(self.core.token(key))
                .encode()
                .expect("admitted keys fit user_data");
            let cancel = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(IGNORE)
                .flags(squeue::Flags::SKIP_SUCCESS);
            let shard = self.target(key).shard();
            self.queue(shard, cancel);
            self.set_io(key, RECV_CANCELLED, true);
        }
        if io & SEND_IN_FLIGHT == 0 {
            self.wait_writable(key);
        }
    }

    fn wait_writable(&mut self, key: u32) {
        if self.io(key) & POLL_OUT_ARMED != 0 || self.exporting {
            return;
        }
        let ud = UserData::PollOut(self.core.token(key))
            .encode()
            .expect("admitted keys fit user_data");
        let target = self.target(key);
        let sqe = on_target!(target, t => opcode::PollAdd::new(t, libc::POLLOUT as u32)
            .build()
            .user_data(ud));
        self.queue(target.shard(), sqe);
        self.set_io(key, POLL_OUT_ARMED, true);
        self.polls_armed += 1;
    }

    pub(super) fn on_poll_out(&mut self, token: Token) {
        self.polls_armed -= 1;
        let Some(key) = self.core.resolve(token) else {
            return;
        };
        self.set_io(key, POLL_OUT_ARMED, false);
        if self.core.is_write_blocked(key) && self.io(key) & SEND_IN_FLIGHT == 0 {
            self.flush(key);
        }
    }

    /// Sends the next spilled replies (at most [`FLUSH_MAX`]).
    pub(super) fn flush(&mut self, key: u32) {
        let pending = self.core.pending_output(key);
        let chunk = &pending[..pending.len().min(FLUSH_MAX)];
        if chunk.is_empty() {
            // Nothing waiting after all: the core unblocks on a 0 flush.
            if self.core.flushed(key, 0) {
                self.resume_reading(key);
            }
            return;
        }
        let staged = self.arena.stage(chunk);
        self.send(key, staged, true);
    }

    /// Queues a cancel (by user_data) of the session's armed recv and
    /// POLLOUT, and marks the recv cancelled (a hand-off: the session stays).
    pub(super) fn cancel_requests(&mut self, key: u32) {
        let io = self.io(key);
        let token = self.core.token(key);
        let shard = self.target(key).shard();
        for (armed, request) in [
            (
                io & RECV_ARMED != 0 && io & RECV_CANCELLED == 0,
                UserData::Recv(token),
            ),
            (io & POLL_OUT_ARMED != 0, UserData::PollOut(token)),
        ] {
            if let Some(ud) = request.encode().filter(|_| armed) {
                let cancel = opcode::AsyncCancel::new(ud)
                    .build()
                    .user_data(IGNORE)
                    .flags(squeue::Flags::SKIP_SUCCESS);
                self.queue(shard, cancel);
            }
        }
        if io & RECV_ARMED != 0 {
            self.set_io(key, RECV_CANCELLED, true);
        }
    }

    /// Closes a session: frees its record now, and queues (after any reply
    /// still to go) a cancel of its requests and the close of its socket.
    pub(super) fn close(&mut self, key: u32, reason: CloseReason) {
        // Cancel by user_data, never by descriptor: the kernel finds a
        // cancel-by-fd target by walking every armed poll request of the
        // ring, so each close cost O(sessions) — 390 µs of sys time per
        // close at 15 000 sessions against 33 µs on epoll (88 % of it in
        // io_cancel_req_match), which made the chaos garbage run 3× the
        // sys time of epoll. A user_data cancel is a hash lookup. Sends
        // need none: with MSG_DONTWAIT they complete in the enter that
        // submits them, before this cancel runs.
        self.cancel_requests(key);
        let socket = self.core.close(key, reason);
        self.control.release();
        self.close_socket(socket);
    }
}
