//! Test 2: two racks, a BIRD router per rack (Calico's AS-per-rack design: iBGP to the rack's
//! router, which reflects within the rack and speaks eBGP to the other rack), mesh off.

use std::collections::BTreeSet;
use std::time::Duration;

use brindle_api::{IPPool, IPPoolSpec};
use brindle_lab::LabSpec;
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

fn bird_prefixes(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| t.contains('/') && t.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[test]
fn two_racks_through_top_of_rack_routers() {
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        tor: true,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        // Nodes hold each other's blocks: same rack via the node, other rack via the router.
        let blocks = lab.blocks();
        for n in &lab.nodes {
            let r = routes(lab, &n.name);
            for (owner, bs) in &blocks {
                let o = lab.node(owner);
                for b in bs {
                    let want = if owner == &n.name {
                        format!("blackhole {b}")
                    } else if o.rack == n.rack {
                        format!("{b} via {} dev eth0", o.ip4())
                    } else {
                        format!("{b} via 198.18.{}.1 dev eth0", n.rack)
                    };
                    assert!(r.contains(&want), "{}: missing {want:?} in {r:?}", n.name);
                }
            }
            assert_eq!(
                lab.peers(&n.name).len(),
                1,
                "{}: one session, to its router",
                n.name
            );
        }

        // A pool of one block: node-0 claims it, node-3 (the other rack) must borrow from it.
        let mut small = IPPoolSpec::new("10.245.0.0/26");
        small.block_size = Some(26);
        lab.block_on(
            lab.store
                .all::<IPPool>()
                .create(&IPPool::new("small", small)),
        )
        .expect("pool");
        lab.pod_add_from("s0", "node-0", Some("small")).expect("s0");
        let borrowed = lab.pod_add_from("s3", "node-3", Some("small")).expect("s3");
        assert!(
            "10.245.0.0/26"
                .parse::<ipnetwork::IpNetwork>()
                .unwrap()
                .contains(borrowed),
            "{borrowed} should come from node-0's block"
        );
        let pods = ["s0".to_string(), "s3".to_string(), pods[1].clone()];
        all_reach(lab, &pods);

        // The routers hold aggregated blocks and the one borrowed /32, nothing else.
        let mut want: BTreeSet<String> = lab.blocks().values().flatten().cloned().collect();
        want.insert(format!("{borrowed}/32"));
        for t in &lab.tors {
            wait_for(
                &format!(
                    "router {} to hold exactly the blocks and the borrowed /32",
                    t.rack
                ),
                Duration::from_secs(30),
                || {
                    let got = bird_prefixes(&t.bird.birdc(&["show", "route"]));
                    (got == want).then_some(())
                },
            );
        }
    });
}
