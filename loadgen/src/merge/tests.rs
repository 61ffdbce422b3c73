use super::*;
use crate::rundir::RunDir;

/// One second of a synthetic run.
#[derive(Clone, Default)]
struct Second {
    open: u64,
    connects: u64,
    answered: u64,
    rss: u64,
    rtt: Vec<u64>,
}

impl Second {
    fn add(&mut self, o: &Second) {
        self.open += o.open;
        self.connects += o.connects;
        self.answered += o.answered;
        self.rss += o.rss;
        self.rtt.extend(&o.rtt);
    }
}

fn second(t: u64, scale: u64) -> Second {
    Second {
        open: 100 * scale * t.min(3),
        connects: if t <= 3 { 100 * scale } else { 0 },
        answered: 40 * scale * t,
        rss: 1_000_000 * scale + 3_000 * t,
        rtt: (0..50 * t).map(|v| 100 + v * 7 * scale + t * 13).collect(),
    }
}

/// A run directory in memory, as the loadgen would have written it.
fn synthetic(start: f64, target: u64, held: u64, seconds: &BTreeMap<u64, Second>) -> RunDir {
    let columns = [
        "t_s",
        "phase",
        "sessions_open",
        "connects_per_s",
        "heartbeats_answered_per_s",
        "rtt_p50_us",
        "rtt_p99_us",
        "rtt_max_us",
        "loadgen_rss_bytes",
    ];
    let mut rows = Vec::new();
    let mut intervals = Vec::new();
    let mut total = Histos::new();
    let (mut connects, mut answered, mut rss) = (0, 0, 0);
    for (t, s) in seconds {
        let mut h = Histos::new();
        for v in &s.rtt {
            h.rtt.record(*v).unwrap();
        }
        total.add(&h);
        connects += s.connects;
        answered += s.answered;
        rss = s.rss;
        let q = |q: f64| h.rtt.value_at_quantile(q).to_string();
        rows.push(vec![
            t.to_string(),
            "hold".into(),
            s.open.to_string(),
            s.connects.to_string(),
            s.answered.to_string(),
            q(0.5),
            q(0.99),
            h.rtt.max().to_string(),
            s.rss.to_string(),
        ]);
        intervals.push(Interval {
            start_s: (*t - 1) as f64,
            duration_s: 1.0,
            histogram: h.rtt,
        });
    }
    let summary = json!({
        "config": {"sessions": target},
        "sessions": {"target": target, "held_at_end": held, "peak": held, "closed_planned": 0},
        "connect": {"ok": connects, "started": connects},
        "heartbeats": {"sent": answered, "answered": answered, "lost_on_close": 0},
        "rtt_us": percentiles(&total.rtt),
        "errors": {"refused": 1, "total": 1},
        "loadgen": {"rss_bytes": rss, "rss_baseline_bytes": rss - held * 32,
                    "rss_bytes_per_session": 32.0, "sessions_measured": held, "processes": 1},
    });
    let mut hlogs = BTreeMap::new();
    hlogs.insert("rtt".to_string(), intervals);
    RunDir {
        summary,
        timeline: Some(Timeline {
            columns: columns.map(String::from).to_vec(),
            rows,
        }),
        start_unix_s: start,
        hlogs,
    }
}

fn round_trip(run: &RunDir) -> RunDir {
    let dir = tempfile::tempdir().unwrap();
    run.write(dir.path()).unwrap();
    RunDir::read(dir.path()).unwrap()
}

#[test]
fn merging_two_runs_equals_the_run_of_their_union() {
    let start = 1_796_194_618.25;
    let a: BTreeMap<u64, Second> = (1..=5).map(|t| (t, second(t, 1))).collect();
    let b: BTreeMap<u64, Second> = (1..=5).map(|t| (t, second(t, 2))).collect();
    // B started 1.2 s after A: its second t is the union's second t + 1.
    let mut union = a.clone();
    for (t, s) in &b {
        union.entry(t + 1).or_default().add(s);
    }
    let run_a = round_trip(&synthetic(start, 300, 300, &a));
    let run_b = round_trip(&synthetic(start + 1.2, 600, 600, &b));
    let merged = merge(&[run_a, run_b], &["a".into(), "b".into()]);
    let merged = round_trip(&merged);
    let whole = round_trip(&synthetic(start.floor(), 900, 900, &union));

    assert_eq!(merged.start_unix_s, whole.start_unix_s);
    assert_eq!(merged.hlogs, whole.hlogs, "histograms add exactly");
    let (m, w) = (merged.timeline.unwrap(), whole.timeline.unwrap());
    assert_eq!(m.columns, w.columns);
    assert_eq!(m.rows, w.rows, "timelines aligned by wall-clock second");
    for p in [
        "/sessions/target",
        "/sessions/held_at_end",
        "/connect/ok",
        "/heartbeats/answered",
        "/rtt_us",
        "/loadgen/rss_bytes_per_session",
    ] {
        assert_eq!(merged.summary.pointer(p), whole.summary.pointer(p), "{p}");
    }
    assert_eq!(merged.summary["errors"]["total"], json!(2));
    assert_eq!(
        merged.summary["rtt_us"]["count"],
        json!(whole_count(&union))
    );
}

fn whole_count(seconds: &BTreeMap<u64, Second>) -> u64 {
    seconds.values().map(|s| s.rtt.len() as u64).sum()
}

#[test]
fn one_server_measured_by_two_loadgens_is_not_counted_twice() {
    let seconds: BTreeMap<u64, Second> = (1..=2).map(|t| (t, second(t, 1))).collect();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut r = synthetic(100.0, 1000, 1000, &seconds);
        r.summary["server"] = json!({"pid": 7, "rss_bytes": 2_064_000, "rss_baseline_bytes": 2_000_000,
            "rss_bytes_per_session": 64.0, "cpu_us_per_heartbeat": 10.0, "heartbeats_in_window": 500,
            "pss_bytes": 3_000_000, "pss_bytes_per_session_all_in": 3000.0});
        r.summary["loadgen"]["pss_bytes"] = json!(1_000_000);
        r.summary["loadgen"]["pss_bytes_per_session_all_in"] = json!(1000.0);
        runs.push(r);
    }
    let merged = merge(&runs, &[]);
    // All-in: one server's PSS over both runs' sessions; the two
    // loadgens' PSS added, over the same.
    assert_eq!(
        merged.summary["server"]["pss_bytes_per_session_all_in"],
        json!(1500.0)
    );
    assert_eq!(merged.summary["loadgen"]["pss_bytes"], json!(2_000_000));
    assert_eq!(
        merged.summary["loadgen"]["pss_bytes_per_session_all_in"],
        json!(1000.0)
    );
    assert_eq!(
        merged.summary["server"]["rss_bytes_per_session"],
        json!(32.0)
    );
    assert_eq!(merged.summary["server"]["cpu_us_per_heartbeat"], json!(5.0));
}

fn shard_run(index: u64, count: u64, total: u64, epoch_ms: f64, late_ms: f64) -> RunDir {
    RunDir {
        summary: json!({
            "config": {"sessions": total / count, "shard": {"index": index, "count": count, "total_sessions": total}},
            "start": {"epoch_unix_ms": epoch_ms, "late_ms": late_ms},
        }),
        timeline: None,
        start_unix_s: epoch_ms / 1e3,
        hlogs: BTreeMap::new(),
    }
}

#[test]
fn the_shards_merged_are_named_and_a_missing_or_doubled_one_is_not_the_whole_run() {
    let whole = [
        shard_run(0, 3, 300, 1_000.0, 2.0),
        shard_run(1, 3, 300, 1_030.5, 4.5),
        shard_run(2, 3, 300, 1_010.0, 3.0),
    ];
    let v = shards(&whole).expect("sharded");
    assert_eq!(v["complete"], json!(true));
    assert_eq!(v["present"], json!([0, 1, 2]));
    let start = merge_start(&whole);
    assert_eq!(start["spread_ms"], json!(30.5));
    assert_eq!(start["epoch_unix_ms"], json!(1_000.0));
    assert_eq!(start["late_ms_max"], json!(4.5));
    let merged = merge(&whole, &["a".into(), "b".into(), "c".into()]);
    assert_eq!(merged.summary["shards"]["complete"], json!(true));
    assert_eq!(merged.summary["config"]["shard"], Value::Null);

    let partial = [whole[0].clone(), whole[2].clone(), whole[2].clone()];
    let v = shards(&partial).unwrap();
    assert_eq!(v["complete"], json!(false));
    assert_eq!(v["missing"], json!([1]));
    let problems = v["problems"].to_string();
    assert!(problems.contains("[1] of 3 missing"), "{problems}");
    assert!(problems.contains("[2] given more than once"), "{problems}");

    let mixed = [whole[0].clone(), shard_run(1, 2, 300, 1_000.0, 0.0)];
    let v = shards(&mixed).unwrap();
    assert_eq!(v["complete"], json!(false));
    assert!(v["problems"]
        .to_string()
        .contains("3 x 300 sessions and 2 x 300"));

    let seconds: BTreeMap<u64, Second> = (1..=3).map(|t| (t, second(t, 1))).collect();
    let unsharded = synthetic(1_000.0, 300, 300, &seconds);
    assert!(shards(std::slice::from_ref(&unsharded)).is_none());
}
