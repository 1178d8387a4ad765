//! The `brindle-lab` command as a person uses it: up, pods, exec, status, and down — also
//! after the supervisor was killed, from its ledger.

use std::path::{Path, PathBuf};
use std::process::Command;

fn lab(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_brindle-lab"))
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run brindle-lab");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `down` whatever happens, so a failing test leaves nothing behind.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&self.0, &["down"]);
    }
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string()
}

#[test]
fn up_pods_exec_status_and_down_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let _down = Down(dir.clone());
    let (ok, out) = lab(&dir, &["up", "--nodes", "2", "--tor"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("starting brindle-node on node-1") && out.contains("lab is up"),
        "{out}"
    );
    // Up means the BGP sessions are: status right away shows each node's as Established.
    assert!(out.contains("every BGP session Established"), "{out}");
    let (ok, st) = lab(&dir, &["status"]);
    assert!(ok, "{st}");
    let sessions: Vec<&str> = st
        .lines()
        .skip_while(|l| *l != "SESSIONS")
        .skip(2) // the title and the table's header
        .take_while(|l| *l != "PODS" && !l.trim().is_empty())
        .collect();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|l| l.contains("Established")),
        "{st}"
    );
    let (ok, again) = lab(&dir, &["up"]);
    assert!(!ok && again.contains("already running"), "{again}");

    let (ok, a) = lab(&dir, &["pod", "add", "a", "--node", "node-0"]);
    assert!(ok, "{a}");
    let (ok, b) = lab(&dir, &["pod", "add", "b", "--node", "node-1"]);
    assert!(ok, "{b}");
    let b_ip = b.trim().rsplit(' ').next().unwrap().to_string();
    let (ok, bad) = lab(&dir, &["pod", "add", "c", "--node", "node-9"]);
    assert!(!ok && bad.contains("no node \"node-9\""), "{bad}");

    let code = format!("import socket; print(socket.create_connection(('{b_ip}', 8080), timeout=3).recv(16).decode().strip())");
    let mut greeting = String::new();
    for _ in 0..50 {
        let (ok, g) = lab(&dir, &["exec", "a", "--", "python3", "-c", &code]);
        if ok {
            greeting = g;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The echo server greets with its name and the client's address.
    assert_eq!(greeting.split_whitespace().next(), Some("b"), "{greeting}");

    // A Service through the CLI: its endpoint is a pod labelled for it.
    let (ok, w) = lab(
        &dir,
        &["pod", "add", "w", "--node", "node-1", "--label", "app=web"],
    );
    assert!(ok, "{w}");
    let (ok, svc) = lab(
        &dir,
        &[
            "service",
            "add",
            "web",
            "--selector",
            "app=web",
            "--port",
            "80:8080",
        ],
    );
    assert!(ok && svc.contains("cluster IP 10.96.0.10"), "{svc}");
    let code = "import socket; print(socket.create_connection(('10.96.0.10', 80), timeout=3).recv(64).decode().strip())";
    let mut via = String::new();
    for _ in 0..50 {
        let (ok, g) = lab(&dir, &["exec", "a", "--", "python3", "-c", code]);
        if ok {
            via = g;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(via.split_whitespace().next(), Some("w"), "{via}");
    let (ok, bad) = lab(&dir, &["service", "add", "web"]);
    assert!(!ok && bad.contains("service web exists"), "{bad}");

    let (ok, status) = lab(&dir, &["status"]);
    assert!(ok, "{status}");
    for want in ["NODES", "node-0", "Established", "PODS", &b_ip] {
        assert!(status.contains(want), "{want} in:\n{status}");
    }

    // The supervisor dies without tearing down: down sweeps what its ledger lists.
    let ledger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ledger.json")).unwrap()).unwrap();
    let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out) = lab(&dir, &["down"]);
    assert!(ok && out.contains("ledger"), "{out}");
    let workdir = ledger["dir"].as_str().unwrap();
    assert!(!Path::new(workdir).exists(), "{workdir} left behind");
    let left = namespaces();
    for ns in ledger["namespaces"].as_array().unwrap() {
        assert!(
            !left.contains(ns.as_str().unwrap()),
            "{ns} left behind: {left}"
        );
    }
    for p in ledger["pids"].as_array().unwrap() {
        let p = p.as_u64().unwrap();
        // Gone, or a zombie waiting for its (dead) parent's reaper.
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "process {p} still runs: {state}"
        );
    }
}

/// Who reached whom: (from, to).
type Matrix = std::collections::BTreeSet<(String, String)>;

/// NetworkPolicy from the command line, as the Kubernetes docs would have an operator try
/// it: namespaces and pods with labels, `apply -f` of a policy, the truth table from `probe`
/// (also as JSON), a pod relabelled out of the allow, `delete -f`.
#[test]
fn network_policy_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let _down = Down(dir.clone());
    let (ok, out) = lab(&dir, &["up", "--nodes", "2"]);
    assert!(ok, "{out}");
    let (ok, out) = lab(&dir, &["namespace", "add", "x", "--label", "team=a"]);
    assert!(ok, "{out}");
    for (name, ns, node) in [
        ("a", "x", "node-0"),
        ("c", "x", "node-1"),
        ("b", "default", "node-1"),
    ] {
        let label = format!("pod={name}");
        let (ok, out) = lab(
            &dir,
            &[
                "pod",
                "add",
                name,
                "--namespace",
                ns,
                "--node",
                node,
                "--label",
                &label,
            ],
        );
        assert!(ok, "{out}");
    }
    // Row `from` reaches column `to`?
    let reached = |dir: &Path| -> Matrix {
        let (ok, out) = lab(dir, &["probe", "--json"]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("probe --json");
        serde_json::from_value(v["reached"].clone()).expect("pairs")
    };
    let wait = |dir: &Path, want: &dyn Fn(&Matrix) -> bool| {
        for _ in 0..30 {
            let m = reached(dir);
            if want(&m) {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        panic!(
            "the matrix never became what was wanted: {:?}",
            reached(dir)
        );
    };
    let pair = |f: &str, t: &str| (f.to_string(), t.to_string());
    let m = wait(&dir, &|m| m.len() == 9);
    assert!(m.contains(&pair("b", "x/a")));

    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: a-from-c, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {pod: c}}}]\n",
    )
    .unwrap();
    let (ok, out) = lab(&dir, &["apply", "-f", policy.to_str().unwrap()]);
    assert!(
        ok && out.contains("networkpolicy/x/a-from-c applied"),
        "{out}"
    );
    let m = wait(&dir, &|m| !m.contains(&pair("b", "x/a")));
    assert!(m.contains(&pair("x/c", "x/a")), "{m:?}");
    assert!(
        m.contains(&pair("x/a", "b")),
        "egress is not isolated: {m:?}"
    );
    // The table as a person reads it.
    let (ok, table) = lab(&dir, &["probe"]);
    assert!(ok, "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["b", ".", "X", "."],
        "columns b, x/a, x/c:\n{table}"
    );

    let (ok, out) = lab(&dir, &["pod", "label", "x/c", "pod-"]);
    assert!(ok, "{out}");
    wait(&dir, &|m| !m.contains(&pair("x/c", "x/a")));
    let (ok, out) = lab(&dir, &["pod", "label", "x/c", "nonsense"]);
    assert!(!ok && out.contains("key=value"), "{out}");

    let (ok, out) = lab(&dir, &["delete", "-f", policy.to_str().unwrap()]);
    assert!(ok && out.contains("deleted"), "{out}");
    wait(&dir, &|m| m.len() == 9);

    // A Service from YAML: its ClusterIP reaches b's server; a named targetPort is refused
    // with the field; delete -f removes it.
    let svc = tmp.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
         spec:\n  selector: {pod: b}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    let (ok, out) = lab(&dir, &["apply", "-f", svc.to_str().unwrap()]);
    assert!(ok && out.contains("service/s applied (clusterIP "), "{out}");
    let ip = out
        .split("clusterIP ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let connect = format!(
        "import socket; c=socket.create_connection(('{ip}',80),timeout=5); print(c.makefile().readline().strip())"
    );
    let mut greeted = String::new();
    for _ in 0..30 {
        let (ok, out) = lab(&dir, &["exec", "x/a", "--", "python3", "-c", &connect]);
        if ok && out.starts_with("b ") {
            greeted = out;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(greeted.starts_with("b "), "the ClusterIP never reached b");
    let (ok, out) = lab(&dir, &["apply", "-f", svc.to_str().unwrap()]);
    assert!(!ok && out.contains("exists"), "{out}");
    let (ok, out) = lab(&dir, &["delete", "-f", svc.to_str().unwrap()]);
    assert!(ok && out.contains("service/s deleted"), "{out}");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: t}\n\
         spec:\n  ports: [{port: 80, targetPort: http}]\n",
    )
    .unwrap();
    let (ok, out) = lab(&dir, &["apply", "-f", svc.to_str().unwrap()]);
    assert!(!ok && out.contains("spec.ports[0].targetPort"), "{out}");
}

/// The rows of one table of `status` (after its title and header).
fn rows(status: &str, title: &str) -> Vec<String> {
    status
        .lines()
        .skip_while(|l| *l != title)
        .skip(2)
        .take_while(|l| {
            !l.trim().is_empty() && l.chars().next().is_some_and(|c| !c.is_ascii_uppercase())
        })
        .map(str::to_string)
        .collect()
}

/// Whether this kernel has the netem qdisc: tried on a veth in a namespace of our own.
fn netem_here() -> bool {
    let ns = brindle_testsupport::Netns::new("brl-netem");
    ns.ok(&[
        "ip", "link", "add", "a0", "type", "veth", "peer", "name", "a1",
    ]);
    ns.run(&[
        "tc", "qdisc", "add", "dev", "a0", "root", "netem", "delay", "1ms",
    ])
    .status
    .success()
}

/// Until `pred` holds for `status` (30 s).
fn wait_status(dir: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut st = String::new();
    for _ in 0..150 {
        st = lab(dir, &["status"]).1;
        if pred(&st) {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{what}: not after 30 s:\n{st}");
}

/// Failure rehearsal from the command line: each command does what it says, and the lab
/// shows it (a stopped agent, sessions shut and back, delay and loss on a link, a link down),
/// in its status and in its graph (drawn with graphviz's dot).
#[test]
fn failures_rehearsed_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let _down = Down(dir.clone());
    let (ok, out) = lab(&dir, &["up", "--nodes", "2", "--tor"]);
    assert!(ok, "{out}");
    let node_row = |st: &str, n: &str| {
        rows(st, "NODES")
            .into_iter()
            .find(|r| r.starts_with(&format!("{n} ")))
            .unwrap_or_default()
    };
    // Every node has sessions, all Established (a node whose agent is starting has none).
    let all_up = |st: &str| {
        let s = rows(st, "SESSIONS");
        ["node-0 ", "node-1 "]
            .iter()
            .all(|n| s.iter().any(|r| r.starts_with(n)))
            && s.iter().all(|r| r.contains("Established"))
    };

    // A graceful stop, a start, a crash, a restart.
    let (ok, said) = lab(&dir, &["node", "stop", "node-1"]);
    assert!(
        ok && said.contains("SIGTERM") && said.contains("watch:"),
        "{said}"
    );
    let (_, st) = lab(&dir, &["status"]);
    assert!(node_row(&st, "node-1").contains("stopped"), "{st}");
    let (ok, said) = lab(&dir, &["node", "start", "node-1"]);
    assert!(ok && said.contains("agent started"), "{said}");
    wait_status(&dir, "node-1 back", |st| {
        node_row(st, "node-1").contains("running") && all_up(st)
    });
    let (ok, said) = lab(&dir, &["node", "kill", "node-1"]);
    assert!(ok && said.contains("SIGKILL"), "{said}");
    assert!(node_row(&lab(&dir, &["status"]).1, "node-1").contains("stopped"));
    let (ok, said) = lab(&dir, &["node", "restart", "node-1"]);
    assert!(ok, "{said}");
    wait_status(&dir, "node-1 restarted", all_up);
    let (ok, said) = lab(&dir, &["node", "stop", "node-9"]);
    assert!(!ok && said.contains("no node \"node-9\""), "{said}");

    // The fabric drawn: the rack with its router and nodes, each session an edge.
    let (ok, dot) = lab(&dir, &["graph"]);
    assert!(ok, "{dot}");
    for want in [
        "subgraph cluster_rack0",
        "\"tor-0\" [shape=diamond",
        "\"node-0\" -- \"tor-0\" [color=darkgreen",
        "\"node-1\" -- \"tor-0\" [color=darkgreen",
    ] {
        assert!(dot.contains(want), "{want}:\n{dot}");
    }
    let svg = tmp.path().join("fabric.svg");
    let (ok, said) = lab(&dir, &["graph", "--out", svg.to_str().unwrap()]);
    assert!(ok, "{said} (is graphviz installed?)");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    // (Graphviz writes a hyphen in SVG text as &#45;.)
    let drawn = drawn.replace("&#45;", "-");
    assert!(
        drawn.contains("<svg") && drawn.contains(">node-1") && drawn.contains(">tor-0"),
        "{drawn}"
    );

    // The rack's router out of service: the nodes' sessions with it end, then come back.
    let (ok, said) = lab(&dir, &["tor", "stop", "0"]);
    assert!(ok && said.contains("shut"), "{said}");
    // (The router of rack 0 is 198.18.0.1, the nodes' gateway.)
    wait_status(&dir, "sessions with the router shut", |st| {
        let with_tor: Vec<String> = rows(st, "SESSIONS")
            .into_iter()
            .filter(|r| r.split_whitespace().nth(1) == Some("198.18.0.1"))
            .collect();
        with_tor.len() == 2 && with_tor.iter().all(|r| !r.contains("Established"))
    });
    let (_, dot) = lab(&dir, &["graph"]);
    assert!(dot.contains("\"node-0\" -- \"tor-0\" [color=red"), "{dot}");
    let (ok, said) = lab(&dir, &["tor", "start", "0"]);
    assert!(ok, "{said}");
    wait_status(&dir, "sessions back", all_up);

    // Delay and loss on node-0's uplink, then none; node-1's link down and up.
    let st = lab(&dir, &["status"]).1;
    let ns_of = |n: &str| {
        st.lines()
            .skip_while(|l| *l != "ACCESS")
            .find(|l| l.starts_with(&format!("{n} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no namespace for {n}:\n{st}"))
            .to_string()
    };
    let in_ns = |n: &str, cmd: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns_of(n)])
            .args(cmd)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (ok, said) = lab(
        &dir,
        &["netem", "node-0", "--delay", "20ms", "--loss", "5%"],
    );
    if netem_here() {
        assert!(ok, "{said}");
        let q = in_ns("node-0", &["tc", "qdisc", "show", "dev", "eth0"]);
        assert!(
            q.contains("netem") && q.contains("delay 20ms") && q.contains("loss 5%"),
            "{q}"
        );
    } else {
        // This machine's kernel (the CI's) has no sch_netem: said plainly, nothing changed.
        assert!(
            !ok && said.contains("no netem qdisc (module sch_netem)"),
            "{said}"
        );
    }
    let (ok, said) = lab(&dir, &["netem", "node-0", "--clear"]);
    assert!(ok, "{said}");
    assert!(!in_ns("node-0", &["tc", "qdisc", "show", "dev", "eth0"]).contains("netem"));
    let (ok, said) = lab(&dir, &["netem", "node-0"]);
    assert!(!ok && said.contains("--clear"), "{said}");
    let (ok, said) = lab(&dir, &["link", "node-1", "down"]);
    assert!(ok && said.contains("eth0 down"), "{said}");
    assert!(in_ns("node-1", &["ip", "link", "show", "eth0"]).contains("state DOWN"));
    let (ok, said) = lab(&dir, &["link", "node-1", "up"]);
    assert!(ok, "{said}");
    assert!(!in_ns("node-1", &["ip", "link", "show", "eth0"]).contains("state DOWN"));

    // etcd away and back: the agents keep their sessions meanwhile.
    let (ok, said) = lab(&dir, &["etcd", "stop"]);
    assert!(ok && said.contains("keeps forwarding"), "{said}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let st = lab(&dir, &["status"]).1;
    assert!(all_up(&st), "sessions lost with etcd away:\n{st}");
    let (ok, said) = lab(&dir, &["etcd", "start"]);
    assert!(ok, "{said}");
    wait_status(&dir, "sessions after etcd", all_up);

    // A node joins (the router reconfigured for it) and leaves again.
    let (ok, said) = lab(&dir, &["node", "add", "--rack", "0"]);
    assert!(ok && said.contains("node-2: joined rack 0"), "{said}");
    wait_status(&dir, "node-2 peering", |st| {
        let with_it = rows(st, "SESSIONS")
            .iter()
            .any(|r| r.starts_with("node-2 "));
        node_row(st, "node-2").contains("running") && with_it && all_up(st)
    });
    let (ok, said) = lab(&dir, &["node", "add", "--rack", "7"]);
    assert!(!ok && said.contains("no rack 7"), "{said}");
    let (ok, said) = lab(&dir, &["node", "del", "node-2"]);
    assert!(ok && said.contains("record deleted"), "{said}");
    // (Not a search of the whole text: a namespace like brl-node-2171-3 would match.)
    let st = lab(&dir, &["status"]).1;
    let sessions = rows(&st, "SESSIONS");
    assert!(node_row(&st, "node-2").is_empty(), "{st}");
    assert!(!sessions.iter().any(|r| r.starts_with("node-2 ")), "{st}");
}
