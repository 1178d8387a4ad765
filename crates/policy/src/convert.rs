//! networking.k8s.io/v1 objects → the model. A policy that cannot be read (a selector
//! operator that does not exist, a CIDR that does not parse, a port out of range) is an
//! [`Invalid`] naming the field and the reason; whoever renders must then keep the pods it
//! would select isolated without its allows (fail closed), see [`closed`].

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::labels::intern;
use crate::model::{
    Expr, NamedPort, Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule, Selector,
    NAMESPACE_NAME_LABEL,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {policy}: {field}: {reason}")]
pub struct Invalid {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

type Res<T> = Result<T, (String, String)>;

fn bad<T>(field: impl Into<String>, reason: impl Into<String>) -> Res<T> {
    Err((field.into(), reason.into()))
}

/// The model of one NetworkPolicy.
pub fn policy(np: &NetworkPolicy) -> Result<Policy, Invalid> {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    read(np, &namespace, &name).map_err(|(field, reason)| Invalid {
        policy: format!("{namespace}/{name}"),
        field,
        reason,
    })
}

/// A pod as policy sees it: its namespace, name, labels, node, whether it is on the host's
/// network, its named container ports, and its addresses (`status.podIPs`, else `podIP`;
/// none once it has finished: a Succeeded or Failed pod's address may already be another's).
pub fn pod(p: &KubePod) -> Pod {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|i| i.parse::<IpAddr>().ok()),
        );
    }
    if finished {
        ips.clear();
    }
    let ports: Vec<NamedPort> = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some(NamedPort {
                name: intern(cp.name.as_deref()?),
                protocol: Protocol::parse(cp.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(cp.container_port).ok()?,
            })
        })
        .collect();
    // Held for every pod of the cluster: exactly sized (a collected Vec has room for four).
    Pod {
        namespace: intern(p.metadata.namespace.as_deref().unwrap_or_default()),
        name: p.metadata.name.as_deref().unwrap_or_default().into(),
        labels: p.metadata.labels.iter().flatten().collect(),
        ips: ips.into_boxed_slice(),
        ports: crate::labels::share_ports(&ports),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        node: intern(
            spec.and_then(|s| s.node_name.as_deref())
                .unwrap_or_default(),
        ),
        finished,
    }
}

/// A namespace with its labels (and always its name label, which the API server sets).
pub fn namespace(n: &KubeNamespace) -> Namespace {
    let name = n.metadata.name.clone().unwrap_or_default();
    let own = n.metadata.labels.iter().flatten();
    Namespace {
        labels: [(NAMESPACE_NAME_LABEL, name.as_str())]
            .into_iter()
            .chain(own.map(|(k, v)| (k.as_str(), v.as_str())))
            .collect(),
        name,
    }
}

/// What an unreadable policy still does: isolate the pods it would select, for the
/// directions it names (when its selector or types cannot be read either: every pod of its
/// namespace, both directions), with no allows. Never fails open.
pub fn closed(np: &NetworkPolicy) -> Policy {
    let namespace = np.metadata.namespace.clone().unwrap_or_default();
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = np.spec.clone().unwrap_or_default();
    let pods = spec
        .pod_selector
        .as_ref()
        .map(|s| selector(s, "spec.podSelector"))
        .unwrap_or_else(|| Ok(Selector::default()))
        .unwrap_or_default();
    let (ingress, egress) = types(&spec).unwrap_or((true, true));
    Policy {
        namespace,
        name,
        pods,
        ingress: ingress.then(Vec::new),
        egress: egress.then(Vec::new),
    }
}

/// Which directions the policy isolates: `policyTypes`, or when absent Ingress, plus Egress
/// when it has egress rules (the API's defaulting).
fn types(spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec) -> Res<(bool, bool)> {
    match &spec.policy_types {
        Some(t) if !t.is_empty() => {
            let mut out = (false, false);
            for (i, x) in t.iter().enumerate() {
                match x.as_str() {
                    "Ingress" => out.0 = true,
                    "Egress" => out.1 = true,
                    other => {
                        return bad(
                            format!("spec.policyTypes[{i}]"),
                            format!("{other:?} is not Ingress or Egress"),
                        )
                    }
                }
            }
            Ok(out)
        }
        _ => Ok((true, spec.egress.is_some())),
    }
}

fn read(np: &NetworkPolicy, namespace: &str, name: &str) -> Res<Policy> {
    let spec = np.spec.clone().unwrap_or_default();
    let pods = match &spec.pod_selector {
        Some(s) => selector(s, "spec.podSelector")?,
        None => Selector::default(),
    };
    let (ing, eg) = types(&spec)?;
    let mut ingress = vec![];
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: peers(r.from.as_deref(), &format!("{f}.from"))?,
            ports: ports(r.ports.as_deref(), &format!("{f}.ports"))?,
        });
    }
    let mut egress = vec![];
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: peers(r.to.as_deref(), &format!("{f}.to"))?,
            ports: ports(r.ports.as_deref(), &format!("{f}.ports"))?,
        });
    }
    Ok(Policy {
        namespace: namespace.into(),
        name: name.into(),
        pods,
        ingress: ing.then_some(ingress),
        egress: eg.then_some(egress),
    })
}

pub fn selector(s: &LabelSelector, field: &str) -> Res<Selector> {
    let labels: BTreeMap<String, String> = s.match_labels.clone().unwrap_or_default();
    let mut exprs = vec![];
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        exprs.push(match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return bad(f, format!("operator {} needs values", e.operator))
            }
            "In" => Expr::In(e.key.clone(), values),
            "NotIn" => Expr::NotIn(e.key.clone(), values),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return bad(f, format!("operator {} takes no values", e.operator))
            }
            "Exists" => Expr::Exists(e.key.clone()),
            "DoesNotExist" => Expr::DoesNotExist(e.key.clone()),
            other => {
                return bad(
                    f,
                    format!("operator {other:?} is not In, NotIn, Exists or DoesNotExist"),
                )
            }
        });
    }
    Ok(Selector { labels, exprs })
}

fn peers(list: Option<&[NetworkPolicyPeer]>, field: &str) -> Res<Vec<Peer>> {
    let mut out = vec![];
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
        out.push(match (&p.ip_block, selectors) {
            (Some(_), true) => {
                return bad(
                    f,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                )
            }
            (Some(b), false) => {
                let cidr: IpNetwork = b
                    .cidr
                    .parse()
                    .map_err(|e| (format!("{f}.ipBlock.cidr"), format!("{:?}: {e}", b.cidr)))?;
                let mut except = vec![];
                for (j, x) in b.except.iter().flatten().enumerate() {
                    let n: IpNetwork = x
                        .parse()
                        .map_err(|e| (format!("{f}.ipBlock.except[{j}]"), format!("{x:?}: {e}")))?;
                    if n.is_ipv4() != cidr.is_ipv4() {
                        return bad(
                            format!("{f}.ipBlock.except[{j}]"),
                            format!("{x} is not of {}'s family", b.cidr),
                        );
                    }
                    except.push(n);
                }
                Peer::Block { cidr, except }
            }
            (None, false) => {
                return bad(f, "a peer needs podSelector, namespaceSelector or ipBlock")
            }
            (None, true) => Peer::Pods {
                namespaces: match &p.namespace_selector {
                    Some(s) => {
                        Namespaces::Matching(selector(s, &format!("{f}.namespaceSelector"))?)
                    }
                    None => Namespaces::Own,
                },
                pods: match &p.pod_selector {
                    Some(s) => selector(s, &format!("{f}.podSelector"))?,
                    None => Selector::default(),
                },
            },
        });
    }
    Ok(out)
}

fn ports(list: Option<&[NetworkPolicyPort]>, field: &str) -> Res<Vec<Port>> {
    let mut out = vec![];
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(proto) else {
            return bad(
                format!("{f}.protocol"),
                format!("{proto:?} is not TCP, UDP or SCTP"),
            );
        };
        let port_num = |n: i32, what: &str| -> Res<u16> {
            u16::try_from(n).ok().filter(|n| *n > 0).map_or_else(
                || bad(format!("{f}.{what}"), format!("{n} is not 1-65535")),
                Ok,
            )
        };
        out.push(match (&p.port, p.end_port) {
            (None, None) => Port::Any(protocol),
            (None, Some(_)) => return bad(format!("{f}.endPort"), "needs a numeric port"),
            (Some(IntOrString::Int(n)), end) => {
                let from = port_num(*n, "port")?;
                let to = match end {
                    Some(e) => port_num(e, "endPort")?,
                    None => from,
                };
                if to < from {
                    return bad(format!("{f}.endPort"), format!("{to} is below port {from}"));
                }
                Port::Range { protocol, from, to }
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return bad(format!("{f}.endPort"), "cannot go with a named port")
            }
            (Some(IntOrString::String(name)), None) => {
                if name.is_empty() || name.len() > 15 {
                    return bad(
                        format!("{f}.port"),
                        format!("{name:?} is not a port name (1 to 15 characters)"),
                    );
                }
                Port::Named {
                    protocol,
                    name: name.clone(),
                }
            }
        });
    }
    Ok(out)
}
