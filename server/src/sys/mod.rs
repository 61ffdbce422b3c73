//! OS backends. Each drives the same [`SessionCore`](crate::core::SessionCore)
//! from its own event mechanism, one module per backend (as mio keeps one
//! selector per file). The rest of the crate sees only [`WorkerSetup`] in
//! and [`RunningWorker`] out.
//!
//! A worker is one thread pinned to one core. It owns its listener, its
//! poller, its session core and its scratch buffers, and shares nothing
//! with other workers but the admission counter and its own stats block.
//!
//! [`select`] picks the backend for `--backend auto|uring|epoll`: io_uring
//! when the kernel offers every feature the uring backend uses (probed by
//! [`uring::probe`], which actually runs a multishot accept and a multishot
//! recv over a provided-buffer ring), else epoll; a forced `uring` that the
//! kernel refuses is an error naming the missing feature.

pub mod epoll;
pub mod uring;

use crate::admission::Admission;
use crate::core::CoreConfig;
use crate::lag::LoopLag;
use crate::shed::{AcceptGate, Gate};
use crate::stats::WorkerStats;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `--backend`: which event mechanism the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    /// io_uring when the kernel offers what it needs, else epoll.
    #[default]
    Auto,
    /// io_uring, or fail at start-up naming what the kernel lacks.
    Uring,
    /// epoll (through mio), edge-triggered.
    Epoll,
}

/// The backend the workers will run, and why it was chosen.
#[derive(Debug, Clone)]
pub struct Selected {
    pub backend: Backend,
    /// One token without spaces for the start-up line, e.g. `auto:io_uring-ok`
    /// or `auto:no-multishot-recv`.
    pub why: String,
    /// Why io_uring was not used, in words, when `auto` fell back to epoll.
    pub fallback: Option<uring::Missing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    Uring(uring::Support),
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Uring(_) => "uring",
        }
    }
}

/// A forced backend the kernel cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("--backend uring: {0} (use --backend epoll or auto)")]
    UringUnavailable(uring::Missing),
}

/// Chooses the backend. `probe` is called only when io_uring is a
/// candidate (it is [`uring::probe`] outside tests).
pub fn select(
    choice: BackendChoice,
    probe: impl FnOnce() -> Result<uring::Support, uring::Missing>,
) -> Result<Selected, BackendError> {
    let (backend, why, fallback) = match choice {
        BackendChoice::Epoll => (Backend::Epoll, "forced".to_string(), None),
        BackendChoice::Uring => match probe() {
            Ok(support) => (
                Backend::Uring(support),
                format!("forced,{}", support.mode.name()),
                None,
            ),
            Err(missing) => return Err(BackendError::UringUnavailable(missing)),
        },
        BackendChoice::Auto => match probe() {
            Ok(support) => (
                Backend::Uring(support),
                format!("auto:io_uring-ok,{}", support.mode.name()),
                None,
            ),
            Err(missing) => (
                Backend::Epoll,
                format!("auto:{}", missing.token()),
                Some(missing),
            ),
        },
    };
    Ok(Selected {
        backend,
        why,
        fallback,
    })
}

/// Starts one worker on the selected backend.
pub fn spawn(backend: Backend, setup: WorkerSetup) -> io::Result<RunningWorker> {
    match backend {
        Backend::Epoll => epoll::spawn(setup),
        Backend::Uring(support) => uring::spawn(setup, support),
    }
}

/// Everything a worker starts from.
#[derive(Debug)]
pub struct WorkerSetup {
    pub id: usize,
    /// CPU to pin the worker thread to (`None`: leave it unpinned).
    pub cpu: Option<usize>,
    pub listener: TcpListener,
    pub core: CoreConfig,
    /// Length of one deadline-wheel tick.
    pub tick: Duration,
    /// Whether a new connection becomes a session.
    pub control: AdmissionControl,
    pub stats: Arc<WorkerStats>,
    /// Set by the server to stop every worker; each then closes its sessions.
    pub stop: Arc<AtomicBool>,
    /// The io_uring worker's provided-buffer ring (epoll ignores it).
    pub uring_buffers: uring::BufferRing,
    /// Most completions an io_uring turn takes, 1..=[`uring::TURN_MAX`].
    pub uring_turn_max: usize,
    /// io_uring with direct descriptors: slots in the ring's registered
    /// file table (at most RLIMIT_NOFILE); `None`: plain descriptors.
    pub direct_slots: Option<u32>,
    /// io_uring with direct descriptors: rings (each a table of
    /// `direct_slots`) the worker owns; 1 otherwise.
    pub direct_rings: usize,
    /// `--descriptors thread`: the worker thread gives itself a descriptor
    /// table of its own ([`private_fd_table`]) before it opens anything.
    pub private_table: bool,
    /// Zero-downtime upgrade: between this worker and the main thread
    /// (see [`crate::handoff`]).
    pub handoff: Arc<crate::handoff::Port>,
    /// A process taking over: the listener where an old worker brings its
    /// sessions, taken before this worker serves anything.
    pub takeover: Option<Arc<std::os::fd::OwnedFd>>,
}

impl WorkerSetup {
    /// Descriptors a worker with a private table keeps from the process's.
    pub fn kept_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let mut keep = vec![self.listener.as_raw_fd()];
        keep.extend(self.takeover.as_ref().map(|t| t.as_raw_fd()));
        keep
    }
}

/// Admission of accepted connections, the same for every backend: the
/// worker's accept gate (rate limit; overload: the server's listen-queue
/// signal, this worker's spill area over half its budget, or this worker's
/// loop lagging past `--max-lag`), then the process-wide session cap.
///
/// Call order per loop turn: [`Self::on_wake`] right after the poll or
/// enter returns, then [`Self::admit`] for each connection the turn accepts.
#[derive(Debug)]
pub struct AdmissionControl {
    admission: Arc<Admission>,
    gate: AcceptGate,
    /// Set by the server while it is overloaded (listen-queue overflows).
    overloaded: Arc<AtomicBool>,
    spill_budget: usize,
    lag: LoopLag,
}

impl AdmissionControl {
    pub fn new(
        admission: Arc<Admission>,
        gate: AcceptGate,
        overloaded: Arc<AtomicBool>,
        spill_budget: usize,
        lag: LoopLag,
    ) -> Self {
        AdmissionControl {
            admission,
            gate,
            overloaded,
            spill_budget,
            lag,
        }
    }

    /// A loop turn begins `now_ns` after the worker's clock started: runs
    /// the loop-lag measurement (see [`LoopLag`]).
    pub fn on_wake(&mut self, now_ns: u64) {
        self.lag.on_wake(now_ns);
    }

    /// This worker's loop lag, for its stats.
    pub fn lag(&self) -> crate::lag::LagReading {
        self.lag.reading()
    }

    /// Decides for one connection accepted `now_ns` after the worker
    /// started, with `spill_bytes` held by its worker. A refused connection
    /// gets `-ERR BUSY retry-after=<s>` (one write into its empty send
    /// buffer: it cannot block) and is closed by the caller dropping it,
    /// before any session state exists. True when admitted: the caller owes
    /// a [`Self::release`] when the session closes.
    pub fn admit(
        &mut self,
        now_ns: u64,
        spill_bytes: usize,
        counters: &mut crate::core::Counters,
        stream: &std::net::TcpStream,
    ) -> bool {
        let Some(busy) = self.refusal(now_ns, spill_bytes, counters) else {
            return true;
        };
        let _ = std::io::Write::write(&mut &*stream, &busy);
        false
    }

    /// The decision of [`Self::admit`] without the write: `None` when
    /// admitted (a [`Self::release`] is owed), else the `-ERR BUSY` reply
    /// the caller must send before closing the connection (the io_uring
    /// backend with direct descriptors sends it by SQE).
    pub fn refusal(
        &mut self,
        now_ns: u64,
        spill_bytes: usize,
        counters: &mut crate::core::Counters,
    ) -> Option<Vec<u8>> {
        let lagging = self.lag.shedding();
        let congested = self.overloaded.load(std::sync::atomic::Ordering::Relaxed)
            || spill_bytes > self.spill_budget / 2;
        let retry_after_s = match self.gate.check(now_ns, lagging || congested) {
            // A lagging worker is back within its hold: say so, rather than
            // the --retry-after meant for a full or congested server (a
            // reconnect wave shed for 5 s took 9 s to recover, not 2).
            Gate::Busy { .. } if lagging && !congested => {
                counters.shed += 1;
                counters.shed_lag += 1;
                crate::lag::RETRY_AFTER_S
            }
            Gate::Busy { retry_after_s } => {
                counters.shed += 1;
                counters.shed_lag += u64::from(lagging);
                retry_after_s
            }
            Gate::Admit if self.admission.try_admit() => return None,
            Gate::Admit => {
                counters.rejected += 1;
                self.gate.retry_after_s
            }
        };
        let mut busy = Vec::with_capacity(32);
        crate::wire::encode_busy(retry_after_s, &mut busy);
        Some(busy)
    }

    /// The refusal for a worker whose own table is full (io_uring direct
    /// descriptors: each worker's ring holds at most its slots, however
    /// SO_REUSEPORT spreads connections): counted as rejected, told
    /// `--retry-after`, as for a full server.
    pub fn refusal_full(&mut self, counters: &mut crate::core::Counters) -> Vec<u8> {
        counters.rejected += 1;
        let mut busy = Vec::with_capacity(32);
        crate::wire::encode_busy(self.gate.retry_after_s, &mut busy);
        busy
    }

    /// Counts sessions carried over from another process.
    pub fn adopt(&self, sessions: u64) {
        self.admission.adopt(sessions);
    }

    /// Gives back the slot of a closed session.
    pub fn release(&self) {
        self.admission.release();
    }
}

/// A started worker: its thread, and a way to wake it out of its poll.
pub struct RunningWorker {
    pub thread: JoinHandle<io::Result<()>>,
    pub wake: Box<dyn Fn() -> io::Result<()> + Send + Sync>,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker").finish_non_exhaustive()
    }
}

/// Converts the monotonic clock into wheel ticks for the sans-IO core.
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    start: Instant,
    tick: Duration,
}

impl TickClock {
    pub fn new(tick: Duration) -> Self {
        TickClock {
            start: Instant::now(),
            tick: tick.max(Duration::from_millis(1)),
        }
    }

    /// Nanoseconds from the clock's start to `at`.
    pub fn elapsed_ns(&self, at: Instant) -> u64 {
        at.duration_since(self.start).as_nanos() as u64
    }

    /// Ticks elapsed at `at` (wraps after 2^32 ticks; the wheel handles it).
    pub fn tick_at(&self, at: Instant) -> u32 {
        (at.duration_since(self.start).as_nanos() / self.tick.as_nanos()) as u32
    }

    /// Length of one tick.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Time from `at` until the next tick begins.
    pub fn until_next_tick(&self, at: Instant) -> Duration {
        let elapsed = at.duration_since(self.start).as_nanos();
        let tick = self.tick.as_nanos();
        Duration::from_nanos((tick - elapsed % tick) as u64)
    }
}

/// Pins the calling worker thread to its CPU, if it has one. Pinning is an
/// optimisation: a refused mask (cgroup cpuset) leaves the thread where the
/// scheduler puts it, with a note on stderr.
pub fn pin_worker(id: usize, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_current_thread(cpu) {
            eprintln!("c10m-server: worker {id} not pinned to CPU {cpu}: {e}");
        }
    }
}

/// Sets the calling thread's scheduling policy (a non-real-time one:
/// priority 0).
pub fn set_thread_policy(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // on the stack for the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's scheduling policy, by the name `--sched` and the
/// start-up line use (`normal` for SCHED_OTHER).
pub fn thread_policy_name() -> &'static str {
    // SAFETY: pid 0 is the calling thread; no memory is passed.
    let policy = unsafe { libc::sched_getscheduler(0) };
    match policy & !libc::SCHED_RESET_ON_FORK {
        _ if policy < 0 => "unknown",
        libc::SCHED_OTHER => "normal",
        libc::SCHED_BATCH => "batch",
        libc::SCHED_IDLE => "idle",
        libc::SCHED_FIFO => "fifo",
        libc::SCHED_RR => "rr",
        _ => "other",
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

/// Sets a listener's SO_INCOMING_CPU: `Some(cpu)`, and the kernel hands a
/// new connection whose packets it handles on `cpu` to this listener
/// rather than to another of its SO_REUSEPORT group (Linux 6.1+ honours it
/// in the group's selection; a CPU no listener names falls back to the
/// group's hash); `None` clears it (-1), so the group's hash alone decides.
pub fn steer_listener(listener: &impl AsFd, cpu: Option<usize>) -> io::Result<()> {
    let value: libc::c_int = match cpu {
        Some(cpu) => libc::c_int::try_from(cpu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu}")))?,
        None => -1,
    };
    // SAFETY: the option value is a c_int on the stack, its size passed
    // with it; the descriptor is borrowed open for the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Grows this process's descriptor table now to hold descriptors
/// `0..fds` (the kernel rounds up), by duplicating `fd` to `fds - 1` and
/// closing the copy; returns the table's size (`FDSize` in
/// /proc/self/status). Call it before the worker threads start.
///
/// Why: a table shared by several threads (the workers' plain
/// descriptors) grows by doubling, and each growth waits for an RCU grace
/// period (`synchronize_rcu` in the kernel's `expand_fdtable`) in the
/// thread whose accept needed the room. A grace period is a few ms on an
/// idle host and far longer on one busy freeing sockets: 15 000 unpaced
/// connects right after another 15 000-session test stalled the io_uring
/// worker's accepts until the listen queues overflowed (124-4 940 drops
/// in 8 of 8 runs; 0 in 8 of 8 with the table grown up front,
/// results/reliability/burst-test-ab). Growing it here, before the
/// workers start, costs at most one grace period, before any session. Cost: 8 bytes of kernel memory per slot, ~260 KiB
/// for 20 000 descriptors (the table a full server grows to anyway).
pub fn presize_fd_table(fd: std::os::fd::BorrowedFd<'_>, fds: u64) -> io::Result<u64> {
    let last = i32::try_from(fds.saturating_sub(1))
        .map_err(|_| io::Error::other(format!("{fds} descriptors: too many for one table")))?;
    let copy = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(last))
        .map_err(io::Error::from)?;
    nix::unistd::close(copy).map_err(io::Error::from)?;
    fd_table_size()
}

/// This process's descriptor table size (`FDSize` in /proc/self/status).
pub fn fd_table_size() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no FDSize in /proc/self/status"))
}

/// Gives the calling thread a descriptor table of its own that holds only
/// stdio (0, 1, 2) and the descriptors in `keep`. RLIMIT_NOFILE bounds
/// each table, not the process, so threads that call this each hold up to
/// RLIMIT_NOFILE descriptors: one process holds threads × RLIMIT_NOFILE
/// sockets, plain descriptors and epoll included. Descriptors the thread
/// opens from here on are invisible to the process's other threads (and
/// to /proc/PID/fd, which lists the main thread's table: see
/// /proc/PID/task/TID/fd), and close when the thread exits. Descriptors
/// kept are open in both tables (the file stays open until both close).
///
/// `close_range(…, CLOSE_RANGE_UNSHARE)` (Linux 5.9): the new table keeps
/// none of the process's other descriptors, so a socket another thread
/// closes is not held open here. Older kernels get `unshare(CLONE_FILES)`
/// and the copied descriptors closed one by one.
pub fn private_fd_table(keep: &[std::os::fd::RawFd]) -> io::Result<()> {
    const CLOSE_RANGE_UNSHARE: libc::c_uint = 1 << 1;
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd > 2)
        .map(|fd| *fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    // Ranges to close, between the kept descriptors; the last one (past
    // the highest kept) is never empty and goes first, with the unshare.
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    let mut first = 3u32;
    for &k in &keep {
        if k > first {
            ranges.push((first, k - 1));
        }
        first = k + 1;
    }
    let close_range = |first: u32, last: u32, flags: libc::c_uint| {
        // SAFETY: close_range takes plain integers. It closes descriptors
        // of this thread's new private table only, none of which the
        // caller uses: it named those it needs in `keep`.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match close_range(first, u32::MAX, CLOSE_RANGE_UNSHARE) {
        Ok(()) => {
            for (a, b) in ranges {
                close_range(a, b, 0)?;
            }
            return Ok(());
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {}
        Err(e) => return Err(e),
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).map_err(io::Error::from)?;
    let copied: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &i32| *fd > 2 && !keep.contains(&(*fd as u32)))
        .collect();
    for fd in copied {
        // The directory's own descriptor is already closed: EBADF.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Sets the calling thread's nice value (on Linux, nice is per thread).
/// Going below 0 needs CAP_SYS_NICE or a raised RLIMIT_NICE.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Packets the kernel dropped at this socket (SO_MEMINFO's
/// SK_MEMINFO_DROPS). For a listener that is its own accept-queue
/// overflows and SYN drops: `tcp_listendrop` counts them here as well as in
/// the namespace-wide TcpExt ListenDrops.
pub fn socket_drops(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a live, writable buffer of `len` bytes for the
    // duration of the call, and `fd` is a valid descriptor borrowed for it.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) <= SK_MEMINFO_DROPS * 4 {
        return Err(io::Error::other("SO_MEMINFO without a drops field"));
    }
    Ok(u64::from(info[SK_MEMINFO_DROPS]))
}

/// CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// True for accept errors that mean "out of descriptors or kernel memory":
/// retrying at once would spin, so the worker pauses accepting instead.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// How long a worker stops accepting after running out of descriptors.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use uring::{Missing, SetupMode, Support};

    fn ok() -> Result<Support, Missing> {
        Ok(Support {
            mode: SetupMode::DeferTaskrun,
        })
    }

    /// The table grows to the size asked for at once (the kernel rounds
    /// up), takes no descriptor, and a size past RLIMIT_NOFILE is an error.
    #[test]
    fn presizing_grows_the_table_and_keeps_no_descriptor() {
        let probe = std::fs::File::open("/proc/self/status").unwrap();
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        // Far above what the tests running beside this one hold (~600),
        // so no other thread is handed the copy's number meanwhile.
        let fds = soft.min(2048);
        let size = presize_fd_table(probe.as_fd(), fds).unwrap();
        assert!(size >= fds, "FDSize {size} for {fds}");
        assert!(fd_table_size().unwrap() >= size);
        let copy = fds as i32 - 1;
        assert_eq!(
            nix::fcntl::fcntl(copy, nix::fcntl::FcntlArg::F_GETFD),
            Err(nix::errno::Errno::EBADF),
            "the copy, descriptor {copy}, is closed"
        );
        assert!(presize_fd_table(probe.as_fd(), soft + 1).is_err());
    }

    fn refused() -> Result<Support, Missing> {
        Err(Missing::MultishotRecv("EINVAL".into()))
    }

    #[test]
    fn auto_takes_uring_when_the_probe_passes_and_says_so() {
        let s = select(BackendChoice::Auto, ok).unwrap();
        assert_eq!(s.backend.name(), "uring");
        assert_eq!(s.why, "auto:io_uring-ok,defer-taskrun");
        assert!(s.fallback.is_none());
    }

    #[test]
    fn auto_falls_back_to_epoll_naming_the_missing_feature() {
        let s = select(BackendChoice::Auto, refused).unwrap();
        assert_eq!(s.backend, Backend::Epoll);
        assert_eq!(s.why, "auto:no-multishot-recv");
        assert!(!s.why.contains(' '), "one token for the start-up line");
        let said = s.fallback.unwrap().to_string();
        assert!(said.contains("multishot recv"), "{said}");
    }

    #[test]
    fn forced_uring_on_a_refusing_kernel_is_one_clear_line() {
        let e = select(BackendChoice::Uring, refused)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--backend uring: io_uring lacks multishot recv"),
            "{e}"
        );
        assert!(e.contains("Linux 6.0"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = select(BackendChoice::Uring, || {
            Err(Missing::Refused("Operation not permitted".into()))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("kernel.io_uring_disabled"), "{e}");
    }

    #[test]
    fn forced_epoll_never_probes() {
        let s = select(BackendChoice::Epoll, || panic!("probed")).unwrap();
        assert_eq!((s.backend, s.why.as_str()), (Backend::Epoll, "forced"));
    }
}
