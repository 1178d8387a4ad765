//! A BIRD peer over its prefix limit: closed with Cease 6/1 (BIRD says "Maximum number of
//! prefixes reached"), its routes dropped, retried after a back-off, and the speaker's
//! memory flat however often it happens.

use std::time::Duration;

use brindle_testsupport::daemons::{wait_for, Bird};

use crate::common::bgpd::Bgpd;
use crate::*;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_peer_over_max_prefixes_is_ceased_and_memory_stays_flat() {
    let p = pair();
    let statics: String = (0..3000u32)
        .map(|i| format!("route 10.{}.{}.0/24 blackhole;\n", 100 + i / 256, i % 256))
        .collect();
    let bird = Bird::start(
        &p.peer,
        &format!(
            r#"router id 198.18.0.2;
protocol device {{}}
protocol static s4 {{ ipv4; {statics} }}
protocol bgp b4 {{
  local as {PEER_AS}; source address 198.18.0.2; neighbor 198.18.0.1 as {BRINDLE_AS};
  connect delay time 1; connect retry time 1; error wait time 1, 4;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
        ),
    );
    let b = Bgpd::start(
        &p.brl,
        &format!(
            r#"local_as = {BRINDLE_AS}
router_id = "198.18.0.1"
listen = "[::]:179"
[[peer]]
address = "198.18.0.2"
asn = {PEER_AS}
families = ["ipv4"]
connect_retry = 1
max_prefixes = 1000
"#
        ),
    );
    let hits = |n: u64| {
        wait_for(
            &format!("{n} prefix-limit closes"),
            Duration::from_secs(60),
            || (b.peer("198.18.0.2").prefix_limit_hits >= n).then_some(()),
        )
    };
    hits(1);
    let first = rss_kib(b.pid());
    wait_output(
        "BIRD hearing why",
        || bird.birdc(&["show", "protocols", "all", "b4"]),
        &["Maximum number of prefixes reached"],
    );
    hits(3);
    let later = rss_kib(b.pid());
    assert!(
        later <= first + 8 * 1024,
        "RSS grew from {first} KiB to {later} KiB over two more closes"
    );
    // Between attempts nothing of the peer's is kept.
    wait_for("the peer's routes gone", Duration::from_secs(30), || {
        let s = b.peer("198.18.0.2");
        (s.state != "Established" && s.accepted == 0).then_some(())
    });
    assert!(b.rib(Default::default()).is_empty());
    let log = b.log();
    assert!(log.contains("more prefixes than its limit"), "{log}");
}
