//! Helpers shared by the tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use brindle_bgp::rib::PeerInfo;
use ipnetwork::IpNetwork;

/// Peer `id` at 198.18.0.<id>, router ID 198.18.1.<id>.
pub fn peer(id: u32, asn: u32, rr_client: bool) -> PeerInfo {
    PeerInfo {
        id,
        asn,
        router_id: Ipv4Addr::new(198, 18, 1, id as u8),
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, id as u8)),
        rr_client,
        member: false,
    }
}

pub fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}
pub mod bgpd;
pub mod inproc;
