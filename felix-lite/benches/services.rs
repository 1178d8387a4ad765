//! Service programming at scale, against the floor: the time `iptables-restore` (same
//! backend) itself takes to load the same text. For 1,000 and 10,000 Services × 5 endpoints:
//! a full sync into empty tables, then one endpoint change. felix-lite's time is everything
//! a sync does (render the changed Services, assemble, diff, restore; the first sync also
//! reads the tables); the floor is the same restore input fed to the raw tool, in its own
//! namespace holding the same rules. Median of 3, each in fresh network namespaces.
//!
//! Run: `cargo bench -p brindle-felix-lite --bench services` (`BRINDLE_BENCH_SIZES` and
//! `BRINDLE_BENCH_NFT_SIZES` pick the sizes). Writes bench-results/services.json.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::proxy::rules::{self, ServiceRules};
use brindle_felix_lite::proxy::{Endpoint, NodeContext, NodeGuard, Protocol, ServicePort};
use brindle_testsupport::bench::write_results;
use brindle_testsupport::Netns;
use serde_json::json;

const ENDPOINTS: usize = 5;

fn service(i: usize, generation: u32) -> ServicePort {
    let ip = |base: u32, n: u32| Ipv4Addr::from(base + n);
    ServicePort {
        namespace: format!("ns{}", i % 50),
        name: format!("svc-{i}"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Some(ip(u32::from(Ipv4Addr::new(10, 96, 0, 0)), i as u32)),
        port: 80,
        // One in ten is a NodePort, as in a typical cluster.
        node_port: i
            .is_multiple_of(10)
            .then_some(30000 + (i / 10) as u16 % 2000),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        external_local: false,
        internal_local: false,
        affinity_seconds: None,
        endpoints: (0..ENDPOINTS)
            .map(|e| Endpoint {
                ip: ip(
                    u32::from(Ipv4Addr::new(10, 128, 0, 0)),
                    (i * ENDPOINTS + e) as u32 + generation * 1_000_000,
                ),
                port: 8080,
                node: Some(format!("node-{}", e % 10)),
                zone: None,
                ready: true,
                serving: true,
                terminating: false,
                for_nodes: None,
                for_zones: None,
            })
            .collect(),
    }
}

fn ctx() -> NodeContext {
    NodeContext {
        node: "node-0".into(),
        zone: None,
        masquerade_bit: 14,
    }
}

/// The raw tool on `text` in `ns`: the floor.
fn raw_restore(ns: &Netns, backend: Backend, text: &str) -> Duration {
    let tool = match backend {
        Backend::Legacy => "iptables-legacy-restore",
        Backend::Nft => "iptables-nft-restore",
    };
    let t = Instant::now();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns.name(), tool, "-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    use std::io::Write;
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn sets(ns: &Netns) {
    // The ipsets the rules name (the writer makes them in its own namespace).
    ns.ok(&["ipset", "create", rules::ALL_POOLS_SET, "hash:net"]);
    ns.ok(&["ipset", "create", rules::MASQ_POOLS_SET, "hash:net"]);
}

struct Run {
    rules: usize,
    full: Duration,
    full_restore: Duration,
    full_floor: Duration,
    render: Duration,
    change: Duration,
    change_floor: Duration,
    change_bytes: usize,
}

fn one_run(n: usize, backend: Backend) -> Run {
    let c = ctx();
    let ours = Netns::new("brl-bsv");
    let floor = Netns::new("brl-bfl");
    sets(&floor);
    let mut w = Writer::new(
        backend,
        Runner {
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                ours.name().into(),
            ],
            ..Default::default()
        },
    );
    let svcs: Vec<ServicePort> = (0..n).map(|i| service(i, 0)).collect();
    // Full sync: render everything, assemble, read the (empty) tables, restore.
    let t = Instant::now();
    let mut rendered: Vec<ServiceRules> = svcs.iter().map(|s| rules::render(s, &c)).collect();
    let render = t.elapsed();
    // The node guard as on a node: the BGP port out of pods' reach, anti-spoofing.
    let guard = NodeGuard {
        pod_blocked_ports: vec![179],
        nat_outgoing_exclusions: Default::default(),
        workload_prefix: "brl".into(),
    };
    let ruleset = rules::assemble(&c, &guard, rendered.iter());
    let sets_want = std::collections::BTreeMap::from([
        (rules::ALL_POOLS_SET.to_string(), vec![]),
        (rules::MASQ_POOLS_SET.to_string(), vec![]),
        (rules::ALL_HOSTS_SET.to_string(), vec![]),
        (rules::BGP_PEERS_SET.to_string(), vec![]),
    ]);
    w.sync_sets(&sets_want).expect("ipsets");
    let rep = w.sync(&ruleset).expect("full sync");
    let full = t.elapsed();
    let full_floor = raw_restore(&floor, backend, &w.last_input);
    // One endpoint of one Service changes.
    let k = n / 2;
    let t = Instant::now();
    let mut changed = service(k, 0);
    changed.endpoints[0] = service(k, 1).endpoints[0].clone();
    rendered[k] = rules::render(&changed, &c);
    let ruleset = rules::assemble(&c, &guard, rendered.iter());
    let rep2 = w.sync(&ruleset).expect("one change");
    let change = t.elapsed();
    assert!(rep2.chains_written <= 3, "{rep2:?}");
    let change_floor = raw_restore(&floor, backend, &w.last_input);
    Run {
        rules: rep.rules_total,
        full,
        full_restore: rep.restore_time,
        full_floor,
        render,
        change,
        change_floor,
        change_bytes: w.last_input.len(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_mib() -> f64 {
    brindle_testsupport::bench::proc_status_mib(std::process::id(), "VmHWM:")
}

fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    // iptables-nft-restore grows superlinearly with the rules it loads: on these machines one
    // load of the 10,000-Service text (173k rules) had not finished after 12 minutes, so the
    // nft runs stop at 3,000 unless asked (BRINDLE_BENCH_NFT_SIZES=10000).
    let legacy_sizes = sizes("BRINDLE_BENCH_SIZES", &[1000, 10000]);
    let nft_sizes = sizes("BRINDLE_BENCH_NFT_SIZES", &[1000, 3000]);
    let mut results = vec![];
    println!(
        "{:<7} {:>6} {:>7} | {:>9} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} {:>7}",
        "backend",
        "svcs",
        "rules",
        "full s",
        "restore",
        "floor",
        "ratio",
        "change ms",
        "floor ms",
        "ratio",
        "bytes"
    );
    for (backend, sizes) in [(Backend::Legacy, &legacy_sizes), (Backend::Nft, &nft_sizes)] {
        for &n in sizes {
            let runs: Vec<Run> = (0..3).map(|_| one_run(n, backend)).collect();
            let full = median(runs.iter().map(|r| r.full).collect());
            let restore = median(runs.iter().map(|r| r.full_restore).collect());
            let full_floor = median(runs.iter().map(|r| r.full_floor).collect());
            let change = median(runs.iter().map(|r| r.change).collect());
            let change_floor = median(runs.iter().map(|r| r.change_floor).collect());
            let render = median(runs.iter().map(|r| r.render).collect());
            let r0 = &runs[0];
            println!(
                "{:<7} {:>6} {:>7} | {:>9.3} {:>9.3} {:>9.3} {:>6.2} | {:>9.1} {:>9.1} {:>6.2} {:>7}",
                backend.name(),
                n,
                r0.rules,
                full.as_secs_f64(),
                restore.as_secs_f64(),
                full_floor.as_secs_f64(),
                full.as_secs_f64() / full_floor.as_secs_f64(),
                change.as_secs_f64() * 1e3,
                change_floor.as_secs_f64() * 1e3,
                change.as_secs_f64() / change_floor.as_secs_f64(),
                r0.change_bytes,
            );
            results.push(json!({
                "backend": backend.name(), "services": n, "endpoints_per_service": ENDPOINTS,
                "rules": r0.rules, "full_sync_s": full.as_secs_f64(), "full_restore_s": restore.as_secs_f64(),
                "full_floor_s": full_floor.as_secs_f64(), "render_all_s": render.as_secs_f64(),
                "change_s": change.as_secs_f64(), "change_floor_s": change_floor.as_secs_f64(),
                "change_restore_bytes": r0.change_bytes,
            }));
        }
    }
    println!(
        "(peak RSS of this process, holding the rendered rules: {:.0} MiB)",
        rss_mib()
    );
    write_results(
        "services",
        &json!({ "runs": results, "peak_rss_mib": rss_mib() }),
    );
}
