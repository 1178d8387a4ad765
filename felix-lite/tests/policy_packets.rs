//! The rendered NetworkPolicy rules with real TCP through them: a node namespace routing
//! three pod namespaces the way brindle-cni wires them (/32 on eth0, default via
//! 169.254.1.1, proxy ARP on the host side), the policy compiled, rendered and written by
//! the Writer, connections tried both ways.

use std::time::Duration;

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::policy::{render, LocalEndpoint, PolicyContext};
use brindle_felix_lite::proxy::rules::{Ruleset, TableRules};
use brindle_policy::compile::Program;
use brindle_policy::model::{
    Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule, Selector,
};
use brindle_policy::World;
use brindle_testsupport::{ChildGuard, Netns};

const SERVE: &str = r#"
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello\n"); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

const CONNECT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    print(c.recv(16).decode().strip())
except Exception as e:
    print("no")
"#;

fn wire(node: &Netns, pod: &Netns, veth: &str, ip: &str) {
    node.veth(veth, pod, "eth0");
    node.ok(&["ip", "link", "set", veth, "up"]);
    node.ok(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
    ]);
    node.ok(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv4.neigh.{veth}.proxy_delay=0"),
    ]);
    node.ok(&["ip", "route", "add", &format!("{ip}/32"), "dev", veth]);
    pod.ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    pod.ok(&["ip", "link", "set", "eth0", "up"]);
    pod.ok(&["ip", "link", "set", "lo", "up"]);
    pod.ok(&[
        "ip",
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    pod.ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
}

fn pod(name: &str, ip: &str) -> Pod {
    Pod::running("x", name, "n1", ip.parse().unwrap())
        .label("pod", name)
        .port("http", Protocol::Tcp, 8080)
}

#[test]
fn only_what_the_policy_allows_reaches_an_isolated_pod() {
    let node = Netns::new("brl-pn");
    node.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    // proxy ARP answers only with a route to 169.254.1.1 out of another interface.
    let fabric = Netns::new("brl-pf");
    node.veth("up0", &fabric, "fab0");
    node.ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "up0"]);
    node.ok(&["ip", "link", "set", "up0", "up"]);
    fabric.ok(&["ip", "addr", "add", "198.18.0.254/24", "dev", "fab0"]);
    fabric.ok(&["ip", "link", "set", "fab0", "up"]);
    node.ok(&["ip", "route", "add", "default", "via", "198.18.0.254"]);
    let pods: Vec<(Netns, &str, &str, &str)> = vec![
        (Netns::new("brl-pp"), "a", "brlaaaaaaaaaaa", "10.91.0.1"),
        (Netns::new("brl-pp"), "b", "brlbbbbbbbbbbb", "10.91.0.2"),
        (Netns::new("brl-pp"), "c", "brlccccccccccc", "10.91.0.3"),
    ];
    for (ns, _, veth, ip) in &pods {
        wire(&node, ns, veth, ip);
    }
    let mut servers: Vec<ChildGuard> = vec![];
    for (ns, ..) in &pods {
        let child = ns
            .command(&["python3", "-c", SERVE, "8080", "9090"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server");
        let mut g = ChildGuard(child);
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(g.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready");
        servers.push(g);
    }
    let reach = |from: usize, to: usize, port: u16| -> bool {
        let out = pods[from]
            .0
            .ok(&["python3", "-c", CONNECT, pods[to].3, &port.to_string()]);
        out.trim() == "hello"
    };
    // Before any policy: everything reaches everything (the wiring works).
    assert!(reach(1, 0, 8080) && reach(2, 0, 9090) && reach(0, 2, 8080));

    // x/web: pod a takes ingress only from pod b, on its named port http (8080).
    let mut world = World::default();
    world
        .namespaces
        .insert("x".into(), Namespace::new("x", &[]));
    let sel = |p: &str| {
        let mut s = Selector::default();
        s.labels.insert("pod".into(), p.into());
        s
    };
    world.policies.push(Policy {
        namespace: "x".into(),
        name: "web".into(),
        pods: sel("a"),
        ingress: Some(vec![Rule {
            peers: vec![Peer::Pods {
                namespaces: Namespaces::Own,
                pods: sel("b"),
            }],
            ports: vec![Port::Named {
                protocol: Protocol::Tcp,
                name: "http".into(),
            }],
        }]),
        egress: None,
    });
    let model: Vec<Pod> = pods.iter().map(|(_, n, _, ip)| pod(n, ip)).collect();
    let prog = Program::compile(&world, &model);
    let local: Vec<LocalEndpoint> = pods
        .iter()
        .map(|(_, n, veth, _)| LocalEndpoint {
            veth: veth.to_string(),
            pod: Some(format!("x/{n}")),
        })
        .collect();
    let rendered = render(&prog, &local, &PolicyContext::default());
    let mut w = Writer::new(
        Backend::Legacy,
        Runner {
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                node.name().into(),
            ],
            ..Default::default()
        },
    );
    w.sync_policy_sets(&rendered.sets).expect("sets");
    w.sync(&Ruleset {
        raw: TableRules::default(),
        nat: TableRules::default(),
        filter: rendered.filter.clone(),
    })
    .expect("rules");

    assert!(reach(1, 0, 8080), "b → a:8080 is what the policy allows");
    assert!(!reach(1, 0, 9090), "b → a:9090: not the named port");
    assert!(!reach(2, 0, 8080), "c → a: not b");
    assert!(reach(2, 1, 9090), "b is not isolated");
    assert!(reach(0, 2, 8080), "a's egress is not isolated");

    // The agent agrees with the reference for every pair tried.
    for (from, to, port) in [
        (1, 0, 8080),
        (1, 0, 9090),
        (2, 0, 8080),
        (2, 1, 9090),
        (0, 2, 8080),
    ] {
        let f = &model[from];
        let t = &model[to];
        let want = world
            .verdict(&brindle_policy::Conn {
                from: brindle_policy::End {
                    ip: f.ips[0],
                    pod: Some(f),
                },
                to: brindle_policy::End {
                    ip: t.ips[0],
                    pod: Some(t),
                },
                protocol: Protocol::Tcp,
                port,
                from_own_node: false,
            })
            .allowed();
        assert_eq!(
            reach(from, to, port),
            want,
            "{} → {}:{port}",
            f.name,
            t.name
        );
    }

    // A pod interface with no chains yet passes nothing (the first-instant rule).
    let late = Netns::new("brl-pp");
    wire(&node, &late, "brldddddddddddd", "10.91.0.4");
    let out = late.ok(&["python3", "-c", CONNECT, "10.91.0.2", "9090"]);
    assert_eq!(
        out.trim(),
        "no",
        "a pod the rules do not know yet reaches nobody"
    );
    drop(servers);
    std::thread::sleep(Duration::from_millis(10));
}
