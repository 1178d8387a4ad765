//! NetworkPolicy in iptables (issue 29): the compiled policies
//! ([`brindle_policy::compile::Program`]) as filter chains and ipsets, Calico's shape with
//! our names. Not wired into the agent yet: this is the rendering, checked on its own.
//!
//! - `BRL-FROM-WL-DISPATCH` / `BRL-TO-WL-DISPATCH`: `-i`/`-o <veth> -g BRL-FW-/BRL-TW-<veth>`
//!   per local pod, and DROP for any other pod interface, so a pod whose chains do not exist
//!   yet sends and receives nothing (the first-instant rule).
//! - `BRL-FW-<veth>` (from the pod: egress) / `BRL-TW-<veth>` (to it: ingress): replies of
//!   allowed connections pass, INVALID drops, then each policy isolating the pod in that
//!   direction, in order, until one sets the accept mark; isolated and not allowed: DROP;
//!   not isolated: the accept mark.
//! - `BRL-PI-<hash>` / `BRL-PO-<hash>` per policy: each rule's peer × port combinations set
//!   the accept mark, and the rule returns once it is set.
//! - ipsets: `brl40s-<hash>` (hash:net) per selector set, `brl40b-<hash>` (hash:net, the
//!   `except`s as `nomatch` entries) per ipBlock, `brl40n-<hash>` (hash:ip,port) per named
//!   port. IPv4 only, as the rest of felix-lite.

use std::net::IpAddr;

use brindle_policy::compile::{CompiledRule, PeerMatch, PortMatch, Program};

use crate::proxy::rules::{hash16, Chain, Jump, Rule, TableRules};

pub const FROM_WL: &str = "BRL-FROM-WL-DISPATCH";
pub const TO_WL: &str = "BRL-TO-WL-DISPATCH";
/// The accept mark (Calico's 0x10000), apart from kube-proxy's masquerade bit (0x4000).
pub const ACCEPT_MARK: u32 = 0x10000;

/// A pod on this node: its host interface and its IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub veth: String,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// `hash:net`; members `a.b.c.d/n`, or `a.b.c.d/n nomatch`.
    Net,
    /// `hash:ip,port`; members `a.b.c.d,tcp:80`.
    IpPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub kind: SetKind,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRules {
    pub filter: TableRules,
    pub sets: Vec<SetSpec>,
}

fn mark() -> String {
    format!("{ACCEPT_MARK:#x}/{ACCEPT_MARK:#x}")
}

/// `BRL-PI-…` (ingress) or `BRL-PO-…` (egress) for a policy id.
pub fn policy_chain(ingress: bool, id: &str) -> String {
    format!("BRL-P{}-{}", if ingress { "I" } else { "O" }, hash16(id))
}

pub fn render(prog: &Program, local: &[LocalEndpoint]) -> PolicyRules {
    let mut out = PolicyRules::default();
    let mut chains = vec![];
    for (ingress, policies) in [(true, &prog.ingress), (false, &prog.egress)] {
        for (id, rules) in policies {
            let name = policy_chain(ingress, id);
            let mut lines = vec![];
            for (i, r) in rules.iter().enumerate() {
                rule_lines(&name, id, i, r, ingress, &mut lines, &mut out.sets);
            }
            chains.push(Chain { name, rules: lines });
        }
    }
    for (key, members) in &prog.selector_sets {
        let name = format!("brl40s-{}", hash16(&format!("{key:?}")));
        out.sets.push(SetSpec {
            name,
            kind: SetKind::Net,
            members: members
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|ip| format!("{ip}/32"))
                .collect(),
        });
    }
    for (key, members) in &prog.named_sets {
        out.sets.push(SetSpec {
            name: named_set(key),
            kind: SetKind::IpPort,
            members: members
                .iter()
                .filter(|(ip, _)| ip.is_ipv4())
                .map(|(ip, port)| format!("{ip},{}:{port}", key.protocol.lower()))
                .collect(),
        });
    }
    out.sets.sort_by(|a, b| a.name.cmp(&b.name));
    out.sets.dedup_by(|a, b| a.name == b.name);
    let mut from = vec![];
    let mut to = vec![];
    for e in local.iter().filter(|e| e.ip.is_ipv4()) {
        let ep = prog.endpoints.get(&e.ip).cloned().unwrap_or_default();
        for (ingress, ids, dispatch, prefix, dir) in [
            (false, &ep.egress, &mut from, "BRL-FW-", "-i"),
            (true, &ep.ingress, &mut to, "BRL-TW-", "-o"),
        ] {
            let name = format!("{prefix}{}", e.veth);
            dispatch.push(Rule::new(
                if ingress { TO_WL } else { FROM_WL },
                "",
                &format!("{dir} {} -g {name}", e.veth),
            ));
            chains.push(endpoint_chain(&name, ingress, ids));
        }
    }
    for (name, list, dir) in [(FROM_WL, &mut from, "-i"), (TO_WL, &mut to, "-o")] {
        list.push(Rule::new(
            name,
            "brindle: a pod interface with no chains yet (or unknown) passes nothing",
            &format!("{dir} brl+ -j DROP"),
        ));
        chains.push(Chain {
            name: name.into(),
            rules: std::mem::take(list),
        });
    }
    out.filter.chains = chains;
    // Forwarded traffic from a pod is judged by its egress chain, to a pod by its ingress
    // chain (which clears the mark the egress chain set and sets its own), and what both
    // allowed is accepted. (Traffic between a pod and its own node: not yet.)
    let jump = |comment: &str, body: String| Jump {
        chain: "FORWARD",
        rule: Rule::new("FORWARD", comment, &body),
    };
    out.filter.jumps = vec![
        jump("brindle policy: from pods", format!("-i brl+ -j {FROM_WL}")),
        jump("brindle policy: to pods", format!("-o brl+ -j {TO_WL}")),
        jump(
            "brindle policy: allowed",
            format!("-m mark --mark {} -j ACCEPT", mark()),
        ),
    ];
    out
}

fn named_set(key: &brindle_policy::compile::NamedKey) -> String {
    format!("brl40n-{}", hash16(&format!("{key:?}")))
}

/// A rule's lines: every peer × port combination sets the accept mark; then return if set.
fn rule_lines(
    chain: &str,
    id: &str,
    i: usize,
    r: &CompiledRule,
    ingress: bool,
    lines: &mut Vec<Rule>,
    sets: &mut Vec<SetSpec>,
) {
    let (peer_dir, comment) = (
        if ingress { "src" } else { "dst" },
        format!("{id} rule {i}"),
    );
    let peers: Vec<String> = if r.peers.is_empty() {
        vec![String::new()]
    } else {
        r.peers
            .iter()
            .map(|p| match p {
                PeerMatch::Set(key) => format!(
                    "-m set --match-set brl40s-{} {peer_dir}",
                    hash16(&format!("{key:?}"))
                ),
                PeerMatch::Block { cidr, except } => {
                    let name = format!("brl40b-{}", hash16(&format!("{cidr} {except:?}")));
                    let mut members = vec![cidr.to_string()];
                    members.extend(except.iter().map(|e| format!("{e} nomatch")));
                    sets.push(SetSpec {
                        name: name.clone(),
                        kind: SetKind::Net,
                        members,
                    });
                    format!("-m set --match-set {name} {peer_dir}")
                }
            })
            .collect()
    };
    let ports: Vec<String> = if r.ports.is_empty() {
        vec![String::new()]
    } else {
        r.ports
            .iter()
            .map(|p| match p {
                PortMatch::Protocol(pr) => format!("-p {}", pr.lower()),
                PortMatch::Range { protocol, from, to } if from == to => {
                    format!("-p {0} -m {0} --dport {from}", protocol.lower())
                }
                PortMatch::Range { protocol, from, to } => {
                    format!("-p {0} -m {0} --dport {from}:{to}", protocol.lower())
                }
                PortMatch::Named(k) => format!(
                    "-p {} -m set --match-set {} dst,dst",
                    k.protocol.lower(),
                    named_set(k)
                ),
            })
            .collect()
    };
    for peer in &peers {
        for port in &ports {
            let m = [peer.as_str(), port.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let body = if m.is_empty() {
                format!("-j MARK --set-xmark {}", mark())
            } else {
                format!("{m} -j MARK --set-xmark {}", mark())
            };
            lines.push(Rule::new(chain, &comment, &body));
        }
    }
    lines.push(Rule::new(
        chain,
        &comment,
        &format!("-m mark --mark {} -j RETURN", mark()),
    ));
}

fn endpoint_chain(name: &str, ingress: bool, policies: &[String]) -> Chain {
    let m = mark();
    let mut rules = vec![
        Rule::new(
            name,
            "",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        Rule::new(name, "", "-m conntrack --ctstate INVALID -j DROP"),
        Rule::new(
            name,
            "",
            &format!("-j MARK --set-xmark 0x0/{ACCEPT_MARK:#x}"),
        ),
    ];
    for id in policies {
        rules.push(Rule::new(
            name,
            id,
            &format!(
                "-m mark --mark 0x0/{ACCEPT_MARK:#x} -j {}",
                policy_chain(ingress, id)
            ),
        ));
        rules.push(Rule::new(
            name,
            "",
            &format!("-m mark --mark {m} -j RETURN"),
        ));
    }
    if policies.is_empty() {
        rules.push(Rule::new(
            name,
            "not isolated",
            &format!("-j MARK --set-xmark {m}"),
        ));
    } else {
        rules.push(Rule::new(
            name,
            "brindle: isolated, and no policy allowed it",
            "-j DROP",
        ));
    }
    Chain {
        name: name.into(),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_policy::model::{
        NamedPort, Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule as PRule,
        Selector,
    };
    use brindle_policy::World;

    fn pod(name: &str, ip: &str) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            host_network: false,
            node: "n1".into(),
        }
    }

    #[test]
    fn chains_sets_and_the_drop_for_interfaces_without_chains() {
        let mut w = World::default();
        w.namespaces.insert("x".into(), Namespace::new("x", &[]));
        let mut b = Selector::default();
        b.labels.insert("pod".into(), "b".into());
        let mut a = Selector::default();
        a.labels.insert("pod".into(), "a".into());
        w.policies.push(Policy {
            namespace: "x".into(),
            name: "web".into(),
            pods: a,
            ingress: Some(vec![PRule {
                peers: vec![
                    Peer::Pods {
                        namespaces: Namespaces::Own,
                        pods: b,
                    },
                    Peer::Block {
                        cidr: "198.51.100.0/24".parse().unwrap(),
                        except: vec!["198.51.100.7/32".parse().unwrap()],
                    },
                ],
                ports: vec![
                    Port::Named {
                        protocol: Protocol::Tcp,
                        name: "http".into(),
                    },
                    Port::Range {
                        protocol: Protocol::Udp,
                        from: 5000,
                        to: 5010,
                    },
                ],
            }]),
            egress: None,
        });
        let pods = vec![pod("a", "10.0.0.1"), pod("b", "10.0.0.2")];
        let prog = Program::compile(&w, &pods);
        let local = vec![
            LocalEndpoint {
                veth: "brl0000000000a".into(),
                ip: "10.0.0.1".parse().unwrap(),
            },
            LocalEndpoint {
                veth: "brl0000000000b".into(),
                ip: "10.0.0.2".parse().unwrap(),
            },
        ];
        let r = render(&prog, &local);
        let chain = |n: &str| {
            r.filter
                .chains
                .iter()
                .find(|c| c.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        let texts = |c: &Chain| {
            c.rules
                .iter()
                .map(|r| r.text.to_string())
                .collect::<Vec<_>>()
        };
        for c in &r.filter.chains {
            assert!(c.name.len() <= 28, "{}", c.name);
        }
        for s in &r.sets {
            assert!(s.name.len() <= 31, "{}", s.name);
        }
        // Dispatch: one goto per pod, then the drop for any other pod interface.
        let to = texts(chain(TO_WL));
        assert!(
            to[0].ends_with("-o brl0000000000a -g BRL-TW-brl0000000000a"),
            "{to:?}"
        );
        assert!(to.last().unwrap().ends_with("-o brl+ -j DROP"), "{to:?}");
        // a is isolated for ingress by x/web: its chain jumps to the policy, then drops.
        let tw = texts(chain("BRL-TW-brl0000000000a"));
        assert!(tw[0].contains("RELATED,ESTABLISHED -j ACCEPT"));
        assert!(
            tw.iter()
                .any(|t| t.ends_with(&format!("-j {}", policy_chain(true, "x/web")))),
            "{tw:?}"
        );
        assert!(tw.last().unwrap().ends_with("-j DROP"), "{tw:?}");
        // b is not isolated: its chain sets the accept mark.
        let tb = texts(chain("BRL-TW-brl0000000000b"));
        assert!(
            tb.last()
                .unwrap()
                .ends_with("-j MARK --set-xmark 0x10000/0x10000"),
            "{tb:?}"
        );
        // The policy: 2 peers × 2 ports, then the return.
        let p = texts(chain(&policy_chain(true, "x/web")));
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p.iter()
                .any(|t| t.contains("-p tcp -m set --match-set brl40n-")
                    && t.contains(" dst,dst -j MARK")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|t| t.contains("-p udp -m udp --dport 5000:5010")),
            "{p:?}"
        );
        // Sets: b's address for the selector, the block with its except as nomatch, the
        // named port as ip,proto:port.
        let set = |prefix: &str| r.sets.iter().find(|s| s.name.starts_with(prefix)).unwrap();
        assert_eq!(set("brl40s-").members, vec!["10.0.0.2/32"]);
        assert_eq!(
            set("brl40b-").members,
            vec!["198.51.100.0/24", "198.51.100.7/32 nomatch"]
        );
        assert_eq!(set("brl40n-").kind, SetKind::IpPort);
        assert_eq!(
            set("brl40n-").members,
            vec!["10.0.0.1,tcp:8080", "10.0.0.2,tcp:8080"]
        );
    }
}
