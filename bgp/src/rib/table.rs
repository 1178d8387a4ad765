//! The Loc-RIB's map from prefix to entry, in prefix order (IPv4 before IPv6, as
//! `IpNetwork` orders them). IPv4 prefixes are keyed by one packed `u64` (address, then
//! length) instead of the 18-byte `IpNetwork`: at a million routes in a B-tree whose leaves
//! run about half full, that is ~18 bytes a route less.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub struct Table<V> {
    v4: BTreeMap<u64, V>,
    v6: BTreeMap<Ipv6Network, V>,
}

/// Address in the high bits, length in the low byte: the order of `Ipv4Network` (address,
/// then length).
fn key(n: &Ipv4Network) -> u64 {
    u64::from(u32::from(n.ip())) << 8 | u64::from(n.prefix())
}

fn prefix(k: u64) -> IpNetwork {
    let addr = Ipv4Addr::from((k >> 8) as u32);
    IpNetwork::V4(Ipv4Network::new_checked(addr, k as u8).expect("keys hold lengths ≤ 32"))
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

impl<V> Table<V> {
    pub fn entry_or_default(&mut self, p: IpNetwork) -> &mut V
    where
        V: Default,
    {
        match p {
            IpNetwork::V4(n) => self.v4.entry(key(&n)).or_default(),
            IpNetwork::V6(n) => self.v6.entry(n).or_default(),
        }
    }

    pub fn get(&self, p: &IpNetwork) -> Option<&V> {
        match p {
            IpNetwork::V4(n) => self.v4.get(&key(n)),
            IpNetwork::V6(n) => self.v6.get(n),
        }
    }

    pub fn get_mut(&mut self, p: &IpNetwork) -> Option<&mut V> {
        match p {
            IpNetwork::V4(n) => self.v4.get_mut(&key(n)),
            IpNetwork::V6(n) => self.v6.get_mut(n),
        }
    }

    pub fn remove(&mut self, p: &IpNetwork) -> Option<V> {
        match p {
            IpNetwork::V4(n) => self.v4.remove(&key(n)),
            IpNetwork::V6(n) => self.v6.remove(n),
        }
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.v4.values_mut().chain(self.v6.values_mut())
    }

    /// Every prefix and its entry, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &V)> {
        let v4 = self.v4.iter().map(|(k, v)| (prefix(*k), v));
        v4.chain(self.v6.iter().map(|(n, v)| (IpNetwork::V6(*n), v)))
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_in_ipnetwork_order_and_gives_back_the_same_prefixes() {
        let mut t: Table<u32> = Table::default();
        let prefixes: Vec<IpNetwork> = [
            "10.0.0.0/8",
            "10.0.0.0/24",
            "9.255.255.255/32",
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.0.0.1/24", // host bits set: kept as given, like IpNetwork
            "fd00::/8",
            "::/0",
        ]
        .iter()
        .map(|s| s.parse().expect("prefix"))
        .collect();
        for (i, p) in prefixes.iter().enumerate() {
            *t.entry_or_default(*p) = i as u32;
        }
        let mut sorted = prefixes.clone();
        sorted.sort();
        let got: Vec<IpNetwork> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(got, sorted);
        for (i, p) in prefixes.iter().enumerate() {
            assert_eq!(t.get(p), Some(&(i as u32)), "{p}");
        }
        assert_eq!(t.len(), prefixes.len());
        assert_eq!(t.remove(&prefixes[5]), Some(5));
        assert_eq!(
            t.get(&prefixes[1]),
            Some(&1),
            "10.0.0.0/24 is not 10.0.0.1/24"
        );
        assert_eq!(t.len(), prefixes.len() - 1);
    }
}
