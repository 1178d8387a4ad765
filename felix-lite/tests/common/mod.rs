//! What the nftables writer tests share: a writer in a namespace of the test's own, the
//! node's context and guard, the pool and host sets, and pods' local endpoints.

use std::collections::BTreeMap;

use brindle_felix_lite::iptables::Runner;
use brindle_felix_lite::nft::writer::Writer;
use brindle_felix_lite::policy::LocalEndpoint;
use brindle_felix_lite::proxy::rules::{ALL_HOSTS_SET, ALL_POOLS_SET, MASQ_POOLS_SET};
use brindle_felix_lite::proxy::{NatOutgoingExclusions, NodeContext, NodeGuard};
use brindle_policy::model::Pod;
use brindle_testsupport::Netns;

/// A writer whose `nft` runs, and netlink socket lives, in `ns`.
pub fn writer(ns: &Netns) -> Writer {
    Writer::new(Runner {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
        ..Default::default()
    })
}

pub fn ctx() -> NodeContext {
    NodeContext {
        node: "n1".into(),
        zone: None,
        masquerade_bit: 14,
    }
}

pub fn guard() -> NodeGuard {
    NodeGuard {
        pod_blocked_ports: vec![179],
        nat_outgoing_exclusions: NatOutgoingExclusions::IPPoolsAndHostIPs,
        workload_prefix: "brl".into(),
    }
}

/// One pool, 10.244.0.0/16 (masqueraded), and two hosts.
pub fn sets() -> BTreeMap<String, Vec<ipnetwork::IpNetwork>> {
    let pools = vec!["10.244.0.0/16".parse().unwrap()];
    let hosts = vec![
        "198.18.0.1/32".parse().unwrap(),
        "198.18.0.2/32".parse().unwrap(),
    ];
    BTreeMap::from([
        (ALL_POOLS_SET.to_string(), pools.clone()),
        (MASQ_POOLS_SET.to_string(), pools),
        (ALL_HOSTS_SET.to_string(), hosts),
    ])
}

/// Each pod on this node behind interface `brl0000000<name>`.
pub fn local_endpoints(pods: &[Pod]) -> Vec<LocalEndpoint> {
    pods.iter()
        .map(|p| LocalEndpoint {
            veth: format!("brl0000000{}", p.name),
            pod: Some(format!("{}/{}", p.namespace, p.name)),
        })
        .collect()
}
