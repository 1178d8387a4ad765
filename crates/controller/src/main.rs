//! `brindle-controller`: IPAM garbage collection for the cluster.
//!
//! ```text
//!   pod watch  ──┐                           ┌─ incremental pass (dirty nodes, debounced)
//!   node watch ──┼─> Change ─> main loop ────┤
//!   timers     ──┘   (channel)  owns caches  └─ full pass every --resync
//! ```
//!
//! The watches keep a cache of which pods and nodes exist; a deleted pod or node marks its
//! node dirty. Passes are run by `brindle_ipam::gc::Collector`: suspects are released only
//! after `--grace` and a fresh read of the owner, so a stale cache never frees a live pod's
//! address. Deleted nodes' blocks, affinities and tunnel addresses are freed.
//!
//! Replicas elect a leader over a Lease (`leader.rs`); only the leader collects. The others
//! keep their caches warm and take over when its lease lapses; a leader that cannot renew
//! stops collecting (a pass in flight is dropped) before another may take over, so two
//! never collect at once, and stands by again.

mod default_pool;
mod leader;
mod metrics;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use brindle_datastore::DatastoreArgs;
use brindle_ipam::gc::{Collector, OwnerSnapshot};
use brindle_ipam::Ipam;
use clap::Parser;
use tokio::time::Instant;
use tracing::{error, info, warn};
use watch::Change;

#[derive(Parser, Debug)]
#[command(
    name = "brindle-controller",
    version,
    about = "Brindle IPAM garbage collector"
)]
struct Args {
    #[command(flatten)]
    datastore: DatastoreArgs,

    #[command(flatten)]
    default_pool: default_pool::DefaultPool,

    /// How long an address must look orphaned before it is released (e.g. 15m, 90s).
    #[arg(long, env = "BRINDLE_GC_GRACE", default_value = "15m", value_parser = duration)]
    grace: Duration,

    /// Full pass over all IPAM data this often.
    #[arg(long, env = "BRINDLE_GC_RESYNC", default_value = "5m", value_parser = duration)]
    resync: Duration,

    /// Wait this long after a change before an incremental pass, to batch changes.
    #[arg(long, default_value = "2s", value_parser = duration)]
    debounce: Duration,

    /// Log filter (tracing-subscriber syntax), e.g. info or brindle_ipam=debug.
    #[arg(long, env = "BRINDLE_LOG", default_value = "info")]
    log: String,

    /// `/metrics` and `/healthz` on this address; `none` turns them off.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "[::]:9094")]
    metrics_listen: String,

    /// Elect a leader among replicas (a coordination.k8s.io Lease); false: this one
    /// collects alone (never run two replicas so).
    #[arg(long, env = "BRINDLE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// The Lease's namespace (the pod's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "brindle-system")]
    leader_elect_namespace: String,

    /// This replica's name in the Lease (default: the pod's name, else hostname and PID).
    #[arg(long, env = "POD_NAME")]
    leader_elect_identity: Option<String>,

    /// How long a lease lasts unrenewed before another replica may take it.
    #[arg(long, default_value = "15s", value_parser = duration)]
    leader_elect_lease_duration: Duration,

    /// A leader that has not renewed for this long stops collecting and stands by: shorter
    /// than the lease.
    #[arg(long, default_value = "10s", value_parser = duration)]
    leader_elect_renew_deadline: Duration,

    /// How often to renew, and to try to take the lease when standing by.
    #[arg(long, default_value = "2s", value_parser = duration)]
    leader_elect_retry_period: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    brindle_api::validation::parse_duration_secs(s).map(Duration::from_secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if args.leader_elect
        && (args.leader_elect_renew_deadline >= args.leader_elect_lease_duration
            || args.leader_elect_retry_period >= args.leader_elect_renew_deadline)
    {
        anyhow::bail!(
            "--leader-elect-retry-period ({:?}) < --leader-elect-renew-deadline ({:?}) < \
             --leader-elect-lease-duration ({:?}) must hold: a leader must stop before another \
             may take over",
            args.leader_elect_retry_period,
            args.leader_elect_renew_deadline,
            args.leader_elect_lease_duration
        );
    }
    let store = args
        .datastore
        .connect()
        .await
        .context("connecting to the datastore")?;
    // A failure here ends the controller (its pod restarts with backoff, the log says why).
    args.default_pool.ensure(&store).await?;
    info!(backend = store.backend_name(), grace = ?args.grace, resync = ?args.resync, "brindle-controller starting");
    let m = metrics::Metrics::new();
    let (leading_tx, leading) = tokio::sync::watch::channel(!args.leader_elect);
    let mut elector = args.leader_elect.then(|| {
        let identity = args.leader_elect_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}_{}", host.trim(), std::process::id())
        });
        leader::Elector::new(
            &store,
            leader::Config {
                namespace: args.leader_elect_namespace.clone(),
                name: "brindle-controller".into(),
                identity,
                lease_duration: args.leader_elect_lease_duration,
                renew_deadline: args.leader_elect_renew_deadline,
                retry_period: args.leader_elect_retry_period,
            },
        )
    });
    if args.metrics_listen != "none" {
        let addr: std::net::SocketAddr = args
            .metrics_listen
            .parse()
            .context("--metrics-listen: not address:port or none")?;
        let h = metrics::Health {
            metrics: m.clone(),
            heartbeat: elector.as_ref().map(|e| (e.heartbeat.clone(), e.started())),
            stale_after: args.leader_elect_lease_duration * 2,
        };
        tokio::spawn(async move {
            // `[::]` takes both families; a host without IPv6 gets `0.0.0.0` instead.
            let bound = match tokio::net::TcpListener::bind(addr).await {
                Err(_) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
                    let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
                    tokio::net::TcpListener::bind(v4).await
                }
                r => r,
            };
            match bound {
                Ok(l) => {
                    info!(%addr, "metrics and health listening");
                    if let Err(e) = axum::serve(l, metrics::router(h)).await {
                        error!("metrics server failed: {e}");
                    }
                }
                Err(e) => error!(%addr, "metrics: cannot listen: {e}"),
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    watch::spawn(store.clone(), tx);
    let ipam = Ipam::new(store);
    // The election: stand by until this replica holds the lease, then keep it. A lost lease
    // stops collection at once (a pass in flight is dropped) and the replica stands by again.
    let elect = async {
        let Some(e) = elector.as_mut() else {
            return std::future::pending::<anyhow::Result<()>>().await;
        };
        loop {
            let since = e.acquire().await;
            m.leader.set(1);
            let _ = leading_tx.send(true);
            let why = e.keep(since).await;
            m.leader.set(0);
            let _ = leading_tx.send(false);
            warn!("no longer leading: {why}; collection stopped, standing by");
        }
    };
    if !args.leader_elect {
        m.leader.set(1);
    }
    let r = tokio::select! {
        r = run(&args, &ipam, rx, leading, &m) => r,
        r = elect => r,
        _ = shutdown() => {
            info!("shutting down");
            Ok(())
        }
    };
    if let Some(e) = elector.as_mut() {
        if m.leader.get() == 1 {
            e.release().await;
        }
    }
    r
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the controller");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[derive(Default)]
struct Owners {
    /// (namespace, name) → node the pod runs on.
    pods: BTreeMap<(String, String), Option<String>>,
    nodes: HashSet<String>,
    synced_pods: bool,
    synced_nodes: bool,
}

impl Owners {
    fn snapshot(&self) -> OwnerSnapshot {
        OwnerSnapshot {
            nodes: self.nodes.clone(),
            pods: self.pods.keys().cloned().collect(),
        }
    }

    /// Applies a change; returns the node it makes dirty, if any.
    fn apply(&mut self, c: Change) -> Option<String> {
        match c {
            Change::PodsListed(pods) => {
                self.pods = pods.into_iter().collect();
                self.synced_pods = true;
                None
            }
            Change::PodUp(key, node) => {
                self.pods.insert(key, node);
                None
            }
            Change::PodGone(key, node) => {
                let cached = self.pods.remove(&key).flatten();
                node.or(cached)
            }
            Change::NodesListed(nodes) => {
                self.nodes = nodes.into_iter().collect();
                self.synced_nodes = true;
                None
            }
            Change::NodeUp(n) => {
                self.nodes.insert(n);
                None
            }
            Change::NodeGone(n) => {
                self.nodes.remove(&n);
                Some(n)
            }
        }
    }
}

/// How often the leader checks the datastore's indexes when the last check found nothing.
const REPAIR_EVERY: Duration = Duration::from_secs(3600);

async fn run(
    args: &Args,
    ipam: &Ipam,
    mut rx: tokio::sync::mpsc::Receiver<Change>,
    mut leading: tokio::sync::watch::Receiver<bool>,
    m: &metrics::Metrics,
) -> anyhow::Result<()> {
    let mut owners = Owners::default();
    let mut gc = Collector::new(args.grace);
    let mut dirty: HashSet<String> = HashSet::new();
    // Nodes to look at again once their suspects' grace period is over.
    let mut recheck: BTreeMap<Instant, HashSet<String>> = BTreeMap::new();
    let mut next_full = Instant::now();
    let mut next_incremental: Option<Instant> = None;
    // The datastore's indexes (etcd's node index) are checked by each new leader, then every
    // hour, and at every full pass while a check finds something to fix: during a rolling
    // upgrade, nodes still on an older version write pod records without the index.
    let mut next_repair = Instant::now();
    loop {
        let synced = owners.synced_pods && owners.synced_nodes;
        // Timers only matter when a pass may run: a replica standing by (or with its caches
        // still filling) waits for changes alone, not for deadlines already past.
        let timers = synced && *leading.borrow();
        let recheck_at = recheck.keys().next().copied();
        let wake = [Some(next_full), next_incremental, recheck_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_full);
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { anyhow::bail!("the watch tasks stopped") };
                if let Some(node) = owners.apply(change) {
                    dirty.insert(node);
                    next_incremental.get_or_insert(Instant::now() + args.debounce);
                }
            }
            _ = tokio::time::sleep_until(wake), if timers => {}
            changed = leading.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the leader election stopped");
                }
                // Newly leading: a full pass at once (the cache is warm already).
                next_full = Instant::now();
                next_repair = Instant::now();
            }
        }
        if !synced {
            continue; // never judge owners from a half-filled cache
        }
        if !*leading.borrow() {
            continue; // standing by: the cache is kept, nothing is collected
        }
        let now = Instant::now();
        while let Some(entry) = recheck.first_entry() {
            if *entry.key() > now {
                break;
            }
            dirty.extend(entry.remove());
            next_incremental.get_or_insert(now);
        }
        let full = now >= next_full;
        let incremental = next_incremental.is_some_and(|t| now >= t) && !dirty.is_empty();
        if !full && !incremental {
            continue;
        }
        let scope = if full {
            None
        } else {
            Some(std::mem::take(&mut dirty))
        };
        if full && now >= next_repair {
            match ipam.store().repair_indexes().await {
                Ok(0) => next_repair = now + REPAIR_EVERY,
                Ok(n) => info!(
                    fixed = n,
                    "repaired the datastore's node index (pods' records by node); checking again at the next full pass"
                ),
                Err(e) => warn!("cannot check the datastore's node index, will try again: {e}"),
            }
        }
        let mut full_due = None;
        let started = std::time::Instant::now();
        let snapshot = owners.snapshot();
        let result = tokio::select! {
            r = gc.pass(ipam, &snapshot, scope.as_ref(), now.into_std()) => Some(r),
            // The lease lost mid-pass: stop before another replica may start.
            _ = leading.wait_for(|l| !*l) => None,
        };
        let Some(result) = result else {
            warn!("the lease was lost during a pass: stopped it");
            if let Some(s) = scope {
                dirty.extend(s);
            }
            continue;
        };
        m.pass_seconds.observe(started.elapsed().as_secs_f64());
        m.passes
            .get_or_create(&metrics::PassLabel {
                scope: if full { "full" } else { "incremental" }.into(),
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            })
            .inc();
        match result {
            Ok(r) => {
                m.released.inc_by(r.released.len() as u64);
                m.blocks_freed.inc_by(r.blocks_freed.len() as u64);
                m.affinities_freed.inc_by(r.affinities_freed.len() as u64);
                m.handles_repaired.inc_by(r.handles_repaired.len() as u64);
                m.suspects.set(r.suspects as i64);
                let acted = !r.released.is_empty()
                    || !r.handles_repaired.is_empty()
                    || !r.blocks_freed.is_empty()
                    || !r.affinities_freed.is_empty();
                if acted {
                    info!(full, suspects = r.suspects, released = ?r.released, kept_live = r.kept_live,
                        handles_repaired = ?r.handles_repaired, blocks_freed = ?r.blocks_freed,
                        affinities_freed = ?r.affinities_freed, "gc pass");
                } else if r.suspects > 0 {
                    tracing::debug!(
                        full,
                        suspects = r.suspects,
                        "gc pass: suspects within their grace period"
                    );
                }
                // Suspects are judged again when their grace period is over.
                let due = now + args.grace + Duration::from_millis(10);
                match (&scope, r.suspects > 0) {
                    (_, false) => {}
                    (None, true) => full_due = Some(due),
                    (Some(nodes), true) => recheck
                        .entry(due)
                        .or_default()
                        .extend(nodes.iter().cloned()),
                }
            }
            Err(e) => {
                // The datastore may be down: keep the dirty set and try again later.
                error!(error = %e, "gc pass failed; retrying");
                if let Some(s) = scope {
                    dirty.extend(s);
                }
                let retry = now + args.debounce.max(Duration::from_secs(1));
                next_incremental = Some(retry);
                if full {
                    next_full = retry;
                }
                continue;
            }
        }
        next_incremental = None;
        if full {
            next_full = full_due.map_or(now + args.resync, |d| d.min(now + args.resync));
            dirty.clear();
        }
    }
}
