//! The speaker in-process, on loopback addresses (no namespaces): two Brindle speakers that
//! both dial out settle on one session and exchange routes; a peer that sends a malformed
//! UPDATE gets the RFC 7606 treatment (treat-as-withdraw, or a NOTIFICATION and a reset).

#[path = "../benches/loadgen/mod.rs"]
mod loadgen;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use brindle_bgp::codec::Message;
use brindle_bgp::speaker::{
    GracefulRestart, Origination, PeerConfig, PeerStatus, RibFilter, Speaker, SpeakerConfig,
};
use ipnetwork::IpNetwork;
use tokio::io::AsyncWriteExt;

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn config(ip: &str, port: u16, asn: u32) -> SpeakerConfig {
    let addr: Ipv4Addr = ip.parse().expect("ip");
    SpeakerConfig {
        local_as: asn,
        router_id: addr,
        listen: Some(SocketAddr::new(IpAddr::V4(addr), port)),
        cluster_id: None,
        graceful_restart: GracefulRestart::default(),
        next_hop_v4: None,
        next_hop_v6: None,
        kernel: None,
    }
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn peer(s: &Speaker, addr: &str) -> PeerStatus {
    let a: IpAddr = addr.parse().expect("ip");
    s.peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.addr == a)
        .expect("peer")
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

async fn has_route(s: &Speaker, prefix: &str) -> bool {
    s.rib(RibFilter::default())
        .await
        .expect("rib")
        .iter()
        .any(|r| r.prefix == net(prefix))
}

#[tokio::test]
async fn two_speakers_dialing_each_other_settle_on_one_session() {
    let (pa, pb) = (free_port("127.0.0.11"), free_port("127.0.0.12"));
    let a = Speaker::start(config("127.0.0.11", pa, 64512))
        .await
        .expect("a");
    let b = Speaker::start(config("127.0.0.12", pb, 64513))
        .await
        .expect("b");
    let mut to_b = PeerConfig::new("127.0.0.12".parse().unwrap(), 64513);
    to_b.port = pb;
    to_b.source = Some("127.0.0.11".parse().unwrap());
    to_b.connect_retry = Duration::from_secs(1);
    let mut to_a = PeerConfig::new("127.0.0.11".parse().unwrap(), 64512);
    to_a.port = pa;
    to_a.source = Some("127.0.0.12".parse().unwrap());
    to_a.connect_retry = Duration::from_secs(1);
    a.add_peer(to_b).await.expect("peer b");
    b.add_peer(to_a).await.expect("peer a");
    until("both established", async || {
        let (x, y) = (peer(&a, "127.0.0.12").await, peer(&b, "127.0.0.11").await);
        (x.state == "Established" && y.state == "Established").then_some(())
    })
    .await;
    a.originate(Origination {
        prefix: Some(net("10.244.1.0/26")),
        communities: vec![(64512 << 16) | 7],
        ..Origination::default()
    })
    .expect("originate");
    until("b learns a's block", async || {
        has_route(&b, "10.244.1.0/26").await.then_some(())
    })
    .await;
    let r = b.rib(RibFilter::default()).await.expect("rib");
    assert_eq!(r[0].as_path, vec![64512]);
    assert_eq!(r[0].next_hop, Some("127.0.0.11".parse().unwrap()));
    assert_eq!(r[0].communities, vec!["64512:7".to_string()]);
    a.withdraw(net("10.244.1.0/26")).expect("withdraw");
    until("b forgets it", async || {
        (!has_route(&b, "10.244.1.0/26").await).then_some(())
    })
    .await;
    // Removing the peer sends Cease / administrative shutdown, which b reports.
    a.remove_peer("127.0.0.12".parse().unwrap())
        .await
        .expect("remove");
    let st = until("b sees the session end", async || {
        let p = peer(&b, "127.0.0.11").await;
        (p.state != "Established").then_some(p)
    })
    .await;
    let err = st.last_error.unwrap_or_default();
    assert!(err.contains("NOTIFICATION 6/2"), "{err}");
    a.shutdown(false).await.expect("shutdown a");
    b.shutdown(false).await.expect("shutdown b");
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

/// An UPDATE message by hand: no withdrawn routes, these attributes, this NLRI field.
fn update_msg(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&body);
    m
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

/// An UPDATE by hand for 10.9.`third_octet`.0/24 with the attributes as given.
fn update_raw(attrs: &[u8], third_octet: u8) -> Vec<u8> {
    update_msg(attrs, &[24, 10, 9, third_octet])
}

#[tokio::test]
async fn rfc_7606_treatments_hold_over_a_real_socket() {
    const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
    const PATH: [u8; 3] = [0x40, 2, 0];
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
        ("NEXT_HOP missing", [&ORIGIN[..], &PATH].concat(), false),
        ("ORIGIN missing", [&PATH[..], &NH].concat(), false),
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
    let port = free_port("127.0.0.15");
    let s = Speaker::start(config("127.0.0.15", port, 64512))
        .await
        .expect("speaker");
    let mut p = PeerConfig::new("127.0.0.16".parse().unwrap(), 65001);
    p.passive = true;
    s.add_peer(p).await.expect("peer");
    let mut c = loadgen::connect(
        "127.0.0.16".parse().unwrap(),
        SocketAddr::new("127.0.0.15".parse().unwrap(), port),
        65001,
        "127.0.0.16".parse().unwrap(),
        Duration::from_secs(10),
    )
    .await
    .expect("session");
    for (i, (what, attrs, kept)) in cases.iter().enumerate() {
        // Each case announces its own prefix, first with good attributes.
        let third = i as u8 + 1;
        let prefix = format!("10.9.{third}.0/24");
        c.w.write_all(&update_raw(&base(&[]), third))
            .await
            .expect("send");
        until(&format!("{what}: the good route"), async || {
            has_route(&s, &prefix).await.then_some(())
        })
        .await;
        c.w.write_all(&update_raw(attrs, third))
            .await
            .expect("send");
        if *kept {
            // Processed (a marker after it arrives) and still there.
            let marker = format!("10.9.{}.0/24", 100 + third);
            c.w.write_all(&update_raw(&base(&[]), 100 + third))
                .await
                .expect("send");
            until(&format!("{what}: the marker"), async || {
                has_route(&s, &marker).await.then_some(())
            })
            .await;
            assert!(has_route(&s, &prefix).await, "{what}: the route must stay");
        } else {
            until(&format!("{what}: treat-as-withdraw"), async || {
                (!has_route(&s, &prefix).await).then_some(())
            })
            .await;
        }
        assert_eq!(
            peer(&s, "127.0.0.16").await.state,
            "Established",
            "{what}: no reset"
        );
    }
    s.shutdown(false).await.expect("shutdown");
}
