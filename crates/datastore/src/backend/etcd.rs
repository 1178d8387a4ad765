//! etcd v3 backend.
//!
//! Keys are `/brindle/<plural.group>/<namespace>/<name>` (no namespace segment for
//! cluster-scoped kinds), values are the object's JSON without `resourceVersion`, and
//! resourceVersion is the key's `mod_revision`. Writes are transactions that compare the
//! key's revision, so an update with a resourceVersion is a compare-and-swap in one round trip.
//! On update the object's metadata is stored as given (uid and creationTimestamp are kept
//! when the caller sends back what it read, as every read-modify-write does).
//!
//! Pods are also indexed by node (`/brindle/by-node/pods/<node>/<namespace>/<name>`, in the
//! same transactions; see [`node_index`]), so an agent watches its own node's pods only.
//!
//! Watches run in a task of their own: when the connection drops they re-watch from the last
//! revision delivered, and when etcd has compacted that revision they end with `Expired`.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    check_distinct, meta, spawn_watch, txn_failure, Backend, Ended, Follow, RawEvent, RawWatch,
    TxnWrite,
};
use crate::{Key, ResourceType, Result, StoreError};

mod node_index;

const NAME: &str = "etcd";
/// Objects per page when listing, so a large list never exceeds gRPC's message limit.
const LIST_PAGE: i64 = 500;

/// Why a paged scan stopped: etcd's error, or the one its page handler returned.
enum Failed {
    Etcd(etcd_client::Error),
    Store(StoreError),
}

impl From<etcd_client::Error> for Failed {
    fn from(e: etcd_client::Error) -> Self {
        Failed::Etcd(e)
    }
}

/// How to reach a secured etcd: TLS (CA, and a client certificate when etcd asks for one)
/// and a user (etcd's `auth enable`).
#[derive(Default, Clone)]
pub struct EtcdSecurity {
    pub tls: Option<etcd_client::TlsOptions>,
    pub user: Option<(String, String)>,
}

#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
    endpoints: String,
    root: String,
    /// Over TLS: a failure to connect may be a certificate refused either way, and says so.
    tls: bool,
}

/// A connection failure over TLS, with what to check: tonic reports a certificate etcd
/// refused as anything from `BadCertificate` to a closed connection.
#[derive(Debug)]
struct OverTls(etcd_client::Error);

impl std::fmt::Display for OverTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (over TLS: if etcd logs \"rejected connection\" or \"bad certificate\", check --etcd-ca-cert-file, --etcd-cert-file and --etcd-key-file)",
            self.0
        )
    }
}

impl std::error::Error for OverTls {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl EtcdBackend {
    /// Connects lazily: an unreachable etcd shows up as `Unavailable` on the first operation.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, EtcdSecurity::default()).await
    }

    /// As [`Self::connect`], with TLS (https:// endpoints) and etcd's own authentication.
    /// With a user, the client authenticates at once: wrong credentials fail here.
    pub async fn connect_with(endpoints: &[String], security: EtcdSecurity) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let tls = security.tls.is_some();
        if let Some(t) = security.tls {
            opts = opts.with_tls(t);
        }
        if let Some((user, password)) = security.user {
            // etcd's tokens expire (and simple tokens die with an etcd restart): the client
            // authenticates again when one is refused, or every request after it would fail.
            opts = opts.with_user(user, password).with_auto_token_refresh(true);
        }
        let joined = endpoints.join(",");
        let client =
            Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| StoreError::Unavailable {
                    backend: NAME,
                    endpoint: joined.clone(),
                    key: Key::new("(connect)", None, None),
                    source: Box::new(e),
                })?;
        Ok(EtcdBackend {
            client,
            endpoints: joined,
            root: "/brindle/".into(),
            tls,
        })
    }

    /// The raw client, for tools that need etcd itself (benchmarks, compaction in tests).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn etcd_key(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(ty, ns), name)
    }

    fn prefix(&self, ty: &ResourceType, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => format!("{}{}/{ns}/", self.root, ty.resource_name()),
            None => format!("{}{}/", self.root, ty.resource_name()),
        }
    }

    /// Every key under `prefix`, in pages, all read at one revision (`at`, or 0 for now);
    /// returns them and that revision.
    async fn scan(
        &self,
        prefix: &str,
        at: i64,
    ) -> std::result::Result<(Vec<KeyValue>, i64), etcd_client::Error> {
        let mut items = vec![];
        let revision = self
            .scan_pages(prefix, at, &mut |kvs| {
                items.extend(kvs);
                Ok::<_, etcd_client::Error>(())
            })
            .await?;
        Ok((items, revision))
    }

    /// [`Self::scan`] a page at a time: `page` gets each page as it arrives (so a caller that
    /// keeps only what it makes of them never holds the whole range); its error ends the scan.
    async fn scan_pages<E: From<etcd_client::Error>>(
        &self,
        prefix: &str,
        at: i64,
        page: &mut (dyn FnMut(Vec<KeyValue>) -> std::result::Result<(), E> + Send),
    ) -> std::result::Result<i64, E> {
        let end = prefix_end(prefix);
        let mut kv = self.client.kv_client();
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = at;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision); // every page from one snapshot
            }
            let mut resp = kv.get(start.clone(), Some(opts)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let next = match kvs.last() {
                Some(last) if more => {
                    let mut k = last.key().to_vec();
                    k.push(0);
                    Some(k)
                }
                _ => None,
            };
            page(kvs)?;
            match next {
                Some(k) => start = k,
                None => return Ok(revision),
            }
        }
    }

    /// Sends one transaction; a failure to send is reported against `key`.
    async fn commit(
        &self,
        txn: Txn,
        key: impl FnOnce() -> Key,
    ) -> Result<etcd_client::TxnResponse> {
        self.client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| self.err(key(), e))
    }

    /// Where a list or watch reads: the kind's prefix, or one node's index prefix.
    fn scoped_prefix(&self, ty: &ResourceType, ns: Option<&str>, node: Option<&str>) -> String {
        match node {
            Some(n) => self.node_prefix(ty, n, ns),
            None => self.prefix(ty, ns),
        }
    }

    fn err(&self, key: Key, e: etcd_client::Error) -> StoreError {
        if is_unavailable(&e) {
            StoreError::Unavailable {
                backend: NAME,
                endpoint: self.endpoints.clone(),
                key,
                source: if self.tls {
                    Box::new(OverTls(e))
                } else {
                    Box::new(e)
                },
            }
        } else {
            StoreError::Backend {
                backend: NAME,
                key,
                message: e.to_string(),
            }
        }
    }

    fn decode(&self, key: impl FnOnce() -> Key, kv: &KeyValue) -> Result<Value> {
        let mut v: Value =
            serde_json::from_slice(kv.value()).map_err(|source| StoreError::Decode {
                backend: NAME,
                key: key(),
                source,
            })?;
        meta::set(&mut v, "resourceVersion", kv.mod_revision().to_string());
        Ok(v)
    }

    /// The stored form: the object without its resourceVersion (etcd keeps that).
    fn encode(obj: &mut Value) -> Vec<u8> {
        meta::remove(obj, "resourceVersion");
        serde_json::to_vec(obj).expect("a serde_json::Value always serializes")
    }

    /// [`Self::encode`] of an object that keeps its resourceVersion (a transaction's write,
    /// whose version the failure report needs), without copying it.
    fn encode_keeping_version(obj: &mut Value) -> Vec<u8> {
        let version = meta::remove(obj, "resourceVersion");
        let bytes = serde_json::to_vec(obj).expect("a serde_json::Value always serializes");
        if let Some(v) = version {
            meta::set(obj, "resourceVersion", v);
        }
        bytes
    }

    /// Why a guarded write failed: the key's current state from the transaction's else-branch.
    fn current(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        })
    }
}

fn is_unavailable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

/// The condition of a write to an existing key: its revision is `rv` when given, else the key
/// merely exists.
fn exists_at(k: &str, ty: &ResourceType, ns: Option<&str>, rv: Option<&str>) -> Result<Compare> {
    Ok(match rv {
        Some(rv) => Compare::mod_revision(k, CompareOp::Equal, parse_revision(ty, ns, rv)?),
        None => Compare::create_revision(k, CompareOp::NotEqual, 0),
    })
}

fn parse_revision(ty: &ResourceType, ns: Option<&str>, rev: &str) -> Result<i64> {
    rev.parse().map_err(|_| StoreError::Backend {
        backend: NAME,
        key: ty.key(ns, None),
        message: format!("{rev:?} is not an etcd revision"),
    })
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn name_of(obj: &Value) -> (Option<String>, String) {
    (
        meta::namespace(obj).map(str::to_owned),
        meta::name(obj).unwrap_or_default().to_owned(),
    )
}

#[async_trait]
impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
        let key = || ty.key(ns, Some(name));
        let resp = self
            .client
            .kv_client()
            .get(self.etcd_key(ty, ns, name), None)
            .await
            .map_err(|e| self.err(key(), e))?;
        resp.kvs()
            .first()
            .map(|kv| self.decode(key, kv))
            .transpose()
    }

    async fn list_pages(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        page: &mut (dyn FnMut(Vec<Value>) -> Result<()> + Send),
    ) -> Result<String> {
        let prefix = self.scoped_prefix(ty, ns, node);
        let revision = self
            .scan_pages(&prefix, 0, &mut |kvs| {
                let mut items = Vec::with_capacity(kvs.len());
                for kv in &kvs {
                    let key = || Key::new(&String::from_utf8_lossy(kv.key()), None, None);
                    items.push(self.decode(key, kv).map_err(Failed::Store)?);
                }
                drop(kvs);
                page(items).map_err(Failed::Store)
            })
            .await
            .map_err(|e| match e {
                Failed::Store(e) => e,
                Failed::Etcd(e) => self.err(ty.key(ns, None), e),
            })?;
        Ok(revision.to_string())
    }

    async fn create(&self, ty: &ResourceType, mut obj: Value) -> Result<Value> {
        let (ns, name) = name_of(&obj);
        let key = || ty.key(ns.as_deref(), Some(&name));
        let k = self.etcd_key(ty, ns.as_deref(), &name);
        meta::stamp_created(&mut obj, uuid::Uuid::new_v4().to_string());
        let bytes = Self::encode(&mut obj);
        let mut then = self.index_ops(ty, &obj, None, Some(&bytes));
        then.push(TxnOp::put(k.clone(), bytes, None));
        let txn = Txn::new()
            .when([Compare::create_revision(k, CompareOp::Equal, 0)])
            .and_then(then);
        let resp = self.commit(txn, key).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                backend: NAME,
                key: key(),
            });
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        meta::set(&mut obj, "resourceVersion", rev.to_string());
        Ok(obj)
    }

    async fn update(&self, ty: &ResourceType, mut obj: Value) -> Result<Value> {
        if ty.node_field().is_some() {
            return self.update_indexed(ty, obj).await;
        }
        let (ns, name) = name_of(&obj);
        let key = || ty.key(ns.as_deref(), Some(&name));
        let k = self.etcd_key(ty, ns.as_deref(), &name);
        let expected = meta::resource_version(&obj).map(str::to_owned);
        let guard = exists_at(&k, ty, ns.as_deref(), expected.as_deref())?;
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(k.clone(), Self::encode(&mut obj), None)])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.commit(txn, key).await?;
        if !resp.succeeded() {
            return Err(match (Self::current(&resp), expected) {
                (None, _) => StoreError::NotFound {
                    backend: NAME,
                    key: key(),
                },
                (Some(_), Some(expected)) => StoreError::Conflict {
                    backend: NAME,
                    key: key(),
                    expected,
                },
                (Some(_), None) => StoreError::Backend {
                    backend: NAME,
                    key: key(),
                    message: "unconditional update failed although the key exists".into(),
                },
            });
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        meta::set(&mut obj, "resourceVersion", rev.to_string());
        Ok(obj)
    }

    async fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()> {
        if ty.node_field().is_some() {
            return self.delete_indexed(ty, ns, name, precondition).await;
        }
        let key = || ty.key(ns, Some(name));
        let k = self.etcd_key(ty, ns, name);
        let guard = exists_at(&k, ty, ns, precondition)?;
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::delete(k.clone(), None)])
            .or_else([TxnOp::get(k, None)]);
        let resp = self.commit(txn, key).await?;
        if resp.succeeded() {
            return Ok(());
        }
        Err(match (Self::current(&resp), precondition) {
            (Some(_), Some(expected)) => StoreError::Conflict {
                backend: NAME,
                key: key(),
                expected: expected.to_owned(),
            },
            _ => StoreError::NotFound {
                backend: NAME,
                key: key(),
            },
        })
    }

    fn transactions(&self) -> bool {
        true
    }

    async fn repair_indexes(&self) -> Result<usize> {
        self.repair_node_index().await
    }

    async fn txn(&self, mut writes: Vec<TxnWrite>) -> Result<Vec<Option<Value>>> {
        check_distinct(NAME, &writes)?;
        let first_key = |writes: &[TxnWrite]| {
            writes
                .first()
                .map(TxnWrite::key)
                .unwrap_or_else(|| Key::new("(transaction)", None, None))
        };
        for _ in 0..node_index::RETRIES {
            // Updates and deletes of indexed objects (Pods) need the node each was on.
            let seen = self.seen_all(&writes).await?;
            let mut when = vec![];
            let mut then = vec![];
            let mut otherwise = vec![];
            for (w, seen) in writes.iter_mut().zip(&seen) {
                let (k, guard, ops) = match w {
                    TxnWrite::Create { ty, obj } => {
                        let (ns, name) = name_of(obj);
                        let k = self.etcd_key(ty, ns.as_deref(), &name);
                        meta::stamp_created(obj, uuid::Uuid::new_v4().to_string());
                        let bytes = Self::encode_keeping_version(obj);
                        let mut ops = self.index_ops(ty, obj, None, Some(&bytes));
                        ops.push(TxnOp::put(k.clone(), bytes, None));
                        let guard = Compare::create_revision(k.clone(), CompareOp::Equal, 0);
                        (k, guard, ops)
                    }
                    TxnWrite::Update { ty, obj } => {
                        let (ns, name) = name_of(obj);
                        let k = self.etcd_key(ty, ns.as_deref(), &name);
                        let guard = exists_at(&k, ty, ns.as_deref(), meta::resource_version(obj))?;
                        let bytes = Self::encode_keeping_version(obj);
                        let old = seen.as_ref().and_then(|s| s.node.as_deref());
                        let mut ops = self.index_ops(ty, obj, old, Some(&bytes));
                        ops.push(TxnOp::put(k.clone(), bytes, None));
                        (k, guard, ops)
                    }
                    TxnWrite::Delete {
                        ty,
                        ns,
                        name,
                        precondition,
                    } => {
                        let k = self.etcd_key(ty, ns.as_deref(), name);
                        let guard = exists_at(&k, ty, ns.as_deref(), precondition.as_deref())?;
                        let stub = serde_json::json!({"metadata": {"name": name, "namespace": ns}});
                        let old = seen.as_ref().and_then(|s| s.node.as_deref());
                        let mut ops = self.index_ops(ty, &stub, old, None);
                        ops.push(TxnOp::delete(k.clone(), None));
                        (k, guard, ops)
                    }
                };
                if let Some(seen) = seen {
                    when.push(Self::unchanged(&k, seen));
                }
                when.push(guard);
                then.extend(ops);
                otherwise.push(TxnOp::get(k, None));
            }
            let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
            let resp = self.commit(txn, || first_key(&writes)).await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(writes
                    .into_iter()
                    .map(|w| match w {
                        TxnWrite::Create { mut obj, .. } | TxnWrite::Update { mut obj, .. } => {
                            meta::set(&mut obj, "resourceVersion", rev.to_string());
                            Some(obj)
                        }
                        TxnWrite::Delete { .. } => None,
                    })
                    .collect());
            }
            let current: Vec<Option<String>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => {
                        g.kvs().first().map(|kv| kv.mod_revision().to_string())
                    }
                    _ => None,
                })
                .collect();
            if let Some(e) = txn_failure(NAME, &writes, &current) {
                return Err(e);
            }
            if seen.iter().all(Option::is_none) {
                return Err(StoreError::Backend {
                    backend: NAME,
                    key: first_key(&writes),
                    message: "transaction failed although every condition holds".into(),
                });
            }
            // An indexed object changed after it was read: read again.
        }
        Err(node_index::busy(first_key(&writes)))
    }

    async fn watch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        revision: &str,
    ) -> Result<RawWatch> {
        let from = parse_revision(ty, ns, revision)?;
        Ok(spawn_watch(|tx| Watch {
            backend: self.clone(),
            prefix: self.scoped_prefix(ty, ns, node),
            key: ty.key(ns, None),
            last: from,
            tx,
        }))
    }
}

/// One watch's task: follows etcd from `last`, re-watching after a dropped connection.
struct Watch {
    backend: EtcdBackend,
    prefix: String,
    key: Key,
    /// The revision of the last change delivered (or the starting revision).
    last: i64,
    tx: mpsc::Sender<Result<RawEvent>>,
}

impl Follow for Watch {
    fn follow(&mut self) -> impl std::future::Future<Output = Ended> + Send {
        Watch::follow(self)
    }
    fn describe(&self) -> String {
        format!("etcd {} at revision {}", self.key, self.last)
    }
    fn sender(&self) -> &mpsc::Sender<Result<RawEvent>> {
        &self.tx
    }
}

impl Watch {
    async fn follow(&mut self) -> Ended {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut client = self.backend.client.watch_client();
        let mut stream = match client.watch(self.prefix.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return Ended::Reconnect(Some(e.to_string())),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = self.tx.closed() => return Ended::Stop,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Ended::Reconnect(Some("stream closed by etcd".into())),
                Err(e) => return Ended::Reconnect(Some(e.to_string())),
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    let _ = self.tx.send(Err(self.expired())).await;
                    return Ended::Stop;
                }
                return Ended::Reconnect(Some(format!(
                    "watch cancelled: {}",
                    resp.cancel_reason()
                )));
            }
            if resp.events().is_empty() && !resp.created() {
                // A progress notification: nothing on our prefix up to this revision.
                if let Some(h) = resp.header() {
                    self.last = self.last.max(h.revision());
                }
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let event = match self.event(ev.event_type(), kv, ev.prev_kv()) {
                    Ok(e) => e,
                    Err(e) => {
                        // A value that does not decode is reported and skipped, not fatal.
                        warn!(key = %self.key, error = %e, "undecodable value in watch");
                        self.last = kv.mod_revision();
                        continue;
                    }
                };
                self.last = kv.mod_revision();
                if self.tx.send(Ok(event)).await.is_err() {
                    return Ended::Stop;
                }
            }
        }
    }

    fn event(&self, t: EventType, kv: &KeyValue, prev: Option<&KeyValue>) -> Result<RawEvent> {
        let key = || Key::new(&String::from_utf8_lossy(kv.key()), None, None);
        Ok(match t {
            EventType::Put if kv.create_revision() == kv.mod_revision() => {
                RawEvent::Added(self.backend.decode(key, kv)?)
            }
            EventType::Put => RawEvent::Modified(self.backend.decode(key, kv)?),
            EventType::Delete => {
                let Some(prev) = prev else {
                    debug!(key = %key(), "delete without previous value");
                    return Err(StoreError::Backend {
                        backend: NAME,
                        key: key(),
                        message: "delete event without the previous value".into(),
                    });
                };
                let mut last = self.backend.decode(key, prev)?;
                meta::set(&mut last, "resourceVersion", kv.mod_revision().to_string());
                RawEvent::Deleted(last)
            }
        })
    }

    fn expired(&self) -> StoreError {
        StoreError::Expired {
            backend: NAME,
            key: self.key.clone(),
            revision: self.last.to_string(),
        }
    }
}
