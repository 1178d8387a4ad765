//! NetworkPolicy from the operator's side: `get networkpolicies` (calicoctl-style) and
//! `policy explain FROM TO[:PORT[/PROTO]]`, the verdict for each direction and the policy
//! and rule that decide it, computed from the datastore by the same functions the agent
//! renders from (`brindle_policy`).

use std::net::IpAddr;

use brindle_datastore::Store;
use brindle_policy::model::{Namespace, Pod, Protocol};
use brindle_policy::{Conn, Decision, End, World};
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::output::columns;
use crate::Failure;

fn err(e: brindle_datastore::StoreError) -> Failure {
    Failure::Error(e.into())
}

/// `get networkpolicies`: namespace, name, the pods it selects, the directions it isolates
/// (as the API defaults them), and whether the agents can read it.
pub async fn list(store: &Store) -> Result<(), Failure> {
    let items = store
        .all::<NetworkPolicy>()
        .list()
        .await
        .map_err(err)?
        .items;
    if items.is_empty() {
        eprintln!("No networkpolicies found.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|np| {
            let (selector, types, state) = match brindle_policy::policy(np) {
                Ok(p) => (
                    selector_text(np),
                    [
                        ("Ingress", p.ingress.is_some()),
                        ("Egress", p.egress.is_some()),
                    ]
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(","),
                    "ok".to_string(),
                ),
                Err(e) => (
                    selector_text(np),
                    "-".into(),
                    format!("refused, its pods isolated: {}: {}", e.field, e.reason),
                ),
            };
            vec![
                np.metadata.namespace.clone().unwrap_or_default(),
                np.metadata.name.clone().unwrap_or_default(),
                selector,
                types,
                state,
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["NAMESPACE", "NAME", "PODSELECTOR", "TYPES", "STATE"],
            &rows
        )
    );
    Ok(())
}

fn selector_text(np: &NetworkPolicy) -> String {
    let Some(s) = np.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) else {
        return "all()".into();
    };
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k} == '{v}'"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        parts.push(format!(
            "{} {} ({})",
            e.key,
            e.operator,
            e.values.clone().unwrap_or_default().join(", ")
        ));
    }
    if parts.is_empty() {
        "all()".into()
    } else {
        parts.join(" && ")
    }
}

/// The cluster as the policies see it: namespaces, pods, policies (unreadable ones closed).
async fn world(store: &Store) -> Result<(World, Vec<Pod>, Vec<String>), Failure> {
    let mut w = World::default();
    for n in store
        .all::<KubeNamespace>()
        .list()
        .await
        .map_err(err)?
        .items
    {
        let ns = brindle_policy::namespace(&n);
        w.namespaces.insert(ns.name.clone(), ns);
    }
    let mut refused = vec![];
    for np in store
        .all::<NetworkPolicy>()
        .list()
        .await
        .map_err(err)?
        .items
    {
        w.policies.push(match brindle_policy::policy(&np) {
            Ok(p) => p,
            Err(e) => {
                refused.push(e.to_string());
                brindle_policy::closed(&np)
            }
        });
    }
    let mut pods = vec![];
    for p in store.all::<KubePod>().list().await.map_err(err)?.items {
        let pod = brindle_policy::pod(&p);
        // A namespace the datastore has no object for (etcd mode) still has its name label.
        w.namespaces
            .entry(pod.namespace.to_string())
            .or_insert_with(|| Namespace::new(&pod.namespace, &[]));
        pods.push(pod);
    }
    Ok((w, pods, refused))
}

/// `ns/pod` (its first address, or its IPv6 one with `v6`) or an address.
fn end<'a>(what: &str, pods: &'a [Pod], v6: bool) -> Result<End<'a>, Failure> {
    if let Ok(ip) = what.parse::<IpAddr>() {
        let pod = pods.iter().find(|p| p.ips.contains(&ip));
        return Ok(End { ip, pod });
    }
    let Some((ns, name)) = what.split_once('/') else {
        return Err(Failure::Usage(format!(
            "{what:?}: give namespace/pod or an address"
        )));
    };
    let pod = pods
        .iter()
        .find(|p| &*p.namespace == ns && &*p.name == name)
        .ok_or_else(|| Failure::Error(anyhow::anyhow!("no pod {ns}/{name}")))?;
    let ip = pod
        .ips
        .iter()
        .find(|a| !v6 || a.is_ipv6())
        .copied()
        .ok_or_else(|| {
            let what = if v6 { "IPv6 address" } else { "address yet" };
            Failure::Error(anyhow::anyhow!("pod {ns}/{name} has no {what}"))
        })?;
    Ok(End { ip, pod: Some(pod) })
}

/// `PORT[/PROTO]` (default TCP).
fn port(s: &str) -> Result<(u16, Protocol), Failure> {
    let (p, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let protocol = Protocol::parse(&proto.to_ascii_uppercase())
        .ok_or_else(|| Failure::Usage(format!("{proto:?} is not TCP, UDP or SCTP")))?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Failure::Usage(format!("{p:?} is not a port 1-65535")))?;
    Ok((port, protocol))
}

fn say(d: &Decision, pod: Option<&Pod>) -> String {
    let who = pod.map_or("-".to_string(), |p| format!("{}/{}", p.namespace, p.name));
    match d {
        Decision::NotIsolated if pod.is_none() => "allowed (not a pod: no policy applies)".into(),
        Decision::NotIsolated => {
            format!("allowed ({who} is not isolated: no policy selects it for this direction)")
        }
        Decision::FromOwnNode => format!("allowed (from {who}'s own node)"),
        Decision::Allowed { policy, rule } => format!("allowed by {policy}, rule {rule}"),
        Decision::Denied { isolated_by } => format!(
            "DENIED: {who} is isolated by {} and no rule of theirs allows it",
            isolated_by.join(", ")
        ),
    }
}

pub async fn explain(store: &Store, from: &str, to: &str, ipv6: bool) -> Result<(), Failure> {
    let (w, pods, refused) = world(store).await?;
    // A bare address (IPv6 ones have colons), else `TARGET:PORT` (`[v6]:PORT`).
    let (to, port_spec) = match to.rsplit_once(':') {
        Some((t, p)) if to.parse::<IpAddr>().is_err() => {
            (t.trim_start_matches('[').trim_end_matches(']'), Some(p))
        }
        _ => (to, None),
    };
    let (port, protocol) = port(port_spec.unwrap_or("80/TCP"))?;
    // One family for both ends: an IPv6 address given for either, or --ipv6.
    let v6 = ipv6
        || [from, to]
            .iter()
            .any(|e| e.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()));
    let (f, t) = (end(from, &pods, v6)?, end(to, &pods, v6)?);
    if f.ip.is_ipv6() != t.ip.is_ipv6() {
        return Err(Failure::Usage(format!(
            "{} and {} are of different families: give two of one family (--ipv6 for pods' IPv6 addresses)",
            f.ip, t.ip
        )));
    }
    let v = w.verdict(&Conn {
        from: f,
        to: t,
        protocol,
        port,
        from_own_node: false,
    });
    println!(
        "{} -> {}:{}/{}: {}",
        from,
        to,
        port,
        protocol.name(),
        if v.allowed() { "ALLOWED" } else { "DENIED" }
    );
    println!("  addresses: {} -> {}", f.ip, t.ip);
    println!("  egress:  {}", say(&v.egress, f.pod));
    println!("  ingress: {}", say(&v.ingress, t.pod));
    for r in refused {
        println!("  note: {r} (its pods are isolated without its allows)");
    }
    Ok(())
}
