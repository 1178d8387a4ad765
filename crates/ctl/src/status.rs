//! `node status`: the agent's BGP sessions from its control socket, as calicoctl shows BIRD's.

use std::path::Path;
use std::time::Duration;

use brindle_bgp::speaker::PeerStatus;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cli::Output;
use crate::output;
use crate::Failure;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the agent for its peers.
pub async fn peers(socket: &Path) -> Result<Vec<PeerStatus>, Failure> {
    let v = request(socket, "{\"peers\":{}}").await?;
    serde_json::from_value(v).map_err(|e| {
        Failure::Error(anyhow::anyhow!(
            "the agent's peer list does not decode: {e} (a different version?)"
        ))
    })
}

/// One request line on the agent's control socket; its `ok` value.
pub async fn request(socket: &Path, req: &str) -> Result<serde_json::Value, Failure> {
    let path = socket.display();
    let conn = tokio::time::timeout(TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| {
            Failure::Error(anyhow::anyhow!(
                "the agent did not answer on {path} within 5 s"
            ))
        })?;
    let mut conn = conn.map_err(|e| {
        use std::io::ErrorKind::*;
        Failure::Error(match e.kind() {
            NotFound => anyhow::anyhow!(
                "brindle-node is not running on this machine: there is no control socket at {path} \
                 (give the agent's --control-socket with --control-socket or BRINDLE_CONTROL_SOCKET)"
            ),
            PermissionDenied => anyhow::anyhow!(
                "cannot open the agent's control socket {path}: permission denied (run as root)"
            ),
            ConnectionRefused => anyhow::anyhow!(
                "brindle-node is not running: {path} exists but nothing listens on it (left by an agent that stopped)"
            ),
            _ => anyhow::anyhow!("cannot reach the agent at {path}: {e}"),
        })
    })?;
    let talk = async {
        conn.write_all(req.as_bytes()).await?;
        conn.write_all(b"\n").await?;
        let mut line = String::new();
        BufReader::new(&mut conn).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(TIMEOUT, talk)
        .await
        .map_err(|_| {
            Failure::Error(anyhow::anyhow!(
                "the agent did not answer on {path} within 5 s"
            ))
        })?
        .map_err(|e| Failure::Error(anyhow::anyhow!("talking to the agent at {path}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
        Failure::Error(anyhow::anyhow!(
            "the agent at {path} answered something that is not JSON: {e}"
        ))
    })?;
    if let Some(err) = v.get("error") {
        return Err(Failure::Error(anyhow::anyhow!("the agent says: {err}")));
    }
    Ok(v.get("ok").cloned().unwrap_or_default())
}

pub async fn run(socket: &Path, out: Output) -> Result<(), Failure> {
    let mut peers = peers(socket).await?;
    peers.sort_by_key(|p| p.addr); // for json/yaml too
    match out {
        Output::Json | Output::Yaml => {
            let v = serde_json::to_value(&peers).map_err(|e| Failure::Error(e.into()))?;
            let s = if out == Output::Json {
                serde_json::to_string_pretty(&v).map_err(|e| Failure::Error(e.into()))? + "\n"
            } else {
                serde_yaml_ng::to_string(&v).map_err(|e| Failure::Error(e.into()))?
            };
            print!("{s}");
        }
        Output::Table | Output::Wide => {
            print!(
                "{}",
                render(&peers, jiff::Zoned::now(), out == Output::Wide)
            );
        }
    }
    Ok(())
}

/// BIRD's "since": the time of day when it was today, else the date.
fn since(now: &jiff::Zoned, secs: u64) -> String {
    let then = now
        .checked_sub(jiff::SignedDuration::from_secs(secs as i64))
        .unwrap_or_else(|_| now.clone());
    if then.date() == now.date() {
        then.strftime("%H:%M:%S").to_string()
    } else {
        then.strftime("%Y-%m-%d").to_string()
    }
}

/// calicoctl's layout: a line that the agent runs, then one table per family.
pub fn render(peers: &[PeerStatus], now: jiff::Zoned, wide: bool) -> String {
    let mut peers: Vec<&PeerStatus> = peers.iter().collect();
    peers.sort_by_key(|p| p.addr);
    let mut out = String::from("Brindle process is running.\n");
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let rows: Vec<Vec<String>> = peers
            .iter()
            .filter(|p| p.addr.is_ipv4() == v4)
            .map(|p| {
                let up = p.state == "Established";
                let mut info = p.state.clone();
                if let (false, Some(e)) = (up, &p.last_error) {
                    info = format!("{info} {e}");
                }
                let mut row = vec![
                    p.addr.to_string(),
                    p.peer_type.clone().unwrap_or_else(|| "global".into()),
                    (if up { "up" } else { "start" }).to_string(),
                    since(&now, p.since_secs),
                    info,
                ];
                if wide {
                    row.push(p.asn.to_string());
                    row.push(p.router_id.map(|r| r.to_string()).unwrap_or_default());
                    row.push(format!("{} ({} accepted)", p.received, p.accepted));
                    row.push(p.advertised.to_string());
                }
                row
            })
            .collect();
        out.push_str(&format!("\n{family} BGP status\n"));
        if rows.is_empty() {
            out.push_str(&format!("No {family} peers found.\n"));
            continue;
        }
        let mut header = vec!["Peer address", "Peer type", "State", "Since", "Info"];
        if wide {
            header.extend(["AS", "Router ID", "Prefixes received", "Advertised"]);
        }
        out.push_str(&output::boxed(&header, &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, state: &str, kind: Option<&str>) -> PeerStatus {
        PeerStatus {
            addr: addr.parse().unwrap(),
            asn: 64512,
            state: state.into(),
            since_secs: 3600,
            router_id: Some("198.18.0.12".parse().unwrap()),
            last_error: (state != "Established").then(|| "Socket: Connection refused".into()),
            received: 3,
            accepted: 2,
            advertised: 1,
            stale: 0,
            peer_type: kind.map(Into::into),
            refused_by_rails: 0,
            prefix_limit_hits: 0,
        }
    }

    #[test]
    fn golden_layout() {
        let now: jiff::Zoned = "2026-12-04T12:00:00+00:00[UTC]".parse().unwrap();
        let peers = [
            peer("198.18.0.12", "Established", Some("node-to-node mesh")),
            peer("198.18.0.1", "Active", Some("node specific")),
        ];
        let got = render(&peers, now.clone(), false);
        crate::output::assert_golden("node_status.txt", &got);
        let wide = render(&peers, now, true);
        assert!(wide.contains("| 3 (2 accepted)"), "{wide}");
        let old: jiff::Zoned = "2026-12-04T00:30:00+00:00[UTC]".parse().unwrap();
        assert_eq!(since(&old, 3600), "2026-12-03");
    }
}
