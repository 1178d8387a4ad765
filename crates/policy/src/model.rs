//! Kubernetes NetworkPolicy (networking.k8s.io/v1) as plain data: what a policy selects,
//! what its rules allow. Built from the API objects by [`crate::convert`]; judged by
//! [`crate::eval`]. Nothing here knows iptables or nftables.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

pub use crate::labels::Labels;

/// The label Kubernetes puts on every namespace (the upstream tests select on it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Kubernetes protocol: Services (felix-lite's proxy) and NetworkPolicy use this one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); anything else is refused.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// iptables' and ipset's spelling (and kube-proxy's hash input).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One `matchExpressions` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold; an
/// empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: BTreeMap<String, String>,
    pub exprs: Vec<Expr>,
}

impl Selector {
    /// `matchLabels: {key: value}`.
    pub fn label(key: &str, value: &str) -> Selector {
        let mut s = Selector::default();
        s.labels.insert(key.into(), value.into());
        s
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.exprs.iter().all(|e| match e {
                Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.iter().any(|w| w == v)),
                Expr::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.iter().any(|w| w == v)),
                Expr::Exists(k) => labels.contains_key(k),
                Expr::DoesNotExist(k) => !labels.contains_key(k),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.exprs.is_empty()
    }

    /// The label keys the selector reads: a change to any other key cannot change what it
    /// selects.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.labels
            .keys()
            .map(String::as_str)
            .chain(self.exprs.iter().map(|e| match e {
                Expr::In(k, _) | Expr::NotIn(k, _) | Expr::Exists(k) | Expr::DoesNotExist(k) => {
                    k.as_str()
                }
            }))
    }
}

/// Which namespaces a pod peer's pods may be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// The policy's own (a peer with only a `podSelector`).
    Own,
    /// Those whose labels match (a peer with a `namespaceSelector`, with or without a
    /// `podSelector`: both given = both must hold).
    Matching(Selector),
}

/// One `from` / `to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    /// `ipBlock`: any address in `cidr` and in none of `except`.
    Block {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// One `ports` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// No `port`: every port of the protocol.
    Any(Protocol),
    /// `port` (and `endPort`): `from..=to`.
    Range {
        protocol: Protocol,
        from: u16,
        to: u16,
    },
    /// A named port, resolved per destination pod from its container ports.
    Named { protocol: Protocol, name: String },
}

/// One ingress or egress rule. An empty `peers` list allows every peer, an empty `ports`
/// list every port (the API's absent or empty `from`/`to`/`ports`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<Port>,
}

/// A NetworkPolicy. `ingress` is `Some` when the policy isolates its pods for ingress (its
/// policyTypes include Ingress), with the rules that allow (none: deny all); `egress` alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pods: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod label keys any of its selectors reads (its own pod selector, its peers'):
    /// a pod's other labels cannot change what it allows.
    pub fn pod_label_keys(&self) -> impl Iterator<Item = &str> {
        let peers = self
            .ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .flat_map(|r| &r.peers)
            .filter_map(|p| match p {
                Peer::Pods { pods, .. } => Some(pods),
                Peer::Block { .. } => None,
            });
        std::iter::once(&self.pods)
            .chain(peers)
            .flat_map(Selector::keys)
    }

    /// Whether the policy applies to this pod.
    pub fn selects(&self, pod: &Pod) -> bool {
        !pod.host_network && *pod.namespace == *self.namespace && self.pods.matches(&pod.labels)
    }
}

/// A container port a named port can resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// Namespace and node names are shared strings ([`crate::labels::intern`]), labels and
/// named ports shared lists ([`crate::labels::share_ports`]): every pod of the cluster is
/// held by each agent, and these repeat over all of them.
pub struct Pod {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub labels: Labels,
    pub ips: Box<[IpAddr]>,
    pub ports: Arc<[NamedPort]>,
    /// On the node's network: not a workload, no policy applies to it.
    pub host_network: bool,
    pub node: Arc<str>,
    /// Succeeded or Failed: its containers are gone (no addresses, no interface).
    pub finished: bool,
}

impl Pod {
    /// A running workload pod with one address, no labels and no ports (add them with
    /// [`Pod::label`] and [`Pod::port`]).
    pub fn running(namespace: &str, name: &str, node: &str, ip: IpAddr) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: Labels::default(),
            ips: Box::new([ip]),
            ports: Arc::default(),
            host_network: false,
            node: node.into(),
            finished: false,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Pod {
        self.labels.insert(key, value);
        self
    }

    /// A named container port.
    pub fn port(mut self, name: &str, protocol: Protocol, port: u16) -> Pod {
        let mut ports = self.ports.to_vec();
        ports.push(NamedPort {
            name: name.into(),
            protocol,
            port,
        });
        self.ports = crate::labels::share_ports(&ports);
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// With `kubernetes.io/metadata.name` (the API server always sets it).
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, labels: &[(&str, &str)]) -> Namespace {
        let l: Labels = labels
            .iter()
            .copied()
            .chain([(NAMESPACE_NAME_LABEL, name)])
            .collect();
        Namespace {
            name: name.into(),
            labels: l,
        }
    }
}
