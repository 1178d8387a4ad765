//! Calico's `BGPFilter` (projectcalico.org/v3 shape): ordered import and export rules per
//! family, attached to BGPPeers by name (`BGPPeer.spec.filters`). The first rule that matches,
//! across the peer's filters in order, decides; a route no rule matches is accepted on
//! import and exported as usual. Rules sit behind Brindle's rails: they can refuse what the
//! rails let through, never let through what the rails refuse (see "What a node accepts
//! and announces" in docs/security.md).

use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldError, Validate};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "brindle.dev",
    version = "v1",
    kind = "BGPFilter",
    plural = "bgpfilters",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes this node sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV4")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes this node receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV4")]
    pub import_v4: Vec<BGPFilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV6")]
    pub export_v6: Vec<BGPFilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV6")]
    pub import_v6: Vec<BGPFilterRule>,
}

/// One rule: every condition given must hold (none: every route), then `action`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterRule {
    /// The prefix `matchOperator` compares the route's with; both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// `Equal` (exactly `cidr`), `In` (`cidr` or inside it), `NotEqual`, `NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<String>,
    /// With `In`/`NotIn`: the route's prefix length must be within min..=max (the CIDR's own
    /// length at least). Needs `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// `RemotePeers`: the route was learned from a BGP peer (on import, every route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Calico's match on the route's interface. Accepted for compatibility; no route Brindle
    /// imports or exports carries an interface, so a rule with it matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `eBGP` or `iBGP`: the rule applies to peers of that kind only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<String>,
    /// The route carries this community (`aa:nn`) or large community (`aa:nn:mm`); one value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<CommunityMatch>,
    /// The AS path starts with these AS numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub as_path_prefix: Vec<u32>,
    /// The route's priority (LOCAL_PREF = 2147483647 − priority, as Calico maps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// `Accept` or `Reject`.
    pub action: String,
    /// What an `Accept` does to the route first (1 to 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<BGPFilterOperation>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixLength {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommunityMatch {
    pub values: Vec<String>,
}

/// Exactly one of the fields.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterOperation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<CommunityValue>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "prependASPath"
    )]
    pub prepend_as_path: Option<AsPathPrepend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<PriorityValue>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommunityValue {
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsPathPrepend {
    pub prefix: Vec<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityValue {
    pub value: u32,
}

/// Calico's priority range (LOCAL_PREF = 2147483647 − priority stays positive).
pub const PRIORITY_MAX: u32 = 2_147_483_646;

/// A community value: `aa:nn` (16-bit parts) or `aa:nn:mm` (32-bit parts).
pub enum Community {
    Standard(u32),
    Large((u32, u32, u32)),
}

pub fn parse_community(v: &str) -> Result<Community, String> {
    let parts: Vec<&str> = v.split(':').collect();
    match parts[..] {
        [a, b] => match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => Ok(Community::Standard((u32::from(a) << 16) | u32::from(b))),
            _ => Err(format!("{v:?}: aa:nn needs two numbers of 0..=65535")),
        },
        [a, b, c] => match (a.parse::<u32>(), b.parse::<u32>(), c.parse::<u32>()) {
            (Ok(a), Ok(b), Ok(c)) => Ok(Community::Large((a, b, c))),
            _ => Err(format!(
                "{v:?}: aa:nn:mm needs three numbers of 0..=4294967295"
            )),
        },
        _ => Err(format!("{v:?} is neither aa:nn nor aa:nn:mm")),
    }
}

fn check_rule(r: &BGPFilterRule, v6: bool, at: &str, e: &mut Vec<FieldError>) {
    let mut err = |field: &str, why: String| e.push(FieldError::new(format!("{at}.{field}"), why));
    let family = if v6 { "IPv6" } else { "IPv4" };
    let max_len: i32 = if v6 { 128 } else { 32 };
    if !matches!(r.action.as_str(), "Accept" | "Reject") {
        err(
            "action",
            format!("{:?}: expected Accept or Reject", r.action),
        );
    }
    match (&r.cidr, &r.match_operator) {
        (Some(c), Some(op)) => {
            match c.parse::<IpNetwork>() {
                Ok(n) if n.is_ipv6() != v6 => {
                    err("cidr", format!("{c:?} is not an {family} network"))
                }
                Ok(_) => {}
                Err(x) => err("cidr", format!("{c:?}: {x}")),
            }
            if !matches!(op.as_str(), "Equal" | "NotEqual" | "In" | "NotIn") {
                err(
                    "matchOperator",
                    format!("{op:?}: expected Equal, NotEqual, In or NotIn"),
                );
            }
            if r.prefix_length.is_some() && matches!(op.as_str(), "Equal" | "NotEqual") {
                err(
                    "prefixLength",
                    format!("with {op} it has no clear meaning (Calico's BIRD config compares a prefix with a set); use In or NotIn"),
                );
            }
        }
        (Some(_), None) => err("matchOperator", "required with cidr".into()),
        (None, Some(_)) => err("cidr", "required with matchOperator".into()),
        (None, None) => {}
    }
    if let Some(pl) = &r.prefix_length {
        if r.cidr.is_none() {
            err("prefixLength", "needs cidr".into());
        }
        for (name, v) in [("min", pl.min), ("max", pl.max)] {
            if let Some(v) = v.filter(|v| !(0..=max_len).contains(v)) {
                err(
                    &format!("prefixLength.{name}"),
                    format!("{v} is outside 0..={max_len}"),
                );
            }
        }
        if let (Some(lo), Some(hi)) = (pl.min, pl.max) {
            if lo > hi {
                err(
                    "prefixLength",
                    format!("min {lo} is above max {hi}: no route would match"),
                );
            }
        }
    }
    if let Some(s) = &r.source {
        if s != "RemotePeers" {
            err("source", format!("{s:?}: expected RemotePeers"));
        }
    }
    if let Some(i) = &r.interface {
        let ok = i == "*"
            || (!i.is_empty()
                && i.len() <= 15
                && i.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.*-".contains(c)));
        if !ok {
            err(
                "interface",
                format!("{i:?} is not an interface name or pattern"),
            );
        }
    }
    if let Some(p) = &r.peer_type {
        if !matches!(p.as_str(), "eBGP" | "iBGP") {
            err("peerType", format!("{p:?}: expected eBGP or iBGP"));
        }
    }
    if let Some(c) = &r.communities {
        if c.values.len() != 1 {
            err(
                "communities.values",
                format!("{} values: exactly one is allowed", c.values.len()),
            );
        }
        for (i, v) in c.values.iter().enumerate() {
            if let Err(why) = parse_community(v) {
                err(&format!("communities.values[{i}]"), why);
            }
        }
    }
    if let Some(p) = r.priority.filter(|p| !(1..=PRIORITY_MAX).contains(p)) {
        err("priority", format!("{p} is outside 1..={PRIORITY_MAX}"));
    }
    if !r.operations.is_empty() && r.action != "Accept" {
        err(
            "operations",
            "operations may only be used with action Accept".into(),
        );
    }
    if r.operations.len() > 10 {
        err(
            "operations",
            format!("{} operations: at most 10", r.operations.len()),
        );
    }
    for (i, op) in r.operations.iter().enumerate() {
        let set = [
            op.add_community.is_some(),
            op.prepend_as_path.is_some(),
            op.set_priority.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            err(
                &format!("operations[{i}]"),
                "exactly one of addCommunity, prependASPath, setPriority".into(),
            );
        }
        if let Some(c) = &op.add_community {
            if let Err(why) = parse_community(&c.value) {
                err(&format!("operations[{i}].addCommunity.value"), why);
            }
        }
        if let Some(p) = &op.prepend_as_path {
            if p.prefix.is_empty() || p.prefix.len() > 10 {
                err(
                    &format!("operations[{i}].prependASPath.prefix"),
                    format!("{} AS numbers: 1 to 10", p.prefix.len()),
                );
            }
        }
        if let Some(p) = op
            .set_priority
            .as_ref()
            .filter(|p| !(1..=PRIORITY_MAX).contains(&p.value))
        {
            err(
                &format!("operations[{i}].setPriority.value"),
                format!("{} is outside 1..={PRIORITY_MAX}", p.value),
            );
        }
    }
}

impl Validate for BGPFilter {
    fn field_errors(&self) -> Vec<FieldError> {
        let mut e = vec![];
        let s = &self.spec;
        for (field, rules, v6) in [
            ("spec.exportV4", &s.export_v4, false),
            ("spec.importV4", &s.import_v4, false),
            ("spec.exportV6", &s.export_v6, true),
            ("spec.importV6", &s.import_v6, true),
        ] {
            for (i, r) in rules.iter().enumerate() {
                check_rule(r, v6, &format!("{field}[{i}]"), &mut e);
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(spec: serde_json::Value) -> Result<BGPFilter, String> {
        serde_json::from_value::<BGPFilterSpec>(spec)
            .map(|s| BGPFilter::new("f", s))
            .map_err(|e| e.to_string())
    }

    /// The example of Calico's BGPFilter reference page.
    #[test]
    fn calicos_documented_example_is_valid() {
        let f = filter(serde_json::json!({
            "exportV4": [
                {"action": "Accept", "matchOperator": "In", "cidr": "77.0.0.0/16", "source": "RemotePeers"},
                {"action": "Reject", "interface": "*.calico"}
            ],
            "importV4": [
                {"action": "Accept", "matchOperator": "In", "cidr": "55.0.0.0/16", "prefixLength": {"min": 30}},
                {"action": "Reject", "matchOperator": "NotIn", "cidr": "44.0.0.0/16"}
            ],
            "exportV6": [
                {"action": "Reject", "source": "RemotePeers"},
                {"action": "Reject", "interface": "*.calico"}
            ],
            "importV6": [
                {"action": "Accept", "matchOperator": "Equal", "cidr": "5000::0/64"},
                {"action": "Reject"}
            ]
        }))
        .unwrap();
        assert!(f.validate().is_ok(), "{:?}", f.validate());
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            (
                serde_json::json!({"importV4": [{"action": "Drop"}]}),
                "spec.importV4[0].action",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "cidr": "ffee::/64", "matchOperator": "In"}]}),
                "spec.importV4[0].cidr",
            ),
            (
                serde_json::json!({"importV6": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In"}]}),
                "spec.importV6[0].cidr",
            ),
            (
                serde_json::json!({"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8"}]}),
                "spec.exportV4[0].matchOperator",
            ),
            (
                serde_json::json!({"exportV4": [{"action": "Accept", "matchOperator": "In"}]}),
                "spec.exportV4[0].cidr",
            ),
            (
                serde_json::json!({"exportV4": [{"action": "Accept", "prefixLength": {"min": 8}}]}),
                "spec.exportV4[0].prefixLength",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In", "prefixLength": {"max": 64}}]}),
                "spec.importV4[0].prefixLength.max",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "fancy"}]}),
                "spec.importV4[0].matchOperator",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "source": "xyz"}]}),
                "spec.importV4[0].source",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "interface": "eth&"}]}),
                "spec.importV4[0].interface",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Reject", "operations": [{"setPriority": {"value": 5}}]}]}),
                "spec.importV4[0].operations",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "operations": [{}]}]}),
                "spec.importV4[0].operations[0]",
            ),
            (
                serde_json::json!({"importV4": [{"action": "Accept", "communities": {"values": ["70000:1"]}}]}),
                "spec.importV4[0].communities.values[0]",
            ),
        ];
        for (spec, field) in cases {
            let f = filter(spec.clone()).unwrap();
            let e = f.validate().expect_err(&spec.to_string());
            assert!(e.mentions(field), "{spec}: expected {field}, got {e}");
        }
        // Unknown fields are refused by the type itself.
        assert!(
            filter(serde_json::json!({"importV4": [{"action": "Accept", "nope": 1}]}))
                .unwrap_err()
                .contains("nope")
        );
    }
}
