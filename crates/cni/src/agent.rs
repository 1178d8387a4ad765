//! IPAM served by the node agent on a local unix socket (`/run/brindle/ipam.sock`).
//!
//! `brindle-node` keeps a warm IPAM client (pools, the node, its blocks cached) and answers
//! the datastore side of ADD and DEL ([`crate::podipam`]) for the plugin, which then only
//! wires the pod. Requests that arrive together are batched: several pods' addresses are
//! taken from a block in one etcd transaction. The plugin falls back to doing the work
//! itself (under the host lock) when the socket is not there, refuses the connection, or
//! closes it without an answer, so pod creation never depends on the agent being up; a
//! request the agent has already served is then found by its handle, not served twice.
//!
//! Wire format: one JSON request line, one JSON answer line, then the connection closes.
//! The socket is created mode 0600 (root only): whoever can write to it can take and free
//! addresses.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_ipam::{AssignRequest, Ipam, MAX_BATCH};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::podipam::{self, AddRequest, Batch, DelRequest, Record};
use crate::spec::{code, CniError};

pub const DEFAULT_SOCKET: &str = "/run/brindle/ipam.sock";
/// Where brindle-node says it has programmed the node's dataplane since boot (the plugin's
/// `dataplane_ready_file`).
pub const DEFAULT_READY_FILE: &str = "/run/brindle/dataplane-ready";
/// Largest request line the agent reads.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add(AddRequest),
    Del(DelRequest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Ok {
        ips: Vec<IpAddr>,
    },
    Error {
        code: u32,
        msg: String,
        details: String,
    },
    /// Not for this agent (another node's request): the plugin does it itself.
    Declined {
        why: String,
    },
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Add(_) => "add",
            Request::Del(_) => "del",
        }
    }
}

impl Response {
    pub fn result(&self) -> &'static str {
        match self {
            Response::Ok { .. } => "ok",
            Response::Error { .. } => "error",
            Response::Declined { .. } => "declined",
        }
    }
}

/// How a call to the agent ended.
#[derive(Debug)]
pub enum Answer {
    Done(Vec<IpAddr>),
    Failed(CniError),
    /// No answer: the plugin must do the work itself. Says why, for the log.
    Unreachable(String),
}

/// Sends one request and waits up to `timeout` for the answer.
pub async fn call(path: &Path, req: &Request, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, exchange(path, req)).await {
        Ok(Ok(Response::Ok { ips })) => Answer::Done(ips),
        Ok(Ok(Response::Error { code, msg, details })) => {
            Answer::Failed(CniError::new(code, msg, details))
        }
        Ok(Ok(Response::Declined { why })) => Answer::Unreachable(format!("declined: {why}")),
        Ok(Err(e)) => Answer::Unreachable(e.to_string()),
        Err(_) => Answer::Unreachable(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(path).await?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering",
        ));
    }
    Ok(serde_json::from_str(&answer)?)
}

/// The agent's batcher: plain requests that arrive while a batch is being written wait and
/// go together in the next one.
type Job = (
    AssignRequest,
    Option<Record>,
    oneshot::Sender<Option<Vec<IpAddr>>>,
);

type Release = (String, oneshot::Sender<Option<Vec<IpAddr>>>);

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    releases: mpsc::Sender<Release>,
    alone: Arc<tokio::sync::Mutex<()>>,
}

impl Batcher {
    pub fn start(ipam: Arc<Ipam>) -> Batcher {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        let (releases, mut rel_rx) = mpsc::channel::<Release>(1024);
        let rel_ipam = ipam.clone();
        tokio::spawn(async move {
            while let Some(first) = rel_rx.recv().await {
                let batch = waiting(first, &mut rel_rx);
                let ids: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
                let out = rel_ipam.release_batch(&ids).await;
                for ((_, reply), got) in batch.into_iter().zip(out) {
                    let _ = reply.send(got);
                }
            }
        });
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = waiting(first, &mut rx);
                let reqs: Vec<AssignRequest> = batch.iter().map(|(r, _, _)| r.clone()).collect();
                let records: Vec<&Option<Record>> = batch.iter().map(|(_, w, _)| w).collect();
                let out = ipam
                    .assign_batch_with(&reqs, &|i, ips, t| match records.get(i) {
                        Some(Some(w)) => w(ips, t),
                        _ => Ok(()),
                    })
                    .await;
                if reqs.len() > 1 {
                    let served = out.iter().filter(|o| o.is_some()).count();
                    debug!(requests = reqs.len(), served, "batch");
                }
                for ((_, _, reply), got) in batch.into_iter().zip(out) {
                    let _ = reply.send(got);
                }
            }
        });
        Batcher {
            tx,
            releases,
            alone: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// `first` and whatever else is already queued, up to a batch's worth: nothing waits for
/// a batch to fill, so a lone request goes at once.
fn waiting<T>(first: T, rx: &mut mpsc::Receiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    batch
}

impl Batch for Batcher {
    async fn assign(&self, req: AssignRequest, record: Option<Record>) -> Option<Vec<IpAddr>> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, record, reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    async fn release(&self, handle: &str) -> Option<Vec<IpAddr>> {
        let (reply, answer) = oneshot::channel();
        self.releases.send((handle.to_owned(), reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    async fn alone(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        Some(self.alone.clone().lock_owned().await)
    }
}

/// A pod attachment the agent has just given addresses to (its allocation's attributes:
/// pod, namespace, interface, host veth), for whoever must prepare the node for it before
/// the plugin wires it: NetworkPolicy's chains for the veth. `ready` is answered when that
/// is done.
#[derive(Debug)]
pub struct NewAttachment {
    pub attrs: std::collections::BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub ready: oneshot::Sender<()>,
}

/// Where new attachments are announced, and how long an ADD waits for `ready` (after that
/// the plugin goes on: the pod's interface passes nothing until its chains exist).
#[derive(Debug, Clone)]
pub struct AttachmentHook {
    pub tx: mpsc::Sender<NewAttachment>,
    pub wait: Duration,
}

/// Told of each request served: its operation (`add`, `del`), result (`ok`, `error`,
/// `declined`) and how long the agent took (the plugin's wait, less the socket's round trip).
pub type Observe = Arc<dyn Fn(&'static str, &'static str, Duration) + Send + Sync>;

/// The agent's side: serves `path` until the listener fails.
pub struct Server {
    pub store: Store,
    pub ipam: Arc<Ipam>,
    pub node: String,
    pub path: PathBuf,
    pub attachments: Option<AttachmentHook>,
    pub observe: Option<Observe>,
}

impl Server {
    pub async fn run(self) -> std::io::Result<()> {
        let listener = bind_private(&self.path)?;
        info!(socket = %self.path.display(), "serving IPAM to the CNI plugin");
        let batcher = Batcher::start(self.ipam.clone());
        let me = Arc::new(self);
        loop {
            let (conn, _) = listener.accept().await?;
            let me = me.clone();
            let batcher = batcher.clone();
            tokio::spawn(async move {
                if let Err(e) = me.serve(conn, &batcher).await {
                    debug!(error = %e, "IPAM socket connection");
                }
            });
        }
    }

    async fn serve(&self, conn: UnixStream, batcher: &Batcher) -> std::io::Result<()> {
        let (r, mut w) = conn.into_split();
        let mut line = String::new();
        // A client that never finishes its line does not hold a task forever.
        let mut reader = tokio::io::AsyncReadExt::take(BufReader::new(r), MAX_LINE);
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line within 30 s")
            })??;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (t, op) = (std::time::Instant::now(), req.op());
                let resp = self.answer(req, batcher).await;
                if let Some(observe) = &self.observe {
                    observe(op, resp.result(), t.elapsed());
                }
                resp
            }
            Err(e) => Response::Error {
                code: code::DECODE,
                msg: "brindle-node could not decode the IPAM request".into(),
                details: e.to_string(),
            },
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await
    }

    async fn answer(&self, req: Request, batcher: &Batcher) -> Response {
        let out = match &req {
            Request::Add(r) if r.node != self.node => {
                return Response::Declined {
                    why: format!("this agent serves node {:?}, not {:?}", self.node, r.node),
                }
            }
            Request::Add(r) => podipam::add(&self.store, &self.ipam, batcher, r).await,
            Request::Del(r) => podipam::del(&self.store, &self.ipam, batcher, r).await,
        };
        match out {
            Ok(ips) => {
                if let (Request::Add(r), Some(hook)) = (&req, &self.attachments) {
                    announce(hook, r, &ips).await;
                }
                Response::Ok { ips }
            }
            Err(e) => {
                warn!(request = ?req, error = %e, "IPAM request failed");
                Response::Error {
                    code: e.code,
                    msg: e.msg,
                    details: e.details,
                }
            }
        }
    }
}

/// Tells the hook about an attachment with a host veth and waits (bounded) until it is ready.
async fn announce(hook: &AttachmentHook, r: &AddRequest, ips: &[IpAddr]) {
    if !r
        .attrs
        .contains_key(brindle_ipam::block::attr::HOST_INTERFACE)
    {
        return; // IPAM only: no interface of ours to prepare
    }
    let (ready, done) = oneshot::channel();
    let a = NewAttachment {
        attrs: r.attrs.clone(),
        ips: ips.to_vec(),
        ready,
    };
    let t = std::time::Instant::now();
    let ok = tokio::time::timeout(hook.wait, async {
        hook.tx.send(a).await.is_ok() && done.await.is_ok()
    })
    .await;
    match ok {
        Ok(true) => info!(
            handle = %r.handle,
            wait_ms = t.elapsed().as_secs_f64() * 1e3,
            "the pod's policy chains ready"
        ),
        _ => warn!(
            handle = %r.handle,
            wait_ms = t.elapsed().as_millis() as u64,
            "the pod's policy chains were not ready in time; it passes nothing until they are"
        ),
    }
}

/// Binds a socket only root can use: made under a temporary name, restricted, then renamed
/// over `path` (replacing a socket a previous run left), so it is never reachable with
/// looser permissions.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Del(DelRequest {
            handle: "k8s-pod-network.abc".into(),
            pod: Some(("default".into(), "web".into())),
            container_id: "abc".into(),
            record: true,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "del");
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
        let ok = Response::Ok {
            ips: vec!["10.0.0.1".parse().unwrap()],
        };
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!(v, serde_json::json!({"result": "ok", "ips": ["10.0.0.1"]}));
    }

    #[tokio::test]
    async fn no_agent_means_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request::Del(DelRequest {
            handle: "h".into(),
            pod: None,
            container_id: "c".into(),
            record: false,
        });
        let a = call(&dir.path().join("none.sock"), &req, Duration::from_secs(1)).await;
        assert!(matches!(a, Answer::Unreachable(_)), "{a:?}");
        // A socket that accepts and closes without answering: also unreachable.
        let path = dir.path().join("mute.sock");
        let l = bind_private(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        tokio::spawn(async move {
            let (c, _) = l.accept().await.unwrap();
            drop(c);
        });
        let a = call(&path, &req, Duration::from_secs(5)).await;
        assert!(matches!(a, Answer::Unreachable(_)), "{a:?}");
    }
}
