//! Convergence in the lab: `cargo bench -p brindle-lab --bench convergence`.
//!
//! For 3, 10 and 20 nodes in a full mesh (10 also dual stack: a block of each family per
//! node, IPv6 sessions beside IPv4 ones; and IPv6 only) and 20 nodes with 2 route reflectors: each node
//! already holds one block (allocated through IPAM before any agent starts, as after a
//! reboot of the whole cluster); then every agent starts, and we time from the last one
//! starting until every node has a proto-bird route for every other node's block. Then a pod
//! is added (CNI ADD, called as a runtime calls it) and we time until its kernel answers a
//! TCP SYN from every node. Agent peak RSS and CPU
//! come from /proc. Release binaries are built first (that is what a cluster runs).
//! The time is taken from the kernels' side: every node's namespace is watched for route
//! changes over netlink (`routewatch`), so it is when the last route landed, not when a
//! poller looked. etcd's peak RSS and watch count are read too.
//! Prints a table and writes `bench-results/lab-convergence.json`.
//!
//! `BRINDLE_BENCH_KEEP_LOGS=DIR` keeps every agent's log (a directory per scenario); a
//! number among the arguments runs only the scenarios of that many nodes.
//!
//! `cargo bench -p brindle-lab --bench convergence -- large` runs a 50-node full mesh and
//! 100 nodes with 2 route reflectors instead (`bench-results/lab-convergence-large.json`).

use std::time::{Duration, Instant};

use brindle_ipam::{AssignRequest, Ipam};
use brindle_lab::{routewatch, IpFamily, Lab, LabSpec};

struct Row {
    name: String,
    nodes: usize,
    converge_s: f64,
    add_s: f64,
    pod_s: f64,
    rss_max_mib: f64,
    rss_mean_mib: f64,
    cpu_s: f64,
    etcd_rss_mib: f64,
    etcd_watchers: f64,
    etcd_watch_streams: f64,
}

/// A gauge from etcd's `/metrics` (on its client URL), or NaN when it cannot be read.
fn etcd_metric(endpoint: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let read = || -> std::io::Result<String> {
        let host = endpoint.trim_start_matches("http://");
        let mut c = std::net::TcpStream::connect(host)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(c, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut body = String::new();
        c.read_to_string(&mut body)?;
        Ok(body)
    };
    read()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn scenario(name: &str, nodes: usize, reflectors: usize, ip_family: IpFamily) -> Row {
    let spec = LabSpec {
        nodes,
        reflectors,
        gc_grace: "1h".into(), // the pre-allocated addresses have no pods
        ip_family,
        ..Default::default()
    };
    let mut lab = Lab::build(spec, &mut |_| {}).expect("lab");
    let ipam = Ipam::new(lab.store.clone());
    for n in lab.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() {
        let mut req = AssignRequest::pod(&n, "bench", &format!("pre-{n}"), &format!("pre{n}"), 1);
        // A block of each of the lab's families per node, so convergence waits for all.
        req.ipv4 = usize::from(lab.spec.v4());
        req.ipv6 = usize::from(lab.spec.v6());
        lab.block_on(ipam.assign(&req)).expect("pre-allocate");
    }
    // Timed from the kernels' side (netlink route events in every node's namespace), from
    // the moment the last agent was started.
    let names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    let netns: Vec<String> = lab.nodes.iter().map(|n| n.ns.path()).collect();
    let want = routewatch::wanted(&names, &lab.blocks());
    let timeout = Duration::from_secs(300);
    let per_node = match routewatch::time_routes(&netns, want, timeout, || {
        lab.start_agents(&mut |_| {}).expect("agents");
    }) {
        Ok(t) => t,
        Err(e) => {
            // What an operator would look at: the lab's view, the node's routes and log.
            eprintln!("{}", lab.status());
            // Every agent's log is kept (the lab's directory goes with it).
            let keep = std::env::temp_dir().join("brindle-convergence-failure");
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::create_dir_all(&keep);
            for n in &lab.nodes {
                let _ = std::fs::copy(n.log(), keep.join(format!("{}.log", n.name)));
            }
            eprintln!("the agents' logs are in {}", keep.display());
            if let Some(n) = lab.nodes.iter().find(|n| e.contains(&n.ns.path())) {
                eprintln!("{}: {} bird routes", n.name, lab.bird_routes(&n.name).len());
                let log = std::fs::read_to_string(n.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!(
                    "{} log tail:\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("convergence: {e}");
        }
    };
    let converge = per_node.iter().max().copied().unwrap_or_default();
    // Which nodes were last (the last started, or the others learning its block?).
    let mut order: Vec<(Duration, &str)> = per_node
        .iter()
        .zip(&names)
        .map(|(t, n)| (*t, n.as_str()))
        .collect();
    order.sort();
    let show = |v: &[(Duration, &str)]| {
        v.iter()
            .map(|(t, n)| format!("{n} {:.3}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "  first: {}; last: {}",
        show(&order[..order.len().min(3)]),
        show(&order[order.len().saturating_sub(3)..])
    );
    // BRINDLE_BENCH_KEEP_LOGS=DIR keeps every agent's log of the run.
    if let Some(dir) = std::env::var_os("BRINDLE_BENCH_KEEP_LOGS") {
        let dir =
            std::path::Path::new(&dir).join(format!("{}-{nodes}", name.replace([' ', ','], "")));
        let _ = std::fs::create_dir_all(&dir);
        for n in &lab.nodes {
            let _ = std::fs::copy(n.log(), dir.join(format!("{}.log", n.name)));
        }
    }
    // The lab's own check (every node's `ip route`, the datastore's blocks) agrees.
    lab.wait_converged(Duration::from_secs(30))
        .expect("the lab's convergence check");
    let last = lab.nodes.last().map(|n| n.name.clone()).unwrap_or_default();
    // One thread per node, each in the node's namespace (setns on a thread of its own),
    // told the pod's address the moment the CNI ADD returns and then connecting until the
    // pod's kernel answers: a refused connection counts (the echo server starts later).
    let paths: Vec<String> = lab.nodes.iter().map(|n| n.ns.path()).collect();
    let t = Instant::now();
    let (add, reached) = std::thread::scope(|sc| {
        let mut txs = vec![];
        let hs: Vec<_> = paths
            .iter()
            .map(|p| {
                let (tx, rx) = std::sync::mpsc::channel::<std::net::IpAddr>();
                txs.push(tx);
                sc.spawn(move || {
                    let f = std::fs::File::open(p).expect("netns");
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    let ip = rx.recv().expect("the pod's address");
                    let to = std::net::SocketAddr::from((ip, 8080));
                    loop {
                        match std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200))
                        {
                            Ok(_) => return t.elapsed(),
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                return t.elapsed()
                            }
                            Err(_) => {}
                        }
                        assert!(t.elapsed() < Duration::from_secs(120), "pod not reachable");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        let mut add = Duration::ZERO;
        lab.pod_add_with("probe", &last, None, &mut |ip| {
            add = t.elapsed();
            for tx in &txs {
                let _ = tx.send(ip);
            }
        })
        .expect("pod");
        let reached: Vec<Duration> = hs.into_iter().map(|h| h.join().expect("probe")).collect();
        (add, reached)
    });
    let pod = reached.into_iter().max().unwrap_or_default();
    let pids: Vec<u32> = lab.nodes.iter().filter_map(|n| n.agent_pid()).collect();
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| brindle_testsupport::bench::proc_status_mib(*p, "VmHWM:"))
        .collect();
    let cpu: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let etcd = lab.etcd.as_ref().expect("the lab's etcd");
    let etcd_rss = etcd
        .pid()
        .map(|p| brindle_testsupport::bench::proc_status_mib(p, "VmHWM:"))
        .unwrap_or(f64::NAN);
    let ep = etcd.endpoint();
    Row {
        name: name.into(),
        nodes,
        converge_s: converge.as_secs_f64(),
        add_s: add.as_secs_f64(),
        pod_s: pod.as_secs_f64(),
        rss_max_mib: rss.iter().cloned().fold(0.0, f64::max),
        rss_mean_mib: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        cpu_s: cpu,
        etcd_rss_mib: etcd_rss,
        etcd_watchers: etcd_metric(&ep, "etcd_debugging_mvcc_watcher_total"),
        etcd_watch_streams: etcd_metric(&ep, "etcd_debugging_mvcc_watch_stream_total"),
    }
}

fn main() {
    brindle_lab::use_release_binaries();
    let mut rows = vec![];
    // `-- large`: the 50-node mesh and the 100-node cluster with 2 reflectors instead.
    let args: Vec<String> = std::env::args().collect();
    let large = args.iter().any(|a| a == "large");
    // A number among the arguments runs only the scenarios of that many nodes.
    let only: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let scenarios = if large {
        vec![
            ("mesh", 50, 0, IpFamily::Ipv4),
            ("2 reflectors", 100, 2, IpFamily::Ipv4),
        ]
    } else {
        vec![
            ("mesh", 3, 0, IpFamily::Ipv4),
            ("mesh", 10, 0, IpFamily::Ipv4),
            ("mesh, dual stack", 10, 0, IpFamily::Dual),
            ("mesh, IPv6 only", 10, 0, IpFamily::Ipv6),
            ("mesh", 20, 0, IpFamily::Ipv4),
            ("2 reflectors", 20, 2, IpFamily::Ipv4),
        ]
    };
    for (name, n, rr, family) in scenarios {
        if !only.is_empty() && !only.contains(&n) {
            continue;
        }
        eprintln!("running {name} with {n} nodes…");
        rows.push(scenario(name, n, rr, family));
    }
    println!("\nlab convergence (release binaries, encapsulation none, etcd on loopback)\n");
    println!("| topology | nodes | last agent start → all block routes (s) | CNI ADD (s) | pod ADD start → TCP from every node (s) | agent peak RSS max / mean (MiB) | agents' CPU total (s) | etcd peak RSS (MiB) | etcd watchers / streams |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.3} | {:.3} | {:.1} / {:.1} | {:.2} | {:.0} | {} / {} |",
            r.name,
            r.nodes,
            r.converge_s,
            r.add_s,
            r.pod_s,
            r.rss_max_mib,
            r.rss_mean_mib,
            r.cpu_s,
            r.etcd_rss_mib,
            r.etcd_watchers,
            r.etcd_watch_streams
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "topology": r.name, "nodes": r.nodes, "converge_s": r.converge_s,
                "cni_add_s": r.add_s, "pod_reachable_s": r.pod_s, "agent_peak_rss_max_mib": r.rss_max_mib,
                "agent_peak_rss_mean_mib": r.rss_mean_mib, "agents_cpu_s": r.cpu_s,
                "etcd_peak_rss_mib": r.etcd_rss_mib, "etcd_watchers": r.etcd_watchers,
                "etcd_watch_streams": r.etcd_watch_streams,
            })
        })
        .collect();
    brindle_testsupport::bench::write_results(
        if large {
            "lab-convergence-large.json"
        } else {
            "lab-convergence.json"
        },
        &serde_json::Value::Array(json),
    );
}
