//! `ipam check`: what is wrong in the IPAM data, as data (the CLI prints it, the collector
//! repairs it).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use brindle_api::{BlockAffinity, IPAMBlock, IPAMHandle};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::block::{self, attr, block_name};
use crate::error::Result;
use crate::gc::OwnerSnapshot;
use crate::Ipam;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocationRef {
    pub block: String,
    pub ip: IpAddr,
    pub ordinal: u32,
    pub handle: Option<String>,
    pub sequence: u64,
    pub attrs: BTreeMap<String, String>,
}

/// Who an allocation belongs to, from its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Owner {
    Pod {
        namespace: String,
        name: String,
    },
    Node(String),
    /// A container with no Kubernetes pod behind it (podman, nerdctl): leaked when its node
    /// is gone; on a live node, that node's agent judges it (it can see the container).
    Container {
        node: String,
    },
    /// No owner recorded: never called leaked.
    Unknown,
}

impl AllocationRef {
    pub fn owner(&self) -> Owner {
        owner_of(&self.attrs)
    }
}

/// Who an allocation belongs to, from its attributes.
pub fn owner_of(a: &BTreeMap<String, String>) -> Owner {
    {
        match (
            a.get(attr::TYPE).map(String::as_str),
            a.get(attr::NAMESPACE),
            a.get(attr::POD),
            a.get(attr::NODE),
        ) {
            (Some(attr::TYPE_TUNNEL), _, _, Some(node)) => Owner::Node(node.clone()),
            (_, Some(ns), Some(pod), _) => Owner::Pod {
                namespace: ns.clone(),
                name: pod.clone(),
            },
            (Some(attr::TYPE_POD), _, _, Some(node)) if a.contains_key(attr::CONTAINER_ID) => {
                Owner::Container { node: node.clone() }
            }
            _ => Owner::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleMismatch {
    pub handle: String,
    pub block: String,
    /// What the IPAMHandle counts for the block (0 when the handle does not exist).
    pub handle_says: u32,
    /// What the block holds for the handle.
    pub block_holds: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub blocks: usize,
    pub handles: usize,
    pub affinities: usize,
    pub allocations: usize,
    /// Allocations whose pod or node no longer exists.
    pub leaked: Vec<AllocationRef>,
    /// Addresses of containers without a Kubernetes pod (a runtime such as podman calling
    /// brindle-cni). Not a problem in itself: their node's agent releases one whose container
    /// is gone; listed so an operator can see them.
    pub container_attachments: Vec<AllocationRef>,
    /// Addresses held twice: in two blocks, or both allocated and on the free list.
    pub duplicates: Vec<IpAddr>,
    pub handle_mismatches: Vec<HandleMismatch>,
    /// Blocks with no affinity, or whose affinity has no BlockAffinity behind it.
    pub blocks_without_affinity: Vec<String>,
    /// BlockAffinities (by name) whose block does not exist.
    pub affinities_without_block: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.duplicates.is_empty()
            && self.handle_mismatches.is_empty()
            && self.blocks_without_affinity.is_empty()
            && self.affinities_without_block.is_empty()
    }
}

pub(crate) struct Snapshot {
    pub blocks: Vec<IPAMBlock>,
    pub handles: Vec<IPAMHandle>,
    pub affinities: Vec<BlockAffinity>,
}

impl Ipam {
    pub(crate) async fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            blocks: self.store.all::<IPAMBlock>().list().await?.items,
            handles: self.store.all::<IPAMHandle>().list().await?.items,
            affinities: self.store.all::<BlockAffinity>().list().await?.items,
        })
    }

    /// Reads every block, handle and affinity and reports what is inconsistent.
    pub async fn check(&self, owners: &OwnerSnapshot) -> Result<Report> {
        Ok(analyse(&self.snapshot().await?, owners))
    }
}

pub(crate) fn analyse(s: &Snapshot, owners: &OwnerSnapshot) -> Report {
    let mut r = Report {
        blocks: s.blocks.len(),
        handles: s.handles.len(),
        affinities: s.affinities.len(),
        ..Report::default()
    };
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    // (handle, block cidr) → addresses the block holds for it.
    let mut held: BTreeMap<(String, String), u32> = BTreeMap::new();
    for b in &s.blocks {
        let name = b.metadata.name.clone().unwrap_or_default();
        let allocs = block::allocations(&b.spec);
        r.allocations += allocs.len();
        let mut free_seen = std::collections::HashSet::new();
        for &o in &b.spec.unallocated {
            let allocated = b
                .spec
                .allocations
                .get(o as usize)
                .is_some_and(Option::is_some);
            if !free_seen.insert(o) || allocated {
                r.duplicates.extend(block::address(&b.spec, o));
            }
        }
        for a in allocs {
            *seen.entry(a.ip).or_default() += 1;
            if let Some(h) = &a.handle {
                *held.entry((h.clone(), b.spec.cidr.clone())).or_default() += 1;
            }
            let owner = owner_of(&a.attrs);
            let leaked = match &owner {
                Owner::Pod { namespace, name } => {
                    !owners.pods.contains(&(namespace.clone(), name.clone()))
                }
                Owner::Node(n) | Owner::Container { node: n } => !owners.nodes.contains(n),
                Owner::Unknown => false,
            };
            let found = AllocationRef {
                block: name.clone(),
                ip: a.ip,
                ordinal: a.ordinal,
                handle: a.handle,
                sequence: a.sequence,
                attrs: a.attrs,
            };
            if leaked {
                r.leaked.push(found);
            } else if matches!(owner, Owner::Container { .. }) {
                r.container_attachments.push(found);
            }
        }
        let affine_ok = b
            .spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
            .is_some_and(|node| {
                s.affinities
                    .iter()
                    .any(|a| a.spec.node == node && a.spec.cidr == b.spec.cidr)
            });
        if !affine_ok {
            r.blocks_without_affinity.push(b.spec.cidr.clone());
        }
    }
    r.duplicates
        .extend(seen.into_iter().filter(|(_, n)| *n > 1).map(|(ip, _)| ip));
    r.duplicates.sort();

    let mut counted: BTreeMap<(String, String), u32> = BTreeMap::new();
    for h in &s.handles {
        for (cidr, n) in &h.spec.block {
            counted.insert((h.spec.handle_id.clone(), cidr.clone()), *n);
        }
    }
    let keys: std::collections::BTreeSet<_> = held.keys().chain(counted.keys()).cloned().collect();
    for k in keys {
        let says = counted.get(&k).copied().unwrap_or(0);
        let holds = held.get(&k).copied().unwrap_or(0);
        if says != holds {
            r.handle_mismatches.push(HandleMismatch {
                handle: k.0,
                block: k.1,
                handle_says: says,
                block_holds: holds,
            });
        }
    }

    let block_names: std::collections::HashSet<String> = s
        .blocks
        .iter()
        .filter_map(|b| b.metadata.name.clone())
        .collect();
    for a in &s.affinities {
        let exists = a
            .spec
            .cidr
            .parse::<IpNetwork>()
            .is_ok_and(|n| block_names.contains(&block_name(&n)));
        if !exists {
            r.affinities_without_block
                .push(a.metadata.name.clone().unwrap_or_default());
        }
    }
    r
}
