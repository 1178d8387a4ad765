//! brindlectl against the in-test Kubernetes API server (there is no real kube-apiserver on
//! these machines; see brindle_testsupport::apiserver for what it does not cover), through a
//! kubeconfig whose current context is broken, so `--context` must choose the right one.

mod common;

use std::collections::BTreeMap;

use brindle_datastore::backend::kubernetes::KubernetesBackend;
use brindle_datastore::Store;
use brindle_testsupport::ApiServer;
use common::*;
use k8s_openapi::api::core::v1::Node;

struct Cluster {
    server: ApiServer,
    _dir: tempfile::TempDir,
    ctl: Ctl,
}

async fn cluster() -> Cluster {
    let server = ApiServer::start().await.expect("test API server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    // `broken` points at a port nothing listens on; `test` at the server.
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n- name: broken\n  cluster:\n    server: http://127.0.0.1:9\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: u}}\n- name: broken\n  context: {{cluster: broken, user: u}}\ncurrent-context: broken\n",
        server.url()
    );
    std::fs::write(&kc, text).expect("kubeconfig");
    let ctl = Ctl {
        flags: vec![
            "--datastore".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kc.display().to_string(),
            "--context".into(),
            "test".into(),
        ],
    };
    Cluster {
        server,
        _dir: dir,
        ctl,
    }
}

fn store(c: &Cluster) -> Store {
    let config = kube::Config::new(c.server.url().parse().expect("url"));
    Store::new(KubernetesBackend::from_config(config).expect("client"))
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_on_kubernetes() {
    let c = cluster().await;
    let ctl = Ctl {
        flags: c.ctl.flags.clone(),
    };
    tokio::task::spawn_blocking(move || resource_scenario(&ctl))
        .await
        .expect("scenario");
}

#[tokio::test(flavor = "multi_thread")]
async fn calico_documents_on_kubernetes() {
    let c = cluster().await;
    let ctl = Ctl {
        flags: c.ctl.flags.clone(),
    };
    tokio::task::spawn_blocking(move || calico_scenario(&ctl))
        .await
        .expect("scenario");
}

#[tokio::test(flavor = "multi_thread")]
async fn context_selection_and_nodes() {
    let c = cluster().await;
    // The current context is broken: without --context the datastore is unreachable, and
    // the error says where it tried.
    let mut no_ctx = Ctl {
        flags: c.ctl.flags.clone(),
    };
    no_ctx.flags.truncate(4);
    let o = tokio::task::spawn_blocking(move || no_ctx.run(&["get", "ippools"]))
        .await
        .expect("run");
    o.fails(1, "127.0.0.1:9");
    // An unknown context is named.
    let mut bad_ctx = Ctl {
        flags: c.ctl.flags.clone(),
    };
    bad_ctx.flags[5] = "nope".into();
    let o = tokio::task::spawn_blocking(move || bad_ctx.run(&["get", "ippools"]))
        .await
        .expect("run");
    o.fails(1, "nope");

    // Nodes are the Kubernetes Nodes, BGP facts from brindle.dev annotations.
    let s = store(&c);
    let mut n = Node::default();
    n.metadata.name = Some("kn-1".into());
    n.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/hostname".into(),
        "kn-1".into(),
    )]));
    n.metadata.annotations = Some(BTreeMap::from([
        ("brindle.dev/ipv4-address".into(), "198.18.0.11/24".into()),
        ("brindle.dev/agent-version".into(), "0.1.0".into()),
        ("node.alpha.kubernetes.io/ttl".into(), "0".into()),
    ]));
    s.all::<Node>().create(&n).await.expect("node");
    let ctl = Ctl {
        flags: c.ctl.flags.clone(),
    };
    tokio::task::spawn_blocking(move || {
        let t = ctl.run(&["get", "nodes", "-o", "wide"]).ok().to_string();
        assert!(
            t.contains("kn-1") && t.contains("198.18.0.11/24") && t.contains("0.1.0"),
            "{t}"
        );
        let v = ctl.run(&["version"]).ok().to_string();
        assert!(
            v.contains("kn-1") && v.contains("0.1.0") && v.contains("kubernetes"),
            "{v}"
        );
        // apply of a Node sets its BGP facts (and labels) on the Kubernetes Node.
        let mut node: serde_json::Value =
            serde_json::from_str(ctl.run(&["get", "node", "kn-1", "-o", "json"]).ok())
                .expect("json");
        node["spec"]["bgp"]["asNumber"] = 65010.into();
        node["spec"]["bgp"]["routeReflectorClusterID"] = "224.0.0.1".into();
        ctl.run_with(&["apply", "-f", "-"], Some(&node.to_string()))
            .ok();
        ctl.run(&["label", "node", "kn-1", "route-reflector=true"])
            .ok();
        // Round trip of nodes changes nothing.
        let y = ctl.run(&["get", "nodes", "-o", "yaml"]).ok().to_string();
        let o = ctl.run_with(&["apply", "-f", "-"], Some(&y));
        assert!(o.ok().is_empty() && o.stderr.contains("unchanged"), "{o:?}");
        // Nodes come from the kubelet: create and delete are refused with the reason.
        let new = "apiVersion: brindle.dev/v1\nkind: Node\nmetadata: {name: kn-2}\nspec: {}\n";
        ctl.run_with(&["apply", "-f", "-"], Some(new))
            .fails(1, "kubelet");
        ctl.run(&["delete", "node", "kn-1"]).fails(1, "kubectl");
    })
    .await
    .expect("run");
    let n = s
        .all::<Node>()
        .get("kn-1")
        .await
        .expect("get")
        .expect("node");
    let ann = n.metadata.annotations.expect("annotations");
    assert_eq!(ann["brindle.dev/as-number"], "65010");
    assert_eq!(ann["brindle.dev/route-reflector-cluster-id"], "224.0.0.1");
    assert_eq!(
        ann["node.alpha.kubernetes.io/ttl"], "0",
        "other annotations are kept"
    );
    assert_eq!(
        n.metadata.labels.expect("labels")["route-reflector"],
        "true"
    );
}
