//! The policies compiled into what a packet filter holds (Calico's shape, issue 29): address
//! sets for selectors (`hash:net`), sets of (address, protocol, port) for named ports
//! (`hash:ip,port`), one rule list per policy and direction, and per pod the policies that
//! isolate it in each direction. A pod appearing, leaving or relabelled changes set members
//! only; a policy changed changes its own rule lists and the endpoints it selects.
//!
//! [`Program::allows`] evaluates the compiled form the way the dataplane does (first
//! matching allow, per direction; a pod no policy isolates is open); the property test holds
//! it to [`crate::eval`], the API's reference semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::addrs::{AddrSet, PortSet};
use crate::eval::World;
use crate::model::{Namespaces, Peer, Pod, Policy, Port, Protocol, Selector};

/// A selector set's identity: which namespaces, which pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectorKey {
    /// `Some(ns)`: pods of that namespace only; `None`: of the namespaces `ns_selector` picks.
    pub namespace: Option<String>,
    pub ns_selector: Option<String>,
    pub pods: String,
}

/// A named port set's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedKey {
    pub protocol: Protocol,
    pub name: String,
}

/// Where a rule's peer must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    Set(SelectorKey),
    Block {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// Which destination ports a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    Protocol(Protocol),
    Range {
        protocol: Protocol,
        from: u16,
        to: u16,
    },
    /// The destination (address, protocol, port) is in this named-port set.
    Named(NamedKey),
}

/// One rule: the peer in any of `peers` (none: any), the port in any of `ports` (none: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pub peers: Vec<PeerMatch>,
    pub ports: Vec<PortMatch>,
}

/// Per pod: the policies (by id, in order) that isolate it for each direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Program {
    pub ingress: BTreeMap<String, Vec<CompiledRule>>,
    pub egress: BTreeMap<String, Vec<CompiledRule>>,
    /// By pod address.
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    /// By pod (`namespace/name`), addresses or not yet (hostNetwork pods are not here).
    pub by_pod: BTreeMap<String, Endpoint>,
    pub selector_sets: BTreeMap<SelectorKey, AddrSet>,
    pub named_sets: BTreeMap<NamedKey, PortSet>,
}

fn text(s: &Selector) -> String {
    let mut parts: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=={v}")).collect();
    parts.extend(s.exprs.iter().map(|e| format!("{e:?}")));
    parts.join(",")
}

impl Program {
    /// Compiles `world`'s policies for `pods` (every pod of the cluster: the sets hold
    /// remote pods too).
    pub fn compile(world: &World, pods: &[Pod]) -> Program {
        let pods: Vec<&Pod> = pods.iter().collect();
        Program::compile_for(world, &pods, |_| true)
    }

    /// [`Program::compile`] with endpoints (what isolates a pod) only for the pods `local`
    /// accepts: a node writes chains for its own pods only, while its sets hold every pod.
    /// [`Program::allows`] knows only those pods as endpoints.
    pub fn compile_for(world: &World, pods: &[&Pod], local: impl Fn(&Pod) -> bool) -> Program {
        let mut prog = Program::default();
        let mut selectors: BTreeMap<SelectorKey, (Namespaces, Selector, String)> = BTreeMap::new();
        let mut named: BTreeSet<NamedKey> = BTreeSet::new();
        let mut policies: Vec<&Policy> = world.policies.iter().collect();
        policies.sort_by_key(|p| p.id());
        for p in &policies {
            for (rules, out) in [
                (&p.ingress, &mut prog.ingress),
                (&p.egress, &mut prog.egress),
            ] {
                let Some(rules) = rules else { continue };
                let compiled = rules
                    .iter()
                    .map(|r| CompiledRule {
                        peers: r
                            .peers
                            .iter()
                            .map(|peer| match peer {
                                Peer::Block { cidr, except } => PeerMatch::Block {
                                    cidr: *cidr,
                                    except: except.clone(),
                                },
                                Peer::Pods { namespaces, pods } => {
                                    let key = SelectorKey {
                                        namespace: match namespaces {
                                            Namespaces::Own => Some(p.namespace.clone()),
                                            Namespaces::Matching(_) => None,
                                        },
                                        ns_selector: match namespaces {
                                            Namespaces::Own => None,
                                            Namespaces::Matching(s) => Some(text(s)),
                                        },
                                        pods: text(pods),
                                    };
                                    selectors.insert(
                                        key.clone(),
                                        (namespaces.clone(), pods.clone(), p.namespace.clone()),
                                    );
                                    PeerMatch::Set(key)
                                }
                            })
                            .collect(),
                        ports: r
                            .ports
                            .iter()
                            .map(|port| match port {
                                Port::Any(proto) => PortMatch::Protocol(*proto),
                                Port::Range { protocol, from, to } => PortMatch::Range {
                                    protocol: *protocol,
                                    from: *from,
                                    to: *to,
                                },
                                Port::Named { protocol, name } => {
                                    let k = NamedKey {
                                        protocol: *protocol,
                                        name: name.clone(),
                                    };
                                    named.insert(k.clone());
                                    PortMatch::Named(k)
                                }
                            })
                            .collect(),
                    })
                    .collect();
                out.insert(p.id(), compiled);
            }
        }
        // The workloads by namespace: a selector looks only at the namespaces it can pick,
        // a policy only at its own (cost follows what matches, not policies × pods).
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, pod) in pods.iter().enumerate().filter(|(_, p)| !p.host_network) {
            by_ns.entry(&*pod.namespace).or_default().push(i);
        }
        let in_ns = |ns: &str| by_ns.get(ns).into_iter().flatten().map(|i| pods[*i]);
        for (key, (namespaces, sel, own)) in &selectors {
            let members = match namespaces {
                Namespaces::Own => in_ns(own)
                    .filter(|pod| sel.matches(&pod.labels))
                    .flat_map(|pod| pod.ips.iter().copied())
                    .collect(),
                Namespaces::Matching(nsel) => by_ns
                    .keys()
                    .filter(|ns| {
                        world
                            .namespaces
                            .get(**ns)
                            .is_some_and(|n| nsel.matches(&n.labels))
                    })
                    .flat_map(|ns| in_ns(ns))
                    .filter(|pod| sel.matches(&pod.labels))
                    .flat_map(|pod| pod.ips.iter().copied())
                    .collect(),
            };
            prog.selector_sets.insert(key.clone(), members);
        }
        for k in named {
            let members = pods
                .iter()
                .filter(|pod| !pod.host_network)
                .flat_map(|pod| {
                    pod.ports
                        .iter()
                        .filter(|n| *n.name == *k.name && n.protocol == k.protocol)
                        .flat_map(|n| pod.ips.iter().map(move |ip| (*ip, n.port)))
                })
                .collect();
            prog.named_sets.insert(k, members);
        }
        // Per local pod (by index), the policies isolating it, in the policies' order. Only
        // the local ones get an entry: at 150,000 pods a slot for each is 7 MiB.
        let mut eps: BTreeMap<usize, Endpoint> = pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| !pod.host_network && local(pod))
            .map(|(i, _)| (i, Endpoint::default()))
            .collect();
        for p in &policies {
            let id = p.id();
            for i in by_ns.get(p.namespace.as_str()).into_iter().flatten() {
                let Some(e) = eps.get_mut(i) else { continue };
                if !p.selects(pods[*i]) {
                    continue;
                }
                if p.ingress.is_some() {
                    e.ingress.push(id.clone());
                }
                if p.egress.is_some() {
                    e.egress.push(id.clone());
                }
            }
        }
        for (i, e) in eps {
            let pod = pods[i];
            for ip in &pod.ips {
                prog.endpoints.insert(*ip, e.clone());
            }
            prog.by_pod
                .insert(format!("{}/{}", pod.namespace, pod.name), e);
        }
        prog
    }

    /// What the dataplane does with a new connection from `from` to `to`'s `port`:
    /// `from`'s egress policies, then `to`'s ingress policies (a node's own traffic into its
    /// pods always passes).
    pub fn allows(
        &self,
        from: IpAddr,
        to: IpAddr,
        protocol: Protocol,
        port: u16,
        from_own_node: bool,
    ) -> bool {
        let pass = |ids: &[String], rules: &BTreeMap<String, Vec<CompiledRule>>, peer: IpAddr| {
            ids.is_empty()
                || ids.iter().any(|id| {
                    rules.get(id).into_iter().flatten().any(|r| {
                        (r.peers.is_empty() || r.peers.iter().any(|m| self.peer_in(m, peer)))
                            && (r.ports.is_empty()
                                || r.ports.iter().any(|m| self.port_in(m, to, protocol, port)))
                    })
                })
        };
        let egress_ok = match self.endpoints.get(&from) {
            Some(e) => pass(&e.egress, &self.egress, to),
            None => true,
        };
        let ingress_ok = match self.endpoints.get(&to) {
            Some(_) if from_own_node => true,
            Some(e) => pass(&e.ingress, &self.ingress, from),
            None => true,
        };
        egress_ok && ingress_ok
    }

    fn peer_in(&self, m: &PeerMatch, ip: IpAddr) -> bool {
        match m {
            PeerMatch::Set(k) => self.selector_sets.get(k).is_some_and(|s| s.contains(&ip)),
            PeerMatch::Block { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
        }
    }

    fn port_in(&self, m: &PortMatch, to: IpAddr, protocol: Protocol, port: u16) -> bool {
        match m {
            PortMatch::Protocol(p) => *p == protocol,
            PortMatch::Range {
                protocol: p,
                from,
                to: end,
            } => *p == protocol && (*from..=*end).contains(&port),
            PortMatch::Named(k) => {
                k.protocol == protocol
                    && self
                        .named_sets
                        .get(k)
                        .is_some_and(|s| s.contains(&(to, port)))
            }
        }
    }
}
