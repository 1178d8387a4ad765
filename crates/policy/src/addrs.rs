//! A set's members as the compiler hands them to a dataplane: sorted, without duplicates,
//! and packed (an IPv4 address in 4 bytes and an address with a port in 6, not a
//! `BTreeSet` slot of 24). At 150,000 pods and 1,000 policies the sets hold about a million
//! members, built again at every render.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A member that is an IPv4 or an IPv6 thing; IPv4 ones sort first, as in `IpAddr`.
pub trait Member: Copy + Ord {
    type V4: Copy + Ord + Debug;
    type V6: Copy + Ord + Debug;
    fn split(self) -> Result<Self::V4, Self::V6>;
    fn from_v4(m: Self::V4) -> Self;
    fn from_v6(m: Self::V6) -> Self;
}

impl Member for IpAddr {
    type V4 = Ipv4Addr;
    type V6 = Ipv6Addr;
    fn split(self) -> Result<Ipv4Addr, Ipv6Addr> {
        match self {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(a) => Err(a),
        }
    }
    fn from_v4(m: Ipv4Addr) -> IpAddr {
        IpAddr::V4(m)
    }
    fn from_v6(m: Ipv6Addr) -> IpAddr {
        IpAddr::V6(m)
    }
}

impl Member for (IpAddr, u16) {
    type V4 = (Ipv4Addr, u16);
    type V6 = (Ipv6Addr, u16);
    fn split(self) -> Result<(Ipv4Addr, u16), (Ipv6Addr, u16)> {
        match self {
            (IpAddr::V4(a), p) => Ok((a, p)),
            (IpAddr::V6(a), p) => Err((a, p)),
        }
    }
    fn from_v4((a, p): (Ipv4Addr, u16)) -> (IpAddr, u16) {
        (IpAddr::V4(a), p)
    }
    fn from_v6((a, p): (Ipv6Addr, u16)) -> (IpAddr, u16) {
        (IpAddr::V6(a), p)
    }
}

/// Members in order (IPv4 first), each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed<T: Member> {
    v4: Box<[T::V4]>,
    v6: Box<[T::V6]>,
}

/// A selector's pods' addresses.
pub type AddrSet = Packed<IpAddr>;
/// A named port's (address, port) pairs.
pub type PortSet = Packed<(IpAddr, u16)>;

impl<T: Member> Default for Packed<T> {
    fn default() -> Self {
        Packed {
            v4: Box::new([]),
            v6: Box::new([]),
        }
    }
}

impl<T: Member> Packed<T> {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, m: &T) -> bool {
        match m.split() {
            Ok(a) => self.v4.binary_search(&a).is_ok(),
            Err(a) => self.v6.binary_search(&a).is_ok(),
        }
    }

    /// In order: the IPv4 members, then the IPv6 ones.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        let v4 = self.v4.iter().map(|m| T::from_v4(*m));
        v4.chain(self.v6.iter().map(|m| T::from_v6(*m)))
    }
}

impl<T: Member> FromIterator<T> for Packed<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Packed<T> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for m in iter {
            match m.split() {
                Ok(a) => v4.push(a),
                Err(a) => v6.push(a),
            }
        }
        fn exact<M: Ord>(mut v: Vec<M>) -> Box<[M]> {
            v.sort_unstable();
            v.dedup();
            v.into_boxed_slice()
        }
        Packed {
            v4: exact(v4),
            v6: exact(v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn same_as_a_btreeset<T: Member + Debug>(items: &[T], absent: &[T]) {
        let set: Packed<T> = items.iter().copied().collect();
        let reference: BTreeSet<T> = items.iter().copied().collect();
        assert_eq!(set.len(), reference.len());
        assert!(set.iter().eq(reference.iter().copied()));
        for m in &reference {
            assert!(set.contains(m), "{m:?}");
        }
        for m in absent {
            assert!(!set.contains(m), "{m:?}");
        }
    }

    #[test]
    fn holds_what_a_btreeset_holds_in_the_same_order() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ips: Vec<IpAddr> = [
            "10.0.0.9",
            "fd00::2",
            "10.0.0.1",
            "10.0.0.9",
            "fd00::1",
            "192.168.1.1",
            "fd00::2",
        ]
        .map(ip)
        .to_vec();
        let absent = ["10.0.0.2", "fd00::3", "0.0.0.0", "::"].map(ip);
        same_as_a_btreeset(&ips, &absent);
        let pairs: Vec<(IpAddr, u16)> = ips
            .iter()
            .map(|a| (*a, 80))
            .chain([(ip("10.0.0.1"), 8080), (ip("fd00::1"), 1)])
            .collect();
        same_as_a_btreeset(
            &pairs,
            &[
                (ip("10.0.0.1"), 81),
                (ip("fd00::1"), 0),
                (ip("10.0.0.2"), 80),
            ],
        );
        assert!(AddrSet::default().is_empty());
    }
}
