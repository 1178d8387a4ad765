//! ADD, DEL, CHECK, GC and STATUS.
//!
//! IPAM for ADD and DEL is asked of `brindle-node` on its socket first ([`crate::agent`]),
//! which serves pods that start together in batches; the plugin then only wires the pod and
//! never connects to the datastore. When the agent does not answer, the plugin does the same
//! work itself ([`crate::podipam`]), serialized on the node by a host-wide file lock
//! (`ipam_lock_file`), as calico-ipam does, so 100 pods starting at once queue for a few
//! milliseconds each instead of racing on the node's one block. The datastore's
//! compare-and-swap guards against other nodes, the agent and the controller either way.

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use brindle_datastore::{DatastoreArgs, DatastoreKind, Store};
use brindle_ipam::block::attr;
use brindle_ipam::{attachment_handle, Ipam, ReleaseIp, PRIMARY_INTERFACE};
use clap::{Parser, ValueEnum};
use std::collections::BTreeMap;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::agent::{self, Answer, Request};
use crate::config::{Env, NetConf};
pub use crate::podipam::{ipam_err, ANNOTATION_CONTAINER_ID};
use crate::podipam::{store_err, AddRequest, Alone, DelRequest};
use crate::spec::{code, AddResult, CniError, CniResult, Interface, IpConfig, Route};
use crate::wire;

/// How long the plugin waits for the agent before doing the work itself.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct DatastoreCli {
    #[command(flatten)]
    ds: DatastoreArgs,
}

pub struct Ctx {
    pub conf: NetConf,
    pub env: Env,
    pub node: String,
    kind: DatastoreKind,
    /// Connected on first use: an ADD or DEL the agent serves never needs it.
    store: OnceCell<Store>,
    ipam: OnceCell<Ipam>,
}

impl Ctx {
    pub async fn new(conf: NetConf, env: Env) -> CniResult<Ctx> {
        let node = conf.node_name()?;
        // Which datastore decides whether ADD keeps a workload record; the rest of the
        // settings are read when this process connects to it (not when the agent serves it).
        let kind = match conf
            .datastore_type
            .clone()
            .or_else(|| std::env::var("BRINDLE_DATASTORE").ok())
        {
            None => DatastoreKind::Kubernetes,
            Some(k) => DatastoreKind::from_str(&k, true).map_err(|_| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("datastore_type {k:?} is not one of kubernetes, etcd"),
                    "",
                )
            })?,
        };
        Ok(Ctx {
            conf,
            env,
            node,
            kind,
            store: OnceCell::new(),
            ipam: OnceCell::new(),
        })
    }

    /// The datastore settings: the network configuration's, else `BRINDLE_*` (Calico's
    /// `ETCD_*` for etcd's TLS files) and `KUBECONFIG` from the environment, as `brindle-node`
    /// reads them.
    fn datastore(&self) -> CniResult<DatastoreArgs> {
        let mut argv = vec!["brindle-cni".to_string()];
        let c = &self.conf;
        for (flag, v) in [
            ("--datastore", &c.datastore_type),
            ("--etcd-endpoints", &c.etcd_endpoints),
            ("--etcd-ca-cert-file", &c.etcd_ca_cert_file),
            ("--etcd-cert-file", &c.etcd_cert_file),
            ("--etcd-key-file", &c.etcd_key_file),
            ("--etcd-username", &c.etcd_username),
            ("--etcd-password-file", &c.etcd_password_file),
            ("--kubeconfig", &c.kubeconfig),
        ] {
            if let Some(v) = v {
                argv.extend([flag.to_string(), v.clone()]);
            }
        }
        let cli = DatastoreCli::try_parse_from(argv).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "datastore settings", e.to_string())
        })?;
        Ok(cli.ds)
    }

    async fn store(&self) -> CniResult<&Store> {
        self.store
            .get_or_try_init(|| async {
                self.datastore()?.connect().await.map_err(|e| {
                    CniError::new(
                        code::TRY_AGAIN_LATER,
                        "cannot reach the datastore",
                        e.to_string(),
                    )
                })
            })
            .await
    }

    async fn ipam(&self) -> CniResult<&Ipam> {
        let store = self.store().await?.clone();
        Ok(self.ipam.get_or_init(|| async { Ipam::new(store) }).await)
    }

    /// This attachment's IPAM handle: (container, network, interface), see
    /// [`attachment_handle`].
    fn handle(&self) -> String {
        attachment_handle(&self.conf.name, &self.env.container_id, &self.env.ifname)
    }

    /// The container's first interface: the one that carries the default route and whose
    /// addresses the pod record shows.
    fn primary(&self) -> bool {
        self.env.ifname == PRIMARY_INTERFACE
    }

    fn host_veth(&self) -> String {
        let (ns, pod) = self
            .env
            .pod()
            // Not a Kubernetes pod: name the veth after the container.
            .unwrap_or_else(|| ("container".into(), self.env.container_id.clone()));
        wire::attachment_veth_name(
            &self.conf.veth_prefix,
            &ns,
            &pod,
            &self.conf.name,
            &self.env.ifname,
        )
    }

    /// What the allocation records about its owner and its attachment, so that the
    /// controller (pod gone) and the node agent (container gone) can find leaks.
    fn attrs(&self, ipam_only: bool) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (attr::NODE.to_string(), self.node.clone()),
            (
                attr::CONTAINER_ID.to_string(),
                self.env.container_id.clone(),
            ),
            (attr::TYPE.to_string(), attr::TYPE_POD.to_string()),
            (attr::NETWORK.to_string(), self.conf.name.clone()),
            (attr::INTERFACE.to_string(), self.env.ifname.clone()),
            (attr::TIMESTAMP.to_string(), brindle_ipam::timestamp_now()),
        ]);
        if let Some(ns) = &self.env.netns {
            a.insert(attr::NETNS.into(), ns.clone());
        }
        if !ipam_only {
            a.insert(attr::HOST_INTERFACE.into(), self.host_veth());
        }
        if let Some((ns, pod)) = self.env.pod() {
            a.insert(attr::NAMESPACE.into(), ns);
            a.insert(attr::POD.into(), pod);
        }
        a
    }

    /// Whether this attachment keeps a workload record (etcd mode, primary interface, full
    /// plugin): on the Kubernetes datastore the API server's Pod is the record.
    fn record(&self, ipam_only: bool) -> bool {
        !ipam_only && self.primary() && self.kind == DatastoreKind::Etcd && self.env.pod().is_some()
    }

    fn add_request(&self, ipam_only: bool) -> AddRequest {
        AddRequest {
            handle: self.handle(),
            node: self.node.clone(),
            attrs: self.attrs(ipam_only),
            ipv4: usize::from(self.conf.ipam.assign_ipv4),
            ipv6: usize::from(self.conf.ipam.assign_ipv6),
            ipv4_pools: self.conf.ipam.ipv4_pools.clone(),
            ipv6_pools: self.conf.ipam.ipv6_pools.clone(),
            pod: self.env.pod(),
            container_id: self.env.container_id.clone(),
            record: self.record(ipam_only),
        }
    }

    fn del_request(&self, ipam_only: bool) -> DelRequest {
        DelRequest {
            handle: self.handle(),
            pod: self.env.pod(),
            container_id: self.env.container_id.clone(),
            record: self.record(ipam_only),
        }
    }

    /// Asks the agent; does it here when the agent does not answer. Returns the addresses
    /// and who did the work, for the log.
    async fn ipam_op(&self, req: Request) -> CniResult<(Vec<IpAddr>, &'static str)> {
        match self.ask_agent(&req).await {
            Some(got) => got,
            None => self.ipam_here(&req).await,
        }
    }

    /// The agent's answer, or `None` when there is no agent to ask or it does not answer.
    async fn ask_agent(&self, req: &Request) -> Option<CniResult<(Vec<IpAddr>, &'static str)>> {
        let socket = &self.conf.ipam_socket;
        if socket.as_os_str().is_empty() {
            return None;
        }
        match agent::call(socket, req, AGENT_TIMEOUT).await {
            Answer::Done(ips) => Some(Ok((ips, "agent"))),
            Answer::Failed(e) => Some(Err(e)),
            Answer::Unreachable(why) => {
                debug!(socket = %socket.display(), why, "brindle-node does not answer; doing IPAM here");
                None
            }
        }
    }

    /// IPAM in this process, under the host lock. Nothing else of the plugin's work runs
    /// while it does, so the lock is held for the datastore's round trips only.
    async fn ipam_here(&self, req: &Request) -> CniResult<(Vec<IpAddr>, &'static str)> {
        let _lock = HostLock::acquire(&self.conf.ipam_lock_file)?;
        let store = self.store().await?;
        let ipam = self.ipam().await?;
        let ips = match req {
            Request::Add(r) => crate::podipam::add(store, ipam, &Alone, r).await?,
            Request::Del(r) => crate::podipam::del(store, ipam, &Alone, r).await?,
        };
        Ok((ips, "plugin"))
    }

    pub async fn add(&self, ipam_only: bool) -> CniResult<AddResult> {
        self.env.require(!ipam_only)?;
        let t = Instant::now();
        let req = Request::Add(self.add_request(ipam_only));
        if ipam_only {
            let (ips, by) = self.ipam_op(req).await?;
            let ipam_ms = t.elapsed().as_secs_f64() * 1e3;
            info!(op = "ADD", network = %self.conf.name, container = %self.env.container_id, ips = ?ips, ipam = by, ipam_ms, "done");
            return Ok(ipam_result(&ips, None));
        }
        // The veth pair does not depend on the addresses: it is made while the agent works.
        // Without an agent, IPAM waits for the pair, so that the host lock is not held while
        // this thread waits on the kernel.
        let asked = async { (self.ask_agent(&req).await, t.elapsed()) };
        let pair = async { (self.make_pair().await, t.elapsed()) };
        let ((answer, mut ipam_t), (pair, pair_t)) = tokio::join!(asked, pair);
        let got = match answer {
            Some(got) => got,
            None => {
                // The agent answers only once it has programmed the node's dataplane (and,
                // with policy, holds an ADD until the pod's chains are in); without it, a pod
                // is wired only onto a dataplane the agent has programmed since boot.
                let got = match self.dataplane_ready(code::TRY_AGAIN_LATER) {
                    Ok(()) => self.ipam_here(&req).await,
                    Err(e) => Err(e),
                };
                ipam_t = t.elapsed();
                got
            }
        };
        let (ips, by) = match got {
            Ok(got) => got,
            Err(e) => {
                // The pair goes too (a pair that failed half-made removed itself).
                if let Ok(p) = pair {
                    p.remove().await;
                }
                return Err(e);
            }
        };
        let (ipam_ms, pair_ms) = (ipam_t.as_secs_f64() * 1e3, pair_t.as_secs_f64() * 1e3);
        let both = t.elapsed();
        let wired = match &pair {
            Ok(p) => self.wire(p, &ips).await,
            Err(e) => Err(e.clone()),
        };
        match wired {
            Ok(r) => {
                // Milliseconds from the start: IPAM and the veth pair run side by side; the
                // wiring that needs the addresses follows both.
                let total_ms = t.elapsed().as_secs_f64() * 1e3;
                let wire_ms = total_ms - both.as_secs_f64() * 1e3;
                info!(op = "ADD", network = %self.conf.name, container = %self.env.container_id, ifname = %self.env.ifname, pod = ?self.env.pod(), ips = ?ips, veth = %self.host_veth(), ipam = by, ipam_ms, pair_ms, wire_ms, total_ms, "done");
                Ok(r)
            }
            Err(e) => {
                self.undo_add(pair.ok()).await;
                Err(e)
            }
        }
    }

    /// Takes back what a failed ADD made: the addresses, the record and the veth pair (only
    /// the one this ADD made: another sandbox's of the same name is not this call's).
    async fn undo_add(&self, pair: Option<Pair>) {
        if let Err(e) = self.ipam_op(Request::Del(self.del_request(false))).await {
            warn!(container = %self.env.container_id, error = %e, "releasing after a failed ADD");
        }
        if let Some(p) = pair {
            p.remove().await;
        }
    }

    /// The container's network namespace (CNI_NETNS), its path and an open file.
    fn open_netns(&self) -> CniResult<(String, File)> {
        let path = self.env.netns.clone().unwrap_or_default();
        let file = File::open(&path).map_err(|e| {
            CniError::new(
                code::IO,
                format!("cannot open network namespace {path}"),
                e.to_string(),
            )
        })?;
        Ok((path, file))
    }

    /// The veth pair, up (nothing can flow before the pod has an address and routes), with
    /// its host side's sysctls for the families the configuration asks for: everything of
    /// the wiring that does not need the addresses.
    async fn make_pair(&self) -> CniResult<Pair> {
        let (netns_path, netns) = self.open_netns()?;
        let host = wire::host_handle()?;
        let pod = wire::pod_handle(&netns, &netns_path)?;
        let veth = self.host_veth();
        let ifname = &self.env.ifname;
        if let Err(e) = wire::create_veth(&host, &veth, ifname, self.conf.mtu, &netns).await {
            // A leftover from an earlier sandbox of the same pod or a repeated ADD (deleting
            // the host side takes the pod side with it), or an interface of that name in the
            // pod that is not one of ours: remove them and try once more.
            let a = wire::delete_link(&host, &veth).await?;
            let b = wire::delete_link(&pod, ifname).await?;
            if !a && !b {
                return Err(e);
            }
            wire::create_veth(&host, &veth, ifname, self.conf.mtu, &netns).await?;
        }
        let host_link = wire::link_by_name(&host, &veth).await?.ok_or_else(|| {
            CniError::new(code::NETLINK, format!("{veth} vanished after creation"), "")
        })?;
        let finish = async {
            // Whose veth this is: a DEL deletes a host veth only if it is its own.
            wire::set_owner(&host, &host_link, &self.handle()).await?;
            let ipam = &self.conf.ipam;
            sysctls(&veth, ipam.assign_ipv4, ipam.assign_ipv6)?;
            let pod_link = wire::link_by_name(&pod, ifname).await?.ok_or_else(|| {
                CniError::new(
                    code::NETLINK,
                    format!("{ifname} did not appear in the pod namespace {netns_path}"),
                    "",
                )
            })?;
            // The pod side too: a namespace path can outlive its sandbox (a /proc/<pid> path
            // whose PID was reused), and a late DEL must know the interface is not its own.
            wire::set_owner(&pod, &pod_link, &self.handle()).await?;
            wire::set_up(&pod, &pod_link).await?;
            Ok::<_, CniError>((pod_link, (ipam.assign_ipv4, ipam.assign_ipv6)))
        };
        match finish.await {
            Ok((pod_link, sysctls)) => Ok(Pair {
                host,
                pod,
                host_link,
                pod_link,
                sysctls,
            }),
            Err(e) => {
                let _ = wire::delete_index(&host, host_link.header.index, &veth).await;
                Err(e)
            }
        }
    }

    /// The rest of the wiring, given the addresses: the pod's addresses and routes, the host
    /// routes to them.
    async fn wire(&self, p: &Pair, ips: &[IpAddr]) -> CniResult<AddResult> {
        let veth = self.host_veth();
        let ifname = self.env.ifname.clone();
        let (v4, v6) = (
            ips.iter().any(IpAddr::is_ipv4),
            ips.iter().any(IpAddr::is_ipv6),
        );
        // Addresses the pod's annotations asked for may be of a family the configuration
        // does not assign.
        sysctls(&veth, v4 && !p.sysctls.0, v6 && !p.sysctls.1)?;
        let primary = self.primary();
        let pod_index = p.pod_link.header.index;
        wire::configure_pod_side(&p.pod, &ifname, pod_index, ips, primary).await?;
        for ip in ips {
            wire::add_route(
                &p.host,
                wire::host_route(*ip, p.host_link.header.index),
                &format!("adding the host route to {ip}"),
            )
            .await?;
        }
        let interfaces = vec![
            Interface {
                name: veth,
                mac: wire::mac_of(&p.host_link),
                sandbox: None,
            },
            Interface {
                name: ifname,
                mac: wire::mac_of(&p.pod_link),
                sandbox: self.env.netns.clone(),
            },
        ];
        let mut r = ipam_result(ips, Some(1));
        if !primary {
            for route in &mut r.routes {
                route.priority = Some(wire::SECONDARY_DEFAULT_METRIC);
            }
        }
        r.interfaces = interfaces;
        Ok(r)
    }

    pub async fn del(&self, ipam_only: bool) -> CniResult<()> {
        self.env.require(false)?;
        let t = Instant::now();
        let (freed, by) = self
            .ipam_op(Request::Del(self.del_request(ipam_only)))
            .await?;
        let ipam_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        if !ipam_only {
            self.unwire().await?;
        }
        let unwire_ms = t.elapsed().as_secs_f64() * 1e3;
        info!(op = "DEL", network = %self.conf.name, container = %self.env.container_id, ifname = %self.env.ifname, pod = ?self.env.pod(), released = ?freed, ipam = by, ipam_ms, unwire_ms, "done");
        Ok(())
    }

    /// Deletes this sandbox's veth pair, and with it the host routes through it: the
    /// interface inside its own CNI_NETNS (the host side goes with it), else a host veth
    /// marked as this attachment's. The host veth's name is the pod's, not the sandbox's: a
    /// late DEL for an older sandbox of the pod must not take the newer one's. A namespace
    /// that is gone is fine (its veth went with it).
    async fn unwire(&self) -> CniResult<()> {
        if let Some(path) = self.env.netns.as_deref() {
            if let Ok(netns) = File::open(path) {
                if let Ok(ph) = wire::pod_handle(&netns, path) {
                    if let Some(l) = wire::link_by_name(&ph, &self.env.ifname).await? {
                        let mine = self.handle();
                        match wire::owner_of(&l) {
                            // Unmarked: made before interfaces were marked; it is in this
                            // sandbox's namespace, so it is this sandbox's.
                            Some(owner) if owner != mine => {
                                info!(container = %self.env.container_id, netns = path, owner, "DEL: the interface in CNI_NETNS belongs to another attachment; left alone");
                            }
                            _ => {
                                if !self.primary() {
                                    wire::remove_secondary_rules(&ph, l.header.index).await?;
                                }
                                if wire::delete_index(&ph, l.header.index, &self.env.ifname).await?
                                {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
            }
        }
        let h = wire::host_handle()?;
        let veth = self.host_veth();
        let Some(l) = wire::link_by_name(&h, &veth).await? else {
            return Ok(());
        };
        let (mine, owner) = (self.handle(), wire::owner_of(&l));
        if owner == Some(mine.as_str()) {
            wire::delete_index(&h, l.header.index, &veth).await?;
        } else {
            info!(container = %self.env.container_id, veth = %veth, owner = ?owner, "DEL: the host interface belongs to another sandbox of the pod; left alone");
        }
        Ok(())
    }

    pub async fn check(&self, ipam_only: bool) -> CniResult<()> {
        self.env.require(!ipam_only)?;
        let prev = self.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "CHECK needs prevResult in the network configuration",
                "",
            )
        })?;
        let mut problems = vec![];
        let ips = self
            .ipam()
            .await?
            .ips_of_handle(&self.handle())
            .await
            .map_err(ipam_err)?;
        if ips.is_empty() {
            problems.push(format!("IPAM holds no address for {}", self.handle()));
        }
        let prev_ips: HashSet<IpAddr> = prev["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        if prev_ips != ips.iter().copied().collect() {
            problems.push(format!("prevResult has {prev_ips:?}, IPAM has {ips:?}"));
        }
        if !ipam_only {
            problems.extend(self.check_wiring(&ips).await?);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::CHECK_FAILED,
                "the container's network is not as ADD set it up",
                problems.join("; "),
            ))
        }
    }

    async fn check_wiring(&self, ips: &[IpAddr]) -> CniResult<Vec<String>> {
        let mut problems = vec![];
        let h = wire::host_handle()?;
        let veth = self.host_veth();
        match wire::link_by_name(&h, &veth).await? {
            None => problems.push(format!("host interface {veth} is missing")),
            Some(l) => {
                if !wire::is_up(&l) {
                    problems.push(format!("host interface {veth} is down"));
                }
                if ips.iter().any(IpAddr::is_ipv4)
                    && wire::read_sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp")).as_deref()
                        != Some("1")
                {
                    problems.push(format!("proxy_arp is off on {veth}"));
                }
                for ip in ips {
                    let routes = wire::routes(&h, ip.is_ipv6()).await?;
                    let plen = if ip.is_ipv4() { 32 } else { 128 };
                    if !routes
                        .iter()
                        .any(|r| r.0 == Some(*ip) && r.1 == plen && r.3 == Some(l.header.index))
                    {
                        problems.push(format!("host route {ip}/{plen} dev {veth} is missing"));
                    }
                }
            }
        }
        match self.check_pod_side(ips).await {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(format!("cannot look inside the pod: {e}")),
        }
        Ok(problems)
    }

    async fn check_pod_side(&self, want: &[IpAddr]) -> CniResult<Vec<String>> {
        let (path, netns) = self.open_netns()?;
        let ph = wire::pod_handle(&netns, &path)?;
        let ifname = &self.env.ifname;
        let mut p = vec![];
        let Some(l) = wire::link_by_name(&ph, ifname).await? else {
            return Ok(vec![format!("{ifname} is missing in the pod")]);
        };
        if !wire::is_up(&l) {
            p.push(format!("{ifname} is down in the pod"));
        }
        let have = wire::addresses(&ph, l.header.index).await?;
        for ip in want {
            if !have.contains(ip) {
                p.push(format!("{ip} is not on {ifname}"));
            }
        }
        if want.iter().any(IpAddr::is_ipv4) {
            let routes = wire::routes(&ph, false).await?;
            if !routes
                .iter()
                .any(|r| r.1 == 0 && r.2 == Some(IpAddr::V4(wire::GATEWAY_V4)))
            {
                p.push("the pod has no default route via 169.254.1.1".into());
            }
        }
        Ok(p)
    }

    /// CNI 1.1 GC: releases this node's addresses on this network whose attachment
    /// (container ID, interface) is not among the runtime's valid attachments. Each is
    /// released by address with its handle and sequence number, so an attachment made after
    /// the list was read keeps its address.
    pub async fn gc(&self) -> CniResult<()> {
        let Some(valid) = &self.conf.valid_attachments else {
            return Ok(());
        };
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let blocks = self
            .store()
            .await?
            .all::<brindle_api::IPAMBlock>()
            .list()
            .await
            .map_err(store_err)?
            .items;
        let valid_cids: HashSet<&str> = valid.iter().map(|v| v.0).collect();
        let mut stale = vec![];
        for b in &blocks {
            for a in brindle_ipam::block::allocations(&b.spec) {
                let get = |k: &str| a.attrs.get(k).map(String::as_str);
                if get(attr::NODE) != Some(self.node.as_str())
                    || get(attr::TYPE) != Some(attr::TYPE_POD)
                {
                    continue;
                }
                let Some(cid) = get(attr::CONTAINER_ID).filter(|c| !c.is_empty()) else {
                    continue;
                };
                let gone = match (get(attr::NETWORK), get(attr::INTERFACE)) {
                    (Some(net), Some(ifname)) => {
                        net == self.conf.name && !valid.contains(&(cid, ifname))
                    }
                    // Recorded before attachments were: known by container alone.
                    _ => !valid_cids.contains(cid),
                };
                if gone {
                    stale.push(a);
                }
            }
        }
        let _lock = HostLock::acquire(&self.conf.ipam_lock_file)?;
        for a in stale {
            let r = ReleaseIp {
                ip: a.ip,
                handle: a.handle.clone(),
                sequence: Some(a.sequence),
                attrs: None,
            };
            let out = self
                .ipam()
                .await?
                .release_ips(&[r])
                .await
                .map_err(ipam_err)?;
            info!(op = "GC", network = %self.conf.name, ip = %a.ip, handle = ?a.handle, outcome = ?out.first(), "done");
        }
        Ok(())
    }

    /// Whether brindle-node has programmed this node's dataplane since the node booted
    /// (`dataplane_ready_file`). A pod wired before that has nothing between it and the
    /// node's own ports (BGP among them), no anti-spoofing and no NetworkPolicy.
    fn dataplane_ready(&self, code: u32) -> CniResult<()> {
        let file = &self.conf.dataplane_ready_file;
        if file.as_os_str().is_empty() || file.exists() {
            return Ok(());
        }
        Err(CniError::new(
            code,
            "brindle-node has not programmed this node's dataplane yet",
            format!(
                "{} is not there: until brindle-node's first sync since boot, no rule guards \
                 the node's ports or stops spoofing, so no pod is wired (is brindle-node running?)",
                file.display()
            ),
        ))
    }

    /// CNI 1.1 STATUS: ready when brindle-node has programmed the node's dataplane, the
    /// datastore answers and an enabled pool exists.
    pub async fn status(&self) -> CniResult<()> {
        self.dataplane_ready(code::NOT_AVAILABLE)?;
        let pools = self
            .store()
            .await?
            .all::<brindle_api::IPPool>()
            .list()
            .await
            .map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    "the datastore does not answer",
                    e.to_string(),
                )
            })?
            .items;
        if !pools.iter().any(|p| !p.spec.disabled) {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                "no enabled IPPool exists",
                "",
            ));
        }
        Ok(())
    }
}

/// A pod's veth pair, made before its addresses are known.
struct Pair {
    host: wire::Handle,
    pod: wire::Handle,
    host_link: wire::LinkMessage,
    pod_link: wire::LinkMessage,
    /// Whether the host side's IPv4 and IPv6 sysctls are set.
    sysctls: (bool, bool),
}

impl Pair {
    /// Deletes the pair this ADD made (by index: a newer one of the same name is not it).
    async fn remove(&self) {
        let _ = wire::delete_index(&self.host, self.host_link.header.index, "the new veth").await;
    }
}

/// The host side's sysctls for each family asked for: it answers ARP (proxy ARP, at once)
/// and neighbour solicitations for the pod's gateway, and forwards.
fn sysctls(veth: &str, v4: bool, v6: bool) -> CniResult<()> {
    if v4 {
        wire::sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp"), "1")?;
        wire::sysctl(&format!("net/ipv4/neigh/{veth}/proxy_delay"), "0")?;
        wire::sysctl(&format!("net/ipv4/conf/{veth}/forwarding"), "1")?;
    }
    if v6 {
        // The pod's IPv6 gateway is this veth's link-local address: usable at once.
        wire::sysctl(&format!("net/ipv6/conf/{veth}/disable_ipv6"), "0")?;
        wire::sysctl(&format!("net/ipv6/conf/{veth}/accept_dad"), "0")?;
        wire::sysctl(&format!("net/ipv6/conf/{veth}/proxy_ndp"), "1")?;
        wire::sysctl(&format!("net/ipv6/conf/{veth}/forwarding"), "1")?;
    }
    Ok(())
}

fn ipam_result(ips: &[IpAddr], interface: Option<usize>) -> AddResult {
    let mut r = AddResult::default();
    for ip in ips {
        let (plen, gw, dst) = match ip {
            IpAddr::V4(_) => (32, wire::GATEWAY_V4.to_string(), "0.0.0.0/0"),
            IpAddr::V6(_) => (128, wire::GATEWAY_V6.to_string(), "::/0"),
        };
        r.ips.push(IpConfig {
            address: format!("{ip}/{plen}"),
            gateway: Some(gw.clone()),
            interface,
        });
        if !r.routes.iter().any(|x| x.dst == dst) {
            r.routes.push(Route {
                dst: dst.into(),
                gw: Some(gw),
                priority: None,
            });
        }
    }
    r
}

/// The host-wide IPAM lock: an exclusive lock on a file, released when dropped.
struct HostLock {
    _file: File,
}

impl HostLock {
    fn acquire(path: &Path) -> CniResult<HostLock> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                CniError::new(
                    code::IO,
                    format!("opening the IPAM lock {}", path.display()),
                    e.to_string(),
                )
            })?;
        f.lock().map_err(|e| {
            CniError::new(
                code::IO,
                format!("taking the IPAM lock {}", path.display()),
                e.to_string(),
            )
        })?;
        Ok(HostLock { _file: f })
    }
}
