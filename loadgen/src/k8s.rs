//! `c10m-loadgen k8s render`: the Kubernetes objects of a distributed run,
//! printed from flags (`kubectl apply -f -`), so that what the shards must
//! agree on is computed once, at render time, and is the same in every pod:
//!
//! - an Indexed Job (`completionMode: Indexed`, parallelism = completions =
//!   `--shards`) whose pods run `c10m-loadgen run` with `C10M_SHARDS`; the
//!   Job sets `JOB_COMPLETION_INDEX`, and together they are `--shard K/N`
//!   (see [`crate::scenario`]). Every pod gets the same `--start-at`, an
//!   absolute time fixed here, so the ramps align;
//! - the server (optional): a Deployment of `--server-replicas` and a
//!   headless Service, so the loadgen resolves the server pods' own
//!   addresses (no kube-proxy NAT and conntrack entry per connection);
//! - a results volume (ReadWriteMany, one directory per shard) and a merge
//!   Job that waits for every shard's summary, bounded, and runs
//!   `c10m-loadgen merge`.
//!
//! Memory limits are sized from the sessions: the kernel charges a pod's
//! socket memory to its cgroup, ~4 KiB per idle TCP socket here, so a pod
//! limited by a default LimitRange would be OOM-killed long before its
//! share is open. Host-wide sysctls (fs.file-max, fs.nr_open) cannot be
//! set from a pod's securityContext: `--node-init` adds a privileged init
//! container that applies the role's sysctl profile (the namespaced keys
//! land in the pod's network namespace, the host-wide ones on the node).
#![forbid(unsafe_code)]

use crate::cli::{parse_duration, parse_start_at, RunArgs, Target};
use crate::plan::time_wait_headroom;
use crate::scenario::RunConfig;
use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The ephemeral port range the loadgen pods set (a namespaced, "safe"
/// sysctl every kubelet allows).
pub const POD_PORT_RANGE: (u16, u16) = (1024, 65535);
/// Kernel memory per TCP socket charged to the pod (slab + buffers of an
/// idle session, measured ~3.7 KB here) and user memory per session, with
/// room to spare: the limits are for safety, not for packing.
const KERNEL_BYTES_PER_SOCKET: u64 = 4096;
const USER_BYTES_PER_SESSION: u64 = 512;
const BASE_POD_BYTES: u64 = 256 << 20;
/// Where the image keeps the repository's scenarios and sysctl profiles
/// (its working directory, so `loadgen/scenarios/x.toml` means the same
/// file in the repository and in the pod).
pub const IMAGE_WORKDIR: &str = "/usr/share/c10m";
const RESULTS_MOUNT: &str = "/results";
const METRICS_PORT: u16 = 9100;

/// `c10m-loadgen k8s render` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// Run name: prefixes every object and names the results directory
    /// (lowercase letters, digits and `-`, at most 40).
    #[arg(long, default_value = "c10m")]
    pub name: String,
    /// Namespace of every object (rendered as a Namespace too).
    #[arg(long, default_value = "c10m")]
    pub namespace: String,
    /// Container image with c10m-loadgen, c10m-server and c10m-sysctl
    /// (loadgen/deploy/Containerfile).
    #[arg(long, default_value = "c10m:latest")]
    pub image: String,
    /// Loadgen pods: the Job's completions and parallelism, and C10M_SHARDS.
    #[arg(long)]
    pub shards: u64,
    /// Start every shard's ramp at this time (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME", conflicts_with = "start_in")]
    pub start_at: Option<String>,
    /// Start every shard's ramp this long after rendering: time for the
    /// pods to be scheduled, pull the image and resolve the server.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    pub start_in: Duration,
    /// Server pods to render (a Deployment and a headless Service); 0 for
    /// none: name the server with --target.
    #[arg(long, default_value_t = 1)]
    pub server_replicas: u32,
    /// Server port (each server pod listens on it).
    #[arg(long, default_value_t = 7000)]
    pub server_port: u16,
    /// A server outside this render (with --server-replicas 0); repeat for
    /// several. A host name is resolved in the pods.
    #[arg(long = "target", value_name = "HOST:PORT", value_parser = crate::cli::parse_target)]
    pub targets: Vec<Target>,
    /// More c10m-server flags, e.g. `--server-arg=--accept-rate=5000`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// CPUs requested by each loadgen pod (and its limit).
    #[arg(long, default_value = "2")]
    pub loadgen_cpu: String,
    /// CPUs requested by each server pod (and its limit).
    #[arg(long, default_value = "2")]
    pub server_cpu: String,
    /// Add a privileged init container that applies the role's sysctl
    /// profile (sysctl/profiles/*.conf): host-wide keys change the node
    /// until its reboot or `c10m-sysctl rollback` there. For dedicated
    /// load nodes only.
    #[arg(long)]
    pub node_init: bool,
    /// Set net.core.somaxconn and net.ipv4.tcp_max_syn_backlog in the
    /// server pods (namespaced but "unsafe": the kubelet must allow them,
    /// --allowed-unsafe-sysctls).
    #[arg(long)]
    pub unsafe_sysctls: bool,
    /// Let the pods use io_uring (seccomp Unconfined: the runtimes'
    /// default seccomp profiles refuse io_uring_setup, and the loadgen and
    /// server then use epoll over several processes).
    #[arg(long)]
    pub io_uring: bool,
    /// An existing ReadWriteMany volume claim for the results, instead of
    /// rendering one.
    #[arg(long, value_name = "CLAIM")]
    pub results_claim: Option<String>,
    /// Size of the rendered results claim.
    #[arg(long, default_value = "1Gi")]
    pub results_size: String,
    /// Output format: yaml (a multi-document stream) or json (a List).
    #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub format: String,
    /// The run: `c10m-loadgen run` flags after `--`, e.g. `-- --sessions
    /// 1000000 --rate 50000 --heartbeat 30s --hold 10m`. Sessions, rate
    /// and in-flight connects are the whole run's (each pod takes its
    /// share). --target, --shard, --start-at, --out, --allow-remote and
    /// --server-pid are set by the render.
    #[arg(last = true, value_name = "RUN FLAGS")]
    pub run: Vec<String>,
}

#[derive(Debug, Parser)]
#[command(name = "c10m-loadgen run", no_binary_name = true)]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

/// A checked render request: the run resolved as the pods will resolve it.
struct Plan {
    config: RunConfig,
    run_flags: Vec<String>,
    start_at_unix_ms: u64,
    targets: Vec<String>,
    per_shard: u64,
    per_server: u64,
}

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "{what} {name:?}: expected a DNS label of at most {max} characters (lowercase \
             letters, digits and '-', starting with a letter)"
        );
    }
    Ok(())
}

fn plan(args: &RenderArgs, now: SystemTime) -> Result<Plan> {
    check_name("--name", &args.name, 40)?;
    check_name("--namespace", &args.namespace, 63)?;
    if args.shards == 0 || args.shards > 10_000 {
        bail!("--shards {}: expected 1 to 10000 pods", args.shards);
    }
    match (args.server_replicas, args.targets.is_empty()) {
        (0, true) => bail!("--server-replicas 0 renders no server: name one with --target"),
        (r, false) if r > 0 => bail!(
            "--target names a server of your own: add --server-replicas 0 (or drop --target \
             to render the server)"
        ),
        _ => {}
    }
    let mut run = RunOnly::try_parse_from(&args.run)
        .map_err(|e| {
            anyhow!(
                "the run flags after --: {}",
                e.render().to_string().trim_end()
            )
        })?
        .args;
    let set_here: [(&str, bool); 6] = [
        ("--target", !run.targets.is_empty()),
        ("--shard", run.shard.is_some()),
        ("--start-at", run.start_at.is_some()),
        ("--out", run.out.is_some()),
        ("--allow-remote", run.allow_remote),
        ("--server-pid", run.server_pid.is_some()),
    ];
    if let Some((flag, _)) = set_here.iter().find(|(_, set)| *set) {
        bail!("the run flags after -- set {flag}, which the render sets for every pod: drop it");
    }
    if let Some(path) = &run.scenario {
        if path.is_absolute() || !path.starts_with("loadgen/scenarios") {
            bail!(
                "--scenario {}: name a shipped scenario by its path in the repository, \
                 loadgen/scenarios/NAME.toml (the image has them under {IMAGE_WORKDIR}); \
                 a scenario of your own must be added there and the image rebuilt",
                path.display()
            );
        }
    }
    // Resolve the run as a pod will (with a stand-in target), so that a
    // bad flag fails here rather than in N pods at the start time.
    run.targets = vec![Target::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)))];
    let config = RunConfig::resolve(&run).context("the run flags after --")?;
    if config.shard.is_some() {
        bail!("JOB_COMPLETION_INDEX or C10M_SHARDS is set in this shell: unset them to render");
    }
    let start_at_unix_ms = match &args.start_at {
        Some(text) => parse_start_at(text).map_err(anyhow::Error::msg)?,
        None => (now + args.start_in)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    let per_shard = config.sessions.div_ceil(args.shards);
    let server_count = if args.server_replicas > 0 {
        u64::from(args.server_replicas)
    } else {
        args.targets.len() as u64
    };
    // Every pod has one address: its share (and the tuples its closed
    // connections hold in TIME_WAIT) must fit the server addresses times
    // the pod's ephemeral ports.
    let headroom = time_wait_headroom(
        per_shard,
        config.churn.as_ref().map(|c| c.mean_ms as f64),
        config.outage_fraction(),
        60_000.0,
    );
    let ports = u64::from(POD_PORT_RANGE.1 - POD_PORT_RANGE.0) + 1;
    if per_shard + headroom > server_count * ports {
        bail!(
            "{per_shard} sessions per loadgen pod (+{headroom} TIME_WAIT tuples) do not fit one \
             pod address: {server_count} server address(es) x {ports} ephemeral ports = {} \
             4-tuples; raise --shards to {} or --server-replicas to {}",
            server_count * ports,
            (config.sessions + headroom * args.shards).div_ceil(server_count * ports),
            (per_shard + headroom).div_ceil(ports),
        );
    }
    let targets = if args.server_replicas > 0 {
        vec![format!(
            "{}-server.{}.svc.cluster.local:{}",
            args.name, args.namespace, args.server_port
        )]
    } else {
        args.targets.iter().map(|t| t.0.clone()).collect()
    };
    Ok(Plan {
        per_server: config.sessions.div_ceil(server_count),
        config,
        run_flags: args.run.clone(),
        start_at_unix_ms,
        targets,
        per_shard,
    })
}

fn memory(sessions: u64) -> String {
    // One socket per session in each pod: the other end is in another pod.
    let bytes = BASE_POD_BYTES + sessions * (KERNEL_BYTES_PER_SOCKET + USER_BYTES_PER_SESSION);
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

fn labels(args: &RenderArgs, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": format!("c10m-{component}"),
        "app.kubernetes.io/instance": args.name,
        "app.kubernetes.io/part-of": "c10m",
    })
}

fn metadata(args: &RenderArgs, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": args.namespace,
        "labels": labels(args, component),
    })
}

/// The init container that applies `profile` (host-wide keys on the node).
fn node_init(args: &RenderArgs, profile: &str) -> Value {
    json!({
        "name": "node-sysctl",
        "image": args.image,
        "command": ["c10m-sysctl", "apply", format!("sysctl/profiles/{profile}.conf")],
        "securityContext": {"privileged": true, "runAsUser": 0, "runAsNonRoot": false},
    })
}

/// Pod-level security: a non-root user that can write the results volume,
/// the namespaced sysctls, and seccomp.
fn pod_security(args: &RenderArgs, sysctls: Vec<(&str, String)>) -> Value {
    let mut sc = json!({"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532});
    if !sysctls.is_empty() {
        sc["sysctls"] = sysctls
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
    }
    sc["seccompProfile"] = if args.io_uring {
        json!({"type": "Unconfined"})
    } else {
        json!({"type": "RuntimeDefault"})
    };
    sc
}

fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn resources(cpu: &str, memory: &str) -> Value {
    json!({
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    })
}

/// Spread `component`'s pods over nodes where the scheduler can.
fn spread(args: &RenderArgs, component: &str) -> Value {
    json!({
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": labels(args, component)},
                },
            }],
        },
    })
}

fn results_volume(args: &RenderArgs) -> Value {
    json!({
        "name": "results",
        "persistentVolumeClaim": {"claimName": claim_name(args)},
    })
}

fn claim_name(args: &RenderArgs) -> String {
    args.results_claim
        .clone()
        .unwrap_or_else(|| format!("{}-results", args.name))
}

fn server_objects(args: &RenderArgs, plan: &Plan) -> Vec<Value> {
    let name = format!("{}-server", args.name);
    let idle = (plan.config.max_heartbeat_gap_ms() * 3)
        .max(600_000)
        .div_ceil(1_000);
    let headroom = (plan.per_server / 10).max(100);
    let mut command = vec![
        "c10m-server".to_string(),
        format!("--listen=0.0.0.0:{}", args.server_port),
        format!("--max-sessions={}", plan.per_server + headroom),
        format!("--idle-timeout={idle}s"),
        format!("--metrics=0.0.0.0:{METRICS_PORT}"),
        "--stats-interval=10s".to_string(),
    ];
    command.extend(args.server_args.iter().cloned());
    let mut sysctls = vec![];
    if args.unsafe_sysctls {
        sysctls.push(("net.core.somaxconn", "65535".to_string()));
        sysctls.push(("net.ipv4.tcp_max_syn_backlog", "262144".to_string()));
    }
    let mut pod = json!({
        "securityContext": pod_security(args, sysctls),
        "affinity": spread(args, "server"),
        "containers": [{
            "name": "server",
            "image": args.image,
            "command": command,
            "ports": [
                {"name": "c10m", "containerPort": args.server_port},
                {"name": "metrics", "containerPort": METRICS_PORT},
            ],
            "readinessProbe": {
                "httpGet": {"path": "/metrics", "port": "metrics"},
                "periodSeconds": 2,
            },
            "resources": resources(&args.server_cpu, &memory(plan.per_server)),
            "securityContext": container_security(),
        }],
    });
    if args.node_init {
        pod["initContainers"] = json!([node_init(args, "c10m-server")]);
    }
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(args, &name, "server"),
            "spec": {
                "clusterIP": "None",
                "selector": labels(args, "server"),
                "ports": [{"name": "c10m", "port": args.server_port, "targetPort": "c10m"}],
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(args, &name, "server"),
            "spec": {
                "replicas": args.server_replicas,
                "selector": {"matchLabels": labels(args, "server")},
                "template": {"metadata": {"labels": labels(args, "server")}, "spec": pod},
            },
        }),
    ]
}

/// Seconds from rendering until every shard must have finished: the start
/// delay, the run's timeline with its grace, and 10 minutes to spare.
fn deadline_s(plan: &Plan, now: SystemTime) -> u64 {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let until_start = plan.start_at_unix_ms.saturating_sub(now_ms);
    (until_start + u64::from(plan.config.timeline().deadline_ms)).div_ceil(1_000) + 600
}

fn loadgen_job(args: &RenderArgs, plan: &Plan, deadline: u64) -> Value {
    let start =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(plan.start_at_unix_ms))
            .to_string();
    let mut command = vec!["c10m-loadgen".to_string(), "run".to_string()];
    command.extend(plan.run_flags.iter().cloned());
    for t in &plan.targets {
        command.push(format!("--target={t}"));
    }
    command.extend([
        "--allow-remote".to_string(),
        format!("--start-at={start}"),
        format!(
            "--out={RESULTS_MOUNT}/{}/shard-$(JOB_COMPLETION_INDEX)",
            args.name
        ),
        "--progress=plain".to_string(),
    ]);
    let (lo, hi) = POD_PORT_RANGE;
    // Wait (bounded) until the name resolves to every server pod: the
    // loadgen resolves --target once, at its start.
    let mut init = vec![];
    if args.server_replicas > 0 {
        let host = plan.targets[0].rsplit_once(':').map_or("", |(h, _)| h);
        init.push(json!({
            "name": "wait-for-server",
            "image": args.image,
            "command": ["sh", "-c", format!(
                "for i in $(seq 600); do\n  n=$(getent ahostsv4 {host} | awk '{{print $1}}' | sort -u | wc -l)\n  [ \"$n\" -ge {r} ] && exit 0\n  sleep 1\ndone\necho \"{host} resolves to $n of {r} server pods after 600 s\" >&2\nexit 1\n",
                r = args.server_replicas,
            )],
            "securityContext": container_security(),
        }));
    }
    if args.node_init {
        init.push(node_init(args, "loadgen"));
    }
    let mut pod = json!({
        "restartPolicy": "Never",
        "securityContext": pod_security(args, vec![("net.ipv4.ip_local_port_range", format!("{lo} {hi}"))]),
        "affinity": spread(args, "loadgen"),
        "containers": [{
            "name": "loadgen",
            "image": args.image,
            "command": command,
            "env": [{"name": "C10M_SHARDS", "value": args.shards.to_string()}],
            "resources": resources(&args.loadgen_cpu, &memory(plan.per_shard)),
            "securityContext": container_security(),
            "volumeMounts": [{"name": "results", "mountPath": RESULTS_MOUNT}],
        }],
        "volumes": [results_volume(args)],
    });
    if !init.is_empty() {
        pod["initContainers"] = Value::Array(init);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(args, &format!("{}-loadgen", args.name), "loadgen"),
        "spec": {
            "completionMode": "Indexed",
            "completions": args.shards,
            "parallelism": args.shards,
            // A failed shard is not retried (a retry would start late and
            // write over its directory), and does not stop the others.
            "backoffLimitPerIndex": 0,
            "maxFailedIndexes": args.shards,
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": labels(args, "loadgen")}, "spec": pod},
        },
    })
}

fn merge_job(args: &RenderArgs, deadline: u64) -> Value {
    let dir = format!("{RESULTS_MOUNT}/{}", args.name);
    let script = format!(
        "dir={dir}\nend=$(( $(date +%s) + {deadline} ))\n\
         while [ \"$(ls $dir/shard-*/summary.json 2>/dev/null | wc -l)\" -lt {n} ]; do\n  \
         if [ \"$(date +%s)\" -ge \"$end\" ]; then\n    \
         echo \"merge: $(ls $dir/shard-*/summary.json 2>/dev/null | wc -l) of {n} shards wrote a summary; merging those\" >&2\n    \
         break\n  fi\n  sleep 5\ndone\n\
         exec c10m-loadgen merge $dir/merged $(dirname $dir/shard-*/summary.json)\n",
        n = args.shards,
    );
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(args, &format!("{}-merge", args.name), "merge"),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline + 600,
            "template": {
                "metadata": {"labels": labels(args, "merge")},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": pod_security(args, vec![]),
                    "containers": [{
                        "name": "merge",
                        "image": args.image,
                        "command": ["sh", "-c", script],
                        "securityContext": container_security(),
                        "volumeMounts": [{"name": "results", "mountPath": RESULTS_MOUNT}],
                    }],
                    "volumes": [results_volume(args)],
                },
            },
        },
    })
}

/// The objects of a render, in apply order.
pub fn objects(args: &RenderArgs, now: SystemTime) -> Result<Vec<Value>> {
    let plan = plan(args, now)?;
    let deadline = deadline_s(&plan, now);
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": args.namespace, "labels": {"app.kubernetes.io/part-of": "c10m"}},
    })];
    if args.results_claim.is_none() {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata(args, &claim_name(args), "results"),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": args.results_size}},
            },
        }));
    }
    if args.server_replicas > 0 {
        out.extend(server_objects(args, &plan));
    }
    out.push(loadgen_job(args, &plan, deadline));
    out.push(merge_job(args, deadline));
    Ok(out)
}

/// `c10m-loadgen k8s render`: prints the objects.
pub fn render(args: &RenderArgs, now: SystemTime) -> Result<String> {
    let objects = objects(args, now)?;
    let mut text = format!(
        "# c10m-loadgen k8s render: {} shard(s) of `c10m-loadgen run {}`\n",
        args.shards,
        args.run.join(" ")
    );
    if args.format == "json" {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    for o in &objects {
        text.push_str("---\n");
        yaml(&mut text, o, 0);
    }
    Ok(text)
}

/// A string YAML reads back as the same string without quotes.
fn plain(s: &str) -> bool {
    let reserved = [
        "true", "false", "yes", "no", "on", "off", "null", "y", "n", "~",
    ];
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !reserved.contains(&s.to_ascii_lowercase().as_str())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if plain(s) => s.clone(),
        // A JSON string is a YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

/// Block YAML: maps as `key: value`, lists as `- item`, multi-line
/// strings as literal blocks.
fn yaml(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                out.push_str(&pad);
                out.push_str(&scalar(&Value::String(k.clone())));
                out.push(':');
                value_after_key(out, val, indent);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                if let Value::Object(map) = item {
                    if !map.is_empty() {
                        let mut inner = String::new();
                        yaml(&mut inner, item, indent + 2);
                        out.push(' ');
                        out.push_str(&inner[indent + 2..]);
                        continue;
                    }
                }
                if is_block(item) {
                    out.push('\n');
                    yaml(out, item, indent + 2);
                } else {
                    out.push(' ');
                    out.push_str(&text_scalar(item, indent + 2));
                    out.push('\n');
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&text_scalar(other, indent));
            out.push('\n');
        }
    }
}

fn value_after_key(out: &mut String, val: &Value, indent: usize) {
    if is_block(val) {
        out.push('\n');
        let child = if val.is_array() { indent } else { indent + 2 };
        yaml(out, val, child);
    } else {
        out.push(' ');
        out.push_str(&text_scalar(val, indent + 2));
        out.push('\n');
    }
}

/// A scalar; a multi-line string becomes a literal block at `indent`.
fn text_scalar(v: &Value, indent: usize) -> String {
    if let Value::String(s) = v {
        if s.contains('\n') && !s.starts_with([' ', '\n']) && !s.contains(['\t', '\r']) {
            let body = s.strip_suffix('\n').unwrap_or(s);
            let chomp = if s.ends_with('\n') { "|" } else { "|-" };
            if !body.ends_with('\n') && !body.lines().any(|l| l.ends_with(' ')) {
                let pad = " ".repeat(indent);
                let mut text = chomp.to_string();
                for line in body.split('\n') {
                    text.push('\n');
                    if !line.is_empty() {
                        text.push_str(&pad);
                        text.push_str(line);
                    }
                }
                return text;
            }
        }
    }
    scalar(v)
}

#[cfg(test)]
mod tests;
