use brindle_datastore::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),

    /// Nothing was allocated: a request is all-or-nothing.
    #[error("no IPs available in pools [{pools}]: {handle} on node {node} asked for {wanted} {family} address(es); nothing was allocated")]
    Exhausted {
        pools: String,
        handle: String,
        node: String,
        wanted: usize,
        family: &'static str,
    },

    #[error("no enabled {family} IPPool allowing {use_} selects node {node:?}{detail}")]
    NoPools {
        family: &'static str,
        use_: &'static str,
        node: String,
        detail: String,
    },

    /// An IPv4 address asked for on a node that has no IPv4 address: nothing would route it.
    #[error("node {node} is IPv6-only (it recorded an IPv6 address and no IPv4 one), but IPv4 pool(s) [{pools}] select it: their addresses could not be routed to it. Set assign_ipv4 to false in the CNI configuration, exclude the node by the pools' nodeSelector, or give the node an IPv4 address (IP)")]
    Ipv6OnlyNode { node: String, pools: String },

    #[error("the requested IPPool {0:?} does not exist (give a pool name or CIDR)")]
    UnknownPool(String),

    #[error("{what}: still conflicting after {retries} compare-and-swap retries")]
    TooManyRetries { what: String, retries: u32 },

    #[error("{ip} is already allocated")]
    InUse { ip: std::net::IpAddr },

    #[error("{ip} is not in any IPPool")]
    NotInPool { ip: std::net::IpAddr },

    /// A requested address whose pool may not give it to this node for this use.
    #[error("{ip} is in IPPool {pool}, which {reason}")]
    PoolRefuses {
        ip: std::net::IpAddr,
        pool: String,
        reason: String,
    },

    #[error("IPPool {pool}: spec.nodeSelector: {source}")]
    Selector {
        pool: String,
        #[source]
        source: crate::selector::SelectorError,
    },

    #[error("node {node} has no record in the {backend} datastore ({kind})")]
    NoNode {
        node: String,
        backend: &'static str,
        kind: &'static str,
    },

    #[error("IPAM data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;
