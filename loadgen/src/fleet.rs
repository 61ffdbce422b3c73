//! `LocalFleet`: the driver threads of one process, and `Snapshot`, what a
//! fleet (local or a set of child processes) reports each second.
//!
//! Start-up is in two steps so that the warm RSS baseline can be taken in
//! between: [`LocalFleet::start`] spawns and prepares every driver (poller,
//! timer, wheel, histograms, buffers) and waits until all are ready;
//! [`LocalFleet::go`] hands them the run's epoch.
#![forbid(unsafe_code)]

use crate::clock::RunClock;
use crate::driver::{self, DriverShared, DriverSpec};
use crate::model::HeartbeatModel;
use crate::plan::AddressPlan;
use crate::procs::DriverIo;
use crate::scenario::RunConfig;
use crate::stats::{Counters, Histos};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// Counters (cumulative) and histograms (since the previous snapshot).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub histos: Histos,
    pub first_errors: BTreeMap<String, String>,
}

impl Snapshot {
    /// Empties it for reuse (keeps the histograms' allocations).
    pub fn clear(&mut self) {
        self.counters = Counters::default();
        self.histos.reset();
    }
}

/// Which drivers a process runs: process `index` of `procs`, `threads` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub procs: usize,
    pub threads: usize,
    pub io: DriverIo,
}

impl Share {
    /// The spec of this process's `t`-th driver.
    pub fn driver_spec(&self, t: usize, config: &RunConfig, cpus: &[usize]) -> DriverSpec {
        let drivers = (self.procs * self.threads) as u64;
        let g = (self.index * self.threads + t) as u64;
        DriverSpec {
            first_sid: g,
            stride: drivers,
            count: config.sessions.saturating_sub(g).div_ceil(drivers),
            cpu: (!cpus.is_empty()).then(|| cpus[g as usize % cpus.len()]),
            rate_per_s: config.rate / drivers as f64,
            max_inflight: (u64::from(config.max_inflight) / drivers).max(1) as u32,
            connect_timeout_ms: config.connect_timeout_ms as u32,
            timeline: config.timeline(),
            io: self.io,
            protocol: config.protocol.clone(),
            seed: config.seed,
            shard: config.shard,
        }
    }
}

/// See the module docs.
pub struct LocalFleet {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    shared: Vec<Arc<DriverShared>>,
    go: Vec<mpsc::Sender<RunClock>>,
}

/// Stops a fleet's drivers from another thread.
#[derive(Clone)]
pub struct StopHandle(Vec<Arc<DriverShared>>);

impl StopHandle {
    pub fn stop(&self) {
        for s in &self.0 {
            s.stop.store(true, Ordering::Relaxed);
        }
    }
}

impl LocalFleet {
    /// Spawns and prepares this process's drivers; returns once all are ready.
    pub fn start(
        config: &RunConfig,
        plan: Arc<AddressPlan>,
        model: Arc<HeartbeatModel>,
        share: Share,
    ) -> Result<LocalFleet> {
        let cpus = c10m_server::sys::allowed_cpus();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut fleet = LocalFleet {
            threads: Vec::new(),
            shared: Vec::new(),
            go: Vec::new(),
        };
        for t in 0..share.threads {
            let spec = share.driver_spec(t, config, &cpus);
            let shared = Arc::new(DriverShared::default());
            let (go_tx, go_rx) = mpsc::channel::<RunClock>();
            let (plan, model, ready) = (plan.clone(), model.clone(), ready_tx.clone());
            let thread_shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("driver-{}", share.index * share.threads + t))
                .spawn(move || {
                    let driver = match driver::prepare(spec, plan, model, thread_shared) {
                        Ok(d) => {
                            let _ = ready.send(Ok(()));
                            d
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e.to_string()));
                            return Err(e);
                        }
                    };
                    match go_rx.recv() {
                        Ok(clock) => driver.run(clock),
                        Err(_) => Ok(()), // the fleet was dropped before the start
                    }
                })
                .context("cannot spawn a driver thread")?;
            fleet.threads.push(handle);
            fleet.shared.push(shared);
            fleet.go.push(go_tx);
        }
        drop(ready_tx);
        for _ in 0..share.threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow!("a driver failed to start: {e}")),
                Err(_) => return Err(anyhow!("a driver thread died while starting")),
            }
        }
        Ok(fleet)
    }

    /// Starts every driver on the run's epoch.
    pub fn go(&mut self, clock: RunClock) {
        for tx in self.go.drain(..) {
            let _ = tx.send(clock);
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// True once every driver has returned.
    pub fn finished(&self) -> bool {
        self.shared
            .iter()
            .all(|s| s.finished.load(Ordering::Acquire))
    }

    /// Adds what the drivers published since the last call into `snap`
    /// (counters are replaced by the current totals).
    pub fn collect(&self, snap: &mut Snapshot) {
        snap.counters = Counters::default();
        for shared in &self.shared {
            let mut r = shared.report.lock().unwrap_or_else(|p| p.into_inner());
            snap.counters.add(&r.counters);
            snap.histos.add(&r.histos);
            r.histos.reset();
            for (k, v) in &r.first_errors {
                snap.first_errors
                    .entry(k.to_string())
                    .or_insert_with(|| v.clone());
            }
        }
    }

    /// Waits for every driver to return, then collects the rest into `snap`.
    pub fn join(self, snap: &mut Snapshot) -> Result<()> {
        let mut failure = None;
        for handle in self.threads {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(anyhow!("a driver failed: {e}")),
                Err(_) => failure = Some(anyhow!("a driver thread panicked")),
            }
        }
        let rest = LocalFleet {
            threads: Vec::new(),
            shared: self.shared,
            go: Vec::new(),
        };
        rest.collect(snap);
        failure.map_or(Ok(()), Err)
    }
}
