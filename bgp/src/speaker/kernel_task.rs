//! The one netlink writer. It owns only its own routes:
//!
//! - The core hands over best-route changes through a coalescing map ([`Ops`]): one entry per
//!   prefix, the latest wins, so the queue is bounded by the table whatever the churn.
//! - A route we did not make is never replaced or deleted. A new route is added
//!   create-exclusive, and not at all while a route of another protocol holds the prefix at
//!   any metric (a connected subnet, the host's default route, a pod's `/32`): the prefix is
//!   *held*, logged once, and installed once the other route is gone. Our own routes are
//!   changed by replace (no gap) and deleted by a request naming our protocol.
//! - What we installed is recorded only once the kernel said yes, and the main table is
//!   re-read every [`KernelConfig::rescan`] and soon after any failed write (backing off
//!   while writes keep failing): routes of ours that are missing or different are rewritten,
//!   strays of ours removed, held prefixes retried. [`KernelStats`] counts repairs and
//!   failures.
//!
//! On start, protocol-12 routes left by an earlier run are either purged (a cold start) or,
//! when graceful restart is on, kept: we are the restarting speaker and forwarding goes on
//! through them until the core says it has converged (RFC 4724 §4.1). The core then sends
//! its whole table at once: a route the kernel already holds in that form is left alone (not
//! even rewritten, so `ip monitor route` sees nothing), a different one is replaced, and
//! whatever was not wanted again is purged. On a graceful stop routes stay.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Encap, KernelConfig, SpeakerError};
use crate::kernel::{KernelSync, NextHop, Target, Write};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    Blackhole,
    /// Next hops (ECMP when several), each with its encapsulation.
    Via(Vec<(IpAddr, Encap)>),
}

pub enum Control {
    /// The restarting speaker has its routes again: purge protocol-12 routes not re-made.
    Converged,
    /// Stop; `remove` takes our routes out first.
    Stop {
        remove: bool,
        done: oneshot::Sender<()>,
    },
}

/// What the writer has done, for metrics and status.
#[derive(Debug, Default)]
pub struct KernelStats {
    /// Routes of ours found missing, different or stray by a re-read, and rewritten.
    pub repairs: AtomicU64,
    /// Writes the kernel refused (retried after the next re-read).
    pub failures: AtomicU64,
    /// Prefixes we want but a route of another protocol holds (now).
    pub held: AtomicU64,
    /// Routes of ours in the kernel (now).
    pub installed: AtomicU64,
}

#[derive(Default)]
struct Pending {
    set: HashMap<IpNetwork, Option<Route>>,
    control: Vec<Control>,
}

/// The core's side of the writer: changes coalesce per prefix until the writer takes them.
#[derive(Default)]
pub struct Ops {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Ops {
    fn with(&self, f: impl FnOnce(&mut Pending)) {
        // A poisoned lock only means a panic elsewhere; the map itself is still whole.
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        drop(p);
        self.wake.notify_one();
    }

    /// The prefix's route from now on (None: no route).
    pub fn set(&self, prefix: IpNetwork, route: Option<Route>) {
        self.with(|p| {
            p.set.insert(prefix, route);
        });
    }

    pub fn control(&self, c: Control) {
        self.with(|p| p.control.push(c));
    }

    fn take(&self) -> Pending {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *p)
    }
}

pub struct Started {
    pub ops: Arc<Ops>,
    pub stats: Arc<KernelStats>,
    /// Routes of an earlier run were found and kept (graceful restart).
    pub restarting: bool,
}

pub async fn start(cfg: &KernelConfig, keep_old: bool) -> Result<Started, SpeakerError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| SpeakerError::Kernel(e.to_string()))?;
    tokio::spawn(conn);
    let sync = KernelSync::new(handle.clone(), cfg.metric);
    let scan = sync
        .scan()
        .await
        .map_err(|e| SpeakerError::Kernel(format!("listing routes: {e}")))?;
    let old = scan.ours;
    let restarting = keep_old && !old.is_empty();
    if restarting {
        info!(
            routes = old.len(),
            "kept protocol-12 routes of the last run while we restart"
        );
    } else if !old.is_empty() {
        let errs = sync
            .write(old.iter().map(|r| Write::Remove(r.0)).collect())
            .await;
        info!(
            routes = old.len(),
            failed = errs.len(),
            "purged protocol-12 routes of an earlier run"
        );
    }
    let ops = Arc::new(Ops::default());
    let stats = Arc::new(KernelStats::default());
    let w = Writer {
        sync,
        handle,
        ops: ops.clone(),
        stats: stats.clone(),
        rescan: cfg.rescan.max(Duration::from_millis(100)),
        want: HashMap::new(),
        ours: HashMap::new(),
        kept: if restarting {
            old.into_iter().collect()
        } else {
            HashMap::new()
        },
        foreign: scan.foreign,
        held: HashSet::new(),
        tunl0: None,
        backoff: Duration::from_secs(1),
    };
    tokio::spawn(w.run());
    Ok(Started {
        ops,
        stats,
        restarting,
    })
}

struct Writer {
    sync: KernelSync,
    handle: rtnetlink::Handle,
    ops: Arc<Ops>,
    stats: Arc<KernelStats>,
    rescan: Duration,
    /// What the core wants, per prefix.
    want: HashMap<IpNetwork, Route>,
    /// What we installed and the kernel confirmed: a 64-bit digest of each route's form (a
    /// change that leaves a route as it is writes nothing, so `ip monitor route` sees real
    /// changes only).
    ours: HashMap<IpNetwork, u64>,
    /// Our routes of the last run, kept while we restart.
    kept: HashMap<IpNetwork, Option<Target>>,
    /// Prefixes routes of other protocols held at the last re-read.
    foreign: HashSet<IpNetwork>,
    /// Wanted prefixes we leave to a foreign route.
    held: HashSet<IpNetwork>,
    tunl0: Option<u32>,
    /// Until the next re-read after a failed write (doubles while failures go on).
    backoff: Duration,
}

async fn tunl0(handle: &rtnetlink::Handle) -> Option<u32> {
    use futures::TryStreamExt;
    let mut s = handle
        .link()
        .get()
        .match_name(String::from("tunl0"))
        .execute();
    s.try_next().await.ok()?.map(|l| l.header.index)
}

impl Writer {
    async fn run(mut self) {
        let mut next_scan = Instant::now() + self.rescan;
        loop {
            let scan_due = tokio::select! {
                _ = self.ops.wake.notified() => false,
                _ = tokio::time::sleep_until(next_scan) => true,
            };
            let Pending { set, control } = self.ops.take();
            let mut failed = false;
            if !set.is_empty() {
                failed |= self.apply(set).await;
            }
            for c in control {
                match c {
                    Control::Converged => self.converged().await,
                    Control::Stop { remove, done } => {
                        if remove {
                            self.remove_all().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                }
            }
            if scan_due {
                failed |= self.repair().await;
                next_scan = Instant::now() + self.rescan;
                if !failed {
                    self.backoff = Duration::from_secs(1);
                }
            }
            if failed {
                // Re-read soon, then less and less often while writes keep failing.
                next_scan = next_scan.min(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.rescan);
            }
            self.stats
                .held
                .store(self.held.len() as u64, Ordering::Relaxed);
            self.stats
                .installed
                .store(self.ours.len() as u64, Ordering::Relaxed);
        }
    }

    fn target(&self, r: &Route) -> Target {
        target(r, self.tunl0)
    }

    /// Looks tunl0 up when a route needs it and its index is not known.
    async fn ensure_tunl0(&mut self, ipip: bool) {
        if ipip && self.tunl0.is_none() {
            self.tunl0 = tunl0(&self.handle).await;
        }
    }

    /// The core's changes. Returns whether a write failed.
    async fn apply(&mut self, set: HashMap<IpNetwork, Option<Route>>) -> bool {
        self.ensure_tunl0(set.values().flatten().any(is_ipip)).await;
        let mut writes = vec![];
        let mut same = 0;
        for (p, w) in set {
            match w {
                Some(r) => {
                    let d = digest(&r);
                    let t = self.target(&r);
                    self.want.insert(p, r);
                    if let Some(had) = self.kept.remove(&p) {
                        // A route of ours from before the restart: adopt it if it is already
                        // what we want, otherwise change it in place.
                        if had.as_ref().is_some_and(|h| t.is_met_by(h)) {
                            same += 1;
                            self.ours.insert(p, d);
                        } else {
                            writes.push(Write::Replace(p, t));
                        }
                        continue;
                    }
                    match self.ours.get(&p) {
                        Some(had) if *had == d => {}
                        Some(_) => writes.push(Write::Replace(p, t)),
                        None if self.foreign.contains(&p) => self.hold(p),
                        None => writes.push(Write::Create(p, t)),
                    }
                }
                None => {
                    self.want.remove(&p);
                    self.held.remove(&p);
                    if self.ours.contains_key(&p) {
                        writes.push(Write::Remove(p));
                    }
                }
            }
        }
        if same > 0 {
            info!(
                unchanged = same,
                "routes kept through the restart are already as wanted"
            );
        }
        self.write(writes).await
    }

    fn hold(&mut self, p: IpNetwork) {
        if self.held.insert(p) {
            info!(prefix = %p, "not installing a route: one of another protocol holds this prefix (ours goes in once it is gone)");
        }
    }

    /// Writes and records what the kernel accepted. Returns whether a write failed (a create
    /// that found a route there is a hold, not a failure).
    async fn write(&mut self, writes: Vec<Write>) -> bool {
        if writes.is_empty() {
            return false;
        }
        let errors = self.sync.write(writes.clone()).await;
        let mut bad: HashMap<IpNetwork, &crate::kernel::KernelError> = HashMap::new();
        for e in &errors {
            if let Some(p) = e.prefix() {
                bad.insert(p, e);
            }
        }
        let mut failed = false;
        for w in writes {
            let p = w.prefix();
            match (bad.get(&p), w) {
                (None, Write::Remove(_)) => {
                    self.ours.remove(&p);
                }
                (None, Write::Create(..) | Write::Replace(..)) => {
                    if let Some(r) = self.want.get(&p) {
                        self.ours.insert(p, digest(r));
                    }
                    self.held.remove(&p);
                }
                (Some(e), Write::Create(..)) if e.exists() => {
                    // Someone else's route at our metric, made since the last re-read.
                    self.foreign.insert(p);
                    self.hold(p);
                }
                (Some(e), _) => {
                    warn!("{e} (retried after the next re-read of the table)");
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    // Not recorded: the re-read finds out what the kernel has.
                    self.ours.remove(&p);
                    failed = true;
                }
            }
        }
        failed
    }

    /// Re-reads the main table and repairs the difference. Returns whether a write failed.
    async fn repair(&mut self) -> bool {
        if !self.kept.is_empty() {
            return false; // restarting: the core's whole table comes first
        }
        // Looked up again: a tunl0 made anew has another index.
        self.tunl0 = None;
        self.ensure_tunl0(self.want.values().any(is_ipip)).await;
        let scan = match self.sync.scan().await {
            Ok(s) => s,
            Err(e) => {
                warn!("re-reading the kernel's routes failed: {e}");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        };
        self.foreign = scan.foreign;
        // Two routes of ours for one prefix (another metric, from a run configured so): the
        // one at our metric counts, so the other never makes ours look changed.
        let mut theirs: HashMap<IpNetwork, Option<Target>> = HashMap::new();
        for (p, t) in scan.ours {
            let e = theirs.entry(p).or_insert(None);
            if e.is_none() {
                *e = t;
            }
        }
        let (mut missing, mut changed, mut stray) = (0, 0, 0);
        let mut writes = vec![];
        for (p, r) in &self.want {
            let t = target(r, self.tunl0);
            match theirs.get(p) {
                Some(Some(have)) if t.is_met_by(have) => {
                    self.ours.insert(*p, digest(r));
                    self.held.remove(p);
                }
                Some(_) => {
                    changed += 1;
                    writes.push(Write::Replace(*p, t));
                }
                None => {
                    // Gone (flushed, or replaced by someone else's route) or never made.
                    let was_ours = self.ours.remove(p).is_some();
                    if self.foreign.contains(p) {
                        if was_ours {
                            warn!(prefix = %p, "a route of another protocol took the place of ours: leaving it");
                        }
                        self.held.insert(*p);
                    } else {
                        if was_ours {
                            missing += 1;
                        } else if self.held.remove(p) {
                            info!(prefix = %p, "the route of another protocol is gone: installing ours");
                        }
                        writes.push(Write::Create(*p, t));
                    }
                }
            }
        }
        for p in theirs.keys().filter(|p| !self.want.contains_key(p)) {
            stray += 1;
            writes.push(Write::Remove(*p));
        }
        let n = missing + changed + stray;
        if n > 0 {
            warn!(
                missing,
                changed, stray, "the kernel's routes differed from ours: repairing"
            );
            self.stats.repairs.fetch_add(n, Ordering::Relaxed);
        }
        self.write(writes).await
    }

    async fn converged(&mut self) {
        let stale: Vec<Write> = self
            .kept
            .drain()
            .filter(|(p, _)| !self.want.contains_key(p))
            .map(|(p, _)| Write::Remove(p))
            .collect();
        let n = stale.len();
        let errs = self.sync.write(stale).await;
        info!(
            purged = n,
            failed = errs.len(),
            "converged after restart: purged routes not learned again"
        );
    }

    async fn remove_all(&mut self) {
        let all: Vec<Write> = self
            .ours
            .drain()
            .map(|(p, _)| p)
            .chain(self.kept.drain().map(|(p, _)| p))
            .map(Write::Remove)
            .collect();
        for e in self.sync.write(all).await {
            warn!("{e}");
        }
    }
}

fn is_ipip(r: &Route) -> bool {
    matches!(r, Route::Via(v) if v.iter().any(|h| h.1 == Encap::Ipip))
}

/// A route's form, hashed with fixed keys (SipHash): equal forms, equal digests.
fn digest(r: &Route) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.hash(&mut h);
    h.finish()
}

fn target(w: &Route, tunl0: Option<u32>) -> Target {
    match w {
        Route::Blackhole => Target::Blackhole,
        Route::Via(hops) => Target::Via(
            hops.iter()
                .map(|(gateway, encap)| match encap {
                    Encap::Ipip => NextHop {
                        gateway: *gateway,
                        ifindex: tunl0,
                        onlink: true,
                    },
                    // CrossSubnet was resolved to one of the others by the core.
                    Encap::None | Encap::CrossSubnet => NextHop {
                        gateway: *gateway,
                        ifindex: None,
                        onlink: false,
                    },
                })
                .collect(),
        ),
    }
}
