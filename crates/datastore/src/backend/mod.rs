//! The backend interface: JSON objects in, JSON objects out, with the Store's semantics
//! (see the crate docs). Typing, validation and defaults are the [`crate::Store`]'s job.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::{ResourceType, Result};

pub mod etcd;
pub mod instrumented;
pub mod kubernetes;
pub mod memory;

/// A list and the revision it was read at; watch from that revision to follow on.
#[derive(Debug, Clone)]
pub struct RawList {
    pub items: Vec<Value>,
    pub revision: String,
}

/// One change. A deleted object is its last state, with the deletion's resourceVersion.
#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
}

impl RawEvent {
    pub fn object(&self) -> &Value {
        match self {
            RawEvent::Added(v) | RawEvent::Modified(v) | RawEvent::Deleted(v) => v,
        }
    }
}

pub type RawWatch = BoxStream<'static, Result<RawEvent>>;

/// One write of a multi-object transaction ([`Backend::txn`]); each has the meaning of the
/// single-object call of the same name.
#[derive(Debug, Clone)]
pub enum TxnWrite {
    Create {
        ty: ResourceType,
        obj: Value,
    },
    /// A compare-and-swap when `metadata.resourceVersion` is set; the object must exist.
    Update {
        ty: ResourceType,
        obj: Value,
    },
    Delete {
        ty: ResourceType,
        ns: Option<String>,
        name: String,
        precondition: Option<String>,
    },
}

impl TxnWrite {
    /// The object this write is about, for errors.
    pub fn key(&self) -> crate::Key {
        match self {
            TxnWrite::Create { ty, obj } | TxnWrite::Update { ty, obj } => {
                ty.key(meta::namespace(obj), meta::name(obj))
            }
            TxnWrite::Delete { ty, ns, name, .. } => ty.key(ns.as_deref(), Some(name)),
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `etcd`, `kubernetes` or `memory`, for errors and logs.
    fn name(&self) -> &'static str;

    async fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Option<Value>>;

    /// Every object of the kind, in one namespace or (`None`) all of them; with `node`, only
    /// those whose [`ResourceType::node_field`] names that node (see [`crate::Api::on_node`]).
    async fn list(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
    ) -> Result<RawList> {
        let mut items = vec![];
        let revision = self
            .list_pages(ty, ns, node, &mut |page| {
                items.extend(page);
                Ok(())
            })
            .await?;
        Ok(RawList { items, revision })
    }

    /// [`Backend::list`] a page at a time: `page` gets each page's objects as they arrive,
    /// so a caller that keeps only what it makes of them never holds the whole list. Returns
    /// the list's revision; an error from `page` ends the list with that error.
    async fn list_pages(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        page: &mut (dyn FnMut(Vec<Value>) -> Result<()> + Send),
    ) -> Result<String>;

    /// Stores a new object; returns it as stored (resourceVersion, uid, creationTimestamp).
    async fn create(&self, ty: &ResourceType, obj: Value) -> Result<Value>;

    /// Replaces an existing object: compare-and-swap when `metadata.resourceVersion` is set.
    async fn update(&self, ty: &ResourceType, obj: Value) -> Result<Value>;

    /// Deletes, if `precondition` is given only when it is the current resourceVersion.
    async fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()>;

    /// An RFC 7386 JSON merge patch of one object: what `patch` names is set (`null`
    /// removes), the rest is untouched. On Kubernetes a `merge-patch+json` PATCH, so the
    /// writer needs the `patch` verb, not `update`, and never sends back fields it read;
    /// elsewhere a read and a compare-and-swap, retried on conflict.
    async fn merge_patch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        for _ in 0..16 {
            let Some(mut obj) = self.get(ty, ns, name).await? else {
                return Err(crate::StoreError::NotFound {
                    backend: self.name(),
                    key: ty.key(ns, Some(name)),
                });
            };
            merge(&mut obj, &patch);
            match self.update(ty, obj).await {
                Err(crate::StoreError::Conflict { .. }) => continue,
                r => return r,
            }
        }
        Err(crate::StoreError::Backend {
            backend: self.name(),
            key: ty.key(ns, Some(name)),
            message: "a merge patch kept conflicting with other writers".into(),
        })
    }

    /// Changes after `revision`, in order; see the crate docs for reconnects and expiry. With
    /// `node`, only changes to objects on that node: one that moves onto it is added, one that
    /// moves off it is deleted.
    async fn watch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        revision: &str,
    ) -> Result<RawWatch>;

    /// Brings the datastore's own indexes in line with its objects (etcd's node index, for
    /// records written before it existed); returns how many entries it fixed. Nothing to do
    /// where the datastore selects by itself (Kubernetes, memory).
    async fn repair_indexes(&self) -> Result<usize> {
        Ok(0)
    }

    /// Whether [`Backend::txn`] is supported (etcd and memory; the Kubernetes API has no
    /// multi-object transactions).
    fn transactions(&self) -> bool {
        false
    }

    /// All of `writes` or none of them, in one round trip. Returns what each stored (None for
    /// a delete). When one write's condition does not hold, nothing is written and the error
    /// is the one that write alone would have given (`AlreadyExists`, `Conflict`,
    /// `NotFound`), for the first such write. Two writes to one object are refused.
    async fn txn(&self, writes: Vec<TxnWrite>) -> Result<Vec<Option<Value>>> {
        let key = writes
            .first()
            .map(TxnWrite::key)
            .unwrap_or_else(|| crate::Key::new("(transaction)", None, None));
        Err(crate::StoreError::Backend {
            backend: self.name(),
            key,
            message: "multi-object transactions are not supported by this datastore".into(),
        })
    }
}

/// RFC 7386: applies `patch` to `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Refuses a transaction that writes one object twice (etcd refuses it too).
pub(crate) fn check_distinct(backend: &'static str, writes: &[TxnWrite]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for w in writes {
        let k = w.key();
        if !seen.insert(k.as_str().to_owned()) {
            return Err(crate::StoreError::Backend {
                backend,
                key: k,
                message: "one transaction writes this object twice".into(),
            });
        }
    }
    Ok(())
}

/// Why a transaction's conditions failed: the first write whose condition does not hold,
/// given each object's current resourceVersion (None: absent). None when all hold.
pub(crate) fn txn_failure(
    backend: &'static str,
    writes: &[TxnWrite],
    current: &[Option<String>],
) -> Option<crate::StoreError> {
    use crate::StoreError;
    for (w, cur) in writes.iter().zip(current) {
        let key = w.key();
        let expected = match w {
            TxnWrite::Create { .. } => {
                if cur.is_some() {
                    return Some(StoreError::AlreadyExists { backend, key });
                }
                continue;
            }
            TxnWrite::Update { obj, .. } => meta::resource_version(obj).map(str::to_owned),
            TxnWrite::Delete { precondition, .. } => precondition.clone(),
        };
        match (cur, expected) {
            (None, _) => return Some(StoreError::NotFound { backend, key }),
            (Some(cur), Some(expected)) if *cur != expected => {
                return Some(StoreError::Conflict {
                    backend,
                    key,
                    expected,
                })
            }
            _ => {}
        }
    }
    None
}

/// How one attempt at following a watch ended.
pub(crate) enum Ended {
    /// The receiver is gone or the watch expired: stop.
    Stop,
    /// Watch again from the last revision delivered; None when the server simply closed
    /// the call (its timeout), Some(reason) when something broke.
    Reconnect(Option<String>),
}

/// A watch that can be restarted from where it left off (the backends' watch tasks).
pub(crate) trait Follow: Send + 'static {
    fn follow(&mut self) -> impl std::future::Future<Output = Ended> + Send;
    /// For logs: the backend, the key and the revision reached.
    fn describe(&self) -> String;
    fn sender(&self) -> &tokio::sync::mpsc::Sender<Result<RawEvent>>;
}

/// Runs a watch task: follows, and after a dropped connection follows again with a capped
/// exponential backoff, until the receiver goes away or the watch expires. Returns the
/// receiving end as the stream callers see.
pub(crate) fn spawn_watch<F: Follow>(
    make: impl FnOnce(tokio::sync::mpsc::Sender<Result<RawEvent>>) -> F,
) -> RawWatch {
    use futures::StreamExt;
    use std::time::Duration;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut f = make(tx);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match f.follow().await {
                Ended::Stop => return,
                Ended::Reconnect(None) => backoff = Duration::from_millis(100),
                Ended::Reconnect(Some(why)) => {
                    tracing::warn!(watch = %f.describe(), error = %why, "watch interrupted; re-watching");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = f.sender().closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Small accessors on an object's JSON metadata, shared by the backends.
pub(crate) mod meta {
    use serde_json::{Map, Value};

    fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a str> {
        obj.get("metadata")?.get(name)?.as_str()
    }

    pub fn name(obj: &Value) -> Option<&str> {
        field(obj, "name")
    }

    pub fn namespace(obj: &Value) -> Option<&str> {
        field(obj, "namespace")
    }

    /// The node an object is on, for kinds that have a node field (`spec.nodeName`).
    pub fn node<'a>(ty: &crate::ResourceType, obj: &'a Value) -> Option<&'a str> {
        ty.node_field()?;
        obj.get("spec")?
            .get("nodeName")?
            .as_str()
            .filter(|n| !n.is_empty())
    }

    pub fn resource_version(obj: &Value) -> Option<&str> {
        field(obj, "resourceVersion").filter(|v| !v.is_empty())
    }

    fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
        if !obj.is_object() {
            *obj = Value::Object(Map::new());
        }
        let map = obj.as_object_mut().expect("made an object above");
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut().expect("made an object above")
    }

    pub fn set(obj: &mut Value, name: &str, value: impl Into<Value>) {
        metadata_mut(obj).insert(name.to_owned(), value.into());
    }

    pub fn remove(obj: &mut Value, name: &str) -> Option<Value> {
        metadata_mut(obj).remove(name)
    }

    pub fn get(obj: &Value, name: &str) -> Option<Value> {
        obj.get("metadata")?.get(name).cloned()
    }

    /// The fields a server sets on create: uid and creationTimestamp.
    pub fn stamp_created(obj: &mut Value, uid: String) {
        set(obj, "uid", uid);
        let now = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
        set(obj, "creationTimestamp", now.to_string());
    }

    /// Keeps uid and creationTimestamp across an update (callers may omit them).
    pub fn carry_server_fields(from: &Value, to: &mut Value) {
        for f in ["uid", "creationTimestamp"] {
            if let Some(v) = get(from, f) {
                set(to, f, v);
            }
        }
    }
}
