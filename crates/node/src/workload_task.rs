//! The local-workload concern: every pod on this node whose veth exists has its
//! `/32 dev <veth> scope link` route; a missing one is put back (felix-lite does the kernel
//! part and never removes routes, see its module doc).

use std::sync::Arc;
use std::time::Duration;

use brindle_felix_lite::workloads::{self, host_veth_name, WorkloadRoute};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::snapshot::Snapshot;

pub struct WorkloadTask {
    pub node: String,
    pub veth_prefix: String,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub handle: rtnetlink::Handle,
    pub pulse: crate::supervise::Pulse,
}

/// The routes this node's pods should have (pure).
pub fn wanted(snap: &Snapshot, node: &str, prefix: &str) -> Vec<WorkloadRoute> {
    let mut v = vec![];
    for (key, p) in snap.pods.iter() {
        if p.node.as_deref() != Some(node) {
            continue;
        }
        let Some((ns, name)) = key.split_once('/') else {
            continue;
        };
        let veth = host_veth_name(prefix, ns, name);
        for ip in &p.ips {
            v.push(WorkloadRoute {
                veth: veth.clone(),
                ip: *ip,
            });
        }
    }
    v
}

impl WorkloadTask {
    pub async fn run(mut self) {
        loop {
            self.pulse.beat();
            let snap = self.snap.borrow_and_update().clone();
            let want = wanted(&snap, &self.node, &self.veth_prefix);
            match workloads::repair(&self.handle, &want).await {
                Ok(added) => {
                    for r in added {
                        info!(veth = %r.veth, ip = %r.ip, "put back a missing workload route");
                    }
                }
                Err(e) => warn!("{e}"),
            }
            // Woken by this node's pods, or every 10 s to put back what was removed.
            let repair_at = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                tokio::select! {
                    r = self.snap.changed() => {
                        if r.is_err() { return }
                        if self.snap.borrow().changed_since(&snap).pods { break }
                    }
                    _ = tokio::time::sleep_until(repair_at) => break,
                }
            }
        }
    }
}
