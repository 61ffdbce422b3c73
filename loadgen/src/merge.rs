//! `c10m-loadgen merge OUT DIR...`: the results of several loadgen
//! processes or hosts (run against one server, at the same time) made into
//! one run directory of the same schema.
//!
//! - Histograms exactly: interval-log intervals that fall in the same
//!   wall-clock second are added (HdrHistogram `add`), and the summary's
//!   percentiles come from the sum of every interval.
//! - Counts summed (sessions, connects, heartbeats, errors by kind, RSS of
//!   the loadgen processes). Rates and peaks are taken again from the merged
//!   timeline.
//! - Timelines aligned by wall-clock second: a run that started `d` seconds
//!   (rounded) after the earliest has its rows and intervals moved by `d`.
//!   Columns are summed, except `phase` (first run's), `rtt_*` (recomputed
//!   from the merged second's histogram when the runs have interval logs,
//!   else the max) and `server_*` (the max when the runs measured the same
//!   server process: one server is not several).
//! - The server: runs that name the same `server.pid` measured one server,
//!   so its RSS growth and PSS are divided by the sessions of every run and
//!   its CPU by every run's heartbeats; different servers are summed. The
//!   loadgens' PSS is summed and divided by every session (all-in).
//! - `kernel{}` and `memory_per_connection{}` are host-wide and cannot be
//!   added: they are dropped unless there is a single input.
#![forbid(unsafe_code)]

use crate::rundir::{Interval, RunDir, Timeline};
use crate::stats::{percentiles, Histos};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Merges `runs` (at least one) into one run.
pub fn merge(runs: &[RunDir], labels: &[String]) -> RunDir {
    let epoch = runs
        .iter()
        .map(|r| r.start_unix_s)
        .fold(f64::INFINITY, f64::min)
        .floor();
    let epoch = if epoch.is_finite() { epoch } else { 0.0 };
    let shifts: Vec<f64> = runs
        .iter()
        .map(|r| (r.start_unix_s - epoch).round())
        .collect();
    let same_server = same_server(runs);

    let mut hlogs = BTreeMap::new();
    for name in crate::rundir::HLOG_NAMES {
        let mut seconds: BTreeMap<i64, Interval> = BTreeMap::new();
        let mut any = false;
        for (run, shift) in runs.iter().zip(&shifts) {
            for i in run.hlogs.get(name).into_iter().flatten() {
                any = true;
                let start = (i.start_s + shift).round() as i64;
                let slot = seconds.entry(start).or_insert_with(|| Interval {
                    start_s: start as f64,
                    duration_s: i.duration_s,
                    histogram: Histos::new().rtt,
                });
                slot.histogram.add(&i.histogram).expect("same bounds");
                slot.duration_s = slot.duration_s.max(i.duration_s);
            }
        }
        if any {
            hlogs.insert(name.to_string(), seconds.into_values().collect());
        }
    }
    let mut out = RunDir {
        summary: Value::Null,
        timeline: merge_timelines(runs, &shifts, &hlogs, same_server),
        start_unix_s: epoch,
        hlogs,
    };
    out.summary = merge_summaries(runs, &out, labels, same_server);
    out
}

fn same_server(runs: &[RunDir]) -> bool {
    let pids: Vec<Option<u64>> = runs
        .iter()
        .map(|r| r.summary.pointer("/server/pid").and_then(Value::as_u64))
        .collect();
    pids[0].is_some() && pids.iter().all(|p| *p == pids[0])
}

fn merge_timelines(
    runs: &[RunDir],
    shifts: &[f64],
    hlogs: &BTreeMap<String, Vec<Interval>>,
    same_server: bool,
) -> Option<Timeline> {
    let mut columns: Vec<String> = Vec::new();
    for t in runs.iter().filter_map(|r| r.timeline.as_ref()) {
        for c in &t.columns {
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
    }
    if columns.is_empty() {
        return None;
    }
    // t_s -> column -> values of the runs' rows for that second.
    let mut seconds: BTreeMap<i64, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (run, shift) in runs.iter().zip(shifts) {
        let Some(t) = &run.timeline else { continue };
        let Some(ti) = t.column("t_s") else { continue };
        for row in &t.rows {
            let Ok(ts) = row[ti].parse::<f64>() else {
                continue;
            };
            let cells = seconds.entry((ts + shift).round() as i64).or_default();
            for (c, v) in t.columns.iter().zip(row) {
                cells.entry(c.as_str()).or_default().push(v.as_str());
            }
        }
    }
    let rtt_by_end: BTreeMap<i64, &Interval> = hlogs
        .get("rtt")
        .into_iter()
        .flatten()
        .map(|i| ((i.start_s + i.duration_s).round() as i64, i))
        .collect();
    let mut rows = Vec::new();
    for (t_s, cells) in &seconds {
        let rtt = rtt_by_end.get(t_s).map(|i| &i.histogram);
        let row = columns
            .iter()
            .map(|c| {
                let values = cells.get(c.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                let nums = || values.iter().filter_map(|v| v.parse::<u64>().ok());
                match c.as_str() {
                    "t_s" => t_s.to_string(),
                    "phase" => values.first().map_or(String::new(), |v| v.to_string()),
                    "rtt_p50_us" | "rtt_p99_us" | "rtt_max_us" if rtt.is_some() => {
                        let h = rtt.expect("checked");
                        if h.is_empty() {
                            "0".into()
                        } else if c == "rtt_max_us" {
                            h.max().to_string()
                        } else {
                            let q = if c == "rtt_p50_us" { 0.5 } else { 0.99 };
                            h.value_at_quantile(q).to_string()
                        }
                    }
                    c if c.starts_with("rtt_") || (same_server && c.starts_with("server_")) => {
                        nums().max().unwrap_or(0).to_string()
                    }
                    _ => nums().sum::<u64>().to_string(),
                }
            })
            .collect();
        rows.push(row);
    }
    Some(Timeline { columns, rows })
}

fn merge_summaries(runs: &[RunDir], out: &RunDir, labels: &[String], same_server: bool) -> Value {
    let sum = |p: &str| -> u64 {
        runs.iter()
            .filter_map(|r| r.summary.pointer(p).and_then(Value::as_u64))
            .sum()
    };
    let fsum = |p: &str| -> f64 {
        runs.iter()
            .filter_map(|r| r.summary.pointer(p).and_then(Value::as_f64))
            .sum()
    };
    let fmax = |p: &str| -> f64 {
        runs.iter()
            .filter_map(|r| r.summary.pointer(p).and_then(Value::as_f64))
            .fold(0.0, f64::max)
    };
    // Every run's value, or None when a run lacks it.
    let each = |p: &str| -> Option<Vec<u64>> {
        runs.iter()
            .map(|r| r.summary.pointer(p).and_then(Value::as_u64))
            .collect()
    };
    let peak = |col: &str, fallback: &str| -> u64 {
        match &out.timeline {
            Some(t) if t.column(col).is_some() => {
                t.series(col).iter().map(|p| p.1 as u64).max().unwrap_or(0)
            }
            _ => sum(fallback),
        }
    };
    let hist = |name: &str, fallback: &str| -> Value {
        match out.total(name) {
            Some(h) => percentiles(&h),
            None => runs[0]
                .summary
                .pointer(fallback)
                .cloned()
                .unwrap_or(Value::Null),
        }
    };
    let mut s = runs[0].summary.clone();
    let sessions = sum("/sessions/target");
    s["config"]["sessions"] = json!(sessions);
    s["config"]["out"] = Value::Null;
    s["config"]["shard"] = Value::Null;
    s["merged_from"] = json!(labels);
    s["start"] = merge_start(runs);
    match shards(runs) {
        Some(v) => s["shards"] = v,
        None => {
            if let Some(obj) = s.as_object_mut() {
                obj.remove("shards");
            }
        }
    }
    s["duration_s"] = json!(fmax("/duration_s"));
    s["layout"] = json!({
        "procs": sum("/layout/procs"),
        "threads_per_proc": runs[0].summary.pointer("/layout/threads_per_proc"),
        "drivers": sum("/layout/drivers"),
    });
    s["sessions"] = json!({
        "target": sessions,
        "peak": peak("sessions_open", "/sessions/peak"),
        "held_at_end": sum("/sessions/held_at_end"),
        "closed_planned": sum("/sessions/closed_planned"),
        // All open when the slowest run had all its sessions open.
        "all_open_ms": each("/sessions/all_open_ms").and_then(|v| v.into_iter().max()),
        "full_hold_ms": each("/sessions/full_hold_ms").and_then(|v| v.into_iter().min()),
    });
    let ramp_seconds = runs
        .iter()
        .filter_map(|r| r.summary.pointer("/connect/ramp_seconds")?.as_u64())
        .max()
        .unwrap_or(0);
    s["connect"] = json!({
        "ok": sum("/connect/ok"),
        "started": sum("/connect/started"),
        "rate_per_s_peak": peak("connects_per_s", "/connect/rate_per_s_peak"),
        "rate_per_s_mean": round1(fsum("/connect/rate_per_s_mean")),
        "ramp_seconds": ramp_seconds,
        "ramp_rate_per_s": round1(fsum("/connect/ramp_rate_per_s")),
        "ramp_sessions_opened": sum("/connect/ramp_sessions_opened"),
        "ramp_duration_ms": fmax("/connect/ramp_duration_ms"),
        "latency_us": hist("connect", "/connect/latency_us"),
    });
    s["heartbeats"] = json!({
        "sent": sum("/heartbeats/sent"),
        "answered": sum("/heartbeats/answered"),
        "lost_on_close": sum("/heartbeats/lost_on_close"),
        "unanswered": sum("/heartbeats/unanswered"),
        "unanswered_at_close": sum("/heartbeats/unanswered_at_close"),
        "unanswered_at_end": sum("/heartbeats/unanswered_at_end"),
        "note": crate::report::UNANSWERED_NOTE,
        "rate_per_s_peak": peak("heartbeats_answered_per_s", "/heartbeats/rate_per_s_peak"),
    });
    s["rtt_us"] = hist("rtt", "/rtt_us");
    // Each run's full-population window is its own; their union is not
    // kept (the hlogs hold every interval, to recompute one if needed).
    if let Some(obj) = s.as_object_mut() {
        obj.remove("rtt_us_full_hold");
        obj.remove("send_lag_us_full_hold");
    }
    s["send_lag_us"] = hist("send_lag", "/send_lag_us");
    let mut errors = Map::new();
    let mut hints = Map::new();
    let mut first = Map::new();
    for r in runs {
        for (k, v) in r.summary["errors"].as_object().into_iter().flatten() {
            let n = errors.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
            errors.insert(k.clone(), json!(n));
        }
        for (src, dst) in [("error_hints", &mut hints), ("first_errors", &mut first)] {
            for (k, v) in r.summary[src].as_object().into_iter().flatten() {
                dst.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    s["errors"] = Value::Object(errors);
    s["error_hints"] = Value::Object(hints);
    s["first_errors"] = Value::Object(first);
    s["spills"] = json!({"read": sum("/spills/read"), "write": sum("/spills/write")});
    s["loadgen"] = merge_loadgen(runs, &sum);
    if runs[0].summary.get("server").is_some_and(Value::is_object) {
        s["server"] = merge_server(runs, same_server, &sum);
    }
    if runs.len() > 1 {
        if let Some(obj) = s.as_object_mut() {
            obj.remove("kernel");
            obj.remove("memory_per_connection");
        }
    }
    s
}

/// The runs' starts: the earliest, how far apart they were, the latest
/// against its `--start-at`.
fn merge_start(runs: &[RunDir]) -> Value {
    let epochs: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.summary.pointer("/start/epoch_unix_ms")?.as_f64())
        .collect();
    if epochs.len() != runs.len() {
        return Value::Null;
    }
    let min = epochs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = epochs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let late: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.summary.pointer("/start/late_ms")?.as_f64())
        .collect();
    json!({
        "epoch_unix_ms": min,
        "spread_ms": ((max - min) * 1e3).round() / 1e3,
        "late_ms_max": (late.len() == runs.len())
            .then(|| late.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
    })
}

/// Which shards of a sharded run were merged: `None` for unsharded runs.
/// A shard missing, given twice, or from a run of another size is named
/// (and said on stderr): the merge is then not the whole run.
pub fn shards(runs: &[RunDir]) -> Option<Value> {
    let shard = |r: &RunDir| -> Option<(u64, u64, u64)> {
        let s = r.summary.pointer("/config/shard")?;
        Some((
            s.get("index")?.as_u64()?,
            s.get("count")?.as_u64()?,
            s.get("total_sessions")?.as_u64()?,
        ))
    };
    let seen: Vec<Option<(u64, u64, u64)>> = runs.iter().map(shard).collect();
    let first = seen.iter().flatten().next().copied()?;
    let (_, count, total) = first;
    let mut present = BTreeMap::new();
    let mut problems = Vec::new();
    for s in &seen {
        match s {
            None => problems.push("an unsharded run is merged with shards".to_string()),
            Some((_, c, t)) if (*c, *t) != (count, total) => problems.push(format!(
                "shards of two runs: {count} x {total} sessions and {c} x {t}"
            )),
            Some((k, _, _)) => *present.entry(*k).or_insert(0u64) += 1,
        }
    }
    let missing: Vec<u64> = (0..count).filter(|k| !present.contains_key(k)).collect();
    let twice: Vec<u64> = present
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        problems.push(format!("shard(s) {missing:?} of {count} missing"));
    }
    if !twice.is_empty() {
        problems.push(format!("shard(s) {twice:?} given more than once"));
    }
    for p in &problems {
        eprintln!("merge: not the whole run: {p}");
    }
    Some(json!({
        "count": count,
        "total_sessions": total,
        "present": present.keys().collect::<Vec<_>>(),
        "missing": missing,
        "complete": problems.is_empty(),
        "problems": problems,
    }))
}

fn per_session(held: u64, base: u64, sessions: u64) -> Value {
    if sessions == 0 || held == 0 {
        return Value::Null;
    }
    json!(round1((held as f64 - base as f64) / sessions as f64))
}

fn merge_loadgen(runs: &[RunDir], sum: &dyn Fn(&str) -> u64) -> Value {
    let (held, base) = (
        sum("/loadgen/rss_bytes"),
        sum("/loadgen/rss_baseline_bytes"),
    );
    let sessions = sum("/loadgen/sessions_measured");
    // RssAnon is not stored in bytes: weight each run's figure by its sessions.
    let anon: Option<f64> = runs
        .iter()
        .map(|r| {
            let per = r
                .summary
                .pointer("/loadgen/rss_anon_bytes_per_session")?
                .as_f64()?;
            let n = r.summary.pointer("/loadgen/sessions_measured")?.as_u64()?;
            Some(per * n as f64)
        })
        .sum();
    let mut v = runs[0].summary["loadgen"].clone();
    v["rss_bytes"] = json!(held);
    v["rss_baseline_bytes"] = json!(base);
    v["rss_bytes_per_session"] = per_session(held, base, sessions);
    v["rss_anon_bytes_per_session"] = match anon {
        Some(a) if sessions > 0 => json!(round1(a / sessions as f64)),
        _ => Value::Null,
    };
    v["sessions_measured"] = json!(sessions);
    v["processes"] = json!(sum("/loadgen/processes"));
    set_all_in(&mut v, sum("/loadgen/pss_bytes"), sessions);
    v
}

/// The all-in figure of a merged side: its PSS over every session of the
/// merge (a run's own figure is over its share only).
fn set_all_in(v: &mut Value, pss: u64, sessions: u64) {
    if v.get("pss_bytes").is_none() {
        return;
    }
    v["pss_bytes"] = json!(pss);
    v["pss_bytes_per_session_all_in"] = if pss > 0 && sessions > 0 {
        json!(round1(pss as f64 / sessions as f64))
    } else {
        Value::Null
    };
}

fn merge_server(runs: &[RunDir], same_server: bool, sum: &dyn Fn(&str) -> u64) -> Value {
    let first = &runs[0].summary["server"];
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cpu_us = |v: &Value| {
        v.get("cpu_us_per_heartbeat")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            * u(v, "heartbeats_in_window") as f64
    };
    let sessions = sum("/loadgen/sessions_measured");
    let heartbeats = sum("/server/heartbeats_in_window");
    let (held, base, pss, cpu) = if same_server {
        (
            u(first, "rss_bytes"),
            u(first, "rss_baseline_bytes"),
            u(first, "pss_bytes"),
            cpu_us(first),
        )
    } else {
        (
            sum("/server/rss_bytes"),
            sum("/server/rss_baseline_bytes"),
            sum("/server/pss_bytes"),
            runs.iter().map(|r| cpu_us(&r.summary["server"])).sum(),
        )
    };
    let mut v = first.clone();
    v["rss_bytes"] = json!(held);
    v["rss_baseline_bytes"] = json!(base);
    v["rss_bytes_per_session"] = per_session(held, base, sessions);
    set_all_in(&mut v, pss, sessions);
    v["heartbeats_in_window"] = json!(heartbeats);
    v["cpu_us_per_heartbeat"] = json!(if heartbeats > 0 {
        round1(cpu / heartbeats as f64)
    } else {
        0.0
    });
    if !same_server {
        v["pid"] = Value::Null;
        v["merged_servers"] = json!(runs.len());
    }
    v
}

#[cfg(test)]
mod tests;
