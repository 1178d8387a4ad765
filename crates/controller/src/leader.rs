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
    /// The lease's resourceVersion when we last saw it change, and when (our clock);
    /// [`GONE`] when we saw it missing.
    observed: Option<(String, Instant)>,
    /// We hold the lease (as of our last attempt).
    holding: bool,
    /// Milliseconds since `start` of the last attempt (the health endpoint's heartbeat).
    pub heartbeat: Arc<AtomicU64>,
    start: Instant,
}

/// `observed` for a lease seen missing.
const GONE: &str = "(gone)";

/// One try at the lease.
struct Attempt {
    held: bool,
    /// When the try began.
    started: Instant,
    /// Who holds it, as read.
    holder: String,
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
            holding: false,
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

    /// Takes or renews the lease. Times are taken conservatively: the attempt's start is
    /// when a renewal counts from (the holder's deadline), the moment the read returned is
    /// when a change was seen (a candidate's wait).
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, StoreError> {
        self.beat();
        let started = Instant::now();
        let secs = self.cfg.lease_duration.as_secs().max(1) as i32;
        let found = self.api.get(&self.cfg.name).await?;
        let seen_at = Instant::now();
        let attempt = |held: bool, holder: String| Attempt {
            held,
            started,
            holder,
        };
        let Some(mut lease) = found else {
            // Gone. Its holder (us) makes it again at once; a candidate that saw it before
            // treats its disappearance as a change seen now and waits a whole lease duration
            // (its holder may not know yet); on a new cluster nobody has seen one.
            let waited = match &self.observed {
                _ if self.holding => true,
                None => true,
                Some((rv, at)) if rv == GONE => {
                    seen_at.duration_since(*at) >= self.cfg.lease_duration
                }
                Some(_) => {
                    self.observed = Some((GONE.to_string(), seen_at));
                    false
                }
            };
            if !waited {
                return Ok(attempt(false, String::new()));
            }
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
            let written = self.api.create(&lease).await;
            let held = self.settle(written, StoreError::is_already_exists, seen_at)?;
            let holder = if held {
                self.cfg.identity.clone()
            } else {
                String::new()
            };
            return Ok(attempt(held, holder));
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
            self.observed = Some((rv, seen_at));
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let theirs = !holder.is_empty() && holder != self.cfg.identity;
        if theirs {
            self.holding = false;
            // Their word for how long the lease lasts, at least ours.
            let lasts = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64)
                .max(self.cfg.lease_duration);
            let seen = self.observed.as_ref().map_or(seen_at, |(_, at)| *at);
            if seen_at.duration_since(seen) < lasts {
                return Ok(attempt(false, holder));
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
        let written = self.api.update(&lease).await;
        let held = self.settle(written, StoreError::is_conflict, seen_at)?;
        Ok(attempt(
            held,
            if held {
                self.cfg.identity.clone()
            } else {
                holder
            },
        ))
    }

    /// The outcome of writing the lease: held when written (the new version seen at
    /// `seen_at`), not held when `lost` says another write won the race.
    fn settle(
        &mut self,
        written: Result<Lease, StoreError>,
        lost: fn(&StoreError) -> bool,
        seen_at: Instant,
    ) -> Result<bool, StoreError> {
        match written {
            Ok(made) => {
                self.observed = made.metadata.resource_version.map(|rv| (rv, seen_at));
                self.holding = true;
                Ok(true)
            }
            Err(e) if lost(&e) => {
                self.holding = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Returns once we hold the lease: when the winning attempt began (the first renewal
    /// deadline counts from it).
    pub async fn acquire(&mut self) -> Instant {
        let mut said = false;
        loop {
            let tried = tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew());
            match tried.await {
                Ok(Ok(a)) if a.held => {
                    info!(identity = %self.cfg.identity, lease = %self.cfg.name, "leading");
                    return a.started;
                }
                Ok(Ok(a)) => {
                    if !said {
                        info!(identity = %self.cfg.identity, holder = a.holder, "another controller leads; standing by");
                        said = true;
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election: the lease cannot be read or written")
                }
                Err(_) => warn!(
                    "leader election: the datastore did not answer within {:?}",
                    self.cfg.renew_deadline
                ),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the lease while we hold it; returns (with why) as soon as we may no longer
    /// lead: the renew deadline passed since the last renewal began, or another holds it.
    pub async fn keep(&mut self, mut last_ok: Instant) -> String {
        loop {
            let deadline = last_ok + self.cfg.renew_deadline;
            tokio::time::sleep_until(
                (Instant::now() + self.cfg.retry_period)
                    .min(deadline)
                    .into(),
            )
            .await;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(a)) if a.held => last_ok = a.started,
                Ok(Ok(a)) => return format!("the lease is held by {:?} now", a.holder),
                Ok(Err(e)) => warn!(error = %e, "renewing the lease failed; retrying"),
                Err(_) => {}
            }
        }
        self.holding = false;
        format!(
            "the lease was not renewed within {:?} (the datastore did not answer)",
            self.cfg.renew_deadline
        )
    }

    /// Gives the lease up (shutdown): the next candidate need not wait for it to expire.
    pub async fn release(&mut self) {
        let bound = self.cfg.retry_period;
        if tokio::time::timeout(bound, self.release_now())
            .await
            .is_err()
        {
            warn!("could not give up the lease within {bound:?}; it expires on its own");
        }
    }

    async fn release_now(&mut self) {
        self.holding = false;
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
        assert!(
            a.try_acquire_or_renew().await.unwrap().held,
            "first takes it"
        );
        assert!(
            !b.try_acquire_or_renew().await.unwrap().held,
            "second waits"
        );
        assert!(
            a.try_acquire_or_renew().await.unwrap().held,
            "holder renews"
        );
        // b keeps seeing renewals: never takes it.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(a.try_acquire_or_renew().await.unwrap().held);
            assert!(!b.try_acquire_or_renew().await.unwrap().held);
        }
        // a stops renewing (a crash): b takes over only after a whole lease duration.
        let stopped = Instant::now();
        loop {
            if b.try_acquire_or_renew().await.unwrap().held {
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
        assert!(!a.try_acquire_or_renew().await.unwrap().held);
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
        assert!(a.try_acquire_or_renew().await.unwrap().held);
        // The lease deleted under a (by hand): b, which saw it before, does not take the
        // gap; a, its holder, makes it again at its next renewal; b still stands by.
        store
            .namespaced::<Lease>("brindle-system")
            .delete("brindle-controller", None)
            .await
            .unwrap();
        assert!(!b.try_acquire_or_renew().await.unwrap().held, "b waits");
        assert!(
            a.try_acquire_or_renew().await.unwrap().held,
            "a makes it again"
        );
        assert!(!b.try_acquire_or_renew().await.unwrap().held);
        // Deleted and its holder gone: b takes it once a whole lease duration has passed.
        store
            .namespaced::<Lease>("brindle-system")
            .delete("brindle-controller", None)
            .await
            .unwrap();
        assert!(!b.try_acquire_or_renew().await.unwrap().held);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(b.try_acquire_or_renew().await.unwrap().held);
    }
}
