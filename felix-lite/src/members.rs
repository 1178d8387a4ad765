//! A NetworkPolicy set's members as the agent keeps them between renders. At a cluster's
//! size the sets hold close to a million members, nearly all IPv4 hosts or IPv4 address and
//! port pairs: those are packed into 8 bytes each (a [`Member`] is 22), the rest (IPv6, and
//! any IPv4 network that is not packable) kept as they are. Iteration gives back the same
//! members in the same order within each part; a set is of one family, so in practice in the
//! order given.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::policy::Member;
use crate::proxy::Protocol;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// IPv4 members, packed ([`pack`]).
    v4: Box<[u64]>,
    other: Box<[Member]>,
}

const NET: u64 = 0;
const NOMATCH: u64 = 1;
const IP_PORT: u64 = 2;

/// `kind << 56 | (prefix or protocol) << 48 | port << 32 | address`.
fn pack(m: &Member) -> Option<u64> {
    let (kind, extra, port, addr) = match *m {
        Member::Net(IpNetwork::V4(n)) => (NET, n.prefix(), 0, n.ip()),
        Member::NoMatch(IpNetwork::V4(n)) => (NOMATCH, n.prefix(), 0, n.ip()),
        Member::IpPort(IpAddr::V4(ip), proto, port) => (IP_PORT, proto as u8, port, ip),
        _ => return None,
    };
    Some(kind << 56 | u64::from(extra) << 48 | u64::from(port) << 32 | u64::from(addr.to_bits()))
}

fn unpack(v: u64) -> Member {
    let addr = Ipv4Addr::from_bits(v as u32);
    let port = (v >> 32) as u16;
    let extra = (v >> 48) as u8;
    // Only what `pack` made is here: a prefix it read from a valid network, a protocol it
    // numbered.
    let net =
        || IpNetwork::V4(Ipv4Network::new(addr, extra).unwrap_or_else(|_| Ipv4Network::from(addr)));
    match v >> 56 {
        NET => Member::Net(net()),
        NOMATCH => Member::NoMatch(net()),
        _ => {
            let proto = match extra {
                x if x == Protocol::Udp as u8 => Protocol::Udp,
                x if x == Protocol::Sctp as u8 => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Member::IpPort(IpAddr::V4(addr), proto, port)
        }
    }
}

impl Members {
    pub fn len(&self) -> usize {
        self.v4.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A digest of the members in their order (SHA-1: a set that changed must never look
    /// unchanged, whoever chose its members).
    pub fn digest(&self) -> [u8; 20] {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update((self.v4.len() as u64).to_le_bytes());
        for v in &self.v4 {
            h.update(v.to_le_bytes());
        }
        for m in &self.other {
            h.update(m.to_string().as_bytes());
            h.update([b'\n']);
        }
        h.finalize().into()
    }

    /// The IPv4 members, then the others.
    pub fn iter(&self) -> impl Iterator<Item = Member> + '_ {
        self.v4
            .iter()
            .map(|v| unpack(*v))
            .chain(self.other.iter().copied())
    }
}

impl FromIterator<Member> for Members {
    fn from_iter<I: IntoIterator<Item = Member>>(iter: I) -> Self {
        let (mut v4, mut other) = (vec![], vec![]);
        for m in iter {
            match pack(&m) {
                Some(p) => v4.push(p),
                None => other.push(m),
            }
        }
        // Exactly sized: held until the next render.
        Members {
            v4: v4.into_boxed_slice(),
            other: other.into_boxed_slice(),
        }
    }
}

impl From<Vec<Member>> for Members {
    fn from(v: Vec<Member>) -> Self {
        v.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_member_comes_back_as_it_went_in() {
        let given: Vec<Member> = [
            "10.0.0.1/32",
            "0.0.0.0/1",
            "198.51.100.0/24",
            "255.255.255.255/32",
        ]
        .iter()
        .map(|n| Member::Net(n.parse().unwrap()))
        .chain([Member::NoMatch("198.51.100.7/32".parse().unwrap())])
        .chain(
            [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .map(|p| Member::IpPort("10.0.0.2".parse().unwrap(), p, 65535)),
        )
        .chain([Member::IpPort(
            "10.0.0.3".parse().unwrap(),
            Protocol::Tcp,
            0,
        )])
        .collect();
        let m: Members = given.clone().into();
        assert_eq!(m.v4.len(), given.len(), "every IPv4 member packed");
        assert_eq!(m.iter().collect::<Vec<_>>(), given);
        assert_eq!(m.len(), given.len());
        let fewer: Members = given[1..].iter().copied().collect();
        assert_ne!(m.digest(), fewer.digest());
        assert_eq!(m.digest(), m.clone().digest());
    }

    #[test]
    fn ipv6_members_are_kept_whole() {
        let given = vec![
            Member::host("fd00::1".parse().unwrap()),
            Member::NoMatch("fd00::/64".parse().unwrap()),
            Member::IpPort("fd00::2".parse().unwrap(), Protocol::Udp, 53),
        ];
        let m: Members = given.clone().into();
        assert!(m.v4.is_empty());
        assert_eq!(m.iter().collect::<Vec<_>>(), given);
        assert_eq!(Members::default().len(), 0);
        assert!(Members::default().is_empty());
    }
}
