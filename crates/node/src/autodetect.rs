//! The node's IPv4 and IPv6 addresses, found with calico-node's autodetection methods
//! (REFERENCE §A1, `node/pkg/lifecycle/startup/autodetection/`), one family at a time. Pure:
//! it chooses from a list of interfaces the caller read from the kernel.
//!
//! One deliberate difference: the regexes an operator gives (`interface=`, `skip-interface=`)
//! must match the whole interface name (`^(?:re)$`). Calico's are unanchored, so its
//! `interface=eth` also picks `veth0`. The default exclusions are Calico's list as written
//! (each starts with `^`, so they match name prefixes there and here alike).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use regex::Regex;

/// calico-node's `DEFAULT_INTERFACES_TO_EXCLUDE`, quoted exactly.
pub const DEFAULT_INTERFACES_TO_EXCLUDE: &[&str] = &[
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^podman.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo",
    "^br-.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan\\.calico.*",
    "^vxlan-v6\\.calico.*",
    "^wireguard\\.cali.*",
    "^wg-v6\\.cali.*",
    "^nodelocaldns.*",
];

/// Brindle's own pod veths (prefix `brl`) are never the node's address either.
const BRINDLE_EXCLUDE: &str = "^brl.*";

/// One interface as the kernel lists it, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mtu: u32,
    pub addrs: Vec<IpNetwork>,
}

/// Which of the node's addresses is being found (the dataplane's family type).
pub use brindle_felix_lite::family::Family;

#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    Interface(Vec<Regex>),
    SkipInterface(Vec<Regex>),
    Cidr(Vec<IpNetwork>),
    /// `can-reach=<host>`: the address the kernel would send from toward it.
    CanReach(String),
    KubernetesInternalIp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("unknown IP autodetection method {0:?} (first-found, interface=, skip-interface=, cidr=, can-reach=, kubernetes-internal-ip)")]
    UnknownMethod(String),
    #[error("{method}: {value:?} is not a valid regular expression: {why}")]
    BadRegex {
        method: &'static str,
        value: String,
        why: String,
    },
    #[error("cidr=: {0:?} is not an {1} CIDR")]
    BadCidr(String, &'static str),
    #[error("{method}: no interface has a usable {family} address{detail}")]
    NotFound {
        method: String,
        family: &'static str,
        detail: String,
    },
}

fn regexes(method: &'static str, list: &str) -> Result<Vec<Regex>, DetectError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|r| {
            Regex::new(&format!("^(?:{r})$")).map_err(|e| DetectError::BadRegex {
                method,
                value: r.to_string(),
                why: e.to_string(),
            })
        })
        .collect()
}

impl Method {
    /// Parses `IP_AUTODETECTION_METHOD` (or `IP6_…` for [`Family::V6`]); empty is
    /// `first-found`.
    pub fn parse(s: &str, family: Family) -> Result<Method, DetectError> {
        let s = s.trim();
        if s.is_empty() || s == "first-found" {
            return Ok(Method::FirstFound);
        }
        if s == "kubernetes-internal-ip" {
            return Ok(Method::KubernetesInternalIp);
        }
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| DetectError::UnknownMethod(s.to_string()))?;
        match k {
            "interface" => Ok(Method::Interface(regexes("interface=", v)?)),
            "skip-interface" => Ok(Method::SkipInterface(regexes("skip-interface=", v)?)),
            "cidr" => v
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| match c.parse::<IpNetwork>() {
                    Ok(n) if Family::of(n.ip()) == family => Ok(n),
                    _ => Err(DetectError::BadCidr(c.to_string(), family.name())),
                })
                .collect::<Result<_, _>>()
                .map(Method::Cidr),
            "can-reach" if !v.trim().is_empty() => Ok(Method::CanReach(v.trim().to_string())),
            _ => Err(DetectError::UnknownMethod(s.to_string())),
        }
    }

    fn name(&self) -> String {
        match self {
            Method::FirstFound => "first-found".into(),
            Method::Interface(_) => "interface=".into(),
            Method::SkipInterface(_) => "skip-interface=".into(),
            Method::Cidr(_) => "cidr=".into(),
            Method::CanReach(h) => format!("can-reach={h}"),
            Method::KubernetesInternalIp => "kubernetes-internal-ip".into(),
        }
    }
}

/// Go's `IP.IsGlobalUnicast`: not unspecified, loopback, link-local, multicast or (IPv4) the
/// broadcast address. Private ranges and IPv6 unique-local addresses count.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_broadcast())
        }
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_unicast_link_local())
        }
    }
}

/// An interface's usable addresses of one family.
fn usable(i: &Iface, family: Family) -> impl Iterator<Item = IpNetwork> + '_ {
    i.addrs
        .iter()
        .filter(move |a| Family::of(a.ip()) == family && is_global_unicast(a.ip()))
        .copied()
}

/// The interface and address a method picks. `reach` answers can-reach (the local address the
/// kernel would use toward the host) and `internal_ip` kubernetes-internal-ip (the Node's
/// first InternalIP of the family); both are I/O the caller does.
pub fn detect(
    method: &Method,
    family: Family,
    ifaces: &[Iface],
    reach: impl FnOnce(&str) -> Result<IpAddr, String>,
    internal_ip: impl FnOnce() -> Result<IpAddr, String>,
) -> Result<(String, IpNetwork), DetectError> {
    let not_found = |detail: String| DetectError::NotFound {
        method: method.name(),
        family: family.name(),
        detail,
    };
    let by_ip = |ip: IpAddr| {
        ifaces.iter().find_map(|i| {
            usable(i, family)
                .find(|n| n.ip() == ip)
                .map(|n| (i.name.clone(), n))
        })
    };
    let defaults: Vec<Regex> = DEFAULT_INTERFACES_TO_EXCLUDE
        .iter()
        .chain(std::iter::once(&BRINDLE_EXCLUDE))
        .map(|r| Regex::new(r).expect("the default exclusions are valid regexes"))
        .collect();
    let excluded_by_default = |name: &str| defaults.iter().any(|r| r.is_match(name));
    // calico-node walks net.Interfaces() in reverse "to maintain behavior with older versions".
    let walk = |keep: &dyn Fn(&Iface) -> bool, net_ok: &dyn Fn(&IpNetwork) -> bool| {
        ifaces.iter().rev().filter(|i| keep(i)).find_map(|i| {
            usable(i, family)
                .find(|n| net_ok(n))
                .map(|n| (i.name.clone(), n))
        })
    };
    let found = match method {
        Method::FirstFound => walk(&|i| !excluded_by_default(&i.name), &|_| true),
        Method::Interface(res) => walk(&|i| res.iter().any(|r| r.is_match(&i.name)), &|_| true),
        Method::SkipInterface(res) => walk(
            &|i| !excluded_by_default(&i.name) && !res.iter().any(|r| r.is_match(&i.name)),
            &|_| true,
        ),
        Method::Cidr(cidrs) => walk(&|_| true, &|n| cidrs.iter().any(|c| c.contains(n.ip()))),
        Method::CanReach(host) => {
            let ip = reach(host).map_err(|e| not_found(format!(" (reaching {host}: {e})")))?;
            return by_ip(ip).ok_or_else(|| {
                not_found(format!(
                    " (the route toward {host} leaves from {ip}, which no interface holds)"
                ))
            });
        }
        Method::KubernetesInternalIp => {
            let ip = internal_ip().map_err(|e| not_found(format!(" ({e})")))?;
            return by_ip(ip).ok_or_else(|| {
                not_found(format!(
                    " (the Node's InternalIP {ip} is on no local interface)"
                ))
            });
        }
    };
    found.ok_or_else(|| not_found(String::new()))
}

/// Parses `--ip` / `IP` (or `--ip6` / `IP6`): an address with or without a prefix (a bare
/// address takes the prefix of the interface that holds it, else a host prefix, as Calico).
pub fn parse_explicit(
    s: &str,
    family: Family,
    ifaces: &[Iface],
) -> Result<(String, IpNetwork), String> {
    let flag = match family {
        Family::V4 => "--ip",
        Family::V6 => "--ip6",
    };
    let bad = || {
        format!(
            "{flag} {s:?} is not an {} address or address/prefix",
            family.name()
        )
    };
    let holder = |ip: IpAddr| {
        ifaces.iter().find_map(|i| {
            usable(i, family)
                .find(|n| n.ip() == ip)
                .map(|n| (i.name.clone(), n))
        })
    };
    if s.contains('/') {
        let n: IpNetwork = s.parse().map_err(|_| bad())?;
        if Family::of(n.ip()) != family {
            return Err(bad());
        }
        let name = holder(n.ip()).map(|h| h.0).unwrap_or_default();
        return Ok((name, n));
    }
    let ip: IpAddr = s.parse().map_err(|_| bad())?;
    if Family::of(ip) != family {
        return Err(bad());
    }
    Ok(holder(ip).unwrap_or_else(|| (String::new(), IpNetwork::from(ip))))
}

/// The local address the kernel would use toward `host` (a UDP connect sends nothing).
pub fn local_toward(host: &str, family: Family) -> Result<IpAddr, String> {
    use std::net::ToSocketAddrs;
    let target = (host, 80)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .find(|a| Family::of(a.ip()) == family)
        .ok_or_else(|| format!("{host} has no {} address", family.name()))?;
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = std::net::UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
    s.connect(target).map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addrs: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            mtu: 1500,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn lab() -> Vec<Iface> {
        vec![
            iface("lo", &["127.0.0.1/8"]),
            iface(
                "eth0",
                &["198.18.0.11/24", "fe80::1/64", "2001:db8:18::11/64"],
            ),
            iface("eth1", &["198.19.0.11/16", "fd00:19::11/64"]),
            iface("veth0", &["198.20.0.1/24"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface("brl0123456789a", &["169.254.1.1/32"]),
        ]
    }

    fn run(m: &str) -> Result<(String, IpNetwork), DetectError> {
        detect(
            &Method::parse(m, Family::V4).unwrap(),
            Family::V4,
            &lab(),
            |_| Ok("198.19.0.11".parse().unwrap()),
            || Ok("198.18.0.11".parse().unwrap()),
        )
    }

    #[test]
    fn first_found_walks_in_reverse_past_the_default_exclusions() {
        // veth0 and docker0 are excluded; eth1 is the last remaining one.
        assert_eq!(run("").unwrap().0, "eth1");
        assert_eq!(run("first-found").unwrap().1.to_string(), "198.19.0.11/16");
    }

    #[test]
    fn interface_regexes_are_anchored() {
        assert_eq!(
            run("interface=eth0").unwrap().1.to_string(),
            "198.18.0.11/24"
        );
        // Calico's unanchored `eth` would match veth0 (last in reverse order) too.
        assert!(matches!(
            run("interface=eth"),
            Err(DetectError::NotFound { .. })
        ));
        assert_eq!(run("interface=eth.*").unwrap().0, "eth1");
        assert_eq!(run("interface=bond0, eth0").unwrap().0, "eth0");
    }

    #[test]
    fn skip_interface_adds_to_the_defaults() {
        assert_eq!(run("skip-interface=eth1").unwrap().0, "eth0");
        assert!(run("skip-interface=eth.*").is_err());
    }

    #[test]
    fn cidr_can_reach_and_internal_ip() {
        assert_eq!(run("cidr=198.18.0.0/15").unwrap().0, "eth1");
        assert_eq!(run("cidr=198.18.0.0/24,10.0.0.0/8").unwrap().0, "eth0");
        assert_eq!(run("can-reach=198.19.0.1").unwrap().0, "eth1");
        assert_eq!(run("kubernetes-internal-ip").unwrap().0, "eth0");
        let e = detect(
            &Method::KubernetesInternalIp,
            Family::V4,
            &lab(),
            |_| unreachable!(),
            || Ok("203.0.113.9".parse().unwrap()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("203.0.113.9"), "{e}");
    }

    #[test]
    fn bad_methods_are_named() {
        assert!(matches!(
            Method::parse("nearest", Family::V4),
            Err(DetectError::UnknownMethod(_))
        ));
        assert!(matches!(
            Method::parse("interface=(", Family::V4),
            Err(DetectError::BadRegex { .. })
        ));
        assert!(matches!(
            Method::parse("cidr=10.0.0.0/33", Family::V4),
            Err(DetectError::BadCidr(..))
        ));
        // A CIDR of the other family is named as such.
        let e = Method::parse("cidr=10.0.0.0/8", Family::V6).unwrap_err();
        assert_eq!(e.to_string(), "cidr=: \"10.0.0.0/8\" is not an IPv6 CIDR");
    }

    #[test]
    fn explicit_addresses() {
        let l = lab();
        assert_eq!(
            parse_explicit("198.18.0.11", Family::V4, &l).unwrap(),
            ("eth0".into(), "198.18.0.11/24".parse().unwrap())
        );
        assert_eq!(
            parse_explicit("203.0.113.9", Family::V4, &l)
                .unwrap()
                .1
                .to_string(),
            "203.0.113.9/32"
        );
        assert!(parse_explicit("nope", Family::V4, &l).is_err());
        // The other family is refused with the flag's name.
        let e = parse_explicit("2001:db8::1", Family::V4, &l).unwrap_err();
        assert!(e.contains("--ip ") && e.contains("IPv4"), "{e}");
        assert_eq!(
            parse_explicit("2001:db8:18::11", Family::V6, &l).unwrap(),
            ("eth0".into(), "2001:db8:18::11/64".parse().unwrap())
        );
        assert_eq!(
            parse_explicit("2001:db8:99::1/64", Family::V6, &l).unwrap(),
            (String::new(), "2001:db8:99::1/64".parse().unwrap())
        );
        assert!(parse_explicit("198.18.0.11", Family::V6, &l).is_err());
    }

    fn run6(m: &str) -> Result<(String, IpNetwork), DetectError> {
        detect(
            &Method::parse(m, Family::V6).unwrap(),
            Family::V6,
            &lab(),
            |_| Ok("2001:db8:18::11".parse().unwrap()),
            || Ok("fd00:19::11".parse().unwrap()),
        )
    }

    #[test]
    fn ipv6_methods_skip_link_local_and_the_other_family() {
        // first-found in reverse: eth1's unique-local address (global unicast, as in Go).
        assert_eq!(run6("").unwrap().1.to_string(), "fd00:19::11/64");
        // eth0's link-local fe80::1 is never chosen, its global address is.
        assert_eq!(
            run6("interface=eth0").unwrap().1.to_string(),
            "2001:db8:18::11/64"
        );
        assert_eq!(run6("cidr=2001:db8::/32").unwrap().0, "eth0");
        assert_eq!(run6("can-reach=2001:db8:18::1").unwrap().0, "eth0");
        assert_eq!(run6("kubernetes-internal-ip").unwrap().0, "eth1");
        // docker0 has IPv4 only: interface=docker0 finds no IPv6 address, and says which.
        let e = run6("interface=docker0").unwrap_err();
        assert!(e.to_string().contains("usable IPv6 address"), "{e}");
    }
}
