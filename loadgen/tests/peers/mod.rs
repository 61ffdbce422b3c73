//! Real peer servers for the loadgen's protocol tests: mosquitto, nginx,
//! memcached, redis, a python `websockets` echo server and
//! c10m-tokio-peer, each started on a loopback port of its own with a
//! configuration in a temporary directory (nothing under /etc or /var is
//! read or written), and stopped, with every process it forked, when its
//! [`Peer`] is dropped. A test includes this with `mod peers;`.
//!
//! Missing servers: each constructor returns `None` (and says on stderr
//! which Debian package to install) when its program is not installed, so
//! a developer without them still runs the rest. Under CI ([`require`]),
//! a missing program is a panic instead: `.ci/run` installs them all, and
//! a skipped protocol must not pass there unseen.
//!
//! Ports: the servers that cannot report a kernel-chosen port (mosquitto,
//! nginx, memcached, redis) get one that was free a moment before (bound
//! on 127.0.0.1:0 and released); the websocket and tokio peers listen on
//! port 0 and print theirs. Ready means a TCP connect succeeds (tried every
//! 20 ms for up to 10 s). A server that exits first or is not ready in
//! time (its port taken in between, say) is tried again on a new port, up
//! to three times in all; then the constructor panics with its stderr.
//!
//! Stopping: each server runs in a process group of its own (nginx's
//! workers join its master's). Drop sends the group SIGTERM, waits up to
//! 10 s for the server to exit (SIGKILL after that), then SIGKILLs whatever
//! is left in the group. The server is only reaped after that last signal,
//! so its process-group id cannot have been reused by then.

#![allow(dead_code)] // each test binary uses the peers it needs

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Once, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server has to accept a TCP connection after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often readiness is probed.
const READY_POLL: Duration = Duration::from_millis(20);

/// Starts in all for a server on a picked port.
const START_ATTEMPTS: usize = 3;

/// How long a server has to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The websocket echo server: port 0, prints `listening on ADDR` once
/// bound. It answers pings itself (websockets does), sends none
/// (`ping_interval=None`), offers no compression, and raises its
/// descriptor limit as the other peers do.
const WEBSOCKET_ECHO_PY: &str = r#"
import asyncio
import resource

import websockets


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def main():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    async with websockets.serve(
        echo, "127.0.0.1", 0, ping_interval=None, max_size=1 << 20, compression=None
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
"#;

/// True when a missing peer must fail the test rather than skip it: the
/// `CI` environment variable is set (to anything but empty, `0` or
/// `false`), as `.ci/run`'s caller does.
pub fn require() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}

/// A server running for a test; stopped, with its children, on drop.
pub struct Peer {
    /// Where it listens (always on 127.0.0.1).
    pub addr: SocketAddrV4,
    /// The server's (for nginx: the master's) process id, which is also
    /// its process group's id.
    pub pid: u32,
    /// What it is, for messages: "mosquitto", "nginx", …
    pub name: &'static str,
    child: Child,
    dir: TempDir,
}

impl Peer {
    /// Eclipse Mosquitto (MQTT 3.1.1/5), anonymous, no persistence, no
    /// connection limit.
    pub fn mosquitto() -> Option<Peer> {
        let program = installed("mosquitto", "mosquitto")?;
        Some(start_on_picked_port("mosquitto", |dir, port| {
            let conf = dir.join("mosquitto.conf");
            write(
                &conf,
                &format!(
                    "listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     persistence false\n\
                     max_connections -1\n\
                     log_dest stderr\n\
                     log_type error\n\
                     log_type warning\n\
                     connection_messages false\n"
                ),
            );
            let mut command = Command::new(&program);
            command.arg("-c").arg(&conf);
            command
        }))
    }

    /// nginx answering every request with `200 ok\n`, keep-alive for as
    /// long as a test holds its sessions, a master and one worker.
    pub fn nginx() -> Option<Peer> {
        let program = installed("nginx", "nginx-light")?;
        Some(start_on_picked_port("nginx", |dir, port| {
            let d = dir.display();
            let conf = dir.join("nginx.conf");
            write(
                &conf,
                &format!(
                    "daemon off;\n\
                     master_process on;\n\
                     worker_processes 1;\n\
                     worker_rlimit_nofile 20000;\n\
                     pid {d}/nginx.pid;\n\
                     error_log {d}/error.log;\n\
                     events {{ worker_connections 20000; }}\n\
                     http {{\n\
                     \x20   access_log off;\n\
                     \x20   client_body_temp_path {d}/client_body;\n\
                     \x20   proxy_temp_path {d}/proxy;\n\
                     \x20   fastcgi_temp_path {d}/fastcgi;\n\
                     \x20   uwsgi_temp_path {d}/uwsgi;\n\
                     \x20   scgi_temp_path {d}/scgi;\n\
                     \x20   keepalive_requests 1000000;\n\
                     \x20   keepalive_timeout 600s;\n\
                     \x20   server {{\n\
                     \x20       listen 127.0.0.1:{port};\n\
                     \x20       location / {{ return 200 \"ok\\n\"; }}\n\
                     \x20   }}\n\
                     }}\n"
                ),
            );
            let mut command = Command::new(&program);
            // -e: the error log before the configuration is read (the
            // compiled-in default is under /var/log).
            command
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"));
            command
        }))
    }

    /// memcached, one thread, 20 000 connections, no UDP.
    pub fn memcached() -> Option<Peer> {
        let program = installed("memcached", "memcached")?;
        Some(start_on_picked_port("memcached", |_, port| {
            let mut command = Command::new(&program);
            // -u root: memcached refuses to run as root without -u; it is
            // ignored when the tests do not run as root.
            command.args([
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-c",
                "20000",
                "-t",
                "1",
                "-u",
                "root",
            ]);
            command.arg("-p").arg(port.to_string());
            command
        }))
    }

    /// redis-server without persistence, up to 19 000 clients.
    pub fn redis() -> Option<Peer> {
        let program = installed("redis-server", "redis-server")?;
        Some(start_on_picked_port("redis", |dir, port| {
            let mut command = Command::new(&program);
            command
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--maxclients", "19000"])
                .args(["--daemonize", "no", "--dir"])
                .arg(dir);
            command
        }))
    }

    /// A python `websockets` echo server: every message is sent back,
    /// pings get pongs.
    pub fn websocket() -> Option<Peer> {
        const PYTHON: &str = "/usr/bin/python3";
        let has_websockets = Command::new(PYTHON)
            .args(["-c", "import websockets"])
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !has_websockets {
            missing(
                "/usr/bin/python3 with the websockets module",
                "python3-websockets",
            );
            return None;
        }
        let dir = temp_dir("websocket");
        let script = dir.path().join("websocket_echo.py");
        write(&script, WEBSOCKET_ECHO_PY);
        let mut command = Command::new(PYTHON);
        command
            .arg(&script)
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME");
        Some(start_announcing("websocket", dir, command, |line| {
            line.strip_prefix("listening on ")?.trim().parse().ok()
        }))
    }

    /// c10m-tokio-peer (loadgen/bench/tokio-peer) with `--protocol
    /// protocol` (`resp` or `line`). Part of the workspace, so never
    /// missing: see [`tokio_peer_bin`] for where the binary comes from.
    pub fn tokio(protocol: &str) -> Option<Peer> {
        let dir = temp_dir("tokio-peer");
        let mut command = Command::new(tokio_peer_bin());
        command.args(["--listen", "127.0.0.1:0", "--protocol", protocol]);
        Some(start_announcing("tokio-peer", dir, command, |line| {
            let rest = line.strip_prefix("c10m-tokio-peer listening on ")?;
            rest.split_whitespace().next()?.parse().ok()
        }))
    }

    /// The server's temporary directory (configuration, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The path of `program` if installed; otherwise `None` after telling the
/// developer what to install, or a panic under CI ([`require`]).
pub fn installed(program: &str, package: &str) -> Option<PathBuf> {
    // mosquitto and nginx are in /usr/sbin, which a user's PATH may lack.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        missing(program, package);
    }
    found
}

fn missing(what: &str, package: &str) {
    let advice = format!("install {package} (apt-get install {package})");
    if require() {
        panic!("{what} not found and CI is set: {advice}");
    }
    eprintln!("skipping: {what} not found; {advice}");
}

/// Starts a server on a port picked for it: `command(dir, port)` writes its
/// configuration into `dir` and returns the command line. See the module
/// doc for readiness and retries.
fn start_on_picked_port(name: &'static str, command: impl Fn(&Path, u16) -> Command) -> Peer {
    let dir = temp_dir(name);
    let mut failures = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut child = spawn(name, dir.path(), command(dir.path(), port), Stdio::null());
        match wait_ready(&mut child, addr, Instant::now() + READY_TIMEOUT) {
            Ok(()) => {
                return Peer {
                    addr,
                    pid: child.id(),
                    name,
                    child,
                    dir,
                }
            }
            Err(why) => {
                stop(&mut child);
                failures.push_str(&format!(
                    "attempt {attempt} on port {port}: {why}; stderr:\n{}\n",
                    read_log(dir.path())
                ));
            }
        }
    }
    panic!("{name} did not start in {START_ATTEMPTS} attempts\n{failures}");
}

/// Starts a server that picks its own port and prints its address on
/// stdout: the first line `parse` accepts. Its stdout is drained for as
/// long as it runs.
fn start_announcing(
    name: &'static str,
    dir: TempDir,
    command: Command,
    parse: fn(&str) -> Option<SocketAddrV4>,
) -> Peer {
    let mut child = spawn(name, dir.path(), command, Stdio::piped());
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (addr_tx, addr_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(addr) = parse(&line) {
                let _ = addr_tx.send(addr);
            }
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let ready = addr_rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| "no address on stdout".to_string())
        .and_then(|addr| wait_ready(&mut child, addr, deadline).map(|()| addr));
    match ready {
        Ok(addr) => Peer {
            addr,
            pid: child.id(),
            name,
            child,
            dir,
        },
        Err(why) => {
            stop(&mut child);
            panic!(
                "{name} did not start: {why}; stderr:\n{}",
                read_log(dir.path())
            );
        }
    }
}

/// Runs `command` in a process group of its own, stdin closed, stderr to
/// `dir/stderr.log` (truncated).
fn spawn(name: &str, dir: &Path, mut command: Command, stdout: Stdio) -> Child {
    raise_nofile_limit();
    let stderr = File::create(dir.join("stderr.log")).expect("create stderr.log");
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| panic!("start {name} ({command:?}): {error}"))
}

/// Polls until a TCP connect to `addr` succeeds; `Err` when the server
/// exits first or `deadline` passes.
fn wait_ready(child: &mut Child, addr: SocketAddrV4, deadline: Instant) -> Result<(), String> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(format!("exited before it was ready ({status})"));
        }
        if TcpStream::connect_timeout(&SocketAddr::V4(addr), READY_POLL).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no connection accepted on {addr} within {READY_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// Stops `child` and everything in its process group; see the module doc.
fn stop(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = killpg(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    // WNOWAIT: see that it exited but leave it unreaped, so its process
    // group id stays reserved until the group has been SIGKILLed below.
    let exited = || {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        !matches!(waitid(Id::Pid(pid), flags), Ok(WaitStatus::StillAlive))
    };
    while !exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// A port on 127.0.0.1 that was free when this returned.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("c10m-peer-{name}-"))
        .tempdir()
        .expect("create a temporary directory")
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

fn read_log(dir: &Path) -> String {
    let mut log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    // nginx writes its own log once the configuration is read.
    if let Ok(error_log) = std::fs::read_to_string(dir.join("error.log")) {
        log.push_str(&error_log);
    }
    log
}

/// Servers inherit the test process's descriptor limits: its soft limit
/// raised to the hard one, as c10m-server and the loadgen raise theirs,
/// lets mosquitto and the others hold as many sessions as the host allows.
fn raise_nofile_limit() {
    static RAISED: Once = Once::new();
    RAISED.call_once(|| {
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            if soft < hard {
                let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
            }
        }
    });
}

/// The c10m-tokio-peer binary: `C10M_TOKIO_PEER_BIN` if set, else the one
/// of the test's own profile (scripts/test runs `cargo build --workspace
/// --bins` first), else built once into a target directory of its own,
/// as tests/run.rs does for c10m-server.
pub fn tokio_peer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        crate::common::workspace_bin(
            "c10m-tokio-peer",
            "c10m-tokio-peer",
            "C10M_TOKIO_PEER_BIN",
            "tokio-peer",
        )
    })
    .clone()
}
