//! The collector: releases what nobody owns any more, and repairs what a crash left behind.
//!
//! Nothing is released on first sight. An allocation whose pod or node is missing becomes a
//! suspect; only when it has stayed a suspect for the whole grace period, and a fresh read of
//! the owner (not the caller's possibly stale snapshot) confirms it is gone, is it released,
//! by address with its handle and sequence number, so a newer allocation of the same address
//! is never touched. Handle counts that disagree with the blocks, and affinities without a
//! block, are repaired under the same grace period (a live allocator may be between two
//! writes). Blocks and affinities of deleted nodes are freed at once, after a fresh read
//! confirms the node is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle_api::{BlockAffinity, IPAMBlock, IPAMHandle, IPAMHandleSpec};
use brindle_datastore::StoreError;
use ipnetwork::IpNetwork;
use serde::Serialize;
use tracing::{info, warn};

use crate::block::{self, block_name};
use crate::check::{analyse, AllocationRef, Owner};
use crate::error::Result;
use crate::{Ipam, ReleaseIp, ReleaseOutcome, MAX_RETRIES};

/// Calico's default: how long an allocation must look orphaned before it is released.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(15 * 60);

/// Which owners exist, as the caller's cache (or a fresh list) sees them.
#[derive(Debug, Clone, Default)]
pub struct OwnerSnapshot {
    pub nodes: HashSet<String>,
    /// (namespace, name)
    pub pods: HashSet<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub suspects: usize,
    pub released: Vec<IpAddr>,
    /// Suspects whose owner turned out to exist on the fresh re-check.
    pub kept_live: usize,
    pub handles_repaired: Vec<String>,
    pub blocks_freed: Vec<String>,
    pub affinities_freed: Vec<String>,
}

pub struct Collector {
    grace: Duration,
    leaks: HashMap<(String, u32, u64), Instant>,
    handles: HashMap<(String, String), (Instant, u32, u32)>,
    orphan_affinities: HashMap<String, Instant>,
}

impl Collector {
    pub fn new(grace: Duration) -> Self {
        Collector {
            grace,
            leaks: HashMap::new(),
            handles: HashMap::new(),
            orphan_affinities: HashMap::new(),
        }
    }

    /// One pass over all IPAM data. `dirty` limits leak and node handling to those nodes
    /// (an incremental pass); None is a full pass.
    pub async fn pass(
        &mut self,
        ipam: &Ipam,
        owners: &OwnerSnapshot,
        dirty: Option<&HashSet<String>>,
        now: Instant,
    ) -> Result<PassReport> {
        let snap = ipam.snapshot().await?;
        let report = analyse(&snap, owners);
        let mut out = PassReport::default();
        let in_scope =
            |node: Option<&str>| dirty.is_none_or(|d| node.is_some_and(|n| d.contains(n)));

        // 1. Leaked allocations.
        let leaked: Vec<&AllocationRef> = report
            .leaked
            .iter()
            .filter(|l| in_scope(alloc_node(l, &snap.blocks).as_deref()))
            .collect();
        let current: HashSet<_> = leaked.iter().map(|l| leak_key(l)).collect();
        if dirty.is_none() {
            self.leaks.retain(|k, _| current.contains(k));
        }
        out.suspects = leaked.len();
        for l in leaked {
            let first = *self.leaks.entry(leak_key(l)).or_insert(now);
            if now.duration_since(first) < self.grace {
                continue;
            }
            if owner_exists(ipam, &l.owner()).await? {
                out.kept_live += 1;
                self.leaks.remove(&leak_key(l));
                continue;
            }
            let r = ReleaseIp {
                ip: l.ip,
                handle: l.handle.clone(),
                sequence: Some(l.sequence),
                attrs: None,
            };
            if ipam.release_ips(&[r]).await?.first() == Some(&ReleaseOutcome::Released) {
                info!(ip = %l.ip, handle = ?l.handle, owner = ?l.owner(), "released leaked address");
                out.released.push(l.ip);
            }
            self.leaks.remove(&leak_key(l));
        }

        // 2. Handles that disagree with the blocks: repaired once the same disagreement has
        //    lasted the grace period.
        let mismatched: HashSet<_> = report
            .handle_mismatches
            .iter()
            .map(|m| (m.handle.clone(), m.block.clone()))
            .collect();
        self.handles.retain(|k, _| mismatched.contains(k));
        let mut to_repair = std::collections::BTreeSet::new();
        for m in &report.handle_mismatches {
            let key = (m.handle.clone(), m.block.clone());
            let e = self
                .handles
                .entry(key)
                .or_insert((now, m.handle_says, m.block_holds));
            if (e.1, e.2) != (m.handle_says, m.block_holds) {
                *e = (now, m.handle_says, m.block_holds); // it moved: someone is working on it
            } else if now.duration_since(e.0) >= self.grace {
                to_repair.insert(m.handle.clone());
            }
        }
        for h in to_repair {
            repair_handle(ipam, &h).await?;
            self.handles.retain(|k, _| k.0 != h);
            out.handles_repaired.push(h);
        }

        // 3. Blocks and affinities of deleted nodes.
        for a in &snap.affinities {
            let node = a.spec.node.as_str();
            if owners.nodes.contains(node) || !in_scope(Some(node)) {
                continue;
            }
            if ipam.owners.node_exists(node).await? {
                continue;
            }
            let freed = ipam.release_affinity(a).await?;
            info!(node, block = %a.spec.cidr, block_deleted = freed, "freed affinity of deleted node");
            out.affinities_freed.push(a.spec.cidr.clone());
            if freed {
                out.blocks_freed.push(a.spec.cidr.clone());
            }
        }

        // 3b. Empty blocks of pools that no longer select their node (or are gone).
        let pools = ipam.store.all::<brindle_api::IPPool>().list().await?.items;
        let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for a in &snap.affinities {
            let node = a.spec.node.as_str();
            if !owners.nodes.contains(node) || !in_scope(Some(node)) {
                continue;
            }
            let Some(b) = snap.blocks.iter().find(|b| b.spec.cidr == a.spec.cidr) else {
                continue;
            };
            if !block::is_empty(&b.spec) {
                continue;
            }
            if !labels.contains_key(node) {
                match ipam.owners.labels(node).await {
                    Ok(l) => labels.insert(node.to_owned(), l),
                    Err(_) => continue, // the node went away meanwhile: step 3 next time
                };
            }
            let Ok(net) = a.spec.cidr.parse::<IpNetwork>() else {
                continue;
            };
            // A selector that does not parse keeps the block: never free on a doubt.
            let selected =
                crate::pools::block_selected(&pools, &net, &labels[node]).unwrap_or(true);
            if !selected && ipam.release_affinity(a).await? {
                info!(node, block = %a.spec.cidr, "freed empty block of a pool that no longer selects the node");
                out.affinities_freed.push(a.spec.cidr.clone());
                out.blocks_freed.push(a.spec.cidr.clone());
            }
        }

        // 4. Empty blocks nobody holds.
        for b in &snap.blocks {
            let unaffine = b.spec.affinity.is_none();
            if unaffine && block::is_empty(&b.spec) && delete_if_unchanged(ipam, b).await? {
                out.blocks_freed.push(b.spec.cidr.clone());
            }
        }

        // 5. Affinities with no block (a claim that died half way): after the grace period.
        let orphans: HashSet<_> = report.affinities_without_block.iter().cloned().collect();
        self.orphan_affinities.retain(|k, _| orphans.contains(k));
        for name in &report.affinities_without_block {
            let first = *self.orphan_affinities.entry(name.clone()).or_insert(now);
            if now.duration_since(first) < self.grace {
                continue;
            }
            if let Some(a) = snap
                .affinities
                .iter()
                .find(|a| a.metadata.name.as_deref() == Some(name))
            {
                ipam.release_affinity(a).await?;
                out.affinities_freed.push(a.spec.cidr.clone());
            }
            self.orphan_affinities.remove(name);
        }
        Ok(out)
    }
}

fn leak_key(l: &AllocationRef) -> (String, u32, u64) {
    (l.block.clone(), l.ordinal, l.sequence)
}

/// The node an allocation is about: its `node` attribute, else its block's affinity.
fn alloc_node(l: &AllocationRef, blocks: &[IPAMBlock]) -> Option<String> {
    if let Some(n) = l.attrs.get(block::attr::NODE) {
        return Some(n.clone());
    }
    blocks
        .iter()
        .find(|b| b.metadata.name.as_deref() == Some(l.block.as_str()))
        .and_then(|b| {
            b.spec
                .affinity
                .as_deref()?
                .strip_prefix("host:")
                .map(str::to_owned)
        })
}

async fn owner_exists(ipam: &Ipam, owner: &Owner) -> Result<bool> {
    match owner {
        Owner::Pod { namespace, name } => ipam.owners.pod_exists(namespace, name).await,
        Owner::Node(n) | Owner::Container { node: n } => ipam.owners.node_exists(n).await,
        Owner::Unknown => Ok(true),
    }
}

async fn delete_if_unchanged(ipam: &Ipam, b: &IPAMBlock) -> Result<bool> {
    let name = b.metadata.name.clone().unwrap_or_default();
    match ipam
        .store
        .all::<IPAMBlock>()
        .delete(&name, b.metadata.resource_version.as_deref())
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites a handle's counts from what the blocks actually hold (deleting it if nothing).
async fn repair_handle(ipam: &Ipam, handle: &str) -> Result<()> {
    let api = ipam.store.all::<IPAMHandle>();
    for _ in 0..MAX_RETRIES {
        let blocks = ipam.store.all::<IPAMBlock>().list().await?.items;
        let actual: BTreeMap<String, u32> = blocks
            .iter()
            .filter_map(|b| {
                let n = block::ordinals_of(&b.spec, handle).len() as u32;
                (n > 0).then(|| (b.spec.cidr.clone(), n))
            })
            .collect();
        let current = api.get(handle).await?;
        let r = match (current, actual.is_empty()) {
            (None, true) => return Ok(()),
            (Some(h), true) => {
                api.delete(handle, h.metadata.resource_version.as_deref())
                    .await
            }
            (Some(mut h), false) => {
                h.spec.block = actual.clone();
                api.update(&h).await.map(|_| ())
            }
            (None, false) => {
                let h = IPAMHandle::new(
                    handle,
                    IPAMHandleSpec {
                        handle_id: handle.to_owned(),
                        block: actual.clone(),
                        deleted: false,
                    },
                );
                api.create(&h).await.map(|_| ())
            }
        };
        match r {
            Ok(()) => {
                info!(handle, counts = ?actual, "repaired handle from its blocks");
                return Ok(());
            }
            Err(StoreError::Conflict { .. })
            | Err(StoreError::NotFound { .. })
            | Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    warn!(handle, "gave up repairing handle after {MAX_RETRIES} tries");
    Ok(())
}

impl Ipam {
    /// Gives up a node's claim on a block: the block is deleted if empty, else left without
    /// affinity (its addresses stay until released; an empty unaffine block is deleted by the
    /// collector). Returns true when the block was deleted.
    pub async fn release_affinity(&self, a: &BlockAffinity) -> Result<bool> {
        let node = a.spec.node.clone();
        let Ok(net) = a.spec.cidr.parse::<IpNetwork>() else {
            self.drop_affinity(a).await?;
            return Ok(false);
        };
        let name = block_name(&net);
        self.forget(&node, &name);
        let blocks = self.store.all::<IPAMBlock>();
        let mut deleted = false;
        for _ in 0..MAX_RETRIES {
            let Some(b) = blocks.get(&name).await? else {
                break;
            };
            if !block::is_affine_to(&b.spec, &node) {
                break;
            }
            let r = if block::is_empty(&b.spec) {
                blocks
                    .delete(&name, b.metadata.resource_version.as_deref())
                    .await
            } else {
                let mut next = b.clone();
                next.spec.affinity = None;
                blocks.update(&next).await.map(|_| ())
            };
            match r {
                Ok(()) => {
                    deleted = block::is_empty(&b.spec);
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.drop_affinity(a).await?;
        Ok(deleted)
    }

    /// Frees the node's empty blocks in pools that no longer select it (or no longer exist).
    pub async fn release_unselected_blocks(&self, node: &str) -> Result<Vec<String>> {
        self.release_empty_blocks(node, true).await
    }

    /// Frees every empty block of the node (`only_unselected`: only those of pools that no
    /// longer select it). A node that is drained, or an operator's `ipam release`, uses this.
    pub async fn release_empty_blocks(
        &self,
        node: &str,
        only_unselected: bool,
    ) -> Result<Vec<String>> {
        self.clear_cache();
        let pools = self.pools().await?;
        let labels = self.labels(node).await?;
        let mut freed = vec![];
        for a in self.store.all::<BlockAffinity>().list().await?.items {
            if a.spec.node != node {
                continue;
            }
            let Ok(net) = a.spec.cidr.parse::<IpNetwork>() else {
                continue;
            };
            let selected = crate::pools::block_selected(&pools, &net, &labels)?;
            if selected && only_unselected {
                continue;
            }
            let empty = self
                .store
                .all::<IPAMBlock>()
                .get(&block_name(&net))
                .await?
                .is_none_or(|b| block::is_empty(&b.spec));
            if empty && self.release_affinity(&a).await? {
                info!(node, block = %a.spec.cidr, selected, "released empty block");
                freed.push(a.spec.cidr.clone());
            }
        }
        Ok(freed)
    }
}
