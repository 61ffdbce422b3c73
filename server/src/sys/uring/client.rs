//! `ClientRings`: outgoing connections on io_uring direct descriptors, for
//! the load generator's io_uring driver (all the `unsafe` of that driver
//! lives here, behind a safe interface; the loadgen crate forbids it).
//!
//! A driver owns one `ClientRings`: as many rings as its sessions need
//! tables, each with a sparse table of `slots_per_ring` direct descriptors
//! (the kernel bounds each ring's table by RLIMIT_NOFILE, and nothing
//! counts fixed files across rings), so one thread holds any number of
//! connections with none in its descriptor table. Slot `s` is slot
//! `s % slots_per_ring` of ring `s / slots_per_ring`; the caller numbers
//! its sessions that way and a reconnect reuses its slot.
//!
//! # Requests (all on the slot's fixed descriptor)
//! - **connect**: one linked chain, submitted together: SOCKET into the
//!   slot, URING_CMD setsockopt TCP_NODELAY, and with a source address
//!   setsockopt IP_BIND_ADDRESS_NO_PORT (the port is chosen at connect, per
//!   destination) and BIND, then CONNECT. The steps before CONNECT post
//!   only failures (CQE_SKIP_SUCCESS), reported as [`Kind::Setup`]; the
//!   CONNECT always completes ([`Kind::Op`], result 0 when established).
//!   Needs Linux 6.11 (BIND), probed by [`probe`].
//! - **recv**: a multishot recv over the ring's provided-buffer ring. The
//!   bytes are copied out as completions are taken and the buffer given
//!   back at once, so a ring's buffers cover one turn's replies, not its
//!   connections. ENOBUFS (the ring ran dry) ends it without consuming
//!   data: the caller re-arms it.
//! - **recv_now**: a one-shot RECVMSG with MSG_DONTWAIT into a record of
//!   its own (header, control room for the arrival time, payload), which
//!   completes in its submission: the bytes that have arrived, EAGAIN, or
//!   0 at the FIN. It leaves no waiter on the socket, so bytes arriving
//!   wake no one (the load generator's deferred reads: on loopback the
//!   server's send pays the wake-up of a waiting recv).
//! - **poll**: a one-shot POLL_ADD. One for POLLRDHUP is not run by
//!   arriving bytes (the wake-up names POLLIN, which it does not ask for)
//!   and fires at the peer's FIN or RST; one for POLLIN fires for bytes.
//! - **send**: the bytes are copied into a send arena (valid until the
//!   completion) and sent with MSG_WAITALL: the kernel finishes a short
//!   send itself, so a completion is the whole message or an error; a
//!   socket that cannot take it waits in the kernel, not the caller.
//! - **close**: ASYNC_CANCEL of the caller's armed request on the slot
//!   (its recv, or its connect), by `user_data`, then CLOSE of the slot.
//!   An in-flight request holds its socket, so the cancel must come first
//!   for the FIN to go out; the socket's last reference then drops in the
//!   driver thread, which sends the FIN itself, as an epoll driver's
//!   close() does. The kernel finds the request in a hash table of
//!   (CQ entries / 32, at most 256) buckets that holds every armed poll of
//!   the ring: hence [`CQ_ENTRIES`] of 8 192, ~80 recvs a bucket at 20 000
//!   a ring. With 32 buckets (a 1 024-entry CQ), and cancelling "all"
//!   (which walks the bucket twice), each close walked ~1 200 recvs and a
//!   million's drain stalled for seconds at a time (results/million run
//!   22). Tried and dropped: SHUTDOWN then CLOSE, which the kernel runs on
//!   io-wq threads (unlinked, the CLOSE won and the shutdown found the
//!   slot empty; hard-linked, the io-wq backlog delayed the FINs past the
//!   drain and starved the server: runs 23-25).
//!
//! # Waiting: lazily, on Linux 6.1+
//! A load generator need not wake for each reply the moment it arrives:
//! what it measures is when the reply arrived, and the kernel stamps
//! that. So the rings are SINGLE_ISSUER | DEFER_TASKRUN with the TASKRUN
//! flag ([`ClientRings::lazy`]): a reply, a connect or a FIN queues the
//! request's work on the ring and raises IORING_SQ_TASKRUN, and wakes no
//! one; the work runs (and its completions are posted) only inside this
//! thread's next `io_uring_enter`. [`ClientRings::wait`] submits every
//! ring's queued requests, returns at once if a ring has completions or
//! work, else sleeps in ppoll, with no descriptor, until the timeout the
//! caller chose (its next deadline; the caller bounds it while it awaits
//! answers). [`ClientRings::take`] enters each ring that has work.
//!
//! With the server on the same CPU (the million's `--steer cpu`), an
//! eager loadgen was woken by a burst's first reply, took it, slept, and
//! was woken again by the next: ~2.5 wake-ups per millisecond's burst of
//! heartbeats. Lazily it wakes once per burst, at its next heartbeat due,
//! and takes the last burst's replies then (results/million, runs 35+).
//!
//! **Arrival times.** Every socket has SO_TIMESTAMPNS and each recv is a
//! multishot RECVMSG whose buffer carries the control message, so every
//! [`Completion`] of received bytes says when the kernel received them
//! ([`Completion::rx_realtime_ns`], CLOCK_REALTIME). Round trips end
//! there, not when the thread got round to the bytes.
//!
//! A kernel without DEFER_TASKRUN (Linux 6.0) gets COOP_TASKRUN rings that
//! signal one eventfd when they post a completion: `wait` then reads the
//! eventfd empty, checks again, and sleeps in ppoll until the eventfd or
//! the timeout. The thread's timer slack is set to 1 ns so that the
//! timeout (the next heartbeat due) is kept to the microsecond.
//!
//! # Memory
//! Per ring, from start-up: SQ 256 × 64 B + CQ 8 192 × 16 B (kernel
//! mapped, ~148 KiB), `buffers` × (`buffer_size` + [`RECVMSG_HEAD`])
//! provided buffers; per
//! connection nothing in user space. Dropping `ClientRings` cancels everything and
//! waits for the completions (at most [`super::DRAIN_TIMEOUT`]); memory
//! the kernel may still use is leaked, never freed.

use super::bufring::BufRing;
use super::sendbuf::{SendArena, Staged};
use super::{probe, sleep_on_eventfd, transient, SetupMode, DRAIN_TIMEOUT, SHARD_SQ_ENTRIES};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The most times [`ClientRings::take`] enters one lazy ring: 20 queued
/// items run per enter, so up to 5 120 completions a ring per take.
pub const LAZY_ENTERS: usize = 256;

/// CQ entries of each client ring: sized for the kernel's cancel table,
/// not for completions (see the module docs).
pub const CQ_ENTRIES: u32 = 8192;

/// RLIMIT_MEMLOCK one client ring is charged without CAP_IPC_LOCK: its
/// SQE array, its CQ with the SQ index ring, and its provided-buffer
/// ring's entries, each in whole pages.
pub fn ring_memlock_bytes(buffers: u16) -> u64 {
    let pages = |bytes: u64| bytes.div_ceil(4096) * 4096;
    let (sq, cq) = (u64::from(SHARD_SQ_ENTRIES), u64::from(CQ_ENTRIES));
    pages(sq * 64) + pages(256 + cq * 16 + sq * 4) + pages(u64::from(buffers) * 16)
}

/// Caller tags must be below this (the top bits say what a request is).
pub const MAX_TAG: u64 = 1 << 61;
const KIND_SHIFT: u32 = 61;
const KIND_OP: u64 = 0;
const KIND_SEND: u64 = 1;
const KIND_IGNORE: u64 = 2;
const KIND_SETUP: u64 = 3;
const KIND_RECV_NOW: u64 = 4;
const IGNORE: u64 = KIND_IGNORE << KIND_SHIFT;
const BGID: u16 = 0;

/// Room for one SCM_TIMESTAMPNS control message: a 16-byte `cmsghdr` and
/// a 16-byte `timespec`.
const CONTROL_LEN: usize = 32;
/// What a multishot RECVMSG puts before the payload in each buffer: the
/// 16-byte `io_uring_recvmsg_out`, no name, the control message.
pub const RECVMSG_HEAD: u32 = 16 + CONTROL_LEN as u32;

/// The `msghdr` every RECVMSG names: no name, [`CONTROL_LEN`] of control.
/// The kernel reads only its lengths (the buffers are provided), when it
/// takes each request. Its pointers are null.
struct RecvHeader(libc::msghdr);

// SAFETY: the header holds only null pointers and lengths; nothing is
// ever written through it, by us or by the kernel.
unsafe impl Send for RecvHeader {}

impl RecvHeader {
    fn new() -> RecvHeader {
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_controllen = CONTROL_LEN;
        RecvHeader(h)
    }
}

/// Payload room of a one-shot recv ([`ClientRings::recv_now`]) per
/// provided-buffer byte: a recv that fills it is followed by another.
const RECV_NOW_FACTOR: usize = 4;

/// Bytes of spare one-shot recv records kept for reuse (at most 4 096
/// records); more are freed.
const RECV_NOW_SPARE_BYTES: usize = 1 << 20;

/// A one-shot RECVMSG in flight: its header, control room and payload,
/// boxed (the kernel writes all three, and the header's lengths, when it
/// completes), and the caller's tag.
struct RecvNow {
    hdr: libc::msghdr,
    iov: libc::iovec,
    control: Control,
    payload: Box<[u8]>,
    tag: u64,
}

/// Control room aligned as a `cmsghdr` must be.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

// SAFETY: the raw pointers point into the record itself (its boxed
// payload and own fields); it moves between threads only with the rings
// that own it.
unsafe impl Send for RecvNow {}

impl RecvNow {
    fn new(payload: usize) -> Box<RecvNow> {
        Box::new(RecvNow {
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            // SAFETY: iovec is plain data; all-zero is a valid value.
            iov: unsafe { std::mem::zeroed() },
            control: Control([0; CONTROL_LEN]),
            payload: vec![0u8; payload].into_boxed_slice(),
            tag: 0,
        })
    }

    /// Points the header at this record's own iovec, payload and control
    /// room, with their full lengths (the kernel shortens them).
    fn arm(&mut self, tag: u64) -> *mut libc::msghdr {
        self.tag = tag;
        self.iov.iov_base = self.payload.as_mut_ptr().cast();
        self.iov.iov_len = self.payload.len();
        self.hdr.msg_name = std::ptr::null_mut();
        self.hdr.msg_namelen = 0;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = self.control.0.as_mut_ptr().cast();
        self.hdr.msg_controllen = CONTROL_LEN;
        self.hdr.msg_flags = 0;
        &mut self.hdr
    }

    /// The control messages the kernel wrote.
    fn control_data(&self) -> &[u8] {
        &self.control.0[..self.hdr.msg_controllen.min(CONTROL_LEN)]
    }
}

/// The arrival time in an SCM_TIMESTAMPNS control message (CLOCK_REALTIME
/// ns), if `control` holds one.
fn arrival_ns(control: &[u8]) -> Option<u64> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(
            control.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    let mut at = 0;
    while at + 16 <= control.len() {
        let len = word(at)? as usize;
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < 16 {
            return None;
        }
        if level == libc::SOL_SOCKET && kind == libc::SO_TIMESTAMPNS && len >= 32 {
            let (sec, nsec) = (word(at + 16)?, word(at + 24)?);
            return Some(sec.saturating_mul(1_000_000_000).saturating_add(nsec));
        }
        at += len.div_ceil(8) * 8;
    }
    None
}

/// Value of the boolean socket options (read by the kernel when the
/// setsockopt runs, which may be after the submitting call returns).
static ONE: libc::c_int = 1;

/// What a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connect's CONNECT or a recv.
    Op,
    /// A failed step of a connect chain before its CONNECT (whose own
    /// completion follows, ECANCELED).
    Setup,
    /// A send: the whole message (its length) or an error.
    Send,
}

/// A completion, copied out of its ring.
#[derive(Debug, Clone)]
pub struct Completion {
    pub tag: u64,
    pub kind: Kind,
    /// The kernel's result: ≥ 0, or a negated errno.
    pub result: i32,
    /// A multishot recv stays armed.
    pub more: bool,
    /// Received bytes, in the buffer [`ClientRings::take`] filled.
    pub data: Range<usize>,
    /// When the kernel received those bytes (CLOCK_REALTIME ns; 0 for
    /// anything else, or if the kernel gave no time).
    pub rx_realtime_ns: u64,
}

impl Completion {
    /// The error, when the result is one.
    pub fn error(&self) -> Option<io::Error> {
        (self.result < 0).then(|| io::Error::from_raw_os_error(-self.result))
    }
}

struct Ring {
    // Field order matters: the ring is closed before the memory it may use.
    ring: IoUring,
    bufs: Option<BufRing>,
    /// Requests queued since the last enter.
    queued: bool,
    /// Addresses of BIND and CONNECT requests still in the SQ: the kernel
    /// copies them when it takes the request, so they are kept (boxed:
    /// they do not move) until the SQ has been emptied.
    /// (The box is the point: the SQEs hold pointers into each address,
    /// which must not move when the vector grows.)
    #[allow(clippy::vec_box)]
    addrs: Vec<Box<socket2::SockAddr>>,
}

/// A send in flight.
#[derive(Debug, Clone, Copy, Default)]
struct SendRecord {
    tag: u64,
    slot: u32,
    staged: Staged,
    /// Bytes the kernel has sent (a short send is continued from here).
    done: u32,
}

/// See the module docs.
pub struct ClientRings {
    // Field order matters: the rings are closed before the memory they may use.
    rings: Vec<Ring>,
    arena: SendArena,
    sends: Slab<SendRecord>,
    /// Completions being handled (resident: no allocation per turn).
    cqes: Vec<cqueue::Entry>,
    slots_per_ring: u32,
    /// The eventfd the rings signal (COOP_TASKRUN), or none: lazy rings.
    wake: Option<OwnedFd>,
    /// What every RECVMSG names (boxed: the SQEs point at it).
    recv_header: Box<RecvHeader>,
    /// One-shot recvs in flight ([`Self::recv_now`]), by key.
    recvs_now: Slab<Box<RecvNow>>,
    /// Finished records, kept for reuse (at most `spare_recvs_max`).
    /// (Boxed like those in flight: a record moves between the two.)
    #[allow(clippy::vec_box)]
    spare_recvs: Vec<Box<RecvNow>>,
    /// Payload room of a one-shot recv.
    recv_now_len: usize,
    /// Most spare records kept ([`RECV_NOW_SPARE_BYTES`] of them).
    spare_recvs_max: usize,
    /// Requests whose last completion has not come yet (connects, recvs,
    /// sends).
    in_flight: usize,
}

/// Keeps the kernel's receive timestamps switched on for the rest of the
/// process's life. The kernel stamps arriving packets only while some
/// socket asks for it, and switches that on (and off, after the last such
/// socket closes) in deferred work: the first packets after a switch may
/// go unstamped, and each switch patches kernel text. One socket that asks
/// and is never closed keeps it on; the switch happens once, at the first
/// rings.
fn keep_timestamps_on() -> io::Result<()> {
    static KEEPER: std::sync::OnceLock<Result<std::net::UdpSocket, String>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )
        .map_err(|e| format!("setting SO_TIMESTAMPNS: {e}"))?;
        Ok(socket)
    });
    keeper
        .as_ref()
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("keeping receive timestamps on: {e}")))
}

/// Kernel support for [`ClientRings`], checked by running it: one
/// connection over the whole chain (SOCKET into a slot, the socket
/// options, BIND, CONNECT), a multishot RECVMSG that gives the arrival
/// time, a send and a close, against a listener on 127.0.0.1. The first
/// replies may come unstamped while the kernel switches timestamps on
/// ([`keep_timestamps_on`]): the ping is repeated, every 5 ms, until one
/// comes stamped.
pub fn client_probe() -> Result<(), String> {
    probe().map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let SocketAddr::V4(target) = listener.local_addr().map_err(|e| e.to_string())? else {
        return Err("the probe listener is not IPv4".into());
    };
    let mut rings = ClientRings::new(1, 2, 8, 64).map_err(|e| e.to_string())?;
    let source = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
    rings
        .connect(1, 7, Some(source), target)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    let mut data = Vec::new();
    let mut step = 0;
    let mut accepted = None;
    while Instant::now() < deadline {
        rings
            .wait(Duration::from_millis(20))
            .map_err(|e| e.to_string())?;
        out.clear();
        data.clear();
        rings.take(&mut out, &mut data);
        for c in &out {
            if let Some(e) = c.error() {
                let what = match (c.kind, step) {
                    (Kind::Setup, _) => "SOCKET, URING_CMD setsockopt or BIND (Linux 6.11)",
                    (_, 0) => "CONNECT on a direct descriptor",
                    (Kind::Send, _) => "SEND on a direct descriptor",
                    _ => "multishot RECV on a direct descriptor",
                };
                return Err(format!("io_uring {what} failed: {e}"));
            }
            match (c.kind, step) {
                (Kind::Op, 0) => {
                    let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
                    rings.recv(1, 8).map_err(|e| e.to_string())?;
                    rings.send(1, 9, b"ping").map_err(|e| e.to_string())?;
                    accepted = Some(stream);
                    step = 1;
                }
                (Kind::Send, 1) => {
                    use std::io::{Read, Write};
                    let stream = accepted.as_mut().ok_or("no accepted stream")?;
                    let mut buf = [0u8; 4];
                    stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
                    if &buf != b"ping" {
                        return Err(format!("the probe's send arrived as {buf:?}"));
                    }
                    stream.write_all(b"pong").map_err(|e| e.to_string())?;
                    step = 2;
                }
                (Kind::Op, 2) if &data[c.data.clone()] == b"pong" && c.rx_realtime_ns == 0 => {
                    std::thread::sleep(Duration::from_millis(5));
                    rings.send(1, 9, b"ping").map_err(|e| e.to_string())?;
                    step = 1;
                }
                (Kind::Op, 2) if &data[c.data.clone()] == b"pong" => {
                    rings.close(1, &[]).map_err(|e| e.to_string())?;
                    return Ok(());
                }
                _ => {}
            }
        }
    }
    if step == 2 {
        return Err("io_uring RECVMSG gave no SO_TIMESTAMPNS arrival time in 2 s".into());
    }
    Err(format!(
        "the io_uring client probe stalled at step {step} of 3"
    ))
}

impl ClientRings {
    /// Rings for `connections` slots, `slots_per_ring` each (at most
    /// RLIMIT_NOFILE), each with `buffers` provided buffers (a power of
    /// two) of `buffer_size` bytes of payload (plus [`RECVMSG_HEAD`]).
    /// Lazy (DEFER_TASKRUN) where the kernel has it, else eager (see the
    /// module docs). Sets the calling thread's timer slack to 1 ns: make
    /// it on the thread that uses it.
    pub fn new(
        connections: u64,
        slots_per_ring: u32,
        buffers: u16,
        buffer_size: u32,
    ) -> io::Result<ClientRings> {
        match Self::with_mode(connections, slots_per_ring, buffers, buffer_size, true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Linux 6.0: no DEFER_TASKRUN.
                Self::with_mode(connections, slots_per_ring, buffers, buffer_size, false)
            }
            other => other,
        }
    }

    /// As [`Self::new`], lazy (DEFER_TASKRUN) or eager (COOP_TASKRUN and
    /// an eventfd) as asked.
    pub fn with_mode(
        connections: u64,
        slots_per_ring: u32,
        buffers: u16,
        buffer_size: u32,
        lazy: bool,
    ) -> io::Result<ClientRings> {
        keep_timestamps_on()?;
        let slots_per_ring = slots_per_ring.max(1);
        let count = connections.div_ceil(u64::from(slots_per_ring)).max(1);
        if count > super::MAX_SHARDS as u64 {
            return Err(io::Error::other(format!(
                "{connections} connections in tables of {slots_per_ring} would need {count} \
                 io_uring rings (at most {})",
                super::MAX_SHARDS
            )));
        }
        let wake = if lazy {
            None
        } else {
            // SAFETY: eventfd has no memory arguments; a non-negative result
            // is a new descriptor that we own from here on.
            let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is the fresh eventfd above, owned by nothing else.
            Some(unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let mode = if lazy {
            SetupMode::DeferTaskrun
        } else {
            SetupMode::CoopTaskrun
        };
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let context = |what: String| {
            move |e: io::Error| {
                let memlock = if e.raw_os_error() == Some(libc::ENOMEM) {
                    "; without CAP_IPC_LOCK every io_uring ring counts against \
                     RLIMIT_MEMLOCK: raise it (ulimit -l, LimitMEMLOCK=) or use --io epoll"
                } else {
                    ""
                };
                io::Error::new(e.kind(), format!("{what}: {e}{memlock}"))
            }
        };
        let mut rings = Vec::with_capacity(count as usize);
        for i in 0..count {
            let ring = match mode.build(SHARD_SQ_ENTRIES, CQ_ENTRIES, true) {
                // The caller falls back to eager rings on this one.
                Err(e) if lazy && i == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(e)
                }
                built => built.map_err(context(format!(
                    "creating io_uring ring {} of {count}",
                    i + 1
                )))?,
            };
            let bufs = BufRing::new(&ring.submitter(), BGID, buffers, buffer_size + RECVMSG_HEAD)
                .map_err(context("registering a provided-buffer ring".into()))?;
            ring.submitter()
                .register_files_sparse(slots_per_ring)
                .map_err(context(format!(
                    "registering a table of {slots_per_ring} direct descriptors (the kernel \
                     allows at most RLIMIT_NOFILE slots per ring)"
                )))?;
            if let Some(wake) = &wake {
                ring.submitter()
                    .register_eventfd(wake.as_raw_fd())
                    .map_err(context("registering the driver's eventfd".into()))?;
            }
            // Nothing of ours should need io-wq threads (every request
            // here completes inline or by poll); should one, a single
            // worker per driver keeps it off the server's CPUs. Best
            // effort: the limit only saves CPU.
            let _ = ring.submitter().register_iowq_max_workers(&mut [1, 1]);
            rings.push(Ring {
                ring,
                bufs: Some(bufs),
                queued: false,
                addrs: Vec::new(),
            });
        }
        let mut sends = Slab::with_capacity(SHARD_SQ_ENTRIES as usize);
        for _ in 0..SHARD_SQ_ENTRIES {
            sends.insert(SendRecord::default());
        }
        sends.clear();
        Ok(ClientRings {
            rings,
            arena: SendArena::with_resident_chunk(),
            sends,
            cqes: Vec::with_capacity(CQ_ENTRIES as usize),
            slots_per_ring,
            wake,
            recv_header: Box::new(RecvHeader::new()),
            recvs_now: Slab::new(),
            spare_recvs: Vec::new(),
            recv_now_len: buffer_size as usize * RECV_NOW_FACTOR,
            spare_recvs_max: (RECV_NOW_SPARE_BYTES
                / (buffer_size as usize * RECV_NOW_FACTOR + std::mem::size_of::<RecvNow>()))
            .clamp(1, 4096),
            in_flight: 0,
        })
    }

    /// Lazy rings: a completion wakes no one; the caller's timeout is all
    /// that ends a [`Self::wait`] (see the module docs).
    pub fn lazy(&self) -> bool {
        self.wake.is_none()
    }

    /// Rings this holds.
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// Slots this holds (rings × slots per ring).
    pub fn capacity(&self) -> u64 {
        self.rings.len() as u64 * u64::from(self.slots_per_ring)
    }

    fn locate(&self, slot: u32) -> io::Result<(usize, types::Fixed)> {
        let ring = (slot / self.slots_per_ring) as usize;
        if ring >= self.rings.len() {
            return Err(io::Error::other(format!(
                "slot {slot} is past the {} slots of these rings",
                self.capacity()
            )));
        }
        Ok((ring, types::Fixed(slot % self.slots_per_ring)))
    }

    /// Queues `entries` on ring `ring` as one unit: a linked chain is
    /// never split across two submissions.
    fn push(&mut self, ring: usize, entries: &[squeue::Entry]) -> io::Result<()> {
        let r = &mut self.rings[ring];
        r.queued = true;
        loop {
            let mut sq = r.ring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                // SAFETY: every entry points only at memory that outlives
                // its use by the kernel: the static option value, the
                // boxed RECVMSG header (kept as long as the rings), the send
                // arena (released on the send's completion), the ring's own
                // buffer ring, or addresses that `Ring::addrs` keeps until
                // the SQ is empty (the kernel copies them when it takes
                // the request).
                unsafe { sq.push_multiple(entries) }
                    .map_err(|_| io::Error::other("submission queue has no room after a check"))?;
                return Ok(());
            }
            drop(sq);
            match r.ring.submit() {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts connecting slot `slot` to `target` (from `source`'s address,
    /// any port, when given); completions carry `tag`.
    pub fn connect(
        &mut self,
        slot: u32,
        tag: u64,
        source: Option<SocketAddrV4>,
        target: SocketAddrV4,
    ) -> io::Result<()> {
        let (ring, fixed) = self.locate(slot)?;
        let tag = checked(tag)?;
        let setup = KIND_SETUP << KIND_SHIFT | tag;
        let quiet = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let dest = types::DestinationSlot::try_from_slot_target(fixed.0)
            .map_err(|_| io::Error::other(format!("slot {} is not a valid target", fixed.0)))?;
        let one: *const libc::c_void = (&ONE as *const libc::c_int).cast();
        let optlen = std::mem::size_of::<libc::c_int>() as u32;
        let target = Box::new(socket2::SockAddr::from(SocketAddr::V4(target)));
        let source = source.map(|s| Box::new(socket2::SockAddr::from(SocketAddr::V4(s))));
        let mut chain = Vec::with_capacity(6);
        chain.push(
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP)
                .file_index(Some(dest))
                .build()
                .flags(quiet)
                .user_data(setup),
        );
        chain.push(
            opcode::SetSockOpt::new(
                fixed,
                libc::IPPROTO_TCP as u32,
                libc::TCP_NODELAY as u32,
                one,
                optlen,
            )
            .build()
            .flags(quiet)
            .user_data(setup),
        );
        // The kernel's receive time on every reply (see the module docs).
        chain.push(
            opcode::SetSockOpt::new(
                fixed,
                libc::SOL_SOCKET as u32,
                libc::SO_TIMESTAMPNS as u32,
                one,
                optlen,
            )
            .build()
            .flags(quiet)
            .user_data(setup),
        );
        if let Some(src) = &source {
            chain.push(
                opcode::SetSockOpt::new(
                    fixed,
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    one,
                    optlen,
                )
                .build()
                .flags(quiet)
                .user_data(setup),
            );
            chain.push(
                opcode::Bind::new(fixed, src.as_ptr().cast(), src.len())
                    .build()
                    .flags(quiet)
                    .user_data(setup),
            );
        }
        chain.push(
            opcode::Connect::new(fixed, target.as_ptr().cast(), target.len())
                .build()
                .user_data(KIND_OP << KIND_SHIFT | tag),
        );
        self.push(ring, &chain)?;
        let r = &mut self.rings[ring];
        r.addrs.push(target);
        r.addrs.extend(source);
        self.in_flight += 1;
        Ok(())
    }

    /// Arms a multishot recv on `slot` (a RECVMSG, for the arrival time);
    /// completions carry `tag`.
    pub fn recv(&mut self, slot: u32, tag: u64) -> io::Result<()> {
        let (ring, fixed) = self.locate(slot)?;
        let tag = checked(tag)?;
        let recv = opcode::RecvMsgMulti::new(fixed, &self.recv_header.0, BGID)
            .build()
            .user_data(KIND_OP << KIND_SHIFT | tag);
        self.push(ring, &[recv])?;
        self.in_flight += 1;
        Ok(())
    }

    /// Receives once on `slot` what has arrived, without waiting: a
    /// RECVMSG with MSG_DONTWAIT into a record of its own, which completes
    /// when submitted (EAGAIN if nothing has arrived; 0 at the peer's FIN).
    /// No waiter is left on the socket, so the bytes' arrival woke no one
    /// (see the module docs); the completion carries `tag`, the bytes and
    /// their arrival time. Queued requests are submitted by the next
    /// [`Self::wait`] or [`Self::take`].
    pub fn recv_now(&mut self, slot: u32, tag: u64) -> io::Result<()> {
        let (ring, fixed) = self.locate(slot)?;
        let tag = checked(tag)?;
        let len = self.recv_now_len;
        let record = self.spare_recvs.pop().unwrap_or_else(|| RecvNow::new(len));
        let key = self.recvs_now.insert(record);
        let hdr = self.recvs_now[key].arm(tag);
        let recv = opcode::RecvMsg::new(fixed, hdr)
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .user_data(KIND_RECV_NOW << KIND_SHIFT | key as u64);
        if let Err(e) = self.push(ring, &[recv]) {
            let record = self.recvs_now.remove(key);
            self.spare_recvs.push(record);
            return Err(e);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Payload room of a [`Self::recv_now`]: a completion that fills it
    /// may have left bytes behind.
    pub fn recv_now_len(&self) -> usize {
        self.recv_now_len
    }

    /// Arms a one-shot poll of `slot` for `events` (`POLLRDHUP`, `POLLIN`;
    /// the kernel adds POLLERR and POLLHUP); its completion ([`Kind::Op`])
    /// carries `tag` and the events that fired. A poll whose events do not
    /// include the ones a wake-up names is not run by it: a `POLLRDHUP`
    /// poll sleeps through arriving bytes and fires at the peer's FIN or
    /// RST.
    pub fn poll(&mut self, slot: u32, tag: u64, events: u32) -> io::Result<()> {
        let (ring, fixed) = self.locate(slot)?;
        let tag = checked(tag)?;
        let poll = opcode::PollAdd::new(fixed, events)
            .build()
            .user_data(KIND_OP << KIND_SHIFT | tag);
        self.push(ring, &[poll])?;
        self.in_flight += 1;
        Ok(())
    }

    /// Sends `bytes` on `slot`; the completion carries `tag`.
    pub fn send(&mut self, slot: u32, tag: u64, bytes: &[u8]) -> io::Result<()> {
        let tag = checked(tag)?;
        let staged = self.arena.stage(bytes);
        let key = self.sends.insert(SendRecord {
            tag,
            slot,
            staged,
            done: 0,
        });
        if let Err(e) = self.send_staged(key) {
            self.sends.remove(key);
            self.arena.release(staged);
            return Err(e);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Queues the send of record `key`'s bytes not sent yet.
    fn send_staged(&mut self, key: usize) -> io::Result<()> {
        let rec = self.sends[key];
        let (ring, fixed) = self.locate(rec.slot)?;
        let skip = rec.done as usize;
        let len = (rec.staged.len() - skip) as u32;
        let send = opcode::Send::new(fixed, self.arena.ptr(rec.staged, skip), len)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .user_data(KIND_SEND << KIND_SHIFT | key as u64);
        self.push(ring, &[send])
    }

    /// Cancels the requests tagged `cancel` (the slot's recv, or its
    /// connect), then closes `slot` (FIN, once nothing holds the socket).
    pub fn close(&mut self, slot: u32, cancel: &[u64]) -> io::Result<()> {
        let (ring, fixed) = self.locate(slot)?;
        let quiet = |e: squeue::Entry| e.flags(squeue::Flags::SKIP_SUCCESS).user_data(IGNORE);
        let mut entries = Vec::with_capacity(cancel.len() + 2);
        for &tag in cancel {
            let ud = KIND_OP << KIND_SHIFT | checked(tag)?;
            // One request per tag: the first match ends the walk.
            entries.push(quiet(opcode::AsyncCancel::new(ud).build()));
        }
        entries.push(quiet(opcode::Close::new(fixed).build()));
        self.push(ring, &entries)
    }

    fn submit(&mut self, ring: usize) -> io::Result<()> {
        // Waiting for one completion with a zero timeout: the enter runs
        // the ring's pending work too (GETEVENTS).
        let zero = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&zero);
        let r = &mut self.rings[ring];
        r.queued = false;
        let result = match r.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        };
        if r.ring.submission().is_empty() {
            r.addrs.clear();
        } else {
            r.queued = true; // not all taken: try again at the next wait
        }
        result
    }

    /// Submits every queued request, then sleeps until a completion or
    /// `timeout` (see the module docs).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        for ring in 0..self.rings.len() {
            if self.rings[ring].queued {
                self.submit(ring)?;
            }
        }
        if timeout.is_zero() {
            return Ok(());
        }
        let rings = &mut self.rings;
        match &self.wake {
            Some(wake) => sleep_on_eventfd(wake, timeout, || any_ready(rings)),
            None if any_ready(rings) => Ok(()),
            None => {
                // Lazy: nothing wakes this but the timeout.
                let ts = nix::sys::time::TimeSpec::from_duration(timeout);
                match nix::poll::ppoll(&mut [], Some(ts), None) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Moves every ring's completions into `out`, received bytes into
    /// `data` (each buffer is given back to its ring at once); completions
    /// of the rings' own requests (cancels, closes) and of partial sends
    /// (re-queued here) are not reported.
    ///
    /// A lazy ring's enter runs at most 20 of its queued items (the
    /// kernel's IO_LOCAL_TW_DEFAULT_MAX; the rest wait, with the ring's
    /// TASKRUN flag still up): it is entered again while the flag stays up,
    /// up to [`LAZY_ENTERS`] times. (Entered once, a ring that a ramp's
    /// connects all go to yielded 20 completions a turn, and a million's
    /// connects waited 269 ms at the median.)
    pub fn take(&mut self, out: &mut Vec<Completion>, data: &mut Vec<u8>) {
        let enters = if self.lazy() { LAZY_ENTERS } else { 1 };
        for ring in 0..self.rings.len() {
            for _ in 0..enters {
                // Requests queued since the wait go in now (a recv_now
                // completes in its submission).
                if !self.rings[ring].queued && !super::needs_enter(&mut self.rings[ring].ring) {
                    break;
                }
                let _ = self.submit(ring);
                self.take_ring(ring, out, data);
            }
            self.take_ring(ring, out, data);
        }
    }

    fn take_ring(&mut self, ring: usize, out: &mut Vec<Completion>, data: &mut Vec<u8>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.rings[ring].ring.completion());
        for e in &cqes {
            self.complete(ring, e, out, data);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn complete(
        &mut self,
        ring: usize,
        e: &cqueue::Entry,
        out: &mut Vec<Completion>,
        data: &mut Vec<u8>,
    ) {
        let ud = e.user_data();
        let tag = ud & (MAX_TAG - 1);
        let more = cqueue::more(e.flags());
        let start = data.len();
        let mut rx_realtime_ns = 0;
        let mut result = e.result();
        if let Some(bid) = cqueue::buffer_select(e.flags()) {
            let bufs = self.rings[ring]
                .bufs
                .as_mut()
                .expect("buffer ring present while running");
            let len = e.result().max(0) as usize;
            if let Ok(bytes) = bufs.take(bid, len) {
                // A RECVMSG's buffer: header, control message, payload.
                match types::RecvMsgOut::parse(bytes, &self.recv_header.0) {
                    Ok(msg) => {
                        rx_realtime_ns = arrival_ns(msg.control_data()).unwrap_or(0);
                        data.extend_from_slice(msg.payload_data());
                        result = msg.payload_data().len() as i32;
                    }
                    Err(()) => result = -libc::EPROTO,
                }
            }
            let _ = bufs.give_back(bid);
        }
        let kind = match ud >> KIND_SHIFT {
            KIND_OP => {
                if !more {
                    self.in_flight -= 1;
                }
                Kind::Op
            }
            KIND_SETUP => Kind::Setup,
            KIND_RECV_NOW => {
                let key = tag as usize;
                if !self.recvs_now.contains(key) {
                    return;
                }
                let record = self.recvs_now.remove(key);
                self.in_flight -= 1;
                let got = e.result();
                let mut rx_realtime_ns = 0;
                if got > 0 {
                    let n = (got as usize).min(record.payload.len());
                    data.extend_from_slice(&record.payload[..n]);
                    rx_realtime_ns = arrival_ns(record.control_data()).unwrap_or(0);
                }
                out.push(Completion {
                    tag: record.tag,
                    kind: Kind::Op,
                    result: got,
                    more: false,
                    data: start..data.len(),
                    rx_realtime_ns,
                });
                if self.spare_recvs.len() < self.spare_recvs_max {
                    self.spare_recvs.push(record);
                }
                return;
            }
            KIND_SEND => {
                let key = tag as usize;
                let Some(rec) = self.sends.get_mut(key) else {
                    return;
                };
                let sent = e.result();
                if sent > 0 {
                    rec.done += sent as u32;
                    // MSG_WAITALL leaves a short send only when interrupted:
                    // send the rest (same record, same bytes).
                    if (rec.done as usize) < rec.staged.len() && self.send_staged(key).is_ok() {
                        return;
                    }
                }
                let rec = self.sends.remove(key);
                self.arena.release(rec.staged);
                self.in_flight -= 1;
                out.push(Completion {
                    tag: rec.tag,
                    kind: Kind::Send,
                    result: if sent < 0 { sent } else { rec.done as i32 },
                    more: false,
                    data: start..start,
                    rx_realtime_ns: 0,
                });
                return;
            }
            _ => return, // a cancel or close: nothing to report
        };
        out.push(Completion {
            tag,
            kind,
            result,
            more,
            data: start..data.len(),
            rx_realtime_ns,
        });
    }

    /// Waits for every request to complete, at most [`DRAIN_TIMEOUT`]:
    /// first for what the caller's closes end by themselves (the recvs of
    /// shut-down sockets), then cancelling whatever is left. (Cancelling
    /// everything at once is quadratic in the kernel: each cancel walks
    /// the ring's poll table from the start, seconds for 20 000 recvs.)
    /// True if nothing is left in flight.
    fn drain(&mut self) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut cancelled = false;
        let mut out = Vec::new();
        let mut data = Vec::new();
        while self.in_flight > 0 && Instant::now() < deadline {
            if !cancelled && Instant::now() + DRAIN_TIMEOUT / 2 >= deadline {
                cancelled = true;
                for ring in 0..self.rings.len() {
                    let any = types::CancelBuilder::any();
                    let cancel = opcode::AsyncCancel2::new(any)
                        .build()
                        .flags(squeue::Flags::SKIP_SUCCESS)
                        .user_data(IGNORE);
                    if self.push(ring, &[cancel]).is_err() {
                        return false;
                    }
                }
            }
            if self.wait(Duration::from_millis(20)).is_err() {
                return false;
            }
            out.clear();
            data.clear();
            self.take(&mut out, &mut data);
        }
        self.in_flight == 0
    }
}

impl Drop for ClientRings {
    fn drop(&mut self) {
        if !self.drain() {
            eprintln!(
                "c10m: {} io_uring requests still in flight after {DRAIN_TIMEOUT:?}; their \
                 buffers are leaked, not freed",
                self.in_flight
            );
            // The kernel may still write into these after the rings close.
            for r in &mut self.rings {
                std::mem::forget(r.bufs.take());
            }
            self.arena.leak();
            std::mem::forget(std::mem::take(&mut self.recvs_now));
        }
        // Closing the rings closes every slot's socket (FIN).
    }
}

/// A ring has completions to take or kernel work to run.
fn any_ready(rings: &mut [Ring]) -> bool {
    rings
        .iter_mut()
        .any(|r| !r.ring.completion().is_empty() || super::needs_enter(&mut r.ring))
}

fn checked(tag: u64) -> io::Result<u64> {
    if tag < MAX_TAG {
        Ok(tag)
    } else {
        Err(io::Error::other(format!(
            "io_uring tag {tag:#x} is too large"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this host's io_uring runs the client's operations; says
    /// what is skipped if not.
    fn client_usable() -> bool {
        client_probe()
            .map_err(|e| eprintln!("SKIPPED: {e}"))
            .is_ok()
    }

    #[test]
    fn a_client_ring_is_charged_its_pages_against_memlock() {
        // SQ 256 × 64 B; CQ 8 192 × 16 B + SQ index + header; 2 048
        // buffer-ring entries of 16 B.
        assert_eq!(ring_memlock_bytes(2048), (16 + 132 + 32) * 1024);
    }

    #[test]
    fn tags_must_leave_the_kind_bits_free() {
        assert_eq!(checked(MAX_TAG - 1).unwrap(), MAX_TAG - 1);
        assert!(checked(MAX_TAG).is_err());
    }

    #[test]
    fn slots_are_numbered_across_rings_and_none_past_them() {
        if !client_usable() {
            return;
        }
        let rings = ClientRings::new(5, 2, 8, 64).unwrap();
        assert_eq!(rings.ring_count(), 3);
        assert_eq!(rings.capacity(), 6);
        let at = |slot| rings.locate(slot).map(|(ring, f)| (ring, f.0)).unwrap();
        assert_eq!(at(0), (0, 0));
        assert_eq!(at(3), (1, 1));
        assert_eq!(at(5), (2, 1));
        let err = rings.locate(6).unwrap_err().to_string();
        assert!(err.contains("past the 6 slots"), "{err}");
    }

    fn realtime_ns() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        t.as_nanos() as u64
    }

    /// `n` connections from slots 0.. of `rings` to a fresh listener, each
    /// with its recv armed (tags: the slot); the accepted peers, in slot
    /// order.
    fn connected(rings: &mut ClientRings, n: u32) -> Vec<std::net::TcpStream> {
        let peers = connected_bare(rings, n);
        for slot in 0..n {
            rings.recv(slot, u64::from(slot)).unwrap();
        }
        peers
    }

    /// As [`connected`], with nothing armed on the connections.
    fn connected_bare(rings: &mut ClientRings, n: u32) -> Vec<std::net::TcpStream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(target) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let mut peers = Vec::new();
        for slot in 0..n {
            rings.connect(slot, u64::from(slot), None, target).unwrap();
            let mut out = Vec::new();
            let mut data = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while out.is_empty() {
                assert!(Instant::now() < deadline, "connect {slot} never completed");
                rings.wait(Duration::from_millis(1)).unwrap();
                rings.take(&mut out, &mut data);
            }
            assert_eq!((out[0].kind, out[0].result), (Kind::Op, 0), "{:?}", out[0]);
            peers.push(listener.accept().unwrap().0);
        }
        peers
    }

    /// Waits up to `ms` and takes what completed.
    fn turn(rings: &mut ClientRings, ms: u64) -> (Vec<Completion>, Vec<u8>) {
        let (mut out, mut data) = (Vec::new(), Vec::new());
        rings.wait(Duration::from_millis(ms)).unwrap();
        rings.take(&mut out, &mut data);
        (out, data)
    }

    #[test]
    fn a_recv_now_takes_what_arrived_with_its_time_or_says_eagain() {
        use std::io::Write;
        if !client_usable() {
            return;
        }
        for lazy in [true, false] {
            let mut rings = ClientRings::with_mode(1, 2, 8, 8, lazy).unwrap();
            let mut peer = connected_bare(&mut rings, 1).remove(0);
            // Nothing has arrived: EAGAIN, in the same take, no waiting.
            rings.recv_now(0, 11).unwrap();
            let (mut out, mut data) = (Vec::new(), Vec::new());
            rings.take(&mut out, &mut data);
            assert_eq!(out.len(), 1, "lazy {lazy}: {out:?}");
            assert_eq!((out[0].tag, out[0].result), (11, -libc::EAGAIN), "{out:?}");
            // 40 bytes arrive: a record holds 8 × 4 = 32 of them, with the
            // kernel's arrival time; the next recv takes the rest.
            let written_ns = realtime_ns();
            peer.write_all(&[b'x'; 40]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            rings.recv_now(0, 12).unwrap();
            let (out, data) = turn(&mut rings, 0);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!((out[0].tag, out[0].result, out[0].kind), (12, 32, Kind::Op));
            assert_eq!(&data[out[0].data.clone()], &[b'x'; 32]);
            let rx = out[0].rx_realtime_ns;
            assert!(rx + 1_000_000 >= written_ns, "rx {rx} written {written_ns}");
            assert!(
                rx + 25_000_000 <= realtime_ns(),
                "rx {rx} is not the arrival"
            );
            rings.recv_now(0, 13).unwrap();
            let (out, data) = turn(&mut rings, 0);
            assert_eq!((out[0].tag, out[0].result), (13, 8));
            assert_eq!(&data[out[0].data.clone()], &[b'x'; 8]);
            // The peer's FIN: 0.
            drop(peer);
            std::thread::sleep(Duration::from_millis(10));
            rings.recv_now(0, 14).unwrap();
            let (out, _) = turn(&mut rings, 0);
            assert_eq!((out[0].tag, out[0].result), (14, 0), "{out:?}");
            assert_eq!(rings.in_flight, 0);
            assert!(rings.recvs_now.is_empty());
        }
    }

    #[test]
    fn a_rdhup_poll_sleeps_through_bytes_and_fires_at_the_fin() {
        use std::io::Write;
        if !client_usable() {
            return;
        }
        let rdhup = libc::POLLRDHUP as u32;
        let mut rings = ClientRings::with_mode(2, 2, 8, 64, true).unwrap();
        let mut peers = connected_bare(&mut rings, 2);
        rings.poll(0, 20, rdhup).unwrap();
        rings.poll(1, 21, rdhup).unwrap();
        let (out, _) = turn(&mut rings, 0);
        assert!(out.is_empty(), "{out:?}");
        peers[0].write_all(b"pong").unwrap();
        peers[1].write_all(b"pong").unwrap();
        let (out, _) = turn(&mut rings, 30);
        assert!(out.is_empty(), "bytes woke a RDHUP poll: {out:?}");
        // A FIN after bytes: the poll fires; the bytes are still there.
        peers[0].shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let (out, _) = turn(&mut rings, 0);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].tag, 20);
        assert_ne!(out[0].result as u32 & rdhup, 0, "{out:?}");
        rings.recv_now(0, 22).unwrap();
        let (out, data) = turn(&mut rings, 0);
        assert_eq!(&data[out[0].data.clone()], b"pong");
        // An RST (SO_LINGER 0 and close): the other poll fires too.
        socket2::SockRef::from(&peers[1])
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peers);
        std::thread::sleep(Duration::from_millis(10));
        let (out, _) = turn(&mut rings, 0);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].tag, 21);
        assert!(out[0].result > 0, "{out:?}");
        // The bytes that came before the RST, then the reset.
        rings.recv_now(1, 23).unwrap();
        let (out, data) = turn(&mut rings, 0);
        assert_eq!(&data[out[0].data.clone()], b"pong");
        rings.recv_now(1, 24).unwrap();
        let (out, _) = turn(&mut rings, 0);
        assert_eq!(out[0].result, -libc::ECONNRESET, "{out:?}");
    }

    #[test]
    fn a_pollin_poll_fires_for_bytes() {
        use std::io::Write;
        if !client_usable() {
            return;
        }
        let mut rings = ClientRings::with_mode(1, 2, 8, 64, true).unwrap();
        let mut peer = connected_bare(&mut rings, 1).remove(0);
        rings.poll(0, 30, libc::POLLIN as u32).unwrap();
        let (out, _) = turn(&mut rings, 0);
        assert!(out.is_empty(), "{out:?}");
        peer.write_all(b"pong").unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let (out, _) = turn(&mut rings, 0);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].tag, 30);
        assert_ne!(out[0].result as u32 & libc::POLLIN as u32, 0);
    }

    #[test]
    fn a_lazy_wait_sleeps_through_a_reply_whose_arrival_time_is_kept() {
        if !client_usable() {
            return;
        }
        let mut rings = ClientRings::with_mode(1, 2, 8, 64, true).unwrap();
        assert!(rings.lazy());
        let mut peer = connected(&mut rings, 1).remove(0);
        rings.wait(Duration::ZERO).unwrap(); // the recv is submitted
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            // After the wait below has gone to sleep: a reply already
            // queued when it starts ends it at once (any_ready), which is
            // right, but not what this test is about.
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(b"pong").unwrap();
            (realtime_ns(), peer)
        });
        let start = Instant::now();
        rings.wait(Duration::from_millis(200)).unwrap();
        let waited = start.elapsed();
        let (written_ns, _peer) = writer.join().unwrap();
        let taken_ns = realtime_ns();
        let mut out = Vec::new();
        let mut data = Vec::new();
        rings.take(&mut out, &mut data);
        // The reply woke no one: the wait ran its whole timeout.
        assert!(waited >= Duration::from_millis(195), "{waited:?}");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(&data[out[0].data.clone()], b"pong");
        // Its arrival time is when it was written, not when it was taken.
        let rx = out[0].rx_realtime_ns;
        assert!(rx + 1_000_000 >= written_ns, "rx {rx} written {written_ns}");
        assert!(rx + 50_000_000 <= taken_ns, "rx {rx} taken {taken_ns}");
    }

    #[test]
    fn replies_queued_on_a_lazy_ring_are_all_taken_without_new_events() {
        if !client_usable() {
            return;
        }
        // 100 replies pending on one ring at once: more than the kernel
        // runs in one enter (20).
        let mut rings = ClientRings::with_mode(100, 128, 256, 64, true).unwrap();
        let mut peers = connected(&mut rings, 100);
        rings.wait(Duration::ZERO).unwrap();
        for p in &mut peers {
            use std::io::Write;
            p.write_all(b"pong").unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        // One take gets them all, and leaves nothing to do.
        let mut out = Vec::new();
        let mut data = Vec::new();
        rings.take(&mut out, &mut data);
        let mut got = std::collections::BTreeSet::new();
        for c in &out {
            assert_eq!(&data[c.data.clone()], b"pong", "{c:?}");
            assert_ne!(c.rx_realtime_ns, 0);
            got.insert(c.tag);
        }
        assert_eq!(got.len(), 100, "taken: {got:?}");
        assert!(!any_ready(&mut rings.rings));
    }

    #[test]
    fn eager_rings_wake_the_wait_for_a_reply() {
        if !client_usable() {
            return;
        }
        let mut rings = ClientRings::with_mode(1, 2, 8, 64, false).unwrap();
        assert!(!rings.lazy());
        let mut peer = connected(&mut rings, 1).remove(0);
        rings.wait(Duration::ZERO).unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            std::thread::sleep(Duration::from_millis(20));
            peer.write_all(b"pong").unwrap();
            peer
        });
        let start = Instant::now();
        rings.wait(Duration::from_secs(5)).unwrap();
        let waited = start.elapsed();
        let _peer = writer.join().unwrap();
        let mut out = Vec::new();
        let mut data = Vec::new();
        rings.take(&mut out, &mut data);
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(&data[out[0].data.clone()], b"pong");
        assert_ne!(out[0].rx_realtime_ns, 0);
    }

    #[test]
    fn arrival_times_are_read_from_the_control_message() {
        let mut control = Vec::new();
        control.extend_from_slice(&32u64.to_ne_bytes());
        control.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        control.extend_from_slice(&libc::SO_TIMESTAMPNS.to_ne_bytes());
        control.extend_from_slice(&7u64.to_ne_bytes());
        control.extend_from_slice(&5u64.to_ne_bytes());
        assert_eq!(arrival_ns(&control), Some(7_000_000_005));
        assert_eq!(arrival_ns(&control[..16]), None);
        assert_eq!(arrival_ns(&[]), None);
        let mut other = control.clone();
        other[12..16].copy_from_slice(&libc::SO_TIMESTAMP.to_ne_bytes());
        assert_eq!(arrival_ns(&other), None);
    }
}
