//! `c10m-loadgen`: opens many synthetic RESP sessions and reproduces
//! production heartbeats, open loop; see `c10m-loadgen run --help`.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use c10m_loadgen::cli::RunArgs;
use c10m_loadgen::{commands, report, run};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "c10m-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open sessions, heartbeat them, write results; exit 3 if a threshold fails.
    Run(Box<RunArgs>),
    /// Print the table of a results directory and render its charts (SVG) and
    /// results.md there; optionally merge the server's --stats-json file into
    /// its summary.json (as server.stats).
    Report {
        dir: PathBuf,
        #[arg(long)]
        server_stats: Option<PathBuf>,
    },
    /// CI gate: compare a run with the baseline; exit 1 on any regression.
    Regress {
        run_dir: PathBuf,
        #[arg(long, default_value = "results/baseline.json")]
        baseline: PathBuf,
        /// Rewrite the baseline's figures from this run (tolerances are kept).
        #[arg(long)]
        update_baseline: bool,
    },
    /// Merge the results of several loadgen processes or hosts into OUT:
    /// histograms added exactly, counts summed, timelines aligned by second.
    Merge {
        out: PathBuf,
        #[arg(required = true, num_args = 1..)]
        dirs: Vec<PathBuf>,
    },
    /// Print the histogram of an interval log (every interval added) as
    /// CSV: value_us (the bucket's highest equivalent value), count.
    Hlog { file: PathBuf },
    /// Kubernetes: print the objects of a distributed run.
    K8s {
        #[command(subcommand)]
        command: K8sCommand,
    },
}

#[derive(Debug, Subcommand)]
enum K8sCommand {
    /// Print the Namespace, results claim, server Deployment and headless
    /// Service, the loadgen's Indexed Job (one shard per pod, one start
    /// time) and the merge Job of a run: `c10m-loadgen k8s render --shards
    /// 8 -- --sessions 1000000 --rate 50000 | kubectl apply -f -`.
    Render(Box<c10m_loadgen::k8s::RenderArgs>),
}

fn report_command(dir: &std::path::Path, server_stats: Option<&std::path::Path>) -> Result<i32> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut summary: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    if let Some(stats_path) = server_stats {
        let stats_text = std::fs::read_to_string(stats_path)
            .with_context(|| format!("cannot read {}", stats_path.display()))?;
        let stats: serde_json::Value = serde_json::from_str(&stats_text)
            .with_context(|| format!("invalid {}", stats_path.display()))?;
        if !summary["server"].is_object() {
            summary["server"] = serde_json::json!({});
        }
        summary["server"]["stats"] = stats;
        std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
    }
    print!("{}", report::table(&summary));
    commands::render(dir)?;
    Ok(0)
}

/// Runs `f` under the CPU profiler when `--profile` names a file.
fn profiled(path: Option<&std::path::Path>, f: impl FnOnce() -> Result<i32>) -> Result<i32> {
    let Some(path) = path else { return f() };
    let profiler = c10m_server::profile::Profiler::start(path)?;
    let result = f();
    let (svg, pb) = profiler.finish()?;
    eprintln!(
        "c10m-loadgen: profile in {} and {}",
        svg.display(),
        pb.display()
    );
    result
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => profiled(args.profile.as_deref(), || run::run_command(args)),
        Command::Report { dir, server_stats } => report_command(dir, server_stats.as_deref()),
        Command::Regress {
            run_dir,
            baseline,
            update_baseline,
        } => commands::regress(run_dir, baseline, *update_baseline),
        Command::Merge { out, dirs } => commands::merge(out, dirs),
        Command::Hlog { file } => commands::hlog(file),
        Command::K8s {
            command: K8sCommand::Render(args),
        } => c10m_loadgen::k8s::render(args, std::time::SystemTime::now()).map(|text| {
            print!("{text}");
            0
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("c10m-loadgen: error: {e:#}");
            std::process::exit(1);
        }
    }
}
