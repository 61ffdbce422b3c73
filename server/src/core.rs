//! `SessionCore`: the sans-IO heart of a worker. It owns the
//! [`SessionTable`], the [`DeadlineWheel`] and the [`SpillArea`], and turns
//! bytes read from a session into reply bytes and a verdict. It never
//! touches a socket or reads a clock: backends (epoll, io_uring) pass it
//! bytes and `now` (in wheel ticks) and do what it says.
//!
//! # Call order, per session
//! 1. [`SessionCore::open`] with the backend's handle; register the returned
//!    [`Token`] with the OS. (Admission control happens before: see
//!    [`crate::admission`].)
//! 2. On readable: skip the session while [`SessionCore::is_write_blocked`];
//!    otherwise read into a scratch buffer, call [`SessionCore::ingest`] with
//!    the bytes and an empty reply buffer, write the replies, then report
//!    what was written with [`SessionCore::after_write`]. A `Close` verdict
//!    from either means: best-effort write of the replies, then
//!    [`SessionCore::close`].
//! 3. On writable while blocked: write [`SessionCore::pending_output`],
//!    report it with [`SessionCore::flushed`]; once it returns true, resume
//!    reading (edge-triggered readiness may have been consumed meanwhile).
//! 4. Each tick: [`SessionCore::expire`], then `close(key, Evicted)` for each.
//! 5. Read 0 bytes: `close(key, Peer)`; a read or write error:
//!    `close(key, Reset)`.
//!
//! `close` hands the handle back; dropping it closes the descriptor.
//!
//! A completion backend (io_uring) keeps the same order per session: it
//! reports each write's result ([`SessionCore::after_write`]) before it
//! ingests the next bytes of that session. Bytes that the kernel had
//! already received when the session became write-blocked cannot be left
//! unread in the socket: they are ingested and their replies go behind
//! the blocked ones (`after_write` with 0 written), while the backend stops
//! further reads until [`SessionCore::flushed`] returns true.
#![forbid(unsafe_code)]

use crate::spill::SpillArea;
use crate::table::{SessionTable, Token, WRITE_BLOCKED};
use crate::wheel::DeadlineWheel;
use crate::wire::{self, Command};

/// Why a session was closed; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or asked to with QUIT.
    Peer,
    /// Silent for longer than the idle timeout.
    Evicted,
    /// A malformed or oversize frame.
    Protocol,
    /// A read or write error (connection reset, broken pipe...).
    Reset,
    /// Its spilled bytes would have exceeded the worker's spill budget.
    Overflow,
    /// The server is stopping.
    Shutdown,
    /// A partial frame was held longer than the frame timeout (slowloris).
    FrameTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Peer,
        CloseReason::Evicted,
        CloseReason::Protocol,
        CloseReason::Reset,
        CloseReason::Overflow,
        CloseReason::Shutdown,
        CloseReason::FrameTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Evicted => "evicted",
            CloseReason::Protocol => "protocol",
            CloseReason::Reset => "reset",
            CloseReason::Overflow => "overflow",
            CloseReason::Shutdown => "shutdown",
            CloseReason::FrameTimeout => "frame_timeout",
        }
    }
}

/// What the backend does next with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Open,
    Close(CloseReason),
}

/// Monotonic per-worker counters (gauges live in the table and spill area).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Refused at the session cap (`--max-sessions`), answered busy.
    pub rejected: u64,
    /// Refused by the accept gate (rate limit or overload), answered busy.
    pub shed: u64,
    /// Of `shed`: refused while the worker's loop lagged (`--max-lag`).
    pub shed_lag: u64,
    pub closed: [u64; 7],
    pub heartbeats: u64,
    pub commands: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Reads that left a partial frame in the spill area.
    pub spilled_frames: u64,
    /// Writes that left replies in the spill area.
    pub spilled_writes: u64,
    /// Accept calls that failed for lack of descriptors (EMFILE/ENFILE...).
    pub accept_errors_fd: u64,
    /// io_uring only: multishot recvs ended by ENOBUFS (the worker's
    /// provided-buffer ring ran dry). Nothing is read; each is re-armed.
    pub recv_enobufs: u64,
    /// io_uring only: multishot recvs the kernel ended (no F_MORE: ENOBUFS,
    /// CQ overflow...) on a session still open, and re-armed. Cancels of
    /// our own (write-blocked sessions, closes) are not counted.
    pub recv_rearms: u64,
}

impl Counters {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }
}

/// A session's state as it travels to another server process in a
/// zero-downtime upgrade (see [`crate::handoff`]): everything but its
/// socket, which goes alongside, and its keys, which are worker-local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Ticks of its idle timeout left.
    pub idle_left: u32,
    /// Ticks since its partial frame began (meaningful with `input`).
    pub frame_age: u32,
    /// A partial frame: bytes read from the socket, not yet a request.
    pub input: Vec<u8>,
    /// Replies the socket did not take yet (the session is write-blocked).
    pub output: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    pub max_frame: usize,
    pub idle_timeout_ticks: u32,
    /// Longest a partial frame may wait for its end, in ticks.
    pub frame_timeout_ticks: u32,
    pub spill_budget: usize,
    /// Sessions to reserve table room for (virtual memory only).
    pub capacity: usize,
}

#[derive(Debug)]
pub struct SessionCore<H> {
    table: SessionTable<H>,
    wheel: DeadlineWheel,
    spill: SpillArea,
    /// Scratch for the wheel's expired keys.
    expired: Vec<u32>,
    max_frame: usize,
    frame_timeout: u32,
    pub counters: Counters,
}

impl<H> SessionCore<H> {
    pub fn new(config: CoreConfig, now: u32) -> Self {
        SessionCore {
            table: SessionTable::with_capacity(config.capacity),
            wheel: DeadlineWheel::new(config.idle_timeout_ticks, now),
            spill: SpillArea::new(config.spill_budget),
            expired: Vec::new(),
            max_frame: config.max_frame,
            frame_timeout: config.frame_timeout_ticks.max(1),
            counters: Counters::default(),
        }
    }

    /// Sessions open in this worker.
    pub fn sessions(&self) -> usize {
        self.table.len()
    }

    /// Bytes held in the spill area now.
    pub fn spill_bytes(&self) -> usize {
        self.spill.bytes()
    }

    pub fn open(&mut self, handle: H, now: u32) -> Token {
        let token = self.table.insert(handle);
        self.wheel.insert(&mut self.table, token.key(), now);
        self.counters.accepted += 1;
        token
    }

    pub fn resolve(&self, token: Token) -> Option<u32> {
        self.table.resolve(token)
    }

    pub fn token(&self, key: u32) -> Token {
        self.table.token(key)
    }

    pub fn handle(&self, key: u32) -> &H {
        &self.table.get(key).handle
    }

    /// The backend's IO state byte of a session (0 when opened; the core
    /// never reads it).
    pub fn io_state(&self, key: u32) -> u8 {
        self.table.get(key).io
    }

    pub fn set_io_state(&mut self, key: u32, io: u8) {
        self.table.get_mut(key).io = io;
    }

    pub fn is_write_blocked(&self, key: u32) -> bool {
        self.table.get(key).flags & WRITE_BLOCKED != 0
    }

    /// Handles bytes read from a session: appends replies to `out` and says
    /// whether the session stays open. Any bytes count as activity for the
    /// idle deadline.
    pub fn ingest(&mut self, key: u32, now: u32, data: &[u8], out: &mut Vec<u8>) -> Verdict {
        self.counters.bytes_in += data.len() as u64;
        self.wheel.touch(&mut self.table, key, now);
        let session = self.table.get_mut(key);
        let (mut held, held_since) = self.spill.take_input(&mut session.spill);
        let (consumed, verdict) = if held.is_empty() {
            self.serve(data, out)
        } else {
            held.extend_from_slice(data);
            self.serve(&held, out)
        };
        if verdict != Verdict::Open {
            return verdict;
        }
        let rest = if held.is_empty() {
            &data[consumed..]
        } else {
            &held[consumed..]
        };
        if rest.is_empty() {
            return Verdict::Open;
        }
        self.counters.spilled_frames += 1;
        // The frame timeout runs from the first byte of a frame: a held
        // frame that is still incomplete keeps its start time.
        let since = if !held.is_empty() && consumed == 0 {
            held_since
        } else {
            now
        };
        let session = self.table.get_mut(key);
        match self.spill.put_input(&mut session.spill, key, rest, since) {
            Ok(()) => Verdict::Open,
            Err(_) => Verdict::Close(CloseReason::Overflow),
        }
    }

    /// Decodes every complete frame of `buf`; returns how many bytes were
    /// consumed and the verdict.
    fn serve(&mut self, buf: &[u8], out: &mut Vec<u8>) -> (usize, Verdict) {
        let mut pos = 0;
        loop {
            match wire::decode_request(&buf[pos..], self.max_frame) {
                Ok(Some((command, len))) => {
                    pos += len;
                    wire::encode_reply(&command, out);
                    if command != Command::Empty {
                        self.counters.commands += 1;
                    }
                    if command.is_heartbeat() {
                        self.counters.heartbeats += 1;
                    }
                    if command == Command::Quit {
                        return (pos, Verdict::Close(CloseReason::Peer));
                    }
                }
                Ok(None) => return (pos, Verdict::Open),
                Err(error) => {
                    wire::encode_protocol_error(&error, out);
                    return (pos, Verdict::Close(CloseReason::Protocol));
                }
            }
        }
    }

    /// Reports that `written` bytes of `out` reached the socket; the rest is
    /// spilled and the session is blocked until [`Self::flushed`] drains it.
    pub fn after_write(&mut self, key: u32, out: &[u8], written: usize) -> Verdict {
        self.counters.bytes_out += written as u64;
        let rest = &out[written..];
        if rest.is_empty() {
            return Verdict::Open;
        }
        self.counters.spilled_writes += 1;
        let session = self.table.get_mut(key);
        session.flags |= WRITE_BLOCKED;
        match self.spill.push_output(&mut session.spill, rest) {
            Ok(()) => Verdict::Open,
            Err(_) => Verdict::Close(CloseReason::Overflow),
        }
    }

    /// Replies waiting for a blocked session.
    pub fn pending_output(&self, key: u32) -> &[u8] {
        self.spill.output(self.table.get(key).spill)
    }

    /// Reports that `written` waiting bytes were written. True when the
    /// session is no longer blocked.
    pub fn flushed(&mut self, key: u32, written: usize) -> bool {
        self.counters.bytes_out += written as u64;
        let session = self.table.get_mut(key);
        let drained = self.spill.consume_output(&mut session.spill, written);
        if drained {
            session.flags &= !WRITE_BLOCKED;
        }
        drained
    }

    /// Appends to `due` the sessions to close at `now`, with the reason:
    /// idle past their deadline (evicted), or holding a partial frame
    /// longer than the frame timeout. Each key appears once.
    pub fn expire(&mut self, now: u32, due: &mut Vec<(u32, CloseReason)>) {
        self.expired.clear();
        self.wheel.expire(&mut self.table, now, &mut self.expired);
        due.extend(self.expired.iter().map(|&k| (k, CloseReason::Evicted)));
        let first = due.len();
        let oldest = now.wrapping_sub(self.frame_timeout);
        self.spill
            .frames_started_before(oldest, |owner| due.push((owner, CloseReason::FrameTimeout)));
        // A session both idle and slow is closed once, as evicted.
        if !self.expired.is_empty() {
            let expired = &self.expired;
            let mut i = first;
            while i < due.len() {
                if expired.contains(&due[i].0) {
                    due.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Closes a session, counting the reason, and returns its handle.
    pub fn close(&mut self, key: u32, reason: CloseReason) -> H {
        self.wheel.remove(&mut self.table, key);
        let mut session = self.table.remove(key);
        self.spill.release(&mut session.spill);
        self.counters.closed[reason as usize] += 1;
        session.handle
    }

    /// The state of a session to carry to another process (it stays open
    /// here: the hand-off may yet fail, and then this worker serves on).
    pub fn export(&mut self, key: u32, now: u32) -> Carried {
        let idle_left = self.wheel.left(&mut self.table, key, now);
        let spill = self.table.get(key).spill;
        let (input, since) = self.spill.input(spill);
        Carried {
            idle_left,
            frame_age: if input.is_empty() {
                0
            } else {
                now.wrapping_sub(since).min(u32::MAX / 4)
            },
            input: input.to_vec(),
            output: self.spill.output(spill).to_vec(),
        }
    }

    /// Takes in a session carried from another process: its idle deadline,
    /// its partial frame (whose frame timeout keeps running from its first
    /// byte) and its unwritten replies (the session starts write-blocked).
    /// Not counted as accepted. A `Close` verdict (the spill budget cannot
    /// hold its bytes) means: close it, as for any overflow.
    pub fn adopt(&mut self, handle: H, now: u32, carried: &Carried) -> (Token, Verdict) {
        let token = self.table.insert(handle);
        let key = token.key();
        self.wheel
            .insert_with(&mut self.table, key, now, carried.idle_left);
        let session = self.table.get_mut(key);
        let since = now.wrapping_sub(carried.frame_age);
        let mut fits = self
            .spill
            .put_input(&mut session.spill, key, &carried.input, since)
            .is_ok();
        if !carried.output.is_empty() {
            session.flags |= WRITE_BLOCKED;
            fits &= self
                .spill
                .push_output(&mut session.spill, &carried.output)
                .is_ok();
        }
        let verdict = if fits {
            Verdict::Open
        } else {
            Verdict::Close(CloseReason::Overflow)
        };
        (token, verdict)
    }

    /// Keys of every open session (for shutdown).
    pub fn keys(&self) -> Vec<u32> {
        self.table.keys()
    }
}

#[cfg(test)]
mod tests;
