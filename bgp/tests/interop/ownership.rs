//! Whose kernel routes are whose, with BIRD announcing prefixes the host already routes: the
//! writer never replaces or deletes a route it did not make, installs ours once the other
//! route is gone, and repairs its own routes (flushed, changed, stray, or a failed write)
//! on its re-read of the table.

use std::time::Duration;

use brindle_testsupport::daemons::{wait_for, Bird};
use brindle_testsupport::Netns;

use crate::common::bgpd::Bgpd;
use crate::*;

/// BIRD (iBGP, so a next hop it sets is passed on as it is) announcing `routes`; those
/// written `prefix@nh` carry that next hop.
fn bird_conf(routes: &[&str]) -> String {
    let mut statics = String::new();
    let mut nhs = String::new();
    for r in routes {
        match r.split_once('@') {
            Some((p, nh)) => {
                statics += &format!("route {p} blackhole;\n");
                nhs += &format!("if net = {p} then bgp_next_hop = {nh};\n");
            }
            None => statics += &format!("route {r} blackhole;\n"),
        }
    }
    format!(
        r#"router id 198.18.0.2;
protocol device {{}}
protocol static s4 {{ ipv4; {statics} }}
protocol bgp b4 {{
  local as {BRINDLE_AS}; direct;
  connect delay time 1; connect retry time 2; error wait time 1, 4;
  source address 198.18.0.2; neighbor 198.18.0.1 as {BRINDLE_AS};
  ipv4 {{ import all; export filter {{ if source != RTS_STATIC then reject; {nhs} accept; }}; }};
}}
"#
    )
}

/// brindle-bgpd with kernel sync re-reading the table every second.
fn bgpd_conf() -> String {
    format!(
        r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
listen = "[::]:179"
[kernel]
metric = 32
rescan = 1
[[peer]]
address = "198.18.0.2"
asn = {BRINDLE_AS}
families = ["ipv4"]
connect_retry = 1
[[originate]]
prefix = "10.244.1.0/26"
blackhole = true
"#
    )
}

/// `ip -4 route show <args>` as one line per route, sorted.
fn routes(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["ip", "-4", "route", "show"];
    cmd.extend_from_slice(args);
    let mut v: Vec<String> = ns
        .ok(&cmd)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn wait_routes(what: &str, ns: &Netns, args: &[&str], want: &[&str], b: &Bgpd) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let start = std::time::Instant::now();
    while routes(ns, args) != want && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(routes(ns, args), want, "{what}\n{}", b.log());
}

/// The host's default route and a static route (at another metric than ours) and the
/// connected subnet survive BIRD announcing and withdrawing the same prefixes; ours goes in
/// once the host's route is gone.
#[test]
fn foreign_routes_are_never_replaced_or_deleted() {
    let p = pair();
    p.brl
        .ok(&["ip", "route", "add", "default", "via", "198.18.0.2"]);
    p.brl.ok(&[
        "ip",
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "198.18.0.2",
        "metric",
        "100",
        "proto",
        "static",
    ]);
    let before = routes(&p.brl, &[]);
    let bird = Bird::start(
        &p.peer,
        &bird_conf(&[
            "0.0.0.0/0",
            "198.18.0.0/24",
            "192.0.2.0/24",
            "10.245.0.0/26",
        ]),
    );
    let b = Bgpd::start(&p.brl, &bgpd_conf());
    b.wait_established("198.18.0.2");
    wait_for(
        "the four routes in the RIB",
        Duration::from_secs(30),
        || (b.peer("198.18.0.2").accepted == 4).then_some(()),
    );
    wait_routes(
        "only our own and the unheld route",
        &p.brl,
        &["proto", "bird"],
        &[
            "10.245.0.0/26 via 198.18.0.2 dev v0 metric 32",
            "blackhole 10.244.1.0/26 metric 32",
        ],
        &b,
    );
    // Several re-reads later the host's routes are as they were.
    std::thread::sleep(Duration::from_secs(3));
    let now: Vec<String> = routes(&p.brl, &[])
        .into_iter()
        .filter(|r| !r.contains("proto bird"))
        .collect();
    assert_eq!(now, before, "{}", b.log());
    assert!(
        b.log()
            .contains("not installing a route: one of another protocol holds this prefix"),
        "{}",
        b.log()
    );
    // The static route goes: ours takes its place.
    p.brl
        .ok(&["ip", "route", "del", "192.0.2.0/24", "metric", "100"]);
    wait_routes(
        "ours once theirs is gone",
        &p.brl,
        &["192.0.2.0/24"],
        &["192.0.2.0/24 via 198.18.0.2 dev v0 proto bird metric 32"],
        &b,
    );
    // BIRD withdraws everything: ours go, the host's stay.
    bird.birdc(&["disable", "s4"]);
    wait_routes(
        "only the blackhole left",
        &p.brl,
        &["proto", "bird"],
        &["blackhole 10.244.1.0/26 metric 32"],
        &b,
    );
    let after: Vec<String> = routes(&p.brl, &[])
        .into_iter()
        .filter(|r| !r.contains("proto bird"))
        .collect();
    let mut want = before.clone();
    want.retain(|r| !r.starts_with("192.0.2.0/24"));
    assert_eq!(after, want, "{}", b.log());
}

/// `ip route flush proto bird`, a route of ours changed by hand and a stray route of our
/// protocol: all put right on the next re-read, and counted.
#[test]
fn our_routes_are_repaired_after_a_flush() {
    let p = pair();
    let _bird = Bird::start(&p.peer, &bird_conf(&["10.245.0.0/26", "10.245.0.64/26"]));
    let b = Bgpd::start(&p.brl, &bgpd_conf());
    let want = [
        "10.245.0.0/26 via 198.18.0.2 dev v0 metric 32",
        "10.245.0.64/26 via 198.18.0.2 dev v0 metric 32",
        "blackhole 10.244.1.0/26 metric 32",
    ];
    wait_routes("the routes", &p.brl, &["proto", "bird"], &want, &b);
    p.brl.ok(&["ip", "route", "flush", "proto", "bird"]);
    assert!(routes(&p.brl, &["proto", "bird"]).is_empty());
    wait_routes(
        "repaired after a flush",
        &p.brl,
        &["proto", "bird"],
        &want,
        &b,
    );
    p.brl.ok(&[
        "ip",
        "route",
        "replace",
        "10.245.0.0/26",
        "dev",
        "v0",
        "proto",
        "bird",
        "metric",
        "32",
    ]);
    p.brl.ok(&[
        "ip",
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "198.18.0.2",
        "proto",
        "bird",
        "metric",
        "32",
    ]);
    wait_routes(
        "changed and stray repaired",
        &p.brl,
        &["proto", "bird"],
        &want,
        &b,
    );
    let log = b.log();
    assert!(
        log.contains("the kernel's routes differed from ours: repairing"),
        "{log}"
    );
}

/// A route whose next hop the kernel cannot reach yet is refused by the kernel; the writer
/// says so, retries on its re-reads, and installs it once the next hop is reachable.
#[test]
fn a_failed_kernel_write_is_retried() {
    let p = pair();
    let _bird = Bird::start(&p.peer, &bird_conf(&["10.245.9.0/26@198.18.9.9"]));
    let b = Bgpd::start(&p.brl, &bgpd_conf());
    wait_for("the route in the RIB", Duration::from_secs(30), || {
        b.route("10.245.9.0/26")
    });
    wait_output(
        "the failed write",
        || b.log(),
        &["kernel route 10.245.9.0/26: create failed"],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(routes(&p.brl, &["10.245.9.0/26"]).is_empty());
    // The next hop becomes reachable (directly on the link).
    p.brl
        .ok(&["ip", "route", "add", "198.18.9.9/32", "dev", "v0"]);
    wait_routes(
        "installed on a retry",
        &p.brl,
        &["10.245.9.0/26"],
        &["10.245.9.0/26 via 198.18.9.9 dev v0 proto bird metric 32"],
        &b,
    );
}
