//! A simulated driver for tests: the real `ClientSession` state machine and
//! `DeadlineWheel` on simulated time, with connects that succeed at once.
//! It runs an hour of a model in well under a second and without sockets.
#![forbid(unsafe_code)]

use crate::model::{FirstBeat, HeartbeatModel};
use crate::session::{ClientSession, Step};
use crate::wheel::DeadlineWheel;

/// What a simulated run observed.
#[derive(Debug, Default)]
pub struct SimReport {
    pub heartbeats: u64,
    /// Heartbeats the model should fire, from the connected time of each
    /// connection (see `simulate`).
    pub expected_heartbeats: f64,
    pub connects: u64,
    pub closes: [u64; 3],
    pub connected_ms: f64,
}

/// Runs `sessions` clients, the ramp opening one every `1000 / rate` ms,
/// until `until_ms`; calls `on_beat(sid, intended_ms)` for every heartbeat.
///
/// Expected heartbeats per connection of duration D at interval I: D / I
/// for the ramp's connection with a uniform first phase, D / I − ½ for a
/// reconnect or a [`FirstBeat::Interval`] ramp connection (first beat one
/// interval in: a renewal count), and +½ for each
/// storm beat (it pulls the schedule in by half an interval on average).
pub fn simulate(
    model: &HeartbeatModel,
    sessions: u64,
    rate_per_s: f64,
    until_ms: u32,
    mut on_beat: impl FnMut(u64, u32),
) -> SimReport {
    let mut report = SimReport::default();
    let mut wheel = DeadlineWheel::new(0, sessions as usize);
    let mut table: Vec<ClientSession> = Vec::with_capacity(sessions as usize);
    let mut since: Vec<(u32, bool)> = Vec::with_capacity(sessions as usize);
    let mut due = Vec::new();
    let mut now = 0u32;
    let ramp_at = |sid: u64| (sid as f64 * 1_000.0 / rate_per_s) as u32;

    let connect = |s: &mut ClientSession, sid: u64, now: u32, r: &mut SimReport| {
        s.start_connect(u64::from(now) * 1_000, 1_000);
        r.connects += 1;
        s.connected(model, sid, now)
    };
    let close = |s: &ClientSession, since: (u32, bool), now: u32, r: &mut SimReport| {
        let d = f64::from(now - since.0);
        let interval = f64::from(model.classes[usize::from(s.class())].interval_ms);
        r.connected_ms += d;
        let spread = since.1 && model.first == FirstBeat::Spread;
        r.expected_heartbeats += d / interval + if spread { 0.0 } else { -0.5 };
    };

    loop {
        let next_ramp = ((table.len() as u64) < sessions).then(|| ramp_at(table.len() as u64));
        let next = match (next_ramp, wheel.next_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if next >= until_ms {
            break;
        }
        now = now.max(next);
        while (table.len() as u64) < sessions && ramp_at(table.len() as u64) <= now {
            let sid = table.len() as u64;
            let mut s = ClientSession::new(model.class_of(sid));
            let idx = wheel.push_entry();
            if let Some(t) = connect(&mut s, sid, now, &mut report) {
                wheel.schedule(idx, t);
            }
            table.push(s);
            since.push((now, true));
        }
        wheel.expire(now, &mut due);
        for idx in due.drain(..) {
            let sid = u64::from(idx);
            let s = &mut table[idx as usize];
            loop {
                match s.poll(model, sid, now) {
                    Step::Heartbeat { intended_ms } => {
                        // An ideal server answers at once, so planned
                        // closes never wait for a reply here.
                        s.answered();
                        report.heartbeats += 1;
                        on_beat(sid, intended_ms);
                    }
                    Step::Close(cause) => {
                        close(s, since[idx as usize], now, &mut report);
                        report.closes[cause as usize] += 1;
                    }
                    Step::Connect => {
                        since[idx as usize] = (now, false);
                        if let Some(t) = connect(s, sid, now, &mut report) {
                            wheel.schedule(idx, t);
                        }
                        break;
                    }
                    Step::ConnectTimeout => unreachable!("simulated connects succeed"),
                    Step::Wait(t) => {
                        if let Some(t) = t {
                            wheel.schedule(idx, t);
                        }
                        break;
                    }
                }
            }
        }
    }
    for (s, since) in table.iter().zip(&since) {
        if s.state() == crate::session::State::Open {
            close(s, *since, until_ms, &mut report);
        }
    }
    report
}
