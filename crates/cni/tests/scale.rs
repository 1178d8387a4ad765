//! 100 concurrent ADDs on one node, then 100 DELs; and chaining with the reference portmap
//! plugin.

mod common;

use std::collections::HashSet;

use brindle_testsupport::Netns;
use common::*;
use serde_json::json;

/// Runs `command` for every pod at the same time, one plugin process each.
fn all_at_once(f: &Fixture, pods: &[Netns], command: &str, conf: &serde_json::Value) -> Vec<Out> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (id, pod) = (format!("c{i}"), format!("p{i}"));
                s.spawn(move || f.cni(command, &id, Some(("load", &pod)), Some(&ns.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_adds_then_dels() {
    const PODS: usize = 100;
    let f = Fixture::new("10.69.0.0/16").await;
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("brl-pod")).collect();
    let conf = f.conf("1.0.0");
    let results = all_at_once(&f, &pods, "ADD", &conf);
    for (i, r) in results.iter().enumerate() {
        assert!(r.ok, "pod {i}: {}", r.json);
    }
    let ips: Vec<String> = results.iter().map(|r| ip_of(&r.json)).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), PODS, "100 distinct addresses");
    assert_eq!(f.host_veths().len(), PODS);

    // Every pod is reachable from the node: a TCP SYN to a closed port comes back as a reset.
    let list = ips
        .iter()
        .map(|ip| format!("'{ip}'"))
        .collect::<Vec<_>>()
        .join(",");
    let probe = format!(
        "import socket\nbad=[]\nfor ip in [{list}]:\n  s=socket.socket(); s.settimeout(2)\n  try:\n    s.connect((ip, 9)); \n  except ConnectionRefusedError:\n    continue\n  except Exception as e:\n    bad.append((ip, str(e)))\nprint(bad)\n"
    );
    assert_eq!(
        f.node.ok(&["python3", "-c", &probe]).trim(),
        "[]",
        "every pod answers"
    );

    let dels = all_at_once(&f, &pods, "DEL", &conf);
    for (i, r) in dels.iter().enumerate() {
        assert!(r.ok, "DEL {i}: {}", r.json);
    }
    assert!(f.allocated().await.is_empty(), "no allocation left");
    assert!(f.handles().await == 0, "no handle left");
    assert!(f.host_veths().is_empty(), "no interface left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_with_portmap() {
    let portmap = "/usr/lib/cni/portmap";
    assert!(
        std::path::Path::new(portmap).exists(),
        "{portmap} missing: install Debian's containernetworking-plugins (.ci/run does)"
    );
    let f = Fixture::new("10.70.0.0/16").await;
    let pod = Netns::new("brl-pod");
    // A conflist's first entry: our plugin.
    let ours = f.cni(
        "ADD",
        "cp",
        Some(("default", "web")),
        Some(&pod.path()),
        &f.conf("1.0.0"),
    );
    assert!(ours.ok, "{}", ours.json);
    // The runtime hands our result to the next plugin as prevResult.
    let pm_conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": ours.json,
    });
    let run_portmap = |cmd: &str| {
        let mut c = f.node.command(&[portmap]);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", "cp")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pm_conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run_portmap("ADD");
    assert!(
        out.status.success(),
        "portmap ADD: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The chain's final result is valid and still ours.
    assert_eq!(fin["cniVersion"], "1.0.0");
    assert_eq!(fin["ips"], ours.json["ips"]);
    assert_eq!(fin["interfaces"], ours.json["interfaces"]);
    // portmap programmed a DNAT to our pod's address.
    let rules = f.node.ok(&["iptables-save", "-t", "nat"]);
    assert!(rules.contains(&ip_of(&ours.json)), "{rules}");
    // And a TCP connection to the host port reaches the pod.
    let _srv = tcp_server(&pod, "0.0.0.0", 80);
    assert_eq!(
        tcp_client(&f.fabric, common::NODE_IP, 18080),
        "hello",
        "host port 18080 → pod:80"
    );
    // Teardown in reverse order.
    assert!(run_portmap("DEL").status.success());
    assert!(
        f.cni(
            "DEL",
            "cp",
            Some(("default", "web")),
            Some(&pod.path()),
            &f.conf("1.0.0")
        )
        .ok
    );
    assert!(f.allocated().await.is_empty());
}
