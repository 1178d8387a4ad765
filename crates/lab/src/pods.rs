//! Pods: a namespace wired by `brindle-cni`, called exactly as a container runtime calls it
//! (CNI_* environment, the network configuration on stdin, a pod netns path), with a small
//! TCP echo server in it so reachability is tested with real TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Output, Stdio};
use std::time::Duration;

use brindle_testsupport::{ChildGuard, CniCall, Netns};
use serde_json::{json, Value};

use crate::{binary, Datastore, Encap, Lab};

pub const NAMESPACE: &str = "default";
pub const PORT: u16 = 8080;
/// The upstream NetworkPolicy model's ports: each pod serves TCP and UDP on both, with
/// container ports named `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`.
pub const MODEL_PORTS: [u16; 2] = [80, 81];

/// A lab pod's key: `NAME` (in `default`) or `NAMESPACE/NAME`.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((NAMESPACE, key))
}

pub struct Pod {
    /// The lab's key (`NAME` or `NAMESPACE/NAME`).
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// The pod's IPv4 address (none in an IPv6-only lab).
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address (dual-stack and IPv6-only labs).
    pub ip6: Option<Ipv6Addr>,
    pub container_id: String,
    pub ns: Netns,
    /// The pod's labels (Services select on them).
    pub labels: std::collections::BTreeMap<String, String>,
    _server: ChildGuard,
}

impl Pod {
    /// The pod's IPv4 address (a test of an IPv4 or dual-stack lab).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip
            .unwrap_or_else(|| panic!("pod {} has no IPv4 address (an IPv6-only lab)", self.name))
    }

    /// Its address of the lab's first family (Kubernetes' `status.podIP`): IPv4, or IPv6 in
    /// an IPv6-only lab.
    pub fn addr(&self) -> IpAddr {
        crate::first_family(self.ip, self.ip6)
    }
}

/// The echo server (greets with the pod's name, then echoes) and the clients the tests use.
const ECHO: &str = r#"
import socket, sys, threading, time
mode = sys.argv[1]
if mode == "serve":
    # On each port: greets with "<pod name> <client address>", then echoes; UDP on the
    # same port answers each datagram with the same greeting.
    name = sys.argv[2].encode()
    def h(c):
        with c:
            c.sendall(name + b" " + c.getpeername()[0].encode() + b"\n")
            while True:
                d = c.recv(4096)
                if not d: return
                c.sendall(d)
    def tcp(s):
        while True:
            c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
    def udp(u):
        while True:
            d, a = u.recvfrom(2048); u.sendto(name + b" " + a[0].encode() + b"\n", a)
    def sock(fam, kind, proto=0):
        x = socket.socket(fam, kind, proto)
        x.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            # IPv6 only: IPv4 clients are served (and greeted as a.b.c.d) by the IPv4 socket.
            x.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return x
    for port in sys.argv[3:]:
        for fam, anyaddr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                s = sock(fam, socket.SOCK_STREAM); s.bind((anyaddr, int(port))); s.listen(128)
                u = sock(fam, socket.SOCK_DGRAM); u.bind((anyaddr, int(port)))
            except OSError:
                continue  # no IPv6 in this kernel or namespace
            threading.Thread(target=tcp, args=(s,), daemon=True).start()
            threading.Thread(target=udp, args=(u,), daemon=True).start()
            # SCTP (one-to-one, as TCP) where the kernel has it.
            try:
                x = sock(fam, socket.SOCK_STREAM, 132)
                x.bind((anyaddr, int(port))); x.listen(128)
                threading.Thread(target=tcp, args=(x,), daemon=True).start()
            except OSError:
                pass
    threading.Event().wait()
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
elif mode == "probe":
    # probe PROTO PORT IP...: all at once, 1 s each; one line per IP: "IP NAME" or "IP -".
    proto, port, ips = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    out = {}
    def one(ip):
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            if proto == "udp":
                u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(1)
                u.sendto(b"hi", (ip, port)); d = u.recvfrom(2048)[0]
            elif proto == "sctp":
                c = socket.socket(fam, socket.SOCK_STREAM, 132); c.settimeout(1)
                c.connect((ip, port)); d = c.makefile("rb").readline(); c.close()
            else:
                c = socket.create_connection((ip, port), timeout=1); c.settimeout(1)
                d = c.makefile("rb").readline(); c.close()
            out[ip] = d.decode().split()[0]
        except Exception:
            out[ip] = "-"
    ts = [threading.Thread(target=one, args=(ip,)) for ip in ips]
    [t.start() for t in ts]; [t.join() for t in ts]
    for ip in ips: print(ip, out[ip], flush=True)
elif mode == "udp":
    u = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(3)
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
    /// The path of the pods' echo server and clients (`python3 <it> hello IP PORT`, …).
    pub fn echo_script(&self) -> String {
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
            "dataplane_ready_file": n.dataplane_ready_file(),
            "ipam": {
                "type": "brindle-ipam",
                "assign_ipv4": self.spec.v4(),
                "assign_ipv6": self.spec.v6()
            }
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

    /// Runs brindle-cni in the node's namespace; Ok(result) or Err(the error JSON / text)
    /// (ADD refused with code 11 is not tried again here: [`Lab::pod_add`] does that).
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
            pod: Some(split_key(pod)),
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
    pub fn pod_add(&mut self, name: &str, node: &str) -> Result<IpAddr, String> {
        self.pod_add_from(name, node, None)
    }

    /// The same, with the pod asking for a pool (annotation `brindle.dev/ipv4pools`).
    pub fn pod_add_from(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
    ) -> Result<IpAddr, String> {
        self.pod_add_with(name, node, pool, &mut |_| {})
    }

    /// The general form: `wired` is called with the pod's address as soon as the CNI ADD has
    /// returned, before the echo server starts (benchmarks time reachability from there).
    pub fn pod_add_with(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
        wired: &mut dyn FnMut(IpAddr),
    ) -> Result<IpAddr, String> {
        self.pod_add_full(name, node, pool, &[], false, Duration::ZERO, wired)
    }

    /// A pod with labels (Services select on them); its Services' endpoints follow.
    pub fn pod_add_labeled(
        &mut self,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<IpAddr, String> {
        self.pod_add_full(name, node, None, labels, false, Duration::ZERO, &mut |_| {})
    }

    /// A pod whose servers listen before its CNI ADD (a container that is up before its
    /// network is: whatever reaches its address in the first instant gets an answer).
    pub fn pod_add_serving_first(
        &mut self,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<IpAddr, String> {
        self.pod_add_full(name, node, None, labels, true, Duration::ZERO, &mut |_| {})
    }

    /// A labelled pod whose CNI ADD comes `gap` after its Pod is written (the time a
    /// kubelet takes to start a sandbox); [`Lab::last_add`] says how long the ADD took.
    pub fn pod_add_after(
        &mut self,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        gap: Duration,
    ) -> Result<IpAddr, String> {
        self.pod_add_full(name, node, None, labels, false, gap, &mut |_| {})
    }

    #[allow(clippy::too_many_arguments)]
    fn pod_add_full(
        &mut self,
        name: &str,
        node: &str,
        pool: Option<&str>,
        labels: &[(&str, &str)],
        serve_first: bool,
        gap: Duration,
        wired: &mut dyn FnMut(IpAddr),
    ) -> Result<IpAddr, String> {
        if self.pods.contains_key(name) {
            return Err(format!("pod {name} exists"));
        }
        let ann = pool.map(|p| ("brindle.dev/ipv4pools".to_string(), json!([p]).to_string()));
        // The kubelet's Pod (labels, named ports) exists before the runtime calls CNI; in
        // etcd mode a Pod record carries them (and the annotation) the same way; a pod with
        // neither labels nor annotation gets its record from brindle-cni (etcd's fast path).
        if self.spec.datastore == Datastore::Kubernetes || ann.is_some() || !labels.is_empty() {
            self.write_pod(name, node, None, ann, Some(labels))?;
        }
        let ns = Netns::new("brl-pod");
        let script = self.echo_script();
        let ports: Vec<String> = std::iter::once(PORT)
            .chain(MODEL_PORTS)
            .map(|p| p.to_string())
            .collect();
        let mut argv = vec!["python3", &script, "serve", name];
        argv.extend(ports.iter().map(String::as_str));
        let early = serve_first.then(|| {
            ns.ok(&["ip", "link", "set", "lo", "up"]);
            ns.spawn(&argv)
        });
        let cid = format!(
            "{:016x}",
            brindle_ipam::block::stable_hash(&format!("{name}-{}", ns.name()))
        );
        std::thread::sleep(gap);
        let started = std::time::Instant::now();
        // As the kubelet does, an ADD refused with "try again later" (CNI code 11: the node's
        // agent has not programmed its dataplane yet, or the datastore is away) is tried again.
        let res = loop {
            match self.cni("ADD", node, name, &cid, &ns.path()) {
                Err(e) if try_again(&e) && started.elapsed() < ADD_RETRY_FOR => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                r => break r?,
            }
        };
        self.last_add = Some(started.elapsed());
        let ips: Vec<IpAddr> = res["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = ips.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let ip6 = ips.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        if self.spec.v4() && ip.is_none() {
            return Err(format!("CNI result without an IPv4 address: {res}"));
        }
        if self.spec.v6() && ip6.is_none() {
            return Err(format!("CNI result without an IPv6 address: {res}"));
        }
        let primary = ip.map(IpAddr::V4).or(ip6.map(IpAddr::V6));
        let primary = primary.ok_or_else(|| format!("CNI result without an address: {res}"))?;
        wired(primary);
        if self.spec.datastore == Datastore::Kubernetes {
            // The kubelet reports the IPs.
            self.write_pod(name, node, Some(&ips), None, None)?;
        }
        let server = match early {
            Some(s) => s,
            None => ns.spawn(&argv),
        };
        self.pods.insert(
            name.to_string(),
            Pod {
                name: name.to_string(),
                namespace: split_key(name).0.to_string(),
                node: node.to_string(),
                ip,
                ip6,
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
        Ok(primary)
    }

    /// Writes the pod's object: `labels` (when given) and its named ports before ADD, the
    /// status with `ip` after.
    fn write_pod(
        &self,
        key: &str,
        node: &str,
        ips: Option<&[IpAddr]>,
        ann: Option<(String, String)>,
        labels: Option<&[(&str, &str)]>,
    ) -> Result<(), String> {
        use k8s_openapi::api::core::v1::{
            Container, ContainerPort, Pod as KPod, PodIP, PodSpec, PodStatus,
        };
        let (namespace, name) = split_key(key);
        let api = self.store.namespaced::<KPod>(namespace);
        let ports: Vec<ContainerPort> = MODEL_PORTS
            .iter()
            .flat_map(|p| {
                ["TCP", "UDP"].map(|proto| ContainerPort {
                    name: Some(format!("serve-{p}-{}", proto.to_ascii_lowercase())),
                    container_port: i32::from(*p),
                    protocol: Some(proto.into()),
                    ..Default::default()
                })
            })
            .chain(std::iter::once(ContainerPort {
                name: Some("echo".into()),
                container_port: i32::from(PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            }))
            .collect();
        self.block_on(async {
            let mut p = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some(namespace.into());
            if let Some(l) = labels {
                p.metadata.labels = Some(
                    l.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            if let Some((k, v)) = ann {
                p.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(k, v);
            }
            p.spec = Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "echo".into(),
                    ports: Some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            });
            if let Some(ips) = ips.filter(|i| !i.is_empty()) {
                p.status = Some(PodStatus {
                    pod_ip: Some(ips[0].to_string()),
                    pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
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
            let (ns, pod) = split_key(name);
            let api = self.store.namespaced::<k8s_openapi::api::core::v1::Pod>(ns);
            let _ = self.block_on(api.delete(pod, None));
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
            .addr();
        self.reach_addr(from, ip)
    }

    /// [`Lab::reach`] over IPv6 (the pod's IPv6 address; dual-stack labs).
    pub fn reach6(&self, from: &str, to: &str) -> Result<String, String> {
        let ip = self
            .pods
            .get(to)
            .ok_or_else(|| format!("no pod {to}"))?
            .ip6
            .ok_or_else(|| format!("pod {to} has no IPv6 address"))?;
        self.reach_addr(from, IpAddr::V6(ip))
    }

    /// A TCP connection from a pod to an address's echo port: Ok(the greeting's name).
    pub fn reach_addr(&self, from: &str, ip: IpAddr) -> Result<String, String> {
        let ip = ip.to_string();
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
        ip: impl Into<IpAddr>,
        port: u16,
        count: usize,
    ) -> Vec<Result<(String, String), String>> {
        self.client_addr(ns, mode, ip.into(), port, count)
    }

    /// [`Lab::client`] to an address of either family.
    pub fn client_addr(
        &self,
        ns: &Netns,
        mode: &str,
        ip: IpAddr,
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
        let ip = self.pods[to].addr().to_string();
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

impl Lab {
    /// A namespace with labels (created, or its labels replaced).
    pub fn namespace_set(&self, name: &str, labels: &[(&str, &str)]) -> Result<(), String> {
        use k8s_openapi::api::core::v1::Namespace;
        let api = self.store.all::<Namespace>();
        self.block_on(async {
            let mut n = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            n.metadata.name = Some(name.into());
            let mut l: std::collections::BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            l.insert("kubernetes.io/metadata.name".into(), name.into());
            n.metadata.labels = Some(l);
            let r = if n.metadata.resource_version.is_some() {
                api.update(&n).await
            } else {
                api.create(&n).await
            };
            r.map(|_| ()).map_err(|e| e.to_string())
        })
    }

    /// Replaces a pod's labels (in its object and in the lab's view).
    pub fn pod_label(&mut self, key: &str, labels: &[(&str, &str)]) -> Result<(), String> {
        use k8s_openapi::api::core::v1::Pod as KPod;
        let (ns, name) = split_key(key);
        let api = self.store.namespaced::<KPod>(ns);
        let map: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.block_on(async {
            let mut p = api
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no pod {key} in the datastore"))?;
            p.metadata.labels = Some(map.clone());
            api.update(&p).await.map(|_| ()).map_err(|e| e.to_string())
        })?;
        if let Some(p) = self.pods.get_mut(key) {
            p.labels = map;
        }
        Ok(())
    }

    /// One connection from a pod to another pod's `port` (`tcp` or `udp`): true when the
    /// other pod answered.
    pub fn probe(&self, from: &str, to: &str, port: u16, protocol: &str) -> Result<bool, String> {
        let ip = self.probe_addr(to)?;
        let p = self
            .pods
            .get(from)
            .ok_or_else(|| format!("no pod {from}"))?;
        let mode = if protocol == "udp" { "udp" } else { "hello" };
        let r = self.client_addr(&p.ns, mode, ip, port, 1);
        Ok(matches!(r.first(), Some(Ok((who, _))) if who == to))
    }

    /// The address probes go to: the pod's IPv4 one, or its IPv6 one with
    /// [`Lab::probe_ipv6`].
    pub fn probe_addr(&self, pod: &str) -> Result<IpAddr, String> {
        let p = self.pods.get(pod).ok_or_else(|| format!("no pod {pod}"))?;
        match (self.probe_ipv6, p.ip6) {
            (false, _) => Ok(p.addr()),
            (true, Some(a)) => Ok(IpAddr::V6(a)),
            (true, None) => Err(format!("pod {pod} has no IPv6 address")),
        }
    }
}

impl Lab {
    /// Every pod in `from` to every pod in `to` on `port`/`protocol` (`tcp`, `udp`), all at
    /// once (1 s per try): the set of (from, to) that got an answer from the pod it meant.
    pub fn probe_matrix(
        &self,
        from: &[&str],
        to: &[&str],
        port: u16,
        protocol: &str,
    ) -> std::collections::BTreeSet<(String, String)> {
        let script = self.echo_script();
        let ips: Vec<String> = to
            .iter()
            .map(|t| {
                self.probe_addr(t)
                    .map_or_else(|e| panic!("{e}"), |a| a.to_string())
            })
            .collect();
        let port_s = port.to_string();
        let children: Vec<_> = from
            .iter()
            .map(|f| {
                let mut argv = vec!["python3", script.as_str(), "probe", protocol, &port_s];
                argv.extend(ips.iter().map(String::as_str));
                let child = self.pods[*f]
                    .ns
                    .command(&argv)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a probe");
                (f.to_string(), ChildGuard(child))
            })
            .collect();
        let mut ok = std::collections::BTreeSet::new();
        for (f, mut c) in children {
            let mut text = String::new();
            if let Some(mut out) = c.0.stdout.take() {
                use std::io::Read;
                let _ = out.read_to_string(&mut text);
            }
            let _ = c.0.wait();
            for line in text.lines() {
                let Some((ip, who)) = line.split_once(' ') else {
                    continue;
                };
                if let Some(t) = to
                    .iter()
                    .find(|t| self.probe_addr(t).is_ok_and(|a| a.to_string() == ip) && **t == who)
                {
                    ok.insert((f.clone(), t.to_string()));
                }
            }
        }
        ok
    }
}

/// How long a pod's ADD is tried again while the plugin says "try again later".
const ADD_RETRY_FOR: Duration = Duration::from_secs(60);

/// Whether the plugin's error is CNI's "try again later" (11).
fn try_again(error: &str) -> bool {
    serde_json::from_str::<Value>(error).is_ok_and(|v| v["code"] == 11)
}
