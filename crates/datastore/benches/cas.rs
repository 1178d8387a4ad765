//! etcd compare-and-swap floor: updates/s and latency from 1 and 8 concurrent clients, raw
//! etcd transactions beside the same updates through the Store (JSON, typing, validation).
//! Every client has its own connection and its own key (no contention), then all 8 share one
//! key (contention: conflicts retried, as IPAM does on a busy block).
//!
//! Run: `cargo bench -p brindle-datastore --bench cas` (etcd-server must be installed).
//! Prints a table and writes bench-results/etcd-cas.json at the workspace root.

use std::collections::BTreeMap;
use std::time::Instant;

use brindle_api::{IPAMHandle, IPAMHandleSpec};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_testsupport::bench::{etcd_cas_floor, write_results, Sample};
use brindle_testsupport::EtcdServer;

const OPS_TOTAL: usize = 4000;

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

async fn store_updates(endpoint: &str, clients: usize, shared: bool) -> Sample {
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
            let mut out = Sample::default();
            for _ in 0..per {
                let t = Instant::now();
                loop {
                    let mut h = api.get(&name).await.expect("get").expect("exists");
                    *h.spec.block.entry("10.244.0.0/26".into()).or_default() += 1;
                    match api.update(&h).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => out.conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                out.lat.push(t.elapsed());
            }
            out
        }));
    }
    let mut parts = vec![];
    for t in tasks {
        parts.push(t.await.expect("client task"));
    }
    Sample::merge(parts, start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start_on_disk)
        .await
        .expect("etcd");
    let ep = etcd.endpoint();
    let mut rows = vec![];
    for clients in [1, 8] {
        rows.push((
            "raw etcd txn",
            clients,
            etcd_cas_floor(&ep, clients, OPS_TOTAL, false).await,
        ));
        rows.push((
            "Store::update",
            clients,
            store_updates(&ep, clients, false).await,
        ));
    }
    rows.push((
        "raw etcd txn (one key)",
        8,
        etcd_cas_floor(&ep, 8, OPS_TOTAL, true).await,
    ));
    rows.push((
        "Store::update (one key)",
        8,
        store_updates(&ep, 8, true).await,
    ));

    println!(
        "\netcd CAS updates (read + compare-and-swap write; etcd on disk, one member, loopback)\n"
    );
    println!("| path | clients | updates | updates/s | p50 ms | p99 ms | conflicts retried |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut json = vec![];
    for (name, clients, s) in &rows {
        println!(
            "| {name} | {clients} | {} | {:.0} | {:.2} | {:.2} | {} |",
            s.ops(),
            s.rate(),
            s.ms(0.5),
            s.ms(0.99),
            s.conflicts
        );
        json.push(serde_json::json!({
            "path": name, "clients": clients, "updates": s.ops(), "updates_per_sec": s.rate(),
            "p50_ms": s.ms(0.5), "p99_ms": s.ms(0.99), "conflicts": s.conflicts,
        }));
    }
    write_results("etcd-cas.json", &serde_json::Value::Array(json));
}
