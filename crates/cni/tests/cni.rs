//! The plugin against real network namespaces and a real etcd.

mod common;

use brindle_testsupport::Netns;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_wires_the_pod_check_notices_drift_del_cleans_up() {
    let f = Fixture::new("10.66.0.0/16").await;
    let pod_a = Netns::new("brl-pod");
    let pod_b = Netns::new("brl-pod");
    let conf = f.conf("1.0.0");

    let a = f.cni(
        "ADD",
        "ca",
        Some(("default", "a")),
        Some(&pod_a.path()),
        &conf,
    );
    assert!(a.ok, "{}", a.json);
    let b = f.cni(
        "ADD",
        "cb",
        Some(("default", "b")),
        Some(&pod_b.path()),
        &conf,
    );
    assert!(b.ok, "{}", b.json);
    let ip_a = ip_of(&a.json);
    let ip_b = ip_of(&b.json);
    assert_eq!(a.json["cniVersion"], "1.0.0");
    assert_eq!(a.json["interfaces"][1]["name"], "eth0");
    assert_eq!(a.json["interfaces"][1]["sandbox"], pod_a.path());
    assert_eq!(a.json["ips"][0]["interface"], 1);

    // Host side, read back from the kernel.
    let veth = a.json["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert_eq!(veth, brindle_cni_name("default", "a"));
    let link = &f.node.ip_json(&["link", "show", &veth])[0];
    assert!(
        link["flags"].as_array().unwrap().iter().any(|x| x == "UP"),
        "{link}"
    );
    assert_eq!(link["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(link["mtu"], 1400);
    let sysctl = |p: &str| {
        f.node
            .ok(&["cat", &format!("/proc/sys/net/ipv4/{p}")])
            .trim()
            .to_owned()
    };
    assert_eq!(sysctl(&format!("conf/{veth}/proxy_arp")), "1");
    assert_eq!(sysctl(&format!("neigh/{veth}/proxy_delay")), "0");
    assert_eq!(sysctl(&format!("conf/{veth}/forwarding")), "1");
    let r = f.node.ip_json(&["route", "show", &format!("{ip_a}/32")]);
    assert_eq!(r[0]["dev"], veth.as_str());
    assert_eq!(r[0]["scope"], "link");

    // Pod side.
    let addrs = pod_a.ip_json(&["addr", "show", "eth0"]);
    let info = &addrs[0]["addr_info"];
    assert!(
        info.as_array()
            .unwrap()
            .iter()
            .any(|i| i["local"] == ip_a.as_str() && i["prefixlen"] == 32),
        "{info}"
    );
    assert_eq!(addrs[0]["mtu"], 1400);
    let routes = pod_a.ip_json(&["route", "show"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == "eth0"),
        "{routes}"
    );
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link"),
        "{routes}"
    );

    // Real TCP: pod → host, pod → pod.
    let _srv = tcp_server(&f.node, NODE_IP, 8080);
    assert_eq!(
        tcp_client(&pod_a, NODE_IP, 8080),
        "hello",
        "pod a reaches the host"
    );
    let _srv = tcp_server(&pod_b, &ip_b, 8081);
    assert_eq!(
        tcp_client(&pod_a, &ip_b, 8081),
        "hello",
        "pod a reaches pod b"
    );

    // CHECK passes, then fails once the host route is gone.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = a.json.clone();
    let c = f.cni(
        "CHECK",
        "ca",
        Some(("default", "a")),
        Some(&pod_a.path()),
        &check_conf,
    );
    assert!(c.ok, "{}", c.json);
    f.node.ok(&["ip", "route", "del", &format!("{ip_a}/32")]);
    let c = f.cni(
        "CHECK",
        "ca",
        Some(("default", "a")),
        Some(&pod_a.path()),
        &check_conf,
    );
    assert!(!c.ok);
    assert_eq!(c.json["code"], 102);
    assert!(
        c.json["details"].as_str().unwrap().contains("host route"),
        "{}",
        c.json
    );

    // ADD again for the same container: same address, wiring restored.
    let again = f.cni(
        "ADD",
        "ca",
        Some(("default", "a")),
        Some(&pod_a.path()),
        &conf,
    );
    assert!(again.ok, "{}", again.json);
    assert_eq!(ip_of(&again.json), ip_a);
    assert!(
        f.cni(
            "CHECK",
            "ca",
            Some(("default", "a")),
            Some(&pod_a.path()),
            &check_conf
        )
        .ok
    );

    // DEL removes everything and releases the address; DEL again is fine.
    for _ in 0..2 {
        let d = f.cni(
            "DEL",
            "ca",
            Some(("default", "a")),
            Some(&pod_a.path()),
            &conf,
        );
        assert!(d.ok, "{}", d.json);
    }
    assert!(!f.host_veths().contains(&veth));
    assert!(pod_a
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "eth0"));
    assert!(f
        .node
        .ip_json(&["route", "show", &format!("{ip_a}/32")])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!f.allocated().await.iter().any(|ip| ip.to_string() == ip_a));
    assert!(!f.has_handle("k8s-pod-network.ca").await);
    // DEL of an unknown container, and of one whose namespace is gone.
    assert!(
        f.cni(
            "DEL",
            "never-seen",
            Some(("default", "x")),
            Some("/var/run/netns/does-not-exist"),
            &conf
        )
        .ok
    );
    drop(pod_b);
    let d = f.cni(
        "DEL",
        "cb",
        Some(("default", "b")),
        Some("/var/run/netns/gone"),
        &conf,
    );
    assert!(d.ok, "{}", d.json);
    assert!(f.allocated().await.is_empty());
    assert!(f.host_veths().is_empty());
    // One log line per operation, with the container, pod and addresses.
    let log = std::fs::read_to_string(f.dir.0.join("cni.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("op=\"ADD\"") && l.contains("container=ca") && l.contains(&ip_a)),
        "{log}"
    );
}

fn brindle_cni_name(ns: &str, pod: &str) -> String {
    use std::fmt::Write;
    let digest = sha1_hex(&format!("{ns}.{pod}"));
    let mut s = String::from("brl");
    write!(s, "{}", &digest[..11]).unwrap();
    s
}

fn sha1_hex(s: &str) -> String {
    let out = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_spec_error_and_leaves_nothing() {
    let f = Fixture::new("10.67.0.0/16").await;
    let pod = Netns::new("brl-pod");
    let path = pod.path();
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u64)> = vec![
        (
            "malformed JSON",
            b"{\"cniVersion\": ".to_vec(),
            Some(&path),
            6,
        ),
        (
            "unknown version",
            json!({"cniVersion": "7.0.0", "name": "n", "type": "brindle-cni"})
                .to_string()
                .into_bytes(),
            Some(&path),
            1,
        ),
        (
            "missing CNI_NETNS",
            f.conf("1.0.0").to_string().into_bytes(),
            None,
            4,
        ),
        (
            "pool that does not exist",
            {
                let mut c = f.conf("1.0.0");
                c["ipam"]["ipv4_pools"] = json!(["no-such-pool"]);
                c.to_string().into_bytes()
            },
            Some(&path),
            101,
        ),
    ];
    for (what, stdin, netns, want) in cases {
        let out = f.cni_raw("ADD", "cx", Some(("default", "x")), netns, &stdin, &[]);
        assert!(!out.ok, "{what}: should fail");
        assert_eq!(out.json["code"], want, "{what}: {}", out.json);
        assert!(
            !out.json["msg"].as_str().unwrap_or_default().is_empty(),
            "{what}: a message"
        );
        assert!(f.allocated().await.is_empty(), "{what}: nothing allocated");
        assert!(f.host_veths().is_empty(), "{what}: no interface left");
        assert!(f.handles().await == 0, "{what}: no handle");
    }
    let out = f.cni_raw("VERSION", "", None, None, br#"{"cniVersion":"1.1.0"}"#, &[]);
    assert!(out.ok);
    assert!(out.json["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "1.1.0"));
    // STATUS (1.1.0): ready while a pool exists.
    let out = f.cni("STATUS", "", None, None, &f.conf("1.1.0"));
    assert!(out.ok, "{}", out.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_only_mode_and_gc() {
    let f = Fixture::new("10.68.0.0/16").await;
    let conf = f.conf("1.1.0");
    let env = [("BRINDLE_CNI_MODE", "ipam")];
    let ipam_mode = |cmd: &str, id: &str| {
        f.cni_raw(
            cmd,
            id,
            Some(("default", id)),
            None,
            conf.to_string().as_bytes(),
            &env,
        )
    };
    let out = ipam_mode("ADD", "i1");
    assert!(out.ok, "{}", out.json);
    assert!(out.json["interfaces"].as_array().unwrap().is_empty());
    assert_eq!(f.allocated().await.len(), 1);
    let out = ipam_mode("ADD", "i2");
    assert!(out.ok);
    assert!(
        f.host_veths().is_empty(),
        "IPAM-only mode touches no interface"
    );
    // GC with i2 still valid releases i1 only.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "i2", "ifname": "eth0"}]);
    let out = f.cni("GC", "", None, None, &gc);
    assert!(out.ok, "{}", out.json);
    assert!(!f.has_handle("k8s-pod-network.i1").await);
    assert!(f.has_handle("k8s-pod-network.i2").await);
    let out = ipam_mode("DEL", "i2");
    assert!(out.ok);
    assert!(f.allocated().await.is_empty());

    // GC is per attachment: i3 on eth0 is valid, i3 on eth1 is not.
    for ifname in ["eth0", "eth1"] {
        let env = [("BRINDLE_CNI_MODE", "ipam"), ("CNI_IFNAME", ifname)];
        let out = f.cni_raw(
            "ADD",
            "i3",
            Some(("default", "i3")),
            None,
            conf.to_string().as_bytes(),
            &env,
        );
        assert!(out.ok, "{}", out.json);
    }
    assert!(f.has_handle("k8s-pod-network.i3.eth1").await);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "i3", "ifname": "eth0"}]);
    let out = f.cni("GC", "", None, None, &gc);
    assert!(out.ok, "{}", out.json);
    assert!(f.has_handle("k8s-pod-network.i3").await);
    assert!(!f.has_handle("k8s-pod-network.i3.eth1").await);
    assert_eq!(f.allocated().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_talk_over_ipv6() {
    let f = Fixture::new("10.71.0.0/16").await;
    let mut v6 = brindle_api::IPPoolSpec::new("fd00:71::/112");
    v6.block_size = Some(122);
    f.store
        .all::<brindle_api::IPPool>()
        .create(&brindle_api::IPPool::new("pods-v6", v6))
        .await
        .unwrap();
    f.node
        .ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    let mut conf = f.conf("1.0.0");
    conf["ipam"]["assign_ipv6"] = json!(true);
    let (a, b) = (Netns::new("brl-pod"), Netns::new("brl-pod"));
    let ra = f.cni("ADD", "d1", Some(("default", "d1")), Some(&a.path()), &conf);
    let rb = f.cni("ADD", "d2", Some(("default", "d2")), Some(&b.path()), &conf);
    assert!(ra.ok && rb.ok, "{} {}", ra.json, rb.json);
    let v6_of = |r: &serde_json::Value| {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let (a6, b6) = (v6_of(&ra.json), v6_of(&rb.json));
    assert!(a6.starts_with("fd00:71::"), "{a6}");
    let routes = a.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(
        routes[0]["gateway"], "fe80::ecee:eeff:feee:eeee",
        "{routes}"
    );
    let _srv = tcp_server(&b, &b6, 8082);
    assert_eq!(
        tcp_client(&a, &b6, 8082),
        "hello",
        "pod a reaches pod b over IPv6"
    );
    for (c, ns) in [("d1", &a), ("d2", &b)] {
        assert!(
            f.cni("DEL", c, Some(("default", c)), Some(&ns.path()), &conf)
                .ok
        );
    }
    assert!(f.allocated().await.is_empty());
}

/// An attachment is (container, network, interface): one container on two networks gets
/// two addresses, two veths and two handles; a repeated ADD is per attachment; DEL of one
/// leaves the other working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_attachments_of_one_container_are_independent() {
    let f = Fixture::new("10.69.0.0/16").await;
    let p = Netns::new("brl-pod");
    let q = Netns::new("brl-pod");
    let conf_a = f.conf("1.0.0");
    let mut conf_b = f.conf("1.0.0");
    conf_b["name"] = json!("net-b");
    let eth1 = [("CNI_IFNAME", "eth1")];
    let pod = Some(("default", "p"));
    let add_b = |c: &str| {
        f.cni_raw(
            c,
            "cp",
            pod,
            Some(&p.path()),
            conf_b.to_string().as_bytes(),
            &eth1,
        )
    };

    let a = f.cni("ADD", "cp", pod, Some(&p.path()), &conf_a);
    assert!(a.ok, "{}", a.json);
    let b = add_b("ADD");
    assert!(b.ok, "{}", b.json);
    let (ip_a, ip_b) = (ip_of(&a.json), ip_of(&b.json));
    assert_ne!(ip_a, ip_b, "each attachment has its own address");
    let (veth_a, veth_b) = (
        a.json["interfaces"][0]["name"].as_str().unwrap().to_owned(),
        b.json["interfaces"][0]["name"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        veth_a,
        brindle_cni_name("default", "p"),
        "eth0 keeps Calico's name"
    );
    assert_ne!(veth_a, veth_b);
    assert!(veth_b.len() <= 15);
    let mut veths = f.host_veths();
    veths.sort();
    let mut want = vec![veth_a.clone(), veth_b.clone()];
    want.sort();
    assert_eq!(veths, want);
    assert!(f.has_handle("k8s-pod-network.cp").await);
    assert!(f.has_handle("net-b.cp.eth1").await);
    assert_eq!(b.json["routes"][0]["priority"], 1000);

    // Both interfaces in the pod, each with its own address; the primary keeps the default.
    let has_addr = |ifname: &str, ip: &str| {
        p.ip_json(&["addr", "show", ifname])[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["local"] == ip)
    };
    assert!(has_addr("eth0", &ip_a) && has_addr("eth1", &ip_b));
    let routes = p.ip_json(&["route", "show", "default"]);
    let defaults: Vec<(String, u64)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dev"].as_str().unwrap().to_owned(),
                r["metric"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(defaults.contains(&("eth0".into(), 0)), "{routes}");
    assert!(defaults.contains(&("eth1".into(), 1000)), "{routes}");

    // The allocation records its attachment.
    let alloc_b = f.allocation(&ip_b).await;
    assert_eq!(alloc_b.attrs["network"], "net-b");
    assert_eq!(alloc_b.attrs["interface"], "eth1");
    assert_eq!(alloc_b.attrs["netns"], p.path());
    assert_eq!(alloc_b.attrs["hostInterface"], veth_b);
    let stamp = alloc_b.attrs["timestamp"].clone();
    assert!(brindle_ipam::parse_timestamp(&stamp).is_some(), "{stamp}");

    // A repeated ADD of eth1 keeps eth1's address and does not touch eth0.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = add_b("ADD");
    assert!(again.ok, "{}", again.json);
    assert_eq!(ip_of(&again.json), ip_b);
    assert!(has_addr("eth0", &ip_a), "eth0 survives eth1's repeated ADD");
    assert_eq!(f.allocated().await.len(), 2);
    let refreshed = f.allocation(&ip_b).await;
    assert_ne!(
        refreshed.attrs["timestamp"], stamp,
        "repeated ADD refreshes the record"
    );
    assert_eq!(
        refreshed.sequence, alloc_b.sequence,
        "and is not a new allocation"
    );

    // eth1's address is routed out of eth1 (by source), eth0's out of eth0; one rule for
    // eth1's address after the repeated ADD made eth1 anew.
    let dev_from = |ip: &str| {
        p.ip_json(&["route", "get", "198.18.0.254", "from", ip])[0]["dev"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(dev_from(&ip_b), "eth1");
    assert_eq!(dev_from(&ip_a), "eth0");
    let rules_from = |ip: &str| {
        p.ip_json(&["rule", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["src"] == ip)
            .count()
    };
    assert_eq!(rules_from(&ip_b), 1);
    // The node checks every source strictly (as brindle-node's anti-spoofing rule does):
    // replies from eth1's address must leave by eth1 to pass.
    f.node
        .ok(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1"]);

    // Traffic to both addresses, from another pod.
    let qa = f.cni(
        "ADD",
        "cq",
        Some(("default", "q")),
        Some(&q.path()),
        &conf_a,
    );
    assert!(qa.ok, "{}", qa.json);
    for (ip, port) in [(&ip_a, 8090), (&ip_b, 8091)] {
        let _srv = tcp_server(&p, ip, port);
        assert_eq!(tcp_client(&q, ip, port), "hello", "to {ip}");
    }

    // DEL of eth1 releases only eth1's attachment.
    let del = add_b("DEL");
    assert!(del.ok, "{}", del.json);
    assert!(!f.has_handle("net-b.cp.eth1").await);
    assert!(f.has_handle("k8s-pod-network.cp").await);
    assert_eq!(rules_from(&ip_b), 0, "eth1's source rule goes with it");
    assert_eq!(f.host_veths().len(), 2, "eth0's veth and q's remain");
    assert!(has_addr("eth0", &ip_a));
    let mut check = conf_a.clone();
    check["prevResult"] = a.json.clone();
    let out = f.cni("CHECK", "cp", pod, Some(&p.path()), &check);
    assert!(out.ok, "eth0 is as ADD left it: {}", out.json);
    let _srv = tcp_server(&p, &ip_a, 8092);
    assert_eq!(tcp_client(&q, &ip_a, 8092), "hello");
    let allocated: Vec<String> = f
        .allocated()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!allocated.contains(&ip_b), "{allocated:?}");

    for (c, podname, ns) in [("cp", "p", &p), ("cq", "q", &q)] {
        let out = f.cni(
            "DEL",
            c,
            Some(("default", podname)),
            Some(&ns.path()),
            &conf_a,
        );
        assert!(out.ok, "{}", out.json);
    }
    assert!(f.allocated().await.is_empty());
    assert!(f.host_veths().is_empty());
}

/// A sandbox restart: ADD for the pod's old sandbox, ADD for its new one, then the runtime's
/// late DEL for the old one (with its namespace still there, without CNI_NETNS, and with a
/// namespace that is gone). The host veth has the pod's name in both sandboxes: the DEL
/// must leave the new sandbox's interface, route and address alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_del_of_an_old_sandbox_leaves_the_new_one() {
    let f = Fixture::new("10.72.0.0/16").await;
    let conf = f.conf("1.0.0");
    let pod = Some(("default", "web"));
    let old_ns = Netns::new("brl-pod");
    let new_ns = Netns::new("brl-pod");
    let old = f.cni("ADD", "old", pod, Some(&old_ns.path()), &conf);
    assert!(old.ok, "{}", old.json);
    let new = f.cni("ADD", "new", pod, Some(&new_ns.path()), &conf);
    assert!(new.ok, "{}", new.json);
    let ip_new = ip_of(&new.json);
    let veth = new.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(veth, old.json["interfaces"][0]["name"], "one name per pod");
    let intact = |when: &str| {
        let links = new_ns.ip_json(&["link", "show", "eth0"]);
        assert_eq!(
            links.as_array().map(Vec::len),
            Some(1),
            "{when}: eth0 in the new sandbox"
        );
        assert!(f.host_veths().contains(&veth), "{when}: host veth {veth}");
        let r = f.node.ip_json(&["route", "show", &format!("{ip_new}/32")]);
        assert_eq!(r[0]["dev"], veth.as_str(), "{when}: host route {r}");
        let _srv = tcp_server(&new_ns, &ip_new, 8080);
        assert_eq!(
            tcp_client(&f.node, &ip_new, 8080),
            "hello",
            "{when}: reachable"
        );
    };
    intact("before the late DEL");
    let late: [(&str, Option<String>); 4] = [
        ("with its namespace", Some(old_ns.path())),
        // A namespace path that now names another sandbox's namespace (a /proc/<pid> path
        // whose PID was reused): its eth0 is not this attachment's.
        (
            "with a path that now names the new sandbox",
            Some(new_ns.path()),
        ),
        ("without CNI_NETNS", None),
        (
            "with its namespace gone",
            Some("/var/run/netns/brl-gone".into()),
        ),
    ];
    for (how, netns) in late {
        let d = f.cni("DEL", "old", pod, netns.as_deref(), &conf);
        assert!(d.ok, "{how}: {}", d.json);
        intact(&format!("after the late DEL {how}"));
        let held: Vec<String> = f.allocated().await.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            held,
            vec![ip_new.clone()],
            "{how}: only the new sandbox's address"
        );
        assert!(f.has_handle("k8s-pod-network.new").await, "{how}");
    }
    // The new sandbox's own DEL, without CNI_NETNS (the spec allows it): all gone.
    let d = f.cni("DEL", "new", pod, None, &conf);
    assert!(d.ok, "{}", d.json);
    assert!(!f.host_veths().contains(&veth));
    assert!(f.allocated().await.is_empty());
    let log = std::fs::read_to_string(f.dir.0.join("cni.log")).unwrap();
    assert!(
        log.contains("belongs to another sandbox of the pod"),
        "the skipped DEL says why: {log}"
    );
}

/// An address a pod's annotation asks for comes only from a pool that would give this node
/// a workload address: enabled, allowing Workload, selecting the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_address_must_come_from_a_pool_the_pod_may_use() {
    use brindle_api::{AllowedUse, IPPool, IPPoolSpec};
    use k8s_openapi::api::core::v1::Pod;
    let f = Fixture::new("10.73.0.0/16").await;
    let pool = |name: &str, cidr: &str, edit: &dyn Fn(&mut IPPoolSpec)| {
        let mut spec = IPPoolSpec::new(cidr);
        spec.block_size = Some(26);
        edit(&mut spec);
        IPPool::new(name, spec)
    };
    for p in [
        pool("off", "10.74.0.0/16", &|s| s.disabled = true),
        pool("zone-b", "10.75.0.0/16", &|s| {
            s.node_selector = "zone == 'b'".into()
        }),
        pool("tunnels", "10.76.0.0/16", &|s| {
            s.allowed_uses = vec![AllowedUse::Tunnel]
        }),
    ] {
        f.store.all::<IPPool>().create(&p).await.unwrap();
    }
    let conf = f.conf("1.0.0");
    let cases = [
        ("10.74.0.5", "off", "is disabled"),
        ("10.75.0.5", "zone-b", "does not select node node-1"),
        ("10.76.0.5", "tunnels", "does not allow Workload"),
        ("10.73.0.5", "", ""),
    ];
    for (i, (ip, pool, reason)) in cases.iter().enumerate() {
        let name = format!("fixed-{i}");
        let mut p = Pod::default();
        p.metadata.name = Some(name.clone());
        p.metadata.namespace = Some("default".into());
        p.metadata.annotations = Some(
            [(
                "brindle.dev/ipAddrs".to_string(),
                serde_json::to_string(&[ip]).unwrap(),
            )]
            .into(),
        );
        f.store
            .namespaced::<Pod>("default")
            .create(&p)
            .await
            .unwrap();
        let ns = Netns::new("brl-pod");
        let cid = format!("c{i}");
        let out = f.cni(
            "ADD",
            &cid,
            Some(("default", &name)),
            Some(&ns.path()),
            &conf,
        );
        if pool.is_empty() {
            assert!(out.ok, "{ip}: {}", out.json);
            assert_eq!(ip_of(&out.json), *ip);
            continue;
        }
        assert!(!out.ok, "{ip} from pool {pool} must be refused");
        let msg = out.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&format!("IPPool {pool}")) && msg.contains(reason),
            "{ip}: the reason, with the pool: {}",
            out.json
        );
        assert!(
            !f.allocated().await.iter().any(|a| a.to_string() == *ip),
            "{ip}"
        );
        assert!(
            !f.has_handle(&format!("k8s-pod-network.{cid}")).await,
            "{ip}"
        );
    }
}

/// Before brindle-node has programmed the node's dataplane since boot, nothing guards the
/// node's ports (BGP), stops spoofing or enforces policy: without an agent to ask, ADD wires
/// no pod (CNI's "try again later", which kubelet retries) and STATUS is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pod_is_wired_before_the_agent_has_programmed_the_dataplane() {
    let f = Fixture::new("10.68.0.0/16").await;
    let pod = Netns::new("brl-pod");
    std::fs::remove_file(f.ready_file()).unwrap();
    let conf = f.conf("1.1.0");
    let out = f.cni(
        "ADD",
        "c1",
        Some(("default", "early")),
        Some(&pod.path()),
        &conf,
    );
    assert!(!out.ok, "wired before the dataplane: {}", out.json);
    assert_eq!(out.json["code"], 11, "{}", out.json);
    let details = out.json["details"].as_str().unwrap_or_default();
    assert!(details.contains("dataplane-ready"), "{}", out.json);
    assert!(f.allocated().await.is_empty(), "nothing allocated");
    assert!(f.host_veths().is_empty(), "no interface left");
    assert_eq!(f.handles().await, 0, "no handle");
    let out = f.cni("STATUS", "", None, None, &conf);
    assert!(!out.ok, "ready before the dataplane: {}", out.json);
    assert_eq!(out.json["code"], 50, "{}", out.json);

    // Once the agent has synced, the same ADD goes through.
    std::fs::write(f.ready_file(), "synced").unwrap();
    let out = f.cni(
        "ADD",
        "c1",
        Some(("default", "early")),
        Some(&pod.path()),
        &conf,
    );
    assert!(out.ok, "{}", out.json);
    assert_eq!(f.allocated().await.len(), 1);
    let out = f.cni("STATUS", "", None, None, &conf);
    assert!(out.ok, "{}", out.json);
    let out = f.cni(
        "DEL",
        "c1",
        Some(("default", "early")),
        Some(&pod.path()),
        &conf,
    );
    assert!(out.ok, "{}", out.json);
}
