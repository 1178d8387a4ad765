//! Network namespaces that a test creates and always removes, and commands run inside them.
//! Names carry the test process's PID and a counter, so parallel tests never collide.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <prefix>-<pid>-<n>`; loopback is brought up.
    pub fn new(prefix: &str) -> Netns {
        crate::sweep::once();
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip (install iproute2)");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a CNI runtime passes as CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip netns exec <ns> <cmd...>`, ready to be given env, stdin and spawned.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        c
    }

    pub fn run(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} in {}: {e}", self.name))
    }

    /// Runs and panics (with stderr) on failure; returns stdout.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j <args>` in this namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// A veth pair: `name` here, `peer_name` in `peer` (both left down).
    pub fn veth(&self, name: &str, peer: &Netns, peer_name: &str) {
        self.ok(&[
            "ip",
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "netns",
            peer.name(),
        ]);
    }

    /// Starts a daemon inside with its output (stdout and stderr) written to `log`; the
    /// guard kills it (by PID) when dropped.
    pub fn spawn_logged(&self, cmd: &[&str], log: &std::path::Path) -> std::io::Result<ChildGuard> {
        let out = std::fs::File::create(log)?;
        let child = self
            .command(cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(ChildGuard(child))
    }

    /// Starts a long-running command inside; the guard kills it (by PID) when dropped.
    pub fn spawn(&self, cmd: &[&str]) -> ChildGuard {
        let child = self
            .command(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} in {}: {e}", self.name));
        ChildGuard(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port inside a namespace that leads to a loopback address of the test's own
/// namespace, so a process in the namespace (a CNI plugin, a node agent) reaches the test's
/// etcd. The listening socket is made inside the namespace by a short-lived thread; the
/// forwarding itself runs on a thread of its own, stopped when this is dropped.
pub struct PortForward {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortForward {
    pub fn new(ns: &Netns, target: std::net::SocketAddr) -> PortForward {
        let path = ns.path();
        let listener = std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::other)?;
            let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .expect("namespace thread")
        .unwrap_or_else(|e| panic!("listening inside {}: {e}", ns.name()));
        let addr = listener.local_addr().expect("local addr");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        acc = listener.accept() => {
                            let Ok((mut inbound, _)) = acc else { continue };
                            tokio::spawn(async move {
                                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                                    // Without this, Nagle and delayed ACKs add 40 ms to each
                                    // small gRPC write through the forward.
                                    let _ = inbound.set_nodelay(true);
                                    let _ = out.set_nodelay(true);
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        PortForward {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
