//! Which pools a request may draw from.

use std::collections::BTreeMap;

use brindle_api::{AllowedUse, IPPool, IpipMode};
use ipnetwork::IpNetwork;

use crate::error::{IpamError, Result};
use crate::selector::Selector;
use crate::Family;

/// A pool that passed every filter, with its parsed network.
#[derive(Debug, Clone)]
pub struct Eligible {
    pub name: String,
    pub net: IpNetwork,
    pub block_size: u8,
}

pub fn selects(pool: &IPPool, labels: &BTreeMap<String, String>) -> Result<bool> {
    let sel = Selector::parse(&pool.spec.node_selector).map_err(|source| IpamError::Selector {
        pool: pool.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(sel.matches(labels))
}

/// Whether the pool holding `block` still selects a node with these labels; false when no
/// pool holds it any more.
pub fn block_selected(
    pools: &[IPPool],
    block: &IpNetwork,
    labels: &BTreeMap<String, String>,
) -> Result<bool> {
    match pools.iter().find(|p| {
        p.spec
            .network()
            .is_some_and(|n| n.contains(block.network()))
    }) {
        Some(p) => selects(p, labels),
        None => Ok(false),
    }
}

fn named(p: &IPPool, r: &str) -> bool {
    p.metadata.name.as_deref() == Some(r) || p.spec.cidr == r
}

/// Enabled pools of `family` allowing `use_` that select the node, in name order.
/// `restrict` (names or CIDRs, of either family) narrows them: its entries of this family
/// are the only pools used; with none of this family, the family is not narrowed. An entry
/// that names no pool at all is an error. Tunnel use keeps only IPIP pools.
pub fn eligible(
    pools: &[IPPool],
    labels: &BTreeMap<String, String>,
    family: Family,
    use_: AllowedUse,
    restrict: &[String],
) -> Result<Vec<Eligible>> {
    if let Some(missing) = restrict.iter().find(|r| !pools.iter().any(|p| named(p, r))) {
        return Err(IpamError::UnknownPool(missing.clone()));
    }
    let restrict: Vec<&String> = restrict
        .iter()
        .filter(|r| {
            pools
                .iter()
                .any(|p| named(p, r) && p.spec.network().is_some_and(|n| Family::of(&n) == family))
        })
        .collect();
    let mut out = vec![];
    for p in pools {
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(net) = p.spec.network() else {
            continue;
        };
        if p.spec.disabled || Family::of(&net) != family || !p.spec.allowed_uses.contains(&use_) {
            continue;
        }
        if use_ == AllowedUse::Tunnel && p.spec.ipip_mode == IpipMode::Never {
            continue;
        }
        if !restrict.is_empty() && !restrict.iter().any(|r| named(p, r)) {
            continue;
        }
        if !selects(p, labels)? {
            continue;
        }
        out.push(Eligible {
            name,
            net,
            block_size: p.spec.effective_block_size(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn describe(pools: &[Eligible]) -> String {
    pools
        .iter()
        .map(|p| format!("{} ({})", p.name, p.net))
        .collect::<Vec<_>>()
        .join(", ")
}
