//! IPIP for real, inside a VM: the host kernel has no `ipip`, so [`ipip_in_a_vm`] boots
//! Debian's kernel under qemu (see `brindle_testsupport::vm`) and runs the four `vm_*` tests of
//! this very binary in it, one after another, each on its own lab. They are `#[ignore]`d on
//! the host and refuse to run outside the VM.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use brindle_api::{IPAMHandle, IPPool, IpipMode};
use brindle_lab::{Encap, Lab, LabSpec};
use brindle_testsupport::daemons::wait_for;
use brindle_testsupport::vm::{eprint_block, run_in_vm, VmSpec};
use serde_json::Value;

use crate::common::*;

const IN_VM: &str = "BRINDLE_IN_VM";
const VM_TESTS: &[&str] = &[
    "ipip::vm_always_routes_through_tunl0",
    "ipip::vm_crosssubnet_tunnels_only_between_racks",
    "ipip::vm_mode_flips_replace_routes_in_place",
    "ipip::vm_node_address_change_moves_the_next_hop",
    "ipip::vm_ipip_only_from_the_nodes",
];

/// `brindle-lab` as an operator runs it, inside the VM: a 2-node IPIP lab, two pods that
/// talk, the routes in `status`, and `down`.
const CLI: &str = r#"
L="$(dirname "$(dirname "$0_EXE")")/brindle-lab"
set -e
echo "== brindle-lab up --nodes 2 --encap ipip"
$L up --nodes 2 --encap ipip > /tmp/up.log 2>&1 || { cat /tmp/up.log; exit 1; }
$L pod add a --node node-0
B=$($L pod add b --node node-1 | sed 's/.*: //')
GOT=$($L exec a -- python3 -c "import socket; c=socket.create_connection(('$B',8080),timeout=20); print(c.makefile().readline().strip())")
echo "a reached b at $B: greeted by $GOT"
[ "${GOT%% *}" = b ]   # the greeting is "<pod> <client address>"
$L status | tee /tmp/status.txt
grep -q "via .* dev tunl0 onlink" /tmp/status.txt
echo "== brindle-lab netem (this kernel has sch_netem; the host's may not)"
$L netem node-0 --delay 20ms --loss 0% | tee /tmp/netem.txt
grep -q "eth0 netem delay 20ms loss 0%" /tmp/netem.txt
NS=$(sed -n '/^ACCESS/,$p' /tmp/status.txt | awk '$1 == "node-0" { print $2; exit }')
ip netns exec "$NS" tc qdisc show dev eth0 | grep -q "netem .*delay 20ms"
# The SYN leaves node-0's uplink at least 20 ms late: a connect from a to b takes that long.
T=$($L exec a -- python3 -c "import socket,time; t=time.time(); socket.create_connection(('$B',8080),timeout=20).close(); print(time.time()-t)")
python3 -c "import sys; t=float(sys.argv[1]); assert t >= 0.020, t; print('connect through 20 ms of delay: %.3f s' % t)" "$T"
$L netem node-0 --clear
if ip netns exec "$NS" tc qdisc show dev eth0 | grep -q netem; then echo "netem still on eth0"; exit 1; fi
$L down
echo "== brindle-lab CLI ok"
"#;

#[test]
fn ipip_in_a_vm() {
    let exe = std::env::current_exe().expect("test binary");
    let script = format!(
        "export {IN_VM}=1 BRINDLE_TIMEOUT_SCALE=5 RUST_BACKTRACE=1\n\
         cd {dir}\n\
         {exe} --ignored --exact --test-threads 1 --nocapture {tests} 2>&1 || exit 1\n\
         {CLI}",
        dir = std::env::current_dir().expect("cwd").display(),
        exe = exe.display(),
        tests = VM_TESTS.join(" "),
    );
    let script = script.replace("$0_EXE", &exe.display().to_string());
    let start = Instant::now();
    let r = run_in_vm(&VmSpec {
        script: &script,
        modules: &["ipip", "sch_netem"],
        timeout: Duration::from_secs(1500),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprint_block("inside the VM", &r.output);
    eprintln!(
        "VM: boot {:.1} s, tests and power-off {:.1} s, total {:.1} s",
        r.boot.as_secs_f64(),
        (r.total - r.boot).as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(r.status, 0, "the tests inside the VM failed (output above)");
    let all = format!("test result: ok. {} passed; 0 failed", VM_TESTS.len());
    assert!(
        r.output.contains(&all),
        "not every one of {VM_TESTS:?} passed inside the VM"
    );
    assert!(
        r.output.contains("== brindle-lab CLI ok"),
        "the CLI run in the VM"
    );
}

fn in_vm() {
    assert!(
        std::env::var_os(IN_VM).is_some(),
        "this test needs a kernel with ipip: ipip_in_a_vm runs it inside a VM"
    );
}

/// What a node's `ip route show proto bird` must be: the other nodes' blocks through tunl0
/// (onlink) or directly, per `tunnel(owner)`, and a blackhole for each of its own.
fn expected(lab: &Lab, node: &str, tunnel: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for (owner, blocks) in lab.blocks() {
        for b in blocks {
            if owner == node {
                want.insert(format!("blackhole {b}"));
            } else if tunnel(&owner) {
                want.insert(format!(
                    "{b} via {} dev tunl0 onlink",
                    lab.node(&owner).ip4()
                ));
            } else {
                want.insert(format!("{b} via {} dev eth0", lab.node(&owner).ip4()));
            }
        }
    }
    want
}

fn wait_routes(lab: &Lab, what: &str, tunnel: impl Fn(&str, &str) -> bool) {
    for n in &lab.nodes {
        let node = n.name.clone();
        let mut last = BTreeSet::new();
        wait_for(
            &format!("{node}'s routes to be {what}"),
            Duration::from_secs(40),
            || {
                last = routes(lab, &node);
                (last == expected(lab, &node, |owner| tunnel(&node, owner))).then_some(())
            },
        );
    }
}

fn print_routes(lab: &Lab, mode: &str) {
    let n = &lab.nodes[0].name;
    eprintln!(
        "---- {mode}: ip route show proto bird on {n} ----\n{}",
        lab.bird_routes(n).join("\n")
    );
}

/// tunl0's IPv4 addresses on a node, with prefix length; and its MTU.
fn tunl0(lab: &Lab, node: &str) -> (Vec<(Ipv4Addr, u64)>, u64) {
    let v = lab.node(node).ns.ip_json(&["addr", "show", "tunl0"]);
    let l = &v[0];
    let addrs = l["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| Some((a["local"].as_str()?.parse().ok()?, a["prefixlen"].as_u64()?)))
        .collect();
    (addrs, l["mtu"].as_u64().unwrap_or_default())
}

fn tunnel_handle_ips(lab: &Lab, node: &str) -> Option<IPAMHandle> {
    lab.block_on(
        lab.store
            .all::<IPAMHandle>()
            .get(&format!("ipip-tunnel-addr-{node}")),
    )
    .expect("handle")
}

/// The addresses the blocks hold for `handle`.
fn held_by(lab: &Lab, handle: &str) -> Vec<std::net::IpAddr> {
    let blocks = lab
        .block_on(lab.store.all::<brindle_api::IPAMBlock>().list())
        .expect("blocks")
        .items;
    blocks
        .iter()
        .flat_map(|b| brindle_ipam::block::allocations(&b.spec))
        .filter(|a| a.handle.as_deref() == Some(handle))
        .map(|a| a.ip)
        .collect()
}

fn tunl0_bytes(lab: &Lab, node: &str) -> (u64, u64) {
    let v: Value = lab.node(node).ns.ip_json(&["-s", "link", "show", "tunl0"]);
    let s = &v[0]["stats64"];
    (
        s["rx"]["bytes"].as_u64().unwrap_or_default(),
        s["tx"]["bytes"].as_u64().unwrap_or_default(),
    )
}

/// Packets of IP protocol 4 the node's kernel received (an iptables counter put in first).
fn ipip_packets_in(lab: &Lab, node: &str) -> u64 {
    let out = lab
        .node(node)
        .ns
        .ok(&["iptables-save", "-c", "-t", "filter"]);
    out.lines()
        .filter(|l| l.contains("brl-test-ipip"))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends `n` bytes from pod `from` to `to`'s echo server and reads them back.
fn echo_bytes(lab: &Lab, from: &str, to: &str, n: usize) {
    let ip = lab.pods[to].ip4().to_string();
    let script = format!(
        "import socket\nc=socket.create_connection(('{ip}',8080),timeout=10)\nf=c.makefile('rb')\nf.readline()\n\
         data=b'x'*{n}\nc.sendall(data)\ngot=0\nwhile got<{n}:\n  d=c.recv(65536)\n  assert d, 'closed after %d' % got\n  got+=len(d)\nprint(got)\n"
    );
    let out = lab.exec(from, &["python3", "-c", &script]).expect("exec");
    assert!(
        out.status.success(),
        "{from} → {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three nodes on one subnet, ipipMode Always.
fn ipip_three() -> LabSpec {
    LabSpec {
        nodes: 3,
        encap: Encap::Ipip,
        ..Default::default()
    }
}

/// A pod on every node, all talking, every route through tunl0: where three tests start.
fn settled_ipip(lab: &mut Lab) -> Vec<String> {
    let pods = pod_per_node(lab);
    all_reach(lab, &pods);
    wait_routes(lab, "all through tunl0", |_, _| true);
    pods
}

#[test]
#[ignore = "inside the VM: run by ipip_in_a_vm"]
fn vm_always_routes_through_tunl0() {
    in_vm();
    with_lab(ipip_three(), |lab| {
        let pods = settled_ipip(lab);
        print_routes(lab, "ipipMode Always");
        let pool: ipnetwork::Ipv4Network = brindle_lab::POOL.parse().expect("pool");
        for n in &lab.nodes {
            let (addrs, mtu) = tunl0(lab, &n.name);
            assert_eq!(
                mtu,
                1500 - 20,
                "{}: tunl0 MTU is the uplink's less 20",
                n.name
            );
            assert_eq!(addrs.len(), 1, "{}: {addrs:?}", n.name);
            let (ip, plen) = addrs[0];
            assert_eq!(plen, 32);
            assert!(pool.contains(ip), "{ip} from the pool");
            let h = tunnel_handle_ips(lab, &n.name).expect("the tunnel address's handle");
            assert_eq!(h.spec.block.values().sum::<u32>(), 1, "{h:?}");
            assert_eq!(
                held_by(lab, &format!("ipip-tunnel-addr-{}", n.name)),
                vec![std::net::IpAddr::V4(ip)],
                "{}: tunl0's address is the one IPAM gave the node",
                n.name
            );
        }
        // Traffic really goes through the tunnel: byte counters and protocol 4 on the wire.
        for n in ["node-0", "node-1"] {
            lab.node(n).ns.ok(&[
                "iptables",
                "-w",
                "-I",
                "INPUT",
                "-p",
                "4",
                "-m",
                "comment",
                "--comment",
                "brl-test-ipip",
                "-j",
                "ACCEPT",
            ]);
        }
        let (rx0, tx0) = tunl0_bytes(lab, "node-0");
        let (rx1, tx1) = tunl0_bytes(lab, "node-1");
        let (in0, in1) = (
            ipip_packets_in(lab, "node-0"),
            ipip_packets_in(lab, "node-1"),
        );
        let n = 200_000;
        echo_bytes(lab, &pods[0], &pods[1], n);
        let (rx0b, tx0b) = tunl0_bytes(lab, "node-0");
        let (rx1b, tx1b) = tunl0_bytes(lab, "node-1");
        eprintln!(
            "tunl0 bytes for {n} echoed: node-0 tx +{} rx +{}, node-1 rx +{} tx +{}",
            tx0b - tx0,
            rx0b - rx0,
            rx1b - rx1,
            tx1b - tx1
        );
        let n = n as u64;
        assert!(
            tx0b - tx0 >= n && rx1b - rx1 >= n,
            "there through the tunnel"
        );
        assert!(tx1b - tx1 >= n && rx0b - rx0 >= n, "and back");
        assert!(
            ipip_packets_in(lab, "node-1") > in1,
            "node-1 received IP protocol 4"
        );
        assert!(
            ipip_packets_in(lab, "node-0") > in0,
            "node-0 received IP protocol 4"
        );
    });
}

#[test]
#[ignore = "inside the VM: run by ipip_in_a_vm"]
fn vm_crosssubnet_tunnels_only_between_racks() {
    in_vm();
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        encap: Encap::Crosssubnet,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        let rack = |n: &str| lab.node(n).rack;
        wait_routes(lab, "direct within a rack, tunl0 across", |me, owner| {
            rack(me) != rack(owner)
        });
        print_routes(lab, "ipipMode CrossSubnet, 2 racks");
        assert_ne!(rack("node-0"), rack("node-3"));
        echo_bytes(lab, &pods[0], &pods[3], 10_000);
        echo_bytes(lab, &pods[3], &pods[0], 10_000);
    });
}

fn set_mode(lab: &Lab, mode: IpipMode) {
    let pools = lab.store.all::<IPPool>();
    let mut p = lab
        .block_on(pools.get("default"))
        .expect("get")
        .expect("the default pool");
    p.spec.ipip_mode = mode;
    lab.block_on(pools.update(&p)).expect("update the pool");
}

#[test]
#[ignore = "inside the VM: run by ipip_in_a_vm"]
fn vm_mode_flips_replace_routes_in_place() {
    in_vm();
    with_lab(ipip_three(), |lab| {
        let pods = settled_ipip(lab);
        let mons = monitors(lab, &["node-0", "node-1", "node-2"]);

        set_mode(lab, IpipMode::Never);
        wait_routes(lab, "all direct", |_, _| false);
        print_routes(lab, "ipipMode Never");
        all_reach(lab, &pods);
        for n in &lab.nodes {
            let name = n.name.clone();
            wait_for(
                &format!("{name}'s tunl0 to lose its address"),
                Duration::from_secs(60),
                || {
                    (tunl0(lab, &name).0.is_empty() && tunnel_handle_ips(lab, &name).is_none())
                        .then_some(())
                },
            );
        }

        set_mode(lab, IpipMode::CrossSubnet);
        // One subnet: CrossSubnet is direct everywhere, and tunl0 has an address again.
        wait_routes(lab, "direct (one subnet)", |_, _| false);
        print_routes(lab, "ipipMode CrossSubnet, one subnet");
        for n in &lab.nodes {
            let name = n.name.clone();
            wait_for(
                &format!("{name}'s tunl0 to get an address back"),
                Duration::from_secs(60),
                || (tunl0(lab, &name).0.len() == 1).then_some(()),
            );
        }
        all_reach(lab, &pods);

        set_mode(lab, IpipMode::Always);
        wait_routes(lab, "all through tunl0 again", |_, _| true);
        all_reach(lab, &pods);
        assert_no_withdrawals(&mons);
        let replaced: usize = mons.iter().map(|m| m.lines().len()).sum();
        eprintln!("route changes seen by ip monitor over three flips: {replaced}, deletions: 0");
    });
}

#[test]
#[ignore = "inside the VM: run by ipip_in_a_vm"]
fn vm_node_address_change_moves_the_next_hop() {
    in_vm();
    with_lab(ipip_three(), |lab| {
        let pods = settled_ipip(lab);
        let i = lab.node_index("node-2");
        let old = lab.nodes[i].ip4();
        let new = Ipv4Addr::new(old.octets()[0], old.octets()[1], old.octets()[2], 200);
        let gw = Ipv4Addr::new(old.octets()[0], old.octets()[1], old.octets()[2], 1);
        lab.stop_agent(i);
        let ns = &lab.nodes[i].ns;
        ns.ok(&["ip", "addr", "del", &format!("{old}/24"), "dev", "eth0"]);
        ns.ok(&["ip", "addr", "add", &format!("{new}/24"), "dev", "eth0"]);
        ns.ok(&["ip", "route", "replace", "default", "via", &gw.to_string()]);
        lab.nodes[i].ip = Some(new);
        lab.start_agent(i);
        wait_routes(lab, "through tunl0 to node-2's new address", |_, _| true);
        for n in ["node-0", "node-1"] {
            let r = lab.bird_routes(n).join("\n");
            assert!(
                !r.contains(&format!("via {old} ")),
                "{n} still routes via {old}:\n{r}"
            );
        }
        all_reach(lab, &pods);
    });
}

/// IPIP to a node from an address that is no node's (a stranger on the nodes' subnet,
/// claiming to be a pod of node-1) is dropped; node-1's own tunnel packets, made the same
/// way, arrive; and once an operator's rule lets the stranger's IPIP in ahead of the guard,
/// its packets arrive too (the guard is what stopped them).
#[test]
#[ignore = "inside the VM: run by ipip_in_a_vm"]
fn vm_ipip_only_from_the_nodes() {
    in_vm();
    let spec = LabSpec {
        nodes: 2,
        encap: Encap::Ipip,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let pods = settled_ipip(lab);
        let (a, c) = (lab.pods[&pods[0]].ip4(), lab.pods[&pods[1]].ip4());
        let n0 = lab.node("node-0").ip4();
        let stranger = brindle_testsupport::Netns::new("brl-ext");
        stranger.veth("eth0", &lab.fabric, "x200");
        lab.fabric
            .ok(&["ip", "link", "set", "x200", "master", "br0", "up"]);
        stranger.ok(&["ip", "addr", "add", "198.18.0.200/24", "dev", "eth0"]);
        stranger.ok(&["ip", "link", "set", "eth0", "up"]);
        stranger.ok(&[
            "ip",
            "link",
            "add",
            "t0",
            "type",
            "ipip",
            "local",
            "198.18.0.200",
            "remote",
            &n0.to_string(),
        ]);
        stranger.ok(&["ip", "link", "set", "t0", "up"]);
        stranger.ok(&["ip", "route", "add", &format!("{a}/32"), "dev", "t0"]);
        let (_l, heard) = udp_listener(&lab.pods[&pods[0]].ns);
        let send = |ns: &brindle_testsupport::Netns, tag: &str| {
            let out = ns.run(&[
                "python3",
                "-c",
                SPOOF,
                &c.to_string(),
                &a.to_string(),
                "9999",
                tag,
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        send(&stranger, "stranger");
        // node-1 sends as its pod: the route to a's block is node-1's tunnel.
        send(&lab.node("node-1").ns, "genuine");
        let lines = heard_until_genuine(&heard, "pod a");
        assert!(
            lines.iter().all(|l| l == &format!("genuine {c}")),
            "IPIP from a stranger reached pod a: {lines:?}"
        );
        // The operator's exception, in the table the agent writes, ahead of the guard.
        let tool = ["iptables-legacy", "iptables-nft"]
            .into_iter()
            .find(|t| {
                lab.node("node-0")
                    .ns
                    .ok(&[&format!("{t}-save"), "-t", "filter"])
                    .contains("BRL-HOST-GUARD")
            })
            .expect("the agent's iptables");
        lab.node("node-0").ns.ok(&[
            tool,
            "-w",
            "-I",
            "INPUT",
            "1",
            "-p",
            "4",
            "-s",
            "198.18.0.200",
            "-j",
            "ACCEPT",
        ]);
        send(&stranger, "genuine-stranger");
        let lines = heard_until_genuine(&heard, "pod a, the stranger let in");
        assert!(
            lines.contains(&format!("genuine-stranger {c}")),
            "{lines:?}"
        );
    });
}
