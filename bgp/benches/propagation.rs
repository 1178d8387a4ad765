//! Propagation (bgperf's method): an injector peer (AS 65001) sends N unique IPv4 prefixes to
//! the daemon under test (AS 64512), a monitor peer (AS 65002) counts them arriving. Daemons:
//! brindle-bgpd, BIRD, GoBGP, FRR in turn, same topology, none installing kernel routes.
//! Two shapes: /24s packed 1,013 to a 4 KiB UPDATE (bgperf's workload) and /28s, 800 to one.
//! Reported, the median of `BRINDLE_BENCH_RUNS` (3) runs, each with a fresh daemon: seconds
//! from the first UPDATE sent to the last prefix counted, the daemon's CPU seconds, its peak
//! RSS and that divided by the prefixes (bytes per route, the process's baseline included).
//! First row of each size: the injector straight to the monitor (the ceiling).
//!
//! Topology: this process moves into a namespace of its own ("gen": injector 198.18.0.2,
//! monitor 198.18.0.3), joined by a veth to the daemon's ("dut", 198.18.0.1).
//!
//! Run: `cargo bench -p brindle-bgp --bench propagation`. Choose with
//! `BRINDLE_BENCH_PREFIXES=100000,1000000`, `BRINDLE_BENCH_DAEMONS=brindle,bird,gobgp,frr`,
//! `BRINDLE_BENCH_SHAPES=24,28` and `BRINDLE_BENCH_RUNS=3`.
//! Writes bench-results/bgp-propagation.json.

mod loadgen;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use brindle_testsupport::bench::write_results;
use brindle_testsupport::daemons::{Bird, Frr, Gobgp};
use brindle_testsupport::{ChildGuard, Netns};
use tokio::net::TcpSocket;

const DUT: &str = "198.18.0.1";
const INJ: &str = "198.18.0.2";
const MON: &str = "198.18.0.3";

fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args:?}");
}

/// A running daemon under test; dropping it stops it.
enum Running {
    /// The process, and the directory its config lives in (removed after it).
    Brindle(ChildGuard, #[allow(dead_code)] tempfile::TempDir),
    Bird(Bird),
    Gobgp(Gobgp),
    Frr(Frr),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Brindle(c, _) => c.0.id(),
            Running::Bird(b) => b.pid(),
            Running::Gobgp(g) => g.pid(),
            Running::Frr(f) => f.pid(),
        }
    }
}

fn start(daemon: &str, dut: &Netns) -> Running {
    match daemon {
        "brindle" => {
            let dir = tempfile::tempdir().expect("dir");
            let conf = format!(
                r#"local_as = 64512
router_id = "{DUT}"
listen = "{DUT}:179"
control_socket = "{}/bgpd.sock"
[graceful_restart]
enabled = false
[[peer]]
address = "{INJ}"
asn = 65001
passive = true
families = ["ipv4"]
[[peer]]
address = "{MON}"
asn = 65002
passive = true
families = ["ipv4"]
"#,
                dir.path().display()
            );
            let child = loadgen::spawn_bgpd(dut, &dir, &conf, &loadgen::bgpd_bin());
            Running::Brindle(child, dir)
        }
        "bird" => Running::Bird(Bird::start(
            dut,
            &format!(
                r#"router id {DUT};
protocol device {{}}
protocol bgp inj {{ local {DUT} as 64512; neighbor {INJ} as 65001; passive on;
  ipv4 {{ import all; export none; }}; }}
protocol bgp mon {{ local {DUT} as 64512; neighbor {MON} as 65002; passive on;
  ipv4 {{ import none; export all; }}; }}
"#
            ),
        )),
        "gobgp" => Running::Gobgp(Gobgp::start(
            dut,
            &format!(
                r#"[global.config]
  as = 64512
  router-id = "{DUT}"
  port = 179
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{INJ}"
    peer-as = 65001
  [neighbors.transport.config]
    passive-mode = true
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{MON}"
    peer-as = 65002
  [neighbors.transport.config]
    passive-mode = true
"#
            ),
        )),
        "frr" => Running::Frr(Frr::start_with(
            dut,
            &format!(
                r#"frr defaults traditional
hostname dut
router bgp 64512
 bgp router-id {DUT}
 no bgp ebgp-requires-policy
 neighbor {INJ} remote-as 65001
 neighbor {INJ} passive
 neighbor {MON} remote-as 65002
 neighbor {MON} passive
!
"#
            ),
            &["-n"],
        )),
        o => panic!("unknown daemon {o:?}"),
    }
}

struct Row {
    daemon: String,
    shape: u8,
    prefixes: u32,
    secs: f64,
    rss: u64,
    cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn ceiling(shape: loadgen::Shape, n: u32, msgs: &[bytes::Bytes]) -> f64 {
    let s = TcpSocket::new_v4().expect("socket");
    s.set_reuseaddr(true).expect("reuse");
    s.bind(SocketAddr::new(MON.parse().expect("ip"), 179))
        .expect("bind");
    let l = s.listen(16).expect("listen");
    let mon = tokio::spawn(async move {
        let mut c = loadgen::accept(&l, 65002, MON.parse().expect("ip"))
            .await
            .expect("monitor session");
        loadgen::count(&mut c, shape, n as usize)
            .await
            .expect("count")
    });
    let mut inj = loadgen::connect(
        INJ.parse().expect("ip"),
        SocketAddr::new(MON.parse().expect("ip"), 179),
        65001,
        INJ.parse().expect("ip"),
        Duration::from_secs(10),
    )
    .await
    .expect("injector session");
    let t0 = Instant::now();
    loadgen::inject(&mut inj, msgs).await.expect("inject");
    let t1 = mon.await.expect("monitor");
    drop(inj);
    t1.duration_since(t0).as_secs_f64()
}

async fn through(shape: loadgen::Shape, n: u32, msgs: &[bytes::Bytes]) -> std::io::Result<f64> {
    let dut = SocketAddr::new(DUT.parse().expect("ip"), 179);
    let patience = Duration::from_secs(60);
    let mut mon = loadgen::connect(
        MON.parse().expect("ip"),
        dut,
        65002,
        MON.parse().expect("ip"),
        patience,
    )
    .await?;
    let monitor = tokio::spawn(async move { loadgen::count(&mut mon, shape, n as usize).await });
    let mut inj = loadgen::connect(
        INJ.parse().expect("ip"),
        dut,
        65001,
        INJ.parse().expect("ip"),
        patience,
    )
    .await?;
    // Let the daemon finish bringing the session up (End-of-RIB etc.) before timing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    loadgen::inject(&mut inj, msgs).await?;
    let inj = loadgen::keep_alive(inj);
    let t1 = tokio::time::timeout(Duration::from_secs(1200), monitor)
        .await
        .map_err(|_| std::io::Error::other("no full propagation within 20 minutes"))?
        .map_err(std::io::Error::other)??;
    inj.abort();
    Ok(t1.duration_since(t0).as_secs_f64())
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() {
    let sizes: Vec<u32> = list("BRINDLE_BENCH_PREFIXES", "100000,1000000")
        .iter()
        .map(|s| s.parse().expect("a number of prefixes"))
        .collect();
    let daemons = list("BRINDLE_BENCH_DAEMONS", "brindle,bird,gobgp,frr");
    let shapes: Vec<loadgen::Shape> = list("BRINDLE_BENCH_SHAPES", "24,28")
        .iter()
        .map(|s| loadgen::Shape::parse(s).expect("a prefix length: 24 or 28"))
        .collect();
    let runs: usize = list("BRINDLE_BENCH_RUNS", "3")
        .first()
        .and_then(|s| s.parse().ok())
        .filter(|r| *r > 0)
        .expect("BRINDLE_BENCH_RUNS: a number of runs");
    let gen = Netns::new("brl-bench-gen");
    let dut = Netns::new("brl-bench-dut");
    let f = std::fs::File::open(gen.path()).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
    gen.veth("v0", &dut, "v0");
    ip(&["addr", "add", &format!("{INJ}/24"), "dev", "v0"]);
    ip(&["addr", "add", &format!("{MON}/24"), "dev", "v0"]);
    ip(&["link", "set", "v0", "up"]);
    dut.ok(&["ip", "addr", "add", &format!("{DUT}/24"), "dev", "v0"]);
    dut.ok(&["ip", "link", "set", "v0", "up"]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = vec![];
    for &shape in &shapes {
        for &n in &sizes {
            let msgs = loadgen::updates(shape, n, 65001, INJ.parse::<Ipv4Addr>().expect("ip"));
            let secs = median(
                (0..runs)
                    .map(|_| rt.block_on(ceiling(shape, n, &msgs)))
                    .collect(),
            );
            rows.push(Row {
                daemon: "injector → monitor (ceiling)".into(),
                shape: shape.len,
                prefixes: n,
                secs,
                rss: 0,
                cpu: 0.0,
            });
            for d in &daemons {
                let (mut secs, mut rss, mut cpu) = (vec![], vec![], vec![]);
                for _ in 0..runs {
                    let (s, r, c) = one_run(&rt, d, &dut, shape, n, &msgs);
                    eprintln!(
                        "{d} /{} {n}: {s:.3} s, {} MiB, {c:.2} CPU s",
                        shape.len,
                        r >> 20
                    );
                    secs.push(s);
                    rss.push(r as f64);
                    cpu.push(c);
                }
                rows.push(Row {
                    daemon: d.clone(),
                    shape: shape.len,
                    prefixes: n,
                    secs: median(secs),
                    rss: median(rss) as u64,
                    cpu: median(cpu),
                });
            }
        }
    }
    println!(
        "\nBGP propagation, injector → daemon → monitor, eBGP, one attribute set, median of {runs} (2 cores)\n"
    );
    println!("| daemon | prefixes | seconds | prefixes/s | CPU s | peak RSS MiB | bytes/route |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut json = vec![];
    for r in &rows {
        println!(
            "| {} | {} × /{} | {:.3} | {:.0} | {:.2} | {} | {} |",
            r.daemon,
            r.prefixes,
            r.shape,
            r.secs,
            f64::from(r.prefixes) / r.secs,
            r.cpu,
            r.rss >> 20,
            r.rss / u64::from(r.prefixes.max(1)),
        );
        json.push(serde_json::json!({
            "daemon": r.daemon, "prefix_length": r.shape, "prefixes": r.prefixes,
            "seconds": r.secs, "peak_rss_bytes": r.rss, "cpu_seconds": r.cpu,
            "runs": runs,
        }));
    }
    write_results("bgp-propagation.json", &serde_json::Value::Array(json));
}

/// One daemon, started fresh: (seconds, peak RSS, CPU seconds).
fn one_run(
    rt: &tokio::runtime::Runtime,
    d: &str,
    dut: &Netns,
    shape: loadgen::Shape,
    n: u32,
    msgs: &[bytes::Bytes],
) -> (f64, u64, f64) {
    let running = start(d, dut);
    let secs = match rt.block_on(through(shape, n, msgs)) {
        Ok(s) => s,
        Err(e) => {
            if let Running::Gobgp(g) = &running {
                eprintln!(
                    "{}",
                    brindle_testsupport::daemons::tail(&g.dir.path().join("gobgpd.log"), 30)
                );
            }
            panic!("{d} with {n} prefixes: {e}");
        }
    };
    let (rss, cpu) = loadgen::usage(running.pid());
    (secs, rss, cpu)
}
