//! Kernel route sync: best routes go into the kernel's main table as protocol 12
//! (`proto bird`), so operators' `ip route show proto bird` works as with Calico.
//!
//! The caller decides each prefix's form (IPIP: `via <node> dev tunl0 onlink`; direct:
//! `via <next hop>`; ECMP; `blackhole` for the node's own blocks). A route of ours is
//! changed by *replace*, never delete + add, so traffic never sees a gap; a new route is
//! added *create-exclusive* ([`Write::Create`]), so it can never overwrite a route someone
//! else made (the kernel keys routes by prefix, TOS and metric, not protocol: a blind replace
//! would take over the host's default or connected route, and our later delete remove it).
//! Deletes name our protocol, so the kernel never removes another's route for us. Requests
//! are pipelined on the one netlink socket this owns; deleting what is already gone is fine.
//! [`KernelSync::scan`] reads the main table: our routes, and the prefixes others hold.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteNextHopFlags,
    RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// `RTPROT_BIRD`: the protocol number Brindle's routes carry.
pub const PROTO_BIRD: u8 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub gateway: IpAddr,
    /// The interface to use (by index); None lets the kernel find it from the gateway.
    pub ifindex: Option<u32>,
    /// Trust the gateway to be on the link even without a connected route (IPIP's tunl0).
    pub onlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `blackhole <prefix>`: the node's own blocks, so unused addresses go nowhere.
    Blackhole,
    /// One next hop, or several for ECMP.
    Via(Vec<NextHop>),
}

impl Target {
    /// Whether a route the kernel holds (`have`, as [`KernelSync::routes`] reads it) is this
    /// one: same next hops in any order; an interface we leave to the kernel matches any.
    pub fn is_met_by(&self, have: &Target) -> bool {
        match (self, have) {
            (Target::Blackhole, Target::Blackhole) => true,
            (Target::Via(want), Target::Via(have)) => {
                want.len() == have.len()
                    && want.iter().all(|w| {
                        have.iter().any(|h| {
                            h.gateway == w.gateway
                                && h.onlink == w.onlink
                                && w.ifindex.is_none_or(|i| h.ifindex == Some(i))
                        })
                    })
            }
            _ => false,
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new route, create-exclusive: fails with EEXIST if a route to the prefix with our
    /// metric exists, whoever made it.
    Create(IpNetwork, Target),
    /// Change a route we made.
    Replace(IpNetwork, Target),
    /// Remove our route (the request names our protocol).
    Remove(IpNetwork),
}

impl Write {
    pub fn prefix(&self) -> IpNetwork {
        match self {
            Write::Create(p, _) | Write::Replace(p, _) | Write::Remove(p) => *p,
        }
    }
}

/// The main table as [`KernelSync::scan`] reads it.
#[derive(Debug, Default)]
pub struct Scan {
    /// Our (protocol 12) routes, with their forms as in [`KernelSync::routes`].
    pub ours: Vec<(IpNetwork, Option<Target>)>,
    /// Prefixes that a route of another protocol holds, at any metric.
    pub foreign: HashSet<IpNetwork>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel route {prefix}: {op} failed: {source}")]
    Route {
        prefix: IpNetwork,
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing the kernel's routes failed: {0}")]
    List(#[source] rtnetlink::Error),
}

impl KernelError {
    /// The prefix a failed write was for.
    pub fn prefix(&self) -> Option<IpNetwork> {
        match self {
            KernelError::Route { prefix, .. } => Some(*prefix),
            KernelError::List(_) => None,
        }
    }

    /// A create-exclusive add found a route there already (EEXIST).
    pub fn exists(&self) -> bool {
        matches!(self, KernelError::Route { source, .. } if is_errno(source, 17))
    }
}

/// The netlink writer. Owned by one task; everything else sends it plain data.
pub struct KernelSync {
    handle: Handle,
    metric: u32,
}

/// The kernel's main routing table (`RT_TABLE_MAIN`).
const RT_TABLE_MAIN: u32 = 254;

/// The metric the kernel gives an IPv6 route added with none (or 0).
const IP6_DEFAULT_METRIC: u32 = 1024;

/// How many requests are in flight on the socket at once.
const PIPELINE: usize = 256;

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl KernelSync {
    pub fn new(handle: Handle, metric: u32) -> KernelSync {
        KernelSync { handle, metric }
    }

    fn message(&self, prefix: IpNetwork, target: Option<&Target>) -> RouteMessage {
        let mut m = match prefix {
            IpNetwork::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .build(),
            IpNetwork::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .build(),
        };
        m.header.protocol = RouteProtocol::Bird;
        if target.is_some() {
            m.attributes.push(RouteAttribute::Priority(self.metric));
        }
        // A delete names no metric, so it matches our protocol's route whatever its metric
        // (one left by a run with another metric included); the kernel still matches the
        // protocol, so other routes to the prefix are never touched.
        match target {
            // Any type and scope: the kernel matches a delete's type when it names one, so a
            // unicast delete would never remove a blackhole (it answers ESRCH, "gone").
            None => {
                m.header.kind = RouteType::Unspec;
                m.header.scope = RouteScope::NoWhere;
            }
            Some(Target::Blackhole) => m.header.kind = RouteType::BlackHole,
            Some(Target::Via(hops)) if hops.len() == 1 => {
                let h = &hops[0];
                m.attributes.push(gateway_attr(prefix, h.gateway));
                if let Some(i) = h.ifindex {
                    m.attributes.push(RouteAttribute::Oif(i));
                }
                if h.onlink {
                    m.header.flags |= RouteFlags::Onlink;
                }
            }
            Some(Target::Via(hops)) => {
                let nh = hops
                    .iter()
                    .map(|h| {
                        let mut n = RouteNextHop::default();
                        n.interface_index = h.ifindex.unwrap_or(0);
                        if h.onlink {
                            n.flags |= RouteNextHopFlags::Onlink;
                        }
                        n.attributes.push(gateway_attr(prefix, h.gateway));
                        n
                    })
                    .collect();
                m.attributes.push(RouteAttribute::MultiPath(nh));
            }
        }
        m
    }

    /// Installs or replaces one route.
    pub async fn install(&self, prefix: IpNetwork, target: &Target) -> Result<(), KernelError> {
        self.add(prefix, target, true).await
    }

    async fn add(
        &self,
        prefix: IpNetwork,
        target: &Target,
        replace: bool,
    ) -> Result<(), KernelError> {
        let m = self.message(prefix, Some(target));
        let req = self.handle.route().add(m);
        let (req, op) = if replace {
            (req.replace(), "replace")
        } else {
            (req, "create")
        };
        req.execute()
            .await
            .map_err(|source| KernelError::Route { prefix, op, source })
    }

    /// Applies writes, pipelined on the socket. Returns the failures; the rest are done.
    pub async fn write(&self, writes: Vec<Write>) -> Vec<KernelError> {
        futures::stream::iter(writes)
            .map(|w| async move {
                match w {
                    Write::Create(p, t) => self.add(p, &t, false).await,
                    Write::Replace(p, t) => self.add(p, &t, true).await,
                    Write::Remove(p) => self.remove(p).await,
                }
            })
            .buffer_unordered(PIPELINE)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await
    }

    /// Removes our route to `prefix`; one that is already gone is not an error.
    pub async fn remove(&self, prefix: IpNetwork) -> Result<(), KernelError> {
        let m = self.message(prefix, None);
        match self.handle.route().del(m).execute().await {
            Err(e) if is_errno(&e, 3) || is_errno(&e, 2) => Ok(()), // ESRCH / ENOENT
            r => r.map_err(|source| KernelError::Route {
                prefix,
                op: "delete",
                source,
            }),
        }
    }

    /// Applies many changes (Some: install, None: remove), pipelined on the socket.
    /// Returns the failures; the rest are in place.
    pub async fn apply(&self, changes: Vec<(IpNetwork, Option<Target>)>) -> Vec<KernelError> {
        let writes = changes
            .into_iter()
            .map(|(p, t)| match t {
                Some(t) => Write::Replace(p, t),
                None => Write::Remove(p),
            })
            .collect();
        self.write(writes).await
    }

    /// The prefixes of our (protocol 12) routes in the main table, both families.
    pub async fn installed(&self) -> Result<Vec<IpNetwork>, rtnetlink::Error> {
        Ok(self.routes().await?.into_iter().map(|r| r.0).collect())
    }

    /// Our (protocol 12) routes in the main table with their forms, as [`Target`]s; None
    /// for a route with another metric or a form Brindle does not make (it will be rewritten
    /// or purged, never kept by mistake).
    pub async fn routes(&self) -> Result<Vec<(IpNetwork, Option<Target>)>, rtnetlink::Error> {
        Ok(self.scan().await?.ours)
    }

    /// The main table, both families: our routes and the prefixes others hold.
    pub async fn scan(&self) -> Result<Scan, rtnetlink::Error> {
        let mut out = Scan::default();
        for filter in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(filter).execute();
            while let Some(r) = s.try_next().await? {
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                if table != RT_TABLE_MAIN {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(a) => address(a),
                    _ => None,
                });
                let plen = r.header.destination_prefix_length;
                let ip = dst.unwrap_or(
                    if r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6 {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    },
                );
                let Ok(n) = IpNetwork::new(ip, plen) else {
                    continue;
                };
                if r.header.protocol == RouteProtocol::Bird {
                    out.ours.push((n, self.target_of(&r)));
                } else {
                    out.foreign.insert(n);
                }
            }
        }
        Ok(out)
    }

    fn target_of(&self, r: &RouteMessage) -> Option<Target> {
        let metric = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(m) => Some(*m),
            _ => None,
        });
        // IPv6 stores a route added at metric 0 at its default, 1024 (IP6_RT_PRIO_USER).
        let v6 = r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
        let ours = match self.metric {
            0 if v6 => IP6_DEFAULT_METRIC,
            m => m,
        };
        if metric.unwrap_or(0) != ours {
            return None;
        }
        if r.header.kind == RouteType::BlackHole {
            return Some(Target::Blackhole);
        }
        if r.header.kind != RouteType::Unicast {
            return None;
        }
        let gateway = |attrs: &[RouteAttribute]| {
            attrs.iter().find_map(|a| match a {
                RouteAttribute::Gateway(a) => address(a),
                RouteAttribute::Via(RouteVia::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Via(RouteVia::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            })
        };
        let multipath = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::MultiPath(hops) => Some(hops),
            _ => None,
        });
        let hops = match multipath {
            Some(hops) => hops
                .iter()
                .map(|h| {
                    Some(NextHop {
                        gateway: gateway(&h.attributes)?,
                        ifindex: Some(h.interface_index),
                        onlink: h.flags.contains(RouteNextHopFlags::Onlink),
                    })
                })
                .collect::<Option<Vec<_>>>()?,
            None => vec![NextHop {
                gateway: gateway(&r.attributes)?,
                ifindex: r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }),
                onlink: r.header.flags.contains(RouteFlags::Onlink),
            }],
        };
        Some(Target::Via(hops))
    }

    /// On start: installs (replaces) every wanted route and removes protocol-12 routes that
    /// are not wanted (left by an earlier run). Routes of other protocols are never touched.
    pub async fn reconcile(
        &self,
        wanted: &[(IpNetwork, Target)],
    ) -> Result<(usize, usize), Vec<KernelError>> {
        let keep: HashSet<IpNetwork> = wanted.iter().map(|(p, _)| *p).collect();
        let stale: Vec<(IpNetwork, Option<Target>)> = match self.installed().await {
            Ok(v) => v
                .into_iter()
                .filter(|p| !keep.contains(p))
                .map(|p| (p, None))
                .collect(),
            Err(e) => return Err(vec![KernelError::List(e)]),
        };
        let purged = stale.len();
        let mut changes: Vec<(IpNetwork, Option<Target>)> =
            wanted.iter().map(|(p, t)| (*p, Some(t.clone()))).collect();
        changes.extend(stale);
        let errors = self.apply(changes).await;
        if errors.is_empty() {
            Ok((wanted.len(), purged))
        } else {
            Err(errors)
        }
    }
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn gateway_attr(prefix: IpNetwork, gw: IpAddr) -> RouteAttribute {
    match (prefix, gw) {
        (IpNetwork::V4(_), IpAddr::V4(g)) => RouteAttribute::Gateway(RouteAddress::Inet(g)),
        (IpNetwork::V6(_), IpAddr::V6(g)) => RouteAttribute::Gateway(RouteAddress::Inet6(g)),
        // RFC 5549 style: an IPv4 prefix via an IPv6 next hop.
        (_, g) => RouteAttribute::Via(match g {
            IpAddr::V4(a) => RouteVia::Inet(a),
            IpAddr::V6(a) => RouteVia::Inet6(a),
        }),
    }
}
