//! GoBGP as the peer: routes are added and deleted through its CLI.

use brindle_testsupport::daemons::Gobgp;

use crate::common::bgpd::Bgpd;
use crate::*;

fn neighbor(addr: &str, family: &str, gr: bool) -> String {
    let gr_block = if gr {
        "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 60\n"
    } else {
        ""
    };
    let mp_gr = if gr {
        r#"    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"#
    } else {
        ""
    };
    format!(
        r#"[[neighbors]]
  [neighbors.config]
    neighbor-address = "{addr}"
    peer-as = {BRINDLE_AS}
  [neighbors.timers.config]
    connect-retry = 1
{gr_block}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{family}"
{mp_gr}"#
    )
}

fn conf(asn: u32, gr: bool) -> String {
    format!(
        r#"[global.config]
  as = {asn}
  router-id = "198.18.0.2"
  port = 179
{}{}"#,
        neighbor("198.18.0.1", "ipv4-unicast", gr),
        neighbor("fd00:18::1", "ipv6-unicast", gr)
    )
}

fn add_routes(g: &Gobgp, v4: &[&str]) {
    for (i, r) in v4.iter().enumerate() {
        let mut args = vec!["global", "rib", "add", r];
        if i == 0 {
            args.extend(["community", "65001:7", "large-community", "4200000001:1:1"]);
        }
        args.extend(["-a", "ipv4"]);
        let out = g.gobgp(&args);
        assert!(out.trim().is_empty(), "gobgp {args:?}: {out}");
    }
    let out = g.gobgp(&["global", "rib", "add", "fd00:20::/122", "-a", "ipv6"]);
    assert!(out.trim().is_empty(), "{out}");
}

fn gobgp_route(g: &Gobgp, family: &str, wants: &[&str]) {
    let show = || g.gobgp(&["global", "rib", "-a", family]);
    wait_output(&format!("GoBGP's {family} table"), show, wants);
}

#[test]
fn ebgp_with_4_octet_as_both_families_communities_and_withdraw() {
    let p = pair();
    let g = Gobgp::start(&p.peer, &conf(PEER_AS, false));
    add_routes(&g, &["10.245.0.0/26"]);
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    check_exchange(&p, &b, &[PEER_AS]);
    gobgp_route(
        &g,
        "ipv4",
        &["10.244.1.0/26", "198.18.0.1", "64512:100", "64512:1:2"],
    );
    gobgp_route(&g, "ipv6", &["fd00:10::/122", "fd00:18::1"]);
    g.gobgp(&["global", "rib", "del", "10.245.0.0/26", "-a", "ipv4"]);
    g.gobgp(&["global", "rib", "del", "fd00:20::/122", "-a", "ipv6"]);
    check_withdrawn(&p, &b);
}

#[test]
fn ibgp_both_families() {
    let p = pair();
    let g = Gobgp::start(&p.peer, &conf(BRINDLE_AS, false));
    add_routes(&g, &["10.245.0.0/26"]);
    let b = Bgpd::start(&p.brl, &brindle_conf(BRINDLE_AS, ""));
    check_exchange(&p, &b, &[]);
    gobgp_route(&g, "ipv4", &["10.244.1.0/26", "198.18.0.1", "64512:100"]);
    gobgp_route(&g, "ipv6", &["fd00:10::/122", "fd00:18::1"]);
}

#[test]
fn graceful_restart_keeps_routes_then_sweeps_after_end_of_rib() {
    let p = pair();
    let g = Gobgp::start(&p.peer, &conf(PEER_AS, true));
    add_routes(&g, &["10.245.0.0/26", "10.245.0.64/26"]);
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    wait_kernel(&p.brl, &GR_BEFORE, &b);
    let dir = g.kill();
    check_kept_while_down(&p, &b);
    // Back, restarting (-r), without 10.245.0.64/26 and with a new route.
    let g = Gobgp::start_in(&p.peer, dir, &conf(PEER_AS, true), &["-r"]);
    add_routes(&g, &["10.245.0.0/26", "10.245.0.128/26"]);
    check_swept_after_eor(&p, &b);
}
