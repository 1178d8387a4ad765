//! Pod ADD under NetworkPolicy: `cargo bench -p brindle-lab --bench policy`.
//!
//! A two-node lab (release binaries, etcd); 30 pods added one after another on one node with
//! no policy, then 30 more under 100 policies that isolate every pod of the namespace (each
//! new pod's ingress chain jumps to all 100, and its interface has no chains until the agent
//! has written them: the ADD waits for that). Times each CNI ADD as the runtime sees it (the
//! plugin's process, start to result), p50 and p99, and prints them side by side with the
//! difference. Writes `bench-results/lab-policy.json`.

use std::time::Instant;

use brindle_lab::{Lab, LabSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

const PODS: usize = 30;
const POLICIES: usize = 100;

fn policy(i: usize) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("p{i}")},
        "spec": {"podSelector": {},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": format!("client-{i}")}}}],
                              "ports": [{"port": 1000 + i as i32}]}]}
    }))
    .expect("policy")
}

fn adds(lab: &mut Lab, node: &str, prefix: &str) -> Vec<f64> {
    let mut v = vec![];
    for i in 0..PODS {
        let name = format!("{prefix}{i}");
        let t = Instant::now();
        let mut took = 0.0;
        lab.pod_add_with(&name, node, None, &mut |_| {
            took = t.elapsed().as_secs_f64() * 1e3
        })
        .expect("pod add");
        v.push(took);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    brindle_lab::use_release_binaries();
    let spec = LabSpec {
        nodes: 2,
        ..Default::default()
    };
    let mut lab = Lab::up(spec, &mut |_| {}).expect("lab");
    let node = lab.nodes[0].name.clone();
    // Warm up (the first ADD pays for the agent's first connection to etcd).
    lab.pod_add("warm", &node).expect("warm up");
    let none = adds(&mut lab, &node, "open-");
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
    let under = adds(&mut lab, &node, "isolated-");
    println!("\npod ADD (the plugin's process, start to result), {PODS} pods one at a time, ms\n");
    println!("{:<28} {:>8} {:>8}", "", "p50", "p99");
    println!(
        "{:<28} {:>8.2} {:>8.2}",
        "no policy",
        pct(&none, 0.5),
        pct(&none, 0.99)
    );
    println!(
        "{:<28} {:>8.2} {:>8.2}",
        format!("{POLICIES} policies isolating it"),
        pct(&under, 0.5),
        pct(&under, 0.99)
    );
    println!(
        "{:<28} {:>8.2}",
        "added to p50",
        pct(&under, 0.5) - pct(&none, 0.5)
    );
    let out = json!({
        "pods": PODS, "policies": POLICIES,
        "none_ms": {"p50": pct(&none, 0.5), "p99": pct(&none, 0.99)},
        "under_ms": {"p50": pct(&under, 0.5), "p99": pct(&under, 0.99)},
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("lab-policy.json"), out.to_string());
}
