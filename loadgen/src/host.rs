//! Facts about this machine and its processes, read from /proc and
//! getrlimit: what summary.json records under `host`, and the MEASURING.md
//! probes (VmRSS, utime+stime, slab caches, MemAvailable).
#![forbid(unsafe_code)]

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde::Serialize;
use std::collections::BTreeMap;

/// Sysctls that bound connection density; recorded with every result.
pub const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_local_port_range",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "fs.file-max",
    "fs.nr_open",
    "net.netfilter.nf_conntrack_max",
];

/// Slab caches that grow with TCP connections (MEASURING.md).
pub const CONNECTION_SLABS: &[&str] = &[
    "TCP",
    "request_sock_TCP",
    "tw_sock_TCP",
    "tcp_bind_bucket",
    "tcp_bind2_bucket",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "eventpoll_pwq",
    "skbuff_head_cache",
    "lsm_file_cache",
    "lsm_inode_cache",
    // The io_uring backend's armed multishot recv: one request per session
    // (~256 B each, measured at 100 k sessions).
    "io_kiocb",
];

/// `host{}` of summary.json.
#[derive(Debug, Clone, Serialize)]
pub struct HostFacts {
    pub kernel: String,
    pub cores: usize,
    pub ram_bytes: u64,
    pub rlimit_nofile_soft: u64,
    pub rlimit_nofile_hard: u64,
    pub sysctl: BTreeMap<String, String>,
}

impl HostFacts {
    pub fn probe() -> HostFacts {
        let (soft, hard) = nofile();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        HostFacts {
            kernel,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_bytes: meminfo_kb("MemTotal").unwrap_or(0) * 1024,
            rlimit_nofile_soft: soft,
            rlimit_nofile_hard: hard,
            sysctl: SYSCTLS
                .iter()
                .filter_map(|k| sysctl(k).map(|v| (k.to_string(), v)))
                .collect(),
        }
    }

    /// The ephemeral port range (default 32768-60999 if unreadable).
    pub fn port_range(&self) -> (u16, u16) {
        self.sysctl
            .get("net.ipv4.ip_local_port_range")
            .and_then(|v| {
                let mut it = v.split_whitespace().map(|p| p.parse::<u16>());
                Some((it.next()?.ok()?, it.next()?.ok()?))
            })
            .unwrap_or((32_768, 60_999))
    }
}

/// A sysctl's value with whitespace collapsed, `None` if absent.
pub fn sysctl(key: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// RLIMIT_NOFILE (soft, hard).
pub fn nofile() -> (u64, u64) {
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024))
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let (soft, hard) = nofile();
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

fn meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    field_kb(&text, key)
}

fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// MemAvailable in bytes.
pub fn mem_available() -> Option<u64> {
    meminfo_kb("MemAvailable").map(|kb| kb * 1024)
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kb(&text, "VmRSS").map(|kb| kb * 1024)
}

/// Proportional set size of a process in bytes (/proc/PID/smaps_rollup):
/// its private pages plus its share of each page it shares with others
/// (program text, a --procs supervisor's pages its children inherited), so
/// a process tree's PSS sums to the memory the tree really takes, where
/// VmRSS counts every shared page once per process. Walks every mapping:
/// read it for a sample, not every second.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kb(&text, "Pss").map(|kb| kb * 1024)
}

/// RssAnon of a process in bytes (VmRSS less file-backed and shared
/// pages: no program text paged in by code paths first run after a
/// baseline).
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kb(&text, "RssAnon").map(|kb| kb * 1024)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((utime + stime) as f64 / tck)
}

/// `root` and every process descended from it (a `c10m-server --procs`
/// supervisor and its children), from the parent field of /proc/PID/stat;
/// `root` first. Empty when `root` is gone.
pub fn process_tree(root: u32) -> Vec<u32> {
    if !std::path::Path::new(&format!("/proc/{root}")).exists() {
        return Vec::new();
    }
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The parent pid in a /proc/PID/stat line (the field after the state,
/// after the parenthesised command name, which may contain anything).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes (active objects × object size) of every cache in /proc/slabinfo;
/// `None` if it cannot be read (not root). `CONNECTION_SLABS` names the
/// ones that grow with connections; the rest show what else grew.
pub fn slab_bytes() -> Option<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    Some(parse_slabinfo(&text))
}

fn parse_slabinfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?;
            if name.starts_with('#') || name == "slabinfo" {
                return None;
            }
            let active: u64 = f.next()?.parse().ok()?;
            let _total = f.next()?;
            let size: u64 = f.next()?.parse().ok()?;
            Some((name.to_string(), active * size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let facts = HostFacts::probe();
        assert!(facts.cores >= 1 && facts.ram_bytes > 0);
        let (lo, hi) = facts.port_range();
        assert!(lo < hi);
    }

    #[test]
    fn parses_slabinfo_lines() {
        let text = "slabinfo - version: 2.1\n# name <active_objs> ...\n\
                    TCP 26 30 2368 13 8 : tunables 0 0 0 : slabdata 2 2 0\n\
                    filp 490 512 192 21 1 : tunables 0 0 0 : slabdata 1 1 0\n\
                    kmalloc-64 9 9 64 64 1 : tunables 0 0 0 : slabdata 1 1 0\n";
        let m = parse_slabinfo(text);
        assert_eq!(m.get("TCP"), Some(&(26 * 2368)));
        assert_eq!(m.get("filp"), Some(&(490 * 192)));
        assert_eq!(m.get("kmalloc-64"), Some(&(9 * 64)));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn walks_this_process_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?} lacks {}", child.id());
        assert_eq!(parent_of("7 (a) b) S 42 7"), Some(42));
        assert!(process_tree(u32::MAX).is_empty());
    }
}
