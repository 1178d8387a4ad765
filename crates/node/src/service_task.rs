//! Services on this node (kube-proxy's job) and NAT outgoing: Services and EndpointSlices
//! are mirrored here (not in the shared snapshot: there may be tens of thousands), each
//! changed Service is rendered again, and felix-lite's writer puts the changed chains in the
//! kernel. Syncs are at least `min_sync` apart (a burst of changes is one restore); every
//! `refresh` the tables are read back and whatever drifted is rewritten.
//!
//! NetworkPolicy ([`crate::policy_state`]) is rendered into the same tables by the same
//! writer (one owner of our chains, our jumps in one order), without the Services' least
//! interval: a policy, pod or namespace change is written within [`POLICY_BATCH`], a new
//! pod's chains at once (its ADD waits for them).
//!
//! Nothing is written before Services, EndpointSlices, the pools (and with policy on,
//! NetworkPolicies, Namespaces and Pods) have all been listed, so a restarting agent finds
//! its chains as it left them and writes nothing, and opens nothing in between.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_datastore::Store;
use brindle_felix_lite::family::Family;
use brindle_felix_lite::iptables::Runner;
use brindle_felix_lite::proxy::rules::{
    ALL_HOSTS_SET, ALL_POOLS_SET, BGP_PEERS_SET, MASQ_POOLS_SET,
};
use brindle_felix_lite::proxy::{NatOutgoingExclusions, NodeContext, NodeGuard};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::dataplane::{Dataplane, DpWriter, PerFamily, PortRules, Want, Writers};
use crate::metrics::Metrics;
use crate::policy_state::{self, PolicyEv, PolicyState};
use crate::services::{self, Reserved, Skipped, SliceModel, SvcModel};
use crate::snapshot::{mirror, Event, Snapshot};
use brindle_api::service_addresses::NodeAddress;
use brindle_cni::agent::NewAttachment;
use brindle_felix_lite::policy::{self as fpolicy, PolicyContext};

pub struct ServiceTask {
    pub store: Store,
    pub node: String,
    pub dataplane: Dataplane,
    pub masquerade_bit: u8,
    pub min_sync: Duration,
    pub refresh: Duration,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Metrics,
    pub nat_outgoing_exclusions: NatOutgoingExclusions,
    /// The pods' host interfaces' prefix (anti-spoofing).
    pub workload_prefix: String,
    /// Written after the first sync (`--dataplane-ready-file`).
    pub ready_file: Option<std::path::PathBuf>,
    /// Set after the first sync (the IPAM socket waits for it).
    pub synced: watch::Sender<bool>,
    pub pulse: crate::supervise::Pulse,
    /// The deadline of each iptables or ipset tool run.
    pub tool_timeout: Duration,
    /// Program Services (off: only NetworkPolicy, kube-proxy does Services).
    pub services: bool,
    /// Enforce NetworkPolicy.
    pub policy: Option<PolicyConfig>,
    /// The node has an IPv6 address: its IPv6 rules (the guard first) are written from the
    /// first sync, before any IPv6 pool exists, so no IPv6 pod ever precedes them.
    pub ipv6_node: bool,
}

pub struct PolicyConfig {
    pub ctx: PolicyContext,
    /// Attachments announced by the IPAM socket as their addresses are given.
    pub attachments: mpsc::Receiver<NewAttachment>,
    /// Told what isolates each pod after each sync (`--log-denied`).
    pub isolations: Option<watch::Sender<crate::denied_log::Isolations>>,
}

/// Periodic reads dropped in a row (changes came while each ran) before a sync reads itself.
const READS_DROPPED_MAX: u32 = 3;

/// The least time between two syncs for a policy, pod or namespace change (a burst is one).
const POLICY_BATCH: Duration = Duration::from_millis(20);

enum Ev {
    Svc(Event<SvcModel>),
    Slice(Event<SliceModel>),
    Policy(PolicyEv),
}

#[derive(Default)]
struct State {
    services: HashMap<String, SvcModel>,
    slices: HashMap<String, SliceModel>,
    /// Service key → its slices' keys.
    by_service: HashMap<String, BTreeSet<String>>,
    listed_services: bool,
    listed_slices: bool,
    /// Rendered rules per Service key (sorted: the ruleset is the same after a restart).
    rendered: BTreeMap<String, Vec<PortRules>>,
    skipped: BTreeMap<String, Vec<Skipped>>,
    dirty: BTreeSet<String>,
}

impl State {
    fn slice_owner(&self, key: &str) -> Option<String> {
        self.slices.get(key).and_then(|s| s.service.clone())
    }

    fn put_slice(&mut self, key: String, s: SliceModel) {
        if let Some(old) = self.slice_owner(&key) {
            if let Some(set) = self.by_service.get_mut(&old) {
                set.remove(&key);
            }
            self.dirty.insert(old);
        }
        if let Some(owner) = s.service.clone() {
            self.by_service
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.dirty.insert(owner);
        }
        self.slices.insert(key, s);
    }

    fn drop_slice(&mut self, key: &str) {
        if let Some(old) = self.slice_owner(key) {
            if let Some(set) = self.by_service.get_mut(&old) {
                set.remove(key);
            }
            self.dirty.insert(old);
        }
        self.slices.remove(key);
    }

    fn apply(&mut self, ev: Ev) {
        match ev {
            Ev::Svc(Event::Reset(items)) => {
                self.listed_services = true;
                let old: Vec<String> = self.services.keys().cloned().collect();
                self.dirty.extend(old);
                self.services.clear();
                for (k, s) in items {
                    self.dirty.insert(k.clone());
                    self.services.insert(k, s);
                }
            }
            Ev::Svc(Event::Upsert(k, s)) => {
                if self.services.get(&k) != Some(&*s) {
                    self.dirty.insert(k.clone());
                    self.services.insert(k, *s);
                }
            }
            Ev::Svc(Event::Delete(k)) => {
                self.services.remove(&k);
                self.dirty.insert(k);
            }
            Ev::Slice(Event::Reset(items)) => {
                self.listed_slices = true;
                let old: Vec<String> = self.slices.keys().cloned().collect();
                for k in old {
                    self.drop_slice(&k);
                }
                for (k, s) in items {
                    self.put_slice(k, s);
                }
            }
            Ev::Slice(Event::Upsert(k, s)) => {
                if self.slices.get(&k) != Some(&*s) {
                    self.put_slice(k, *s);
                }
            }
            Ev::Slice(Event::Delete(k)) => self.drop_slice(&k),
            Ev::Policy(_) => {}
        }
    }

    /// Renders the dirty Services again (all of them when `all`).
    fn render(&mut self, dp: Dataplane, ctx: &NodeContext, reserved: &Reserved, all: bool) {
        let keys: Vec<String> = if all {
            self.services.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        if all {
            self.dirty.clear();
            self.rendered.clear();
            self.skipped.clear();
        }
        for k in keys {
            let Some(svc) = self.services.get(&k) else {
                self.rendered.remove(&k);
                self.skipped.remove(&k);
                continue;
            };
            let slices: Vec<&SliceModel> = self
                .by_service
                .get(&k)
                .into_iter()
                .flatten()
                .filter_map(|s| self.slices.get(s))
                .collect();
            let mut skipped = vec![];
            let ports = services::service_ports(svc, &slices, reserved, &mut skipped);
            for s in &skipped {
                if self.skipped.get(&k).is_none_or(|old| !old.contains(s)) {
                    warn!(object = %s.object, "Service not fully programmed: {}", s.reason);
                }
            }
            if skipped.is_empty() {
                self.skipped.remove(&k);
            } else {
                self.skipped.insert(k.clone(), skipped);
            }
            let r = ports.iter().map(|p| dp.render(p, ctx)).collect();
            self.rendered.insert(k, r);
        }
    }
}

/// Every node's underlay and tunnel addresses.
fn node_addresses(snap: &Snapshot) -> impl Iterator<Item = NodeAddress> + '_ {
    snap.nodes
        .iter()
        .flat_map(|(name, n)| brindle_api::service_addresses::node_addresses(name, &n.bgp))
}

/// The addresses a Service may and may not take ([`Reserved`]), from the snapshot.
fn reserved(snap: &Snapshot, bgp_ports: &[u16]) -> Reserved {
    Reserved::new(
        node_addresses(snap),
        snap.peers.iter().map(|(n, p)| (n.as_str(), p)),
        snap.pools.iter().map(|(n, p)| (n.as_str(), p)),
        snap.configs.get("default"),
        bgp_ports,
    )
}

/// What guards the nodes from pods: every node's BGP listen port (a `node.<name>`
/// BGPConfiguration may move it) is out of their reach.
fn node_guard(
    snap: &Snapshot,
    exclusions: NatOutgoingExclusions,
    workload_prefix: &str,
) -> NodeGuard {
    let ports =
        brindle_api::service_addresses::bgp_ports(snap.configs.values(), snap.peers.values());
    NodeGuard {
        pod_blocked_ports: ports,
        nat_outgoing_exclusions: exclusions,
        workload_prefix: workload_prefix.to_owned(),
    }
}

/// The pools and the nodes' addresses of `family` as the ipsets hold them (`brl40…`,
/// `brl60…`).
fn pool_sets(snap: &Snapshot, family: Family) -> BTreeMap<String, Vec<IpNetwork>> {
    let host = |ip: std::net::IpAddr| IpNetwork::new(ip, family.host_len()).ok();
    let mut hosts: Vec<IpNetwork> = node_addresses(snap)
        .filter(|a| family.has(a.ip))
        .filter_map(|a| host(a.ip))
        .collect();
    hosts.sort();
    hosts.dedup();
    let mut all = vec![];
    let mut masq = vec![];
    for p in snap.pools.values() {
        if let Some(n) = p
            .cidr
            .parse::<IpNetwork>()
            .ok()
            .filter(|n| family.has(n.ip()))
        {
            all.push(n);
            if p.nat_outgoing {
                masq.push(n);
            }
        }
    }
    all.sort();
    masq.sort();
    let mut routers: Vec<IpNetwork> = snap
        .peers
        .values()
        .filter_map(|p| p.peer_addr())
        .filter(|a| family.has(a.ip()))
        .filter_map(|a| host(a.ip()))
        .collect();
    routers.sort();
    routers.dedup();
    BTreeMap::from([
        (family.set_name(ALL_POOLS_SET), all),
        (family.set_name(MASQ_POOLS_SET), masq),
        (family.set_name(ALL_HOSTS_SET), hosts),
        (family.set_name(BGP_PEERS_SET), routers),
    ])
}

/// Whether the cluster has an IPv6 pool: only then can a pod have an IPv6 address, so only
/// then (or once a local pod has one before the snapshot shows its pool) are IPv6 rules
/// written.
fn wants_v6(snap: &Snapshot) -> bool {
    snap.pools
        .values()
        .any(|p| p.cidr.parse::<IpNetwork>().is_ok_and(|n| n.is_ipv6()))
}

/// The policy counters read from the kernel, as metrics (replacing the last reading).
fn publish_counters(m: &Metrics, counts: &BTreeMap<fpolicy::Account, u64>, pst: &PolicyState) {
    use crate::metrics::{PodLabel, PolicyLabel};
    let dir = |ingress: bool| if ingress { "ingress" } else { "egress" }.to_string();
    m.policy_allowed.clear();
    m.policy_denied.clear();
    for (a, n) in counts {
        let n = i64::try_from(*n).unwrap_or(i64::MAX);
        match a {
            fpolicy::Account::Allowed { policy, ingress } => {
                let l = PolicyLabel {
                    policy: policy.clone(),
                    direction: dir(*ingress),
                };
                m.policy_allowed.get_or_create(&l).set(n);
            }
            fpolicy::Account::Denied { veth, ingress } => {
                let pod = pst.pod_of(veth).unwrap_or_else(|| veth.clone());
                let l = PodLabel {
                    pod,
                    direction: dir(*ingress),
                };
                m.policy_denied.get_or_create(&l).set(n);
            }
        }
    }
}

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The longest wait between two failed syncs.
const SYNC_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The longest wait between two syncs whose IPv6 part failed (IPv4 changes ride on them).
const V6_RETRY_MAX: Duration = Duration::from_secs(10);

impl ServiceTask {
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::channel(4096);
        if self.services {
            tokio::spawn(mirror(
                self.store.all::<Service>(),
                services::service_model,
                Ev::Svc,
                tx.clone(),
                self.metrics.clone(),
            ));
            tokio::spawn(mirror(
                self.store.all::<EndpointSlice>(),
                services::slice_model,
                Ev::Slice,
                tx.clone(),
                self.metrics.clone(),
            ));
        }
        let mut isolations = None;
        let (mut attach_rx, policy_ctx) = match self.policy.take() {
            Some(p) => {
                tokio::spawn(mirror(
                    self.store.all::<NetworkPolicy>(),
                    Some,
                    |e| Ev::Policy(PolicyEv::Policy(e)),
                    tx.clone(),
                    self.metrics.clone(),
                ));
                tokio::spawn(mirror(
                    self.store.all::<KubeNamespace>(),
                    policy_state::kube_namespace,
                    |e| Ev::Policy(PolicyEv::Namespace(e)),
                    tx.clone(),
                    self.metrics.clone(),
                ));
                tokio::spawn(mirror(
                    self.store.all::<KubePod>(),
                    policy_state::kube_pod,
                    |e| Ev::Policy(PolicyEv::Pod(e)),
                    tx.clone(),
                    self.metrics.clone(),
                ));
                isolations = p.isolations;
                (Some(p.attachments), Some(p.ctx))
            }
            None => (None, None),
        };
        drop(tx);
        let mut pst = PolicyState::new(&self.node);
        // Periodic reads in a row dropped because a sync wrote meanwhile.
        let mut reads_dropped = 0u32;
        // Map elements left out of the nftables table (duplicate keys), as last logged.
        let mut conflicts: Vec<String> = vec![];
        // The periodic read of the kernel's rules, when one is running.
        // The FORWARD-policy warning was given (said once per change of state).
        let mut forward_warned = false;
        let mut read_job: Option<
            tokio::task::JoinHandle<
                Result<
                    PerFamily<crate::dataplane::Read>,
                    brindle_felix_lite::iptables::IptablesError,
                >,
            >,
        > = None;
        let mut policy_rules: PerFamily<crate::dataplane::PolicyOut> = PerFamily::default();
        let runner = Runner {
            deadline: self.tool_timeout,
            ..Default::default()
        };
        let mut writer = Some(Writers::new(self.dataplane, runner.clone()));
        // The other dataplane's rules go after this one's first sync.
        let mut others_removed = false;
        let mut st = State {
            listed_services: !self.services,
            listed_slices: !self.services,
            ..Default::default()
        };
        let mut ctx: Option<NodeContext> = None;
        // The pool and host sets of each family (IPv6's when there is an IPv6 pool).
        let mut sets: PerFamily<BTreeMap<String, Vec<IpNetwork>>> = PerFamily::default();
        // IPv6 rules have been wanted since the agent started: from the start on a node with
        // an IPv6 address, or where a previous run left IPv6 rules (kept in step, so pods
        // and Services gone since leave them, rather than left as they were).
        let mut v6_used = self.ipv6_node || {
            let (dp, r) = (self.dataplane, runner.clone());
            let found = tokio::task::spawn_blocking(move || DpWriter::v6_in_kernel(dp, &r))
                .await
                .unwrap_or(false);
            if found {
                info!("IPv6 rules of a previous run found: kept in step from the first sync");
            }
            found
        };
        // Known with the first synced snapshot, as the context is.
        let mut guard: Option<NodeGuard> = None;
        let mut reserved_now = Reserved::default();
        let mut last_sync = Instant::now() - self.min_sync;
        let mut last_refresh = Instant::now();
        let mut pending = false;
        // The pending sync is only the periodic re-read.
        let mut refresh_only = false;
        // After a failed sync: the wait before the next, doubling to a minute, and the last
        // error logged (a repeat of it is not logged again).
        let mut backoff = Duration::ZERO;
        let mut failures = 0u64;
        let mut last_error = String::new();
        // The last IPv6-only failure logged (IPv4 written, IPv6 closed).
        let mut last_v6_error = String::new();
        let mut first = true;
        info!(
            dataplane = self.dataplane.name(),
            "services: waiting for Services, EndpointSlices and pools"
        );
        loop {
            self.pulse.beat();
            let ready = ctx.is_some()
                && st.listed_services
                && st.listed_slices
                && (policy_ctx.is_none() || pst.listed());
            let deadline = if pst.urgent() {
                last_sync + backoff
            } else if pst.dirty {
                last_sync + POLICY_BATCH.max(backoff)
            } else if let Some(since) = pst.stale_since {
                (since + POLICY_BATCH).max(last_sync + backoff)
            } else if pending {
                last_sync + self.min_sync.max(backoff)
            } else {
                last_refresh + self.refresh
            };
            tokio::select! {
                // Waiting for the first lists, or idle: wake to say this loop is alive.
                _ = self.pulse.due() => {}
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    let mut apply = |ev| match ev {
                        Ev::Policy(p) => pst.apply(p),
                        ev => st.apply(ev),
                    };
                    apply(ev);
                    while let Ok(ev) = rx.try_recv() {
                        apply(ev);
                    }
                    if !st.dirty.is_empty() {
                        pending = true;
                        refresh_only = false;
                    }
                }
                Some(a) = async { attach_rx.as_mut()?.recv().await } => {
                    pst.announce(a);
                }
                Some(res) = async { Some(read_job.as_mut()?.await) } => {
                    read_job = None;
                    let Ok(res) = res else { return };
                    match res {
                        Ok(read) => {
                            match (&read.v4.forward_drops, forward_warned) {
                                (Some(d), false) => {
                                    warn!("{d}: pod traffic the nftables dataplane accepts is dropped there (Docker started after the agent?); a restart with --dataplane auto chooses iptables, or set that policy to ACCEPT");
                                    forward_warned = true;
                                }
                                (None, true) => {
                                    info!("the iptables FORWARD chain no longer drops by default");
                                    forward_warned = false;
                                }
                                _ => {}
                            }
                            if let Some(c) = &read.v4.counters {
                                let mut counts = policy_rules.v4.count(c);
                                let six = read.v6.as_ref().and_then(|r| Some((r.counters.as_ref()?, policy_rules.v6.as_ref()?)));
                                if let Some((c6, p6)) = six {
                                    for (k, n) in p6.count(c6) {
                                        *counts.entry(k).or_insert(0) += n;
                                    }
                                }
                                publish_counters(&self.metrics, &counts, &pst);
                            }
                            if writer.as_mut().is_some_and(|w| w.adopt(read)) {
                                // A sync against what was read: writes only what drifted
                                // (and is no change itself, unless one is already waiting).
                                refresh_only = !pending;
                                pending = true;
                                reads_dropped = 0;
                            } else if reads_dropped >= READS_DROPPED_MAX {
                                // Changes come faster than a read: the next sync reads the
                                // tables itself (drift is repaired, a change waits once).
                                if let Some(w) = writer.as_mut() { w.invalidate(); }
                                pending = true;
                                reads_dropped = 0;
                            } else {
                                reads_dropped += 1;
                                debug!("the tables were written while being read: read again at the next refresh");
                            }
                        }
                        Err(e) => debug!("reading the tables back failed (tried again at the next refresh): {e}"),
                    }
                }
                r = self.snapshot.changed() => {
                    if r.is_err() { return }
                    let snap = self.snapshot.borrow_and_update().clone();
                    if !snap.synced { continue }
                    if policy_ctx.is_some() {
                        pst.set_known(policy_state::attachments(&snap, &self.node));
                    }
                    let zone = snap.nodes.get(&self.node).and_then(|n| n.labels.get(ZONE_LABEL).cloned());
                    let c = NodeContext { node: self.node.clone(), zone, masquerade_bit: self.masquerade_bit };
                    let new_sets = PerFamily {
                        v4: pool_sets(&snap, Family::V4),
                        v6: wants_v6(&snap).then(|| pool_sets(&snap, Family::V6)),
                    };
                    let new_guard = node_guard(&snap, self.nat_outgoing_exclusions, &self.workload_prefix);
                    let new_reserved = reserved(&snap, &new_guard.pod_blocked_ports);
                    if new_reserved != reserved_now {
                        // A node or pool added: every Service is judged again.
                        reserved_now = new_reserved;
                        st.dirty.extend(st.services.keys().cloned());
                        pending = true;
                        refresh_only = false;
                    }
                    if guard.as_ref() != Some(&new_guard) {
                        guard = Some(new_guard);
                        pending = true;
                        refresh_only = false;
                    }
                    if ctx.as_ref() != Some(&c) || new_sets.v4 != sets.v4 || new_sets.v6 != sets.v6 {
                        // A label or pool change can touch every Service: render them all.
                        if ctx.as_ref() != Some(&c) {
                            st.dirty.extend(st.services.keys().cloned());
                        }
                        ctx = Some(c);
                        sets = new_sets;
                        pending = true;
                        refresh_only = false;
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()), if ready => {
                    if !pending && !pst.needs_render() {
                        // The periodic re-read, beside the writer: what it finds is adopted
                        // (and what drifted repaired) only if nothing was written meanwhile,
                        // and no change waits for it. It reads the policy counters too.
                        last_refresh = Instant::now();
                        if let (None, Some(w)) = (&read_job, writer.as_ref()) {
                            let r = w.reader(policy_ctx.is_some());
                            read_job = Some(tokio::task::spawn_blocking(move || r.read()));
                        }
                        continue;
                    }
                    let (Some(c), Some(g)) = (ctx.clone(), guard.as_ref()) else { continue };
                    // A pod with an IPv6 address before the snapshot shows its pool (IPAM
                    // reads the store itself): the IPv6 rules go in with its chains, never
                    // after its ADD has returned.
                    // And once IPv6 is in use it stays so for the agent's life: IPv6 pods may
                    // outlive their pool, and their guard must not go with it.
                    let in_use = v6_used || (policy_ctx.is_some() && pst.any_ipv6());
                    if sets.v6.is_none() && in_use {
                        sets.v6 = Some(pool_sets(&self.snapshot.borrow(), Family::V6));
                    }
                    v6_used |= sets.v6.is_some();
                    // A policy render due makes this sync a change, not just the re-read.
                    refresh_only &= !pst.needs_render();
                    let render_started = Instant::now();
                    st.render(self.dataplane, &c, &reserved_now, false);
                    let assemble = |family, sets| Want::assemble(
                        self.dataplane,
                        family,
                        &c,
                        g,
                        sets,
                        self.services,
                        st.rendered.values().flatten(),
                    );
                    let mut want = PerFamily {
                        v4: assemble(Family::V4, &sets.v4),
                        v6: sets.v6.as_ref().map(|s| assemble(Family::V6, s)),
                    };
                    if let Want::Nftables(t) = &want.v4 {
                        if t.conflicts != conflicts {
                            for c in t.conflicts.iter().filter(|c| !conflicts.contains(c)) {
                                warn!("two Services want the same address and port (or node port): the first by name is programmed, not {c}");
                            }
                            conflicts = t.conflicts.clone();
                        }
                    }
                    let mut with_chains = vec![];
                    if let Some(pctx) = &policy_ctx {
                        // The IPv6 rules never go in without IPv6's policy (a pod would be
                        // open over IPv6 meanwhile): rendered now if it is not yet.
                        let v6_unrendered = want.v6.is_some() && policy_rules.v6.is_none();
                        if pst.needs_render() || v6_unrendered {
                            // The last render goes first: at a cluster's size a render is
                            // tens of MiB, and two at once were the agent's peak.
                            drop(std::mem::take(&mut policy_rules));
                            (policy_rules, with_chains) = pst.render(pctx, self.dataplane, want.v6.is_some());
                            self.metrics.policy_refused.clear();
                            for k in pst.refused() {
                                let l = crate::metrics::ObjectLabel { object: k.clone() };
                                self.metrics.policy_refused.get_or_create(&l).set(1);
                            }
                        }
                        want.v4.merge_policy(&policy_rules.v4);
                        if let (Some(w), Some(p)) = (&mut want.v6, &policy_rules.v6) {
                            w.merge_policy(p);
                        }
                    }
                    let Some(mut w) = writer.take() else { return };
                    let was_refresh = std::mem::take(&mut refresh_only);
                    let started = Instant::now();
                    let render_time = started - render_started;
                    let prefix = self.workload_prefix.clone();
                    let mut job = tokio::task::spawn_blocking(move || {
                        let r = w.sync(&want, &prefix);
                        (w, r)
                    });
                    // Every tool has a deadline, so the sync is bounded: waiting for it is
                    // progress, and the loop beats meanwhile. A new attachment is heard
                    // meanwhile too: if this sync carries no new policy render and its chains
                    // are already in the kernel (its Pod came first), it is told at once;
                    // otherwise after this sync, if this sync wrote them.
                    let res = loop {
                        tokio::select! {
                            r = &mut job => break r,
                            _ = self.pulse.due() => self.pulse.beat(),
                            Some(a) = async { attach_rx.as_mut()?.recv().await } => pst.announce(a),
                        }
                    };
                    let Ok((w, r)) = res else { return };
                    writer = Some(w);
                    // The periodic re-read is not a change: the next change is not held back
                    // by it (only by the last write's least interval).
                    if !was_refresh {
                        last_sync = Instant::now();
                    }
                    pending = false;
                    self.metrics.proxy_sync.observe(started.elapsed().as_secs_f64());
                    self.metrics.proxy_skipped.clear();
                    for (k, v) in &st.skipped {
                        self.metrics.proxy_skipped.get_or_create(&crate::metrics::ObjectLabel { object: k.clone() }).set(v.len() as i64);
                    }
                    match r {
                        Ok(rep) => {
                            self.metrics.proxy_rules.set(rep.rules_total as i64);
                            if !others_removed {
                                others_removed = true;
                                let (dp, runner) = (self.dataplane, runner.clone());
                                tokio::task::spawn_blocking(move || crate::dataplane::DpWriter::remove_others(dp, &runner));
                            }
                            match &rep.v6_error {
                                None => {
                                    pst.v6_in_kernel = sets.v6.is_some();
                                    pst.programmed(&with_chains);
                                }
                                Some(why) => {
                                    // IPv4 is in; IPv6 is closed to pods and tried again
                                    // soon (its pods' ADDs wait for it).
                                    self.metrics.proxy_restore_failures.inc();
                                    if *why != last_v6_error {
                                        warn!("IPv6 rules not written (IPv4's are): {why}");
                                        last_v6_error = why.clone();
                                    }
                                    pst.programmed_v4_only(&with_chains);
                                    backoff = (backoff * 2).clamp(Duration::from_secs(1), V6_RETRY_MAX);
                                    pending = true;
                                }
                            }
                            if let Some(tx) = &isolations {
                                tx.send_if_modified(|now| {
                                    let changed = **now != pst.isolation;
                                    if changed {
                                        *now = Arc::new(pst.isolation.clone());
                                    }
                                    changed
                                });
                            }
                            if rep.v6_error.is_none() && !last_v6_error.is_empty() {
                                info!("IPv6 rules written again");
                                last_v6_error.clear();
                            }
                            if failures > 0 && rep.v6_error.is_none() {
                                info!(failures, "dataplane writes work again");
                                failures = 0;
                                backoff = Duration::ZERO;
                                last_error.clear();
                            }
                            if first && !rep.wrote {
                                info!(services = st.services.len(), rules_total = rep.rules_total, "services: the tables already hold every rule (nothing written)");
                            }
                            if first {
                                // The guard, anti-spoofing and (with every policy, namespace
                                // and pod listed) NetworkPolicy are in the kernel.
                                crate::ready::mark(self.ready_file.as_deref(), &format!("{} programmed", self.dataplane.name()));
                                self.synced.send_replace(true);
                            }
                            first = false;
                            if rep.wrote {
                                let (policies, pods, attachments) = pst.counts();
                                info!(
                                    services = st.services.len(),
                                    policies,
                                    pods,
                                    attachments,
                                    chains_written = rep.chains_written,
                                    chains_deleted = rep.chains_deleted,
                                    rules_written = rep.rules_written,
                                    elements = rep.elements,
                                    rules_total = rep.rules_total,
                                    read_back = rep.read,
                                    render_ms = render_time.as_millis() as u64,
                                    write_ms = rep.write_time.as_millis() as u64,
                                    written_by = rep.written_by,
                                    total_ms = started.elapsed().as_millis() as u64,
                                    "services programmed"
                                );
                            }
                        }
                        Err(e) => {
                            self.metrics.proxy_restore_failures.inc();
                            failures += 1;
                            backoff = (backoff * 2).clamp(Duration::from_secs(1), SYNC_BACKOFF_MAX);
                            let text = e.to_string();
                            if text != last_error {
                                warn!(failures, retry_in_s = backoff.as_secs(), dataplane = self.dataplane.name(), "dataplane sync failed (reading the tables again, retrying with back-off): {text}");
                                last_error = text;
                            } else {
                                debug!(failures, retry_in_s = backoff.as_secs(), "dataplane sync failed again: {text}");
                            }
                            // The back-off counts from this failure, a re-read's too.
                            last_sync = Instant::now();
                            // Everything is rendered from scratch at the next try (the
                            // policy too, so that ADDs waiting on it are told).
                            st.dirty.extend(st.services.keys().cloned());
                            pst.dirty = true;
                            pending = true;
                        }
                    }
                }
            }
        }
    }
}
