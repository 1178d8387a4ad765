//! `brindle-lab graph`: the fabric as Graphviz DOT — nodes grouped by rack with their
//! routers, reflectors marked, and each BGP session an edge coloured by its state and
//! labelled with the prefixes each side received.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::{rack_as, Lab};

/// One session as seen from one end.
struct Side {
    /// The end that reports it.
    from: String,
    established: bool,
    state: String,
    /// Prefixes received (a node's view; the routers' is not read).
    received: Option<u64>,
}

/// A DOT string: quoted, quotes escaped (`\n` in a label is Graphviz's line break).
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// A rack router's addresses, of the lab's families.
fn tor_addrs(spec: &crate::LabSpec, rack: usize) -> String {
    let v4 = spec.v4().then(|| crate::net::tor_ip(rack));
    let v6 = spec.v6().then(|| crate::net::tor_ip6(rack));
    lines(&crate::family_addrs(v4, v6))
}

/// Addresses one per line (Graphviz's `\\n`).
fn lines(addrs: &[IpAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join("\\n")
}

impl Lab {
    /// The lab's fabric in Graphviz DOT (`dot -Tsvg` draws it).
    pub fn graph(&self) -> String {
        let mut by_ip: BTreeMap<String, String> = BTreeMap::new();
        for n in &self.nodes {
            for a in crate::family_addrs(n.ip, n.ip6) {
                by_ip.insert(a.to_string(), n.name.clone());
            }
        }
        for t in &self.tors {
            let tor = format!("tor-{}", t.rack);
            by_ip.insert(crate::net::tor_ip(t.rack).to_string(), tor.clone());
            by_ip.insert(crate::net::tor_ip6(t.rack).to_string(), tor);
        }
        // Each session once, by its two ends (sorted) and its family (a dual-stack pair has
        // one of each); a side per end that reports it.
        let mut sessions: BTreeMap<(String, String, bool), Vec<Side>> = BTreeMap::new();
        for n in &self.nodes {
            for p in self.peers(&n.name) {
                let addr = p["addr"].as_str().unwrap_or_default().to_string();
                let v6 = addr.contains(':');
                let other = by_ip.get(&addr).cloned().unwrap_or(addr);
                let key = if n.name <= other {
                    (n.name.clone(), other, v6)
                } else {
                    (other, n.name.clone(), v6)
                };
                let state = p["state"].as_str().unwrap_or("?").to_string();
                sessions.entry(key).or_default().push(Side {
                    from: n.name.clone(),
                    established: state == "Established",
                    state,
                    received: p["received"].as_u64(),
                });
            }
        }
        // The routers' sessions with each other (eBGP between racks), as BIRD reports them.
        for t in &self.tors {
            let shown = t.bird.birdc(&["show", "protocols"]);
            for line in shown.lines() {
                let mut cols = line.split_whitespace();
                let Some(name) = cols.next() else { continue };
                let (v6, other) = match (name.strip_prefix("rack6_"), name.strip_prefix("rack_")) {
                    (Some(o), _) => (true, o),
                    (None, Some(o)) => (false, o),
                    _ => continue,
                };
                let (me, other) = (format!("tor-{}", t.rack), format!("tor-{other}"));
                let established = line.contains("Established");
                let key = if me <= other {
                    (me.clone(), other, v6)
                } else {
                    (other, me.clone(), v6)
                };
                sessions.entry(key).or_default().push(Side {
                    from: me,
                    established,
                    state: if established { "Established" } else { "down" }.into(),
                    received: None,
                });
            }
        }
        let mut out = String::from(
            "graph brindle {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n  \
             edge [fontname=\"Helvetica\", fontsize=9];\n",
        );
        let blocks = self.blocks();
        let racks: std::collections::BTreeSet<usize> = self.nodes.iter().map(|n| n.rack).collect();
        for rack in racks {
            let _ = writeln!(
                out,
                "  subgraph cluster_rack{rack} {{\n    label={};",
                q(&format!("rack {rack} (AS {})", rack_as(&self.spec, rack)))
            );
            if self.tors.iter().any(|t| t.rack == rack) {
                let _ = writeln!(
                    out,
                    "    {} [shape=diamond, label={}];",
                    q(&format!("tor-{rack}")),
                    q(&format!(
                        "tor-{rack}\\n{} (BIRD)",
                        tor_addrs(&self.spec, rack)
                    ))
                );
            }
            for (i, n) in self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.rack == rack)
            {
                let reflector = i < self.spec.reflectors;
                let agent = if n.agent_pid().is_some() {
                    ""
                } else {
                    "\\nagent stopped"
                };
                let b = blocks.get(&n.name).map_or(0, Vec::len);
                let _ = writeln!(
                    out,
                    "    {} [shape=box{}, label={}];",
                    q(&n.name),
                    if reflector { ", peripheries=2" } else { "" },
                    q(&format!(
                        "{}{}\\n{}\\nAS {}, {b} block(s){agent}",
                        n.name,
                        if reflector { " (reflector)" } else { "" },
                        lines(&crate::family_addrs(n.ip, n.ip6)),
                        n.asn
                    ))
                );
            }
            out.push_str("  }\n");
        }
        for ((a, b, v6), sides) in &sessions {
            let up = sides.iter().all(|s| s.established);
            // Each end's view, named: "node-0: Established, received 2"; IPv6 sessions dashed.
            let mut views: Vec<String> = sides
                .iter()
                .map(|s| match s.received {
                    Some(n) => format!("{}: {}, received {n}", s.from, s.state),
                    None => format!("{}: {}", s.from, s.state),
                })
                .collect();
            if *v6 {
                views.insert(0, "IPv6".into());
            }
            let _ = writeln!(
                out,
                "  {} -- {} [color={}, style={}, label={}];",
                q(a),
                q(b),
                if up { "darkgreen" } else { "red" },
                if *v6 { "dashed" } else { "solid" },
                q(&views.join("\\n"))
            );
        }
        out.push_str("}\n");
        out
    }
}
