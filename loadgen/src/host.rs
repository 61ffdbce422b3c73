//! Facts about this machine and its processes, read from /proc and
//! getrlimit: what summary.json records under `host`, and the MEASURING.md
//! probes (VmRSS, utime+stime, slab caches, MemAvailable).
#![forbid(unsafe_code)]

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

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
    /// `Some(order)`: this VM hands freed memory back to its hypervisor
    /// (see [`free_page_reporting`]); `None` on bare metal and on VMs that
    /// keep what they touched.
    pub free_page_reporting_order: Option<u32>,
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
            free_page_reporting_order: free_page_reporting(
                Path::new("/sys"),
                std::fs::read_to_string("/proc/buddyinfo")
                    .ok()
                    .and_then(|text| max_page_order(&text)),
            ),
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

/// virtio-balloon feature bit VIRTIO_BALLOON_F_REPORTING.
const BALLOON_F_REPORTING: usize = 5;
/// virtio device id of a memory balloon.
const VIRTIO_ID_BALLOON: &str = "0x0005";

/// Free page reporting under the sysfs root `sys`: `Some(order)` when a
/// virtio balloon negotiated VIRTIO_BALLOON_F_REPORTING and the kernel's
/// page_reporting is loaded, `order` being its page_reporting_order (free
/// blocks of 2^order pages and up are reported). An order above
/// `max_order`, the buddy allocator's largest block ([`max_page_order`]),
/// reports nothing and is `None`: raising it to `max_order + 1`
/// (`echo 11 > /sys/module/page_reporting/parameters/page_reporting_order`
/// on x86-64) is how a guest keeps its memory (results/million/page-reporting).
///
/// Such a VM gives the memory it frees back to the hypervisor within
/// seconds, and the next write to it is a hypervisor fault: measured on
/// the 2-vCPU test VM, ~10-16 us a page against 1.5-3 us for a page still
/// backed. A campaign frees ~9 GB of socket slab per million connections
/// at its end, so every campaign's ramp pays for it again, and the ramp
/// measures the VM as much as the code (results/million/README.md).
pub fn free_page_reporting(sys: &Path, max_order: Option<u32>) -> Option<u32> {
    let order: u32 =
        std::fs::read_to_string(sys.join("module/page_reporting/parameters/page_reporting_order"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
    let devices = std::fs::read_dir(sys.join("bus/virtio/devices")).ok()?;
    let reporting = devices.flatten().any(|dev| {
        let read = |name| std::fs::read_to_string(dev.path().join(name)).unwrap_or_default();
        // `features`: one character per negotiated feature bit, bit 0 first.
        read("device").trim() == VIRTIO_ID_BALLOON
            && read("features").as_bytes().get(BALLOON_F_REPORTING) == Some(&b'1')
    });
    (reporting && max_order.is_none_or(|max| order <= max)).then_some(order)
}

/// The largest block order of the buddy allocator: /proc/buddyinfo has a
/// column per order from 0.
pub fn max_page_order(buddyinfo: &str) -> Option<u32> {
    // "Node 0, zone   Normal  23325  10690 ... 801"
    let columns = buddyinfo.lines().next()?.split_whitespace().skip(4).count();
    u32::try_from(columns).ok()?.checked_sub(1)
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

    /// A sysfs tree with a balloon whose features are `features` beside a
    /// console, and page_reporting at `order` if given.
    fn sysfs(features: &str, order: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let dev = |name: &str, id: &str, features: &str| {
            let path = dir.path().join("bus/virtio/devices").join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("device"), format!("{id}\n")).unwrap();
            std::fs::write(path.join("features"), format!("{features}\n")).unwrap();
        };
        dev("virtio0", "0x0003", "0000011000");
        dev("virtio1", "0x0005", features);
        if let Some(order) = order {
            let params = dir.path().join("module/page_reporting/parameters");
            std::fs::create_dir_all(&params).unwrap();
            std::fs::write(params.join("page_reporting_order"), format!("{order}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn detects_a_balloon_that_reports_free_pages() {
        // This test VM's balloon: stats, deflate-on-OOM, poison, reporting.
        let vm = sysfs("0110010100000000000000000000000010000000", Some("9"));
        assert_eq!(free_page_reporting(vm.path(), Some(10)), Some(9));
        assert_eq!(free_page_reporting(vm.path(), None), Some(9));
        // Raised above the largest block: nothing is ever reported.
        let kept = sysfs("0110010100000000000000000000000010000000", Some("11"));
        assert_eq!(free_page_reporting(kept.path(), Some(10)), None);
        assert_eq!(free_page_reporting(kept.path(), Some(13)), Some(11));
        // The same balloon without bit 5 (reporting not negotiated).
        let quiet = sysfs("0110000100000000000000000000000010000000", Some("9"));
        assert_eq!(free_page_reporting(quiet.path(), Some(10)), None);
        // Reporting negotiated but page_reporting not in this kernel.
        let no_module = sysfs("0110010100000000000000000000000010000000", None);
        assert_eq!(free_page_reporting(no_module.path(), Some(10)), None);
        // An unreadable order is no answer rather than a guess.
        let garbled = sysfs("0110010100000000000000000000000010000000", Some("x"));
        assert_eq!(free_page_reporting(garbled.path(), Some(10)), None);
        // No virtio bus at all: bare metal.
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(free_page_reporting(bare.path(), Some(10)), None);
    }

    #[test]
    fn the_largest_block_order_is_the_last_buddyinfo_column() {
        let x86 = "Node 0, zone      DMA      0      0      0      0      0      0      0      \
                   0      1      1      3 \nNode 0, zone   Normal  23325  10690   3597   1217    \
                   689    481    388    265    200    123    801 \n";
        assert_eq!(max_page_order(x86), Some(10));
        assert_eq!(max_page_order("Node 0, zone Normal 5 4 3\n"), Some(2));
        assert_eq!(max_page_order(""), None);
        assert_eq!(max_page_order("Node 0, zone Normal\n"), None);
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
