//! Test 8: bad input is logged once with the resource and the reason; the agent stays up and
//! the rest keeps working.

use std::time::Duration;

use brindle_api::{BGPPeer, BGPPeerSpec, IPPool, IPPoolSpec};
use brindle_lab::LabSpec;
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

fn count(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn bad_resources_are_logged_once_and_the_rest_keeps_working() {
    with_lab(LabSpec::default(), |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        // A peer nobody answers for, a pool no node matches, a node record whose address is
        // not an address (written around the validating Store, as a broken tool might).
        let peer = BGPPeerSpec {
            peer_ip: Some("198.18.0.250".into()),
            as_number: Some(65010),
            ..Default::default()
        };
        lab.block_on(
            lab.store
                .all::<BGPPeer>()
                .create(&BGPPeer::new("nobody-home", peer)),
        )
        .expect("peer");
        let mut pool = IPPoolSpec::new("10.246.0.0/16");
        pool.node_selector = "rack == 'nowhere'".into();
        lab.block_on(
            lab.store
                .all::<IPPool>()
                .create(&IPPool::new("unused", pool)),
        )
        .expect("pool");
        let endpoint = lab.etcd.as_ref().expect("etcd").endpoint();
        lab.block_on(async {
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .expect("etcd");
            let bogus = serde_json::json!({
                "apiVersion": "brindle.dev/v1", "kind": "Node",
                "metadata": {"name": "bogus"},
                "spec": {"bgp": {"ipv4Address": "198.18.0.300/24"}}
            });
            c.put("/brindle/nodes.brindle.dev/bogus", bogus.to_string(), None)
                .await
                .expect("put");
        });
        let logs: Vec<_> = lab.nodes.iter().map(|n| n.log()).collect();
        for log in &logs {
            wait_for(
                "the malformed node to be logged",
                Duration::from_secs(20),
                || (count(log, "198.18.0.300") > 0).then_some(()),
            );
            wait_for(
                "the silent peer to be logged",
                Duration::from_secs(60),
                || {
                    (count(log, "198.18.0.250") > 0 && count(log, "not Established") > 0)
                        .then_some(())
                },
            );
        }
        // More changes: the warnings are not repeated for each new snapshot.
        lab.pod_add("after", "node-1").expect("pod after");
        std::thread::sleep(Duration::from_secs(6));
        for (n, log) in lab.nodes.iter().zip(&logs) {
            assert_eq!(
                count(log, "198.18.0.300"),
                1,
                "{}: malformed node logged once",
                n.name
            );
            assert_eq!(
                count(log, "not Established"),
                1,
                "{}: silent peer logged once",
                n.name
            );
            assert!(n
                .agent_pid()
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()));
            let peers = lab.peers(&n.name);
            assert_eq!(
                peers.len(),
                3,
                "{}: two mesh peers and the silent one: {peers:?}",
                n.name
            );
        }
        let mut all = pods.clone();
        all.push("after".into());
        all_reach(lab, &all);
        wait_mesh_routes(lab);
    });
}
