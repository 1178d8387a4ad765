//! `brindle-node --cleanup` (kube-proxy's `--cleanup`): takes off this host what agents left,
//! so that a node whose DaemonSet was deleted is as it was — our iptables and ip6tables
//! chains, jumps and `brl40…`/`brl60…` ipsets in both backends, the nftables tables
//! `ip brindle` and `ip6 brindle`, every route of ours
//! (`proto bird`, both families: other nodes' blocks and the blackholes for our own), and
//! tunl0's IPv4 address (the device itself is the kernel's while the ipip module is loaded).
//! It leaves the datastore alone: the node's record, blocks and tunnel address are freed by
//! the controller's garbage collection, as for any node gone. It refuses to run while an
//! agent answers on its control socket, or while BIRD or calico-node runs in the same
//! network namespace (their routes are `proto bird` too).

use std::path::Path;

use brindle_felix_lite::family::Family;
use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::nft;

/// Why cleaning up here would harm something running: an agent (it would put everything
/// back, after an outage), or another BGP daemon in this network namespace (BIRD, Calico's:
/// its routes carry the same protocol number and tunl0 its address).
fn refuse(control_socket: &Path) -> Option<String> {
    match std::os::unix::net::UnixStream::connect(control_socket) {
        Ok(_) => {
            return Some(format!(
                "brindle-node is still running here (its control socket {} answers): delete \
                 the DaemonSet (or stop the agent) first",
                control_socket.display()
            ))
        }
        // No socket, or nothing listening on it: no agent.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        // Anything else (no permission, a full backlog) leaves the question open.
        Err(e) => {
            return Some(format!(
                "cannot tell whether brindle-node runs here: its control socket {}: {e}",
                control_socket.display()
            ))
        }
    }
    let ours = match std::fs::read_link("/proc/self/ns/net") {
        Ok(l) => l,
        Err(e) => return Some(format!("cannot read our own network namespace: {e}")),
    };
    let procs = match std::fs::read_dir("/proc") {
        Ok(d) => d,
        Err(e) => return Some(format!("cannot list /proc to look for BIRD: {e}")),
    };
    for e in procs.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !matches!(comm, "bird" | "bird6" | "calico-node") {
            continue;
        }
        let pid = e.file_name().to_string_lossy().into_owned();
        match std::fs::read_link(e.path().join("ns/net")) {
            Ok(theirs) if theirs == ours => {
                return Some(format!(
                    "{comm} (pid {pid}) runs in this network namespace: its routes are proto \
                     bird too and tunl0 may hold its address, so cleanup would take them"
                ));
            }
            Ok(_) => {}
            // Gone meanwhile: nothing to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not knowing is no licence to go on (a container without CAP_SYS_PTRACE cannot
            // read a privileged process's namespace).
            Err(e) => {
                return Some(format!(
                    "{comm} (pid {pid}) runs here and its network namespace cannot be read \
                     ({e}; reading another root process's needs CAP_SYS_PTRACE): it may share \
                     this one, whose proto bird routes and tunl0 address it would lose"
                ));
            }
        }
    }
    None
}

/// Runs every step, says what each removed, and fails at the end if any step failed.
pub fn run(runner: &Runner, control_socket: &Path, ready: Option<&Path>) -> anyhow::Result<()> {
    if let Some(why) = refuse(control_socket) {
        anyhow::bail!("not cleaning up: {why}");
    }
    let mut failed = vec![];
    // First: from here on the CNI plugin wires no pod without an agent.
    match crate::ready::clear(ready) {
        Ok(true) => println!("dataplane-ready file: removed"),
        Ok(false) => {}
        Err(e) => failed.push(format!("the dataplane-ready file: {e}")),
    }
    for b in [Backend::Legacy, Backend::Nft] {
        if runner.backend(b.name()).is_err() {
            println!("iptables-{}: not usable here, nothing of ours", b.name());
            continue;
        }
        for f in Family::BOTH {
            let tool = format!("{}-{}", f.iptables(), b.name());
            match Writer::for_family(b, f, runner.clone()).remove_all() {
                Ok(r) => println!(
                    "{tool}: removed {} chains and {} jumps of ours, and our ipsets",
                    r.chains_deleted, r.jumps_removed
                ),
                Err(e) => failed.push(format!("{tool}: {e}")),
            }
        }
    }
    for f in Family::BOTH {
        let table = format!("{} brindle", f.nft());
        match nft::writer::Writer::for_family(f, runner.clone()).remove() {
            Ok(true) => println!("nftables: removed table {table}"),
            Ok(false) => println!("nftables: no table {table}"),
            Err(brindle_felix_lite::iptables::IptablesError::Spawn { .. }) => {
                println!("nftables: no nft here, nothing of ours")
            }
            Err(e) => failed.push(format!("nftables ({table}): {e}")),
        }
    }
    for family in ["-4", "-6"] {
        let r = std::process::Command::new("ip")
            .args([family, "route", "flush", "proto", "bird"])
            .output();
        match r {
            Ok(o) if o.status.success() => {
                println!("routes ({family}): flushed those of proto bird")
            }
            Ok(o) => failed.push(format!(
                "ip {family} route flush proto bird: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => failed.push(format!("ip: {e}")),
        }
    }
    if std::path::Path::new("/sys/class/net/tunl0").exists() {
        let flushed = std::process::Command::new("ip")
            .args(["-4", "addr", "flush", "dev", "tunl0"])
            .status()
            .is_ok_and(|s| s.success());
        if flushed {
            println!("tunl0: its addresses removed");
        } else {
            failed.push("tunl0: its addresses could not be removed".into());
        }
    }
    if failed.is_empty() {
        println!("nothing of Brindle's is left on this host");
        Ok(())
    } else {
        anyhow::bail!("some steps failed: {}", failed.join("; "))
    }
}
