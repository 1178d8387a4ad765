//! The RIB: Adj-RIB-In per peer, the Loc-RIB with RFC 4271 §9.1's decision process (and
//! RFC 4456's reflection tie-breakers), multipath sets for ECMP, graceful-restart stale
//! marking, and the export rules of iBGP split horizon and route reflection.
//!
//! One task owns a `Rib`; everything reaches it as plain calls from that task.
//!
//! Memory: an entry is only its paths (inline when there is one), kept with the best path
//! first and its equal-cost companions right after it, so the outcome of the decision is
//! read off the order instead of being stored twice. With 1M prefixes that is what keeps
//! the table near BIRD's size.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use smallvec::SmallVec;

use crate::codec::{AsSegment, Attributes, Origin};

mod table;
use table::Table;

/// Paths of one prefix; one inline (the common case), more on the heap.
pub type Paths = SmallVec<[Path; 1]>;

pub type PeerId = u32;

/// Who a path came from. `PeerId` 0 is reserved for routes this speaker originates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub addr: IpAddr,
    /// A route-reflection client of ours (RFC 4456).
    pub rr_client: bool,
    /// A node of this cluster (see [`Rib::no_transit`]).
    pub member: bool,
}

pub const LOCAL: PeerId = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub peer: PeerId,
    pub path_id: Option<u32>,
    pub attrs: Arc<Attributes>,
    /// Kept through the peer's graceful restart, until its End-of-RIB.
    pub stale: bool,
}

/// What changed for a prefix: the new best path (None: unreachable) and its equal-cost
/// companions (the best included) for ECMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNetwork,
    pub best: Option<Path>,
    pub multipath: Paths,
    /// The best path before this change (None for a new prefix, and in a table dump):
    /// lets an exporter tell whether a peer needs a withdraw without remembering.
    pub previous: Option<Path>,
}

/// Why an imported path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    AsLoop,
    OriginatorIsUs,
    ClusterLoop,
}

pub struct Rib {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Set when this speaker reflects routes (RFC 4456); defaults to the router ID.
    pub cluster_id: Option<Ipv4Addr>,
    /// Never transit: a learned path goes only from a member to a member by reflection
    /// (iBGP on both sides, RFC 4456's rules); everything else exported is our own.
    pub no_transit: bool,
    peers: HashMap<PeerId, PeerInfo>,
    /// Prefix → every path (from any peer), best first.
    table: Table<Entry>,
    /// How many paths each peer has in the table.
    counts: HashMap<PeerId, usize>,
}

/// What identifies a path for change detection: who, which path ID, which attributes.
type PathKey = (PeerId, Option<u32>, usize);

fn key(p: &Path) -> PathKey {
    (p.peer, p.path_id, Arc::as_ptr(&p.attrs) as usize)
}

/// The decision's outcome as identities: the best and the multipath set.
type Outcome = (Option<PathKey>, SmallVec<[PathKey; 1]>);

#[derive(Default)]
struct Entry {
    /// Best first, then its equal-cost companions, then the rest.
    paths: Paths,
}

impl Entry {
    /// How many leading paths form the multipath set.
    fn multipath_len(&self, d: &Decider) -> usize {
        match self.paths.first() {
            None => 0,
            Some(best) => {
                1 + self.paths[1..]
                    .iter()
                    .take_while(|p| d.equal_cost(p, best))
                    .count()
            }
        }
    }

    fn outcome(&self, d: &Decider) -> Outcome {
        let n = self.multipath_len(d);
        (
            self.paths.first().map(key),
            self.paths[..n].iter().map(key).collect(),
        )
    }

    fn change(&self, prefix: IpNetwork, d: &Decider, previous: Option<Path>) -> Change {
        let n = self.multipath_len(d);
        Change {
            prefix,
            best: self.paths.first().cloned(),
            multipath: self.paths[..n].iter().cloned().collect(),
            previous,
        }
    }

    /// Runs the decision and orders the paths: best, equal-cost companions, the rest.
    fn reorder(&mut self, d: &Decider) {
        if self.paths.len() < 2 {
            return;
        }
        if let Some(i) = d.decide(&self.paths) {
            self.paths.swap(0, i);
            let (best, rest) = self.paths.split_at_mut(1);
            // Stable partition of the rest: equal-cost paths first.
            let mut j = 0;
            for i in 0..rest.len() {
                if d.equal_cost(&rest[i], &best[0]) {
                    rest[j..=i].rotate_right(1);
                    j += 1;
                }
            }
        }
    }
}

fn local_pref(a: &Attributes) -> u32 {
    a.local_pref.unwrap_or(100)
}

fn as_path_len(a: &Attributes) -> usize {
    a.as_path
        .as_ref()
        .map_or(0, |p| p.iter().map(AsSegment::path_len).sum())
}

fn origin_rank(a: &Attributes) -> u8 {
    a.origin.map_or(Origin::Incomplete as u8, |o| o as u8)
}

/// The neighbouring AS MED is compared within (RFC 4271 §9.1.2.2 (c)): the first AS of the
/// path; None for paths from our own AS.
fn neighbor_as(a: &Attributes) -> Option<u32> {
    a.as_path.as_ref()?.iter().find_map(|s| match s {
        AsSegment::Sequence(v) => v.first().copied(),
        _ => None,
    })
}

/// The read-only view the decision process needs; kept apart from the table so a path set
/// can be decided while its entry is borrowed (one map lookup per change).
struct Decider<'a> {
    local_as: u32,
    router_id: Ipv4Addr,
    peers: &'a HashMap<PeerId, PeerInfo>,
}

impl Decider<'_> {
    fn ibgp(&self, peer: PeerId) -> bool {
        peer == LOCAL
            || self
                .peers
                .get(&peer)
                .is_some_and(|p| p.asn == self.local_as)
    }

    /// Same up to (and including) the eBGP-over-iBGP step: candidates for ECMP.
    fn equal_cost(&self, a: &Path, b: &Path) -> bool {
        local_pref(&a.attrs) == local_pref(&b.attrs)
            && as_path_len(&a.attrs) == as_path_len(&b.attrs)
            && origin_rank(&a.attrs) == origin_rank(&b.attrs)
            && a.attrs.med.unwrap_or(0) == b.attrs.med.unwrap_or(0)
            && neighbor_as(&a.attrs) == neighbor_as(&b.attrs)
            && self.ibgp(a.peer) == self.ibgp(b.peer)
    }

    /// RFC 4271 §9.1.2.2, steps (a)–(f), then RFC 4456 §9's ORIGINATOR_ID and CLUSTER_LIST
    /// rules, by elimination over the candidates. Stale paths lose to fresh ones of equal
    /// preference only through the normal steps (RFC 4724 leaves them usable).
    fn decide(&self, paths: &[Path]) -> Option<usize> {
        let mut c: Vec<usize> = (0..paths.len()).collect();
        let keep_min = |c: &mut Vec<usize>, key: &dyn Fn(&Path) -> u64| {
            if let Some(m) = c.iter().map(|&i| key(&paths[i])).min() {
                c.retain(|&i| key(&paths[i]) == m);
            }
        };
        keep_min(&mut c, &|p| u64::from(u32::MAX - local_pref(&p.attrs)));
        keep_min(&mut c, &|p| as_path_len(&p.attrs) as u64);
        keep_min(&mut c, &|p| u64::from(origin_rank(&p.attrs)));
        // (c) MED: drop a path if another from the same neighbouring AS has a lower MED
        // (a missing MED counts as 0, the lowest).
        let snapshot = c.clone();
        c.retain(|&i| {
            let (na, med) = (
                neighbor_as(&paths[i].attrs),
                paths[i].attrs.med.unwrap_or(0),
            );
            !snapshot.iter().any(|&j| {
                neighbor_as(&paths[j].attrs) == na && paths[j].attrs.med.unwrap_or(0) < med
            })
        });
        // (d) eBGP over iBGP.
        keep_min(&mut c, &|p| u64::from(self.ibgp(p.peer)));
        // (f) lowest BGP identifier, the ORIGINATOR_ID when there is one (RFC 4456 §9).
        let id = |p: &Path| -> u32 {
            let peer_id = self
                .peers
                .get(&p.peer)
                .map_or(self.router_id, |x| x.router_id);
            u32::from(p.attrs.originator_id.unwrap_or(peer_id))
        };
        keep_min(&mut c, &|p| u64::from(id(p)));
        keep_min(&mut c, &|p| p.attrs.cluster_list.len() as u64);
        // (g) lowest peer address (then path ID, to be deterministic with add-path).
        c.into_iter().min_by(|&a, &b| {
            let addr = |p: &Path| self.peers.get(&p.peer).map(|x| x.addr);
            addr(&paths[a])
                .cmp(&addr(&paths[b]))
                .then_with(|| paths[a].path_id.cmp(&paths[b].path_id))
                .then(Ordering::Equal)
        })
    }
}

impl Rib {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> Rib {
        Rib {
            local_as,
            router_id,
            cluster_id: None,
            no_transit: false,
            peers: HashMap::new(),
            table: Table::default(),
            counts: HashMap::new(),
        }
    }

    pub fn add_peer(&mut self, p: PeerInfo) {
        self.peers.insert(p.id, p);
    }

    fn decider(&self) -> Decider<'_> {
        Decider {
            local_as: self.local_as,
            router_id: self.router_id,
            peers: &self.peers,
        }
    }

    fn ibgp(&self, peer: PeerId) -> bool {
        self.decider().ibgp(peer)
    }

    fn cluster(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }

    /// Import checks: AS loop (eBGP), ORIGINATOR_ID is us, our cluster in CLUSTER_LIST.
    pub fn check_import(&self, peer: PeerId, a: &Attributes) -> Result<(), Refused> {
        if !self.ibgp(peer)
            && a.as_path
                .as_ref()
                .is_some_and(|p| p.iter().any(|s| s.asns().contains(&self.local_as)))
        {
            return Err(Refused::AsLoop);
        }
        if a.originator_id == Some(self.router_id) {
            return Err(Refused::OriginatorIsUs);
        }
        if a.cluster_list.contains(&self.cluster()) {
            return Err(Refused::ClusterLoop);
        }
        Ok(())
    }

    /// A path from `peer` for `prefix` (replacing the same peer's path with the same path
    /// ID). Returns the change to the Loc-RIB, if the best or multipath set moved.
    pub fn insert(&mut self, prefix: IpNetwork, path: Path) -> Option<Change> {
        let d = Decider {
            local_as: self.local_as,
            router_id: self.router_id,
            peers: &self.peers,
        };
        let e = self.table.entry_or_default(prefix);
        let before = e.outcome(&d);
        let previous = e.paths.first().cloned();
        match e
            .paths
            .iter_mut()
            .find(|p| p.peer == path.peer && p.path_id == path.path_id)
        {
            Some(p) => *p = path,
            None => {
                *self.counts.entry(path.peer).or_default() += 1;
                e.paths.push(path);
            }
        }
        e.reorder(&d);
        (e.outcome(&d) != before).then(|| e.change(prefix, &d, previous))
    }

    pub fn withdraw(
        &mut self,
        prefix: IpNetwork,
        peer: PeerId,
        path_id: Option<u32>,
    ) -> Option<Change> {
        self.remove_where(prefix, |p| p.peer == peer && p.path_id == path_id)
    }

    /// Removes the paths `gone` picks from one prefix; the change, if the outcome moved.
    fn remove_where(&mut self, prefix: IpNetwork, gone: impl Fn(&Path) -> bool) -> Option<Change> {
        let d = Decider {
            local_as: self.local_as,
            router_id: self.router_id,
            peers: &self.peers,
        };
        let e = self.table.get_mut(&prefix)?;
        let before = e.outcome(&d);
        let previous = e.paths.first().cloned();
        let n = e.paths.len();
        let counts = &mut self.counts;
        e.paths.retain(|p| {
            if gone(p) {
                if let Some(c) = counts.get_mut(&p.peer) {
                    *c = c.saturating_sub(1);
                }
                false
            } else {
                true
            }
        });
        if e.paths.len() == n {
            return None;
        }
        e.reorder(&d);
        let change = (e.outcome(&d) != before).then(|| e.change(prefix, &d, previous));
        if e.paths.is_empty() {
            self.table.remove(&prefix);
        }
        change
    }

    /// How many paths `peer` has in the table.
    pub fn path_count(&self, peer: PeerId) -> usize {
        self.counts.get(&peer).copied().unwrap_or(0)
    }

    /// Graceful restart begins (RFC 4724 §4.2): the peer's paths stay, marked stale.
    pub fn mark_stale(&mut self, peer: PeerId) {
        for e in self.table.values_mut() {
            e.paths
                .iter_mut()
                .filter(|p| p.peer == peer)
                .for_each(|p| p.stale = true);
        }
    }

    /// End-of-RIB (or the restart timer): the peer's paths still stale are withdrawn.
    pub fn sweep_stale(&mut self, peer: PeerId) -> Vec<Change> {
        self.sweep_stale_where(peer, |_| true)
    }

    /// End-of-RIB for one family: the peer's stale paths for prefixes of that family.
    pub fn sweep_stale_family(&mut self, peer: PeerId, ipv4: bool) -> Vec<Change> {
        self.sweep_stale_where(peer, |p| p.is_ipv4() == ipv4)
    }

    fn sweep_stale_where(
        &mut self,
        peer: PeerId,
        pick: impl Fn(&IpNetwork) -> bool,
    ) -> Vec<Change> {
        self.stale_prefixes(peer, pick)
            .into_iter()
            .filter_map(|prefix| self.sweep_prefix(prefix, peer))
            .collect()
    }

    /// The prefixes `pick` chooses where `peer` has a stale path: sweep them a slice at a
    /// time with [`Rib::sweep_prefix`] (a full table's changes at once would double memory).
    pub fn stale_prefixes(
        &self,
        peer: PeerId,
        pick: impl Fn(&IpNetwork) -> bool,
    ) -> Vec<IpNetwork> {
        self.table
            .iter()
            .filter(|(k, _)| pick(k))
            .filter(|(_, e)| e.paths.iter().any(|p| p.peer == peer && p.stale))
            .map(|(k, _)| k)
            .collect()
    }

    /// Withdraws `peer`'s stale paths for one prefix.
    pub fn sweep_prefix(&mut self, prefix: IpNetwork, peer: PeerId) -> Option<Change> {
        self.remove_where(prefix, |p| p.peer == peer && p.stale)
    }

    /// The peer is gone: all its paths are withdrawn.
    pub fn drop_peer(&mut self, peer: PeerId) -> Vec<Change> {
        self.mark_stale(peer);
        self.sweep_stale(peer)
    }

    /// The peer is forgotten (after its paths were dropped).
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<PeerInfo> {
        self.counts.remove(&peer);
        self.peers.remove(&peer)
    }

    pub fn peer(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&peer)
    }

    /// One prefix's best path and multipath set, as a change (for redoing its kernel route).
    pub fn current(&self, prefix: &IpNetwork) -> Option<Change> {
        let e = self.table.get(prefix)?;
        Some(e.change(*prefix, &self.decider(), None))
    }

    /// Every prefix with its best path and multipath set, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = Change> + '_ {
        let d = self.decider();
        self.table.iter().map(move |(p, e)| e.change(p, &d, None))
    }

    pub fn best(&self, prefix: &IpNetwork) -> Option<&Path> {
        self.table.get(prefix)?.paths.first()
    }

    /// Every path held for a prefix (all peers, stale ones included).
    pub fn paths(&self, prefix: &IpNetwork) -> &[Path] {
        self.table.get(prefix).map_or(&[], |e| &e.paths)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// RFC 4271 §9.1.2.2's decision over `paths`: the index of the best one.
    pub fn decide(&self, paths: &[Path]) -> Option<usize> {
        self.decider().decide(paths)
    }

    /// Whether `path` goes to `to` (iBGP split horizon, RFC 4456 reflection), and with what
    /// attributes. None: not sent.
    pub fn export(&self, path: &Path, to: &PeerInfo) -> Option<Attributes> {
        if path.peer == to.id {
            return None;
        }
        let from_ibgp = path.peer != LOCAL && self.ibgp(path.peer);
        let to_ibgp = to.asn == self.local_as;
        if self.no_transit && path.peer != LOCAL {
            let from_member = self.peers.get(&path.peer).is_some_and(|p| p.member);
            if !(from_member && to.member && from_ibgp && to_ibgp) {
                return None;
            }
        }
        let mut a = (*path.attrs).clone();
        if from_ibgp && to_ibgp {
            let from_client = self.peers.get(&path.peer).is_some_and(|p| p.rr_client);
            // A non-client's route goes to clients only; a client's to everyone (RFC 4456 §6).
            if !from_client && !to.rr_client {
                return None;
            }
            if a.originator_id.is_none() {
                a.originator_id = self.peers.get(&path.peer).map(|p| p.router_id);
            }
            a.cluster_list.insert(0, self.cluster());
        }
        if !to_ibgp {
            // eBGP: prepend our AS, drop iBGP-only attributes; NO_EXPORT stays inside.
            if a.communities.contains(&crate::codec::community::NO_EXPORT) {
                return None;
            }
            let mut path = a.as_path.take().unwrap_or_default();
            match path.first_mut() {
                Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, self.local_as),
                _ => path.insert(0, AsSegment::Sequence(vec![self.local_as])),
            }
            a.as_path = Some(path);
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
        }
        if a.communities
            .contains(&crate::codec::community::NO_ADVERTISE)
        {
            return None;
        }
        Some(a)
    }
}
