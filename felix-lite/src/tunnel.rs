//! `tunl0`, the IPIP device (Calico's Felix `ipip_mgr.go` behaviour, REFERENCE §A3): created
//! when missing, admin up, MTU set, and the node's tunnel address as its only IPv4 address
//! (a /32). With no tunnel address wanted, every IPv4 address is taken off it; the device
//! itself is left (the ipip module's fallback device cannot be deleted anyway).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkIpIp, LinkUnspec};

pub const TUNNEL_DEVICE: &str = "tunl0";
/// IPIP's outer header: tunl0's MTU is the uplink's less this.
pub const IPIP_OVERHEAD: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The kernel cannot make IPIP devices (no `ipip` module, as on the development hosts).
    #[error("this kernel has no IPIP support (creating tunl0: {0})")]
    NoIpip(String),
    #[error("{what} on tunl0: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What the device should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelWant {
    /// None: no pool needs IPIP; addresses are removed.
    pub address: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// What was done, for the caller's one log line per change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TunnelChanges {
    pub created: bool,
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

fn nl(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> TunnelError {
    move |source| TunnelError::Netlink { what, source }
}

/// Brings tunl0 to `want`. Idempotent: a second call with the same input changes nothing.
pub async fn ensure(handle: &Handle, want: TunnelWant) -> Result<TunnelChanges, TunnelError> {
    let mut changes = TunnelChanges::default();
    let mut index = crate::link_index(handle, TUNNEL_DEVICE).await;
    if index.is_none() {
        let Some(_) = want.address else {
            return Ok(changes); // nothing to take off a device that is not there
        };
        // Asking for an ipip link loads the module, which makes the fallback tunl0 itself:
        // EEXIST then means it is there now.
        let msg = LinkIpIp::new(TUNNEL_DEVICE).mtu(want.mtu).up().build();
        match handle.link().add(msg).execute().await {
            Ok(()) => changes.created = true,
            Err(e) if crate::errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(TunnelError::NoIpip(e.to_string())),
        }
        index = crate::link_index(handle, TUNNEL_DEVICE).await;
    }
    let Some(index) = index else {
        return Err(TunnelError::NoIpip("tunl0 did not appear".into()));
    };
    if want.address.is_some() {
        let msg = LinkUnspec::new_with_index(index).mtu(want.mtu).up().build();
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl("setting MTU and up"))?;
    }
    let mut have = vec![];
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(m) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        if m.header.family != AddressFamily::Inet {
            continue;
        }
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let Some(ip) = ip {
            if Some(ip) == want.address && m.header.prefix_len == 32 {
                have.push(ip);
            } else {
                handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl("removing an address"))?;
                changes.removed.push(ip);
            }
        }
    }
    if let Some(a) = want.address {
        if !have.contains(&a) {
            handle
                .address()
                .add(index, IpAddr::V4(a), 32)
                .replace()
                .execute()
                .await
                .map_err(nl("adding the tunnel address"))?;
            changes.added.push(a);
        }
    }
    Ok(changes)
}
