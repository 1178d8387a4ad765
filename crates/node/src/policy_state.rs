//! NetworkPolicy's inputs on this node and their rendering (issue 29): the policies,
//! namespaces and pods of the cluster (as `brindle_policy`'s model: only what policy needs),
//! and this node's pod attachments — from the IPAM blocks (every allocation of this node
//! that records its host veth) and, before the blocks' watch shows them, from the IPAM
//! socket the moment an address is given. The Services task owns the writer and calls
//! [`PolicyState::render`] when [`PolicyState::dirty`].
//!
//! Which interfaces get chains:
//! - a pod's primary attachment (`eth0`), once its Pod is known (labels decide which
//!   policies isolate it): until then it has no chains, so it passes nothing;
//! - an attachment that is no Kubernetes pod's (podman, a runtime without a Pod object) or a
//!   pod's secondary attachment: chains that isolate nothing (NetworkPolicy is about a pod's
//!   primary network, as everywhere);
//! - a hostNetwork pod has no interface of ours.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle_cni::agent::NewAttachment;
use brindle_felix_lite::family::Family;
use brindle_felix_lite::policy::{LocalEndpoint, PolicyContext, Renderer};
use brindle_felix_lite::workloads::host_veth_name;
use brindle_ipam::block::{self, attr};
use brindle_policy::compile::Program;
use brindle_policy::model::{Namespace, Pod, Policy};
use brindle_policy::World;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::dataplane::{Dataplane, PerFamily, PolicyOut};
use crate::denied_log::Isolation;
use crate::snapshot::{Event, Snapshot};

/// How long an attachment announced by the IPAM socket is kept without the blocks showing it.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// One of this node's pod attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub veth: String,
    pub ips: Vec<IpAddr>,
    /// (namespace, name) of its Kubernetes pod, if it is one's.
    pub pod: Option<(String, String)>,
    /// The pod's primary interface (`eth0`).
    pub primary: bool,
}

fn from_attrs(attrs: &BTreeMap<String, String>, ip: IpAddr) -> Option<Attachment> {
    let veth = attrs.get(attr::HOST_INTERFACE).filter(|v| !v.is_empty())?;
    let pod = match (attrs.get(attr::NAMESPACE), attrs.get(attr::POD)) {
        (Some(ns), Some(p)) if !ns.is_empty() && !p.is_empty() => Some((ns.clone(), p.clone())),
        _ => None,
    };
    Some(Attachment {
        veth: veth.clone(),
        ips: vec![ip],
        pod,
        primary: attrs.get(attr::INTERFACE).is_none_or(|i| i == "eth0"),
    })
}

/// This node's attachments that record their host veth, by veth (pure).
pub fn attachments(snap: &Snapshot, node: &str) -> BTreeMap<String, Attachment> {
    let mut out: BTreeMap<String, Attachment> = BTreeMap::new();
    // Only blocks holding something of this node's are read allocation by allocation (the
    // others cost a look at their attributes, no copies).
    let mine = |b: &&brindle_api::IPAMBlockSpec| {
        b.attributes
            .iter()
            .any(|a| a.secondary.get(attr::NODE).map(String::as_str) == Some(node))
    };
    for b in snap.blocks.values().filter(mine) {
        for a in block::allocations(b) {
            let ours = a.attrs.get(attr::NODE).map(String::as_str) == Some(node)
                && a.attrs.get(attr::TYPE).map(String::as_str) == Some(attr::TYPE_POD);
            let Some(at) = from_attrs(&a.attrs, a.ip).filter(|_| ours) else {
                continue;
            };
            match out.get_mut(&at.veth) {
                Some(have) => have.ips.extend(at.ips),
                None => {
                    out.insert(at.veth.clone(), at);
                }
            }
        }
    }
    for a in out.values_mut() {
        a.ips.sort();
        a.ips.dedup();
    }
    out
}

pub enum PolicyEv {
    Policy(Event<NetworkPolicy>),
    Namespace(Event<Namespace>),
    Pod(Event<Pod>),
}

#[derive(Default)]
pub struct PolicyState {
    /// `ns/name` → the policy (a refused one in its closed form).
    policies: BTreeMap<String, Policy>,
    /// `ns/name` → why the policy was refused (logged once per reason).
    refused: BTreeMap<String, String>,
    namespaces: BTreeMap<String, Namespace>,
    /// `ns/name` → the pod (every pod of the cluster: keys exactly sized).
    pods: BTreeMap<Box<str>, Pod>,
    /// The pod label keys the policies' selectors read (a change to another is nothing).
    label_keys: BTreeSet<String>,
    listed: [bool; 3],
    /// From the IPAM blocks.
    known: BTreeMap<String, Attachment>,
    /// From the IPAM socket, not yet in the blocks.
    fresh: BTreeMap<String, (Attachment, Instant)>,
    /// ADDs waiting for their veth's chains.
    waiting: Vec<(String, oneshot::Sender<()>)>,
    /// An attachment was announced since the last render.
    announced: bool,
    /// Something changed since the last render.
    pub dirty: bool,
    /// The blocks changed this node's attachments since the last render, first at this time:
    /// rendered within a batch of it, not at once (a new pod's own announcement is what
    /// is urgent, and the blocks show its allocation just before it).
    pub stale_since: Option<Instant>,
    /// This node's name: its pods get chains before their interfaces exist.
    node: String,
    /// The interfaces with chains in the last render, and whose pod's they are.
    rendered: BTreeMap<String, Option<String>>,
    /// The same, as the last successful sync wrote them.
    written: BTreeMap<String, Option<String>>,
    /// The kernel holds the last render (no render since the last successful sync).
    in_kernel: bool,
    /// The IPv6 rules (with IPv6's policy) are in the kernel, as of the last sync: until then
    /// a pod with an IPv6 address never takes the fast path below.
    pub v6_in_kernel: bool,
    /// Keep the policies' chains between renders (IPv4's, IPv6's).
    renderer: Renderer,
    nft_renderer: brindle_felix_lite::nft::policy::Renderer,
    renderer6: Renderer,
    nft_renderer6: brindle_felix_lite::nft::policy::Renderer,
    /// What isolates each pod with chains, by interface, as last rendered (`--log-denied`).
    pub isolation: BTreeMap<String, Isolation>,
}

impl PolicyState {
    pub fn new(node: &str) -> PolicyState {
        PolicyState {
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// Policies, namespaces and pods have all been listed.
    pub fn listed(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// A new attachment waits for its chains: sync now. (One still waiting after that, for
    /// its Pod, is served by the render the Pod's arrival causes.)
    pub fn urgent(&self) -> bool {
        self.announced
    }

    pub fn apply(&mut self, ev: PolicyEv) {
        let was = self.dirty;
        self.dirty = true;
        match ev {
            PolicyEv::Policy(Event::Reset(items)) => {
                self.listed[0] = true;
                self.policies.clear();
                self.refused.clear();
                for (k, np) in items {
                    self.put_policy(k, &np);
                }
                self.label_keys = label_keys(&self.policies);
            }
            PolicyEv::Policy(Event::Upsert(k, np)) => {
                self.put_policy(k, &np);
                self.label_keys = label_keys(&self.policies);
            }
            PolicyEv::Policy(Event::Delete(k)) => {
                self.policies.remove(&k);
                self.refused.remove(&k);
                self.label_keys = label_keys(&self.policies);
            }
            PolicyEv::Namespace(Event::Reset(items)) => {
                self.listed[1] = true;
                self.namespaces = items.into_iter().collect();
            }
            PolicyEv::Namespace(Event::Upsert(k, n)) => {
                self.namespaces.insert(k, *n);
            }
            PolicyEv::Namespace(Event::Delete(k)) => {
                self.namespaces.remove(&k);
            }
            PolicyEv::Pod(Event::Reset(items)) => {
                self.listed[2] = true;
                self.pods = items
                    .into_iter()
                    .map(|(k, p)| (k.into_boxed_str(), p))
                    .collect();
                self.announced |= !self.waiting.is_empty();
            }
            PolicyEv::Pod(Event::Upsert(k, p)) => {
                if let Some(old) = self.pods.get(k.as_str()) {
                    if self.same_to_policy(old, &p) {
                        // The same pod again to every policy (its status, or a label no
                        // selector reads, changed): kept, nothing to render.
                        self.dirty = was;
                        self.pods.insert(k.into_boxed_str(), *p);
                        return;
                    }
                }
                // An ADD waiting for this Pod gets its chains at once, not after a batch.
                self.announced |= self.waits_for(&k);
                self.pods.insert(k.into_boxed_str(), *p);
            }
            PolicyEv::Pod(Event::Delete(k)) => {
                self.pods.remove(k.as_str());
            }
        }
    }

    /// Whether two states of one pod are alike to every policy: the same but for labels no
    /// selector reads.
    fn same_to_policy(&self, a: &Pod, b: &Pod) -> bool {
        let bare = |p: &Pod| Pod {
            labels: Default::default(),
            ..p.clone()
        };
        bare(a) == bare(b)
            && self
                .label_keys
                .iter()
                .all(|k| a.labels.get(k) == b.labels.get(k))
    }

    /// An ADD is waiting for the chains of pod `key` (`namespace/name`).
    fn waits_for(&self, key: &str) -> bool {
        self.waiting.iter().any(|(veth, _)| {
            let a = self
                .fresh
                .get(veth)
                .map(|(a, _)| a)
                .or(self.known.get(veth));
            a.and_then(|a| a.pod.as_ref()).is_some_and(|(ns, n)| {
                key.strip_prefix(ns.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    == Some(n)
            })
        })
    }

    fn put_policy(&mut self, key: String, np: &NetworkPolicy) {
        let p = match brindle_policy::policy(np) {
            Ok(p) => {
                self.refused.remove(&key);
                p
            }
            Err(e) => {
                let why = e.to_string();
                if self.refused.get(&key) != Some(&why) {
                    warn!(policy = %key, "NetworkPolicy refused, its pods isolated without its allows: {why}");
                    self.refused.insert(key.clone(), why);
                }
                brindle_policy::closed(np)
            }
        };
        self.policies.insert(key, p);
    }

    /// The attachments in the blocks changed (a snapshot came).
    pub fn set_known(&mut self, known: BTreeMap<String, Attachment>) {
        if known != self.known {
            let before = self.local();
            self.fresh
                .retain(|veth, (a, _)| known.get(veth).is_none_or(|k| k.ips != a.ips));
            self.known = known;
            // The blocks showing what the IPAM socket announced changes nothing to render.
            if self.local() != before && self.stale_since.is_none() {
                self.stale_since = Some(Instant::now());
            }
        }
    }

    /// `namespace/name` of the pod whose interface `veth` is.
    pub fn pod_of(&self, veth: &str) -> Option<String> {
        if let Some(Some(pod)) = self.rendered.get(veth) {
            return Some(pod.clone());
        }
        let a = self
            .fresh
            .get(veth)
            .map(|(a, _)| a)
            .or_else(|| self.known.get(veth))?;
        a.pod.as_ref().map(|(ns, n)| format!("{ns}/{n}"))
    }

    /// This node's attachments: the blocks', with the ones just announced over them.
    fn local(&self) -> BTreeMap<String, Attachment> {
        let mut local = self.known.clone();
        for (veth, (a, _)) in &self.fresh {
            local.insert(veth.clone(), a.clone());
        }
        local
    }

    /// Whether a pod interface of this node has an IPv6 address: its IPv6 rules must be in
    /// the kernel before its ADD returns, whatever the snapshot says of the pools yet.
    pub fn any_ipv6(&self) -> bool {
        self.with_ipv6().next().is_some()
    }

    /// The interfaces of this node's attachments that have an IPv6 address.
    fn with_ipv6(&self) -> impl Iterator<Item = &String> {
        self.known
            .values()
            .chain(self.fresh.values().map(|(a, _)| a))
            .filter(|a| a.ips.iter().any(IpAddr::is_ipv6))
            .map(|a| &a.veth)
    }

    /// An attachment just given its addresses by the IPAM socket.
    pub fn announce(&mut self, n: NewAttachment) {
        let mut at: Option<Attachment> = None;
        for ip in &n.ips {
            if let Some(a) = from_attrs(&n.attrs, *ip) {
                match at.as_mut() {
                    Some(have) => have.ips.push(*ip),
                    None => at = Some(a),
                }
            }
        }
        let Some(at) = at else {
            let _ = n.ready.send(());
            return;
        };
        // A pod whose chains were written before its interface existed (its Pod came first,
        // as from a kubelet): nothing to wait for, as long as the kernel holds everything the
        // agent knows (no change since the last render, and that render written). Its
        // address enters the sets within a batch (as it does on the other nodes), not while
        // the plugin is still wiring the pod.
        let key = at
            .pod
            .as_ref()
            .filter(|_| at.primary)
            .map(|(ns, p)| format!("{ns}/{p}"));
        let has_v6 = at.ips.iter().any(IpAddr::is_ipv6);
        let current =
            self.in_kernel && !self.dirty && !self.announced && (!has_v6 || self.v6_in_kernel);
        match self.written.get(&at.veth) {
            Some(pod) if current && key.is_some() && *pod == key => {
                let _ = n.ready.send(());
                self.stale_since.get_or_insert_with(Instant::now);
            }
            _ => {
                self.waiting.push((at.veth.clone(), n.ready));
                self.announced = true;
                self.dirty = true;
            }
        }
        self.fresh.insert(at.veth.clone(), (at, Instant::now()));
    }

    /// Anything to render.
    pub fn needs_render(&self) -> bool {
        self.dirty || self.announced || self.stale_since.is_some()
    }

    /// The chains and sets for now in `dp`'s form (for IPv6 too when `v6`: the same program
    /// over the pods' IPv6 addresses), and the veths that got chains.
    pub fn render(
        &mut self,
        ctx: &PolicyContext,
        dp: Dataplane,
        v6: bool,
    ) -> (PerFamily<PolicyOut>, Vec<String>) {
        self.in_kernel = false;
        self.dirty = false;
        self.stale_since = None;
        self.announced = false;
        let now = Instant::now();
        if self.fresh.values().any(|(_, t)| now - *t > FRESH_FOR) {
            self.fresh.retain(|_, (_, t)| now - *t <= FRESH_FOR);
            self.dirty = true; // rendered without them now; nothing else to do
        }
        let local = self.local();
        // This node's pods with the addresses IPAM gave them: copies of those few, every
        // other pod borrowed as it is.
        let mut patched: BTreeMap<String, Pod> = BTreeMap::new();
        let mut endpoints: BTreeMap<String, LocalEndpoint> = BTreeMap::new();
        let mut with_chains = vec![];
        for a in local.values() {
            let key = a
                .pod
                .as_ref()
                .filter(|_| a.primary)
                .map(|(ns, n)| format!("{ns}/{n}"));
            // A pod's own network: its addresses are the pod's as soon as IPAM gave them (the
            // kubelet reports them later), and it waits for its Pod.
            if let Some(k) = &key {
                let p = match patched.entry(k.clone()) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => match self.pods.get(k.as_str()) {
                        Some(p) if !p.host_network => e.insert(p.clone()),
                        _ => continue,
                    },
                };
                let missing: Vec<IpAddr> = a
                    .ips
                    .iter()
                    .filter(|ip| !p.ips.contains(ip))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    p.ips = p.ips.iter().copied().chain(missing).collect();
                }
            }
            with_chains.push(a.veth.clone());
            let veth = a.veth.clone();
            endpoints.insert(veth.clone(), LocalEndpoint { veth, pod: key });
        }
        // This node's pods whose interface is not there yet: their chains now, under the
        // name the CNI plugin gives a pod's eth0 veth, so that its ADD finds them written
        // and waits only for its address to enter the sets.
        for (k, p) in &self.pods {
            if *p.node != *self.node || p.host_network || p.finished {
                continue;
            }
            let veth = host_veth_name(&ctx.workload_prefix, &p.namespace, &p.name);
            endpoints.entry(veth.clone()).or_insert(LocalEndpoint {
                veth,
                pod: Some(k.to_string()),
            });
        }
        self.rendered = endpoints
            .iter()
            .map(|(veth, e)| (veth.clone(), e.pod.clone()))
            .collect();
        let endpoints: Vec<LocalEndpoint> = endpoints.into_values().collect();
        let mut world = World {
            namespaces: self.namespaces.clone(),
            ..Default::default()
        };
        for p in self.pods.values() {
            // A namespace the datastore has no object for (etcd mode) still has its name.
            if !world.namespaces.contains_key(&*p.namespace) {
                let n = Namespace::new(&p.namespace, &[]);
                world.namespaces.insert(p.namespace.to_string(), n);
            }
        }
        world.policies = self.policies.values().cloned().collect();
        let pods: Vec<&Pod> = self
            .pods
            .iter()
            .map(|(k, p)| patched.get(&**k).unwrap_or(p))
            .collect();
        // Only the pods with chains here need to know what isolates them.
        let chained: BTreeSet<(&str, &str)> = endpoints
            .iter()
            .filter_map(|e| e.pod.as_deref()?.split_once('/'))
            .collect();
        let prog = Program::compile_for(&world, &pods, |p| {
            chained.contains(&(&*p.namespace, &*p.name))
        });
        // What --log-denied names: each pod interface with chains (pre-written ones too).
        self.isolation = endpoints
            .iter()
            .filter(|_| ctx.log_denied.is_some())
            .filter_map(|e| {
                let pod = e.pod.clone()?;
                let ep = prog.by_pod.get(&pod)?;
                let iso = Isolation {
                    pod,
                    ingress: ep.ingress.clone(),
                    egress: ep.egress.clone(),
                };
                Some((e.veth.clone(), iso))
            })
            .collect();
        let v4 = PolicyContext {
            family: Family::V4,
            ..ctx.clone()
        };
        let out4 = match dp {
            Dataplane::Iptables(_) => {
                PolicyOut::Iptables(self.renderer.render(&prog, &endpoints, &v4))
            }
            Dataplane::Nftables => {
                PolicyOut::Nftables(self.nft_renderer.render(&prog, &endpoints, &v4))
            }
        };
        let out6 = v6.then(|| {
            let c6 = PolicyContext {
                family: Family::V6,
                ..ctx.clone()
            };
            match dp {
                Dataplane::Iptables(_) => {
                    PolicyOut::Iptables(self.renderer6.render(&prog, &endpoints, &c6))
                }
                Dataplane::Nftables => {
                    PolicyOut::Nftables(self.nft_renderer6.render(&prog, &endpoints, &c6))
                }
            }
        });
        (PerFamily { v4: out4, v6: out6 }, with_chains)
    }

    /// After a sync that wrote `with_chains`: the ADDs waiting for those are told.
    /// [`PolicyState::programmed`] after a sync whose IPv6 part failed: the IPv4 rules are
    /// in, so only the attachments without an IPv6 address are told; the others wait.
    pub fn programmed_v4_only(&mut self, with_chains: &[String]) {
        let v6: std::collections::HashSet<&String> = self.with_ipv6().collect();
        let told: Vec<String> = with_chains
            .iter()
            .filter(|v| !v6.contains(v))
            .cloned()
            .collect();
        self.v6_in_kernel = false;
        self.programmed(&told);
        // Not all of the render is in the kernel: the next sync writes it again.
        self.dirty = true;
    }

    pub fn programmed(&mut self, with_chains: &[String]) {
        self.written = self.rendered.clone();
        self.in_kernel = true;
        let before = self.waiting.len();
        let mut still = vec![];
        for (veth, tx) in self.waiting.drain(..) {
            if with_chains.contains(&veth) {
                let _ = tx.send(());
            } else if !tx.is_closed() {
                still.push((veth, tx));
            }
        }
        if before > 0 && !still.is_empty() {
            info!(
                waiting = still.len(),
                "pod attachments wait for their Pod before they get policy chains"
            );
        }
        self.waiting = still;
    }

    /// The policies refused, by `namespace/name`.
    pub fn refused(&self) -> impl Iterator<Item = &String> {
        self.refused.keys()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.policies.len(), self.pods.len(), self.known.len())
    }
}

/// The pod label keys the policies' selectors read.
fn label_keys(policies: &BTreeMap<String, Policy>) -> BTreeSet<String> {
    policies
        .values()
        .flat_map(|p| p.pod_label_keys().map(str::to_owned))
        .collect()
}

pub fn kube_pod(p: KubePod) -> Option<Pod> {
    Some(brindle_policy::pod(&p))
}

pub fn kube_namespace(n: KubeNamespace) -> Option<Namespace> {
    Some(brindle_policy::namespace(&n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_felix_lite::policy::PolicyRules;

    /// The iptables render (the tests look at its chains).
    fn render_ipt(st: &mut PolicyState, ctx: &PolicyContext) -> (PolicyRules, Vec<String>) {
        let dp = Dataplane::Iptables(brindle_felix_lite::iptables::Backend::Legacy);
        match st.render(ctx, dp, false) {
            (
                PerFamily {
                    v4: PolicyOut::Iptables(r),
                    ..
                },
                with,
            ) => (r, with),
            _ => unreachable!("rendered for iptables"),
        }
    }

    fn attrs(
        node: &str,
        ns: &str,
        pod: &str,
        ifname: &str,
        veth: &str,
    ) -> BTreeMap<String, String> {
        [
            (attr::NODE, node),
            (attr::TYPE, attr::TYPE_POD),
            (attr::NAMESPACE, ns),
            (attr::POD, pod),
            (attr::INTERFACE, ifname),
            (attr::HOST_INTERFACE, veth),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            node: "n1".into(),
            ..Default::default()
        }
    }

    /// Announces an attachment as the IPAM socket does; the receiver says when it is told.
    fn announce(
        st: &mut PolicyState,
        attrs: BTreeMap<String, String>,
        ip: &str,
    ) -> oneshot::Receiver<()> {
        let (ready, rx) = oneshot::channel();
        st.announce(NewAttachment {
            attrs,
            ips: vec![ip.parse().unwrap()],
            ready,
        });
        rx
    }

    #[test]
    fn a_pod_gets_chains_once_known_others_at_once_and_waiters_are_told() {
        let mut st = PolicyState::default();
        st.apply(PolicyEv::Pod(Event::Reset(vec![])));
        let mut rx = announce(&mut st, attrs("n1", "x", "a", "eth0", "brla"), "10.0.0.1");
        let mut podman = attrs("n1", "", "", "eth0", "brlp");
        podman.remove(attr::POD);
        let mut rx2 = announce(&mut st, podman, "10.0.0.2");
        assert!(st.urgent());
        let (rules, with) = render_ipt(&mut st, &PolicyContext::default());
        assert_eq!(with, vec!["brlp".to_string()], "x/a's Pod is not known yet");
        assert!(rules
            .filter
            .chains
            .iter()
            .all(|c| !c.name.ends_with("brla")));
        st.programmed(&with);
        assert!(rx2.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        assert!(!st.urgent(), "x/a waits for its Pod, not in a loop");
        st.apply(PolicyEv::Pod(Event::Upsert(
            "x/a".into(),
            Box::new(pod("x", "a")),
        )));
        assert!(st.urgent(), "the Pod an ADD waits for: no batching");
        let (rules, with) = render_ipt(&mut st, &PolicyContext::default());
        assert!(with.contains(&"brla".to_string()));
        assert!(rules.filter.chains.iter().any(|c| c.name == "BRL-TW-brla"));
        st.programmed(&with);
        assert!(rx.try_recv().is_ok());
        assert!(!st.urgent());
    }

    #[test]
    fn this_nodes_pods_get_chains_before_their_interface_and_the_add_changes_no_chain() {
        let mut st = PolicyState::new("n1");
        let mut elsewhere = pod("x", "r");
        elsewhere.node = "n2".into();
        let mut done = pod("x", "d");
        done.finished = true;
        let mut host = pod("x", "h");
        host.host_network = true;
        st.apply(PolicyEv::Pod(Event::Reset(
            [
                ("x/a", pod("x", "a")),
                ("x/r", elsewhere),
                ("x/d", done),
                ("x/h", host),
            ]
            .into_iter()
            .map(|(k, p)| (k.to_string(), p))
            .collect(),
        )));
        let ctx = PolicyContext::default();
        let (before, _) = render_ipt(&mut st, &ctx);
        let names: Vec<&str> = before
            .filter
            .chains
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let veth = host_veth_name("brl", "x", "a");
        assert!(
            names.contains(&format!("BRL-TW-{veth}").as_str()),
            "{names:?}"
        );
        for other in ["r", "d", "h"] {
            let v = host_veth_name("brl", "x", other);
            assert!(
                !names.iter().any(|n| n.ends_with(&v)),
                "x/{other}: {names:?}"
            );
        }
        // Its ADD, before those chains are written: it waits for them.
        let mut rx = announce(&mut st, attrs("n1", "x", "a", "eth0", &veth), "10.0.0.1");
        assert!(rx.try_recv().is_err());
        let (after, with) = render_ipt(&mut st, &ctx);
        assert_eq!(
            after.filter, before.filter,
            "the same interface: no chain changes"
        );
        st.programmed(&with);
        assert!(rx.try_recv().is_ok());
        // A second sandbox of the pod, its chains written: told at once, and its address
        // still goes into the sets at once.
        let mut rx = announce(&mut st, attrs("n1", "x", "a", "eth0", &veth), "10.0.0.2");
        assert!(rx.try_recv().is_ok());
        assert!(
            !st.urgent() && st.needs_render(),
            "its address: within a batch"
        );
        // A change the kernel does not hold yet (a namespace relabelled): even a pod whose
        // chains are written waits for the render that has it.
        st.apply(PolicyEv::Namespace(Event::Upsert(
            "x".into(),
            Box::new(Namespace::new("x", &[("team", "a")])),
        )));
        let mut rx = announce(&mut st, attrs("n1", "x", "a", "eth0", &veth), "10.0.0.4");
        assert!(rx.try_recv().is_err());
        let (_, with) = render_ipt(&mut st, &ctx);
        st.programmed(&with);
        assert!(rx.try_recv().is_ok());
        // Another pod's ADD on an interface named like x/a's is not told by x/a's chains.
        let mut rx = announce(&mut st, attrs("n1", "x", "zz", "eth0", &veth), "10.0.0.3");
        assert!(rx.try_recv().is_err());
    }
    /// A pod event that changes nothing any policy reads (a label no selector names, its
    /// status) renders nothing; one that changes a label a selector names does, and so does
    /// it once a policy comes to name that label.
    #[test]
    fn a_label_no_selector_reads_renders_nothing() {
        let np = |name: &str, key: &str| -> NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": name},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {"matchExpressions":
                             [{"key": key, "operator": "Exists"}]}}]}]},
            }))
            .unwrap()
        };
        let mut st = PolicyState::new("n1");
        st.apply(PolicyEv::Policy(Event::Reset(vec![(
            "x/p".into(),
            np("p", "tier"),
        )])));
        st.apply(PolicyEv::Namespace(Event::Reset(vec![(
            "x".into(),
            Namespace::new("x", &[]),
        )])));
        let labelled = |extra: &[(&str, &str)]| {
            let mut p = pod("x", "a").label("app", "web");
            for (k, v) in extra {
                p = p.label(k, v);
            }
            p
        };
        st.apply(PolicyEv::Pod(Event::Reset(vec![(
            "x/a".into(),
            labelled(&[("gen", "1")]),
        )])));
        render_ipt(&mut st, &PolicyContext::default());
        assert!(!st.needs_render());
        st.apply(PolicyEv::Pod(Event::Upsert(
            "x/a".into(),
            Box::new(labelled(&[("gen", "2")])),
        )));
        assert!(!st.needs_render(), "a label no selector reads");
        st.apply(PolicyEv::Pod(Event::Upsert(
            "x/a".into(),
            Box::new(labelled(&[("gen", "2"), ("tier", "db")])),
        )));
        assert!(st.needs_render(), "a label a peer selector reads");
        render_ipt(&mut st, &PolicyContext::default());
        st.apply(PolicyEv::Policy(Event::Upsert(
            "x/q".into(),
            Box::new(np("q", "gen")),
        )));
        render_ipt(&mut st, &PolicyContext::default());
        st.apply(PolicyEv::Pod(Event::Upsert(
            "x/a".into(),
            Box::new(labelled(&[("gen", "3"), ("tier", "db")])),
        )));
        assert!(st.needs_render(), "gen is read once a policy names it");
    }
}
