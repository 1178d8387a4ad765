//! Byte vectors both ways, RFC 7606 outcomes, and property tests.

use std::net::Ipv4Addr;

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn enc(m: &Message, ctx: &Ctx) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(m, ctx, &mut b);
    b.to_vec()
}

fn four() -> Ctx {
    Ctx {
        four_octet_as: true,
        ..Ctx::default()
    }
}

/// Both directions: the bytes decode to `m`, and `m` encodes to the bytes.
fn both_ways(bytes: &[u8], m: &Message, ctx: &Ctx) {
    assert_eq!(message_len(bytes), Some(bytes.len()));
    assert_eq!(&decode(bytes, ctx).unwrap(), m);
    assert_eq!(enc(m, ctx), bytes);
}

#[test]
fn keepalive() {
    both_ways(
        &hex(&format!("{MARKER} 0013 04")),
        &Message::Keepalive,
        &Ctx::default(),
    );
}

#[test]
fn open_with_capabilities() {
    // AS 65001, hold 90, id 198.18.0.1; MP IPv4/unicast, route refresh, 4-octet AS 65001,
    // graceful restart 120 s with IPv4/unicast forwarding preserved, add-path both.
    let bytes = hex(&format!(
        "{MARKER} 003b 01  04 fde9 005a c6120001  1e 02 1c
         01 04 0001 00 01   02 00   41 04 0000fde9
         40 06 0078 0001 01 80   45 04 0001 01 03"
    ));
    let open = Open {
        version: 4,
        my_as: 65001,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(198, 18, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: Afi::Ipv4,
                safi: 1,
            },
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
            Capability::GracefulRestart {
                restarting: false,
                time: 120,
                families: vec![GrFamily {
                    afi: Afi::Ipv4,
                    safi: 1,
                    forwarding: true,
                }],
            },
            Capability::AddPath(vec![(Afi::Ipv4, 1, AddPathMode::Both)]),
        ],
    };
    both_ways(&bytes, &Message::Open(open.clone()), &Ctx::default());
    assert_eq!(open.asn(), 65001);
    // A 4-octet AS puts AS_TRANS in the 2-octet field.
    let big = Open::new(4_200_000_001, 90, Ipv4Addr::new(198, 18, 0, 1), vec![]);
    assert_eq!(big.my_as, AS_TRANS);
    assert_eq!(big.asn(), 4_200_000_001);
}

#[test]
fn open_errors_map_to_notifications() {
    let bad_version = hex(&format!("{MARKER} 001d 01 03 fde9 005a c6120001 00"));
    let e = decode(&bad_version, &Ctx::default()).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedVersion(3));
    assert_eq!(e.notification(), (2, 1, vec![0, 4]));
    let bad_param = hex(&format!("{MARKER} 001f 01 04 fde9 005a c6120001 02 01 00"));
    assert_eq!(
        decode(&bad_param, &Ctx::default())
            .unwrap_err()
            .notification()
            .1,
        4
    );
    // An unknown capability is kept, not an error (RFC 5492).
    let unknown_cap = hex(&format!(
        "{MARKER} 0022 01 04 fde9 005a c6120001 05 02 03 99 01 aa"
    ));
    let Message::Open(o) = decode(&unknown_cap, &Ctx::default()).unwrap() else {
        panic!()
    };
    assert_eq!(
        o.capabilities,
        vec![Capability::Unknown {
            code: 0x99,
            value: vec![0xaa]
        }]
    );
}

#[test]
fn header_errors() {
    let mut bad_marker = hex(&format!("{MARKER} 0013 04"));
    bad_marker[3] = 0;
    assert_eq!(
        decode(&bad_marker, &Ctx::default())
            .unwrap_err()
            .notification(),
        (1, 1, vec![])
    );
    let bad_type = hex(&format!("{MARKER} 0013 09"));
    assert_eq!(
        decode(&bad_type, &Ctx::default())
            .unwrap_err()
            .notification(),
        (1, 3, vec![9])
    );
    let long_keepalive = hex(&format!("{MARKER} 0014 04 00"));
    assert_eq!(
        decode(&long_keepalive, &Ctx::default())
            .unwrap_err()
            .notification(),
        (1, 2, vec![0, 0x14])
    );
    assert_eq!(
        message_len(&[0xff; 10]),
        None,
        "no length before the header is complete"
    );
}

fn ipv4_update() -> (Vec<u8>, Update) {
    // ORIGIN IGP, AS_PATH SEQ [65001], NEXT_HOP 198.18.0.1, MED 0, LOCAL_PREF 100,
    // COMMUNITIES NO_EXPORT, LARGE_COMMUNITY 64512:1:2; NLRI 10.244.1.0/26; withdrawn 10.244.2.0/26.
    let bytes = hex(&format!(
        "{MARKER} 0059 02  0005 1a 0af40200  0038
         40 01 01 00
         40 02 06 02 01 0000fde9
         40 03 04 c6120001
         80 04 04 00000000
         40 05 04 00000064
         c0 08 04 ffffff01
         c0 20 0c 0000fc00 00000001 00000002
         1a 0af40100"
    ));
    let u = Update {
        withdrawn: vec![Nlri::new("10.244.2.0/26".parse().unwrap())],
        attributes: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![AsSegment::Sequence(vec![65001])]),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            med: Some(0),
            local_pref: Some(100),
            communities: vec![community::NO_EXPORT],
            large_communities: vec![(64512, 1, 2)],
            ..Attributes::default()
        },
        nlri: vec![Nlri::new("10.244.1.0/26".parse().unwrap())],
        errors: vec![],
    };
    (bytes, u)
}

#[test]
fn update_ipv4_both_ways() {
    let (bytes, u) = ipv4_update();
    both_ways(&bytes, &Message::Update(Box::new(u)), &four());
}

#[test]
fn update_ipv6_mp_reach_and_unreach() {
    // MP_REACH IPv6/unicast, next hop fd00::1 + fe80::1, NLRI fd00:10::/122.
    let bytes = hex(&format!(
        "{MARKER} 006e 02 0000 0057
         40 01 01 00
         40 02 00
         80 0e 36 0002 01 20 fd000000000000000000000000000001 fe800000000000000000000000000001 00
            7a fd000010000000000000000000000000
         80 0f 14 0002 01 7a fd000010000000000000000000000040"
    ));
    let u = Update {
        attributes: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            mp_reach: Some(MpReach {
                afi: Afi::Ipv6,
                safi: 1,
                next_hops: vec!["fd00::1".parse().unwrap(), "fe80::1".parse().unwrap()],
                nlri: vec![Nlri::new("fd00:10::/122".parse().unwrap())],
            }),
            mp_unreach: Some(MpUnreach {
                afi: Afi::Ipv6,
                safi: 1,
                withdrawn: vec![Nlri::new("fd00:10::40/122".parse().unwrap())],
            }),
            ..Attributes::default()
        },
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(Box::new(u)), &four());
}

#[test]
fn four_octet_as_through_a_two_octet_session() {
    // RFC 6793: a 2-octet session carries AS_TRANS in AS_PATH and the real path in AS4_PATH.
    let path = vec![AsSegment::Sequence(vec![4_200_000_001, 65002])];
    let u = Update {
        attributes: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(path.clone()),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 2)),
            aggregator: Some((4_200_000_001, Ipv4Addr::new(198, 18, 0, 2))),
            ..Attributes::default()
        },
        nlri: vec![Nlri::new("10.244.3.0/26".parse().unwrap())],
        ..Update::default()
    };
    let two = Ctx::default();
    let bytes = enc(&Message::Update(Box::new(u.clone())), &two);
    // AS_PATH (2 octets): SEQ [23456, 65002]; AS4_PATH: SEQ [4200000001, 65002].
    let as_path = hex("40 02 06 02 02 5ba0 fdea");
    assert!(bytes
        .windows(as_path.len())
        .any(|w| w == as_path.as_slice()));
    let as4 = hex("c0 11 0a 02 02 fa56ea01 0000fdea");
    assert!(bytes.windows(as4.len()).any(|w| w == as4.as_slice()));
    let Message::Update(back) = decode(&bytes, &two).unwrap() else {
        panic!()
    };
    assert_eq!(back.attributes.as_path, Some(path));
    assert_eq!(back.attributes.aggregator, u.attributes.aggregator);
    // A 4-octet session carries the path as it is.
    assert_eq!(
        decode(
            &enc(&Message::Update(Box::new(u.clone())), &four()),
            &four()
        )
        .unwrap(),
        Message::Update(Box::new(u))
    );
}

#[test]
fn add_path_nlri() {
    let ctx = Ctx {
        four_octet_as: true,
        add_path: vec![(Afi::Ipv4, 1)],
        ..Ctx::default()
    };
    let mut u = ipv4_update().1;
    u.withdrawn.clear();
    u.nlri = vec![
        Nlri {
            prefix: "10.244.1.0/26".parse().unwrap(),
            path_id: Some(1),
        },
        Nlri {
            prefix: "10.244.1.0/26".parse().unwrap(),
            path_id: Some(2),
        },
    ];
    let bytes = enc(&Message::Update(Box::new(u.clone())), &ctx);
    assert!(bytes.ends_with(&hex("00000001 1a 0af40100 00000002 1a 0af40100")));
    assert_eq!(decode(&bytes, &ctx).unwrap(), Message::Update(Box::new(u)));
}

#[test]
fn notification_and_shutdown_communication() {
    let n = Notification::shutdown("maintenance: node drained");
    let bytes = enc(&Message::Notification(n.clone()), &Ctx::default());
    assert_eq!(&bytes[19..22], &[6, 2, 25]);
    let Message::Notification(back) = decode(&bytes, &Ctx::default()).unwrap() else {
        panic!()
    };
    assert_eq!(
        back.shutdown_message().as_deref(),
        Some("maintenance: node drained")
    );
    let long = "é".repeat(200); // 400 octets: cut at a character boundary within 255
    let cut = Notification::shutdown(&long).shutdown_message().unwrap();
    assert!(cut.len() <= 255 && cut.chars().all(|c| c == 'é'));
}

#[test]
fn route_refresh_and_end_of_rib() {
    let rr = Message::RouteRefresh(RouteRefresh {
        afi: Afi::Ipv6,
        subtype: 1,
        safi: 1,
    });
    both_ways(
        &hex(&format!("{MARKER} 0017 05 0002 01 01")),
        &rr,
        &Ctx::default(),
    );
    let eor4 = hex(&format!("{MARKER} 0017 02 0000 0000"));
    let Message::Update(u) = decode(&eor4, &four()).unwrap() else {
        panic!()
    };
    assert_eq!(u.end_of_rib(), Some((Afi::Ipv4, 1)));
    let eor6 = Update::end_of_rib_marker(Afi::Ipv6, 1);
    let bytes = enc(&Message::Update(Box::new(eor6)), &four());
    assert_eq!(
        bytes,
        hex(&format!("{MARKER} 001d 02 0000 0006 80 0f 03 0002 01"))
    );
    let Message::Update(u) = decode(&bytes, &four()).unwrap() else {
        panic!()
    };
    assert_eq!(u.end_of_rib(), Some((Afi::Ipv6, 1)));
    assert_eq!(ipv4_update().1.end_of_rib(), None);
}

/// An UPDATE with `attrs` (raw attribute bytes) and one IPv4 prefix.
fn update_with(attrs: &str) -> Vec<u8> {
    let a = hex(attrs);
    let body_len = 2 + 2 + a.len() + 5;
    let mut m = hex(MARKER);
    m.extend_from_slice(&((19 + body_len) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&(a.len() as u16).to_be_bytes());
    m.extend_from_slice(&a);
    m.extend_from_slice(&hex("1a 0af40100"));
    m
}

const GOOD_ORIGIN: &str = "40 01 01 00";
const GOOD_PATH: &str = "40 02 06 02 01 0000fde9";
const GOOD_NH: &str = "40 03 04 c6120001";

fn outcome(attrs: &str) -> Result<Vec<(u8, Treatment)>, DecodeError> {
    match decode(&update_with(attrs), &four())? {
        Message::Update(u) => Ok(u
            .errors
            .iter()
            .map(|e| (e.type_code, e.treatment))
            .collect()),
        _ => unreachable!(),
    }
}

#[test]
fn rfc7606_outcomes() {
    use Treatment::*;
    let ok = format!("{GOOD_ORIGIN} {GOOD_PATH} {GOOD_NH}");
    assert_eq!(outcome(&ok), Ok(vec![]));
    // Malformed ORIGIN (value, length) → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("40 01 01 03 {GOOD_PATH} {GOOD_NH}")),
        Ok(vec![(1, TreatAsWithdraw)])
    );
    assert_eq!(
        outcome(&format!("40 01 02 0000 {GOOD_PATH} {GOOD_NH}")),
        Ok(vec![(1, TreatAsWithdraw)])
    );
    // Malformed AS_PATH (segment overruns; unknown segment type) → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("{GOOD_ORIGIN} 40 02 06 02 02 0000fde9 {GOOD_NH}")),
        Ok(vec![(2, TreatAsWithdraw)])
    );
    assert_eq!(
        outcome(&format!("{GOOD_ORIGIN} 40 02 06 07 01 0000fde9 {GOOD_NH}")),
        Ok(vec![(2, TreatAsWithdraw)])
    );
    // NEXT_HOP of the wrong length → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("{GOOD_ORIGIN} {GOOD_PATH} 40 03 05 c612000100")),
        Ok(vec![(3, TreatAsWithdraw)])
    );
    // Flags in conflict (ORIGIN marked optional) → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("c0 01 01 00 {GOOD_PATH} {GOOD_NH}")),
        Ok(vec![(1, TreatAsWithdraw)])
    );
    // A duplicate attribute → the repeat is discarded.
    assert_eq!(
        outcome(&format!("{ok} c0 08 04 ffffff01 c0 08 04 ffffff02")),
        Ok(vec![(8, AttributeDiscard)])
    );
    // ATOMIC_AGGREGATE with a length → discarded.
    assert_eq!(
        outcome(&format!("{ok} 40 06 01 00")),
        Ok(vec![(6, AttributeDiscard)])
    );
    // COMMUNITIES not a multiple of 4 → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("{ok} c0 08 03 ffffff")),
        Ok(vec![(8, TreatAsWithdraw)])
    );
    // Missing well-known mandatory (NEXT_HOP with IPv4 NLRI) → treat-as-withdraw.
    assert_eq!(
        outcome(&format!("{GOOD_ORIGIN} {GOOD_PATH}")),
        Ok(vec![(3, TreatAsWithdraw)])
    );
    // MP_REACH with a next hop length that fits no family → session reset (3/9).
    let e = outcome(&format!("{ok} 80 0e 08 0002 01 03 aabbcc 00")).unwrap_err();
    assert_eq!(e.notification().0, 3);
    assert_eq!(e.notification().1, 9);
    // MP_REACH twice → session reset.
    let mp = "80 0e 09 0001 01 04 c6120001 00";
    assert!(outcome(&format!("{ok} {mp} {mp}")).is_err());
    // An attribute whose length runs past the attribute field: the Total Path Attribute
    // Length still locates the NLRI → treat-as-withdraw (RFC 7606 §4), subcode 5 noted.
    assert_eq!(
        outcome(&format!("{ok} c0 08 40 ffffff01")),
        Ok(vec![(8, TreatAsWithdraw)])
    );
    // Fewer octets left than an attribute header → treat-as-withdraw too.
    assert_eq!(
        outcome(&format!("{ok} c0 08")),
        Ok(vec![(8, TreatAsWithdraw)])
    );
    // An MP_REACH that overruns: its NLRI cannot be known → session reset (3/5).
    let e = outcome(&format!("{ok} 80 0e 40 0001 01 04 c6120001 00")).unwrap_err();
    assert_eq!((e.notification().0, e.notification().1), (3, 5));
    // An unrecognized well-known attribute → session reset (3/2).
    assert_eq!(
        outcome(&format!("{ok} 40 63 00"))
            .unwrap_err()
            .notification()
            .1,
        2
    );
    // An unknown optional transitive attribute is kept, and marked partial when passed on.
    let bytes = update_with(&format!("{ok} c0 63 02 beef"));
    let Message::Update(mut u) = decode(&bytes, &four()).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.attributes.unknown,
        vec![RawAttribute {
            flags: 0xc0,
            code: 0x63,
            value: vec![0xbe, 0xef]
        }]
    );
    u.attributes.for_passing_on();
    assert_eq!(u.attributes.unknown[0].flags, 0xe0);
    // A prefix length over 32 in the NLRI → session reset (3/10).
    let mut bad_nlri = update_with(&ok);
    let n = bad_nlri.len();
    bad_nlri[n - 5] = 33;
    assert_eq!(
        decode(&bad_nlri, &four()).unwrap_err().notification(),
        (3, 10, vec![])
    );
}

fn arb_v4_prefix() -> impl Strategy<Value = Nlri> {
    (any::<u32>(), 0u8..=32, proptest::option::of(any::<u32>())).prop_map(|(a, l, id)| {
        let net = ipnetwork::IpNetwork::new(Ipv4Addr::from(a).into(), l).unwrap();
        Nlri {
            prefix: ipnetwork::IpNetwork::new(net.network(), l).unwrap(),
            path_id: id,
        }
    })
}

fn arb_segment() -> impl Strategy<Value = AsSegment> {
    (1u8..=4, prop::collection::vec(1u32..=u32::MAX, 1..300)).prop_map(|(k, a)| match k {
        1 => AsSegment::Set(a),
        2 => AsSegment::Sequence(a),
        3 => AsSegment::ConfedSequence(a),
        _ => AsSegment::ConfedSet(a),
    })
}

prop_compose! {
    fn arb_update(add_path: bool)(
        nlri in prop::collection::vec(arb_v4_prefix(), 0..40),
        withdrawn in prop::collection::vec(arb_v4_prefix(), 0..40),
        origin in 0u8..3,
        path in prop::collection::vec(arb_segment(), 0..3),
        nh in any::<u32>(),
        med in proptest::option::of(any::<u32>()),
        lp in proptest::option::of(any::<u32>()),
        atomic in any::<bool>(),
        comms in prop::collection::vec(any::<u32>(), 0..20),
        large in prop::collection::vec(any::<(u32, u32, u32)>(), 0..10),
        cluster in prop::collection::vec(any::<u32>(), 0..5),
    ) -> Update {
        let fix = |v: Vec<Nlri>| v.into_iter().map(|n| Nlri { path_id: if add_path { Some(n.path_id.unwrap_or(0)) } else { None }, ..n }).collect();
        Update {
            withdrawn: fix(withdrawn),
            nlri: fix(nlri),
            attributes: Attributes {
                origin: Some([Origin::Igp, Origin::Egp, Origin::Incomplete][origin as usize]),
                as_path: Some(path),
                next_hop: Some(Ipv4Addr::from(nh)),
                med,
                local_pref: lp,
                atomic_aggregate: atomic,
                communities: comms,
                large_communities: large,
                cluster_list: cluster.into_iter().map(Ipv4Addr::from).collect(),
                ..Attributes::default()
            },
            errors: vec![],
        }
    }
}

fn split_segments(path: &[AsSegment]) -> Vec<AsSegment> {
    // Encoding splits segments longer than 255; decoding keeps the pieces.
    path.iter()
        .flat_map(|s| {
            s.asns().chunks(255).map(move |c| match s {
                AsSegment::Set(_) => AsSegment::Set(c.to_vec()),
                AsSegment::Sequence(_) => AsSegment::Sequence(c.to_vec()),
                AsSegment::ConfedSequence(_) => AsSegment::ConfedSequence(c.to_vec()),
                AsSegment::ConfedSet(_) => AsSegment::ConfedSet(c.to_vec()),
            })
        })
        .collect()
}

proptest! {
    #[test]
    fn update_encode_then_decode_is_identity(u in arb_update(false), ap in any::<bool>()) {
        let ctx = Ctx { four_octet_as: true, extended_message: true, add_path: if ap { vec![(Afi::Ipv4, 1)] } else { vec![] } };
        let mut u = u;
        if ap {
            for n in u.nlri.iter_mut().chain(u.withdrawn.iter_mut()) { n.path_id = Some(n.path_id.unwrap_or(7)); }
        }
        let bytes = enc(&Message::Update(Box::new(u.clone())), &ctx);
        let mut want = u;
        want.attributes.as_path = want.attributes.as_path.map(|p| split_segments(&p));
        prop_assert_eq!(decode(&bytes, &ctx).unwrap(), Message::Update(Box::new(want)));
    }

    #[test]
    fn decoding_garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..600), kind in 0u8..7, four_octet_as in any::<bool>(), ap in any::<bool>()) {
        let ctx = Ctx { four_octet_as, add_path: if ap { vec![(Afi::Ipv4, 1), (Afi::Ipv6, 1)] } else { vec![] }, extended_message: false };
        let mut m = hex(MARKER);
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(kind);
        m.extend_from_slice(&body);
        let _ = decode(&m, &ctx);
    }

    #[test]
    fn decoding_mutated_updates_never_panics(i in 19usize..89, byte in any::<u8>()) {
        let (mut bytes, _) = ipv4_update();
        bytes[i] = byte;
        let _ = decode(&bytes, &four());
    }
}
