//! The datastore as brindlectl uses it: any kind by value. Brindle's kinds go through the
//! typed Store (so its validation and cross-object rules apply); nodes are `BrindleNode`
//! records in etcd and Kubernetes Nodes (labels plus `brindle.dev/*` annotations) in the
//! Kubernetes datastore, shown as `Node` resources either way.

use std::collections::BTreeMap;

use brindle_api::node::annotations;
use brindle_api::{BrindleNode, NodeBgp, NodeSpec};
use brindle_datastore::{Store, StoreError};
use k8s_openapi::api::core::v1::Node as KubeNode;
use serde_json::Value;

use crate::kind::{with_kind, Kind};

#[derive(Clone)]
pub struct Client {
    pub store: Store,
}

fn to_value<T: serde::Serialize>(obj: &T, kind: Kind) -> Result<Value, StoreError> {
    let mut v = serde_json::to_value(obj).map_err(|source| StoreError::Decode {
        backend: "brindlectl",
        key: brindle_datastore::Key::new(kind.plural(), None, None),
        source,
    })?;
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), "brindle.dev/v1".into());
        m.insert("kind".into(), kind.name().into());
    }
    Ok(v)
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value, kind: Kind) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|source| StoreError::Decode {
        backend: "brindlectl",
        key: brindle_datastore::Key::new(kind.plural(), None, None),
        source,
    })
}

impl Client {
    pub fn new(store: Store) -> Self {
        Client { store }
    }

    pub fn kube(&self) -> bool {
        self.store.backend_name() == "kubernetes"
    }

    pub async fn list(&self, kind: Kind) -> Result<Vec<Value>, StoreError> {
        if kind == Kind::Node && self.kube() {
            let nodes = self.store.all::<KubeNode>().list().await?.items;
            return nodes
                .iter()
                .map(|n| to_value(&node_view(n), kind))
                .collect();
        }
        with_kind!(kind, K => {
            let items = self.store.all::<K>().list().await?.items;
            items.iter().map(|o| to_value(o, kind)).collect()
        })
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<Value>, StoreError> {
        if kind == Kind::Node && self.kube() {
            let n = self.store.all::<KubeNode>().get(name).await?;
            return n.map(|n| to_value(&node_view(&n), kind)).transpose();
        }
        with_kind!(kind, K => {
            match self.store.all::<K>().get(name).await? {
                Some(o) => Ok(Some(to_value(&o, kind)?)),
                None => Ok(None),
            }
        })
    }

    pub async fn create(&self, kind: Kind, v: Value) -> Result<Value, StoreError> {
        if kind == Kind::Node && self.kube() {
            return Err(StoreError::Backend {
                backend: "kubernetes",
                key: brindle_datastore::Key::new("nodes", None, name_of(&v)),
                message: "in the Kubernetes datastore a node is the Kubernetes Node the kubelet registers; use apply to set its BGP facts once it exists".into(),
            });
        }
        with_kind!(kind, K => {
            let obj: K = from_value(v, kind)?;
            to_value(&self.store.all::<K>().create(&obj).await?, kind)
        })
    }

    /// Replaces the stored object: a compare-and-swap when `metadata.resourceVersion` is set.
    pub async fn update(&self, kind: Kind, v: Value) -> Result<Value, StoreError> {
        if kind == Kind::Node && self.kube() {
            let want: BrindleNode = from_value(v, kind)?;
            return self.update_kube_node(&want).await;
        }
        with_kind!(kind, K => {
            let obj: K = from_value(v, kind)?;
            to_value(&self.store.all::<K>().update(&obj).await?, kind)
        })
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        if kind == Kind::Node && self.kube() {
            return Err(StoreError::Backend {
                backend: "kubernetes",
                key: brindle_datastore::Key::new("nodes", None, Some(name)),
                message: "Kubernetes Nodes are deleted with kubectl (the controller then frees their blocks)".into(),
            });
        }
        with_kind!(kind, K => self.store.all::<K>().delete(name, None).await)
    }

    /// Writes a Node resource onto the Kubernetes Node: its labels, and its BGP facts as
    /// annotations (other annotations of the Node are kept).
    async fn update_kube_node(&self, want: &BrindleNode) -> Result<Value, StoreError> {
        let name = want.metadata.name.clone().unwrap_or_default();
        let api = self.store.all::<KubeNode>();
        let Some(mut n) = api.get(&name).await? else {
            return Err(StoreError::NotFound {
                backend: "kubernetes",
                key: brindle_datastore::Key::new("nodes", None, Some(&name)),
            });
        };
        if let Some(rv) = &want.metadata.resource_version {
            n.metadata.resource_version = Some(rv.clone());
        }
        n.metadata.labels = want.metadata.labels.clone();
        let ann = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for k in bgp_keys() {
            ann.remove(k);
        }
        if let Some(theirs) = &want.metadata.annotations {
            for (k, v) in theirs {
                ann.insert(k.clone(), v.clone());
            }
        }
        if let Some(b) = &want.spec.bgp {
            ann.extend(b.to_annotations());
        }
        to_value(&node_view(&api.update(&n).await?), Kind::Node)
    }
}

fn name_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/name").and_then(Value::as_str)
}

fn bgp_keys() -> [&'static str; 5] {
    [
        annotations::IPV4_ADDRESS,
        annotations::IPV6_ADDRESS,
        annotations::AS_NUMBER,
        annotations::RR_CLUSTER_ID,
        annotations::IPIP_TUNNEL_ADDR,
    ]
}

/// A Kubernetes Node as a Brindle `Node` resource: its name, labels, resourceVersion, its
/// annotations other than the BGP ones, and the BGP facts as `spec.bgp`.
pub fn node_view(n: &KubeNode) -> BrindleNode {
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    let bgp = NodeBgp::from_annotations(&ann).unwrap_or_default();
    let mut out = BrindleNode::new(
        n.metadata.name.as_deref().unwrap_or(""),
        NodeSpec {
            bgp: (bgp != NodeBgp::default()).then_some(bgp),
        },
    );
    out.metadata.labels = n.metadata.labels.clone();
    out.metadata.resource_version = n.metadata.resource_version.clone();
    out.metadata.creation_timestamp = n.metadata.creation_timestamp.clone();
    out.metadata.uid = n.metadata.uid.clone();
    let rest: BTreeMap<_, _> = ann
        .into_iter()
        .filter(|(k, _)| !bgp_keys().contains(&k.as_str()))
        .filter(|(k, _)| k.starts_with("brindle.dev/"))
        .collect();
    out.metadata.annotations = (!rest.is_empty()).then_some(rest);
    out
}
