//! The cluster's first IPPool, made at start-up when there is none, as calico-node does with
//! `CALICO_IPV4POOL_CIDR`; and its first IPv6 pool when asked for (`CALICO_IPV6POOL_CIDR`)
//! and there is no IPv6 pool. It cannot be a manifest beside the CRDs: `kubectl apply -f
//! manifests/` maps every document before it creates any, so on a new cluster an IPPool in
//! the same apply fails with "no matches for kind IPPool" until it is run a second time.

use brindle_api::{IPPool, IPPoolSpec, IpipMode};
use brindle_datastore::Store;
use tracing::info;

/// `--default-ipv4-pool-*`: what to make; `cidr` "none" makes nothing.
#[derive(Debug, Clone, clap::Args)]
pub struct DefaultPool {
    /// The IPPool `default-ipv4-ippool` made when the cluster has no IPPool; `none` for none.
    #[arg(
        long = "default-ipv4-pool-cidr",
        env = "BRINDLE_IPV4POOL_CIDR",
        default_value = "10.244.0.0/16"
    )]
    pub cidr: String,
    #[arg(
        long = "default-ipv4-pool-block-size",
        env = "BRINDLE_IPV4POOL_BLOCK_SIZE",
        default_value_t = 26
    )]
    pub block_size: u8,
    /// Always, CrossSubnet or Never.
    #[arg(
        long = "default-ipv4-pool-ipip",
        env = "BRINDLE_IPV4POOL_IPIP",
        default_value = "CrossSubnet",
        value_parser = ["Always", "CrossSubnet", "Never"]
    )]
    pub ipip: String,
    #[arg(
        long = "default-ipv4-pool-nat-outgoing",
        env = "BRINDLE_IPV4POOL_NAT_OUTGOING",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub nat_outgoing: bool,
    /// The IPPool `default-ipv6-ippool` made when the cluster has no IPv6 pool; `none` (the
    /// default) for none.
    #[arg(
        long = "default-ipv6-pool-cidr",
        env = "BRINDLE_IPV6POOL_CIDR",
        default_value = "none"
    )]
    pub cidr6: String,
    #[arg(
        long = "default-ipv6-pool-block-size",
        env = "BRINDLE_IPV6POOL_BLOCK_SIZE",
        default_value_t = 122
    )]
    pub block_size6: u8,
    /// Calico's default for IPv6 too: off.
    #[arg(
        long = "default-ipv6-pool-nat-outgoing",
        env = "BRINDLE_IPV6POOL_NAT_OUTGOING",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub nat_outgoing6: bool,
}

pub const NAME: &str = "default-ipv4-ippool";
pub const NAME6: &str = "default-ipv6-ippool";

/// The pool `name` as asked for; None when `cidr` is "none".
fn made(name: &str, cidr: &str, block_size: u8, ipip: IpipMode, nat: bool) -> Option<IPPool> {
    if cidr == "none" {
        return None;
    }
    let mut spec = IPPoolSpec::new(cidr);
    spec.block_size = Some(block_size);
    spec.ipip_mode = ipip;
    spec.nat_outgoing = nat;
    Some(IPPool::new(name, spec))
}

impl DefaultPool {
    pub fn pool(&self) -> Option<IPPool> {
        let ipip = match self.ipip.as_str() {
            "Always" => IpipMode::Always,
            "CrossSubnet" => IpipMode::CrossSubnet,
            _ => IpipMode::Never,
        };
        made(NAME, &self.cidr, self.block_size, ipip, self.nat_outgoing)
    }

    pub fn pool6(&self) -> Option<IPPool> {
        made(
            NAME6,
            &self.cidr6,
            self.block_size6,
            IpipMode::Never,
            self.nat_outgoing6,
        )
    }

    /// Makes the IPv4 pool if the cluster has no pool, and the IPv6 one if it has no IPv6
    /// pool. Another controller (or a person) making one first is fine; an invalid setting
    /// (an IPv4 CIDR for the IPv6 pool, say) is an error naming the field.
    pub async fn ensure(&self, store: &Store) -> anyhow::Result<()> {
        let pools = store.all::<IPPool>().list().await?;
        let is_v6 = |p: &IPPool| p.spec.cidr.contains(':');
        if let Some(pool6) = self.pool6() {
            if !is_v6(&pool6) {
                anyhow::bail!(
                    "--default-ipv6-pool-cidr / BRINDLE_IPV6POOL_CIDR: {:?} is not an IPv6 CIDR",
                    self.cidr6
                );
            }
        }
        if let Some(pool) = self.pool().filter(|_| pools.items.is_empty()) {
            self.create(store, &pool, "--default-ipv4-pool-*").await?;
        }
        if let Some(pool6) = self.pool6().filter(|_| !pools.items.iter().any(is_v6)) {
            self.create(store, &pool6, "--default-ipv6-pool-*").await?;
        }
        Ok(())
    }

    async fn create(&self, store: &Store, pool: &IPPool, flags: &str) -> anyhow::Result<()> {
        let name = pool.metadata.name.clone().unwrap_or_default();
        match store.all::<IPPool>().create(pool).await {
            Ok(_) => {
                info!(name = %name, cidr = %pool.spec.cidr, ipip = ?pool.spec.ipip_mode,
                    nat_outgoing = pool.spec.nat_outgoing,
                    "the cluster had no such IPPool: made the default one");
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(anyhow::anyhow!("making the default IPPool ({flags}): {e}")),
        }
    }
}
