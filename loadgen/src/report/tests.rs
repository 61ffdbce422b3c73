use super::*;
use crate::cli::RunArgs;

fn outcome(held: u64, errors: u64, p99_us: u64) -> RunOutcome {
    let args = RunArgs {
        sessions: Some(100),
        expect_sessions: Some(100),
        max_p99: Some(std::time::Duration::from_millis(1)),
        max_errors: Some(0),
        progress: "off".into(),
        ..RunArgs::default()
    };
    let config = RunConfig::resolve(&args).unwrap();
    let mut counters = Counters {
        held_at_end: held,
        connects_ok: 100,
        heartbeats_sent: 10,
        heartbeats_answered: 10,
        ..Counters::default()
    };
    counters.errors[ErrorKind::AddrNotAvail as usize] = errors;
    let mut histos = Histos::new();
    for _ in 0..10 {
        histos.rtt.record(p99_us).unwrap();
    }
    RunOutcome {
        config,
        start: StartMeasure {
            epoch_unix_ms: 1_000_000.5,
            intended_unix_ms: None,
        },
        host: HostFacts::probe(),
        procs: 1,
        threads: 2,
        io: "epoll".into(),
        io_why: "auto:fits-tables".into(),
        uring_recv: None,
        counters,
        histos,
        full_hold: Histos::new(),
        cpu_window_from: "all sessions open",
        first_errors: BTreeMap::new(),
        peak_open: held,
        connect_rate_peak: 100,
        connect_rate_mean: 100.0,
        ramp_seconds: 1,
        heartbeat_rate_peak: 10,
        loadgen: RssMeasure {
            baseline_bytes: 1_000_000,
            held_bytes: 1_003_200,
            sessions: 100,
            processes: 1,
            pss_bytes: 1_500_000,
        },
        loadgen_anon: RssMeasure::default(),
        server: None,
        kernel: None,
        loadgen_cpu: Default::default(),
        monitor: Default::default(),
        duration_s: 3.0,
    }
}

#[test]
fn summary_has_the_design_schema_and_the_thresholds_pass() {
    let o = outcome(100, 0, 500);
    let s = summary(&o);
    for key in [
        "/config",
        "/host/kernel",
        "/host/rlimit_nofile_hard",
        "/host/sysctl",
        "/host/free_page_reporting_order",
        "/layout/io",
        "/layout/uring_recv",
        "/sessions/target",
        "/sessions/peak",
        "/sessions/held_at_end",
        "/connect/ok",
        "/connect/rate_per_s_peak",
        "/connect/latency_us/p999",
        "/heartbeats/sent",
        "/heartbeats/answered",
        "/rtt_us/p50",
        "/rtt_us/max",
        "/errors/addr_not_avail",
        "/errors/emfile",
        "/loadgen/rss_bytes",
        "/loadgen/rss_bytes_per_session",
    ] {
        assert!(s.pointer(key).is_some(), "{key}");
    }
    assert_eq!(s["loadgen"]["rss_bytes_per_session"], 32.0);
    assert_eq!(s["loadgen"]["cpu_window_from"], "all sessions open");
    assert!(s["loadgen"]["rss_anon_bytes_per_session"].is_null());
    assert!(threshold_failures(&o.config, &s).is_empty());
    let t = table(&s);
    assert!(
        t.lines().any(|l| l.contains("loadgen memory per session")
            && l.ends_with(" 32.0 B marginal (RSS growth) / 15000.0 B all-in (PSS)")),
        "{t}"
    );
    assert_eq!(s["heartbeats"]["unanswered"], 0);
    assert!(
        !t.contains("protocol"),
        "resp, the default, is not named: {t}"
    );
    assert_eq!(s["config"]["protocol"]["kind"], "resp");
}

#[test]
fn the_table_names_a_vm_that_reports_free_pages_beside_a_large_ramp() {
    let mut o = outcome(100, 0, 500);
    o.host.free_page_reporting_order = Some(9);
    let t = table(&summary(&o));
    assert!(
        !t.contains("ramp memory"),
        "100 sessions' slab is no cost: {t}"
    );
    o.config.sessions = 10_000;
    let t = table(&summary(&o));
    let rows: Vec<&str> = t.lines().collect();
    let at = rows
        .iter()
        .position(|l| l.trim_start().starts_with("ramp memory"))
        .unwrap_or_else(|| panic!("no ramp memory row: {t}"));
    assert!(rows[at - 1].contains("connect rate: ramp"), "{t}");
    assert!(
        rows[at].contains("free page reporting, blocks of 2048 KiB and up"),
        "{t}"
    );
    assert!(rows[at].contains("turn free page reporting off"), "{t}");
    // A ramp that kept to its rate was not held back: no row.
    o.config.rate = 20_000.0;
    o.counters.ramp_connected = 10_000;
    o.counters.ramp_first_us = 0;
    o.counters.ramp_last_us = 500_000; // 20 000/s
    assert!(!table(&summary(&o)).contains("ramp memory"), "on its rate");
    o.counters.ramp_last_us = 600_000; // 16 667/s: under 90 %
    assert!(
        table(&summary(&o)).contains("ramp memory"),
        "short of its rate"
    );
    o.host.free_page_reporting_order = None;
    assert!(!table(&summary(&o)).contains("ramp memory"), "bare metal");
}

#[test]
fn the_table_names_a_protocol_other_than_resp() {
    let mut o = outcome(100, 0, 500);
    o.config.protocol.kind = crate::proto::ProtocolKind::Mqtt;
    o.config.protocol.mqtt_version = crate::proto::MqttVersion::V5;
    o.config.protocol.keepalive_s = 34;
    let t = table(&summary(&o));
    assert!(
        t.lines()
            .next()
            .unwrap()
            .ends_with("  mqtt 5 (keepalive 34 s)"),
        "{t}"
    );
    o.config.protocol.kind = crate::proto::ProtocolKind::Http;
    o.config.protocol.path = "/health".into();
    o.config.protocol.host = Some("api.test".into());
    let t = table(&summary(&o));
    assert!(
        t.lines()
            .next()
            .unwrap()
            .ends_with("  http /health, Host api.test"),
        "{t}"
    );
}

#[test]
fn unanswered_heartbeats_are_counted_shown_and_gated() {
    let mut o = outcome(100, 0, 500);
    o.config.thresholds.max_unanswered = Some(0);
    o.counters.heartbeats_sent = 1_000;
    o.counters.heartbeats_answered = 990;
    o.counters.heartbeats_lost = 7; // at a close; 3 more outstanding at the end
    let s = summary(&o);
    assert_eq!(s["heartbeats"]["unanswered"], 10);
    assert_eq!(s["heartbeats"]["unanswered_at_close"], 7);
    assert_eq!(s["heartbeats"]["unanswered_at_end"], 3);
    let failed = threshold_failures(&o.config, &s);
    assert_eq!(
        failed,
        ["--max-unanswered 0: 10 heartbeats unanswered (7 at a close, 3 at the end)"]
    );
    let t = table(&s);
    assert!(
        t.contains("1000 / 990 / 10 (RTT percentiles leave them out: lower bounds)"),
        "{t}"
    );
    o.config.thresholds.max_unanswered = Some(10);
    assert!(threshold_failures(&o.config, &summary(&o)).is_empty());
}

#[test]
fn each_failed_threshold_is_named_with_its_numbers() {
    let o = outcome(60, 3, 5_000);
    let s = summary(&o);
    let failed = threshold_failures(&o.config, &s);
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed[0].contains("--expect-sessions 100: held 60"));
    assert!(failed[1].contains("--max-p99 1000us"));
    assert!(failed[2].contains("--max-errors 0: 3 errors"));
    // The hint names the limit and the fix.
    let hint = s["error_hints"]["addr_not_avail"].as_str().unwrap();
    assert!(
        hint.contains("widen --source or ip_local_port_range"),
        "{hint}"
    );
    assert!(table(&s).contains("3 (addr_not_avail=3)"));
}

#[test]
fn kernel_and_host_memory_are_per_connection_with_other_growers_named() {
    let mut o = outcome(100, 0, 500);
    let caches = |tcp: u64, kmalloc: u64, small: u64| {
        BTreeMap::from([
            ("TCP".to_string(), tcp),
            ("kmalloc-64".to_string(), kmalloc),
            ("kmalloc-8".to_string(), small),
        ])
    };
    o.kernel = Some(KernelMeasure {
        slab_before: caches(1_000, 0, 0),
        slab_held: caches(1_000 + 100 * 4_000, 2 << 20, 800),
        mem_available_before: 10_000_000,
        mem_available_held: 9_000_000,
        connections: 100,
        both_ends_local: true,
    });
    o.server = Some(ServerMeasure {
        pid: 1,
        rss: RssMeasure {
            baseline_bytes: 1_000,
            held_bytes: 4_000,
            sessions: 100,
            processes: 3,
            pss_bytes: 30_000,
        },
        ..ServerMeasure::default()
    });
    let s = summary(&o);
    let f = |p: &str| s.pointer(p).and_then(Value::as_f64).unwrap();
    // Headline: every cache's growth (400 000 + 2 MiB + 800) / 100, each
    // cache counted once though it is in both readings.
    assert_eq!(f("/kernel/slab_bytes_per_connection"), 24_979.5);
    assert_eq!(f("/kernel/slab_bytes_per_socket"), 12_489.8);
    assert_eq!(
        f("/kernel/slab_connection_caches_bytes_per_connection"),
        4_000.0
    );
    assert_eq!(f("/kernel/mem_available_drop_per_connection"), 10_000.0);
    let other = &s["kernel"]["slab_other_growth_bytes"];
    assert_eq!(other["kmalloc-64"], json!(2 << 20));
    assert!(
        other.get("kmalloc-8").is_none(),
        "growth under 1 MiB is left out"
    );
    assert_eq!(s["server"]["processes"], json!(3));
    assert_eq!(f("/memory_per_connection/server_user"), 30.0);
    assert_eq!(
        f("/memory_per_connection/sum_of_parts"),
        24_979.5 + 30.0 + 32.0
    );
    // All-in: the whole PSS of each role's processes per session.
    assert_eq!(f("/server/pss_bytes_per_session_all_in"), 300.0);
    assert_eq!(f("/loadgen/pss_bytes_per_session_all_in"), 15_000.0);
    assert_eq!(f("/memory_per_connection/server_user_all_in"), 300.0);
    let t = table(&s);
    assert!(
        t.contains("30.0 B marginal (RSS growth) / 300.0 B all-in (PSS)"),
        "{t}"
    );
    assert!(
        t.contains("24980 B, all caches (connection caches alone: 4000 B"),
        "{t}"
    );
}

#[test]
fn per_session_memory_is_withheld_when_the_sample_saw_under_half_the_target() {
    let mut o = outcome(100, 0, 500);
    o.loadgen.sessions = 49;
    o.loadgen.held_bytes = 1_000_000 + 49 * 32;
    let s = summary(&o);
    assert!(s["loadgen"]["rss_bytes_per_session"].is_null());
    let note = s["monitor"]["held_sample_note"].as_str().unwrap();
    assert!(
        note.contains("49 sessions open") && note.contains("(50)"),
        "{note}"
    );
    o.loadgen.sessions = 50;
    o.loadgen.held_bytes = 1_000_000 + 50 * 32;
    let s = summary(&o);
    assert_eq!(s["loadgen"]["rss_bytes_per_session"], 32.0);
    assert_eq!(s["loadgen"]["cpu_window_from"], "all sessions open");
    // A sample taken after the hold ended is flagged.
    o.monitor.held_sample_ms = u64::from(o.config.timeline().hold_end_ms) + 2_500;
    let note = summary(&o)["monitor"]["held_sample_note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .contains("2500 ms after the hold ended"),
        "{note}"
    );
}

#[test]
fn expect_hold_counts_from_when_the_last_ramp_session_opened() {
    // 100 sessions, hold 60 s after a 1 s nominal ramp: the hold ends at
    // 61 000 ms. The last ramp session opened at 20.5 s: held 40.5 s.
    let mut o = outcome(100, 0, 500);
    o.config.thresholds.expect_hold_ms = Some(40_000);
    o.counters.ramp_connected = 100;
    o.counters.ramp_first_us = 1_000;
    o.counters.ramp_last_us = 20_500_000;
    for _ in 0..99 {
        o.full_hold.rtt.record(700).unwrap();
    }
    o.full_hold.rtt.record(90_000).unwrap();
    let s = summary(&o);
    assert_eq!(s["rtt_us_full_hold"]["count"], 100);
    assert_eq!(s["rtt_us_full_hold"]["p50"], 700);
    assert!(
        table(&s).contains("all open, in the hold") && table(&s).contains("over 100 replies"),
        "{}",
        table(&s)
    );
    assert_eq!(s["timeline_ms"]["hold_end"], 61_000);
    assert_eq!(s["sessions"]["all_open_ms"], 20_500);
    assert_eq!(s["sessions"]["full_hold_ms"], 40_500);
    assert!(threshold_failures(&o.config, &s).is_empty());
    assert!(
        table(&s).contains("all open from 20.5 s: held 40.5 s"),
        "{}",
        table(&s)
    );

    o.config.thresholds.expect_hold_ms = Some(45_000);
    let failed = threshold_failures(&o.config, &summary(&o));
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("open only 40500 ms") && failed[0].contains("finished at 20500 ms"),
        "{failed:?}"
    );

    // One ramp session never opened: no full hold at all.
    o.counters.ramp_connected = 99;
    let s = summary(&o);
    assert!(s["sessions"]["full_hold_ms"].is_null());
    let failed = threshold_failures(&o.config, &s);
    assert!(
        failed[0].contains("never had all 100 sessions open"),
        "{failed:?}"
    );
}
