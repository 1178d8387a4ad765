//! A node that defends itself (issue 28), tried as an attacker would in the lab.

use std::time::Duration;

use brindle_lab::{LabService, LabSpec};
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

/// A namespace user's Service with a node's address as externalIP on port 179 is not
/// programmed (no DNAT, no REJECT), the mesh stays up through a restart of the victim's
/// agent, and the refusal is logged. (A nodePort on a BGP port: services.rs's unit test.)
#[test]
fn a_service_cannot_take_a_nodes_bgp_traffic() {
    with_lab(
        LabSpec {
            nodes: 2,
            ..Default::default()
        },
        |lab| {
            let pods = settled_mesh(lab);
            lab.pod_add_labeled("evil", "node-0", &[("app", "evil")])
                .expect("the attacker's pod");
            let n1 = lab.nodes[1].ip;
            let capture = LabService {
                name: "capture".into(),
                selector: vec![("app".into(), "evil".into())],
                ports: vec!["179:8080".into()],
                external_ips: vec![n1],
                ..Default::default()
            };
            lab.service_add(&capture).expect("service");
            for n in ["node-0", "node-1"] {
                let log = lab.node(n).log();
                wait_for(&format!("{n} refusing it"), Duration::from_secs(30), || {
                    let l = std::fs::read_to_string(&log).unwrap_or_default();
                    l.contains(&format!(
                        "externalIPs: {n1} is node node-1's address: refused"
                    ))
                    .then_some(())
                });
                let nat = lab.node(n).ns.ok(&["iptables-legacy-save", "-t", "nat"])
                    + &lab.node(n).ns.ok(&["iptables-nft-save", "-t", "nat"]);
                assert!(!nat.contains(&format!("-d {n1}/32")), "{n}: {nat}");
            }
            // The victim's agent restarts: its sessions come back, to the real speakers.
            lab.kill_agent(1);
            lab.start_agent(1);
            wait_for(
                "node-0's session with node-1",
                Duration::from_secs(40),
                || {
                    lab.peers("node-0")
                        .iter()
                        .all(|p| {
                            p["state"] == "Established"
                                && p["router_id"] == serde_json::json!(n1.to_string())
                        })
                        .then_some(())
                },
            );
            all_reach(lab, &pods);
        },
    );
}
