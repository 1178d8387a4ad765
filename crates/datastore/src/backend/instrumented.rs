//! A wrapper around any backend that counts round trips and can fail on purpose: for
//! benchmarks (datastore round trips per operation) and fault-injection tests (a process that
//! dies after its Nth write). Not for production use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{Backend, RawWatch, TxnWrite};
use crate::{Key, ResourceType, Result, StoreError};

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    /// Writes allowed before every later write fails; u64::MAX = no limit.
    writes_left: AtomicU64,
}

/// Counts and (optionally) cuts off. Clones share counters.
#[derive(Clone)]
pub struct Instrumented<B> {
    inner: B,
    c: Arc<Counters>,
}

impl<B: Backend + Clone> Instrumented<B> {
    pub fn new(inner: B) -> Self {
        let c = Counters::default();
        c.writes_left.store(u64::MAX, Ordering::SeqCst);
        Instrumented {
            inner,
            c: Arc::new(c),
        }
    }

    /// Round trips so far: (reads incl. lists and watch starts, writes).
    pub fn round_trips(&self) -> (u64, u64) {
        (
            self.c.reads.load(Ordering::SeqCst),
            self.c.writes.load(Ordering::SeqCst),
        )
    }

    /// After `n` more successful-or-not write attempts, every write fails as if the process
    /// had died: nothing more reaches the datastore.
    pub fn fail_writes_after(&self, n: u64) {
        self.c.writes_left.store(n, Ordering::SeqCst);
    }

    fn read(&self) {
        self.c.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, key: impl FnOnce() -> Key) -> Result<()> {
        let left =
            self.c
                .writes_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    u64::MAX => Some(u64::MAX),
                    0 => None,
                    n => Some(n - 1),
                });
        if left.is_err() {
            return Err(StoreError::Unavailable {
                backend: self.inner.name(),
                endpoint: "(fault injection)".into(),
                key: key(),
                source: "write cut off by Instrumented::fail_writes_after".into(),
            });
        }
        self.c.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn key_of(ty: &ResourceType, obj: &Value) -> Key {
    ty.key(super::meta::namespace(obj), super::meta::name(obj))
}

#[async_trait]
impl<B: Backend + Clone> Backend for Instrumented<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
        self.read();
        self.inner.get(ty, ns, name).await
    }

    async fn list_pages(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        page: &mut (dyn FnMut(Vec<Value>) -> Result<()> + Send),
    ) -> Result<String> {
        self.read();
        self.inner.list_pages(ty, ns, node, page).await
    }

    async fn create(&self, ty: &ResourceType, obj: Value) -> Result<Value> {
        self.write(|| key_of(ty, &obj))?;
        self.inner.create(ty, obj).await
    }

    async fn update(&self, ty: &ResourceType, obj: Value) -> Result<Value> {
        self.write(|| key_of(ty, &obj))?;
        self.inner.update(ty, obj).await
    }

    async fn merge_patch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        self.write(|| ty.key(ns, Some(name)))?;
        self.inner.merge_patch(ty, ns, name, patch).await
    }

    async fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()> {
        self.write(|| ty.key(ns, Some(name)))?;
        self.inner.delete(ty, ns, name, precondition).await
    }

    fn transactions(&self) -> bool {
        self.inner.transactions()
    }

    async fn repair_indexes(&self) -> Result<usize> {
        self.inner.repair_indexes().await
    }

    /// One round trip, and one write for the fault injection: all of it reaches the
    /// datastore or none of it does.
    async fn txn(&self, writes: Vec<TxnWrite>) -> Result<Vec<Option<Value>>> {
        let key = writes.first().map(TxnWrite::key);
        self.write(|| key.unwrap_or_else(|| Key::new("(transaction)", None, None)))?;
        self.inner.txn(writes).await
    }

    async fn watch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        revision: &str,
    ) -> Result<RawWatch> {
        self.read();
        self.inner.watch(ty, ns, node, revision).await
    }
}
