//! Address arithmetic and the pure operations on one block: no I/O, so every rule about
//! slots, the FIFO free list and sequence numbers is unit tested here.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use brindle_api::{AllocationAttribute, IPAMBlock, IPAMBlockSpec};
use ipnetwork::IpNetwork;

/// Attribute keys written on every allocation, so owners can be found later.
pub mod attr {
    pub const POD: &str = "pod";
    pub const NAMESPACE: &str = "namespace";
    pub const NODE: &str = "node";
    pub const CONTAINER_ID: &str = "containerID";
    /// `pod` or `ipipTunnelAddress`.
    pub const TYPE: &str = "type";
    pub const TYPE_POD: &str = "pod";
    pub const TYPE_TUNNEL: &str = "ipipTunnelAddress";
    /// The CNI attachment a pod address belongs to: (containerID, network, interface), and
    /// where it lives, so the node agent can tell when it is gone.
    pub const NETWORK: &str = "network";
    pub const INTERFACE: &str = "interface";
    pub const NETNS: &str = "netns";
    /// The host side of the attachment's veth (absent when brindle-cni only did IPAM).
    pub const HOST_INTERFACE: &str = "hostInterface";
    /// When the address was given or last confirmed by a repeated ADD (RFC 3339, UTC).
    pub const TIMESTAMP: &str = "timestamp";
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v4: bool, n: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn bits(net: &IpNetwork) -> u8 {
    if net.is_ipv4() {
        32
    } else {
        128
    }
}

/// The Kubernetes-safe name of a block: `10-244-3-0-26`, `fd00-10---c0-122`.
pub fn block_name(cidr: &IpNetwork) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix())
        .replace(['.', ':'], "-")
        .to_ascii_lowercase()
}

/// The block of size `/block_size` that holds `ip`.
pub fn block_of(ip: IpAddr, block_size: u8) -> Option<IpNetwork> {
    let b = if ip.is_ipv4() { 32 } else { 128 };
    let host = u32::from(b - block_size);
    let n = to_u128(ip) >> host << host;
    IpNetwork::new(from_u128(ip.is_ipv4(), n), block_size).ok()
}

/// Number of `/block_size` blocks in `pool` (saturating for huge IPv6 pools).
pub fn block_count(pool: &IpNetwork, block_size: u8) -> u128 {
    let shift = u32::from(block_size.saturating_sub(pool.prefix()));
    1u128.checked_shl(shift).unwrap_or(u128::MAX)
}

/// The `i`-th block of `pool`.
pub fn nth_block(pool: &IpNetwork, block_size: u8, i: u128) -> Option<IpNetwork> {
    let host = u32::from(bits(pool) - block_size);
    let base = to_u128(pool.network());
    let n = base.checked_add(i.checked_shl(host)?)?;
    IpNetwork::new(from_u128(pool.is_ipv4(), n), block_size).ok()
}

/// FNV-1a, 64 bit: a hash that is the same in every process and every Rust version, so a
/// node starts its block search at the same place every time.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A new, empty block.
pub fn new_block(cidr: &IpNetwork, affinity: Option<String>) -> IPAMBlockSpec {
    let size = 1usize << (bits(cidr) - cidr.prefix());
    IPAMBlockSpec {
        cidr: cidr.to_string(),
        affinity,
        allocations: vec![None; size],
        unallocated: (0..size as u32).collect(),
        attributes: vec![],
        sequence_number: 0,
        sequence_number_for_allocation: BTreeMap::new(),
        deleted: false,
    }
}

/// A new, empty block with affinity to `node`, named after its CIDR: what a claim creates.
pub fn new_affine_block(cidr: &IpNetwork, node: &str) -> IPAMBlock {
    let name = block_name(cidr);
    let mut b = IPAMBlock::new(&name, new_block(cidr, Some(affinity(node))));
    b.metadata.name = Some(name);
    b
}

/// A block's `affinity` value for `node`.
fn affinity(node: &str) -> String {
    format!("host:{node}")
}

/// Whether the block has affinity to `node`.
pub fn is_affine_to(b: &IPAMBlockSpec, node: &str) -> bool {
    b.affinity.as_deref().and_then(|a| a.strip_prefix("host:")) == Some(node)
}

/// How many of `n` addresses the block can give: none when it is being deleted or (for
/// `affine`) no longer that node's, else as many as are free.
pub fn room(b: &IPAMBlockSpec, n: usize, affine: Option<&str>) -> usize {
    if b.deleted || !affine.is_none_or(|node| is_affine_to(b, node)) {
        0
    } else {
        n.min(free(b))
    }
}

/// One allocation, as found in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub ordinal: u32,
    pub handle: Option<String>,
    pub attrs: BTreeMap<String, String>,
    pub sequence: u64,
}

pub fn network(b: &IPAMBlockSpec) -> Option<IpNetwork> {
    b.cidr.parse().ok()
}

pub fn address(b: &IPAMBlockSpec, ordinal: u32) -> Option<IpAddr> {
    let net = network(b)?;
    Some(from_u128(
        net.is_ipv4(),
        to_u128(net.network()) + u128::from(ordinal),
    ))
}

pub fn ordinal(b: &IPAMBlockSpec, ip: IpAddr) -> Option<u32> {
    let net = network(b)?;
    if !net.contains(ip) {
        return None;
    }
    u32::try_from(to_u128(ip) - to_u128(net.network())).ok()
}

pub fn free(b: &IPAMBlockSpec) -> usize {
    b.unallocated.len()
}

pub fn is_empty(b: &IPAMBlockSpec) -> bool {
    b.allocations.iter().all(Option::is_none)
}

/// Every allocation in the block.
pub fn allocations(b: &IPAMBlockSpec) -> Vec<Allocation> {
    b.allocations
        .iter()
        .enumerate()
        .filter_map(|(ord, a)| {
            let a = (*a)? as usize;
            let attr = b.attributes.get(a).cloned().unwrap_or_default();
            let ordinal = ord as u32;
            Some(Allocation {
                ip: address(b, ordinal)?,
                ordinal,
                handle: attr.handle_id,
                attrs: attr.secondary,
                sequence: b
                    .sequence_number_for_allocation
                    .get(&ordinal.to_string())
                    .copied()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn attribute_index(b: &mut IPAMBlockSpec, handle: &str, attrs: &BTreeMap<String, String>) -> u32 {
    let want = AllocationAttribute {
        handle_id: Some(handle.to_owned()),
        secondary: attrs.clone(),
    };
    if let Some(i) = b.attributes.iter().position(|a| *a == want) {
        return i as u32;
    }
    b.attributes.push(want);
    (b.attributes.len() - 1) as u32
}

/// Marks a slot allocated; false (and nothing changed) for an ordinal outside the block,
/// which only a corrupted block can hold.
fn mark(b: &mut IPAMBlockSpec, ordinal: u32, attr: u32) -> bool {
    let Some(slot) = b.allocations.get_mut(ordinal as usize) else {
        return false;
    };
    *slot = Some(attr);
    b.sequence_number += 1;
    b.sequence_number_for_allocation
        .insert(ordinal.to_string(), b.sequence_number);
    true
}

/// Takes up to `n` addresses off the head of the free list (the longest idle first).
pub fn allocate(
    b: &mut IPAMBlockSpec,
    n: usize,
    handle: &str,
    attrs: &BTreeMap<String, String>,
) -> Vec<IpAddr> {
    let take = n.min(b.unallocated.len());
    if take == 0 {
        return vec![];
    }
    let attr = attribute_index(b, handle, attrs);
    let ords: Vec<u32> = b.unallocated.drain(..take).collect();
    let marked: Vec<u32> = ords.into_iter().filter(|&o| mark(b, o, attr)).collect();
    marked.into_iter().filter_map(|o| address(b, o)).collect()
}

/// Allocates one given address; false if it is not free (or not in the block).
pub fn allocate_ip(
    b: &mut IPAMBlockSpec,
    ip: IpAddr,
    handle: &str,
    attrs: &BTreeMap<String, String>,
) -> bool {
    let Some(ord) = ordinal(b, ip) else {
        return false;
    };
    let Some(pos) = b.unallocated.iter().position(|&o| o == ord) else {
        return false;
    };
    b.unallocated.remove(pos);
    let attr = attribute_index(b, handle, attrs);
    mark(b, ord, attr)
}

/// Frees the given ordinals: back on the tail of the free list, attributes no longer used
/// are dropped. Returns how many were allocated.
pub fn release(b: &mut IPAMBlockSpec, ordinals: &[u32]) -> usize {
    let mut n = 0;
    for &o in ordinals {
        if let Some(slot) = b.allocations.get_mut(o as usize) {
            if slot.take().is_some() {
                b.unallocated.push(o);
                b.sequence_number_for_allocation.remove(&o.to_string());
                n += 1;
            }
        }
    }
    if n > 0 {
        b.sequence_number += 1;
        compact_attributes(b);
    }
    n
}

/// Frees every address `handle` holds in the block; returns them (none: nothing changed).
pub fn release_handle(b: &mut IPAMBlockSpec, handle: &str) -> Vec<IpAddr> {
    let ords = ordinals_of(b, handle);
    let ips = ords.iter().filter_map(|&o| address(b, o)).collect();
    release(b, &ords);
    ips
}

/// Merges `updates` into the attributes of the ordinals `handle` holds in the block. Returns
/// those ordinals (none: nothing changed).
pub fn update_attrs(
    b: &mut IPAMBlockSpec,
    handle: &str,
    updates: &BTreeMap<String, String>,
) -> Vec<u32> {
    let ords = ordinals_of(b, handle);
    for &o in &ords {
        let Some(Some(i)) = b.allocations.get(o as usize).copied() else {
            continue;
        };
        let mut attrs = b
            .attributes
            .get(i as usize)
            .map(|a| a.secondary.clone())
            .unwrap_or_default();
        attrs.extend(updates.iter().map(|(k, v)| (k.clone(), v.clone())));
        let idx = attribute_index(b, handle, &attrs);
        b.allocations[o as usize] = Some(idx);
    }
    if !ords.is_empty() {
        compact_attributes(b);
    }
    ords
}

/// Ordinals held by `handle`.
pub fn ordinals_of(b: &IPAMBlockSpec, handle: &str) -> Vec<u32> {
    b.allocations
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            a.and_then(|a| b.attributes.get(a as usize))
                .is_some_and(|attr| attr.handle_id.as_deref() == Some(handle))
        })
        .map(|(o, _)| o as u32)
        .collect()
}

fn compact_attributes(b: &mut IPAMBlockSpec) {
    let mut used = vec![false; b.attributes.len()];
    for a in b.allocations.iter().flatten() {
        if let Some(u) = used.get_mut(*a as usize) {
            *u = true;
        }
    }
    let mut remap = vec![0u32; b.attributes.len()];
    let mut kept = vec![];
    for (i, attr) in b.attributes.drain(..).enumerate() {
        if used[i] {
            remap[i] = kept.len() as u32;
            kept.push(attr);
        }
    }
    b.attributes = kept;
    for a in b.allocations.iter_mut().flatten() {
        *a = remap[*a as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn names_and_arithmetic() {
        assert_eq!(block_name(&net("10.244.3.0/26")), "10-244-3-0-26");
        assert_eq!(block_name(&net("fd00:10::c0/122")), "fd00-10--c0-122");
        assert_eq!(
            block_of("10.244.3.77".parse().unwrap(), 26),
            Some(net("10.244.3.64/26"))
        );
        assert_eq!(block_count(&net("10.244.0.0/16"), 26), 1024);
        assert_eq!(
            nth_block(&net("10.244.0.0/16"), 26, 5),
            Some(net("10.244.1.64/26"))
        );
        assert_eq!(block_count(&net("fd00::/48"), 122), 1 << 74);
        assert_eq!(stable_hash("node-1"), stable_hash("node-1"));
        assert_ne!(stable_hash("node-1"), stable_hash("node-2"));
        // FNV-1a of "a" (published test vector): the hash must never change between builds.
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn fifo_reuse_and_sequence_numbers() {
        let mut b = new_block(&net("10.0.0.0/30"), Some("host:n1".into()));
        let attrs = BTreeMap::new();
        let first = allocate(&mut b, 2, "h1", &attrs);
        assert_eq!(
            first,
            vec![
                "10.0.0.0".parse::<IpAddr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        let seq0 = allocations(&b)[0].sequence;
        release(&mut b, &[0]);
        // The released address goes to the tail: the two never-used ones come first.
        let next = allocate(&mut b, 3, "h2", &attrs);
        let next: Vec<String> = next.iter().map(ToString::to_string).collect();
        assert_eq!(next, ["10.0.0.2", "10.0.0.3", "10.0.0.0"]);
        let reused = allocations(&b)
            .into_iter()
            .find(|a| a.ordinal == 0)
            .unwrap();
        assert!(
            reused.sequence > seq0,
            "a reused slot gets a new sequence number"
        );
        assert_eq!(reused.handle.as_deref(), Some("h2"));
        assert_eq!(free(&b), 0);
        assert!(allocate(&mut b, 1, "h3", &attrs).is_empty());
    }

    #[test]
    fn attributes_are_shared_and_compacted() {
        let mut b = new_block(&net("10.0.0.0/29"), None);
        let attrs = BTreeMap::from([("pod".to_string(), "p".to_string())]);
        allocate(&mut b, 2, "h1", &attrs);
        allocate(&mut b, 1, "h2", &attrs);
        assert_eq!(b.attributes.len(), 2);
        let h1 = ordinals_of(&b, "h1");
        assert_eq!(h1, vec![0, 1]);
        assert_eq!(release(&mut b, &h1), 2);
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(allocations(&b)[0].handle.as_deref(), Some("h2"));
        assert_eq!(release(&mut b, &h1), 0, "releasing twice frees nothing");
    }

    #[test]
    fn updated_attributes_touch_only_the_handle_and_keep_sequences() {
        let mut b = new_block(&net("10.0.0.0/29"), None);
        let attrs = BTreeMap::from([("netns".to_string(), "/run/netns/a".to_string())]);
        allocate(&mut b, 2, "h1", &attrs);
        allocate(&mut b, 1, "h2", &attrs);
        let before: Vec<u64> = allocations(&b).iter().map(|a| a.sequence).collect();
        let upd = BTreeMap::from([("netns".to_string(), "/run/netns/b".to_string())]);
        assert_eq!(update_attrs(&mut b, "h1", &upd), vec![0, 1]);
        let after = allocations(&b);
        assert_eq!(
            after.iter().map(|a| a.sequence).collect::<Vec<_>>(),
            before,
            "refreshing attributes is not a new allocation"
        );
        for a in &after {
            let want = if a.handle.as_deref() == Some("h1") {
                "/run/netns/b"
            } else {
                "/run/netns/a"
            };
            assert_eq!(a.attrs["netns"], want, "{a:?}");
        }
        assert_eq!(
            b.attributes.len(),
            2,
            "the old attribute entry is compacted away"
        );
        assert!(update_attrs(&mut b, "nobody", &upd).is_empty());
    }

    #[test]
    fn a_corrupted_free_list_cannot_panic_the_allocator() {
        let mut b = new_block(&net("10.0.0.0/30"), None);
        b.unallocated = vec![9, 1];
        let got = allocate(&mut b, 2, "h", &BTreeMap::new());
        assert_eq!(got, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn specific_address() {
        let mut b = new_block(&net("10.0.0.0/30"), None);
        let a = BTreeMap::new();
        assert!(allocate_ip(&mut b, "10.0.0.2".parse().unwrap(), "h", &a));
        assert!(
            !allocate_ip(&mut b, "10.0.0.2".parse().unwrap(), "h", &a),
            "taken"
        );
        assert!(
            !allocate_ip(&mut b, "10.0.1.2".parse().unwrap(), "h", &a),
            "outside"
        );
        assert_eq!(b.unallocated, vec![0, 1, 3]);
    }
}
