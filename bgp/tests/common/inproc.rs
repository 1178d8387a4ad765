//! Helpers for tests that run the speaker in-process on loopback addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use brindle_bgp::speaker::{GracefulRestart, PeerStatus, RibFilter, Speaker, SpeakerConfig};

use super::net;

/// A port nothing listens on at `ip` now.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A speaker of AS `asn` listening at `ip`:`port`, router ID `ip`, without kernel sync.
pub fn config(ip: &str, port: u16, asn: u32) -> SpeakerConfig {
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
        no_transit: false,
        rails: Default::default(),
    }
}

/// Polls `f` every 50 ms until it gives a value; panics naming `what` after 15 s.
pub async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The status of the speaker's peer at `addr`.
pub async fn peer(s: &Speaker, addr: &str) -> PeerStatus {
    let a: IpAddr = addr.parse().expect("ip");
    s.peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.addr == a)
        .expect("peer")
}

/// Whether the speaker's Loc-RIB holds `prefix`.
pub async fn has_route(s: &Speaker, prefix: &str) -> bool {
    s.rib(RibFilter::default())
        .await
        .expect("rib")
        .iter()
        .any(|r| r.prefix == net(prefix))
}
