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
