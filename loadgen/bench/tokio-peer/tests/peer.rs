//! c10m-tokio-peer end to end: the binary on 127.0.0.1:0, its address read
//! from the start-up line, exact replies for both protocols over real
//! sockets, including requests split across writes and pipelined ones.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running c10m-tokio-peer; killed (SIGKILL) if a test leaves it running.
struct PeerProcess {
    child: Child,
    addr: String,
}

impl PeerProcess {
    fn start(protocol: &str) -> PeerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_c10m-tokio-peer"));
        command.stderr(Stdio::inherit());
        PeerProcess::start_with(command, protocol)
    }

    /// Starts the peer with `command` (the binary, or a wrapper that runs
    /// it as its last arguments), `stderr` as the command says.
    fn start_with(mut command: Command, protocol: &str) -> PeerProcess {
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--protocol", protocol])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start c10m-tokio-peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the start-up line");
        let rest = line
            .strip_prefix("c10m-tokio-peer listening on ")
            .unwrap_or_else(|| panic!("unexpected start-up line {line:?}"));
        let (addr, shown) = rest.trim_end().split_once(' ').expect("addr and protocol");
        assert_eq!(shown, format!("protocol={protocol}"));
        PeerProcess {
            child,
            addr: addr.to_string(),
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Sends `signal` and waits (up to 10 s) for the exit.
    fn stop(&mut self, signal: Signal) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit 10 s after {signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads exactly `expected.len()` bytes and compares them.
fn expect_reply(stream: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    stream.read_exact(&mut got).expect("read the reply");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Asserts the server closed the connection (end of stream, or a reset when
/// it closed with input unread) with nothing more sent.
fn expect_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes {rest:?}"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
    }
}

#[test]
fn resp_ping_gets_pong_and_ping_payload_gets_bulk_echo() {
    let peer = PeerProcess::start("resp");
    let mut stream = peer.connect();
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    expect_reply(&mut stream, b"+PONG\r\n");
    stream
        .write_all(b"*2\r\n$4\r\nPING\r\n$6\r\n123456\r\n")
        .unwrap();
    expect_reply(&mut stream, b"$6\r\n123456\r\n");
    stream.write_all(b"PING 42\r\n").unwrap();
    expect_reply(&mut stream, b"$2\r\n42\r\n");
}

#[test]
fn resp_ping_split_across_two_writes() {
    let peer = PeerProcess::start("resp");
    let mut stream = peer.connect();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"*2\r\n$4\r\nPI").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"NG\r\n$3\r\n123\r\n").unwrap();
    expect_reply(&mut stream, b"$3\r\n123\r\n");
}

#[test]
fn resp_pipelined_requests_get_replies_in_order() {
    let peer = PeerProcess::start("resp");
    let mut stream = peer.connect();
    stream
        .write_all(
            b"*2\r\n$4\r\nPING\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nPING\r\n$3\r\n333\r\n",
        )
        .unwrap();
    expect_reply(&mut stream, b"$1\r\n1\r\n+PONG\r\n$3\r\n333\r\n");
}

#[test]
fn resp_other_commands_are_unknown() {
    let peer = PeerProcess::start("resp");
    let mut stream = peer.connect();
    stream.write_all(b"*1\r\n$4\r\nQUIT\r\n").unwrap();
    expect_reply(&mut stream, b"-ERR unknown command\r\n");
    // The session survives an unknown command.
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    expect_reply(&mut stream, b"+PONG\r\n");
}

#[test]
fn resp_malformed_request_gets_protocol_error_and_close() {
    let peer = PeerProcess::start("resp");
    let mut stream = peer.connect();
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n*1\r\n+PING\r\n")
        .unwrap();
    expect_reply(&mut stream, b"+PONG\r\n-ERR protocol error\r\n");
    expect_closed(&mut stream);
}

#[test]
fn line_echoes_every_line_verbatim() {
    let peer = PeerProcess::start("line");
    let mut stream = peer.connect();
    stream.write_all(b"hello\n").unwrap();
    expect_reply(&mut stream, b"hello\n");
    stream.write_all(b"with cr\r\n\n").unwrap();
    expect_reply(&mut stream, b"with cr\r\n\n");
}

#[test]
fn line_split_across_two_writes() {
    let peer = PeerProcess::start("line");
    let mut stream = peer.connect();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"12345").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"678\n").unwrap();
    expect_reply(&mut stream, b"12345678\n");
}

#[test]
fn line_pipelined_lines_come_back_in_order() {
    let peer = PeerProcess::start("line");
    let mut stream = peer.connect();
    stream.write_all(b"one\ntwo\nthree\nfour-partial").unwrap();
    expect_reply(&mut stream, b"one\ntwo\nthree\n");
    stream.write_all(b"\n").unwrap();
    expect_reply(&mut stream, b"four-partial\n");
}

#[test]
fn line_of_64_kib_is_echoed_and_longer_closes() {
    let peer = PeerProcess::start("line");
    let mut stream = peer.connect();
    let mut line = vec![b'x'; 64 * 1024];
    line.push(b'\n');
    stream.write_all(&line).unwrap();
    expect_reply(&mut stream, &line);

    let mut too_long = vec![b'y'; 64 * 1024 + 1];
    too_long.push(b'\n');
    stream.write_all(&too_long).unwrap();
    expect_closed(&mut stream);
}

#[test]
fn sessions_are_independent() {
    let peer = PeerProcess::start("resp");
    let mut streams: Vec<TcpStream> = (0..200).map(|_| peer.connect()).collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        let payload = i.to_string();
        let request = format!("*2\r\n$4\r\nPING\r\n${}\r\n{payload}\r\n", payload.len());
        stream.write_all(request.as_bytes()).unwrap();
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let payload = i.to_string();
        expect_reply(
            stream,
            format!("${}\r\n{payload}\r\n", payload.len()).as_bytes(),
        );
    }
}

#[test]
fn sigterm_and_sigint_exit_cleanly_with_sessions_open() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut peer = PeerProcess::start("resp");
        let mut stream = peer.connect();
        stream.write_all(b"PING\r\n").unwrap();
        expect_reply(&mut stream, b"+PONG\r\n");
        let status = peer.stop(signal);
        assert!(status.success(), "{signal}: {status}");
        expect_closed(&mut stream);
    }
}

#[test]
fn descriptor_exhaustion_does_not_stop_the_server() {
    // 64 descriptors: the runtime's few, the listener, then ~55 sessions;
    // the rest wait in the accept queue while accept fails with EMFILE.
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=64:64", "--"])
        .arg(env!("CARGO_BIN_EXE_c10m-tokio-peer"))
        .stderr(Stdio::piped());
    let mut peer = PeerProcess::start_with(command, "resp");
    let stderr = BufReader::new(peer.child.stderr.take().unwrap());
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let held: Vec<TcpStream> = (0..100).map(|_| peer.connect()).collect();
    let logged = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("an accept failure is logged");
    assert!(logged.contains("accept failed"), "{logged}");
    assert!(logged.contains("Too many open files"), "{logged}");
    drop(held);
    // Once descriptors are free again the queued (now closed) connections
    // are accepted and dropped, and a new one is served.
    let mut stream = peer.connect();
    stream.write_all(b"PING\r\n").unwrap();
    expect_reply(&mut stream, b"+PONG\r\n");
    // One line a second at most, however many failures there were.
    let later: Vec<String> = lines.try_iter().collect();
    assert!(
        later.len() <= 2,
        "accept failures logged too often: {later:?}"
    );
    assert!(peer.stop(Signal::SIGTERM).success());
}
