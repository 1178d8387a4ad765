//! The node's IPv4 address, found with calico-node's autodetection methods (REFERENCE §A1,
//! `node/pkg/lifecycle/startup/autodetection/`). Pure: it chooses from a list of interfaces
//! the caller read from the kernel.
//!
//! One deliberate difference: the regexes an operator gives (`interface=`, `skip-interface=`)
//! must match the whole interface name (`^(?:re)$`). Calico's are unanchored, so its
//! `interface=eth` also picks `veth0`. The default exclusions are Calico's list as written
//! (each starts with `^`, so they match name prefixes there and here alike).

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
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

#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    Interface(Vec<Regex>),
    SkipInterface(Vec<Regex>),
    Cidr(Vec<Ipv4Network>),
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
    #[error("cidr=: {0:?} is not an IPv4 CIDR")]
    BadCidr(String),
    #[error("{method}: no interface has a usable IPv4 address{detail}")]
    NotFound { method: String, detail: String },
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
    /// Parses `IP_AUTODETECTION_METHOD`; empty is `first-found`.
    pub fn parse(s: &str) -> Result<Method, DetectError> {
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
                .map(|c| c.parse().map_err(|_| DetectError::BadCidr(c.to_string())))
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

/// Go's `IP.IsGlobalUnicast` for IPv4: not unspecified, loopback, link-local, multicast or
/// the broadcast address (private ranges count).
pub fn is_global_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast())
}

fn v4s(i: &Iface) -> impl Iterator<Item = Ipv4Network> + '_ {
    i.addrs.iter().filter_map(|a| match a {
        IpNetwork::V4(n) if is_global_unicast(n.ip()) => Some(*n),
        _ => None,
    })
}

/// The interface and address a method picks. `reach` answers can-reach (the local address the
/// kernel would use toward the host) and `internal_ip` kubernetes-internal-ip (the Node's
/// first InternalIP); both are I/O the caller does.
pub fn detect(
    method: &Method,
    ifaces: &[Iface],
    reach: impl FnOnce(&str) -> Result<Ipv4Addr, String>,
    internal_ip: impl FnOnce() -> Result<Ipv4Addr, String>,
) -> Result<(String, Ipv4Network), DetectError> {
    let not_found = |detail: String| DetectError::NotFound {
        method: method.name(),
        detail,
    };
    let by_ip = |ip: Ipv4Addr| {
        ifaces
            .iter()
            .find_map(|i| v4s(i).find(|n| n.ip() == ip).map(|n| (i.name.clone(), n)))
    };
    let defaults: Vec<Regex> = DEFAULT_INTERFACES_TO_EXCLUDE
        .iter()
        .chain(std::iter::once(&BRINDLE_EXCLUDE))
        .map(|r| Regex::new(r).expect("the default exclusions are valid regexes"))
        .collect();
    let excluded_by_default = |name: &str| defaults.iter().any(|r| r.is_match(name));
    // calico-node walks net.Interfaces() in reverse "to maintain behavior with older versions".
    let walk = |keep: &dyn Fn(&Iface) -> bool, net_ok: &dyn Fn(&Ipv4Network) -> bool| {
        ifaces
            .iter()
            .rev()
            .filter(|i| keep(i))
            .find_map(|i| v4s(i).find(|n| net_ok(n)).map(|n| (i.name.clone(), n)))
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

/// Parses `--ip` / `IP`: an address with or without a prefix (a bare address gets /32, as
/// Calico does when no interface holds it).
pub fn parse_explicit(s: &str, ifaces: &[Iface]) -> Result<(String, Ipv4Network), String> {
    if let Ok(n) = s.parse::<Ipv4Network>() {
        if s.contains('/') {
            let name = ifaces
                .iter()
                .find(|i| v4s(i).any(|a| a.ip() == n.ip()))
                .map(|i| i.name.clone())
                .unwrap_or_default();
            return Ok((name, n));
        }
    }
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("--ip {s:?} is not an IPv4 address or address/prefix"))?;
    Ok(ifaces
        .iter()
        .find_map(|i| v4s(i).find(|n| n.ip() == ip).map(|n| (i.name.clone(), n)))
        .unwrap_or_else(|| (String::new(), Ipv4Network::from(ip))))
}

/// The local address the kernel would use toward `host` (a UDP connect sends nothing).
pub fn local_toward(host: &str) -> Result<Ipv4Addr, String> {
    use std::net::ToSocketAddrs;
    let target = (host, 80)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{host} has no IPv4 address"))?;
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.connect(target).map_err(|e| e.to_string())?;
    match s.local_addr().map_err(|e| e.to_string())?.ip() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err("an IPv6 source".into()),
    }
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
            iface("eth0", &["198.18.0.11/24", "fe80::1/64"]),
            iface("eth1", &["198.19.0.11/16"]),
            iface("veth0", &["198.20.0.1/24"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface("brl0123456789a", &["169.254.1.1/32"]),
        ]
    }

    fn run(m: &str) -> Result<(String, Ipv4Network), DetectError> {
        detect(
            &Method::parse(m).unwrap(),
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
            Method::parse("nearest"),
            Err(DetectError::UnknownMethod(_))
        ));
        assert!(matches!(
            Method::parse("interface=("),
            Err(DetectError::BadRegex { .. })
        ));
        assert!(matches!(
            Method::parse("cidr=10.0.0.0/33"),
            Err(DetectError::BadCidr(_))
        ));
    }

    #[test]
    fn explicit_addresses() {
        let l = lab();
        assert_eq!(
            parse_explicit("198.18.0.11", &l).unwrap(),
            ("eth0".into(), "198.18.0.11/24".parse().unwrap())
        );
        assert_eq!(
            parse_explicit("203.0.113.9", &l).unwrap().1.to_string(),
            "203.0.113.9/32"
        );
        assert!(parse_explicit("nope", &l).is_err());
    }
}
