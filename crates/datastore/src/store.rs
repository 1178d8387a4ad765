use std::marker::PhantomData;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::backend::{meta, Backend, RawEvent, TxnWrite};
use crate::{ResourceType, Result, StoreError, StoreResource};

/// A handle on one datastore; cheap to clone. Typed access is through [`Store::all`] and
/// [`Store::namespaced`], which mirror `kube::Api::all` / `kube::Api::namespaced`.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend.name())
    }
}

impl Store {
    pub fn new(backend: impl Backend) -> Self {
        Store {
            backend: Arc::new(backend),
        }
    }

    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    /// `etcd`, `kubernetes` or `memory`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Whether [`Store::txn`] can commit (etcd, memory); the Kubernetes API cannot.
    pub fn transactions(&self) -> bool {
        self.backend.transactions()
    }

    /// See [`Backend::repair_indexes`]: run once by the leading controller.
    pub async fn repair_indexes(&self) -> crate::Result<usize> {
        self.backend.repair_indexes().await
    }

    /// A transaction: writes to several objects, of any kinds, that land together or not at
    /// all, in one round trip. Check [`Store::transactions`] first.
    pub fn txn(&self) -> Txn {
        Txn {
            store: self.clone(),
            writes: vec![],
        }
    }

    /// Cluster-scoped kinds, or a namespaced kind across all namespaces.
    pub fn all<K: StoreResource>(&self) -> Api<K> {
        Api {
            store: self.clone(),
            ns: None,
            node: None,
            ty: ResourceType::of::<K>(),
            _k: PhantomData,
        }
    }

    /// A namespaced kind within one namespace.
    pub fn namespaced<K: StoreResource>(&self, ns: &str) -> Api<K> {
        Api {
            store: self.clone(),
            ns: Some(ns.to_owned()),
            node: None,
            ty: ResourceType::of::<K>(),
            _k: PhantomData,
        }
    }
}

/// Objects and the revision they were read at.
#[derive(Debug, Clone)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
}

impl<K> WatchEvent<K> {
    pub fn object(&self) -> &K {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
}

pub type WatchStream<K> = std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent<K>>> + Send>>;

/// Typed access to one kind (in one namespace, or all).
pub struct Api<K> {
    store: Store,
    ns: Option<String>,
    /// Lists and watches only the objects on this node (see [`Api::on_node`]).
    node: Option<String>,
    ty: ResourceType,
    _k: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            store: self.store.clone(),
            ns: self.ns.clone(),
            node: self.node.clone(),
            ty: self.ty.clone(),
            _k: PhantomData,
        }
    }
}

impl<K: StoreResource> Api<K> {
    fn backend(&self) -> &dyn Backend {
        self.store.backend.as_ref()
    }

    /// Lists and watches only the objects scheduled to `node` (`spec.nodeName`), for kinds
    /// that have one ([`ResourceType::node_field`]: Pods). The datastore does the selecting,
    /// so nothing about other nodes' objects reaches the caller: on Kubernetes a field
    /// selector, in etcd an index kept in the same transactions as the objects. An object
    /// moved onto the node arrives as added, one moved off it as deleted.
    ///
    /// Panics for a kind without a node field (a programming error, not input).
    pub fn on_node(mut self, node: &str) -> Self {
        assert!(
            self.ty.node_field().is_some(),
            "{} has no node field to select on",
            self.ty.kind
        );
        self.node = Some(node.to_owned());
        self
    }

    /// For logs: the kind, and the namespace and node it is limited to.
    pub fn describe(&self) -> String {
        let mut s = self.ty.kind.clone();
        if let Some(ns) = &self.ns {
            s += &format!(" in {ns}");
        }
        if let Some(n) = &self.node {
            s += &format!(" on {n}");
        }
        s
    }

    fn decode(&self, value: Value) -> Result<K> {
        let key = self.ty.key(
            meta::namespace(&value).or(self.ns.as_deref()),
            meta::name(&value),
        );
        serde_json::from_value(value).map_err(|source| StoreError::Decode {
            backend: self.backend().name(),
            key,
            source,
        })
    }

    fn decode_ref(&self, value: &Value) -> Result<K> {
        K::deserialize(value).map_err(|source| StoreError::Decode {
            backend: self.backend().name(),
            key: self.ty.key(
                meta::namespace(value).or(self.ns.as_deref()),
                meta::name(value),
            ),
            source,
        })
    }

    /// Serializes with apiVersion and kind set, and the Api's namespace filled in.
    fn encode(&self, obj: &K) -> Result<Value> {
        let mut v = serde_json::to_value(obj).map_err(|source| StoreError::Decode {
            backend: self.backend().name(),
            key: self.ty.key(self.ns.as_deref(), obj.meta().name.as_deref()),
            source,
        })?;
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), self.ty.api_version().into());
            map.insert("kind".into(), self.ty.kind.clone().into());
        }
        match (&self.ns, meta::namespace(&v)) {
            (Some(ns), None) => meta::set(&mut v, "namespace", ns.clone()),
            (Some(ns), Some(theirs)) if theirs != ns => {
                return Err(StoreError::Backend {
                    backend: self.backend().name(),
                    key: self.ty.key(Some(ns), obj.meta().name.as_deref()),
                    message: format!("object names namespace {theirs:?}, this Api is for {ns:?}"),
                })
            }
            (None, None) if self.ty.namespaced => {
                return Err(StoreError::Backend {
                    backend: self.backend().name(),
                    key: self.ty.key(None, obj.meta().name.as_deref()),
                    message: format!("{} is namespaced: set metadata.namespace", self.ty.kind),
                })
            }
            _ => {}
        }
        Ok(v)
    }

    async fn check(&self, obj: &K, replacing: bool) -> Result<()> {
        obj.validate_object()?;
        if K::CHECKED_AGAINST_OTHERS {
            let others = self.list().await?.items;
            obj.check_against(&others, replacing)?;
        }
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<Option<K>> {
        match self
            .backend()
            .get(&self.ty, self.ns.as_deref(), name)
            .await?
        {
            Some(v) => self.decode(v).map(Some),
            None => Ok(None),
        }
    }

    pub async fn list(&self) -> Result<ObjectList<K>> {
        let (items, revision) = self.list_map(|o| o).await?;
        Ok(ObjectList { items, revision })
    }

    /// [`Api::list`], each object made into what the caller keeps as soon as it is decoded,
    /// a page at a time: the list is never held whole as objects (150,000 typed Pods are
    /// hundreds of MiB; a projection of them a fraction). Returns the list's revision too.
    pub async fn list_map<T: Send>(
        &self,
        mut f: impl FnMut(K) -> T + Send,
    ) -> Result<(Vec<T>, String)> {
        let mut items = vec![];
        let revision = self
            .backend()
            .list_pages(
                &self.ty,
                self.ns.as_deref(),
                self.node.as_deref(),
                &mut |page| {
                    items.reserve(page.len());
                    for v in page {
                        items.push(f(self.decode(v)?));
                    }
                    Ok(())
                },
            )
            .await?;
        Ok((items, revision))
    }

    /// Validates, then stores a new object. Fails with `AlreadyExists` if the name is taken.
    pub async fn create(&self, obj: &K) -> Result<K> {
        self.check(obj, false).await?;
        let mut v = self.encode(obj)?;
        meta::remove(&mut v, "resourceVersion");
        let stored = self.backend().create(&self.ty, v).await?;
        self.decode(stored)
    }

    /// Validates, then replaces the stored object: a compare-and-swap on
    /// `metadata.resourceVersion` when it is set (`Conflict` when stale), unconditional when not.
    pub async fn update(&self, obj: &K) -> Result<K> {
        self.check(obj, true).await?;
        let v = self.encode(obj)?;
        let stored = self.backend().update(&self.ty, v).await?;
        self.decode(stored)
    }

    /// An RFC 7386 merge patch (see [`crate::Backend::merge_patch`]): sets what `patch`
    /// names, removes what it sets to `null`, leaves the rest. Not validated: for fields a
    /// writer owns alone (a node's annotations), where sending back a whole object read a
    /// moment ago would need more rights and could undo another writer's change.
    pub async fn merge_patch(&self, name: &str, patch: serde_json::Value) -> Result<K> {
        let stored = self
            .backend()
            .merge_patch(&self.ty, self.ns.as_deref(), name, patch)
            .await?;
        self.decode(stored)
    }

    /// Deletes; with `precondition`, only if it is still the current resourceVersion.
    pub async fn delete(&self, name: &str, precondition: Option<&str>) -> Result<()> {
        self.backend()
            .delete(&self.ty, self.ns.as_deref(), name, precondition)
            .await
    }

    /// Changes after `revision` (from a list, or the last event seen).
    pub async fn watch(&self, revision: &str) -> Result<WatchStream<K>> {
        let raw = self
            .backend()
            .watch(&self.ty, self.ns.as_deref(), self.node.as_deref(), revision)
            .await?;
        let api = self.clone();
        Ok(Box::pin(raw.map(move |ev| {
            Ok(match ev? {
                RawEvent::Added(v) => WatchEvent::Added(api.decode(v)?),
                RawEvent::Modified(v) => WatchEvent::Modified(api.decode(v)?),
                RawEvent::Deleted(v) => WatchEvent::Deleted(api.decode(v)?),
            })
        })))
    }
}

/// Writes gathered for one [`Backend::txn`]; each is validated as the single-object call
/// would validate it. The index a method returns finds the stored object in [`Committed`].
pub struct Txn {
    store: Store,
    writes: Vec<TxnWrite>,
}

impl Txn {
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// As [`Api::create`]: fails at commit with `AlreadyExists` if the name is taken.
    pub fn create<K: StoreResource>(&mut self, api: &Api<K>, obj: &K) -> Result<usize> {
        Self::checked(api, obj)?;
        let mut v = api.encode(obj)?;
        meta::remove(&mut v, "resourceVersion");
        self.writes.push(TxnWrite::Create {
            ty: api.ty.clone(),
            obj: v,
        });
        Ok(self.writes.len() - 1)
    }

    /// As [`Api::update`]: a compare-and-swap when the object carries a resourceVersion.
    pub fn update<K: StoreResource>(&mut self, api: &Api<K>, obj: &K) -> Result<usize> {
        Self::checked(api, obj)?;
        let v = api.encode(obj)?;
        self.writes.push(TxnWrite::Update {
            ty: api.ty.clone(),
            obj: v,
        });
        Ok(self.writes.len() - 1)
    }

    /// The object's own validation. A kind validated against the other objects of its kind
    /// (IPPool: no overlaps) is refused: a transaction cannot hold that check.
    fn checked<K: StoreResource>(api: &Api<K>, obj: &K) -> Result<()> {
        if K::CHECKED_AGAINST_OTHERS {
            return Err(StoreError::Backend {
                backend: api.backend().name(),
                key: api.ty.key(api.ns.as_deref(), obj.meta().name.as_deref()),
                message: format!(
                    "{} is validated against the other objects of its kind: write it alone",
                    api.ty.kind
                ),
            });
        }
        Ok(obj.validate_object()?)
    }

    /// The object the write at index `i` is about.
    pub fn key(&self, i: usize) -> Option<crate::Key> {
        self.writes.get(i).map(TxnWrite::key)
    }

    /// As [`Api::delete`].
    pub fn delete<K: StoreResource>(
        &mut self,
        api: &Api<K>,
        name: &str,
        precondition: Option<&str>,
    ) -> usize {
        self.writes.push(TxnWrite::Delete {
            ty: api.ty.clone(),
            ns: api.ns.clone(),
            name: name.to_owned(),
            precondition: precondition.map(str::to_owned),
        });
        self.writes.len() - 1
    }

    /// Everything or nothing; see [`Backend::txn`] for the errors.
    pub async fn commit(self) -> Result<Committed> {
        Ok(Committed(self.store.backend.txn(self.writes).await?))
    }
}

/// What a committed [`Txn`] stored.
#[derive(Debug)]
pub struct Committed(Vec<Option<Value>>);

impl Committed {
    /// The object written at index `i` (None for a delete or an index out of range).
    pub fn get<K: StoreResource>(&self, api: &Api<K>, i: usize) -> Result<Option<K>> {
        match self.0.get(i).and_then(Option::as_ref) {
            // Decoded from the reference: a block's value is a tree of maps, and cloning it
            // first cost more than the decoding.
            Some(v) => api.decode_ref(v).map(Some),
            None => Ok(None),
        }
    }
}
