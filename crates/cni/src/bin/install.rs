//! `brindle-cni-install`: what the DaemonSet's init container runs. It puts `brindle-cni` (and
//! its IPAM-only name `brindle-ipam`) into the host's CNI bin directory and writes the network
//! configuration list, with the datastore settings the plugin needs, into the host's CNI
//! configuration directory. Every file is written beside its target and renamed over it, so
//! a runtime never reads half a binary or half a configuration.
//!
//! In the Kubernetes datastore, inside a pod, it writes a kubeconfig for the plugin: the API
//! server from `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's CA, and `tokenFile`
//! pointing at a copy of the service account token that `brindle-node` keeps fresh
//! (`--cni-token-file`): projected tokens expire, and the plugin runs long after this exits.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine as _;
use brindle_datastore::config::DatastoreKind;
use brindle_datastore::DatastoreArgs;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "brindle-cni-install",
    version,
    about = "Install brindle-cni and its network configuration on this node"
)]
struct Args {
    /// Where the binaries to install are (default: this program's directory).
    #[arg(long, env = "BRINDLE_CNI_SOURCE_DIR")]
    source_dir: Option<PathBuf>,
    /// The host's CNI binary directory, as mounted in this container.
    #[arg(long, env = "BRINDLE_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted in this container.
    #[arg(
        long,
        env = "BRINDLE_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    conf_dir: PathBuf,
    /// The configuration list's file name (the kubelet uses the first in sort order).
    #[arg(
        long,
        env = "BRINDLE_CNI_CONF_NAME",
        default_value = "10-brindle.conflist"
    )]
    conf_name: String,
    /// The network's name (Calico's, so IPAM handles keep Calico's names).
    #[arg(
        long,
        env = "BRINDLE_CNI_NETWORK_NAME",
        default_value = "k8s-pod-network"
    )]
    network_name: String,
    /// Pod interface MTU: 1480 leaves room for IPIP's 20 bytes on a 1500-byte network.
    #[arg(long, env = "BRINDLE_CNI_MTU", default_value_t = 1480)]
    mtu: u32,
    /// Paths below are as the plugin sees them on the host.
    #[arg(
        long,
        env = "BRINDLE_NODENAME_FILE",
        default_value = "/var/lib/brindle/nodename"
    )]
    nodename_file: PathBuf,
    #[arg(
        long,
        env = "BRINDLE_CNI_LOG_FILE",
        default_value = "/var/log/brindle/cni/cni.log"
    )]
    log_file: PathBuf,
    #[arg(long, env = "BRINDLE_CNI_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(
        long,
        env = "BRINDLE_IPAM_LOCK_FILE",
        default_value = "/run/brindle/ipam.lock"
    )]
    ipam_lock_file: PathBuf,
    /// Where brindle-node says it has programmed the node's dataplane (its
    /// `--dataplane-ready-file`): without the agent, the plugin wires no pod before it exists.
    #[arg(
        long,
        env = "BRINDLE_DATAPLANE_READY_FILE",
        default_value = brindle_cni::agent::DEFAULT_READY_FILE
    )]
    dataplane_ready_file: PathBuf,
    /// The service account token copy the plugin's kubeconfig names (host path).
    #[arg(
        long,
        env = "BRINDLE_CNI_TOKEN_FILE",
        default_value = "/var/lib/brindle/cni-token"
    )]
    cni_token_file: PathBuf,
    /// Where the host path `/` is mounted in this container (to write the token copy).
    #[arg(long, env = "BRINDLE_HOST_ROOT", default_value = "/host")]
    host_root: PathBuf,
    /// Give pods an IPv6 address too (dual stack: the cluster needs an IPv6 pool, e.g. the
    /// controller's `BRINDLE_IPV6POOL_CIDR`); the CNI configuration's `ipam.assign_ipv6`.
    #[arg(long, env = "BRINDLE_CNI_ASSIGN_IPV6", default_value_t = false, action = clap::ArgAction::Set)]
    assign_ipv6: bool,
    /// Give pods an IPv4 address (the CNI configuration's `ipam.assign_ipv4`); false for
    /// IPv6-only nodes (with `--assign-ipv6 true`).
    #[arg(long, env = "BRINDLE_CNI_ASSIGN_IPV4", default_value_t = true, action = clap::ArgAction::Set)]
    assign_ipv4: bool,
    /// Chain `portmap` (hostPort) after brindle-cni: auto = when the bin directory has it.
    #[arg(long, env = "BRINDLE_CNI_PORTMAP", default_value = "auto", value_parser = ["auto", "true", "false"])]
    portmap: String,
    /// The pod's service account (token and ca.crt).
    #[arg(
        long,
        env = "BRINDLE_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    service_account_dir: PathBuf,
    /// Remove what an install wrote (the two binaries, the configuration list when it is
    /// ours, the kubeconfig, etcd's copied files, the token copy) and nothing else.
    #[arg(long)]
    uninstall: bool,
    #[command(flatten)]
    datastore: DatastoreArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brindle-cni-install: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> anyhow::Result<()> {
    if a.uninstall {
        return uninstall(a);
    }
    let source = match &a.source_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("finding this program's directory")?
            .parent()
            .map(Path::to_path_buf)
            .context("this program has no directory")?,
    };
    let plugin = std::fs::read(source.join("brindle-cni"))
        .with_context(|| format!("reading {}", source.join("brindle-cni").display()))?;
    std::fs::create_dir_all(&a.bin_dir)
        .with_context(|| format!("making {}", a.bin_dir.display()))?;
    for name in ["brindle-cni", "brindle-ipam"] {
        let to = a.bin_dir.join(name);
        if std::fs::read(&to).ok().as_deref() == Some(plugin.as_slice()) {
            println!("{} is up to date", to.display());
            continue;
        }
        write_atomic(&to, &plugin, 0o755)?;
        println!("installed {}", to.display());
    }

    std::fs::create_dir_all(&a.conf_dir)
        .with_context(|| format!("making {}", a.conf_dir.display()))?;
    let mut plugin_conf = json!({
        "type": "brindle-cni",
        "mtu": a.mtu,
        "nodename_file": a.nodename_file,
        "log_level": a.log_level,
        "log_file_path": a.log_file,
        "ipam_lock_file": a.ipam_lock_file,
        "dataplane_ready_file": a.dataplane_ready_file,
        "ipam": {"type": "brindle-ipam"},
    });
    if !a.assign_ipv4 && !a.assign_ipv6 {
        anyhow::bail!("--assign-ipv4 false needs --assign-ipv6 true: pods would get no address");
    }
    if a.assign_ipv6 {
        plugin_conf["ipam"]["assign_ipv6"] = true.into();
    }
    if !a.assign_ipv4 {
        plugin_conf["ipam"]["assign_ipv4"] = false.into();
    }
    match a.datastore.datastore {
        DatastoreKind::Etcd => {
            plugin_conf["datastore_type"] = "etcd".into();
            plugin_conf["etcd_endpoints"] = a.datastore.etcd_endpoints.join(",").into();
            for (k, v) in etcd_files(a)? {
                plugin_conf[k] = v.into();
            }
        }
        DatastoreKind::Kubernetes => {
            plugin_conf["datastore_type"] = "kubernetes".into();
            plugin_conf["kubeconfig"] = kubeconfig(a)?.display().to_string().into();
        }
    }
    let mut plugins = vec![plugin_conf];
    let has_portmap = a.bin_dir.join("portmap").exists();
    match (a.portmap.as_str(), has_portmap) {
        ("true", _) | ("auto", true) => plugins.push(json!({
            "type": "portmap", "snat": true, "capabilities": {"portMappings": true}
        })),
        ("auto", false) => println!(
            "{} has no portmap plugin: hostPort is off (install containernetworking-plugins, then restart this pod)",
            a.bin_dir.display()
        ),
        _ => {}
    }
    let list = json!({"name": a.network_name, "cniVersion": "1.0.0", "plugins": plugins});
    let text = serde_json::to_string_pretty(&list)? + "\n";
    let conf = a.conf_dir.join(&a.conf_name);
    write_atomic(&conf, text.as_bytes(), 0o644)?;
    println!("wrote {}", conf.display());
    warn_if_shadowed(&a.conf_dir, &a.conf_name);
    Ok(())
}

/// etcd's TLS files and password, copied where the plugin on the host can read them
/// (`<conf dir>/brindle-etcd/`, readable by root only), as Calico's install copies its
/// etcd Secret: the network configuration's keys and the host paths they name.
fn etcd_files(a: &Args) -> anyhow::Result<Vec<(&'static str, String)>> {
    let f = a
        .datastore
        .etcd_files()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = a.conf_dir.join("brindle-etcd");
    let host_dir = Path::new("/etc/cni/net.d/brindle-etcd");
    let mut out = vec![];
    let mut copy = |key: &'static str, name: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        write_atomic(&dir.join(name), &bytes, 0o600)?;
        out.push((key, host_dir.join(name).display().to_string()));
        Ok(())
    };
    for (key, name, path) in [
        ("etcd_ca_cert_file", "etcd-ca", &f.ca),
        ("etcd_cert_file", "etcd-cert", &f.cert),
        ("etcd_key_file", "etcd-key", &f.key),
    ] {
        if let Some(p) = path {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            copy(key, name, bytes)?;
        }
    }
    if let Some(pw) = &f.password {
        copy(
            "etcd_password_file",
            "etcd-password",
            pw.clone().into_bytes(),
        )?;
    }
    if let Some(u) = &f.username {
        out.push(("etcd_username", u.clone()));
    }
    if !out.is_empty() {
        println!(
            "copied etcd's TLS files and credentials to {}",
            dir.display()
        );
    }
    Ok(out)
}

/// Writes the plugin's kubeconfig into the configuration directory and returns its host
/// path. Outside a pod, an explicit `--kubeconfig` is named as it is.
fn kubeconfig(a: &Args) -> anyhow::Result<PathBuf> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return a.datastore.kubeconfig.clone().context(
            "--datastore kubernetes outside a pod: give --kubeconfig (the plugin's kubeconfig on the host)",
        );
    };
    let sa = &a.service_account_dir;
    let ca = std::fs::read(sa.join("ca.crt")).with_context(|| {
        format!(
            "reading {}/ca.crt (is a service account mounted?)",
            sa.display()
        )
    })?;
    let token = std::fs::read(sa.join("token"))
        .with_context(|| format!("reading {}/token", sa.display()))?;
    let token_copy = host_path(&a.host_root, &a.cni_token_file);
    if let Some(dir) = token_copy.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    write_atomic(&token_copy, &token, 0o600)?;
    // IPv6 service addresses need brackets in a URL.
    let server = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let kc = format!(
        "# Written by brindle-cni-install for brindle-cni; rewritten on every start.\n\
         apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: brindle-cni\n  user:\n    tokenFile: {token}\n\
         contexts:\n- name: brindle-cni\n  context:\n    cluster: local\n    user: brindle-cni\n\
         current-context: brindle-cni\n",
        ca = base64::engine::general_purpose::STANDARD.encode(&ca),
        token = a.cni_token_file.display(),
    );
    let path = a.conf_dir.join("brindle-kubeconfig");
    write_atomic(&path, kc.as_bytes(), 0o600)?;
    println!("wrote {}", path.display());
    // The conflist names the file as the host sees it.
    Ok(Path::new("/etc/cni/net.d").join("brindle-kubeconfig"))
}

/// Removes what [`run`] writes. The configuration list only when its first plugin is
/// brindle-cni (a file of that name written by someone else stays).
fn uninstall(a: &Args) -> anyhow::Result<()> {
    let mut removed = 0;
    // Only brindle-etcd is a directory of ours; anything else is removed as a file (a
    // directory at one of those paths is someone else's and stays).
    let mut remove = |p: &Path| -> anyhow::Result<()> {
        let r = if p.file_name().is_some_and(|n| n == "brindle-etcd") {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        match r {
            Ok(()) => {
                println!("removed {}", p.display());
                removed += 1;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!("removing {}: {e}", p.display())),
        }
    };
    let conf = a.conf_dir.join(&a.conf_name);
    if let Ok(text) = std::fs::read_to_string(&conf) {
        let ours = serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| v["plugins"][0]["type"] == "brindle-cni");
        if ours {
            remove(&conf)?;
        } else {
            println!("left {}: not brindle-cni's", conf.display());
        }
    }
    remove(&a.conf_dir.join("brindle-kubeconfig"))?;
    remove(&a.conf_dir.join("brindle-etcd"))?;
    for name in ["brindle-cni", "brindle-ipam"] {
        remove(&a.bin_dir.join(name))?;
    }
    remove(&host_path(&a.host_root, &a.cni_token_file))?;
    if removed == 0 {
        println!("nothing of brindle-cni's here");
    }
    Ok(())
}

/// `host_root` + an absolute host path.
fn host_path(host_root: &Path, p: &Path) -> PathBuf {
    host_root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Writes `bytes` to a temporary file beside `to`, syncs it, and renames it over `to`.
fn write_atomic(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = to.file_name().context("a target without a file name")?;
    let tmp = to.with_file_name(format!(
        ".{}.brindle-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, to)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", to.display())
    })
}

/// The kubelet uses the first configuration in sort order; say so if ours is not it.
fn warn_if_shadowed(dir: &Path, ours: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut first: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".conf") || n.ends_with(".conflist") || n.ends_with(".json"))
        .collect();
    first.sort();
    if let Some(f) = first.first().filter(|f| f.as_str() != ours) {
        println!(
            "warning: {}/{f} sorts before {ours}: the kubelet will use it, not Brindle (remove it, e.g. the old network's configuration)",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_land_under_the_mount() {
        assert_eq!(
            host_path(Path::new("/host"), Path::new("/var/lib/brindle/cni-token")),
            Path::new("/host/var/lib/brindle/cni-token")
        );
    }
}
