//! Adj-RIB-Out: what has been advertised to one peer, so that a Loc-RIB change turns into
//! exactly the announcements and withdrawals that peer needs, with the export rules of
//! [`Rib::export`], the peer's export policy, next-hop-self, and add-path send (RFC 7911:
//! every equal-cost path, each under its own path identifier).
//!
//! Attributes are shared (`Arc`): a reflector with 1,000 clients holds one copy of each
//! exported attribute set, not one per client.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

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

type Sent = Vec<(Option<u32>, Arc<Attributes>)>;

pub struct AdjRibOut {
    pub settings: ExportSettings,
    sent: HashMap<IpNetwork, Sent>,
}

impl AdjRibOut {
    pub fn new(settings: ExportSettings) -> AdjRibOut {
        AdjRibOut {
            settings,
            sent: HashMap::new(),
        }
    }

    /// What this peer should now hear about `change.prefix`.
    pub fn update(&mut self, rib: &Rib, change: &Change) -> Vec<Advert> {
        let s = self.settings.clone();
        self.update_with(change, |p| s.export(rib, &change.prefix, p).map(Arc::new))
    }

    /// Like [`update`](Self::update), with the export decision supplied by the caller (who
    /// may share one result between peers that export alike).
    pub fn update_with(
        &mut self,
        change: &Change,
        mut export: impl FnMut(&Path) -> Option<Arc<Attributes>>,
    ) -> Vec<Advert> {
        let mut want: Sent = if self.settings.add_path {
            change
                .multipath
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((Some(i as u32 + 1), export(p)?)))
                .collect()
        } else {
            change
                .best
                .iter()
                .filter_map(|p| Some((None, export(p)?)))
                .collect()
        };
        let prefix = change.prefix;
        let before = self.sent.remove(&prefix).unwrap_or_default();
        let mut out = vec![];
        // Withdraw what was sent and is no longer wanted.
        for (id, _) in &before {
            if !want.iter().any(|(w, _)| w == id) {
                out.push(Advert {
                    prefix,
                    path_id: *id,
                    attrs: None,
                });
            }
        }
        // Announce what is new or changed.
        want.sort_by_key(|(id, _)| *id);
        for (id, a) in &want {
            let same = before
                .iter()
                .any(|(b, x)| b == id && (Arc::ptr_eq(x, a) || x == a));
            if !same {
                out.push(Advert {
                    prefix,
                    path_id: *id,
                    attrs: Some(a.clone()),
                });
            }
        }
        if !want.is_empty() {
            want.shrink_to_fit();
            self.sent.insert(prefix, want);
        }
        out
    }

    /// Everything currently advertised (for a route refresh request), in prefix order.
    pub fn all(&self) -> Vec<Advert> {
        let mut v: Vec<Advert> = self
            .sent
            .iter()
            .flat_map(|(p, sent)| {
                sent.iter().map(|(id, a)| Advert {
                    prefix: *p,
                    path_id: *id,
                    attrs: Some(a.clone()),
                })
            })
            .collect();
        v.sort_by_key(|a| (a.prefix, a.path_id));
        v
    }

    /// How many (prefix, path id) pairs are advertised.
    pub fn len(&self) -> usize {
        self.sent.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}
