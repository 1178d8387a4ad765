//! The cluster's first IPPool, made at start-up when there is none, as calico-node does with
//! `CALICO_IPV4POOL_CIDR`. It cannot be a manifest beside the CRDs: `kubectl apply -f
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
}

pub const NAME: &str = "default-ipv4-ippool";

impl DefaultPool {
    pub fn pool(&self) -> Option<IPPool> {
        if self.cidr == "none" {
            return None;
        }
        let mut spec = IPPoolSpec::new(&self.cidr);
        spec.block_size = Some(self.block_size);
        spec.ipip_mode = match self.ipip.as_str() {
            "Always" => IpipMode::Always,
            "CrossSubnet" => IpipMode::CrossSubnet,
            _ => IpipMode::Never,
        };
        spec.nat_outgoing = self.nat_outgoing;
        Some(IPPool::new(NAME, spec))
    }

    /// Makes the pool if the cluster has none. Another controller (or a person) making one
    /// first is fine; an invalid setting is an error naming the field.
    pub async fn ensure(&self, store: &Store) -> anyhow::Result<()> {
        let Some(pool) = self.pool() else {
            return Ok(());
        };
        let pools = store.all::<IPPool>().list().await?;
        if !pools.items.is_empty() {
            return Ok(());
        }
        match store.all::<IPPool>().create(&pool).await {
            Ok(_) => {
                info!(name = NAME, cidr = %self.cidr, ipip = %self.ipip, nat_outgoing = self.nat_outgoing,
                    "the cluster had no IPPool: made the default one");
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(anyhow::anyhow!(
                "making the default IPPool (--default-ipv4-pool-*): {e}"
            )),
        }
    }
}
