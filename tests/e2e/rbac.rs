//! The ClusterRoles in `manifests/02-rbac.yaml` against the API calls Brindle really makes:
//! a lab on the (recording) in-test API server runs the agents, brindle-cni and the
//! controller through their work — pods added and deleted, a Service, a node removed and its
//! blocks collected — and every call each made must be allowed by its ServiceAccount's
//! roles, and every rule must have been used by some call.

use std::collections::BTreeSet;
use std::time::Duration;

use brindle_api::IPAMBlock;
use brindle_lab::{Datastore, LabService, LabSpec, TOKEN_CONTROLLER, TOKEN_NODE};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::common::*;

/// Granted for paths this scenario does not reach (races and retries), each with where the
/// code makes the call. Anything else granted must be seen used.
#[rustfmt::skip]
const OFF_SCENARIO: &[(&str, &str, &str, &str)] = &[
    // ipam.rs try_claim: two nodes claim one block; the loser reads the winner's affinity.
    ("brindle-node", "blockaffinities", "get", "a lost claim race"),
    // ipam.rs drop_affinity: a pending affinity left by a crashed claim, or a lost race.
    ("brindle-node", "blockaffinities", "delete", "a stale or lost claim"),
    // ipam.rs adjust_handle: a handle whose addresses span blocks, or a partial release.
    ("brindle-node", "ipamhandles", "update", "a handle changed in place"),
    // default_pool.rs: only when the cluster has no IPPool at all (the lab seeds one);
    // crates/controller/tests/gc_etcd.rs covers it.
    ("brindle-controller", "ippools", "create", "a cluster with no IPPool"),
    // gc.rs repair_handle: an owner record that disagrees with the blocks (a crash between
    // the two writes of an allocation) is rewritten, or made again when it is missing.
    ("brindle-controller", "ipamhandles", "update", "a handle repaired"),
    ("brindle-controller", "ipamhandles", "create", "a missing handle made again"),
];

/// (group, resource, verb, namespace or "" for cluster-wide) granted to a ServiceAccount.
type Grant = (String, String, String, String);

fn grants(account: &str) -> BTreeSet<Grant> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/02-rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kind = |v: &Value| v["kind"].as_str().unwrap_or_default().to_string();
    let mut out = BTreeSet::new();
    for b in docs.iter().filter(|d| kind(d).ends_with("Binding")) {
        let bound = b["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["namespace"] == "brindle-system"
                && s["name"] == account
        });
        if !bound {
            continue;
        }
        let ns = b["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let role = docs
            .iter()
            .find(|r| {
                kind(r) == b["roleRef"]["kind"] && r["metadata"]["name"] == b["roleRef"]["name"]
            })
            .unwrap_or_else(|| panic!("{} names a missing role", b["metadata"]["name"]));
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        let s = |x: &Value| x.as_str().unwrap().to_string();
                        assert!(
                            ![s(g), s(r), s(v)].iter().any(|x| x == "*"),
                            "no wildcards: {rule}"
                        );
                        out.insert((s(g), s(r), s(v), ns.clone()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_cluster_roles_allow_every_call_brindle_makes_and_nothing_more() {
    with_lab(
        LabSpec {
            nodes: 3,
            datastore: Datastore::Kubernetes,
            gc_grace: "2s".into(),
            ..Default::default()
        },
        |lab| {
            let pods = settled_mesh(lab);
            lab.service_add(&LabService {
                name: "web".into(),
                selector: vec![],
                ..Default::default()
            })
            .unwrap();
            lab.pod_del(&pods[0]).unwrap();
            // A pod deleted without a CNI DEL (its node lost it): the controller reads the
            // pod afresh after its grace period and releases the address.
            let leaked = lab.pods[&pods[1]].ip4().to_string();
            lab.block_on(
                lab.store
                    .namespaced::<Pod>("default")
                    .delete(&pods[1], None),
            )
            .unwrap();
            // The controller frees a removed node's addresses, blocks and affinities.
            let node2_blocks = lab.blocks().remove("node-2").unwrap_or_default();
            assert!(!node2_blocks.is_empty());
            lab.remove_node("node-2").unwrap();
            let done = || {
                let blocks = lab
                    .block_on(lab.store.all::<IPAMBlock>().list())
                    .unwrap()
                    .items;
                let cidrs: Vec<String> = blocks.iter().map(|b| b.spec.cidr.clone()).collect();
                let held = blocks.iter().any(|b| {
                    brindle_ipam::block::allocations(&b.spec)
                        .iter()
                        .any(|a| a.ip.to_string() == leaked)
                });
                !held && node2_blocks.iter().all(|c| !cidrs.contains(c))
            };
            for _ in 0..300 {
                if done() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(done(), "the leak and node-2's blocks are not all freed");

            let calls = lab.api_calls();
            for (token, account) in [
                (TOKEN_NODE, "brindle-node"),
                (TOKEN_CONTROLLER, "brindle-controller"),
            ] {
                let granted = grants(account);
                let mut used = BTreeSet::new();
                let mut denied = vec![];
                for c in calls.iter().filter(|c| c.user == token) {
                    // A cluster-wide grant covers every namespace; a Role only its own.
                    let ns = c.namespace.clone().unwrap_or_default();
                    let key = |ns: &str| {
                        (
                            c.group.clone(),
                            c.resource.clone(),
                            c.verb.to_string(),
                            ns.to_string(),
                        )
                    };
                    if let Some(g) = [key(""), key(&ns)]
                        .into_iter()
                        .find(|k| granted.contains(k))
                    {
                        used.insert(g);
                    } else {
                        denied.push(c.clone());
                    }
                }
                assert!(
                    denied.is_empty(),
                    "{account} makes calls its roles do not allow: {denied:#?}"
                );
                let unused: Vec<_> = granted
                    .difference(&used)
                    .filter(|(_, r, v, _)| {
                        !OFF_SCENARIO
                            .iter()
                            .any(|(a, rr, vv, _)| *a == account && rr == r && vv == v)
                    })
                    .collect();
                assert!(
                    unused.is_empty(),
                    "{account} is granted what it never used: {unused:#?}"
                );
            }
            // An agent reads Pods for its routes with a field selector on its own node, so the
            // API server sends it nothing about other nodes' pods there; its one cluster-wide
            // Pod read is NetworkPolicy's (which keeps a projection: labels, addresses, ports).
            let pod_reads: BTreeSet<(&str, Option<String>)> = calls
                .iter()
                .filter(|c| c.user == TOKEN_NODE && c.resource == "pods")
                .filter(|c| c.verb == "list" || c.verb == "watch")
                .map(|c| (c.verb, c.field_selector.clone()))
                .collect();
            let mut want = BTreeSet::new();
            for verb in ["list", "watch"] {
                want.insert((verb, None));
                for n in 0..3 {
                    want.insert((verb, Some(format!("spec.nodeName=node-{n}"))));
                }
            }
            assert_eq!(pod_reads, want, "the agents' Pod lists and watches");
            let anonymous: Vec<_> = calls
                .iter()
                .filter(|c| {
                    c.user != TOKEN_NODE && c.user != TOKEN_CONTROLLER && !c.user.is_empty()
                })
                .collect();
            assert!(anonymous.is_empty(), "{anonymous:#?}");
        },
    );
}
