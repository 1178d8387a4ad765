//! The controller binary against a real etcd: a deleted pod's address is released after the
//! grace period, a live pod's never; a deleted node's blocks, affinities and tunnel address
//! are freed.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use brindle_api::{
    BlockAffinity, BrindleNode, IPAMBlock, IPAMHandle, IPPool, IPPoolSpec, IpipMode,
};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_ipam::nodes::brindle_node;
use brindle_ipam::{AssignRequest, Ipam};
use brindle_testsupport::EtcdServer;
use k8s_openapi::api::core::v1::Pod;

/// Kills the controller (by its PID) however the test ends.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": []}
    }))
    .unwrap()
}

fn req(node: &str, pod: &str) -> AssignRequest {
    AssignRequest::pod(node, "default", pod, pod, 1)
}

async fn allocated(store: &Store) -> Vec<IpAddr> {
    let mut out = vec![];
    for b in store.all::<IPAMBlock>().list().await.unwrap().items {
        out.extend(
            brindle_ipam::block::allocations(&b.spec)
                .into_iter()
                .map(|a| a.ip),
        );
    }
    out.sort();
    out
}

/// Polls until `cond` holds (the controller works on its own schedule), up to 60 s.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 60s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_collects_leaks_and_deleted_nodes() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let store = Store::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    let mut pool = IPPoolSpec::new("10.50.0.0/24");
    pool.block_size = Some(28);
    pool.ipip_mode = IpipMode::Always;
    store
        .all::<IPPool>()
        .create(&IPPool::new("pool", pool))
        .await
        .unwrap();
    for n in ["n1", "n2"] {
        store
            .all::<BrindleNode>()
            .create(&brindle_node(n, &[]))
            .await
            .unwrap();
    }
    let ipam = Ipam::new(store.clone());
    for (p, n) in [("live", "n1"), ("doomed", "n1"), ("other", "n2")] {
        store
            .namespaced::<Pod>("default")
            .create(&pod(p, n))
            .await
            .unwrap();
        ipam.assign(&req(n, p)).await.unwrap();
    }
    let tunnel = ipam.ensure_tunnel_address("n2").await.unwrap().unwrap();
    let live = ipam.ips_of_handle("k8s-pod-network.live").await.unwrap();
    let doomed = ipam.ips_of_handle("k8s-pod-network.doomed").await.unwrap();

    let grace = 3;
    let _ctl = Controller(
        Command::new(env!("CARGO_BIN_EXE_brindle-controller"))
            .args(["--datastore", "etcd", "--etcd-endpoints", &etcd.endpoint()])
            .args(["--metrics-listen", "none"])
            .args([
                "--grace",
                &format!("{grace}s"),
                "--resync",
                "2s",
                "--debounce",
                "0s",
            ])
            .args(["--log", "info"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start brindle-controller"),
    );

    // The pod goes; its address stays allocated (the pod's CNI DEL never ran).
    let deleted_at = tokio::time::Instant::now();
    store
        .namespaced::<Pod>("default")
        .delete("doomed", None)
        .await
        .unwrap();
    eventually("the deleted pod's address is released", || async {
        !allocated(&store).await.contains(&doomed[0])
    })
    .await;
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(grace),
        "released before the grace period"
    );
    assert!(
        allocated(&store).await.contains(&live[0]),
        "the live pod keeps its address"
    );
    assert!(store
        .all::<IPAMHandle>()
        .get("k8s-pod-network.doomed")
        .await
        .unwrap()
        .is_none());

    // Node n2 goes, and with it its pod.
    store.all::<BrindleNode>().delete("n2", None).await.unwrap();
    store
        .namespaced::<Pod>("default")
        .delete("other", None)
        .await
        .unwrap();
    eventually(
        "n2's blocks, affinities and addresses are freed",
        || async {
            let affs = store.all::<BlockAffinity>().list().await.unwrap().items;
            let blocks = store.all::<IPAMBlock>().list().await.unwrap().items;
            let ips = allocated(&store).await;
            affs.iter().all(|a| a.spec.node == "n1")
                && blocks
                    .iter()
                    .all(|b| b.spec.affinity.as_deref() == Some("host:n1"))
                && !ips.contains(&tunnel)
                && ips == live
        },
    )
    .await;
    let handles: Vec<_> = store.all::<IPAMHandle>().list().await.unwrap().items;
    assert_eq!(
        handles.len(),
        1,
        "only the live pod's handle is left: {handles:?}"
    );
}

/// A cluster with no IPPool gets the default one (calico-node's CALICO_IPV4POOL_CIDR);
/// a cluster that has one gets nothing; an invalid setting stops the controller and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pool_is_made_only_when_there_is_none() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let store = Store::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    let start = |extra: &[&str]| {
        Controller(
            Command::new(env!("CARGO_BIN_EXE_brindle-controller"))
                .args(["--datastore", "etcd", "--etcd-endpoints", &etcd.endpoint()])
                .args(["--metrics-listen", "none"])
                .args(extra)
                .stdin(Stdio::null())
                // Read only once it has ended (the failing start logs a few lines).
                .stderr(if extra.is_empty() {
                    Stdio::inherit()
                } else {
                    Stdio::piped()
                })
                .spawn()
                .expect("start brindle-controller"),
        )
    };
    let bad = start(&["--default-ipv4-pool-cidr", "10.244.0.1/16"]);
    let out = ended(bad);
    assert!(!out.0, "an invalid default pool must stop the controller");
    assert!(
        out.1.contains("spec.cidr") && out.1.contains("host bits"),
        "{}",
        out.1
    );
    assert!(store.all::<IPPool>().list().await.unwrap().items.is_empty());

    let _ctl = start(&[]);
    let pools = || async { store.all::<IPPool>().list().await.unwrap().items };
    eventually("the default pool", || async { !pools().await.is_empty() }).await;
    let p = &pools().await[0];
    assert_eq!(p.metadata.name.as_deref(), Some("default-ipv4-ippool"));
    assert_eq!(p.spec.cidr, "10.244.0.0/16");
    assert_eq!(p.spec.block_size, Some(26));
    assert_eq!(p.spec.ipip_mode, IpipMode::CrossSubnet);
    assert!(p.spec.nat_outgoing);
    drop(_ctl);

    // Deleted and replaced by the operator's own pool: a restart makes no second one.
    store
        .all::<IPPool>()
        .delete("default-ipv4-ippool", None)
        .await
        .unwrap();
    store
        .all::<IPPool>()
        .create(&IPPool::new("mine", IPPoolSpec::new("10.70.0.0/16")))
        .await
        .unwrap();
    let _ctl = start(&[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<_> = pools()
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["mine"]);
    drop(_ctl);

    // An IPv6 default pool when asked for: made beside the IPv4 pool that exists (the
    // cluster has no IPv6 pool), Calico's defaults (/122 blocks, no NAT outgoing); an IPv4
    // CIDR for it is refused naming the setting.
    let bad = start(&["--default-ipv6-pool-cidr", "10.80.0.0/16"]);
    let out = ended(bad);
    assert!(
        !out.0 && out.1.contains("BRINDLE_IPV6POOL_CIDR"),
        "{}",
        out.1
    );
    let _ctl = start(&["--default-ipv6-pool-cidr", "fd00:10:244::/64"]);
    eventually("the default IPv6 pool", || async {
        pools().await.len() == 2
    })
    .await;
    let p6 = pools()
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("default-ipv6-ippool"))
        .expect("default-ipv6-ippool");
    assert_eq!(p6.spec.cidr, "fd00:10:244::/64");
    assert_eq!(p6.spec.block_size, Some(122));
    assert!(!p6.spec.nat_outgoing);
}

/// Waits for the child to end on its own (up to 30 s): (success, stderr).
fn ended(mut c: Controller) -> (bool, String) {
    use std::io::Read;
    for _ in 0..300 {
        if let Ok(Some(status)) = c.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = c.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.success(), err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the controller did not stop within 30 s");
}

/// A free port on loopback for a controller's /metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `brindle_controller_leader` from a controller's /metrics (None while it does not answer).
fn leader_gauge(port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("brindle_controller_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// Two replicas: one leads and collects, the other stands by. The leader is killed (SIGKILL)
/// in the middle of releasing 120 leaked addresses: the other takes over only once the lease
/// has lapsed, finishes the work, and frees nothing twice — the pods that got freed addresses
/// meanwhile keep them. Stopped gracefully, a leader gives the lease up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_controller_takes_over_from_a_killed_leader() {
    use brindle_datastore::Api;
    use k8s_openapi::api::coordination::v1::Lease;
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let store = Store::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    let mut pool = IPPoolSpec::new("10.60.0.0/24");
    pool.block_size = Some(26);
    store
        .all::<IPPool>()
        .create(&IPPool::new("pool", pool))
        .await
        .unwrap();
    store
        .all::<BrindleNode>()
        .create(&brindle_node("n1", &[]))
        .await
        .unwrap();
    let ipam = Ipam::new(store.clone());
    let pods = store.namespaced::<Pod>("default");
    pods.create(&pod("live", "n1")).await.unwrap();
    ipam.assign(&req("n1", "live")).await.unwrap();
    let live = ipam.ips_of_handle("k8s-pod-network.live").await.unwrap();
    // 120 leaks: addresses whose pods are gone and whose DEL never came.
    for i in 0..120 {
        ipam.assign(&req("n1", &format!("gone-{i}"))).await.unwrap();
    }
    assert_eq!(allocated(&store).await.len(), 121);

    let logs = tempfile::tempdir().unwrap();
    let start = |name: &str, port: u16| {
        let log = std::fs::File::create(logs.path().join(name)).unwrap();
        Controller(
            Command::new(env!("CARGO_BIN_EXE_brindle-controller"))
                .args(["--datastore", "etcd", "--etcd-endpoints", &etcd.endpoint()])
                .args(["--grace", "1s", "--resync", "1s", "--debounce", "0s"])
                .args(["--leader-elect-identity", name])
                .args(["--leader-elect-lease-duration", "4s"])
                .args(["--leader-elect-renew-deadline", "2s"])
                .args(["--leader-elect-retry-period", "1s"])
                .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
                .args(["--log", "info,brindle_ipam=debug"])
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start brindle-controller"),
        )
    };
    let (pa, pb) = (free_port(), free_port());
    let mut a = start("a", pa);
    eventually("a leads", || async { leader_gauge(pa) == Some(1) }).await;
    let b = start("b", pb);
    eventually("b answers, standing by", || async {
        leader_gauge(pb) == Some(0)
    })
    .await;

    // Kill a as soon as it has released some of the leaks, not all.
    eventually("a releasing", || async {
        allocated(&store).await.len() < 121
    })
    .await;
    let _ = a.0.kill();
    let _ = a.0.wait();
    let killed = tokio::time::Instant::now();
    let left = allocated(&store).await.len();
    assert!(
        left > 1,
        "a finished before it was killed ({left} left): make the work longer"
    );
    // Pods come meanwhile and are given addresses, freed ones among them.
    for i in 0..20 {
        let name = format!("new-{i}");
        pods.create(&pod(&name, "n1")).await.unwrap();
        ipam.assign(&req("n1", &name)).await.unwrap();
    }
    // b stands by while a's lease lasts: 4 s from b's sight of a's last renewal, at most
    // 1 s (a retry period) before the kill.
    eventually("b leads", || async { leader_gauge(pb) == Some(1) }).await;
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "b led {took:?} after a's death: before its lease lapsed"
    );
    eprintln!("a killed with {left} of 121 addresses allocated; b led {took:?} later");
    let mut want = live.clone();
    for i in 0..20 {
        want.extend(
            ipam.ips_of_handle(&format!("k8s-pod-network.new-{i}"))
                .await
                .unwrap(),
        );
    }
    want.sort();
    eventually("b releases the rest, and only the rest", || async {
        allocated(&store).await == want
    })
    .await;
    // Some time more: b's passes leave the new pods' addresses alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(allocated(&store).await, want);
    let handles = store.all::<IPAMHandle>().list().await.unwrap().items;
    assert_eq!(handles.len(), 21, "{handles:?}");
    let log_b = std::fs::read_to_string(logs.path().join("b")).unwrap();
    assert!(log_b.contains("taking it over"), "{log_b}");

    // Someone else holds the lease now (as if b's renewals had stopped reaching etcd and
    // another replica took over): b stops collecting and stands by, alive; once the lease
    // is free again, it leads again.
    let lease: Api<Lease> = store.namespaced::<Lease>("brindle-system");
    // b renews every 2 s meanwhile: a renewal between our read and write is a conflict,
    // and we read again.
    loop {
        let mut l = lease.get("brindle-controller").await.unwrap().unwrap();
        let spec = l.spec.as_mut().unwrap();
        spec.holder_identity = Some("intruder".into());
        spec.lease_duration_seconds = Some(1);
        match lease.update(&l).await {
            Ok(_) => break,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("taking the lease: {e}"),
        }
    }
    eventually("b stands by", || async { leader_gauge(pb) == Some(0) }).await;
    let log_b = std::fs::read_to_string(logs.path().join("b")).unwrap();
    assert!(log_b.contains("collection stopped, standing by"), "{log_b}");
    eventually("b leads again once the intruder's lease lapses", || async {
        leader_gauge(pb) == Some(1)
    })
    .await;

    // b stopped gracefully: the lease is given up, so the next need not wait for it.
    let term = Command::new("kill")
        .args(["-TERM", &b.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let (clean, _) = ended(b);
    assert!(clean, "a graceful stop exits 0");
    let l = lease.get("brindle-controller").await.unwrap().unwrap();
    let spec = l.spec.unwrap();
    assert_eq!(spec.holder_identity, None, "{spec:?}");
    assert_eq!(spec.lease_transitions, Some(2), "a, then b, then b again");
}
