//! Fan-out to child processes (`--procs N`), and the layout of a run:
//! how many processes, how many driver threads each.
//!
//! RLIMIT_NOFILE bounds a descriptor table, not a process: each driver
//! thread unshares its table, so one process holds as many sessions as its
//! drivers' tables do ([`layout`]). Child processes remain for fault
//! isolation and for A/B runs against the multi-process layout.
//!
//! The parent re-executes itself as `c10m-loadgen run --child`, one child
//! per share of the drivers. Protocol, one line each:
//!
//! - parent → child stdin: a [`ChildOrder`] (JSON), later `go <epoch_ns>`
//!   (CLOCK_MONOTONIC is system-wide, so every process shares the epoch),
//!   and `stop` to end early. EOF on stdin also means stop.
//! - child → parent stdout: [`ChildMsg`] JSON lines: `ready` once its
//!   drivers are prepared (the parent takes the warm RSS baseline when all
//!   are), then a `tick` every second with cumulative counters and the
//!   interval's histograms (HdrHistogram V2, base64), the last one marked.
//!
//! The parent adds the histograms, so merged percentiles are exact. A child
//! dies with its parent (PR_SET_PDEATHSIG), and dropping a `ChildFleet`
//! kills and reaps whatever is left: no orphans.
#![forbid(unsafe_code)]

use crate::clock::RunClock;
use crate::fleet::{LocalFleet, Share, Snapshot};
use crate::scenario::{IoMode, RunConfig, UringRecv};
use crate::stats::{Counters, Histos};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Descriptors a driver thread's table holds besides its sessions: what
/// the process had open when the thread unshared its table (stdio, pipes,
/// the epoll and timerfd of drivers already prepared), its own epoll and
/// timerfd, and slack.
pub fn reserved_fds(threads: usize) -> u64 {
    64 + 4 * threads as u64
}

/// Sessions one driver thread holds: each driver has a descriptor table of
/// its own (`unshare(CLONE_FILES)`), bounded by RLIMIT_NOFILE like a
/// process's.
pub fn per_thread(nofile_hard: u64, threads: usize) -> u64 {
    nofile_hard.saturating_sub(reserved_fds(threads))
}

/// Most driver threads per process that `layout` picks by itself.
const MAX_THREADS: usize = 4096;

/// How the drivers reach their sockets, resolved from [`IoMode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverIo {
    /// A mio loop and a descriptor table per driver.
    #[default]
    Epoll,
    /// io_uring direct descriptors, `slots_per_ring` per ring, as many
    /// rings per driver as its sessions need; replies read as `recv` says.
    Uring {
        slots_per_ring: u32,
        recv: UringRecv,
    },
}

impl DriverIo {
    pub fn name(self) -> &'static str {
        match self {
            DriverIo::Epoll => "epoll",
            DriverIo::Uring { .. } => "uring",
        }
    }
}

/// Processes, drivers per process and their socket interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub procs: usize,
    pub threads: usize,
    pub io: DriverIo,
    /// Why this interface, one token: `epoll`, `uring`, `auto:fits-tables`,
    /// `auto:over-tables,io_uring`, `auto:over-tables,<why not io_uring>`.
    pub why: String,
}

/// The layout of `config` under a hard RLIMIT_NOFILE of `nofile_hard` on
/// `cores` CPUs. `uring(rings)` says whether io_uring can run that many
/// client rings in this process (kernel support, RLIMIT_MEMLOCK): `Err`
/// is a short token and a sentence.
///
/// - **epoll** ([`epoll_layout`]): a descriptor table per driver, as many
///   drivers as the sessions need tables.
/// - **uring**: one driver per CPU (or `--threads`), each with as many
///   rings of `nofile_hard` direct descriptors as its sessions need.
/// - **auto**: epoll while one driver per CPU holds the sessions; past
///   that io_uring (a thread per table costs 1.4× the CPU per heartbeat
///   of a few: results/direct/threads-per-core), or epoll's layout when
///   io_uring cannot run, with the reason in `why`.
pub fn layout(
    config: &RunConfig,
    nofile_hard: u64,
    cores: usize,
    uring: &dyn Fn(usize) -> Result<(), (String, String)>,
) -> Result<Layout> {
    let procs = config.procs.max(1);
    let threads = if config.threads > 0 {
        config.threads
    } else {
        (cores / procs).max(1)
    };
    let slots_per_ring = nofile_hard.clamp(1, MAX_RING_SLOTS) as u32;
    let rings = || {
        let share = config.sessions.div_ceil(procs as u64);
        let per_driver = share.div_ceil(threads as u64);
        procs * threads * per_driver.div_ceil(u64::from(slots_per_ring)).max(1) as usize
    };
    let epoll = |why: String| {
        let (procs, threads) = epoll_layout(config, nofile_hard, cores)?;
        Ok(Layout {
            procs,
            threads,
            io: DriverIo::Epoll,
            why,
        })
    };
    let on_uring = |why: String| Layout {
        procs,
        threads,
        io: DriverIo::Uring {
            slots_per_ring,
            recv: config.uring_recv,
        },
        why,
    };
    match config.io {
        IoMode::Epoll => epoll("epoll".into()),
        IoMode::Uring => match uring(rings()) {
            Ok(()) => Ok(on_uring("uring".into())),
            Err((_, text)) => bail!("--io uring: {text}; use --io epoll"),
        },
        IoMode::Auto => {
            let share = config.sessions.div_ceil(procs as u64);
            if per_thread(nofile_hard, threads) * threads as u64 >= share {
                return epoll("auto:fits-tables".into());
            }
            match uring(rings()) {
                Ok(()) => Ok(on_uring("auto:over-tables,io_uring".into())),
                Err((token, _)) => epoll(format!("auto:over-tables,{token}")),
            }
        }
    }
}

/// Most direct descriptors one ring's table takes (IORING_MAX_FIXED_FILES).
const MAX_RING_SLOTS: u64 = 1 << 20;

/// Processes and driver threads per process for `config` on epoll under a
/// hard RLIMIT_NOFILE of `nofile_hard` on `cores` CPUs.
///
/// RLIMIT_NOFILE bounds each descriptor table, and every driver thread has
/// its own, so one process holds any number of sessions: one process with
/// one driver per CPU, or as many drivers as the sessions need tables.
/// `--procs N` splits the drivers over N processes (for fault isolation or
/// A/B runs); an explicit `--threads` that cannot hold its share is
/// refused with the numbers.
pub fn epoll_layout(config: &RunConfig, nofile_hard: u64, cores: usize) -> Result<(usize, usize)> {
    let procs = config.procs.max(1);
    let share = config.sessions.div_ceil(procs as u64);
    if config.threads > 0 {
        let t = config.threads;
        let each = per_thread(nofile_hard, t);
        if each * t as u64 >= share {
            return Ok((procs, t));
        }
        let need = fitting_threads(share, nofile_hard, t);
        bail!(
            "RLIMIT_NOFILE hard limit is {nofile_hard}: each driver thread's descriptor table \
             holds at most {each} sessions ({} kept back), so {t} thread(s) per process hold \
             {}, and each of {procs} process(es) must hold {share}; use --threads {} (or leave \
             it unset), or raise the hard RLIMIT_NOFILE",
            reserved_fds(t),
            each * t as u64,
            need.map_or_else(|| format!("> {MAX_THREADS}"), |n| n.to_string()),
        );
    }
    let floor = (cores / procs).max(1);
    match fitting_threads(share, nofile_hard, floor) {
        Some(t) => Ok((procs, t)),
        None => bail!(
            "RLIMIT_NOFILE hard limit is {nofile_hard}: {share} sessions per process would need \
             over {MAX_THREADS} driver threads (each table keeps {} descriptors back); raise \
             the hard RLIMIT_NOFILE or use more --procs",
            reserved_fds(MAX_THREADS)
        ),
    }
}

/// The fewest threads, at least `floor`, whose tables hold `sessions`.
fn fitting_threads(sessions: u64, nofile_hard: u64, floor: usize) -> Option<usize> {
    let mut t = floor.max(1);
    while t <= MAX_THREADS {
        let each = per_thread(nofile_hard, t);
        if each * t as u64 >= sessions {
            return Some(t);
        }
        // More threads keep more back in each table: step up and re-check.
        t = t.max(sessions.div_ceil(each.max(1)) as usize).max(t + 1);
    }
    None
}

/// What a child is told to do (its first stdin line).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildOrder {
    pub config: RunConfig,
    pub index: usize,
    pub procs: usize,
    pub threads: usize,
    #[serde(default)]
    pub io: DriverIo,
}

/// A child's stdout line. (One a second: the size gap between variants
/// does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ChildMsg {
    Ready,
    Tick {
        counters: Counters,
        histos: [String; 3],
        first_errors: BTreeMap<String, String>,
        last: bool,
    },
    Failed {
        error: String,
    },
}

#[allow(clippy::large_enum_variant)]
enum Event {
    Msg(ChildMsg),
    Gone,
}

/// The children of a fanned-out run; see the module docs.
pub struct ChildFleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Event)>,
    totals: Vec<Counters>,
    done: Vec<bool>,
    failures: Vec<String>,
}

impl ChildFleet {
    /// Spawns `procs` children and waits until every one is ready.
    pub fn start(
        config: &RunConfig,
        procs: usize,
        threads: usize,
        io: DriverIo,
    ) -> Result<ChildFleet> {
        let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
        let (tx, rx) = mpsc::channel();
        let mut fleet = ChildFleet {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            totals: vec![Counters::default(); procs],
            done: vec![false; procs],
            failures: Vec::new(),
        };
        for index in 0..procs {
            let mut child = Command::new(&exe)
                .args(["run", "--child"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("cannot start child process {index}"))?;
            let mut stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            fleet.children.push(child);
            let order = ChildOrder {
                config: config.clone(),
                index,
                procs,
                threads,
                io,
            };
            writeln!(stdin, "{}", serde_json::to_string(&order)?)?;
            fleet.stdins.push(Some(stdin));
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let event = match serde_json::from_str::<ChildMsg>(&line) {
                        Ok(msg) => Event::Msg(msg),
                        Err(e) => Event::Msg(ChildMsg::Failed {
                            error: format!("unreadable line from child: {e}"),
                        }),
                    };
                    if tx.send((index, event)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, Event::Gone));
            });
        }
        let mut ready = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ready < procs {
            let left = deadline.saturating_duration_since(Instant::now());
            match fleet.rx.recv_timeout(left) {
                Ok((_, Event::Msg(ChildMsg::Ready))) => ready += 1,
                Ok((i, Event::Msg(ChildMsg::Failed { error }))) => {
                    bail!("child {i} failed: {error}")
                }
                Ok((i, _)) => bail!("child {i} exited while starting"),
                Err(_) => bail!("children not ready after 60 s"),
            }
        }
        Ok(fleet)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    fn tell_all(&mut self, line: &str) {
        for stdin in self.stdins.iter_mut().flatten() {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// Starts every child on the run's epoch.
    pub fn go(&mut self, clock: RunClock) {
        self.tell_all(&format!("go {}", clock.epoch_ns()));
    }

    pub fn stop(&mut self) {
        self.tell_all("stop");
    }

    /// True once every child sent its last tick or exited.
    pub fn finished(&self) -> bool {
        self.done.iter().all(|d| *d)
    }

    /// Adds every tick received so far into `snap`; waits at most `wait`
    /// for the first one.
    pub fn collect(&mut self, snap: &mut Snapshot, wait: Duration) {
        let mut next = self.rx.recv_timeout(wait).ok();
        while let Some((i, event)) = next {
            match event {
                Event::Msg(ChildMsg::Tick {
                    counters,
                    histos,
                    first_errors,
                    last,
                }) => {
                    self.totals[i] = counters;
                    match Histos::decode(&histos) {
                        Ok(h) => snap.histos.add(&h),
                        Err(e) => self.failures.push(format!("child {i}: {e}")),
                    }
                    for (k, v) in first_errors {
                        snap.first_errors.entry(k).or_insert(v);
                    }
                    self.done[i] |= last;
                }
                Event::Msg(ChildMsg::Failed { error }) => {
                    self.failures.push(format!("child {i}: {error}"))
                }
                Event::Msg(ChildMsg::Ready) => {}
                Event::Gone => {
                    if !self.done[i] {
                        self.failures
                            .push(format!("child {i} exited before its last report"));
                    }
                    self.done[i] = true;
                }
            }
            next = self.rx.try_recv().ok();
        }
        snap.counters = Counters::default();
        for t in &self.totals {
            snap.counters.add(t);
        }
    }

    /// Waits (until `deadline`) for every child's last tick and exit.
    pub fn join(mut self, snap: &mut Snapshot, deadline: Instant) -> Result<()> {
        while !self.finished() && Instant::now() < deadline {
            self.collect(snap, Duration::from_millis(200));
        }
        self.stdins.clear();
        for (i, child) in self.children.iter_mut().enumerate() {
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => self
                    .failures
                    .push(format!("child {i} exited with {status}")),
                Err(e) => self.failures.push(format!("child {i}: {e}")),
            }
        }
        self.children.clear();
        if !self.finished() {
            self.failures
                .push("children did not finish by the run's deadline".into());
        }
        match self.failures.first() {
            None => Ok(()),
            Some(first) => Err(anyhow!(
                "{first} ({} failure(s) in all)",
                self.failures.len()
            )),
        }
    }
}

impl Drop for ChildFleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `--child` side: run one share of the drivers and report on stdout.
pub fn child_main() -> Result<()> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let mut lines = BufReader::new(std::io::stdin()).lines();
    let first = lines.next().context("no order on stdin")??;
    let order: ChildOrder = serde_json::from_str(&first).context("bad child order")?;
    let result = run_child(order, lines);
    if let Err(e) = &result {
        emit(&ChildMsg::Failed {
            error: format!("{e:#}"),
        });
    }
    result
}

fn emit(msg: &ChildMsg) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn run_child(
    order: ChildOrder,
    mut lines: std::io::Lines<BufReader<std::io::Stdin>>,
) -> Result<()> {
    let config = order.config;
    crate::host::raise_nofile();
    let plan = Arc::new(crate::run::address_plan(&config)?);
    let model = Arc::new(config.model());
    let share = Share {
        index: order.index,
        procs: order.procs,
        threads: order.threads,
        io: order.io,
    };
    let mut fleet = LocalFleet::start(&config, plan, model, share)?;
    // Warm the per-second path (collect, encode) before the parent's baseline.
    let mut snap = Snapshot::default();
    fleet.collect(&mut snap);
    let _ = Histos::every_bucket().encode();
    emit(&ChildMsg::Ready);
    let go = lines.next().context("no go line")??;
    let epoch: u64 = go
        .strip_prefix("go ")
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("bad go line {go:?}"))?;
    let clock = RunClock::from_epoch_ns(epoch);
    fleet.go(clock);
    // This thread forwards the drivers' reports each second: like the
    // parent's monitor, it must not be starved by them (drivers were spawned
    // above and keep their nice value).
    let _ = c10m_server::sys::set_thread_nice(crate::run::MONITOR_NICE);
    let stopper = fleet.stop_handle();
    std::thread::spawn(move || {
        for line in lines {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        stopper.stop(); // "stop", or the parent is gone
    });
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone())?;
    }
    let mut second = 1u64;
    while !fleet.finished() {
        if signalled.load(Ordering::Relaxed) {
            fleet.stop_handle().stop();
        }
        let due_us = second * 1_000_000 + 50_000;
        let now_us = clock.now_us();
        if now_us >= due_us {
            fleet.collect(&mut snap);
            emit_tick(&snap, false);
            snap.clear();
            snap.first_errors.clear();
            // Late by whole seconds (a starved host): one tick covers them.
            second = (now_us - 50_000) / 1_000_000 + 1;
            continue;
        }
        // Sleep to the next report, waking at least every 100 ms for a stop
        // or the fleet's end (not every 20 ms: with 50 such processes on 2
        // cores, idle wake-ups are a measurable share of the CPU).
        std::thread::sleep(Duration::from_micros((due_us - now_us).min(100_000)));
    }
    fleet.join(&mut snap)?;
    emit_tick(&snap, true);
    Ok(())
}

fn emit_tick(snap: &Snapshot, last: bool) {
    emit(&ChildMsg::Tick {
        counters: snap.counters.clone(),
        histos: snap.histos.encode(),
        first_errors: snap.first_errors.clone(),
        last,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    fn config(sessions: u64, procs: Option<&str>) -> RunConfig {
        let args = RunArgs {
            sessions: Some(sessions),
            procs: procs.map(String::from),
            progress: "off".into(),
            ..RunArgs::default()
        };
        RunConfig::resolve(&args).unwrap()
    }

    fn with_threads(sessions: u64, procs: Option<&str>, threads: usize) -> RunConfig {
        RunConfig {
            threads,
            ..config(sessions, procs)
        }
    }

    #[test]
    fn auto_is_one_process_with_a_descriptor_table_per_driver() {
        assert_eq!(
            epoll_layout(&config(15_000, None), 20_000, 2).unwrap(),
            (1, 2)
        );
        // 100 000 sessions: 19 912 per table with 6 threads; 5 would do
        // for the sessions but keep less back, so the count is checked.
        let (procs, threads) = epoll_layout(&config(100_000, None), 20_000, 2).unwrap();
        assert_eq!((procs, threads), (1, 6));
        assert!(per_thread(20_000, 5) * 5 < 100_000);
        assert!(per_thread(20_000, 6) * 6 >= 100_000);
        let (_, t) = epoll_layout(&config(1_000_000, None), 20_000, 2).unwrap();
        assert_eq!(t, 51);
        assert!(per_thread(20_000, t) * t as u64 >= 1_000_000);
        assert!(per_thread(20_000, t - 1) * (t as u64 - 1) < 1_000_000);
        assert_eq!(
            epoll_layout(&config(1_000_000, None), 1_048_576, 24).unwrap(),
            (1, 24)
        );
    }

    #[test]
    fn explicit_processes_split_the_drivers() {
        assert_eq!(
            epoll_layout(&config(30_000, Some("2")), 20_000, 2).unwrap(),
            (2, 1)
        );
        assert_eq!(
            epoll_layout(&config(60_000, Some("4")), 20_000, 2).unwrap(),
            (4, 1)
        );
        assert_eq!(
            epoll_layout(&config(100_000, Some("2")), 20_000, 2).unwrap(),
            (2, 3)
        );
    }

    #[test]
    fn explicit_threads_that_cannot_fit_are_refused_with_numbers() {
        let err = epoll_layout(&with_threads(30_000, Some("1"), 1), 20_000, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RLIMIT_NOFILE hard limit is 20000"), "{err}");
        assert!(err.contains("holds at most 19932 sessions"), "{err}");
        assert!(err.contains("use --threads 2"), "{err}");
        assert_eq!(
            epoll_layout(&with_threads(30_000, Some("1"), 2), 20_000, 2).unwrap(),
            (1, 2)
        );
        let err = epoll_layout(&config(10_000, None), 100, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over 4096 driver threads"), "{err}");
    }

    fn with_io(sessions: u64, io: IoMode) -> RunConfig {
        RunConfig {
            io,
            ..config(sessions, None)
        }
    }

    #[test]
    fn auto_io_keeps_epoll_while_a_driver_per_cpu_holds_the_sessions() {
        let no_uring = |_: usize| Err(("io_uring-missing".to_string(), "no".to_string()));
        let uring_ok = |_: usize| Ok(());
        let l = layout(&with_io(30_000, IoMode::Auto), 20_000, 2, &uring_ok).unwrap();
        assert_eq!(
            (l.io, l.threads, l.why.as_str()),
            (DriverIo::Epoll, 2, "auto:fits-tables")
        );
        // A million on 2 CPUs: 2 drivers of 25 rings of 20 000 slots.
        let rings = std::cell::Cell::new(0);
        let counting = |n: usize| {
            rings.set(n);
            Ok(())
        };
        let l = layout(&with_io(1_000_000, IoMode::Auto), 20_000, 2, &counting).unwrap();
        assert_eq!(
            (l.procs, l.threads, l.io),
            (
                1,
                2,
                DriverIo::Uring {
                    slots_per_ring: 20_000,
                    recv: UringRecv::Deferred,
                }
            )
        );
        assert_eq!(l.why, "auto:over-tables,io_uring");
        assert_eq!(rings.get(), 50);
        // Without io_uring: epoll's table per driver, and the reason.
        let l = layout(&with_io(1_000_000, IoMode::Auto), 20_000, 2, &no_uring).unwrap();
        assert_eq!((l.io, l.threads), (DriverIo::Epoll, 51));
        assert_eq!(l.why, "auto:over-tables,io_uring-missing");
    }

    #[test]
    fn forced_io_is_kept_or_refused_in_words() {
        let no_uring =
            |_: usize| Err(("memlock".to_string(), "RLIMIT_MEMLOCK is 8 KiB".to_string()));
        let uring_ok = |_: usize| Ok(());
        let l = layout(&with_io(100, IoMode::Uring), 20_000, 2, &uring_ok).unwrap();
        assert_eq!(
            (l.io.name(), l.threads, l.why.as_str()),
            ("uring", 2, "uring")
        );
        // The way replies are read is the config's.
        let armed = RunConfig {
            uring_recv: UringRecv::Armed,
            ..with_io(100, IoMode::Uring)
        };
        let l = layout(&armed, 20_000, 2, &uring_ok).unwrap();
        assert!(
            matches!(
                l.io,
                DriverIo::Uring {
                    recv: UringRecv::Armed,
                    ..
                }
            ),
            "{l:?}"
        );
        let l = layout(&with_io(1_000_000, IoMode::Epoll), 20_000, 2, &uring_ok).unwrap();
        assert_eq!((l.io, l.threads), (DriverIo::Epoll, 51));
        let err = layout(&with_io(100, IoMode::Uring), 20_000, 2, &no_uring)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--io uring: RLIMIT_MEMLOCK is 8 KiB"), "{err}");
        assert!(err.contains("use --io epoll"), "{err}");
    }

    #[test]
    fn child_messages_round_trip() {
        let mut h = Histos::new();
        h.rtt.record(42).unwrap();
        let msg = ChildMsg::Tick {
            counters: Counters {
                heartbeats_sent: 3,
                ..Counters::default()
            },
            histos: h.encode(),
            first_errors: BTreeMap::new(),
            last: true,
        };
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<ChildMsg>(&line).unwrap() {
            ChildMsg::Tick {
                counters,
                histos,
                last,
                ..
            } => {
                assert!(last);
                assert_eq!(counters.heartbeats_sent, 3);
                assert_eq!(Histos::decode(&histos).unwrap().rtt.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
