//! Services and EndpointSlices (Kubernetes' types) → felix-lite's plain [`ServicePort`]s, one
//! per port and family (a dual-stack Service's IPv6 ports go to the IPv6 rules). Pure. What
//! cannot be programmed (a bad port, an unknown protocol, an address of a family the Service
//! does not have, a slice port without a number) is skipped with a reason; the rest goes on.

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use brindle_api::service_addresses::{AddressKind, Reserved};
use brindle_felix_lite::family::Family;
use brindle_felix_lite::proxy::{Endpoint, Protocol, ServicePort};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
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

/// A Service with only what [`service_ports`] reads (name, namespace, spec, the load
/// balancer's ingress addresses): 10,000 Services held whole (managed fields, annotations,
/// status conditions) cost the agent 200 MiB. A change to nothing kept is no change.
pub fn slim_service(mut s: Service) -> Option<Service> {
    s.metadata = slim_meta(&mut s.metadata, false);
    if let Some(st) = s.status.as_mut() {
        st.conditions = None;
        for i in st
            .load_balancer
            .iter_mut()
            .flat_map(|l| l.ingress.iter_mut().flatten())
        {
            i.hostname = None;
            i.ports = None;
        }
    }
    Some(s)
}

/// An EndpointSlice with only what the Services read: name, namespace, its Service's label,
/// ports and the endpoints' addresses, conditions, node, zone and hints.
pub fn slim_slice(mut s: EndpointSlice) -> Option<EndpointSlice> {
    s.metadata = slim_meta(&mut s.metadata, true);
    for e in s.endpoints.iter_mut().flatten() {
        e.target_ref = None;
        e.hostname = None;
        e.deprecated_topology = None;
    }
    Some(s)
}

fn slim_meta(
    m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    service_label: bool,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let labels = service_label
        .then(|| m.labels.as_ref()?.get(SERVICE_NAME_LABEL).cloned())
        .flatten()
        .map(|v| BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), v)]));
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        labels,
        ..Default::default()
    }
}

/// The Service key (`ns/name`) an EndpointSlice belongs to.
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!("{}/{name}", s.metadata.namespace.as_deref()?))
}

fn port_ok(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The ports of one Service with their endpoints; `skipped` gets a line per problem.
pub fn service_ports(
    svc: &Service,
    slices: &[&EndpointSlice],
    reserved: &Reserved,
    skipped: &mut Vec<Skipped>,
) -> Vec<ServicePort> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let mut skip = |object: &str, reason: String| {
        skipped.push(Skipped {
            object: object.to_string(),
            reason,
        })
    };
    let Some(spec) = &svc.spec else {
        return vec![];
    };
    // Names become parts of chain and set names and rule comments: what the API server
    // would refuse (etcd mode has none to ask) is refused here, never written.
    for (what, v) in [("namespace", &ns), ("name", &name)] {
        if let Err(e) = brindle_api::validation::check_name(v) {
            skip(&key, format!("metadata.{what}: {e}"));
            return vec![];
        }
    }
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return vec![];
    }
    let ips: Vec<&String> = match &spec.cluster_ips {
        Some(v) if !v.is_empty() => v.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    if ips.iter().any(|i| i.as_str() == "None") {
        return vec![]; // headless: DNS only, nothing to program
    }
    // One ServicePort per family the Service has a cluster IP of (dual stack: both, in the
    // order of clusterIPs; its first is the primary one).
    let mut cluster_ips: Vec<IpAddr> = vec![];
    for i in &ips {
        match i.parse::<IpAddr>() {
            Ok(ip) if !cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()) => {
                cluster_ips.push(ip)
            }
            Ok(ip) => skip(&key, format!("clusterIPs: a second {ip:?} of one family")),
            Err(_) => skip(&key, format!("clusterIPs: {i:?} is not an IP address")),
        }
    }
    if cluster_ips.is_empty() && !ips.is_empty() {
        return vec![];
    }
    let families: Vec<Family> = if cluster_ips.is_empty() {
        vec![Family::V4] // no cluster IP at all: what externalIPs alone give, as before
    } else {
        cluster_ips.iter().map(|ip| Family::of(*ip)).collect()
    };
    let served = |ip: IpAddr| families.contains(&Family::of(ip));
    let mut external_ips = vec![];
    for e in spec.external_ips.iter().flatten() {
        match e.parse::<IpAddr>() {
            Ok(ip) if !served(ip) => skip(
                &key,
                format!("externalIPs: {ip} is not of the Service's families"),
            ),
            Ok(ip) => match reserved.refuse(ip, AddressKind::ExternalIp) {
                Some(why) => skip(&key, format!("externalIPs: {why}: refused")),
                None => external_ips.push(ip),
            },
            Err(_) => skip(&key, format!("externalIPs: {e:?} is not an IP address")),
        }
    }
    let mut lb_ips = vec![];
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    for i in ingress.into_iter().flatten() {
        if let Some(ip) = &i.ip {
            match ip.parse::<IpAddr>() {
                Ok(a) if !served(a) => skip(
                    &key,
                    format!("loadBalancer ingress {a} is not of the Service's families"),
                ),
                Ok(a) => match reserved.refuse(a, AddressKind::LoadBalancer) {
                    Some(why) => skip(&key, format!("loadBalancer ingress {why}: refused")),
                    None => lb_ips.push(a),
                },
                Err(_) => skip(
                    &key,
                    format!("loadBalancer ingress {ip:?} is not an IP address"),
                ),
            }
        }
    }
    let mut ranges = vec![];
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        match r.trim().parse::<IpNetwork>() {
            Ok(n) => ranges.push(n),
            Err(_) => skip(
                &key,
                format!("loadBalancerSourceRanges: {r:?} is not a CIDR"),
            ),
        }
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let with_node_port = ty == "NodePort" || ty == "LoadBalancer";
    let mut out = vec![];
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let checked = if pname.is_empty() {
            Ok(())
        } else {
            brindle_api::validation::check_name(&pname)
        };
        if let Err(e) = checked {
            skip(&key, format!("port name: {e}"));
            continue;
        }
        let proto_s = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(proto_s) else {
            skip(
                &key,
                format!("port {pname:?}: unknown protocol {proto_s:?}"),
            );
            continue;
        };
        let Some(port) = port_ok(p.port) else {
            skip(
                &key,
                format!("port {pname:?}: port {} is not 1-65535", p.port),
            );
            continue;
        };
        let node_port = match p.node_port.filter(|_| with_node_port) {
            None => None,
            Some(n) => match port_ok(n) {
                Some(n) => {
                    if let Some(why) = reserved.refuse_node_port(n) {
                        skip(&key, format!("port {pname:?}: {why}: refused"));
                        continue;
                    }
                    Some(n)
                }
                None => {
                    skip(&key, format!("port {pname:?}: nodePort {n} is not 1-65535"));
                    continue;
                }
            },
        };
        for &family in &families {
            let of = |ips: &[IpAddr]| -> Vec<IpAddr> {
                ips.iter().copied().filter(|ip| family.has(*ip)).collect()
            };
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
            let endpoints = endpoints_for(&pname, proto_s, family, slices, &mut skip);
            out.push(ServicePort {
                namespace: ns.clone(),
                name: name.clone(),
                port_name: pname.clone(),
                protocol,
                family,
                cluster_ip: cluster_ips.iter().copied().find(|ip| family.has(*ip)),
                port,
                node_port,
                external_ips: of(&external_ips),
                load_balancer_ips: lbs,
                load_balancer_source_ranges: family_ranges,
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                affinity_seconds: affinity,
                endpoints,
            });
        }
    }
    out
}

/// The endpoints of the service port named `pname`, from every slice of `family`
/// (`addressType` IPv4 or IPv6), deduplicated and sorted (so the rules are the same whatever
/// order the slices came in).
fn endpoints_for(
    pname: &str,
    proto: &str,
    family: Family,
    slices: &[&EndpointSlice],
    skip: &mut impl FnMut(&str, String),
) -> Vec<Endpoint> {
    let want = match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    let mut eps: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for s in slices {
        if s.address_type != want {
            continue;
        }
        let skey = format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(sp) = s.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or_default() == pname
                && sp.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue; // this slice does not serve the port (a named port nobody defines)
        };
        let Some(port) = sp.port.and_then(port_ok) else {
            skip(
                &skey,
                format!("port {pname:?} has no usable number ({:?})", sp.port),
            );
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let Some(addr) = e.addresses.first() else {
                continue;
            };
            let ip = match addr.parse::<IpAddr>() {
                Ok(ip) if family.has(ip) => ip,
                _ => {
                    skip(&skey, format!("endpoint {addr:?} is not an {want} address"));
                    continue;
                }
            };
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let hints = e.hints.as_ref();
            eps.entry((ip, port)).or_insert(Endpoint {
                ip,
                port,
                node: e.node_name.clone(),
                zone: e.zone.clone(),
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                for_nodes: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|v| v.iter().map(|n| n.name.clone()).collect()),
                for_zones: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|v| v.iter().map(|z| z.name.clone()).collect()),
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
        assert_eq!(slice_service(&sl).as_deref(), Some("default/web"));
        let mut skipped = vec![];
        let p = service_ports(&s, &[&sl], &Reserved::default(), &mut skipped);
        assert!(skipped.is_empty(), "{skipped:?}");
        // What the agent keeps (slimmed objects) converts to the same ports.
        let (s2, sl2) = (
            slim_service(s.clone()).unwrap(),
            slim_slice(sl.clone()).unwrap(),
        );
        assert_eq!(slice_service(&sl2).as_deref(), Some("default/web"));
        let p2 = service_ports(&s2, &[&sl2], &Reserved::default(), &mut skipped);
        assert_eq!(p, p2);
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
        let p = service_ports(&s, &[&s4, &s6], &anywhere, &mut skipped);
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
        let p = service_ports(&capture, &[], &guarded, &mut why);
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
        let p = service_ports(&lb, &[], &lbs, &mut why);
        assert_eq!(p[0].load_balancer_ips.len(), 1);
        assert!(p[1].load_balancer_ips.is_empty(), "{p:?}");
        assert!(
            why.iter().any(|w| w.reason.contains("no IPv6 range")),
            "{why:?}"
        );
        // An IPv6-only Service: only the IPv6 port.
        let six = svc(json!({"metadata": {"namespace": "d", "name": "v6"},
            "spec": {"clusterIP": "fd00::10", "ports": [{"port": 80}]}}));
        let p = service_ports(&six, &[], &Reserved::default(), &mut skipped);
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
        let p = service_ports(&bad_port, &[], &Reserved::default(), &mut skipped);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].port_name, "ok");
        assert!(skipped[0].reason.starts_with("port name: "), "{skipped:?}");
        let bad_ns = svc(json!({
            "metadata": {"namespace": "x\"\ny", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }));
        assert!(service_ports(&bad_ns, &[], &Reserved::default(), &mut skipped).is_empty());
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
        let p = service_ports(&s, &[], &anywhere, &mut skipped);
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
        assert!(service_ports(&junk, &[], &Reserved::default(), &mut skipped).is_empty());
        assert!(skipped
            .last()
            .unwrap()
            .reason
            .contains("is not an IP address"));
        let headless = svc(json!({"metadata": {"namespace": "d", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        assert!(service_ports(&headless, &[], &Reserved::default(), &mut skipped).is_empty());
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
        let p = service_ports(&s, &[], &reserved, &mut skipped);
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
        let p = service_ports(&s, &[], &none, &mut skipped);
        assert!(p[0].external_ips.is_empty());
        assert!(skipped.iter().any(|s| s.reason.contains(
            "198.19.0.9 is outside the BGPConfiguration default's serviceExternalIPs (none set)"
        )));
    }
}
