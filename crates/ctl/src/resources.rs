//! `get`, `create`, `apply`, `replace`, `delete`, `label`, `validate` and `convert`.
//!
//! Every document of every `-f` source is read and checked (its kind, unknown fields, the
//! kind's rules) before anything is written: one bad document writes nothing. The writes then
//! go one by one; a refusal from the datastore names the resource and its source, the others
//! still go, and the command exits 1.

use serde_json::Value;

use crate::calico;
use crate::cli::{ConvertArgs, DeleteArgs, DocOutput, FileArgs, GetArgs, LabelArgs, Output};
use crate::client::Client;
use crate::input::{self, Doc};
use crate::kind::{self, Kind};
use crate::output;
use crate::Failure;

/// A document ready to be written.
pub struct Prepared {
    pub kind: Kind,
    pub name: String,
    pub origin: String,
    pub value: Value,
}

impl Prepared {
    fn what(&self) -> String {
        format!("{} {:?}", self.kind.name(), self.name)
    }
}

/// Reads and checks every document; on any problem, reports them all and returns an error.
pub fn prepare(files: &[String]) -> Result<Vec<Prepared>, Failure> {
    let docs = input::read(files).map_err(Failure::Error)?;
    if docs.is_empty() {
        return Err(Failure::Error(anyhow::anyhow!(
            "no resources found in {}",
            files.join(", ")
        )));
    }
    let mut out = vec![];
    let mut problems = 0;
    for d in docs {
        match prepare_one(&d) {
            Ok((p, notes)) => {
                for n in notes {
                    eprintln!("note: {}: {n}", d.origin());
                }
                out.push(p);
            }
            Err((e, path)) => {
                let at = path.map_or_else(|| d.origin(), |p| d.field_origin(&p));
                eprintln!("error: {at}: {e}");
                problems += 1;
            }
        }
    }
    if problems > 0 {
        return Err(Failure::Reported(format!(
            "{problems} of {} document(s) refused; nothing was written",
            problems + out.len()
        )));
    }
    Ok(out)
}

/// The document ready to write, and notes; or why not, and the path of the field at fault
/// when one is.
fn prepare_one(d: &Doc) -> Result<(Prepared, Vec<String>), (String, Option<String>)> {
    prepare_doc(d)
        .map_err(|e| (e, None))
        .and_then(|(p, notes)| {
            kind::check(p.kind, &p.value)
                .map_err(|e| {
                    let path = match &e {
                        kind::DecodeError::Shape { path, .. } if !path.is_empty() => {
                            Some(path.clone())
                        }
                        _ => None,
                    };
                    let msg = match e {
                        kind::DecodeError::Invalid(i) => i.to_string(),
                        other => format!("{} {:?}: {other}", p.kind.name(), p.name),
                    };
                    (msg, path)
                })
                .map(|()| (p, notes))
        })
}

fn prepare_doc(d: &Doc) -> Result<(Prepared, Vec<String>), String> {
    let v = &d.value;
    if !v.is_object() {
        return Err("a document must be a mapping with apiVersion, kind, metadata and spec".into());
    }
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind_s = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let (kind, value, notes) = match api {
        "brindle.dev/v1" => {
            let kind = Kind::from_doc(kind_s).ok_or_else(|| {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "kind {kind_s:?} is not a brindle.dev/v1 kind ({})",
                    known.join(", ")
                )
            })?;
            (kind, v.clone(), vec![])
        }
        calico::API_VERSION => {
            let c = calico::convert(v)?;
            (c.kind, c.value, c.notes)
        }
        "" => return Err("apiVersion is missing".into()),
        other => {
            return Err(format!(
                "apiVersion {other:?} (kind {kind_s:?}) is not brindle.dev/v1 or {}",
                calico::API_VERSION
            ))
        }
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(format!("{}: metadata.name: required", kind.name()));
    }
    Ok((
        Prepared {
            kind,
            name,
            origin: d.origin(),
            value,
        },
        notes,
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Apply,
    Replace,
}

pub async fn write(c: &Client, args: &FileArgs, verb: Verb) -> Result<(), Failure> {
    let docs = prepare(&args.files)?;
    let mut failed = 0;
    for p in &docs {
        match write_one(c, p, verb).await {
            Ok(msg) => eprintln!("{} {:?} {msg}", p.kind.name(), p.name),
            // The datastore's validation already names the resource.
            Err(e)
                if matches!(
                    e.downcast_ref::<brindle_datastore::StoreError>(),
                    Some(brindle_datastore::StoreError::Invalid(_))
                ) =>
            {
                eprintln!("error: {}: {e}", p.origin);
                failed += 1;
            }
            Err(e) => {
                eprintln!("error: {}: {}: {e}", p.origin, p.what());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Reported(format!(
            "{failed} of {} resource(s) failed",
            docs.len()
        )));
    }
    Ok(())
}

/// Server-set metadata that a new object must not carry.
fn strip_server_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
}

/// Spec, labels and annotations: what a write can change.
fn content(v: &Value) -> (Value, Value, Value) {
    let norm = |x: Option<&Value>| match x {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(x) => x.clone(),
    };
    (
        norm(v.get("spec")),
        norm(v.pointer("/metadata/labels")),
        norm(v.pointer("/metadata/annotations")),
    )
}

/// The document as its type serializes it (defaults filled in), for comparison.
fn normalized(kind: Kind, v: &Value) -> Value {
    kind::with_kind!(kind, K => {
        serde_json::from_value::<K>(v.clone())
            .ok()
            .and_then(|o| serde_json::to_value(o).ok())
            .unwrap_or_else(|| v.clone())
    })
}

async fn write_one(c: &Client, p: &Prepared, verb: Verb) -> anyhow::Result<&'static str> {
    let existing = c.get(p.kind, &p.name).await?;
    let mut v = p.value.clone();
    match (verb, existing) {
        (Verb::Create, Some(_)) => anyhow::bail!("already exists (use apply or replace)"),
        (Verb::Replace, None) => anyhow::bail!("does not exist (use create or apply)"),
        (Verb::Create | Verb::Apply, None) => {
            strip_server_fields(&mut v);
            c.create(p.kind, v).await?;
            Ok("created")
        }
        (Verb::Apply | Verb::Replace, Some(old)) => {
            if content(&normalized(p.kind, &v)) == content(&normalized(p.kind, &old)) {
                return Ok("unchanged");
            }
            // A resourceVersion in the document makes the write conditional on it; without
            // one the stored object is replaced as read.
            let rv = v
                .pointer("/metadata/resourceVersion")
                .cloned()
                .or_else(|| old.pointer("/metadata/resourceVersion").cloned());
            strip_server_fields(&mut v);
            if let (Some(rv), Some(m)) = (rv, v.get_mut("metadata").and_then(Value::as_object_mut))
            {
                m.insert("resourceVersion".into(), rv);
            }
            c.update(p.kind, v).await?;
            Ok(if verb == Verb::Apply {
                "configured"
            } else {
                "replaced"
            })
        }
    }
}

pub fn validate(args: &FileArgs) -> Result<(), Failure> {
    let docs = prepare(&args.files)?;
    for p in &docs {
        eprintln!("{}: {} is valid", p.origin, p.what());
    }
    Ok(())
}

pub fn convert(args: &ConvertArgs) -> Result<(), Failure> {
    let docs = prepare(&args.files.files)?;
    let yaml = args.output == DocOutput::Yaml;
    let mut out = String::new();
    for (i, p) in docs.iter().enumerate() {
        let v = normalized(p.kind, &p.value);
        let mut v = v;
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), "brindle.dev/v1".into());
            m.insert("kind".into(), p.kind.name().into());
        }
        if yaml {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&serde_yaml_ng::to_string(&v).map_err(|e| Failure::Error(e.into()))?);
        } else {
            out.push_str(&serde_json::to_string_pretty(&v).map_err(|e| Failure::Error(e.into()))?);
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

pub async fn delete(c: &Client, args: &DeleteArgs) -> Result<(), Failure> {
    let targets: Vec<(Kind, String, String)> = if !args.files.is_empty() {
        prepare(&args.files)?
            .into_iter()
            .map(|p| (p.kind, p.name, p.origin))
            .collect()
    } else {
        let (Some(k), Some(n)) = (&args.kind, &args.name) else {
            return Err(Failure::Usage("delete needs -f FILE or KIND NAME".into()));
        };
        let kind = Kind::parse(k).map_err(Failure::Usage)?;
        vec![(kind, n.clone(), "command line".into())]
    };
    let mut failed = 0;
    for (kind, name, origin) in &targets {
        match c.delete(*kind, name).await {
            Ok(()) => eprintln!("{} {name:?} deleted", kind.name()),
            Err(brindle_datastore::StoreError::NotFound { .. }) if args.ignore_not_found => {}
            Err(brindle_datastore::StoreError::NotFound { .. }) => {
                eprintln!("error: {origin}: {} {name:?} not found", kind.name());
                failed += 1;
            }
            Err(e) => {
                eprintln!("error: {origin}: {} {name:?}: {e}", kind.name());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Reported(format!(
            "{failed} of {} deletion(s) failed",
            targets.len()
        )));
    }
    Ok(())
}

pub async fn label(c: &Client, args: &LabelArgs) -> Result<(), Failure> {
    let kind = Kind::parse(&args.kind).map_err(Failure::Usage)?;
    let mut set = vec![];
    let mut remove = vec![];
    for l in &args.labels {
        if let Some(k) = l.strip_suffix('-') {
            check_label_key(k).map_err(Failure::Usage)?;
            remove.push(k.to_string());
        } else if let Some((k, v)) = l.split_once('=') {
            check_label_key(k).map_err(Failure::Usage)?;
            set.push((k.to_string(), v.to_string()));
        } else {
            return Err(Failure::Usage(format!(
                "{l:?}: write key=value to set a label or key- to remove one"
            )));
        }
    }
    let Some(mut v) = c
        .get(kind, &args.name)
        .await
        .map_err(|e| Failure::Error(e.into()))?
    else {
        return Err(Failure::Error(anyhow::anyhow!(
            "{} {:?} not found",
            kind.name(),
            args.name
        )));
    };
    let meta = v
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Failure::Error(anyhow::anyhow!("stored object has no metadata")))?;
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if labels.is_null() {
        *labels = Value::Object(Default::default());
    }
    let Some(labels) = labels.as_object_mut() else {
        return Err(Failure::Error(anyhow::anyhow!(
            "stored labels are not a map"
        )));
    };
    for (k, val) in &set {
        match labels.get(k).and_then(Value::as_str) {
            Some(old) if old != val && !args.overwrite => {
                return Err(Failure::Error(anyhow::anyhow!(
                    "label {k:?} already has value {old:?}; add --overwrite to change it"
                )))
            }
            _ => {
                labels.insert(k.clone(), Value::String(val.clone()));
            }
        }
    }
    for k in &remove {
        if labels.remove(k).is_none() {
            eprintln!("label {k:?} not found");
        }
    }
    // The stored resourceVersion stays in `v`: a concurrent change makes this a conflict.
    c.update(kind, v)
        .await
        .map_err(|e| Failure::Error(anyhow::anyhow!("{} {:?}: {e}", kind.name(), args.name)))?;
    eprintln!("{} {:?} labeled", kind.name(), args.name);
    Ok(())
}

/// Kubernetes' label key syntax: `[prefix/]name`, name ≤ 63 of [A-Za-z0-9._-], starting and
/// ending alphanumeric.
fn check_label_key(k: &str) -> Result<(), String> {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{k:?} is not a valid label key"))
    }
}

pub async fn get(c: &Client, args: &GetArgs) -> Result<(), Failure> {
    // Kubernetes' own kind, read where the agents read it.
    if ["networkpolicies", "networkpolicy", "netpol"]
        .contains(&args.kind.to_ascii_lowercase().as_str())
    {
        return crate::policy_cmd::list(&c.store).await;
    }
    let kind = Kind::parse(&args.kind).map_err(Failure::Usage)?;
    let items = match &args.name {
        Some(n) => match c.get(kind, n).await.map_err(|e| Failure::Error(e.into()))? {
            Some(v) => vec![v],
            None => {
                return Err(Failure::Error(anyhow::anyhow!(
                    "{} {n:?} not found",
                    kind.name()
                )))
            }
        },
        None => c.list(kind).await.map_err(|e| Failure::Error(e.into()))?,
    };
    match args.output {
        Output::Yaml | Output::Json => {
            let s = output::documents(items, args.name.is_some(), args.output == Output::Yaml)
                .map_err(Failure::Error)?;
            print!("{s}");
        }
        Output::Table | Output::Wide => {
            if items.is_empty() {
                eprintln!("No {} found.", kind.plural());
                return Ok(());
            }
            print!("{}", table(kind, &items, args.output == Output::Wide));
        }
    }
    Ok(())
}

/// A column: its header and how to read it from an object.
type Column = (&'static str, fn(&Value) -> String);

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(x) => x.to_string(),
    }
}

fn columns_of(kind: Kind, wide: bool) -> Vec<Column> {
    let name: Column = ("NAME", |v| s(v, "/metadata/name"));
    let mut cols = vec![name];
    match kind {
        Kind::IPPool => {
            cols.push(("CIDR", |v| s(v, "/spec/cidr")));
            if wide {
                cols.push(("NAT", |v| s(v, "/spec/natOutgoing")));
                cols.push(("IPIPMODE", |v| s(v, "/spec/ipipMode")));
                cols.push(("BLOCKSIZE", |v| {
                    let b = s(v, "/spec/blockSize");
                    if b.is_empty() {
                        let v6 = s(v, "/spec/cidr").contains(':');
                        (if v6 { "122" } else { "26" }).to_string()
                    } else {
                        b
                    }
                }));
                cols.push(("DISABLED", |v| s(v, "/spec/disabled")));
                cols.push(("DISABLEBGPEXPORT", |v| s(v, "/spec/disableBGPExport")));
            }
            cols.push(("SELECTOR", |v| s(v, "/spec/nodeSelector")));
        }
        Kind::BGPPeer => {
            cols.push(("PEERIP", |v| s(v, "/spec/peerIP")));
            cols.push(("NODE", |v| {
                let n = s(v, "/spec/node");
                let sel = s(v, "/spec/nodeSelector");
                match (n.is_empty(), sel.is_empty()) {
                    (false, _) => n,
                    (true, false) => format!("({sel})"),
                    (true, true) => "(global)".into(),
                }
            }));
            cols.push(("ASN", |v| s(v, "/spec/asNumber")));
            if wide {
                cols.push(("PEERSELECTOR", |v| s(v, "/spec/peerSelector")));
                cols.push(("RRCLIENT", |v| s(v, "/spec/routeReflectorClient")));
            }
        }
        Kind::BGPFilter => {
            fn rules(v: &Value, list: &str) -> String {
                v.pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string()
            }
            cols.push(("IMPORTV4", |v| rules(v, "importV4")));
            cols.push(("EXPORTV4", |v| rules(v, "exportV4")));
            cols.push(("IMPORTV6", |v| rules(v, "importV6")));
            cols.push(("EXPORTV6", |v| rules(v, "exportV6")));
        }
        Kind::BGPConfiguration => {
            cols.push(("LOGSEVERITY", |v| s(v, "/spec/logSeverityScreen")));
            cols.push(("MESHENABLED", |v| s(v, "/spec/nodeToNodeMeshEnabled")));
            cols.push(("ASNUMBER", |v| s(v, "/spec/asNumber")));
            if wide {
                cols.push(("LISTENPORT", |v| s(v, "/spec/listenPort")));
                cols.push(("SERVICECLUSTERIPS", |v| {
                    v.pointer("/spec/serviceClusterIPs")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .map(|r| s(r, "/cidr"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                }));
            }
        }
        Kind::IPAMBlock => {
            cols.push(("CIDR", |v| s(v, "/spec/cidr")));
            cols.push(("AFFINITY", |v| s(v, "/spec/affinity")));
            cols.push(("IN-USE", |v| {
                let a = v.pointer("/spec/allocations").and_then(Value::as_array);
                a.map(|a| {
                    let used = a.iter().filter(|x| !x.is_null()).count();
                    format!("{used}/{}", a.len())
                })
                .unwrap_or_default()
            }));
        }
        Kind::BlockAffinity => {
            cols.push(("NODE", |v| s(v, "/spec/node")));
            cols.push(("CIDR", |v| s(v, "/spec/cidr")));
            cols.push(("STATE", |v| s(v, "/spec/state")));
        }
        Kind::IPAMHandle => {
            cols.push(("HANDLE", |v| s(v, "/spec/handleID")));
            cols.push(("ADDRESSES", |v| {
                v.pointer("/spec/block")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.values()
                            .filter_map(Value::as_u64)
                            .sum::<u64>()
                            .to_string()
                    })
                    .unwrap_or_default()
            }));
        }
        Kind::IPAMConfig => {
            cols.push(("STRICTAFFINITY", |v| s(v, "/spec/strictAffinity")));
            cols.push(("MAXBLOCKSPERHOST", |v| s(v, "/spec/maxBlocksPerHost")));
            if wide {
                cols.push(("AUTOALLOCATEBLOCKS", |v| s(v, "/spec/autoAllocateBlocks")));
            }
        }
        Kind::Node => {
            cols.push(("ASN", |v| {
                let a = s(v, "/spec/bgp/asNumber");
                if a.is_empty() {
                    "(cluster)".into()
                } else {
                    a
                }
            }));
            cols.push(("IPV4", |v| s(v, "/spec/bgp/ipv4Address")));
            if wide {
                cols.push(("IPV6", |v| s(v, "/spec/bgp/ipv6Address")));
                cols.push(("RR-CLUSTER-ID", |v| {
                    s(v, "/spec/bgp/routeReflectorClusterID")
                }));
                cols.push(("TUNNEL-ADDR", |v| s(v, "/spec/bgp/ipv4IPIPTunnelAddr")));
                cols.push(("AGENT", |v| {
                    v.pointer("/metadata/annotations")
                        .and_then(|a| a.get(brindle_api::node::annotations::AGENT_VERSION))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                }));
            }
        }
    }
    cols
}

pub fn table(kind: Kind, items: &[Value], wide: bool) -> String {
    let cols = columns_of(kind, wide);
    let header: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let mut rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| cols.iter().map(|c| (c.1)(v)).collect())
        .collect();
    rows.sort();
    output::columns(&header, &rows)
}
