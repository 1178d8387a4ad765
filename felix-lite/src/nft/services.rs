//! Services, NAT outgoing and the node guard in nftables: kube-proxy's nftables structure
//! (REFERENCE §B5) writing the same [`Plan`] as the iptables renderer.
//!
//! A packet to a Service is one map lookup, whatever the number of Services:
//! `ip daddr . meta l4proto . th dport vmap @service-ips` leads to the service's chain, which
//! picks an endpoint with `numgen` (see [`endpoint_rules`] for why not kube-proxy's vmap). A changed Service changes its map
//! elements and its own chains; nothing else is written.
//!
//! | iptables (ours)                         | nftables                                    |
//! |-----------------------------------------|---------------------------------------------|
//! | nat `BRL-SERVICES` `-d ip --dport`      | map `service-ips` (cluster, external, LB)   |
//! | nat `BRL-NODEPORTS`                     | map `service-nodeports`                     |
//! | filter `BRL-SERVICES` REJECT/DROP       | map `no-endpoint-services` (cluster IPs)    |
//! | filter `BRL-EXTERNAL-SERVICES`          | maps `no-endpoint-external`, `-nodeports`   |
//! | nat `BRL-FW-` + filter firewall DROP    | map `firewall-ips` → `firewall-…` (pre-DNAT)|
//! | `BRL-SVC-`/`SVL-`/`EXT-`/`SEP-`         | `service-`/`local-`/`external-`/`endpoint-` |
//! | `-m recent` affinity                    | timeout sets `affinity-…`                   |
//! | ipsets `brl40…`                         | sets `all-ipam-pools`, …                    |

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};

use super::Rule;
use super::{hash8, rule, Hook, SetType, Table};
use crate::family::Family;
use crate::proxy::plan::{ChainKind, ExternalStep, NoEndpoint, Plan};
use crate::proxy::rules::{ALL_HOSTS_SET, ALL_POOLS_SET, BGP_PEERS_SET, MASQ_POOLS_SET};
use crate::proxy::{Endpoint, NatOutgoingExclusions, NodeContext, NodeGuard, ServicePort};

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_EXTERNAL: &str = "no-endpoint-external";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const MARK_MASQ: &str = "mark-for-masquerade";
pub const REJECT: &str = "reject-chain";
/// The pool and host sets, by the ipset names the agent hands both dataplanes.
pub const SETS: [(&str, &str); 4] = [
    (ALL_POOLS_SET, "all-ipam-pools"),
    (MASQ_POOLS_SET, "masq-ipam-pools"),
    (ALL_HOSTS_SET, "all-hosts-net"),
    (BGP_PEERS_SET, "bgp-peers"),
];
const ADDR_PROTO_PORT: &str = "ipv4_addr . inet_proto . inet_service";
const PROTO_PORT: &str = "inet_proto . inet_service";

/// The base chains and where they hook. Filter chains run before the usual filter
/// priority (0) and before DNAT (dstnat − 10, as kube-proxy's): a drop of ours is final
/// whatever other tables say, and the firewall sees the load balancer address, not the pod.
pub const HOOKS: [(&str, Hook); 8] = [
    ("raw-prerouting", hook("filter", "prerouting", -300)),
    ("filter-prerouting", hook("filter", "prerouting", -110)),
    ("filter-input", hook("filter", "input", -110)),
    ("filter-forward", hook("filter", "forward", -110)),
    ("filter-output", hook("filter", "output", -110)),
    ("nat-prerouting", hook("nat", "prerouting", -100)),
    ("nat-output", hook("nat", "output", -100)),
    ("nat-postrouting", hook("nat", "postrouting", 100)),
];

const fn hook(kind: &'static str, hook: &'static str, priority: i32) -> Hook {
    Hook {
        kind,
        hook,
        priority,
    }
}

/// What one service port adds to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceNft {
    pub chains: Vec<(String, Vec<Rule>)>,
    /// Affinity sets: name and timeout.
    pub affinity: Vec<(String, u32)>,
    /// (map, element).
    pub elements: Vec<(&'static str, String)>,
}

impl ServiceNft {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.1.len()).sum()
    }
}

/// kube-proxy's chain name base: `ns/name/protocol/port-name`.
fn name_base(svc: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        svc.protocol.lower(),
        svc.port_name
    )
}

/// `service-<hash>-ns/name/tcp/port` and the like.
pub fn service_chain(kind: ChainKind, svc: &ServicePort) -> String {
    let prefix = match kind {
        ChainKind::Cluster => "service",
        ChainKind::Local => "local",
        ChainKind::External => "external",
        ChainKind::Firewall => "firewall",
    };
    let base = name_base(svc);
    format!("{prefix}-{}-{base}", hash8(&base))
}

/// An IPv6 address's colons become dots: `:` is not a character of an nft identifier (the
/// chain and set names are written unquoted).
fn endpoint_base(svc: &ServicePort, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    format!("{}__{ip}/{}", name_base(svc), ep.port)
}

pub fn endpoint_chain(svc: &ServicePort, ep: &Endpoint) -> String {
    let base = endpoint_base(svc, ep);
    format!("endpoint-{}-{base}", hash8(&base))
}

/// The timeout is in the hash: a new timeout is a new set (a set's declaration cannot
/// change in place, and a differing one would rewrite the whole table).
fn affinity_set(svc: &ServicePort, ep: &Endpoint) -> String {
    let base = endpoint_base(svc, ep);
    let secs = svc.affinity_seconds.unwrap_or_default();
    format!("affinity-{}-{base}", hash8(&format!("{base}/{secs}")))
}

fn key(ip: IpAddr, svc: &ServicePort, port: u16) -> String {
    format!("{ip} . {} . {port}", svc.protocol.lower())
}

fn verdict(n: NoEndpoint) -> String {
    match n {
        NoEndpoint::Reject => format!("goto {REJECT}"),
        NoEndpoint::Drop => "drop".into(),
    }
}

/// The elements and chains of one service port on the node described by `ctx`.
pub fn render(svc: &ServicePort, ctx: &NodeContext) -> ServiceNft {
    let mut out = ServiceNft::default();
    let plan = Plan::new(svc, ctx);
    let spn = svc.port_name_string();
    let chain_of = |k| service_chain(k, svc);
    let ext_chain = chain_of(ChainKind::External);
    let svc_chain = chain_of(ChainKind::Cluster);
    let has_any = plan.cat.has_any;
    let refuse = verdict(plan.no_endpoint);
    let proto = svc.protocol.lower();
    let f = svc.family.nft();

    if let Some(cip) = svc.cluster_ip {
        let k = key(cip, svc, svc.port);
        match plan.internal {
            Some(c) => out
                .elements
                .push((SERVICE_IPS, format!("{k} : goto {}", chain_of(c)))),
            None => out
                .elements
                .push((NO_ENDPOINT_SERVICES, format!("{k} : {refuse}"))),
        }
    }
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        let k = key(*ip, svc, svc.port);
        if has_any {
            out.elements
                .push((SERVICE_IPS, format!("{k} : goto {ext_chain}")));
        }
        if !plan.has_external {
            out.elements
                .push((NO_ENDPOINT_EXTERNAL, format!("{k} : {refuse}")));
        }
    }
    if plan.uses_firewall {
        let fw = chain_of(ChainKind::Firewall);
        for ip in &svc.load_balancer_ips {
            out.elements.push((
                FIREWALL_IPS,
                format!("{} : goto {fw}", key(*ip, svc, svc.port)),
            ));
        }
        // The ranges, and the load balancer itself (hairpin through it), may come in.
        let allowed: Vec<String> = svc
            .load_balancer_source_ranges
            .iter()
            .copied()
            .chain(svc.load_balancer_ips.iter().map(|ip| IpNetwork::from(*ip)))
            .map(net_any)
            .collect();
        let r = rule(
            &fw,
            &format!("{spn} traffic not accepted by the source ranges"),
            &format!("{f} saddr != {{ {} }} drop", allowed.join(", ")),
        );
        out.chains.push((fw, vec![r]));
    }
    if let Some(np) = svc.node_port {
        let k = format!("{proto} . {np}");
        if has_any {
            out.elements
                .push((SERVICE_NODEPORTS, format!("{k} : goto {ext_chain}")));
        }
        if !plan.has_external {
            out.elements
                .push((NO_ENDPOINT_NODEPORTS, format!("{k} : {refuse}")));
        }
    }
    if !has_any {
        return out;
    }
    if plan.uses_cluster {
        let mut rules = vec![];
        if let Some(cip) = svc.cluster_ip {
            // Off-cluster sources reaching the cluster IP are masqueraded.
            rules.push(rule(
                &svc_chain,
                &format!("{spn} cluster IP"),
                &format!(
                    "{f} daddr {cip} {proto} dport {} {f} saddr != @all-ipam-pools jump {MARK_MASQ}",
                    svc.port
                ),
            ));
        }
        endpoint_rules(&mut rules, &svc_chain, svc, &plan.cat.cluster);
        out.chains.push((svc_chain.clone(), rules));
    }
    if plan.uses_local {
        let chain = chain_of(ChainKind::Local);
        let mut rules = vec![];
        endpoint_rules(&mut rules, &chain, svc, &plan.cat.local);
        out.chains.push((chain, rules));
    }
    if svc.externally_accessible() {
        let rules = plan
            .external
            .iter()
            .map(|step| match step {
                ExternalStep::MasqueradeAll => rule(
                    &ext_chain,
                    &format!("masquerade traffic for {spn} external destinations"),
                    &format!("jump {MARK_MASQ}"),
                ),
                ExternalStep::PodsToCluster => rule(
                    &ext_chain,
                    &format!("pod traffic for {spn} external destinations"),
                    &format!("{f} saddr @all-ipam-pools goto {svc_chain}"),
                ),
                ExternalStep::MasqueradeLocalSource => rule(
                    &ext_chain,
                    &format!("masquerade LOCAL traffic for {spn} external destinations"),
                    &format!("fib saddr type local jump {MARK_MASQ}"),
                ),
                ExternalStep::LocalSourceToCluster => rule(
                    &ext_chain,
                    &format!("route LOCAL traffic for {spn} external destinations"),
                    &format!("fib saddr type local goto {svc_chain}"),
                ),
                ExternalStep::To(k) => rule(&ext_chain, "", &format!("goto {}", chain_of(*k))),
            })
            .collect();
        out.chains.push((ext_chain, rules));
    }
    let mut seen = std::collections::BTreeSet::new();
    for ep in plan.cat.cluster.iter().chain(plan.cat.local.iter()) {
        let name = endpoint_chain(svc, ep);
        if !seen.insert(name.clone()) {
            continue;
        }
        let update = match svc.affinity_seconds {
            Some(secs) => {
                let set = affinity_set(svc, ep);
                let u = format!("update @{set} {{ {f} saddr }} ");
                out.affinity.push((set, secs));
                u
            }
            None => String::new(),
        };
        let rules = vec![
            rule(&name, "", &format!("{f} saddr {} jump {MARK_MASQ}", ep.ip)),
            rule(
                &name,
                "",
                &format!("{update}meta l4proto {proto} dnat to {}", ep.addr()),
            ),
        ];
        out.chains.push((name, rules));
    }
    out
}

/// Affinity first (a client seen within the timeout goes to the same endpoint), then one
/// random pick among `eps`: rule i of n jumps with probability 1/(n−i)
/// (`numgen random mod (n−i) == 0`), the last always, as iptables' `statistic` rules do.
/// Not kube-proxy's one `numgen random mod n vmap { … }`: each such rule is an anonymous map,
/// and loading them is quadratic in their number (measured with nft 1.0.6: 8,000 services'
/// maps took 6.5 s, the same choice as rules 0.64 s for 40,000 rules).
fn endpoint_rules(rules: &mut Vec<Rule>, chain: &str, svc: &ServicePort, eps: &[&Endpoint]) {
    let spn = svc.port_name_string();
    if svc.affinity_seconds.is_some() {
        for ep in eps {
            rules.push(rule(
                chain,
                &format!("{spn} -> {}", ep.addr()),
                &format!(
                    "{} saddr @{} goto {}",
                    svc.family.nft(),
                    affinity_set(svc, ep),
                    endpoint_chain(svc, ep)
                ),
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let to = endpoint_chain(svc, ep);
        let body = if i + 1 < n {
            format!("numgen random mod {} == 0 goto {to}", n - i)
        } else {
            format!("goto {to}")
        };
        rules.push(rule(chain, &format!("{spn} -> {}", ep.addr()), &body));
    }
}

/// A prefix in the kernel's canonical form (a /32 is a bare address).
pub fn net(n: Ipv4Network) -> String {
    net_any(IpNetwork::V4(n))
}

/// [`net`] for either family (an IPv6 /128 is a bare address too).
pub fn net_any(n: IpNetwork) -> String {
    let host = if n.is_ipv4() { 32 } else { 128 };
    if n.prefix() == host {
        n.ip().to_string()
    } else {
        format!("{}/{}", n.network(), n.prefix())
    }
}

/// Prefixes without any inside another (an interval set refuses overlaps).
fn outermost(nets: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut v: Vec<IpNetwork> = nets
        .iter()
        .map(|n| IpNetwork::new(n.network(), n.prefix()).unwrap_or(*n))
        .collect();
    v.sort_by_key(|n| (n.prefix(), n.network()));
    let mut out: Vec<IpNetwork> = vec![];
    for n in v {
        if !out.iter().any(|o| o.contains(n.network())) {
            out.push(n);
        }
    }
    out
}

/// The address . protocol . port key of a family's maps.
const fn addr_proto_port(family: Family) -> &'static str {
    match family {
        Family::V4 => ADDR_PROTO_PORT,
        Family::V6 => "ipv6_addr . inet_proto . inet_service",
    }
}

/// The whole table: fixed chains, the pool and host sets (by their ipset names, as
/// `sync_sets` takes them), and every service's elements and chains.
pub fn assemble<'a>(
    ctx: &NodeContext,
    guard: &NodeGuard,
    sets: &std::collections::BTreeMap<String, Vec<IpNetwork>>,
    services: impl IntoIterator<Item = &'a ServiceNft>,
) -> Table {
    assemble_family(Family::V4, ctx, guard, sets, services)
}

/// [`assemble`] for the table of `family` (`ip6 brindle`: the same chains over IPv6
/// addresses, and no IPIP rule).
pub fn assemble_family<'a>(
    family: Family,
    ctx: &NodeContext,
    guard: &NodeGuard,
    sets: &std::collections::BTreeMap<String, Vec<IpNetwork>>,
    services: impl IntoIterator<Item = &'a ServiceNft>,
) -> Table {
    let f = family.nft();
    let mut t = Table::default();
    for (name, h) in HOOKS {
        t.chain(name).hook = Some(h);
    }
    for (ipset, name) in SETS {
        let s = t.set(name, SetType::addresses_of(family));
        if let Some(nets) = sets.get(&family.set_name(ipset)) {
            s.elements = outermost(nets).into_iter().map(net_any).collect();
        }
    }
    for m in [
        SERVICE_IPS,
        NO_ENDPOINT_SERVICES,
        NO_ENDPOINT_EXTERNAL,
        FIREWALL_IPS,
    ] {
        t.set(m, SetType::verdicts(addr_proto_port(family)));
    }
    for m in [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS] {
        t.set(m, SetType::verdicts(PROTO_PORT));
    }
    let m = 1u32 << ctx.masquerade_bit;
    let new = "ct state new";
    // Anti-spoofing: a pod's packet whose source is not routed back to its interface.
    t.push(
        "raw-prerouting",
        "brindle: a pod sends only from its own addresses",
        &format!(
            "iifname \"{}*\" fib saddr . iif oif missing counter drop",
            guard.workload_prefix
        ),
    );
    t.push(
        "filter-prerouting",
        "",
        &format!("{new} jump firewall-check"),
    );
    t.push("filter-output", "", &format!("{new} jump firewall-check"));
    t.push(
        "firewall-check",
        "",
        &format!("{f} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"),
    );
    t.push("filter-input", "brindle host guard", "jump host-guard");
    t.push(
        "filter-forward",
        "brindle host guard",
        &format!("{f} daddr @all-hosts-net jump host-guard"),
    );
    t.push(
        "filter-forward",
        "brindle bgp peer guard",
        &format!("{f} daddr @bgp-peers jump host-guard"),
    );
    for chain in ["filter-forward", "filter-output"] {
        t.push(chain, "", &format!("{new} jump service-endpoints-check"));
    }
    for chain in ["filter-input", "filter-forward"] {
        t.push(chain, "", &format!("{new} jump external-endpoints-check"));
    }
    t.push(
        "service-endpoints-check",
        "",
        &format!("{f} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
    );
    t.push(
        "external-endpoints-check",
        "",
        &format!("{f} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_EXTERNAL}"),
    );
    t.push(
        "external-endpoints-check",
        "",
        &format!("fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
    );
    t.push(REJECT, "", "reject");
    let mut ports = guard.pod_blocked_ports.clone();
    ports.sort();
    ports.dedup();
    if !ports.is_empty() {
        let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
        t.push(
            "host-guard",
            "brindle: no pod reaches a BGP port of a node or a node's peer",
            &format!(
                "{f} saddr @all-ipam-pools tcp dport {{ {} }} counter drop",
                list.join(", ")
            ),
        );
    }
    if family == Family::V4 {
        t.push(
            "host-guard",
            "brindle: IPIP only from the nodes",
            "meta l4proto 4 fib daddr type local ip saddr != @all-hosts-net counter drop",
        );
    }
    for chain in ["nat-prerouting", "nat-output"] {
        t.push(chain, "brindle service portals", "jump services");
    }
    t.push(
        "services",
        "",
        &format!("{f} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
    );
    t.push(
        "services",
        "brindle service nodeports",
        &format!(
            "fib daddr type local {f} daddr != {} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            family.loopback()
        ),
    );
    t.push(MARK_MASQ, "", &format!("meta mark set meta mark | {m:#x}"));
    t.push("nat-postrouting", "", "jump nat-outgoing");
    t.push("nat-postrouting", "", "jump masquerading");
    let hosts = match guard.nat_outgoing_exclusions {
        NatOutgoingExclusions::IPPoolsOnly => "",
        NatOutgoingExclusions::IPPoolsAndHostIPs => &*format!(" {f} daddr != @all-hosts-net"),
    };
    t.push(
        "nat-outgoing",
        "brindle nat outgoing",
        &format!(
            "{f} saddr @masq-ipam-pools {f} daddr != @all-ipam-pools{hosts} masquerade fully-random"
        ),
    );
    t.push(
        "masquerading",
        "",
        &format!("meta mark & {m:#x} == 0 return"),
    );
    t.push(
        "masquerading",
        "",
        &format!("meta mark set meta mark ^ {m:#x}"),
    );
    t.push(
        "masquerading",
        "brindle service traffic requiring SNAT",
        "masquerade fully-random",
    );
    for s in services {
        for (map, e) in &s.elements {
            t.map_element(map, e);
        }
        for (name, secs) in &s.affinity {
            let ty = SetType {
                key: family.nft_addr(),
                verdict_map: false,
                interval: false,
                timeout: Some(*secs),
            };
            t.set(name, ty);
        }
        for (name, rules) in &s.chains {
            t.chain(name).rules = rules.clone();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Protocol;

    fn svc(eps: &[(u8, &str)]) -> ServicePort {
        let eps = eps
            .iter()
            .map(|(last, node)| {
                Endpoint::ready(std::net::Ipv4Addr::new(10, 180, 0, *last), 8080, node)
            })
            .collect();
        let ip: std::net::IpAddr = "10.20.30.41".parse().unwrap();
        ServicePort::cluster_ip("ns1", "svc1", "p80", Protocol::Tcp, ip, 80, eps)
    }
    fn ctx() -> NodeContext {
        NodeContext {
            node: "n1".into(),
            zone: None,
            masquerade_bit: 14,
        }
    }
    fn texts(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| r.text.split(" comment ").next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn names_follow_kube_proxy() {
        let s = svc(&[(1, "n1")]);
        let c = service_chain(ChainKind::Cluster, &s);
        assert!(
            c.starts_with("service-") && c.ends_with("-ns1/svc1/tcp/p80"),
            "{c}"
        );
        let e = endpoint_chain(&s, &s.endpoints[0]);
        assert!(e.ends_with("-ns1/svc1/tcp/p80__10.180.0.1/8080"), "{e}");
    }

    #[test]
    fn a_cluster_ip_is_one_map_element_and_endpoints_are_picked_by_numgen() {
        let s = svc(&[(1, "n1"), (2, "n2"), (3, "n2")]);
        let r = render(&s, &ctx());
        let chain = service_chain(ChainKind::Cluster, &s);
        assert_eq!(
            r.elements,
            vec![(
                SERVICE_IPS,
                format!("10.20.30.41 . tcp . 80 : goto {chain}")
            )]
        );
        let (name, rules) = &r.chains[0];
        assert_eq!(name, &chain);
        let t = texts(rules);
        assert_eq!(
            t[0],
            "ip daddr 10.20.30.41 tcp dport 80 ip saddr != @all-ipam-pools jump mark-for-masquerade"
        );
        assert!(t[1].starts_with("numgen random mod 3 == 0 goto endpoint-"));
        assert!(t[2].starts_with("numgen random mod 2 == 0 goto endpoint-"));
        assert!(t[3].starts_with("goto endpoint-"));
        assert_eq!(r.chains.len(), 4);
        assert_eq!(
            texts(&r.chains[1].1)[1],
            "meta l4proto tcp dnat to 10.180.0.1:8080"
        );
    }

    #[test]
    fn no_endpoints_rejects_through_the_maps() {
        let mut s = svc(&[]);
        s.node_port = Some(30080);
        s.external_ips = vec!["198.19.0.5".parse().unwrap()];
        let r = render(&s, &ctx());
        assert!(r.chains.is_empty());
        assert_eq!(
            r.elements,
            vec![
                (
                    NO_ENDPOINT_SERVICES,
                    "10.20.30.41 . tcp . 80 : goto reject-chain".to_string()
                ),
                (
                    NO_ENDPOINT_EXTERNAL,
                    "198.19.0.5 . tcp . 80 : goto reject-chain".to_string()
                ),
                (
                    NO_ENDPOINT_NODEPORTS,
                    "tcp . 30080 : goto reject-chain".to_string()
                ),
            ]
        );
    }

    #[test]
    fn external_local_without_local_endpoints_drops_external_traffic_only() {
        let mut s = svc(&[(2, "n2")]);
        s.node_port = Some(30080);
        s.external_local = true;
        let r = render(&s, &ctx());
        assert!(r
            .elements
            .contains(&(NO_ENDPOINT_NODEPORTS, "tcp . 30080 : drop".to_string())));
        assert!(r.elements[0].1.contains(": goto service-"));
        let ext = r
            .chains
            .iter()
            .find(|c| c.0.starts_with("external-"))
            .unwrap();
        assert_eq!(ext.1.len(), 3);
        assert!(!ext.1.iter().any(|r| r.text.contains("local-")));
    }

    #[test]
    fn affinity_sets_are_checked_first_and_updated_on_the_way_in() {
        let mut s = svc(&[(1, "n1"), (2, "n2")]);
        s.affinity_seconds = Some(10800);
        let r = render(&s, &ctx());
        let t = texts(&r.chains[0].1);
        assert!(t[1].starts_with("ip saddr @affinity-") && t[1].contains(" goto endpoint-"));
        assert!(t[3].starts_with("numgen random mod 2 == 0 goto"));
        assert_eq!(r.affinity.len(), 2);
        assert_eq!(r.affinity[0].1, 10800);
        assert!(texts(&r.chains[1].1)[1].starts_with("update @affinity-"));
    }

    #[test]
    fn load_balancer_source_ranges_are_checked_before_dnat() {
        let mut s = svc(&[(1, "n1")]);
        s.load_balancer_ips = vec!["198.19.1.1".parse().unwrap()];
        s.load_balancer_source_ranges = vec!["198.18.0.0/16".parse().unwrap()];
        let r = render(&s, &ctx());
        assert!(r
            .elements
            .iter()
            .any(|(m, e)| *m == FIREWALL_IPS
                && e.starts_with("198.19.1.1 . tcp . 80 : goto firewall-")));
        let fw = r
            .chains
            .iter()
            .find(|c| c.0.starts_with("firewall-"))
            .unwrap();
        assert_eq!(
            texts(&fw.1)[0],
            "ip saddr != { 198.18.0.0/16, 198.19.1.1 } drop"
        );
    }

    #[test]
    fn a_second_service_on_the_same_address_and_port_is_left_out_not_the_whole_table() {
        let mut a = svc(&[(1, "n1")]);
        a.node_port = Some(30080);
        let mut b = a.clone();
        b.name = "svc2".into();
        let guard = NodeGuard {
            pod_blocked_ports: vec![],
            nat_outgoing_exclusions: Default::default(),
            workload_prefix: "brl".into(),
        };
        let r = [render(&a, &ctx()), render(&b, &ctx())];
        let t = assemble(&ctx(), &guard, &Default::default(), &r);
        let ips = &t.sets[SERVICE_IPS].elements;
        assert_eq!(ips.len(), 1);
        assert!(ips.iter().next().unwrap().contains("ns1/svc1/"));
        assert_eq!(t.sets[SERVICE_NODEPORTS].elements.len(), 1);
        assert_eq!(t.conflicts.len(), 2, "{:?}", t.conflicts);
        assert!(t.conflicts[0].starts_with("service-ips: 10.20.30.41 . tcp . 80 : goto service-"));
    }

    #[test]
    fn pool_sets_lose_nested_prefixes() {
        let nets: Vec<IpNetwork> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.168.0.0/24",
            "198.18.0.1/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let o: Vec<String> = outermost(&nets).into_iter().map(net_any).collect();
        assert_eq!(o, vec!["10.0.0.0/8", "192.168.0.0/24", "198.18.0.1"]);
        let v6: Vec<IpNetwork> = ["fd00::/64", "fd00::40/122", "2001:db8::1/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let o: Vec<String> = outermost(&v6).into_iter().map(net_any).collect();
        assert_eq!(o, vec!["fd00::/64", "2001:db8::1"]);
    }
}
