//! NEXT_HOP semantics (RFC 4271 §6.3, RFC 2545 §3 for IPv6): a next hop no router could
//! forward to makes the routes it carries unusable. They are treated as withdrawn and logged;
//! no NOTIFICATION is sent and the session stays up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an IPv4 NEXT_HOP received from `peer` on a session whose local address is `own`
/// cannot be used, or None when it can.
pub fn unusable_v4(nh: Ipv4Addr, own: Option<Ipv4Addr>, peer: IpAddr) -> Option<&'static str> {
    if nh.is_unspecified() {
        Some("0.0.0.0")
    } else if nh.is_multicast() {
        Some("a multicast address")
    } else if nh.is_broadcast() || nh.octets()[0] >= 240 {
        Some("a class E (reserved) address")
    } else if nh.is_loopback() && !peer.is_loopback() {
        Some("a loopback address from a peer that is not on loopback")
    } else if Some(nh) == own {
        Some("this speaker's own address on the session")
    } else {
        None
    }
}

/// The same for MP_REACH_NLRI's IPv6 next hops (a global address, optionally followed by a
/// link-local one).
pub fn unusable_v6(nhs: &[IpAddr], own: Option<Ipv6Addr>, peer: IpAddr) -> Option<&'static str> {
    let Some(IpAddr::V6(global)) = nhs.first().copied() else {
        return Some("no IPv6 next hop");
    };
    if global.is_unspecified() {
        Some("::")
    } else if global.is_multicast() {
        Some("a multicast address")
    } else if global.is_unicast_link_local() {
        Some("a link-local address without a global one")
    } else if global.is_loopback() && !peer.is_loopback() {
        Some("a loopback address from a peer that is not on loopback")
    } else if Some(global) == own {
        Some("this speaker's own address on the session")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4() {
        let peer: IpAddr = "198.18.0.2".parse().unwrap();
        let own = Some(v4("198.18.0.1"));
        assert_eq!(unusable_v4(v4("198.18.0.2"), own, peer), None);
        assert_eq!(unusable_v4(v4("10.0.0.9"), own, peer), None, "third party");
        for bad in [
            "0.0.0.0",
            "224.0.0.5",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
            "127.0.0.1",
            "198.18.0.1",
        ] {
            assert!(unusable_v4(v4(bad), own, peer).is_some(), "{bad}");
        }
        // Loopback is fine between speakers on loopback (tests, one host).
        let lo: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            unusable_v4(v4("127.0.0.2"), Some(v4("127.0.0.1")), lo),
            None
        );
    }

    #[test]
    fn ipv6() {
        let peer: IpAddr = "2001:db8::2".parse().unwrap();
        let own: Option<Ipv6Addr> = Some("2001:db8::1".parse().unwrap());
        let nh = |s: &[&str]| {
            s.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(unusable_v6(&nh(&["2001:db8::2"]), own, peer), None);
        assert_eq!(
            unusable_v6(&nh(&["2001:db8::2", "fe80::2"]), own, peer),
            None
        );
        for bad in [
            &["::"][..],
            &["ff02::5"],
            &["fe80::2"],
            &["::1"],
            &["2001:db8::1"],
            &[],
        ] {
            assert!(unusable_v6(&nh(bad), own, peer).is_some(), "{bad:?}");
        }
    }
}
