//! ADD, DEL, CHECK, GC and STATUS.
//!
//! Concurrency: IPAM on one node is serialized by a host-wide file lock (`ipam_lock_file`),
//! as calico-ipam does, so 100 pods starting at once queue for a few milliseconds each
//! instead of racing on the node's one block and burning compare-and-swap retries. The
//! datastore's compare-and-swap still guards against other nodes and the controller.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use brindle_api::AllowedUse;
use brindle_datastore::{DatastoreArgs, Store, StoreError};
use brindle_ipam::block::attr;
use brindle_ipam::{
    attachment_handle, AssignRequest, Ipam, IpamError, ReleaseIp, PRIMARY_INTERFACE,
};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use tracing::{info, warn};

use crate::config::{Env, NetConf};
use crate::spec::{code, AddResult, CniError, CniResult, Interface, IpConfig, Route};
use crate::wire;

/// Pod annotations that ask for particular pools or addresses (JSON lists of strings).
pub const ANNOTATION_IPV4_POOLS: &str = "brindle.dev/ipv4pools";
pub const ANNOTATION_IPV6_POOLS: &str = "brindle.dev/ipv6pools";
pub const ANNOTATION_IP_ADDRS: &str = "brindle.dev/ipAddrs";
/// On the workload record (etcd mode): which sandbox the record belongs to.
pub const ANNOTATION_CONTAINER_ID: &str = "brindle.dev/containerID";

#[derive(Parser)]
struct DatastoreCli {
    #[command(flatten)]
    ds: DatastoreArgs,
}

pub struct Ctx {
    pub conf: NetConf,
    pub env: Env,
    pub store: Store,
    pub ipam: Ipam,
    pub node: String,
}

fn store_err(e: StoreError) -> CniError {
    let code = if e.is_unavailable() {
        code::TRY_AGAIN_LATER
    } else {
        code::DATASTORE
    };
    CniError::new(code, "datastore error", e.to_string())
}

pub fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::NO_ADDRESSES, e.to_string(), ""),
        IpamError::NoPools { .. }
        | IpamError::UnknownPool(_)
        | IpamError::NotInPool { .. }
        | IpamError::Selector { .. } => CniError::new(code::NO_POOL, e.to_string(), ""),
        IpamError::Store(s) => store_err(s),
        IpamError::NoNode { .. } => CniError::new(
            code::INVALID_CONFIG,
            e.to_string(),
            "is the nodename right?",
        ),
        other => CniError::new(code::DATASTORE, other.to_string(), ""),
    }
}

impl Ctx {
    pub async fn new(conf: NetConf, env: Env) -> CniResult<Ctx> {
        let mut argv = vec!["brindle-cni".to_string()];
        for (flag, v) in [
            ("--datastore", &conf.datastore_type),
            ("--etcd-endpoints", &conf.etcd_endpoints),
            ("--kubeconfig", &conf.kubeconfig),
        ] {
            if let Some(v) = v {
                argv.extend([flag.to_string(), v.clone()]);
            }
        }
        let cli = DatastoreCli::try_parse_from(argv).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "datastore settings", e.to_string())
        })?;
        let store = cli.ds.connect().await.map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                "cannot reach the datastore",
                e.to_string(),
            )
        })?;
        let node = conf.node_name()?;
        Ok(Ctx {
            ipam: Ipam::new(store.clone()),
            store,
            node,
            conf,
            env,
        })
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

    async fn pod(&self) -> CniResult<Option<Pod>> {
        let Some((ns, name)) = self.env.pod() else {
            return Ok(None);
        };
        self.store
            .namespaced::<Pod>(&ns)
            .get(&name)
            .await
            .map_err(store_err)
    }

    fn kube(&self) -> bool {
        self.store.backend_name() == "kubernetes"
    }

    /// Addresses for this container: the ones it already has (a repeated ADD), the ones
    /// its pod asks for, or new ones from the pools.
    async fn allocate(&self, pod: Option<&Pod>, ipam_only: bool) -> CniResult<Vec<IpAddr>> {
        let _lock = HostLock::acquire(&self.conf.ipam_lock_file)?;
        let handle = self.handle();
        let attrs = self.attrs(ipam_only);
        // A repeated ADD of this attachment keeps its addresses; the owner record is
        // refreshed first (netns, timestamp) so the node agent's leak sweep, which releases
        // only an allocation whose record it has seen unchanged, cannot free them now.
        let existing = self
            .ipam
            .refresh_handle(&handle, &attrs)
            .await
            .map_err(ipam_err)?;
        if !existing.is_empty() {
            info!(container = %self.env.container_id, network = %self.conf.name, ifname = %self.env.ifname, ips = ?existing, "ADD repeated: keeping the addresses");
            return Ok(existing);
        }
        let ann = pod
            .and_then(|p| p.metadata.annotations.clone())
            .unwrap_or_default();
        let list = |key: &str| -> CniResult<Option<Vec<String>>> {
            ann.get(key)
                .map(|v| {
                    serde_json::from_str::<Vec<String>>(v).map_err(|e| {
                        CniError::new(
                            code::INVALID_CONFIG,
                            format!("pod annotation {key}: {v:?} is not a JSON list of strings"),
                            e.to_string(),
                        )
                    })
                })
                .transpose()
        };
        if let Some(addrs) = list(ANNOTATION_IP_ADDRS)? {
            let mut ips = vec![];
            for a in addrs {
                let ip: IpAddr = a.parse().map_err(|_| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("pod annotation {ANNOTATION_IP_ADDRS}: {a:?} is not an address"),
                        "",
                    )
                })?;
                if let Err(e) = self.ipam.assign_ip(ip, &handle, &self.node, &attrs).await {
                    let _ = self.ipam.release_handle(&handle).await;
                    return Err(ipam_err(e));
                }
                ips.push(ip);
            }
            return Ok(ips);
        }
        let mut pools =
            list(ANNOTATION_IPV4_POOLS)?.unwrap_or_else(|| self.conf.ipam.ipv4_pools.clone());
        pools.extend(
            list(ANNOTATION_IPV6_POOLS)?.unwrap_or_else(|| self.conf.ipam.ipv6_pools.clone()),
        );
        let req = AssignRequest {
            handle,
            node: self.node.clone(),
            ipv4: usize::from(self.conf.ipam.assign_ipv4),
            ipv6: usize::from(self.conf.ipam.assign_ipv6),
            attrs,
            use_: AllowedUse::Workload,
            pools,
        };
        self.ipam.assign(&req).await.map_err(ipam_err)
    }

    pub async fn add(&self, ipam_only: bool) -> CniResult<AddResult> {
        self.env.require(!ipam_only)?;
        let pod = self.pod().await?;
        let ips = self.allocate(pod.as_ref(), ipam_only).await?;
        if ipam_only {
            return Ok(ipam_result(&ips, None));
        }
        match self.wire(&ips).await {
            Ok(r) => {
                if let Err(e) = self.write_workload(pod, &ips).await {
                    self.undo_add().await;
                    return Err(e);
                }
                info!(op = "ADD", network = %self.conf.name, container = %self.env.container_id, ifname = %self.env.ifname, pod = ?self.env.pod(), ips = ?ips, veth = %self.host_veth(), "done");
                Ok(r)
            }
            Err(e) => {
                self.undo_add().await;
                Err(e)
            }
        }
    }

    /// Takes back what a failed ADD made: the addresses and the veth pair.
    async fn undo_add(&self) {
        if let Err(e) = self.ipam.release_handle(&self.handle()).await {
            warn!(container = %self.env.container_id, error = %e, "releasing after a failed ADD");
        }
        if let Ok(h) = wire::host_handle() {
            let _ = wire::delete_link(&h, &self.host_veth()).await;
        }
    }

    async fn wire(&self, ips: &[IpAddr]) -> CniResult<AddResult> {
        let netns_path = self.env.netns.clone().unwrap_or_default();
        let netns = File::open(&netns_path).map_err(|e| {
            CniError::new(
                code::IO,
                format!("cannot open network namespace {netns_path}"),
                e.to_string(),
            )
        })?;
        let h = wire::host_handle()?;
        let veth = self.host_veth();
        let ifname = self.env.ifname.clone();
        // A leftover from an earlier sandbox of the same pod, or a repeated ADD: start clean.
        // (Deleting the host side takes the pod side with it.)
        wire::delete_link(&h, &veth).await?;
        if let Err(e) = wire::create_veth(&h, &veth, &ifname, self.conf.mtu, &netns).await {
            // The pod namespace may still hold an interface of that name (not one of ours
            // with a host side): remove it and try once more.
            let removed = wire::in_netns(&netns_path, |ph| {
                let ifname = ifname.clone();
                async move { wire::delete_link(&ph, &ifname).await }
            })?;
            if !removed {
                return Err(e);
            }
            wire::create_veth(&h, &veth, &ifname, self.conf.mtu, &netns).await?;
        }
        let host = wire::link_by_name(&h, &veth).await?.ok_or_else(|| {
            CniError::new(code::NETLINK, format!("{veth} vanished after creation"), "")
        })?;
        if ips.iter().any(IpAddr::is_ipv4) {
            wire::sysctl(&format!("net/ipv4/conf/{veth}/proxy_arp"), "1")?;
            wire::sysctl(&format!("net/ipv4/neigh/{veth}/proxy_delay"), "0")?;
            wire::sysctl(&format!("net/ipv4/conf/{veth}/forwarding"), "1")?;
        }
        if ips.iter().any(IpAddr::is_ipv6) {
            // The pod's IPv6 gateway is this veth's link-local address: usable at once.
            wire::sysctl(&format!("net/ipv6/conf/{veth}/disable_ipv6"), "0")?;
            wire::sysctl(&format!("net/ipv6/conf/{veth}/accept_dad"), "0")?;
            wire::sysctl(&format!("net/ipv6/conf/{veth}/proxy_ndp"), "1")?;
            wire::sysctl(&format!("net/ipv6/conf/{veth}/forwarding"), "1")?;
        }
        wire::set_up(&h, &host).await?;
        let pod_ips = ips.to_vec();
        let primary = self.primary();
        let pod_mac = wire::in_netns(&netns_path, |ph| {
            let ifname = ifname.clone();
            async move { wire::configure_pod_side(&ph, &ifname, &pod_ips, primary).await }
        })?;
        for ip in ips {
            wire::add_route(
                &h,
                wire::host_route(*ip, host.header.index),
                &format!("adding the host route to {ip}"),
            )
            .await?;
        }
        let interfaces = vec![
            Interface {
                name: veth,
                mac: wire::mac_of(&host),
                sandbox: None,
            },
            Interface {
                name: ifname,
                mac: pod_mac,
                sandbox: Some(netns_path),
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

    /// etcd mode: the record that tells the controller this workload is alive.
    async fn write_workload(&self, pod: Option<Pod>, ips: &[IpAddr]) -> CniResult<()> {
        if self.kube() || !self.primary() {
            return Ok(()); // the API server's Pod is the record; it shows the primary's IPs
        }
        let Some((ns, name)) = self.env.pod() else {
            return Ok(());
        };
        let api = self.store.namespaced::<Pod>(&ns);
        let mut p = pod.unwrap_or_else(|| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.clone());
            p.metadata.namespace = Some(ns.clone());
            p
        });
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                ANNOTATION_CONTAINER_ID.into(),
                self.env.container_id.clone(),
            );
        p.spec.get_or_insert_with(Default::default).node_name = Some(self.node.clone());
        let status = p.status.get_or_insert_with(Default::default);
        status.pod_ip = ips.first().map(ToString::to_string);
        status.pod_ips = Some(
            ips.iter()
                .map(|ip| k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() })
                .collect(),
        );
        let r = if p.metadata.resource_version.is_some() {
            api.update(&p).await
        } else {
            api.create(&p).await
        };
        r.map(|_| ()).map_err(store_err)
    }

    pub async fn del(&self, ipam_only: bool) -> CniResult<()> {
        self.env.require(false)?;
        let freed = {
            let _lock = HostLock::acquire(&self.conf.ipam_lock_file)?;
            self.ipam
                .release_handle(&self.handle())
                .await
                .map_err(ipam_err)?
        };
        if !ipam_only {
            let h = wire::host_handle()?;
            let deleted = wire::delete_link(&h, &self.host_veth()).await?;
            // The pod side goes with the host side; without one, look in the pod (a
            // namespace that is gone is fine).
            let netns = self
                .env
                .netns
                .as_deref()
                .filter(|p| !deleted && Path::new(p).exists());
            if let Some(ns) = netns {
                let ifname = self.env.ifname.clone();
                let _ = wire::in_netns(
                    ns,
                    |ph| async move { wire::delete_link(&ph, &ifname).await },
                );
            }
            self.delete_workload().await?;
        }
        info!(op = "DEL", network = %self.conf.name, container = %self.env.container_id, ifname = %self.env.ifname, pod = ?self.env.pod(), released = ?freed, "done");
        Ok(())
    }

    async fn delete_workload(&self) -> CniResult<()> {
        if self.kube() || !self.primary() {
            return Ok(());
        }
        let Some(p) = self.pod().await? else {
            return Ok(());
        };
        let ours = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_CONTAINER_ID))
            .is_some_and(|c| *c == self.env.container_id);
        if !ours {
            return Ok(()); // a newer sandbox of the pod owns the record
        }
        let (ns, name) = self.env.pod().unwrap_or_default();
        match self
            .store
            .namespaced::<Pod>(&ns)
            .delete(&name, p.metadata.resource_version.as_deref())
            .await
        {
            Ok(()) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
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
            .ipam
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
        let netns = self.env.netns.clone().unwrap_or_default();
        let ifname = self.env.ifname.clone();
        let want = ips.to_vec();
        let inside = wire::in_netns(&netns, |ph| async move {
            let mut p = vec![];
            let Some(l) = wire::link_by_name(&ph, &ifname).await? else {
                return Ok(vec![format!("{ifname} is missing in the pod")]);
            };
            if !wire::is_up(&l) {
                p.push(format!("{ifname} is down in the pod"));
            }
            let have = wire::addresses(&ph, l.header.index).await?;
            for ip in &want {
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
        });
        match inside {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(format!("cannot look inside the pod: {e}")),
        }
        Ok(problems)
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
            .store
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
            let out = self.ipam.release_ips(&[r]).await.map_err(ipam_err)?;
            info!(op = "GC", network = %self.conf.name, ip = %a.ip, handle = ?a.handle, outcome = ?out.first(), "done");
        }
        Ok(())
    }

    /// CNI 1.1 STATUS: ready when the datastore answers and an enabled pool exists.
    pub async fn status(&self) -> CniResult<()> {
        let pools = self
            .store
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
