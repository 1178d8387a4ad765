//! The lab's wires: bridges in the fabric namespace, node uplinks, and a BIRD router per rack.

use std::net::Ipv4Addr;

use brindle_testsupport::daemons::Bird;
use brindle_testsupport::Netns;

use crate::{rack_as, LabSpec, Tor};

/// What the routers take and give: the lab's pod ranges (pools are made inside it).
const PODS: &str = "10.0.0.0/8";

/// A rack's gateway: the router's address when there is one, else the fabric's own (the
/// fabric then routes between racks like a plain L3 underlay).
pub fn tor_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, rack as u8, 1)
}

fn spine_ip(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 255, rack as u8 + 1)
}

pub fn fabric(f: &Netns, spec: &LabSpec) {
    f.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let mut bridges: Vec<String> = (0..spec.racks).map(|r| format!("br{r}")).collect();
    if spec.tor {
        bridges.push("brspine".into());
    }
    for b in &bridges {
        f.ok(&["ip", "link", "add", b, "type", "bridge"]);
        f.ok(&["ip", "link", "set", b, "up"]);
    }
    if !spec.tor {
        for r in 0..spec.racks {
            f.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", tor_ip(r)),
                "dev",
                &format!("br{r}"),
            ]);
        }
    }
}

/// The node's `eth0` on its rack's bridge, its address and default route.
pub fn node_uplink(f: &Netns, ns: &Netns, rack: usize, ip: Ipv4Addr, i: usize) {
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
    ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &tor_ip(rack).to_string(),
    ]);
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
}

/// Node addresses of a rack (the same rule as [`crate::Lab::up`]).
fn rack_nodes(spec: &LabSpec, rack: usize) -> Vec<Ipv4Addr> {
    let per = spec.nodes.div_ceil(spec.racks.max(1)).max(1);
    (0..spec.nodes)
        .filter(|i| i / per == rack)
        .enumerate()
        .map(|(k, _)| Ipv4Addr::new(198, 18, rack as u8, 10 + k as u8))
        .collect()
}

/// Calico's "AS per rack" design: the router shares its rack's AS, reflects between the
/// rack's nodes (iBGP), and speaks eBGP to the other racks' routers, rewriting the next hop
/// to itself for routes from there. Only pod ranges (10.0.0.0/8) are taken or given.
pub fn bird_conf(spec: &LabSpec, rack: usize) -> String {
    let asn = rack_as(spec, rack);
    let id = spine_ip(rack);
    let mut c = format!(
        r#"router id {id};
protocol device {{ scan time 2; }}
filter pods {{ if net ~ [ {PODS}+ ] then accept; reject; }}
protocol kernel {{ ipv4 {{ import none; export filter pods; }}; merge paths on; }}
template bgp rack_node {{
  local as {asn};
  rr client; rr cluster id {id}; direct;
  connect retry time 1; error wait time 1, 5;
  ipv4 {{ import filter pods; export filter pods; next hop self ebgp; }};
}}
"#
    );
    for (k, ip) in rack_nodes(spec, rack).iter().enumerate() {
        c += &format!("protocol bgp node_{k} from rack_node {{ neighbor {ip} as {asn}; }}\n");
    }
    for other in (0..spec.racks).filter(|r| *r != rack) {
        c += &format!(
            "protocol bgp rack_{other} {{ local {id} as {asn}; neighbor {} as {}; connect retry time 1; error wait time 1, 5; ipv4 {{ import filter pods; export filter pods; }}; }}\n",
            spine_ip(other),
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
    ns.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", tor_ip(rack)),
        "dev",
        "rack",
    ]);
    ns.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", spine_ip(rack)),
        "dev",
        "spine",
    ]);
    ns.ok(&["ip", "link", "set", "rack", "up"]);
    ns.ok(&["ip", "link", "set", "spine", "up"]);
    ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let bird = Bird::start(&ns, &bird_conf(spec, rack));
    Tor { rack, ns, bird }
}
