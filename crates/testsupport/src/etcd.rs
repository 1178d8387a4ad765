//! A real etcd (Debian's `etcd-server`) for tests and benchmarks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// One single-member etcd on 127.0.0.1. Dropping it kills the process (by its PID) and
/// removes the data directory.
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// With TLS: the certificates, and a plain port for /health.
    tls: Option<EtcdTls>,
    metrics_port: u16,
}

/// The PEM files of an etcd that requires client certificates: the CA, etcd's own pair
/// (for 127.0.0.1 and localhost) and a client pair signed by the same CA. `stranger_*` is a
/// client pair from another CA, which etcd must refuse.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl EtcdTls {
    /// Makes the certificates in `dir` with the `openssl` tool (P-256 keys, valid 2 days).
    pub fn generate(dir: &Path) -> Result<EtcdTls, String> {
        let p = |n: &str| dir.join(n);
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("cannot run openssl (Debian's openssl package): {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "stranger-ca"] {
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=brindle-test-{ca}"),
            );
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            run(&a)?;
        }
        let leaf = |name: &str, ca: &str, ext: &str| -> Result<(), String> {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut a = vec!["req"];
            a.extend(ec);
            let subj = format!("/CN={name}");
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&a)?;
            let extfile = format!("{name}.ext");
            std::fs::write(dir.join(&extfile), ext).map_err(|e| e.to_string())?;
            let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ])
        };
        leaf(
            "server",
            "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        leaf("client", "ca", "extendedKeyUsage=clientAuth\n")?;
        leaf("stranger", "stranger-ca", "extendedKeyUsage=clientAuth\n")?;
        Ok(EtcdTls {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            stranger_cert: p("stranger.crt"),
            stranger_key: p("stranger.key"),
        })
    }
}

/// The etcd binary: `$BRINDLE_ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("BRINDLE_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

impl EtcdServer {
    /// Starts etcd with its data in memory (`/dev/shm` when there is one): fast, for tests.
    pub fn start() -> Self {
        crate::sweep::once();
        let base = Path::new(crate::sweep::SHM);
        let dir = if base.is_dir() {
            // The PID in the name: what a killed test leaves is found by the next one
            // ([`crate::sweep`]).
            tempfile::Builder::new()
                .prefix(&format!(
                    "{}{}-",
                    crate::sweep::ETCD_PREFIX,
                    std::process::id()
                ))
                .tempdir_in(base)
        } else {
            tempfile::Builder::new().prefix("brindle-etcd-").tempdir()
        };
        Self::start_in(dir.expect("temporary directory for etcd"), false)
    }

    /// Starts etcd that serves https only and requires a client certificate signed by its
    /// CA (`--client-cert-auth`), as a production etcd for Calico is set up. The files are
    /// in [`Self::tls`].
    pub fn start_tls() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brindle-etcd-tls-")
            .tempdir()
            .expect("temporary directory for etcd");
        Self::start_in(dir, true)
    }

    /// The certificates of an etcd started with [`Self::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Starts etcd with its data on the disk under the system temp dir: for benchmarks,
    /// so fsync costs what it costs in production.
    pub fn start_on_disk() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brindle-etcd-")
            .tempdir()
            .expect("temporary directory for etcd");
        Self::start_in(dir, false)
    }

    fn start_in(dir: tempfile::TempDir, tls: bool) -> Self {
        let tls = tls.then(|| {
            EtcdTls::generate(dir.path()).unwrap_or_else(|e| panic!("etcd certificates: {e}"))
        });
        let mut s = EtcdServer {
            child: None,
            dir,
            client_port: 0,
            peer_port: 0,
            tls,
            metrics_port: 0,
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            s.client_port = free_port().expect("free loopback port");
            s.peer_port = free_port().expect("free loopback port");
            s.metrics_port = free_port().expect("free loopback port");
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => {
                    // Most likely a port was taken in between; start over with new ones.
                    s.stop();
                    let _ = std::fs::remove_dir_all(s.dir.path().join("data"));
                    last_err = e;
                }
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = etcd_binary();
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&bin);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                // Users' tokens expire after 2 s idle, so a test sees a client log in again.
                .arg("--auth-token-ttl")
                .arg("2")
                // /health in plain HTTP for the readiness check (the client port wants a
                // certificate).
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", self.metrics_port));
        }
        let child = cmd
            .arg("--name")
            .arg("brindle-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("brindle-test={peer}"))
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (install Debian's etcd-server, as .ci/run does, or set BRINDLE_ETCD_BIN)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("etcd exited ({status}): {}", self.log_tail()));
                }
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd not healthy after {limit:?}: {}",
            self.log_tail()
        ))
    }

    fn healthy(&self) -> bool {
        let port = if self.tls.is_some() {
            self.metrics_port
        } else {
            self.client_port
        };
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL to its PID) and starts it again on the same ports and data:
    /// clients see a dropped connection, and the data survives.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("etcd did not come back after restart: {e}");
        }
    }

    /// Kills etcd and waits for it; the data directory stays until the guard is dropped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
