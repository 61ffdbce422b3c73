//! `c10m-loadgen run`, parent side: check the plan, start the fleet (local
//! threads or child processes), take the warm baseline, start the clock,
//! collect one snapshot per second until the fleet finishes, then write the
//! results and judge the thresholds.
//!
//! The monitor samples one second after each whole second of the run plus
//! 150 ms (drivers publish on the second; children forward 50 ms later).
//! The "held" measurements (RSS, slab, server RSS and CPU) are taken at the
//! last sample inside the hold, when every session is still open.
#![forbid(unsafe_code)]

use crate::cli::RunArgs;
use crate::clock::RunClock;
use crate::fleet::{LocalFleet, Share, Snapshot};
use crate::host::{self, HostFacts};
use crate::plan::{time_wait_headroom, AddressPlan, Cidr, DEFAULT_LOOPBACK_SOURCE};
use crate::procs::{self, ChildFleet};
use crate::progress::Progress;
use crate::report::{
    self, CpuMeasure, KernelMeasure, MonitorMeasure, RssMeasure, RunOutcome, ServerMeasure,
    StartMeasure,
};
use crate::results::{HlogFiles, Row, TimelineFile};
use crate::scenario::RunConfig;
use crate::stats::{Counters, Histos};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Exit status when a threshold fails.
pub const EXIT_THRESHOLD: i32 = 3;
/// Exit status after SIGINT/SIGTERM (results are still written).
pub const EXIT_INTERRUPTED: i32 = 130;
/// TCP_TIMEWAIT_LEN.
const TIME_WAIT_MS: f64 = 60_000.0;
/// The monitor thread's nice value where the host allows it (root).
pub const MONITOR_NICE: i32 = -10;

/// Which second a timeline row stands for. The monitor aims at 150 ms past
/// each whole second; on a saturated host it can wake seconds late, and a
/// row labelled by its loop count would then put everything after it at the
/// wrong time (the million campaign's first runs: rows minutes behind, the
/// hold-end memory sample taken during the drain). A late row is labelled
/// with the second it was really taken in and covers every second since the
/// previous row, its rates divided by that span.
#[derive(Debug, Default)]
struct RowClock {
    last_t_s: u64,
    late_rows: u64,
    max_late_ms: u64,
}

impl RowClock {
    /// Notes how late the monitor woke for a sample due at `due_us`.
    fn woke(&mut self, due_us: u64, now_us: u64) {
        self.max_late_ms = self.max_late_ms.max(now_us.saturating_sub(due_us) / 1_000);
    }

    /// `(t_s, span_s)` of the row aimed at second `aimed`, its data read at
    /// `now_us`: the row covers `[t_s - span_s, t_s)`.
    fn row(&mut self, aimed: u64, now_us: u64) -> (u64, u64) {
        let real = now_us.saturating_sub(150_000) / 1_000_000;
        let t_s = aimed.max(real).max(self.last_t_s + 1);
        if t_s > aimed {
            self.late_rows += 1;
        }
        let span = t_s - self.last_t_s;
        self.last_t_s = t_s;
        (t_s, span)
    }
}

/// The checked address plan of `config` on this host.
/// Wall-clock time now, in ms since the Unix epoch.
fn unix_ms_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Sleeps until the wall-clock time `ms` (ms since the Unix epoch): in
/// steps of at most 100 ms (a signal ends the wait), the last 2 ms
/// spinning, so that shards on hosts whose clocks agree start within a
/// millisecond of each other. A time already past returns at once (the
/// summary's `start.late_ms` says by how much); one more than a day ahead
/// is refused as a mistake.
fn wait_until_unix_ms(ms: u64, signalled: &AtomicBool) -> Result<()> {
    let target = ms as f64;
    let ahead = target - unix_ms_now();
    if ahead > 86_400_000.0 {
        anyhow::bail!(
            "--start-at is {:.0} s ahead (more than a day): check the time and its zone",
            ahead / 1e3
        );
    }
    loop {
        let left = target - unix_ms_now();
        if left <= 0.0 || signalled.load(Ordering::Relaxed) {
            return Ok(());
        }
        if left > 2.0 {
            std::thread::sleep(Duration::from_secs_f64(((left - 2.0) / 1e3).min(0.1)));
        } else {
            std::hint::spin_loop();
        }
    }
}

pub fn address_plan(config: &RunConfig) -> Result<AddressPlan> {
    let range = HostFacts::probe().port_range();
    let churn_mean = config.churn.as_ref().map(|c| c.mean_ms as f64);
    let headroom = time_wait_headroom(
        config.sessions,
        churn_mean,
        config.outage_fraction(),
        TIME_WAIT_MS,
    );
    let mut source = config
        .source
        .as_deref()
        .map(str::parse::<Cidr>)
        .transpose()?;
    if let Some(shard) = config.shard {
        // Each shard gets its own block of the source range (the default
        // loopback one too), so shards on one host never share a 4-tuple.
        let loopback = config.targets.iter().all(|t| t.ip().is_loopback());
        if source.is_none() && loopback {
            source = Some(DEFAULT_LOOPBACK_SOURCE.parse()?);
        }
        source = source
            .map(|c| c.block(shard.index, shard.count))
            .transpose()?;
    }
    let mut plan = AddressPlan::new(
        &config.targets,
        source,
        range,
        config.sessions,
        headroom,
        config.allow_remote,
    )?;
    plan.shards = config.shard.map_or(1, |s| s.count);
    Ok(plan)
}

enum Fleet {
    Local(LocalFleet),
    Children(ChildFleet),
}

impl Fleet {
    fn go(&mut self, clock: RunClock) {
        match self {
            Fleet::Local(f) => f.go(clock),
            Fleet::Children(f) => f.go(clock),
        }
    }

    fn collect(&mut self, snap: &mut Snapshot, wait: Duration) {
        match self {
            Fleet::Local(f) => f.collect(snap),
            Fleet::Children(f) => f.collect(snap, wait),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Fleet::Local(f) => f.finished(),
            Fleet::Children(f) => f.finished(),
        }
    }

    fn stop(&mut self) {
        match self {
            Fleet::Local(f) => f.stop_handle().stop(),
            Fleet::Children(f) => f.stop(),
        }
    }

    /// Every loadgen process: this one and its children.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Fleet::Children(f) = self {
            pids.extend(f.pids());
        }
        pids
    }

    fn join(self, snap: &mut Snapshot, deadline: Instant) -> Result<()> {
        match self {
            Fleet::Local(f) => f.join(snap),
            Fleet::Children(f) => f.join(snap, deadline),
        }
    }
}

fn rss_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| host::rss_bytes(*p)).sum()
}

/// What is sampled at the warm baseline and again during the hold.
#[derive(Debug, Clone, Default)]
struct Sample {
    loadgen_rss: u64,
    loadgen_anon: u64,
    open: u64,
    /// Summed over the server's process tree (a supervisor and its
    /// children, or the one process).
    server_rss: u64,
    /// PSS over the same processes (only in a full sample).
    server_pss: u64,
    loadgen_pss: u64,
    server_cpu_s: f64,
    loadgen_cpu_s: f64,
    server_procs: usize,
    answered: u64,
    at: Option<Instant>,
    slab: Option<std::collections::BTreeMap<String, u64>>,
    mem_available: u64,
}

/// `full`: also the slab caches, MemAvailable and PSS (the baseline and
/// the held sample), which cost more to read than a per-second sample may.
fn sample(pids: &[u32], server: Option<u32>, counters: &Counters, full: bool) -> Sample {
    let kernel = full;
    let server_pids = server.map(host::process_tree).unwrap_or_default();
    let pss = |pids: &[u32]| -> u64 {
        if full {
            pids.iter().filter_map(|p| host::pss_bytes(*p)).sum()
        } else {
            0
        }
    };
    Sample {
        server_pss: pss(&server_pids),
        loadgen_pss: pss(pids),
        loadgen_rss: rss_sum(pids),
        loadgen_anon: pids.iter().filter_map(|p| host::rss_anon_bytes(*p)).sum(),
        open: counters.open,
        server_rss: rss_sum(&server_pids),
        loadgen_cpu_s: pids.iter().filter_map(|p| host::cpu_seconds(*p)).sum(),
        server_cpu_s: server_pids
            .iter()
            .filter_map(|p| host::cpu_seconds(*p))
            .sum(),
        server_procs: server_pids.len(),
        answered: counters.heartbeats_answered,
        at: Some(Instant::now()),
        slab: if kernel { host::slab_bytes() } else { None },
        mem_available: if kernel {
            host::mem_available().unwrap_or(0)
        } else {
            0
        },
    }
}

/// Whether `rings` io_uring client rings can run here: the kernel runs the
/// whole client chain ([`c10m_server::sys::uring::client::client_probe`]),
/// and RLIMIT_MEMLOCK holds the rings where the process lacks CAP_IPC_LOCK.
fn uring_check(rings: usize) -> Result<(), (String, String)> {
    use c10m_server::sys::uring;
    // The limit first: the probe's own ring would fail on it too, as a
    // less telling ENOMEM.
    let memlock = c10m_server::limits::MemLock::raise();
    let per_ring = uring::client::ring_memlock_bytes(crate::driver::URING_BUFFERS);
    if let Some(fit) = memlock.rings_that_fit(per_ring) {
        if rings as u64 > fit {
            let need_kib = (rings as u64 * per_ring).div_ceil(1024);
            return Err((
                "memlock".to_string(),
                format!(
                    "RLIMIT_MEMLOCK is {} KiB (hard {} KiB) and this process lacks \
                     CAP_IPC_LOCK, so the kernel counts io_uring ring memory against it: \
                     {rings} client rings of ~{} KiB need {need_kib} KiB, and {fit} fit. Raise \
                     it (ulimit -l {need_kib}), grant CAP_IPC_LOCK, or use --io epoll",
                    memlock.soft / 1024,
                    memlock.hard / 1024,
                    per_ring.div_ceil(1024),
                ),
            ));
        }
    }
    uring::client::client_probe().map_err(|e| ("io_uring-missing".to_string(), e))
}

/// Runs `c10m-loadgen run`; returns the process exit status.
pub fn run_command(args: &RunArgs) -> Result<i32> {
    if args.child {
        procs::child_main()?;
        return Ok(0);
    }
    let config = RunConfig::resolve(args)?;
    let (_, hard) = host::raise_nofile();
    let facts = HostFacts::probe();
    let plan = Arc::new(address_plan(&config)?);
    let cores = c10m_server::sys::allowed_cpus().len();
    let layout = procs::layout(&config, hard, cores, &uring_check)?;
    let (procs, threads, io) = (layout.procs, layout.threads, layout.io);
    // With --start-at the run's epoch is that wall-clock time (the interval
    // logs' StartTime says so, and merge aligns on it).
    let started = match config.start_at_unix_ms {
        Some(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        None => SystemTime::now(),
    };
    let mut timeline = config
        .out
        .as_deref()
        .map(TimelineFile::create)
        .transpose()?;
    let mut hlog_files = config.out.as_deref().map(HlogFiles::create).transpose()?;
    let mut hlogs = hlog_files.as_mut().map(|f| f.begin(started)).transpose()?;
    let model = Arc::new(config.model());
    let mut fleet = if procs == 1 {
        let share = Share {
            index: 0,
            procs: 1,
            threads,
            io,
        };
        Fleet::Local(LocalFleet::start(&config, plan.clone(), model, share)?)
    } else {
        Fleet::Children(ChildFleet::start(&config, procs, threads, io)?)
    };

    // Warm baseline: the fleet is prepared, the monitor path has run once.
    let mut snap = Snapshot::default();
    let mut totals = Histos::new();
    // Rows after the one in which the last ramp session opened, up to the
    // hold's end, add into `full_hold`. Made (and its counts touched) here,
    // before the baseline: ~0.5 MB made later counted as per-session memory
    // (+9 B/session at 60 000 sessions, caught by the CI regression gate).
    let mut full_hold = Histos::new();
    fleet.collect(&mut snap, Duration::ZERO);
    totals.add(&snap.histos);
    if let Some(h) = hlogs.as_mut() {
        h.warm()?;
    }
    let pids = fleet.pids();
    // Twice: the first run of the sampling path leaves freed-but-resident
    // heap behind, which the held sample would otherwise count per session.
    sample(&pids, config.server_pid, &snap.counters, true);
    let baseline = sample(&pids, config.server_pid, &snap.counters, true);

    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone())?;
    }
    let metrics = args
        .metrics
        .map(|addr| c10m_server::metrics::announce(addr, "c10m-loadgen"))
        .transpose()
        .context("--metrics")?;
    if let Some(ms) = config.start_at_unix_ms {
        wait_until_unix_ms(ms, &signalled)?;
    }
    let clock = RunClock::start();
    let epoch_unix_ms = unix_ms_now();
    fleet.go(clock);
    let progress = Progress::new(&config.progress, config.sessions);
    let tl = config.timeline();

    // The monitor must not be starved by the fleet it measures (on a
    // saturated host a late monitor smears its rows and misses the hold-end
    // sample): as root, this thread gets a higher priority than the drivers.
    let monitor_nice = c10m_server::sys::set_thread_nice(MONITOR_NICE)
        .ok()
        .map(|()| MONITOR_NICE);
    let mut rows = RowClock::default();
    let mut prev = Counters::default();
    let (mut peak_open, mut conn_peak, mut hb_peak) = (0u64, 0u64, 0u64);
    let (mut ramp_seconds, mut ramp_connects, mut ramp_done) = (0u64, 0u64, false);
    // The CPU window: from the first sample past the nominal ramp end with
    // every ramp session open (connect work would otherwise be charged to
    // the heartbeats), else, if the ramp never completes before the hold
    // ends, from the first sample past the nominal ramp end.
    let mut window_start: Option<Sample> = None;
    let mut nominal_start: Option<Sample> = None;
    let mut all_open = false;
    let mut held: Option<Sample> = None;
    let mut held_sample_ms = 0u64;
    let mut stop_sent = false;
    let mut second = 1u64;
    loop {
        let due_us = second * 1_000_000 + 150_000;
        loop {
            if signalled.load(Ordering::Relaxed) && !stop_sent {
                fleet.stop();
                stop_sent = true;
            }
            let now = clock.now_us();
            if now >= due_us || fleet.finished() {
                break;
            }
            std::thread::sleep(Duration::from_micros((due_us - now).min(50_000)));
        }
        rows.woke(due_us, clock.now_us());
        fleet.collect(&mut snap, Duration::from_millis(300));
        let (t_s, span) = rows.row(second, clock.now_us());
        let per_s = |now: u64, before: u64| (now.saturating_sub(before) + span / 2) / span;
        let c = snap.counters.clone();
        let rtt = &snap.histos.rtt;
        let q = |q: f64| {
            if rtt.is_empty() {
                0
            } else {
                rtt.value_at_quantile(q)
            }
        };
        let row = Row {
            t_s,
            phase: config.phase_at(((t_s - 1) * 1_000) as u32).to_string(),
            sessions_open: c.open,
            connects_ok: c.connects_ok,
            connects_per_s: per_s(c.connects_ok, prev.connects_ok),
            heartbeats_sent_per_s: per_s(c.heartbeats_sent, prev.heartbeats_sent),
            heartbeats_answered_per_s: per_s(c.heartbeats_answered, prev.heartbeats_answered),
            rtt_p50_us: q(0.5),
            rtt_p99_us: q(0.99),
            rtt_max_us: if rtt.is_empty() { 0 } else { rtt.max() },
            errors_per_s: per_s(c.errors_total(), prev.errors_total()),
            errors_total: c.errors_total(),
            loadgen_rss_bytes: rss_sum(&pids),
            server_rss_bytes: config
                .server_pid
                .map_or(0, |p| rss_sum(&host::process_tree(p))),
        };
        totals.add(&snap.histos);
        if all_open && t_s * 1_000 <= u64::from(tl.hold_end_ms) {
            full_hold.add(&snap.histos);
        }
        all_open = all_open || c.ramp_connected >= config.sessions;
        if let Some(board) = &metrics {
            board.publish(crate::metrics::page(config.sessions, &c, &totals.rtt, &row));
        }
        if let Some(t) = timeline.as_mut() {
            t.row(&row)?;
        }
        if let Some(h) = hlogs.as_mut() {
            h.span(t_s, span, &snap.histos)?;
        }
        progress.update(&row);
        peak_open = peak_open.max(c.open);
        conn_peak = conn_peak.max(row.connects_per_s);
        hb_peak = hb_peak.max(row.heartbeats_answered_per_s);
        if !ramp_done {
            ramp_seconds += span;
            ramp_connects += c.connects_ok - prev.connects_ok;
            ramp_done = c.open >= config.sessions || t_s * 1_000 >= u64::from(tl.ramp_end_ms);
        }
        let sample_ms = t_s * 1_000 + 150;
        if sample_ms >= u64::from(tl.ramp_end_ms) && held.is_none() && window_start.is_none() {
            let ramp_complete = c.ramp_connected >= config.sessions;
            if ramp_complete || nominal_start.is_none() {
                let s = Some(sample(&pids, config.server_pid, &c, false));
                if ramp_complete {
                    window_start = s;
                } else {
                    nominal_start = s;
                }
            }
        }
        // The last row inside the hold (or, after a late wake-up, the first
        // past its end, which the summary then flags).
        if held.is_none() && sample_ms + 1_000 > u64::from(tl.hold_end_ms) {
            held = Some(sample(&pids, config.server_pid, &c, true));
            held_sample_ms = clock.now_us() / 1_000;
        }
        prev = c;
        snap.histos.reset();
        if fleet.finished() {
            break;
        }
        if t_s * 1_000 > u64::from(tl.deadline_ms) + 15_000 && !stop_sent {
            fleet.stop();
            stop_sent = true;
        }
        second = t_s + 1;
    }
    let cpu_window_from = if window_start.is_some() {
        "all sessions open"
    } else {
        "nominal end of the ramp (not every session opened)"
    };
    let window_start = window_start.or(nominal_start);
    let joined = fleet.join(&mut snap, Instant::now() + Duration::from_secs(30));
    progress.finish();
    totals.add(&snap.histos);
    let counters = snap.counters.clone();
    let held = held.unwrap_or_default();

    let outcome = RunOutcome {
        start: StartMeasure {
            epoch_unix_ms,
            intended_unix_ms: config.start_at_unix_ms,
        },
        host: facts,
        procs,
        threads,
        io: layout.io.name().into(),
        io_why: layout.why.clone(),
        uring_recv: match layout.io {
            procs::DriverIo::Uring { recv, .. } => Some(recv.name().into()),
            procs::DriverIo::Epoll => None,
        },
        histos: totals,
        full_hold,
        cpu_window_from,
        first_errors: snap.first_errors.clone(),
        peak_open,
        connect_rate_peak: conn_peak,
        connect_rate_mean: ramp_connects as f64 / ramp_seconds.max(1) as f64,
        ramp_seconds,
        heartbeat_rate_peak: hb_peak,
        loadgen: RssMeasure {
            baseline_bytes: baseline.loadgen_rss,
            held_bytes: held.loadgen_rss,
            sessions: held.open,
            processes: pids.len(),
            pss_bytes: held.loadgen_pss,
        },
        loadgen_anon: RssMeasure {
            baseline_bytes: baseline.loadgen_anon,
            held_bytes: held.loadgen_anon,
            sessions: held.open,
            processes: pids.len(),
            pss_bytes: 0,
        },
        server: config
            .server_pid
            .map(|pid| server_measure(pid, &baseline, window_start.as_ref(), &held)),
        kernel: kernel_measure(&baseline, &held, &plan),
        loadgen_cpu: {
            let start = window_start.as_ref().unwrap_or(&baseline);
            CpuMeasure {
                cpu_s: (held.loadgen_cpu_s - start.loadgen_cpu_s).max(0.0),
                heartbeats: held.answered.saturating_sub(start.answered),
            }
        },
        monitor: MonitorMeasure {
            nice: monitor_nice,
            late_rows: rows.late_rows,
            max_late_ms: rows.max_late_ms,
            held_sample_ms,
        },
        duration_s: clock.now_us() as f64 / 1e6,
        counters,
        config: config.clone(),
    };
    let summary = report::summary(&outcome);
    if let Some(dir) = &config.out {
        let path = dir.join("summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(hlogs);
    if let Some(f) = hlog_files {
        f.finish()?;
    }
    print!("{}", report::table(&summary));
    if let Some(dir) = &config.out {
        println!("  results in {}", dir.display());
    }
    joined?;
    let failed = report::threshold_failures(&config, &summary);
    if !failed.is_empty() {
        eprintln!("c10m-loadgen: threshold failed: {}", failed.join("; "));
        return Ok(EXIT_THRESHOLD);
    }
    if signalled.load(Ordering::Relaxed) {
        eprintln!("c10m-loadgen: interrupted; partial results written");
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(0)
}

fn server_measure(
    pid: u32,
    base: &Sample,
    window: Option<&Sample>,
    held: &Sample,
) -> ServerMeasure {
    let start = window.unwrap_or(base);
    ServerMeasure {
        pid,
        rss: RssMeasure {
            baseline_bytes: base.server_rss,
            held_bytes: held.server_rss,
            sessions: held.open,
            processes: held.server_procs,
            pss_bytes: held.server_pss,
        },
        cpu_s: (held.server_cpu_s - start.server_cpu_s).max(0.0),
        heartbeats: held.answered.saturating_sub(start.answered),
        window_s: match (start.at, held.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        },
    }
}

fn kernel_measure(base: &Sample, held: &Sample, plan: &AddressPlan) -> Option<KernelMeasure> {
    Some(KernelMeasure {
        slab_before: base.slab.clone()?,
        slab_held: held.slab.clone()?,
        mem_available_before: base.mem_available,
        mem_available_held: held.mem_available,
        connections: held.open,
        both_ends_local: plan.targets.iter().all(|t| t.ip().is_loopback()),
    })
}

#[cfg(test)]
mod tests {
    use super::RowClock;

    #[test]
    fn rows_on_time_cover_one_second_each() {
        let mut rows = RowClock::default();
        for second in 1..=5u64 {
            rows.woke(second * 1_000_000 + 150_000, second * 1_000_000 + 160_000);
            assert_eq!(rows.row(second, second * 1_000_000 + 400_000), (second, 1));
        }
        assert_eq!((rows.late_rows, rows.max_late_ms), (0, 10));
    }

    #[test]
    fn a_late_row_is_labelled_with_its_real_second_and_spans_the_gap() {
        let mut rows = RowClock::default();
        assert_eq!(rows.row(1, 1_200_000), (1, 1));
        // Aimed at second 2 but woke at 6.3 s: the row is second 6, covering 2..6.
        rows.woke(2_150_000, 6_300_000);
        assert_eq!(rows.row(2, 6_350_000), (6, 5));
        assert_eq!(rows.late_rows, 1);
        assert_eq!(rows.max_late_ms, 4_150);
        // The next row is aimed at 7 and on time again.
        assert_eq!(rows.row(7, 7_200_000), (7, 1));
        assert_eq!(rows.late_rows, 1);
    }
}
