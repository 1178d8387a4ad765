//! Services in iptables, as kube-proxy programs them (REFERENCE §B), with Brindle's `BRL-`
//! prefix so both can run side by side during a migration.
//!
//! The input is plain data ([`ServicePort`], [`Endpoint`], [`NodeContext`]) made by the agent
//! from Services, EndpointSlices and Nodes; [`topology`] chooses the endpoints as kube-proxy's
//! `CategorizeEndpoints` does; [`rules`] turns one service port into its chains and rules
//! (pure, cached per service by the caller); [`crate::iptables`] writes only what changed.

pub mod plan;
pub mod rules;
pub mod topology;

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::family::Family;

/// The Kubernetes protocol, shared with NetworkPolicy.
pub use brindle_policy::model::Protocol;

/// One endpoint of a service port, from an EndpointSlice (port already resolved).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forNodes` (None: the endpoint carries no node hint).
    pub for_nodes: Option<Vec<String>>,
    /// `hints.forZones`.
    pub for_zones: Option<Vec<String>>,
}

impl Endpoint {
    /// A ready endpoint on `node`, with no hints.
    pub fn ready(ip: impl Into<IpAddr>, port: u16, node: &str) -> Endpoint {
        Endpoint {
            ip: ip.into(),
            port,
            node: Some(node.to_string()),
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            for_nodes: None,
            for_zones: None,
        }
    }

    /// `ip:port` (`[ip]:port` for IPv6, Go's `JoinHostPort`), kube-proxy's endpoint string
    /// (hash input of the SEP chain name), and the DNAT target's form in both dataplanes.
    pub fn addr(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}

/// One port of one Service, with everything the rules need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when it has none).
    pub port_name: String,
    pub protocol: Protocol,
    /// The family of every address below: a dual-stack Service is one [`ServicePort`] per
    /// family, each rendered into its family's tables.
    pub family: Family,
    pub cluster_ip: Option<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// externalTrafficPolicy: Local (only meaningful when externally accessible).
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// ClientIP session affinity timeout in seconds.
    pub affinity_seconds: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// A ClusterIP service port with default policies and these endpoints.
    pub fn cluster_ip(
        namespace: &str,
        name: &str,
        port_name: &str,
        protocol: Protocol,
        ip: impl Into<IpAddr>,
        port: u16,
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        let ip = ip.into();
        ServicePort {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
            family: Family::of(ip),
            cluster_ip: Some(ip),
            port,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            endpoints,
        }
    }

    /// kube-proxy's `ServicePortName.String()`: `ns/name` or `ns/name:port`.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
    pub fn external_policy_local(&self) -> bool {
        self.external_local && self.externally_accessible()
    }
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || (self.externally_accessible() && !self.external_policy_local())
    }
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || self.external_policy_local()
    }
}

/// What a node's rules depend on besides the services.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeContext {
    pub node: String,
    /// `topology.kubernetes.io/zone` of this node, if labelled.
    pub zone: Option<String>,
    /// The masquerade mark bit (kube-proxy's `--iptables-masquerade-bit`, 14).
    pub masquerade_bit: u8,
}

/// Calico's `natOutgoingExclusions`: which destinations NAT outgoing leaves alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NatOutgoingExclusions {
    /// Only the pools: a pod's connection to another node leaves as its node (Calico's
    /// default).
    IPPoolsOnly,
    /// The pools and every node's addresses: a pod reaches another node as itself, never as
    /// its node (Brindle's default).
    #[default]
    IPPoolsAndHostIPs,
}

impl NatOutgoingExclusions {
    pub fn parse(s: &str) -> Option<NatOutgoingExclusions> {
        match s {
            "IPPoolsOnly" => Some(NatOutgoingExclusions::IPPoolsOnly),
            "IPPoolsAndHostIPs" => Some(NatOutgoingExclusions::IPPoolsAndHostIPs),
            _ => None,
        }
    }
}

/// What protects the nodes from their pods, beside the Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGuard {
    /// TCP ports no pod may reach on any node (the BGP listen ports): dropped before NAT
    /// outgoing could make the pod look like its node.
    pub pod_blocked_ports: Vec<u16>,
    pub nat_outgoing_exclusions: NatOutgoingExclusions,
    /// The pods' host interfaces' name prefix (`brl`): traffic from them is checked for
    /// spoofed sources.
    pub workload_prefix: String,
}

impl NodeContext {
    /// `1<<bit` as kube-proxy formats it (`%#08x`: `0x004000`).
    pub fn mark(&self) -> String {
        format!("{:#08x}", 1u32 << self.masquerade_bit)
    }
}
