//! Which dataplane programs this node's Services (and NetworkPolicy), chosen once at start
//! (`--dataplane`), and the writers the Services task drives, whichever it is: one per
//! address family (IPv6's once the cluster has an IPv6 pool). The other dataplane's rules
//! are removed after the chosen one's first sync, so a node switched by a restart with the
//! other flag keeps forwarding throughout and ends with one set of rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use brindle_felix_lite::family::Family;
use brindle_felix_lite::iptables::{Backend, IptablesError, Runner, Writer};
use brindle_felix_lite::nft;
use brindle_felix_lite::policy::{Account, PolicyRules, SetSpec};
use brindle_felix_lite::proxy::rules::{self, Ruleset, ServiceRules};
use brindle_felix_lite::proxy::{NodeContext, NodeGuard, ServicePort};
use ipnetwork::IpNetwork;
use tracing::{debug, info};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    Iptables(Backend),
    Nftables,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Iptables(Backend::Legacy) => "iptables (legacy)",
            Dataplane::Iptables(Backend::Nft) => "iptables (nft)",
            Dataplane::Nftables => "nftables",
        }
    }
}

/// `--dataplane` (`iptables`, `nftables`, `auto`) → the dataplane, and why, or why none.
pub fn choose(
    choice: &str,
    iptables_backend: &str,
    runner: &Runner,
) -> Result<(Dataplane, String), ChooseError> {
    let ipt = || -> Result<Dataplane, ChooseError> {
        runner
            .backend(iptables_backend)
            .map(Dataplane::Iptables)
            .map_err(|e| ChooseError::Unusable(e.to_string()))
    };
    let nft_ok = || nft::writer::Writer::new(runner.clone()).check_support();
    match choice {
        "iptables" => Ok((ipt()?, "--dataplane iptables".into())),
        "nftables" => nft_ok()
            .map(|_| (Dataplane::Nftables, "--dataplane nftables".into()))
            .map_err(|e| ChooseError::Unusable(format!("nftables: {e}"))),
        "auto" => match (nft_ok(), runner.forward_policy_drops()) {
            (Ok(()), None) => Ok((
                Dataplane::Nftables,
                "auto: the kernel and nft take every feature used".into(),
            )),
            (Ok(()), Some(drops)) => Ok((
                ipt()?,
                format!(
                    "auto: {drops} (Docker?): pod traffic accepted in a table of our own would \
                     still be dropped there, so the rules go into that chain instead"
                ),
            )),
            (Err(e), _) => Ok((ipt()?, format!("auto: nftables not usable here ({e})"))),
        },
        other => Err(ChooseError::Fatal(format!(
            "unknown --dataplane {other:?} (iptables, nftables, auto)"
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    /// A wrong combination of flags: the agent must not start.
    #[error("{0}")]
    Fatal(String),
    /// No usable dataplane on this host: the node routes pods without Services.
    #[error("{0}")]
    Unusable(String),
}

/// One service port's rules in the chosen dataplane's form (rendered once per change), and
/// the family whose tables they go to.
#[derive(Debug, Clone)]
pub enum PortRules {
    Iptables(Family, ServiceRules),
    Nftables(Family, nft::services::ServiceNft),
}

impl PortRules {
    pub fn family(&self) -> Family {
        match self {
            PortRules::Iptables(f, _) | PortRules::Nftables(f, _) => *f,
        }
    }
}

impl Dataplane {
    pub fn render(self, p: &ServicePort, ctx: &NodeContext) -> PortRules {
        match self {
            Dataplane::Iptables(_) => PortRules::Iptables(p.family, rules::render(p, ctx)),
            Dataplane::Nftables => PortRules::Nftables(p.family, nft::services::render(p, ctx)),
        }
    }
}

/// NetworkPolicy as rendered for the chosen dataplane.
#[derive(Debug, Clone)]
pub enum PolicyOut {
    Iptables(PolicyRules),
    Nftables(nft::policy::PolicyNft),
}

impl Default for PolicyOut {
    fn default() -> Self {
        PolicyOut::Iptables(PolicyRules::default())
    }
}

impl PolicyOut {
    /// Packet counts by rule hash summed per account.
    pub fn count(&self, counters: &HashMap<u64, u64>) -> BTreeMap<Account, u64> {
        match self {
            PolicyOut::Iptables(p) => p.count(counters),
            PolicyOut::Nftables(p) => p.count(counters),
        }
    }
}

/// One value per address family: IPv4's always, IPv6's when the cluster has an IPv6 pool
/// (only then can a pod have an IPv6 address).
#[derive(Debug, Clone, Default)]
pub struct PerFamily<T> {
    pub v4: T,
    pub v6: Option<T>,
}

/// What one sync hands a family's writer.
pub enum Want {
    Iptables {
        ruleset: Ruleset,
        sets: BTreeMap<String, Vec<IpNetwork>>,
        policy_sets: Option<Vec<Arc<SetSpec>>>,
    },
    Nftables(nft::Table),
}

impl Want {
    /// The Services' part of the wanted state of `family` (policy is merged in by the
    /// caller): the fixed chains, the node guard and NAT outgoing, and the service ports of
    /// that family. `sets` are that family's pool and host sets, by their ipset names.
    pub fn assemble<'a>(
        dp: Dataplane,
        family: Family,
        ctx: &NodeContext,
        guard: &NodeGuard,
        sets: &BTreeMap<String, Vec<IpNetwork>>,
        services: bool,
        rendered: impl Iterator<Item = &'a PortRules>,
    ) -> Want {
        let rendered = rendered.filter(|r| r.family() == family);
        match dp {
            Dataplane::Iptables(_) => {
                let ruleset = if services {
                    let r: Vec<&ServiceRules> = rendered
                        .filter_map(|r| match r {
                            PortRules::Iptables(_, x) => Some(x),
                            PortRules::Nftables(..) => None,
                        })
                        .collect();
                    rules::assemble_family(family, ctx, guard, r)
                } else {
                    Ruleset::default()
                };
                Want::Iptables {
                    ruleset,
                    sets: if services {
                        sets.clone()
                    } else {
                        BTreeMap::new()
                    },
                    policy_sets: None,
                }
            }
            Dataplane::Nftables if !services => Want::Nftables(nft::policy::base_table()),
            Dataplane::Nftables => {
                let r: Vec<&nft::services::ServiceNft> = rendered
                    .filter_map(|r| match r {
                        PortRules::Nftables(_, x) => Some(x),
                        PortRules::Iptables(..) => None,
                    })
                    .collect();
                Want::Nftables(nft::services::assemble_family(family, ctx, guard, sets, r))
            }
        }
    }

    /// NetworkPolicy in its place.
    pub fn merge_policy(&mut self, p: &PolicyOut) {
        match (self, p) {
            (
                Want::Iptables {
                    ruleset,
                    policy_sets,
                    ..
                },
                PolicyOut::Iptables(p),
            ) => {
                brindle_felix_lite::policy::merge(ruleset, p);
                *policy_sets = Some(p.sets.clone());
            }
            (Want::Nftables(t), PolicyOut::Nftables(p)) => nft::policy::merge(t, p),
            // Rendered before the dataplane was known: rendered again at the next sync.
            _ => {}
        }
    }
}

/// What a sync did, whichever the dataplane.
#[derive(Debug, Clone, Default)]
pub struct Done {
    pub read: bool,
    pub wrote: bool,
    pub rules_total: usize,
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
    pub elements: usize,
    pub write_time: Duration,
    /// How the change went to the kernel: `iptables-restore`, `nft` or `netlink`.
    pub written_by: &'static str,
    /// The IPv6 part failed (the IPv4 part is in): why.
    pub v6_error: Option<String>,
}

pub enum DpWriter {
    Iptables(Writer),
    Nftables(nft::writer::Writer),
}

impl DpWriter {
    pub fn new(dp: Dataplane, family: Family, runner: Runner) -> DpWriter {
        match dp {
            Dataplane::Iptables(b) => DpWriter::Iptables(Writer::for_family(b, family, runner)),
            Dataplane::Nftables => {
                DpWriter::Nftables(nft::writer::Writer::for_family(family, runner))
            }
        }
    }

    /// Forget what the kernel has: the next sync reads it first.
    pub fn invalidate(&mut self) {
        match self {
            DpWriter::Iptables(w) => w.invalidate(),
            DpWriter::Nftables(w) => w.invalidate(),
        }
    }

    /// A read of the kernel's rules that runs beside this writer (off the sync path), with
    /// the policy counters when `counters`.
    pub fn reader(&self, counters: bool) -> Reader {
        match self {
            DpWriter::Iptables(w) => Reader {
                dp: Dataplane::Iptables(w.backend),
                family: w.family,
                runner: w.runner().clone(),
                generation: w.generation(),
                counters,
            },
            DpWriter::Nftables(w) => Reader {
                dp: Dataplane::Nftables,
                family: w.family,
                runner: w.runner().clone(),
                generation: w.generation(),
                counters,
            },
        }
    }

    /// Takes a read as what the kernel has, unless this writer wrote since it began: the
    /// next sync then writes only what drifted. Returns whether it was taken.
    pub fn adopt(&mut self, read: Read) -> bool {
        match (self, read.state) {
            (DpWriter::Iptables(w), ReadState::Iptables(t)) => w.adopt(t, read.generation),
            (DpWriter::Nftables(w), ReadState::Nftables(k)) => w.adopt(k, read.generation),
            _ => false,
        }
    }

    /// Brings the kernel to `want`.
    pub fn sync(&mut self, want: &Want) -> Result<Done, IptablesError> {
        match (self, want) {
            (
                DpWriter::Iptables(w),
                Want::Iptables {
                    ruleset,
                    sets,
                    policy_sets,
                },
            ) => {
                let psets = policy_sets.as_deref().unwrap_or_default();
                let r = w
                    .sync_sets(sets)
                    .and_then(|_| w.sync_policy_sets(psets))
                    .and_then(|_| w.sync(ruleset));
                // Sets no rule names any more: a failure here harms nothing (tried again at
                // the next change or re-read).
                if r.is_ok() && policy_sets.is_some() {
                    if let Err(e) = w.destroy_stale_policy_sets(psets) {
                        debug!("stale policy sets stay for now: {e}");
                    }
                }
                r.map(|rep| Done {
                    read: rep.read,
                    wrote: rep.chains_written
                        + rep.chains_deleted
                        + rep.jumps_inserted
                        + rep.jumps_removed
                        > 0,
                    rules_total: rep.rules_total,
                    chains_written: rep.chains_written,
                    chains_deleted: rep.chains_deleted,
                    rules_written: rep.rules_written,
                    elements: 0,
                    write_time: rep.restore_time,
                    written_by: "iptables-restore",
                    v6_error: None,
                })
            }
            (DpWriter::Nftables(w), Want::Nftables(t)) => w.sync(t).map(|rep| Done {
                read: rep.read,
                wrote: rep.wrote(),
                rules_total: rep.rules_total,
                chains_written: rep.chains_written,
                chains_deleted: rep.chains_deleted + rep.chains_flushed,
                rules_written: rep.rules_written,
                elements: rep.elements_added + rep.elements_deleted,
                write_time: rep.restore_time,
                written_by: if rep.netlink { "netlink" } else { "nft" },
                v6_error: None,
            }),
            _ => Err(IptablesError::NoBackend(
                "internal: rules rendered for the other dataplane".into(),
            )),
        }
    }

    /// Whether the kernel holds IPv6 rules of this dataplane's (a previous run's). Blocking.
    pub fn v6_in_kernel(dp: Dataplane, runner: &Runner) -> bool {
        match dp {
            // Looking must not load the legacy tables (ip6tables-legacy-save of a table not
            // loaded yet loads it): only the tables this namespace lists are read.
            Dataplane::Iptables(Backend::Legacy) => {
                let listed =
                    std::fs::read_to_string("/proc/net/ip6_tables_names").unwrap_or_default();
                let save = Backend::Legacy.tool(Family::V6, "save");
                listed
                    .lines()
                    .map(str::trim)
                    .filter(|t| ["raw", "nat", "filter"].contains(t))
                    .any(|t| {
                        std::process::Command::new(&save)
                            .args(["-t", t])
                            .output()
                            .is_ok_and(|o| {
                                let text = String::from_utf8_lossy(&o.stdout);
                                brindle_felix_lite::iptables::parse_save(&text)
                                    .values()
                                    .any(|ts| {
                                        ts.chains.keys().any(|c| c.starts_with(rules::CHAIN_PREFIX))
                                    })
                            })
                    })
            }
            Dataplane::Iptables(b) => {
                brindle_felix_lite::iptables::read_tables(b, Family::V6, runner).is_ok_and(|t| {
                    t.values()
                        .any(|ts| ts.chains.keys().any(|c| c.starts_with(rules::CHAIN_PREFIX)))
                })
            }
            Dataplane::Nftables => {
                nft::writer::read_table(runner, Family::V6).is_ok_and(|k| k.exists)
            }
        }
    }

    /// Removes the rules of the dataplane not chosen (left by a run with the other flag).
    /// Blocking; errors are logged, never fatal (the chosen dataplane works regardless).
    pub fn remove_others(dp: Dataplane, runner: &Runner) {
        match dp {
            Dataplane::Nftables => {
                for b in [Backend::Legacy, Backend::Nft] {
                    // A backend whose tools do not run here holds nothing of ours.
                    if runner.backend(b.name()).is_err() {
                        continue;
                    }
                    for f in Family::BOTH {
                        match Writer::for_family(b, f, runner.clone()).remove_all() {
                            Ok(r) if r.chains_deleted + r.jumps_removed > 0 => info!(
                                backend = b.name(),
                                family = f.name(),
                                chains = r.chains_deleted,
                                jumps = r.jumps_removed,
                                "removed the iptables dataplane's rules (nftables took over)"
                            ),
                            Ok(_) => {}
                            // ip6tables missing or IPv6 off: nothing of ours there either.
                            Err(e) => info!(
                                backend = b.name(),
                                family = f.name(),
                                "iptables rules of ours not removed: {e}"
                            ),
                        }
                    }
                }
            }
            Dataplane::Iptables(_) => {
                for f in Family::BOTH {
                    let table = format!("{} brindle", f.nft());
                    match nft::writer::Writer::for_family(f, runner.clone()).remove() {
                        Ok(true) => {
                            info!("removed the nftables dataplane's table {table} (iptables took over)")
                        }
                        Ok(false) => {}
                        // No nft here: there is no table of ours either.
                        Err(IptablesError::Spawn { .. }) => {}
                        Err(e) => info!("table {table} not removed: {e}"),
                    }
                }
            }
        }
    }
}

/// What a [`Reader`] needs, taken from the writer (it runs on another thread meanwhile).
pub struct Reader {
    dp: Dataplane,
    family: Family,
    runner: Runner,
    generation: u64,
    counters: bool,
}

pub enum ReadState {
    Iptables(HashMap<String, brindle_felix_lite::iptables::TableState>),
    Nftables(nft::writer::Known),
}

/// The kernel's rules as read, and the policy counters.
pub struct Read {
    generation: u64,
    state: ReadState,
    pub counters: Option<HashMap<u64, u64>>,
    /// nftables: the iptables FORWARD chain drops by default now (Docker started after
    /// the choice?), and where.
    pub forward_drops: Option<String>,
}

impl Reader {
    /// Reads the rules (blocking: `iptables-save` or `nft -j list`).
    pub fn read(self) -> Result<Read, IptablesError> {
        let (state, counters) = match self.dp {
            Dataplane::Iptables(b) => {
                let f = self.family;
                let t = brindle_felix_lite::iptables::read_tables(b, f, &self.runner)?;
                let c = self
                    .counters
                    .then(|| {
                        brindle_felix_lite::iptables::read_counters(b, f, &self.runner, "filter")
                    })
                    .and_then(|c| {
                        c.inspect_err(|e| debug!("policy counters not read: {e}"))
                            .ok()
                    });
                (ReadState::Iptables(t), c)
            }
            Dataplane::Nftables => {
                let k = nft::writer::read_table(&self.runner, self.family)?;
                let c = self.counters.then(|| k.counters.clone());
                (ReadState::Nftables(k), c)
            }
        };
        let forward_drops = match (self.dp, self.family) {
            (Dataplane::Nftables, Family::V4) => self.runner.forward_policy_drops(),
            _ => None,
        };
        Ok(Read {
            generation: self.generation,
            state,
            forward_drops,
            counters,
        })
    }
}

/// The writers of both families: IPv4's always, IPv6's from the first sync that wants it
/// (and its rules removed if IPv6 goes out of use).
pub struct Writers {
    dp: Dataplane,
    runner: Runner,
    pub v4: DpWriter,
    pub v6: Option<DpWriter>,
}

impl Writers {
    pub fn new(dp: Dataplane, runner: Runner) -> Writers {
        Writers {
            v4: DpWriter::new(dp, Family::V4, runner.clone()),
            v6: None,
            dp,
            runner,
        }
    }

    pub fn invalidate(&mut self) {
        self.v4.invalidate();
        if let Some(w) = &mut self.v6 {
            w.invalidate();
        }
    }

    /// Reads of every family's rules, beside the writers.
    pub fn reader(&self, counters: bool) -> Readers {
        Readers(PerFamily {
            v4: self.v4.reader(counters),
            v6: self.v6.as_ref().map(|w| w.reader(counters)),
        })
    }

    /// [`DpWriter::adopt`] for each family; taken only if every writer takes its read.
    pub fn adopt(&mut self, reads: PerFamily<Read>) -> bool {
        let v4 = self.v4.adopt(reads.v4);
        let v6 = match (&mut self.v6, reads.v6) {
            (Some(w), Some(r)) => w.adopt(r),
            (None, None) => true,
            _ => false,
        };
        v4 && v6
    }

    /// Brings each family's rules to `want`: IPv4 first, then IPv6. An IPv6 failure does
    /// not fail the sync (IPv4 is in): it is returned in [`Done::v6_error`], and the IPv6
    /// tables are closed instead — every packet from or to a pod interface dropped — so no
    /// IPv6 pod traffic passes unguarded and unpoliced until a sync succeeds. Once written,
    /// the IPv6 rules stay managed for the agent's life (IPv6 pods may outlive their pool).
    pub fn sync(
        &mut self,
        want: &PerFamily<Want>,
        workload_prefix: &str,
    ) -> Result<Done, IptablesError> {
        let mut done = self.v4.sync(&want.v4)?;
        let Some(w6) = &want.v6 else {
            return Ok(done);
        };
        let w = self.v6.get_or_insert_with(|| {
            info!("IPv6 in use: programming the IPv6 rules too");
            DpWriter::new(self.dp, Family::V6, self.runner.clone())
        });
        match w.sync(w6) {
            Ok(d6) => done.add(&d6),
            Err(e) => {
                let closed = closed_want(self.dp, workload_prefix);
                let fallback = w.sync(&closed);
                done.v6_error = Some(match fallback {
                    Ok(_) => format!("{e}; the IPv6 tables are closed to pods until it works"),
                    Err(e2) => format!("{e}; closing the IPv6 tables to pods failed too: {e2}"),
                });
                w.invalidate();
            }
        }
        Ok(done)
    }
}

/// A family's tables closed to pods: every packet from or to an interface of
/// `workload_prefix` dropped, nothing else (what an IPv6 sync falls back to when it fails).
fn closed_want(dp: Dataplane, workload_prefix: &str) -> Want {
    let any = format!("{workload_prefix}+");
    let why = "brindle: IPv6 rules could not be written; pods pass nothing over IPv6";
    match dp {
        Dataplane::Iptables(_) => {
            let jump = |chain: &'static str, body: String| rules::Jump {
                chain,
                rule: rules::Rule::new(chain, why, &body),
            };
            let mut ruleset = Ruleset::default();
            ruleset.filter.jumps = vec![
                jump("INPUT", format!("-i {any} -j DROP")),
                jump("FORWARD", format!("-i {any} -j DROP")),
                jump("FORWARD", format!("-o {any} -j DROP")),
            ];
            Want::Iptables {
                ruleset,
                sets: BTreeMap::new(),
                policy_sets: Some(vec![]),
            }
        }
        Dataplane::Nftables => {
            let mut t = nft::policy::base_table();
            let any = format!("\"{workload_prefix}*\"");
            t.push("filter-input", why, &format!("iifname {any} drop"));
            t.push("filter-forward", why, &format!("iifname {any} drop"));
            t.push("filter-forward", why, &format!("oifname {any} drop"));
            Want::Nftables(t)
        }
    }
}

impl Done {
    /// Another family's sync, counted in.
    fn add(&mut self, o: &Done) {
        self.read |= o.read;
        self.wrote |= o.wrote;
        self.rules_total += o.rules_total;
        self.chains_written += o.chains_written;
        self.chains_deleted += o.chains_deleted;
        self.rules_written += o.rules_written;
        self.elements += o.elements;
        self.write_time += o.write_time;
    }
}

/// Reads of each family's rules ([`Writers::reader`]).
pub struct Readers(PerFamily<Reader>);

impl Readers {
    pub fn read(self) -> Result<PerFamily<Read>, IptablesError> {
        Ok(PerFamily {
            v4: self.0.v4.read()?,
            v6: self.0.v6.map(Reader::read).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_felix_lite::proxy::rules::{Chain, Rule};
    use brindle_testsupport::Netns;

    fn runner(ns: &Netns) -> Runner {
        Runner {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.name().into()],
            ..Default::default()
        }
    }

    /// IPv4 wants one harmless rule; IPv6 a chain the tool refuses.
    fn wants(dp: Dataplane) -> PerFamily<Want> {
        match dp {
            Dataplane::Iptables(_) => {
                let ok = |body: &str| {
                    let mut r = Ruleset::default();
                    r.filter.chains = vec![std::sync::Arc::new(Chain {
                        name: "BRL-TEST".into(),
                        rules: vec![Rule::new("BRL-TEST", "", body)],
                    })];
                    Want::Iptables {
                        ruleset: r,
                        sets: BTreeMap::new(),
                        policy_sets: None,
                    }
                };
                PerFamily {
                    v4: ok("-j RETURN"),
                    v6: Some(ok("-m no-such-match --nothing -j RETURN")),
                }
            }
            Dataplane::Nftables => {
                let t = |body: &str| {
                    let mut t = nft::policy::base_table();
                    t.push("filter-forward", "", body);
                    Want::Nftables(t)
                };
                PerFamily {
                    v4: t("meta mark 0x1 return"),
                    v6: Some(t("no-such-keyword 1 return")),
                }
            }
        }
    }

    /// An IPv6 sync the kernel or tool refuses does not fail the sync (IPv4 is written)
    /// and leaves the IPv6 tables closed to pods, not open.
    #[test]
    fn a_refused_ipv6_sync_closes_the_ipv6_tables_to_pods() {
        for (dp, list) in [
            (
                Dataplane::Iptables(Backend::Legacy),
                ["ip6tables-legacy-save", "-t", "filter"].as_slice(),
            ),
            (
                Dataplane::Nftables,
                ["nft", "list", "table", "ip6", "brindle"].as_slice(),
            ),
        ] {
            let ns = Netns::new("brl-dpw");
            let mut w = Writers::new(dp, runner(&ns));
            let done = w.sync(&wants(dp), "brl").expect("IPv4 is written");
            let why = done.v6_error.expect("the IPv6 part failed");
            assert!(why.contains("closed to pods"), "{why}");
            let v6 = ns.ok(list);
            let drops = v6
                .lines()
                .filter(|l| {
                    (l.contains("-i brl+") || l.contains("-o brl+")) && l.ends_with("-j DROP")
                        || l.contains("ifname \"brl*\" drop")
                })
                .count();
            assert_eq!(drops, 3, "{dp:?}: the IPv6 tables are not closed:\n{v6}");
        }
    }
}
