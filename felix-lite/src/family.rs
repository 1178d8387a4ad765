//! The address family a ruleset is for. One renderer writes both: IPv4 rules go to
//! `iptables-restore` (or table `ip brindle`), IPv6 ones to `ip6tables-restore` (or table
//! `ip6 brindle`), and what differs between them is asked of this type, never written twice.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn has(self, ip: IpAddr) -> bool {
        Family::of(ip) == self
    }

    pub fn has_net(self, n: &IpNetwork) -> bool {
        self.has(n.ip())
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// An ipset's name for this family: ours start `brl40` for IPv4 and `brl60` for IPv6
    /// (Calico's `cali40` / `cali60`). `v4_name` is the IPv4 name.
    pub fn set_name(self, v4_name: &str) -> String {
        match (self, v4_name.strip_prefix("brl40")) {
            (Family::V6, Some(rest)) => format!("brl60{rest}"),
            _ => v4_name.to_string(),
        }
    }

    /// The ipsets' `family` (`inet`, `inet6`).
    pub fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    /// `iptables` or `ip6tables` (the tools' name stem).
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The nftables table family and the address match's keyword (`ip`, `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nftables address type (`ipv4_addr`, `ipv6_addr`).
    pub fn nft_addr(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// A host prefix's length.
    pub fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The loopback range.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_only_where_the_family_does() {
        assert_eq!(
            Family::V6.set_name("brl40all-ipam-pools"),
            "brl60all-ipam-pools"
        );
        assert_eq!(
            Family::V4.set_name("brl40all-ipam-pools"),
            "brl40all-ipam-pools"
        );
        // A name that is not ours is left alone.
        assert_eq!(Family::V6.set_name("KUBE-X"), "KUBE-X");
        assert!(Family::V6.has("fd00::1".parse().unwrap()));
        assert!(!Family::V6.has("10.0.0.1".parse().unwrap()));
    }
}
