//! The compiled form (what the dataplane will hold: sets, per-policy rule lists, per-pod
//! policy lists) against the reference evaluation, on random clusters: every pair of pods
//! and an outside address, both ways, each protocol, several ports, must get the same
//! verdict.

use std::net::IpAddr;

use brindle_policy::compile::Program;
use brindle_policy::model::{
    Expr, NamedPort, Namespace, Namespaces, Peer, Pod, Policy, Port, Protocol, Rule, Selector,
};
use brindle_policy::{Conn, End, World};
use proptest::prelude::*;

/// Builds values from a stream of random bytes (proptest shrinks the stream).
struct Gen<'a>(std::slice::Iter<'a, u8>);

impl Gen<'_> {
    fn n(&mut self, below: u8) -> u8 {
        self.0.next().copied().unwrap_or(0) % below.max(1)
    }
    fn flip(&mut self) -> bool {
        self.n(2) == 1
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[usize::from(self.n(from.len() as u8))].clone()
    }

    fn selector(&mut self) -> Selector {
        let mut s = Selector::default();
        match self.n(6) {
            0 | 1 => {} // everything
            2 => {
                s.labels
                    .insert("app".into(), self.pick(&["web", "db"]).into());
            }
            3 => s
                .exprs
                .push(Expr::In("tier".into(), vec![self.pick(&["1", "2"]).into()])),
            4 => s.exprs.push(Expr::NotIn("app".into(), vec!["web".into()])),
            _ => s.exprs.push(if self.flip() {
                Expr::Exists("tier".into())
            } else {
                Expr::DoesNotExist("tier".into())
            }),
        }
        s
    }

    fn ns_selector(&mut self) -> Selector {
        let mut s = Selector::default();
        match self.n(4) {
            0 => {}
            1 => {
                s.labels
                    .insert("team".into(), self.pick(&["a", "b"]).into());
            }
            2 => s.exprs.push(Expr::In(
                brindle_policy::model::NAMESPACE_NAME_LABEL.into(),
                vec![self.pick(&["x", "y", "z"]).into()],
            )),
            _ => s.exprs.push(Expr::NotIn("team".into(), vec!["a".into()])),
        }
        s
    }

    fn peer(&mut self) -> Peer {
        match self.n(4) {
            0 => Peer::Pods {
                namespaces: Namespaces::Own,
                pods: self.selector(),
            },
            1 => Peer::Pods {
                namespaces: Namespaces::Matching(self.ns_selector()),
                pods: self.selector(),
            },
            2 => Peer::Pods {
                namespaces: Namespaces::Matching(self.ns_selector()),
                pods: Selector::default(),
            },
            _ => {
                let cidr = self.pick(&["10.0.0.0/29", "10.0.0.4/30", "0.0.0.0/0", "192.0.2.0/24"]);
                let except = match self.n(3) {
                    0 => vec![self.pick(&["10.0.0.2/32", "10.0.0.4/31"]).parse().unwrap()],
                    _ => vec![],
                };
                Peer::Block {
                    cidr: cidr.parse().unwrap(),
                    except,
                }
            }
        }
    }

    fn port(&mut self) -> Port {
        let protocol = self.pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
        match self.n(4) {
            0 => Port::Any(protocol),
            1 => {
                let from = self.pick(&[53u16, 80, 81]);
                Port::Range {
                    protocol,
                    from,
                    to: from + u16::from(self.n(3)),
                }
            }
            _ => Port::Named {
                protocol,
                name: self.pick(&["http", "dns", "metrics"]).into(),
            },
        }
    }

    fn rules(&mut self) -> Option<Vec<Rule>> {
        if self.n(3) == 0 {
            return None;
        }
        Some(
            (0..self.n(3))
                .map(|_| Rule {
                    peers: (0..self.n(3)).map(|_| self.peer()).collect(),
                    ports: (0..self.n(3)).map(|_| self.port()).collect(),
                })
                .collect(),
        )
    }
}

fn cluster(bytes: &[u8]) -> (World, Vec<Pod>) {
    let mut g = Gen(bytes.iter());
    let mut world = World::default();
    for ns in ["x", "y", "z"] {
        let team = g.pick(&["a", "b"]);
        world
            .namespaces
            .insert(ns.into(), Namespace::new(ns, &[("team", team)]));
    }
    let mut pods = vec![];
    for i in 1..=6u8 {
        let mut labels = std::collections::BTreeMap::new();
        if g.flip() {
            labels.insert("app".to_string(), g.pick(&["web", "db"]).to_string());
        }
        if g.flip() {
            labels.insert("tier".to_string(), g.pick(&["1", "2"]).to_string());
        }
        let mut ports = vec![];
        if g.flip() {
            ports.push(NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: g.pick(&[80, 81]),
            });
        }
        if g.flip() {
            ports.push(NamedPort {
                name: "dns".into(),
                protocol: g.pick(&[Protocol::Udp, Protocol::Tcp]),
                port: 53,
            });
        }
        pods.push(Pod {
            namespace: g.pick(&["x", "y", "z"]).into(),
            name: format!("p{i}").into(),
            labels: labels.into(),
            ips: Box::new([IpAddr::from([10, 0, 0, i])]),
            ports: brindle_policy::labels::share_ports(&ports),
            host_network: g.n(8) == 0,
            finished: false,
            node: "n1".into(),
        });
    }
    for i in 0..g.n(5) {
        let ingress = g.rules();
        let mut egress = g.rules();
        if ingress.is_none() && egress.is_none() {
            egress = Some(vec![]);
        }
        world.policies.push(Policy {
            namespace: g.pick(&["x", "y", "z"]).into(),
            name: format!("np{i}"),
            pods: g.selector(),
            ingress,
            egress,
        });
    }
    (world, pods)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn the_compiled_form_decides_as_the_reference(bytes in proptest::collection::vec(any::<u8>(), 200..400)) {
        let (world, pods) = cluster(&bytes);
        let prog = Program::compile(&world, &pods);
        let outside: IpAddr = "192.0.2.7".parse().unwrap();
        let mut ends: Vec<End> = pods.iter().map(|p| End { ip: p.ips[0], pod: Some(p) }).collect();
        ends.push(End { ip: outside, pod: None });
        for from in &ends {
            for to in &ends {
                if from.ip == to.ip {
                    continue;
                }
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [53u16, 80, 81, 82] {
                        for own_node in [false, true] {
                            let c = Conn { from: *from, to: *to, protocol, port, from_own_node: own_node && from.pod.is_none() };
                            let want = world.verdict(&c);
                            let got = prog.allows(from.ip, to.ip, protocol, port, c.from_own_node);
                            prop_assert_eq!(
                                got, want.allowed(),
                                "{:?} -> {:?} {:?}/{} own_node={}: reference {:?}\npolicies {:#?}",
                                from.pod.map(|p| &p.name), to.pod.map(|p| &p.name), protocol, port,
                                c.from_own_node, want, world.policies
                            );
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// What a node compiles for its own pods: every set whole, and for exactly its pods the
    /// same isolation as the whole cluster's compile gives them.
    #[test]
    fn compiling_for_some_pods_keeps_every_set_and_their_isolation(bytes in proptest::collection::vec(any::<u8>(), 200..400)) {
        let (world, pods) = cluster(&bytes);
        let all = Program::compile(&world, &pods);
        let mine: std::collections::BTreeSet<&str> =
            pods.iter().step_by(2).map(|p| &*p.name).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let some = Program::compile_for(&world, &refs, |p| mine.contains(&*p.name));
        prop_assert_eq!(&some.selector_sets, &all.selector_sets);
        prop_assert_eq!(&some.named_sets, &all.named_sets);
        prop_assert_eq!(&some.ingress, &all.ingress);
        prop_assert_eq!(&some.egress, &all.egress);
        for p in &pods {
            let key = format!("{}/{}", p.namespace, p.name);
            let want = mine.contains(&*p.name).then(|| all.by_pod.get(&key)).flatten();
            prop_assert_eq!(some.by_pod.get(&key), want, "{}", key);
        }
    }
}
