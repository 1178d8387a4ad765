//! The plugin with IPAM served by the agent's socket (`brindle_cni::agent::Server`, the code
//! brindle-node runs), against a real etcd: a wired pod, a repeated ADD, pods whose
//! annotations ask for an address or a pool, DEL, a request for another node, and the agent
//! gone (the plugin does IPAM itself).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use brindle_api::{IPAMBlock, IPPool, IPPoolSpec};
use brindle_cni::agent::Server;
use brindle_ipam::Ipam;
use brindle_testsupport::Netns;
use common::*;
use k8s_openapi::api::core::v1::Pod;

fn log_says(f: &Fixture, container: &str, who: &str) -> bool {
    let log = std::fs::read_to_string(f.dir.0.join("cni.log")).unwrap_or_default();
    log.lines().any(|l| {
        l.contains(&format!("container={container} ")) && l.contains(&format!("ipam=\"{who}\""))
    })
}

async fn allocations(f: &Fixture) -> Vec<(String, Option<String>)> {
    let mut out = vec![];
    for b in f.store.all::<IPAMBlock>().list().await.unwrap().items {
        for a in brindle_ipam::block::allocations(&b.spec) {
            out.push((a.ip.to_string(), a.handle));
        }
    }
    out.sort();
    out
}

async fn pod(f: &Fixture, name: &str, annotations: &[(&str, &str)]) {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    f.store
        .namespaced::<Pod>("default")
        .create(&p)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_through_the_agent_and_without_it() {
    let f = Fixture::new("10.67.0.0/16").await;
    let mut other = IPPoolSpec::new("10.68.0.0/24");
    other.block_size = Some(28);
    f.store
        .all::<IPPool>()
        .create(&IPPool::new("other", other))
        .await
        .unwrap();
    let socket = f.dir.0.join("ipam.sock");
    // What the agent's metrics are told of each request.
    let seen: Arc<std::sync::Mutex<Vec<(&str, &str)>>> = Default::default();
    let record = seen.clone();
    let agent = tokio::spawn(
        Server {
            store: f.store.clone(),
            ipam: Arc::new(Ipam::new(f.store.clone())),
            node: NODE.into(),
            path: socket.clone(),
            attachments: None,
            observe: Some(Arc::new(move |op, result, _| {
                record.lock().unwrap().push((op, result));
            })),
        }
        .run(),
    );
    while !socket.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut conf = f.conf("1.0.0");
    conf["ipam_socket"] = socket.display().to_string().into();
    conf["ipam"]["ipv4_pools"] = serde_json::json!(["pods"]);
    let ipam_only = [("BRINDLE_CNI_MODE", "ipam")];
    let run = |cmd: &str, cid: &str, pod: &str, netns: Option<&str>, env: &[(&str, &str)]| {
        f.cni_raw(
            cmd,
            cid,
            Some(("default", pod)),
            netns,
            conf.to_string().as_bytes(),
            env,
        )
    };

    // A wired pod: the agent did IPAM, the plugin wired it, etcd holds its record.
    let ns = Netns::new("brl-pod");
    pod(&f, "web", &[]).await;
    let a = run("ADD", "cweb", "web", Some(&ns.path()), &[]);
    assert!(a.ok, "{}", a.json);
    let ip = ip_of(&a.json);
    assert!(ip.starts_with("10.67."), "{ip}");
    assert!(log_says(&f, "cweb", "agent"));
    let rec = f
        .store
        .namespaced::<Pod>("default")
        .get("web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status.unwrap().pod_ip.as_deref(), Some(ip.as_str()));
    // Repeated: the same address, nothing new taken.
    let again = run("ADD", "cweb", "web", Some(&ns.path()), &[]);
    assert!(again.ok, "{}", again.json);
    assert_eq!(ip_of(&again.json), ip);
    assert_eq!(allocations(&f).await.len(), 1);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [("add", "ok"), ("add", "ok")],
        "each request observed with its result"
    );

    // Annotations: a fixed address, then a pool. The guess taken while the pod was read
    // is given back; only the asked-for addresses remain.
    pod(&f, "fixed", &[("brindle.dev/ipAddrs", "[\"10.67.200.7\"]")]).await;
    let x = run("ADD", "cfixed", "fixed", None, &ipam_only);
    assert!(x.ok, "{}", x.json);
    assert_eq!(ip_of(&x.json), "10.67.200.7");
    pod(&f, "pooled", &[("brindle.dev/ipv4pools", "[\"other\"]")]).await;
    let y = run("ADD", "cpooled", "pooled", None, &ipam_only);
    assert!(y.ok, "{}", y.json);
    assert!(ip_of(&y.json).starts_with("10.68.0."), "{}", y.json);
    let held = allocations(&f).await;
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(log_says(&f, "cfixed", "agent") && log_says(&f, "cpooled", "agent"));

    // A bad annotation: a clear error, nothing kept.
    pod(&f, "bad", &[("brindle.dev/ipv4pools", "other")]).await;
    let z = run("ADD", "cbad", "bad", None, &ipam_only);
    assert!(!z.ok);
    assert!(
        z.json["msg"].as_str().unwrap().contains("ipv4pools"),
        "{}",
        z.json
    );
    assert_eq!(allocations(&f).await.len(), 3);

    // DEL through the agent: address and record gone.
    let d = run("DEL", "cweb", "web", Some(&ns.path()), &[]);
    assert!(d.ok, "{}", d.json);
    assert!(log_says(&f, "cweb", "agent"));
    assert!(f
        .store
        .namespaced::<Pod>("default")
        .get("web")
        .await
        .unwrap()
        .is_none());
    assert_eq!(allocations(&f).await.len(), 2);

    // Another node's request: declined, the plugin does it itself.
    let mut elsewhere = conf.clone();
    elsewhere["nodename"] = "node-b".into();
    f.store
        .all::<brindle_api::BrindleNode>()
        .create(&brindle_ipam::nodes::brindle_node("node-b", &[]))
        .await
        .unwrap();
    let e = f.cni_raw(
        "ADD",
        "cb",
        Some(("default", "b")),
        None,
        elsewhere.to_string().as_bytes(),
        &ipam_only,
    );
    assert!(e.ok, "{}", e.json);
    assert!(log_says(&f, "cb", "plugin"));

    // The agent gone: the plugin does IPAM itself, and DEL of what the agent gave works.
    agent.abort();
    let _ = agent.await;
    let n = run("ADD", "cnoagent", "noagent", None, &ipam_only);
    assert!(n.ok, "{}", n.json);
    assert!(log_says(&f, "cnoagent", "plugin"));
    let d = run("DEL", "cpooled", "pooled", None, &ipam_only);
    assert!(d.ok, "{}", d.json);
    let held = allocations(&f).await;
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held
        .iter()
        .all(|(_, h)| h.as_deref() != Some("k8s-pod-network.cpooled")));
}
