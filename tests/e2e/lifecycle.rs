//! Tests 3–5: a node removed, an agent restarted under traffic, the datastore gone for 30 s.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use brindle_api::{BlockAffinity, IPAMBlock};
use brindle_lab::LabSpec;
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

fn three() -> LabSpec {
    LabSpec {
        nodes: 3,
        ..Default::default()
    }
}

#[test]
fn a_removed_node_disappears_from_every_node_and_the_controller_frees_its_blocks() {
    with_lab(three(), |lab| {
        let pods = settled_mesh(lab);
        let gone: BTreeSet<String> = lab.blocks()["node-2"].iter().cloned().collect();
        assert!(!gone.is_empty());
        lab.remove_node("node-2").expect("remove node-2");
        for n in ["node-0", "node-1"] {
            wait_for(
                &format!("{n} to drop node-2's blocks"),
                Duration::from_secs(30),
                || {
                    let r = lab.bird_routes(n);
                    (!r.iter()
                        .any(|l| gone.iter().any(|b| l.contains(b.as_str()))))
                    .then_some(())
                },
            );
        }
        wait_mesh_routes(lab);
        wait_blocks_freed(lab, "node-2", &gone);
        all_reach(lab, &pods[..2]);
    });
}

/// Until `node`'s blocks are gone from the datastore with their affinities (the controller's
/// collector, after the lab's grace period).
fn wait_blocks_freed(lab: &brindle_lab::Lab, node: &str, gone: &BTreeSet<String>) {
    wait_for(
        &format!("the controller to free {node}'s blocks and affinities"),
        Duration::from_secs(90),
        || {
            let blocks = lab
                .block_on(lab.store.all::<IPAMBlock>().list())
                .ok()?
                .items;
            let affs = lab
                .block_on(lab.store.all::<BlockAffinity>().list())
                .ok()?
                .items;
            let left = blocks.iter().any(|b| gone.contains(&b.spec.cidr))
                || affs.iter().any(|a| a.spec.node == node);
            (!left).then_some(())
        },
    );
}

/// `brindle-lab node add|del` on a mesh: a node joins a running lab (every node peers with
/// it, its pod reaches the others) and leaves it (its pod deleted through CNI DEL, its
/// sessions and routes gone everywhere, its record gone, the controller frees its block).
#[test]
fn a_node_joins_and_leaves_the_mesh() {
    let spec = LabSpec {
        nodes: 2,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let pods = settled_mesh(lab);
        let said = lab.node_add(None).expect("node add");
        assert!(
            said.contains("node-2: joined rack 0 with 198.18.0.12/24"),
            "{said}"
        );
        lab.wait_sessions(Duration::from_secs(60))
            .expect("sessions");
        for n in &lab.nodes {
            assert_eq!(lab.peers(&n.name).len(), 2, "{}", n.name);
        }
        lab.pod_add("p-new", "node-2")
            .expect("a pod on the new node");
        let mut all = pods.clone();
        all.push("p-new".into());
        all_reach(lab, &all);
        wait_mesh_routes(lab);
        let gone: BTreeSet<String> = lab.blocks()["node-2"].iter().cloned().collect();

        let said = lab.node_del("node-2").expect("node del");
        assert!(said.contains("node-2: 1 pod(s) deleted"), "{said}");
        assert!(!lab.pods.contains_key("p-new"));
        for n in ["node-0", "node-1"] {
            wait_for(
                &format!("{n} to drop node-2"),
                Duration::from_secs(30),
                || (lab.peers(n).len() == 1).then_some(()),
            );
        }
        wait_mesh_routes(lab);
        wait_blocks_freed(lab, "node-2", &gone);
        let rec = lab.block_on(lab.store.all::<brindle_api::BrindleNode>().get("node-2"));
        assert!(matches!(rec, Ok(None)), "{rec:?}");
        all_reach(lab, &pods);
        assert!(lab.node_del("node-9").is_err());
    });
}

/// The same beside a rack router: BIRD is reconfigured with a session for the new node and
/// without it when it leaves, while its session with the other node stays up throughout.
#[test]
fn a_node_joins_and_leaves_a_rack_with_a_router() {
    let spec = LabSpec {
        nodes: 2,
        tor: true,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        let since =
            |lab: &brindle_lab::Lab| lab.peers("node-0")[0]["since_secs"].as_u64().unwrap_or(0);
        let (before, t0) = (since(lab), Instant::now());
        let said = lab.node_add(None).expect("node add");
        assert!(said.contains("router reconfigured"), "{said}");
        let tor = &lab.tors[0];
        wait_for(
            "the router's session with node-2",
            Duration::from_secs(60),
            || {
                let p = tor.bird.birdc(&["show", "protocols", "node_2"]);
                p.contains("Established").then_some(())
            },
        );
        lab.pod_add("p-new", "node-2")
            .expect("a pod on the new node");
        let mut all = pods.clone();
        all.push("p-new".into());
        all_reach(lab, &all);
        lab.node_del("node-2").expect("node del");
        let shown = lab.tors[0].bird.birdc(&["show", "protocols"]);
        assert!(!shown.contains("node_2"), "{shown}");
        assert!(
            shown.contains("node_0") && shown.contains("node_1"),
            "{shown}"
        );
        // Up all along: as old as it was plus the time since (a second's rounding).
        let now = since(lab);
        assert!(
            now + 1 >= before + t0.elapsed().as_secs(),
            "node-0's session with its router was reset: {before} s, then {now} s"
        );
        all_reach(lab, &pods);
    });
}

#[test]
fn an_agent_restart_under_traffic_withdraws_nothing() {
    with_lab(three(), |lab| {
        let pods = settled_mesh(lab);
        let before = routes(lab, "node-1");
        let monitors = monitors(lab, &["node-0", "node-1", "node-2"]);
        let stream = lab.stream("p-node-0", "p-node-1", 20);
        std::thread::sleep(Duration::from_secs(3));
        let i = lab.node_index("node-1");
        lab.stop_agent(i);
        std::thread::sleep(Duration::from_secs(4));
        // Stopped: its routes are all still there, and the others still route to it.
        assert_eq!(routes(lab, "node-1"), before);
        lab.start_agent(i);
        wait_for(
            "node-1's sessions to come back",
            Duration::from_secs(40),
            || {
                let p = lab.peers("node-1");
                (p.len() == 2 && p.iter().all(|p| p["state"] == "Established")).then_some(())
            },
        );
        let out = stream.finish();
        assert!(out.starts_with("ok "), "the TCP stream broke: {out}");
        wait_mesh_routes(lab);
        assert_no_withdrawals(&monitors);
        all_reach(lab, &pods);
        assert_eq!(
            lab.reach("p-node-0", "p-node-1").as_deref(),
            Ok("p-node-1"),
            "the pod kept its address"
        );
    });
}

#[test]
fn a_datastore_outage_keeps_forwarding_and_the_agents_resync() {
    with_lab(three(), |lab| {
        for (p, n) in [("a", "node-0"), ("b", "node-1")] {
            lab.pod_add(p, n).expect("pod");
        }
        let pods = ["a".to_string(), "b".to_string()];
        all_reach(lab, &pods);
        wait_mesh_routes(lab);
        let monitors = monitors(lab, &["node-0", "node-1", "node-2"]);
        let stream = lab.stream("a", "b", 45);
        let down = Instant::now();
        lab.stop_etcd();
        std::thread::sleep(Duration::from_secs(5));
        // A runtime adding a pod now is told to try again later; nothing is half-made.
        let e = lab
            .pod_add("late", "node-2")
            .expect_err("no datastore, no address");
        assert!(
            e.contains("\"code\":11"),
            "CNI error 11 (try again later) expected: {e}"
        );
        assert_eq!(
            lab.reach("a", "b").as_deref(),
            Ok("b"),
            "forwarding during the outage"
        );
        std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
        lab.start_etcd();
        // As the kubelet would, retry the pod until it is made.
        wait_for(
            "the pod to be added once etcd is back",
            Duration::from_secs(60),
            || lab.pod_add("late", "node-2").ok(),
        );
        all_reach(lab, &["a".into(), "b".into(), "late".into()]);
        wait_mesh_routes(lab);
        let out = stream.finish();
        assert!(out.starts_with("ok "), "the TCP stream broke: {out}");
        assert_no_withdrawals(&monitors);
    });
}

/// `brindle-node --cleanup` on a node whose agent is gone (its DaemonSet deleted, its pods
/// drained) takes off everything of Brindle's — iptables chains and jumps, `brl40…` ipsets,
/// the nftables table, every proto-bird route — and leaves someone else's rules alone.
#[test]
fn cleanup_leaves_the_node_as_it_found_it() {
    with_lab(three(), |lab| {
        lab.pod_add("c0", "node-0").unwrap();
        lab.pod_add("c1", "node-1").unwrap();
        lab.service_add(&brindle_lab::LabService {
            name: "web".into(),
            selector: vec![("app".into(), "web".into())],
            ..Default::default()
        })
        .unwrap();
        lab.wait_converged(Duration::from_secs(60)).unwrap();
        let ok = |lab: &brindle_lab::Lab, cmd: &[&str]| lab.node("node-0").ns.ok(cmd);
        wait_for("node-0's Service rules", Duration::from_secs(30), || {
            ok(lab, &["iptables-legacy-save", "-t", "nat"])
                .contains("BRL-SERVICES")
                .then_some(())
        });
        // Someone else's: an iptables rule, an nftables table. And a table of ours left
        // by a run with --dataplane nftables.
        ok(
            lab,
            &[
                "iptables-legacy",
                "-A",
                "FORWARD",
                "-s",
                "10.99.0.0/16",
                "-j",
                "ACCEPT",
            ],
        );
        ok(lab, &["nft", "add", "table", "ip", "theirs"]);
        ok(lab, &["nft", "add", "table", "ip", "brindle"]);
        let sock = lab.node("node-0").control_socket().display().to_string();
        let ready = lab.node("node-0").dataplane_ready_file();
        let ready_arg = ready.display().to_string();
        // `prefix`: a command the cleanup runs under (setpriv, to drop a capability).
        let cleanup_under = |lab: &brindle_lab::Lab, prefix: &[&str]| {
            let bin = brindle_lab::binary("brindle-node");
            let mut argv = prefix.to_vec();
            argv.extend([
                bin.to_str().unwrap(),
                "--cleanup",
                "--control-socket",
                &sock,
                "--dataplane-ready-file",
                &ready_arg,
            ]);
            let o = lab.node("node-0").ns.command(&argv).output().unwrap();
            let said = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            (o.status.success(), said)
        };
        let cleanup = |lab: &brindle_lab::Lab| cleanup_under(lab, &[]);
        // While the agent runs, cleanup refuses (it would only cause an outage).
        assert!(
            ready.exists(),
            "the agent has synced: the CNI plugin may wire pods"
        );
        let (done, said) = cleanup(lab);
        assert!(!done && said.contains("still running"), "{said}");
        assert!(ready.exists(), "a refused cleanup takes nothing");
        assert!(ok(lab, &["iptables-legacy-save", "-t", "nat"]).contains("BRL-SERVICES"));
        // The DaemonSet gone: pods drained, the agent stopped; its rules and routes stay.
        lab.pod_del("c0").unwrap();
        lab.stop_agent(0);
        assert!(ok(lab, &["iptables-legacy-save", "-t", "nat"]).contains("BRL-SERVICES"));
        assert!(!ok(lab, &["ip", "route", "show", "proto", "bird"]).is_empty());
        // BIRD in the node's network namespace (calico-node's, say): its routes are proto
        // bird too, so cleanup refuses, and takes nothing.
        let conf = "router id 198.18.0.250;\nprotocol device {}\n";
        let bird = brindle_testsupport::daemons::Bird::start(&lab.node("node-0").ns, conf);
        let (done, said) = cleanup(lab);
        assert!(
            !done && said.contains("bird (pid") && said.contains("runs in this network namespace"),
            "{said}"
        );
        assert!(!ok(lab, &["ip", "route", "show", "proto", "bird"]).is_empty());
        drop(bird);
        // BIRD elsewhere (another namespace) is no reason to refuse; but a cleanup that
        // cannot read its namespace (no CAP_SYS_PTRACE, as in a container that drops it)
        // does not guess: it refuses.
        let elsewhere = brindle_testsupport::daemons::Bird::start(&lab.fabric, conf);
        let (done, said) = cleanup_under(lab, &["setpriv", "--bounding-set", "-sys_ptrace", "--"]);
        assert!(
            !done && said.contains("cannot be read") && said.contains("CAP_SYS_PTRACE"),
            "{said}"
        );
        assert!(!ok(lab, &["ip", "route", "show", "proto", "bird"]).is_empty());
        let (done, said) = cleanup(lab);
        drop(elsewhere);
        assert!(done, "{said}");
        assert!(said.contains("nothing of Brindle's is left"), "{said}");
        // The CNI plugin, without an agent, wires no pod onto a node without our rules.
        assert!(
            !ready.exists() && said.contains("dataplane-ready file: removed"),
            "{said}"
        );
        let ipt = ok(lab, &["iptables-legacy-save"]);
        assert!(!ipt.contains("BRL-") && !ipt.contains("brl:"), "{ipt}");
        assert!(
            ipt.contains("-A FORWARD -s 10.99.0.0/16 -j ACCEPT"),
            "{ipt}"
        );
        assert!(!ok(lab, &["ipset", "list", "-n"]).contains("brl40"));
        let tables = ok(lab, &["nft", "list", "tables"]);
        assert!(
            !tables.contains("ip brindle") && tables.contains("ip theirs"),
            "{tables}"
        );
        assert_eq!(
            ok(lab, &["ip", "route", "show", "proto", "bird"]).trim(),
            ""
        );
        // Run again: nothing to do, and it says so without failing.
        let (done, said) = cleanup(lab);
        assert!(done, "{said}");
    });
}
