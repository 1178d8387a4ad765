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
