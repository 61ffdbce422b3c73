//! Zero-downtime upgrade (issue 18): the real binary hands its listeners
//! and every session to a new process, on every backend, under traffic;
//! and a new binary that fails, at start or mid-hand-off, loses nothing.

mod harness;

use harness::{
    backend_tests, children_of, light, limit_nofile, open_and_echo, process_alive, stat, Backend,
    Server,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

backend_tests!(
    upgrade_hands_over_every_session_under_traffic,
    a_new_binary_that_fails_leaves_every_session_served,
    sigusr2_upgrades_without_a_command,
);

const N: usize = 2_000;

fn upgrade(pid: u32, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_c10m-server"))
        .args(["upgrade", "--pid", &pid.to_string(), "--timeout", "120s"])
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// (sessions, partial frames, unwritten replies) in `<verb>S sessions (P
/// with a partial frame, B with unwritten replies)`.
fn counts(said: &str, verb: &str) -> (u64, u64, u64) {
    let rest = said
        .split(verb)
        .nth(1)
        .unwrap_or_else(|| panic!("no '{verb}' in: {said}"));
    let nums: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| w.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2])
}

/// The pid in `… to pid N in …`.
fn new_pid(said: &str) -> u32 {
    said.split("to pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in: {said}"))
}

fn ping_all(clients: &mut [TcpStream], tag: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        write!(c, "PING {tag}{i}\r\n").unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let payload = format!("{tag}{i}");
        let want = format!("${}\r\n{payload}\r\n", payload.len());
        assert_eq!(
            harness::read_exact_len(c, want.len()),
            want.as_bytes(),
            "session {i}"
        );
    }
}

/// Pings `clients` one after another until `stop`, checking every reply;
/// returns how many were answered.
fn keep_pinging(
    mut clients: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<TcpStream>)> {
    std::thread::spawn(move || {
        let mut answered = 0u64;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for c in clients.iter_mut() {
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let payload = format!("r{round}");
                write!(c, "PING {payload}\r\n").unwrap();
                let want = format!("${}\r\n{payload}\r\n", payload.len());
                assert_eq!(harness::read_exact_len(c, want.len()), want.as_bytes());
                answered += 1;
            }
            round += 1;
        }
        (answered, clients)
    })
}

/// A client that sends pings and reads nothing until the server has
/// replies it cannot write: a session with unwritten replies.
fn blocked_client(server: &Server) -> (TcpStream, std::thread::JoinHandle<()>, usize) {
    const PINGS: usize = 1_500_000;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = c.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let chunk = b"PING\r\n".repeat(1000);
        for _ in 0..PINGS / 1000 {
            writer.write_all(&chunk).unwrap();
        }
    });
    // The server stops reading it once its replies spill: heartbeats
    // unchanged over 5 stats lines.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut steady) = (0, 0);
    while steady < 5 {
        std::thread::sleep(Duration::from_millis(100));
        let line = server.wait_stat("heartbeats", |_| true, Duration::from_secs(5));
        let hb = stat(&line, "heartbeats").unwrap();
        if hb == last && stat(&line, "spill").unwrap_or(0) > 0 {
            steady += 1;
        } else {
            (last, steady) = (hb, 0);
        }
        assert!(
            Instant::now() < deadline,
            "the server never blocked: {line}"
        );
    }
    (c, send, PINGS)
}

fn upgrade_hands_over_every_session_under_traffic(backend: Backend) {
    let _fds = light();
    // The partial frames wait for the test, not for a slowloris timeout.
    let mut server = Server::start(backend, &["--workers", "2", "--frame-timeout", "300s"]);
    let mut clients = open_and_echo(&server, N);
    // A partial frame, held by the server across the hand-off.
    clients[0].write_all(b"PI").unwrap();
    let (mut blocked, sender, pings) = blocked_client(&server);
    // Traffic through the hand-off: 100 sessions pinging without a pause.
    let busy: Vec<TcpStream> = clients.drain(N - 100..).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = keep_pinging(busy, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let (ok, said) = upgrade(server.pid, &[]);
    assert!(ok, "{said}\nserver: {}", server.stderr());
    // The blocked session may hold a partial frame too (its last read
    // ended mid-request).
    let (sessions, partial, blocked_n) = counts(&said, "handed off ");
    assert_eq!((sessions, blocked_n), (N as u64 + 1, 1), "{said}");
    assert!(partial >= 1, "{said}");
    assert!(said.contains(" and 2 listeners to pid "), "{said}");
    // The old process leaves only once the new one serves every session.
    assert!(said.contains("; it serves them since "), "{said}");
    let old = server.pid;
    let new = new_pid(&said);
    server.upgraded_to(new);
    // The old process exits by itself, cleanly.
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(old) {
        assert!(Instant::now() < deadline, "the old server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, busy) = pinger
        .join()
        .expect("every ping through the upgrade answered");
    clients.extend(busy);
    assert!(answered > 100, "{answered}");
    // The partial frame completes on the new process.
    clients[0].write_all(b"NG\r\n").unwrap();
    assert_eq!(harness::read_exact_len(&mut clients[0], 7), b"+PONG\r\n");
    // Every reply of the blocked session arrives, exactly once, in order.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < pings * 7 {
        let n = blocked.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        assert!(buf[..n].iter().all(|b| b"+PONG\r\n".contains(b)));
        got += n;
    }
    sender.join().unwrap();
    assert_eq!(got, pings * 7);
    ping_all(&mut clients[1..], "after");
    // New connections reach the new process through the same listeners.
    let mut fresh = server.connect();
    harness::roundtrip(&mut fresh, b"PING\r\n", b"+PONG\r\n");
    let line = server.wait_stat("open", |v| v == N as u64 + 2, Duration::from_secs(10));
    assert_eq!(
        stat(&line, "accepted"),
        Some(N as u64 + 2),
        "the old process's count goes on, plus the fresh one: {line}"
    );
    assert_eq!(stat(&line, "upgrades"), Some(1), "{line}");
    assert!(
        server
            .stderr()
            .contains(&format!("took over {} sessions", N + 1))
            || {
                let out = server.startup_line();
                out.contains(&format!("pid={new}"))
            }
    );

    let stopped = server.stop();
    let took = stopped
        .stdout
        .iter()
        .find(|l| l.contains("took over "))
        .unwrap_or_else(|| panic!("{:?}", stopped.stdout));
    assert_eq!(
        counts(took, "took over "),
        (sessions, partial, blocked_n),
        "{took}"
    );
    assert!(
        took.contains(&format!("and 2 listeners from pid {old}")),
        "{took}"
    );
    assert_eq!(stopped.stats["closed"]["shutdown"], N as u64 + 2);
    assert_eq!(stopped.stats["closed"]["reset"], 0);
    assert_eq!(stopped.stats["closed"]["overflow"], 0);
    assert_eq!(stopped.stats["accepted"], N as u64 + 2);
    assert_eq!(stopped.stats["upgrades"], 1);
    // Every ping of the blocked session was counted once, by one process
    // or the other.
    assert!(
        stopped.stats["heartbeats"].as_u64().unwrap() >= pings as u64 + N as u64,
        "{}",
        stopped.stats
    );
}

fn a_new_binary_that_fails_leaves_every_session_served(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &["--workers", "2"]);
    let mut clients = open_and_echo(&server, 500);
    clients[0].write_all(b"PI").unwrap();

    // A binary that exits at once.
    let (ok, said) = upgrade(server.pid, &["--binary", "/bin/false"]);
    assert!(!ok, "{said}");
    assert!(said.contains("exited before taking over"), "{said}");
    assert!(
        said.contains(&format!("pid {} serves on", server.pid)),
        "{said}"
    );
    ping_all(&mut clients[1..], "a");

    // The real binary, crashing once it holds every socket, before it
    // acknowledges: the old process must take back nothing less than all.
    let dir = tempfile::tempdir().unwrap();
    let crashing = dir.path().join("c10m-server-crashing");
    std::fs::write(
        &crashing,
        format!(
            "#!/bin/sh\nC10M_TEST_CRASH_IN_TAKEOVER=1 exec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_c10m-server")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &crashing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (ok, said) = upgrade(server.pid, &["--binary", crashing.to_str().unwrap()]);
    assert!(!ok, "{said}");
    assert!(said.contains("serves on"), "{said}");
    ping_all(&mut clients[1..], "b");
    clients[0].write_all(b"NG\r\n").unwrap();
    assert_eq!(harness::read_exact_len(&mut clients[0], 7), b"+PONG\r\n");
    let mut fresh = server.connect();
    harness::roundtrip(&mut fresh, b"PING\r\n", b"+PONG\r\n");

    // No such binary.
    let (ok, said) = upgrade(server.pid, &["--binary", "/nonexistent/c10m"]);
    assert!(!ok && said.contains("no such file"), "{said}");
    // No such server.
    let (ok, said) = upgrade(u32::MAX - 1, &[]);
    assert!(!ok && said.contains("takes upgrades"), "{said}");

    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.stats["closed"]["shutdown"], 501);
    assert_eq!(stopped.stats["closed"]["reset"], 0);
    assert!(
        stopped
            .stderr
            .matches("upgrade failed, every session still served here")
            .count()
            == 2,
        "{}",
        stopped.stderr
    );
}

fn sigusr2_upgrades_without_a_command(backend: Backend) {
    let _fds = light();
    let mut server = Server::start(backend, &["--workers", "2"]);
    let mut clients = open_and_echo(&server, 300);
    let old = server.pid;
    harness::kill(old, nix::sys::signal::Signal::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(old) {
        assert!(
            Instant::now() < deadline,
            "not upgraded: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The new process announces itself once it serves every session.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let line = server.startup_line();
        let pid: u32 = line
            .split("pid=")
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap();
        if pid != old {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new start-up line: {line}");
        std::thread::sleep(Duration::from_millis(20));
    };
    server.upgraded_to(pid);
    ping_all(&mut clients, "x");
    // A second upgrade goes on from the first one's counters.
    let (ok, said) = upgrade(pid, &[]);
    assert!(ok, "{said}\n{}", server.stderr());
    server.upgraded_to(new_pid(&said));
    ping_all(&mut clients, "y");
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["shutdown"], 300);
    assert_eq!(stopped.stats["accepted"], 300, "{}", stopped.stats);
    assert_eq!(stopped.stats["upgrades"], 2);
    // open_and_echo's ping and two more per session, each counted once.
    assert_eq!(stopped.stats["heartbeats"], 900, "{}", stopped.stats);
}

/// Direct descriptors under an RLIMIT_NOFILE of 1 000: 1 500 sessions
/// cross (more than either process could hold as descriptors), a batch
/// of at most 253 installed as descriptors at a time.
#[test]
fn direct_descriptors_past_rlimit_nofile_cross_a_batch_at_a_time() {
    if !Backend::UringDirect
        .available("direct_descriptors_past_rlimit_nofile_cross_a_batch_at_a_time")
    {
        return;
    }
    let _fds = light();
    let mut server = Server::start_with(Backend::UringDirect, &["--workers", "2"], |cmd| {
        limit_nofile(cmd, 1_000)
    });
    let mut clients = open_and_echo(&server, 1_500);
    let (ok, said) = upgrade(server.pid, &[]);
    assert!(ok, "{said}\n{}", server.stderr());
    assert!(said.contains("handed off 1500 sessions"), "{said}");
    server.upgraded_to(new_pid(&said));
    ping_all(&mut clients, "y");
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["shutdown"], 1_500);
}

/// `--procs`: the supervisor upgrades its children one at a time; no
/// session of any child is lost, none reconnects, none counts as lost or
/// restarted, and the children are new processes.
fn a_supervisor_upgrades_each_child(backend: Backend) {
    let _fds = light();
    let server = Server::start(
        backend,
        &["--procs", "2", "--max-sessions", "4000", "--workers", "1"],
    );
    let before = children_of(server.pid);
    assert_eq!(before.len(), 2, "{before:?}");
    let mut clients = open_and_echo(&server, 1_000);
    clients[0].write_all(b"PI").unwrap();
    let (ok, said) = upgrade(server.pid, &[]);
    assert!(ok, "{said}\n{}", server.stderr());
    assert!(said.contains("upgraded 2 children"), "{said}");
    assert!(said.contains(": 1000 sessions handed off"), "{said}");
    let after = children_of(server.pid);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|c| !before.contains(c)),
        "{before:?} {after:?}"
    );
    ping_all(&mut clients[1..], "z");
    clients[0].write_all(b"NG\r\n").unwrap();
    assert_eq!(harness::read_exact_len(&mut clients[0], 7), b"+PONG\r\n");
    // A child refuses SIGUSR2 of its own (its supervisor must not lose it).
    harness::kill(after[0], nix::sys::signal::Signal::SIGUSR2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(process_alive(after[0]));
    assert_eq!(children_of(server.pid), after);
    let line = server.wait_stat("open", |v| v == 1_000, Duration::from_secs(10));
    assert_eq!(stat(&line, "restarts"), Some(0), "{line}");
    let stopped = server.stop();
    assert_eq!(stopped.stats["sessions_lost"], 0);
    assert_eq!(stopped.stats["restarts"], 0);
    assert_eq!(stopped.stats["closed"]["shutdown"], 1_000);
    assert_eq!(
        stopped.stats["accepted"], 1_000,
        "the old children's count is kept, once"
    );
    assert_eq!(stopped.stats["upgrades"], 1);
    assert!(
        stopped.stderr.contains("upgrade refused: this is a child"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn a_supervisor_upgrades_each_child_on_epoll() {
    a_supervisor_upgrades_each_child(Backend::Epoll);
}

#[test]
fn a_supervisor_upgrades_each_child_on_uring() {
    if Backend::Uring.available("a_supervisor_upgrades_each_child_on_uring") {
        a_supervisor_upgrades_each_child(Backend::Uring);
    }
}
