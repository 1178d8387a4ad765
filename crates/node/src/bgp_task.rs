//! The one owner of the embedded speaker. It turns each new snapshot into the speaker's
//! desired state ([`crate::desired`]) and applies the difference: peers added, removed or
//! changed, prefixes originated or withdrawn, encapsulation rules replaced (routes are
//! re-installed in place, never withdrawn). A change of AS, router ID, listen port or cluster
//! ID restarts the speaker inside the process, gracefully: kernel routes stay, peers keep ours.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_bgp::rails::Rails;
use brindle_bgp::speaker::{
    self, Encap, GracefulRestart, KernelConfig, Origination, PeerConfig, Speaker, SpeakerConfig,
};
use ipnetwork::IpNetwork;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::desired::{self, DesiredPeer, Globals, Me, PeerKind, Warning};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// What the rest of the agent may see of the speaker: its handle (None while it restarts)
/// and the kind of each configured peer (for status output).
#[derive(Clone, Default)]
pub struct SpeakerView {
    pub speaker: Option<Speaker>,
    pub kinds: BTreeMap<IpAddr, PeerKind>,
}

pub struct BgpTask {
    pub me: Me,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    /// tunl0 is up with its address (routes may use IPIP).
    pub tunnel_ok: watch::Receiver<bool>,
    pub metrics: Metrics,
    pub control_socket: PathBuf,
    pub view: watch::Sender<SpeakerView>,
    pub stop: oneshot::Receiver<()>,
    /// Reads the host's addresses (protected by the import rails).
    pub handle: rtnetlink::Handle,
    /// How often the kernel writer re-reads the table and repairs our routes.
    pub route_refresh: Duration,
    pub pulse: crate::supervise::Pulse,
}

struct Running {
    /// Peers the speaker refused, with the error last logged (said once, not per pass).
    refused: BTreeMap<IpAddr, String>,
    speaker: Speaker,
    globals: Globals,
    peers: BTreeMap<IpAddr, DesiredPeer>,
    origins: BTreeMap<IpNetwork, bool>,
    encap: Vec<(IpNetwork, Encap)>,
    rails: Rails,
    control: tokio::task::JoinHandle<()>,
}

fn peer_config(d: &DesiredPeer) -> PeerConfig {
    let mut p = PeerConfig::new(d.addr, d.asn);
    p.port = d.port;
    p.password = d.password.clone();
    p.passive = d.passive;
    p.rr_client = d.rr_client;
    p.hold_time = d.hold_time;
    p.source = d.source;
    p.ttl_security = d.ttl_security;
    // BIRD's "connect delay time 2" in Calico's template: a peer that is starting is
    // reached within about 2 s of listening.
    p.connect_retry = Duration::from_secs(2);
    // One session per family, as Calico has: an IPv4 peer carries IPv4 routes.
    p.ipv4 = d.addr.is_ipv4();
    p.ipv6 = d.addr.is_ipv6();
    p.peer_type = Some(d.kind.as_str().to_string());
    p.member = d.member;
    p.router_id = d.router_id;
    p.max_prefixes = d.max_prefixes;
    p.import = d.import.clone();
    p.export = d.export.clone();
    p
}

fn origination(prefix: IpNetwork, blackhole: bool) -> Origination {
    Origination {
        prefix: Some(prefix),
        blackhole,
        ..Default::default()
    }
}

impl BgpTask {
    pub async fn run(mut self) {
        let mut warned: BTreeSet<Warning> = BTreeSet::new();
        let mut running: Option<Running> = None;
        // Nothing is configured before the first full list: a speaker started on a partial
        // view would withdraw what it has not seen yet.
        while !self.snap.borrow().synced {
            self.pulse.beat();
            tokio::select! {
                r = self.snap.changed() => if r.is_err() { return },
                _ = &mut self.stop => return,
                _ = self.pulse.due() => {}
            }
        }
        loop {
            self.pulse.beat();
            let started = Instant::now();
            let snap = self.snap.borrow_and_update().clone();
            let tunnel_ok = *self.tunnel_ok.borrow_and_update();
            let host = match crate::register::interfaces(&self.handle).await {
                Ok(ifaces) => ifaces.into_iter().flat_map(|i| i.addrs).collect(),
                Err(e) => {
                    // Our own address and subnet are protected all the same.
                    warn!("listing the host's addresses for the import rails: {e}");
                    vec![]
                }
            };
            let mut warnings = vec![];
            let want = Want {
                globals: desired::globals(&snap, &self.me),
                peers: desired::peers(&snap, &self.me, &mut warnings),
                origins: desired::exports(&snap, &self.me),
                encap: desired::encap(&snap, tunnel_ok),
                rails: desired::rails(&snap, &self.me, &host, &mut warnings),
            };
            desired::ipv4_pools_here(&snap, &self.me, &mut warnings);
            for w in warnings {
                if warned.insert(w.clone()) {
                    warn!(resource = %w.resource, "{}", w.reason);
                }
            }
            running = match running {
                Some(r) if r.globals == want.globals => Some(self.update(r, &want).await),
                Some(r) => {
                    info!(old = ?r.globals, new = ?want.globals, "speaker settings changed; restarting the speaker gracefully");
                    self.view.send_modify(|v| v.speaker = None);
                    r.control.abort();
                    let _ = r.speaker.shutdown(true).await;
                    self.start(&want).await
                }
                None => self.start(&want).await,
            };
            if let Some(r) = &running {
                self.view.send_replace(SpeakerView {
                    speaker: Some(r.speaker.clone()),
                    kinds: r.peers.iter().map(|(a, p)| (*a, p.kind)).collect(),
                });
            }
            self.metrics
                .programming
                .observe(started.elapsed().as_secs_f64());
            let retry = running.is_none();
            let retry_at = tokio::time::Instant::now() + Duration::from_secs(5);
            // The host's addresses change without a snapshot (an interface added).
            let refresh_at = tokio::time::Instant::now() + Duration::from_secs(30);
            let stop = loop {
                tokio::select! {
                    r = self.snap.changed() => {
                        if r.is_err() { break true }
                        // Only this node's pods moved: nothing peering reads, nothing to do.
                        if self.snap.borrow().changed_since(&snap).routing() { break false }
                    }
                    r = self.tunnel_ok.changed() => break r.is_err(),
                    _ = tokio::time::sleep_until(retry_at), if retry => break false,
                    _ = tokio::time::sleep_until(refresh_at) => break false,
                    _ = &mut self.stop => break true,
                }
            };
            if stop {
                break;
            }
        }
        if let Some(r) = running {
            info!("stopping the speaker gracefully: kernel routes stay, peers keep ours");
            r.control.abort();
            let _ = r.speaker.shutdown(true).await;
        }
    }

    async fn start(&self, want: &Want) -> Option<Running> {
        let g = &want.globals;
        let cfg = SpeakerConfig {
            local_as: g.asn,
            router_id: g.router_id,
            listen: Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                g.listen_port,
            )),
            cluster_id: g.cluster_id,
            graceful_restart: GracefulRestart::default(),
            next_hop_v4: self.me.ip(),
            // IPv6 routes go over IPv6 sessions only (as Calico's bird6), next hop the
            // session's own address: never over an IPv4 session with an invented next hop.
            next_hop_v6: None,
            // A node passes on nothing it learned, but as a reflector among nodes.
            no_transit: true,
            rails: want.rails.clone(),
            kernel: Some(KernelConfig {
                metric: 0,
                encap: want.encap.clone(),
                direct_subnets: self
                    .me
                    .subnet()
                    .map(IpNetwork::V4)
                    .into_iter()
                    .chain(self.me.subnet6().map(IpNetwork::V6))
                    .collect(),
                rescan: self.route_refresh,
            }),
        };
        let speaker = match Speaker::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                error!("the BGP speaker could not start (retrying in 5 s): {e}");
                return None;
            }
        };
        info!(asn = g.asn, router_id = %g.router_id, port = g.listen_port, cluster_id = ?g.cluster_id, "BGP speaker started");
        let path = self.control_socket.clone();
        let s = speaker.clone();
        let control = tokio::spawn(async move {
            if let Err(e) = speaker::serve_control(s, &path).await {
                error!(socket = %path.display(), "control socket failed: {e}");
            }
        });
        let r = Running {
            refused: BTreeMap::new(),
            speaker,
            globals: g.clone(),
            peers: BTreeMap::new(),
            origins: BTreeMap::new(),
            encap: want.encap.clone(),
            rails: want.rails.clone(),
            control,
        };
        // Originations first, peers after: a peer's first table dump (and End-of-RIB) then
        // already holds our blocks, so a peer that kept them through our restart never sees
        // them withdrawn.
        let r = self.update(r, want).await;
        // Every peer of the snapshot is added: only now may End-of-RIB from all of them end
        // our own restart (and purge the routes nobody sent again).
        let _ = r.speaker.peers_configured().await;
        Some(r)
    }

    async fn update(&self, mut r: Running, want: &Want) -> Running {
        for (p, bh) in &want.origins {
            if r.origins.get(p) != Some(bh) {
                info!(prefix = %p, blackhole = bh, "originating");
                let _ = r.speaker.originate(origination(*p, *bh)).await;
            }
        }
        for p in r.origins.keys() {
            if !want.origins.contains_key(p) {
                info!(prefix = %p, "withdrawing");
                let _ = r.speaker.withdraw(*p).await;
            }
        }
        r.origins = want.origins.clone();
        if r.rails != want.rails {
            info!(
                protected = want.rails.protected.len(),
                pools = want.rails.pools.len(),
                local_blocks = want.rails.local_blocks.len(),
                "import rails changed"
            );
            let _ = r.speaker.set_rails(want.rails.clone()).await;
            r.rails = want.rails.clone();
        }
        if r.encap != want.encap {
            info!(rules = ?want.encap, "route encapsulation changed; re-installing routes in place");
            let _ = r.speaker.set_encap(want.encap.clone()).await;
            r.encap = want.encap.clone();
        }
        for (addr, old) in r.peers.iter_mut() {
            // Only the filters changed: applied in place, the session stays.
            if let Some(new) = want
                .peers
                .get(addr)
                .filter(|n| *n != old && n.same_session(old))
            {
                info!(peer = %addr, "BGPFilters changed; applying them in place");
                match r
                    .speaker
                    .set_policies(*addr, new.import.clone(), new.export.clone())
                    .await
                {
                    Ok(()) => *old = new.clone(),
                    Err(e) => warn!(peer = %addr, "applying its filters: {e}"),
                }
            }
        }
        for (addr, old) in &r.peers {
            let keep = want.peers.get(addr) == Some(old);
            if !keep {
                info!(peer = %addr, "removing peer");
                if let Err(e) = r.speaker.remove_peer(*addr).await {
                    warn!(peer = %addr, "removing peer: {e}");
                }
            }
        }
        let before = std::mem::take(&mut r.peers);
        for (addr, d) in &want.peers {
            if before.get(addr) == Some(d) {
                r.peers.insert(*addr, d.clone());
                continue;
            }
            if !r.refused.contains_key(addr) {
                info!(peer = %addr, asn = d.asn, kind = ?d.kind, node = ?d.node, passive = d.passive, rr_client = d.rr_client, "adding peer");
            }
            match r.speaker.add_peer(peer_config(d)).await {
                Ok(()) => {
                    r.peers.insert(*addr, d.clone());
                    r.refused.remove(addr);
                }
                Err(e) => {
                    let e = e.to_string();
                    if r.refused.get(addr) != Some(&e) {
                        warn!(peer = %addr, "adding peer: {e} (retried on every change, said again only if the error changes)");
                        r.refused.insert(*addr, e);
                    }
                }
            }
        }
        r
    }
}

struct Want {
    rails: Rails,
    globals: Globals,
    peers: BTreeMap<IpAddr, DesiredPeer>,
    origins: BTreeMap<IpNetwork, bool>,
    encap: Vec<(IpNetwork, Encap)>,
}
