//! Real routing daemons inside a test's network namespaces (DESIGN §7): BIRD 2, GoBGP, FRR.
//! Each writes its files to a temporary directory of its own, runs in the foreground under a
//! [`ChildGuard`] (killed by PID on drop) and is queried through its own CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{ChildGuard, Netns};

/// Polls `f` every 100 ms until it returns Some, panicking with `what` after `timeout`.
/// `$BRINDLE_TIMEOUT_SCALE` (default 1) stretches it, for slow machines such as the TCG VM.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = timeout.mul_f64(timeout_scale());
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How much slower than this machine the current one is (`BRINDLE_TIMEOUT_SCALE`).
pub fn timeout_scale() -> f64 {
    std::env::var("BRINDLE_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s >= 1.0)
        .unwrap_or(1.0)
}

fn workdir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("brl-{tag}-"))
        .tempdir()
        .expect("temp dir");
    // FRR drops privileges to user frr, which must reach its files.
    let _ = Command::new("chmod").arg("755").arg(d.path()).status();
    d
}

fn output(mut c: Command) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Last lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// BIRD 2: `bird -f -c conf -s sock -P pid`.
pub struct Bird {
    _child: ChildGuard,
    pub dir: tempfile::TempDir,
}

impl Bird {
    pub fn start(ns: &Netns, conf: &str) -> Bird {
        Self::start_with(ns, conf, &[])
    }

    /// With extra flags, e.g. `-R` (graceful-restart recovery after a restart).
    pub fn start_with(ns: &Netns, conf: &str, flags: &[&str]) -> Bird {
        let dir = workdir("bird");
        Self::run(ns, dir, conf, flags)
    }

    fn run(ns: &Netns, dir: tempfile::TempDir, conf: &str, flags: &[&str]) -> Bird {
        let c = dir.path().join("bird.conf");
        std::fs::write(&c, conf).expect("write bird.conf");
        let sock = dir.path().join("bird.sock");
        let _ = std::fs::remove_file(&sock);
        let (c, s, p) = (
            c.display().to_string(),
            sock.display().to_string(),
            dir.path().join("bird.pid").display().to_string(),
        );
        let mut args = vec!["bird", "-f", "-c", &c, "-s", &s, "-P", &p];
        args.extend_from_slice(flags);
        let log_path = dir.path().join("bird.log");
        let child = ns
            .spawn_logged(&args, &log_path)
            .expect("start bird (install bird2)");
        let b = Bird { _child: child, dir };
        let start = Instant::now();
        while !b.birdc(&["show", "status"]).contains("Daemon is up") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "BIRD did not start: {}",
                tail(&log_path, 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    /// Kills this BIRD (SIGKILL: no NOTIFICATION, as a crash); its directory is kept for
    /// [`Bird::start_in`].
    pub fn kill(self) -> tempfile::TempDir {
        let Bird { _child, dir } = self;
        drop(_child);
        dir
    }

    /// Starts BIRD again in the directory of one that was killed.
    pub fn start_in(ns: &Netns, dir: tempfile::TempDir, conf: &str, flags: &[&str]) -> Bird {
        Self::run(ns, dir, conf, flags)
    }

    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.sock")
    }

    /// Writes a new configuration and has BIRD take it (`birdc configure`): sessions whose
    /// protocol is unchanged stay up. Returns what birdc said.
    pub fn reconfigure(&self, conf: &str) -> String {
        std::fs::write(self.dir.path().join("bird.conf"), conf).expect("write bird.conf");
        self.birdc(&["configure"])
    }

    /// `birdc -s sock <args>` (a unix socket: no need to enter the namespace).
    pub fn birdc(&self, args: &[&str]) -> String {
        let mut c = Command::new("birdc");
        c.arg("-s").arg(self.socket()).args(args);
        output(c)
    }
}

/// GoBGP: `gobgpd -f conf.toml -t toml --api-hosts 127.0.0.1:<port>`, driven with `gobgp`.
pub struct Gobgp {
    _child: ChildGuard,
    pub dir: tempfile::TempDir,
    ns: String,
    port: u16,
}

impl Gobgp {
    pub fn start(ns: &Netns, conf: &str) -> Gobgp {
        let dir = workdir("gobgp");
        Self::run(ns, dir, conf, &[])
    }

    fn run(ns: &Netns, dir: tempfile::TempDir, conf: &str, flags: &[&str]) -> Gobgp {
        let port = 50051;
        let c = dir.path().join("gobgpd.toml");
        std::fs::write(&c, conf).expect("write gobgpd.toml");
        let (c, api) = (c.display().to_string(), format!("127.0.0.1:{port}"));
        let mut args = vec!["gobgpd", "-f", &c, "-t", "toml", "--api-hosts", &api];
        args.extend_from_slice(flags);
        let child = ns
            .spawn_logged(&args, &dir.path().join("gobgpd.log"))
            .expect("start gobgpd (install gobgpd)");
        let g = Gobgp {
            _child: child,
            dir,
            ns: ns.name().to_string(),
            port,
        };
        wait_for("gobgpd's API", Duration::from_secs(10), || {
            g.gobgp(&["global"]).contains("AS:").then_some(())
        });
        g
    }

    /// Kills gobgpd (SIGKILL); its directory is kept for [`Gobgp::start_in`].
    pub fn kill(self) -> tempfile::TempDir {
        let Gobgp { _child, dir, .. } = self;
        drop(_child);
        dir
    }

    /// Starts gobgpd again in the directory of one that was killed, with extra flags
    /// (`-r`: restarting, for graceful restart).
    pub fn start_in(ns: &Netns, dir: tempfile::TempDir, conf: &str, flags: &[&str]) -> Gobgp {
        Self::run(ns, dir, conf, flags)
    }

    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    /// `gobgp -u 127.0.0.1 -p <port> <args>` inside the namespace.
    pub fn gobgp(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns,
            "gobgp",
            "-u",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(args);
        output(c)
    }
}

/// FRR's zebra and bgpd run directly (no systemd), sharing one config file.
pub struct Frr {
    _zebra: ChildGuard,
    _bgpd: ChildGuard,
    pub dir: tempfile::TempDir,
}

impl Frr {
    pub fn start(ns: &Netns, conf: &str) -> Frr {
        let dir = workdir("frr");
        Self::run(ns, dir, conf, &[])
    }

    /// With extra flags for bgpd (`-n`: do not install routes in the kernel).
    pub fn start_with(ns: &Netns, conf: &str, bgpd_flags: &[&str]) -> Frr {
        let dir = workdir("frr");
        Self::run(ns, dir, conf, bgpd_flags)
    }

    fn run(ns: &Netns, dir: tempfile::TempDir, conf: &str, bgpd_flags: &[&str]) -> Frr {
        let d = dir.path();
        let conf_path = d.join("frr.conf");
        std::fs::write(&conf_path, conf).expect("write frr.conf");
        let _ = Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(d)
            .status();
        let daemon = |name: &str, flags: &[&str]| {
            let bin = format!("/usr/lib/frr/{name}");
            let (conf, pid) = (
                conf_path.display().to_string(),
                d.join(format!("{name}.pid")).display().to_string(),
            );
            let (zserv, vty) = (
                d.join("zserv.api").display().to_string(),
                d.display().to_string(),
            );
            let mut args = vec![
                bin.as_str(),
                "-f",
                &conf,
                "-i",
                &pid,
                "-z",
                &zserv,
                "--vty_socket",
                &vty,
                "-u",
                "frr",
                "-g",
                "frr",
            ];
            args.extend_from_slice(flags);
            ns.spawn_logged(&args, &d.join(format!("{name}.log")))
                .unwrap_or_else(|e| panic!("start {name} (install frr): {e}"))
        };
        let zebra = daemon("zebra", &[]);
        wait_for("zebra's API socket", Duration::from_secs(10), || {
            d.join("zserv.api").exists().then_some(())
        });
        let bgpd = daemon("bgpd", bgpd_flags);
        let f = Frr {
            _zebra: zebra,
            _bgpd: bgpd,
            dir,
        };
        wait_for("FRR bgpd's vty", Duration::from_secs(15), || {
            f.vtysh(&["show bgp summary"])
                .contains("BGP router identifier")
                .then_some(())
        });
        f
    }

    /// Kills bgpd and zebra (SIGKILL); the directory is kept for [`Frr::start_in`].
    pub fn kill(self) -> tempfile::TempDir {
        let Frr {
            _zebra, _bgpd, dir, ..
        } = self;
        drop(_bgpd);
        drop(_zebra);
        dir
    }

    pub fn start_in(ns: &Netns, dir: tempfile::TempDir, conf: &str) -> Frr {
        Self::run(ns, dir, conf, &[])
    }

    /// bgpd's process ID.
    pub fn pid(&self) -> u32 {
        self._bgpd.0.id()
    }

    /// `vtysh --vty_socket DIR -c <cmd> -c <cmd>…`
    pub fn vtysh(&self, cmds: &[&str]) -> String {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket").arg(self.dir.path());
        for x in cmds {
            c.args(["-c", x]);
        }
        output(c)
    }
}

/// Two namespaces joined by a veth pair `v0`, with `a`/`b` as IPv4 /24 and IPv6 /64
/// addresses (DAD off, so they are usable at once).
pub fn link(x: &Netns, y: &Netns, a: (&str, &str), b: (&str, &str)) {
    x.veth("v0", y, "v0");
    for (ns, (v4, v6)) in [(x, a), (y, b)] {
        ns.ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "v0"]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "v0",
            "nodad",
        ]);
        ns.ok(&["ip", "link", "set", "v0", "up"]);
    }
}
