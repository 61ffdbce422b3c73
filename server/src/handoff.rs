//! Zero-downtime upgrade: a running server hands its listeners and every
//! established session to a new server process, which serves them on.
//! No connection is closed, none is re-opened, and bytes that arrive
//! meanwhile wait in the sockets' receive queues.
//!
//! # Who talks to whom
//! Every server process listens on an abstract unix socket named
//! `c10m-server.<pid>` ([`control_name`]; SOCK_SEQPACKET, so each message
//! keeps its boundaries and its descriptors). On it:
//! - `c10m-server upgrade --pid P` (or SIGUSR2 to P) asks P to start a new
//!   binary ([`Control::Upgrade`]); P answers once with the outcome.
//! - The new process (started with the hidden `--takeover P`) says
//!   [`Control::Hello`]. P replies [`Control::Offer`] with its listeners
//!   attached and its worker count, which the new process adopts. The new
//!   process starts that many workers, each waiting on
//!   `c10m-takeover.<newpid>` ([`takeover_name`]), and says
//!   [`Control::Ready`].
//! - Each old worker then stops (no accept, no read: its io_uring requests
//!   are cancelled and reaped first), connects to that name from its own
//!   thread (with `--descriptors thread` its descriptors live in a table
//!   of its own, which only it can send from) and sends [`Begin`], its
//!   sessions in batches of at most [`BATCH`] descriptors (253, the
//!   kernel's SCM_MAX_FD) with a 20-byte record each, the records' bytes
//!   (partial frames, unwritten replies), and `End`. The new worker takes
//!   them into its table without reading from them and answers `Ack`.
//! - When every old worker has its `Ack`, the old process sends
//!   [`Control::Commit`]: from then on the new process serves (it arms
//!   its reads and accepts) and the old one drops its references and
//!   exits. Before that point any failure (the new binary does not start,
//!   crashes, refuses, times out) makes the old process resume serving
//!   everything and send [`Control::Abort`] (the new one exits without
//!   ever having read a byte); nothing is lost and no socket is read by
//!   two processes.
//!
//! # Descriptor limits
//! At most [`BATCH`] descriptors of a worker are in flight at once, so
//! neither side holds more than its sessions plus one batch per worker.
//! io_uring direct descriptors are in no descriptor table: the old worker
//! installs a batch as descriptors (IORING_OP_FIXED_FD_INSTALL), sends
//! them and closes them; the new one receives a batch, registers it into
//! its rings' tables (IORING_OP_FILES_UPDATE with allocated slots) and
//! closes the descriptors.
#![allow(unsafe_code)]

use crate::core::Carried;
use crate::stats::Lineage;
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
pub const BATCH: usize = 253;
/// Bytes of one session's record in a batch.
pub const RECORD: usize = 20;
/// Most payload bytes in one message.
const CHUNK: usize = 32 * 1024;
/// Largest message either side reads.
const MAX_MESSAGE: usize = 64 * 1024;
/// How long one side waits for the other's next message.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker that has sent (or taken) its sessions waits for the
/// main thread's verdict: every other worker's stream must end first.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(600);

/// Tests: a new process with this variable set aborts once it has taken
/// every session of a stream, before acknowledging it (a crash at the
/// worst moment: the old process must serve on and lose nothing).
pub const CRASH_ENV: &str = "C10M_TEST_CRASH_IN_TAKEOVER";

/// The abstract unix socket name every server process listens on.
pub fn control_name(pid: u32) -> String {
    format!("c10m-server.{pid}")
}

/// Where a new process's workers wait for the old workers.
pub fn takeover_name(pid: u32) -> String {
    format!("c10m-takeover.{pid}")
}

/// Messages between processes, one per SOCK_SEQPACKET message, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Control {
    /// Command line → running server: start `binary` (default: the one
    /// this server was started from) and hand everything to it.
    Upgrade { binary: Option<PathBuf> },
    /// New process → old: take me over.
    Hello { pid: u32, version: String },
    /// Old → new: `workers` listeners are attached, in worker order; the
    /// new process runs that many workers.
    Offer {
        pid: u32,
        workers: usize,
        listen: String,
    },
    /// New → old: my workers wait at `takeover`.
    Ready { takeover: String },
    /// Old → new: every session is yours; serve. `lineage`: the old
    /// process's counters and CPU, for the new one to go on from (none
    /// from a supervisor's child: the supervisor keeps those).
    Commit {
        #[serde(default)]
        lineage: Option<Lineage>,
    },
    /// New → old, after the commit: every session taken is armed (read
    /// from) here; the old process may go.
    Serving,
    /// Old → new, or new → old: stop here; the old process keeps serving.
    Abort { why: String },
    /// Old → command line: the outcome of an upgrade.
    Done { ok: bool, message: String },
}

/// Creates the abstract listener `name` (SOCK_SEQPACKET, non-blocking).
pub fn listen(name: &str) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    socket::bind(fd.as_raw_fd(), &addr)?;
    socket::listen(&fd, socket::Backlog::new(64).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Connects to the abstract name (blocking, with [`STEP_TIMEOUT`]).
pub fn connect(name: &str) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    set_timeout(fd.as_fd(), STEP_TIMEOUT)?;
    Ok(fd)
}

/// Takes one connection from `listener` within `timeout` (`None`: one that
/// is waiting now, if any), from a process of this user only; it is
/// blocking, with [`STEP_TIMEOUT`] per message.
pub fn accept(listener: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<Option<OwnedFd>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: a successful accept4 returns a new descriptor
                // that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let peer = socket::getsockopt(&fd, sockopt::PeerCredentials)?;
                if peer.uid() != nix::unistd::geteuid().as_raw() && peer.uid() != 0 {
                    continue; // another user's process: not ours to obey
                }
                set_nonblocking(fd.as_fd(), false)?;
                set_timeout(fd.as_fd(), STEP_TIMEOUT)?;
                return Ok(Some(fd));
            }
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
        let Some(deadline) = deadline else {
            return Ok(None);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut fds = [nix::poll::PollFd::new(
            listener,
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = left.as_millis().clamp(1, 1000) as u16;
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Send and receive timeouts of a connection.
pub fn set_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

/// Sends one message with `fds` attached.
pub fn send(conn: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    loop {
        match socket::sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "sent {n} of {} bytes",
                    bytes.len()
                )))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer stopped reading",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf` (resized to it) and the descriptors it
/// carried. An empty `buf` is the end of the stream: the peer is gone.
pub fn recv(conn: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<Vec<OwnedFd>> {
    buf.resize(MAX_MESSAGE, 0);
    let mut space = nix::cmsg_space!([RawFd; BATCH]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no word from the other process in {STEP_TIMEOUT:?}"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS descriptors are new in this process's
                // table (this thread's, with a private table): ours alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC)
        {
            return Err(io::Error::other(
                "a hand-off message was truncated (descriptors or bytes lost in transit)",
            ));
        }
        let n = msg.bytes;
        buf.truncate(n);
        return Ok(fds);
    }
}

/// Sends a [`Control`] message with `fds` attached.
pub fn send_control(conn: BorrowedFd<'_>, msg: &Control, fds: &[RawFd]) -> io::Result<()> {
    let json = serde_json::to_vec(msg).map_err(io::Error::other)?;
    send(conn, &json, fds)
}

/// Receives a [`Control`] message and its descriptors.
pub fn recv_control(conn: BorrowedFd<'_>) -> io::Result<(Control, Vec<OwnedFd>)> {
    let mut buf = Vec::new();
    let fds = recv(conn, &mut buf)?;
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the connection",
        ));
    }
    let msg = serde_json::from_slice(&buf)
        .map_err(|e| io::Error::other(format!("not a hand-off message: {e}")))?;
    Ok((msg, fds))
}

/// The first message of a worker's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub worker: u32,
    pub sessions: u64,
    /// The sender's wheel tick, in nanoseconds (records count in ticks).
    pub tick_ns: u64,
}

impl Begin {
    /// A worker's stream: `sessions` follow, their deadlines in `tick`s.
    pub fn new(worker: usize, sessions: usize, tick: Duration) -> Begin {
        Begin {
            worker: worker as u32,
            sessions: sessions as u64,
            tick_ns: tick.as_nanos() as u64,
        }
    }
}

const TAG_BEGIN: u8 = b'B';
const TAG_BATCH: u8 = b'S';
const TAG_BYTES: u8 = b'D';
const TAG_END: u8 = b'E';
const TAG_ACK: u8 = b'A';

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("hand-off stream: {what}"),
    )
}

/// An old worker's side of the stream.
#[derive(Debug)]
pub struct Sender {
    conn: OwnedFd,
    sent: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

impl Sender {
    /// Connects to the new process's workers and says who this is.
    pub fn connect(name: &str, begin: Begin) -> io::Result<Sender> {
        let conn = connect(name)?;
        let mut buf = Vec::with_capacity(MAX_MESSAGE);
        buf.push(TAG_BEGIN);
        buf.extend_from_slice(&begin.worker.to_le_bytes());
        buf.extend_from_slice(&begin.sessions.to_le_bytes());
        buf.extend_from_slice(&begin.tick_ns.to_le_bytes());
        send(conn.as_fd(), &buf, &[])?;
        Ok(Sender {
            conn,
            sent: 0,
            buf,
            payload: Vec::new(),
        })
    }

    /// Sends at most [`BATCH`] sessions: their descriptors (which the
    /// caller may close once this returns) and their state.
    pub fn batch(&mut self, fds: &[RawFd], carried: &[Carried]) -> io::Result<()> {
        assert!(fds.len() <= BATCH && fds.len() == carried.len());
        if fds.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        self.payload.clear();
        self.buf.push(TAG_BATCH);
        self.buf
            .extend_from_slice(&(fds.len() as u16).to_le_bytes());
        for c in carried {
            for v in [
                c.idle_left,
                c.frame_age,
                c.input.len() as u32,
                c.output.len() as u32,
                0,
            ] {
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            self.payload.extend_from_slice(&c.input);
            self.payload.extend_from_slice(&c.output);
        }
        send(self.conn.as_fd(), &self.buf, fds)?;
        for chunk in self.payload.chunks(CHUNK) {
            self.buf.clear();
            self.buf.push(TAG_BYTES);
            self.buf.extend_from_slice(chunk);
            send(self.conn.as_fd(), &self.buf, &[])?;
        }
        self.sent += fds.len() as u64;
        Ok(())
    }

    /// Ends the stream and waits for the new worker's acknowledgement that
    /// it holds every session sent.
    pub fn finish(&mut self) -> io::Result<u64> {
        let mut end = vec![TAG_END];
        end.extend_from_slice(&self.sent.to_le_bytes());
        send(self.conn.as_fd(), &end, &[])?;
        let mut buf = Vec::new();
        recv(self.conn.as_fd(), &mut buf)?;
        match buf.first() {
            Some(&TAG_ACK) if buf.len() == 9 && u64_at(&buf, 1) == self.sent => Ok(self.sent),
            Some(&TAG_ACK) if buf.len() == 9 => Err(bad(&format!(
                "the new worker holds {} sessions of the {} sent",
                u64_at(&buf, 1),
                self.sent
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the new worker closed the connection before taking the sessions",
            )),
            _ => Err(bad("expected an acknowledgement")),
        }
    }
}

/// A new worker's side of the stream.
#[derive(Debug)]
pub struct Receiver {
    conn: OwnedFd,
    pub begin: Begin,
    received: u64,
    /// Sender ticks → own ticks: × num / den.
    ratio: (u128, u128),
    buf: Vec<u8>,
}

impl Receiver {
    /// Waits (up to `timeout`) for an old worker on `listener`; `tick` is
    /// this worker's wheel tick.
    pub fn accept(
        listener: BorrowedFd<'_>,
        timeout: Duration,
        tick: Duration,
    ) -> io::Result<Receiver> {
        let conn = accept(listener, Some(timeout))?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no old worker came within {timeout:?}"),
            )
        })?;
        let mut buf = Vec::new();
        recv(conn.as_fd(), &mut buf)?;
        if buf.len() != 21 || buf[0] != TAG_BEGIN {
            return Err(bad("expected the stream's first message"));
        }
        let begin = Begin {
            worker: u32_at(&buf, 1),
            sessions: u64_at(&buf, 5),
            tick_ns: u64_at(&buf, 13),
        };
        let own = tick.as_nanos().max(1);
        Ok(Receiver {
            conn,
            begin,
            received: 0,
            ratio: (u128::from(begin.tick_ns.max(1)), own),
            buf,
        })
    }

    fn ticks(&self, theirs: u32) -> u32 {
        let (num, den) = self.ratio;
        (u128::from(theirs) * num)
            .div_ceil(den)
            .min(u128::from(u32::MAX / 4)) as u32
    }

    /// The next batch (descriptors with their state, in this worker's
    /// ticks), or `None` at the end of the stream.
    pub fn next_batch(&mut self) -> io::Result<Option<Vec<(OwnedFd, Carried)>>> {
        let fds = recv(self.conn.as_fd(), &mut self.buf)?;
        match self.buf.first() {
            Some(&TAG_END) if self.buf.len() == 9 => {
                let total = u64_at(&self.buf, 1);
                if std::env::var_os(CRASH_ENV).is_some() {
                    // Tests: a new binary that dies holding every socket,
                    // before its acknowledgement.
                    eprintln!("c10m-server: {CRASH_ENV} set: aborting mid-hand-off");
                    std::process::abort();
                }
                if total != self.received || !fds.is_empty() {
                    return Err(bad(&format!(
                        "the old worker says {total} sessions, {} arrived",
                        self.received
                    )));
                }
                return Ok(None);
            }
            Some(&TAG_BATCH) if self.buf.len() >= 3 => {}
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the old worker closed the connection mid-stream",
                ))
            }
            _ => return Err(bad("expected a batch")),
        }
        let n = usize::from(u16::from_le_bytes([self.buf[1], self.buf[2]]));
        if self.buf.len() != 3 + n * RECORD || fds.len() != n {
            return Err(bad(&format!(
                "a batch of {n} records came with {} descriptors and {} bytes",
                fds.len(),
                self.buf.len()
            )));
        }
        let mut out = Vec::with_capacity(n);
        let mut lens = Vec::with_capacity(n);
        let mut payload = 0usize;
        for i in 0..n {
            let at = 3 + i * RECORD;
            let (input, output) = (
                u32_at(&self.buf, at + 8) as usize,
                u32_at(&self.buf, at + 12) as usize,
            );
            payload += input + output;
            lens.push((input, output));
            out.push(Carried {
                idle_left: self.ticks(u32_at(&self.buf, at)),
                frame_age: self.ticks(u32_at(&self.buf, at + 4)),
                input: Vec::new(),
                output: Vec::new(),
            });
        }
        let mut bytes = Vec::with_capacity(payload);
        while bytes.len() < payload {
            let extra = recv(self.conn.as_fd(), &mut self.buf)?;
            if self.buf.first() != Some(&TAG_BYTES) || !extra.is_empty() {
                return Err(bad("expected the batch's bytes"));
            }
            bytes.extend_from_slice(&self.buf[1..]);
        }
        if bytes.len() != payload {
            return Err(bad("more bytes than the batch's records name"));
        }
        let mut at = 0;
        for (c, (input, output)) in out.iter_mut().zip(lens) {
            c.input = bytes[at..at + input].to_vec();
            at += input;
            c.output = bytes[at..at + output].to_vec();
            at += output;
        }
        self.received += n as u64;
        Ok(Some(fds.into_iter().zip(out).collect()))
    }

    /// Tells the old worker every session it sent is held here.
    pub fn ack(&mut self) -> io::Result<()> {
        let mut ack = vec![TAG_ACK];
        ack.extend_from_slice(&self.received.to_le_bytes());
        send(self.conn.as_fd(), &ack, &[])
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

/// What a worker reports to its process's main thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Old side: sessions sent and acknowledged. New side: received.
    Done {
        sessions: u64,
        partial: u64,
        blocked: u64,
    },
    /// This worker could not: why (the old worker serves on).
    Failed(String),
}

/// Between a process's main thread and one worker during a hand-off.
#[derive(Debug, Default)]
pub struct Port {
    requested: AtomicBool,
    /// Old side: the name the new workers wait at.
    target: Mutex<Option<String>>,
    report: Mutex<Option<Report>>,
    /// `Some(true)`: commit (old: drop everything and stop; new: serve),
    /// `Some(false)`: resume (old) or stop (new).
    verdict: Mutex<Option<bool>>,
    /// New side: the worker has armed every session it took (it serves).
    armed: Mutex<bool>,
    cv: Condvar,
}

impl Port {
    /// Old side, main thread: asks the worker to hand off to `target`
    /// (the caller then wakes it).
    pub fn request(&self, target: String) {
        *lock(&self.target) = Some(target);
        *lock(&self.report) = None;
        *lock(&self.verdict) = None;
        self.requested.store(true, Ordering::Release);
    }

    /// Worker: a hand-off was asked for (cheap: one atomic load).
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Worker: takes the request.
    pub fn take_request(&self) -> Option<String> {
        self.requested.store(false, Ordering::Release);
        lock(&self.target).take()
    }

    /// Worker: reports how its part went.
    pub fn report(&self, report: Report) {
        *lock(&self.report) = Some(report);
        self.cv.notify_all();
    }

    /// Main thread: the worker's report, waiting up to `timeout`.
    pub fn wait_report(&self, timeout: Duration) -> Option<Report> {
        self.wait_for(&self.report, timeout, |r| r.clone())
    }

    /// New worker: every session taken is armed (read from) now.
    pub fn mark_armed(&self) {
        *lock(&self.armed) = true;
        self.cv.notify_all();
    }

    /// New side, main thread: waits up to `timeout` for [`Self::mark_armed`].
    pub fn wait_armed(&self, timeout: Duration) -> bool {
        self.wait_for(&self.armed, timeout, |&armed| armed.then_some(()))
            .is_some()
    }

    /// New worker: reports how taking its sessions went and waits for the
    /// commit. Ok when it is to serve them; an error (its own failure, or
    /// no commit) stops the worker, and with it the new process.
    pub fn settle(&self, worker: usize, received: io::Result<Report>) -> io::Result<()> {
        let report =
            received.unwrap_or_else(|e| Report::Failed(format!("new worker {worker}: {e}")));
        let failed = match &report {
            Report::Failed(why) => Some(why.clone()),
            Report::Done { .. } => None,
        };
        self.report(report);
        if let Some(why) = failed {
            return Err(io::Error::other(why));
        }
        if !self.wait_verdict(VERDICT_TIMEOUT) {
            return Err(io::Error::other("the hand-off was not committed"));
        }
        Ok(())
    }

    /// Main thread: the decision for the worker.
    pub fn decide(&self, commit: bool) {
        *lock(&self.verdict) = Some(commit);
        self.cv.notify_all();
    }

    /// Worker: waits for the decision (`false` after `timeout`: an old
    /// worker resumes, a new one stops).
    pub fn wait_verdict(&self, timeout: Duration) -> bool {
        self.wait_for(&self.verdict, timeout, |&v| v)
            .unwrap_or(false)
    }

    /// Waits up to `timeout` until `ready` finds what it waits for in
    /// `slot` (set by another thread, which then notifies `cv`).
    fn wait_for<T, R>(
        &self,
        slot: &Mutex<T>,
        timeout: Duration,
        ready: impl Fn(&T) -> Option<R>,
    ) -> Option<R> {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(slot);
        loop {
            if let Some(r) = ready(&guard) {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = self
                .cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a batch's partial frames and blocked sessions (for the report).
pub fn tally(carried: &[Carried], partial: &mut u64, blocked: &mut u64) {
    for c in carried {
        *partial += u64::from(!c.input.is_empty());
        *blocked += u64::from(!c.output.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::IntoRawFd;

    fn unique(tag: &str) -> String {
        format!(
            "c10m-test.{}.{tag}.{:?}",
            std::process::id(),
            std::thread::current().id()
        )
    }

    #[test]
    fn sessions_cross_with_their_descriptors_state_and_bytes() {
        let name = unique("stream");
        let listener = listen(&name).unwrap();
        // Real sockets, so that what arrives can be checked to be them.
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        // One at a time: the listener's backlog is smaller than 300.
        let (clients, served): (Vec<TcpStream>, Vec<TcpStream>) = (0..300)
            .map(|_| (TcpStream::connect(addr).unwrap(), tcp.accept().unwrap().0))
            .unzip();
        let ports: Vec<u16> = served
            .iter()
            .map(|s| s.peer_addr().unwrap().port())
            .collect();
        let big = vec![b'x'; 100_000]; // spans several payload messages
        let carried: Vec<Carried> = (0..300u32)
            .map(|i| Carried {
                idle_left: i,
                frame_age: i % 7,
                input: if i.is_multiple_of(3) {
                    b"PI".to_vec()
                } else {
                    Vec::new()
                },
                output: if i == 5 { big.clone() } else { Vec::new() },
            })
            .collect();
        let sender = std::thread::spawn(move || {
            let begin = Begin {
                worker: 3,
                sessions: 300,
                tick_ns: 20_000_000,
            };
            let mut s = Sender::connect(&name, begin).unwrap();
            let fds: Vec<RawFd> = served.iter().map(|s| s.as_raw_fd()).collect();
            for (f, c) in fds.chunks(BATCH).zip(carried.chunks(BATCH)) {
                s.batch(f, c).unwrap();
            }
            drop(served); // the receiver's copies keep the sockets open
            s.finish().unwrap()
        });
        // Receiver ticks are twice as long: ticks halve, rounding up.
        let mut r = Receiver::accept(
            listener.as_fd(),
            Duration::from_secs(10),
            Duration::from_millis(40),
        )
        .unwrap();
        assert_eq!(r.begin.worker, 3);
        let mut got = Vec::new();
        while let Some(batch) = r.next_batch().unwrap() {
            assert!(batch.len() <= BATCH);
            got.extend(batch);
        }
        r.ack().unwrap();
        assert_eq!(sender.join().unwrap(), 300);
        assert_eq!(got.len(), 300);
        for (i, (fd, c)) in got.into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(c.idle_left, i.div_ceil(2));
            assert_eq!(c.frame_age, (i % 7).div_ceil(2));
            assert_eq!(c.input.is_empty(), !i.is_multiple_of(3));
            assert_eq!(c.output.len(), if i == 5 { 100_000 } else { 0 });
            let stream = TcpStream::from(fd);
            assert_eq!(stream.peer_addr().unwrap().port(), ports[i as usize]);
        }
        // Still connected: the client's bytes reach the received socket.
        drop(clients);
    }

    #[test]
    fn a_short_stream_is_refused_not_taken() {
        let name = unique("short");
        let listener = listen(&name).unwrap();
        let sender = std::thread::spawn(move || {
            let begin = Begin {
                worker: 0,
                sessions: 2,
                tick_ns: 1,
            };
            let s = Sender::connect(&name, begin).unwrap();
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            let fd = tcp.into_raw_fd();
            // A lying End: says 1 session, sends none.
            send(s.conn.as_fd(), &[TAG_END, 1, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
            // SAFETY: `fd` is the listener's descriptor, released above.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        });
        let mut r = Receiver::accept(
            listener.as_fd(),
            Duration::from_secs(10),
            Duration::from_millis(1),
        )
        .unwrap();
        let e = r.next_batch().unwrap_err().to_string();
        assert!(e.contains("says 1 sessions, 0 arrived"), "{e}");
        sender.join().unwrap();
    }

    #[test]
    fn control_messages_round_trip_as_json() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let msg = Control::Offer {
            pid: 7,
            workers: 2,
            listen: tcp.local_addr().unwrap().to_string(),
        };
        send_control(a.as_fd(), &msg, &[tcp.as_raw_fd()]).unwrap();
        let (got, fds) = recv_control(b.as_fd()).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        let l = TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(l.local_addr().unwrap(), tcp.local_addr().unwrap());
        let commit = Control::Commit {
            lineage: Some(Lineage {
                upgrades: 1,
                cpu_user_s: 0.5,
                ..Lineage::default()
            }),
        };
        send_control(a.as_fd(), &commit, &[]).unwrap();
        assert_eq!(recv_control(b.as_fd()).unwrap().0, commit);
        // A commit without a lineage (a supervisor's child) parses too.
        let bare: Control = serde_json::from_str(r#"{"msg":"commit"}"#).unwrap();
        assert_eq!(bare, Control::Commit { lineage: None });
        drop(a);
        let e = recv_control(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_port_carries_request_report_and_verdict() {
        let port = std::sync::Arc::new(Port::default());
        assert!(!port.requested());
        port.request("x".into());
        assert!(port.requested());
        let worker = {
            let port = port.clone();
            std::thread::spawn(move || {
                assert_eq!(port.take_request().as_deref(), Some("x"));
                port.report(Report::Done {
                    sessions: 4,
                    partial: 1,
                    blocked: 0,
                });
                port.wait_verdict(Duration::from_secs(10))
            })
        };
        assert_eq!(
            port.wait_report(Duration::from_secs(10)),
            Some(Report::Done {
                sessions: 4,
                partial: 1,
                blocked: 0
            })
        );
        port.decide(true);
        assert!(worker.join().unwrap());
        // Nobody decides: a worker gives up after its timeout.
        port.request("y".into());
        assert!(!port.wait_verdict(Duration::from_millis(10)));
    }
}
