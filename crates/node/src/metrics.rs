//! Prometheus metrics on `/metrics`. BGP session and prefix metrics are something Calico OSS
//! does not export (REFERENCE §A4).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub mod ipam;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
    pub result: String,
}

pub fn kind_label(kind: &str) -> KindLabel {
    KindLabel {
        kind: kind.to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub object: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabel {
    /// `namespace/name` of the pod (or its host interface, for one that is no pod's).
    pub pod: String,
    pub direction: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Mutex<Registry>>,
    pub sessions: Family<StateLabel, Gauge>,
    /// 1 for each peer whose session is Established, 0 for the others.
    pub peer_established: Family<PeerLabel, Gauge>,
    pub received: Family<PeerLabel, Gauge>,
    pub advertised: Family<PeerLabel, Gauge>,
    /// From a datastore change reaching the agent to the speaker (and so the kernel writer)
    /// having the resulting peers, originations and encapsulation.
    pub programming: Histogram,
    pub ipam_ops: Family<OpLabel, Counter>,
    pub watch_restarts: Family<KindLabel, Counter>,
    /// Addresses whose container looks gone, waiting out the grace period.
    pub workload_gc_suspects: Gauge,
    pub workload_gc_released: Counter,
    /// One iptables sync (render, diff, restore).
    pub proxy_sync: Histogram,
    pub proxy_rules: Gauge,
    pub proxy_restore_failures: Counter,
    /// Services with parts that could not be programmed (problems per Service).
    pub proxy_skipped: Family<ObjectLabel, Gauge>,
    /// New connections each policy allowed (the kernel's counters, since its chain was
    /// last written; read every refresh interval).
    pub policy_allowed: Family<PolicyLabel, Gauge>,
    /// New connections an isolated pod was denied, per direction (the same way).
    pub policy_denied: Family<PodLabel, Gauge>,
    /// NetworkPolicies the agent cannot read, enforced closed (1 each).
    pub policy_refused: Family<ObjectLabel, Gauge>,
    /// Paths from each peer the import rails refused (since its peer entry was made).
    pub refused_by_rails: Family<PeerLabel, Gauge>,
    /// Times each peer's session was closed over its prefix limit.
    pub prefix_limit_hits: Family<PeerLabel, Gauge>,
    /// The kernel writer's repairs (routes of ours found missing, different or stray).
    pub kernel_repairs: Counter,
    /// Kernel route writes that failed.
    pub kernel_failures: Counter,
    /// Prefixes we want but a route of another protocol holds.
    pub kernel_held: Gauge,
    /// Peer-status requests sent to the speaker (probes and scrapes share one a second).
    pub speaker_status_requests: Counter,
    /// The IPAM socket's requests, the pools and this node's blocks.
    pub ipam_pools: ipam::IpamMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("brindle");
        let ipam_pools = ipam::IpamMetrics::new(&mut registry);
        let m = Metrics {
            registry: Arc::new(Mutex::new(registry)),
            sessions: Family::default(),
            peer_established: Family::default(),
            received: Family::default(),
            advertised: Family::default(),
            programming: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ipam_ops: Family::default(),
            watch_restarts: Family::default(),
            workload_gc_suspects: Gauge::default(),
            workload_gc_released: Counter::default(),
            proxy_sync: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            proxy_rules: Gauge::default(),
            proxy_restore_failures: Counter::default(),
            proxy_skipped: Family::default(),
            policy_allowed: Family::default(),
            policy_denied: Family::default(),
            policy_refused: Family::default(),
            refused_by_rails: Family::default(),
            prefix_limit_hits: Family::default(),
            kernel_repairs: Counter::default(),
            kernel_failures: Counter::default(),
            kernel_held: Gauge::default(),
            speaker_status_requests: Counter::default(),
            ipam_pools,
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register("bgp_sessions", "BGP sessions by state", m.sessions.clone());
            r.register(
                "bgp_peer_established",
                "1 for each configured peer whose session is Established, else 0",
                m.peer_established.clone(),
            );
            r.register(
                "bgp_prefixes_received",
                "Prefixes received from each peer",
                m.received.clone(),
            );
            r.register(
                "bgp_prefixes_advertised",
                "Prefixes advertised to each peer",
                m.advertised.clone(),
            );
            r.register(
                "route_programming_seconds",
                "Datastore change to speaker and kernel writer updated",
                m.programming.clone(),
            );
            r.register(
                "ipam_operations",
                "IPAM operations of the agent (tunnel address) by result",
                m.ipam_ops.clone(),
            );
            r.register(
                "datastore_watch_restarts",
                "Datastore list/watch restarts by kind (errors, expiry, outages)",
                m.watch_restarts.clone(),
            );
            r.register(
                "workload_gc_suspects",
                "Addresses of this node whose container looks gone, in their grace period",
                m.workload_gc_suspects.clone(),
            );
            r.register(
                "workload_gc_released",
                "Addresses released because their container was gone and its DEL never came",
                m.workload_gc_released.clone(),
            );
            r.register(
                "proxy_sync_seconds",
                "One Services sync: render, diff and iptables-restore",
                m.proxy_sync.clone(),
            );
            r.register(
                "proxy_rules",
                "iptables rules of ours after the last sync",
                m.proxy_rules.clone(),
            );
            r.register(
                "proxy_restore_failures",
                "iptables-restore runs that failed",
                m.proxy_restore_failures.clone(),
            );
            r.register(
                "bgp_prefixes_refused_by_rails",
                "Paths from each peer refused by the import rails (own, connected, special-purpose space; pool shapes)",
                m.refused_by_rails.clone(),
            );
            r.register(
                "bgp_prefix_limit_hits",
                "Times each peer's session was closed for going over its maxPrefixes",
                m.prefix_limit_hits.clone(),
            );
            r.register(
                "kernel_route_repairs",
                "Routes of ours the kernel writer found missing, different or stray on a re-read, and rewrote",
                m.kernel_repairs.clone(),
            );
            r.register(
                "kernel_route_write_failures",
                "Kernel route writes that failed (retried after the next re-read)",
                m.kernel_failures.clone(),
            );
            r.register(
                "kernel_routes_held",
                "Prefixes we would install but a route of another protocol holds",
                m.kernel_held.clone(),
            );
            r.register(
                "speaker_status_requests",
                "Peer-status requests the health and metrics endpoints sent to the BGP speaker (at most one a second, shared by every caller)",
                m.speaker_status_requests.clone(),
            );
            r.register(
                "proxy_skipped",
                "Problems that kept part of a Service or EndpointSlice from being programmed",
                m.proxy_skipped.clone(),
            );
            r.register(
                "policy_allowed_packets",
                "Packets that opened a connection a NetworkPolicy allowed, per policy and direction, since its chain was last written (read every --iptables-refresh-interval)",
                m.policy_allowed.clone(),
            );
            r.register(
                "policy_denied_packets",
                "Packets of new connections an isolated pod of this node was denied, per pod and direction, since its chain was last written (read every --iptables-refresh-interval)",
                m.policy_denied.clone(),
            );
            r.register(
                "policy_refused",
                "NetworkPolicies this agent cannot read (a field that does not parse): their pods are isolated without their allows; the log says why",
                m.policy_refused.clone(),
            );
        }
        m
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }

    pub fn ipam(&self, op: &str, ok: bool) {
        self.ipam_ops
            .get_or_create(&OpLabel {
                op: op.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }
}
