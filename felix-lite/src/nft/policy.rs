//! NetworkPolicy in nftables: the compiled policies ([`brindle_policy::compile::Program`]) in
//! Calico's nftables shape, in `table ip brindle` (and over the pods' IPv6 addresses in
//! `table ip6 brindle`, [`PolicyContext::family`]), with the iptables renderer's semantics
//! rule for rule ([`crate::policy`] explains them).
//!
//! - Dispatch by interface-keyed verdict maps: `from-wl-dispatch` looks the pod interface
//!   up in `@from-workload` (a pod's egress), `to-wl-dispatch` in `@to-workload` (its
//!   ingress), each leading by `goto` to `fw-<veth>` / `tw-<veth>`; an interface in neither
//!   (`brl*`, unknown or not programmed yet) reaches the dispatch chain's `drop`, so a pod
//!   whose chains are not there yet passes nothing. `filter-forward` jumps to both after
//!   the node guard, `filter-input` to the first (a pod to its own node: its egress). What
//!   an endpoint chain returns goes on in the base chain, as iptables' `-g` does.
//! - `fw-`/`tw-<veth>`: replies pass, INVALID drops, then the pod's group chain; isolated
//!   and not allowed: dropped (first, with `--log-denied`, `log group` at most 10/s);
//!   not isolated: the accept mark.
//! - `gi-`/`go-<hash>` per list of policies isolating some pod (shared), `pi-`/`po-<hash>`
//!   per policy: each rule's peer × port combination sets the accept mark (with a counter:
//!   the allowed-connection metrics), and the rule returns once it is set.
//! - Sets instead of ipsets: `s-<hash>` (`ipv4_addr`) per selector, `n-<hash>` (`ipv4_addr .
//!   inet_proto . inet_service`) per named port; a pod added or gone changes elements only.
//!   An ipBlock is written in the rule (`ip saddr 10.0.0.0/16 ip saddr != 10.0.1.0/24`): no set.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use brindle_policy::compile::{CompiledRule, NamedKey, PeerMatch, PortMatch, Program, SelectorKey};

use super::Rule;
use super::{rule, SetType, Table};
use crate::family::Family;
use crate::policy::{Account, LocalEndpoint, PolicyContext};
use crate::proxy::rules::hash16;

pub const FROM_WL: &str = "from-workload";
pub const TO_WL: &str = "to-workload";
pub const FROM_DISPATCH: &str = "from-wl-dispatch";
pub const TO_DISPATCH: &str = "to-wl-dispatch";

/// What NetworkPolicy adds to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyNft {
    pub chains: Vec<(String, Vec<Rule>)>,
    /// Selector and named-port sets with their elements.
    pub sets: Vec<(String, SetType, BTreeSet<String>)>,
    /// Elements of the dispatch maps (`veth : goto fw-veth`).
    pub from_wl: BTreeSet<String>,
    pub to_wl: BTreeSet<String>,
    /// The rules whose counters count what ([`crate::policy::PolicyRules::count`]).
    pub accounting: Vec<(u64, Account)>,
    /// The rules in `filter-forward` and `filter-input` that lead to the dispatch maps.
    pub forward: Vec<Rule>,
    pub input: Vec<Rule>,
}

impl PolicyNft {
    /// Packet counts (by rule hash, as read: [`super::writer::Known::counters`]) summed per
    /// account.
    pub fn count(&self, counters: &HashMap<u64, u64>) -> BTreeMap<Account, u64> {
        let mut out = BTreeMap::new();
        for (h, a) in &self.accounting {
            *out.entry(a.clone()).or_insert(0) += counters.get(h).copied().unwrap_or(0);
        }
        out
    }
}

fn mark(ctx: &PolicyContext) -> u32 {
    1u32 << ctx.accept_bit
}

pub fn policy_chain(ingress: bool, id: &str) -> String {
    format!("p{}-{}", if ingress { "i" } else { "o" }, hash16(id))
}

fn group_chain_name(ingress: bool, policies: &[String]) -> String {
    format!(
        "g{}-{}",
        if ingress { "i" } else { "o" },
        hash16(&policies.join("\n"))
    )
}

pub fn selector_set(key: &SelectorKey) -> String {
    format!("s-{}", hash16(&format!("{key:?}")))
}

pub fn named_set(key: &NamedKey) -> String {
    format!("n-{}", hash16(&format!("{key:?}")))
}

/// Renders the program, keeping each policy's chain from one call to the next (a pod added
/// or relabelled changes set elements and endpoint chains, not the policies' rules).
#[derive(Default)]
pub struct Renderer {
    ctx: Option<PolicyContext>,
    policies: HashMap<(bool, String), (Vec<CompiledRule>, Vec<Rule>)>,
}

impl Renderer {
    pub fn render(
        &mut self,
        prog: &Program,
        local: &[LocalEndpoint],
        ctx: &PolicyContext,
    ) -> PolicyNft {
        if self.ctx.as_ref() != Some(ctx) {
            self.policies.clear();
            self.ctx = Some(ctx.clone());
        }
        let mut out = PolicyNft::default();
        let mut kept = HashMap::new();
        for (ingress, policies) in [(true, &prog.ingress), (false, &prog.egress)] {
            for (id, rules) in policies {
                let key = (ingress, id.clone());
                let r = match self.policies.remove(&key) {
                    Some(r) if &r.0 == rules => r,
                    _ => {
                        let name = policy_chain(ingress, id);
                        let lines = policy_rules(&name, id, rules, ingress, ctx);
                        (rules.clone(), lines)
                    }
                };
                let name = policy_chain(ingress, id);
                for x in &r.1 {
                    if x.text.contains("meta mark set") {
                        let policy = id.clone();
                        out.accounting
                            .push((x.hash, Account::Allowed { policy, ingress }));
                    }
                }
                out.chains.push((name, r.1.clone()));
                kept.insert(key, r);
            }
        }
        self.policies = kept;
        let family = ctx.family;
        for (key, members) in &prog.selector_sets {
            let elements = members
                .iter()
                .filter(|ip| family.has(*ip))
                .map(|ip| ip.to_string())
                .collect();
            out.sets
                .push((selector_set(key), address_set(family), elements));
        }
        for (key, members) in &prog.named_sets {
            let elements = members
                .iter()
                .filter(|(ip, _)| family.has(*ip))
                .map(|(ip, port)| format!("{ip} . {} . {port}", key.protocol.lower()))
                .collect();
            let ty = SetType::verdicts(match family {
                Family::V4 => "ipv4_addr . inet_proto . inet_service",
                Family::V6 => "ipv6_addr . inet_proto . inet_service",
            });
            let ty = SetType {
                verdict_map: false,
                ..ty
            };
            out.sets.push((named_set(key), ty, elements));
        }
        endpoints(prog, local, ctx, &mut out);
        out
    }
}

fn address_set(family: Family) -> SetType {
    SetType {
        key: match family {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        },
        verdict_map: false,
        interval: false,
        timeout: None,
    }
}

/// A policy's chain: every peer × port combination of each rule sets the accept mark, then
/// the rule returns if it is set. A rule whose every peer is of the other family matches
/// nothing here (skipped, never read as "any peer").
fn policy_rules(
    chain: &str,
    id: &str,
    rules: &[CompiledRule],
    ingress: bool,
    ctx: &PolicyContext,
) -> Vec<Rule> {
    let m = mark(ctx);
    let dir = if ingress { "saddr" } else { "daddr" };
    let (family, f) = (ctx.family, ctx.family.nft());
    let mut out = vec![];
    for (i, r) in rules.iter().enumerate() {
        let comment = format!("{id} rule {i}");
        let peers: Vec<String> = if r.peers.is_empty() {
            vec![String::new()]
        } else {
            r.peers
                .iter()
                .filter_map(|p| match p {
                    PeerMatch::Set(key) => Some(format!("{f} {dir} @{}", selector_set(key))),
                    PeerMatch::Block { cidr, .. } if !family.has_net(cidr) => None,
                    PeerMatch::Block { cidr, except } => {
                        let mut m = format!("{f} {dir} {cidr}");
                        for e in except.iter().filter(|e| family.has_net(e)) {
                            m.push_str(&format!(" {f} {dir} != {e}"));
                        }
                        Some(m)
                    }
                })
                .collect()
        };
        if peers.is_empty() {
            continue;
        }
        let ports: Vec<String> = if r.ports.is_empty() {
            vec![String::new()]
        } else {
            r.ports
                .iter()
                .map(|p| match p {
                    PortMatch::Protocol(pr) => format!("meta l4proto {}", pr.lower()),
                    PortMatch::Range { protocol, from, to } if from == to => {
                        format!("{} dport {from}", protocol.lower())
                    }
                    PortMatch::Range { protocol, from, to } => {
                        format!("{} dport {from}-{to}", protocol.lower())
                    }
                    PortMatch::Named(k) => format!(
                        "meta l4proto {} {f} daddr . meta l4proto . th dport @{}",
                        k.protocol.lower(),
                        named_set(k)
                    ),
                })
                .collect()
        };
        for peer in &peers {
            for port in &ports {
                let m_ = [peer.as_str(), port.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                let set = format!("counter meta mark set meta mark | {m:#x}");
                let body = if m_.is_empty() {
                    set
                } else {
                    format!("{m_} {set}")
                };
                out.push(rule(chain, &comment, &body));
            }
        }
        out.push(rule(
            chain,
            &comment,
            &format!("meta mark & {m:#x} == {m:#x} return"),
        ));
    }
    out
}

/// The endpoint chains, group chains, dispatch elements and base-chain rules.
fn endpoints(prog: &Program, local: &[LocalEndpoint], ctx: &PolicyContext, out: &mut PolicyNft) {
    let m = mark(ctx);
    let none = brindle_policy::compile::Endpoint::default();
    let mut seen = BTreeSet::new();
    let mut groups: BTreeMap<(bool, Vec<String>), String> = BTreeMap::new();
    for e in local {
        if !seen.insert(&e.veth) {
            continue;
        }
        let ep = match &e.pod {
            Some(k) => match prog.by_pod.get(k) {
                Some(ep) => ep,
                None => continue,
            },
            None => &none,
        };
        for (ingress, ids, prefix) in [(false, &ep.egress, "fw-"), (true, &ep.ingress, "tw-")] {
            let name = format!("{prefix}{}", e.veth);
            let map = if ingress {
                &mut out.to_wl
            } else {
                &mut out.from_wl
            };
            // Our veth names are nft identifiers (prefix + hex), written and read unquoted.
            map.insert(format!("{} : goto {name}", e.veth));
            let mut rules = vec![
                rule(&name, "", "ct state established,related accept"),
                rule(&name, "", "ct state invalid drop"),
                rule(&name, "", &format!("meta mark set meta mark & {:#x}", !m)),
            ];
            if ids.is_empty() {
                rules.push(rule(
                    &name,
                    "not isolated",
                    &format!("meta mark set meta mark | {m:#x}"),
                ));
            } else {
                let g = groups
                    .entry((ingress, ids.clone()))
                    .or_insert_with(|| group_chain_name(ingress, ids))
                    .clone();
                rules.push(rule(&name, "", &format!("jump {g}")));
                rules.push(rule(
                    &name,
                    "",
                    &format!("meta mark & {m:#x} == {m:#x} return"),
                ));
                if let Some(group) = ctx.log_denied {
                    rules.push(rule(
                        &name,
                        "",
                        &format!(
                            "limit rate 10/second burst 20 packets log prefix \"{}\" group {group}",
                            crate::nflog::prefix(ingress, &e.veth)
                        ),
                    ));
                }
                let drop = rule(
                    &name,
                    "brindle: isolated, and no policy allowed it",
                    "counter drop",
                );
                let veth = e.veth.clone();
                out.accounting
                    .push((drop.hash, Account::Denied { veth, ingress }));
                rules.push(drop);
            }
            out.chains.push((name, rules));
        }
    }
    for ((ingress, ids), name) in groups {
        let mut rules = vec![];
        for id in &ids {
            rules.push(rule(
                &name,
                id,
                &format!("meta mark & {m:#x} == 0 jump {}", policy_chain(ingress, id)),
            ));
            rules.push(rule(
                &name,
                "",
                &format!("meta mark & {m:#x} == {m:#x} return"),
            ));
        }
        out.chains.push((name, rules));
    }
    let any = format!("\"{}*\"", ctx.workload_prefix);
    let unknown = "brindle: a pod interface with no chains yet (or unknown) passes nothing";
    out.chains.push((
        FROM_DISPATCH.into(),
        vec![
            rule(FROM_DISPATCH, "", &format!("iifname vmap @{FROM_WL}")),
            rule(FROM_DISPATCH, unknown, "counter drop"),
        ],
    ));
    out.chains.push((
        TO_DISPATCH.into(),
        vec![
            rule(TO_DISPATCH, "", &format!("oifname vmap @{TO_WL}")),
            rule(TO_DISPATCH, unknown, "counter drop"),
        ],
    ));
    out.forward = vec![
        rule(
            "filter-forward",
            "brindle policy: from pods",
            &format!("iifname {any} jump {FROM_DISPATCH}"),
        ),
        rule(
            "filter-forward",
            "brindle policy: to pods",
            &format!("oifname {any} jump {TO_DISPATCH}"),
        ),
    ];
    out.input = vec![];
    if ctx.family == Family::V6 {
        // Neighbour discovery from pods to their node, before any policy (as Felix).
        let types: Vec<String> = crate::policy::ICMPV6_ALWAYS
            .iter()
            .map(ToString::to_string)
            .collect();
        out.input.push(rule(
            "filter-input",
            "brindle policy: neighbour discovery from pods",
            &format!(
                "iifname {any} icmpv6 type {{ {} }} accept",
                types.join(", ")
            ),
        ));
    }
    out.input.push(rule(
        "filter-input",
        "brindle policy: from pods to this node",
        &format!("iifname {any} jump {FROM_DISPATCH}"),
    ));
}

/// `table` (the Services' and the node guard's) with NetworkPolicy in it: its chains, sets
/// and maps, and its dispatch after the node guard's rules (which only drop) in
/// `filter-forward` and `filter-input`, before the no-endpoint checks.
pub fn merge(table: &mut Table, p: &PolicyNft) {
    for (name, rules) in &p.chains {
        table.chain(name).rules = rules.clone();
    }
    for (name, ty, elements) in &p.sets {
        table.set(name, ty.clone()).elements = elements.clone();
    }
    for (name, elements) in [(FROM_WL, &p.from_wl), (TO_WL, &p.to_wl)] {
        table.set(name, SetType::verdicts("ifname")).elements = elements.clone();
    }
    for (chain, rules) in [("filter-forward", &p.forward), ("filter-input", &p.input)] {
        let c = table.chain(chain);
        // After the last rule that leads to the host guard.
        let at = c
            .rules
            .iter()
            .rposition(|r| r.text.contains("jump host-guard"))
            .map_or(0, |i| i + 1);
        for (i, r) in rules.iter().enumerate() {
            c.rules.insert(at + i, r.clone());
        }
    }
}

/// The table when only NetworkPolicy is programmed (`--services=false`): the two filter
/// base chains it hooks into.
pub fn base_table() -> Table {
    let mut t = Table::default();
    for (name, h) in super::services::HOOKS {
        if name == "filter-forward" || name == "filter-input" {
            t.chain(name).hook = Some(h);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::pod;
    use brindle_policy::model::{
        Namespace, Namespaces, Peer, Policy, Port, Protocol, Rule as PRule, Selector,
    };
    use brindle_policy::World;

    fn texts(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| r.text.split(" comment ").next().unwrap().to_string())
            .collect()
    }

    fn sel(k: &str, v: &str) -> Selector {
        let mut s = Selector::default();
        s.labels.insert(k.into(), v.into());
        s
    }

    /// x/a admits x/b on the named port and 10.9.0.0/16 except 10.9.1.0/24 on TCP 80.
    fn program() -> Program {
        let mut w = World::default();
        w.namespaces.insert("x".into(), Namespace::new("x", &[]));
        w.policies.push(Policy {
            namespace: "x".into(),
            name: "p".into(),
            pods: sel("pod", "a"),
            ingress: Some(vec![
                PRule {
                    peers: vec![Peer::Pods {
                        namespaces: Namespaces::Own,
                        pods: sel("pod", "b"),
                    }],
                    ports: vec![Port::Named {
                        protocol: Protocol::Tcp,
                        name: "http".into(),
                    }],
                },
                PRule {
                    peers: vec![Peer::Block {
                        cidr: "10.9.0.0/16".parse().unwrap(),
                        except: vec!["10.9.1.0/24".parse().unwrap()],
                    }],
                    ports: vec![Port::Range {
                        protocol: Protocol::Tcp,
                        from: 80,
                        to: 80,
                    }],
                },
            ]),
            egress: None,
        });
        Program::compile(&w, &[pod("a", "10.244.0.1"), pod("b", "10.244.0.2")])
    }

    fn local() -> Vec<LocalEndpoint> {
        ["a", "b"]
            .iter()
            .map(|p| LocalEndpoint {
                veth: format!("brl{p}"),
                pod: Some(format!("x/{p}")),
            })
            .collect()
    }

    #[test]
    fn chains_sets_and_dispatch_follow_the_iptables_semantics() {
        let ctx = PolicyContext {
            log_denied: Some(30),
            ..Default::default()
        };
        let out = Renderer::default().render(&program(), &local(), &ctx);
        let chain = |n: &str| {
            texts(
                &out.chains
                    .iter()
                    .find(|c| c.0 == n)
                    .unwrap_or_else(|| panic!("{n}: {:?}", out.chains))
                    .1,
            )
        };
        let pi = chain(&policy_chain(true, "x/p"));
        assert_eq!(pi.len(), 4, "{pi:?}");
        assert!(
            pi[0].starts_with("ip saddr @s-")
                && pi[0].contains("meta l4proto tcp ip daddr . meta l4proto . th dport @n-")
                && pi[0].ends_with("counter meta mark set meta mark | 0x10000")
        );
        assert_eq!(pi[1], "meta mark & 0x10000 == 0x10000 return");
        assert_eq!(
            pi[2],
            "ip saddr 10.9.0.0/16 ip saddr != 10.9.1.0/24 tcp dport 80 counter meta mark set meta mark | 0x10000"
        );
        // x/a is isolated for ingress: group, return, log, drop; open for egress.
        let tw = chain("tw-brla");
        assert_eq!(tw[0], "ct state established,related accept");
        assert_eq!(tw[2], "meta mark set meta mark & 0xfffeffff");
        assert!(tw[3].starts_with("jump gi-"));
        assert!(
            tw[5].starts_with(
                "limit rate 10/second burst 20 packets log prefix \"brl:D:I:brla\" group 30"
            ),
            "{tw:?}"
        );
        assert_eq!(tw[6], "counter drop");
        assert_eq!(chain("fw-brla")[3], "meta mark set meta mark | 0x10000");
        assert!(out.to_wl.contains("brla : goto tw-brla"));
        assert!(out.from_wl.contains("brlb : goto fw-brlb"));
        assert_eq!(
            chain(FROM_DISPATCH),
            ["iifname vmap @from-workload", "counter drop"]
        );
        // Sets: x/b's address for the selector, x/a's and x/b's named port.
        let named = out.sets.iter().find(|s| s.0.starts_with("n-")).unwrap();
        assert!(named.2.contains("10.244.0.1 . tcp . 8080"), "{named:?}");
        let sel = out.sets.iter().find(|s| s.0.starts_with("s-")).unwrap();
        assert_eq!(sel.2.iter().collect::<Vec<_>>(), ["10.244.0.2"]);
        // Counters: the mark rules count what the policy allowed, the drop what it denied.
        assert_eq!(
            out.accounting
                .iter()
                .filter(|(_, a)| matches!(a, Account::Allowed { .. }))
                .count(),
            2
        );
        assert!(out
            .accounting
            .iter()
            .any(|(_, a)| matches!(a, Account::Denied { veth, ingress: true } if veth == "brla")));
    }

    #[test]
    fn merge_puts_the_dispatch_after_the_guard_and_before_the_rest() {
        let out = Renderer::default().render(&program(), &local(), &PolicyContext::default());
        let mut t = base_table();
        t.push(
            "filter-forward",
            "",
            "ip daddr @all-hosts-net jump host-guard",
        );
        t.push(
            "filter-forward",
            "",
            "ct state new jump service-endpoints-check",
        );
        merge(&mut t, &out);
        let f = texts(&t.chains["filter-forward"].rules);
        assert_eq!(
            f,
            [
                "ip daddr @all-hosts-net jump host-guard",
                "iifname \"brl*\" jump from-wl-dispatch",
                "oifname \"brl*\" jump to-wl-dispatch",
                "ct state new jump service-endpoints-check",
            ]
        );
        assert!(t.sets["from-workload"].ty.verdict_map);
    }
}
