//! Adj-RIB-Out: from Loc-RIB changes to the adverts one peer needs.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;

use brindle_bgp::adj_out::{AdjRibOut, Advert, ExportSettings};
use brindle_bgp::codec::{AsSegment, Attributes, Origin};
use brindle_bgp::policy::{Match, Policy, PrefixEntry, Term, Verdict};
use brindle_bgp::rib::{Path, Rib, LOCAL};
use common::{net, peer};

fn attrs(path: &[u32]) -> Attributes {
    Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![AsSegment::Sequence(path.to_vec())]),
        next_hop: Some(Ipv4Addr::new(198, 18, 0, 50)),
        ..Attributes::default()
    }
}

fn setup() -> Rib {
    let mut r = Rib::new(64512, Ipv4Addr::new(198, 18, 1, 100));
    for p in [
        peer(1, 65001, false),
        peer(2, 65001, false),
        peer(3, 64512, true),
        peer(4, 65009, false),
    ] {
        r.add_peer(p);
    }
    r
}

#[test]
fn announce_once_withdraw_once_and_next_hop_self() {
    let mut rib = setup();
    let mut out = AdjRibOut::new(ExportSettings {
        peer: peer(4, 65009, false),
        policy: Policy::accept_all(),
        next_hop_self: Some(Ipv4Addr::new(198, 18, 0, 100)),
        add_path: false,
    });
    let p = net("10.244.1.0/26");
    let c = rib
        .insert(
            p,
            Path {
                peer: 1,
                path_id: None,
                attrs: Arc::new(attrs(&[65001])),
                stale: false,
            },
        )
        .unwrap();
    let ads = out.update(&rib, &c);
    assert_eq!(ads.len(), 1);
    let a = ads[0].attrs.clone().unwrap();
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(198, 18, 0, 100)));
    assert_eq!(
        a.as_path,
        Some(vec![AsSegment::Sequence(vec![64512, 65001])])
    );
    assert!(out.update(&rib, &c).is_empty(), "nothing new to say");
    let c = rib.withdraw(p, 1, None).unwrap();
    assert_eq!(
        out.update(&rib, &c),
        vec![Advert {
            prefix: p,
            path_id: None,
            attrs: None
        }]
    );
    assert!(out.is_empty());
}

#[test]
fn export_policy_and_split_horizon() {
    let mut rib = setup();
    let only_blocks = Policy {
        terms: vec![Term {
            name: "blocks".into(),
            matches: vec![Match::Prefix(vec![PrefixEntry {
                prefix: net("10.244.0.0/16"),
                ge: Some(26),
                le: Some(26),
            }])],
            actions: vec![],
            verdict: Some(Verdict::Accept),
        }],
        default: Verdict::Reject,
    };
    let mut to_rr_client = AdjRibOut::new(ExportSettings {
        peer: peer(3, 64512, true),
        policy: only_blocks,
        next_hop_self: None,
        add_path: false,
    });
    let c = rib
        .insert(
            net("10.244.2.0/26"),
            Path {
                peer: LOCAL,
                path_id: None,
                attrs: Arc::new(attrs(&[])),
                stale: false,
            },
        )
        .unwrap();
    assert_eq!(
        to_rr_client.update(&rib, &c).len(),
        1,
        "our block goes to the iBGP client"
    );
    let c = rib
        .insert(
            net("10.244.2.5/32"),
            Path {
                peer: LOCAL,
                path_id: None,
                attrs: Arc::new(attrs(&[])),
                stale: false,
            },
        )
        .unwrap();
    assert!(
        to_rr_client.update(&rib, &c).is_empty(),
        "the policy keeps /32s in"
    );
    // A route learned from peer 3 never goes back to it.
    let c = rib
        .insert(
            net("10.244.3.0/26"),
            Path {
                peer: 3,
                path_id: None,
                attrs: Arc::new(attrs(&[])),
                stale: false,
            },
        )
        .unwrap();
    assert!(to_rr_client.update(&rib, &c).is_empty());
}

#[test]
fn add_path_sends_every_equal_cost_path() {
    let mut rib = setup();
    let mut out = AdjRibOut::new(ExportSettings {
        peer: peer(3, 64512, true),
        policy: Policy::accept_all(),
        next_hop_self: None,
        add_path: true,
    });
    let p = net("10.244.4.0/26");
    rib.insert(
        p,
        Path {
            peer: 1,
            path_id: None,
            attrs: Arc::new(attrs(&[65001])),
            stale: false,
        },
    );
    let c = rib
        .insert(
            p,
            Path {
                peer: 2,
                path_id: None,
                attrs: Arc::new(attrs(&[65001])),
                stale: false,
            },
        )
        .unwrap();
    let ads = out.update(&rib, &c);
    assert_eq!(
        ads.iter().map(|a| a.path_id).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    assert_eq!(out.len(), 2);
    let c = rib.withdraw(p, 2, None).unwrap();
    let ads = out.update(&rib, &c);
    assert!(
        ads.contains(&Advert {
            prefix: p,
            path_id: Some(2),
            attrs: None
        }),
        "{ads:?}"
    );
    assert_eq!(out.all().len(), 1);
}
