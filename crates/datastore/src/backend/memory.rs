//! An in-process backend for unit tests of other crates, with the same semantics as etcd:
//! a global revision, resourceVersion = the revision of the last write, watch history that
//! can be compacted, and an outage switch to test how callers behave when the store is down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{check_distinct, meta, txn_failure, Backend, RawEvent, RawWatch, TxnWrite};
use crate::{Key, ResourceType, Result, StoreError};

const NAME: &str = "memory";

#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    compacted: u64,
    objects: BTreeMap<String, Value>,
    /// (revision, path, the event, the node the object was on before it).
    history: Vec<(u64, String, RawEvent, Option<String>)>,
    watchers: Vec<Watcher>,
    unavailable: bool,
}

struct Watcher {
    prefix: String,
    /// A watch limited to one node: (the kind, the node).
    node: Option<(ResourceType, String)>,
    tx: mpsc::UnboundedSender<Result<RawEvent>>,
}

/// `ev` as a watch limited to `node` sees it: moving onto the node is an addition, moving
/// off it a deletion, and changes elsewhere are not seen.
fn on_node(
    ev: &RawEvent,
    before: Option<&str>,
    scope: &Option<(ResourceType, String)>,
) -> Option<RawEvent> {
    let Some((ty, node)) = scope else {
        return Some(ev.clone());
    };
    let was = before == Some(node.as_str());
    let is = match ev {
        RawEvent::Deleted(_) => false,
        RawEvent::Added(o) | RawEvent::Modified(o) => meta::node(ty, o) == Some(node.as_str()),
    };
    match (was, is) {
        (false, false) => None,
        (true, true) => Some(ev.clone()),
        (false, true) => Some(RawEvent::Added(ev.object().clone())),
        (true, false) => Some(RawEvent::Deleted(ev.object().clone())),
    }
}

fn path(ty: &ResourceType, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{}/{ns}/{name}", ty.resource_name()),
        None => format!("{}/{name}", ty.resource_name()),
    }
}

fn prefix(ty: &ResourceType, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{}/{ns}/", ty.resource_name()),
        None => format!("{}/", ty.resource_name()),
    }
}

/// The kind stored at `path`, when it is one with a node field (paths start with the
/// resource name, and only core Pods have one).
fn kind_of_path(path: &str) -> Option<ResourceType> {
    let ty = ResourceType::of::<k8s_openapi::api::core::v1::Pod>();
    path.starts_with(&prefix(&ty, None)).then_some(ty)
}

fn parse_revision(ty: &ResourceType, ns: Option<&str>, rev: &str) -> Result<u64> {
    rev.parse().map_err(|_| StoreError::Backend {
        backend: NAME,
        key: ty.key(ns, None),
        message: format!("{rev:?} is not a revision of this store"),
    })
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_available(&self, key: impl FnOnce() -> Key) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock();
        if inner.unavailable {
            return Err(StoreError::Unavailable {
                backend: NAME,
                endpoint: "memory".into(),
                key: key(),
                source: "the memory store is switched off (set_unavailable)".into(),
            });
        }
        Ok(inner)
    }

    /// Forgets watch history up to now; watches from older revisions then expire.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.revision;
        inner.history.clear();
    }

    /// While set, every operation fails with `Unavailable` (open watches stay open).
    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }
}

impl Inner {
    fn commit(&mut self, path: String, event: RawEvent, before: Option<String>) {
        let rev = self.revision;
        self.watchers.retain(|w| {
            if !path.starts_with(&w.prefix) {
                return true;
            }
            match on_node(&event, before.as_deref(), &w.node) {
                Some(ev) => w.tx.send(Ok(ev)).is_ok(),
                None => !w.tx.is_closed(),
            }
        });
        self.history.push((rev, path, event, before));
    }

    /// The node the object at `path` is on now (for kinds with a node field).
    fn node_at(&self, path: &str) -> Option<String> {
        let ty = kind_of_path(path)?;
        meta::node(&ty, self.objects.get(path)?).map(str::to_owned)
    }

    /// A write at a new revision of its own.
    fn write(&mut self, path: String, obj: Value, created: bool) -> Value {
        self.revision += 1;
        self.put(path, obj, created)
    }

    /// Stores `obj` at the current revision and tells the watchers.
    fn put(&mut self, path: String, mut obj: Value, created: bool) -> Value {
        meta::set(&mut obj, "resourceVersion", self.revision.to_string());
        let before = self.node_at(&path);
        self.objects.insert(path.clone(), obj.clone());
        let ev = if created {
            RawEvent::Added(obj.clone())
        } else {
            RawEvent::Modified(obj.clone())
        };
        self.commit(path, ev, before);
        obj
    }

    /// Removes the object at the current revision and tells the watchers.
    fn erase(&mut self, path: String) {
        let before = self.node_at(&path);
        let mut last = self.objects.remove(&path).unwrap_or_default();
        meta::set(&mut last, "resourceVersion", self.revision.to_string());
        self.commit(path, RawEvent::Deleted(last), before);
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
        let inner = self.lock_available(|| ty.key(ns, Some(name)))?;
        Ok(inner.objects.get(&path(ty, ns, name)).cloned())
    }

    /// One page: the whole list (held in memory anyway).
    async fn list_pages(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        page: &mut (dyn FnMut(Vec<Value>) -> Result<()> + Send),
    ) -> Result<String> {
        let (items, revision) = {
            let inner = self.lock_available(|| ty.key(ns, None))?;
            let p = prefix(ty, ns);
            let items = inner
                .objects
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .filter(|(_, v)| node.is_none() || meta::node(ty, v) == node)
                .map(|(_, v)| v.clone())
                .collect();
            (items, inner.revision.to_string())
        };
        page(items)?;
        Ok(revision)
    }

    async fn create(&self, ty: &ResourceType, mut obj: Value) -> Result<Value> {
        let ns = meta::namespace(&obj).map(str::to_owned);
        let name = meta::name(&obj).unwrap_or_default().to_owned();
        let key = || ty.key(ns.as_deref(), Some(&name));
        let mut inner = self.lock_available(key)?;
        let p = path(ty, ns.as_deref(), &name);
        if inner.objects.contains_key(&p) {
            return Err(StoreError::AlreadyExists {
                backend: NAME,
                key: key(),
            });
        }
        meta::stamp_created(&mut obj, uuid::Uuid::new_v4().to_string());
        Ok(inner.write(p, obj, true))
    }

    async fn update(&self, ty: &ResourceType, mut obj: Value) -> Result<Value> {
        let ns = meta::namespace(&obj).map(str::to_owned);
        let name = meta::name(&obj).unwrap_or_default().to_owned();
        let key = || ty.key(ns.as_deref(), Some(&name));
        let mut inner = self.lock_available(key)?;
        let p = path(ty, ns.as_deref(), &name);
        let Some(current) = inner.objects.get(&p) else {
            return Err(StoreError::NotFound {
                backend: NAME,
                key: key(),
            });
        };
        if let Some(expected) = meta::resource_version(&obj) {
            if meta::resource_version(current) != Some(expected) {
                return Err(StoreError::Conflict {
                    backend: NAME,
                    key: key(),
                    expected: expected.to_owned(),
                });
            }
        }
        meta::carry_server_fields(current, &mut obj);
        Ok(inner.write(p, obj, false))
    }

    async fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()> {
        let key = || ty.key(ns, Some(name));
        let mut inner = self.lock_available(key)?;
        let p = path(ty, ns, name);
        let Some(current) = inner.objects.get(&p) else {
            return Err(StoreError::NotFound {
                backend: NAME,
                key: key(),
            });
        };
        if let Some(expected) = precondition {
            if meta::resource_version(current) != Some(expected) {
                return Err(StoreError::Conflict {
                    backend: NAME,
                    key: key(),
                    expected: expected.to_owned(),
                });
            }
        }
        inner.revision += 1;
        inner.erase(p);
        Ok(())
    }

    fn transactions(&self) -> bool {
        true
    }

    async fn txn(&self, writes: Vec<TxnWrite>) -> Result<Vec<Option<Value>>> {
        check_distinct(NAME, &writes)?;
        let first = writes.first().map(TxnWrite::key);
        let mut inner =
            self.lock_available(|| first.unwrap_or_else(|| Key::new("(transaction)", None, None)))?;
        let paths: Vec<String> = writes
            .iter()
            .map(|w| match w {
                TxnWrite::Create { ty, obj } | TxnWrite::Update { ty, obj } => path(
                    ty,
                    meta::namespace(obj),
                    meta::name(obj).unwrap_or_default(),
                ),
                TxnWrite::Delete { ty, ns, name, .. } => path(ty, ns.as_deref(), name),
            })
            .collect();
        let current: Vec<Option<String>> = paths
            .iter()
            .map(|p| {
                inner
                    .objects
                    .get(p)
                    .map(|o| meta::resource_version(o).unwrap_or_default().to_owned())
            })
            .collect();
        if let Some(e) = txn_failure(NAME, &writes, &current) {
            return Err(e);
        }
        // Like etcd: every write of one transaction gets the same revision.
        inner.revision += 1;
        let mut out = vec![];
        for (w, p) in writes.into_iter().zip(paths) {
            match w {
                TxnWrite::Create { mut obj, .. } | TxnWrite::Update { mut obj, .. } => {
                    let created = match inner.objects.get(&p) {
                        Some(cur) => {
                            meta::carry_server_fields(cur, &mut obj);
                            false
                        }
                        None => {
                            meta::stamp_created(&mut obj, uuid::Uuid::new_v4().to_string());
                            true
                        }
                    };
                    out.push(Some(inner.put(p, obj, created)));
                }
                TxnWrite::Delete { .. } => {
                    inner.erase(p);
                    out.push(None);
                }
            }
        }
        Ok(out)
    }

    async fn watch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        revision: &str,
    ) -> Result<RawWatch> {
        let from = parse_revision(ty, ns, revision)?;
        let mut inner = self.lock_available(|| ty.key(ns, None))?;
        let (tx, rx) = mpsc::unbounded_channel();
        if from < inner.compacted {
            let _ = tx.send(Err(StoreError::Expired {
                backend: NAME,
                key: ty.key(ns, None),
                revision: revision.to_owned(),
            }));
        } else {
            let p = prefix(ty, ns);
            let scope = node.map(|n| (ty.clone(), n.to_owned()));
            // Replay and subscribe under one lock: nothing can slip between the two.
            for (rev, path, ev, before) in &inner.history {
                if *rev > from && path.starts_with(&p) {
                    if let Some(ev) = on_node(ev, before.as_deref(), &scope) {
                        let _ = tx.send(Ok(ev));
                    }
                }
            }
            inner.watchers.push(Watcher {
                prefix: p,
                node: scope,
                tx,
            });
        }
        Ok(tokio_stream_from(rx))
    }
}

fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Result<RawEvent>>) -> RawWatch {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
