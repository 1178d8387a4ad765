//! The nftables writer against the real `nft`, in a namespace of the test's own: what it
//! writes reads back as written (so a restart writes nothing), a change writes only its own
//! elements and chains, drift is repaired, a failed transaction changes nothing, stale
//! chains go, and nothing outside our table is touched.

use std::net::Ipv4Addr;

use brindle_felix_lite::nft::services::{assemble, render, ServiceNft};
use brindle_felix_lite::nft::{rule, Table};
use brindle_felix_lite::proxy::{Endpoint, Protocol, ServicePort};
use brindle_testsupport::Netns;

mod common;
use common::{ctx, guard, local_endpoints, sets, writer};

fn svc(i: u8, eps: u8) -> ServicePort {
    let protocol = if i.is_multiple_of(2) {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let endpoints = (1..=eps)
        .map(|e| {
            let node = if e % 2 == 0 { "n1" } else { "n2" };
            Endpoint::ready(Ipv4Addr::new(10, 244, i, e), 8080, node)
        })
        .collect();
    let ip = Ipv4Addr::new(10, 96, 0, i);
    let mut s =
        ServicePort::cluster_ip("ns", &format!("s{i}"), "http", protocol, ip, 80, endpoints);
    s.node_port = i.is_multiple_of(3).then_some(30000 + u16::from(i));
    if i.is_multiple_of(4) {
        s.load_balancer_ips = vec![Ipv4Addr::new(198, 19, 0, i).into()];
    }
    if i.is_multiple_of(8) {
        s.load_balancer_source_ranges = vec!["198.18.0.0/16".parse().unwrap()];
    }
    s.affinity_seconds = i.is_multiple_of(5).then_some(600);
    s
}

fn table(services: &[ServicePort]) -> Table {
    let r: Vec<ServiceNft> = services.iter().map(|s| render(s, &ctx())).collect();
    assemble(&ctx(), &guard(), &sets(), &r)
}

fn list(ns: &Netns) -> String {
    ns.ok(&["nft", "list", "ruleset"])
}

#[test]
fn what_is_written_reads_back_and_a_change_writes_only_itself() {
    let ns = Netns::new("brl-nw");
    ns.ok(&["nft", "add", "table", "ip", "foreign"]);
    ns.ok(&[
        "nft",
        "add chain ip foreign c { type filter hook forward priority 0; }",
    ]);
    ns.ok(&["nft", "add rule ip foreign c ip daddr 10.9.9.9 drop"]);
    let mut services: Vec<ServicePort> = (0..20).map(|i| svc(i, 1 + i % 4)).collect();
    let mut w = writer(&ns);
    let r = w.sync(&table(&services)).expect("first sync");
    assert!(
        r.read && r.chains_written > 20 && r.elements_added > 20,
        "{r:?}"
    );
    // Read back: the kernel holds exactly what was wanted, so nothing is written again.
    w.invalidate();
    let r = w.sync(&table(&services)).expect("re-read");
    assert!(
        r.read && !r.wrote(),
        "a restart would write: {r:?}\n{}",
        w.last_input
    );
    // A new writer (a restarted agent) writes nothing either.
    let r = writer(&ns).sync(&table(&services)).expect("restart");
    assert!(!r.wrote(), "{r:?}");

    // One endpoint more for one service: its service chain, one endpoint chain; no element
    // (the map still leads to the same chain).
    services[6] = svc(6, 4);
    let r = w.sync(&table(&services)).expect("change");
    assert!(!r.read);
    assert_eq!(r.elements_added + r.elements_deleted, 0, "{}", w.last_input);
    assert_eq!(r.chains_written, 2, "{}", w.last_input);
    assert!(
        w.last_input.lines().all(|l| l.contains("ns/s6/")),
        "{}",
        w.last_input
    );
    // A service removed: its elements deleted, its chains flushed (deleted later).
    services.remove(3);
    let r = w.sync(&table(&services)).expect("delete");
    assert!(r.elements_deleted >= 2 && r.chains_flushed >= 2, "{r:?}");
    assert!(list(&ns).contains("ns/s3/"), "flushed, not yet deleted");
    std::thread::sleep(brindle_felix_lite::nft::writer::STALE_DELETE_AFTER);
    let r = w.sync(&table(&services)).expect("later");
    assert!(r.chains_deleted >= 2, "{r:?}");
    assert!(!list(&ns).contains("ns/s3/"), "{}", list(&ns));
    w.invalidate();
    assert!(!w.sync(&table(&services)).unwrap().wrote());
    // The foreign table is as it was.
    assert!(ns
        .ok(&["nft", "list", "table", "ip", "foreign"])
        .contains("ip daddr 10.9.9.9 drop"));
    // Removal: our table goes, theirs stays.
    assert!(w.remove().unwrap());
    let all = list(&ns);
    assert!(!all.contains("table ip brindle") && all.contains("table ip foreign"));
}

#[test]
fn drift_is_repaired_and_a_failed_transaction_changes_nothing() {
    let ns = Netns::new("brl-nd");
    let services: Vec<ServicePort> = (0..6).map(|i| svc(i, 2)).collect();
    let want = table(&services);
    let mut w = writer(&ns);
    w.sync(&want).expect("first sync");
    let good = list(&ns);
    // By hand: an element deleted, a rule of someone else's in one of our chains, a chain
    // of ours emptied, a foreign chain added to our table.
    let el = want.sets["service-ips"]
        .elements
        .iter()
        .next()
        .unwrap()
        .clone();
    ns.ok(&[
        "nft",
        &format!("delete element ip brindle service-ips {{ {el} }}"),
    ]);
    ns.ok(&["nft", "add rule ip brindle services ip daddr 10.1.2.3 drop"]);
    ns.ok(&["nft", "flush chain ip brindle masquerading"]);
    ns.ok(&["nft", "add chain ip brindle intruder"]);
    w.invalidate();
    let r = w.sync(&want).expect("repair");
    assert!(
        r.read && r.elements_added == 1 && r.chains_written == 2,
        "{r:?}"
    );
    std::thread::sleep(brindle_felix_lite::nft::writer::STALE_DELETE_AFTER);
    w.sync(&want).unwrap();
    assert_eq!(list(&ns), good, "repaired to exactly what was written");

    // A transaction that the kernel refuses (a jump to a chain that does not exist) changes
    // nothing at all, though it also held good changes.
    let mut bad = table(&(0..8).map(|i| svc(i, 3)).collect::<Vec<_>>());
    bad.chain("services")
        .rules
        .push(rule("services", "", "jump no-such-chain"));
    let e = w.sync(&bad).expect_err("refused");
    assert!(
        e.to_string().contains("no-such-chain") || e.to_string().contains("No such file"),
        "{e}"
    );
    assert_eq!(
        list(&ns),
        good,
        "the failed transaction left the table as it was"
    );
    w.invalidate();
    assert!(!w.sync(&want).unwrap().wrote());
}

#[test]
fn this_kernel_takes_everything_we_write_and_the_check_commits_nothing() {
    let ns = Netns::new("brl-nc");
    writer(&ns).check_support().expect("nft support");
    assert!(!list(&ns).contains("table"), "{}", list(&ns));
}

/// NetworkPolicy in the same table (dispatch maps keyed by interface, selector and named-port
/// sets, log and counter statements) reads back as written, and a pod's set membership
/// changes one element.
#[test]
fn policy_reads_back_and_a_pod_is_one_element() {
    use brindle_felix_lite::nft::policy::{merge, Renderer};
    use brindle_felix_lite::policy::PolicyContext;
    use brindle_policy::compile::Program;
    use brindle_policy::model::{Namespace, Namespaces, Peer, Pod, Policy, Port, Rule, Selector};
    use brindle_policy::World;
    let ns = Netns::new("brl-np");
    let sel = |v: &str| Selector::label("app", v);
    let pod = |name: &str, app: &str, ip: &str| {
        Pod::running("x", name, "n1", ip.parse().unwrap())
            .label("app", app)
            .port("http", Protocol::Tcp, 8080)
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
                    protocol: Protocol::Sctp,
                    from: 5000,
                    to: 5010,
                },
            ],
        }]),
        egress: Some(vec![]),
    });
    let mut pods = vec![
        pod("web", "web", "10.244.0.1"),
        pod("c1", "client", "10.244.0.2"),
        pod("c2", "other", "10.244.0.3"),
    ];
    let local = local_endpoints(&pods);
    let ctx = PolicyContext {
        log_denied: Some(30),
        ..Default::default()
    };
    let mut r = Renderer::default();
    let services: Vec<ServicePort> = (0..3).map(|i| svc(i, 2)).collect();
    let mut want = |pods: &[Pod]| {
        let mut t = table(&services);
        merge(&mut t, &r.render(&Program::compile(&w, pods), &local, &ctx));
        t
    };
    let mut wr = writer(&ns);
    wr.sync(&want(&pods)).expect("policy sync");
    wr.invalidate();
    let rep = wr.sync(&want(&pods)).expect("re-read");
    assert!(!rep.wrote(), "{rep:?}\n{}", wr.last_input);
    // c2 becomes a client: one element into the selector set, no chain.
    pods[2].labels.insert("app", "client");
    let rep = wr.sync(&want(&pods)).expect("relabel");
    assert_eq!(
        (rep.elements_added, rep.elements_deleted, rep.chains_written),
        (1, 0, 0),
        "{}",
        wr.last_input
    );
    assert!(wr.last_input.contains("10.244.0.3"), "{}", wr.last_input);
    let listed = list(&ns);
    assert!(
        listed.contains("\"brl0000000web\" : goto tw-brl0000000web"),
        "{listed}"
    );
}

/// A map that is no longer wanted is flushed as a map (`flush set` refuses one, and the
/// refused transaction would have held every later change back), then deleted; a set
/// dropped and wanted again keeps its elements exact afterwards.
#[test]
fn maps_and_sets_that_go_and_come_back() {
    use brindle_felix_lite::nft::{SetType, Table};
    let ns = Netns::new("brl-ng");
    let mut w = writer(&ns);
    let base = || {
        let mut t = table(&[svc(2, 1)]);
        t.set("extra", SetType::verdicts("ifname"));
        t
    };
    let mut with = base();
    with.map_element("extra", "brlx : goto masquerading");
    with.set("s-x", SetType::addresses())
        .elements
        .insert("10.244.9.1".into());
    w.sync(&with).expect("with the map and the set");
    // Both go: flushed (the map as a map), deleted a second later.
    let without = table(&[svc(2, 1)]);
    w.sync(&without).expect("the map flushed");
    std::thread::sleep(brindle_felix_lite::nft::writer::STALE_DELETE_AFTER);
    let r = w.sync(&without).expect("then deleted");
    assert!(r.chains_deleted >= 2, "{r:?}");
    let l = list(&ns);
    assert!(!l.contains("map extra") && !l.contains("set s-x"), "{l}");
    // The set comes back with two elements, then loses one: the kernel has exactly one.
    let mut back = table(&[svc(2, 1)]);
    {
        let s = back.set("s-x", SetType::addresses());
        s.elements.insert("10.244.9.1".into());
        s.elements.insert("10.244.9.2".into());
    }
    w.sync(&back).expect("back");
    back.sets
        .get_mut("s-x")
        .expect("s-x")
        .elements
        .remove("10.244.9.1");
    let r = w.sync(&back).expect("one element less");
    assert_eq!(r.elements_deleted, 1, "{}", w.last_input);
    w.invalidate();
    let r = w.sync(&back).expect("re-read");
    assert!(
        !r.wrote(),
        "the kernel differs from what was written: {r:?}"
    );
    // Dropped and wanted again before it could be deleted (a policy deleted and applied
    // again): what is later removed from it is removed from the kernel too.
    w.sync(&without).expect("s-x flushed");
    let mut again = table(&[svc(2, 1)]);
    {
        let s = again.set("s-x", SetType::addresses());
        s.elements.insert("10.244.9.3".into());
        s.elements.insert("10.244.9.4".into());
    }
    w.sync(&again).expect("s-x again, at once");
    again
        .sets
        .get_mut("s-x")
        .expect("s-x")
        .elements
        .remove("10.244.9.3");
    let r = w.sync(&again).expect("one element less");
    assert_eq!(r.elements_deleted, 1, "{}", w.last_input);
    w.invalidate();
    let r = w.sync(&again).expect("re-read");
    assert!(
        !r.wrote(),
        "the kernel kept what was removed: {}",
        w.last_input
    );
    let _: Table = back;
}
