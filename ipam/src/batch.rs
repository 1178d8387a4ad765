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

/// Most requests one batch transaction carries (etcd allows 128 operations per transaction
/// by default: one block plus one handle per request).
pub const MAX_BATCH: usize = 64;

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

impl Ipam {
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
        for _ in 0..MAX_RETRIES {
            if block.spec.deleted || !block::is_affine_to(&block.spec, node) {
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
            let mut next = blocks.get(&name).await?;
            let mut t = self.store.txn();
            let mut freed = vec![];
            for (_, h) in &group {
                let id = h.spec.handle_id.as_str();
                t.delete(&handles, id, h.metadata.resource_version.as_deref());
                freed.push(match &mut next {
                    Some(n) => block::release_handle(&mut n.spec, id),
                    None => vec![],
                });
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
}
