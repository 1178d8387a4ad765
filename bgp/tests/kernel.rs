//! Kernel route sync in a network namespace of the test's own: `ip route show proto bird`
//! shows exactly what was asked, replaces change routes in place, removal and purge work,
//! and routes of other protocols are left alone.

use std::net::IpAddr;

use brindle_bgp::kernel::{KernelSync, NextHop, Target};
use brindle_testsupport::Netns;
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

type Job<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// Runs `f` with a KernelSync whose socket lives in `ns` (a thread of its own enters it).
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce(&KernelSync) -> Job<'_, T> + Send) -> T {
    in_ns_metric(ns, 1024, f)
}

/// The same with routes at `metric`.
fn in_ns_metric<T: Send>(
    ns: &Netns,
    metric: u32,
    f: impl FnOnce(&KernelSync) -> Job<'_, T> + Send,
) -> T {
    let path = ns.path();
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                let k = KernelSync::new(handle, metric);
                f(&k).await
            })
        })
        .join()
        .unwrap()
    })
}

/// (destination, type, gateways) of the proto-bird routes, sorted.
fn bird_routes(ns: &Netns) -> Vec<(String, String, Vec<String>)> {
    let v = ns.ip_json(&["route", "show", "proto", "bird"]);
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut gws: Vec<String> = r["gateway"]
                .as_str()
                .map(|g| vec![g.to_owned()])
                .unwrap_or_default();
            for h in r["nexthops"].as_array().into_iter().flatten() {
                gws.push(h["gateway"].as_str().unwrap_or_default().to_owned());
            }
            let kind = r["type"].as_str().unwrap_or("unicast").to_owned();
            (r["dst"].as_str().unwrap().to_owned(), kind, gws)
        })
        .collect();
    out.sort();
    out
}

type Read = Vec<(IpNetwork, Option<Target>)>;

/// Every wanted route is read back in a form that meets it.
fn assert_read_back(read: &Read, wanted: &[(IpNetwork, Target)]) {
    for (prefix, target) in wanted {
        let have = read
            .iter()
            .find(|r| r.0 == *prefix)
            .and_then(|r| r.1.as_ref());
        assert!(
            have.is_some_and(|h| target.is_met_by(h)),
            "{prefix}: want {target:?}, read {have:?}"
        );
    }
}

fn via(gw: &str, onlink: bool) -> NextHop {
    NextHop {
        gateway: gw.parse::<IpAddr>().unwrap(),
        ifindex: None,
        onlink,
    }
}

/// The node agent installs at metric 0, which the kernel stores as 1024 for IPv6 (its
/// default for user routes): read back, such routes are ours and unchanged, not rewritten at
/// every re-read (as they were: "the kernel's routes differed from ours" every 2 s).
#[test]
fn ipv6_routes_at_metric_zero_read_back_as_installed() {
    let ns = Netns::new("brl-kern6");
    ns.ok(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:20::1/64",
        "dev",
        "v0",
        "nodad",
    ]);
    ns.ok(&["ip", "link", "set", "v0", "up"]);
    ns.ok(&["ip", "link", "set", "v1", "up"]);
    let wanted = vec![
        (net("fd00:10:244::/122"), Target::Blackhole),
        (
            net("fd00:10:244::40/122"),
            Target::Via(vec![via("2001:db8:20::2", false)]),
        ),
        (net("10.244.0.0/26"), Target::Blackhole),
    ];
    let want = wanted.clone();
    let read = in_ns_metric(&ns, 0, |k| {
        Box::pin(async move {
            k.reconcile(&want).await.unwrap();
            k.routes().await.unwrap()
        })
    });
    assert_eq!(read.len(), 3, "{read:?}");
    assert_read_back(&read, &wanted);
}

#[test]
fn install_replace_remove_and_purge() {
    let ns = Netns::new("brl-kern");
    ns.ok(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.ok(&["ip", "addr", "add", "198.18.20.1/24", "dev", "v0"]);
    ns.ok(&["ip", "link", "set", "v0", "up"]);
    ns.ok(&["ip", "link", "set", "v1", "up"]);
    let v0 = ns.ip_json(&["link", "show", "v0"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;
    // Left by "an earlier run", and a route that is not ours.
    ns.ok(&[
        "ip",
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "198.18.20.7",
        "proto",
        "bird",
    ]);
    ns.ok(&[
        "ip",
        "route",
        "add",
        "10.98.0.0/24",
        "via",
        "198.18.20.7",
        "proto",
        "static",
    ]);

    let wanted = vec![
        (net("10.244.0.0/26"), Target::Blackhole),
        (
            net("10.244.1.0/26"),
            Target::Via(vec![via("198.18.20.2", false)]),
        ),
        // The IPIP form: via the node's address on a device that has no route to it.
        (
            net("10.244.2.0/26"),
            Target::Via(vec![NextHop {
                gateway: "203.0.113.9".parse().unwrap(),
                ifindex: Some(v0),
                onlink: true,
            }]),
        ),
        (
            net("10.244.3.0/26"),
            Target::Via(vec![via("198.18.20.2", false), via("198.18.20.3", false)]),
        ),
    ];
    let want = wanted.clone();
    let (installed, purged) = in_ns(&ns, |k| {
        Box::pin(async move { k.reconcile(&want).await.unwrap() })
    });
    assert_eq!((installed, purged), (4, 1));
    // Read back as a restarting speaker reads what it kept: every form is recognised (ECMP in
    // any order, the interface the kernel chose), and a different form is not.
    let read = in_ns(&ns, |k| Box::pin(async move { k.routes().await.unwrap() }));
    assert_read_back(&read, &wanted);
    let ecmp = read
        .iter()
        .find(|r| r.0 == net("10.244.3.0/26"))
        .and_then(|r| r.1.clone());
    let other = Target::Via(vec![via("198.18.20.2", false), via("198.18.20.4", false)]);
    assert!(
        !ecmp.is_some_and(|h| other.is_met_by(&h)),
        "a different ECMP set"
    );
    let blackhole = read
        .iter()
        .find(|r| r.0 == net("10.244.0.0/26"))
        .and_then(|r| r.1.clone());
    assert!(
        !blackhole.is_some_and(|h| wanted[1].1.is_met_by(&h)),
        "blackhole is not via"
    );
    let routes = bird_routes(&ns);
    assert_eq!(
        routes,
        vec![
            ("10.244.0.0/26".into(), "blackhole".into(), vec![]),
            (
                "10.244.1.0/26".into(),
                "unicast".into(),
                vec!["198.18.20.2".into()]
            ),
            (
                "10.244.2.0/26".into(),
                "unicast".into(),
                vec!["203.0.113.9".into()]
            ),
            (
                "10.244.3.0/26".into(),
                "unicast".into(),
                vec!["198.18.20.2".into(), "198.18.20.3".into()]
            ),
        ]
    );
    let onlink = ns.ip_json(&["route", "show", "10.244.2.0/26"]);
    assert!(
        onlink[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{onlink}"
    );
    assert_eq!(onlink[0]["dev"], "v0");
    assert_eq!(onlink[0]["metric"], 1024);
    assert!(
        !ns.ip_json(&["route", "show", "10.98.0.0/24"])
            .as_array()
            .unwrap()
            .is_empty(),
        "foreign route kept"
    );

    // Replace in place, remove (twice: the second is a no-op), and nothing else moves.
    let errs = in_ns(&ns, |k| {
        Box::pin(async move {
            k.apply(vec![
                (
                    net("10.244.1.0/26"),
                    Some(Target::Via(vec![via("198.18.20.3", false)])),
                ),
                (net("10.244.3.0/26"), None),
                (net("10.244.3.0/26"), None),
                (net("10.250.0.0/26"), None),
            ])
            .await
            .len()
        })
    });
    assert_eq!(errs, 0);
    let routes = bird_routes(&ns);
    assert_eq!(routes.len(), 3);
    assert_eq!(
        routes[1],
        (
            "10.244.1.0/26".into(),
            "unicast".into(),
            vec!["198.18.20.3".into()]
        )
    );
    // A graceful-restart shutdown leaves routes in place: dropping the sync removes nothing.
    assert_eq!(bird_routes(&ns).len(), 3);
    // A blackhole goes too (a delete that named the unicast type never matched it), and a
    // blackhole of another protocol for the same prefix is left alone.
    let errs = in_ns(&ns, |k| {
        Box::pin(async move { k.apply(vec![(net("10.244.0.0/26"), None)]).await.len() })
    });
    assert_eq!(errs, 0);
    assert!(!bird_routes(&ns).iter().any(|r| r.0 == "10.244.0.0/26"));
    ns.ok(&[
        "ip",
        "route",
        "add",
        "blackhole",
        "10.244.0.0/26",
        "proto",
        "static",
    ]);
    let errs = in_ns(&ns, |k| {
        Box::pin(async move { k.apply(vec![(net("10.244.0.0/26"), None)]).await.len() })
    });
    assert_eq!(errs, 0);
    assert!(
        !ns.ip_json(&["route", "show", "10.244.0.0/26"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the static blackhole is not ours to delete"
    );
}
