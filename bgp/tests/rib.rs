//! The RIB: decision process step by step, against a brute-force model on random inputs,
//! route reflection, loops, graceful-restart stale sweep, multipath.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use brindle_bgp::codec::{community, AsSegment, Attributes, Origin};
use brindle_bgp::rib::{Path, PeerInfo, Refused, Rib, LOCAL};
use common::{net, peer};
use ipnetwork::IpNetwork;
use proptest::prelude::*;

const LOCAL_AS: u32 = 64512;

fn rib() -> Rib {
    let mut r = Rib::new(LOCAL_AS, Ipv4Addr::new(198, 18, 1, 100));
    r.add_peer(peer(1, LOCAL_AS, true)); // iBGP, RR client
    r.add_peer(peer(2, LOCAL_AS, true)); // iBGP, RR client
    r.add_peer(peer(3, LOCAL_AS, false)); // iBGP, not a client
    r.add_peer(peer(4, 65001, false)); // eBGP
    r.add_peer(peer(5, 65002, false)); // eBGP
    r
}

fn attrs(path: &[u32], lp: Option<u32>, med: Option<u32>, origin: Origin) -> Attributes {
    Attributes {
        origin: Some(origin),
        as_path: Some(if path.is_empty() {
            vec![]
        } else {
            vec![AsSegment::Sequence(path.to_vec())]
        }),
        next_hop: Some(Ipv4Addr::new(198, 18, 0, 9)),
        local_pref: lp,
        med,
        ..Attributes::default()
    }
}

fn path(peer: u32, a: Attributes) -> Path {
    Path {
        peer,
        path_id: None,
        attrs: Arc::new(a),
        stale: false,
    }
}

#[test]
fn decision_steps_in_order() {
    let r = rib();
    let best = |paths: Vec<Path>| r.decide(&paths).map(|i| paths[i].peer);
    // (a) local preference.
    assert_eq!(
        best(vec![
            path(1, attrs(&[], Some(100), None, Origin::Igp)),
            path(2, attrs(&[], Some(200), None, Origin::Igp))
        ]),
        Some(2)
    );
    // (b) AS path length.
    assert_eq!(
        best(vec![
            path(4, attrs(&[65001, 65010], None, None, Origin::Igp)),
            path(5, attrs(&[65002], None, None, Origin::Igp))
        ]),
        Some(5)
    );
    // (c) origin.
    assert_eq!(
        best(vec![
            path(4, attrs(&[65001], None, None, Origin::Incomplete)),
            path(5, attrs(&[65002], None, None, Origin::Egp))
        ]),
        Some(5)
    );
    // MED only between paths from the same neighbouring AS...
    assert_eq!(
        best(vec![
            path(4, attrs(&[65001], None, Some(50), Origin::Igp)),
            path(1, attrs(&[65001], None, Some(10), Origin::Igp))
        ]),
        Some(1)
    );
    // ...otherwise it does not decide: eBGP over iBGP does.
    assert_eq!(
        best(vec![
            path(4, attrs(&[65001], None, Some(50), Origin::Igp)),
            path(1, attrs(&[65009], None, Some(10), Origin::Igp))
        ]),
        Some(4)
    );
    // A missing MED is the lowest.
    assert_eq!(
        best(vec![
            path(4, attrs(&[65001], None, Some(1), Origin::Igp)),
            path(5, attrs(&[65001], None, None, Origin::Igp))
        ]),
        Some(5)
    );
    // Lowest router ID, ORIGINATOR_ID standing in for it.
    let mut reflected = attrs(&[], None, None, Origin::Igp);
    reflected.originator_id = Some(Ipv4Addr::new(1, 1, 1, 1));
    assert_eq!(
        best(vec![
            path(1, attrs(&[], None, None, Origin::Igp)),
            path(3, reflected)
        ]),
        Some(3)
    );
    // Shorter CLUSTER_LIST.
    let mut a = attrs(&[], None, None, Origin::Igp);
    a.originator_id = Some(Ipv4Addr::new(9, 9, 9, 9));
    let mut b = a.clone();
    a.cluster_list = vec![Ipv4Addr::new(1, 0, 0, 1), Ipv4Addr::new(1, 0, 0, 2)];
    b.cluster_list = vec![Ipv4Addr::new(1, 0, 0, 3)];
    assert_eq!(best(vec![path(1, a.clone()), path(2, b)]), Some(2));
    // Finally the lowest peer address.
    assert_eq!(best(vec![path(2, a.clone()), path(1, a)]), Some(1));
}

#[test]
fn reflection_rules() {
    let r = rib();
    let from_client = path(1, attrs(&[], Some(150), None, Origin::Igp));
    let from_nonclient = path(3, attrs(&[], None, None, Origin::Igp));
    let (c2, nc3, e4) = (
        peer(2, LOCAL_AS, true),
        peer(3, LOCAL_AS, false),
        peer(4, 65001, false),
    );
    // A client's route: to the other client and to the non-client, with RFC 4456 attributes.
    let a = r.export(&from_client, &c2).expect("reflected to a client");
    assert_eq!(a.originator_id, Some(Ipv4Addr::new(198, 18, 1, 1)));
    assert_eq!(a.cluster_list, vec![Ipv4Addr::new(198, 18, 1, 100)]);
    assert!(r.export(&from_client, &nc3).is_some());
    assert!(
        r.export(&from_client, &peer(1, LOCAL_AS, true)).is_none(),
        "never back to its sender"
    );
    // A non-client's route: to clients only.
    assert!(r.export(&from_nonclient, &c2).is_some());
    assert!(r
        .export(&from_nonclient, &peer(6, LOCAL_AS, false))
        .is_none());
    // To eBGP: our AS prepended, LOCAL_PREF and reflection attributes gone.
    let a = r.export(&from_client, &e4).unwrap();
    assert_eq!(a.as_path, Some(vec![AsSegment::Sequence(vec![LOCAL_AS])]));
    assert_eq!(a.local_pref, None);
    assert!(a.cluster_list.is_empty() && a.originator_id.is_none());
    // NO_EXPORT stays inside the AS; NO_ADVERTISE goes nowhere.
    let mut ne = attrs(&[], None, None, Origin::Igp);
    ne.communities = vec![community::NO_EXPORT];
    assert!(r.export(&path(LOCAL, ne.clone()), &e4).is_none());
    assert!(r.export(&path(LOCAL, ne), &c2).is_some());
    let mut na = attrs(&[], None, None, Origin::Igp);
    na.communities = vec![community::NO_ADVERTISE];
    assert!(r.export(&path(LOCAL, na), &c2).is_none());
}

#[test]
fn loops_are_refused() {
    let r = rib();
    assert_eq!(
        r.check_import(4, &attrs(&[65001, LOCAL_AS], None, None, Origin::Igp)),
        Err(Refused::AsLoop)
    );
    let mut a = attrs(&[], None, None, Origin::Igp);
    a.originator_id = Some(r.router_id);
    assert_eq!(r.check_import(1, &a), Err(Refused::OriginatorIsUs));
    let mut a = attrs(&[], None, None, Origin::Igp);
    a.cluster_list = vec![r.router_id];
    assert_eq!(r.check_import(1, &a), Err(Refused::ClusterLoop));
    assert_eq!(
        r.check_import(4, &attrs(&[65001], None, None, Origin::Igp)),
        Ok(())
    );
}

#[test]
fn stale_paths_survive_a_restart_until_end_of_rib() {
    let mut r = rib();
    let (a, b) = (net("10.244.1.0/26"), net("10.244.2.0/26"));
    r.insert(a, path(4, attrs(&[65001], None, None, Origin::Igp)));
    r.insert(b, path(4, attrs(&[65001], None, None, Origin::Igp)));
    r.mark_stale(4);
    assert!(r.best(&a).unwrap().stale, "still routed, marked stale");
    // After the restart the peer re-announces only `a`, then sends End-of-RIB.
    r.insert(a, path(4, attrs(&[65001], None, None, Origin::Igp)));
    let changes = r.sweep_stale(4);
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].prefix, changes[0].best.clone()), (b, None));
    assert!(!r.best(&a).unwrap().stale);
    assert!(r.best(&b).is_none());
}

#[test]
fn multipath_keeps_equal_cost_paths() {
    let mut r = rib();
    let p = net("10.244.3.0/26");
    r.insert(p, path(4, attrs(&[65001], None, None, Origin::Igp)));
    let mut other = peer(6, 65001, false);
    other.addr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 60));
    r.add_peer(other);
    let c = r
        .insert(p, path(6, attrs(&[65001], None, None, Origin::Igp)))
        .expect("multipath grew");
    assert_eq!(c.multipath.len(), 2);
    assert_eq!(c.best.unwrap().peer, 4, "lower address is best");
    // A longer path is not equal cost.
    let c = r.insert(p, path(5, attrs(&[65002, 65003], None, None, Origin::Igp)));
    assert!(c.is_none(), "nothing moved");
    // Withdrawing the best moves it to the other equal path.
    let c = r.withdraw(p, 4, None).unwrap();
    assert_eq!(c.best.unwrap().peer, 6);
    assert_eq!(c.multipath.len(), 1);
}

/// The model: the RFC's steps written out again, over the full set of current paths.
fn brute_force(paths: &[Path], peers: &[PeerInfo]) -> Option<usize> {
    let info = |p: &Path| peers.iter().find(|x| x.id == p.peer).unwrap();
    let ibgp = |p: &Path| info(p).asn == LOCAL_AS;
    let lp = |p: &Path| p.attrs.local_pref.unwrap_or(100);
    let len = |p: &Path| {
        p.attrs
            .as_path
            .as_ref()
            .map_or(0, |s| s.iter().map(|x| x.path_len()).sum::<usize>())
    };
    let org = |p: &Path| p.attrs.origin.unwrap() as u8;
    let nas = |p: &Path| match p.attrs.as_path.as_ref().and_then(|s| s.first()) {
        Some(AsSegment::Sequence(v)) => v.first().copied(),
        _ => None,
    };
    let med = |p: &Path| p.attrs.med.unwrap_or(0);
    let mut c: Vec<usize> = (0..paths.len()).collect();
    for step in 0..7 {
        let survivors: Vec<usize> = c
            .iter()
            .copied()
            .filter(|&i| {
                let p = &paths[i];
                c.iter().all(|&j| {
                    let q = &paths[j];
                    match step {
                        0 => lp(p) >= lp(q),
                        1 => len(p) <= len(q),
                        2 => org(p) <= org(q),
                        3 => nas(p) != nas(q) || med(p) <= med(q),
                        4 => !ibgp(p) || ibgp(q),
                        5 => {
                            let id = |x: &Path| {
                                u32::from(x.attrs.originator_id.unwrap_or(info(x).router_id))
                            };
                            id(p) <= id(q)
                        }
                        _ => p.attrs.cluster_list.len() <= q.attrs.cluster_list.len(),
                    }
                })
            })
            .collect();
        c = survivors;
    }
    c.into_iter()
        .min_by_key(|&i| (info(&paths[i]).addr, paths[i].path_id))
}

#[derive(Debug, Clone)]
enum Op {
    Announce {
        prefix: u8,
        peer: u32,
        path_id: u8,
        lp: Option<u32>,
        path: Vec<u32>,
        med: Option<u32>,
        origin: u8,
        orig_id: Option<u8>,
        clusters: u8,
    },
    Withdraw {
        prefix: u8,
        peer: u32,
        path_id: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 1u32..=5, 0u8..2, proptest::option::of(prop_oneof![Just(100u32), Just(200)]),
              prop::collection::vec(prop_oneof![Just(65001u32), Just(65002), Just(65003)], 0..3),
              proptest::option::of(0u32..3), 0u8..3, proptest::option::of(1u8..4), 0u8..3)
            .prop_map(|(prefix, peer, path_id, lp, path, med, origin, orig_id, clusters)| Op::Announce { prefix, peer, path_id, lp, path, med, origin, orig_id, clusters }),
        1 => (0u8..4, 1u32..=5, 0u8..2).prop_map(|(prefix, peer, path_id)| Op::Withdraw { prefix, peer, path_id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn loc_rib_best_equals_brute_force(ops in prop::collection::vec(op(), 1..60)) {
        let mut r = rib();
        let peers: Vec<PeerInfo> = vec![peer(1, LOCAL_AS, true), peer(2, LOCAL_AS, true), peer(3, LOCAL_AS, false), peer(4, 65001, false), peer(5, 65002, false)];
        let prefixes: Vec<IpNetwork> = (0..4).map(|i| net(&format!("10.244.{i}.0/26"))).collect();
        for op in ops {
            match op {
                Op::Announce { prefix, peer, path_id, lp, path: p, med, origin, orig_id, clusters } => {
                    let mut a = attrs(&p, lp, med, [Origin::Igp, Origin::Egp, Origin::Incomplete][origin as usize]);
                    a.originator_id = orig_id.map(|x| Ipv4Addr::new(198, 18, 1, x));
                    a.cluster_list = (0..clusters).map(|c| Ipv4Addr::new(10, 0, 0, c)).collect();
                    r.insert(prefixes[prefix as usize], Path { peer, path_id: Some(u32::from(path_id)), attrs: Arc::new(a), stale: false });
                }
                Op::Withdraw { prefix, peer, path_id } => {
                    r.withdraw(prefixes[prefix as usize], peer, Some(u32::from(path_id)));
                }
            }
            for p in &prefixes {
                let paths = r.paths(p).to_vec();
                let want = brute_force(&paths, &peers).map(|i| paths[i].clone());
                prop_assert_eq!(r.best(p).cloned(), want);
            }
        }
    }
}
