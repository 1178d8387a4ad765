//! NetworkPolicy rendering and applying on one node, against the floor: `cargo bench -p
//! brindle-felix-lite --bench policy`.
//!
//! Two sizes: 100 policies × 1 rule over 60 pods all local (the lab's ADD benchmark), and
//! the 1,000 policies × 10 rules over 10,000 cluster pods (100 namespaces) with 100
//! local pods. For each: the pure work (compile the model, render chains and sets), a full
//! sync into an empty namespace, one policy changed, one pod relabelled (selector sets
//! only), on iptables-legacy and on native nftables; beside the floor: raw `ipset restore` +
//! `iptables-legacy-restore`, or `nft -f`, of the same full content in a fresh namespace.
//! Median of 3. Writes bench-results/policy.json.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::nft;
use brindle_felix_lite::policy::{LocalEndpoint, PolicyContext, Renderer, SetKind};
use brindle_felix_lite::proxy::rules::Ruleset;
use brindle_policy::compile::Program;
use brindle_policy::model::{
    Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule, Selector,
};
use brindle_policy::World;
use brindle_testsupport::bench::write_results;
use brindle_testsupport::Netns;
use serde_json::json;

struct Size {
    name: &'static str,
    policies: usize,
    rules: usize,
    pods: usize,
    namespaces: usize,
    local: usize,
}

fn sel(k: &str, v: String) -> Selector {
    let mut s = Selector::default();
    s.labels.insert(k.into(), v);
    s
}

fn pod(i: usize, size: &Size, app: usize) -> Pod {
    let node = if i < size.local { "me" } else { "other" };
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32);
    Pod::running(
        &format!("ns{}", i % size.namespaces),
        &format!("p{i}"),
        node,
        ip.into(),
    )
    .label("app", &format!("app{app}"))
    .port("http", Protocol::Tcp, 8080)
}

/// Policy i selects `app(i mod 10)` in its namespace; rule j admits `app((i+j) mod 10)`
/// (every third rule from any namespace labelled `team`), on a numbered and a named port.
fn world(size: &Size) -> (World, Vec<Pod>) {
    let mut w = World::default();
    for n in 0..size.namespaces {
        let name = format!("ns{n}");
        let team = format!("t{}", n % 5);
        w.namespaces
            .insert(name.clone(), Namespace::new(&name, &[("team", &team)]));
    }
    for i in 0..size.policies {
        let rules = (0..size.rules)
            .map(|j| Rule {
                peers: vec![Peer::Pods {
                    namespaces: if j % 3 == 2 {
                        Namespaces::Matching(sel("team", format!("t{}", j % 5)))
                    } else {
                        Namespaces::Own
                    },
                    pods: sel("app", format!("app{}", (i + j) % 10)),
                }],
                ports: vec![
                    Port::Range {
                        protocol: Protocol::Tcp,
                        from: 80 + j as u16,
                        to: 80 + j as u16,
                    },
                    Port::Named {
                        protocol: Protocol::Tcp,
                        name: "http".into(),
                    },
                ],
            })
            .collect();
        w.policies.push(Policy {
            namespace: format!("ns{}", i % size.namespaces),
            name: format!("pol{i}"),
            pods: sel("app", format!("app{}", i % 10)),
            ingress: Some(rules),
            egress: None,
        });
    }
    let pods = (0..size.pods).map(|i| pod(i, size, i % 10)).collect();
    (w, pods)
}

fn local(pods: &[Pod]) -> Vec<LocalEndpoint> {
    pods.iter()
        .filter(|p| &*p.node == "me")
        .enumerate()
        .map(|(i, p)| LocalEndpoint {
            veth: format!("brl{i:011}"),
            pod: Some(format!("{}/{}", p.namespace, p.name)),
        })
        .collect()
}

fn writer(ns: &Netns) -> Writer {
    let mut w = Writer::new(
        Backend::Legacy,
        Runner {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
            ..Default::default()
        },
    );
    w.keep_input = true; // replayed through raw iptables-restore for the floor
    w
}

fn run(ns: &Netns, argv: &[&str], stdin: &str) -> Duration {
    let t = Instant::now();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    c.stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = c.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[derive(Default, Clone)]
struct Sample {
    compile: f64,
    render: f64,
    full: f64,
    policy_changed: f64,
    pod_relabelled: f64,
    floor: f64,
    rules: usize,
    sets: usize,
    members: usize,
}

/// The one policy change measured on both dataplanes: a port of its first rule.
fn change_a_policy(w: &mut World) {
    if let Some(Port::Range { from, to, .. }) = w.policies[0]
        .ingress
        .as_mut()
        .and_then(|r| r[0].ports.first_mut())
    {
        *from += 1000;
        *to += 1000;
    }
}

/// The one pod change measured on both: a remote pod relabelled into another app (set
/// members move, no chain changes).
fn relabel_a_pod(pods: &mut [Pod]) {
    let last = pods.len() - 1;
    pods[last].labels.insert("app", "app-moved");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn one(size: &Size) -> Sample {
    let ctx = PolicyContext::default();
    let (mut w, mut pods) = world(size);
    let mut s = Sample::default();
    let t = Instant::now();
    let prog = Program::compile(&w, &pods);
    s.compile = ms(t.elapsed());
    let eps = local(&pods);
    let t = Instant::now();
    let out = Renderer::default().render(&prog, &eps, &ctx);
    s.render = ms(t.elapsed());
    s.rules = out.filter.rule_count();
    s.sets = out.sets.len();
    s.members = out.sets.iter().map(|x| x.members.len()).sum();

    // Full sync, everything from the model to the kernel.
    let ours = Netns::new("brl-bpo");
    let mut wr = writer(&ours);
    // As the agent does: one renderer that keeps the policies' chains between syncs.
    let mut renderer = Renderer::default();
    let mut sync = |wr: &mut Writer, w: &World, pods: &[Pod]| {
        let t = Instant::now();
        let prog = Program::compile(w, pods);
        let out = renderer.render(&prog, &eps, &ctx);
        let rs = Ruleset {
            filter: out.filter.clone(),
            ..Default::default()
        };
        wr.sync_policy_sets(&out.sets).expect("sets");
        wr.sync(&rs).expect("rules");
        wr.destroy_stale_policy_sets(&out.sets).expect("stale sets");
        ms(t.elapsed())
    };
    s.full = sync(&mut wr, &w, &pods);
    let full_input = wr.last_input.clone();
    change_a_policy(&mut w);
    s.policy_changed = sync(&mut wr, &w, &pods);
    relabel_a_pod(&mut pods);
    s.pod_relabelled = sync(&mut wr, &w, &pods);

    // The floor: the same sets and rules by the raw tools into a fresh namespace.
    let floor = Netns::new("brl-bpf");
    let mut sets = String::new();
    for x in &out.sets {
        let kind = match x.kind {
            SetKind::Net => "hash:net",
            SetKind::IpPort => "hash:ip,port",
        };
        sets.push_str(&format!("create {} {kind} family inet\n", x.name));
        for m in x.members.iter() {
            sets.push_str(&format!("add {} {m}\n", x.name));
        }
    }
    s.floor = ms(run(&floor, &["ipset", "restore"], &sets)
        + run(
            &floor,
            &["iptables-legacy-restore", "-w", "5", "--noflush"],
            &full_input,
        ));
    for n in [&ours, &floor] {
        let _ = Command::new("ip")
            .args(["netns", "exec", n.name(), "iptables-legacy", "-F"])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "exec", n.name(), "iptables-legacy", "-X"])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "exec", n.name(), "ipset", "destroy"])
            .status();
    }
    s
}

/// The same steps in native nftables.
fn one_nft(size: &Size) -> Sample {
    let ctx = PolicyContext::default();
    let (mut w, mut pods) = world(size);
    let mut s = Sample::default();
    let t = Instant::now();
    let prog = Program::compile(&w, &pods);
    s.compile = ms(t.elapsed());
    let eps = local(&pods);
    let t = Instant::now();
    let out = nft::policy::Renderer::default().render(&prog, &eps, &ctx);
    s.render = ms(t.elapsed());
    s.rules = out.chains.iter().map(|c| c.1.len()).sum();
    s.sets = out.sets.len();
    s.members = out.sets.iter().map(|x| x.2.len()).sum();
    let ours = Netns::new("brl-bpn");
    let mut wr = nft::writer::Writer::new(Runner {
        prefix: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            ours.name().into(),
        ],
        ..Default::default()
    });
    let mut renderer = nft::policy::Renderer::default();
    let mut sync = |wr: &mut nft::writer::Writer, w: &World, pods: &[Pod]| {
        let t = Instant::now();
        let prog = Program::compile(w, pods);
        let out = renderer.render(&prog, &eps, &ctx);
        let mut table = nft::policy::base_table();
        nft::policy::merge(&mut table, &out);
        wr.sync(&table).expect("nft sync");
        ms(t.elapsed())
    };
    s.full = sync(&mut wr, &w, &pods);
    let full_input = wr.last_input.clone();
    change_a_policy(&mut w);
    s.policy_changed = sync(&mut wr, &w, &pods);
    relabel_a_pod(&mut pods);
    s.pod_relabelled = sync(&mut wr, &w, &pods);
    let floor = Netns::new("brl-bpg");
    s.floor = ms(run(&floor, &["nft", "-f", "-"], &full_input));
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let sizes = [
        Size {
            name: "100 x 1 / 60 pods, all local",
            policies: 100,
            rules: 1,
            pods: 60,
            namespaces: 1,
            local: 60,
        },
        Size {
            name: "1,000 x 10 / 10,000 pods, 100 local",
            policies: 1000,
            rules: 10,
            pods: 10_000,
            namespaces: 100,
            local: 100,
        },
    ];
    println!(
        "\n{:<48} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>8}",
        "size (ms)",
        "compile",
        "render",
        "full",
        "1 policy",
        "1 relabel",
        "floor",
        "rules",
        "sets",
        "members"
    );
    let mut results = BTreeMap::new();
    for (plane, size) in sizes
        .iter()
        .flat_map(|s| [("iptables-legacy", s), ("nftables", s)])
    {
        let runs: Vec<Sample> = (0..3)
            .map(|_| match plane {
                "nftables" => one_nft(size),
                _ => one(size),
            })
            .collect();
        let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
        let (c, r, full, pc, pr, fl) = (
            m(|s| s.compile),
            m(|s| s.render),
            m(|s| s.full),
            m(|s| s.policy_changed),
            m(|s| s.pod_relabelled),
            m(|s| s.floor),
        );
        let s0 = &runs[0];
        let name = format!("{}, {plane}", size.name);
        println!(
            "{name:<48} {c:>8.1} {r:>8.1} {full:>9.1} {pc:>9.1} {pr:>9.1} {fl:>9.1} {:>7} {:>6} {:>8}",
            s0.rules, s0.sets, s0.members
        );
        results.insert(
            name,
            json!({"compile_ms": c, "render_ms": r, "full_ms": full, "policy_changed_ms": pc,
                   "pod_relabelled_ms": pr, "floor_ms": fl, "rules": s0.rules, "sets": s0.sets,
                   "members": s0.members}),
        );
    }
    println!("\n(full, 1 policy, 1 relabel: compile + render + diff + writes; floor: raw ipset restore + iptables-legacy-restore, or nft -f, of the full content)");
    write_results("policy", &json!(results));
}
