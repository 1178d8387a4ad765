//! `brindle-lab`: the command line around [`brindle_lab::Lab`].
//!
//! `up` starts a supervisor process (`brindle-lab supervise`, in its own session) that builds
//! the lab and owns every guard; the other commands talk to it over a unix socket in the state
//! directory. `down` asks it to tear down, and if it is gone (crashed, killed) removes what its
//! ledger lists: namespaces by name, processes by PID (checked against /proc first).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use brindle_lab::rehearse::Fault;
use brindle_lab::{Lab, LabSpec, Ledger};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "brindle-lab",
    version,
    about = "A Brindle cluster of network namespaces on this machine"
)]
struct Cli {
    /// Where the lab keeps its socket, ledger and logs.
    #[arg(
        long,
        env = "BRINDLE_LAB_STATE",
        default_value = "/run/brindle-lab",
        global = true
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the cluster and start every agent.
    Up(LabSpec),
    /// Pods through brindle-cni.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
    /// Services (the lab writes the Service and keeps its EndpointSlice current).
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Namespaces and their labels (NetworkPolicy's namespaceSelector).
    Namespace {
        #[command(subcommand)]
        cmd: NamespaceCmd,
    },
    /// Create or replace the NetworkPolicies and Namespaces of a YAML file (`-`: stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the NetworkPolicies and Namespaces of a YAML file (`-`: stdin).
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Every pod to every pod: the upstream truth table (`.` reached, `X` not).
    Probe {
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
        protocol: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a pod's network namespace (`NAME` or `NAMESPACE/NAME`).
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Failure rehearsal: a node's agent stopped (SIGTERM: graceful restart), killed
    /// (SIGKILL: a crash), started or restarted; a node added or deleted.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Failure rehearsal: the lab's etcd stopped (data kept) or started again.
    Etcd {
        #[arg(value_parser = ["stop", "start"])]
        action: String,
    },
    /// Failure rehearsal: a node's uplink (eth0 in its namespace) down or up.
    Link {
        node: String,
        #[arg(value_parser = ["down", "up"])]
        state: String,
    },
    /// Failure rehearsal: delay and loss on a node's uplink (tc netem), or --clear.
    Netem {
        node: String,
        /// e.g. 20ms
        #[arg(long)]
        delay: Option<String>,
        /// e.g. 5%
        #[arg(long)]
        loss: Option<String>,
        /// Remove the delay and loss.
        #[arg(long, conflicts_with_all = ["delay", "loss"])]
        clear: bool,
    },
    /// Failure rehearsal: a rack's router out of service (every BGP session shut) or back.
    Tor {
        #[arg(value_parser = ["stop", "start"])]
        action: String,
        rack: usize,
    },
    /// The fabric as Graphviz DOT: nodes by rack, routers, reflectors, each BGP session an
    /// edge coloured by state. `--out F.svg` or `.png` draws it with `dot` (graphviz).
    Graph {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Nodes, BGP sessions, blocks and pods.
    Status,
    /// Remove everything the lab made.
    Down,
    #[command(hide = true)]
    Supervise(LabSpec),
}

#[derive(Subcommand)]
enum NodeCmd {
    Stop {
        name: String,
    },
    Kill {
        name: String,
    },
    Start {
        name: String,
    },
    Restart {
        name: String,
    },
    /// A new node joins: registered, its agent started, its rack's router told.
    Add {
        /// The rack it joins (default 0).
        #[arg(long)]
        rack: Option<usize>,
    },
    /// A node leaves for good: its pods deleted, agent stopped, record deleted (the
    /// controller frees its blocks), namespace removed.
    Del {
        name: String,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    Add(Box<brindle_lab::LabService>),
    Del { name: String },
}

#[derive(Subcommand)]
enum PodCmd {
    /// Each pod serves TCP and UDP on 8080, 80 and 81 (container ports `serve-80-tcp`,
    /// `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`: the upstream NetworkPolicy model's).
    Add {
        name: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Labels `k=v` (repeatable); Services and NetworkPolicies select on them.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Set (`k=v`) and remove (`k-`) a pod's labels.
    Label {
        /// `NAME` (namespace default) or `NAMESPACE/NAME`.
        pod: String,
        #[arg(required = true)]
        edits: Vec<String>,
    },
    Del {
        /// `NAME` (namespace default) or `NAMESPACE/NAME`.
        name: String,
    },
}

#[derive(Subcommand)]
enum NamespaceCmd {
    Add {
        name: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Set (`k=v`) and remove (`k-`) a namespace's labels.
    Label {
        name: String,
        #[arg(required = true)]
        edits: Vec<String>,
    },
}

/// The lab's key of a pod: `NAME` in default, `NAMESPACE/NAME` elsewhere.
fn pod_key(namespace: &str, name: &str) -> String {
    if namespace == "default" || name.contains('/') {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

fn read_yaml(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text = if file.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        t
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    brindle_lab::netpol::documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("lab.sock")
}

fn ask(dir: &Path, req: Value) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket(dir))
        .with_context(|| format!("no lab running (state dir {})", dir.display()))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("the lab's answer")?;
    if let Some(e) = v.get("error") {
        bail!("{}", e.as_str().unwrap_or_default());
    }
    Ok(v["ok"].clone())
}

fn spec_args(s: &LabSpec) -> Vec<String> {
    let v = serde_json::to_value(s).unwrap_or_default();
    let mut a = vec![
        format!("--nodes={}", s.nodes),
        format!("--racks={}", s.racks),
        format!("--reflectors={}", s.reflectors),
        format!("--gc-grace={}", s.gc_grace),
        format!("--zones={}", s.zones),
        format!("--iptables-backend={}", s.iptables_backend),
        format!("--dataplane={}", s.dataplane),
        format!(
            "--workload-gc-grace-seconds={}",
            s.workload_gc_grace_seconds
        ),
        format!(
            "--encap={}",
            v["encap"].as_str().unwrap_or("none").to_lowercase()
        ),
        format!(
            "--datastore={}",
            v["datastore"].as_str().unwrap_or("etcd").to_lowercase()
        ),
    ];
    a.push(format!(
        "--ip-family={}",
        v["ip_family"].as_str().unwrap_or("ipv4")
    ));
    if s.tor {
        a.push("--tor".into());
    }
    if s.etcd_tls {
        a.push("--etcd-tls".into());
    }
    a
}

fn up(dir: &Path, spec: &LabSpec) -> anyhow::Result<()> {
    if UnixStream::connect(socket(dir)).is_ok() {
        bail!(
            "a lab is already running (state dir {}); `brindle-lab down` first",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    for f in ["progress.log", "ready", "failed", "ledger.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let log = std::fs::File::create(dir.join("supervisor.log"))?;
    let me = std::env::current_exe()?;
    let mut child = Command::new("setsid")
        .arg(me)
        .arg("--state-dir")
        .arg(dir)
        .arg("supervise")
        .args(spec_args(spec))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the lab supervisor (setsid from util-linux)")?;
    let mut shown = 0;
    let start = Instant::now();
    loop {
        let lines: Vec<String> = std::fs::read_to_string(dir.join("progress.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        for l in &lines[shown.min(lines.len())..] {
            println!("» {l}");
        }
        shown = lines.len();
        if dir.join("ready").exists() {
            println!("lab is up: `brindle-lab status`, `brindle-lab pod add web-0 --node node-1`, `brindle-lab down`");
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            let why = std::fs::read_to_string(dir.join("failed")).unwrap_or_default();
            bail!(
                "the lab did not come up: {why}\n(see {})",
                dir.join("supervisor.log").display()
            );
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the lab did not come up within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn supervise(dir: &Path, spec: LabSpec) -> anyhow::Result<()> {
    std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string())?;
    let progress_path = dir.join("progress.log");
    let mut progress = |s: &str| {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&progress_path)
        {
            let _ = writeln!(f, "{s}");
        }
    };
    let mut lab = match Lab::up(spec, &mut progress) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::write(dir.join("failed"), format!("{e:#}"));
            return Err(e);
        }
    };
    let write_ledger = |lab: &Lab| {
        let _ = std::fs::write(
            dir.join("ledger.json"),
            serde_json::to_string(&lab.ledger()).unwrap_or_default(),
        );
    };
    write_ledger(&lab);
    progress("waiting for every node to hold every other node's blocks");
    match lab.wait_converged(Duration::from_secs(120)) {
        Ok(t) => progress(&format!("converged in {:.1} s", t.as_secs_f64())),
        Err(e) => progress(&format!("warning: {e}")),
    }
    progress("waiting for every BGP session, top-of-rack routers included");
    match lab.wait_sessions(Duration::from_secs(120)) {
        Ok(t) => progress(&format!(
            "every BGP session Established ({:.1} s)",
            t.as_secs_f64()
        )),
        Err(e) => progress(&format!("warning: {e}")),
    }
    let _ = std::fs::remove_file(socket(dir));
    let l = UnixListener::bind(socket(dir))?;
    std::fs::write(dir.join("ready"), "")?;
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        let mut r = BufReader::new(conn.try_clone()?);
        if r.read_line(&mut line).is_err() {
            continue;
        }
        let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let reply = if req.get("down").is_some() {
            let _ = writeln!(&conn, "{}", json!({"ok": "down"}));
            break;
        } else if req.get("status").is_some() {
            json!({"ok": lab.status()})
        } else if req.get("graph").is_some() {
            json!({"ok": lab.graph()})
        } else if let Some(f) = req.get("fault") {
            match serde_json::from_value::<Fault>(f.clone()) {
                // A step that panics (etcd not coming back, a tool missing) is an error
                // for the asker, not the end of the lab.
                Ok(f) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    lab.rehearse(&f)
                })) {
                    Ok(Ok(said)) => json!({ "ok": said }),
                    Ok(Err(e)) => json!({ "error": e }),
                    Err(p) => json!({ "error": format!("{f:?} failed: {}", panic_text(&p)) }),
                },
                Err(e) => json!({ "error": format!("unreadable request: {e}") }),
            }
        } else if let Some(p) = req.get("pod_add") {
            let (name, node) = (
                p["name"].as_str().unwrap_or(""),
                p["node"].as_str().unwrap_or(""),
            );
            let labels: Vec<(String, String)> = p["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str()?.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if lab.nodes.iter().all(|n| n.name != node) {
                json!({"error": format!("no node {node:?} (nodes: {})", lab.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>().join(", "))})
            } else {
                match lab.pod_add_labeled(name, node, &labels) {
                    Ok(ip) => {
                        let ip6 = lab.pods.get(name).and_then(|p| p.ip6);
                        json!({"ok": {"ip": ip.to_string(), "ipv6": ip6.map(|a| a.to_string())}})
                    }
                    Err(e) => json!({"error": e}),
                }
            }
        } else if let Some(spec) = req.get("service_add") {
            match serde_json::from_value::<brindle_lab::LabService>(spec.clone())
                .map_err(|e| e.to_string())
                .and_then(|s| lab.service_add(&s))
            {
                Ok(a) => json!({"ok": {
                    "clusterIP": a.cluster_ip.to_string(),
                    "clusterIPv6": a.cluster_ip6.map(|v| v.to_string()),
                    "ports": a.ports.iter().map(|(p, t, proto, np)| json!({"port": p, "targetPort": t, "protocol": proto, "nodePort": np})).collect::<Vec<_>>(),
                }}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(n) = req.get("service_del").and_then(Value::as_str) {
            match lab.service_del(n) {
                Ok(()) => json!({"ok": "deleted"}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(n) = req.get("pod_del").and_then(Value::as_str) {
            match lab.pod_del(n) {
                Ok(()) => json!({"ok": "deleted"}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(r) = req.get("pod_label") {
            let edits: Vec<String> = serde_json::from_value(r["edits"].clone()).unwrap_or_default();
            match brindle_lab::netpol::parse_edits(&edits)
                .and_then(|e| lab.pod_relabel(r["pod"].as_str().unwrap_or_default(), &e))
            {
                Ok(()) => json!({"ok": "labelled"}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(r) = req.get("namespace_label") {
            let edits: Vec<String> = serde_json::from_value(r["edits"].clone()).unwrap_or_default();
            match brindle_lab::netpol::parse_edits(&edits)
                .and_then(|e| lab.namespace_label(r["name"].as_str().unwrap_or_default(), &e))
            {
                Ok(()) => json!({"ok": "labelled"}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(objs) = req.get("apply").and_then(Value::as_array) {
            match lab.apply(objs) {
                Ok(lines) => json!({"ok": lines}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(objs) = req.get("delete").and_then(Value::as_array) {
            match lab.delete_objects(objs) {
                Ok(lines) => json!({"ok": lines}),
                Err(e) => json!({"error": e}),
            }
        } else if let Some(p) = req.get("probe") {
            let port = p["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(80);
            let (pods, m) = lab.probe_all(port, p["protocol"].as_str().unwrap_or("tcp"));
            json!({"ok": {"pods": pods, "reached": m.into_iter().collect::<Vec<_>>()}})
        } else if let Some(n) = req.get("pod_ns").and_then(Value::as_str) {
            match lab.pods.get(n) {
                Some(p) => json!({"ok": p.ns.name()}),
                None => json!({"error": format!("no pod {n}")}),
            }
        } else {
            json!({"error": "unknown request"})
        };
        write_ledger(&lab);
        let _ = writeln!(&conn, "{reply}");
    }
    drop(lab);
    let _ = std::fs::remove_file(socket(dir));
    let _ = std::fs::remove_file(dir.join("ledger.json"));
    let _ = std::fs::remove_file(dir.join("ready"));
    let _ = std::fs::remove_file(dir.join("supervisor.pid"));
    Ok(())
}

/// Removes what a dead supervisor's ledger lists.
fn sweep(dir: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("ledger.json")) else {
        println!("nothing to remove");
        return Ok(());
    };
    let l: Ledger = serde_json::from_str(&text)?;
    for pid in l.pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline);
        // Only a process that is still what we started (a PID can be reused).
        if ["brindle", "bird", "etcd", "python3"]
            .iter()
            .any(|w| cmd.contains(w))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for ns in l.namespaces.iter().rev() {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    // Only a directory the lab made itself (a temp dir named brindle-lab-*).
    if let Some(d) = l.dir.filter(|d| {
        d.starts_with(std::env::temp_dir())
            && d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("brindle-lab-"))
    }) {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(dir.join("ledger.json"));
    let _ = std::fs::remove_file(socket(dir));
    println!("removed what the ledger listed (the supervisor was not running)");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.state_dir;
    match cli.cmd {
        Cmd::Up(spec) => up(dir, &spec),
        Cmd::Supervise(spec) => supervise(dir, spec),
        Cmd::Status => {
            print!(
                "{}",
                ask(dir, json!({"status": {}}))?
                    .as_str()
                    .unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Service {
            cmd: ServiceCmd::Add(spec),
        } => {
            let a = ask(dir, json!({ "service_add": *spec }))?;
            println!(
                "service {}: cluster IP {}",
                spec.name,
                a["clusterIP"].as_str().unwrap_or_default()
            );
            if let Some(v6) = a["clusterIPv6"].as_str() {
                println!("  IPv6: {v6}");
            }
            for p in a["ports"].as_array().into_iter().flatten() {
                println!(
                    "  port {} -> {} {}{}",
                    p["port"],
                    p["targetPort"],
                    p["protocol"].as_str().unwrap_or_default(),
                    p["nodePort"]
                        .as_u64()
                        .map(|n| format!(", nodePort {n}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        Cmd::Service {
            cmd: ServiceCmd::Del { name },
        } => {
            ask(dir, json!({ "service_del": name }))?;
            println!("service {name} deleted");
            Ok(())
        }
        Cmd::Pod {
            cmd:
                PodCmd::Add {
                    name,
                    node,
                    namespace,
                    labels,
                },
        } => {
            let key = pod_key(&namespace, &name);
            let ip = ask(
                dir,
                json!({"pod_add": {"name": key, "node": node, "labels": labels}}),
            )?;
            println!(
                "pod {key} on {node}: {}",
                ip["ip"].as_str().unwrap_or_default()
            );
            if let Some(v6) = ip["ipv6"].as_str() {
                println!("  IPv6: {v6}");
            }
            Ok(())
        }
        Cmd::Pod {
            cmd: PodCmd::Label { pod, edits },
        } => {
            ask(dir, json!({"pod_label": {"pod": pod, "edits": edits}}))?;
            println!("pod {pod} labelled");
            Ok(())
        }
        Cmd::Namespace {
            cmd: NamespaceCmd::Add { name, labels },
        } => {
            ask(
                dir,
                json!({"namespace_label": {"name": name, "edits": labels}}),
            )?;
            println!("namespace {name} added");
            Ok(())
        }
        Cmd::Namespace {
            cmd: NamespaceCmd::Label { name, edits },
        } => {
            ask(
                dir,
                json!({"namespace_label": {"name": name, "edits": edits}}),
            )?;
            println!("namespace {name} labelled");
            Ok(())
        }
        Cmd::Apply { file } => {
            let objs = read_yaml(&file)?;
            for l in ask(dir, json!({ "apply": objs }))?
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{}", l.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Delete { file } => {
            let objs = read_yaml(&file)?;
            for l in ask(dir, json!({ "delete": objs }))?
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{}", l.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Probe {
            port,
            protocol,
            json,
        } => {
            let v = ask(dir, json!({"probe": {"port": port, "protocol": protocol}}))?;
            if json {
                println!("{v}");
                return Ok(());
            }
            let pods: Vec<String> = serde_json::from_value(v["pods"].clone())?;
            let reached: std::collections::BTreeSet<(String, String)> =
                serde_json::from_value(v["reached"].clone())?;
            println!("{port}/{protocol}: rows reach columns (. yes, X no)\n");
            print!("{}", brindle_lab::netpol::truth_table(&pods, &reached));
            Ok(())
        }
        Cmd::Pod {
            cmd: PodCmd::Del { name },
        } => {
            ask(dir, json!({"pod_del": name}))?;
            println!("pod {name} deleted");
            Ok(())
        }
        Cmd::Exec { pod, cmd } => {
            let ns = ask(dir, json!({"pod_ns": pod}))?;
            let status = Command::new("ip")
                .args(["netns", "exec", ns.as_str().unwrap_or_default()])
                .args(&cmd)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Node { cmd } => {
            let f = match cmd {
                NodeCmd::Stop { name } => Fault::NodeStop(name),
                NodeCmd::Kill { name } => Fault::NodeKill(name),
                NodeCmd::Start { name } => Fault::NodeStart(name),
                NodeCmd::Restart { name } => Fault::NodeRestart(name),
                NodeCmd::Add { rack } => Fault::NodeAdd { rack },
                NodeCmd::Del { name } => Fault::NodeDel(name),
            };
            fault(dir, f)
        }
        Cmd::Graph { out } => {
            let dot = ask(dir, json!({"graph": {}}))?;
            let dot = dot.as_str().unwrap_or_default();
            let Some(out) = out else {
                print!("{dot}");
                return Ok(());
            };
            brindle_ctl::graph::write(dot, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Etcd { action } => fault(
            dir,
            Fault::Etcd {
                up: action == "start",
            },
        ),
        Cmd::Link { node, state } => fault(
            dir,
            Fault::Link {
                node,
                up: state == "up",
            },
        ),
        Cmd::Netem {
            node,
            delay,
            loss,
            clear,
        } => {
            if !clear && delay.is_none() && loss.is_none() {
                bail!("say --delay, --loss or --clear");
            }
            fault(dir, Fault::Netem { node, delay, loss })
        }
        Cmd::Tor { action, rack } => fault(
            dir,
            Fault::Tor {
                rack,
                up: action == "start",
            },
        ),
        Cmd::Down => match ask(dir, json!({"down": {}})) {
            Ok(_) => {
                // Wait for the supervisor to finish tearing down.
                let start = Instant::now();
                while socket(dir).exists() && start.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                println!("lab removed");
                Ok(())
            }
            Err(_) => sweep(dir),
        },
    }
}

/// A panic's message.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Asks the lab to cause `f` and prints what it did.
fn fault(dir: &Path, f: Fault) -> anyhow::Result<()> {
    let said = ask(dir, json!({ "fault": f }))?;
    println!("{}", said.as_str().unwrap_or_default());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brindle-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor is started with the spec as flags: every field must survive the trip
    /// (a flag once forgotten here made `up --ip-family dual` build an IPv4 lab).
    #[test]
    fn spec_args_carry_every_field() {
        let spec = LabSpec {
            nodes: 5,
            racks: 2,
            tor: true,
            encap: brindle_lab::Encap::Crosssubnet,
            reflectors: 0,
            datastore: brindle_lab::Datastore::Kubernetes,
            gc_grace: "9s".into(),
            workload_gc_grace_seconds: 7,
            zones: 3,
            iptables_backend: "legacy".into(),
            dataplane: "nftables".into(),
            etcd_tls: true,
            ip_family: brindle_lab::IpFamily::Dual,
        };
        let mut argv = vec!["brindle-lab".to_string(), "supervise".into()];
        argv.extend(spec_args(&spec));
        let Cmd::Supervise(back) = Cli::try_parse_from(argv).expect("parses").cmd else {
            panic!("not supervise");
        };
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
    }
}
