//! The speaker: the tokio driver around the sans-IO pieces. Tasks and channels:
//!
//! ```text
//!   listener ──(accepted stream)──┐
//!                                 ▼
//!   Speaker handle ──Command──▶ core (owns Rib, Adj-RIB-Outs) ──KernelOp──▶ kernel writer
//!                                ▲   │                                       (KernelSync)
//!                      Event     │   │ encoded UPDATEs (Bytes)
//!   session task (fsm::Session) ─┘   ▼
//!        │ reads, decodes        writer task (one per connection) ──▶ TCP
//! ```
//!
//! One session task per peer drives [`crate::fsm::Session`] over its connection: it reads and
//! decodes, runs the timers, and reports `Up` / `Update` / `Down` to the core. The core owns
//! the RIB: it imports, decides, exports through each peer's [`crate::adj_out::AdjRibOut`]
//! and writes the encoded UPDATEs straight to the peer's writer task. Kernel routes go to
//! one netlink writer. Nothing shares a lock with the hot path.

mod control;
mod core;
mod kernel_task;
mod loglimit;
mod pack;
mod session;
mod socket;
mod sockopt;
mod waiting;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::policy::Policy;
use crate::rails::Rails;

pub use control::{serve as serve_control, Request as ControlRequest};
pub use kernel_task::KernelStats;
pub use loglimit::LogLimit;
pub use sockopt::MAX_KEY_LEN as MD5_MAX_KEY_LEN;

/// The speaker as a whole.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Where to accept BGP connections (None: never accept; every peer is then active).
    pub listen: Option<SocketAddr>,
    /// Set to reflect routes between route-reflector clients (RFC 4456); the router ID is
    /// used when None and some peer is a client.
    pub cluster_id: Option<Ipv4Addr>,
    pub graceful_restart: GracefulRestart,
    /// Next hops for a family the session's own address is not of (an IPv6 prefix over an
    /// IPv4 session, say). None: such prefixes are not sent on such sessions.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    pub kernel: Option<KernelConfig>,
    /// Never transit: a route learned from a peer is passed on only by a route reflector, to
    /// cluster members ([`PeerConfig::member`]), from a member; everything else exported is
    /// our own. The node agent sets it; a plain router (brindle-bgpd) does not.
    pub no_transit: bool,
    /// What no learned route may be, whatever the import policy ([`Rails`]).
    pub rails: Rails,
}

#[derive(Debug, Clone)]
pub struct GracefulRestart {
    pub enabled: bool,
    /// The restart time we advertise (RFC 4724 §3): how long peers keep our routes.
    pub restart_time: u16,
    /// How long we keep a restarting peer's routes after it came back before sweeping them
    /// even without its End-of-RIB.
    pub stale_time: Duration,
    /// Start as a restarting speaker (like BIRD's `-R`) even when the kernel holds no routes
    /// of ours: a speaker without kernel sync, such as a route reflector, restarted while
    /// its peers keep its routes. With kernel sync, routes of the last run found at start
    /// mean the same. The OPEN then also says forwarding state was kept (RFC 4724's F bit),
    /// so peers keep our routes through the restart instead of dropping them at once.
    pub recovering: bool,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        GracefulRestart {
            enabled: true,
            restart_time: 120,
            stale_time: Duration::from_secs(360),
            recovering: false,
        }
    }
}

/// Kernel route sync settings.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub metric: u32,
    /// Per-prefix encapsulation (first match wins; the default is direct).
    pub encap: Vec<(IpNetwork, Encap)>,
    /// The subnets this node is directly on: [`Encap::CrossSubnet`] next hops inside them
    /// are reached directly, all others through tunl0.
    pub direct_subnets: Vec<IpNetwork>,
    /// How often the main table is re-read and our routes repaired (also soon after a
    /// failed write).
    pub rescan: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// `via <next hop>` on the interface that reaches it.
    None,
    /// `via <next hop> dev tunl0 onlink`.
    Ipip,
    /// IPIP toward next hops outside [`KernelConfig::direct_subnets`], direct inside them
    /// (Calico's ipipMode CrossSubnet).
    CrossSubnet,
}

/// One peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub addr: IpAddr,
    pub port: u16,
    pub asn: u32,
    /// TCP MD5 signature key (RFC 2385).
    pub password: Option<String>,
    pub passive: bool,
    pub rr_client: bool,
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// Bind outgoing connections to this address.
    pub source: Option<IpAddr>,
    /// eBGP multihop TTL (None: 1 for eBGP, 255 for iBGP... i.e. the peer is directly
    /// connected when eBGP).
    pub multihop: Option<u8>,
    /// GTSM (RFC 5082): our packets leave with TTL 255 and the kernel drops the peer's that
    /// arrive with less than `256 - hops` (255 for a directly connected peer: one spoofing
    /// from further away cannot reach the session). Calico's `ttlSecurity`.
    pub ttl_security: Option<u8>,
    pub graceful_restart: bool,
    /// Rewrite the next hop to our address even toward iBGP peers.
    pub next_hop_self: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub import: Policy,
    pub export: Policy,
    /// What kind of peer this is to whoever configured it (`node-to-node mesh`, `global`,
    /// `node specific`, `route reflector`); shown by the control API, not used by BGP.
    pub peer_type: Option<String>,
    /// A node of this cluster (mesh, reflector, client), as opposed to an external router:
    /// decides the [`Rails`] that apply and, with [`SpeakerConfig::no_transit`], whether
    /// learned routes may be reflected to it.
    pub member: bool,
    /// The BGP identifier the peer must present in its OPEN (a node's router ID); another is
    /// refused with NOTIFICATION 2/3.
    pub router_id: Option<Ipv4Addr>,
    /// At most this many prefixes received (accepted or not) from the peer: one more closes
    /// the session with Cease 6/1 (RFC 4486), retried after a back-off. BIRD's `receive
    /// limit`, FRR's `maximum-prefix`.
    pub max_prefixes: Option<u32>,
}

impl PeerConfig {
    pub fn new(addr: IpAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            addr,
            port: 179,
            asn,
            password: None,
            passive: false,
            rr_client: false,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            source: None,
            multihop: None,
            ttl_security: None,
            graceful_restart: true,
            next_hop_self: false,
            ipv4: true,
            ipv6: true,
            import: Policy::accept_all(),
            export: Policy::accept_all(),
            peer_type: None,
            member: false,
            router_id: None,
            max_prefixes: None,
        }
    }
}

/// A prefix this speaker originates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origination {
    pub prefix: Option<IpNetwork>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    /// Install `blackhole <prefix> proto bird` in the kernel (a node's own blocks).
    pub blackhole: bool,
}

/// A peer as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub addr: IpAddr,
    pub asn: u32,
    pub state: String,
    /// Seconds in the current state.
    pub since_secs: u64,
    pub router_id: Option<Ipv4Addr>,
    pub last_error: Option<String>,
    pub received: usize,
    pub accepted: usize,
    pub advertised: usize,
    /// Paths kept stale through the peer's graceful restart.
    pub stale: usize,
    /// [`PeerConfig::peer_type`], when the configuration gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    /// Paths refused by the [`Rails`] since the peer was added.
    #[serde(default)]
    pub refused_by_rails: u64,
    /// Times the session was closed for going over its prefix limit.
    #[serde(default)]
    pub prefix_limit_hits: u64,
}

/// One Loc-RIB entry as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RibRoute {
    pub prefix: IpNetwork,
    /// The peer's address, or None for our own routes.
    pub from: Option<IpAddr>,
    pub best: bool,
    pub stale: bool,
    pub next_hop: Option<IpAddr>,
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
}

/// Which routes a RIB dump returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RibFilter {
    /// Routes for prefixes inside this one.
    pub within: Option<IpNetwork>,
    /// Routes from this peer.
    pub peer: Option<IpAddr>,
    /// Only the best path of each prefix.
    #[serde(default)]
    pub best_only: bool,
    /// At most this many routes.
    pub limit: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("no peer {0}")]
    NoPeer(IpAddr),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the speaker has stopped")]
    Stopped,
    #[error("the kernel route sync could not start: {0}")]
    Kernel(String),
    /// The peer has a password but the listener cannot check it: the peer is refused rather
    /// than run without its protection (a connection in would be accepted unsigned).
    #[error("peer {peer}: cannot set its TCP MD5 key on the listener ({source}); the peer is not configured")]
    Md5 {
        peer: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

enum Command {
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), SpeakerError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    Originate(Origination),
    Withdraw(IpNetwork),
    SetEncap(Vec<(IpNetwork, Encap)>),
    SetDirectSubnets(Vec<IpNetwork>),
    SetRails(Box<Rails>),
    SetPolicies {
        addr: IpAddr,
        import: Box<Policy>,
        export: Box<Policy>,
        reply: oneshot::Sender<Result<(), SpeakerError>>,
    },
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    /// Every peer known at start has been added (see [`Speaker::peers_configured`]).
    PeersConfigured,
    Rib(RibFilter, oneshot::Sender<Vec<RibRoute>>),
    /// Stop every session. Graceful: close TCP without NOTIFICATION and leave kernel routes
    /// (we are restarting; RFC 4724). Otherwise Cease/administrative shutdown and remove them.
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
}

/// A handle to a running speaker (cheap to clone).
#[derive(Clone)]
pub struct Speaker {
    /// Bounded: an owner sending faster than the core takes commands waits.
    tx: mpsc::Sender<Command>,
    kernel: Option<Arc<KernelStats>>,
}

impl Speaker {
    /// Starts the core, the listener and (if configured) the kernel writer.
    pub async fn start(cfg: SpeakerConfig) -> Result<Speaker, SpeakerError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let core = core::Core::start(cfg, rx).await?;
        let kernel = core.kernel_stats.clone();
        tokio::spawn(core.run());
        Ok(Speaker { tx, kernel })
    }

    /// The kernel writer's counters (None without kernel sync).
    pub fn kernel_stats(&self) -> Option<Arc<KernelStats>> {
        self.kernel.clone()
    }

    async fn send(&self, c: Command) -> Result<(), SpeakerError> {
        self.tx.send(c).await.map_err(|_| SpeakerError::Stopped)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }

    pub async fn add_peer(&self, p: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|tx| Command::AddPeer(Box::new(p), tx)).await?
    }

    /// Says that every peer the speaker starts with has been added. A restarting speaker
    /// (kernel routes of its last run kept) waits for this before it may call itself
    /// converged: otherwise End-of-RIB from the first peer added, arriving before the second
    /// is added, would purge the routes only the second peer will send again. Until it is
    /// called, only the restart-time deadline ends the restart.
    pub async fn peers_configured(&self) -> Result<(), SpeakerError> {
        self.send(Command::PeersConfigured).await
    }

    /// Stops the session (Cease/administrative shutdown) and withdraws the peer's routes.
    pub async fn remove_peer(&self, addr: IpAddr) -> Result<(), SpeakerError> {
        self.ask(|tx| Command::RemovePeer(addr, tx)).await?
    }

    /// Originates (or changes) a prefix.
    pub async fn originate(&self, o: Origination) -> Result<(), SpeakerError> {
        self.send(Command::Originate(o)).await
    }

    pub async fn withdraw(&self, prefix: IpNetwork) -> Result<(), SpeakerError> {
        self.send(Command::Withdraw(prefix)).await
    }

    /// Replaces the per-prefix encapsulation rules; installed routes are redone.
    pub async fn set_encap(&self, rules: Vec<(IpNetwork, Encap)>) -> Result<(), SpeakerError> {
        self.send(Command::SetEncap(rules)).await
    }

    /// Replaces the subnets reached without encapsulation under [`Encap::CrossSubnet`];
    /// installed routes are redone.
    pub async fn set_direct_subnets(&self, subnets: Vec<IpNetwork>) -> Result<(), SpeakerError> {
        self.send(Command::SetDirectSubnets(subnets)).await
    }

    /// Replaces the import rails: paths they now refuse are withdrawn at once; if they let
    /// more through, peers that had paths refused are asked for their routes again (route
    /// refresh, where negotiated).
    pub async fn set_rails(&self, rails: Rails) -> Result<(), SpeakerError> {
        self.send(Command::SetRails(Box::new(rails))).await
    }

    /// Replaces a peer's import and export policies in place, without resetting its
    /// session where the peer allows: the export difference is sent at once; for a new
    /// import policy the peer is asked for its routes again (ROUTE-REFRESH), or, if it
    /// cannot be, the session is reset (Cease 6/6, configuration change).
    pub async fn set_policies(
        &self,
        addr: IpAddr,
        import: Policy,
        export: Policy,
    ) -> Result<(), SpeakerError> {
        self.ask(|reply| Command::SetPolicies {
            addr,
            import: Box::new(import),
            export: Box::new(export),
            reply,
        })
        .await?
    }

    pub async fn peers(&self) -> Result<Vec<PeerStatus>, SpeakerError> {
        self.ask(Command::Peers).await
    }

    pub async fn rib(&self, f: RibFilter) -> Result<Vec<RibRoute>, SpeakerError> {
        self.ask(|tx| Command::Rib(f, tx)).await
    }

    pub async fn shutdown(&self, graceful: bool) -> Result<(), SpeakerError> {
        self.ask(|done| Command::Shutdown { graceful, done }).await
    }
}

/// Commands waiting for the core, at most.
const COMMAND_QUEUE: usize = 1024;

/// Where a control socket is by default.
pub fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/brindle/bgpd.sock")
}
