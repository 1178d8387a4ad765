//! Pod ADD under NetworkPolicy: `cargo bench -p brindle-lab --bench policy`.
//!
//! A three-node lab (release binaries, etcd); labelled pods added one after another on one
//! node with no policy, then under 100 policies that isolate every pod of the namespace
//! (each new pod's ingress chain goes through the group of all 100, and its interface passes
//! nothing until the agent has written its chains: the ADD waits for them and for its
//! address in the sets). Each phase twice: the ADD at once after the Pod is written (the
//! agent learns of the pod from the ADD's race with its watch), and 100 ms after (a
//! kubelet's sandbox start: the agent sees the Pod when the kubelet does and writes the
//! pod's chains before its interface exists). Times each CNI ADD as the runtime sees it (the
//! plugin's process, start to result), p50 and p99, with the part the agent held it and
//! the agent's own account of its syncs (its log). Writes `bench-results/lab-policy.json`.
//! Then enforcement latency (the anchor: Kubernetes perf-tests' ~0.7 s): 20 policies
//! created one at a time, each from the store write to the last node's log line that
//! follows its restore. `BRINDLE_BENCH_PERF=<file>` records the agent with `perf record` (DWARF
//! call graphs) during the fourth phase; `BRINDLE_BENCH_LOG=<file>` keeps the first node's agent log.

use std::time::{Duration, Instant, SystemTime};

use brindle_lab::{Lab, LabSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

const PODS: usize = 30;
const POLICIES: usize = 100;
const ENFORCE_SAMPLES: usize = 20;
/// A kubelet's time from seeing a Pod to calling CNI (sandbox and pause container): the
/// agent sees the Pod at the same moment, so its chains can be written in between.
const KUBELET_GAP_MS: u64 = 100;

fn policy(i: usize) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("p{i}")},
        "spec": {"podSelector": {},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{i}")}}}],
                              "ports": [{"port": 1000 + i as i32}]}]}
    }))
    .expect("policy")
}

/// `PODS` labelled pods added one after another, each ADD `gap` after its Pod is written;
/// the CNI ADDs' times (the plugin's process, start to result), sorted.
fn adds(lab: &mut Lab, node: &str, prefix: &str, gap: Duration) -> Vec<f64> {
    let mut v = vec![];
    for i in 0..PODS {
        let name = format!("{prefix}{i}");
        lab.pod_add_after(&name, node, &[("app", "bench")], gap)
            .expect("pod add");
        v.push(lab.last_add.expect("timed").as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// One phase: its ADDs' times and what the agent's log says about them.
fn phase(lab: &mut Lab, node: &str, prefix: &str, gap: Duration) -> (Vec<f64>, Agent) {
    let log = lab.nodes[0].log();
    let at = log_len(&log);
    let v = adds(lab, node, prefix, gap);
    (v, agent(&log, at))
}

/// What the agent's log says about one phase (from `offset`): its syncs (count, median
/// `render_ms`, `write_ms`, `total_ms`, `rules_total`) and each ADD's wait for its chains.
struct Agent {
    syncs: usize,
    render: f64,
    restore: f64,
    rules: f64,
    waits: Vec<f64>,
}

fn agent(log: &std::path::Path, offset: usize) -> Agent {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(offset..).unwrap_or_default()).to_string();
    let field = |l: &str, k: &str| -> Option<f64> {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
    };
    let synced: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("services programmed"))
        .collect();
    let med = |k: &str| {
        let mut v: Vec<f64> = synced.iter().filter_map(|l| field(l, k)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut waits: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("policy chains ready"))
        .filter_map(|l| field(l, "wait_ms"))
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    Agent {
        syncs: synced.len(),
        render: med("render_ms"),
        restore: med("write_ms"),
        rules: med("rules_total"),
        waits,
    }
}

/// Policy created → every node's agent has written it (its log line after the restore,
/// counting the policies it holds), ms; one new policy at a time.
fn enforcement(lab: &Lab) -> Vec<f64> {
    let api = lab.store.namespaced::<NetworkPolicy>("default");
    let mut out = vec![];
    for i in POLICIES..POLICIES + ENFORCE_SAMPLES {
        let offsets: Vec<usize> = lab.nodes.iter().map(|n| log_len(&n.log())).collect();
        let t0 = SystemTime::now();
        lab.block_on(api.create(&policy(i))).expect("create policy");
        let want = format!("policies={} ", i + 1);
        let mut worst = Duration::ZERO;
        for (n, offset) in lab.nodes.iter().zip(offsets) {
            let deadline = Instant::now() + Duration::from_secs(30);
            let at = loop {
                let text = std::fs::read(n.log()).unwrap_or_default();
                let text =
                    String::from_utf8_lossy(text.get(offset..).unwrap_or_default()).to_string();
                let line = text
                    .lines()
                    .find(|l| l.contains("services programmed") && l.contains(&want));
                if let Some(ts) = line
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                {
                    break SystemTime::from(ts);
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never programmed policy {i}",
                    n.name
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            worst = worst.max(at.duration_since(t0).unwrap_or_default());
        }
        out.push(worst.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(300));
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn log_len(log: &std::path::Path) -> usize {
    std::fs::metadata(log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    brindle_lab::use_release_binaries();
    let spec = LabSpec {
        nodes: 3,
        ..Default::default()
    };
    let mut lab = Lab::up(spec, &mut |_| {}).expect("lab");
    let node = lab.nodes[0].name.clone();
    // Warm up (the first ADD pays for the agent's first connection to etcd).
    lab.pod_add("warm", &node).expect("warm up");
    let gap = Duration::from_millis(KUBELET_GAP_MS);
    let none = phase(&mut lab, &node, "open-", Duration::ZERO);
    let none_gap = phase(&mut lab, &node, "opengap-", gap);
    let api = lab.store.namespaced::<NetworkPolicy>("default");
    lab.block_on(async {
        for i in 0..POLICIES {
            api.create(&policy(i)).await.expect("create policy");
        }
    });
    // Until the agent has them: an existing pod stops answering its neighbour.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while lab.reach("open-0", "open-1").is_ok() {
        assert!(Instant::now() < deadline, "the policies never arrived");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let under = phase(&mut lab, &node, "isolated-", Duration::ZERO);
    let perf = std::env::var("BRINDLE_BENCH_PERF").ok().map(|out| {
        let pid = lab.nodes[0].agent_pid().expect("agent pid").to_string();
        std::process::Command::new("perf")
            .args([
                "record",
                "--call-graph",
                "dwarf,16384",
                "-F",
                "2000",
                "-o",
                &out,
                "-p",
                &pid,
            ])
            .spawn()
            .expect("perf")
    });
    let under_gap = phase(&mut lab, &node, "isolatedgap-", gap);
    if let Some(mut p) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    if let Ok(keep) = std::env::var("BRINDLE_BENCH_LOG") {
        let _ = std::fs::copy(lab.nodes[0].log(), keep);
    }
    let enforce = enforcement(&lab);
    println!(
        "\npod ADD, {PODS} labelled pods one at a time (ms): the CNI plugin's process, start to result,"
    );
    println!(
        "and the part of it the agent held the ADD until the pod's policy chains and sets were written;"
    );
    println!(
        "each ADD at once after its Pod is written, or {KUBELET_GAP_MS} ms after (a kubelet's sandbox start)\n"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>10} {:>10} {:>6} {:>8} {:>8} {:>6}",
        "", "ADD p50", "ADD p99", "wait p50", "wait p99", "syncs", "render", "restore", "rules"
    );
    let rows = [
        ("no policy, at once", &none),
        ("no policy, after the gap", &none_gap),
        ("100 policies isolating it, at once", &under),
        ("100 policies, after the gap", &under_gap),
    ];
    for (what, (v, a)) in rows {
        println!(
            "{what:<34} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>6} {:>8.1} {:>8.1} {:>6.0}",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(&a.waits, 0.5),
            pct(&a.waits, 0.99),
            a.syncs,
            a.render,
            a.restore,
            a.rules
        );
    }
    println!(
        "\na policy created -> in the kernel of every node ({} nodes, {} samples, {POLICIES}+ policies): p50 {:.1} ms, p99 {:.1} ms",
        lab.nodes.len(),
        enforce.len(),
        pct(&enforce, 0.5),
        pct(&enforce, 0.99)
    );
    let json_of = |(v, a): &(Vec<f64>, Agent)| {
        json!({"add_p50_ms": pct(v, 0.5), "add_p99_ms": pct(v, 0.99),
               "wait_p50_ms": pct(&a.waits, 0.5), "wait_p99_ms": pct(&a.waits, 0.99),
               "syncs": a.syncs, "render_ms": a.render, "restore_ms": a.restore, "rules": a.rules})
    };
    let out = json!({
        "pods": PODS, "policies": POLICIES, "kubelet_gap_ms": KUBELET_GAP_MS,
        "none": json_of(&none), "none_after_gap": json_of(&none_gap),
        "under": json_of(&under), "under_after_gap": json_of(&under_gap),
        "enforced_ms": {"p50": pct(&enforce, 0.5), "p99": pct(&enforce, 0.99), "samples": enforce.len()},
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("lab-policy.json"), out.to_string());
}
