//! The API reference's NetworkPolicy semantics, case by case, through the conversion from
//! real networking.k8s.io/v1 objects: the upstream test model's namespaces x, y, z and pods
//! a, b, c (labels `pod=<name>`, ports 80 and 81 named `serve-80-tcp` …), plus the cases
//! Calico's users hit.

use std::net::IpAddr;

use brindle_policy::model::{NamedPort, Namespace, Pod, Protocol};
use brindle_policy::{closed, policy, Conn, Decision, End, World};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

fn np(v: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(v).expect("a NetworkPolicy")
}

/// Pod `ns/name` with address 10.0.<ns index>.<pod index>.
fn pod(ns: &str, name: &str) -> Pod {
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap_or(9) as u8;
    let p = ["a", "b", "c"].iter().position(|x| *x == name).unwrap_or(9) as u8;
    let mut ports = vec![];
    for port in [80u16, 81] {
        for (proto, tag) in [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Sctp, "sctp"),
        ] {
            ports.push(NamedPort {
                name: format!("serve-{port}-{tag}").into(),
                protocol: proto,
                port,
            });
        }
    }
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ips: Box::new([IpAddr::from([10, 0, n, p + 1])]),
        ports: brindle_policy::labels::share_ports(&ports),
        host_network: false,
        finished: false,
        node: "n1".into(),
    }
}

struct Model {
    world: World,
    pods: Vec<Pod>,
}

impl Model {
    fn new(policies: &[serde_json::Value]) -> Model {
        let mut world = World::default();
        for (ns, labels) in [
            ("x", vec![("ns", "x")]),
            ("y", vec![("ns", "y")]),
            ("z", vec![("ns", "z")]),
        ] {
            world
                .namespaces
                .insert(ns.into(), Namespace::new(ns, &labels));
        }
        for p in policies {
            world
                .policies
                .push(policy(&np(p.clone())).expect("a valid policy"));
        }
        let pods = ["x", "y", "z"]
            .iter()
            .flat_map(|ns| ["a", "b", "c"].iter().map(move |p| pod(ns, p)))
            .collect();
        Model { world, pods }
    }

    fn pod(&self, id: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    fn conn(&self, from: &str, to: &str, protocol: Protocol, port: u16) -> brindle_policy::Verdict {
        let (f, t) = (self.pod(from), self.pod(to));
        self.world.verdict(&Conn {
            from: End {
                ip: f.ips[0],
                pod: Some(f),
            },
            to: End {
                ip: t.ips[0],
                pod: Some(t),
            },
            protocol,
            port,
            from_own_node: false,
        })
    }

    fn ok(&self, from: &str, to: &str, port: u16) -> bool {
        self.conn(from, to, Protocol::Tcp, port).allowed()
    }

    /// The truth table for TCP `port`: the pods (`ns/pod`) that reach `to`.
    fn reaching(&self, to: &str, port: u16) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .filter(|f| f != to && self.ok(f, to, port))
            .collect()
    }
}

fn all_but(to: &str) -> Vec<String> {
    ["x", "y", "z"]
        .iter()
        .flat_map(|ns| ["a", "b", "c"].iter().map(move |p| format!("{ns}/{p}")))
        .filter(|p| p != to)
        .collect()
}

#[test]
fn no_policy_isolates_nothing() {
    let m = Model::new(&[]);
    let v = m.conn("y/b", "x/a", Protocol::Tcp, 80);
    assert_eq!(v.ingress, Decision::NotIsolated);
    assert_eq!(v.egress, Decision::NotIsolated);
}

#[test]
fn default_deny_ingress_isolates_every_pod_of_the_namespace_for_ingress_only() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}}
    })]);
    for p in ["x/a", "x/b", "x/c"] {
        assert!(m.reaching(p, 80).is_empty(), "{p}");
    }
    assert_eq!(m.reaching("y/a", 80), all_but("y/a"));
    // Egress from x is not isolated.
    assert!(m.ok("x/a", "y/b", 80));
    let v = m.conn("y/b", "x/a", Protocol::Tcp, 80);
    assert_eq!(
        v.ingress,
        Decision::Denied {
            isolated_by: vec!["x/deny".into()]
        }
    );
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let and = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "and"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                        "podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })]);
    assert_eq!(and.reaching("x/a", 80), vec!["y/b"]);
    let or = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "or"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                       {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })]);
    assert_eq!(or.reaching("x/a", 80), vec!["x/b", "y/a", "y/b", "y/c"]);
}

#[test]
fn match_expressions_and_the_default_namespace_label() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "exprs"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
                 "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                     {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x", "z"]}]}}]}]}
    })]);
    assert_eq!(m.reaching("x/a", 80), vec!["y/a", "y/b", "y/c"]);
    assert_eq!(m.reaching("x/b", 80), all_but("x/b"), "x/b is not selected");
}

#[test]
fn an_empty_rule_allows_everything_and_policies_add_up() {
    let m = Model::new(&[
        json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}),
        json!({"metadata": {"namespace": "x", "name": "allow-all"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}}),
    ]);
    assert_eq!(m.reaching("x/a", 80), all_but("x/a"));
    assert!(m.reaching("x/b", 80).is_empty());
    let v = m.conn("y/b", "x/a", Protocol::Tcp, 80);
    assert_eq!(
        v.ingress,
        Decision::Allowed {
            policy: "x/allow-all".into(),
            rule: 0
        }
    );
}

/// Calico #4373: `ports: [{}, {port: 80}]` must allow every TCP port, not only 80.
#[test]
fn a_port_entry_without_a_port_means_every_port_of_its_protocol() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "ports"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{}, {"port": 80}]}]}
    })]);
    assert!(m.ok("y/a", "x/a", 81));
    assert!(m.ok("y/a", "x/a", 80));
    assert!(
        !m.conn("y/a", "x/a", Protocol::Udp, 81).allowed(),
        "TCP only"
    );
}

#[test]
fn named_ports_resolve_per_destination_pod_with_their_protocol() {
    let mut m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "named"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}
    })]);
    assert!(m.conn("y/a", "x/a", Protocol::Udp, 81).allowed());
    assert!(!m.conn("y/a", "x/a", Protocol::Udp, 80).allowed());
    assert!(
        !m.conn("y/a", "x/a", Protocol::Tcp, 81).allowed(),
        "serve-81-udp is UDP"
    );
    // A pod without that container port is not reached on it.
    let b = m
        .pods
        .iter_mut()
        .find(|p| &*p.namespace == "x" && &*p.name == "b")
        .unwrap();
    let kept: Vec<_> = b
        .ports
        .iter()
        .filter(|p| &*p.name != "serve-81-udp")
        .cloned()
        .collect();
    b.ports = brindle_policy::labels::share_ports(&kept);
    assert!(!m.conn("y/a", "x/b", Protocol::Udp, 81).allowed());
}

#[test]
fn end_port_is_a_range() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "range"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}
    })]);
    assert!(m.ok("y/a", "x/a", 80) && m.ok("y/a", "x/a", 85) && m.ok("y/a", "x/a", 90));
    assert!(!m.ok("y/a", "x/a", 91) && !m.ok("y/a", "x/a", 79));
}

#[test]
fn ip_blocks_with_except_and_the_overlap_case() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "cidr"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32"]}}]},
                            {"to": [{"ipBlock": {"cidr": "10.0.1.2/31"}}]}]}
    })]);
    assert!(m.ok("x/a", "y/a", 80), "in the block");
    // y/b (10.0.1.2) is in the first rule's except but in the second rule: allowed.
    assert!(
        m.ok("x/a", "y/b", 80),
        "except in one rule, allowed by another"
    );
    assert!(!m.ok("x/a", "z/a", 80), "outside");
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "cidr"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.1.0/24", "except": ["10.0.1.2/32"]}}]}]}
    })]);
    assert!(!m.ok("x/a", "y/b", 80), "the excepted address");
    assert!(m.ok("y/b", "x/a", 80), "ingress to x/a is not isolated");
}

#[test]
fn sctp_is_never_tcp_and_udp_only_opens_no_tcp() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "sctp"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}
    })]);
    assert!(m.conn("y/a", "x/a", Protocol::Sctp, 80).allowed());
    assert!(!m.conn("y/a", "x/a", Protocol::Tcp, 80).allowed());
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "udp"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]}
    })]);
    assert!(!m.ok("y/a", "x/a", 80));
}

#[test]
fn egress_rules_imply_the_egress_type_and_deny_on_the_client_side() {
    let m = Model::new(&[
        json!({"metadata": {"namespace": "x", "name": "egress"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}),
        json!({"metadata": {"namespace": "x", "name": "server-allows"},
               "spec": {"podSelector": {}, "ingress": [{}]}}),
    ]);
    assert!(m.ok("x/a", "x/b", 80));
    assert!(
        !m.ok("x/a", "x/c", 80),
        "denied by the client's egress though the server allows"
    );
    // policyTypes defaulted to Ingress + Egress: ingress to x/a is isolated too (no ingress
    // rules in that policy), but server-allows lets everything in.
    assert_eq!(m.reaching("x/a", 80), all_but("x/a"));
}

#[test]
fn a_node_reaches_its_pods_and_host_network_pods_are_not_workloads() {
    let m = Model::new(&[json!({
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    })]);
    let a = m.pod("x/a");
    let v = m.world.verdict(&Conn {
        from: End {
            ip: "198.18.0.10".parse().unwrap(),
            pod: None,
        },
        to: End {
            ip: a.ips[0],
            pod: Some(a),
        },
        protocol: Protocol::Tcp,
        port: 80,
        from_own_node: true,
    });
    assert_eq!(v.ingress, Decision::FromOwnNode);
    assert!(v.allowed());
    let mut host = pod("x", "h");
    host.host_network = true;
    let v = m.world.verdict(&Conn {
        from: End {
            ip: host.ips[0],
            pod: Some(&host),
        },
        to: End {
            ip: "198.51.100.1".parse().unwrap(),
            pod: None,
        },
        protocol: Protocol::Tcp,
        port: 443,
        from_own_node: false,
    });
    assert_eq!(v.egress, Decision::NotIsolated);
}

#[test]
fn unreadable_policies_are_refused_with_the_field_and_fail_closed() {
    let cases = [
        (
            json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Has"}]}}),
            "spec.podSelector.matchExpressions[0]",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}),
            "spec.ingress[0].ports[0].port",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                       "podSelector": {}}]}]}),
            "spec.egress[0].to[0]",
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
            "spec.policyTypes[0]",
        ),
    ];
    for (spec, field) in cases {
        let obj = np(json!({"metadata": {"namespace": "x", "name": "bad"}, "spec": spec}));
        let e = policy(&obj).expect_err(field);
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().starts_with("NetworkPolicy x/bad: "), "{e}");
        // What is rendered instead isolates and allows nothing.
        let c = closed(&obj);
        assert!(
            c.ingress.as_ref().is_some_and(Vec::is_empty)
                || c.egress.as_ref().is_some_and(Vec::is_empty),
            "{c:?}"
        );
        assert!(
            c.ingress.iter().chain(c.egress.iter()).all(Vec::is_empty),
            "{c:?}"
        );
    }
}
