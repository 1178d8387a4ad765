//! Test 6: one node reflects for four (mesh off).

use brindle_lab::LabSpec;

use crate::common::*;

#[test]
fn one_reflector_for_four_clients() {
    let spec = LabSpec {
        nodes: 5,
        reflectors: 1,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        settled_mesh(lab);
        for n in &lab.nodes {
            let peers = lab.peers(&n.name);
            let want = if n.name == "node-0" { 4 } else { 1 };
            assert_eq!(peers.len(), want, "{}: {peers:?}", n.name);
            assert!(
                peers.iter().all(|p| p["state"] == "Established"),
                "{peers:?}"
            );
            if n.name != "node-0" {
                assert_eq!(peers[0]["addr"], lab.node("node-0").ip4().to_string());
            }
        }
    });
}
