//! Route policy: a small typed model, enough for Brindle's own rules and operators' usual
//! asks. A [`Policy`] is a list of [`Term`]s; the first term whose matches all hold applies
//! its actions and, if it has a verdict, decides; otherwise evaluation goes on to the next.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::codec::{AsSegment, Attributes};

/// `prefix` with optional `ge`/`le` bounds on the matched prefix length (as in IOS/FRR):
/// without bounds only the exact prefix matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixEntry {
    pub prefix: IpNetwork,
    pub ge: Option<u8>,
    pub le: Option<u8>,
}

impl PrefixEntry {
    pub fn exact(prefix: IpNetwork) -> PrefixEntry {
        PrefixEntry {
            prefix,
            ge: None,
            le: None,
        }
    }

    pub fn matches(&self, p: &IpNetwork) -> bool {
        if self.prefix.is_ipv4() != p.is_ipv4()
            || !self.prefix.contains(p.network())
            || p.prefix() < self.prefix.prefix()
        {
            return false;
        }
        match (self.ge, self.le) {
            (None, None) => p.prefix() == self.prefix.prefix(),
            (ge, le) => {
                let max = if p.is_ipv4() { 32 } else { 128 };
                let lo = ge.unwrap_or(self.prefix.prefix());
                let hi = le.unwrap_or(max);
                (lo..=hi).contains(&p.prefix())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Any entry of the list matches the prefix.
    Prefix(Vec<PrefixEntry>),
    Community(u32),
    LargeCommunity((u32, u32, u32)),
    /// The AS path's length (RFC 4271 §9.1.2.2 counting) is at most this.
    AsPathLenAtMost(usize),
    AsPathLenAtLeast(usize),
    /// The route came through this neighbouring AS (the first AS of the path).
    NeighborAs(u32),
    /// The AS path starts with these AS numbers, in order.
    AsPathPrefix(Vec<u32>),
    /// LOCAL_PREF is this.
    LocalPref(u32),
    /// The route was learned from a BGP peer (not originated here).
    Learned,
    Not(Box<Match>),
    Any(Vec<Match>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SetNextHop(IpAddr),
    SetLocalPref(u32),
    SetMed(u32),
    AddCommunity(u32),
    RemoveCommunity(u32),
    AddLargeCommunity((u32, u32, u32)),
    RemoveLargeCommunity((u32, u32, u32)),
    /// Prepend this AS this many times.
    Prepend(u32, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub name: String,
    /// All must hold (none: always).
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    /// None: apply the actions and go on to the next term.
    pub verdict: Option<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub terms: Vec<Term>,
    /// When no term decides.
    pub default: Verdict,
}

fn path_len(a: &Attributes) -> usize {
    a.as_path
        .as_ref()
        .map_or(0, |p| p.iter().map(AsSegment::path_len).sum())
}

impl Match {
    /// Whether the match holds for a learned route.
    pub fn holds(&self, prefix: &IpNetwork, a: &Attributes) -> bool {
        self.holds_for(prefix, a, true)
    }

    /// Whether the match holds (`learned`: the route came from a peer).
    pub fn holds_for(&self, prefix: &IpNetwork, a: &Attributes, learned: bool) -> bool {
        match self {
            Match::Prefix(list) => list.iter().any(|e| e.matches(prefix)),
            Match::Community(c) => a.communities.contains(c),
            Match::LargeCommunity(c) => a.large_communities.contains(c),
            Match::AsPathLenAtMost(n) => path_len(a) <= *n,
            Match::AsPathLenAtLeast(n) => path_len(a) >= *n,
            Match::NeighborAs(asn) => a
                .as_path
                .as_ref()
                .and_then(|p| p.first())
                .is_some_and(|s| matches!(s, AsSegment::Sequence(v) if v.first() == Some(asn))),
            Match::AsPathPrefix(want) => {
                let path: Vec<u32> = a
                    .as_path
                    .iter()
                    .flatten()
                    .take_while(|s| matches!(s, AsSegment::Sequence(_)))
                    .flat_map(|s| s.asns().to_vec())
                    .take(want.len())
                    .collect();
                path == *want
            }
            Match::LocalPref(v) => a.local_pref == Some(*v),
            Match::Learned => learned,
            Match::Not(m) => !m.holds_for(prefix, a, learned),
            Match::Any(ms) => ms.iter().any(|m| m.holds_for(prefix, a, learned)),
        }
    }
}

impl Action {
    pub fn apply(&self, a: &mut Attributes) {
        match self {
            Action::SetNextHop(IpAddr::V4(nh)) => a.next_hop = Some(*nh),
            Action::SetNextHop(IpAddr::V6(nh)) => {
                if let Some(r) = a.mp_reach.as_mut() {
                    r.next_hops = vec![IpAddr::V6(*nh)];
                }
            }
            Action::SetLocalPref(v) => a.local_pref = Some(*v),
            Action::SetMed(v) => a.med = Some(*v),
            Action::AddCommunity(c) => {
                if !a.communities.contains(c) {
                    a.communities.push(*c);
                }
            }
            Action::RemoveCommunity(c) => a.communities.retain(|x| x != c),
            Action::AddLargeCommunity(c) => {
                if !a.large_communities.contains(c) {
                    a.large_communities.push(*c);
                }
            }
            Action::RemoveLargeCommunity(c) => a.large_communities.retain(|x| x != c),
            Action::Prepend(asn, n) => {
                let path = a.as_path.get_or_insert_with(Vec::new);
                let extra = std::iter::repeat_n(*asn, usize::from(*n));
                match path.first_mut() {
                    Some(AsSegment::Sequence(v)) if v.len() + usize::from(*n) <= 255 => {
                        v.splice(0..0, extra);
                    }
                    _ => path.insert(0, AsSegment::Sequence(extra.collect())),
                }
            }
        }
    }
}

impl Policy {
    pub fn accept_all() -> Policy {
        Policy {
            terms: vec![],
            default: Verdict::Accept,
        }
    }

    /// Runs the terms over a learned route, changing its attributes as they say.
    pub fn apply(&self, prefix: &IpNetwork, a: &mut Attributes) -> Verdict {
        self.apply_route(prefix, a, true)
    }

    /// Runs the terms over a route (`learned`: from a peer, not originated here).
    pub fn apply_route(&self, prefix: &IpNetwork, a: &mut Attributes, learned: bool) -> Verdict {
        for t in &self.terms {
            if t.matches.iter().all(|m| m.holds_for(prefix, a, learned)) {
                t.actions.iter().for_each(|x| x.apply(a));
                if let Some(v) = t.verdict {
                    return v;
                }
            }
        }
        self.default
    }

    /// Brindle's node export: the node's blocks of these pools (exactly the block size),
    /// never longer prefixes inside them; nothing else.
    pub fn node_export(pools: &[(IpNetwork, u8)]) -> Policy {
        let blocks = pools
            .iter()
            .map(|(p, bs)| PrefixEntry {
                prefix: *p,
                ge: Some(*bs),
                le: Some(*bs),
            })
            .collect();
        Policy {
            terms: vec![Term {
                name: "blocks".into(),
                matches: vec![Match::Prefix(blocks)],
                actions: vec![],
                verdict: Some(Verdict::Accept),
            }],
            default: Verdict::Reject,
        }
    }

    /// Brindle's node import from other nodes: anything inside the pools; nothing else.
    pub fn accept_pools(pools: &[IpNetwork]) -> Policy {
        let inside = pools
            .iter()
            .map(|p| PrefixEntry {
                prefix: *p,
                ge: Some(p.prefix()),
                le: None,
            })
            .collect();
        Policy {
            terms: vec![Term {
                name: "pool routes".into(),
                matches: vec![Match::Prefix(inside)],
                actions: vec![],
                verdict: Some(Verdict::Accept),
            }],
            default: Verdict::Reject,
        }
    }
}
