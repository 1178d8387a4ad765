//! `brindle-node --cleanup` (kube-proxy's `--cleanup`): takes off this host what agents left,
//! so that a node whose DaemonSet was deleted is as it was — our iptables chains, jumps and
//! `brl40…` ipsets in both backends, the nftables table `ip brindle`, every route of ours
//! (`proto bird`, both families: other nodes' blocks and the blackholes for our own), and
//! tunl0's address (the device itself is the kernel's while the ipip module is loaded).
//! It touches nothing else and leaves the datastore alone: the node's record, blocks and
//! tunnel address are freed by the controller's garbage collection, as for any node gone.

use brindle_felix_lite::iptables::{Backend, Runner, Writer};
use brindle_felix_lite::nft;

/// Runs every step, says what each removed, and fails at the end if any step failed.
pub fn run(runner: &Runner) -> anyhow::Result<()> {
    let mut failed = vec![];
    for b in [Backend::Legacy, Backend::Nft] {
        if runner.backend(b.name()).is_err() {
            println!("iptables-{}: not usable here, nothing of ours", b.name());
            continue;
        }
        match Writer::new(b, runner.clone()).remove_all() {
            Ok(r) => println!(
                "iptables-{}: removed {} chains and {} jumps of ours, and our ipsets",
                b.name(),
                r.chains_deleted,
                r.jumps_removed
            ),
            Err(e) => failed.push(format!("iptables-{}: {e}", b.name())),
        }
    }
    match nft::writer::Writer::new(runner.clone()).remove() {
        Ok(true) => println!("nftables: removed table ip brindle"),
        Ok(false) => println!("nftables: no table ip brindle"),
        Err(brindle_felix_lite::iptables::IptablesError::Spawn { .. }) => {
            println!("nftables: no nft here, nothing of ours")
        }
        Err(e) => failed.push(format!("nftables: {e}")),
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
            .args(["addr", "flush", "dev", "tunl0"])
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
