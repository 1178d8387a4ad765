//! The pod's network, Calico's routed model: a veth pair, the pod side `eth0` with a /32
//! (and /128) and `default via 169.254.1.1`, the host side answering ARP for it (proxy ARP)
//! with a `/32 dev <veth> scope link` route pointing at the pod.
//!
//! Netlink sockets belong to the network namespace they were opened in. The socket for the
//! pod's namespace is opened there ([`pod_handle`]); everything else runs in the host's.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
pub use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
pub use rtnetlink::Handle;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::spec::{code, CniError, CniResult};

/// The gateway every pod routes through; the host veth answers ARP for it.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host veth's MAC, as in Calico; its link-local address is the pod's IPv6 gateway.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

fn nl(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::NETLINK, format!("{what}"), e.to_string())
}

pub use brindle_felix_lite::workloads::attachment_veth_name;

/// A netlink handle inside the network namespace `netns` (opened from a path such as
/// `/var/run/netns/x` or `/proc/<pid>/ns/net`), served by the caller's runtime like the host
/// handle. A netlink socket belongs for good to the namespace it was opened in, so this
/// thread enters the pod's namespace only for the one `socket()` call and returns at once:
/// no thread of its own, no second runtime, and nothing else runs in between.
pub fn pod_handle(netns: &File, path: &str) -> CniResult<Handle> {
    use nix::sched::{setns, CloneFlags};
    let here = File::open("/proc/thread-self/ns/net").map_err(|e| {
        CniError::new(
            code::IO,
            "cannot open this thread's network namespace",
            e.to_string(),
        )
    })?;
    setns(netns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| nl(format!("entering network namespace {path}"), e))?;
    let opened = rtnetlink::new_connection();
    setns(&here, CloneFlags::CLONE_NEWNET).map_err(|e| {
        nl(
            format!("returning from network namespace {path} to the host's"),
            e,
        )
    })?;
    let (conn, handle, _) =
        opened.map_err(|e| nl(format!("opening a netlink socket in {path}"), e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle in the process's own (host) namespace.
pub fn host_handle() -> CniResult<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| nl("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn link_by_name(h: &Handle, name: &str) -> CniResult<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"), e)),
    }
}

pub fn mac_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

/// Deletes a link by name if it exists (its veth peer goes with it).
pub async fn delete_link(h: &Handle, name: &str) -> CniResult<bool> {
    let Some(l) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    delete_index(h, l.header.index, name).await
}

/// Creates the veth pair: `host` here and up, `pod_if` directly inside the pod's namespace,
/// down (the kernel would open the peer before the pair is joined: ENOTCONN), brought up
/// by the caller. Nothing can flow before the pod has an address and routes.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    pod_if: &str,
    mtu: u32,
    netns: &File,
) -> CniResult<()> {
    use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
    let peer = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod_if.to_owned())
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = rtnetlink::LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_owned())
        .mtu(mtu)
        .address(HOST_MAC.to_vec())
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| nl(format!("creating veth {host} <-> {pod_if}"), e))
}

/// Marks a pod's host veth with its attachment, so that a DEL can tell its own veth from
/// a newer sandbox's of the same name.
pub async fn set_owner(h: &Handle, l: &LinkMessage, owner: &str) -> CniResult<()> {
    h.link()
        .set(
            LinkUnspec::new_with_index(l.header.index)
                .alias(owner.to_owned())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl(format!("marking link {} as {owner}", l.header.index), e))
}

/// The attachment a host veth was made for ([`set_owner`]), if it is marked.
pub fn owner_of(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

/// Deletes a link by index (its veth peer goes with it); one already gone is fine.
pub async fn delete_index(h: &Handle, index: u32, what: &str) -> CniResult<bool> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(false),
        Err(e) => Err(nl(format!("deleting link {what}"), e)),
    }
}

pub async fn set_up(h: &Handle, l: &LinkMessage) -> CniResult<()> {
    h.link()
        .set(LinkUnspec::new_with_index(l.header.index).up().build())
        .execute()
        .await
        .map_err(|e| nl(format!("setting link {} up", l.header.index), e))
}

/// `<ip>/32 dev <index> scope link` (or /128), replacing any route to the same prefix.
pub fn host_route(ip: IpAddr, index: u32) -> RouteMessage {
    match ip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
    }
}

pub async fn add_route(h: &Handle, r: RouteMessage, what: &str) -> CniResult<()> {
    h.route()
        .add(r)
        .replace()
        .execute()
        .await
        .map_err(|e| nl(what, e))
}

/// The metric of a secondary interface's default route: it never competes with the primary
/// interface's (metric 0) and takes over only if that one is gone.
pub const SECONDARY_DEFAULT_METRIC: u32 = 1000;

/// Inside the pod, on interface `idx` (`ifname`): address, gateway route, default route.
/// The primary interface gets `169.254.1.1 dev <if> scope link` and `default via
/// 169.254.1.1`; a secondary one gets only `default via 169.254.1.1 dev <if> onlink metric
/// 1000`, leaving the primary's routes alone.
pub async fn configure_pod_side(
    h: &Handle,
    ifname: &str,
    idx: u32,
    ips: &[IpAddr],
    primary: bool,
) -> CniResult<()> {
    for ip in ips {
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        let mut req = h.address().add(idx, *ip, plen).replace();
        if ip.is_ipv6() {
            // The address is ours by IPAM: skip duplicate address detection (and the second
            // or so it would keep the address unusable).
            use rtnetlink::packet_route::address::AddressHeaderFlags;
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .map_err(|e| nl(format!("adding {ip}/{plen} to {ifname}"), e))?;
    }
    if !primary {
        let table = secondary_table(idx);
        if ips.iter().any(IpAddr::is_ipv4) {
            for t in [None, Some(table)] {
                let mut def = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(GATEWAY_V4)
                    .output_interface(idx)
                    .onlink()
                    .priority(SECONDARY_DEFAULT_METRIC);
                if let Some(t) = t {
                    def = def.table_id(t);
                }
                add_route(
                    h,
                    def.build(),
                    "adding the secondary default route in the pod",
                )
                .await?;
            }
        }
        if ips.iter().any(IpAddr::is_ipv6) {
            for t in [None, Some(table)] {
                let mut def = RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(GATEWAY_V6)
                    .output_interface(idx)
                    .priority(SECONDARY_DEFAULT_METRIC);
                if let Some(t) = t {
                    def = def.table_id(t);
                }
                add_route(
                    h,
                    def.build(),
                    "adding the secondary IPv6 default route in the pod",
                )
                .await?;
            }
        }
        for ip in ips {
            add_source_rule(h, *ip, table).await?;
        }
        return Ok(());
    }
    if ips.iter().any(IpAddr::is_ipv4) {
        let gw = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(GATEWAY_V4, 32)
            .output_interface(idx)
            .scope(RouteScope::Link)
            .build();
        add_route(h, gw, "adding the 169.254.1.1 route in the pod").await?;
        let def = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_V4)
            .output_interface(idx)
            .build();
        add_route(h, def, "adding the default route in the pod").await?;
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        let def = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(GATEWAY_V6)
            .output_interface(idx)
            .build();
        add_route(h, def, "adding the IPv6 default route in the pod").await?;
    }
    Ok(())
}

/// Inside a pod, a secondary attachment's addresses are routed by source: `from <ip> lookup
/// <table>` with that interface's own default route in the table. A reply from eth1's
/// address then leaves by eth1, the interface its address is routed to on the host, and the
/// host's reverse-path check (anti-spoofing) accepts it; by the main table it would leave
/// by eth0 and be dropped as spoofed.
pub const SOURCE_RULE_PRIORITY: u32 = 100;

/// The routing table of the secondary interface with index `pod_index` in its pod.
pub fn secondary_table(pod_index: u32) -> u32 {
    1000 + pod_index
}

/// `from <ip> lookup <table>`, replacing such rules of ours for `ip` (a repeated ADD made the
/// interface anew, with another index).
async fn add_source_rule(h: &Handle, ip: IpAddr, table: u32) -> CniResult<()> {
    remove_source_rules(h, |r| rule_source(r) == Some(ip)).await?;
    let add = h
        .rule()
        .add()
        .table_id(table)
        .priority(SOURCE_RULE_PRIORITY)
        .action(rtnetlink::packet_route::rule::RuleAction::ToTable);
    let done = match ip {
        IpAddr::V4(a) => add.v4().source_prefix(a, 32).execute().await,
        IpAddr::V6(a) => add.v6().source_prefix(a, 128).execute().await,
    };
    done.map_err(|e| {
        nl(
            format!("adding the rule from {ip} lookup {table} in the pod"),
            e,
        )
    })
}

fn rule_source(r: &RuleMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    })
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Deletes the pod's source rules of ours (our priority) that `which` picks, both families.
pub async fn remove_source_rules(
    h: &Handle,
    which: impl Fn(&RuleMessage) -> bool,
) -> CniResult<()> {
    for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let rules: Vec<RuleMessage> = h
            .rule()
            .get(v)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl("listing the pod's routing rules", e))?;
        for r in rules {
            let ours = r
                .attributes
                .contains(&RuleAttribute::Priority(SOURCE_RULE_PRIORITY));
            if ours && which(&r) {
                match h.rule().del(r).execute().await {
                    Ok(()) => {}
                    // ENOENT: gone already.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -2 => {}
                    Err(e) => return Err(nl("deleting a routing rule in the pod", e)),
                }
            }
        }
    }
    Ok(())
}

/// Deletes a secondary interface's source rules in the pod (its table's); its routes go
/// with the interface.
pub async fn remove_secondary_rules(h: &Handle, pod_index: u32) -> CniResult<()> {
    let table = secondary_table(pod_index);
    remove_source_rules(h, |r| rule_table(r) == table).await
}

/// Sets one sysctl under /proc/sys (this process's network namespace), unless it already
/// has the value: a new interface inherits most from `conf/default`, and a write of some
/// (`forwarding`) takes the kernel's RTNL lock, which every pod being wired at the same
/// moment waits on (the kernel retries the write while another holds it).
pub fn sysctl(path: &str, value: &str) -> CniResult<()> {
    if read_sysctl(path).as_deref() == Some(value) {
        return Ok(());
    }
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|e| {
        CniError::new(
            code::IO,
            format!("writing {value} to {full}"),
            e.to_string(),
        )
    })
}

pub fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The routes in this namespace's main table, as (destination, prefix, gateway, oif).
pub async fn routes(
    h: &Handle,
    v6: bool,
) -> CniResult<Vec<(Option<IpAddr>, u8, Option<IpAddr>, Option<u32>)>> {
    let filter = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut s = h.route().get(filter).execute();
    let mut out = vec![];
    while let Some(r) = s.try_next().await.map_err(|e| nl("listing routes", e))? {
        let mut dst = None;
        let mut gw = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_addr(d),
                RouteAttribute::Gateway(g) => gw = route_addr(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        out.push((dst, r.header.destination_prefix_length, gw, oif));
    }
    Ok(out)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The addresses on a link, as plain IPs.
pub async fn addresses(h: &Handle, index: u32) -> CniResult<Vec<IpAddr>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut s = h.address().get().set_link_index_filter(index).execute();
    let mut out = vec![];
    while let Some(a) = s.try_next().await.map_err(|e| nl("listing addresses", e))? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(ip) = attr {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}
