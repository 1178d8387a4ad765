//! brindle-bgpd against real BGP daemons (BIRD 2, GoBGP, FRR) in network namespaces.
//!
//! Topology of most tests: namespace `brl` (brindle-bgpd, 198.18.0.1 and fd00:18::1) joined by a
//! veth to namespace `peer` (the other daemon, 198.18.0.2 and fd00:18::2). As Calico does,
//! each family has its own session: IPv4 over IPv4, IPv6 over IPv6. Brindle originates
//! 10.244.1.0/26 (with a community and a large community) and fd00:10::/122, both as
//! blackholes in its kernel; the peer originates 10.245.0.0/26 (community 65001:7, large
//! community 4200000001:1:1) and fd00:20::/122.

#[path = "../common/mod.rs"]
mod common;

mod bird;
mod frr;
mod gobgp;
mod gtsm;
mod limits;
mod ownership;
mod reflector;
mod restart;

use std::collections::BTreeSet;
use std::time::Duration;

use brindle_testsupport::daemons::{link, wait_for, Bird};
use brindle_testsupport::Netns;
use common::bgpd::Bgpd;

pub const BRINDLE_AS: u32 = 64512;
pub const PEER_AS: u32 = 4200000001;

/// The two namespaces and their link.
pub struct Pair {
    pub brl: Netns,
    pub peer: Netns,
}

pub fn pair() -> Pair {
    let brl = Netns::new("brl");
    let peer = Netns::new("brlpeer");
    link(
        &brl,
        &peer,
        ("198.18.0.1", "fd00:18::1"),
        ("198.18.0.2", "fd00:18::2"),
    );
    Pair { brl, peer }
}

/// brindle-bgpd's config for the pair: one session per family with the peer.
pub fn brindle_conf(peer_as: u32, peer_extra: &str) -> String {
    format!(
        r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
listen = "[::]:179"
[kernel]
metric = 32
[[peer]]
address = "198.18.0.2"
asn = {peer_as}
families = ["ipv4"]
connect_retry = 1
{peer_extra}
[[peer]]
address = "fd00:18::2"
asn = {peer_as}
families = ["ipv6"]
connect_retry = 1
{peer_extra}
[[originate]]
prefix = "10.244.1.0/26"
communities = ["64512:100"]
large_communities = ["64512:1:2"]
blackhole = true
[[originate]]
prefix = "fd00:10::/122"
blackhole = true
"#
    )
}

/// Our routes in the namespace's kernel, both families, as "dst via gw" / "blackhole dst".
pub fn kernel_routes(ns: &Netns) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for fam in ["-4", "-6"] {
        let v = ns.ip_json(&[fam, "route", "show", "proto", "bird"]);
        for r in v.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or("?");
            let line = match (r["type"].as_str(), r["gateway"].as_str()) {
                (Some("blackhole"), _) => format!("blackhole {dst}"),
                (_, Some(gw)) => format!("{dst} via {gw}"),
                _ => format!("{dst} {r}"),
            };
            out.insert(line);
        }
    }
    out
}

pub fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Polls `show` until its output holds every one of `wants` (30 s); fails with the last
/// output otherwise.
pub fn wait_output(what: &str, mut show: impl FnMut() -> String, wants: &[&str]) {
    let start = std::time::Instant::now();
    loop {
        let last = show();
        if wants.iter().all(|w| last.contains(w)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: want {wants:?} in:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for BIRD's `show route all <prefix>` to hold every one of `wants`.
pub fn bird_route(bird: &Bird, prefix: &str, wants: &[&str]) {
    let show = || bird.birdc(&["show", "route", "all", prefix]);
    wait_output(&format!("BIRD's {prefix}"), show, wants);
}

pub fn wait_kernel(ns: &Netns, want: &[&str], b: &Bgpd) {
    let want = set(want);
    let start = std::time::Instant::now();
    loop {
        let have = kernel_routes(ns);
        if have == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "kernel routes: want {want:?}, have {have:?}\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Graceful-restart tests: kernel routes while the peer has 10.245.0.0/26 and
/// 10.245.0.64/26 ...
pub const GR_BEFORE: [&str; 5] = [
    "10.245.0.0/26 via 198.18.0.2",
    "10.245.0.64/26 via 198.18.0.2",
    "blackhole 10.244.1.0/26",
    "fd00:20::/122 via fd00:18::2",
    "blackhole fd00:10::/122",
];

/// ... and after it came back with 10.245.0.0/26 and 10.245.0.128/26.
pub const GR_AFTER: [&str; 5] = [
    "10.245.0.0/26 via 198.18.0.2",
    "10.245.0.128/26 via 198.18.0.2",
    "blackhole 10.244.1.0/26",
    "fd00:20::/122 via fd00:18::2",
    "blackhole fd00:10::/122",
];

/// The peer was killed (no NOTIFICATION): the session goes down, forwarding goes on (the
/// kernel routes stay) and the RIB marks the peer's routes stale.
pub fn check_kept_while_down(p: &Pair, b: &Bgpd) {
    wait_for("the session to go down", Duration::from_secs(30), || {
        (b.peer("198.18.0.2").state != "Established").then_some(())
    });
    assert_eq!(kernel_routes(&p.brl), set(&GR_BEFORE), "{}", b.log());
    let r = b.route("10.245.0.64/26").expect("kept through the restart");
    assert!(r.stale, "{r:?}");
}

/// The peer is back: its new routes are in, and the one it no longer has was swept by its
/// End-of-RIB (it kept forwarding state, so nothing was dropped when the session came up).
pub fn check_swept_after_eor(p: &Pair, b: &Bgpd) {
    wait_kernel(&p.brl, &GR_AFTER, b);
    let r = b.route("10.245.0.0/26").expect("refreshed");
    assert!(!r.stale, "{r:?}");
    let log = b.log();
    assert!(
        log.contains("End-of-RIB after restart: stale routes swept peer=198.18.0.2"),
        "{log}"
    );
}

/// What the peer's routes must look like in Brindle's RIB.
pub fn check_learned(b: &Bgpd, as_path: &[u32]) {
    let r = wait_for(
        "10.245.0.0/26 from the peer",
        Duration::from_secs(30),
        || b.route("10.245.0.0/26"),
    );
    assert_eq!(r.from, Some("198.18.0.2".parse().unwrap()), "{r:?}");
    assert_eq!(r.next_hop, Some("198.18.0.2".parse().unwrap()), "{r:?}");
    assert_eq!(r.as_path, as_path, "{r:?}");
    assert_eq!(r.communities, vec!["65001:7".to_string()], "{r:?}");
    assert_eq!(
        r.large_communities,
        vec!["4200000001:1:1".to_string()],
        "{r:?}"
    );
    let r6 = wait_for(
        "fd00:20::/122 from the peer",
        Duration::from_secs(30),
        || b.route("fd00:20::/122"),
    );
    assert_eq!(r6.from, Some("fd00:18::2".parse().unwrap()), "{r6:?}");
    assert_eq!(r6.next_hop, Some("fd00:18::2".parse().unwrap()), "{r6:?}");
    assert_eq!(r6.as_path, as_path, "{r6:?}");
    let ibgp = as_path.is_empty();
    if ibgp {
        assert_eq!(r.local_pref, Some(100), "{r:?}");
    }
}

/// Both sessions up, both families both ways, kernel routes exact.
pub fn check_exchange(p: &Pair, b: &Bgpd, as_path: &[u32]) {
    b.wait_established("198.18.0.2");
    b.wait_established("fd00:18::2");
    check_learned(b, as_path);
    wait_kernel(
        &p.brl,
        &[
            "10.245.0.0/26 via 198.18.0.2",
            "blackhole 10.244.1.0/26",
            "fd00:20::/122 via fd00:18::2",
            "blackhole fd00:10::/122",
        ],
        b,
    );
    let st = b.peer("198.18.0.2");
    // Some peers (FRR) send our own route back over eBGP: received but refused (AS loop).
    assert_eq!((st.accepted, st.advertised), (1, 1), "{st:?}");
    assert!(st.received >= st.accepted, "{st:?}");
}

/// After the peer withdrew 10.245.0.0/26 and fd00:20::/122.
pub fn check_withdrawn(p: &Pair, b: &Bgpd) {
    wait_for("10.245.0.0/26 withdrawn", Duration::from_secs(30), || {
        b.route("10.245.0.0/26").is_none().then_some(())
    });
    wait_for("fd00:20::/122 withdrawn", Duration::from_secs(30), || {
        b.route("fd00:20::/122").is_none().then_some(())
    });
    wait_kernel(
        &p.brl,
        &["blackhole 10.244.1.0/26", "blackhole fd00:10::/122"],
        b,
    );
}

/// The session with `addr` stays short of Established for `secs` seconds.
pub fn never_established(b: &Bgpd, addr: &str, secs: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        let st = b.peer(addr);
        assert_ne!(st.state, "Established", "{st:?}\n{}", b.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With the peer keyed "s3cret-md5": Brindle with that key exchanges routes; with another
/// key, no session ever comes up (the kernel drops the unsigned or wrongly signed segments).
pub fn check_md5(p: &Pair) {
    let b = Bgpd::start(&p.brl, &brindle_conf(PEER_AS, "password = \"s3cret-md5\""));
    check_exchange(p, &b, &[PEER_AS]);
    let dir = b.terminate();
    let b = Bgpd::start_in(&p.brl, dir, &brindle_conf(PEER_AS, "password = \"wrong\""));
    never_established(&b, "198.18.0.2", 8);
    never_established(&b, "fd00:18::2", 1);
}
