//! The io_uring backend: one ring per worker, a multishot accept on the
//! worker's SO_REUSEPORT listener, a multishot recv per session fed from
//! ONE provided-buffer ring per worker, replies sent by SQEs submitted
//! together once per loop turn, and the wheel tick and the accept pause as
//! the timeout of the one `io_uring_enter` each turn makes.
//!
//! # Ring
//! SINGLE_ISSUER | DEFER_TASKRUN where the kernel has it (6.1), else
//! SINGLE_ISSUER | COOP_TASKRUN, else plain ([`SetupMode`], chosen by
//! [`probe`]). The ring is created on the worker thread, the only one that
//! ever submits. Each turn is one `io_uring_enter(to_submit, min_complete,
//! EXT_ARG timeout)`: it submits every SQE the previous turn queued (an SQ
//! that fills mid-turn is submitted early) and waits for the next
//! completion, the next wheel tick, or the end of an accept pause. The
//! replies it submits complete inside that same enter (MSG_DONTWAIT), so
//! `min_complete` is their number plus one: one enter per wake-up, where
//! waiting for 1 returned at once with the sends' own completions and took
//! a second enter to sleep. A turn takes at most [`TURN_MAX`] completions
//! (1024) and leaves the rest for the next, which then does not sleep.
//!
//! # Memory (per worker, fixed, all resident from start-up)
//! - provided buffers: [`BUF_COUNT`] × [`BUF_SIZE`] = 4096 × 1 KiB = 4 MiB,
//!   plus 64 KiB of ring entries. A recv completion holds a buffer only
//!   until the same turn has served it, so the ring needs to cover one
//!   turn's completions, not the sessions: 15 000 or 10 million sessions
//!   use the same 4 MiB.
//! - SQ 2048 × 64 B + CQ 8192 × 16 B = 256 KiB (mapped from the kernel).
//! - send arena: one 64 KiB chunk in steady state ([`sendbuf`]).
//! - the turn's tables, resident from start-up: 2048 queued SQEs, 2048
//!   sends in flight, 3 × 1024 copied completions (~240 KiB). The
//!   [`TURN_MAX`] cap keeps a burst within them: a turn of 1024
//!   completions queues at most ~2 SQEs each. Uncapped, a turn of over
//!   2 048 heartbeats grew both past 2 048 entries (4 096 seen) after the
//!   RSS baseline: +8 B per session at 15 000.
//!
//! Per session: the 28-byte [`Session`](crate::table::Session) record and
//! nothing else in user space (its `io` byte, in what was padding, holds
//! the bits below). In the kernel an armed multishot recv costs an
//! `io_kiocb` (256 B) and a poll entry (kmalloc-96) per session, ~350 B
//! measured, where epoll holds one 128-byte `epitem`; both are small
//! beside the socket itself (~4 KB per side).
//!
//! # Per-session contract (io bits)
//! - `RECV_ARMED`: a multishot recv is in flight. A completion without
//!   IORING_CQE_F_MORE ends it; it is re-armed unless the session is
//!   closed or write-blocked. ENOBUFS (the buffer ring ran dry) ends it
//!   without consuming data: it is re-armed at the end of the turn, once
//!   the turn's buffers are back. Both are counted per worker
//!   (`recv_enobufs`, `recv_rearms` in the stats line, JSON and metrics);
//!   the hidden `--uring-buffers N --uring-buffer-size B` flags shrink the
//!   ring so a test can run it dry.
//! - `SEND_IN_FLIGHT`: a send is in flight. Sends carry MSG_DONTWAIT, so
//!   they complete inside the enter that submits them (a full socket gives
//!   a short count or EAGAIN, never a parked request), exactly one
//!   non-blocking write as in the epoll backend. The core is told the
//!   result with `after_write` before it ingests that session's next bytes:
//!   recv completions that arrive meanwhile are deferred to the next turn,
//!   whose send completions are handled first.
//! - Write-blocked (the core spilled replies): the recv is cancelled
//!   (`RECV_CANCELLED`) and a one-shot POLLOUT poll armed (`POLL_OUT_ARMED`);
//!   bytes that arrived before the cancel took effect are ingested and
//!   their replies queued behind the spilled ones. Each POLLOUT flushes up
//!   to 64 KiB; once the core says drained, the recv is re-armed.
//! - Close: the record is freed at once (the generation in every
//!   `user_data` makes later completions stale), then, in submission
//!   order after any reply still to go, an ASYNC_CANCEL of its armed recv
//!   or POLLOUT by `user_data` (never by descriptor: the kernel walks
//!   every armed poll of the ring for that, O(sessions) per close) and an
//!   IORING_OP_CLOSE. Nothing the kernel may still
//!   write is ever freed: buffers belong to the worker's ring, not to the
//!   session, and a stale completion's buffer is simply given back.
//!
//! # Measured (results/backends: alternating pairs, one worker, 15 000
//! loopback sessions)
//! Server CPU per heartbeat 1.08× epoll's on the current host at 60 000
//! and 100 000 heartbeats/s (1.03× on the earlier AMD host; pair-to-pair
//! spread ±8 %); RSS per session lower (31.9 vs 32.5 B: the slab entry).
//! About three quarters of the cost is kernel TCP work and wake-ups, the
//! same for both; the event interface is 15–17 % of it on either backend
//! (perf, in results/backends/README.md).
//! Tried and not kept: fixed-file sends (no measurable gain), and a
//! bounded batch wait (IORING_FEAT_MIN_TIMEOUT: 16 completions or 200 µs;
//! 1.20× epoll against 1.07× without, the same session: the sends' own
//! completions end every min-wait, so each turn became a timer wake-up).
//!
//! # Accept
//! Plain descriptors: one multishot accept (the listener's TCP_NODELAY is
//! inherited). EMFILE/ENFILE/ENOBUFS/ENOMEM end it: the worker counts
//! `accept_errors_fd`, pauses accepting for [`ACCEPT_PAUSE`] (the enter's
//! timeout) and re-arms; any other error that ends it also pauses, so
//! nothing spins.
//!
//! # Direct descriptors (`--descriptors direct`)
//! The ring registers a sparse file table of RLIMIT_NOFILE slots: the
//! kernel bounds each ring's table, not the process, so W workers hold W
//! tables' worth of sessions with none in the descriptor table. Sessions
//! hold a slot (`Slot`); every request names it (`types::Fixed`).
//! Accepts are one-shot into an allocated slot, at most [`ACCEPT_BATCH`]
//! and never more than the table has free: a direct accept that finds the
//! table full has already dequeued the connection, which the kernel then
//! closes. A worker at its capacity (slots less a slack) answers new
//! connections BUSY from the slack slots, by a send SQE, then closes them.
//!
//! # Shutdown and wake
//! Another thread wakes the worker by writing its eventfd, on which a
//! POLL_ADD is always armed. On stop the worker cancels accept and wake,
//! closes every session, then reaps completions until nothing it submitted
//! is in flight (at most [`DRAIN_TIMEOUT`]); only then are the ring and
//! its buffers released. If something is still in flight then (or the
//! worker failed), the buffer and send memory is leaked, never freed.

mod bufring;
pub mod client;
mod handoff;
mod probe;
mod sendbuf;
mod session;
mod userdata;

pub use probe::{kernel_offers_io_uring, probe, Missing, SetupMode, Support};

use super::{
    is_resource_exhaustion, pin_worker, RunningWorker, TickClock, WorkerSetup, ACCEPT_PAUSE,
};
use crate::core::{CloseReason, SessionCore};
use crate::stats::WorkerStats;
use bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use sendbuf::{SendArena, Staged};
use slab::Slab;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use userdata::{UserData, ACCEPT, IGNORE, WAKE};

pub const SQ_ENTRIES: u32 = 2048;
pub const CQ_ENTRIES: u32 = 8192;
/// Provided buffers per worker (a power of two, at most 32768).
pub const BUF_COUNT: u16 = 4096;
/// Bytes per provided buffer: a heartbeat is tens of bytes, a frame at
/// most `--max-frame` (512 B by default); longer input spans buffers.
pub const BUF_SIZE: u32 = 1024;
const BGID: u16 = 0;

/// A ring's provided buffers, count × size: what [`buffers_per_ring`] picks
/// for the layout unless the hidden `--uring-buffers` /
/// `--uring-buffer-size` flags set them ([`BufferChoice`]; for tests that
/// must run the ring dry and for experiments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferRing {
    /// A power of two, 1..=32768.
    pub count: u16,
    /// Bytes per buffer, at least 1.
    pub size: u32,
}

impl Default for BufferRing {
    fn default() -> Self {
        BufferRing {
            count: BUF_COUNT,
            size: BUF_SIZE,
        }
    }
}

impl BufferRing {
    /// Checks the values the kernel would refuse, in words.
    pub fn new(count: u16, size: u32) -> Result<BufferRing, String> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(format!(
                "io_uring buffer count {count} is not a power of two from 1 to 32768"
            ));
        }
        if size == 0 || size > 1 << 20 {
            return Err(format!(
                "io_uring buffer size {size} is not from 1 byte to 1 MiB"
            ));
        }
        Ok(BufferRing { count, size })
    }
}

/// SQ and CQ entries of each ring of a worker that owns several (direct
/// descriptors past one table): each ring carries a share of the worker's
/// traffic, and every ring is charged to RLIMIT_MEMLOCK.
pub const SHARD_SQ_ENTRIES: u32 = 256;
pub const SHARD_CQ_ENTRIES: u32 = 1024;

/// SQ and CQ entries of each ring of a worker with `rings` rings.
pub fn ring_entries(rings: usize) -> (u32, u32) {
    if rings > 1 {
        (SHARD_SQ_ENTRIES, SHARD_CQ_ENTRIES)
    } else {
        (SQ_ENTRIES, CQ_ENTRIES)
    }
}

/// RLIMIT_MEMLOCK one ring of a worker with `rings` rings is charged when
/// the process lacks CAP_IPC_LOCK: its SQE array, its CQ with the SQ index
/// ring, and its provided-buffer ring's entries, each in whole pages.
/// 276 KiB for a worker's one ring with 512 buffers: 29 fit in 8 MiB and
/// the 30th fails with ENOMEM, as measured (Linux 6.18).
pub fn ring_memlock_bytes(rings: usize, buffers: u16) -> u64 {
    let pages = |bytes: u64| bytes.div_ceil(4096) * 4096;
    let (sq, cq) = ring_entries(rings);
    let (sq, cq) = (u64::from(sq), u64::from(cq));
    pages(sq * 64) + pages(256 + cq * 16 + sq * 4) + pages(u64::from(buffers) * 16)
}

/// Fewest provided buffers [`buffers_per_worker`] gives a ring: the
/// million campaigns ran 51–54 rings of 512 with no ENOBUFS.
pub const MIN_BUF_COUNT: u16 = 512;

/// Provided buffers per worker ring when `workers` share `cpus` CPUs: the
/// default [`BUF_COUNT`] while there is a worker per CPU at most; past
/// that (per-worker descriptor tables grow the workers to what
/// --max-sessions needs), the CPUs' worth of buffers shared among the
/// workers, rounded down to a power of two, at least [`MIN_BUF_COUNT`]. A
/// ring covers one turn's completions, and a worker on a shared CPU has
/// fewer per turn: 51 rings of 4 MiB would be 204 MiB, 200 B per session
/// of a million.
pub fn buffers_per_worker(cpus: usize, workers: usize) -> u16 {
    let total = usize::from(BUF_COUNT) * cpus.max(1);
    let each = (total / workers.max(1)).clamp(usize::from(MIN_BUF_COUNT), usize::from(BUF_COUNT));
    // Round down to a power of two.
    (1usize << each.ilog2()) as u16
}

/// Bytes per provided buffer of a worker's several rings: a heartbeat is
/// tens of bytes, and what counts against ENOBUFS is the number of
/// buffers, not their size (a completion takes one whatever it holds).
/// Longer input spans buffers.
pub const SHARD_BUF_SIZE: u32 = 256;

/// Fewest provided buffers [`buffers_per_ring`] gives each of a worker's
/// several rings. With 128 × 1 KiB a million sessions on 2 workers × 26
/// rings ran their rings dry 250 000 times a second during the first
/// heartbeat round (turns of 60–250 ms under the ramp); 256 × 1 KiB ran
/// dry 5.2 M times in the drain and left 156 000 heartbeats unanswered
/// (results/million/run21-*); 512 × 1 KiB held it without ENOBUFS (run
/// 20, 27), and so did 1 024 × 256 B, for half the memory: 13 MB less
/// over 52 rings, 52.0 B all-in per session instead of 65.4 (run 28).
pub const MIN_SHARD_BUF_COUNT: u16 = 1024;

/// Provided buffers per ring when each of `workers` workers on `cpus` CPUs
/// owns `rings` rings. One ring: [`buffers_per_worker`] of [`BUF_SIZE`].
/// Several: the worker's bytes ([`buffers_per_worker`] × [`BUF_SIZE`])
/// shared among its rings in [`SHARD_BUF_SIZE`] buffers, from
/// [`MIN_SHARD_BUF_COUNT`] to [`BUF_COUNT`] each. A ring covers the
/// completions of its share of a turn; one that runs dry ends its recvs
/// with ENOBUFS, which are re-armed and counted (`recv_enobufs`).
pub fn buffers_per_ring(cpus: usize, workers: usize, rings: usize) -> BufferRing {
    let worker = buffers_per_worker(cpus, workers);
    if rings <= 1 {
        return BufferRing {
            count: worker,
            size: BUF_SIZE,
        };
    }
    let bytes = usize::from(worker) * BUF_SIZE as usize;
    let each = (bytes / rings / SHARD_BUF_SIZE as usize)
        .clamp(usize::from(MIN_SHARD_BUF_COUNT), usize::from(BUF_COUNT));
    BufferRing {
        count: (1usize << each.ilog2()) as u16,
        size: SHARD_BUF_SIZE,
    }
}

/// The hidden `--uring-buffers` / `--uring-buffer-size` flags: either
/// overrides what [`buffers_per_ring`] picks for the layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferChoice {
    pub count: Option<u16>,
    pub size: Option<u32>,
}

impl BufferChoice {
    /// Checks the given values (with the defaults for the other) now, so
    /// that a bad flag stops the start before any layout is resolved.
    pub fn new(count: Option<u16>, size: Option<u32>) -> Result<BufferChoice, String> {
        BufferRing::new(count.unwrap_or(BUF_COUNT), size.unwrap_or(BUF_SIZE))?;
        Ok(BufferChoice { count, size })
    }

    /// The ring for a layout whose default is `default`.
    pub fn over(self, default: BufferRing) -> BufferRing {
        BufferRing {
            count: self.count.unwrap_or(default.count),
            size: self.size.unwrap_or(default.size),
        }
    }
}

/// Most completions one turn takes from the CQ; the rest wait for the
/// next turn. It bounds what a turn queues (sends, re-arms: a few per
/// completion) so that the SQE and send tables stay within what is
/// resident from start-up, whatever the burst.
pub const TURN_MAX: usize = 1024;

/// How long a stopping worker waits for its requests to complete.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Most one-shot accepts a direct-descriptor worker keeps in flight.
pub const ACCEPT_BATCH: usize = 64;

/// What a session's requests name: a plain descriptor (in the worker's
/// one ring) or a slot of one of the worker's rings' registered file tables.
#[derive(Debug, Clone, Copy)]
enum Target {
    Fd(types::Fd),
    /// The ring (shard) whose table holds the slot, and the slot.
    Fixed(u16, types::Fixed),
}

impl Target {
    /// The ring every request for this target goes to.
    fn shard(self) -> usize {
        match self {
            Target::Fd(_) => 0,
            Target::Fixed(shard, _) => usize::from(shard),
        }
    }
}

/// Builds an SQE for either kind of [`Target`] (the opcode builders take
/// each kind as its own type).
macro_rules! on_target {
    ($target:expr, $f:ident => $sqe:expr) => {
        match $target {
            Target::Fd($f) => $sqe,
            Target::Fixed(_, $f) => $sqe,
        }
    };
}
pub(crate) use on_target;

/// How a worker holds a session's socket: the handle in its 28-byte
/// session record (4 bytes either way).
trait Descriptor: Sized {
    /// Direct descriptors: accepted into a ring's file table, never in
    /// the process's descriptor table.
    const DIRECT: bool;
    /// Takes ownership of what a successful accept completion of ring
    /// `shard` names.
    ///
    /// # Safety
    /// `res` must be a non-negative accept result of that ring, named by no
    /// other completion.
    unsafe fn from_accept(shard: usize, res: i32) -> Self;
    /// What requests for this session name.
    fn target(&self) -> Target;
    /// Gives the socket up to an IORING_OP_CLOSE (which now owns it).
    fn into_target(self) -> Target;
    /// A plain descriptor received from another process (direct
    /// descriptors register it into a ring instead: never called).
    fn from_plain(fd: OwnedFd) -> Self;
}

impl Descriptor for OwnedFd {
    const DIRECT: bool = false;
    unsafe fn from_accept(_shard: usize, res: i32) -> Self {
        // SAFETY: the caller's contract: a new descriptor only we name.
        unsafe { OwnedFd::from_raw_fd(res) }
    }
    fn target(&self) -> Target {
        Target::Fd(types::Fd(self.as_raw_fd()))
    }
    fn into_target(self) -> Target {
        Target::Fd(types::Fd(std::os::fd::IntoRawFd::into_raw_fd(self)))
    }
    fn from_plain(fd: OwnedFd) -> Self {
        fd
    }
}

/// Bits of a [`Slot`] that number the slot within its ring's table; the
/// bits above number the ring.
const SLOT_BITS: u32 = 20;

/// Most slots a ring's table may have (the kernel's own cap is
/// IORING_MAX_FIXED_FILES, 2^20, and RLIMIT_NOFILE).
pub const MAX_SLOTS: u32 = 1 << SLOT_BITS;

/// Most rings a worker may own.
pub const MAX_SHARDS: usize = 1 << (32 - SLOT_BITS);

/// A slot of a ring's registered (direct) file table: ring << 20 | slot.
#[derive(Debug)]
struct Slot(u32);

impl Descriptor for Slot {
    const DIRECT: bool = true;
    unsafe fn from_accept(shard: usize, res: i32) -> Self {
        Slot((shard as u32) << SLOT_BITS | res as u32)
    }
    fn target(&self) -> Target {
        Target::Fixed(
            (self.0 >> SLOT_BITS) as u16,
            types::Fixed(self.0 & (MAX_SLOTS - 1)),
        )
    }
    fn into_target(self) -> Target {
        self.target()
    }
    fn from_plain(_: OwnedFd) -> Self {
        unreachable!("direct descriptors are registered, not taken as they are")
    }
}

/// Starts an io_uring worker thread; fails if its ring cannot be set up.
pub fn spawn(setup: WorkerSetup, support: Support) -> io::Result<RunningWorker> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a
    // new descriptor that we own from here on.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is the fresh eventfd above, owned by nothing else.
    let wake_fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let worker_wake = wake_fd.clone();
    let thread = std::thread::Builder::new()
        .name(format!("c10m-uring-{}", setup.id))
        .spawn(move || {
            if setup.private_table {
                // Before the ring exists: its descriptor lands in the new table.
                let mut keep = setup.kept_fds();
                keep.push(worker_wake.as_raw_fd());
                if let Err(e) = super::private_fd_table(&keep) {
                    let _ = ready_tx.send(false);
                    return Err(e);
                }
            }
            if setup.direct_slots.is_some() {
                let worker = Worker::<Slot>::new(setup, support, worker_wake);
                let _ = ready_tx.send(worker.is_ok());
                worker?.run()
            } else {
                let worker = Worker::<OwnedFd>::new(setup, support, worker_wake);
                let _ = ready_tx.send(worker.is_ok());
                worker?.run()
            }
        })?;
    if ready_rx.recv() != Ok(true) {
        return Err(match thread.join() {
            Ok(Err(e)) => e,
            _ => io::Error::other("io_uring worker died while setting up"),
        });
    }
    Ok(RunningWorker {
        thread,
        wake: Box::new(move || {
            nix::unistd::write(&*wake_fd, &1u64.to_ne_bytes())
                .map(drop)
                .map_err(io::Error::from)
        }),
    })
}

/// A completion copied out of the CQ, so that handlers may queue SQEs.
#[derive(Debug, Clone, Copy, Default)]
struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
    /// The ring it came from (its buffer ring holds the data).
    shard: u16,
}

impl Cqe {
    fn new(e: &cqueue::Entry, shard: usize) -> Cqe {
        Cqe {
            user_data: e.user_data(),
            result: e.result(),
            flags: e.flags(),
            shard: shard as u16,
        }
    }
}

/// A vector whose capacity is resident now: fixed per-worker memory
/// belongs in the start-up RSS baseline, not in the per-session figure.
fn resident<T: Clone>(capacity: usize, fill: T) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity);
    v.resize(capacity, fill);
    v.clear();
    v
}

/// A slab whose first `capacity` entries are resident now (see [`resident`]).
fn resident_slab(capacity: usize) -> Slab<SendRecord> {
    let mut slab = Slab::with_capacity(capacity);
    let fill = SendRecord {
        token: crate::table::Token(0),
        staged: Staged::default(),
        flush: false,
    };
    for _ in 0..capacity {
        slab.insert(fill);
    }
    slab.clear();
    slab
}

/// A send in flight: which session, and the staged bytes it reads.
#[derive(Debug, Clone, Copy)]
struct SendRecord {
    token: crate::table::Token,
    staged: Staged,
    /// Replies flushed from the spill area, rather than fresh ones.
    flush: bool,
}

/// One io_uring instance of a worker, with its provided-buffer ring and
/// (direct descriptors) its registered file table.
struct Shard {
    // Field order matters: the ring is closed before the memory it may use.
    ring: IoUring,
    bufs: Option<BufRing>,
    /// SQEs queued this turn, pushed to the SQ before the next enter.
    pending: Vec<squeue::Entry>,
    /// How many of `pending` are sends: each completes inside the enter
    /// that submits it, so that enter waits for that many more.
    pending_sends: usize,
    /// Accept requests in flight: the one multishot accept (plain), or up
    /// to [`ACCEPT_BATCH`] one-shot accepts (direct).
    accepts_armed: usize,
    /// Direct descriptors: slots holding a socket (sessions, and refused
    /// connections whose close is not queued yet).
    occupied: usize,
}

impl Shard {
    fn bufs(&mut self) -> &mut BufRing {
        self.bufs
            .as_mut()
            .expect("buffer ring present while running")
    }
}

struct Worker<D: Descriptor> {
    // Field order matters: the rings are closed before the memory they may use.
    shards: Vec<Shard>,
    arena: SendArena,
    sends: Slab<SendRecord>,
    /// Most completions a turn takes: [`TURN_MAX`] unless a test says less.
    turn_max: usize,
    /// The ring the next turn takes completions from first: the turn
    /// after one that ran out of room starts at the ring it could not
    /// empty, so no ring waits behind the others.
    turn_start: usize,
    cqes: Vec<Cqe>,
    /// Recv completions held back until their session's send completed.
    deferred: Vec<Cqe>,
    /// Spare vector swapped with `deferred` each turn.
    deferred_spare: Vec<Cqe>,
    /// Recvs ended by ENOBUFS, re-armed at the end of the turn.
    rearm: Vec<crate::table::Token>,
    listener: Option<TcpListener>,
    wake_fd: Arc<OwnedFd>,
    core: SessionCore<D>,
    clock: TickClock,
    control: super::AdmissionControl,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    id: usize,
    out: Vec<u8>,
    due: Vec<(u32, CloseReason)>,
    /// Direct descriptors: slots in each ring's file table.
    direct_slots: usize,
    /// Direct descriptors: every slot of every ring holds a socket
    /// (accepting waits).
    table_full: bool,
    /// Direct descriptors: sessions this worker holds at most (its rings'
    /// slots less the slack kept for answering refused connections).
    direct_capacity: usize,
    accept_paused_until: Option<Instant>,
    wake_armed: bool,
    recvs_armed: usize,
    polls_armed: usize,
    stopping: bool,
    /// Handing off to a new process: nothing is re-armed.
    exporting: bool,
    handoff: Arc<crate::handoff::Port>,
    /// A process taking over: where the old worker comes.
    takeover: Option<Arc<OwnedFd>>,
}

impl<D: Descriptor> Worker<D> {
    fn new(setup: WorkerSetup, support: Support, wake_fd: Arc<OwnedFd>) -> io::Result<Self> {
        pin_worker(setup.id, setup.cpu);
        let context = |what: &'static str| {
            move |e: io::Error| {
                let memlock = if e.raw_os_error() == Some(libc::ENOMEM) {
                    "; without CAP_IPC_LOCK every io_uring ring (this user's other \
                     processes' too) counts against RLIMIT_MEMLOCK: raise it (ulimit -l, \
                     LimitMEMLOCK=) or use --backend epoll"
                } else {
                    ""
                };
                io::Error::new(e.kind(), format!("{what}: {e}{memlock}"))
            }
        };
        let rings = if D::DIRECT {
            setup.direct_rings.clamp(1, MAX_SHARDS)
        } else {
            1
        };
        let (sq, cq) = ring_entries(rings);
        // Several rings: the worker sleeps on its eventfd, which every ring
        // signals when it posts a completion. A DEFER_TASKRUN ring signals
        // it only after an RCU grace period (measured: ~15 ms a wake-up on
        // Linux 6.18), so these rings run their work as COOP_TASKRUN: the
        // kernel wakes the sleeping worker, runs the work on its way out
        // of the poll, and the completion signals the eventfd at once.
        let mode = if rings > 1 && support.mode == SetupMode::DeferTaskrun {
            SetupMode::CoopTaskrun
        } else {
            support.mode
        };
        let mut shards = Vec::with_capacity(rings);
        for _ in 0..rings {
            let ring = mode
                .build(sq, cq, rings > 1)
                .map_err(context("creating the io_uring instance"))?;
            let bufs = BufRing::new(
                &ring.submitter(),
                BGID,
                setup.uring_buffers.count,
                setup.uring_buffers.size,
            )
            .map_err(context("registering the provided-buffer ring"))?;
            if let Some(slots) = setup.direct_slots.filter(|_| D::DIRECT) {
                ring.submitter().register_files_sparse(slots).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "registering a table of {slots} direct descriptors: {e} (the \
                             kernel allows at most RLIMIT_NOFILE slots per ring)"
                        ),
                    )
                })?;
            }
            if rings > 1 {
                // Completions of any ring wake the worker through this one
                // eventfd; with DEFER_TASKRUN the kernel signals it as soon
                // as a ring has work to run.
                ring.submitter()
                    .register_eventfd(wake_fd.as_raw_fd())
                    .map_err(context("registering the worker's eventfd"))?;
            }
            shards.push(Shard {
                ring,
                bufs: Some(bufs),
                pending: resident(sq as usize, opcode::Nop::new().build()),
                pending_sends: 0,
                accepts_armed: 0,
                occupied: 0,
            });
        }
        let clock = TickClock::new(setup.tick);
        let now = clock.tick_at(Instant::now());
        let per_ring = setup.direct_slots.map_or(0, |slots| {
            crate::limits::direct_ring_capacity(u64::from(slots)) as usize
        });
        Ok(Worker {
            shards,
            arena: SendArena::with_resident_chunk(),
            sends: resident_slab(SQ_ENTRIES as usize),
            turn_max: setup.uring_turn_max.clamp(1, TURN_MAX),
            turn_start: 0,
            cqes: resident(TURN_MAX, Cqe::default()),
            deferred: resident(TURN_MAX, Cqe::default()),
            deferred_spare: resident(TURN_MAX, Cqe::default()),
            rearm: Vec::new(),
            listener: Some(setup.listener),
            wake_fd,
            core: SessionCore::new(setup.core, now),
            clock,
            control: setup.control,
            stats: setup.stats,
            stop: setup.stop,
            id: setup.id,
            out: resident(16 * 1024, 0u8),
            due: Vec::new(),
            direct_slots: setup.direct_slots.unwrap_or(0) as usize,
            table_full: false,
            direct_capacity: per_ring * rings,
            accept_paused_until: None,
            wake_armed: false,
            recvs_armed: 0,
            polls_armed: 0,
            stopping: false,
            exporting: false,
            handoff: setup.handoff,
            takeover: setup.takeover,
        })
    }

    /// Several rings: the worker sleeps on its eventfd, not in a ring.
    fn sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// Waits up to `timeout` for work: on the eventfd with several rings
    /// ([`Self::wait_sharded`]), in the ring with one ([`Self::enter`]).
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if self.sharded() {
            self.wait_sharded(timeout)
        } else {
            self.enter(timeout)
        }
    }

    /// Queues an SQE for ring `shard`.
    fn queue(&mut self, shard: usize, sqe: squeue::Entry) {
        self.shards[shard].pending.push(sqe);
    }

    fn run(mut self) -> io::Result<()> {
        if let Some(listener) = self.takeover.take() {
            self.take_over(&listener)?;
        }
        self.arm_accept();
        if !self.sharded() {
            self.arm_wake();
        }
        loop {
            let timeout = self.wait_timeout(Instant::now());
            self.wait(timeout)?;
            let woke = Instant::now();
            self.control.on_wake(self.clock.elapsed_ns(woke));
            let now = self.clock.tick_at(woke);
            self.turn(now)?;
            if self
                .accept_paused_until
                .is_some_and(|t| Instant::now() >= t)
            {
                self.accept_paused_until = None;
                self.arm_accept();
            }
            self.expire(now);
            // Direct: slots freed this turn let more accepts in.
            self.arm_accept();
            self.publish();
            if self.handoff.requested() && self.hand_off()? {
                return Ok(()); // the new process serves every session now
            }
            if self.stop.load(Ordering::Relaxed) {
                return self.shutdown();
            }
        }
    }

    fn wait_timeout(&self, at: Instant) -> Duration {
        // Held-back recvs wait for a send completion; without one in
        // flight (never expected) they must not wait for a tick.
        if !self.deferred.is_empty() && self.sends.is_empty() {
            return Duration::ZERO;
        }
        let next_tick = self.clock.until_next_tick(at);
        match self.accept_paused_until {
            Some(until) => next_tick.min(until.saturating_duration_since(at)),
            None => next_tick,
        }
    }

    /// Pushes ring `shard`'s queued SQEs (submitting early if its SQ
    /// fills); returns whether all went into the SQ.
    fn push_pending(&mut self, shard: usize) -> io::Result<bool> {
        let sh = &mut self.shards[shard];
        let mut done = 0;
        while done < sh.pending.len() {
            let mut sq = sh.ring.submission();
            let n = (sq.capacity() - sq.len()).min(sh.pending.len() - done);
            // SAFETY: every queued SQE points only at memory that stays
            // owned until its completion: provided buffers (the ring's own
            // buffer ring), staged replies (the arena, released on
            // completion), or nothing; descriptors stay open until a later
            // CLOSE SQE.
            unsafe { sq.push_multiple(&sh.pending[done..done + n]) }
                .map_err(|_| io::Error::other("submission queue has no room after a check"))?;
            drop(sq);
            done += n;
            if done < sh.pending.len() {
                match sh.ring.submit() {
                    Ok(_) => {}
                    Err(e) if transient(&e) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let all = done == sh.pending.len();
        sh.pending.drain(..done);
        Ok(all)
    }

    /// One ring: pushes the queued SQEs, then submits and waits for the
    /// next new completion or `timeout`.
    ///
    /// "New" means beyond the sends this enter submits: a send carries
    /// MSG_DONTWAIT and completes inside the enter, so waiting for one
    /// completion would return at once with the sends' own and every
    /// wake-up would take a second enter to sleep. The wait counts
    /// completions in the CQ, which the last turn emptied: it is for the
    /// sends plus one. With completions left in the CQ, or recvs held back
    /// for these very sends, it does not sleep at all.
    fn enter(&mut self, timeout: Duration) -> io::Result<()> {
        let sends = std::mem::take(&mut self.shards[0].pending_sends);
        // Completions the last turn left ([`TURN_MAX`]).
        let leftover = !self.shards[0].ring.completion().is_empty();
        // Not settled: an SQ that could not take everything (CQ overflow:
        // the sends left for later will not complete in this enter), CQEs
        // the last turn left, or held-back recvs: return at once.
        let settled = self.push_pending(0)? && !leftover && self.deferred.is_empty();
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        let want = if settled { sends + 1 } else { 1 };
        match self.shards[0]
            .ring
            .submitter()
            .submit_with_args(want, &args)
        {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Several rings: submits every ring's queued SQEs (their sends
    /// complete inside that enter), then sleeps on the worker's eventfd
    /// until a ring has work, another thread wakes the worker, or
    /// `timeout`.
    ///
    /// Every ring has the eventfd registered: the kernel signals it when a
    /// completion is posted (the rings are COOP_TASKRUN: see
    /// [`Worker::new`]; work queued for a ring shows as IORING_SQ_TASKRUN
    /// in its SQ flags and runs on the worker's next syscall). The eventfd
    /// is read empty before the rings are checked a last time, so a signal
    /// that arrives after the check wakes the poll.
    fn wait_sharded(&mut self, timeout: Duration) -> io::Result<()> {
        let mut settled = self.deferred.is_empty();
        for shard in 0..self.shards.len() {
            if self.shards[shard].pending.is_empty() {
                continue;
            }
            self.shards[shard].pending_sends = 0;
            settled &= self.push_pending(shard)?;
            self.enter_nowait(shard)?;
        }
        if !settled {
            return Ok(());
        }
        let wake = self.wake_fd.clone();
        sleep_on_eventfd(&wake, timeout, || self.any_ready())
    }

    /// Submits ring `shard`'s SQ and runs its pending work without waiting.
    /// (An enter runs a DEFER_TASKRUN ring's work only with GETEVENTS,
    /// which the crate sets only when waiting for a completion: so it
    /// waits for one, with a timeout of zero.)
    fn enter_nowait(&mut self, shard: usize) -> io::Result<()> {
        let zero = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&zero);
        match self.shards[shard]
            .ring
            .submitter()
            .submit_with_args(1, &args)
        {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A ring has completions to take or work to run.
    fn any_ready(&mut self) -> bool {
        self.shards
            .iter_mut()
            .any(|sh| !sh.ring.completion().is_empty() || needs_enter(&mut sh.ring))
    }

    /// Handles this turn's completions: sends first (each session's write
    /// result before its next bytes), then held-back recvs, then the rest.
    fn turn(&mut self, now: u32) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        let sharded = self.sharded();
        // Round robin: with more completions than one turn takes (a
        // million sessions closing in 20 s), rings always served last had
        // their CQs back up, their buffers held by unread completions, and
        // their recvs fail with ENOBUFS (1.6 million times in 20 s).
        let n = self.shards.len();
        let start = self.turn_start % n;
        self.turn_start = (start + 1) % n;
        for i in 0..n {
            let shard = (start + i) % n;
            if cqes.len() >= self.turn_max {
                self.turn_start = shard;
                break;
            }
            if sharded && needs_enter(&mut self.shards[shard].ring) {
                self.enter_nowait(shard)?;
            }
            let room = self.turn_max - cqes.len();
            cqes.extend(
                self.shards[shard]
                    .ring
                    .completion()
                    .take(room)
                    .map(|e| Cqe::new(&e, shard)),
            );
            if cqes.len() >= self.turn_max && !self.shards[shard].ring.completion().is_empty() {
                self.turn_start = shard;
                break;
            }
        }
        for cqe in &cqes {
            if let UserData::Send(slot) = UserData::decode(cqe.user_data) {
                self.on_send(slot, cqe.result);
            }
        }
        let mut held =
            std::mem::replace(&mut self.deferred, std::mem::take(&mut self.deferred_spare));
        for cqe in held.drain(..) {
            self.on_recv(cqe, now)?;
        }
        self.deferred_spare = held;
        for cqe in &cqes {
            match UserData::decode(cqe.user_data) {
                UserData::Send(_) | UserData::Ignore => {}
                UserData::Recv(_) => self.on_recv(*cqe, now)?,
                UserData::PollOut(token) => self.on_poll_out(token),
                UserData::Accept => {
                    self.on_accept(usize::from(cqe.shard), cqe.result, cqe.flags, now)
                }
                UserData::Wake => self.on_wake(),
                UserData::Unknown(ud) => {
                    return Err(io::Error::other(format!(
                        "completion with unknown user_data {ud:#x}"
                    )))
                }
            }
        }
        self.cqes = cqes;
        for token in std::mem::take(&mut self.rearm) {
            if let Some(key) = self.core.resolve(token) {
                self.resume_reading(key);
            }
        }
        Ok(())
    }

    /// Arms accepting unless paused. Plain descriptors: one multishot
    /// accept. Direct: one-shot accepts, never more in flight in a ring
    /// than its table has free slots, at most [`ACCEPT_BATCH`] per ring. A direct accept that finds the table full has
    /// already taken the connection off the queue, and the kernel then
    /// closes it (the client sees EOF): so a table must never be full when
    /// an accept completes, and a multishot accept, which may take a whole
    /// backlog in one enter, cannot promise that.
    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        if self.accept_paused_until.is_some() || self.stopping || self.exporting {
            return;
        }
        let fd = types::Fd(listener.as_raw_fd());
        if !D::DIRECT {
            if self.shards[0].accepts_armed == 0 {
                let sqe = opcode::AcceptMulti::new(fd)
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(ACCEPT);
                self.queue(0, sqe);
                self.shards[0].accepts_armed = 1;
            }
            return;
        }
        // Each armed accept may fill one slot: occupied + armed <= slots.
        // At most ACCEPT_BATCH per ring: a worker with 26 rings keeping 64
        // in flight in all shed 700 000 connects of a 60 000/s ramp (each
        // one-shot accept takes one connection per turn).
        let slots = self.direct_slots;
        let mut free_total = 0;
        for sh in &mut self.shards {
            let free = slots.saturating_sub(sh.occupied + sh.accepts_armed);
            free_total += free;
            while sh.accepts_armed < ACCEPT_BATCH && sh.occupied + sh.accepts_armed < slots {
                // The kernel refuses SOCK_CLOEXEC with a file slot: the slot
                // is in no descriptor table.
                let sqe = opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                    .file_index(Some(types::DestinationSlot::auto_target()))
                    .build()
                    .user_data(ACCEPT);
                sh.pending.push(sqe);
                sh.accepts_armed += 1;
            }
        }
        let armed: usize = self.shards.iter().map(|sh| sh.accepts_armed).sum();
        // Every table is full: new connections wait in the listen queue
        // until a session closes. Counted once per episode, as plain
        // descriptors count an EMFILE (`accept_errors_fd`).
        let full = free_total == 0 && armed == 0;
        if full && !self.table_full {
            self.core.counters.accept_errors_fd += 1;
        }
        self.table_full = full;
    }

    fn on_accept(&mut self, shard: usize, res: i32, flags: u32, now: u32) {
        if D::DIRECT || !cqueue::more(flags) {
            self.shards[shard].accepts_armed -= 1;
        }
        if res >= 0 {
            if D::DIRECT {
                self.shards[shard].occupied += 1;
            }
            // SAFETY: a non-negative accept result is a new descriptor (or
            // direct slot of this ring) that only this completion names:
            // ours from here.
            let socket = unsafe { D::from_accept(shard, res) };
            if self.stopping {
                self.close_socket(socket);
            } else {
                self.admit(socket, now);
            }
            self.arm_accept(); // a multishot the kernel ended (CQ full) resumes
            return;
        }
        let e = io::Error::from_raw_os_error(-res);
        if is_resource_exhaustion(&e) {
            self.core.counters.accept_errors_fd += 1;
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        } else if matches!(-res, libc::ECONNABORTED | libc::EINTR | libc::EAGAIN) {
            self.arm_accept(); // concerns one connection only
        } else if !self.stopping && -res != libc::ECANCELED {
            // An error we do not expect: retry later rather than spin on it.
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    /// One ring: a poll on the wake eventfd (several rings: the worker
    /// sleeps on the eventfd itself).
    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.wake_fd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        self.queue(0, sqe);
        self.wake_armed = true;
    }

    fn on_wake(&mut self) {
        self.wake_armed = false;
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(self.wake_fd.as_raw_fd(), &mut count);
        if !self.stopping && !self.exporting {
            self.arm_wake();
        }
    }

    fn expire(&mut self, now: u32) {
        self.due.clear();
        self.core.expire(now, &mut self.due);
        for i in 0..self.due.len() {
            let (key, reason) = self.due[i];
            self.close(key, reason);
        }
    }

    fn publish(&self) {
        self.stats.publish(
            &self.core.counters,
            self.core.sessions(),
            self.core.spill_bytes(),
            self.control.lag(),
        );
    }

    /// Requests submitted whose last completion has not arrived.
    fn in_flight(&self) -> usize {
        self.recvs_armed
            + self.sends.len()
            + self.polls_armed
            + self.shards.iter().map(|sh| sh.accepts_armed).sum::<usize>()
            + usize::from(self.wake_armed)
    }

    fn pending_any(&self) -> bool {
        self.shards.iter().any(|sh| !sh.pending.is_empty())
    }

    /// Queues one cancel per ring for all its accepts (direct descriptors
    /// keep up to [`ACCEPT_BATCH`] armed: one plain cancel per request left
    /// all but one in flight) and one for the wake poll.
    fn cancel_accepts_and_wake(&mut self) {
        for shard in 0..self.shards.len() {
            let wake = shard == 0 && self.wake_armed;
            for (armed, ud) in [
                (self.shards[shard].accepts_armed, ACCEPT),
                (usize::from(wake), WAKE),
            ] {
                if armed > 0 {
                    let all = types::CancelBuilder::user_data(ud).all();
                    self.queue(
                        shard,
                        opcode::AsyncCancel2::new(all).build().user_data(IGNORE),
                    );
                }
            }
        }
    }

    /// Stops accepting, closes every session, and reaps every completion
    /// still due before the rings and their memory go.
    fn shutdown(&mut self) -> io::Result<()> {
        self.stopping = true;
        // One cancel for every request of that user_data: direct
        // descriptors keep up to ACCEPT_BATCH accepts armed, and one plain
        // cancel per request left all but one of them in flight (shutdown
        // then waited out DRAIN_TIMEOUT and leaked the buffers).
        self.cancel_accepts_and_wake();
        self.listener = None; // the accept request holds its own reference
        for key in self.core.keys() {
            self.close(key, CloseReason::Shutdown);
        }
        self.publish();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while (self.in_flight() > 0 || self.pending_any()) && Instant::now() < deadline {
            self.wait(Duration::from_millis(50))?;
            let now = self.clock.tick_at(Instant::now());
            self.turn(now)?;
        }
        let held: usize = self
            .shards
            .iter()
            .map(|sh| sh.bufs.as_ref().map_or(0, BufRing::out))
            .sum();
        debug_assert!(self.in_flight() > 0 || (held == 0 && self.arena.in_flight() == 0));
        if self.in_flight() > 0 {
            eprintln!(
                "c10m-server: worker {}: {} io_uring requests still in flight after {DRAIN_TIMEOUT:?}; \
                 their buffers are leaked, not freed",
                self.id,
                self.in_flight()
            );
        }
        self.publish();
        Ok(())
    }
}

impl<D: Descriptor> Drop for Worker<D> {
    fn drop(&mut self) {
        if self.in_flight() > 0 {
            // The kernel may still write into these after the rings close.
            for sh in &mut self.shards {
                std::mem::forget(sh.bufs.take());
            }
            self.arena.leak();
        }
    }
}

/// A ring's work runs, and completions that overflowed its CQ come back,
/// only inside an enter: IORING_SQ_TASKRUN or IORING_SQ_CQ_OVERFLOW in its
/// SQ flags says one is due.
fn needs_enter(ring: &mut IoUring) -> bool {
    let sq = ring.submission();
    sq.taskrun() || sq.cq_overflow()
}

/// Sleeps until `wake` (an eventfd that every ring of a thread signals
/// when it posts a completion) is signalled or `timeout` passes, unless
/// `ready()` says a ring has work already. The eventfd is read empty
/// before the last check, so a signal that arrives after it wakes the
/// poll.
fn sleep_on_eventfd(
    wake: &OwnedFd,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> io::Result<()> {
    if ready() {
        return Ok(());
    }
    let mut count = [0u8; 8];
    let _ = nix::unistd::read(wake.as_raw_fd(), &mut count);
    if ready() {
        return Ok(());
    }
    let ts = nix::sys::time::TimeSpec::from_duration(timeout);
    let mut fds = [nix::poll::PollFd::new(
        wake.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::ppoll(&mut fds, Some(ts), None) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Errors after which the loop simply goes round again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_is_charged_what_was_measured_against_memlock() {
        // 29 rings of 512 buffers fit in 8 MiB, 30 do not (measured).
        let ring = ring_memlock_bytes(1, 512);
        assert_eq!((8 << 20) / ring, 29);
        assert!(ring_memlock_bytes(1, 4096) > ring);
        // A worker's several rings are smaller.
        assert!(ring_memlock_bytes(26, 128) < ring / 5);
    }

    #[test]
    fn a_workers_rings_share_its_buffers() {
        let ring = |count, size| BufferRing { count, size };
        assert_eq!(buffers_per_ring(2, 2, 1), ring(BUF_COUNT, BUF_SIZE));
        assert_eq!(buffers_per_ring(2, 2, 2), ring(BUF_COUNT, SHARD_BUF_SIZE));
        assert_eq!(buffers_per_ring(2, 2, 8), ring(2048, SHARD_BUF_SIZE));
        // A million: 2 workers x 26 rings get the floor, 1 024 x 256 B.
        assert_eq!(buffers_per_ring(2, 2, 26), ring(1024, SHARD_BUF_SIZE));
        assert_eq!(buffers_per_ring(2, 2, 26).count, MIN_SHARD_BUF_COUNT);
        assert_eq!(buffers_per_ring(2, 51, 1), ring(MIN_BUF_COUNT, BUF_SIZE));
        let choice = BufferChoice::new(None, Some(64)).unwrap();
        assert_eq!(choice.over(ring(1024, 256)), ring(1024, 64));
        assert_eq!(BufferChoice::default().over(ring(8, 16)), ring(8, 16));
        assert!(BufferChoice::new(Some(3), None).is_err());
        assert!(BufferChoice::new(None, Some(0)).is_err());
    }

    #[test]
    fn rings_shrink_only_when_workers_outnumber_cpus() {
        assert_eq!(buffers_per_worker(2, 1), BUF_COUNT);
        assert_eq!(buffers_per_worker(2, 2), BUF_COUNT);
        assert_eq!(buffers_per_worker(2, 3), 2048);
        assert_eq!(buffers_per_worker(2, 16), 512);
        assert_eq!(buffers_per_worker(2, 51), MIN_BUF_COUNT);
        assert_eq!(buffers_per_worker(24, 51), 1024);
        assert_eq!(buffers_per_worker(0, 0), BUF_COUNT);
        for (cpus, workers) in [(1, 7), (3, 5), (16, 40)] {
            assert!(buffers_per_worker(cpus, workers).is_power_of_two());
        }
    }
}
