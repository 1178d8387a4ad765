//! Pods: a namespace wired by `brindle-cni`, called exactly as a container runtime calls it
//! (CNI_* environment, the network configuration on stdin, a pod netns path), with a small
//! TCP echo server in it so reachability is tested with real TCP.

use std::net::Ipv4Addr;
use std::process::{Output, Stdio};
use std::time::Duration;

use brindle_testsupport::{ChildGuard, CniCall, Netns};
use serde_json::{json, Value};

use crate::{binary, Datastore, Encap, Lab};

pub const NAMESPACE: &str = "default";
pub const PORT: u16 = 8080;

pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ns: Netns,
    /// The pod's labels (Services select on them).
    pub labels: std::collections::BTreeMap<String, String>,
    _server: ChildGuard,
}

/// The echo server (greets with the pod's name, then echoes) and the clients the tests use.
const ECHO: &str = r#"
import socket, sys, threading, time
mode = sys.argv[1]
if mode == "serve":
    # Greets with "<pod name> <client address>", then echoes; UDP on the same port answers
    # each datagram with the same greeting.
    name = sys.argv[2].encode()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[3]))); s.listen(128)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", int(sys.argv[3])))
    def udp():
        while True:
            d, a = u.recvfrom(2048); u.sendto(name + b" " + a[0].encode() + b"\n", a)
    threading.Thread(target=udp, daemon=True).start()
    def h(c):
        with c:
            c.sendall(name + b" " + c.getpeername()[0].encode() + b"\n")
            while True:
                d = c.recv(4096)
                if not d: return
                c.sendall(d)
    while True:
        c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
elif mode == "hello":
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
    f = c.makefile("rb"); print(f.readline().decode().strip())
elif mode == "many":
    # N connections one after another: one greeting (or "error <why>") per line.
    for _ in range(int(sys.argv[4])):
        try:
            c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
            print(c.makefile("rb").readline().decode().strip(), flush=True); c.close()
        except Exception as e:
            print("error %s" % e, flush=True)
elif mode == "udp":
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
    u.sendto(b"hi", (sys.argv[2], int(sys.argv[3]))); print(u.recvfrom(2048)[0].decode().strip())
elif mode == "stream":
    # One byte every 50 ms for the given seconds; each must come back within 2 s.
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
    f = c.makefile("rb"); f.readline(); c.settimeout(2)
    n = 0; end = time.time() + float(sys.argv[4])
    while time.time() < end:
        try:
            c.sendall(b"x")
            if c.recv(1) != b"x": print("broken: bad echo after %d" % n); sys.exit(1)
        except Exception as e:
            print("broken after %d round trips: %s" % (n, e)); sys.exit(1)
        n += 1; time.sleep(0.05)
    print("ok %d" % n)
"#;

impl Pod {
    pub fn server_pid(&self) -> u32 {
        self._server.0.id()
    }
}

impl Lab {
    fn echo_script(&self) -> String {
        let p = self.dir.path().join("echo.py");
        if !p.exists() {
            let _ = std::fs::write(&p, ECHO);
        }
        p.display().to_string()
    }

    /// The network configuration brindle-cni gets on `node` (network `k8s-pod-network`).
    pub fn cni_conf(&self, node: &str) -> Value {
        let n = self.node(node);
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "brindle-cni",
            "mtu": if self.spec.encap == Encap::None { 1500 } else { 1480 },
            "nodename": node,
            "log_level": "info",
            "log_file_path": n.dir.join("cni.log"),
            "ipam_lock_file": n.dir.join("ipam.lock"),
            "ipam_socket": n.ipam_socket(),
            "ipam": {"type": "brindle-ipam"}
        });
        match self.spec.datastore {
            Datastore::Etcd => {
                c["datastore_type"] = "etcd".into();
                c["etcd_endpoints"] = format!("{}://{}", self.etcd_scheme(), n.forward.addr).into();
                if let Some(t) = self
                    .etcd
                    .as_ref()
                    .and_then(brindle_testsupport::EtcdServer::tls)
                {
                    c["etcd_ca_cert_file"] = t.ca.display().to_string().into();
                    c["etcd_cert_file"] = t.client_cert.display().to_string().into();
                    c["etcd_key_file"] = t.client_key.display().to_string().into();
                }
            }
            Datastore::Kubernetes => {
                c["datastore_type"] = "kubernetes".into();
                c["kubeconfig"] = n.dir.join("kubeconfig").display().to_string().into();
            }
        }
        c
    }

    /// Runs brindle-cni in the node's namespace; Ok(result) or Err(the error JSON / text).
    pub fn cni(
        &self,
        command: &str,
        node: &str,
        pod: &str,
        cid: &str,
        netns: &str,
    ) -> Result<Value, String> {
        let n = self.node(node);
        let bin = binary("brindle-cni").display().to_string();
        let out = CniCall {
            command,
            container: cid,
            netns: Some(netns),
            pod: Some((NAMESPACE, pod)),
            env: &[],
        }
        .run(
            n.ns.command(&[&bin]),
            self.cni_conf(node).to_string().as_bytes(),
        )
        .map_err(|e| format!("running brindle-cni: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        if out.status.success() {
            Ok(v)
        } else {
            Err(if v.is_null() {
                text + &String::from_utf8_lossy(&out.stderr)
            } else {
                v.to_string()
            })
        }
    }

    /// Creates a pod on a node: namespace, CNI ADD, echo server. Returns its address.
    pub fn pod_add(&mut self, name: &str, node: &str) -> Result<Ipv4Addr, String> {
        self.pod_add_from(name, node, None)
    }

    /// The same, with the pod asking for a pool (annotation `brindle.dev/ipv4pools`).
    pub fn pod_add_from(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
    ) -> Result<Ipv4Addr, String> {
        self.pod_add_with(name, node, pool, &mut |_| {})
    }

    /// The general form: `wired` is called with the pod's address as soon as the CNI ADD has
    /// returned, before the echo server starts (benchmarks time reachability from there).
    pub fn pod_add_with(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
        wired: &mut dyn FnMut(Ipv4Addr),
    ) -> Result<Ipv4Addr, String> {
        self.pod_add_full(name, node, pool, &[], wired)
    }

    /// A pod with labels (Services select on them); its Services' endpoints follow.
    pub fn pod_add_labeled(
        &mut self,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<Ipv4Addr, String> {
        self.pod_add_full(name, node, None, labels, &mut |_| {})
    }

    fn pod_add_full(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
        labels: &[(&str, &str)],
        wired: &mut dyn FnMut(Ipv4Addr),
    ) -> Result<Ipv4Addr, String> {
        if self.pods.contains_key(name) {
            return Err(format!("pod {name} exists"));
        }
        let ann = pool.map(|p| ("brindle.dev/ipv4pools".to_string(), json!([p]).to_string()));
        // The kubelet's Pod exists before the runtime calls CNI; in etcd mode a Pod record
        // carries the annotation the same way.
        if self.spec.datastore == Datastore::Kubernetes || ann.is_some() {
            self.write_pod(name, node, None, ann)?;
        }
        let ns = Netns::new("brl-pod");
        let cid = format!(
            "{:016x}",
            brindle_ipam::block::stable_hash(&format!("{name}-{}", ns.name()))
        );
        let res = self.cni("ADD", node, name, &cid, &ns.path())?;
        let ip: Ipv4Addr = res["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("CNI result without an IPv4 address: {res}"))?;
        wired(ip);
        if self.spec.datastore == Datastore::Kubernetes {
            self.write_pod(name, node, Some(ip), None)?; // the kubelet reports the pod's IP
        }
        let script = self.echo_script();
        let server = ns.spawn(&["python3", &script, "serve", name, &PORT.to_string()]);
        self.pods.insert(
            name.to_string(),
            Pod {
                name: name.to_string(),
                node: node.to_string(),
                ip,
                container_id: cid,
                ns,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                _server: server,
            },
        );
        // The server needs a moment to listen.
        let p = &self.pods[name];
        for _ in 0..50 {
            if p.ns
                .run(&["python3", &script, "hello", "127.0.0.1", &PORT.to_string()])
                .status
                .success()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.services.is_empty() {
            self.sync_endpoints()?;
        }
        Ok(ip)
    }

    fn write_pod(
        &self,
        name: &str,
        node: &str,
        ip: Option<Ipv4Addr>,
        ann: Option<(String, String)>,
    ) -> Result<(), String> {
        use k8s_openapi::api::core::v1::{Pod as KPod, PodIP, PodSpec, PodStatus};
        let api = self.store.namespaced::<KPod>(NAMESPACE);
        self.block_on(async {
            let mut p = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some(NAMESPACE.into());
            if let Some((k, v)) = ann {
                p.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(k, v);
            }
            p.spec = Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            });
            if let Some(ip) = ip {
                p.status = Some(PodStatus {
                    pod_ip: Some(ip.to_string()),
                    pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
                    ..Default::default()
                });
            }
            let r = if p.metadata.resource_version.is_some() {
                api.update(&p).await
            } else {
                api.create(&p).await
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// CNI DEL, then the namespace goes.
    pub fn pod_del(&mut self, name: &str) -> Result<(), String> {
        let p = self
            .pods
            .remove(name)
            .ok_or_else(|| format!("no pod {name}"))?;
        self.cni("DEL", &p.node, name, &p.container_id, &p.ns.path())?;
        if !self.services.is_empty() {
            self.sync_endpoints()?;
        }
        if self.spec.datastore == Datastore::Kubernetes {
            let api = self
                .store
                .namespaced::<k8s_openapi::api::core::v1::Pod>(NAMESPACE);
            let _ = self.block_on(api.delete(name, None));
        }
        Ok(())
    }

    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Result<Output, String> {
        let p = self.pods.get(pod).ok_or_else(|| format!("no pod {pod}"))?;
        Ok(p.ns.run(cmd))
    }

    /// A TCP connection from one pod to another pod's echo server: Ok(the name it greets
    /// with) or Err(why not).
    pub fn reach(&self, from: &str, to: &str) -> Result<String, String> {
        let ip = self
            .pods
            .get(to)
            .ok_or_else(|| format!("no pod {to}"))?
            .ip
            .to_string();
        let script = self.echo_script();
        let out = self.exec(from, &["python3", &script, "hello", &ip, &PORT.to_string()])?;
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            Ok(line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_string())
        }
    }

    /// A client in any namespace of the lab: `mode` is `hello` (one TCP connection), `udp`
    /// (one datagram) or `many` (`count` TCP connections). Each answer is
    /// (server pod, the client address it saw) or Err(why).
    pub fn client(
        &self,
        ns: &Netns,
        mode: &str,
        ip: Ipv4Addr,
        port: u16,
        count: usize,
    ) -> Vec<Result<(String, String), String>> {
        let script = self.echo_script();
        let out = ns.run(&[
            "python3",
            &script,
            mode,
            &ip.to_string(),
            &port.to_string(),
            &count.to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut v: Vec<Result<(String, String), String>> = text
            .lines()
            .map(|l| match l.split_once(' ') {
                Some(("error", why)) => Err(why.to_string()),
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(format!("unexpected answer {l:?}")),
            })
            .collect();
        if v.is_empty() {
            let err = String::from_utf8_lossy(&out.stderr);
            v.push(Err(err.lines().last().unwrap_or("no answer").to_string()));
        }
        v
    }

    /// Starts a TCP stream from one pod to another for `secs`; [`Stream::finish`] says
    /// "ok N" (every round trip within 2 s) or "broken …". Killed if dropped unfinished.
    pub fn stream(&self, from: &str, to: &str, secs: u32) -> Stream {
        let ip = self.pods[to].ip.to_string();
        let script = self.echo_script();
        let (port, secs) = (PORT.to_string(), secs.to_string());
        let child = self.pods[from]
            .ns
            .command(&["python3", &script, "stream", &ip, &port, &secs])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the stream client");
        Stream(ChildGuard(child))
    }
}

pub struct Stream(ChildGuard);

impl Stream {
    /// Waits for the client and returns what it printed.
    pub fn finish(mut self) -> String {
        use std::io::Read;
        let mut out = String::new();
        let child = &mut self.0 .0;
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        let _ = child.wait();
        out.trim().to_string()
    }
}
