//! The node's IPIP tunnel address: one IPv4 address from a pool with IPIP on and Tunnel
//! allowed, held by handle `ipip-tunnel-addr-<node>` and written to the node's BGP record.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::{AllowedUse, IPAMBlock};

use crate::block::{self, attr, block_name};
use crate::error::{IpamError, Result};
use crate::ipam::{AssignRequest, Family, Ipam};

pub fn tunnel_handle(node: &str) -> String {
    format!("ipip-tunnel-addr-{node}")
}

impl Ipam {
    /// Makes sure the node has a valid tunnel address and returns it; None when no IPIP
    /// pool selects the node (any old address is then released and removed). An address
    /// outside every valid pool, or not held by the node's handle, is replaced.
    pub async fn ensure_tunnel_address(&self, node: &str) -> Result<Option<IpAddr>> {
        let handle = tunnel_handle(node);
        let current = self.owners.bgp(node).await?.ipv4_ipip_tunnel_addr;
        let pools = match self
            .eligible(node, Family::V4, AllowedUse::Tunnel, &[])
            .await
        {
            Ok(p) => p,
            // No IPIP pool for it, or an IPv6-only node (no tunnel: IPv6 is routed natively).
            Err(IpamError::NoPools { .. } | IpamError::Ipv6OnlyNode { .. }) => vec![],
            Err(e) => return Err(e),
        };
        if let Some(addr) = current.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) {
            let in_pool = pools.iter().find(|p| p.net.contains(addr));
            if let Some(p) = in_pool {
                if self.held_by(addr, p.block_size, &handle).await? {
                    return Ok(Some(addr));
                }
            }
            tracing::info!(node, %addr, "tunnel address no longer valid; replacing it");
        }
        // Whatever the handle holds is stale now.
        self.release_handle(&handle).await?;
        if pools.is_empty() {
            if current.is_some() {
                self.owners.set_tunnel_addr(node, None).await?;
            }
            return Ok(None);
        }
        let req = AssignRequest {
            handle: handle.clone(),
            node: node.to_owned(),
            ipv4: 1,
            ipv6: 0,
            attrs: BTreeMap::from([
                (attr::NODE.to_string(), node.to_string()),
                (attr::TYPE.to_string(), attr::TYPE_TUNNEL.to_string()),
            ]),
            use_: AllowedUse::Tunnel,
            pools: pools.iter().map(|p| p.name.clone()).collect(),
        };
        let ip = self
            .assign(&req)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| IpamError::Corrupt("assign returned no address".into()))?;
        if let Err(e) = self
            .owners
            .set_tunnel_addr(node, Some(ip.to_string()))
            .await
        {
            // Not recorded on the node: give the address back rather than leak it.
            let _ = self.release_handle(&handle).await;
            return Err(e);
        }
        Ok(Some(ip))
    }

    async fn held_by(&self, ip: IpAddr, block_size: u8, handle: &str) -> Result<bool> {
        let Some(cidr) = block::block_of(ip, block_size) else {
            return Ok(false);
        };
        let Some(b) = self
            .store
            .all::<IPAMBlock>()
            .get(&block_name(&cidr))
            .await?
        else {
            return Ok(false);
        };
        Ok(block::allocations(&b.spec)
            .iter()
            .any(|a| a.ip == ip && a.handle.as_deref() == Some(handle)))
    }
}
