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
use crate::plan::{time_wait_headroom, AddressPlan, Cidr};
use crate::procs::{self, ChildFleet};
use crate::progress::Progress;
use crate::report::{self, KernelMeasure, RssMeasure, RunOutcome, ServerMeasure};
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

/// The checked address plan of `config` on this host.
pub fn address_plan(config: &RunConfig) -> Result<AddressPlan> {
    let range = HostFacts::probe().port_range();
    let churn_mean = config.churn.as_ref().map(|c| c.mean_ms as f64);
    let headroom = time_wait_headroom(
        config.sessions,
        churn_mean,
        config.outage_fraction(),
        TIME_WAIT_MS,
    );
    let source = config
        .source
        .as_deref()
        .map(str::parse::<Cidr>)
        .transpose()?;
    Ok(AddressPlan::new(
        &config.targets,
        source,
        range,
        config.sessions,
        headroom,
        config.allow_remote,
    )?)
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
    server_cpu_s: f64,
    server_procs: usize,
    answered: u64,
    at: Option<Instant>,
    slab: Option<std::collections::BTreeMap<String, u64>>,
    mem_available: u64,
}

fn sample(pids: &[u32], server: Option<u32>, counters: &Counters, kernel: bool) -> Sample {
    let server_pids = server.map(host::process_tree).unwrap_or_default();
    Sample {
        loadgen_rss: rss_sum(pids),
        loadgen_anon: pids.iter().filter_map(|p| host::rss_anon_bytes(*p)).sum(),
        open: counters.open,
        server_rss: rss_sum(&server_pids),
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
    let (procs, threads) = procs::layout(&config, hard, cores)?;
    let started = SystemTime::now();
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
        };
        Fleet::Local(LocalFleet::start(&config, plan.clone(), model, share)?)
    } else {
        Fleet::Children(ChildFleet::start(&config, procs, threads)?)
    };

    // Warm baseline: the fleet is prepared, the monitor path has run once.
    let mut snap = Snapshot::default();
    let mut totals = Histos::new();
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
    let clock = RunClock::start();
    fleet.go(clock);
    let progress = Progress::new(&config.progress, config.sessions);
    let tl = config.timeline();

    let mut prev = Counters::default();
    let (mut peak_open, mut conn_peak, mut hb_peak) = (0u64, 0u64, 0u64);
    let (mut ramp_seconds, mut ramp_connects, mut ramp_done) = (0u64, 0u64, false);
    let mut window_start: Option<Sample> = None;
    let mut held: Option<Sample> = None;
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
        fleet.collect(&mut snap, Duration::from_millis(300));
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
            t_s: second,
            phase: config.phase_at(((second - 1) * 1_000) as u32).to_string(),
            sessions_open: c.open,
            connects_ok: c.connects_ok,
            connects_per_s: c.connects_ok - prev.connects_ok,
            heartbeats_sent_per_s: c.heartbeats_sent - prev.heartbeats_sent,
            heartbeats_answered_per_s: c.heartbeats_answered - prev.heartbeats_answered,
            rtt_p50_us: q(0.5),
            rtt_p99_us: q(0.99),
            rtt_max_us: if rtt.is_empty() { 0 } else { rtt.max() },
            errors_per_s: c.errors_total() - prev.errors_total(),
            errors_total: c.errors_total(),
            loadgen_rss_bytes: rss_sum(&pids),
            server_rss_bytes: config
                .server_pid
                .map_or(0, |p| rss_sum(&host::process_tree(p))),
        };
        totals.add(&snap.histos);
        if let Some(board) = &metrics {
            board.publish(crate::metrics::page(config.sessions, &c, &totals.rtt, &row));
        }
        if let Some(t) = timeline.as_mut() {
            t.row(&row)?;
        }
        if let Some(h) = hlogs.as_mut() {
            h.second(second, &snap.histos)?;
        }
        progress.update(&row);
        peak_open = peak_open.max(c.open);
        conn_peak = conn_peak.max(row.connects_per_s);
        hb_peak = hb_peak.max(row.heartbeats_answered_per_s);
        if !ramp_done {
            ramp_seconds += 1;
            ramp_connects += row.connects_per_s;
            ramp_done = c.open >= config.sessions || second * 1_000 >= u64::from(tl.ramp_end_ms);
        }
        let sample_ms = second * 1_000 + 150;
        if window_start.is_none() && sample_ms >= u64::from(tl.ramp_end_ms) {
            window_start = Some(sample(&pids, config.server_pid, &c, false));
        }
        let next_sample_ms = sample_ms + 1_000;
        if sample_ms <= u64::from(tl.hold_end_ms) && next_sample_ms > u64::from(tl.hold_end_ms) {
            held = Some(sample(&pids, config.server_pid, &c, true));
        }
        prev = c;
        snap.histos.reset();
        if fleet.finished() {
            break;
        }
        if second * 1_000 > u64::from(tl.deadline_ms) + 15_000 && !stop_sent {
            fleet.stop();
            stop_sent = true;
        }
        second += 1;
    }
    let joined = fleet.join(&mut snap, Instant::now() + Duration::from_secs(30));
    progress.finish();
    totals.add(&snap.histos);
    let counters = snap.counters.clone();
    let held = held.unwrap_or_default();

    let outcome = RunOutcome {
        host: facts,
        procs,
        threads,
        histos: totals,
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
        },
        loadgen_anon: RssMeasure {
            baseline_bytes: baseline.loadgen_anon,
            held_bytes: held.loadgen_anon,
            sessions: held.open,
            processes: pids.len(),
        },
        server: config
            .server_pid
            .map(|pid| server_measure(pid, &baseline, window_start.as_ref(), &held)),
        kernel: kernel_measure(&baseline, &held, &plan),
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
