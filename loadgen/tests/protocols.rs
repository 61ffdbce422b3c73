//! tests/protocols: the loadgen's protocol adapters against real servers
//! (tests/peers: mosquitto, nginx, memcached, redis-server, a python
//! `websockets` echo server, the tokio bench peer), on both socket
//! interfaces: every session held, 0 errors, every heartbeat answered,
//! RTT taken for each; and a wrong protocol is counted by its kind.

mod common;
mod peers;

use common::{describe, io_uring_client, num, run_bounded, summary};
use peers::Peer;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `c10m-loadgen run ARGS` to completion (killed after 60 s).
fn loadgen(args: &[String]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_c10m-loadgen"));
    command.arg("run").args(["--progress", "off"]).args(args);
    run_bounded(&mut command, Duration::from_secs(60))
}

const SESSIONS: u64 = 300;

/// 300 sessions against `peer` in `protocol` (plus `extra` flags) over
/// `io`, heartbeating every 200 ms for 3 s, with a drain so that every
/// session closes as planned (MQTT DISCONNECT, websocket close); returns
/// the summary after checking the run was clean.
fn clean_run(peer: &Peer, protocol: &str, io: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--protocol",
        protocol,
        "--target",
        &peer.addr.to_string(),
        "--sessions",
        &SESSIONS.to_string(),
        "--rate",
        "2000",
        "--hold",
        "3s",
        "--heartbeat",
        "200ms",
        "--io",
        io,
        "--server-pid",
        &peer.pid.to_string(),
        "--expect-sessions",
        &SESSIONS.to_string(),
        "--max-errors",
        "0",
        "--max-unanswered",
        "0",
        "--out",
        dir.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = loadgen(&args);
    let what = format!("{protocol} against {} on {io}", peer.name);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}\n{}",
        describe(&out),
        peer.stderr()
    );
    let s = summary(dir.path());
    assert_eq!(num(&s, "/errors/total"), 0, "{what}: {s:#}");
    assert_eq!(num(&s, "/sessions/held_at_end"), SESSIONS, "{what}");
    let sent = num(&s, "/heartbeats/sent");
    // 300 sessions x ~3.3 s / 200 ms.
    assert!(sent >= SESSIONS * 10, "{what}: only {sent} heartbeats sent");
    assert_eq!(num(&s, "/heartbeats/answered"), sent, "{what}");
    assert_eq!(num(&s, "/rtt_us/count"), sent, "{what}: an RTT per answer");
    let p99 = num(&s, "/rtt_us/p99");
    assert!(p99 > 0 && p99 < 1_000_000, "{what}: RTT p99 {p99} us");
    assert_eq!(
        s.pointer("/config/protocol/kind").and_then(Value::as_str),
        Some(protocol),
        "{what}: the summary records the protocol"
    );
    s
}

/// Both socket interfaces (io_uring where this kernel runs its client).
fn on_both(test: &str, peer: &Peer, protocol: &str, extra: &[&str]) {
    clean_run(peer, protocol, "epoll", extra);
    if io_uring_client(test) {
        clean_run(peer, protocol, "uring", extra);
    }
}

#[test]
fn mqtt_3_1_1_and_5_against_mosquitto() {
    let Some(peer) = Peer::mosquitto() else {
        return;
    };
    on_both("mqtt 3.1.1", &peer, "mqtt", &[]);
    on_both("mqtt 5", &peer, "mqtt", &["--mqtt-version", "5"]);
}

#[test]
fn http_keep_alive_against_nginx() {
    let Some(peer) = Peer::nginx() else {
        return;
    };
    on_both("http", &peer, "http", &["--path", "/health"]);
}

#[test]
fn memcache_version_against_memcached() {
    let Some(peer) = Peer::memcached() else {
        return;
    };
    on_both("memcache", &peer, "memcache", &[]);
}

#[test]
fn resp_ping_echo_against_redis() {
    let Some(peer) = Peer::redis() else {
        return;
    };
    on_both("resp", &peer, "resp", &[]);
}

#[test]
fn websocket_ping_pong_against_python_websockets() {
    let Some(peer) = Peer::websocket() else {
        return;
    };
    on_both("websocket", &peer, "websocket", &[]);
}

#[test]
fn line_and_resp_against_the_tokio_peer() {
    if let Some(peer) = Peer::tokio("line") {
        on_both("line", &peer, "line", &[]);
    }
    if let Some(peer) = Peer::tokio("resp") {
        on_both("resp (tokio)", &peer, "resp", &[]);
    }
}

/// A run that speaks the wrong protocol to a server: it ends (exit 3 on
/// --max-errors 0) with the errors counted under `kind` and the first
/// one's text kept.
fn wrong_protocol(peer: &Peer, protocol: &str, kind: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--protocol",
        protocol,
        "--target",
        &peer.addr.to_string(),
        "--sessions",
        "20",
        "--hold",
        "1s",
        "--heartbeat",
        "200ms",
        "--connect-timeout",
        "1s",
        "--max-errors",
        "0",
        "--out",
        dir.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = loadgen(&args);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let s = summary(dir.path());
    let errors = num(&s, &format!("/errors/{kind}"));
    assert!(errors >= 20, "{protocol} against {}: {s:#}", peer.name);
    assert_eq!(
        num(&s, "/errors/total"),
        errors,
        "only {kind} errors: {s:#}"
    );
    let first = s
        .pointer(&format!("/first_errors/{kind}"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(first.contains(text), "{first:?} should name {text:?}");
    let hint = s
        .pointer(&format!("/error_hints/{kind}"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(!hint.is_empty(), "a hint for {kind}: {s:#}");
}

#[test]
fn a_wrong_protocol_is_counted_by_kind_with_its_first_error() {
    if let Some(nginx) = Peer::nginx() {
        // nginx answers the upgrade request with its 200 "ok".
        wrong_protocol(
            &nginx,
            "websocket",
            "handshake",
            "HTTP 200 OK instead of 101",
        );
    }
    if let Some(memcached) = Peer::memcached() {
        // memcached answers PING <time> with ERROR, which is no RESP.
        wrong_protocol(
            &memcached,
            "resp",
            "protocol",
            "unexpected reply type byte 'E'",
        );
    }
    if let Some(redis) = Peer::redis() {
        // Redis reads `version` as an unknown inline command: -ERR.
        wrong_protocol(&redis, "memcache", "protocol", "-ERR unknown command");
    }
    if let Some(tokio) = Peer::tokio("line") {
        // A line echo server echoes the CONNECT's bytes: no CONNACK.
        wrong_protocol(
            &tokio,
            "mqtt",
            "handshake",
            "no answer to the mqtt handshake",
        );
    }
}
