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
    AllocationAttribute, BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPFilterSpec, BGPPeer,
    BGPPeerSpec, BlockAffinity, BlockAffinitySpec, BrindleNode, IPAMBlock, IPAMBlockSpec, IPPool,
    IPPoolSpec, NodeBgp,
};
use brindle_datastore::{Change, Store, StoreResource};
use brindle_ipam::block::attr;
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
    pub filters: Arc<BTreeMap<String, BGPFilterSpec>>,
    pub configs: Arc<BTreeMap<String, BGPConfigurationSpec>>,
    pub peers: Arc<BTreeMap<String, BGPPeerSpec>>,
    pub pools: Arc<BTreeMap<String, IPPoolSpec>>,
    pub blocks: Arc<BTreeMap<String, IPAMBlockSpec>>,
    pub affinities: Arc<BTreeMap<String, BlockAffinitySpec>>,
    pub nodes: Arc<BTreeMap<String, NodeInfo>>,
    /// `namespace/name` → data.
    pub secrets: Arc<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    /// `namespace/name` → pod: this node's pods only.
    pub pods: Arc<BTreeMap<String, PodInfo>>,
}

/// Which of a snapshot's kinds changed since an earlier one. Each kind's map is shared
/// between snapshots until it changes (a publish copies pointers, not maps), so this is a
/// pointer comparison: a task reads it to do nothing when none of its inputs moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub flags: bool,
    pub filters: bool,
    pub configs: bool,
    pub peers: bool,
    pub pools: bool,
    pub blocks: bool,
    pub affinities: bool,
    pub nodes: bool,
    pub secrets: bool,
    pub pods: bool,
}

impl Changed {
    /// Anything but this node's pods (what peering and exports read).
    pub fn routing(&self) -> bool {
        self.flags
            || self.filters
            || self.configs
            || self.peers
            || self.pools
            || self.blocks
            || self.affinities
            || self.nodes
            || self.secrets
    }
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
    /// What changed since `before` (see [`Changed`]).
    pub fn changed_since(&self, before: &Snapshot) -> Changed {
        fn moved<T>(a: &Arc<T>, b: &Arc<T>) -> bool {
            !Arc::ptr_eq(a, b)
        }
        Changed {
            flags: (self.synced, self.secrets_listed, self.filters_listed)
                != (before.synced, before.secrets_listed, before.filters_listed),
            filters: moved(&self.filters, &before.filters),
            configs: moved(&self.configs, &before.configs),
            peers: moved(&self.peers, &before.peers),
            pools: moved(&self.pools, &before.pools),
            blocks: moved(&self.blocks, &before.blocks),
            affinities: moved(&self.affinities, &before.affinities),
            nodes: moved(&self.nodes, &before.nodes),
            secrets: moved(&self.secrets, &before.secrets),
            pods: moved(&self.pods, &before.pods),
        }
    }

    fn apply(&mut self, kind: Kind, key: String, item: Option<Item>) {
        macro_rules! put {
            ($map:expr, $v:ident) => {
                match item {
                    Some(Item::$v(v)) => {
                        if $map.get(&key) != Some(&v) {
                            Arc::make_mut(&mut $map).insert(key, v);
                        }
                    }
                    _ => {
                        if $map.contains_key(&key) {
                            Arc::make_mut(&mut $map).remove(&key);
                        }
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

    /// Replaces a kind with a fresh list; the map is kept (and stays shared) when the list
    /// holds what it already had.
    fn reset(&mut self, kind: Kind, items: Vec<(String, Item)>) {
        let mut fresh = Snapshot::default();
        for (key, i) in items {
            fresh.apply(kind, key, Some(i));
        }
        macro_rules! take {
            ($f:ident) => {
                if self.$f != fresh.$f {
                    self.$f = fresh.$f;
                }
            };
        }
        match kind {
            Kind::Config => take!(configs),
            Kind::Peer => take!(peers),
            Kind::Filter => take!(filters),
            Kind::Pool => take!(pools),
            Kind::Block => take!(blocks),
            Kind::Affinity => take!(affinities),
            Kind::Node => take!(nodes),
            Kind::Secret => take!(secrets),
            Kind::Pod => take!(pods),
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
    let me = node.to_owned();
    mirror!(
        store.all::<IPAMBlock>(),
        Kind::Block,
        move |o: IPAMBlock| { Some(Item::Block(own_part(o.spec, &me))) }
    );
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

/// What this agent keeps of a block: all of it when the block is its own (affine to `node`);
/// of another node's block its range, affinity and deletion, and only the allocations this
/// node holds in it (borrowed addresses: routes, attachments, leaks). Every reader of the
/// snapshot's blocks looks at nothing else, and a 5,000-node cluster's blocks are then a
/// few hundred bytes each instead of kilobytes.
pub fn own_part(mut b: IPAMBlockSpec, node: &str) -> IPAMBlockSpec {
    if brindle_ipam::block::is_affine_to(&b, node) {
        return b;
    }
    let attributes = std::mem::take(&mut b.attributes);
    let mut kept: Vec<AllocationAttribute> = vec![];
    let mut renumbered: BTreeMap<u32, u32> = BTreeMap::new();
    for slot in b.allocations.iter_mut() {
        let Some(i) = *slot else { continue };
        let a = attributes.get(i as usize);
        if a.and_then(|a| a.secondary.get(attr::NODE))
            .map(String::as_str)
            != Some(node)
        {
            *slot = None;
            continue;
        }
        let n = *renumbered.entry(i).or_insert_with(|| {
            kept.extend(a.cloned());
            kept.len() as u32 - 1
        });
        *slot = Some(n);
    }
    let used = b
        .allocations
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |p| p + 1);
    b.allocations.truncate(used);
    b.allocations.shrink_to_fit();
    b.attributes = kept;
    b.unallocated = vec![];
    let held = |ord: &String| {
        ord.parse::<usize>()
            .is_ok_and(|o| b.allocations.get(o).is_some_and(Option::is_some))
    };
    let sequences = std::mem::take(&mut b.sequence_number_for_allocation);
    b.sequence_number_for_allocation = sequences.into_iter().filter(|(o, _)| held(o)).collect();
    b
}

/// Follows `api` ([`brindle_datastore::follow`]: list, watch, list again after a failure),
/// sending each change converted by `f` (None: the object is treated as absent) and wrapped.
pub async fn mirror<K: StoreResource, T: Send, U: Send>(
    api: brindle_datastore::Api<K>,
    f: impl Fn(K) -> Option<T> + Send + 'static,
    wrap: impl Fn(Event<T>) -> U + Send,
    tx: mpsc::Sender<U>,
    metrics: Metrics,
) {
    let label = metrics::kind_label(&K::kind(&()));
    // Each object is made into its item as it is decoded: a list of 150,000 Pods is never
    // held as Pods.
    let project = move |o: K| {
        let k = key_of(&o);
        (k, f(o))
    };
    let convert = move |c: Change<(String, Option<T>)>| {
        Some(wrap(match c {
            Change::Listed(items) => Event::Reset(
                items
                    .into_iter()
                    .filter_map(|(k, i)| i.map(|i| (k, i)))
                    .collect(),
            ),
            Change::Upsert((k, Some(i))) => Event::Upsert(k, Box::new(i)),
            Change::Upsert((k, None)) | Change::Deleted((k, _)) => Event::Delete(k),
        }))
    };
    let restarted = move || {
        metrics.watch_restarts.get_or_create(&label).inc();
    };
    brindle_datastore::follow(api, tx, project, convert, restarted).await;
}

/// Owns the snapshot: folds updates in, publishes after each burst (a short settle so a
/// relist of thousands of objects is one publish, not thousands). A publish shares every
/// map with the last one; a change copies only its own kind's map (once per burst).
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
                    snap.reset(k, items);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_another_nodes_block_only_what_this_node_holds_in_it_is_kept() {
        use brindle_ipam::block::{allocate, allocations, new_block};
        let on = |n: &str| BTreeMap::from([(attr::NODE.to_string(), n.to_string())]);
        let mut b = new_block(&"10.0.0.0/26".parse().unwrap(), Some("host:n2".into()));
        allocate(&mut b, 3, "theirs-1", &on("n2"));
        let mine = allocate(&mut b, 2, "mine", &on("n1"));
        allocate(&mut b, 4, "theirs-2", &on("n2"));
        let third = allocate(&mut b, 1, "mine-too", &on("n1"));
        let full = allocations(&b);
        let kept = own_part(b.clone(), "n1");
        let want: Vec<_> = full
            .iter()
            .filter(|a| a.attrs.get(attr::NODE).map(String::as_str) == Some("n1"))
            .cloned()
            .collect();
        assert_eq!(
            allocations(&kept),
            want,
            "this node's allocations, as they were"
        );
        let ips: Vec<_> = want.iter().map(|a| a.ip).collect();
        assert_eq!(ips, [mine, third].concat());
        assert_eq!(kept.attributes.len(), 2);
        assert!(kept.unallocated.is_empty());
        assert_eq!(
            (kept.cidr.as_str(), kept.affinity.as_deref()),
            ("10.0.0.0/26", Some("host:n2"))
        );
        // Its own block is kept whole; a block with nothing of it keeps no allocation.
        assert_eq!(own_part(b.clone(), "n2"), b);
        let none = own_part(b, "n3");
        assert!(allocations(&none).is_empty() && none.allocations.is_empty());
    }

    fn pod(ip: [u8; 4]) -> Item {
        Item::Pod(PodInfo {
            node: Some("n".into()),
            ips: vec![Ipv4Addr::from(ip)],
        })
    }

    fn pool(cidr: &str) -> Item {
        Item::Pool(serde_json::from_value(serde_json::json!({"cidr": cidr})).unwrap())
    }

    async fn published(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a publish within 5 s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    /// A publish shares every unchanged kind's map with the one before, so a pod event copies
    /// the pods and nothing else, and the tasks that do not read pods see nothing changed.
    #[tokio::test]
    async fn a_change_copies_its_own_kind_only_and_a_relist_of_the_same_publishes_nothing() {
        let (tx, rx) = mpsc::channel(16);
        let (out, mut seen) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(fold(rx, out));
        tx.send((
            Kind::Pool,
            Event::Reset(vec![("p".into(), pool("10.0.0.0/16"))]),
        ))
        .await
        .unwrap();
        tx.send((
            Kind::Pod,
            Event::Reset(vec![("a/x".into(), pod([10, 0, 0, 1]))]),
        ))
        .await
        .unwrap();
        let first = published(&mut seen).await;
        assert_eq!(first.pods.len(), 1);

        tx.send((
            Kind::Pod,
            Event::Upsert("a/y".into(), Box::new(pod([10, 0, 0, 2]))),
        ))
        .await
        .unwrap();
        let second = published(&mut seen).await;
        let c = second.changed_since(&first);
        assert!(c.pods && !c.routing(), "{c:?}");
        assert!(Arc::ptr_eq(&first.pools, &second.pools));

        tx.send((
            Kind::Pool,
            Event::Reset(vec![("p".into(), pool("10.0.0.0/16"))]),
        ))
        .await
        .unwrap();
        tx.send((
            Kind::Pool,
            Event::Upsert("p".into(), Box::new(pool("10.0.0.0/16"))),
        ))
        .await
        .unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), seen.changed()).await;
        assert!(quiet.is_err(), "the same pools again published a snapshot");

        tx.send((
            Kind::Pool,
            Event::Upsert("q".into(), Box::new(pool("10.1.0.0/16"))),
        ))
        .await
        .unwrap();
        let third = published(&mut seen).await;
        let c = third.changed_since(&second);
        assert!(c.pools && c.routing() && !c.pods, "{c:?}");
        assert!(Arc::ptr_eq(&second.pods, &third.pods));
    }
}
