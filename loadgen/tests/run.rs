//! `c10m-loadgen run` end to end, against the real c10m-server on
//! loopback, at up to 10 000 sessions.
//!
//! The test process holds no sockets itself (the descriptor cap is per
//! process): it runs the server and the loadgen as children.
//!
//! Precondition: the `c10m-server` binary of the same profile exists
//! (scripts/test runs `cargo build --workspace --bins` first). If it does
//! not, it is built once into a separate target directory;
//! `C10M_SERVER_BIN` overrides the path.

mod common;

use common::{describe, io_uring_client, num, run_bounded, summary, workspace_bin};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("c10m-server", "c10m-server", "C10M_SERVER_BIN", "server"))
        .clone()
}

/// A c10m-server on 127.0.0.1:0; stopped (SIGTERM) and reaped on drop.
struct Server {
    child: Child,
    addr: String,
    /// `host:port` of `--metrics`, when given.
    metrics: Option<String>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        // No loop-lag shedding: these tests share 2 cores with builds and
        // each other, where a server thread may wait >100 ms for a CPU; a
        // busy refusal would then delay a session 5 s and fail the test.
        let mut child = Command::new(server_bin())
            .args(["--listen", "127.0.0.1:0", "--stats-interval", "0s"])
            .args(["--max-lag", "0s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start c10m-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("c10m-server exited before printing its address")
                .unwrap();
            if let Some(url) = line.strip_prefix("c10m-server metrics on http://") {
                metrics = url.strip_suffix("/metrics").map(str::to_string);
            }
            if let Some(rest) = line.strip_prefix("c10m-server listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            metrics,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `c10m-loadgen run ARGS` (split on whitespace) to completion
/// (killed after 60 s at most).
fn loadgen(args: &str) -> Output {
    loadgen_with_nofile(args, None)
}

/// [`loadgen`], with RLIMIT_NOFILE (soft and hard) set to `nofile`.
fn loadgen_with_nofile(args: &str, nofile: Option<u64>) -> Output {
    loadgen_with_limits(args, nofile, None)
}

/// CAP_IPC_LOCK's bit in the capability sets.
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// [`loadgen_with_nofile`], and with `memlock`: RLIMIT_MEMLOCK (soft and
/// hard) set to it and CAP_IPC_LOCK dropped from the bounding set, as in a
/// container, so that io_uring rings count against the limit.
fn loadgen_with_limits(args: &str, nofile: Option<u64>, memlock: Option<u64>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"));
    if let Some(bytes) = memlock {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and
        // calls only prctl and setrlimit, both async-signal-safe; it
        // touches no locks or allocations of the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_MEMLOCK,
                    bytes,
                    bytes,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    if let Some(limit) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches no memory of
        // the parent; lowering a limit needs no privilege.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    command
        .arg("run")
        .args(["--progress", "plain"])
        .args(args.split_whitespace());
    run_bounded(&mut command, Duration::from_secs(60))
}

#[test]
fn holds_ten_thousand_sessions_and_answers_every_heartbeat() {
    holds_ten_thousand_sessions_and_answers_every_heartbeat_on("epoll");
}

#[test]
fn holds_ten_thousand_sessions_and_answers_every_heartbeat_on_io_uring() {
    holds_ten_thousand_sessions_and_answers_every_heartbeat_on("uring");
}

fn holds_ten_thousand_sessions_and_answers_every_heartbeat_on(io: &str) {
    if io == "uring" && !io_uring_client("holds_ten_thousand_sessions_and_answers_every_heartbeat")
    {
        return;
    }
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen(&format!(
        "--io {io} --target {} --sessions 10000 --rate 10000 --hold 3s --heartbeat 1s --out {} --expect-sessions 10000 --max-errors 0",
        server.addr, dir.path().to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(s["layout"]["io"], io, "{:#}", s["layout"]);
    for key in [
        "/config/sessions",
        "/host/kernel",
        "/host/cores",
        "/host/ram_bytes",
        "/host/rlimit_nofile_soft",
        "/host/rlimit_nofile_hard",
        "/host/sysctl",
        "/sessions/target",
        "/sessions/peak",
        "/sessions/held_at_end",
        "/connect/ok",
        "/connect/rate_per_s_peak",
        "/connect/latency_us/p50",
        "/connect/latency_us/p90",
        "/connect/latency_us/p99",
        "/connect/latency_us/p999",
        "/connect/latency_us/max",
        "/heartbeats/sent",
        "/heartbeats/answered",
        "/rtt_us/p50",
        "/rtt_us/p90",
        "/rtt_us/p99",
        "/rtt_us/p999",
        "/rtt_us/max",
        "/errors/refused",
        "/errors/timeout",
        "/errors/reset",
        "/errors/addr_not_avail",
        "/errors/emfile",
        "/errors/protocol",
        "/errors/other",
        "/loadgen/rss_bytes",
        "/loadgen/rss_bytes_per_session",
    ] {
        assert!(s.pointer(key).is_some(), "summary.json lacks {key}");
    }
    assert_eq!(num(&s, "/sessions/held_at_end"), 10_000);
    assert_eq!(num(&s, "/connect/ok"), 10_000);
    let sent = num(&s, "/heartbeats/sent");
    // 10 000 sessions x 1 s heartbeats over a ~4 s run (first phases spread).
    assert!(sent > 25_000, "only {sent} heartbeats");
    assert_eq!(num(&s, "/heartbeats/answered"), sent);
    assert_eq!(num(&s, "/rtt_us/count"), sent);
    assert!(num(&s, "/rtt_us/p50") > 0);
    // All 10 000 opened within the nominal 1 s ramp: the full hold starts
    // after it, and so does the CPU window.
    let all_open = num(&s, "/sessions/all_open_ms");
    assert!((1..=1_500).contains(&all_open), "{all_open}");
    assert!(num(&s, "/sessions/full_hold_ms") >= 2_500);
    assert!(num(&s, "/rtt_us_full_hold/count") > 0);
    assert!(num(&s, "/rtt_us_full_hold/count") < sent);
    assert_eq!(s["loadgen"]["cpu_window_from"], "all sessions open");
    let timeline = std::fs::read_to_string(dir.path().join("timeline.csv")).unwrap();
    assert!(timeline.lines().count() >= 5, "{timeline}");
    for log in ["rtt.hlog", "connect.hlog", "send_lag.hlog"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(
            text.lines().any(|l| l.starts_with("Tag=")),
            "{log} has no intervals"
        );
    }
}

#[test]
fn expect_sessions_fails_when_the_server_admits_fewer() {
    expect_sessions_fails_when_the_server_admits_fewer_on("epoll");
}

#[test]
fn expect_sessions_fails_when_the_server_admits_fewer_on_io_uring() {
    expect_sessions_fails_when_the_server_admits_fewer_on("uring");
}

fn expect_sessions_fails_when_the_server_admits_fewer_on(io: &str) {
    if io == "uring" && !io_uring_client("expect_sessions_fails_when_the_server_admits_fewer") {
        return;
    }
    let server = Server::start(&["--max-sessions", "100"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen(&format!(
        "--io {io} --target {} --sessions 300 --rate 1000 --hold 2s --heartbeat 500ms --out {} --expect-sessions 300",
        server.addr, dir.path().to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("threshold failed"))
        .collect();
    assert_eq!(verdict.len(), 1, "{stderr}");
    assert!(
        verdict[0].contains("--expect-sessions 300"),
        "{}",
        verdict[0]
    );
    let s = summary(dir.path());
    // The 100 admitted stay; a rejected retry may be established for an
    // instant when the hold ends, before the server's close arrives.
    let held = num(&s, "/sessions/held_at_end");
    assert!((100..300).contains(&held), "held {held}");
    // Excess sessions were refused busy (or closed before the reply was
    // read), then retried.
    assert!(
        num(&s, "/errors/busy") + num(&s, "/errors/eof") + num(&s, "/errors/reset") > 0,
        "{s:#}"
    );
    let hints = s
        .pointer("/error_hints")
        .and_then(Value::as_object)
        .unwrap();
    assert!(!hints.is_empty());
}

/// A server shedding at its accept rate answers the excess busy; the
/// loadgen retries each refused session after the retry-after it was told
/// (never sooner), and every session gets in.
#[test]
fn busy_refusals_are_retried_after_their_retry_after_until_all_are_in() {
    busy_refusals_are_retried_after_their_retry_after_until_all_are_in_on("epoll");
}

#[test]
fn busy_refusals_are_retried_after_their_retry_after_until_all_are_in_on_io_uring() {
    busy_refusals_are_retried_after_their_retry_after_until_all_are_in_on("uring");
}

fn busy_refusals_are_retried_after_their_retry_after_until_all_are_in_on(io: &str) {
    if io == "uring"
        && !io_uring_client("busy_refusals_are_retried_after_their_retry_after_until_all_are_in")
    {
        return;
    }
    let server = Server::start(&["--workers", "1", "--accept-rate", "400"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen(&format!(
        "--io {io} --target {} --sessions 1000 --rate 5000 --hold 8s --heartbeat 1s --out {} \
         --expect-sessions 1000 --max-errors 0",
        server.addr,
        dir.path().to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(num(&s, "/sessions/held_at_end"), 1000, "{s:#}");
    // 400 of burst, then 400 a second: at least half were told to wait.
    assert!(num(&s, "/errors/busy") >= 500, "{s:#}");
    assert_eq!(
        num(&s, "/errors/total"),
        0,
        "busy is not an error total: {s:#}"
    );
    let hint = s
        .pointer("/error_hints/busy")
        .and_then(Value::as_str)
        .unwrap();
    assert!(hint.contains("retry-after"), "{hint}");
}

#[test]
fn max_p99_and_max_errors_fail_as_they_should() {
    let server = Server::start(&[]);
    let out = loadgen(&format!(
        "--target {} --sessions 200 --rate 1000 --hold 2s --heartbeat 200ms --max-p99 1us --max-errors 0",
        server.addr
    ));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-p99 1us"), "{stderr}");
    assert!(
        !stderr.contains("--max-errors"),
        "no errors expected: {stderr}"
    );
}

#[test]
fn refused_connections_are_counted_with_a_hint() {
    refused_connections_are_counted_with_a_hint_on("epoll");
}

#[test]
fn refused_connections_are_counted_with_a_hint_on_io_uring() {
    refused_connections_are_counted_with_a_hint_on("uring");
}

fn refused_connections_are_counted_with_a_hint_on(io: &str) {
    if io == "uring" && !io_uring_client("refused_connections_are_counted_with_a_hint") {
        return;
    }
    // A port with no listener: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("127.0.0.1:{port}");
    let out = loadgen(&format!(
        "--io {io} --target {} --sessions 50 --rate 500 --hold 1s --out {} --max-errors 0 --grace 0s",
        target,
        dir.path().to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let s = summary(dir.path());
    assert!(num(&s, "/errors/refused") >= 50, "{s:#}");
    let hint = s
        .pointer("/error_hints/refused")
        .and_then(Value::as_str)
        .unwrap();
    assert!(hint.contains("listening"), "{hint}");
}

#[test]
fn refuses_a_plan_that_cannot_fit_before_opening_anything() {
    // One source address and one target give one 4-tuple per ephemeral
    // port: ask for more sessions than this host's port range holds (28 232
    // by default, 55 536 on a tuned loadgen host), in processes that each
    // stay under the descriptor cap.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u64> = range
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let ports = bounds[1] - bounds[0] + 1;
    let sessions = ports + 1_000;
    let procs = sessions.div_ceil(15_000);
    let started = Instant::now();
    let out = loadgen(&format!(
        "--target 127.0.0.1:9 --sessions {sessions} --source 127.0.0.1/32 --procs {procs}"
    ));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot fit") && stderr.contains(&format!("{ports} ephemeral ports")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after {:?}: it must refuse before opening anything",
        started.elapsed()
    );
}

/// The summary of a run that held 3 000 sessions under RLIMIT_NOFILE
/// 1 000 in one process of `drivers` drivers, every heartbeat answered.
fn held_3000_in_one_process_of(s: &Value, drivers: u64) {
    assert_eq!(num(s, "/layout/procs"), 1);
    assert_eq!(num(s, "/layout/threads_per_proc"), drivers);
    assert_eq!(num(s, "/loadgen/processes"), 1);
    assert_eq!(num(s, "/host/rlimit_nofile_hard"), 1_000);
    assert_eq!(num(s, "/sessions/held_at_end"), 3_000);
    let sent = num(s, "/heartbeats/sent");
    assert!(sent > 6_000, "{sent}");
    assert_eq!(num(s, "/heartbeats/answered"), sent);
}

#[test]
fn one_process_holds_more_sessions_than_its_descriptor_limit() {
    // RLIMIT_NOFILE 1 000 (soft and hard) bounds each driver thread's own
    // table: 3 000 sessions need 4 drivers, in one process.
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen_with_nofile(
        &format!(
            "--io epoll --target {} --sessions 3000 --rate 5000 --hold 2s --heartbeat 500ms --out {} \
             --expect-sessions 3000 --max-errors 0 --max-unanswered 0",
            server.addr,
            dir.path().to_str().unwrap()
        ),
        Some(1_000),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    held_3000_in_one_process_of(&s, 4);

    // Told to use one thread, it refuses before opening anything.
    let out = loadgen_with_nofile(
        &format!(
            "--io epoll --target {} --sessions 3000 --threads 1 --hold 1s",
            server.addr
        ),
        Some(1_000),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RLIMIT_NOFILE hard limit is 1000"), "{err}");
    assert!(err.contains("use --threads 4"), "{err}");
}

/// io_uring direct descriptors: RLIMIT_NOFILE 1 000 bounds each ring's
/// table, not the driver, so `auto` keeps one driver per CPU and gives
/// each as many rings as its sessions need (here 3 000 sessions on one
/// driver: 3 rings of 1 000 slots; on two, 2 each).
#[test]
fn one_io_uring_driver_holds_more_sessions_than_its_descriptor_limit() {
    if !io_uring_client("one_io_uring_driver_holds_more_sessions_than_its_descriptor_limit") {
        return;
    }
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen_with_nofile(
        &format!(
            "--target {} --sessions 3000 --threads 1 --rate 5000 --hold 2s --heartbeat 500ms \
             --out {} --expect-sessions 3000 --max-errors 0 --max-unanswered 0",
            server.addr,
            dir.path().to_str().unwrap()
        ),
        Some(1_000),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(s["layout"]["io"], "uring", "{:#}", s["layout"]);
    assert_eq!(s["layout"]["io_why"], "auto:over-tables,io_uring");
    assert_eq!(s["layout"]["uring_recv"], "deferred", "{:#}", s["layout"]);
    held_3000_in_one_process_of(&s, 1);

    // Sessions that fit a table per CPU stay on epoll.
    let out = loadgen_with_nofile(
        &format!(
            "--target {} --sessions 500 --rate 5000 --hold 1s --out {}",
            server.addr,
            dir.path().to_str().unwrap()
        ),
        Some(1_000),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(s["layout"]["io"], "epoll", "{:#}", s["layout"]);
    assert_eq!(s["layout"]["io_why"], "auto:fits-tables");
    assert!(s["layout"]["uring_recv"].is_null(), "{:#}", s["layout"]);
}

/// Without CAP_IPC_LOCK every io_uring ring counts against RLIMIT_MEMLOCK
/// (~180 KiB each). 3 000 sessions under RLIMIT_NOFILE 1 000 need 2 rings
/// on each of 2 drivers (3 on one); under 256 KiB `auto` takes epoll (4
/// drivers, a table each) and says why, and a forced `uring` stops with
/// the limit, its value and the fixes, before opening anything.
#[test]
fn io_uring_rings_past_rlimit_memlock_fall_back_to_epoll_or_are_refused() {
    let probe = Command::new("true").status();
    let mut dropped = Command::new("true");
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: as in `loadgen_with_limits`: prctl only, in the child.
        unsafe {
            dropped.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if !io_uring_client("io_uring_rings_past_rlimit_memlock_fall_back_to_epoll_or_are_refused") {
        return;
    }
    if probe.is_err() || !dropped.status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: this test process may not drop CAP_IPC_LOCK");
        return;
    }
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let args = |io: &str| {
        format!(
            "--io {io} --target {} --sessions 3000 --rate 5000 --hold 1s \
             --heartbeat 500ms --out {} --expect-sessions 3000 --max-errors 0",
            server.addr,
            dir.path().to_str().unwrap()
        )
    };
    let out = loadgen_with_limits(&args("auto"), Some(1_000), Some(256 << 10));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(s["layout"]["io"], "epoll", "{:#}", s["layout"]);
    assert_eq!(s["layout"]["io_why"], "auto:over-tables,memlock");
    assert_eq!(num(&s, "/layout/threads_per_proc"), 4);
    assert_eq!(num(&s, "/sessions/held_at_end"), 3_000);

    let forced = format!("{} --threads 1", args("uring"));
    let out = loadgen_with_limits(&forced, Some(1_000), Some(256 << 10));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RLIMIT_MEMLOCK is 256 KiB"), "{err}");
    assert!(
        err.contains("3 client rings of ~164 KiB need 492 KiB, and 1 fit"),
        "{err}"
    );
    assert!(err.contains("use --io epoll"), "{err}");
}

#[test]
fn fans_out_to_child_processes_and_merges_exactly() {
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let out = loadgen(&format!(
        "--target {} --sessions 3000 --rate 5000 --hold 2s --heartbeat 500ms --procs 2 --out {} --expect-sessions 3000 --max-errors 0",
        server.addr, dir.path().to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(dir.path());
    assert_eq!(num(&s, "/layout/procs"), 2);
    assert_eq!(num(&s, "/loadgen/processes"), 3);
    assert_eq!(num(&s, "/sessions/held_at_end"), 3_000);
    let sent = num(&s, "/heartbeats/sent");
    assert!(sent > 6_000, "{sent}");
    assert_eq!(num(&s, "/heartbeats/answered"), sent);
    assert_eq!(
        num(&s, "/rtt_us/count"),
        sent,
        "merged histograms must count every reply"
    );
}

/// Two shards of one run (`--shard 0/2`, `1/2`), separate processes
/// started together by `--start-at`, against one server: together they
/// hold every session once, their ramps start within 50 ms of each other,
/// and `merge` adds their counts and histograms exactly.
#[test]
fn shards_started_at_one_time_hold_the_whole_run_and_merge_exactly() {
    let server = Server::start(&["--max-sessions", "19000"]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_000;
    let start_at = format!("{}.{:03}", start_ms / 1000, start_ms % 1000);
    let shards: Vec<_> = (0..2)
        .map(|k| {
            let args = format!(
                "--target {} --sessions 3001 --rate 6000 --hold 2s --heartbeat 500ms \
                 --shard {k}/2 --start-at {start_at} --expect-sessions 3001 --max-errors 0 \
                 --out {}",
                server.addr,
                dirs[k].path().to_str().unwrap()
            );
            std::thread::spawn(move || loadgen(&args))
        })
        .collect();
    for shard in shards {
        let out = shard.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    let (a, b) = (summary(dirs[0].path()), summary(dirs[1].path()));
    // 3 001 ids: 1 501 even ones, 1 500 odd; --expect-sessions scaled to each.
    assert_eq!(num(&a, "/sessions/held_at_end"), 1_501);
    assert_eq!(num(&b, "/sessions/held_at_end"), 1_500);
    assert_eq!(num(&a, "/config/shard/total_sessions"), 3_001);
    for s in [&a, &b] {
        let late = s.pointer("/start/late_ms").and_then(Value::as_f64).unwrap();
        assert!(
            (0.0..50.0).contains(&late),
            "started {late} ms after --start-at"
        );
    }
    let epochs: Vec<f64> = [&a, &b]
        .iter()
        .map(|s| {
            s.pointer("/start/epoch_unix_ms")
                .and_then(Value::as_f64)
                .unwrap()
        })
        .collect();
    assert!(
        (epochs[0] - epochs[1]).abs() < 50.0,
        "ramps apart: {epochs:?}"
    );

    let merged = tempfile::tempdir().unwrap();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"))
            .arg("merge")
            .arg(merged.path())
            .arg(dirs[0].path())
            .arg(dirs[1].path()),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let m = summary(merged.path());
    for key in [
        "/sessions/held_at_end",
        "/connect/ok",
        "/heartbeats/sent",
        "/heartbeats/answered",
        "/rtt_us/count",
    ] {
        assert_eq!(num(&m, key), num(&a, key) + num(&b, key), "{key}");
    }
    assert_eq!(num(&m, "/sessions/held_at_end"), 3_001);
    assert_eq!(num(&m, "/heartbeats/answered"), num(&m, "/heartbeats/sent"));
    // The merged max is the larger of the two: one histogram of all samples.
    assert_eq!(
        num(&m, "/rtt_us/max"),
        num(&a, "/rtt_us/max").max(num(&b, "/rtt_us/max"))
    );
}

#[test]
fn churn_storm_and_drain_scenario_runs_clean() {
    churn_storm_and_drain_scenario_runs_clean_on("epoll");
}

#[test]
fn churn_storm_and_drain_scenario_runs_clean_on_io_uring() {
    churn_storm_and_drain_scenario_runs_clean_on("uring");
}

fn churn_storm_and_drain_scenario_runs_clean_on(io: &str) {
    if io == "uring" && !io_uring_client("churn_storm_and_drain_scenario_runs_clean") {
        return;
    }
    let server = Server::start(&["--max-sessions", "19000"]);
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        r#"
sessions = 500
rate = 2000
heartbeat = "1s"
[churn]
lifetime = "exponential"
mean = "1500ms"
reconnect = "200ms"
[[phase]]
kind = "storm"
duration = "2s"
fraction = "100%"
window = "500ms"
[[phase]]
kind = "drain"
duration = "1s"
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = loadgen(&format!(
        "--io {io} --scenario {} --target {} --out {} --max-errors 0",
        scenario.to_str().unwrap(),
        server.addr,
        out_dir.to_str().unwrap()
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let s = summary(&out_dir);
    assert!(
        num(&s, "/sessions/closed_planned") > 500,
        "churn and drain close sessions: {s:#}"
    );
    assert!(num(&s, "/connect/ok") > 600, "churned sessions reconnect");
    // The storm alone sends one heartbeat per session.
    assert!(num(&s, "/heartbeats/answered") >= 500);
}

/// GET /metrics from `addr`; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to --metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the sample `name` (with its labels) on a page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `addr` until every `(sample, value)` holds (15 s at most).
fn scrape_until(addr: &str, want: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = scrape(addr);
        if want.iter().all(|(n, v)| sample(&page, n) == Some(*v)) {
            return page;
        }
        assert!(Instant::now() < deadline, "never saw {want:?} in:\n{page}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_endpoints_serve_the_counters_of_server_supervisor_and_loadgen() {
    let server = Server::start(&[
        "--procs",
        "2",
        "--max-sessions",
        "1000",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let server_metrics = server.metrics.clone().expect("server metrics line");
    let mut child = Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"))
        .args([
            "run",
            "--progress",
            "off",
            "--procs",
            "1",
            "--target",
            &server.addr,
        ])
        .args([
            "--sessions",
            "200",
            "--rate",
            "2000",
            "--hold",
            "4s",
            "--heartbeat",
            "500ms",
        ])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start c10m-loadgen");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let loadgen_metrics = loop {
        let line = lines.next().expect("loadgen metrics line").unwrap();
        if let Some(url) = line.strip_prefix("c10m-loadgen metrics on http://") {
            break url.strip_suffix("/metrics").unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let page = scrape_until(
        &loadgen_metrics,
        &[
            ("c10m_loadgen_sessions_open", 200.0),
            ("c10m_loadgen_connects_ok_total", 200.0),
            ("c10m_loadgen_errors_total{kind=\"refused\"}", 0.0),
        ],
    );
    assert!(
        page.contains("# TYPE c10m_loadgen_rtt_seconds histogram"),
        "{page}"
    );
    assert!(sample(&page, "c10m_loadgen_rss_bytes").unwrap() > 0.0);
    let page = scrape_until(
        &server_metrics,
        &[
            ("c10m_server_sessions_open", 200.0),
            ("c10m_server_accepted_total", 200.0),
            ("c10m_server_rejected_total", 0.0),
            ("c10m_server_procs", 2.0),
        ],
    );
    assert!(
        sample(&page, "c10m_server_rss_bytes").unwrap() > 0.0,
        "{page}"
    );
    // Heartbeats answered by the server show on both sides.
    let answered = |p: &str, n: &str| sample(p, n).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered(&scrape(&server_metrics), "c10m_server_heartbeats_total") < 200.0 {
        assert!(Instant::now() < deadline, "no heartbeats counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    scrape_until(
        &server_metrics,
        &[
            ("c10m_server_sessions_open", 0.0),
            ("c10m_server_closed_total{reason=\"peer\"}", 200.0),
        ],
    );
}

/// A line-protocol echo peer on 127.0.0.1:0 that also records every
/// heartbeat's payload (the intended time, µs since the run's epoch).
fn recording_echo() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    sink.lock().unwrap().push(line.trim().parse().unwrap());
                    if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The socket interfaces and io_uring's two ways of reading replies (where
/// this kernel runs the io_uring client): `--io` and `--uring-recv` flags.
fn every_backend(test: &str) -> Vec<&'static str> {
    let mut all = vec!["--io epoll"];
    if io_uring_client(test) {
        all.extend([
            "--io uring --uring-recv deferred",
            "--io uring --uring-recv armed",
        ]);
    }
    all
}

#[test]
fn heartbeats_fall_due_on_the_tick_on_both_backends() {
    for io in every_backend("heartbeats_fall_due_on_the_tick_on_both_backends") {
        for tick in [None, Some(4u64)] {
            let (addr, seen) = recording_echo();
            let dir = tempfile::tempdir().unwrap();
            let tick_flag = tick.map_or(String::new(), |t| format!("--tick {t}ms"));
            let out = loadgen(&format!(
                "{io} --protocol line --target {addr} --sessions 20 --rate 1000 --hold 3s \
                 --heartbeat 300ms --jitter 30% {tick_flag} --out {} --max-errors 0 \
                 --max-unanswered 0",
                dir.path().to_str().unwrap()
            ));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{io} {tick:?}: {}",
                describe(&out)
            );
            let s = summary(dir.path());
            assert_eq!(num(&s, "/config/tick_ms"), tick.unwrap_or(1), "{io}");
            let beats = seen.lock().unwrap().clone();
            assert_eq!(
                beats.len() as u64,
                num(&s, "/heartbeats/sent"),
                "{io} {tick:?}"
            );
            // 20 sessions, every ~300 ms for 3 s.
            assert!(
                beats.len() >= 150,
                "{io} {tick:?}: {} heartbeats",
                beats.len()
            );
            let off_tick = beats
                .iter()
                .filter(|&&us| !us.is_multiple_of(4_000))
                .count();
            match tick {
                Some(_) => assert_eq!(off_tick, 0, "{io}: {beats:?}"),
                // Jittered whole milliseconds: about 3 in 4 are off a 4 ms grid.
                None => assert!(off_tick > beats.len() / 2, "{io}: {off_tick} off the grid"),
            }
        }
    }
}

/// A peer that takes `n` connections, reads nothing back, and one second
/// after the last closes its listener (reconnects are refused), then ends
/// the even-numbered connections with a FIN and the odd ones with an RST.
fn closing_peer(n: usize) -> String {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        for conn in listener.incoming().take(n) {
            conns.push(conn.unwrap());
        }
        std::thread::sleep(Duration::from_secs(1));
        drop(listener);
        for (i, mut c) in conns.into_iter().enumerate() {
            // Unread bytes would turn the FIN into an RST.
            c.set_nonblocking(true).unwrap();
            let mut sink = [0u8; 256];
            while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
            if i % 2 == 1 {
                socket2::SockRef::from(&c)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
    });
    addr
}

/// A server that ends connections between heartbeats (heartbeats every
/// 60 s, a 3 s hold) is seen doing so at once on every backend: with
/// deferred reads nothing reads a quiet connection, and its POLLRDHUP
/// poll is what sees the FIN or the RST.
#[test]
fn a_server_ending_connections_between_heartbeats_is_seen_at_once() {
    for io in every_backend("a_server_ending_connections_between_heartbeats_is_seen_at_once") {
        let addr = closing_peer(20);
        let dir = tempfile::tempdir().unwrap();
        let out = loadgen(&format!(
            "{io} --protocol line --target {addr} --sessions 20 --rate 1000 --hold 3s \
             --heartbeat 60s --out {}",
            dir.path().to_str().unwrap()
        ));
        assert_eq!(out.status.code(), Some(0), "{io}: {}", describe(&out));
        let s = summary(dir.path());
        assert_eq!(num(&s, "/sessions/held_at_end"), 0, "{io}: {s:#}");
        assert_eq!(num(&s, "/errors/eof"), 10, "{io}: {s:#}");
        assert_eq!(num(&s, "/errors/reset"), 10, "{io}: {s:#}");
        assert!(num(&s, "/errors/refused") > 0, "{io}: reconnects {s:#}");
    }
}
