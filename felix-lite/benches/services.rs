//! Service programming at scale, against the floor: the time the raw tool (`iptables-restore`
//! of the same backend, or `nft -f`) itself takes to load the same text. For N Services × 5
//! endpoints: a full sync into empty tables, one endpoint change, one Service added.
//! felix-lite's time is everything a sync does (render the changed Services, assemble, diff,
//! write; the first sync also reads the tables); the floor is the same input fed to the raw
//! tool, in its own namespace holding the same rules. Median of 3, each in fresh network
//! namespaces. Dataplanes: iptables-legacy, iptables-nft (our iptables layout through
//! nf_tables) and native nftables (`table ip brindle`).
//!
//! Run: `cargo bench -p brindle-felix-lite --bench services` (`BRINDLE_BENCH_SIZES`,
//! `BRINDLE_BENCH_IPTNFT_SIZES` and `BRINDLE_BENCH_NFT_SIZES` pick the sizes of each).
//! Writes bench-results/services.json.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::nft;
use brindle_felix_lite::proxy::rules::{self, ServiceRules};
use brindle_felix_lite::proxy::{Endpoint, NodeContext, NodeGuard, Protocol, ServicePort};
use brindle_testsupport::bench::write_results;
use brindle_testsupport::Netns;
use serde_json::json;

const ENDPOINTS: usize = 5;

fn service(i: usize, generation: u32) -> ServicePort {
    let ip = |base: u32, n: u32| std::net::IpAddr::V4(Ipv4Addr::from(base + n));
    ServicePort {
        namespace: format!("ns{}", i % 50),
        name: format!("svc-{i}"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        family: brindle_felix_lite::family::Family::V4,
        cluster_ip: Some(ip(u32::from(Ipv4Addr::new(10, 96, 0, 0)), i as u32)),
        port: 80,
        // One in ten is a NodePort, as in a typical cluster.
        node_port: i.is_multiple_of(10).then_some(30000 + (i / 10) as u16),
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

/// Service `k` with its first endpoint replaced: the one change measured everywhere.
fn one_endpoint_changed(k: usize) -> ServicePort {
    let mut changed = service(k, 0);
    changed.endpoints[0] = service(k, 1).endpoints[0].clone();
    changed
}

fn ctx() -> NodeContext {
    NodeContext {
        node: "node-0".into(),
        zone: None,
        masquerade_bit: 14,
    }
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Iptables(Backend),
    Nftables,
}

impl Plane {
    fn name(self) -> &'static str {
        match self {
            Plane::Iptables(Backend::Legacy) => "ipt-legacy",
            Plane::Iptables(Backend::Nft) => "ipt-nft",
            Plane::Nftables => "nftables",
        }
    }
}

/// The raw tool on `text` in `ns`: the floor.
fn raw_restore(ns: &Netns, plane: Plane, text: &str) -> Duration {
    let argv: &[&str] = match plane {
        Plane::Iptables(Backend::Legacy) => &["iptables-legacy-restore", "-w", "5", "--noflush"],
        Plane::Iptables(Backend::Nft) => &["iptables-nft-restore", "-w", "5", "--noflush"],
        Plane::Nftables => &["nft", "-f", "-"],
    };
    let t = Instant::now();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    use std::io::Write;
    // A tool that fails early stops reading: its error, not the broken pipe, is the news.
    let _ = c.stdin.take().unwrap().write_all(text.as_bytes());
    let out = c.wait_with_output().unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}: {}\n{}",
        plane.name(),
        String::from_utf8_lossy(&out.stderr),
        &text[..text.len().min(2000)]
    );
    took
}

fn sets(ns: &Netns) {
    // The ipsets the rules name (the writer makes them in its own namespace).
    for set in [
        rules::ALL_POOLS_SET,
        rules::MASQ_POOLS_SET,
        rules::ALL_HOSTS_SET,
        rules::BGP_PEERS_SET,
    ] {
        ns.ok(&["ipset", "create", set, "hash:net"]);
    }
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
    /// The change's time in the tool (restore / nft) as the writer ran it.
    change_tool: Duration,
    add: Duration,
    add_floor: Duration,
}

fn guard() -> NodeGuard {
    // The node guard as on a node: the BGP port out of pods' reach, anti-spoofing.
    NodeGuard {
        pod_blocked_ports: vec![179],
        nat_outgoing_exclusions: Default::default(),
        workload_prefix: "brl".into(),
    }
}

fn sets_want() -> std::collections::BTreeMap<String, Vec<ipnetwork::IpNetwork>> {
    std::collections::BTreeMap::from([
        (rules::ALL_POOLS_SET.to_string(), vec![]),
        (rules::MASQ_POOLS_SET.to_string(), vec![]),
        (rules::ALL_HOSTS_SET.to_string(), vec![]),
        (rules::BGP_PEERS_SET.to_string(), vec![]),
    ])
}

fn runner(ns: &Netns) -> Runner {
    Runner {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
        ..Default::default()
    }
}

fn one_run(n: usize, plane: Plane) -> Run {
    match plane {
        Plane::Iptables(b) => one_run_iptables(n, b),
        Plane::Nftables => one_run_nft(n),
    }
}

/// The same three steps in native nftables.
fn one_run_nft(n: usize) -> Run {
    let c = ctx();
    let ours = Netns::new("brl-bsn");
    let floor = Netns::new("brl-bfn");
    let mut w = nft::writer::Writer::new(runner(&ours));
    let svcs: Vec<ServicePort> = (0..n).map(|i| service(i, 0)).collect();
    let t = Instant::now();
    let mut rendered: Vec<nft::services::ServiceNft> =
        svcs.iter().map(|s| nft::services::render(s, &c)).collect();
    let render = t.elapsed();
    let table = nft::services::assemble(&c, &guard(), &sets_want(), rendered.iter());
    let rep = w.sync(&table).expect("full sync");
    let full = t.elapsed();
    let full_floor = raw_restore(&floor, Plane::Nftables, &w.last_input);
    let k = n / 2;
    let t = Instant::now();
    let changed = one_endpoint_changed(k);
    rendered[k] = nft::services::render(&changed, &c);
    let table = nft::services::assemble(&c, &guard(), &sets_want(), rendered.iter());
    let rep2 = w.sync(&table).expect("one change");
    let change = t.elapsed();
    assert!(rep2.chains_written <= 3, "{rep2:?}");
    let change_floor = raw_restore(&floor, Plane::Nftables, &w.last_input);
    let change_bytes = w.last_input.len();
    let t = Instant::now();
    rendered.push(nft::services::render(&service(n, 0), &c));
    let table = nft::services::assemble(&c, &guard(), &sets_want(), rendered.iter());
    w.sync(&table).expect("one added");
    let add = t.elapsed();
    let add_floor = raw_restore(&floor, Plane::Nftables, &w.last_input);
    Run {
        rules: rep.rules_total,
        full,
        full_restore: rep.restore_time,
        full_floor,
        render,
        change,
        change_floor,
        change_bytes,
        change_tool: rep2.restore_time,
        add,
        add_floor,
    }
}

fn one_run_iptables(n: usize, backend: Backend) -> Run {
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
    w.keep_input = true; // replayed through raw iptables-restore for the floor
    let svcs: Vec<ServicePort> = (0..n).map(|i| service(i, 0)).collect();
    // Full sync: render everything, assemble, read the (empty) tables, restore.
    let t = Instant::now();
    let mut rendered: Vec<ServiceRules> = svcs.iter().map(|s| rules::render(s, &c)).collect();
    let render = t.elapsed();
    // The node guard as on a node: the BGP port out of pods' reach, anti-spoofing.
    let guard = guard();
    let ruleset = rules::assemble(&c, &guard, rendered.iter());
    w.sync_sets(&sets_want()).expect("ipsets");
    let rep = w.sync(&ruleset).expect("full sync");
    let full = t.elapsed();
    let plane = Plane::Iptables(backend);
    let full_floor = raw_restore(&floor, plane, &w.last_input);
    // One endpoint of one Service changes.
    let k = n / 2;
    let t = Instant::now();
    let changed = one_endpoint_changed(k);
    rendered[k] = rules::render(&changed, &c);
    let ruleset = rules::assemble(&c, &guard, rendered.iter());
    let rep2 = w.sync(&ruleset).expect("one change");
    let change = t.elapsed();
    assert!(rep2.chains_written <= 3, "{rep2:?}");
    let change_floor = raw_restore(&floor, plane, &w.last_input);
    let change_bytes = w.last_input.len();
    let t = Instant::now();
    rendered.push(rules::render(&service(n, 0), &c));
    let ruleset = rules::assemble(&c, &guard, rendered.iter());
    w.sync(&ruleset).expect("one added");
    let add = t.elapsed();
    let add_floor = raw_restore(&floor, plane, &w.last_input);
    Run {
        rules: rep.rules_total,
        full,
        full_restore: rep.restore_time,
        full_floor,
        render,
        change,
        change_floor,
        change_bytes,
        change_tool: rep2.restore_time,
        add,
        add_floor,
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
    // iptables-nft runs stop at 3,000 unless asked (BRINDLE_BENCH_IPTNFT_SIZES=10000).
    let legacy_sizes = sizes("BRINDLE_BENCH_SIZES", &[1000, 10000, 30000]);
    let iptnft_sizes = sizes("BRINDLE_BENCH_IPTNFT_SIZES", &[1000, 3000]);
    let nft_sizes = sizes("BRINDLE_BENCH_NFT_SIZES", &[1000, 10000, 30000]);
    let mut results = vec![];
    println!(
        "{:<10} {:>6} {:>7} | {:>8} {:>8} {:>8} {:>5} | {:>8} {:>8} {:>8} {:>5} {:>6} | {:>7} {:>8}",
        "dataplane",
        "svcs",
        "rules",
        "full s",
        "tool s",
        "floor s",
        "ratio",
        "chg ms",
        "tool ms",
        "floor ms",
        "ratio",
        "bytes",
        "add ms",
        "floor ms"
    );
    for (plane, sizes) in [
        (Plane::Nftables, &nft_sizes),
        (Plane::Iptables(Backend::Legacy), &legacy_sizes),
        (Plane::Iptables(Backend::Nft), &iptnft_sizes),
    ] {
        for &n in sizes {
            let runs: Vec<Run> = (0..3).map(|_| one_run(n, plane)).collect();
            let m = |f: &dyn Fn(&Run) -> Duration| median(runs.iter().map(f).collect());
            let full = m(&|r| r.full);
            let restore = m(&|r| r.full_restore);
            let full_floor = m(&|r| r.full_floor);
            let change = m(&|r| r.change);
            let change_tool = m(&|r| r.change_tool);
            let change_floor = m(&|r| r.change_floor);
            let add = m(&|r| r.add);
            let add_floor = m(&|r| r.add_floor);
            let render = m(&|r| r.render);
            let r0 = &runs[0];
            println!(
                "{:<10} {:>6} {:>7} | {:>8.3} {:>8.3} {:>8.3} {:>5.2} | {:>8.1} {:>8.1} {:>8.1} {:>5.2} {:>6} | {:>7.1} {:>8.1}",
                plane.name(),
                n,
                r0.rules,
                full.as_secs_f64(),
                restore.as_secs_f64(),
                full_floor.as_secs_f64(),
                full.as_secs_f64() / full_floor.as_secs_f64(),
                change.as_secs_f64() * 1e3,
                change_tool.as_secs_f64() * 1e3,
                change_floor.as_secs_f64() * 1e3,
                change.as_secs_f64() / change_floor.as_secs_f64(),
                r0.change_bytes,
                add.as_secs_f64() * 1e3,
                add_floor.as_secs_f64() * 1e3,
            );
            results.push(json!({
                "dataplane": plane.name(), "services": n, "endpoints_per_service": ENDPOINTS,
                "rules": r0.rules, "full_sync_s": full.as_secs_f64(), "full_tool_s": restore.as_secs_f64(),
                "full_floor_s": full_floor.as_secs_f64(), "render_all_s": render.as_secs_f64(),
                "change_s": change.as_secs_f64(), "change_tool_s": change_tool.as_secs_f64(),
                "change_floor_s": change_floor.as_secs_f64(), "change_bytes": r0.change_bytes,
                "add_s": add.as_secs_f64(), "add_floor_s": add_floor.as_secs_f64(),
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
