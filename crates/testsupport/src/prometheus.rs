//! A real Prometheus (Debian's `prometheus`) inside a test's namespace, scraping given targets
//! every second, queried through its HTTP API from that namespace; and the queries of a
//! Grafana dashboard, to run against it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::daemons::{tail, wait_for};
use crate::netns::{ChildGuard, Netns};

/// The web address inside the namespace (its own loopback).
const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    _child: ChildGuard,
    pub dir: tempfile::TempDir,
    ns: String,
}

impl Prometheus {
    /// Starts Prometheus in `ns` scraping `/metrics` of each `(instance, host:port)`, with
    /// `rule_files` loaded; returns once it answers.
    pub fn start(ns: &Netns, targets: &[(String, String)], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("brl-prometheus-")
            .tempdir()
            .expect("temp dir");
        let mut conf =
            String::from("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files:\n");
        for f in rule_files {
            conf += &format!("  - {}\n", f.display());
        }
        conf += "scrape_configs:\n  - job_name: brindle-node\n    static_configs:\n";
        for (instance, addr) in targets {
            conf += &format!(
                "      - targets: ['{addr}']\n        labels: {{instance: '{instance}'}}\n"
            );
        }
        let c = dir.path().join("prometheus.yml");
        std::fs::write(&c, conf).expect("write prometheus.yml");
        let args = [
            "prometheus".to_string(),
            format!("--config.file={}", c.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={LISTEN}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = ns
            .spawn_logged(&args, &dir.path().join("prometheus.log"))
            .expect("start prometheus (install Debian's prometheus)");
        let p = Prometheus {
            _child: child,
            dir,
            ns: ns.name().to_string(),
        };
        wait_for("Prometheus to answer", Duration::from_secs(30), || {
            p.api("/-/ready").ok()
        });
        p
    }

    fn get(&self, path: &str) -> Result<String, String> {
        let script = "import sys, urllib.request as u; \
                      print(u.urlopen('http://' + sys.argv[1] + sys.argv[2], timeout=5).read().decode())";
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "python3", "-c", script, LISTEN, path,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn api(&self, path: &str) -> Result<String, String> {
        self.get(path)
            .map_err(|e| format!("{e}\n{}", tail(&self.dir.path().join("prometheus.log"), 20)))
    }

    /// An instant query's result vector (or why there is none).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let q: String = form_urlencode(expr);
        let body = self.api(&format!("/api/v1/query?query={q}"))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `/api/v1/rules`: the rule groups as loaded.
    pub fn rules(&self) -> Result<Value, String> {
        let body = self.api("/api/v1/rules")?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// `/api/v1/targets`: the scrape targets and their health.
    pub fn targets(&self) -> Result<Value, String> {
        let body = self.api("/api/v1/targets")?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }
}

fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of a Grafana dashboard (`panels[].targets[].expr`), with the panel's title.
pub fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = vec![];
    for p in d["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.to_string(), e.to_string()));
            }
        }
    }
    out
}
