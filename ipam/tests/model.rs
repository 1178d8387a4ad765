//! Property test: random assign/release sequences on several nodes against a simple model.
//! No address is ever handed out twice, every allocation is found by its handle, and
//! releasing everything returns the pool to empty.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use brindle_api::{IPAMConfigSpec, IPAMHandle};
use brindle_ipam::{IpamError, ReleaseIp, ReleaseOutcome};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Assign { node: usize, n: usize },
    ReleaseHandle { pick: usize },
    ReleaseOneIp { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..5usize).prop_map(|(node, n)| Op::Assign { node, n }),
        2 => any::<usize>().prop_map(|pick| Op::ReleaseHandle { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseOneIp { pick }),
    ]
}

async fn run(ops: Vec<Op>, strict: bool) {
    let store = memory();
    // 4 blocks of 8: small enough that blocks run out, borrowing and exhaustion happen.
    add_pool(&store, "pool", "10.9.0.0/27", 29).await;
    let nodes = ["n0", "n1", "n2"];
    for n in nodes {
        add_node(&store, n).await;
    }
    set_config(
        &store,
        IPAMConfigSpec {
            strict_affinity: strict,
            ..Default::default()
        },
    )
    .await;
    let ipam = ipam(&store);
    let mut model: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Assign { node, n } => {
                let container = format!("c{i}");
                let req = pod_req(nodes[node], "default", &container, &container, n);
                match ipam.assign(&req).await {
                    Ok(ips) => {
                        assert_eq!(ips.len(), n);
                        model.insert(req.handle.clone(), ips.into_iter().collect());
                    }
                    Err(IpamError::Exhausted { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::ReleaseHandle { pick } => {
                if model.is_empty() {
                    continue;
                }
                let h = model.keys().nth(pick % model.len()).cloned().unwrap();
                let freed: BTreeSet<IpAddr> =
                    ipam.release_handle(&h).await.unwrap().into_iter().collect();
                assert_eq!(Some(&freed), model.get(&h));
                model.remove(&h);
            }
            Op::ReleaseOneIp { pick } => {
                let all: Vec<(String, IpAddr)> = model
                    .iter()
                    .flat_map(|(h, ips)| ips.iter().map(move |ip| (h.clone(), *ip)))
                    .collect();
                if all.is_empty() {
                    continue;
                }
                let (h, ip) = all[pick % all.len()].clone();
                let r = ReleaseIp {
                    ip,
                    handle: Some(h.clone()),
                    sequence: None,
                    attrs: None,
                };
                assert_eq!(
                    ipam.release_ips(&[r]).await.unwrap(),
                    vec![ReleaseOutcome::Released]
                );
                let set = model.get_mut(&h).unwrap();
                set.remove(&ip);
                if set.is_empty() {
                    model.remove(&h);
                }
            }
        }
        // Invariants after every step.
        let allocs = all_allocations(&store).await;
        let distinct: BTreeSet<IpAddr> = allocs.iter().map(|a| a.0).collect();
        assert_eq!(
            distinct.len(),
            allocs.len(),
            "an address is allocated twice"
        );
        let from_blocks: BTreeSet<(IpAddr, String)> =
            allocs.into_iter().map(|(ip, h)| (ip, h.unwrap())).collect();
        let from_model: BTreeSet<(IpAddr, String)> = model
            .iter()
            .flat_map(|(h, ips)| ips.iter().map(move |ip| (*ip, h.clone())))
            .collect();
        assert_eq!(from_blocks, from_model);
        for (h, ips) in &model {
            let got: BTreeSet<IpAddr> = ipam.ips_of_handle(h).await.unwrap().into_iter().collect();
            assert_eq!(&got, ips, "handle {h}");
        }
        let owners = brindle_ipam::gc::OwnerSnapshot::default();
        let report = ipam.check(&owners).await.unwrap();
        assert!(
            report.duplicates.is_empty() && report.handle_mismatches.is_empty(),
            "{report:?}"
        );
    }
    for h in model.keys() {
        ipam.release_handle(h).await.unwrap();
    }
    assert!(all_allocations(&store).await.is_empty());
    assert!(count::<IPAMHandle>(&store).await == 0);
    for n in nodes {
        ipam.release_empty_blocks(n, false).await.unwrap();
    }
    assert!(count::<brindle_api::IPAMBlock>(&store).await == 0);
    assert!(count::<brindle_api::BlockAffinity>(&store).await == 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn allocator_matches_model(ops in prop::collection::vec(op(), 1..40), strict in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, strict));
    }
}
