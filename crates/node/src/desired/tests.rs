use super::*;
use brindle_api::{BGPPeerSpec, BlockAffinitySpec, IPPoolSpec, NodeBgp};
use brindle_ipam::block::new_block;
use std::sync::Arc;

fn node(ip: &str, labels: &[(&str, &str)], rr: Option<&str>) -> NodeInfo {
    NodeInfo {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        bgp: NodeBgp {
            ipv4_address: Some(ip.into()),
            route_reflector_cluster_id: rr.map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn me(name: &str, ip: &str) -> Me {
    let ip: Ipv4Addr = ip.parse().unwrap();
    Me::new(name, Some(Ipv4Network::new(ip, 24).unwrap()), None)
}

/// A confirmed affinity of `node` for the block `cidr`, under the key `key`.
fn confirm(s: &mut Snapshot, key: &str, cidr: &str, node: &str) {
    Arc::make_mut(&mut s.affinities).insert(
        key.into(),
        BlockAffinitySpec {
            node: node.into(),
            cidr: cidr.into(),
            state: AffinityState::Confirmed,
            deleted: false,
        },
    );
}

/// A block of `node`'s, affinity confirmed.
fn confirmed_block(s: &mut Snapshot, key: &str, cidr: &str, node: &str) {
    Arc::make_mut(&mut s.blocks).insert(
        key.into(),
        new_block(&cidr.parse().unwrap(), Some(format!("host:{node}"))),
    );
    confirm(s, key, cidr, node);
}

fn three() -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Default::default()
    };
    Arc::make_mut(&mut s.nodes).insert("n1".into(), node("198.18.0.11/24", &[], None));
    Arc::make_mut(&mut s.nodes).insert("n2".into(), node("198.18.0.12/24", &[], None));
    // 198.18.0.9 is numerically lower than .11 but sorts higher as a string.
    Arc::make_mut(&mut s.nodes).insert("n3".into(), node("198.18.0.9/24", &[], None));
    Arc::make_mut(&mut s.pools).insert("default".into(), IPPoolSpec::new("10.244.0.0/16"));
    s
}

#[test]
fn mesh_peers_everyone_else_and_the_lower_address_waits() {
    let mut w = vec![];
    let p = peers(&three(), &me("n1", "198.18.0.11"), &mut w);
    assert!(w.is_empty(), "{w:?}");
    let addrs: Vec<String> = p.keys().map(ToString::to_string).collect();
    assert_eq!(addrs, ["198.18.0.9", "198.18.0.12"]);
    assert!(p[&"198.18.0.12".parse::<IpAddr>().unwrap()].passive);
    // Numeric order: .9 < .11, so n1 dials n3 (Calico's string order would make n1 wait).
    assert!(!p[&"198.18.0.9".parse::<IpAddr>().unwrap()].passive);
    assert!(p
        .values()
        .all(|d| d.kind == PeerKind::Mesh && d.asn == 64512));
}

#[test]
fn dual_stack_nodes_peer_once_per_family_and_single_stack_ones_once() {
    let mut s = three();
    let v6 = |s: &mut Snapshot, n: &str, a: &str| {
        Arc::make_mut(&mut s.nodes)
            .get_mut(n)
            .unwrap()
            .bgp
            .ipv6_address = Some(a.into());
    };
    v6(&mut s, "n1", "2001:db8:18::11/64");
    v6(&mut s, "n2", "2001:db8:18::12/64");
    v6(&mut s, "n3", "2001:db8:18::9/64");
    let mut m = me("n1", "198.18.0.11");
    m.ip6 = Some("2001:db8:18::11/64".parse().unwrap());
    let mut w = vec![];
    let p = peers(&s, &m, &mut w);
    assert!(w.is_empty(), "{w:?}");
    let addrs: Vec<String> = p.keys().map(ToString::to_string).collect();
    assert_eq!(
        addrs,
        [
            "198.18.0.9",
            "198.18.0.12",
            "2001:db8:18::9",
            "2001:db8:18::12"
        ]
    );
    let v6peer = &p[&"2001:db8:18::12".parse::<IpAddr>().unwrap()];
    // Held to the node's router ID (its IPv4 address), from our IPv6 address; the lower
    // IPv6 address waits, as for IPv4.
    assert_eq!(v6peer.router_id, Some("198.18.0.12".parse().unwrap()));
    assert_eq!(v6peer.source, Some("2001:db8:18::11".parse().unwrap()));
    assert!(v6peer.passive && v6peer.member && v6peer.kind == PeerKind::Mesh);
    assert!(!p[&"2001:db8:18::9".parse::<IpAddr>().unwrap()].passive);

    // A node without IPv6 (or we without it) peers over IPv4 only.
    Arc::make_mut(&mut s.nodes)
        .get_mut("n3")
        .unwrap()
        .bgp
        .ipv6_address = None;
    assert_eq!(peers(&s, &m, &mut w).len(), 3);
    m.ip6 = None;
    assert_eq!(peers(&s, &m, &mut w).len(), 2);
    // A malformed IPv6 address is named, and that node still peers over IPv4.
    m.ip6 = Some("2001:db8:18::11/64".parse().unwrap());
    Arc::make_mut(&mut s.nodes)
        .get_mut("n2")
        .unwrap()
        .bgp
        .ipv6_address = Some("10.0.0.1/8".into());
    let p = peers(&s, &m, &mut w);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(w
        .iter()
        .any(|w| w.resource == "node n2" && w.reason.contains("ipv6Address")));
}

/// IPv6-only nodes (`IP=none`): sessions over IPv6 only, with every IPv6 node; none with an
/// IPv4-only node; router IDs from the names' hash, held to by both sides.
#[test]
fn ipv6_only_nodes_peer_over_ipv6_with_hashed_router_ids() {
    let mut s = three();
    let v6only = |s: &mut Snapshot, n: &str, a: &str| {
        let b = &mut Arc::make_mut(&mut s.nodes).get_mut(n).unwrap().bgp;
        b.ipv4_address = None;
        b.ipv6_address = Some(a.into());
    };
    v6only(&mut s, "n1", "2001:db8:18::11/64");
    v6only(&mut s, "n2", "2001:db8:18::12/64");
    // n3 stays IPv4-only; n4 is dual stack.
    let mut n4 = node("198.18.0.14/24", &[], None);
    n4.bgp.ipv6_address = Some("2001:db8:18::14/64".into());
    Arc::make_mut(&mut s.nodes).insert("n4".into(), n4);
    let m = Me::new("n1", None, Some("2001:db8:18::11/64".parse().unwrap()));
    assert_eq!(m.router_id, router_id("n1", None));
    assert_ne!(m.router_id, router_id("n2", None));
    let g = globals(&s, &m);
    assert_eq!(g.router_id, m.router_id);
    let mut w = vec![];
    let p = peers(&s, &m, &mut w);
    assert!(w.is_empty(), "{w:?}");
    let addrs: Vec<String> = p.keys().map(ToString::to_string).collect();
    assert_eq!(addrs, ["2001:db8:18::12", "2001:db8:18::14"]);
    let to_n2 = &p[&"2001:db8:18::12".parse::<IpAddr>().unwrap()];
    assert_eq!(to_n2.router_id, Some(router_id("n2", None)));
    assert_eq!(to_n2.source, Some("2001:db8:18::11".parse().unwrap()));
    // The dual-stack node is held to its IPv4 address, as ever.
    let to_n4 = &p[&"2001:db8:18::14".parse::<IpAddr>().unwrap()];
    assert_eq!(to_n4.router_id, Some("198.18.0.14".parse().unwrap()));
    // And the dual-stack node's view: IPv4 with n3, IPv6 with n1 and n2 (held to hashes).
    let m4 = Me::new(
        "n4",
        Some("198.18.0.14/24".parse().unwrap()),
        Some("2001:db8:18::14/64".parse().unwrap()),
    );
    let p = peers(&s, &m4, &mut w);
    assert!(w.is_empty(), "{w:?}");
    let addrs: Vec<String> = p.keys().map(ToString::to_string).collect();
    assert_eq!(addrs, ["198.18.0.9", "2001:db8:18::11", "2001:db8:18::12"]);
    // A malformed IPv4 address beside a good IPv6 one: its router ID is unknown, so no
    // session at all (not one held to the hash), and it is named.
    let mut bad = s.clone();
    Arc::make_mut(&mut bad.nodes)
        .get_mut("n2")
        .unwrap()
        .bgp
        .ipv4_address = Some("198.18.0.300/24".into());
    let mut wb = vec![];
    let pb = peers(&bad, &m, &mut wb);
    assert!(
        !pb.contains_key(&"2001:db8:18::12".parse::<IpAddr>().unwrap()),
        "{pb:?}"
    );
    assert!(wb
        .iter()
        .any(|w| w.resource == "node n2" && w.reason.contains("ipv4Address")));
    let to_n1 = &p[&"2001:db8:18::11".parse::<IpAddr>().unwrap()];
    assert_eq!(to_n1.router_id, Some(m.router_id));
    // The IPv4 pool selects the IPv6-only node: named once; not for a dual-stack node.
    let mut w = vec![];
    ipv4_pools_here(&s, &m, &mut w);
    assert!(
        w.len() == 1 && w[0].resource == "IPPool default" && w[0].reason.contains("IPv6-only"),
        "{w:?}"
    );
    let mut w4 = vec![];
    ipv4_pools_here(&s, &m4, &mut w4);
    assert!(w4.is_empty(), "{w4:?}");
    Arc::make_mut(&mut s.pools)
        .get_mut("default")
        .unwrap()
        .node_selector = "rack == 'r9'".into();
    let mut w = vec![];
    ipv4_pools_here(&s, &m, &mut w);
    assert!(w.is_empty(), "a pool that does not select it: {w:?}");
    // The rails protect what the IPv6-only node has, and nothing IPv4 of its own.
    let r = rails(&s, &m, &[], &mut w);
    assert!(r.protected.contains(&"2001:db8:18::/64".parse().unwrap()));
    assert!(!r
        .protected
        .iter()
        .any(|n| n.to_string().starts_with("198.18.")));
}

/// Calico's hash (`CALICO_ROUTER_ID=hash`): the first four bytes of SHA-256 of the name, a
/// first byte above 223 less 32. Checked against `sha256sum`: "node-0" hashes to 7c6cc41e…,
/// "node-18" to f5c28be3… (0xf5 = 245 → 213).
#[test]
fn router_id_hash_is_calicos() {
    assert_eq!(router_id("node-0", None), Ipv4Addr::new(124, 108, 196, 30));
    assert_eq!(
        router_id("node-18", None),
        Ipv4Addr::new(213, 194, 139, 227)
    );
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    assert_eq!(router_id("node-0", Some(ip)), ip);
}

#[test]
fn rails_protect_the_nodes_ipv6_address_and_subnet() {
    let s = three();
    let mut m = me("n1", "198.18.0.11");
    m.ip6 = Some("2001:db8:18::11/64".parse().unwrap());
    let r = rails(&s, &m, &[], &mut vec![]);
    assert!(
        r.protected.contains(&"2001:db8:18::/64".parse().unwrap()),
        "{:?}",
        r.protected
    );
}

#[test]
fn mesh_off_and_a_malformed_node_is_skipped_with_a_warning() {
    let mut s = three();
    Arc::make_mut(&mut s.nodes).insert("bad".into(), node("198.18.0.300/24", &[], None));
    let mut w = vec![];
    let p = peers(&s, &me("n1", "198.18.0.11"), &mut w);
    assert_eq!(p.len(), 2);
    assert_eq!(w.len(), 1);
    assert!(w[0].resource.contains("bad") && w[0].reason.contains("198.18.0.300"));
    let cfg = BGPConfigurationSpec {
        node_to_node_mesh_enabled: false,
        ..Default::default()
    };
    Arc::make_mut(&mut s.configs).insert("default".into(), cfg);
    assert!(peers(&s, &me("n1", "198.18.0.11"), &mut w).is_empty());
}

#[test]
fn route_reflector_by_peer_selector_both_ways() {
    let mut s = three();
    Arc::make_mut(&mut s.nodes).insert(
        "rr".into(),
        node(
            "198.18.0.2/24",
            &[("route-reflector", "true")],
            Some("224.0.0.1"),
        ),
    );
    let cfg = BGPConfigurationSpec {
        node_to_node_mesh_enabled: false,
        ..Default::default()
    };
    Arc::make_mut(&mut s.configs).insert("default".into(), cfg);
    Arc::make_mut(&mut s.peers).insert(
        "to-rr".into(),
        BGPPeerSpec {
            node_selector: Some("all()".into()),
            peer_selector: Some("route-reflector == 'true'".into()),
            ..Default::default()
        },
    );
    let mut w = vec![];
    let client = peers(&s, &me("n1", "198.18.0.11"), &mut w);
    assert_eq!(client.len(), 1, "{client:?}");
    let to_rr = &client[&"198.18.0.2".parse::<IpAddr>().unwrap()];
    assert!(!to_rr.rr_client && !to_rr.passive);
    // calicoctl-style status names the reflector as such; the reflector sees its clients as
    // the BGPPeer's kind (it applies to every node by selector).
    assert_eq!(to_rr.kind, PeerKind::RouteReflector);
    let rr = peers(&s, &me("rr", "198.18.0.2"), &mut w);
    assert_eq!(rr.len(), 3, "{rr:?}");
    assert!(rr.values().all(|d| d.rr_client && d.passive));
    assert!(rr.values().all(|d| d.kind == PeerKind::NodeSpecific));
    assert_eq!(
        globals(&s, &me("rr", "198.18.0.2")).cluster_id,
        Some("224.0.0.1".parse().unwrap())
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn global_and_node_specific_peers() {
    let mut s = three();
    let mut spec = BGPPeerSpec {
        node: Some("n2".into()),
        peer_ip: Some("198.18.0.1".into()),
        as_number: Some(65001),
        hold_time: Some("30s".into()),
        ttl_security: Some(1),
        ..Default::default()
    };
    Arc::make_mut(&mut s.peers).insert("tor".into(), spec.clone());
    let mut w = vec![];
    let tor: IpAddr = "198.18.0.1".parse().unwrap();
    assert!(!peers(&s, &me("n1", "198.18.0.11"), &mut w).contains_key(&tor));
    let p = peers(&s, &me("n2", "198.18.0.12"), &mut w);
    assert_eq!(
        (p[&tor].kind, p[&tor].asn, p[&tor].hold_time),
        (PeerKind::NodeSpecific, 65001, 30)
    );
    assert_eq!(p[&tor].ttl_security, Some(1));
    assert!(p
        .values()
        .filter(|d| d.kind == PeerKind::Mesh)
        .all(|d| d.ttl_security.is_none()));
    spec.node = None;
    spec.ttl_security = Some(0); // Calico's "off"
    Arc::make_mut(&mut s.peers).insert("tor".into(), spec);
    let p = peers(&s, &me("n1", "198.18.0.11"), &mut w);
    assert_eq!(
        (p[&tor].kind, p[&tor].ttl_security),
        (PeerKind::Global, None)
    );
}

#[test]
fn exports_confirmed_blocks_and_borrowed_addresses_only() {
    let mut s = three();
    let mine = new_block(&"10.244.1.0/26".parse().unwrap(), Some("host:n1".into()));
    let pending = new_block(&"10.244.1.64/26".parse().unwrap(), Some("host:n1".into()));
    let mut theirs = new_block(&"10.244.2.0/26".parse().unwrap(), Some("host:n2".into()));
    assert!(brindle_ipam::block::allocate_ip(
        &mut theirs,
        "10.244.2.5".parse().unwrap(),
        "h",
        &BTreeMap::from([(attr::NODE.to_string(), "n1".to_string())]),
    ));
    for (n, b) in [("a", mine), ("b", pending), ("c", theirs)] {
        Arc::make_mut(&mut s.blocks).insert(n.into(), b);
    }
    confirm(&mut s, "a", "10.244.1.0/26", "n1");
    let e = exports(&s, &me("n1", "198.18.0.11"));
    let got: Vec<(String, bool)> = e.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(
        got,
        [
            ("10.244.1.0/26".to_string(), true),
            ("10.244.2.5/32".to_string(), false)
        ]
    );
    Arc::make_mut(&mut s.pools)
        .get_mut("default")
        .unwrap()
        .disable_bgp_export = true;
    assert!(exports(&s, &me("n1", "198.18.0.11")).is_empty());
}

#[test]
fn encapsulation_follows_the_pool_and_the_tunnel() {
    let mut s = three();
    Arc::make_mut(&mut s.pools)
        .get_mut("default")
        .unwrap()
        .ipip_mode = IpipMode::CrossSubnet;
    assert_eq!(encap(&s, true)[0].1, Encap::CrossSubnet);
    assert_eq!(encap(&s, false)[0].1, Encap::None);
    assert!(wants_ipip(&s));
}

#[test]
fn a_password_peer_waits_for_its_secret() {
    use brindle_api::bgp::{PeerPassword, SecretKeyRef};
    let mut s = three();
    Arc::make_mut(&mut s.peers).insert(
        "tor".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.1".into()),
            as_number: Some(65001),
            password: Some(PeerPassword {
                secret_key_ref: SecretKeyRef {
                    name: "bgp".into(),
                    key: "tor".into(),
                },
            }),
            ..Default::default()
        },
    );
    let tor: IpAddr = "198.18.0.1".parse().unwrap();
    let n1 = me("n1", "198.18.0.11");
    let mut w = vec![];
    // Secrets not listed yet: no session, no warning.
    assert!(!peers(&s, &n1, &mut w).contains_key(&tor));
    assert!(w.is_empty(), "{w:?}");
    // Listed, and missing: still no session, now a warning naming the secret.
    s.secrets_listed = true;
    assert!(!peers(&s, &n1, &mut w).contains_key(&tor));
    assert!(w.len() == 1 && w[0].reason.contains("\"bgp\""), "{w:?}");
    Arc::make_mut(&mut s.secrets).insert(
        "brindle-system/bgp".into(),
        BTreeMap::from([("tor".to_string(), b"s3cret".to_vec())]),
    );
    assert_eq!(
        peers(&s, &n1, &mut w)[&tor].password.as_deref(),
        Some("s3cret")
    );
}

#[test]
fn nodes_are_members_held_to_their_router_id_and_routers_are_not() {
    let mut s = three();
    Arc::make_mut(&mut s.peers).insert(
        "tor".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.1".into()),
            as_number: Some(65001),
            max_prefixes: Some(100),
            ..Default::default()
        },
    );
    // A BGPPeer that names a node by address (an RR node, say) is that node.
    Arc::make_mut(&mut s.peers).insert(
        "rr".into(),
        BGPPeerSpec {
            peer_ip: Some("198.18.0.12".into()),
            as_number: Some(64512),
            ..Default::default()
        },
    );
    let p = peers(&s, &me("n1", "198.18.0.11"), &mut vec![]);
    let at = |a: &str| &p[&a.parse::<IpAddr>().unwrap()];
    let mesh = at("198.18.0.9");
    assert!(mesh.member);
    assert_eq!(mesh.router_id, Some("198.18.0.9".parse().unwrap()));
    let tor = at("198.18.0.1");
    assert!(!tor.member && tor.router_id.is_none());
    assert_eq!(tor.max_prefixes, Some(100));
    let rr = at("198.18.0.12");
    assert!(rr.member);
    assert_eq!(rr.router_id, Some("198.18.0.12".parse().unwrap()));
}

#[test]
fn rails_protect_the_host_and_know_the_pools_and_our_blocks() {
    let mut s = three();
    confirmed_block(&mut s, "a", "10.244.1.0/26", "n1");
    let host: Vec<IpNetwork> = [
        "198.18.0.11/24",
        "127.0.0.1/8",
        "172.17.0.1/16",
        "10.244.9.1/32",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let r = rails(&s, &me("n1", "198.18.0.11"), &host, &mut vec![]);
    let n = |s: &str| s.parse::<IpNetwork>().unwrap();
    for p in [
        "198.18.0.0/24",
        "198.18.0.11/32",
        "172.17.0.0/16",
        "127.0.0.0/8",
    ] {
        assert!(r.protected.contains(&n(p)), "{p} in {:?}", r.protected);
    }
    // tunl0's address (borrowed from another node's block) is not protected: that block's
    // route must still be taken.
    assert!(!r
        .protected
        .iter()
        .any(|p| p.contains("10.244.9.1".parse().unwrap())));
    assert!(r.check(&n("10.244.9.0/26"), true).is_ok());
    assert_eq!(r.pools, vec![(n("10.244.0.0/16"), 26)]);
    assert_eq!(r.local_blocks, vec![n("10.244.1.0/26")]);
}

#[test]
fn the_mesh_takes_its_password_and_gtsm_from_the_bgp_configuration() {
    use brindle_api::bgp::{PeerPassword, SecretKeyRef};
    let mut s = three();
    Arc::make_mut(&mut s.nodes).insert("far".into(), node("198.19.7.7/24", &[], None));
    Arc::make_mut(&mut s.configs).insert(
        "default".into(),
        BGPConfigurationSpec {
            node_mesh_password: Some(PeerPassword {
                secret_key_ref: SecretKeyRef {
                    name: "mesh".into(),
                    key: "pw".into(),
                },
            }),
            node_mesh_ttl_security: true,
            ..Default::default()
        },
    );
    let n1 = me("n1", "198.18.0.11");
    let mut w = vec![];
    // Secrets not listed yet: no mesh session at all (never one without its password).
    assert!(peers(&s, &n1, &mut w).is_empty());
    s.secrets_listed = true;
    assert!(peers(&s, &n1, &mut w).is_empty());
    assert!(
        w.iter().any(|x| x.reason.contains("nodeMeshPassword")),
        "{w:?}"
    );
    Arc::make_mut(&mut s.secrets).insert(
        "brindle-system/mesh".into(),
        BTreeMap::from([("pw".to_string(), b"m3sh".to_vec())]),
    );
    let p = peers(&s, &n1, &mut vec![]);
    assert_eq!(p.len(), 3);
    assert!(p.values().all(|d| d.password.as_deref() == Some("m3sh")));
    let at = |a: &str| &p[&a.parse::<IpAddr>().unwrap()];
    assert_eq!(at("198.18.0.12").ttl_security, Some(1), "same subnet: GTSM");
    assert_eq!(at("198.19.7.7").ttl_security, None, "another subnet: none");
}

/// A connected subnet that covers a pool would refuse every pool route: it is left out (with
/// a warning) and only the host's addresses are protected. A block of a pool that is not
/// exported is still ours.
#[test]
fn a_subnet_covering_a_pool_does_not_refuse_the_pool() {
    let mut s = three();
    Arc::make_mut(&mut s.pools)
        .get_mut("default")
        .unwrap()
        .disable_bgp_export = true;
    confirmed_block(&mut s, "a", "10.244.1.0/26", "n1");
    let host: Vec<IpNetwork> = vec!["10.0.0.5/8".parse().unwrap()];
    let mut w = vec![];
    let r = rails(&s, &me("n1", "198.18.0.11"), &host, &mut w);
    let n = |s: &str| s.parse::<IpNetwork>().unwrap();
    assert!(
        r.check(&n("10.244.2.0/26"), true).is_ok(),
        "{:?}",
        r.protected
    );
    assert!(r.check(&n("10.0.0.5/32"), true).is_err());
    assert!(
        w.iter()
            .any(|x| x.reason.contains("covers pool 10.244.0.0/16")),
        "{w:?}"
    );
    assert_eq!(r.local_blocks, vec![n("10.244.1.0/26")]);
}
