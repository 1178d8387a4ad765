//! Changes written by netlink are the rules `nft` would write: the same table is loaded into
//! one namespace through `nft` alone and into another with every chain and element a
//! partial sync may write going by netlink, and the kernel's own listing of the two
//! (expressions, registers and all: `nft --debug=netlink list table`) must be identical.
//! The renderers' output covers every form they write: Services with every feature and
//! NetworkPolicy with every kind of peer and port, `--log-denied` on.

use std::net::Ipv4Addr;

use brindle_felix_lite::nft::expr::{compile, split_comment};
use brindle_felix_lite::nft::policy::{merge, Renderer};
use brindle_felix_lite::nft::services::{assemble, render, ServiceNft};
use brindle_felix_lite::nft::writer::Writer;
use brindle_felix_lite::nft::{rule, Table};
use brindle_felix_lite::policy::PolicyContext;
use brindle_felix_lite::proxy::{Endpoint, Protocol, ServicePort};
use brindle_policy::compile::Program;
use brindle_policy::model::{Namespace, Namespaces, Peer, Pod, Policy, Port, Rule, Selector};
use brindle_policy::World;
use brindle_testsupport::Netns;

mod common;
use common::{ctx, guard, local_endpoints, sets};

fn writer(ns: &Netns, netlink: bool) -> Writer {
    let mut w = common::writer(ns);
    w.set_netlink(netlink);
    w
}

/// Services with every feature the renderer has: node ports, load balancers with and
/// without source ranges, external IPs, affinity, local traffic policies, no endpoints,
/// and names as long as the API allows (a comment nft would refuse, cut).
fn services(n: u8) -> Vec<ServicePort> {
    (0u8..n)
        .map(|i| {
            let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][usize::from(i % 3)];
            let endpoints = (0..i % 5)
                .map(|e| {
                    let node = if e % 2 == 0 { "n1" } else { "n2" };
                    Endpoint::ready(Ipv4Addr::new(10, 244, i, e + 1), 8080 + u16::from(e), node)
                })
                .collect();
            let (ns, name) = if i == 7 {
                ("n".repeat(63), "s".repeat(63))
            } else {
                ("ns".to_string(), format!("s{i}"))
            };
            let ip = Ipv4Addr::new(10, 96, 0, i);
            let mut s = ServicePort::cluster_ip(&ns, &name, "http", protocol, ip, 80, endpoints);
            s.node_port = (i % 3 == 0).then_some(30000 + u16::from(i));
            if i % 4 == 0 {
                s.load_balancer_ips = vec![Ipv4Addr::new(198, 19, 0, i).into()];
            }
            if i % 8 == 0 {
                s.load_balancer_source_ranges = vec!["198.18.0.0/16".parse().unwrap()];
            }
            if i % 6 == 1 {
                s.external_ips = vec![Ipv4Addr::new(198, 19, 1, i).into()];
            }
            s.affinity_seconds = (i % 5 == 0).then_some(600);
            s.external_local = i % 7 == 2;
            s.internal_local = i % 9 == 3;
            s
        })
        .collect()
}

fn policy_world() -> (World, Vec<Pod>) {
    let sel = |v: &str| Selector::label("app", v);
    let pod = |name: &str, app: &str, ip: &str| {
        Pod::running("x", name, "n1", ip.parse().unwrap())
            .label("app", app)
            .port("http", Protocol::Tcp, 8080)
    };
    let mut w = World::default();
    w.namespaces.insert("x".into(), Namespace::new("x", &[]));
    let block = |cidr: &str, except: &[&str]| Peer::Block {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    };
    let rules = vec![
        Rule {
            peers: vec![
                Peer::Pods {
                    namespaces: Namespaces::Own,
                    pods: sel("client"),
                },
                Peer::Pods {
                    namespaces: Namespaces::Matching(Selector::default()),
                    pods: sel("web"),
                },
                block("198.51.100.0/24", &["198.51.100.7/32"]),
                block("10.9.0.0/16", &["10.9.16.0/20", "10.9.1.0/24"]),
                block("0.0.0.0/0", &[]),
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
                Port::Range {
                    protocol: Protocol::Udp,
                    from: 53,
                    to: 53,
                },
                Port::Any(Protocol::Tcp),
            ],
        },
        Rule {
            peers: vec![],
            ports: vec![],
        },
    ];
    w.policies.push(Policy {
        namespace: "x".into(),
        name: "web".into(),
        pods: sel("web"),
        ingress: Some(rules.clone()),
        egress: Some(rules),
    });
    w.policies.push(Policy {
        namespace: "x".into(),
        name: "deny".into(),
        pods: sel("client"),
        ingress: Some(vec![]),
        egress: None,
    });
    let pods = vec![
        pod("web", "web", "10.244.0.1"),
        pod("c1", "client", "10.244.0.2"),
        pod("c2", "other", "10.244.0.3"),
    ];
    (w, pods)
}

/// Everything: Services, NAT outgoing, the node guard, and NetworkPolicy.
fn table() -> Table {
    table_of(24, 3)
}

/// The first `n` Services and the first `pods` pods.
fn table_of(n: u8, pods: usize) -> Table {
    let r: Vec<ServiceNft> = services(n).iter().map(|s| render(s, &ctx())).collect();
    let mut t = assemble(&ctx(), &guard(), &sets(), &r);
    let (world, mut all) = policy_world();
    all.truncate(pods);
    let pods = all;
    let local = local_endpoints(&pods);
    let pctx = PolicyContext {
        log_denied: Some(30),
        ..Default::default()
    };
    merge(
        &mut t,
        &Renderer::default().render(&Program::compile(&world, &pods), &local, &pctx),
    );
    t
}

/// The kernel's listing with what may differ between two loads of the same rules made
/// alike: handles (`ip brindle <chain> <handle> [<position>]` becomes `ip brindle <chain>`)
/// and the order of a set's elements (hash sets list in insertion order).
fn listing(ns: &Netns) -> String {
    let debug = ns.ok(&["nft", "--debug=netlink", "list", "table", "ip", "brindle"]);
    let plain = ns.ok(&["nft", "list", "table", "ip", "brindle"]);
    let mut out: Vec<String> = vec![];
    let mut elements: Vec<String> = vec![];
    for l in debug.lines() {
        if l.starts_with("\telement ") {
            elements.push(l.to_string());
            continue;
        }
        elements.sort();
        out.append(&mut elements);
        let w: Vec<&str> = l.split(' ').collect();
        if w.len() >= 4 && w[0] == "ip" && w[1] == "brindle" && w[3].parse::<u64>().is_ok() {
            out.push(w[..3].join(" "));
        } else {
            out.push(l.to_string());
        }
    }
    elements.sort();
    out.append(&mut elements);
    // `elements = { a, b,\n c }` in the plain listing: one sorted list.
    let mut in_elements = None::<Vec<String>>;
    for l in plain.lines() {
        let t = l.trim();
        let rest = match (&mut in_elements, t.strip_prefix("elements = {")) {
            (None, Some(rest)) => {
                in_elements = Some(vec![]);
                rest
            }
            (Some(_), _) => t,
            (None, None) => {
                out.push(l.to_string());
                continue;
            }
        };
        let items = in_elements.as_mut().expect("set above");
        let done = rest.ends_with('}');
        items.extend(
            rest.trim_end_matches('}')
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty()),
        );
        if done {
            let mut items = in_elements.take().expect("set above");
            items.sort();
            out.push(format!("elements = {{ {} }}", items.join(", ")));
        }
    }
    out.join("\n")
}

#[test]
fn what_netlink_writes_is_what_nft_writes() {
    let want = table();
    // Which rules go by netlink: every rule of every chain made per Service, endpoint,
    // policy or pod, except the source-range check (an anonymous set). The rest are in
    // chains written once with the table (masquerade, reject, the node guard's sets).
    let fixed = [
        "external-endpoints-check",
        "host-guard",
        "masquerading",
        "nat-outgoing",
        "reject-chain",
        "services",
    ];
    let mut left = vec![];
    for (name, c) in &want.chains {
        for r in &c.rules {
            if c.hook.is_none() && compile(split_comment(&r.text).0).is_none() {
                left.push((name.as_str(), r.text.as_ref()));
            }
        }
    }
    let firewalls: Vec<_> = left.iter().filter(|(c, _)| !fixed.contains(c)).collect();
    assert!(
        firewalls
            .iter()
            .all(|(c, r)| c.starts_with("firewall-") && r.starts_with("ip saddr != {")),
        "{left:#?}"
    );
    assert!(!firewalls.is_empty(), "the fixture has source ranges");

    // Through nft alone.
    let a = Netns::new("brl-nla");
    let r = writer(&a, false).sync(&want).expect("nft sync");
    assert!(!r.netlink);

    // The skeleton (declarations, base chains, the rules nft must write, interval sets)
    // through nft, then everything else by netlink in one batch.
    let b = Netns::new("brl-nlb");
    let mut skeleton = want.clone();
    for c in skeleton.chains.values_mut() {
        let compiles = c
            .rules
            .iter()
            .all(|r| compile(split_comment(&r.text).0).is_some());
        if c.hook.is_none() && compiles {
            c.rules.clear();
        }
    }
    for s in skeleton.sets.values_mut() {
        if !s.ty.interval {
            s.elements.clear();
        }
    }
    let mut w = writer(&b, true);
    let r = w.sync(&skeleton).expect("skeleton");
    assert!(!r.netlink, "a new table goes through nft");
    let r = w.sync(&want).expect("netlink sync");
    assert!(r.netlink, "{r:?}");
    assert!(r.rules_written > 250 && r.elements_added > 50, "{r:?}");
    assert_eq!(listing(&b), listing(&a));

    // Read back, the netlink-written table is what was wanted: nothing to write.
    w.invalidate();
    let r = w.sync(&want).expect("re-read");
    assert!(!r.wrote(), "{r:?}\n{}", w.last_input);

    // Half the Services and a pod go: elements deleted from maps and sets, chains flushed,
    // and a second later chains and affinity sets deleted — by netlink on one side.
    let smaller = table_of(12, 2);
    let mut wa = writer(&a, false);
    for _ in 0..2 {
        wa.sync(&smaller).expect("nft: smaller");
        let r = w.sync(&smaller).expect("netlink: smaller");
        assert!(r.netlink && r.wrote(), "{r:?}");
        std::thread::sleep(brindle_felix_lite::nft::writer::STALE_DELETE_AFTER);
    }
    let r = w.sync(&smaller).expect("netlink: deletions");
    wa.sync(&smaller).expect("nft: deletions");
    assert!(!r.wrote(), "deleted at the second sync already: {r:?}");
    let (la, lb) = (listing(&a), listing(&b));
    assert!(
        !lb.contains("ns/s13/") && !lb.contains("brl0000000c2"),
        "{lb}"
    );
    assert_eq!(lb, la);
}

/// A batch the kernel refuses changes nothing (the batch is one transaction) and the
/// writer says why; the table stays as the last good sync left it.
#[test]
fn a_refused_batch_changes_nothing() {
    let ns = Netns::new("brl-nlr");
    let want = table();
    let mut w = writer(&ns, true);
    w.sync(&want).expect("first sync");
    let good = listing(&ns);
    // A good change (one more element) and a rule jumping to a chain that does not exist,
    // in one partial sync.
    let mut bad = want.clone();
    bad.set("service-ips", want.sets["service-ips"].ty.clone())
        .elements
        .insert("10.96.9.9 . tcp . 80 : goto mark-for-masquerade".into());
    let c = bad
        .chains
        .keys()
        .find(|n| n.starts_with("service-"))
        .unwrap()
        .clone();
    bad.chain(&c).rules.push(rule(&c, "", "jump no-such-chain"));
    let e = w.sync(&bad).expect_err("refused");
    assert!(e.to_string().contains("No such file"), "{e}");
    assert_eq!(
        listing(&ns),
        good,
        "the refused batch left the table as it was"
    );
    // The writer knows nothing was written: the good table again writes nothing.
    w.invalidate();
    assert!(!w.sync(&want).unwrap().wrote());
}
