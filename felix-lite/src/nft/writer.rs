//! Puts a [`Table`] in the kernel. Each sync is one `nft -f -` transaction (atomic: all of
//! it or none of it) holding only what differs from what the kernel has: sets, maps and
//! chains added, map and set elements added and deleted one by one, changed chains flushed
//! and written again. What the kernel has is known from the last read (`nft -j list table`)
//! plus what was written since; [`Writer::invalidate`] makes the next sync read it again,
//! which repairs drift. A chain no longer wanted is flushed at once and deleted in a later
//! transaction, at least [`STALE_DELETE_AFTER`] on (kube-proxy's workaround: kernels before
//! 6.2 refuse to delete a chain in the transaction that removed the last jump to it), with
//! the next sync's changes; if the kernel refuses a deletion, the changes go alone and the
//! deletion is tried again later. Set and map declarations or base chain hooks that
//! differ (a new version of ours) are fixed by deleting and writing the whole table, in the
//! same one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, error, warn};

use super::netlink::Netlink;
use super::ops::Op;
use super::{comment_hash, Hook, SetType, Table, TABLE};
use crate::family::Family;
use crate::iptables::{IptablesError, Runner};

/// How long a flushed chain waits before it is deleted.
pub const STALE_DELETE_AFTER: Duration = Duration::from_secs(1);
/// How long a chain whose deletion was refused waits before it is tried again.
const STALE_RETRY: Duration = Duration::from_secs(60);

/// A set or map as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSet {
    pub decl: String,
    /// None: an element we cannot read back (someone else's kind): rewritten whole.
    pub elements: Option<BTreeSet<String>>,
}

impl KnownSet {
    /// `map` or `set`, as nft's statements name it (`flush set` refuses a map).
    pub fn kind(&self) -> &'static str {
        if self.decl.contains(": verdict") {
            "map"
        } else {
            "set"
        }
    }
}

/// A chain as the kernel has it: its hook and each rule's hash (None: not ours).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownChain {
    pub hook: Option<(String, String, i32)>,
    pub rules: Vec<Option<u64>>,
}

/// Our table as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Known {
    pub exists: bool,
    pub sets: HashMap<String, KnownSet>,
    /// Sorted, as [`Table::chains`]: a sync walks the two side by side.
    pub chains: BTreeMap<String, KnownChain>,
    /// Packets counted by each rule of ours with a `counter`, by rule hash, as read.
    pub counters: HashMap<u64, u64>,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub read: bool,
    /// The whole table was deleted and written again (a declaration or hook differed).
    pub rebuilt: bool,
    pub chains_written: usize,
    pub chains_flushed: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub rules_total: usize,
    pub bytes: usize,
    pub restore_time: Duration,
    pub read_time: Duration,
    /// The transaction went by netlink, not through `nft`.
    pub netlink: bool,
}

impl SyncReport {
    /// Whether anything was written.
    pub fn wrote(&self) -> bool {
        self.bytes > 0 || self.chains_deleted > 0
    }
}

pub struct Writer {
    runner: Runner,
    known: Option<Known>,
    /// Chains and sets flushed because no longer wanted, and since when.
    stale: HashMap<String, Instant>,
    /// The transaction of the last sync that wrote something.
    pub last_input: std::sync::Arc<String>,
    /// Successful transactions so far ([`Writer::adopt`]).
    generation: u64,
    nl: NetlinkState,
    /// `ip brindle` or `ip6 brindle`.
    pub family: Family,
}

fn decl_of(ty: &SetType) -> String {
    ty.decl()
}

fn hook_of(h: &Hook) -> (String, String, i32) {
    (h.kind.to_string(), h.hook.to_string(), h.priority)
}

impl Writer {
    /// The writer of table `ip brindle`.
    pub fn new(runner: Runner) -> Writer {
        Writer::for_family(Family::V4, runner)
    }

    /// The writer of our table of `family`. IPv6's changes all go through `nft` (the
    /// netlink encoder knows IPv4's expressions only).
    pub fn for_family(family: Family, runner: Runner) -> Writer {
        Writer {
            runner,
            known: None,
            stale: HashMap::new(),
            last_input: Default::default(),
            generation: 0,
            nl: match family {
                Family::V4 => NetlinkState::Untried,
                Family::V6 => NetlinkState::Off,
            },
            family,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Takes `known` (read by [`read_table`] while this writer was idle, at `generation`)
    /// as what the kernel has, unless something was written since. Returns whether it was.
    pub fn adopt(&mut self, known: Known, generation: u64) -> bool {
        if generation != self.generation {
            return false;
        }
        self.known = Some(known);
        true
    }

    /// Forget what the kernel has: the next sync reads it again (drift repair).
    pub fn invalidate(&mut self) {
        self.known = None;
    }

    /// Runs `nft` with `args`.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.runner.run(&argv, stdin)
    }

    /// Our table as the kernel has it now.
    pub fn read(&self) -> Result<Known, IptablesError> {
        read_table(&self.runner, self.family)
    }

    /// Whether this kernel and `nft` take everything the dataplane writes: a table using
    /// each feature (concatenated verdict maps, numgen, fib, timeout sets, masquerade,
    /// reject, interface maps, marks) checked by the kernel in a transaction that is not
    /// committed (`nft -c`). Not `log group`: `--log-denied` is off where NFLOG is missing.
    pub fn check_support(&self) -> Result<(), IptablesError> {
        let probe = format!(
            "table ip {TABLE}-probe {{
  map m {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  set a {{ type ipv4_addr; flags dynamic,timeout; timeout 60s; }}
  set p {{ type ipv4_addr; flags interval; }}
  chain e {{ update @a {{ ip saddr }} meta l4proto tcp dnat to 10.0.0.1:80; }}
  chain s {{ numgen random mod 2 == 0 goto e; goto e; }}
  chain r {{ reject; }}
  chain nat {{ type nat hook prerouting priority -100; policy accept;
    ip daddr . meta l4proto . th dport vmap @m; }}
  chain raw {{ type filter hook prerouting priority -300; policy accept;
    iifname \"x*\" fib saddr . iif oif missing drop; }}
  chain post {{ type nat hook postrouting priority 100; policy accept;
    ip saddr @p meta mark & 0x4000 == 0x4000 masquerade fully-random comment \"x\"; }}
  map w {{ type ifname : verdict; }}
  set n {{ type ipv4_addr . inet_proto . inet_service; }}
  chain d {{ iifname vmap @w; counter drop; }}
  chain f {{ type filter hook forward priority -110; policy accept;
    iifname \"x*\" jump d; ct state established,related accept; ct state invalid drop;
    ip daddr . meta l4proto . th dport @n counter meta mark set meta mark | 0x10000;
    sctp dport 80 meta mark & 0x10000 == 0x10000 return; }}
}}
"
        );
        self.nft(&["-c", "-f", "-"], Some(&probe)).map(|_| ())
    }

    /// Deletes our table, if it exists (another dataplane takes over, or uninstall).
    pub fn remove(&mut self) -> Result<bool, IptablesError> {
        self.known = None;
        self.stale.clear();
        let k = self.read()?;
        if !k.exists {
            return Ok(false);
        }
        self.nft(
            &["-f", "-"],
            Some(&format!("delete table {} {TABLE}\n", self.family.nft())),
        )?;
        self.generation += 1;
        Ok(true)
    }

    /// Brings our table to `want`, writing only what differs.
    pub fn sync(&mut self, want: &Table) -> Result<SyncReport, IptablesError> {
        let mut report = SyncReport {
            rules_total: want.rule_count(),
            ..Default::default()
        };
        if self.known.is_none() {
            let t = Instant::now();
            self.known = Some(self.read()?);
            report.read = true;
            report.read_time = t.elapsed();
        }
        let mut known = self.known.take().expect("read above");
        let mut rebuild = false;
        if known.exists && needs_rebuild(want, &known) {
            known = Known::default();
            self.stale.clear();
            report.rebuilt = true;
            rebuild = true;
        }
        let now = Instant::now();
        let stale_before = self.stale.clone();
        let mut ops = vec![];
        if rebuild {
            ops.push(Op::DeleteTable);
        }
        let touched = transaction(want, &known, &mut self.stale, now, &mut ops, &mut report);
        // Chains (and sets) flushed long enough ago go in the same transaction, after
        // everything else.
        let due = self.due(want, &known, now);
        let deletions: Vec<Op> = due
            .iter()
            .map(|name| match known.sets.get(name) {
                Some(s) => Op::Delete {
                    name,
                    kind: s.kind(),
                },
                None => Op::DeleteChain(name),
            })
            .collect();
        if ops.is_empty() && deletions.is_empty() {
            self.known = Some(known);
            return Ok(report);
        }
        let t = Instant::now();
        let changes = ops.len();
        ops.extend(deletions);
        let mut r = self.apply(&ops);
        let mut deleted = r.is_ok();
        if r.is_err() && !due.is_empty() {
            // Maybe only a deletion was refused (someone else's rule names a chain of
            // ours): the changes alone, and the deletions tried again later.
            deleted = false;
            r = if changes == 0 {
                Ok(Applied::default())
            } else {
                self.apply(&ops[..changes])
            };
            for name in &due {
                if let Some(t) = self.stale.get_mut(name) {
                    *t = now + STALE_RETRY;
                }
            }
        }
        drop(ops);
        report.restore_time = t.elapsed();
        let applied_tx = match r {
            Ok(a) => a,
            Err(e) => {
                // The transaction is all or nothing: the kernel has what it had. Read it
                // again next time rather than guess.
                self.stale = stale_before;
                return Err(e);
            }
        };
        report.bytes = applied_tx.text.len();
        report.netlink = applied_tx.netlink;
        let mut known = applied(want, known, &self.stale, touched);
        if deleted {
            for name in due {
                self.stale.remove(&name);
                known.chains.remove(&name);
                known.sets.remove(&name);
                report.chains_deleted += 1;
            }
        }
        self.known = Some(known);
        self.generation += 1;
        self.last_input = std::sync::Arc::new(applied_tx.text);
        Ok(report)
    }

    /// Writes `ops` as one transaction: by netlink when every statement has a message
    /// (a partial sync), else with `nft -f`. A batch the kernel refuses is written again
    /// with `nft`: if `nft` fails too the refusal was real; if `nft` succeeds, our
    /// encoding is wrong somewhere, said once, and every later change goes through `nft`.
    /// A batch whose answer was lost is not written again (it may be committed): the sync
    /// fails and the next one reads the table first.
    fn apply(&mut self, ops: &[Op]) -> Result<Applied, IptablesError> {
        let mut text = String::new();
        for op in ops {
            op.text(&mut text, self.family);
        }
        let mut refused = None;
        if let Some(nl) = self.netlink() {
            let mut batch = nl.batch();
            let mut whole = true;
            for op in ops {
                match op.message() {
                    Some(m) => batch.push(TABLE, &m),
                    None => {
                        whole = false;
                        break;
                    }
                }
            }
            if whole && !batch.is_empty() && batch.len() <= nl.max_batch() {
                match nl.send(batch) {
                    Ok(()) => {
                        return Ok(Applied {
                            text,
                            netlink: true,
                        })
                    }
                    Err(e) if e.nothing_applied() => refused = Some(e),
                    Err(e) => {
                        return Err(IptablesError::Failed {
                            cmd: "nf_tables netlink batch".into(),
                            stderr: e.to_string(),
                        })
                    }
                }
            }
        }
        let text = std::sync::Arc::new(text);
        let r = self.runner.run_shared(&["nft", "-f", "-"], text.clone());
        if let Some(e) = refused {
            match &r {
                Ok(_) => {
                    error!(
                        error = %e,
                        "nftables: the kernel refused a netlink batch that nft wrote as text: \
                         our encoding differs from nft's; every change goes through nft from now on"
                    );
                    self.nl = NetlinkState::Off;
                }
                Err(_) => debug!(error = %e, "nftables: the kernel refused the change (nft too)"),
            }
        }
        r?;
        Ok(Applied {
            text: std::sync::Arc::try_unwrap(text).unwrap_or_else(|t| (*t).clone()),
            netlink: false,
        })
    }

    /// The netlink socket, opened on first use in the runner's network namespace; None
    /// when turned off or it cannot be opened (logged once).
    fn netlink(&mut self) -> Option<&mut Netlink> {
        if let NetlinkState::Untried = self.nl {
            let opened = match self.runner.netns() {
                Ok(None) => Netlink::open(),
                Ok(Some(ns)) => Netlink::open_in(ns),
                Err(e) => Err(e),
            };
            self.nl = match opened {
                Ok(nl) => NetlinkState::Open(nl),
                Err(e) => {
                    warn!(error = %e, "nftables: no netlink socket; every change goes through nft");
                    NetlinkState::Off
                }
            };
        }
        match &mut self.nl {
            NetlinkState::Open(nl) => Some(nl),
            _ => None,
        }
    }

    /// Whether changes may go by netlink (on by default for IPv4); off, every sync runs
    /// `nft`.
    pub fn set_netlink(&mut self, on: bool) {
        self.nl = if on && self.family == Family::V4 {
            NetlinkState::Untried
        } else {
            NetlinkState::Off
        };
    }

    /// What was flushed at least [`STALE_DELETE_AFTER`] ago and is still not wanted.
    fn due(&self, want: &Table, known: &Known, now: Instant) -> Vec<String> {
        self.stale
            .iter()
            .filter(|(name, t)| {
                now >= **t + STALE_DELETE_AFTER
                    && !want.chains.contains_key(*name)
                    && !want.sets.contains_key(*name)
                    && (known.chains.contains_key(*name) || known.sets.contains_key(*name))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// A transaction the kernel took: its text, and whether it went by netlink.
#[derive(Default)]
struct Applied {
    text: String,
    netlink: bool,
}

enum NetlinkState {
    Untried,
    Open(Netlink),
    Off,
}

/// Our table as the kernel has it now (callable without the writer, for a read off the
/// sync path).
pub fn read_table(runner: &Runner, family: Family) -> Result<Known, IptablesError> {
    let fam = family.nft();
    match runner.run(&["nft", "-j", "list", "table", fam, TABLE], None) {
        Ok(text) => parse_list(&text).map_err(|e| IptablesError::Failed {
            cmd: format!("nft -j list table {fam} {TABLE}"),
            stderr: format!("unreadable output: {e}"),
        }),
        Err(IptablesError::Failed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(Known::default())
        }
        Err(e) => Err(e),
    }
}

/// A declaration or hook we want differs from the kernel's. (Compared chain by chain only
/// where either side has a hook: a regular chain has none on both.)
fn needs_rebuild(want: &Table, known: &Known) -> bool {
    let hook_differs = |name: &String, h: Option<&Hook>| {
        known
            .chains
            .get(name)
            .is_some_and(|k| k.hook != h.map(hook_of))
    };
    want.sets
        .iter()
        .any(|(n, s)| known.sets.get(n).is_some_and(|k| k.decl != decl_of(&s.ty)))
        || want
            .chains
            .iter()
            .any(|(n, c)| c.hook.is_some() && hook_differs(n, c.hook.as_ref()))
        || known
            .chains
            .iter()
            .any(|(n, k)| k.hook.is_some() && want.chains.get(n).is_some_and(|c| c.hook.is_none()))
        || known.sets.keys().any(|n| want.chains.contains_key(n))
        || want.sets.keys().any(|n| known.chains.contains_key(n))
}

/// The chains of `want` and `known` side by side, by name (both are sorted).
fn joined<'a>(
    want: &'a BTreeMap<String, super::Chain>,
    known: &'a BTreeMap<String, KnownChain>,
) -> impl Iterator<Item = (&'a String, Option<&'a super::Chain>, Option<&'a KnownChain>)> {
    let mut w = want.iter().peekable();
    let mut k = known.iter().peekable();
    std::iter::from_fn(move || match (w.peek(), k.peek()) {
        (Some((wn, _)), Some((kn, _))) => match wn.cmp(kn) {
            std::cmp::Ordering::Less => w.next().map(|(n, c)| (n, Some(c), None)),
            std::cmp::Ordering::Greater => k.next().map(|(n, c)| (n, None, Some(c))),
            std::cmp::Ordering::Equal => {
                let (n, c) = w.next()?;
                k.next().map(|(_, kc)| (n, Some(c), Some(kc)))
            }
        },
        (Some(_), None) => w.next().map(|(n, c)| (n, Some(c), None)),
        (None, Some(_)) => k.next().map(|(n, c)| (n, None, Some(c))),
        (None, None) => None,
    })
}

/// The chains and sets a transaction writes (the rest of the kernel's table stays as known).
#[derive(Default)]
struct Touched {
    chains: Vec<String>,
    sets: Vec<String>,
}

/// The statements that bring `known` to `want`, in an order the kernel accepts: sets and
/// chains exist before anything names them; changed chains are rewritten before map
/// elements lead to them; elements leading to a stale chain go before it is flushed.
fn transaction<'a>(
    want: &'a Table,
    known: &'a Known,
    stale: &mut HashMap<String, Instant>,
    now: Instant,
    ops: &mut Vec<Op<'a>>,
    report: &mut SyncReport,
) -> Touched {
    let mut touched = Touched::default();
    // A name wanted again is not stale any more (else it would be taken for empty after
    // every write and never flushed when it goes again); one the kernel no longer has,
    // neither.
    stale.retain(|n, _| {
        !want.chains.contains_key(n)
            && !want.sets.contains_key(n)
            && (known.chains.contains_key(n) || known.sets.contains_key(n))
    });
    if !known.exists {
        ops.push(Op::AddTable);
    }
    for (name, s) in &want.sets {
        if !known.sets.contains_key(name) {
            ops.push(Op::AddSet { name, ty: &s.ty });
        }
    }
    // One pass over the chains of both sides: new ones are added before any rule is
    // written (a rule may jump to one), changed ones rewritten, stale ones flushed after the
    // elements that lead to them are gone.
    let mut rewrites = vec![];
    let mut flushes = vec![];
    for (name, c, k) in joined(&want.chains, &known.chains) {
        match (c, k) {
            (Some(c), None) => {
                ops.push(Op::AddChain {
                    name,
                    hook: c.hook.as_ref(),
                });
                rewrites.push((name, c, false));
            }
            (Some(c), Some(k)) => {
                let same = k.rules.len() == c.rules.len()
                    && k.rules
                        .iter()
                        .zip(&c.rules)
                        .all(|(h, r)| *h == Some(r.hash));
                if !same {
                    rewrites.push((name, c, true));
                }
            }
            (None, Some(k)) => {
                if !k.rules.is_empty() {
                    flushes.push(name);
                }
                stale.entry(name.clone()).or_insert(now);
            }
            (None, None) => {}
        }
    }
    for (name, c, flush) in rewrites {
        if flush {
            ops.push(Op::FlushChain(name));
        }
        for rule in &c.rules {
            ops.push(Op::AddRule { chain: name, rule });
        }
        touched.chains.push(name.clone());
        report.chains_written += 1;
        report.rules_written += c.rules.len();
    }
    for (name, s) in &want.sets {
        if !known.sets.contains_key(name) {
            touched.sets.push(name.clone());
        }
        if s.ty.timeout.is_some() {
            continue; // the kernel's own elements
        }
        let have = known.sets.get(name).and_then(|k| k.elements.as_ref());
        let (add, del): (Vec<&String>, Vec<&String>) = match have {
            Some(have) => (
                s.elements.difference(have).collect(),
                have.difference(&s.elements).collect(),
            ),
            None => {
                if let Some(k) = known.sets.get(name) {
                    ops.push(Op::Flush {
                        name,
                        kind: k.kind(),
                    });
                }
                (s.elements.iter().collect(), vec![])
            }
        };
        if (have.is_none() || !add.is_empty() || !del.is_empty()) && known.sets.contains_key(name) {
            touched.sets.push(name.clone());
        }
        report.elements_added += add.len();
        report.elements_deleted += del.len();
        let ty = &s.ty;
        if !del.is_empty() {
            ops.push(Op::Elements {
                add: false,
                set: name,
                ty,
                items: del,
            });
        }
        if !add.is_empty() {
            ops.push(Op::Elements {
                add: true,
                set: name,
                ty,
                items: add,
            });
        }
    }
    for name in flushes {
        ops.push(Op::FlushChain(name));
        report.chains_flushed += 1;
    }
    for (name, k) in &known.sets {
        if want.sets.contains_key(name) {
            continue;
        }
        if k.elements.as_ref().is_none_or(|e| !e.is_empty()) {
            ops.push(Op::Flush {
                name,
                kind: k.kind(),
            });
        }
        stale.entry(name.clone()).or_insert(now);
    }
    touched
}

/// What the kernel has after a transaction made from `known` and `want` succeeded.
fn applied(
    want: &Table,
    mut known: Known,
    stale: &HashMap<String, Instant>,
    touched: Touched,
) -> Known {
    known.exists = true;
    for (name, c) in touched
        .chains
        .iter()
        .filter_map(|n| Some((n, want.chains.get(n)?)))
    {
        known.chains.insert(
            name.clone(),
            KnownChain {
                hook: c.hook.as_ref().map(hook_of),
                rules: c.rules.iter().map(|r| Some(r.hash)).collect(),
            },
        );
    }
    for (name, s) in touched
        .sets
        .iter()
        .filter_map(|n| Some((n, want.sets.get(n)?)))
    {
        let elements = (s.ty.timeout.is_none()).then(|| s.elements.clone());
        known.sets.insert(
            name.clone(),
            KnownSet {
                decl: s.ty.decl(),
                elements,
            },
        );
    }
    for name in stale.keys() {
        if let Some(c) = known.chains.get_mut(name) {
            c.rules.clear();
        }
        if let Some(s) = known.sets.get_mut(name) {
            s.elements = Some(BTreeSet::new());
        }
    }
    known
}

#[derive(Deserialize)]
struct ListDoc {
    nftables: Vec<ListItem>,
}

/// One object of `nft -j list table`; the rest (metainfo, table) is ignored.
#[derive(Deserialize)]
struct ListItem {
    set: Option<JSet>,
    map: Option<JSet>,
    chain: Option<JChain>,
    rule: Option<JRule>,
    table: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct JSet {
    name: String,
    #[serde(rename = "type")]
    ty: Value,
    map: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    timeout: Option<u64>,
    elem: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct JChain {
    name: String,
    #[serde(rename = "type")]
    ty: Option<String>,
    hook: Option<String>,
    prio: Option<i32>,
}

#[derive(Deserialize)]
struct JRule {
    chain: String,
    comment: Option<String>,
    #[serde(default)]
    expr: Vec<JExpr>,
}

/// One statement of a rule: only a counter's packets are read, the rest skipped.
#[derive(Deserialize)]
struct JExpr {
    counter: Option<JCounter>,
}

#[derive(Deserialize)]
struct JCounter {
    packets: u64,
}

/// `nft -j list table` output → [`Known`].
pub fn parse_list(text: &str) -> Result<Known, serde_json::Error> {
    let doc: ListDoc = serde_json::from_str(text)?;
    let mut k = Known::default();
    for item in doc.nftables {
        if item.table.is_some() {
            k.exists = true;
        }
        if let Some(s) = item.set.or(item.map) {
            let key = match &s.ty {
                Value::String(t) => t.clone(),
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(" . "),
                _ => "?".into(),
            };
            let interval = s.flags.iter().any(|f| f == "interval");
            let timeout = s.timeout.and_then(|t| u32::try_from(t).ok());
            let decl =
                super::decl_text(&key, s.map.as_deref() == Some("verdict"), interval, timeout);
            let elements = match s.elem {
                None => Some(BTreeSet::new()),
                Some(list) => list.iter().map(element_text).collect(),
            };
            k.sets.insert(s.name, KnownSet { decl, elements });
        }
        if let Some(c) = item.chain {
            let hook = match (c.ty, c.hook, c.prio) {
                (Some(t), Some(h), Some(p)) => Some((t, h, p)),
                _ => None,
            };
            k.chains.entry(c.name).or_default().hook = hook;
        }
        if let Some(r) = item.rule {
            let h = r.comment.as_deref().and_then(comment_hash);
            if let Some(h) = h {
                let packets: u64 = r
                    .expr
                    .iter()
                    .filter_map(|e| e.counter.as_ref())
                    .map(|c| c.packets)
                    .sum();
                if r.expr.iter().any(|e| e.counter.is_some()) {
                    *k.counters.entry(h).or_insert(0) += packets;
                }
            }
            k.chains.entry(r.chain).or_default().rules.push(h);
        }
    }
    Ok(k)
}

/// One element of `nft -j` output in the canonical text of [`super::Set::elements`]; None
/// for a form we never write.
pub fn element_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(kv) if kv.len() == 2 => {
            format!("{} : {}", element_text(&kv[0])?, element_text(&kv[1])?)
        }
        Value::Object(o) if o.len() == 1 => {
            let (k, v) = o.iter().next()?;
            match (k.as_str(), v) {
                ("concat", Value::Array(parts)) => parts
                    .iter()
                    .map(element_text)
                    .collect::<Option<Vec<_>>>()?
                    .join(" . "),
                ("prefix", p) => {
                    let addr = p.get("addr")?.as_str()?;
                    // A host prefix is written as a bare address.
                    match (p.get("len")?.as_u64()?, addr.contains(':')) {
                        (32, false) | (128, true) => addr.to_string(),
                        (len, _) => format!("{addr}/{len}"),
                    }
                }
                ("range", Value::Array(ab)) if ab.len() == 2 => {
                    format!("{}-{}", element_text(&ab[0])?, element_text(&ab[1])?)
                }
                ("elem", e) => element_text(e.get("val")?)?,
                ("goto" | "jump", t) => format!("{k} {}", t.get("target")?.as_str()?),
                ("drop" | "accept" | "return" | "continue", Value::Null) => k.clone(),
                _ => return None,
            }
        }
        _ => return None,
    })
}
