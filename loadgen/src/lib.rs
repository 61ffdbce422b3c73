//! c10m-loadgen: opens many synthetic client sessions against a RESP server
//! and reproduces production heartbeat patterns, open loop.
//!
//! The logic is sans-IO and free of `unsafe` (the whole crate forbids it):
//! [`model`] (what clients do, as pure functions of seed and time),
//! [`session`] (one client's 16-byte record and state machine), [`wheel`]
//! (deadlines), [`ramp`] (connect pacing), [`plan`] (the 4-tuple space),
//! [`scenario`] and [`cli`] (configuration), [`stats`] (counters, error
//! kinds, histograms). The IO side pumps them: [`driver`] (one mio loop per
//! pinned thread, woken by a timerfd on [`clock`]'s epoch), [`fleet`] (the
//! drivers of one process), [`procs`] (child processes past the descriptor
//! limit), [`run`] (a run from start to verdict). Results: [`report`]
//! (summary.json, thresholds, table), [`results`] and [`hlog`]
//! (timeline.csv, interval logs), [`progress`]; [`host`] and [`resident`]
//! serve the MEASURING.md memory figures; [`metrics`] renders the live
//! `--metrics` page. Offline: [`regress`] (the CI gate against
//! results/baseline.json), [`merge`] (several processes' or hosts' results
//! made one), [`rundir`] (a results directory read back), [`plot`] (charts
//! and results.md) and [`commands`] (the offline subcommands' files).
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod commands;
pub mod driver;
pub mod fleet;
pub mod hlog;
pub mod host;
pub mod k8s;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod plot;
pub mod procs;
pub mod progress;
pub mod proto;
pub mod ramp;
pub mod regress;
pub mod report;
pub mod resident;
pub mod results;
pub mod run;
pub mod rundir;
pub mod scenario;
pub mod session;
pub mod stats;
pub mod wheel;

#[cfg(test)]
mod sim;
