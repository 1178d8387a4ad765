//! Brindle's IP address management, Calico's algorithm over the Store.
//!
//! A node draws pod addresses from its own /26 blocks (block affinity), claims a new block
//! when those are full (pending BlockAffinity → IPAMBlock → confirmed), borrows from other
//! nodes' blocks when the pool has no block left and strictAffinity is off, and reports
//! exhaustion in plain words. Every write is a compare-and-swap with a bounded retry loop.
//! On etcd a block and the handles of the addresses taken from it are written in one
//! transaction (`txn.rs`): one round trip, and nothing a crash can separate. On the
//! Kubernetes datastore, which has no multi-object transactions, writes go handle first,
//! then block: a crash in between leaves a handle that claims more than the blocks hold,
//! which `check` reports and the collector repairs; it never leaves an address allocated
//! with no record of its owner.
//!
//! This crate owns IPAM's objects (IPAMBlock, BlockAffinity, IPAMHandle) and the tunnel
//! address on the node record. It does not touch the network.
#![forbid(unsafe_code)]

mod batch;
pub mod block;
pub mod check;
mod error;
pub mod gc;
mod ipam;
pub mod nodes;
pub mod pools;
mod release;
pub mod selector;
mod tunnel;
mod txn;

pub use batch::{BatchExtra, MAX_BATCH};
pub use check::Report;
pub use error::{IpamError, Result};
pub use ipam::{AssignRequest, Family, Ipam, IpamOptions, MAX_RETRIES};
pub use release::{ReleaseIp, ReleaseOutcome};
pub use tunnel::tunnel_handle;

/// The handle of a pod's addresses on Calico's default network, as Calico's CNI plugin
/// names it.
pub fn pod_handle(container_id: &str) -> String {
    attachment_handle("k8s-pod-network", container_id, PRIMARY_INTERFACE)
}

/// The interface a runtime gives a container's first network (kubelet always does).
pub const PRIMARY_INTERFACE: &str = "eth0";

/// The handle of one CNI attachment, (container ID, network, interface): Calico's
/// `<network>.<containerID>` for the primary interface, `<network>.<containerID>.<ifname>`
/// for any other, so a container on several networks holds one handle per attachment.
/// Handles are object names in the Kubernetes datastore: upper case is folded and any
/// character a name cannot hold becomes `-`.
pub fn attachment_handle(network: &str, container_id: &str, ifname: &str) -> String {
    let raw = if ifname == PRIMARY_INTERFACE {
        format!("{network}.{container_id}")
    } else {
        format!("{network}.{container_id}.{ifname}")
    };
    raw.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// Now, as the allocation timestamp attribute holds it (RFC 3339, UTC).
pub fn timestamp_now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The allocation timestamp attribute, parsed.
pub fn parse_timestamp(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_handles() {
        let cid = "3420073dfb6e";
        assert_eq!(pod_handle(cid), "k8s-pod-network.3420073dfb6e");
        assert_eq!(attachment_handle("a", cid, "eth0"), "a.3420073dfb6e");
        assert_eq!(attachment_handle("a", cid, "eth1"), "a.3420073dfb6e.eth1");
        assert_ne!(
            attachment_handle("a", cid, "eth1"),
            attachment_handle("b", cid, "eth1")
        );
        assert_eq!(
            attachment_handle("My_Net", cid, "net1"),
            "my-net.3420073dfb6e.net1"
        );
        let t = timestamp_now();
        assert!(parse_timestamp(&t).is_some(), "{t}");
    }
}
