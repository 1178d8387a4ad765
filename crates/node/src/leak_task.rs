//! The departed-container concern: an address whose container is gone but whose DEL never
//! came (the datastore was down when the runtime stopped it, and runtimes other than the
//! kubelet do not retry) is released here, on the node that can see the evidence. The
//! controller cannot: such allocations often have no pod owner (podman, nerdctl).
//!
//! Only this node's pod allocations that record their attachment are considered. One is
//! released only when all of this holds, and still holds on a fresh look just before:
//! - its host veth (when it recorded one) is not in this node's network namespace — the
//!   kernel deletes both ends of a veth with the pod's namespace, and the agent sees host
//!   interfaces whatever mount namespace it runs in;
//! - its network namespace path is not a namespace (gone, or the veth is gone and the path
//!   cannot be judged from here);
//! - no CNI cache entry of the runtime (`<cache>/results/<network>-<id>-<ifname>`) names a
//!   namespace that is alive (libcni keeps the entry of a failed DEL, so an entry alone proves
//!   nothing);
//! - the allocation is older than the grace period and has looked gone for the whole period.
//!
//! The release is by address with the handle, sequence number and the exact owner record seen,
//! so an attachment confirmed meanwhile by a repeated ADD (which rewrites the record) keeps
//! its address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_ipam::block::{self, attr};
use brindle_ipam::{Ipam, ReleaseIp, ReleaseOutcome};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// One allocation the sweep may judge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub ip: IpAddr,
    pub handle: Option<String>,
    pub sequence: u64,
    pub attrs: BTreeMap<String, String>,
}

impl Candidate {
    fn get(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

/// This node's pod allocations that record where they live and are older than `grace`
/// (pure).
pub fn candidates(
    snap: &Snapshot,
    node: &str,
    now: jiff::Timestamp,
    grace: Duration,
) -> Vec<Candidate> {
    let mut out = vec![];
    for b in snap.blocks.values() {
        for a in block::allocations(b) {
            let c = Candidate {
                ip: a.ip,
                handle: a.handle,
                sequence: a.sequence,
                attrs: a.attrs,
            };
            let ours = c.get(attr::NODE) == Some(node)
                && c.get(attr::TYPE) == Some(attr::TYPE_POD)
                && c.get(attr::NETNS).is_some_and(|n| !n.is_empty());
            let old_enough = c
                .get(attr::TIMESTAMP)
                .and_then(brindle_ipam::parse_timestamp)
                .and_then(|t| now.duration_since(t).try_into().ok())
                .is_some_and(|age: Duration| age >= grace);
            if ours && old_enough {
                out.push(c);
            }
        }
    }
    out
}

/// What a network namespace path says from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Netns {
    /// A namespace is mounted there (or the /proc link resolves).
    Live,
    /// Nothing there, in a directory we can see: the runtime removed it.
    Absent,
    /// A plain file (a namespace mounted in another mount namespace looks like this), or a
    /// directory we cannot see: no conclusion.
    Unknown,
}

pub fn netns_state(path: &Path) -> Netns {
    match nix::sys::statfs::statfs(path) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => Netns::Live,
        Ok(_) => Netns::Unknown,
        Err(nix::errno::Errno::ENOENT) => {
            let parent_visible = path
                .parent()
                .is_some_and(|p| p.is_dir() && p != Path::new("/"));
            // /proc/<pid>/ns/net of a process that exited: its /proc/<pid> is gone too.
            let proc_link = path.starts_with("/proc");
            if parent_visible || proc_link {
                Netns::Absent
            } else {
                Netns::Unknown
            }
        }
        Err(_) => Netns::Unknown,
    }
}

/// The facts one judgement uses, gathered by [`Evidence::gather`] (or made up in tests).
pub struct Evidence {
    pub host_links: HashSet<String>,
    pub netns: HashMap<String, Netns>,
    /// Network namespaces named by the runtime's CNI cache entry of the attachment.
    pub cache_sandboxes: HashMap<(String, String, String), Vec<String>>,
}

/// Whether the container of `c` is provably gone (pure).
pub fn is_gone(c: &Candidate, ev: &Evidence) -> bool {
    let Some(netns) = c.get(attr::NETNS) else {
        return false;
    };
    let state = |p: &str| ev.netns.get(p).copied().unwrap_or(Netns::Unknown);
    let veth = c.get(attr::HOST_INTERFACE);
    if veth.is_some_and(|v| ev.host_links.contains(v)) {
        return false;
    }
    let key = attachment_key(c);
    let cached_live = ev
        .cache_sandboxes
        .get(&key)
        .is_some_and(|s| s.iter().any(|p| state(p) == Netns::Live));
    if cached_live {
        return false;
    }
    match state(netns) {
        Netns::Live => false,
        Netns::Absent => true,
        // The path cannot be judged from here: the veth's absence has to carry it.
        Netns::Unknown => veth.is_some(),
    }
}

fn attachment_key(c: &Candidate) -> (String, String, String) {
    let s = |k: &str| c.get(k).unwrap_or_default().to_owned();
    (s(attr::NETWORK), s(attr::CONTAINER_ID), s(attr::INTERFACE))
}

impl Evidence {
    pub async fn gather(
        handle: &rtnetlink::Handle,
        cache_dir: &Path,
        cands: &[Candidate],
    ) -> Result<Evidence, brindle_felix_lite::workloads::WorkloadError> {
        let host_links = brindle_felix_lite::workloads::links(handle)
            .await?
            .into_keys()
            .collect();
        let mut cache_sandboxes = HashMap::new();
        for c in cands {
            let key = attachment_key(c);
            let file = cache_dir
                .join("results")
                .join(format!("{}-{}-{}", key.0, key.1, key.2));
            if let Some(s) = cached_sandboxes(&file) {
                cache_sandboxes.insert(key, s);
            }
        }
        let mut netns = HashMap::new();
        let paths = cands
            .iter()
            .filter_map(|c| c.get(attr::NETNS))
            .chain(cache_sandboxes.values().flatten().map(String::as_str));
        for p in paths {
            netns
                .entry(p.to_owned())
                .or_insert_with(|| netns_state(Path::new(p)));
        }
        Ok(Evidence {
            host_links,
            netns,
            cache_sandboxes,
        })
    }
}

/// The `sandbox` paths in a libcni cache entry's result (None: no readable entry).
fn cached_sandboxes(file: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(
        v["result"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["sandbox"].as_str().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

pub struct LeakTask {
    pub node: String,
    pub ipam: Ipam,
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub handle: rtnetlink::Handle,
    pub grace: Duration,
    pub cni_cache_dir: PathBuf,
    pub metrics: Metrics,
    pub pulse: crate::supervise::Pulse,
}

impl LeakTask {
    pub async fn run(self) {
        let every = (self.grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut suspects: HashMap<Candidate, Instant> = HashMap::new();
        loop {
            self.pulse.beat();
            tokio::time::sleep(every).await;
            // Bounded, as the tunnel task's pass: a hung datastore call must not stop the
            // heartbeat (an outage is not fixed by a restart).
            match tokio::time::timeout(Duration::from_secs(60), self.pass(&mut suspects)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("departed-container sweep: {e}"),
                Err(_) => warn!(
                    "departed-container sweep: did not finish within 60 s (the datastore slow?)"
                ),
            }
        }
    }

    async fn pass(&self, suspects: &mut HashMap<Candidate, Instant>) -> anyhow::Result<()> {
        let snap = self.snap.borrow().clone();
        if !snap.synced {
            return Ok(());
        }
        let cands = candidates(&snap, &self.node, jiff::Timestamp::now(), self.grace);
        let ev = Evidence::gather(&self.handle, &self.cni_cache_dir, &cands).await?;
        let now = Instant::now();
        let gone: HashSet<&Candidate> = cands.iter().filter(|c| is_gone(c, &ev)).collect();
        suspects.retain(|c, _| gone.contains(c));
        for c in &gone {
            suspects.entry((*c).clone()).or_insert_with(|| {
                debug!(ip = %c.ip, handle = ?c.handle, "container looks gone; waiting out the grace period");
                now
            });
        }
        self.metrics.workload_gc_suspects.set(suspects.len() as i64);
        let due: Vec<Candidate> = suspects
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= self.grace)
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            // A fresh look, then a release that holds only if nothing changed since.
            let fresh =
                Evidence::gather(&self.handle, &self.cni_cache_dir, std::slice::from_ref(&c))
                    .await?;
            if !is_gone(&c, &fresh) {
                suspects.remove(&c);
                continue;
            }
            let r = ReleaseIp {
                ip: c.ip,
                handle: c.handle.clone(),
                sequence: Some(c.sequence),
                attrs: Some(c.attrs.clone()),
            };
            let out = self.ipam.release_ips(&[r]).await?;
            suspects.remove(&c);
            if out.first() == Some(&ReleaseOutcome::Released) {
                self.metrics.workload_gc_released.inc();
                info!(
                    ip = %c.ip,
                    handle = ?c.handle,
                    container = c.get(attr::CONTAINER_ID).unwrap_or_default(),
                    network = c.get(attr::NETWORK).unwrap_or_default(),
                    ifname = c.get(attr::INTERFACE).unwrap_or_default(),
                    netns = c.get(attr::NETNS).unwrap_or_default(),
                    "released the address of a container that is gone (its DEL never came)"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(veth: Option<&str>, netns: &str) -> Candidate {
        let mut attrs = BTreeMap::from([
            (attr::NODE.to_string(), "n1".to_string()),
            (attr::TYPE.to_string(), attr::TYPE_POD.to_string()),
            (attr::CONTAINER_ID.to_string(), "c1".to_string()),
            (attr::NETWORK.to_string(), "net".to_string()),
            (attr::INTERFACE.to_string(), "eth0".to_string()),
            (attr::NETNS.to_string(), netns.to_string()),
        ]);
        if let Some(v) = veth {
            attrs.insert(attr::HOST_INTERFACE.into(), v.into());
        }
        Candidate {
            ip: "10.0.0.1".parse().unwrap(),
            handle: Some("net.c1".into()),
            sequence: 1,
            attrs,
        }
    }

    fn ev(links: &[&str], netns: &[(&str, Netns)]) -> Evidence {
        Evidence {
            host_links: links.iter().map(|s| s.to_string()).collect(),
            netns: netns.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
            cache_sandboxes: HashMap::new(),
        }
    }

    #[test]
    fn judged_gone_only_on_evidence() {
        let ns = "/run/netns/x";
        let c = cand(Some("brl0123"), ns);
        // The veth is there: alive, whatever the path says.
        assert!(!is_gone(&c, &ev(&["brl0123"], &[(ns, Netns::Absent)])));
        // The namespace is mounted: alive.
        assert!(!is_gone(&c, &ev(&[], &[(ns, Netns::Live)])));
        // Veth gone and namespace removed: gone.
        assert!(is_gone(&c, &ev(&[], &[(ns, Netns::Absent)])));
        // Veth gone, path not judgeable from here: the veth carries it.
        assert!(is_gone(&c, &ev(&[], &[(ns, Netns::Unknown)])));
        // IPAM-only (no veth recorded): only a removed namespace is proof.
        let ipam_only = cand(None, ns);
        assert!(!is_gone(&ipam_only, &ev(&[], &[(ns, Netns::Unknown)])));
        assert!(is_gone(&ipam_only, &ev(&[], &[(ns, Netns::Absent)])));
        // A runtime cache entry that names a live namespace keeps it.
        let mut e = ev(&[], &[(ns, Netns::Absent), ("/run/netns/y", Netns::Live)]);
        e.cache_sandboxes.insert(
            ("net".into(), "c1".into(), "eth0".into()),
            vec!["/run/netns/y".into()],
        );
        assert!(!is_gone(&c, &e));
        // A stale cache entry (a failed DEL leaves it) proves nothing.
        e.cache_sandboxes
            .insert(("net".into(), "c1".into(), "eth0".into()), vec![ns.into()]);
        assert!(is_gone(&c, &e));
    }

    #[test]
    fn netns_paths() {
        assert_eq!(netns_state(Path::new("/proc/self/ns/net")), Netns::Live);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(netns_state(&dir.path().join("gone")), Netns::Absent);
        let file = dir.path().join("unmounted");
        std::fs::write(&file, "").unwrap();
        assert_eq!(netns_state(&file), Netns::Unknown);
        assert_eq!(
            netns_state(Path::new("/no/such/dir/ns")),
            Netns::Unknown,
            "a directory this agent cannot see proves nothing"
        );
    }

    #[test]
    fn only_old_enough_attachments_of_this_node() {
        use brindle_api::IPAMBlockSpec;
        let mut b: IPAMBlockSpec =
            brindle_ipam::block::new_block(&"10.0.0.0/30".parse().unwrap(), None);
        let now = jiff::Timestamp::now();
        let old = (now - jiff::SignedDuration::from_secs(600)).to_string();
        let mut a = cand(Some("v"), "/run/netns/x").attrs;
        a.insert(attr::TIMESTAMP.into(), old.clone());
        brindle_ipam::block::allocate(&mut b, 1, "h-old", &a);
        a.insert(attr::TIMESTAMP.into(), now.to_string());
        brindle_ipam::block::allocate(&mut b, 1, "h-new", &a);
        let mut other = a.clone();
        other.insert(attr::NODE.into(), "n2".into());
        other.insert(attr::TIMESTAMP.into(), old);
        brindle_ipam::block::allocate(&mut b, 1, "h-other", &other);
        let mut snap = Snapshot::default();
        std::sync::Arc::make_mut(&mut snap.blocks).insert("b".into(), b);
        let got = candidates(&snap, "n1", now, Duration::from_secs(300));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].handle.as_deref(), Some("h-old"));
    }
}
