//! Shared set-up for the IPAM tests.
#![allow(dead_code)]

use std::net::IpAddr;

use brindle_api::{IPAMConfig, IPAMConfigSpec, IPPool, IPPoolSpec, IpipMode};
use brindle_datastore::backend::memory::MemoryBackend;
use brindle_datastore::Store;
use brindle_ipam::nodes::brindle_node;
use brindle_ipam::{AssignRequest, Ipam, IpamOptions};
use k8s_openapi::api::core::v1::Pod;

pub fn memory() -> Store {
    Store::new(MemoryBackend::new())
}

/// An IPAM client that reads pools and config on every request, so tests see changes at once.
pub fn ipam(store: &Store) -> Ipam {
    Ipam::with_options(
        store.clone(),
        IpamOptions {
            cache_ttl: std::time::Duration::ZERO,
            ..Default::default()
        },
    )
}

/// As [`ipam`], but writing handle and block separately, as on the Kubernetes datastore.
pub fn ipam_two_writes(store: &Store) -> Ipam {
    Ipam::with_options(
        store.clone(),
        IpamOptions {
            cache_ttl: std::time::Duration::ZERO,
            transactions: false,
        },
    )
}

/// A memory store with one pool named "pool" and one node "n1", and an IPAM client on it.
pub async fn one_node(cidr: &str, block: u8) -> (Store, Ipam) {
    let store = memory();
    add_pool(&store, "pool", cidr, block).await;
    add_node(&store, "n1").await;
    let ipam = ipam(&store);
    (store, ipam)
}

pub async fn add_pool(store: &Store, name: &str, cidr: &str, block: u8) -> IPPool {
    let mut s = IPPoolSpec::new(cidr);
    s.block_size = Some(block);
    store
        .all::<IPPool>()
        .create(&IPPool::new(name, s))
        .await
        .expect("pool")
}

pub async fn add_ipip_pool(store: &Store, name: &str, cidr: &str, block: u8) -> IPPool {
    let mut s = IPPoolSpec::new(cidr);
    s.block_size = Some(block);
    s.ipip_mode = IpipMode::Always;
    store
        .all::<IPPool>()
        .create(&IPPool::new(name, s))
        .await
        .expect("pool")
}

pub async fn add_node(store: &Store, name: &str) {
    store
        .all::<brindle_api::BrindleNode>()
        .create(&brindle_node(name, &[("kubernetes.io/hostname", name)]))
        .await
        .expect("node");
}

pub async fn set_config(store: &Store, spec: IPAMConfigSpec) {
    let api = store.all::<IPAMConfig>();
    let mut c = IPAMConfig::new("default", spec);
    match api.get("default").await.expect("get config") {
        Some(old) => {
            c.metadata = old.metadata;
            api.update(&c).await.expect("config");
        }
        None => {
            api.create(&c).await.expect("config");
        }
    }
}

pub async fn add_pod(store: &Store, ns: &str, name: &str) {
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns}, "spec": {"containers": []}
    }))
    .expect("pod");
    store.namespaced::<Pod>(ns).create(&p).await.expect("pod");
}

pub fn pod_req(node: &str, ns: &str, pod: &str, container: &str, n: usize) -> AssignRequest {
    AssignRequest::pod(node, ns, pod, container, n)
}

/// Every allocated address in every block, with its handle.
pub async fn all_allocations(store: &Store) -> Vec<(IpAddr, Option<String>)> {
    let mut out = vec![];
    for b in store
        .all::<brindle_api::IPAMBlock>()
        .list()
        .await
        .expect("blocks")
        .items
    {
        for a in brindle_ipam::block::allocations(&b.spec) {
            out.push((a.ip, a.handle));
        }
    }
    out.sort();
    out
}

/// How many objects of a kind the store holds.
pub async fn count<K: brindle_datastore::StoreResource>(store: &Store) -> usize {
    store.all::<K>().list().await.expect("list").items.len()
}
