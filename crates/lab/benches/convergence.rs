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
//! Prints a table and writes `bench-results/lab-convergence.json`.

use std::time::{Duration, Instant};

use brindle_ipam::{AssignRequest, Ipam};
use brindle_lab::{IpFamily, Lab, LabSpec};

struct Row {
    name: String,
    nodes: usize,
    converge_s: f64,
    add_s: f64,
    pod_s: f64,
    rss_max_mib: f64,
    rss_mean_mib: f64,
    cpu_s: f64,
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
    lab.start_agents(&mut |_| {}).expect("agents");
    let converge = lab
        .wait_converged(Duration::from_secs(300))
        .expect("convergence");
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
    Row {
        name: name.into(),
        nodes,
        converge_s: converge.as_secs_f64(),
        add_s: add.as_secs_f64(),
        pod_s: pod.as_secs_f64(),
        rss_max_mib: rss.iter().cloned().fold(0.0, f64::max),
        rss_mean_mib: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        cpu_s: cpu,
    }
}

fn main() {
    brindle_lab::use_release_binaries();
    let mut rows = vec![];
    for (name, n, rr, family) in [
        ("mesh", 3, 0, IpFamily::Ipv4),
        ("mesh", 10, 0, IpFamily::Ipv4),
        ("mesh, dual stack", 10, 0, IpFamily::Dual),
        ("mesh, IPv6 only", 10, 0, IpFamily::Ipv6),
        ("mesh", 20, 0, IpFamily::Ipv4),
        ("2 reflectors", 20, 2, IpFamily::Ipv4),
    ] {
        eprintln!("running {name} with {n} nodes…");
        rows.push(scenario(name, n, rr, family));
    }
    println!("\nlab convergence (release binaries, encapsulation none, etcd on loopback)\n");
    println!("| topology | nodes | last agent start → all block routes (s) | CNI ADD (s) | pod ADD start → TCP from every node (s) | agent peak RSS max / mean (MiB) | agents' CPU total (s) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.3} | {:.3} | {:.1} / {:.1} | {:.2} |",
            r.name, r.nodes, r.converge_s, r.add_s, r.pod_s, r.rss_max_mib, r.rss_mean_mib, r.cpu_s
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "topology": r.name, "nodes": r.nodes, "converge_s": r.converge_s,
                "cni_add_s": r.add_s, "pod_reachable_s": r.pod_s, "agent_peak_rss_max_mib": r.rss_max_mib,
                "agent_peak_rss_mean_mib": r.rss_mean_mib, "agents_cpu_s": r.cpu_s,
            })
        })
        .collect();
    brindle_testsupport::bench::write_results(
        "lab-convergence.json",
        &serde_json::Value::Array(json),
    );
}
