//! A Brindle restart that nobody notices (RFC 4724 §4.1): Brindle (AS 64512) sits between
//! BIRD (AS 4200000001) and another Brindle (AS 64513), passing each one's routes to the
//! other. It stops gracefully and starts again while `ip monitor route` watches all three
//! kernels. While it is down, BIRD drops one route: that one route, and nothing else, may
//! change anywhere. Routes that end up the same are never removed, replaced or rewritten,
//! here or at either peer. Once with kernel sync (the restart is known from the routes
//! left in the kernel), once without, as a route server or reflector runs (told by `-R`).
//!
//! ```text
//!   BIRD ns ──a── Brindle ns ──b── other Brindle ns
//!  198.18.0.2   198.18.0.1  198.18.1.1   198.18.1.2
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use brindle_testsupport::daemons::{wait_for, Bird};
use brindle_testsupport::{ChildGuard, Netns};

use crate::common::bgpd::Bgpd;
use crate::*;

const OTHER_AS: u32 = 64513;

fn bird_conf(routes: &[&str]) -> String {
    let statics: String = routes
        .iter()
        .map(|r| format!("route {r} blackhole;\n"))
        .collect();
    format!(
        r#"router id 198.18.0.2;
protocol device {{}}
protocol direct {{ ipv4; }}
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; }}
protocol static s4 {{ ipv4; {statics} }}
protocol bgp b4 {{
  local as {PEER_AS}; source address 198.18.0.2; neighbor 198.18.0.1 as {BRINDLE_AS};
  connect delay time 1; connect retry time 2; error wait time 1, 4;
  graceful restart on; graceful restart time 60;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

fn middle_conf(kernel: bool) -> String {
    let kernel = if kernel { "[kernel]\nmetric = 32" } else { "" };
    format!(
        r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
listen = "0.0.0.0:179"
{kernel}
[[peer]]
address = "198.18.0.2"
asn = {PEER_AS}
families = ["ipv4"]
connect_retry = 1
[[peer]]
address = "198.18.1.2"
asn = {OTHER_AS}
families = ["ipv4"]
connect_retry = 1
[[originate]]
prefix = "10.244.1.0/26"
blackhole = true
"#
    )
}

#[test]
fn a_graceful_restart_changes_no_route_that_ends_up_the_same() {
    restart_beside_bird_and_brindle(true);
}

#[test]
fn a_restarting_reflector_without_kernel_sync_changes_no_route_that_ends_up_the_same() {
    restart_beside_bird_and_brindle(false);
}

fn other_conf() -> String {
    format!(
        r#"local_as = {OTHER_AS}
router_id = "198.18.1.2"
listen = "0.0.0.0:179"
[kernel]
metric = 32
[[peer]]
address = "198.18.1.1"
asn = {BRINDLE_AS}
families = ["ipv4"]
connect_retry = 1
[[originate]]
prefix = "10.246.0.0/26"
blackhole = true
"#
    )
}

fn connect(x: &Netns, y: &Netns, dev: &str, a: &str, b: &str) {
    x.veth(dev, y, dev);
    for (ns, addr) in [(x, a), (y, b)] {
        ns.ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
        ns.ok(&["ip", "link", "set", dev, "up"]);
    }
}

/// `ip -o monitor route` in `ns`, into `file`; killed (by PID) when dropped.
fn monitor(ns: &Netns, file: &Path) -> ChildGuard {
    let out = std::fs::File::create(file).expect("monitor file");
    let child = ns
        .command(&["ip", "-o", "-4", "monitor", "route"])
        .stdin(Stdio::null())
        .stdout(out)
        .spawn()
        .expect("ip monitor");
    ChildGuard(child)
}

/// The monitor's lines about the test's prefixes (pod blocks), whatever else the kernel says.
fn events(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| {
            ["10.244.", "10.245.", "10.246."]
                .iter()
                .any(|p| l.contains(p))
        })
        .map(str::to_string)
        .collect()
}

/// The three namespaces of the test.
struct Nets<'a> {
    bird: &'a Netns,
    mid: &'a Netns,
    other: &'a Netns,
}

impl Nets<'_> {
    /// Waits for every kernel to hold the routes it should: with BIRD's 10.245.0.64/26
    /// (`with_64`) or without it; ours only with kernel sync.
    fn settle(&self, kernel: bool, b: &Bgpd, other: &Bgpd, with_64: bool) {
        let pick = |v: &[&'static str]| -> Vec<&'static str> {
            v.iter()
                .copied()
                .filter(|r| with_64 || !r.starts_with("10.245.0.64/26"))
                .collect()
        };
        if kernel {
            let want = pick(&[
                "10.245.0.0/26 via 198.18.0.2",
                "10.245.0.64/26 via 198.18.0.2",
                "10.246.0.0/26 via 198.18.1.2",
                "blackhole 10.244.1.0/26",
            ]);
            wait_kernel(self.mid, &want, b);
        }
        let want = pick(&[
            "10.244.1.0/26 via 198.18.1.1",
            "10.245.0.0/26 via 198.18.1.1",
            "10.245.0.64/26 via 198.18.1.1",
            "blackhole 10.246.0.0/26",
        ]);
        wait_kernel(self.other, &want, other);
        wait_output(
            "BIRD's kernel",
            || {
                self.bird
                    .ok(&["ip", "-4", "route", "show", "proto", "bird"])
            },
            &[
                "10.244.1.0/26 via 198.18.0.1",
                "10.246.0.0/26 via 198.18.0.1",
            ],
        );
    }
}

fn restart_beside_bird_and_brindle(kernel: bool) {
    let bird_ns = Netns::new("brlrb");
    let mid = Netns::new("brlrm");
    let other_ns = Netns::new("brlro");
    connect(&mid, &bird_ns, "linka", "198.18.0.1", "198.18.0.2");
    connect(&mid, &other_ns, "linkb", "198.18.1.1", "198.18.1.2");

    let bird = Bird::start(&bird_ns, &bird_conf(&["10.245.0.0/26", "10.245.0.64/26"]));
    let other = Bgpd::start(&other_ns, &other_conf());
    let b = Bgpd::start(&mid, &middle_conf(kernel));
    let nets = Nets {
        bird: &bird_ns,
        mid: &mid,
        other: &other_ns,
    };
    nets.settle(kernel, &b, &other, true);

    let dir = tempfile::tempdir().expect("temp dir");
    let files = [
        dir.path().join("bird.mon"),
        dir.path().join("mid.mon"),
        dir.path().join("other.mon"),
    ];
    let _monitors = [
        monitor(&bird_ns, &files[0]),
        monitor(&mid, &files[1]),
        monitor(&other_ns, &files[2]),
    ];
    std::thread::sleep(Duration::from_millis(500));

    // Graceful stop: no NOTIFICATION, our kernel routes stay, both peers keep ours (stale).
    let bdir = b.terminate();
    wait_for(
        "BIRD to see the session go",
        Duration::from_secs(30),
        || {
            (!bird
                .birdc(&["show", "protocols", "b4"])
                .contains("Established"))
            .then_some(())
        },
    );
    // While we are down, BIRD drops one of its routes.
    std::fs::write(
        bird.dir.path().join("bird.conf"),
        bird_conf(&["10.245.0.0/26"]),
    )
    .expect("bird.conf");
    bird.birdc(&["configure"]);

    let flags: &[&str] = if kernel { &[] } else { &["-R"] };
    let b = Bgpd::start_with(&mid, bdir, &middle_conf(kernel), flags);
    wait_output(
        "the restart to end",
        || b.log(),
        &["End-of-RIB from every peer: restart over"],
    );
    nets.settle(kernel, &b, &other, false);
    // Time for anything late (a peer's stale sweep after our End-of-RIB) to show.
    std::thread::sleep(Duration::from_secs(3));

    let log = b.log();
    // The one real change, removed where it was installed; nothing else anywhere.
    let gone = |ev: &[String]| ev.len() == 1 && ev[0].starts_with("Deleted 10.245.0.64/26 ");
    let (bird_ev, mid_ev, other_ev) = (events(&files[0]), events(&files[1]), events(&files[2]));
    assert!(bird_ev.is_empty(), "BIRD's kernel changed: {bird_ev:?}");
    assert!(
        if kernel {
            gone(&mid_ev)
        } else {
            mid_ev.is_empty()
        },
        "our kernel: {mid_ev:?}\n{log}"
    );
    assert!(
        gone(&other_ev),
        "the other Brindle's kernel: {other_ev:?}\n{}",
        other.log()
    );
    let kept = "routes kept through the restart are already as wanted unchanged=3";
    assert!(!kernel || log.contains(kept), "{log}");
}
