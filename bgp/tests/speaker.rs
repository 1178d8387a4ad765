//! The speaker in-process, on loopback addresses (no namespaces): two Brindle speakers that
//! both dial out settle on one session and exchange routes. (Malformed messages from a peer:
//! malformed.rs.)

mod common;

use std::time::Duration;

use brindle_bgp::speaker::{Origination, PeerConfig, RibFilter, Speaker};
use common::inproc::{config, free_port, has_route, peer, until};
use common::net;

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
    .await
    .expect("originate");
    until("b learns a's block", async || {
        has_route(&b, "10.244.1.0/26").await.then_some(())
    })
    .await;
    let r = b.rib(RibFilter::default()).await.expect("rib");
    assert_eq!(r[0].as_path, vec![64512]);
    assert_eq!(r[0].next_hop, Some("127.0.0.11".parse().unwrap()));
    assert_eq!(r[0].communities, vec!["64512:7".to_string()]);
    a.withdraw(net("10.244.1.0/26")).await.expect("withdraw");
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

/// Peers alike but for their export policy's default are not one update group: a route
/// goes to the two that accept it and never to the one whose (term-less) policy rejects all.
#[tokio::test]
async fn a_peer_that_exports_nothing_is_not_grouped_with_peers_that_export_all() {
    use brindle_bgp::policy::Verdict;
    let rr_ip = "127.0.0.31";
    let r = Speaker::start(config(rr_ip, free_port(rr_ip), 64600))
        .await
        .expect("r");
    let mut others = vec![];
    for (i, ip) in ["127.0.0.32", "127.0.0.33", "127.0.0.34"]
        .iter()
        .enumerate()
    {
        let asn = 64601 + i as u32;
        let port = free_port(ip);
        let s = Speaker::start(config(ip, port, asn))
            .await
            .expect("speaker");
        let mut to_r = PeerConfig::new(rr_ip.parse().unwrap(), 64600);
        to_r.passive = true;
        s.add_peer(to_r).await.expect("peer r");
        let mut to_s = PeerConfig::new(ip.parse().unwrap(), asn);
        to_s.port = port;
        to_s.source = Some(rr_ip.parse().unwrap());
        to_s.connect_retry = Duration::from_secs(1);
        if i == 0 {
            to_s.export.default = Verdict::Reject;
        }
        r.add_peer(to_s).await.expect("peer");
        others.push((*ip, s));
    }
    until("all three established", async || {
        for (ip, _) in &others {
            if peer(&r, ip).await.state != "Established" {
                return None;
            }
        }
        Some(())
    })
    .await;
    r.originate(Origination {
        prefix: Some(net("10.246.0.0/26")),
        ..Origination::default()
    })
    .await
    .expect("originate");
    for (ip, s) in &others[1..] {
        until(&format!("{ip} learns the route"), async || {
            has_route(s, "10.246.0.0/26").await.then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !has_route(&others[0].1, "10.246.0.0/26").await,
        "the peer whose export policy rejects everything got the route"
    );
    for (_, s) in others {
        s.shutdown(false).await.expect("shutdown");
    }
    r.shutdown(false).await.expect("shutdown r");
}

fn peer_to(ip: &str, port: u16, source: &str, passive: bool) -> PeerConfig {
    let mut p = PeerConfig::new(ip.parse().unwrap(), 64512);
    p.port = port;
    p.source = Some(source.parse().unwrap());
    p.passive = passive;
    // Far longer than the test waits: the session must not owe its coming up to a retry.
    p.connect_retry = Duration::from_secs(60);
    p
}

/// A connection from an address that is not a peer yet (the agent has not heard of that node
/// from the datastore, a moment behind the node itself) is held, not refused: the peer added
/// meanwhile gets it, and the session comes up without the dialer's retry.
#[tokio::test]
async fn a_connection_from_a_peer_not_yet_known_is_kept_for_it() {
    let (a_ip, b_ip) = ("127.0.0.41", "127.0.0.42");
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let a = Speaker::start(config(a_ip, pa, 64512)).await.expect("a");
    let b = Speaker::start(config(b_ip, pb, 64512)).await.expect("b");
    b.add_peer(peer_to(a_ip, pa, b_ip, false))
        .await
        .expect("b's peer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(peer(&b, a_ip).await.state, "Established");
    // a knows b now, and never dials it (passive): only b's held connection can carry it.
    a.add_peer(peer_to(b_ip, pb, a_ip, true))
        .await
        .expect("a's peer");
    until("the session up on b's held connection", async || {
        (peer(&a, b_ip).await.state == "Established").then_some(())
    })
    .await;
    a.shutdown(false).await.expect("shutdown a");
    b.shutdown(false).await.expect("shutdown b");
}

/// A peer that refuses the connection (nothing listens yet: its agent is starting) is tried
/// again within a fraction of a second, doubling up to the connect-retry time, instead of
/// after the connect-retry time.
#[tokio::test]
async fn a_peer_not_listening_yet_is_reached_soon_after_it_is() {
    let (a_ip, b_ip) = ("127.0.0.43", "127.0.0.44");
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let b = Speaker::start(config(b_ip, pb, 64512)).await.expect("b");
    b.add_peer(peer_to(a_ip, pa, b_ip, false))
        .await
        .expect("b's peer");
    // b is refused (nothing on a's port) at least once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = Speaker::start(config(a_ip, pa, 64512)).await.expect("a");
    a.add_peer(peer_to(b_ip, pb, a_ip, true))
        .await
        .expect("a's peer");
    until("b reaches a", async || {
        (peer(&b, a_ip).await.state == "Established").then_some(())
    })
    .await;
    a.shutdown(false).await.expect("shutdown a");
    b.shutdown(false).await.expect("shutdown b");
}

/// A connection held from an address that then becomes a peer with a TCP MD5 key is not
/// given to that peer: it was accepted before the key was set, unsigned. It is closed, and
/// no OPEN is ever sent on it.
#[tokio::test]
async fn a_held_connection_never_carries_a_peer_that_has_an_md5_key() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a_ip, x_ip) = ("127.0.0.45", "127.0.0.46");
    let pa = free_port(a_ip);
    let a = Speaker::start(config(a_ip, pa, 64512)).await.expect("a");
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{x_ip}:0").parse().unwrap()).unwrap();
    let mut c = sock
        .connect(format!("{a_ip}:{pa}").parse().unwrap())
        .await
        .expect("connect");
    // An OPEN: version 4, AS 64512, hold 90, identifier 127.0.0.46, no parameters.
    let body = [4, 0xfc, 0x00, 0, 90, 127, 0, 0, 46, 0];
    let len = (19 + body.len()) as u16;
    let msg = [&[0xff; 16][..], &len.to_be_bytes(), &[1], &body].concat();
    c.write_all(&msg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = PeerConfig::new(x_ip.parse().unwrap(), 64512);
    p.passive = true;
    p.password = Some("secret".into());
    a.add_peer(p).await.expect("the peer, with its key");
    let mut got = vec![];
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the held connection is closed: {read:?}"
    );
    assert!(got.is_empty(), "nothing sent on it: {got:?}");
    assert_ne!(peer(&a, x_ip).await.state, "Established");
    a.shutdown(false).await.expect("shutdown a");
}

/// A reflector's clients that come up together share one encoding of the table, and of each
/// batch of changes, each sent it without its own routes: every client ends up holding every
/// other client's routes and never its own back. When one client's route replaces another's
/// for the same prefix, each of the two is told what the others are not (the replaced one
/// learns the new route, the new one loses the old), and the rest see the new one.
#[tokio::test]
async fn reflector_clients_get_each_others_routes_and_never_their_own() {
    let rr_ip = "127.0.0.41";
    let r = Speaker::start(config(rr_ip, free_port(rr_ip), 64700))
        .await
        .expect("r");
    let ips = ["127.0.0.42", "127.0.0.43", "127.0.0.44", "127.0.0.45"];
    let shared = "10.247.100.0/26";
    let mut clients = vec![];
    let mut to_clients = vec![];
    for (i, ip) in ips.iter().enumerate() {
        let port = free_port(ip);
        let s = Speaker::start(config(ip, port, 64700))
            .await
            .expect("client");
        s.originate(Origination {
            prefix: Some(net(&format!("10.247.{i}.0/26"))),
            ..Origination::default()
        })
        .await
        .expect("originate");
        if i == 0 {
            s.originate(Origination {
                prefix: Some(net(shared)),
                local_pref: Some(100),
                ..Origination::default()
            })
            .await
            .expect("originate");
        }
        let mut to_r = PeerConfig::new(rr_ip.parse().unwrap(), 64700);
        to_r.passive = true;
        s.add_peer(to_r).await.expect("peer r");
        let mut to_s = PeerConfig::new(ip.parse().unwrap(), 64700);
        to_s.port = port;
        to_s.source = Some(rr_ip.parse().unwrap());
        to_s.connect_retry = Duration::from_secs(1);
        to_s.rr_client = true;
        to_clients.push(to_s);
        clients.push((*ip, s));
    }
    // Added together, so the sessions come up close together.
    for p in to_clients {
        r.add_peer(p).await.expect("peer");
    }
    // What each client should hold from the reflector: the others' own prefixes, and the
    // shared prefix unless its best path is its own.
    let held = async |want: [usize; 4]| {
        for ((ip, s), n) in clients.iter().zip(want) {
            until(
                &format!("{ip} to hold {n} routes from the reflector"),
                async || {
                    let from_r = peer(s, rr_ip).await;
                    let to_it = peer(&r, ip).await;
                    (from_r.accepted == n && to_it.advertised == n).then_some(())
                },
            )
            .await;
        }
    };
    held([3, 4, 4, 4]).await;
    clients[1]
        .1
        .originate(Origination {
            prefix: Some(net(shared)),
            local_pref: Some(200),
            ..Origination::default()
        })
        .await
        .expect("originate");
    held([4, 3, 4, 4]).await;
    for (ip, s) in &clients[2..] {
        let rib = s.rib(RibFilter::default()).await.expect("rib");
        let route = rib
            .iter()
            .find(|r| r.prefix == net(shared))
            .expect("the shared prefix");
        assert_eq!(
            route.next_hop,
            Some(ips[1].parse().unwrap()),
            "{ip} follows the better path"
        );
    }
    for (_, s) in clients {
        s.shutdown(false).await.expect("shutdown");
    }
    r.shutdown(false).await.expect("shutdown r");
}
