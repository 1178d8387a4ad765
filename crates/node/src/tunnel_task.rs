//! The tunnel concern: when any pool selecting this node has IPIP on, hold a tunnel address
//! (IPAM handle `ipip-tunnel-addr-<node>`) and put it on tunl0; when none does, release it
//! and take it off. Publishes whether tunl0 is usable, which decides the routes' encapsulation.

use std::sync::Arc;
use std::time::Duration;

use brindle_felix_lite::tunnel::{self, TunnelError, TunnelWant};
use brindle_ipam::Ipam;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::desired::{self, Me};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

pub struct TunnelTask {
    pub me: Me,
    pub ipam: Ipam,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub handle: rtnetlink::Handle,
    pub mtu: u32,
    pub ok: watch::Sender<bool>,
    pub metrics: Metrics,
}

impl TunnelTask {
    pub async fn run(mut self) {
        let mut no_ipip_logged = false;
        let mut last: Option<Option<std::net::IpAddr>> = None;
        loop {
            let snap = self.snap.borrow_and_update().clone();
            if snap.synced {
                let had = snap
                    .nodes
                    .get(&self.me.name)
                    .and_then(|n| n.bgp.ipv4_ipip_tunnel_addr.clone());
                // Nothing to do (and no datastore round trip) while no pool wants IPIP and
                // the node holds no tunnel address.
                if desired::wants_ipip(&snap) || had.is_some() {
                    match self.ipam.ensure_tunnel_address(&self.me.name).await {
                        Ok(addr) => {
                            self.metrics.ipam("ensure_tunnel_address", true);
                            if last != Some(addr) {
                                info!(address = ?addr, "tunnel address");
                                last = Some(addr);
                            }
                            let v4 = addr.and_then(|a| match a {
                                std::net::IpAddr::V4(v) => Some(v),
                                _ => None,
                            });
                            let want = TunnelWant {
                                address: v4,
                                mtu: self.mtu,
                            };
                            match tunnel::ensure(&self.handle, want).await {
                                Ok(ch) => {
                                    if ch != Default::default() {
                                        info!(created = ch.created, added = ?ch.added, removed = ?ch.removed, mtu = self.mtu, "tunl0 updated");
                                    }
                                    self.ok.send_if_modified(|o| {
                                        let n = v4.is_some();
                                        std::mem::replace(o, n) != n
                                    });
                                }
                                Err(TunnelError::NoIpip(e)) => {
                                    if !no_ipip_logged {
                                        warn!("tunl0: this kernel has no IPIP support ({e}); running without IPIP encapsulation: routes to other nodes are direct");
                                        no_ipip_logged = true;
                                    }
                                    self.ok.send_if_modified(|o| std::mem::replace(o, false));
                                }
                                Err(e) => warn!("{e}"),
                            }
                        }
                        Err(e) => {
                            self.metrics.ipam("ensure_tunnel_address", false);
                            warn!("tunnel address: {e} (retrying)");
                        }
                    }
                }
            }
            tokio::select! {
                r = self.snap.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}
