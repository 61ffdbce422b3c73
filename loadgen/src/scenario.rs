//! Scenarios: the TOML file (see loadgen/scenarios/*.toml) and the `run`
//! flags ([`crate::cli`]), resolved into one `RunConfig`.
//!
//! Flags override the file. The resolved config is what the run uses, what
//! children receive (as JSON) and what `summary.json` records under
//! `config`; times in it are milliseconds.
//!
//! The run's timeline: the ramp (nominally `sessions / rate`, rounded up to
//! a whole second), then the phases in order; heartbeats stop at the end of
//! the last phase; `grace` then bounds the wait for the last replies. A run
//! without phases has one `hold` phase of `--hold`.
#![forbid(unsafe_code)]

use crate::cli::{parse_duration, parse_fraction, RunArgs};
use crate::model::{Churn, ClientClass, Drain, FirstBeat, HeartbeatModel, Lifetime, Outage, Storm};
use crate::proto::{MqttVersion, ProtocolConfig, ProtocolKind};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest run the u32-millisecond schedule allows, with margin.
const MAX_RUN_MS: u64 = 30 * 24 * 3_600_000;

/// A duration in a TOML file: a humantime string ("30s").
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct Dur(Duration);

impl TryFrom<String> for Dur {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).map(Dur)
    }
}

/// A fraction in a TOML file: "10%" or 0.1.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Frac {
    Number(f64),
    Text(String),
}

impl Frac {
    fn value(&self) -> Result<f64> {
        match self {
            Frac::Number(v) => parse_fraction(&v.to_string()),
            Frac::Text(s) => parse_fraction(s),
        }
        .map_err(anyhow::Error::msg)
    }
}

fn ms(d: Dur) -> u64 {
    d.0.as_millis() as u64
}

/// A duration flag, else the file's value, in ms.
fn flag_or_file(flag: Option<Duration>, file: Option<Dur>) -> Option<u64> {
    flag.map(|d| d.as_millis() as u64).or(file.map(ms))
}

/// The scenario file's schema (see loadgen/scenarios/README.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: Option<String>,
    targets: Option<Vec<SocketAddr>>,
    sessions: Option<u64>,
    rate: Option<f64>,
    max_inflight: Option<u32>,
    connect_timeout: Option<Dur>,
    hold: Option<Dur>,
    heartbeat: Option<Dur>,
    jitter: Option<Frac>,
    tick: Option<Dur>,
    first_heartbeat: Option<String>,
    source: Option<String>,
    threads: Option<usize>,
    procs: Option<toml::Value>,
    io: Option<String>,
    uring_recv: Option<String>,
    protocol: Option<String>,
    path: Option<String>,
    host: Option<String>,
    mqtt_version: Option<String>,
    keepalive: Option<u16>,
    seed: Option<u64>,
    grace: Option<Dur>,
    #[serde(default, rename = "class")]
    classes: Vec<ClassFile>,
    churn: Option<ChurnFile>,
    #[serde(default, rename = "phase")]
    phases: Vec<PhaseFile>,
    #[serde(default)]
    thresholds: ThresholdsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    name: String,
    weight: f64,
    heartbeat: Dur,
    jitter: Option<Frac>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChurnFile {
    lifetime: String,
    mean: Dur,
    sigma: Option<f64>,
    reconnect: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseFile {
    kind: String,
    duration: Dur,
    fraction: Option<Frac>,
    window: Option<Dur>,
    down: Option<Dur>,
    backoff: Option<Dur>,
    backoff_max: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdsFile {
    expect_sessions: Option<u64>,
    expect_hold: Option<Dur>,
    max_p99: Option<Dur>,
    max_errors: Option<u64>,
    max_unanswered: Option<u64>,
}

/// One client class, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassConfig {
    pub name: String,
    pub weight: f64,
    pub heartbeat_ms: u64,
    pub jitter: f64,
}

/// Churn, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnConfig {
    /// "exponential" or "lognormal".
    pub lifetime: String,
    pub mean_ms: u64,
    pub sigma: f64,
    pub reconnect_ms: u64,
}

/// One phase, resolved. `kind`: hold, storm, outage, drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseConfig {
    pub kind: String,
    pub duration_ms: u64,
    pub fraction: f64,
    pub window_ms: u64,
    pub down_ms: u64,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

/// CI thresholds; each `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub expect_sessions: Option<u64>,
    /// Every ramp session open at least this long before the hold ends.
    #[serde(default)]
    pub expect_hold_ms: Option<u64>,
    pub max_p99_us: Option<u64>,
    pub max_errors: Option<u64>,
    /// Heartbeats unanswered (sent, never replied to).
    #[serde(default)]
    pub max_unanswered: Option<u64>,
}

/// How drivers talk to their sockets (`--io`, scenario key `io`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    /// epoll while one driver per CPU (one descriptor table each) holds
    /// the sessions, else io_uring where the kernel offers what it needs
    /// (direct descriptors: a driver per CPU holds any number), else epoll
    /// with as many drivers as the sessions need tables.
    #[default]
    Auto,
    /// A mio (epoll) loop per driver, a descriptor table per driver.
    Epoll,
    /// io_uring direct descriptors in as many rings per driver as its
    /// sessions need tables; fail at start-up if the kernel lacks them.
    Uring,
}

impl IoMode {
    pub fn parse(text: &str) -> Result<IoMode> {
        match text {
            "auto" => Ok(IoMode::Auto),
            "epoll" => Ok(IoMode::Epoll),
            "uring" | "io_uring" => Ok(IoMode::Uring),
            other => bail!("io {other:?}: expected auto, epoll or uring"),
        }
    }
}

/// How an io_uring driver reads its replies (`--uring-recv`, scenario key
/// `uring_recv`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UringRecv {
    /// Nothing waits on a socket for its replies: each turn receives, once
    /// and without waiting, on the sessions that sent in the turn before
    /// (a tick earlier), so a reply's arrival wakes no one; a reply not
    /// there yet gets a POLLIN poll; a POLLRDHUP poll on every connection
    /// sees the server's FIN or RST. Round trips still end at the kernel's
    /// receive time.
    #[default]
    Deferred,
    /// A multishot recv armed for each connection's life: every reply
    /// wakes it (the server's CPU pays that wake-up on loopback).
    Armed,
}

impl UringRecv {
    pub fn parse(text: &str) -> Result<UringRecv> {
        match text {
            "deferred" => Ok(UringRecv::Deferred),
            "armed" => Ok(UringRecv::Armed),
            other => bail!("uring_recv {other:?}: expected deferred or armed"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UringRecv::Deferred => "deferred",
            UringRecv::Armed => "armed",
        }
    }

    /// What configs written before the option ran.
    fn before_the_option() -> UringRecv {
        UringRecv::Armed
    }
}

/// Everything a run needs, resolved; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub scenario: Option<PathBuf>,
    pub description: Option<String>,
    pub targets: Vec<SocketAddr>,
    pub source: Option<String>,
    pub allow_remote: bool,
    pub sessions: u64,
    pub rate: f64,
    pub max_inflight: u32,
    pub connect_timeout_ms: u64,
    /// Per process; 0 = one per CPU shared among the processes. Drivers
    /// are pinned round-robin to the CPUs this process may use (restrict
    /// them with `taskset`).
    pub threads: usize,
    /// 0 = auto.
    pub procs: usize,
    /// The drivers' socket interface.
    #[serde(default)]
    pub io: IoMode,
    /// How io_uring drivers read replies.
    #[serde(default = "UringRecv::before_the_option")]
    pub uring_recv: UringRecv,
    /// What the sessions speak.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// This process's shard of a run spread over several; `sessions`,
    /// `rate`, `max_inflight`, `source` and `thresholds.expect_sessions`
    /// above are already its share.
    #[serde(default)]
    pub shard: Option<ShardConfig>,
    /// The ramp starts at this wall-clock time (ms since the Unix epoch).
    #[serde(default)]
    pub start_at_unix_ms: Option<u64>,
    pub seed: u64,
    pub grace_ms: u64,
    pub classes: Vec<ClassConfig>,
    /// "spread" or "interval" (see [`FirstBeat`]).
    #[serde(default = "default_first_heartbeat")]
    pub first_heartbeat: String,
    /// Heartbeats fall due on multiples of this (`--tick`).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    pub churn: Option<ChurnConfig>,
    pub phases: Vec<PhaseConfig>,
    pub thresholds: Thresholds,
    pub out: Option<PathBuf>,
    pub server_pid: Option<u32>,
    pub progress: String,
}

fn default_first_heartbeat() -> String {
    "spread".into()
}

fn default_tick_ms() -> u64 {
    1
}

/// Longest `--tick`: a driver may sleep that long with replies waiting.
const MAX_TICK_MS: u64 = 100;

/// `--tick`, else the file's `tick`, in whole milliseconds.
fn tick_ms(flag: Option<Duration>, file: Option<Dur>) -> Result<u64> {
    let Some(tick) = flag.or(file.map(|d| d.0)) else {
        return Ok(default_tick_ms());
    };
    if tick.subsec_nanos() % 1_000_000 != 0 || tick.is_zero() {
        bail!("tick {tick:?}: expected a whole number of milliseconds, e.g. 4ms");
    }
    Ok(tick.as_millis() as u64)
}

/// Shard `index` of `count` of a run of `total_sessions`: its sessions
/// are the global ids `index`, `index + count`, ... (see `--shard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    pub index: u64,
    pub count: u64,
    pub total_sessions: u64,
}

impl ShardConfig {
    /// Sessions of shard `index`: the ids below `total` that are `index`
    /// modulo `count`.
    pub fn sessions(&self) -> u64 {
        self.total_sessions
            .saturating_sub(self.index)
            .div_ceil(self.count)
    }

    /// The global id of this shard's `local`-th session.
    pub fn global(&self, local: u64) -> u64 {
        local * self.count + self.index
    }
}

/// `--shard`, else JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's pod
/// index) with C10M_SHARDS (the pod count).
fn shard_of(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(u64, u64)>> {
    if let Some(text) = flag {
        return crate::cli::parse_shard(text)
            .map(Some)
            .map_err(anyhow::Error::msg);
    }
    match (env("JOB_COMPLETION_INDEX"), env("C10M_SHARDS")) {
        (None, None) => Ok(None),
        (Some(k), Some(n)) => crate::cli::parse_shard(&format!("{k}/{n}"))
            .map(Some)
            .map_err(|e| anyhow::anyhow!("JOB_COMPLETION_INDEX={k} C10M_SHARDS={n}: {e}")),
        (Some(_), None) => bail!(
            "JOB_COMPLETION_INDEX is set but C10M_SHARDS is not: set C10M_SHARDS to the Job's \
             completions (the pod count), or pass --shard K/N"
        ),
        (None, Some(_)) => bail!(
            "C10M_SHARDS is set but JOB_COMPLETION_INDEX is not (an Indexed Job sets it): pass \
             --shard K/N"
        ),
    }
}

/// Phase boundaries of a run, in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub ramp_end_ms: u32,
    /// (kind, start, end) of each phase.
    pub phases: Vec<(String, u32, u32)>,
    /// When the hold ends: the drain's start, else `end_ms`.
    pub hold_end_ms: u32,
    /// When heartbeats stop.
    pub end_ms: u32,
    /// Hard stop: `end_ms + grace`.
    pub deadline_ms: u32,
}

impl RunConfig {
    /// Resolves flags over the scenario file (if any) over the defaults.
    pub fn resolve(args: &RunArgs) -> Result<RunConfig> {
        let file = match &args.scenario {
            Some(path) => load_file(path)?,
            None => ScenarioFile::default(),
        };
        let jitter = match args.jitter {
            Some(j) => j,
            None => file
                .jitter
                .as_ref()
                .map(|f| f.value())
                .transpose()?
                .unwrap_or(0.1),
        };
        let heartbeat_ms = flag_or_file(args.heartbeat, file.heartbeat).unwrap_or(30_000);
        let classes = if file.classes.is_empty() {
            vec![ClassConfig {
                name: "default".into(),
                weight: 1.0,
                heartbeat_ms,
                jitter,
            }]
        } else {
            let mut out = Vec::new();
            for c in &file.classes {
                out.push(ClassConfig {
                    name: c.name.clone(),
                    weight: c.weight,
                    heartbeat_ms: ms(c.heartbeat),
                    jitter: c
                        .jitter
                        .as_ref()
                        .map(|f| f.value())
                        .transpose()?
                        .unwrap_or(jitter),
                });
            }
            out
        };
        let churn = file.churn.as_ref().map(|c| ChurnConfig {
            lifetime: c.lifetime.clone(),
            mean_ms: ms(c.mean),
            sigma: c.sigma.unwrap_or(1.0),
            reconnect_ms: c.reconnect.map_or(1_000, ms),
        });
        let hold = args
            .hold
            .map(|d| d.as_millis() as u64)
            .or(file.hold.map(ms));
        let mut phases = Vec::new();
        for p in &file.phases {
            phases.push(PhaseConfig {
                kind: p.kind.clone(),
                duration_ms: ms(p.duration),
                fraction: p
                    .fraction
                    .as_ref()
                    .map(|f| f.value())
                    .transpose()?
                    .unwrap_or(1.0),
                window_ms: p.window.map_or(ms(p.duration), ms),
                down_ms: p.down.map_or(10_000, ms),
                backoff_ms: p.backoff.map_or(500, ms),
                backoff_max_ms: p.backoff_max.map_or(30_000, ms),
            });
        }
        if phases.is_empty() {
            phases.push(PhaseConfig {
                kind: "hold".into(),
                duration_ms: hold.unwrap_or(60_000),
                fraction: 0.0,
                window_ms: 0,
                down_ms: 0,
                backoff_ms: 0,
                backoff_max_ms: 0,
            });
        } else if args.hold.is_some() {
            bail!("--hold conflicts with the scenario's [[phase]] list; edit the phases instead");
        }
        let procs = match args
            .procs
            .clone()
            .or_else(|| file.procs.as_ref().map(toml_text))
        {
            None => 0,
            Some(p) if p == "auto" => 0,
            Some(p) => match p.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => bail!("--procs {p:?}: expected auto or a number >= 1"),
            },
        };
        let targets = if args.targets.is_empty() {
            file.targets.clone().unwrap_or_default()
        } else {
            let mut all = Vec::new();
            for t in &args.targets {
                all.extend(t.resolve().map_err(anyhow::Error::msg)?);
            }
            all
        };
        let config = RunConfig {
            scenario: args.scenario.clone(),
            description: file.description.clone(),
            targets,
            source: args.source.clone().or(file.source.clone()),
            allow_remote: args.allow_remote,
            sessions: args.sessions.or(file.sessions).unwrap_or(1_000),
            rate: args.rate.or(file.rate).unwrap_or(1_000.0),
            max_inflight: args.max_inflight.or(file.max_inflight).unwrap_or(1_000),
            connect_timeout_ms: flag_or_file(args.connect_timeout, file.connect_timeout)
                .unwrap_or(5_000),
            threads: args.threads.or(file.threads).unwrap_or(0),
            procs,
            io: match args.io.clone().or(file.io.clone()) {
                Some(text) => IoMode::parse(&text)?,
                None => IoMode::Auto,
            },
            uring_recv: match args.uring_recv.clone().or(file.uring_recv.clone()) {
                Some(text) => UringRecv::parse(&text)?,
                None => UringRecv::default(),
            },
            protocol: ProtocolConfig::default(),
            shard: None,
            start_at_unix_ms: None,
            seed: args.seed.or(file.seed).unwrap_or(1),
            grace_ms: flag_or_file(args.grace, file.grace).unwrap_or(5_000),
            classes,
            first_heartbeat: file
                .first_heartbeat
                .clone()
                .unwrap_or_else(default_first_heartbeat),
            tick_ms: tick_ms(args.tick, file.tick)?,
            churn,
            phases,
            thresholds: Thresholds {
                expect_sessions: args.expect_sessions.or(file.thresholds.expect_sessions),
                expect_hold_ms: flag_or_file(args.expect_hold, file.thresholds.expect_hold),
                max_p99_us: args
                    .max_p99
                    .map(|d| d.as_micros() as u64)
                    .or(file.thresholds.max_p99.map(|d| d.0.as_micros() as u64)),
                max_errors: args.max_errors.or(file.thresholds.max_errors),
                max_unanswered: args.max_unanswered.or(file.thresholds.max_unanswered),
            },
            out: args.out.clone(),
            server_pid: args.server_pid,
            progress: args.progress.clone(),
        };
        let mut config = config;
        let kind = match args.protocol.as_ref().or(file.protocol.as_ref()) {
            Some(text) => ProtocolKind::parse(text)?,
            None => ProtocolKind::Resp,
        };
        let mqtt = kind == ProtocolKind::Mqtt;
        let web = matches!(kind, ProtocolKind::Http | ProtocolKind::Websocket);
        let unused = [
            ("path", args.path.is_some() || file.path.is_some(), web),
            (
                "host-header (host)",
                args.host_header.is_some() || file.host.is_some(),
                web,
            ),
            (
                "mqtt-version",
                args.mqtt_version.is_some() || file.mqtt_version.is_some(),
                mqtt,
            ),
            (
                "keepalive",
                args.keepalive.is_some() || file.keepalive.is_some(),
                mqtt,
            ),
        ];
        for (name, given, applies) in unused {
            if given && !applies {
                bail!(
                    "--{name} does not apply to protocol {}: {} only",
                    kind.name(),
                    if name.starts_with('p') || name.starts_with('h') {
                        "http and websocket"
                    } else {
                        "mqtt"
                    }
                );
            }
        }
        config.protocol = ProtocolConfig {
            kind,
            path: args
                .path
                .clone()
                .or(file.path.clone())
                .unwrap_or_else(|| "/".into()),
            host: args.host_header.clone().or(file.host.clone()),
            mqtt_version: match args.mqtt_version.as_ref().or(file.mqtt_version.as_ref()) {
                Some(text) => MqttVersion::parse(text)?,
                None => MqttVersion::V311,
            },
            keepalive_s: match args.keepalive.or(file.keepalive) {
                Some(s) => s,
                None if mqtt => ProtocolConfig::default_keepalive_s(config.max_heartbeat_gap_ms()),
                None => 0,
            },
        };
        config.start_at_unix_ms = args
            .start_at
            .as_deref()
            .map(crate::cli::parse_start_at)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        if let Some((index, count)) = shard_of(args.shard.as_deref(), |k| std::env::var(k).ok())? {
            config.take_share(index, count)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Makes this the config of shard `index` of `count`: its share of the
    /// sessions (the ids `index` modulo `count`), of the rate and of the
    /// connects in flight, and of `expect_sessions` (in proportion).
    fn take_share(&mut self, index: u64, count: u64) -> Result<()> {
        let shard = ShardConfig {
            index,
            count,
            total_sessions: self.sessions,
        };
        let mine = shard.sessions();
        if mine == 0 {
            bail!(
                "--shard {index}/{count}: {} sessions leave none to shard {index}; use fewer \
                 shards than sessions",
                self.sessions
            );
        }
        if let Some(expect) = self.thresholds.expect_sessions {
            let share = u128::from(expect) * u128::from(mine) / u128::from(self.sessions.max(1));
            self.thresholds.expect_sessions = Some(share as u64);
        }
        self.sessions = mine;
        self.rate /= count as f64;
        self.max_inflight = u64::from(self.max_inflight).div_ceil(count).max(1) as u32;
        self.shard = Some(shard);
        Ok(())
    }

    /// The longest gap between two heartbeats of a session: its class's
    /// interval stretched by the jitter.
    pub fn max_heartbeat_gap_ms(&self) -> u64 {
        self.classes
            .iter()
            .map(|c| (c.heartbeat_ms as f64 * (1.0 + c.jitter)).ceil() as u64)
            .max()
            .unwrap_or(0)
    }

    fn validate(&self) -> Result<()> {
        self.protocol.validate(self.max_heartbeat_gap_ms())?;
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a positive number of connections per second");
        }
        if self.max_inflight == 0 {
            bail!("--max-inflight must be at least 1");
        }
        if self.connect_timeout_ms == 0 {
            bail!("--connect-timeout must be positive");
        }
        if !matches!(self.first_heartbeat.as_str(), "spread" | "interval") {
            bail!(
                "first_heartbeat {:?}: expected \"spread\" (a uniform phase in the first \
                 interval) or \"interval\" (one interval after connecting)",
                self.first_heartbeat
            );
        }
        if !(1..=MAX_TICK_MS).contains(&self.tick_ms) {
            bail!("tick {} ms is outside 1 .. {MAX_TICK_MS} ms", self.tick_ms);
        }
        for c in &self.classes {
            if c.heartbeat_ms < 10 || c.heartbeat_ms > MAX_RUN_MS {
                bail!(
                    "class {:?}: heartbeat {} ms is outside 10 ms .. 30 days",
                    c.name,
                    c.heartbeat_ms
                );
            }
            if !(0.0..0.95).contains(&c.jitter) {
                bail!("class {:?}: jitter {} must be below 95%", c.name, c.jitter);
            }
            if !(c.weight > 0.0 && c.weight.is_finite()) {
                bail!("class {:?}: weight must be positive", c.name);
            }
            let shortest = (c.heartbeat_ms as f64 * (1.0 - c.jitter) + 1e-6).floor() as u64;
            if self.tick_ms > 1 && shortest < self.tick_ms {
                bail!(
                    "tick {} ms is longer than class {:?}'s shortest heartbeat interval ({} ms \
                     less {:.0}% jitter = {shortest} ms): use a tick of at most {shortest} ms",
                    self.tick_ms,
                    c.name,
                    c.heartbeat_ms,
                    c.jitter * 100.0
                );
            }
        }
        if let Some(c) = &self.churn {
            if !matches!(c.lifetime.as_str(), "exponential" | "lognormal") {
                bail!(
                    "churn lifetime {:?}: expected \"exponential\" or \"lognormal\"",
                    c.lifetime
                );
            }
            if c.mean_ms == 0 || !(c.sigma > 0.0 && c.sigma < 5.0) {
                bail!("churn: mean must be positive and sigma in (0, 5)");
            }
        }
        for (i, p) in self.phases.iter().enumerate() {
            match p.kind.as_str() {
                "hold" | "storm" | "outage" => {}
                "drain" if i + 1 == self.phases.len() => {}
                "drain" => bail!("phase {}: drain must be the last phase", i + 1),
                other => bail!(
                    "phase {}: unknown kind {other:?} (hold, storm, outage, drain)",
                    i + 1
                ),
            }
            if p.kind == "storm" && p.window_ms > p.duration_ms {
                bail!("phase {}: storm window is longer than the phase", i + 1);
            }
        }
        let tl = self.timeline();
        if u64::from(tl.deadline_ms) >= MAX_RUN_MS {
            bail!("the run would last over 30 days");
        }
        Ok(())
    }

    /// Phase boundaries; see the module docs.
    pub fn timeline(&self) -> Timeline {
        let ramp_ms = (self.sessions as f64 * 1_000.0 / self.rate).ceil() as u64;
        let ramp_end = ramp_ms.div_ceil(1_000).max(1) * 1_000;
        let mut t = ramp_end;
        let mut phases = Vec::new();
        let mut hold_end = None;
        for p in &self.phases {
            let start = t;
            t += p.duration_ms;
            if p.kind == "drain" {
                hold_end = Some(start);
            }
            phases.push((p.kind.clone(), clamp(start), clamp(t)));
        }
        Timeline {
            ramp_end_ms: clamp(ramp_end),
            phases,
            hold_end_ms: clamp(hold_end.unwrap_or(t)),
            end_ms: clamp(t),
            deadline_ms: clamp(t + self.grace_ms),
        }
    }

    /// The phase running at `ms`.
    pub fn phase_at(&self, ms: u32) -> &str {
        let tl = self.timeline();
        if ms < tl.ramp_end_ms {
            return "ramp";
        }
        tl.phases
            .iter()
            .zip(&self.phases)
            .find(|((_, s, e), _)| (*s..*e).contains(&ms))
            .map_or("grace", |(_, p)| p.kind.as_str())
    }

    /// The heartbeat model of this run.
    pub fn model(&self) -> HeartbeatModel {
        let tl = self.timeline();
        let mut m = HeartbeatModel::fixed(self.seed, 1, 0.0, tl.end_ms);
        m.first = match self.first_heartbeat.as_str() {
            "interval" => FirstBeat::Interval,
            _ => FirstBeat::Spread, // validate() allows only the two
        };
        m.tick_ms = self.tick_ms as u32;
        m.classes = self
            .classes
            .iter()
            .map(|c| ClientClass {
                name: c.name.clone(),
                weight: c.weight,
                interval_ms: c.heartbeat_ms as u32,
                jitter: c.jitter,
            })
            .collect();
        m.churn = self.churn.as_ref().map(|c| Churn {
            lifetime: if c.lifetime == "lognormal" {
                Lifetime::LogNormal {
                    mean_ms: c.mean_ms as f64,
                    sigma: c.sigma,
                }
            } else {
                Lifetime::Exponential {
                    mean_ms: c.mean_ms as f64,
                }
            },
            reconnect_ms: c.reconnect_ms as u32,
        });
        for (p, (_, start, _)) in self.phases.iter().zip(&tl.phases) {
            match p.kind.as_str() {
                "storm" => m.storms.push(Storm {
                    at_ms: *start,
                    window_ms: p.window_ms as u32,
                    fraction: p.fraction,
                }),
                "outage" => m.outages.push(Outage {
                    at_ms: *start,
                    down_ms: p.down_ms as u32,
                    fraction: p.fraction,
                    backoff_base_ms: p.backoff_ms as u32,
                    backoff_max_ms: p.backoff_max_ms as u32,
                }),
                "drain" => {
                    m.drain = Some(Drain {
                        at_ms: *start,
                        window_ms: p.duration_ms as u32,
                    })
                }
                _ => {}
            }
        }
        m
    }

    /// Largest fraction of sessions an outage drops (for TIME_WAIT headroom).
    pub fn outage_fraction(&self) -> f64 {
        self.phases
            .iter()
            .filter(|p| p.kind == "outage")
            .map(|p| p.fraction)
            .fold(0.0, f64::max)
    }
}

fn clamp(ms: u64) -> u32 {
    ms.min(u64::from(u32::MAX - 1)) as u32
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn load_file(path: &Path) -> Result<ScenarioFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scenario {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid scenario {}", path.display()))
}

#[cfg(test)]
mod tests;
