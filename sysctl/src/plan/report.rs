//! The plan as text: the request, the host, every limit smallest first,
//! which binds, the verdict, what to change, and the process split.

use super::{Plan, Role, Scope};
use crate::table::Table;
use crate::units::{bytes, grouped};

impl Plan {
    pub fn render(&self) -> String {
        let request = &self.request;
        let facts = &self.facts;
        let role = match request.role {
            Role::Server => "server (this host accepts)",
            Role::Loadgen => "loadgen (this host connects)",
            Role::Both => "both (server and loadgen on this host, over loopback)",
        };
        let mut out = format!(
            "plan: {} sessions, role {role}\n\
             per session: {} socket(s) x {} B kernel + {} x {} B user = {} B\n\n",
            grouped(request.sessions),
            self.sockets_per_session,
            grouped(request.per_socket_bytes),
            self.sockets_per_session,
            request.user_bytes_per_end,
            grouped(self.bytes_per_session),
        );
        out.push_str(&format!(
            "host: {} RAM ({} available), page {} B, RLIMIT_NOFILE soft {} / hard {}\n\n",
            bytes(facts.mem_total_bytes),
            bytes(facts.mem_available_bytes),
            facts.page_size_bytes,
            grouped(facts.nofile_soft),
            grouped(facts.nofile_hard),
        ));

        let mut table = Table::new(&["limit", "setting", "sessions that fit", "scope"]);
        for limit in &self.limits {
            let scope = match limit.scope {
                Scope::PerProcess => "per process",
                Scope::Host => "host",
                Scope::HostIfTracked => "host, if tracked",
            };
            table.row(vec![
                limit.name.to_string(),
                limit.setting.clone(),
                grouped(limit.sessions),
                scope.to_string(),
            ]);
        }
        out.push_str("limits, smallest first:\n");
        out.push_str(&table.render(2));
        let find = |kind| self.limits.iter().find(|limit| limit.kind == kind);
        let Some(first) = find(self.binding) else {
            return out;
        };
        let host = find(self.host_binding).unwrap_or(first);
        let per_process = if first.scope == Scope::PerProcess {
            " per process"
        } else {
            ""
        };
        out.push_str(&format!(
            "\nbinds first: {} ({} sessions{per_process})\n",
            first.name,
            grouped(first.sessions)
        ));
        if first.scope == Scope::PerProcess {
            out.push_str(&format!(
                "host-wide, {} binds first ({} sessions)\n",
                host.name,
                grouped(host.sessions)
            ));
        }
        out.push_str(&format!("verdict: {}\n", self.verdict()));

        out.push_str("\nwhat to change:\n");
        for (i, change) in self.changes.iter().enumerate() {
            out.push_str(&format!("  {}. {change}\n", i + 1));
        }
        out.push_str("\nprocesses:\n");
        for split in &self.processes {
            out.push_str(&format!(
                "  {:<8} {} x at most {} sessions (RLIMIT_NOFILE >= {} each)\n",
                split.role,
                split.processes,
                grouped(split.sessions_each),
                split.nofile_each
            ));
        }
        out.push_str("\nnotes:\n");
        for note in &self.notes {
            out.push_str(&format!("  - {note}\n"));
        }
        out
    }

    /// One sentence: does it fit, and how.
    pub fn verdict(&self) -> String {
        let n = grouped(self.request.sessions);
        if self.fits_as_is {
            return format!("{n} sessions fit as the host stands, one process per role");
        }
        let total: u64 = self.processes.iter().map(|split| split.processes).sum();
        if self.fits_with_processes {
            let raise = if self.per_process_max >= self.request.sessions {
                "once RLIMIT_NOFILE is raised (see below)".to_string()
            } else {
                format!("split over {total} processes")
            };
            return format!("{n} sessions fit on this host {raise}");
        }
        let memory = self
            .limits
            .iter()
            .find(|limit| limit.kind == super::LimitKind::Memory)
            .map_or(0, |limit| limit.sessions);
        if memory >= self.request.sessions {
            format!(
                "{n} sessions do NOT fit as the host stands ({} allows {}); \
                 they fit after the changes below",
                self.limits
                    .iter()
                    .find(|limit| limit.kind == self.host_binding)
                    .map_or("a host limit", |limit| limit.name),
                grouped(self.host_capacity)
            )
        } else {
            format!(
                "{n} sessions do NOT fit on this host: memory holds at most {}, \
                 whatever the sysctls",
                grouped(memory)
            )
        }
    }
}
