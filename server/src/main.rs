//! `c10m-server`: holds idle RESP sessions at a few dozen bytes each.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use c10m_server::limits::Descriptors;
use c10m_server::profile::Profiler;
use c10m_server::server::{self, ServerConfig, StatsFormat};
use c10m_server::supervisor::{self, Procs};
use c10m_server::sys::{allowed_cpus, BackendChoice};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Holds up to millions of idle RESP (Redis protocol) sessions and answers
/// their heartbeats: PING [payload], ECHO payload, QUIT.

#[derive(Debug, Parser)]
#[command(name = "c10m-server", version)]
struct Cli {
    /// Address to listen on. The server has no authentication: other
    /// interfaces are bound only when named here. Port 0 picks a free port
    /// (printed in the start-up line).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,

    /// Worker threads, each with its own SO_REUSEPORT listener and poller
    /// [default: one per CPU in --cores]
    #[arg(long)]
    workers: Option<usize>,

    /// CPUs to pin workers to, e.g. `0,2,4` or `0-3` [default: the CPUs this
    /// process may run on]
    #[arg(long, value_parser = parse_cpu_list)]
    cores: Option<CpuList>,

    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,

    /// Which worker's listener the kernel gives a new connection. `hash`:
    /// by a hash of its addresses, an even spread whatever the clients do.
    /// `cpu`: the worker pinned on the CPU that handles the connection's
    /// packets (SO_INCOMING_CPU, honoured by Linux 6.1+; on loopback the
    /// connecting thread's CPU), so that a client thread pinned there and
    /// its worker wake each other without crossing CPUs. Needs pinned
    /// workers; clients that all connect from one CPU then all land on
    /// its worker, whose share of --max-sessions bounds them
    #[arg(long, value_enum, default_value_t = c10m_server::listen::Steer::Hash)]
    steer: c10m_server::listen::Steer,

    /// Scheduling policy of the server's threads. `normal`: the policy it
    /// was started with (SCHED_OTHER unless under chrt): a worker woken by
    /// a packet preempts what runs on its CPU. `batch` (SCHED_BATCH): it
    /// waits for that task to sleep or use up its slice; for a server that
    /// shares its CPUs with other work, such as a load generator on the same
    /// host, which each wake-up would otherwise preempt mid-burst
    #[arg(long, value_enum, default_value_t = c10m_server::listen::Sched::Normal)]
    sched: c10m_server::listen::Sched,

    /// Most sessions held at once; more are accepted and closed at once
    /// (counted as rejected) [default: what RLIMIT_NOFILE allows]
    #[arg(long)]
    max_sessions: Option<u64>,

    /// Close sessions silent for this long (counted as evicted).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Close a session whose partial frame is not complete this long after
    /// its first byte (a slowloris client dribbling bytes), counted as
    /// frame_timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    frame_timeout: Duration,

    /// New sessions per second per worker (token bucket, 1 s of burst);
    /// the excess gets `-ERR BUSY retry-after=<s>` and is closed before any
    /// session state exists (counted as shed). 0: unlimited.
    #[arg(long, default_value_t = 0)]
    accept_rate: u32,

    /// Retry-after told to clients refused because the server is full
    /// (--max-sessions) or overloaded (listen-queue overflows).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    retry_after: Duration,

    /// Listen-queue overload signal: new connections are answered
    /// `-ERR BUSY retry-after=<--retry-after>` (counted as shed) once this
    /// server's listeners have dropped connections (accept queue full, SYN
    /// dropped) in every 250 ms reading for this long, and until 1 s after
    /// the drops stop. A burst that overflows the queue for a moment is
    /// absorbed (its dropped SYNs are retransmitted by TCP and accepted);
    /// only sustained overload is shed. `0s`: shed from the first drop.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    overload_after: Duration,

    /// Loop-lag overload signal: a worker whose periodic tick runs later
    /// than this twice in a row (one late tick, a burst or a stall, is
    /// absorbed) answers new connections `-ERR BUSY retry-after=1` (counted
    /// as shed and shed_lag) until its ticks have run within half of it for
    /// 1 s; held sessions are not touched. `0s`: measure and report only.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    max_lag: Duration,

    /// Largest request frame in bytes; a longer one gets
    /// `-ERR Protocol error` and its session is closed.
    #[arg(long, default_value_t = c10m_server::wire::DEFAULT_MAX_FRAME, value_parser = parse_max_frame)]
    max_frame: usize,

    /// Per-worker cap on bytes held for partial frames and blocked writes,
    /// e.g. `16MiB`; a session that would exceed it is closed (overflow).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    spill_budget: usize,

    /// listen() backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 65535)]
    backlog: i32,

    /// Print a stats line this often (`0s`: never).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stats_interval: Duration,

    /// Write the final stats as JSON to this file on exit.
    #[arg(long)]
    stats_json: Option<PathBuf>,

    /// Serve the stats as Prometheus text on ADDR (`PORT` alone binds
    /// 127.0.0.1); with --procs the supervisor serves the children's sum.
    #[arg(long, value_name = "ADDR", value_parser = c10m_server::metrics::parse_addr)]
    metrics: Option<SocketAddr>,

    /// Profile the CPU until exit: flamegraph SVG to PATH, pprof protobuf
    /// to PATH with extension .pb (with --procs: PATH-child-N.svg per child).
    #[arg(long, value_name = "PATH")]
    profile: Option<PathBuf>,

    /// Run K child processes sharing the port (SO_REUSEPORT), each with its
    /// own workers and share of --max-sessions, restarted if they die;
    /// `auto`: enough for --max-sessions under RLIMIT_NOFILE. For hosts
    /// where one process cannot hold enough descriptors.
    #[arg(long, value_parser = parse_procs)]
    procs: Option<Procs>,

    /// Stats line format: `text` (key=value) or `json` (one JSON object per
    /// line, prefixed `stats-json `).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    stats_format: String,

    /// Event mechanism: `uring` (io_uring: multishot accept and recv over a
    /// provided-buffer ring), `epoll`, or `auto`: uring when the kernel
    /// offers all it needs, else epoll (the start-up line says which, why).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,

    /// Where sessions' descriptors live. `plain`: the process's table, which
    /// RLIMIT_NOFILE caps for the whole process (grown to --max-sessions at
    /// start-up: grown under load, each step stalls a worker). `thread`: a table per
    /// worker thread (either backend). `direct`: io_uring direct
    /// descriptors, a table per worker ring (needs io_uring). With either
    /// of the last two one process holds workers x RLIMIT_NOFILE sessions,
    /// and unless --workers is given the workers grow to the tables
    /// --max-sessions needs. `auto`: plain while --max-sessions fits the
    /// process's table, else direct on io_uring, else thread (the start-up
    /// line says which and why).
    #[arg(long, value_enum, default_value_t = Descriptors::Auto)]
    descriptors: Descriptors,

    /// io_uring: provided buffers per ring (a power of two up to 32768).
    /// For tests and experiments: a tiny ring runs dry (ENOBUFS) at once.
    /// [default: 4096, or fewer when the workers outnumber the CPUs; a
    /// worker's several rings share its 4 MiB, at least 1024 each]
    #[arg(long, hide = true)]
    uring_buffers: Option<u16>,

    /// io_uring: bytes per provided buffer (longer input spans buffers).
    /// [default: 1024; 256 for a worker's several rings]
    #[arg(long, hide = true)]
    uring_buffer_size: Option<u32>,

    /// io_uring: most completions one loop turn takes (the rest wait for
    /// the next turn). For tests that must exercise a capped turn.
    #[arg(long, hide = true, default_value_t = c10m_server::sys::uring::TURN_MAX)]
    uring_turn_max: usize,

    /// io_uring with direct descriptors: at least this many rings per
    /// worker (the rest of the layout as usual). For tests of the
    /// several-rings path without a large --max-sessions.
    #[arg(long, hide = true, default_value_t = 0)]
    uring_rings: usize,

    /// Join a port other server processes already listen on (SO_REUSEPORT)
    /// instead of refusing it as in use (used by --procs children).
    #[arg(long, hide = true)]
    join: bool,

    /// Take over the listeners and every session of the running server
    /// with this pid (a zero-downtime upgrade: `c10m-server upgrade` and
    /// SIGUSR2 start the new binary with it).
    #[arg(long, hide = true, value_name = "PID")]
    takeover: Option<u32>,
}

/// `c10m-server upgrade --pid P`: starts a new c10m-server binary that
/// takes over P's listeners and every established session (its socket,
/// idle deadline, partial frame and unwritten replies), then P exits.
/// No client is disconnected. If the new binary fails before it has taken
/// everything, P serves on and nothing is lost. SIGUSR2 to P does the same
/// without waiting for the outcome.
#[derive(Debug, Parser)]
#[command(name = "c10m-server upgrade")]
struct UpgradeCli {
    /// The running server (or --procs supervisor) to upgrade.
    #[arg(long)]
    pid: u32,

    /// The new binary [default: the path P was started from, which now
    /// names whatever was installed there since].
    #[arg(long)]
    binary: Option<PathBuf>,

    /// How long to wait for the outcome.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

/// Runs `c10m-server upgrade …`.
fn upgrade_main(args: impl Iterator<Item = std::ffi::OsString>) -> ! {
    let cli = UpgradeCli::parse_from(args);
    let binary = cli.binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    if let Some(b) = &binary {
        if !b.is_file() {
            eprintln!(
                "c10m-server upgrade: --binary {}: no such file",
                b.display()
            );
            std::process::exit(2);
        }
    }
    match c10m_server::upgrade::request(cli.pid, binary, cli.timeout) {
        Ok(message) => {
            println!("c10m-server upgrade: pid {}: {message}", cli.pid);
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("c10m-server upgrade: {e:#}");
            std::process::exit(1);
        }
    }
}

fn parse_procs(s: &str) -> Result<Procs, String> {
    if s == "auto" {
        return Ok(Procs::Auto);
    }
    match s.parse::<usize>() {
        Ok(k) if k >= 1 => Ok(Procs::Count(k)),
        _ => Err(format!(
            "'{s}' is not a process count (write e.g. 4, or auto)"
        )),
    }
}

#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 600s, 5m, 250ms)"))
}

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list entry '{part}' (write e.g. 0,2,4 or 0-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(CpuList(cpus))
}

fn parse_max_frame(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if !(16..=1 << 20).contains(&n) {
        return Err(format!("{n} is outside 16..=1048576 bytes"));
    }
    Ok(n)
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("bad size '{s}' (write e.g. 512, 64KiB, 16MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn config(cli: Cli) -> Result<ServerConfig> {
    let allowed = allowed_cpus();
    let cpus = match cli.cores {
        Some(CpuList(list)) => {
            if let Some(c) = list.iter().find(|c| !allowed.contains(c)) {
                bail!(
                    "--cores names CPU {c}, but this process may run only on {}",
                    allowed
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            list
        }
        None => allowed,
    };
    let workers = cli.workers.unwrap_or(cpus.len()).max(1);
    if workers > c10m_server::limits::MAX_WORKERS {
        bail!("--workers {workers} is more than 1024");
    }
    let uring_buffers =
        c10m_server::sys::uring::BufferChoice::new(cli.uring_buffers, cli.uring_buffer_size)
            .map_err(anyhow::Error::msg)?;
    if !(1..=c10m_server::sys::uring::TURN_MAX).contains(&cli.uring_turn_max) {
        bail!(
            "--uring-turn-max {} is not from 1 to {}",
            cli.uring_turn_max,
            c10m_server::sys::uring::TURN_MAX
        );
    }
    if cli.no_pin && cli.steer == c10m_server::listen::Steer::Cpu {
        bail!(
            "--steer cpu hands each CPU's connections to the worker pinned there; \
             with --no-pin no worker is: drop one of the two"
        );
    }
    Ok(ServerConfig {
        listen: cli.listen,
        workers,
        cpus,
        pin: !cli.no_pin,
        steer: cli.steer,
        sched: cli.sched,
        max_sessions: cli.max_sessions,
        idle_timeout: cli.idle_timeout.max(Duration::from_millis(10)),
        frame_timeout: cli.frame_timeout.max(Duration::from_millis(10)),
        accept_rate: cli.accept_rate,
        retry_after: cli.retry_after,
        max_lag: cli.max_lag,
        overload_after: cli.overload_after,
        max_frame: cli.max_frame,
        spill_budget: cli.spill_budget,
        backlog: cli.backlog.max(1),
        stats_interval: cli.stats_interval,
        stats_json: cli.stats_json,
        join: cli.join,
        backend: cli.backend,
        stats_format: if cli.stats_format == "json" {
            StatsFormat::Json
        } else {
            StatsFormat::Text
        },
        uring_buffers,
        uring_rings: cli.uring_rings,
        uring_turn_max: cli.uring_turn_max,
        descriptors: cli.descriptors,
        workers_given: cli.workers.is_some(),
        takeover: cli.takeover,
    })
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "upgrade") {
        upgrade_main(
            std::env::args_os()
                .take(1)
                .chain(std::env::args_os().skip(2)),
        );
    }
    let cli = Cli::parse();
    let taking_over = cli.takeover.is_some();
    let procs = cli.procs.filter(|p| *p != Procs::Count(1));
    let workers = cli.workers;
    let (metrics, profile) = (cli.metrics, cli.profile.clone());
    let mut profiler = None;
    let result = supervisor::bind_to_supervisor()
        .and_then(|()| {
            if let Some(addr) = metrics {
                if taking_over {
                    // The old process holds the port until it exits.
                    c10m_server::metrics::install_when_free(addr, "c10m-server");
                } else {
                    c10m_server::metrics::install(addr, "c10m-server")
                        .with_context(|| format!("--metrics {addr}"))?;
                }
            }
            profiler = profile.as_deref().map(Profiler::start).transpose()?;
            Ok(())
        })
        .and_then(|()| config(cli))
        .and_then(|c| match procs {
            Some(procs) => supervisor::run(c, procs, workers).map(|_| ()),
            None => server::run(c).map(|_| ()),
        })
        .context("server stopped");
    if let Some(p) = profiler {
        match p.finish() {
            Ok((svg, pb)) => eprintln!(
                "c10m-server: profile in {} and {}",
                svg.display(),
                pb.display()
            ),
            Err(e) => eprintln!("c10m-server: profile not written: {e:#}"),
        }
    }
    if let Err(e) = result {
        // One line: the outermost context is noise when the cause says it all.
        let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
        eprintln!("c10m-server: error: {root}");
        std::process::exit(1);
    }
}
