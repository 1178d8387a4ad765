//! `manifests/monitoring/`: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, Debian's prometheus package), the PrometheusRule holds the same
//! groups, every dashboard query is valid PromQL, and the PodMonitor finds the DaemonSet's
//! pods and port. (`tests/e2e/monitoring.rs` runs the queries against a lab's agents.)

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::{documents, install_files, root};

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .expect("promtool (Debian's prometheus package)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    Value::deserialize(serde_yaml_ng::Deserializer::from_str(&text)).unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let t = promtool(&["check", "rules", "manifests/monitoring/alerts.yaml"]);
    assert!(t.contains("SUCCESS: 6 rules found"), "{t}");
    let t = promtool(&["test", "rules", "tests/monitoring/alerts_test.yaml"]);
    assert!(t.contains("SUCCESS"), "{t}");
}

#[test]
fn the_prometheusrule_holds_the_alert_rules() {
    let rules = yaml("manifests/monitoring/alerts.yaml");
    let pr = yaml("manifests/monitoring/prometheusrule.yaml");
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(
        pr["spec"], rules,
        "regenerate prometheusrule.yaml from alerts.yaml"
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let path = root().join("manifests/monitoring/dashboard.json");
    let queries = brindle_testsupport::prometheus::dashboard_queries(&path);
    // What the dashboard is for: every one of these has a panel.
    let titles: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "BGP sessions",
        "Prefixes received",
        "Route programming",
        "IPPool addresses used",
        "IPPool blocks",
        "CNI ADD",
        "sync time",
        "Rule write failures",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want:?} panel: {titles:?}"
        );
    }
    // promtool parses expressions in rule files: one recording rule per query, with the
    // dashboard's variable as its "All" value.
    let mut f = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in queries.iter().enumerate() {
        let e = e.replace("$instance", ".+");
        f += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&p, f).unwrap();
    let t = promtool(&["check", "rules", &p.display().to_string()]);
    assert!(
        t.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{t}"
    );
}

/// Each PodMonitor (the agents', the controller's) selects its workload's pods in their
/// namespace, by a port name its containers have.
#[test]
fn the_podmonitors_find_their_pods_and_port() {
    let monitors = documents(&[root().join("manifests/monitoring/podmonitor.yaml")]);
    let workloads: Vec<Value> = documents(&install_files())
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "DaemonSet" || d["kind"] == "Deployment")
        .collect();
    let mut seen = vec![];
    for (_, pm) in &monitors {
        let name = pm["metadata"]["name"].as_str().unwrap();
        let w = workloads
            .iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no DaemonSet or Deployment {name}"));
        seen.push(name.to_string());
        assert_eq!(pm["metadata"]["namespace"], w["metadata"]["namespace"]);
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{name}'s pods lack {k}={v}");
        }
        let port = pm["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap();
        let names: Vec<String> = w["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect();
        assert!(
            names.iter().any(|n| n == port),
            "{name}: no container port {port:?}: {names:?}"
        );
    }
    assert_eq!(seen, ["brindle-node", "brindle-controller"]);
}
