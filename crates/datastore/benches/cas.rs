//! etcd compare-and-swap floor: updates/s and latency from 1 and 8 concurrent clients, raw
//! etcd transactions beside the same updates through the Store (JSON, typing, validation).
//! Every client has its own connection and its own key (no contention), then all 8 share one
//! key (contention: conflicts retried, as IPAM does on a busy block).
//!
//! Run: `cargo bench -p brindle-datastore --bench cas` (etcd-server must be installed).
//! Prints a table and writes bench-results/etcd-cas.json at the workspace root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use brindle_api::{IPAMHandle, IPAMHandleSpec};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_testsupport::EtcdServer;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

const OPS_TOTAL: usize = 4000;

struct Row {
    name: String,
    clients: usize,
    ops: usize,
    conflicts: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Row {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1e3
    }
}

fn handle(name: &str) -> IPAMHandle {
    IPAMHandle::new(
        name,
        IPAMHandleSpec {
            handle_id: name.into(),
            block: BTreeMap::from([("10.244.0.0/26".to_string(), 0)]),
            deleted: false,
        },
    )
}

async fn raw(endpoint: &str, clients: usize, shared: bool) -> Row {
    let per = OPS_TOTAL / clients;
    let start = Instant::now();
    let mut tasks = vec![];
    for c in 0..clients {
        let endpoint = endpoint.to_owned();
        tasks.push(tokio::spawn(async move {
            let b = EtcdBackend::connect(&[endpoint]).await.expect("connect");
            let mut kv = b.client().kv_client();
            let key = if shared {
                "/bench/raw/shared".to_string()
            } else {
                format!("/bench/raw/{clients}-{c}")
            };
            let value = vec![b'x'; 300]; // about the size of a handle's JSON
            kv.put(key.clone(), value.clone(), None)
                .await
                .expect("seed");
            let (mut lat, mut conflicts) = (Vec::with_capacity(per), 0);
            for _ in 0..per {
                let t = Instant::now();
                loop {
                    let cur = kv.get(key.clone(), None).await.expect("get");
                    let rev = cur.kvs()[0].mod_revision();
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
                    if kv.txn(txn).await.expect("txn").succeeded() {
                        break;
                    }
                    conflicts += 1;
                }
                lat.push(t.elapsed());
            }
            (lat, conflicts)
        }));
    }
    collect("raw etcd txn", clients, shared, start, tasks).await
}

async fn store(endpoint: &str, clients: usize, shared: bool) -> Row {
    let per = OPS_TOTAL / clients;
    let seed = Store::new(
        EtcdBackend::connect(&[endpoint.to_owned()])
            .await
            .expect("connect"),
    );
    if shared {
        let _ = seed.all::<IPAMHandle>().create(&handle("shared")).await;
    }
    let start = Instant::now();
    let mut tasks = vec![];
    for c in 0..clients {
        let endpoint = endpoint.to_owned();
        tasks.push(tokio::spawn(async move {
            let s = Store::new(EtcdBackend::connect(&[endpoint]).await.expect("connect"));
            let api = s.all::<IPAMHandle>();
            let name = if shared {
                "shared".to_string()
            } else {
                format!("h{clients}-{c}")
            };
            if !shared {
                api.create(&handle(&name)).await.expect("seed");
            }
            let (mut lat, mut conflicts) = (Vec::with_capacity(per), 0);
            for _ in 0..per {
                let t = Instant::now();
                loop {
                    let mut h = api.get(&name).await.expect("get").expect("exists");
                    *h.spec.block.entry("10.244.0.0/26".into()).or_default() += 1;
                    match api.update(&h).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                lat.push(t.elapsed());
            }
            (lat, conflicts)
        }));
    }
    collect("Store::update", clients, shared, start, tasks).await
}

type Task = tokio::task::JoinHandle<(Vec<Duration>, usize)>;

async fn collect(
    name: &str,
    clients: usize,
    shared: bool,
    start: Instant,
    tasks: Vec<Task>,
) -> Row {
    let mut lat = vec![];
    let mut conflicts = 0;
    for t in tasks {
        let (l, c) = t.await.expect("client task");
        lat.extend(l);
        conflicts += c;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    Row {
        name: format!("{name}{}", if shared { " (one key)" } else { "" }),
        clients,
        ops: lat.len(),
        conflicts,
        secs,
        lat,
    }
}

#[tokio::main]
async fn main() {
    // cargo bench passes --bench; nothing to parse.
    let etcd = tokio::task::spawn_blocking(EtcdServer::start_on_disk)
        .await
        .expect("etcd");
    let ep = etcd.endpoint();
    let mut rows = vec![];
    for clients in [1, 8] {
        rows.push(raw(&ep, clients, false).await);
        rows.push(store(&ep, clients, false).await);
    }
    rows.push(raw(&ep, 8, true).await);
    rows.push(store(&ep, 8, true).await);

    println!(
        "\netcd CAS updates (read + compare-and-swap write; etcd on disk, one member, loopback)\n"
    );
    println!("| path | clients | updates | updates/s | p50 ms | p99 ms | conflicts retried |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut json = vec![];
    for r in &rows {
        let rate = r.ops as f64 / r.secs;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            r.name,
            r.clients,
            r.ops,
            rate,
            r.pct(0.5),
            r.pct(0.99),
            r.conflicts
        );
        json.push(serde_json::json!({
            "path": r.name, "clients": r.clients, "updates": r.ops, "updates_per_sec": rate,
            "p50_ms": r.pct(0.5), "p99_ms": r.pct(0.99), "conflicts": r.conflicts,
        }));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let out = dir.canonicalize().unwrap_or(dir).join("etcd-cas.json");
    match std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("\nwrote {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}
