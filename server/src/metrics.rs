//! `--metrics ADDR`: the stats as Prometheus text exposition (format
//! 0.0.4), served by a tiny HTTP/1.0 responder on one std thread, so a
//! campaign can be watched in Prometheus/Grafana. The loadgen uses the same
//! responder and [`Exposition`] for its own page.
//!
//! Contract: the owner renders the whole page into a [`MetricsBoard`] (the
//! server every [`PUBLISH_EVERY`], from the same [`Report`] its stats line
//! prints; the supervisor from the children's summed report); the responder
//! only copies the latest page out, so a slow scraper never touches a
//! worker. One request per connection, answered in order; any path gets
//! the page (`/metrics` by convention). No TLS, no authentication: bind
//! loopback unless told otherwise.
#![forbid(unsafe_code)]

use crate::stats::Report;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the server re-renders its page.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// The latest rendered page, shared with the responder thread.
#[derive(Debug, Clone, Default)]
pub struct MetricsBoard(Arc<Mutex<String>>);

impl MetricsBoard {
    pub fn publish(&self, page: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = page;
    }

    pub fn page(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `--metrics` values: `ADDR:PORT`, or a bare `PORT` / `:PORT`, which
/// binds 127.0.0.1 (nothing leaves the host unless an address is named).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}' is not PORT or ADDR:PORT (e.g. 9100 or 127.0.0.1:9100)"))
}

/// Binds `addr` and answers scrapes with `board`'s page on a new thread.
/// Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, board: MetricsBoard) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &board);
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, board: &MetricsBoard) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    // Read the request head (its content does not matter), at most 8 KiB.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = board.page();
    let status = if head.starts_with(b"GET ") || head.starts_with(b"HEAD ") {
        "200 OK"
    } else {
        "405 Method Not Allowed"
    };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head.starts_with(b"HEAD ") {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Serves a new board on `addr` and prints `ROLE metrics on
/// http://ADDR/metrics` (tests and scripts read the port from it).
pub fn announce(addr: SocketAddr, role: &str) -> io::Result<MetricsBoard> {
    let board = MetricsBoard::default();
    let bound = serve(addr, board.clone())?;
    println!("{role} metrics on http://{bound}/metrics");
    let _ = io::stdout().flush();
    Ok(board)
}

/// Re-renders a page at most every [`PUBLISH_EVERY`].
#[derive(Debug)]
pub struct Publisher {
    board: MetricsBoard,
    next: Instant,
}

impl Publisher {
    /// Starts the responder on `addr` and says where, on stdout:
    /// `c10m-server metrics on http://ADDR/metrics`.
    pub fn start(addr: SocketAddr, role: &str) -> io::Result<Publisher> {
        let board = announce(addr, role)?;
        Ok(Publisher {
            board,
            next: Instant::now(),
        })
    }

    /// Publishes `report()` if the last page is older than PUBLISH_EVERY.
    pub fn maybe(&mut self, report: impl FnOnce() -> Report) {
        let now = Instant::now();
        if now >= self.next {
            self.board.publish(server_page(&report()));
            self.next = now + PUBLISH_EVERY;
        }
    }
}

/// The process's publisher, once `--metrics` started it. A process-wide
/// slot rather than a `ServerConfig` field, so the single server and the
/// supervisor each publish with one call and nothing else changes shape.
static INSTALLED: OnceLock<Mutex<Publisher>> = OnceLock::new();

/// Starts the responder for this process (see [`Publisher::start`]).
pub fn install(addr: SocketAddr, role: &str) -> io::Result<()> {
    let publisher = Publisher::start(addr, role)?;
    INSTALLED
        .set(Mutex::new(publisher))
        .map_err(|_| io::Error::other("--metrics started twice"))
}

/// [`install`] for a process taking over from another (an upgrade): the
/// old process holds the port until it exits, so a thread retries every
/// 50 ms for up to a minute, then says why it gave up.
pub fn install_when_free(addr: SocketAddr, role: &str) {
    let role = role.to_string();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match install(addr, &role) {
                Ok(()) => return,
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("{role}: --metrics {addr}: {e}; serving without metrics");
                    return;
                }
            }
        }
    });
}

/// Publishes `report()` when `--metrics` is on and the page is due; else
/// does nothing (and does not call `report`).
pub fn publish_with(report: impl FnOnce() -> Report) {
    if let Some(p) = INSTALLED.get() {
        p.lock().unwrap_or_else(|e| e.into_inner()).maybe(report);
    }
}

/// Builds a text exposition page, one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// One family: `kind` is `counter`, `gauge` or `histogram`; each sample
    /// is (suffix and labels, e.g. `{reason="peer"}` or `_bucket{le="1"}`, value).
    pub fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (suffix, value) in samples {
            let _ = writeln!(self.0, "{name}{suffix} {value}");
        }
    }

    pub fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help, &[("", value)]);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// The server's page: the fields of the stats line and `--stats-json`.
pub fn server_page(r: &Report) -> String {
    let t = &r.totals;
    let mut e = Exposition::default();
    let c = "counter";
    let g = "gauge";
    e.one(
        "c10m_server_sessions_open",
        g,
        "Sessions held now.",
        t.sessions_open as f64,
    );
    e.one(
        "c10m_server_max_sessions",
        g,
        "Sessions this server admits.",
        r.max_sessions as f64,
    );
    e.one(
        "c10m_server_accepted_total",
        c,
        "Connections accepted.",
        t.accepted as f64,
    );
    e.one(
        "c10m_server_rejected_total",
        c,
        "Connections accepted and closed at once (over --max-sessions).",
        t.rejected as f64,
    );
    e.one(
        "c10m_server_shed_total",
        c,
        "Connections answered busy by the accept gate (rate limit or overload).",
        t.shed as f64,
    );
    e.one(
        "c10m_server_shed_lag_total",
        c,
        "Of shed: answered busy while the worker's loop lagged past --max-lag.",
        t.shed_lag as f64,
    );
    e.one(
        "c10m_server_lag_shedding_workers",
        g,
        "Workers answering new connections busy for loop lag now.",
        t.lag_shedding as f64,
    );
    e.one(
        "c10m_server_loop_lag_seconds",
        g,
        "Lag of the last wheel tick, the worst worker's.",
        t.loop_lag_us as f64 / 1e6,
    );
    e.one(
        "c10m_server_loop_lag_max_seconds",
        g,
        "Largest wheel-tick lag since start, the worst worker's.",
        t.loop_lag_max_us as f64 / 1e6,
    );
    let cl = &t.closed;
    e.family(
        "c10m_server_closed_total",
        c,
        "Sessions closed, by reason.",
        &[
            ("{reason=\"peer\"}", cl.peer as f64),
            ("{reason=\"evicted\"}", cl.evicted as f64),
            ("{reason=\"protocol\"}", cl.protocol as f64),
            ("{reason=\"reset\"}", cl.reset as f64),
            ("{reason=\"overflow\"}", cl.overflow as f64),
            ("{reason=\"shutdown\"}", cl.shutdown as f64),
        ],
    );
    e.one(
        "c10m_server_heartbeats_total",
        c,
        "Heartbeats (PING) answered.",
        t.heartbeats as f64,
    );
    e.one(
        "c10m_server_commands_total",
        c,
        "Commands answered.",
        t.commands as f64,
    );
    e.one(
        "c10m_server_bytes_in_total",
        c,
        "Bytes read.",
        t.bytes_in as f64,
    );
    e.one(
        "c10m_server_bytes_out_total",
        c,
        "Bytes written.",
        t.bytes_out as f64,
    );
    e.one(
        "c10m_server_spill_bytes",
        g,
        "Bytes held for partial frames and blocked writes.",
        t.spill_bytes as f64,
    );
    e.one(
        "c10m_server_accept_errors_fd_total",
        c,
        "Accepts that failed for want of descriptors (EMFILE/ENFILE).",
        t.accept_errors_fd as f64,
    );
    e.one(
        "c10m_server_recv_enobufs_total",
        c,
        "io_uring: multishot recvs ended because the provided-buffer ring ran dry (re-armed).",
        t.recv_enobufs as f64,
    );
    e.one(
        "c10m_server_recv_rearms_total",
        c,
        "io_uring: multishot recvs the kernel ended on an open session, re-armed.",
        t.recv_rearms as f64,
    );
    e.one(
        "c10m_server_rss_bytes",
        g,
        "VmRSS, summed over the server's processes.",
        r.rss_bytes as f64,
    );
    e.one(
        "c10m_server_rss_baseline_bytes",
        g,
        "VmRSS warm with 0 sessions, summed over the server's processes.",
        r.rss_baseline_bytes as f64,
    );
    e.one(
        "c10m_server_rss_bytes_per_session",
        g,
        "(VmRSS - baseline) / sessions open.",
        r.rss_bytes_per_session,
    );
    e.family(
        "c10m_server_cpu_seconds_total",
        c,
        "CPU time of the server's processes.",
        &[
            ("{mode=\"user\"}", r.cpu_user_s),
            ("{mode=\"system\"}", r.cpu_sys_s),
        ],
    );
    e.one(
        "c10m_server_procs",
        g,
        "Server processes summed here.",
        r.procs as f64,
    );
    e.one(
        "c10m_server_restarts_total",
        c,
        "Child processes restarted.",
        r.restarts as f64,
    );
    e.one(
        "c10m_server_sessions_lost_total",
        c,
        "Sessions open in children that died.",
        r.sessions_lost as f64,
    );
    e.one(
        "c10m_server_uptime_seconds",
        g,
        "Seconds since start.",
        r.uptime_s,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ProcessUsage, Snapshot};

    #[test]
    fn a_bare_port_binds_loopback() {
        assert_eq!(parse_addr("9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(parse_addr(":0").unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(parse_addr("0.0.0.0:9").unwrap().to_string(), "0.0.0.0:9");
        assert!(parse_addr("localhost").is_err());
    }

    #[test]
    fn a_scrape_gets_the_latest_page() {
        let board = MetricsBoard::default();
        let addr = serve("127.0.0.1:0".parse().unwrap(), board.clone()).unwrap();
        let w = Snapshot {
            sessions_open: 7,
            accepted: 9,
            shed_lag: 3,
            loop_lag_max_us: 250_000,
            recv_enobufs: 3,
            ..Snapshot::default()
        };
        board.publish(server_page(&Report::new(
            vec![w],
            ProcessUsage::default(),
            0,
        )));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\nc10m_server_sessions_open 7\n"), "{reply}");
        assert!(reply.contains("\nc10m_server_accepted_total 9\n"));
        assert!(
            reply.contains("\nc10m_server_shed_lag_total 3\n"),
            "{reply}"
        );
        assert!(reply.contains("\nc10m_server_loop_lag_max_seconds 0.25\n"));
        assert!(reply.contains("\nc10m_server_recv_enobufs_total 3\n"));
        assert!(reply.contains("\nc10m_server_recv_rearms_total 0\n"));
        assert!(reply.contains("c10m_server_closed_total{reason=\"peer\"} 0\n"));
        assert!(reply.contains("# TYPE c10m_server_accepted_total counter\n"));
    }
}
