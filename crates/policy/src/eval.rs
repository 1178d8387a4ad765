//! What the API reference says a set of policies means for one connection: for each
//! direction, whether the pod is isolated, and if so which policy and rule allow it. This is
//! the reference the dataplane is checked against and what `policy explain` prints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule};

/// One end of a connection: an address, the pod that has it (if any), and whether it is the
/// other end's own node (a node reaches its own pods whatever the policies say).
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub ip: IpAddr,
    pub pod: Option<&'a Pod>,
}

/// The connection: `from` opens it to `to`'s `port` over `protocol`.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    pub from: End<'a>,
    pub to: End<'a>,
    pub protocol: Protocol,
    pub port: u16,
    /// `from` is the host of `to`'s node (kubelet probes): always allowed in.
    pub from_own_node: bool,
}

/// The outcome for one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No pod of ours on this side, or no policy isolates it for this direction.
    NotIsolated,
    /// Allowed into a pod by its own node, whatever the policies say.
    FromOwnNode,
    /// Allowed by this policy's rule (0-based), the first that allows, by policy name.
    Allowed { policy: String, rule: usize },
    /// Isolated by these policies, none of which allows it.
    Denied { isolated_by: Vec<String> },
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Out of `from` (its egress policies).
    pub egress: Decision,
    /// Into `to` (its ingress policies).
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// The policies and namespaces of the cluster.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub namespaces: BTreeMap<String, Namespace>,
    pub policies: Vec<Policy>,
}

impl World {
    pub fn verdict(&self, c: &Conn) -> Verdict {
        let egress = match c.from.pod {
            Some(p) => self.decide(p, Dir::Egress, c.to, c),
            None => Decision::NotIsolated,
        };
        let ingress = match c.to.pod {
            Some(_) if c.from_own_node => Decision::FromOwnNode,
            Some(p) => self.decide(p, Dir::Ingress, c.from, c),
            None => Decision::NotIsolated,
        };
        Verdict { egress, ingress }
    }

    /// `pod`'s policies for `dir`, judged against the other end `peer`.
    fn decide(&self, pod: &Pod, dir: Dir, peer: End, c: &Conn) -> Decision {
        let mut isolated_by = vec![];
        let mut ordered: Vec<&Policy> = self.policies.iter().collect();
        ordered.sort_by_key(|p| p.id());
        for p in ordered {
            if !p.selects(pod) {
                continue;
            }
            let rules = match dir {
                Dir::Ingress => &p.ingress,
                Dir::Egress => &p.egress,
            };
            let Some(rules) = rules else { continue };
            isolated_by.push(p.id());
            // The ports are always the destination's: `to` in both directions.
            if let Some(i) = rules
                .iter()
                .position(|r| self.rule_allows(p, r, peer, c.to.pod, c.protocol, c.port))
            {
                return Decision::Allowed {
                    policy: p.id(),
                    rule: i,
                };
            }
        }
        if isolated_by.is_empty() {
            Decision::NotIsolated
        } else {
            Decision::Denied { isolated_by }
        }
    }

    fn rule_allows(
        &self,
        p: &Policy,
        r: &Rule,
        peer: End,
        dest: Option<&Pod>,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let peer_ok = r.peers.is_empty() || r.peers.iter().any(|x| self.peer_matches(p, x, peer));
        let port_ok = r.ports.is_empty()
            || r.ports
                .iter()
                .any(|x| port_matches(x, dest, protocol, port));
        peer_ok && port_ok
    }

    fn peer_matches(&self, p: &Policy, peer: &Peer, end: End) -> bool {
        match peer {
            Peer::Block { cidr, except } => {
                cidr.contains(end.ip) && !except.iter().any(|e| e.contains(end.ip))
            }
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = end.pod.filter(|x| !x.host_network) else {
                    return false;
                };
                let ns_ok = match namespaces {
                    Namespaces::Own => *pod.namespace == *p.namespace,
                    Namespaces::Matching(sel) => self
                        .namespaces
                        .get(&*pod.namespace)
                        .is_some_and(|n| sel.matches(&n.labels)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
        }
    }
}

/// Whether a `ports` entry admits `protocol`/`port` to `dest` (a named port resolves only
/// against a pod's own container ports, protocol included; a hostNetwork pod is not a
/// workload and its ports resolve no name, as in Calico).
pub fn port_matches(x: &Port, dest: Option<&Pod>, protocol: Protocol, port: u16) -> bool {
    match x {
        Port::Any(p) => *p == protocol,
        Port::Range {
            protocol: p,
            from,
            to,
        } => *p == protocol && (*from..=*to).contains(&port),
        Port::Named { protocol: p, name } => {
            *p == protocol
                && dest.filter(|d| !d.host_network).is_some_and(|d| {
                    d.ports
                        .iter()
                        .any(|n| *n.name == **name && n.protocol == protocol && n.port == port)
                })
        }
    }
}
