//! One statement of a sync's transaction, written either as `nft -f` input or as a netlink
//! message ([`super::netlink`]); the writer decides which way the whole transaction goes.

use std::fmt::Write as _;

use super::expr::{compile, element, split_comment};
use super::netlink::Msg;
use super::Rule;
use super::{Hook, SetType, TABLE};
use crate::family::Family;

/// Elements per `add element` / `delete element` statement.
const ELEMENTS_PER_LINE: usize = 1000;

pub enum Op<'a> {
    AddTable,
    DeleteTable,
    AddSet {
        name: &'a str,
        ty: &'a SetType,
    },
    AddChain {
        name: &'a str,
        hook: Option<&'a Hook>,
    },
    FlushChain(&'a str),
    AddRule {
        chain: &'a str,
        rule: &'a Rule,
    },
    Elements {
        add: bool,
        set: &'a str,
        ty: &'a SetType,
        items: Vec<&'a String>,
    },
    /// All elements of a set (`kind` "set") or map ("map": `flush set` refuses one).
    Flush {
        name: &'a str,
        kind: &'static str,
    },
    DeleteChain(&'a str),
    Delete {
        name: &'a str,
        kind: &'static str,
    },
}

impl Op<'_> {
    /// The statement as `nft -f` input (one or more lines) for the table of `family`.
    pub fn text(&self, tx: &mut String, family: Family) {
        let fam = family.nft();
        let _ = match self {
            Op::AddTable => writeln!(tx, "add table {fam} {TABLE}"),
            Op::DeleteTable => writeln!(tx, "delete table {fam} {TABLE}"),
            Op::AddSet { name, ty } => {
                let kind = if ty.verdict_map { "map" } else { "set" };
                writeln!(tx, "add {kind} {fam} {TABLE} {name} {{ {} }}", ty.decl())
            }
            Op::AddChain {
                name,
                hook: Some(h),
            } => writeln!(
                tx,
                "add chain {fam} {TABLE} {name} {{ type {} hook {} priority {}; policy accept; }}",
                h.kind, h.hook, h.priority
            ),
            Op::AddChain { name, hook: None } => writeln!(tx, "add chain {fam} {TABLE} {name}"),
            Op::FlushChain(name) => writeln!(tx, "flush chain {fam} {TABLE} {name}"),
            Op::AddRule { chain, rule } => {
                writeln!(tx, "add rule {fam} {TABLE} {chain} {}", rule.text)
            }
            Op::Elements {
                add, set, items, ..
            } => {
                let verb = if *add { "add" } else { "delete" };
                for chunk in items.chunks(ELEMENTS_PER_LINE) {
                    let list: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
                    let _ = writeln!(
                        tx,
                        "{verb} element {fam} {TABLE} {set} {{ {} }}",
                        list.join(", ")
                    );
                }
                Ok(())
            }
            Op::Flush { name, kind } => writeln!(tx, "flush {kind} {fam} {TABLE} {name}"),
            Op::DeleteChain(name) => writeln!(tx, "delete chain {fam} {TABLE} {name}"),
            Op::Delete { name, kind } => writeln!(tx, "delete {kind} {fam} {TABLE} {name}"),
        };
    }

    /// The statement as a netlink message, or None when this one goes through `nft` (a new
    /// table, set or base chain; an interval or timeout set's elements; a rule in a form
    /// [`super::expr`] does not know).
    pub fn message(&self) -> Option<Msg<'_>> {
        Some(match self {
            Op::AddTable | Op::DeleteTable | Op::AddSet { .. } => return None,
            Op::AddChain { hook: Some(_), .. } => return None,
            Op::AddChain { name, hook: None } => Msg::AddChain(name),
            Op::FlushChain(name) => Msg::FlushChain(name),
            Op::AddRule { chain, rule } => {
                let (body, comment) = split_comment(&rule.text);
                // nft's own limit (and the one-byte length of the comment's TLV).
                if comment.len() > 128 {
                    return None;
                }
                Msg::AddRule {
                    chain,
                    exprs: compile(body)?,
                    comment,
                }
            }
            Op::Elements {
                add,
                set,
                ty,
                items,
            } => {
                if ty.interval || ty.timeout.is_some() {
                    return None;
                }
                let items = items
                    .iter()
                    .map(|e| {
                        let (k, d) = element(ty.key, e)?;
                        // A set's element has no data; a map's has a verdict.
                        (d.is_some() == ty.verdict_map).then_some((k, d))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Msg::Elements {
                    add: *add,
                    set,
                    items,
                }
            }
            Op::Flush { name, .. } => Msg::FlushSet(name),
            Op::DeleteChain(name) => Msg::DeleteChain(name),
            Op::Delete { name, .. } => Msg::DeleteSet(name),
        })
    }
}
