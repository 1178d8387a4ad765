//! Registration: the node's name, its IPv4 and IPv6 addresses (autodetected or given) and AS, written
//! to its record — the `BrindleNode` object in etcd, `brindle.dev/*` annotations on the
//! Kubernetes Node. A failed detection keeps the address already recorded; with none recorded
//! the agent refuses to start.

use std::collections::BTreeMap;

use brindle_api::node::annotations;
use brindle_api::{BrindleNode, NodeBgp};
use brindle_datastore::{Store, StoreError};
use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

use crate::autodetect::Iface;

const RETRIES: usize = 20;

/// This agent's version, recorded on its node for `brindlectl version`.
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

fn version_annotation() -> BTreeMap<String, String> {
    BTreeMap::from([(
        annotations::AGENT_VERSION.to_string(),
        AGENT_VERSION.to_string(),
    )])
}

/// The interfaces in index order, with MTU and addresses.
pub async fn interfaces(handle: &rtnetlink::Handle) -> anyhow::Result<Vec<Iface>> {
    let mut out: BTreeMap<u32, Iface> = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links.try_next().await? {
        let mut i = Iface {
            name: String::new(),
            mtu: 1500,
            addrs: vec![],
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => i.name = n.clone(),
                LinkAttribute::Mtu(m) => i.mtu = *m,
                _ => {}
            }
        }
        out.insert(l.header.index, i);
    }
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        let ip = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = ip.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let (Some(ip), Some(i)) = (ip, out.get_mut(&a.header.index)) {
            if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                i.addrs.push(n);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// The node's recorded BGP facts (None: no record yet), and its InternalIPs in order
/// (Kubernetes only).
pub async fn recorded(
    store: &Store,
    node: &str,
) -> Result<(Option<NodeBgp>, Vec<String>), StoreError> {
    if store.backend_name() == "kubernetes" {
        let n = store.all::<Node>().get(node).await?;
        let internal = n
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .collect()
            })
            .unwrap_or_default();
        let bgp = n.map(|n| {
            NodeBgp::from_annotations(&n.metadata.annotations.unwrap_or_default())
                .unwrap_or_default()
        });
        Ok((bgp, internal))
    } else {
        let n = store.all::<BrindleNode>().get(node).await?;
        Ok((n.map(|n| n.spec.bgp.unwrap_or_default()), vec![]))
    }
}

/// Writes the addresses (and AS, when given) to the node's record, creating the etcd record.
/// `ip6` is the whole truth about IPv6: None takes a recorded IPv6 address off.
pub async fn write(
    store: &Store,
    node: &str,
    ip: Option<Ipv4Network>,
    ip6: Option<Ipv6Network>,
    asn: Option<u32>,
) -> anyhow::Result<()> {
    for _ in 0..RETRIES {
        let r = if store.backend_name() == "kubernetes" {
            let api = store.all::<Node>();
            let Some(n) = api.get(node).await? else {
                anyhow::bail!("Kubernetes Node {node:?} does not exist (is --nodename right? the kubelet registers it)");
            };
            let have = n.metadata.annotations.unwrap_or_default();
            // A value of None (JSON null in the merge patch) removes the annotation.
            let mut want: BTreeMap<String, Option<String>> = BTreeMap::from([
                (
                    annotations::IPV4_ADDRESS.to_string(),
                    ip.map(|n| n.to_string()),
                ),
                (
                    annotations::IPV6_ADDRESS.to_string(),
                    ip6.map(|n| n.to_string()),
                ),
                (
                    annotations::AGENT_VERSION.to_string(),
                    Some(AGENT_VERSION.to_string()),
                ),
            ]);
            if let Some(a) = asn {
                want.insert(annotations::AS_NUMBER.into(), Some(a.to_string()));
            }
            want.retain(|k, v| have.get(k) != v.as_ref());
            if want.is_empty() {
                return Ok(());
            }
            // A merge patch of our annotations only: the kubelet owns the rest of the Node,
            // and the role grants `patch`, not `update`.
            api.merge_patch(node, serde_json::json!({"metadata": {"annotations": want}}))
                .await
                .map(|_| ())
        } else {
            let api = store.all::<BrindleNode>();
            match api.get(node).await? {
                None => {
                    let mut n = brindle_ipam::nodes::brindle_node(node, &[]);
                    n.metadata.labels = None;
                    n.metadata.annotations = Some(version_annotation());
                    n.spec.bgp = Some(NodeBgp {
                        ipv4_address: ip.map(|n| n.to_string()),
                        ipv6_address: ip6.map(|n| n.to_string()),
                        as_number: asn,
                        ..Default::default()
                    });
                    match api.create(&n).await {
                        Err(StoreError::AlreadyExists { .. }) => continue,
                        r => r.map(|_| ()),
                    }
                }
                Some(mut n) => {
                    let before = (n.spec.clone(), n.metadata.annotations.clone());
                    let b = n.spec.bgp.get_or_insert_with(NodeBgp::default);
                    b.ipv4_address = ip.map(|n| n.to_string());
                    b.ipv6_address = ip6.map(|n| n.to_string());
                    if asn.is_some() {
                        b.as_number = asn;
                    }
                    n.metadata
                        .annotations
                        .get_or_insert_with(BTreeMap::new)
                        .extend(version_annotation());
                    if (&n.spec, &n.metadata.annotations) == (&before.0, &before.1) {
                        return Ok(());
                    }
                    api.update(&n).await.map(|_| ())
                }
            }
        };
        match r {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("writing the record of node {node}: conflict after {RETRIES} retries")
}
