//! End-to-end tests of the `c10m-sysctl` binary against temporary
//! directories standing in for /proc/sys, plus one test on the real kernel
//! (root only; skipped with a message otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_c10m-sysctl");

/// The keys of the shipped profiles, at this project's test VM defaults.
const VM_DEFAULTS: &[(&str, &str)] = &[
    ("fs.nr_open", "1048576"),
    ("fs.file-max", "2466116"),
    ("fs.file-nr", "362\t0\t2466116"),
    ("fs.epoll.max_user_watches", "5491378"),
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_max_syn_backlog", "2048"),
    ("net.ipv4.tcp_child_ehash_entries", "0"),
    ("net.ipv4.tcp_no_metrics_save", "0"),
    ("net.core.netdev_max_backlog", "1000"),
    ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ("net.ipv4.ip_local_reserved_ports", ""),
    ("net.ipv4.tcp_mem", "287892\t383858\t575784"),
    ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
    ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
    ("net.ipv4.tcp_tw_reuse", "2"),
    ("net.netfilter.nf_conntrack_max", "262144"),
    ("net.netfilter.nf_conntrack_count", "0"),
];

/// A temporary directory with `sys/` laid out like /proc/sys.
struct StandIn {
    dir: tempfile::TempDir,
}

impl StandIn {
    fn new(values: &[(&str, &str)]) -> Self {
        let stand_in = StandIn {
            dir: tempfile::tempdir().unwrap(),
        };
        for (key, value) in values {
            stand_in.set(key, value);
        }
        stand_in
    }

    fn vm() -> Self {
        StandIn::new(VM_DEFAULTS)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root().join(key.replace('.', "/"))
    }

    fn set(&self, key: &str, value: &str) {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{value}\n")).unwrap();
    }

    /// The value with whitespace runs as single spaces: the tool writes
    /// `a b c` where a kernel prints `a\tb\tc`, and both mean the same.
    fn get(&self, key: &str) -> String {
        std::fs::read_to_string(self.path(key))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every value held in a plain file (not the symlinks tests plant), for
    /// before/after comparisons.
    fn snapshot(&self) -> Vec<(String, String)> {
        VM_DEFAULTS
            .iter()
            .filter(|(key, _)| {
                std::fs::symlink_metadata(self.path(key)).is_ok_and(|meta| meta.is_file())
            })
            .map(|(key, _)| (key.to_string(), self.get(key)))
            .collect()
    }

    /// With nothing saved, rollback succeeds, says so, and changes nothing.
    fn assert_rollback_is_a_no_op(&self, before: &[(String, String)]) {
        let rollback = self.run(&["rollback"]);
        assert_eq!(rollback.code, 0, "{}", rollback.stderr);
        assert!(rollback.stdout.contains("nothing to roll back"));
        assert_eq!(self.snapshot(), before);
    }

    fn default_state(&self) -> PathBuf {
        self.dir.path().join("sys.backup.json")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Run the binary with `--proc-root` set to this stand-in.
    fn run(&self, args: &[&str]) -> Run {
        let root = self.root();
        let mut all = vec!["--proc-root", root.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&all)
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn run(args: &[&str]) -> Run {
    let output = Command::new(BIN).args(args).output().unwrap();
    let result = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !result.stderr.contains("panicked"),
        "the user saw a panic: {}",
        result.stderr
    );
    result
}

#[test]
fn check_exit_codes_and_json() {
    let stand_in = StandIn::vm();
    let mismatch = stand_in.run(&["check", "loopback-testbed"]);
    assert_eq!(mismatch.code, 1, "{}", mismatch.stdout);
    assert!(mismatch.stdout.contains("MISMATCH"));
    assert!(mismatch.stdout.contains("13 of 13 keys differ"));

    let json = stand_in
        .run(&["check", "loopback-testbed", "--json"])
        .json();
    assert_eq!(json["ok"], false);
    let somaxconn = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == "net.core.somaxconn")
        .unwrap();
    assert_eq!(somaxconn["want"], "65535");
    assert_eq!(somaxconn["have"], "4096");

    let profile = stand_in.file("one.conf", "# why: 65,535\nnet.core.somaxconn = 65535\n");
    stand_in.set("net.core.somaxconn", "65535");
    let ok = stand_in.run(&["check", profile.to_str().unwrap()]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    assert!(ok.stdout.contains("all 1 keys match"));
}

#[test]
fn diff_profiles_and_kernel() {
    let stand_in = StandIn::vm();
    let two = stand_in.run(&["diff", "loopback-testbed", "c10m-server"]);
    assert_eq!(two.code, 1);
    assert!(two.stdout.contains("fs.nr_open") && two.stdout.contains("10485760"));
    assert!(
        !two.stdout.contains("net.core.somaxconn"),
        "equal keys are not listed"
    );

    let json = stand_in
        .run(&["diff", "loadgen", "c10m-server", "--json"])
        .json();
    assert!(json["differences"].as_array().unwrap().len() > 1);

    let kernel = stand_in.run(&["diff", "loopback-testbed"]);
    assert_eq!(kernel.code, 1);
    assert!(kernel.stdout.contains("kernel ("));
    assert!(kernel.stdout.contains("32768 60999"));
}

#[test]
fn apply_then_rollback_twice_restores_everything() {
    let stand_in = StandIn::vm();
    let before = stand_in.snapshot();

    let dry = stand_in.run(&["apply", "loopback-testbed", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry
        .stdout
        .contains("would set net.core.somaxconn = 65535 (was 4096)"));
    assert_eq!(stand_in.snapshot(), before, "dry run wrote something");
    assert!(!stand_in.default_state().exists());

    let applied = stand_in.run(&["apply", "loopback-testbed"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(applied.stdout.contains("13 keys changed"));
    assert_eq!(
        stand_in.get("net.ipv4.ip_local_reserved_ports"),
        "7000-7099"
    );
    assert!(stand_in.default_state().exists(), "state beside the root");
    assert_eq!(stand_in.run(&["check", "loopback-testbed"]).code, 0);

    let again = stand_in.run(&["apply", "loopback-testbed"]);
    assert!(
        again.stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );

    let rolled = stand_in.run(&["rollback"]);
    assert_eq!(rolled.code, 0, "{}", rolled.stderr);
    assert!(rolled.stdout.contains("restored net.core.somaxconn = 4096"));
    assert_eq!(stand_in.snapshot(), before);
    assert!(!stand_in.default_state().exists());

    stand_in.assert_rollback_is_a_no_op(&before);
}

#[test]
fn state_flag_overrides_the_default_location() {
    let stand_in = StandIn::vm();
    let state = stand_in.dir.path().join("elsewhere/state.json");
    let state = state.to_str().unwrap();
    assert_eq!(
        stand_in.run(&["apply", "loadgen", "--state", state]).code,
        0
    );
    assert!(Path::new(state).exists() && !stand_in.default_state().exists());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    assert_eq!(saved["profiles"][0], "loadgen.conf");
    // Optional conntrack key present here, so it was applied and saved.
    assert!(saved["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["key"] == "net.netfilter.nf_conntrack_max" && e["old"] == "262144"));
    assert_eq!(stand_in.run(&["rollback", "--state", state]).code, 0);
    assert_eq!(stand_in.get("net.ipv4.tcp_tw_reuse"), "2");
}

#[test]
fn failed_write_mid_apply_restores_what_changed() {
    let stand_in = StandIn::vm();
    // The third key of loopback-testbed becomes a read-only proc file:
    // reading works, writing fails with EACCES even for root.
    std::fs::remove_file(stand_in.path("net.core.somaxconn")).unwrap();
    std::os::unix::fs::symlink("/proc/sys/fs/file-nr", stand_in.path("net.core.somaxconn"))
        .unwrap();
    let before = stand_in.snapshot();

    let failed = stand_in.run(&["apply", "loopback-testbed"]);
    assert_eq!(failed.code, 2, "{}", failed.stdout);
    assert!(
        failed
            .stderr
            .contains("apply stopped at net.core.somaxconn: permission denied"),
        "{}",
        failed.stderr
    );
    assert!(
        failed
            .stderr
            .contains("restored the old value of fs.file-max, fs.nr_open"),
        "{}",
        failed.stderr
    );
    assert_eq!(stand_in.snapshot(), before, "earlier keys not restored");
    assert_eq!(stand_in.get("net.ipv4.tcp_mem"), "287892 383858 575784");
    assert!(!stand_in.default_state().exists(), "state file left behind");

    stand_in.assert_rollback_is_a_no_op(&before);
}

#[test]
fn failed_write_after_an_earlier_apply_keeps_that_apply_for_rollback() {
    let stand_in = StandIn::vm();
    let before = stand_in.snapshot();
    let first = stand_in.file("first.conf", "# 8,192 for the test\nfs.nr_open = 8192\n");
    assert_eq!(stand_in.run(&["apply", first.to_str().unwrap()]).code, 0);
    let blocked = stand_in.path("fs.file-max");
    std::fs::remove_file(&blocked).unwrap();
    std::os::unix::fs::symlink("/proc/sys/fs/file-nr", &blocked).unwrap();

    let failed = stand_in.run(&["apply", "loopback-testbed"]);
    assert_eq!(failed.code, 2);
    assert_eq!(stand_in.get("fs.nr_open"), "8192", "the first apply stays");
    std::fs::remove_file(&blocked).unwrap();
    stand_in.set("fs.file-max", "2466116");

    assert_eq!(stand_in.run(&["rollback"]).code, 0);
    assert_eq!(stand_in.snapshot(), before);
}

#[test]
fn unreadable_key_stops_apply_before_any_write() {
    let stand_in = StandIn::vm();
    std::fs::remove_file(stand_in.path("net.ipv4.tcp_mem")).unwrap();
    std::fs::create_dir(stand_in.path("net.ipv4.tcp_mem")).unwrap();
    let before = stand_in.snapshot();
    let failed = stand_in.run(&["apply", "loopback-testbed"]);
    assert_eq!(failed.code, 2);
    assert!(
        failed.stderr.contains("net.ipv4.tcp_mem"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("nothing was written"),
        "{}",
        failed.stderr
    );
    assert_eq!(stand_in.snapshot(), before);
}

#[test]
fn malformed_profiles_name_file_and_line_and_write_nothing() {
    let stand_in = StandIn::vm();
    let before = stand_in.snapshot();
    let cases = [
        ("typo.conf", "# c\nfs.nr_open = 2097152\nnet.ipv4.tcp_rmen = 1 2 3\n", ":3: unknown key `net.ipv4.tcp_rmen` (did you mean `net.ipv4.tcp_rmem`?)"),
        ("noeq.conf", "fs.nr_open = 2097152\n\nnet.core.somaxconn 65535\n", ":3: malformed line `net.core.somaxconn 65535`: expected `key = value`"),
        ("range.conf", "fs.nr_open = 2097152\nnet.ipv4.ip_local_port_range = 1024 70000\n", ":2: bad value for net.ipv4.ip_local_port_range: 70000 is out of range: allowed 1..=65535"),
        ("order.conf", "net.ipv4.tcp_mem = 3 2 1\n", ":1: bad value for net.ipv4.tcp_mem: values must not decrease"),
    ];
    for (name, text, expected) in cases {
        let path = stand_in.file(name, text);
        let path = path.to_str().unwrap();
        for command in ["apply", "check"] {
            let result = stand_in.run(&[command, path]);
            assert_eq!(result.code, 2, "{name}: {}", result.stderr);
            assert!(
                result.stderr.contains(&format!("{path}{expected}")),
                "{name}: {}",
                result.stderr
            );
        }
    }
    assert_eq!(stand_in.snapshot(), before);
    let missing = stand_in.run(&["check", "no-such-profile"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("not a shipped profile"));
}

#[test]
fn proc_root_must_be_a_directory() {
    let result = run(&["--proc-root", "/nonexistent/sys", "check", "loadgen"]);
    assert_eq!(result.code, 2);
    assert!(result
        .stderr
        .contains("proc root /nonexistent/sys is not a directory"));
}

#[test]
fn explain_a_key_list_and_unknown() {
    let stand_in = StandIn::vm();
    let text = stand_in.run(&["explain", "net.ipv4.tcp_mem"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("Pages (not bytes)"));
    assert!(
        text.stdout.contains("287892 383858 575784"),
        "running value"
    );
    for profile in ["loopback-testbed.conf", "c10m-server.conf", "loadgen.conf"] {
        assert!(text.stdout.contains(profile), "{profile}");
    }
    assert!(text.stdout.contains("1,048,576 pages"), "the profile's why");

    let json = stand_in.run(&["explain", "fs/nr_open", "--json"]).json();
    assert_eq!(json["key"], "fs.nr_open");
    assert_eq!(json["profiles"][1]["value"], "10485760");

    let list = stand_in.run(&["explain", "--list"]);
    assert!(list
        .stdout
        .lines()
        .any(|l| l.starts_with("net.ipv4.ip_local_reserved_ports")));

    let unknown = stand_in.run(&["explain", "net.core.somaxcon"]);
    assert_eq!(unknown.code, 2);
    assert!(unknown
        .stderr
        .contains("did you mean `net.core.somaxconn`?"));
}

/// The project's test VM, as `plan --json` records it.
fn vm_facts() -> Value {
    serde_json::json!({
        "mem_total_bytes": 24_683_584_u64 * 1024,
        "mem_available_bytes": 24_375_668_u64 * 1024,
        "page_size_bytes": 4096,
        "nofile_soft": 20000,
        "nofile_hard": 20000,
        "nofile_hard_raisable": false,
        "nr_open": 1_048_576,
        "file_max": 2_466_116,
        "files_open": 362,
        "port_range": { "low": 32768, "high": 60999 },
        "reserved_ports": { "ranges": [] },
        "tcp_mem_pages": [287_892, 383_858, 575_784],
        "conntrack_max": 262_144,
        "conntrack_count": 0,
        "epoll_max_user_watches": 5_491_378
    })
}

#[test]
fn plan_with_fixed_facts_names_the_binding_limit_and_processes() {
    let stand_in = StandIn::vm();
    let facts = stand_in.file("facts.json", &vm_facts().to_string());
    let facts = facts.to_str().unwrap();
    let args = [
        "plan",
        "--sessions",
        "1000000",
        "--role",
        "both",
        "--facts",
        facts,
    ];
    let text = run(&args);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text
        .stdout
        .contains("binds first: RLIMIT_NOFILE hard (19,900 sessions per process)"));
    assert!(text
        .stdout
        .contains("cannot be raised here (no CAP_SYS_RESOURCE)"));
    assert!(text
        .stdout
        .contains("run 52 server processes of at most 19,786 sessions"));
    assert!(text
        .stdout
        .contains("51 loadgen processes of at most 19,608"));
    assert!(text.stdout.contains("two sockets (one per end)"));

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let json = run(&json_args).json();
    assert_eq!(json["binding"], "nofile_hard");
    assert_eq!(json["host_binding"], "tcp_mem");
    assert_eq!(json["sockets_per_session"], 2);
    assert_eq!(json["processes"][0]["processes"], 52);
    assert_eq!(json["processes"][1]["processes"], 51);
    assert_eq!(json["facts"]["nofile_hard"], 20000);

    // The JSON plan's facts feed the next plan unchanged.
    let saved = stand_in.file("plan.json", &json.to_string());
    let server = run(&[
        "plan",
        "--sessions",
        "10000",
        "--role",
        "server",
        "--facts",
        saved.to_str().unwrap(),
    ]);
    assert!(
        server.stdout.contains("fit as the host stands"),
        "{}",
        server.stdout
    );
}

#[test]
fn plan_probes_a_stand_in_root() {
    let stand_in = StandIn::vm();
    let result = stand_in.run(&["plan", "--sessions", "1000", "--role", "loadgen", "--json"]);
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert_eq!(result.json()["facts"]["nr_open"], 1_048_576);
}

#[test]
fn limits_prints_drop_in_and_limits_conf() {
    let stand_in = StandIn::vm();
    let result = stand_in.run(&[
        "limits",
        "--sessions",
        "1000000",
        "--processes",
        "52",
        "--unit",
        "c10m-server",
    ]);
    assert_eq!(result.code, 0);
    assert!(result.stdout.contains("[Service]\nLimitNOFILE=19331\n"));
    assert!(result.stdout.contains("root    hard  nofile  19331"));
    assert!(result
        .stdout
        .contains("fs.nr_open is 1,048,576 here, >= 19,331: ok"));
}

#[test]
fn bad_arguments_are_usage_errors_not_panics() {
    assert_eq!(run(&["plan"]).code, 2);
    assert_eq!(run(&["plan", "--sessions", "-5"]).code, 2);
    assert_eq!(run(&["frobnicate"]).code, 2);
    let zero = run(&["plan", "--sessions", "0", "--facts", "/nonexistent.json"]);
    assert_eq!(zero.code, 2);
    assert!(zero.stderr.contains("cannot read /nonexistent.json"));
}

/// Puts a real sysctl back when dropped, whatever the test did.
struct RestoreOnDrop {
    path: PathBuf,
    original: String,
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        let now = std::fs::read_to_string(&self.path).unwrap_or_default();
        if now.trim() != self.original.trim() {
            let _ = std::fs::write(&self.path, &self.original);
        }
    }
}

#[test]
fn real_kernel_apply_and_rollback() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED real_kernel_apply_and_rollback: needs root to write /proc/sys");
        return;
    }
    let key = "net.ipv4.tcp_keepalive_probes";
    let path = PathBuf::from("/proc/sys/net/ipv4/tcp_keepalive_probes");
    let original = std::fs::read_to_string(&path).unwrap();
    let _guard = RestoreOnDrop {
        path: path.clone(),
        original: original.clone(),
    };
    let current: u64 = original.trim().parse().unwrap();
    let wanted = if current > 1 {
        current - 1
    } else {
        current + 1
    };
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("harmless.conf");
    std::fs::write(
        &profile,
        format!(
            "# only SO_KEEPALIVE sockets notice; {wanted} probes for a test\n{key} = {wanted}\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state.json");
    let (profile, state) = (profile.to_str().unwrap(), state.to_str().unwrap());

    let applied = run(&["apply", profile, "--state", state]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        wanted.to_string()
    );
    assert_eq!(run(&["check", profile]).code, 0);

    let rolled = run(&["rollback", "--state", state]);
    assert_eq!(rolled.code, 0, "{}", rolled.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert!(!Path::new(state).exists());
    assert!(run(&["rollback", "--state", state])
        .stdout
        .contains("nothing to roll back"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}
