//! The server process: binds the listeners, starts one worker per core,
//! prints stats each interval, and stops cleanly on SIGINT/SIGTERM.
//!
//! Start-up order matters for honest numbers: the RSS baseline (the
//! "0 sessions, warmed up" reading of MEASURING.md) is taken after every
//! worker has allocated its buffers and before the listeners are announced,
//! so RSS growth divided by sessions is the cost of sessions alone.

use crate::admission::Admission;
use crate::core::CoreConfig;
use crate::lag::LoopLag;
use crate::limits::{self, NoFile};
use crate::listen::bind_listeners;
use crate::shed::AcceptGate;
use crate::stats::{Lineage, ProcessUsage, Report, WorkerStats};
use crate::sys::{self, AdmissionControl, RunningWorker, WorkerSetup};
use crate::upgrade;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest sleep of the main thread between its checks.
const IDLE_NAP: Duration = Duration::from_millis(100);
/// Everything the server needs to run (the CLI builds it).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    /// CPUs to pin workers to, in order (worker i → cpus[i % len]).
    pub cpus: Vec<usize>,
    pub pin: bool,
    /// `--steer`: which worker's listener the kernel gives a connection.
    pub steer: crate::listen::Steer,
    /// `--sched`: the threads' scheduling policy.
    pub sched: crate::listen::Sched,
    /// `None`: as many as the descriptor limit allows.
    pub max_sessions: Option<u64>,
    pub idle_timeout: Duration,
    /// Longest a partial frame may take to complete (slowloris defence).
    pub frame_timeout: Duration,
    /// New sessions per second per worker (0: unlimited); the excess is
    /// answered busy.
    pub accept_rate: u32,
    /// Retry-after told to clients refused for a full or overloaded server.
    pub retry_after: Duration,
    /// A worker whose wheel tick runs later than this answers new
    /// connections busy (see [`crate::lag`]); zero: never.
    pub max_lag: Duration,
    /// Listeners must drop connections this long before new ones are
    /// answered busy (see [`OverloadSignal`]); zero: from the first drop.
    pub overload_after: Duration,
    pub max_frame: usize,
    pub spill_budget: usize,
    pub backlog: i32,
    pub stats_interval: Duration,
    pub stats_json: Option<PathBuf>,
    /// Share a port other processes already listen on (SO_REUSEPORT).
    pub join: bool,
    /// `--backend`: io_uring, epoll, or the best the kernel offers.
    pub backend: sys::BackendChoice,
    pub stats_format: StatsFormat,
    /// `--descriptors`: the process's table, one per worker thread, io_uring
    /// direct descriptors, or `auto` (resolved by [`limits::layout`]).
    pub descriptors: limits::Descriptors,
    /// The user gave `--workers`: a per-worker table layout keeps it rather
    /// than growing the worker count to the tables --max-sessions needs.
    pub workers_given: bool,
    /// io_uring provided buffers per ring (hidden flags): what is given
    /// overrides what the layout picks ([`sys::uring::buffers_per_ring`]:
    /// 4096 × 1 KiB for a worker's one ring, fewer when the workers
    /// outnumber the CPUs, 256 B buffers for a worker's several rings).
    pub uring_buffers: sys::uring::BufferChoice,
    /// Direct descriptors: at least this many rings per worker (hidden
    /// `--uring-rings`, for tests; 0: as the sessions need).
    pub uring_rings: usize,
    /// Most completions an io_uring turn takes (hidden flag; default
    /// [`sys::uring::TURN_MAX`]).
    pub uring_turn_max: usize,
    /// Take over the listeners and sessions of this running server
    /// process (a zero-downtime upgrade; see [`crate::handoff`]).
    pub takeover: Option<u32>,
}

impl ServerConfig {
    /// The CPU worker `id` is pinned to (worker i → cpus[i % len]), if
    /// workers are pinned.
    pub fn worker_cpu(&self, id: usize) -> Option<usize> {
        self.pin
            .then(|| self.cpus.get(id % self.cpus.len().max(1)).copied())
            .flatten()
    }
}

/// How the periodic stats line is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsFormat {
    /// `stats key=value …`, for people and grep.
    Text,
    /// `stats-json {…}` (the [`Report`] as one JSON line), for the supervisor.
    Json,
}

/// Prints one periodic stats line.
pub fn print_stats(report: &Report, since: Option<&Report>, format: StatsFormat) {
    match format {
        StatsFormat::Text => println!("{}", report.line(since)),
        StatsFormat::Json => match serde_json::to_string(report) {
            Ok(json) => println!("stats-json {json}"),
            Err(e) => eprintln!("c10m-server: cannot encode stats: {e}"),
        },
    }
    flush_stdout();
}

/// Wheel tick: 1/64 of the shorter of the idle and frame timeouts, between
/// 10 ms and 1 s, so a timeout fires at most ~1.5 % late; 600 s and 10 s
/// (the defaults) give 156 ms ticks and a 4096-slot wheel (16 KiB).
pub fn tick_for(idle_timeout: Duration) -> Duration {
    (idle_timeout / 64).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

fn ticks(timeout: Duration, tick: Duration) -> u32 {
    let ticks = timeout.as_nanos().div_ceil(tick.as_nanos());
    u32::try_from(ticks)
        .unwrap_or(u32::MAX / 4)
        .min(u32::MAX / 4)
}

/// Resolves the layout (`--descriptors`, workers, rings per worker) and the
/// io_uring buffer ring for the selected backend. Without CAP_IPC_LOCK
/// every ring is charged to RLIMIT_MEMLOCK: when the rings do not fit,
/// `--backend auto` falls back to epoll (a table per worker thread holds
/// as many sessions) and a forced `uring` stops, naming the limit.
fn resolve_layout(
    config: &ServerConfig,
    mut selected: sys::Selected,
    nofile: &limits::NoFile,
) -> Result<(sys::Selected, limits::Layout, sys::uring::BufferRing)> {
    let resolve = |uring: bool| {
        let mut layout = limits::layout(
            config.descriptors,
            uring,
            config.max_sessions,
            nofile,
            config.workers,
            config.workers_given,
        )
        .map_err(anyhow::Error::msg)?;
        if layout.descriptors == limits::Descriptors::Direct {
            layout.rings = layout
                .rings
                .max(config.uring_rings)
                .min(sys::uring::MAX_SHARDS);
        }
        let buffers = config.uring_buffers.over(sys::uring::buffers_per_ring(
            config.cpus.len(),
            layout.workers,
            layout.rings,
        ));
        anyhow::Ok((layout, buffers))
    };
    let uring = matches!(selected.backend, sys::Backend::Uring(_));
    let (layout, buffers) = resolve(uring)?;
    if !uring {
        return Ok((selected, layout, buffers));
    }
    let ring = sys::uring::ring_memlock_bytes(layout.rings, buffers.count);
    let rings = (layout.workers * layout.rings) as u64;
    let Some(why) = limits::MemLock::raise().shortfall(rings, ring) else {
        return Ok((selected, layout, buffers));
    };
    if config.backend != sys::BackendChoice::Auto {
        bail!("--backend uring: {why}");
    }
    eprintln!("c10m-server: io_uring does not fit RLIMIT_MEMLOCK, using epoll: {why}");
    selected = sys::Selected {
        backend: sys::Backend::Epoll,
        why: "auto:memlock".to_string(),
        fallback: None,
    };
    let (layout, buffers) = resolve(false)?;
    Ok((selected, layout, buffers))
}

/// Runs the server until SIGINT/SIGTERM, or until it has handed every
/// session to a new process (SIGUSR2, `c10m-server upgrade`). Returns the
/// final report.
pub fn run(mut config: ServerConfig) -> Result<Report> {
    apply_sched(config.sched)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let relaunch = upgrade::Relaunch::from_env()?;
    let upgrades = upgrade::Upgrades::listen()?;
    let mut takeover = config
        .takeover
        .map(upgrade::Takeover::connect)
        .transpose()?;
    if let Some(t) = &takeover {
        // The old process's workers each bring their sessions to one of ours.
        config.workers = t.workers;
        config.workers_given = true;
    }
    let result = serve(&config, stop, &relaunch, &upgrades, &mut takeover);
    if let (Err(e), Some(t)) = (&result, &takeover) {
        t.abort(&format!("{e:#}"));
    }
    result
}

fn serve(
    config: &ServerConfig,
    stop: Arc<AtomicBool>,
    relaunch: &upgrade::Relaunch,
    upgrades: &upgrade::Upgrades,
    takeover: &mut Option<upgrade::Takeover>,
) -> Result<Report> {
    let config = config.clone();
    let selected = sys::select(config.backend, sys::uring::probe)?;
    if let Some(missing) = &selected.fallback {
        eprintln!("c10m-server: io_uring unavailable, using epoll: {missing}");
    }
    let nofile = limits::raise_nofile().context("reading RLIMIT_NOFILE")?;
    let (selected, layout, uring_buffers) = resolve_layout(&config, selected, &nofile)?;
    let n_workers = layout.workers;
    let capacity = layout.capacity(&nofile);
    let max_sessions = config.max_sessions.unwrap_or(capacity);
    announce_limits(&nofile, capacity);
    if n_workers > config.workers {
        eprintln!(
            "c10m-server: {n_workers} workers (not {}): with --descriptors {} each worker's \
             table holds {} sessions, and --max-sessions is {max_sessions}",
            config.workers,
            layout.descriptors.name(),
            limits::per_table_capacity(&nofile, layout.descriptors).unwrap_or(0),
        );
    }
    if let Some(warning) =
        limits::capacity_warning(max_sessions, n_workers, &nofile, layout.descriptors)
            // It counts one table per worker; a direct layout's rings
            // are sized to --max-sessions, so only a real shortfall speaks.
            .filter(|_| max_sessions > capacity)
    {
        eprintln!("c10m-server: {warning}");
    }

    let (listeners, bound) = match takeover.as_mut() {
        Some(t) if t.workers != n_workers => bail!(
            "the old process has {} workers, this layout {n_workers}",
            t.workers
        ),
        Some(t) => (std::mem::take(&mut t.listeners), t.bound),
        None => bind_listeners(config.listen, n_workers, config.backlog, config.join)?,
    };
    // Every listener is set as this process asks, taken-over ones included
    // (the old process may have steered otherwise).
    for (id, listener) in listeners.iter().enumerate() {
        let cpu = config
            .worker_cpu(id)
            .filter(|_| config.steer == crate::listen::Steer::Cpu);
        sys::steer_listener(listener, cpu).with_context(|| match cpu {
            Some(cpu) => {
                format!("--steer cpu: setting SO_INCOMING_CPU {cpu} on worker {id}'s listener")
            }
            None => format!("clearing SO_INCOMING_CPU on worker {id}'s listener"),
        })?;
    }
    // Duplicates for a hand-off's offer (workers with tables of their own
    // keep theirs out of this thread's reach).
    let listener_dups: Vec<OwnedFd> = listeners
        .iter()
        .map(|l| l.as_fd().try_clone_to_owned())
        .collect::<std::io::Result<_>>()
        .context("duplicating the listeners")?;
    if layout.descriptors == limits::Descriptors::Plain {
        // The workers share this table: grow it now, not under load (see
        // sys::presize_fd_table). Not fatal: it would grow on demand.
        let fds = max_sessions
            .saturating_add(limits::reserved_fds(n_workers))
            .min(nofile.soft);
        if let Some(first) = listener_dups.first() {
            if let Err(e) = sys::presize_fd_table(first.as_fd(), fds) {
                eprintln!(
                    "c10m-server: could not size the descriptor table for {fds} descriptors at \
                     start-up ({e}); it grows as sessions arrive instead, each step waiting for \
                     an RCU grace period in a worker"
                );
            }
        }
    }
    let ports: Vec<Arc<crate::handoff::Port>> = (0..n_workers).map(|_| Arc::default()).collect();
    let admission = Arc::new(Admission::new(max_sessions));
    let tick = tick_for(config.idle_timeout.min(config.frame_timeout));
    let core = CoreConfig {
        max_frame: config.max_frame,
        idle_timeout_ticks: ticks(config.idle_timeout, tick),
        frame_timeout_ticks: ticks(config.frame_timeout, tick),
        spill_budget: config.spill_budget,
        capacity: (max_sessions as usize / n_workers.max(1)).min(1 << 24) + 1024,
    };
    let overloaded = Arc::new(AtomicBool::new(false));
    let mut overload = OverloadSignal::for_listeners(
        listeners
            .iter()
            .filter_map(|l| l.as_fd().try_clone_to_owned().ok())
            .collect(),
        config.overload_after,
    );
    let mut stats = Vec::new();
    let mut workers: Vec<RunningWorker> = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let worker_stats = Arc::new(WorkerStats::default());
        stats.push(worker_stats.clone());
        let setup = WorkerSetup {
            id,
            cpu: config.worker_cpu(id),
            listener,
            core,
            tick,
            control: AdmissionControl::new(
                admission.clone(),
                AcceptGate::new(
                    config.accept_rate,
                    config.retry_after.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
                ),
                overloaded.clone(),
                config.spill_budget,
                LoopLag::new(tick, config.max_lag),
            ),
            stats: worker_stats,
            stop: stop.clone(),
            uring_buffers,
            uring_turn_max: config.uring_turn_max,
            direct_slots: (layout.descriptors == limits::Descriptors::Direct)
                .then(|| limits::direct_slots(&nofile)),
            direct_rings: layout.rings,
            private_table: layout.descriptors == limits::Descriptors::Thread,
            handoff: ports[id].clone(),
            takeover: takeover.as_ref().map(|t| t.listener.clone()),
        };
        workers.push(sys::spawn(selected.backend, setup).context("starting a worker")?);
    }
    // Let the workers allocate their buffers before the baseline reading.
    std::thread::sleep(Duration::from_millis(50));
    let baseline = ProcessUsage::read().rss_bytes;
    let mut inherited = None;
    if let Some(t) = takeover.as_ref() {
        let moved = t.finish(&ports)?;
        inherited = moved.lineage;
        println!(
            "c10m-server: took over {} from pid {} in {} ms (sessions unserved for {} ms)",
            moved.what(),
            moved.pid,
            moved.elapsed.as_millis(),
            moved.pause.as_millis()
        );
    }
    let started = Instant::now();
    announce_listening(
        &config,
        bound,
        &format!(
            "backend={} backend_why={} descriptors={} descriptors_why={} workers={}{}",
            selected.backend.name(),
            selected.why,
            match (
                limits::per_table_capacity(&nofile, layout.descriptors),
                layout.descriptors
            ) {
                (Some(each), limits::Descriptors::Direct) => format!("direct:{each}-per-ring"),
                (Some(each), d) => format!("{}:{each}-per-worker", d.name()),
                (None, d) => d.name().to_string(),
            },
            layout.why,
            n_workers,
            match (selected.backend, layout.descriptors) {
                (sys::Backend::Uring(support), limits::Descriptors::Direct) => format!(
                    " rings_per_worker={} uring_buffers={}x{}{}",
                    layout.rings,
                    uring_buffers.count,
                    uring_buffers.size,
                    // A worker's several rings run COOP_TASKRUN (sys::uring).
                    if layout.rings > 1 && support.mode == sys::uring::SetupMode::DeferTaskrun {
                        " ring_setup=coop-taskrun"
                    } else {
                        ""
                    }
                ),
                (sys::Backend::Uring(_), _) => format!(
                    " uring_buffers={}x{}",
                    uring_buffers.count, uring_buffers.size
                ),
                (sys::Backend::Epoll, _) => String::new(),
            }
        ),
        max_sessions,
    );

    let report = |stats: &[Arc<WorkerStats>], overflows: u64| {
        let mut r = Report::new(
            stats.iter().map(|s| s.snapshot()).collect(),
            ProcessUsage::read(),
            baseline,
        );
        r.uptime_s = started.elapsed().as_secs_f64();
        r.max_sessions = max_sessions;
        r.listen_overflows = overflows;
        if let Some(l) = &inherited {
            l.apply(&mut r);
        }
        r
    };
    // After an upgrade the first line's rates start from the inherited
    // counters, at this process's start.
    let mut last: Option<Report> = inherited.map(|l| {
        let mut r = Report::new(Vec::new(), ProcessUsage::default(), 0);
        l.apply(&mut r);
        r
    });
    let mut next_line = started + config.stats_interval;
    let mut failure = None;
    let mut handed_off = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(request) = upgrades.poll() {
            let offer: Vec<_> = listener_dups.iter().map(|l| l.as_fd()).collect();
            // What the successor goes on from (a supervisor's child hands
            // on nothing: the supervisor keeps its children's counters).
            let lineage = || {
                let supervised = std::env::var_os(crate::supervisor::SUPERVISOR_PID_ENV).is_some();
                (!supervised).then(|| {
                    let own = stats.iter().map(|s| s.snapshot()).sum();
                    Lineage::hand_on(inherited.as_ref(), own, ProcessUsage::read())
                })
            };
            let peers = Peers {
                workers: &workers,
                ports: &ports,
                listeners: &offer,
                bound,
                lineage: &lineage,
            };
            if let Some(moved) = upgrade_on(request, relaunch, upgrades, &peers) {
                handed_off = Some(moved);
                break;
            }
        }
        // Wake for the next stats line, else every 100 ms (a stop, a dead
        // worker, the overload signal's 250 ms reads): under --procs, 50
        // children waking every 20 ms were 2 500 idle wake-ups a second.
        let nap = if config.stats_interval.is_zero() {
            IDLE_NAP
        } else {
            next_line
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), IDLE_NAP)
        };
        std::thread::sleep(nap);
        overloaded.store(overload.poll(Instant::now()), Ordering::Relaxed);
        if let Some(i) = workers.iter().position(|w| w.thread.is_finished()) {
            if stop.load(Ordering::Relaxed) {
                break; // the signal reached that worker's thread first: a stop
            }
            let w = workers.remove(i);
            failure = Some(match w.thread.join() {
                Ok(Ok(())) => anyhow::anyhow!("worker {i} stopped unexpectedly"),
                Ok(Err(e)) => anyhow::anyhow!("worker {i} failed: {e}"),
                Err(_) => anyhow::anyhow!("worker {i} panicked"),
            });
            break;
        }
        crate::metrics::publish_with(|| report(&stats, overload.overflows()));
        if !config.stats_interval.is_zero() && Instant::now() >= next_line {
            let r = report(&stats, overload.overflows());
            print_stats(&r, last.as_ref(), config.stats_format);
            last = Some(r);
            next_line += config.stats_interval;
        }
    }

    // Stop: every worker stops accepting, closes its sessions, publishes.
    // After a hand-off they have stopped already, closing nothing.
    if handed_off.is_none() {
        stop.store(true, Ordering::Relaxed);
        for w in &workers {
            let _ = (w.wake)();
        }
    }
    for w in workers {
        match w.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("c10m-server: worker failed while stopping: {e}"),
            Err(_) => eprintln!("c10m-server: worker panicked while stopping"),
        }
    }
    let final_report = report(&stats, overload.overflows());
    println!("final {}", final_report.line(None));
    flush_stdout();
    if let Some(path) = &config.stats_json {
        let json = serde_json::to_string_pretty(&final_report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing stats to {}", path.display()))?;
    }
    if let Some(e) = failure {
        bail!(e);
    }
    Ok(final_report)
}

/// The old process's side of a hand-off: what it hands over.
struct Peers<'a> {
    workers: &'a [RunningWorker],
    ports: &'a [Arc<crate::handoff::Port>],
    listeners: &'a [std::os::fd::BorrowedFd<'a>],
    bound: SocketAddr,
    lineage: &'a dyn Fn() -> Option<Lineage>,
}

/// Serves an upgrade request: `Some` when every session now belongs to the
/// new process (this one then exits), `None` when this one serves on.
fn upgrade_on(
    request: upgrade::Request,
    relaunch: &upgrade::Relaunch,
    upgrades: &upgrade::Upgrades,
    peers: &Peers<'_>,
) -> Option<upgrade::Moved> {
    let give = |conn: &OwnedFd, pid: u32| {
        upgrade::hand_off(
            conn,
            pid,
            peers.workers,
            peers.ports,
            peers.listeners,
            peers.bound,
            peers.lineage,
        )
    };
    let (outcome, reply) = match request {
        upgrade::Request::Spawn { reply, .. }
            if std::env::var_os(crate::supervisor::SUPERVISOR_PID_ENV).is_some() =>
        {
            let e = anyhow::anyhow!(
                "this is a child of a c10m-server supervisor: upgrade the supervisor, \
                 which upgrades its children one at a time"
            );
            eprintln!("c10m-server: upgrade refused: {e}");
            upgrade::answer(reply.as_ref(), &Err(e));
            return None;
        }
        upgrade::Request::Spawn { binary, reply } => {
            eprintln!(
                "c10m-server: upgrade: starting {}",
                binary.as_ref().unwrap_or(&relaunch.exe).display()
            );
            let outcome = relaunch.spawn(binary.as_ref()).and_then(|mut child| {
                let pid = child.id();
                let moved = upgrades
                    .wait_hello(&mut child)
                    .and_then(|conn| give(&conn, pid));
                if moved.is_err() {
                    // Told to stop (or dead already): reap it, killing it
                    // if it has not gone within 5 s.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while child.try_wait().ok().flatten().is_none() {
                        if Instant::now() > deadline {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                moved
            });
            (outcome, reply)
        }
        upgrade::Request::Takeover { conn, pid } => (give(&conn, pid), None),
    };
    let said =
        outcome.as_ref().map(|m| {
            format!(
            "handed off {} to pid {} in {} ms (its workers stopped {} ms before the commit); {}",
            m.what(),
            m.pid,
            m.elapsed.as_millis(),
            m.pause.as_millis(),
            match &m.serving {
                Some(Ok(after)) => format!("it serves them since {} ms after", after.as_millis()),
                Some(Err(why)) => {
                    format!("it did not confirm that it serves them ({why}): check pid {}", m.pid)
                }
                None => "it serves them".to_string(),
            }
        )
        });
    match &said {
        Ok(message) => println!("c10m-server: {message}; exiting"),
        Err(e) => eprintln!("c10m-server: upgrade failed, every session still served here: {e:#}"),
    }
    flush_stdout();
    let said = said.map_err(|e| {
        anyhow::anyhow!(
            "upgrade failed, pid {} serves on: {e:#}",
            std::process::id()
        )
    });
    upgrade::answer(reply.as_ref(), &said);
    outcome.ok()
}

/// Sets the calling (main) thread's `--sched` policy before any other
/// thread starts, so that every worker inherits it.
pub(crate) fn apply_sched(sched: crate::listen::Sched) -> Result<()> {
    sched.apply().with_context(|| {
        format!(
            "--sched {}: setting this thread's scheduling policy (sched_setscheduler)",
            sched.name()
        )
    })
}

/// The start-up line tests and scripts read the bound address from:
/// `c10m-server listening on ADDR key=value…`. `what` names the backend and
/// the process layout.
pub(crate) fn announce_listening(
    config: &ServerConfig,
    bound: SocketAddr,
    what: &str,
    max_sessions: u64,
) {
    println!(
        "c10m-server listening on {bound} {what} cpus={} steer={} sched={} \
         max_sessions={max_sessions} idle_timeout={} max_frame={} pid={}",
        if config.pin {
            cpu_list(&config.cpus)
        } else {
            "unpinned".into()
        },
        config.steer.name(),
        // The policy in effect: `--sched normal` keeps the one the server
        // was started with (e.g. under chrt).
        sys::thread_policy_name(),
        humantime::format_duration(config.idle_timeout),
        config.max_frame,
        std::process::id(),
    );
    flush_stdout();
}

/// Default `--overload-after`: how long listeners must keep dropping
/// connections before new ones are answered busy.
pub const DEFAULT_OVERLOAD_AFTER: Duration = Duration::from_secs(2);

/// How often [`OverloadSignal`] reads the listeners' drop counters.
pub const OVERLOAD_READ: Duration = Duration::from_millis(250);

/// How long shedding lasts after the last reading that saw drops.
pub const OVERLOAD_HOLD: Duration = Duration::from_secs(1);

/// The listen-queue overload signal behind fast reject: this process's
/// listeners dropping connections (accept queue full or SYN dropped:
/// SO_MEMINFO's drops of each listener, summed) in every reading for
/// `--overload-after` means connections keep arriving faster than the
/// server accepts them; workers then answer new connections busy, until
/// [`OVERLOAD_HOLD`] after the drops stop. Read every [`OVERLOAD_READ`].
///
/// Sustained, not the first drop: a stock client opening 15 000 sessions at
/// once overflows a default accept queue (somaxconn 4096) for a moment, a
/// few hundred SYNs are dropped, TCP retransmits them a second later and
/// they are accepted. Shedding on that refused 5 000-15 000 of the 15 000
/// for nothing (issue 14); an overload that lasts seconds drops SYNs in
/// every reading (the retransmits too) and is still shed.
///
/// Per listener, not the namespace-wide TcpExt ListenOverflows of
/// /proc/net/netstat (the fallback when SO_MEMINFO is refused): with the
/// namespace counter, any other server's overflowing backlog on the host
/// (another test, a neighbour's benchmark, a sibling child under --procs)
/// made this one refuse clients it had room for.
#[derive(Debug)]
pub struct OverloadSignal {
    listeners: Vec<OwnedFd>,
    start: Option<u64>,
    last: Option<u64>,
    next_read: Instant,
    sustained: SustainedDrops,
}

impl OverloadSignal {
    /// Reads the namespace-wide counter (no listeners of our own to ask).
    pub fn new() -> Self {
        Self::for_listeners(Vec::new(), DEFAULT_OVERLOAD_AFTER)
    }

    /// Watches these listeners (duplicates of the workers' descriptors);
    /// `after`: `--overload-after`.
    pub fn for_listeners(listeners: Vec<OwnedFd>, after: Duration) -> Self {
        let mut signal = OverloadSignal {
            listeners,
            start: None,
            last: None,
            next_read: Instant::now(),
            sustained: SustainedDrops::new(after),
        };
        signal.start = signal.read();
        signal.last = signal.start;
        signal
    }

    fn read(&self) -> Option<u64> {
        if self.listeners.is_empty() {
            return read_listen_overflows();
        }
        self.listeners
            .iter()
            .map(|fd| sys::socket_drops(fd.as_fd()).ok())
            .sum::<Option<u64>>()
            .or_else(read_listen_overflows)
    }

    /// True while overloaded.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now >= self.next_read {
            self.next_read = now + OVERLOAD_READ;
            let value = self.read();
            let dropped = matches!((value, self.last), (Some(v), Some(last)) if v > last);
            self.sustained.reading(now, dropped);
            self.last = value.or(self.last);
        }
        self.sustained.overloaded(now)
    }

    /// Listen-queue overflows since the server started.
    pub fn overflows(&self) -> u64 {
        match (self.start, self.last) {
            (Some(s), Some(l)) => l.saturating_sub(s),
            _ => 0,
        }
    }
}

impl Default for OverloadSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// Sans-IO core of [`OverloadSignal`]: fed one reading per
/// [`OVERLOAD_READ`] (did the drop counter rise since the last one?), says
/// whether the drops have been sustained for `after`.
#[derive(Debug, Clone)]
pub struct SustainedDrops {
    after: Duration,
    /// First reading of the current unbroken run of readings with drops.
    run_since: Option<Instant>,
    /// Last reading with drops.
    last_drop: Option<Instant>,
    /// Shedding until then (once engaged: [`OVERLOAD_HOLD`] after the last
    /// reading with drops).
    until: Option<Instant>,
}

impl SustainedDrops {
    pub fn new(after: Duration) -> Self {
        SustainedDrops {
            after,
            run_since: None,
            last_drop: None,
            until: None,
        }
    }

    /// One reading at `now`: `dropped` when the counter rose since the last.
    /// A reading without drops ends the run; so does a gap of more than two
    /// reading periods between readings with drops (a stalled reader saw
    /// nothing in between).
    pub fn reading(&mut self, now: Instant, dropped: bool) {
        if !dropped {
            self.run_since = None;
            return;
        }
        let continues = self
            .last_drop
            .is_some_and(|t| now.saturating_duration_since(t) <= 2 * OVERLOAD_READ);
        if !continues || self.run_since.is_none() {
            self.run_since = Some(now);
        }
        self.last_drop = Some(now);
        let sustained = self.run_since.is_some_and(|since| {
            now.saturating_duration_since(since) + OVERLOAD_READ >= self.after
        });
        let engaged = self.until.is_some_and(|until| now < until);
        if sustained || engaged {
            self.until = Some(now + OVERLOAD_HOLD);
        }
    }

    pub fn overloaded(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

fn read_listen_overflows() -> Option<u64> {
    parse_listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// TcpExt ListenOverflows from the text of /proc/net/netstat.
pub fn parse_listen_overflows(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
}

pub(crate) fn announce_limits(nofile: &NoFile, capacity: u64) {
    let raised = if nofile.soft_before < nofile.soft {
        format!(" (soft raised from {})", nofile.soft_before)
    } else {
        String::new()
    };
    println!(
        "c10m-server: RLIMIT_NOFILE soft={} hard={}{raised}; this process can hold {capacity} sessions",
        nofile.soft, nofile.hard
    );
}

pub(crate) fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_overflows_parse_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 17 20\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_overflows(text), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
        assert!(
            read_listen_overflows().is_some(),
            "this kernel has /proc/net/netstat"
        );
    }

    /// Feeds readings every 250 ms, `true` where the counter rose;
    /// returns whether each reading left the server overloaded.
    fn feed(after: Duration, drops: &[bool]) -> Vec<bool> {
        let t0 = Instant::now();
        let mut s = SustainedDrops::new(after);
        drops
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let now = t0 + OVERLOAD_READ * i as u32;
                s.reading(now, d);
                s.overloaded(now)
            })
            .collect()
    }

    #[test]
    fn a_burst_of_drops_is_absorbed() {
        // Drops in 3 readings (0.75 s), then the retransmits get in.
        let got = feed(
            Duration::from_secs(2),
            &[true, true, true, false, true, false],
        );
        assert!(got.iter().all(|&o| !o), "{got:?}");
    }

    #[test]
    fn sustained_drops_shed_until_a_second_after_they_stop() {
        let mut drops = vec![true; 12];
        drops.extend([false; 6]);
        let got = feed(Duration::from_secs(2), &drops);
        // Readings 0..=7 span 1.75 s + the reading period = 2 s: engaged
        // at the 8th, held through the drops and 1 s (4 readings) after.
        let first = got.iter().position(|&o| o).unwrap();
        assert_eq!(first, 7, "{got:?}");
        assert!(got[7..12].iter().all(|&o| o), "{got:?}");
        assert!(got[12..15].iter().all(|&o| o), "held 1 s: {got:?}");
        assert!(!got[16], "released: {got:?}");
    }

    #[test]
    fn zero_after_sheds_from_the_first_drop() {
        let got = feed(
            Duration::ZERO,
            &[false, true, false, false, false, false, false],
        );
        assert_eq!(got, [false, true, true, true, true, false, false]);
    }

    #[test]
    fn a_stalled_reader_does_not_join_two_bursts() {
        let t0 = Instant::now();
        let mut s = SustainedDrops::new(Duration::from_secs(2));
        s.reading(t0, true);
        // The next reading comes 3 s later (the reader was descheduled):
        // not 3 s of drops, a new run.
        s.reading(t0 + Duration::from_secs(3), true);
        assert!(!s.overloaded(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn ticks_follow_the_shorter_timeout() {
        assert_eq!(tick_for(Duration::from_secs(600)), Duration::from_secs(1));
        assert_eq!(
            tick_for(Duration::from_millis(100)),
            Duration::from_millis(10)
        );
        assert_eq!(
            ticks(Duration::from_secs(10), Duration::from_millis(156)),
            65
        );
    }
}
