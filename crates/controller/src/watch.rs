//! Follows pods and nodes: list, then watch from the list's revision, list again after an
//! expiry or a failure.
//! Kubernetes backend: core Node; etcd and memory: the BrindleNode record. Pods are the core
//! Pod in both.

use brindle_api::BrindleNode;
use brindle_datastore::{Api, Change as Followed, Store, StoreResource};
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::mpsc::Sender;

type PodKey = (String, String);

#[derive(Debug)]
pub enum Change {
    PodsListed(Vec<(PodKey, Option<String>)>),
    PodUp(PodKey, Option<String>),
    PodGone(PodKey, Option<String>),
    NodesListed(Vec<String>),
    NodeUp(String),
    NodeGone(String),
}

pub fn spawn(store: Store, tx: Sender<Change>) {
    tokio::spawn(follow(
        store.all::<Pod>(),
        tx.clone(),
        pod_key,
        |c| match c {
            Followed::Listed(l) => Change::PodsListed(l),
            Followed::Upsert((k, n)) => Change::PodUp(k, n),
            Followed::Deleted((k, n)) => Change::PodGone(k, n),
        },
    ));
    if store.backend_name() == "kubernetes" {
        tokio::spawn(follow(store.all::<Node>(), tx, name::<Node>, node_change));
    } else {
        tokio::spawn(follow(
            store.all::<BrindleNode>(),
            tx,
            name::<BrindleNode>,
            node_change,
        ));
    }
}

fn pod_key(p: &Pod) -> (PodKey, Option<String>) {
    let key = (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    );
    (key, p.spec.as_ref().and_then(|s| s.node_name.clone()))
}

fn name<K: StoreResource>(k: &K) -> String {
    k.meta().name.clone().unwrap_or_default()
}

fn node_change(c: Followed<String>) -> Change {
    match c {
        Followed::Listed(l) => Change::NodesListed(l),
        Followed::Upsert(n) => Change::NodeUp(n),
        Followed::Deleted(n) => Change::NodeGone(n),
    }
}

/// Follows `api` keeping of each object only what `project` takes from it (a list is never
/// held whole as objects), sending `to_change` of each change
/// ([`brindle_datastore::follow`]: the one list/watch/relist loop).
async fn follow<K: StoreResource, P: Send>(
    api: Api<K>,
    tx: Sender<Change>,
    project: fn(&K) -> P,
    to_change: fn(Followed<P>) -> Change,
) {
    brindle_datastore::follow(
        api,
        tx,
        move |o| project(&o),
        move |c| Some(to_change(c)),
        || {},
    )
    .await;
}
