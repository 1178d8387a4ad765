//! The iptables writer against the real tools, in a network namespace of its own: only
//! changed chains are written, a restart writes nothing, drift inside our chains is
//! repaired, our old jumps are removed by their text, and nobody else's rule is touched.

use std::sync::Arc;

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::proxy::rules::{Chain, Jump, Rule, Ruleset, TableRules};
use brindle_testsupport::Netns;

fn ruleset(jump_comment: &str, target: &str) -> Ruleset {
    Ruleset {
        raw: TableRules::default(),
        nat: TableRules {
            chains: vec![
                Chain {
                    name: "BRL-SERVICES".into(),
                    rules: vec![Rule::new(
                        "BRL-SERVICES",
                        "svc",
                        &format!("-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j {target}"),
                    )],
                },
                Chain {
                    name: target.into(),
                    rules: vec![Rule::new(
                        target,
                        "",
                        "-p tcp -m tcp -j DNAT --to-destination 10.244.0.2:8080",
                    )],
                },
            ]
            .into_iter()
            .map(std::sync::Arc::new)
            .collect(),
            jumps: vec![Jump {
                chain: "PREROUTING",
                rule: Rule::new("PREROUTING", jump_comment, "-j BRL-SERVICES"),
            }],
        },
        filter: TableRules::default(),
    }
}

fn writer(ns: &Netns) -> Writer {
    Writer::new(
        Backend::Legacy,
        Runner {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
            ..Default::default()
        },
    )
}

fn nat(ns: &Netns) -> String {
    ns.ok(&["iptables-legacy-save", "-t", "nat"])
}

#[test]
fn writes_only_what_changed_and_never_touches_others() {
    let ns = Netns::new("brl-wr");
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        "10.1.1.1/32",
        "-j",
        "RETURN",
    ]);
    let a = ruleset("brindle service portals", "BRL-SEP-AAAA");
    let mut w = writer(&ns);
    let r = w.sync(&a).unwrap();
    assert!(
        r.read && r.chains_written == 2 && r.jumps_inserted == 1,
        "{r:?}"
    );
    let r = w.sync(&a).unwrap();
    assert_eq!(r.chains_written + r.jumps_inserted, 0, "{r:?}");
    // A new writer (an agent restart) reads the tables and writes nothing.
    let mut w = writer(&ns);
    let r = w.sync(&a).unwrap();
    assert!(
        r.read && r.chains_written == 0 && r.jumps_inserted == 0 && r.bytes == 0,
        "{r:?}"
    );

    // Someone adds a rule to our chain and flushes our other chain: both repaired on the
    // next read; their rule in PREROUTING stays where it was.
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "BRL-SERVICES",
        "-j",
        "RETURN",
    ]);
    ns.ok(&["iptables-legacy", "-t", "nat", "-F", "BRL-SEP-AAAA"]);
    w.invalidate();
    let r = w.sync(&a).unwrap();
    assert_eq!(r.chains_written, 2, "{r:?}");
    let text = nat(&ns);
    assert!(!text.contains("-A BRL-SERVICES -j RETURN"), "{text}");
    assert!(text.contains("--to-destination 10.244.0.2:8080"), "{text}");
    assert!(
        text.contains("-A PREROUTING -d 10.1.1.1/32 -j RETURN"),
        "{text}"
    );

    // A new version with another jump and another endpoint chain: the old jump goes (by its
    // text), the stale chain is deleted, the foreign rule is untouched.
    let b = ruleset("brindle service portals v2", "BRL-SEP-BBBB");
    let r = w.sync(&b).unwrap();
    assert!(
        r.jumps_removed == 1 && r.jumps_inserted == 1 && r.chains_deleted == 1,
        "{r:?}"
    );
    let text = nat(&ns);
    assert!(!text.contains("BRL-SEP-AAAA"), "{text}");
    assert_eq!(text.matches("-A PREROUTING").count(), 2, "{text}");
    assert!(
        text.contains("-A PREROUTING -d 10.1.1.1/32 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("brindle service portals v2"), "{text}");

    // And an empty ruleset takes every chain of ours away, still nothing else.
    let r = w
        .sync(&Ruleset {
            raw: TableRules::default(),
            nat: TableRules::default(),
            filter: TableRules::default(),
        })
        .unwrap();
    assert_eq!(r.chains_deleted, 2, "{r:?}");
    let text = nat(&ns);
    assert!(!text.contains("BRL-"), "{text}");
    assert!(
        text.contains("-A PREROUTING -d 10.1.1.1/32 -j RETURN"),
        "{text}"
    );
}

/// NetworkPolicy's sets against the real ipset: an ipBlock's except is a `nomatch` member
/// (the block matches around it), a named port is an address, protocol and port.
#[test]
fn policy_sets_hold_excepts_and_named_ports() {
    use brindle_felix_lite::policy::{Member, SetKind, SetSpec};
    use brindle_policy::Protocol;
    let ns = Netns::new("brl-ps");
    let mut w = writer(&ns);
    let sets = vec![
        Arc::new(SetSpec {
            name: "brl40b-test".into(),
            kind: SetKind::Net,
            members: vec![
                Member::Net("198.51.100.0/24".parse().unwrap()),
                Member::NoMatch("198.51.100.7/32".parse().unwrap()),
            ]
            .into(),
        }),
        Arc::new(SetSpec {
            name: "brl40n-test".into(),
            kind: SetKind::IpPort,
            members: vec![
                Member::IpPort("10.0.0.1".parse().unwrap(), Protocol::Tcp, 8080),
                Member::IpPort("10.0.0.2".parse().unwrap(), Protocol::Udp, 53),
            ]
            .into(),
        }),
    ];
    assert_eq!(w.sync_policy_sets(&sets).unwrap(), 2);
    assert_eq!(
        w.sync_policy_sets(&sets).unwrap(),
        0,
        "nothing to write the second time"
    );
    let test = |set: &str, member: &str| ns.run(&["ipset", "test", set, member]).status.success();
    assert!(test("brl40b-test", "198.51.100.8"));
    assert!(!test("brl40b-test", "198.51.100.7"), "the except");
    assert!(!test("brl40b-test", "198.51.101.1"));
    assert!(test("brl40n-test", "10.0.0.1,tcp:8080"));
    assert!(
        !test("brl40n-test", "10.0.0.1,udp:8080"),
        "the protocol counts"
    );
    assert!(test("brl40n-test", "10.0.0.2,udp:53"));
    // A member gone is gone after the next sync (the set is swapped whole), and only the
    // set that changed is written.
    let mut fewer = sets.clone();
    let first = fewer[1].members.iter().take(1).collect();
    Arc::make_mut(&mut fewer[1]).members = first;
    assert_eq!(w.sync_policy_sets(&fewer).unwrap(), 1);
    assert!(!test("brl40n-test", "10.0.0.2,udp:53"));
    // A set no longer wanted is destroyed; the wanted one and anyone else's set stay.
    ns.ok(&["ipset", "create", "someone-else", "hash:ip"]);
    let kept = vec![fewer[0].clone()];
    assert_eq!(w.sync_policy_sets(&kept).unwrap(), 0);
    assert_eq!(
        w.destroy_stale_policy_sets(&kept).unwrap(),
        vec!["brl40n-test".to_string()]
    );
    let listed = String::from_utf8_lossy(&ns.run(&["ipset", "list", "-n"]).stdout).to_string();
    assert!(listed.contains("brl40b-test"), "{listed}");
    assert!(listed.contains("someone-else"), "{listed}");
    assert!(!listed.contains("brl40n-test"), "{listed}");
    assert!(
        w.destroy_stale_policy_sets(&kept).unwrap().is_empty(),
        "nothing listed again when nothing changed"
    );
    for s in ["brl40b-test", "someone-else"] {
        ns.run(&["ipset", "destroy", s]);
    }
}

/// A set larger than ipset's default size (65,536: one selector's pods in a large cluster)
/// is written, also over a set of the default size that an older version made, and after a
/// restart (a new writer) nothing is created twice.
#[test]
fn a_set_of_a_hundred_thousand_members_replaces_a_default_sized_one() {
    use brindle_felix_lite::policy::{Member, SetKind, SetSpec};
    let ns = Netns::new("brl-big");
    ns.ok(&[
        "ipset",
        "create",
        "brl40s-big",
        "hash:net",
        "family",
        "inet",
    ]);
    ns.ok(&["ipset", "add", "brl40s-big", "192.0.2.1"]);
    let members: Vec<Member> = (0..100_000u32)
        .map(|i| Member::host(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
        .collect();
    let sets = vec![Arc::new(SetSpec {
        name: "brl40s-big".into(),
        kind: SetKind::Net,
        members: members.into(),
    })];
    let mut w = writer(&ns);
    assert_eq!(w.sync_policy_sets(&sets).unwrap(), 1);
    let test = |member: &str| {
        ns.run(&["ipset", "test", "brl40s-big", member])
            .status
            .success()
    };
    assert!(test("10.1.134.159"), "the last member");
    assert!(!test("192.0.2.1"), "the old member");
    let header =
        String::from_utf8_lossy(&ns.run(&["ipset", "list", "-t", "brl40s-big"]).stdout).to_string();
    assert!(header.contains("maxelem 1048576"), "{header}");
    let mut again = writer(&ns);
    let mut fewer = sets.clone();
    let kept = fewer[0].members.iter().take(70_000).collect();
    Arc::make_mut(&mut fewer[0]).members = kept;
    assert_eq!(again.sync_policy_sets(&fewer).unwrap(), 1);
    assert!(!test("10.1.134.159"));
    assert!(test("10.1.17.111"), "member 69,999");
    ns.run(&["ipset", "destroy", "brl40s-big"]);
}

/// Our jumps stand in the order given: one added between two that exist (the policy's
/// dispatch between the node guard and the Services' accepts) puts all of ours back in
/// order, in one restore; a foreign rule above them stays where it is.
#[test]
fn a_jump_added_between_ours_keeps_their_order() {
    let ns = Netns::new("brl-jo");
    let mut w = writer(&ns);
    let jump = |comment: &str| Jump {
        chain: "FORWARD",
        rule: Rule::new("FORWARD", comment, "-j ACCEPT"),
    };
    let with = |jumps: Vec<Jump>| Ruleset {
        filter: TableRules {
            chains: vec![],
            jumps,
        },
        ..Default::default()
    };
    w.sync(&with(vec![jump("first"), jump("last")])).unwrap();
    ns.ok(&[
        "iptables-legacy",
        "-I",
        "FORWARD",
        "1",
        "-s",
        "192.0.2.1/32",
        "-j",
        "DROP",
    ]);
    w.invalidate();
    let r = w
        .sync(&with(vec![jump("first"), jump("middle"), jump("last")]))
        .unwrap();
    assert_eq!(r.jumps_inserted, 3, "{r:?}");
    let text = ns.ok(&["iptables-legacy-save", "-t", "filter"]);
    let order: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A FORWARD"))
        .collect();
    assert_eq!(order.len(), 4, "{text}");
    assert!(order[0].contains("192.0.2.1"), "{text}");
    assert!(order[1].contains("first"), "{text}");
    assert!(order[2].contains("middle"), "{text}");
    assert!(order[3].contains("last"), "{text}");
    // Once in order, nothing moves.
    let r = w
        .sync(&with(vec![jump("first"), jump("middle"), jump("last")]))
        .unwrap();
    assert_eq!(r.jumps_inserted + r.jumps_removed, 0, "{r:?}");
}

/// `--dataplane auto` keeps iptables where the iptables FORWARD chain drops by default
/// (Docker's `-P FORWARD DROP`): seen in either backend, and nothing is seen (or created)
/// on a host without it.
#[test]
fn a_forward_chain_that_drops_by_default_is_seen_in_either_backend() {
    for (tool, says) in [
        ("iptables-legacy", "iptables-legacy's FORWARD"),
        ("iptables-nft", "iptables-nft's FORWARD"),
    ] {
        let ns = Netns::new("brl-fwd");
        let r = Runner {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
            ..Default::default()
        };
        assert_eq!(r.forward_policy_drops(), None);
        // Looking created no legacy table and no nftables table.
        assert!(!ns
            .ok(&["cat", "/proc/net/ip_tables_names"])
            .contains("filter"));
        assert_eq!(ns.ok(&["nft", "list", "tables"]).trim(), "");
        ns.ok(&[tool, "-P", "FORWARD", "ACCEPT"]);
        assert_eq!(r.forward_policy_drops(), None, "{tool}: ACCEPT");
        ns.ok(&[tool, "-P", "FORWARD", "DROP"]);
        let got = r.forward_policy_drops().unwrap_or_default();
        assert!(got.contains(says), "{tool}: {got:?}");
    }
}

/// An ipBlock of the whole space (`0.0.0.0/0` with an except, the usual "anywhere but the
/// cluster" egress) reaches the real ipset: `hash:net` refuses a prefix of length 0, so it is
/// written as its two halves, and the except still holds.
#[test]
fn an_ip_block_of_the_whole_space_is_written_and_matches() {
    use brindle_felix_lite::policy::{render, LocalEndpoint, PolicyContext};
    use brindle_policy::compile::Program;
    use brindle_policy::model::{Namespace, Peer, Pod, Policy, Rule as PRule, Selector};
    use brindle_policy::World;
    let mut world = World::default();
    world
        .namespaces
        .insert("x".into(), Namespace::new("x", &[]));
    world.policies.push(Policy {
        namespace: "x".into(),
        name: "anywhere-but".into(),
        pods: Selector::default(),
        ingress: None,
        egress: Some(vec![PRule {
            peers: vec![Peer::Block {
                cidr: "0.0.0.0/0".parse().unwrap(),
                except: vec!["10.0.0.0/8".parse().unwrap()],
            }],
            ports: vec![],
        }]),
    });
    let pods = vec![Pod::running("x", "a", "n1", "10.0.0.1".parse().unwrap())];
    let prog = Program::compile(&world, &pods);
    let local = vec![LocalEndpoint {
        veth: "brl0000000000a".into(),
        pod: Some("x/a".into()),
    }];
    let rendered = render(&prog, &local, &PolicyContext::default());
    let ns = Netns::new("brl-p0");
    let mut w = writer(&ns);
    assert_eq!(w.sync_policy_sets(&rendered.sets).expect("sets written"), 1);
    let set = &rendered.sets[0].name;
    let test = |member: &str| ns.run(&["ipset", "test", set, member]).status.success();
    assert!(test("8.8.8.8") && test("200.1.2.3") && test("0.0.0.1"));
    assert!(!test("10.1.2.3"), "the except");
    ns.run(&["ipset", "destroy", set]);
}
