//! OS backends. Each drives the same [`SessionCore`](crate::core::SessionCore)
//! from its own event mechanism, one module per backend (as mio keeps one
//! selector per file). The rest of the crate sees only [`WorkerSetup`] in
//! and [`RunningWorker`] out.
//!
//! A worker is one thread pinned to one core. It owns its listener, its
//! poller, its session core and its scratch buffers, and shares nothing
//! with other workers but the admission counter and its own stats block.

pub mod epoll;

use crate::admission::Admission;
use crate::core::CoreConfig;
use crate::stats::WorkerStats;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    pub admission: Arc<Admission>,
    pub stats: Arc<WorkerStats>,
    /// Set by the server to stop every worker; each then closes its sessions.
    pub stop: Arc<AtomicBool>,
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

    /// Ticks elapsed at `at` (wraps after 2^32 ticks; the wheel handles it).
    pub fn tick_at(&self, at: Instant) -> u32 {
        (at.duration_since(self.start).as_nanos() / self.tick.as_nanos()) as u32
    }

    /// Time from `at` until the next tick begins.
    pub fn until_next_tick(&self, at: Instant) -> Duration {
        let elapsed = at.duration_since(self.start).as_nanos();
        let tick = self.tick.as_nanos();
        Duration::from_nanos((tick - elapsed % tick) as u64)
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> nix::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
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
