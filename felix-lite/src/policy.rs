//! NetworkPolicy in iptables (issue 29): the compiled policies
//! ([`brindle_policy::compile::Program`]) as filter chains and ipsets, Calico's shape with
//! our names.
//!
//! - `BRL-FROM-WL-DISPATCH` / `BRL-TO-WL-DISPATCH`: `-i`/`-o <veth> -g BRL-FW-/BRL-TW-<veth>`
//!   per local pod, and DROP for any other pod interface, so a pod whose chains do not exist
//!   yet sends and receives nothing (the first-instant rule).
//! - Where they are reached ([`merge`]): FORWARD (from a pod: its egress; to a pod: its
//!   ingress; what both allow is accepted after the Services' own FORWARD rules) and INPUT
//!   (a pod to its own node: its egress, and then the host's own INPUT rules still apply).
//!   Nothing in OUTPUT: a node always reaches its own pods (kubelet probes).
//! - `BRL-FW-<veth>` (from the pod: egress) / `BRL-TW-<veth>` (to it: ingress): replies of
//!   allowed connections pass, INVALID drops, then the pod's group chain; isolated and not
//!   allowed: DROP (first, with `--log-denied`, NFLOG, rate-limited: [`crate::nflog`]); not
//!   isolated: the accept mark.
//! - `BRL-GI-<hash>` / `BRL-GO-<hash>` per list of policies isolating some pod in that
//!   direction (shared by every such pod): each policy in order until one sets the mark.
//! - `BRL-PI-<hash>` / `BRL-PO-<hash>` per policy: each rule's peer × port combinations set
//!   the accept mark, and the rule returns once it is set.
//! - ipsets: `brl40s-<hash>` (hash:net) per selector set, `brl40b-<hash>` (hash:net, the
//!   `except`s as `nomatch` entries) per ipBlock, `brl40n-<hash>` (hash:ip,port) per named
//!   port (`brl60…` in the IPv6 ruleset).
//! - One renderer for both families ([`PolicyContext::family`]): the IPv6 ruleset (for
//!   `ip6tables-restore`) has the same chains over the pods' IPv6 addresses, and lets
//!   neighbour discovery from pods to their node through before any policy (as Felix: an
//!   egress default-deny must not make a pod unreachable at layer 2).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use brindle_policy::compile::{CompiledRule, PeerMatch, PortMatch, Program};
use brindle_policy::model::Protocol;
use ipnetwork::IpNetwork;
use std::net::IpAddr;

use crate::family::Family;
pub use crate::members::Members;
use crate::proxy::rules::{
    hash16, Chain, Jump, Rule, Ruleset, TableRules, FORWARD as FORWARD_CHAIN,
};

pub const FROM_WL: &str = "BRL-FROM-WL-DISPATCH";
pub const TO_WL: &str = "BRL-TO-WL-DISPATCH";
/// The accept mark's default bit (Calico's 0x10000), apart from kube-proxy's masquerade bit
/// (14, 0x4000).
pub const DEFAULT_ACCEPT_BIT: u8 = 16;

/// What the rendering needs from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyContext {
    /// The pods' host interfaces' prefix (`brl`).
    pub workload_prefix: String,
    /// The mark bit that says "policy allowed this packet"; never the masquerade bit.
    pub accept_bit: u8,
    /// Send what an isolated pod's chain drops to this NFLOG group first (`--log-denied`),
    /// at most [`LOG_DENIED_LIMIT`] per pod and direction.
    pub log_denied: Option<u16>,
    /// The family rendered: only its addresses are in the sets and rules.
    pub family: Family,
}

/// The ICMPv6 types a pod may always send to its node, whatever its policy: multicast
/// listener query/report/done (130–132), router solicitation (133), neighbour solicitation
/// and advertisement (135, 136). Felix's list; router advertisements and redirects (134,
/// 137) are not a pod's to send.
pub const ICMPV6_ALWAYS: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// The most denied packets an isolated pod's chain sends to NFLOG (the rest only drop): a
/// pod flooding what it may not send costs the agent a bounded amount of work.
pub const LOG_DENIED_LIMIT: &str = "-m limit --limit 10/sec --limit-burst 20";

impl Default for PolicyContext {
    fn default() -> Self {
        PolicyContext {
            workload_prefix: "brl".into(),
            accept_bit: DEFAULT_ACCEPT_BIT,
            log_denied: None,
            family: Family::V4,
        }
    }
}

impl PolicyContext {
    fn mark(&self) -> String {
        let m = 1u32 << self.accept_bit;
        format!("{m:#x}/{m:#x}")
    }

    fn clear(&self) -> String {
        format!("0x0/{:#x}", 1u32 << self.accept_bit)
    }
}

/// An interface of a pod on this node that gets chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The host side of its veth.
    pub veth: String,
    /// `namespace/name` of the pod whose primary interface it is (the policies selecting
    /// that pod isolate it); None: an attachment nothing isolates (podman, a pod's second
    /// network).
    pub pod: Option<String>,
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
    /// Packed ([`Members`]): the sets of a cluster hold close to a million members.
    pub members: Members,
}

/// One member of a policy set, written as `ipset restore` spells it. Kept as data, not
/// text: a large cluster's sets hold hundreds of thousands of members, each a few bytes
/// here and several times that as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    /// `a.b.c.d/n` (`hash:net`).
    Net(IpNetwork),
    /// `a.b.c.d/n nomatch` (`hash:net`): an ipBlock's except.
    NoMatch(IpNetwork),
    /// `a.b.c.d,tcp:80` (`hash:ip,port`).
    IpPort(IpAddr, Protocol, u16),
}

impl Member {
    /// A single address as a `hash:net` member (`/32`, `/128`).
    pub fn host(ip: IpAddr) -> Member {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Member::Net(IpNetwork::new(ip, len).expect("a host prefix length is valid"))
    }
}

/// `n` as `hash:net` can hold it: the kernel refuses a prefix of length 0, so the whole
/// space (`0.0.0.0/0`, `::/0`, a common ipBlock) is its two halves, as Calico writes it.
fn settable(n: IpNetwork) -> Vec<IpNetwork> {
    if n.prefix() > 0 {
        return vec![n];
    }
    let halves = match n {
        IpNetwork::V4(_) => ["0.0.0.0/1", "128.0.0.0/1"],
        IpNetwork::V6(_) => ["::/1", "8000::/1"],
    };
    halves
        .iter()
        .map(|h| h.parse().expect("a valid literal"))
        .collect()
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Net(n) => write!(f, "{n}"),
            Member::NoMatch(n) => write!(f, "{n} nomatch"),
            Member::IpPort(ip, proto, port) => write!(f, "{ip},{}:{port}", proto.lower()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRules {
    pub filter: TableRules,
    /// Shared (not copied) by the wanted state and the writer's record of what it wrote:
    /// a large cluster's sets hold hundreds of thousands of members.
    pub sets: Vec<Arc<SetSpec>>,
    /// Which rules count what, for the packet counters: by rule hash.
    pub accounting: Vec<(u64, Account)>,
}

/// What a rule's packet counter means.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Account {
    /// New connections this policy allowed in this direction.
    Allowed { policy: String, ingress: bool },
    /// New connections to (ingress) or from this pod interface that it was isolated from.
    Denied { veth: String, ingress: bool },
}

impl PolicyRules {
    /// Packet counts (from [`crate::iptables::read_counters`]) summed per account.
    pub fn count(&self, counters: &HashMap<u64, u64>) -> BTreeMap<Account, u64> {
        let mut out = BTreeMap::new();
        for (h, a) in &self.accounting {
            *out.entry(a.clone()).or_insert(0) += counters.get(h).copied().unwrap_or(0);
        }
        out
    }
}

/// `BRL-PI-…` (ingress) or `BRL-PO-…` (egress) for a policy id.
pub fn policy_chain(ingress: bool, id: &str) -> String {
    format!("BRL-P{}-{}", if ingress { "I" } else { "O" }, hash16(id))
}

/// The chains, jumps and sets for `local` (this node's pod interfaces) under `prog`. An
/// interface not in `local` passes nothing.
pub fn render(prog: &Program, local: &[LocalEndpoint], ctx: &PolicyContext) -> PolicyRules {
    Renderer::default().render(prog, local, ctx)
}

/// One policy's chain in one direction as last rendered, with the ipBlock sets it names.
type Rendered = (Vec<CompiledRule>, Chain, Vec<Arc<SetSpec>>);

/// [`render`] that keeps each policy's chain from one call to the next and renders again
/// only the policies whose compiled rules changed (a pod added or relabelled changes set
/// members and endpoint chains, not the thousands of policy rules).
#[derive(Default)]
pub struct Renderer {
    ctx: Option<PolicyContext>,
    /// (ingress, policy id) → what it was rendered from and to.
    policies: std::collections::HashMap<(bool, String), Rendered>,
    /// (ingress, the policies in order) → their group chain.
    groups: Groups,
    /// (endpoint chain, its group chain) → the endpoint chain.
    endpoints: Endpoints,
}

type Groups = std::collections::HashMap<(bool, Vec<String>), Chain>;
type Endpoints = std::collections::HashMap<(String, Option<String>), Chain>;

impl Renderer {
    pub fn render(
        &mut self,
        prog: &Program,
        local: &[LocalEndpoint],
        ctx: &PolicyContext,
    ) -> PolicyRules {
        if self.ctx.as_ref() != Some(ctx) {
            self.policies.clear();
            self.groups.clear();
            self.endpoints.clear();
            self.ctx = Some(ctx.clone());
        }
        let mut out = PolicyRules::default();
        let mut chains = vec![];
        let mut kept = std::collections::HashMap::new();
        for (ingress, policies) in [(true, &prog.ingress), (false, &prog.egress)] {
            for (id, rules) in policies {
                let key = (ingress, id.clone());
                let r = match self.policies.remove(&key) {
                    Some(r) if &r.0 == rules => r,
                    _ => policy_lines(ingress, id, rules, ctx),
                };
                // Its mark rules count what it allowed (the rest are its returns).
                out.accounting.extend(
                    r.1.rules
                        .iter()
                        .filter(|x| !x.body().ends_with("-j RETURN"))
                        .map(|x| {
                            let policy = id.clone();
                            (x.hash, Account::Allowed { policy, ingress })
                        }),
                );
                chains.push(r.1.clone());
                out.sets.extend(r.2.iter().cloned());
                kept.insert(key, r);
            }
        }
        self.policies = kept;
        endpoints_and_sets(
            prog,
            local,
            ctx,
            chains,
            out,
            &mut self.groups,
            &mut self.endpoints,
        )
    }
}

/// A policy's chain for one direction, and the ipBlock sets it names.
fn policy_lines(ingress: bool, id: &str, rules: &[CompiledRule], ctx: &PolicyContext) -> Rendered {
    let name = policy_chain(ingress, id);
    let mut lines = vec![];
    let mut sets = vec![];
    for (i, r) in rules.iter().enumerate() {
        rule_lines(&name, id, i, r, ingress, ctx, &mut lines, &mut sets);
    }
    (rules.to_vec(), Chain { name, rules: lines }, sets)
}

/// The sets, the endpoint and dispatch chains and the jumps around `chains` (the policies').
fn endpoints_and_sets(
    prog: &Program,
    local: &[LocalEndpoint],
    ctx: &PolicyContext,
    mut chains: Vec<Chain>,
    mut out: PolicyRules,
    cache: &mut Groups,
    endpoint_cache: &mut Endpoints,
) -> PolicyRules {
    let family = ctx.family;
    for (key, members) in &prog.selector_sets {
        out.sets.push(Arc::new(SetSpec {
            name: selector_set(family, key),
            kind: SetKind::Net,
            members: members
                .iter()
                .filter(|ip| family.has(*ip))
                .map(Member::host)
                .collect(),
        }));
    }
    for (key, members) in &prog.named_sets {
        out.sets.push(Arc::new(SetSpec {
            name: named_set(family, key),
            kind: SetKind::IpPort,
            members: members
                .iter()
                .filter(|(ip, _)| family.has(*ip))
                .map(|(ip, port)| Member::IpPort(ip, key.protocol, port))
                .collect(),
        }));
    }
    out.sets.sort_by(|a, b| a.name.cmp(&b.name));
    out.sets.dedup_by(|a, b| a.name == b.name);
    let mut from = vec![];
    let mut to = vec![];
    let mut seen = std::collections::BTreeSet::new();
    // The groups in use (by the policy lists in `prog`, not copies), and their names.
    let mut used: std::collections::BTreeMap<(bool, &[String]), String> = Default::default();
    let mut endpoints = Endpoints::new();
    let none = brindle_policy::compile::Endpoint::default();
    for e in local {
        // One interface, one pair of chains.
        if !seen.insert(&e.veth) {
            continue;
        }
        let ep = match &e.pod {
            // A pod the program does not know (hostNetwork, or not listed): no chains, so
            // its interface passes nothing, rather than chains that isolate nothing.
            Some(k) => match prog.by_pod.get(k) {
                Some(ep) => ep,
                None => continue,
            },
            None => &none,
        };
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
            let group = (!ids.is_empty()).then(|| {
                used.entry((ingress, ids.as_slice()))
                    .or_insert_with(|| group_name(ingress, ids))
                    .clone()
            });
            let key = (name, group);
            let chain = match endpoint_cache.remove(&key) {
                Some(c) => c,
                None => endpoint_chain(&key.0, key.1.as_deref(), ctx),
            };
            if let (Some(_), Some(drop)) = (&key.1, chain.rules.last()) {
                let veth = e.veth.clone();
                out.accounting
                    .push((drop.hash, Account::Denied { veth, ingress }));
            }
            chains.push(chain.clone());
            endpoints.insert(key, chain);
        }
    }
    *endpoint_cache = endpoints;
    let mut groups = Groups::new();
    for ((ingress, ids), _) in used {
        let key = (ingress, ids.to_vec());
        let g = match cache.remove(&key) {
            Some(g) => g,
            None => group_chain(ingress, ids, ctx),
        };
        chains.push(g.clone());
        groups.insert(key, g);
    }
    *cache = groups;
    let any = format!("{}+", ctx.workload_prefix);
    for (name, list, dir) in [(FROM_WL, &mut from, "-i"), (TO_WL, &mut to, "-o")] {
        list.push(Rule::new(
            name,
            "brindle: a pod interface with no chains yet (or unknown) passes nothing",
            &format!("{dir} {any} -j DROP"),
        ));
        chains.push(Chain {
            name: name.into(),
            rules: std::mem::take(list),
        });
    }
    out.filter.chains = chains.into_iter().map(Arc::new).collect();
    let jump = |chain: &'static str, comment: &str, body: String| Jump {
        chain,
        rule: Rule::new(chain, comment, &body),
    };
    let mut jumps = vec![
        jump(
            "FORWARD",
            "brindle policy: from pods",
            format!("-i {any} -j {FROM_WL}"),
        ),
        jump(
            "FORWARD",
            "brindle policy: to pods",
            format!("-o {any} -j {TO_WL}"),
        ),
        jump(
            "FORWARD",
            ALLOWED,
            format!("-m mark --mark {} -j ACCEPT", ctx.mark()),
        ),
    ];
    if family == Family::V6 {
        for t in ICMPV6_ALWAYS {
            jumps.push(jump(
                "INPUT",
                "brindle policy: neighbour discovery from pods",
                format!("-i {any} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"),
            ));
        }
    }
    jumps.push(jump(
        "INPUT",
        "brindle policy: from pods to this node",
        format!("-i {any} -j {FROM_WL}"),
    ));
    out.filter.jumps = jumps;
    out
}

const ALLOWED: &str = "brindle policy: allowed";

/// `ruleset` (the Services' and the node guard's rules) with the policy's chains and jumps
/// in their places. FORWARD: the node guard and the load balancer firewall first (they only
/// drop), then the policy's dispatch, then the Services' own FORWARD rules (which accept
/// replies and marked traffic: after policy, never before it), then the policy's accept.
/// INPUT: after ours (which only drop), a pod's egress; what it allows goes on to the host's
/// own INPUT rules (replies of allowed connections are accepted there).
pub fn merge(ruleset: &mut Ruleset, policy: &PolicyRules) {
    let f = &mut ruleset.filter;
    f.chains.extend(policy.filter.chains.iter().cloned());
    let (accept, dispatch): (Vec<&Jump>, Vec<&Jump>) = policy
        .filter
        .jumps
        .iter()
        .partition(|j| j.rule.comment().contains(ALLOWED));
    let forward_rules = format!("-j {FORWARD_CHAIN}");
    for j in dispatch {
        let at = if j.chain == "FORWARD" {
            f.jumps
                .iter()
                .position(|x| x.chain == "FORWARD" && x.rule.body().ends_with(&forward_rules))
        } else {
            f.jumps
                .iter()
                .rposition(|x| x.chain == j.chain)
                .map(|i| i + 1)
        };
        f.jumps.insert(at.unwrap_or(f.jumps.len()), j.clone());
    }
    f.jumps.extend(accept.into_iter().cloned());
}

fn selector_set(family: Family, key: &brindle_policy::compile::SelectorKey) -> String {
    family.set_name(&format!("brl40s-{}", hash16(&format!("{key:?}"))))
}

fn named_set(family: Family, key: &brindle_policy::compile::NamedKey) -> String {
    family.set_name(&format!("brl40n-{}", hash16(&format!("{key:?}"))))
}

/// The ipsets of NetworkPolicy: every name starts with one of these (`brl60…` for IPv6:
/// [`Family::set_name`]).
pub const SET_PREFIXES: [&str; 3] = ["brl40s-", "brl40b-", "brl40n-"];

/// A rule's lines: every peer × port combination sets the accept mark; then return if set.
/// A rule whose every peer is of the other family matches nothing here (it is skipped, never
/// read as "any peer").
#[allow(clippy::too_many_arguments)]
fn rule_lines(
    chain: &str,
    id: &str,
    i: usize,
    r: &CompiledRule,
    ingress: bool,
    ctx: &PolicyContext,
    lines: &mut Vec<Rule>,
    sets: &mut Vec<Arc<SetSpec>>,
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
            .filter_map(|p| match p {
                PeerMatch::Set(key) => Some(format!(
                    "-m set --match-set {} {peer_dir}",
                    selector_set(ctx.family, key)
                )),
                PeerMatch::Block { cidr, .. } if !ctx.family.has_net(cidr) => None,
                PeerMatch::Block { cidr, except } => {
                    let name = ctx
                        .family
                        .set_name(&format!("brl40b-{}", hash16(&format!("{cidr} {except:?}"))));
                    let mut members: Vec<Member> =
                        settable(*cidr).into_iter().map(Member::Net).collect();
                    members.extend(
                        except
                            .iter()
                            .flat_map(|e| settable(*e))
                            .map(Member::NoMatch),
                    );
                    sets.push(Arc::new(SetSpec {
                        name: name.clone(),
                        kind: SetKind::Net,
                        members: members.into(),
                    }));
                    Some(format!("-m set --match-set {name} {peer_dir}"))
                }
            })
            .collect()
    };
    if peers.is_empty() {
        return;
    }
    let ports: Vec<String> = if r.ports.is_empty() {
        vec![String::new()]
    } else {
        r.ports
            .iter()
            .map(|p| match p {
                PortMatch::Protocol(pr) => format!("-p {}", pr.lower()),
                // SCTP through multiport (which the node guard needs anyway): a kernel
                // without the sctp match would otherwise fail the whole restore.
                PortMatch::Range {
                    protocol: Protocol::Sctp,
                    from,
                    to,
                } if from == to => format!("-p sctp -m multiport --dports {from}"),
                PortMatch::Range {
                    protocol: Protocol::Sctp,
                    from,
                    to,
                } => format!("-p sctp -m multiport --dports {from}:{to}"),
                PortMatch::Range { protocol, from, to } if from == to => {
                    format!("-p {0} -m {0} --dport {from}", protocol.lower())
                }
                PortMatch::Range { protocol, from, to } => {
                    format!("-p {0} -m {0} --dport {from}:{to}", protocol.lower())
                }
                PortMatch::Named(k) => format!(
                    "-p {} -m set --match-set {} dst,dst",
                    k.protocol.lower(),
                    named_set(ctx.family, k)
                ),
            })
            .collect()
    };
    let mark = ctx.mark();
    for peer in &peers {
        for port in &ports {
            let m = [peer.as_str(), port.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let body = if m.is_empty() {
                format!("-j MARK --set-xmark {mark}")
            } else {
                format!("{m} -j MARK --set-xmark {mark}")
            };
            lines.push(Rule::new(chain, &comment, &body));
        }
    }
    lines.push(Rule::new(
        chain,
        &comment,
        &format!("-m mark --mark {mark} -j RETURN"),
    ));
}

/// `BRL-GI-…` / `BRL-GO-…`: the policies that isolate a pod in one direction, in order,
/// until one sets the accept mark. Shared by every pod the same policies isolate (Calico's
/// policy groups), so a pod costs a few rules, not two per policy: with 100 policies over
/// 60 pods that is 600 rules instead of 12,000, and a legacy restore rewrites them all.
/// The group chain's name of a list of policies.
fn group_name(ingress: bool, policies: &[String]) -> String {
    format!(
        "BRL-G{}-{}",
        if ingress { "I" } else { "O" },
        hash16(&policies.join("\n"))
    )
}

fn group_chain(ingress: bool, policies: &[String], ctx: &PolicyContext) -> Chain {
    let name = group_name(ingress, policies);
    let (m, clear) = (ctx.mark(), ctx.clear());
    let mut rules = vec![];
    for id in policies {
        rules.push(Rule::new(
            &name,
            id,
            &format!("-m mark --mark {clear} -j {}", policy_chain(ingress, id)),
        ));
        rules.push(Rule::new(
            &name,
            "",
            &format!("-m mark --mark {m} -j RETURN"),
        ));
    }
    Chain { name, rules }
}

/// The interface a `BRL-FW-`/`BRL-TW-` chain is for.
fn endpoint_veth(chain: &str) -> Option<&str> {
    chain
        .strip_prefix("BRL-FW-")
        .or_else(|| chain.strip_prefix("BRL-TW-"))
}

/// A pod's chain for one direction: replies pass, INVALID drops; isolated (`group`): what
/// its group allows returns, the rest drops; not isolated: the accept mark.
fn endpoint_chain(name: &str, group: Option<&str>, ctx: &PolicyContext) -> Chain {
    let m = ctx.mark();
    let mut rules = vec![
        Rule::new(
            name,
            "",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        Rule::new(name, "", "-m conntrack --ctstate INVALID -j DROP"),
        Rule::new(name, "", &format!("-j MARK --set-xmark {}", ctx.clear())),
    ];
    match group {
        None => rules.push(Rule::new(
            name,
            "not isolated",
            &format!("-j MARK --set-xmark {m}"),
        )),
        Some(g) => {
            rules.push(Rule::new(name, "", &format!("-j {g}")));
            rules.push(Rule::new(
                name,
                "",
                &format!("-m mark --mark {m} -j RETURN"),
            ));
            if let (Some(group), Some(veth)) = (ctx.log_denied, endpoint_veth(name)) {
                let ingress = name.starts_with("BRL-TW-");
                rules.push(Rule::new(
                    name,
                    "",
                    &format!(
                        "{LOG_DENIED_LIMIT} -j NFLOG --nflog-group {group} --nflog-prefix {}",
                        crate::nflog::prefix(ingress, veth)
                    ),
                ));
            }
            rules.push(Rule::new(
                name,
                "brindle: isolated, and no policy allowed it",
                "-j DROP",
            ));
        }
    }
    Chain {
        name: name.into(),
        rules,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use brindle_policy::model::{
        Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule as PRule, Selector,
    };
    use brindle_policy::World;

    /// x/<name>, labelled `pod=<name>`, on n1, serving `http` on TCP 8080 (also the nftables
    /// renderer's tests' pod).
    pub(crate) fn pod(name: &str, ip: &str) -> Pod {
        Pod::running("x", name, "n1", ip.parse().unwrap())
            .label("pod", name)
            .port("http", Protocol::Tcp, 8080)
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
                pod: Some("x/a".into()),
            },
            LocalEndpoint {
                veth: "brl0000000000b".into(),
                pod: Some("x/b".into()),
            },
        ];
        let r = render(&prog, &local, &PolicyContext::default());
        let chain = |n: &str| {
            r.filter
                .chains
                .iter()
                .find(|c| c.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        let texts = |c: &Chain| c.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>();
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
        // a is isolated for ingress by x/web: its chain jumps to its group, which jumps to
        // the policy; then it drops.
        let tw = texts(chain("BRL-TW-brl0000000000a"));
        assert!(tw[0].contains("RELATED,ESTABLISHED -j ACCEPT"));
        let group = tw
            .iter()
            .find_map(|t| t.split("-j ").nth(1).filter(|g| g.starts_with("BRL-GI-")))
            .unwrap_or_else(|| panic!("no group jump in {tw:?}"));
        assert!(
            texts(chain(group))
                .iter()
                .any(|t| t.ends_with(&format!("-j {}", policy_chain(true, "x/web")))),
            "{group}"
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
        // Counters: the policy's mark rules count its allows, a's drop its denials.
        assert!(r.accounting.iter().any(|(_, a)| *a
            == Account::Allowed {
                policy: "x/web".into(),
                ingress: true
            }));
        let denied: Vec<&Account> = r
            .accounting
            .iter()
            .filter(|(_, a)| matches!(a, Account::Denied { .. }))
            .map(|(_, a)| a)
            .collect();
        assert_eq!(
            denied,
            vec![&Account::Denied {
                veth: "brl0000000000a".into(),
                ingress: true
            }],
            "only the isolated pod's direction drops"
        );
        let drop_hash = r
            .accounting
            .iter()
            .find(|(_, a)| matches!(a, Account::Denied { .. }))
            .map(|(h, _)| *h)
            .unwrap();
        let counts = r.count(&HashMap::from([(drop_hash, 3)]));
        assert_eq!(counts[denied[0]], 3);
        // Sets: b's address for the selector, the block with its except as nomatch, the
        // named port as ip,proto:port.
        let set = |prefix: &str| r.sets.iter().find(|s| s.name.starts_with(prefix)).unwrap();
        // As ipset restore is given them.
        let members = |prefix: &str| -> Vec<String> {
            set(prefix).members.iter().map(|m| m.to_string()).collect()
        };
        assert_eq!(members("brl40s-"), vec!["10.0.0.2/32"]);
        assert_eq!(
            members("brl40b-"),
            vec!["198.51.100.0/24", "198.51.100.7/32 nomatch"]
        );
        assert_eq!(set("brl40n-").kind, SetKind::IpPort);
        assert_eq!(
            members("brl40n-"),
            vec!["10.0.0.1,tcp:8080", "10.0.0.2,tcp:8080"]
        );
        // --log-denied: the isolated direction logs (limited) just before its drop; the
        // open one does not log, and the drop still counts the denials.
        let ctx = PolicyContext {
            log_denied: Some(30),
            ..Default::default()
        };
        let r = render(&prog, &local, &ctx);
        let chain = |n: &str| texts(r.filter.chains.iter().find(|c| c.name == n).unwrap());
        let tw = chain("BRL-TW-brl0000000000a");
        let n = tw.len();
        assert!(
            tw[n - 2].ends_with(&format!(
            "{LOG_DENIED_LIMIT} -j NFLOG --nflog-group 30 --nflog-prefix brl:D:I:brl0000000000a"
        )),
            "{tw:?}"
        );
        assert!(tw[n - 1].ends_with("-j DROP"));
        for c in ["BRL-FW-brl0000000000a", "BRL-TW-brl0000000000b"] {
            assert!(chain(c).iter().all(|t| !t.contains("NFLOG")), "{c}");
        }
        assert_eq!(
            r.accounting
                .iter()
                .filter(|(_, a)| matches!(a, Account::Denied { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn merged_policy_sits_after_the_guard_and_before_the_services_accepts() {
        use crate::proxy::rules::{assemble, FORWARD, HOST_GUARD, SERVICES};
        use crate::proxy::{NatOutgoingExclusions, NodeContext, NodeGuard};
        let ctx = NodeContext {
            node: "n1".into(),
            zone: None,
            masquerade_bit: 14,
        };
        let guard = NodeGuard {
            pod_blocked_ports: vec![179],
            nat_outgoing_exclusions: NatOutgoingExclusions::IPPoolsAndHostIPs,
            workload_prefix: "brl".into(),
        };
        let mut r = assemble(&ctx, &guard, []);
        let p = render(&Program::default(), &[], &PolicyContext::default());
        merge(&mut r, &p);
        let order = |chain: &str| -> Vec<String> {
            r.filter
                .jumps
                .iter()
                .filter(|j| j.chain == chain)
                .map(|j| j.rule.to_string())
                .collect()
        };
        let fwd = order("FORWARD");
        let at = |what: &str| {
            fwd.iter()
                .position(|t| t.ends_with(what))
                .unwrap_or_else(|| panic!("{what} in {fwd:?}"))
        };
        assert!(fwd[0].ends_with(&format!("-j {HOST_GUARD}")), "{fwd:?}");
        assert!(at(&format!("-j {FROM_WL}")) < at(&format!("-j {TO_WL}")));
        assert!(at(&format!("-j {TO_WL}")) < at(&format!("-j {FORWARD}")));
        assert!(at(&format!("-j {FORWARD}")) < at(&format!("-j {SERVICES}")));
        assert!(fwd
            .last()
            .unwrap()
            .ends_with("-m mark --mark 0x10000/0x10000 -j ACCEPT"));
        let input = order("INPUT");
        assert!(input[0].ends_with(&format!("-j {HOST_GUARD}")), "{input:?}");
        assert!(
            input
                .last()
                .unwrap()
                .ends_with(&format!("-i brl+ -j {FROM_WL}")),
            "{input:?}"
        );
        assert!(order("OUTPUT").iter().all(|t| !t.contains("WL-DISPATCH")));
    }

    #[test]
    fn sctp_ports_need_no_sctp_match_module() {
        let mut w = World::default();
        w.policies.push(Policy {
            namespace: "x".into(),
            name: "s".into(),
            pods: Selector::default(),
            ingress: Some(vec![PRule {
                peers: vec![],
                ports: vec![Port::Range {
                    protocol: Protocol::Sctp,
                    from: 80,
                    to: 80,
                }],
            }]),
            egress: None,
        });
        let r = render(&Program::compile(&w, &[]), &[], &PolicyContext::default());
        let texts: Vec<String> = r
            .filter
            .chains
            .iter()
            .flat_map(|c| c.rules.iter().map(|r| r.to_string()))
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("-p sctp -m multiport --dports 80 -j MARK")),
            "{texts:?}"
        );
        assert!(texts.iter().all(|t| !t.contains("-m sctp")), "{texts:?}");
    }
}
