//! First-packet latency through a ClusterIP as the number of Services grows, native nftables
//! against iptables-legacy (KEP-3866's chart is the anchor: flat for nftables, growing for
//! iptables). A "node" namespace routes between a client and a server namespace and holds N
//! Services × 5 endpoints written by felix-lite's own writers; the Service dialled is the
//! middle one (iptables walks half of `BRL-SERVICES` to find it: the average case), its
//! endpoints the server. The client times `connect()` (SYN out, DNAT, SYN-ACK back), 2,000
//! connections one after another, and reports the median, p99 and connections a second.
//!
//! Run: `cargo bench -p brindle-felix-lite --bench first_packet` (`BRINDLE_BENCH_SIZES`:
//! default 1000,10000,30000). Writes bench-results/first_packet.json.

use std::net::Ipv4Addr;

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::nft;
use brindle_felix_lite::proxy::rules;
use brindle_felix_lite::proxy::{Endpoint, NodeContext, NodeGuard, Protocol, ServicePort};
use brindle_testsupport::bench::write_results;
use brindle_testsupport::Netns;
use serde_json::json;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const CONNECTS: usize = 2000;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32)
}

fn service(i: usize, target: usize) -> ServicePort {
    // The target's endpoints are the one server; the others' addresses lead nowhere.
    let endpoints = if i == target {
        vec![Endpoint::ready(SERVER, 8080, "node-1")]
    } else {
        (0..5)
            .map(|e| {
                let ip =
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 5 + e) as u32);
                Endpoint::ready(ip, 8080, "node-1")
            })
            .collect()
    };
    let (ns, name) = (format!("ns{}", i % 50), format!("svc-{i}"));
    ServicePort::cluster_ip(
        &ns,
        &name,
        "http",
        Protocol::Tcp,
        cluster_ip(i),
        80,
        endpoints,
    )
}

/// node routes between client (10.244.0.0/24) and server (10.244.1.0/24).
fn topology() -> (Netns, Netns, Netns) {
    let node = Netns::new("brl-fpn");
    let client = Netns::new("brl-fpc");
    let server = Netns::new("brl-fps");
    node.veth("toc", &client, "eth0");
    node.veth("tos", &server, "eth0");
    for (ns, addr, gw) in [
        (&client, "10.244.0.2/24", "10.244.0.1"),
        (&server, "10.244.1.2/24", "10.244.1.1"),
    ] {
        ns.ok(&["ip", "addr", "add", addr, "dev", "eth0"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns.ok(&["ip", "route", "add", "default", "via", gw]);
    }
    node.ok(&["ip", "addr", "add", "10.244.0.1/24", "dev", "toc"]);
    node.ok(&["ip", "addr", "add", "10.244.1.1/24", "dev", "tos"]);
    for l in ["toc", "tos", "lo"] {
        node.ok(&["ip", "link", "set", l, "up"]);
    }
    node.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    (node, client, server)
}

const SERVE: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"#;

const CONNECT: &str = r#"
import socket, sys, time
ip, n = sys.argv[1], int(sys.argv[2])
lat = []
start = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((ip, 80), timeout=5)
    lat.append(time.perf_counter() - t)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
took = time.perf_counter() - start
lat.sort()
print(lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, n / took)
"#;

fn runner(ns: &Netns) -> Runner {
    Runner {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
        deadline: std::time::Duration::from_secs(600),
    }
}

fn program(node: &Netns, n: usize, target: usize, nftables: bool) {
    let ctx = NodeContext {
        node: "node-0".into(),
        zone: None,
        masquerade_bit: 14,
    };
    let guard = NodeGuard {
        pod_blocked_ports: vec![179],
        nat_outgoing_exclusions: Default::default(),
        workload_prefix: "brl".into(),
    };
    let sets = std::collections::BTreeMap::from([
        (
            rules::ALL_POOLS_SET.to_string(),
            vec!["10.244.0.0/16".parse().expect("pool")],
        ),
        (rules::MASQ_POOLS_SET.to_string(), vec![]),
        (rules::ALL_HOSTS_SET.to_string(), vec![]),
        (rules::BGP_PEERS_SET.to_string(), vec![]),
    ]);
    let svcs: Vec<ServicePort> = (0..n).map(|i| service(i, target)).collect();
    if nftables {
        let r: Vec<_> = svcs
            .iter()
            .map(|s| nft::services::render(s, &ctx))
            .collect();
        let t = nft::services::assemble(&ctx, &guard, &sets, &r);
        nft::writer::Writer::new(runner(node))
            .sync(&t)
            .expect("nft sync");
    } else {
        let r: Vec<_> = svcs.iter().map(|s| rules::render(s, &ctx)).collect();
        let mut w = Writer::new(Backend::Legacy, runner(node));
        w.sync_sets(&sets).expect("ipsets");
        w.sync(&rules::assemble(&ctx, &guard, r.iter()))
            .expect("iptables sync");
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BRINDLE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10000, 30000]);
    println!(
        "{:<16} {:>7} | {:>9} {:>9} {:>10}",
        "dataplane", "svcs", "p50 ms", "p99 ms", "conn/s"
    );
    let mut results = vec![];
    for &n in &sizes {
        for (name, nftables) in [("nftables", true), ("iptables-legacy", false)] {
            let (node, client, server) = topology();
            let _srv = server.spawn(&["python3", "-c", SERVE]);
            let target = n / 2;
            program(&node, n, target, nftables);
            let ip = cluster_ip(target).to_string();
            // Warm up (ARP, the server's accept loop), then measure.
            client.ok(&["python3", "-c", CONNECT, &ip, "50"]);
            let out = client.ok(&["python3", "-c", CONNECT, &ip, &CONNECTS.to_string()]);
            let v: Vec<f64> = out
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            assert_eq!(v.len(), 3, "client said {out:?}");
            println!(
                "{name:<16} {n:>7} | {:>9.3} {:>9.3} {:>10.0}",
                v[0], v[1], v[2]
            );
            results.push(
                json!({"dataplane": name, "services": n, "connect_p50_ms": v[0],
                                "connect_p99_ms": v[1], "connects_per_s": v[2]}),
            );
            drop(node);
        }
    }
    println!("(connect() time through a ClusterIP: SYN, DNAT, SYN-ACK; {CONNECTS} one after another, the middle Service of N)");
    write_results("first_packet", &json!(results));
}
