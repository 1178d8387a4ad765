//! Reflector scale: one route reflector, 1,000 iBGP clients (opened by a load generator from
//! 1,000 addresses inside a namespace), each advertising one /26 block. Measured: the time
//! from the first connection until every client has every other client's block, and the
//! reflector's peak RSS. Brindle beside BIRD as the reflector, same topology.
//!
//! Topology: this process moves into a namespace ("gen", clients 198.18.64.1 up, its side of
//! the link 198.18.0.2/24), joined by a veth to the reflector's ("rr", 198.18.0.1/24, the
//! clients routed via 198.18.0.2).
//!
//! Run: `cargo bench -p brindle-bgp --bench reflector` (`BRINDLE_BENCH_CLIENTS=1000`,
//! `BRINDLE_BENCH_DAEMONS=brindle,bird`). Writes bench-results/bgp-reflector.json.

mod loadgen;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_testsupport::bench::write_results;
use brindle_testsupport::daemons::Bird;
use brindle_testsupport::{ChildGuard, Netns};
use ipnetwork::IpNetwork;

const RR: &str = "198.18.0.1";
const AS: u32 = 64512;
/// The clients' side of the link, their router.
const GW: &str = "198.18.0.2";
/// Where client addresses are taken from (16,000 fit).
const CLIENTS: &str = "198.18.64.0/18";

fn client_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 1)) + i)
}

/// Client i's block: the i-th /26 of 10.64.0.0/10.
fn block(i: u32) -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + (i << 6))), 26).expect("prefix")
}

fn block_index(p: &IpNetwork) -> Option<usize> {
    match p {
        IpNetwork::V4(n) if n.prefix() == 26 => {
            let a = u32::from(n.network()).checked_sub(0x0a40_0000)?;
            Some((a >> 6) as usize).filter(|i| *i < 1 << 20)
        }
        _ => None,
    }
}

fn batch(cmds: &str) {
    let mut c = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(cmds.as_bytes())
        .expect("write");
    assert!(c.wait().expect("ip").success(), "ip -batch");
}

enum Running {
    Brindle(ChildGuard, #[allow(dead_code)] tempfile::TempDir),
    Bird(Bird),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Brindle(c, _) => c.0.id(),
            Running::Bird(b) => b.pid(),
        }
    }
}

fn start(daemon: &str, ns: &Netns, n: u32) -> Running {
    match daemon {
        "brindle" => {
            let dir = tempfile::tempdir().expect("dir");
            let mut conf = format!(
                "local_as = {AS}\nrouter_id = \"{RR}\"\ncluster_id = \"{RR}\"\nlisten = \"{RR}:179\"\n\
                 control_socket = \"{}/bgpd.sock\"\n[graceful_restart]\nenabled = false\n",
                dir.path().display()
            );
            for i in 0..n {
                conf += &format!(
                    "[[peer]]\naddress = \"{}\"\nasn = {AS}\nrr_client = true\npassive = true\nfamilies = [\"ipv4\"]\n",
                    client_addr(i)
                );
            }
            let child = loadgen::spawn_bgpd(ns, &dir, &conf, &loadgen::bgpd_bin());
            Running::Brindle(child, dir)
        }
        "bird" => {
            let mut conf = format!(
                "router id {RR};\nprotocol device {{}}\n\
                 protocol static {{ ipv4; route {CLIENTS} via {GW}; }}\n\
                 template bgp rrc {{ local {RR} as {AS}; rr client; rr cluster id {RR}; passive on; error wait time 1, 5;\n\
                 ipv4 {{ import all; export where source = RTS_BGP; }}; }}\n"
            );
            for i in 0..n {
                conf += &format!(
                    "protocol bgp c{i} from rrc {{ neighbor {} as {AS}; }}\n",
                    client_addr(i)
                );
            }
            Running::Bird(Bird::start(ns, &conf))
        }
        o => panic!("unknown daemon {o:?}"),
    }
}

/// Every client connects, announces its block and counts the others'. Returns the time
/// until the last client had all of them.
async fn run_clients(n: u32) -> std::io::Result<(f64, f64)> {
    let start = Instant::now();
    let rr = SocketAddr::new(RR.parse().expect("ip"), 179);
    let mut tasks = vec![];
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let me = client_addr(i);
            let mut c =
                loadgen::connect(IpAddr::V4(me), rr, AS, me, Duration::from_secs(120)).await?;
            let up = Instant::now();
            use tokio::io::AsyncWriteExt;
            c.w.write_all(&loadgen::announce(block(i), me)).await?;
            // A client is never sent its own block back (the reflector leaves each
            // client's own routes out of what it shares with the others).
            let own = std::sync::atomic::AtomicBool::new(false);
            let done = loadgen::count_with(&mut c, n as usize - 1, |p| {
                let j = block_index(p)?;
                if j == i as usize {
                    own.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                (j != i as usize).then_some(j)
            })
            .await?;
            if own.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::other(format!(
                    "client {i} was sent its own block"
                )));
            }
            // Stay up until everyone is done (our session going away would withdraw).
            Ok::<_, std::io::Error>((up, done, c))
        }));
    }
    let mut last_up = start;
    let mut last_done = start;
    let mut conns = vec![];
    for t in tasks {
        let (up, done, c) = t.await.map_err(std::io::Error::other)??;
        last_up = last_up.max(up);
        last_done = last_done.max(done);
        conns.push(c);
    }
    drop(conns);
    Ok((
        last_up.duration_since(start).as_secs_f64(),
        last_done.duration_since(start).as_secs_f64(),
    ))
}

fn main() {
    let n: u32 = std::env::var("BRINDLE_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let daemons: Vec<String> = std::env::var("BRINDLE_BENCH_DAEMONS")
        .unwrap_or_else(|_| "brindle".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let gen = Netns::new("brl-bench-cl");
    let rr = Netns::new("brl-bench-rr");
    let f = std::fs::File::open(gen.path()).expect("netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
    // The clients sit behind one router address (198.18.0.2), as nodes behind a ToR would:
    // one neighbour entry on the reflector instead of one per client, which would overflow
    // the kernel's neighbour table (gc_thresh3, 1,024 in a namespace) and drop SYNs.
    let mut cmds = format!(
        "link add v0 type veth peer name v0 netns {}\nlink set v0 up\naddr add {GW}/24 dev v0\n",
        rr.name()
    );
    for i in 0..n {
        cmds += &format!("addr add {}/32 dev v0\n", client_addr(i));
    }
    batch(&cmds);
    // ARP from the router's own address, not a client's: the reflector would learn a
    // neighbour entry for every client that asked.
    std::fs::write("/proc/sys/net/ipv4/conf/all/arp_announce", "2").expect("arp_announce");
    std::fs::write("/proc/sys/net/ipv4/conf/v0/arp_announce", "2").expect("arp_announce");
    rr.ok(&["ip", "addr", "add", &format!("{RR}/24"), "dev", "v0"]);
    rr.ok(&["ip", "link", "set", "v0", "up"]);
    rr.ok(&["ip", "route", "add", CLIENTS, "via", GW]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = vec![];
    for d in &daemons {
        let running = start(d, &rr, n);
        // A bound, so a daemon that never converges fails the run (and the guards clean up)
        // instead of hanging it.
        let (up, done) = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(300), run_clients(n))
                    .await
                    .map_err(|_| std::io::Error::other("not converged within 300 s"))?
            })
            .unwrap_or_else(|e| panic!("{d}: {e}"));
        let (rss, cpu) = loadgen::usage(running.pid());
        eprintln!(
            "{d}: all up {up:.2} s, all converged {done:.2} s, {} MiB",
            rss >> 20
        );
        rows.push((d.clone(), up, done, rss, cpu));
        drop(running);
    }
    println!("\nRoute reflector, {n} iBGP clients, one /26 each (2 cores)\n");
    println!(
        "| reflector | all sessions up s | every client has every block s | peak RSS MiB | CPU s |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut json = vec![];
    for (d, up, done, rss, cpu) in rows {
        println!("| {d} | {up:.2} | {done:.2} | {} | {cpu:.1} |", rss >> 20);
        json.push(
            serde_json::json!({"daemon": d, "clients": n, "all_up_seconds": up,
            "converged_seconds": done, "peak_rss_bytes": rss, "cpu_seconds": cpu}),
        );
    }
    write_results("bgp-reflector.json", &serde_json::Value::Array(json));
}
