//! The tunnel concern: when any pool selecting this node has IPIP on, hold a tunnel address
//! (IPAM handle `ipip-tunnel-addr-<node>`) and put it on tunl0; when none does, release it
//! and take it off. Publishes whether tunl0 is usable, which decides the routes' encapsulation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use brindle_api::IPPoolSpec;
use brindle_felix_lite::tunnel::{self, TunnelError, TunnelWant};
use brindle_ipam::Ipam;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::desired::{self, Me};
use crate::metrics::Metrics;
use crate::snapshot::{NodeInfo, Snapshot};

pub struct TunnelTask {
    pub me: Me,
    pub ipam: Ipam,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub handle: rtnetlink::Handle,
    pub mtu: u32,
    pub ok: watch::Sender<bool>,
    pub metrics: Metrics,
    pub pulse: crate::supervise::Pulse,
}

/// tunl0's drift repair (an address removed by hand, tunl0 deleted).
const REPAIR_EVERY: Duration = Duration::from_secs(30);
/// The longest one pass may take (datastore calls included).
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// What a pass depends on: the pools and this node's record. Other changes (pods, other
/// nodes' blocks) cost no datastore round trip.
type Inputs = (Vec<IPPoolSpec>, Option<NodeInfo>);

impl TunnelTask {
    pub async fn run(mut self) {
        let mut settled: Option<Inputs> = None;
        let mut timer_fired = false;
        let mut address: Option<Option<IpAddr>> = None;
        let mut no_ipip_logged = false;
        // tunl0 holds no address of ours (nothing to take off when no pool wants IPIP). A
        // failed pass after the address was released leaves it false, so the retry still
        // takes the address off tunl0.
        let mut tunl0_clean = true;
        // A fixed interval, not re-armed by every snapshot change: under pod churn a timer
        // that restarted on each change would never fire.
        let mut repair =
            tokio::time::interval_at(tokio::time::Instant::now() + REPAIR_EVERY, REPAIR_EVERY);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.pulse.beat();
            let snap = self.snap.borrow_and_update().clone();
            let inputs: Inputs = (
                snap.pools.values().cloned().collect(),
                snap.nodes.get(&self.me.name).cloned(),
            );
            if snap.synced && (timer_fired || settled.as_ref() != Some(&inputs)) {
                // Bounded: a hung datastore call must not hold the loop (its heartbeat is
                // the agent's liveness, and a datastore outage is not fixed by a restart).
                let pass = self.pass(&snap, &mut address, &mut no_ipip_logged, &mut tunl0_clean);
                let done = match tokio::time::timeout(PASS_TIMEOUT, pass).await {
                    Ok(done) => done,
                    Err(_) => {
                        warn!("tunnel: a pass did not finish within {} s (the datastore slow?); retrying", PASS_TIMEOUT.as_secs());
                        false
                    }
                };
                settled = done.then_some(inputs);
                timer_fired = false;
            }
            tokio::select! {
                r = self.snap.changed() => if r.is_err() { return },
                // A periodic pass repairs drift (an address removed by hand, tunl0 deleted).
                _ = repair.tick() => timer_fired = true,
            }
        }
    }

    /// One pass; false when it should be retried.
    async fn pass(
        &self,
        snap: &Snapshot,
        address: &mut Option<Option<IpAddr>>,
        no_ipip_logged: &mut bool,
        tunl0_clean: &mut bool,
    ) -> bool {
        let had = snap
            .nodes
            .get(&self.me.name)
            .and_then(|n| n.bgp.ipv4_ipip_tunnel_addr.clone());
        // No pool wants IPIP, the node holds no tunnel address and tunl0 has none of ours:
        // nothing to do.
        if !desired::wants_ipip(snap) && had.is_none() && *tunl0_clean {
            return true;
        }
        *tunl0_clean = false;
        let addr = match self.ipam.ensure_tunnel_address(&self.me.name).await {
            Ok(a) => {
                self.metrics.ipam("ensure_tunnel_address", true);
                a
            }
            Err(e) => {
                self.metrics.ipam("ensure_tunnel_address", false);
                warn!("tunnel address: {e} (retrying)");
                return false;
            }
        };
        if *address != Some(addr) {
            info!(address = ?addr, "tunnel address");
            *address = Some(addr);
        }
        let v4: Option<Ipv4Addr> = match addr {
            Some(IpAddr::V4(v)) => Some(v),
            _ => None,
        };
        let want = TunnelWant {
            address: v4,
            mtu: self.mtu,
        };
        let usable = match tunnel::ensure(&self.handle, want).await {
            Ok(ch) => {
                if ch != Default::default() {
                    info!(created = ch.created, added = ?ch.added, removed = ?ch.removed, mtu = self.mtu, "tunl0 updated");
                }
                *tunl0_clean = v4.is_none();
                v4.is_some()
            }
            Err(TunnelError::NoIpip(e)) => {
                *tunl0_clean = true; // no tunl0 at all
                if !*no_ipip_logged {
                    warn!("tunl0: this kernel has no IPIP support ({e}); running without IPIP encapsulation: routes to other nodes are direct");
                    *no_ipip_logged = true;
                }
                false
            }
            Err(e) => {
                warn!("{e}");
                return false;
            }
        };
        self.ok
            .send_if_modified(|o| std::mem::replace(o, usable) != usable);
        true
    }
}
