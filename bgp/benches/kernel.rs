//! Kernel install: 100k routes through the sync task, routes/s, beside `ip -batch` adding
//! the same routes. Runs in a network namespace of its own (entered before anything
//! starts), so the machine's routing table is never touched.
//!
//! Run: `cargo bench -p brindle-bgp --bench kernel`. Writes bench-results/kernel-install.json.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Instant;

use brindle_bgp::kernel::{KernelSync, NextHop, Target};
use brindle_testsupport::bench::write_results;
use brindle_testsupport::Netns;
use ipnetwork::IpNetwork;

const N: u32 = 100_000;

fn prefixes() -> Vec<IpNetwork> {
    (0..N)
        .map(|i| {
            IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 6))), 26).expect("prefix")
        })
        .collect()
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?}");
}

fn bird_routes() -> usize {
    let out = Command::new("ip")
        .args(["route", "show", "proto", "bird"])
        .output()
        .expect("ip");
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn ip_batch(verb: &str) -> f64 {
    let mut batch = String::new();
    for p in prefixes() {
        batch.push_str(&format!(
            "route {verb} {p} via 198.18.30.2 dev v0 proto bird metric 1024\n"
        ));
    }
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success(), "ip -batch");
    t.elapsed().as_secs_f64()
}

fn main() {
    let ns = Netns::new("brl-bench-kern");
    let f = std::fs::File::open(ns.path()).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the benchmark namespace");
    ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ip(&["addr", "add", "198.18.30.1/24", "dev", "v0"]);
    ip(&["link", "set", "v0", "up"]);
    ip(&["link", "set", "v1", "up"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = Target::Via(vec![NextHop {
        gateway: "198.18.30.2".parse().expect("ip"),
        ifindex: None,
        onlink: false,
    }]);
    let brindle = rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(conn);
        let k = KernelSync::new(handle, 1024);
        let changes: Vec<_> = prefixes()
            .into_iter()
            .map(|p| (p, Some(target.clone())))
            .collect();
        let t = Instant::now();
        let errors = k.apply(changes).await;
        let secs = t.elapsed().as_secs_f64();
        assert!(
            errors.is_empty(),
            "{} errors, first: {}",
            errors.len(),
            errors[0]
        );
        secs
    });
    assert_eq!(bird_routes(), N as usize);
    ip(&["route", "flush", "proto", "bird"]);
    let add = ip_batch("add");
    assert_eq!(bird_routes(), N as usize);
    let replace = ip_batch("replace");
    ip(&["route", "flush", "proto", "bird"]);

    println!("\nkernel route install, {N} IPv4 routes via one next hop (in a namespace)\n");
    println!("| method | seconds | routes/s |");
    println!("|---|---:|---:|");
    let rows = [
        ("brindle KernelSync::apply (replace, pipelined)", brindle),
        ("ip -batch (route add)", add),
        ("ip -batch (route replace, routes present)", replace),
    ];
    let mut json = vec![];
    for (m, s) in rows {
        println!("| {m} | {s:.2} | {:.0} |", f64::from(N) / s);
        json.push(
            serde_json::json!({"method": m, "seconds": s, "routes_per_sec": f64::from(N) / s}),
        );
    }
    write_results("kernel-install.json", &serde_json::Value::Array(json));
}
