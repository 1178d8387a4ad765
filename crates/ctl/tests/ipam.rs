//! `brindlectl ipam …` against a real etcd holding allocations made by brindle-ipam itself:
//! usage tables, who holds an address, borrowing, configuration, and a simulated leak found
//! by `check` and freed by `release --from-report` without touching anything that changed.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_datastore::{DatastoreArgs, Store};
use brindle_ipam::block::attr;
use brindle_ipam::{AssignRequest, Ipam};
use common::*;
use k8s_openapi::api::core::v1::Pod;

fn pod(ns: &str, name: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some(ns.into());
    p
}

async fn store(endpoint: &str) -> Store {
    DatastoreArgs::etcd(vec![endpoint.into()])
        .connect()
        .await
        .expect("etcd")
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn show_check_release_configure() {
    let etcd = brindle_testsupport::EtcdServer::start();
    let ctl = Ctl::etcd(&etcd.endpoint());
    let s = store(&etcd.endpoint()).await;
    let pools = "apiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: default}\nspec: {cidr: 10.244.0.0/16}\n---\napiVersion: brindle.dev/v1\nkind: IPPool\nmetadata: {name: small}\nspec: {cidr: 10.245.0.0/26, nodeSelector: \"!all()\"}\n";
    let c = Ctl {
        flags: ctl.flags.clone(),
    };
    let pools = pools.to_string();
    tokio::task::spawn_blocking(move || {
        c.run_with(&["apply", "-f", "-"], Some(&pools))
            .ok()
            .to_string()
    })
    .await
    .expect("apply");
    for n in ["node-a", "node-b"] {
        s.all::<brindle_api::BrindleNode>()
            .create(&brindle_ipam::nodes::brindle_node(n, &[]))
            .await
            .expect("node");
    }
    let ipam = Ipam::new(s.clone());
    let mut ips: BTreeMap<String, IpAddr> = BTreeMap::new();
    for (node, name, live) in [
        ("node-a", "web-0", true),
        ("node-a", "web-1", true),
        ("node-a", "gone-0", false),
        ("node-a", "gone-1", false),
        ("node-b", "db-0", true),
    ] {
        if live {
            s.namespaced::<Pod>("prod")
                .create(&pod("prod", name))
                .await
                .expect("pod");
        }
        let got = ipam
            .assign(&AssignRequest::pod(
                node,
                "prod",
                name,
                &format!("c-{name}"),
                1,
            ))
            .await
            .expect("assign");
        ips.insert(name.into(), got[0]);
    }
    // node-b borrows one address of the small pool's block, which node-a claimed.
    let first = ipam
        .assign_ip(
            "10.245.0.1".parse().unwrap(),
            "h-a",
            "node-a",
            &BTreeMap::new(),
        )
        .await;
    first.expect("claim the small block for node-a");
    s.namespaced::<Pod>("prod")
        .create(&pod("prod", "borrower"))
        .await
        .expect("pod");
    let attrs = BTreeMap::from([
        (attr::POD.to_string(), "borrower".to_string()),
        (attr::NAMESPACE.to_string(), "prod".to_string()),
        (attr::NODE.to_string(), "node-b".to_string()),
        (attr::TYPE.to_string(), attr::TYPE_POD.to_string()),
    ]);
    ipam.assign_ip(
        "10.245.0.7".parse().unwrap(),
        "k8s-pod-network.c-borrower",
        "node-b",
        &attrs,
    )
    .await
    .expect("borrow");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.json");
    let c = Ctl {
        flags: ctl.flags.clone(),
    };
    let ips2 = ips.clone();
    let path2 = path.clone();
    tokio::task::spawn_blocking(move || {
        let ctl = c;
        let ips = ips2;
        let path = path2;
        golden("ipam_show.txt", ctl.run(&["ipam", "show"]).ok());
        golden(
            "ipam_show_blocks_etcd.txt",
            ctl.run(&["ipam", "show", "--show-blocks"]).ok(),
        );
        golden(
            "ipam_show_borrowed.txt",
            ctl.run(&["ipam", "show", "--show-borrowed"]).ok(),
        );
        let who = ctl
            .run(&["ipam", "show", "--ip", &ips["web-0"].to_string()])
            .ok()
            .to_string();
        assert!(
            who.contains("is in use")
                && who.contains("prod/web-0")
                && who.contains("k8s-pod-network.c-web-0"),
            "{who}"
        );
        let free = ctl
            .run(&["ipam", "show", "--ip", "10.244.255.1"])
            .ok()
            .to_string();
        assert!(free.contains("not currently assigned"), "{free}");

        // configure, then the configuration as shown.
        ctl.run(&["ipam", "configure"]).fails(2, "at least one");
        ctl.run(&[
            "ipam",
            "configure",
            "--strictaffinity=true",
            "--max-blocks-per-host",
            "8",
        ])
        .ok();
        golden(
            "ipam_show_configuration.txt",
            ctl.run(&["ipam", "show", "--show-configuration"]).ok(),
        );

        // check finds the two leaks and says so with exit 1; the report is written.
        let o = ctl.run(&["ipam", "check", "-o", &path.display().to_string()]);
        o.fails(1, "IPAM problems found");
        assert!(
            o.stdout.contains("Leaked addresses (owner gone): 2"),
            "{o:?}"
        );
        assert_eq!(report(&path)["leaked"].as_array().map(Vec::len), Some(2));

        // release --ip refuses a live owner's address unless forced.
        ctl.run(&["ipam", "release", "--ip", &ips["web-1"].to_string()])
            .fails(1, "its owner still exists");
        let o = ctl.run(&[
            "ipam",
            "release",
            "--ip",
            &ips["web-1"].to_string(),
            "--force",
        ]);
        assert!(o.ok().contains("released"), "{o:?}");
        ctl.run(&["ipam", "release", "--ip", &ips["web-1"].to_string()])
            .fails(1, "not assigned");
        ctl.run(&["ipam", "release"]).fails(2, "--ip");
    })
    .await
    .expect("show");

    // Between the report and the release, gone-1's address is freed and given to a new pod:
    // the report's entry no longer describes it, so it must be left alone.
    let reused = ips["gone-1"];
    ipam.release_handle("k8s-pod-network.c-gone-1")
        .await
        .expect("release");
    s.namespaced::<Pod>("prod")
        .create(&pod("prod", "new-0"))
        .await
        .expect("pod");
    let attrs = BTreeMap::from([
        (attr::POD.to_string(), "new-0".to_string()),
        (attr::NAMESPACE.to_string(), "prod".to_string()),
        (attr::NODE.to_string(), "node-a".to_string()),
        (attr::TYPE.to_string(), attr::TYPE_POD.to_string()),
    ]);
    ipam.assign_ip(reused, "k8s-pod-network.c-new-0", "node-a", &attrs)
        .await
        .expect("reuse");

    let c = Ctl {
        flags: ctl.flags.clone(),
    };
    let ips2 = ips.clone();
    tokio::task::spawn_blocking(move || {
        let o = c.run(&[
            "ipam",
            "release",
            "--from-report",
            &path.display().to_string(),
        ]);
        let out = o.ok();
        assert!(
            out.contains(&format!("released {}", ips2["gone-0"])),
            "{o:?}"
        );
        assert!(
            o.stderr.contains(&format!(
                "{reused} (prod/gone-1): changed since it was read"
            )),
            "{o:?}"
        );
        // Clean now: the new pod kept the reused address.
        let o = c.run(&["ipam", "check"]);
        assert!(o.ok().contains("Leaked addresses (owner gone): 0"), "{o:?}");
        let who = c
            .run(&["ipam", "show", "--ip", &reused.to_string()])
            .ok()
            .to_string();
        assert!(who.contains("prod/new-0"), "{who}");
        c.run(&[
            "ipam",
            "release",
            "--from-report",
            "/nonexistent/report.json",
        ])
        .fails(1, "/nonexistent/report.json");
    })
    .await
    .expect("release");
}
