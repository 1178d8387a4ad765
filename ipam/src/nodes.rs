//! Where a node's labels and BGP facts live, and how to tell that an owner still exists.
//! Kubernetes backend: the core Node (labels, `brindle.dev/*` annotations) and Pod.
//! etcd and memory backends: the `BrindleNode` record and the Pod stored as JSON.

use std::collections::BTreeMap;

use brindle_api::{BrindleNode, NodeBgp, NodeSpec};
use brindle_datastore::{Store, StoreError};
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::error::{IpamError, Result};

/// How many times a node record update is retried on conflict.
const NODE_RETRIES: u32 = 20;

/// A node as IPAM sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    /// Its agent recorded an IPv6 address and no IPv4 one (`IP=none`): IPv4 pools cannot
    /// serve it (nothing would route their addresses to it).
    pub ipv6_only: bool,
}

#[derive(Clone)]
pub struct Owners {
    store: Store,
}

impl Owners {
    pub fn new(store: Store) -> Self {
        Owners { store }
    }

    fn kube(&self) -> bool {
        self.store.backend_name() == "kubernetes"
    }

    fn no_node(&self, node: &str) -> IpamError {
        IpamError::NoNode {
            node: node.to_owned(),
            backend: self.store.backend_name(),
            kind: if self.kube() {
                "Node"
            } else {
                "nodes.brindle.dev"
            },
        }
    }

    /// The node's labels; an error naming the node if it has no record.
    pub async fn labels(&self, node: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.facts(node).await?.labels)
    }

    /// What IPAM needs of a node: its labels, and whether it is IPv6-only. An error naming
    /// the node if it has no record.
    pub async fn facts(&self, node: &str) -> Result<NodeFacts> {
        let found = if self.kube() {
            self.store.all::<Node>().get(node).await?.map(|n| {
                let bgp = NodeBgp::from_annotations(&n.metadata.annotations.unwrap_or_default())
                    .unwrap_or_default();
                (n.metadata.labels, bgp)
            })
        } else {
            self.store
                .all::<BrindleNode>()
                .get(node)
                .await?
                .map(|n| (n.metadata.labels, n.spec.bgp.unwrap_or_default()))
        };
        let (labels, bgp) = found.ok_or_else(|| self.no_node(node))?;
        Ok(NodeFacts {
            labels: labels.unwrap_or_default(),
            ipv6_only: bgp.ipv4_address.is_none() && bgp.ipv6_address.is_some(),
        })
    }

    pub async fn node_exists(&self, node: &str) -> Result<bool> {
        Ok(if self.kube() {
            self.store.all::<Node>().get(node).await?.is_some()
        } else {
            self.store.all::<BrindleNode>().get(node).await?.is_some()
        })
    }

    pub async fn pod_exists(&self, namespace: &str, pod: &str) -> Result<bool> {
        Ok(self
            .store
            .namespaced::<Pod>(namespace)
            .get(pod)
            .await?
            .is_some())
    }

    /// All node names and all pods (namespace, name): a snapshot for a GC pass.
    pub async fn snapshot(&self) -> Result<crate::gc::OwnerSnapshot> {
        let nodes = if self.kube() {
            let l = self.store.all::<Node>().list().await?.items;
            l.into_iter().filter_map(|n| n.metadata.name).collect()
        } else {
            let l = self.store.all::<BrindleNode>().list().await?.items;
            l.into_iter().filter_map(|n| n.metadata.name).collect()
        };
        let pods = self
            .store
            .all::<Pod>()
            .list()
            .await?
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.namespace?, p.metadata.name?)))
            .collect();
        Ok(crate::gc::OwnerSnapshot { nodes, pods })
    }

    pub async fn bgp(&self, node: &str) -> Result<NodeBgp> {
        if self.kube() {
            let n = self
                .store
                .all::<Node>()
                .get(node)
                .await?
                .ok_or_else(|| self.no_node(node))?;
            NodeBgp::from_annotations(&n.metadata.annotations.unwrap_or_default())
                .map_err(|e| IpamError::Corrupt(format!("node {node}: {e}")))
        } else {
            let n = self
                .store
                .all::<BrindleNode>()
                .get(node)
                .await?
                .ok_or_else(|| self.no_node(node))?;
            Ok(n.spec.bgp.unwrap_or_default())
        }
    }

    /// Writes the node's tunnel address (None removes it), compare-and-swap with retries.
    pub async fn set_tunnel_addr(&self, node: &str, addr: Option<String>) -> Result<()> {
        for _ in 0..NODE_RETRIES {
            let r = if self.kube() {
                // A merge patch of the one annotation (null removes it): the role grants
                // `patch` on Nodes, not `update`.
                let key = brindle_api::node::annotations::IPIP_TUNNEL_ADDR;
                let patch = serde_json::json!({"metadata": {"annotations": {key: addr}}});
                match self.store.all::<Node>().merge_patch(node, patch).await {
                    Err(StoreError::NotFound { .. }) => return Err(self.no_node(node)),
                    r => r.map(|_| ()),
                }
            } else {
                let api = self.store.all::<BrindleNode>();
                let mut n = api.get(node).await?.ok_or_else(|| self.no_node(node))?;
                n.spec
                    .bgp
                    .get_or_insert_with(NodeBgp::default)
                    .ipv4_ipip_tunnel_addr = addr.clone();
                api.update(&n).await.map(|_| ())
            };
            match r {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyRetries {
            what: format!("writing the tunnel address of node {node}"),
            retries: NODE_RETRIES,
        })
    }
}

/// A node record for the etcd and memory backends (tests and the lab create nodes this way).
pub fn brindle_node(name: &str, labels: &[(&str, &str)]) -> BrindleNode {
    let mut n = BrindleNode::new(name, NodeSpec::default());
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}
