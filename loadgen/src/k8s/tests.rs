use super::*;

#[derive(Debug, Parser)]
#[command(name = "c10m-loadgen k8s render", no_binary_name = true)]
struct Render {
    #[command(flatten)]
    args: RenderArgs,
}

fn args(argv: &[&str]) -> RenderArgs {
    Render::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
}

const START: &str = "2026-12-06T10:00:00Z";

/// Two minutes before START: the renders below are reproducible.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(parse_start_at(START).unwrap() - 120_000)
}

/// `flags` split at spaces, `START` standing for the start time.
fn split(flags: &str) -> Vec<&str> {
    flags
        .split_whitespace()
        .map(|f| if f == "START" { START } else { f })
        .collect()
}

fn render_err(argv: &[&str]) -> String {
    match objects(&args(argv), now()) {
        Ok(_) => panic!("{argv:?} rendered"),
        Err(e) => format!("{e:#}"),
    }
}

fn kind<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn command(container: &Value) -> Vec<String> {
    container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_job_is_indexed_with_one_shard_per_pod_one_start_and_the_servers_name() {
    let a = args(&split(
        "--name big --shards 8 --server-replicas 2 --start-at START -- --sessions 1000000 --rate 50000 --heartbeat 30s --hold 10m",
    ));
    let objects = objects(&a, now()).unwrap();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "PersistentVolumeClaim",
            "Service",
            "Deployment",
            "Job",
            "Job"
        ]
    );
    let job = kind(&objects, "Job", "big-loadgen");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 8);
    assert_eq!(job["spec"]["parallelism"], 8);
    assert_eq!(job["spec"]["backoffLimitPerIndex"], 0);
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["env"], json!([{"name": "C10M_SHARDS", "value": "8"}]));
    let cmd = command(c);
    assert_eq!(cmd[..2], ["c10m-loadgen", "run"]);
    for want in [
        "--target=big-server.c10m.svc.cluster.local:7000",
        "--start-at=2026-12-06T10:00:00.000Z",
        "--out=/results/big/shard-$(JOB_COMPLETION_INDEX)",
        "--allow-remote",
        "--sessions",
        "1000000",
    ] {
        assert!(cmd.iter().any(|a| a == want), "{want} not in {cmd:?}");
    }
    // The run flags reach the pods as the pods will parse them.
    let run = RunOnly::try_parse_from(&cmd[2..]).unwrap().args;
    assert_eq!(run.sessions, Some(1_000_000));
    assert_eq!(
        parse_start_at(run.start_at.as_deref().unwrap()),
        parse_start_at(START)
    );
    assert_eq!(
        pod["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}])
    );
    // 125 000 sessions a pod: ~4.5 KiB each on top of the base.
    let mem = c["resources"]["limits"]["memory"].as_str().unwrap();
    let mib: u64 = mem.trim_end_matches("Mi").parse().unwrap();
    assert!(mib * (1 << 20) >= 125_000 * 4_096 + BASE_POD_BYTES, "{mem}");
    // The deadline covers the wait for the start, the ramp, the hold and
    // the grace.
    let deadline = job["spec"]["activeDeadlineSeconds"].as_u64().unwrap();
    assert!(deadline >= 120 + 20 + 600 + 5, "{deadline}");
    assert!(deadline <= 120 + 20 + 600 + 5 + 601, "{deadline}");
    // The init container waits for both server pods.
    let wait = &pod["initContainers"][0];
    assert_eq!(wait["name"], "wait-for-server");
    assert!(command(wait)[2].contains("-ge 2 ]"));

    let service = kind(&objects, "Service", "big-server");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["ports"][0]["port"], 7000);
    let deploy = kind(&objects, "Deployment", "big-server");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"],
        deploy["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        service["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let server = command(&deploy["spec"]["template"]["spec"]["containers"][0]);
    assert!(
        server.contains(&"--listen=0.0.0.0:7000".to_string()),
        "{server:?}"
    );
    assert!(
        server.contains(&"--max-sessions=550000".to_string()),
        "{server:?}"
    );

    let merge = kind(&objects, "Job", "big-merge");
    let script = &command(&merge["spec"]["template"]["spec"]["containers"][0])[2];
    assert!(script.contains("-lt 8 ]"), "{script}");
    assert!(
        script.contains("c10m-loadgen merge $dir/merged"),
        "{script}"
    );
    assert!(merge["spec"]["activeDeadlineSeconds"].as_u64().unwrap() > deadline);
}

#[test]
fn an_external_server_node_init_and_io_uring_change_what_they_say() {
    let a = args(&split(
        "--shards 2 --server-replicas 0 --target redis.prod-like:6379 --node-init --io-uring --results-claim shared --start-at START -- --sessions 20000",
    ));
    let objects = objects(&a, now()).unwrap();
    assert!(objects
        .iter()
        .all(|o| o["kind"] != "Deployment" && o["kind"] != "Service"));
    assert!(objects.iter().all(|o| o["kind"] != "PersistentVolumeClaim"));
    let pod = &kind(&objects, "Job", "c10m-loadgen")["spec"]["template"]["spec"];
    assert!(command(&pod["containers"][0]).contains(&"--target=redis.prod-like:6379".into()));
    assert_eq!(pod["initContainers"][0]["name"], "node-sysctl");
    assert_eq!(
        pod["initContainers"][0]["securityContext"]["privileged"],
        true
    );
    assert_eq!(
        command(&pod["initContainers"][0])[2],
        "sysctl/profiles/loadgen.conf"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "Unconfined"
    );
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "shared"
    );
}

#[test]
fn bad_requests_are_refused_with_the_fix() {
    // (flags after `--start-at START`, what the error says); flags without
    // `--` get `-- --sessions 1000`.
    let cases = [
        ("--shards 0", "expected 1 to 10000 pods"),
        ("--shards 2 --name Big_Run", "DNS label"),
        ("--shards 2 --server-replicas 0", "name one with --target"),
        ("--shards 2 --target a:1", "add --server-replicas 0"),
        (
            "--shards 2 -- --target 127.0.0.1:7000",
            "set --target, which the render sets",
        ),
        ("--shards 2 -- --out x", "set --out, which the render sets"),
        (
            "--shards 2 -- --shard 0/2",
            "set --shard, which the render sets",
        ),
        ("--shards 2 -- --rate 0", "--rate must be a positive number"),
        ("--shards 2 -- --sesions 5", "the run flags after --"),
        (
            "--shards 2 -- --scenario /tmp/x.toml",
            "name a shipped scenario",
        ),
        (
            "--shards 4 -- --sessions 1000000",
            "raise --shards to 16 or --server-replicas to 4",
        ),
    ];
    for (flags, want) in cases {
        let mut argv = vec!["--start-at", START];
        argv.extend(flags.split_whitespace());
        if !argv.contains(&"--") {
            argv.extend(["--", "--sessions", "1000"]);
        }
        let e = render_err(&argv);
        assert!(e.contains(want), "{argv:?}: {e}");
    }
}

#[test]
fn yaml_quotes_what_would_read_back_otherwise_and_writes_scripts_as_blocks() {
    let v = json!({
        "a": "plain-text/ok.1",
        "b": ["2", "yes", "No", "1024 65535", "c10m:latest", "", 3, true, null],
        "c": {},
        "d": [],
        "e": [{"x": 1, "y": {"z": "w"}}, [1, 2]],
        "f": "line one\n  two: indented\n\nlast\n",
        "g": "no newline at the end\nsecond",
        "h": " leading space\nx",
    });
    let mut out = String::new();
    yaml(&mut out, &v, 0);
    let want = r#"a: plain-text/ok.1
b:
- "2"
- "yes"
- "No"
- "1024 65535"
- "c10m:latest"
- ""
- 3
- true
- null
c: {}
d: []
e:
- x: 1
  "y":
    z: w
-
  - 1
  - 2
f: |
  line one
    two: indented

  last
g: |-
  no newline at the end
  second
h: " leading space\nx"
"#;
    assert_eq!(out, want);
}

/// The committed examples are renders with the flags in their first line;
/// `C10M_UPDATE_EXAMPLES=1 cargo test -p c10m-loadgen --lib k8s` rewrites
/// them after a change to the render.
#[test]
fn the_committed_examples_are_what_render_prints() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let examples: [(&str, &str); 2] = [
        (
            "million.yaml",
            "--name million --shards 8 --server-replicas 2 --start-at START -- --sessions 1000000 --rate 50000 --heartbeat 30s --hold 10m --expect-sessions 1000000 --max-errors 0",
        ),
        (
            "own-server.yaml",
            "--name redis-200k --shards 4 --server-replicas 0 --target redis.cache.svc.cluster.local:6379 --node-init --start-at START -- --sessions 200000 --rate 10000 --heartbeat 60s --hold 5m --protocol resp",
        ),
    ];
    let update = std::env::var_os("C10M_UPDATE_EXAMPLES").is_some();
    for (file, flags) in examples {
        let argv = split(flags);
        let text = format!(
            "# c10m-loadgen k8s render {} (rendered 2 minutes before its start: render \
             your own, the start time is fixed at render time)\n{}",
            argv.join(" "),
            render(&args(&argv), now()).unwrap()
        );
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &text).unwrap();
        }
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed,
            text,
            "{} differs from the render: C10M_UPDATE_EXAMPLES=1 cargo test -p c10m-loadgen --lib k8s",
            path.display()
        );
    }
}
