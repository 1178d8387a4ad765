//! The agent's view of the datastore: one list + watch per kind, folded into a [`Snapshot`]
//! that the concern tasks read through a `watch` channel.
//!
//! ```text
//!   mirror::<BGPPeer> ─┐
//!   mirror::<IPPool>  ─┤ Update            ┌─▶ bgp task (speaker)
//!   mirror::<...>     ─┼──────▶ fold task ─┼─▶ tunnel task
//!   mirror::<Node>    ─┘  (owns Snapshot)  └─▶ workload task, health
//! ```
//!
//! During a datastore outage the last snapshot stays published (forwarding goes on from it);
//! each mirror retries with backoff and, once back, lists again: the fresh list replaces its
//! kind, so an unchanged cluster gives an unchanged snapshot and not one route moves.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use brindle_api::{
    BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPFilterSpec, BGPPeer, BGPPeerSpec,
    BlockAffinity, BlockAffinitySpec, BrindleNode, IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec,
    NodeBgp,
};
use brindle_datastore::{Change, Store, StoreResource};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use tokio::sync::{mpsc, watch};

use crate::metrics::{self, Metrics};

/// A node as peering needs it, from either backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub labels: BTreeMap<String, String>,
    pub bgp: NodeBgp,
    /// Why the node's BGP facts could not be read (Kubernetes annotations), if so.
    pub bgp_error: Option<String>,
    /// The first InternalIP of a Kubernetes Node.
    pub internal_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub node: Option<String>,
    pub ips: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every kind that peering and exports depend on has been listed at least once. Secrets
    /// and Pods are not waited for: a node whose agent may not read Secrets (RBAC) or whose
    /// cluster has many pods still gets its routes; a password peer waits for its Secret.
    pub synced: bool,
    /// The Secrets have been listed (until then a missing one is not yet a problem).
    pub secrets_listed: bool,
    /// The BGPFilters have been listed: until then a peer that names filters waits (it is
    /// never set up without them), and a node whose agent may not read them still routes.
    pub filters_listed: bool,
    pub filters: BTreeMap<String, BGPFilterSpec>,
    pub configs: BTreeMap<String, BGPConfigurationSpec>,
    pub peers: BTreeMap<String, BGPPeerSpec>,
    pub pools: BTreeMap<String, IPPoolSpec>,
    pub blocks: BTreeMap<String, IPAMBlockSpec>,
    pub affinities: BTreeMap<String, BlockAffinitySpec>,
    pub nodes: BTreeMap<String, NodeInfo>,
    /// `namespace/name` → data.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// `namespace/name` → pod.
    pub pods: BTreeMap<String, PodInfo>,
}

#[derive(Debug, Clone)]
enum Item {
    Config(BGPConfigurationSpec),
    Peer(BGPPeerSpec),
    Filter(BGPFilterSpec),
    Pool(IPPoolSpec),
    Block(IPAMBlockSpec),
    Affinity(BlockAffinitySpec),
    Node(NodeInfo),
    Secret(BTreeMap<String, Vec<u8>>),
    Pod(PodInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Config,
    Peer,
    Filter,
    Pool,
    Block,
    Affinity,
    Node,
    Secret,
    Pod,
}

const KINDS: usize = 9;

/// What a mirror reports about its kind.
pub enum Event<T> {
    /// A fresh list: replaces everything known of the kind.
    Reset(Vec<(String, T)>),
    Upsert(String, Box<T>),
    Delete(String),
}

type Update = (Kind, Event<Item>);

impl Snapshot {
    fn apply(&mut self, kind: Kind, key: String, item: Option<Item>) {
        macro_rules! put {
            ($map:expr, $v:ident) => {
                match item {
                    Some(Item::$v(v)) => {
                        $map.insert(key, v);
                    }
                    _ => {
                        $map.remove(&key);
                    }
                }
            };
        }
        match kind {
            Kind::Config => put!(self.configs, Config),
            Kind::Peer => put!(self.peers, Peer),
            Kind::Filter => put!(self.filters, Filter),
            Kind::Pool => put!(self.pools, Pool),
            Kind::Block => put!(self.blocks, Block),
            Kind::Affinity => put!(self.affinities, Affinity),
            Kind::Node => put!(self.nodes, Node),
            Kind::Secret => put!(self.secrets, Secret),
            Kind::Pod => put!(self.pods, Pod),
        }
    }

    fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::Config => self.configs.clear(),
            Kind::Peer => self.peers.clear(),
            Kind::Filter => self.filters.clear(),
            Kind::Pool => self.pools.clear(),
            Kind::Block => self.blocks.clear(),
            Kind::Affinity => self.affinities.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::Secret => self.secrets.clear(),
            Kind::Pod => self.pods.clear(),
        }
    }
}

/// Starts the mirrors and the fold task; returns the published snapshot.
pub fn start(
    store: &Store,
    node: &str,
    secrets_ns: &str,
    metrics: Metrics,
) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = mpsc::channel(1024);
    let kube = store.backend_name() == "kubernetes";
    macro_rules! mirror {
        ($api:expr, $kind:expr, $f:expr) => {
            tokio::spawn(mirror(
                $api,
                $f,
                move |e| ($kind, e),
                tx.clone(),
                metrics.clone(),
            ));
        };
    }
    mirror!(
        store.all::<BGPConfiguration>(),
        Kind::Config,
        |o: BGPConfiguration| Some(Item::Config(o.spec))
    );
    mirror!(store.all::<BGPPeer>(), Kind::Peer, |o: BGPPeer| Some(
        Item::Peer(o.spec)
    ));
    mirror!(store.all::<BGPFilter>(), Kind::Filter, |o: BGPFilter| Some(
        Item::Filter(o.spec)
    ));
    mirror!(store.all::<IPPool>(), Kind::Pool, |o: IPPool| Some(
        Item::Pool(o.spec)
    ));
    mirror!(store.all::<IPAMBlock>(), Kind::Block, |o: IPAMBlock| Some(
        Item::Block(o.spec)
    ));
    mirror!(
        store.all::<BlockAffinity>(),
        Kind::Affinity,
        |o: BlockAffinity| Some(Item::Affinity(o.spec))
    );
    if kube {
        mirror!(store.all::<Node>(), Kind::Node, |o: Node| Some(Item::Node(
            kube_node(&o)
        )));
    } else {
        mirror!(store.all::<BrindleNode>(), Kind::Node, |o: BrindleNode| {
            Some(Item::Node(NodeInfo {
                labels: o.metadata.labels.unwrap_or_default(),
                bgp: o.spec.bgp.unwrap_or_default(),
                ..Default::default()
            }))
        });
    }
    mirror!(
        store.namespaced::<Secret>(secrets_ns),
        Kind::Secret,
        |o: Secret| Some(Item::Secret(
            o.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        ))
    );
    // Only this node's Pods: the datastore selects them (a field selector, an etcd index),
    // so other nodes' pods cost this agent nothing here (policy keeps its own projection).
    mirror!(store.all::<Pod>().on_node(node), Kind::Pod, |o: Pod| Some(
        Item::Pod(PodInfo {
            node: o.spec.and_then(|s| s.node_name),
            ips: o
                .status
                .and_then(|s| s.pod_ips)
                .unwrap_or_default()
                .iter()
                .filter_map(|i| i.ip.parse().ok())
                .collect(),
        })
    ));
    drop(tx);
    let (pub_tx, pub_rx) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(fold(rx, pub_tx));
    pub_rx
}

fn kube_node(n: &Node) -> NodeInfo {
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    let (bgp, bgp_error) = match NodeBgp::from_annotations(&ann) {
        Ok(b) => (b, None),
        Err(e) => (NodeBgp::default(), Some(e.to_string())),
    };
    let internal_ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .find(|a| a.type_ == "InternalIP" && a.address.parse::<Ipv4Addr>().is_ok())
        })
        .map(|a| a.address.clone());
    NodeInfo {
        labels: n.metadata.labels.clone().unwrap_or_default(),
        bgp,
        bgp_error,
        internal_ip,
    }
}

pub fn key_of<K: StoreResource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or_default()),
        None => m.name.clone().unwrap_or_default(),
    }
}

/// Follows `api` ([`brindle_datastore::follow`]: list, watch, list again after a failure),
/// sending each change converted by `f` (None: the object is treated as absent) and wrapped.
pub async fn mirror<K: StoreResource, T, U: Send>(
    api: brindle_datastore::Api<K>,
    f: fn(K) -> Option<T>,
    wrap: impl Fn(Event<T>) -> U + Send,
    tx: mpsc::Sender<U>,
    metrics: Metrics,
) {
    let label = metrics::kind_label(&K::kind(&()));
    let convert = move |c: Change<K>| {
        Some(wrap(match c {
            Change::Listed(items) => Event::Reset(
                items
                    .into_iter()
                    .filter_map(|o| {
                        let k = key_of(&o);
                        f(o).map(|i| (k, i))
                    })
                    .collect(),
            ),
            Change::Upsert(o) => {
                let k = key_of(&o);
                match f(o) {
                    Some(i) => Event::Upsert(k, Box::new(i)),
                    None => Event::Delete(k),
                }
            }
            Change::Deleted(o) => Event::Delete(key_of(&o)),
        }))
    };
    let restarted = move || {
        metrics.watch_restarts.get_or_create(&label).inc();
    };
    brindle_datastore::follow(api, tx, convert, restarted).await;
}

/// Owns the snapshot: folds updates in, publishes after each burst (a short settle so a
/// relist of thousands of objects is one publish, not thousands).
async fn fold(mut rx: mpsc::Receiver<Update>, out: watch::Sender<Arc<Snapshot>>) {
    let mut snap = Snapshot::default();
    let mut listed = [false; KINDS];
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Some(u) = next.take() {
            match u {
                (k, Event::Reset(items)) => {
                    listed[k as usize] = true;
                    snap.clear(k);
                    for (key, i) in items {
                        snap.apply(k, key, Some(i));
                    }
                }
                (k, Event::Upsert(key, i)) => snap.apply(k, key, Some(*i)),
                (k, Event::Delete(key)) => snap.apply(k, key, None),
            }
            next = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten();
        }
        snap.secrets_listed = listed[Kind::Secret as usize];
        snap.filters_listed = listed[Kind::Filter as usize];
        snap.synced = listed.iter().enumerate().all(|(k, l)| {
            *l || k == Kind::Secret as usize
                || k == Kind::Pod as usize
                || k == Kind::Filter as usize
        });
        if **out.borrow() != snap {
            out.send_replace(Arc::new(snap.clone()));
        }
    }
}
