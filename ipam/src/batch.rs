//! Many requests in one transaction, for a node agent serving pods that start or stop
//! together: their addresses taken from a block in one compare-and-swap (with any writes
//! the caller adds, e.g. the etcd-mode pod records), and their handles released together.
//! Only where the datastore has transactions (etcd); elsewhere every request is left to the
//! caller, who serves it alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{AllowedUse, IPAMBlock, IPAMHandle};
use brindle_datastore::Txn;
use ipnetwork::IpNetwork;
use tracing::{debug, info};

use crate::block::{self, block_name};
use crate::error::{IpamError, Result};
use crate::ipam::{AssignRequest, Family, HandleState, Ipam, MAX_RETRIES};
use crate::txn::{is_race, with_addresses};

/// Most requests one batch transaction carries: etcd allows 128 operations per transaction
/// (and as many conditions) by default, and a transaction holds a block per family (two for
/// dual stack) and, per request, its handle and the caller's extra writes: in etcd mode the
/// pod record and its node-index entry, or, for a record that moves node, the entry deleted
/// too (4 operations a request, 2 + 31 × 4 = 126).
pub const MAX_BATCH: usize = 31;

/// More writes for request `i` of a batch, given its addresses (see
/// [`Ipam::assign_batch_with`]).
pub type BatchExtra<'a> =
    &'a (dyn Fn(usize, &[IpAddr], &mut Txn) -> brindle_datastore::Result<()> + Sync);

/// One family's blocks for a batch: the node's own (in the order IPAM tries them), then
/// blocks it may claim.
struct Blocks {
    family: Family,
    names: std::collections::VecDeque<String>,
    eligible: Vec<crate::pools::Eligible>,
    claim: bool,
    tried: std::collections::HashSet<String>,
}

/// How many addresses of `family` a request wants.
fn wanted(r: &AssignRequest, family: Family) -> usize {
    match family {
        Family::V4 => r.ipv4,
        Family::V6 => r.ipv6,
    }
}

struct Group<'a> {
    node: &'a str,
    reqs: &'a [AssignRequest],
    extra: BatchExtra<'a>,
}

fn t_key(keys: &[Option<String>], i: usize) -> Option<String> {
    keys.get(i).cloned().flatten()
}

impl Ipam {
    /// Serves many requests together: workload requests of one node (IPv4, IPv6 or both)
    /// whose handles do not exist yet take their addresses from the node's blocks, one of
    /// each family at a time (claiming new ones when those are full), as many per
    /// transaction as the blocks have room for. Each answer is
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
        // Workload requests of one or two families, up to a block's worth of each.
        let batchable = |r: &AssignRequest| {
            r.use_ == AllowedUse::Workload && r.ipv4 + r.ipv6 > 0 && r.ipv4 <= 64 && r.ipv6 <= 64
        };
        // Groups: same node, same pools, same families (IPv4, IPv6 or both).
        type Key<'k> = (&'k str, &'k [String], bool, bool);
        let mut groups: BTreeMap<Key<'_>, Vec<usize>> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| batchable(r)) {
            let key = (r.node.as_str(), r.pools.as_slice(), r.ipv4 > 0, r.ipv6 > 0);
            groups.entry(key).or_default().push(i);
        }
        for ((node, pools, v4, v6), idx) in groups {
            let families: Vec<Family> = [(v4, Family::V4), (v6, Family::V6)]
                .into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .collect();
            for chunk in idx.chunks(MAX_BATCH) {
                let group = Group { node, reqs, extra };
                if let Err(e) = self
                    .batch_group(&group, pools, &families, chunk, &mut out)
                    .await
                {
                    debug!(node, error = %e, "batch stopped; the rest are served one by one");
                }
            }
        }
        out
    }

    /// Serves a group from one block per family at a time: the node's blocks with room
    /// first, then blocks it claims, as a lone request would.
    async fn batch_group(
        &self,
        g: &Group<'_>,
        pools: &[String],
        families: &[Family],
        idx: &[usize],
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<()> {
        let node = g.node;
        let cfg = self.config().await?;
        let mut sources = vec![];
        for &f in families {
            let eligible = self.eligible(node, f, AllowedUse::Workload, pools).await?;
            let names = self.affine_blocks(node, &eligible).await?;
            sources.push(Blocks {
                family: f,
                names: names.into(),
                eligible,
                claim: cfg.auto_allocate_blocks,
                tried: Default::default(),
            });
        }
        let mut waiting: Vec<usize> = idx.to_vec();
        let mut current: Vec<Option<IPAMBlock>> = vec![None; sources.len()];
        while !waiting.is_empty() {
            // A block with room for the smallest wait, per family.
            for (k, src) in sources.iter_mut().enumerate() {
                let need = waiting
                    .iter()
                    .map(|&i| wanted(&g.reqs[i], src.family))
                    .min()
                    .unwrap_or(1);
                if current[k]
                    .as_ref()
                    .is_some_and(|b| block::free(&b.spec) >= need)
                {
                    continue;
                }
                current[k] = self.next_block(node, src, need, &cfg).await?;
            }
            let Some(blocks) = current.iter().cloned().collect::<Option<Vec<_>>>() else {
                return Ok(()); // a family has no block left: the rest go alone
            };
            let before = waiting.len();
            let after = self.fill_blocks(g, blocks, &mut waiting, out).await?;
            if after.iter().any(Option::is_none) || waiting.len() == before {
                // A block went away or took no one: look again from the datastore next time.
                for (k, b) in after.iter().enumerate() {
                    if b.is_none() {
                        current[k] = None;
                    }
                }
                if waiting.len() == before && after.iter().all(Option::is_some) {
                    return Ok(());
                }
            }
            for (k, b) in after.into_iter().enumerate() {
                if b.is_some() {
                    current[k] = b;
                }
            }
        }
        Ok(())
    }

    /// The family's next block with room for `need` addresses: the node's own, then (if
    /// allowed) one it claims; none when neither is left.
    async fn next_block(
        &self,
        node: &str,
        src: &mut Blocks,
        need: usize,
        cfg: &brindle_api::IPAMConfigSpec,
    ) -> Result<Option<IPAMBlock>> {
        while let Some(name) = src.names.pop_front() {
            if let Some(b) = self.block_for_batch(node, &name).await? {
                if block::free(&b.spec) >= need {
                    return Ok(Some(b));
                }
            }
        }
        while src.claim {
            let Some(name) = self.claim_block(node, &src.eligible, cfg).await? else {
                return Ok(None);
            };
            if !src.tried.insert(name.clone()) {
                return Ok(None); // the same block handed back: it cannot serve us
            }
            if let Some(b) = self.block_for_batch(node, &name).await? {
                if block::free(&b.spec) >= need {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }

    async fn block_for_batch(&self, node: &str, name: &str) -> Result<Option<IPAMBlock>> {
        if let Some(b) = self.cached_block(node, name) {
            return Ok(Some(b));
        }
        Ok(self.store.all::<IPAMBlock>().get(name).await?)
    }

    /// Takes addresses for as many of `waiting` as fit in every one of `blocks` (one per
    /// family, in the group's family order), one transaction per round, until a block is
    /// full or nobody waits. Served requests leave `waiting`; a request whose handle turns
    /// out to exist leaves it unserved. Returns the blocks as last stored, `None` for one
    /// that is no longer ours.
    async fn fill_blocks(
        &self,
        g: &Group<'_>,
        mut blocks: Vec<IPAMBlock>,
        waiting: &mut Vec<usize>,
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<Vec<Option<IPAMBlock>>> {
        let (node, reqs) = (g.node, g.reqs);
        let api = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        let names: Vec<String> = blocks
            .iter()
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect();
        let family = |b: &IPAMBlock| match b.spec.cidr.parse::<IpNetwork>() {
            Ok(IpNetwork::V6(_)) => Family::V6,
            _ => Family::V4,
        };
        for _ in 0..MAX_RETRIES {
            if let Some(k) = blocks
                .iter()
                .position(|b| b.spec.deleted || !block::is_affine_to(&b.spec, node))
            {
                self.forget(node, &names[k]);
                let mut v: Vec<Option<IPAMBlock>> = blocks.into_iter().map(Some).collect();
                v[k] = None;
                return Ok(v);
            }
            let mut room: Vec<usize> = blocks.iter().map(|b| block::free(&b.spec)).collect();
            let mut take = vec![];
            for &i in waiting.iter() {
                let fits = blocks
                    .iter()
                    .zip(&room)
                    .all(|(b, r)| wanted(&reqs[i], family(b)) <= *r);
                if fits {
                    for (b, r) in blocks.iter().zip(room.iter_mut()) {
                        *r -= wanted(&reqs[i], family(b));
                    }
                    take.push(i);
                }
            }
            if take.is_empty() {
                return Ok(blocks.into_iter().map(Some).collect());
            }
            let mut next = blocks.clone();
            let mut t = self.store.txn();
            let mut got = vec![];
            // Which request each write of the transaction is for, to tell whose failed.
            let mut owner: Vec<usize> = vec![];
            let mut refused = None;
            for &i in &take {
                let r = &reqs[i];
                let mut ips = vec![];
                let mut h: Option<IPAMHandle> = None;
                for (nb, b) in next.iter_mut().zip(&blocks) {
                    let n = wanted(r, family(b));
                    ips.extend(block::allocate(&mut nb.spec, n, &r.handle, &r.attrs));
                    h = Some(match h {
                        None => with_addresses(&HandleState::default(), &r.handle, &b.spec.cidr, n),
                        Some(mut h) => {
                            *h.spec.block.entry(b.spec.cidr.clone()).or_default() += n as u32;
                            h
                        }
                    });
                }
                if let Some(h) = &h {
                    t.create(&handles, h)?;
                }
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
            let first_block = t.len();
            for nb in &next {
                t.update(&api, nb)?;
            }
            let keys: Vec<Option<String>> = (0..t.len())
                .map(|w| t.key(w).map(|k| k.as_str().to_owned()))
                .collect();
            match t.commit().await {
                Ok(done) => {
                    for (&i, ips) in take.iter().zip(got) {
                        info!(handle = %reqs[i].handle, node, ips = ?ips, batch = take.len(), "assigned");
                        out[i] = Some(ips);
                    }
                    waiting.retain(|i| !take.contains(i));
                    let mut stored = vec![];
                    for k in 0..blocks.len() {
                        let b = done.get(&api, first_block + k)?;
                        if let Some(b) = &b {
                            self.remember(node, b.clone());
                        }
                        stored.push(b);
                    }
                    if waiting.is_empty() || stored.iter().any(Option::is_none) {
                        return Ok(stored);
                    }
                    blocks = stored.into_iter().flatten().collect();
                }
                Err(e) if is_race(&e) => {
                    let key = e.key().map(|k| k.as_str().to_owned());
                    let block_at = (first_block..keys.len()).find(|&w| t_key(&keys, w) == key);
                    match block_at {
                        Some(w) => {
                            // That block changed: read it again.
                            let k = w - first_block;
                            match api.get(&names[k]).await? {
                                Some(b) => blocks[k] = b,
                                None => {
                                    self.forget(node, &names[k]);
                                    let mut v: Vec<Option<IPAMBlock>> =
                                        blocks.into_iter().map(Some).collect();
                                    v[k] = None;
                                    return Ok(v);
                                }
                            }
                        }
                        None => {
                            // One request's own writes failed (a handle that exists: a
                            // repeated ADD; a record changed meanwhile): the caller serves
                            // it alone. Unknown: read every block again.
                            if let Some(&i) = (0..owner.len())
                                .find(|&w| t_key(&keys, w) == key)
                                .and_then(|w| owner.get(w))
                            {
                                waiting.retain(|&j| j != i);
                                continue;
                            }
                            for (k, name) in names.iter().enumerate() {
                                match api.get(name).await? {
                                    Some(b) => blocks[k] = b,
                                    None => {
                                        self.forget(node, name);
                                        let mut v: Vec<Option<IPAMBlock>> =
                                            blocks.into_iter().map(Some).collect();
                                        v[k] = None;
                                        return Ok(v);
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let cidrs: Vec<&str> = blocks.iter().map(|b| b.spec.cidr.as_str()).collect();
        Err(IpamError::TooManyRetries {
            what: format!("batch allocation in block(s) {}", cidrs.join(", ")),
            retries: MAX_RETRIES,
        })
    }

    /// Releases many handles together: those whose addresses are in the same blocks (one,
    /// or one per family for a dual-stack handle) are freed with one transaction per set of
    /// blocks (the blocks, and each handle deleted on the condition that it has not changed).
    /// Each answer is `Some(freed)` when done here (empty for a handle that does not exist),
    /// `None` when the caller must release that handle alone (it changed meanwhile, an
    /// error, no transactions); nothing was written for a `None`.
    pub async fn release_batch(&self, ids: &[String]) -> Vec<Option<Vec<IpAddr>>> {
        let mut out = vec![None; ids.len()];
        if !self.one_txn() {
            return out;
        }
        let handles = self.store.all::<IPAMHandle>();
        let read = futures::future::join_all(ids.iter().map(|id| handles.get(id))).await;
        let mut groups: BTreeMap<Vec<String>, Vec<(usize, IPAMHandle)>> = BTreeMap::new();
        for (i, h) in read.into_iter().enumerate() {
            match h {
                Ok(None) => out[i] = Some(vec![]),
                // The block map's keys, sorted: the same blocks, the same group.
                Ok(Some(h)) if (1..=2).contains(&h.spec.block.len()) => {
                    let cidrs: Vec<String> = h.spec.block.keys().cloned().collect();
                    groups.entry(cidrs).or_default().push((i, h));
                }
                _ => {}
            }
        }
        for (cidrs, group) in groups {
            if let Err(e) = self.release_in_blocks(&cidrs, group, &mut out).await {
                debug!(blocks = ?cidrs, error = %e, "batch release stopped; the rest are released one by one");
            }
        }
        out
    }

    async fn release_in_blocks(
        &self,
        cidrs: &[String],
        mut group: Vec<(usize, IPAMHandle)>,
        out: &mut [Option<Vec<IpAddr>>],
    ) -> Result<()> {
        let mut names = vec![];
        for c in cidrs {
            let Ok(net) = c.parse::<IpNetwork>() else {
                return Ok(());
            };
            names.push(block_name(&net));
        }
        let blocks = self.store.all::<IPAMBlock>();
        let handles = self.store.all::<IPAMHandle>();
        for _ in 0..MAX_RETRIES {
            if group.is_empty() {
                return Ok(());
            }
            let mut next = vec![];
            for name in &names {
                next.push(blocks.get(name).await?);
            }
            let mut t = self.store.txn();
            let mut freed = vec![];
            let mut changed = vec![false; next.len()];
            for (_, h) in &group {
                let id = h.spec.handle_id.as_str();
                t.delete(&handles, id, h.metadata.resource_version.as_deref());
                let mut ips = vec![];
                for (k, b) in next.iter_mut().enumerate() {
                    if let Some(b) = b {
                        let got = block::release_handle(&mut b.spec, id);
                        changed[k] |= !got.is_empty();
                        ips.extend(got);
                    }
                }
                freed.push(ips);
            }
            // Only the blocks that gave something back are written.
            let mut written = vec![];
            for (b, _) in next.iter().zip(&changed).filter(|(_, c)| **c) {
                if let Some(b) = b {
                    written.push(t.len());
                    t.update(&blocks, b)?;
                }
            }
            let keys: Vec<Option<String>> = (0..t.len())
                .map(|w| t.key(w).map(|k| k.as_str().to_owned()))
                .collect();
            match t.commit().await {
                Ok(done) => {
                    for w in written {
                        if let Some(b) = done.get(&blocks, w)? {
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
                    // released alone by the caller; a block changing just means again.
                    if let Some(w) = (0..group.len()).find(|&w| t_key(&keys, w) == key) {
                        group.remove(w);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("batch release in block(s) {}", cidrs.join(", ")),
            retries: MAX_RETRIES,
        })
    }
}
