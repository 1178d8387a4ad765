//! Kubernetes backend: `kube::Api<DynamicObject>` for every kind, so CRDs and native types
//! (Node, Pod, Service, EndpointSlice) go through one code path. The API server does the
//! compare-and-swap (PUT with a stale resourceVersion is 409) and keeps the watch history
//! (410 Gone when a watch's resourceVersion is too old).
//!
//! Watches are re-issued from the last resourceVersion seen (events and bookmarks) whenever
//! the server ends one (it does every few minutes) or the connection drops.

use async_trait::async_trait;
use futures::TryStreamExt;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use super::{meta, spawn_watch, Backend, Ended, Follow, RawEvent, RawWatch};
use crate::{Key, ResourceType, Result, StoreError};

const NAME: &str = "kubernetes";
const LIST_PAGE: u32 = 500;
/// How long the server may hold one watch call open before we re-issue it.
const WATCH_TIMEOUT_SECS: u32 = 290;

#[derive(Clone)]
pub struct KubernetesBackend {
    client: kube::Client,
    endpoint: String,
}

impl KubernetesBackend {
    pub fn new(client: kube::Client, endpoint: impl Into<String>) -> Self {
        KubernetesBackend {
            client,
            endpoint: endpoint.into(),
        }
    }

    /// A backend for the API server at `config.cluster_url`.
    pub fn from_config(config: kube::Config) -> Result<Self, kube::Error> {
        let endpoint = config.cluster_url.to_string();
        Ok(Self::new(kube::Client::try_from(config)?, endpoint))
    }

    fn api(&self, ty: &ResourceType, ns: Option<&str>) -> kube::Api<DynamicObject> {
        let ar = ApiResource {
            group: ty.group.clone(),
            version: ty.version.clone(),
            api_version: ty.api_version(),
            kind: ty.kind.clone(),
            plural: ty.plural.clone(),
        };
        match ns {
            Some(ns) => kube::Api::namespaced_with(self.client.clone(), ns, &ar),
            None => kube::Api::all_with(self.client.clone(), &ar),
        }
    }

    fn err(&self, key: Key, expected: Option<&str>, e: kube::Error) -> StoreError {
        match e {
            kube::Error::Api(s) => match s.code {
                404 => StoreError::NotFound { backend: NAME, key },
                409 if s.reason == "AlreadyExists" => {
                    StoreError::AlreadyExists { backend: NAME, key }
                }
                409 => StoreError::Conflict {
                    backend: NAME,
                    key,
                    expected: expected.unwrap_or_default().to_owned(),
                },
                410 => StoreError::Expired {
                    backend: NAME,
                    key,
                    revision: expected.unwrap_or_default().to_owned(),
                },
                _ => StoreError::Backend {
                    backend: NAME,
                    key,
                    message: format!("{} {}: {}", s.code, s.reason, s.message),
                },
            },
            e @ (kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::ReadEvents(_)) => StoreError::Unavailable {
                backend: NAME,
                endpoint: self.endpoint.clone(),
                key,
                source: Box::new(e),
            },
            e => StoreError::Backend {
                backend: NAME,
                key,
                message: e.to_string(),
            },
        }
    }
}

/// The API server's field selector for objects on `node` (`spec.nodeName=<node>`).
fn field_selector(ty: &ResourceType, node: Option<&str>) -> Option<String> {
    Some(format!("{}={}", ty.node_field()?, node?))
}

fn to_value(key: impl FnOnce() -> Key, obj: DynamicObject) -> Result<Value> {
    serde_json::to_value(obj).map_err(|source| StoreError::Decode {
        backend: NAME,
        key: key(),
        source,
    })
}

fn to_dynamic(key: impl FnOnce() -> Key, obj: Value) -> Result<DynamicObject> {
    serde_json::from_value(obj).map_err(|source| StoreError::Decode {
        backend: NAME,
        key: key(),
        source,
    })
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
        let key = || ty.key(ns, Some(name));
        match self.api(ty, ns).get_opt(name).await {
            Ok(Some(o)) => to_value(key, o).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.err(key(), None, e)),
        }
    }

    async fn list_pages(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        page: &mut (dyn FnMut(Vec<Value>) -> Result<()> + Send),
    ) -> Result<String> {
        let api = self.api(ty, ns);
        let mut lp = ListParams::default().limit(LIST_PAGE);
        if let Some(sel) = field_selector(ty, node) {
            lp = lp.fields(&sel);
        }
        loop {
            let list = api
                .list(&lp)
                .await
                .map_err(|e| self.err(ty.key(ns, None), None, e))?;
            let revision = list.metadata.resource_version.clone().unwrap_or_default();
            let items = list
                .items
                .into_iter()
                .map(|o| to_value(|| ty.key(ns, None), o))
                .collect::<Result<Vec<_>>>()?;
            page(items)?;
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(revision),
            }
        }
    }

    async fn create(&self, ty: &ResourceType, obj: Value) -> Result<Value> {
        let ns = meta::namespace(&obj).map(str::to_owned);
        let name = meta::name(&obj).map(str::to_owned);
        let key = || ty.key(ns.as_deref(), name.as_deref());
        let obj = to_dynamic(key, obj)?;
        match self
            .api(ty, ns.as_deref())
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(o) => to_value(key, o),
            Err(e) => Err(self.err(key(), None, e)),
        }
    }

    async fn update(&self, ty: &ResourceType, obj: Value) -> Result<Value> {
        let ns = meta::namespace(&obj).map(str::to_owned);
        let name = meta::name(&obj).unwrap_or_default().to_owned();
        let expected = meta::resource_version(&obj).map(str::to_owned);
        let key = || ty.key(ns.as_deref(), Some(&name));
        let obj = to_dynamic(key, obj)?;
        match self
            .api(ty, ns.as_deref())
            .replace(&name, &PostParams::default(), &obj)
            .await
        {
            Ok(o) => to_value(key, o),
            Err(e) => Err(self.err(key(), expected.as_deref(), e)),
        }
    }

    async fn merge_patch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        let key = || ty.key(ns, Some(name));
        match self
            .api(ty, ns)
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(o) => to_value(key, o),
            Err(e) => Err(self.err(key(), None, e)),
        }
    }

    async fn delete(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<()> {
        let mut dp = DeleteParams::default();
        if let Some(rv) = precondition {
            dp = dp.preconditions(Preconditions {
                resource_version: Some(rv.to_owned()),
                uid: None,
            });
        }
        self.api(ty, ns)
            .delete(name, &dp)
            .await
            .map(|_| ())
            .map_err(|e| self.err(ty.key(ns, Some(name)), precondition, e))
    }

    async fn watch(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        node: Option<&str>,
        revision: &str,
    ) -> Result<RawWatch> {
        Ok(spawn_watch(|tx| Watch {
            backend: self.clone(),
            api: self.api(ty, ns),
            fields: field_selector(ty, node),
            key: ty.key(ns, None),
            last: revision.to_owned(),
            tx,
        }))
    }
}

struct Watch {
    backend: KubernetesBackend,
    api: kube::Api<DynamicObject>,
    /// The field selector (`spec.nodeName=...`) of a watch limited to one node.
    fields: Option<String>,
    key: Key,
    last: String,
    tx: mpsc::Sender<Result<RawEvent>>,
}

impl Follow for Watch {
    fn follow(&mut self) -> impl std::future::Future<Output = Ended> + Send {
        Watch::follow(self)
    }
    fn describe(&self) -> String {
        format!("kubernetes {} at resourceVersion {}", self.key, self.last)
    }
    fn sender(&self) -> &mpsc::Sender<Result<RawEvent>> {
        &self.tx
    }
}

impl Watch {
    async fn expire(&self) -> Ended {
        let e = StoreError::Expired {
            backend: NAME,
            key: self.key.clone(),
            revision: self.last.clone(),
        };
        let _ = self.tx.send(Err(e)).await;
        Ended::Stop
    }

    async fn follow(&mut self) -> Ended {
        let mut wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        if let Some(f) = &self.fields {
            wp = wp.fields(f);
        }
        let stream = match self.api.watch(&wp, &self.last).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 410 => return self.expire().await,
            Err(e) => return Ended::Reconnect(Some(e.to_string())),
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        loop {
            let next = tokio::select! {
                n = stream.try_next() => n,
                _ = self.tx.closed() => return Ended::Stop,
            };
            let ev = match next {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ended::Reconnect(None),
                Err(e) => return Ended::Reconnect(Some(e.to_string())),
            };
            let (obj, wrap): (DynamicObject, fn(Value) -> RawEvent) = match ev {
                WatchEvent::Added(o) => (o, RawEvent::Added),
                WatchEvent::Modified(o) => (o, RawEvent::Modified),
                WatchEvent::Deleted(o) => (o, RawEvent::Deleted),
                WatchEvent::Bookmark(b) => {
                    self.last = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(s) if s.code == 410 => return self.expire().await,
                WatchEvent::Error(s) => {
                    let err =
                        self.backend
                            .err(self.key.clone(), Some(&self.last), kube::Error::Api(s));
                    return Ended::Reconnect(Some(err.to_string()));
                }
            };
            if let Some(rv) = obj.metadata.resource_version.clone() {
                self.last = rv;
            }
            let value = match to_value(|| self.key.clone(), obj) {
                Ok(v) => v,
                Err(e) => {
                    warn!(key = %self.key, error = %e, "undecodable object in watch");
                    continue;
                }
            };
            if self.tx.send(Ok(wrap(value))).await.is_err() {
                return Ended::Stop;
            }
        }
    }
}
