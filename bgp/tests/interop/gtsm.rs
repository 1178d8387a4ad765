//! GTSM (RFC 5082) with BIRD's `ttl security on`: directly connected, and two hops apart
//! through a router namespace that decrements the TTL.
//!
//! ```text
//!   direct:  Brindle 198.18.0.1 ───────────────────────────── BIRD 198.18.0.2
//!   routed:  Brindle 198.18.0.1 ── router (.254 / .254) ── BIRD 198.18.1.2
//! ```

use brindle_testsupport::daemons::{link, wait_for, Bird};
use brindle_testsupport::Netns;

use crate::common::bgpd::Bgpd;
use crate::*;

fn bird_conf(neighbor: &str, source: &str, gtsm: &str) -> String {
    format!(
        r#"router id {source};
protocol device {{}}
protocol static s4 {{ ipv4; route 10.245.0.0/26 blackhole; }}
protocol bgp b4 {{
  local as {PEER_AS}; source address {source}; neighbor {neighbor} as {BRINDLE_AS};
  connect delay time 1; connect retry time 2; error wait time 1, 4;
  {gtsm}
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

/// No kernel sync: the routed case's next hop is not on a link of ours.
fn brindle(peer: &str, extra: &str) -> String {
    format!(
        r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
listen = "0.0.0.0:179"
[[peer]]
address = "{peer}"
asn = {PEER_AS}
families = ["ipv4"]
connect_retry = 1
{extra}
[[originate]]
prefix = "10.244.1.0/26"
"#
    )
}

fn exchanged(b: &Bgpd, bird: &Bird, peer: &str) {
    b.wait_established(peer);
    wait_for("BIRD's route", std::time::Duration::from_secs(30), || {
        b.route("10.245.0.0/26")
    });
    bird_route(bird, "10.244.1.0/26", &["BGP.as_path: 64512"]);
}

#[test]
fn gtsm_with_a_directly_connected_peer() {
    let p = pair();
    let bird = Bird::start(
        &p.peer,
        &bird_conf("198.18.0.1", "198.18.0.2", "ttl security on;"),
    );
    // Our packets leave with TTL 255: BIRD, which accepts no less, takes the session.
    let b = Bgpd::start(&p.brl, &brindle("198.18.0.2", "ttl_security = 1"));
    exchanged(&b, &bird, "198.18.0.2");
    // Without GTSM our packets carry TTL 1 (a directly connected eBGP peer): BIRD drops them.
    let dir = b.terminate();
    let b = Bgpd::start_in(&p.brl, dir, &brindle("198.18.0.2", ""));
    bird_never_takes(&b, &bird, 8);
}

/// BIRD's session stays short of Established for `secs` seconds, and its route never reaches
/// us. (BIRD may still hold ours from the GTSM session before, kept through our graceful
/// restart.) (Our side can reach Established for a moment: BIRD sets its minimum TTL on a socket
/// after accepting it, so our OPEN, queued before that, is read and answered with OPEN and
/// KEEPALIVE; our KEEPALIVE back is then dropped. BIRD never gets further than OpenConfirm.)
fn bird_never_takes(b: &Bgpd, bird: &Bird, secs: u64) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        let st = bird.birdc(&["show", "protocols", "b4"]);
        assert!(
            !st.contains("Established"),
            "BIRD took the session: {st}\n{}",
            b.log()
        );
        assert!(
            b.route("10.245.0.0/26").is_none(),
            "BIRD's route arrived\n{}",
            b.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn gtsm_drops_a_peer_further_away_than_configured() {
    let brl = Netns::new("brlg");
    let rtr = Netns::new("brlgr");
    let peer = Netns::new("brlgp");
    link(
        &brl,
        &rtr,
        ("198.18.0.1", "fd00:18::1"),
        ("198.18.0.254", "fd00:18::fe"),
    );
    rtr.veth("v1", &peer, "v0");
    rtr.ok(&["ip", "addr", "add", "198.18.1.254/24", "dev", "v1"]);
    rtr.ok(&["ip", "link", "set", "v1", "up"]);
    peer.ok(&["ip", "addr", "add", "198.18.1.2/24", "dev", "v0"]);
    peer.ok(&["ip", "link", "set", "v0", "up"]);
    rtr.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    brl.ok(&["ip", "route", "add", "198.18.1.0/24", "via", "198.18.0.254"]);
    peer.ok(&["ip", "route", "add", "198.18.0.0/24", "via", "198.18.1.254"]);

    let bird = Bird::start(
        &peer,
        &bird_conf("198.18.0.1", "198.18.1.2", "ttl security on; multihop 2;"),
    );
    // BIRD's packets leave with 255 and arrive with 254: one hop is too few, so the kernel
    // drops them and no session comes up.
    // BIRD's own connections are refused by the TTL of their SYN, so BIRD never gets our
    // OPEN and KEEPALIVE either.
    let b = Bgpd::start(&brl, &brindle("198.18.1.2", "ttl_security = 1"));
    bird_never_takes(&b, &bird, 8);
    never_established(&b, "198.18.1.2", 1);
    let log = b.log();
    assert!(
        log.contains("its SYN arrived with TTL 254, and GTSM (1 hops) accepts no less than 255"),
        "BIRD's connections are refused at accept\n{log}"
    );
    // Two hops: 254 is enough.
    let dir = b.terminate();
    let b = Bgpd::start_in(&brl, dir, &brindle("198.18.1.2", "ttl_security = 2"));
    exchanged(&b, &bird, "198.18.1.2");
}
