//! Schemas: Kubernetes' own (kubernetes-validate, strict), k8s-openapi's types, and ours.

use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use serde_json::Value;

use crate::{documents, files, kind, name, root, shipped_files};

/// kubernetes-validate (PyPI) against the 1.35 schemas, unknown fields refused. CI installs
/// it; a machine without it fails here and says how to get it.
#[test]
fn every_manifest_validates_strictly_against_kubernetes_1_35() {
    let mut all = shipped_files();
    // The one example that is not a Brindle resource (those have no Kubernetes schema).
    all.push(root().join("manifests/examples/kubernetes-services-endpoint.yaml"));
    // As a module: no dependence on where pip put the script or on pyenv's shims.
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.35.0",
            "--quiet",
        ])
        .args(&all)
        .output()
        .expect("python3 is needed to run kubernetes-validate");
    let text0 = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text0.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: python3 -m pip install kubernetes-validate"
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    // Its quiet mode prints only problems.
    assert!(!text.contains("ERROR"), "{text}");
}

/// Each document decodes into its k8s-openapi type with nothing left over: a field the type
/// does not have (a typo the API server might drop) fails the round trip.
#[test]
fn every_manifest_parses_into_the_k8s_openapi_types() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    fn round<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Value {
        let t: T = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{} {}: {e}", v["kind"], v["metadata"]["name"]));
        serde_json::to_value(t).unwrap()
    }
    let docs = documents(&shipped_files());
    assert!(docs.len() > 15, "{} documents", docs.len());
    for (f, v) in &docs {
        let back = match kind(v) {
            "CustomResourceDefinition" => round::<CustomResourceDefinition>(v),
            "Namespace" => round::<Namespace>(v),
            "ServiceAccount" => round::<ServiceAccount>(v),
            "ConfigMap" => round::<ConfigMap>(v),
            "Secret" => round::<Secret>(v),
            "ClusterRole" => round::<ClusterRole>(v),
            "ClusterRoleBinding" => round::<ClusterRoleBinding>(v),
            "Role" => round::<Role>(v),
            "RoleBinding" => round::<RoleBinding>(v),
            "DaemonSet" => round::<DaemonSet>(v),
            "Deployment" => round::<Deployment>(v),
            other => panic!("{}: no type for kind {other}", f.display()),
        };
        assert_eq!(
            strip_nulls(v.clone()),
            strip_nulls(back),
            "{}: {} {} changes when read as its type",
            f.display(),
            kind(v),
            name(v)
        );
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        // "150m" and 150m alike; ports as numbers either way.
        v => v,
    }
}

#[test]
fn the_crds_are_the_generated_ones_and_apply_first() {
    let have = std::fs::read_to_string(root().join(brindle_api::crd::MANIFEST)).unwrap();
    assert_eq!(
        have,
        brindle_api::crd::manifest().unwrap(),
        "run `cargo run -p brindle-api --bin crdgen`"
    );
    // kubectl applies a directory's files in name order.
    let first = files("manifests").remove(0);
    assert!(first.ends_with("00-crds.yaml"), "{}", first.display());
}

/// The etcd variant is the same DaemonSet and Deployment apart from datastore settings.
#[test]
fn the_etcd_variant_differs_only_in_datastore_settings() {
    let pick = |dir: &str| {
        let mut d: Vec<Value> = documents(&files(dir))
            .into_iter()
            .map(|(_, v)| v)
            .filter(|v| matches!(kind(v), "DaemonSet" | "Deployment"))
            .collect();
        d.sort_by(|a, b| kind(a).cmp(kind(b)));
        d
    };
    let (k8s, etcd) = (pick("manifests"), pick("manifests/etcd"));
    assert_eq!(k8s.len(), 2);
    assert_eq!(etcd.len(), 2);
    for (a, b) in k8s.iter().zip(&etcd) {
        let env = |v: &Value| -> Vec<Vec<(String, String)>> {
            let spec = &v["spec"]["template"]["spec"];
            let mut all = vec![];
            for c in ["initContainers", "containers"] {
                for c in spec[c].as_array().into_iter().flatten() {
                    all.push(
                        c["env"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| {
                                (
                                    e["name"].as_str().unwrap().to_string(),
                                    e["value"].to_string(),
                                )
                            })
                            .collect(),
                    );
                }
            }
            all
        };
        for e in env(b) {
            assert!(
                e.iter()
                    .any(|(n, v)| n == "BRINDLE_DATASTORE" && v == "\"etcd\""),
                "{e:?}"
            );
            assert!(
                e.iter().any(|(n, _)| n == "BRINDLE_ETCD_ENDPOINTS"),
                "{e:?}"
            );
        }
        // etcd's TLS files (a Secret volume, its mounts, the group that reads them) are
        // datastore settings too.
        let etcd_certs = |x: &Value| x["name"] != "etcd-certs";
        let normalized = |v: &Value| {
            let mut v = v.clone();
            let spec = &mut v["spec"]["template"]["spec"];
            let o = spec.as_object_mut().unwrap();
            o.remove("serviceAccountName");
            o.remove("automountServiceAccountToken");
            if o.get("securityContext") == Some(&serde_json::json!({"fsGroup": 65534})) {
                o.remove("securityContext");
            }
            if let Some(vols) = o.get_mut("volumes").and_then(Value::as_array_mut) {
                vols.retain(etcd_certs);
                if vols.is_empty() {
                    o.remove("volumes");
                }
            }
            for c in ["initContainers", "containers"] {
                for c in spec[c].as_array_mut().into_iter().flatten() {
                    let c = c.as_object_mut().unwrap();
                    c.remove("env");
                    if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                        m.retain(etcd_certs);
                        if m.is_empty() {
                            c.remove("volumeMounts");
                        }
                    }
                }
            }
            v
        };
        assert_eq!(normalized(a), normalized(b), "{} {}", kind(a), name(a));
    }
}

/// The examples are valid Brindle resources (the commented one once uncommented).
#[test]
fn the_examples_are_valid_resources() {
    use brindle_api::Validate;
    for f in files("manifests/examples") {
        let text = std::fs::read_to_string(&f).unwrap();
        // A file that is all comments holds an example resource: its lines are "# " + YAML
        // (top-level keys, or indented lines that are not themselves comments).
        let commented = text.lines().all(|l| l.is_empty() || l.starts_with('#'));
        let uncommented: String = if commented {
            text.lines()
                .filter_map(|l| l.strip_prefix("# "))
                .filter(|l| {
                    ["apiVersion:", "kind:", "metadata:", "spec:"]
                        .iter()
                        .any(|k| l.starts_with(k))
                        || (l.starts_with("  ") && !l.trim_start().starts_with('#'))
                })
                .map(|l| l.to_string() + "\n")
                .collect()
        } else {
            text.clone()
        };
        let v: Value = serde_yaml_ng::from_str(&uncommented)
            .unwrap_or_else(|e| panic!("{}: {e}\n{uncommented}", f.display()));
        let check = match kind(&v) {
            "BGPConfiguration" => {
                serde_json::from_value::<brindle_api::BGPConfiguration>(v.clone())
                    .map(|r| r.validate().map_err(|e| e.to_string()))
            }
            "BGPPeer" => serde_json::from_value::<brindle_api::BGPPeer>(v.clone())
                .map(|r| r.validate().map_err(|e| e.to_string())),
            "ConfigMap" => {
                serde_json::from_value::<k8s_openapi::api::core::v1::ConfigMap>(v.clone())
                    .map(|_| Ok(()))
            }
            other => panic!("{}: unexpected kind {other}", f.display()),
        };
        match check {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: {e}", f.display()),
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }
}

/// The uninstall DaemonSet undoes what the node DaemonSet did, with the commands the tests
/// prove (`brindle-cni-install --uninstall`: crates/cni/tests/install.rs; `brindle-node
/// --cleanup`: tests/e2e/lifecycle.rs): the same image and nodes, the CNI step with the
/// install's very mounts (so it finds what was written), the cleanup in the host's network
/// and process namespaces, seeing the agent's control socket where the agent made it, with
/// the capabilities its work and its BIRD check need.
#[test]
fn the_uninstall_daemonset_undoes_the_install() {
    let find = |file: &str, ds: &str| -> DaemonSet {
        let docs = documents(&[root().join(file)]);
        let (_, v) = docs
            .iter()
            .find(|(_, v)| kind(v) == "DaemonSet" && name(v) == ds)
            .unwrap_or_else(|| panic!("no DaemonSet {ds} in {file}"));
        serde_json::from_value(v.clone()).unwrap()
    };
    for node_file in [
        "manifests/10-brindle-node.yaml",
        "manifests/etcd/10-brindle-node.yaml",
    ] {
        let node = find(node_file, "brindle-node").spec.template.spec.unwrap();
        let un = find(
            "manifests/uninstall/brindle-uninstall.yaml",
            "brindle-uninstall",
        )
        .spec
        .template
        .spec
        .unwrap();
        assert_eq!(un.host_network, Some(true));
        assert_eq!(
            un.host_pid,
            Some(true),
            "cleanup must see the host's processes"
        );
        assert_eq!(
            un.tolerations, node.tolerations,
            "every node the agent ran on"
        );
        assert_eq!(un.node_selector, node.node_selector);
        let host_path = |spec: &k8s_openapi::api::core::v1::PodSpec, volume: &str| {
            spec.volumes
                .iter()
                .flatten()
                .find(|v| v.name == volume)
                .and_then(|v| v.host_path.as_ref())
                .map(|h| h.path.clone())
        };
        // mountPath -> host path, for one container's host directories (a Secret it reads,
        // as the etcd variant's certificates, is input, not where anything was written).
        let mounts = |spec: &k8s_openapi::api::core::v1::PodSpec,
                      c: &k8s_openapi::api::core::v1::Container| {
            let mut m: Vec<(String, String)> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|vm| Some((vm.mount_path.clone(), host_path(spec, &vm.name)?)))
                .collect();
            m.sort();
            m
        };
        let init = |spec: &k8s_openapi::api::core::v1::PodSpec, name: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("no init container {name}"))
        };
        // The cleanup first: it refuses while an agent runs, before anything is removed.
        let order: Vec<&str> = un
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(order, ["cleanup", "remove-cni"]);
        let install = init(&node, "install-cni");
        let agent = node.containers[0].clone();
        let remove = init(&un, "remove-cni");
        let cleanup = init(&un, "cleanup");
        assert_eq!(
            remove.command,
            Some(vec![
                "/usr/local/bin/brindle-cni-install".into(),
                "--uninstall".into()
            ])
        );
        assert_eq!(
            cleanup.command,
            Some(vec![
                "/usr/local/bin/brindle-node".into(),
                "--cleanup".into()
            ])
        );
        for c in [&remove, &cleanup, &un.containers[0]] {
            assert_eq!(c.image, agent.image, "{}: the agent's image", c.name);
        }
        assert_eq!(mounts(&un, &remove), mounts(&node, &install), "{node_file}");
        // Where the install writes, if its environment moved it, must move the uninstall
        // too (the settings `brindle-cni-install --uninstall` reads).
        let placed = [
            "BRINDLE_CNI_BIN_DIR",
            "BRINDLE_CNI_CONF_DIR",
            "BRINDLE_CNI_CONF_NAME",
            "BRINDLE_CNI_TOKEN_FILE",
            "BRINDLE_HOST_ROOT",
        ];
        let set = |c: &k8s_openapi::api::core::v1::Container| -> Vec<(String, Option<String>)> {
            let mut v: Vec<_> = c
                .env
                .iter()
                .flatten()
                .filter(|e| placed.contains(&e.name.as_str()))
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(set(&remove), set(&install), "{node_file}");
        // The agent's control socket, where the agent makes it (the default of both).
        let run = mounts(&node, &agent)
            .into_iter()
            .find(|(p, _)| p == "/run/brindle")
            .expect("the agent's /run/brindle");
        assert!(mounts(&un, &cleanup).contains(&run), "{run:?}");
        assert!(
            !agent
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "BRINDLE_CONTROL_SOCKET"),
            "the agent's control socket moved: the cleanup must be told"
        );
        let caps = cleanup
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.clone())
            .unwrap_or_default();
        for want in ["NET_ADMIN", "NET_RAW", "SYS_PTRACE"] {
            assert!(
                caps.iter().any(|c| c == want),
                "cleanup lacks {want}: {caps:?}"
            );
        }
    }
}
