//! Helpers shared by the loadgen's integration tests (`mod common;`):
//! workspace binaries, a bounded run of `c10m-loadgen run`, and reading
//! its summary.

#![allow(dead_code)] // each test binary uses what it needs

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary `bin` of workspace package `package`: `$env_var` if set,
/// else the one of the test's own profile (scripts/test runs `cargo build
/// --workspace --bins` first), else built once into a target directory of
/// its own beside it (`loadgen-tests-<suffix>`), for a lone `cargo test
/// -p c10m-loadgen`.
pub fn workspace_bin(package: &str, bin: &str, env_var: &str, suffix: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let beside = profile_dir.join(bin);
    if beside.exists() {
        return beside;
    }
    let own_target = profile_dir.join(format!("loadgen-tests-{suffix}"));
    let built = own_target.join("debug").join(bin);
    eprintln!(
        "{bin} not found at {}; building it into {}",
        beside.display(),
        own_target.display()
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", package, "--bin", bin, "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&own_target)
        .status()
        .expect("run cargo");
    assert!(status.success() && built.exists(), "could not build {bin}");
    built
}

/// Runs `command` (stdout and stderr piped) to its end; panics if it has
/// not stopped by itself within `limit` (it is killed first).
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the command");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{command:?} did not stop by itself within {limit:?}");
}

pub fn summary(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

pub fn num(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} missing in {v:#}"))
}

/// Whether this kernel runs the loadgen's io_uring client (SOCKET into a
/// slot, URING_CMD setsockopt, BIND: Linux 6.11); prints SKIPPED if not.
pub fn io_uring_client(test: &str) -> bool {
    match c10m_server::sys::uring::client::client_probe() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
