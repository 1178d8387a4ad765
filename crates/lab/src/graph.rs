//! `brindle-lab graph`: the fabric as Graphviz DOT — nodes grouped by rack with their
//! routers, reflectors marked, and each BGP session an edge coloured by its state and
//! labelled with the prefixes each side received. Drawn by brindlectl's renderer
//! ([`brindle_ctl::graph`]), which `brindlectl node graph` draws a cluster with.

use std::collections::BTreeMap;

use brindle_ctl::graph::{addr_lines, Fabric, Member, Side};

use crate::{rack_as, Lab};

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
        let mut f = Fabric::default();
        for n in &self.nodes {
            for p in self.peers(&n.name) {
                let addr = p["addr"].as_str().unwrap_or_default().to_string();
                let v6 = addr.contains(':');
                let other = by_ip.get(&addr).cloned().unwrap_or(addr);
                let state = p["state"].as_str().unwrap_or("?").to_string();
                let side = Side {
                    from: n.name.clone(),
                    established: state == "Established",
                    state,
                    received: p["received"].as_u64(),
                };
                f.session(&n.name, &other, v6, side);
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
                let me = format!("tor-{}", t.rack);
                let established = line.contains("Established");
                let side = Side {
                    from: me.clone(),
                    established,
                    state: if established { "Established" } else { "down" }.into(),
                    received: None,
                };
                f.session(&me, &format!("tor-{other}"), v6, side);
            }
        }
        let blocks = self.blocks();
        let racks: std::collections::BTreeSet<usize> = self.nodes.iter().map(|n| n.rack).collect();
        for rack in racks {
            let id = format!("rack{rack}");
            let label = format!("rack {rack} (AS {})", rack_as(&self.spec, rack));
            if self.tors.iter().any(|t| t.rack == rack) {
                let v4 = self.spec.v4().then(|| crate::net::tor_ip(rack));
                let v6 = self.spec.v6().then(|| crate::net::tor_ip6(rack));
                let mut lines = vec![format!("tor-{rack}")];
                lines.extend(addr_lines(&crate::family_addrs(v4, v6)));
                if let Some(last) = lines.last_mut() {
                    last.push_str(" (BIRD)");
                }
                let tor = Member {
                    name: format!("tor-{rack}"),
                    router: true,
                    reflector: false,
                    lines,
                };
                f.member(&id, &label, tor);
            }
            for (i, n) in self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.rack == rack)
            {
                let mut lines = vec![n.name.clone()];
                lines.extend(addr_lines(&crate::family_addrs(n.ip, n.ip6)));
                let b = blocks.get(&n.name).map_or(0, Vec::len);
                lines.push(format!("AS {}, {b} block(s)", n.asn));
                if n.agent_pid().is_none() {
                    lines.push("agent stopped".into());
                }
                let node = Member {
                    name: n.name.clone(),
                    router: false,
                    reflector: i < self.spec.reflectors,
                    lines,
                };
                f.member(&id, &label, node);
            }
        }
        f.dot()
    }
}
