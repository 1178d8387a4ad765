//! One real agent in a large synthetic cluster: `cargo bench -p brindle-lab --bench synthetic`.
//!
//! A one-node lab (etcd datastore, release binaries, no controller) whose etcd is filled as a
//! 5,000-node cluster's would be: 5,000 nodes, each with a /26 block (30 addresses allocated)
//! and its affinity, 150,000 pods (30 a node, over 100 namespaces, with labels, addresses and
//! a named port), 10,000 Services each with an EndpointSlice of 5 endpoints, 1,000
//! NetworkPolicies (a pod selector, peers by pod and by namespace labels, a named port). The
//! node-to-node mesh is off (nobody runs a 5,000-node mesh): the BGP side is the node's own.
//! Then node-0's agent starts, and we measure:
//! - startup: until its first "services programmed" line that holds every Service, every
//!   policy and every pod (policy's projection), and the bytes etcd sent meanwhile
//!   (`etcd_network_client_grpc_sent_bytes_total`: the agent is etcd's only client then);
//! - its peak RSS (VmHWM);
//! - CPU for 1,000 pod events on other nodes, twice: a label no policy reads changed, then a
//!   label policies' selectors read (`tier`); and per event on its own node (`tier`); each
//!   less the same idle time's CPU. The agent's own CPU and its tools' (iptables-restore).
//!   The periodic read-backs of the dataplane are off (`--iptables-refresh-interval 1h`,
//!   `--route-refresh-interval 1h`): at this size they would bury the events' cost.
//!
//! `BRINDLE_BENCH_SCALE` (default 1) multiplies every count (0.1 for a quick run);
//! `BRINDLE_BENCH_BIN_DIR` runs the `brindle-node` found there instead (another build, e.g.
//! the one before a change); `BRINDLE_BENCH_AGENT_ARGS` adds flags to it (`--policy=false`
//! to see what policy costs). Prints a table and writes `bench-results/lab-synthetic.json`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use brindle_api::{BGPConfiguration, BlockAffinity, BrindleNode, IPAMBlock, IPPool, IPPoolSpec};
use brindle_datastore::{Store, StoreResource};
use brindle_lab::{Lab, LabSpec};
use brindle_testsupport::bench::{cpu_secs, proc_status_mib, write_results};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

const PODS_PER_NODE: usize = 30;
const NAMESPACES: usize = 100;
/// The synthetic pool: 5,000 /26 blocks need 320,000 addresses.
const POOL_BASE: u32 = 0x0a40_0000; // 10.64.0.0/13

fn ip(n: u32) -> String {
    std::net::Ipv4Addr::from(n).to_string()
}

fn typed<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a well-formed synthetic object")
}

fn pod_ip(node: usize, j: usize) -> u32 {
    POOL_BASE + (node as u32) * 64 + j as u32 + 1
}

/// Pod `j` of `node`; `generation` is a label no policy reads, `shift` moves its `tier`
/// (which policies' peer selectors read).
fn pod(node: usize, j: usize, generation: usize, shift: usize) -> Pod {
    let k = node * PODS_PER_NODE + j;
    let tier = ["web", "db", "cache"][(j + shift) % 3];
    typed(json!({
        "metadata": {
            "name": format!("p-{node}-{j}"),
            "namespace": format!("ns-{}", k % NAMESPACES),
            "labels": {"app": format!("a{}", k % 50), "tier": tier,
                       "generation": generation.to_string()},
        },
        "spec": {"nodeName": format!("node-{node}"),
                 "containers": [{"name": "c", "image": "registry.example/app:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip(pod_ip(node, j)),
                   "podIPs": [{"ip": ip(pod_ip(node, j))}]},
    }))
}

fn block(node: usize) -> IPAMBlock {
    let base = POOL_BASE + (node as u32) * 64;
    let mut allocations = vec![Value::Null; 64];
    let mut attributes = vec![];
    for j in 0..PODS_PER_NODE {
        allocations[j + 1] = json!(j);
        let k = node * PODS_PER_NODE + j;
        attributes.push(json!({"handleID": format!("k8s-pod-network.c{node}x{j}"),
            "secondary": {"namespace": format!("ns-{}", k % NAMESPACES),
                          "pod": format!("p-{node}-{j}"), "node": format!("node-{node}")}}));
    }
    let unallocated: Vec<u32> = (0..64u32)
        .filter(|o| *o == 0 || *o > PODS_PER_NODE as u32)
        .collect();
    typed(json!({
        "metadata": {"name": format!("10-{}-{}-{}-26", (base >> 16) & 255, (base >> 8) & 255, base & 255)},
        "spec": {"cidr": format!("{}/26", ip(base)), "affinity": format!("host:node-{node}"),
                 "allocations": allocations, "unallocated": unallocated, "attributes": attributes},
    }))
}

fn affinity(node: usize) -> BlockAffinity {
    let base = POOL_BASE + (node as u32) * 64;
    typed(json!({
        "metadata": {"name": format!("node-{node}-{}", ip(base).replace('.', "-"))},
        "spec": {"node": format!("node-{node}"), "cidr": format!("{}/26", ip(base)),
                 "state": "confirmed"},
    }))
}

fn service(i: usize) -> Service {
    typed(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("s{i}")},
        "spec": {"clusterIP": ip(0x0a60_0000 + i as u32),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
}

fn slice(i: usize, nodes: usize) -> EndpointSlice {
    let eps: Vec<Value> = (0..5)
        .map(|e| {
            let k = (i * 5 + e) % (nodes * PODS_PER_NODE);
            let (n, j) = (k / PODS_PER_NODE, k % PODS_PER_NODE);
            json!({"addresses": [ip(pod_ip(n, j))], "nodeName": format!("node-{n}"),
                   "conditions": {"ready": true}})
        })
        .collect();
    typed(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("s{i}-1"),
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
}

fn policy(i: usize) -> NetworkPolicy {
    typed(json!({
        "metadata": {"namespace": format!("ns-{}", i % NAMESPACES), "name": format!("np{i}")},
        "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", i % 50)}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}},
                                       {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 10)}}}],
                              "ports": [{"port": "http", "protocol": "TCP"}]}]},
    }))
}

/// Creates `objs` in transactions of `per` objects, `parallel` at a time.
async fn fill<K: StoreResource + Clone + Send + Sync + 'static>(
    store: &Store,
    objs: Vec<K>,
    per: usize,
) {
    let mut jobs = tokio::task::JoinSet::new();
    for chunk in objs.chunks(per) {
        let chunk = chunk.to_vec();
        let store = store.clone();
        if jobs.len() >= 4 {
            jobs.join_next().await.expect("a job").expect("a fill job");
        }
        jobs.spawn(async move {
            let mut t = store.txn();
            for o in &chunk {
                let api = match &o.meta().namespace {
                    Some(ns) => store.namespaced::<K>(ns),
                    None => store.all::<K>(),
                };
                t.create(&api, o).expect("a valid object");
            }
            t.commit().await.expect("a committed fill transaction");
        });
    }
    while let Some(r) = jobs.join_next().await {
        r.expect("a fill job");
    }
}

/// Gives each of `targets` (node, pod) the labels of [`pod`]`(.., generation, shift)`, in
/// transactions of `per` pods.
fn relabel(
    lab: &Lab,
    store: &Store,
    targets: Vec<(usize, usize)>,
    generation: usize,
    shift: usize,
    per: usize,
) {
    lab.block_on(async {
        for chunk in targets.chunks(per) {
            let mut t = store.txn();
            for &(node, j) in chunk {
                let want = pod(node, j, generation, shift);
                let ns = want.metadata.namespace.clone().unwrap_or_default();
                let api = store.namespaced::<Pod>(&ns);
                let name = want.metadata.name.clone().unwrap_or_default();
                let mut cur = api.get(&name).await.expect("get").expect("a pod");
                cur.metadata.labels = want.metadata.labels;
                t.update(&api, &cur).expect("update");
            }
            t.commit().await.expect("commit");
        }
    });
}

/// `etcd_network_client_grpc_sent_bytes_total` from etcd's own /metrics.
fn etcd_sent_bytes(endpoint: &str) -> f64 {
    let addr = endpoint.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0.0;
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with("etcd_network_client_grpc_sent_bytes_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The agent's own CPU plus that of the tools it ran (iptables-restore), in seconds.
fn cpu(pid: u32) -> f64 {
    let (own, children) = cpu_secs(&pid.to_string());
    own + children
}

/// Waits for the log to hold a "services programmed" line (after `from`) with every field.
fn wait_programmed(log: &std::path::Path, from: usize, want: &[String], limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let text = std::fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
        if text.lines().any(|l| {
            l.contains("services programmed") && want.iter().all(|w| l.contains(w.as_str()))
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// CPU the agent used while `work` ran and for `settle` after, less the same idle time's.
fn cpu_for(pid: u32, settle: Duration, work: impl FnOnce()) -> f64 {
    let (c0, t0) = (cpu(pid), Instant::now());
    std::thread::sleep(settle);
    let idle_rate = (cpu(pid) - c0) / t0.elapsed().as_secs_f64();
    let (c1, t1) = (cpu(pid), Instant::now());
    work();
    std::thread::sleep(settle);
    let (used, took) = (cpu(pid) - c1, t1.elapsed().as_secs_f64());
    println!(
        "  cpu: {used:.3} s over {took:.1} s, idle rate {:.3} s/s ({:.3} s of it)",
        idle_rate,
        idle_rate * took
    );
    (used - idle_rate * took).max(0.0)
}

fn main() {
    brindle_lab::use_release_binaries();
    if let Ok(dir) = std::env::var("BRINDLE_BENCH_BIN_DIR") {
        std::env::set_var("BRINDLE_BIN_DIR", dir);
    }
    let scale: f64 = std::env::var("BRINDLE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);
    let (nodes, services, policies) = (n(5_000).max(2), n(10_000), n(1_000));
    let pods = nodes * PODS_PER_NODE;
    let lab = Lab::build(
        LabSpec {
            nodes: 1,
            ..Default::default()
        },
        &mut |_| {},
    )
    .expect("lab");
    let mut lab = lab;
    let store = lab.store.clone();
    let endpoint = lab.etcd.as_ref().expect("an etcd lab").endpoint();
    let filled = Instant::now();
    lab.block_on(async {
        let cfgs = store.all::<BGPConfiguration>();
        match cfgs.get("default").await.expect("get config") {
            Some(mut c) => {
                c.spec.node_to_node_mesh_enabled = false;
                cfgs.update(&c).await.expect("mesh off");
            }
            None => {
                let c: BGPConfiguration = typed(json!({"metadata": {"name": "default"},
                    "spec": {"nodeToNodeMeshEnabled": false}}));
                cfgs.create(&c).await.expect("mesh off");
            }
        }
        store
            .all::<IPPool>()
            .create(&IPPool::new("synthetic", IPPoolSpec::new("10.64.0.0/13")))
            .await
            .expect("pool");
        let ns: Vec<Namespace> = (0..NAMESPACES)
            .map(|k| typed(json!({"metadata": {"name": format!("ns-{k}"),
                                                "labels": {"team": format!("t{}", k % 10)}}})))
            .collect();
        fill(&store, ns, 100).await;
        let others: Vec<BrindleNode> = (1..nodes)
            .map(|i| typed(json!({"metadata": {"name": format!("node-{i}")},
                "spec": {"bgp": {"ipv4Address": format!("198.19.{}.{}/16", i / 250, i % 250 + 1)}}})))
            .collect();
        fill(&store, others, 100).await;
        fill(&store, (0..nodes).map(block).collect(), 100).await;
        fill(&store, (0..nodes).map(affinity).collect(), 100).await;
        // Pods take two etcd operations each (the pod and its node's entry): 60 a transaction.
        for first in (0..nodes).step_by(200) {
            let batch: Vec<Pod> = (first..(first + 200).min(nodes))
                .flat_map(|i| (0..PODS_PER_NODE).map(move |j| pod(i, j, 0, 0)))
                .collect();
            fill(&store, batch, 60).await;
        }
        fill(&store, (0..services).map(service).collect(), 100).await;
        fill(&store, (0..services).map(|i| slice(i, nodes)).collect(), 100).await;
        fill(&store, (0..policies).map(policy).collect(), 100).await;
    });
    let filled = filled.elapsed();
    println!(
        "filled etcd in {:.1} s: {nodes} nodes, {pods} pods, {services} Services, {policies} policies",
        filled.as_secs_f64()
    );

    let sent0 = etcd_sent_bytes(&endpoint);
    let t0 = Instant::now();
    let given = std::env::var("BRINDLE_BENCH_AGENT_ARGS").unwrap_or_default();
    // The lab reads the dataplane back every 3 s (its tests want drift repaired at once); at
    // this size each read-back costs far more than the events measured here. The read-backs
    // are off (an hour); BRINDLE_BENCH_AGENT_ARGS="--iptables-refresh-interval 30s" (the
    // default) shows their cost in the idle rate each CPU figure prints.
    let mut extra = vec![
        "--iptables-refresh-interval",
        "1h",
        "--route-refresh-interval",
        "1h",
    ];
    extra.extend(given.split_whitespace());
    lab.start_agent_with(0, &extra);
    let pid = lab.nodes[0].agent_pid().expect("agent pid");
    let log = lab.nodes[0].log();
    // With policy off the agent counts no policies or pods.
    let policy_on = !extra.contains(&"--policy=false");
    let (want_policies, want_pods) = if policy_on { (policies, pods) } else { (0, 0) };
    let want = vec![
        format!("services={services} "),
        format!("policies={want_policies} "),
        format!("pods={want_pods} "),
    ];
    assert!(
        wait_programmed(&log, 0, &want, Duration::from_secs(1200)),
        "the agent never programmed the whole cluster (see {})",
        log.display()
    );
    let startup = t0.elapsed();
    let sent = etcd_sent_bytes(&endpoint) - sent0;
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = proc_status_mib(pid, "VmHWM:");

    // 1,000 pod events elsewhere (nodes other than node-0), twice: a label no policy reads
    // changed, then `tier`, which policies' peer selectors read.
    let others = 1_000.min(pods - PODS_PER_NODE);
    let elsewhere = |generation: usize, shift: usize| {
        cpu_for(pid, Duration::from_secs(5), || {
            let targets = (0..others)
                .map(|k| (1 + k % (nodes - 1), (k / (nodes - 1)) % PODS_PER_NODE))
                .collect();
            relabel(&lab, &store, targets, generation, shift, 60);
        })
    };
    let unread = elsewhere(1, 0);
    let read = elsewhere(2, 1);
    // Events on its own node: each of its pods relabelled (`tier`), one write each, twice.
    let mine = 2 * PODS_PER_NODE;
    let own = cpu_for(pid, Duration::from_secs(5), || {
        for g in 3..5 {
            let targets = (0..PODS_PER_NODE).map(|j| (0, j)).collect();
            relabel(&lab, &store, targets, g, g, 1);
        }
    });
    let rss = proc_status_mib(pid, "VmHWM:");
    let row = json!({
        "nodes": nodes, "pods": pods, "services": services, "policies": policies,
        "fill_s": filled.as_secs_f64(),
        "startup_s": startup.as_secs_f64(),
        "startup_etcd_sent_mib": sent / 1048576.0,
        "agent_peak_rss_mib_at_startup": rss_start,
        "agent_peak_rss_mib": rss,
        "cpu_ms_per_1000_events_elsewhere_label_unread": unread * 1e3 / others as f64 * 1000.0,
        "cpu_ms_per_1000_events_elsewhere_label_read": read * 1e3 / others as f64 * 1000.0,
        "events_elsewhere": others,
        "cpu_ms_per_event_on_its_node": own * 1e3 / mine as f64,
    });
    let f = |k: &str| row[k].as_f64().unwrap_or(0.0);
    println!(
        "{:>6} {:>7} {:>6} {:>5} | {:>7} {:>8} {:>7} | {:>15} {:>13} {:>12}",
        "nodes",
        "pods",
        "svcs",
        "pols",
        "start s",
        "MiB recv",
        "RSS MiB",
        "ms/1000 unread",
        "ms/1000 read",
        "ms/own event"
    );
    println!(
        "{:>6} {:>7} {:>6} {:>5} | {:>7.1} {:>8.1} {:>7.0} | {:>15.0} {:>13.0} {:>12.1}",
        nodes,
        pods,
        services,
        policies,
        startup.as_secs_f64(),
        sent / 1048576.0,
        rss,
        f("cpu_ms_per_1000_events_elsewhere_label_unread"),
        f("cpu_ms_per_1000_events_elsewhere_label_read"),
        f("cpu_ms_per_event_on_its_node"),
    );
    drop(lab);
    write_results("lab-synthetic.json", &row);
}
