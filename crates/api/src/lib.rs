//! Brindle's resource types, group `brindle.dev`, version `v1`.
//!
//! This crate owns the shape of every object Brindle keeps in its datastore and the rules an
//! object must satisfy to be accepted ([`Validate`]). It does no I/O: storing objects is the
//! datastore crate's job, interpreting them (allocating, peering) is IPAM's and BGP's.
//!
//! Defaults follow Calico's: blockSize 26 (IPv4) / 122 (IPv6), asNumber 64512, node-to-node
//! mesh on, listenPort 179.
#![forbid(unsafe_code)]

pub mod bgp;
pub mod bgpfilter;
pub mod crd;
pub mod ipam;
pub mod node;
pub mod pool;
pub mod service_addresses;
pub mod validation;

pub use bgp::{BGPConfiguration, BGPConfigurationSpec, BGPPeer, BGPPeerSpec};
pub use bgpfilter::{BGPFilter, BGPFilterRule, BGPFilterSpec};
pub use ipam::{
    AffinityState, AllocationAttribute, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMBlockSpec,
    IPAMConfig, IPAMConfigSpec, IPAMHandle, IPAMHandleSpec,
};
pub use node::{BrindleNode, NodeBgp, NodeSpec};
pub use pool::{AllowedUse, IPPool, IPPoolSpec, IpipMode};
pub use validation::{FieldError, Invalid, Validate};

/// The API group of every Brindle resource.
pub const GROUP: &str = "brindle.dev";
/// The API version of every Brindle resource.
pub const VERSION: &str = "v1";
