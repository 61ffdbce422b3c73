//! Live progress: an indicatif bar on a terminal, one plain line per second
//! otherwise (CI logs), or nothing. Always on stderr: stdout is for results
//! (and, in a child process, for the pipe to the parent).
#![forbid(unsafe_code)]

use crate::results::Row;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// See the module docs.
pub enum Progress {
    Bar(ProgressBar),
    Plain,
    Off,
}

impl Progress {
    /// `mode`: auto, bar, plain or off.
    pub fn new(mode: &str, target: u64) -> Progress {
        let tty = std::io::stderr().is_terminal();
        match mode {
            "off" => Progress::Off,
            "plain" => Progress::Plain,
            "bar" | "auto" if tty || mode == "bar" => {
                let bar = ProgressBar::with_draw_target(Some(target), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} sessions  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                Progress::Bar(bar)
            }
            _ => Progress::Plain,
        }
    }

    pub fn update(&self, row: &Row) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(row.sessions_open);
                bar.set_message(message(row));
            }
            Progress::Plain => eprintln!(
                "t={:>4}s {:<6} open={} {}",
                row.t_s,
                row.phase,
                row.sessions_open,
                message(row)
            ),
            Progress::Off => {}
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

fn message(row: &Row) -> String {
    format!(
        "{} conn/s  {} hb/s  rtt p50={}us p99={}us  errors={}",
        row.connects_per_s,
        row.heartbeats_answered_per_s,
        row.rtt_p50_us,
        row.rtt_p99_us,
        row.errors_total
    )
}
