//! `brindle-lab status` output and the speaker's control socket.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::Lab;

/// One request on a speaker's control socket (newline-delimited JSON).
pub fn control(socket: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// "IPv4, IPv6", or whichever the lab has.
fn addrs(ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> String {
    let v: Vec<String> = crate::family_addrs(ip, ip6)
        .iter()
        .map(ToString::to_string)
        .collect();
    v.join(", ")
}

pub fn render(lab: &Lab) -> String {
    let blocks = lab.blocks();
    let mut nodes = vec![];
    let mut sessions = vec![];
    for n in &lab.nodes {
        let peers = lab.peers(&n.name);
        let up = peers.iter().filter(|p| p["state"] == "Established").count();
        nodes.push(vec![
            n.name.clone(),
            addrs(n.ip, n.ip6),
            format!("r{}", n.rack),
            n.asn.to_string(),
            n.agent_pid()
                .map_or("stopped".into(), |p| format!("running (pid {p})")),
            format!("{up}/{}", peers.len()),
            blocks.get(&n.name).map(|b| b.join(",")).unwrap_or_default(),
        ]);
        for p in peers {
            sessions.push(vec![
                n.name.clone(),
                p["addr"].as_str().unwrap_or("").to_string(),
                p["asn"].to_string(),
                p["state"].as_str().unwrap_or("").to_string(),
                format!("{}s", p["since_secs"]),
                p["received"].to_string(),
                p["advertised"].to_string(),
            ]);
        }
    }
    let pods: Vec<Vec<String>> = lab
        .pods
        .values()
        .map(|p| vec![p.name.clone(), p.node.clone(), addrs(p.ip, p.ip6)])
        .collect();
    let mut routes = String::new();
    for n in &lab.nodes {
        routes.push_str(&format!("{}:\n", n.name));
        for r in lab.bird_routes(&n.name) {
            routes.push_str(&format!("  {r}\n"));
        }
        if n.ip6.is_some() {
            for r in lab.bird_routes6(&n.name) {
                routes.push_str(&format!("  {r}\n"));
            }
        }
    }
    let access: Vec<Vec<String>> = lab
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.ns.name().to_string(),
                n.control_socket().display().to_string(),
            ]
        })
        .collect();
    format!(
        "NODES\n{}\nSESSIONS\n{}\nPODS\n{}\nROUTES (ip route show proto bird)\n{routes}\nACCESS\n\
         brindlectl {}\n{}",
        table(
            &[
                "NODE",
                "ADDRESS",
                "RACK",
                "AS",
                "AGENT",
                "SESSIONS UP",
                "BLOCKS"
            ],
            &nodes
        ),
        table(
            &[
                "NODE",
                "PEER",
                "AS",
                "STATE",
                "SINCE",
                "RECEIVED",
                "ADVERTISED"
            ],
            &sessions
        ),
        table(&["POD", "NODE", "ADDRESS"], &pods),
        lab.datastore_flags().join(" "),
        table(
            &[
                "NODE",
                "NETNS (ip netns exec)",
                "CONTROL SOCKET (brindlectl node status --control-socket)"
            ],
            &access
        ),
    )
}
