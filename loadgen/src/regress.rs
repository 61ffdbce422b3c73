//! The CI regression gate (`c10m-loadgen regress RUN_DIR`): compares a
//! run's summary.json with `results/baseline.json`.
//!
//! Rules: sessions held at the end of the hold must equal the run's target,
//! and the target must be the baseline's (no tolerance: one lost session is
//! a regression). Every other metric is "lower is better" and may rise to
//! `value * (1 + relative) + absolute` (its tolerance, stored in the
//! baseline next to the figure) before it counts as a regression (see
//! [`METRICS`]: memory per session marginal and all-in, CPU per heartbeat
//! each side, unanswered heartbeats, RTT p99). A metric the run does not
//! report (e.g. no RSS sample during the hold) fails; so does one the
//! baseline lacks (regenerate it).
//!
//! `--update-baseline` rewrites the figures from the run and keeps the
//! tolerances already in the file (defaults for metrics it lacks).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// How far a metric may rise above its baseline figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Fraction of the baseline figure (0.25 = +25 %).
    pub relative: f64,
    /// Added on top, in the metric's unit (absorbs allocator rounding on
    /// figures near zero).
    pub absolute: f64,
}

/// A gated metric: where summary.json has it, and its default tolerance.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    pub key: &'static str,
    pub pointer: &'static str,
    pub label: &'static str,
    pub default_tolerance: Tolerance,
}

/// The metrics the gate checks besides the session count.
///
/// - Memory per session, marginal (RSS growth) and all-in (PSS of every
///   process / sessions), is deterministic to a few bytes on one kind of
///   host: a few bytes of slack, no percentage (15 % + 4 B let the server
///   grow 9 B, a quarter of its 36 B, unnoticed). The server's marginal
///   figure at 60 000 sessions carries a fixed growth in its first second
///   that varied from 0.6 to 0.93 MB between runs of one binary (35.4 to
///   41.8 B per session; the slope after it stays ~32 B), so
///   results/baseline.json stores +6 B for it rather than this +3.
/// - CPU per heartbeat, each side: the same code on a shared 2-core CI
///   machine varies by tens of percent between runs, and by 2× between
///   hosts (AMD → Intel halved it here); 2× + 2 µs catches a spin or a
///   lost batching, not a few percent.
/// - Unanswered heartbeats: none, exactly.
/// - RTT p99 on a shared 2-core CI machine moves by several times between
///   runs, so its tolerance only catches gross regressions (a stall, a lost
///   wake-up).
pub const METRICS: [MetricSpec; 8] = [
    MetricSpec {
        key: "server_rss_bytes_per_session",
        pointer: "/server/rss_bytes_per_session",
        label: "server B/session, marginal (RSS)",
        default_tolerance: Tolerance {
            relative: 0.0,
            absolute: 3.0,
        },
    },
    MetricSpec {
        key: "loadgen_rss_bytes_per_session",
        pointer: "/loadgen/rss_bytes_per_session",
        label: "loadgen B/session, marginal (RSS)",
        default_tolerance: Tolerance {
            relative: 0.0,
            absolute: 5.0,
        },
    },
    MetricSpec {
        key: "server_pss_bytes_per_session_all_in",
        pointer: "/server/pss_bytes_per_session_all_in",
        label: "server B/session, all-in (PSS)",
        default_tolerance: Tolerance {
            relative: 0.0,
            absolute: 6.0,
        },
    },
    MetricSpec {
        key: "loadgen_pss_bytes_per_session_all_in",
        pointer: "/loadgen/pss_bytes_per_session_all_in",
        label: "loadgen B/session, all-in (PSS)",
        default_tolerance: Tolerance {
            relative: 0.0,
            absolute: 6.0,
        },
    },
    MetricSpec {
        key: "server_cpu_us_per_heartbeat",
        pointer: "/server/cpu_us_per_heartbeat",
        label: "server CPU per heartbeat (us)",
        default_tolerance: Tolerance {
            relative: 1.0,
            absolute: 2.0,
        },
    },
    MetricSpec {
        key: "loadgen_cpu_us_per_heartbeat",
        pointer: "/loadgen/cpu_us_per_heartbeat",
        label: "loadgen CPU per heartbeat (us)",
        default_tolerance: Tolerance {
            relative: 1.0,
            absolute: 2.0,
        },
    },
    MetricSpec {
        key: "heartbeats_unanswered",
        pointer: "/heartbeats/unanswered",
        label: "heartbeats unanswered",
        default_tolerance: Tolerance {
            relative: 0.0,
            absolute: 0.0,
        },
    },
    MetricSpec {
        key: "rtt_p99_us",
        pointer: "/rtt_us/p99",
        label: "RTT p99 (us)",
        default_tolerance: Tolerance {
            relative: 4.0,
            absolute: 20_000.0,
        },
    },
];

/// One baseline figure and its tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub value: f64,
    pub tolerance: Tolerance,
}

impl Figure {
    pub fn limit(&self) -> f64 {
        self.value * (1.0 + self.tolerance.relative) + self.tolerance.absolute
    }
}

/// `results/baseline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Where the figures come from (run directory, git, date, command).
    #[serde(default)]
    pub source: BTreeMap<String, String>,
    /// Sessions the run must hold, exactly.
    pub sessions_target: u64,
    pub metrics: BTreeMap<String, Figure>,
}

/// The gate's judgement of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: String,
    pub baseline: String,
    pub limit: String,
    pub run: String,
    pub ok: bool,
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Judges `summary` (a run's summary.json) against `baseline`.
pub fn judge(baseline: &Baseline, summary: &Value) -> Vec<Row> {
    let u = |p: &str| summary.pointer(p).and_then(Value::as_u64);
    let held = u("/sessions/held_at_end");
    let target = u("/sessions/target");
    let mut rows = vec![Row {
        label: "sessions held = target".into(),
        baseline: baseline.sessions_target.to_string(),
        limit: "exact".into(),
        run: format!(
            "{} of {}",
            held.map_or("n/a".into(), |v| v.to_string()),
            target.map_or("n/a".into(), |v| v.to_string())
        ),
        ok: held.is_some() && held == target && target == Some(baseline.sessions_target),
    }];
    for spec in METRICS {
        let run = summary.pointer(spec.pointer).and_then(Value::as_f64);
        let Some(fig) = baseline.metrics.get(spec.key) else {
            // A gate that skips what its baseline lacks cannot fail:
            // regenerate the baseline (--update-baseline) instead.
            rows.push(Row {
                label: spec.label.into(),
                baseline: "missing".into(),
                limit: "--update-baseline".into(),
                run: run.map_or("n/a".into(), fmt_num),
                ok: false,
            });
            continue;
        };
        rows.push(Row {
            label: spec.label.into(),
            baseline: fmt_num(fig.value),
            limit: format!("<= {}", fmt_num(fig.limit())),
            run: run.map_or("n/a".into(), fmt_num),
            ok: run.is_some_and(|v| v <= fig.limit()),
        });
    }
    rows
}

/// The table: metric / baseline / limit / run / verdict.
pub fn table(rows: &[Row]) -> String {
    let head = ["metric", "baseline", "limit", "run", "verdict"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let verdict = if r.ok { "ok" } else { "REGRESSION" };
            [
                r.label.clone(),
                r.baseline.clone(),
                r.limit.clone(),
                r.run.clone(),
                verdict.into(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 5]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            if i == 0 {
                s += &format!("  {c:<w$}");
            } else {
                s += &format!("  {c:>w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head);
    for row in &cells {
        out += &line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

/// A baseline with `summary`'s figures, keeping `previous`'s tolerances.
pub fn updated(
    previous: Option<&Baseline>,
    summary: &Value,
    source: BTreeMap<String, String>,
) -> Result<Baseline, String> {
    let target = summary
        .pointer("/sessions/target")
        .and_then(Value::as_u64)
        .ok_or("the run's summary.json has no sessions.target")?;
    let mut metrics = BTreeMap::new();
    for spec in METRICS {
        let value = summary
            .pointer(spec.pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                format!(
                    "the run has no {} ({}): cannot take it as a baseline",
                    spec.key, spec.pointer
                )
            })?;
        let tolerance = previous
            .and_then(|b| b.metrics.get(spec.key))
            .map_or(spec.default_tolerance, |f| f.tolerance);
        metrics.insert(spec.key.to_string(), Figure { value, tolerance });
    }
    Ok(Baseline {
        source,
        sessions_target: target,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(held: u64, server: f64, loadgen: f64, p99: u64) -> Value {
        json!({
            "sessions": {"target": 60000, "held_at_end": held, "peak": held},
            "server": {"rss_bytes_per_session": server, "pss_bytes_per_session_all_in": 600.0,
                       "cpu_us_per_heartbeat": 7.0},
            "loadgen": {"rss_bytes_per_session": loadgen, "pss_bytes_per_session_all_in": 500.0,
                        "cpu_us_per_heartbeat": 9.0},
            "heartbeats": {"unanswered": 0},
            "rtt_us": {"p99": p99},
        })
    }

    fn baseline() -> Baseline {
        updated(None, &run(60000, 32.0, 33.0, 2000), BTreeMap::new()).unwrap()
    }

    fn passes(summary: &Value) -> bool {
        judge(&baseline(), summary).iter().all(|r| r.ok)
    }

    #[test]
    fn an_equal_run_passes() {
        let rows = judge(&baseline(), &run(60000, 32.0, 33.0, 2000));
        assert_eq!(rows.len(), 1 + METRICS.len());
        assert!(rows.iter().all(|r| r.ok), "{}", table(&rows));
    }

    #[test]
    fn one_session_short_fails() {
        let rows = judge(&baseline(), &run(59999, 32.0, 33.0, 2000));
        assert!(!rows[0].ok);
        assert!(rows[1..].iter().all(|r| r.ok));
        assert!(table(&rows).contains("59999 of 60000"));
        assert!(table(&rows).contains("REGRESSION"));
    }

    #[test]
    fn memory_per_session_past_a_few_bytes_fails() {
        // Server: 32 + 3; loadgen: 33 + 5; all-in: 600 + 6 and 500 + 6.
        assert!(passes(&run(60000, 35.0, 38.0, 2000)));
        assert!(!passes(&run(60000, 35.1, 33.0, 2000)));
        assert!(!passes(&run(60000, 32.0, 38.1, 2000)));
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["server"]["pss_bytes_per_session_all_in"] = json!(606.0);
        assert!(passes(&s));
        s["server"]["pss_bytes_per_session_all_in"] = json!(606.1);
        assert!(!passes(&s));
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["loadgen"]["pss_bytes_per_session_all_in"] = json!(507.0);
        assert!(!passes(&s));
    }

    #[test]
    fn cpu_past_twice_the_baseline_and_any_unanswered_heartbeat_fail() {
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["server"]["cpu_us_per_heartbeat"] = json!(16.0); // 7 * 2 + 2
        assert!(passes(&s));
        s["server"]["cpu_us_per_heartbeat"] = json!(16.1);
        assert!(!passes(&s));
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["loadgen"]["cpu_us_per_heartbeat"] = json!(20.1); // 9 * 2 + 2
        assert!(!passes(&s));
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["heartbeats"]["unanswered"] = json!(1);
        let rows = judge(&baseline(), &s);
        assert!(table(&rows).contains("heartbeats unanswered"));
        assert!(!rows.iter().all(|r| r.ok));
    }

    #[test]
    fn a_missing_figure_or_another_target_fails() {
        let mut s = run(60000, 32.0, 33.0, 2000);
        s["server"]["rss_bytes_per_session"] = Value::Null;
        assert!(!passes(&s));
        let mut s = run(1000, 32.0, 33.0, 2000);
        s["sessions"]["target"] = json!(1000);
        assert!(!passes(&s));
    }

    #[test]
    fn a_baseline_without_a_gated_metric_fails_rather_than_skips_it() {
        let mut b = baseline();
        b.metrics.remove("heartbeats_unanswered");
        let rows = judge(&b, &run(60000, 32.0, 33.0, 2000));
        let row = rows
            .iter()
            .find(|r| r.label == "heartbeats unanswered")
            .unwrap();
        assert!(!row.ok);
        assert!(table(&rows).contains("--update-baseline"));
    }

    #[test]
    fn update_keeps_the_tolerances() {
        let mut b = baseline();
        b.metrics.get_mut("rtt_p99_us").unwrap().tolerance = Tolerance {
            relative: 1.0,
            absolute: 5.0,
        };
        let next = updated(Some(&b), &run(60000, 30.0, 31.0, 900), BTreeMap::new()).unwrap();
        assert_eq!(next.metrics["rtt_p99_us"].value, 900.0);
        assert_eq!(next.metrics["rtt_p99_us"].tolerance.relative, 1.0);
        assert_eq!(
            next.metrics["server_rss_bytes_per_session"].tolerance,
            METRICS[0].default_tolerance
        );
        let text = serde_json::to_string(&next).unwrap();
        assert_eq!(serde_json::from_str::<Baseline>(&text).unwrap(), next);
    }
}
