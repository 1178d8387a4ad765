//! `brindlectl get networkpolicies` and `policy explain` against a real etcd holding
//! namespaces, pods (addresses, labels, named container ports) and NetworkPolicies.

mod common;

use brindle_datastore::DatastoreArgs;
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_policy_and_rule_that_decide() {
    let etcd = tokio::task::spawn_blocking(brindle_testsupport::EtcdServer::start)
        .await
        .unwrap();
    let store = DatastoreArgs::etcd(vec![etcd.endpoint()])
        .connect()
        .await
        .unwrap();
    for (ns, team) in [("x", "a"), ("y", "b")] {
        let n: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"team": team}}}))
                .unwrap();
        store.all::<Namespace>().create(&n).await.unwrap();
    }
    for (ns, name, ip) in [
        ("x", "a", "10.0.0.1"),
        ("x", "b", "10.0.0.2"),
        ("y", "a", "10.0.1.1"),
    ] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "image": "i",
                                      "ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap();
        store.namespaced::<Pod>(ns).create(&p).await.unwrap();
    }
    for np in [
        json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}),
        json!({"metadata": {"namespace": "x", "name": "allow-b"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]},
                                    {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                     "ports": [{"port": "serve-80-tcp"}]}]}}),
        json!({"metadata": {"namespace": "y", "name": "bad"},
               "spec": {"podSelector": {},
                        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/99"}}]}]}}),
    ] {
        let np: NetworkPolicy = serde_json::from_value(np).unwrap();
        let ns = np.metadata.namespace.clone().unwrap();
        store
            .namespaced::<NetworkPolicy>(&ns)
            .create(&np)
            .await
            .unwrap();
    }
    let ctl = Ctl::etcd(&etcd.endpoint());
    let run = |args: &[&str]| {
        let out = ctl.run(args);
        assert_eq!(out.code, 0, "{out:#?}");
        out.stdout
    };

    let list = run(&["get", "networkpolicies"]);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in {list}"))
            .to_string()
    };
    assert!(
        line("deny").contains("all()") && line("deny").contains("Ingress"),
        "{list}"
    );
    assert!(line("allow-b").contains("pod == 'a'"), "{list}");
    assert!(
        line("bad").contains("refused, its pods isolated")
            && line("bad").contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{list}"
    );

    let e = run(&["policy", "explain", "x/b", "x/a:80/TCP"]);
    assert!(e.starts_with("x/b -> x/a:80/TCP: ALLOWED"), "{e}");
    assert!(e.contains("ingress: allowed by x/allow-b, rule 1"), "{e}");
    assert!(e.contains("egress:  allowed (x/b is not isolated"), "{e}");

    let e = run(&["policy", "explain", "x/b", "x/a:81"]);
    assert!(e.contains("DENIED"), "the named port is 80 only: {e}");
    assert!(
        e.contains("x/a is isolated by x/allow-b, x/deny and no rule of theirs allows it"),
        "{e}"
    );

    // By address, to a pod isolated by a policy the agents cannot read: closed.
    let e = run(&["policy", "explain", "x/a", "10.0.1.1:80/udp"]);
    assert!(
        e.contains("DENIED") && e.contains("isolated by y/bad"),
        "{e}"
    );
    assert!(
        e.contains("note: NetworkPolicy y/bad: spec.ingress[0].from[0].ipBlock.cidr"),
        "{e}"
    );

    // An address outside the cluster is no pod: only the pod's side can decide.
    let e = run(&["policy", "explain", "198.51.100.7", "x/b:80"]);
    assert!(e.contains("egress:  allowed (not a pod"), "{e}");
    assert!(
        e.contains("DENIED") && e.contains("isolated by x/deny"),
        "{e}"
    );

    // IPv6: pods z/a and z/b have an address of each family; z/v6 lets in only an IPv6
    // block. Over their first (IPv4) addresses the rule does not apply; over IPv6 it does.
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "z"}})).unwrap();
    store.all::<Namespace>().create(&n).await.unwrap();
    for (name, v4, v6) in [
        ("a", "10.0.2.1", "fd00:10::1"),
        ("b", "10.0.2.2", "fd00:10::2"),
    ] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "z", "name": name, "labels": {"pod": name}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]}
        }))
        .unwrap();
        store.namespaced::<Pod>("z").create(&p).await.unwrap();
    }
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "z", "name": "v6"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:10::/64"}}]}]}
    }))
    .unwrap();
    store
        .namespaced::<NetworkPolicy>("z")
        .create(&np)
        .await
        .unwrap();
    let e = run(&["policy", "explain", "z/b", "z/a:80"]);
    assert!(
        e.contains("DENIED") && e.contains("addresses: 10.0.2.2 -> 10.0.2.1"),
        "{e}"
    );
    let e = run(&["policy", "explain", "--ipv6", "z/b", "z/a:80"]);
    assert!(
        e.contains("ALLOWED") && e.contains("allowed by z/v6, rule 0"),
        "{e}"
    );
    assert!(e.contains("addresses: fd00:10::2 -> fd00:10::1"), "{e}");
    // An IPv6 address for one end means IPv6 for the other.
    let e = run(&["policy", "explain", "fd00:10::2", "z/a:80"]);
    assert!(e.contains("ALLOWED") && e.contains("-> fd00:10::1"), "{e}");
    let e = run(&["policy", "explain", "z/b", "[fd00:10::1]:80"]);
    assert!(
        e.contains("ALLOWED") && e.contains("fd00:10::2 -> fd00:10::1"),
        "{e}"
    );
    // Two ends of different families are refused, not judged.
    let mixed = ctl.run(&["policy", "explain", "10.0.2.2", "[fd00:10::1]:80"]);
    assert_eq!(mixed.code, 2, "{mixed:#?}");
    assert!(mixed.stderr.contains("different families"), "{mixed:#?}");
    // A pod without an IPv6 address cannot be explained over IPv6.
    let none = ctl.run(&["policy", "explain", "--ipv6", "x/b", "z/a:80"]);
    assert_ne!(none.code, 0, "{none:#?}");
    assert!(
        none.stderr.contains("pod x/b has no IPv6 address"),
        "{none:#?}"
    );

    let bad = ctl.run(&["policy", "explain", "x/b", "x/a:99999"]);
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert!(bad.stderr.contains("not a port"), "{bad:#?}");
}
