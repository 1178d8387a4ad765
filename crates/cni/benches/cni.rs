//! ADD and DEL latency of the plugin binary (release build), p50/p99, for 100 pods one at a
//! time and 100 pods 20 at a time, on a local etcd (data on disk):
//! - through the agent: the plugin asks the node agent's IPAM socket; the server is
//!   `brindle_cni::agent::Server`, the code `brindle-node` runs, here inside the benchmark
//!   process on a runtime of its own;
//! - the same, with the plugin statically linked as the image ships it (built by
//!   crates/cni/static.sh);
//! - direct: no agent, the plugin does IPAM itself under the host lock (the fallback path);
//! - the reference plugins `ptp` + `host-local` (containernetworking-plugins, a file on
//!   local disk and no datastore at all), run by the same harness on the same pods;
//! - the same through the agent for dual-stack pods (an address of each family, the IPv6
//!   routes and sysctls), beside IPv4 only;
//! - the cost of starting a process at all (`/bin/true`), the floor for any exec-based
//!   plugin.
//!
//! The benchmark process moves itself into a network namespace of its own before it starts
//! anything, so etcd, the plugin and the pods' veths all live there and nothing touches the
//! machine's own network.
//!
//! Run: `cargo bench -p brindle-cni --bench cni` (`BRINDLE_BENCH_CNI=<path>` runs another build
//! of the plugin). Writes bench-results/cni.json.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_api::{BrindleNode, IPPool, IPPoolSpec};
use brindle_cni::agent::Server;
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_ipam::Ipam;
use brindle_testsupport::bench::{cpu_secs, write_results, Sample};
use brindle_testsupport::{CniCall, EtcdServer, Netns};
use serde_json::json;

const PODS: usize = 100;

fn run_plugin(plugin: &str, command: &str, conf: &str, container: &str, netns: &str) -> Duration {
    let t = Instant::now();
    let out = CniCall {
        command,
        container,
        netns: Some(netns),
        pod: Some(("bench", container)),
        env: &[],
    }
    .run(Command::new(plugin), conf.as_bytes())
    .expect("plugin");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{command} {container}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

/// CPU milliseconds per operation: the plugin processes (with any plugin they run, e.g.
/// host-local), this process (the agent's server and the harness), etcd.
#[derive(Clone, Copy, Default)]
struct Cpu {
    plugin: f64,
    here: f64,
    etcd: f64,
}

#[allow(clippy::too_many_arguments)]
fn timed(
    plugin: &str,
    parallel: usize,
    pods: &[Netns],
    conf: &str,
    command: &str,
    tag: &str,
    etcd: &str,
) -> (Sample, Cpu) {
    let (here0, children0) = cpu_secs("self");
    let (etcd0, _) = cpu_secs(etcd);
    let start = Instant::now();
    let mut lat = vec![];
    for chunk in pods.chunks(parallel).enumerate() {
        let (c, batch) = chunk;
        let got: Vec<Duration> = std::thread::scope(|s| {
            let hs: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let id = format!("{tag}-{}", c * parallel + i);
                    s.spawn(move || run_plugin(plugin, command, conf, &id, &ns.path()))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        lat.extend(got);
    }
    let mut s = Sample {
        lat,
        secs: start.elapsed().as_secs_f64(),
        conflicts: 0,
    };
    s.lat.sort();
    let (here1, children1) = cpu_secs("self");
    let (etcd1, _) = cpu_secs(etcd);
    let per_op = |d: f64| d * 1e3 / pods.len() as f64;
    let cpu = Cpu {
        plugin: per_op(children1 - children0),
        here: per_op(here1 - here0),
        etcd: per_op(etcd1 - etcd0),
    };
    (s, cpu)
}

/// The phase timings brindle-cni logs, milliseconds since the plugin started its work: ADD's
/// IPAM answer and veth pair (side by side), the wiring after both, and its whole; DEL's
/// IPAM and unwiring (one after the other).
const PHASES: [(&str, &str); 6] = [
    ("ADD", "ipam_ms"),
    ("ADD", "pair_ms"),
    ("ADD", "wire_ms"),
    ("ADD", "total_ms"),
    ("DEL", "ipam_ms"),
    ("DEL", "unwire_ms"),
];

/// Medians of [`PHASES`] for containers `<tag>-*`.
fn phases(log: &std::path::Path, tag: &str) -> [f64; 6] {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut v: [Vec<f64>; 6] = Default::default();
    let field = |line: &str, name: &str| -> Option<f64> {
        let rest = &line[line.find(&format!(" {name}="))? + name.len() + 2..];
        rest.split_whitespace().next()?.parse().ok()
    };
    for line in text
        .lines()
        .filter(|l| l.contains(&format!("container={tag}-")))
    {
        for (i, (op, name)) in PHASES.iter().enumerate() {
            if line.contains(&format!("op=\"{op}\"")) {
                v[i].extend(field(line, name));
            }
        }
    }
    v.map(|mut xs| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    })
}

/// The plugin as the image ships it, statically linked (crates/cni/static.sh), unless
/// BRINDLE_BENCH_CNI names the build to measure.
fn static_build() -> Option<String> {
    if std::env::var_os("BRINDLE_BENCH_CNI").is_some() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/static.sh");
    eprintln!("building the static plugin ({script})");
    match Command::new("bash").arg(script).output() {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            Some(format!("{dir}/brindle-cni"))
        }
        Ok(o) => {
            eprintln!(
                "no static row: {script} failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("no static row: {script}: {e}");
            None
        }
    }
}

fn main() {
    let static_bin = static_build();
    let node = Netns::new("brl-bench-node");
    let f = std::fs::File::open(node.path()).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the benchmark namespace");
    Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    // A node forwards (ptp would switch it on at its first ADD; brindle-node's host needs it
    // for any pod traffic to leave), so every run starts alike.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward in the namespace");
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        .expect("IPv6 forwarding in the namespace");
    let dir = std::env::temp_dir().join(format!("brindle-cni-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    let etcd = EtcdServer::start_on_disk();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::new(
            EtcdBackend::connect(&[etcd.endpoint()])
                .await
                .expect("etcd"),
        );
        let mut pool = IPPoolSpec::new("10.72.0.0/16");
        pool.block_size = Some(26);
        store
            .all::<IPPool>()
            .create(&IPPool::new("pods", pool))
            .await
            .expect("pool");
        // For the dual-stack run (only it asks for IPv6 addresses).
        let mut pool6 = IPPoolSpec::new("fd00:72::/64");
        pool6.block_size = Some(122);
        store
            .all::<IPPool>()
            .create(&IPPool::new("pods6", pool6))
            .await
            .expect("IPv6 pool");
        store
            .all::<BrindleNode>()
            .create(&brindle_ipam::nodes::brindle_node("bench-node", &[]))
            .await
            .expect("node");
    });
    // The agent's log (its own timings of each ADD's IPAM), for the breakdown below.
    let agent_log = dir.join("agent.log");
    if let Ok(f) = std::fs::File::create(&agent_log) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("brindle_cni=debug"))
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .try_init();
    }
    // The agent's IPAM server, on a runtime of its own (as in brindle-node).
    let socket = dir.join("ipam.sock");
    let agent_rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let store = rt
            .block_on(EtcdBackend::connect(&[etcd.endpoint()]))
            .expect("etcd");
        let store = Store::new(store);
        let server = Server {
            ipam: Arc::new(Ipam::new(store.clone())),
            store,
            node: "bench-node".into(),
            path: socket.clone(),
            // IPAM only: NetworkPolicy's part of ADD is measured by the lab's policy bench.
            attachments: None,
            observe: None,
        };
        agent_rt.spawn(server.run());
    }
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    // As brindle-node leaves it once the node's dataplane is programmed.
    let ready = dir.join("dataplane-ready");
    std::fs::write(&ready, "synced").expect("the dataplane-ready file");
    let brindle = |ipam_socket: &std::path::Path| {
        json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "brindle-cni",
            "nodename": "bench-node", "datastore_type": "etcd", "etcd_endpoints": etcd.endpoint(),
            "log_file_path": dir.join("cni.log"), "ipam_lock_file": dir.join("ipam.lock"),
            "ipam_socket": ipam_socket, "dataplane_ready_file": ready,
        })
        .to_string()
    };
    let ptp = json!({
        "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": false, "mtu": 1500,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.73.0.0/16"}]],
                 "dataDir": dir.join("host-local")}
    })
    .to_string();
    let ptp_bin = "/usr/lib/cni/ptp";
    // BRINDLE_BENCH_CNI compares another build of the plugin (or a wrapper around it).
    let brindle_bin_var = std::env::var("BRINDLE_BENCH_CNI").ok();
    let brindle_bin = brindle_bin_var
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_brindle-cni"));
    let dual = {
        let mut c: serde_json::Value = serde_json::from_str(&brindle(&socket)).expect("conf");
        c["ipam"] = json!({"type": "brindle-ipam", "assign_ipv6": true});
        c.to_string()
    };
    let mut runs: Vec<(&str, &str, String)> = vec![
        (
            "brindle-cni through the agent",
            brindle_bin,
            brindle(&socket),
        ),
        (
            "brindle-cni through the agent, dual stack (an IPv4 and an IPv6 address)",
            brindle_bin,
            dual,
        ),
    ];
    if let Some(bin) = &static_bin {
        runs.push((
            "brindle-cni static (as the image ships it), through the agent",
            bin,
            brindle(&socket),
        ));
    }
    runs.extend([(
        "brindle-cni direct (no agent)",
        brindle_bin,
        brindle(std::path::Path::new("")),
    )]);
    if std::path::Path::new(ptp_bin).exists() {
        runs.push(("ptp + host-local (reference)", ptp_bin, ptp));
    } else {
        eprintln!(
            "{ptp_bin} missing (apt-get install containernetworking-plugins): no reference row"
        );
    }

    let floor = {
        let mut lat: Vec<Duration> = (0..PODS)
            .map(|_| {
                let t = Instant::now();
                Command::new("/bin/true").status().expect("true");
                t.elapsed()
            })
            .collect();
        lat.sort();
        Sample {
            lat,
            secs: 0.0,
            conflicts: 0,
        }
    };

    let etcd_pid = etcd.pid().map(|p| p.to_string()).unwrap_or_default();
    let mut cpu = vec![];
    let mut breakdown = vec![];
    let mut rows = vec![(
        "exec /bin/true (floor)".to_string(),
        1,
        floor.clone(),
        floor,
    )];
    for parallel in [1, 20] {
        for (i, (label, bin, conf)) in runs.iter().enumerate() {
            let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("brl-bench-pod")).collect();
            let tag = format!("r{i}p{parallel}");
            let (add, add_cpu) = timed(bin, parallel, &pods, conf, "ADD", &tag, &etcd_pid);
            let (del, del_cpu) = timed(bin, parallel, &pods, conf, "DEL", &tag, &etcd_pid);
            rows.push((label.to_string(), parallel, add, del));
            cpu.push((label.to_string(), parallel, add_cpu, del_cpu));
            if label.starts_with("brindle-cni") {
                breakdown.push((
                    label.to_string(),
                    parallel,
                    phases(&dir.join("cni.log"), &tag),
                ));
            }
        }
    }

    println!("\nCNI ADD/DEL latency, {PODS} pods per run, etcd on disk (ms)\n");
    println!("| plugin | concurrency | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut out = vec![];
    for (label, par, add, del) in &rows {
        println!(
            "| {label} | {par} | {:.2} | {:.2} | {:.2} | {:.2} |",
            add.ms(0.5),
            add.ms(0.99),
            del.ms(0.5),
            del.ms(0.99)
        );
        out.push(json!({"run": label, "concurrency": par, "add_p50_ms": add.ms(0.5), "add_p99_ms": add.ms(0.99),
            "del_p50_ms": del.ms(0.5), "del_p99_ms": del.ms(0.99)}));
    }
    println!("\nCPU time per operation (ms): the plugin processes (with the plugins they run), this process (the agent's server and the harness), etcd\n");
    println!("| plugin | concurrency | ADD plugin | ADD here | ADD etcd | DEL plugin | DEL here | DEL etcd |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, par, a, d) in &cpu {
        println!(
            "| {label} | {par} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            a.plugin, a.here, a.etcd, d.plugin, d.here, d.etcd
        );
    }
    println!("\nwhere brindle-cni's time goes, medians from its log, ms since it started its work: ADD's IPAM (agent or own) and veth pair side by side, the wiring after both, the whole; DEL's IPAM, then unwiring\n");
    println!("| plugin | concurrency | ADD ipam | ADD pair | ADD wire | ADD total | DEL ipam | DEL unwire |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, par, p) in &breakdown {
        let cells: Vec<String> = p.iter().map(|x| format!("{x:.2}")).collect();
        println!("| {label} | {par} | {} |", cells.join(" | "));
    }
    let agent_phases = |tag: &str| -> [f64; 3] {
        let text = std::fs::read_to_string(&agent_log).unwrap_or_default();
        let mut v: [Vec<f64>; 3] = Default::default();
        for line in text.lines().filter(|l| {
            l.contains("ADD's IPAM done") && l.contains(&format!("k8s-pod-network.{tag}-"))
        }) {
            for (i, f) in ["read_ms", "alloc_ms", "total_ms"].iter().enumerate() {
                if let Some(x) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{f}=")))
                    .and_then(|x| x.parse().ok())
                {
                    v[i].push(x);
                }
            }
        }
        v.map(|mut xs| {
            xs.sort_by(f64::total_cmp);
            xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
        })
    };
    println!("\ninside the agent, medians (ms), cumulative: pod read; addresses taken (with the pod record, in one transaction, when batched); done\n");
    println!("| concurrency | pod read | allocated | done |");
    println!("|---:|---:|---:|---:|");
    for par in [1, 20] {
        let p = agent_phases(&format!("r0p{par}"));
        println!("| {par} | {:.2} | {:.2} | {:.2} |", p[0], p[1], p[2]);
    }
    drop(agent_rt);
    write_results("cni.json", &serde_json::Value::Array(out));
    let _ = std::fs::remove_dir_all(&dir);
}
