//! `services`: every Service's externalIPs, LoadBalancer ingress addresses and nodePorts,
//! and whether the agents program them or refuse them (and why), judged from the datastore
//! with the agents' own rule (`brindle_api::service_addresses`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::service_addresses::{bgp_ports, node_addresses, AddressKind, Reserved};
use brindle_api::{BGPConfiguration, BGPPeer, IPPool};
use brindle_datastore::{Store, StoreResource};
use k8s_openapi::api::core::v1::Service;

use crate::client::{node_view, Client};
use crate::output::columns;
use crate::Failure;

/// Every object of a kind by name, with `spec` of each.
async fn specs<K: StoreResource, S>(
    store: &Store,
    spec: impl Fn(K) -> S,
) -> Result<BTreeMap<String, S>, brindle_datastore::StoreError> {
    Ok(store
        .all::<K>()
        .list()
        .await?
        .items
        .into_iter()
        .map(|o| (o.meta().name.clone().unwrap_or_default(), spec(o)))
        .collect())
}

/// One address or nodePort of a Service, and the verdict.
struct Row {
    service: String,
    what: String,
    address: String,
    refused: Option<String>,
}

pub async fn run(c: &Client, store: &Store, refused_only: bool) -> Result<(), Failure> {
    let e = |e: brindle_datastore::StoreError| Failure::Error(e.into());
    let named = |m: &Option<String>| m.clone().unwrap_or_default();
    let peers = specs(store, |p: BGPPeer| p.spec).await.map_err(e)?;
    let pools = specs(store, |p: IPPool| p.spec).await.map_err(e)?;
    let configs = specs(store, |p: BGPConfiguration| p.spec)
        .await
        .map_err(e)?;
    let nodes = if c.kube() {
        store
            .all::<k8s_openapi::api::core::v1::Node>()
            .list()
            .await
            .map_err(e)?
            .items
            .iter()
            .map(node_view)
            .collect()
    } else {
        store
            .all::<brindle_api::BrindleNode>()
            .list()
            .await
            .map_err(e)?
            .items
    };
    let addresses = nodes.iter().flat_map(|n| {
        node_addresses(
            n.metadata.name.as_deref().unwrap_or_default(),
            &n.spec.bgp.clone().unwrap_or_default(),
        )
    });
    let ports = bgp_ports(configs.values(), peers.values());
    let reserved = Reserved::new(
        addresses,
        peers.iter().map(|(n, p)| (n.as_str(), p)),
        pools.iter().map(|(n, p)| (n.as_str(), p)),
        configs.get("default"),
        &ports,
    );
    let services = store.all::<Service>().list().await.map_err(e)?.items;
    let mut rows = vec![];
    for s in &services {
        let service = format!(
            "{}/{}",
            named(&s.metadata.namespace),
            named(&s.metadata.name)
        );
        let spec = s.spec.clone().unwrap_or_default();
        let mut judge = |what: &str, ip: &str, kind: AddressKind| {
            let refused = match ip.parse::<IpAddr>() {
                Ok(a) => reserved.refuse(a, kind),
                Err(_) => Some(format!("{ip:?} is not an IP address")),
            };
            rows.push(Row {
                service: service.clone(),
                what: what.into(),
                address: ip.into(),
                refused,
            });
        };
        for ip in spec.external_ips.iter().flatten() {
            judge("externalIP", ip, AddressKind::ExternalIp);
        }
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        for i in ingress.iter().filter_map(|i| i.ip.as_deref()) {
            judge("loadBalancer", i, AddressKind::LoadBalancer);
        }
        let with_node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for p in spec.ports.iter().flatten().filter(|_| with_node_port) {
            if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()) {
                rows.push(Row {
                    service: service.clone(),
                    what: "nodePort".into(),
                    address: np.to_string(),
                    refused: reserved.refuse_node_port(np),
                });
            }
        }
    }
    let shown: Vec<Vec<String>> = rows
        .into_iter()
        .filter(|r| !refused_only || r.refused.is_some())
        .map(|r| {
            vec![
                r.service,
                r.what,
                r.address,
                if r.refused.is_some() {
                    "refused"
                } else {
                    "programmed"
                }
                .into(),
                r.refused.unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(&["SERVICE", "KIND", "ADDRESS", "STATE", "REASON"], &shown)
    );
    Ok(())
}
