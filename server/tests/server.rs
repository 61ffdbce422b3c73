//! Integration tests: the real `c10m-server` binary on loopback, every case
//! on every backend (`backend_tests!` generates one test per backend).

mod harness;

use harness::{
    backend_tests, children_of, heavy, light, limit_nofile, open_and_echo, read_exact_len,
    read_to_close, roundtrip, stat, Backend, Server,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

backend_tests!(
    holds_15000_sessions_and_answers_each,
    an_unpaced_burst_of_15000_connects_is_absorbed,
    redis_cli_gets_pong,
    pipelined_inline_and_multibulk_requests,
    slow_writer_one_byte_at_a_time_is_answered,
    garbage_writer_is_closed_and_neighbours_keep_working,
    idle_session_is_evicted_and_heartbeating_one_kept,
    sigterm_closes_sessions_and_writes_stats,
    port_in_use_is_a_one_line_error,
    max_sessions_rejects_the_excess,
    reader_that_stops_reading_is_bounded_then_served,
    descriptor_exhaustion_pauses_accept_without_spinning,
    startup_line_names_the_backend_and_why,
    supervisor_sums_children_restarts_a_killed_one_and_stops_all,
    supervisor_death_takes_its_children_along,
    slowloris_is_closed_at_the_frame_timeout,
    accept_rate_sheds_the_excess_busy_and_spares_held_sessions,
    a_client_that_keeps_sending_after_its_protocol_error_harms_no_one,
    a_stalled_loop_sheds_new_connections_and_still_answers_held_ones,
    listen_drops_are_counted_per_server_not_per_host,
    an_exhausted_buffer_ring_rearms_without_losing_a_byte,
    closing_a_session_costs_the_same_with_many_held,
    a_capped_turn_leaves_the_rest_for_the_next_and_loses_nothing,
    steer_cpu_gives_each_cpus_connections_to_the_worker_pinned_there,
    sched_batch_is_every_thread_policy_children_included,
);

fn holds_15000_sessions_and_answers_each(backend: Backend) {
    const N: usize = 15_000;
    let _fds = heavy();
    let server = Server::start(backend, &["--workers", "2"]);
    let _clients = open_and_echo(&server, N);
    let line = server.wait_stat("open", |v| v == N as u64, Duration::from_secs(10));
    assert_eq!(stat(&line, "accepted"), Some(N as u64), "{line}");
    server.wait_stat("heartbeats", |v| v == N as u64, Duration::from_secs(10));
    let stopped = server.stop();
    assert!(stopped.status.success());
    assert_eq!(stopped.stats["closed"]["shutdown"], N as u64);
    assert_eq!(stopped.stats["heartbeats"], N as u64);
    // Both workers took a share: SO_REUSEPORT spread the connections.
    let workers = stopped.stats["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["accepted"].as_u64().unwrap() > 1000, "{w}");
    }
}

/// What a stock client does: 15 000 non-blocking connects issued as fast as
/// the test can, no pacing, against a server with default flags (loop-lag
/// shedding on) and the host's somaxconn. The accept queue may overflow for
/// a moment; TCP retransmits the dropped SYNs and every session must get
/// in: none answered busy (issue 14: the first listen drop used to shed
/// every new client for a second, 5 000-15 000 of 15 000).
fn an_unpaced_burst_of_15000_connects_is_absorbed(backend: Backend) {
    use socket2::{Domain, Socket, Type};
    const N: usize = 15_000;
    let _fds = heavy();
    let server = Server::start(backend, &["--max-lag", "100ms"]);
    let addr = socket2::SockAddr::from(server.addr);
    let started = Instant::now();
    // Two threads, like the two processes of the stock client.
    let sockets: Vec<Socket> = std::thread::scope(|scope| {
        let halves: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    (0..N / 2)
                        .map(|i| {
                            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                            s.set_nonblocking(true).unwrap();
                            match s.connect(&addr) {
                                Ok(()) => {}
                                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                                Err(e) => panic!("connect {i}: {e}"),
                            }
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let issued = started.elapsed();
    let mut clients: Vec<TcpStream> = sockets
        .into_iter()
        .map(|s| {
            s.set_nonblocking(false).unwrap();
            let c = TcpStream::from(s);
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            c
        })
        .collect();
    // A blocking write waits for a handshake still in progress (a dropped
    // SYN comes back after its 1 s retransmit).
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(b"PING\r\n")
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
    }
    let mut busy = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let reply = read_exact_len(c, 7);
        if reply.starts_with(b"-ERR BU") {
            busy += 1;
        } else {
            assert_eq!(reply, b"+PONG\r\n", "session {i}");
        }
    }
    let line = server.wait_stat("open", |v| v == N as u64 - busy, Duration::from_secs(10));
    let stopped = server.stop();
    assert_eq!(
        busy, 0,
        "{busy} of {N} refused busy (connects issued in {issued:?}); {line}; shed={} \
         shed_lag={} listen_overflows={}",
        stopped.stats["shed"], stopped.stats["shed_lag"], stopped.stats["listen_overflows"]
    );
    assert_eq!(stopped.stats["accepted"], N as u64);
    assert_eq!(stopped.stats["shed"], 0);
    eprintln!(
        "{backend:?}: {N} unpaced connects issued in {issued:?}, all answered in {:?}; listen \
         drops absorbed: {}; worst loop lag {} us",
        started.elapsed(),
        stopped.stats["listen_overflows"],
        stopped.stats["loop_lag_max_us"]
    );
}

fn redis_cli_gets_pong(backend: Backend) {
    let _fds = light();
    let Some(cli) = which("redis-cli") else {
        // CI installs redis-tools (.ci/run); there a missing client is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-cli is missing in CI: apt-get install redis-tools"
        );
        eprintln!(
            "SKIPPED redis_cli_gets_pong: redis-cli not installed (apt-get install redis-tools)"
        );
        return;
    };
    let server = Server::start(backend, &[]);
    let port = server.addr.port().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["ping"]), "PONG\n");
    assert_eq!(run(&["ping", "hello world"]), "hello world\n");
    assert_eq!(run(&["echo", "x y"]), "x y\n");
    assert!(run(&["get", "k"]).contains("unknown command 'get'"));
    let stopped = server.stop();
    assert_eq!(stopped.stats["heartbeats"], 3);
}

fn pipelined_inline_and_multibulk_requests(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &[]);
    let mut c = server.connect();
    roundtrip(
        &mut c,
        b"PING\r\nping hi\n*2\r\n$4\r\nECHO\r\n$3\r\na b\r\nSET k v\r\nECHO\r\n\r\n*0\r\nPING\r\n",
        b"+PONG\r\n$2\r\nhi\r\n$3\r\na b\r\n-ERR unknown command 'SET'\r\n\
          -ERR wrong number of arguments for 'echo' command\r\n+PONG\r\n",
    );
    c.write_all(b"QUIT\r\nPING\r\n").unwrap();
    assert_eq!(
        read_to_close(&mut c),
        b"+OK\r\n",
        "QUIT answers then closes"
    );
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["peer"], 1);
    assert_eq!(stopped.stats["heartbeats"], 4);
}

fn slow_writer_one_byte_at_a_time_is_answered(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &[]);
    let mut slow = server.connect();
    let mut other = server.connect();
    let request = b"*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n";
    for (i, byte) in request.iter().enumerate() {
        slow.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        if i == 10 {
            roundtrip(&mut other, b"PING\r\n", b"+PONG\r\n");
        }
    }
    assert_eq!(read_exact_len(&mut slow, 11), b"$5\r\nhello\r\n");
    let stopped = server.stop();
    assert!(stopped.stats["spilled_frames"].as_u64().unwrap() >= 10);
    assert_eq!(stopped.stats["spill_bytes"], 0);
}

fn garbage_writer_is_closed_and_neighbours_keep_working(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &[]);
    let mut good: Vec<TcpStream> = (0..3).map(|_| server.connect()).collect();
    for g in &mut good {
        roundtrip(g, b"PING\r\n", b"+PONG\r\n");
    }
    let mut bad = server.connect();
    bad.write_all(b"*1\r\n%4\r\nPING\r\n").unwrap();
    assert_eq!(
        read_to_close(&mut bad),
        b"-ERR Protocol error: expected '$', got '%'\r\n"
    );
    // Random bytes with no line end: refused at the frame limit.
    let mut noise = server.connect();
    let junk: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8 | 0x80).collect();
    noise.write_all(&junk).unwrap();
    let reply = read_to_close(&mut noise);
    assert!(
        reply.starts_with(b"-ERR Protocol error: frame exceeds the maximum of 512 bytes"),
        "{}",
        reply.escape_ascii()
    );
    for g in &mut good {
        roundtrip(g, b"PING after\r\n", b"$5\r\nafter\r\n");
    }
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["protocol"], 2);
    assert_eq!(stopped.stats["closed"]["shutdown"], 3);
}

/// Hostile clients keep writing after the error that closed them: data
/// already on its way (and a multishot recv's later completions) must be
/// dropped cleanly, never take the worker down with the neighbours.
fn a_client_that_keeps_sending_after_its_protocol_error_harms_no_one(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &["--workers", "1"]);
    let mut good = server.connect();
    roundtrip(&mut good, b"PING\r\n", b"+PONG\r\n");
    let mut senders = Vec::new();
    for i in 0..20u8 {
        let mut bad = server.connect();
        senders.push(std::thread::spawn(move || {
            let junk: Vec<u8> = (0..4096u32)
                .map(|j| (j as u8).wrapping_mul(31) ^ i)
                .collect();
            let _ = bad.write_all(b"*1\r\n%bad\r\n");
            // Keep writing until the server's close reaches us.
            for _ in 0..256 {
                if bad.write_all(&junk).is_err() {
                    break;
                }
            }
        }));
    }
    for s in senders {
        s.join().unwrap();
    }
    for _ in 0..10 {
        roundtrip(&mut good, b"PING\r\n", b"+PONG\r\n");
    }
    let stopped = server.stop();
    assert!(
        stopped.status.success(),
        "{:?}: {}",
        stopped.status,
        stopped.stderr
    );
    assert_eq!(stopped.stats["closed"]["protocol"], 20, "{}", stopped.stats);
    assert_eq!(stopped.stats["closed"]["shutdown"], 1);
}

/// A provided-buffer ring of 8 × 64 bytes runs dry within one turn as soon
/// as a few sessions send pipelines of a kilobyte or more: each ENOBUFS
/// ends that session's multishot recv with its bytes still in the socket,
/// and the re-arm must pick them up, in order, with nothing lost (frames
/// span buffers, so the partial-frame path runs too). The counters say so.
/// epoll ignores the flags: the same traffic, counters 0.
fn an_exhausted_buffer_ring_rearms_without_losing_a_byte(backend: Backend) {
    const CLIENTS: usize = 48;
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 30;
    let _fds = light();
    let server = Server::start(
        backend,
        &[
            "--workers",
            "1",
            "--uring-buffers",
            "8",
            "--uring-buffer-size",
            "64",
        ],
    );
    let _clients = pipelined_rounds(&server, CLIENTS, ROUNDS, PER_ROUND);
    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let total = (CLIENTS * ROUNDS * PER_ROUND) as u64;
    assert_eq!(stopped.stats["commands"], total, "{}", stopped.stats);
    assert_eq!(
        stopped.stats["heartbeats"], total,
        "PING and ECHO both count"
    );
    let enobufs = stopped.stats["recv_enobufs"].as_u64().unwrap();
    let rearms = stopped.stats["recv_rearms"].as_u64().unwrap();
    let worker = &stopped.stats["workers"][0];
    assert_eq!(worker["recv_enobufs"], enobufs, "per-worker figure");
    match backend {
        Backend::Uring | Backend::UringDirect | Backend::UringThread | Backend::UringRings => {
            assert!(enobufs > 0, "the ring never ran dry: {}", stopped.stats);
            assert!(
                rearms >= enobufs,
                "each ENOBUFS is re-armed: {}",
                stopped.stats
            );
        }
        Backend::Epoll | Backend::EpollThread | Backend::Auto => {
            assert_eq!((enobufs, rearms), (0, 0))
        }
    }
    assert_eq!(stopped.stats["closed"]["shutdown"], CLIENTS as u64);
}

/// Closing one session must not cost in proportion to the sessions held.
/// The io_uring backend once cancelled a closing session's requests by
/// descriptor, which the kernel serves by walking every armed poll of the
/// ring: 390 µs of server CPU per close with 15 000 sessions held, against
/// 33 µs on epoll (3× the sys time of epoll in the chaos garbage run).
/// Here 10 000 sessions are held while 3 000 others are closed for a
/// protocol error; the server's CPU for those closes stays well under what
/// an O(sessions) close costs (~0.8 s then; ~0.1 s now, either backend).
fn closing_a_session_costs_the_same_with_many_held(backend: Backend) {
    const HELD: usize = 10_000;
    const CLOSES: usize = 3_000;
    let _fds = heavy();
    let server = Server::start(backend, &["--workers", "1"]);
    let held = server.connect_paced(HELD);
    server.wait_stat("open", |v| v == HELD as u64, Duration::from_secs(20));
    let before = server.cpu_seconds();
    let oversize = format!("PING {}\r\n", "x".repeat(2_000));
    for batch in 0..CLOSES / 50 {
        let mut bad: Vec<TcpStream> = (0..50).map(|_| server.connect()).collect();
        for c in &mut bad {
            c.write_all(oversize.as_bytes()).unwrap();
        }
        for c in &mut bad {
            let reply = read_to_close(c);
            assert!(reply.starts_with(b"-ERR Protocol error"), "batch {batch}");
        }
    }
    let spent = server.cpu_seconds() - before;
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["protocol"], CLOSES as u64);
    assert_eq!(stopped.stats["closed"]["shutdown"], HELD as u64);
    assert!(
        spent < 0.5,
        "{CLOSES} closes beside {HELD} held sessions took {spent:.2} s of server CPU"
    );
    drop(held);
}

fn idle_session_is_evicted_and_heartbeating_one_kept(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &["--idle-timeout", "400ms"]);
    let mut idle = server.connect();
    let mut alive = server.connect();
    let started = Instant::now();
    idle.set_nonblocking(true).unwrap();
    let mut evicted_at = None;
    while started.elapsed() < Duration::from_millis(1500) {
        roundtrip(&mut alive, b"PING\r\n", b"+PONG\r\n");
        let mut b = [0u8; 1];
        if evicted_at.is_none() && matches!(idle.read(&mut b), Ok(0)) {
            evicted_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = evicted_at.expect("idle session was closed");
    assert!(
        at >= Duration::from_millis(350) && at < Duration::from_millis(1000),
        "evicted after {at:?}"
    );
    let stopped = server.stop();
    assert_eq!(stopped.stats["closed"]["evicted"], 1, "{}", stopped.stats);
    assert_eq!(stopped.stats["closed"]["shutdown"], 1, "{}", stopped.stats);
}

/// A client dribbling one byte every 100 ms never completes a frame: it
/// keeps its idle deadline fresh, but the frame timeout closes it.
fn slowloris_is_closed_at_the_frame_timeout(backend: Backend) {
    let _fds = light();
    let server = Server::start(
        backend,
        &["--frame-timeout", "400ms", "--idle-timeout", "60s"],
    );
    let mut slow = server.connect();
    let mut good = server.connect();
    let started = Instant::now();
    let mut closed_after = None;
    for byte in b"*1\r\n$4\r\nPING".iter().cycle().take(30) {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        roundtrip(&mut good, b"PING\r\n", b"+PONG\r\n");
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        // The write after a close can still succeed once: look for EOF.
        slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(read_to_close(&mut slow), b"");
        started.elapsed()
    });
    assert!(
        closed_after >= Duration::from_millis(400),
        "{closed_after:?}"
    );
    let stopped = server.stop();
    assert_eq!(
        stopped.stats["closed"]["frame_timeout"], 1,
        "{}",
        stopped.stats
    );
    assert_eq!(stopped.stats["closed"]["shutdown"], 1);
}

fn sigterm_closes_sessions_and_writes_stats(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &[]);
    let mut clients: Vec<TcpStream> = (0..10).map(|_| server.connect()).collect();
    for c in &mut clients {
        roundtrip(c, b"PING\r\n", b"+PONG\r\n");
    }
    let stopped = server.stop();
    assert!(stopped.status.success(), "{:?}", stopped.status);
    assert_eq!(stopped.stats["closed"]["shutdown"], 10);
    assert_eq!(stopped.stats["sessions_open"], 0);
    assert!(stopped.stats["rss_bytes"].as_u64().unwrap() > 0);
    assert!(stopped.stdout.iter().any(|l| l.starts_with("final stats ")));
    for c in &mut clients {
        assert_eq!(read_to_close(c), b"", "the server closed every session");
    }
}

fn port_in_use_is_a_one_line_error(backend: Backend) {
    let _fds = light();
    let first = Server::start(backend, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_c10m-server"))
        .args([
            "--listen",
            &first.addr.to_string(),
            "--stats-interval",
            "0s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains(&first.addr.to_string()), "{stderr}");
}

fn max_sessions_rejects_the_excess(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &["--max-sessions", "5"]);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| server.connect()).collect();
    let mut answered = 0;
    let mut busy = 0;
    for c in &mut clients {
        let _ = c.write_all(b"PING\r\n");
        let reply = read_some(c);
        if reply == b"+PONG\r\n" {
            answered += 1;
        } else {
            assert_eq!(reply, b"-ERR BUSY retry-after=5\r\n");
            busy += 1;
        }
    }
    assert_eq!((answered, busy), (5, 3));
    let stopped = server.stop();
    assert_eq!(stopped.stats["rejected"], 3);
    assert_eq!(stopped.stats["accepted"], 5);
}

/// `--accept-rate 5`: a burst of 5, then 5 per second; the excess is told
/// to come back and closed, while held sessions keep being answered.
fn accept_rate_sheds_the_excess_busy_and_spares_held_sessions(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &["--workers", "1", "--accept-rate", "5"]);
    let mut admitted = Vec::new();
    let mut shed = 0;
    for _ in 0..20 {
        let mut c = server.connect();
        c.write_all(b"PING\r\n").unwrap();
        let reply = read_some(&mut c);
        if reply == b"+PONG\r\n" {
            admitted.push(c);
        } else {
            assert_eq!(reply, b"-ERR BUSY retry-after=1\r\n");
            assert_eq!(read_to_close(&mut c), b"");
            shed += 1;
        }
    }
    assert!(
        (5..=7).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    for c in &mut admitted {
        roundtrip(c, b"PING\r\n", b"+PONG\r\n");
    }
    // The bucket refills: after a second, a new client gets in.
    std::thread::sleep(Duration::from_millis(1100));
    let mut late = server.connect();
    roundtrip(&mut late, b"PING\r\n", b"+PONG\r\n");
    let stopped = server.stop();
    assert_eq!(stopped.stats["shed"], shed);
    assert_eq!(stopped.stats["accepted"], admitted.len() as u64 + 1);
}

/// Real loop lag, no test hook: the server process is stopped for 400 ms
/// (SIGSTOP/SIGCONT), as a host that withholds the CPU would stall it, so
/// its worker runs the next 100 ms wheel tick ~300 ms late. The client
/// that connected meanwhile is answered busy before it becomes a session;
/// the held session's heartbeat, sent during the stall, is answered; once
/// the ticks are punctual again for the 1 s hold, new clients get in. A
/// lag refusal says retry-after=1 (the hold), not --retry-after (5 s).
fn a_stalled_loop_sheds_new_connections_and_still_answers_held_ones(backend: Backend) {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    let _fds = light();
    // --idle-timeout 64s gives a 1 s wheel tick (1/64 of it); each stall
    // below is longer, so every stall makes the next tick late.
    let args = [
        "--workers",
        "1",
        "--max-lag",
        "100ms",
        "--idle-timeout",
        "64s",
    ];
    let server = Server::start(backend, &args);
    // A busy host may stall the worker on its own (then it sheds too):
    // such refusals are counted, and retried until admitted.
    let mut noise_busy = 0;
    let mut held = admitted_after_busy(&server, &mut noise_busy, None);
    // Stops the whole process for 1.1 s (a group stop reaches each thread
    // when it next runs: wait until the worker is stopped too, or it may
    // still accept the next client), runs `during` while it is stopped,
    // then lets it run for 5 ms.
    let stall = |during: &mut dyn FnMut()| {
        kill(server.pid, SIGSTOP);
        let stalled = Instant::now();
        while !all_threads_stopped(server.pid) {
            assert!(
                stalled.elapsed() < Duration::from_millis(300),
                "not stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        during();
        std::thread::sleep(Duration::from_millis(1100).saturating_sub(stalled.elapsed()));
        kill(server.pid, SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    };

    // One stall is absorbed: one late tick, and the loop catches up. The
    // kernel completes the handshake; the worker admits it after the stall.
    let mut first = None;
    stall(&mut || {
        let mut c = server.connect();
        c.write_all(b"PING\r\n").unwrap();
        first = Some(c);
    });
    let mut first = first.unwrap();
    assert_eq!(read_some(&mut first), b"+PONG\r\n", "one stall is absorbed");
    // Stalls in a row: the loop does not catch up, so it sheds.
    stall(&mut || {});
    stall(&mut || {});
    let mut newcomer = None;
    stall(&mut || {
        let mut c = server.connect();
        c.write_all(b"PING\r\n").unwrap();
        held.write_all(b"PING during-stall\r\n").unwrap();
        newcomer = Some(c);
    });
    let mut newcomer = newcomer.unwrap();
    assert_eq!(
        read_some(&mut newcomer).escape_ascii().to_string(),
        "-ERR BUSY retry-after=1\\r\\n"
    );
    assert_eq!(read_to_close(&mut newcomer), b"", "closed after the reply");
    let echo = b"$12\r\nduring-stall\r\n";
    assert_eq!(read_exact_len(&mut held, echo.len()), echo);
    // Counted as shed for lag (the gauge may show shedding a turn earlier).
    server.wait_stat("shed_lag", |v| v == 1, Duration::from_secs(5));

    // Punctual ticks for the hold (2 ticks of 1 s): admitted again.
    std::thread::sleep(Duration::from_millis(2000));
    let mut admitted = admitted_after_busy(&server, &mut noise_busy, Some(&mut held));
    roundtrip(&mut admitted, b"PING\r\n", b"+PONG\r\n");
    roundtrip(&mut held, b"PING\r\n", b"+PONG\r\n");

    let stopped = server.stop();
    let s = &stopped.stats;
    assert_eq!(s["shed_lag"], 1 + noise_busy, "{s}");
    assert_eq!(s["shed"], s["shed_lag"], "nothing else shed: {s}");
    assert_eq!(s["accepted"], 3, "{s}");
    let max_lag_us = s["loop_lag_max_us"].as_u64().unwrap();
    assert!((100_000..5_000_000).contains(&max_lag_us), "{s}");
}

/// Connects until a client is admitted (PING answered), counting busy
/// refusals in `busy`; heartbeats `keep` meanwhile so it is not evicted.
fn admitted_after_busy(
    server: &Server,
    busy: &mut u64,
    mut keep: Option<&mut TcpStream>,
) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = server.connect();
        c.write_all(b"PING\r\n").unwrap();
        match read_some(&mut c).as_slice() {
            b"+PONG\r\n" => return c,
            reply => assert_eq!(reply, b"-ERR BUSY retry-after=1\r\n"),
        }
        *busy += 1;
        assert!(Instant::now() < deadline, "never admitted");
        if let Some(k) = keep.as_deref_mut() {
            roundtrip(k, b"PING\r\n", b"+PONG\r\n");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads what arrives until the reply is complete (a line) or the
/// connection closes.
fn read_some(c: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply
}

/// A client that writes many requests without reading: the server's
/// replies back up, it stops reading that session (bounded spill), and
/// once the client reads, every reply arrives in order.
fn reader_that_stops_reading_is_bounded_then_served(backend: Backend) {
    let _fds = light();
    const N: usize = 1_500_000;
    let server = Server::start(backend, &[]);
    // A small receive window makes the server's replies back up sooner.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = c.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        let chunk = b"PING\r\n".repeat(1000);
        for _ in 0..N / 1000 {
            writer.write_all(&chunk).unwrap();
        }
    });
    // Wait, without reading anything, until the server has stopped
    // reading: its heartbeat count unchanged over 10 stats lines (1 s)
    // short of N. (A fixed wait was flaky: a debug server on a busy CI
    // host had not yet filled its send buffer, so the reader, once it
    // began, drained every reply before any had to spill.)
    server.wait_stat("open", |v| v == 1, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut steady) = (0, 0);
    while steady < 10 {
        std::thread::sleep(Duration::from_millis(100));
        let line = server.wait_stat("heartbeats", |_| true, Duration::from_secs(5));
        let hb = stat(&line, "heartbeats").unwrap();
        if hb == last && hb > 0 {
            steady += 1;
        } else {
            (last, steady) = (hb, 0);
        }
        assert!(
            Instant::now() < deadline,
            "the server never stopped reading: {line}"
        );
    }
    assert!(
        last < N as u64,
        "backed up before every request was read: {last}"
    );
    let mut reader = c;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < N * 7 {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {got} bytes");
        assert!(buf[..n].iter().all(|b| b"+PONG\r\n".contains(b)));
        got += n;
    }
    send.join().unwrap();
    assert_eq!(got, N * 7);
    let stopped = server.stop();
    assert_eq!(stopped.stats["heartbeats"], N as u64);
    assert!(stopped.stats["spilled_writes"].as_u64().unwrap() > 0);
    assert_eq!(stopped.stats["closed"]["overflow"], 0);
}

/// Under a tiny RLIMIT_NOFILE the server runs out of descriptors: it must
/// keep serving what it holds, count the failures, not spin, and accept
/// the waiting connections once descriptors free up.
fn descriptor_exhaustion_pauses_accept_without_spinning(backend: Backend) {
    let _fds = light();
    // Direct descriptors: each ring's table of 48 slots keeps 3 for
    // answering, so a worker holds 45 per ring (1 ring, or 3 with
    // UringRings); without --max-sessions the rings do not grow.
    let direct_rings = match backend {
        Backend::UringDirect => Some(1),
        Backend::UringRings => Some(3),
        _ => None,
    };
    let args: &[&str] = if direct_rings.is_some() {
        &["--workers", "1"]
    } else {
        &["--workers", "1", "--max-sessions", "1000"]
    };
    let server = Server::start_with(backend, args, |cmd| {
        cmd.env("C10M_TEST", "1");
        limit_nofile(cmd, 48);
    });
    if let Some(rings) = direct_rings {
        // The sessions the rings hold are held; the other 15 connections
        // are refused busy at once rather than left waiting unanswered in
        // the listen queue.
        let held = 45 * rings;
        let mut clients: Vec<TcpStream> = (0..held + 15).map(|_| server.connect()).collect();
        let line = server.wait_stat("rejected", |v| v == 15, Duration::from_secs(5));
        assert_eq!(stat(&line, "open"), Some(held as u64), "{line}");
        let mut busy = 0;
        for c in clients.iter_mut() {
            c.write_all(b"PING\r\n").unwrap();
            let reply = read_to_close_or_line(c);
            if reply.starts_with(b"-ERR BUSY") {
                busy += 1;
            } else {
                assert_eq!(reply, b"+PONG\r\n");
            }
        }
        assert_eq!(busy, 15);
        let stopped = server.stop();
        assert_eq!(stopped.stats["accepted"], held as u64);
        assert_eq!(stopped.stats["rejected"], 15);
        return;
    }
    assert!(server.stderr().contains("cannot be met") || wait_for_stderr(&server, "cannot be met"));
    let mut clients: Vec<TcpStream> = (0..60).map(|_| server.connect()).collect();
    let line = server.wait_stat("accept_fd_errors", |v| v > 0, Duration::from_secs(5));
    let held = stat(&line, "open").unwrap() as usize;
    // Plain descriptors share the 48 with the server's own; a direct
    // table has all 48 slots for sessions.
    assert!(held > 20 && held <= 48, "{line}");
    let cpu_before = server.cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_used = server.cpu_seconds() - cpu_before;
    assert!(
        cpu_used < 0.3,
        "server used {cpu_used}s of CPU while out of descriptors"
    );
    // Held sessions still answer.
    for c in clients.iter_mut().take(5) {
        roundtrip(c, b"PING\r\n", b"+PONG\r\n");
    }
    // Free descriptors: the waiting connections get in and are answered.
    // Free 25, not just enough: the server's own overhead is 7–9 of its
    // 48 descriptors, depending on what the test runner lets it inherit
    // (cargo's jobserver pipe is not close-on-exec), and with 20 freed
    // the last waiting client could find no room.
    clients.drain(..25);
    for c in clients.iter_mut() {
        roundtrip(c, b"PING\r\n", b"+PONG\r\n");
    }
    let stopped = server.stop();
    assert!(stopped.stats["accept_errors_fd"].as_u64().unwrap() > 0);
    assert_eq!(stopped.stats["accepted"], 60);
}

fn startup_line_names_the_backend_and_why(backend: Backend) {
    let _fds = light();
    let server = Server::start(backend, &[]);
    let line = server.startup_line();
    let (name, why, descriptors) = match backend {
        Backend::Uring => ("uring", "backend_why=forced,", "descriptors=plain "),
        Backend::UringDirect => ("uring", "backend_why=forced,", "descriptors=direct:"),
        Backend::UringThread => ("uring", "backend_why=forced,", "descriptors=thread:"),
        Backend::UringRings => ("uring", "backend_why=forced,", "descriptors=direct:"),
        Backend::EpollThread => ("epoll", "backend_why=forced ", "descriptors=thread:"),
        _ => ("epoll", "backend_why=forced ", "descriptors=plain "),
    };
    assert!(line.contains(&format!(" backend={name} ")), "{line}");
    assert!(line.contains(why), "{line}");
    assert!(line.contains(descriptors), "{line}");
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
    assert!(server.stop().status.success());
}

/// `--steer cpu`: the kernel hands a connection to the worker pinned on the
/// CPU that handled its SYN, on loopback the connecting thread's CPU; the
/// default `hash` spreads one CPU's connections over every worker.
fn steer_cpu_gives_each_cpus_connections_to_the_worker_pinned_there(backend: Backend) {
    let cpus = c10m_server::sys::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("SKIPPED steer_cpu_gives_each_cpus_connections_to_the_worker_pinned_there: needs 2 CPUs, this process may use {cpus:?}");
        return;
    }
    let _fds = light();
    let cores = format!("{},{}", cpus[0], cpus[1]);
    // Opens `n` sessions from a thread pinned to `cpu`, each answered.
    let open_from = |server: &Server, cpu: usize, n: usize| -> Vec<TcpStream> {
        std::thread::scope(|s| {
            s.spawn(|| {
                c10m_server::sys::pin_current_thread(cpu).unwrap();
                (0..n)
                    .map(|_| {
                        let mut c = server.connect();
                        roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
                        c
                    })
                    .collect()
            })
            .join()
            .unwrap()
        })
    };
    let accepted = |stats: &serde_json::Value| -> Vec<u64> {
        stats["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["accepted"].as_u64().unwrap())
            .collect()
    };

    let server = Server::start(
        backend,
        &["--workers", "2", "--cores", &cores, "--steer", "cpu"],
    );
    let line = server.startup_line();
    assert!(line.contains(" steer=cpu "), "{line}");
    // Worker i is pinned to the i-th CPU of --cores.
    let _second = open_from(&server, cpus[1], 40);
    let _first = open_from(&server, cpus[0], 25);
    let stopped = server.stop();
    assert_eq!(accepted(&stopped.stats), [25, 40], "{}", stopped.stats);

    // The default: 64 connections from one CPU land on both workers (all
    // on one has the odds of 64 coin tosses coming up the same).
    let server = Server::start(backend, &["--workers", "2", "--cores", &cores]);
    let line = server.startup_line();
    assert!(line.contains(" steer=hash "), "{line}");
    let _all = open_from(&server, cpus[1], 64);
    let stopped = server.stop();
    let spread = accepted(&stopped.stats);
    assert_eq!(spread.iter().sum::<u64>(), 64, "{}", stopped.stats);
    assert!(spread.iter().all(|&n| n > 0), "{spread:?}");
}

/// Scheduling policy of every thread of `pid`, by thread name (field 41 of
/// /proc/PID/task/TID/stat).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // Fields after the name's ')' start at field 3.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let policy = after
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        out.push((comm.trim().to_string(), policy));
    }
    out
}

/// `--sched batch`: every thread of the server, its workers first, runs
/// SCHED_BATCH (3), and with `--procs` every child's too; the default
/// leaves them as started: SCHED_OTHER (0), or batch when started so. The
/// start-up line names the policy in effect.
fn sched_batch_is_every_thread_policy_children_included(backend: Backend) {
    let _fds = light();
    // The start-up line names `name`, and every thread of `pid` runs `policy`.
    let assert_policy = |server: &Server, pid: u32, name: &str, policy: libc::c_int| {
        let line = server.startup_line();
        assert!(line.contains(&format!(" sched={name} ")), "{line}");
        let threads = thread_policies(pid);
        assert!(
            threads.iter().all(|(_, p)| *p == policy as u32),
            "{pid}: {threads:?}"
        );
        threads.len()
    };
    let server = Server::start(backend, &["--workers", "2", "--sched", "batch"]);
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
    // main + 2 workers at least
    assert!(assert_policy(&server, server.pid, "batch", libc::SCHED_BATCH) >= 3);
    assert!(server.stop().status.success());

    let server = Server::start(backend, &["--workers", "1"]);
    assert_policy(&server, server.pid, "normal", libc::SCHED_OTHER);
    assert!(server.stop().status.success());

    // `--sched normal` keeps the policy the server was started with (here
    // inherited from this thread), and the start-up line says which.
    c10m_server::sys::set_thread_policy(libc::SCHED_BATCH).unwrap();
    let server = Server::start(backend, &["--workers", "1"]);
    c10m_server::sys::set_thread_policy(libc::SCHED_OTHER).unwrap();
    assert_policy(&server, server.pid, "batch", libc::SCHED_BATCH);
    assert!(server.stop().status.success());

    let server = Server::start(
        backend,
        &[
            "--procs",
            "2",
            "--workers",
            "1",
            "--max-sessions",
            "100",
            "--sched",
            "batch",
        ],
    );
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
    let children = children_of(server.pid);
    assert_eq!(children.len(), 2, "{children:?}");
    for pid in children.into_iter().chain([server.pid]) {
        assert_policy(&server, pid, "batch", libc::SCHED_BATCH);
    }
    assert!(server.stop().status.success());
}

/// `--steer cpu` needs workers pinned to CPUs: with `--no-pin` it is a
/// one-line error naming both flags, before anything is bound.
#[test]
fn steer_cpu_without_pinned_workers_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_c10m-server"))
        .args(["--steer", "cpu", "--no-pin", "--stats-interval", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--steer cpu") && stderr.contains("--no-pin"),
        "{stderr}"
    );
}

/// With direct descriptors each worker's ring holds its sessions in a file
/// table of its own (at most RLIMIT_NOFILE slots per ring), outside the
/// process's descriptor table; with `thread` each worker thread has a
/// descriptor table of its own. Either way one process holds more sessions
/// than RLIMIT_NOFILE (issue 15). Here RLIMIT_NOFILE is 1 000 and two
/// workers hold 1 500 sessions, every one answered, with a handful of
/// descriptors in the process's own table (/proc/PID/fd).
fn per_worker_tables_hold_more_sessions_than_rlimit_nofile(backend: Backend, per_worker: &str) {
    const LIMIT: u64 = 1_000;
    const N: usize = 1_500;
    if !backend.available("per_worker_tables_hold_more_sessions_than_rlimit_nofile") {
        return;
    }
    let _fds = light();
    let server = Server::start_with(backend, &["--workers", "2"], |cmd| limit_nofile(cmd, LIMIT));
    let line = server.startup_line();
    assert!(line.contains(per_worker), "{line}");
    assert!(line.contains(" workers=2 "), "{line}");
    let _clients = open_and_echo(&server, N);
    server.wait_stat("open", |v| v == N as u64, Duration::from_secs(10));
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", server.pid))
        .unwrap()
        .count();
    assert!(
        descriptors < 64,
        "{descriptors} descriptors in /proc/PID/fd for {N} sessions"
    );
    if per_worker.starts_with("descriptors=thread") {
        // The sessions are in the worker threads' own tables.
        let mut in_threads = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", server.pid)).unwrap() {
            let fd_dir = task.unwrap().path().join("fd");
            let n = std::fs::read_dir(fd_dir).map_or(0, |d| d.count());
            assert!(n < LIMIT as usize, "one thread holds {n} descriptors");
            in_threads += n;
        }
        assert!(
            in_threads > N,
            "{in_threads} descriptors across the threads"
        );
    }
    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.stats["closed"]["shutdown"], N as u64);
    assert_eq!(stopped.stats["heartbeats"], N as u64);
    assert_eq!(stopped.stats["accept_errors_fd"], 0);
    for w in stopped.stats["workers"].as_array().unwrap() {
        let open = w["accepted"].as_u64().unwrap();
        assert!(open < LIMIT, "a worker took {open}: {w}");
    }
}

/// Plain descriptors: the workers' shared table is grown to what
/// --max-sessions needs at start-up, before the first connection. Grown
/// under load instead, each doubling waits for an RCU grace period in the
/// accepting worker (sys::presize_fd_table): after another burst test the
/// io_uring worker's accepts stalled until the listen queues overflowed.
#[test]
fn a_shared_descriptor_table_is_grown_before_the_first_connection() {
    let _fds = light();
    for backend in [Backend::Epoll, Backend::Uring] {
        if !backend.available("a_shared_descriptor_table_is_grown_before_the_first_connection") {
            continue;
        }
        let server = Server::start(backend, &["--workers", "2", "--max-sessions", "3000"]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap();
        let fd_size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        // 3 000 sessions and the reserve (16 + 4 per worker): the kernel
        // rounds up to a power of two of 128-slot blocks, not to RLIMIT.
        let need = 3000 + 16 + 4 * 2;
        assert!(
            (need..4 * need).contains(&fd_size),
            "{backend:?}: FDSize {fd_size}, {need} needed"
        );
        assert!(server.stop().status.success());
    }
}

#[test]
fn direct_descriptors_hold_more_sessions_than_rlimit_nofile() {
    per_worker_tables_hold_more_sessions_than_rlimit_nofile(
        Backend::UringDirect,
        "descriptors=direct:938-per-ring",
    );
}

#[test]
fn thread_tables_on_epoll_hold_more_sessions_than_rlimit_nofile() {
    per_worker_tables_hold_more_sessions_than_rlimit_nofile(
        Backend::EpollThread,
        "descriptors=thread:984-per-worker",
    );
}

#[test]
fn thread_tables_on_uring_hold_more_sessions_than_rlimit_nofile() {
    per_worker_tables_hold_more_sessions_than_rlimit_nofile(
        Backend::UringThread,
        "descriptors=thread:984-per-worker",
    );
}

/// `--descriptors auto` (the default) keeps the process's table while
/// --max-sessions fits it, else takes a table per worker, and without
/// --workers grows the workers to the tables needed, saying so.
#[test]
fn auto_layout_takes_per_worker_tables_past_the_process_table() {
    let _fds = light();
    let server = Server::start_with(
        Backend::Epoll,
        &["--descriptors", "auto", "--max-sessions", "3000"],
        |cmd| limit_nofile(cmd, 1_000),
    );
    let line = server.startup_line();
    // 3 000 sessions at 984 per worker table: 4 workers on 2 CPUs.
    assert!(
        line.contains(
            "descriptors=thread:984-per-worker descriptors_why=auto:over-process-table,epoll \
             workers=4 "
        ),
        "{line}"
    );
    let _clients = open_and_echo(&server, 3_000);
    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("4 workers (not "),
        "{}",
        stopped.stderr
    );
    assert_eq!(stopped.stats["heartbeats"], 3_000);
    assert_eq!(stopped.stats["accept_errors_fd"], 0);

    let server = Server::start_with(Backend::Epoll, &["--descriptors", "auto"], |cmd| {
        limit_nofile(cmd, 1_000)
    });
    assert!(
        server
            .startup_line()
            .contains("descriptors=plain descriptors_why=auto:fits-process-table"),
        "{}",
        server.startup_line()
    );
    assert!(server.stop().status.success());
    if Backend::Uring.available("auto_layout_takes_per_worker_tables_past_the_process_table") {
        let server = Server::start_with(Backend::Auto, &["--max-sessions", "3000"], |cmd| {
            limit_nofile(cmd, 1_000)
        });
        assert!(
            server.startup_line().contains(
                "descriptors=direct:938-per-ring \
                 descriptors_why=auto:over-process-table,io_uring workers=2 rings_per_worker=2 "
            ),
            "{}",
            server.startup_line()
        );
        assert!(server.stop().status.success());
    }
}

/// Drops CAP_IPC_LOCK (from the bounding set: root's capabilities after
/// exec come from it) and sets RLIMIT_MEMLOCK to `bytes`, as in a container.
/// False when this test process may not drop capabilities.
fn as_container_without_ipc_lock(cmd: &mut std::process::Command, bytes: u64) -> bool {
    use std::os::unix::process::CommandExt;
    const CAP_IPC_LOCK: libc::c_ulong = 14;
    // SAFETY: prctl(PR_CAPBSET_READ) reads a flag of this process.
    if unsafe { libc::prctl(libc::PR_CAPBSET_READ, CAP_IPC_LOCK, 0, 0, 0) } != 1 {
        return false;
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl and setrlimit, both async-signal-safe; it touches no locks
    // or allocations of the parent.
    unsafe {
        cmd.pre_exec(move || {
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
    true
}

/// Without CAP_IPC_LOCK every io_uring ring counts against RLIMIT_MEMLOCK.
/// A million sessions need 26 rings of ~52 KiB per worker, 52 in all;
/// under 1 MiB `auto` takes epoll with a descriptor table per worker
/// thread and says why, and a forced `uring` stops with the limit, its
/// value and the fixes.
#[test]
fn io_uring_rings_past_rlimit_memlock_fall_back_to_epoll_or_are_refused() {
    if !Backend::Uring.available("io_uring_rings_past_rlimit_memlock_fall_back_to_epoll") {
        return;
    }
    let _fds = light();
    let mut probe = std::process::Command::new("true");
    if !as_container_without_ipc_lock(&mut probe, 1 << 20) || !probe.status().unwrap().success() {
        eprintln!("SKIPPED: this test process may not drop CAP_IPC_LOCK");
        return;
    }
    let server = Server::start_with(Backend::Auto, &["--max-sessions", "1000000"], |cmd| {
        assert!(as_container_without_ipc_lock(cmd, 1 << 20));
    });
    let line = server.startup_line();
    assert!(
        line.contains(
            "backend=epoll backend_why=auto:memlock descriptors=thread:19984-per-worker \
             descriptors_why=auto:over-process-table,epoll workers=51 "
        ),
        "{line}"
    );
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains(
            "io_uring does not fit RLIMIT_MEMLOCK, using epoll: RLIMIT_MEMLOCK is 1024 KiB"
        ),
        "{}",
        stopped.stderr
    );

    let mut forced = std::process::Command::new(env!("CARGO_BIN_EXE_c10m-server"));
    forced.args([
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "uring",
        "--max-sessions",
        "1000000",
    ]);
    assert!(as_container_without_ipc_lock(&mut forced, 1 << 20));
    let out = forced.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--backend uring: RLIMIT_MEMLOCK is 1024 KiB"),
        "{stderr}"
    );
    assert!(
        stderr.contains("52 worker rings of ~52 KiB need 2704 KiB, and 19 fit"),
        "{stderr}"
    );
    assert!(stderr.contains("ulimit -l"), "{stderr}");
}

/// `--descriptors direct` on the epoll backend is refused in one line.
#[test]
fn direct_descriptors_need_io_uring() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_c10m-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "epoll",
            "--descriptors",
            "direct",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--descriptors direct needs the io_uring backend"),
        "{stderr}"
    );
}

/// `auto` picks io_uring where the kernel offers it and says so.
#[test]
fn auto_backend_takes_uring_where_the_kernel_offers_it() {
    let _fds = light();
    let server = Server::start(Backend::Auto, &[]);
    let line = server.startup_line();
    if Backend::Uring.available("auto_backend_takes_uring_where_the_kernel_offers_it") {
        assert!(
            line.contains(" backend=uring backend_why=auto:io_uring-ok,"),
            "{line}"
        );
    } else {
        assert!(line.contains(" backend=epoll backend_why=auto:"), "{line}");
    }
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
}

/// A seccomp profile that refuses io_uring_setup (as container runtimes'
/// default profiles do): `auto` falls back to epoll saying why; a forced
/// `uring` is a one-line error naming what is refused, exit status 1.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_seccomp_profile_refusing_io_uring_gives_epoll_or_a_clear_error() {
    let _fds = light();
    let server = Server::start_with(Backend::Auto, &[], refuse_io_uring);
    let line = server.startup_line();
    assert!(
        line.contains(" backend=epoll backend_why=auto:io_uring-refused "),
        "{line}"
    );
    assert!(
        server
            .stderr()
            .contains("io_uring unavailable, using epoll")
            || wait_for_stderr(&server, "using epoll")
    );
    roundtrip(&mut server.connect(), b"PING\r\n", b"+PONG\r\n");
    let stopped = server.stop();
    assert!(
        stopped.status.success(),
        "{:?} {}",
        stopped.status,
        stopped.stderr
    );

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_c10m-server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--stats-interval",
        "0s",
        "--backend",
        "uring",
    ]);
    refuse_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("c10m-server: error: --backend uring: the kernel refuses io_uring"),
        "{stderr}"
    );
    assert!(stderr.contains("seccomp"), "{stderr}");
}

/// Installs, in the child before exec, a seccomp filter that fails
/// io_uring_setup with EPERM and allows everything else.
#[cfg(target_arch = "x86_64")]
fn refuse_io_uring(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        insn(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs in the forked child before exec and makes
    // only two prctl calls (async-signal-safe), reading `filter`, which it
    // owns; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn wait_for_stderr(server: &Server, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.stderr().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The first reply line, or what arrived before the server closed.
fn read_to_close_or_line(c: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        match c.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            _ => break,
        }
    }
    reply
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// `--procs 3`: 15 000 sessions over three children; one child is killed
/// with SIGKILL, restarted, and its clients reconnect; stats sum across
/// children; SIGTERM stops every process.
fn supervisor_sums_children_restarts_a_killed_one_and_stops_all(backend: Backend) {
    const N: usize = 15_000;
    let _fds = heavy();
    let server = Server::start(
        backend,
        &["--procs", "3", "--max-sessions", "15000", "--workers", "1"],
    );
    let children = children_of(server.pid);
    assert_eq!(children.len(), 3, "{children:?}");
    let mut clients = server.connect_paced(N);
    for c in clients.iter_mut() {
        roundtrip(c, b"PING\r\n", b"+PONG\r\n");
    }
    let line = server.wait_stat("open", |v| v == N as u64, Duration::from_secs(10));
    assert_eq!(stat(&line, "procs"), Some(3), "{line}");

    kill(children[0], nix::sys::signal::Signal::SIGKILL);
    // Clients of the dead child see their connection fail; they reconnect
    // (with a small backoff) and are served by the survivors or the new child.
    let mut reconnected = 0;
    for c in clients.iter_mut() {
        let alive = c.write_all(b"PING\r\n").is_ok() && {
            let mut b = [0u8; 7];
            c.read_exact(&mut b).is_ok() && &b == b"+PONG\r\n"
        };
        if !alive {
            *c = reconnect(&server);
            reconnected += 1;
        }
    }
    assert!(
        reconnected > 2000,
        "only {reconnected} sessions were on the killed child"
    );
    let line = server.wait_stat("restarts", |v| v == 1, Duration::from_secs(10));
    assert!(stat(&line, "lost").unwrap() > 2000, "{line}");
    server.wait_stat("open", |v| v == N as u64, Duration::from_secs(10));
    let now = children_of(server.pid);
    assert_eq!(now.len(), 3, "the killed child was replaced: {now:?}");
    assert!(!now.contains(&children[0]));

    let stopped = server.stop();
    assert!(stopped.status.success(), "{:?}", stopped.status);
    assert_eq!(stopped.stats["procs"], 3);
    // The supervisor's stderr says why a child exited and when it restarted.
    assert_eq!(stopped.stats["restarts"], 1, "{}", stopped.stderr);
    assert_eq!(stopped.stats["closed"]["shutdown"], N as u64);
    let accepted = stopped.stats["accepted"].as_u64().unwrap();
    assert_eq!(accepted, (N + reconnected) as u64);
    let per_child: u64 = stopped.stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["closed"]["shutdown"].as_u64().unwrap())
        .sum();
    assert_eq!(per_child, N as u64, "the total is the sum of the children");
    for pid in now.iter().chain(&children) {
        assert!(!alive(*pid), "child {pid} outlived the supervisor");
    }
}

fn supervisor_death_takes_its_children_along(backend: Backend) {
    let _fds = light();
    let mut server = Server::start(backend, &["--procs", "2", "--workers", "1"]);
    let children = children_of(server.pid);
    assert_eq!(children.len(), 2);
    kill(server.pid, nix::sys::signal::Signal::SIGKILL);
    server.wait(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "children outlived a killed supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects until a PING is answered: while the killed child is being
/// restarted, the survivors may be full and reject (accept, then close).
/// Each attempt binds a new source address (port chosen at connect time,
/// IP_BIND_ADDRESS_NO_PORT): with most of the ephemeral range in use, the
/// kernel would hand the same source port back after a reset, and
/// SO_REUSEPORT would hash that 4-tuple to the same full child every time
/// (found by this test; the loadgen spreads sources the same way).
fn reconnect(server: &Server) -> TcpStream {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SOURCE: AtomicU32 = AtomicU32::new(0);
    // A flat 1 ms pause: with 2 of 3 children full, most attempts fail, and
    // an exponential backoff would make this test take minutes.
    for _ in 0..2000 {
        let n = SOURCE.fetch_add(1, Ordering::Relaxed);
        let source = std::net::SocketAddr::from(([127, 1, (n >> 8) as u8, n as u8], 0));
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
            .unwrap();
        sock.bind(&source.into()).unwrap();
        if sock.connect(&server.addr.into()).is_ok() {
            let mut s: TcpStream = sock.into();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut b = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut b).is_ok()
                && &b == b"+PONG\r\n"
            {
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let last = server.wait_stat("open", |_| true, Duration::from_secs(1));
    panic!("could not reconnect; last stats: {last}");
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// True when every thread of `pid` is stopped (state T).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            let after = &s[s.rfind(')').unwrap_or(0) + 2..];
            after.starts_with('T')
        })
    })
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let after = &s[s.rfind(')').unwrap_or(0) + 2..];
        !after.starts_with('Z')
    })
}

/// A's listener overflows while A is stopped: A counts the drops, and B (a
/// second server on the same host) counts none and sheds nobody. With the
/// namespace-wide ListenOverflows counter B would refuse clients for A's
/// backlog.
fn listen_drops_are_counted_per_server_not_per_host(backend: Backend) {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    use socket2::{Domain, Socket, Type};
    let _fds = light();
    let quiet = ["--workers", "1", "--max-lag", "0s"];
    let a = Server::start(backend, &[&quiet[..], &["--backlog", "1"]].concat());
    let b = Server::start(backend, &quiet);
    kill(a.pid, SIGSTOP);
    let stalled = Instant::now();
    while !all_threads_stopped(a.pid) {
        assert!(stalled.elapsed() < Duration::from_secs(1), "not stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Backlog 1: two handshakes fit the queue, the rest of the SYNs drop.
    let flood: Vec<Socket> = (0..8)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&a.addr.into()); // EINPROGRESS
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // B, meanwhile, admits and answers as usual.
    let mut c = b.connect();
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
    kill(a.pid, SIGCONT);
    drop(flood);
    std::thread::sleep(Duration::from_millis(600)); // A's signal reads every 250 ms
    let a_stats = a.stop().stats;
    assert!(
        a_stats["listen_overflows"].as_u64().unwrap() >= 1,
        "{a_stats}"
    );
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
    let b_stats = b.stop().stats;
    assert_eq!(b_stats["listen_overflows"], 0, "{b_stats}");
    assert_eq!(b_stats["shed"], 0, "{b_stats}");
}

/// `clients` sessions each send `rounds` pipelines of `per_round` PING and
/// ECHO requests of varied lengths (all clients write, then all read), and
/// every reply must come back whole and in order, without stalls: a
/// worker that sleeps while it holds completions to serve waits out a tick
/// each time (a run of this test went from 0.2 s to 11.5 s that way), so
/// the whole exchange must take under 5 s. Returns the sessions, still
/// open.
fn pipelined_rounds(
    server: &Server,
    clients: usize,
    rounds: usize,
    per_round: usize,
) -> Vec<TcpStream> {
    let mut conns: Vec<TcpStream> = (0..clients).map(|_| server.connect()).collect();
    let started = Instant::now();
    for round in 0..rounds {
        let mut want = Vec::with_capacity(clients);
        for (c, client) in conns.iter_mut().enumerate() {
            let (mut request, mut reply) = (Vec::new(), Vec::new());
            for j in 0..per_round {
                let payload = format!("{c}-{round}-{j}-{}", "x".repeat((c + j) % 40));
                if j % 2 == 0 {
                    write!(request, "PING {payload}\r\n").unwrap();
                } else {
                    write!(
                        request,
                        "*2\r\n$4\r\nECHO\r\n${}\r\n{payload}\r\n",
                        payload.len()
                    )
                    .unwrap();
                }
                write!(reply, "${}\r\n{payload}\r\n", payload.len()).unwrap();
            }
            // Two segments (the client sets TCP_NODELAY): a session's second
            // recv completion often lands in the turn of its first, and
            // waits there for the first one's send.
            let half = request.len() / 2;
            client.write_all(&request[..half]).unwrap();
            client.write_all(&request[half..]).unwrap();
            want.push(reply);
        }
        for (c, (client, reply)) in conns.iter_mut().zip(want).enumerate() {
            assert_eq!(
                String::from_utf8_lossy(&read_exact_len(client, reply.len())),
                String::from_utf8_lossy(&reply),
                "client {c}, round {round}"
            );
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{clients} sessions x {rounds} rounds took {took:?}: the worker slept with work to do"
    );
    conns
}

/// A turn takes at most `--uring-turn-max` completions and leaves the
/// rest in the CQ for the next turn, which then must not sleep. At 3 per
/// turn, 200 sessions' pipelines leave completions behind on almost every
/// turn: every reply must still come, whole and in order, with no stall
/// (hour-long timeouts make the wheel tick 1 s: a wait while completions
/// are left, or recvs are held back, would sit out a second). epoll
/// ignores the flag.
fn a_capped_turn_leaves_the_rest_for_the_next_and_loses_nothing(backend: Backend) {
    const CLIENTS: usize = 200;
    const ROUNDS: usize = 4;
    const PER_ROUND: usize = 8;
    let _fds = light();
    let server = Server::start(
        backend,
        &[
            "--workers",
            "1",
            "--uring-turn-max",
            "3",
            "--idle-timeout",
            "1h",
            "--frame-timeout",
            "1h",
        ],
    );
    let _clients = pipelined_rounds(&server, CLIENTS, ROUNDS, PER_ROUND);
    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let total = (CLIENTS * ROUNDS * PER_ROUND) as u64;
    assert_eq!(stopped.stats["commands"], total, "{}", stopped.stats);
    assert_eq!(stopped.stats["closed"]["shutdown"], CLIENTS as u64);
}
