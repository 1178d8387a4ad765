//! IPAM served by brindle-node over its socket, with the real plugin binary: 1,000 pods added
//! and 900 deleted by 8 plugins at a time while the agent is killed (SIGKILL) 10 times. Every
//! call must succeed (the plugin falls back to doing IPAM itself while the agent is down),
//! and afterwards the controller's check must find nothing to repair: no address without
//! its handle, none twice, nothing leaked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use brindle_ipam::gc::OwnerSnapshot;
use brindle_ipam::Ipam;
use brindle_lab::{binary, LabSpec};
use brindle_testsupport::CniCall;
use k8s_openapi::api::core::v1::Pod;

use crate::common::*;

const PODS: usize = 1000;
const KEPT: usize = 100;
const WORKERS: usize = 8;
const KILLS: usize = 10;

#[test]
fn agent_killed_ten_times_during_1000_adds_and_dels_leaves_nothing_to_repair() {
    let spec = LabSpec {
        nodes: 1,
        ..Default::default()
    };
    with_lab(spec, |lab| {
        let node = lab.nodes[0].name.clone();
        let conf = lab.cni_conf(&node).to_string();
        let socket = lab.nodes[0].ipam_socket();
        let ns = lab.nodes[0].ns.name().to_string();
        let plugin = binary("brindle-cni").display().to_string();
        let wait_socket = || {
            brindle_testsupport::daemons::wait_for(
                "the agent's IPAM socket",
                Duration::from_secs(30),
                || socket.exists().then_some(()),
            )
        };
        wait_socket();
        // The socket is served only after the agent's first dataplane sync.
        assert!(
            lab.nodes[0].dataplane_ready_file().exists(),
            "IPAM served before the dataplane was programmed"
        );
        // The pods exist, so the controller's collector (running, with a 5 s grace) has no
        // reason to take their addresses.
        lab.block_on(async {
            let api = lab.store.namespaced::<Pod>("default");
            for i in 0..PODS {
                let mut p = Pod::default();
                p.metadata.name = Some(format!("pod-{i}"));
                p.metadata.namespace = Some("default".into());
                api.create(&p).await.expect("pod");
            }
        });

        let done = AtomicUsize::new(0);
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(vec![]);
        let ips: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
        let call = |command: &str, i: usize| -> Result<serde_json::Value, String> {
            let cid = format!("agentkill{i:04}");
            let out = CniCall {
                command,
                container: &cid,
                netns: None,
                pod: Some(("default", &format!("pod-{i}"))),
                env: &[("BRINDLE_CNI_MODE", "ipam")],
            }
            .run(
                {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", &ns, &plugin]);
                    c
                },
                conf.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(format!("{command} {cid}: {text}"));
            }
            Ok(serde_json::from_str(text.trim()).unwrap_or_default())
        };
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= PODS {
                        return;
                    }
                    match call("ADD", i) {
                        Ok(v) => {
                            let ip = v["ips"][0]["address"].as_str().unwrap_or("").to_string();
                            ips.lock().unwrap().insert(i, ip);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    if i >= KEPT {
                        if let Err(e) = call("DEL", i) {
                            failures.lock().unwrap().push(e);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            // Kill the agent at ten points spread over the run, each while calls are in
            // flight, and start it again at once.
            let total = PODS + PODS - KEPT;
            for k in 1..=KILLS {
                let at = total * k / (KILLS + 1);
                while done.load(Ordering::SeqCst) < at {
                    std::thread::sleep(Duration::from_millis(2));
                }
                lab.kill_agent(0);
                lab.start_agent(0);
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "{} calls failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );

        // Both paths were taken: the agent's, and the plugin's own while the agent was down.
        let log = std::fs::read_to_string(lab.nodes[0].dir.join("cni.log")).unwrap_or_default();
        let by_agent = log
            .lines()
            .filter(|l| l.contains("ipam=\"agent\"") || l.contains("ipam=agent"))
            .count();
        let by_plugin = log
            .lines()
            .filter(|l| l.contains("ipam=\"plugin\"") || l.contains("ipam=plugin"))
            .count();
        eprintln!("IPAM done by the agent: {by_agent}, by the plugin itself: {by_plugin}");
        assert!(
            by_agent > PODS,
            "most calls went through the agent: {by_agent}"
        );
        assert!(
            by_plugin > 0,
            "some calls fell back while the agent was down"
        );

        // Exactly the kept pods hold addresses, each its own.
        let ips = ips.into_inner().unwrap();
        let kept: HashSet<&String> = (0..KEPT).map(|i| &ips[&i]).collect();
        assert_eq!(kept.len(), KEPT, "distinct addresses");
        let ipam = Ipam::new(lab.store.clone());
        let owners = OwnerSnapshot {
            nodes: HashSet::from([node.clone()]),
            pods: (0..KEPT)
                .map(|i| ("default".to_string(), format!("pod-{i}")))
                .collect(),
        };
        let report = lab.block_on(ipam.check(&owners)).expect("check");
        assert!(report.is_clean(), "{report:?}");
        let held: Vec<_> = lab
            .block_on(lab.store.all::<brindle_api::IPAMBlock>().list())
            .expect("blocks")
            .items
            .iter()
            .flat_map(|b| brindle_ipam::block::allocations(&b.spec))
            .filter(|a| a.attrs.get("type").map(String::as_str) == Some("pod"))
            .map(|a| format!("{}/32", a.ip))
            .collect();
        assert_eq!(
            held.len(),
            KEPT,
            "only the kept pods hold addresses: {held:?} {kept:?}"
        );
        assert!(held.iter().all(|ip| kept.contains(ip)));
    });
}
