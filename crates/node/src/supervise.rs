//! The agent is alive or it restarts. Every task is spawned here: one that ends, or panics,
//! ends the process with a line saying which (the kubelet restarts the pod, as it restarts
//! calico-node), instead of leaving a node that answers probes but no longer routes. Each
//! task's loop beats a [`Pulse`]; `/livez` fails while one has not beaten within its limit
//! (a loop stuck in a call that never returns). A panic anywhere, in a task or in a task a
//! task spawned, is logged and ends the process (the panic hook in `main`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinSet;

/// How often an idle loop wakes just to beat.
pub const BEAT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Beat {
    last: Instant,
    limit: Duration,
    /// Test hook: the task goes on but its beats are ignored, as if it were stuck.
    frozen: bool,
}

/// Every task's last beat.
#[derive(Clone, Default)]
pub struct Heart {
    beats: Arc<Mutex<BTreeMap<&'static str, Beat>>>,
}

/// One task's side of the [`Heart`].
#[derive(Clone)]
pub struct Pulse {
    name: &'static str,
    heart: Heart,
}

impl Heart {
    /// Registers a task that must beat at least every `limit`.
    pub fn pulse(&self, name: &'static str, limit: Duration) -> Pulse {
        self.lock().insert(
            name,
            Beat {
                last: Instant::now(),
                limit,
                frozen: false,
            },
        );
        Pulse {
            name,
            heart: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Beat>> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tasks that have not beaten within their limit, each with how long it has been.
    pub fn stale(&self) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, b)| now.duration_since(b.last) > b.limit)
            .map(|(name, b)| {
                format!(
                    "task {name} has not made progress for {} s (limit {} s)",
                    now.duration_since(b.last).as_secs(),
                    b.limit.as_secs()
                )
            })
            .collect()
    }

    /// Test hook (`--test-fault stall:<task>`): the task's beats stop counting, and its
    /// limit becomes `limit` (a test need not wait out the real one).
    pub fn freeze(&self, name: &str, limit: Duration) {
        if let Some(b) = self.lock().get_mut(name) {
            b.frozen = true;
            b.limit = limit;
        }
    }
}

impl Pulse {
    pub fn beat(&self) {
        if let Some(b) = self.heart.lock().get_mut(self.name) {
            if !b.frozen {
                b.last = Instant::now();
            }
        }
    }

    /// Sleeps until an idle loop should wake to beat.
    pub async fn due(&self) {
        tokio::time::sleep(BEAT_EVERY).await
    }
}

/// The agent's tasks. [`Tasks::ended`] resolves when any of them ends or panics.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<&'static str>,
    names: BTreeMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let h = self.set.spawn(async move {
            task.await;
            name
        });
        self.names.insert(h.id(), name);
    }

    /// Waits for the first task to end: why, in a sentence for the log.
    pub async fn ended(&mut self) -> String {
        match self.set.join_next_with_id().await {
            None => std::future::pending().await,
            Some(Ok((_, name))) => format!("task {name} ended unexpectedly"),
            Some(Err(e)) => {
                let name = self.names.get(&e.id()).copied().unwrap_or("?");
                if e.is_panic() {
                    format!("task {name} panicked")
                } else {
                    format!("task {name} was cancelled")
                }
            }
        }
    }
}

/// A test hook from `--test-fault`: `panic:<task>` or `stall:<task>`, after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Panic(String),
    Stall(String),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("panic", t)) => Ok(Fault::Panic(t.into())),
            Some(("stall", t)) => Ok(Fault::Stall(t.into())),
            _ => Err(format!("{s:?}: want panic:<task> or stall:<task>")),
        }
    }
}

/// Spawns the fault: a task of its own that panics (as if `task` had), or freezes `task`'s
/// beats, a few seconds after start.
pub fn inject(tasks: &mut Tasks, heart: &Heart, fault: Fault) {
    let after = Duration::from_secs(3);
    match fault {
        Fault::Panic(task) => {
            let name: &'static str = Box::leak(task.into_boxed_str());
            tasks.spawn(name, async move {
                tokio::time::sleep(after).await;
                panic!("test fault: {name} panics");
            });
        }
        Fault::Stall(task) => {
            let heart = heart.clone();
            tasks.spawn("test-fault", async move {
                tokio::time::sleep(after).await;
                heart.freeze(&task, Duration::from_secs(5));
                tracing::warn!(
                    task,
                    "test fault: beats of this task are ignored from now on"
                );
                std::future::pending::<()>().await
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_or_panics_is_named_and_a_silent_one_goes_stale() {
        let mut t = Tasks::default();
        t.spawn("quiet", std::future::pending());
        t.spawn("boom", async { panic!("boom") });
        assert_eq!(t.ended().await, "task boom panicked");
        t.spawn("short", async {});
        assert_eq!(t.ended().await, "task short ended unexpectedly");

        let h = Heart::default();
        let p = h.pulse("bgp", Duration::from_secs(60));
        let q = h.pulse("services", Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(45)).await;
        p.beat();
        q.beat();
        h.freeze("services", Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(45)).await;
        p.beat();
        q.beat();
        assert!(h.stale().is_empty(), "{:?}", h.stale());
        tokio::time::advance(Duration::from_secs(20)).await;
        let stale = h.stale();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(stale[0].starts_with("task services has not made progress for 65 s"));
    }
}
