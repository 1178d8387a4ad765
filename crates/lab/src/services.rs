//! The lab plays Kubernetes' control plane for Services: it writes the Service (cluster IP,
//! node ports and load balancer ingress assigned here, as the API server and a cloud
//! controller would) and keeps one EndpointSlice per Service and family current from the pods
//! it made, with topology hints as the EndpointSlice controller sets them (REFERENCE §B3). In
//! a dual-stack lab every Service is dual-stack (`PreferDualStack`): an IPv4 cluster IP from
//! 10.96.0.0/16 and an IPv6 one from fd00:10:96::/112, and an IPv6 slice beside the IPv4 one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pods::NAMESPACE;
use crate::Lab;

/// `brindle-lab service add …`, and the tests' way to make a Service.
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct LabService {
    pub name: String,
    /// Pods with these labels (`k=v`, repeatable) are its endpoints.
    #[arg(long = "selector", value_parser = parse_kv)]
    pub selector: Vec<(String, String)>,
    /// `PORT:TARGET[/udp|/sctp]`, repeatable (default 80:8080).
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// ClusterIP, NodePort or LoadBalancer.
    #[arg(long = "type", default_value = "ClusterIP")]
    pub type_: String,
    #[arg(long = "external-ip")]
    pub external_ips: Vec<Ipv4Addr>,
    /// The load balancer's address (the lab is the cloud controller); LoadBalancer only.
    #[arg(long = "load-balancer-ip")]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    #[arg(long = "load-balancer-source-range")]
    pub load_balancer_source_ranges: Vec<String>,
    /// PreferClose, PreferSameZone or PreferSameNode.
    #[arg(long)]
    pub traffic_distribution: Option<String>,
    /// Local or Cluster.
    #[arg(long)]
    pub internal_traffic_policy: Option<String>,
    #[arg(long)]
    pub external_traffic_policy: Option<String>,
    /// ClientIP affinity with this timeout in seconds.
    #[arg(long)]
    pub session_affinity_seconds: Option<i32>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not k=v"))
}

/// What the lab assigned to a Service.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub spec: LabService,
    /// Its first cluster IP (`spec.clusterIP`): IPv4, or IPv6 in an IPv6-only lab.
    pub cluster_ip: IpAddr,
    /// The IPv6 cluster IP (dual-stack and IPv6-only labs).
    pub cluster_ip6: Option<Ipv6Addr>,
    /// Its slot: cluster IPs 10.96.0.(10+slot) and fd00:10:96::(10+slot in hex).
    pub slot: u32,
    /// Service port → (target port, protocol, node port).
    pub ports: Vec<(u16, u16, String, Option<u16>)>,
}

impl Assigned {
    pub fn node_port(&self, port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.0 == port).and_then(|p| p.3)
    }
}

fn parse_port(s: &str) -> Result<(u16, u16, String), String> {
    let (pp, proto) = match s.split_once('/') {
        Some((a, p)) => (a, p.to_uppercase()),
        None => (s, "TCP".to_string()),
    };
    let (p, t) = pp.split_once(':').unwrap_or((pp, pp));
    let bad = || format!("--port {s:?}: want PORT:TARGET[/udp|/sctp]");
    Ok((
        p.parse().map_err(|_| bad())?,
        t.parse().map_err(|_| bad())?,
        proto,
    ))
}

impl LabService {
    /// A Kubernetes Service as the lab makes it (`brindle-lab apply -f`): in the lab's
    /// namespace, numbered target ports; the lab assigns the cluster IP and node ports (it is
    /// the API server), and is the cloud controller (`status.loadBalancer` is kept).
    pub fn from_service(svc: &Service) -> Result<LabService, String> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let what = |field: &str, why: &str| format!("Service {name}: {field}: {why}");
        if let Some(ns) = svc
            .metadata
            .namespace
            .as_deref()
            .filter(|n| *n != NAMESPACE)
        {
            return Err(what(
                "metadata.namespace",
                &format!("the lab's Services live in {NAMESPACE:?}, not {ns:?}"),
            ));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.cluster_ip.is_some() || spec.cluster_ips.is_some() {
            return Err(what("spec.clusterIP", "assigned by the lab: leave it out"));
        }
        let type_ = spec.type_.unwrap_or_else(|| "ClusterIP".into());
        if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&type_.as_str()) {
            return Err(what(
                "spec.type",
                &format!("{type_} is not one the lab makes"),
            ));
        }
        let mut ports = vec![];
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let target = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(t)) => *t,
                Some(IntOrString::String(s)) => {
                    return Err(what(
                        &format!("spec.ports[{i}].targetPort"),
                        &format!("{s:?}: the lab takes numbered target ports"),
                    ))
                }
            };
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            ports.push(format!("{}:{target}/{}", p.port, proto.to_lowercase()));
        }
        let ips = |v: Option<Vec<String>>, field: &str| -> Result<Vec<Ipv4Addr>, String> {
            v.unwrap_or_default()
                .iter()
                .map(|s| {
                    s.parse()
                        .map_err(|_| what(field, &format!("{s:?} is not an IPv4 address")))
                })
                .collect()
        };
        let lb = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .collect();
        Ok(LabService {
            name: name.clone(),
            selector: spec.selector.unwrap_or_default().into_iter().collect(),
            ports,
            type_,
            external_ips: ips(spec.external_ips, "spec.externalIPs")?,
            load_balancer_ips: ips(Some(lb), "status.loadBalancer.ingress")?,
            load_balancer_source_ranges: spec.load_balancer_source_ranges.unwrap_or_default(),
            traffic_distribution: spec.traffic_distribution,
            internal_traffic_policy: spec.internal_traffic_policy,
            external_traffic_policy: spec.external_traffic_policy,
            session_affinity_seconds: (spec.session_affinity.as_deref() == Some("ClientIP")).then(
                || {
                    spec.session_affinity_config
                        .and_then(|c| c.client_ip)
                        .and_then(|c| c.timeout_seconds)
                        .unwrap_or(10800)
                },
            ),
        })
    }
}

fn port_name(port: u16, proto: &str) -> String {
    format!("{}{port}", proto.to_lowercase())
}

impl Lab {
    /// Writes a Service and its EndpointSlice; returns what was assigned.
    pub fn service_add(&mut self, spec: &LabService) -> Result<Assigned, String> {
        if self.services.contains_key(&spec.name) {
            return Err(format!("service {} exists", spec.name));
        }
        // The first slot no Service holds (a deleted one's slot is taken again).
        let n = (0u32..)
            .find(|n| self.services.values().all(|a| a.slot != *n))
            .unwrap_or_default();
        let cluster_ip4 = self
            .spec
            .v4()
            .then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + n));
        let cluster_ip6 = self
            .spec
            .v6()
            .then(|| Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10 + n as u16));
        let cluster_ips: Vec<IpAddr> = (cluster_ip4.map(IpAddr::V4).into_iter())
            .chain(cluster_ip6.map(IpAddr::V6))
            .collect();
        let cluster_ip = cluster_ips[0];
        let families: Vec<String> = cluster_ips
            .iter()
            .map(|a| if a.is_ipv4() { "IPv4" } else { "IPv6" }.to_string())
            .collect();
        let ports_in = if spec.ports.is_empty() {
            vec!["80:8080".to_string()]
        } else {
            spec.ports.clone()
        };
        let with_np = spec.type_ == "NodePort" || spec.type_ == "LoadBalancer";
        let mut ports = vec![];
        for (i, p) in ports_in.iter().enumerate() {
            let (port, target, proto) = parse_port(p)?;
            let np = with_np.then(|| 30000 + (n as u16) * 10 + i as u16);
            ports.push((port, target, proto, np));
        }
        let svc = Service {
            metadata: kube::api::ObjectMeta {
                name: Some(spec.name.clone()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(spec.type_.clone()),
                cluster_ip: Some(cluster_ip.to_string()),
                cluster_ips: Some(cluster_ips.iter().map(ToString::to_string).collect()),
                ip_family_policy: Some(
                    if families.len() > 1 {
                        "PreferDualStack"
                    } else {
                        "SingleStack"
                    }
                    .into(),
                ),
                ip_families: Some(families),
                selector: Some(spec.selector.iter().cloned().collect()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, t, proto, np)| ServicePort {
                            name: Some(port_name(*p, proto)),
                            port: i32::from(*p),
                            target_port: Some(IntOrString::Int(i32::from(*t))),
                            protocol: Some(proto.clone()),
                            node_port: np.map(i32::from),
                            ..Default::default()
                        })
                        .collect(),
                ),
                external_ips: (!spec.external_ips.is_empty())
                    .then(|| spec.external_ips.iter().map(|i| i.to_string()).collect()),
                load_balancer_source_ranges: (!spec.load_balancer_source_ranges.is_empty())
                    .then(|| spec.load_balancer_source_ranges.clone()),
                traffic_distribution: spec.traffic_distribution.clone(),
                internal_traffic_policy: spec.internal_traffic_policy.clone(),
                external_traffic_policy: spec.external_traffic_policy.clone(),
                session_affinity: spec.session_affinity_seconds.map(|_| "ClientIP".into()),
                session_affinity_config: spec.session_affinity_seconds.map(|t| {
                    SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig {
                            timeout_seconds: Some(t),
                        }),
                    }
                }),
                ..Default::default()
            }),
            status: (!spec.load_balancer_ips.is_empty()).then(|| ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        spec.load_balancer_ips
                            .iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        };
        let api = self.store.namespaced::<Service>(NAMESPACE);
        self.block_on(api.create(&svc)).map_err(|e| e.to_string())?;
        let a = Assigned {
            spec: spec.clone(),
            cluster_ip,
            cluster_ip6,
            slot: n,
            ports,
        };
        self.services.insert(spec.name.clone(), a.clone());
        self.sync_endpoints()?;
        Ok(a)
    }

    pub fn service_del(&mut self, name: &str) -> Result<(), String> {
        if !self.services.contains_key(name) {
            return Err(format!("no service {name}"));
        }
        let svcs = self.store.namespaced::<Service>(NAMESPACE);
        let slices = self.store.namespaced::<EndpointSlice>(NAMESPACE);
        let (v4, v6) = (self.spec.v4(), self.spec.v6());
        self.block_on(async {
            svcs.delete(name, None).await?;
            if v4 {
                slices.delete(&format!("{name}-lab"), None).await?;
            }
            if v6 {
                slices.delete(&format!("{name}-lab6"), None).await?;
            }
            Ok::<_, brindle_datastore::StoreError>(())
        })
        .map_err(|e| e.to_string())?;
        // Only now: a Service still in the store keeps its ClusterIP slot.
        self.services.remove(name);
        Ok(())
    }

    /// A node's zone (`topology.kubernetes.io/zone`).
    pub fn zone_of(&self, node: &str) -> String {
        let i = self.node_index(node);
        format!("zone-{}", i % self.spec.zones.max(1))
    }

    /// The pods a Service selects, as its EndpointSlice of one family lists them (`v6`: the
    /// pods' IPv6 addresses, slice `<name>-lab6`).
    fn slice_for(&self, a: &Assigned, v6: bool) -> EndpointSlice {
        let hints = |node: &str| -> Option<EndpointHints> {
            let zone = self.zone_of(node);
            match a.spec.traffic_distribution.as_deref() {
                Some("PreferClose") | Some("PreferSameZone") => Some(EndpointHints {
                    for_zones: Some(vec![ForZone { name: zone }]),
                    for_nodes: None,
                }),
                Some("PreferSameNode") => Some(EndpointHints {
                    for_zones: Some(vec![ForZone { name: zone }]),
                    for_nodes: Some(vec![ForNode {
                        name: node.to_string(),
                    }]),
                }),
                _ => None,
            }
        };
        let endpoints: Vec<Endpoint> = self
            .pods
            .values()
            .filter(|p| {
                p.namespace == NAMESPACE
                    && !a.spec.selector.is_empty()
                    && a.spec
                        .selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .filter_map(|p| {
                let addr = if v6 {
                    p.ip6.map(IpAddr::V6)
                } else {
                    p.ip.map(IpAddr::V4)
                };
                Some((p, addr?))
            })
            .map(|(p, addr)| Endpoint {
                addresses: vec![addr.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(p.node.clone()),
                zone: Some(self.zone_of(&p.node)),
                hints: hints(&p.node),
                ..Default::default()
            })
            .collect();
        let mut labels = BTreeMap::new();
        labels.insert(
            "kubernetes.io/service-name".to_string(),
            a.spec.name.clone(),
        );
        labels.insert(
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "brindle-lab".to_string(),
        );
        EndpointSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}-lab{}", a.spec.name, if v6 { "6" } else { "" })),
                namespace: Some(NAMESPACE.into()),
                labels: Some(labels),
                ..Default::default()
            },
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints: Some(endpoints),
            ports: Some(
                a.ports
                    .iter()
                    .map(|(p, t, proto, _)| EndpointPort {
                        name: Some(port_name(*p, proto)),
                        port: Some(i32::from(*t)),
                        protocol: Some(proto.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    /// Brings every Service's EndpointSlice up to date with the lab's pods.
    pub fn sync_endpoints(&mut self) -> Result<(), String> {
        let api = self.store.namespaced::<EndpointSlice>(NAMESPACE);
        let families: Vec<bool> = (self.spec.v4().then_some(false).into_iter())
            .chain(self.spec.v6().then_some(true))
            .collect();
        for (a, v6) in self
            .services
            .values()
            .flat_map(|a| families.iter().map(move |v6| (a, *v6)))
        {
            let mut want = self.slice_for(a, v6);
            let name = want.metadata.name.clone().unwrap_or_default();
            self.block_on(async {
                match api.get(&name).await? {
                    Some(have) => {
                        if have.endpoints == want.endpoints && have.ports == want.ports {
                            return Ok(());
                        }
                        want.metadata.resource_version = have.metadata.resource_version;
                        api.update(&want).await.map(|_| ())
                    }
                    None => api.create(&want).await.map(|_| ()),
                }
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
