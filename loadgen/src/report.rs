//! `summary.json` (the DESIGN.md results schema, plus a few keys), the CI
//! thresholds, and the short table `c10m-loadgen report` prints.
//!
//! Memory per session is computed the MEASURING.md way: VmRSS summed over
//! the role's processes with N sessions held and heartbeating, minus the
//! same processes warmed up with 0 sessions, divided by N.
#![forbid(unsafe_code)]

use crate::host::{HostFacts, CONNECTION_SLABS};
use crate::scenario::RunConfig;
use crate::stats::{percentiles, Counters, ErrorKind, HintContext, Histos};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// RSS of a role's processes, warm with 0 sessions and later with N.
#[derive(Debug, Clone, Default)]
pub struct RssMeasure {
    pub baseline_bytes: u64,
    pub held_bytes: u64,
    pub sessions: u64,
    pub processes: usize,
    /// PSS summed over the same processes at the held sample (0: not read).
    pub pss_bytes: u64,
}

impl RssMeasure {
    /// All-in: the whole PSS of the processes with sessions held, fixed
    /// costs (program, buffers, rings, one set per process) included, per
    /// session; `None` where [`Self::per_session`] is.
    pub fn pss_per_session_all_in(&self, min_sessions: u64) -> Option<f64> {
        if self.sessions == 0 || self.pss_bytes == 0 || self.sessions < min_sessions {
            return None;
        }
        Some(round1(self.pss_bytes as f64 / self.sessions as f64))
    }

    /// `None` when nothing was measured with sessions held (e.g. a run
    /// interrupted before the end of its hold), or when fewer than
    /// `min_sessions` were open at the sample: a per-session figure from a
    /// small fraction of the target says more about the sampling than about
    /// the sessions.
    pub fn per_session(&self, min_sessions: u64) -> Option<f64> {
        if self.sessions == 0 || self.held_bytes == 0 || self.sessions < min_sessions {
            return None;
        }
        let delta = self.held_bytes as f64 - self.baseline_bytes as f64;
        Some(round1(delta / self.sessions as f64))
    }
}

/// The server measured over the hold (`--server-pid`: that process and
/// every descendant, so a `--procs` supervisor with all its children).
#[derive(Debug, Clone, Default)]
pub struct ServerMeasure {
    pub pid: u32,
    pub rss: RssMeasure,
    /// utime + stime over the window, and heartbeats answered in it.
    pub cpu_s: f64,
    pub heartbeats: u64,
    pub window_s: f64,
}

/// Slab caches and MemAvailable, before the ramp and during the hold.
#[derive(Debug, Clone, Default)]
pub struct KernelMeasure {
    pub slab_before: BTreeMap<String, u64>,
    pub slab_held: BTreeMap<String, u64>,
    pub mem_available_before: u64,
    pub mem_available_held: u64,
    pub connections: u64,
    pub both_ends_local: bool,
}

/// When the run's epoch (the ramp's start) fell, in wall-clock time.
#[derive(Debug, Clone, Default)]
pub struct StartMeasure {
    /// ms since the Unix epoch.
    pub epoch_unix_ms: f64,
    /// `--start-at`, when given.
    pub intended_unix_ms: Option<u64>,
}

/// Everything a finished run measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub config: RunConfig,
    pub start: StartMeasure,
    pub host: HostFacts,
    pub procs: usize,
    pub threads: usize,
    /// The drivers' socket interface (`epoll` or `uring`) and why.
    pub io: String,
    pub io_why: String,
    /// How io_uring drivers read replies (`deferred`, `armed`); none on epoll.
    pub uring_recv: Option<String>,
    pub counters: Counters,
    pub histos: Histos,
    /// The intervals after every ramp session was open, up to the hold's
    /// end: the latency of the full population under its heartbeat load,
    /// without the ramp or the drain.
    pub full_hold: Histos,
    /// Where the CPU window starts: "all sessions open", or the nominal
    /// ramp end when the ramp never completed.
    pub cpu_window_from: &'static str,
    pub first_errors: BTreeMap<String, String>,
    pub peak_open: u64,
    pub connect_rate_peak: u64,
    pub connect_rate_mean: f64,
    pub ramp_seconds: u64,
    pub heartbeat_rate_peak: u64,
    pub loadgen: RssMeasure,
    /// The same with RssAnon instead of VmRSS.
    pub loadgen_anon: RssMeasure,
    pub server: Option<ServerMeasure>,
    pub kernel: Option<KernelMeasure>,
    /// The loadgen's own CPU over the same window as the server's.
    pub loadgen_cpu: CpuMeasure,
    pub monitor: MonitorMeasure,
    pub duration_s: f64,
}

/// utime + stime of a role's processes over the hold, and heartbeats
/// answered in it.
#[derive(Debug, Clone, Default)]
pub struct CpuMeasure {
    pub cpu_s: f64,
    pub heartbeats: u64,
}

impl CpuMeasure {
    pub fn us_per_heartbeat(&self) -> Option<f64> {
        (self.heartbeats > 0).then(|| round1(self.cpu_s * 1e6 / self.heartbeats as f64))
    }
}

/// How punctual the parent's per-second monitor was.
#[derive(Debug, Clone, Default)]
pub struct MonitorMeasure {
    /// The monitor thread's nice value, when it could be raised.
    pub nice: Option<i32>,
    /// Rows that covered more than one second (the monitor woke late).
    pub late_rows: u64,
    pub max_late_ms: u64,
    /// When the held sample (memory, slab, CPU window end) was taken, in ms
    /// of the run.
    pub held_sample_ms: u64,
}

/// What summary.json says of `heartbeats.unanswered`.
pub const UNANSWERED_NOTE: &str =
    "unanswered = sent - answered: outstanding when their connection \
    failed or a planned close went ahead after waiting 2 s for them (unanswered_at_close, also \
    lost_on_close), or when the run ended (unanswered_at_end). RTT percentiles count answered \
    heartbeats only: with unanswered > 0 they leave the unanswered out and are lower bounds";

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Builds summary.json.
pub fn summary(o: &RunOutcome) -> Value {
    let c = &o.counters;
    let (lo, hi) = o.host.port_range();
    let hints = HintContext {
        port_lo: lo,
        port_hi: hi,
        nofile_soft: o.host.rlimit_nofile_soft,
        nofile_hard: o.host.rlimit_nofile_hard,
    };
    let mut errors = Map::new();
    let mut error_hints = Map::new();
    for kind in ErrorKind::ALL {
        let n = c.errors[kind as usize];
        errors.insert(kind.key().into(), json!(n));
        if n > 0 {
            error_hints.insert(kind.key().into(), json!(kind.hint(&hints)));
        }
    }
    errors.insert("total".into(), json!(c.errors_total()));
    let tl = o.config.timeline();
    // Per-session memory only from a sample with at least half the target open.
    let min_sessions = o.config.sessions.div_ceil(2);
    let m = &o.monitor;
    let sample_note = if o.loadgen.sessions < min_sessions {
        format!(
            "no per-session memory figure: {} sessions open at the held sample, fewer than half \
             the target ({min_sessions})",
            o.loadgen.sessions
        )
    } else if m.held_sample_ms > u64::from(tl.hold_end_ms) {
        format!(
            "the held sample was taken {} ms after the hold ended (the monitor woke late)",
            m.held_sample_ms - u64::from(tl.hold_end_ms)
        )
    } else {
        "taken in the last second of the hold".to_string()
    };
    // When the ramp's last session opened, if every one did (ms since the
    // run's epoch), and so how long the whole population was held before
    // the hold ended.
    let all_open_ms = (c.ramp_connected >= o.config.sessions && o.config.sessions > 0)
        .then(|| c.ramp_last_us.div_ceil(1_000));
    let full_hold_ms = all_open_ms.map(|t| u64::from(tl.hold_end_ms).saturating_sub(t));
    let mut s = json!({
        "config": o.config,
        "host": o.host,
        "layout": {"procs": o.procs, "threads_per_proc": o.threads, "drivers": o.procs * o.threads, "io": o.io, "io_why": o.io_why, "uring_recv": o.uring_recv},
        "timeline_ms": {"ramp_end": tl.ramp_end_ms, "hold_end": tl.hold_end_ms, "end": tl.end_ms,
                         "deadline": tl.deadline_ms},
        "duration_s": round1(o.duration_s),
        "start": {
            "epoch_unix_ms": (o.start.epoch_unix_ms * 1e3).round() / 1e3,
            "intended_unix_ms": o.start.intended_unix_ms,
            "late_ms": o.start.intended_unix_ms
                .map(|t| ((o.start.epoch_unix_ms - t as f64) * 1e3).round() / 1e3),
        },
        "sessions": {
            "target": o.config.sessions,
            "peak": o.peak_open,
            "held_at_end": c.held_at_end,
            "closed_planned": c.closes_planned,
            "all_open_ms": all_open_ms,
            "full_hold_ms": full_hold_ms,
        },
        "connect": {
            "ok": c.connects_ok,
            "started": c.connects_started,
            "rate_per_s_peak": o.connect_rate_peak,
            "rate_per_s_mean": round1(o.connect_rate_mean),
            "ramp_seconds": o.ramp_seconds,
            "ramp_rate_per_s": round1(c.ramp_rate_per_s()),
            "ramp_sessions_opened": c.ramp_connected,
            "ramp_duration_ms": round1(c.ramp_last_us.saturating_sub(c.ramp_first_us) as f64 / 1e3),
            "latency_us": percentiles(&o.histos.connect),
        },
        "heartbeats": {
            "sent": c.heartbeats_sent,
            "answered": c.heartbeats_answered,
            "lost_on_close": c.heartbeats_lost,
            "unanswered": c.heartbeats_sent.saturating_sub(c.heartbeats_answered),
            "unanswered_at_close": c.heartbeats_lost,
            "unanswered_at_end": c.heartbeats_sent
                .saturating_sub(c.heartbeats_answered + c.heartbeats_lost),
            "rate_per_s_peak": o.heartbeat_rate_peak,
            "note": UNANSWERED_NOTE,
        },
        "rtt_us": percentiles(&o.histos.rtt),
        "rtt_us_full_hold": percentiles(&o.full_hold.rtt),
        "send_lag_us_full_hold": percentiles(&o.full_hold.send_lag),
        "send_lag_us": percentiles(&o.histos.send_lag),
        "errors": errors,
        "error_hints": error_hints,
        "first_errors": o.first_errors,
        "spills": {"read": c.read_spills, "write": c.write_spills},
        "recv_enobufs": c.recv_enobufs,
        "monitor": {
            "nice": m.nice,
            "late_rows": m.late_rows,
            "max_late_ms": m.max_late_ms,
            "held_sample_ms": m.held_sample_ms,
            "held_sample_sessions": o.loadgen.sessions,
            "held_sample_note": sample_note,
        },
        "loadgen": {
            "rss_bytes": o.loadgen.held_bytes,
            "rss_baseline_bytes": o.loadgen.baseline_bytes,
            "rss_bytes_per_session": o.loadgen.per_session(min_sessions),
            "rss_anon_bytes_per_session": o.loadgen_anon.per_session(min_sessions),
            "pss_bytes": o.loadgen.pss_bytes,
            "pss_bytes_per_session_all_in": o.loadgen.pss_per_session_all_in(min_sessions),
            "sessions_measured": o.loadgen.sessions,
            "cpu_us_per_heartbeat": o.loadgen_cpu.us_per_heartbeat(),
            "cpu_s_in_window": round1(o.loadgen_cpu.cpu_s),
            "cpu_window_from": o.cpu_window_from,
            "processes": o.loadgen.processes,
            "method": "VmRSS summed over the loadgen's processes (parent + children) during the \
                       hold, minus the same processes warmed up with 0 sessions, / sessions open \
                       (rss_bytes_per_session: the marginal cost); all-in = Pss (smaps_rollup) \
                       summed over the same processes at the held sample / sessions open \
                       (pss_bytes_per_session_all_in: every fixed cost included, shared pages \
                       counted once); CPU = utime+stime of those processes over the server's CPU \
                       window / heartbeats answered in it (cpu_window_from)",
        },
    });
    if let Some(server) = &o.server {
        s["server"] = json!({
            "pid": server.pid,
            "processes": server.rss.processes,
            "rss_bytes": server.rss.held_bytes,
            "rss_baseline_bytes": server.rss.baseline_bytes,
            "rss_bytes_per_session": server.rss.per_session(min_sessions),
            "pss_bytes": server.rss.pss_bytes,
            "pss_bytes_per_session_all_in": server.rss.pss_per_session_all_in(min_sessions),
            "cpu_us_per_heartbeat": if server.heartbeats > 0 {
                round1(server.cpu_s * 1e6 / server.heartbeats as f64)
            } else { 0.0 },
            "cpu_window_s": round1(server.window_s),
            "cpu_window_from": o.cpu_window_from,
            "heartbeats_in_window": server.heartbeats,
            "method": "VmRSS summed over the server's process tree (--server-pid and every \
                       descendant: a supervisor and all its children) during the hold, minus the \
                       same tree warm with 0 sessions, / sessions open (rss_bytes_per_session: the \
                       marginal cost); all-in = Pss (smaps_rollup) summed over the tree at the held \
                       sample / sessions open (pss_bytes_per_session_all_in: every process's fixed \
                       cost included, shared pages counted once); CPU = utime+stime of the \
                       tree over the hold from the first sample with every session open (else \
                       from the nominal end of the ramp: cpu_window_from; includes kernel work in \
                       the server's context) / heartbeats answered in it",
        });
    }
    if let Some(k) = &o.kernel {
        s["kernel"] = kernel_json(k);
        s["memory_per_connection"] = memory_per_connection(&s, k);
    }
    s
}

/// `kernel{}`: the growth of the connection caches (`CONNECTION_SLABS`),
/// the other caches that grew by more than 1 MiB (what the list may miss),
/// and MemAvailable's drop.
fn kernel_json(k: &KernelMeasure) -> Value {
    let delta = |name: &str| {
        k.slab_held.get(name).copied().unwrap_or(0) as i64
            - k.slab_before.get(name).copied().unwrap_or(0) as i64
    };
    let (mut caches, mut others) = (Map::new(), Map::new());
    let (mut total, mut all) = (0i64, 0i64);
    // Each cache once, whether it is in one reading or both.
    let names: std::collections::BTreeSet<&String> =
        k.slab_held.keys().chain(k.slab_before.keys()).collect();
    for name in names {
        let d = delta(name);
        all += d;
        if CONNECTION_SLABS.contains(&name.as_str()) {
            total += d;
            caches.insert(name.clone(), json!(d));
        } else if d.abs() > 1 << 20 {
            others.insert(name.clone(), json!(d));
        }
    }
    let per = |bytes: i64| per_connection(bytes, k.connections);
    let avail = k.mem_available_before as i64 - k.mem_available_held as i64;
    json!({
        "slab_bytes_per_connection": per(all),
        "slab_bytes_per_socket": if k.both_ends_local { per(all / 2) } else { per(all) },
        "slab_connection_caches_bytes_per_connection": per(total),
        "slab_delta_bytes": caches,
        "slab_other_growth_bytes": others,
        "mem_available_drop_per_connection": per(avail),
        "connections": k.connections,
        "note": if k.both_ends_local {
            "loopback: each connection is two sockets (client and server), both counted; \
             slab_bytes_per_connection = growth of every slab cache (active_objs x objsize, \
             held minus before; kmalloc-* and anything else that grew meanwhile included) / \
             connections; slab_connection_caches_bytes_per_connection: the same over the \
             connection caches of slab_delta_bytes only; slab_other_growth_bytes: the other \
             caches that grew by over 1 MiB"
        } else {
            "client side only"
        },
    })
}

fn per_connection(bytes: i64, connections: u64) -> f64 {
    if connections > 0 {
        round1(bytes as f64 / connections as f64)
    } else {
        0.0
    }
}

/// Host memory per connection: the parts (kernel slab, server and loadgen
/// RSS growth) and the whole as MemAvailable saw it (its drop also counts
/// page tables, kmalloc caches and anything else that grew meanwhile).
fn memory_per_connection(s: &Value, k: &KernelMeasure) -> Value {
    let f = |p: &str| s.pointer(p).and_then(Value::as_f64);
    let slab = f("/kernel/slab_bytes_per_connection");
    let server = f("/server/rss_bytes_per_session");
    let loadgen = f("/loadgen/rss_bytes_per_session");
    let server_all_in = f("/server/pss_bytes_per_session_all_in");
    let loadgen_all_in = f("/loadgen/pss_bytes_per_session_all_in");
    let all_in = [slab, server_all_in, loadgen_all_in];
    let parts = [slab, server, loadgen];
    let sum = parts
        .iter()
        .all(Option::is_some)
        .then(|| round1(parts.iter().flatten().sum::<f64>()));
    json!({
        "kernel_slab": slab,
        "server_user": server,
        "loadgen_user": loadgen,
        "sum_of_parts": sum,
        "server_user_all_in": server_all_in,
        "loadgen_user_all_in": loadgen_all_in,
        "sum_of_parts_all_in": all_in
            .iter()
            .all(Option::is_some)
            .then(|| round1(all_in.iter().flatten().sum::<f64>())),
        "host_mem_available_drop": f("/kernel/mem_available_drop_per_connection"),
        "connections": k.connections,
    })
}

/// The thresholds that failed, one phrase each.
pub fn threshold_failures(config: &RunConfig, summary: &Value) -> Vec<String> {
    let t = &config.thresholds;
    let get = |ptr: &str| summary.pointer(ptr).and_then(Value::as_u64).unwrap_or(0);
    let mut failed = Vec::new();
    if let Some(want) = t.expect_sessions {
        let held = get("/sessions/held_at_end");
        if held < want {
            failed.push(format!(
                "--expect-sessions {want}: held {held} at the end of the hold"
            ));
        }
    }
    if let Some(want) = t.expect_hold_ms {
        match summary
            .pointer("/sessions/full_hold_ms")
            .and_then(Value::as_u64)
        {
            Some(held) if held >= want => {}
            Some(held) => failed.push(format!(
                "--expect-hold {want}ms: every session was open only {held} ms before the hold \
                 ended (the ramp finished at {} ms)",
                get("/sessions/all_open_ms")
            )),
            None => failed.push(format!(
                "--expect-hold {want}ms: the ramp never had all {} sessions open",
                get("/sessions/target")
            )),
        }
    }
    if let Some(max) = t.max_p99_us {
        let p99 = get("/rtt_us/p99");
        let count = get("/rtt_us/count");
        if p99 > max || count == 0 {
            failed.push(format!(
                "--max-p99 {max}us: RTT p99 was {p99}us over {count} replies"
            ));
        }
    }
    if let Some(max) = t.max_errors {
        let errors = get("/errors/total");
        if errors > max {
            failed.push(format!("--max-errors {max}: {errors} errors"));
        }
    }
    if let Some(max) = t.max_unanswered {
        let unanswered = get("/heartbeats/unanswered");
        if unanswered > max {
            failed.push(format!(
                "--max-unanswered {max}: {unanswered} heartbeats unanswered ({} at a close, {} at \
                 the end)",
                get("/heartbeats/unanswered_at_close"),
                get("/heartbeats/unanswered_at_end")
            ));
        }
    }
    failed
}

/// Sessions from which a VM's free page reporting is named beside the
/// ramp: ~74 MB of socket slab on loopback, seconds of hypervisor faults.
const RAMP_MEMORY_NOTE_SESSIONS: u64 = 10_000;

/// A ramp this far below its configured rate is one the host may have held
/// back.
const RAMP_SHORT_OF_RATE: f64 = 0.9;

/// Why the ramp may measure the VM: the host hands freed memory back to its
/// hypervisor ([`crate::host::free_page_reporting`]). Named for a large ramp
/// that fell short of its configured rate (or has none).
fn ramp_memory_note(s: &Value) -> Option<String> {
    let order = s.pointer("/host/free_page_reporting_order")?.as_u64()?;
    let sessions = s.pointer("/sessions/target").and_then(Value::as_u64)?;
    let achieved = s
        .pointer("/connect/ramp_rate_per_s")
        .and_then(Value::as_f64);
    let asked = s.pointer("/config/rate").and_then(Value::as_f64);
    let short = match (achieved, asked) {
        (Some(achieved), Some(asked)) if asked > 0.0 => achieved < RAMP_SHORT_OF_RATE * asked,
        _ => true,
    };
    (sessions >= RAMP_MEMORY_NOTE_SESSIONS && short).then(|| {
        format!(
            "freed memory goes back to this VM's hypervisor (virtio-balloon free page \
             reporting, blocks of {} KiB and up): each run faults its socket slab in from the \
             host again, so the ramp measures the VM too; compare ramps on this VM only, or turn \
             free page reporting off in the VMM",
            4u64 << order.min(20) // 2^order pages of 4 KiB
        )
    })
}

/// The short table of a summary (with the server's figures when present).
pub fn table(s: &Value) -> String {
    let u = |p: &str| s.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let f = |p: &str| s.pointer(p).and_then(Value::as_f64);
    let mut rows: Vec<(String, String)> = vec![
        (
            "sessions held / target".into(),
            match s.pointer("/sessions/full_hold_ms").and_then(Value::as_u64) {
                Some(full) => format!(
                    "{} / {} (all open from {:.1} s: held {:.1} s to the hold's end)",
                    u("/sessions/held_at_end"),
                    u("/sessions/target"),
                    u("/sessions/all_open_ms") as f64 / 1e3,
                    full as f64 / 1e3
                ),
                None => format!("{} / {}", u("/sessions/held_at_end"), u("/sessions/target")),
            },
        ),
        (
            "connect rate: ramp / peak second".into(),
            format!(
                "{:.0}/s ({} opened in {:.0} ms) / {}/s",
                f("/connect/ramp_rate_per_s").unwrap_or(0.0),
                u("/connect/ramp_sessions_opened"),
                f("/connect/ramp_duration_ms").unwrap_or(0.0),
                u("/connect/rate_per_s_peak")
            ),
        ),
        (
            "connect latency p50 / p99".into(),
            format!(
                "{} us / {} us",
                u("/connect/latency_us/p50"),
                u("/connect/latency_us/p99")
            ),
        ),
        (
            "RTT p50 / p99 / max".into(),
            format!(
                "{} us / {} us / {} us",
                u("/rtt_us/p50"),
                u("/rtt_us/p99"),
                u("/rtt_us/max")
            ),
        ),
        (
            "heartbeats sent / answered / unanswered".into(),
            format!(
                "{} / {} / {}{}",
                u("/heartbeats/sent"),
                u("/heartbeats/answered"),
                u("/heartbeats/unanswered"),
                if u("/heartbeats/unanswered") > 0 {
                    " (RTT percentiles leave them out: lower bounds)"
                } else {
                    ""
                }
            ),
        ),
        ("errors".into(), error_line(s)),
        ("loadgen memory per session".into(), memory(s, "/loadgen")),
    ];
    if let Some(note) = ramp_memory_note(s) {
        rows.insert(2, ("ramp memory".into(), note));
    }
    if let Some(line) = protocol_line(s) {
        rows.insert(0, ("protocol".into(), line));
    }
    // Absent from a merged summary, empty when the ramp never completed.
    if u("/rtt_us_full_hold/count") > 0 {
        rows.insert(
            2,
            (
                "RTT p50 / p99, all open, in the hold".into(),
                format!(
                    "{} us / {} us over {} replies",
                    u("/rtt_us_full_hold/p50"),
                    u("/rtt_us_full_hold/p99"),
                    u("/rtt_us_full_hold/count")
                ),
            ),
        );
    }
    if s.pointer("/server/pid").is_some() {
        rows.push(("server memory per session".into(), memory(s, "/server")));
        let cpu = f("/server/cpu_us_per_heartbeat").unwrap_or(0.0);
        rows.push(("server CPU per heartbeat".into(), format!("{cpu:.1} us")));
        if let Some(cpu) = f("/loadgen/cpu_us_per_heartbeat") {
            rows.push(("loadgen CPU per heartbeat".into(), format!("{cpu:.1} us")));
        }
    }
    if let Some(v) = f("/kernel/slab_bytes_per_connection") {
        rows.push((
            "kernel slab per connection".into(),
            format!(
                "{v:.0} B, all caches (connection caches alone: {:.0} B; both ends)",
                f("/kernel/slab_connection_caches_bytes_per_connection").unwrap_or(0.0)
            ),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("  {k:<width$}  {v}\n"))
        .collect()
}

/// The run's protocol and its settings, unless it is the default resp.
fn protocol_line(s: &Value) -> Option<String> {
    let p = s.pointer("/config/protocol")?;
    let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
    let host = |p: &Value| {
        p.get("host")
            .and_then(Value::as_str)
            .map(|h| format!(", Host {h}"))
            .unwrap_or_default()
    };
    Some(match text("kind") {
        "" | "resp" => return None,
        "mqtt" => format!(
            "mqtt {} (keepalive {} s)",
            text("mqtt_version"),
            p.get("keepalive_s").and_then(Value::as_u64).unwrap_or(0)
        ),
        kind @ ("http" | "websocket") => format!("{kind} {}{}", text("path"), host(p)),
        other => other.to_string(),
    })
}

/// "marginal X B (RSS growth) / all-in Y B (PSS)" of a role.
fn memory(s: &Value, role: &str) -> String {
    let f = |k: &str| s.pointer(&format!("{role}/{k}")).and_then(Value::as_f64);
    match (
        f("rss_bytes_per_session"),
        f("pss_bytes_per_session_all_in"),
    ) {
        (None, _) => "n/a (no sample during the hold)".into(),
        (Some(m), Some(a)) => format!("{m:.1} B marginal (RSS growth) / {a:.1} B all-in (PSS)"),
        (Some(m), None) => format!("{m:.1} B marginal (RSS growth)"),
    }
}

fn error_line(s: &Value) -> String {
    let total = s
        .pointer("/errors/total")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .filter_map(|k| {
            let n = s.pointer(&format!("/errors/{}", k.key()))?.as_u64()?;
            (n > 0).then(|| format!("{}={n}", k.key()))
        })
        .collect();
    format!("{total} ({})", parts.join(", "))
}

#[cfg(test)]
mod tests;
