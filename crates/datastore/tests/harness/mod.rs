//! The three backends behind one test interface.

use brindle_datastore::backend::{
    etcd::EtcdBackend, kubernetes::KubernetesBackend, memory::MemoryBackend,
};
use brindle_datastore::Store;
use brindle_testsupport::{ApiServer, EtcdServer};

pub(crate) trait Harness {
    /// A new client of the datastore under test.
    async fn store(&self) -> Store;
    /// Breaks the connections under open watches; false if the backend has none.
    async fn interrupt(&mut self) -> bool;
    /// Compacts the history up to now.
    async fn compact(&self);
    /// A client of the same kind pointed at nothing.
    async fn unreachable(&self) -> Store;
}

fn dead_endpoint() -> String {
    // Bound and dropped: nothing listens there now.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

pub struct EtcdHarness {
    server: EtcdServer,
}

impl EtcdHarness {
    pub async fn start() -> Self {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .expect("etcd start");
        EtcdHarness { server }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }
}

impl Harness for EtcdHarness {
    async fn store(&self) -> Store {
        Store::new(
            EtcdBackend::connect(&[self.server.endpoint()])
                .await
                .expect("connect"),
        )
    }
    async fn interrupt(&mut self) -> bool {
        tokio::task::block_in_place(|| self.server.restart());
        true
    }
    async fn compact(&self) {
        let b = EtcdBackend::connect(&[self.server.endpoint()])
            .await
            .expect("connect");
        let mut c = b.client();
        let rev = c
            .get("/", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        c.compact(rev, None).await.expect("compact");
    }
    async fn unreachable(&self) -> Store {
        Store::new(
            EtcdBackend::connect(&[dead_endpoint()])
                .await
                .expect("lazy connect"),
        )
    }
}

pub struct KubeHarness {
    server: ApiServer,
}

impl KubeHarness {
    pub async fn start() -> Self {
        KubeHarness {
            server: ApiServer::start().await.expect("test API server"),
        }
    }
}

fn kube_store(url: &str) -> Store {
    let config = kube::Config::new(url.parse().expect("url"));
    Store::new(KubernetesBackend::from_config(config).expect("client"))
}

impl Harness for KubeHarness {
    async fn store(&self) -> Store {
        kube_store(&self.server.url())
    }
    async fn interrupt(&mut self) -> bool {
        self.server.drop_watches();
        true
    }
    async fn compact(&self) {
        self.server.compact();
    }
    async fn unreachable(&self) -> Store {
        kube_store(&dead_endpoint())
    }
}

pub struct MemoryHarness {
    backend: MemoryBackend,
}

impl MemoryHarness {
    pub async fn start() -> Self {
        MemoryHarness {
            backend: MemoryBackend::new(),
        }
    }
}

impl Harness for MemoryHarness {
    async fn store(&self) -> Store {
        Store::new(self.backend.clone())
    }
    async fn interrupt(&mut self) -> bool {
        false
    }
    async fn compact(&self) {
        self.backend.compact();
    }
    async fn unreachable(&self) -> Store {
        let down = MemoryBackend::new();
        down.set_unavailable(true);
        Store::new(down)
    }
}
