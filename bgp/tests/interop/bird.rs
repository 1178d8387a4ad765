//! BIRD 2 as the peer.

use brindle_testsupport::daemons::Bird;

use crate::common::bgpd::Bgpd;
use crate::*;

/// BIRD's config: statics as described in main.rs, one session per family.
/// `routes4` are the IPv4 statics (the first gets the communities).
fn conf(asn: u32, routes4: &[&str], session_extra: &str) -> String {
    let mut statics = String::new();
    for (i, r) in routes4.iter().enumerate() {
        if i == 0 {
            statics += &format!(
                "route {r} blackhole {{ bgp_community.add((65001,7)); bgp_large_community.add((4200000001,1,1)); }};\n"
            );
        } else {
            statics += &format!("route {r} blackhole;\n");
        }
    }
    format!(
        r#"router id 198.18.0.2;
protocol device {{}}
protocol direct {{ ipv4; ipv6; }}
protocol static s4 {{ ipv4; {statics} }}
protocol static s6 {{ ipv6; route fd00:20::/122 blackhole; }}
template bgp t {{
  local as {asn}; {direct}
  connect delay time 1; connect retry time 2; error wait time 1, 4;
  {session_extra}
}}
protocol bgp b4 from t {{
  source address 198.18.0.2; neighbor 198.18.0.1 as {BRINDLE_AS};
  ipv4 {{ import all; export where source = RTS_STATIC; gateway direct; }};
}}
protocol bgp b6 from t {{
  source address fd00:18::2; neighbor fd00:18::1 as {BRINDLE_AS};
  ipv6 {{ import all; export where source = RTS_STATIC; gateway direct; }};
}}
"#,
        direct = if asn == BRINDLE_AS { "direct;" } else { "" }
    )
}

#[test]
fn ebgp_with_4_octet_as_both_families_communities_and_withdraw() {
    let p = pair();
    let bird = Bird::start(&p.peer, &conf(PEER_AS, &["10.245.0.0/26"], ""));
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    check_exchange(&p, &b, &[PEER_AS]);
    bird_route(
        &bird,
        "10.244.1.0/26",
        &[
            "BGP.as_path: 64512",
            "BGP.next_hop: 198.18.0.1",
            "BGP.community: (64512,100)",
            "BGP.large_community: (64512, 1, 2)",
        ],
    );
    bird_route(
        &bird,
        "fd00:10::/122",
        &["BGP.as_path: 64512", "BGP.next_hop: fd00:18::1"],
    );
    // Route refresh (RFC 2918): BIRD keeps no Adj-RIB-In, so `reload in` asks us for our
    // routes again; we answer with the table and End-of-RIB, and BIRD still has them.
    bird.birdc(&["reload", "in", "b4"]);
    wait_output(
        "Brindle's log",
        || b.log(),
        &["route refresh answered peer=198.18.0.2 family=Ipv4 routes=1"],
    );
    bird_route(&bird, "10.244.1.0/26", &["BGP.community: (64512,100)"]);
    bird.birdc(&["disable", "s4"]);
    bird.birdc(&["disable", "s6"]);
    check_withdrawn(&p, &b);
}

#[test]
fn ibgp_both_families() {
    let p = pair();
    let bird = Bird::start(&p.peer, &conf(BRINDLE_AS, &["10.245.0.0/26"], ""));
    let b = Bgpd::start(&p.brl, &brindle_conf(BRINDLE_AS, ""));
    check_exchange(&p, &b, &[]);
    bird_route(
        &bird,
        "10.244.1.0/26",
        &[
            "BGP.next_hop: 198.18.0.1",
            "BGP.local_pref: 100",
            "BGP.community: (64512,100)",
        ],
    );
    bird_route(&bird, "fd00:10::/122", &["BGP.next_hop: fd00:18::1"]);
}

#[test]
fn md5_password_right_and_wrong() {
    let p = pair();
    let _bird = Bird::start(
        &p.peer,
        &conf(PEER_AS, &["10.245.0.0/26"], "password \"s3cret-md5\";"),
    );
    check_md5(&p);
}

const GR: &str = "graceful restart on; graceful restart time 60;";

/// BIRD with graceful restart and 10.245.0.0/26 + 10.245.0.64/26, Brindle with them in its
/// kernel.
fn start_with_graceful_restart(p: &Pair) -> (Bird, Bgpd) {
    let bird = Bird::start(
        &p.peer,
        &conf(PEER_AS, &["10.245.0.0/26", "10.245.0.64/26"], GR),
    );
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    wait_kernel(&p.brl, &GR_BEFORE, &b);
    (bird, b)
}

#[test]
fn graceful_restart_keeps_routes_then_sweeps_after_end_of_rib() {
    let p = pair();
    let (bird, b) = start_with_graceful_restart(&p);
    // BIRD crashes: no NOTIFICATION, the TCP connection just closes.
    let dir = bird.kill();
    check_kept_while_down(&p, &b);
    // BIRD comes back (recovering, -R) without 10.245.0.64/26 and with a new route.
    let _bird = Bird::start_in(
        &p.peer,
        dir,
        &conf(PEER_AS, &["10.245.0.0/26", "10.245.0.128/26"], GR),
        &["-R"],
    );
    check_swept_after_eor(&p, &b);
    let log = b.log();
    assert!(
        log.contains("stale routes swept peer=198.18.0.2 family=Ipv4 swept=1"),
        "{log}"
    );
}

/// Brindle is the restarting speaker: stopped with graceful restart on, its kernel routes
/// stay (forwarding goes on) and BIRD keeps its routes; started again, it finds its routes,
/// says it is restarting, and once BIRD's End-of-RIB is in purges what BIRD no longer has.
#[test]
fn brindle_restarts_gracefully_and_keeps_forwarding() {
    let p = pair();
    let (bird, b) = start_with_graceful_restart(&p);
    bird_route(&bird, "10.244.1.0/26", &["BGP.next_hop: 198.18.0.1"]);
    let dir = b.terminate();
    // Stopped: our kernel routes are all still there, and BIRD keeps our route (stale).
    assert_eq!(kernel_routes(&p.brl), set(&GR_BEFORE));
    bird_route(&bird, "10.244.1.0/26", &["BGP.next_hop: 198.18.0.1"]);
    // While we are down, BIRD drops one of its routes.
    bird.birdc(&["disable", "s4"]);
    std::fs::write(
        bird.dir.path().join("bird.conf"),
        conf(PEER_AS, &["10.245.0.0/26"], GR),
    )
    .expect("bird.conf");
    bird.birdc(&["configure"]);
    bird.birdc(&["enable", "s4"]);
    let b = Bgpd::start_in(&p.brl, dir, &brindle_conf(PEER_AS, ""));
    wait_kernel(
        &p.brl,
        &[
            "10.245.0.0/26 via 198.18.0.2",
            "blackhole 10.244.1.0/26",
            "fd00:20::/122 via fd00:18::2",
            "blackhole fd00:10::/122",
        ],
        &b,
    );
    let log = b.log();
    assert!(
        log.contains("kept protocol-12 routes of the last run while we restart"),
        "{log}"
    );
    assert!(
        log.contains("converged after restart: purged routes not learned again purged=1"),
        "{log}"
    );
}
