//! Small helpers shared by the benchmarks: latency statistics, result files, and the raw
//! etcd compare-and-swap floor that Brindle's datastore and IPAM figures are set beside.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// Latencies of one benchmark row.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub lat: Vec<Duration>,
    pub secs: f64,
    pub conflicts: usize,
}

impl Sample {
    pub fn merge(parts: Vec<Sample>, secs: f64) -> Sample {
        let mut lat: Vec<Duration> = parts.iter().flat_map(|p| p.lat.iter().copied()).collect();
        lat.sort();
        Sample {
            lat,
            secs,
            conflicts: parts.iter().map(|p| p.conflicts).sum(),
        }
    }

    pub fn ops(&self) -> usize {
        self.lat.len()
    }

    pub fn rate(&self) -> f64 {
        self.ops() as f64 / self.secs
    }

    /// Percentile in milliseconds (`p` in 0..=1); the latencies must be sorted.
    pub fn ms(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1e3
    }
}

/// CPU time (user + system, seconds) of process `pid` ("self" for this one) from
/// `/proc/<pid>/stat`: its own, and that of the children it has waited for. Clock ticks
/// (usually 10 ms), so measure many operations at once.
pub fn cpu_secs(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat, in USER_HZ (100 on Linux);
    // `rest` starts at field 3.
    let tick = |i: usize| f.get(i - 3).copied().unwrap_or(0.0) / 100.0;
    (tick(14) + tick(15), tick(16) + tick(17))
}

/// `bench-results/<name>` at the workspace root (created), for machine-readable results.
pub fn results_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench-results");
    let _ = std::fs::create_dir_all(&dir);
    dir.canonicalize().unwrap_or(dir).join(name)
}

/// Writes `json` to `bench-results/<name>` and says where.
pub fn write_results(name: &str, json: &serde_json::Value) {
    let out = results_path(name);
    match std::fs::write(&out, serde_json::to_string_pretty(json).unwrap_or_default()) {
        Ok(()) => println!("\nwrote {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}

/// Runs `client(c, kv)` on `clients` connections made in parallel, and merges their samples.
async fn on_clients<F, Fut>(endpoint: &str, clients: usize, client: F) -> Sample
where
    F: Fn(usize, etcd_client::KvClient) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Sample> + Send + 'static,
{
    let client = std::sync::Arc::new(client);
    let start = Instant::now();
    let mut tasks = vec![];
    for c in 0..clients {
        let (endpoint, client) = (endpoint.to_owned(), client.clone());
        tasks.push(tokio::spawn(async move {
            let conn = Client::connect([endpoint], None)
                .await
                .expect("etcd connect");
            client(c, conn.kv_client()).await
        }));
    }
    let mut parts = vec![];
    for t in tasks {
        parts.push(t.await.expect("client task"));
    }
    Sample::merge(parts, start.elapsed().as_secs_f64())
}

/// The floor: `ops` read + compare-and-swap updates of ~300-byte values straight through
/// etcd-client, from `clients` connections in parallel, each on its own key (or all on one).
pub async fn etcd_cas_floor(endpoint: &str, clients: usize, ops: usize, shared: bool) -> Sample {
    let per = ops / clients;
    on_clients(endpoint, clients, move |c, mut kv| async move {
        let key = if shared {
            "/bench/raw/shared".to_string()
        } else {
            format!("/bench/raw/{clients}-{c}")
        };
        let value = vec![b'x'; 300];
        kv.put(key.clone(), value.clone(), None)
            .await
            .expect("seed");
        let mut s = Sample::default();
        for _ in 0..per {
            let t = Instant::now();
            loop {
                let cur = kv.get(key.clone(), None).await.expect("get");
                let rev = cur
                    .kvs()
                    .first()
                    .map(|kv| kv.mod_revision())
                    .unwrap_or_default();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
                if kv.txn(txn).await.expect("txn").succeeded() {
                    break;
                }
                s.conflicts += 1;
            }
            s.lat.push(t.elapsed());
        }
        s
    })
    .await
}

/// The one-write floor: `ops` compare-and-swap writes of `bytes`-byte values, each guarded by
/// the revision the previous write returned (no read), from `clients` connections in
/// parallel, each on its own key: what one etcd transaction per operation costs.
pub async fn etcd_write_floor(endpoint: &str, clients: usize, ops: usize, bytes: usize) -> Sample {
    let per = ops / clients;
    on_clients(endpoint, clients, move |c, mut kv| async move {
        let key = format!("/bench/write/{clients}-{c}");
        let value = vec![b'x'; bytes];
        let mut rev = kv
            .put(key.clone(), value.clone(), None)
            .await
            .expect("seed")
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
        let mut s = Sample::default();
        for _ in 0..per {
            let t = Instant::now();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let r = kv.txn(txn).await.expect("txn");
            if !r.succeeded() {
                s.conflicts += 1;
            }
            rev = r.header().map(|h| h.revision()).unwrap_or_default();
            s.lat.push(t.elapsed());
        }
        s
    })
    .await
}

/// A `/proc/<pid>/status` figure given in kB (`VmHWM:`, `VmRSS:`), in MiB; 0 when unreadable.
pub fn proc_status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
