//! The fabric as Graphviz DOT: members grouped (a rack, an AS), routers and reflectors
//! marked, each BGP session one edge per address family, coloured by state and labelled
//! with each end's view. Shared by `brindlectl node graph` (a cluster: the datastore and the
//! agents' metrics) and `brindle-lab graph` (a lab).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Something that speaks BGP: a node, or a router it peers with.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// A router (drawn as a diamond), not a node (a box).
    pub router: bool,
    /// A route reflector (drawn with a double border).
    pub reflector: bool,
    /// The label's lines, the name first.
    pub lines: Vec<String>,
}

/// One session as seen from one end.
#[derive(Debug, Clone)]
pub struct Side {
    /// The end that reports it.
    pub from: String,
    pub established: bool,
    pub state: String,
    /// Prefixes received, when that end says.
    pub received: Option<u64>,
}

/// A group drawn as one box (`subgraph cluster_<id>`).
#[derive(Debug, Clone, Default)]
struct Group {
    id: String,
    label: String,
    members: Vec<Member>,
}

/// The fabric to draw.
#[derive(Debug, Default)]
pub struct Fabric {
    groups: Vec<Group>,
    outside: Vec<Member>,
    /// Each session once, by its two ends (sorted) and its family (a dual-stack pair has
    /// one of each); a side per end that reports it.
    sessions: BTreeMap<(String, String, bool), Vec<Side>>,
}

/// A DOT string: quoted, quotes and backslashes escaped.
fn q(s: &str) -> String {
    q_lines(&[s])
}

/// Lines as one DOT string, each escaped, joined by Graphviz's `\n` line break.
fn q_lines<S: AsRef<str>>(lines: &[S]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| l.as_ref().replace('\\', "\\\\").replace('"', "\\\""))
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

/// Addresses as label lines.
pub fn addr_lines(addrs: &[IpAddr]) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

impl Fabric {
    /// Adds `m` to the group `id` (created with `label` the first time).
    pub fn member(&mut self, id: &str, label: &str, m: Member) {
        match self.groups.iter_mut().find(|g| g.id == id) {
            Some(g) => g.members.push(m),
            None => self.groups.push(Group {
                id: id.to_string(),
                label: label.to_string(),
                members: vec![m],
            }),
        }
    }

    /// Adds `m` outside every group.
    pub fn outside(&mut self, m: Member) {
        self.outside.push(m);
    }

    /// One end's view of the session between `a` and `b` (either order).
    pub fn session(&mut self, a: &str, b: &str, v6: bool, side: Side) {
        let key = if a <= b {
            (a.to_string(), b.to_string(), v6)
        } else {
            (b.to_string(), a.to_string(), v6)
        };
        self.sessions.entry(key).or_default().push(side);
    }

    /// How many sessions, and how many of them every reporting end sees Established.
    pub fn counts(&self) -> (usize, usize) {
        let up = self
            .sessions
            .values()
            .filter(|s| s.iter().all(|s| s.established))
            .count();
        (self.sessions.len(), up)
    }

    fn node(out: &mut String, indent: &str, m: &Member) {
        let label = if m.reflector && !m.router {
            let mut l = m.lines.clone();
            if let Some(first) = l.first_mut() {
                first.push_str(" (reflector)");
            }
            l
        } else {
            m.lines.clone()
        };
        let _ = writeln!(
            out,
            "{indent}{} [shape={}{}, label={}];",
            q(&m.name),
            if m.router { "diamond" } else { "box" },
            if m.reflector { ", peripheries=2" } else { "" },
            q_lines(&label)
        );
    }

    /// The DOT text (`dot -Tsvg` draws it).
    pub fn dot(&self) -> String {
        let mut out = String::from(
            "graph brindle {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n  \
             edge [fontname=\"Helvetica\", fontsize=9];\n",
        );
        // Graphviz merges subgraphs of one name: ids that read the same once made safe
        // ("rack-1", "rack.1") get a suffix.
        let mut ids = std::collections::BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let safe = g.id.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let mut id = safe.clone();
            let mut n = i;
            while !ids.insert(id.clone()) {
                id = format!("{safe}_{n}");
                n += 1;
            }
            let _ = writeln!(
                out,
                "  subgraph cluster_{id} {{\n    label={};",
                q(&g.label)
            );
            for m in &g.members {
                Self::node(&mut out, "    ", m);
            }
            out.push_str("  }\n");
        }
        for m in &self.outside {
            Self::node(&mut out, "  ", m);
        }
        for ((a, b, v6), sides) in &self.sessions {
            let up = sides.iter().all(|s| s.established);
            // Each end's view, named: "node-0: Established, received 2"; IPv6 dashed.
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
                q_lines(&views)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// Writes `dot` to `out`: drawn by Graphviz's `dot` for `.svg` and `.png`, as text otherwise.
pub fn write(dot: &str, out: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let Some(fmt @ ("svg" | "png")) = out.extension().and_then(|e| e.to_str()) else {
        return std::fs::write(out, dot).with_context(|| format!("writing {}", out.display()));
    };
    let mut child = Command::new("dot")
        .arg(format!("-T{fmt}"))
        .arg("-o")
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .context("dot (install graphviz), or --out F.dot for the text")?;
    child
        .stdin
        .take()
        .context("dot's input")?
        .write_all(dot.as_bytes())?;
    if !child.wait()?.success() {
        anyhow::bail!("dot failed to draw {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn box_(name: &str) -> Member {
        Member {
            name: name.into(),
            router: false,
            reflector: false,
            lines: vec![name.into(), "AS 64512".into()],
        }
    }

    fn side(from: &str, up: bool) -> Side {
        Side {
            from: from.into(),
            established: up,
            state: if up { "Established" } else { "Active" }.into(),
            received: up.then_some(2),
        }
    }

    #[test]
    fn sessions_are_drawn_once_per_family_and_red_unless_every_end_is_up() {
        let mut f = Fabric::default();
        f.member("as64512", "AS 64512", box_("a"));
        f.member("as64512", "AS 64512", box_("b"));
        f.outside(Member {
            name: "tor \"1\"".into(),
            router: true,
            reflector: false,
            lines: vec!["tor \"1\"".into()],
        });
        f.session("a", "b", false, side("a", true));
        f.session("b", "a", false, side("b", true));
        f.session("b", "a", true, side("b", true));
        f.session("a", "b", true, side("a", false));
        f.session("a", "tor \"1\"", false, side("a", true));
        let dot = f.dot();
        assert_eq!(f.counts(), (3, 2));
        assert_eq!(dot.matches("subgraph cluster_as64512").count(), 1, "{dot}");
        assert!(
            dot.contains(r#""a" -- "b" [color=darkgreen, style=solid, label="a: Established, received 2\nb: Established, received 2"];"#),
            "{dot}"
        );
        assert!(
            dot.contains(r#""a" -- "b" [color=red, style=dashed, label="IPv6\nb: Established, received 2\na: Active"];"#),
            "{dot}"
        );
        assert!(dot.contains(r#""tor \"1\"" [shape=diamond"#), "{dot}");
    }
}
