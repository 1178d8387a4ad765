//! Follows pods and nodes: list, then watch from the list's revision, list again after an
//! expiry or a failure.
//! Kubernetes backend: core Node; etcd and memory: the BrindleNode record. Pods are the core
//! Pod in both.

use brindle_api::BrindleNode;
use brindle_datastore::{Api, Change as Followed, Store, StoreResource, WatchEvent};
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
    tokio::spawn(follow(store.all::<Pod>(), tx.clone(), pod_changes));
    if store.backend_name() == "kubernetes" {
        tokio::spawn(follow(store.all::<Node>(), tx, node_changes::<Node>));
    } else {
        tokio::spawn(follow(
            store.all::<BrindleNode>(),
            tx,
            node_changes::<BrindleNode>,
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

fn pod_changes(ev: Result<Vec<Pod>, WatchEvent<Pod>>) -> Change {
    match ev {
        Ok(list) => Change::PodsListed(list.iter().map(pod_key).collect()),
        Err(WatchEvent::Deleted(p)) => {
            let (k, n) = pod_key(&p);
            Change::PodGone(k, n)
        }
        Err(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
            let (k, n) = pod_key(&p);
            Change::PodUp(k, n)
        }
    }
}

fn node_changes<K: StoreResource>(ev: Result<Vec<K>, WatchEvent<K>>) -> Change {
    let name = |k: &K| k.meta().name.clone().unwrap_or_default();
    match ev {
        Ok(list) => Change::NodesListed(list.iter().map(name).collect()),
        Err(WatchEvent::Deleted(n)) => Change::NodeGone(name(&n)),
        Err(WatchEvent::Added(n) | WatchEvent::Modified(n)) => Change::NodeUp(name(&n)),
    }
}

/// `to_change` gets Ok(full list) after every (re)list, Err(event) for each watch event
/// ([`brindle_datastore::follow`]: the one list/watch/relist loop).
async fn follow<K, F>(api: Api<K>, tx: Sender<Change>, to_change: F)
where
    K: StoreResource,
    F: Fn(Result<Vec<K>, WatchEvent<K>>) -> Change + Send,
{
    let convert = move |c: Followed<K>| {
        Some(to_change(match c {
            Followed::Listed(l) => Ok(l),
            Followed::Upsert(o) => Err(WatchEvent::Modified(o)),
            Followed::Deleted(o) => Err(WatchEvent::Deleted(o)),
        }))
    };
    brindle_datastore::follow(api, tx, convert, || {}).await;
}
