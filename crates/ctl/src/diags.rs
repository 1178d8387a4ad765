//! `brindlectl node diags`: what a maintainer asks for in a bug report, collected on the node
//! it runs on into one tarball (calicoctl's `node diags`). It only reads: the agent's
//! version, flags and `BRINDLE_*` environment (secrets redacted), its logs when given or
//! found, addresses, links, routes and rules, our iptables, nftables and ipset state, the
//! speaker's peers and RIB, the agent's metrics, and this node's IPAM blocks from the
//! datastore. What could not be collected is listed in `summary.txt` with the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brindle_api::IPAMBlock;

use crate::cli::DiagsArgs;
use crate::{connect, status, Cli, Failure};

/// How long one collecting command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines kept from the end of each log.
const LOG_LINES: usize = 5000;

/// The node's state through the standard tools: (file, command).
const COMMANDS: &[(&str, &[&str])] = &[
    ("ip-addr.txt", &["ip", "-d", "addr"]),
    ("ip-link.txt", &["ip", "-d", "-s", "link"]),
    ("ip-route.txt", &["ip", "route", "show", "table", "all"]),
    (
        "ip6-route.txt",
        &["ip", "-6", "route", "show", "table", "all"],
    ),
    ("ip-rule.txt", &["ip", "rule"]),
    ("iptables-legacy-save.txt", &["iptables-legacy-save", "-c"]),
    ("iptables-nft-save.txt", &["iptables-nft-save", "-c"]),
    ("nft-ruleset.txt", &["nft", "list", "ruleset"]),
    ("ipset.txt", &["ipset", "list"]),
];

/// A flag or variable whose value is a secret (a file holding one is only a path).
fn secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !n.ends_with("file")
        && !n.ends_with("_file")
        && ["password", "token", "secret", "key"]
            .iter()
            .any(|w| n.contains(w))
}

/// Command-line arguments with secret values replaced.
pub fn redact_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<redacted>".into());
            hide_next = false;
            continue;
        }
        match a.strip_prefix("--") {
            Some(flag) => match flag.split_once('=') {
                Some((name, _)) if secret(name) => out.push(format!("--{name}=<redacted>")),
                None if secret(flag) => {
                    out.push(a.clone());
                    hide_next = true;
                }
                _ => out.push(a.clone()),
            },
            None => out.push(a.clone()),
        }
    }
    out
}

/// `BRINDLE_*` variables, secret values replaced.
pub fn redact_env(env: &[String]) -> Vec<String> {
    env.iter()
        .filter(|kv| kv.starts_with("BRINDLE_"))
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=<redacted>"),
            _ => kv.clone(),
        })
        .collect()
}

/// The agent's process: the `brindle-node` whose `--control-socket` is `socket`, or the only
/// one. (pid, arguments, environment)
fn agent(socket: &Path) -> Option<(u32, Vec<String>, Vec<String>)> {
    let split = |b: Vec<u8>| -> Vec<String> {
        b.split(|c| *c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let args = split(std::fs::read(e.path().join("cmdline")).unwrap_or_default());
        if !args.first().is_some_and(|a| a.ends_with("brindle-node")) {
            continue;
        }
        let env = split(std::fs::read(e.path().join("environ")).unwrap_or_default());
        found.push((pid, args, env));
    }
    let want = socket.display().to_string();
    let ours = found.iter().position(|(_, args, env)| {
        args.windows(2)
            .any(|w| w[0] == "--control-socket" && w[1] == want)
            || args
                .iter()
                .any(|a| *a == format!("--control-socket={want}"))
            || env
                .iter()
                .any(|e| *e == format!("BRINDLE_CONTROL_SOCKET={want}"))
    });
    match (ours, found.len()) {
        (Some(i), _) => Some(found.swap_remove(i)),
        (None, 1) => found.pop(),
        _ => None,
    }
}

/// The value of `--flag` (or `--flag=`) in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    args.windows(2)
        .find(|w| w[0] == long)
        .map(|w| w[1].clone())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{long}=")).map(str::to_string))
        })
}

/// `http://host:port/path` fetched with a plain HTTP/1.0 GET (the agent's metrics).
async fn http_get(url: &str) -> Result<String, String> {
    http_get_within(url, STEP_TIMEOUT).await
}

/// [`http_get`] with its own deadline.
pub(crate) async fn http_get_within(url: &str, timeout: Duration) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let get = async {
        let mut c = tokio::net::TcpStream::connect(host).await?;
        c.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        c.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let text = tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the agent answered {status:?}"));
    }
    Ok(body.to_string())
}

/// Runs `argv`, with a deadline; stdout, then stderr if any.
async fn command(argv: &[&str]) -> Result<String, String> {
    let mut c = tokio::process::Command::new(argv[0]);
    c.args(&argv[1..]).kill_on_drop(true);
    let out = tokio::time::timeout(STEP_TIMEOUT, c.output())
        .await
        .map_err(|_| format!("did not finish within {STEP_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.stderr.is_empty() {
        text.push_str("\n--- stderr ---\n");
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        return Err(format!("{} ({})", out.status, text.trim()));
    }
    Ok(text)
}

/// The last [`LOG_LINES`] lines of a file.
fn tail(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(LOG_LINES)..].join("\n") + "\n")
}

/// The bundle being written, and its summary.
struct Bundle {
    root: PathBuf,
    summary: String,
}

impl Bundle {
    /// Writes `file`, or notes why it is missing.
    fn put(&mut self, file: &str, r: Result<String, String>) {
        let line = match r {
            Ok(text) => match std::fs::write(self.root.join(file), text) {
                Ok(()) => format!("ok      {file}"),
                Err(e) => format!("failed  {file}: {e}"),
            },
            Err(e) => format!("missing {file}: {e}"),
        };
        let _ = writeln!(self.summary, "{line}");
    }
}

/// The DaemonSet's container logs on this node, where the kubelet keeps them.
fn pod_logs() -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(pods) = std::fs::read_dir("/var/log/pods") else {
        return out;
    };
    for p in pods.flatten() {
        if !p.file_name().to_string_lossy().contains("brindle-node") {
            continue;
        }
        for c in std::fs::read_dir(p.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                // The kubelet's rotated logs are compressed: the current one is enough.
                if f.path().extension().is_some_and(|x| x == "log") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

pub async fn run(cli: &Cli, a: &DiagsArgs) -> Result<(), Failure> {
    let err = |e: std::io::Error| Failure::Error(e.into());
    let agent = agent(&a.control_socket);
    let node = a
        .node
        .clone()
        .or_else(|| {
            agent
                .as_ref()
                .and_then(|(_, args, _)| flag(args, "nodename"))
        })
        .or_else(|| {
            agent.as_ref().and_then(|(_, _, env)| {
                env.iter()
                    .find_map(|e| e.strip_prefix("NODENAME=").map(str::to_string))
            })
        })
        .or_else(|| {
            std::fs::read_to_string("/var/lib/brindle/nodename")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "node".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("brindle-diags-{node}-{stamp}");
    let tmp = tempfile::tempdir().map_err(err)?;
    let root = tmp.path().join(&name);
    std::fs::create_dir(&root).map_err(err)?;
    let mut bundle = Bundle {
        root: root.clone(),
        summary: format!(
            "brindlectl {} node diags for node {node}\n\n",
            env!("CARGO_PKG_VERSION")
        ),
    };
    let mut put = |file: &str, r: Result<String, String>| bundle.put(file, r);

    put(
        "agent.txt",
        match &agent {
            Some((pid, args, env)) => {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Ok(format!(
                    "pid {pid}\nexecutable {exe}\n\narguments:\n  {}\n\nenvironment:\n  {}\n",
                    redact_args(args).join("\n  "),
                    redact_env(env).join("\n  ")
                ))
            }
            None => Err("no brindle-node process for this control socket on this machine".into()),
        },
    );
    for (file, argv) in COMMANDS {
        put(file, command(argv).await);
    }
    let socket = &a.control_socket;
    let json = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    let msg = |f: Failure| match f {
        Failure::Error(e) => format!("{e:#}"),
        Failure::Usage(m) | Failure::Reported(m) => m,
    };
    put(
        "bgp-peers.json",
        status::request(socket, "{\"peers\":{}}")
            .await
            .map(json)
            .map_err(msg),
    );
    put(
        "bgp-rib.json",
        status::request(socket, "{\"rib\":{}}")
            .await
            .map(json)
            .map_err(msg),
    );
    put("metrics.txt", http_get(&a.metrics_url).await);
    // This node's blocks and what they hold, if the datastore answers.
    let ipam = match connect(cli).await {
        Ok(store) => store
            .all::<IPAMBlock>()
            .list()
            .await
            .map_err(|e| e.to_string())
            .map(|l| {
                let mine: Vec<_> = l
                    .items
                    .into_iter()
                    .filter(|b| b.spec.affinity.as_deref() == Some(&format!("host:{node}")))
                    .collect();
                serde_yaml_ng::to_string(&mine).unwrap_or_default()
            }),
        Err(f) => Err(msg(f)),
    };
    put("ipam-blocks.yaml", ipam);
    let mut logs = a.log_files.clone();
    logs.extend(pod_logs());
    if logs.is_empty() {
        put(
            "logs",
            Err("none given (--log-file) and none under /var/log/pods".into()),
        );
    }
    for (i, l) in logs.iter().enumerate() {
        let file = format!(
            "log-{i}-{}",
            l.file_name().unwrap_or_default().to_string_lossy()
        );
        put(&file, tail(l).map_err(|e| format!("{}: {e}", l.display())));
    }
    let summary = bundle.summary;
    std::fs::write(root.join("summary.txt"), &summary).map_err(err)?;

    let out = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.tar.gz")));
    let tar = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(tmp.path())
        .arg(&name)
        .status()
        .map_err(|e| Failure::Error(anyhow::anyhow!("cannot run tar: {e}")))?;
    if !tar.success() {
        return Err(Failure::Error(anyhow::anyhow!(
            "tar could not write {}",
            out.display()
        )));
    }
    // Routes, rules and flags of a node: for root's eyes, as the agent's socket is.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    eprint!("{summary}");
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_paths_kept() {
        let args: Vec<String> = [
            "brindle-node",
            "--etcd-password",
            "hunter2",
            "--bgp-md5-key=s3cret",
            "--etcd-key-file",
            "/etc/brindle/key.pem",
            "--nodename",
            "n1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = redact_args(&args).join(" ");
        assert!(!r.contains("hunter2") && !r.contains("s3cret"), "{r}");
        assert!(r.contains("--etcd-key-file /etc/brindle/key.pem") && r.contains("--nodename n1"));
        let env: Vec<String> = [
            "BRINDLE_ETCD_PASSWORD=hunter2",
            "BRINDLE_ETCD_PASSWORD_FILE=/run/pw",
            "BRINDLE_DATAPLANE=auto",
            "HOME=/root",
            "KUBERNETES_TOKEN=x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redact_env(&env),
            [
                "BRINDLE_ETCD_PASSWORD=<redacted>",
                "BRINDLE_ETCD_PASSWORD_FILE=/run/pw",
                "BRINDLE_DATAPLANE=auto"
            ]
        );
    }
}
