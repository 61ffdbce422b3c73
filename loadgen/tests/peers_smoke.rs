//! tests/peers: each real peer starts, answers its protocol's native
//! heartbeat over a plain `std` socket, and leaves no process behind.
//! Without a peer's program installed its test is skipped (with a line on
//! stderr naming the package), except under CI, where it fails.

mod common;
mod peers;

use peers::Peer;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn connect(peer: &Peer) -> TcpStream {
    let stream = TcpStream::connect(peer.addr)
        .unwrap_or_else(|error| panic!("connect to {} at {}: {error}", peer.name, peer.addr));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads exactly `expected.len()` bytes and compares them.
fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    stream.read_exact(&mut got).expect("read the reply");
    assert_eq!(got, expected);
}

/// Reads up to and including the blank line that ends an HTTP head.
fn read_http_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read the HTTP head");
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024, "HTTP head too long");
    }
    String::from_utf8(head).expect("an ASCII head")
}

/// The value of header `name` (any case) in an HTTP head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// After the peer is dropped its process group is gone.
fn assert_stopped(peer: Peer) {
    let pid = nix::unistd::Pid::from_raw(peer.pid as i32);
    drop(peer);
    let alive = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&other| {
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; a zombie
            // (state Z) is no longer running.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{other}/stat")) else {
                return false;
            };
            let Some((_, after_comm)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pid.to_string().as_str())
        })
        .count();
    assert_eq!(alive, 0, "processes left in group {pid}");
}

#[test]
fn mosquitto_answers_connect_and_pingreq() {
    let Some(peer) = Peer::mosquitto() else {
        return;
    };
    let mut stream = connect(&peer);
    // MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keepalive
    // 60 s, client id "smoke".
    let mut connect = vec![0x10, 17, 0, 4];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60, 0, 5]);
    connect.extend_from_slice(b"smoke");
    stream.write_all(&connect).unwrap();
    expect_bytes(&mut stream, &[0x20, 0x02, 0x00, 0x00]);
    stream.write_all(&[0xc0, 0x00]).unwrap();
    expect_bytes(&mut stream, &[0xd0, 0x00]);
    assert_stopped(peer);
}

#[test]
fn nginx_answers_get_with_ok() {
    let Some(peer) = Peer::nginx() else {
        return;
    };
    let mut stream = connect(&peer);
    for _ in 0..2 {
        // Twice on one connection: keep-alive holds.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let head = read_http_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(header(&head, "content-length"), Some("3"), "{head}");
        expect_bytes(&mut stream, b"ok\n");
    }
    assert_stopped(peer);
}

#[test]
fn memcached_answers_version() {
    let Some(peer) = Peer::memcached() else {
        return;
    };
    let mut stream = connect(&peer);
    stream.write_all(b"version\r\n").unwrap();
    let mut reply = [0; 64];
    let len = stream.read(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply[..len]);
    assert!(reply.starts_with("VERSION "), "{reply:?}");
    assert!(reply.ends_with("\r\n"), "{reply:?}");
    assert_stopped(peer);
}

#[test]
fn redis_echoes_ping_payload() {
    let Some(peer) = Peer::redis() else {
        return;
    };
    let mut stream = connect(&peer);
    stream
        .write_all(b"*2\r\n$4\r\nPING\r\n$3\r\n123\r\n")
        .unwrap();
    expect_bytes(&mut stream, b"$3\r\n123\r\n");
    assert_stopped(peer);
}

#[test]
fn websocket_handshakes_and_answers_ping_with_pong() {
    let Some(peer) = Peer::websocket() else {
        return;
    };
    let mut stream = connect(&peer);
    // RFC 6455 section 1.3's sample key and its accept value
    // (base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))).
    stream
        .write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                peer.addr
            )
            .as_bytes(),
        )
        .unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    // A client's frames are masked: FIN + ping, MASK + length 8, the key,
    // the payload XORed with it.
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut ping = vec![0x89, 0x80 | 8];
    ping.extend_from_slice(&mask);
    ping.extend(
        b"12345678"
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    stream.write_all(&ping).unwrap();
    let mut pong = vec![0x8a, 8];
    pong.extend_from_slice(b"12345678");
    expect_bytes(&mut stream, &pong);
    assert_stopped(peer);
}

#[test]
fn tokio_peer_resp_echoes_ping_payload() {
    let Some(peer) = Peer::tokio("resp") else {
        return;
    };
    let mut stream = connect(&peer);
    stream
        .write_all(b"*2\r\n$4\r\nPING\r\n$3\r\n123\r\n")
        .unwrap();
    expect_bytes(&mut stream, b"$3\r\n123\r\n");
    assert_stopped(peer);
}

#[test]
fn tokio_peer_line_echoes_lines() {
    let Some(peer) = Peer::tokio("line") else {
        return;
    };
    let mut stream = connect(&peer);
    stream.write_all(b"12345678\n").unwrap();
    expect_bytes(&mut stream, b"12345678\n");
    assert_stopped(peer);
}

/// Set in the child run of [`a_missing_program_skips_or_under_ci_panics`].
const PROBE_ENV: &str = "C10M_PEERS_MISSING_PROBE";

#[test]
fn a_missing_program_skips_or_under_ci_panics() {
    if std::env::var_os(PROBE_ENV).is_some() {
        // The child run: the parent set or cleared CI.
        assert!(peers::installed("c10m-no-such-program", "c10m-no-such-package").is_none());
        return;
    }
    // CI is read from the environment, shared by every test thread: the
    // cases run this test again in child processes with CI set or not.
    let advice = "install c10m-no-such-package (apt-get install c10m-no-such-package)";
    for ci in [Some("true"), None] {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "a_missing_program_skips_or_under_ci_panics"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(PROBE_ENV, "1");
        match ci {
            Some(value) => child.env("CI", value),
            None => child.env_remove("CI"),
        };
        let output = child.output().expect("run the test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.contains("1 passed") || text.contains("1 failed"),
            "{text}"
        );
        assert!(text.contains(advice), "CI={ci:?}: {text}");
        if ci.is_some() {
            assert!(!output.status.success(), "CI set, yet no panic: {text}");
            assert!(text.contains("not found and CI is set"), "{text}");
        } else {
            assert!(output.status.success(), "CI unset, yet a failure: {text}");
            assert!(
                text.contains("skipping: c10m-no-such-program not found"),
                "{text}"
            );
        }
    }
}
