//! FRR (zebra + bgpd) as the peer.

use std::time::Duration;

use brindle_testsupport::daemons::{wait_for, Frr};

use crate::common::bgpd::Bgpd;
use crate::*;

/// FRR's config; `routes4` are its IPv4 networks (the first gets the communities).
fn conf(asn: u32, routes4: &[&str], neighbor_extra: &str, global_extra: &str) -> String {
    let mut nets = String::new();
    for (i, r) in routes4.iter().enumerate() {
        nets += &if i == 0 {
            format!("  network {r} route-map TAG\n")
        } else {
            format!("  network {r}\n")
        };
    }
    let mut neigh = String::new();
    for a in ["198.18.0.1", "fd00:18::1"] {
        neigh += &format!(" neighbor {a} remote-as {BRINDLE_AS}\n neighbor {a} timers connect 1\n");
        if !neighbor_extra.is_empty() {
            neigh += &format!(" neighbor {a} {neighbor_extra}\n");
        }
    }
    format!(
        r#"frr defaults traditional
hostname peer
router bgp {asn}
 bgp router-id 198.18.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
{global_extra}
{neigh}
 address-family ipv4 unicast
{nets}  neighbor 198.18.0.1 activate
 exit-address-family
 address-family ipv6 unicast
  network fd00:20::/122
  neighbor fd00:18::1 activate
 exit-address-family
!
route-map TAG permit 10
 set community 65001:7
 set large-community 4200000001:1:1
!
"#
    )
}

fn frr_route(f: &Frr, family: &str, prefix: &str, wants: &[&str]) {
    let cmd = format!("show bgp {family} unicast {prefix}");
    wait_output(&format!("FRR's {prefix}"), || f.vtysh(&[&cmd]), wants);
}

#[test]
fn ebgp_with_4_octet_as_both_families_communities_and_withdraw() {
    let p = pair();
    let f = Frr::start(&p.peer, &conf(PEER_AS, &["10.245.0.0/26"], "", ""));
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    check_exchange(&p, &b, &[PEER_AS]);
    frr_route(
        &f,
        "ipv4",
        "10.244.1.0/26",
        &[
            "64512",
            "198.18.0.1 from 198.18.0.1",
            "Community: 64512:100",
            "Large Community: 64512:1:2",
            "best",
        ],
    );
    frr_route(&f, "ipv6", "fd00:10::/122", &["fd00:18::1", "best"]);
    // FRR sends our route back (no sender-side loop check); we refuse it: AS 64512 is in
    // its path.
    wait_for(
        "our own route back from FRR",
        Duration::from_secs(30),
        || {
            let st = b.peer("198.18.0.2");
            (st.received == 2 && st.accepted == 1).then_some(())
        },
    );
    assert_eq!(
        b.route("10.244.1.0/26").expect("ours").from,
        None,
        "the looped copy must not replace ours"
    );
    f.vtysh(&[
        "configure terminal",
        &format!("router bgp {PEER_AS}"),
        "address-family ipv4 unicast",
        "no network 10.245.0.0/26 route-map TAG",
        "exit-address-family",
        "address-family ipv6 unicast",
        "no network fd00:20::/122",
    ]);
    check_withdrawn(&p, &b);
}

#[test]
fn ibgp_both_families() {
    let p = pair();
    let f = Frr::start(&p.peer, &conf(BRINDLE_AS, &["10.245.0.0/26"], "", ""));
    let b = Bgpd::start(&p.brl, &brindle_conf(BRINDLE_AS, ""));
    check_exchange(&p, &b, &[]);
    frr_route(
        &f,
        "ipv4",
        "10.244.1.0/26",
        &[
            "198.18.0.1 from 198.18.0.1",
            "localpref 100",
            "Community: 64512:100",
            "best",
        ],
    );
    frr_route(&f, "ipv6", "fd00:10::/122", &["fd00:18::1", "best"]);
}

#[test]
fn md5_password_right_and_wrong() {
    let p = pair();
    let _f = Frr::start(
        &p.peer,
        &conf(PEER_AS, &["10.245.0.0/26"], "password s3cret-md5", ""),
    );
    check_md5(&p);
}

#[test]
fn graceful_restart_keeps_routes_then_sweeps_after_end_of_rib() {
    let p = pair();
    let gr = " bgp graceful-restart\n bgp graceful-restart preserve-fw-state\n bgp graceful-restart restart-time 60";
    let f = Frr::start(
        &p.peer,
        &conf(PEER_AS, &["10.245.0.0/26", "10.245.0.64/26"], "", gr),
    );
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, ""));
    wait_kernel(&p.brl, &GR_BEFORE, &b);
    let dir = f.kill();
    check_kept_while_down(&p, &b);
    // Back (preserving forwarding state) without 10.245.0.64/26 and with a new route.
    let _f = Frr::start_in(
        &p.peer,
        dir,
        &conf(PEER_AS, &["10.245.0.0/26", "10.245.0.128/26"], "", gr),
    );
    check_swept_after_eor(&p, &b);
}
