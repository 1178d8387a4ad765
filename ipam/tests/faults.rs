//! An allocator that dies between two writes (the Kubernetes datastore's path): `ipam check`
//! sees what it left, the collector repairs it, and no address is lost or doubled. With
//! transactions (etcd's path, single and batched) a death leaves nothing to repair.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use brindle_api::{AffinityState, BlockAffinity, IPAMBlock};
use brindle_datastore::backend::instrumented::Instrumented;
use brindle_datastore::backend::memory::MemoryBackend;
use brindle_datastore::Store;
use brindle_ipam::gc::{Collector, OwnerSnapshot};
use brindle_ipam::{Ipam, IpamOptions};
use common::*;

fn owners(nodes: &[&str], pods: &[&str]) -> OwnerSnapshot {
    OwnerSnapshot {
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        pods: pods
            .iter()
            .map(|p| ("default".to_string(), p.to_string()))
            .collect(),
    }
}

/// A memory store with node `n1` and a /24 pool of /26 blocks, and the backend to cut off.
async fn n1_with_a_slash_24() -> (MemoryBackend, Store) {
    let mem = MemoryBackend::new();
    let store = Store::new(mem.clone());
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    (mem, store)
}

fn dying(mem: &MemoryBackend) -> (Instrumented<MemoryBackend>, Ipam) {
    dying_with(mem, false)
}

fn dying_with(mem: &MemoryBackend, transactions: bool) -> (Instrumented<MemoryBackend>, Ipam) {
    let inst = Instrumented::new(mem.clone());
    let ipam = Ipam::with_options(
        Store::new(inst.clone()),
        IpamOptions {
            cache_ttl: Duration::ZERO,
            transactions,
        },
    );
    (inst, ipam)
}

#[tokio::test]
async fn killed_at_the_one_transaction_leaves_nothing() {
    let (mem, store) = n1_with_a_slash_24().await;
    let (inst, ipam) = dying_with(&mem, true);
    // Killed at the claim of the node's first block: no affinity, no block.
    inst.fail_writes_after(0);
    assert!(ipam
        .assign(&pod_req("n1", "default", "a", "ca", 1))
        .await
        .is_err());
    assert_eq!(count::<BlockAffinity>(&store).await, 0);
    assert_eq!(count::<IPAMBlock>(&store).await, 0);
    inst.fail_writes_after(u64::MAX);
    let (_, w0) = inst.round_trips();
    ipam.assign(&pod_req("n1", "default", "a", "ca", 1))
        .await
        .unwrap();
    let (_, w1) = inst.round_trips();
    assert_eq!(
        w1 - w0,
        2,
        "a claim (affinity + block) and an allocation: two writes"
    );
    let (_, writes_before) = inst.round_trips();
    ipam.assign(&pod_req("n1", "default", "b", "cb", 1))
        .await
        .unwrap();
    let (_, writes_after) = inst.round_trips();
    assert_eq!(writes_after - writes_before, 1, "one write per allocation");
    inst.fail_writes_after(0);
    let e = ipam
        .assign(&pod_req("n1", "default", "c", "cc", 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fault injection"), "{e}");
    let who = owners(&["n1"], &["a", "b", "c"]);
    let ipam = common::ipam(&store);
    let report = ipam.check(&who).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(all_allocations(&store).await.len(), 2);
    assert!(store
        .all::<brindle_api::IPAMHandle>()
        .get("k8s-pod-network.cc")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn batch_killed_between_its_transactions() {
    let (mem, store) = n1_with_a_slash_24().await;
    let ipam = common::ipam(&store);
    // Two blocks for n1 with little room: 3 free in one, 4 in the other.
    let mut held = vec![];
    for i in 0..124 {
        let r = pod_req("n1", "default", &format!("p{i}"), &format!("c{i}"), 1);
        held.push((r.handle.clone(), ipam.assign(&r).await.unwrap()[0]));
    }
    for (h, _) in held.iter().take(4) {
        ipam.release_handle(h).await.unwrap();
    }
    let (inst, dying) = dying_with(&mem, true);
    let reqs: Vec<_> = (0..10)
        .map(|i| pod_req("n1", "default", &format!("b{i}"), &format!("cb{i}"), 1))
        .collect();
    // Healthy first, to see the shape: all 7 from the two blocks, a transaction for each.
    let (_, w0) = inst.round_trips();
    let probe = dying.assign_batch(&reqs[..7]).await;
    let (_, w1) = inst.round_trips();
    assert!(probe.iter().all(Option::is_some), "{probe:?}");
    assert_eq!(w1 - w0, 2, "one transaction per block");
    for r in &reqs[..7] {
        dying.release_handle(&r.handle).await.unwrap();
    }

    // Now die after the first block's transaction.
    inst.fail_writes_after(1);
    let out = dying.assign_batch(&reqs).await;
    let served: Vec<_> = out.iter().flatten().flatten().copied().collect();
    // All of the first block's room (3 or 4, whichever block comes first), none of the second.
    assert!(served.len() == 3 || served.len() == 4, "{out:?}");
    let first = brindle_ipam::block::block_of(served[0], 26);
    assert!(served
        .iter()
        .all(|&ip| brindle_ipam::block::block_of(ip, 26) == first));
    assert_eq!(
        out.iter().filter(|o| o.is_none()).count(),
        10 - served.len()
    );

    let mut pods: Vec<String> = (0..124).map(|i| format!("p{i}")).collect();
    pods.extend((0..10).map(|i| format!("b{i}")));
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let report = ipam.check(&owners(&["n1"], &pods)).await.unwrap();
    assert!(report.is_clean(), "nothing half-written: {report:?}");
    let all = all_allocations(&store).await;
    let distinct: HashSet<_> = all.iter().map(|a| a.0).collect();
    assert_eq!(distinct.len(), all.len(), "no address twice");
    assert_eq!(all.len(), 120 + served.len());
    for (r, o) in reqs.iter().zip(&out) {
        let h = store
            .all::<brindle_api::IPAMHandle>()
            .get(&r.handle)
            .await
            .unwrap();
        assert_eq!(h.is_some(), o.is_some(), "{}: handle iff served", r.handle);
    }
}

#[tokio::test]
async fn killed_between_handle_write_and_block_write() {
    let (mem, store) = n1_with_a_slash_24().await;
    for p in ["a", "b", "c"] {
        add_pod(&store, "default", p).await;
    }
    let (inst, ipam) = dying(&mem);
    ipam.assign(&pod_req("n1", "default", "a", "ca", 1))
        .await
        .unwrap();
    // Next: handle create (write 1), block update (write 2). Die after the first.
    inst.fail_writes_after(1);
    let e = ipam
        .assign(&pod_req("n1", "default", "b", "cb", 1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fault injection"), "{e}");

    // A new process looks at what is left.
    let ipam = common::ipam(&store);
    let who = owners(&["n1"], &["a", "b", "c"]);
    let report = ipam.check(&who).await.unwrap();
    assert_eq!(report.handle_mismatches.len(), 1, "{report:?}");
    let m = &report.handle_mismatches[0];
    assert_eq!(
        (m.handle.as_str(), m.handle_says, m.block_holds),
        ("k8s-pod-network.cb", 1, 0)
    );
    assert!(report.duplicates.is_empty() && report.leaked.is_empty());

    let grace = Duration::from_secs(900);
    let mut gc = Collector::new(grace);
    let t0 = Instant::now();
    assert!(gc
        .pass(&ipam, &who, None, t0)
        .await
        .unwrap()
        .handles_repaired
        .is_empty());
    let r = gc.pass(&ipam, &who, None, t0 + grace).await.unwrap();
    assert_eq!(r.handles_repaired, vec!["k8s-pod-network.cb".to_string()]);
    assert!(ipam.check(&who).await.unwrap().is_clean());

    // Nothing lost: the block has 63 free of 64, and the retried pod gets a fresh address.
    let b = store
        .all::<IPAMBlock>()
        .list()
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(brindle_ipam::block::free(&b.spec), 63);
    let b_ip = ipam
        .assign(&pod_req("n1", "default", "b", "cb", 1))
        .await
        .unwrap();
    let c_ip = ipam
        .assign(&pod_req("n1", "default", "c", "cc", 1))
        .await
        .unwrap();
    let all: HashSet<_> = all_allocations(&store)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(all.len(), 3, "three distinct addresses");
    assert_ne!(b_ip, c_ip);
    assert!(ipam.check(&who).await.unwrap().is_clean());
}

#[tokio::test]
async fn killed_in_the_middle_of_claiming_a_block() {
    for writes_before_death in [1, 2] {
        // 1: pending affinity written, block not. 2: block written, affinity not confirmed.
        let (mem, store) = n1_with_a_slash_24().await;
        let (inst, ipam) = dying(&mem);
        inst.fail_writes_after(writes_before_death);
        assert!(ipam
            .assign(&pod_req("n1", "default", "a", "ca", 1))
            .await
            .is_err());
        let who = owners(&["n1"], &["a"]);
        let ipam = common::ipam(&store);
        let report = ipam.check(&who).await.unwrap();
        if writes_before_death == 1 {
            assert_eq!(report.affinities_without_block.len(), 1, "{report:?}");
        } else {
            let a = store
                .all::<BlockAffinity>()
                .list()
                .await
                .unwrap()
                .items
                .remove(0);
            assert_eq!(a.spec.state, AffinityState::Pending);
        }
        // The node's next request finishes or undoes the half-made claim.
        ipam.assign(&pod_req("n1", "default", "a", "ca", 1))
            .await
            .unwrap();
        let affs = store.all::<BlockAffinity>().list().await.unwrap().items;
        assert_eq!(affs.len(), 1, "writes_before_death={writes_before_death}");
        assert_eq!(affs[0].spec.state, AffinityState::Confirmed);
        assert_eq!(count::<IPAMBlock>(&store).await, 1);
        assert!(ipam.check(&who).await.unwrap().is_clean());
    }
}

#[tokio::test]
async fn orphan_pending_affinity_is_collected_after_grace() {
    let (mem, store) = n1_with_a_slash_24().await;
    let (inst, ipam) = dying(&mem);
    inst.fail_writes_after(1);
    assert!(ipam
        .assign(&pod_req("n1", "default", "a", "ca", 1))
        .await
        .is_err());
    let ipam = common::ipam(&store);
    let who = owners(&["n1"], &[]);
    let grace = Duration::from_secs(900);
    let mut gc = Collector::new(grace);
    let t0 = Instant::now();
    assert!(gc
        .pass(&ipam, &who, None, t0)
        .await
        .unwrap()
        .affinities_freed
        .is_empty());
    assert_eq!(
        gc.pass(&ipam, &who, None, t0 + grace)
            .await
            .unwrap()
            .affinities_freed
            .len(),
        1
    );
    assert!(ipam.check(&who).await.unwrap().is_clean());
}

#[tokio::test]
async fn batch_extra_writes_land_with_the_addresses_or_not_at_all() {
    use k8s_openapi::api::core::v1::Pod;
    let (_, store) = n1_with_a_slash_24().await;
    let ipam = common::ipam(&store);
    ipam.assign(&pod_req("n1", "default", "first", "c-first", 1))
        .await
        .unwrap();
    add_pod(&store, "default", "stale").await;
    let pods = store.namespaced::<Pod>("default");
    let mut stale = pods.get("stale").await.unwrap().unwrap();
    // Someone writes the pod after it was read: its record write must fail, alone.
    let mut newer = stale.clone();
    newer.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    pods.update(&newer).await.unwrap();
    stale.metadata.labels = Some([("y".to_string(), "2".to_string())].into());

    let reqs: Vec<_> = ["a", "stale", "b"]
        .iter()
        .map(|p| pod_req("n1", "default", p, &format!("c-{p}"), 1))
        .collect();
    let out = ipam
        .assign_batch_with(&reqs, &|i, _ips, t| {
            let api = store.namespaced::<Pod>("default");
            if i == 1 {
                t.update(&api, &stale).map(|_| ())
            } else {
                let mut p = Pod::default();
                p.metadata.name = Some(format!("record-{i}"));
                t.create(&api, &p).map(|_| ())
            }
        })
        .await;
    assert!(out[0].is_some() && out[2].is_some(), "{out:?}");
    assert!(
        out[1].is_none(),
        "the stale record's request is left to the caller"
    );
    assert!(pods.get("record-0").await.unwrap().is_some());
    assert!(pods.get("record-2").await.unwrap().is_some());
    assert_eq!(
        pods.get("stale").await.unwrap().unwrap().metadata.labels,
        newer.metadata.labels,
        "the stale write did not land"
    );
    let h = store.all::<brindle_api::IPAMHandle>();
    assert!(h.get("k8s-pod-network.c-stale").await.unwrap().is_none());
    let pods_now = ["first", "a", "stale", "b"];
    assert!(ipam
        .check(&owners(&["n1"], &pods_now))
        .await
        .unwrap()
        .is_clean());
}

#[tokio::test]
async fn batch_release_frees_together_or_leaves_to_the_caller() {
    let (mem, store) = n1_with_a_slash_24().await;
    let (inst, ipam) = dying_with(&mem, true);
    let mut ids = vec![];
    for p in ["a", "b", "c", "d"] {
        let r = pod_req("n1", "default", p, &format!("c{p}"), 1);
        ipam.assign(&r).await.unwrap();
        ids.push(r.handle);
    }
    // Killed at the transaction: nothing released, every handle left to the caller.
    inst.fail_writes_after(0);
    let out = ipam.release_batch(&ids[..2]).await;
    assert_eq!(out, vec![None, None]);
    assert_eq!(all_allocations(&store).await.len(), 4);
    inst.fail_writes_after(u64::MAX);

    let (_, w0) = inst.round_trips();
    let mut asked = ids[..3].to_vec();
    asked.push("k8s-pod-network.never".into());
    let out = ipam.release_batch(&asked).await;
    let (_, w1) = inst.round_trips();
    assert_eq!(w1 - w0, 1, "one transaction for the block");
    assert!(
        out[..3]
            .iter()
            .all(|o| o.as_ref().is_some_and(|f| f.len() == 1)),
        "{out:?}"
    );
    assert_eq!(
        out[3],
        Some(vec![]),
        "an unknown handle is already released"
    );
    let left = all_allocations(&store).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.as_deref(), Some(ids[3].as_str()));
    for id in &ids[..3] {
        assert!(store
            .all::<brindle_api::IPAMHandle>()
            .get(id)
            .await
            .unwrap()
            .is_none());
    }
    let report = ipam.check(&owners(&["n1"], &["d"])).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// Dual-stack requests are batched too: each gets an IPv4 and an IPv6 address, the
/// addresses of both families and the handles in one transaction per (IPv4 block, IPv6 block)
/// pair; a block of either family filling up moves on to the next (claimed) one; a failure
/// between transactions leaves whole requests served and the rest untouched.
#[tokio::test]
async fn dual_stack_batch_takes_both_families_in_one_transaction() {
    let (mem, store) = n1_with_a_slash_24().await;
    // /122 blocks: 64 addresses; /26: 64 too. 40 + 40 requests cross a block of each.
    add_pool(&store, "pool6", "fd00:10::/120", 122).await;
    let (inst, ipam) = dying_with(&mem, true);
    let dual = |p: &str| {
        let mut r = pod_req("n1", "default", p, &format!("c-{p}"), 1);
        r.ipv6 = 1;
        r
    };
    let reqs: Vec<_> = (0..40).map(|i| dual(&format!("d{i}"))).collect();
    let out = ipam.assign_batch(&reqs).await;
    assert!(out.iter().all(Option::is_some), "{out:?}");
    for o in out.iter().flatten() {
        assert!(o.len() == 2 && o[0].is_ipv4() && o[1].is_ipv6(), "{o:?}");
    }
    let h = store.all::<brindle_api::IPAMHandle>();
    let one = h.get(&reqs[0].handle).await.unwrap().expect("handle");
    assert_eq!(one.spec.block.len(), 2, "{:?}", one.spec.block);

    // 40 more: the first blocks have 24 left each; the rest come from a second pair.
    let more: Vec<_> = (40..80).map(|i| dual(&format!("d{i}"))).collect();
    let out2 = ipam.assign_batch(&more).await;
    assert!(out2.iter().all(Option::is_some), "{out2:?}");
    let all = all_allocations(&store).await;
    let distinct: HashSet<_> = all.iter().map(|a| a.0).collect();
    assert_eq!(distinct.len(), all.len(), "no address twice");
    assert_eq!(all.len(), 160);
    assert_eq!(
        count::<IPAMBlock>(&store).await,
        4,
        "two blocks of each family"
    );

    // Eight that fit the current pair of blocks (48 free in each): one transaction for all.
    let eight: Vec<_> = (80..88).map(|i| dual(&format!("d{i}"))).collect();
    let (_, w0) = inst.round_trips();
    let out3 = ipam.assign_batch(&eight).await;
    let (_, w1) = inst.round_trips();
    assert!(out3.iter().all(Option::is_some), "{out3:?}");
    assert_eq!(w1 - w0, 1, "eight dual-stack requests, one write");

    // Die after the first transaction of a batch that needs more blocks: what the first
    // transaction carries (the current pair's room, 40, up to a transaction's most requests)
    // is served, nothing of the rest is written.
    let last: Vec<_> = (88..140).map(|i| dual(&format!("d{i}"))).collect();
    inst.fail_writes_after(1);
    let out4 = ipam.assign_batch(&last).await;
    let served = out4.iter().filter(|o| o.is_some()).count();
    assert_eq!(
        served,
        brindle_ipam::MAX_BATCH.min(40),
        "the first transaction's requests, then the failure"
    );
    for (r, o) in last.iter().zip(&out4) {
        let held = h.get(&r.handle).await.unwrap();
        assert_eq!(
            held.is_some(),
            o.is_some(),
            "{}: handle iff served",
            r.handle
        );
    }
    let mut pods: Vec<String> = (0..140).map(|i| format!("d{i}")).collect();
    pods.sort();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let report = ipam.check(&owners(&["n1"], &pods)).await.unwrap();
    assert!(report.is_clean(), "nothing half-written: {report:?}");

    // Released together too: the eight (same two blocks) in one write, both addresses each.
    let (inst2, healthy) = dying_with(&mem, true);
    let ids: Vec<String> = eight.iter().map(|r| r.handle.clone()).collect();
    let (_, w0) = inst2.round_trips();
    let freed = healthy.release_batch(&ids).await;
    let (_, w1) = inst2.round_trips();
    assert!(
        freed
            .iter()
            .all(|f| f.as_ref().is_some_and(|ips| ips.len() == 2)),
        "{freed:?}"
    );
    assert_eq!(w1 - w0, 1, "eight dual-stack handles, one write");
    for id in &ids {
        assert!(h.get(id).await.unwrap().is_none(), "{id} released");
    }
    let freed_ips: HashSet<_> = freed.iter().flatten().flatten().copied().collect();
    let left: HashSet<_> = all_allocations(&store).await.iter().map(|a| a.0).collect();
    assert!(freed_ips.is_disjoint(&left), "freed addresses are free");
    // IPv6 only, and two IPv6 addresses beside one IPv4: batched as well.
    let mut v6 = pod_req("n1", "default", "six", "c-six", 0);
    v6.ipv6 = 1;
    let mut two = pod_req("n1", "default", "two", "c-two", 1);
    two.ipv6 = 2;
    let got = healthy.assign_batch(&[v6, two]).await;
    let six = got[0].as_ref().expect("served");
    assert!(six.len() == 1 && six[0].is_ipv6(), "{got:?}");
    let t = got[1].as_ref().expect("served");
    assert_eq!(t.iter().filter(|a| a.is_ipv6()).count(), 2, "{got:?}");
    assert_eq!(t.iter().filter(|a| a.is_ipv4()).count(), 1, "{got:?}");
    let freed = healthy
        .release_batch(&[
            brindle_ipam::pod_handle("c-six"),
            brindle_ipam::pod_handle("c-two"),
        ])
        .await;
    assert!(freed.iter().all(Option::is_some), "{freed:?}");
    let kept: Vec<&str> = pods
        .iter()
        .copied()
        .filter(|p| !(80..88).any(|i| *p == format!("d{i}")))
        .collect();
    let report = ipam.check(&owners(&["n1"], &kept)).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}
