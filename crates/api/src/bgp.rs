//! BGP resources: the cluster's BGP knobs and the extra peers operators add.

use std::net::{IpAddr, SocketAddr};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{
    check_as_number, parse_duration_secs, parse_network_cidr, FieldError, Validate,
};

/// Calico's default AS for nodes that name none.
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// The BGP port (RFC 4271 §8.2.1).
pub const DEFAULT_BGP_PORT: u16 = 179;

/// Cluster BGP settings. The object named `default` applies to every node; an object named
/// `node.<node>` overrides it for one node (as in Calico).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Mesh","type":"boolean","jsonPath":".spec.nodeToNodeMeshEnabled"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.listenPort"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// The AS of nodes that do not name their own.
    #[serde(default = "default_as")]
    pub as_number: u32,
    /// Every node peers with every other node.
    #[serde(default = "yes")]
    pub node_to_node_mesh_enabled: bool,
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Service ranges to advertise from every node.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceClusterIPs"
    )]
    pub service_cluster_ips: Vec<ServiceRange>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceExternalIPs"
    )]
    pub service_external_ips: Vec<ServiceRange>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceLoadBalancerIPs"
    )]
    pub service_load_balancer_ips: Vec<ServiceRange>,
    /// Named communities (`64512:100`) or large communities (`64512:1:2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Info, Debug, Warning, Error or Fatal.
    #[serde(default = "default_severity")]
    pub log_severity_screen: String,
    /// TCP MD5 (RFC 2385) on every node-to-node mesh session, read from a Secret in the
    /// agent's secrets namespace (Calico's field). A missing Secret stops the mesh sessions
    /// (logged) rather than running them without the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<PeerPassword>,
    /// Brindle's own: GTSM (RFC 5082) on mesh sessions between nodes on the same subnet:
    /// packets leave with TTL 255 and must arrive with 255, so nothing routed (a pod, a
    /// host elsewhere) can reach those sessions. Sessions across subnets are unchanged.
    #[serde(default, rename = "nodeMeshTTLSecurity")]
    pub node_mesh_ttl_security: bool,
}

fn default_as() -> u32 {
    DEFAULT_AS_NUMBER
}
fn default_port() -> u16 {
    DEFAULT_BGP_PORT
}
fn yes() -> bool {
    true
}
fn default_severity() -> String {
    "Info".into()
}

impl Default for BGPConfigurationSpec {
    fn default() -> Self {
        // One source of truth for the defaults: the serde attributes above.
        serde_json::from_str("{}").expect("every field has a serde default")
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ServiceRange {
    pub cidr: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Community {
    pub name: String,
    pub value: String,
}

impl Validate for BGPConfiguration {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        let s = &self.spec;
        check_as_number("spec.asNumber", s.as_number, &mut errors);
        if s.listen_port == 0 {
            errors.push(FieldError::new(
                "spec.listenPort",
                "port 0 cannot be listened on",
            ));
        }
        for (field, ranges) in [
            ("spec.serviceClusterIPs", &s.service_cluster_ips),
            ("spec.serviceExternalIPs", &s.service_external_ips),
            ("spec.serviceLoadBalancerIPs", &s.service_load_balancer_ips),
        ] {
            for (i, r) in ranges.iter().enumerate() {
                parse_network_cidr(&format!("{field}[{i}].cidr"), &r.cidr, &mut errors);
            }
        }
        for (i, c) in s.communities.iter().enumerate() {
            if let Err(why) = check_community(&c.value) {
                errors.push(FieldError::new(format!("spec.communities[{i}].value"), why));
            }
        }
        if !["Debug", "Info", "Warning", "Error", "Fatal"].contains(&s.log_severity_screen.as_str())
        {
            errors.push(FieldError::new(
                "spec.logSeverityScreen",
                format!(
                    "{:?} is not one of Debug, Info, Warning, Error, Fatal",
                    s.log_severity_screen
                ),
            ));
        }
        match self.metadata.name.as_deref() {
            Some("default") => {}
            Some(n) if n.starts_with("node.") && n.len() > 5 => {}
            other => errors.push(FieldError::new(
                "metadata.name",
                format!("{other:?}: must be \"default\" or \"node.<node name>\""),
            )),
        }
        errors
    }
}

/// `aa:nn` (RFC 1997, two 16-bit halves) or `aa:nn:mm` (RFC 8092, three 32-bit parts).
fn check_community(value: &str) -> Result<(), String> {
    let parts: Vec<_> = value.split(':').collect();
    let ok = match parts.len() {
        2 => parts.iter().all(|p| p.parse::<u16>().is_ok()),
        3 => parts.iter().all(|p| p.parse::<u32>().is_ok()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is neither a community (aa:nn, each 0..=65535) nor a large community (aa:nn:mm, each 0..=4294967295)"
        ))
    }
}

/// A BGP peer beyond the node-to-node mesh: a top-of-rack router, a route reflector, or a
/// selection of nodes peering with each other.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    printcolumn = r#"{"name":"PeerIP","type":"string","jsonPath":".spec.peerIP"}"#,
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"NodeSelector","type":"string","jsonPath":".spec.nodeSelector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// Only this node peers (omit both `node` and `nodeSelector` for every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes that peer, by selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// `address`, `address:port` or `[v6 address]:port`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "peerIP")]
    pub peer_ip: Option<String>,
    /// Peer with the nodes this selects instead of a fixed address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS; required with `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// TCP MD5 password (RFC 2385), read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PeerPassword>,
    /// Go duration, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// Go duration; 0 or at least 3s (RFC 4271 §4.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    /// How long to keep a restarting peer's routes (graceful restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// GTSM (RFC 5082): the hops to the peer (1: directly connected). Our packets leave
    /// with TTL 255 and the peer's must arrive with at least 256 minus this; the peer
    /// needs GTSM too (BIRD's `ttl security on`). Unset or 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// The selected nodes reflect this peer's routes to it (it is their RR client).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Brindle's own: at most this many prefixes from the peer (accepted or not). One more
    /// closes the session with Cease 6/1 (RFC 4486) and it is tried again after a back-off,
    /// like BIRD's `receive limit` and FRR's `maximum-prefix`. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    /// The BGPFilters applied to this peer's routes, in order (the first rule that matches,
    /// across them, decides). A filter that does not exist is skipped, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPassword {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl BGPPeerSpec {
    /// The peer's address and port (179 unless given), when `peerIP` parses.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        parse_peer_ip(self.peer_ip.as_deref()?).ok()
    }
}

/// `1.2.3.4`, `1.2.3.4:1790`, `fd00::1`, `[fd00::1]:1790`.
pub fn parse_peer_ip(value: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_BGP_PORT));
    }
    let sa: SocketAddr = value
        .parse()
        .map_err(|_| format!("{value:?} is not an address, address:port or [v6]:port"))?;
    if sa.port() == 0 {
        return Err(format!("{value:?}: port 0 cannot be connected to"));
    }
    Ok(sa)
}

impl Validate for BGPPeer {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut errors = vec![];
        let s = &self.spec;
        if s.node.is_some() && s.node_selector.is_some() {
            errors.push(FieldError::new(
                "spec.nodeSelector",
                "give node or nodeSelector, not both",
            ));
        }
        match (&s.peer_ip, &s.peer_selector) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                "spec.peerSelector",
                "give peerIP or peerSelector, not both",
            )),
            (None, None) => errors.push(FieldError::new(
                "spec.peerIP",
                "missing: give peerIP or peerSelector",
            )),
            (Some(ip), None) => {
                if let Err(why) = parse_peer_ip(ip) {
                    errors.push(FieldError::new("spec.peerIP", why));
                }
                if s.as_number.is_none() {
                    errors.push(FieldError::new("spec.asNumber", "required with peerIP"));
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(asn) = s.as_number {
            check_as_number("spec.asNumber", asn, &mut errors);
        }
        if let Some(p) = &s.password {
            if p.secret_key_ref.name.is_empty() {
                errors.push(FieldError::new("spec.password.secretKeyRef.name", "empty"));
            }
            if p.secret_key_ref.key.is_empty() {
                errors.push(FieldError::new("spec.password.secretKeyRef.key", "empty"));
            }
        }
        for (i, f) in s.filters.iter().enumerate() {
            if let Err(why) = crate::validation::check_name(f) {
                errors.push(FieldError::new(format!("spec.filters[{i}]"), why));
            }
        }
        if s.max_prefixes == Some(0) {
            errors.push(FieldError::new(
                "spec.maxPrefixes",
                "0 would refuse every route; leave it out for no limit",
            ));
        }
        let mut secs = |field: &str, v: &Option<String>| -> Option<u64> {
            let v = v.as_ref()?;
            parse_duration_secs(v)
                .map_err(|why| errors.push(FieldError::new(field, why)))
                .ok()
        };
        let keepalive = secs("spec.keepaliveTime", &s.keepalive_time);
        let hold = secs("spec.holdTime", &s.hold_time);
        secs("spec.maxRestartTime", &s.max_restart_time);
        if let Some(h) = hold {
            if h > 0 && h < 3 {
                errors.push(FieldError::new(
                    "spec.holdTime",
                    format!("{h}s: the hold time must be 0 or at least 3s (RFC 4271 §4.2)"),
                ));
            }
            if h > 65535 {
                errors.push(FieldError::new(
                    "spec.holdTime",
                    format!("{h}s exceeds 65535s"),
                ));
            }
            if let Some(k) = keepalive {
                if h > 0 && k >= h {
                    errors.push(FieldError::new(
                        "spec.keepaliveTime",
                        format!("{k}s is not shorter than the hold time {h}s"),
                    ));
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spec: serde_json::Value) -> BGPPeer {
        BGPPeer::new("p", serde_json::from_value(spec).expect("spec"))
    }

    #[test]
    fn config_defaults_match_calico() {
        let c = BGPConfigurationSpec::default();
        assert_eq!(c.as_number, 64512);
        assert!(c.node_to_node_mesh_enabled);
        assert_eq!(c.listen_port, 179);
        assert!(BGPConfiguration::new("default", c).validate().is_ok());
    }

    #[test]
    fn config_rules() {
        let mut c = BGPConfigurationSpec::default();
        for bad in [0, 23456] {
            c.as_number = bad;
            let e = BGPConfiguration::new("default", c.clone())
                .validate()
                .unwrap_err();
            assert!(e.mentions("spec.asNumber"), "{e}");
        }
        c.as_number = 4200000001;
        c.listen_port = 0;
        c.communities = vec![Community {
            name: "a".into(),
            value: "70000:1".into(),
        }];
        c.service_cluster_ips = vec![ServiceRange {
            cidr: "10.96.0.1/12".into(),
        }];
        let e = BGPConfiguration::new("x", c).validate().unwrap_err();
        for f in [
            "spec.listenPort",
            "spec.communities[0].value",
            "spec.serviceClusterIPs[0].cidr",
            "metadata.name",
        ] {
            assert!(e.mentions(f), "{f} missing from {e}");
        }
        assert!(!e.mentions("spec.asNumber"), "4-octet AS is fine: {e}");
    }

    #[test]
    fn peer_ip_forms() {
        assert_eq!(parse_peer_ip("198.18.0.1").unwrap().port(), 179);
        assert_eq!(parse_peer_ip("198.18.0.1:1790").unwrap().port(), 1790);
        assert_eq!(parse_peer_ip("[fd00::1]:1790").unwrap().port(), 1790);
        assert!(parse_peer_ip("fd00::1").is_ok());
        assert!(parse_peer_ip("198.18.0.1:0")
            .unwrap_err()
            .contains("port 0"));
        assert!(parse_peer_ip("router-1").is_err());
    }

    #[test]
    fn peer_rules() {
        let ok = peer(serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 65001}));
        assert!(ok.validate().is_ok());
        let cases = [
            (
                serde_json::json!({"peerIP": "not-an-ip", "asNumber": 65001}),
                "spec.peerIP",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1:0", "asNumber": 65001}),
                "spec.peerIP",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 0}),
                "spec.asNumber",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 23456}),
                "spec.asNumber",
            ),
            (serde_json::json!({"peerIP": "198.18.0.1"}), "spec.asNumber"),
            (serde_json::json!({"asNumber": 65001}), "spec.peerIP"),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "holdTime": "2s"}),
                "spec.holdTime",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "holdTime": "9"}),
                "spec.holdTime",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "holdTime": "9s", "keepaliveTime": "10s"}),
                "spec.keepaliveTime",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "node": "a", "nodeSelector": "all()"}),
                "spec.nodeSelector",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "peerSelector": "all()"}),
                "spec.peerSelector",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "maxPrefixes": 0}),
                "spec.maxPrefixes",
            ),
            (
                serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "password": {"secretKeyRef": {"name": "", "key": "k"}}}),
                "spec.password.secretKeyRef.name",
            ),
        ];
        for (spec, field) in cases {
            let e = peer(spec.clone()).validate().expect_err(&spec.to_string());
            assert!(e.mentions(field), "{spec}: expected {field}, got {e}");
        }
        let zero_hold =
            peer(serde_json::json!({"peerIP": "198.18.0.1", "asNumber": 1, "holdTime": "0s"}));
        assert!(zero_hold.validate().is_ok());
    }
}
