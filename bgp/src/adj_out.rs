//! Adj-RIB-Out: what has been advertised to one peer, so that a Loc-RIB change turns into
//! exactly the announcements and withdrawals that peer needs, with the export rules of
//! [`Rib::export`], the peer's export policy, next-hop-self, and add-path send (RFC 7911:
//! every equal-cost path, each under its own path identifier).
//!
//! Attributes are shared (`Arc`): a reflector with 1,000 clients holds one copy of each
//! exported attribute set, not one per client.

use std::collections::{btree_map, BTreeMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use smallvec::SmallVec;

use crate::codec::Attributes;
use crate::policy::{Policy, Verdict};
use crate::rib::{Change, Path, PeerInfo, Rib};

/// How routes go out to one peer.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub peer: PeerInfo,
    pub policy: Policy,
    /// Rewrite NEXT_HOP to this address (set it for eBGP peers, whose next hop must be
    /// reachable from them; for iBGP peers when the operator asks for next-hop-self).
    pub next_hop_self: Option<Ipv4Addr>,
    /// Add-path send negotiated for IPv4 unicast: advertise every multipath path.
    pub add_path: bool,
}

impl ExportSettings {
    /// The attributes `path` goes out with to this peer (None: not sent): RFC 4456 / split
    /// horizon rules, next-hop-self, then the export policy.
    pub fn export(&self, rib: &Rib, prefix: &IpNetwork, path: &Path) -> Option<Attributes> {
        let mut a = rib.export(path, &self.peer)?;
        if let Some(nh) = self.next_hop_self {
            a.next_hop = Some(nh);
        }
        (self.policy.apply(prefix, &mut a) == Verdict::Accept).then_some(a)
    }
}

/// One thing to send: announce `attrs` for (prefix, path id), or withdraw it (`attrs` None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub prefix: IpNetwork,
    pub path_id: Option<u32>,
    pub attrs: Option<Arc<Attributes>>,
}

/// What one peer should have for a prefix: nothing (withdraw), one path, or with add-path
/// several, each under its path ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub prefix: IpNetwork,
    pub paths: SmallVec<[(Option<u32>, Arc<Attributes>); 1]>,
}

impl Want {
    /// The peer's want for a Loc-RIB change, given how its paths export to it.
    pub fn of(
        change: &Change,
        add_path: bool,
        mut export: impl FnMut(&Path) -> Option<Arc<Attributes>>,
    ) -> Want {
        let paths = if add_path {
            change
                .multipath
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((Some(i as u32 + 1), export(p)?)))
                .collect()
        } else {
            change
                .best
                .as_ref()
                .and_then(export)
                .map(|a| (None, a))
                .into_iter()
                .collect()
        };
        Want {
            prefix: change.prefix,
            paths,
        }
    }
}

/// What was sent to one peer: one attribute set per prefix, or per (prefix, path ID) with
/// add-path. Sorted maps: at 1M prefixes they cost about half of what hash maps do, and the
/// attribute sets are shared between prefixes and peers.
#[derive(Default)]
pub struct Sent {
    one: BTreeMap<IpNetwork, Arc<Attributes>>,
    many: BTreeMap<(IpNetwork, u32), Arc<Attributes>>,
}

fn same(a: &Arc<Attributes>, b: &Arc<Attributes>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Sent {
    /// Records `w` and appends the adverts that make the peer's view match it: nothing when
    /// it already has exactly that.
    pub fn apply(&mut self, w: Want, out: &mut Vec<Advert>) {
        let prefix = w.prefix;
        let advert = |path_id, attrs| Advert {
            prefix,
            path_id,
            attrs,
        };
        match w.paths.first() {
            Some((Some(_), _)) => {}
            None if self.one.is_empty() && self.many.is_empty() => return,
            None if self.many.is_empty() => {
                if self.one.remove(&prefix).is_some() {
                    out.push(advert(None, None));
                }
                return;
            }
            None => {}
            Some((None, a)) => {
                match self.one.entry(prefix) {
                    btree_map::Entry::Occupied(o) if same(o.get(), a) => {}
                    btree_map::Entry::Occupied(mut o) => {
                        o.insert(a.clone());
                        out.push(advert(None, Some(a.clone())));
                    }
                    btree_map::Entry::Vacant(v) => {
                        v.insert(a.clone());
                        out.push(advert(None, Some(a.clone())));
                    }
                }
                return;
            }
        }
        // Add-path, or a withdraw that may concern add-path entries.
        if self.one.remove(&prefix).is_some() {
            out.push(advert(None, None));
        }
        let before: Vec<(u32, Arc<Attributes>)> = self
            .many
            .range((prefix, 0)..=(prefix, u32::MAX))
            .map(|((_, id), a)| (*id, a.clone()))
            .collect();
        for (id, _) in &before {
            if !w.paths.iter().any(|(w, _)| *w == Some(*id)) {
                self.many.remove(&(prefix, *id));
                out.push(advert(Some(*id), None));
            }
        }
        for (id, a) in w.paths {
            let id = id.unwrap_or(0);
            if !before.iter().any(|(b, x)| *b == id && same(x, &a)) {
                self.many.insert((prefix, id), a.clone());
                out.push(advert(Some(id), Some(a)));
            }
        }
    }

    /// Everything currently advertised, in prefix order.
    pub fn all(&self) -> Vec<Advert> {
        let one = self.one.iter().map(|(p, a)| Advert {
            prefix: *p,
            path_id: None,
            attrs: Some(a.clone()),
        });
        let many = self.many.iter().map(|((p, id), a)| Advert {
            prefix: *p,
            path_id: Some(*id),
            attrs: Some(a.clone()),
        });
        one.chain(many).collect()
    }

    /// Forgets what was sent (before sending the table again, for a route refresh).
    pub fn clear(&mut self) {
        self.one.clear();
        self.many.clear();
    }

    /// Forgets what was sent in one family (IPv4 when `v4`), keeping the other's.
    pub fn forget(&mut self, v4: bool) {
        self.one.retain(|p, _| p.is_ipv4() != v4);
        self.many.retain(|(p, _), _| p.is_ipv4() != v4);
    }

    /// How many (prefix, path id) pairs are advertised.
    pub fn len(&self) -> usize {
        self.one.len() + self.many.len()
    }

    pub fn is_empty(&self) -> bool {
        self.one.is_empty() && self.many.is_empty()
    }
}

/// Export settings and what was sent, together: for a caller that does both in one place.
/// (The speaker splits them: the core exports, each peer's writer task owns its `Sent`.)
pub struct AdjRibOut {
    pub settings: ExportSettings,
    pub sent: Sent,
}

impl AdjRibOut {
    pub fn new(settings: ExportSettings) -> AdjRibOut {
        AdjRibOut {
            settings,
            sent: Sent::default(),
        }
    }

    /// What this peer should now hear about `change.prefix`.
    pub fn update(&mut self, rib: &Rib, change: &Change) -> Vec<Advert> {
        let s = self.settings.clone();
        self.update_with(change, |p| s.export(rib, &change.prefix, p).map(Arc::new))
    }

    /// Like [`update`](Self::update), with the export decision supplied by the caller.
    pub fn update_with(
        &mut self,
        change: &Change,
        export: impl FnMut(&Path) -> Option<Arc<Attributes>>,
    ) -> Vec<Advert> {
        let mut out = vec![];
        let want = Want::of(change, self.settings.add_path, export);
        self.sent.apply(want, &mut out);
        out
    }

    pub fn all(&self) -> Vec<Advert> {
        self.sent.all()
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}
