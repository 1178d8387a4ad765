//! What a speaker refuses, in-process on loopback addresses: routes the import rails forbid
//! (whatever the policy), a peer over its prefix limit, a peer presenting the wrong BGP
//! identifier, and transit through a no-transit speaker. (The same against real BIRD peers
//! and kernels: interop/safety.rs and the node suites.)

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use brindle_bgp::rails::{special_purpose, Rails};
use brindle_bgp::speaker::{Origination, PeerConfig, RibFilter, Speaker, SpeakerConfig};
use common::inproc::{config, free_port, has_route, peer, until};
use common::net;

struct Node {
    ip: &'static str,
    port: u16,
    asn: u32,
    speaker: Speaker,
}

async fn node(ip: &'static str, asn: u32, tune: impl FnOnce(&mut SpeakerConfig)) -> Node {
    let port = free_port(ip);
    let mut cfg = config(ip, port, asn);
    tune(&mut cfg);
    let speaker = Speaker::start(cfg).await.expect("speaker");
    Node {
        ip,
        port,
        asn,
        speaker,
    }
}

/// `from`'s view of `to` as a peer (it dials; `to` waits).
fn peer_of(from: &Node, to: &Node, active: bool) -> PeerConfig {
    let mut p = PeerConfig::new(to.ip.parse().expect("ip"), to.asn);
    p.port = to.port;
    p.source = Some(from.ip.parse().expect("ip"));
    p.connect_retry = Duration::from_secs(1);
    p.passive = !active;
    p
}

async fn link(a: &Node, b: &Node, tune_a: impl FnOnce(&mut PeerConfig)) {
    let mut pa = peer_of(a, b, true);
    tune_a(&mut pa);
    a.speaker.add_peer(pa).await.expect("add b to a");
    b.speaker
        .add_peer(peer_of(b, a, false))
        .await
        .expect("add a to b");
}

async fn established(n: &Node, other: &Node) {
    until("session established", async || {
        (peer(&n.speaker, other.ip).await.state == "Established").then_some(())
    })
    .await;
}

async fn originate(n: &Node, prefixes: &[&str]) {
    for p in prefixes {
        n.speaker
            .originate(Origination {
                prefix: Some(net(p)),
                ..Origination::default()
            })
            .await
            .expect("originate");
    }
}

async fn prefixes(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = n
        .speaker
        .rib(RibFilter::default())
        .await
        .expect("rib")
        .into_iter()
        .map(|r| r.prefix.to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn node_rails() -> Rails {
    let mut protected = special_purpose();
    protected.extend([net("198.18.0.0/24"), net("198.18.0.10/32")]);
    Rails {
        protected,
        pools: vec![(net("10.244.0.0/16"), 26)],
        local_blocks: vec![net("10.244.1.0/26")],
        lent: vec![],
    }
}

/// A top-of-rack router announcing everything a node must not take: only the default
/// route, a foreign prefix and another node's block get in, though the import policy
/// accepts all; a cluster member may announce pool routes only.
#[tokio::test]
async fn rails_refuse_whatever_the_policy_says() {
    let n = node("127.0.0.41", 64512, |c| c.rails = node_rails()).await;
    let tor = node("127.0.0.42", 65001, |_| {}).await;
    let member = node("127.0.0.43", 64512, |_| {}).await;
    link(&n, &tor, |_| {}).await;
    link(&n, &member, |p| p.member = true).await;
    let hostile = [
        "0.0.0.0/0",
        "192.0.2.0/24",
        "10.244.2.0/26",  // another node's block: what a ToR legitimately carries
        "198.18.0.0/24",  // our connected subnet
        "198.18.0.10/32", // our own address
        "198.18.0.0/16",  // covering the subnet
        "10.244.0.0/16",  // the pool itself
        "10.244.1.7/32",  // a pod inside our own block
        "10.244.1.0/26",  // our own block
        "169.254.0.0/16", // link-local
        "127.0.0.0/8",
    ];
    originate(&tor, &hostile).await;
    originate(
        &member,
        &["10.244.3.0/26", "10.244.1.9/32", "203.0.113.0/24"],
    )
    .await;
    established(&n, &tor).await;
    established(&n, &member).await;
    let want = [
        "0.0.0.0/0",
        "10.244.1.9/32",
        "10.244.2.0/26",
        "10.244.3.0/26",
        "192.0.2.0/24",
    ];
    let got = until("the accepted routes", async || {
        let p = prefixes(&n).await;
        (p.len() >= want.len()).then_some(p)
    })
    .await;
    // Everything sent has arrived once both peers count all of theirs as received.
    until("every route received", async || {
        let t = peer(&n.speaker, tor.ip).await;
        let m = peer(&n.speaker, member.ip).await;
        (t.received == hostile.len() && m.received == 3).then_some(())
    })
    .await;
    assert_eq!(prefixes(&n).await, want, "first look: {got:?}");
    let t = peer(&n.speaker, tor.ip).await;
    assert_eq!(t.refused_by_rails, 8);
    assert_eq!(peer(&n.speaker, member.ip).await.refused_by_rails, 1);

    // Tighter rails (a block of ours that the ToR's route is inside) withdraw at once.
    let mut r = node_rails();
    r.local_blocks.push(net("10.244.2.0/26"));
    n.speaker.set_rails(r).await.expect("set rails");
    until("the route now refused is gone", async || {
        (!has_route(&n.speaker, "10.244.2.0/26").await).then_some(())
    })
    .await;
    // Looser again: the ToR is asked for its routes and the block comes back.
    n.speaker.set_rails(node_rails()).await.expect("set rails");
    until("the route allowed again is back", async || {
        has_route(&n.speaker, "10.244.2.0/26").await.then_some(())
    })
    .await;
    for x in [n, tor, member] {
        x.speaker.shutdown(false).await.expect("shutdown");
    }
}

/// One prefix over the limit closes the session with Cease 6/1 and drops the peer's routes;
/// the session comes back after a back-off, and closes again while the peer still sends
/// too many.
#[tokio::test]
async fn a_peer_over_its_prefix_limit_is_closed_with_cease_6_1() {
    let n = node("127.0.0.51", 64512, |_| {}).await;
    let p = node("127.0.0.52", 65001, |_| {}).await;
    link(&n, &p, |c| c.max_prefixes = Some(10)).await;
    let many: Vec<String> = (0..11).map(|i| format!("192.0.2.{}/32", i * 8)).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    originate(&p, &refs).await;
    let st = until("the limit is hit", async || {
        let s = peer(&n.speaker, p.ip).await;
        (s.prefix_limit_hits >= 1 && s.state != "Established").then_some(s)
    })
    .await;
    assert_eq!(st.accepted, 0, "its routes are dropped with the session");
    assert!(prefixes(&n).await.is_empty());
    let theirs = until("the peer hears why", async || {
        let s = peer(&p.speaker, n.ip).await;
        s.last_error.filter(|e| e.contains("6/1"))
    })
    .await;
    assert!(theirs.contains("NOTIFICATION 6/1"), "{theirs}");
    // Under the limit, the session stays up and the routes stay.
    p.speaker
        .withdraw(net("192.0.2.0/32"))
        .await
        .expect("withdraw");
    established(&n, &p).await;
    until("ten routes, kept", async || {
        (prefixes(&n).await.len() == 10).then_some(())
    })
    .await;
    assert_eq!(peer(&n.speaker, p.ip).await.state, "Established");
    n.speaker.shutdown(false).await.expect("shutdown");
    p.speaker.shutdown(false).await.expect("shutdown");
}

/// A node peer must present the router ID its node record carries. The impostor is refused
/// (NOTIFICATION 2/3) whichever side dials, and the real one is taken.
#[tokio::test]
async fn a_peer_with_the_wrong_identifier_is_refused() {
    for impostor_dials in [false, true] {
        let (n_ip, x_ip) = if impostor_dials {
            ("127.0.0.61", "127.0.0.62")
        } else {
            ("127.0.0.63", "127.0.0.64")
        };
        let n = node(n_ip, 64512, |_| {}).await;
        let x = node(x_ip, 64512, |c| {
            c.router_id = Ipv4Addr::new(255, 255, 255, 254)
        })
        .await;
        let mut to_x = peer_of(&n, &x, !impostor_dials);
        to_x.router_id = Some(x_ip.parse().expect("ip"));
        to_x.member = true;
        n.speaker.add_peer(to_x).await.expect("add");
        x.speaker
            .add_peer(peer_of(&x, &n, impostor_dials))
            .await
            .expect("add");
        originate(&x, &["10.244.7.0/26"]).await;
        let err = until("the impostor is refused", async || {
            let s = peer(&x.speaker, n.ip).await;
            s.last_error.filter(|e| e.contains("2/3"))
        })
        .await;
        assert!(err.contains("NOTIFICATION 2/3"), "{err}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_ne!(peer(&n.speaker, x.ip).await.state, "Established");
        assert!(prefixes(&n).await.is_empty());
        n.speaker.shutdown(false).await.expect("shutdown");
        x.speaker.shutdown(false).await.expect("shutdown");
    }
    // The real node: same address, its own router ID.
    let n = node("127.0.0.65", 64512, |_| {}).await;
    let x = node("127.0.0.66", 64512, |_| {}).await;
    link(&n, &x, |p| {
        p.router_id = Some("127.0.0.66".parse().expect("ip"));
        p.member = true;
    })
    .await;
    established(&n, &x).await;
    n.speaker.shutdown(false).await.expect("shutdown");
    x.speaker.shutdown(false).await.expect("shutdown");
}

/// A no-transit speaker passes on only its own routes: nothing from one external peer goes
/// to another, or to a member; only a reflector reflects, and only between members.
#[tokio::test]
async fn a_no_transit_speaker_passes_on_only_its_own_routes() {
    let n = node("127.0.0.71", 64512, |c| {
        c.no_transit = true;
        c.cluster_id = Some(Ipv4Addr::new(127, 0, 0, 71));
    })
    .await;
    let tor_a = node("127.0.0.72", 65001, |_| {}).await;
    let tor_b = node("127.0.0.73", 65002, |_| {}).await;
    let client_1 = node("127.0.0.74", 64512, |_| {}).await;
    let client_2 = node("127.0.0.75", 64512, |_| {}).await;
    link(&n, &tor_a, |_| {}).await;
    link(&n, &tor_b, |_| {}).await;
    for c in [&client_1, &client_2] {
        link(&n, c, |p| {
            p.member = true;
            p.rr_client = true;
        })
        .await;
    }
    originate(&tor_a, &["0.0.0.0/0", "192.0.2.0/24"]).await;
    originate(&client_1, &["10.244.5.0/26"]).await;
    originate(&n, &["10.244.1.0/26"]).await;
    for x in [&tor_a, &tor_b, &client_1, &client_2] {
        established(&n, x).await;
    }
    until("n has every route", async || {
        (prefixes(&n).await.len() == 4).then_some(())
    })
    .await;
    until("client 2 gets the reflected block and ours", async || {
        (prefixes(&client_2).await == ["10.244.1.0/26", "10.244.5.0/26"]).then_some(())
    })
    .await;
    until("tor b gets our block", async || {
        has_route(&tor_b.speaker, "10.244.1.0/26")
            .await
            .then_some(())
    })
    .await;
    // Give anything wrong time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(prefixes(&tor_b).await, ["10.244.1.0/26"], "no transit");
    assert_eq!(
        prefixes(&client_2).await,
        ["10.244.1.0/26", "10.244.5.0/26"]
    );
    assert_eq!(
        prefixes(&tor_a).await,
        ["0.0.0.0/0", "10.244.1.0/26", "192.0.2.0/24"],
        "its own routes and ours, never a member's"
    );
    for x in [n, tor_a, tor_b, client_1, client_2] {
        x.speaker.shutdown(false).await.expect("shutdown");
    }
}

/// A peer that completes the handshake, keeps its session alive with KEEPALIVEs, and never
/// reads: once our writes to it have made no progress for its hold time the connection is
/// dropped, instead of its queue growing with every route we have.
#[tokio::test]
async fn a_peer_that_stops_reading_is_dropped_after_its_hold_time() {
    use brindle_bgp::codec::{self, Capability, Ctx, Message, Open};
    use std::io::Write;
    let n = node("127.0.0.81", 64512, |_| {}).await;
    let mut p = PeerConfig::new("127.0.0.82".parse().expect("ip"), 65001);
    p.passive = true;
    p.hold_time = 3;
    n.speaker.add_peer(p).await.expect("add");
    let port = n.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_c = stop.clone();
    let client = std::thread::spawn(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 82], 0)).into())
            .expect("bind");
        sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 81], port)).into())
            .expect("connect");
        let mut s: std::net::TcpStream = sock.into();
        let mut buf = bytes::BytesMut::new();
        let open = Open::new(
            65001,
            3,
            Ipv4Addr::new(127, 0, 0, 82),
            vec![Capability::FourOctetAs(65001)],
        );
        codec::encode(&Message::Open(open), &Ctx::default(), &mut buf);
        codec::encode(&Message::Keepalive, &Ctx::default(), &mut buf);
        s.write_all(&buf).expect("open");
        let mut ka = bytes::BytesMut::new();
        codec::encode(&Message::Keepalive, &Ctx::default(), &mut ka);
        // Never reads; keeps the session alive until the speaker drops it.
        while !stop_c.load(std::sync::atomic::Ordering::Relaxed) {
            if s.write_all(&ka).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    until("the silent peer established", async || {
        (peer(&n.speaker, "127.0.0.82").await.state == "Established").then_some(())
    })
    .await;
    // ~200k routes with attributes of their own: far more than the socket buffers hold.
    for i in 0..200_000u32 {
        n.speaker
            .originate(Origination {
                prefix: ipnetwork::IpNetwork::new(
                    std::net::IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i)),
                    32,
                )
                .ok(),
                med: Some(i),
                ..Origination::default()
            })
            .await
            .expect("originate");
    }
    let st = until("the stalled peer dropped", async || {
        let s = peer(&n.speaker, "127.0.0.82").await;
        (s.state != "Established").then_some(s)
    })
    .await;
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("TCP connection failed"),
        "{st:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = client.join();
    n.speaker.shutdown(false).await.expect("shutdown");
}

/// A peer address may hold at most 4 connections waiting for their OPEN: more are closed at
/// once, so no address can tie up the speaker with silent connections.
#[tokio::test]
async fn silent_connections_from_one_address_are_capped() {
    use tokio::io::AsyncReadExt;
    let n = node("127.0.0.91", 64512, |_| {}).await;
    let mut p = PeerConfig::new("127.0.0.92".parse().expect("ip"), 65001);
    p.passive = true;
    n.speaker.add_peer(p).await.expect("add");
    let mut conns = vec![];
    for _ in 0..7 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind("127.0.0.92:0".parse().expect("addr")).expect("bind");
        let c = s
            .connect(format!("127.0.0.91:{}", n.port).parse().expect("addr"))
            .await
            .expect("connect");
        conns.push(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed = 0;
    for c in &mut conns {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the speaker sent something before our OPEN"),
            Err(_) => {} // still waiting for our OPEN
        }
    }
    assert_eq!(closed, 3, "7 silent connections, 4 may wait");
    n.speaker.shutdown(false).await.expect("shutdown");
}
