//! Host facts: the figures `plan` computes from, gathered in one place so a
//! test (or a planner for another host) can feed fixed ones.
//!
//! [`HostFacts::probe`] reads this host: RAM from /proc/meminfo, the
//! RLIMIT_NOFILE of this process, whether it may raise its hard limit
//! (CAP_SYS_RESOURCE, bit 24 of CapEff in /proc/self/status — checked
//! rather than tried, so planning never changes the process), and the
//! sysctls from the given proc root. `plan --json` prints the facts it used;
//! `plan --facts FILE` reads them back, so a plan can be reproduced or made
//! for a host that is not this one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::procfs::{ProcError, SysctlStore};
use crate::value::{self, PortRange, PortSet, ValueError};

/// CAP_SYS_RESOURCE: lets a process raise its hard RLIMIT_NOFILE (up to
/// fs.nr_open).
const CAP_SYS_RESOURCE: u32 = 24;

/// Everything `plan` needs to know about a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub page_size_bytes: u64,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// Whether this process may raise its hard RLIMIT_NOFILE.
    pub nofile_hard_raisable: bool,
    pub nr_open: u64,
    pub file_max: u64,
    /// Files open now, host-wide (fs.file-nr, first field).
    pub files_open: u64,
    pub port_range: PortRange,
    pub reserved_ports: PortSet,
    /// net.ipv4.tcp_mem in pages: min, pressure, max.
    pub tcp_mem_pages: [u64; 3],
    /// `None`: nf_conntrack not loaded.
    pub conntrack_max: Option<u64>,
    pub conntrack_count: Option<u64>,
    pub epoll_max_user_watches: Option<u64>,
}

/// A host fact could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FactsError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: unexpected value `{raw}`: {source}")]
    Parse {
        what: String,
        raw: String,
        source: ValueError,
    },
    #[error("{path}: no `{field}` line")]
    MissingField { path: PathBuf, field: &'static str },
    #[error("{path} is not a valid facts file: {source}")]
    FactsFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("getrlimit(RLIMIT_NOFILE) failed: {0}")]
    Rlimit(nix::Error),
}

impl HostFacts {
    /// Gather facts about this host; sysctls come from `store`.
    pub fn probe(store: &dyn SysctlStore) -> Result<Self, FactsError> {
        let meminfo_path = Path::new("/proc/meminfo");
        let meminfo = read_text(meminfo_path)?;
        let field = |name| meminfo_kib(&meminfo, name).map(|kib| kib * 1024);
        let missing = |field| FactsError::MissingField {
            path: meminfo_path.into(),
            field,
        };
        let (nofile_soft, nofile_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_err(FactsError::Rlimit)?;
        let status = read_text(Path::new("/proc/self/status"))?;
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        Ok(HostFacts {
            mem_total_bytes: field("MemTotal").ok_or_else(|| missing("MemTotal"))?,
            mem_available_bytes: field("MemAvailable").ok_or_else(|| missing("MemAvailable"))?,
            page_size_bytes: page_size,
            nofile_soft,
            nofile_hard,
            nofile_hard_raisable: has_capability(&status, CAP_SYS_RESOURCE),
            nr_open: first_number(store, "fs.nr_open")?,
            file_max: first_number(store, "fs.file-max")?,
            files_open: first_number(store, "fs.file-nr")?,
            port_range: parsed(store, "net.ipv4.ip_local_port_range", PortRange::parse)?,
            reserved_ports: parsed(store, "net.ipv4.ip_local_reserved_ports", PortSet::parse)?,
            tcp_mem_pages: parsed(store, "net.ipv4.tcp_mem", |raw| {
                let values = value::numbers(raw)?;
                <[u64; 3]>::try_from(values.as_slice()).map_err(|_| ValueError::WrongCount {
                    expected: 3,
                    found: values.len(),
                })
            })?,
            conntrack_max: optional(first_number(store, "net.netfilter.nf_conntrack_max"))?,
            conntrack_count: optional(first_number(store, "net.netfilter.nf_conntrack_count"))?,
            epoll_max_user_watches: optional(first_number(store, "fs.epoll.max_user_watches"))?,
        })
    }

    /// Read facts saved by `plan --json` (its `facts` object) or written by
    /// hand.
    pub fn from_file(path: &Path) -> Result<Self, FactsError> {
        let text = read_text(path)?;
        let invalid = |source| FactsError::FactsFile {
            path: path.into(),
            source,
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
        let facts = json.get("facts").cloned().unwrap_or(json);
        serde_json::from_value(facts).map_err(invalid)
    }
}

fn read_text(path: &Path) -> Result<String, FactsError> {
    std::fs::read_to_string(path).map_err(|source| FactsError::Io {
        path: path.into(),
        source,
    })
}

fn parsed<T>(
    store: &dyn SysctlStore,
    key: &str,
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> Result<T, FactsError> {
    let raw = store.read(key)?;
    parse(&raw).map_err(|source| FactsError::Parse {
        what: key.to_string(),
        raw,
        source,
    })
}

fn first_number(store: &dyn SysctlStore, key: &str) -> Result<u64, FactsError> {
    parsed(store, key, |raw| {
        value::numbers(raw)?
            .first()
            .copied()
            .ok_or_else(|| ValueError::Empty {
                expected: "a number".to_string(),
            })
    })
}

/// A missing key is `None`; other errors stay errors.
fn optional(result: Result<u64, FactsError>) -> Result<Option<u64>, FactsError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(FactsError::Proc(ProcError::Missing { .. })) => Ok(None),
        Err(err) => Err(err),
    }
}

/// `MemTotal:  24683584 kB` → 24683584.
fn meminfo_kib(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (field, rest) = line.split_once(':')?;
        if field != name {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether bit `cap` is set in the `CapEff:` line of /proc/PID/status.
fn has_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcRoot;

    #[test]
    fn parses_meminfo_fields() {
        let text = "MemTotal:       24683584 kB\nMemFree: 1 kB\nMemAvailable:   24375668 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_683_584));
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(24_375_668));
        assert_eq!(meminfo_kib(text, "Mem"), None);
    }

    #[test]
    fn reads_cap_sys_resource_from_cap_eff() {
        // This VM: every capability but CAP_SYS_RESOURCE.
        assert!(!has_capability(
            "CapEff:\t000001fffeffffff\n",
            CAP_SYS_RESOURCE
        ));
        assert!(has_capability(
            "CapEff:\t000001ffffffffff\n",
            CAP_SYS_RESOURCE
        ));
        assert!(!has_capability("CapPrm:\tffffffff\n", CAP_SYS_RESOURCE));
    }

    #[test]
    fn probes_the_live_host() {
        let facts = HostFacts::probe(&ProcRoot::live()).unwrap();
        assert!(facts.mem_total_bytes >= facts.mem_available_bytes);
        assert!(facts.nofile_soft <= facts.nofile_hard);
        assert!(facts.port_range.port_count() > 0);
    }

    #[test]
    fn facts_file_accepts_plan_json_or_bare_facts() {
        let facts = HostFacts::probe(&ProcRoot::live()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare.json");
        std::fs::write(&bare, serde_json::to_string(&facts).unwrap()).unwrap();
        assert_eq!(HostFacts::from_file(&bare).unwrap(), facts);
        let wrapped = dir.path().join("plan.json");
        let json = serde_json::json!({ "facts": facts, "sessions": 1 });
        std::fs::write(&wrapped, json.to_string()).unwrap();
        assert_eq!(HostFacts::from_file(&wrapped).unwrap(), facts);
    }
}
