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
