//! Services and EndpointSlices (Kubernetes' types) → felix-lite's plain [`ServicePort`]s, one
//! per port and family (a dual-stack Service's IPv6 ports go to the IPv6 rules).
//!
//! The agent keeps neither object: each is read once, as it arrives, into [`SvcModel`] or
//! [`SliceModel`] (what rendering needs, parsed; 10,000 Services and their slices held as
//! API objects cost an agent about 50 MiB even slimmed). What cannot be programmed (a bad
//! port, an unknown protocol, an address of a family the Service does not have, a slice port
//! without a number) is kept as a reason and skipped; the rest goes on. What depends on the
//! cluster ([`Reserved`]: the nodes' addresses, the pools, the BGP ports) is applied when a
//! Service is rendered, as it can change. All of it is pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use brindle_api::service_addresses::{AddressKind, Reserved};
use brindle_felix_lite::family::Family;
use brindle_felix_lite::proxy::{Endpoint, Protocol, ServicePort};
use brindle_policy::labels::intern;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// `namespace/name` of the Service or EndpointSlice.
    pub object: String,
    pub reason: String,
}

/// A Service as the agent keeps it. Equal models render the same rules, so an update that
/// changes nothing kept (an annotation, a status condition) is no change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SvcModel {
    pub namespace: String,
    pub name: String,
    /// What could not be read, each a reason the Service's key is logged with.
    pub problems: Vec<String>,
    /// Nothing of it is programmed: ExternalName, headless, no usable cluster IP, no spec, or
    /// a name the API server would refuse.
    pub inert: bool,
    /// One per cluster IP's family, in the order of `clusterIPs` (IPv4 alone when there is
    /// no cluster IP at all: what externalIPs alone give).
    pub families: Vec<Family>,
    pub cluster_ips: Vec<IpAddr>,
    /// Of the Service's families; not yet judged against [`Reserved`].
    pub external_ips: Vec<IpAddr>,
    /// The load balancer's ingress addresses, as `external_ips`.
    pub lb_ips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNetwork>,
    pub affinity_seconds: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    pub ports: Vec<SvcPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Only for NodePort and LoadBalancer Services; not yet judged against [`Reserved`].
    pub node_port: Option<u16>,
}

/// An EndpointSlice as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceModel {
    /// `namespace/name`, what a skipped reason names.
    pub key: String,
    /// Its Service's key (`namespace/name`), from [`SERVICE_NAME_LABEL`].
    pub service: Option<String>,
    /// `addressType` (None: FQDN, which is never programmed).
    pub family: Option<Family>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    /// None: a protocol no Service port can have (it matches none).
    pub protocol: Option<Protocol>,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its first address; the text when it is not an IP address.
    pub address: Result<IpAddr, String>,
    /// Shared strings: a cluster's endpoints name the same nodes and zones over and over.
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub for_nodes: Option<Vec<String>>,
    pub for_zones: Option<Vec<String>>,
}

/// Reads a Service into what the agent keeps (the mirror's projection; never None).
pub fn service_model(s: Service) -> Option<SvcModel> {
    let mut m = SvcModel {
        namespace: s.metadata.namespace.unwrap_or_default(),
        name: s.metadata.name.unwrap_or_default(),
        inert: true,
        ..Default::default()
    };
    read_service(&mut m, s.spec, s.status);
    Some(m)
}

/// Fills `m` from the spec and status; `m.inert` stays true on every early return.
fn read_service(m: &mut SvcModel, spec: Option<ServiceSpec>, status: Option<ServiceStatus>) {
    let Some(spec) = spec else {
        return;
    };
    // Names become parts of chain and set names and rule comments: what the API server
    // would refuse (etcd mode has none to ask) is refused here, never written.
    let bad_name = [("namespace", &m.namespace), ("name", &m.name)]
        .into_iter()
        .find_map(|(what, v)| {
            brindle_api::validation::check_name(v)
                .err()
                .map(|e| format!("metadata.{what}: {e}"))
        });
    if let Some(why) = bad_name {
        m.problems.push(why);
        return;
    }
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return;
    }
    let ips: Vec<&String> = match &spec.cluster_ips {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    if ips.iter().any(|i| i.as_str() == "None") {
        return; // headless: DNS only, nothing to program
    }
    for i in &ips {
        match i.parse::<IpAddr>() {
            Ok(ip) if !m.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()) => {
                m.cluster_ips.push(ip)
            }
            Ok(ip) => m
                .problems
                .push(format!("clusterIPs: a second {ip:?} of one family")),
            Err(_) => m
                .problems
                .push(format!("clusterIPs: {i:?} is not an IP address")),
        }
    }
    if m.cluster_ips.is_empty() && !ips.is_empty() {
        return;
    }
    m.families = if m.cluster_ips.is_empty() {
        vec![Family::V4]
    } else {
        m.cluster_ips.iter().map(|ip| Family::of(*ip)).collect()
    };
    let families = m.families.clone();
    let served =
        |what: &str, text: &str, to: &mut Vec<IpAddr>, problems: &mut Vec<String>| match text
            .parse::<IpAddr>()
        {
            Ok(ip) if !families.contains(&Family::of(ip)) => {
                problems.push(format!("{what} {ip} is not of the Service's families"))
            }
            Ok(ip) => to.push(ip),
            Err(_) => problems.push(format!("{what} {text:?} is not an IP address")),
        };
    for e in spec.external_ips.iter().flatten() {
        served("externalIPs:", e, &mut m.external_ips, &mut m.problems);
    }
    let ingress = status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default();
    for ip in ingress.iter().filter_map(|i| i.ip.as_deref()) {
        served("loadBalancer ingress", ip, &mut m.lb_ips, &mut m.problems);
    }
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        match r.trim().parse::<IpNetwork>() {
            Ok(n) => m.source_ranges.push(n),
            Err(_) => m
                .problems
                .push(format!("loadBalancerSourceRanges: {r:?} is not a CIDR")),
        }
    }
    m.affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    m.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    m.internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let with_node_port = ty == "NodePort" || ty == "LoadBalancer";
    for p in spec.ports.into_iter().flatten() {
        match read_port(p, with_node_port) {
            Ok(p) => m.ports.push(p),
            Err(why) => m.problems.push(why),
        }
    }
    m.inert = false;
}

/// A Service port as kept, or why it cannot be programmed.
fn read_port(
    p: k8s_openapi::api::core::v1::ServicePort,
    with_node_port: bool,
) -> Result<SvcPort, String> {
    let name = p.name.unwrap_or_default();
    if !name.is_empty() {
        brindle_api::validation::check_name(&name).map_err(|e| format!("port name: {e}"))?;
    }
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    let protocol = Protocol::parse(proto)
        .ok_or_else(|| format!("port {name:?}: unknown protocol {proto:?}"))?;
    let port =
        port_ok(p.port).ok_or_else(|| format!("port {name:?}: port {} is not 1-65535", p.port))?;
    let node_port = match p.node_port.filter(|_| with_node_port) {
        None => None,
        Some(n) => {
            Some(port_ok(n).ok_or_else(|| format!("port {name:?}: nodePort {n} is not 1-65535"))?)
        }
    };
    Ok(SvcPort {
        name,
        protocol,
        port,
        node_port,
    })
}

/// Reads an EndpointSlice into what the agent keeps (the mirror's projection; never None).
pub fn slice_model(s: EndpointSlice) -> Option<SliceModel> {
    let ns = s.metadata.namespace.unwrap_or_default();
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|name| format!("{ns}/{name}"));
    let family = match s.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    };
    // Every slice of the cluster is kept: its lists exactly sized (a filtered collect grows
    // by doubling).
    let mut ports: Vec<SlicePort> = s
        .ports
        .into_iter()
        .flatten()
        .map(|p| SlicePort {
            name: p.name.unwrap_or_default(),
            protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")),
            port: p.port,
        })
        .collect();
    ports.shrink_to_fit();
    let mut endpoints: Vec<SliceEndpoint> = s
        .endpoints
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let text = e.addresses.into_iter().next()?;
            let c = e.conditions.unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let hints = e.hints.unwrap_or_default();
            Some(SliceEndpoint {
                address: text.parse().map_err(|_| text),
                node: e.node_name.as_deref().map(intern),
                zone: e.zone.as_deref().map(intern),
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                for_nodes: hints
                    .for_nodes
                    .map(|v| v.into_iter().map(|n| n.name).collect()),
                for_zones: hints
                    .for_zones
                    .map(|v| v.into_iter().map(|z| z.name).collect()),
            })
        })
        .collect();
    endpoints.shrink_to_fit();
    Some(SliceModel {
        key: format!("{ns}/{}", s.metadata.name.unwrap_or_default()),
        service,
        family,
        ports,
        endpoints,
    })
}

fn port_ok(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The ports of one Service with their endpoints; `skipped` gets a line per problem.
pub fn service_ports(
    svc: &SvcModel,
    slices: &[&SliceModel],
    reserved: &Reserved,
    skipped: &mut Vec<Skipped>,
) -> Vec<ServicePort> {
    let key = format!("{}/{}", svc.namespace, svc.name);
    let mut skip = |object: &str, reason: String| {
        skipped.push(Skipped {
            object: object.to_string(),
            reason,
        })
    };
    for p in &svc.problems {
        skip(&key, p.clone());
    }
    if svc.inert {
        return vec![];
    }
    let mut allowed = |ips: &[IpAddr], kind: AddressKind, what: &str| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| match reserved.refuse(*ip, kind) {
                Some(why) => {
                    skip(&key, format!("{what}{why}: refused"));
                    false
                }
                None => true,
            })
            .collect()
    };
    let external_ips = allowed(&svc.external_ips, AddressKind::ExternalIp, "externalIPs: ");
    let lb_ips = allowed(
        &svc.lb_ips,
        AddressKind::LoadBalancer,
        "loadBalancer ingress ",
    );
    let mut out = vec![];
    for p in &svc.ports {
        let pname = &p.name;
        if let Some(why) = p.node_port.and_then(|n| reserved.refuse_node_port(n)) {
            skip(&key, format!("port {pname:?}: {why}: refused"));
            continue;
        }
        for &family in &svc.families {
            let of = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter().copied().filter(|ip| family.has(*ip)).collect()
            };
            let ranges = &svc.source_ranges;
            let family_ranges: Vec<IpNetwork> = ranges
                .iter()
                .copied()
                .filter(|n| family.has_net(n))
                .collect();
            // Source ranges that name only the other family would leave this family's load
            // balancer open to every source (kube-proxy's reading): its addresses are refused.
            let mut lbs = of(&lb_ips);
            if !ranges.is_empty() && family_ranges.is_empty() && !lbs.is_empty() {
                skip(
                    &key,
                    format!(
                        "loadBalancerSourceRanges has no {} range: the {} load balancer addresses are refused rather than open to every source",
                        family.name(),
                        family.name()
                    ),
                );
                lbs.clear();
            }
            let endpoints = endpoints_for(p, family, slices, &mut skip);
            out.push(ServicePort {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                port_name: pname.clone(),
                protocol: p.protocol,
                family,
                cluster_ip: svc.cluster_ips.iter().copied().find(|ip| family.has(*ip)),
                port: p.port,
                node_port: p.node_port,
                external_ips: of(&external_ips),
                load_balancer_ips: lbs,
                load_balancer_source_ranges: family_ranges,
                external_local: svc.external_local,
                internal_local: svc.internal_local,
                affinity_seconds: svc.affinity_seconds,
                endpoints,
            });
        }
    }
    out
}

/// The endpoints of the Service port `sp`, from every slice of `family`, deduplicated and
/// sorted (so the rules are the same whatever order the slices came in).
fn endpoints_for(
    sp: &SvcPort,
    family: Family,
    slices: &[&SliceModel],
    skip: &mut impl FnMut(&str, String),
) -> Vec<Endpoint> {
    let mut eps: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for s in slices.iter().filter(|s| s.family == Some(family)) {
        let Some(port) = s
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == Some(sp.protocol))
        else {
            continue; // this slice does not serve the port (a named port nobody defines)
        };
        let Some(port) = port.port.and_then(port_ok) else {
            skip(
                &s.key,
                format!("port {:?} has no usable number ({:?})", sp.name, port.port),
            );
            continue;
        };
        for e in &s.endpoints {
            let ip = match &e.address {
                Ok(ip) if family.has(*ip) => *ip,
                other => {
                    let text = match other {
                        Ok(ip) => ip.to_string(),
                        Err(text) => text.clone(),
                    };
                    let family = family.name();
                    skip(
                        &s.key,
                        format!("endpoint {text:?} is not an {family} address"),
                    );
                    continue;
                }
            };
            eps.entry((ip, port)).or_insert_with(|| Endpoint {
                ip,
                port,
                node: e.node.as_deref().map(str::to_string),
                zone: e.zone.as_deref().map(str::to_string),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                for_nodes: e.for_nodes.clone(),
                for_zones: e.for_zones.clone(),
            });
        }
    }
    eps.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }
    /// The ports of a Service and its slices as the agent reads and keeps them.
    fn ports_of(
        s: &Service,
        slices: &[&EndpointSlice],
        reserved: &Reserved,
        skipped: &mut Vec<Skipped>,
    ) -> Vec<ServicePort> {
        let svc = service_model(s.clone()).unwrap();
        let slices: Vec<SliceModel> = slices
            .iter()
            .map(|s| slice_model((*s).clone()).unwrap())
            .collect();
        let slices: Vec<&SliceModel> = slices.iter().collect();
        service_ports(&svc, &slices, reserved, skipped)
    }

    #[test]
    fn ports_endpoints_and_conditions() {
        let s = svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}],
                     "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}
        }));
        let sl = slice(json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.2"], "nodeName": "n1", "zone": "z1",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.0.1"], "nodeName": "n2",
                 "hints": {"forZones": [{"name": "z1"}]}}
            ]
        }));
        let m = slice_model(sl.clone()).unwrap();
        assert_eq!(m.service.as_deref(), Some("default/web"));
        assert_eq!(m.key, "default/web-1");
        let mut skipped = vec![];
        let p = ports_of(&s, &[&sl], &Reserved::default(), &mut skipped);
        assert!(skipped.is_empty(), "{skipped:?}");
        // What the agent does not keep is no change: annotations, managed fields, status
        // conditions, an endpoint's targetRef.
        let mut s2 = s.clone();
        s2.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        s2.metadata.resource_version = Some("7".into());
        let mut sl2 = sl.clone();
        sl2.endpoints.as_mut().unwrap()[0].target_ref = Some(Default::default());
        sl2.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert_eq!(service_model(s2), service_model(s.clone()));
        assert_eq!(slice_model(sl2), slice_model(sl.clone()));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].port_name_string(), "default/web:http");
        assert_eq!(p[0].node_port, Some(30080));
        assert!(p[0].external_local && p[0].affinity_seconds == Some(10800));
        let e = &p[0].endpoints;
        assert_eq!(e[0].ip.to_string(), "10.244.0.1"); // sorted
        assert!(e[0].ready && e[0].serving && !e[0].terminating);
        assert_eq!(e[0].for_zones.as_deref(), Some(&["z1".to_string()][..]));
        assert!(!e[1].ready && e[1].serving && e[1].terminating);
        // The UDP port has no slice port of its own: no endpoints (it will REJECT).
        assert_eq!(p[1].protocol, Protocol::Udp);
        assert!(p[1].endpoints.is_empty());
    }

    /// A dual-stack Service is one ServicePort per port and family: each with its own cluster
    /// IP, the endpoints of the slices of its family, its external IPs and source ranges.
    #[test]
    fn dual_stack_services_are_a_port_per_family() {
        let s = svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                     "ports": [{"name": "http", "port": 80}],
                     "externalIPs": ["198.19.0.9", "2001:db8:19::9"],
                     "loadBalancerSourceRanges": ["198.18.0.0/16", "2001:db8::/32"]}
        }));
        let slice = |name: &str, ty: &str, addr: &str| {
            super::tests::slice(json!({
                "metadata": {"namespace": "default", "name": name,
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": ty,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [addr], "nodeName": "n1"}]
            }))
        };
        let (s4, s6) = (
            slice("web-a", "IPv4", "10.244.0.1"),
            slice("web-b", "IPv6", "fd00:10:244::1"),
        );
        let anywhere = Reserved {
            external_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            ..Default::default()
        };
        let mut skipped = vec![];
        let p = ports_of(&s, &[&s4, &s6], &anywhere, &mut skipped);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].family, p[1].family), (Family::V4, Family::V6));
        assert_eq!(p[1].cluster_ip, Some("fd00:10:96::a".parse().unwrap()));
        assert_eq!(
            p[1].external_ips,
            vec!["2001:db8:19::9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(p[1].load_balancer_source_ranges.len(), 1);
        assert_eq!(p[1].endpoints.len(), 1);
        assert_eq!(p[1].endpoints[0].addr(), "[fd00:10:244::1]:8080");
        assert_eq!(p[0].endpoints[0].addr(), "10.244.0.1:8080");
        // A node's IPv6 address as an externalIP is refused as its IPv4 one is, even inside
        // an allowed range (a namespace user capturing the node's IPv6 traffic).
        let guarded = Reserved {
            nets: vec![(
                "2001:db8:18::10/128".parse().unwrap(),
                "node n1's address".into(),
            )],
            external_ips: vec!["::/0".parse().unwrap()],
            ..Default::default()
        };
        let capture = svc(json!({
            "metadata": {"namespace": "evil", "name": "v6"},
            "spec": {"clusterIPs": ["fd00:10:96::c"], "ports": [{"port": 179}],
                     "externalIPs": ["2001:db8:18::10", "2001:db8:19::1"]}
        }));
        let mut why = vec![];
        let p = ports_of(&capture, &[], &guarded, &mut why);
        assert_eq!(
            p[0].external_ips,
            vec!["2001:db8:19::1".parse::<IpAddr>().unwrap()]
        );
        assert!(
            why.iter()
                .any(|w| w.reason.contains("2001:db8:18::10 is node n1's address")),
            "{why:?}"
        );
        // Source ranges of IPv4 only: the IPv6 load balancer address is refused, not open.
        let lb = svc(json!({
            "metadata": {"namespace": "default", "name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.11", "fd00:10:96::b"],
                     "ports": [{"port": 80}], "loadBalancerSourceRanges": ["198.18.0.0/16"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.19.0.5"}, {"ip": "2001:db8:19::5"}]}}
        }));
        let lbs = Reserved {
            lb_ips: vec![
                "198.19.0.0/24".parse().unwrap(),
                "2001:db8:19::/64".parse().unwrap(),
            ],
            ..Default::default()
        };
        let mut why = vec![];
        let p = ports_of(&lb, &[], &lbs, &mut why);
        assert_eq!(p[0].load_balancer_ips.len(), 1);
        assert!(p[1].load_balancer_ips.is_empty(), "{p:?}");
        assert!(
            why.iter().any(|w| w.reason.contains("no IPv6 range")),
            "{why:?}"
        );
        // An IPv6-only Service: only the IPv6 port.
        let six = svc(json!({"metadata": {"namespace": "d", "name": "v6"},
            "spec": {"clusterIP": "fd00::10", "ports": [{"port": 80}]}}));
        let p = ports_of(&six, &[], &Reserved::default(), &mut skipped);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].family, Family::V6);
    }

    /// Names end up in chain names and comments (nft identifiers are not quoted): one the
    /// API server would refuse is never written, whatever wrote it into the datastore.
    #[test]
    fn names_the_api_server_would_refuse_are_never_programmed() {
        let mut skipped = vec![];
        let bad_port = svc(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10",
                     "ports": [{"name": "a; flush ruleset", "port": 80},
                               {"name": "ok", "port": 81}]}
        }));
        let p = ports_of(&bad_port, &[], &Reserved::default(), &mut skipped);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port_name, "ok");
        assert!(skipped[0].reason.starts_with("port name: "), "{skipped:?}");
        let bad_ns = svc(json!({
            "metadata": {"namespace": "x\"\ny", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }));
        assert!(ports_of(&bad_ns, &[], &Reserved::default(), &mut skipped).is_empty());
        assert!(
            skipped[1].reason.starts_with("metadata.namespace: "),
            "{skipped:?}"
        );
    }

    #[test]
    fn bad_parts_are_skipped_with_a_reason_and_the_rest_kept() {
        let s = svc(json!({
            "metadata": {"namespace": "default", "name": "bad"},
            "spec": {"clusterIP": "10.96.0.11",
                     "ports": [{"name": "a", "port": 0}, {"name": "b", "port": 81, "protocol": "QUIC"},
                               {"name": "c", "port": 82}],
                     "externalIPs": ["fd00::1", "198.19.0.9"]}
        }));
        let mut skipped = vec![];
        let anywhere = Reserved {
            external_ips: vec!["0.0.0.0/0".parse().unwrap()],
            ..Default::default()
        };
        let p = ports_of(&s, &[], &anywhere, &mut skipped);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].external_ips.len(), 1);
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("port 0 is not 1-65535")));
        assert!(reasons
            .iter()
            .any(|r| r.contains("unknown protocol \"QUIC\"")));
        // fd00::1 is of a family the Service (IPv4 only) does not have.
        assert!(reasons
            .iter()
            .any(|r| r.contains("fd00::1 is not of the Service's families")));
        let junk = svc(json!({"metadata": {"namespace": "d", "name": "j"},
            "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}}));
        assert!(ports_of(&junk, &[], &Reserved::default(), &mut skipped).is_empty());
        assert!(skipped
            .last()
            .unwrap()
            .reason
            .contains("is not an IP address"));
        let headless = svc(json!({"metadata": {"namespace": "d", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        assert!(ports_of(&headless, &[], &Reserved::default(), &mut skipped).is_empty());
    }

    /// A Service may take an externalIP or LoadBalancer address only inside the allowed
    /// ranges, never a node's, a peer's or a pool's, inside a node subnet only through a
    /// range inside it; and no BGP port as nodePort. The rest of it is kept.
    #[test]
    fn reserved_addresses_and_ports_are_refused() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let reserved = Reserved {
            nets: vec![
                (net("198.18.0.11/32"), "node n1's address".into()),
                (net("198.18.0.1/32"), "BGP peer tor's address".into()),
                (net("10.244.0.0/16"), "inside IPPool default".into()),
            ],
            subnets: vec![(net("198.18.0.0/24"), "inside node n1's subnet".into())],
            external_ips: vec![net("0.0.0.0/0"), net("198.18.0.240/28")],
            lb_ips: vec![net("198.19.0.0/24")],
            ports: vec![179],
        };
        let s = svc(json!({
            "metadata": {"namespace": "evil", "name": "capture"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12",
                     "ports": [{"name": "bgp", "port": 179, "nodePort": 179},
                               {"name": "web", "port": 80, "nodePort": 30080}],
                     "externalIPs": ["198.18.0.11", "198.18.0.1", "198.18.0.77", "10.244.3.3",
                                     "198.19.0.9", "198.18.0.241"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.12"}, {"ip": "198.19.0.10"},
                                                    {"ip": "203.0.113.1"}]}}
        }));
        let mut skipped = vec![];
        let p = ports_of(&s, &[], &reserved, &mut skipped);
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            p.len(),
            1,
            "the BGP nodePort's port is left out: {reasons:?}"
        );
        let ips = |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(p[0].external_ips, ips(&["198.19.0.9", "198.18.0.241"]));
        assert_eq!(p[0].load_balancer_ips, ips(&["198.19.0.10"]));
        for want in [
            "198.18.0.11 is node n1's address",
            "198.18.0.1 is BGP peer tor's address",
            "198.18.0.77 is inside node n1's subnet, and no serviceExternalIPs range inside",
            "10.244.3.3 is inside IPPool default",
            "ingress 198.18.0.12 is outside the BGPConfiguration default's serviceLoadBalancerIPs (198.19.0.0/24)",
            "ingress 203.0.113.1 is outside",
            "nodePort 179 is a BGP port",
        ] {
            assert!(reasons.iter().any(|r| r.contains(want)), "{want}: {reasons:?}");
        }
        // Nothing allowed: no externalIP at all.
        let none = Reserved {
            external_ips: vec![],
            ..reserved
        };
        let mut skipped = vec![];
        let p = ports_of(&s, &[], &none, &mut skipped);
        assert!(p[0].external_ips.is_empty());
        assert!(skipped.iter().any(|s| s.reason.contains(
            "198.19.0.9 is outside the BGPConfiguration default's serviceExternalIPs (none set)"
        )));
    }
}
