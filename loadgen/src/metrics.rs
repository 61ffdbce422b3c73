//! The loadgen's `--metrics` page (Prometheus text, served by the server
//! crate's responder, [`c10m_server::metrics`]): the run's cumulative
//! counters, sessions closed by kind, the RTT histogram as cumulative
//! buckets, and the RSS of both roles, re-rendered once a second by the
//! monitor.
#![forbid(unsafe_code)]

use crate::results::Row;
use crate::stats::{Counters, ErrorKind};
use c10m_server::metrics::Exposition;
use hdrhistogram::Histogram;

/// Upper bounds of the RTT buckets, in µs (1 ms … 10 s and a few below).
pub const RTT_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The page after second `row.t_s`: `c` and `rtt` are cumulative.
pub fn page(target: u64, c: &Counters, rtt: &Histogram<u64>, row: &Row) -> String {
    let mut e = Exposition::default();
    let (cn, g) = ("counter", "gauge");
    e.one(
        "c10m_loadgen_sessions_target",
        g,
        "Sessions to open and hold.",
        target as f64,
    );
    e.one(
        "c10m_loadgen_sessions_open",
        g,
        "Sessions established now.",
        c.open as f64,
    );
    e.one(
        "c10m_loadgen_connects_started_total",
        cn,
        "connect() calls.",
        c.connects_started as f64,
    );
    e.one(
        "c10m_loadgen_connects_ok_total",
        cn,
        "Connections established.",
        c.connects_ok as f64,
    );
    e.one(
        "c10m_loadgen_heartbeats_sent_total",
        cn,
        "Heartbeats sent.",
        c.heartbeats_sent as f64,
    );
    e.one(
        "c10m_loadgen_heartbeats_answered_total",
        cn,
        "Heartbeats answered.",
        c.heartbeats_answered as f64,
    );
    e.one(
        "c10m_loadgen_closes_planned_total",
        cn,
        "Sessions closed by the scenario (churn, drain).",
        c.closes_planned as f64,
    );
    let labels: Vec<String> = ErrorKind::ALL
        .iter()
        .map(|k| format!("{{kind=\"{}\"}}", k.key()))
        .collect();
    let errors: Vec<(&str, f64)> = labels
        .iter()
        .zip(ErrorKind::ALL)
        .map(|(l, k)| (l.as_str(), c.errors[k as usize] as f64))
        .collect();
    e.family(
        "c10m_loadgen_errors_total",
        cn,
        "Failed connects and sessions ended by the server or the network, by kind.",
        &errors,
    );
    let mut buckets: Vec<(String, f64)> = RTT_BUCKETS_US
        .iter()
        .map(|&us| {
            let le = format!("_bucket{{le=\"{}\"}}", us as f64 / 1e6);
            (le, rtt.count_between(0, us) as f64)
        })
        .collect();
    buckets.push(("_bucket{le=\"+Inf\"}".into(), rtt.len() as f64));
    buckets.push(("_sum".into(), rtt.mean() * rtt.len() as f64 / 1e6));
    buckets.push(("_count".into(), rtt.len() as f64));
    let samples: Vec<(&str, f64)> = buckets.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    e.family(
        "c10m_loadgen_rtt_seconds",
        "histogram",
        "Heartbeat RTT from the intended send time.",
        &samples,
    );
    e.one(
        "c10m_loadgen_rss_bytes",
        g,
        "VmRSS of the loadgen's processes.",
        row.loadgen_rss_bytes as f64,
    );
    e.one(
        "c10m_loadgen_server_rss_bytes",
        g,
        "VmRSS of the --server-pid process tree (0 without one).",
        row.server_rss_bytes as f64,
    );
    e.one(
        "c10m_loadgen_elapsed_seconds",
        g,
        "Seconds since the run's start.",
        row.t_s as f64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_the_count() {
        let mut rtt = crate::stats::Histos::new().rtt;
        for v in [50, 400, 400, 3_000, 20_000_000] {
            rtt.record(v).unwrap();
        }
        let c = Counters {
            open: 3,
            ..Counters::default()
        };
        let p = page(10, &c, &rtt, &Row::default());
        assert!(p.contains("\nc10m_loadgen_sessions_open 3\n"), "{p}");
        assert!(
            p.contains("c10m_loadgen_rtt_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{p}"
        );
        assert!(p.contains("c10m_loadgen_rtt_seconds_bucket{le=\"0.0005\"} 3\n"));
        assert!(p.contains("c10m_loadgen_rtt_seconds_bucket{le=\"10\"} 4\n"));
        assert!(p.contains("c10m_loadgen_rtt_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(p.contains("c10m_loadgen_rtt_seconds_count 5\n"));
        assert!(p.contains("c10m_loadgen_errors_total{kind=\"refused\"} 0\n"));
    }
}
