//! Release by handle (idempotent) and by address (checked against handle and sequence
//! number, so a stale release cannot free a newer allocation of the same address).

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{IPAMBlock, IPAMHandle, IPPool};
use brindle_datastore::StoreError;
use ipnetwork::IpNetwork;
use tracing::info;

use crate::block::{self, block_name};
use crate::error::{IpamError, Result};
use crate::ipam::{HandleState, Ipam, MAX_RETRIES};

/// One address to release, with what the caller believes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseIp {
    pub ip: IpAddr,
    /// Only if the address is held by this handle.
    pub handle: Option<String>,
    /// Only if the allocation is still the one made at this sequence number.
    pub sequence: Option<u64>,
    /// Only if the allocation's attributes are still exactly these (a repeated ADD refreshes
    /// them, so a decision taken on older ones cannot free an address just confirmed).
    pub attrs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released,
    /// The address was already free (or its block is gone).
    NotAllocated,
    /// Someone else holds it now: the handle or the sequence number differs. Left alone.
    Mismatch {
        handle: Option<String>,
        sequence: u64,
    },
}

impl Ipam {
    /// Frees every address of `handle` and deletes the handle. Releasing an unknown or
    /// already released handle is not an error. Returns the addresses freed.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        if self.one_txn() {
            return self.release_handle_txn(handle).await;
        }
        let handles = self.store.all::<IPAMHandle>();
        let mut freed = vec![];
        for _ in 0..MAX_RETRIES {
            let Some(h) = handles.get(handle).await? else {
                break;
            };
            for cidr in h.spec.block.keys() {
                freed.extend(self.release_handle_in_block(handle, cidr).await?);
            }
            match handles
                .delete(handle, h.metadata.resource_version.as_deref())
                .await
            {
                Ok(()) | Err(StoreError::NotFound { .. }) => {
                    if !freed.is_empty() {
                        info!(handle, ips = ?freed, "released");
                    }
                    return Ok(freed);
                }
                // The handle changed while we worked (a concurrent assign): go again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if freed.is_empty() {
            return Ok(freed);
        }
        Err(IpamError::TooManyRetries {
            what: format!("releasing handle {handle}"),
            retries: MAX_RETRIES,
        })
    }

    async fn release_handle_in_block(&self, handle: &str, cidr: &str) -> Result<Vec<IpAddr>> {
        let Ok(net) = cidr.parse::<IpNetwork>() else {
            return Ok(vec![]);
        };
        let name = block_name(&net);
        let blocks = self.store.all::<IPAMBlock>();
        for _ in 0..MAX_RETRIES {
            let Some(b) = blocks.get(&name).await? else {
                return Ok(vec![]);
            };
            let mut next = b;
            let freed = block::release_handle(&mut next.spec, handle);
            if freed.is_empty() {
                return Ok(vec![]);
            }
            match blocks.update(&next).await {
                Ok(stored) => {
                    self.note_block(&stored);
                    return Ok(freed);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Ok(vec![]),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("releasing {handle} in block {cidr}"),
            retries: MAX_RETRIES,
        })
    }

    /// Keeps the affine-block cache in step with a block we just wrote.
    pub(crate) fn note_block(&self, b: &IPAMBlock) {
        if let Some(node) = b
            .spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
        {
            self.remember(node, b.clone());
        }
    }

    /// Frees the given addresses, each only if it still matches what the caller says.
    pub async fn release_ips(&self, ips: &[ReleaseIp]) -> Result<Vec<ReleaseOutcome>> {
        let pools = self.store.all::<IPPool>().list().await?.items;
        let mut out = vec![];
        for r in ips {
            out.push(self.release_ip(r, &pools).await?);
        }
        Ok(out)
    }

    async fn block_for(&self, ip: IpAddr, pools: &[IPPool]) -> Result<Option<IPAMBlock>> {
        let blocks = self.store.all::<IPAMBlock>();
        if let Some(p) = pools
            .iter()
            .find(|p| p.spec.network().is_some_and(|n| n.contains(ip)))
        {
            if let Some(cidr) = block::block_of(ip, p.spec.effective_block_size()) {
                return Ok(blocks.get(&block_name(&cidr)).await?);
            }
        }
        // The pool is gone; its blocks may not be. Look for the block that holds the address.
        Ok(blocks
            .list()
            .await?
            .items
            .into_iter()
            .find(|b| block::network(&b.spec).is_some_and(|n| n.contains(ip))))
    }

    async fn release_ip(&self, r: &ReleaseIp, pools: &[IPPool]) -> Result<ReleaseOutcome> {
        let blocks = self.store.all::<IPAMBlock>();
        for _ in 0..MAX_RETRIES {
            let Some(b) = self.block_for(r.ip, pools).await? else {
                return Ok(ReleaseOutcome::NotAllocated);
            };
            let Some(a) = block::ordinal(&b.spec, r.ip).and_then(|o| {
                block::allocations(&b.spec)
                    .into_iter()
                    .find(|a| a.ordinal == o)
            }) else {
                return Ok(ReleaseOutcome::NotAllocated);
            };
            let handle_ok = r.handle.is_none() || r.handle == a.handle;
            let seq_ok = r.sequence.is_none_or(|s| s == a.sequence);
            let attrs_ok = r.attrs.as_ref().is_none_or(|x| *x == a.attrs);
            if !handle_ok || !seq_ok || !attrs_ok {
                return Ok(ReleaseOutcome::Mismatch {
                    handle: a.handle,
                    sequence: a.sequence,
                });
            }
            let mut next = b.clone();
            block::release(&mut next.spec, &[a.ordinal]);
            match blocks.update(&next).await {
                Ok(stored) => {
                    self.note_block(&stored);
                    if let Some(h) = &a.handle {
                        self.adjust_handle(h, &b.spec.cidr, -1, &mut HandleState::default())
                            .await?;
                    }
                    info!(ip = %r.ip, handle = ?a.handle, "released");
                    return Ok(ReleaseOutcome::Released);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Ok(ReleaseOutcome::NotAllocated),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("releasing {}", r.ip),
            retries: MAX_RETRIES,
        })
    }

    /// Merges `updates` into the attributes of every address `handle` holds (one
    /// compare-and-swap per block) and returns those addresses: what a repeated ADD uses, so
    /// the owner record says where the attachment lives now.
    pub async fn refresh_handle(
        &self,
        handle: &str,
        updates: &BTreeMap<String, String>,
    ) -> Result<Vec<IpAddr>> {
        let Some(h) = self.store.all::<IPAMHandle>().get(handle).await? else {
            return Ok(vec![]);
        };
        let blocks = self.store.all::<IPAMBlock>();
        let mut out = vec![];
        for cidr in h.spec.block.keys() {
            let Ok(net) = cidr.parse::<IpNetwork>() else {
                continue;
            };
            let name = block_name(&net);
            let mut done = false;
            for _ in 0..MAX_RETRIES {
                let Some(b) = blocks.get(&name).await? else {
                    done = true;
                    break;
                };
                let mut next = b.clone();
                let ords = block::update_attrs(&mut next.spec, handle, updates);
                if ords.is_empty() {
                    done = true;
                    break;
                }
                match blocks.update(&next).await {
                    Ok(stored) => {
                        self.note_block(&stored);
                        out.extend(ords.iter().filter_map(|&o| block::address(&b.spec, o)));
                        done = true;
                        break;
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound { .. }) => {
                        done = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !done {
                return Err(IpamError::TooManyRetries {
                    what: format!("refreshing {handle} in block {cidr}"),
                    retries: MAX_RETRIES,
                });
            }
        }
        Ok(out)
    }

    /// Everything `handle` holds, read from the blocks the handle names.
    pub async fn ips_of_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let Some(h) = self.store.all::<IPAMHandle>().get(handle).await? else {
            return Ok(vec![]);
        };
        let mut out = vec![];
        let blocks: BTreeMap<_, _> = h.spec.block.iter().collect();
        for cidr in blocks.keys() {
            let Ok(net) = cidr.parse::<IpNetwork>() else {
                continue;
            };
            if let Some(b) = self.store.all::<IPAMBlock>().get(&block_name(&net)).await? {
                out.extend(
                    block::ordinals_of(&b.spec, handle)
                        .into_iter()
                        .filter_map(|o| block::address(&b.spec, o)),
                );
            }
        }
        Ok(out)
    }
}
