//! A small Kubernetes API server for tests: the documented REST semantics for any
//! group/version/resource, enough to test a client such as `kube::Api` for real over HTTP.
//!
//! What it does:
//! - paths `/api/v1/...` and `/apis/<group>/<version>/...`, cluster-scoped and
//!   `namespaces/<ns>/...` collections, any resource name (nothing is registered up front);
//! - GET (one object, or a list with `metadata.resourceVersion`), POST (create; 409
//!   AlreadyExists), PUT (replace; 409 Conflict when `metadata.resourceVersion` is stale, 404
//!   when missing; unconditional when it is empty), DELETE (with
//!   `preconditions.resourceVersion`/`uid`; 409 on a mismatch);
//! - `?watch=true&resourceVersion=N`: newline-delimited events after N, in revision order;
//!   an `ERROR` event with a 410 Status when N is older than the last [`ApiServer::compact`];
//!   `resourceVersion` empty or `0` starts with synthetic ADDED events for what exists;
//!   `timeoutSeconds` ends the call; [`ApiServer::drop_watches`] cuts every open watch;
//! - `fieldSelector=a.b=v[,c.d=w]` on lists and watches (any dotted path; a missing field is
//!   ""): a watched object that comes to match is ADDED, one that stops matching DELETED, as
//!   the API server's watch cache does; anything else in a field selector is a 400;
//! - one global revision counter, as etcd gives a real API server; uid and
//!   creationTimestamp set on create and kept on update.
//!
//! What it does not cover: authentication and RBAC, admission and OpenAPI schema validation
//! (CRDs need not be installed and nothing is validated or defaulted), label and field
//! selectors other than field selectors of `path=value` terms, pagination (`limit`/`continue` are ignored: one page), PATCH other than merge
//! patches, server-side apply, subresources (`/status`, `/scale`), finalizers and graceful deletion, generation
//! and managedFields, watch bookmarks, `resourceVersionMatch`, protobuf, discovery
//! (`/api`, `/apis`), and HTTP/2 or TLS.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The server; dropping it stops it.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<Db>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Db {
    revision: u64,
    compacted: u64,
    /// (collection, namespace or "", name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    calls: std::collections::BTreeSet<ApiCall>,
}

/// One kind of request the server has seen, as RBAC names it: who (the bearer token, empty
/// without one), the verb, the API group ("" for core), the resource, and the namespace
/// (None for a cluster-wide request). Tests compare these with ClusterRoles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    pub user: String,
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    /// The list's or watch's `fieldSelector`, as sent.
    pub field_selector: Option<String>,
}

#[derive(Clone)]
struct Change {
    revision: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
    /// The object before the change (MODIFIED and DELETED), for field-selected watches.
    prev: Option<Value>,
}

struct Watcher {
    collection: String,
    namespace: Option<String>,
    fields: Option<Fields>,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// A field selector: every `path=value` term holds (a missing field is "").
#[derive(Clone)]
struct Fields(Vec<(Vec<String>, String)>);

impl Fields {
    fn parse(s: &str) -> Result<Fields, String> {
        let mut terms = vec![];
        for term in s.split(',') {
            let (path, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .filter(|(p, _)| !p.is_empty() && !p.ends_with('!'))
                .ok_or_else(|| {
                    format!("field selector term {term:?}: only path=value is supported")
                })?;
            terms.push((path.split('.').map(str::to_owned).collect(), value.into()));
        }
        Ok(Fields(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, want)| {
            let got = path
                .iter()
                .try_fold(obj, |v, seg| v.get(seg))
                .and_then(Value::as_str)
                .unwrap_or_default();
            got == want
        })
    }

    /// The event a watch with this selector sees for a change: moving into the selection is
    /// ADDED, out of it DELETED.
    fn event(fields: Option<&Fields>, c: &Change) -> Option<&'static str> {
        let Some(f) = fields else {
            return Some(c.kind);
        };
        let was = c.prev.as_ref().is_some_and(|p| f.matches(p));
        let is = c.kind != "DELETED" && f.matches(&c.object);
        match (was, is) {
            (true, true) => Some(c.kind),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

/// Where a request points: `group/version/plural`, namespace, name.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl ApiServer {
    /// Serves on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        // Revision 0 means "most recent" to a watch, so, as with a real cluster (whose etcd has
        // long left revision 0 behind), the first list never reports it.
        let state = Arc::new(Mutex::new(Db {
            revision: 1,
            ..Db::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "test API server stopped");
            }
        });
        Ok(ApiServer { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        lock(&self.state)
    }

    /// Forgets the watch history up to now: watches from older versions get 410 Gone.
    pub fn compact(&self) {
        let mut db = self.db();
        db.compacted = db.revision;
        db.history.clear();
    }

    /// Ends every open watch call, as a restarting API server or a broken connection would.
    pub fn drop_watches(&self) {
        self.db().watchers.clear();
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.db().revision
    }

    /// Every distinct (user, verb, group, resource, namespace) requested so far.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.db().calls.iter().cloned().collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.drop_watches();
        self.task.abort();
    }
}

fn lock(m: &Mutex<Db>) -> MutexGuard<'_, Db> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(
    state: &Mutex<Db>,
    headers: &axum::http::HeaderMap,
    method: &Method,
    t: &Target,
    watch: bool,
    field_selector: Option<String>,
) {
    let verb = match (method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    let user = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    // collection is "<group>/<version>/<plural>" or "v1/<plural>" for the core group.
    let parts: Vec<&str> = t.collection.split('/').collect();
    let (group, resource) = match parts.as_slice() {
        [g, _, r] => (g.to_string(), r.to_string()),
        [_, r] => (String::new(), r.to_string()),
        _ => (String::new(), t.collection.clone()),
    };
    lock(state).calls.insert(ApiCall {
        user,
        verb,
        group,
        resource,
        namespace: t.namespace.clone(),
        field_selector,
    });
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (Some(ns.to_string()), *plural, tail),
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return None,
    };
    let name = match name {
        [] => None,
        [n] => Some(n.to_string()),
        _ => return None, // subresources are not served
    };
    Some(Target {
        collection: format!("{gv}/{plural}"),
        namespace,
        name,
    })
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn meta_str<'a>(v: &'a Value, f: &str) -> Option<&'a str> {
    v.get("metadata")?.get(f)?.as_str()
}

fn set_meta(v: &mut Value, f: &str, val: Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(f.into(), val);
    }
}

async fn handle(
    State(state): State<Arc<Mutex<Db>>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(t) = parse_target(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "{} is not a resource path this test API server serves",
                uri.path()
            ),
        );
    };
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("body is not JSON: {e}"),
                )
            }
        }
    };
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let selector = q.get("fieldSelector").filter(|s| !s.is_empty()).cloned();
    record(&state, &headers, &method, &t, watch, selector.clone());
    let fields = match selector.as_deref().map(Fields::parse).transpose() {
        Ok(f) => f,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    match (method, &t.name) {
        (Method::GET, Some(name)) => get(&state, &t, name),
        (Method::GET, None) if watch => start_watch(&state, t, &q, fields),
        (Method::GET, None) => list(&state, &t, fields.as_ref()),
        (Method::POST, None) => create(&state, &t, body),
        (Method::PUT, Some(name)) => replace(&state, &t, name, body),
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if ct != "application/merge-patch+json" {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("PATCH {ct:?}: the test API server takes merge patches only"),
                );
            }
            patch(&state, &t, name, body)
        }
        (Method::DELETE, Some(name)) => delete(&state, &t, name, body),
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not supported by the test API server"),
        ),
    }
}

fn key(t: &Target, name: &str) -> (String, String, String) {
    (
        t.collection.clone(),
        t.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    )
}

fn get(state: &Mutex<Db>, t: &Target, name: &str) -> Response {
    match lock(state).objects.get(&key(t, name)) {
        Some(o) => ok(StatusCode::OK, o),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {name:?} not found", t.collection),
        ),
    }
}

fn in_scope(t: &Target, collection: &str, ns: &str) -> bool {
    collection == t.collection && t.namespace.as_deref().is_none_or(|n| n == ns)
}

fn list(state: &Mutex<Db>, t: &Target, fields: Option<&Fields>) -> Response {
    let db = lock(state);
    let items: Vec<&Value> = db
        .objects
        .iter()
        .filter(|((c, ns, _), _)| in_scope(t, c, ns))
        .filter(|(_, v)| fields.is_none_or(|f| f.matches(v)))
        .map(|(_, v)| v)
        .collect();
    ok(
        StatusCode::OK,
        &json!({
            "kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": db.revision.to_string()},
            "items": items,
        }),
    )
}

impl Db {
    fn commit(&mut self, t: &Target, kind: &'static str, object: Value, prev: Option<Value>) {
        let ns = t.namespace.clone().unwrap_or_default();
        let change = Change {
            revision: self.revision,
            collection: t.collection.clone(),
            namespace: ns.clone(),
            kind,
            object,
            prev,
        };
        self.watchers.retain(|w| {
            let relevant =
                w.collection == change.collection && w.namespace.as_deref().is_none_or(|n| n == ns);
            match Fields::event(w.fields.as_ref(), &change).filter(|_| relevant) {
                Some(kind) => w.tx.send(event_line(kind, &change.object)).is_ok(),
                None => !w.tx.is_closed(),
            }
        });
        self.history.push(change);
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn create(state: &Mutex<Db>, t: &Target, body: Option<Value>) -> Response {
    let Some(mut obj) = body.filter(Value::is_object) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "create needs an object".into(),
        );
    };
    let Some(name) = meta_str(&obj, "name").map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value (generateName is not supported here)".into(),
        );
    };
    if meta_str(&obj, "namespace").is_some_and(|n| Some(n) != t.namespace.as_deref()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata.namespace does not match the path".into(),
        );
    }
    let mut db = lock(state);
    let k = key(t, &name);
    if db.objects.contains_key(&k) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} {name:?} already exists", t.collection),
        );
    }
    db.revision += 1;
    let rev = db.revision;
    set_meta(&mut obj, "resourceVersion", rev.to_string().into());
    set_meta(
        &mut obj,
        "uid",
        format!("00000000-0000-4000-8000-{rev:012}").into(),
    );
    set_meta(&mut obj, "creationTimestamp", "2026-01-01T00:00:00Z".into());
    if let Some(ns) = &t.namespace {
        set_meta(&mut obj, "namespace", ns.clone().into());
    }
    db.objects.insert(k, obj.clone());
    db.commit(t, "ADDED", obj.clone(), None);
    ok(StatusCode::CREATED, &obj)
}

fn replace(state: &Mutex<Db>, t: &Target, name: &str, body: Option<Value>) -> Response {
    let Some(mut obj) = body.filter(Value::is_object) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "replace needs an object".into(),
        );
    };
    if meta_str(&obj, "name") != Some(name) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata.name does not match the path".into(),
        );
    }
    let mut db = lock(state);
    let k = key(t, name);
    let Some(current) = db.objects.get(&k) else {
        return not_found(t, name);
    };
    let given = meta_str(&obj, "resourceVersion").unwrap_or_default();
    if !given.is_empty() && Some(given) != meta_str(current, "resourceVersion") {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                t.collection
            ),
        );
    }
    for f in ["uid", "creationTimestamp", "namespace"] {
        if let Some(v) = current.get("metadata").and_then(|m| m.get(f)).cloned() {
            set_meta(&mut obj, f, v);
        }
    }
    db.revision += 1;
    set_meta(&mut obj, "resourceVersion", db.revision.to_string().into());
    let prev = db.objects.insert(k, obj.clone());
    db.commit(t, "MODIFIED", obj.clone(), prev);
    ok(StatusCode::OK, &obj)
}

fn not_found(t: &Target, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} {name:?} not found", t.collection),
    )
}

/// A JSON merge patch (RFC 7386) of a stored object, as the API server applies
/// `application/merge-patch+json`: no resourceVersion check unless the patch names one.
fn patch(state: &Mutex<Db>, t: &Target, name: &str, body: Option<Value>) -> Response {
    let Some(p) = body.filter(Value::is_object) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "a merge patch is an object".into(),
        );
    };
    let mut db = lock(state);
    let k = key(t, name);
    let Some(current) = db.objects.get(&k).cloned() else {
        return not_found(t, name);
    };
    if let Some(rv) = meta_str(&p, "resourceVersion") {
        if Some(rv) != meta_str(&current, "resourceVersion") {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!("{} {name:?}: the object has been modified", t.collection),
            );
        }
    }
    // Depth-first over (place in the object, piece of the patch).
    let mut obj = current;
    let mut work: Vec<(Vec<String>, Value)> = vec![(vec![], p)];
    while let Some((path, piece)) = work.pop() {
        let mut at = &mut obj;
        for seg in &path {
            if !at.is_object() {
                *at = Value::Object(Default::default());
            }
            at = at
                .as_object_mut()
                .expect("made an object above")
                .entry(seg.clone())
                .or_insert(Value::Null);
        }
        match piece {
            Value::Object(fields) => {
                if !at.is_object() {
                    *at = Value::Object(Default::default());
                }
                for (f, v) in fields {
                    if v.is_null() {
                        at.as_object_mut().expect("an object").remove(&f);
                    } else {
                        let mut p = path.clone();
                        p.push(f);
                        work.push((p, v));
                    }
                }
            }
            other => *at = other,
        }
    }
    for f in ["name", "uid", "creationTimestamp", "namespace"] {
        if let Some(v) = db
            .objects
            .get(&k)
            .and_then(|c| c.get("metadata"))
            .and_then(|m| m.get(f))
            .cloned()
        {
            set_meta(&mut obj, f, v);
        }
    }
    db.revision += 1;
    set_meta(&mut obj, "resourceVersion", db.revision.to_string().into());
    let prev = db.objects.insert(k, obj.clone());
    db.commit(t, "MODIFIED", obj.clone(), prev);
    ok(StatusCode::OK, &obj)
}

fn delete(state: &Mutex<Db>, t: &Target, name: &str, body: Option<Value>) -> Response {
    let pre = body.as_ref().and_then(|b| b.get("preconditions"));
    let want_rv = pre
        .and_then(|p| p.get("resourceVersion"))
        .and_then(Value::as_str);
    let want_uid = pre.and_then(|p| p.get("uid")).and_then(Value::as_str);
    let mut db = lock(state);
    let k = key(t, name);
    let Some(current) = db.objects.get(&k) else {
        return not_found(t, name);
    };
    let mismatch = want_rv.is_some_and(|rv| Some(rv) != meta_str(current, "resourceVersion"))
        || want_uid.is_some_and(|u| Some(u) != meta_str(current, "uid"));
    if mismatch {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Precondition failed for {} {name:?}", t.collection),
        );
    }
    let mut last = db.objects.remove(&k).unwrap_or_default();
    db.revision += 1;
    set_meta(&mut last, "resourceVersion", db.revision.to_string().into());
    db.commit(t, "DELETED", last.clone(), Some(last.clone()));
    ok(StatusCode::OK, &last)
}

fn start_watch(
    state: &Mutex<Db>,
    t: Target,
    q: &HashMap<String, String>,
    fields: Option<Fields>,
) -> Response {
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    {
        let mut db = lock(state);
        if rv.is_empty() || rv == "0" {
            // "Start at most recent": the current state as ADDED, then what follows.
            for ((c, ns, _), o) in &db.objects {
                if in_scope(&t, c, ns) && fields.as_ref().is_none_or(|f| f.matches(o)) {
                    let _ = tx.send(event_line("ADDED", o));
                }
            }
        } else {
            let Ok(from) = rv.parse::<u64>() else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("resourceVersion {rv:?} is not valid"),
                );
            };
            if from < db.compacted {
                let gone = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", db.compacted),
                    "reason": "Expired", "code": 410,
                });
                let _ = tx.send(event_line("ERROR", &gone));
                drop(tx);
                return stream_response(rx, timeout);
            }
            for c in db.history.iter().filter(|c| c.revision > from) {
                if in_scope(&t, &c.collection, &c.namespace) {
                    if let Some(kind) = Fields::event(fields.as_ref(), c) {
                        let _ = tx.send(event_line(kind, &c.object));
                    }
                }
            }
        }
        db.watchers.push(Watcher {
            collection: t.collection,
            namespace: t.namespace,
            fields,
            tx,
        });
    }
    stream_response(rx, timeout)
}

fn stream_response(mut rx: mpsc::UnboundedReceiver<Bytes>, timeout: Duration) -> Response {
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .take_until(tokio::time::sleep(timeout))
        .map(Ok::<_, Infallible>);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::from_stream(events),
    )
        .into_response()
}
