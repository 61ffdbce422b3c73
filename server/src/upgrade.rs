//! The process side of a zero-downtime upgrade (the protocol and the
//! worker streams are in [`crate::handoff`]): the old process's main
//! thread, which starts the new binary and decides, and the new process's,
//! which takes the listeners and waits for the commit.

use crate::handoff::{self, Control, Port, Report};
use crate::stats::Lineage;
use crate::sys::RunningWorker;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the old process waits for a new binary to say hello.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long either side waits for every worker's stream to end.
pub const STREAMS_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished hand-off moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moved {
    pub sessions: u64,
    pub partial: u64,
    pub blocked: u64,
    pub listeners: usize,
    pub elapsed: Duration,
    /// Old side: from the workers' stop to the commit. New side: from the
    /// old workers' stop to every session armed here: the time no process
    /// read the sessions (what a client waits, at most, for a reply).
    pub pause: Duration,
    /// The other process.
    pub pid: u32,
    /// New side: the old process's counters and CPU, to go on from.
    pub lineage: Option<Lineage>,
    /// Old side: from the commit to the new process's word that it serves
    /// every session (or why that word did not come).
    pub serving: Option<std::result::Result<Duration, String>>,
}

impl Moved {
    fn add(&mut self, report: &Report) {
        if let Report::Done {
            sessions,
            partial,
            blocked,
        } = report
        {
            self.sessions += sessions;
            self.partial += partial;
            self.blocked += blocked;
        }
    }

    /// `N sessions (P partial frames, B blocked writes) and L listeners`.
    pub fn what(&self) -> String {
        format!(
            "{} sessions ({} with a partial frame, {} with unwritten replies) and {} listeners",
            self.sessions, self.partial, self.blocked, self.listeners
        )
    }
}

/// A request that reached a running server.
#[derive(Debug)]
pub enum Request {
    /// Start a new binary and hand everything to it; `reply`: the command
    /// line that asked, told the outcome.
    Spawn {
        binary: Option<PathBuf>,
        reply: Option<OwnedFd>,
    },
    /// A new process (started by someone else: the supervisor) says hello.
    Takeover { conn: OwnedFd, pid: u32 },
}

/// A running server's end: its control socket and SIGUSR2.
#[derive(Debug)]
pub struct Upgrades {
    control: OwnedFd,
    sigusr2: Arc<AtomicBool>,
}

impl Upgrades {
    /// Listens on [`handoff::control_name`] of this process and takes
    /// SIGUSR2.
    pub fn listen() -> Result<Upgrades> {
        let name = handoff::control_name(std::process::id());
        let control = handoff::listen(&name)
            .with_context(|| format!("listening on the unix socket @{name} for upgrades"))?;
        let sigusr2 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR2, sigusr2.clone())
            .context("installing the SIGUSR2 handler")?;
        Ok(Upgrades { control, sigusr2 })
    }

    /// A request, if one is waiting (never blocks).
    pub fn poll(&self) -> Option<Request> {
        if self.sigusr2.swap(false, Ordering::Relaxed) {
            return Some(Request::Spawn {
                binary: None,
                reply: None,
            });
        }
        let conn = match handoff::accept(self.control.as_fd(), None) {
            Ok(Some(conn)) => conn,
            Ok(None) => return None,
            Err(e) => {
                eprintln!("c10m-server: upgrade socket: {e}");
                return None;
            }
        };
        match handoff::recv_control(conn.as_fd()) {
            Ok((Control::Upgrade { binary }, _)) => Some(Request::Spawn {
                binary,
                reply: Some(conn),
            }),
            Ok((Control::Hello { pid, .. }, _)) => Some(Request::Takeover { conn, pid }),
            Ok((other, _)) => {
                eprintln!("c10m-server: upgrade socket: unexpected {other:?}");
                None
            }
            Err(e) => {
                eprintln!("c10m-server: upgrade socket: {e}");
                None
            }
        }
    }

    /// Waits for the hello of the process `child` started, up to
    /// [`START_TIMEOUT`]; fails at once if the child exits first.
    pub fn wait_hello(&self, child: &mut Child) -> Result<OwnedFd> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("watching the new process")? {
                bail!(
                    "the new process exited before taking over ({status}); see its message above"
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the new process did not say hello within {START_TIMEOUT:?}; killed it");
            }
            let conn = handoff::accept(self.control.as_fd(), Some(Duration::from_millis(50)))
                .context("upgrade socket")?;
            let Some(conn) = conn else { continue };
            match handoff::recv_control(conn.as_fd()) {
                Ok((Control::Hello { pid, .. }, _)) if pid == child.id() => return Ok(conn),
                Ok((Control::Upgrade { .. }, _)) => {
                    let _ = handoff::send_control(
                        conn.as_fd(),
                        &Control::Done {
                            ok: false,
                            message: "an upgrade is already under way".into(),
                        },
                        &[],
                    );
                }
                Ok(_) | Err(_) => {} // not the process we started
            }
        }
    }
}

/// How to start the new binary: the path and arguments this process was
/// started with, read at start-up (a later rename over the path is what an
/// upgrade picks up).
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Relaunch {
    pub fn from_env() -> Result<Relaunch> {
        let exe = std::env::current_exe().context("locating the c10m-server binary")?;
        // Without a previous --takeover (and its value).
        let mut args = Vec::new();
        let mut it = std::env::args_os().skip(1);
        while let Some(a) = it.next() {
            if a == "--takeover" {
                it.next();
            } else if !a.to_string_lossy().starts_with("--takeover=") {
                args.push(a);
            }
        }
        Ok(Relaunch { exe, args })
    }

    /// Starts `binary` (default: this one's path) with this process's
    /// arguments and `--takeover <this pid>`.
    pub fn spawn(&self, binary: Option<&PathBuf>) -> Result<Child> {
        let exe = binary.unwrap_or(&self.exe);
        Command::new(exe)
            .args(&self.args)
            .arg("--takeover")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))
    }
}

/// Old process, main thread: gives the new process on `conn` the
/// listeners and, through the workers, every session; commits when every
/// worker's stream is acknowledged. On any failure every worker resumes
/// and the new process is told to stop.
pub fn hand_off(
    conn: &OwnedFd,
    new_pid: u32,
    workers: &[RunningWorker],
    ports: &[Arc<Port>],
    listeners: &[BorrowedFd<'_>],
    bound: SocketAddr,
    lineage: &dyn Fn() -> Option<Lineage>,
) -> Result<Moved> {
    let started = Instant::now();
    let raw: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let offer = Control::Offer {
        pid: std::process::id(),
        workers: workers.len(),
        listen: bound.to_string(),
    };
    handoff::send_control(conn.as_fd(), &offer, &raw).context("offering the listeners")?;
    let takeover =
        match handoff::recv_control(conn.as_fd()).context("waiting for the new workers")? {
            (Control::Ready { takeover }, _) => takeover,
            (Control::Abort { why }, _) => bail!("the new process gave up: {why}"),
            (other, _) => bail!("the new process said {other:?}"),
        };
    let paused = Instant::now();
    for (w, port) in workers.iter().zip(ports) {
        port.request(takeover.clone());
        let _ = (w.wake)();
    }
    let mut moved = Moved {
        listeners: listeners.len(),
        pid: new_pid,
        ..Moved::default()
    };
    let deadline = started + STREAMS_TIMEOUT;
    let mut failures = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        match port.wait_report(deadline.saturating_duration_since(Instant::now())) {
            Some(r @ Report::Done { .. }) => moved.add(&r),
            Some(Report::Failed(why)) => failures.push(why),
            None => failures.push(format!(
                "worker {i} did not finish within {STREAMS_TIMEOUT:?}"
            )),
        }
    }
    if failures.is_empty() {
        // Every worker has stopped and published its last counters.
        let commit = Control::Commit { lineage: lineage() };
        match handoff::send_control(conn.as_fd(), &commit, &[]) {
            Ok(()) => {
                for port in ports {
                    port.decide(true);
                }
                moved.elapsed = started.elapsed();
                moved.pause = paused.elapsed();
                // Past the commit the sessions are the new process's,
                // whatever it says; this one leaves once it serves them.
                let committed = Instant::now();
                moved.serving =
                    Some(wait_serving(conn.as_fd(), SERVING_TIMEOUT).map(|()| committed.elapsed()));
                return Ok(moved);
            }
            Err(e) => failures.push(format!("committing: {e}")),
        }
    }
    for port in ports {
        port.decide(false);
    }
    let why = failures.join("; ");
    let _ = handoff::send_control(conn.as_fd(), &Control::Abort { why: why.clone() }, &[]);
    Err(anyhow!(why))
}

/// New process: what the old one offered.
#[derive(Debug)]
pub struct Takeover {
    conn: OwnedFd,
    pub old_pid: u32,
    pub workers: usize,
    pub listeners: Vec<TcpListener>,
    pub bound: SocketAddr,
    /// Where this process's workers wait for the old ones.
    pub listener: Arc<OwnedFd>,
    name: String,
    started: Instant,
}

impl Takeover {
    /// Says hello to process `old_pid` and takes its listeners.
    pub fn connect(old_pid: u32) -> Result<Takeover> {
        let started = Instant::now();
        let name = handoff::control_name(old_pid);
        let conn = handoff::connect(&name).with_context(|| {
            format!(
                "--takeover {old_pid}: no c10m-server with that pid takes upgrades here (@{name})"
            )
        })?;
        let hello = Control::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        handoff::send_control(conn.as_fd(), &hello, &[])?;
        let (msg, fds) = handoff::recv_control(conn.as_fd()).context("waiting for the offer")?;
        let Control::Offer {
            workers, listen, ..
        } = msg
        else {
            bail!("--takeover {old_pid}: expected an offer, got {msg:?}");
        };
        if fds.len() != workers || workers == 0 {
            bail!(
                "--takeover {old_pid}: offered {workers} workers with {} listeners",
                fds.len()
            );
        }
        let listeners: Vec<TcpListener> = fds.into_iter().map(TcpListener::from).collect();
        let bound = listeners[0]
            .local_addr()
            .with_context(|| format!("reading the address of the listener for {listen}"))?;
        let name = handoff::takeover_name(std::process::id());
        let listener = Arc::new(handoff::listen(&name)?);
        Ok(Takeover {
            conn,
            old_pid,
            workers,
            listeners,
            bound,
            listener,
            name,
            started,
        })
    }

    /// Tells the old process to stop refusing: says why this process stops.
    pub fn abort(&self, why: &str) {
        let _ = handoff::send_control(
            self.conn.as_fd(),
            &Control::Abort {
                why: why.to_string(),
            },
            &[],
        );
    }

    /// The workers are waiting: tells the old process, waits for every
    /// worker's stream and for the commit. On success the workers serve.
    pub fn finish(&self, ports: &[Arc<Port>]) -> Result<Moved> {
        let ready = Control::Ready {
            takeover: self.name.clone(),
        };
        handoff::send_control(self.conn.as_fd(), &ready, &[])?;
        // The old workers stop when they hear of this.
        let paused = Instant::now();
        let mut moved = Moved {
            listeners: self.workers,
            pid: self.old_pid,
            ..Moved::default()
        };
        let deadline = Instant::now() + STREAMS_TIMEOUT;
        // The old process's word may come before every worker's report: a
        // commit (all its workers have their acknowledgements), or an
        // abort (one of its workers failed: stop now, not at a timeout).
        let mut word = None;
        for (i, port) in ports.iter().enumerate() {
            let report = loop {
                if let Some(r) = port.wait_report(Duration::from_millis(20)) {
                    break r;
                }
                if word.is_none() && readable(self.conn.as_fd()) {
                    word = Some(handoff::recv_control(self.conn.as_fd()));
                }
                match &word {
                    Some(Ok((Control::Commit { .. }, _))) | None => {}
                    Some(Ok((Control::Abort { why }, _))) => {
                        bail!("the old process called the hand-off off: {why}")
                    }
                    Some(Ok((other, _))) => bail!("expected the commit, got {other:?}"),
                    Some(Err(e)) => bail!("the old process is gone: {e}"),
                }
                if Instant::now() > deadline {
                    let why = format!("new worker {i} got nothing within {STREAMS_TIMEOUT:?}");
                    self.abort(&why);
                    bail!("{why}");
                }
            };
            match report {
                r @ Report::Done { .. } => moved.add(&r),
                Report::Failed(why) => {
                    self.abort(&why);
                    bail!("{why}");
                }
            }
        }
        let word = match word {
            Some(word) => word,
            None => handoff::recv_control(self.conn.as_fd()),
        };
        match word.context("waiting for the commit")? {
            (Control::Commit { lineage }, _) => moved.lineage = lineage,
            (Control::Abort { why }, _) => bail!("the old process called the hand-off off: {why}"),
            (other, _) => bail!("expected the commit, got {other:?}"),
        }
        for port in ports {
            port.decide(true);
        }
        for port in ports {
            port.wait_armed(STREAMS_TIMEOUT);
        }
        moved.elapsed = self.started.elapsed();
        moved.pause = paused.elapsed();
        // The old process waits for this before it exits.
        let _ = handoff::send_control(self.conn.as_fd(), &Control::Serving, &[]);
        Ok(moved)
    }
}

/// How long an old process waits, past the commit, for the new one to say
/// it serves before it leaves anyway.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// Old process, past the commit: waits up to `timeout` for
/// [`Control::Serving`].
fn wait_serving(conn: BorrowedFd<'_>, timeout: Duration) -> std::result::Result<(), String> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [nix::poll::PollFd::new(conn, nix::poll::PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => return Err(format!("no word within {timeout:?}")),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    match handoff::recv_control(conn) {
        Ok((Control::Serving, _)) => Ok(()),
        Ok((other, _)) => Err(format!("it said {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A message (or the end of the stream) is waiting on `conn`.
fn readable(conn: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(conn, nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// `c10m-server upgrade --pid P`: asks P to upgrade and waits for the
/// outcome. Ok(message) when the new process serves everything.
pub fn request(pid: u32, binary: Option<PathBuf>, timeout: Duration) -> Result<String> {
    let name = handoff::control_name(pid);
    let conn = handoff::connect(&name).map_err(|e| {
        anyhow!(
            "no c10m-server with pid {pid} takes upgrades here ({e} on @{name}): is it running, \
             in this network namespace?"
        )
    })?;
    handoff::set_timeout(conn.as_fd(), timeout)?;
    handoff::send_control(conn.as_fd(), &Control::Upgrade { binary }, &[])?;
    match handoff::recv_control(conn.as_fd())
        .with_context(|| format!("waiting for pid {pid} to upgrade"))?
    {
        (Control::Done { ok: true, message }, _) => Ok(message),
        (Control::Done { ok: false, message }, _) => Err(anyhow!(message)),
        (other, _) => Err(anyhow!("unexpected answer {other:?}")),
    }
}

/// Tells the command line that asked (if one did) how it went.
pub fn answer(reply: Option<&OwnedFd>, outcome: &Result<String>) {
    let Some(conn) = reply else { return };
    let msg = match outcome {
        Ok(message) => Control::Done {
            ok: true,
            message: message.clone(),
        },
        Err(e) => Control::Done {
            ok: false,
            message: format!("{e:#}"),
        },
    };
    let _ = handoff::send_control(conn.as_fd(), &msg, &[]);
}
