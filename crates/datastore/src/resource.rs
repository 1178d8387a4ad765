use std::fmt::Debug;

use brindle_api::{
    BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, BrindleNode, IPAMBlock, IPAMConfig,
    IPAMHandle, IPPool, Invalid, Validate,
};
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Key;

/// What a backend needs to know about a kind: where it lives in the API and in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn of<K: StoreResource>() -> Self {
        ResourceType {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            namespaced: K::NAMESPACED,
        }
    }

    /// The field that names the node an object is on, for kinds that have one (core Pods:
    /// `spec.nodeName`); what [`crate::Api::on_node`] selects on.
    pub fn node_field(&self) -> Option<&'static str> {
        (self.group.is_empty() && self.kind == "Pod").then_some("spec.nodeName")
    }

    /// `plural.group`, or `plural` for the core group: Kubernetes' own resource name.
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: Option<&str>) -> Key {
        Key::new(&self.resource_name(), namespace, name)
    }
}

/// A kind the Store can hold.
pub trait StoreResource:
    kube::Resource<DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const NAMESPACED: bool;

    /// Rules on the object alone; the Store refuses to write an object that breaks one.
    fn validate_object(&self) -> Result<(), Invalid> {
        Ok(())
    }

    /// Set for kinds with rules across objects of the kind; the Store then lists them
    /// before a write and calls [`StoreResource::check_against`] (`replacing` on update).
    const CHECKED_AGAINST_OTHERS: bool = false;

    fn check_against(&self, _others: &[Self], _replacing: bool) -> Result<(), Invalid> {
        Ok(())
    }
}

macro_rules! validated_cluster_kind {
    ($($t:ty),*) => {$(
        impl StoreResource for $t {
            const NAMESPACED: bool = false;
            fn validate_object(&self) -> Result<(), Invalid> {
                self.validate()
            }
        }
    )*};
}

validated_cluster_kind!(
    IPAMBlock,
    BlockAffinity,
    IPAMHandle,
    IPAMConfig,
    BGPConfiguration,
    BGPPeer,
    BGPFilter,
    BrindleNode
);

impl StoreResource for IPPool {
    const NAMESPACED: bool = false;
    const CHECKED_AGAINST_OTHERS: bool = true;
    fn validate_object(&self) -> Result<(), Invalid> {
        self.validate()
    }
    fn check_against(&self, others: &[Self], replacing: bool) -> Result<(), Invalid> {
        IPPool::check_against(self, others, replacing)
    }
}

// Kubernetes' own kinds: validated by the API server in a cluster, stored as-is in etcd.
impl StoreResource for Node {
    const NAMESPACED: bool = false;
}
impl StoreResource for Pod {
    const NAMESPACED: bool = true;
}
/// BGP passwords (BGPPeer `password.secretKeyRef`).
impl StoreResource for Secret {
    const NAMESPACED: bool = true;
}
impl StoreResource for Service {
    const NAMESPACED: bool = true;
}
impl StoreResource for EndpointSlice {
    const NAMESPACED: bool = true;
}
/// Namespaces' labels (NetworkPolicy namespaceSelectors).
impl StoreResource for k8s_openapi::api::core::v1::Namespace {
    const NAMESPACED: bool = false;
}
impl StoreResource for k8s_openapi::api::networking::v1::NetworkPolicy {
    const NAMESPACED: bool = true;
}
/// The controller's leader election (coordination.k8s.io Lease, as client-go's).
impl StoreResource for k8s_openapi::api::coordination::v1::Lease {
    const NAMESPACED: bool = true;
}
