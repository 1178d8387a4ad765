//! The node index: an object of a kind with a node field (Pods, `spec.nodeName`) is also
//! stored at `/brindle/by-node/<plural.group>/<node>/[<namespace>/]<name>`, written in the
//! same transaction as the object, so one node's agent lists and watches that prefix and
//! receives nothing about other nodes' objects ([`crate::Api::on_node`]).
//!
//! Invariant: an object on node N has exactly one index entry, under N, holding the same
//! value at the same revision; an object without a node has none. A create needs no read
//! (the object did not exist, so neither did an entry). An update or a delete reads the
//! object first to learn the node it was on, and its transaction holds only while the object
//! is still at the revision read; otherwise it reads again.

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use serde_json::Value;

use super::{name_of, EtcdBackend, NAME};
use crate::backend::meta;
use crate::{ResourceType, Result, StoreError};

/// How many times a write is tried again when the object changed between the read and the
/// transaction (another writer got in between).
pub(super) const RETRIES: usize = 16;

/// A node name that can be a key segment (names with `/` are not indexed: they would land
/// under another node's prefix).
fn indexable(node: Option<&str>) -> Option<&str> {
    node.filter(|n| !n.is_empty() && !n.contains('/'))
}

/// What an update or delete read of an indexed object: its revision (None: absent) and the
/// node it was on.
pub(super) struct Seen {
    pub(super) rev: Option<i64>,
    pub(super) node: Option<String>,
}

impl EtcdBackend {
    /// The prefix of one node's entries (in one namespace, or all).
    pub(super) fn node_prefix(&self, ty: &ResourceType, node: &str, ns: Option<&str>) -> String {
        let mut p = format!("{}by-node/{}/{node}/", self.root, ty.resource_name());
        if let Some(ns) = ns {
            p += ns;
            p.push('/');
        }
        p
    }

    fn index_key(&self, ty: &ResourceType, node: &str, ns: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.node_prefix(ty, node, ns))
    }

    /// The index writes that take an object from node `old` to `new` (`value`: its stored
    /// bytes; None: it is deleted).
    pub(super) fn index_ops(
        &self,
        ty: &ResourceType,
        obj: &Value,
        old: Option<&str>,
        new: Option<&[u8]>,
    ) -> Vec<TxnOp> {
        if ty.node_field().is_none() {
            return vec![];
        }
        let (ns, name) = name_of(obj);
        let old = indexable(old);
        let now = new.and_then(|_| indexable(meta::node(ty, obj)));
        let mut ops = vec![];
        if let Some(o) = old.filter(|o| Some(*o) != now) {
            ops.push(TxnOp::delete(
                self.index_key(ty, o, ns.as_deref(), &name),
                None,
            ));
        }
        if let (Some(n), Some(bytes)) = (now, new) {
            ops.push(TxnOp::put(
                self.index_key(ty, n, ns.as_deref(), &name),
                bytes.to_vec(),
                None,
            ));
        }
        ops
    }

    /// The object's state for an update or delete of an indexed kind.
    async fn seen(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Seen> {
        let resp = self
            .client
            .kv_client()
            .get(self.etcd_key(ty, ns, name), None)
            .await
            .map_err(|e| self.err(ty.key(ns, Some(name)), e))?;
        self.seen_in(ty, resp.kvs().first())
    }

    fn seen_in(&self, ty: &ResourceType, kv: Option<&KeyValue>) -> Result<Seen> {
        let Some(kv) = kv else {
            return Ok(Seen {
                rev: None,
                node: None,
            });
        };
        let key = || crate::Key::new(&String::from_utf8_lossy(kv.key()), None, None);
        // A record that does not decode can still be replaced or deleted, as any other
        // kind's: it has no entry to move (the repair removes one if it had).
        let node = self
            .decode(key, kv)
            .ok()
            .and_then(|v| meta::node(ty, &v).map(str::to_owned));
        Ok(Seen {
            rev: Some(kv.mod_revision()),
            node,
        })
    }

    /// For each write of a transaction: what it saw of an indexed object (None otherwise),
    /// read in one round trip.
    pub(super) async fn seen_all(&self, writes: &[crate::TxnWrite]) -> Result<Vec<Option<Seen>>> {
        use crate::TxnWrite;
        let keys: Vec<Option<(ResourceType, String)>> = writes
            .iter()
            .map(|w| match w {
                TxnWrite::Update { ty, obj } if ty.node_field().is_some() => {
                    let (ns, name) = name_of(obj);
                    Some((ty.clone(), self.etcd_key(ty, ns.as_deref(), &name)))
                }
                TxnWrite::Delete { ty, ns, name, .. } if ty.node_field().is_some() => {
                    Some((ty.clone(), self.etcd_key(ty, ns.as_deref(), name)))
                }
                _ => None,
            })
            .collect();
        let gets: Vec<TxnOp> = keys
            .iter()
            .flatten()
            .map(|(_, k)| TxnOp::get(k.clone(), None))
            .collect();
        if gets.is_empty() {
            return Ok(keys.iter().map(|_| None).collect());
        }
        let resp = self
            .commit(Txn::new().and_then(gets), || writes[0].key())
            .await?;
        let mut found = resp.op_responses().into_iter().map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        keys.iter()
            .map(|k| match k {
                Some((ty, _)) => self.seen_in(ty, found.next().flatten().as_ref()).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// The condition that the object is still as `seen`.
    pub(super) fn unchanged(key: &str, seen: &Seen) -> Compare {
        match seen.rev {
            Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
            None => Compare::create_revision(key, CompareOp::Equal, 0),
        }
    }

    /// A write to an indexed object that must exist (an update, a delete): reads it (its
    /// revision and node), refuses it as the non-indexed path would (`NotFound`; `Conflict`
    /// when `expected` is not its revision), and commits `ops` for what was read while the
    /// object is still at that revision, reading again when it is not. Returns the
    /// revision written.
    async fn write_existing(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        expected: Option<&str>,
        ops: impl Fn(&Seen) -> Vec<TxnOp>,
    ) -> Result<i64> {
        let key = || ty.key(ns, Some(name));
        let k = self.etcd_key(ty, ns, name);
        let wanted = expected
            .map(|e| super::parse_revision(ty, ns, e))
            .transpose()?;
        for _ in 0..RETRIES {
            let seen = self.seen(ty, ns, name).await?;
            let Some(rev) = seen.rev else {
                return Err(StoreError::NotFound {
                    backend: NAME,
                    key: key(),
                });
            };
            if let (Some(e), Some(w)) = (expected, wanted) {
                if rev != w {
                    return Err(StoreError::Conflict {
                        backend: NAME,
                        key: key(),
                        expected: e.to_owned(),
                    });
                }
            }
            let txn = Txn::new()
                .when([Self::unchanged(&k, &seen)])
                .and_then(ops(&seen));
            let resp = self.commit(txn, key).await?;
            if resp.succeeded() {
                return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
            }
        }
        Err(busy(key()))
    }

    /// [`crate::Backend::update`] of an indexed kind.
    pub(super) async fn update_indexed(&self, ty: &ResourceType, mut obj: Value) -> Result<Value> {
        let (ns, name) = name_of(&obj);
        let k = self.etcd_key(ty, ns.as_deref(), &name);
        let expected = meta::resource_version(&obj).map(str::to_owned);
        let bytes = Self::encode(&mut obj);
        let ops = |seen: &Seen| {
            let mut then = vec![TxnOp::put(k.clone(), bytes.clone(), None)];
            then.extend(self.index_ops(ty, &obj, seen.node.as_deref(), Some(&bytes)));
            then
        };
        let rev = self
            .write_existing(ty, ns.as_deref(), &name, expected.as_deref(), ops)
            .await?;
        meta::set(&mut obj, "resourceVersion", rev.to_string());
        Ok(obj)
    }

    /// [`crate::Backend::delete`] of an indexed kind.
    pub(super) async fn delete_indexed(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()> {
        let k = self.etcd_key(ty, ns, name);
        // The index entry's key needs only the name and namespace from the object.
        let stub = serde_json::json!({"metadata": {"name": name, "namespace": ns}});
        let ops = |seen: &Seen| {
            let mut then = vec![TxnOp::delete(k.clone(), None)];
            then.extend(self.index_ops(ty, &stub, seen.node.as_deref(), None));
            then
        };
        self.write_existing(ty, ns, name, precondition, ops)
            .await
            .map(|_| ())
    }
}

/// A write that lost to other writers every time it was tried.
pub(super) fn busy(key: crate::Key) -> StoreError {
    StoreError::Backend {
        backend: NAME,
        key,
        message: format!("the object kept changing under other writers ({RETRIES} tries)"),
    }
}

impl EtcdBackend {
    /// Brings the index in line with the Pods: an entry missing or stale (a record written
    /// before the index existed, or by a writer that bypassed it) is written again with its
    /// pod, in one transaction so both carry one revision; an entry with no pod on its node
    /// is removed. Every fix holds only if the keys are still as read. Returns the fixes.
    pub(super) async fn repair_node_index(&self) -> Result<usize> {
        let ty = ResourceType::of::<k8s_openapi::api::core::v1::Pod>();
        let err = |e| self.err(ty.key(None, None), e);
        let (pods, rev) = self.scan(&self.prefix(&ty, None), 0).await.map_err(err)?;
        let index_root = format!("{}by-node/{}/", self.root, ty.resource_name());
        let (entries, _) = self.scan(&index_root, rev).await.map_err(err)?;
        let mut orphans: std::collections::HashMap<Vec<u8>, i64> = entries
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect();
        let mut writes: Vec<Txn> = vec![];
        for kv in &pods {
            let key = || crate::Key::new(&String::from_utf8_lossy(kv.key()), None, None);
            let Ok(v) = self.decode(key, kv) else {
                continue; // an undecodable record: its watchers skip it too
            };
            let Some(node) = indexable(meta::node(&ty, &v)) else {
                continue;
            };
            let (ns, name) = name_of(&v);
            let entry = self.index_key(&ty, node, ns.as_deref(), &name);
            if orphans.remove(entry.as_bytes()) == Some(kv.mod_revision()) {
                continue;
            }
            writes.push(
                Txn::new()
                    .when([Compare::mod_revision(
                        kv.key(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([
                        TxnOp::put(kv.key(), kv.value(), None),
                        TxnOp::put(entry, kv.value(), None),
                    ]),
            );
        }
        for (k, r) in orphans {
            writes.push(
                Txn::new()
                    .when([Compare::mod_revision(k.clone(), CompareOp::Equal, r)])
                    .and_then([TxnOp::delete(k, None)]),
            );
        }
        let mut fixed = 0;
        for t in writes {
            let resp = self.commit(t, || ty.key(None, None)).await?;
            fixed += usize::from(resp.succeeded());
        }
        Ok(fixed)
    }
}
