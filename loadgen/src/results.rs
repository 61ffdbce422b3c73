//! Files of a run's `--out` directory besides summary.json: `timeline.csv`
//! (one row per second) and the HdrHistogram interval logs `rtt.hlog`,
//! `connect.hlog`, `send_lag.hlog` (one interval per second, written by the
//! hdrhistogram crate's interval-log writer with [`ReusedDeflate`]; readable
//! by HistogramLogProcessor and the crate's `IntervalLogIterator`).
//!
//! The crate's writers borrow their output and serializer for their whole
//! life, so [`HlogFiles`] owns those and [`HlogFiles::begin`] lends them to
//! [`HlogWriters`] for the run (the monitor keeps both in its frame). Each
//! second's live interval histograms are written directly: no copies.
//!
//! The writers' buffers grow to the largest interval they have encoded;
//! [`HlogWriters::warm`] encodes the largest possible one into a closed
//! gate before the RSS baseline, so that growth is not counted per session.
#![forbid(unsafe_code)]

use crate::hlog::ReusedDeflate;
use crate::stats::Histos;
use anyhow::{anyhow, Context, Result};
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, IntervalLogWriterBuilder, Tag};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// One second of the run, as a `timeline.csv` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub t_s: u64,
    pub phase: String,
    pub sessions_open: u64,
    pub connects_ok: u64,
    pub connects_per_s: u64,
    pub heartbeats_sent_per_s: u64,
    pub heartbeats_answered_per_s: u64,
    pub rtt_p50_us: u64,
    pub rtt_p99_us: u64,
    pub rtt_max_us: u64,
    pub errors_per_s: u64,
    pub errors_total: u64,
    pub loadgen_rss_bytes: u64,
    /// VmRSS of the `--server-pid` process tree (0 without one).
    pub server_rss_bytes: u64,
}

pub const TIMELINE_HEADER: &str = "t_s,phase,sessions_open,connects_ok,connects_per_s,\
heartbeats_sent_per_s,heartbeats_answered_per_s,rtt_p50_us,rtt_p99_us,rtt_max_us,\
errors_per_s,errors_total,loadgen_rss_bytes,server_rss_bytes";

impl Row {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.t_s,
            self.phase,
            self.sessions_open,
            self.connects_ok,
            self.connects_per_s,
            self.heartbeats_sent_per_s,
            self.heartbeats_answered_per_s,
            self.rtt_p50_us,
            self.rtt_p99_us,
            self.rtt_max_us,
            self.errors_per_s,
            self.errors_total,
            self.loadgen_rss_bytes,
            self.server_rss_bytes
        )
    }
}

/// `timeline.csv`.
pub struct TimelineFile(BufWriter<File>);

impl TimelineFile {
    /// Creates `dir` and the file, with its header.
    pub fn create(dir: &Path) -> Result<TimelineFile> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("timeline.csv");
        let file =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{TIMELINE_HEADER}")?;
        Ok(TimelineFile(out))
    }

    pub fn row(&mut self, row: &Row) -> Result<()> {
        writeln!(self.0, "{}", row.csv())?;
        self.0.flush()?;
        Ok(())
    }
}

const HLOG_NAMES: [&str; 3] = ["rtt", "connect", "send_lag"];

/// A writer that drops everything while its gate is closed.
pub struct Gated {
    inner: BufWriter<File>,
    open: Rc<Cell<bool>>,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.open.get() {
            self.inner.write(buf)
        } else {
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The interval logs' files and serializers; see the module docs.
pub struct HlogFiles {
    paths: Vec<PathBuf>,
    outputs: Vec<Gated>,
    serializers: Vec<ReusedDeflate>,
    gate: Rc<Cell<bool>>,
}

/// The open interval logs of a run.
pub struct HlogWriters<'a> {
    logs: Vec<IntervalLogWriter<'a, 'a, Gated, ReusedDeflate>>,
    gate: Rc<Cell<bool>>,
}

impl HlogFiles {
    pub fn create(dir: &Path) -> Result<HlogFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let gate = Rc::new(Cell::new(true));
        let mut files = HlogFiles {
            paths: Vec::new(),
            outputs: Vec::new(),
            serializers: Vec::new(),
            gate: gate.clone(),
        };
        for name in HLOG_NAMES {
            let path = dir.join(format!("{name}.hlog"));
            let file =
                File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
            files.outputs.push(Gated {
                inner: BufWriter::new(file),
                open: gate.clone(),
            });
            files.serializers.push(ReusedDeflate::default());
            files.paths.push(path);
        }
        Ok(files)
    }

    /// Writes the headers (StartTime and BaseTime = `started`, the run's
    /// epoch in wall-clock time) and lends the files to the writers.
    pub fn begin(&mut self, started: SystemTime) -> Result<HlogWriters<'_>> {
        let mut logs = Vec::new();
        for ((out, ser), name) in self
            .outputs
            .iter_mut()
            .zip(self.serializers.iter_mut())
            .zip(HLOG_NAMES)
        {
            let log = IntervalLogWriterBuilder::new()
                .add_comment(&format!(
                    "c10m-loadgen {name}, microseconds, one interval per second"
                ))
                .with_start_time(started)
                .with_base_time(started)
                .with_max_value_divisor(1.0)
                .begin_log_with(out, ser)
                .map_err(|e| anyhow!("{name}.hlog: {e:?}"))?;
            logs.push(log);
        }
        Ok(HlogWriters {
            logs,
            gate: self.gate.clone(),
        })
    }

    /// Flushes the files; returns their paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        for (out, path) in self.outputs.iter_mut().zip(&self.paths) {
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(self.paths)
    }
}

impl HlogWriters<'_> {
    /// Encodes the largest possible interval with the gate closed.
    pub fn warm(&mut self) -> Result<()> {
        let dense = Histos::every_bucket();
        self.gate.set(false);
        let result = self.write(0, 1, &dense);
        self.gate.set(true);
        result
    }

    /// Writes second `t_s` (the interval `[t_s - 1, t_s)`).
    pub fn second(&mut self, t_s: u64, interval: &Histos) -> Result<()> {
        self.span(t_s, 1, interval)
    }

    /// Writes the interval `[t_s - span_s, t_s)` (a monitor that woke late
    /// covers several seconds with one row).
    pub fn span(&mut self, t_s: u64, span_s: u64, interval: &Histos) -> Result<()> {
        let span_s = span_s.clamp(1, t_s.max(1));
        self.write(t_s.saturating_sub(span_s), span_s, interval)
    }

    fn write(&mut self, start_s: u64, span_s: u64, interval: &Histos) -> Result<()> {
        for ((log, h), name) in self.logs.iter_mut().zip(interval.parts()).zip(HLOG_NAMES) {
            let start = Duration::from_secs(start_s);
            log.write_histogram(h, start, Duration::from_secs(span_s), Tag::new(name))
                .map_err(|e| anyhow!("{name}.hlog: {e:?}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::Histogram;

    #[test]
    fn writes_a_timeline_and_interval_logs_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut timeline = TimelineFile::create(dir.path()).unwrap();
        let mut files = HlogFiles::create(dir.path()).unwrap();
        let mut logs = files.begin(SystemTime::now()).unwrap();
        logs.warm().unwrap();
        let mut h = Histos::new();
        for t in 1..=3u64 {
            h.reset();
            for v in 0..100 * t {
                h.rtt.record(50 + v).unwrap();
            }
            let row = Row {
                t_s: t,
                phase: "hold".into(),
                ..Row::default()
            };
            timeline.row(&row).unwrap();
            logs.second(t, &h).unwrap();
        }
        drop(logs);
        assert_eq!(files.finish().unwrap().len(), 3);
        let csv = std::fs::read_to_string(dir.path().join("timeline.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.starts_with("t_s,phase,"));
        let log = std::fs::read(dir.path().join("rtt.hlog")).unwrap();
        let mut de = Deserializer::new();
        let mut counts = vec![];
        for entry in IntervalLogIterator::new(&log) {
            if let Ok(LogEntry::Interval(i)) = entry {
                assert_eq!(i.tag().map(|t| t.as_str()), Some("rtt"));
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    i.encoded_histogram(),
                )
                .unwrap();
                let h: Histogram<u64> = de.deserialize(&mut &bytes[..]).unwrap();
                counts.push(h.len());
            }
        }
        assert_eq!(
            counts,
            vec![100, 200, 300],
            "the warm-up interval must not be written"
        );
    }
}
