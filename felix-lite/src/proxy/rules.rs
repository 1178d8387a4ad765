//! One service port → its chains and rules, in kube-proxy's structure (REFERENCE §B1–B2), and
//! the fixed chains around them. Every rule carries `-m comment --comment "brl:<hash> …"`: the
//! hash (of chain and rule text) is how the writer tells our rules from anyone else's and
//! what it compares with the kernel, so the text never has to be read back.

use std::net::IpAddr;
use std::sync::Arc;

use sha1::Digest;

use super::plan::{ChainKind, ExternalStep, NoEndpoint, Plan};
use super::{Endpoint, NatOutgoingExclusions, NodeContext, NodeGuard, ServicePort};
use crate::family::Family;

pub const SERVICES: &str = "BRL-SERVICES";
pub const NODEPORTS: &str = "BRL-NODEPORTS";
pub const POSTROUTING: &str = "BRL-POSTROUTING";
pub const MARK_MASQ: &str = "BRL-MARK-MASQ";
pub const NAT_OUTGOING: &str = "BRL-NAT-OUTGOING";
pub const EXTERNAL_SERVICES: &str = "BRL-EXTERNAL-SERVICES";
pub const FORWARD: &str = "BRL-FORWARD";
pub const FIREWALL: &str = "BRL-PROXY-FIREWALL";
/// Every chain of ours starts with this; no other chain is ever written or deleted.
pub const CHAIN_PREFIX: &str = "BRL-";
/// The ipsets (hash:net) of every pool and of the pools with natOutgoing (Calico's
/// `cali40all-ipam-pools` / `cali40masq-ipam-pools`).
pub const ALL_POOLS_SET: &str = "brl40all-ipam-pools";
pub const MASQ_POOLS_SET: &str = "brl40masq-ipam-pools";
/// Every node's addresses (underlay and tunnel), Calico's `cali40all-hosts-net`.
pub const ALL_HOSTS_SET: &str = "brl40all-hosts-net";
/// Every BGPPeer's address (the routers nodes peer with).
pub const BGP_PEERS_SET: &str = "brl40bgp-peers";
/// filter: pod traffic to the nodes' own services that no pod may reach.
pub const HOST_GUARD: &str = "BRL-HOST-GUARD";
/// raw: what arrives from a pod must come from the pod's own addresses.
pub const ANTI_SPOOF: &str = "BRL-ANTI-SPOOF";
/// The comment tag of our rules.
pub const TAG: &str = "brl:";

/// One rule: its identity hash and what follows `-A <chain> `, which [`Rule`]'s `Display`
/// writes: `-m comment --comment "brl:<hash> <comment>" <body>`. Only the comment and body
/// are held (the tag and hash are 43 bytes of 190 at 10,000 Services), in one shared string:
/// the assembled ruleset clones every fixed chain's rules at every sync, and a clone must
/// cost a count, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub hash: u64,
    /// The comment (already made safe) followed by the body.
    tail: Arc<str>,
    /// The comment's length in `tail`.
    comment: u8,
}

impl Rule {
    /// `body` is iptables syntax; `comment` is shown to people after the hash.
    pub fn new(chain: &str, comment: &str, body: &str) -> Rule {
        let hash = rule_hash(chain, comment, body);
        let comment = safe_comment(comment);
        let mut tail = String::with_capacity(comment.len() + body.len());
        tail.push_str(&comment);
        tail.push_str(body);
        Rule {
            hash,
            tail: tail.into(),
            comment: u8::try_from(comment.len()).expect("cut at MAX_COMMENT"),
        }
    }

    /// The comment people see after the tag and hash (cut and made safe).
    pub fn comment(&self) -> &str {
        &self.tail[..usize::from(self.comment)]
    }

    /// The rule's matches and target, after the comment.
    pub fn body(&self) -> &str {
        &self.tail[usize::from(self.comment)..]
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (hash, body) = (self.hash, self.body());
        match self.comment() {
            "" => write!(f, "-m comment --comment {TAG}{hash:016x} {body}"),
            c => write!(f, "-m comment --comment \"{TAG}{hash:016x} {c}\" {body}"),
        }
    }
}

/// The longest comment text written after the tag and hash: `nft` refuses a comment over 128
/// bytes (the whole transaction with it) and iptables one over 255; a Service's or policy's
/// namespace and name alone can be 316. The rule's hash is of the whole comment.
pub const MAX_COMMENT: usize = 100;
const _: () = assert!(MAX_COMMENT <= u8::MAX as usize);

/// A comment as written into a rule: a quote, a backslash or a control character (a
/// newline would start a line of its own in the restore or `nft -f` input) becomes `_`, and
/// the text is cut at [`MAX_COMMENT`] bytes (on a character boundary).
pub fn safe_comment(comment: &str) -> std::borrow::Cow<'_, str> {
    let mut end = comment.len().min(MAX_COMMENT);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let comment = &comment[..end];
    if comment
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        comment
            .chars()
            .map(|c| {
                if c == '"' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect::<String>()
            .into()
    } else {
        comment.into()
    }
}

/// A rule's identity: the first 8 bytes of sha1(chain, comment, body).
pub fn rule_hash(chain: &str, comment: &str, body: &str) -> u64 {
    let mut h = sha1::Sha1::new();
    h.update(chain.as_bytes());
    h.update([0]);
    h.update(comment.as_bytes());
    h.update([0]);
    h.update(body.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// What one service port adds to a node's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// nat: its SVC/SVL/EXT/FW/SEP chains (none when it has no endpoints).
    pub chains: Vec<Arc<Chain>>,
    pub nat_services: Vec<Rule>,
    pub nat_nodeports: Vec<Rule>,
    pub filter_services: Vec<Rule>,
    pub filter_external: Vec<Rule>,
    pub filter_firewall: Vec<Rule>,
}

impl ServiceRules {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum::<usize>()
            + self.nat_services.len()
            + self.nat_nodeports.len()
            + self.filter_services.len()
            + self.filter_external.len()
            + self.filter_firewall.len()
    }
}

/// RFC 4648 base32 (standard alphabet), as Go's `base32.StdEncoding`, without padding.
fn base32(data: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// kube-proxy's `portProtoHash`: base32(sha256(s))[:16].
pub fn hash16(s: &str) -> String {
    let d = sha2::Sha256::digest(s.as_bytes());
    base32(&d)[..16].to_string()
}

/// `BRL-SVC-…` etc. for a service port (kube-proxy's names with our prefix).
pub fn service_chain(prefix: &str, svc: &ServicePort) -> String {
    format!(
        "BRL-{prefix}-{}",
        hash16(&format!(
            "{}{}",
            svc.port_name_string(),
            svc.protocol.lower()
        ))
    )
}

pub fn endpoint_chain(svc: &ServicePort, ep: &Endpoint) -> String {
    format!(
        "BRL-SEP-{}",
        hash16(&format!(
            "{}{}{}",
            svc.port_name_string(),
            svc.protocol.lower(),
            ep.addr()
        ))
    )
}

fn dport(svc: &ServicePort, port: u16) -> String {
    let p = svc.protocol.lower();
    format!("-p {p} -m {p} --dport {port}")
}

/// A host prefix of `ip` (`/32`, `/128`).
fn host(ip: IpAddr) -> String {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{len}")
}

fn dst(ip: IpAddr) -> String {
    format!("-d {}", host(ip))
}

/// The rules of one service port on the node described by `ctx` (its [`Plan`], in iptables).
pub fn render(svc: &ServicePort, ctx: &NodeContext) -> ServiceRules {
    let mut out = ServiceRules::default();
    let spn = svc.port_name_string();
    let plan = Plan::new(svc, ctx);
    let chain_of = |k: ChainKind| {
        service_chain(
            match k {
                ChainKind::Cluster => "SVC",
                ChainKind::Local => "SVL",
                ChainKind::External => "EXT",
                ChainKind::Firewall => "FW",
            },
            svc,
        )
    };
    let svc_chain = chain_of(ChainKind::Cluster);
    let ext_chain = chain_of(ChainKind::External);
    let fw_chain = chain_of(ChainKind::Firewall);
    let port = dport(svc, svc.port);
    let has_any = plan.cat.has_any;
    let filter_target = match (plan.no_endpoint, svc.family) {
        (NoEndpoint::Drop, _) => "DROP",
        (NoEndpoint::Reject, Family::V4) => "REJECT --reject-with icmp-port-unreachable",
        (NoEndpoint::Reject, Family::V6) => "REJECT --reject-with icmp6-port-unreachable",
    };
    let all_pools = svc.family.set_name(ALL_POOLS_SET);
    let why = plan.no_endpoint.why();
    let lb_chain = chain_of(plan.load_balancer_chain());

    // Cluster IP.
    if let Some(cip) = svc.cluster_ip {
        match plan.internal {
            Some(k) => out.nat_services.push(Rule::new(
                SERVICES,
                &format!("{spn} cluster IP"),
                &format!("{} {port} -j {}", dst(cip), chain_of(k)),
            )),
            None => out.filter_services.push(Rule::new(
                SERVICES,
                &format!("{spn} {why}"),
                &format!("{} {port} -j {filter_target}", dst(cip)),
            )),
        }
    }
    // External IPs and load balancer IPs.
    for (ips, what, chain) in [
        (&svc.external_ips, "external IP", &ext_chain),
        (&svc.load_balancer_ips, "loadbalancer IP", &lb_chain),
    ] {
        for ip in ips {
            if has_any {
                out.nat_services.push(Rule::new(
                    SERVICES,
                    &format!("{spn} {what}"),
                    &format!("{} {port} -j {chain}", dst(*ip)),
                ));
            }
            if !plan.has_external {
                out.filter_external.push(Rule::new(
                    EXTERNAL_SERVICES,
                    &format!("{spn} {why}"),
                    &format!("{} {port} -j {filter_target}", dst(*ip)),
                ));
            }
        }
    }
    if plan.uses_firewall {
        for ip in &svc.load_balancer_ips {
            out.filter_firewall.push(Rule::new(
                FIREWALL,
                &format!("{spn} traffic not accepted by {fw_chain}"),
                &format!("{} {port} -j DROP", dst(*ip)),
            ));
        }
    }
    // NodePort.
    if let Some(np) = svc.node_port {
        let np_match = dport(svc, np);
        if has_any {
            out.nat_nodeports.push(Rule::new(
                NODEPORTS,
                &spn,
                &format!("{np_match} -j {ext_chain}"),
            ));
        }
        if !plan.has_external {
            out.filter_external.push(Rule::new(
                EXTERNAL_SERVICES,
                &format!("{spn} {why}"),
                &format!("-m addrtype --dst-type LOCAL {np_match} -j {filter_target}"),
            ));
        }
    }
    if !has_any {
        return out;
    }

    // The per-service nat chains.
    if plan.uses_cluster {
        let mut rules = vec![];
        if let Some(cip) = svc.cluster_ip {
            // Off-cluster sources reaching the cluster IP are masqueraded.
            rules.push(Rule::new(
                &svc_chain,
                &format!("{spn} cluster IP"),
                &format!(
                    "-m set ! --match-set {all_pools} src {} {port} -j {MARK_MASQ}",
                    dst(cip)
                ),
            ));
        }
        endpoint_rules(&mut rules, &svc_chain, svc, &plan.cat.cluster);
        out.chains.push(Arc::new(Chain {
            name: svc_chain.clone(),
            rules,
        }));
    }
    if plan.uses_local {
        let svl_chain = chain_of(ChainKind::Local);
        let mut rules = vec![];
        endpoint_rules(&mut rules, &svl_chain, svc, &plan.cat.local);
        out.chains.push(Arc::new(Chain {
            name: svl_chain,
            rules,
        }));
    }
    if svc.externally_accessible() {
        let rules = plan
            .external
            .iter()
            .map(|step| match step {
                ExternalStep::MasqueradeAll => Rule::new(
                    &ext_chain,
                    &format!("masquerade traffic for {spn} external destinations"),
                    &format!("-j {MARK_MASQ}"),
                ),
                // Pods and the node itself may use every endpoint (no client IP to keep).
                ExternalStep::PodsToCluster => Rule::new(
                    &ext_chain,
                    &format!("pod traffic for {spn} external destinations"),
                    &format!("-m set --match-set {all_pools} src -j {svc_chain}"),
                ),
                ExternalStep::MasqueradeLocalSource => Rule::new(
                    &ext_chain,
                    &format!("masquerade LOCAL traffic for {spn} external destinations"),
                    &format!("-m addrtype --src-type LOCAL -j {MARK_MASQ}"),
                ),
                ExternalStep::LocalSourceToCluster => Rule::new(
                    &ext_chain,
                    &format!("route LOCAL traffic for {spn} external destinations"),
                    &format!("-m addrtype --src-type LOCAL -j {svc_chain}"),
                ),
                ExternalStep::To(k) => Rule::new(&ext_chain, "", &format!("-j {}", chain_of(*k))),
            })
            .collect();
        out.chains.push(Arc::new(Chain {
            name: ext_chain.clone(),
            rules,
        }));
    }
    if plan.uses_firewall {
        let mut rules = vec![];
        for r in &svc.load_balancer_source_ranges {
            rules.push(Rule::new(
                &fw_chain,
                &format!("{spn} loadbalancer IP"),
                &format!("-s {r} -j {ext_chain}"),
            ));
        }
        // The load balancer itself (and hairpin through it) may always come in.
        for ip in &svc.load_balancer_ips {
            rules.push(Rule::new(
                &fw_chain,
                &format!("{spn} loadbalancer IP"),
                &format!("-s {} -j {ext_chain}", host(*ip)),
            ));
        }
        out.chains.push(Arc::new(Chain {
            name: fw_chain,
            rules,
        }));
    }
    // SEP chains: every endpoint either policy chain uses, once.
    let mut seen = std::collections::BTreeSet::new();
    for ep in plan.cat.cluster.iter().chain(plan.cat.local.iter()) {
        let name = endpoint_chain(svc, ep);
        if !seen.insert(name.clone()) {
            continue;
        }
        let recent = match svc.affinity_seconds {
            Some(_) => format!(
                "-m recent --set --name {name} --mask {} --rsource ",
                full_mask(svc.family)
            ),
            None => String::new(),
        };
        let p = svc.protocol.lower();
        let rules = vec![
            Rule::new(&name, "", &format!("-s {} -j {MARK_MASQ}", host(ep.ip))),
            Rule::new(
                &name,
                "",
                &format!(
                    "{recent}-p {p} -m {p} -j DNAT --to-destination {}",
                    ep.addr()
                ),
            ),
        ];
        out.chains.push(Arc::new(Chain { name, rules }));
    }
    out
}

/// `-m recent`'s whole-address mask (kube-proxy's, per family).
fn full_mask(family: Family) -> &'static str {
    match family {
        Family::V4 => "255.255.255.255",
        Family::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}

/// Affinity checks, then one rule per endpoint with `1/(n-i)` probabilities.
fn endpoint_rules(rules: &mut Vec<Rule>, chain: &str, svc: &ServicePort, eps: &[&Endpoint]) {
    let spn = svc.port_name_string();
    let names: Vec<String> = eps.iter().map(|e| endpoint_chain(svc, e)).collect();
    if let Some(secs) = svc.affinity_seconds {
        for (ep, sep) in eps.iter().zip(&names) {
            rules.push(Rule::new(
                chain,
                &format!("{spn} -> {}", ep.addr()),
                &format!(
                    "-m recent --rcheck --seconds {secs} --reap --name {sep} --mask {} --rsource -j {sep}",
                    full_mask(svc.family)
                ),
            ));
        }
    }
    let n = eps.len();
    for (i, (ep, sep)) in eps.iter().zip(&names).enumerate() {
        let comment = format!("{spn} -> {}", ep.addr());
        let body = if i + 1 < n {
            format!(
                "-m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - i) as f64
            )
        } else {
            format!("-j {sep}")
        };
        rules.push(Rule::new(chain, &comment, &body));
    }
}

/// A rule of ours in a chain that is not ours (a built-in chain), inserted at its top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub chain: &'static str,
    pub rule: Rule,
}

/// One table as we want it: our chains, and our jumps from the built-in chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    pub chains: Vec<Arc<Chain>>,
    pub jumps: Vec<Jump>,
}

impl TableRules {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum::<usize>() + self.jumps.len()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub raw: TableRules,
    pub nat: TableRules,
    pub filter: TableRules,
}

fn jump(chain: &'static str, comment: &str, body: &str) -> Jump {
    Jump {
        chain,
        rule: Rule::new(chain, comment, body),
    }
}

/// The whole ruleset: the fixed chains with every service's rules in them, in the order
/// given (callers sort, so a restart renders the same text).
pub fn assemble<'a>(
    ctx: &NodeContext,
    guard: &NodeGuard,
    services: impl IntoIterator<Item = &'a ServiceRules>,
) -> Ruleset {
    assemble_family(Family::V4, ctx, guard, services)
}

/// [`assemble`] for a family: the IPv6 ruleset (for `ip6tables-restore`) has the same
/// chains with the `brl60…` sets, and no IPIP rule (tunl0 is IPv4's).
pub fn assemble_family<'a>(
    family: Family,
    ctx: &NodeContext,
    guard: &NodeGuard,
    services: impl IntoIterator<Item = &'a ServiceRules>,
) -> Ruleset {
    let (all_pools, masq_pools, all_hosts, bgp_peers) = (
        family.set_name(ALL_POOLS_SET),
        family.set_name(MASQ_POOLS_SET),
        family.set_name(ALL_HOSTS_SET),
        family.set_name(BGP_PEERS_SET),
    );
    let mark = ctx.mark();
    let new = "-m conntrack --ctstate NEW";
    let mut nat_services = vec![];
    let mut nodeports = vec![];
    let mut f_services = vec![];
    let mut f_external = vec![];
    let mut f_firewall = vec![];
    let mut chains = vec![];
    for s in services {
        nat_services.extend(s.nat_services.iter().cloned());
        nodeports.extend(s.nat_nodeports.iter().cloned());
        f_services.extend(s.filter_services.iter().cloned());
        f_external.extend(s.filter_external.iter().cloned());
        f_firewall.extend(s.filter_firewall.iter().cloned());
        chains.extend(s.chains.iter().cloned());
    }
    nat_services.push(Rule::new(
        SERVICES,
        "brindle service nodeports; NOTE: this must be the last rule in this chain",
        &format!(
            "-m addrtype --dst-type LOCAL ! -d {} -j {NODEPORTS}",
            family.loopback()
        ),
    ));
    let nat_chains = vec![
        Chain {
            name: SERVICES.into(),
            rules: nat_services,
        },
        Chain {
            name: NODEPORTS.into(),
            rules: nodeports,
        },
        Chain {
            name: MARK_MASQ.into(),
            rules: vec![Rule::new(MARK_MASQ, "", &format!("-j MARK --or-mark {mark}"))],
        },
        Chain {
            name: NAT_OUTGOING.into(),
            rules: vec![Rule::new(
                NAT_OUTGOING,
                "brindle nat outgoing",
                &format!(
                    "-m set --match-set {masq_pools} src -m set ! --match-set {all_pools} dst{hosts} -j MASQUERADE --random-fully",
                    hosts = match guard.nat_outgoing_exclusions {
                        NatOutgoingExclusions::IPPoolsOnly => String::new(),
                        NatOutgoingExclusions::IPPoolsAndHostIPs =>
                            format!(" -m set ! --match-set {all_hosts} dst"),
                    }
                ),
            )],
        },
        Chain {
            name: POSTROUTING.into(),
            rules: vec![
                Rule::new(POSTROUTING, "", &format!("-j {NAT_OUTGOING}")),
                Rule::new(POSTROUTING, "", &format!("-m mark ! --mark {mark}/{mark} -j RETURN")),
                Rule::new(POSTROUTING, "", &format!("-j MARK --xor-mark {mark}")),
                Rule::new(
                    POSTROUTING,
                    "brindle service traffic requiring SNAT",
                    "-j MASQUERADE --random-fully",
                ),
            ],
        },
    ];
    let mut nat_chains: Vec<Arc<Chain>> = nat_chains.into_iter().map(Arc::new).collect();
    nat_chains.extend(chains);
    let mut ports = guard.pod_blocked_ports.clone();
    ports.sort();
    ports.dedup();
    // multiport takes 15 ports a rule.
    let guard_rules = ports
        .chunks(15)
        .map(|c| {
            let list: Vec<String> = c.iter().map(ToString::to_string).collect();
            Rule::new(
                HOST_GUARD,
                "brindle: no pod reaches a BGP port of a node or a node's peer",
                &format!(
                    "-p tcp -m set --match-set {all_pools} src -m multiport --dports {} -j DROP",
                    list.join(",")
                ),
            )
        })
        .collect();
    let mut guard_rules: Vec<Rule> = guard_rules;
    // Calico's rule: IPIP to this node only from the nodes (a stranger's packets would be
    // decapsulated and forwarded to the pods as if from inside the cluster).
    if family == Family::V4 {
        guard_rules.push(Rule::new(
            HOST_GUARD,
            "brindle: IPIP only from the nodes",
            &format!(
                "-p 4 -m addrtype --dst-type LOCAL -m set ! --match-set {all_hosts} src -j DROP"
            ),
        ));
    }
    let filter_chains = vec![
        Chain {
            name: HOST_GUARD.into(),
            rules: guard_rules,
        },
        Chain {
            name: SERVICES.into(),
            rules: f_services,
        },
        Chain {
            name: EXTERNAL_SERVICES.into(),
            rules: f_external,
        },
        Chain {
            name: FIREWALL.into(),
            rules: f_firewall,
        },
        Chain {
            name: FORWARD.into(),
            rules: vec![
                Rule::new(
                    FORWARD,
                    "brindle forwarding rules",
                    &format!("-m mark --mark {mark}/{mark} -j ACCEPT"),
                ),
                Rule::new(
                    FORWARD,
                    "brindle forwarding conntrack rule",
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                ),
            ],
        },
    ];
    let portals = "brindle service portals";
    // Strict reverse path for every pod interface, whatever the sysctls say (the kernel
    // takes the larger of `all` and the interface's rp_filter, and distributions set `all`
    // to 2, loose, which lets any routable source through): a packet from a pod whose
    // source is not routed back to that interface is dropped before conntrack sees it.
    let raw = TableRules {
        chains: vec![Arc::new(Chain {
            name: ANTI_SPOOF.into(),
            rules: vec![Rule::new(
                ANTI_SPOOF,
                "brindle: a pod sends only from its own addresses",
                &format!("-i {}+ -m rpfilter --invert -j DROP", guard.workload_prefix),
            )],
        })],
        jumps: vec![jump(
            "PREROUTING",
            "brindle anti-spoofing",
            &format!("-j {ANTI_SPOOF}"),
        )],
    };
    Ruleset {
        raw,
        nat: TableRules {
            chains: nat_chains,
            jumps: vec![
                jump("PREROUTING", portals, &format!("-j {SERVICES}")),
                jump("OUTPUT", portals, &format!("-j {SERVICES}")),
                jump(
                    "POSTROUTING",
                    "brindle postrouting rules",
                    &format!("-j {POSTROUTING}"),
                ),
            ],
        },
        filter: TableRules {
            chains: filter_chains.into_iter().map(Arc::new).collect(),
            jumps: vec![
                // First in both chains: before any ACCEPT, and (FORWARD) before NAT outgoing
                // could give a pod its node's address.
                jump("INPUT", "brindle host guard", &format!("-j {HOST_GUARD}")),
                jump(
                    "FORWARD",
                    "brindle host guard",
                    &format!("-m set --match-set {all_hosts} dst -j {HOST_GUARD}"),
                ),
                // The routers too: masqueraded, a pod would reach them as its node.
                jump(
                    "FORWARD",
                    "brindle bgp peer guard",
                    &format!("-m set --match-set {bgp_peers} dst -j {HOST_GUARD}"),
                ),
                jump(
                    "INPUT",
                    "brindle load balancer firewall",
                    &format!("{new} -j {FIREWALL}"),
                ),
                jump(
                    "INPUT",
                    "brindle externally-visible service portals",
                    &format!("{new} -j {EXTERNAL_SERVICES}"),
                ),
                jump(
                    "FORWARD",
                    "brindle load balancer firewall",
                    &format!("{new} -j {FIREWALL}"),
                ),
                jump(
                    "FORWARD",
                    "brindle forwarding rules",
                    &format!("-j {FORWARD}"),
                ),
                jump("FORWARD", portals, &format!("{new} -j {SERVICES}")),
                jump(
                    "FORWARD",
                    "brindle externally-visible service portals",
                    &format!("{new} -j {EXTERNAL_SERVICES}"),
                ),
                jump(
                    "OUTPUT",
                    "brindle load balancer firewall",
                    &format!("{new} -j {FIREWALL}"),
                ),
                jump("OUTPUT", portals, &format!("{new} -j {SERVICES}")),
            ],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Protocol;

    #[test]
    fn comments_are_cut_on_a_character_boundary_and_lose_quotes() {
        let long = format!("{}/{}", "ü".repeat(63), "s".repeat(63));
        let c = safe_comment(&long);
        assert!(
            c.len() <= MAX_COMMENT && c.len() >= MAX_COMMENT - 1,
            "{}",
            c.len()
        );
        assert!(long.starts_with(&*c));
        assert_eq!(safe_comment("a \"b\"\n"), "a _b__");
        // The hash is of the whole comment: two names alike in their first 100 bytes
        // still differ.
        let a = Rule::new("C", &format!("{long}a"), "-j ACCEPT");
        let b = Rule::new("C", &format!("{long}b"), "-j ACCEPT");
        assert_ne!(a.hash, b.hash);
        let (a, b) = (a.to_string(), b.to_string());
        assert_ne!(a, b, "the hash is in the text");
        assert!(a.contains(&*c) && !a.contains(&long[..120]));
    }

    fn svc(eps: &[(u8, &str)]) -> ServicePort {
        ServicePort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            protocol: Protocol::Tcp,
            family: Family::V4,
            cluster_ip: Some("10.20.30.41".parse().unwrap()),
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            endpoints: eps
                .iter()
                .map(|(last, node)| Endpoint {
                    ip: std::net::Ipv4Addr::new(10, 180, 0, *last).into(),
                    port: 80,
                    node: Some(node.to_string()),
                    zone: None,
                    ready: true,
                    serving: true,
                    terminating: false,
                    for_nodes: None,
                    for_zones: None,
                })
                .collect(),
        }
    }
    fn ctx() -> NodeContext {
        NodeContext {
            node: "n1".into(),
            zone: None,
            masquerade_bit: 14,
        }
    }
    fn texts(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(Rule::to_string).collect()
    }

    #[test]
    fn chain_names_are_kube_proxys_hashes() {
        // The names kube-proxy's own tests expect (pkg/proxy/iptables/proxier_test.go).
        let s = svc(&[(1, "n1")]);
        assert_eq!(service_chain("SVC", &s), "BRL-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&s, &s.endpoints[0]),
            "BRL-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(ctx().mark(), "0x004000");
    }

    #[test]
    fn endpoints_get_one_over_n_minus_i() {
        let r = render(&svc(&[(1, "n1"), (2, "n2"), (3, "n2")]), &ctx());
        let svc_chain = &r.chains[0];
        assert_eq!(svc_chain.name, "BRL-SVC-XPGD46QRK7WJZT7O");
        let t = texts(&svc_chain.rules);
        assert!(t[0].contains("! --match-set brl40all-ipam-pools src -d 10.20.30.41/32"));
        assert!(t[1].contains("--probability 0.3333333333 -j BRL-SEP-"));
        assert!(t[2].contains("--probability 0.5000000000 -j BRL-SEP-"));
        assert!(!t[3].contains("statistic"));
        assert_eq!(r.chains.len(), 4); // SVC + 3 SEP
        assert!(r.chains[1].rules[1]
            .body()
            .ends_with("-p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80"));
        assert!(r.filter_services.is_empty());
    }

    #[test]
    fn no_endpoints_rejects_in_filter_and_makes_no_nat_chain() {
        let mut s = svc(&[]);
        s.node_port = Some(30080);
        s.external_ips = vec!["198.19.0.5".parse().unwrap()];
        let r = render(&s, &ctx());
        assert!(r.chains.is_empty() && r.nat_services.is_empty() && r.nat_nodeports.is_empty());
        assert!(texts(&r.filter_services)[0]
            .ends_with("-d 10.20.30.41/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"));
        let ext = texts(&r.filter_external);
        assert_eq!(ext.len(), 2);
        assert!(
            ext[1].contains("-m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REJECT")
        );
    }

    #[test]
    fn external_local_without_local_endpoints_drops_external_traffic_only() {
        let mut s = svc(&[(2, "n2")]);
        s.node_port = Some(30080);
        s.external_local = true;
        let r = render(&s, &ctx());
        // Cluster IP still works from here (internal policy Cluster).
        assert!(texts(&r.nat_services)[0].ends_with("-j BRL-SVC-XPGD46QRK7WJZT7O"));
        assert!(texts(&r.filter_external)[0].ends_with("--dport 30080 -j DROP"));
        let ext = r
            .chains
            .iter()
            .find(|c| c.name.starts_with("BRL-EXT-"))
            .unwrap();
        // Pod and node traffic short-circuits to the cluster chain; nothing goes to SVL.
        assert_eq!(ext.rules.len(), 3);
        assert!(!ext.rules.iter().any(|r| r.to_string().contains("BRL-SVL-")));
    }

    #[test]
    fn affinity_checks_come_before_the_random_choice() {
        let mut s = svc(&[(1, "n1"), (2, "n2")]);
        s.affinity_seconds = Some(10800);
        let r = render(&s, &ctx());
        let t = texts(&r.chains[0].rules);
        assert!(t[1].contains("--rcheck --seconds 10800 --reap --name BRL-SEP-"));
        assert!(t[3].contains("statistic"));
        assert!(r.chains[1].rules[1]
            .body()
            .contains("-m recent --set --name BRL-SEP-"));
    }

    #[test]
    fn hashes_differ_per_chain_and_text() {
        let a = Rule::new("A", "", "-j RETURN");
        assert_ne!(a.hash, Rule::new("B", "", "-j RETURN").hash);
        assert_ne!(a.hash, Rule::new("A", "", "-j ACCEPT").hash);
        assert_eq!(a, Rule::new("A", "", "-j RETURN"));
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn the_host_guard_comes_first_and_nat_outgoing_spares_host_ips() {
        let guard = NodeGuard {
            pod_blocked_ports: vec![179, 1790, 179],
            nat_outgoing_exclusions: NatOutgoingExclusions::IPPoolsAndHostIPs,
            workload_prefix: "brl".into(),
        };
        let r = assemble(&ctx(), &guard, []);
        let g = r
            .filter
            .chains
            .iter()
            .find(|c| c.name == HOST_GUARD)
            .unwrap();
        assert!(g.rules[0].body().ends_with(
            "-p tcp -m set --match-set brl40all-ipam-pools src -m multiport --dports 179,1790 -j DROP"
        ));
        let first = |chain: &str| r.filter.jumps.iter().find(|j| j.chain == chain).unwrap();
        assert!(first("INPUT").rule.body().ends_with("-j BRL-HOST-GUARD"));
        assert!(g.rules.last().unwrap().body().ends_with(
            "-p 4 -m addrtype --dst-type LOCAL -m set ! --match-set brl40all-hosts-net src -j DROP"
        ));
        assert_eq!(r.raw.jumps[0].chain, "PREROUTING");
        assert!(r.raw.chains[0].rules[0]
            .body()
            .ends_with("-i brl+ -m rpfilter --invert -j DROP"));
        assert!(first("FORWARD")
            .rule
            .body()
            .ends_with("-m set --match-set brl40all-hosts-net dst -j BRL-HOST-GUARD"));
        let nat = r
            .nat
            .chains
            .iter()
            .find(|c| c.name == NAT_OUTGOING)
            .unwrap();
        assert!(nat.rules[0].body().contains(
            "! --match-set brl40all-ipam-pools dst -m set ! --match-set brl40all-hosts-net dst"
        ));
        let calico = NodeGuard {
            nat_outgoing_exclusions: NatOutgoingExclusions::IPPoolsOnly,
            ..guard
        };
        let r = assemble(&ctx(), &calico, []);
        let nat = r
            .nat
            .chains
            .iter()
            .find(|c| c.name == NAT_OUTGOING)
            .unwrap();
        assert!(!nat.rules[0].body().contains(ALL_HOSTS_SET));
    }
}
