//! `node graph`: the cluster's fabric. Who exists comes from the datastore (nodes, their
//! addresses, AS numbers and reflector roles; BGPPeers to name the routers; blocks per
//! node); who peers with whom, and in what state, from each agent's own metrics
//! (`brindle_bgp_peer_established`, `brindle_bgp_prefixes_received`), read at the node's
//! recorded address as Prometheus would. An agent that cannot be read is said so on its node
//! and on stderr; its sessions still appear as the other ends see them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use brindle_api::{BGPConfiguration, BGPPeer, BrindleNode, IPAMBlock};
use brindle_datastore::Store;

use crate::cli::GraphArgs;
use crate::client::Client;
use crate::graph::{addr_lines, Fabric, Member, Side};
use crate::kind::Kind;
use crate::Failure;

fn err(e: impl std::fmt::Display) -> Failure {
    Failure::Error(anyhow::anyhow!("{e}"))
}

/// One peer as an agent's metrics report it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct PeerSeen {
    pub established: bool,
    pub received: Option<u64>,
}

/// The value of label `name` in a sample's `{…}` (Prometheus' text format).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Each peer's session from an agent's /metrics text, by peer address.
pub(crate) fn peers_in(metrics: &str) -> BTreeMap<IpAddr, PeerSeen> {
    let mut out: BTreeMap<IpAddr, PeerSeen> = BTreeMap::new();
    for line in metrics.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(peer) = label(labels, "peer").and_then(|p| p.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "brindle_bgp_peer_established" => {
                out.entry(peer).or_default().established = value == 1.0
            }
            "brindle_bgp_prefixes_received" => {
                out.entry(peer).or_default().received = Some(value as u64)
            }
            _ => {}
        }
    }
    out
}

/// A node's recorded addresses, IPv4 first.
fn addrs_of(n: &BrindleNode) -> Vec<IpAddr> {
    let bgp = n.spec.bgp.clone().unwrap_or_default();
    [bgp.ipv4_address, bgp.ipv6_address]
        .into_iter()
        .flatten()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// The agent's metrics at `addr`.
async fn scrape(addr: IpAddr, port: u16, timeout: Duration) -> Result<String, String> {
    let url = format!("http://{}/metrics", std::net::SocketAddr::new(addr, port));
    crate::diags::http_get_within(&url, timeout)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

pub async fn run(c: &Client, store: &Store, a: &GraphArgs) -> Result<(), Failure> {
    let mut nodes: Vec<BrindleNode> = c
        .list(Kind::Node)
        .await
        .map_err(err)?
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    nodes.sort_by(|x, y| x.metadata.name.cmp(&y.metadata.name));
    let default_as = store
        .all::<BGPConfiguration>()
        .get("default")
        .await
        .map_err(err)?
        .map_or(brindle_api::bgp::DEFAULT_AS_NUMBER, |c| c.spec.as_number);
    let peers = store.all::<BGPPeer>().list().await.map_err(err)?.items;
    let mut blocks: BTreeMap<String, usize> = BTreeMap::new();
    for b in store.all::<IPAMBlock>().list().await.map_err(err)?.items {
        if let Some(host) = b
            .spec
            .affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
        {
            *blocks.entry(host.to_string()).or_default() += 1;
        }
    }

    // Every agent's metrics at once, each with its own deadline.
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut scrapes = tokio::task::JoinSet::new();
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let first = addrs_of(n).first().copied();
        let port = a.metrics_port;
        scrapes.spawn(async move {
            let got = match first {
                Some(addr) => scrape(addr, port, timeout).await,
                None => Err("no address recorded".to_string()),
            };
            (name, got)
        });
    }
    let mut seen: BTreeMap<String, Result<BTreeMap<IpAddr, PeerSeen>, String>> = BTreeMap::new();
    while let Some(done) = scrapes.join_next().await {
        let (name, got) = done.map_err(err)?;
        seen.insert(name, got.map(|m| peers_in(&m)));
    }

    let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
    for n in &nodes {
        for ip in addrs_of(n) {
            by_ip.insert(ip, n.metadata.name.clone().unwrap_or_default());
        }
    }
    let asn_of = |n: &BrindleNode| {
        n.spec
            .bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .unwrap_or(default_as)
    };
    let group_of = |n: &BrindleNode| -> (String, String) {
        match &a.group_by_label {
            Some(key) => {
                let v = n.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
                let label = match &v {
                    Some(v) => format!("{key}={v}"),
                    None => format!("no {key} label"),
                };
                let id = match v {
                    Some(v) => format!("label_{v}"),
                    None => "unlabelled".to_string(),
                };
                (id, label)
            }
            None => {
                let asn = asn_of(n);
                (format!("as{asn}"), format!("AS {asn}"))
            }
        }
    };

    let mut f = Fabric::default();
    // Routers: addresses the agents peer with that are no node's; which groups' nodes do.
    let mut routers: BTreeMap<IpAddr, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut unreachable = vec![];
    for n in &nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let asn = asn_of(n);
        let mut lines = vec![name.clone()];
        lines.extend(addr_lines(&addrs_of(n)));
        lines.push(format!(
            "AS {asn}, {} block(s)",
            blocks.get(&name).copied().unwrap_or(0)
        ));
        match seen.get(&name) {
            Some(Ok(peers)) => {
                for (addr, p) in peers {
                    let other = match by_ip.get(addr) {
                        Some(o) => o.clone(),
                        None => {
                            routers.entry(*addr).or_default().insert(group_of(n));
                            addr.to_string()
                        }
                    };
                    let side = Side {
                        from: name.clone(),
                        established: p.established,
                        state: if p.established { "Established" } else { "down" }.into(),
                        received: p.received,
                    };
                    f.session(&name, &other, addr.is_ipv6(), side);
                }
            }
            Some(Err(e)) => {
                lines.push("metrics unreachable".into());
                unreachable.push(format!("{name} ({e})"));
            }
            None => {}
        }
        let reflector = n
            .spec
            .bgp
            .as_ref()
            .is_some_and(|b| b.route_reflector_cluster_id.is_some());
        let (id, label) = group_of(n);
        let m = Member {
            name,
            router: false,
            reflector,
            lines,
        };
        f.member(&id, &label, m);
    }
    for (addr, groups) in routers {
        let named: Vec<&BGPPeer> = peers
            .iter()
            // peerIP may carry a port (`ip:port`, `[v6]:port`).
            .filter(|p| p.spec.peer_addr().map(|a| a.ip()) == Some(addr))
            .collect();
        let mut lines = vec![addr.to_string()];
        let names: Vec<String> = named
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !names.is_empty() {
            lines.push(format!("BGPPeer {}", names.join(", ")));
        }
        if let Some(asn) = named.iter().find_map(|p| p.spec.as_number) {
            lines.push(format!("AS {asn}"));
        }
        let m = Member {
            name: addr.to_string(),
            router: true,
            reflector: false,
            lines,
        };
        // In the group of the nodes that peer with it, when they are all in one.
        match groups.iter().collect::<Vec<_>>().as_slice() {
            [(id, label)] => f.member(id, label, m),
            _ => f.outside(m),
        }
    }

    let dot = f.dot();
    match &a.out {
        Some(out) => {
            crate::graph::write(&dot, out).map_err(Failure::Error)?;
            eprintln!("wrote {}", out.display());
        }
        None => print!("{dot}"),
    }
    let (sessions, up) = f.counts();
    eprintln!(
        "{} node(s), {sessions} session(s), {up} Established at every end that reports",
        nodes.len()
    );
    if !unreachable.is_empty() {
        eprintln!(
            "metrics not read from {} agent(s), their sessions shown from the other end only: {}",
            unreachable.len(),
            unreachable.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_read_from_the_agents_metrics() {
        let text = "\
# HELP brindle_bgp_peer_established 1 for each configured peer whose session is Established, else 0
# TYPE brindle_bgp_peer_established gauge
brindle_bgp_peer_established{peer=\"198.18.0.11\"} 1
brindle_bgp_peer_established{peer=\"2001:db8:18::11\"} 0
brindle_bgp_prefixes_received{peer=\"198.18.0.11\"} 3
brindle_bgp_prefixes_advertised{peer=\"198.18.0.11\"} 9
brindle_bgp_sessions{state=\"Established\"} 1
brindle_bgp_peer_established{peer=\"not an address\"} 1
";
        let got = peers_in(text);
        assert_eq!(got.len(), 2, "{got:?}");
        let v4: IpAddr = "198.18.0.11".parse().unwrap();
        let v6: IpAddr = "2001:db8:18::11".parse().unwrap();
        assert_eq!(
            got[&v4],
            PeerSeen {
                established: true,
                received: Some(3)
            }
        );
        assert_eq!(
            got[&v6],
            PeerSeen {
                established: false,
                received: None
            }
        );
    }
}
