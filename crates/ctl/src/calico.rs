//! Calico `projectcalico.org/v3` documents (IPPool, BGPPeer, BGPFilter, BGPConfiguration,
//! IPAMConfiguration) converted to Brindle's, with one note for each field Brindle does not
//! honour, so nothing is dropped silently. Field meanings are Calico's documented ones.

use serde_json::{Map, Value};

use crate::kind::Kind;

pub const API_VERSION: &str = "projectcalico.org/v3";

/// A converted document and what did not carry over.
#[derive(Debug)]
pub struct Converted {
    pub kind: Kind,
    pub value: Value,
    pub notes: Vec<String>,
}

/// How a Calico spec field carries over.
enum Field {
    /// Same name, same meaning.
    Same,
    /// Not honoured, and why.
    Dropped(&'static str),
}

/// How each spec field of one Calico kind carries over (None: Calico has no such field).
type FieldRule = fn(&str, &Value) -> Option<Field>;

fn ippool_field(name: &str, v: &Value) -> Option<Field> {
    Some(match name {
        "cidr" | "blockSize" | "natOutgoing" | "disabled" | "nodeSelector" | "disableBGPExport" => {
            Field::Same
        }
        "ipipMode" => Field::Same,
        "vxlanMode" if v == "Never" => Field::Dropped(""),
        "vxlanMode" => Field::Dropped("Brindle has no VXLAN; use ipipMode"),
        "allowedUses" => Field::Same, // LoadBalancer is filtered below
        "assignmentMode" if v == "Automatic" => Field::Dropped(""),
        "assignmentMode" => Field::Dropped("Brindle assigns from every enabled pool automatically"),
        "namespaceSelector" => Field::Dropped("Brindle selects pools by node, not namespace"),
        "ipip" | "nat-outgoing" => {
            Field::Dropped("a pre-v3 field; use ipipMode / natOutgoing (Calico ignores it too)")
        }
        "awsSubnetID" => Field::Dropped("Brindle has no AWS secondary-interface support"),
        _ => return None,
    })
}

fn bgppeer_field(name: &str, v: &Value) -> Option<Field> {
    Some(match name {
        "node" | "nodeSelector" | "peerIP" | "asNumber" | "peerSelector" | "password"
        | "keepaliveTime" | "maxRestartTime" | "ttlSecurity" => Field::Same,
        "sourceAddress" if v == "UseNodeIP" => Field::Dropped(""),
        "sourceAddress" => Field::Dropped(
            "Brindle always sources node-to-node sessions from the node IP and lets the kernel pick otherwise",
        ),
        "keepOriginalNextHop" if v == false => Field::Dropped(""),
        "keepOriginalNextHop" | "nextHopMode" => {
            Field::Dropped("Brindle has no per-peer next-hop mode")
        }
        "failureDetectionMode" if v == "None" => Field::Dropped(""),
        "failureDetectionMode" => Field::Dropped("Brindle has no BFD"),
        "restartMode" if v == "GracefulRestart" => Field::Dropped(""),
        "restartMode" => Field::Dropped("Brindle always uses graceful restart"),
        "birdGatewayMode" => Field::Dropped("Brindle has no BIRD; next hops are installed as learned"),
        "numAllowedLocalASNumbers" => Field::Dropped("Brindle does not relax AS-path loop detection"),
        "reachableBy" => Field::Dropped("Brindle installs no route to the peer"),
        "filters" | "maxPrefixes" => Field::Same,
        "localWorkloadSelector" => Field::Dropped("Brindle does not peer with workloads"),
        "localASNumber" => Field::Dropped("Brindle uses the node's AS on every session"),
        "reversePeering" => Field::Dropped("Brindle peers both ways when a peerSelector matches"),
        _ => return None,
    })
}

/// Every BGPFilter field carries over; how Brindle applies them is in docs/security.md
/// ("What a node accepts and announces").
fn bgpfilter_field(name: &str, _v: &Value) -> Option<Field> {
    Some(match name {
        "exportV4" | "importV4" | "exportV6" | "importV6" => Field::Same,
        _ => return None,
    })
}

fn bgpconfig_field(name: &str, _v: &Value) -> Option<Field> {
    Some(match name {
        "logSeverityScreen"
        | "nodeToNodeMeshEnabled"
        | "asNumber"
        | "listenPort"
        | "serviceClusterIPs"
        | "serviceExternalIPs"
        | "serviceLoadBalancerIPs"
        | "communities" => Field::Same,
        "prefixAdvertisements" => {
            Field::Dropped("Brindle does not attach communities per prefix yet")
        }
        "nodeMeshPassword" => Field::Same,
        "nodeMeshMaxRestartTime" => {
            Field::Dropped("Brindle uses one graceful-restart time for every peer")
        }
        "bindMode" => Field::Dropped("Brindle listens on every address"),
        "ignoredInterfaces" => Field::Dropped("Brindle exports no interface routes"),
        "localWorkloadPeeringIPV4" | "localWorkloadPeeringIPV6" => {
            Field::Dropped("Brindle does not peer with workloads")
        }
        "programClusterRoutes" => {
            Field::Dropped("Brindle's speaker always programs cluster routes (proto bird)")
        }
        "serviceLoadBalancerAggregation" => {
            Field::Dropped("Brindle advertises the ranges as given")
        }
        _ => return None,
    })
}

fn ipamconfig_field(name: &str, _v: &Value) -> Option<Field> {
    Some(match name {
        "strictAffinity" | "maxBlocksPerHost" | "autoAllocateBlocks" => Field::Same,
        "kubeVirtVMAddressPersistence" => Field::Dropped("Brindle has no KubeVirt support"),
        _ => return None,
    })
}

/// Converts one Calico document; an error for kinds Brindle has no counterpart of.
pub fn convert(doc: &Value) -> Result<Converted, String> {
    let calico_kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let (kind, rule): (Kind, FieldRule) = match calico_kind {
        "IPPool" => (Kind::IPPool, ippool_field),
        "BGPPeer" => (Kind::BGPPeer, bgppeer_field),
        "BGPFilter" => (Kind::BGPFilter, bgpfilter_field),
        "BGPConfiguration" => (Kind::BGPConfiguration, bgpconfig_field),
        "IPAMConfiguration" | "IPAMConfig" => (Kind::IPAMConfig, ipamconfig_field),
        other => {
            return Err(format!(
                "{API_VERSION} kind {other:?} has no Brindle counterpart (converted kinds: IPPool, BGPPeer, BGPFilter, BGPConfiguration, IPAMConfiguration)"
            ))
        }
    };
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = format!("{calico_kind} {name:?}");
    let mut notes = vec![];
    let mut metadata = Map::new();
    if let Some(m) = doc.get("metadata").and_then(Value::as_object) {
        for (k, v) in m {
            match k.as_str() {
                "name" | "labels" | "annotations" => {
                    metadata.insert(k.clone(), v.clone());
                }
                // Server-set fields of the source cluster mean nothing here.
                "resourceVersion" | "uid" | "creationTimestamp" | "generation"
                | "managedFields" => {}
                _ => notes.push(format!(
                    "{what}: metadata.{k} is not honoured: Brindle's resources are cluster-scoped and keep only name, labels and annotations"
                )),
            }
        }
    }
    let mut spec = Map::new();
    if let Some(s) = doc.get("spec").and_then(Value::as_object) {
        for (k, v) in s {
            match rule(k, v) {
                Some(Field::Same) => {
                    spec.insert(k.clone(), v.clone());
                }
                Some(Field::Dropped("")) => {} // Calico's default, which is Brindle's behaviour
                Some(Field::Dropped(why)) => {
                    notes.push(format!("{what}: spec.{k} ({}) is not honoured: {why}", short(v)))
                }
                None => notes.push(format!(
                    "{what}: spec.{k} ({}) is not honoured: Brindle knows no such {calico_kind} field",
                    short(v)
                )),
            }
        }
    }
    if let Some(rest) = doc.as_object().map(|o| {
        o.keys()
            .filter(|k| {
                !matches!(
                    k.as_str(),
                    "apiVersion" | "kind" | "metadata" | "spec" | "status"
                )
            })
            .cloned()
            .collect::<Vec<_>>()
    }) {
        for k in rest {
            notes.push(format!(
                "{what}: {k} is not honoured: not part of a resource"
            ));
        }
    }
    fix_up(kind, &what, &mut spec, &mut notes);
    let value = serde_json::json!({
        "apiVersion": "brindle.dev/v1",
        "kind": kind.name(),
        "metadata": metadata,
        "spec": spec,
    });
    Ok(Converted { kind, value, notes })
}

/// Where Calico's values differ from Brindle's for a field both have.
fn fix_up(kind: Kind, what: &str, spec: &mut Map<String, Value>, notes: &mut Vec<String>) {
    match kind {
        Kind::IPPool => {
            if let Some(Value::Array(uses)) = spec.get_mut("allowedUses") {
                let before = uses.len();
                uses.retain(|u| u != "LoadBalancer");
                if uses.len() != before {
                    notes.push(format!(
                        "{what}: spec.allowedUses LoadBalancer is not honoured: Brindle has no LoadBalancer IPAM"
                    ));
                }
            }
        }
        Kind::BGPPeer => {
            // Calico's asNumber may be a string ("64512" or "1.10" asdot); Brindle's is a number.
            if let Some(v) = spec.get_mut("asNumber") {
                if let Some(n) = as_number(v) {
                    *v = n.into();
                }
            }
            if let Some(pw) = spec.get_mut("password").and_then(Value::as_object_mut) {
                if let Some(r) = pw.get_mut("secretKeyRef").and_then(Value::as_object_mut) {
                    if r.remove("optional").is_some() {
                        notes.push(format!(
                            "{what}: spec.password.secretKeyRef.optional is not honoured: a peer waits for its Secret"
                        ));
                    }
                }
            }
        }
        Kind::BGPConfiguration => {
            if let Some(v) = spec.get_mut("asNumber") {
                if let Some(n) = as_number(v) {
                    *v = n.into();
                }
            }
        }
        _ => {}
    }
}

/// `64512`, `"64512"` or asdot `"1.10"` (RFC 5396).
fn as_number(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => match s.split_once('.') {
            Some((hi, lo)) => {
                Some((hi.parse::<u16>().ok()? as u32) << 16 | lo.parse::<u16>().ok()? as u32)
            }
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ippool_with_vxlan_and_defaults() {
        let doc = serde_json::json!({
            "apiVersion": API_VERSION, "kind": "IPPool",
            "metadata": {"name": "my.ippool-1"},
            "spec": {"cidr": "10.1.0.0/16", "ipipMode": "CrossSubnet", "natOutgoing": true,
                     "vxlanMode": "Never", "disabled": false, "nodeSelector": "all()",
                     "allowedUses": ["Workload", "Tunnel", "LoadBalancer"]}
        });
        let c = convert(&doc).unwrap();
        assert_eq!(c.kind, Kind::IPPool);
        assert_eq!(c.value["spec"]["ipipMode"], "CrossSubnet");
        assert_eq!(
            c.value["spec"]["allowedUses"],
            serde_json::json!(["Workload", "Tunnel"])
        );
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert!(c.notes[0].contains("LoadBalancer"));
        let mut vx = doc.clone();
        vx["spec"]["vxlanMode"] = "Always".into();
        let c = convert(&vx).unwrap();
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("spec.vxlanMode (\"Always\")")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn peer_as_forms_and_unknown_kinds() {
        assert_eq!(as_number(&"1.10".into()), Some(65546));
        assert_eq!(as_number(&"64512".into()), Some(64512));
        let e =
            convert(&serde_json::json!({"apiVersion": API_VERSION, "kind": "FelixConfiguration"}));
        assert!(e.unwrap_err().contains("no Brindle counterpart"));
    }
}
