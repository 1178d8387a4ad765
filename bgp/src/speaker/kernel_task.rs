//! The one netlink writer: best-route changes arrive as plain data, are coalesced per prefix
//! and applied through [`KernelSync`] (replaces, pipelined).
//!
//! On start, protocol-12 routes left by an earlier run are either purged (a cold start) or,
//! when graceful restart is on, kept: we are the restarting speaker and forwarding goes on
//! through them until the core says it has converged (RFC 4724 §4.1). The core then sends
//! its whole table at once: a route the kernel already holds in that form is left alone (not
//! even rewritten, so `ip monitor route` sees nothing), a different one is replaced, and
//! whatever was not wanted again is purged. On a graceful stop routes stay.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Encap, KernelConfig, SpeakerError};
use crate::kernel::{KernelSync, NextHop, Target};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    Blackhole,
    /// Next hops (ECMP when several), each with its encapsulation.
    Via(Vec<(IpAddr, Encap)>),
}

pub enum Op {
    Set(IpNetwork, Option<Route>),
    /// The restarting speaker has its routes again: purge protocol-12 routes not re-made.
    Converged,
    /// Stop; `remove` takes our routes out first.
    Stop {
        remove: bool,
        done: oneshot::Sender<()>,
    },
}

pub struct Started {
    pub ops: mpsc::UnboundedSender<Op>,
    /// Routes of an earlier run were found and kept (graceful restart).
    pub restarting: bool,
}

pub async fn start(cfg: &KernelConfig, keep_old: bool) -> Result<Started, SpeakerError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| SpeakerError::Kernel(e.to_string()))?;
    tokio::spawn(conn);
    let sync = KernelSync::new(handle.clone(), cfg.metric);
    let old = sync
        .routes()
        .await
        .map_err(|e| SpeakerError::Kernel(format!("listing routes: {e}")))?;
    let restarting = keep_old && !old.is_empty();
    if restarting {
        info!(
            routes = old.len(),
            "kept protocol-12 routes of the last run while we restart"
        );
    } else if !old.is_empty() {
        let errs = sync.apply(old.iter().map(|r| (r.0, None)).collect()).await;
        info!(
            routes = old.len(),
            failed = errs.len(),
            "purged protocol-12 routes of an earlier run"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let kept = if restarting { old } else { vec![] };
    tokio::spawn(run(sync, handle, rx, kept.into_iter().collect()));
    Ok(Started {
        ops: tx,
        restarting,
    })
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

async fn run(
    sync: KernelSync,
    handle: rtnetlink::Handle,
    mut rx: mpsc::UnboundedReceiver<Op>,
    mut kept: HashMap<IpNetwork, Option<Target>>,
) {
    // What we installed (a 64-bit digest of each route's form, not the route: 8 bytes a
    // prefix at a million routes), so a change that leaves a route as it is writes nothing
    // (a refreshed path, a peer's graceful restart): `ip monitor route` sees real changes.
    let mut installed: HashMap<IpNetwork, u64> = HashMap::new();
    let mut tunl0_index: Option<u32> = None;
    while let Some(op) = rx.recv().await {
        let mut batch: HashMap<IpNetwork, Option<Route>> = HashMap::new();
        let mut control = vec![];
        let mut next = Some(op);
        while let Some(op) = next.take() {
            match op {
                Op::Set(p, w) => {
                    batch.insert(p, w);
                }
                other => control.push(other),
            }
            if batch.len() < 8192 && control.is_empty() {
                next = rx.try_recv().ok();
            }
        }
        if batch
            .values()
            .flatten()
            .any(|w| matches!(w, Route::Via(v) if v.iter().any(|h| h.1 == Encap::Ipip)))
            && tunl0_index.is_none()
        {
            tunl0_index = tunl0(&handle).await;
        }
        let mut same = 0;
        let changes: Vec<(IpNetwork, Option<Target>)> = batch
            .into_iter()
            .filter_map(|(p, w)| {
                let now = w.as_ref().map(digest);
                let was = match now {
                    Some(d) => installed.insert(p, d),
                    None => installed.remove(&p),
                };
                if was.is_some() && was == now {
                    return None;
                }
                let t = w.map(|w| target(w, tunl0_index));
                // A route kept from before our restart that is already what we want.
                let had = kept.remove(&p).flatten();
                if let (Some(t), Some(had)) = (&t, &had) {
                    if t.is_met_by(had) {
                        same += 1;
                        return None;
                    }
                }
                Some((p, t))
            })
            .collect();
        if same > 0 {
            info!(
                unchanged = same,
                "routes kept through the restart are already as wanted"
            );
        }
        if !changes.is_empty() {
            for e in sync.apply(changes).await {
                warn!("{e}");
            }
        }
        for c in control {
            match c {
                Op::Converged => {
                    let stale: Vec<_> = kept
                        .drain()
                        .filter(|(p, _)| !installed.contains_key(p))
                        .map(|(p, _)| (p, None))
                        .collect();
                    let n = stale.len();
                    let errs = sync.apply(stale).await;
                    info!(
                        purged = n,
                        failed = errs.len(),
                        "converged after restart: purged routes not learned again"
                    );
                }
                Op::Stop { remove, done } => {
                    if remove {
                        let all: Vec<_> = installed
                            .drain()
                            .map(|(p, _)| p)
                            .chain(kept.drain().map(|(p, _)| p))
                            .map(|p| (p, None))
                            .collect();
                        let errs = sync.apply(all).await;
                        for e in errs {
                            warn!("{e}");
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                Op::Set(..) => {}
            }
        }
    }
}

/// A route's form, hashed with fixed keys (SipHash): equal forms, equal digests.
fn digest(r: &Route) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.hash(&mut h);
    h.finish()
}

fn target(w: Route, tunl0: Option<u32>) -> Target {
    match w {
        Route::Blackhole => Target::Blackhole,
        Route::Via(hops) => Target::Via(
            hops.into_iter()
                .map(|(gateway, encap)| match encap {
                    Encap::Ipip => NextHop {
                        gateway,
                        ifindex: tunl0,
                        onlink: true,
                    },
                    // CrossSubnet was resolved to one of the others by the core.
                    Encap::None | Encap::CrossSubnet => NextHop {
                        gateway,
                        ifindex: None,
                        onlink: false,
                    },
                })
                .collect(),
        ),
    }
}
