//! Test 1 (3 nodes, one L2 segment, full mesh) and test 7 (the same over the Kubernetes
//! datastore, against the in-test API server).

use brindle_lab::{Datastore, LabSpec};

use crate::common::*;

fn mesh(spec: LabSpec) {
    with_lab(spec, |lab| {
        let pods = settled_mesh(lab);
        for n in &lab.nodes {
            let r = routes(lab, &n.name);
            assert_eq!(
                r.len(),
                lab.nodes.len(),
                "{}: one route per node's block: {r:?}",
                n.name
            );
            let peers = lab.peers(&n.name);
            assert_eq!(peers.len(), lab.nodes.len() - 1, "{}: {peers:?}", n.name);
            assert!(
                peers.iter().all(|p| p["state"] == "Established"),
                "{peers:?}"
            );
        }
        // Probes and metrics, as the kubelet and Prometheus would read them.
        let n0 = &lab.nodes[0];
        let get = |url: &str| {
            let code = format!("import urllib.request as u\ntry:\n r = u.urlopen('{url}', timeout=3); print(r.status); print(r.read().decode())\nexcept Exception as e:\n print(getattr(e, 'code', e))");
            n0.ns.ok(&["python3", "-c", &code])
        };
        let ready = get("http://127.0.0.1:9099/readyz");
        assert!(ready.starts_with("200"), "{ready}");
        let metrics = get("http://127.0.0.1:9091/metrics");
        let up = format!(
            "brindle_bgp_sessions{{state=\"Established\"}} {}",
            lab.nodes.len() - 1
        );
        assert!(metrics.contains(&up), "{up} in {metrics}");
        assert!(
            metrics.contains("brindle_bgp_prefixes_received{peer="),
            "{metrics}"
        );
        assert!(
            metrics.contains("brindle_route_programming_seconds_count"),
            "{metrics}"
        );
        // Removing a pod keeps its node's block (and its route): the block stays affine.
        let first = pods[0].clone();
        lab.pod_del(&first).expect("pod del");
        wait_mesh_routes(lab);
    });
}

/// A new listen port in BGPConfiguration restarts every speaker inside its agent, gracefully:
/// sessions come back on the new port and no route is withdrawn meanwhile.
#[test]
fn a_listen_port_change_takes_effect_without_a_restart_or_a_withdraw() {
    use brindle_api::BGPConfiguration;
    use brindle_testsupport::daemons::wait_for;
    use std::time::Duration;
    with_lab(
        LabSpec {
            nodes: 2,
            ..Default::default()
        },
        |lab| {
            let pods = settled_mesh(lab);
            let monitors = monitors(lab, &["node-0", "node-1"]);
            let pids: Vec<_> = lab.nodes.iter().map(|n| n.agent_pid()).collect();
            let api = lab.store.all::<BGPConfiguration>();
            let mut cfg = lab
                .block_on(api.get("default"))
                .expect("get")
                .expect("default config");
            cfg.spec.listen_port = 1790;
            lab.block_on(api.update(&cfg)).expect("update");
            for n in ["node-0", "node-1"] {
                wait_for(
                    &format!("{n} to listen on 1790 with its session up"),
                    Duration::from_secs(40),
                    || {
                        let listening = lab.node(n).ns.ok(&["ss", "-Htln", "sport = :1790"]);
                        let p = lab.peers(n);
                        (!listening.trim().is_empty()
                            && p.len() == 1
                            && p[0]["state"] == "Established")
                            .then_some(())
                    },
                );
                let old = lab.node(n).ns.ok(&["ss", "-Htln", "sport = :179"]);
                assert!(old.trim().is_empty(), "{n} still listens on 179: {old}");
            }
            all_reach(lab, &pods);
            assert_eq!(
                pids,
                lab.nodes.iter().map(|n| n.agent_pid()).collect::<Vec<_>>(),
                "same processes"
            );
            assert_no_withdrawals(&monitors);
        },
    );
}

#[test]
fn three_nodes_full_mesh_etcd() {
    mesh(LabSpec {
        nodes: 3,
        ..Default::default()
    });
}

#[test]
fn two_nodes_full_mesh_kubernetes_datastore() {
    mesh(LabSpec {
        nodes: 2,
        datastore: Datastore::Kubernetes,
        ..Default::default()
    });
}
