//! Messages captured from real BIRD 2, GoBGP and FRR sessions (see fixtures/capture.sh for
//! how): an independent implementation's bytes must decode cleanly, carry what the daemons
//! were told to send, and keep their meaning when encoded again. (Not their bytes: BIRD, for
//! one, puts MP_REACH_NLRI first and uses the extended length for short attributes; both are
//! allowed, and we encode in type order with the shortest length.)

use brindle_bgp::codec::{community, decode, encode, AsSegment, Capability, Ctx, Message};
use bytes::BytesMut;
use ipnetwork::IpNetwork;

fn load(name: &str) -> Vec<(String, Vec<u8>)> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| {
            let (from, hex) = l.split_once(' ').expect("from hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (from.to_owned(), bytes)
        })
        .collect()
}

/// Decodes a whole capture the way a session would: OPENs first, then the negotiated context.
fn decode_all(name: &str) -> Vec<(String, Message, Vec<u8>)> {
    let msgs = load(name);
    assert!(msgs.len() >= 8, "{name}: too few messages captured");
    let four = Ctx {
        four_octet_as: true,
        ..Ctx::default()
    };
    msgs.into_iter()
        .map(|(from, bytes)| {
            let ctx = if bytes[18] == 1 {
                Ctx::default()
            } else {
                four.clone()
            };
            let m = decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{name} from {from}: {e}"));
            if let Message::Update(u) = &m {
                assert!(u.errors.is_empty(), "{name} from {from}: {:?}", u.errors);
            }
            let mut again = BytesMut::new();
            encode(&m, &ctx, &mut again);
            assert_eq!(
                decode(&again, &ctx).unwrap(),
                m,
                "{name} from {from}: re-encoding changes meaning"
            );
            (from, m, bytes)
        })
        .collect()
}

fn updates(msgs: &[(String, Message, Vec<u8>)], from: &str) -> Vec<brindle_bgp::codec::Update> {
    msgs.iter()
        .filter(|(f, _, _)| f == from)
        .filter_map(|(_, m, _)| match m {
            Message::Update(u) => Some((**u).clone()),
            _ => None,
        })
        .collect()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn bird_and_gobgp() {
    let msgs = decode_all("bird-gobgp.hex");
    // BIRD (4-octet AS 4200000001) sends AS_TRANS in the OPEN and the real AS as a capability.
    let bird_open = msgs.iter().find_map(|(f, m, _)| match m {
        Message::Open(o) if f == "198.18.10.1" => Some(o.clone()),
        _ => None,
    });
    let o = bird_open.expect("BIRD's OPEN");
    assert_eq!((o.my_as, o.asn()), (23456, 4_200_000_001));
    assert!(o
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::GracefulRestart { .. })));
    let bird = updates(&msgs, "198.18.10.1");
    let tagged = bird
        .iter()
        .find(|u| u.nlri.iter().any(|n| n.prefix == net("10.244.1.0/26")))
        .expect("BIRD's block");
    assert_eq!(tagged.attributes.communities, vec![(64512 << 16) | 100]);
    assert_eq!(
        tagged.attributes.large_communities,
        vec![(4_200_000_001, 1, 2)]
    );
    assert_eq!(
        tagged.attributes.as_path,
        Some(vec![AsSegment::Sequence(vec![4_200_000_001])])
    );
    assert!(bird.iter().any(|u| u
        .attributes
        .mp_reach
        .as_ref()
        .is_some_and(|r| r.nlri.iter().any(|n| n.prefix == net("fd00:10::/122")))));
    let gobgp = updates(&msgs, "198.18.10.2");
    let g = gobgp
        .iter()
        .find(|u| u.nlri.iter().any(|n| n.prefix == net("10.245.0.0/26")))
        .expect("GoBGP's route");
    assert_eq!(g.attributes.communities, vec![(65002 << 16) | 7]);
    assert_eq!(g.attributes.large_communities, vec![(65002, 1, 1)]);
    assert!(
        gobgp
            .iter()
            .any(|u| u.withdrawn.iter().any(|n| n.prefix == net("10.245.0.0/26"))),
        "the withdraw"
    );
    assert!(gobgp.iter().any(|u| u
        .attributes
        .mp_reach
        .as_ref()
        .is_some_and(|r| r.nlri.iter().any(|n| n.prefix == net("fd00:20::/122")))));
    assert!(
        bird.iter().chain(&gobgp).any(|u| u.end_of_rib().is_some()),
        "End-of-RIB seen"
    );
    // BIRD's `disable` ends the session with Cease / administrative shutdown.
    assert!(msgs.iter().any(|(f, m, _)| f == "198.18.10.1"
        && matches!(m, Message::Notification(n) if (n.code, n.subcode) == (6, 2))));
}

#[test]
fn frr_and_bird() {
    let msgs = decode_all("frr-bird.hex");
    let frr = updates(&msgs, "198.18.11.1");
    let u = frr
        .iter()
        .find(|u| u.nlri.iter().any(|n| n.prefix == net("10.246.0.0/26")))
        .expect("FRR's route");
    assert!(u.attributes.communities.contains(&community::NO_EXPORT));
    assert!(u.attributes.communities.contains(&((65003 << 16) | 9)));
    assert_eq!(u.attributes.large_communities, vec![(65003, 2, 3)]);
    assert_eq!(
        u.attributes.as_path,
        Some(vec![AsSegment::Sequence(vec![65003])])
    );
    let bird = updates(&msgs, "198.18.11.2");
    assert!(bird
        .iter()
        .any(|u| u.nlri.iter().any(|n| n.prefix == net("10.244.1.0/26"))));
}
