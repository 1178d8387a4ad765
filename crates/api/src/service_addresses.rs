//! Which addresses a Service may take as an externalIP or LoadBalancer address, decided
//! from the cluster's records alone, so that the agent programming Services and `brindlectl
//! services` showing them judge alike.
//!
//! Any namespace user can set externalIPs (kube-proxy's CVE-2020-8554): on a node's address
//! the Service would capture the node's traffic (its BGP sessions), on a pod's a pod's. So an
//! address is programmed only inside the ranges the operator allows (the `default`
//! BGPConfiguration's serviceExternalIPs / serviceLoadBalancerIPs, which are also what is
//! advertised), never on a node's, a BGP peer's or a pool's address, and inside a node's
//! underlay subnet only through an allowed range no wider than that subnet.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::bgp::{ServiceRange, DEFAULT_BGP_PORT};
use crate::{BGPConfigurationSpec, BGPPeerSpec, IPPoolSpec, NodeBgp};

/// One of a node's addresses as its record gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub node: String,
    pub ip: IpAddr,
    /// The underlay subnet (the underlay address's prefix; none for the tunnel's).
    pub subnet: Option<IpNetwork>,
    pub tunnel: bool,
}

/// A node's underlay addresses (IPv4 and IPv6: `addr/len` or a bare address) and tunnel
/// address.
pub fn node_addresses(node: &str, bgp: &NodeBgp) -> Vec<NodeAddress> {
    let underlay = [&bgp.ipv4_address, &bgp.ipv6_address]
        .into_iter()
        .filter_map(|a| a.as_deref()?.parse::<IpNetwork>().ok())
        .map(|net| NodeAddress {
            node: node.to_owned(),
            ip: net.ip(),
            subnet: IpNetwork::new(net.network(), net.prefix()).ok(),
            tunnel: false,
        });
    let tunnel = bgp
        .ipv4_ipip_tunnel_addr
        .as_deref()
        .and_then(|t| t.split('/').next()?.parse::<IpAddr>().ok())
        .map(|ip| NodeAddress {
            node: node.to_owned(),
            ip,
            subnet: None,
            tunnel: true,
        });
    underlay.chain(tunnel).collect()
}

/// Every BGP listen port in use: 179, each BGPConfiguration's `listenPort`, and each
/// BGPPeer's port.
pub fn bgp_ports<'a>(
    configs: impl IntoIterator<Item = &'a BGPConfigurationSpec>,
    peers: impl IntoIterator<Item = &'a BGPPeerSpec>,
) -> Vec<u16> {
    let mut ports: Vec<u16> = configs.into_iter().map(|c| c.listen_port).collect();
    ports.push(DEFAULT_BGP_PORT);
    ports.extend(
        peers
            .into_iter()
            .filter_map(|p| Some(p.peer_addr()?.port())),
    );
    ports.sort();
    ports.dedup();
    ports
}

/// The judgment ([`Reserved::refuse`]) and what it is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Never a Service's: each network with what it is, for the log line.
    pub nets: Vec<(IpNetwork, String)>,
    /// The nodes' underlay subnets, with what they are.
    pub subnets: Vec<(IpNetwork, String)>,
    /// serviceExternalIPs.
    pub external_ips: Vec<IpNetwork>,
    /// serviceLoadBalancerIPs.
    pub lb_ips: Vec<IpNetwork>,
    /// Ports no nodePort may take (the BGP listen ports): a nodePort is DNATed on every
    /// node address, so it would capture the nodes' BGP sessions.
    pub ports: Vec<u16>,
}

/// Which of a Service's addresses is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    ExternalIp,
    LoadBalancer,
}

impl Reserved {
    /// From the cluster's records: the nodes' addresses, the BGPPeers, the pools, the
    /// `default` BGPConfiguration and the BGP ports.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = NodeAddress>,
        peers: impl IntoIterator<Item = (&'a str, &'a BGPPeerSpec)>,
        pools: impl IntoIterator<Item = (&'a str, &'a IPPoolSpec)>,
        default: Option<&BGPConfigurationSpec>,
        ports: &[u16],
    ) -> Reserved {
        let mut nets = vec![];
        let mut subnets = vec![];
        for a in nodes {
            let what = if a.tunnel {
                "tunnel address"
            } else {
                "address"
            };
            nets.push((IpNetwork::from(a.ip), format!("node {}'s {what}", a.node)));
            if let Some(sub) = a.subnet {
                subnets.push((sub, format!("inside node {}'s subnet {sub}", a.node)));
            }
        }
        for (name, p) in peers {
            if let Some(ip) = p.peer_addr().map(|a| a.ip()) {
                nets.push((IpNetwork::from(ip), format!("BGPPeer {name}'s address")));
            }
        }
        for (name, p) in pools {
            if let Ok(n) = p.cidr.parse::<IpNetwork>() {
                nets.push((n, format!("inside IPPool {name}")));
            }
        }
        // Most specific first, so the reason names the node's address before a pool.
        nets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix()));
        subnets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix()));
        let ranges = |r: Option<&Vec<ServiceRange>>| -> Vec<IpNetwork> {
            r.into_iter()
                .flatten()
                .filter_map(|r| r.cidr.parse().ok())
                .collect()
        };
        Reserved {
            nets,
            subnets,
            external_ips: ranges(default.map(|c| &c.service_external_ips)),
            lb_ips: ranges(default.map(|c| &c.service_load_balancer_ips)),
            ports: ports.to_vec(),
        }
    }

    /// Why `ip` may not be a Service's address of this kind; `None`: it may.
    pub fn refuse(&self, ip: impl Into<IpAddr>, kind: AddressKind) -> Option<String> {
        let ip = ip.into();
        if let Some((_, why)) = self.nets.iter().find(|(n, _)| n.contains(ip)) {
            return Some(format!("{ip} is {why}"));
        }
        let (ranges, field) = match kind {
            AddressKind::ExternalIp => (&self.external_ips, "serviceExternalIPs"),
            AddressKind::LoadBalancer => (&self.lb_ips, "serviceLoadBalancerIPs"),
        };
        let allowed: Vec<&IpNetwork> = ranges.iter().filter(|r| r.contains(ip)).collect();
        if allowed.is_empty() {
            let set = if ranges.is_empty() {
                "none set".to_string()
            } else {
                ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Some(format!(
                "{ip} is outside the BGPConfiguration default's {field} ({set})"
            ));
        }
        if let Some((sub, why)) = self.subnets.iter().find(|(n, _)| n.contains(ip)) {
            if !allowed.iter().any(|r| r.prefix() >= sub.prefix()) {
                return Some(format!(
                    "{ip} is {why}, and no {field} range inside that subnet allows it"
                ));
            }
        }
        None
    }

    /// Why a nodePort may not be `port`; `None`: it may.
    pub fn refuse_node_port(&self, port: u16) -> Option<String> {
        self.ports
            .contains(&port)
            .then(|| format!("nodePort {port} is a BGP port of the nodes"))
    }
}
