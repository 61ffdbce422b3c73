use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn args(list: &[&str]) -> RunArgs {
    let mut v = vec!["run"];
    v.extend_from_slice(list);
    Cli::parse_from(v).run
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn every_shipped_scenario_resolves() {
    let mut seen = 0;
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let a = args(&[
                "--scenario",
                path.to_str().unwrap(),
                "--target",
                "127.0.0.1:7000",
            ]);
            let c = RunConfig::resolve(&a).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(c.sessions > 0 && !c.phases.is_empty(), "{}", path.display());
            let m = c.model();
            assert_eq!(m.end_ms, c.timeline().end_ms);
            seen += 1;
        }
    }
    assert!(seen >= 5);
}

#[test]
fn defaults_and_flags() {
    let c = RunConfig::resolve(&args(&["--target", "127.0.0.1:1"])).unwrap();
    assert_eq!(
        (c.sessions, c.rate, c.classes[0].heartbeat_ms),
        (1_000, 1_000.0, 30_000)
    );
    assert!((c.classes[0].jitter - 0.1).abs() < 1e-12);
    assert_eq!(c.phases.len(), 1);
    assert_eq!(c.phases[0].duration_ms, 60_000);
    let c = RunConfig::resolve(&args(&[
        "--sessions",
        "2500",
        "--rate",
        "1000",
        "--hold",
        "3s",
        "--heartbeat",
        "1s",
        "--jitter",
        "5%",
        "--max-p99",
        "20ms",
        "--procs",
        "2",
        "--grace",
        "1s",
    ]))
    .unwrap();
    let tl = c.timeline();
    assert_eq!(
        (tl.ramp_end_ms, tl.end_ms, tl.hold_end_ms, tl.deadline_ms),
        (3_000, 6_000, 6_000, 7_000)
    );
    assert_eq!(c.thresholds.max_p99_us, Some(20_000));
    assert_eq!(c.procs, 2);
    assert_eq!(c.phase_at(100), "ramp");
    assert_eq!(c.phase_at(3_500), "hold");
    assert_eq!(c.phase_at(6_500), "grace");
}

#[test]
fn flags_override_the_file_and_conflicts_are_refused() {
    let path = scenarios_dir().join("storm.toml");
    let p = path.to_str().unwrap();
    let c =
        RunConfig::resolve(&args(&["--scenario", p, "--sessions", "10", "--seed", "9"])).unwrap();
    assert_eq!((c.sessions, c.seed), (10, 9));
    let m = c.model();
    assert_eq!(m.storms.len(), 1);
    assert_eq!(m.storms[0].window_ms, 2_000);
    assert!((m.storms[0].fraction - 0.8).abs() < 1e-12);
    let err = RunConfig::resolve(&args(&["--scenario", p, "--hold", "5s"])).unwrap_err();
    assert!(err.to_string().contains("--hold conflicts"), "{err}");
}

#[test]
fn bad_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str, needle: &str| {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        let err = RunConfig::resolve(&args(&["--scenario", path.to_str().unwrap()])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(needle), "{msg}");
    };
    check("sesions = 3", "unknown field");
    check("heartbeat = \"soon\"", "durations like");
    check("jitter = \"150%\"", "outside");
    check("[[phase]]\nkind = \"drain\"\nduration = \"1s\"\n[[phase]]\nkind = \"hold\"\nduration = \"1s\"", "drain must be the last");
    check(
        "[[phase]]\nkind = \"party\"\nduration = \"1s\"",
        "unknown kind",
    );
    check("[churn]\nlifetime = \"weibull\"\nmean = \"1m\"", "lifetime");
    check("procs = \"many\"", "--procs");
    check("first_heartbeat = \"soon\"", "expected \"spread\"");
}

#[test]
fn first_heartbeat_is_spread_unless_the_file_says_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let resolve = |text: &str| {
        std::fs::write(&path, text).unwrap();
        RunConfig::resolve(&args(&["--scenario", path.to_str().unwrap()])).unwrap()
    };
    let c = resolve("sessions = 10");
    assert_eq!(c.first_heartbeat, "spread");
    assert_eq!(c.model().first, FirstBeat::Spread);
    let c = resolve("sessions = 10\nfirst_heartbeat = \"interval\"");
    assert_eq!(c.model().first, FirstBeat::Interval);
    // Children get the config as JSON; one written before the key existed
    // still reads.
    let mut json = serde_json::to_value(&c).unwrap();
    json.as_object_mut().unwrap().remove("first_heartbeat");
    let old: RunConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.model().first, FirstBeat::Spread);
}

/// Resolves a scenario file of `text` (written into `dir`) with `flags`.
fn resolve_file(dir: &Path, text: &str, flags: &[&str]) -> Result<RunConfig> {
    let path = dir.join("s.toml");
    std::fs::write(&path, text).unwrap();
    let mut list = vec!["--scenario", path.to_str().unwrap()];
    list.extend_from_slice(flags);
    RunConfig::resolve(&args(&list))
}

#[test]
fn tick_comes_from_the_flag_or_the_file_in_whole_milliseconds_within_the_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |text: &str, flags: &[&str]| resolve_file(dir.path(), text, flags);
    let c = resolve("sessions = 10", &[]).unwrap();
    assert_eq!((c.tick_ms, c.model().tick_ms), (1, 1));
    let c = resolve("sessions = 10\ntick = \"4ms\"", &[]).unwrap();
    assert_eq!((c.tick_ms, c.model().tick_ms), (4, 4));
    let c = resolve("sessions = 10\ntick = \"4ms\"", &["--tick", "2ms"]).unwrap();
    assert_eq!(c.model().tick_ms, 2);
    // Children get the config as JSON; one written before the key existed
    // still reads, with the old 1 ms.
    let mut json = serde_json::to_value(&c).unwrap();
    json.as_object_mut().unwrap().remove("tick_ms");
    let old: RunConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.model().tick_ms, 1);
    let err = |text: &str, flags: &[&str]| format!("{:#}", resolve(text, flags).unwrap_err());
    assert!(err("tick = \"1500us\"", &[]).contains("whole number of milliseconds"));
    assert!(err("", &["--tick", "0ms"]).contains("whole number of milliseconds"));
    assert!(err("", &["--tick", "101ms"]).contains("outside 1 .. 100 ms"));
    // 50 ms less 90 % jitter is 5 ms: a 6 ms tick could merge two beats.
    let msg = err(
        "[[class]]\nname = \"fast\"\nweight = 1\nheartbeat = \"50ms\"\njitter = \"90%\"",
        &["--tick", "6ms"],
    );
    assert!(
        msg.contains("class \"fast\"") && msg.contains("at most 5 ms"),
        "{msg}"
    );
    assert!(resolve(
        "[[class]]\nname = \"fast\"\nweight = 1\nheartbeat = \"50ms\"\njitter = \"90%\"",
        &["--tick", "5ms"],
    )
    .is_ok());
}

#[test]
fn uring_recv_comes_from_the_flag_or_the_file_and_old_configs_read_as_armed() {
    let dir = tempfile::tempdir().unwrap();
    let resolve = |text: &str, flags: &[&str]| resolve_file(dir.path(), text, flags);
    let c = resolve("sessions = 10", &[]).unwrap();
    assert_eq!(c.uring_recv, UringRecv::Deferred);
    let c = resolve("sessions = 10\nuring_recv = \"armed\"", &[]).unwrap();
    assert_eq!(c.uring_recv, UringRecv::Armed);
    let c = resolve("uring_recv = \"armed\"", &["--uring-recv", "deferred"]).unwrap();
    assert_eq!(c.uring_recv, UringRecv::Deferred);
    // A config written before the option ran armed recvs.
    let mut json = serde_json::to_value(&c).unwrap();
    json.as_object_mut().unwrap().remove("uring_recv");
    let old: RunConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.uring_recv, UringRecv::Armed);
    let err = format!("{:#}", resolve("", &["--uring-recv", "lazy"]).unwrap_err());
    assert!(
        err.contains("uring_recv \"lazy\": expected deferred or armed"),
        "{err}"
    );
}

#[test]
fn a_shard_takes_its_share_of_sessions_rate_inflight_and_expectation() {
    let c = RunConfig::resolve(&args(&[
        "--sessions",
        "10",
        "--rate",
        "900",
        "--max-inflight",
        "100",
        "--expect-sessions",
        "10",
        "--shard",
        "1/3",
    ]))
    .unwrap();
    let shard = c.shard.unwrap();
    // Ids 1, 4, 7 of 0..10.
    assert_eq!((c.sessions, shard.total_sessions), (3, 10));
    assert_eq!((shard.global(0), shard.global(2)), (1, 7));
    assert_eq!(c.rate, 300.0);
    assert_eq!(c.max_inflight, 34);
    assert_eq!(c.thresholds.expect_sessions, Some(3));
    // Every id is in exactly one shard.
    let mut ids: Vec<u64> = (0..3)
        .flat_map(|k| {
            let s = ShardConfig {
                index: k,
                count: 3,
                total_sessions: 10,
            };
            (0..s.sessions()).map(move |l| s.global(l))
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    let e = RunConfig::resolve(&args(&["--sessions", "2", "--shard", "2/3"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("leave none to shard 2"), "{e}");
    for bad in ["3/3", "1", "a/2", "0/0"] {
        let e = RunConfig::resolve(&args(&["--shard", bad]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected K/N"), "{bad}: {e}");
    }
}

#[test]
fn an_indexed_jobs_environment_names_the_shard_and_half_of_it_is_refused() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(shard_of(None, env(&[])).unwrap(), None);
    let job = env(&[("JOB_COMPLETION_INDEX", "2"), ("C10M_SHARDS", "4")]);
    assert_eq!(shard_of(None, job).unwrap(), Some((2, 4)));
    // The flag wins.
    assert_eq!(shard_of(Some("0/2"), job).unwrap(), Some((0, 2)));
    let e = shard_of(None, env(&[("JOB_COMPLETION_INDEX", "2")])).unwrap_err();
    assert!(e.to_string().contains("set C10M_SHARDS"), "{e}");
    let e = shard_of(None, env(&[("C10M_SHARDS", "4")])).unwrap_err();
    assert!(e.to_string().contains("JOB_COMPLETION_INDEX is not"), "{e}");
    let e = shard_of(
        None,
        env(&[("JOB_COMPLETION_INDEX", "4"), ("C10M_SHARDS", "4")]),
    );
    assert!(e.unwrap_err().to_string().contains("C10M_SHARDS=4"));
}

#[test]
fn start_at_reads_rfc_3339_and_unix_seconds() {
    use crate::cli::parse_start_at;
    assert_eq!(parse_start_at("1765000000.25"), Ok(1_765_000_000_250));
    assert_eq!(
        parse_start_at("2026-12-06T00:00:00.5Z"),
        Ok(1_796_515_200_500)
    );
    let e = parse_start_at("tomorrow").unwrap_err();
    assert!(e.contains("2026-12-06T10:00:00Z or Unix seconds"), "{e}");
    let c = RunConfig::resolve(&args(&["--start-at", "1765000000"])).unwrap();
    assert_eq!(c.start_at_unix_ms, Some(1_765_000_000_000));
}
