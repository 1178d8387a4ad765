//! Services through real iptables and real nftables (each test runs on both dataplanes):
//! real TCP and UDP from pods, from the node and from the fabric (outside every node) to
//! cluster IPs, node ports, external and load balancer IPs; traffic policies and topology;
//! NAT outgoing; restarts, drift and foreign rules; a node switched from one dataplane to
//! the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use brindle_lab::{Lab, LabService, LabSpec};
use brindle_testsupport::daemons::wait_for;

use crate::common::{allow_service_addresses, restart_and_first_sync, save, with_lab, Dp};

fn svc(name: &str, app: &str) -> LabService {
    LabService {
        name: name.into(),
        selector: vec![("app".into(), app.into())],
        ..Default::default()
    }
}

/// Which pods answered `n` TCP connections from `pod` to ip:port (errors counted as "error").
fn spread(
    lab: &Lab,
    pod: &str,
    ip: impl Into<IpAddr>,
    port: u16,
    n: usize,
) -> BTreeMap<String, usize> {
    let ns = &lab.pods[pod].ns;
    let mut m = BTreeMap::new();
    for r in lab.client(ns, "many", ip.into(), port, n) {
        let k = match r {
            Ok((who, _)) => who,
            Err(_) => "error".to_string(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// Waits until `pod` reaches the service and only the given endpoints answer.
fn wait_only(lab: &Lab, pod: &str, ip: impl Into<IpAddr>, port: u16, want: &[&str]) {
    let ip: IpAddr = ip.into();
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let mut last = BTreeMap::new();
    for _ in 0..60 {
        last = spread(lab, pod, ip, port, 20);
        if last.keys().cloned().collect::<BTreeSet<_>>() == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{pod} → {ip}:{port}: want answers from {want:?} only, last saw {last:?}");
}

#[test]
fn services_reach_every_endpoint_from_pods_nodes_and_outside_iptables() {
    services_reach_every_endpoint(Dp::Iptables);
}

#[test]
fn services_reach_every_endpoint_from_pods_nodes_and_outside_nftables() {
    services_reach_every_endpoint(Dp::Nftables);
}

fn services_reach_every_endpoint(dp: Dp) {
    with_lab(
        dp.spec(LabSpec {
            nodes: 3,
            ..Default::default()
        }),
        |lab| {
            for (p, n) in [
                ("web-0", "node-0"),
                ("web-1", "node-1"),
                ("web-2", "node-2"),
            ] {
                lab.pod_add_labeled(p, n, &[("app", "web")]).unwrap();
            }
            lab.pod_add("client", "node-0").unwrap();
            // A DNAT somebody else put in node-0's nat table, before Brindle programs anything.
            lab.node("node-0").ns.ok(&[
                "iptables-legacy",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                "198.19.100.50/32",
                "-p",
                "tcp",
                "--dport",
                "9",
                "-j",
                "DNAT",
                "--to-destination",
                "10.244.255.1:8080",
            ]);
            let foreign = |lab: &Lab| -> Vec<String> {
                save(lab, "node-0", "nat")
                    .lines()
                    .filter(|l| l.contains("-A PREROUTING") && !l.contains("brl:"))
                    .map(|l| l.split_once("] ").map(|x| x.1).unwrap_or(l).to_string())
                    .collect()
            };
            let foreign_before = foreign(lab);
            assert_eq!(foreign_before.len(), 1, "{foreign_before:?}");
            // And a foreign nftables table (kube-proxy's, an operator's).
            lab.node("node-0").ns.ok(&[
                "nft",
                "add table ip foreign; add chain ip foreign c { type nat hook prerouting priority -100; }; add rule ip foreign c ip daddr 198.19.100.51 tcp dport 9 dnat to 10.244.255.1:8080",
            ]);
            let foreign_nft = |lab: &Lab| {
                lab.node("node-0")
                    .ns
                    .ok(&["nft", "list", "table", "ip", "foreign"])
            };
            let foreign_nft_before = foreign_nft(lab);

            allow_service_addresses(lab, "198.19.100.0/24");
            let mut web = svc("web", "web");
            web.type_ = "LoadBalancer".into();
            web.ports = vec!["80:8080".into(), "53:8080/udp".into()];
            web.external_ips = vec!["198.19.100.10".parse().unwrap()];
            web.load_balancer_ips = vec!["198.19.100.20".parse().unwrap()];
            let web = lab.service_add(&web).unwrap();
            let cip = web.cluster_ip;
            let np = web.node_port(80).unwrap();

            // ClusterIP from a pod: 200 connections, every endpoint used, none failed.
            wait_only(lab, "client", cip, 80, &["web-0", "web-1", "web-2"]);
            let s = spread(lab, "client", cip, 80, 200);
            assert!(!s.contains_key("error"), "{s:?}");
            for p in ["web-0", "web-1", "web-2"] {
                assert!(
                    s.get(p).copied().unwrap_or(0) > 20,
                    "{p} barely used: {s:?}"
                );
            }
            // UDP.
            let u = lab.client(&lab.pods["client"].ns, "udp", cip, 53, 1);
            assert!(
                matches!(&u[0], Ok((w, _)) if w.starts_with("web-")),
                "{u:?}"
            );
            // From the node itself (masqueraded: the node's address is outside the pools).
            let r = lab.client(&lab.node("node-1").ns, "hello", cip, 80, 1);
            assert!(r[0].is_ok(), "node → cluster IP: {r:?}");
            // Hairpin: a pod reaching itself through its Service.
            let s = spread(lab, "web-0", cip, 80, 40);
            assert!(
                !s.contains_key("error") && s.contains_key("web-0"),
                "hairpin: {s:?}"
            );

            // From outside: the fabric, to a node port, an external IP and the LB IP.
            let n1 = lab.node("node-1").ip4();
            for ip in ["198.19.100.10", "198.19.100.20"] {
                lab.fabric.ok(&[
                    "ip",
                    "route",
                    "replace",
                    &format!("{ip}/32"),
                    "via",
                    &n1.to_string(),
                ]);
            }
            for (ip, port) in [
                (n1, np),
                ("198.19.100.10".parse().unwrap(), 80),
                ("198.19.100.20".parse().unwrap(), 80),
            ] {
                let r = wait_for(
                    &format!("fabric → {ip}:{port}"),
                    Duration::from_secs(20),
                    || lab.client(&lab.fabric, "hello", ip, port, 1).remove(0).ok(),
                );
                assert!(r.0.starts_with("web-"), "{r:?}");
            }

            // An externalIP and a LoadBalancer address outside the operator's range: refused,
            // said once in the log and counted; nothing of them in any table.
            let mut out = svc("outside", "web");
            out.type_ = "LoadBalancer".into();
            out.external_ips = vec!["198.19.200.10".parse().unwrap()];
            out.load_balancer_ips = vec!["198.19.200.20".parse().unwrap()];
            lab.service_add(&out).unwrap();
            let log = lab.node("node-0").log();
            wait_for("node-0 refusing them", Duration::from_secs(30), || {
                let l = std::fs::read_to_string(&log).unwrap_or_default();
                (l.contains("198.19.200.10 is outside the BGPConfiguration default's serviceExternalIPs (198.19.100.0/24)")
                    && l.contains("ingress 198.19.200.20 is outside"))
                .then_some(())
            });
            let metrics = lab.node("node-0").ns.ok(&[
                "python3",
                "-c",
                "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9091/metrics', timeout=3).read().decode())",
            ]);
            assert!(
                metrics.contains("brindle_proxy_skipped{object=\"default/outside\"} 2"),
                "{metrics}"
            );
            let tables = dp.ours(lab, "node-0");
            assert!(!tables.contains("198.19.200."), "{tables}");
            assert!(tables.contains("198.19.100.10"), "{tables}");
            // And the operator sees it with brindlectl, judged by the agents' rule.
            let out = std::process::Command::new(brindle_lab::binary("brindlectl"))
                .args(["services", "--refused"])
                .args(lab.datastore_flags())
                .output()
                .expect("brindlectl");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            let row = text
                .lines()
                .find(|l| l.contains("default/outside") && l.contains("198.19.200.10"))
                .unwrap_or_else(|| panic!("{text}"));
            assert!(
                row.contains("externalIP")
                    && row.contains("refused")
                    && row.contains("outside the BGPConfiguration default's serviceExternalIPs"),
                "{row}"
            );
            assert!(!text.contains("default/web "), "web is programmed: {text}");

            // loadBalancerSourceRanges: the fabric (198.18.0.1) is outside one range, inside
            // the other.
            let mut fw = svc("fw", "web");
            fw.type_ = "LoadBalancer".into();
            fw.load_balancer_ips = vec!["198.19.100.30".parse().unwrap()];
            fw.load_balancer_source_ranges = vec!["198.18.5.0/24".into()];
            lab.service_add(&fw).unwrap();
            let mut fw_ok = fw.clone();
            fw_ok.name = "fw-ok".into();
            fw_ok.load_balancer_ips = vec!["198.19.100.31".parse().unwrap()];
            fw_ok.load_balancer_source_ranges = vec!["198.18.0.0/24".into()];
            lab.service_add(&fw_ok).unwrap();
            for ip in ["198.19.100.30", "198.19.100.31"] {
                lab.fabric.ok(&[
                    "ip",
                    "route",
                    "replace",
                    &format!("{ip}/32"),
                    "via",
                    &n1.to_string(),
                ]);
            }
            let ok_ip: Ipv4Addr = "198.19.100.31".parse().unwrap();
            wait_for("fabric → allowed LB IP", Duration::from_secs(20), || {
                lab.client(&lab.fabric, "hello", ok_ip, 80, 1)
                    .remove(0)
                    .ok()
            });
            let r = lab.client(
                &lab.fabric,
                "hello",
                "198.19.100.30".parse::<IpAddr>().unwrap(),
                80,
                1,
            );
            assert!(
                r[0].is_err(),
                "a source outside loadBalancerSourceRanges got in: {r:?}"
            );
            // Pods are not load balancer clients: they reach the Service by its cluster IP.

            // A Service without endpoints refuses at once (REJECT, not a timeout).
            let empty = lab.service_add(&svc("empty", "nobody")).unwrap();
            let r = wait_for(
                "the empty Service to refuse",
                Duration::from_secs(20),
                || match lab
                    .client(&lab.pods["client"].ns, "hello", empty.cluster_ip, 80, 1)
                    .remove(0)
                {
                    Err(e) if e.contains("refused") => Some(e),
                    _ => None,
                },
            );
            assert!(r.contains("refused"), "{r}");

            // A bad Service beside good ones: its bad ports are skipped, its good one works.
            use k8s_openapi::api::core::v1::Service;
            let bad: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "bad"},
            "spec": {"clusterIP": "10.96.9.9", "selector": {"app": "web"},
                     "ports": [{"name": "zero", "port": 0}, {"name": "quic", "port": 81, "protocol": "QUIC"},
                               {"name": "tcp80", "port": 80, "targetPort": 8080}]}
        })).unwrap();
            lab.block_on(lab.store.namespaced::<Service>("default").create(&bad))
                .unwrap();
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "bad-1", "labels": {"kubernetes.io/service-name": "bad"}},
            "addressType": "IPv4", "ports": [{"name": "tcp80", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [lab.pods["web-1"].ip4().to_string()], "nodeName": "node-1"}]
        })).unwrap();
            lab.block_on(
                lab.store
                    .namespaced::<k8s_openapi::api::discovery::v1::EndpointSlice>("default")
                    .create(&slice),
            )
            .unwrap();
            wait_only(
                lab,
                "client",
                "10.96.9.9".parse::<IpAddr>().unwrap(),
                80,
                &["web-1"],
            );
            let log = std::fs::read_to_string(lab.node("node-0").log()).unwrap();
            assert!(
                log.contains("port 0 is not 1-65535") && log.contains("unknown protocol \"QUIC\""),
                "no log line for the bad Service"
            );
            wait_only(lab, "client", cip, 80, &["web-0", "web-1", "web-2"]);

            // Removing an endpoint stops new connections to it.
            lab.pod_del("web-2").unwrap();
            wait_only(lab, "client", cip, 80, &["web-0", "web-1"]);
            let s = spread(lab, "client", cip, 80, 60);
            assert!(
                !s.contains_key("web-2") && !s.contains_key("error"),
                "{s:?}"
            );

            // The foreign DNAT is still there, as it was.
            assert_eq!(foreign(lab), foreign_before);

            // Our dispatch flushed by hand comes back (the lab's refresh is 3 s).
            dp.flush_dispatch(lab, "node-0");
            // (Not judged by a connection failing now: a SYN retransmitted after the 3 s
            // refresh would get through, so that check raced the repair it tests.)
            assert!(!dp.dispatch_present(lab, "node-0"), "not flushed");
            wait_for("the dispatch repaired", Duration::from_secs(30), || {
                dp.dispatch_present(lab, "node-0").then_some(())?;
                lab.client(&lab.pods["client"].ns, "hello", cip, 80, 1)
                    .remove(0)
                    .ok()
            });
            assert_eq!(foreign(lab), foreign_before);
            assert_eq!(foreign_nft(lab), foreign_nft_before);

            // In nftables the changes after the first sync went by netlink, and the kernel
            // refused none of them (a refused batch is logged, then sent through nft).
            if dp == Dp::Nftables {
                let log = std::fs::read_to_string(lab.node("node-0").log()).unwrap();
                let by = |how: &str| {
                    log.lines()
                        .filter(|l| l.contains("services programmed"))
                        .filter(|l| {
                            l.contains(&format!("written_by=\"{how}\""))
                                || l.contains(&format!("written_by={how}"))
                        })
                        .count()
                };
                assert!(by("netlink") >= 3, "changes by netlink: {}", by("netlink"));
                assert!(by("nft") >= 1, "the first sync goes through nft");
                assert!(!log.contains("netlink batch was not applied"), "{log}");
            }

            // A restart keeps every rule: nothing written (iptables: no counter reset;
            // nftables: every rule keeps its handle).
            let before = dp.fingerprint(lab, "node-0");
            if dp == Dp::Iptables {
                assert!(
                    before.values().any(|c| *c > 0),
                    "no packets counted: {before:?}"
                );
            }
            assert!(before.len() > 5, "{before:?}");
            let since = restart_and_first_sync(lab, 0);
            assert!(
                since.contains("nothing written"),
                "the restart rewrote rules:\n{since}"
            );
            let after = dp.fingerprint(lab, "node-0");
            assert_eq!(
                before.keys().collect::<Vec<_>>(),
                after.keys().collect::<Vec<_>>()
            );
            for (rule, c) in &before {
                match dp {
                    Dp::Iptables => assert!(
                        after[rule] >= *c,
                        "counter reset on {rule}: {c} → {}",
                        after[rule]
                    ),
                    Dp::Nftables => assert_eq!(after[rule], *c, "{rule} written again"),
                }
            }
            assert_eq!(foreign(lab), foreign_before);
            assert_eq!(foreign_nft(lab), foreign_nft_before);
        },
    );
}

#[test]
fn traffic_policies_topology_affinity_and_nat_outgoing_iptables() {
    traffic_policies_topology_affinity_and_nat_outgoing(Dp::Iptables);
}

#[test]
fn traffic_policies_topology_affinity_and_nat_outgoing_nftables() {
    traffic_policies_topology_affinity_and_nat_outgoing(Dp::Nftables);
}

fn traffic_policies_topology_affinity_and_nat_outgoing(dp: Dp) {
    // node-0 and node-2 in zone-0, node-1 in zone-1.
    with_lab(
        dp.spec(LabSpec {
            nodes: 3,
            zones: 2,
            ..Default::default()
        }),
        |lab| {
            lab.pod_add("c0", "node-0").unwrap();
            lab.pod_add("c1", "node-1").unwrap();
            for (p, n) in [("a-0", "node-0"), ("a-1", "node-1"), ("a-2", "node-2")] {
                lab.pod_add_labeled(
                    p,
                    n,
                    &[
                        ("app", "a"),
                        ("only12", if n == "node-0" { "no" } else { "yes" }),
                    ],
                )
                .unwrap();
            }
            // externalTrafficPolicy Local: only node-1's endpoint from node-1, client address kept;
            // node-0 has no endpoint of this Service, so its node port drops outside traffic.
            let mut etl = svc("etl", "a");
            etl.selector.push(("only12".into(), "yes".into()));
            etl.type_ = "NodePort".into();
            etl.external_traffic_policy = Some("Local".into());
            let etl = lab.service_add(&etl).unwrap();
            let np = etl.node_port(80).unwrap();
            let fabric_ip = "198.18.0.1";
            let n1 = lab.node("node-1").ip4();
            for _ in 0..10 {
                let r = wait_for(
                    "fabric → node-1 node port",
                    Duration::from_secs(20),
                    || lab.client(&lab.fabric, "hello", n1, np, 1).remove(0).ok(),
                );
                assert_eq!(r, ("a-1".to_string(), fabric_ip.to_string()));
            }
            let r = lab.client(&lab.fabric, "hello", lab.node("node-0").ip4(), np, 1);
            assert!(r[0].is_err(), "node-0 has no local endpoint, yet: {r:?}");
            // Pods still use every endpoint of an eTP=Local Service through its cluster IP.
            wait_only(lab, "c0", etl.cluster_ip, 80, &["a-1", "a-2"]);

            // internalTrafficPolicy Local: this node's endpoint only; none here → dropped.
            let mut itl = svc("itl", "a");
            itl.internal_traffic_policy = Some("Local".into());
            let itl = lab.service_add(&itl).unwrap();
            wait_only(lab, "c0", itl.cluster_ip, 80, &["a-0"]);
            let mut itl2 = svc("itl2", "a");
            itl2.selector.push(("only12".into(), "no".into()));
            itl2.internal_traffic_policy = Some("Local".into());
            let itl2 = lab.service_add(&itl2).unwrap();
            wait_only(lab, "c0", itl2.cluster_ip, 80, &["a-0"]);
            wait_for(
                "c1 dropped (no local endpoint)",
                Duration::from_secs(20),
                || {
                    lab.client(&lab.pods["c1"].ns, "hello", itl2.cluster_ip, 80, 1)
                        .remove(0)
                        .err()
                },
            );

            // PreferSameZone: c1 (zone-1) uses a-1 only; c0 (zone-0) uses a-0 and a-2.
            let mut psz = svc("psz", "a");
            psz.traffic_distribution = Some("PreferSameZone".into());
            let psz = lab.service_add(&psz).unwrap();
            wait_only(lab, "c1", psz.cluster_ip, 80, &["a-1"]);
            wait_only(lab, "c0", psz.cluster_ip, 80, &["a-0", "a-2"]);

            // ClientIP affinity: 50 connections, one endpoint.
            let mut aff = svc("aff", "a");
            aff.session_affinity_seconds = Some(600);
            let aff = lab.service_add(&aff).unwrap();
            wait_for("aff programmed", Duration::from_secs(20), || {
                lab.client(&lab.pods["c0"].ns, "hello", aff.cluster_ip, 80, 1)
                    .remove(0)
                    .ok()
            });
            let s = spread(lab, "c0", aff.cluster_ip, 80, 50);
            assert_eq!(s.len(), 1, "affinity broken: {s:?}");

            // PreferSameNode: node-0's endpoint while it exists, then what the hints allow.
            let mut psn = svc("psn", "a");
            psn.traffic_distribution = Some("PreferSameNode".into());
            let psn = lab.service_add(&psn).unwrap();
            wait_only(lab, "c0", psn.cluster_ip, 80, &["a-0"]);
            let s = spread(lab, "c0", psn.cluster_ip, 80, 30);
            assert_eq!(s.keys().collect::<Vec<_>>(), ["a-0"], "{s:?}");
            // Then, as kube-proxy decides: no endpoint is hinted for node-0, but every one
            // carries a zone hint too, and a-2 is in node-0's zone.
            lab.pod_del("a-0").unwrap();
            wait_only(lab, "c0", psn.cluster_ip, 80, &["a-2"]);

            // NAT outgoing: a server outside the pools (on the fabric's gateway address) sees the
            // pod's own address, until the pool says natOutgoing; pod to pod is never NATed.
            let script = lab.dir.path().join("echo.py").display().to_string();
            let _server = lab
                .fabric
                .spawn(&["python3", &script, "serve", "outside", "8080"]);
            lab.fabric.ok(&[
                "ip",
                "route",
                "replace",
                "10.244.0.0/16",
                "via",
                &lab.node("node-0").ip4().to_string(),
            ]);
            let c0_ip = lab.pods["c0"].ip4().to_string();
            let gw: Ipv4Addr = fabric_ip.parse().unwrap();
            let seen = wait_for("c0 → outside", Duration::from_secs(20), || {
                lab.client(&lab.pods["c0"].ns, "hello", gw, 8080, 1)
                    .remove(0)
                    .ok()
            });
            assert_eq!(seen, ("outside".to_string(), c0_ip.clone()));
            let pools = lab.store.all::<brindle_api::IPPool>();
            let mut pool = lab.block_on(pools.get("default")).unwrap().unwrap();
            pool.spec.nat_outgoing = true;
            lab.block_on(pools.update(&pool)).unwrap();
            let node0_ip = lab.node("node-0").ip4().to_string();
            wait_for(
                "c0 → outside masqueraded",
                Duration::from_secs(20),
                || {
                    let r = lab
                        .client(&lab.pods["c0"].ns, "hello", gw, 8080, 1)
                        .remove(0)
                        .ok()?;
                    (r.1 == node0_ip).then_some(())
                },
            );
            let r = lab.client(&lab.pods["c0"].ns, "hello", lab.pods["a-1"].ip4(), 8080, 1);
            assert_eq!(
                r[0].as_ref().map(|x| x.1.clone()),
                Ok(c0_ip),
                "pod to pod was NATed"
            );
        },
    );
}

#[test]
fn nft_backend_programs_the_same_services() {
    with_lab(
        LabSpec {
            nodes: 2,
            iptables_backend: "nft".into(),
            ..Default::default()
        },
        |lab| {
            lab.pod_add_labeled("w0", "node-0", &[("app", "w")])
                .unwrap();
            lab.pod_add_labeled("w1", "node-1", &[("app", "w")])
                .unwrap();
            lab.pod_add("c", "node-0").unwrap();
            let w = lab.service_add(&svc("w", "w")).unwrap();
            wait_only(lab, "c", w.cluster_ip, 80, &["w0", "w1"]);
            let nat = lab
                .node("node-0")
                .ns
                .ok(&["iptables-nft-save", "-t", "nat"]);
            assert!(
                nat.contains(":BRL-SERVICES") && nat.contains("BRL-SVC-"),
                "{nat}"
            );
            let legacy = lab
                .node("node-0")
                .ns
                .ok(&["iptables-legacy-save", "-t", "nat"]);
            assert!(!legacy.contains("BRL-"), "rules in the legacy tables too");
            let since = restart_and_first_sync(lab, 0);
            assert!(since.contains("nothing written"), "{since}");
        },
    );
}

/// A node restarted with the other `--dataplane` ends with that one's rules only: none of
/// ours left in iptables (chains, jumps, ipsets) after a switch to nftables, no `ip brindle`
/// table after the switch back; Services work throughout.
#[test]
fn switching_dataplane_by_restart_leaves_nothing_of_the_old_one() {
    with_lab(
        LabSpec {
            nodes: 2,
            ..Default::default()
        },
        |lab| {
            lab.pod_add_labeled("w0", "node-0", &[("app", "w")])
                .unwrap();
            lab.pod_add_labeled("w1", "node-1", &[("app", "w")])
                .unwrap();
            lab.pod_add("c", "node-0").unwrap();
            let w = lab.service_add(&svc("w", "w")).unwrap();
            wait_only(lab, "c", w.cluster_ip, 80, &["w0", "w1"]);
            // By the namespace's name: the lab is borrowed mutably to restart the agent.
            let ns = lab.node("node-0").ns.name().to_string();
            let run = |args: &[&str]| -> String {
                let o = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(args)
                    .output()
                    .expect("ip netns exec");
                assert!(
                    o.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let iptables_ours = || {
                let t = run(&["iptables-legacy-save"]) + &run(&["ipset", "list", "-n"]);
                t.lines()
                    .filter(|l| l.contains("BRL-") || l.contains("brl40"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            assert!(!iptables_ours().is_empty());

            let log = lab.nodes[0].log();
            let offset = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
            lab.stop_agent(0);
            lab.start_agent_with(0, &["--dataplane", "nftables"]);
            wait_for("iptables emptied of ours", Duration::from_secs(30), || {
                iptables_ours().is_empty().then_some(())
            });
            let since =
                String::from_utf8_lossy(&std::fs::read(&log).unwrap()[offset..]).to_string();
            assert!(
                since.contains("removed the iptables dataplane's rules"),
                "{since}"
            );
            assert!(run(&["nft", "list", "table", "ip", "brindle"]).contains("service-ips"));
            wait_only(lab, "c", w.cluster_ip, 80, &["w0", "w1"]);

            lab.stop_agent(0);
            lab.start_agent(0);
            wait_for("table ip brindle gone", Duration::from_secs(30), || {
                (!run(&["nft", "list", "tables"]).contains("brindle")).then_some(())
            });
            assert!(!iptables_ours().is_empty());
            wait_only(lab, "c", w.cluster_ip, 80, &["w0", "w1"]);
        },
    );
}
