//! Models on simulated time: an hour of each fires the right number of
//! heartbeats (within 1%), storms land in their window, churn has the
//! configured mean, outages come back on their backoff schedule.

use super::*;
use crate::sim::simulate;

const HOUR: u32 = 3_600_000;

fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= expected * tolerance
}

fn assert_hour_matches(model: &HeartbeatModel, sessions: u64, storm_beats: u64) {
    let report = simulate(model, sessions, 1_000.0, HOUR, |_, _| {});
    let expected = report.expected_heartbeats + 0.5 * storm_beats as f64;
    assert!(
        within(report.heartbeats as f64, expected, 0.01),
        "fired {} heartbeats, expected {expected:.0}",
        report.heartbeats
    );
}

#[test]
fn fixed_interval_hour_fires_the_right_count() {
    let m = HeartbeatModel::fixed(1, 30_000, 0.1, HOUR);
    assert_hour_matches(&m, 5_000, 0);
    // Flat load: the first beats are spread over one interval.
    // (Second beats start at 27 s: interval 30 s - 10%.)
    let mut per_second = vec![0u32; 27];
    simulate(&m, 3_000, 1e6, 27_000, |_, t| {
        per_second[(t / 1_000) as usize] += 1
    });
    assert!(
        per_second.iter().all(|&n| (60..=140).contains(&n)),
        "{per_second:?}"
    );
}

#[test]
fn interval_first_beat_waits_one_jittered_interval_after_the_connect() {
    let mut m = HeartbeatModel::fixed(1, 30_000, 0.1, HOUR);
    m.first = FirstBeat::Interval;
    assert_hour_matches(&m, 5_000, 0);
    // All 3 000 sessions connect in the first 3 ms (rate 1e6/s): nothing
    // fires before 27 s, every first beat lands in 27..=33 s, spread over
    // that window rather than piled on one instant.
    let mut per_second = vec![0u32; 40];
    simulate(&m, 3_000, 1e6, 40_000, |_, t| {
        per_second[(t / 1_000) as usize] += 1
    });
    assert!(per_second[..27].iter().all(|&n| n == 0), "{per_second:?}");
    assert_eq!(
        per_second[27..34].iter().sum::<u32>(),
        3_000,
        "{per_second:?}"
    );
    assert!(
        per_second[27..33].iter().all(|&n| (300..=700).contains(&n)),
        "{per_second:?}"
    );
    // A spread model, same seed: first beats start at once.
    m.first = FirstBeat::Spread;
    let mut early = 0;
    simulate(&m, 3_000, 1e6, 1_000, |_, _| early += 1);
    assert!(early > 50, "{early}");
}

#[test]
fn weighted_classes_hour_fires_the_right_count() {
    let class = |name: &str, weight, secs: u32| ClientClass {
        name: name.into(),
        weight,
        interval_ms: secs * 1_000,
        jitter: 0.1,
    };
    let mut m = HeartbeatModel::fixed(2, 1, 0.0, HOUR);
    m.classes = vec![
        class("android", 6.0, 270),
        class("ios", 3.0, 300),
        class("desktop", 1.0, 600),
    ];
    assert_hour_matches(&m, 20_000, 0);
    let counts = (0..30_000u64).fold([0u32; 3], |mut acc, sid| {
        acc[usize::from(m.class_of(sid))] += 1;
        acc
    });
    assert!(within(f64::from(counts[0]), 18_000.0, 0.02), "{counts:?}");
    assert!(within(f64::from(counts[2]), 3_000.0, 0.05), "{counts:?}");
}

fn churn_model(lifetime: Lifetime) -> HeartbeatModel {
    let mut m = HeartbeatModel::fixed(3, 30_000, 0.1, HOUR);
    m.churn = Some(Churn {
        lifetime,
        reconnect_ms: 2_000,
    });
    m
}

#[test]
fn churn_hour_fires_the_right_count_and_closes_at_the_mean_rate() {
    for lifetime in [
        Lifetime::Exponential { mean_ms: 300_000.0 },
        Lifetime::LogNormal {
            mean_ms: 300_000.0,
            sigma: 0.8,
        },
    ] {
        let m = churn_model(lifetime);
        assert_hour_matches(&m, 4_000, 0);
        let r = simulate(&m, 4_000, 1_000.0, HOUR, |_, _| {});
        // Closes per connected time = 1 / mean lifetime (renewal rate).
        let observed_mean = r.connected_ms / r.closes[CloseCause::Churn as usize] as f64;
        assert!(
            within(observed_mean, 300_000.0, 0.03),
            "{lifetime:?}: {observed_mean}"
        );
        assert!(r.connects > 4_000 * 10);
    }
}

#[test]
fn lifetime_distributions_have_the_configured_mean() {
    for lifetime in [
        Lifetime::Exponential { mean_ms: 60_000.0 },
        Lifetime::LogNormal {
            mean_ms: 60_000.0,
            sigma: 1.0,
        },
    ] {
        let n = 200_000u64;
        let sum: f64 = (0..n)
            .map(|i| lifetime.sample(unit(9, 1, i, 0), unit(9, 2, i, 0)))
            .sum();
        assert!(
            within(sum / n as f64, lifetime.mean_ms(), 0.01),
            "{lifetime:?}"
        );
    }
}

#[test]
fn storm_beats_land_in_their_window_and_pick_the_fraction() {
    let mut m = HeartbeatModel::fixed(4, 30_000, 0.1, HOUR);
    m.storms = vec![Storm {
        at_ms: 1_200_000,
        window_ms: 5_000,
        fraction: 0.4,
    }];
    let sessions = 10_000u64;
    let mut in_window = 0u64;
    let mut storm_beats = 0u64;
    simulate(&m, sessions, 1_000.0, HOUR, |sid, t| {
        if (1_200_000..1_205_000).contains(&t) {
            in_window += 1;
        }
        if m.storm_time(sid, 0) == Some(t) {
            storm_beats += 1;
            assert!((1_200_000..1_205_000).contains(&t), "storm beat at {t}");
        }
    });
    assert!(within(storm_beats as f64, 4_000.0, 0.05), "{storm_beats}");
    // Plus the regular beats that happen to fall in the window (~1/6 of all).
    assert!(in_window >= storm_beats && in_window < storm_beats + 2_500);
    assert_hour_matches(&m, sessions, storm_beats);
}

#[test]
fn a_tick_puts_every_beat_on_it_and_keeps_the_mean_interval() {
    // An hour with churn and a storm, on a 4 ms tick: every heartbeat
    // (first, regular, storm, after a reconnect) is on the tick, and the
    // count is the untuned model's.
    let mut m = HeartbeatModel::fixed(5, 30_000, 0.1, HOUR);
    m.tick_ms = 4;
    m.churn = Some(Churn {
        lifetime: Lifetime::Exponential { mean_ms: 600_000.0 },
        reconnect_ms: 2_001,
    });
    m.storms = vec![Storm {
        at_ms: 1_200_001,
        window_ms: 5_000,
        fraction: 0.4,
    }];
    let mut off_tick = 0u64;
    let mut storm_beats = 0u64;
    simulate(&m, 5_000, 1_000.0, HOUR, |sid, t| {
        off_tick += u64::from(!t.is_multiple_of(4));
        if m.on_tick(m.storm_time(sid, 0).unwrap_or(0)) == t {
            storm_beats += 1;
            assert!((1_200_004..=1_205_004).contains(&t), "storm beat at {t}");
        }
    });
    assert_eq!(off_tick, 0);
    assert!(storm_beats > 1_000, "{storm_beats}");
    assert_hour_matches(&m, 5_000, storm_beats);
    // The rounding does not lengthen intervals: a tick a fifth of the
    // interval would add ~3.5 ms (9 %) to each if it rounded up.
    let mut m = HeartbeatModel::fixed(6, 40, 0.5, u32::MAX);
    m.tick_ms = 8;
    let (mut t, steps) = (0u32, 100_000u32);
    for _ in 0..steps {
        let next = m.next_beat(1, 0, t);
        assert!(next > t && next.is_multiple_of(8), "{t} -> {next}");
        t = next;
    }
    let mean = f64::from(t) / f64::from(steps);
    assert!(within(mean, 40.0, 0.01), "mean interval {mean} ms");
    // A first heartbeat is on the tick, never before the connect; with
    // tick 1 nothing changes.
    for connected in [0u32, 1, 3, 4, 5, 1_001] {
        for sid in 0..200 {
            let first = m.first_beat(sid, 0, connected, true);
            assert!(
                first > connected && first.is_multiple_of(8),
                "{connected} -> {first}"
            );
            let next = m.first_beat(sid, 0, connected, false);
            assert!(
                next > connected && next.is_multiple_of(8),
                "{connected} -> {next}"
            );
        }
    }
    m.tick_ms = 1;
    assert_eq!(m.on_tick(1_001), 1_001);
    assert_eq!(
        m.next_beat(1, 0, 100),
        100 + (40.0 * (1.0 + 0.5 * (2.0 * m.unit(Stream::Jitter, 1, 100) - 1.0))).round() as u32
    );
}

#[test]
fn outage_drops_the_fraction_and_reconnects_after_it_on_backoff() {
    let mut m = HeartbeatModel::fixed(5, 30_000, 0.1, HOUR);
    let outage = Outage {
        at_ms: 600_000,
        down_ms: 10_000,
        fraction: 0.3,
        backoff_base_ms: 500,
        backoff_max_ms: 30_000,
    };
    m.outages = vec![outage];
    let r = simulate(&m, 5_000, 1_000.0, HOUR, |_, _| {});
    let dropped = r.closes[CloseCause::Outage as usize];
    assert!(within(dropped as f64, 1_500.0, 0.08), "{dropped}");
    assert_eq!(r.connects, 5_000 + dropped);
    let mut returns: Vec<u32> = (0..5_000)
        .filter_map(|sid| m.reconnect_at(sid, 0, CloseCause::Outage, 600_000))
        .collect();
    returns.sort();
    assert!(returns[0] >= 610_000);
    // Backoff doubles from 0.5 s: nobody waits past one capped step after recovery.
    assert!(
        *returns.last().unwrap() <= 610_000 + 45_000,
        "{:?}",
        returns.last()
    );
    assert_hour_matches(&m, 5_000, 0);
}

#[test]
fn drain_closes_everyone_inside_its_window_for_good() {
    let mut m = HeartbeatModel::fixed(6, 30_000, 0.1, 700_000);
    m.churn = Some(Churn {
        lifetime: Lifetime::Exponential { mean_ms: 120_000.0 },
        reconnect_ms: 1_000,
    });
    m.drain = Some(Drain {
        at_ms: 600_000,
        window_ms: 10_000,
    });
    let r = simulate(&m, 2_000, 1_000.0, 700_000, |_, t| {
        assert!(t < 610_000, "{t}")
    });
    // Sessions that churned just before the drain do not come back to be drained.
    let drained = r.closes[CloseCause::Drain as usize];
    assert!((1_800..=2_000).contains(&drained), "{drained}");
    for sid in 0..2_000 {
        assert_eq!(m.reconnect_at(sid, 3, CloseCause::Churn, 605_000), None);
    }
}

#[test]
fn schedule_is_a_pure_function_of_seed_and_time() {
    let m = HeartbeatModel::fixed(7, 30_000, 0.1, HOUR);
    assert_eq!(m.next_beat(42, 0, 1_000), m.next_beat(42, 0, 1_000));
    let other = HeartbeatModel::fixed(8, 30_000, 0.1, HOUR);
    let differs = (0..100).any(|sid| m.next_beat(sid, 0, 0) != other.next_beat(sid, 0, 0));
    assert!(differs);
    for sid in 0..1_000 {
        let t = m.next_beat(sid, 0, 5_000);
        assert!((5_000 + 27_000..=5_000 + 33_000).contains(&t), "{t}");
    }
    assert!(within(m.mean_interval_ms(), 30_000.0, 1e-9));
}
