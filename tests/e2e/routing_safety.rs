//! Routing nobody can hijack, tried as an attacker would in the lab (issue 27): a pod
//! dialling a node's BGP port, an impostor presenting a node's address right after the
//! victim's agent restarts, an external router announcing what a node must never install or
//! pass on, and `ip route flush proto bird` on a node.

use std::process::Stdio;
use std::time::Duration;

use brindle_api::{BGPFilter, BGPFilterSpec, BGPPeer, BGPPeerSpec};
use brindle_lab::{Lab, LabSpec};
use brindle_testsupport::daemons::{wait_for, Bird};
use brindle_testsupport::{ChildGuard, Netns};

use crate::common::*;

fn two_nodes() -> LabSpec {
    LabSpec {
        nodes: 2,
        ..Default::default()
    }
}

/// One TCP connection from `ns` to `ip:port` (3 s): Ok(what the server sent first, if
/// anything) or Err(why not).
fn tcp(ns: &Netns, ip: &str, port: u16) -> Result<String, String> {
    let code = format!(
        "import socket\ntry:\n s = socket.create_connection(('{ip}', {port}), timeout=3)\n s.settimeout(1)\n try:\n  print('ok', s.recv(100).decode().strip())\n except Exception:\n  print('ok')\nexcept Exception as e:\n print('error', e)"
    );
    let out = ns.ok(&["python3", "-c", &code]);
    match out.trim().split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        _ if out.trim() == "ok" => Ok(String::new()),
        _ => Err(out.trim().to_string()),
    }
}

/// A TCP server in `ns` on `port` that sends each client the address it sees it from.
fn whoami_server(ns: &Netns, port: u16) -> ChildGuard {
    let code = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {port}))\ns.listen(16)\nwhile True:\n c, a = s.accept()\n c.sendall((a[0] + '\\n').encode())\n c.close()"
    );
    let child = ns
        .command(&["python3", "-c", &code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    std::thread::sleep(Duration::from_millis(300));
    ChildGuard(child)
}

/// A pod reaches neither its own node's BGP port nor another node's, also while the other
/// node's agent restarts; it reaches other host ports, and as itself (NAT outgoing leaves
/// host addresses alone by default), never as its node.
#[test]
fn pods_never_reach_a_nodes_bgp_port_iptables() {
    pods_never_reach_a_nodes_bgp_port(Dp::Iptables);
}

#[test]
fn pods_never_reach_a_nodes_bgp_port_nftables() {
    pods_never_reach_a_nodes_bgp_port(Dp::Nftables);
}

fn pods_never_reach_a_nodes_bgp_port(dp: Dp) {
    with_lab(dp.spec(two_nodes()), |lab| {
        // NAT outgoing on, as the default pool of a cluster has it: the case where a pod
        // would leave as its node.
        let api = lab.store.all::<brindle_api::IPPool>();
        let mut pools = lab.block_on(api.list()).expect("pools");
        for p in &mut pools.items {
            p.spec.nat_outgoing = true;
            lab.block_on(api.update(p)).expect("pool");
        }
        let pods = settled_mesh(lab);
        let (n0, n1) = (
            lab.nodes[0].ip4().to_string(),
            lab.nodes[1].ip4().to_string(),
        );
        let p1 = pods[1].clone(); // on node-1
        let pod_ip = lab.pods[&p1].ip4().to_string();
        // The guard is in place once the agent has programmed it.
        wait_for("the host guard", Duration::from_secs(30), || {
            dp.guard_ready(lab, "node-1").then_some(())
        });
        // NAT outgoing programmed on node-1 (the pool in the masquerade set), and node-0 in
        // its hosts set: only then does the check below judge the exclusion.
        wait_for(
            "NAT outgoing and the hosts set",
            Duration::from_secs(30),
            || {
                let masq = dp.set(lab, "node-1", "brl40masq-ipam-pools");
                let hosts = dp.set(lab, "node-1", "brl40all-hosts-net");
                (masq.contains("10.244.0.0/16") && hosts.contains(&n0)).then_some(())
            },
        );
        // Other ports of the nodes are reachable, and the pod arrives as itself.
        let _srv = whoami_server(&lab.nodes[0].ns, 7070);
        assert_eq!(
            tcp(&lab.pods[&p1].ns, &n0, 7070),
            Ok(pod_ip.clone()),
            "not masqueraded"
        );
        for ip in [&n0, &n1] {
            let r = tcp(&lab.pods[&p1].ns, ip, 179);
            assert!(r.is_err(), "{ip}:179 reached from a pod: {r:?}");
        }
        // Right after node-0's agent restarts, too.
        lab.kill_agent(0);
        lab.start_agent(0);
        for _ in 0..5 {
            let r = tcp(&lab.pods[&p1].ns, &n0, 179);
            assert!(r.is_err(), "node-0:179 reached during its restart: {r:?}");
        }
        wait_for(
            "node-0's session with node-1",
            Duration::from_secs(40),
            || {
                lab.peers("node-0")
                    .iter()
                    .all(|p| p["state"] == "Established" && p["router_id"] == serde_json::json!(n1))
                    .then_some(())
            },
        );
        wait_mesh_routes(lab);
    });
}

/// Someone with node-1's address but another BGP identifier dials node-0 right after
/// node-0's agent restarts: refused with 2/3 (logged with both identifiers), its route never
/// installed, and the real node-1's session comes up.
#[test]
fn an_impostor_with_a_nodes_address_is_refused() {
    with_lab(two_nodes(), |lab| {
        settled_mesh(lab);
        let (n0, n1) = (
            lab.nodes[0].ip4().to_string(),
            lab.nodes[1].ip4().to_string(),
        );
        let dir = tempfile::tempdir().expect("dir");
        let conf = dir.path().join("impostor.toml");
        std::fs::write(
            &conf,
            format!(
                r#"local_as = 64512
router_id = "255.255.255.254"
listen = "none"
[[peer]]
address = "{n0}"
asn = 64512
source = "{n1}"
connect_retry = 1
[[originate]]
prefix = "10.244.200.0/26"
"#
            ),
        )
        .expect("conf");
        lab.kill_agent(0);
        let bgpd = brindle_lab::binary("brindle-bgpd").display().to_string();
        let impostor = lab.nodes[1]
            .ns
            .command(&[&bgpd, "--config", &conf.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("impostor");
        let _impostor = ChildGuard(impostor);
        std::thread::sleep(Duration::from_secs(1));
        lab.start_agent(0);
        let log = lab.nodes[0].log();
        wait_for(
            "node-0 refusing the impostor",
            Duration::from_secs(30),
            || {
                let l = std::fs::read_to_string(&log).unwrap_or_default();
                l.contains("presented=255.255.255.254").then_some(())
            },
        );
        wait_for("the real node-1's session", Duration::from_secs(40), || {
            lab.peers("node-0")
                .iter()
                .any(|p| p["state"] == "Established" && p["router_id"] == serde_json::json!(n1))
                .then_some(())
        });
        wait_mesh_routes(lab);
        let r = routes(lab, "node-0");
        assert!(!r.iter().any(|x| x.contains("10.244.200.0")), "{r:?}");
    });
}

/// A router of its own on the lab's L2 segment, peered with one node through a BGPPeer.
struct Router {
    ns: Netns,
    bird: Bird,
}

fn router(lab: &Lab, ip: &str, asn: u32, node: &str, routes: &[&str]) -> Router {
    router_with(lab, ip, asn, node, routes, vec![])
}

fn router_with(
    lab: &Lab,
    ip: &str,
    asn: u32,
    node: &str,
    routes: &[&str],
    filters: Vec<String>,
) -> Router {
    let ns = Netns::new("brl-ext");
    let port = format!("x{}", ip.rsplit('.').next().unwrap_or("0"));
    ns.veth("eth0", &lab.fabric, &port);
    lab.fabric
        .ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
    ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    let node_ip = lab.node(node).ip4();
    let statics: String = routes
        .iter()
        .map(|r| format!("route {r} blackhole;\n"))
        .collect();
    let bird = Bird::start(
        &ns,
        &format!(
            r#"router id {ip};
protocol device {{}}
protocol static s4 {{ ipv4; {statics} }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol bgp n {{
  local {ip} as {asn}; neighbor {node_ip} as 64512;
  connect retry time 1; error wait time 1, 4;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
        ),
    );
    let api = lab.store.all::<BGPPeer>();
    lab.block_on(api.create(&BGPPeer::new(
        &format!("ext-{asn}"),
        BGPPeerSpec {
            node: Some(node.into()),
            peer_ip: Some(ip.into()),
            as_number: Some(asn),
            filters,
            ..Default::default()
        },
    )))
    .expect("BGPPeer");
    Router { ns, bird }
}

/// An external router of node-0 announces a default route, a foreign prefix, and what no
/// node may take: node-0's connected subnet and address, a pod address inside node-0's
/// block, the pool. Only the foreign prefix is installed (the default route is the lab's
/// own, which stays), nothing reaches node-1, and node-1's external router hears node-1's
/// own block only: no node is transit.
#[test]
fn an_external_router_changes_nothing_it_must_not() {
    with_lab(two_nodes(), |lab| {
        let pods = settled_mesh(lab);
        let n0 = lab.nodes[0].ip4().to_string();
        let pod0 = lab.pods[&pods[0]].ip4().to_string();
        let before0 = lab.nodes[0]
            .ns
            .ok(&["ip", "route", "show", "table", "main"]);
        let before1 = routes(lab, "node-1");
        let hostile = [
            "0.0.0.0/0",
            "192.0.2.0/24",
            "198.18.0.0/24",
            &format!("{n0}/32"),
            &format!("{pod0}/32"),
            "10.244.0.0/16",
        ];
        let a = router(lab, "198.18.0.201", 65101, "node-0", &hostile);
        let b = router(lab, "198.18.0.202", 65102, "node-1", &[]);
        // No pod reaches a router's BGP port either (masqueraded, it would be its node),
        // though it reaches the router otherwise.
        wait_for("the peer guard", Duration::from_secs(30), || {
            let legacy = lab.nodes[0]
                .ns
                .ok(&["iptables-legacy-save", "-t", "filter"]);
            let nft = lab.nodes[0].ns.ok(&["iptables-nft-save", "-t", "filter"]);
            // The router's address reaches the guard's set within a sync of its BGPPeer.
            let set = lab.nodes[0].ns.ok(&["ipset", "list", "brl40bgp-peers"]);
            ((legacy.contains("brl40bgp-peers") || nft.contains("brl40bgp-peers"))
                && set.contains("198.18.0.201"))
            .then_some(())
        });
        let _srv = whoami_server(&a.ns, 7070);
        let pod_ns = &lab.pods[&pods[0]].ns;
        assert!(tcp(pod_ns, "198.18.0.201", 7070).is_ok());
        let r = tcp(pod_ns, "198.18.0.201", 179);
        assert!(r.is_err(), "a pod reached a router's BGP port: {r:?}");
        wait_for(
            "node-0 takes the foreign prefix",
            Duration::from_secs(40),
            || {
                routes(lab, "node-0")
                    .iter()
                    .any(|r| r.starts_with("192.0.2.0/24 via 198.18.0.201"))
                    .then_some(())
            },
        );
        let st = lab
            .peers("node-0")
            .into_iter()
            .find(|p| p["addr"] == "198.18.0.201")
            .expect("the router's session");
        assert_eq!(st["refused_by_rails"], 4, "{st}");
        // node-0: its own routes as before (the default route too), plus the foreign one.
        let after0 = lab.nodes[0]
            .ns
            .ok(&["ip", "route", "show", "table", "main"]);
        let added: Vec<&str> = after0
            .lines()
            .filter(|l| !before0.lines().any(|b| b == *l))
            .collect();
        assert_eq!(added.len(), 1, "only the foreign prefix: {added:?}");
        assert!(
            added[0].starts_with("192.0.2.0/24 via 198.18.0.201"),
            "{added:?}"
        );
        assert!(
            after0.contains("default via 198.18.0.1 dev eth0"),
            "{after0}"
        );
        // node-1: nothing from node-0's router.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(routes(lab, "node-1"), before1);
        // node-1's router hears node-1's own block, nothing learned.
        let blocks = lab.blocks();
        let own = &blocks["node-1"];
        wait_for(
            "node-1's router learns its block",
            Duration::from_secs(30),
            || {
                let t = b.bird.birdc(&["show", "route", "protocol", "n"]);
                own.iter().all(|blk| t.contains(blk.as_str())).then_some(())
            },
        );
        let t = b.bird.birdc(&["show", "route", "protocol", "n"]);
        for other in ["0.0.0.0/0", "192.0.2.0/24"]
            .into_iter()
            .chain(blocks["node-0"].iter().map(String::as_str))
        {
            assert!(!t.contains(other), "node-1 passed on {other}: {t}");
        }
        // Withdrawn: the foreign route goes, the host's routes stay.
        a.bird.birdc(&["disable", "s4"]);
        wait_for("the withdraw", Duration::from_secs(30), || {
            let now = lab.nodes[0]
                .ns
                .ok(&["ip", "route", "show", "table", "main"]);
            (now == before0).then_some(())
        });
    });
}

/// `ip route flush proto bird` on a node: its routes are back within the re-read interval.
#[test]
fn a_flushed_node_repairs_its_routes() {
    with_lab(two_nodes(), |lab| {
        settled_mesh(lab);
        let want = routes(lab, "node-0");
        lab.nodes[0]
            .ns
            .ok(&["ip", "route", "flush", "proto", "bird"]);
        wait_for("the routes repaired", Duration::from_secs(30), || {
            (routes(lab, "node-0") == want).then_some(())
        });
        let log = std::fs::read_to_string(lab.nodes[0].log()).unwrap_or_default();
        assert!(
            log.contains("the kernel's routes differed from ours: repairing"),
            "{log}"
        );
    });
}

/// A BGPFilter on the router's BGPPeer decides what node-0 takes from it and gives it; a
/// change of the filter is applied in place (the session stays up): the router is asked for
/// its routes again and node-0's own are sent again.
#[test]
fn a_bgpfilter_decides_and_changes_in_place() {
    with_lab(two_nodes(), |lab| {
        settled_mesh(lab);
        // No default route of the host's: a default route from the router is then installed
        // exactly when the filter lets it through.
        lab.nodes[0].ns.ok(&["ip", "route", "del", "default"]);
        let spec =
            |v: serde_json::Value| -> BGPFilterSpec { serde_json::from_value(v).expect("spec") };
        let api = lab.store.all::<BGPFilter>();
        let first = spec(serde_json::json!({
            "importV4": [
                {"action": "Reject", "matchOperator": "Equal", "cidr": "0.0.0.0/0"},
                {"action": "Reject", "matchOperator": "Equal", "cidr": "192.0.2.0/24"}
            ],
            "exportV4": [{"action": "Reject", "matchOperator": "In", "cidr": "10.244.0.0/16"}]
        }));
        lab.block_on(api.create(&BGPFilter::new("tor", first)))
            .expect("filter");
        let r = router_with(
            lab,
            "198.18.0.203",
            65103,
            "node-0",
            &["0.0.0.0/0", "192.0.2.0/24", "198.51.100.0/24"],
            vec!["tor".into()],
        );
        let has = |p: &str| routes(lab, "node-0").iter().any(|r| r.starts_with(p));
        wait_for("the accepted prefix", Duration::from_secs(40), || {
            has("198.51.100.0/24 via 198.18.0.203").then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
        assert!(!has("192.0.2.0/24"), "{:?}", routes(lab, "node-0"));
        assert!(!has("default"), "{:?}", routes(lab, "node-0"));
        let told = r.bird.birdc(&["show", "route", "protocol", "n"]);
        assert!(
            !told.contains("10.244."),
            "the export filter let a block out: {told}"
        );
        let since = |lab: &Lab| {
            lab.peers("node-0")
                .into_iter()
                .find(|p| p["addr"] == "198.18.0.203")
                .map(|p| (p["state"].clone(), p["last_error"].clone()))
        };
        let before = since(lab);
        // The other way round, in place.
        let mut f = lab
            .block_on(api.get("tor"))
            .expect("get")
            .expect("the filter");
        f.spec = spec(serde_json::json!({
            "importV4": [{"action": "Reject", "matchOperator": "In", "cidr": "198.51.100.0/24"}]
        }));
        lab.block_on(api.update(&f)).expect("update");
        wait_for(
            "the filter applied in place",
            Duration::from_secs(40),
            || {
                (has("192.0.2.0/24 via 198.18.0.203")
                    && has("default via 198.18.0.203")
                    && !has("198.51.100.0/24"))
                .then_some(())
            },
        );
        let blocks = lab.blocks();
        wait_for(
            "node-0's blocks sent to the router",
            Duration::from_secs(30),
            || {
                let t = r.bird.birdc(&["show", "route", "protocol", "n"]);
                blocks["node-0"]
                    .iter()
                    .all(|b| t.contains(b.as_str()))
                    .then_some(())
            },
        );
        assert_eq!(since(lab), before, "the session was not reset");
        let proto = r.bird.birdc(&["show", "protocols", "n"]);
        assert!(proto.contains("Established"), "{proto}");
    });
}

fn secret(lab: &Lab, name: &str, value: &str) {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("brindle-system".into()),
            ..Default::default()
        },
        data: Some(
            [("pw".to_string(), ByteString(value.as_bytes().to_vec()))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    lab.block_on(lab.store.namespaced::<Secret>("brindle-system").create(&s))
        .expect("secret");
}

/// The mesh with `nodeMeshPassword` (TCP MD5) and `nodeMeshTTLSecurity` (GTSM, one subnet)
/// comes up and routes; a node given another password (a `node.<name>` BGPConfiguration)
/// never gets a session, until it has the right one.
#[test]
fn mesh_sessions_with_a_password_and_gtsm() {
    use brindle_api::bgp::{PeerPassword, SecretKeyRef};
    use brindle_api::BGPConfiguration;
    with_lab(two_nodes(), |lab| {
        secret(lab, "mesh", "right-one");
        secret(lab, "wrong", "wrong-one");
        let api = lab.store.all::<BGPConfiguration>();
        let mut cfg = lab
            .block_on(api.get("default"))
            .expect("get")
            .expect("default");
        let pw = |name: &str| PeerPassword {
            secret_key_ref: SecretKeyRef {
                name: name.into(),
                key: "pw".into(),
            },
        };
        cfg.spec.node_mesh_password = Some(pw("mesh"));
        cfg.spec.node_mesh_ttl_security = true;
        lab.block_on(api.update(&cfg)).expect("update");
        let pods = settled_mesh(lab);
        for n in ["node-0", "node-1"] {
            wait_for(
                &format!("{n}'s mesh session"),
                Duration::from_secs(40),
                || {
                    lab.peers(n)
                        .iter()
                        .all(|p| p["state"] == "Established")
                        .then_some(())
                },
            );
        }
        // The sessions really carry MD5 and TTL 255, as seen on the wire: the KEEPALIVEs
        // (every 30 s) of a session that is up, so a new connection is made to be sure.
        lab.kill_agent(1);
        lab.start_agent(1);
        let dump = lab.nodes[0].ns.run(&[
            "timeout",
            "30",
            "tcpdump",
            "-c",
            "6",
            "-nvvi",
            "eth0",
            "tcp port 179",
        ]);
        let dump = String::from_utf8_lossy(&dump.stdout).to_string();
        assert!(dump.contains("md5"), "no TCP MD5 option: {dump}");
        assert!(dump.contains("ttl 255"), "not TTL 255: {dump}");
        // node-1 with another password: its session with node-0 goes and stays down.
        let mut own = BGPConfiguration::new("node.node-1", cfg.spec.clone());
        own.spec.node_mesh_password = Some(pw("wrong"));
        lab.block_on(api.create(&own)).expect("node.node-1");
        wait_for("the session down", Duration::from_secs(60), || {
            lab.peers("node-0")
                .iter()
                .all(|p| p["state"] != "Established")
                .then_some(())
        });
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            lab.peers("node-0")
                .iter()
                .all(|p| p["state"] != "Established"),
            "{:?}",
            lab.peers("node-0")
        );
        // The right password again: back up, and the pods talk.
        lab.block_on(api.delete("node.node-1", None))
            .expect("delete");
        for n in ["node-0", "node-1"] {
            wait_for(
                &format!("{n}'s session back"),
                Duration::from_secs(60),
                || {
                    lab.peers(n)
                        .iter()
                        .all(|p| p["state"] == "Established")
                        .then_some(())
                },
            );
        }
        all_reach(lab, &pods);
    });
}
