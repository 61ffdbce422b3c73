//! A results directory read back into memory ([`RunDir`]): summary.json,
//! timeline.csv (as named columns, so rows written by older or newer
//! loadgens with other columns still read) and the HdrHistogram interval
//! logs, each interval placed on the run's wall clock. `merge` and the
//! plots work on this; [`RunDir::write`] writes it back in the same formats.
#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The interval logs a run writes (see [`crate::results`]).
pub const HLOG_NAMES: [&str; 3] = ["rtt", "connect", "send_lag"];

/// `timeline.csv`: a header and rows of numbers (`phase` kept as text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Timeline {
    pub fn parse(text: &str) -> Result<Timeline> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let columns: Vec<String> = lines
            .next()
            .ok_or_else(|| anyhow!("empty timeline"))?
            .split(',')
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let row: Vec<String> = line.split(',').map(str::to_string).collect();
            if row.len() != columns.len() {
                bail!(
                    "timeline row {} has {} fields, the header {}",
                    i + 2,
                    row.len(),
                    columns.len()
                );
            }
            rows.push(row);
        }
        Ok(Timeline { columns, rows })
    }

    pub fn csv(&self) -> String {
        let mut out = self.columns.join(",") + "\n";
        for row in &self.rows {
            out += &(row.join(",") + "\n");
        }
        out
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// A numeric column as `(t_s, value)` points (absent column: none).
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let (Some(t), Some(c)) = (self.column("t_s"), self.column(name)) else {
            return Vec::new();
        };
        self.rows
            .iter()
            .filter_map(|r| Some((r[t].parse().ok()?, r[c].parse().ok()?)))
            .collect()
    }
}

/// One interval of an interval log: `[start_s, start_s + duration_s)` after
/// the run's start, and its histogram (µs).
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub start_s: f64,
    pub duration_s: f64,
    pub histogram: Histogram<u64>,
}

/// A run directory in memory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub summary: Value,
    pub timeline: Option<Timeline>,
    /// Wall-clock start of the run (the interval logs' StartTime), seconds
    /// since the Unix epoch; 0 when the run has no interval log.
    pub start_unix_s: f64,
    /// Interval logs by name (`rtt`, `connect`, `send_lag`).
    pub hlogs: BTreeMap<String, Vec<Interval>>,
}

impl RunDir {
    pub fn read(dir: &Path) -> Result<RunDir> {
        let summary = crate::commands::read_json(&dir.join("summary.json"))?;
        let timeline = match std::fs::read_to_string(dir.join("timeline.csv")) {
            Ok(text) => Some(
                Timeline::parse(&text)
                    .with_context(|| format!("{}/timeline.csv", dir.display()))?,
            ),
            Err(_) => None,
        };
        let mut run = RunDir {
            summary,
            timeline,
            start_unix_s: 0.0,
            hlogs: BTreeMap::new(),
        };
        for name in HLOG_NAMES {
            let path = dir.join(format!("{name}.hlog"));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let (start, intervals) =
                read_hlog(&bytes).with_context(|| format!("reading {}", path.display()))?;
            if run.start_unix_s == 0.0 {
                run.start_unix_s = start;
            }
            run.hlogs.insert(name.to_string(), intervals);
        }
        Ok(run)
    }

    /// Writes summary.json, timeline.csv and the interval logs into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::commands::write_json(&dir.join("summary.json"), &self.summary)?;
        if let Some(t) = &self.timeline {
            let path = dir.join("timeline.csv");
            std::fs::write(&path, t.csv())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for (name, intervals) in &self.hlogs {
            let path = dir.join(format!("{name}.hlog"));
            let bytes = write_hlog(name, self.start_unix_s, intervals)?;
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Every interval of one log added together (the whole run).
    pub fn total(&self, name: &str) -> Option<Histogram<u64>> {
        let intervals = self.hlogs.get(name)?;
        let mut total = crate::stats::Histos::new().rtt;
        for i in intervals {
            total.add(&i.histogram).ok()?;
        }
        Some(total)
    }
}

/// Reads an interval log: its StartTime (seconds since the epoch) and its
/// intervals, with start times made relative to StartTime.
pub fn read_hlog(bytes: &[u8]) -> Result<(f64, Vec<Interval>)> {
    let mut de = Deserializer::new();
    let (mut start, mut base) = (None, None);
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(bytes) {
        match entry.map_err(|e| anyhow!("bad interval log: {e:?}"))? {
            LogEntry::StartTime(t) => start = Some(t.as_secs_f64()),
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::Interval(i) => {
                let encoded = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    i.encoded_histogram(),
                )
                .map_err(|e| anyhow!("bad base64 histogram: {e}"))?;
                let h: Histogram<u64> = de
                    .deserialize(&mut &encoded[..])
                    .map_err(|e| anyhow!("bad histogram: {e:?}"))?;
                let mut histogram = crate::stats::Histos::new().rtt;
                histogram
                    .add(&h)
                    .map_err(|e| anyhow!("histogram bounds: {e:?}"))?;
                out.push(Interval {
                    start_s: i.start_timestamp().as_secs_f64(),
                    duration_s: i.duration().as_secs_f64(),
                    histogram,
                });
            }
        }
    }
    let start = start.unwrap_or(0.0);
    // Interval times are relative to BaseTime when there is one, else absolute.
    let shift = base.unwrap_or(0.0) - start;
    for i in &mut out {
        i.start_s += shift;
    }
    Ok((start, out))
}

/// Encodes an interval log (StartTime = BaseTime = `start_unix_s`).
pub fn write_hlog(name: &str, start_unix_s: f64, intervals: &[Interval]) -> Result<Vec<u8>> {
    let start = UNIX_EPOCH + Duration::from_secs_f64(start_unix_s.max(0.0));
    let mut buf = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "c10m-loadgen {name}, microseconds, one interval per second"
            ))
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut buf, &mut ser)
            .map_err(|e| anyhow!("{name}.hlog: {e:?}"))?;
        let tag = Tag::new(name).ok_or_else(|| anyhow!("bad tag {name}"))?;
        for i in intervals {
            log.write_histogram(
                &i.histogram,
                Duration::from_secs_f64(i.start_s.max(0.0)),
                Duration::from_secs_f64(i.duration_s.max(0.0)),
                Some(tag),
            )
            .map_err(|e| anyhow!("{name}.hlog: {e:?}"))?;
        }
    }
    Ok(buf)
}

/// Seconds since the epoch of `t`.
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
