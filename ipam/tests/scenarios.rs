//! IPAM behaviour, scenario by scenario, on the memory store.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle_api::{BlockAffinity, IPAMBlock, IPAMConfigSpec, IPAMHandle, IPPool};
use brindle_ipam::gc::{Collector, OwnerSnapshot};
use brindle_ipam::{IpamError, ReleaseIp, ReleaseOutcome};
use common::*;

#[tokio::test]
async fn node_fills_its_own_block_first_then_claims_another() {
    let (store, ipam) = one_node("10.244.0.0/24", 29).await;
    let a = ipam
        .assign(&pod_req("n1", "default", "a", "c1", 5))
        .await
        .unwrap();
    let b = ipam
        .assign(&pod_req("n1", "default", "b", "c2", 3))
        .await
        .unwrap();
    let blocks = store.all::<IPAMBlock>().list().await.unwrap().items;
    assert_eq!(blocks.len(), 1, "8 addresses fit in the node's one /29");
    assert!(blocks[0].spec.affinity.as_deref() == Some("host:n1"));
    let net: ipnetwork::IpNetwork = blocks[0].spec.cidr.parse().unwrap();
    assert!(a.iter().chain(&b).all(|ip| net.contains(*ip)));
    // A ninth address needs a second block.
    ipam.assign(&pod_req("n1", "default", "c", "c3", 1))
        .await
        .unwrap();
    let affs = store.all::<BlockAffinity>().list().await.unwrap().items;
    assert_eq!(affs.len(), 2);
    assert!(affs
        .iter()
        .all(|a| a.spec.node == "n1" && a.spec.state == brindle_api::AffinityState::Confirmed));
    // The search starts at a stable, node-specific place: a fresh store gives the same block.
    let again = memory();
    add_pool(&again, "pool", "10.244.0.0/24", 29).await;
    add_node(&again, "n1").await;
    let first = common::ipam(&again)
        .assign(&pod_req("n1", "default", "a", "c1", 1))
        .await
        .unwrap();
    assert!(net.contains(first[0]));
}

#[tokio::test]
async fn exhaustion_is_clear_and_leaves_nothing_behind() {
    let store = memory();
    add_pool(&store, "small", "10.9.0.0/29", 29).await;
    add_node(&store, "n1").await;
    let ipam = ipam(&store);
    ipam.assign(&pod_req("n1", "default", "a", "c1", 5))
        .await
        .unwrap();
    let before = all_allocations(&store).await;
    let e = ipam
        .assign(&pod_req("n1", "default", "b", "c2", 4))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{msg}");
    assert!(
        msg.contains("no IPs available in pools [small (10.9.0.0/29)]"),
        "{msg}"
    );
    assert_eq!(all_allocations(&store).await, before, "all-or-nothing");
    assert!(store
        .all::<IPAMHandle>()
        .get("k8s-pod-network.c2")
        .await
        .unwrap()
        .is_none());
    // Three still fit.
    assert_eq!(
        ipam.assign(&pod_req("n1", "default", "b", "c2", 3))
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn borrows_when_the_pool_has_no_free_block_unless_strict() {
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/28", 29).await; // two blocks
    for n in ["n1", "n2", "n3"] {
        add_node(&store, n).await;
    }
    let ipam = ipam(&store);
    ipam.assign(&pod_req("n1", "default", "a", "c1", 2))
        .await
        .unwrap();
    ipam.assign(&pod_req("n2", "default", "b", "c2", 2))
        .await
        .unwrap();
    // n3 can claim no block: with strictAffinity it gets nothing.
    set_config(
        &store,
        IPAMConfigSpec {
            strict_affinity: true,
            ..Default::default()
        },
    )
    .await;
    let e = ipam
        .assign(&pod_req("n3", "default", "c", "c3", 1))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    set_config(&store, IPAMConfigSpec::default()).await;
    let got = ipam
        .assign(&pod_req("n3", "default", "c", "c3", 10))
        .await
        .unwrap();
    assert_eq!(got.len(), 10, "borrowed from n1's and n2's blocks");
    assert_eq!(
        count::<BlockAffinity>(&store).await,
        2,
        "no block claimed by n3"
    );
    let ips: HashSet<IpAddr> = all_allocations(&store)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(ips.len(), 14, "no duplicates");
}

#[tokio::test]
async fn max_blocks_per_host() {
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 29).await;
    add_node(&store, "n1").await;
    set_config(
        &store,
        IPAMConfigSpec {
            strict_affinity: true,
            max_blocks_per_host: 1,
            ..Default::default()
        },
    )
    .await;
    let ipam = ipam(&store);
    ipam.assign(&pod_req("n1", "default", "a", "c1", 8))
        .await
        .unwrap();
    let e = ipam
        .assign(&pod_req("n1", "default", "b", "c2", 1))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(count::<IPAMBlock>(&store).await, 1);
}

#[tokio::test]
async fn specific_address_and_in_use() {
    let (store, ipam) = one_node("10.9.0.0/24", 26).await;
    let ip: IpAddr = "10.9.0.77".parse().unwrap();
    let attrs = pod_req("n1", "default", "a", "c1", 1).attrs;
    ipam.assign_ip(ip, "k8s-pod-network.c1", "n1", &attrs)
        .await
        .unwrap();
    assert_eq!(
        ipam.ips_of_handle("k8s-pod-network.c1").await.unwrap(),
        vec![ip]
    );
    let e = ipam
        .assign_ip(ip, "k8s-pod-network.c2", "n1", &attrs)
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::InUse { .. }), "{e}");
    let e = ipam
        .assign_ip("10.10.0.1".parse().unwrap(), "h", "n1", &attrs)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not in any IPPool"), "{e}");
    // The block it landed in was claimed for the node.
    let b = store
        .all::<IPAMBlock>()
        .get("10-9-0-64-26")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.spec.affinity.as_deref(), Some("host:n1"));
}

#[tokio::test]
async fn release_by_handle_is_idempotent_and_by_address_checks_sequence() {
    let (store, ipam) = one_node("10.9.0.0/24", 26).await;
    let ips = ipam
        .assign(&pod_req("n1", "default", "a", "c1", 2))
        .await
        .unwrap();
    assert_eq!(
        ipam.release_handle("k8s-pod-network.c1")
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(ipam
        .release_handle("k8s-pod-network.c1")
        .await
        .unwrap()
        .is_empty());
    assert!(ipam
        .release_handle("never-existed")
        .await
        .unwrap()
        .is_empty());
    assert!(count::<IPAMHandle>(&store).await == 0);

    // Address-based release with a stale sequence number leaves the new owner alone.
    let first = ipam
        .assign(&pod_req("n1", "default", "b", "c2", 1))
        .await
        .unwrap()[0];
    let seq_of = |b: &IPAMBlock, ip| {
        brindle_ipam::block::allocations(&b.spec)
            .into_iter()
            .find(|a| a.ip == ip)
            .map(|a| a.sequence)
    };
    let b = store
        .all::<IPAMBlock>()
        .list()
        .await
        .unwrap()
        .items
        .remove(0);
    let old_seq = seq_of(&b, first).unwrap();
    ipam.release_handle("k8s-pod-network.c2").await.unwrap();
    // Reuse the same address for someone else (FIFO puts it last, so ask for it by name).
    let attrs = pod_req("n1", "default", "c", "c3", 1).attrs;
    ipam.assign_ip(first, "k8s-pod-network.c3", "n1", &attrs)
        .await
        .unwrap();
    let stale = ReleaseIp {
        ip: first,
        handle: None,
        sequence: Some(old_seq),
        attrs: None,
    };
    let out = ipam.release_ips(&[stale]).await.unwrap();
    assert!(matches!(out[0], ReleaseOutcome::Mismatch { .. }), "{out:?}");
    let wrong_handle = ReleaseIp {
        ip: first,
        handle: Some("k8s-pod-network.c2".into()),
        sequence: None,
        attrs: None,
    };
    assert!(matches!(
        ipam.release_ips(&[wrong_handle]).await.unwrap()[0],
        ReleaseOutcome::Mismatch { .. }
    ));
    assert_eq!(
        ipam.ips_of_handle("k8s-pod-network.c3").await.unwrap(),
        vec![first]
    );
    let right = ReleaseIp {
        ip: first,
        handle: Some("k8s-pod-network.c3".into()),
        sequence: None,
        attrs: None,
    };
    assert_eq!(
        ipam.release_ips(std::slice::from_ref(&right))
            .await
            .unwrap()[0],
        ReleaseOutcome::Released
    );
    assert_eq!(
        ipam.release_ips(&[right]).await.unwrap()[0],
        ReleaseOutcome::NotAllocated
    );
    assert!(
        store
            .all::<IPAMHandle>()
            .get("k8s-pod-network.c3")
            .await
            .unwrap()
            .is_none(),
        "handle emptied and deleted"
    );
    let _ = ips;
}

#[tokio::test]
async fn ipv6_and_dual_stack() {
    let store = memory();
    add_pool(&store, "v4", "10.9.0.0/24", 26).await;
    add_pool(&store, "v6", "fd00:10::/120", 122).await;
    add_node(&store, "n1").await;
    let ipam = ipam(&store);
    let mut req = pod_req("n1", "default", "a", "c1", 1);
    req.ipv6 = 1;
    let got = ipam.assign(&req).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ipv4() && got[1].is_ipv6());
    // A v6 failure rolls the v4 address back.
    let mut big = pod_req("n1", "default", "b", "c2", 1);
    big.ipv6 = 1000;
    let before = all_allocations(&store).await;
    assert!(ipam.assign(&big).await.is_err());
    assert_eq!(all_allocations(&store).await, before);
}

/// An IPv6-only node (its agent recorded an IPv6 address and no IPv4 one) gets IPv6
/// addresses; an IPv4 address for it is refused with the reason, nothing allocated, while an
/// IPv4 pool selects it; no tunnel address is taken for it.
#[tokio::test]
async fn an_ipv6_only_node_is_refused_ipv4_addresses() {
    let store = memory();
    add_pool(&store, "v6", "fd00:10::/120", 122).await;
    let mut n = brindle_ipam::nodes::brindle_node("n6", &[("kubernetes.io/hostname", "n6")]);
    n.spec.bgp = Some(brindle_api::NodeBgp {
        ipv6_address: Some("2001:db8:18::10/64".into()),
        ..Default::default()
    });
    store
        .all::<brindle_api::BrindleNode>()
        .create(&n)
        .await
        .unwrap();
    let ipam = ipam(&store);
    let mut v6 = pod_req("n6", "default", "a", "c1", 0);
    v6.ipv6 = 1;
    let got = ipam.assign(&v6).await.unwrap();
    assert!(got.len() == 1 && got[0].is_ipv6(), "{got:?}");
    // No IPv4 pool selects it: the usual error.
    let e = ipam
        .assign(&pod_req("n6", "default", "b", "c2", 1))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::NoPools { .. }), "{e}");
    // One does: refused, naming the node, the pool and what to do.
    add_ipip_pool(&store, "v4", "10.9.0.0/24", 26).await;
    let before = all_allocations(&store).await;
    let mut dual = pod_req("n6", "default", "c", "c3", 1);
    dual.ipv6 = 1;
    let e = ipam.assign(&dual).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, IpamError::Ipv6OnlyNode { .. }), "{msg}");
    assert!(
        msg.contains("n6") && msg.contains("[v4]") && msg.contains("assign_ipv4"),
        "{msg}"
    );
    assert_eq!(all_allocations(&store).await, before, "nothing allocated");
    assert_eq!(count::<IPAMBlock>(&store).await, 1, "no IPv4 block claimed");
    // Nor an IPv4 address the pod asks for by name (brindle.dev/ipAddrs).
    let e = ipam
        .assign_requested_ip(
            "10.9.0.7".parse().unwrap(),
            "h-asked",
            "n6",
            &Default::default(),
            brindle_api::AllowedUse::Workload,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::Ipv6OnlyNode { .. }), "{e}");
    assert_eq!(all_allocations(&store).await, before, "nothing allocated");
    assert_eq!(count::<IPAMBlock>(&store).await, 1, "no IPv4 block claimed");
    // An IPIP pool takes no tunnel address for it (nothing would route to it).
    assert_eq!(ipam.ensure_tunnel_address("n6").await.unwrap(), None);
    // Given an IPv4 address, the node is served from the IPv4 pool.
    let api = store.all::<brindle_api::BrindleNode>();
    let mut n = api.get("n6").await.unwrap().unwrap();
    n.spec.bgp.as_mut().unwrap().ipv4_address = Some("198.18.0.10/24".into());
    api.update(&n).await.unwrap();
    let got = ipam.assign(&dual).await.unwrap();
    assert!(got[0].is_ipv4() && got[1].is_ipv6(), "{got:?}");
}

#[tokio::test]
async fn tunnel_address_follows_the_ipip_pools() {
    let store = memory();
    add_pool(&store, "plain", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    let ipam = ipam(&store);
    assert_eq!(
        ipam.ensure_tunnel_address("n1").await.unwrap(),
        None,
        "no IPIP pool"
    );
    add_ipip_pool(&store, "ipip", "10.10.0.0/24", 26).await;
    let t = ipam
        .ensure_tunnel_address("n1")
        .await
        .unwrap()
        .expect("tunnel address");
    assert!("10.10.0.0/24"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .contains(t));
    let rec = store
        .all::<brindle_api::BrindleNode>()
        .get("n1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.spec.bgp.unwrap().ipv4_ipip_tunnel_addr,
        Some(t.to_string())
    );
    assert_eq!(
        ipam.ensure_tunnel_address("n1").await.unwrap(),
        Some(t),
        "stable"
    );
    assert_eq!(
        ipam.ips_of_handle("ipip-tunnel-addr-n1").await.unwrap(),
        vec![t]
    );
    // The pool goes away: a new IPIP pool gives a new address, the old one is released.
    let old = store.all::<IPPool>().get("ipip").await.unwrap().unwrap();
    let mut disabled = old.clone();
    disabled.spec.disabled = true;
    store.all::<IPPool>().update(&disabled).await.unwrap();
    add_ipip_pool(&store, "ipip2", "10.11.0.0/24", 26).await;
    let t2 = ipam.ensure_tunnel_address("n1").await.unwrap().unwrap();
    assert!("10.11.0.0/24"
        .parse::<ipnetwork::IpNetwork>()
        .unwrap()
        .contains(t2));
    assert_eq!(
        ipam.ips_of_handle("ipip-tunnel-addr-n1").await.unwrap(),
        vec![t2]
    );
    assert!(
        !all_allocations(&store).await.iter().any(|a| a.0 == t),
        "old address released"
    );
}

#[tokio::test]
async fn blocks_of_a_pool_that_no_longer_selects_the_node_are_released_when_empty() {
    let (store, ipam) = one_node("10.9.0.0/24", 26).await;
    ipam.assign(&pod_req("n1", "default", "a", "c1", 1))
        .await
        .unwrap();
    let mut p = store.all::<IPPool>().get("pool").await.unwrap().unwrap();
    p.spec.node_selector = "zone == 'elsewhere'".into();
    store.all::<IPPool>().update(&p).await.unwrap();
    assert!(
        ipam.release_unselected_blocks("n1")
            .await
            .unwrap()
            .is_empty(),
        "not empty yet"
    );
    ipam.release_handle("k8s-pod-network.c1").await.unwrap();
    assert_eq!(ipam.release_unselected_blocks("n1").await.unwrap().len(), 1);
    assert!(count::<IPAMBlock>(&store).await == 0);
    assert!(count::<BlockAffinity>(&store).await == 0);
    let e = ipam
        .assign(&pod_req("n1", "default", "b", "c2", 1))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::NoPools { .. }), "{e}");
}

fn snapshot(nodes: &[&str], pods: &[(&str, &str)]) -> OwnerSnapshot {
    OwnerSnapshot {
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        pods: pods
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

#[tokio::test]
async fn gc_releases_after_grace_and_never_a_live_pod() {
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    add_pod(&store, "default", "live").await;
    let ipam = ipam(&store);
    let live = ipam
        .assign(&pod_req("n1", "default", "live", "c-live", 1))
        .await
        .unwrap();
    let gone = ipam
        .assign(&pod_req("n1", "default", "gone", "c-gone", 1))
        .await
        .unwrap();
    let grace = Duration::from_secs(60);
    let mut gc = Collector::new(grace);
    let t0 = Instant::now();
    // The caller's cache is stale: it misses the live pod too.
    let stale = snapshot(&["n1"], &[]);
    let r = gc.pass(&ipam, &stale, None, t0).await.unwrap();
    assert_eq!(r.suspects, 2);
    assert!(r.released.is_empty(), "nothing released on first sight");
    let r = gc.pass(&ipam, &stale, None, t0 + grace / 2).await.unwrap();
    assert!(
        r.released.is_empty(),
        "nothing released within the grace period"
    );
    let r = gc.pass(&ipam, &stale, None, t0 + grace).await.unwrap();
    assert_eq!(r.released, gone, "the orphan goes after the grace period");
    assert_eq!(
        r.kept_live, 1,
        "the live pod's address survives the fresh re-check"
    );
    let left: Vec<IpAddr> = all_allocations(&store)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(left, live);
    assert!(store
        .all::<IPAMHandle>()
        .get("k8s-pod-network.c-gone")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn gc_frees_a_deleted_nodes_blocks_affinities_and_tunnel_address() {
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    let mut tunnels = add_ipip_pool(&store, "ipip", "10.10.0.0/24", 26).await;
    tunnels.spec.allowed_uses = vec![brindle_api::AllowedUse::Tunnel];
    store.all::<IPPool>().update(&tunnels).await.unwrap();
    add_node(&store, "n1").await;
    add_node(&store, "n2").await;
    let ipam = ipam(&store);
    ipam.ensure_tunnel_address("n2").await.unwrap().unwrap();
    ipam.assign(&pod_req("n2", "default", "p", "c1", 1))
        .await
        .unwrap();
    ipam.assign(&pod_req("n1", "default", "q", "c2", 1))
        .await
        .unwrap();
    add_pod(&store, "default", "q").await;
    store
        .all::<brindle_api::BrindleNode>()
        .delete("n2", None)
        .await
        .unwrap();

    let grace = Duration::from_secs(60);
    let mut gc = Collector::new(grace);
    let owners = snapshot(&["n1"], &[("default", "q")]);
    let t0 = Instant::now();
    let r = gc.pass(&ipam, &owners, None, t0).await.unwrap();
    assert_eq!(
        r.affinities_freed.len(),
        2,
        "n2's pod block and tunnel block: {r:?}"
    );
    let r = gc.pass(&ipam, &owners, None, t0 + grace).await.unwrap();
    assert_eq!(r.released.len(), 2, "n2's pod and tunnel addresses: {r:?}");
    let r = gc.pass(&ipam, &owners, None, t0 + grace).await.unwrap();
    assert_eq!(
        r.blocks_freed.len(),
        2,
        "the emptied, unaffine blocks: {r:?}"
    );
    let blocks = store.all::<IPAMBlock>().list().await.unwrap().items;
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].spec.affinity.as_deref(), Some("host:n1"));
    assert_eq!(count::<BlockAffinity>(&store).await, 1);
    let handles: Vec<_> = store.all::<IPAMHandle>().list().await.unwrap().items;
    assert_eq!(handles.len(), 1, "only n1's pod handle is left");
    assert!(ipam.check(&owners).await.unwrap().is_clean());
}

#[tokio::test]
async fn collector_frees_empty_blocks_of_pools_that_no_longer_select_the_node() {
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    add_pod(&store, "default", "a").await;
    let ipam = ipam(&store);
    ipam.assign(&pod_req("n1", "default", "a", "c1", 1))
        .await
        .unwrap();
    let mut p = store.all::<IPPool>().get("pool").await.unwrap().unwrap();
    p.spec.node_selector = "zone == 'elsewhere'".into();
    store.all::<IPPool>().update(&p).await.unwrap();
    let mut gc = Collector::new(Duration::from_secs(60));
    let owners = snapshot(&["n1"], &[("default", "a")]);
    let r = gc.pass(&ipam, &owners, None, Instant::now()).await.unwrap();
    assert!(
        r.blocks_freed.is_empty(),
        "the block still holds a's address: {r:?}"
    );
    ipam.release_handle("k8s-pod-network.c1").await.unwrap();
    let r = gc.pass(&ipam, &owners, None, Instant::now()).await.unwrap();
    assert_eq!(r.blocks_freed, vec!["10.9.0.0/26".to_string()], "{r:?}");
    assert_eq!(count::<BlockAffinity>(&store).await, 0);
    // A block of a pool that still selects the node is kept, empty or not.
    p.spec.node_selector = "all()".into();
    p.metadata.resource_version = None;
    store.all::<IPPool>().update(&p).await.unwrap();
    ipam.assign(&pod_req("n1", "default", "a", "c2", 1))
        .await
        .unwrap();
    ipam.release_handle("k8s-pod-network.c2").await.unwrap();
    let r = gc.pass(&ipam, &owners, None, Instant::now()).await.unwrap();
    assert!(r.blocks_freed.is_empty(), "{r:?}");
    assert_eq!(count::<IPAMBlock>(&store).await, 1);
}

/// A container without a pod (podman calling brindle-cni) is listed, never leaked while its
/// node lives, and released after the grace period once its node is gone.
#[tokio::test]
async fn container_addresses_follow_their_node() {
    use brindle_ipam::block::attr;
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    add_node(&store, "n2").await;
    let ipam = ipam(&store);
    for (node, cid) in [("n1", "live"), ("n2", "orphan")] {
        let mut req = pod_req(node, "", "", cid, 1);
        req.attrs.remove(attr::POD);
        req.attrs.remove(attr::NAMESPACE);
        ipam.assign(&req).await.unwrap();
    }
    let grace = Duration::from_secs(60);
    let mut gc = Collector::new(grace);
    let t0 = Instant::now();
    let all = snapshot(&["n1", "n2"], &[]);
    let report = ipam.check(&all).await.unwrap();
    assert!(report.leaked.is_empty(), "{report:?}");
    assert_eq!(report.container_attachments.len(), 2);
    let r = gc.pass(&ipam, &all, None, t0 + grace * 2).await.unwrap();
    assert!(
        r.released.is_empty(),
        "live nodes keep their containers' addresses"
    );

    store
        .all::<brindle_api::BrindleNode>()
        .delete("n2", None)
        .await
        .unwrap();
    let owners = snapshot(&["n1"], &[]);
    let r = gc.pass(&ipam, &owners, None, t0).await.unwrap();
    assert!(r.released.is_empty(), "not before the grace period");
    let r = gc.pass(&ipam, &owners, None, t0 + grace).await.unwrap();
    assert_eq!(r.released.len(), 1, "{r:?}");
    let left = ipam.check(&owners).await.unwrap();
    assert_eq!(left.container_attachments.len(), 1);
    assert_eq!(left.container_attachments[0].attrs[attr::NODE], "n1");
}

/// A release conditioned on the owner record loses to a repeated ADD that refreshed it.
#[tokio::test]
async fn a_refreshed_record_defeats_a_stale_release() {
    use brindle_ipam::block::attr;
    let store = memory();
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    let ipam = ipam(&store);
    let req = pod_req("n1", "default", "p", "c1", 1);
    let ip = ipam.assign(&req).await.unwrap()[0];
    let judged = req.attrs.clone();
    let upd =
        std::collections::BTreeMap::from([(attr::NETNS.to_string(), "/run/netns/new".to_string())]);
    assert_eq!(
        ipam.refresh_handle(&req.handle, &upd).await.unwrap(),
        vec![ip]
    );
    let stale = ReleaseIp {
        ip,
        handle: Some(req.handle.clone()),
        sequence: None,
        attrs: Some(judged),
    };
    let out = ipam.release_ips(&[stale]).await.unwrap();
    assert!(matches!(out[0], ReleaseOutcome::Mismatch { .. }), "{out:?}");
    assert_eq!(ipam.ips_of_handle(&req.handle).await.unwrap(), vec![ip]);
    let mut now = req.attrs.clone();
    now.extend(upd);
    let fresh = ReleaseIp {
        ip,
        handle: Some(req.handle.clone()),
        sequence: None,
        attrs: Some(now),
    };
    assert_eq!(
        ipam.release_ips(&[fresh]).await.unwrap(),
        vec![ReleaseOutcome::Released]
    );
    assert!(ipam.ips_of_handle(&req.handle).await.unwrap().is_empty());
    assert!(ipam
        .refresh_handle(&req.handle, &std::collections::BTreeMap::new())
        .await
        .unwrap()
        .is_empty());
}

/// A warm allocator (the agent's: pools cached for a minute) serves a pool created a moment
/// ago, by name, instead of saying it does not exist.
#[tokio::test]
async fn a_pool_created_after_the_cache_was_filled_is_found() {
    let store =
        brindle_datastore::Store::new(brindle_datastore::backend::memory::MemoryBackend::new());
    add_pool(&store, "pool", "10.9.0.0/24", 26).await;
    add_node(&store, "n1").await;
    let ipam = brindle_ipam::Ipam::with_options(
        store.clone(),
        brindle_ipam::IpamOptions {
            cache_ttl: Duration::from_secs(60),
            transactions: true,
        },
    );
    ipam.assign(&pod_req("n1", "default", "a", "ca", 1))
        .await
        .unwrap();
    add_pool(&store, "small", "10.245.0.0/26", 26).await;
    let mut req = pod_req("n1", "default", "b", "cb", 1);
    req.pools = vec!["small".into()];
    let got = ipam.assign(&req).await.unwrap();
    assert!(got[0].to_string().starts_with("10.245.0."), "{got:?}");
    // A pool that really does not exist is still an error.
    req.pools = vec!["nope".into()];
    req.handle = "other".into();
    assert!(matches!(
        ipam.assign(&req).await,
        Err(IpamError::UnknownPool(p)) if p == "nope"
    ));
}
