//! A node that defends itself (issue 28), tried as an attacker would in the lab.

use std::time::Duration;

use brindle_lab::{LabService, LabSpec};
use brindle_testsupport::daemons::wait_for;

use crate::common::*;

/// A namespace user's Service with a node's address as externalIP on port 179 is not
/// programmed (no DNAT, no REJECT), the mesh stays up through a restart of the victim's
/// agent, and the refusal is logged. (A nodePort on a BGP port: services.rs's unit test.)
#[test]
fn a_service_cannot_take_a_nodes_bgp_traffic_iptables() {
    a_service_cannot_take_a_nodes_bgp_traffic(Dp::Iptables);
}

#[test]
fn a_service_cannot_take_a_nodes_bgp_traffic_nftables() {
    a_service_cannot_take_a_nodes_bgp_traffic(Dp::Nftables);
}

fn a_service_cannot_take_a_nodes_bgp_traffic(dp: Dp) {
    with_lab(
        dp.spec(LabSpec {
            nodes: 2,
            ..Default::default()
        }),
        |lab| {
            let pods = settled_mesh(lab);
            // Even an operator's range that covers the nodes does not let a Service take a
            // node's address.
            allow_service_addresses(lab, "198.18.0.0/15");
            lab.pod_add_labeled("evil", "node-0", &[("app", "evil")])
                .expect("the attacker's pod");
            let n1 = lab.nodes[1].ip4();
            let capture = LabService {
                name: "capture".into(),
                selector: vec![("app".into(), "evil".into())],
                ports: vec!["179:8080".into()],
                external_ips: vec![n1],
                ..Default::default()
            };
            lab.service_add(&capture).expect("service");
            for n in ["node-0", "node-1"] {
                let log = lab.node(n).log();
                wait_for(&format!("{n} refusing it"), Duration::from_secs(30), || {
                    let l = std::fs::read_to_string(&log).unwrap_or_default();
                    l.contains(&format!(
                        "externalIPs: {n1} is node node-1's address: refused"
                    ))
                    .then_some(())
                });
                let d = dp.dispatch(lab, n);
                assert!(!d.contains(&format!("{n1}")), "{n}: {d}");
            }
            // The victim's agent restarts: its sessions come back, to the real speakers.
            lab.kill_agent(1);
            lab.start_agent(1);
            wait_for(
                "node-0's session with node-1",
                Duration::from_secs(40),
                || {
                    lab.peers("node-0")
                        .iter()
                        .all(|p| {
                            p["state"] == "Established"
                                && p["router_id"] == serde_json::json!(n1.to_string())
                        })
                        .then_some(())
                },
            );
            all_reach(lab, &pods);
        },
    );
}

/// A pod sends as another pod (on its node and on another) and as an address outside the
/// cluster: nothing arrives, while the same datagrams with its own address do.
#[test]
fn a_pod_cannot_send_as_another_iptables() {
    a_pod_cannot_send_as_another(Dp::Iptables);
}

#[test]
fn a_pod_cannot_send_as_another_nftables() {
    a_pod_cannot_send_as_another(Dp::Nftables);
}

fn a_pod_cannot_send_as_another(dp: Dp) {
    with_lab(
        dp.spec(LabSpec {
            nodes: 2,
            ..Default::default()
        }),
        |lab| {
            settled_mesh(lab);
            // The kernel's own reverse-path check off (new namespaces may inherit the host's
            // rp_filter): what stops the forgeries must be the agent's rule.
            for n in ["node-0", "node-1"] {
                lab.node(n).ns.ok(&[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ]);
            }
            let a = lab.pod_add("a", "node-0").expect("pod a");
            let b = lab.pod_add("b", "node-0").expect("pod b");
            let c = lab.pod_add("c", "node-1").expect("pod c");
            for n in ["node-0", "node-1"] {
                wait_for(
                    &format!("{n}'s anti-spoofing rule"),
                    Duration::from_secs(30),
                    || dp.anti_spoof(lab, n).map(|_| ()),
                );
            }
            let (_lb, heard_b) = udp_listener(&lab.pods["b"].ns);
            let (_lc, heard_c) = udp_listener(&lab.pods["c"].ns);
            let outside = "198.19.77.7";
            let send = |src: &str, dst: std::net::IpAddr, tag: &str| {
                let out = lab
                    .exec(
                        "a",
                        &["python3", "-c", SPOOF, src, &dst.to_string(), "9999", tag],
                    )
                    .expect("exec");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            // The forged ones first: once the genuine ones (sent after them, the same way)
            // have arrived, anything forged that was going to arrive has.
            send(&c.to_string(), b, "as-c");
            send(&b.to_string(), c, "as-b");
            send(outside, b, "outside");
            send(outside, c, "outside");
            send(&a.to_string(), b, "genuine");
            send(&a.to_string(), c, "genuine");
            for (pod, heard) in [("b", &heard_b), ("c", &heard_c)] {
                let lines = heard_until_genuine(heard, pod);
                assert!(
                    lines.iter().all(|l| l == &format!("genuine {a}")),
                    "{pod} heard forged datagrams: {lines:?}"
                );
            }
            // And the rule is what dropped them: 4 forged sends of 5 datagrams from a.
            let drops = dp.anti_spoof(lab, "node-0").unwrap_or(0);
            assert!(
                drops >= 20,
                "the anti-spoofing rule dropped {drops} packets"
            );
        },
    );
}

/// etcd that requires client certificates: the agents, the controller, the CNI plugin (with
/// its agent stopped, so it reaches etcd itself) and brindlectl all work with the lab's
/// certificate, and brindlectl without one fails saying it is etcd it cannot reach.
#[test]
fn everything_works_against_etcd_requiring_client_certificates() {
    with_lab(
        LabSpec {
            nodes: 2,
            etcd_tls: true,
            ..Default::default()
        },
        |lab| {
            let pods = settled_mesh(lab);
            // The plugin alone: node-1's agent is down, so IPAM goes to etcd directly.
            lab.stop_agent(1);
            lab.pod_add("direct", "node-1")
                .expect("ADD with the plugin's own etcd connection");
            let cni_log =
                std::fs::read_to_string(lab.node("node-1").dir.join("cni.log")).unwrap_or_default();
            assert!(
                cni_log
                    .lines()
                    .any(|l| l.contains("container=") && l.contains("ipam=\"plugin\"")),
                "{cni_log}"
            );
            lab.start_agent(1);
            let mut all = pods.clone();
            all.push("direct".into());
            all_reach(lab, &all);

            let ctl = |flags: &[String]| {
                let o = std::process::Command::new(brindle_lab::binary("brindlectl"))
                    .args(["get", "nodes"])
                    .args(flags)
                    .output()
                    .expect("brindlectl");
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).to_string()
                        + &String::from_utf8_lossy(&o.stderr),
                )
            };
            let flags = lab.datastore_flags();
            assert!(flags.iter().any(|f| f.starts_with("https://")), "{flags:?}");
            let (ok, out) = ctl(&flags);
            assert!(
                ok && out.contains("node-0") && out.contains("node-1"),
                "{out}"
            );
            // The CA alone (no client certificate): refused by etcd, said so.
            let ca_only: Vec<String> = flags[..6].to_vec();
            assert_eq!(ca_only[4], "--etcd-ca-cert-file", "{ca_only:?}");
            let (ok, out) = ctl(&ca_only);
            assert!(!ok, "{out}");
            assert!(
                out.contains("etcd datastore unreachable") && out.contains("--etcd-cert-file"),
                "says it is etcd refusing the connection: {out}"
            );
            // An agent given only the CA keeps retrying, saying why.
            let log = lab.dir.path().join("agent-without-cert.log");
            let f = std::fs::File::create(&log).expect("log");
            let n1 = lab.node("node-1");
            let endpoint = format!("https://{}", n1.forward.addr);
            let agent = n1
                .ns
                .command(&[
                    brindle_lab::binary("brindle-node").to_str().expect("path"),
                    "--nodename",
                    "node-1",
                    "--datastore",
                    "etcd",
                    "--etcd-endpoints",
                    &endpoint,
                    "--etcd-ca-cert-file",
                    &ca_only[5],
                    "--control-socket",
                    lab.dir.path().join("x.sock").to_str().expect("path"),
                    "--ipam-socket",
                    "none",
                    "--metrics-listen",
                    "none",
                    "--health-listen",
                    "127.0.0.1:19099",
                    "--nodename-file",
                    lab.dir.path().join("x-nodename").to_str().expect("path"),
                    "--dataplane-ready-file",
                    lab.dir.path().join("x-ready").to_str().expect("path"),
                ])
                .stdout(f.try_clone().expect("log"))
                .stderr(f)
                .spawn()
                .expect("brindle-node");
            let _agent = brindle_testsupport::ChildGuard(agent);
            let line = wait_for("the agent's complaint", Duration::from_secs(30), || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.lines()
                    .find(|l| {
                        l.contains("etcd datastore unreachable") && l.contains("--etcd-cert-file")
                    })
                    .map(str::to_owned)
            });
            eprintln!("the agent without a client certificate: {line}");

            // The controller ran its passes against the TLS etcd without an error.
            let clog = std::fs::read_to_string(lab.dir.path().join("controller/controller.log"))
                .unwrap_or_default();
            assert!(clog.contains("brindle-controller starting"), "{clog}");
            assert!(
                !clog.contains("ERROR") && !clog.contains("unreachable"),
                "{clog}"
            );
        },
    );
}

/// GET `path` on node `n`'s health or metrics port from inside its namespace: (status, body).
fn http_get(lab: &brindle_lab::Lab, n: &str, url: &str) -> (u16, String) {
    let code = format!(
        "import urllib.request as u, urllib.error as e\ntry:\n r = u.urlopen('{url}', timeout=5); print(r.status); print(r.read().decode())\nexcept e.HTTPError as x:\n print(x.code); print(x.read().decode())\nexcept Exception as x:\n print(0); print(x)"
    );
    let out = lab.node(n).ns.ok(&["python3", "-c", &code]);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The agent is alive or it restarts: a task that panics ends the process (exit 70, a line
/// naming it); a task that stops making progress turns `/livez` red, naming it; health
/// answers on loopback only; 200 concurrent scrapers of `/metrics` cost the speaker at most
/// one status request a second, and routes are still programmed meanwhile.
#[test]
fn the_agent_is_alive_or_restarts() {
    with_lab(
        LabSpec {
            nodes: 2,
            ..Default::default()
        },
        |lab| {
            settled_mesh(lab);
            let (status, body) = http_get(lab, "node-0", "http://127.0.0.1:9099/livez");
            assert_eq!((status, body.trim()), (200, "ok"), "alive at first");
            let n0 = lab.node("node-0").ip4();
            let (status, _) = http_get(lab, "node-0", &format!("http://{n0}:9099/livez"));
            assert_eq!(status, 0, "health answers on loopback only");

            // 200 scrapers, 5 scrapes each, while a new pod's block is programmed.
            let before = speaker_requests(lab);
            let started = std::time::Instant::now();
            let storm = lab
                .node("node-0")
                .ns
                .command(&[
                    "python3",
                    "-c",
                    "import threading, urllib.request as u\n\
                     done=[]\n\
                     def go():\n  for _ in range(5):\n    u.urlopen('http://127.0.0.1:9091/metrics', timeout=60).read(); done.append(1)\n\
                     ts=[threading.Thread(target=go) for _ in range(200)]\n\
                     [t.start() for t in ts]; [t.join() for t in ts]\n\
                     print('scraped', len(done))",
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("scrapers");
            let mut storm = brindle_testsupport::ChildGuard(storm);
            lab.pod_add("during-storm", "node-0").expect("pod");
            all_reach(lab, &["p-node-1".to_string(), "during-storm".to_string()]);
            wait_for("the scrapers", Duration::from_secs(120), || {
                storm.0.try_wait().ok().flatten()
            });
            let mut text = String::new();
            if let Some(mut o) = storm.0.stdout.take() {
                use std::io::Read;
                let _ = o.read_to_string(&mut text);
            }
            assert_eq!(text.trim(), "scraped 1000", "every scrape answered");
            let spent = started.elapsed().as_secs() + 1;
            let asked = speaker_requests(lab) - before;
            eprintln!("1,000 scrapes in about {spent} s asked the speaker {asked} times");
            assert!(
                asked <= spent + 2,
                "{asked} status requests to the speaker in about {spent} s of scraping"
            );

            // A stalled task: /livez names it.
            lab.stop_agent(1);
            lab.start_agent_with(1, &["--test-fault", "stall:services"]);
            wait_for("node-1's /livez to fail", Duration::from_secs(40), || {
                let (status, body) = http_get(lab, "node-1", "http://127.0.0.1:9099/livez");
                (status == 503 && body.contains("task services has not made progress"))
                    .then_some(())
            });

            // A panicking task ends the agent, with the line that says so.
            lab.stop_agent(1);
            lab.start_agent_with(1, &["--test-fault", "panic:services"]);
            let status = wait_for("node-1's agent to exit", Duration::from_secs(40), || {
                lab.agent_exit(1)
            });
            assert_eq!(status.code(), Some(70), "{status:?}");
            let log = std::fs::read_to_string(lab.node("node-1").log()).unwrap_or_default();
            assert!(
                log.contains("test fault: services panics")
                    && log.contains("exiting so that brindle-node is restarted"),
                "{log}"
            );
            lab.start_agent(1);
        },
    );
}

/// node-0's `brindle_speaker_status_requests_total`.
fn speaker_requests(lab: &brindle_lab::Lab) -> u64 {
    let (_, m) = http_get(lab, "node-0", "http://127.0.0.1:9091/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("brindle_speaker_status_requests_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no speaker_status_requests in {m}"))
}
