//! `/livez`, `/readyz` (calico-node's bird-ready rule, REFERENCE §A4) and `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::bgp_task::SpeakerView;
use crate::desired::PeerKind;
use crate::metrics::{Metrics, PeerLabel, StateLabel};
use crate::snapshot::Snapshot;
use brindle_bgp::speaker::PeerStatus;

/// Within this long of start every mesh peer must be Established to be ready; after it, one
/// Established peer is enough (calico-node's `-threshold-time`, 30 s).
pub const STARTUP_THRESHOLD: Duration = Duration::from_secs(30);

/// How long a peer list read from the speaker is served to probes and scrapes.
const PEERS_FRESH: Duration = Duration::from_secs(1);
/// How long a probe or scrape waits for the speaker.
const SPEAKER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Health {
    /// This node's name (its blocks on `/metrics`).
    pub node: String,
    pub started: Instant,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub view: watch::Receiver<SpeakerView>,
    pub metrics: Metrics,
    pub heart: crate::supervise::Heart,
    pub peers: PeerCache,
}

/// The speaker's peer list, read at most once a second however many probes and scrapes ask
/// (they wait for the one read in flight), and given up on after two seconds: `/metrics`
/// under a scrape storm costs the speaker one request a second, and a busy speaker makes a
/// probe fail instead of hang.
#[derive(Clone, Default)]
pub struct PeerCache(Arc<tokio::sync::Mutex<Option<Fetched>>>);

/// A peer list (or why there is none) and when it was asked for.
type Fetched = (Instant, Result<Vec<PeerStatus>, String>);

impl PeerCache {
    async fn get(
        &self,
        sp: &brindle_bgp::speaker::Speaker,
        m: &Metrics,
    ) -> Result<Vec<PeerStatus>, String> {
        // Waiting for the one request in flight counts against the same timeout, and a
        // failure is shared like an answer: a slow speaker costs each caller at most
        // SPEAKER_TIMEOUT, and itself one request a second.
        let slow = || {
            format!(
                "the BGP speaker did not answer within {} s",
                SPEAKER_TIMEOUT.as_secs()
            )
        };
        let started = Instant::now();
        let Ok(mut cached) = tokio::time::timeout(SPEAKER_TIMEOUT, self.0.lock()).await else {
            return Err(slow());
        };
        if let Some((at, v)) = &*cached {
            if at.elapsed() < PEERS_FRESH {
                return v.clone();
            }
        }
        m.speaker_status_requests.inc();
        let left = SPEAKER_TIMEOUT.saturating_sub(started.elapsed());
        let got = match tokio::time::timeout(left, sp.peers()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(slow()),
        };
        *cached = Some((Instant::now(), got.clone()));
        got
    }
}

impl Health {
    /// Ok when every task has beaten within its limit, else which have not.
    pub fn live(&self) -> Result<String, String> {
        let stale = self.heart.stale();
        if stale.is_empty() {
            Ok("ok".into())
        } else {
            Err(stale.join("\n"))
        }
    }

    /// Ok(()) when ready, else why not.
    pub async fn ready(&self) -> Result<String, String> {
        if !self.snap.borrow().synced {
            return Err("datastore not synced yet".into());
        }
        let view = self.view.borrow().clone();
        let Some(sp) = view.speaker else {
            return Err("BGP speaker not running".into());
        };
        let peers = self.peers.get(&sp, &self.metrics).await?;
        if peers.is_empty() {
            return Ok("ready (no BGP peers)".into());
        }
        let up = |p: &&PeerStatus| p.state == "Established";
        let established = peers.iter().filter(up).count();
        if self.started.elapsed() < STARTUP_THRESHOLD {
            let down: Vec<String> = peers
                .iter()
                .filter(|p| view.kinds.get(&p.addr) == Some(&PeerKind::Mesh) && !up(p))
                .map(|p| p.addr.to_string())
                .collect();
            if !down.is_empty() {
                return Err(format!(
                    "mesh peers not Established yet: {}",
                    down.join(", ")
                ));
            }
            return Ok(format!(
                "ready ({established}/{} peers Established)",
                peers.len()
            ));
        }
        if established == 0 {
            return Err(format!("no BGP peer Established (of {})", peers.len()));
        }
        Ok(format!(
            "ready ({established}/{} peers Established)",
            peers.len()
        ))
    }

    /// Refreshes the IPAM gauges from the snapshot and the BGP gauges from the speaker.
    pub async fn refresh_metrics(&self) {
        let snap = self.snap.borrow().clone();
        self.metrics.ipam_pools.set(&snap, &self.node);
        let Some(sp) = self.view.borrow().speaker.clone() else {
            return;
        };
        let Ok(peers) = self.peers.get(&sp, &self.metrics).await else {
            return;
        };
        self.metrics.sessions.clear();
        self.metrics.peer_established.clear();
        self.metrics.received.clear();
        self.metrics.advertised.clear();
        self.metrics.refused_by_rails.clear();
        self.metrics.prefix_limit_hits.clear();
        if let Some(k) = sp.kernel_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            let m = &self.metrics;
            m.kernel_repairs.inc_by(
                k.repairs
                    .load(Relaxed)
                    .saturating_sub(m.kernel_repairs.get()),
            );
            m.kernel_failures.inc_by(
                k.failures
                    .load(Relaxed)
                    .saturating_sub(m.kernel_failures.get()),
            );
            m.kernel_held.set(k.held.load(Relaxed) as i64);
        }
        for p in &peers {
            self.metrics
                .sessions
                .get_or_create(&StateLabel {
                    state: p.state.clone(),
                })
                .inc();
            let l = PeerLabel {
                peer: p.addr.to_string(),
            };
            self.metrics
                .peer_established
                .get_or_create(&l)
                .set(i64::from(p.state == "Established"));
            self.metrics
                .received
                .get_or_create(&l)
                .set(p.received as i64);
            self.metrics
                .advertised
                .get_or_create(&l)
                .set(p.advertised as i64);
            self.metrics
                .refused_by_rails
                .get_or_create(&l)
                .set(p.refused_by_rails as i64);
            self.metrics
                .prefix_limit_hits
                .get_or_create(&l)
                .set(p.prefix_limit_hits as i64);
        }
    }
}

pub fn router(h: Health) -> Router {
    Router::new()
        .route(
            "/livez",
            get(|State(h): State<Health>| async move {
                match h.live() {
                    Ok(s) => (StatusCode::OK, s + "\n"),
                    Err(s) => (StatusCode::SERVICE_UNAVAILABLE, s + "\n"),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                match h.ready().await {
                    Ok(s) => (StatusCode::OK, s + "\n"),
                    Err(s) => (StatusCode::SERVICE_UNAVAILABLE, s + "\n"),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                h.refresh_metrics().await;
                h.metrics.encode()
            }),
        )
        .with_state(h)
}

/// Logs, once per change, a configured peer that has not been Established for
/// [`STARTUP_THRESHOLD`] (with the speaker's last error) and its coming up again: the
/// speaker itself retries quietly.
pub async fn watch_peers(view: watch::Receiver<SpeakerView>) {
    use std::collections::BTreeMap;
    let mut down_since: BTreeMap<std::net::IpAddr, (Instant, bool)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(sp) = view.borrow().speaker.clone() else {
            continue;
        };
        let Ok(peers) = sp.peers().await else {
            continue;
        };
        let now = Instant::now();
        down_since.retain(|a, _| peers.iter().any(|p| p.addr == *a));
        for p in peers {
            if p.state == "Established" {
                if let Some((_, true)) = down_since.remove(&p.addr) {
                    tracing::info!(peer = %p.addr, "peer Established");
                }
                continue;
            }
            let e = down_since.entry(p.addr).or_insert((now, false));
            if !e.1 && now.duration_since(e.0) >= STARTUP_THRESHOLD {
                e.1 = true;
                tracing::warn!(
                    peer = %p.addr,
                    state = %p.state,
                    last_error = p.last_error.as_deref().unwrap_or("none"),
                    "peer not Established for {}s",
                    STARTUP_THRESHOLD.as_secs()
                );
            }
        }
    }
}
