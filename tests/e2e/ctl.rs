//! brindlectl on a running lab, as an operator on a node runs it: `node status` from a real
//! brindle-node peering with a real BIRD top-of-rack router (node specific), a global BGPPeer
//! added and removed with brindlectl, the node-to-node mesh switched on with brindlectl;
//! `version` and `ipam` against the lab's etcd.

use std::process::Command;
use std::time::Duration;

use brindle_lab::{binary, Lab, LabSpec};
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

fn ctl(lab: &Lab, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let endpoint = lab.etcd.as_ref().expect("etcd lab").endpoint();
    let mut c = Command::new(binary("brindlectl"));
    c.args(args)
        .args(["--datastore", "etcd", "--etcd-endpoints", &endpoint])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("brindlectl");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("stdin");
    }
    drop(child.stdin.take());
    let o = child.wait_with_output().expect("brindlectl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

type Row = (String, String, String, String);

/// The IPv4 table of `node status` as (address, type, state, info) rows; None while the
/// agent's socket is not there yet.
fn status_rows(lab: &Lab, node: &str) -> Option<Vec<Row>> {
    let sock = lab.node(node).control_socket().display().to_string();
    let (code, out, err) = ctl(lab, &["node", "status", "--control-socket", &sock], None);
    if code != 0 {
        assert!(err.contains("brindle-node is not running"), "{err}");
        return None;
    }
    assert!(
        out.starts_with("Brindle process is running.\n\nIPv4 BGP status\n"),
        "{out}"
    );
    let v4 = out.split("IPv6 BGP status").next().unwrap_or("");
    Some(
        v4.lines()
            .filter(|l| l.starts_with("| ") && !l.contains("PEER ADDRESS"))
            .map(|l| {
                let c: Vec<String> = l.split('|').map(|x| x.trim().to_string()).collect();
                (c[1].clone(), c[2].clone(), c[3].clone(), c[5].clone())
            })
            .collect(),
    )
}

fn wait_row(lab: &Lab, node: &str, what: &str, f: impl Fn(&[Row]) -> bool) {
    wait_for(what, Duration::from_secs(60), || {
        let rows = status_rows(lab, node)?;
        f(&rows).then_some(())
    });
}

#[test]
fn brindlectl_on_a_lab_with_a_bird_router() {
    let spec = LabSpec {
        nodes: 2,
        racks: 1,
        tor: true,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let tor = "198.18.0.1".to_string();
        wait_row(
            lab,
            "node-0",
            "the BIRD router Established as a node specific peer",
            |r| {
                r.iter().any(|x| {
                    x.0 == tor && x.1 == "node specific" && x.2 == "up" && x.3 == "Established"
                })
            },
        );
        let sock = lab.node("node-0").control_socket().display().to_string();
        let (_, out, _) = ctl(
            lab,
            &["node", "status", "--control-socket", &sock, "-o", "wide"],
            None,
        );
        assert!(
            out.contains("PREFIXES RECEIVED") && out.contains("No IPv6 peers found."),
            "{out}"
        );

        // A global peer that never answers: shown as such, not up, with the reason.
        let peer = "apiVersion: brindle.dev/v1\nkind: BGPPeer\nmetadata: {name: nowhere}\nspec: {peerIP: 198.18.0.250, asNumber: 65099}\n";
        let (code, _, err) = ctl(lab, &["apply", "-f", "-"], Some(peer));
        assert_eq!(code, 0, "{err}");
        wait_row(lab, "node-0", "the global peer listed, not up", |r| {
            r.iter()
                .any(|x| x.0 == "198.18.0.250" && x.1 == "global" && x.2 == "start")
        });
        let (code, _, err) = ctl(lab, &["delete", "bgppeer", "nowhere"], None);
        assert_eq!(code, 0, "{err}");
        wait_row(lab, "node-0", "the global peer gone", |r| {
            !r.iter().any(|x| x.0 == "198.18.0.250")
        });

        // The mesh switched on with brindlectl: node-1 appears as a node-to-node mesh peer.
        let (_, cfg, _) = ctl(lab, &["get", "bgpconfig", "default", "-o", "json"], None);
        let mut v: serde_json::Value = serde_json::from_str(&cfg).expect("json");
        v["spec"]["nodeToNodeMeshEnabled"] = true.into();
        let (code, _, err) = ctl(lab, &["apply", "-f", "-"], Some(&v.to_string()));
        assert_eq!(code, 0, "{err}");
        let n1 = lab.node("node-1").ip4().to_string();
        wait_row(lab, "node-0", "node-1 up as a mesh peer", |r| {
            r.iter()
                .any(|x| x.0 == n1 && x.1 == "node-to-node mesh" && x.2 == "up")
                && r.iter().any(|x| x.0 == tor && x.2 == "up")
        });

        // No agent behind a socket path: exit 1, and the message says so.
        let (code, _, err) = ctl(
            lab,
            &[
                "node",
                "status",
                "--control-socket",
                "/nonexistent/bgpd.sock",
            ],
            None,
        );
        assert_eq!(code, 1);
        assert!(err.contains("brindle-node is not running"), "{err}");

        // Versions recorded by the agents; IPAM of a pod.
        let (_, out, _) = ctl(lab, &["version"], None);
        for n in ["node-0", "node-1"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(n) && l.contains(env!("CARGO_PKG_VERSION"))),
                "{out}"
            );
        }
        let ip = lab.pod_add("web-0", "node-1").expect("pod");
        let (_, out, _) = ctl(lab, &["ipam", "show", "--ip", &ip.to_string()], None);
        assert!(
            out.contains("is in use") && out.contains("web-0") && out.contains("node-1"),
            "{out}"
        );
        let (code, out, err) = ctl(lab, &["ipam", "show", "--show-blocks"], None);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("| IP Pool  | 10.244.0.0/16"), "{out}");
        let (code, out, err) = ctl(lab, &["ipam", "check"], None);
        assert_eq!(code, 0, "{out}{err}");
    });
}

/// `node diags` run on a node (in its namespace, as an operator on the machine): the tarball
/// holds the agent's flags, routes, our rules, the speaker's peers and RIB, the agent's
/// metrics, this node's IPAM blocks and its log; nothing of another node's blocks; a summary
/// of what was collected. Secrets in flags are redacted (unit-tested in diags.rs).
#[test]
fn node_diags_collects_a_bug_report_from_the_node() {
    let spec = LabSpec {
        nodes: 2,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        lab.pod_add("d0", "node-0").expect("pod on node-0");
        lab.pod_add("d1", "node-1").expect("pod on node-1");
        lab.wait_converged(Duration::from_secs(60))
            .expect("converged");
        let n = lab.node("node-0");
        let out = tempfile::tempdir().unwrap();
        let tarball = out.path().join("diags.tar.gz");
        let endpoint = format!("http://{}", n.forward.addr);
        let o =
            n.ns.command(&[
                binary("brindlectl").to_str().unwrap(),
                "node",
                "diags",
                "--control-socket",
                n.control_socket().to_str().unwrap(),
                "--log-file",
                n.log().to_str().unwrap(),
                "-o",
                tarball.to_str().unwrap(),
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                &endpoint,
            ])
            .output()
            .expect("brindlectl");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("for node node-0"), "{stderr}");
        // Read it back.
        let x = out.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let ok = Command::new("tar")
            .args(["-xzf", tarball.to_str().unwrap(), "-C", x.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(ok.success());
        let dir = std::fs::read_dir(&x)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let read =
            |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let summary = read("summary.txt");
        let agent = read("agent.txt");
        assert!(
            agent.contains("--nodename\n  node-0") && agent.contains("--control-socket"),
            "{agent}"
        );
        let routes = read("ip-route.txt");
        let theirs = lab.blocks()["node-1"][0].clone();
        assert!(
            routes.contains(&theirs) && routes.contains("proto bird"),
            "{routes}"
        );
        assert!(
            read("iptables-legacy-save.txt").contains("BRL-"),
            "{summary}"
        );
        let peers = read("bgp-peers.json");
        assert!(peers.contains("Established"), "{peers}");
        assert!(read("bgp-rib.json").contains(&theirs));
        assert!(read("metrics.txt").contains("brindle_"), "{summary}");
        let ipam = read("ipam-blocks.yaml");
        let mine = lab.blocks()["node-0"][0].clone();
        assert!(ipam.contains(&mine) && !ipam.contains(&theirs), "{ipam}");
        assert!(read("log-0-agent.log").contains("brindle"), "{summary}");
        assert!(summary.contains("ok      ip-route.txt"), "{summary}");
    });
}

/// `node graph` run where an operator would (a node: it reaches every agent's metrics and
/// the datastore): two racks of two nodes, each rack's BIRD router; the routers named by their
/// BGPPeers and drawn with their rack, each session green with the prefixes received, the
/// blocks per node; an agent that stops is said so, and its sessions go. Drawn with dot.
#[test]
fn node_graph_draws_the_cluster_from_the_datastore_and_the_agents_metrics() {
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        tor: true,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        lab.pod_add("g1", "node-1").expect("pod on node-1");
        lab.wait_converged(Duration::from_secs(60))
            .expect("converged");
        // From node-0, as an operator on a node: every node's address is reachable there
        // (the other rack's through the routers), and the datastore.
        let graph = |lab: &Lab, extra: &[&str]| {
            let n = lab.node("node-0");
            let endpoint = format!("http://{}", n.forward.addr);
            let mut argv = vec![binary("brindlectl").display().to_string()];
            argv.extend(["node", "graph"].map(String::from));
            argv.extend(extra.iter().map(|s| s.to_string()));
            argv.extend(["--datastore", "etcd", "--etcd-endpoints", &endpoint].map(String::from));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let o = n.ns.command(&argv).output().expect("brindlectl");
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            );
            assert!(o.status.success(), "{err}");
            (out, err)
        };
        // Each node's session with its rack's router, Established.
        let (dot, err) = wait_for("every session green", Duration::from_secs(60), || {
            let (dot, err) = graph(lab, &[]);
            (dot.matches("color=darkgreen").count() == 4 && !dot.contains("color=red"))
                .then_some((dot, err))
        });
        for want in [
            "subgraph cluster_as65000",
            "subgraph cluster_as65001",
            r#""198.18.0.1" [shape=diamond, label="198.18.0.1\nBGPPeer rack-0-router\nAS 65000"]"#,
            r#""198.18.1.1" [shape=diamond"#,
            r#""198.18.0.1" -- "node-0" [color=darkgreen, style=solid, label="node-0: Established, received "#,
            r#""198.18.1.1" -- "node-3" [color=darkgreen"#,
            r#"AS 65000, 1 block(s)"#,
        ] {
            assert!(dot.contains(want), "{want}:\n{dot}");
        }
        // Rack 0's router sits in rack 0's box, before rack 1's.
        let rack1 = dot.find("cluster_as65001").unwrap();
        assert!(dot.find(r#""198.18.0.1" [shape"#).unwrap() < rack1, "{dot}");
        assert!(dot.find(r#""198.18.1.1" [shape"#).unwrap() > rack1, "{dot}");
        assert!(
            err.contains("4 node(s), 4 session(s), 4 Established"),
            "{err}"
        );
        // node-1 holds the pod's block: its router received it from node-1.
        let line = dot
            .lines()
            .find(|l| l.starts_with(r#"  "198.18.0.1" -- "node-1""#))
            .expect("node-1's session");
        assert!(line.contains("node-1: Established, received "), "{line}");

        // Grouped by a label instead.
        let (dot, _) = graph(lab, &["--group-by-label", "rack"]);
        assert!(dot.contains(r#"label="rack=r1""#), "{dot}");

        // node-3's agent stopped: said on its node and on stderr; no session of its left.
        lab.stop_agent(3);
        let (dot, err) = graph(lab, &["--timeout", "1"]);
        assert!(
            err.contains("metrics not read from 1 agent(s)") && err.contains("node-3 ("),
            "{err}"
        );
        assert!(dot.contains("metrics unreachable"), "{dot}");
        assert!(!dot.contains(r#"-- "node-3""#), "{dot}");

        // Drawn.
        let out = tempfile::tempdir().unwrap();
        let svg = out.path().join("fabric.svg");
        graph(lab, &["--out", svg.to_str().unwrap()]);
        let drawn = std::fs::read_to_string(&svg).unwrap().replace("&#45;", "-");
        assert!(
            drawn.contains("<svg") && drawn.contains(">node-2<"),
            "{drawn}"
        );
    });
}
