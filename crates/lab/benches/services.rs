//! Services end to end in the lab: `cargo bench -p brindle-lab --bench services`.
//!
//! One node (release `brindle-node`: iptables with the legacy or nft backend, or the native
//! nftables dataplane), N Services × 5 endpoints written
//! to etcd as the API server and the EndpointSlice controller would; we time until the agent
//! has programmed them all, then five single changes (one endpoint of one EndpointSlice
//! replaced), each from the moment before the store write to the agent's log line that
//! follows its write (rules in the kernel). Agent peak RSS from /proc.
//! Prints a table and writes `bench-results/lab-services.json`. `BRINDLE_BENCH_SIZES`
//! (legacy, default 1000,10000), `BRINDLE_BENCH_NFT_SIZES` (iptables-nft, default 1000) and
//! `BRINDLE_BENCH_NFTABLES_SIZES` (native, default 1000,10000) pick the runs.

use std::time::{Duration, Instant, SystemTime};

use brindle_lab::{Lab, LabSpec};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("s{i}")},
        "spec": {"clusterIP": std::net::Ipv4Addr::from(0x0a60_0000u32 + i as u32).to_string(),
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("service")
}

fn slice(i: usize, generation: u32) -> EndpointSlice {
    let eps: Vec<_> = (0..5u32)
        .map(|e| {
            let ip = 0x0a80_0000u32 + (i as u32) * 5 + e + if e == 0 { generation * 1_000_000 } else { 0 };
            json!({"addresses": [std::net::Ipv4Addr::from(ip).to_string()], "nodeName": format!("n{e}"),
                   "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": format!("s{i}-1"),
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

/// The time of the first "services programmed" line after `offset` in the agent's log.
fn programmed_after(
    log: &std::path::Path,
    offset: usize,
    want: &str,
) -> Option<(SystemTime, usize)> {
    let b = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(b.get(offset..)?).to_string();
    let mut pos = 0;
    for l in text.lines() {
        pos += l.len() + 1;
        if l.contains("services programmed") && l.contains(want) {
            let ts: jiff::Timestamp = l.split_whitespace().next()?.parse().ok()?;
            return Some((SystemTime::from(ts), offset + pos));
        }
    }
    None
}

fn run(n: usize, backend: &str) -> serde_json::Value {
    let spec = match backend {
        "nftables" => LabSpec {
            nodes: 1,
            dataplane: "nftables".into(),
            ..Default::default()
        },
        _ => LabSpec {
            nodes: 1,
            iptables_backend: backend.into(),
            ..Default::default()
        },
    };
    let lab = Lab::up(spec, &mut |_| {}).expect("lab");
    let log = lab.nodes[0].log();
    let pid = lab.nodes[0].agent_pid().expect("agent");
    let svcs = lab.store.namespaced::<Service>("default");
    let slices = lab.store.namespaced::<EndpointSlice>("default");
    let start = Instant::now();
    lab.block_on(async {
        for i in 0..n {
            svcs.create(&service(i)).await.expect("service");
            slices.create(&slice(i, 0)).await.expect("slice");
        }
    });
    let written = start.elapsed();
    let want = format!("services={n} ");
    let mut offset = 0;
    let full_done = loop {
        // Every Service with its endpoints (SVC chain + 5 SEP chains each) is in the kernel.
        if let Some((_, o)) = programmed_after(&log, offset, &want) {
            offset = o;
            let endpoints = if backend == "nftables" {
                lab.nodes[0]
                    .ns
                    .ok(&["nft", "list", "chains", "ip"])
                    .matches("chain endpoint-")
                    .count()
            } else {
                lab.nodes[0]
                    .ns
                    .ok(&[&format!("iptables-{backend}-save"), "-t", "nat"])
                    .matches(":BRL-SEP-")
                    .count()
            };
            if endpoints >= n * 5 {
                break start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "never programmed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let rss = brindle_testsupport::bench::proc_status_mib(pid, "VmHWM:");
    let mut changes = vec![];
    for g in 1..=5u32 {
        let i = (n / 7 * g as usize) % n;
        let mut s = slice(i, g);
        let have = lab
            .block_on(slices.get(&format!("s{i}-1")))
            .expect("get")
            .expect("slice");
        s.metadata.resource_version = have.metadata.resource_version;
        let offset0 = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let t0 = SystemTime::now();
        lab.block_on(slices.update(&s)).expect("update");
        let deadline = Instant::now() + Duration::from_secs(60);
        let done = loop {
            if let Some((t, _)) = programmed_after(&log, offset0, "") {
                break t;
            }
            assert!(Instant::now() < deadline, "change never programmed");
            std::thread::sleep(Duration::from_millis(5));
        };
        changes.push(done.duration_since(t0).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(1200)); // past --min-sync-interval
    }
    changes.sort();
    drop(lab);
    json!({
        "backend": backend, "services": n, "store_writes_s": written.as_secs_f64(),
        "all_programmed_s": full_done.as_secs_f64(), "agent_peak_rss_mib": rss,
        "change_ms": changes.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "change_median_ms": changes[changes.len() / 2].as_secs_f64() * 1e3,
    })
}

fn main() {
    brindle_lab::use_release_binaries();
    let list = |var: &str, default: &str| -> Vec<String> {
        std::env::var(var)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut rows = vec![];
    println!(
        "{:<9} {:>6} | {:>10} {:>12} {:>9} | {:>10} (median of 5; all)",
        "backend", "svcs", "writes s", "programmed s", "RSS MiB", "change ms"
    );
    // nft stops at 1,000 unless asked: see the felix-lite bench (its restore is superlinear).
    for (backend, sizes) in [
        ("legacy", list("BRINDLE_BENCH_SIZES", "1000,10000")),
        ("nft", list("BRINDLE_BENCH_NFT_SIZES", "1000")),
        (
            "nftables",
            list("BRINDLE_BENCH_NFTABLES_SIZES", "1000,10000"),
        ),
    ] {
        for n in sizes {
            let n: usize = n.parse().expect("size");
            let r = run(n, backend);
            println!(
                "{:<9} {:>6} | {:>10.1} {:>12.1} {:>9.0} | {:>10.1} {:?}",
                backend,
                n,
                r["store_writes_s"].as_f64().unwrap_or(0.0),
                r["all_programmed_s"].as_f64().unwrap_or(0.0),
                r["agent_peak_rss_mib"].as_f64().unwrap_or(0.0),
                r["change_median_ms"].as_f64().unwrap_or(0.0),
                r["change_ms"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .map(|v| v.as_f64().unwrap_or(0.0).round())
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            );
            rows.push(r);
        }
    }
    brindle_testsupport::bench::write_results("lab-services", &json!({ "runs": rows }));
}
