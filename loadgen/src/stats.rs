//! What a run counts: `Counters` (cumulative, summed over drivers and
//! processes), `ErrorKind` (every failure lands in exactly one kind, with a
//! hint when it names a host limit), and `Histos` (connect latency, RTT from
//! the intended send time, and send lag), merged exactly across drivers and
//! processes.
#![forbid(unsafe_code)]

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io;

/// Kinds of failure, in the order of the summary's `errors{}` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// ECONNREFUSED: nothing listens, or the listen backlog overflowed.
    Refused,
    /// The connect did not complete within `--connect-timeout` (or ETIMEDOUT).
    Timeout,
    /// ECONNRESET / EPIPE / ECONNABORTED.
    Reset,
    /// EADDRNOTAVAIL / EADDRINUSE: no free 4-tuple.
    AddrNotAvail,
    /// EMFILE / ENFILE: out of descriptors.
    Emfile,
    /// Bytes that are not a valid answer in the run's protocol (for resp:
    /// not a bulk string carrying our payload).
    Protocol,
    /// The server closed the session (EOF).
    Eof,
    /// The server answered with an error (`-ERR ...`, memcache
    /// `SERVER_ERROR`, an HTTP status >= 400); the session is then closed
    /// by us.
    ServerError,
    Other,
    /// The server refused the session `-ERR BUSY retry-after=<s>` (accept
    /// rate, session cap or overload): load shed by design, retried after
    /// the time it named. Reported, but not in `errors_total`.
    Busy,
    /// The protocol's handshake failed: refused (an MQTT CONNACK with an
    /// error code, an HTTP status instead of the websocket upgrade), a
    /// wrong websocket accept key, or no answer within the connect timeout.
    Handshake,
    /// The server ended the session in the protocol (a websocket close
    /// frame, an MQTT DISCONNECT, an HTTP `Connection: close`).
    PeerClose,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Refused,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::AddrNotAvail,
        ErrorKind::Emfile,
        ErrorKind::Protocol,
        ErrorKind::Eof,
        ErrorKind::ServerError,
        ErrorKind::Other,
        ErrorKind::Busy,
        ErrorKind::Handshake,
        ErrorKind::PeerClose,
    ];

    /// The key in `summary.json`'s `errors{}`.
    pub fn key(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::AddrNotAvail => "addr_not_avail",
            ErrorKind::Emfile => "emfile",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Eof => "eof",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Other => "other",
            ErrorKind::Busy => "busy",
            ErrorKind::Handshake => "handshake",
            ErrorKind::PeerClose => "peer_close",
        }
    }

    /// Classifies an OS error (hot path: matches on the errno, builds nothing).
    pub fn of_io(e: &io::Error) -> ErrorKind {
        use nix::errno::Errno;
        let Some(code) = e.raw_os_error() else {
            return match e.kind() {
                io::ErrorKind::TimedOut => ErrorKind::Timeout,
                io::ErrorKind::UnexpectedEof => ErrorKind::Eof,
                _ => ErrorKind::Other,
            };
        };
        match Errno::from_raw(code) {
            Errno::ECONNREFUSED => ErrorKind::Refused,
            Errno::ETIMEDOUT => ErrorKind::Timeout,
            Errno::ECONNRESET | Errno::EPIPE | Errno::ECONNABORTED => ErrorKind::Reset,
            Errno::EADDRNOTAVAIL | Errno::EADDRINUSE => ErrorKind::AddrNotAvail,
            Errno::EMFILE | Errno::ENFILE => ErrorKind::Emfile,
            _ => ErrorKind::Other,
        }
    }

    /// What to do about it, naming the limit involved.
    pub fn hint(self, limits: &HintContext) -> String {
        let HintContext {
            port_lo,
            port_hi,
            nofile_soft,
            nofile_hard,
        } = limits;
        match self {
            ErrorKind::Refused => "connection refused: is the server listening on --target? A full \
                 listen backlog also refuses: raise net.core.somaxconn or lower --rate"
                .into(),
            ErrorKind::Timeout => "connect timed out: SYN or accept backlog full, or server stalled; \
                 raise net.core.somaxconn / net.ipv4.tcp_max_syn_backlog or lower --rate"
                .into(),
            ErrorKind::Reset => "sessions reset by the peer (server crashed or aborted them)".into(),
            ErrorKind::AddrNotAvail => format!(
                "4-tuple space exhausted: widen --source or ip_local_port_range (now {port_lo}-{port_hi})"
            ),
            ErrorKind::Emfile => format!(
                "out of descriptors: RLIMIT_NOFILE soft={nofile_soft} hard={nofile_hard} bounds each \
                 driver thread's table; use more --threads (or leave it unset) \
                 (ENFILE: raise fs.file-max)"
            ),
            ErrorKind::Protocol => "the server sent bytes that are not a valid answer in the run's \
                 --protocol (see first_errors.protocol): the right --protocol for this server?"
                .into(),
            ErrorKind::Eof => "the server closed sessions: its --max-sessions reached, or an \
                 --idle-timeout shorter than the heartbeat interval?"
                .into(),
            ErrorKind::ServerError => "the server answered with an error (-ERR, memcache \
                 ERROR/SERVER_ERROR, an HTTP status >= 400; see first_errors.server_error): check \
                 --path and --host-header for http"
                .into(),
            ErrorKind::Other => "unclassified OS error (see first_other_error)".into(),
            ErrorKind::Busy => "the server shed new sessions (-ERR BUSY: its --accept-rate, \
                 --max-sessions or overload); each retried after the retry-after it was told, \
                 jittered; not counted against --max-errors"
                .into(),
            ErrorKind::Handshake => "the protocol's handshake failed (see first_errors.handshake): \
                 MQTT CONNACK refused (anonymous access, client id), no websocket upgrade at \
                 --path, or no answer within --connect-timeout"
                .into(),
            ErrorKind::PeerClose => "the server closed sessions in the protocol (see \
                 first_errors.peer_close): a websocket close frame, an MQTT DISCONNECT (keepalive \
                 shorter than the heartbeat interval?), HTTP Connection: close (keepalive_requests \
                 or keepalive_timeout too low?)"
                .into(),
        }
    }
}

/// Host limits quoted in hints.
#[derive(Debug, Clone, Default)]
pub struct HintContext {
    pub port_lo: u16,
    pub port_hi: u16,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

/// Cumulative counters of one driver, or their sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub connects_started: u64,
    pub connects_ok: u64,
    /// Sessions established now (a gauge; sums across drivers).
    pub open: u64,
    /// Sessions open when the hold ended (set once by each driver).
    pub held_at_end: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    /// Sent heartbeats whose connection ended before the reply.
    pub heartbeats_lost: u64,
    pub closes_planned: u64,
    pub read_spills: u64,
    pub write_spills: u64,
    /// io_uring: recvs ended because a ring's provided buffers ran dry
    /// (re-armed; the data waits in the socket).
    #[serde(default)]
    pub recv_enobufs: u64,
    pub errors: [u64; 12],
    /// Sessions established for the first time (the ramp's own connects).
    pub ramp_connected: u64,
    /// µs since the epoch of the ramp's first connect() (min over
    /// drivers; 0: none yet) and of its last first-time establishment (max).
    pub ramp_first_us: u64,
    pub ramp_last_us: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connects_started += o.connects_started;
        self.connects_ok += o.connects_ok;
        self.open += o.open;
        self.held_at_end += o.held_at_end;
        self.heartbeats_sent += o.heartbeats_sent;
        self.heartbeats_answered += o.heartbeats_answered;
        self.heartbeats_lost += o.heartbeats_lost;
        self.closes_planned += o.closes_planned;
        self.read_spills += o.read_spills;
        self.write_spills += o.write_spills;
        self.recv_enobufs += o.recv_enobufs;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.ramp_connected += o.ramp_connected;
        if o.ramp_first_us != 0 && (self.ramp_first_us == 0 || o.ramp_first_us < self.ramp_first_us)
        {
            self.ramp_first_us = o.ramp_first_us;
        }
        self.ramp_last_us = self.ramp_last_us.max(o.ramp_last_us);
    }

    /// Sessions opened per second over the ramp: first-time connects over
    /// the time from the first connect() to the last first establishment.
    pub fn ramp_rate_per_s(&self) -> f64 {
        let span_us = self.ramp_last_us.saturating_sub(self.ramp_first_us);
        if self.ramp_connected == 0 || span_us == 0 {
            return 0.0;
        }
        self.ramp_connected as f64 * 1e6 / span_us as f64
    }

    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
    }

    /// Every error but `busy` (shed load, retried as the server asked).
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum::<u64>() - self.errors[ErrorKind::Busy as usize]
    }
}

/// Highest value tracked: one hour in microseconds (larger values saturate).
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// The latency histograms of a driver, a second, or a whole run (µs).
#[derive(Debug, Clone)]
pub struct Histos {
    /// Reply time minus the heartbeat's *intended* send time.
    pub rtt: Histogram<u64>,
    /// `connect()` to established.
    pub connect: Histogram<u64>,
    /// Actual minus intended send time: the loadgen's own scheduling delay,
    /// already included in `rtt` (shown apart so it can be told apart).
    pub send_lag: Histogram<u64>,
}

impl Histos {
    /// Empty histograms, their counts arrays touched so that they are part
    /// of the warm RSS baseline rather than of the per-session figure.
    pub fn new() -> Self {
        let new = || {
            let mut h = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static bounds");
            h.reset();
            h
        };
        Histos {
            rtt: new(),
            connect: new(),
            send_lag: new(),
        }
    }

    /// One count in every bucket: the largest thing an encoder will ever
    /// see, used to warm encoders' buffers before the RSS baseline.
    pub fn every_bucket() -> Self {
        let mut out = Histos::new();
        for h in out.parts_mut() {
            let mut v = 1;
            while v < HIST_MAX_US {
                h.saturating_record(v);
                v = h.next_non_equivalent(v);
            }
        }
        out
    }

    pub fn add(&mut self, o: &Histos) {
        for (a, b) in self.parts_mut().into_iter().zip(o.parts()) {
            a.add(b).expect("same bounds");
        }
    }

    pub fn reset(&mut self) {
        for h in self.parts_mut() {
            h.reset();
        }
    }

    pub fn parts(&self) -> [&Histogram<u64>; 3] {
        [&self.rtt, &self.connect, &self.send_lag]
    }

    fn parts_mut(&mut self) -> [&mut Histogram<u64>; 3] {
        [&mut self.rtt, &mut self.connect, &mut self.send_lag]
    }

    /// Base64 of the V2 encoding of each part (for the child→parent pipe).
    pub fn encode(&self) -> [String; 3] {
        let mut ser = V2Serializer::new();
        self.parts().map(|h| {
            let mut buf = Vec::new();
            ser.serialize(h, &mut buf).expect("serialize to memory");
            base64::engine::general_purpose::STANDARD.encode(buf)
        })
    }

    /// Inverse of [`Histos::encode`].
    pub fn decode(parts: &[String; 3]) -> Result<Histos, String> {
        let mut de = Deserializer::new();
        let mut out = Histos::new();
        for (h, text) in out.parts_mut().into_iter().zip(parts) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("bad base64 histogram: {e}"))?;
            let decoded: Histogram<u64> = de
                .deserialize(&mut &bytes[..])
                .map_err(|e| format!("bad V2 histogram: {e:?}"))?;
            h.add(&decoded)
                .map_err(|e| format!("histogram bounds: {e:?}"))?;
        }
        Ok(out)
    }
}

impl Default for Histos {
    fn default() -> Self {
        Histos::new()
    }
}

/// p50/p90/p99/p99.9/max and count of a histogram, as summary keys.
pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    serde_json::json!({
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": if h.is_empty() { 0 } else { h.max() },
        "count": h.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_histograms_merge_exactly() {
        let mut a = Histos::new();
        let mut b = Histos::new();
        for v in 1..=1_000u64 {
            a.rtt.record(v * 7).unwrap();
            b.rtt.record(v * 13).unwrap();
            b.connect.record(v).unwrap();
        }
        let mut direct = a.clone();
        direct.add(&b);
        let mut via_wire = Histos::decode(&a.encode()).unwrap();
        via_wire.add(&Histos::decode(&b.encode()).unwrap());
        assert_eq!(direct.rtt, via_wire.rtt);
        assert_eq!(direct.connect, via_wire.connect);
        assert_eq!(via_wire.rtt.len(), 2_000);
    }

    #[test]
    fn io_errors_land_in_their_kind() {
        let e = |code: nix::errno::Errno| io::Error::from_raw_os_error(code as i32);
        use nix::errno::Errno::*;
        assert_eq!(ErrorKind::of_io(&e(ECONNREFUSED)), ErrorKind::Refused);
        assert_eq!(ErrorKind::of_io(&e(EADDRNOTAVAIL)), ErrorKind::AddrNotAvail);
        assert_eq!(ErrorKind::of_io(&e(EMFILE)), ErrorKind::Emfile);
        assert_eq!(ErrorKind::of_io(&e(ECONNRESET)), ErrorKind::Reset);
        assert_eq!(ErrorKind::of_io(&e(EIO)), ErrorKind::Other);
        let limits = HintContext {
            port_lo: 32768,
            port_hi: 60999,
            nofile_soft: 20000,
            nofile_hard: 20000,
        };
        assert!(ErrorKind::AddrNotAvail
            .hint(&limits)
            .contains("widen --source"));
        assert!(ErrorKind::Emfile.hint(&limits).contains(
            "soft=20000 hard=20000 bounds each driver thread's table; use more --threads"
        ));
        let keys: Vec<_> = ErrorKind::ALL.iter().map(|k| k.key()).collect();
        assert_eq!(keys.len(), Counters::default().errors.len());
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
