//! The install manifests (`manifests/`): valid for Kubernetes, typed as the cluster will read
//! them, and alike across datastore variants.

mod monitoring;
mod readme;
mod schema;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The YAML files of one manifests directory (not its subdirectories), in apply order.
pub fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

/// Every manifest an install applies: `manifests/` and the etcd variant.
pub fn install_files() -> Vec<PathBuf> {
    let mut all = files("manifests");
    all.extend(files("manifests/etcd"));
    all
}

/// Every manifest shipped to apply: an install's, and the uninstall DaemonSet.
pub fn shipped_files() -> Vec<PathBuf> {
    let mut all = install_files();
    all.extend(files("manifests/uninstall"));
    all
}

/// Every document of the files, as JSON values, with the file each came from.
pub fn documents(files: &[PathBuf]) -> Vec<(PathBuf, Value)> {
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}
