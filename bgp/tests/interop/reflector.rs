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
    client_with(me, route, "", "")
}

/// A client with `extra` static routes and `session` options.
fn client_with(me: &str, route: &str, extra: &str, session: &str) -> String {
    format!(
        r#"router id {me};
protocol device {{}}
protocol direct {{ ipv4; }}
protocol static s4 {{ ipv4; route {route} blackhole; {extra} }}
protocol bgp reflector {{
  local {me} as {BRINDLE_AS}; neighbor 198.18.0.1 as {BRINDLE_AS}; direct;
  connect delay time 1; connect retry time 2; {session}
  ipv4 {{ import all; export where source = RTS_STATIC; gateway direct; }};
}}
"#
    )
}

/// The reflector's namespace with a bridge, a client namespace on it per conf (198.18.0.2
/// and up), BIRD in each, and brindle-bgpd reflecting between them, every session up.
fn lab(confs: &[String]) -> (Vec<Bird>, Bgpd, Vec<Netns>) {
    let rr = Netns::new("brlrr");
    rr.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    rr.ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "br0"]);
    rr.ok(&["ip", "link", "set", "br0", "up"]);
    let mut clients = vec![];
    let addrs: Vec<String> = (0..confs.len())
        .map(|i| format!("198.18.0.{}", i + 2))
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        let ns = Netns::new("brlcl");
        let port = format!("p{i}");
        rr.veth(&port, &ns, "v0");
        rr.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        ns.ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "v0"]);
        ns.ok(&["ip", "link", "set", "v0", "up"]);
        clients.push((ns, addr.clone()));
    }
    let birds: Vec<Bird> = clients
        .iter()
        .zip(confs.iter())
        .map(|((ns, _), conf)| Bird::start(ns, conf))
        .collect();
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
    for (_, addr) in &clients {
        d.wait_established(addr);
    }
    let mut nss = vec![rr];
    nss.extend(clients.into_iter().map(|(ns, _)| ns));
    (birds, d, nss)
}

#[test]
fn three_bird_clients_learn_each_other_through_the_reflector() {
    let (birds, _d, _nss) = lab(&[
        client("198.18.0.2", "10.245.2.0/26"),
        client("198.18.0.3", "10.245.3.0/26"),
        client("198.18.0.4", "10.245.4.0/26"),
    ]);
    let (a, b, c) = (&birds[0], &birds[1], &birds[2]);
    bird_route(
        a,
        "10.245.3.0/26",
        &[
            "BGP.next_hop: 198.18.0.3",
            "BGP.originator_id: 198.18.0.3",
            "BGP.cluster_list: 198.18.0.100",
            "BGP.local_pref: 100",
        ],
    );
    bird_route(
        b,
        "10.245.2.0/26",
        &[
            "BGP.next_hop: 198.18.0.2",
            "BGP.originator_id: 198.18.0.2",
            "BGP.cluster_list: 198.18.0.100",
        ],
    );
    for (bird, from) in [
        (a, "198.18.0.4"),
        (b, "198.18.0.4"),
        (c, "198.18.0.2"),
        (c, "198.18.0.3"),
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
    for (name, bird) in [("B", b), ("C", c)] {
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

/// A client that negotiated extended messages (RFC 8654) with the reflector announces a
/// route whose attributes (1,020 communities, ~4.1 KB) fit its UPDATE but not one of 4,096
/// octets. The two clients without extended messages (one update group) get a withdraw for
/// it instead of an oversized message that would reset both; the one with extended messages
/// gets the route; no session resets.
#[test]
fn a_reflected_route_too_big_for_an_update_is_withdrawn_not_sent_oversized() {
    let big: String = (1..=1020)
        .map(|i| format!("bgp_community.add((65000,{i}));"))
        .collect();
    let extra = format!("route 10.245.9.0/26 blackhole {{ {big} }};");
    let ext = "enable extended messages on;";
    let (birds, d, _nss) = lab(&[
        client_with("198.18.0.2", "10.245.2.0/26", &extra, ext),
        client("198.18.0.3", "10.245.3.0/26"),
        client("198.18.0.4", "10.245.4.0/26"),
        client_with("198.18.0.5", "10.245.5.0/26", "", ext),
    ]);
    let start = std::time::Instant::now();
    while d.route("10.245.9.0/26").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the big route never reached the reflector:\n{}\n{}",
            birds[0].birdc(&["show", "protocols", "all", "reflector"]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The client with extended messages gets it; the normal route goes to everyone.
    bird_route(
        &birds[3],
        "10.245.9.0/26",
        &["BGP.originator_id: 198.18.0.2"],
    );
    for b in &birds[1..] {
        bird_route(b, "10.245.2.0/26", &["BGP.originator_id: 198.18.0.2"]);
    }
    crate::wait_output(
        "the reflector's log",
        || d.log(),
        &["leave no room for it in an UPDATE of the negotiated size"],
    );
    std::thread::sleep(Duration::from_secs(3));
    for (bird, name) in [(&birds[1], "B"), (&birds[2], "C")] {
        let r = bird.birdc(&["show", "route", "10.245.9.0/26"]);
        assert!(
            !r.contains("10.245.9.0/26"),
            "{name} has the oversized route: {r}"
        );
        let p = bird.birdc(&["show", "protocols", "reflector"]);
        assert!(p.contains("Established"), "{name}: {p}");
    }
    for addr in ["198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5"] {
        let p = d.peer(addr);
        assert_eq!(p.state, "Established", "{addr}: {p:?}");
        assert!(
            p.last_error.is_none(),
            "{addr} was reset: {p:?}\n{}",
            d.log()
        );
    }
}
