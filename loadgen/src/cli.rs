//! The `c10m-loadgen run` flags and their value parsers. Every flag has a
//! scenario-file twin ([`crate::scenario`]); flags win.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `c10m-loadgen run` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Scenario file (TOML, see loadgen/scenarios/); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Server address; repeat for several ports or addresses. A host name
    /// is resolved once, at start-up, to all its IPv4 addresses (a
    /// Kubernetes headless Service: every server pod).
    #[arg(long = "target", value_name = "HOST:PORT", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// Sessions to open and hold [default: 1000].
    #[arg(long)]
    pub sessions: Option<u64>,
    /// New connections per second during the ramp [default: 1000].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Most connects in flight at once [default: 1000].
    #[arg(long)]
    pub max_inflight: Option<u32>,
    /// A connect not established by then counts as a timeout [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// How long to hold the sessions after the ramp (a run without phases) [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub hold: Option<Duration>,
    /// Heartbeat interval of the default class [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Heartbeat jitter, e.g. `10%` or `0.1` [default: 10%].
    #[arg(long, value_parser = parse_fraction)]
    pub jitter: Option<f64>,
    /// Heartbeats fall due on multiples of this, in whole milliseconds
    /// (e.g. `4ms`), so a driver wakes at most once per tick to send
    /// them; send lag and round trips count from the on-tick time
    /// [default: 1ms].
    #[arg(long, value_parser = parse_duration)]
    pub tick: Option<Duration>,
    /// Source addresses (CIDR) [default for loopback targets: 127.1.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub source: Option<String>,
    /// Driver threads per process, each with a descriptor table of its own
    /// (RLIMIT_NOFILE bounds each) [default: one per CPU shared among the
    /// processes, or as many as the sessions need tables].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Processes to split the driver threads over: `auto` (one: every driver
    /// thread has its own descriptor table) or a number [default: auto].
    #[arg(long)]
    pub procs: Option<String>,
    /// Socket interface of the drivers: `epoll`, `uring` (io_uring direct
    /// descriptors: one driver per CPU holds any number of sessions) or
    /// `auto` (epoll while a driver per CPU holds the sessions, else
    /// io_uring where the kernel has it) [default: auto].
    #[arg(long, value_name = "auto|epoll|uring")]
    pub io: Option<String>,
    /// How io_uring drivers read replies: `deferred` (a recv per tick on
    /// the sessions that sent, without waiting, so a reply wakes no one;
    /// a POLLRDHUP poll per connection sees the server's FIN) or `armed`
    /// (a multishot recv per connection, woken by every reply)
    /// [default: deferred].
    #[arg(long, value_name = "deferred|armed")]
    pub uring_recv: Option<String>,
    /// What the sessions speak: resp (PING, echoed), line (newline echo),
    /// websocket (RFC 6455 ping/pong), mqtt (CONNECT, PINGREQ/PINGRESP),
    /// memcache (`version`) or http (keep-alive GET) [default: resp].
    #[arg(long, value_name = "PROTOCOL")]
    pub protocol: Option<String>,
    /// Request path of http and websocket [default: /].
    #[arg(long)]
    pub path: Option<String>,
    /// Host header of http and websocket [default: the target address].
    #[arg(long)]
    pub host_header: Option<String>,
    /// MQTT protocol version: 3.1.1 or 5 [default: 3.1.1].
    #[arg(long, value_name = "3.1.1|5")]
    pub mqtt_version: Option<String>,
    /// MQTT keepalive in seconds, 0 for none [default: the longest
    /// heartbeat gap plus a second].
    #[arg(long, value_name = "SECONDS")]
    pub keepalive: Option<u16>,
    /// This process's shard of a run spread over several (pods, hosts):
    /// `K/N`, shard K (from 0) of N. Sessions, rate and in-flight connects
    /// are the whole run's and each shard takes its share: the session ids
    /// K, K + N, K + 2N, ... (schedules are functions of the seed and the
    /// id, so the shards together are the one-host run), and block K of N
    /// of --source. Without it, a Kubernetes Indexed Job's
    /// JOB_COMPLETION_INDEX with C10M_SHARDS (the Job's completions) set
    /// it.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Start the ramp at this wall-clock time (RFC 3339, e.g.
    /// 2026-12-06T10:00:00.250Z, or Unix seconds), so that shards on
    /// several hosts ramp together; the summary records how late it
    /// started (`start.late_ms`).
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<String>,
    /// Seed of every random choice (schedules are pure functions of it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// After the last phase, wait this long at most for outstanding replies [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Write summary.json, timeline.csv and *.hlog here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit 3 unless at least this many sessions are held at the end of the hold.
    #[arg(long)]
    pub expect_sessions: Option<u64>,
    /// Exit 3 unless every ramp session was open at least this long before
    /// the hold ended (a ramp slower than planned shortens the full hold).
    #[arg(long, value_parser = parse_duration)]
    pub expect_hold: Option<Duration>,
    /// Exit 3 if the RTT p99 exceeds this.
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,
    /// Exit 3 if more errors than this occur.
    #[arg(long)]
    pub max_errors: Option<u64>,
    /// Exit 3 if more heartbeats than this go unanswered (outstanding when
    /// their connection closed or failed, or when the run ended).
    #[arg(long)]
    pub max_unanswered: Option<u64>,
    /// Server process to measure (RSS and CPU, MEASURING.md) beside the loadgen.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Allow targets outside 127.0.0.0/8 (never on shared test hosts).
    #[arg(long)]
    pub allow_remote: bool,
    /// Progress display: auto (bar on a terminal, lines otherwise), bar, plain, off.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Serve live counters and the RTT histogram as Prometheus text on ADDR
    /// (`PORT` alone binds 127.0.0.1), updated every second.
    #[arg(long, value_name = "ADDR", value_parser = c10m_server::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Profile this process's CPU: flamegraph SVG to PATH, pprof protobuf to
    /// PATH with extension .pb (fanned-out children are not profiled: use
    /// --procs 1 to profile the drivers).
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,
    /// Internal: run as a child of a fanned-out run (config on stdin).
    #[arg(long, hide = true)]
    pub child: bool,
}

/// One `--target` as written: an address, or a host name that
/// [`Target::resolve`] turns into addresses when the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(pub String);

impl Target {
    /// The addresses it names: one for an IP literal, every IPv4 address
    /// of a host name (all its IPv6 ones when it has none), sorted so that
    /// every shard of a run sees them in the same order.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let s = self.0.as_str();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
            .map_err(|e| format!("--target {s}: cannot resolve: {e}"))?
            .collect();
        let mut addrs: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(SocketAddr::is_ipv4)
            .collect();
        if addrs.is_empty() {
            addrs = resolved;
        }
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("--target {s} resolves to no address"));
        }
        Ok(addrs)
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target(addr.to_string())
    }
}

/// `--target`: an address or `HOST:PORT` (resolved later).
pub fn parse_target(s: &str) -> Result<Target, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(Target(s.to_string()));
    }
    let bad = || format!("{s:?}: expected HOST:PORT, e.g. 127.0.0.1:7000 or server.example:7000");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(Target(s.to_string()))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 30s, 5m, 250ms)"))
}

/// `--start-at`: RFC 3339 or Unix seconds (with a fraction), in ms since
/// the Unix epoch.
pub fn parse_start_at(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs.is_finite() && secs > 0.0 {
            return Ok((secs * 1e3).round() as u64);
        }
    }
    humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| format!("--start-at {s:?}: {e} (write 2026-12-06T10:00:00Z or Unix seconds)"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .map_err(|_| format!("--start-at {s:?} is before 1970"))
        })
}

/// `--shard K/N`.
pub fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--shard {s:?}: expected K/N with 0 <= K < N, e.g. 0/4");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n) = (
        k.trim().parse::<u64>().map_err(|_| bad())?,
        n.trim().parse::<u64>().map_err(|_| bad())?,
    );
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a fraction (write 10% or 0.1)"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is outside 0..100%"));
    }
    Ok(v)
}
