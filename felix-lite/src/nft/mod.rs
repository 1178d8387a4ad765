//! The native nftables dataplane (issue 30): everything felix-lite programs, in one table of
//! our own per family, `ip brindle` and `ip6 brindle` (kube-proxy's and Calico's layout).
//! Nothing of ours is outside them and nothing outside them is touched; removing Brindle's
//! rules is `delete table ip brindle` (and `ip6`).
//!
//! - [`Table`] is the table as wanted: sets and verdict maps with their elements, chains
//!   with their rules. Every rule carries `comment "brl:<hash> …"`, as in iptables, so the
//!   writer compares chains by hashes, never by nft's reformatted text.
//! - [`services`] renders Services (kube-proxy's nftables structure, REFERENCE §B5, from the
//!   same [`crate::proxy::plan::Plan`] as iptables), NAT outgoing and the node guard;
//! - [`policy`] renders NetworkPolicy (Calico's nftables shape, the iptables renderer's
//!   semantics) into the same table.
//! - [`writer`] puts a [`Table`] in the kernel: one transaction per sync, holding only the
//!   elements and chains that differ; a partial sync goes by netlink ([`netlink`], rules
//!   compiled by [`expr`]), the rest through `nft -f`.

pub mod expr;
pub mod netlink;
mod ops;
pub mod policy;
pub mod services;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};

use crate::family::Family;
use crate::proxy::rules::{rule_hash, TAG};

/// Our table's name (in family `ip`, and `ip6` for IPv6).
pub const TABLE: &str = "brindle";

/// A set's or map's declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetType {
    /// The key type, nft's words joined by " . " (`ipv4_addr . inet_proto . inet_service`).
    pub key: &'static str,
    /// A verdict map (elements `key : verdict`).
    pub verdict_map: bool,
    /// `flags interval` (prefixes and ranges).
    pub interval: bool,
    /// `flags timeout` with this default timeout in seconds: the kernel adds and expires
    /// the elements itself (session affinity); the writer never lists or writes them.
    pub timeout: Option<u32>,
}

impl SetType {
    pub const fn addresses() -> SetType {
        SetType::addresses_of(Family::V4)
    }
    /// Prefixes of a family (`flags interval`).
    pub const fn addresses_of(family: Family) -> SetType {
        SetType {
            key: match family {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            },
            verdict_map: false,
            interval: true,
            timeout: None,
        }
    }
    pub const fn verdicts(key: &'static str) -> SetType {
        SetType {
            key,
            verdict_map: true,
            interval: false,
            timeout: None,
        }
    }
    /// What goes between `{ }` in `add set`/`add map`.
    pub fn decl(&self) -> String {
        decl_text(self.key, self.verdict_map, self.interval, self.timeout)
    }
}

/// A declaration's text (also made from what the kernel lists, to compare the two).
pub(crate) fn decl_text(
    key: &str,
    verdict_map: bool,
    interval: bool,
    timeout: Option<u32>,
) -> String {
    let mut s = if verdict_map {
        format!("type {key} : verdict;")
    } else {
        format!("type {key};")
    };
    match (interval, timeout) {
        (true, _) => s.push_str(" flags interval;"),
        (false, Some(t)) => s.push_str(&format!(" flags dynamic,timeout; timeout {t}s;")),
        (false, None) => {}
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub ty: SetType,
    /// Elements in the writer's canonical text ([`writer`] reads the kernel's back into the
    /// same form): `10.0.0.1 . tcp . 80 : goto service-…`, `10.244.0.0/16`.
    pub elements: BTreeSet<String>,
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// The whole table as wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
    /// Map elements left out because an earlier one has the same key (two Services on one
    /// address and port, or one node port): `map: element`. The kernel refuses a duplicate
    /// key, and with it the whole transaction; the first (by Service name) wins, as the
    /// first matching rule does in iptables.
    pub conflicts: Vec<String>,
}

impl Table {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
    /// The chain `name`, made empty (regular) when missing.
    pub fn chain(&mut self, name: &str) -> &mut Chain {
        self.chains.entry(name.to_string()).or_default()
    }
    pub fn set(&mut self, name: &str, ty: SetType) -> &mut Set {
        self.sets.entry(name.to_string()).or_insert_with(|| Set {
            ty,
            elements: BTreeSet::new(),
        })
    }
    /// Adds `element` (`key : verdict`) to verdict map `map` unless another element has its
    /// key ([`Table::conflicts`]).
    pub fn map_element(&mut self, map: &str, element: &str) {
        let Some(set) = self.sets.get_mut(map) else {
            return;
        };
        let key = element.split(" : ").next().unwrap_or(element);
        let taken = set
            .elements
            .range(format!("{key} : ")..)
            .next()
            .is_some_and(|e| e.starts_with(&format!("{key} : ")));
        if taken && !set.elements.contains(element) {
            self.conflicts.push(format!("{map}: {element}"));
        } else {
            set.elements.insert(element.to_string());
        }
    }

    pub fn push(&mut self, chain: &str, comment: &str, body: &str) {
        let r = rule(chain, comment, body);
        self.chain(chain).rules.push(r);
    }
}

/// One rule in nft syntax: its identity hash and its whole text,
/// `<body> comment "brl:<hash> <comment>"` (shared: a clone costs a count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub hash: u64,
    pub text: std::sync::Arc<str>,
}

/// A rule of `chain` in nft syntax, tagged `comment "brl:<hash> <comment>"`.
pub fn rule(chain: &str, comment: &str, body: &str) -> Rule {
    let hash = rule_hash(chain, comment, body);
    let comment = crate::proxy::rules::safe_comment(comment);
    let text = if comment.is_empty() {
        format!("{body} comment \"{TAG}{hash:016x}\"")
    } else {
        format!("{body} comment \"{TAG}{hash:016x} {comment}\"")
    };
    Rule {
        hash,
        text: text.into(),
    }
}

/// Our hash in a rule's comment, if it is one of ours.
pub fn comment_hash(comment: &str) -> Option<u64> {
    let h = comment.strip_prefix(TAG)?;
    let hex = h.get(..16)?;
    if h.len() > 16 && !h[16..].starts_with(' ') {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// kube-proxy's nftables name hash: base32(sha256(s))[:8].
pub fn hash8(s: &str) -> String {
    crate::proxy::rules::hash16(s)[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_carry_their_hash_and_it_reads_back() {
        let r = rule(
            "services",
            "ns/a:http cluster IP",
            "ip daddr 10.0.0.1 accept",
        );
        assert!(r
            .text
            .starts_with("ip daddr 10.0.0.1 accept comment \"brl:"));
        let c = r.text.split('"').nth(1).unwrap();
        assert_eq!(comment_hash(c), Some(r.hash));
        assert_eq!(
            comment_hash("brl:0123456789abcdef"),
            Some(0x0123456789abcdef)
        );
        assert_eq!(comment_hash("brl:0123456789abcdefx"), None);
        assert_eq!(comment_hash("someone else's"), None);
    }

    #[test]
    fn a_comment_cannot_end_its_quotes_or_its_line() {
        let r = rule("c", "x\"; flush ruleset\n add \\", "accept");
        assert_eq!(r.text.lines().count(), 1, "{}", r.text);
        assert_eq!(r.text.matches('"').count(), 2, "{}", r.text);
        assert_eq!(
            r.hash,
            rule_hash("c", "x\"; flush ruleset\n add \\", "accept")
        );
        let i = crate::proxy::rules::Rule::new("C", "a\"\n-A INPUT -j ACCEPT", "-j RETURN");
        let i = i.to_string();
        assert_eq!(i.lines().count(), 1, "{i}");
        assert_eq!(i.matches('"').count(), 2, "{i}");
    }

    #[test]
    fn declarations() {
        assert_eq!(
            SetType::addresses().decl(),
            "type ipv4_addr; flags interval;"
        );
        let mut a = SetType::addresses();
        a.interval = false;
        a.timeout = Some(10800);
        assert_eq!(
            a.decl(),
            "type ipv4_addr; flags dynamic,timeout; timeout 10800s;"
        );
        assert_eq!(
            SetType::verdicts("inet_proto . inet_service").decl(),
            "type inet_proto . inet_service : verdict;"
        );
    }
}
