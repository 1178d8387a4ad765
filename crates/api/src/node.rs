//! The per-node BGP record: a node's underlay addresses, AS, route-reflector cluster ID and
//! IPIP tunnel address.
//!
//! In the etcd backend it is its own object (kind `Node` in group `brindle.dev`, struct
//! [`BrindleNode`]). In the Kubernetes backend the same facts live on the Kubernetes Node as
//! `brindle.dev/*` annotations ([`NodeBgp::to_annotations`], [`NodeBgp::from_annotations`]),
//! so no CRD is generated for it.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{check_as_number, parse_ip, FieldError, Validate};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "Node",
    root = "BrindleNode",
    plural = "nodes"
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBgp {
    /// The node's IPv4 underlay address with its prefix, e.g. `198.18.0.11/24`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4Address"
    )]
    pub ipv4_address: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6Address"
    )]
    pub ipv6_address: Option<String>,
    /// The node's own AS; the cluster's (BGPConfiguration) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Set on route reflectors: their cluster ID (RFC 4456), in IPv4 address form.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "routeReflectorClusterID"
    )]
    pub route_reflector_cluster_id: Option<String>,
    /// The address on tunl0, allocated by IPAM.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4IPIPTunnelAddr"
    )]
    pub ipv4_ipip_tunnel_addr: Option<String>,
}

/// Annotation keys on a Kubernetes Node (Kubernetes backend).
pub mod annotations {
    pub const IPV4_ADDRESS: &str = "brindle.dev/ipv4-address";
    pub const IPV6_ADDRESS: &str = "brindle.dev/ipv6-address";
    pub const AS_NUMBER: &str = "brindle.dev/as-number";
    pub const RR_CLUSTER_ID: &str = "brindle.dev/route-reflector-cluster-id";
    pub const IPIP_TUNNEL_ADDR: &str = "brindle.dev/ipip-tunnel-address";
    /// The version of the `brindle-node` that last registered the node (on the Kubernetes
    /// Node and on the etcd record alike); `brindlectl version` reads it.
    pub const AGENT_VERSION: &str = "brindle.dev/agent-version";
}

impl NodeBgp {
    /// The annotations that carry these facts; absent fields are absent keys.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        use annotations::*;
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.insert(k.to_string(), v);
            }
        };
        put(IPV4_ADDRESS, self.ipv4_address.clone());
        put(IPV6_ADDRESS, self.ipv6_address.clone());
        put(AS_NUMBER, self.as_number.map(|a| a.to_string()));
        put(RR_CLUSTER_ID, self.route_reflector_cluster_id.clone());
        put(IPIP_TUNNEL_ADDR, self.ipv4_ipip_tunnel_addr.clone());
        out
    }

    /// Reads the facts back; an AS annotation that is not a number is an error naming it.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<Self, FieldError> {
        use annotations::*;
        let as_number = match a.get(AS_NUMBER) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                FieldError::new(
                    format!("metadata.annotations[{AS_NUMBER}]"),
                    format!("{v:?} is not an AS number"),
                )
            })?),
        };
        Ok(NodeBgp {
            ipv4_address: a.get(IPV4_ADDRESS).cloned(),
            ipv6_address: a.get(IPV6_ADDRESS).cloned(),
            as_number,
            route_reflector_cluster_id: a.get(RR_CLUSTER_ID).cloned(),
            ipv4_ipip_tunnel_addr: a.get(IPIP_TUNNEL_ADDR).cloned(),
        })
    }

    pub fn field_errors(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = vec![];
        for (field, value, want_v4) in [
            ("ipv4Address", &self.ipv4_address, true),
            ("ipv6Address", &self.ipv6_address, false),
        ] {
            let Some(v) = value else { continue };
            let field = format!("{prefix}.{field}");
            match v.parse::<ipnetwork::IpNetwork>() {
                Ok(n) if n.is_ipv4() == want_v4 => {}
                Ok(_) => errors.push(FieldError::new(
                    field,
                    format!("{v:?} is the wrong address family"),
                )),
                Err(_) => errors.push(FieldError::new(
                    field,
                    format!("{v:?} is not address/prefix"),
                )),
            }
        }
        if let Some(asn) = self.as_number {
            check_as_number(&format!("{prefix}.asNumber"), asn, &mut errors);
        }
        if let Some(id) = &self.route_reflector_cluster_id {
            let field = format!("{prefix}.routeReflectorClusterID");
            if id.parse::<std::net::Ipv4Addr>().is_err() {
                errors.push(FieldError::new(
                    field,
                    format!("{id:?} is not in IPv4 address form"),
                ));
            }
        }
        if let Some(t) = &self.ipv4_ipip_tunnel_addr {
            let field = format!("{prefix}.ipv4IPIPTunnelAddr");
            if let Some(ip) = parse_ip(&field, t, &mut errors) {
                if !ip.is_ipv4() {
                    errors.push(FieldError::new(field, "IPIP tunnels carry IPv4 only"));
                }
            }
        }
        errors
    }
}

impl Validate for BrindleNode {
    fn field_errors(&self) -> Vec<FieldError> {
        self.spec
            .bgp
            .as_ref()
            .map(|b| b.field_errors("spec.bgp"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip() {
        let b = NodeBgp {
            ipv4_address: Some("198.18.0.11/24".into()),
            ipv6_address: None,
            as_number: Some(4200000001),
            route_reflector_cluster_id: Some("224.0.0.1".into()),
            ipv4_ipip_tunnel_addr: Some("10.244.3.1".into()),
        };
        let a = b.to_annotations();
        assert_eq!(a.len(), 4);
        assert_eq!(NodeBgp::from_annotations(&a).unwrap(), b);
        let mut bad = a.clone();
        bad.insert(annotations::AS_NUMBER.into(), "sixty".into());
        assert!(NodeBgp::from_annotations(&bad)
            .unwrap_err()
            .field
            .contains("as-number"));
    }

    #[test]
    fn rules() {
        let mut n = BrindleNode::new("n1", NodeSpec::default());
        assert!(n.validate().is_ok());
        n.spec.bgp = Some(NodeBgp {
            ipv4_address: Some("fd00::1/64".into()),
            as_number: Some(23456),
            route_reflector_cluster_id: Some("rr-1".into()),
            ipv4_ipip_tunnel_addr: Some("fd00::2".into()),
            ..Default::default()
        });
        let e = n.validate().unwrap_err();
        for f in [
            "spec.bgp.ipv4Address",
            "spec.bgp.asNumber",
            "spec.bgp.routeReflectorClusterID",
            "spec.bgp.ipv4IPIPTunnelAddr",
        ] {
            assert!(e.mentions(f), "{f}: {e}");
        }
    }
}
