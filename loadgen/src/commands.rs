//! The offline subcommands' file handling: `regress` (the CI gate, logic in
//! [`crate::regress`]), `merge` ([`crate::merge`]) and the charts of
//! `report` ([`crate::plot`]). Each returns the process exit status.
#![forbid(unsafe_code)]

use crate::regress::{self, Baseline};
use crate::rundir::RunDir;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid JSON in {}", path.display()))
}

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `c10m-loadgen regress RUN_DIR [--baseline FILE] [--update-baseline]`:
/// 0 when every metric is within its tolerance, 1 on any regression.
pub fn regress(run_dir: &Path, baseline_path: &Path, update: bool) -> Result<i32> {
    let summary = read_json(&run_dir.join("summary.json"))?;
    let previous: Option<Baseline> = if baseline_path.exists() {
        let v = read_json(baseline_path)?;
        Some(
            serde_json::from_value(v)
                .with_context(|| format!("{} is not a baseline", baseline_path.display()))?,
        )
    } else {
        None
    };
    if update {
        let mut source = BTreeMap::new();
        source.insert("run".to_string(), run_dir.display().to_string());
        if let Ok(text) = std::fs::read_to_string(run_dir.join("command.txt")) {
            for (i, line) in text.lines().take(2).enumerate() {
                source.insert(["when", "command"][i].to_string(), line.to_string());
            }
        }
        let next =
            regress::updated(previous.as_ref(), &summary, source).map_err(anyhow::Error::msg)?;
        write_json(baseline_path, &next)?;
        println!(
            "regress: {} rewritten from {}",
            baseline_path.display(),
            run_dir.display()
        );
        print!("{}", regress::table(&regress::judge(&next, &summary)));
        return Ok(0);
    }
    let Some(baseline) = previous else {
        bail!(
            "no baseline at {} (make one with --update-baseline)",
            baseline_path.display()
        );
    };
    let rows = regress::judge(&baseline, &summary);
    print!("{}", regress::table(&rows));
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!(
            "regress: {failed} regression(s) in {} against {}",
            run_dir.display(),
            baseline_path.display()
        );
        return Ok(1);
    }
    println!("regress: no regression");
    Ok(0)
}

/// `c10m-loadgen merge OUT DIR...`.
pub fn merge(out: &Path, dirs: &[PathBuf]) -> Result<i32> {
    let runs = dirs
        .iter()
        .map(|d| RunDir::read(d).with_context(|| format!("reading run {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    let labels: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let merged = crate::merge::merge(&runs, &labels);
    merged.write(out)?;
    print!("{}", crate::report::table(&merged.summary));
    render(out)?;
    println!("  merged {} runs into {}", runs.len(), out.display());
    Ok(0)
}

/// `c10m-loadgen hlog FILE`: the log's intervals added, one CSV row per
/// recorded bucket.
pub fn hlog(file: &Path) -> Result<i32> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (_, intervals) =
        crate::rundir::read_hlog(&bytes).with_context(|| format!("reading {}", file.display()))?;
    let mut total = crate::stats::Histos::new().rtt;
    for i in &intervals {
        total
            .add(&i.histogram)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", file.display()))?;
    }
    let mut out = String::from("value_us,count\n");
    for v in total.iter_recorded() {
        out.push_str(&format!(
            "{},{}\n",
            v.value_iterated_to(),
            v.count_at_value()
        ));
    }
    print!("{out}");
    Ok(0)
}

/// Renders `dir`'s charts and results.md (after `report` printed its table).
pub fn render(dir: &Path) -> Result<Vec<String>> {
    let run = RunDir::read(dir)?;
    let charts = crate::plot::render(&run, dir)?;
    let command = std::fs::read_to_string(dir.join("command.txt")).ok();
    let md = crate::plot::results_md(&run.summary, command.as_deref(), &charts);
    let path = dir.join("results.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(charts)
}
