//! The lab's wires: bridges in the fabric namespace, node uplinks, and a BIRD router per rack.

use std::net::{Ipv4Addr, Ipv6Addr};

use brindle_testsupport::daemons::Bird;
use brindle_testsupport::Netns;

use crate::{rack_as, LabSpec, Tor};

/// What the routers take and give: the lab's pod ranges (pools are made inside it).
const PODS: &str = "10.0.0.0/8";
const PODS6: &str = "fd00::/8";

/// `n` written in hexadecimal reads as the decimal number (`2001:db8:18::12` for node 12).
fn dec(n: usize) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(0xffff)
}

/// A node's IPv6 underlay address: `2001:db8:18:<rack>::<10+k>`, the IPv4 one's twin.
pub fn node_ip6(rack: usize, k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, dec(rack), 0, 0, 0, dec(10 + k))
}

/// A rack's IPv6 gateway (the router's, or the fabric's).
pub fn tor_ip6(rack: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, dec(rack), 0, 0, 0, 1)
}

fn spine_ip6(rack: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0xff, 0, 0, 0, dec(rack + 1))
}

/// `ip addr add` without duplicate address detection (an address is usable at once, as
/// the lab's IPv4 ones are; nothing else is on these segments).
fn add6(ns: &Netns, addr: Ipv6Addr, dev: &str) {
    ns.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        dev,
        "nodad",
    ]);
}

/// A node's IPv4 underlay address: `198.18.<rack>.<10+k>`.
pub fn node_ip(rack: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, rack as u8, 10 + k as u8)
}

/// A rack's gateway: the router's address when there is one, else the fabric's own (the
/// fabric then routes between racks like a plain L3 underlay).
pub fn tor_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, rack as u8, 1)
}

fn spine_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 255, rack as u8 + 1)
}

pub fn fabric(f: &Netns, spec: &LabSpec) {
    let mut bridges: Vec<String> = (0..spec.racks).map(|r| format!("br{r}")).collect();
    if spec.tor {
        bridges.push("brspine".into());
    }
    forwarding(f, spec);
    for b in &bridges {
        f.ok(&["ip", "link", "add", b, "type", "bridge"]);
        f.ok(&["ip", "link", "set", b, "up"]);
    }
    if !spec.tor {
        for r in 0..spec.racks {
            let br = format!("br{r}");
            if spec.v4() {
                f.ok(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", tor_ip(r)),
                    "dev",
                    &br,
                ]);
            }
            if spec.v6() {
                add6(f, tor_ip6(r), &br);
            }
        }
    }
}

/// Forwarding on in a router's (or the fabric's) namespace, for the lab's families.
fn forwarding(ns: &Netns, spec: &LabSpec) {
    if spec.v4() {
        ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }
    if spec.v6() {
        ns.ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    }
}

/// The node's `eth0` on its rack's bridge, its addresses and default routes.
pub fn node_uplink(
    f: &Netns,
    ns: &Netns,
    rack: usize,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    i: usize,
) {
    let port = format!("nd{i}");
    ns.veth("eth0", f, &port);
    f.ok(&[
        "ip",
        "link",
        "set",
        &port,
        "master",
        &format!("br{rack}"),
        "up",
    ]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    if let Some(ip) = ip {
        ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        let gw = tor_ip(rack).to_string();
        ns.ok(&["ip", "route", "add", "default", "via", &gw]);
        ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }
    // IPv6 forwarding is the agent's to turn on (calico-node's Felix does it too).
    if let Some(ip6) = ip6 {
        add6(ns, ip6, "eth0");
        let gw = tor_ip6(rack).to_string();
        ns.ok(&["ip", "-6", "route", "add", "default", "via", &gw]);
    }
}

/// The slots of a rack's nodes as [`crate::Lab::up`] makes them (node k of the rack has
/// addresses `198.18.<rack>.<10+k>` and `2001:db8:18:<rack>::<10+k>`).
pub fn rack_slots(spec: &LabSpec, rack: usize) -> Vec<usize> {
    let per = spec.nodes.div_ceil(spec.racks.max(1)).max(1);
    let n = (0..spec.nodes).filter(|i| i / per == rack).count();
    (0..n).collect()
}

/// Calico's "AS per rack" design: the router shares its rack's AS, reflects between the
/// rack's nodes (iBGP), and speaks eBGP to the other racks' routers, rewriting the next hop
/// to itself for routes from there. Only pod ranges (10.0.0.0/8) are taken or given.
pub fn bird_conf(spec: &LabSpec, rack: usize, slots: &[usize]) -> String {
    let mut c = format!(
        "router id {};\nprotocol device {{ scan time 2; }}\n",
        spine_ip(rack)
    );
    if spec.v4() {
        c += &family_conf(spec, rack, slots, false);
    }
    if spec.v6() {
        // The same design over IPv6: one session per family, as the nodes have. (The router
        // ID stays an IPv4-formed identifier in an IPv6-only lab: BGP's is 32 bits.)
        c += &family_conf(spec, rack, slots, true);
    }
    c
}

/// One family's part of a rack router's configuration: its filter, kernel protocol, the
/// template for the rack's nodes, a session per node and per other rack's router.
fn family_conf(spec: &LabSpec, rack: usize, slots: &[usize], v6: bool) -> String {
    let asn = rack_as(spec, rack);
    let id = spine_ip(rack);
    let (s, channel, pods) = if v6 {
        ("6", "ipv6", PODS6)
    } else {
        ("", "ipv4", PODS)
    };
    let local = |r: usize| {
        if v6 {
            spine_ip6(r).to_string()
        } else {
            spine_ip(r).to_string()
        }
    };
    let mut c = format!(
        r#"filter pods{s} {{ if net ~ [ {pods}+ ] then accept; reject; }}
protocol kernel {{ {channel} {{ import none; export filter pods{s}; }}; merge paths on; }}
template bgp rack_node{s} {{
  local as {asn};
  rr client; rr cluster id {id}; direct;
  connect retry time 1; error wait time 1, 5;
  {channel} {{ import filter pods{s}; export filter pods{s}; next hop self ebgp; }};
}}
"#
    );
    for &k in slots {
        let ip = if v6 {
            node_ip6(rack, k).to_string()
        } else {
            node_ip(rack, k).to_string()
        };
        c += &format!("protocol bgp node{s}_{k} from rack_node{s} {{ neighbor {ip} as {asn}; }}\n");
    }
    for other in (0..spec.racks).filter(|r| *r != rack) {
        c += &format!(
            "protocol bgp rack{s}_{other} {{ local {} as {asn}; neighbor {} as {}; connect retry time 1; error wait time 1, 5; {channel} {{ import filter pods{s}; export filter pods{s}; }}; }}\n",
            local(rack),
            local(other),
            rack_as(spec, other)
        );
    }
    c
}

pub fn tor(f: &Netns, spec: &LabSpec, rack: usize) -> Tor {
    let ns = Netns::new("brl-tor");
    let (down, up) = (format!("tr{rack}"), format!("ts{rack}"));
    ns.veth("rack", f, &down);
    ns.veth("spine", f, &up);
    f.ok(&[
        "ip",
        "link",
        "set",
        &down,
        "master",
        &format!("br{rack}"),
        "up",
    ]);
    f.ok(&["ip", "link", "set", &up, "master", "brspine", "up"]);
    if spec.v4() {
        let (down4, up4) = (
            format!("{}/24", tor_ip(rack)),
            format!("{}/24", spine_ip(rack)),
        );
        ns.ok(&["ip", "addr", "add", &down4, "dev", "rack"]);
        ns.ok(&["ip", "addr", "add", &up4, "dev", "spine"]);
    }
    if spec.v6() {
        add6(&ns, tor_ip6(rack), "rack");
        add6(&ns, spine_ip6(rack), "spine");
    }
    ns.ok(&["ip", "link", "set", "rack", "up"]);
    ns.ok(&["ip", "link", "set", "spine", "up"]);
    // The underlay: the other racks' node subnets through their routers (static, as a
    // fabric's own routing would give them; BGP carries only the pod ranges). A node then
    // reaches every node's address, as a scraper or an operator's host does in a cluster.
    for other in (0..spec.racks).filter(|r| *r != rack) {
        if spec.v4() {
            let net = format!("198.18.{other}.0/24");
            let via = spine_ip(other).to_string();
            ns.ok(&["ip", "route", "add", &net, "via", &via, "dev", "spine"]);
        }
        if spec.v6() {
            let net = format!("2001:db8:18:{other}::/64");
            let via = spine_ip6(other).to_string();
            ns.ok(&[
                "ip", "-6", "route", "add", &net, "via", &via, "dev", "spine",
            ]);
        }
    }
    forwarding(&ns, spec);
    let bird = Bird::start(&ns, &bird_conf(spec, rack, &rack_slots(spec, rack)));
    Tor { rack, ns, bird }
}
