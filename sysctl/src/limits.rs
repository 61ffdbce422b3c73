//! The RLIMIT_NOFILE side of tuning, which no sysctl sets: a systemd
//! drop-in (`LimitNOFILE=`) for services and a pam_limits line for login
//! sessions, sized for a number of sessions per process.
//!
//! Sizing: one descriptor per session plus [`FD_HEADROOM`] for the
//! process's own (listeners, epoll, timers, stdio, logs). Either limit is
//! capped by fs.nr_open, which must be raised first when smaller: systemd
//! refuses a LimitNOFILE above it, and pam_limits fails the login.

use crate::units::grouped;

/// Descriptors a process needs besides its sessions.
pub const FD_HEADROOM: u64 = 100;

/// RLIMIT_NOFILE for a process holding `sessions`.
pub fn nofile_for(sessions: u64) -> u64 {
    sessions.saturating_add(FD_HEADROOM)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct LimitsRequest {
    pub sessions: u64,
    /// Processes sharing the sessions (the supervisor's K).
    pub processes: u64,
    /// systemd unit the drop-in is for.
    pub unit: String,
    /// User (or `*`) for the limits.conf line.
    pub user: String,
}

/// The drop-in, the limits.conf lines and the fs.nr_open check, as text
/// ready to paste.
pub fn render(request: &LimitsRequest, nr_open: Option<u64>) -> String {
    let processes = request.processes.max(1);
    let per_process = request.sessions.div_ceil(processes);
    let limit = nofile_for(per_process);
    let unit = request.unit.trim_end_matches(".service");
    let split = if processes > 1 {
        format!(
            " ({} sessions over {processes} processes)",
            grouped(request.sessions)
        )
    } else {
        String::new()
    };
    let mut out = format!(
        "# RLIMIT_NOFILE for {} sessions per process{split}:\n\
         # {} = one descriptor per session + {FD_HEADROOM} for listeners, epoll, stdio, logs.\n\n",
        grouped(per_process),
        grouped(limit),
    );
    out.push_str(&format!(
        "# systemd drop-in: /etc/systemd/system/{unit}.service.d/10-nofile.conf\n\
         # then: systemctl daemon-reload && systemctl restart {unit}\n\
         [Service]\n\
         LimitNOFILE={limit}\n\n"
    ));
    out.push_str(
        "# pam_limits, for login sessions (ssh, su): /etc/security/limits.d/90-c10m.conf\n",
    );
    out.push_str(&format!("{:<6}  soft  nofile  {limit}\n", request.user));
    out.push_str(&format!("{:<6}  hard  nofile  {limit}\n", request.user));
    if request.user == "*" {
        out.push_str("# `*` does not match root in pam_limits; root needs its own lines:\n");
        out.push_str(&format!(
            "root    soft  nofile  {limit}\nroot    hard  nofile  {limit}\n"
        ));
    }
    out.push('\n');
    out.push_str(&match nr_open {
        Some(nr_open) if nr_open >= limit => format!(
            "# fs.nr_open is {} here, >= {}: ok\n",
            grouped(nr_open),
            grouped(limit)
        ),
        Some(nr_open) => format!(
            "# fs.nr_open is {} here, below {}: raise it first (sysctl -w fs.nr_open={limit}, \
             or apply a profile that sets it)\n",
            grouped(nr_open),
            grouped(limit)
        ),
        None => format!("# needs fs.nr_open >= {limit}\n"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(sessions: u64, processes: u64, user: &str) -> LimitsRequest {
        LimitsRequest {
            sessions,
            processes,
            unit: "c10m-server.service".into(),
            user: user.into(),
        }
    }

    #[test]
    fn sizes_per_process_with_headroom() {
        let text = render(&request(1_000_000, 1, "c10m"), Some(1_048_576));
        assert!(text.contains("[Service]\nLimitNOFILE=1000100\n"), "{text}");
        assert!(text.contains("/etc/systemd/system/c10m-server.service.d/10-nofile.conf"));
        assert!(text.contains("c10m    hard  nofile  1000100"), "{text}");
        assert!(text.contains(">= 1,000,100: ok"));
    }

    #[test]
    fn splits_over_processes_and_flags_small_nr_open() {
        let text = render(&request(1_000_000, 52, "*"), Some(10_000));
        assert!(text.contains("LimitNOFILE=19331\n"), "{text}");
        assert!(text.contains("root    soft  nofile  19331"));
        assert!(text.contains("below 19,331: raise it first"));
    }
}
