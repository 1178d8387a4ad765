//! Helpers shared by the suites: a lab that prints its logs when a test fails, reachability
//! and route checks, `ip monitor route` recorders.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::process::Stdio;
use std::time::Duration;

use std::collections::BTreeMap;

use brindle_lab::{Lab, LabSpec};
use brindle_testsupport::daemons::{tail, wait_for};
use brindle_testsupport::ChildGuard;

/// Builds a lab, runs the test, and on failure prints the tail of every agent's log.
pub fn with_lab(spec: LabSpec, test: impl FnOnce(&mut Lab)) {
    let mut lab = Lab::up(spec, &mut |s| eprintln!("lab: {s}")).expect("lab up");
    let r = catch_unwind(AssertUnwindSafe(|| test(&mut lab)));
    if let Err(e) = r {
        for n in &lab.nodes {
            eprintln!(
                "---- {} agent log (tail) ----\n{}",
                n.name,
                tail(&n.log(), 40)
            );
        }
        drop(lab);
        resume_unwind(e);
    }
}

/// One pod per node, named after it (`p-node-0`, …); returns the names.
pub fn pod_per_node(lab: &mut Lab) -> Vec<String> {
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    nodes
        .iter()
        .map(|n| {
            let p = format!("p-{n}");
            lab.pod_add(&p, n)
                .unwrap_or_else(|e| panic!("pod add {p} on {n}: {e}"));
            p
        })
        .collect()
}

/// A pod on every node, all reaching each other, every node holding exactly the mesh's
/// routes: where most tests start.
pub fn settled_mesh(lab: &mut Lab) -> Vec<String> {
    let pods = pod_per_node(lab);
    all_reach(lab, &pods);
    wait_mesh_routes(lab);
    pods
}

/// Every pod reaches every other pod over TCP (and is greeted by the right one).
pub fn all_reach(lab: &Lab, pods: &[String]) {
    for a in pods {
        for b in pods {
            if a == b {
                continue;
            }
            wait_for(
                &format!("{a} to reach {b} over TCP"),
                Duration::from_secs(40),
                || lab.reach(a, b).ok().filter(|name| name == b),
            );
        }
    }
}

/// What a node's `ip route show proto bird` must be on one L2 segment: every other node's
/// blocks via that node, a blackhole for each of its own.
pub fn expected_mesh_routes(lab: &Lab, node: &str) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for (owner, blocks) in lab.blocks() {
        if lab.nodes.iter().all(|n| n.name != owner) {
            continue; // a removed node's blocks, until the controller frees them
        }
        for b in blocks.iter().filter(|b| !b.contains(':')) {
            if owner == node {
                want.insert(format!("blackhole {b}"));
            } else {
                let ip = lab.node(&owner).ip4();
                want.insert(format!("{b} via {ip} dev eth0"));
            }
        }
    }
    want
}

/// The same for IPv6 blocks: via the other node's IPv6 address.
pub fn expected_mesh_routes6(lab: &Lab, node: &str) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for (owner, blocks) in lab.blocks() {
        let Some(n) = lab.nodes.iter().find(|n| n.name == owner) else {
            continue;
        };
        for b in blocks.iter().filter(|b| b.contains(':')) {
            if owner == node {
                want.insert(format!("blackhole {b}"));
            } else {
                let ip = n.ip6.expect("a dual-stack node has an IPv6 address");
                want.insert(format!("{b} via {ip} dev eth0"));
            }
        }
    }
    want
}

pub fn routes(lab: &Lab, node: &str) -> BTreeSet<String> {
    lab.bird_routes(node)
        .into_iter()
        .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `ip -6 route show proto bird`, without what IPv6 listings add (`metric 1024 pref medium`,
/// a blackhole's `dev lo`).
pub fn routes6(lab: &Lab, node: &str) -> BTreeSet<String> {
    lab.bird_routes6(node)
        .into_iter()
        .map(|r| {
            let w: Vec<&str> = r.split_whitespace().collect();
            let mut out = vec![];
            let mut i = 0;
            while i < w.len() {
                match w[i] {
                    "metric" | "pref" => i += 2,
                    "dev" if w[0] == "blackhole" => i += 2,
                    x => {
                        out.push(x);
                        i += 1;
                    }
                }
            }
            out.join(" ")
        })
        .collect()
}

/// Waits until each node's IPv6 proto-bird routes are exactly the mesh's.
pub fn wait_mesh_routes6(lab: &Lab) {
    for n in &lab.nodes {
        wait_for(
            &format!("{}'s IPv6 routes to be exactly the mesh's", n.name),
            Duration::from_secs(40),
            || {
                let want = expected_mesh_routes6(lab, &n.name);
                (routes6(lab, &n.name) == want).then_some(())
            },
        );
    }
}

/// Every pod reaches every other pod over TCP to its IPv6 address.
pub fn all_reach6(lab: &Lab, pods: &[String]) {
    for a in pods {
        for b in pods {
            if a == b {
                continue;
            }
            wait_for(
                &format!("{a} to reach {b} over IPv6"),
                Duration::from_secs(40),
                || lab.reach6(a, b).ok().filter(|name| name == b),
            );
        }
    }
}

/// Waits until each node's proto-bird routes are exactly the mesh's.
pub fn wait_mesh_routes(lab: &Lab) {
    for n in &lab.nodes {
        wait_for(
            &format!("{}'s routes to be exactly the mesh's", n.name),
            Duration::from_secs(40),
            || {
                let want = expected_mesh_routes(lab, &n.name);
                (routes(lab, &n.name) == want).then_some(())
            },
        );
    }
}

/// `ip monitor route` in a node's namespace, written to a file.
pub struct RouteMonitor {
    _child: ChildGuard,
    pub file: std::path::PathBuf,
}

/// Not one proto-bird route was deleted on any of these nodes.
pub fn assert_no_withdrawals(monitors: &[RouteMonitor]) {
    for m in monitors {
        let d = m.bird_deletions();
        assert!(
            d.is_empty(),
            "routes withdrawn ({}): {d:?}",
            m.file.display()
        );
    }
}

/// A monitor on each of these nodes.
pub fn monitors(lab: &Lab, nodes: &[&str]) -> Vec<RouteMonitor> {
    nodes.iter().map(|n| RouteMonitor::start(lab, n)).collect()
}

impl RouteMonitor {
    /// Proto-bird route deletions seen (the CNI's own /32 routes come and go with pods).
    pub fn bird_deletions(&self) -> Vec<String> {
        self.deleted()
            .into_iter()
            .filter(|l| l.contains("proto bird"))
            .collect()
    }

    pub fn start(lab: &Lab, node: &str) -> RouteMonitor {
        Self::start_family(lab, node, "-4")
    }

    /// `family` is `-4` or `-6`.
    pub fn start_family(lab: &Lab, node: &str, family: &str) -> RouteMonitor {
        let file = lab.dir.path().join(format!("monitor{family}-{node}.log"));
        let out = std::fs::File::create(&file).expect("monitor file");
        let child = lab
            .node(node)
            .ns
            .command(&["ip", family, "monitor", "route"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitor {
            _child: ChildGuard(child),
            file,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Route deletions seen (pod-side /32 scope-link routes excluded: they are the CNI's).
    pub fn deleted(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("Deleted"))
            .collect()
    }
}

/// Datagrams a pod sends with a source that is not its own: `src dst port tag`, five each,
/// through a raw socket (the kernel fills in the IP header's length and checksum).
pub const SPOOF: &str = r#"
import socket, struct, sys
src, dst, port, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = struct.pack("!HHHH", 40000, port, 8 + len(tag), 0) + tag
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
for _ in range(5):
    s.sendto(ip + udp, (dst, 0))
"#;

/// Prints each datagram that arrives on UDP 9999 as `<payload> <source>` (over IPv6 with
/// the argument `6`).
pub const LISTEN: &str = r#"
import socket, sys
v6 = sys.argv[1:] == ["6"]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("::" if v6 else "0.0.0.0", 9999))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(256)
    print(data.decode(errors="replace"), addr[0], flush=True)
"#;

/// A UDP listener on port 9999 in `ns` ([`LISTEN`]), ready; its lines arrive on the receiver.
pub fn udp_listener(
    ns: &brindle_testsupport::Netns,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    udp_listener_on(ns, false)
}

/// [`udp_listener`] on IPv6 (`v6`) or IPv4.
pub fn udp_listener_on(
    ns: &brindle_testsupport::Netns,
    v6: bool,
) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    let family = if v6 { "6" } else { "4" };
    let child = ns
        .command(&["python3", "-c", LISTEN, family])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener");
    let mut g = ChildGuard(child);
    let out = g.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    assert_eq!(
        first.as_deref(),
        Ok("ready"),
        "the listener in {}",
        ns.name()
    );
    (g, rx)
}

/// What a listener heard until a datagram tagged `genuine` (sent after the forged ones, the
/// same way) arrived, and a moment more: anything forged that was going to arrive has.
pub fn heard_until_genuine(heard: &std::sync::mpsc::Receiver<String>, who: &str) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l| l.starts_with("genuine")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match heard.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("{who} heard nothing genuine: {lines:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    lines.extend(heard.try_iter());
    lines
}

/// The operator's ranges for externalIPs and LoadBalancer addresses (the default
/// BGPConfiguration's serviceExternalIPs and serviceLoadBalancerIPs): none is programmed
/// outside them.
pub fn allow_service_addresses(lab: &Lab, cidr: &str) {
    use brindle_api::bgp::ServiceRange;
    let api = lab.store.all::<brindle_api::BGPConfiguration>();
    let mut c = lab
        .block_on(api.get("default"))
        .expect("get")
        .expect("the lab's default BGPConfiguration");
    let r = vec![ServiceRange { cidr: cidr.into() }];
    c.spec.service_external_ips = r.clone();
    c.spec.service_load_balancer_ips = r;
    lab.block_on(api.update(&c)).expect("update");
}

/// Restarts node i's agent and returns its log from the restart to its first sync (Services and
/// NetworkPolicy are written together).
pub fn restart_and_first_sync(lab: &mut Lab, i: usize) -> String {
    let log = lab.nodes[i].log();
    let offset = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
    lab.stop_agent(i);
    lab.start_agent(i);
    wait_for(
        "the restarted agent's first Services sync",
        Duration::from_secs(30),
        || {
            let b = std::fs::read(&log).ok()?;
            let since = String::from_utf8_lossy(b.get(offset..)?).to_string();
            let synced = since.contains("nothing written") || since.contains("services programmed");
            (since.contains("services: waiting") && synced).then_some(since)
        },
    )
}

/// `iptables-legacy-save -c -t table` on `node`.
pub fn save(lab: &Lab, node: &str, table: &str) -> String {
    lab.node(node)
        .ns
        .ok(&["iptables-legacy-save", "-c", "-t", table])
}

/// The dataplane a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dp {
    Iptables,
    Nftables,
}

impl Dp {
    pub fn spec(self, s: LabSpec) -> LabSpec {
        LabSpec {
            dataplane: match self {
                Dp::Iptables => "iptables",
                Dp::Nftables => "nftables",
            }
            .into(),
            ..s
        }
    }

    /// Every rule of ours on `node`, as text.
    pub fn ours(self, lab: &Lab, node: &str) -> String {
        match self {
            Dp::Iptables => save(lab, node, "nat") + &save(lab, node, "filter"),
            Dp::Nftables => lab
                .node(node)
                .ns
                .ok(&["nft", "list", "table", "ip", "brindle"]),
        }
    }

    /// Empties the chain that leads Service addresses to their chains.
    pub fn flush_dispatch(self, lab: &Lab, node: &str) {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => ns.ok(&["iptables-legacy", "-t", "nat", "-F", "BRL-SERVICES"]),
            Dp::Nftables => ns.ok(&["nft", "flush", "chain", "ip", "brindle", "services"]),
        };
    }

    pub fn dispatch_present(self, lab: &Lab, node: &str) -> bool {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => ns
                .ok(&["iptables-legacy", "-t", "nat", "-S", "BRL-SERVICES"])
                .contains("-A BRL-SERVICES"),
            Dp::Nftables => ns
                .ok(&["nft", "list", "chain", "ip", "brindle", "services"])
                .contains("vmap @service-ips"),
        }
    }

    /// What a rewrite of our rules would change: iptables, each service rule's packet
    /// counter (reset when its chain is written); nftables, each rule's handle (new when
    /// written).
    pub fn fingerprint(self, lab: &Lab, node: &str) -> BTreeMap<String, u64> {
        match self {
            Dp::Iptables => save(lab, node, "nat")
                .lines()
                .filter(|l| l.contains("-A BRL-SVC-"))
                .filter_map(|l| {
                    let (c, rule) = l.strip_prefix('[')?.split_once("] ")?;
                    Some((rule.to_string(), c.split(':').next()?.parse().ok()?))
                })
                .collect(),
            Dp::Nftables => lab
                .node(node)
                .ns
                .ok(&["nft", "-a", "list", "table", "ip", "brindle"])
                .lines()
                .filter_map(|l| {
                    let (rule, h) = l.trim().rsplit_once(" # handle ")?;
                    Some((rule.to_string(), h.parse().ok()?))
                })
                .collect(),
        }
    }
    /// The node guard (pods kept from BGP ports) is programmed on `node`.
    pub fn guard_ready(self, lab: &Lab, node: &str) -> bool {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => {
                let t = ns.ok(&["iptables-legacy-save", "-t", "filter"])
                    + &ns.ok(&["iptables-nft-save", "-t", "filter"]);
                t.contains("BRL-HOST-GUARD")
            }
            Dp::Nftables => ns
                .run(&["nft", "list", "chain", "ip", "brindle", "host-guard"])
                .status
                .success(),
        }
    }

    /// The members of one of our address sets (by its ipset name) on `node`, as text.
    pub fn set(self, lab: &Lab, node: &str, ipset: &str) -> String {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => ns.ok(&["ipset", "list", ipset]),
            Dp::Nftables => {
                let name = ipset.strip_prefix("brl40").unwrap_or(ipset);
                ns.ok(&["nft", "list", "set", "ip", "brindle", name])
            }
        }
    }

    /// Where Service addresses lead on `node`: iptables, the nat table; nftables, the
    /// `service-ips` and `service-nodeports` maps.
    pub fn dispatch(self, lab: &Lab, node: &str) -> String {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => {
                ns.ok(&["iptables-legacy-save", "-t", "nat"])
                    + &ns.ok(&["iptables-nft-save", "-t", "nat"])
            }
            Dp::Nftables => {
                ns.ok(&["nft", "list", "map", "ip", "brindle", "service-ips"])
                    + &ns.ok(&["nft", "list", "map", "ip", "brindle", "service-nodeports"])
            }
        }
    }

    /// The anti-spoofing rule is programmed on `node`, and the packets it dropped.
    pub fn anti_spoof(self, lab: &Lab, node: &str) -> Option<u64> {
        self.anti_spoof_family(lab, node, false)
    }

    /// The IPv4 rule's drops, or (`v6`) the IPv6 rule's (ip6tables, table `ip6 brindle`).
    pub fn anti_spoof_family(self, lab: &Lab, node: &str, v6: bool) -> Option<u64> {
        let ns = &lab.node(node).ns;
        match self {
            Dp::Iptables => {
                let mut found = None;
                let stem = if v6 { "ip6tables" } else { "iptables" };
                for b in ["legacy", "nft"] {
                    let t = format!("{stem}-{b}");
                    let out = ns.run(&[&t, "-t", "raw", "-L", "BRL-ANTI-SPOOF", "-v", "-x", "-n"]);
                    for l in String::from_utf8_lossy(&out.stdout).lines() {
                        if l.contains("rpfilter") && l.contains("brl+") {
                            let n = l.split_whitespace().next()?.parse::<u64>().ok()?;
                            found = Some(found.unwrap_or(0) + n);
                        }
                    }
                }
                found
            }
            Dp::Nftables => {
                let fam = if v6 { "ip6" } else { "ip" };
                let out = ns.run(&["nft", "list", "chain", fam, "brindle", "raw-prerouting"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let l = text
                    .lines()
                    .find(|l| l.contains("iifname \"brl*\" fib saddr . iif oif missing"))?;
                let (_, rest) = l.split_once("counter packets ")?;
                rest.split_whitespace().next()?.parse().ok()
            }
        }
    }
}
