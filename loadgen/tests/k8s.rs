//! `c10m-loadgen k8s render` as a user runs it, and the Containerfile its
//! objects name. The schema check (kubernetes-validate, strict) is in
//! .ci/run: it needs a Python package from PyPI.

mod common;

use common::run_bounded;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Debian's python3 (apt python3-yaml installs PyYAML there), else the
/// first on PATH.
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn render(extra: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"));
    command.args(["k8s", "render", "--shards", "3"]);
    if !extra.contains(&"--start-at") {
        command.args(["--start-in", "90s"]);
    }
    let o = run_bounded(
        command.args(extra).args([
            "--",
            "--sessions",
            "30000",
            "--heartbeat",
            "20s",
            "--hold",
            "1m",
        ]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The YAML stream, read by PyYAML (what kubectl's YAML reader agrees
/// with on these documents), is the JSON List's items, object for object.
#[test]
fn the_yaml_reads_back_as_the_json_objects() {
    let has_yaml = Command::new(python3())
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_yaml {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with PyYAML (apt python3-yaml) is missing and CI is set"
        );
        eprintln!("SKIPPED: python3 with PyYAML (apt python3-yaml) is missing");
        return;
    }
    let start = ["--start-at", "2030-01-01T00:00:00Z"];
    let yaml = render(&start);
    let json: Value = serde_json::from_str(&render(&[&start[..], &["--format", "json"]].concat()))
        .expect("the json format is JSON");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let o = Command::new(python3())
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             print(json.dumps(docs))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let docs: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(docs, json["items"], "{yaml}");
    assert_eq!(docs.as_array().unwrap().len(), 6);
}

#[test]
fn start_in_fixes_one_start_time_after_the_render() {
    let before = std::time::SystemTime::now();
    let yaml = render(&[]);
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("- \"--start-at="))
        .expect("a --start-at");
    let at = humantime::parse_rfc3339(line.trim_end_matches('"')).unwrap();
    let ahead = at.duration_since(before).unwrap();
    assert!(
        ahead >= Duration::from_secs(89) && ahead <= Duration::from_secs(120),
        "{ahead:?}"
    );
    assert_eq!(yaml.matches("--start-at=").count(), 1, "one Job, one start");
}

#[test]
fn a_bad_render_exits_1_and_prints_nothing_to_apply() {
    let o = Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"))
        .args(["k8s", "render", "--shards", "2", "--", "--out", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "nothing for kubectl apply");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("set --out, which the render sets"), "{err}");
}

/// What the Containerfile copies exists, the packages it builds have the
/// binaries the objects run, and its toolchain is the workspace's
/// rust-version (an image build is then also the MSRV check).
#[test]
fn the_containerfile_copies_what_exists_and_builds_what_the_objects_run() {
    let root = repo();
    let file = std::fs::read_to_string(root.join("loadgen/deploy/Containerfile")).unwrap();
    let copies: Vec<&str> = file
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert!(copies.contains(&"loadgen/scenarios"), "{copies:?}");
    for src in copies {
        assert!(root.join(src).exists(), "COPY {src}: not in the repository");
    }
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        file.contains(&format!("FROM docker.io/library/rust:{msrv}-")),
        "the build stage should use rust {msrv}"
    );
    let yaml = render(&["--node-init"]);
    for bin in ["c10m-server", "c10m-loadgen", "c10m-sysctl"] {
        assert!(
            yaml.contains(&format!("- {bin}\n")),
            "{bin} not run by the objects"
        );
        assert!(file.contains(&format!("-p {bin}")), "{bin} not built");
        assert!(
            file.contains(&format!("target/release/{bin}")),
            "{bin} not copied"
        );
    }
    // The profiles the init containers apply are in the image.
    for profile in [
        "sysctl/profiles/loadgen.conf",
        "sysctl/profiles/c10m-server.conf",
    ] {
        assert!(
            yaml.contains(profile) && root.join(profile).exists(),
            "{profile}"
        );
    }
}
