//! One write per allocation, where the datastore has multi-object transactions (etcd): the
//! block and the handles of the addresses taken from it are written in one transaction, so
//! an allocation is one round trip and no crash can leave one without the other; a block
//! claim and a release by handle likewise. Several requests can share that transaction:
//! see `batch.rs`.
//!
//! On the Kubernetes datastore (no transactions) the two-write path in `ipam.rs` is used:
//! handle first, then block.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{
    AffinityState, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMHandle, IPAMHandleSpec,
};
use brindle_datastore::{ResourceType, StoreError};
use ipnetwork::IpNetwork;
use tracing::{debug, info};

use crate::block::{self, block_name};
use crate::error::{IpamError, Result};
use crate::ipam::{AssignRequest, HandleState, Ipam, MAX_RETRIES};

fn handle_key(id: &str) -> String {
    ResourceType::of::<IPAMHandle>()
        .key(None, Some(id))
        .as_str()
        .to_owned()
}

pub(crate) fn is_race(e: &StoreError) -> bool {
    e.is_conflict() || e.is_not_found() || e.is_already_exists()
}

/// The handle after adding `n` addresses of `cidr` to what we know of it.
pub(crate) fn with_addresses(st: &HandleState, id: &str, cidr: &str, n: usize) -> IPAMHandle {
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
            let k = block::room(&block.spec, n, affine);
            if k == 0 {
                if let Some(node) = affine {
                    self.forget(node, &name);
                }
                return Ok(vec![]);
            }
            self.load_handle(&req.handle, st).await?;
            // Allocated in place (no copy of the block): a failed commit reads it again.
            let ips = block::allocate(&mut block.spec, k, &req.handle, &req.attrs);
            let h = with_addresses(st, &req.handle, &block.spec.cidr, k);
            let mut t = self.store.txn();
            t.update(&blocks, &block)?;
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
        let b = block::new_affine_block(cidr, node);
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
                Some(existing) if block::is_affine_to(&existing.spec, node) => Ok(None),
                _ => {
                    debug!(node, block = %cidr, "lost the race for a block");
                    Ok(Some(None))
                }
            },
            Err(e) => Err(e.into()),
        }
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
            if let Some(mut next) = block {
                ips = block::release_handle(&mut next.spec, id);
                if !ips.is_empty() {
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
