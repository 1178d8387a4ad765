//! `brindle-node`: the agent on every node. It registers the node, then runs one task per
//! concern, each reading the datastore's [`snapshot`] and handing desired state to the single
//! owner of that state:
//!
//! ```text
//!   datastore ─▶ snapshot (mirrors + fold) ──watch──┬─▶ bgp task ──▶ Speaker (sessions, RIB,
//!                                                   │      ▲          kernel writer: proto bird)
//!                                                   │      │ tunl0 ok?
//!                                                   ├─▶ tunnel task ──▶ IPAM + felix-lite tunl0
//!                                                   ├─▶ workload task ──▶ felix-lite /32 routes
//!                                                   ├─▶ leak task ──▶ IPAM (departed containers)
//!                                                   └─▶ health (/livez /readyz /metrics)
//! ```
//!
//! SIGTERM stops the speaker gracefully (RFC 4724): kernel routes stay and peers keep ours
//! until we are back.
// No unsafe code but the one allocator option call (`allocator_setup`), allowed there.
#![deny(unsafe_code)]

mod autodetect;
mod bgp_task;
mod cleanup;
mod dataplane;
mod denied_log;
mod desired;
mod filters;
mod health;
mod leak_task;
mod metrics;
mod policy_state;
mod ready;
mod register;
mod service_task;
mod services;
mod snapshot;
mod supervise;
mod token_task;
mod tunnel_task;
mod workload_task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use brindle_datastore::{DatastoreArgs, Store};
use clap::Parser;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use brindle_felix_lite::iptables::Runner;

use crate::autodetect::{Family, Method};
use crate::desired::Me;

#[derive(Parser, Debug)]
#[command(
    name = "brindle-node",
    version,
    // A flag given twice (the lab's defaults, then a test's) takes the last value.
    args_override_self = true,
    about = "Brindle's node agent: BGP, tunl0, workload routes, Services"
)]
struct Args {
    /// This node's name (as the kubelet registers it); the hostname when not given.
    #[arg(long, env = "NODENAME")]
    nodename: Option<String>,
    /// The node's IPv4 address (`a.b.c.d` or `a.b.c.d/len`), or `autodetect`.
    #[arg(long, env = "IP")]
    ip: Option<String>,
    /// first-found, interface=<re>[,<re>], skip-interface=<re>[,..], cidr=<cidr>[,..],
    /// can-reach=<host>, kubernetes-internal-ip. Regexes match whole interface names.
    #[arg(long, env = "IP_AUTODETECTION_METHOD", default_value = "first-found")]
    ip_autodetection_method: String,
    /// The node's IPv6 address (`addr` or `addr/len`) or `autodetect`. Unset (or `none`)
    /// keeps the address recorded for the node (none at first), as calico-node does: IPv6 is
    /// found only when asked for. Nodes with IPv6 addresses peer over IPv6 for IPv6 pools.
    #[arg(long, env = "IP6")]
    ip6: Option<String>,
    /// The IPv6 address's method, as --ip-autodetection-method (cidr= takes IPv6 CIDRs).
    #[arg(long, env = "IP6_AUTODETECTION_METHOD", default_value = "first-found")]
    ip6_autodetection_method: String,
    /// This node's AS number (the cluster's BGPConfiguration asNumber when not given).
    #[arg(long = "as", env = "AS")]
    asn: Option<u32>,
    #[arg(long, env = "BRINDLE_HEALTH_LISTEN", default_value = "127.0.0.1:9099")]
    health_listen: SocketAddr,
    /// Prometheus /metrics; `none` turns it off.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "[::]:9091")]
    metrics_listen: String,
    /// The speaker's control socket (read by `brindlectl node status`).
    #[arg(
        long,
        env = "BRINDLE_CONTROL_SOCKET",
        default_value = "/run/brindle/bgpd.sock"
    )]
    control_socket: PathBuf,
    /// Where IPAM is served to the CNI plugin (its `ipam_socket`); `none` turns it off and
    /// the plugin does IPAM itself.
    #[arg(
        long,
        env = "BRINDLE_IPAM_SOCKET",
        default_value = "/run/brindle/ipam.sock"
    )]
    ipam_socket: PathBuf,
    /// Where the node name is written for the CNI plugin (`nodename_file`).
    #[arg(
        long,
        env = "BRINDLE_NODENAME_FILE",
        default_value = "/var/lib/brindle/nodename"
    )]
    nodename_file: PathBuf,
    /// Written once this run (or an earlier one since boot: keep it on tmpfs) has programmed
    /// the node's dataplane: the CNI plugin's `dataplane_ready_file`. Without an agent to ask,
    /// the plugin wires no pod before it exists. `none`: not written.
    #[arg(
        long,
        env = "BRINDLE_DATAPLANE_READY_FILE",
        default_value = brindle_cni::agent::DEFAULT_READY_FILE
    )]
    dataplane_ready_file: PathBuf,
    /// tunl0's MTU; 0 = the uplink's MTU less 20.
    #[arg(long, env = "BRINDLE_IPIP_MTU", default_value_t = 0)]
    ipip_mtu: u32,
    /// Host-side veth prefix of pods (the CNI plugin's `veth_prefix`): 1 to 4 letters or
    /// digits. Traffic from interfaces with this prefix is checked for spoofed sources.
    #[arg(long, env = "BRINDLE_VETH_PREFIX", default_value = "brl", value_parser = veth_prefix)]
    veth_prefix: String,
    /// Namespace of the Secrets that BGPPeer passwords name.
    #[arg(
        long,
        env = "BRINDLE_SECRETS_NAMESPACE",
        default_value = "brindle-system"
    )]
    secrets_namespace: String,
    /// How long a pod address must have looked abandoned (its veth and network namespace
    /// gone, no DEL) before it is released; 0 turns the sweep off.
    #[arg(long, env = "BRINDLE_WORKLOAD_GC_GRACE_SECONDS", default_value_t = 300)]
    workload_gc_grace_seconds: u64,
    /// The container runtime's CNI cache (libcni's default), read by the sweep.
    #[arg(long, env = "BRINDLE_CNI_CACHE_DIR", default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// Program Services (kube-proxy's job) and NAT outgoing in iptables.
    #[arg(long, env = "BRINDLE_SERVICES", default_value_t = true, action = clap::ArgAction::Set)]
    services: bool,
    /// Enforce Kubernetes NetworkPolicy in iptables (Felix's job).
    #[arg(long, env = "BRINDLE_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    policy: bool,
    /// The mark bit that says "policy allowed this packet" (Calico's 0x10000: bit 16); never
    /// the masquerade bit.
    #[arg(long, env = "BRINDLE_POLICY_MARK_BIT", default_value_t = brindle_felix_lite::policy::DEFAULT_ACCEPT_BIT, value_parser = clap::value_parser!(u8).range(0..=31))]
    policy_mark_bit: u8,
    /// How long a CNI ADD waits for the new pod's policy chains before it returns (the pod's
    /// interface passes nothing until they exist either way).
    #[arg(long, env = "BRINDLE_POLICY_SETUP_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    policy_setup_timeout: Duration,
    /// Log each packet NetworkPolicy drops (rate-limited: 10/s per pod and direction in the
    /// kernel, 100 lines a minute here) with the pod and the policies that isolate it.
    #[arg(long, env = "BRINDLE_LOG_DENIED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    log_denied: bool,
    /// The NFLOG group denied packets are sent to (one reader a group per node: not one that
    /// ulogd or another agent uses).
    #[arg(long, env = "BRINDLE_LOG_DENIED_GROUP", default_value_t = brindle_felix_lite::nflog::DEFAULT_GROUP)]
    log_denied_group: u16,
    /// Which dataplane programs Services, NAT outgoing and NetworkPolicy: iptables, nftables
    /// (one table of our own, `ip brindle`) or auto (nftables when the kernel and `nft` take
    /// everything used and the iptables FORWARD chain does not drop by default, as Docker
    /// makes it; else iptables; the choice is logged with its reason). The other one's
    /// rules are removed after the first sync.
    #[arg(long, env = "BRINDLE_DATAPLANE", default_value = "auto", value_parser = ["iptables", "nftables", "auto"])]
    dataplane: String,
    /// Remove what agents left on this host (our iptables and nftables rules, ipsets, proto
    /// bird routes, tunl0's address), then exit; nothing else is done and the datastore is
    /// not needed. As kube-proxy's cleanup flag; refused while an agent or BIRD runs here.
    #[arg(long)]
    cleanup: bool,
    /// iptables backend: auto (legacy where the kernel has it, else nft), legacy, nft.
    #[arg(long, env = "BRINDLE_IPTABLES_BACKEND", default_value = "auto", value_parser = ["auto", "legacy", "nft"])]
    iptables_backend: String,
    /// Least time between two iptables syncs (a burst of changes becomes one write).
    #[arg(long, env = "BRINDLE_MIN_SYNC_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    min_sync_interval: Duration,
    /// How often the tables are read back and drift (our chains changed by hand) repaired.
    #[arg(long, env = "BRINDLE_IPTABLES_REFRESH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    iptables_refresh_interval: Duration,
    /// How often the kernel's routes are read back and ours repaired (a flush of `proto
    /// bird`, a failed write); held prefixes are retried then too.
    #[arg(long, env = "BRINDLE_ROUTE_REFRESH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    route_refresh_interval: Duration,
    /// The longest one iptables or ipset tool may run before it is killed and the sync
    /// retried (a huge legacy ruleset may need more).
    #[arg(long, env = "BRINDLE_IPTABLES_TOOL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    iptables_tool_timeout: Duration,
    /// Tests only: `panic:<task>` or `stall:<task>` a few seconds after start.
    #[arg(long, hide = true)]
    test_fault: Option<supervise::Fault>,
    /// Calico's natOutgoingExclusions: IPPoolsAndHostIPs (Brindle's default: a pod reaches
    /// another node as itself, never as its node) or IPPoolsOnly (Calico's default).
    #[arg(long, env = "BRINDLE_NAT_OUTGOING_EXCLUSIONS", default_value = "IPPoolsAndHostIPs", value_parser = parse_exclusions)]
    nat_outgoing_exclusions: brindle_felix_lite::proxy::NatOutgoingExclusions,
    /// The masquerade mark bit (kube-proxy's default, 14).
    #[arg(long, env = "BRINDLE_MASQUERADE_BIT", default_value_t = 14, value_parser = clap::value_parser!(u8).range(0..=31))]
    masquerade_bit: u8,
    /// Keep a copy of this pod's service account token here for the CNI plugin's kubeconfig
    /// (`brindle-cni-install` names it); unset: no copy (etcd, or not in a pod).
    #[arg(long, env = "BRINDLE_CNI_TOKEN_FILE")]
    cni_token_file: Option<PathBuf>,
    #[arg(long, env = "BRINDLE_LOG", default_value = "info")]
    log: String,
    #[arg(long, env = "BRINDLE_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(flatten)]
    datastore: DatastoreArgs,
}

/// `1s`, `200ms`, `2m`; a bare number is seconds.
fn parse_exclusions(v: &str) -> Result<brindle_felix_lite::proxy::NatOutgoingExclusions, String> {
    brindle_felix_lite::proxy::NatOutgoingExclusions::parse(v)
        .ok_or_else(|| format!("{v:?}: expected IPPoolsAndHostIPs or IPPoolsOnly"))
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{v:?} is not a duration (e.g. 200ms, 1s, 2m)"));
    }
    brindle_api::validation::parse_duration_secs(v).map(Duration::from_secs)
}

fn init_logging(a: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never into a log file or a container log.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if a.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// A netlink connection of its own for each task: the kernel refuses a second dump on a
/// socket while one is running (EBUSY), so tasks sharing one would fail each other's listings.
fn netlink() -> anyhow::Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Connects, retrying with backoff: a node may boot before its datastore is reachable.
async fn connect(a: &DatastoreArgs) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(500);
    loop {
        match a.connect().await {
            Ok(s) => return Ok(s),
            Err(e @ brindle_datastore::config::ConnectError::Etcd(_)) => {
                warn!("datastore not reachable yet (retrying in {delay:?}): {e}");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Retries a datastore step until it works (startup only; logs each failure).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(v) => return v,
            // The datastore's errors already carry their causes in their text.
            Err(e) => warn!("{what} (retrying in {delay:?}): {e}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// One family's address: given, detected, or (detection failing) the one recorded.
struct Found {
    iface: String,
    net: ipnetwork::IpNetwork,
}

fn find_address(
    node: &str,
    family: Family,
    given: Option<&str>,
    method: &str,
    ifaces: &[autodetect::Iface],
    previous: Option<&str>,
    internal: &[String],
) -> anyhow::Result<Option<Found>> {
    use std::net::IpAddr;
    let (flag, var) = match family {
        Family::V4 => ("--ip-autodetection-method", "IP_AUTODETECTION_METHOD"),
        Family::V6 => ("--ip6-autodetection-method", "IP6_AUTODETECTION_METHOD"),
    };
    let method = Method::parse(method, family).with_context(|| format!("{flag} / {var}"))?;
    let previous = previous
        .and_then(|s| s.parse::<ipnetwork::IpNetwork>().ok())
        .filter(|n| Family::of(n.ip()) == family);
    let holder = |ip: IpAddr| {
        ifaces
            .iter()
            .find(|i| i.addrs.iter().any(|x| x.ip() == ip))
            .map(|i| i.name.clone())
            .unwrap_or_default()
    };
    let given = given.map(str::trim).filter(|s| !s.is_empty());
    match (family, given) {
        // `none` keeps what is recorded (calico-node's rule: it disables detection, not the
        // address), and IPv6 is detected only when asked for. A node with no IPv4 address
        // is IPv6-only.
        (_, Some("none")) | (Family::V6, None) => {
            return Ok(previous.map(|net| Found {
                iface: holder(net.ip()),
                net,
            }))
        }
        // An address the operator gave is used or refused, never replaced by an old one.
        (_, Some(s)) if s != "autodetect" => {
            let (iface, net) =
                autodetect::parse_explicit(s, family, ifaces).map_err(anyhow::Error::msg)?;
            return Ok(Some(Found { iface, net }));
        }
        _ => {}
    }
    let found = autodetect::detect(
        &method,
        family,
        ifaces,
        |h| autodetect::local_toward(h, family),
        || {
            let first = internal
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .find(|a| Family::of(*a) == family);
            first.ok_or_else(|| {
                format!(
                    "the Node has no {} InternalIP (kubernetes-internal-ip needs --datastore kubernetes)",
                    family.name()
                )
            })
        },
    );
    match (found, previous) {
        (Ok((iface, net)), _) => Ok(Some(Found { iface, net })),
        (Err(e), Some(p)) => {
            warn!(
                "{} autodetection failed ({e:#}); keeping the recorded address {p}",
                family.name()
            );
            Ok(Some(Found {
                iface: holder(p.ip()),
                net: p,
            }))
        }
        (Err(e), None) => anyhow::bail!(
            "failed to autodetect an {} address and node {node} has none recorded: {e:#}",
            family.name()
        ),
    }
}

async fn identify(
    a: &Args,
    store: &Store,
    handle: &rtnetlink::Handle,
) -> anyhow::Result<(Me, u32)> {
    let name = match &a.nodename {
        Some(n) if !n.is_empty() => n.clone(),
        _ => nix::unistd::gethostname()
            .context("reading the hostname (give --nodename)")?
            .to_string_lossy()
            .into_owned(),
    };
    let (previous, internal) = retry("reading this node's record", || async {
        Ok(register::recorded(store, &name).await?)
    })
    .await;
    let ifaces = register::interfaces(handle)
        .await
        .context("listing interfaces")?;
    let prev = |f: fn(&brindle_api::NodeBgp) -> &Option<String>| {
        previous.as_ref().and_then(|b| f(b).clone())
    };
    let v4 = find_address(
        &name,
        Family::V4,
        a.ip.as_deref(),
        &a.ip_autodetection_method,
        &ifaces,
        prev(|b| &b.ipv4_address).as_deref(),
        &internal,
    )?;
    let v6 = find_address(
        &name,
        Family::V6,
        a.ip6.as_deref(),
        &a.ip6_autodetection_method,
        &ifaces,
        prev(|b| &b.ipv6_address).as_deref(),
        &internal,
    )?;
    let ip4 = match v4.as_ref().map(|f| f.net) {
        Some(ipnetwork::IpNetwork::V4(n)) => Some(n),
        Some(other) => anyhow::bail!("node {name}: {other} is not IPv4"),
        None => None,
    };
    let ip6 = match v6.as_ref().map(|f| f.net) {
        Some(ipnetwork::IpNetwork::V6(n)) => Some(n),
        _ => None,
    };
    if ip4.is_none() && ip6.is_none() {
        anyhow::bail!(
            "node {name} has neither an IPv4 nor an IPv6 address (--ip none needs --ip6: IP=none with IP6=autodetect or an address)"
        );
    }
    let uplink = v4.as_ref().or(v6.as_ref()).map_or("", |f| f.iface.as_str());
    let uplink_mtu = ifaces
        .iter()
        .find(|i| i.name == uplink)
        .map_or(1500, |i| i.mtu);
    let me = Me::new(&name, ip4, ip6);
    match &v4 {
        Some(f) => {
            info!(node = %name, address = %f.net, interface = %f.iface, mtu = uplink_mtu, "node address")
        }
        None => info!(
            node = %name,
            router_id = %me.router_id,
            "no IPv4 address (--ip none): an IPv6-only node; its router ID is a hash of its name (calico-node's CALICO_ROUTER_ID=hash), IPv4 pools cannot serve it"
        ),
    }
    match &v6 {
        Some(f) => info!(node = %name, address = %f.net, interface = %f.iface, "node IPv6 address"),
        None => {
            info!(node = %name, "no IPv6 address (--ip6 / IP6 not set): IPv6 pools are not routed to this node")
        }
    }
    Ok((me, uplink_mtu))
}

/// Serves until the server fails; returns only then (the supervisor ends the agent).
async fn serve(addr: SocketAddr, app: axum::Router, what: &'static str) {
    // `[::]` takes both families; a host without IPv6 gets `0.0.0.0` instead.
    let bound = match tokio::net::TcpListener::bind(addr).await {
        Err(_) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).await
        }
        r => r,
    };
    match bound {
        Ok(l) => {
            info!(%addr, "{what} listening");
            if let Err(e) = axum::serve(l, app).await {
                error!("{what} server failed: {e}");
            }
        }
        Err(e) => error!(%addr, "{what}: cannot listen: {e}"),
    }
}

/// See the `mimalloc` feature in Cargo.toml: glibc's arenas kept 65 MiB more at 5,000 nodes.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's purge delay for the agent, unless the environment sets it (as mimalloc
/// documents): freed memory goes back to the kernel at once rather than after 10 ms. A
/// policy render or a relist frees tens of MiB in a burst, and the delay let the next
/// burst's allocations land beside it (peak RSS at 5,000 nodes 290 -> 241-253 MiB). Its arena
/// is not committed up front either, but that is set where mimalloc is built
/// (`.cargo/config.toml`): from here it would come after the first arena was made.
#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn allocator_setup() {
    // Its place in `mi_option_e` of mimalloc 2.x's mimalloc.h (the sys crate names none),
    // with its names in the environment (the older one still read).
    const OPTIONS: [(libmimalloc_sys::mi_option_t, &[&str]); 1] =
        [(15, &["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"])];
    for (option, names) in OPTIONS {
        if names.iter().all(|v| std::env::var_os(v).is_none()) {
            // SAFETY: sets one of mimalloc's options, called first in `main` while this is
            // the only thread (mimalloc's options are not meant to be set concurrently).
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

#[cfg(not(feature = "mimalloc"))]
fn allocator_setup() {}

fn main() -> std::process::ExitCode {
    // Before any other thread exists (mimalloc's options are not set under threads).
    allocator_setup();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(agent()),
        Err(e) => {
            eprintln!("brindle-node: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--dataplane-ready-file`, unless `none`.
fn ready_file(a: &Args) -> Option<PathBuf> {
    (a.dataplane_ready_file.as_os_str() != "none").then(|| a.dataplane_ready_file.clone())
}

async fn agent() -> std::process::ExitCode {
    let a = Args::parse();
    init_logging(&a);
    if a.cleanup {
        let ready = ready_file(&a);
        return match cleanup::run(&Runner::default(), &a.control_socket, ready.as_deref()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("brindle-node --cleanup: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if a.policy && a.policy_mark_bit == a.masquerade_bit {
        eprintln!(
            "brindle-node: --policy-mark-bit {} is the masquerade bit: give them different bits",
            a.policy_mark_bit
        );
        return std::process::ExitCode::from(2);
    }
    // A panic anywhere (a task, a task it spawned, a blocking call) ends the agent with a
    // line saying where, rather than leaving a node that answers probes but has lost a part.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        error!("panic: {info}; exiting so that brindle-node is restarted");
        default_hook(info);
        std::process::exit(70);
    }));
    match run(a).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("brindle-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = connect(&a.datastore).await?;
    let handle = netlink()?;
    let (me, uplink_mtu) = identify(&a, &store, &handle).await?;
    retry("registering the node", || {
        register::write(&store, &me.name, me.ip4, me.ip6, a.asn)
    })
    .await;
    if me.ip6.is_some() {
        // Felix's configureKernel: IPv6 pods are routed only with forwarding on.
        match std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1") {
            Ok(()) => info!("net.ipv6.conf.all.forwarding=1 (the node routes IPv6 pods)"),
            Err(e) => warn!(
                "setting net.ipv6.conf.all.forwarding=1: {e}; IPv6 pods will not be forwarded"
            ),
        }
    }
    if let Some(dir) = a.nodename_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&a.nodename_file, &me.name) {
        warn!(file = %a.nodename_file.display(), "cannot write the node name for the CNI plugin: {e}");
    }

    let heart = supervise::Heart::default();
    let mut tasks = supervise::Tasks::default();
    if let Some(copy) = &a.cni_token_file {
        tasks.spawn(
            "cni-token",
            token_task::TokenTask {
                source: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
                copy: copy.clone(),
            }
            .run(),
        );
    }
    let metrics = metrics::Metrics::new();
    let snap = snapshot::start(&store, &me.name, &a.secrets_namespace, metrics.clone());
    let (tunnel_tx, tunnel_rx) = watch::channel(false);
    let (view_tx, view_rx) = watch::channel(bgp_task::SpeakerView::default());
    let (stop_tx, stop_rx) = oneshot::channel();

    tasks.spawn(
        "tunnel",
        tunnel_task::TunnelTask {
            me: me.clone(),
            ipam: brindle_ipam::Ipam::new(store.clone()),
            snap: snap.clone(),
            handle: netlink()?,
            mtu: if a.ipip_mtu > 0 {
                a.ipip_mtu
            } else {
                uplink_mtu.saturating_sub(brindle_felix_lite::tunnel::IPIP_OVERHEAD)
            },
            ok: tunnel_tx,
            metrics: metrics.clone(),
            pulse: heart.pulse("tunnel", Duration::from_secs(120)),
        }
        .run(),
    );
    tasks.spawn(
        "workload-routes",
        workload_task::WorkloadTask {
            node: me.name.clone(),
            veth_prefix: a.veth_prefix.clone(),
            snap: snap.clone(),
            handle: netlink()?,
            pulse: heart.pulse("workload-routes", Duration::from_secs(60)),
        }
        .run(),
    );
    if a.workload_gc_grace_seconds > 0 {
        tasks.spawn(
            "departed-containers",
            leak_task::LeakTask {
                node: me.name.clone(),
                ipam: brindle_ipam::Ipam::new(store.clone()),
                snap: snap.clone(),
                handle: netlink()?,
                grace: Duration::from_secs(a.workload_gc_grace_seconds),
                cni_cache_dir: a.cni_cache_dir.clone(),
                metrics: metrics.clone(),
                pulse: heart.pulse("departed-containers", Duration::from_secs(180)),
            }
            .run(),
        );
    }
    let mut bgp = tokio::spawn(
        bgp_task::BgpTask {
            me: me.clone(),
            snap: snap.clone(),
            tunnel_ok: tunnel_rx,
            metrics: metrics.clone(),
            control_socket: a.control_socket.clone(),
            view: view_tx,
            stop: stop_rx,
            handle: netlink()?,
            route_refresh: a.route_refresh_interval,
            pulse: heart.pulse("bgp", Duration::from_secs(120)),
        }
        .run(),
    );
    tasks.spawn("peer-watch", health::watch_peers(view_rx.clone()));
    // The dataplane's probes run iptables and nft: off the runtime's threads, and after the
    // routing tasks are under way (a node's routes never wait for them).
    let ipam_socket = (a.ipam_socket.as_os_str() != "none").then(|| a.ipam_socket.clone());
    // The dataplane (Services and NetworkPolicy) on this node, if any.
    let chosen = match a.services || a.policy {
        false => None,
        true => {
            let (choice, backend) = (a.dataplane.clone(), a.iptables_backend.clone());
            let choose = move || dataplane::choose(&choice, &backend, &Runner::default());
            Some(
                tokio::task::spawn_blocking(choose)
                    .await
                    .context("choosing the dataplane")?,
            )
        }
    };
    let dataplane = match chosen {
        None => None,
        Some(Ok((dp, why))) => {
            info!(dataplane = dp.name(), "dataplane chosen: {why}");
            Some(dp)
        }
        Some(Err(dataplane::ChooseError::Fatal(e))) => anyhow::bail!(e),
        // A node whose dataplane cannot be used still routes pods; it says so loudly.
        Some(Err(e)) => {
            error!("Services, NAT outgoing and NetworkPolicy are OFF on this node: {e}");
            None
        }
    };
    if dataplane.is_none() {
        // Nothing of the dataplane's will come (off, or not usable here: said above).
        ready::mark(ready_file(&a).as_deref(), "no dataplane on this node");
    }
    // IPAM is served once the dataplane is programmed: a pod the agent wired before that
    // would have no guard, anti-spoofing or policy (meanwhile the plugin's own IPAM refuses
    // too, without the ready file, and the kubelet retries).
    let (synced_tx, synced_rx) = watch::channel(dataplane.is_none());
    let (attach_tx, attach_rx) = tokio::sync::mpsc::channel(1024);
    let policy_on = a.policy && dataplane.is_some();
    if let Some(path) = ipam_socket.clone() {
        let server = brindle_cni::agent::Server {
            store: store.clone(),
            ipam: std::sync::Arc::new(brindle_ipam::Ipam::new(store.clone())),
            node: me.name.clone(),
            path,
            attachments: policy_on.then(|| brindle_cni::agent::AttachmentHook {
                tx: attach_tx,
                wait: a.policy_setup_timeout,
            }),
            observe: Some({
                let m = metrics.ipam_pools.clone();
                std::sync::Arc::new(move |op, result, took| m.request(op, result, took))
            }),
        };
        let mut synced = synced_rx.clone();
        tasks.spawn("ipam-socket", async move {
            if !*synced.borrow() {
                info!("the IPAM socket is served after the dataplane's first sync");
                if synced.wait_for(|s| *s).await.is_err() {
                    // The dataplane's task is gone: nothing will be programmed.
                    std::future::pending::<()>().await;
                }
            }
            let path = server.path.clone();
            if let Err(e) = server.run().await {
                // Not worth a restart: the plugin does the same work itself.
                error!(socket = %path.display(), "IPAM socket failed; the CNI plugin does IPAM itself: {e}");
                std::future::pending::<()>().await;
            }
        });
    }
    // --log-denied: the group is bound before any rule names it; a node where it cannot be
    // still enforces policy, without the lines (said once, loudly).
    let denied = match (policy_on && a.log_denied, a.log_denied_group) {
        (false, _) => None,
        (true, group) => match denied_log::listen(group) {
            Ok(packets) => {
                let (tx, rx) = watch::channel(denied_log::Isolations::default());
                let pulse = heart.pulse("denied-log", Duration::from_secs(60));
                tasks.spawn("denied-log", denied_log::run(packets, rx, pulse));
                info!(group, "denied packets are logged (NFLOG)");
                Some(tx)
            }
            Err(e) => {
                error!("--log-denied is OFF on this node (policy is still enforced): {e}");
                None
            }
        },
    };
    if let Some(dp) = dataplane {
        info!(
            dataplane = dp.name(),
            services = a.services,
            policy = a.policy,
            "Services and NAT outgoing, NetworkPolicy"
        );
        tasks.spawn(
            "services",
            service_task::ServiceTask {
                store: store.clone(),
                node: me.name.clone(),
                dataplane: dp,
                masquerade_bit: a.masquerade_bit,
                min_sync: a.min_sync_interval,
                refresh: a.iptables_refresh_interval,
                snapshot: snap.clone(),
                metrics: metrics.clone(),
                nat_outgoing_exclusions: a.nat_outgoing_exclusions,
                workload_prefix: a.veth_prefix.clone(),
                ready_file: ready_file(&a),
                synced: synced_tx,
                tool_timeout: a.iptables_tool_timeout,
                services: a.services,
                ipv6_node: me.ip6.is_some(),
                policy: policy_on.then(|| service_task::PolicyConfig {
                    ctx: brindle_felix_lite::policy::PolicyContext {
                        workload_prefix: a.veth_prefix.clone(),
                        accept_bit: a.policy_mark_bit,
                        log_denied: denied.is_some().then_some(a.log_denied_group),
                        // Rendered for each family in use (PolicyState::render).
                        family: brindle_felix_lite::family::Family::V4,
                    },
                    attachments: attach_rx,
                    isolations: denied,
                }),
                pulse: heart.pulse(
                    "services",
                    (a.iptables_refresh_interval * 3).max(Duration::from_secs(90)),
                ),
            }
            .run(),
        );
    }
    let h = health::Health {
        node: me.name.clone(),
        started,
        snap: snap.clone(),
        view: view_rx,
        metrics,
        heart: heart.clone(),
        peers: Default::default(),
    };
    tasks.spawn(
        "health",
        serve(a.health_listen, health::router(h.clone()), "health"),
    );
    if a.metrics_listen != "none" {
        let addr: SocketAddr = a
            .metrics_listen
            .parse()
            .context("--metrics-listen: not address:port or none")?;
        tasks.spawn("metrics", async move {
            serve(addr, health::router(h), "metrics").await;
            // Metrics are not worth a restart loop (the port may be taken): said once.
            std::future::pending::<()>().await
        });
    }
    if let Some(f) = a.test_fault.clone() {
        warn!(fault = ?f, "test fault armed (--test-fault)");
        supervise::inject(&mut tasks, &heart, f);
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down gracefully"),
        why = tasks.ended() => {
            anyhow::bail!("{why}; exiting so that the kubelet restarts brindle-node");
        }
        r = &mut bgp => {
            let why = match r {
                Ok(()) => "task bgp ended unexpectedly".to_string(),
                Err(e) if e.is_panic() => "task bgp panicked".to_string(),
                Err(e) => format!("task bgp failed: {e}"),
            };
            anyhow::bail!("{why}; exiting so that the kubelet restarts brindle-node");
        }
    }
    if let Some(path) = &ipam_socket {
        // The plugin does IPAM itself from now on, instead of finding a dead socket.
        let _ = std::fs::remove_file(path);
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut bgp).await;
    info!("stopped");
    Ok(())
}

/// The CNI plugin's rule for `veth_prefix`; an empty one would make `-i +`, every interface.
fn veth_prefix(s: &str) -> Result<String, String> {
    if (1..=4).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} must be 1 to 4 letters or digits"))
    }
}
