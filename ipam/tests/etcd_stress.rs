//! Stress against a real etcd: 8 nodes, each with its own client, allocate 2,000 addresses
//! each, one per pod, from a pool just big enough (256 /26 blocks for 16,000 addresses), so
//! blocks run out and the last allocations are borrowed. Then everything is released.
//! `BRINDLE_STRESS_PER_NODE` changes the 2,000.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use brindle_api::{BlockAffinity, IPAMBlock, IPAMHandle};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_ipam::Ipam;
use brindle_testsupport::EtcdServer;
use common::*;

const NODES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_allocate_borrow_and_release_on_etcd() {
    let per_node: usize = std::env::var("BRINDLE_STRESS_PER_NODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let connect = || async { Store::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap()) };
    let admin = connect().await;
    // A pool with exactly as many free addresses as the pods need: a filler node first
    // takes the blocks the pods will not get, so the 8 nodes cannot all claim their last
    // block and some must borrow from the others' partly used ones.
    let total = per_node * NODES;
    let prefix = 32 - (total as f64).log2().ceil() as u8;
    add_pool(&admin, "pool", &format!("10.64.0.0/{prefix}"), 26).await;
    let filler = (1usize << (32 - prefix)) - total;
    add_node(&admin, "filler").await;
    let f = Ipam::new(admin.clone())
        .assign(&pod_req("filler", "default", "filler", "filler", filler))
        .await
        .unwrap();
    assert_eq!(f.len(), filler);
    for n in 0..NODES {
        add_node(&admin, &format!("node-{n}")).await;
    }

    let start = Instant::now();
    let mut tasks = vec![];
    for n in 0..NODES {
        let store = connect().await;
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            let ipam = Ipam::new(store);
            let mut mine = vec![];
            for i in 0..per_node {
                let c = format!("{node}-c{i}");
                let ips = ipam
                    .assign(&pod_req(&node, "default", &c, &c, 1))
                    .await
                    .unwrap_or_else(|e| panic!("{node} pod {i}: {e}"));
                mine.push((c, ips[0]));
            }
            mine
        }));
    }
    let mut all: Vec<(String, IpAddr)> = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let alloc_secs = start.elapsed().as_secs_f64();

    // Zero duplicates, every address accounted for, on record under its handle.
    let distinct: HashSet<IpAddr> = all.iter().map(|a| a.1).collect();
    assert_eq!(distinct.len(), total, "duplicate addresses handed out");
    let recorded: Vec<_> = all_allocations(&admin)
        .await
        .into_iter()
        .filter(|a| a.1.as_deref() != Some("k8s-pod-network.filler"))
        .collect();
    assert_eq!(recorded.len(), total);
    let recorded_set: HashSet<IpAddr> = recorded.iter().map(|a| a.0).collect();
    assert_eq!(recorded_set, distinct);
    let blocks = admin.all::<IPAMBlock>().list().await.unwrap().items;
    let borrowed = blocks
        .iter()
        .flat_map(|b| {
            brindle_ipam::block::allocations(&b.spec)
                .into_iter()
                .filter(move |a| Some(format!("host:{}", a.attrs["node"])) != b.spec.affinity)
        })
        .count();
    println!(
        "etcd stress: {NODES} nodes × {per_node} = {total} addresses in {alloc_secs:.1}s ({:.0}/s), {} blocks, {borrowed} borrowed",
        total as f64 / alloc_secs,
        blocks.len()
    );
    let report = Ipam::new(admin.clone())
        .check(&Default::default())
        .await
        .unwrap();
    assert!(report.duplicates.is_empty(), "{:?}", report.duplicates);
    assert!(
        report.handle_mismatches.is_empty(),
        "{:?}",
        report.handle_mismatches
    );
    assert!(borrowed > 0, "the pool was sized to make nodes borrow");

    // Release everything, 8 nodes in parallel again.
    let start = Instant::now();
    let mut tasks = vec![];
    for chunk in all.chunks(per_node) {
        let store = connect().await;
        let chunk: Vec<String> = chunk.iter().map(|c| c.0.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let ipam = Ipam::new(store);
            for c in chunk {
                assert_eq!(
                    ipam.release_handle(&brindle_ipam::pod_handle(&c))
                        .await
                        .unwrap()
                        .len(),
                    1
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let release_secs = start.elapsed().as_secs_f64();
    Ipam::new(admin.clone())
        .release_handle("k8s-pod-network.filler")
        .await
        .unwrap();
    assert!(
        all_allocations(&admin).await.is_empty(),
        "every address released"
    );
    assert!(count::<IPAMHandle>(&admin).await == 0, "no handle left");

    // Configured to release: every node gives back its now empty blocks.
    let ipam = Ipam::new(admin.clone());
    let mut freed = 0;
    for n in (0..NODES)
        .map(|n| format!("node-{n}"))
        .chain(["filler".to_string()])
    {
        freed += ipam.release_empty_blocks(&n, false).await.unwrap().len();
    }
    assert_eq!(
        count::<IPAMBlock>(&admin).await,
        0,
        "no empty block left claimed"
    );
    assert!(count::<BlockAffinity>(&admin).await == 0);
    println!(
        "etcd stress: released {total} in {release_secs:.1}s ({:.0}/s); {freed} empty blocks freed",
        total as f64 / release_secs,
    );
}
