//! The shipped monitoring against a real Prometheus (Debian's) scraping a lab's agents from
//! the fabric: every query of `manifests/monitoring/dashboard.json` returns data, the figures
//! are the lab's, and the alert rules load and stay quiet on a healthy lab.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brindle_lab::LabSpec;
use brindle_testsupport::daemons::wait_for;
use brindle_testsupport::prometheus::{dashboard_queries, Prometheus};
use serde_json::Value;

use crate::common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The single value of an instant query, as a number.
fn value(prom: &Prometheus, expr: &str) -> f64 {
    let r = prom.query(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    assert_eq!(r.len(), 1, "{expr}: {r:?}");
    r[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{expr}: {r:?}"))
}

#[test]
fn prometheus_scrapes_the_agents_and_every_dashboard_query_has_data() {
    with_lab(LabSpec::default(), |lab| {
        // A pod per node: the IPAM socket has served ADDs (the CNI panels), blocks exist.
        let pods = pod_per_node(lab);
        all_reach(lab, &pods);
        let targets: Vec<(String, String)> = lab
            .nodes
            .iter()
            .map(|n| (n.name.clone(), format!("{}:9091", n.ip4())))
            .collect();
        let rules = root().join("manifests/monitoring/alerts.yaml");
        let prom = Prometheus::start(&lab.fabric, &targets, &[rules]);
        wait_for("every agent scraped", Duration::from_secs(30), || {
            let t = prom.targets().ok()?;
            let active = t["data"]["activeTargets"].as_array()?.clone();
            (active.len() == 3 && active.iter().all(|a| a["health"] == "up")).then_some(())
        });
        // One more pod, on a node whose agent is certainly serving IPAM by now (the first
        // pods may have come before an agent's socket, and done IPAM themselves).
        lab.pod_add("late", "node-0").expect("pod");
        wait_for("node-0's ADD counted", Duration::from_secs(30), || {
            let q = r#"brindle_ipam_request_seconds_count{instance="node-0",op="add",result="ok"}"#;
            prom.query(q).ok().filter(|r| !r.is_empty())
        });
        let dashboard = root().join("manifests/monitoring/dashboard.json");
        let queries = dashboard_queries(&dashboard);
        assert!(queries.len() >= 14, "{queries:?}");
        for (title, expr) in &queries {
            // The dashboard's node variable, set to All.
            let e = expr.replace("$instance", ".+");
            wait_for(
                &format!("data for the panel {title:?}: {e}"),
                Duration::from_secs(60),
                || prom.query(&e).ok().filter(|r| !r.is_empty()),
            );
        }
        // The figures are the lab's: 3 nodes in full mesh, a /26 block each, 4 pods.
        let established = r#"sum(brindle_bgp_sessions{state="Established"})"#;
        assert_eq!(value(&prom, established), 6.0);
        assert_eq!(value(&prom, "min(brindle_bgp_peer_established)"), 1.0);
        let used = r#"sum(brindle_ipam_node_addresses{pool="default",state="used"})"#;
        wait_for("4 addresses used", Duration::from_secs(10), || {
            (value(&prom, used) == 4.0).then_some(())
        });
        assert_eq!(
            value(&prom, r#"sum(brindle_ipam_node_blocks{pool="default"})"#),
            3.0
        );
        let size = r#"max(brindle_ipam_pool_addresses{pool="default"})"#;
        assert_eq!(value(&prom, size), 65536.0);
        // The alert rules: all six loaded, evaluated without error, none firing.
        let r = prom.rules().expect("rules");
        let loaded: Vec<&Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(loaded.len(), 6, "{r}");
        wait_for("every rule evaluated", Duration::from_secs(20), || {
            let r = prom.rules().ok()?;
            let all: Vec<Value> = r["data"]["groups"][0]["rules"].as_array()?.clone();
            all.iter().all(|x| x["health"] == "ok").then_some(())
        });
        let firing = prom
            .query(r#"ALERTS{alertstate="firing"}"#)
            .expect("ALERTS");
        assert!(firing.is_empty(), "{firing:?}");
    });
}
