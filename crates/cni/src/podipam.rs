//! The datastore side of a pod's ADD and DEL: which addresses (the ones it has, the ones
//! its pod's annotations ask for, or new ones from the pools), and in etcd mode the record
//! that tells the controller the workload is alive. The same code runs in the plugin (the
//! direct path) and in `brindle-node`, which serves it on a local socket ([`crate::agent`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_api::AllowedUse;
use brindle_datastore::{Store, StoreError, Txn};
use brindle_ipam::{AssignRequest, Ipam, IpamError};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use tracing::{debug, info};

use crate::spec::{code, CniError, CniResult};

/// Pod annotations that ask for particular pools or addresses (JSON lists of strings).
pub const ANNOTATION_IPV4_POOLS: &str = "brindle.dev/ipv4pools";
pub const ANNOTATION_IPV6_POOLS: &str = "brindle.dev/ipv6pools";
pub const ANNOTATION_IP_ADDRS: &str = "brindle.dev/ipAddrs";
/// On the workload record (etcd mode): which sandbox the record belongs to.
pub const ANNOTATION_CONTAINER_ID: &str = "brindle.dev/containerID";

/// What an ADD needs from the datastore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddRequest {
    pub handle: String,
    pub node: String,
    pub attrs: BTreeMap<String, String>,
    pub ipv4: usize,
    pub ipv6: usize,
    /// The network configuration's pools (a pod's annotations override them).
    pub ipv4_pools: Vec<String>,
    pub ipv6_pools: Vec<String>,
    /// (namespace, name) of a Kubernetes pod.
    pub pod: Option<(String, String)>,
    pub container_id: String,
    /// Write the workload record (etcd mode, primary interface).
    pub record: bool,
}

/// What a DEL needs from the datastore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelRequest {
    pub handle: String,
    pub pod: Option<(String, String)>,
    pub container_id: String,
    /// Delete the workload record if it is still this container's.
    pub record: bool,
}

pub fn store_err(e: StoreError) -> CniError {
    let code = if e.is_unavailable() {
        code::TRY_AGAIN_LATER
    } else {
        code::DATASTORE
    };
    CniError::new(code, "datastore error", e.to_string())
}

pub fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::NO_ADDRESSES, e.to_string(), ""),
        IpamError::NoPools { .. }
        | IpamError::UnknownPool(_)
        | IpamError::NotInPool { .. }
        | IpamError::PoolRefuses { .. }
        | IpamError::Selector { .. } => CniError::new(code::NO_POOL, e.to_string(), ""),
        IpamError::Store(s) => store_err(s),
        IpamError::NoNode { .. } => CniError::new(
            code::INVALID_CONFIG,
            e.to_string(),
            "is the nodename right?",
        ),
        other => CniError::new(code::DATASTORE, other.to_string(), ""),
    }
}

/// Writes that go with a request's addresses in its batch transaction (the pod record).
pub type Record = Box<dyn Fn(&[IpAddr], &mut Txn) -> brindle_datastore::Result<()> + Send + Sync>;

/// Serves the plain case (new addresses from the pools, no annotations) of many ADDs
/// together: the agent's batcher. `None`: serve it alone; nothing was written for it.
pub trait Batch: Sync {
    fn assign(
        &self,
        req: AssignRequest,
        record: Option<Record>,
    ) -> impl std::future::Future<Output = Option<Vec<IpAddr>>> + Send;

    /// Releases a handle with the others that arrive together. `None`: release it alone.
    fn release(
        &self,
        handle: &str,
    ) -> impl std::future::Future<Output = Option<Vec<IpAddr>>> + Send;

    /// Held while a request is served alone, so that the node's requests that need a new
    /// block claim it one at a time instead of racing for it.
    fn alone(&self) -> impl std::future::Future<Output = Option<OwnedMutexGuard<()>>> + Send;
}

/// No batching: the plugin's direct path (the host lock already serializes it).
pub struct Alone;

impl Batch for Alone {
    async fn assign(&self, _: AssignRequest, _: Option<Record>) -> Option<Vec<IpAddr>> {
        None
    }

    async fn release(&self, _: &str) -> Option<Vec<IpAddr>> {
        None
    }

    async fn alone(&self) -> Option<OwnedMutexGuard<()>> {
        None
    }
}

pub async fn pod(store: &Store, which: &Option<(String, String)>) -> CniResult<Option<Pod>> {
    let Some((ns, name)) = which else {
        return Ok(None);
    };
    store
        .namespaced::<Pod>(ns)
        .get(name)
        .await
        .map_err(store_err)
}

/// Addresses for the attachment, and the workload record when asked.
pub async fn add(
    store: &Store,
    ipam: &Ipam,
    batch: &impl Batch,
    r: &AddRequest,
) -> CniResult<Vec<IpAddr>> {
    let t = std::time::Instant::now();
    // A pod with no record yet has no annotations (in etcd mode they are the record's), so
    // its addresses are taken in the transaction that creates the record, before anything
    // is read: the creation's condition (no record) is the proof. A pod that has a record (a
    // new sandbox, a repeated ADD) is read and served as below.
    if r.record {
        let pools = [r.ipv4_pools.clone(), r.ipv6_pools.clone()].concat();
        let record = record_writer(store, r, None);
        if let Some(ips) = batch.assign(assign_request(r, pools), record).await {
            let total_ms = t.elapsed().as_secs_f64() * 1e3;
            debug!(handle = %r.handle, ips = ?ips, recorded = true, read_ms = 0.0, alloc_ms = total_ms, total_ms, "ADD's IPAM done");
            return Ok(ips);
        }
    }
    let pod = pod(store, &r.pod).await?;
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let (ips, recorded) = allocate(store, ipam, batch, r, pod.as_ref()).await?;
    let alloc_ms = t.elapsed().as_secs_f64() * 1e3;
    if r.record && !recorded {
        if let Err(e) = write_record(store, r, pod, &ips).await {
            let _ = ipam.release_handle(&r.handle).await;
            return Err(e);
        }
    }
    let total_ms = t.elapsed().as_secs_f64() * 1e3;
    debug!(handle = %r.handle, ips = ?ips, recorded, read_ms, alloc_ms, total_ms, "ADD's IPAM done");
    Ok(ips)
}

/// The addresses, and whether the pod record went with them (the batch path).
async fn allocate(
    store: &Store,
    ipam: &Ipam,
    batch: &impl Batch,
    r: &AddRequest,
    pod: Option<&Pod>,
) -> CniResult<(Vec<IpAddr>, bool)> {
    let ann = pod
        .and_then(|p| p.metadata.annotations.clone())
        .unwrap_or_default();
    let list = |key: &str| -> CniResult<Option<Vec<String>>> {
        ann.get(key)
            .map(|v| {
                serde_json::from_str::<Vec<String>>(v).map_err(|e| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("pod annotation {key}: {v:?} is not a JSON list of strings"),
                        e.to_string(),
                    )
                })
            })
            .transpose()
    };
    let fixed = list(ANNOTATION_IP_ADDRS)?;
    let mut pools = list(ANNOTATION_IPV4_POOLS)?.unwrap_or_else(|| r.ipv4_pools.clone());
    pools.extend(list(ANNOTATION_IPV6_POOLS)?.unwrap_or_else(|| r.ipv6_pools.clone()));
    let req = assign_request(r, pools);
    // The batch creates the handle only if it does not exist: a repeated ADD falls through.
    if fixed.is_none() {
        let record = record_writer(store, r, pod.cloned());
        let with_record = record.is_some();
        if let Some(ips) = batch.assign(req.clone(), record).await {
            return Ok((ips, with_record));
        }
    }
    let _alone = batch.alone().await;
    // A repeated ADD of this attachment keeps its addresses; the owner record is refreshed
    // first (netns, timestamp) so the node agent's leak sweep, which releases only an
    // allocation whose record it has seen unchanged, cannot free them now.
    let existing = ipam
        .refresh_handle(&r.handle, &r.attrs)
        .await
        .map_err(ipam_err)?;
    if !existing.is_empty() {
        info!(container = %r.container_id, handle = %r.handle, ips = ?existing, "ADD repeated: keeping the addresses");
        return Ok((existing, false));
    }
    if let Some(addrs) = fixed {
        let mut ips = vec![];
        for a in addrs {
            let ip: IpAddr = a.parse().map_err(|_| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("pod annotation {ANNOTATION_IP_ADDRS}: {a:?} is not an address"),
                    "",
                )
            })?;
            if let Err(e) = ipam
                .assign_requested_ip(ip, &r.handle, &r.node, &r.attrs, AllowedUse::Workload)
                .await
            {
                let _ = ipam.release_handle(&r.handle).await;
                return Err(ipam_err(e));
            }
            ips.push(ip);
        }
        return Ok((ips, false));
    }
    Ok((ipam.assign(&req).await.map_err(ipam_err)?, false))
}

fn assign_request(r: &AddRequest, pools: Vec<String>) -> AssignRequest {
    AssignRequest {
        handle: r.handle.clone(),
        node: r.node.clone(),
        ipv4: r.ipv4,
        ipv6: r.ipv6,
        attrs: r.attrs.clone(),
        use_: AllowedUse::Workload,
        pools,
    }
}

/// The record's write for a batch transaction (etcd mode): created where `pod` is `None`
/// (on the condition that there is none), else updated on the condition that it has not
/// changed since it was read.
fn record_writer(store: &Store, r: &AddRequest, pod: Option<Pod>) -> Option<Record> {
    let (Some((ns, _)), true) = (&r.pod, r.record) else {
        return None;
    };
    let api = store.namespaced::<Pod>(ns);
    let r = r.clone();
    Some(Box::new(move |ips: &[IpAddr], t: &mut Txn| {
        let p = record_object(&r, pod.clone(), ips);
        if p.metadata.resource_version.is_some() {
            t.update(&api, &p).map(|_| ())
        } else {
            t.create(&api, &p).map(|_| ())
        }
    }))
}

/// etcd mode: the record that tells the controller this workload is alive: the pod as read
/// (or a new one), with the container's ID, the node and the addresses.
fn record_object(r: &AddRequest, pod: Option<Pod>, ips: &[IpAddr]) -> Pod {
    let (ns, name) = r.pod.clone().unwrap_or_default();
    let mut p = pod.unwrap_or_else(|| {
        let mut p = Pod::default();
        p.metadata.name = Some(name);
        p.metadata.namespace = Some(ns);
        p
    });
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_CONTAINER_ID.into(), r.container_id.clone());
    p.spec.get_or_insert_with(Default::default).node_name = Some(r.node.clone());
    let status = p.status.get_or_insert_with(Default::default);
    status.pod_ip = ips.first().map(ToString::to_string);
    status.pod_ips = Some(
        ips.iter()
            .map(|ip| k8s_openapi::api::core::v1::PodIP { ip: ip.to_string() })
            .collect(),
    );
    p
}

/// Writes the record on its own; a pod changed since it was read is read again (a few
/// times) rather than failing the ADD.
async fn write_record(
    store: &Store,
    r: &AddRequest,
    mut pod: Option<Pod>,
    ips: &[IpAddr],
) -> CniResult<()> {
    let Some((ns, name)) = &r.pod else {
        return Ok(());
    };
    let api = store.namespaced::<Pod>(ns);
    for _ in 0..5 {
        let p = record_object(r, pod, ips);
        let w = if p.metadata.resource_version.is_some() {
            api.update(&p).await
        } else {
            api.create(&p).await
        };
        match w {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() || e.is_already_exists() || e.is_not_found() => {
                pod = api.get(name).await.map_err(store_err)?;
            }
            Err(e) => return Err(store_err(e)),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        format!("the record of pod {ns}/{name} kept changing while it was written"),
        "",
    ))
}

/// Frees the attachment's addresses and, when asked, its workload record.
pub async fn del(
    store: &Store,
    ipam: &Ipam,
    batch: &impl Batch,
    r: &DelRequest,
) -> CniResult<Vec<IpAddr>> {
    let freed = match batch.release(&r.handle).await {
        Some(freed) => freed,
        None => ipam.release_handle(&r.handle).await.map_err(ipam_err)?,
    };
    if r.record {
        delete_record(store, r).await?;
    }
    Ok(freed)
}

async fn delete_record(store: &Store, r: &DelRequest) -> CniResult<()> {
    let Some((ns, name)) = &r.pod else {
        return Ok(());
    };
    let api = store.namespaced::<Pod>(ns);
    let Some(p) = api.get(name).await.map_err(store_err)? else {
        return Ok(());
    };
    // Only our own record: a newer sandbox of the same pod may have written its own.
    let ours = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_CONTAINER_ID))
        .is_some_and(|c| *c == r.container_id);
    if !ours {
        return Ok(());
    }
    match api
        .delete(name, p.metadata.resource_version.as_deref())
        .await
    {
        Ok(()) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(store_err(e)),
    }
}
