//! Supervisor mode (`--procs K|auto`): K child server processes share one
//! port through SO_REUSEPORT, for hosts where one process cannot hold
//! enough descriptors (a hard RLIMIT_NOFILE that cannot be raised, as in
//! containers without CAP_SYS_RESOURCE) and for fault isolation.
//!
//! # Contract
//! - The supervisor reserves the port (a bound, never-listening socket),
//!   then re-executes its own binary K times with `--join`; each child
//!   listens on the port with its own workers, pinned to its share of CPUs,
//!   and holds its share of `--max-sessions` (with headroom: SO_REUSEPORT
//!   spreads connections by a hash, not evenly).
//! - Children print their stats as JSON lines; the supervisor sums them
//!   into the same one-line and JSON output a single process gives, with
//!   `procs`, `restarts` and `sessions_lost` added.
//! - A child that dies is restarted after a backoff (100 ms doubling to
//!   5 s, reset once a child has lived 30 s); its counters are kept, its
//!   open sessions counted as lost.
//! - SIGINT/SIGTERM are forwarded; the supervisor waits for every child
//!   (SIGKILL after 20 s) and reaps it. Children ask the kernel for SIGTERM
//!   should the supervisor die (PR_SET_PDEATHSIG), so none outlives it.

use crate::limits::{self, NoFile};
use crate::listen::reserve_port;
use crate::server::{
    announce_limits, announce_listening, cpu_list, flush_stdout, print_stats, ServerConfig,
};
use crate::stats::{ProcessUsage, Report, Snapshot};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variable naming the supervisor's pid, set in every child.
pub const SUPERVISOR_PID_ENV: &str = "C10M_SUPERVISOR_PID";

/// Sessions each child is sized for, above an even share: the spread of a
/// hash over K children is uneven, by a few standard deviations at most.
const HEADROOM: f64 = 1.10;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// `--procs`: a count, or enough processes for `--max-sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procs {
    Auto,
    Count(usize),
}

/// What one child is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSpec {
    pub cpus: Vec<usize>,
    pub workers: usize,
    pub max_sessions: u64,
}

/// Decides the number of children and each one's share. `workers`: per
/// child, when the user gave `--workers`.
pub fn plan(
    config: &ServerConfig,
    procs: Procs,
    workers: Option<usize>,
    nofile: &NoFile,
) -> Result<Vec<ChildSpec>> {
    let cpus = &config.cpus;
    let per_child_workers = |k: usize| workers.unwrap_or((cpus.len() / k).max(1));
    let k = match procs {
        Procs::Count(0) => bail!("--procs must be at least 1"),
        Procs::Count(k) => k,
        Procs::Auto => {
            let Some(max) = config.max_sessions else {
                bail!("--procs auto needs --max-sessions (the number of sessions to size for)");
            };
            // Children get one worker each once there are more than CPUs.
            let capacity =
                limits::session_capacity(nofile, workers.unwrap_or(1), child_tables(config)).max(1);
            ((max as f64 * HEADROOM / capacity as f64).ceil() as usize).max(1)
        }
    };
    if k > 4096 {
        bail!("--procs {k} is more than 4096 processes");
    }
    let workers = per_child_workers(k);
    let capacity = limits::session_capacity(nofile, workers, child_tables(config));
    let share = match config.max_sessions {
        Some(max) => ((max as f64 * HEADROOM / k as f64).ceil() as u64).min(capacity),
        None => capacity,
    };
    if let Some(max) = config.max_sessions {
        let total = share * k as u64;
        if total < max {
            eprintln!(
                "c10m-server: warning: {k} processes of at most {capacity} sessions each \
                 (RLIMIT_NOFILE {}) hold {total}, fewer than --max-sessions {max}; use --procs auto",
                nofile.soft
            );
        }
    }
    Ok((0..k)
        .map(|i| ChildSpec {
            cpus: (0..workers)
                .map(|j| cpus[(i * workers + j) % cpus.len().max(1)])
                .collect(),
            workers,
            max_sessions: share,
        })
        .collect())
}

/// What the reader thread of one child has seen on its stdout.
#[derive(Debug, Default)]
struct ChildOutput {
    ready: bool,
    /// `handed off …` (an upgrade moved this child's sessions).
    handed_off: Option<String>,
    /// `backend=…` from the child's start-up line.
    backend: String,
    latest: Option<Report>,
    /// The child's stdout reached its end: every line it wrote is above.
    closed: bool,
}

/// How long the supervisor waits, once a child has exited, for its reader
/// thread to take in the last lines the child wrote.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Waits (at most [`OUTPUT_DRAIN`]) until the reader thread of an exited
/// child has seen the end of its stdout. An exit is seen by `try_wait`
/// before the reader has necessarily read the last lines (the hand-off
/// count among them), so reading `output` right away could miss them.
fn drained(output: &Mutex<ChildOutput>) -> std::sync::MutexGuard<'_, ChildOutput> {
    let deadline = Instant::now() + OUTPUT_DRAIN;
    loop {
        let out = output.lock().unwrap_or_else(|e| e.into_inner());
        if out.closed || Instant::now() > deadline {
            return out;
        }
        drop(out);
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Slot {
    spec: ChildSpec,
    stats_path: PathBuf,
    child: Option<Child>,
    output: Arc<Mutex<ChildOutput>>,
    started: Instant,
    restart_at: Option<Instant>,
    failures: u32,
}

/// Runs K children until SIGINT/SIGTERM; returns the summed final report.
pub fn run(config: ServerConfig, procs: Procs, workers: Option<usize>) -> Result<Report> {
    crate::server::apply_sched(config.sched)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let nofile = limits::raise_nofile().context("reading RLIMIT_NOFILE")?;
    let specs = plan(&config, procs, workers, &nofile)?;
    let per_child = limits::session_capacity(&nofile, specs[0].workers, child_tables(&config));
    announce_limits(&nofile, per_child);
    let (_reservation, bound) = reserve_port(config.listen)?;
    let dir = tempfile::tempdir().context("creating a directory for child stats")?;
    let exe = std::env::current_exe().context("locating the c10m-server binary")?;
    let child_interval = if config.stats_interval.is_zero() {
        Duration::from_secs(1)
    } else {
        config.stats_interval.min(Duration::from_secs(1))
    };
    let own_baseline = ProcessUsage::read().rss_bytes;
    let mut slots: Vec<Slot> = specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| Slot {
            stats_path: dir.path().join(format!("child-{i}.json")),
            spec,
            child: None,
            output: Arc::default(),
            started: Instant::now(),
            restart_at: None,
            failures: 0,
        })
        .collect();
    let command_with =
        |slot: &Slot, exe: &Path| child_command(exe, &config, bound, slot, child_interval);
    let command = |slot: &Slot| command_with(slot, &exe);
    let upgrades = crate::upgrade::Upgrades::listen()?;
    for slot in &mut slots {
        let cmd = command(slot);
        start(slot, cmd)?;
    }
    if let Err(e) = wait_ready(&mut slots, &stop) {
        stop_all(&mut slots);
        return Err(e);
    }
    let max_sessions: u64 = slots.iter().map(|s| s.spec.max_sessions).sum();
    let backend = slots[0]
        .output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .backend
        .clone();
    announce_listening(
        &config,
        bound,
        &format!(
            "backend={backend} procs={} workers={}",
            slots.len(),
            slots[0].spec.workers
        ),
        max_sessions,
    );

    let started = Instant::now();
    let mut totals = Totals::default();
    let mut last: Option<Report> = None;
    let mut next_line = started + config.stats_interval;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(request) = upgrades.poll() {
            let (binary, reply) = match request {
                crate::upgrade::Request::Spawn { binary, reply } => (binary, reply),
                crate::upgrade::Request::Takeover { conn, .. } => {
                    let _ = crate::handoff::send_control(
                        std::os::fd::AsFd::as_fd(&conn),
                        &crate::handoff::Control::Abort {
                            why: "a supervisor holds no sessions: upgrade it with \
                                  `c10m-server upgrade --pid` (it upgrades each child)"
                                .into(),
                        },
                        &[],
                    );
                    continue;
                }
            };
            let program = binary.clone().unwrap_or_else(|| exe.clone());
            let outcome = upgrade_children(&mut slots, &mut totals, &program, &command_with);
            match &outcome {
                Ok(message) => println!("c10m-server: {message}"),
                Err(e) => eprintln!("c10m-server: upgrade stopped: {e:#}"),
            }
            flush_stdout();
            crate::upgrade::answer(reply.as_ref(), &outcome);
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            supervise(i, slot, &mut totals, &command)?;
        }
        crate::metrics::publish_with(|| totals.report(&slots, own_baseline, started, max_sessions));
        if !config.stats_interval.is_zero() && Instant::now() >= next_line {
            let r = totals.report(&slots, own_baseline, started, max_sessions);
            print_stats(&r, last.as_ref(), config.stats_format);
            last = Some(r);
            next_line += config.stats_interval;
        }
    }
    stop_all(&mut slots);
    // The children's final stats files replace their last periodic lines.
    for slot in &mut slots {
        if let Some(report) = read_report(&slot.stats_path) {
            slot.output.lock().unwrap_or_else(|e| e.into_inner()).latest = Some(report);
        }
    }
    let report = totals.report(&slots, own_baseline, started, max_sessions);
    println!("final {}", report.line(None));
    flush_stdout();
    if let Some(path) = &config.stats_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing stats to {}", path.display()))?;
    }
    Ok(report)
}

fn child_command(
    exe: &Path,
    config: &ServerConfig,
    bound: std::net::SocketAddr,
    slot: &Slot,
    interval: Duration,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--join")
        .args(["--listen", &bound.to_string()])
        .args(["--workers", &slot.spec.workers.to_string()])
        .args(["--cores", &cpu_list(&slot.spec.cpus)])
        .args(["--max-sessions", &slot.spec.max_sessions.to_string()])
        .args([
            "--idle-timeout",
            &humantime::format_duration(config.idle_timeout).to_string(),
        ])
        .args([
            "--frame-timeout",
            &humantime::format_duration(config.frame_timeout).to_string(),
        ])
        .args(["--max-frame", &config.max_frame.to_string()])
        .args(["--accept-rate", &config.accept_rate.to_string()])
        .args([
            "--retry-after",
            &humantime::format_duration(config.retry_after).to_string(),
        ])
        .args([
            "--max-lag",
            &humantime::format_duration(config.max_lag).to_string(),
        ])
        .args([
            "--overload-after",
            &humantime::format_duration(config.overload_after).to_string(),
        ])
        .args(["--spill-budget", &config.spill_budget.to_string()])
        .args(["--backlog", &config.backlog.to_string()])
        .args([
            "--stats-interval",
            &humantime::format_duration(interval).to_string(),
        ])
        .args(["--stats-format", "json"])
        .args(["--backend", &backend_arg(config.backend)])
        .args(
            config
                .uring_buffers
                .count
                .map(|n| ["--uring-buffers".to_string(), n.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(
            config
                .uring_buffers
                .size
                .map(|n| ["--uring-buffer-size".to_string(), n.to_string()])
                .into_iter()
                .flatten(),
        )
        .args(["--uring-turn-max", &config.uring_turn_max.to_string()])
        .args(["--uring-rings", &config.uring_rings.to_string()])
        .args(["--descriptors", child_tables(config).name()])
        .arg("--stats-json")
        .arg(&slot.stats_path)
        .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !config.pin {
        cmd.arg("--no-pin");
    }
    cmd.args(["--steer", config.steer.name()]);
    cmd.args(["--sched", config.sched.name()]);
    if let Some(svg) = crate::profile::for_child(&slot.stats_path) {
        cmd.arg("--profile").arg(svg);
    }
    cmd
}

/// The children's `--descriptors`: as asked, except that `auto` is
/// `plain`, since children are sized to fit their process's table.
fn child_tables(config: &ServerConfig) -> limits::Descriptors {
    match config.descriptors {
        limits::Descriptors::Auto => limits::Descriptors::Plain,
        asked => asked,
    }
}

fn backend_arg(choice: crate::sys::BackendChoice) -> String {
    use clap::ValueEnum;
    choice
        .to_possible_value()
        .map_or_else(|| "auto".to_string(), |v| v.get_name().to_string())
}

fn start(slot: &mut Slot, mut command: Command) -> Result<()> {
    let mut child = command.spawn().context("starting a child server process")?;
    let output: Arc<Mutex<ChildOutput>> = Arc::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let sink = output.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
            if line.starts_with("c10m-server listening on ") {
                out.ready = true;
                out.backend = line
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("backend="))
                    .unwrap_or("unknown")
                    .to_string();
            } else if let Some(said) = line.strip_prefix("c10m-server: handed off ") {
                out.handed_off = Some(said.to_string());
            } else if let Some(json) = line.strip_prefix("stats-json ") {
                if let Ok(report) = serde_json::from_str(json) {
                    out.latest = Some(report);
                }
            }
        }
        sink.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    });
    slot.child = Some(child);
    slot.output = output;
    slot.started = Instant::now();
    slot.restart_at = None;
    Ok(())
}

fn wait_ready(slots: &mut [Slot], stop: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut all = true;
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(status) = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("child server {i} exited during start-up ({status}); see its message above");
            }
            all &= slot.output.lock().unwrap_or_else(|e| e.into_inner()).ready;
        }
        if all {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            bail!("stopped during start-up");
        }
        if Instant::now() > deadline {
            bail!("child servers did not start within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a child's upgrade may take before its new process is killed
/// (the old one then serves on).
const CHILD_UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);

/// Upgrades every running child in turn: starts `program` as its
/// replacement with `--takeover <child pid>`, which takes the child's
/// listeners and sessions (see [`crate::handoff`]); the child exits once
/// the new process serves them. One child at a time, so a bad binary costs
/// nothing but its own start: the first failure stops the upgrade, with
/// that child (and every later one) still serving on the old binary.
fn upgrade_children(
    slots: &mut [Slot],
    totals: &mut Totals,
    program: &Path,
    command: &dyn Fn(&Slot, &Path) -> Command,
) -> Result<String> {
    let started = Instant::now();
    let (mut upgraded, mut sessions) = (0, 0u64);
    let mut uncounted = Vec::new(); // children whose count did not come
    let mut slowest = Duration::ZERO;
    for (i, slot) in slots.iter_mut().enumerate() {
        let Some(old_pid) = slot.child.as_ref().map(|c| c.id()) else {
            continue; // waiting for a restart, which starts `program` anyway
        };
        let t0 = Instant::now();
        let mut cmd = command(slot, program);
        cmd.arg("--takeover").arg(old_pid.to_string());
        let old_child = slot.child.take().expect("checked above");
        let old_output = std::mem::take(&mut slot.output);
        if let Err(e) = start(slot, cmd) {
            slot.child = Some(old_child);
            slot.output = old_output;
            return Err(e.context(format!("child {i}: {upgraded} children upgraded before it")));
        }
        let mut old_child = old_child;
        let outcome = loop {
            let new_exited = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let old_exited = old_child.try_wait().ok().flatten();
            let ready = slot.output.lock().unwrap_or_else(|e| e.into_inner()).ready;
            if let Some(status) = new_exited {
                break Err(anyhow!("child {i}'s new process exited ({status}) before taking over; see its message above"));
            }
            if let (Some(status), true) = (old_exited, ready) {
                break if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!(
                        "child {i}'s old process exited {status} during its hand-off"
                    ))
                };
            }
            if t0.elapsed() > CHILD_UPGRADE_TIMEOUT {
                break Err(anyhow!(
                    "child {i} was not taken over within {CHILD_UPGRADE_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match outcome {
            Ok(()) => {
                // The old process has exited: its last lines (the hand-off
                // count, its last stats) are read in before they are used.
                let mut old_said = drained(&old_output);
                // The old process's counters stay in the totals; its
                // sessions are not lost: the new one holds them.
                let last = read_report(&slot.stats_path).or_else(|| old_said.latest.take());
                if let Some(r) = last {
                    totals.retire(&r);
                }
                match old_said
                    .handed_off
                    .as_deref()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                {
                    Some(n) => sessions += n,
                    None => uncounted.push(i),
                }
                slot.started = Instant::now();
                slot.failures = 0;
                upgraded += 1;
                slowest = slowest.max(t0.elapsed());
            }
            Err(e) => {
                // The old child serves on (it resumes by itself if it had
                // begun); the new process goes.
                if let Some(mut new) = slot.child.take() {
                    if new.try_wait().ok().flatten().is_none() {
                        let _ = new.kill();
                    }
                    let _ = new.wait();
                }
                slot.child = Some(old_child);
                slot.output = old_output;
                return Err(e.context(format!(
                    "{upgraded} children upgraded before it; it and the rest serve on the old binary"
                )));
            }
        }
    }
    totals.upgrades += 1;
    let unsaid = if uncounted.is_empty() {
        String::new()
    } else {
        format!(
            " (not counting children {uncounted:?}, which did not say how many they handed off)"
        )
    };
    Ok(format!(
        "upgraded {upgraded} children to {}: {sessions} sessions handed off{unsaid} in {} ms \
         (one child at a time; the slowest {} ms)",
        program.display(),
        started.elapsed().as_millis(),
        slowest.as_millis()
    ))
}

/// Counters of children that died, kept so totals never go backwards.
#[derive(Debug, Default)]
struct Totals {
    retired: Snapshot,
    retired_cpu: (f64, f64),
    restarts: u64,
    lost: u64,
    /// Upgrades in place that replaced every child.
    upgrades: u64,
}

impl Totals {
    /// Keeps the counters of a child that is gone (died, or handed its
    /// sessions to a new process); returns the sessions it held then.
    fn retire(&mut self, r: &Report) -> u64 {
        self.retired += r.totals.counters();
        self.retired_cpu.0 += r.cpu_user_s;
        self.retired_cpu.1 += r.cpu_sys_s;
        r.totals.sessions_open
    }

    fn report(&self, slots: &[Slot], own_baseline: u64, started: Instant, max: u64) -> Report {
        let latest: Vec<Option<Report>> = slots
            .iter()
            .map(|s| {
                s.output
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .latest
                    .clone()
            })
            .collect();
        let own = ProcessUsage::read();
        let mut usage = ProcessUsage {
            rss_bytes: own.rss_bytes,
            cpu_user_s: own.cpu_user_s + self.retired_cpu.0,
            cpu_sys_s: own.cpu_sys_s + self.retired_cpu.1,
        };
        let mut baseline = own_baseline;
        for r in latest.iter().flatten() {
            usage.rss_bytes += r.rss_bytes;
            usage.cpu_user_s += r.cpu_user_s;
            usage.cpu_sys_s += r.cpu_sys_s;
            baseline += r.rss_baseline_bytes;
        }
        let children: Vec<Snapshot> = latest
            .iter()
            .map(|r| r.as_ref().map(|r| r.totals).unwrap_or_default())
            .collect();
        let mut report = Report::new(children, usage, baseline);
        report.totals += self.retired;
        report.uptime_s = started.elapsed().as_secs_f64();
        report.max_sessions = max;
        report.procs = slots.len() as u64;
        report.restarts = self.restarts;
        report.sessions_lost = self.lost;
        report.upgrades = self.upgrades;
        report
    }
}

/// Notices a dead child, keeps its counters, and restarts it after a backoff.
fn supervise(
    i: usize,
    slot: &mut Slot,
    totals: &mut Totals,
    command: &dyn Fn(&Slot) -> Command,
) -> Result<()> {
    if let Some(child) = &mut slot.child {
        let Ok(Some(status)) = child.try_wait() else {
            return Ok(());
        };
        let lived = slot.started.elapsed();
        slot.child = None;
        let last = drained(&slot.output).latest.take();
        if let Some(r) = last {
            let open = totals.retire(&r);
            totals.lost += open;
        }
        slot.failures = if lived > STABLE_AFTER {
            1
        } else {
            slot.failures + 1
        };
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << (slot.failures - 1).min(16))
            .min(BACKOFF_MAX);
        eprintln!(
            "c10m-server: child {i} died ({status}) after {:.1}s; restarting in {backoff:?}",
            lived.as_secs_f64()
        );
        slot.restart_at = Some(Instant::now() + backoff);
    }
    if slot.restart_at.is_some_and(|at| Instant::now() >= at) {
        let cmd = command(slot);
        start(slot, cmd)?;
        totals.restarts += 1;
    }
    Ok(())
}

/// SIGTERM to every child, then wait (SIGKILL past the timeout) and reap.
fn stop_all(slots: &mut [Slot]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for slot in slots.iter() {
        if let Some(child) = &slot.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for slot in slots.iter_mut() {
        let Some(child) = &mut slot.child else {
            continue;
        };
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("c10m-server: child {} did not stop; killing it", child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        slot.child = None;
    }
}

fn read_report(path: &Path) -> Option<Report> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// In a child: ask for SIGTERM when the supervisor dies, and exit at once
/// if it is already gone (the request only covers a parent still alive).
pub fn bind_to_supervisor() -> Result<()> {
    let Some(pid) = std::env::var(SUPERVISOR_PID_ENV).ok() else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("setting the parent-death signal")?;
    if nix::unistd::getppid().as_raw().to_string() != pid {
        bail!("the supervisor (pid {pid}) is gone");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::StatsFormat;

    fn config(max: Option<u64>, cpus: Vec<usize>) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: cpus.len(),
            cpus,
            pin: true,
            steer: crate::listen::Steer::Hash,
            sched: crate::listen::Sched::Normal,
            max_sessions: max,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(10),
            accept_rate: 0,
            retry_after: Duration::from_secs(5),
            max_lag: crate::lag::DEFAULT_MAX_LAG,
            overload_after: crate::server::DEFAULT_OVERLOAD_AFTER,
            max_frame: 512,
            spill_budget: 1 << 20,
            backlog: 128,
            stats_interval: Duration::from_secs(1),
            stats_json: None,
            join: false,
            stats_format: StatsFormat::Text,
            backend: Default::default(),
            uring_buffers: Default::default(),
            uring_rings: 0,
            uring_turn_max: crate::sys::uring::TURN_MAX,
            descriptors: Default::default(),
            workers_given: false,
            takeover: None,
        }
    }

    const NOFILE: NoFile = NoFile {
        soft_before: 1024,
        soft: 20_000,
        hard: 20_000,
    };

    #[test]
    fn auto_sizes_a_million_sessions_with_headroom() {
        let specs = plan(
            &config(Some(1_000_000), vec![0, 1]),
            Procs::Auto,
            None,
            &NOFILE,
        )
        .unwrap();
        let capacity = limits::session_capacity(&NOFILE, 1, limits::Descriptors::Plain);
        assert_eq!(
            specs.len(),
            (1_100_000f64 / capacity as f64).ceil() as usize
        );
        let held: u64 = specs.iter().map(|s| s.max_sessions).sum();
        assert!(held >= 1_100_000, "{held}");
        assert!(specs
            .iter()
            .all(|s| s.max_sessions <= capacity && s.workers == 1));
        // Children alternate over the CPUs.
        assert_eq!(specs[0].cpus, [0]);
        assert_eq!(specs[1].cpus, [1]);
        assert_eq!(specs[2].cpus, [0]);
    }

    #[test]
    fn a_count_splits_cpus_and_sessions() {
        let specs = plan(
            &config(Some(15_000), vec![0, 1, 2, 3]),
            Procs::Count(2),
            None,
            &NOFILE,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].cpus, [0, 1]);
        assert_eq!(specs[1].cpus, [2, 3]);
        assert_eq!(specs[0].max_sessions, 8250);
        assert!(plan(&config(None, vec![0]), Procs::Auto, None, &NOFILE).is_err());
        assert!(plan(&config(None, vec![0]), Procs::Count(0), None, &NOFILE).is_err());
    }
}
