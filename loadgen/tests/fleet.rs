//! scripts/fleet-local: K loadgen "pods" in network namespaces of their
//! own, under the Indexed Job's environment contract, against a server in
//! another namespace; then scripts/fleet-check.py, which must pass on the
//! real merge and fail on a merge that lost or doubled anything.
//!
//! Needs root and iproute2 (network namespaces): skipped with a message
//! without them, failed under CI.

mod common;

use common::{run_bounded, workspace_bin};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn can_make_namespaces() -> bool {
    // The effective uid, from /proc (no extra nix feature for one test).
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    });
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = format!("root: {root}, iproute2: {ip}");
    assert!(
        std::env::var_os("CI").is_none(),
        "fleet-local needs root and iproute2 and CI is set ({why})"
    );
    eprintln!("SKIPPED: fleet-local needs root and iproute2 ({why})");
    false
}

fn check(out: &Path, k: u32, loadgen: &Path) -> Output {
    run_bounded(
        Command::new("python3")
            .arg(repo().join("scripts/fleet-check.py"))
            .arg("--loadgen")
            .arg(loadgen)
            .arg(out)
            .arg(k.to_string()),
        Duration::from_secs(60),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The check fails naming `what` once `tamper` has changed a copy of the
/// results; the copy is thrown away afterwards.
fn fails_after(out: &Path, loadgen: &Path, what: &str, tamper: impl FnOnce(&Path)) {
    let copy = out.with_extension(what.replace(['/', ' '], "-"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(out)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    tamper(&copy);
    let o = check(&copy, 2, loadgen);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{what}: {t}");
    assert!(t.contains(&format!("FAIL {what}")), "{what}: {t}");
    std::fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn pods_in_namespaces_merge_to_the_whole_run_and_the_check_catches_a_bad_merge() {
    if !can_make_namespaces() {
        return;
    }
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_c10m-loadgen"));
    let server = workspace_bin("c10m-server", "c10m-server", "C10M_SERVER_BIN", "server");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(&loadgen, bin.join("c10m-loadgen")).unwrap();
    std::os::unix::fs::symlink(&server, bin.join("c10m-server")).unwrap();
    let out = dir.path().join("fleet");
    let o = run_bounded(
        Command::new(repo().join("scripts/fleet-local"))
            .args(["2", "--sessions", "2001", "--rate", "2000"])
            .args(["--heartbeat", "1s", "--hold", "4s", "--max-errors", "0"])
            .env("C10M_BIN", &bin)
            .env("C10M_OUT", &out),
        Duration::from_secs(120),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!t.contains("FAIL"), "{t}");
    assert!(t.contains("ok   every session held: 2001 of 2001"), "{t}");
    let passed = t
        .lines()
        .find_map(|l| l.strip_prefix("fleet-check: "))
        .expect("a verdict line");
    let (n, rest) = passed.split_once(" of ").unwrap();
    assert!(rest.starts_with(&format!("{n} checks passed")), "{passed}");
    // The environment contract made the shards: 1001 + 1000 sessions.
    for (k, sessions) in [(0, 1001), (1, 1000)] {
        let s = common::summary(&out.join(format!("shard-{k}")));
        assert_eq!(s["config"]["shard"]["index"], k);
        assert_eq!(s["config"]["shard"]["count"], 2);
        assert_eq!(s["sessions"]["held_at_end"], sessions);
    }
    // No namespace of the run is left.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.lines().any(|l| l.starts_with("c10m-fl-")), "{list}");

    fails_after(&out, &loadgen, "sum sessions/held_at_end", |c| {
        edit_json(&c.join("merged/summary.json"), |v| {
            v["sessions"]["held_at_end"] =
                (v["sessions"]["held_at_end"].as_u64().unwrap() + 1).into()
        })
    });
    fails_after(&out, &loadgen, "histogram rtt", |c| {
        std::fs::copy(c.join("shard-0/rtt.hlog"), c.join("merged/rtt.hlog")).unwrap();
    });
    fails_after(&out, &loadgen, "shards", |c| {
        std::fs::remove_dir_all(c.join("merged")).unwrap();
        let o = Command::new(&loadgen)
            .arg("merge")
            .arg(c.join("merged"))
            .arg(c.join("shard-0"))
            .arg(c.join("shard-0"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&o.stderr).contains("shard(s) [1] of 2 missing"));
    });
    fails_after(&out, &loadgen, "ramps aligned", |c| {
        edit_json(&c.join("shard-1/summary.json"), |v| {
            let e = v["start"]["epoch_unix_ms"].as_f64().unwrap();
            v["start"]["epoch_unix_ms"] = (e + 60.0).into();
            v["start"]["late_ms"] = (v["start"]["late_ms"].as_f64().unwrap() + 60.0).into();
        })
    });
}
