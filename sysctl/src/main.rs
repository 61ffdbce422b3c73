//! c10m-sysctl: check, diff, apply and roll back kernel tuning profiles,
//! explain keys, and plan how many sessions a host holds.
//!
//! Exit status: 0 success; 1 `check` found a mismatch or `diff` a
//! difference; 2 any error (bad profile, failed write, bad arguments). Errors
//! are printed with their context chain; the user never sees a panic.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use c10m_sysctl::apply::{self, Privilege};
use c10m_sysctl::compare;
use c10m_sysctl::explain;
use c10m_sysctl::facts::HostFacts;
use c10m_sysctl::limits::{self, LimitsRequest};
use c10m_sysctl::plan::{self, PlanRequest, Role};
use c10m_sysctl::procfs::{ProcRoot, SysctlStore, LIVE_ROOT};
use c10m_sysctl::profile::{self, Profile};
use c10m_sysctl::rollback;
use c10m_sysctl::state;

#[derive(Debug, Parser)]
#[command(
    name = "c10m-sysctl",
    version,
    about = "Kernel tuning profiles for millions of idle TCP sessions"
)]
struct Cli {
    /// Directory standing in for /proc/sys (tests, dry runs on copies).
    #[arg(long, global = true, value_name = "DIR", default_value = LIVE_ROOT)]
    proc_root: PathBuf,
    /// State file for apply/rollback [default: /var/lib/c10m/sysctl-backup.json
    /// for /proc/sys, <proc-root>.backup.json for a stand-in root].
    #[arg(long, global = true, value_name = "FILE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the running kernel with a profile; exit 1 on any mismatch.
    Check {
        /// Profile file, or a shipped profile's name.
        profile: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare two profiles, or a profile with the running kernel (B omitted);
    /// exit 1 when they differ.
    Diff {
        a: String,
        b: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a profile's values, saving the old ones for rollback (root only
    /// on the real /proc/sys).
    Apply {
        profile: String,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore the values saved by apply; does nothing when none are saved.
    Rollback,
    /// What a key does, its value in each shipped profile and why.
    Explain {
        #[arg(required_unless_present = "list")]
        key: Option<String>,
        /// List every known key.
        #[arg(long, conflicts_with = "key")]
        list: bool,
        #[arg(long)]
        json: bool,
    },
    /// How many sessions fit on this host, which limit binds first, what to change.
    Plan {
        #[arg(long)]
        sessions: u64,
        #[arg(long, value_enum, default_value = "both")]
        role: Role,
        /// Kernel memory per socket (measured: ~3.7 KB of slab + 128 B epoll item).
        #[arg(long, default_value_t = plan::DEFAULT_PER_SOCKET_BYTES)]
        per_socket_bytes: u64,
        /// User-space memory per session per end.
        #[arg(long, default_value_t = plan::DEFAULT_USER_BYTES_PER_END)]
        user_bytes: u64,
        /// Source addresses the loadgen binds [default: 127.0.0.0/8 for role
        /// both, 1 for role loadgen].
        #[arg(long)]
        source_addrs: Option<u64>,
        /// Server ports the loadgen spreads over.
        #[arg(long, default_value_t = 1)]
        target_ports: u64,
        /// The server's (first) port, checked against the ephemeral range.
        #[arg(long, default_value_t = 7000)]
        server_port: u16,
        /// Plan from saved facts (`plan --json` output or its `facts`) instead
        /// of probing this host.
        #[arg(long, value_name = "FILE")]
        facts: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the RLIMIT_NOFILE systemd drop-in and limits.conf lines.
    Limits {
        #[arg(long)]
        sessions: u64,
        /// Processes sharing the sessions.
        #[arg(long, default_value_t = 1)]
        processes: u64,
        /// systemd unit the drop-in is for.
        #[arg(long, default_value = "c10m-server.service")]
        unit: String,
        /// User for the limits.conf lines (`*` = everyone but root).
        #[arg(long, default_value = "*")]
        user: String,
    },
    /// List the shipped profiles.
    Profiles,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "c10m-sysctl: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let store = || open_store(&cli.proc_root);
    let state_path = |store: &ProcRoot| {
        cli.state
            .clone()
            .unwrap_or_else(|| state::default_path(store.dir()))
    };
    match cli.command {
        Command::Check { ref profile, json } => {
            let profile = load(profile)?;
            let store = store()?;
            let report = compare::check(&profile, &store).context("check")?;
            emit(&render(&report, json, compare::CheckReport::render)?)?;
            Ok(status(report.ok))
        }
        Command::Diff { ref a, ref b, json } => {
            let a = load(a)?;
            let report = match b {
                Some(b) => compare::diff_profiles(&a, &load(b)?),
                None => compare::diff_kernel(&a, &store()?).context("diff")?,
            };
            emit(&render(&report, json, compare::DiffReport::render)?)?;
            Ok(status(report.differences.is_empty()))
        }
        Command::Apply {
            ref profile,
            dry_run,
        } => {
            let profile = load(profile)?;
            let store = store()?;
            let path = state_path(&store);
            let report = apply::apply(&profile, &store, &path, Privilege::current(), dry_run)
                .with_context(|| format!("apply {}", profile.name))?;
            let mut text = report.render();
            if !dry_run && !report.changes.is_empty() {
                text.push_str(&format!("undo: {}\n", undo_command(&cli)));
            }
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            let store = store()?;
            let path = state_path(&store);
            let report =
                rollback::rollback(&store, &path, Privilege::current()).context("rollback")?;
            emit(&report.render())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            ref key,
            list,
            json,
        } => {
            if list {
                emit(&explain::list())?;
                return Ok(ExitCode::SUCCESS);
            }
            let key = key.as_deref().unwrap_or_default();
            let profiles = profile::shipped().context("shipped profiles")?;
            let explanation = explain::explain(key, &profiles, &store()?)?;
            emit(&render(&explanation, json, explain::Explanation::render)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            sessions,
            role,
            per_socket_bytes,
            user_bytes,
            source_addrs,
            target_ports,
            server_port,
            ref facts,
            json,
        } => {
            let facts = match facts {
                Some(path) => HostFacts::from_file(path)?,
                None => HostFacts::probe(&store()?).context("reading host facts")?,
            };
            let request = PlanRequest {
                sessions,
                role,
                per_socket_bytes,
                user_bytes_per_end: user_bytes,
                source_addrs,
                target_ports,
                server_port,
            };
            let plan = plan::compute(&request, &facts).context("plan")?;
            emit(&render(&plan, json, plan::Plan::render)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Limits {
            sessions,
            processes,
            ref unit,
            ref user,
        } => {
            let nr_open = store()
                .ok()
                .and_then(|store| store.read("fs.nr_open").ok())
                .and_then(|raw| raw.trim().parse().ok());
            let request = LimitsRequest {
                sessions,
                processes,
                unit: unit.clone(),
                user: user.clone(),
            };
            emit(&limits::render(&request, nr_open))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Profiles => {
            let mut out = String::new();
            for profile in profile::shipped().context("shipped profiles")? {
                out.push_str(&format!(
                    "{:<24} {} keys\n",
                    profile.name.trim_end_matches(".conf"),
                    profile.entries.len()
                ));
            }
            emit(&out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The rollback command matching this invocation's flags.
fn undo_command(cli: &Cli) -> String {
    let mut command = "c10m-sysctl".to_string();
    if cli.proc_root != Path::new(LIVE_ROOT) {
        command.push_str(&format!(" --proc-root {}", cli.proc_root.display()));
    }
    if let Some(state) = &cli.state {
        command.push_str(&format!(" --state {}", state.display()));
    }
    command + " rollback"
}

/// The proc root, which must be a directory.
fn open_store(dir: &Path) -> Result<ProcRoot> {
    if !dir.is_dir() {
        bail!(
            "proc root {} is not a directory (pass --proc-root DIR, or omit it for {LIVE_ROOT})",
            dir.display()
        );
    }
    let resolved = std::fs::canonicalize(dir)
        .with_context(|| format!("resolving proc root {}", dir.display()))?;
    Ok(ProcRoot::new(resolved))
}

fn load(name: &str) -> Result<Profile> {
    Ok(profile::load(name)?)
}

/// Text, or pretty JSON with `json`.
fn render<T: serde::Serialize>(
    value: &T,
    json: bool,
    text: impl Fn(&T) -> String,
) -> Result<String> {
    if json {
        Ok(serde_json::to_string_pretty(value).context("encoding JSON")? + "\n")
    } else {
        Ok(text(value))
    }
}

fn status(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(()),
    }
}
