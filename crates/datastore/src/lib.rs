//! The Store: Brindle's one way to keep and watch resources, with the Kubernetes API's
//! semantics over three backends.
//!
//! ```text
//!   typed callers ── Store::all::<K>() / namespaced::<K>(ns) ──> Api<K>   (serde, validation)
//!                                                                 │ JSON values
//!                                                                 ▼
//!                                             dyn Backend: kubernetes | etcd | memory
//! ```
//!
//! Semantics shared by every backend (the conformance suite in `tests/` checks them):
//! - every stored object carries `metadata.resourceVersion`; `update` with one is a
//!   compare-and-swap (a stale version is [`StoreError::Conflict`]), `update` without one
//!   replaces unconditionally;
//! - `list` returns the items and the revision they were read at; `watch(rev)` delivers every
//!   change after `rev`, in order, reconnecting by itself when the connection drops, and ends
//!   with [`StoreError::Expired`] when `rev` has been compacted away (the caller relists);
//! - an unreachable datastore is [`StoreError::Unavailable`], naming the backend and the key;
//! - etcd and memory also commit multi-object transactions ([`Store::txn`]): all writes or
//!   none, with the first failing write's own error. The Kubernetes API has none.
//!
//! This crate owns storage only: it does not interpret objects beyond validating them.
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
mod error;
pub mod follow;
mod resource;
mod store;

pub use backend::{Backend, RawEvent, RawList, TxnWrite};
pub use config::{ConnectError, DatastoreArgs, DatastoreKind, EtcdFiles};
pub use error::{Key, StoreError};
pub use follow::{follow, Change};
pub use resource::{ResourceType, StoreResource};
pub use store::{Api, Committed, ObjectList, Store, Txn, WatchEvent, WatchStream};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
