//! What an operator does to try NetworkPolicy in the lab: label namespaces and pods, apply
//! and delete Kubernetes YAML (NetworkPolicy, Namespace) as `kubectl` would, and probe every
//! pod from every pod (the upstream truth table).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::Lab;

/// `k=v` sets a label, `k-` removes it.
pub fn parse_edits(edits: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    edits
        .iter()
        .map(|e| match (e.split_once('='), e.strip_suffix('-')) {
            (Some((k, v)), _) if !k.is_empty() => Ok((k.to_string(), Some(v.to_string()))),
            (None, Some(k)) if !k.is_empty() => Ok((k.to_string(), None)),
            _ => Err(format!(
                "{e:?}: give key=value to set a label or key- to remove it"
            )),
        })
        .collect()
}

fn edited(
    mut labels: BTreeMap<String, String>,
    edits: &[(String, Option<String>)],
) -> BTreeMap<String, String> {
    for (k, v) in edits {
        match v {
            Some(v) => labels.insert(k.clone(), v.clone()),
            None => labels.remove(k),
        };
    }
    labels
}

/// The objects of a multi-document YAML text, each checked to be a kind the lab applies.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = vec![];
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if v.is_null() {
            continue;
        }
        match v["kind"].as_str() {
            Some("NetworkPolicy" | "Namespace" | "Service") => out.push(v),
            Some("List") => out.extend(v["items"].as_array().cloned().unwrap_or_default()),
            Some(other) => {
                return Err(format!(
                    "document {}: kind {other} is not applied by the lab (NetworkPolicy, \
                     Namespace, Service)",
                    i + 1
                ))
            }
            None => return Err(format!("document {}: no kind", i + 1)),
        }
    }
    Ok(out)
}

impl Lab {
    /// Sets and removes labels on a namespace (made if it does not exist).
    pub fn namespace_label(
        &self,
        name: &str,
        edits: &[(String, Option<String>)],
    ) -> Result<(), String> {
        let api = self.store.all::<Namespace>();
        let now = self
            .block_on(api.get(name))
            .map_err(|e| e.to_string())?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default();
        let labels = edited(now, edits);
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(k, _)| k.as_str() != "kubernetes.io/metadata.name")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.namespace_set(name, &pairs)
    }

    /// Sets and removes labels on a pod.
    pub fn pod_relabel(
        &mut self,
        key: &str,
        edits: &[(String, Option<String>)],
    ) -> Result<(), String> {
        let now = self
            .pods
            .get(key)
            .ok_or_else(|| format!("no pod {key}"))?
            .labels
            .clone();
        let labels = edited(now, edits);
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.pod_label(key, &pairs)
    }

    /// Creates or replaces each object (as `kubectl apply` would, without its merge); says
    /// what it did, one line each.
    pub fn apply(&mut self, objects: &[Value]) -> Result<Vec<String>, String> {
        let mut done = vec![];
        for o in objects {
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let line = match o["kind"].as_str() {
                Some("Service") => {
                    let svc: Service = serde_json::from_value(o.clone())
                        .map_err(|e| format!("Service {name}: {e}"))?;
                    let spec = crate::LabService::from_service(&svc)?;
                    if self.services.contains_key(&name) {
                        return Err(format!(
                            "Service {name} exists: delete it first (the lab does not merge)"
                        ));
                    }
                    let a = self.service_add(&spec)?;
                    format!("service/{name} applied (clusterIP {})", a.cluster_ip)
                }
                Some("Namespace") => {
                    let n: Namespace = serde_json::from_value(o.clone())
                        .map_err(|e| format!("Namespace {name}: {e}"))?;
                    let labels = n.metadata.labels.unwrap_or_default();
                    let edits: Vec<(String, Option<String>)> =
                        labels.into_iter().map(|(k, v)| (k, Some(v))).collect();
                    self.namespace_label(&name, &edits)?;
                    format!("namespace/{name} applied")
                }
                _ => {
                    let mut np: NetworkPolicy = serde_json::from_value(o.clone())
                        .map_err(|e| format!("NetworkPolicy {name}: {e}"))?;
                    let ns = np
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into())
                        .clone();
                    let api = self.store.namespaced::<NetworkPolicy>(&ns);
                    self.block_on(async {
                        match api.get(&name).await? {
                            Some(old) => {
                                np.metadata.resource_version = old.metadata.resource_version;
                                api.update(&np).await
                            }
                            None => api.create(&np).await,
                        }
                    })
                    .map_err(|e| format!("NetworkPolicy {ns}/{name}: {e}"))?;
                    format!("networkpolicy/{ns}/{name} applied")
                }
            };
            done.push(line);
        }
        Ok(done)
    }

    /// Deletes each object (a NetworkPolicy, or a Namespace's record); one line each.
    pub fn delete_objects(&mut self, objects: &[Value]) -> Result<Vec<String>, String> {
        let mut done = vec![];
        for o in objects {
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            let r = match o["kind"].as_str() {
                Some("Service") => self
                    .service_del(name)
                    .map(|_| format!("service/{name} deleted"))
                    .map_err(|e| e.to_string()),
                Some("Namespace") => self
                    .block_on(self.store.all::<Namespace>().delete(name, None))
                    .map(|_| format!("namespace/{name} deleted"))
                    .map_err(|e| e.to_string()),
                _ => {
                    let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
                    self.block_on(
                        self.store
                            .namespaced::<NetworkPolicy>(ns)
                            .delete(name, None),
                    )
                    .map(|_| format!("networkpolicy/{ns}/{name} deleted"))
                    .map_err(|e| e.to_string())
                }
            };
            done.push(r.map_err(|e| format!("{name}: {e}"))?);
        }
        Ok(done)
    }

    /// Every pod to every pod on `port`/`protocol`: the pods in order and who reached whom.
    pub fn probe_all(
        &self,
        port: u16,
        protocol: &str,
    ) -> (Vec<String>, BTreeSet<(String, String)>) {
        let pods: Vec<String> = self.pods.keys().cloned().collect();
        let refs: Vec<&str> = pods.iter().map(String::as_str).collect();
        let m = self.probe_matrix(&refs, &refs, port, protocol);
        (pods, m)
    }
}

/// The upstream truth table: a row per client, a column per server, `.` reached, `X` not.
pub fn truth_table(pods: &[String], m: &BTreeSet<(String, String)>) -> String {
    let w = pods.iter().map(|p| p.len()).max().unwrap_or(1).max(1) + 1;
    let mut s = format!("{:w$}", "");
    for t in pods {
        s.push_str(&format!("{t:w$}"));
    }
    s.push('\n');
    for f in pods {
        s.push_str(&format!("{f:w$}"));
        for t in pods {
            let ok = m.contains(&(f.clone(), t.clone()));
            s.push_str(&format!("{:w$}", if ok { "." } else { "X" }));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_and_documents() {
        let e = parse_edits(&["a=b".into(), "c-".into()]).unwrap();
        assert_eq!(e, vec![("a".into(), Some("b".into())), ("c".into(), None)]);
        assert!(parse_edits(&["=x".into()]).is_err());
        assert!(parse_edits(&["plain".into()]).is_err());
        let m = edited([("c".to_string(), "d".to_string())].into(), &e);
        assert_eq!(m, [("a".to_string(), "b".to_string())].into());
        let docs = documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        let e = documents("apiVersion: v1\nkind: Pod\nmetadata: {name: s}\n").unwrap_err();
        assert!(e.contains("kind Pod is not applied"), "{e}");
        // A Service as the lab makes it, and what it refuses.
        let svc = |spec: &str| -> Result<crate::LabService, String> {
            let d = documents(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}"
            ))?;
            let s: Service = serde_json::from_value(d[0].clone()).map_err(|e| e.to_string())?;
            crate::LabService::from_service(&s)
        };
        let s = svc("  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}, {port: 53, protocol: UDP}]\n  sessionAffinity: ClientIP\n").unwrap();
        assert_eq!(s.ports, vec!["80:8080/tcp", "53:53/udp"]);
        assert_eq!(s.selector, vec![("app".to_string(), "web".to_string())]);
        assert_eq!(
            (s.type_.as_str(), s.session_affinity_seconds),
            ("NodePort", Some(10800))
        );
        for (spec, field) in [
            (
                "  ports: [{port: 80, targetPort: http}]\n",
                "spec.ports[0].targetPort",
            ),
            ("  clusterIP: 10.96.0.99\n", "spec.clusterIP"),
            ("  type: ExternalName\n", "spec.type"),
            ("  externalIPs: [nope]\n", "spec.externalIPs"),
        ] {
            let e = svc(spec).unwrap_err();
            assert!(e.contains(field), "{spec}: {e}");
        }
    }

    #[test]
    fn the_table_marks_who_reached_whom() {
        let pods = vec!["x/a".to_string(), "x/b".to_string()];
        let m: BTreeSet<(String, String)> = [("x/a".to_string(), "x/b".to_string())].into();
        let t = truth_table(&pods, &m);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(
            rows[1].split_whitespace().collect::<Vec<_>>(),
            ["x/a", "X", "."]
        );
        assert_eq!(
            rows[2].split_whitespace().collect::<Vec<_>>(),
            ["x/b", "X", "X"]
        );
    }
}
