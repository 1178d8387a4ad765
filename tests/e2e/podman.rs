//! brindle-cni under a real container runtime: Debian's podman (CNI backend, libcni) on a lab
//! node, with the node's brindle-node agent running beside it.
//!
//! podman runs in a private mount namespace (`unshare --mount --propagation slave`, then the
//! node's network namespace entered with `nsenter`, not `ip netns exec`, which remounts /sys)
//! held open by one process for the whole test, so the network namespaces podman mounts stay
//! visible between commands. In it: cgroups off, a private root, runroot, tmp dir, CNI config
//! dir and CNI cache (bound over /var/lib/cni; the agent reads the same directory through
//! `--cni-cache-dir`), and an image imported from busybox-static. Nothing is pulled and nothing
//! of podman's reaches the host's mount or network namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use brindle_api::IPAMBlock;
use brindle_lab::{binary, Lab, LabSpec};
use brindle_testsupport::daemons::{tail, wait_for};
use brindle_testsupport::ChildGuard;
use serde_json::Value;

use crate::common::*;

const IMAGE: &str = "localhost/brindle-busybox";

const GET: &str = r#"#!/bin/sh
for i in 1 2 3 4 5 6 7 8 9 10; do
  out=$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 "$1" 8080 | tail -n 1)
  [ -n "$out" ] && { echo "$out"; exit 0; }
  sleep 0.3
done
echo "no answer from $1:8080" >&2
exit 1
"#;

struct Podman {
    dir: PathBuf,
    holder: Option<ChildGuard>,
    pid: u32,
}

impl Podman {
    /// podman on `node`, with one CNI network per (name, config).
    fn new(lab: &Lab, node: &str, networks: &[&str]) -> Podman {
        let n = lab.node(node);
        let dir = lab.dir.path().join(format!("podman-{node}"));
        for d in [
            "root",
            "runroot",
            "tmp",
            "net.d",
            "plugins",
            "rootfs/bin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("podman dirs");
        }
        let cache = n.cni_cache_dir();
        std::fs::create_dir_all(&cache).expect("cni cache dir");
        for net in networks {
            let mut c = lab.cni_conf(node);
            c["name"] = Value::from(*net);
            let list = serde_json::json!({
                "cniVersion": c["cniVersion"].clone(),
                "name": net,
                "plugins": [c],
            });
            std::fs::write(dir.join(format!("net.d/{net}.conflist")), list.to_string())
                .expect("conflist");
        }
        std::os::unix::fs::symlink(binary("brindle-cni"), dir.join("plugins/brindle-cni"))
            .expect("plugin link");
        std::fs::copy("/usr/lib/cni/loopback", dir.join("plugins/loopback"))
            .expect("the loopback plugin (containernetworking-plugins)");
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ncgroups = \"disabled\"\ndefault_ulimits = []\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\ntmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/plugins\"]\n\
                 network_config_dir = \"{d}/net.d\"\n",
                d = dir.display()
            ),
        )
        .expect("containers.conf");
        // The image: busybox-static and a page for httpd.
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
            .expect("busybox (busybox-static)");
        for applet in ["sh", "sleep", "ip", "nc", "httpd", "true", "tail", "printf"] {
            let _ = std::os::unix::fs::symlink("busybox", dir.join(format!("rootfs/bin/{applet}")));
        }
        std::fs::write(dir.join("rootfs/www/index.html"), "hi\n").expect("page");
        // `get IP`: the page's body from IP:8080 (busybox's wget needs NSS; nc does not).
        let get = dir.join("rootfs/bin/get");
        std::fs::write(&get, GET).expect("get script");
        std::fs::set_permissions(&get, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod get");

        let script = format!(
            "set -e\n\
             umount /sys/fs/cgroup/unified 2>/dev/null || true\n\
             mount -t tmpfs brindle-podman /var/lib\n\
             mkdir /var/lib/cni\n\
             mount --bind {cache} /var/lib/cni\n\
             echo ready\n\
             exec sleep 100000\n",
            cache = cache.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "--", "nsenter"])
            .arg(format!("--net={}", n.ns.path()))
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let pid = holder.id();
        let mut line = String::new();
        use std::io::BufRead;
        let out = holder.stdout.take().expect("holder stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("holder ready");
        let p = Podman {
            dir,
            holder: Some(ChildGuard(holder)),
            pid,
        };
        assert_eq!(
            line.trim(),
            "ready",
            "the podman mount namespace did not set up"
        );
        let tar = p.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(p.dir.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success());
        p.ok(&["import", &tar.display().to_string(), IMAGE]);
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.display().to_string();
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "-n", "--", "podman"])
            .args([
                "--root",
                &format!("{d}/root"),
                "--runroot",
                &format!("{d}/runroot"),
            ])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .args(args)
            .env("CONTAINERS_CONF", format!("{d}/containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn id(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.Id}}", name])
    }

    /// The container's IPv4 addresses by interface.
    fn addrs(&self, name: &str) -> BTreeMap<String, String> {
        let out = self.ok(&["exec", name, "ip", "-4", "-o", "addr", "show"]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let ifname = f.get(1)?.to_string();
                let ip = f.get(3)?.split('/').next()?.to_string();
                (ifname != "lo").then_some((ifname, ip))
            })
            .collect()
    }

    /// Starts busybox httpd (port 8080, page "hi") as container `name` on `network`.
    fn httpd(&self, name: &str, network: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            IMAGE,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ]);
    }

    /// The container's global IPv6 addresses by interface.
    fn addrs6(&self, name: &str) -> BTreeMap<String, String> {
        let out = self.ok(&[
            "exec", name, "ip", "-6", "-o", "addr", "show", "scope", "global",
        ]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let ifname = f.get(1)?.to_string();
                let ip = f.get(3)?.split('/').next()?.to_string();
                Some((ifname, ip))
            })
            .collect()
    }

    /// Fetches the page of the httpd container at `ip` from a new container on `network`.
    fn fetch(&self, network: &str, ip: &str) -> String {
        let url = format!("{ip}:8080");
        let o = self.run(&["run", "--rm", "--network", network, IMAGE, "get", ip]);
        if !o.status.success() {
            eprintln!(
                "fetch {url} from {network}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        // Anything still running in our mount namespace (conmon, a container) goes with it.
        let ours = std::fs::read_link(format!("/proc/{}/ns/mnt", self.pid)).ok();
        if let (Some(ours), Ok(procs)) = (ours, std::fs::read_dir("/proc")) {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pid as u32 == self.pid {
                    continue;
                }
                if std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .ok()
                    .as_ref()
                    == Some(&ours)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        self.holder.take(); // kills the holder: the mount namespace goes
    }
}

/// Pod allocations of the lab, as (container ID, interface) → (address, network).
fn attachments(lab: &Lab) -> BTreeMap<(String, String), (String, String)> {
    let blocks = lab
        .block_on(lab.store.all::<IPAMBlock>().list())
        .expect("blocks")
        .items;
    let mut out = BTreeMap::new();
    for b in blocks {
        for a in brindle_ipam::block::allocations(&b.spec) {
            if a.attrs.get("type").map(String::as_str) != Some("pod") {
                continue;
            }
            let g = |k: &str| a.attrs.get(k).cloned().unwrap_or_default();
            out.insert(
                (g("containerID"), g("interface")),
                (a.ip.to_string(), g("network")),
            );
        }
    }
    out
}

fn host_veths(lab: &Lab, node: &str) -> Vec<String> {
    let out = lab.node(node).ns.ok(&["ip", "-o", "link", "show"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("brl"))
        .collect()
}

fn root_has_our_traces() -> Vec<String> {
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    let routes = Command::new("ip")
        .args(["route", "show", "10.244.0.0/16"])
        .output()
        .expect("ip");
    let mut bad: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(str::to_owned))
        .filter(|n| n.starts_with("brl") || n.starts_with("cni-podman"))
        .collect();
    bad.extend(
        String::from_utf8_lossy(&routes.stdout)
            .lines()
            .map(str::to_owned),
    );
    bad
}

#[test]
fn podman_runs_containers_on_one_and_two_brindle_networks_and_leaks_nothing() {
    let spec = LabSpec {
        nodes: 1,
        workload_gc_grace_seconds: 2,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let node = "node-0";
        // podman, unlike the kubelet, does not retry an ADD the plugin refuses because the
        // node's dataplane is not programmed yet: start once it is.
        let ready = lab.node(node).dataplane_ready_file();
        wait_for(
            "the agent's first dataplane sync",
            Duration::from_secs(60),
            || ready.exists().then_some(()),
        );
        let pm = Podman::new(lab, node, &["a", "b"]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(lab, &pm, node)));
        if let Err(e) = r {
            eprintln!(
                "---- brindle-cni log (tail) ----\n{}",
                tail(&lab.node(node).dir.join("cni.log"), 40)
            );
            std::panic::resume_unwind(e);
        }
    });
    assert!(
        root_has_our_traces().is_empty(),
        "{:?}",
        root_has_our_traces()
    );
}

/// podman on a dual-stack lab node: the container gets an address of each family from one
/// brindle network (the CNI result lists both), its IPv6 default route is the host veth's
/// link-local address, and another container fetches its page over IPv6.
#[test]
fn podman_runs_a_dual_stack_container() {
    let spec = LabSpec {
        nodes: 1,
        ip_family: brindle_lab::IpFamily::Dual,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let node = "node-0";
        let pm = Podman::new(lab, node, &["a"]);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pm.httpd("srv", "a");
            let v4 = pm.addrs("srv");
            let v6 = pm.addrs6("srv");
            assert!(v4["eth0"].starts_with("10.244."), "{v4:?}");
            assert!(v6["eth0"].starts_with("fd00:10:244:"), "{v6:?}");
            let route = pm.ok(&["exec", "srv", "ip", "-6", "route", "show", "default"]);
            assert!(route.contains("via fe80::ecee:eeff:feee:eeee"), "{route}");
            assert_eq!(pm.fetch("a", &v4["eth0"]), "hi");
            assert_eq!(pm.fetch("a", &v6["eth0"]), "hi");
            // The agent knows both addresses as the container's (its IPAM attributes).
            let srv = pm.id("srv");
            let blocks = lab
                .block_on(lab.store.all::<IPAMBlock>().list())
                .expect("blocks")
                .items;
            let held: Vec<String> = blocks
                .iter()
                .flat_map(|b| brindle_ipam::block::allocations(&b.spec))
                .filter(|a| a.attrs.get("containerID") == Some(&srv))
                .map(|a| a.ip.to_string())
                .collect();
            assert!(
                held.contains(&v4["eth0"]) && held.contains(&v6["eth0"]),
                "{held:?}"
            );
        }));
        if let Err(e) = r {
            eprintln!(
                "---- brindle-cni log (tail) ----\n{}",
                tail(&lab.node(node).dir.join("cni.log"), 40)
            );
            std::panic::resume_unwind(e);
        }
    });
}

fn scenario(lab: &mut Lab, pm: &Podman, node: &str) {
    // One network: an httpd container and a client, pod to pod.
    pm.httpd("srv", "a");
    let srv = pm.id("srv");
    let srv_addrs = pm.addrs("srv");
    assert_eq!(srv_addrs.len(), 1, "{srv_addrs:?}");
    let srv_ip = srv_addrs["eth0"].clone();
    assert!(srv_ip.starts_with("10.244."), "{srv_ip}");
    assert_eq!(pm.fetch("a", &srv_ip), "hi");
    let all = attachments(lab);
    assert_eq!(
        all[&(srv.clone(), "eth0".into())],
        (srv_ip.clone(), "a".into())
    );
    assert!(
        lab.block_on(
            lab.store
                .all::<brindle_api::IPAMHandle>()
                .get(&format!("a.{srv}"))
        )
        .expect("handle")
        .is_some(),
        "handle a.<containerID>"
    );

    // Two networks on one container: two addresses, two interfaces, two handles.
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "a",
        "--network",
        "b",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let two = pm.id("two");
    let two_addrs = pm.addrs("two");
    assert_eq!(two_addrs.len(), 2, "both interfaces are up: {two_addrs:?}");
    let ips: Vec<&String> = two_addrs.values().collect();
    assert_ne!(ips[0], ips[1], "each network gave its own address");
    let mine: Vec<_> = attachments(lab)
        .into_iter()
        .filter(|((c, _), _)| *c == two)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let nets: Vec<&str> = mine.iter().map(|(_, (_, n))| n.as_str()).collect();
    assert!(nets.contains(&"a") && nets.contains(&"b"), "{nets:?}");
    for ((_, ifname), (ip, _)) in &mine {
        assert_eq!(
            two_addrs.get(ifname),
            Some(ip),
            "IPAM and the container agree on {ifname}"
        );
    }
    // From the two-network container to the server, over its primary interface.
    let o = pm.ok(&["exec", "two", "get", &srv_ip]);
    assert_eq!(o, "hi");

    // Connect and disconnect a second network on a running container.
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "a",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let c1 = pm.id("c1");
    let c1_ip = pm.addrs("c1")["eth0"].clone();
    pm.ok(&["network", "connect", "b", "c1"]);
    let after = pm.addrs("c1");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after["eth0"], c1_ip, "connecting b left eth0 alone");
    let b_ip = after
        .iter()
        .find(|(k, _)| *k != "eth0")
        .map(|(_, v)| v.clone())
        .expect("b's interface");
    pm.ok(&["network", "disconnect", "b", "c1"]);
    let after = pm.addrs("c1");
    assert_eq!(
        after,
        BTreeMap::from([("eth0".to_string(), c1_ip.clone())]),
        "only b's interface went"
    );
    let c1_allocs: Vec<_> = attachments(lab)
        .into_iter()
        .filter(|((c, _), _)| *c == c1)
        .collect();
    assert_eq!(
        c1_allocs.len(),
        1,
        "b's address was released, a's kept: {c1_allocs:?}"
    );
    assert!(!attachments(lab).values().any(|(ip, _)| *ip == b_ip));
    let o = pm.ok(&["exec", "c1", "get", &srv_ip]);
    assert_eq!(o, "hi", "c1 still talks after the disconnect");

    // Reload: the runtime tears the attachment down and sets it up again.
    pm.ok(&["network", "reload", "c1"]);
    let reloaded = pm.addrs("c1");
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    let o = pm.ok(&["exec", "c1", "get", &srv_ip]);
    assert_eq!(o, "hi", "c1 talks after a reload");
    assert_eq!(
        attachments(lab)
            .iter()
            .filter(|((c, _), _)| *c == c1)
            .count(),
        1
    );

    // 20 run/rm cycles leave no address and no veth behind.
    let before = (attachments(lab).len(), host_veths(lab, node).len());
    for i in 0..20 {
        pm.ok(&[
            "run",
            "--rm",
            "--name",
            &format!("cycle{i}"),
            "--network",
            "a",
            IMAGE,
            "true",
        ]);
    }
    assert_eq!(
        (attachments(lab).len(), host_veths(lab, node).len()),
        before
    );

    // DEL while the datastore is down: the runtime moves on, the address stays allocated;
    // the agent releases it once the container is provably gone, and nothing else.
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "orphan",
        "--network",
        "a",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let orphan = pm.id("orphan");
    let orphan_ip = pm.addrs("orphan")["eth0"].clone();
    std::thread::sleep(Duration::from_secs(3)); // older than the agent's grace period
    lab.stop_etcd();
    let stop = pm.run(&["stop", "-t", "0", "orphan"]);
    let stop_err = String::from_utf8_lossy(&stop.stderr).to_string();
    pm.ok(&["rm", "orphan"]);
    lab.start_etcd();
    assert!(
        attachments(lab).contains_key(&(orphan.clone(), "eth0".into())),
        "the failed DEL left the address allocated (podman said: {stop_err})"
    );
    wait_for(
        "the agent to release the orphan's address",
        Duration::from_secs(60),
        || (!attachments(lab).contains_key(&(orphan.clone(), "eth0".into()))).then_some(()),
    );
    // The release is in the datastore a moment before the agent logs it: wait for the line.
    let gone_line = |log: &str| {
        log.lines().any(|l| {
            l.contains("released the address of a container that is gone") && l.contains(&orphan_ip)
        })
    };
    let log = wait_for(
        "the agent to log the release",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(lab.node(node).log()).unwrap_or_default();
            gone_line(&log).then_some(log)
        },
    );
    eprintln!(
        "podman stop with the datastore down said: {}",
        stop_err.trim()
    );
    for l in log.lines().filter(|l| l.contains("container that is gone")) {
        eprintln!("agent: {l}");
    }
    let left = attachments(lab);
    for (c, ifname) in [(&srv, "eth0"), (&c1, "eth0")] {
        assert!(
            left.contains_key(&(c.clone(), ifname.into())),
            "a live container kept its address"
        );
    }
    assert_eq!(left.iter().filter(|((c, _), _)| *c == two).count(), 2);
    assert_eq!(pm.fetch("a", &srv_ip), "hi", "and still works");
}
