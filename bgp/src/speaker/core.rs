//! The core task: owns the RIB and every peer's Adj-RIB-Out. Sessions report to it, the
//! handle commands it, and it writes encoded UPDATEs to each established peer's writer.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::kernel_task::{self, Control, KernelStats, Ops, Route};
use super::pack::is_end_of_rib;
use super::session::{Event, Inflight, Out, SessionCmd, SessionTask, Writer};
use super::{
    socket, Command, Encap, Origination, PeerConfig, PeerStatus, RibFilter, RibRoute,
    SpeakerConfig, SpeakerError,
};
use crate::adj_out::ExportSettings;
use crate::codec::{
    Afi, Attributes, Capability, Ctx, GrFamily, MpReach, Nlri, Origin, Treatment, Update,
    SAFI_UNICAST,
};
use crate::fsm::{self, Negotiated, State};
use crate::nexthop;
use crate::policy::Verdict;
use crate::rails::Rails;
use crate::rib::{Change, Path, PeerId, PeerInfo, Rib, LOCAL};

mod export;
use export::{export_all, ExportCache};

/// Timers and accepted connections, delivered back to the core.
enum Internal {
    Accepted(TcpStream, SocketAddr),
    /// Connections from addresses that are not peers have waited long enough.
    ExpireWaiting,
    /// A restarting peer's restart time (or stale time) ran out.
    SweepStale {
        peer: PeerId,
        epoch: u64,
    },
    ConvergeDeadline,
}

struct Up {
    /// Who the peer is and its export policy (its Adj-RIB-Out lives in its writer task).
    settings: ExportSettings,
    writer: Writer,
    /// How the session encodes (update groups encode for it).
    ctx: Ctx,
    advertised: Arc<std::sync::atomic::AtomicUsize>,
    v4: bool,
    v6: bool,
    nh4: Option<Ipv4Addr>,
    nh6: Option<Ipv6Addr>,
    ebgp: bool,
    /// The peer's graceful-restart time, from its OPEN.
    restart_time: Option<u16>,
    /// The peer takes ROUTE-REFRESH (we may ask for its routes again).
    route_refresh: bool,
    /// While we restart, we wait for this peer's End-of-RIB: it has graceful restart (RFC
    /// 4724 §4.1 leaves out the others).
    eor_expected: bool,
    /// The peer has our table (and End-of-RIB): changes go to it from now on. Not yet while
    /// we restart, unless it restarts too.
    table_sent: bool,
}

struct Peer {
    cfg: PeerConfig,
    id: PeerId,
    cmd: mpsc::UnboundedSender<SessionCmd>,
    state: State,
    since: Instant,
    last_error: Option<String>,
    router_id: Option<Ipv4Addr>,
    up: Option<Up>,
    /// UPDATEs the session has handed over and this task has not processed yet.
    inflight: Arc<Inflight>,
    rejected: HashSet<(IpNetwork, Option<u32>)>,
    /// Families (IPv4, IPv6) in which this peer's paths are stale (it is restarting).
    stale: [bool; 2],
    /// Bumped on every session change, so old timers know they are old.
    epoch: u64,
    /// End-of-RIB seen since the session came up.
    eor: bool,
    /// Paths the rails refused (all time) and whether this session logged one already.
    refused_by_rails: u64,
    rails_logged: bool,
    /// Over its prefix limit: the session is being closed; what it still sends is dropped.
    over_limit: bool,
    limit_hits: u64,
}

pub struct Core {
    cfg: SpeakerConfig,
    rib: Rib,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<IpAddr, PeerId>,
    next_id: PeerId,
    origins: HashMap<IpNetwork, Origination>,
    cmds: mpsc::Receiver<Command>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal: mpsc::UnboundedReceiver<Internal>,
    listener: Option<Arc<tokio::net::TcpListener>>,
    /// Holds the listener too: aborted on shutdown so the port is free for a new speaker.
    accept_task: Option<tokio::task::JoinHandle<()>>,
    kernel: Option<Arc<Ops>>,
    pub(super) kernel_stats: Option<Arc<KernelStats>>,
    encap: Vec<(IpNetwork, Encap)>,
    direct_subnets: Vec<IpNetwork>,
    /// We found our kernel routes from before a restart; cleared once converged (sessions
    /// read it for their OPEN's restart bit).
    restarting: Arc<std::sync::atomic::AtomicBool>,
    /// The owner has added every peer it starts with: until then, End-of-RIB from all the
    /// peers added so far does not mean converged.
    peers_configured: bool,
    cache: ExportCache,
    /// Peers whose session came up in the batch being handled: they get the table after it.
    tables_due: Vec<PeerId>,
    rails: Rails,
    /// Lines the network can trigger: connections refused at accept, UPDATEs with errors.
    refused_log: super::loglimit::LogLimit,
    update_errors_log: super::loglimit::LogLimit,
    /// Connections from addresses that may become peers in a moment.
    waiting: super::waiting::Waiting,
}

fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

impl Core {
    pub async fn start(
        cfg: SpeakerConfig,
        cmds: mpsc::Receiver<Command>,
    ) -> Result<Core, SpeakerError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (internal_tx, internal) = mpsc::unbounded_channel();
        let mut rib = Rib::new(cfg.local_as, cfg.router_id);
        rib.cluster_id = cfg.cluster_id;
        rib.no_transit = cfg.no_transit;
        let rails = cfg.rails.clone();
        let (listener, accept_task) = match cfg.listen {
            Some(addr) => {
                let l = Arc::new(
                    socket::listen(addr).map_err(|source| SpeakerError::Listen { addr, source })?,
                );
                let task = tokio::spawn(accept_loop(l.clone(), internal_tx.clone()));
                info!(%addr, "listening for BGP connections");
                (Some(l), Some(task))
            }
            None => (None, None),
        };
        let (kernel, kernel_stats, restarting) = match &cfg.kernel {
            Some(k) => {
                let s = kernel_task::start(k, cfg.graceful_restart.enabled).await?;
                (Some(s.ops), Some(s.stats), s.restarting)
            }
            None => (None, None, false),
        };
        let (encap, direct_subnets) = cfg
            .kernel
            .as_ref()
            .map(|k| (k.encap.clone(), k.direct_subnets.clone()))
            .unwrap_or_default();
        // Restarting: routes of our last run were in the kernel, or the owner says so (a
        // speaker without a kernel, such as a reflector).
        let restarting =
            cfg.graceful_restart.enabled && (restarting || cfg.graceful_restart.recovering);
        if restarting {
            info!(
                deferral_secs = cfg.graceful_restart.restart_time,
                "restarting: route selection, kernel changes and our advertisements wait for End-of-RIB from every peer (RFC 4724 §4.1)"
            );
            let tx = internal_tx.clone();
            let wait = Duration::from_secs(u64::from(cfg.graceful_restart.restart_time));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Internal::ConvergeDeadline);
            });
        }
        Ok(Core {
            cfg,
            rib,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            origins: HashMap::new(),
            cmds,
            events_tx,
            events,
            internal_tx,
            internal,
            listener,
            accept_task,
            kernel,
            kernel_stats,
            encap,
            direct_subnets,
            restarting: Arc::new(std::sync::atomic::AtomicBool::new(restarting)),
            peers_configured: false,
            cache: ExportCache::default(),
            tables_due: vec![],
            rails,
            refused_log: super::loglimit::per_minute(),
            update_errors_log: super::loglimit::per_minute(),
            waiting: Default::default(),
        })
    }

    pub async fn run(mut self) {
        loop {
            tokio::select! {
                c = self.cmds.recv() => match c {
                    Some(Command::Shutdown { graceful, done }) => {
                        self.shutdown(graceful).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                    None => {
                        self.shutdown(false).await;
                        return;
                    }
                },
                Some(e) = self.events.recv() => self.events_batch(e),
                Some(i) = self.internal.recv() => self.internal(i),
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::AddPeer(p, reply) => {
                let _ = reply.send(self.add_peer(*p));
            }
            Command::RemovePeer(addr, reply) => {
                let _ = reply.send(self.remove_peer(addr));
            }
            Command::Originate(o) => self.originate(o),
            Command::Withdraw(p) => {
                self.origins.remove(&p);
                let ch: Vec<Change> = self.rib.withdraw(p, LOCAL, None).into_iter().collect();
                self.propagate(&ch);
            }
            Command::SetEncap(rules) => {
                self.encap = rules;
                let all: Vec<Change> = self.rib.iter().collect();
                self.kernel_changes(&all);
            }
            Command::SetDirectSubnets(subnets) => {
                self.direct_subnets = subnets;
                let all: Vec<Change> = self.rib.iter().collect();
                self.kernel_changes(&all);
            }
            Command::SetRails(r) => self.set_rails(*r),
            Command::SetPolicies {
                addr,
                import,
                export,
                reply,
            } => {
                let _ = reply.send(self.set_policies(addr, *import, *export));
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.status());
            }
            Command::PeersConfigured => {
                self.peers_configured = true;
                self.check_converged();
            }
            Command::Rib(f, reply) => {
                let _ = reply.send(self.dump(&f));
            }
            Command::Shutdown { .. } => {} // handled in run
        }
    }

    fn is_restarting(&self) -> bool {
        self.restarting.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn capabilities(&self, p: &PeerConfig) -> Vec<Capability> {
        let mut caps = vec![];
        let families: Vec<Afi> = [(p.ipv4, Afi::Ipv4), (p.ipv6, Afi::Ipv6)]
            .into_iter()
            .filter(|f| f.0)
            .map(|f| f.1)
            .collect();
        for afi in &families {
            caps.push(Capability::Multiprotocol {
                afi: *afi,
                safi: SAFI_UNICAST,
            });
        }
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::ExtendedMessage);
        if self.cfg.graceful_restart.enabled && p.graceful_restart {
            // Our routes kept forwarding through a restart: in the kernel, or (told `-R`) a
            // speaker outside the forwarding path (a reflector) that lost nothing.
            let forwarding = self.kernel.is_some() || self.cfg.graceful_restart.recovering;
            caps.push(Capability::GracefulRestart {
                restarting: self.is_restarting(),
                time: self.cfg.graceful_restart.restart_time.min(4095),
                families: families
                    .iter()
                    .map(|afi| GrFamily {
                        afi: *afi,
                        safi: SAFI_UNICAST,
                        forwarding,
                    })
                    .collect(),
            });
        }
        caps.push(Capability::FourOctetAs(self.cfg.local_as));
        caps
    }

    fn add_peer(&mut self, p: PeerConfig) -> Result<(), SpeakerError> {
        let addr = unmap(p.addr);
        if self.by_addr.contains_key(&addr) {
            return Err(SpeakerError::DuplicatePeer(addr));
        }
        if let (Some(l), Some(key)) = (&self.listener, &p.password) {
            socket::listener_key(l, addr, Some(key))
                .map_err(|source| SpeakerError::Md5 { peer: addr, source })?;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.rib.add_peer(PeerInfo {
            id,
            asn: p.asn,
            router_id: Ipv4Addr::UNSPECIFIED,
            addr,
            rr_client: p.rr_client,
            member: p.member,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let inflight = Arc::new(Inflight::default());
        let task = SessionTask {
            id,
            restarting: self.restarting.clone(),
            inflight: inflight.clone(),
            fsm_cfg: fsm::Config {
                local_as: self.cfg.local_as,
                router_id: self.cfg.router_id,
                peer_as: p.asn,
                hold_time: p.hold_time,
                connect_retry_secs: p.connect_retry.as_secs().max(1) as u32,
                passive: p.passive,
                capabilities: self.capabilities(&p),
                expect_id: p.router_id,
            },
            cfg: p.clone(),
            local_as: self.cfg.local_as,
            router_id: self.cfg.router_id,
            events: self.events_tx.clone(),
            cmds: rx,
        };
        tokio::spawn(task.run());
        info!(peer = %addr, asn = p.asn, passive = p.passive, rr_client = p.rr_client, "peer added");
        self.by_addr.insert(addr, id);
        self.peers.insert(
            id,
            Peer {
                cfg: p,
                id,
                cmd: tx,
                state: State::Idle,
                since: Instant::now(),
                last_error: None,
                router_id: None,
                up: None,
                inflight,
                rejected: HashSet::new(),
                stale: [false; 2],
                epoch: 0,
                eor: false,
                refused_by_rails: 0,
                rails_logged: false,
                over_limit: false,
                limit_hits: 0,
            },
        );
        // A connection it made before we knew of it (held a moment): its session's now —
        // unless the peer has a TCP MD5 key, which that connection was accepted without.
        for (stream, from) in self.waiting.take(addr) {
            // Nor to a GTSM peer: its minimum TTL was not on the socket while it waited.
            if self
                .peers
                .get(&id)
                .is_some_and(|p| p.cfg.password.is_some() || p.cfg.ttl_security.is_some())
            {
                debug!(peer = %addr, "dropped a connection accepted before its MD5 key or minimum TTL was set");
                continue;
            }
            self.accepted(stream, from);
        }
        Ok(())
    }

    fn remove_peer(&mut self, addr: IpAddr) -> Result<(), SpeakerError> {
        let addr = unmap(addr);
        let id = self
            .by_addr
            .remove(&addr)
            .ok_or(SpeakerError::NoPeer(addr))?;
        if let Some(p) = self.peers.remove(&id) {
            let (done, _) = oneshot::channel();
            let _ = p.cmd.send(SessionCmd::Stop { notify: true, done });
            if let (Some(l), Some(_)) = (&self.listener, &p.cfg.password) {
                let _ = socket::listener_key(l, addr, None);
            }
        }
        self.rib.mark_stale(id);
        self.sweep(id, None);
        self.rib.remove_peer(id);
        info!(peer = %addr, "peer removed");
        Ok(())
    }

    fn originate(&mut self, o: Origination) {
        let Some(prefix) = o.prefix else { return };
        let mut a = Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            communities: o.communities.clone(),
            large_communities: o.large_communities.clone(),
            med: o.med,
            local_pref: o.local_pref,
            ..Attributes::default()
        };
        if prefix.is_ipv6() {
            a.mp_reach = Some(MpReach {
                afi: Afi::Ipv6,
                safi: SAFI_UNICAST,
                next_hops: vec![],
                nlri: vec![],
            });
        }
        self.origins.insert(prefix, o);
        let path = Path {
            peer: LOCAL,
            path_id: None,
            attrs: Arc::new(a),
            stale: false,
        };
        let ch: Vec<Change> = self.rib.insert(prefix, path).into_iter().collect();
        // A changed blackhole flag alone does not move the best path: redo the kernel.
        if ch.is_empty() {
            if let Some(c) = self.rib.current(&prefix) {
                self.kernel_changes(&[c]);
            }
        }
        self.propagate(&ch);
    }

    /// One session event. UPDATEs are imported into `pending` (exported by the caller, in
    /// batches); anything else but a state change first sends out what is pending, so order
    /// is kept. (A thousand sessions coming up report four state changes each: sending at
    /// each would cut a reflector's batches down to a change or two, each sent to every
    /// peer.)
    fn event(&mut self, e: Event, pending: &mut Vec<Change>) {
        match e {
            Event::Update { peer, update } => {
                self.update(peer, *update, pending);
                if let Some(p) = self.peers.get(&peer) {
                    p.inflight.done();
                }
                return;
            }
            Event::State { peer, state } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.state = state;
                    p.since = Instant::now();
                }
                return;
            }
            Event::Up { peer, .. } if self.quiet_up(peer) => {}
            _ => {
                self.flush(pending);
            }
        }
        match e {
            Event::Update { .. } | Event::State { .. } => {} // handled above
            Event::Up {
                peer,
                neg,
                local,
                writer,
                advertised,
            } => self.up(peer, *neg, local, writer, advertised),
            Event::Down {
                peer,
                reason,
                keep_routes,
            } => self.down(peer, reason, keep_routes),
            Event::Refresh { peer, rr } => self.refresh(peer, rr.afi),
        }
    }

    fn up(
        &mut self,
        id: PeerId,
        neg: Negotiated,
        local: SocketAddr,
        writer: Writer,
        advertised: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let ebgp = neg.peer_as != self.cfg.local_as;
        let addr = unmap(p.cfg.addr);
        let info = PeerInfo {
            id,
            asn: neg.peer_as,
            router_id: neg.peer_id,
            addr,
            rr_client: p.cfg.rr_client,
            member: p.cfg.member,
        };
        self.rib.add_peer(info.clone());
        let local_ip = unmap(local.ip());
        let nh4 = match local_ip {
            IpAddr::V4(a) => Some(a),
            _ => self.cfg.next_hop_v4,
        };
        let nh6 = match local_ip {
            IpAddr::V6(a) => Some(a),
            _ => self.cfg.next_hop_v6,
        };
        let has = |afi| neg.families.contains(&(afi, SAFI_UNICAST));
        let gr = match &neg.peer_graceful_restart {
            Some(Capability::GracefulRestart {
                time,
                families,
                restarting,
            }) => Some((*time, families.clone(), *restarting)),
            _ => None,
        };
        // RFC 4724 §4.2: stale routes stay only if the peer kept forwarding state.
        let peer_restarting = gr.as_ref().is_some_and(|g| g.2);
        let keep_stale = gr
            .as_ref()
            .is_some_and(|(_, f, _)| f.iter().any(|f| f.forwarding));
        if p.router_id.is_some_and(|r| r != neg.peer_id) {
            // Its routes' ORIGINATOR_ID when reflected was the old identifier.
            self.cache.clear();
        }
        p.router_id = Some(neg.peer_id);
        p.last_error = None;
        p.eor = false;
        p.rails_logged = false;
        p.over_limit = false;
        let up = Up {
            settings: ExportSettings {
                peer: info,
                policy: p.cfg.export.clone(),
                next_hop_self: None,
                add_path: neg.tx.add_path(Afi::Ipv4, SAFI_UNICAST),
            },
            writer,
            ctx: neg.tx.clone(),
            advertised,
            v4: has(Afi::Ipv4),
            v6: has(Afi::Ipv6),
            nh4,
            nh6,
            ebgp,
            restart_time: gr.as_ref().map(|g| g.0),
            route_refresh: neg.route_refresh,
            eor_expected: gr.is_some(),
            table_sent: false,
        };
        let mut sweep = false;
        // A new session: the restart timer armed when the last one went down no longer
        // applies (the stale timer below takes over).
        p.epoch += 1;
        if p.stale != [false; 2] {
            if keep_stale {
                let (tx, epoch) = (self.internal_tx.clone(), p.epoch);
                let wait = self.cfg.graceful_restart.stale_time;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Internal::SweepStale { peer: id, epoch });
                });
            } else {
                p.stale = [false; 2];
                sweep = true;
            }
        }
        p.up = Some(up);
        if !self.restarting.load(std::sync::atomic::Ordering::Relaxed) {
            // Once the changes pending now have gone out (see `quiet_up`).
            self.tables_due.push(id);
        } else if peer_restarting {
            // RFC 4724 §4.2: a restarting peer does not wait for us, nor we for it; it may
            // wait for our End-of-RIB before its own. We still wait for its End-of-RIB (so
            // its routes are in before we choose), and both of us get there.
            info!(peer = %p.cfg.addr, "we and the peer are both restarting: it gets our table now");
            self.send_table(id);
        } else {
            info!(peer = %p.cfg.addr, "we are restarting: our table goes out once every peer has sent End-of-RIB");
        }
        if sweep {
            let n = self.sweep(id, None);
            info!(peer = %addr, swept = n, "peer did not keep its forwarding state: stale routes dropped");
        }
        self.check_converged();
    }

    /// Withdraws `peer`'s stale paths (of one family: IPv4 when Some(true)), sending the
    /// changes out a slice at a time; returns how many prefixes it swept.
    fn sweep(&mut self, peer: PeerId, ipv4: Option<bool>) -> usize {
        let prefixes = self
            .rib
            .stale_prefixes(peer, |p| ipv4.is_none_or(|v4| p.is_ipv4() == v4));
        for slice in prefixes.chunks(4096) {
            let ch: Vec<Change> = slice
                .iter()
                .filter_map(|p| self.rib.sweep_prefix(*p, peer))
                .collect();
            self.propagate(&ch);
        }
        prefixes.len()
    }

    /// The whole table, then End-of-RIB per family: to a peer that just came up, or to every
    /// peer once our restart is over.
    fn send_table(&mut self, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(up) = &mut p.up else { return };
        up.table_sent = true;
        let wants = export_all(&self.rib, &mut self.cache, &p.cfg, up, self.rib.iter());
        let n = wants.len();
        if !up.settings.add_path {
            up.advertised.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = up.writer.send(Out::Routes(wants));
        for (on, afi) in [(up.v4, Afi::Ipv4), (up.v6, Afi::Ipv6)] {
            if on {
                let _ = up.writer.send(Out::EndOfRib(afi));
            }
        }
        info!(peer = %p.cfg.addr, routes = n, "sent the table and End-of-RIB");
    }

    fn down(&mut self, id: PeerId, reason: String, keep_routes: bool) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.last_error = Some(reason);
        let Some(up) = p.up.take() else {
            return; // never got established: nothing to withdraw
        };
        p.eor = false;
        p.epoch += 1;
        let keep = keep_routes && self.cfg.graceful_restart.enabled && p.cfg.graceful_restart;
        if keep {
            let time = up.restart_time.unwrap_or(0);
            info!(peer = %p.cfg.addr, restart_time = time, "peer restarting: keeping its routes as stale");
            p.stale = [true; 2];
            self.rib.mark_stale(id);
            let (tx, epoch) = (self.internal_tx.clone(), p.epoch);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(time))).await;
                let _ = tx.send(Internal::SweepStale { peer: id, epoch });
            });
        } else {
            p.stale = [false; 2];
            p.rejected.clear();
            self.rib.mark_stale(id);
            self.sweep(id, None);
        }
    }

    /// A connection on the listener: to its peer's session (after the TTL and GTSM checks),
    /// or held a moment if its address is not a peer yet.
    fn accepted(&mut self, s: TcpStream, from: SocketAddr) {
        let addr = unmap(from.ip());
        let Some(p) = self.by_addr.get(&addr).and_then(|id| self.peers.get(id)) else {
            match self.waiting.hold(addr, from, s) {
                Ok(()) => {
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(super::waiting::HOLD).await;
                        let _ = tx.send(Internal::ExpireWaiting);
                    });
                }
                Err(_refused) => {
                    if let Some(suppressed) = self.refused_log.allow() {
                        info!(%from, suppressed, held = self.waiting.len(), "refused a connection from an address that is not a peer");
                    }
                }
            }
            return;
        };
        let sock = socket2::SockRef::from(&s);
        let checked = socket::set_ttls(sock, from.is_ipv6(), &p.cfg, self.cfg.local_as)
            .map_err(|e| format!("setting its TTLs failed: {e}"))
            .and_then(|()| socket::check_syn_ttl(&s, &p.cfg).map_err(|e| format!("GTSM: {e}")));
        match checked {
            Ok(()) => {
                let _ = p.cmd.send(SessionCmd::Incoming(s));
            }
            // Without its GTSM check the connection must not carry the session.
            Err(e) => {
                if let Some(suppressed) = self.refused_log.allow() {
                    warn!(peer = %addr, suppressed, "refused a connection: {e}")
                }
            }
        }
    }

    fn internal(&mut self, i: Internal) {
        match i {
            Internal::Accepted(s, from) => self.accepted(s, from),
            Internal::ExpireWaiting => {
                for from in self.waiting.expire(Instant::now()) {
                    if let Some(suppressed) = self.refused_log.allow() {
                        info!(%from, suppressed, "refused a connection from an address that is not a peer (held {:?} in case it became one)", super::waiting::HOLD);
                    }
                }
            }
            Internal::SweepStale { peer, epoch } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.epoch != epoch || p.stale == [false; 2] {
                    return;
                }
                p.stale = [false; 2];
                let addr = p.cfg.addr;
                let n = self.sweep(peer, None);
                info!(peer = %addr, swept = n, "graceful restart over: stale routes swept");
            }
            Internal::ConvergeDeadline => self.converged(),
        }
    }

    /// Converged after our restart once every configured peer has sent End-of-RIB, leaving
    /// out (RFC 4724 §4.1) those without graceful restart. Unlike the RFC we also wait for
    /// peers restarting themselves: they have our table already (see `up`), and without
    /// their routes the kernel pass would drop routes they are about to send again.
    fn check_converged(&mut self) {
        let done = |p: &Peer| {
            p.eor
                || !(self.cfg.graceful_restart.enabled && p.cfg.graceful_restart)
                || p.up.as_ref().is_some_and(|u| !u.eor_expected)
        };
        if self.is_restarting() && self.peers_configured && self.peers.values().all(done) {
            info!(
                peers = self.peers.len(),
                "End-of-RIB from every peer: restart over"
            );
            self.converged();
        }
    }

    /// Our restart is over (every End-of-RIB in, or the deferral timer ran out): the kernel
    /// gets the selected routes in one pass, then every established peer our table and
    /// End-of-RIB.
    fn converged(&mut self) {
        if !self.is_restarting() {
            return;
        }
        self.restarting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let all: Vec<Change> = self.rib.iter().collect();
        self.kernel_changes(&all);
        if let Some(k) = &self.kernel {
            k.control(Control::Converged);
        }
        let up: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.up.as_ref().is_some_and(|u| !u.table_sent))
            .map(|p| p.id)
            .collect();
        for id in up {
            self.send_table(id);
        }
    }

    /// Whether a peer's session coming up leaves pending changes alone: it has no stale
    /// routes to sweep and we are not restarting, so all it does is add the peer (without
    /// routes) and ask for the table to be sent after them. Peers that come up while
    /// others announce (a reflector's clients) then do not cut the batch.
    fn quiet_up(&self, peer: PeerId) -> bool {
        !self.is_restarting() && self.peers.get(&peer).is_some_and(|p| p.stale == [false; 2])
    }

    /// Sends `pending` out, then the table to the peers that came up meanwhile (it holds the
    /// pending changes already, so they must not get them twice).
    fn flush(&mut self, pending: &mut Vec<Change>) {
        self.propagate(pending);
        pending.clear();
        let due = std::mem::take(&mut self.tables_due);
        self.send_tables(due);
    }

    /// Handles `first` and whatever else is already queued (up to a bound), importing
    /// consecutive UPDATEs into one batch of changes, exported once: fewer, fuller messages
    /// to each peer when many peers speak at once (a reflector's clients).
    fn events_batch(&mut self, first: Event) {
        let mut pending = vec![];
        let mut next = Some(first);
        let mut n = 0;
        while let Some(e) = next.take() {
            self.event(e, &mut pending);
            n += 1;
            if n < 256 && pending.len() < 4096 {
                next = self.events.try_recv().ok();
            }
        }
        self.flush(&mut pending);
    }

    /// Imports one UPDATE, adding the Loc-RIB changes to `changes` (for the caller to
    /// export).
    fn update(&mut self, id: PeerId, u: Update, changes: &mut Vec<Change>) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.over_limit {
            return; // closing: its routes go when the session does
        }
        if let Some(afi) = is_end_of_rib(&u) {
            // What came before the End-of-RIB goes out (and into the kernel) first.
            self.propagate(changes);
            changes.clear();
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            let fam = usize::from(afi != Afi::Ipv4);
            p.eor = true;
            if p.stale[fam] {
                p.stale[fam] = false;
                let addr = p.cfg.addr;
                let n = self.sweep(id, Some(afi == Afi::Ipv4));
                info!(peer = %addr, family = ?afi, swept = n, "End-of-RIB after restart: stale routes swept");
            }
            self.check_converged();
            return;
        }
        let withdraw_all = u
            .errors
            .iter()
            .any(|e| e.treatment == Treatment::TreatAsWithdraw);
        if !u.errors.is_empty() {
            if let Some(suppressed) = self.update_errors_log.allow() {
                warn!(peer = %p.cfg.addr, errors = ?u.errors, withdraw_all, suppressed, "UPDATE with attribute errors (RFC 7606)");
            }
        }
        let ebgp = p.up.as_ref().is_some_and(|u| u.ebgp);
        let mut base = u.attributes;
        let reach = base.mp_reach.take();
        let unreach = base.mp_unreach.take();
        base.for_passing_on();
        if ebgp {
            base.local_pref = None; // RFC 4271 §5.1.5: not from an external peer
        }
        let mut withdrawn: Vec<Nlri> = u.withdrawn;
        if let Some(un) = unreach.filter(|m| m.safi == SAFI_UNICAST) {
            withdrawn.extend(un.withdrawn);
        }
        let mut announced: Vec<(Nlri, Arc<Attributes>)> = vec![];
        let mut nlri = u.nlri;
        let mut reach = reach.filter(|r| r.safi == SAFI_UNICAST && r.afi == Afi::Ipv6);
        // RFC 4271 §6.3: routes through an unusable next hop are ignored (withdrawn here, so
        // an earlier path from this peer does not linger), logged, and the session stays.
        let peer_ip = unmap(p.cfg.addr);
        let (own4, own6) = p.up.as_ref().map_or((None, None), |u| (u.nh4, u.nh6));
        if let Some((nh, why)) = base
            .next_hop
            .filter(|_| !nlri.is_empty())
            .and_then(|nh| Some((nh, nexthop::unusable_v4(nh, own4, peer_ip)?)))
        {
            warn!(peer = %p.cfg.addr, next_hop = %nh, why, prefixes = nlri.len(), "UPDATE with an unusable NEXT_HOP: its routes are treated as withdrawn");
            withdrawn.append(&mut nlri);
        }
        if let Some(why) = reach
            .as_ref()
            .filter(|r| !r.nlri.is_empty())
            .and_then(|r| nexthop::unusable_v6(&r.next_hops, own6, peer_ip))
        {
            if let Some(r) = reach.take() {
                warn!(peer = %p.cfg.addr, next_hops = ?r.next_hops, why, prefixes = r.nlri.len(), "MP_REACH_NLRI with an unusable next hop: its routes are treated as withdrawn");
                withdrawn.extend(r.nlri);
            }
        }
        if !nlri.is_empty() {
            let a = Arc::new(Attributes { ..base.clone() });
            announced.extend(nlri.into_iter().map(|n| (n, a.clone())));
        }
        if let Some(r) = reach {
            let a = Arc::new(Attributes {
                next_hop: None,
                mp_reach: Some(MpReach {
                    afi: Afi::Ipv6,
                    safi: SAFI_UNICAST,
                    next_hops: r.next_hops,
                    nlri: vec![],
                }),
                ..base
            });
            announced.extend(r.nlri.into_iter().map(|n| (n, a.clone())));
        }
        if withdraw_all {
            withdrawn.extend(announced.drain(..).map(|(n, _)| n));
        }
        changes.reserve(withdrawn.len() + announced.len());
        for n in withdrawn {
            if !p.rejected.is_empty() {
                p.rejected.remove(&(n.prefix, n.path_id));
            }
            changes.extend(self.rib.withdraw(n.prefix, id, n.path_id));
        }
        let policy_empty = p.cfg.import.terms.is_empty();
        let default_accept = p.cfg.import.default == Verdict::Accept;
        // The loop checks and the policy depend on the attributes only (an empty policy):
        // decide once per attribute set.
        let mut checked: Option<(usize, bool)> = None;
        for (n, a) in announced {
            // The rails first: no policy can let through what they refuse.
            if let Err(why) = self.rails.check(&n.prefix, p.cfg.member) {
                p.refused_by_rails += 1;
                if !p.rails_logged {
                    p.rails_logged = true;
                    warn!(peer = %p.cfg.addr, prefix = %n.prefix, "route refused by the import rails: {why} (more from this session are counted in the peer's status, not logged)");
                }
                changes.extend(self.rib.withdraw(n.prefix, id, n.path_id));
                p.rejected.insert((n.prefix, n.path_id));
                continue;
            }
            let attrs = if policy_empty {
                let ptr = Arc::as_ptr(&a) as usize;
                let ok = match checked {
                    Some((p, ok)) if p == ptr => ok,
                    _ => {
                        let ok = default_accept && self.rib.check_import(id, &a).is_ok();
                        checked = Some((ptr, ok));
                        ok
                    }
                };
                ok.then_some(a)
            } else {
                let mut own = (*a).clone();
                let ok = p.cfg.import.apply(&n.prefix, &mut own) == Verdict::Accept
                    && self.rib.check_import(id, &own).is_ok();
                ok.then(|| Arc::new(own))
            };
            match attrs {
                Some(attrs) => {
                    if !p.rejected.is_empty() {
                        p.rejected.remove(&(n.prefix, n.path_id));
                    }
                    let path = Path {
                        peer: id,
                        path_id: n.path_id,
                        attrs,
                        stale: false,
                    };
                    changes.extend(self.rib.insert(n.prefix, path));
                }
                None => {
                    changes.extend(self.rib.withdraw(n.prefix, id, n.path_id));
                    p.rejected.insert((n.prefix, n.path_id));
                }
            }
        }
        let received = self.rib.path_count(id) + p.rejected.len();
        if let Some(max) = p.cfg.max_prefixes.filter(|m| received > *m as usize) {
            p.over_limit = true;
            p.limit_hits += 1;
            warn!(peer = %p.cfg.addr, received, limit = max, "the peer sent more prefixes than its limit: closing the session (Cease 6/1) and dropping its routes; it is tried again after a back-off");
            // RFC 4486 §4: AFI, SAFI and the upper bound (IPv6 for an IPv6-only session).
            let afi = match p.up.as_ref() {
                Some(u) if u.v6 && !u.v4 => 2u8,
                _ => 1,
            };
            let mut data = vec![0, afi, SAFI_UNICAST];
            data.extend_from_slice(&max.to_be_bytes());
            let _ = p.cmd.send(SessionCmd::Cease { subcode: 1, data });
        }
    }

    fn set_policies(
        &mut self,
        addr: IpAddr,
        import: crate::policy::Policy,
        export: crate::policy::Policy,
    ) -> Result<(), SpeakerError> {
        let addr = unmap(addr);
        let id = *self.by_addr.get(&addr).ok_or(SpeakerError::NoPeer(addr))?;
        let Some(p) = self.peers.get_mut(&id) else {
            return Err(SpeakerError::NoPeer(addr));
        };
        let import_changed = p.cfg.import != import;
        let export_changed = p.cfg.export != export;
        let old = std::mem::replace(&mut p.cfg.export, export);
        p.cfg.import = import;
        if let Some(up) = p.up.as_mut() {
            up.settings.policy = p.cfg.export.clone();
        }
        if export_changed {
            self.reexport(id, &old);
        }
        if import_changed {
            let Some(p) = self.peers.get(&id) else {
                return Ok(());
            };
            resend(p, "import policy changed");
        }
        Ok(())
    }

    /// After an export policy change: what the peer should now have, compared with what
    /// `old` exported, sent as announcements and withdraws.
    fn reexport(&mut self, id: PeerId, old: &crate::policy::Policy) {
        let Some(p) = self.peers.get(&id) else { return };
        let Some(up) = p.up.as_ref().filter(|u| u.table_sent) else {
            return;
        };
        let mut before = p.cfg.clone();
        before.export = old.clone();
        let mut wants = vec![];
        for c in self.rib.iter() {
            let now = export::export_all(
                &self.rib,
                &mut self.cache,
                &p.cfg,
                up,
                std::iter::once(c.clone()),
            );
            if let Some(w) = now.into_iter().next() {
                wants.push(w);
                continue;
            }
            let was = export::export_all(
                &self.rib,
                &mut self.cache,
                &before,
                up,
                std::iter::once(c.clone()),
            );
            if !was.is_empty() {
                wants.push(crate::adj_out::Want {
                    prefix: c.prefix,
                    paths: Default::default(),
                });
            }
        }
        info!(peer = %p.cfg.addr, routes = wants.len(), "export policy changed: the peer's routes sent again");
        if !up.settings.add_path {
            let n = wants.iter().filter(|w| !w.paths.is_empty()).count();
            up.advertised.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        // (With add-path the writer compares with what it sent and withdraws the rest.)
        let _ = up.writer.send(Out::Routes(wants));
    }

    /// New rails: paths they refuse now leave the Loc-RIB at once; if they let more through,
    /// peers that had paths refused are asked for their routes again.
    fn set_rails(&mut self, rails: Rails) {
        if rails == self.rails {
            return;
        }
        let loosened = !rails.only_tightens(&self.rails);
        self.rails = rails;
        let mut refused = vec![];
        for c in self.rib.iter() {
            for path in self.rib.paths(&c.prefix) {
                let Some(p) = self.peers.get(&path.peer) else {
                    continue;
                };
                if self.rails.check(&c.prefix, p.cfg.member).is_err() {
                    refused.push((c.prefix, path.peer, path.path_id));
                }
            }
        }
        let mut changes = vec![];
        for (prefix, peer, path_id) in refused {
            changes.extend(self.rib.withdraw(prefix, peer, path_id));
            if let Some(p) = self.peers.get_mut(&peer) {
                p.refused_by_rails += 1;
                p.rejected.insert((prefix, path_id));
            }
        }
        if !changes.is_empty() {
            info!(
                withdrawn = changes.len(),
                "import rails changed: routes they now refuse withdrawn"
            );
        }
        self.propagate(&changes);
        if loosened {
            for p in self.peers.values() {
                // Only peers that sent something the rails refused and would now take.
                let allowed = p
                    .rejected
                    .iter()
                    .any(|(prefix, _)| self.rails.check(prefix, p.cfg.member).is_ok());
                if allowed {
                    resend(p, "import rails loosened");
                }
            }
        }
    }

    /// ROUTE-REFRESH (RFC 2918): the family's routes again, then its End-of-RIB.
    fn refresh(&mut self, id: PeerId, family: Afi) {
        let restarting = self.is_restarting();
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(up) = p.up.as_ref() else { return };
        if restarting {
            info!(peer = %p.cfg.addr, "route refresh while we restart: our whole table follows once the restart is over");
            return;
        }
        let all = self
            .rib
            .iter()
            .filter(|c| c.prefix.is_ipv4() == (family == Afi::Ipv4));
        let wants = export_all(&self.rib, &mut self.cache, &p.cfg, up, all);
        let n = wants.len();
        // (Without add-path the count stands: the same routes go out again.)
        let _ = up.writer.send(Out::Forget(family));
        let _ = up.writer.send(Out::Routes(wants));
        let _ = up.writer.send(Out::EndOfRib(family));
        info!(peer = %p.cfg.addr, family = ?family, routes = n, "route refresh answered");
    }

    fn kernel_changes(&self, changes: &[Change]) {
        let Some(k) = &self.kernel else { return };
        if self.is_restarting() {
            return; // the whole table goes in at once when the restart is over
        }
        for c in changes {
            let want = match &c.best {
                None => None,
                Some(b) if b.peer == LOCAL => self
                    .origins
                    .get(&c.prefix)
                    .filter(|o| o.blackhole)
                    .map(|_| Route::Blackhole),
                Some(_) => {
                    let encap = self
                        .encap
                        .iter()
                        .find(|(net, _)| {
                            net.is_ipv4() == c.prefix.is_ipv4()
                                && net.contains(c.prefix.network())
                                && net.prefix() <= c.prefix.prefix()
                        })
                        .map_or(Encap::None, |r| r.1);
                    let hops: Vec<(IpAddr, Encap)> = c
                        .multipath
                        .iter()
                        .filter(|p| p.peer != LOCAL)
                        .filter_map(|p| next_hop(&p.attrs))
                        .map(|nh| (nh, self.resolve_encap(encap, nh)))
                        .collect();
                    (!hops.is_empty()).then_some(Route::Via(hops))
                }
            };
            k.set(c.prefix, want);
        }
    }

    /// CrossSubnet becomes direct for a next hop on one of our own subnets, IPIP otherwise.
    fn resolve_encap(&self, encap: Encap, nh: IpAddr) -> Encap {
        match encap {
            Encap::CrossSubnet if self.direct_subnets.iter().any(|s| s.contains(nh)) => Encap::None,
            Encap::CrossSubnet => Encap::Ipip,
            e => e,
        }
    }

    fn status(&self) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| PeerStatus {
                addr: p.cfg.addr,
                asn: p.cfg.asn,
                peer_type: p.cfg.peer_type.clone(),
                state: format!("{:?}", p.state),
                since_secs: p.since.elapsed().as_secs(),
                router_id: p.router_id,
                last_error: p.last_error.clone(),
                received: self.rib.path_count(p.id) + p.rejected.len(),
                accepted: self.rib.path_count(p.id),
                advertised: p.up.as_ref().map_or(0, |u| {
                    u.advertised.load(std::sync::atomic::Ordering::Relaxed)
                }),
                stale: if p.stale != [false; 2] {
                    self.rib
                        .iter()
                        .filter(|c| {
                            self.rib
                                .paths(&c.prefix)
                                .iter()
                                .any(|x| x.peer == p.id && x.stale)
                        })
                        .count()
                } else {
                    0
                },
                refused_by_rails: p.refused_by_rails,
                prefix_limit_hits: p.limit_hits,
            })
            .collect();
        v.sort_by_key(|s| s.addr);
        v
    }

    fn dump(&self, f: &RibFilter) -> Vec<RibRoute> {
        let peer = f
            .peer
            .map(unmap)
            .and_then(|a| self.by_addr.get(&a).copied());
        if f.peer.is_some() && peer.is_none() {
            return vec![];
        }
        let mut out = vec![];
        for c in self.rib.iter() {
            if let Some(w) = f.within {
                if w.is_ipv4() != c.prefix.is_ipv4()
                    || !w.contains(c.prefix.network())
                    || c.prefix.prefix() < w.prefix()
                {
                    continue;
                }
            }
            for path in self.rib.paths(&c.prefix) {
                let best = c.best.as_ref() == Some(path);
                if (f.best_only && !best) || peer.is_some_and(|id| id != path.peer) {
                    continue;
                }
                out.push(route(&self.rib, c.prefix, path, best));
                if f.limit.is_some_and(|l| out.len() >= l) {
                    return out;
                }
            }
        }
        out
    }

    async fn shutdown(&mut self, graceful: bool) {
        info!(graceful, "shutting down");
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        self.listener = None;
        // Drop our writer handles first so each session's writer can finish and close.
        let mut waits = vec![];
        for p in self.peers.values_mut() {
            p.up = None;
            let (done, rx) = oneshot::channel();
            let _ = p.cmd.send(SessionCmd::Stop {
                notify: !graceful,
                done,
            });
            waits.push(rx);
        }
        for w in waits {
            let _ = tokio::time::timeout(Duration::from_secs(3), w).await;
        }
        if let Some(k) = self.kernel.take() {
            let (done, rx) = oneshot::channel();
            k.control(Control::Stop {
                remove: !graceful,
                done,
            });
            let _ = rx.await;
        }
    }
}

/// Has an established peer send its routes again, after what we take from it changed
/// (`why`): a route refresh where it takes one, else a session reset (Cease 6/6,
/// configuration change). Nothing for a peer that is not up.
fn resend(p: &Peer, why: &str) {
    let Some(up) = p.up.as_ref() else { return };
    if up.route_refresh {
        info!(peer = %p.cfg.addr, "{why}: asking the peer for its routes again");
        for (on, afi) in [(up.v4, Afi::Ipv4), (up.v6, Afi::Ipv6)] {
            if on {
                let _ = p.cmd.send(SessionCmd::Refresh(afi));
            }
        }
    } else {
        info!(peer = %p.cfg.addr, "{why} and the peer cannot resend its routes (no route refresh): resetting the session");
        let _ = p.cmd.send(SessionCmd::Cease {
            subcode: 6,
            data: vec![],
        });
    }
}

async fn accept_loop(l: Arc<tokio::net::TcpListener>, tx: mpsc::UnboundedSender<Internal>) {
    loop {
        match l.accept().await {
            Ok((s, from)) => {
                if tx.send(Internal::Accepted(s, from)).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn next_hop(a: &Attributes) -> Option<IpAddr> {
    match &a.mp_reach {
        Some(r) => r.next_hops.first().copied(),
        None => a.next_hop.map(IpAddr::V4),
    }
}

fn route(rib: &Rib, prefix: IpNetwork, p: &Path, best: bool) -> RibRoute {
    let a = &p.attrs;
    RibRoute {
        prefix,
        from: (p.peer != LOCAL)
            .then(|| rib.peer(p.peer).map(|i| i.addr))
            .flatten(),
        best,
        stale: p.stale,
        next_hop: next_hop(a),
        as_path: a
            .as_path
            .iter()
            .flatten()
            .flat_map(|s| s.asns().to_vec())
            .collect(),
        local_pref: a.local_pref,
        med: a.med,
        communities: a
            .communities
            .iter()
            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
            .collect(),
        large_communities: a
            .large_communities
            .iter()
            .map(|(x, y, z)| format!("{x}:{y}:{z}"))
            .collect(),
        originator_id: a.originator_id,
        cluster_list: a.cluster_list.clone(),
    }
}
