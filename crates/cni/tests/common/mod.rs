//! A node in a network namespace, a real etcd, and the plugin binary run the way a runtime
//! runs it: inside the node's namespace, configuration on stdin, CNI_* in the environment.
#![allow(dead_code)]

use brindle_api::{BrindleNode, IPPool, IPPoolSpec};
use brindle_datastore::backend::etcd::EtcdBackend;
use brindle_datastore::Store;
use brindle_testsupport::{CniCall, EtcdServer, Netns, PortForward};
use serde_json::{json, Value};

pub const NODE: &str = "node-1";
pub const NODE_IP: &str = "198.18.0.1";

pub struct Fixture {
    /// etcd as seen from inside the node namespace.
    pub forward: PortForward,
    /// The node's uplink leads here (a stand-in for the rack): it gives the node the default
    /// route that proxy ARP for 169.254.1.1 needs, as a real node has.
    pub fabric: Netns,
    pub etcd: EtcdServer,
    pub store: Store,
    pub node: Netns,
    pub dir: tempfile_dir::Dir,
}

/// A throw-away directory for the plugin's log and lock files.
pub mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "brindle-cni-test-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub struct Out {
    pub ok: bool,
    pub json: Value,
}

impl Fixture {
    pub async fn new(pool_cidr: &str) -> Fixture {
        let etcd = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .unwrap();
        let store = Store::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
        let mut pool = IPPoolSpec::new(pool_cidr);
        pool.block_size = Some(26);
        store
            .all::<IPPool>()
            .create(&IPPool::new("pods", pool))
            .await
            .unwrap();
        store
            .all::<BrindleNode>()
            .create(&brindle_ipam::nodes::brindle_node(NODE, &[]))
            .await
            .unwrap();
        let node = Netns::new("brl-node");
        let fabric = Netns::new("brl-fab");
        node.veth("up0", &fabric, "fab0");
        node.ok(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"]);
        node.ok(&["ip", "link", "set", "up0", "up"]);
        fabric.ok(&["ip", "addr", "add", "198.18.0.254/24", "dev", "fab0"]);
        fabric.ok(&["ip", "link", "set", "fab0", "up"]);
        node.ok(&["ip", "route", "add", "default", "via", "198.18.0.254"]);
        node.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let target = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let forward = PortForward::new(&node, target);
        let f = Fixture {
            forward,
            fabric,
            etcd,
            store,
            node,
            dir: tempfile_dir::Dir::new(),
        };
        // As brindle-node leaves it once it has programmed the node's dataplane.
        std::fs::write(f.ready_file(), "synced").unwrap();
        f
    }

    /// The conf's `dataplane_ready_file`.
    pub fn ready_file(&self) -> std::path::PathBuf {
        self.dir.0.join("dataplane-ready")
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "brindle-cni",
            "mtu": 1400,
            "nodename": NODE,
            "datastore_type": "etcd",
            "etcd_endpoints": format!("http://{}", self.forward.addr),
            "log_level": "info",
            "log_file_path": self.dir.0.join("cni.log"),
            "ipam_lock_file": self.dir.0.join("ipam.lock"),
            // The plugin's own IPAM (tests/agent.rs serves it from an agent instead).
            "ipam_socket": "",
            "dataplane_ready_file": self.ready_file(),
            "ipam": {"type": "brindle-ipam"}
        })
    }

    /// Runs the plugin in the node namespace. `pod` is (namespace, name).
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        pod: Option<(&str, &str)>,
        netns: Option<&str>,
        conf: &Value,
    ) -> Out {
        self.cni_raw(
            command,
            container,
            pod,
            netns,
            conf.to_string().as_bytes(),
            &[],
        )
    }

    pub fn cni_raw(
        &self,
        command: &str,
        container: &str,
        pod: Option<(&str, &str)>,
        netns: Option<&str>,
        stdin: &[u8],
        extra_env: &[(&str, &str)],
    ) -> Out {
        let out = CniCall {
            command,
            container,
            netns,
            pod,
            env: extra_env,
        }
        .run(
            self.node.command(&[env!("CARGO_BIN_EXE_brindle-cni")]),
            stdin,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim()).unwrap_or_else(|e| {
                panic!(
                    "plugin printed non-JSON ({e}): {text}\nstderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        };
        Out {
            ok: out.status.success(),
            json,
        }
    }

    /// Host-side interfaces the plugin made (prefix brl).
    pub fn host_veths(&self) -> Vec<String> {
        self.node
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("brl"))
            .collect()
    }

    pub async fn has_handle(&self, name: &str) -> bool {
        self.store
            .all::<brindle_api::IPAMHandle>()
            .get(name)
            .await
            .unwrap()
            .is_some()
    }

    pub async fn handles(&self) -> usize {
        self.store
            .all::<brindle_api::IPAMHandle>()
            .list()
            .await
            .unwrap()
            .items
            .len()
    }

    pub async fn allocated(&self) -> Vec<std::net::IpAddr> {
        let mut out = vec![];
        for b in self
            .store
            .all::<brindle_api::IPAMBlock>()
            .list()
            .await
            .unwrap()
            .items
        {
            out.extend(
                brindle_ipam::block::allocations(&b.spec)
                    .into_iter()
                    .map(|a| a.ip),
            );
        }
        out
    }
}

impl Fixture {
    /// The allocation of `ip` (panics when it is free).
    pub async fn allocation(&self, ip: &str) -> brindle_ipam::block::Allocation {
        self.store
            .all::<brindle_api::IPAMBlock>()
            .list()
            .await
            .unwrap()
            .items
            .iter()
            .flat_map(|b| brindle_ipam::block::allocations(&b.spec))
            .find(|a| a.ip.to_string() == ip)
            .unwrap_or_else(|| panic!("{ip} is not allocated"))
    }
}

pub fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

/// A one-connection TCP server: accepts, sends "hello", exits.
pub fn tcp_server(ns: &Netns, ip: &str, port: u16) -> brindle_testsupport::ChildGuard {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{ip}' else socket.AF_INET)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{ip}',{port}))\ns.listen()\ns.settimeout(30)\nc,_=s.accept()\nc.sendall(b'hello')\nc.close()\n"
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Connects from `ns` to ip:port (retrying while the server starts) and returns what it read.
pub fn tcp_client(ns: &Netns, ip: &str, port: u16) -> String {
    let script = format!(
        "import socket,time\nfor i in range(50):\n  try:\n    s=socket.create_connection(('{ip}',{port}),timeout=2)\n    print(s.recv(16).decode())\n    break\n  except ConnectionRefusedError:\n    time.sleep(0.1)\n"
    );
    ns.ok(&["python3", "-c", &script]).trim().to_owned()
}
