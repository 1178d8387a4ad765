//! Dual stack (issue 31): nodes with IPv4 and IPv6 addresses peer over both families, pods
//! get an address of each, and every pod reaches every other over IPv6 as over IPv4.

use brindle_lab::{IpFamily, LabSpec};
use brindle_testsupport::daemons::wait_for;
use std::time::Duration;

use crate::common::*;

fn dual(nodes: usize) -> LabSpec {
    LabSpec {
        nodes,
        ip_family: IpFamily::Dual,
        ..Default::default()
    }
}

/// Three nodes in full mesh: one IPv4 and one IPv6 session per pair, each node's
/// `ip -6 route show proto bird` exactly the other nodes' IPv6 blocks (via their IPv6
/// addresses) and a blackhole for its own, TCP between every pair of pods over IPv6; an agent
/// restart withdraws no IPv6 route anywhere.
#[test]
fn dual_stack_mesh_routes_both_families() {
    with_lab(dual(3), |lab| {
        let pods = settled_mesh(lab);
        all_reach6(lab, &pods);
        wait_mesh_routes6(lab);
        for n in &lab.nodes {
            let peers = lab.peers(&n.name);
            let v6: Vec<&serde_json::Value> = peers
                .iter()
                .filter(|p| p["addr"].as_str().is_some_and(|a| a.contains(':')))
                .collect();
            assert_eq!(peers.len(), 2 * (lab.nodes.len() - 1), "{peers:?}");
            assert_eq!(v6.len(), lab.nodes.len() - 1, "{peers:?}");
            assert!(
                peers.iter().all(|p| p["state"] == "Established"),
                "{peers:?}"
            );
            // Each node's blocks: one of each family.
            let blocks = &lab.blocks()[&n.name];
            assert_eq!(
                blocks.iter().filter(|b| b.contains(':')).count(),
                1,
                "{blocks:?}"
            );
            // The agent turned IPv6 forwarding on.
            let fwd = n.ns.ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
            assert_eq!(fwd.trim(), "1");
        }
        // The pods' own view: an address of each family on eth0, the IPv6 default route
        // via the host veth's link-local address.
        let p = &lab.pods[&pods[0]];
        let r6 = p.ns.ok(&["ip", "-6", "route", "show", "default"]);
        assert!(
            r6.contains("via fe80::ecee:eeff:feee:eeee dev eth0"),
            "{r6}"
        );

        // An agent restart: no IPv6 route withdrawn anywhere, pods still reach over IPv6.
        let names: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mons: Vec<RouteMonitor> = refs
            .iter()
            .map(|n| RouteMonitor::start_family(lab, n, "-6"))
            .collect();
        lab.stop_agent(1);
        lab.start_agent(1);
        wait_for(
            "node-1's sessions to come back",
            Duration::from_secs(40),
            || {
                let p = lab.peers("node-1");
                (p.len() == 4 && p.iter().all(|p| p["state"] == "Established")).then_some(())
            },
        );
        wait_mesh_routes6(lab);
        all_reach6(lab, &pods);
        assert_no_withdrawals(&mons);
    });
}

/// Two racks, a BIRD router per rack with IPv4 and IPv6 sessions to its nodes and to the
/// other rack's router: pods reach each other over IPv6 across racks, nodes route the other
/// rack's IPv6 blocks via their router's IPv6 address, and each router holds every IPv6 block.
#[test]
fn dual_stack_racks_through_top_of_rack_routers() {
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        tor: true,
        ..dual(4)
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        all_reach6(lab, &pods);
        let blocks = lab.blocks();
        for n in &lab.nodes {
            let r = routes6(lab, &n.name);
            for (owner, bs) in &blocks {
                let o = lab.node(owner);
                for b in bs.iter().filter(|b| b.contains(':')) {
                    let want = if owner == &n.name {
                        format!("blackhole {b}")
                    } else if o.rack == n.rack {
                        format!("{b} via {} dev eth0", o.ip6.expect("v6"))
                    } else {
                        let gw =
                            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x18, n.rack as u16, 0, 0, 0, 1);
                        format!("{b} via {gw} dev eth0")
                    };
                    assert!(r.contains(&want), "{}: missing {want:?} in {r:?}", n.name);
                }
            }
            // One session per family, both to its router.
            let peers = lab.peers(&n.name);
            assert_eq!(peers.len(), 2, "{}: {peers:?}", n.name);
        }
        let all6: Vec<&String> = blocks
            .values()
            .flatten()
            .filter(|b| b.contains(':'))
            .collect();
        assert_eq!(all6.len(), 4, "{blocks:?}");
        for t in &lab.tors {
            let shown = t.bird.birdc(&["show", "route", "table", "master6"]);
            for b in &all6 {
                assert!(
                    shown.contains(b.as_str()),
                    "rack {} router lacks {b}: {shown}",
                    t.rack
                );
            }
        }
        // The fabric drawn: a session per family, node to router and router to router.
        let dot = lab.graph();
        for want in [
            r#""node-0" -- "tor-0" [color=darkgreen, style=solid"#,
            r#""node-0" -- "tor-0" [color=darkgreen, style=dashed, label="IPv6"#,
            r#""tor-0" -- "tor-1" [color=darkgreen, style=solid, label="tor-0: Established"#,
            r#""tor-0" -- "tor-1" [color=darkgreen, style=dashed"#,
        ] {
            assert!(dot.contains(want), "{want}:\n{dot}");
        }
    });
}

/// Five datagrams `tag` to `dst` port 9999 from `src`, an address the pod need not hold
/// (IPV6_FREEBIND): a pod forging its IPv6 source.
const SEND6_FROM: &str = r#"
import socket, sys
src, dst, tag = sys.argv[1], sys.argv[2], sys.argv[3].encode()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
s.bind((src, 0))
for _ in range(5):
    s.sendto(tag, (dst, 9999))
"#;

fn dual_dp(dp: Dp, nodes: usize) -> LabSpec {
    dp.spec(dual(nodes))
}

#[test]
fn a_pod_cannot_send_as_another_over_ipv6_iptables() {
    a_pod_cannot_send_as_another_over_ipv6(Dp::Iptables);
}

#[test]
fn a_pod_cannot_send_as_another_over_ipv6_nftables() {
    a_pod_cannot_send_as_another_over_ipv6(Dp::Nftables);
}

/// The IPv6 anti-spoofing rule: a pod's datagrams with another pod's IPv6 address (on its
/// node or another) or an address outside the cluster as source reach no one; its own do.
fn a_pod_cannot_send_as_another_over_ipv6(dp: Dp) {
    with_lab(dual_dp(dp, 2), |lab| {
        settled_mesh(lab);
        lab.pod_add("a", "node-0").expect("pod a");
        lab.pod_add("b", "node-0").expect("pod b");
        lab.pod_add("c", "node-1").expect("pod c");
        for n in ["node-0", "node-1"] {
            wait_for(
                &format!("{n}'s IPv6 anti-spoofing rule"),
                Duration::from_secs(30),
                || dp.anti_spoof_family(lab, n, true).map(|_| ()),
            );
        }
        let v6 = |p: &str| lab.pods[p].ip6.expect("a dual-stack pod").to_string();
        let (a, b, c) = (v6("a"), v6("b"), v6("c"));
        let (_lb, heard_b) = udp_listener_on(&lab.pods["b"].ns, true);
        let (_lc, heard_c) = udp_listener_on(&lab.pods["c"].ns, true);
        let outside = "2001:db8:77::7";
        let send = |src: &str, dst: &str, tag: &str| {
            let out = lab
                .exec("a", &["python3", "-c", SEND6_FROM, src, dst, tag])
                .expect("exec");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        send(&c, &b, "as-c");
        send(&b, &c, "as-b");
        send(outside, &b, "outside");
        send(outside, &c, "outside");
        send(&a, &b, "genuine");
        send(&a, &c, "genuine");
        for (pod, heard) in [("b", &heard_b), ("c", &heard_c)] {
            let lines = heard_until_genuine(heard, pod);
            assert!(
                lines.iter().all(|l| l == &format!("genuine {a}")),
                "{pod} heard forged datagrams: {lines:?}"
            );
        }
        let drops = dp.anti_spoof_family(lab, "node-0", true).unwrap_or(0);
        assert!(
            drops >= 20,
            "the IPv6 anti-spoofing rule dropped {drops} packets"
        );
    });
}

#[test]
fn ipv6_guards_and_neighbour_discovery_iptables() {
    ipv6_guards_and_neighbour_discovery(Dp::Iptables);
}

#[test]
fn ipv6_guards_and_neighbour_discovery_nftables() {
    ipv6_guards_and_neighbour_discovery(Dp::Nftables);
}

/// No pod reaches a node's BGP port over IPv6 (its own node's or another's), and a pod
/// whose egress is denied outright is still reachable over IPv6: its node resolves it by
/// neighbour discovery, whose answers the pod sends to the node (as Felix lets them).
fn ipv6_guards_and_neighbour_discovery(dp: Dp) {
    with_lab(dual_dp(dp, 2), |lab| {
        let pods = settled_mesh(lab);
        all_reach6(lab, &pods);
        let script = lab.echo_script();
        for n in ["node-0", "node-1"] {
            let ip6 = lab.node(n).ip6.expect("v6").to_string();
            // The speaker listens on [::]:179: without the guard the handshake completes.
            let out = lab
                .exec(&pods[0], &["python3", &script, "hello", &ip6, "179"])
                .expect("exec");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("timed out"),
                "a pod reached {n}'s BGP port over IPv6: {out:?}"
            );
        }
        // Egress denied outright for a pod made after the policy (no neighbour entry of
        // its node's is cached anywhere): reached over IPv6 all the same, replies included.
        let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml_ng::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: no-egress, namespace: default}\n\
             spec: {podSelector: {matchLabels: {role: quiet}}, policyTypes: [Egress]}\n",
        )
        .expect("yaml");
        let api = lab
            .store
            .namespaced::<k8s_openapi::api::networking::v1::NetworkPolicy>("default");
        lab.block_on(api.create(&np)).expect("create");
        lab.pod_add_labeled("quiet", "node-1", &[("role", "quiet")])
            .expect("pod quiet");
        wait_for("quiet reached over IPv6", Duration::from_secs(30), || {
            lab.reach6(&pods[0], "quiet").ok().filter(|n| n == "quiet")
        });
        // And its egress is denied over IPv6 as over IPv4.
        assert!(
            lab.reach6("quiet", &pods[0]).is_err(),
            "quiet sent over IPv6"
        );
        assert!(
            lab.reach("quiet", &pods[0]).is_err(),
            "quiet sent over IPv4"
        );
    });
}

#[test]
fn ipv6_nat_outgoing_iptables() {
    ipv6_nat_outgoing(Dp::Iptables);
}

#[test]
fn ipv6_nat_outgoing_nftables() {
    ipv6_nat_outgoing(Dp::Nftables);
}

/// NAT outgoing for an IPv6 pool (Calico's semantics): a server outside the pools (on the
/// fabric's IPv6 gateway) sees the pod's own IPv6 address until the pool says natOutgoing,
/// then its node's; pod to pod over IPv6 is never NATed.
fn ipv6_nat_outgoing(dp: Dp) {
    with_lab(dual_dp(dp, 2), |lab| {
        let pods = settled_mesh(lab);
        let script = lab.echo_script();
        let _server = lab
            .fabric
            .spawn(&["python3", &script, "serve", "outside", "8080"]);
        let node0 = lab.node("node-0").ip6.expect("v6");
        lab.fabric.ok(&[
            "ip",
            "-6",
            "route",
            "replace",
            brindle_lab::POOL6,
            "via",
            &node0.to_string(),
        ]);
        let gw: std::net::IpAddr = "2001:db8:18::1".parse().unwrap();
        let p0 = &lab.pods[&pods[0]];
        assert_eq!(p0.node, "node-0");
        let own = p0.ip6.expect("v6").to_string();
        let seen = |lab: &brindle_lab::Lab| {
            lab.client_addr(&lab.pods[&pods[0]].ns, "hello", gw, 8080, 1)
                .remove(0)
                .ok()
        };
        let first = wait_for("pod → outside over IPv6", Duration::from_secs(20), || {
            seen(lab)
        });
        assert_eq!(first, ("outside".to_string(), own.clone()));
        let pools = lab.store.all::<brindle_api::IPPool>();
        let mut pool = lab.block_on(pools.get("default-ipv6")).unwrap().unwrap();
        pool.spec.nat_outgoing = true;
        lab.block_on(pools.update(&pool)).unwrap();
        wait_for(
            "pod → outside masqueraded",
            Duration::from_secs(20),
            || seen(lab).filter(|r| r.1 == node0.to_string()),
        );
        let other = lab.pods[&pods[1]].ip6.expect("v6");
        let r = lab.client_addr(&lab.pods[&pods[0]].ns, "hello", other.into(), 8080, 1);
        assert_eq!(
            r[0].as_ref().map(|x| x.1.clone()),
            Ok(own),
            "pod to pod over IPv6 was NATed"
        );
    });
}

#[test]
fn dual_stack_services_iptables() {
    dual_stack_services(Dp::Iptables);
}

#[test]
fn dual_stack_services_nftables() {
    dual_stack_services(Dp::Nftables);
}

/// Two `app=web` pods (web-0 on node-0, web-1 on node-1) and a NodePort Service for them.
fn web_service(lab: &mut brindle_lab::Lab) -> brindle_lab::Assigned {
    lab.pod_add_labeled("web-0", "node-0", &[("app", "web")])
        .expect("web-0");
    lab.pod_add_labeled("web-1", "node-1", &[("app", "web")])
        .expect("web-1");
    lab.service_add(&brindle_lab::LabService {
        name: "web".into(),
        selector: vec![("app".into(), "web".into())],
        type_: "NodePort".into(),
        ..Default::default()
    })
    .expect("service")
}

/// `client` reaches both web pods through `ip` (20 connections).
fn answers_from_both(lab: &brindle_lab::Lab, client: &str, ip: std::net::IpAddr) {
    let seen = wait_for(
        &format!("{client} → {ip} reaching both endpoints"),
        Duration::from_secs(30),
        || {
            let r = lab.client(&lab.pods[client].ns, "many", ip, 80, 20);
            let names: std::collections::BTreeSet<String> = r
                .iter()
                .filter_map(|x| x.as_ref().ok())
                .map(|x| x.0.clone())
                .collect();
            (names.len() == 2).then_some(names)
        },
    );
    let seen: Vec<String> = seen.into_iter().collect();
    assert_eq!(seen, ["web-0", "web-1"], "{client} → {ip}");
}

/// The NodePort `np` on `addr`, from the fabric (outside the cluster): a web pod answers.
fn node_port_answers(lab: &brindle_lab::Lab, addr: std::net::IpAddr, np: u16) {
    let r = wait_for(
        &format!("NodePort {addr}:{np}"),
        Duration::from_secs(30),
        || lab.client(&lab.fabric, "hello", addr, np, 1).remove(0).ok(),
    );
    assert!(r.0.starts_with("web-"), "{r:?}");
}

/// A dual-stack Service (PreferDualStack: an IPv4 and an IPv6 cluster IP, an EndpointSlice
/// of each family) answers on both cluster IPs from every node, spreads over both endpoints
/// on each, and its NodePort answers on a node's IPv6 address from outside the cluster.
fn dual_stack_services(dp: Dp) {
    with_lab(dual_dp(dp, 2), |lab| {
        let pods = settled_mesh(lab);
        let a = web_service(lab);
        let v6 = a.cluster_ip6.expect("a dual-stack Service");
        for client in &pods {
            for ip in [a.cluster_ip, v6.into()] {
                answers_from_both(lab, client, ip);
            }
        }
        // The NodePort on a node's IPv6 address, from the fabric (outside the cluster).
        let node1 = lab.node("node-1").ip6.expect("v6");
        node_port_answers(lab, node1.into(), a.node_port(80).expect("node port"));
    });
}

/// A route reflector for both families: with one reflector and the mesh off, each client
/// has an IPv4 and an IPv6 session to the reflector only, and the clients' IPv6 blocks reach
/// each other through it (next hop unchanged: the other client's IPv6 address).
#[test]
fn dual_stack_through_a_route_reflector() {
    let spec = LabSpec {
        reflectors: 1,
        ..dual(3)
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        all_reach6(lab, &pods);
        for n in ["node-1", "node-2"] {
            let peers = lab.peers(n);
            let addrs: Vec<String> = peers
                .iter()
                .map(|p| p["addr"].as_str().unwrap_or_default().to_string())
                .collect();
            let rr = lab.node("node-0");
            assert_eq!(
                addrs,
                [rr.ip4().to_string(), rr.ip6.expect("v6").to_string()],
                "{n}: {peers:?}"
            );
        }
        wait_mesh_routes6(lab);
    });
}

fn v6_only(nodes: usize) -> LabSpec {
    LabSpec {
        nodes,
        ip_family: IpFamily::Ipv6,
        ..Default::default()
    }
}

/// calico-node's `CALICO_ROUTER_ID=hash` of a node name, computed apart from the agent
/// (python's hashlib): what a real router must see as the IPv6-only node's BGP identifier.
fn hashed_router_id(name: &str) -> String {
    let script = "import hashlib,sys; h=hashlib.sha256(sys.argv[1].encode()).digest(); \
                  print('.'.join(str(b) for b in [h[0]-32 if h[0]>223 else h[0], h[1], h[2], h[3]]))";
    let out = std::process::Command::new("python3")
        .args(["-c", script, name])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// IPv6-only nodes (`--ip none`, no IPv4 address on the underlay at all): the record holds
/// only an IPv6 address, the nodes peer over IPv6 only, each node's `ip -6 route show proto
/// bird` is exactly the mesh's and it has no IPv4 route, pods get only an IPv6 address and
/// reach each other, and an IPv6 single-stack Service answers on its cluster IP from every
/// node and on its NodePort from outside.
#[test]
fn ipv6_only_nodes_mesh_pods_and_a_service() {
    with_lab(v6_only(3), |lab| {
        let pods = pod_per_node(lab);
        all_reach6(lab, &pods);
        wait_mesh_routes6(lab);
        for n in &lab.nodes {
            let v4 = n.ns.ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            assert!(v4.trim().is_empty(), "{}: an IPv4 address: {v4}", n.name);
            let peers = lab.peers(&n.name);
            assert_eq!(peers.len(), lab.nodes.len() - 1, "{peers:?}");
            assert!(
                peers.iter().all(|p| p["state"] == "Established"
                    && p["addr"].as_str().is_some_and(|a| a.contains(':'))),
                "{}: {peers:?}",
                n.name
            );
            assert!(lab.bird_routes(&n.name).is_empty(), "{}", n.name);
            let rec = lab
                .block_on(lab.store.all::<brindle_api::BrindleNode>().get(&n.name))
                .expect("read")
                .expect("record");
            let bgp = rec.spec.bgp.expect("bgp");
            assert_eq!(bgp.ipv4_address, None, "{}", n.name);
            assert_eq!(
                bgp.ipv6_address,
                Some(format!("{}/64", n.ip6.expect("v6"))),
                "{}",
                n.name
            );
            // Only IPv6 blocks were claimed.
            let blocks = &lab.blocks()[&n.name];
            assert!(blocks.iter().all(|b| b.contains(':')), "{blocks:?}");
        }
        let p = &lab.pods[&pods[0]];
        assert!(p.ip.is_none() && p.ip6.is_some());
        let v4 = p.ns.ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(v4.trim().is_empty(), "the pod has an IPv4 address: {v4}");

        let a = web_service(lab);
        assert!(a.cluster_ip.is_ipv6(), "{:?}", a.cluster_ip);
        for client in &pods {
            answers_from_both(lab, client, a.cluster_ip);
        }
        let node2 = lab.node("node-2").ip6.expect("v6");
        node_port_answers(lab, node2.into(), a.node_port(80).expect("node port"));
    });
}

/// Two racks of IPv6-only nodes behind BIRD routers with IPv6 sessions only: each router
/// sees each of its nodes under the router ID hashed from the node's name (calico-node's
/// `CALICO_ROUTER_ID=hash`), holds every IPv6 block, and pods reach each other across racks.
#[test]
fn ipv6_only_racks_through_top_of_rack_routers() {
    let spec = LabSpec {
        nodes: 4,
        racks: 2,
        tor: true,
        ..v6_only(4)
    };
    with_lab(spec, |lab| {
        let pods = pod_per_node(lab);
        all_reach6(lab, &pods);
        let blocks = lab.blocks();
        let all6: Vec<&String> = blocks.values().flatten().collect();
        assert_eq!(all6.len(), 4, "{blocks:?}");
        for n in &lab.nodes {
            let peers = lab.peers(&n.name);
            assert_eq!(peers.len(), 1, "{}: {peers:?}", n.name);
        }
        for t in &lab.tors {
            let shown = t.bird.birdc(&["show", "route", "table", "master6"]);
            for b in &all6 {
                assert!(
                    shown.contains(b.as_str()),
                    "rack {}: no {b}: {shown}",
                    t.rack
                );
            }
            // Its nodes: node-(2·rack) and node-(2·rack+1), sessions node6_0 and node6_1.
            for k in 0..2 {
                let node = format!("node-{}", 2 * t.rack + k);
                let all = t
                    .bird
                    .birdc(&["show", "protocols", "all", &format!("node6_{k}")]);
                let id = all
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Neighbor ID:"))
                    .map(str::trim);
                assert!(all.contains("Established"), "{node}: {all}");
                assert_eq!(id, Some(hashed_router_id(&node).as_str()), "{node}: {all}");
            }
        }
    });
}

/// IPv6 rules a previous run left (a node that had IPv6 pods, restarted after their pool
/// went): the restarted agent keeps them in step from its first sync — a chain that no
/// longer belongs goes — rather than leaving them as they were. Looking for them loads no
/// ip6tables table where there is none.
fn stale_ipv6_rules_are_kept_in_step(dp: Dp) {
    with_lab(dp.spec(LabSpec::default()), |lab| {
        restart_and_first_sync(lab, 0);
        if dp == Dp::Iptables {
            let names = lab.nodes[0].ns.ok(&["cat", "/proc/net/ip6_tables_names"]);
            assert!(names.trim().is_empty(), "ip6tables tables loaded: {names}");
        }
        lab.stop_agent(0);
        let present = |lab: &brindle_lab::Lab| {
            let ns = &lab.nodes[0].ns;
            match dp {
                Dp::Iptables => ns
                    .ok(&["ip6tables-legacy-save", "-t", "filter"])
                    .contains(":BRL-STALE"),
                Dp::Nftables => ns
                    .run(&["nft", "list", "chain", "ip6", "brindle", "stale"])
                    .status
                    .success(),
            }
        };
        let ns = &lab.nodes[0].ns;
        match dp {
            Dp::Iptables => {
                ns.ok(&["ip6tables-legacy", "-t", "filter", "-N", "BRL-STALE"]);
                ns.ok(&[
                    "ip6tables-legacy",
                    "-t",
                    "filter",
                    "-A",
                    "BRL-STALE",
                    "-j",
                    "DROP",
                ]);
            }
            Dp::Nftables => {
                ns.ok(&["nft", "add", "table", "ip6", "brindle"]);
                ns.ok(&["nft", "add", "chain", "ip6", "brindle", "stale"]);
            }
        }
        assert!(present(lab));
        lab.start_agent(0);
        wait_for(
            "the previous run's IPv6 chain to go",
            Duration::from_secs(30),
            || (!present(lab)).then_some(()),
        );
        let log = std::fs::read_to_string(lab.nodes[0].log()).unwrap_or_default();
        assert!(log.contains("IPv6 rules of a previous run found"), "{log}");
    });
}

#[test]
fn stale_ipv6_rules_are_kept_in_step_iptables() {
    stale_ipv6_rules_are_kept_in_step(Dp::Iptables);
}

#[test]
fn stale_ipv6_rules_are_kept_in_step_nftables() {
    stale_ipv6_rules_are_kept_in_step(Dp::Nftables);
}
