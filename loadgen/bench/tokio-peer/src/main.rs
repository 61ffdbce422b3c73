//! c10m-tokio-peer: a deliberately ordinary tokio server, the reference
//! for "what a typical async Rust server costs per session". The
//! multi-threaded runtime of `#[tokio::main]`, one `tokio::spawn`ed task per
//! accepted connection, a buffer per connection (`session`); nothing tuned.
//! The loadgen's resp and line adapters run against it as they run against
//! c10m-server, redis, nginx and the others.
//!
//! Start-up contract (tests and scripts read it): RLIMIT_NOFILE's soft limit
//! is raised to the hard one, the listener bound, and then exactly one line
//! goes to stdout, `c10m-tokio-peer listening on ADDR protocol=P`, with the
//! port the kernel chose for `--listen 127.0.0.1:0`. Everything else goes
//! to stderr. SIGTERM or SIGINT stop it with exit status 0; the sessions
//! still open are dropped (closed) with the runtime.
//!
//! Accept failures (EMFILE when the descriptors run out, ECONNABORTED, …)
//! never stop the server: the first of each second is logged, and every
//! one is followed by a 10 ms pause so a full descriptor table does not
//! turn the accept loop into a spin.

#![forbid(unsafe_code)]

mod line;
mod resp;
mod session;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// What the sessions speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// RESP2: `PING` gets `+PONG`, `PING x` gets `x` as a bulk string.
    Resp,
    /// Every `\n`-terminated line is echoed back (up to 64 KiB a line).
    Line,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Resp => "resp",
            Protocol::Line => "line",
        })
    }
}

/// An ordinary tokio server (a task per connection) for the loadgen to
/// measure against.
#[derive(Debug, Parser)]
#[command(name = "c10m-tokio-peer", version)]
struct Args {
    /// Address to listen on; port 0 lets the kernel pick (printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Protocol the sessions speak.
    #[arg(long, value_enum, default_value_t = Protocol::Resp)]
    protocol: Protocol,
}

/// Listen backlog (the kernel caps it at net.core.somaxconn). Tokio's
/// `TcpListener::bind` listened with 128 here (`ss -ltn`), which a ramp
/// of 256 connects in flight overflowed: SYNs dropped, retried a second
/// later (805 ListenOverflows for 2 000 connects).
const BACKLOG: u32 = 4096;

/// Binds `addr` with SO_REUSEADDR (as `TcpListener::bind` does) and a
/// [`BACKLOG`] long enough for a ramp's burst.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// At most one accept failure is logged per this interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    raise_nofile_limit()?;
    let listener = bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "c10m-tokio-peer listening on {addr} protocol={}",
        args.protocol
    )
    .and_then(|()| stdout.flush())
    .context("write the start-up line")?;
    drop(stdout);

    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut failures = AcceptFailures::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small request/reply exchanges: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(session::serve(stream, args.protocol));
                }
                Err(error) => {
                    failures.record(&error, Instant::now());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    eprintln!("c10m-tokio-peer: stopping on signal");
    Ok(())
}

/// Sets RLIMIT_NOFILE's soft limit to its hard limit: every session is a
/// descriptor.
fn raise_nofile_limit() -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("raise RLIMIT_NOFILE soft limit from {soft} to {hard}"))?;
    }
    Ok(())
}

/// Rate-limits the accept-failure log to one line per
/// [`ACCEPT_LOG_INTERVAL`], counting the ones it did not print.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn record(&mut self, error: &std::io::Error, now: Instant) {
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_LOG_INTERVAL);
        if !due {
            self.unlogged += 1;
            return;
        }
        eprintln!(
            "c10m-tokio-peer: accept failed: {error} ({} more since the last report); \
             pausing {} ms after each",
            self.unlogged,
            ACCEPT_BACKOFF.as_millis()
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
