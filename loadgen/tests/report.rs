//! The offline subcommands on a committed fixture run
//! (`tests/fixtures/ci-short`: the first seconds of a `ci` campaign, see
//! its README): `report` renders the charts and results.md, `regress`
//! passes an equal run and fails one session short (exit 1), `merge` of a
//! run with itself doubles its counts.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ci-short")
}

/// A writable copy of the fixture.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"))
        .args(args)
        .output()
        .expect("run c10m-loadgen")
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn report_renders_the_charts_and_results_page() {
    let dir = copy_fixture();
    let d = dir.path().to_str().unwrap();
    let table = ok(&loadgen(&["report", d]));
    assert!(table.contains("sessions held / target"), "{table}");
    for (chart, text) in [
        ("sessions.svg", "sessions open"),
        ("rss.svg", "loadgen"),
        ("rtt.svg", "p99.9"),
        ("rtt-spectrum.svg", "percentile"),
    ] {
        let png = std::fs::read(dir.path().join(chart).with_extension("png")).expect(chart);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{chart}: PNG twin");
        assert!(
            png.len() > 5_000,
            "{chart}: a PNG of {} bytes draws nothing",
            png.len()
        );
        let svg = std::fs::read_to_string(dir.path().join(chart)).expect(chart);
        assert!(svg.starts_with("<svg"), "{chart}");
        assert!(svg.contains(text), "{chart} lacks {text:?}");
        assert!(svg.contains("<polyline"), "{chart} draws no line");
    }
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(
        md.contains("| sessions held / target | 60000 / 60000 "),
        "{md}"
    );
    assert!(
        md.contains("| heartbeats sent / answered / unanswered | 197832 / 197832 / 0 |"),
        "{md}"
    );
    assert!(md.contains("B all-in (PSS) |"), "{md}");
    assert!(md.contains("![rtt-spectrum.svg](rtt-spectrum.svg)"), "{md}");
}

#[test]
fn regress_passes_an_equal_run_and_fails_one_session_short() {
    let dir = copy_fixture();
    let d = dir.path().to_str().unwrap();
    let baseline = dir.path().join("baseline.json");
    let b = baseline.to_str().unwrap();
    ok(&loadgen(&[
        "regress",
        d,
        "--baseline",
        b,
        "--update-baseline",
    ]));
    let table = ok(&loadgen(&["regress", d, "--baseline", b]));
    assert!(table.contains("no regression"), "{table}");

    let mut s = summary(dir.path());
    s["sessions"]["held_at_end"] = Value::from(59_999);
    std::fs::write(dir.path().join("summary.json"), s.to_string()).unwrap();
    let out = loadgen(&["regress", d, "--baseline", b]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("59999 of 60000"), "{table}");
    assert!(table.contains("REGRESSION"), "{table}");
}

#[test]
fn merge_of_a_run_with_itself_doubles_its_counts() {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let f = fixture();
    let f = f.to_str().unwrap();
    ok(&loadgen(&["merge", merged.to_str().unwrap(), f, f]));
    let (one, two) = (summary(&fixture()), summary(&merged));
    for p in [
        "/sessions/held_at_end",
        "/heartbeats/answered",
        "/connect/ok",
    ] {
        let (a, b) = (one.pointer(p).unwrap(), two.pointer(p).unwrap());
        assert_eq!(b.as_u64().unwrap(), 2 * a.as_u64().unwrap(), "{p}");
    }
    assert!(merged.join("timeline.csv").exists() && merged.join("rtt.hlog").exists());
    assert!(merged.join("results.md").exists());
}
