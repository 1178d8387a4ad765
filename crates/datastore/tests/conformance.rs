//! One conformance suite, run against every backend: etcd (a real etcd process), kubernetes
//! (kube::Api over HTTP to the in-test API server of brindle-testsupport) and memory.
//! Test names say which backend ran: `etcd::crud`, `kubernetes::crud`, `memory::crud`.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use brindle_api::{IPAMHandle, IPAMHandleSpec, IPPool, IPPoolSpec};
use brindle_datastore::{Store, StoreError, WatchEvent};
use futures::StreamExt;
use harness::Harness;
use k8s_openapi::api::core::v1::Pod;

fn pool(name: &str, cidr: &str) -> IPPool {
    IPPool::new(name, IPPoolSpec::new(cidr))
}

fn rv<K: kube::Resource>(o: &K) -> String {
    o.meta()
        .resource_version
        .clone()
        .expect("stored objects carry a resourceVersion")
}

fn pod(ns: &str, name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod")
}

/// Retries a write while the datastore is coming back (after a restart in the test).
async fn retry_while_unavailable<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

async fn next_event<K: Clone + std::fmt::Debug>(
    w: &mut brindle_datastore::WatchStream<K>,
) -> Result<WatchEvent<K>, StoreError> {
    tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("no watch event within 30s")
        .expect("watch stream ended")
}

async fn crud(h: &mut impl Harness) {
    let store = h.store().await;
    let pools = store.all::<IPPool>();
    assert!(pools.get("p1").await.unwrap().is_none());

    let created = pools.create(&pool("p1", "10.244.0.0/16")).await.unwrap();
    assert!(created.metadata.uid.is_some(), "uid set on create");
    assert!(
        created.metadata.creation_timestamp.is_some(),
        "creationTimestamp set on create"
    );
    let got = pools.get("p1").await.unwrap().expect("created pool");
    assert_eq!(got.spec, created.spec);
    assert_eq!(rv(&got), rv(&created));

    let again = pools
        .create(&pool("p1", "10.245.0.0/16"))
        .await
        .unwrap_err();
    assert!(again.is_already_exists(), "{again}");

    let mut changed = got.clone();
    changed.spec.nat_outgoing = true;
    let updated = pools.update(&changed).await.unwrap();
    assert_ne!(
        rv(&updated),
        rv(&got),
        "a write changes the resourceVersion"
    );
    assert_eq!(
        updated.metadata.uid, created.metadata.uid,
        "uid survives an update"
    );
    assert!(pools.get("p1").await.unwrap().unwrap().spec.nat_outgoing);

    // The stale copy loses: compare-and-swap.
    let stale = pools.update(&changed).await.unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    assert!(
        stale.to_string().contains("ippools.brindle.dev/p1"),
        "{stale}"
    );

    let list = pools.list().await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(!list.revision.is_empty());

    let e = pools.delete("p1", Some(&rv(&got))).await.unwrap_err();
    assert!(e.is_conflict(), "delete with a stale precondition: {e}");
    pools.delete("p1", Some(&rv(&updated))).await.unwrap();
    assert!(pools.get("p1").await.unwrap().is_none());
    assert!(pools.delete("p1", None).await.unwrap_err().is_not_found());
    assert!(pools.update(&updated).await.unwrap_err().is_not_found());

    // Unconditional update (no resourceVersion) of an existing object.
    pools.create(&pool("p2", "10.246.0.0/16")).await.unwrap();
    let mut blind = pool("p2", "10.246.0.0/16");
    blind.spec.disabled = true;
    assert!(pools.update(&blind).await.unwrap().spec.disabled);
}

async fn namespaces(h: &mut impl Harness) {
    let store = h.store().await;
    store
        .namespaced::<Pod>("a")
        .create(&pod("a", "p"))
        .await
        .unwrap();
    store
        .namespaced::<Pod>("b")
        .create(&pod("b", "p"))
        .await
        .unwrap();
    store
        .namespaced::<Pod>("b")
        .create(&pod("b", "q"))
        .await
        .unwrap();
    assert_eq!(
        store
            .namespaced::<Pod>("a")
            .list()
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        store
            .namespaced::<Pod>("b")
            .list()
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert_eq!(store.all::<Pod>().list().await.unwrap().items.len(), 3);
    let got = store
        .namespaced::<Pod>("b")
        .get("q")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.metadata.namespace.as_deref(), Some("b"));
    // A pod without a namespace cannot be stored through the all-namespaces handle.
    let mut bare = pod("x", "bare");
    bare.metadata.namespace = None;
    assert!(store.all::<Pod>().create(&bare).await.is_err());
}

async fn validation(h: &mut impl Harness) {
    let store = h.store().await;
    let pools = store.all::<IPPool>();
    let e = pools
        .create(&pool("bad", "10.244.0.1/16"))
        .await
        .unwrap_err();
    match &e {
        StoreError::Invalid(inv) => assert!(inv.mentions("spec.cidr"), "{inv}"),
        other => panic!("expected Invalid, got {other}"),
    }
    pools.create(&pool("a", "10.244.0.0/16")).await.unwrap();
    let e = pools
        .create(&pool("b", "10.244.64.0/18"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps IPPool \"a\""), "{e}");
    assert_eq!(
        pools.list().await.unwrap().items.len(),
        1,
        "nothing invalid was stored"
    );
    let mut a = pools.get("a").await.unwrap().unwrap();
    a.spec.block_size = Some(28);
    let e = pools.update(&a).await.unwrap_err();
    assert!(e.to_string().contains("spec.blockSize: immutable"), "{e}");
    assert_eq!(pools.get("a").await.unwrap().unwrap().spec.block_size, None);
}

/// Kubernetes' own kinds, including one outside the core group, and the node's BGP facts
/// carried as annotations on the Node.
async fn native_kinds(h: &mut impl Harness) {
    use brindle_api::NodeBgp;
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let store = h.store().await;
    let bgp = NodeBgp {
        ipv4_address: Some("198.18.0.11/24".into()),
        as_number: Some(64512),
        ..Default::default()
    };
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    node.metadata.annotations = Some(bgp.to_annotations());
    store.all::<Node>().create(&node).await.unwrap();
    let got = store.all::<Node>().get("n1").await.unwrap().unwrap();
    let back = NodeBgp::from_annotations(&got.metadata.annotations.unwrap_or_default()).unwrap();
    assert_eq!(back, bgp);

    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    let services = store.namespaced::<Service>("default");
    services.create(&svc).await.unwrap();
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.5"], "zone": "a", "nodeName": "n1"}],
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    let slices = store.namespaced::<EndpointSlice>("default");
    let list_rev = slices.list().await.unwrap().revision;
    let mut w = slices.watch(&list_rev).await.unwrap();
    slices.create(&slice).await.unwrap();
    let ev = next_event(&mut w).await.unwrap();
    assert_eq!(
        ev.object().endpoints.as_ref().unwrap()[0].addresses,
        vec!["10.244.0.5".to_string()]
    );
    let got = services.get("web").await.unwrap().unwrap();
    assert_eq!(got.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
}

/// A merge patch sets what it names, removes what it sets to null, leaves the rest (a
/// label, another writer's annotation), and is seen by a watcher; a missing object is
/// NotFound.
async fn merge_patch(h: &mut impl Harness) {
    use k8s_openapi::api::core::v1::Node;
    let store = h.store().await;
    let nodes = store.all::<Node>();
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    node.metadata.labels = Some([("zone".to_string(), "a".to_string())].into());
    node.metadata.annotations = Some(
        [
            ("kubelet/owned".to_string(), "x".to_string()),
            ("brindle.dev/old".to_string(), "y".to_string()),
        ]
        .into(),
    );
    nodes.create(&node).await.unwrap();
    let rev = nodes.list().await.unwrap().revision;
    let mut w = nodes.watch(&rev).await.unwrap();
    let got = nodes
        .merge_patch(
            "n1",
            serde_json::json!({"metadata": {"annotations": {
                "brindle.dev/new": "z", "brindle.dev/old": null}}}),
        )
        .await
        .unwrap();
    let ann = got.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get("brindle.dev/new").map(String::as_str), Some("z"));
    assert_eq!(ann.get("kubelet/owned").map(String::as_str), Some("x"));
    assert!(!ann.contains_key("brindle.dev/old"), "{ann:?}");
    assert_eq!(got.metadata.labels.unwrap()["zone"], "a");
    let ev = next_event(&mut w).await.unwrap();
    assert!(
        ev.object()
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("brindle.dev/new")),
        "the watcher sees the patch"
    );
    let e = nodes
        .merge_patch(
            "nope",
            serde_json::json!({"metadata": {"annotations": {"a": "b"}}}),
        )
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

/// 8 writers increment one counter by compare-and-swap; no increment may be lost.
async fn cas_under_contention(h: &mut impl Harness) {
    const WRITERS: usize = 8;
    const EACH: u32 = 25;
    let store = h.store().await;
    let handle = IPAMHandle::new(
        "counter",
        IPAMHandleSpec {
            handle_id: "counter".into(),
            block: BTreeMap::from([("10.0.0.0/26".to_string(), 0)]),
            deleted: false,
        },
    );
    store.all::<IPAMHandle>().create(&handle).await.unwrap();
    let mut tasks = vec![];
    for _ in 0..WRITERS {
        let api = h.store().await.all::<IPAMHandle>(); // a client of its own per writer
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..EACH {
                loop {
                    let mut h = api.get("counter").await.unwrap().unwrap();
                    *h.spec.block.get_mut("10.0.0.0/26").unwrap() += 1;
                    match api.update(&h).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let end = store
        .all::<IPAMHandle>()
        .get("counter")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end.spec.block["10.0.0.0/26"],
        WRITERS as u32 * EACH,
        "lost updates"
    );
    println!(
        "{}: {} CAS increments from {WRITERS} writers, {conflicts} conflicts retried, none lost",
        store.backend_name(),
        WRITERS as u32 * EACH
    );
}

/// Every write shows up once, in order, with the resourceVersion the write returned.
async fn watch_order_and_resume(h: &mut impl Harness) {
    let store = h.store().await;
    let pools = store.all::<IPPool>();
    let start = pools.list().await.unwrap().revision;
    let mut w = pools.watch(&start).await.unwrap();

    // (kind of event, name, natOutgoing, resourceVersion returned by the write)
    let mut expected = vec![];
    for i in 0..5 {
        let p = pools
            .create(&pool(&format!("p{i}"), &format!("10.{i}.0.0/16")))
            .await
            .unwrap();
        expected.push(("added", format!("p{i}"), false, rv(&p)));
    }
    for round in 0..4 {
        for i in 0..5 {
            let mut p = pools.get(&format!("p{i}")).await.unwrap().unwrap();
            p.spec.nat_outgoing = round % 2 == 0;
            let p = pools.update(&p).await.unwrap();
            expected.push(("modified", format!("p{i}"), p.spec.nat_outgoing, rv(&p)));
        }
    }
    for i in [1, 3] {
        pools.delete(&format!("p{i}"), None).await.unwrap();
        let last_nat = expected
            .iter()
            .rev()
            .find(|e| e.1 == format!("p{i}"))
            .unwrap()
            .2;
        expected.push(("deleted", format!("p{i}"), last_nat, String::new()));
    }

    let mut seen = vec![];
    for _ in 0..expected.len() {
        let ev = next_event(&mut w).await.unwrap();
        let kind = match &ev {
            WatchEvent::Added(_) => "added",
            WatchEvent::Modified(_) => "modified",
            WatchEvent::Deleted(_) => "deleted",
        };
        let o = ev.object();
        seen.push((
            kind,
            o.metadata.name.clone().unwrap(),
            o.spec.nat_outgoing,
            rv(o),
        ));
    }
    for (i, (e, s)) in expected.iter().zip(&seen).enumerate() {
        assert_eq!((e.0, &e.1, e.2), (s.0, &s.1, s.2), "event {i}");
        if !e.3.is_empty() {
            assert_eq!(e.3, s.3, "event {i} carries the write's resourceVersion");
        }
    }
    let revs: Vec<u64> = seen
        .iter()
        .map(|s| s.3.parse().expect("numeric revision"))
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "revisions increase: {revs:?}"
    );

    // Resume: a new watch from the revision of event 10 sees exactly events 11.. again.
    let mut again = pools.watch(&seen[10].3).await.unwrap();
    for (i, s) in seen.iter().enumerate().skip(11) {
        let ev = next_event(&mut again).await.unwrap();
        assert_eq!(rv(ev.object()), s.3, "resumed event {i}");
    }
}

/// The connection under a watch breaks (etcd restarts; the API server cuts its watches): the
/// watch carries on from where it was, losing and repeating nothing.
async fn watch_survives_interruption(h: &mut impl Harness) {
    let store = h.store().await;
    let pools = store.all::<IPPool>();
    let start = pools.list().await.unwrap().revision;
    let mut w = pools.watch(&start).await.unwrap();
    for i in 0..3 {
        pools
            .create(&pool(&format!("a{i}"), &format!("10.{i}.0.0/16")))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let ev = next_event(&mut w).await.unwrap();
        assert_eq!(
            ev.object().metadata.name.as_deref(),
            Some(format!("a{i}").as_str())
        );
    }
    if !h.interrupt().await {
        println!(
            "{}: no connection to interrupt; resume-after-drop not applicable",
            store.backend_name()
        );
        return;
    }
    for i in 3..6 {
        let p = pool(&format!("a{i}"), &format!("10.{i}.0.0/16"));
        retry_while_unavailable(|| pools.create(&p)).await;
    }
    for i in 3..6 {
        let ev = next_event(&mut w).await.unwrap();
        assert!(matches!(ev, WatchEvent::Added(_)));
        assert_eq!(
            ev.object().metadata.name.as_deref(),
            Some(format!("a{i}").as_str()),
            "after reconnect"
        );
    }
    // Nothing repeated: the next thing on the watch is a new write, not an old event.
    let b = pool("b", "10.200.0.0/16");
    let p = retry_while_unavailable(|| pools.create(&b)).await;
    let ev = next_event(&mut w).await.unwrap();
    assert_eq!(rv(ev.object()), rv(&p));
}

/// A watch from a compacted revision ends with Expired, which tells the caller to relist.
async fn watch_expired(h: &mut impl Harness) {
    let store = h.store().await;
    let pools = store.all::<IPPool>();
    let old = pools.list().await.unwrap().revision;
    for i in 0..3 {
        pools
            .create(&pool(&format!("x{i}"), &format!("10.{i}.0.0/16")))
            .await
            .unwrap();
    }
    h.compact().await;
    let mut w = pools.watch(&old).await.unwrap();
    let e = next_event(&mut w).await.unwrap_err();
    assert!(e.is_expired(), "{e}");
    assert!(e.to_string().contains("relist"), "{e}");
    // The documented recovery: list again, watch from the list's revision.
    let list = pools.list().await.unwrap();
    assert_eq!(list.items.len(), 3);
    let mut w = pools.watch(&list.revision).await.unwrap();
    pools.create(&pool("y", "10.100.0.0/16")).await.unwrap();
    let ev = next_event(&mut w).await.unwrap();
    assert_eq!(ev.object().metadata.name.as_deref(), Some("y"));
}

/// An unreachable datastore is a clear error naming the backend and the key, in bounded time.
async fn unreachable(h: &mut impl Harness) {
    let store: Store = h.unreachable().await;
    let t = tokio::time::Instant::now();
    let e = store.all::<IPPool>().get("default-pool").await.unwrap_err();
    let msg = e.to_string();
    assert!(e.is_unavailable(), "{msg}");
    assert!(msg.contains(store.backend_name()), "{msg}");
    assert!(msg.contains("ippools.brindle.dev/default-pool"), "{msg}");
    println!(
        "{}: unreachable → {msg} (after {:?})",
        store.backend_name(),
        t.elapsed()
    );
    let e = store
        .all::<IPPool>()
        .create(&pool("p", "10.1.0.0/16"))
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

/// Multi-object transactions: all or nothing, the first failing write's own error, and on a
/// backend without them a plain refusal that writes nothing.
async fn transactions(h: &mut impl Harness) {
    let store = h.store().await;
    let pods = store.namespaced::<Pod>("default");
    let handles = store.all::<IPAMHandle>();
    let handle = |id: &str| {
        IPAMHandle::new(
            id,
            IPAMHandleSpec {
                handle_id: id.into(),
                block: BTreeMap::from([("10.9.0.0/26".to_string(), 1)]),
                deleted: false,
            },
        )
    };
    // A kind validated against its others cannot be written in a transaction.
    let e = store
        .txn()
        .create(&store.all::<IPPool>(), &pool("t0", "10.8.0.0/16"))
        .unwrap_err();
    assert!(e.to_string().contains("write it alone"), "{e}");

    let p = pods.create(&pod("default", "t1")).await.unwrap();
    let mut t = store.txn();
    t.create(&handles, &handle("h1")).unwrap();
    let mut changed = p.clone();
    changed
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("x".into(), "1".into());
    t.update(&pods, &changed).unwrap();
    assert!(t.key(1).unwrap().as_str().ends_with("default/t1"));
    if !store.transactions() {
        let e = t.commit().await.unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(
            handles.get("h1").await.unwrap().is_none(),
            "nothing written"
        );
        return;
    }
    let done = t.commit().await.unwrap();
    let h1 = done.get(&handles, 0).unwrap().expect("created handle");
    let p2 = done.get(&pods, 1).unwrap().expect("updated pod");
    assert_eq!(rv(&h1), rv(&handles.get("h1").await.unwrap().unwrap()));
    assert_eq!(rv(&p2), rv(&pods.get("t1").await.unwrap().unwrap()));
    assert!(h1.metadata.uid.is_some() && h1.metadata.creation_timestamp.is_some());
    assert_eq!(p2.metadata.uid, p.metadata.uid, "uid survives");
    assert!(p2.metadata.labels.unwrap().contains_key("x"));

    // A stale update with a good create: neither lands, and the error names the stale one.
    let mut t = store.txn();
    t.create(&handles, &handle("h2")).unwrap();
    t.update(&pods, &changed).unwrap(); // `changed` carries p's old version
    let e = t.commit().await.unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert!(e.to_string().contains("default/t1"), "{e}");
    assert!(handles.get("h2").await.unwrap().is_none(), "all or nothing");

    // A create of a taken name, and a delete of a missing object.
    let p2 = pods.get("t1").await.unwrap().unwrap();
    let mut t = store.txn();
    t.update(&pods, &p2).unwrap();
    t.create(&handles, &handle("h1")).unwrap();
    assert!(t.commit().await.unwrap_err().is_already_exists());
    let mut t = store.txn();
    t.delete(&handles, "nope", None);
    assert!(t.commit().await.unwrap_err().is_not_found());
    assert_eq!(rv(&pods.get("t1").await.unwrap().unwrap()), rv(&p2));

    // Delete with a precondition plus an update, together; one object twice is refused.
    let mut t = store.txn();
    t.delete(&handles, "h1", Some(&rv(&h1)));
    t.update(&pods, &p2).unwrap();
    t.commit().await.unwrap();
    assert!(handles.get("h1").await.unwrap().is_none());
    let p3 = pods.get("t1").await.unwrap().unwrap();
    let mut t = store.txn();
    t.update(&pods, &p3).unwrap();
    t.delete(&pods, "t1", None);
    let e = t.commit().await.unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

fn pod_on(ns: &str, name: &str, node: Option<&str>) -> Pod {
    let mut p = pod(ns, name);
    if let Some(spec) = p.spec.as_mut() {
        spec.node_name = node.map(str::to_owned);
    }
    p
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

/// What a watch event says, as `ADDED a/p`.
fn said(ev: WatchEvent<Pod>) -> String {
    let (what, p) = match ev {
        WatchEvent::Added(p) => ("ADDED", p),
        WatchEvent::Modified(p) => ("MODIFIED", p),
        WatchEvent::Deleted(p) => ("DELETED", p),
    };
    format!("{what} {}", names(&[p])[0])
}

/// `Api::on_node`: the datastore gives one node's pods only, in lists and watches, as pods
/// are created, bound, changed, moved, patched, deleted, one at a time or in transactions.
/// Other nodes' changes never reach the watch: each expected event is the very next one.
async fn node_scope(h: &mut impl Harness) {
    let store = h.store().await;
    let a = store.namespaced::<Pod>("a");
    let b = store.namespaced::<Pod>("b");
    a.create(&pod_on("a", "p1", Some("n1"))).await.unwrap();
    a.create(&pod_on("a", "p2", Some("n2"))).await.unwrap();
    b.create(&pod_on("b", "p3", Some("n1"))).await.unwrap();
    a.create(&pod_on("a", "p4", None)).await.unwrap();
    let mine = store.all::<Pod>().on_node("n1");
    let list = mine.list().await.unwrap();
    assert_eq!(names(&list.items), ["a/p1", "b/p3"]);
    assert_eq!(
        names(
            &store
                .namespaced::<Pod>("a")
                .on_node("n1")
                .list()
                .await
                .unwrap()
                .items
        ),
        ["a/p1"]
    );
    let mut w = mine.watch(&list.revision).await.unwrap();
    macro_rules! next {
        () => {
            said(next_event(&mut w).await.unwrap())
        };
    }

    a.create(&pod_on("a", "p5", Some("n2"))).await.unwrap();
    let mut p4 = a.get("p4").await.unwrap().unwrap();
    p4.spec.as_mut().unwrap().node_name = Some("n1".into());
    a.update(&p4).await.unwrap();
    assert_eq!(next!(), "ADDED a/p4", "bound to n1");

    let mut p2 = a.get("p2").await.unwrap().unwrap();
    p2.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    a.update(&p2).await.unwrap();
    let mut p1 = a.get("p1").await.unwrap().unwrap();
    p1.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    a.update(&p1).await.unwrap();
    assert_eq!(next!(), "MODIFIED a/p1");

    let mut p3 = b.get("p3").await.unwrap().unwrap();
    p3.spec.as_mut().unwrap().node_name = Some("n2".into());
    b.update(&p3).await.unwrap();
    assert_eq!(next!(), "DELETED b/p3", "moved off n1");

    a.delete("p5", None).await.unwrap();
    a.delete("p1", None).await.unwrap();
    assert_eq!(next!(), "DELETED a/p1");

    a.merge_patch(
        "p2",
        serde_json::json!({"metadata": {"labels": {"y": "2"}}}),
    )
    .await
    .unwrap();
    a.merge_patch(
        "p4",
        serde_json::json!({"metadata": {"labels": {"y": "2"}}}),
    )
    .await
    .unwrap();
    assert_eq!(next!(), "MODIFIED a/p4", "a merge patch");

    if store.transactions() {
        let mut t = store.txn();
        t.create(&a, &pod_on("a", "p6", Some("n1"))).unwrap();
        t.create(&a, &pod_on("a", "p7", Some("n2"))).unwrap();
        let mut moved = a.get("p2").await.unwrap().unwrap();
        moved.spec.as_mut().unwrap().node_name = Some("n1".into());
        t.update(&a, &moved).unwrap();
        t.commit().await.unwrap();
        let mut got = vec![next!(), next!()];
        got.sort();
        assert_eq!(got, ["ADDED a/p2", "ADDED a/p6"], "a transaction");
        let mut t = store.txn();
        t.delete(&a, "p7", None);
        t.delete(&a, "p6", None);
        t.commit().await.unwrap();
        assert_eq!(next!(), "DELETED a/p6", "deleted in a transaction");
    }
    a.create(&pod_on("a", "last", Some("n1"))).await.unwrap();
    assert_eq!(next!(), "ADDED a/last", "nothing else came first");

    // What is stored under each node agrees with the pods themselves (no entry left behind).
    for n in ["n1", "n2"] {
        let all = store.all::<Pod>().list().await.unwrap().items;
        let on: Vec<Pod> = all
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n))
            .collect();
        let listed = store.all::<Pod>().on_node(n).list().await.unwrap().items;
        assert_eq!(names(&listed), names(&on), "node {n}");
        for p in &listed {
            let stored = store
                .namespaced::<Pod>(p.metadata.namespace.as_deref().unwrap())
                .get(p.metadata.name.as_deref().unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&stored, p, "the node's copy is the pod as stored");
        }
    }
}

macro_rules! suite {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;
            suite!(@tests $harness; crud, namespaces, native_kinds, merge_patch, validation, cas_under_contention,
                watch_order_and_resume, watch_survives_interruption, watch_expired, unreachable,
                transactions, node_scope);
        }
    };
    (@tests $harness:expr; $($t:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $t() {
            let mut h = $harness.await;
            super::$t(&mut h).await;
        }
    )*};
}

suite!(etcd, harness::EtcdHarness::start());
suite!(kubernetes, harness::KubeHarness::start());
suite!(memory, harness::MemoryHarness::start());

/// etcd's node index after records were written around it (before it existed, or by another
/// writer): `repair_indexes` adds what is missing, rewrites what is stale, removes orphans,
/// and has nothing to do a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_node_index_repair() {
    use brindle_datastore::backend::etcd::EtcdBackend;
    let h = harness::EtcdHarness::start().await;
    let store = h.store().await;
    let mut raw = EtcdBackend::connect(&[h.endpoint()])
        .await
        .expect("connect")
        .client();
    let a = store.namespaced::<Pod>("a");
    a.create(&pod_on("a", "p1", Some("n1"))).await.unwrap();
    let json = |p: &Pod| serde_json::to_vec(p).unwrap();
    // A record from before the index, one moved without it, an entry with no pod.
    raw.put(
        "/brindle/pods/a/old",
        json(&pod_on("a", "old", Some("n1"))),
        None,
    )
    .await
    .unwrap();
    raw.put(
        "/brindle/pods/a/p1",
        json(&pod_on("a", "p1", Some("n2"))),
        None,
    )
    .await
    .unwrap();
    raw.put(
        "/brindle/by-node/pods/n2/a/ghost",
        json(&pod_on("a", "ghost", Some("n2"))),
        None,
    )
    .await
    .unwrap();
    let on = |n: &'static str| {
        let store = store.clone();
        async move { names(&store.all::<Pod>().on_node(n).list().await.unwrap().items) }
    };
    assert_eq!(
        on("n1").await,
        ["a/p1"],
        "the stale entry, before the repair"
    );
    assert_eq!(store.repair_indexes().await.unwrap(), 4);
    assert_eq!(on("n1").await, ["a/old"]);
    assert_eq!(on("n2").await, ["a/p1"]);
    let listed = store.all::<Pod>().on_node("n2").list().await.unwrap().items;
    let stored = a.get("p1").await.unwrap().unwrap();
    assert_eq!(listed[0], stored, "the entry is the pod, at its revision");
    assert_eq!(store.repair_indexes().await.unwrap(), 0);
}
