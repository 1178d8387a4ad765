//! Brindle's node dataplane: the pieces of the kernel a node agent owns besides BGP routes.
//!
//! - [`tunnel`]: the `tunl0` IPIP device, its MTU and its one /32 tunnel address;
//! - [`workloads`]: the `/32 dev <veth> scope link` routes to local pods, repaired when missing;
//! - [`family`]: what differs between the IPv4 and IPv6 rules (names, tools, keywords);
//! - [`proxy`]: Services (kube-proxy's iptables structure, `BRL-` chains) and NAT outgoing;
//! - [`iptables`]: the writer that puts [`proxy`]'s rules in the kernel, changed chains only;
//! - [`policy`]: NetworkPolicy's chains and ipsets;
//! - [`nft`]: the same in native nftables, one table of our own;
//! - [`nflog`]: the packets policy denied, read back from the kernel (`--log-denied`).
//!
//! This crate must not talk BGP, read the datastore or allocate addresses: callers hand it
//! the desired state as plain data.
#![forbid(unsafe_code)]

pub mod family;
pub mod iptables;
pub mod members;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod proxy;
pub mod tunnel;
pub mod workloads;

/// Errno values the dataplane tells apart.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The index of the link with this name, if there is one.
pub(crate) async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Option<u32> {
    use futures::TryStreamExt;
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    s.try_next().await.ok()?.map(|l| l.header.index)
}
