//! NetworkPolicy through the agents, with real packets: the upstream model's namespaces
//! x, y, z with pods a, b, c spread over two nodes, policies written to the datastore as an
//! operator would apply them, and the whole reachability matrix probed after each change
//! and held to what `brindle_policy`'s reference evaluation says (the same model
//! `brindlectl policy explain` uses). Every expectation is also spelled out by hand for the
//! cases below, so a wrong reference cannot pass a wrong dataplane.

use std::collections::BTreeSet;
use std::time::Duration;

use brindle_lab::netpol::truth_table;
use brindle_lab::{Lab, LabSpec};
use brindle_testsupport::daemons::wait_for;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::common::{restart_and_first_sync, with_lab};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Default deny ingress for every pod of x.
const DENY_X_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: deny-ingress, namespace: x}\n\
    spec: {podSelector: {}, policyTypes: [Ingress]}\n";
const PODS: [&str; 3] = ["a", "b", "c"];

fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The model: namespaces labelled `ns=<name>`, pods labelled `pod=<name>`, pod i on node
/// i mod 2.
fn model(lab: &mut Lab) {
    for ns in NAMESPACES {
        lab.namespace_set(ns, &[("ns", ns)]).expect("namespace");
    }
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    for (i, key) in all_pods().iter().enumerate() {
        let pod = key.split_once('/').map(|(_, p)| p).unwrap_or(key);
        let node = &nodes[i % nodes.len()];
        lab.pod_add_labeled(key, node, &[("pod", pod)])
            .unwrap_or_else(|e| panic!("pod {key} on {node}: {e}"));
    }
}

/// A 2-node lab holding the model, for `test`, on `variant`: the iptables dataplane with
/// that backend (`auto`, `legacy`, `nft`), or `nftables` (the native dataplane); with
/// `-ipv6` after it, a dual-stack lab probed over IPv6.
fn with_model(variant: &str, test: impl FnOnce(&mut Lab)) {
    let (variant, v6) = match variant.strip_suffix("-ipv6") {
        Some(v) => (v, true),
        None => (variant, false),
    };
    let spec = match variant {
        "nftables" => LabSpec {
            dataplane: "nftables".into(),
            ..Default::default()
        },
        backend => LabSpec {
            iptables_backend: backend.into(),
            ..Default::default()
        },
    };
    let ip_family = if v6 {
        brindle_lab::IpFamily::Dual
    } else {
        brindle_lab::IpFamily::Ipv4
    };
    with_lab(
        LabSpec {
            nodes: 2,
            ip_family,
            ..spec
        },
        |lab| {
            lab.probe_ipv6 = v6;
            model(lab);
            test(lab)
        },
    );
}

fn apply(lab: &Lab, yaml: &str) -> NetworkPolicy {
    let np: NetworkPolicy = serde_yaml_ng::from_str(yaml).expect("policy YAML");
    let ns = np.metadata.namespace.clone().expect("namespace");
    let api = lab.store.namespaced::<NetworkPolicy>(&ns);
    lab.block_on(async {
        let name = np.metadata.name.clone().unwrap_or_default();
        match api.get(&name).await.expect("get") {
            Some(old) => {
                let mut np = np.clone();
                np.metadata.resource_version = old.metadata.resource_version;
                api.update(&np).await.expect("update")
            }
            None => api.create(&np).await.expect("create"),
        }
    })
}

fn delete(lab: &Lab, ns: &str, name: &str) {
    let api = lab.store.namespaced::<NetworkPolicy>(ns);
    lab.block_on(api.delete(name, None)).expect("delete");
}

type Matrix = BTreeSet<(String, String)>;

/// Every (from, to) pair that `allowed` admits.
fn expect(allowed: impl Fn(&str, &str) -> bool) -> Matrix {
    let pods = all_pods();
    let mut m = Matrix::new();
    for f in &pods {
        for t in &pods {
            if allowed(f, t) {
                m.insert((f.clone(), t.clone()));
            }
        }
    }
    m
}

/// Probes until the matrix is `want` (policies take a moment to reach every node), then
/// once more to see it hold. Prints the upstream truth table on failure.
fn assert_matrix(lab: &Lab, port: u16, protocol: &str, want: &Matrix) {
    let pods = all_pods();
    let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
    let mut last = Matrix::new();
    for _ in 0..20 {
        last = lab.probe_matrix(&refs, &refs, port, protocol);
        if &last == want {
            // Once more: nothing may open after it matched (a connection missing now is
            // only slow under load: probe again).
            let again = lab.probe_matrix(&refs, &refs, port, protocol);
            let opened: Vec<_> = again.difference(want).collect();
            assert!(
                opened.is_empty(),
                "opened after the matrix matched: {opened:?}"
            );
            if &again == want {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{port}/{protocol}: want\n{}\ngot\n{}",
        truth_table(&pods, want),
        truth_table(&pods, &last)
    );
}

fn ns_of(p: &str) -> &str {
    p.split_once('/').map(|(n, _)| n).unwrap_or("default")
}

#[test]
fn the_upstream_model_through_the_agents_legacy() {
    upstream_model("legacy");
}

#[test]
fn the_upstream_model_through_the_agents_nft() {
    upstream_model("nft");
}

#[test]
fn the_upstream_model_through_the_agents_nftables() {
    upstream_model("nftables");
}

/// The same model over IPv6 in a dual-stack lab: every probe goes to the pods' IPv6
/// addresses, the ipBlocks are the IPv6 blocks (issue 31).
#[test]
fn the_upstream_model_over_ipv6_legacy() {
    upstream_model("legacy-ipv6");
}

#[test]
fn the_upstream_model_over_ipv6_nftables() {
    upstream_model("nftables-ipv6");
}

fn upstream_model(backend: &str) {
    with_model(backend, |lab| {
        // No policy: every pod reaches every pod, on both model ports and protocols.
        assert_matrix(lab, 80, "tcp", &expect(|_, _| true));
        assert_matrix(lab, 81, "udp", &expect(|_, _| true));

        // Default deny ingress in x: nothing reaches x's pods, x's pods reach out.
        apply(lab, DENY_X_INGRESS);
        let deny_x = expect(|f, t| ns_of(t) != "x" || f == t);
        assert_matrix(lab, 80, "tcp", &deny_x);
        // A node still reaches its own pods (kubelet probes).
        let (node, ip) = (
            lab.pods["x/a"].node.clone(),
            lab.probe_addr("x/a").expect("x/a"),
        );
        let out = lab.node(&node).ns.run(&[
            "python3",
            &lab.echo_script(),
            "hello",
            &ip.to_string(),
            "80",
        ]);
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("x/a "),
            "node → its own isolated pod: {out:?}"
        );

        // Allow x/a from namespace y on 80/TCP by number and 81/UDP by name.
        apply(
            lab,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {name: a-from-y, namespace: x}\n\
                 spec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  \
                 - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    \
                 ports: [{port: 80, protocol: TCP}, {port: serve-81-udp, protocol: UDP}]\n",
        );
        let from_y = |f: &str, t: &str| {
            deny_x.contains(&(f.into(), t.into())) || (t == "x/a" && ns_of(f) == "y")
        };
        assert_matrix(lab, 80, "tcp", &expect(from_y));
        assert_matrix(lab, 81, "udp", &expect(from_y));
        // 81/TCP is not in the policy: only the deny applies.
        assert_matrix(lab, 81, "tcp", &deny_x);
        // The counters say so, per policy and per pod (read every refresh, 3 s here).
        let node = lab.pods["x/a"].node.clone();
        wait_for(
            "policy counters on x/a's node",
            Duration::from_secs(20),
            || {
                let m = metrics(lab, &node);
                let value = |name: &str| -> u64 {
                    m.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0)
                };
                let allowed = value(
                    "brindle_policy_allowed_packets{policy=\"x/a-from-y\",direction=\"ingress\"}",
                );
                let denied =
                    value("brindle_policy_denied_packets{pod=\"x/a\",direction=\"ingress\"}");
                (allowed > 0 && denied > 0).then_some(())
            },
        );

        // The namespace selector follows labels: z labelled ns=y is let in too.
        lab.namespace_set("z", &[("ns", "y")]).expect("relabel z");
        assert_matrix(
            lab,
            80,
            "tcp",
            &expect(|f, t| from_y(f, t) || (t == "x/a" && ns_of(f) == "z")),
        );
        lab.namespace_set("z", &[("ns", "z")])
            .expect("relabel z back");
        assert_matrix(lab, 80, "tcp", &expect(from_y));

        // A pod relabelled out of the policy's selector loses its allow.
        lab.pod_label("x/a", &[("pod", "other")]).expect("relabel");
        assert_matrix(lab, 80, "tcp", &deny_x);
        lab.pod_label("x/a", &[("pod", "a")]).expect("relabel back");
        assert_matrix(lab, 80, "tcp", &expect(from_y));

        // Egress: y/b may only reach x/a (the ingress above admits it there) and
        // nothing else; replies still come back.
        apply(
                lab,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {name: b-egress, namespace: y}\n\
                 spec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  \
                 - to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n",
            );
        let egress = |f: &str, t: &str| from_y(f, t) && (f != "y/b" || t == "x/a" || t == "y/b");
        assert_matrix(lab, 80, "tcp", &expect(egress));

        // ipBlock with except: y/c admits x's pods by address, but not x/b's (the blocks
        // and address of the family probed).
        let xb = lab.probe_addr("x/b").expect("x/b");
        let host = if xb.is_ipv4() { 32 } else { 128 };
        let cidr = lab
            .blocks()
            .values()
            .flatten()
            .filter(|c| c.contains(':') == xb.is_ipv6())
            .cloned()
            .collect::<Vec<_>>();
        let mut ingress_from = String::new();
        for c in &cidr {
            ingress_from.push_str(&format!(
                "{{ipBlock: {{cidr: \"{c}\", except: [\"{xb}/{host}\"]}}}},"
            ));
        }
        apply(
            lab,
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                     metadata: {{name: c-blocks, namespace: y}}\n\
                     spec:\n  podSelector: {{matchLabels: {{pod: c}}}}\n  ingress:\n  \
                     - from: [{}]\n",
                ingress_from.trim_end_matches(',')
            ),
        );
        let blocks = |f: &str, t: &str| egress(f, t) && (t != "y/c" || f != "x/b");
        assert_matrix(lab, 80, "tcp", &expect(blocks));

        // An agent restart writes nothing (the rules stay in the kernel meanwhile), and
        // the matrix is the same after it.
        let want = expect(blocks);
        let log = restart_and_first_sync(lab, 0);
        assert!(log.contains("nothing written"), "{log}");
        assert_matrix(lab, 80, "tcp", &want);

        // Deleting the policies opens everything again.
        for (ns, name) in [
            ("x", "deny-ingress"),
            ("x", "a-from-y"),
            ("y", "b-egress"),
            ("y", "c-blocks"),
        ] {
            delete(lab, ns, name);
        }
        assert_matrix(lab, 80, "tcp", &expect(|_, _| true));
    });
}

/// Sends a UDP datagram to port 80 of every address in `ips` every 5 ms for `secs`, and
/// prints each distinct greeting it gets back ("<pod> <address it saw>").
const SWEEP: &str = r#"
import socket, sys, time
ips = sys.argv[2:]; end = time.time() + float(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setblocking(False)
seen = set()
while time.time() < end:
    for ip in ips:
        try: u.sendto(b"hi", (ip, 80))
        except OSError: pass
    t = time.time() + 0.005
    while time.time() < t:
        try:
            d, a = u.recvfrom(2048); seen.add(d.decode().split()[0])
        except BlockingIOError:
            time.sleep(0.001)
for s in sorted(seen): print(s, flush=True)
"#;

/// What answered a sweep of `node`'s blocks from `from` while `during` ran.
fn sweep_while(
    lab: &mut Lab,
    from: &str,
    node: &str,
    during: impl FnOnce(&mut Lab),
) -> BTreeSet<String> {
    let mut ips = vec![];
    for b in lab.blocks().get(node).cloned().unwrap_or_default() {
        let net: ipnetwork::Ipv4Network = b.parse().expect("block");
        ips.extend(net.iter().map(|ip| ip.to_string()));
    }
    let mut argv = vec!["python3".to_string(), "-c".into(), SWEEP.into(), "6".into()];
    argv.extend(ips);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = lab.pods[from]
        .ns
        .command(&argv)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sweep");
    let mut guard = brindle_testsupport::ChildGuard(child);
    std::thread::sleep(Duration::from_millis(500));
    during(lab);
    let mut text = String::new();
    if let Some(mut out) = guard.0.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut text);
    }
    let _ = guard.0.wait();
    text.lines().map(str::to_string).collect()
}

/// A pod created under a default-deny policy, its server listening before its interface
/// exists, never answers a sweep that was already running: not in the first instant either.
/// The same sweep sees a pod of an open namespace made the same way (it has teeth).
#[test]
fn a_new_pod_under_default_deny_never_answers_not_even_at_first_iptables() {
    a_new_pod_under_default_deny_never_answers_not_even_at_first("auto");
}

#[test]
fn a_new_pod_under_default_deny_never_answers_not_even_at_first_nftables() {
    a_new_pod_under_default_deny_never_answers_not_even_at_first("nftables");
}

fn a_new_pod_under_default_deny_never_answers_not_even_at_first(variant: &str) {
    with_model(variant, |lab| {
        assert_matrix(lab, 80, "udp", &expect(|_, _| true));
        apply(lab, DENY_X_INGRESS);
        assert_matrix(lab, 80, "udp", &expect(|f, t| ns_of(t) != "x" || f == t));
        let node = lab.nodes[1].name.clone();
        let seen = sweep_while(lab, "y/a", &node, |lab| {
            lab.pod_add_serving_first("x/new", &node, &[("pod", "new")])
                .expect("x/new");
        });
        assert!(!seen.contains("x/new"), "x/new answered: {seen:?}");
        assert!(
            seen.contains("y/c"),
            "the sweep reaches open pods: {seen:?}"
        );
        let seen = sweep_while(lab, "y/a", &node, |lab| {
            lab.pod_add_serving_first("y/new", &node, &[("pod", "new")])
                .expect("y/new");
        });
        assert!(seen.contains("y/new"), "an open new pod answers: {seen:?}");
        // The ADD waited for the chains.
        let log = std::fs::read_to_string(lab.node(&node).log()).unwrap_or_default();
        assert!(
            !log.contains("policy chains were not ready in time"),
            "an ADD went on without its chains"
        );

        // With the agent down (brindle-cni does IPAM itself), a new pod's interface has
        // no chains: it passes nothing, whatever its namespace, until the agent is back;
        // then the open one answers and the isolated one still does not.
        lab.kill_agent(1);
        let seen = sweep_while(lab, "y/a", &node, |lab| {
            lab.pod_add_serving_first("x/late", &node, &[("pod", "late")])
                .expect("x/late");
            lab.pod_add_serving_first("y/late", &node, &[("pod", "late")])
                .expect("y/late");
        });
        assert!(
            seen.contains("y/c"),
            "the sweep reaches open pods: {seen:?}"
        );
        assert!(
            !seen.contains("x/late") && !seen.contains("y/late"),
            "a pod without chains answered: {seen:?}"
        );
        lab.start_agent(1);
        let open = wait_for("y/late to answer", Duration::from_secs(30), || {
            lab.probe("y/a", "y/late", 80, "tcp").ok().filter(|ok| *ok)
        });
        assert!(open);
        assert!(!lab.probe("y/a", "x/late", 80, "tcp").unwrap());
    });
}

/// Service traffic is judged against the backend pod and its target port, after DNAT: a
/// ClusterIP whose backend admits only x/a (on the target port 8080) answers x/a and no one
/// else, though the port dialled (80) is in no policy.
#[test]
fn service_traffic_is_policed_at_the_backend_iptables() {
    service_traffic_is_policed_at_the_backend("auto");
}

#[test]
fn service_traffic_is_policed_at_the_backend_nftables() {
    service_traffic_is_policed_at_the_backend("nftables");
}

fn service_traffic_is_policed_at_the_backend(variant: &str) {
    with_model(variant, |lab| {
        let node = lab.nodes[1].name.clone();
        lab.pod_add_labeled("web", &node, &[("app", "web")])
            .expect("web");
        let svc = lab
            .service_add(&brindle_lab::LabService {
                name: "web".into(),
                selector: vec![("app".into(), "web".into())],
                ..Default::default()
            })
            .expect("service");
        apply(
                lab,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {name: web, namespace: default}\n\
                 spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  \
                 - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n    \
                 ports: [{port: 8080}]\n",
            );
        let answered = |lab: &Lab, from: &str| {
            let ns = &lab.pods[from].ns;
            matches!(lab.client(ns, "hello", svc.cluster_ip, 80, 1).first(), Some(Ok((who, _))) if who == "web")
        };
        wait_for("x/a through the Service", Duration::from_secs(30), || {
            answered(lab, "x/a").then_some(())
        });
        for from in ["x/b", "y/a", "z/c"] {
            assert!(!answered(lab, from), "{from} reached the isolated backend");
        }
        assert!(answered(lab, "x/a"));
    });
}

/// A node agent's /metrics, read inside the node.
fn metrics(lab: &Lab, node: &str) -> String {
    let out = lab.node(node).ns.run(&[
        "python3",
        "-c",
        "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9091/metrics', timeout=3).read().decode())",
    ]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A policy the agents cannot read (etcd mode has no API server to refuse it): its pods are
/// isolated without its allows, never opened; one warning names it, a gauge counts it, and
/// the other policies keep working.
#[test]
fn an_unreadable_policy_isolates_its_pods_closed_and_the_others_keep_working_iptables() {
    an_unreadable_policy_isolates_its_pods_closed_and_the_others_keep_working("auto");
}

#[test]
fn an_unreadable_policy_isolates_its_pods_closed_and_the_others_keep_working_nftables() {
    an_unreadable_policy_isolates_its_pods_closed_and_the_others_keep_working("nftables");
}

fn an_unreadable_policy_isolates_its_pods_closed_and_the_others_keep_working(variant: &str) {
    with_model(variant, |lab| {
        apply(
                lab,
                &np(
                    "bad",
                    "x",
                    &format!(
                        "{TO_A}  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/33}}}}, {{namespaceSelector: {{}}}}]\n"
                    ),
                ),
            );
        apply(
                lab,
                &np(
                    "good",
                    "x",
                    "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n",
                ),
            );
        assert_matrix(
            lab,
            80,
            "tcp",
            &expect(|f, t| f == t || (t != "x/a" && (t != "x/b" || ns_of(f) == "y"))),
        );
        for n in &lab.nodes {
            let log = std::fs::read_to_string(n.log()).unwrap_or_default();
            let warnings = log
                .lines()
                .filter(|l| l.contains("NetworkPolicy refused") && l.contains("x/bad"))
                .count();
            assert_eq!(warnings, 1, "{}: one warning for x/bad", n.name);
            assert!(
                log.contains("10.0.0.0/33"),
                "{}: the warning says why",
                n.name
            );
            let m = metrics(lab, &n.name);
            assert!(
                m.lines()
                    .any(|l| l.starts_with("brindle_policy_refused{object=\"x/bad\"} 1")),
                "{}: the gauge\n{m}",
                n.name
            );
            assert!(!m.contains("object=\"x/good\""), "{}", n.name);
        }
    });
}

/// `endPort`: a range admits both its ends and only its protocol.
#[test]
fn an_end_port_range_admits_its_ends_and_only_its_protocol_iptables() {
    an_end_port_range_admits_its_ends_and_only_its_protocol("auto");
}

#[test]
fn an_end_port_range_admits_its_ends_and_only_its_protocol_nftables() {
    an_end_port_range_admits_its_ends_and_only_its_protocol("nftables");
}

fn an_end_port_range_admits_its_ends_and_only_its_protocol(variant: &str) {
    with_model(variant, |lab| {
        apply(
            lab,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {name: range, namespace: x}\n\
                 spec:\n  podSelector: {}\n  ingress:\n  \
                 - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    \
                 ports: [{port: 80, endPort: 81, protocol: TCP}]\n",
        );
        let from_y = expect(|f, t| ns_of(t) != "x" || f == t || ns_of(f) == "y");
        let closed = expect(|f, t| ns_of(t) != "x" || f == t);
        assert_matrix(lab, 80, "tcp", &from_y);
        assert_matrix(lab, 81, "tcp", &from_y);
        assert_matrix(lab, 80, "udp", &closed);
    });
}

/// The agent log of the node `pod` runs on, from `offset` bytes.
fn pod_node_log(lab: &Lab, pod: &str) -> std::path::PathBuf {
    let node = &lab.pods[pod].node;
    lab.nodes
        .iter()
        .find(|n| &n.name == node)
        .expect("the pod's node")
        .log()
}

fn log_since(log: &std::path::Path, offset: usize) -> String {
    let b = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(b.get(offset..).unwrap_or_default()).to_string()
}

/// `key=value` in a log line, quoted or not.
fn has_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!(" {key}={value} ")) || line.contains(&format!(" {key}=\"{value}\""))
}

/// The `--log-denied` lines (the lab's agents run with it): each denied packet's line names
/// the pod, the direction, the packet and the policies that isolate the pod; a pod flooding
/// what it may not send gets a bounded number of lines. Both backends (iptables-nft turns
/// NFLOG into nftables' `log group`).
#[test]
fn denied_packets_are_logged_naming_the_pod_and_the_policy_and_a_flood_stays_bounded_legacy() {
    denied_packets_logged("legacy");
}

#[test]
fn denied_packets_are_logged_naming_the_pod_and_the_policy_and_a_flood_stays_bounded_nftables() {
    denied_packets_logged("nftables");
}

#[test]
fn denied_packets_are_logged_naming_the_pod_and_the_policy_and_a_flood_stays_bounded_nft() {
    denied_packets_logged("nft");
}

fn denied_packets_logged(backend: &str) {
    with_model(backend, |lab| {
        apply(lab, DENY_X_INGRESS);
        apply(
            lab,
            &np(
                "no-egress",
                "x",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n",
            ),
        );
        let denied_line = |pod: &str, direction: &str, from: &str, to: &str, by: &str| {
            let log = pod_node_log(lab, pod);
            let (src, dst) = (ip(lab, from), ip(lab, to));
            wait_for(
                &format!("a denied line for {from} -> {to}"),
                Duration::from_secs(30),
                || {
                    // Probed until the policy is in and the line is there.
                    let _ = lab.probe(from, to, 80, "tcp");
                    log_since(&log, 0)
                        .lines()
                        .find(|l| {
                            l.contains("NetworkPolicy denied a packet")
                                && has_field(l, "pod", pod)
                                && has_field(l, "direction", direction)
                                && has_field(l, "src", &src)
                                && has_field(l, "dst", &dst)
                                && has_field(l, "protocol", "tcp")
                                && has_field(l, "dport", "80")
                                && has_field(l, "isolated_by", by)
                        })
                        .map(str::to_string)
                },
            )
        };
        let line = denied_line("x/a", "ingress", "y/b", "x/a", "x/deny-ingress");
        eprintln!("{line}");
        denied_line("x/b", "egress", "x/b", "z/c", "x/no-egress");

        // A flood of denied UDP from y/b to x/a: the kernel passes at most 10 a second
        // (20 at once) to the agent, and the agent logs at most 100 a minute.
        let log = pod_node_log(lab, "x/a");
        let offset = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let flood = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 for i in range(20000):\n    s.sendto(b'x',('{}',80))\n",
            ip(lab, "x/a")
        );
        let started = std::time::Instant::now();
        let out = lab.pods["y/b"].ns.run(&["python3", "-c", &flood]);
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(Duration::from_secs(2));
        let secs = started.elapsed().as_secs() + 1;
        let lines = log_since(&log, offset)
            .lines()
            .filter(|l| {
                l.contains("NetworkPolicy denied a packet") && has_field(l, "protocol", "udp")
            })
            .count() as u64;
        eprintln!("{lines} lines for the flood in {secs} s");
        assert!(lines > 0, "the flood was not logged at all");
        assert!(
                lines <= 20 + 10 * secs,
                "{lines} lines for 20,000 denied packets in {secs} s: the kernel's limit is not applied"
            );
    });
}

/// One upstream data-path case: the policies (built from the lab: ipBlocks name pod
/// addresses), then each (port, protocol) with the pairs that must connect. A pod always
/// reaches itself (loopback, as upstream ignores it).
struct Case {
    policies: fn(&Lab) -> Vec<String>,
    checks: &'static [Check],
}

/// A port, a protocol, and whether `from` must reach `to` there.
type Check = (u16, &'static str, fn(&str, &str) -> bool);

/// A change after the first checks (a label, a policy updated or deleted), then the checks
/// that must hold after it.
type Step = (fn(&mut Lab), &'static [Check]);

fn np(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn run_case(variant: &str, case: Case, steps: &[Step]) {
    with_model(variant, |lab| {
        let logs: Vec<(std::path::PathBuf, usize)> = lab
            .nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let len = std::fs::metadata(&log)
                    .map(|m| m.len() as usize)
                    .unwrap_or(0);
                (log, len)
            })
            .collect();
        let policies = (case.policies)(lab);
        for p in &policies {
            apply(lab, p);
        }
        // Every agent has written them (else a matrix that is also today's would pass
        // before any policy arrived).
        let want = format!("policies={} ", policies.len());
        for (log, offset) in &logs {
            wait_for(
                "the agents to program the policies",
                Duration::from_secs(30),
                || {
                    let b = std::fs::read(log).ok()?;
                    let since = String::from_utf8_lossy(b.get(*offset..)?).to_string();
                    since
                        .lines()
                        .any(|l| l.contains("services programmed") && l.contains(&want))
                        .then_some(())
                },
            );
        }
        for (port, proto, allowed) in case.checks {
            assert_matrix(lab, *port, proto, &expect(|f, t| f == t || allowed(f, t)));
        }
        for (act, checks) in steps {
            act(lab);
            for (port, proto, allowed) in *checks {
                assert_matrix(lab, *port, proto, &expect(|f, t| f == t || allowed(f, t)));
            }
        }
    });
}

fn ip(lab: &Lab, pod: &str) -> String {
    lab.pods[pod].ip4().to_string()
}

macro_rules! upstream {
    ($($name:ident: $case:expr $(, then $steps:expr)?;)*) => {
        /// The upstream model's data-path cases (test/e2e/network/netpol), each with its
        /// own lab; the server is x/a unless the case says otherwise. A case with `then`
        /// changes something after its checks and checks again.
        mod upstream {
            use super::*;
            $(mod $name {
                use super::*;
                #[test] fn iptables() {
                    let steps: &[&[Step]] = &[$($steps)?];
                    run_case("auto", $case, steps.first().copied().unwrap_or_default())
                }
                #[test] fn nftables() {
                    let steps: &[&[Step]] = &[$($steps)?];
                    run_case("nftables", $case, steps.first().copied().unwrap_or_default())
                }
            })*
        }
    };
}

fn relabel(lab: &mut Lab, pod: &str, key: &str, value: &str) {
    lab.pod_relabel(pod, &[(key.to_string(), Some(value.to_string()))])
        .expect("relabel");
}

const TO_A: &str = "  podSelector: {matchLabels: {pod: a}}\n";

upstream! {
    default_deny_ingress: Case {
        policies: |_| vec![np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n")],
        checks: &[(80, "tcp", |_, t| ns_of(t) != "x"), (80, "udp", |_, t| ns_of(t) != "x")],
    };
    default_deny_all: Case {
        policies: |_| vec![np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")],
        checks: &[(80, "tcp", |f, t| ns_of(t) != "x" && ns_of(f) != "x")],
    };
    allow_from_pods_within_server_namespace: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "x")],
    };
    allow_ingress_for_a_target: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "x/b")],
    };
    allow_ingress_from_all_namespaces: Case {
        policies: |_| vec![
            np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
            np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{}}}}]\n")),
        ],
        checks: &[(80, "tcp", |_, t| ns_of(t) != "x" || t == "x/a")],
    };
    allow_only_from_a_different_namespace: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "y")],
    };
    pod_selector_with_match_expressions: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b]}}]}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "x/b")],
    };
    namespace_selector_with_match_expressions: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchExpressions: [{{key: ns, operator: NotIn, values: [x, z]}}]}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "y")],
    };
    pod_selector_or_namespace_selector: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}, {{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "x/b" || ns_of(f) == "y")],
    };
    pod_selector_and_namespace_selector: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "y/b")],
    };
    namespace_selector_with_the_default_name_label: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "y")],
    };
    based_on_ports: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: 81}}]\n"))],
        checks: &[(80, "tcp", |_, t| t != "x/a"), (81, "tcp", |_, _| true)],
    };
    stacked_policies_with_overlapping_selectors_add_up: Case {
        policies: |_| vec![
            np("p80", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]\n    ports: [{{port: 80}}]\n")),
            np("p81", "x", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81}]\n"),
        ],
        checks: &[
            (80, "tcp", |f, t| ns_of(t) != "x" || (t == "x/a" && ns_of(f) == "y")),
            (81, "tcp", |f, t| ns_of(t) != "x" || ns_of(f) == "y"),
        ],
    };
    // Beside a default deny, so that the allow must do the opening.
    allow_all: Case {
        policies: |_| vec![
            np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
            np("all", "x", "  podSelector: {}\n  ingress:\n  - {}\n"),
        ],
        checks: &[(80, "tcp", |_, _| true)],
    };
    ingress_on_one_named_port: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: serve-80-tcp}}]\n"))],
        checks: &[(80, "tcp", |_, _| true), (81, "tcp", |_, t| t != "x/a")],
    };
    egress_on_one_named_port: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - ports: [{{port: serve-80-tcp}}]\n"))],
        checks: &[(80, "tcp", |_, _| true), (81, "tcp", |f, _| f != "x/a")],
    };
    deny_egress_by_pod_selector: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n"))],
        checks: &[(80, "tcp", |f, _| f != "x/a")],
    };
    deny_egress_from_all_pods_in_a_namespace: Case {
        policies: |_| vec![np("p", "x", "  podSelector: {}\n  policyTypes: [Egress]\n")],
        checks: &[(80, "tcp", |f, _| ns_of(f) != "x")],
    };
    deny_egress_on_the_client_side_even_if_the_server_allows: Case {
        policies: |_| vec![
            np("out", "x", &format!("{TO_A}  policyTypes: [Egress]\n")),
            np("in", "y", "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n"),
        ],
        // y/b admits only x/a, which may not send: nobody reaches y/b, x/a reaches nobody.
        checks: &[(80, "tcp", |f, t| f != "x/a" && t != "y/b")],
    };
    egress_to_a_server_in_another_namespace: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| f != "x/a" || t == "y/b")],
    };
    ingress_any_port_on_one_protocol: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{protocol: TCP}}]\n"))],
        checks: &[(81, "tcp", |_, _| true), (80, "udp", |_, t| t != "x/a")],
    };
    allow_all_takes_precedence_over_a_narrower_ingress: Case {
        policies: |_| vec![
            np("narrow", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: 81}}]\n")),
            np("all", "x", &format!("{TO_A}  ingress:\n  - {{}}\n")),
        ],
        checks: &[(80, "tcp", |_, _| true)],
    };
    allow_all_takes_precedence_over_a_narrower_egress: Case {
        policies: |_| vec![
            np("narrow", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - ports: [{{port: 81}}]\n")),
            np("all", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - {{}}\n")),
        ],
        checks: &[(80, "tcp", |_, _| true)],
    };
    egress_to_a_server_in_a_cidr_block: Case {
        policies: |lab| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {}/32}}}}]\n", ip(lab, "y/b")))],
        checks: &[(80, "tcp", |f, t| f != "x/a" || t == "y/b")],
    };
    except_clause_in_a_cidr_block: Case {
        policies: |lab| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}}}]\n", ip(lab, "y/b")))],
        checks: &[(80, "tcp", |f, t| f != "x/a" || t != "y/b")],
    };
    // The usual "anywhere but" egress: a block of the whole space, which ipset's hash:net
    // cannot hold as one member (written as its two halves).
    the_whole_space_except_one_address: Case {
        policies: |lab| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [{}/32]}}}}]\n", ip(lab, "y/b")))],
        checks: &[(80, "tcp", |f, t| f != "x/a" || t != "y/b")],
    };
    an_address_in_an_except_and_in_another_block_is_allowed: Case {
        policies: |lab| vec![np("p", "x", &format!(
            "{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{0}/32]}}}}]\n  - to: [{{ipBlock: {{cidr: {0}/32}}}}]\n",
            ip(lab, "y/b")
        ))],
        checks: &[(80, "tcp", |_, _| true)],
    };
    ingress_and_egress_are_judged_independently: Case {
        policies: |_| vec![
            np("in", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]\n")),
            np("out", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]\n")),
        ],
        checks: &[(80, "tcp", |f, t| (t != "x/a" || ns_of(f) == "y") && (f != "x/a" || ns_of(t) == "z"))],
    };
    no_tcp_when_a_policy_names_only_udp: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: 81, protocol: UDP}}]\n"))],
        checks: &[(81, "tcp", |_, t| t != "x/a"), (81, "udp", |_, _| true)],
    };
    // This kernel has no SCTP sockets, so no SCTP probe: what can be seen is that a policy
    // admitting only SCTP isolates its pod, and is never read as TCP or UDP.
    sctp_is_not_tcp_and_an_sctp_policy_still_isolates: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: 80, protocol: SCTP}}, {{port: serve-81-tcp, protocol: SCTP}}]\n"))],
        checks: &[(80, "tcp", |_, t| t != "x/a"), (80, "udp", |_, t| t != "x/a"), (81, "tcp", |_, t| t != "x/a")],
    };
    udp_based_on_ports: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - ports: [{{port: 81, protocol: UDP}}]\n"))],
        checks: &[(80, "udp", |_, t| t != "x/a"), (81, "udp", |_, _| true)],
    };
    udp_default_deny_ingress: Case {
        policies: |_| vec![np("deny", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []\n")],
        checks: &[(80, "udp", |_, t| ns_of(t) != "x")],
    };
    multiple_pod_selectors_and_namespace_selectors: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}}]}}, podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b, c]}}]}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || (ns_of(f) != "x" && !f.ends_with("/a")))],
    };
    any_pod_selectors: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}, {{podSelector: {{matchLabels: {{pod: c}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "x/b" || f == "x/c")],
    };
    only_from_one_pod_in_another_namespace: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || f == "y/a")],
    };
    ingress_from_a_namespace_on_one_named_port: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}]\n    ports: [{{port: serve-80-tcp, protocol: TCP}}]\n"))],
        checks: &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "y"), (81, "tcp", |_, t| t != "x/a")],
    };
    updated_policy: Case {
        policies: |_| vec![np("mutate", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - {}\n")],
        checks: &[(81, "tcp", |_, _| true)],
    }, then &[(
        |lab| { apply(lab, &np("mutate", "x", "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []\n")); },
        &[(81, "tcp", |_, t| ns_of(t) != "x")],
    )];
    ingress_from_an_updated_namespace: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns2: updated}}}}}}]\n"))],
        checks: &[(80, "tcp", |_, t| t != "x/a")],
    }, then &[(
        |lab| lab.namespace_label("y", &[("ns2".into(), Some("updated".into()))]).expect("label"),
        &[(80, "tcp", |f, t| t != "x/a" || ns_of(f) == "y")],
    )];
    ingress_from_an_updated_pod: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b, pod2: updated}}}}}}]\n"))],
        checks: &[(80, "tcp", |_, t| t != "x/a")],
    }, then &[(
        |lab| relabel(lab, "x/b", "pod2", "updated"),
        &[(80, "tcp", |f, t| t != "x/a" || f == "x/b")],
    )];
    deny_ingress_from_other_namespaces: Case {
        policies: |_| vec![np("p", "x", "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n")],
        checks: &[(80, "tcp", |f, t| ns_of(t) != "x" || ns_of(f) == "x")],
    };
    deny_ingress_to_an_updated_pod: Case {
        policies: |_| vec![np("p", "x", "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]\n  ingress: []\n")],
        checks: &[(80, "tcp", |_, _| true)],
    }, then &[(
        |lab| relabel(lab, "x/a", "target", "isolated"),
        &[(80, "tcp", |_, t| t != "x/a")],
    )];
    ingress_and_egress_together: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress, Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]\n  egress:\n  - ports: [{{port: 80}}]\n"))],
        checks: &[
            (80, "tcp", |f, t| t != "x/a" || f == "x/b"),
            (81, "tcp", |f, t| (t != "x/a" || f == "x/b") && f != "x/a"),
        ],
    };
    policies_stop_applying_once_deleted: Case {
        policies: |_| vec![np("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress: []\n")],
        checks: &[(80, "tcp", |f, t| ns_of(f) != "x" && ns_of(t) != "x")],
    }, then &[(
        |lab| delete(lab, "x", "deny-all"),
        &[(80, "tcp", |_, _| true)],
    )];
    namespace_selector_with_match_expressions_on_the_default_label: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}}]}}}}]\n"))],
        checks: &[(80, "tcp", |f, t| f != "x/a" || ns_of(t) != "y")],
    };
    udp_pod_selector_and_namespace_selector: Case {
        policies: |_| vec![np("p", "x", &format!("{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]\n    ports: [{{port: 80, protocol: UDP}}]\n"))],
        checks: &[(80, "udp", |f, t| t != "x/a" || f == "y/b")],
    };
}

// SCTP: this host's kernel has no SCTP sockets, so the upstream model's three SCTP cases run
// inside a VM booted on Debian's kernel (as the IPIP tests do), each on its own lab there.

const IN_VM: &str = "BRINDLE_IN_VM";
const SCTP_VM_TESTS: &[&str] = &[
    "netpol::vm_sctp_default_deny_ingress",
    "netpol::vm_sctp_based_on_ports",
    "netpol::vm_sctp_pod_selector_and_namespace_selector",
    "netpol::vm_sctp_default_deny_ingress_nftables",
    "netpol::vm_sctp_based_on_ports_nftables",
    "netpol::vm_sctp_pod_selector_and_namespace_selector_nftables",
];

#[test]
fn sctp_cases_in_a_vm() {
    use brindle_testsupport::vm::{eprint_block, run_in_vm, VmSpec};
    let exe = std::env::current_exe().expect("test binary");
    let script = format!(
        "export {IN_VM}=1 BRINDLE_TIMEOUT_SCALE=5 RUST_BACKTRACE=1\n\
         cd {dir}\n\
         {exe} --ignored --exact --test-threads 1 --nocapture {tests} 2>&1 || exit 1\n",
        dir = std::env::current_dir().expect("cwd").display(),
        exe = exe.display(),
        tests = SCTP_VM_TESTS.join(" "),
    );
    let r = run_in_vm(&VmSpec {
        script: &script,
        modules: &["sctp"],
        // Below nextest's limit for the vm group (25 × 60 s): a guest that hangs is
        // reported with its console's tail instead of killed without a word.
        timeout: Duration::from_secs(1380),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprint_block("inside the VM", &r.output);
    assert_eq!(
        r.status, 0,
        "the SCTP cases inside the VM failed (output above)"
    );
    let all = format!("test result: ok. {} passed; 0 failed", SCTP_VM_TESTS.len());
    assert!(
        r.output.contains(&all),
        "not every one of {SCTP_VM_TESTS:?} passed inside the VM"
    );
}

fn in_vm() {
    assert!(
        std::env::var_os(IN_VM).is_some(),
        "this test needs a kernel with SCTP: sctp_cases_in_a_vm runs it inside a VM"
    );
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_default_deny_ingress() {
    sctp_default_deny_ingress("auto");
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_default_deny_ingress_nftables() {
    sctp_default_deny_ingress("nftables");
}

fn sctp_default_deny_ingress(variant: &str) {
    in_vm();
    run_case(
        variant,
        Case {
            policies: |_| {
                vec![np(
                    "deny-all",
                    "x",
                    "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []\n",
                )]
            },
            checks: &[(80, "sctp", |_, t| ns_of(t) != "x")],
        },
        &[],
    );
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_based_on_ports() {
    sctp_based_on_ports("auto");
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_based_on_ports_nftables() {
    sctp_based_on_ports("nftables");
}

fn sctp_based_on_ports(variant: &str) {
    in_vm();
    run_case(
        variant,
        Case {
            policies: |_| {
                vec![np(
                    "p",
                    "x",
                    &format!(
                        "{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}]\n    ports: [{{port: 81, protocol: SCTP}}]\n"
                    ),
                )]
            },
            // SCTP 81 from y only; SCTP 80 (and TCP 81) not at all.
            checks: &[
                (81, "sctp", |f, t| t != "x/a" || ns_of(f) == "y"),
                (80, "sctp", |_, t| t != "x/a"),
                (81, "tcp", |_, t| t != "x/a"),
            ],
        },
        &[],
    );
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_pod_selector_and_namespace_selector() {
    sctp_pod_selector_and_namespace_selector("auto");
}

#[test]
#[ignore = "needs SCTP: sctp_cases_in_a_vm runs it inside a VM"]
fn vm_sctp_pod_selector_and_namespace_selector_nftables() {
    sctp_pod_selector_and_namespace_selector("nftables");
}

fn sctp_pod_selector_and_namespace_selector(variant: &str) {
    in_vm();
    run_case(
        variant,
        Case {
            policies: |_| {
                vec![np(
                    "p",
                    "x",
                    &format!(
                        "{TO_A}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}]\n"
                    ),
                )]
            },
            checks: &[(80, "sctp", |f, t| t != "x/a" || f == "y/a")],
        },
        &[],
    );
}
