//! Policy: prefix lists with ge/le, community and AS-path matches, actions, term order, and
//! Brindle's own export/import rules.

use std::net::Ipv4Addr;

use brindle_bgp::codec::{AsSegment, Attributes};
use brindle_bgp::policy::{Action, Match, Policy, PrefixEntry, Term, Verdict};
use ipnetwork::IpNetwork;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn route(path: &[u32]) -> Attributes {
    Attributes {
        as_path: Some(vec![AsSegment::Sequence(path.to_vec())]),
        next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
        ..Attributes::default()
    }
}

#[test]
fn prefix_entries() {
    let exact = PrefixEntry::exact(net("10.244.0.0/16"));
    assert!(exact.matches(&net("10.244.0.0/16")));
    assert!(!exact.matches(&net("10.244.1.0/24")));
    let ge_le = PrefixEntry {
        prefix: net("10.244.0.0/16"),
        ge: Some(24),
        le: Some(26),
    };
    assert!(ge_le.matches(&net("10.244.1.0/24")));
    assert!(ge_le.matches(&net("10.244.1.64/26")));
    assert!(!ge_le.matches(&net("10.244.1.1/32")));
    assert!(!ge_le.matches(&net("10.245.1.0/24")), "outside");
    assert!(!ge_le.matches(&net("fd00::/24")), "other family");
    let le_only = PrefixEntry {
        prefix: net("10.0.0.0/8"),
        ge: None,
        le: Some(16),
    };
    assert!(le_only.matches(&net("10.0.0.0/8")) && le_only.matches(&net("10.1.0.0/16")));
    assert!(!le_only.matches(&net("10.1.1.0/24")));
}

#[test]
fn terms_in_order_with_actions() {
    let p = Policy {
        terms: vec![
            Term {
                name: "tag everything".into(),
                matches: vec![],
                actions: vec![Action::AddLargeCommunity((64512, 1, 1))],
                verdict: None,
            },
            Term {
                name: "prefer rack A".into(),
                matches: vec![Match::NeighborAs(65001), Match::AsPathLenAtMost(2)],
                actions: vec![Action::SetLocalPref(200), Action::RemoveCommunity(7)],
                verdict: Some(Verdict::Accept),
            },
            Term {
                name: "no long paths".into(),
                matches: vec![Match::AsPathLenAtLeast(3)],
                actions: vec![],
                verdict: Some(Verdict::Reject),
            },
        ],
        default: Verdict::Accept,
    };
    let mut a = route(&[65001]);
    a.communities = vec![7, 8];
    assert_eq!(p.apply(&net("10.0.0.0/24"), &mut a), Verdict::Accept);
    assert_eq!(a.local_pref, Some(200));
    assert_eq!(a.communities, vec![8]);
    assert_eq!(a.large_communities, vec![(64512, 1, 1)]);
    let mut long = route(&[65002, 65003, 65004]);
    assert_eq!(p.apply(&net("10.0.0.0/24"), &mut long), Verdict::Reject);
    let mut other = route(&[65002]);
    assert_eq!(p.apply(&net("10.0.0.0/24"), &mut other), Verdict::Accept);
    assert_eq!(other.local_pref, None, "the rack-A term did not match");
    // Not / Any, prepend, MED and next hop.
    let mut a = route(&[65001]);
    a.communities = vec![9];
    let q = Policy {
        terms: vec![Term {
            name: "x".into(),
            matches: vec![Match::Any(vec![
                Match::Community(1),
                Match::Not(Box::new(Match::Community(2))),
            ])],
            actions: vec![
                Action::Prepend(64512, 2),
                Action::SetMed(5),
                Action::SetNextHop("198.18.0.9".parse().unwrap()),
            ],
            verdict: Some(Verdict::Accept),
        }],
        default: Verdict::Reject,
    };
    assert_eq!(q.apply(&net("10.0.0.0/24"), &mut a), Verdict::Accept);
    assert_eq!(
        a.as_path,
        Some(vec![AsSegment::Sequence(vec![64512, 64512, 65001])])
    );
    assert_eq!(
        (a.med, a.next_hop),
        (Some(5), Some(Ipv4Addr::new(198, 18, 0, 9)))
    );
}

#[test]
fn brindle_export_and_import() {
    let export = Policy::node_export(&[(net("10.244.0.0/16"), 26)]);
    let mut a = route(&[]);
    assert_eq!(
        export.apply(&net("10.244.3.64/26"), &mut a),
        Verdict::Accept,
        "a block"
    );
    assert_eq!(
        export.apply(&net("10.244.3.65/32"), &mut a),
        Verdict::Reject,
        "never the /32s inside"
    );
    assert_eq!(
        export.apply(&net("10.244.0.0/16"), &mut a),
        Verdict::Reject,
        "not the pool itself"
    );
    assert_eq!(export.apply(&net("192.0.2.0/24"), &mut a), Verdict::Reject);
    let import = Policy::accept_pools(&[net("10.244.0.0/16")]);
    assert_eq!(
        import.apply(&net("10.244.3.64/26"), &mut a),
        Verdict::Accept
    );
    assert_eq!(
        import.apply(&net("10.244.3.65/32"), &mut a),
        Verdict::Accept,
        "borrowed /32s are pool routes"
    );
    assert_eq!(import.apply(&net("0.0.0.0/0"), &mut a), Verdict::Reject);
}
