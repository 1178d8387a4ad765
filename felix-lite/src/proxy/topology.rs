//! Which endpoints a node sends to: kube-proxy's `CategorizeEndpoints` and
//! `topologyModeFromHints` (`pkg/proxy/topology.go`, REFERENCE §B3), line for line in effect.

use super::{Endpoint, NodeContext, ServicePort};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// All endpoints (no usable hints).
    All,
    PreferSameNode,
    PreferSameZone,
}

/// The endpoints of one service port as a node uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// For Cluster policies: ready endpoints the topology allows, else serving+terminating.
    pub cluster: Vec<&'a Endpoint>,
    /// For Local policies: this node's ready endpoints, else its serving+terminating ones.
    pub local: Vec<&'a Endpoint>,
    /// Whether the service has any usable endpoint anywhere (else: REJECT).
    pub has_any: bool,
}

/// Ready endpoints only are looked at; hints count only when every ready endpoint has them.
pub fn mode_from_hints(eps: &[Endpoint], ctx: &NodeContext) -> TopologyMode {
    let (mut node_hit, mut all_node, mut zone_hit, mut all_zone) = (false, true, false, true);
    for ep in eps.iter().filter(|e| e.ready) {
        match &ep.for_nodes {
            Some(n) if !n.is_empty() => node_hit |= n.contains(&ctx.node),
            _ => all_node = false,
        }
        match &ep.for_zones {
            Some(z) if !z.is_empty() => {
                zone_hit |= ctx.zone.as_ref().is_some_and(|zone| z.contains(zone))
            }
            _ => all_zone = false,
        }
    }
    if all_node && node_hit {
        return TopologyMode::PreferSameNode;
    }
    if all_zone && zone_hit {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::All
}

fn available(ep: &Endpoint, mode: TopologyMode, ctx: &NodeContext) -> bool {
    match mode {
        TopologyMode::All => true,
        TopologyMode::PreferSameNode => {
            ep.for_nodes.as_ref().is_some_and(|n| n.contains(&ctx.node))
        }
        TopologyMode::PreferSameZone => match (&ep.for_zones, &ctx.zone) {
            (Some(z), Some(zone)) => z.contains(zone),
            _ => false,
        },
    }
}

fn is_local(ep: &Endpoint, ctx: &NodeContext) -> bool {
    ep.node.as_deref() == Some(ctx.node.as_str())
}

pub fn categorize<'a>(svc: &'a ServicePort, ctx: &NodeContext) -> Categorized<'a> {
    let eps = &svc.endpoints;
    let mut c = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let mode = mode_from_hints(eps, ctx);
        c.cluster = eps
            .iter()
            .filter(|e| e.ready && available(e, mode, ctx))
            .collect();
        if c.cluster.is_empty() {
            c.cluster = eps.iter().filter(|e| e.serving && e.terminating).collect();
        }
        c.has_any = !c.cluster.is_empty();
    }
    if !svc.uses_local_endpoints() {
        return c;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in eps {
        if e.ready {
            c.has_any = true;
            local_ready |= is_local(e, ctx);
        } else if e.serving && e.terminating {
            c.has_any = true;
            local_terminating |= is_local(e, ctx);
        }
    }
    if local_ready {
        c.local = eps.iter().filter(|e| e.ready && is_local(e, ctx)).collect();
    } else if local_terminating {
        c.local = eps
            .iter()
            .filter(|e| e.serving && e.terminating && is_local(e, ctx))
            .collect();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Protocol;

    fn ep(last: u8, node: &str, zone: &str) -> Endpoint {
        Endpoint {
            ip: std::net::Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            node: Some(node.into()),
            zone: Some(zone.into()),
            ready: true,
            serving: true,
            terminating: false,
            for_nodes: None,
            for_zones: None,
        }
    }
    fn svc(eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            family: crate::family::Family::V4,
            cluster_ip: Some("10.96.0.10".parse().unwrap()),
            port: 80,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            endpoints: eps,
        }
    }
    fn ctx(node: &str, zone: Option<&str>) -> NodeContext {
        NodeContext {
            node: node.into(),
            zone: zone.map(Into::into),
            masquerade_bit: 14,
        }
    }
    fn ips(v: &[&Endpoint]) -> Vec<u8> {
        v.iter()
            .map(|e| match e.ip {
                std::net::IpAddr::V4(a) => a.octets()[3],
                std::net::IpAddr::V6(a) => a.octets()[15],
            })
            .collect()
    }

    #[test]
    fn node_hints_win_only_when_every_ready_endpoint_has_one() {
        let mut a = ep(1, "n1", "z1");
        let mut b = ep(2, "n2", "z1");
        a.for_nodes = Some(vec!["n1".into()]);
        b.for_nodes = Some(vec!["n2".into()]);
        a.for_zones = Some(vec!["z1".into()]);
        b.for_zones = Some(vec!["z1".into()]);
        let s = svc(vec![a.clone(), b.clone()]);
        assert_eq!(ips(&categorize(&s, &ctx("n1", Some("z1"))).cluster), [1]);
        // A node with no endpoint of its own: node hints unusable, zone hints used.
        assert_eq!(ips(&categorize(&s, &ctx("n3", Some("z1"))).cluster), [1, 2]);
        // One ready endpoint without a node hint: node hints ignored.
        b.for_nodes = None;
        let s = svc(vec![a, b]);
        assert_eq!(
            mode_from_hints(&s.endpoints, &ctx("n1", Some("z1"))),
            TopologyMode::PreferSameZone
        );
    }

    #[test]
    fn zone_hints_need_the_node_zone_and_fall_back_to_all() {
        let mut a = ep(1, "n1", "z1");
        let mut b = ep(2, "n2", "z2");
        a.for_zones = Some(vec!["z1".into()]);
        b.for_zones = Some(vec!["z2".into()]);
        let s = svc(vec![a, b]);
        assert_eq!(ips(&categorize(&s, &ctx("n3", Some("z2"))).cluster), [2]);
        assert_eq!(ips(&categorize(&s, &ctx("n3", None)).cluster), [1, 2]);
        assert_eq!(ips(&categorize(&s, &ctx("n3", Some("z9"))).cluster), [1, 2]);
    }

    #[test]
    fn unready_endpoints_do_not_veto_hints_and_terminating_is_a_last_resort() {
        let mut a = ep(1, "n1", "z1");
        a.for_zones = Some(vec!["z1".into()]);
        let mut b = ep(2, "n2", "z2");
        b.ready = false; // no hint, but not ready: ignored by the hint check
        let s = svc(vec![a.clone(), b]);
        assert_eq!(ips(&categorize(&s, &ctx("n2", Some("z1"))).cluster), [1]);
        let mut t = ep(3, "n2", "z2");
        t.ready = false;
        t.terminating = true;
        let mut u = ep(4, "n2", "z2");
        u.ready = false;
        u.serving = false;
        let s = svc(vec![t, u]);
        let c = categorize(&s, &ctx("n1", None));
        assert_eq!(ips(&c.cluster), [3]);
        assert!(c.has_any);
        let s = svc(vec![]);
        assert!(!categorize(&s, &ctx("n1", None)).has_any);
    }

    #[test]
    fn local_policies_take_this_node_only_and_ignore_hints() {
        let mut a = ep(1, "n1", "z1");
        a.for_nodes = Some(vec!["n2".into()]);
        let b = ep(2, "n2", "z1");
        let mut s = svc(vec![a, b]);
        s.internal_local = true;
        let c = categorize(&s, &ctx("n1", Some("z1")));
        assert_eq!(ips(&c.local), [1]);
        assert!(c.cluster.is_empty() && c.has_any);
        let c = categorize(&s, &ctx("n3", Some("z1")));
        assert!(c.local.is_empty() && c.has_any);
    }
}
