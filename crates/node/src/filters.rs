//! BGPFilters (Calico's resource) compiled into a peer's import and export policies. Calico
//! turns each rule into a BIRD `if … then { accept|reject; }` and calls the peer's filters in
//! order ahead of its own logic; here each rule is a [`Term`] and the first that matches,
//! across the peer's filters, decides (REFERENCE: confd's `filterStatement`). A route no
//! rule matches is accepted on import and exported as usual (the node's own routes: the
//! speaker never passes on what it learned, whatever a filter says).

use brindle_api::bgpfilter::{parse_community, BGPFilterRule, Community};
use brindle_api::BGPFilterSpec;
use brindle_bgp::policy::{Action, Match, Policy, PrefixEntry, Term, Verdict};
use ipnetwork::IpNetwork;

/// Which way routes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Import,
    Export,
}

/// Calico's priority ↔ LOCAL_PREF mapping.
const PRIORITY_BASE: u32 = 2_147_483_647;

/// The policy of the filters (in the order given) for one direction, toward a peer that is
/// eBGP or not (rules with another `peerType` are left out). A rule that cannot be read is
/// an error, never a rule left out or half applied: the caller does not peer then.
pub fn policy(
    filters: &[(&str, &BGPFilterSpec)],
    dir: Direction,
    ebgp: bool,
) -> Result<Policy, String> {
    let mut terms = vec![];
    for (name, f) in filters {
        let (v4, v6) = match dir {
            Direction::Import => (&f.import_v4, &f.import_v6),
            Direction::Export => (&f.export_v4, &f.export_v6),
        };
        for (rules, is_v6) in [(v4, false), (v6, true)] {
            for (i, r) in rules.iter().enumerate() {
                let peer_type_fits = match r.peer_type.as_deref() {
                    Some("eBGP") => ebgp,
                    Some("iBGP") => !ebgp,
                    _ => true,
                };
                if !peer_type_fits {
                    continue;
                }
                let t = term(name, i, r, is_v6)
                    .ok_or_else(|| format!("BGPFilter {name:?}: rule {i} cannot be read"))?;
                terms.push(t);
            }
        }
    }
    Ok(Policy {
        terms,
        default: Verdict::Accept,
    })
}

/// Every prefix of one family.
fn family(v6: bool) -> Match {
    let (net, max): (IpNetwork, u8) = if v6 {
        ("::/0".parse().expect("::/0"), 128)
    } else {
        ("0.0.0.0/0".parse().expect("0.0.0.0/0"), 32)
    };
    Match::Prefix(vec![PrefixEntry {
        prefix: net,
        ge: Some(0),
        le: Some(max),
    }])
}

/// One rule as a term; None when it cannot be read (validation refuses such rules, but a
/// resource written past it, by kubectl say, must not turn into another rule).
fn term(name: &str, i: usize, r: &BGPFilterRule, v6: bool) -> Option<Term> {
    if !matches!(r.peer_type.as_deref(), None | Some("eBGP" | "iBGP")) {
        return None;
    }
    let mut matches = vec![family(v6)];
    if r.cidr.is_some() != r.match_operator.is_some() {
        return None;
    }
    if let (Some(cidr), Some(op)) = (&r.cidr, &r.match_operator) {
        if !matches!(op.as_str(), "Equal" | "NotEqual" | "In" | "NotIn") {
            return None;
        }
        let net: IpNetwork = cidr
            .parse()
            .ok()
            .filter(|n: &IpNetwork| n.is_ipv6() == v6)?;
        let max = if v6 { 128 } else { 32 };
        let entry = match (&r.prefix_length, op.as_str()) {
            (_, "Equal" | "NotEqual") => PrefixEntry::exact(net),
            (Some(pl), _) => PrefixEntry {
                prefix: net,
                ge: Some(
                    pl.min
                        .map_or(net.prefix(), |m| (m.max(0) as u8).max(net.prefix())),
                ),
                le: Some(pl.max.map_or(max, |m| (m.max(0) as u8).min(max))),
            },
            (None, _) => PrefixEntry {
                prefix: net,
                ge: Some(net.prefix()),
                le: Some(max),
            },
        };
        let m = Match::Prefix(vec![entry]);
        matches.push(match op.as_str() {
            "Equal" | "In" => m,
            _ => Match::Not(Box::new(m)),
        });
    }
    match r.source.as_deref() {
        None => {}
        Some("RemotePeers") => matches.push(Match::Learned),
        Some(_) => return None,
    }
    if r.interface.is_some() {
        // No route Brindle imports or exports has an interface: nothing matches.
        matches.push(Match::Any(vec![]));
    }
    if let Some(c) = r.communities.as_ref().and_then(|c| c.values.first()) {
        matches.push(match parse_community(c).ok()? {
            Community::Standard(v) => Match::Community(v),
            Community::Large(v) => Match::LargeCommunity(v),
        });
    }
    if !r.as_path_prefix.is_empty() {
        matches.push(Match::AsPathPrefix(r.as_path_prefix.clone()));
    }
    if let Some(p) = r.priority {
        matches.push(Match::LocalPref(PRIORITY_BASE.checked_sub(p)?));
    }
    let mut actions = vec![];
    for op in &r.operations {
        if let Some(c) = &op.add_community {
            actions.push(match parse_community(&c.value).ok()? {
                Community::Standard(v) => Action::AddCommunity(v),
                Community::Large(v) => Action::AddLargeCommunity(v),
            });
        }
        if let Some(p) = &op.prepend_as_path {
            // Prepended last first, so the path starts with the list as given.
            actions.extend(p.prefix.iter().rev().map(|a| Action::Prepend(*a, 1)));
        }
        if let Some(p) = &op.set_priority {
            actions.push(Action::SetLocalPref(PRIORITY_BASE.checked_sub(p.value)?));
        }
    }
    let verdict = match r.action.as_str() {
        "Accept" => Verdict::Accept,
        "Reject" => Verdict::Reject,
        _ => return None,
    };
    Some(Term {
        name: format!("{name}[{i}]"),
        matches,
        actions,
        verdict: Some(verdict),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_bgp::codec::{AsSegment, Attributes};

    fn spec(v: serde_json::Value) -> BGPFilterSpec {
        serde_json::from_value(v).unwrap()
    }

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn verdict(p: &Policy, prefix: &str) -> Verdict {
        p.apply(&n(prefix), &mut Attributes::default())
    }

    #[test]
    fn operators_prefix_lengths_and_order() {
        let f = spec(serde_json::json!({
            "importV4": [
                {"action": "Reject", "matchOperator": "Equal", "cidr": "0.0.0.0/0"},
                {"action": "Accept", "matchOperator": "In", "cidr": "55.0.0.0/16", "prefixLength": {"min": 30}},
                {"action": "Reject", "matchOperator": "In", "cidr": "55.0.0.0/16"},
                {"action": "Reject", "matchOperator": "NotIn", "cidr": "44.0.0.0/16"}
            ],
            "importV6": [{"action": "Reject"}]
        }));
        let p = policy(&[("f", &f)], Direction::Import, true).unwrap();
        assert_eq!(verdict(&p, "0.0.0.0/0"), Verdict::Reject);
        assert_eq!(verdict(&p, "55.0.1.4/30"), Verdict::Accept);
        assert_eq!(verdict(&p, "55.0.1.0/24"), Verdict::Reject);
        assert_eq!(verdict(&p, "192.0.2.0/24"), Verdict::Reject, "not in 44/16");
        assert_eq!(
            verdict(&p, "44.0.3.0/24"),
            Verdict::Accept,
            "no rule: accepted"
        );
        assert_eq!(
            verdict(&p, "fd00::/64"),
            Verdict::Reject,
            "the v6 catch-all"
        );
        // Export rules are not import rules.
        let e = policy(&[("f", &f)], Direction::Export, true).unwrap();
        assert!(e.terms.is_empty());
    }

    #[test]
    fn filters_in_order_peer_type_and_operations() {
        let a = spec(serde_json::json!({
            "exportV4": [
                {"action": "Accept", "peerType": "iBGP", "matchOperator": "In", "cidr": "10.244.0.0/16"},
                {"action": "Accept", "matchOperator": "In", "cidr": "10.244.0.0/16",
                 "operations": [{"addCommunity": {"value": "64512:7"}}, {"prependASPath": {"prefix": [65000, 65001]}}]}
            ]
        }));
        let b = spec(serde_json::json!({"exportV4": [{"action": "Reject"}]}));
        let p = policy(&[("a", &a), ("b", &b)], Direction::Export, true).unwrap();
        assert_eq!(p.terms.len(), 2, "the iBGP rule is not for an eBGP peer");
        let mut attrs = Attributes {
            as_path: Some(vec![AsSegment::Sequence(vec![64512])]),
            ..Attributes::default()
        };
        assert_eq!(
            p.apply_route(&n("10.244.1.0/26"), &mut attrs, false),
            Verdict::Accept
        );
        assert_eq!(attrs.communities, vec![(64512 << 16) | 7]);
        assert_eq!(
            attrs.as_path,
            Some(vec![AsSegment::Sequence(vec![65000, 65001, 64512])])
        );
        assert_eq!(
            verdict(&p, "192.0.2.0/24"),
            Verdict::Reject,
            "b's catch-all"
        );
    }

    #[test]
    fn source_interface_communities_and_priority() {
        let f = spec(serde_json::json!({
            "exportV4": [
                {"action": "Reject", "interface": "*.calico"},
                {"action": "Reject", "source": "RemotePeers"},
                {"action": "Reject", "communities": {"values": ["65000:1"]}},
                {"action": "Reject", "priority": 10}
            ]
        }));
        let p = policy(&[("f", &f)], Direction::Export, false).unwrap();
        let own = |a: &mut Attributes| p.apply_route(&n("10.244.1.0/26"), a, false);
        assert_eq!(own(&mut Attributes::default()), Verdict::Accept);
        let mut learned = Attributes::default();
        assert_eq!(
            p.apply_route(&n("10.244.1.0/26"), &mut learned, true),
            Verdict::Reject
        );
        let mut c = Attributes {
            communities: vec![(65000 << 16) | 1],
            ..Attributes::default()
        };
        assert_eq!(own(&mut c), Verdict::Reject);
        let mut lp = Attributes {
            local_pref: Some(PRIORITY_BASE - 10),
            ..Attributes::default()
        };
        assert_eq!(own(&mut lp), Verdict::Reject);
    }

    /// Rules written past validation (kubectl, no webhook) never become other rules.
    #[test]
    fn unreadable_rules_are_errors_not_other_rules() {
        for bad in [
            serde_json::json!({"action": "Reject", "matchOperator": "in", "cidr": "10.0.0.0/8"}),
            serde_json::json!({"action": "Accept", "cidr": "10.0.0.0/8"}),
            serde_json::json!({"action": "Accept", "matchOperator": "In"}),
            serde_json::json!({"action": "Drop"}),
            serde_json::json!({"action": "Reject", "communities": {"values": ["70000:1"]}}),
            serde_json::json!({"action": "Reject", "source": "Somewhere"}),
            serde_json::json!({"action": "Reject", "matchOperator": "In", "cidr": "fd00::/8"}),
        ] {
            let f = spec(serde_json::json!({"importV4": [bad.clone()]}));
            assert!(
                policy(&[("f", &f)], Direction::Import, true).is_err(),
                "{bad}"
            );
        }
    }
}
