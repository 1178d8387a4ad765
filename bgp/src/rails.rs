//! Import rails: what no route learned from a peer may be, whatever the import policy (or a
//! BGPFilter) says. They are checked before the policy, so no filter can lift them, and a
//! refused path never reaches the Loc-RIB: it is not installed and not passed on.
//!
//! - **Protected space** (every peer): nothing equal to, inside, or covering one of the node's
//!   own addresses, its connected subnets, loopback, link-local or multicast space. The one
//!   exception is a default route (`/0`): it is the least specific route there is, so it never
//!   takes traffic from a connected, local or more specific route (and the kernel writer
//!   never replaces the host's own default route).
//! - **Cluster members** (mesh, reflector and client nodes): only routes inside the pools.
//!   A node exports nothing else, so anything else is a misconfigured or hostile node.
//! - **External peers** (top-of-rack routers, anything that is not a node): inside the pools
//!   only what a node could own, a block-sized prefix or a host route, and nothing inside
//!   this node's own blocks; never the pool prefix itself or anything that covers a block.

use ipnetwork::IpNetwork;

/// The rails the owner sets (and updates as the node's addresses and blocks change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rails {
    /// Own addresses (as host prefixes), connected subnets and special-purpose space.
    pub protected: Vec<IpNetwork>,
    /// The pools, each with its block size. Empty: the pool rails are off (a plain router).
    pub pools: Vec<(IpNetwork, u8)>,
    /// This node's own blocks: an external peer may announce nothing inside them ...
    pub local_blocks: Vec<IpNetwork>,
    /// ... but the host routes of their addresses that pods on other nodes borrowed (those
    /// nodes announce them, and a top-of-rack router passes them on).
    pub lent: Vec<IpNetwork>,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Equal to, inside or covering protected space (the network named).
    Protected(IpNetwork),
    /// From a cluster member, outside every pool.
    OutsidePools,
    /// From an external peer, inside a pool but not a block or a host route (the pool named).
    PoolShape(IpNetwork),
    /// From an external peer, inside (or equal to) one of our own blocks.
    LocalBlock(IpNetwork),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Protected(n) => write!(f, "overlaps protected space {n}"),
            Refusal::OutsidePools => write!(f, "a cluster node may announce only pool routes"),
            Refusal::PoolShape(p) => write!(
                f,
                "inside pool {p} but neither a block nor a host route (only nodes announce those)"
            ),
            Refusal::LocalBlock(b) => write!(f, "inside this node's own block {b}"),
        }
    }
}

/// `inner` is `outer` or inside it.
pub fn within(inner: &IpNetwork, outer: &IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4()
        && inner.prefix() >= outer.prefix()
        && outer.contains(inner.network())
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    within(a, b) || within(b, a)
}

fn host_len(p: &IpNetwork) -> u8 {
    if p.is_ipv4() {
        32
    } else {
        128
    }
}

/// Space no learned route may overlap on any host: loopback, link-local, multicast, "this
/// network" and (IPv4) the reserved class E.
pub fn special_purpose() -> Vec<IpNetwork> {
    [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

impl Rails {
    /// Whether a path for `prefix` from a peer (`member`: a cluster node) may be imported.
    pub fn check(&self, prefix: &IpNetwork, member: bool) -> Result<(), Refusal> {
        if prefix.prefix() > 0 {
            if let Some(n) = self.protected.iter().find(|n| overlaps(prefix, n)) {
                return Err(Refusal::Protected(*n));
            }
        }
        if self.pools.is_empty() {
            return Ok(());
        }
        let pool = self.pools.iter().find(|(p, _)| within(prefix, p));
        if member {
            return match pool {
                Some(_) => Ok(()),
                None => Err(Refusal::OutsidePools),
            };
        }
        if let Some(b) = self.local_blocks.iter().find(|b| within(prefix, b)) {
            if !self.lent.contains(prefix) {
                return Err(Refusal::LocalBlock(*b));
            }
        }
        match pool {
            Some((p, block)) if prefix.prefix() != *block && prefix.prefix() != host_len(p) => {
                Err(Refusal::PoolShape(*p))
            }
            _ => Ok(()),
        }
    }

    /// Whether everything `self` allows, `before` allowed too (a change that only refuses
    /// more needs no route refresh from peers).
    pub fn only_tightens(&self, before: &Rails) -> bool {
        before.protected.iter().all(|n| self.protected.contains(n))
            && before.local_blocks.iter().all(|b| self.local_blocks.contains(b))
            && self.lent.iter().all(|l| before.lent.contains(l))
            // Pools are loose for members and strict for external peers: any change loosens
            // something, unless the pool rails were off before.
            && (self.pools == before.pools || before.pools.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn node() -> Rails {
        let mut protected = special_purpose();
        protected.extend([n("198.18.0.10/32"), n("198.18.0.0/24")]);
        Rails {
            protected,
            pools: vec![(n("10.244.0.0/16"), 26)],
            local_blocks: vec![n("10.244.1.0/26")],
            lent: vec![n("10.244.1.33/32")],
        }
    }

    #[test]
    fn protected_space_is_refused_from_everyone() {
        let r = node();
        for (p, member) in [
            ("198.18.0.0/24", false),  // the connected subnet
            ("198.18.0.10/32", false), // our own address
            ("198.18.0.77/32", false), // a neighbour on the subnet
            ("198.18.0.0/16", false),  // covering the subnet
            ("127.0.0.0/8", false),
            ("169.254.169.254/32", false),
            ("224.0.0.0/24", false),
            ("0.0.0.0/1", false), // covers loopback and link-local
            ("fe80::/64", false),
            ("198.18.0.77/32", true),
        ] {
            assert!(
                matches!(r.check(&n(p), member), Err(Refusal::Protected(_))),
                "{p}"
            );
        }
        assert_eq!(r.check(&n("0.0.0.0/0"), false), Ok(()));
        assert_eq!(r.check(&n("192.0.2.0/24"), false), Ok(()));
    }

    #[test]
    fn members_announce_pool_routes_only() {
        let r = node();
        assert_eq!(r.check(&n("10.244.2.0/26"), true), Ok(()));
        // A borrowed address inside our own block lives on the node that borrowed it.
        assert_eq!(r.check(&n("10.244.1.5/32"), true), Ok(()));
        assert_eq!(r.check(&n("0.0.0.0/0"), true), Err(Refusal::OutsidePools));
        assert_eq!(
            r.check(&n("192.0.2.0/24"), true),
            Err(Refusal::OutsidePools)
        );
    }

    #[test]
    fn external_peers_announce_only_what_a_node_could_own() {
        let r = node();
        assert_eq!(r.check(&n("10.244.2.0/26"), false), Ok(()));
        assert_eq!(r.check(&n("10.244.2.9/32"), false), Ok(()));
        assert_eq!(
            r.check(&n("10.244.0.0/16"), false),
            Err(Refusal::PoolShape(n("10.244.0.0/16")))
        );
        assert_eq!(
            r.check(&n("10.244.2.0/24"), false),
            Err(Refusal::PoolShape(n("10.244.0.0/16")))
        );
        assert_eq!(
            r.check(&n("10.244.1.5/32"), false),
            Err(Refusal::LocalBlock(n("10.244.1.0/26")))
        );
        assert_eq!(
            r.check(&n("10.244.1.0/26"), false),
            Err(Refusal::LocalBlock(n("10.244.1.0/26")))
        );
        // An address of our block that a pod on another node borrowed.
        assert_eq!(r.check(&n("10.244.1.33/32"), false), Ok(()));
    }

    #[test]
    fn without_pools_only_protected_space_counts() {
        let r = Rails {
            protected: special_purpose(),
            ..Rails::default()
        };
        assert_eq!(r.check(&n("10.0.0.0/8"), false), Ok(()));
        assert!(r.check(&n("127.0.0.1/32"), true).is_err());
    }

    #[test]
    fn tightening_is_told_from_loosening() {
        let before = node();
        let mut more = before.clone();
        more.local_blocks.push(n("10.244.3.0/26"));
        assert!(more.only_tightens(&before));
        assert!(!before.only_tightens(&more));
    }
}
