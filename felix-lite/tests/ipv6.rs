//! The IPv6 rules (issue 31) against the real tools, in a namespace of the test's own: one
//! renderer writes both families, the IPv6 ruleset (node guard, NAT outgoing, NetworkPolicy
//! over the pods' IPv6 addresses, neighbour discovery let through) is taken by
//! `ip6tables-legacy-restore` and by `nft` into `table ip6 brindle`, reads back as written
//! (a restart writes nothing), a relabel is one element, and the IPv4 rules are untouched.

use std::collections::BTreeMap;

use brindle_felix_lite::family::Family;
use brindle_felix_lite::iptables::{Backend, Runner, Writer as IptWriter};
use brindle_felix_lite::nft::services::assemble_family;
use brindle_felix_lite::nft::writer::Writer as NftWriter;
use brindle_felix_lite::policy::{PolicyContext, SetSpec};
use brindle_felix_lite::proxy::rules::{
    self, ALL_HOSTS_SET, ALL_POOLS_SET, BGP_PEERS_SET, MASQ_POOLS_SET,
};
use brindle_felix_lite::proxy::Protocol;
use brindle_policy::compile::Program;
use brindle_policy::model::{Namespace, Namespaces, Peer, Pod, Policy, Port, Rule, Selector};
use brindle_policy::World;
use brindle_testsupport::Netns;
use ipnetwork::IpNetwork;

mod common;
use common::{ctx, guard, local_endpoints};

fn runner(ns: &Netns) -> Runner {
    Runner {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
        ..Default::default()
    }
}

/// IPv6's pool and host sets, by their ipset names.
fn sets6() -> BTreeMap<String, Vec<IpNetwork>> {
    let f = Family::V6;
    let n = |s: &str| -> IpNetwork { s.parse().unwrap() };
    BTreeMap::from([
        (f.set_name(ALL_POOLS_SET), vec![n("fd00:10:244::/64")]),
        (f.set_name(MASQ_POOLS_SET), vec![n("fd00:10:244::/64")]),
        (
            f.set_name(ALL_HOSTS_SET),
            vec![n("2001:db8:18::10/128"), n("2001:db8:18::11/128")],
        ),
        (f.set_name(BGP_PEERS_SET), vec![n("2001:db8:18::1/128")]),
    ])
}

/// Pods with an address of each family; `web` admits `client`s by selector and an IPv6
/// block but one address, on a named port and an SCTP range.
fn world() -> (World, Vec<Pod>) {
    let sel = |v: &str| Selector::label("app", v);
    let pod = |name: &str, app: &str, v4: &str, v6: &str| {
        let mut p = Pod::running("x", name, "n1", v4.parse().unwrap())
            .label("app", app)
            .port("http", Protocol::Tcp, 8080);
        p.ips = [p.ips[0], v6.parse().unwrap()].into();
        p
    };
    let mut w = World::default();
    w.namespaces.insert("x".into(), Namespace::new("x", &[]));
    w.policies.push(Policy {
        namespace: "x".into(),
        name: "web".into(),
        pods: sel("web"),
        ingress: Some(vec![Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: Namespaces::Own,
                    pods: sel("client"),
                },
                Peer::Block {
                    cidr: "2001:db8:51::/48".parse().unwrap(),
                    except: vec!["2001:db8:51::7/128".parse().unwrap()],
                },
                // Only IPv4's rules have this one.
                Peer::Block {
                    cidr: "198.51.100.0/24".parse().unwrap(),
                    except: vec![],
                },
            ],
            ports: vec![
                Port::Named {
                    protocol: Protocol::Tcp,
                    name: "http".into(),
                },
                Port::Range {
                    protocol: Protocol::Sctp,
                    from: 5000,
                    to: 5010,
                },
            ],
        }]),
        egress: Some(vec![]),
    });
    let pods = vec![
        pod("web", "web", "10.244.0.1", "fd00:10:244::1"),
        pod("c1", "client", "10.244.0.2", "fd00:10:244::2"),
        pod("c2", "other", "10.244.0.3", "fd00:10:244::3"),
    ];
    (w, pods)
}

/// IPv6 Services: a NodePort with affinity, a load balancer with source ranges, one with no
/// endpoints (REJECT with ICMPv6), endpoints of both kinds of address.
fn services6() -> Vec<brindle_felix_lite::proxy::ServicePort> {
    use brindle_felix_lite::proxy::{Endpoint, ServicePort};
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let mut web = ServicePort::cluster_ip(
        "x",
        "web",
        "http",
        Protocol::Tcp,
        ip("fd00:10:96::a"),
        80,
        vec![
            Endpoint::ready(ip("fd00:10:244::1"), 8080, "n1"),
            Endpoint::ready(ip("fd00:10:244::2"), 8080, "n2"),
        ],
    );
    web.node_port = Some(30080);
    web.affinity_seconds = Some(600);
    let mut lb = ServicePort::cluster_ip(
        "x",
        "lb",
        "",
        Protocol::Udp,
        ip("fd00:10:96::b"),
        53,
        vec![Endpoint::ready(ip("fd00:10:244::3"), 5353, "n1")],
    );
    lb.load_balancer_ips = vec![ip("2001:db8:19::5")];
    lb.load_balancer_source_ranges = vec!["2001:db8:18::/64".parse().unwrap()];
    lb.external_ips = vec![ip("2001:db8:19::6")];
    let empty = ServicePort::cluster_ip(
        "x",
        "none",
        "",
        Protocol::Tcp,
        ip("fd00:10:96::c"),
        80,
        vec![],
    );
    vec![web, lb, empty]
}

fn ctx6() -> PolicyContext {
    PolicyContext {
        family: Family::V6,
        log_denied: Some(30),
        ..Default::default()
    }
}

#[test]
fn the_ipv6_table_is_taken_by_nft_and_reads_back() {
    use brindle_felix_lite::nft::policy::{merge, Renderer};
    let ns = Netns::new("brl-v6n");
    let (w, mut pods) = world();
    let local = local_endpoints(&pods);
    // The IPv4 table first: it stays as it is.
    let mut v4 = common::writer(&ns);
    let t4 = assemble_family(Family::V4, &ctx(), &guard(), &common::sets(), []);
    v4.sync(&t4).expect("the ip table");
    let before = ns.ok(&["nft", "list", "table", "ip", "brindle"]);
    let mut r = Renderer::default();
    let mut wr = NftWriter::for_family(Family::V6, runner(&ns));
    let svcs: Vec<_> = services6()
        .iter()
        .map(|s| brindle_felix_lite::nft::services::render(s, &ctx()))
        .collect();
    let mut want = |pods: &[Pod]| {
        let mut t = assemble_family(Family::V6, &ctx(), &guard(), &sets6(), &svcs);
        merge(
            &mut t,
            &r.render(&Program::compile(&w, pods), &local, &ctx6()),
        );
        t
    };
    wr.sync(&want(&pods)).expect("the ip6 table");
    wr.invalidate();
    let rep = wr.sync(&want(&pods)).expect("re-read");
    assert!(!rep.wrote(), "{rep:?}\n{}", wr.last_input);
    pods[2].labels.insert("app", "client");
    let rep = wr.sync(&want(&pods)).expect("relabel");
    assert_eq!(
        (rep.elements_added, rep.elements_deleted, rep.chains_written),
        (1, 0, 0),
        "{}",
        wr.last_input
    );
    assert!(
        wr.last_input.contains("fd00:10:244::3"),
        "{}",
        wr.last_input
    );
    let six = ns.ok(&["nft", "list", "table", "ip6", "brindle"]);
    for want in [
        "ip6 saddr @all-ipam-pools tcp dport 179",
        "ip6 saddr 2001:db8:51::/48 ip6 saddr != 2001:db8:51::7",
        "fd00:10:244::1",
        "2001:db8:18::10",
        "icmpv6 type",
        "fib saddr . iif oif missing",
        // The Services: map keys of IPv6 addresses, DNAT to [address]:port, affinity sets
        // of IPv6 addresses, the source-range firewall, nodeports.
        "fd00:10:96::a . tcp . 80 : goto service-",
        "dnat to [fd00:10:244::1]:8080",
        "update @affinity-",
        "ip6 saddr != { 2001:db8:18::/64, 2001:db8:19::5 } drop",
        "tcp . 30080 : goto external-",
        "fd00:10:96::c . tcp . 80 : goto reject-chain",
    ] {
        assert!(six.contains(want), "{want:?} not in\n{six}");
    }
    // IPv4 only: not in the IPv6 table.
    for not in ["198.51.100.0", "10.244.0.", "meta l4proto 4"] {
        assert!(!six.contains(not), "{not:?} in\n{six}");
    }
    assert_eq!(ns.ok(&["nft", "list", "table", "ip", "brindle"]), before);
}

#[test]
fn the_ipv6_ruleset_is_taken_by_ip6tables_and_reads_back() {
    use brindle_felix_lite::policy::{merge, Renderer};
    let ns = Netns::new("brl-v6i");
    let (w, pods) = world();
    let local = local_endpoints(&pods);
    let mut r = Renderer::default();
    let rendered = r.render(&Program::compile(&w, &pods), &local, &ctx6());
    let svcs: Vec<_> = services6()
        .iter()
        .map(|s| rules::render(s, &ctx()))
        .collect();
    let mut ruleset = rules::assemble_family(Family::V6, &ctx(), &guard(), &svcs);
    merge(&mut ruleset, &rendered);
    let mut wr = IptWriter::for_family(Backend::Legacy, Family::V6, runner(&ns));
    wr.keep_input = true;
    wr.sync_sets(&sets6()).expect("pool sets");
    wr.sync_policy_sets(&rendered.sets).expect("policy sets");
    wr.sync(&ruleset).expect("ip6tables-restore");
    wr.invalidate();
    let rep = wr.sync(&ruleset).expect("re-read");
    assert_eq!(
        (rep.chains_written, rep.jumps_inserted),
        (0, 0),
        "{}",
        wr.last_input
    );
    let saved = ns.ok(&["ip6tables-legacy-save"]);
    for want in [
        "--match-set brl60all-ipam-pools src -m multiport --dports 179 -j DROP",
        "--icmpv6-type 135 -j ACCEPT",
        "-m rpfilter --invert -j DROP",
        "--match-set brl60masq-ipam-pools src",
        "-A BRL-SERVICES -d fd00:10:96::a/128 -p tcp",
        "--to-destination [fd00:10:244::1]:8080",
        "--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "-s 2001:db8:18::/64 -m comment",
        "--reject-with icmp6-port-unreachable",
        "! -d ::1/128",
    ] {
        assert!(saved.contains(want), "{want:?} not in\n{saved}");
    }
    assert!(!saved.contains("-p 4 "), "{saved}");
    // The sets are of family inet6 and hold the pods' IPv6 addresses only.
    let names: Vec<&SetSpec> = rendered.sets.iter().map(|s| &**s).collect();
    assert!(
        names.iter().all(|s| s.name.starts_with("brl60")),
        "{names:?}"
    );
    let listed = ns.ok(&["ipset", "list"]);
    assert!(listed.contains("family inet6"), "{listed}");
    assert!(listed.contains("fd00:10:244::2"), "{listed}");
    assert!(!listed.contains("10.244.0.2"), "{listed}");
    // Nothing of ours in the IPv4 tables.
    let v4 = ns.ok(&["iptables-legacy-save"]);
    assert!(!v4.contains("BRL-"), "{v4}");
}
