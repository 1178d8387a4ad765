//! Leader election over a `coordination.k8s.io` Lease in the datastore (the Kubernetes
//! object, or the same object under its key in etcd), as client-go's leaderelection does it:
//!
//! - the holder renews the lease every retry period;
//! - another candidate takes it only after seeing it unchanged (same resourceVersion) for a
//!   whole lease duration by its own clock — no trust in the holder's clock;
//! - a holder that has not renewed within the renew deadline (shorter than the lease
//!   duration) stops leading, before any other candidate may take over: never two leaders;
//! - every write is a compare-and-swap on the resourceVersion, so two candidates racing for
//!   an expired lease cannot both win;
//! - on shutdown the holder gives the lease up, so the next candidate takes over at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_datastore::{Api, Store, StoreError};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: Config,
    /// The lease's resourceVersion when we last saw it change, and when (our clock).
    observed: Option<(String, Instant)>,
    /// Milliseconds since `start` of the last attempt (the health endpoint's heartbeat).
    pub heartbeat: Arc<AtomicU64>,
    start: Instant,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    pub fn new(store: &Store, cfg: Config) -> Elector {
        Elector {
            api: store.namespaced::<Lease>(&cfg.namespace),
            cfg,
            observed: None,
            heartbeat: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
        }
    }

    /// Milliseconds since the last attempt to acquire or renew.
    pub fn since_heartbeat(heartbeat: &AtomicU64, start: Instant) -> Duration {
        let last = Duration::from_millis(heartbeat.load(Ordering::Relaxed));
        start.elapsed().saturating_sub(last)
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    fn beat(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.heartbeat.store(ms, Ordering::Relaxed);
    }

    /// Takes or renews the lease: true when we hold it afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, StoreError> {
        self.beat();
        let now = Instant::now();
        let secs = self.cfg.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&lease).await {
                Ok(made) => {
                    self.observed = made.metadata.resource_version.map(|rv| (rv, now));
                    Ok(true)
                }
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
            self.observed = Some((rv, now));
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let theirs = !holder.is_empty() && holder != self.cfg.identity;
        if theirs {
            // Their word for how long the lease lasts, at least ours.
            let lasts = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64)
                .max(self.cfg.lease_duration);
            let seen = self.observed.as_ref().map_or(now, |(_, at)| *at);
            if now.duration_since(seen) < lasts {
                return Ok(false);
            }
            info!(
                holder,
                "the lease was not renewed for {lasts:?}: taking it over"
            );
        }
        if holder != self.cfg.identity {
            spec.acquire_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.cfg.identity.clone());
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now_micro());
        match self.api.update(&lease).await {
            Ok(made) => {
                self.observed = made.metadata.resource_version.map(|rv| (rv, now));
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns once we hold the lease.
    pub async fn acquire(&mut self) {
        let mut said = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.cfg.identity, lease = %self.cfg.name, "leading");
                    return;
                }
                Ok(false) => {
                    if !said {
                        let holder = self.holder().await.unwrap_or_default();
                        info!(identity = %self.cfg.identity, holder, "another controller leads; standing by");
                        said = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election: the lease cannot be read or written"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    async fn holder(&self) -> Option<String> {
        let l = self.api.get(&self.cfg.name).await.ok()??;
        l.spec?.holder_identity
    }

    /// Renews the lease while we hold it; returns (with why) when we no longer may lead: the
    /// renew deadline passed without a successful renewal, or someone else holds it.
    pub async fn keep(&mut self) -> String {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let attempt = Instant::now();
            let left = self.cfg.renew_deadline.saturating_sub(last_ok.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_ok = attempt,
                Ok(Ok(false)) => {
                    let holder = self.holder().await.unwrap_or_default();
                    return format!("the lease is held by {holder:?} now");
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the lease failed; retrying"),
                Err(_) => {}
            }
            if last_ok.elapsed() >= self.cfg.renew_deadline {
                return format!(
                    "the lease was not renewed within {:?} (the datastore did not answer)",
                    self.cfg.renew_deadline
                );
            }
        }
    }

    /// Gives the lease up (shutdown): the next candidate need not wait for it to expire.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self.api.update(&lease).await {
            Ok(_) => info!("gave up the lease"),
            Err(e) => warn!(error = %e, "could not give up the lease; it expires on its own"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str) -> Config {
        Config {
            namespace: "brindle-system".into(),
            name: "brindle-controller".into(),
            identity: id.into(),
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_millis(1000),
            retry_period: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn one_leader_a_takeover_after_the_lease_lapses_and_a_release() {
        let store =
            brindle_datastore::Store::new(brindle_datastore::backend::memory::MemoryBackend::new());
        let mut a = Elector::new(&store, cfg("a"));
        let mut b = Elector::new(&store, cfg("b"));
        assert!(a.try_acquire_or_renew().await.unwrap(), "first takes it");
        assert!(!b.try_acquire_or_renew().await.unwrap(), "second waits");
        assert!(a.try_acquire_or_renew().await.unwrap(), "holder renews");
        // b keeps seeing renewals: never takes it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(a.try_acquire_or_renew().await.unwrap());
            assert!(!b.try_acquire_or_renew().await.unwrap());
        }
        // a stops renewing (a crash): b takes over only after a whole lease duration.
        let stopped = Instant::now();
        loop {
            if b.try_acquire_or_renew().await.unwrap() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            stopped.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            stopped.elapsed()
        );
        // a, back, finds it held: it does not lead.
        assert!(!a.try_acquire_or_renew().await.unwrap());
        let l = store
            .namespaced::<Lease>("brindle-system")
            .get("brindle-controller")
            .await
            .unwrap()
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(l.holder_identity.as_deref(), Some("b"));
        assert_eq!(l.lease_transitions, Some(1));
        // b gives it up: a takes it at once.
        b.release().await;
        assert!(a.try_acquire_or_renew().await.unwrap());
    }
}
