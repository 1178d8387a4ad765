//! What the node's speaker should be doing, as pure functions of a [`Snapshot`]: the speaker's
//! own settings, its peers (mesh, BGPPeers, route reflection — calico-node's confd rules,
//! REFERENCE §A2), the prefixes it originates and the encapsulation of installed routes.
//! Nothing here does I/O; problems with a resource come back as [`Warning`]s for the caller
//! to log once.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use brindle_api::validation::parse_duration_secs;
use brindle_api::{AffinityState, BGPConfigurationSpec, BGPFilter, IpipMode, Validate};
use brindle_bgp::policy::Policy;
use brindle_bgp::rails::{self, Rails};
use brindle_bgp::speaker::Encap;
use brindle_ipam::block::{self, attr};
use brindle_ipam::selector::Selector;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::filters::{self, Direction};
use crate::snapshot::{NodeInfo, Snapshot};

/// This node, as registration found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub name: String,
    /// The node's IPv4 address with its interface's prefix; none on an IPv6-only node.
    pub ip4: Option<Ipv4Network>,
    /// The node's IPv6 address with its interface's prefix, when it has one (`--ip6`).
    pub ip6: Option<Ipv6Network>,
    /// Its BGP identifier: see [`router_id`].
    pub router_id: Ipv4Addr,
}

impl Me {
    pub fn new(name: &str, ip4: Option<Ipv4Network>, ip6: Option<Ipv6Network>) -> Me {
        Me {
            name: name.to_owned(),
            ip4,
            ip6,
            router_id: router_id(name, ip4.map(|n| n.ip())),
        }
    }

    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip4.map(|n| n.ip())
    }

    /// The subnet of the node's IPv4 address.
    pub fn subnet(&self) -> Option<Ipv4Network> {
        let n = self.ip4?;
        Ipv4Network::new(n.network(), n.prefix()).ok()
    }

    /// The subnet of the node's IPv6 address.
    pub fn subnet6(&self) -> Option<Ipv6Network> {
        let n = self.ip6?;
        Ipv6Network::new(n.network(), n.prefix()).ok()
    }
}

/// A node's BGP identifier: its IPv4 address, or, on an IPv6-only node, four bytes of the
/// SHA-256 of its name (calico-node's `CALICO_ROUTER_ID=hash`, a first byte above 223 less
/// 32, out of the multicast and reserved ranges). Every node derives every other node's the
/// same way, and holds it to that in the OPEN.
pub fn router_id(name: &str, ip4: Option<Ipv4Addr>) -> Ipv4Addr {
    use sha2::Digest;
    if let Some(ip) = ip4 {
        return ip;
    }
    let h = sha2::Sha256::digest(name.as_bytes());
    let first = if h[0] > 223 { h[0] - 32 } else { h[0] };
    let id = Ipv4Addr::new(first, h[1], h[2], h[3]);
    // 0.0.0.0 is no identifier (RFC 6286); one name in four billion.
    if id.is_unspecified() {
        Ipv4Addr::new(0, 0, 0, 1)
    } else {
        id
    }
}

/// A problem with one resource: logged once by the caller, the rest goes on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub resource: String,
    pub reason: String,
}

fn warn(w: &mut Vec<Warning>, resource: impl Into<String>, reason: impl Into<String>) {
    w.push(Warning {
        resource: resource.into(),
        reason: reason.into(),
    });
}

/// The speaker's own settings; a change restarts the embedded speaker (gracefully).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub listen_port: u16,
    pub cluster_id: Option<Ipv4Addr>,
}

/// calicoctl's peer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PeerKind {
    #[serde(rename = "node-to-node mesh")]
    Mesh,
    #[serde(rename = "global")]
    Global,
    #[serde(rename = "node specific")]
    NodeSpecific,
    /// A node that reflects routes to this one (a BGPPeer's peerSelector picked it).
    #[serde(rename = "route reflector")]
    RouteReflector,
}

impl PeerKind {
    /// The name `brindlectl node status` (and calicoctl) shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Mesh => "node-to-node mesh",
            PeerKind::Global => "global",
            PeerKind::NodeSpecific => "node specific",
            PeerKind::RouteReflector => "route reflector",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub addr: IpAddr,
    pub port: u16,
    pub asn: u32,
    pub kind: PeerKind,
    /// The other node, for node-to-node peers.
    pub node: Option<String>,
    pub passive: bool,
    pub rr_client: bool,
    pub password: Option<String>,
    pub hold_time: u16,
    pub restart_time: Option<u64>,
    pub source: Option<IpAddr>,
    /// GTSM hops (Calico's `ttlSecurity`; never for mesh peers, as in Calico).
    pub ttl_security: Option<u8>,
    /// Another node of this cluster: only pool routes are taken from it, and (on a route
    /// reflector) it may be reflected to. Everything else is an external router.
    pub member: bool,
    /// The BGP identifier the peer must present: a node's router ID, its IPv4 address.
    pub router_id: Option<Ipv4Addr>,
    /// `BGPPeer.maxPrefixes`.
    pub max_prefixes: Option<u32>,
    /// The peer's BGPFilters, compiled (accept-all without filters; never for the mesh, as
    /// in Calico).
    pub import: Policy,
    pub export: Policy,
}

impl DesiredPeer {
    /// The same session, whatever the policies: a policy change is applied in place.
    pub fn same_session(&self, other: &DesiredPeer) -> bool {
        let strip = |d: &DesiredPeer| DesiredPeer {
            import: Policy::accept_all(),
            export: Policy::accept_all(),
            ..d.clone()
        };
        strip(self) == strip(other)
    }
}

enum Lookup {
    Found(String),
    NotListed,
    Missing,
}

/// A password from a Secret of the agent's namespace.
fn secret(snap: &Snapshot, r: &brindle_api::bgp::SecretKeyRef) -> Lookup {
    let v = snap
        .secrets
        .iter()
        .find(|(k, _)| k.rsplit('/').next() == Some(r.name.as_str()))
        .and_then(|(_, data)| data.get(&r.key));
    match v.map(|b| String::from_utf8(b.clone())) {
        Some(Ok(s)) => Lookup::Found(s),
        None if !snap.secrets_listed => Lookup::NotListed,
        _ => Lookup::Missing,
    }
}

/// The BGPConfiguration in force for a node: `node.<name>` if there is one, else `default`,
/// else the built-in defaults.
pub fn config_for(snap: &Snapshot, node: &str) -> BGPConfigurationSpec {
    snap.configs
        .get(&format!("node.{node}"))
        .or_else(|| snap.configs.get("default"))
        .cloned()
        .unwrap_or_default()
}

/// The cluster's AS: the `default` BGPConfiguration's (a `node.<name>` one does not change
/// the AS of other nodes).
fn cluster_as(snap: &Snapshot) -> u32 {
    snap.configs
        .get("default")
        .map_or(brindle_api::bgp::DEFAULT_AS_NUMBER, |c| c.as_number)
}

fn node_asn(snap: &Snapshot, n: &NodeInfo) -> u32 {
    n.bgp.as_number.unwrap_or_else(|| cluster_as(snap))
}

/// A node record's address field parsed as `T`'s network (`Ipv4Network`, `Ipv6Network`);
/// a malformed one is warned about (and that family not peered over).
fn record_addr<T: std::str::FromStr>(
    name: &str,
    field: &str,
    value: Option<&str>,
    family: &str,
    w: &mut Vec<Warning>,
) -> Option<T> {
    let a = value?;
    let parsed = a.parse::<T>().ok();
    if parsed.is_none() {
        warn(
            w,
            format!("node {name}"),
            format!("{field} {a:?} is not an {family} address/prefix; not peering with it over {family}"),
        );
    }
    parsed
}

/// Another node as a BGP peer: its valid addresses and its router ID.
struct NodeAddrs {
    ip4: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    router_id: Ipv4Addr,
}

/// A node's addresses as its record gives them; none (with a warning for a bad record) when
/// it has no valid one.
fn node_addrs(name: &str, n: &NodeInfo, w: &mut Vec<Warning>) -> Option<NodeAddrs> {
    if let Some(e) = &n.bgp_error {
        warn(w, format!("node {name}"), e.clone());
        return None;
    }
    let v4 = n.bgp.ipv4_address.as_deref();
    let ip4 = record_addr::<Ipv4Network>(name, "ipv4Address", v4, "IPv4", w).map(|n| n.ip());
    let v6 = n.bgp.ipv6_address.as_deref();
    let ip6 = record_addr::<Ipv6Network>(name, "ipv6Address", v6, "IPv6", w).map(|n| n.ip());
    // A malformed IPv4 address: the node's router ID (that address) is unknown, so it cannot
    // be held to one; it is not peered with at all (warned above).
    if (v4.is_some() && ip4.is_none()) || (ip4.is_none() && ip6.is_none()) {
        return None;
    }
    Some(NodeAddrs {
        ip4,
        ip6,
        router_id: router_id(name, ip4),
    })
}

/// The addresses two nodes peer on: their IPv4 ones when both have one, their IPv6 ones when
/// both have one (one session per family, as Calico's bird and bird6).
fn session_addrs(me: &Me, other: &NodeAddrs) -> Vec<IpAddr> {
    let mut v = vec![];
    if let (Some(_), Some(theirs)) = (me.ip(), other.ip4) {
        v.push(IpAddr::V4(theirs));
    }
    if let (Some(mine), Some(theirs)) = (me.ip6, other.ip6) {
        if mine.ip() != theirs {
            v.push(IpAddr::V6(theirs));
        }
    }
    v
}

/// Another node this node may peer with: not one claiming its router ID (the same IPv4
/// address in a stale record, or a hash collision between IPv6-only nodes' names), which
/// no session could be opened with.
fn other_node(me: &Me, name: &str, n: &NodeInfo, w: &mut Vec<Warning>) -> Option<NodeAddrs> {
    let a = node_addrs(name, n, w)?;
    if a.router_id == me.router_id {
        warn(
            w,
            format!("node {name}"),
            format!(
                "its router ID {} is this node's; not peering with it",
                a.router_id
            ),
        );
        return None;
    }
    Some(a)
}

fn rr_id(n: Option<&NodeInfo>) -> Option<Ipv4Addr> {
    n?.bgp.route_reflector_cluster_id.as_deref()?.parse().ok()
}

pub fn globals(snap: &Snapshot, me: &Me) -> Globals {
    let mine = snap.nodes.get(&me.name);
    let cfg = config_for(snap, &me.name);
    Globals {
        asn: mine.map_or_else(|| cluster_as(snap), |n| node_asn(snap, n)),
        router_id: me.router_id,
        listen_port: cfg.listen_port,
        cluster_id: rr_id(mine),
    }
}

/// On an IPv6-only node: each IPv4 pool IPAM would take its pods' addresses from, named
/// (IPAM refuses them IPv4 addresses while one does). IPAM's own rule decides which.
pub fn ipv4_pools_here(snap: &Snapshot, me: &Me, w: &mut Vec<Warning>) {
    if me.ip().is_some() {
        return;
    }
    let labels = snap
        .nodes
        .get(&me.name)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    let pools: Vec<brindle_api::IPPool> = snap
        .pools
        .iter()
        .map(|(name, p)| brindle_api::IPPool::new(name, p.clone()))
        .collect();
    let workload = brindle_api::AllowedUse::Workload;
    let v4 = brindle_ipam::Family::V4;
    // A pool whose selector does not parse is IPAM's error to report, not a warning here.
    let Ok(found) = brindle_ipam::pools::eligible(&pools, &labels, v4, workload, &[]) else {
        return;
    };
    for p in found {
        warn(
            w,
            format!("IPPool {}", p.name),
            "selects this IPv6-only node (no IPv4 address): its pods are refused IPv4 addresses; exclude the node by spec.nodeSelector, or set assign_ipv4 to false in the CNI configuration",
        );
    }
}

fn selector(s: &str, resource: &str, field: &str, w: &mut Vec<Warning>) -> Option<Selector> {
    match Selector::parse(s) {
        Ok(sel) => Some(sel),
        Err(e) => {
            warn(w, resource, format!("{field}: {e}"));
            None
        }
    }
}

/// Every session this node should have, keyed by peer address.
pub fn peers(snap: &Snapshot, me: &Me, w: &mut Vec<Warning>) -> BTreeMap<IpAddr, DesiredPeer> {
    let mut out = BTreeMap::new();
    let mine = snap.nodes.get(&me.name);
    let my_labels = mine.map(|n| n.labels.clone()).unwrap_or_default();
    let my_rr = rr_id(mine);
    let my_asn = globals(snap, me).asn;
    // Node-to-node peers (mesh and peerSelector) follow one rule for who dials and who reflects.
    // `addr` is the other node's IPv4 or IPv6 address; its router ID is its IPv4 one.
    let node_peer =
        |name: &str, n: &NodeInfo, addr: IpAddr, router_id: Ipv4Addr, kind: PeerKind| {
            let asn = node_asn(snap, n);
            let source = match addr {
                IpAddr::V4(_) => IpAddr::V4(me.ip().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                IpAddr::V6(_) => me
                    .ip6
                    .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |n| IpAddr::V6(n.ip())),
            };
            DesiredPeer {
                addr,
                port: config_for(snap, name).listen_port,
                asn,
                kind,
                node: Some(name.to_string()),
                // The lower address waits (numerically; Calico compares strings).
                passive: source < addr,
                rr_client: asn == my_asn && my_rr.is_some() && rr_id(Some(n)) != my_rr,
                password: None,
                hold_time: 90,
                restart_time: None,
                source: Some(source),
                ttl_security: None,
                member: true,
                router_id: Some(router_id),
                max_prefixes: None,
                import: Policy::accept_all(),
                export: Policy::accept_all(),
            }
        };
    let cfg = config_for(snap, &me.name);
    // The mesh's password: a missing Secret stops the mesh (fails closed), with a warning.
    let mesh_password = match &cfg.node_mesh_password {
        None => Some(None),
        Some(pw) => match secret(snap, &pw.secret_key_ref) {
            Lookup::Found(s) => Some(Some(s)),
            Lookup::NotListed => None,
            Lookup::Missing => {
                let r = &pw.secret_key_ref;
                warn(
                    w,
                    "BGPConfiguration",
                    format!(
                        "spec.nodeMeshPassword: secret {:?} key {:?} not found (or not UTF-8); no mesh sessions until it is",
                        r.name, r.key
                    ),
                );
                None
            }
        },
    };
    if let (true, None, Some(password)) = (cfg.node_to_node_mesh_enabled, my_rr, mesh_password) {
        for (name, n) in snap.nodes.iter() {
            if name == &me.name || rr_id(Some(n)).is_some() {
                continue; // ourselves, or a route reflector (it peers by BGPPeer)
            }
            let Some(other) = other_node(me, name, n, w) else {
                continue;
            };
            for addr in session_addrs(me, &other) {
                let mut d = node_peer(name, n, addr, other.router_id, PeerKind::Mesh);
                d.password = password.clone();
                // GTSM only where the peer is directly connected.
                let connected = match addr {
                    IpAddr::V4(a) => me.subnet().is_some_and(|s| s.contains(a)),
                    IpAddr::V6(a) => me.subnet6().is_some_and(|s| s.contains(a)),
                };
                if cfg.node_mesh_ttl_security && connected {
                    d.ttl_security = Some(1);
                }
                out.insert(addr, d);
            }
        }
    }
    for (pname, p) in snap.peers.iter() {
        let resource = format!("BGPPeer {pname}");
        // The nodeSelector is parsed once per resource, not once per node it is tried on.
        let node_sel = p
            .node_selector
            .as_deref()
            .map(|s| selector(s, &resource, "spec.nodeSelector", w));
        let applies = |labels: &BTreeMap<String, String>, node: &str| match (&p.node, &node_sel) {
            (Some(n), _) => n == node,
            (None, Some(sel)) => sel.as_ref().is_some_and(|sel| sel.matches(labels)),
            (None, None) => true,
        };
        let kind = if p.node.is_none() && p.node_selector.is_none() {
            PeerKind::Global
        } else {
            PeerKind::NodeSpecific
        };
        let password = match &p.password {
            None => None,
            Some(pw) => {
                let r = &pw.secret_key_ref;
                match secret(snap, r) {
                    Lookup::Found(s) => Some(s),
                    // Not listed yet: the peer waits for its Secret without a warning.
                    Lookup::NotListed => continue,
                    Lookup::Missing => {
                        warn(
                            w,
                            &resource,
                            format!(
                                "spec.password: secret {:?} key {:?} not found (or not UTF-8); not peering until it is",
                                r.name, r.key
                            ),
                        );
                        continue;
                    }
                }
            }
        };
        // Filters: a peer that names them waits until they are listed, so it never runs
        // unfiltered for a moment.
        if !p.filters.is_empty() && !snap.filters_listed {
            continue;
        }
        // A filter that is missing or invalid keeps the peer down (fails closed), as a
        // missing password Secret does: never a session with less filtering than asked.
        let mut filters = vec![];
        let mut unusable = None;
        for f in &p.filters {
            match snap.filters.get(f) {
                Some(spec) => match BGPFilter::new(f, spec.clone()).validate() {
                    Ok(()) => filters.push((f.as_str(), spec)),
                    Err(e) => unusable = Some(format!("BGPFilter {f:?} is invalid: {e}")),
                },
                None => unusable = Some(format!("BGPFilter {f:?} does not exist")),
            }
        }
        if let Some(why) = unusable {
            warn(
                w,
                &resource,
                format!("spec.filters: {why}; not peering until it is fixed"),
            );
            continue;
        }
        let secs = |v: &Option<String>| v.as_deref().and_then(|s| parse_duration_secs(s).ok());
        let hold = secs(&p.hold_time)
            .or_else(|| secs(&p.keepalive_time).map(|k| k * 3))
            .map_or(90, |h| h.min(65535) as u16);
        let tune = |mut d: DesiredPeer| {
            d.password = password.clone();
            d.hold_time = hold;
            d.restart_time = secs(&p.max_restart_time);
            d.ttl_security = p.ttl_security.filter(|h| *h > 0);
            d.kind = kind;
            d.max_prefixes = p.max_prefixes;
            let ebgp = d.asn != my_asn;
            // Validated above, so the policies compile; if one did not, nothing would pass.
            let compiled = |dir| {
                filters::policy(&filters, dir, ebgp).unwrap_or_else(|_| Policy {
                    terms: vec![],
                    default: brindle_bgp::policy::Verdict::Reject,
                })
            };
            d.import = compiled(Direction::Import);
            d.export = compiled(Direction::Export);
            d
        };
        let me_applies = applies(&my_labels, &me.name);
        if let Some(sa) = p.peer_addr() {
            let own = me.ip().is_some_and(|a| sa.ip() == IpAddr::V4(a))
                || me.ip6.is_some_and(|n| sa.ip() == n.ip());
            if me_applies && !own {
                let Some(asn) = p.as_number else { continue };
                // A BGPPeer may name a node by address (a reflector, say): it is then that
                // node, held to its router ID like a mesh peer.
                let node = snap.nodes.iter().find_map(|(name, n)| {
                    let a = node_addrs(name, n, &mut vec![])?;
                    let ip4 = a.ip4.map(IpAddr::V4);
                    let ip6 = a.ip6.map(IpAddr::V6);
                    (ip4 == Some(sa.ip()) || ip6 == Some(sa.ip())).then_some(a.router_id)
                });
                let d = DesiredPeer {
                    addr: sa.ip(),
                    port: sa.port(),
                    asn,
                    kind,
                    node: None,
                    passive: false,
                    rr_client: p.route_reflector_client,
                    password: None,
                    hold_time: 90,
                    restart_time: None,
                    source: None,
                    ttl_security: None,
                    member: node.is_some(),
                    router_id: node,
                    max_prefixes: None,
                    import: Policy::accept_all(),
                    export: Policy::accept_all(),
                };
                out.insert(sa.ip(), tune(d));
            }
            continue;
        }
        let Some(ps) = p
            .peer_selector
            .as_deref()
            .and_then(|s| selector(s, &resource, "spec.peerSelector", w))
        else {
            continue;
        };
        // Peering is symmetric: we peer with the nodes the selector picks when the resource
        // applies to us, and with the nodes it applies to when the selector picks us.
        let picked_me = ps.matches(&my_labels);
        for (name, n) in snap.nodes.iter() {
            if name == &me.name {
                continue;
            }
            let wanted =
                (me_applies && ps.matches(&n.labels)) || (picked_me && applies(&n.labels, name));
            if !wanted {
                continue;
            }
            let Some(other) = other_node(me, name, n, w) else {
                continue;
            };
            for addr in session_addrs(me, &other) {
                let mut d = tune(node_peer(name, n, addr, other.router_id, kind));
                if rr_id(Some(n)).is_some() && rr_id(Some(n)) != my_rr {
                    d.kind = PeerKind::RouteReflector;
                }
                out.insert(addr, d);
            }
        }
    }
    out
}

/// A block affine to this node (`host` is `host:<node>`) whose affinity is confirmed: ours
/// to announce and to defend.
fn confirmed_ours(snap: &Snapshot, me: &Me, host: &str, b: &brindle_api::IPAMBlockSpec) -> bool {
    !b.deleted
        && b.affinity.as_deref() == Some(host)
        && snap
            .affinities
            .values()
            .any(|a| a.node == me.name && a.cidr == b.cidr && a.state == AffinityState::Confirmed)
}

/// The prefixes this node originates, with whether the kernel gets a blackhole for each:
/// its confirmed affine blocks (aggregated: nothing beneath them), the /32s it borrowed from
/// other nodes' blocks, and the Service ranges BGPConfiguration asks for.
pub fn exports(snap: &Snapshot, me: &Me) -> BTreeMap<IpNetwork, bool> {
    let mut out = BTreeMap::new();
    let host = format!("host:{}", me.name);
    let exported = |net: &IpNetwork| {
        snap.pools.values().any(|p| {
            !p.disable_bgp_export
                && p.network().is_some_and(|pn| {
                    pn.is_ipv4() == net.is_ipv4()
                        && pn.contains(net.network())
                        && pn.prefix() <= net.prefix()
                })
        })
    };
    for b in snap.blocks.values() {
        let Some(net) = block::network(b) else {
            continue;
        };
        if b.deleted || !exported(&net) {
            continue;
        }
        if b.affinity.as_deref() == Some(host.as_str()) {
            if confirmed_ours(snap, me, &host, b) {
                out.insert(net, true);
            }
            continue;
        }
        for a in block::allocations(b) {
            if a.attrs.get(attr::NODE).map(String::as_str) == Some(me.name.as_str()) {
                let len = if a.ip.is_ipv4() { 32 } else { 128 };
                if let Ok(n) = IpNetwork::new(a.ip, len) {
                    out.insert(n, false);
                }
            }
        }
    }
    let cfg = config_for(snap, &me.name);
    for r in cfg
        .service_cluster_ips
        .iter()
        .chain(&cfg.service_external_ips)
        .chain(&cfg.service_load_balancer_ips)
    {
        if let Ok(n) = r.cidr.parse::<IpNetwork>() {
            out.entry(n).or_insert(false);
        }
    }
    out
}

/// The import rails ([`brindle_bgp::rails`]): the host's own addresses and connected
/// subnets (`host`, as the kernel lists them) and special-purpose space are protected; routes
/// are judged against the pools and this node's own blocks.
pub fn rails(snap: &Snapshot, me: &Me, host: &[IpNetwork], w: &mut Vec<Warning>) -> Rails {
    let pools: Vec<(IpNetwork, u8)> = snap
        .pools
        .values()
        .filter_map(|p| Some((p.network()?, p.effective_block_size())))
        .collect();
    let in_pool = |n: &IpNetwork| {
        pools
            .iter()
            .find(|(p, _)| rails::within(n, p) || rails::within(p, n))
            .map(|(p, _)| *p)
    };
    let mut protected = rails::special_purpose();
    let add = |n: IpNetwork, protected: &mut Vec<IpNetwork>| {
        // Loopback and link-local are covered already.
        if !protected.iter().any(|p| rails::within(&n, p)) {
            protected.push(n);
        }
    };
    let mut subnets: Vec<IpNetwork> = host
        .iter()
        .filter_map(|a| IpNetwork::new(a.network(), a.prefix()).ok())
        .collect();
    subnets.extend(me.subnet().map(IpNetwork::V4));
    subnets.extend(me.subnet6().map(IpNetwork::V6));
    let mut addrs: Vec<IpNetwork> = host
        .iter()
        .filter_map(|a| IpNetwork::new(a.ip(), if a.is_ipv4() { 32 } else { 128 }).ok())
        .collect();
    addrs.extend(me.ip().map(|a| IpNetwork::V4(a.into())));
    addrs.extend(me.ip6.map(|n| IpNetwork::V6(n.ip().into())));
    // tunl0's address is inside a pool, perhaps borrowed from another node's block: that
    // block's route must not be refused for covering it (the local table keeps the address
    // ours whatever the main table says).
    for a in addrs.into_iter().filter(|a| in_pool(a).is_none()) {
        add(a, &mut protected);
    }
    for n in subnets {
        match in_pool(&n) {
            // A connected subnet that covers a pool would refuse every pool route: only the
            // host's own addresses are protected then.
            Some(p) if !rails::within(&n, &p) => warn(
                w,
                format!("interface subnet {n}"),
                format!("it covers pool {p}; only this host's own addresses in it are protected"),
            ),
            Some(_) => {} // a /32 on tunl0, say
            None => add(n, &mut protected),
        }
    }
    protected.sort_by_key(|n| (n.is_ipv6(), n.network(), n.prefix()));
    protected.dedup();
    // Every block confirmed ours, exported or not (a pool with disableBGPExport included),
    // and the addresses in them that pods on other nodes hold (borrowed).
    let affinity = format!("host:{}", me.name);
    let mine: Vec<_> = snap
        .blocks
        .values()
        .filter(|b| confirmed_ours(snap, me, &affinity, b))
        .collect();
    let local_blocks = mine.iter().filter_map(|b| block::network(b)).collect();
    let lent = mine
        .iter()
        .flat_map(|b| block::allocations(b))
        .filter(|a| {
            a.attrs
                .get(attr::NODE)
                .is_some_and(|n| n.as_str() != me.name.as_str())
        })
        .filter_map(|a| IpNetwork::new(a.ip, if a.ip.is_ipv4() { 32 } else { 128 }).ok())
        .collect();
    Rails {
        protected,
        pools,
        local_blocks,
        lent,
    }
}

/// Encapsulation of routes into each IPv4 pool (first match wins in the speaker). Without a
/// working tunl0 every pool is reached directly.
pub fn encap(snap: &Snapshot, tunnel_ok: bool) -> Vec<(IpNetwork, Encap)> {
    snap.pools
        .values()
        .filter_map(|p| {
            let net = p.network().filter(IpNetwork::is_ipv4)?;
            let e = match p.ipip_mode {
                _ if !tunnel_ok => Encap::None,
                IpipMode::Always => Encap::Ipip,
                IpipMode::CrossSubnet => Encap::CrossSubnet,
                IpipMode::Never => Encap::None,
            };
            Some((net, e))
        })
        .collect()
}

/// Whether any IPv4 pool asks for IPIP at all.
pub fn wants_ipip(snap: &Snapshot) -> bool {
    snap.pools
        .values()
        .any(|p| !p.disabled && p.ipip_mode != IpipMode::Never)
}

#[cfg(test)]
mod tests;
