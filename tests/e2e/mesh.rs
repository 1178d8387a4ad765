//! Test 1 (3 nodes, one L2 segment, full mesh) and test 7 (the same over the Kubernetes
//! datastore, against the in-test API server).

use brindle_lab::{Datastore, LabSpec};

use crate::common::*;

fn mesh(spec: LabSpec) {
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        wait_mesh_routes(lab);
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
        // Removing a pod keeps its node's block (and its route): the block stays affine.
        let first = pods[0].clone();
        lab.pod_del(&first).expect("pod del");
        wait_mesh_routes(lab);
    });
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
