//! What a killed test process left behind. A guard's drop removes its network namespace and
//! its etcd data directory, but a process ended by a timeout or SIGKILL runs no drop: its
//! namespaces stay, and its etcd's data stays in `/dev/shm` (memory, gigabytes after a few
//! killed benchmarks). Both carry the PID of the process that made them, so the next test
//! process removes those whose PID is gone. Nothing of a live process is touched, nothing
//! that is not named as ours (`brl…-<pid>-<n>`, `brindle-etcd-<pid>-…`).

use std::path::Path;
use std::process::Command;
use std::sync::Once;

/// Where `ip netns` keeps the names.
const NETNS_DIR: &str = "/var/run/netns";
/// Where [`crate::EtcdServer::start`] puts its data.
pub(crate) const SHM: &str = "/dev/shm";
pub(crate) const ETCD_PREFIX: &str = "brindle-etcd-";

/// Sweeps once per process (the first namespace or etcd it starts).
pub fn once() {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        sweep(Path::new(NETNS_DIR), Path::new(SHM));
    });
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The PID in a namespace name made by [`crate::Netns::new`]: `brl…-<pid>-<n>`.
fn netns_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let prefix = parts.next()?;
    n.parse::<u32>().ok()?;
    prefix.starts_with("brl").then_some(())?;
    pid.parse().ok()
}

/// The PID in an etcd data directory's name: `brindle-etcd-<pid>-<random>`.
fn etcd_pid(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(ETCD_PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

/// Removes what dead processes left in `netns_dir` and `shm`; returns what it removed.
fn sweep(netns_dir: &Path, shm: &Path) -> Vec<String> {
    let me = std::process::id();
    let dead = |pid: Option<u32>| pid.is_some_and(|p| p != me && !alive(p));
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut removed = vec![];
    for name in names(netns_dir) {
        if dead(netns_pid(&name)) {
            let ok = Command::new("ip")
                .args(["netns", "del", &name])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                removed.push(name);
            }
        }
    }
    for name in names(shm) {
        if dead(etcd_pid(&name)) && std::fs::remove_dir_all(shm.join(&name)).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_pid_and_nothing_else_does() {
        assert_eq!(netns_pid("brl-fab-3278-0"), Some(3278));
        assert_eq!(netns_pid("brlrr-12-7"), Some(12));
        assert_eq!(netns_pid("brl-start-peer-99-3"), Some(99));
        assert_eq!(netns_pid("other-3278-0"), None, "not ours");
        assert_eq!(netns_pid("brl-fab-x-0"), None);
        assert_eq!(netns_pid("brl-fab"), None);
        assert_eq!(etcd_pid("brindle-etcd-4711-AbC123"), Some(4711));
        assert_eq!(etcd_pid("brindle-etcd-AbC123"), None, "made before PIDs");
        assert_eq!(etcd_pid("brindle-etcd-tls-AbC123"), None);
    }

    /// A dead process's namespace and etcd directory go; a live one's stay.
    #[test]
    fn what_a_dead_process_left_is_removed_and_a_live_ones_is_not() {
        let mut child = Command::new("true").spawn().expect("true");
        let gone = child.id();
        child.wait().expect("wait");
        let live = std::process::id();
        let shm = tempfile::tempdir().expect("tempdir");
        let dead_ns = format!("brl-sweep-{gone}-0");
        let live_ns = format!("brl-sweep-{live}-0");
        for ns in [&dead_ns, &live_ns] {
            let out = Command::new("ip").args(["netns", "add", ns]).output();
            assert!(out.expect("ip").status.success(), "ip netns add {ns}");
        }
        let dead_dir = format!("{ETCD_PREFIX}{gone}-x");
        let live_dir = format!("{ETCD_PREFIX}{live}-x");
        for d in [&dead_dir, &live_dir] {
            std::fs::create_dir_all(shm.path().join(d).join("data")).expect("mkdir");
        }
        let removed = sweep(Path::new(NETNS_DIR), shm.path());
        let still = |ns: &str| Path::new(NETNS_DIR).join(ns).exists();
        let (dead_left, live_left) = (still(&dead_ns), still(&live_ns));
        let _ = Command::new("ip").args(["netns", "del", &live_ns]).output();
        let _ = Command::new("ip").args(["netns", "del", &dead_ns]).output();
        assert!(!dead_left, "a dead process's namespace is removed");
        assert!(live_left, "a live process's namespace stays");
        assert!(!shm.path().join(&dead_dir).exists());
        assert!(shm.path().join(&live_dir).exists());
        assert!(removed.contains(&dead_ns) && removed.contains(&dead_dir));
    }
}
