//! When did every node's kernel have every block route? Timed from the kernels' side: one
//! thread per node, in the node's namespace, subscribed to its route changes over netlink
//! (no polling, nothing spawned), so the time is when the last route landed, not when a
//! poller next looked, and watching costs the agents nothing while they converge.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::RouteMessageBuilder;

/// Route groups (`RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE` in linux/rtnetlink.h).
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// A route a node must have: a block of another node (any `proto bird` route to it), or its
/// own block (`blackhole … proto bird`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Wanted {
    pub dst: IpAddr,
    pub len: u8,
    pub own: bool,
}

/// What each node must hold once converged: every block of `blocks` (owner → CIDRs), its own
/// as a blackhole.
pub fn wanted(nodes: &[String], blocks: &BTreeMap<String, Vec<String>>) -> Vec<HashSet<Wanted>> {
    nodes
        .iter()
        .map(|n| {
            blocks
                .iter()
                .flat_map(|(owner, cidrs)| {
                    cidrs.iter().filter_map(move |c| {
                        let (ip, len) = c.split_once('/')?;
                        Some(Wanted {
                            dst: ip.parse().ok()?,
                            len: len.parse().ok()?,
                            own: owner == n,
                        })
                    })
                })
                .collect()
        })
        .collect()
}

/// Starts one watcher per node (`netns` paths, in the order of `want`), then runs `go`
/// (which starts the agents) and returns, for each node, when after `go` returned its kernel
/// first held every wanted route; an error names a node that had not within `timeout`.
pub fn time_routes(
    netns: &[String],
    want: Vec<HashSet<Wanted>>,
    timeout: Duration,
    go: impl FnOnce(),
) -> Result<Vec<Duration>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let start = OnceLock::<Instant>::new();
    let abort = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let handles: Vec<_> = netns
            .iter()
            .zip(want)
            .map(|(path, want)| {
                let ready = ready_tx.clone();
                let (start, abort) = (&start, &abort);
                sc.spawn(move || watch_one(path, want, timeout, ready, start, abort))
            })
            .collect();
        drop(ready_tx);
        // Stops every watcher if this returns early or `go` panics (rather than each waiting
        // out its deadline).
        struct Abort<'a>(&'a AtomicBool, bool);
        impl Drop for Abort<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
        }
        let mut guard = Abort(&abort, true);
        // Every watcher has subscribed and read its table before anything starts. (A watcher
        // that died without a word is noticed only when the others end at their deadline.)
        let subscribed: Result<Vec<()>, String> = ready_rx.iter().take(netns.len()).collect();
        let subscribed = subscribed?;
        if subscribed.len() < netns.len() {
            return Err("a route watcher stopped before it was ready".into());
        }
        go();
        let _ = start.set(Instant::now());
        guard.1 = false;
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a route watcher panicked".to_string())?
            })
            .collect()
    })
}

fn watch_one(
    path: &str,
    want: HashSet<Wanted>,
    timeout: Duration,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    start: &OnceLock<Instant>,
    abort: &AtomicBool,
) -> Result<Duration, String> {
    let fail = |e: String| {
        let _ = ready.send(Err(e.clone()));
        e
    };
    let f = std::fs::File::open(path).map_err(|e| fail(format!("{path}: {e}")))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail(format!("setns {path}: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    rt.block_on(async {
        let (mut conn, handle, mut events) =
            rtnetlink::new_connection().map_err(|e| fail(format!("netlink: {e}")))?;
        for g in [RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE] {
            conn.socket_mut()
                .socket_mut()
                .add_membership(g)
                .map_err(|e| fail(format!("netlink group {g}: {e}")))?;
        }
        tokio::spawn(conn);
        let mut have = dump(&handle)
            .await
            .map_err(|e| fail(format!("route dump in {path}: {e}")))?;
        let _ = ready.send(Ok(()));
        let deadline = Instant::now() + timeout;
        let mut quiet = 0u32;
        loop {
            if want.is_subset(&have) {
                // Routes landing before the agents started (none in a fresh lab) count as 0.
                return Ok(start.get().map(Instant::elapsed).unwrap_or_default());
            }
            if abort.load(Ordering::Relaxed) {
                return Err(format!("{path}: another watcher failed"));
            }
            if Instant::now() > deadline {
                let missing = want.difference(&have).count();
                return Err(format!(
                    "{path}: {missing} of {} block routes missing after {timeout:?}",
                    want.len()
                ));
            }
            // Woken at least every 200 ms to look at the deadline and the abort flag. A quiet
            // second reads the table again: events the socket dropped (ENOBUFS) are not lost.
            let Ok(ev) = tokio::time::timeout(Duration::from_millis(200), events.next()).await
            else {
                quiet += 1;
                if quiet.is_multiple_of(5) {
                    have = dump(&handle)
                        .await
                        .map_err(|e| format!("route dump in {path}: {e}"))?;
                }
                continue;
            };
            quiet = 0;
            let Some((msg, _)) = ev else {
                return Err(format!("{path}: the netlink socket closed"));
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                    have.extend(bird_route(&r));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                    if let Some(w) = bird_route(&r) {
                        have.remove(&w);
                    }
                }
                // The socket overflowed (ENOBUFS) and events were lost: read the table again.
                NetlinkPayload::Overrun(_) => {
                    have = dump(&handle)
                        .await
                        .map_err(|e| format!("route dump in {path}: {e}"))?;
                }
                _ => {}
            }
        }
    })
}

/// The `proto bird` routes the kernel holds, of both families (one dump at a time: the kernel
/// refuses a second on a socket with one running).
async fn dump(handle: &rtnetlink::Handle) -> Result<HashSet<Wanted>, rtnetlink::Error> {
    let mut have = HashSet::new();
    for v6 in [false, true] {
        let msg = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let mut d = handle.route().get(msg).execute();
        while let Some(r) = d.next().await {
            have.extend(bird_route(&r?));
        }
    }
    Ok(have)
}

/// A `proto bird` route as a [`Wanted`]: a blackhole is a node's own block.
fn bird_route(r: &RouteMessage) -> Option<Wanted> {
    if r.header.protocol != RouteProtocol::Bird {
        return None;
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    Some(Wanted {
        dst,
        len: r.header.destination_prefix_length,
        own: r.header.kind == RouteType::BlackHole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_wants_its_own_blocks_as_blackholes_and_the_others_as_routes() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let mut blocks = BTreeMap::new();
        blocks.insert("a".to_string(), vec!["10.0.0.0/26".to_string()]);
        blocks.insert("b".to_string(), vec!["fd00::/122".to_string()]);
        let w = wanted(&nodes, &blocks);
        let a = Wanted {
            dst: "10.0.0.0".parse().unwrap(),
            len: 26,
            own: true,
        };
        let b = Wanted {
            dst: "fd00::".parse().unwrap(),
            len: 122,
            own: false,
        };
        assert_eq!(w[0], HashSet::from([a.clone(), b.clone()]));
        assert_eq!(
            w[1],
            HashSet::from([Wanted { own: false, ..a }, Wanted { own: true, ..b }])
        );
    }
}
