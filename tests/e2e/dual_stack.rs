//! Dual stack (issue 31): nodes with IPv4 and IPv6 addresses peer over both families, pods
//! get an address of each, and every pod reaches every other over IPv6 as over IPv4.

use brindle_lab::{IpFamily, LabSpec};
use brindle_testsupport::daemons::wait_for;
use std::time::Duration;

use crate::common::*;

fn dual(nodes: usize) -> LabSpec {
    LabSpec {
        nodes,
        ip_family: IpFamily::Dual,
        ..Default::default()
    }
}

/// Three nodes in full mesh: one IPv4 and one IPv6 session per pair, each node's
/// `ip -6 route show proto bird` exactly the other nodes' IPv6 blocks (via their IPv6
/// addresses) and a blackhole for its own, TCP between every pair of pods over IPv6; an agent
/// restart withdraws no IPv6 route anywhere.
#[test]
fn dual_stack_mesh_routes_both_families() {
    with_lab(dual(3), |lab| {
        let pods = settled_mesh(lab);
        all_reach6(lab, &pods);
        wait_mesh_routes6(lab);
        for n in &lab.nodes {
            let peers = lab.peers(&n.name);
            let v6: Vec<&serde_json::Value> = peers
                .iter()
                .filter(|p| p["addr"].as_str().is_some_and(|a| a.contains(':')))
                .collect();
            assert_eq!(peers.len(), 2 * (lab.nodes.len() - 1), "{peers:?}");
            assert_eq!(v6.len(), lab.nodes.len() - 1, "{peers:?}");
            assert!(
                peers.iter().all(|p| p["state"] == "Established"),
                "{peers:?}"
            );
            // Each node's blocks: one of each family.
            let blocks = &lab.blocks()[&n.name];
            assert_eq!(
                blocks.iter().filter(|b| b.contains(':')).count(),
                1,
                "{blocks:?}"
            );
            // The agent turned IPv6 forwarding on.
            let fwd = n.ns.ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
            assert_eq!(fwd.trim(), "1");
        }
        // The pods' own view: an address of each family on eth0, the IPv6 default route
        // via the host veth's link-local address.
        let p = &lab.pods[&pods[0]];
        let r6 = p.ns.ok(&["ip", "-6", "route", "show", "default"]);
        assert!(
            r6.contains("via fe80::ecee:eeff:feee:eeee dev eth0"),
            "{r6}"
        );

        // An agent restart: no IPv6 route withdrawn anywhere, pods still reach over IPv6.
        let names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mons: Vec<RouteMonitor> = refs
            .iter()
            .map(|n| RouteMonitor::start_family(lab, n, "-6"))
            .collect();
        lab.stop_agent(1);
        lab.start_agent(1);
        wait_for(
            "node-1's sessions to come back",
            Duration::from_secs(40),
            || {
                let p = lab.peers("node-1");
                (p.len() == 4 && p.iter().all(|p| p["state"] == "Established")).then_some(())
            },
        );
        wait_mesh_routes6(lab);
        all_reach6(lab, &pods);
        assert_no_withdrawals(&mons);
    });
}

/// Two racks, a BIRD router per rack with IPv4 and IPv6 sessions to its nodes and to the
/// other rack's router: pods reach each other over IPv6 across racks, nodes route the other
/// rack's IPv6 blocks via their router's IPv6 address, and each router holds every IPv6 block.
#[test]
fn dual_stack_racks_through_top_of_rack_routers() {
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        tor: true,
        ..dual(4)
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        all_reach6(lab, &pods);
        let blocks = lab.blocks();
        for n in &lab.nodes {
            let r = routes6(lab, &n.name);
            for (owner, bs) in &blocks {
                let o = lab.node(owner);
                for b in bs.iter().filter(|b| b.contains(':')) {
                    let want = if owner == &n.name {
                        format!("blackhole {b}")
                    } else if o.rack == n.rack {
                        format!("{b} via {} dev eth0", o.ip6.expect("v6"))
                    } else {
                        let gw =
                            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, n.rack as u16, 0, 0, 0, 1);
                        format!("{b} via {gw} dev eth0")
                    };
                    assert!(r.contains(&want), "{}: missing {want:?} in {r:?}", n.name);
                }
            }
            // One session per family, both to its router.
            let peers = lab.peers(&n.name);
            assert_eq!(peers.len(), 2, "{}: {peers:?}", n.name);
        }
        let all6: Vec<&String> = blocks
            .values()
            .flatten()
            .filter(|b| b.contains(':'))
            .collect();
        assert_eq!(all6.len(), 4, "{blocks:?}");
        for t in &lab.tors {
            let shown = t.bird.birdc(&["show", "route", "table", "master6"]);
            for b in &all6 {
                assert!(
                    shown.contains(b.as_str()),
                    "rack {} router lacks {b}: {shown}",
                    t.rack
                );
            }
        }
    });
}
