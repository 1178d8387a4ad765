//! Brindle's IP address management, Calico's algorithm over the Store.
//!
//! A node draws pod addresses from its own /26 blocks (block affinity), claims a new block
//! when those are full (pending BlockAffinity → IPAMBlock → confirmed), borrows from other
//! nodes' blocks when the pool has no block left and strictAffinity is off, and reports
//! exhaustion in plain words. Every write is a compare-and-swap with a bounded retry loop.
//! Writes go handle first, then block: a crash in between leaves a handle that claims more
//! than the blocks hold, which `check` reports and the collector repairs; it never leaves an
//! address allocated with no record of its owner.
//!
//! This crate owns IPAM's objects (IPAMBlock, BlockAffinity, IPAMHandle) and the tunnel
//! address on the node record. It does not touch the network.
#![forbid(unsafe_code)]

pub mod block;
pub mod check;
mod error;
pub mod gc;
mod ipam;
pub mod nodes;
mod pools;
mod release;
pub mod selector;
mod tunnel;

pub use check::Report;
pub use error::{IpamError, Result};
pub use ipam::{AssignRequest, Family, Ipam, IpamOptions, MAX_RETRIES};
pub use release::{ReleaseIp, ReleaseOutcome};
pub use tunnel::tunnel_handle;

/// The handle of a pod's addresses, as Calico's CNI plugin names it.
pub fn pod_handle(container_id: &str) -> String {
    format!("k8s-pod-network.{container_id}")
}
