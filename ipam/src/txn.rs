//! One write per allocation, where the datastore has multi-object transactions (etcd): the
//! block and the handles of the addresses taken from it are written in one transaction, so
//! an allocation is one round trip and no crash can leave one without the other. Several
//! requests can share that transaction ([`Ipam::assign_batch`]): a node agent serving many
//! pods at once takes all their addresses from a block in one compare-and-swap.
//!
//! On the Kubernetes datastore (no transactions) the two-write path in `ipam.rs` is used:
//! handle first, then block.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{
    AffinityState, AllowedUse, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMHandle,
    IPAMHandleSpec,
};
use brindle_datastore::{ResourceType, StoreError, Txn};
use ipnetwork::IpNetwork;
use tracing::{debug, info};

use crate::block::{self, block_name};
use crate::error::{IpamError, Result};
use crate::ipam::{AssignRequest, Family, HandleState, Ipam, MAX_RETRIES};

/// Most requests one batch transaction carries (etcd allows 128 operations per transaction
/// by default: one block plus one handle per request).
pub const MAX_BATCH: usize = 64;

fn handle_key(id: &str) -> String {
    ResourceType::of::<IPAMHandle>()
        .key(None, Some(id))
        .as_str()
        .to_owned()
}

/// More writes for request `i` of a batch, given its addresses (see
/// [`Ipam::assign_batch_with`]).
pub type BatchExtra<'a> =
    &'a (dyn Fn(usize, &[IpAddr], &mut Txn) -> brindle_datastore::Result<()> + Sync);

struct Group<'a> {
    node: &'a str,
    reqs: &'a [AssignRequest],
    extra: BatchExtra<'a>,
}

fn t_key(keys: &[Option<String>], i: usize) -> Option<String> {
    keys.get(i).cloned().flatten()
}

fn is_race(e: &StoreError) -> bool {
    e.is_conflict() || e.is_not_found() || e.is_already_exists()
}

/// The handle after adding `n` addresses of `cidr` to what we know of it.
fn with_addresses(st: &HandleState, id: &str, cidr: &str, n: usize) -> IPAMHandle {
    let mut h = st.latest.clone().unwrap_or_else(|| {
        IPAMHandle::new(
            id,
            IPAMHandleSpec {
                handle_id: id.to_owned(),
                block: BTreeMap::new(),
                deleted: false,
            },
        )
    });
    *h.spec.block.entry(cidr.to_owned()).or_default() += n as u32;
    h
}

impl Ipam {
    /// Whether allocations and releases go in one transaction.
    pub(crate) fn one_txn(&self) -> bool {
        self.opts.transactions && self.store.transactions()
    }

    /// Reads the handle into `st` when all we know is that it exists.
    async fn load_handle(&self, id: &str, st: &mut HandleState) -> Result<()> {
        if st.latest.is_none() && st.created {
            st.latest = self.store.all::<IPAMHandle>().get(id).await?;
            st.created = st.latest.is_some();
        }
        Ok(())
    }

    /// [`Ipam::allocate_from`] in one transaction: up to `n` addresses of `block` and the
    /// handle's count for them, written together.
    pub(crate) async fn allocate_txn(
        &self,
        mut block: IPAMBlock,
        n: usize,
        req: &AssignRequest,
        affine: Option<&str>,
        st: &mut HandleState,
    ) -> Result<Vec<IpAddr>> {
        let blocks = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        let name = block.metadata.name.clone().unwrap_or_default();
        for _ in 0..MAX_RETRIES {
            let owner_ok = affine
                .is_none_or(|node| block.spec.affinity.as_deref() == Some(&format!("host:{node}")));
            let k = if block.spec.deleted || !owner_ok {
                0
            } else {
                n.min(block::free(&block.spec))
            };
            if k == 0 {
                if let Some(node) = affine {
                    self.forget(node, &name);
                }
                return Ok(vec![]);
            }
            self.load_handle(&req.handle, st).await?;
            let mut next = block.clone();
            let ips = block::allocate(&mut next.spec, k, &req.handle, &req.attrs);
            let h = with_addresses(st, &req.handle, &block.spec.cidr, k);
            let mut t = self.store.txn();
            t.update(&blocks, &next)?;
            if st.latest.is_some() {
                t.update(&handles, &h)?;
            } else {
                t.create(&handles, &h)?;
            }
            match t.commit().await {
                Ok(done) => {
                    st.latest = done.get(&handles, 1)?;
                    st.created = true;
                    if let (Some(node), Some(b)) = (affine, done.get(&blocks, 0)?) {
                        self.remember(node, b);
                    }
                    return Ok(ips);
                }
                Err(e) if is_race(&e) => {
                    if e.key()
                        .is_some_and(|k| k.as_str() == handle_key(&req.handle))
                    {
                        st.latest = None;
                        st.created = true;
                        continue;
                    }
                    match blocks.get(&name).await? {
                        Some(b) => block = b,
                        None => {
                            if let Some(node) = affine {
                                self.forget(node, &name);
                            }
                            return Ok(vec![]);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("allocating in block {} for {}", block.spec.cidr, req.handle),
            retries: MAX_RETRIES,
        })
    }

    /// Serves many requests together: IPv4-only workload requests for one node whose handles
    /// do not exist yet take their addresses from the node's blocks (claiming new ones when
    /// those are full), as many per transaction as a block has room for. Each answer is
    /// `Some(addresses)` when served here, `None` when the caller must serve that request
    /// alone (a handle that already exists, a borrow, an error, or a datastore without
    /// transactions); a request left `None` has had nothing written for it.
    pub async fn assign_batch(&self, reqs: &[AssignRequest]) -> Vec<Option<Vec<IpAddr>>> {
        self.assign_batch_with(reqs, &|_, _, _| Ok(())).await
    }

    /// [`Ipam::assign_batch`], with more writes for request `i` (given its addresses) in the
    /// same transaction as its addresses, e.g. the pod record in etcd mode. A request whose
    /// extra writes cannot be made or do not land is left to the caller, with nothing written.
    pub async fn assign_batch_with(
        &self,
        reqs: &[AssignRequest],
        extra: BatchExtra<'_>,
    ) -> Vec<Option<Vec<IpAddr>>> {
        let mut out = vec![None; reqs.len()];
        if !self.one_txn() {
            return out;
        }
        let batchable = |r: &AssignRequest| {
            r.ipv6 == 0 && r.ipv4 > 0 && r.ipv4 <= 64 && r.use_ == AllowedUse::Workload
        };
        // Groups: same node and same pools.
        let mut groups: BTreeMap<(&str, &[String]), Vec<usize>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| batchable(r)) {
            groups
                .entry((r.node.as_str(), r.pools.as_slice()))
                .or_default()
                .push(i);
        }
        for ((node, pools), idx) in groups {
            for chunk in idx.chunks(MAX_BATCH) {
                let group = Group { node, reqs, extra };
                if let Err(e) = self.batch_group(&group, pools, chunk, &mut out).await {
                    debug!(node, error = %e, "batch stopped; the rest are served one by one");
                }
            }
        }
        out
    }

    async fn batch_group(
        &self,
        g: &Group<'_>,
        pools: &[String],
        idx: &[usize],
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<()> {
        let node = g.node;
        let eligible = self
            .eligible(node, Family::V4, AllowedUse::Workload, pools)
            .await?;
        let mut waiting: Vec<usize> = idx.to_vec();
        for name in self.affine_blocks(node, &eligible).await? {
            if waiting.is_empty() {
                break;
            }
            let Some(block) = self.block_for_batch(node, &name).await? else {
                continue;
            };
            self.fill_block(g, block, &mut waiting, out).await?;
        }
        // The node's blocks are full: claim new ones for the rest of the batch, as a lone
        // request would, rather than leaving each to claim and write on its own.
        let cfg = self.config().await?;
        let mut tried = std::collections::HashSet::new();
        while !waiting.is_empty() && cfg.auto_allocate_blocks {
            let Some(name) = self.claim_block(node, &eligible, &cfg).await? else {
                break;
            };
            if !tried.insert(name.clone()) {
                break;
            }
            let Some(block) = self.block_for_batch(node, &name).await? else {
                continue;
            };
            self.fill_block(g, block, &mut waiting, out).await?;
        }
        Ok(())
    }

    async fn block_for_batch(&self, node: &str, name: &str) -> Result<Option<IPAMBlock>> {
        if let Some(b) = self.cached_block(node, name) {
            return Ok(Some(b));
        }
        Ok(self.store.all::<IPAMBlock>().get(name).await?)
    }

    /// Takes addresses for as many of `waiting` as fit in `block`, one transaction per round,
    /// until the block is full or nobody waits. Served requests leave `waiting`; a request
    /// whose handle turns out to exist leaves it unserved.
    async fn fill_block(
        &self,
        g: &Group<'_>,
        mut block: IPAMBlock,
        waiting: &mut Vec<usize>,
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<()> {
        let (node, reqs) = (g.node, g.reqs);
        let blocks = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        let name = block.metadata.name.clone().unwrap_or_default();
        let mine = format!("host:{node}");
        for _ in 0..MAX_RETRIES {
            if block.spec.deleted || block.spec.affinity.as_deref() != Some(mine.as_str()) {
                self.forget(node, &name);
                return Ok(());
            }
            let mut room = block::free(&block.spec);
            let mut take = vec![];
            for &i in waiting.iter() {
                if reqs[i].ipv4 <= room {
                    room -= reqs[i].ipv4;
                    take.push(i);
                }
            }
            if take.is_empty() {
                return Ok(());
            }
            let mut next = block.clone();
            let mut t = self.store.txn();
            let mut got = vec![];
            // Which request each write of the transaction is for, to tell whose failed.
            let mut owner: Vec<usize> = vec![];
            let mut refused = None;
            for &i in &take {
                let r = &reqs[i];
                let ips = block::allocate(&mut next.spec, r.ipv4, &r.handle, &r.attrs);
                let h =
                    with_addresses(&HandleState::default(), &r.handle, &block.spec.cidr, r.ipv4);
                t.create(&handles, &h)?;
                if let Err(e) = (g.extra)(i, &ips, &mut t) {
                    debug!(handle = %r.handle, error = %e, "its other writes cannot join the batch");
                    refused = Some(i);
                    break;
                }
                owner.resize(t.len(), i);
                got.push(ips);
            }
            if let Some(i) = refused {
                waiting.retain(|&j| j != i);
                continue;
            }
            t.update(&blocks, &next)?;
            let keys: Vec<Option<String>> = (0..t.len())
                .map(|w| t.key(w).map(|k| k.as_str().to_owned()))
                .collect();
            let block_key = t_key(&keys, keys.len() - 1);
            match t.commit().await {
                Ok(done) => {
                    for (&i, ips) in take.iter().zip(got) {
                        info!(handle = %reqs[i].handle, node, ips = ?ips, batch = take.len(), "assigned");
                        out[i] = Some(ips);
                    }
                    waiting.retain(|i| !take.contains(i));
                    let Some(stored) = done.get(&blocks, keys.len() - 1)? else {
                        return Ok(());
                    };
                    self.remember(node, stored.clone());
                    if waiting.is_empty() || block::free(&stored.spec) == 0 {
                        return Ok(());
                    }
                    block = stored;
                }
                Err(e) if is_race(&e) => {
                    let key = e.key().map(|k| k.as_str().to_owned());
                    if key != block_key {
                        // One request's own writes failed (a handle that exists: a repeated
                        // ADD; a record changed meanwhile): the caller serves it alone.
                        if let Some(&i) = (0..owner.len())
                            .find(|&w| t_key(&keys, w) == key)
                            .and_then(|w| owner.get(w))
                        {
                            waiting.retain(|&j| j != i);
                            continue;
                        }
                    }
                    match blocks.get(&name).await? {
                        Some(b) => block = b,
                        None => {
                            self.forget(node, &name);
                            return Ok(());
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("batch allocation in block {}", block.spec.cidr),
            retries: MAX_RETRIES,
        })
    }

    /// A block claim in one transaction: the affinity, already confirmed, and the block.
    /// `Some(None)`: another node has the block; `None`: an affinity of ours for it exists
    /// already (a claim a crash left pending, or one a sibling client is making), which the
    /// two-phase claim knows how to finish.
    pub(crate) async fn claim_in_one_txn(
        &self,
        node: &str,
        cidr: &IpNetwork,
    ) -> Result<Option<Option<String>>> {
        let affs = self.store.all::<BlockAffinity>();
        let blocks = self.store.all::<IPAMBlock>();
        let aff = BlockAffinity::new(
            &Self::affinity_name(node, cidr),
            BlockAffinitySpec {
                node: node.to_owned(),
                cidr: cidr.to_string(),
                state: AffinityState::Confirmed,
                deleted: false,
            },
        );
        let name = block_name(cidr);
        let mut b = IPAMBlock::new(&name, block::new_block(cidr, Some(format!("host:{node}"))));
        b.metadata.name = Some(name.clone());
        let mut t = self.store.txn();
        t.create(&affs, &aff)?;
        t.create(&blocks, &b)?;
        let aff_key = t.key(0).map(|k| k.as_str().to_owned());
        match t.commit().await {
            Ok(done) => {
                if let Some(stored) = done.get(&blocks, 1)? {
                    self.remember(node, stored);
                }
                Ok(Some(Some(name)))
            }
            Err(StoreError::AlreadyExists { key, .. })
                if Some(key.as_str()) == aff_key.as_deref() =>
            {
                Ok(None)
            }
            Err(StoreError::AlreadyExists { .. }) => match blocks.get(&name).await? {
                // A sibling client of this node made it between our read and our write.
                Some(existing)
                    if existing.spec.affinity.as_deref() == Some(&format!("host:{node}")) =>
                {
                    Ok(None)
                }
                _ => {
                    debug!(node, block = %cidr, "lost the race for a block");
                    Ok(Some(None))
                }
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Releases many handles together: those whose addresses are all in one block are freed
    /// with one transaction per block (the block, and each handle deleted on the condition
    /// that it has not changed). Each answer is `Some(freed)` when done here (empty for a
    /// handle that does not exist), `None` when the caller must release that handle alone
    /// (it spans blocks, it changed meanwhile, an error, no transactions); nothing was
    /// written for a `None`.
    pub async fn release_batch(&self, ids: &[String]) -> Vec<Option<Vec<IpAddr>>> {
        let mut out = vec![None; ids.len()];
        if !self.one_txn() {
            return out;
        }
        let handles = self.store.all::<IPAMHandle>();
        let read = futures::future::join_all(ids.iter().map(|id| handles.get(id))).await;
        let mut groups: BTreeMap<String, Vec<(usize, IPAMHandle)>> = BTreeMap::new();
        for (i, h) in read.into_iter().enumerate() {
            match h {
                Ok(None) => out[i] = Some(vec![]),
                Ok(Some(h)) if h.spec.block.len() == 1 => {
                    if let Some(cidr) = h.spec.block.keys().next().cloned() {
                        groups.entry(cidr).or_default().push((i, h));
                    }
                }
                _ => {}
            }
        }
        for (cidr, group) in groups {
            if let Err(e) = self.release_in_block(&cidr, group, &mut out).await {
                debug!(block = %cidr, error = %e, "batch release stopped; the rest are released one by one");
            }
        }
        out
    }

    async fn release_in_block(
        &self,
        cidr: &str,
        mut group: Vec<(usize, IPAMHandle)>,
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<()> {
        let Ok(net) = cidr.parse::<IpNetwork>() else {
            return Ok(());
        };
        let blocks = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        let name = block_name(&net);
        for _ in 0..MAX_RETRIES {
            if group.is_empty() {
                return Ok(());
            }
            let block = blocks.get(&name).await?;
            let mut t = self.store.txn();
            let mut freed = vec![];
            let mut next = block.clone();
            for (_, h) in &group {
                let id = h.spec.handle_id.as_str();
                t.delete(&handles, id, h.metadata.resource_version.as_deref());
                let ips = match (&block, &mut next) {
                    (Some(b), Some(n)) => {
                        let ords = block::ordinals_of(&b.spec, id);
                        block::release(&mut n.spec, &ords);
                        ords.iter()
                            .filter_map(|&o| block::address(&b.spec, o))
                            .collect()
                    }
                    _ => vec![],
                };
                freed.push(ips);
            }
            let changed = freed.iter().any(|f| !f.is_empty());
            if let (Some(n), true) = (&next, changed) {
                t.update(&blocks, n)?;
            }
            let keys: Vec<Option<String>> = (0..t.len())
                .map(|w| t.key(w).map(|k| k.as_str().to_owned()))
                .collect();
            match t.commit().await {
                Ok(done) => {
                    if changed {
                        if let Some(b) = done.get(&blocks, group.len())? {
                            self.note_block(&b);
                        }
                    }
                    for ((i, h), ips) in group.iter().zip(freed) {
                        if !ips.is_empty() {
                            info!(handle = %h.spec.handle_id, ips = ?ips, batch = group.len(), "released");
                        }
                        out[*i] = Some(ips);
                    }
                    return Ok(());
                }
                Err(e) if is_race(&e) => {
                    let key = e.key().map(|k| k.as_str().to_owned());
                    // A handle that changed (an ADD of the same attachment meanwhile) is
                    // released alone by the caller; the block changing just means again.
                    if let Some(w) = (0..group.len()).find(|&w| t_key(&keys, w) == key) {
                        group.remove(w);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("batch release in block {cidr}"),
            retries: MAX_RETRIES,
        })
    }

    /// [`Ipam::release_handle`] in one transaction per block: the block's addresses of the
    /// handle and the handle's entry for the block go together; the last one deletes the
    /// handle.
    pub(crate) async fn release_handle_txn(&self, id: &str) -> Result<Vec<IpAddr>> {
        let blocks = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        let mut freed = vec![];
        for _ in 0..MAX_RETRIES {
            let Some(h) = handles.get(id).await? else {
                if !freed.is_empty() {
                    info!(handle = id, ips = ?freed, "released");
                }
                return Ok(freed);
            };
            let Some(cidr) = h.spec.block.keys().next().cloned() else {
                match handles
                    .delete(id, h.metadata.resource_version.as_deref())
                    .await
                {
                    Ok(()) | Err(StoreError::NotFound { .. }) => continue,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let mut rest = h.clone();
            rest.spec.block.remove(&cidr);
            let mut t = self.store.txn();
            if rest.spec.block.is_empty() {
                t.delete(&handles, id, h.metadata.resource_version.as_deref());
            } else {
                t.update(&handles, &rest)?;
            }
            let mut ips = vec![];
            let block = match cidr.parse::<IpNetwork>() {
                Ok(net) => blocks.get(&block_name(&net)).await?,
                Err(_) => None,
            };
            if let Some(b) = &block {
                let ords = block::ordinals_of(&b.spec, id);
                if !ords.is_empty() {
                    ips = ords
                        .iter()
                        .filter_map(|&o| block::address(&b.spec, o))
                        .collect();
                    let mut next = b.clone();
                    block::release(&mut next.spec, &ords);
                    t.update(&blocks, &next)?;
                }
            }
            match t.commit().await {
                Ok(done) => {
                    if let Some(b) = done.get(&blocks, 1)? {
                        self.note_block(&b);
                    }
                    freed.extend(ips);
                }
                Err(e) if is_race(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("releasing handle {id}"),
            retries: MAX_RETRIES,
        })
    }
}
