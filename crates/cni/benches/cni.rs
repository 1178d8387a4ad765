//! ADD and DEL latency of the plugin binary (release build), p50/p99, for 100 pods one at a
//! time and 100 pods 20 at a time, on a local etcd (data on disk). Beside it, the cost of
//! starting a process at all (`/bin/true`), the floor for any exec-based plugin.
//!
//! The benchmark process moves itself into a network namespace of its own before it starts
//! anything, so etcd, the plugin and the pods' veths all live there and nothing touches the
//! machine's own network.
//!
//! Run: `cargo bench -p brindle-cni --bench cni`. Writes bench-results/cni.json.

use std::process::Command;
use std::time::{Duration, Instant};

use brindle_api::{BrindleNode, IPPool, IPPoolSpec};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_testsupport::bench::{write_results, Sample};
use brindle_testsupport::{CniCall, EtcdServer, Netns};
use serde_json::json;

const PODS: usize = 100;

fn run_plugin(command: &str, conf: &str, container: &str, netns: &str) -> Duration {
    let t = Instant::now();
    let out = CniCall {
        command,
        container,
        netns: Some(netns),
        pod: Some(("bench", container)),
        env: &[],
    }
    .run(
        Command::new(env!("CARGO_BIN_EXE_brindle-cni")),
        conf.as_bytes(),
    )
    .expect("plugin");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{command} {container}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn timed(parallel: usize, pods: &[Netns], conf: &str, command: &str, tag: &str) -> Sample {
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
                    s.spawn(move || run_plugin(command, conf, &id, &ns.path()))
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
    s
}

fn main() {
    let node = Netns::new("brl-bench-node");
    let f = std::fs::File::open(node.path()).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the benchmark namespace");
    Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
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
        store
            .all::<BrindleNode>()
            .create(&brindle_ipam::nodes::brindle_node("bench-node", &[]))
            .await
            .expect("node");
    });
    let conf = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "brindle-cni",
        "nodename": "bench-node", "datastore_type": "etcd", "etcd_endpoints": etcd.endpoint(),
        "log_file_path": dir.join("cni.log"), "ipam_lock_file": dir.join("ipam.lock"),
    })
    .to_string();

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

    let mut rows = vec![("exec /bin/true (floor)", 1, floor.clone(), floor)];
    for (label, parallel) in [("one at a time", 1), ("20 at a time", 20)] {
        let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("brl-bench-pod")).collect();
        let tag = format!("p{parallel}");
        let add = timed(parallel, &pods, &conf, "ADD", &tag);
        let del = timed(parallel, &pods, &conf, "DEL", &tag);
        rows.push((label, parallel, add, del));
    }

    println!("\nbrindle-cni latency, {PODS} pods, etcd on disk (ms)\n");
    println!("| run | concurrency | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
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
    write_results("cni.json", &serde_json::Value::Array(out));
    let _ = std::fs::remove_dir_all(&dir);
}
