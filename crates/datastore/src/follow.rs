//! The one list/watch/relist loop: every mirror of the store (the agent's, the controller's)
//! is this loop with its own conversion.
//!
//! List, then watch from the list's revision. A watch that expires (compacted) lists again at
//! once; any other failure keeps what was delivered, backs off (200 ms doubling to 5 s, afresh
//! once a watch delivers) and lists again. A fresh list replaces everything the caller knew of the kind, so an
//! unchanged datastore after an outage gives the caller an unchanged state.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{Api, StoreError, StoreResource, WatchEvent};

/// What the loop reports, of each object as the caller's projection made it.
#[derive(Debug)]
pub enum Change<T> {
    /// A fresh list: replaces everything known of the kind.
    Listed(Vec<T>),
    /// Added or modified.
    Upsert(T),
    /// Its last state.
    Deleted(T),
}

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows `api` until `tx` is closed. `project` makes each object, listed or watched, into
/// what the caller keeps (a list is projected page by page as it is decoded, so it is never
/// held whole as objects); `convert` turns each change into what the receiver takes (None:
/// nothing to send); `restarted` is called each time the loop lists again after a failure or
/// an expiry (for a metric).
pub async fn follow<K, T, U>(
    api: Api<K>,
    tx: mpsc::Sender<U>,
    mut project: impl FnMut(K) -> T + Send,
    mut convert: impl FnMut(Change<T>) -> Option<U> + Send,
    restarted: impl Fn() + Send,
) where
    K: StoreResource,
    T: Send,
    U: Send,
{
    let kind = api.describe();
    let mut backoff = BACKOFF_FIRST;
    let mut failing = false;
    // Send, or report that the receiver is gone.
    macro_rules! send {
        ($c:expr) => {
            if let Some(u) = convert($c) {
                if tx.send(u).await.is_err() {
                    return;
                }
            }
        };
    }
    loop {
        let (items, revision) = match api.list_map(&mut project).await {
            Ok(l) => l,
            Err(e) => {
                if !failing {
                    warn!(%kind, "datastore unavailable, keeping the last known state: {e}");
                    failing = true;
                }
                restarted();
                if pause(&tx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if failing {
            info!(%kind, "datastore reachable again; resynced");
            failing = false;
        }
        send!(Change::Listed(items));
        let mut stream = match api.watch(&revision).await {
            Ok(s) => s,
            Err(e) => {
                warn!(%kind, "watch failed to start: {e}");
                restarted();
                if pause(&tx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = tx.closed() => return,
            };
            // A watch that delivers is healthy: the next failure starts the backoff afresh.
            if matches!(ev, Some(Ok(_))) {
                backoff = BACKOFF_FIRST;
            }
            match ev {
                Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                    send!(Change::Upsert(project(o)))
                }
                Some(Ok(WatchEvent::Deleted(o))) => send!(Change::Deleted(project(o))),
                Some(Err(StoreError::Expired { .. })) => {
                    info!(%kind, "watch expired (compacted); listing again");
                    break;
                }
                Some(Err(e)) => {
                    warn!(%kind, "watch failed, keeping the last known state: {e}");
                    failing = true;
                    if pause(&tx, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
                None => {
                    warn!(%kind, "watch ended; listing again");
                    if pause(&tx, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
        restarted();
    }
}

/// Sleeps `d`, or returns true at once when the receiver is gone.
async fn pause<U>(tx: &mpsc::Sender<U>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = tx.closed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::Store;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": []},
        }))
        .unwrap()
    }

    fn name(p: &Pod) -> &str {
        p.metadata.name.as_deref().unwrap_or_default()
    }

    async fn next(rx: &mut mpsc::Receiver<Change<String>>) -> Change<String> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a change within 5 s")
            .expect("the loop is running")
    }

    #[tokio::test]
    async fn lists_after_an_outage_then_follows_and_stops_with_its_receiver() {
        let mem = MemoryBackend::new();
        let store = Store::new(mem.clone());
        let api = store.all::<Pod>();
        let default = store.namespaced::<Pod>("default");
        default.create(&pod("a")).await.unwrap();
        mem.set_unavailable(true);
        let (tx, mut rx) = mpsc::channel(16);
        let restarts = Arc::new(AtomicUsize::new(0));
        let r = restarts.clone();
        // Each pod, listed or watched, reaches the receiver as its projection (its name).
        let project = |p: Pod| name(&p).to_owned();
        let task = tokio::spawn(follow(api.clone(), tx, project, Some, move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            rx.try_recv().is_err(),
            "nothing is sent while the store is down"
        );
        assert!(restarts.load(Ordering::SeqCst) >= 1);
        mem.set_unavailable(false);
        assert!(matches!(next(&mut rx).await, Change::Listed(l) if l == ["a"]));
        default.create(&pod("b")).await.unwrap();
        assert!(matches!(next(&mut rx).await, Change::Upsert(p) if p == "b"));
        default.delete("a", None).await.unwrap();
        assert!(matches!(next(&mut rx).await, Change::Deleted(p) if p == "a"));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops when its receiver is gone")
            .unwrap();
    }
}
