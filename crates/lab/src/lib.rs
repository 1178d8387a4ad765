//! `brindle-lab`: a Brindle cluster of network namespaces on one machine, for the demo and the
//! end-to-end tests. Everything it makes is owned by a [`Lab`] and removed when it is dropped
//! (the testsupport guards: namespaces deleted, processes killed by PID), also when a test
//! panics.
//!
//! ```text
//!   fabric ns: bridge br0 (rack 0) … brN (rack N) [+ brspine when there are ToR routers]
//!      │ veth eth0 198.18.<rack>.<10+i>/24, default via 198.18.<rack>.1
//!   node ns (one per node): brindle-node, the pods' veths, proto-bird routes
//!      │ loopback port forward ─▶ etcd (or the test API server) on the host's loopback
//!   tor ns (one per rack, --tor): BIRD, AS 65000+rack, route reflector for its rack (iBGP),
//!      eBGP to the other racks' routers over brspine (198.19.255.0/24)
//!   pod ns: eth0 with a /32 from brindle-cni, called as a runtime calls it; a TCP echo server
//! ```
//!
//! Only the namespaces it creates and the host's loopback are touched. Addresses: 198.18.0.0/15
//! for the underlay, 10.244.0.0/16 for pods, never routed from the host namespace. With
//! `--ip-family dual` every node, router and pod also has an IPv6 address: the underlay in
//! 2001:db8::/32 (documentation), the pods in fd00:10:244::/64 (unique-local).

pub mod graph;
mod members;
mod net;
pub mod netpol;
mod pods;
pub mod rehearse;
pub mod routewatch;
mod services;
pub mod status;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use brindle_api::{
    BGPConfiguration, BGPConfigurationSpec, BGPPeer, BGPPeerSpec, IPPool, IPPoolSpec, IpipMode,
    NodeBgp,
};
use brindle_datastore::Store;
use brindle_testsupport::daemons::Bird;
use brindle_testsupport::{ApiServer, ChildGuard, EtcdServer, Netns, PortForward};

pub use pods::{Pod, Stream};
pub use services::{Assigned, LabService};

/// The lab's address families.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Ipv4,
    /// IPv4 and IPv6: nodes peer over both, pods get an address of each.
    Dual,
    /// IPv6 only: no IPv4 underlay (nodes run with `--ip none`), an IPv6 pool only, pods
    /// with an IPv6 address only.
    Ipv6,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Encap {
    None,
    Ipip,
    Crosssubnet,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Datastore {
    Etcd,
    Kubernetes,
}

/// The shape of a lab cluster.
#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct LabSpec {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Underlay subnets (one bridge each); nodes are spread over them in order.
    #[arg(long, default_value_t = 1)]
    pub racks: usize,
    /// A BIRD router per rack; the mesh is then off and each rack is its own AS.
    #[arg(long)]
    pub tor: bool,
    #[arg(long, value_enum, default_value = "none")]
    pub encap: Encap,
    /// The first K nodes are route reflectors for the others (mesh off).
    #[arg(long, default_value_t = 0)]
    pub reflectors: usize,
    #[arg(long, value_enum, default_value = "etcd")]
    pub datastore: Datastore,
    /// The controller's grace period before an orphaned address is released.
    #[arg(long, default_value = "5s")]
    pub gc_grace: String,
    /// The agents' grace period before an address whose container is gone is released.
    #[arg(long, default_value_t = 30)]
    #[serde(default = "default_workload_gc_grace")]
    pub workload_gc_grace_seconds: u64,
    /// Zones (`topology.kubernetes.io/zone`): node i is in `zone-<i mod zones>`.
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub zones: usize,
    /// The agents' `--iptables-backend` (auto, legacy, nft).
    #[arg(long, default_value = "auto")]
    #[serde(default = "auto")]
    pub iptables_backend: String,
    /// The agents' `--dataplane` (iptables, nftables, auto).
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "nftables", "auto"])]
    #[serde(default = "iptables")]
    pub dataplane: String,
    /// etcd serves https only and requires client certificates (the lab makes a CA and a
    /// client certificate that every part of it uses).
    #[arg(long)]
    #[serde(default)]
    pub etcd_tls: bool,
    /// ipv4; dual: nodes, routers, pools and pods get IPv6 addresses too; ipv6: only IPv6.
    #[arg(long, value_enum, default_value = "ipv4")]
    #[serde(default)]
    pub ip_family: IpFamily,
}

impl LabSpec {
    /// Nodes, routers, pools and pods have IPv4 (every family but ipv6).
    pub fn v4(&self) -> bool {
        self.ip_family != IpFamily::Ipv6
    }

    /// Nodes, routers, pools and pods have IPv6 (dual and ipv6).
    pub fn v6(&self) -> bool {
        self.ip_family != IpFamily::Ipv4
    }
}

fn one() -> usize {
    1
}

fn auto() -> String {
    "auto".into()
}

fn iptables() -> String {
    "iptables".into()
}

fn default_workload_gc_grace() -> u64 {
    30
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            nodes: 3,
            racks: 1,
            tor: false,
            encap: Encap::None,
            reflectors: 0,
            datastore: Datastore::Etcd,
            gc_grace: "5s".into(),
            workload_gc_grace_seconds: default_workload_gc_grace(),
            zones: 1,
            iptables_backend: auto(),
            dataplane: iptables(),
            etcd_tls: false,
            ip_family: IpFamily::Ipv4,
        }
    }
}

pub const POOL: &str = "10.244.0.0/16";
/// The IPv6 pool of a dual-stack lab (blocks of /122, Calico's default).
pub const POOL6: &str = "fd00:10:244::/64";

/// A binary of the workspace: `$BRINDLE_BIN_DIR/<name>`, else next to the running executable
/// (or one level up from a test's `deps/`).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("BRINDLE_BIN_DIR") {
        return Path::new(&d).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for d in [
        dir.clone(),
        dir.parent().map(Path::to_path_buf).unwrap_or_default(),
    ] {
        let p = d.join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} not found beside {} (run `cargo build --workspace --bins`, or set BRINDLE_BIN_DIR)",
        exe.display()
    )
}

/// Builds the release binaries a cluster runs and points [`binary`] at them (benchmarks).
pub fn use_release_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "brindle-node",
            "-p",
            "brindle-cni",
            "-p",
            "brindle-controller",
        ])
        .status()
        .expect("cargo build");
    assert!(st.success(), "building the release binaries failed");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release");
    std::env::set_var("BRINDLE_BIN_DIR", dir.canonicalize().unwrap_or(dir));
}

pub struct LabNode {
    pub name: String,
    pub rack: usize,
    /// Its place in the rack: addresses `198.18.<rack>.<10+slot>`, `…::<10+slot>`.
    pub slot: usize,
    /// The node's IPv4 underlay address (none in an IPv6-only lab).
    pub ip: Option<Ipv4Addr>,
    /// The node's IPv6 underlay address (dual-stack and IPv6-only labs).
    pub ip6: Option<Ipv6Addr>,
    pub asn: u32,
    pub ns: Netns,
    /// The datastore as this node sees it (loopback inside its namespace).
    pub forward: PortForward,
    pub dir: PathBuf,
    agent: Option<ChildGuard>,
}

impl LabNode {
    /// Its underlay addresses with their prefixes, as `ip addr` shows them.
    pub fn addrs(&self) -> Vec<String> {
        family_addrs(self.ip, self.ip6)
            .iter()
            .map(|a| format!("{a}/{}", if a.is_ipv4() { 24 } else { 64 }))
            .collect()
    }

    /// The node's IPv4 address (a test of an IPv4 or dual-stack lab).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip
            .unwrap_or_else(|| panic!("{} has no IPv4 address (an IPv6-only lab)", self.name))
    }

    /// Its address of the lab's first family: IPv4, or IPv6 in an IPv6-only lab.
    pub fn addr(&self) -> IpAddr {
        first_family(self.ip, self.ip6)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("bgpd.sock")
    }

    /// Where this node's agent serves IPAM to the CNI plugin.
    pub fn ipam_socket(&self) -> PathBuf {
        self.dir.join("ipam.sock")
    }
    /// Written by this node's agent once it has programmed the dataplane (kept while the
    /// lab lives: the node's "boot").
    pub fn dataplane_ready_file(&self) -> PathBuf {
        self.dir.join("dataplane-ready")
    }
    /// The CNI cache (libcni's `/var/lib/cni`) of this node's container runtime, if any.
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.dir.join("cni-cache")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.0.id())
    }
}

pub struct Tor {
    pub rack: usize,
    pub ns: Netns,
    pub bird: Bird,
}

pub struct Lab {
    pub spec: LabSpec,
    rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub etcd: Option<EtcdServer>,
    api: Option<ApiServer>,
    pub store: Store,
    pub fabric: Netns,
    pub nodes: Vec<LabNode>,
    pub tors: Vec<Tor>,
    pub pods: BTreeMap<String, Pod>,
    /// Services the lab made (`service_add`), by name.
    pub services: BTreeMap<String, Assigned>,
    /// How long the last pod's CNI ADD took (the plugin's process, start to result).
    pub last_add: Option<Duration>,
    /// [`Lab::probe_matrix`] and [`Lab::probe`] go to the pods' IPv6 addresses (a
    /// dual-stack lab's policy tests, over IPv6).
    pub probe_ipv6: bool,
    controller: Option<ChildGuard>,
    /// The datastore's address, forwarded into each node's namespace.
    target: std::net::SocketAddr,
}

/// The addresses of a node or pod, IPv4 first.
pub fn family_addrs(ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> Vec<IpAddr> {
    (ip.map(IpAddr::V4).into_iter())
        .chain(ip6.map(IpAddr::V6))
        .collect()
}

/// The address of the lab's first family (Kubernetes' primary IP): IPv4, or IPv6 in an
/// IPv6-only lab.
pub fn first_family(ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> IpAddr {
    family_addrs(ip, ip6)
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Above this many nodes, nodes' neighbours are pinned ([`Lab::pin_neighbours`]).
const PIN_NEIGHBOURS_ABOVE: usize = 20;

/// The AS of a rack's nodes and router when there are routers; 64512 otherwise.
pub fn rack_as(spec: &LabSpec, rack: usize) -> u32 {
    if spec.tor {
        65000 + rack as u32
    } else {
        64512
    }
}

fn rack_of(spec: &LabSpec, i: usize) -> usize {
    let per = spec.nodes.div_ceil(spec.racks.max(1));
    i / per.max(1)
}

impl Lab {
    /// Builds the cluster and starts every agent; `progress` gets a line per step.
    pub fn up(spec: LabSpec, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Lab> {
        let mut lab = Lab::build(spec, progress)?;
        lab.start_agents(progress)?;
        Ok(lab)
    }

    /// Starts every agent and the controller (after [`Lab::build`]).
    pub fn start_agents(&mut self, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            progress(&format!("starting brindle-node on {}", self.nodes[i].name));
            self.start_agent(i);
        }
        progress("starting brindle-controller");
        self.start_controller()
    }

    /// Builds namespaces, routers, datastore and node records; no agent runs yet.
    pub fn build(spec: LabSpec, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Lab> {
        anyhow::ensure!(
            spec.nodes >= 1 && spec.nodes <= 200,
            "--nodes must be 1..=200"
        );
        anyhow::ensure!(
            spec.racks >= 1 && spec.racks <= 50,
            "--racks must be 1..=50"
        );
        anyhow::ensure!(
            spec.reflectors < spec.nodes || spec.reflectors == 0,
            "--reflectors must be fewer than --nodes"
        );
        anyhow::ensure!(
            !(spec.tor && spec.reflectors > 0),
            "--tor and --reflectors do not mix in the lab"
        );
        anyhow::ensure!(
            !spec.etcd_tls || spec.datastore == Datastore::Etcd,
            "--etcd-tls is for --datastore etcd"
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let dir = tempfile::Builder::new().prefix("brindle-lab-").tempdir()?;
        let (etcd, api, store, target) = match spec.datastore {
            Datastore::Etcd => {
                let etcd = if spec.etcd_tls {
                    progress("starting etcd on loopback (https, client certificates required)");
                    EtcdServer::start_tls()
                } else {
                    progress("starting etcd on loopback");
                    EtcdServer::start()
                };
                let ep = etcd.endpoint();
                let mut args = brindle_datastore::DatastoreArgs::etcd(vec![ep.clone()]);
                if let Some(t) = etcd.tls() {
                    args.etcd_ca_cert_file = Some(t.ca.clone());
                    args.etcd_cert_file = Some(t.client_cert.clone());
                    args.etcd_key_file = Some(t.client_key.clone());
                }
                let store = rt.block_on(args.connect())?;
                let target = ep
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .parse()?;
                (Some(etcd), None, store, target)
            }
            Datastore::Kubernetes => {
                progress("starting the test Kubernetes API server on loopback (no real kube-apiserver here)");
                let api = rt.block_on(ApiServer::start())?;
                let url = api.url();
                // For tools on the host (brindle-lab status prints the flags).
                std::fs::write(dir.path().join("kubeconfig"), kubeconfig(&url, ""))?;
                let _rt = rt.enter(); // the client's buffer task needs a runtime
                let cfg = kube::Config::new(url.parse()?);
                let client = kube::Client::try_from(cfg)?;
                let store = Store::new(
                    brindle_datastore::backend::kubernetes::KubernetesBackend::new(
                        client,
                        url.clone(),
                    ),
                );
                let target = url.trim_start_matches("http://").parse()?;
                (None, Some(api), store, target)
            }
        };
        progress("making the fabric");
        let fabric = Netns::new("brl-fab");
        net::fabric(&fabric, &spec);
        let mut lab = Lab {
            spec: spec.clone(),
            rt,
            dir,
            etcd,
            api,
            store,
            fabric,
            nodes: vec![],
            tors: vec![],
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            last_add: None,
            probe_ipv6: false,
            controller: None,
            target,
        };
        lab.seed()?;
        if spec.tor {
            for r in 0..spec.racks {
                progress(&format!(
                    "starting BIRD as the router of rack {r} (AS {})",
                    rack_as(&spec, r)
                ));
                let t = net::tor(&lab.fabric, &spec, r);
                lab.tors.push(t);
            }
        }
        for i in 0..spec.nodes {
            let rack = rack_of(&spec, i);
            let name = format!("node-{i}");
            let zone = format!("zone-{}", i % spec.zones.max(1));
            let k = (0..i).filter(|j| rack_of(&spec, *j) == rack).count();
            let node = lab.new_node(&name, rack, k, i)?;
            progress(&format!(
                "node {name}: namespace, uplink {} on rack {rack}",
                node.addrs().join(" and ")
            ));
            lab.register(&node, &zone, i < spec.reflectors)?;
            lab.nodes.push(node);
        }
        if lab.nodes.len() > PIN_NEIGHBOURS_ABOVE {
            progress("pinning each node's neighbours (the host's one ARP table is too small)");
            lab.pin_neighbours()?;
        }
        Ok(lab)
    }

    /// Every node learns the MAC addresses of the other nodes of its rack up front, as
    /// permanent neighbour entries. The host's ARP table and its ND table are one each,
    /// shared by every namespace (1,024 entries by default, `gc_thresh3`): 50 nodes that
    /// each learn 49 others overflow it, and the kernel then drops what needs a new entry
    /// (seen: a 50-node mesh whose sessions never all came up, with "neighbor table
    /// overflow" in the kernel's log). Permanent entries do not count against the limit. A
    /// real cluster's nodes each have a kernel, and a table, of their own. Run again when a
    /// node joins (`neigh replace`: a reused address gets the newcomer's MAC address).
    fn pin_neighbours(&self) -> anyhow::Result<()> {
        let mut macs = vec![];
        for n in &self.nodes {
            let link = n.ns.ip_json(&["link", "show", "dev", "eth0"]);
            let mac = link[0]["address"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{}: eth0 has no MAC address", n.name))?;
            macs.push(mac.to_string());
        }
        for n in &self.nodes {
            let mut batch = String::new();
            for (o, mac) in self.nodes.iter().zip(&macs) {
                if o.name == n.name || o.rack != n.rack {
                    continue;
                }
                if let Some(ip) = o.ip {
                    batch += &format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n");
                }
                if let Some(ip) = o.ip6 {
                    batch +=
                        &format!("-6 neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n");
                }
            }
            let mut child =
                n.ns.command(&["ip", "-batch", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                std::io::Write::write_all(&mut stdin, batch.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            anyhow::ensure!(
                out.status.success(),
                "{}: pinning neighbours: {}",
                n.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A node's namespace, its uplink on `rack` (the fabric's port `nd<port>`) with the
    /// addresses of `slot`, the datastore forwarded in, and its directory. Not registered,
    /// no agent yet.
    fn new_node(
        &self,
        name: &str,
        rack: usize,
        slot: usize,
        port: usize,
    ) -> anyhow::Result<LabNode> {
        let ip = self.spec.v4().then(|| net::node_ip(rack, slot));
        let ip6 = self.spec.v6().then(|| net::node_ip6(rack, slot));
        let ns = Netns::new("brl-node");
        net::node_uplink(&self.fabric, &ns, rack, ip, ip6, port);
        let forward = PortForward::new(&ns, self.target);
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(LabNode {
            name: name.to_string(),
            rack,
            slot,
            ip,
            ip6,
            asn: rack_as(&self.spec, rack),
            ns,
            forward,
            dir,
            agent: None,
        })
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The default pool, the BGP configuration, and BGPPeers for routers or reflectors.
    fn seed(&self) -> anyhow::Result<()> {
        let s = &self.spec;
        let mut pool = IPPoolSpec::new(POOL);
        pool.block_size = Some(26);
        pool.ipip_mode = match s.encap {
            Encap::None => IpipMode::Never,
            Encap::Ipip => IpipMode::Always,
            Encap::Crosssubnet => IpipMode::CrossSubnet,
        };
        let cfg = BGPConfigurationSpec {
            node_to_node_mesh_enabled: !s.tor && s.reflectors == 0,
            ..Default::default()
        };
        let mut peers = vec![];
        if s.tor {
            for r in 0..s.racks {
                // A BGPPeer per family the lab has: the router's IPv4 and IPv6 addresses.
                let v4 = s.v4().then(|| net::tor_ip(r));
                let v6 = s.v6().then(|| net::tor_ip6(r));
                for addr in family_addrs(v4, v6) {
                    let suffix = if addr.is_ipv6() { "-ipv6" } else { "" };
                    peers.push((
                        format!("rack-{r}-router{suffix}"),
                        BGPPeerSpec {
                            node_selector: Some(format!("rack == 'r{r}'")),
                            peer_ip: Some(addr.to_string()),
                            as_number: Some(rack_as(s, r)),
                            ..Default::default()
                        },
                    ));
                }
            }
        }
        let pool4 = s.v4().then_some(pool);
        let pool6 = s.v6().then(|| {
            let mut p = IPPoolSpec::new(POOL6);
            p.block_size = Some(122);
            p
        });
        if s.reflectors > 0 {
            peers.push((
                "peer-with-route-reflectors".into(),
                BGPPeerSpec {
                    node_selector: Some("all()".into()),
                    peer_selector: Some("route-reflector == 'true'".into()),
                    ..Default::default()
                },
            ));
        }
        self.block_on(async {
            if let Some(p4) = pool4 {
                self.store
                    .all::<IPPool>()
                    .create(&IPPool::new("default", p4))
                    .await?;
            }
            if let Some(p6) = pool6 {
                self.store
                    .all::<IPPool>()
                    .create(&IPPool::new("default-ipv6", p6))
                    .await?;
            }
            self.store
                .all::<BGPConfiguration>()
                .create(&BGPConfiguration::new("default", cfg))
                .await?;
            for (n, p) in peers {
                self.store
                    .all::<BGPPeer>()
                    .create(&BGPPeer::new(&n, p))
                    .await?;
            }
            anyhow::Ok(())
        })
    }

    /// The node's record as a kubelet (Kubernetes) or an installer (etcd) would make it:
    /// labels, and a route reflector's cluster ID. The agent fills in its address.
    pub(crate) fn register(&self, n: &LabNode, zone: &str, reflector: bool) -> anyhow::Result<()> {
        let mut labels = BTreeMap::from([
            ("rack".to_string(), format!("r{}", n.rack)),
            ("kubernetes.io/hostname".to_string(), n.name.clone()),
            ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
        ]);
        if reflector {
            labels.insert("route-reflector".into(), "true".into());
        }
        let bgp = NodeBgp {
            route_reflector_cluster_id: reflector.then(|| "224.0.0.1".to_string()),
            ..Default::default()
        };
        self.block_on(async {
            match self.spec.datastore {
                Datastore::Etcd => {
                    let mut rec = brindle_ipam::nodes::brindle_node(&n.name, &[]);
                    rec.metadata.labels = Some(labels);
                    rec.spec.bgp = Some(bgp);
                    self.store
                        .all::<brindle_api::BrindleNode>()
                        .create(&rec)
                        .await?;
                }
                Datastore::Kubernetes => {
                    let mut k = k8s_openapi::api::core::v1::Node::default();
                    k.metadata.name = Some(n.name.clone());
                    k.metadata.labels = Some(labels);
                    k.metadata.annotations = Some(bgp.to_annotations());
                    self.store
                        .all::<k8s_openapi::api::core::v1::Node>()
                        .create(&k)
                        .await?;
                }
            }
            anyhow::Ok(())
        })
    }

    /// `https` when etcd wants TLS, else `http`.
    pub fn etcd_scheme(&self) -> &'static str {
        if self.etcd.as_ref().and_then(EtcdServer::tls).is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS flags of every part of the lab (empty without `--etcd-tls`).
    pub fn etcd_tls_flags(&self) -> Vec<String> {
        let Some(t) = self.etcd.as_ref().and_then(EtcdServer::tls) else {
            return vec![];
        };
        vec![
            "--etcd-ca-cert-file".into(),
            t.ca.display().to_string(),
            "--etcd-cert-file".into(),
            t.client_cert.display().to_string(),
            "--etcd-key-file".into(),
            t.client_key.display().to_string(),
        ]
    }

    fn datastore_args(&self, forward: &PortForward, dir: &Path) -> Vec<String> {
        match self.spec.datastore {
            Datastore::Etcd => {
                let mut a = vec![
                    "--datastore".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    format!("{}://{}", self.etcd_scheme(), forward.addr),
                ];
                a.extend(self.etcd_tls_flags());
                a
            }
            Datastore::Kubernetes => {
                let kc = dir.join("kubeconfig");
                let _ = std::fs::write(
                    &kc,
                    kubeconfig(&format!("http://{}", forward.addr), TOKEN_NODE),
                );
                vec![
                    "--datastore".into(),
                    "kubernetes".into(),
                    "--kubeconfig".into(),
                    kc.display().to_string(),
                ]
            }
        }
    }

    /// Starts (or starts again) node i's agent.
    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// [`Lab::start_agent`] with more flags (a test's `--test-fault`).
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let n = &self.nodes[i];
        let mut args: Vec<String> = vec![
            binary("brindle-node").display().to_string(),
            "--nodename".into(),
            n.name.clone(),
            "--ip".into(),
            if n.ip.is_some() { "autodetect" } else { "none" }.into(),
            "--ip-autodetection-method".into(),
            "interface=eth0".into(),
            "--ip6".into(),
            if n.ip6.is_some() {
                "autodetect"
            } else {
                "none"
            }
            .into(),
            "--ip6-autodetection-method".into(),
            "interface=eth0".into(),
            "--as".into(),
            n.asn.to_string(),
            "--control-socket".into(),
            n.control_socket().display().to_string(),
            "--ipam-socket".into(),
            n.ipam_socket().display().to_string(),
            "--nodename-file".into(),
            n.dir.join("nodename").display().to_string(),
            "--dataplane-ready-file".into(),
            n.dataplane_ready_file().display().to_string(),
            // Every address, as the DaemonSet's: a Prometheus in the fabric scrapes it.
            "--metrics-listen".into(),
            "[::]:9091".into(),
            "--log".into(),
            // BRINDLE_LAB_LOG: another filter, to look closer at a run (`debug`).
            std::env::var("BRINDLE_LAB_LOG").unwrap_or_else(|_| "info,brindle_bgp=info".into()),
            "--workload-gc-grace-seconds".into(),
            self.spec.workload_gc_grace_seconds.to_string(),
            "--cni-cache-dir".into(),
            n.cni_cache_dir().display().to_string(),
            "--iptables-backend".into(),
            self.spec.iptables_backend.clone(),
            "--dataplane".into(),
            self.spec.dataplane.clone(),
            // Short, so a test sees drift repaired quickly (the default is 30 s).
            "--iptables-refresh-interval".into(),
            "3s".into(),
            // And a flushed route table is repaired as quickly.
            "--route-refresh-interval".into(),
            "2s".into(),
            // Denied packets are logged, so an operator sees why a probe failed.
            "--log-denied".into(),
        ];
        args.extend(self.datastore_args(&n.forward, &n.dir));
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log())
            .expect("agent log");
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let child =
            n.ns.command(&argv)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start brindle-node");
        self.nodes[i].agent = Some(ChildGuard(child));
    }

    /// How node i's agent exited, if it has (None while it runs or was never started).
    pub fn agent_exit(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].agent.as_mut()?.0.try_wait().ok().flatten()
    }

    /// SIGKILL to node i's agent (a crash), waiting for it to be gone.
    pub fn kill_agent(&mut self, i: usize) {
        drop(self.nodes[i].agent.take()); // ChildGuard: kill, then wait
    }

    /// SIGTERM to node i's agent (a graceful stop), waiting for it to exit.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut g) = self.nodes[i].agent.take() {
            let pid = nix::unistd::Pid::from_raw(g.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = g.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // ChildGuard's drop kills what did not stop.
        }
    }

    fn start_controller(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path().join("controller");
        std::fs::create_dir_all(&d)?;
        let mut args = vec![
            "--grace".to_string(),
            self.spec.gc_grace.clone(),
            "--resync".into(),
            "10s".into(),
            // Not on the host's addresses (the lab lives in namespaces and on loopback).
            "--metrics-listen".into(),
            "none".into(),
        ];
        match self.spec.datastore {
            Datastore::Etcd => {
                let ep = self
                    .etcd
                    .as_ref()
                    .map(EtcdServer::endpoint)
                    .unwrap_or_default();
                args.extend([
                    "--datastore".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    ep,
                ]);
                args.extend(self.etcd_tls_flags());
            }
            Datastore::Kubernetes => {
                let kc = d.join("kubeconfig");
                let url = self.api.as_ref().map(ApiServer::url).unwrap_or_default();
                std::fs::write(&kc, kubeconfig(&url, TOKEN_CONTROLLER))?;
                args.extend([
                    "--datastore".into(),
                    "kubernetes".into(),
                    "--kubeconfig".into(),
                    kc.display().to_string(),
                ]);
            }
        }
        let log = std::fs::File::create(d.join("controller.log"))?;
        let child = std::process::Command::new(binary("brindle-controller"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.controller = Some(ChildGuard(child));
        Ok(())
    }

    /// The datastore flags that reach this lab's datastore from the host (for brindlectl).
    pub fn datastore_flags(&self) -> Vec<String> {
        match (&self.etcd, &self.api) {
            (Some(e), _) => {
                let mut a = vec![
                    "--datastore".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    e.endpoint(),
                ];
                a.extend(self.etcd_tls_flags());
                a
            }
            (None, Some(_)) => vec![
                "--datastore".into(),
                "kubernetes".into(),
                "--kubeconfig".into(),
                self.dir.path().join("kubeconfig").display().to_string(),
            ],
            (None, None) => vec![],
        }
    }

    /// With the Kubernetes datastore: every distinct API call made so far, by token
    /// ([`TOKEN_NODE`], [`TOKEN_CONTROLLER`], or empty for the lab itself).
    pub fn api_calls(&self) -> Vec<brindle_testsupport::ApiCall> {
        self.api.as_ref().map(ApiServer::calls).unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> &LabNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    pub fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// Takes a node out of the cluster as an operator would after losing the machine: its
    /// agent is killed, its namespace (and pods) go, its record is deleted.
    pub fn remove_node(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self.node_index(name);
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node == name)
            .map(|(k, _)| k.clone())
            .collect();
        for p in gone {
            self.pods.remove(&p);
        }
        let n = self.nodes.remove(i);
        self.spec.nodes = self.nodes.len();
        // Its rack's router forgets it (the other sessions stay up).
        self.tell_router(n.rack);
        drop(n);
        self.block_on(async {
            match self.spec.datastore {
                Datastore::Etcd => {
                    self.store
                        .all::<brindle_api::BrindleNode>()
                        .delete(name, None)
                        .await?
                }
                Datastore::Kubernetes => {
                    self.store
                        .all::<k8s_openapi::api::core::v1::Node>()
                        .delete(name, None)
                        .await?
                }
            }
            let pods = self
                .store
                .all::<k8s_openapi::api::core::v1::Pod>()
                .list()
                .await?
                .items;
            for p in pods {
                let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name);
                if on {
                    let ns = p.metadata.namespace.clone().unwrap_or_default();
                    let pn = p.metadata.name.clone().unwrap_or_default();
                    self.store
                        .namespaced::<k8s_openapi::api::core::v1::Pod>(&ns)
                        .delete(&pn, None)
                        .await?;
                }
            }
            anyhow::Ok(())
        })
    }

    /// `ip route show proto bird` on a node, one line per route (`ip -o` form).
    pub fn bird_routes(&self, node: &str) -> Vec<String> {
        self.routes_of(node, "-4")
    }

    /// `ip -6 route show proto bird` on a node.
    pub fn bird_routes6(&self, node: &str) -> Vec<String> {
        self.routes_of(node, "-6")
    }

    fn routes_of(&self, node: &str, family: &str) -> Vec<String> {
        let out = self
            .node(node)
            .ns
            .ok(&["ip", family, "route", "show", "proto", "bird"]);
        out.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The speaker's peers on a node (its control socket).
    pub fn peers(&self, node: &str) -> Vec<serde_json::Value> {
        status::control(
            &self.node(node).control_socket(),
            &serde_json::json!({"peers": {}}),
        )
        .ok()
        .and_then(|v| v["ok"].as_array().cloned())
        .unwrap_or_default()
    }

    /// Blocks affine to each node, from the datastore.
    pub fn blocks(&self) -> BTreeMap<String, Vec<String>> {
        let blocks = self
            .block_on(self.store.all::<brindle_api::IPAMBlock>().list())
            .map(|l| l.items)
            .unwrap_or_default();
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in blocks {
            if let Some(n) = b
                .spec
                .affinity
                .as_deref()
                .and_then(|a| a.strip_prefix("host:"))
            {
                m.entry(n.to_string())
                    .or_default()
                    .push(b.spec.cidr.clone());
            }
        }
        m
    }

    /// Until every live node holds a proto-bird route for every other live node's blocks
    /// (and a blackhole for its own), or `timeout`. Returns how long it took.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let why = self.converged();
            match why {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(format!("not converged after {timeout:?}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Until every running node's BGP sessions (mesh, reflectors, top-of-rack routers) are
    /// Established and their number stays the same across two looks, or `timeout`. (A fresh
    /// lab has no blocks, so [`Lab::wait_converged`] says nothing of its sessions.)
    pub fn wait_sessions(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last: Option<usize> = None;
        loop {
            match self.sessions_up() {
                Ok(n) if last == Some(n) => return Ok(start.elapsed()),
                Ok(_) | Err(_) if start.elapsed() > timeout => {
                    return Err(format!(
                        "BGP sessions not settled after {timeout:?}: {}",
                        self.sessions_up()
                            .map_or_else(|e| e, |n| format!("{n} up, still changing"))
                    ))
                }
                Ok(n) => last = Some(n),
                Err(_) => last = None,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// How many sessions the running nodes have, all Established; or which is not.
    fn sessions_up(&self) -> Result<usize, String> {
        let lonely = self.nodes.len() < 2 && self.tors.is_empty();
        let mut total = 0;
        for n in self.nodes.iter().filter(|n| n.agent_pid().is_some()) {
            let peers = self.peers(&n.name);
            if peers.is_empty() && !lonely {
                return Err(format!("{} has no BGP peers yet", n.name));
            }
            if let Some(p) = peers.iter().find(|p| p["state"] != "Established") {
                return Err(format!(
                    "{}'s session with {} is {}",
                    n.name, p["addr"], p["state"]
                ));
            }
            total += peers.len();
        }
        // The routers' sessions with each other's (eBGP between racks), as BIRD reports them.
        for t in &self.tors {
            let shown = t.bird.birdc(&["show", "protocols"]);
            for line in shown.lines().filter(|l| l.starts_with("rack")) {
                if !line.contains("Established") {
                    let name = line.split_whitespace().next().unwrap_or("?");
                    return Err(format!(
                        "rack {}'s router: its session {name} is not Established",
                        t.rack
                    ));
                }
                total += 1;
            }
        }
        Ok(total)
    }

    fn converged(&self) -> Result<(), String> {
        let mut blocks = self.blocks();
        blocks.retain(|owner, _| self.nodes.iter().any(|n| &n.name == owner));
        for n in &self.nodes {
            let routes = self.bird_routes(&n.name);
            let routes6 = self.bird_routes6(&n.name);
            for (owner, bs) in &blocks {
                for b in bs {
                    let routes = if b.contains(':') { &routes6 } else { &routes };
                    let want = if owner == &n.name {
                        format!("blackhole {b}")
                    } else {
                        b.clone()
                    };
                    if !routes
                        .iter()
                        .any(|r| r.starts_with(&format!("{want} ")) || r == &want)
                    {
                        return Err(format!("{} has no route {want}", n.name));
                    }
                }
            }
        }
        Ok(())
    }

    /// What to show to a person (`brindle-lab status`).
    pub fn status(&self) -> String {
        status::render(self)
    }

    /// Stops etcd (an outage); [`Lab::start_etcd`] brings it back with its data.
    pub fn stop_etcd(&mut self) {
        if let Some(e) = &mut self.etcd {
            e.stop();
        }
    }

    pub fn start_etcd(&mut self) {
        if let Some(e) = &mut self.etcd {
            e.restart();
        }
    }
}

/// What a lab made, for `brindle-lab down` to remove after a crash of the process that owns
/// the guards.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    /// The lab's working directory (logs, sockets, configuration files).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Lab {
    pub fn ledger(&self) -> Ledger {
        let mut l = Ledger {
            dir: Some(self.dir.path().to_path_buf()),
            ..Default::default()
        };
        l.namespaces.push(self.fabric.name().to_string());
        for n in &self.nodes {
            l.namespaces.push(n.ns.name().to_string());
            l.pids.extend(n.agent_pid());
        }
        for t in &self.tors {
            l.namespaces.push(t.ns.name().to_string());
            l.pids.push(t.bird.pid());
        }
        for p in self.pods.values() {
            l.namespaces.push(p.ns.name().to_string());
            l.pids.push(p.server_pid());
        }
        l.pids.extend(self.controller.as_ref().map(|c| c.0.id()));
        l.pids.extend(self.etcd.as_ref().and_then(EtcdServer::pid));
        l
    }
}

/// The bearer token of the agents and their CNI plugin (ServiceAccount brindle-node).
pub const TOKEN_NODE: &str = "system:serviceaccount:brindle-system:brindle-node";
/// The controller's (ServiceAccount brindle-controller).
pub const TOKEN_CONTROLLER: &str = "system:serviceaccount:brindle-system:brindle-controller";

/// A kubeconfig for one of the lab's roles. The token names the role's ServiceAccount in
/// `manifests/` (the test API server does not authenticate; it records who asked for what,
/// so a test can hold the calls against the ClusterRoles).
fn kubeconfig(server: &str, token: &str) -> String {
    let user = if token.is_empty() {
        " {}".to_string()
    } else {
        format!("\n    token: {token}")
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\nusers:\n- name: lab\n  user:{user}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\ncurrent-context: lab\n"
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first (their veths live in node namespaces), then agents, routers, fabric;
        // the guards do the rest.
        self.pods.clear();
        self.controller = None;
        for n in &mut self.nodes {
            n.agent = None;
        }
        self.nodes.clear();
        self.tors.clear();
    }
}
