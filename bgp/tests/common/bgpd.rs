//! `brindle-bgpd` as a test runs it: inside a namespace, config and logs in a temp dir,
//! queried through its control socket, killed by PID when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use brindle_bgp::speaker::{PeerStatus, RibFilter, RibRoute};
use brindle_testsupport::daemons::{tail, wait_for};
use brindle_testsupport::{ChildGuard, Netns};

pub struct Bgpd {
    child: Option<ChildGuard>,
    pub dir: tempfile::TempDir,
}

impl Bgpd {
    /// Starts with `conf` (a `control_socket` line is added).
    pub fn start(ns: &Netns, conf: &str) -> Bgpd {
        let dir = tempfile::Builder::new()
            .prefix("brl-bgpd-")
            .tempdir()
            .expect("temp dir");
        Self::start_in(ns, dir, conf)
    }

    pub fn start_in(ns: &Netns, dir: tempfile::TempDir, conf: &str) -> Bgpd {
        Self::start_with(ns, dir, conf, &[])
    }

    /// With extra command-line flags, e.g. `-R` (start as a restarting speaker).
    pub fn start_with(ns: &Netns, dir: tempfile::TempDir, conf: &str, flags: &[&str]) -> Bgpd {
        let sock = dir.path().join("bgpd.sock");
        let _ = std::fs::remove_file(&sock);
        let path = dir.path().join("bgpd.toml");
        std::fs::write(
            &path,
            format!("control_socket = \"{}\"\n{conf}", sock.display()),
        )
        .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("bgpd.log"))
            .expect("log");
        let child = ns
            .command(&[
                env!("CARGO_BIN_EXE_brindle-bgpd"),
                "--config",
                &path.display().to_string(),
                "--log",
                "info,brindle_bgp=debug",
            ])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start brindle-bgpd");
        let b = Bgpd {
            child: Some(ChildGuard(child)),
            dir,
        };
        wait_for(
            "brindle-bgpd's control socket",
            Duration::from_secs(10),
            || UnixStream::connect(&sock).ok().map(|_| ()),
        );
        b
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.0.id())
    }

    pub fn log(&self) -> String {
        tail(&self.dir.path().join("bgpd.log"), 60)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bgpd.sock")
    }

    fn ask(&self, req: serde_json::Value) -> serde_json::Value {
        let mut s = UnixStream::connect(self.socket()).expect("control socket");
        s.write_all(format!("{req}\n").as_bytes()).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert!(v.get("error").is_none(), "control API: {v}");
        v["ok"].clone()
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        serde_json::from_value(self.ask(serde_json::json!({"peers": {}}))).expect("peers")
    }

    pub fn peer(&self, addr: &str) -> PeerStatus {
        let a: std::net::IpAddr = addr.parse().expect("address");
        self.peers()
            .into_iter()
            .find(|p| p.addr == a)
            .unwrap_or_else(|| panic!("no peer {addr}"))
    }

    pub fn rib(&self, f: RibFilter) -> Vec<RibRoute> {
        serde_json::from_value(self.ask(serde_json::json!({ "rib": f }))).expect("rib")
    }

    /// The best route for exactly `prefix`, if any.
    pub fn route(&self, prefix: &str) -> Option<RibRoute> {
        let p = prefix.parse().expect("prefix");
        self.rib(RibFilter {
            within: Some(p),
            best_only: true,
            ..RibFilter::default()
        })
        .into_iter()
        .find(|r| r.prefix == p)
    }

    pub fn wait_established(&self, addr: &str) {
        wait_for(
            &format!("session with {addr} established"),
            Duration::from_secs(30),
            || (self.peer(addr).state == "Established").then_some(()),
        );
    }

    /// SIGTERM, then waits for the process to exit; the directory is handed back.
    pub fn terminate(mut self) -> tempfile::TempDir {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.0.wait();
        }
        let Bgpd { dir, .. } = self;
        dir
    }
}
