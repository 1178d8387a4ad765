//! The controller's `/metrics` (Prometheus) and `/healthz`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabel {
    /// full or incremental
    pub scope: String,
    /// ok or error
    pub result: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub leader: Gauge,
    pub passes: Family<PassLabel, Counter>,
    pub pass_seconds: Histogram,
    pub released: Counter,
    pub blocks_freed: Counter,
    pub affinities_freed: Counter,
    pub handles_repaired: Counter,
    pub suspects: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("brindle_controller");
        let leader = Gauge::default();
        let passes = Family::<PassLabel, Counter>::default();
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let (released, blocks_freed) = (Counter::default(), Counter::default());
        let (affinities_freed, handles_repaired) = (Counter::default(), Counter::default());
        let suspects = Gauge::default();
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            leader,
            passes,
            pass_seconds,
            released,
            blocks_freed,
            affinities_freed,
            handles_repaired,
            suspects,
        };
        r.register(
            "leader",
            "1 while this replica holds the lease and collects, else 0",
            m.leader.clone(),
        );
        r.register(
            "gc_passes",
            "Garbage collection passes by scope (full, incremental) and result",
            m.passes.clone(),
        );
        r.register(
            "gc_pass_seconds",
            "One garbage collection pass",
            m.pass_seconds.clone(),
        );
        r.register(
            "gc_released_addresses",
            "Addresses released because their pod or node was gone past the grace period",
            m.released.clone(),
        );
        r.register(
            "gc_blocks_freed",
            "Blocks freed (their node gone, or empty and unaffined)",
            m.blocks_freed.clone(),
        );
        r.register(
            "gc_affinities_freed",
            "Block affinities freed (their node gone)",
            m.affinities_freed.clone(),
        );
        r.register(
            "gc_handles_repaired",
            "Owner records rewritten to agree with the blocks",
            m.handles_repaired.clone(),
        );
        r.register(
            "gc_suspects",
            "Addresses whose owner looked gone at the last pass, within their grace period",
            m.suspects.clone(),
        );
        Metrics {
            registry: Arc::new(Mutex::new(r)),
            ..m
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

/// What `/healthz` looks at: the election's heartbeat (it tries to take or renew the lease
/// every retry period, leader or not).
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    pub heartbeat: Option<(Arc<AtomicU64>, Instant)>,
    /// Silence longer than this is unhealthy.
    pub stale_after: Duration,
}

async fn healthz(State(h): State<Health>) -> (StatusCode, String) {
    let role = if h.metrics.leader.get() == 1 {
        "leader"
    } else {
        "standing by"
    };
    if let Some((beat, start)) = &h.heartbeat {
        let quiet = crate::leader::Elector::since_heartbeat(beat, *start);
        if quiet > h.stale_after {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("leader election stuck: no attempt for {quiet:?}\n"),
            );
        }
    }
    (StatusCode::OK, format!("ok ({role})\n"))
}

async fn metrics(State(h): State<Health>) -> String {
    h.metrics.encode()
}

pub fn router(h: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(h)
}
