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
