//! Adj-RIB-Out: what has been advertised to one peer, so that a Loc-RIB change turns into
//! exactly the announcements and withdrawals that peer needs, with the export rules of
//! [`Rib::export`], the peer's export policy, next-hop-self, and add-path send (RFC 7911:
//! every equal-cost path, each under its own path identifier).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;

use crate::codec::Attributes;
use crate::policy::{Policy, Verdict};
use crate::rib::{Change, PeerInfo, Rib};

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

/// One thing to send: announce `attrs` for (prefix, path id), or withdraw it (`attrs` None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub prefix: IpNetwork,
    pub path_id: Option<u32>,
    pub attrs: Option<Attributes>,
}

pub struct AdjRibOut {
    pub settings: ExportSettings,
    sent: HashMap<(IpNetwork, Option<u32>), Attributes>,
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
        let s = &self.settings;
        let candidates: Vec<(Option<u32>, &crate::rib::Path)> = if s.add_path {
            change
                .multipath
                .iter()
                .enumerate()
                .map(|(i, p)| (Some(i as u32 + 1), p))
                .collect()
        } else {
            change.best.iter().map(|p| (None, p)).collect()
        };
        let mut want: HashMap<Option<u32>, Attributes> = HashMap::new();
        for (id, path) in candidates {
            let Some(mut a) = rib.export(path, &s.peer) else {
                continue;
            };
            if let Some(nh) = s.next_hop_self {
                a.next_hop = Some(nh);
            }
            if s.policy.apply(&change.prefix, &mut a) == Verdict::Accept {
                want.insert(id, a);
            }
        }
        let mut out = vec![];
        // Withdraw what was sent and is no longer wanted.
        let stale: Vec<Option<u32>> = self
            .sent
            .keys()
            .filter(|(p, id)| *p == change.prefix && !want.contains_key(id))
            .map(|(_, id)| *id)
            .collect();
        for id in stale {
            self.sent.remove(&(change.prefix, id));
            out.push(Advert {
                prefix: change.prefix,
                path_id: id,
                attrs: None,
            });
        }
        // Announce what is new or changed.
        let mut ids: Vec<_> = want.keys().copied().collect();
        ids.sort();
        for id in ids {
            let a = want.remove(&id).unwrap_or_default();
            if self.sent.get(&(change.prefix, id)) != Some(&a) {
                self.sent.insert((change.prefix, id), a.clone());
                out.push(Advert {
                    prefix: change.prefix,
                    path_id: id,
                    attrs: Some(a),
                });
            }
        }
        out
    }

    /// Everything currently advertised (for a route refresh request).
    pub fn all(&self) -> Vec<Advert> {
        let mut v: Vec<Advert> = self
            .sent
            .iter()
            .map(|((p, id), a)| Advert {
                prefix: *p,
                path_id: *id,
                attrs: Some(a.clone()),
            })
            .collect();
        v.sort_by_key(|a| (a.prefix, a.path_id));
        v
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}
