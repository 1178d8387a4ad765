//! Brindle as a route reflector (RFC 4456) for three BIRD clients on one LAN: each client
//! learns the others' prefixes with the originator's next hop, ORIGINATOR_ID and our
//! CLUSTER_LIST, and a withdraw passes through. The clients export alike, so they form one
//! update group: a change from one is encoded once for the other two.

use std::time::Duration;

use brindle_testsupport::daemons::{wait_for, Bird};
use brindle_testsupport::Netns;

use crate::common::bgpd::Bgpd;
use crate::{bird_route, BRINDLE_AS};

fn client(me: &str, route: &str) -> String {
    format!(
        r#"router id {me};
protocol device {{}}
protocol direct {{ ipv4; }}
protocol static s4 {{ ipv4; route {route} blackhole; }}
protocol bgp reflector {{
  local {me} as {BRINDLE_AS}; neighbor 198.18.0.1 as {BRINDLE_AS}; direct;
  connect delay time 1; connect retry time 2;
  ipv4 {{ import all; export where source = RTS_STATIC; gateway direct; }};
}}
"#
    )
}

#[test]
fn three_bird_clients_learn_each_other_through_the_reflector() {
    let rr = Netns::new("brlrr");
    rr.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    rr.ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "br0"]);
    rr.ok(&["ip", "link", "set", "br0", "up"]);
    let mut clients = vec![];
    for (i, addr) in ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
        .iter()
        .enumerate()
    {
        let ns = Netns::new("brlcl");
        let port = format!("p{i}");
        rr.veth(&port, &ns, "v0");
        rr.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        ns.ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "v0"]);
        ns.ok(&["ip", "link", "set", "v0", "up"]);
        clients.push((ns, *addr));
    }
    let a = Bird::start(&clients[0].0, &client("198.18.0.2", "10.245.2.0/26"));
    let b = Bird::start(&clients[1].0, &client("198.18.0.3", "10.245.3.0/26"));
    let c = Bird::start(&clients[2].0, &client("198.18.0.4", "10.245.4.0/26"));
    let peers: String = clients
        .iter()
        .map(|(_, addr)| {
            format!(
                "[[peer]]\naddress = \"{addr}\"\nasn = {BRINDLE_AS}\nrr_client = true\n\
                 families = [\"ipv4\"]\nconnect_retry = 1\n"
            )
        })
        .collect();
    let conf = format!(
        r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
cluster_id = "198.18.0.100"
listen = "0.0.0.0:179"
{peers}[[originate]]
prefix = "10.244.1.0/26"
"#
    );
    let d = Bgpd::start(&rr, &conf);
    d.wait_established("198.18.0.2");
    d.wait_established("198.18.0.3");
    d.wait_established("198.18.0.4");
    bird_route(
        &a,
        "10.245.3.0/26",
        &[
            "BGP.next_hop: 198.18.0.3",
            "BGP.originator_id: 198.18.0.3",
            "BGP.cluster_list: 198.18.0.100",
            "BGP.local_pref: 100",
        ],
    );
    bird_route(
        &b,
        "10.245.2.0/26",
        &[
            "BGP.next_hop: 198.18.0.2",
            "BGP.originator_id: 198.18.0.2",
            "BGP.cluster_list: 198.18.0.100",
        ],
    );
    for (bird, from) in [
        (&a, "198.18.0.4"),
        (&b, "198.18.0.4"),
        (&c, "198.18.0.2"),
        (&c, "198.18.0.3"),
    ] {
        let prefix = format!("10.245.{}.0/26", &from[from.len() - 1..]);
        let (nh, orig) = (
            format!("BGP.next_hop: {from}"),
            format!("BGP.originator_id: {from}"),
        );
        bird_route(
            bird,
            &prefix,
            &[&nh, &orig, "BGP.cluster_list: 198.18.0.100"],
        );
    }
    // Our own route is not reflected, so it has neither attribute.
    let own = a.birdc(&["show", "route", "all", "10.244.1.0/26"]);
    assert!(own.contains("BGP.next_hop: 198.18.0.1"), "{own}");
    assert!(
        !own.contains("originator_id") && !own.contains("cluster_list"),
        "{own}"
    );
    // A client never hears its own route back (split horizon toward the originator).
    let back = a.birdc(&["show", "route", "all", "10.245.2.0/26"]);
    assert!(!back.contains("BGP.cluster_list"), "{back}");
    a.birdc(&["disable", "s4"]);
    for (name, bird) in [("B", &b), ("C", &c)] {
        wait_for(
            &format!("the withdraw to reach {name}"),
            Duration::from_secs(30),
            || {
                let out = bird.birdc(&["show", "route", "10.245.2.0/26"]);
                (!out.contains("10.245.2.0/26")).then_some(())
            },
        );
    }
}
