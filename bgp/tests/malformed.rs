//! Hand-made malformed messages at the in-process speaker, over real sockets, as a peer would
//! send them: a case for each rule of RFC 7606 and RFC 4271 §6, for eBGP and iBGP, IPv4 and
//! IPv6 (MP_REACH/MP_UNREACH), so none regresses. An UPDATE that can be handled alone has its
//! routes withdrawn, or its bad attribute dropped, and the session stays up; one that cannot
//! resets the session with the NOTIFICATION the RFCs name.

mod common;
#[path = "../benches/loadgen/mod.rs"]
mod loadgen;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use brindle_bgp::codec::{Afi, Message};
use brindle_bgp::speaker::{PeerConfig, Speaker};
use common::inproc::{config, free_port, has_route, peer, until};
use tokio::io::AsyncWriteExt;

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const PATH: [u8; 3] = [0x40, 2, 0];
const LOCAL_PREF: [u8; 7] = [0x40, 5, 4, 0, 0, 0, 100];
/// 2001:db8::16, a usable global IPv6 next hop.
const V6_NH: [u8; 16] = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];

/// A speaker of AS 64512 at `ip` with a passive peer for each (address, AS, RR client).
async fn speaker(ip: &str, peers: &[(&str, u32, bool)]) -> (Speaker, u16) {
    let port = free_port(ip);
    let s = Speaker::start(config(ip, port, 64512))
        .await
        .expect("speaker");
    for (addr, asn, client) in peers {
        let mut p = PeerConfig::new(addr.parse().expect("ip"), *asn);
        p.passive = true;
        p.rr_client = *client;
        s.add_peer(p).await.expect("peer");
    }
    (s, port)
}

/// The load generator's session from `from` (AS `asn`) to the speaker, offering `families`.
async fn open(from: &str, asn: u32, to: &str, port: u16, families: &[Afi]) -> loadgen::Conn {
    let addr: IpAddr = from.parse().expect("ip");
    let IpAddr::V4(id) = addr else {
        panic!("IPv4 session addresses only")
    };
    let remote = SocketAddr::new(to.parse().expect("ip"), port);
    loadgen::connect_with(addr, remote, asn, id, families, Duration::from_secs(10))
        .await
        .expect("session")
}

/// One attribute with a short length.
fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    [&[flags, code, value.len() as u8][..], value].concat()
}

/// A BGP message by hand: the marker, this length and type, this body.
fn message(len: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    [&[0xff; 16][..], &len.to_be_bytes(), &[kind], body].concat()
}

/// An UPDATE message by hand: no withdrawn routes, these attributes, this NLRI field.
fn update_msg(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let body = [
        &[0, 0][..],
        &(attrs.len() as u16).to_be_bytes(),
        attrs,
        nlri,
    ]
    .concat();
    message(19 + body.len() as u16, 2, &body)
}

/// An UPDATE for 10.9.`third_octet`.0/24 with the attributes as given.
fn update_raw(attrs: &[u8], third_octet: u8) -> Vec<u8> {
    update_msg(attrs, &[24, 10, 9, third_octet])
}

/// MP_REACH_NLRI for IPv6 unicast: these next hops, then `nlri` (length octet and prefix).
fn mp_reach_v6(next_hops: &[[u8; 16]], nlri: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 2, 1, 16 * next_hops.len() as u8];
    for nh in next_hops {
        v.extend_from_slice(nh);
    }
    v.push(0);
    v.extend_from_slice(nlri);
    attr(0x80, 14, &v)
}

/// 2001:db8:9:`i`::/64 as an NLRI field entry, and as text.
fn v6_prefix(i: u8) -> (Vec<u8>, String) {
    (
        vec![64, 0x20, 1, 0x0d, 0xb8, 0, 9, 0, i],
        format!("2001:db8:9:{i:x}::/64"),
    )
}

/// Reads until the speaker's NOTIFICATION; its (code, subcode).
async fn notification(c: &mut loadgen::Conn, what: &str) -> (u8, u8) {
    let read = async {
        loop {
            match loadgen::read_msg(&mut c.r, &mut c.buf).await {
                Ok(Message::Notification(n)) => return (n.code, n.subcode),
                Ok(_) => continue,
                Err(e) => panic!("{what}: the session closed without a NOTIFICATION: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .unwrap_or_else(|_| panic!("{what}: no NOTIFICATION in 15 s"))
}

/// A malformed UPDATE that the speaker handles without a reset.
struct Case {
    what: &'static str,
    /// A well-formed UPDATE for `prefix`, sent first.
    good: Vec<u8>,
    /// The malformed one for the same prefix.
    bad: Vec<u8>,
    prefix: String,
    /// Whether the route stays (attribute-discard, or an attribute ignored) rather than
    /// being treated as withdrawn.
    kept: bool,
}

/// Runs each case on the session `c` from `from`: the good UPDATE (the route appears), then
/// the bad one. A withdrawn route must go. A kept one must still be there once `marker(i)`,
/// a well-formed UPDATE for another prefix sent behind the bad one, has been processed.
/// The session must stay up throughout.
async fn treatments(
    s: &Speaker,
    c: &mut loadgen::Conn,
    from: &str,
    cases: &[Case],
    marker: impl Fn(u8) -> (Vec<u8>, String),
) {
    for (i, case) in cases.iter().enumerate() {
        let what = case.what;
        c.w.write_all(&case.good).await.expect("send");
        until(&format!("{what}: the good route"), async || {
            has_route(s, &case.prefix).await.then_some(())
        })
        .await;
        c.w.write_all(&case.bad).await.expect("send");
        if case.kept {
            let (msg, prefix) = marker(i as u8);
            c.w.write_all(&msg).await.expect("send");
            until(&format!("{what}: the marker"), async || {
                has_route(s, &prefix).await.then_some(())
            })
            .await;
            assert!(
                has_route(s, &case.prefix).await,
                "{what}: the route must stay"
            );
        } else {
            until(&format!("{what}: treat-as-withdraw"), async || {
                (!has_route(s, &case.prefix).await).then_some(())
            })
            .await;
        }
        assert_eq!(peer(s, from).await.state, "Established", "{what}: no reset");
    }
}

/// An UPDATE by hand: ORIGIN value, and the NEXT_HOP attribute's declared length.
fn update(origin: u8, next_hop_len: u8) -> Vec<u8> {
    update_via(origin, next_hop_len, [127, 0, 0, 14])
}

fn update_via(origin: u8, next_hop_len: u8, next_hop: [u8; 4]) -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, origin, 0x40, 2, 0, 0x40, 3, next_hop_len];
    attrs.extend_from_slice(&next_hop);
    update_msg(&attrs, &[24, 10, 9, 0])
}

#[tokio::test]
async fn malformed_updates_are_withdrawn_or_reset_the_session_as_rfc_7606_says() {
    let port = free_port("127.0.0.13");
    let s = Speaker::start(config("127.0.0.13", port, 64512))
        .await
        .expect("speaker");
    let mut p = PeerConfig::new("127.0.0.14".parse().unwrap(), 65001);
    p.passive = true;
    s.add_peer(p).await.expect("peer");
    let mut c = loadgen::connect(
        "127.0.0.14".parse().unwrap(),
        SocketAddr::new("127.0.0.13".parse().unwrap(), port),
        65001,
        "127.0.0.14".parse().unwrap(),
        Duration::from_secs(10),
    )
    .await
    .expect("session");
    c.w.write_all(&update(0, 4)).await.expect("send");
    until("the route", async || {
        has_route(&s, "10.9.0.0/24").await.then_some(())
    })
    .await;
    // ORIGIN 7 does not exist: treat-as-withdraw (RFC 7606 §7.1), the session stays up.
    c.w.write_all(&update(7, 4)).await.expect("send");
    until("the withdraw", async || {
        (!has_route(&s, "10.9.0.0/24").await).then_some(())
    })
    .await;
    assert_eq!(peer(&s, "127.0.0.14").await.state, "Established");
    // Unusable next hops (RFC 4271 §6.3): 0.0.0.0, multicast, class E and the speaker's own
    // address on the session. Each one's routes are withdrawn, no NOTIFICATION, the session
    // stays; a good next hop brings the route back each time.
    for bad in [
        [0, 0, 0, 0],
        [224, 0, 0, 5],
        [240, 0, 0, 1],
        [127, 0, 0, 13],
    ] {
        c.w.write_all(&update(0, 4)).await.expect("send");
        until("the route", async || {
            has_route(&s, "10.9.0.0/24").await.then_some(())
        })
        .await;
        c.w.write_all(&update_via(0, 4, bad)).await.expect("send");
        until(&format!("next hop {bad:?} withdraws"), async || {
            (!has_route(&s, "10.9.0.0/24").await).then_some(())
        })
        .await;
        assert_eq!(peer(&s, "127.0.0.14").await.state, "Established");
    }
    // NEXT_HOP longer than the attributes: the Total Path Attribute Length still locates
    // the NLRI, so its routes are treated as withdrawn (RFC 7606 §4); the session stays.
    c.w.write_all(&update(0, 4)).await.expect("send");
    until("the route", async || {
        has_route(&s, "10.9.0.0/24").await.then_some(())
    })
    .await;
    c.w.write_all(&update(0, 10)).await.expect("send");
    until("the overrun withdraws", async || {
        (!has_route(&s, "10.9.0.0/24").await).then_some(())
    })
    .await;
    assert_eq!(peer(&s, "127.0.0.14").await.state, "Established");
    // An MP_REACH_NLRI that overruns the field: its NLRI cannot be known, so the session is
    // reset with an UPDATE-message-error NOTIFICATION (3/5).
    let attrs = [
        0x40, 1, 1, 0, 0x40, 2, 0, 0x80, 14, 0x40, 0, 1, 1, 4, 127, 0, 0, 14, 0,
    ];
    c.w.write_all(&update_msg(&attrs, &[])).await.expect("send");
    let n = loop {
        match loadgen::read_msg(&mut c.r, &mut c.buf).await.expect("read") {
            Message::Notification(n) => break n,
            _ => continue,
        }
    };
    assert_eq!((n.code, n.subcode), (3, 5), "{n:?}");
    let st = until("the session down", async || {
        let p = peer(&s, "127.0.0.14").await;
        (p.state != "Established").then_some(p)
    })
    .await;
    assert!(
        st.last_error
            .unwrap_or_default()
            .contains("bad message from the peer"),
        "the reason is reported"
    );
    s.shutdown(false).await.expect("shutdown");
}

#[tokio::test]
async fn rfc_7606_treatments_hold_over_a_real_socket() {
    const NH: [u8; 7] = [0x40, 3, 4, 127, 0, 0, 16];
    let base = |extra: &[u8]| [&ORIGIN[..], &PATH, &NH, extra].concat();
    // (what, attributes, whether the route is kept: attribute-discard or ignored, against
    // treat-as-withdraw)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("MED of 3 octets", base(&[0x80, 4, 3, 0, 0, 1]), false),
        (
            "COMMUNITIES of 3 octets",
            base(&[0xc0, 8, 3, 0, 0, 1]),
            false,
        ),
        (
            "LARGE_COMMUNITY of 8 octets",
            base(&[0xc0, 32, 8, 0, 0, 0, 1, 0, 0, 0, 2]),
            false,
        ),
        (
            "AS_PATH segment type 9",
            [&ORIGIN[..], &[0x40, 2, 6, 9, 1, 0, 0, 0xfd, 0xe9], &NH].concat(),
            false,
        ),
        (
            "AS_PATH segment longer than the attribute",
            [&ORIGIN[..], &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9], &NH].concat(),
            false,
        ),
        (
            "ORIGIN of 2 octets",
            [&[0x40, 1, 2, 0, 0][..], &PATH, &NH].concat(),
            false,
        ),
        (
            "ORIGIN flagged optional (flags conflict)",
            [&[0xc0, 1, 1, 0][..], &PATH, &NH].concat(),
            false,
        ),
        (
            "NEXT_HOP of 5 octets",
            [&ORIGIN[..], &PATH, &[0x40, 3, 5, 127, 0, 0, 16, 0]].concat(),
            false,
        ),
        ("NEXT_HOP missing", [&ORIGIN[..], &PATH].concat(), false),
        ("ORIGIN missing", [&PATH[..], &NH].concat(), false),
        ("AS_PATH missing", [&ORIGIN[..], &NH].concat(), false),
        ("ATOMIC_AGGREGATE of 1 octet", base(&[0x40, 6, 1, 0]), true),
        ("AGGREGATOR of 3 octets", base(&[0xc0, 7, 3, 0, 0, 0]), true),
        (
            "ORIGINATOR_ID from an external peer",
            base(&[0x80, 9, 4, 1, 2, 3, 4]),
            true,
        ),
        (
            "CLUSTER_LIST from an external peer",
            base(&[0x80, 10, 4, 1, 2, 3, 4]),
            true,
        ),
        ("ORIGIN twice", base(&[0x40, 1, 1, 2]), true),
        (
            "LOCAL_PREF from an external peer",
            base(&[0x40, 5, 4, 0, 0, 0, 100]),
            true,
        ),
        (
            "unknown optional transitive",
            base(&[0xc0, 0x63, 2, 0xbe, 0xef]),
            true,
        ),
        (
            "unknown optional non-transitive",
            base(&[0x80, 0x64, 1, 0]),
            true,
        ),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, attrs, kept))| {
            let third = i as u8 + 1;
            Case {
                what,
                good: update_raw(&base(&[]), third),
                bad: update_raw(&attrs, third),
                prefix: format!("10.9.{third}.0/24"),
                kept,
            }
        })
        .collect();
    let (s, port) = speaker("127.0.0.15", &[("127.0.0.16", 65001, false)]).await;
    let mut c = open("127.0.0.16", 65001, "127.0.0.15", port, &[Afi::Ipv4]).await;
    treatments(&s, &mut c, "127.0.0.16", &cases, |i| {
        let third = 101 + i;
        (update_raw(&base(&[]), third), format!("10.9.{third}.0/24"))
    })
    .await;
    s.shutdown(false).await.expect("shutdown");
}

#[tokio::test]
async fn ibgp_treatments_hold_over_a_real_socket() {
    const NH: [u8; 7] = [0x40, 3, 4, 127, 0, 0, 18];
    // An iBGP route: LOCAL_PREF is expected, ORIGINATOR_ID and CLUSTER_LIST are read.
    let with = |extra: &[u8]| [&ORIGIN[..], &PATH, &NH, extra].concat();
    let base = |extra: &[u8]| with(&[&LOCAL_PREF[..], extra].concat());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "LOCAL_PREF of 3 octets",
            with(&[0x40, 5, 3, 0, 0, 100]),
            false,
        ),
        ("MED of 5 octets", base(&[0x80, 4, 5, 0, 0, 0, 0, 1]), false),
        (
            "ORIGINATOR_ID of 3 octets",
            base(&[0x80, 9, 3, 1, 2, 3]),
            false,
        ),
        (
            "CLUSTER_LIST of 5 octets",
            base(&[0x80, 10, 5, 1, 2, 3, 4, 5]),
            false,
        ),
        (
            "ORIGINATOR_ID that is our router ID (RFC 4456 §8)",
            base(&[0x80, 9, 4, 127, 0, 0, 17]),
            false,
        ),
        (
            "CLUSTER_LIST holding our cluster ID (RFC 4456 §8)",
            base(&[0x80, 10, 8, 1, 2, 3, 4, 127, 0, 0, 17]),
            false,
        ),
        (
            "ORIGINATOR_ID and CLUSTER_LIST, well-formed",
            base(&[0x80, 9, 4, 1, 2, 3, 4, 0x80, 10, 4, 5, 6, 7, 8]),
            true,
        ),
        ("LOCAL_PREF twice", base(&[0x40, 5, 4, 0, 0, 0, 200]), true),
        (
            "AGGREGATOR of 9 octets",
            base(&[0xc0, 7, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
            true,
        ),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, attrs, kept))| {
            let third = i as u8 + 1;
            Case {
                what,
                good: update_raw(&base(&[]), third),
                bad: update_raw(&attrs, third),
                prefix: format!("10.9.{third}.0/24"),
                kept,
            }
        })
        .collect();
    // A route-reflector client, so the speaker has a cluster ID (its router ID).
    let (s, port) = speaker("127.0.0.17", &[("127.0.0.18", 64512, true)]).await;
    let mut c = open("127.0.0.18", 64512, "127.0.0.17", port, &[Afi::Ipv4]).await;
    treatments(&s, &mut c, "127.0.0.18", &cases, |i| {
        let third = 101 + i;
        (update_raw(&base(&[]), third), format!("10.9.{third}.0/24"))
    })
    .await;
    s.shutdown(false).await.expect("shutdown");
}

#[tokio::test]
async fn ipv6_mp_reach_and_mp_unreach_treatments_hold_over_a_real_socket() {
    const LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let update = |others: &[u8], next_hops: &[[u8; 16]], i: u8| {
        let attrs = [others, &mp_reach_v6(next_hops, &v6_prefix(i).0)].concat();
        update_msg(&attrs, &[])
    };
    let good = |i| update(&[&ORIGIN[..], &PATH].concat(), &[V6_NH], i);
    let unreach = |i: u8| {
        update_msg(
            &attr(0x80, 15, &[&[0, 2, 1][..], &v6_prefix(i).0].concat()),
            &[],
        )
    };
    let op = [&ORIGIN[..], &PATH].concat();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("next hop ::", update(&op, &[[0; 16]], 1), false),
        (
            "next hop ff02::5 (multicast)",
            update(
                &op,
                &[[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]],
                2,
            ),
            false,
        ),
        (
            "a link-local next hop alone",
            update(&op, &[LINK_LOCAL], 3),
            false,
        ),
        (
            "global and link-local next hops",
            update(&op, &[V6_NH, LINK_LOCAL], 4),
            true,
        ),
        ("MP_UNREACH_NLRI", unreach(5), false),
        ("ORIGIN missing", update(&PATH, &[V6_NH], 6), false),
        (
            "AS_PATH segment type 9",
            update(
                &[&ORIGIN[..], &[0x40, 2, 6, 9, 1, 0, 0, 0xfd, 0xe9]].concat(),
                &[V6_NH],
                7,
            ),
            false,
        ),
        (
            "MED of 3 octets",
            update(&[&op[..], &[0x80, 4, 3, 0, 0, 1]].concat(), &[V6_NH], 8),
            false,
        ),
        (
            "a NEXT_HOP attribute beside MP_REACH_NLRI (ignored)",
            update(
                &[&op[..], &[0x40, 3, 4, 127, 0, 0, 20]].concat(),
                &[V6_NH],
                9,
            ),
            true,
        ),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (what, bad, kept))| {
            let i = i as u8 + 1;
            Case {
                what,
                good: good(i),
                bad,
                prefix: v6_prefix(i).1,
                kept,
            }
        })
        .collect();
    let (s, port) = speaker("127.0.0.19", &[("127.0.0.20", 65001, false)]).await;
    let mut c = open(
        "127.0.0.20",
        65001,
        "127.0.0.19",
        port,
        &[Afi::Ipv4, Afi::Ipv6],
    )
    .await;
    treatments(&s, &mut c, "127.0.0.20", &cases, |i| {
        let i = 101 + i;
        (good(i), v6_prefix(i).1)
    })
    .await;
    s.shutdown(false).await.expect("shutdown");
}

#[tokio::test]
async fn messages_that_cannot_be_handled_alone_reset_the_session_with_the_right_notification() {
    let v4 = [&ORIGIN[..], &PATH, &[0x40, 3, 4, 127, 0, 0, 22]].concat();
    let nlri = [24, 10, 9, 1];
    let v6 = |mp: Vec<u8>| update_msg(&[&ORIGIN[..], &PATH, &mp].concat(), &[]);
    let good_mp = mp_reach_v6(&[V6_NH], &v6_prefix(1).0);
    let mut bad_marker = message(19, 4, &[]);
    bad_marker[5] = 0;
    let mut long = message(4097, 2, &[0; 4078]);
    long[19..23].copy_from_slice(&[0, 0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, (u8, u8))> = vec![
        // Message header errors (RFC 4271 §6.1).
        ("a marker not all ones", bad_marker, (1, 1)),
        ("a length below 19", message(18, 4, &[]), (1, 2)),
        ("a length above 4096", long, (1, 2)),
        ("a KEEPALIVE with a body", message(20, 4, &[0]), (1, 2)),
        ("an UPDATE shorter than 23", message(21, 2, &[0, 0]), (1, 2)),
        ("message type 9", message(19, 9, &[]), (1, 3)),
        // UPDATE errors that leave the NLRI unknown, or that RFC 7606 keeps as resets.
        (
            "withdrawn routes length past the message",
            message(23, 2, &[0, 50, 0, 0]),
            (3, 1),
        ),
        (
            "path attribute length past the message",
            message(23, 2, &[0, 0, 0, 50]),
            (3, 1),
        ),
        (
            "an NLRI prefix of 33 bits",
            update_msg(&v4, &[33, 10, 9, 1, 0, 0]),
            (3, 10),
        ),
        (
            "an unrecognized well-known attribute",
            update_msg(&[&v4[..], &attr(0x40, 0x50, &[0])].concat(), &nlri),
            (3, 2),
        ),
        (
            "MP_REACH_NLRI twice",
            v6([&good_mp[..], &good_mp].concat()),
            (3, 1),
        ),
        (
            "MP_REACH_NLRI with a 5-octet next hop",
            v6(attr(0x80, 14, &[0, 2, 1, 5, 1, 2, 3, 4, 5, 0])),
            (3, 9),
        ),
        (
            "MP_UNREACH_NLRI with a 129-bit prefix",
            v6(attr(0x80, 15, &[0, 2, 1, 129, 0x20, 1])),
            (3, 9),
        ),
        (
            "MP_REACH_NLRI flagged well-known (flags conflict)",
            v6([&[0x40][..], &good_mp[1..]].concat()),
            (3, 4),
        ),
    ];
    let addrs: Vec<String> = (1..=cases.len()).map(|i| format!("127.0.2.{i}")).collect();
    let peers: Vec<(&str, u32, bool)> = addrs.iter().map(|a| (a.as_str(), 65001, false)).collect();
    let (s, port) = speaker("127.0.0.21", &peers).await;
    for ((what, msg, want), from) in cases.iter().zip(&addrs) {
        let mut c = open(from, 65001, "127.0.0.21", port, &[Afi::Ipv4, Afi::Ipv6]).await;
        c.w.write_all(msg).await.expect("send");
        assert_eq!(notification(&mut c, what).await, *want, "{what}");
        let st = until(&format!("{what}: the session down"), async || {
            let p = peer(&s, from).await;
            (p.state != "Established").then_some(p)
        })
        .await;
        assert!(st.last_error.is_some(), "{what}: the reason is reported");
    }
    s.shutdown(false).await.expect("shutdown");
}

#[tokio::test]
async fn unknown_optional_transitive_attributes_pass_on_with_the_partial_bit() {
    let (s, port) = speaker(
        "127.0.0.23",
        &[("127.0.0.24", 65001, false), ("127.0.0.25", 65002, false)],
    )
    .await;
    let mut rx = open("127.0.0.25", 65002, "127.0.0.23", port, &[Afi::Ipv4]).await;
    let mut tx = open("127.0.0.24", 65001, "127.0.0.23", port, &[Afi::Ipv4]).await;
    let base = [&ORIGIN[..], &PATH, &[0x40, 3, 4, 127, 0, 0, 24]].concat();
    // (third octet, the attribute, what the other peer must get: flags, or None)
    let cases: [(u8, Vec<u8>, Option<u8>); 3] = [
        (1, attr(0xc0, 0x63, &[0xbe, 0xef]), Some(0xe0)),
        (2, attr(0xe0, 0x64, &[7]), Some(0xe0)),
        (3, attr(0x80, 0x65, &[0]), None),
    ];
    for (third, a, _) in &cases {
        tx.w.write_all(&update_raw(&[&base[..], a].concat(), *third))
            .await
            .expect("send");
    }
    let mut got = std::collections::HashMap::new();
    let read = async {
        while got.len() < cases.len() {
            if let Message::Update(u) = loadgen::read_msg(&mut rx.r, &mut rx.buf)
                .await
                .expect("read")
            {
                for n in &u.nlri {
                    got.insert(n.prefix, u.attributes.unknown.clone());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the three routes passed on");
    for (third, a, want) in &cases {
        let prefix = common::net(&format!("10.9.{third}.0/24"));
        let passed = got[&prefix].iter().find(|r| r.code == a[1]);
        match want {
            Some(flags) => {
                let r = passed.unwrap_or_else(|| panic!("attribute {} passed on", a[1]));
                assert_eq!(r.flags & 0xf0, *flags, "attribute {}: Partial set", a[1]);
                assert_eq!(r.value, a[3..], "attribute {}: value unchanged", a[1]);
            }
            None => assert!(passed.is_none(), "attribute {} is not transitive", a[1]),
        }
    }
    s.shutdown(false).await.expect("shutdown");
}
