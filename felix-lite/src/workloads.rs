//! Routes to local pods: `<pod IP>/32 dev <host veth> scope link`, as the CNI plugin makes
//! them. The agent repairs a missing one for a pod that still has its veth. It never removes
//! one: the kernel drops a route with its veth, and a route on a live veth may belong to a
//! pod the datastore has not shown us yet (the CNI plugin writes before the API server knows).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

/// `<prefix>` + the first 11 hex digits of sha1("<namespace>.<pod>").
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// The host side of one CNI attachment's veth. The primary interface (`eth0`) keeps
/// Calico's name, [`host_veth_name`] of the pod, so Calico habits (and this agent's route
/// repair) hold; any other interface hashes the network and interface in as well, so every
/// attachment of a container has its own veth. Always `prefix` + 11 hex digits.
pub fn attachment_veth_name(
    prefix: &str,
    namespace: &str,
    pod: &str,
    network: &str,
    ifname: &str,
) -> String {
    if ifname == "eth0" {
        host_veth_name(prefix, namespace, pod)
    } else {
        host_veth_name(prefix, namespace, &format!("{pod}.{network}.{ifname}"))
    }
}

/// One local pod's address and the host side of its veth.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRoute {
    pub veth: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
#[error("workload routes: {what}: {source}")]
pub struct WorkloadError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

/// The interfaces of the namespace `handle` talks to, by name.
pub async fn links(handle: &Handle) -> Result<HashMap<String, u32>, WorkloadError> {
    let mut links = HashMap::new();
    let mut s = handle.link().get().execute();
    while let Some(l) = s.try_next().await.map_err(|source| WorkloadError {
        what: "listing links".into(),
        source,
    })? {
        for a in &l.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                links.insert(n.clone(), l.header.index);
            }
        }
    }
    Ok(links)
}

/// Adds the routes of `want` that are missing and whose veth exists; returns those added.
pub async fn repair(
    handle: &Handle,
    want: &[WorkloadRoute],
) -> Result<Vec<WorkloadRoute>, WorkloadError> {
    let links = links(handle).await?;
    let mut present: HashSet<(u32, Ipv4Addr)> = HashSet::new();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await.map_err(|source| WorkloadError {
        what: "listing routes".into(),
        source,
    })? {
        if r.header.destination_prefix_length != 32 {
            continue;
        }
        let mut dst = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(
                    rtnetlink::packet_route::route::RouteAddress::Inet(ip),
                ) => dst = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(d), Some(o)) = (dst, oif) {
            present.insert((o, d));
        }
    }
    let mut added = vec![];
    for w in want {
        let Some(&index) = links.get(&w.veth) else {
            continue; // the pod's veth is gone (or not made yet): nothing to route to
        };
        if present.contains(&(index, w.ip)) {
            continue;
        }
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(w.ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| WorkloadError {
                what: format!("adding {}/32 dev {}", w.ip, w.veth),
                source,
            })?;
        added.push(w.clone());
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_veth_per_attachment_within_ifnamsiz() {
        let primary = attachment_veth_name("brl", "default", "web", "k8s-pod-network", "eth0");
        assert_eq!(primary, host_veth_name("brl", "default", "web"));
        let a = attachment_veth_name("brl", "default", "web", "a", "eth1");
        let b = attachment_veth_name("brl", "default", "web", "b", "eth1");
        let c = attachment_veth_name("brl", "default", "web", "a", "eth2");
        let names = [&primary, &a, &b, &c];
        for (i, x) in names.iter().enumerate() {
            assert!(x.len() <= 15, "{x}");
            for y in &names[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }
}
