//! Assignment: affine blocks first, then a newly claimed block, then borrowing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brindle_api::{
    AffinityState, AllowedUse, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMConfig,
    IPAMConfigSpec, IPAMHandle, IPAMHandleSpec, IPPool,
};
use brindle_datastore::{Store, StoreError};
use ipnetwork::IpNetwork;
use tracing::{debug, info, warn};

use crate::block::{self, block_name};
use crate::error::{IpamError, Result};
use crate::nodes::{NodeFacts, Owners};
use crate::pools::{self, Eligible};

/// Bound on every compare-and-swap loop (Calico's figure).
pub const MAX_RETRIES: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AssignRequest {
    pub handle: String,
    pub node: String,
    pub ipv4: usize,
    pub ipv6: usize,
    /// Owner facts stored with each address (see [`crate::block::attr`]).
    pub attrs: BTreeMap<String, String>,
    pub use_: AllowedUse,
    /// Only these pools (names or CIDRs); empty means every pool that selects the node.
    pub pools: Vec<String>,
}

impl AssignRequest {
    /// `n` IPv4 addresses for a pod's container, under the pod handle, with the owner
    /// attributes the collector uses to tell a live pod from a leak.
    pub fn pod(node: &str, namespace: &str, pod: &str, container_id: &str, n: usize) -> Self {
        use crate::block::attr;
        AssignRequest {
            handle: crate::pod_handle(container_id),
            node: node.into(),
            ipv4: n,
            ipv6: 0,
            attrs: BTreeMap::from([
                (attr::POD.to_string(), pod.to_string()),
                (attr::NAMESPACE.to_string(), namespace.to_string()),
                (attr::NODE.to_string(), node.to_string()),
                (attr::CONTAINER_ID.to_string(), container_id.to_string()),
                (attr::TYPE.to_string(), attr::TYPE_POD.to_string()),
            ]),
            use_: AllowedUse::Workload,
            pools: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// How long pools, IPAMConfig and node labels read from the datastore are reused.
    /// Zero reads them on every request.
    pub cache_ttl: Duration,
    /// Write a block and its handles in one transaction where the datastore can (etcd).
    /// Off: handle first, then block, as on the Kubernetes datastore (for comparison and
    /// for tests of that path).
    pub transactions: bool,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            cache_ttl: Duration::from_secs(5),
            transactions: true,
        }
    }
}

struct Cached<T> {
    at: Instant,
    value: T,
}

#[derive(Default)]
struct Cache {
    pools: Option<Cached<Vec<IPPool>>>,
    config: Option<Cached<IPAMConfigSpec>>,
    nodes: HashMap<String, Cached<NodeFacts>>,
    /// Per node: its affine blocks.
    affine: HashMap<String, NodeBlocks>,
}

/// A node's confirmed blocks: every one of them (from the affinity list, newest first, since
/// older blocks are the ones that have filled up), and those whose content has been read or
/// written since, loaded only when first needed.
#[derive(Default)]
struct NodeBlocks {
    order: Vec<(String, IpNetwork)>,
    loaded: BTreeMap<String, IPAMBlock>,
}

/// An IPAM client. Cheap state only: caches that are refreshed by TTL or by a failed
/// compare-and-swap, never trusted for a write.
pub struct Ipam {
    pub(crate) store: Store,
    pub(crate) owners: Owners,
    pub(crate) opts: IpamOptions,
    cache: Mutex<Cache>,
}

/// The latest version of a handle this request has seen, to save round trips.
#[derive(Default)]
pub(crate) struct HandleState {
    pub(crate) latest: Option<IPAMHandle>,
    /// The handle is known to exist (`latest` may not have been read yet).
    pub(crate) created: bool,
}

impl Ipam {
    pub fn new(store: Store) -> Self {
        Self::with_options(store, IpamOptions::default())
    }

    pub fn with_options(store: Store, opts: IpamOptions) -> Self {
        Ipam {
            owners: Owners::new(store.clone()),
            store,
            opts,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh<T: Clone>(&self, c: &Option<Cached<T>>) -> Option<T> {
        c.as_ref()
            .filter(|c| c.at.elapsed() < self.opts.cache_ttl)
            .map(|c| c.value.clone())
    }

    pub(crate) async fn pools(&self) -> Result<Vec<IPPool>> {
        if let Some(p) = self.fresh(&self.cache().pools) {
            return Ok(p);
        }
        let pools = self.store.all::<IPPool>().list().await?.items;
        self.cache().pools = Some(Cached {
            at: Instant::now(),
            value: pools.clone(),
        });
        Ok(pools)
    }

    pub async fn config(&self) -> Result<IPAMConfigSpec> {
        if let Some(c) = self.fresh(&self.cache().config) {
            return Ok(c);
        }
        let c = self
            .store
            .all::<IPAMConfig>()
            .get("default")
            .await?
            .map(|c| c.spec)
            .unwrap_or_default();
        self.cache().config = Some(Cached {
            at: Instant::now(),
            value: c.clone(),
        });
        Ok(c)
    }

    pub(crate) async fn labels(&self, node: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.facts(node).await?.labels)
    }

    pub(crate) async fn facts(&self, node: &str) -> Result<NodeFacts> {
        let cached = self
            .cache()
            .nodes
            .get(node)
            .filter(|c| c.at.elapsed() < self.opts.cache_ttl)
            .map(|c| c.value.clone());
        if let Some(f) = cached {
            return Ok(f);
        }
        let f = self.owners.facts(node).await?;
        self.cache().nodes.insert(
            node.to_owned(),
            Cached {
                at: Instant::now(),
                value: f.clone(),
            },
        );
        Ok(f)
    }

    /// Forgets everything cached (tests; after a long datastore outage).
    pub fn clear_cache(&self) {
        *self.cache() = Cache::default();
    }

    pub(crate) async fn eligible(
        &self,
        node: &str,
        family: Family,
        use_: AllowedUse,
        restrict: &[String],
    ) -> Result<Vec<Eligible>> {
        let once = || async {
            let pools = self.pools().await?;
            let facts = self.facts(node).await?;
            let found = pools::eligible(&pools, &facts.labels, family, use_, restrict)?;
            if family == Family::V4 && facts.ipv6_only && !found.is_empty() {
                let names: Vec<String> = found.iter().map(|p| p.name.clone()).collect();
                return Err(IpamError::Ipv6OnlyNode {
                    node: node.to_owned(),
                    pools: names.join(", "),
                });
            }
            Ok(found)
        };
        let mut found = once().await;
        // A pool or a node label newer than the cache (a pool created a moment ago): read
        // the datastore again before saying there is none.
        if matches!(
            &found,
            Err(IpamError::UnknownPool(_) | IpamError::Ipv6OnlyNode { .. })
        ) || found.as_ref().is_ok_and(|f| f.is_empty())
        {
            {
                let mut c = self.cache();
                c.pools = None;
                c.nodes.remove(node);
            }
            found = once().await;
        }
        let found = found?;
        if found.is_empty() {
            return Err(IpamError::NoPools {
                family: family.name(),
                use_: match use_ {
                    AllowedUse::Workload => "Workload",
                    AllowedUse::Tunnel => "Tunnel (with IPIP on)",
                },
                node: node.to_owned(),
                detail: if restrict.is_empty() {
                    String::new()
                } else {
                    format!(" among the requested pools [{}]", restrict.join(", "))
                },
            });
        }
        Ok(found)
    }

    /// Assigns `ipv4` + `ipv6` addresses to `handle`: all of them, or none.
    pub async fn assign(&self, req: &AssignRequest) -> Result<Vec<IpAddr>> {
        let mut handle = HandleState::default();
        let mut got = vec![];
        for (family, want) in [(Family::V4, req.ipv4), (Family::V6, req.ipv6)] {
            if want == 0 {
                continue;
            }
            match self.assign_family(req, family, want, &mut handle).await {
                Ok(ips) => got.extend(ips),
                Err(e) => {
                    self.rollback(&req.handle, &got).await;
                    return Err(e);
                }
            }
        }
        info!(handle = %req.handle, node = %req.node, ips = ?got, "assigned");
        Ok(got)
    }

    async fn assign_family(
        &self,
        req: &AssignRequest,
        family: Family,
        want: usize,
        handle: &mut HandleState,
    ) -> Result<Vec<IpAddr>> {
        let pools = self
            .eligible(&req.node, family, req.use_, &req.pools)
            .await?;
        let cfg = self.config().await?;
        let mut got: Vec<IpAddr> = vec![];
        let step = |got: &mut Vec<IpAddr>, ips: Vec<IpAddr>| {
            got.extend(ips);
            got.len() >= want
        };

        for name in self.affine_blocks(&req.node, &pools).await? {
            let ips = self
                .allocate_from(&name, want - got.len(), req, Some(&req.node), handle)
                .await?;
            if step(&mut got, ips) {
                return Ok(got);
            }
        }
        if cfg.auto_allocate_blocks {
            // The same block handed back twice cannot serve us: stop claiming.
            let mut tried = HashSet::new();
            while let Some(name) = self.claim_block(&req.node, &pools, &cfg).await? {
                if !tried.insert(name.clone()) {
                    break;
                }
                let ips = self
                    .allocate_from(&name, want - got.len(), req, Some(&req.node), handle)
                    .await?;
                if step(&mut got, ips) {
                    return Ok(got);
                }
            }
        }
        if !cfg.strict_affinity {
            for name in self.borrowable_blocks(&req.node, &pools).await? {
                let ips = self
                    .allocate_from(&name, want - got.len(), req, None, handle)
                    .await?;
                if !ips.is_empty() {
                    debug!(node = %req.node, block = %name, n = ips.len(), "borrowed");
                }
                if step(&mut got, ips) {
                    return Ok(got);
                }
            }
        }
        self.rollback(&req.handle, &got).await;
        Err(IpamError::Exhausted {
            pools: pools::describe(&pools),
            handle: req.handle.clone(),
            node: req.node.clone(),
            wanted: want,
            family: family.name(),
        })
    }

    /// Gives back what a failed request took (best effort: if the datastore is down the
    /// addresses stay with the handle, and a release by handle frees them).
    async fn rollback(&self, handle: &str, got: &[IpAddr]) {
        if got.is_empty() {
            return;
        }
        let ips: Vec<_> = got
            .iter()
            .map(|&ip| crate::ReleaseIp {
                ip,
                handle: Some(handle.to_owned()),
                sequence: None,
                attrs: None,
            })
            .collect();
        if let Err(e) = self.release_ips(&ips).await {
            warn!(handle, error = %e, "rolling back a failed assignment; release the handle to free the rest");
        }
    }

    /// Names of the node's confirmed blocks in the eligible pools that may have room: those
    /// known to have room and those not read yet, newest first. A fresh client lists the
    /// affinities once and reads blocks one by one until one has room.
    pub(crate) async fn affine_blocks(
        &self,
        node: &str,
        pools: &[Eligible],
    ) -> Result<Vec<String>> {
        if !self.cache().affine.contains_key(node) {
            let mut affs: Vec<BlockAffinity> = self
                .store
                .all::<BlockAffinity>()
                .list()
                .await?
                .items
                .into_iter()
                .filter(|a| {
                    a.spec.node == node
                        && a.spec.state == AffinityState::Confirmed
                        && !a.spec.deleted
                })
                .collect();
            affs.sort_by(|a, b| {
                let created = |x: &BlockAffinity| x.metadata.creation_timestamp.clone();
                created(b)
                    .cmp(&created(a))
                    .then_with(|| a.spec.cidr.cmp(&b.spec.cidr))
            });
            let order = affs
                .iter()
                .filter_map(|a| a.spec.cidr.parse::<IpNetwork>().ok())
                .map(|n| (block_name(&n), n))
                .collect();
            self.cache().affine.insert(
                node.to_owned(),
                NodeBlocks {
                    order,
                    loaded: BTreeMap::new(),
                },
            );
        }
        let cache = self.cache();
        let Some(nb) = cache.affine.get(node) else {
            return Ok(vec![]);
        };
        Ok(nb
            .order
            .iter()
            .filter(|(name, net)| {
                pools.iter().any(|p| p.net.contains(net.network()))
                    && nb.loaded.get(name).is_none_or(|b| block::free(&b.spec) > 0)
            })
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// Updates a node's cached blocks, if that node's blocks have been listed: a partial
    /// entry would hide the node's other blocks.
    pub(crate) fn remember(&self, node: &str, b: IPAMBlock) {
        let mut cache = self.cache();
        let (Some(name), Some(nb)) = (b.metadata.name.clone(), cache.affine.get_mut(node)) else {
            return;
        };
        if !nb.order.iter().any(|(n, _)| *n == name) {
            if let Some(net) = block::network(&b.spec) {
                nb.order.insert(0, (name.clone(), net)); // newly claimed: the newest
            }
        }
        nb.loaded.insert(name, b);
    }

    pub(crate) fn forget(&self, node: &str, name: &str) {
        if let Some(nb) = self.cache().affine.get_mut(node) {
            nb.loaded.remove(name);
            nb.order.retain(|(n, _)| n != name);
        }
    }

    pub(crate) fn cached_block(&self, node: &str, name: &str) -> Option<IPAMBlock> {
        self.cache().affine.get(node)?.loaded.get(name).cloned()
    }

    /// Allocates up to `n` addresses in one block. `affine`: the block must still belong to
    /// that node (it is the node's own block, not a borrow).
    async fn allocate_from(
        &self,
        name: &str,
        n: usize,
        req: &AssignRequest,
        affine: Option<&str>,
        handle: &mut HandleState,
    ) -> Result<Vec<IpAddr>> {
        let blocks = self.store.all::<IPAMBlock>();
        let cached = affine.and_then(|node| self.cached_block(node, name));
        let mut block = match cached {
            Some(b) => b,
            None => match blocks.get(name).await? {
                Some(b) => b,
                None => return Ok(vec![]),
            },
        };
        if self.one_txn() {
            return self.allocate_txn(block, n, req, affine, handle).await;
        }
        let mut claimed = 0usize; // addresses counted on the handle for this block
        for _ in 0..MAX_RETRIES {
            let k = block::room(&block.spec, n, affine);
            if k != claimed {
                self.adjust_handle(
                    &req.handle,
                    &block.spec.cidr,
                    k as i64 - claimed as i64,
                    handle,
                )
                .await?;
                claimed = k;
            }
            if k == 0 {
                if let Some(node) = affine {
                    self.forget(node, name);
                }
                return Ok(vec![]);
            }
            let ips = block::allocate(&mut block.spec, k, &req.handle, &req.attrs);
            match blocks.update(&block).await {
                Ok(stored) => {
                    if let Some(node) = affine {
                        self.remember(node, stored);
                    }
                    return Ok(ips);
                }
                Err(StoreError::Conflict { .. }) => match blocks.get(name).await? {
                    Some(b) => block = b,
                    None => {
                        self.adjust_handle(
                            &req.handle,
                            &block.spec.cidr,
                            -(claimed as i64),
                            handle,
                        )
                        .await?;
                        return Ok(vec![]);
                    }
                },
                Err(StoreError::NotFound { .. }) => {
                    self.adjust_handle(&req.handle, &block.spec.cidr, -(claimed as i64), handle)
                        .await?;
                    if let Some(node) = affine {
                        self.forget(node, name);
                    }
                    return Ok(vec![]);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("allocating in block {} for {}", block.spec.cidr, req.handle),
            retries: MAX_RETRIES,
        })
    }

    /// Adds `delta` to the handle's count for `cidr`, creating the handle when needed and
    /// deleting it when it holds nothing.
    pub(crate) async fn adjust_handle(
        &self,
        id: &str,
        cidr: &str,
        delta: i64,
        st: &mut HandleState,
    ) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let api = self.store.all::<IPAMHandle>();
        for _ in 0..MAX_RETRIES {
            let Some(mut h) = st.latest.clone() else {
                if delta > 0 && !st.created {
                    let new = IPAMHandle::new(
                        id,
                        IPAMHandleSpec {
                            handle_id: id.to_owned(),
                            block: BTreeMap::from([(cidr.to_owned(), delta as u32)]),
                            deleted: false,
                        },
                    );
                    match api.create(&new).await {
                        Ok(h) => {
                            st.latest = Some(h);
                            st.created = true;
                            return Ok(());
                        }
                        Err(StoreError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                st.created = true; // it exists (or we just learned it does): read it
                match api.get(id).await? {
                    Some(h) => st.latest = Some(h),
                    None if delta < 0 => return Ok(()),
                    None => st.created = false,
                }
                continue;
            };
            let count = h.spec.block.entry(cidr.to_owned()).or_default();
            let new = (*count as i64 + delta).max(0) as u32;
            *count = new;
            if new == 0 {
                h.spec.block.remove(cidr);
            }
            let r = if h.spec.block.is_empty() {
                let rv = h.metadata.resource_version.clone();
                api.delete(id, rv.as_deref()).await.map(|()| None)
            } else {
                api.update(&h).await.map(Some)
            };
            match r {
                Ok(latest) => {
                    st.created = latest.is_some();
                    st.latest = latest;
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {
                    st.latest = None;
                    st.created = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("updating handle {id}"),
            retries: MAX_RETRIES,
        })
    }

    /// Claims a free block for `node` in the first eligible pool that has one, searching from
    /// the node's own starting point. None when no pool has a free block (or the node is at
    /// maxBlocksPerHost).
    pub(crate) async fn claim_block(
        &self,
        node: &str,
        pools: &[Eligible],
        cfg: &IPAMConfigSpec,
    ) -> Result<Option<String>> {
        let affs = self.store.all::<BlockAffinity>().list().await?.items;
        let blocks_api = self.store.all::<IPAMBlock>();
        let mine: Vec<&BlockAffinity> = affs.iter().filter(|a| a.spec.node == node).collect();

        // A pending claim of ours left by a crash: finish it if its block is there.
        for a in mine
            .iter()
            .filter(|a| a.spec.state == AffinityState::Pending)
        {
            let Ok(net) = a.spec.cidr.parse::<IpNetwork>() else {
                continue;
            };
            if !pools.iter().any(|p| p.net.contains(net.network())) {
                continue;
            }
            match blocks_api.get(&block_name(&net)).await? {
                Some(b) if block::is_affine_to(&b.spec, node) => {
                    self.confirm(a).await?;
                    let name = b.metadata.name.clone();
                    self.remember(node, b);
                    return Ok(name);
                }
                _ => self.drop_affinity(a).await?,
            }
        }
        // Confirmed blocks of ours this client has not seen (claimed by another client
        // for the same node): use those before claiming more.
        for a in mine
            .iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
        {
            let Ok(net) = a.spec.cidr.parse::<IpNetwork>() else {
                continue;
            };
            let name = block_name(&net);
            let known = self
                .cache()
                .affine
                .get(node)
                .is_some_and(|nb| nb.order.iter().any(|(n, _)| *n == name));
            if known || !pools.iter().any(|p| p.net.contains(net.network())) {
                continue;
            }
            if let Some(b) = blocks_api.get(&name).await? {
                if block::is_affine_to(&b.spec, node) {
                    let has_room = block::free(&b.spec) > 0;
                    self.remember(node, b);
                    if has_room {
                        return Ok(Some(name));
                    }
                }
            }
        }
        let held = mine
            .iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
            .count();
        if cfg.max_blocks_per_host > 0 && held >= cfg.max_blocks_per_host as usize {
            debug!(
                node,
                held,
                max = cfg.max_blocks_per_host,
                "at maxBlocksPerHost"
            );
            return Ok(None);
        }

        // Taken blocks, from the (small) affinity objects rather than the (large) blocks. A
        // block that lost its affinity but still holds addresses is not in this set; creating
        // it fails with AlreadyExists and the claim moves on.
        let existing: HashSet<String> = affs
            .iter()
            .filter_map(|a| a.spec.cidr.parse::<IpNetwork>().ok())
            .map(|n| block_name(&n))
            .collect();
        let seed = u128::from(block::stable_hash(node));
        for pool in pools {
            let count = block::block_count(&pool.net, pool.block_size);
            let start = seed % count;
            // Only `existing.len() + 1` candidates can be taken, so the walk ends quickly
            // even in a huge IPv6 pool.
            let limit = count.min(existing.len() as u128 + 1 + 64);
            for i in 0..limit {
                let Some(cidr) = block::nth_block(&pool.net, pool.block_size, (start + i) % count)
                else {
                    continue;
                };
                if existing.contains(&block_name(&cidr)) {
                    continue;
                }
                if let Some(name) = self.try_claim(node, &cidr).await? {
                    info!(node, block = %cidr, pool = %pool.name, "claimed block");
                    return Ok(Some(name));
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn affinity_name(node: &str, cidr: &IpNetwork) -> String {
        let name = format!("{node}-{}", block_name(cidr));
        if name.len() <= 253 {
            name
        } else {
            format!("{:016x}-{}", block::stable_hash(node), block_name(cidr))
        }
    }

    /// Two-phase claim: pending affinity, block with our affinity, confirmed affinity.
    /// None when another node got there first.
    pub(crate) async fn try_claim(&self, node: &str, cidr: &IpNetwork) -> Result<Option<String>> {
        if self.one_txn() {
            if let Some(claimed) = self.claim_in_one_txn(node, cidr).await? {
                return Ok(claimed);
            }
        }
        let affs = self.store.all::<BlockAffinity>();
        let pending = BlockAffinity::new(
            &Self::affinity_name(node, cidr),
            BlockAffinitySpec {
                node: node.to_owned(),
                cidr: cidr.to_string(),
                state: AffinityState::Pending,
                deleted: false,
            },
        );
        let aff = match affs.create(&pending).await {
            Ok(a) => a,
            Err(StoreError::AlreadyExists { .. }) => {
                match affs.get(&Self::affinity_name(node, cidr)).await? {
                    Some(a) if a.spec.node == node => a,
                    _ => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let name = block_name(cidr);
        let b = block::new_affine_block(cidr, node);
        let blocks = self.store.all::<IPAMBlock>();
        match blocks.create(&b).await {
            Ok(stored) => {
                self.confirm(&aff).await?;
                self.remember(node, stored);
                Ok(Some(name))
            }
            Err(StoreError::AlreadyExists { .. }) => match blocks.get(&name).await? {
                // Another client for the same node (the agent and a plugin, or two plugins)
                // made it first: the block is ours all the same. Its affinity must stay.
                Some(existing) if block::is_affine_to(&existing.spec, node) => {
                    self.confirm(&aff).await?;
                    self.remember(node, existing);
                    Ok(Some(name))
                }
                _ => {
                    debug!(node, block = %cidr, "lost the race for a block");
                    self.drop_affinity(&aff).await?;
                    Ok(None)
                }
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn confirm(&self, a: &BlockAffinity) -> Result<()> {
        let api = self.store.all::<BlockAffinity>();
        let mut a = a.clone();
        for _ in 0..MAX_RETRIES {
            a.spec.state = AffinityState::Confirmed;
            match api.update(&a).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => match api
                    .get(a.metadata.name.as_deref().unwrap_or_default())
                    .await?
                {
                    Some(fresh) => a = fresh,
                    None => return Ok(()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!(
                "confirming affinity of {} to node {}",
                a.spec.cidr, a.spec.node
            ),
            retries: MAX_RETRIES,
        })
    }

    pub(crate) async fn drop_affinity(&self, a: &BlockAffinity) -> Result<()> {
        let name = a.metadata.name.clone().unwrap_or_default();
        match self.store.all::<BlockAffinity>().delete(&name, None).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Other nodes' (and unaffine) blocks of the eligible pools that have room, most free first.
    async fn borrowable_blocks(&self, node: &str, pools: &[Eligible]) -> Result<Vec<String>> {
        let mut blocks: Vec<IPAMBlock> = self
            .store
            .all::<IPAMBlock>()
            .list()
            .await?
            .items
            .into_iter()
            .filter(|b| {
                !b.spec.deleted
                    && !block::is_affine_to(&b.spec, node)
                    && block::free(&b.spec) > 0
                    && block::network(&b.spec)
                        .is_some_and(|n| pools.iter().any(|p| p.net.contains(n.network())))
            })
            .collect();
        blocks.sort_by_key(|b| std::cmp::Reverse(block::free(&b.spec)));
        Ok(blocks.into_iter().filter_map(|b| b.metadata.name).collect())
    }

    /// Assigns one given address (a pod that asks for it).
    /// [`Self::assign_ip`] for an address a workload asked for (a pod's annotation): only
    /// from a pool that is enabled, allows `use_` and selects `node`, as the pools' own
    /// assignment would choose, read fresh from the datastore.
    pub async fn assign_requested_ip(
        &self,
        ip: IpAddr,
        handle_id: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
        use_: AllowedUse,
    ) -> Result<()> {
        let pools = self.store.all::<IPPool>().list().await?.items;
        let pool = pool_of(&pools, ip)?;
        let refuses = |reason: String| IpamError::PoolRefuses {
            ip,
            pool: pool.metadata.name.clone().unwrap_or_default(),
            reason,
        };
        if pool.spec.disabled {
            return Err(refuses("is disabled".into()));
        }
        if !pool.spec.allowed_uses.contains(&use_) {
            return Err(refuses(format!(
                "does not allow {use_:?} (allowedUses: {:?})",
                pool.spec.allowed_uses
            )));
        }
        self.cache().nodes.remove(node);
        let facts = self.facts(node).await?;
        if !pools::selects(pool, &facts.labels)? {
            return Err(refuses(format!(
                "does not select node {node} (nodeSelector: {:?})",
                pool.spec.node_selector
            )));
        }
        // The pools' own assignment refuses IPv4 to an IPv6-only node; an address asked
        // for by name is no different: nothing would route it to the node.
        if ip.is_ipv4() && facts.ipv6_only {
            return Err(IpamError::Ipv6OnlyNode {
                node: node.to_owned(),
                pools: pool.metadata.name.clone().unwrap_or_default(),
            });
        }
        self.assign_ip(ip, handle_id, node, attrs).await
    }

    /// Assigns exactly `ip` to `handle_id` on `node`, whatever its pool says (the
    /// operator's tools); workloads go through [`Self::assign_requested_ip`].
    pub async fn assign_ip(
        &self,
        ip: IpAddr,
        handle_id: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let pools = self.store.all::<IPPool>().list().await?.items;
        let pool = pool_of(&pools, ip)?;
        let cidr = block::block_of(ip, pool.spec.effective_block_size())
            .ok_or(IpamError::NotInPool { ip })?;
        let name = block_name(&cidr);
        let blocks = self.store.all::<IPAMBlock>();
        let mut st = HandleState::default();
        let mut counted = false;
        for _ in 0..MAX_RETRIES {
            let block = match blocks.get(&name).await? {
                Some(b) => b,
                None => {
                    self.try_claim(node, &cidr).await?;
                    continue;
                }
            };
            let mut next = block.clone();
            if !block::allocate_ip(&mut next.spec, ip, handle_id, attrs) {
                if counted {
                    self.adjust_handle(handle_id, &block.spec.cidr, -1, &mut st)
                        .await?;
                }
                return Err(IpamError::InUse { ip });
            }
            if !counted {
                self.adjust_handle(handle_id, &block.spec.cidr, 1, &mut st)
                    .await?;
                counted = true;
            }
            match blocks.update(&next).await {
                Ok(_) => {
                    info!(handle = handle_id, node, %ip, "assigned requested address");
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("assigning {ip} to {handle_id}"),
            retries: MAX_RETRIES,
        })
    }
}

/// The pool `ip` is in.
fn pool_of(pools: &[IPPool], ip: IpAddr) -> Result<&IPPool> {
    pools
        .iter()
        .find(|p| p.spec.network().is_some_and(|n| n.contains(ip)))
        .ok_or(IpamError::NotInPool { ip })
}
