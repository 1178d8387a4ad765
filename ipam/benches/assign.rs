//! IPAM on a local etcd: allocations/s, p50/p99 latency per allocation and datastore round
//! trips per allocation, with 1 and 8 concurrent nodes, beside the raw etcd CAS floor.
//!
//! - "node agent": one long-lived IPAM client per node (pools, config and the node's blocks
//!   cached), one address per pod, 1,000 pods per node; with two writes per allocation
//!   (handle, then block: the Kubernetes datastore's path) and with one transaction (etcd's).
//! - "node agent, batches of 20": 20 requests at a time through `assign_batch`, as the agent
//!   serves pods that start together; latency is the batch's, for every request in it.
//! - "fresh client": a new IPAM client per pod, as a CNI plugin process that reads everything
//!   anew each time.
//! - floors: etcd itself, straight through etcd-client: read + compare-and-swap, and one
//!   compare-and-swap write of a value the size of a /26 block's JSON.
//!
//! Run: `cargo bench -p brindle-ipam --bench assign` (etcd-server must be installed).
//! Writes bench-results/ipam-assign.json.

use std::collections::HashMap;
use std::time::Instant;

use brindle_api::{BrindleNode, IPPool, IPPoolSpec};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::backend::instrumented::Instrumented;
use brindle_datastore::Store;
use brindle_ipam::nodes::brindle_node;
use brindle_ipam::{AssignRequest, Ipam, IpamOptions};
use brindle_testsupport::bench::{etcd_cas_floor, etcd_write_floor, write_results, Sample};
use brindle_testsupport::EtcdServer;

const PODS_PER_NODE: usize = 1000;
const FRESH_PODS: usize = 200;
const BATCH: usize = 20;

/// The mean JSON size of a /26 block written while it fills with this benchmark's pods: what
/// each allocation writes, so the one-write floor writes values of the same size.
fn mean_block_bytes() -> usize {
    let net: ipnetwork::IpNetwork = "10.128.0.0/26".parse().expect("cidr");
    let mut b = brindle_ipam::block::new_block(&net, Some("host:a1-0".into()));
    let mut total = 0;
    for i in 0..64 {
        let r = req("a1-0", &format!("a1-0-p{i}"));
        brindle_ipam::block::allocate(&mut b, 1, &r.handle, &r.attrs);
        total += serde_json::to_vec(&b).map(|v| v.len()).unwrap_or_default();
    }
    total / 64
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    TwoWrites,
    OneTxn,
    Batched,
    Fresh,
}

fn req(node: &str, pod: &str) -> AssignRequest {
    AssignRequest::pod(node, "bench", pod, pod, 1)
}

struct Row {
    sample: Sample,
    /// Round trips (reads + writes) per operation (an allocation, or a batch of them):
    /// histogram count → allocations.
    trips: HashMap<u64, usize>,
    /// All round trips, for the exact mean per allocation.
    total_trips: u64,
}

impl Row {
    fn common_trips(&self) -> u64 {
        self.trips
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, _)| *t)
            .unwrap_or(0)
    }
    fn mean_trips(&self) -> f64 {
        self.total_trips as f64 / self.trips.values().sum::<usize>().max(1) as f64
    }
}

async fn run(endpoint: &str, nodes: usize, tag: &str, mode: Mode) -> Row {
    let per = if mode == Mode::Fresh {
        FRESH_PODS / nodes
    } else {
        PODS_PER_NODE
    };
    let opts = IpamOptions {
        transactions: mode != Mode::TwoWrites,
        ..Default::default()
    };
    let start = Instant::now();
    let mut tasks = vec![];
    for n in 0..nodes {
        let backend = Instrumented::new(
            EtcdBackend::connect(&[endpoint.to_owned()])
                .await
                .expect("etcd"),
        );
        let node = format!("{tag}-{n}");
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let store = Store::new(backend.clone());
            store
                .all::<BrindleNode>()
                .create(&brindle_node(&node, &[]))
                .await
                .expect("node");
            let long_lived = Ipam::with_options(store.clone(), opts.clone());
            let mut s = Sample::default();
            let mut trips = HashMap::new();
            let mut total = 0u64;
            let step = if mode == Mode::Batched { BATCH } else { 1 };
            for i in (0..per).step_by(step) {
                let fresh_client;
                let ipam = if mode == Mode::Fresh {
                    fresh_client = Ipam::with_options(store.clone(), opts.clone());
                    &fresh_client
                } else {
                    &long_lived
                };
                let reqs: Vec<_> = (i..(i + step).min(per))
                    .map(|j| req(&node, &format!("{node}-p{j}")))
                    .collect();
                let (r0, w0) = backend.round_trips();
                let t = Instant::now();
                if mode == Mode::Batched {
                    for (r, got) in reqs.iter().zip(ipam.assign_batch(&reqs).await) {
                        if got.is_none() {
                            ipam.assign(r).await.expect("assign");
                        }
                    }
                } else {
                    ipam.assign(&reqs[0]).await.expect("assign");
                }
                let took = t.elapsed();
                let (r1, w1) = backend.round_trips();
                let op = r1 - r0 + w1 - w0;
                total += op;
                for _ in &reqs {
                    s.lat.push(took);
                    *trips.entry(op).or_insert(0usize) += 1;
                }
            }
            (s, trips, total)
        }));
    }
    let mut parts = vec![];
    let mut trips: HashMap<u64, usize> = HashMap::new();
    let mut total_trips = 0;
    for t in tasks {
        let (s, h, total) = t.await.expect("node task");
        parts.push(s);
        total_trips += total;
        for (k, v) in h {
            *trips.entry(k).or_default() += v;
        }
    }
    Row {
        sample: Sample::merge(parts, start.elapsed().as_secs_f64()),
        trips,
        total_trips,
    }
}

#[tokio::main]
async fn main() {
    // BRINDLE_BENCH_ETCD=memory puts etcd's data in /dev/shm: no fsync cost, CPU only.
    let in_memory = std::env::var("BRINDLE_BENCH_ETCD").as_deref() == Ok("memory");
    let etcd = tokio::task::spawn_blocking(move || {
        if in_memory {
            EtcdServer::start()
        } else {
            EtcdServer::start_on_disk()
        }
    })
    .await
    .expect("etcd");
    let ep = etcd.endpoint();
    let store = Store::new(
        EtcdBackend::connect(std::slice::from_ref(&ep))
            .await
            .expect("etcd"),
    );
    let mut pool = IPPoolSpec::new("10.128.0.0/12");
    pool.block_size = Some(26);
    store
        .all::<IPPool>()
        .create(&IPPool::new("bench", pool))
        .await
        .expect("pool");

    let medium = if in_memory {
        "data in /dev/shm"
    } else {
        "on disk"
    };
    println!("\nIPAM assign on etcd ({medium}, one member, loopback); one address per pod\n");
    println!(
        "| what | nodes | allocations | alloc/s | p50 ms | p99 ms | round trips (most common per operation / mean per allocation) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut json = vec![];
    for nodes in [1, 8] {
        let floor = etcd_cas_floor(&ep, nodes, 2000, false).await;
        println!(
            "| raw etcd CAS floor (get + txn) | {nodes} | {} | {:.0} | {:.2} | {:.2} | 2 / 2 |",
            floor.ops(),
            floor.rate(),
            floor.ms(0.5),
            floor.ms(0.99)
        );
        json.push(serde_json::json!({"what": "raw etcd CAS floor", "nodes": nodes,
            "ops": floor.ops(), "per_sec": floor.rate(), "p50_ms": floor.ms(0.5), "p99_ms": floor.ms(0.99)}));
        let bytes = mean_block_bytes();
        let one = etcd_write_floor(&ep, nodes, 2000, bytes).await;
        println!(
            "| raw etcd one write (txn, {bytes} B) | {nodes} | {} | {:.0} | {:.2} | {:.2} | 1 / 1 |",
            one.ops(),
            one.rate(),
            one.ms(0.5),
            one.ms(0.99)
        );
        json.push(serde_json::json!({"what": "raw etcd one write", "nodes": nodes,
            "ops": one.ops(), "per_sec": one.rate(), "p50_ms": one.ms(0.5), "p99_ms": one.ms(0.99)}));
        for (what, mode) in [
            ("node agent, two writes (handle, block)", Mode::TwoWrites),
            ("node agent, one transaction", Mode::OneTxn),
            ("node agent, batches of 20", Mode::Batched),
            ("fresh client per pod (CNI-like)", Mode::Fresh),
        ] {
            let tag = format!("m{}n{nodes}", mode as u8);
            let r = run(&ep, nodes, &tag, mode).await;
            let s = &r.sample;
            println!(
                "| {what} | {nodes} | {} | {:.0} | {:.2} | {:.2} | {} / {:.2} |",
                s.ops(),
                s.rate(),
                s.ms(0.5),
                s.ms(0.99),
                r.common_trips(),
                r.mean_trips()
            );
            json.push(
                serde_json::json!({"what": what, "nodes": nodes, "ops": s.ops(),
                "per_sec": s.rate(), "p50_ms": s.ms(0.5), "p99_ms": s.ms(0.99),
                "round_trips_common": r.common_trips(), "round_trips_mean": r.mean_trips()}),
            );
        }
    }
    write_results("ipam-assign.json", &serde_json::Value::Array(json));
}
