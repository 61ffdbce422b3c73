//! `--profile PATH`: samples the process's CPU (pprof: SIGPROF at
//! [`FREQUENCY_HZ`], every thread) from start to exit, then writes a
//! flamegraph SVG to PATH and the profile in pprof's protobuf format next
//! to it (PATH with the extension `.pb`, for `go tool pprof` or
//! `pprof -http`). The loadgen uses the same [`Profiler`]. Under a
//! `--procs` supervisor each child profiles itself into `PATH-child-N.svg`
//! (and `.pb`); the supervisor's own PATH shows only supervision.
//!
//! Sampling costs a signal per 10 ms of CPU per thread: noise for the
//! figures a campaign measures, so profile a separate run, not the one
//! whose CPU per heartbeat is committed.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's `--profile` path, for the supervisor to hand each child
/// its own ([`for_child`]).
static REQUESTED: OnceLock<PathBuf> = OnceLock::new();

/// The `--profile` path of the child whose stats file is `child_stats`
/// (`…/child-3.json` → `PATH-child-3.svg`), when this process profiles.
pub fn for_child(child_stats: &Path) -> Option<PathBuf> {
    let svg = REQUESTED.get()?;
    let stem = svg.file_stem()?.to_string_lossy();
    let child = child_stats.file_stem()?.to_string_lossy();
    Some(svg.with_file_name(format!("{stem}-{child}.svg")))
}

/// Samples per CPU-second (99, not 100, so as not to beat with timers).
pub const FREQUENCY_HZ: i32 = 99;

/// A running profile; [`Profiler::finish`] writes it.
pub struct Profiler {
    guard: pprof::ProfilerGuard<'static>,
    svg: PathBuf,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler").field("svg", &self.svg).finish()
    }
}

/// Where the protobuf profile of `svg` goes.
pub fn protobuf_path(svg: &Path) -> PathBuf {
    svg.with_extension("pb")
}

impl Profiler {
    pub fn start(svg: &Path) -> Result<Profiler> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY_HZ)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .context("starting the CPU profiler")?;
        let _ = REQUESTED.set(svg.to_path_buf());
        Ok(Profiler {
            guard,
            svg: svg.to_path_buf(),
        })
    }

    /// Stops sampling and writes the flamegraph and the protobuf profile;
    /// returns their paths.
    pub fn finish(self) -> Result<(PathBuf, PathBuf)> {
        use pprof::protos::Message;
        let report = self
            .guard
            .report()
            .build()
            .context("building the profile")?;
        drop(self.guard);
        let file = std::fs::File::create(&self.svg)
            .with_context(|| format!("cannot write {}", self.svg.display()))?;
        report.flamegraph(file).context("drawing the flamegraph")?;
        let pb = protobuf_path(&self.svg);
        let bytes = report
            .pprof()
            .context("encoding the profile")?
            .write_to_bytes()
            .context("encoding the profile")?;
        std::fs::write(&pb, bytes).with_context(|| format!("cannot write {}", pb.display()))?;
        Ok((self.svg, pb))
    }
}
