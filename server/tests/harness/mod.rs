//! Test harness: runs the real `c10m-server` binary as a child process on
//! port 0, reads the bound address from its start-up line, collects its
//! stdout, and stops it with SIGTERM. A server left running by a failed
//! test is killed on drop.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// The test process has one RLIMIT_NOFILE for all tests running in it:
/// the test that holds 15 000 sockets runs alone (write lock); the others
/// share (read lock).
static DESCRIPTORS: RwLock<()> = RwLock::new(());

pub fn light() -> RwLockReadGuard<'static, ()> {
    DESCRIPTORS.read().unwrap_or_else(|e| e.into_inner())
}

pub fn heavy() -> RwLockWriteGuard<'static, ()> {
    DESCRIPTORS.write().unwrap_or_else(|e| e.into_inner())
}

/// The backends every test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Epoll,
    Uring,
    /// io_uring with direct descriptors (`--descriptors direct`).
    UringDirect,
    /// epoll with a descriptor table per worker thread (`--descriptors thread`).
    EpollThread,
    /// io_uring with a descriptor table per worker thread.
    UringThread,
    /// io_uring direct descriptors with three rings per worker (the path
    /// of a worker whose sessions need several tables).
    UringRings,
    /// `--backend auto`: only for the tests of backend selection.
    Auto,
}

impl Backend {
    pub fn args(self) -> Vec<String> {
        // Each names its descriptors: `auto` would pick a per-worker
        // table for the tests that ask for more sessions than a tiny
        // RLIMIT_NOFILE holds.
        let (backend, descriptors) = match self {
            Backend::Epoll => ("epoll", "plain"),
            Backend::Uring => ("uring", "plain"),
            Backend::UringDirect => ("uring", "direct"),
            Backend::EpollThread => ("epoll", "thread"),
            Backend::UringThread => ("uring", "thread"),
            Backend::UringRings => {
                return [
                    "--backend",
                    "uring",
                    "--descriptors",
                    "direct",
                    "--uring-rings",
                    "3",
                ]
                .map(String::from)
                .to_vec()
            }
            Backend::Auto => return vec!["--backend".into(), "auto".into()],
        };
        ["--backend", backend, "--descriptors", descriptors]
            .map(String::from)
            .to_vec()
    }

    /// [`Self::args`], less `--descriptors` when the test names its own.
    pub fn args_unless(self, extra: &[&str]) -> Vec<String> {
        let mut args = self.args();
        if extra.contains(&"--descriptors") {
            if let Some(i) = args.iter().position(|a| a == "--descriptors") {
                args.drain(i..i + 2);
            }
        }
        args
    }

    /// Whether this host can run the backend; says what is skipped if not.
    /// A test is skipped only when the host offers no usable io_uring
    /// (Linux older than 6.1, or io_uring_setup refused: kernel.io_uring_disabled,
    /// a seccomp profile). When it offers one and the backend's probe still
    /// fails, that is a failure; in CI (`CI` set) any missing io_uring is:
    /// CI runs on the same kind of machine as development, where it works.
    pub fn available(self, test: &str) -> bool {
        if !matches!(
            self,
            Backend::Uring | Backend::UringDirect | Backend::UringThread | Backend::UringRings
        ) {
            return true;
        }
        match c10m_server::sys::uring::probe() {
            Ok(_) => true,
            Err(missing) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "io_uring is missing in CI: {missing}"
                );
                if let Ok(()) = c10m_server::sys::uring::kernel_offers_io_uring() {
                    panic!(
                        "{test}: this host offers io_uring (Linux >= 6.1, io_uring_setup \
                         granted), yet the backend's probe refused it: {missing}"
                    );
                }
                eprintln!("SKIPPED {test} on uring: {missing}");
                false
            }
        }
    }
}

/// Connections opened per step by [`Server::connect_paced`].
pub const PACE_CHUNK: usize = 1_000;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

pub struct Stopped {
    pub status: ExitStatus,
    pub stats: Value,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Server {
    pub fn start(backend: Backend, args: &[&str]) -> Server {
        Self::start_with(backend, args, |_| {})
    }

    /// Starts the server; `tweak` may adjust the command (e.g. limits).
    pub fn start_with(backend: Backend, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_c10m-server"));
        cmd.args(["--listen", "127.0.0.1:0", "--stats-interval", "100ms"])
            .arg("--stats-json")
            .arg(dir.path().join("stats.json"))
            .args(backend.args_unless(args))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Loop-lag shedding is off unless the test sets --max-lag: tests run
        // beside builds and each other on 2 shared cores, where a worker
        // thread may wait >100 ms for a CPU and then, rightly, answer the
        // test's next client busy. The lag test stalls the server on purpose.
        if !args.contains(&"--max-lag") {
            cmd.args(["--max-lag", "0s"]);
        }
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn c10m-server");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let err_sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = err_sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "server printed no start-up line; stderr: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        Server {
            child,
            addr,
            pid,
            lines,
            stderr,
            dir,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Opens `n` sessions in chunks of [`PACE_CHUNK`], each chunk only once
    /// the server has accepted the ones before (its 100 ms stats line), so
    /// the accept queue never holds more than a chunk. A test that is not
    /// about overload must not overflow the listen queue (4 096 by default):
    /// on 2 cores shared with other tests the worker can be off the CPU
    /// for a while, and the server rightly answers an overflowing burst
    /// `-ERR BUSY` (the listen-drop signal), which such a test would
    /// misread as lost sessions.
    pub fn connect_paced(&self, n: usize) -> Vec<TcpStream> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let chunk = PACE_CHUNK.min(n - out.len());
            out.extend((0..chunk).map(|_| self.connect()));
            let want = out.len() as u64;
            self.wait_stat("accepted", |v| v >= want, Duration::from_secs(20));
        }
        out
    }

    /// Waits for a stats line whose `key=` value satisfies `pred`; returns it.
    pub fn wait_stat(&self, key: &str, pred: impl Fn(u64) -> bool, timeout: Duration) -> String {
        self.wait_line(
            timeout,
            &format!("stats line with a matching {key}="),
            |l| l.starts_with("stats ") && stat(l, key).is_some_and(&pred),
        )
    }

    /// Waits for the latest output line that satisfies `pred`; panics
    /// naming `what` (and the last line) after `timeout`.
    fn wait_line(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|l| pred(l))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if Instant::now() > deadline {
                let last = self.lines.lock().unwrap().last().cloned();
                panic!("no {what} within {timeout:?}; last: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// The server was upgraded: from now on this handle stops, waits for
    /// and kills the new process `pid` (which writes the same stdout,
    /// stderr and stats file; it is not our child, so it is watched
    /// through /proc).
    pub fn upgraded_to(&mut self, pid: u32) {
        self.pid = pid;
    }

    fn upgraded(&self) -> bool {
        self.pid != self.child.id()
    }

    /// SIGTERM, wait (bounded), and read the stats JSON.
    pub fn stop(mut self) -> Stopped {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.wait(Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50)); // let the readers finish
        let path = self.dir.path().join("stats.json");
        let stats = std::fs::read_to_string(&path)
            .map(|s| serde_json::from_str(&s).expect("stats JSON parses"))
            .unwrap_or(Value::Null);
        let stderr = self.stderr.lock().unwrap().clone();
        // Every test's stop checks the io_uring drain: a request left in
        // flight makes the worker wait out its drain timeout and leak its
        // buffers (direct descriptors once left 63 accepts armed per worker).
        assert!(
            !stderr.contains("still in flight"),
            "a worker stopped with io_uring requests in flight: {stderr}"
        );
        Stopped {
            status,
            stats,
            stdout: self.lines.lock().unwrap().clone(),
            stderr,
        }
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        if self.upgraded() {
            // Gone, or a zombie whose new parent has not reaped it yet.
            while process_alive(self.pid) {
                if Instant::now() > deadline {
                    kill(self.pid, nix::sys::signal::Signal::SIGKILL);
                    panic!("upgraded server did not exit within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            return self.child.wait().unwrap();
        }
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The start-up line (`c10m-server listening on …`).
    pub fn startup_line(&self) -> String {
        self.wait_line(Duration::from_secs(5), "start-up line", |l| {
            l.contains("listening on ")
        })
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// True while `pid` runs (not gone, not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

pub fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.upgraded() && process_alive(self.pid) {
            kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `key=` in a stats line.
pub fn stat(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Sends `request` and reads exactly `want.len()` bytes of reply.
pub fn roundtrip(s: &mut TcpStream, request: &[u8], want: &[u8]) {
    s.write_all(request).unwrap();
    let got = read_exact_len(s, want.len());
    assert_eq!(
        got.escape_ascii().to_string(),
        want.escape_ascii().to_string()
    );
}

pub fn read_exact_len(s: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).expect("reply");
    buf
}

/// Reads until EOF (or error); returns what arrived.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// One test per backend for each named function `fn name(backend: Backend)`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name(super::Backend::Epoll) } )*
        }
        mod uring {
            $( #[test] fn $name() {
                if super::Backend::Uring.available(stringify!($name)) {
                    super::$name(super::Backend::Uring)
                }
            } )*
        }
        mod uring_direct {
            $( #[test] fn $name() {
                if super::Backend::UringDirect.available(stringify!($name)) {
                    super::$name(super::Backend::UringDirect)
                }
            } )*
        }
        mod uring_rings {
            $( #[test] fn $name() {
                if super::Backend::UringRings.available(stringify!($name)) {
                    super::$name(super::Backend::UringRings)
                }
            } )*
        }
        mod epoll_thread {
            $( #[test] fn $name() { super::$name(super::Backend::EpollThread) } )*
        }
    };
}
pub(crate) use backend_tests;

/// Sets RLIMIT_NOFILE (soft and hard) of the command's process.
pub fn limit_nofile(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setrlimit, which is async-signal-safe; it touches no locks or
    // allocations of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                .map_err(std::io::Error::from)
        });
    }
}

/// Opens `n` sessions (paced), sends `PING i` on session i and checks
/// each echo; returns the sessions, still open.
pub fn open_and_echo(server: &Server, n: usize) -> Vec<TcpStream> {
    let mut clients = server.connect_paced(n);
    for (i, c) in clients.iter_mut().enumerate() {
        write!(c, "PING {i}\r\n").unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("${}\r\n{i}\r\n", i.to_string().len());
        assert_eq!(
            read_exact_len(c, want.len()),
            want.as_bytes(),
            "session {i}"
        );
    }
    clients
}

/// Pids whose parent is `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let after = &s[s.rfind(')').unwrap_or(0) + 2..];
                after.split_whitespace().nth(1) == Some(&parent.to_string())
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}
