//! The iptables writer (DESIGN §6): one `iptables-restore --noflush` per sync, holding only
//! the chains of ours that differ from what the kernel has; our jumps inserted at the top of
//! the built-in chains; stale chains of ours flushed and deleted; nothing of anyone else's
//! touched. What the kernel has is known from the last read (`iptables-save`) plus what was
//! written since; [`Writer::invalidate`] (the periodic refresh, or a failure) makes the next
//! sync read it again, which is how drift is repaired.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::family::Family;
use crate::proxy::rules::{Chain, Rule, Ruleset, TableRules, CHAIN_PREFIX, TAG};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
}

impl Backend {
    /// `iptables-legacy-save`, `ip6tables-nft-restore`, …
    pub fn tool(self, family: Family, what: &str) -> String {
        let stem = family.iptables();
        match self {
            Backend::Legacy => format!("{stem}-legacy-{what}"),
            Backend::Nft => format!("{stem}-nft-{what}"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("no usable iptables backend: {0}")]
    NoBackend(String),
    #[error("{cmd} did not finish within {} s: killed", .deadline.as_secs())]
    Timeout { cmd: String, deadline: Duration },
}

/// How long one iptables or ipset tool may run: a hung one (a kernel lock held by another
/// program, a stuck module load) is killed and the sync retried, not waited on forever.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the iptables tools, optionally behind a prefix (`ip netns exec NS` in tests), each
/// with a deadline.
#[derive(Debug, Clone)]
pub struct Runner {
    pub prefix: Vec<String>,
    pub deadline: Duration,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            prefix: vec![],
            deadline: TOOL_DEADLINE,
        }
    }
}

/// Writes a tool's standard input.
pub(crate) type Feed<'a> = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'a>;

/// A tool's standard input, written without blocking past `until` (non-blocking, waiting in
/// `poll`): a write that cannot go on by then fails with `TimedOut`.
struct BoundedPipe {
    pipe: std::process::ChildStdin,
    until: Instant,
}

impl BoundedPipe {
    fn new(pipe: std::process::ChildStdin, until: Instant) -> BoundedPipe {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        // Should this fail, the writes block as a plain pipe's would (no bound, no loss).
        let _ = fcntl(&pipe, FcntlArg::F_GETFL).and_then(|f| {
            let flags = OFlag::from_bits_truncate(f) | OFlag::O_NONBLOCK;
            fcntl(&pipe, FcntlArg::F_SETFL(flags))
        });
        BoundedPipe { pipe, until }
    }
}

impl Write for BoundedPipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::os::fd::AsFd;
        loop {
            match self.pipe.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                done => return done,
            }
            let left = self.until.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if ms == 0 {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            let mut fds = [nix::poll::PollFd::new(
                self.pipe.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a tool reads on its standard input.
pub(crate) enum Input<'a> {
    None,
    /// Written on a thread of its own while the tool reads it: a large transaction is
    /// generated into the pipe, never held whole.
    Fed(Feed<'a>),
}

impl Runner {
    /// The network namespace the prefix runs commands in: None for this process's own,
    /// `ip netns exec NAME` → NAME; an error for any other prefix (it cannot be told).
    pub fn netns(&self) -> std::io::Result<Option<&str>> {
        match self.prefix.as_slice() {
            [] => Ok(None),
            [ip, netns, exec, name] if ip == "ip" && netns == "netns" && exec == "exec" => {
                Ok(Some(name))
            }
            other => Err(std::io::Error::other(format!(
                "no network namespace known for the command prefix {other:?}"
            ))),
        }
    }

    pub(crate) fn run(&self, argv: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
        match stdin {
            Some(s) => self.run_shared(argv, Arc::new(s.to_owned())),
            None => self.run_input(argv, Input::None),
        }
    }

    /// [`Runner::run`] with input the caller keeps too (a large transaction is not copied).
    pub(crate) fn run_shared(
        &self,
        argv: &[&str],
        stdin: Arc<String>,
    ) -> Result<String, IptablesError> {
        self.run_input(
            argv,
            Input::Fed(Box::new(move |w| w.write_all(stdin.as_bytes()))),
        )
    }

    /// Runs `argv` with `stdin`; a [`Input::Fed`] input is written while the tool reads it.
    pub(crate) fn run_input(
        &self,
        argv: &[&str],
        stdin: Input<'_>,
    ) -> Result<String, IptablesError> {
        let all: Vec<&str> = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(argv.iter().copied())
            .collect();
        let cmd = argv.join(" ");
        let mut c = Command::new(all[0]);
        c.args(&all[1..])
            .stdin(match stdin {
                Input::None => Stdio::null(),
                Input::Fed(_) => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| IptablesError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        // The pipes are fed and drained by threads of their own, so that a tool that stops
        // reading or writing cannot hold this one past the deadline.
        let until = Instant::now() + self.deadline;
        let pipe = child.stdin.take();
        std::thread::scope(|scope| {
            if let (Input::Fed(feed), Some(pipe)) = (stdin, pipe) {
                // A failed write shows up as the tool's error (or its timeout). The feed
                // gives up at the deadline even when something else holds the pipe open (a
                // child the tool started), so the scope never waits past it.
                scope.spawn(move || {
                    let w = BoundedPipe::new(pipe, until);
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
                    let _ = feed(&mut w).and_then(|()| w.flush());
                });
            }
            self.wait(child, cmd)
        })
    }

    /// Drains the tool's output and waits for it, killing it at the deadline.
    fn wait(&self, mut child: std::process::Child, cmd: String) -> Result<String, IptablesError> {
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(child.stdout.take().map(|o| Box::new(o) as _));
        let err = drain(child.stderr.take().map(|e| Box::new(e) as _));
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if started.elapsed() >= self.deadline => {
                    // Killed by its PID; the pipes close and the threads end.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(IptablesError::Timeout {
                        cmd,
                        deadline: self.deadline,
                    });
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(source) => return Err(IptablesError::Spawn { cmd, source }),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(IptablesError::Failed {
                cmd,
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        }
        // Not copied when it is UTF-8 (a table listing can be a hundred megabytes).
        Ok(String::from_utf8(stdout)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// `auto`: the legacy backend where the kernel has it (its tools run and can read the
    /// nat table), else nft. `legacy` / `nft`: that one, checked.
    /// Whether the iptables FORWARD chain drops by default (Docker sets `-P FORWARD DROP`),
    /// in either backend, and where: forwarded pod traffic would then be dropped there
    /// whatever another table accepts. Only the iptables dataplane, whose accept of allowed
    /// pod traffic is in that same chain, gets it through.
    pub fn forward_policy_drops(&self) -> Option<String> {
        // iptables-nft's chain is nftables' `ip filter FORWARD`; listing it creates nothing.
        if let Ok(text) = self.run(&["nft", "list", "chain", "ip", "filter", "FORWARD"], None) {
            // The chain's own line, not a rule's comment.
            let header = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("type filter hook"));
            if header.is_some_and(|l| l.ends_with("policy drop;")) {
                return Some("iptables-nft's FORWARD chain has policy DROP".into());
            }
        }
        // The legacy filter table, only where it exists already (listing would load it).
        let names = self.run(&["cat", "/proc/net/ip_tables_names"], None);
        if !names.is_ok_and(|n| n.lines().any(|l| l.trim() == "filter")) {
            return None;
        }
        let legacy = self.run(
            &[&Backend::Legacy.tool(Family::V4, "save"), "-t", "filter"],
            None,
        );
        if legacy.is_ok_and(|t| t.lines().any(|l| l.starts_with(":FORWARD DROP"))) {
            return Some("iptables-legacy's FORWARD chain has policy DROP".into());
        }
        None
    }

    pub fn backend(&self, choice: &str) -> Result<Backend, IptablesError> {
        let try_one = |b: Backend| {
            self.run(&[&b.tool(Family::V4, "save"), "-t", "nat"], None)
                .map(|_| b)
        };
        match choice {
            "legacy" => try_one(Backend::Legacy),
            "nft" => try_one(Backend::Nft),
            "auto" => try_one(Backend::Legacy).or_else(|e| {
                try_one(Backend::Nft).map_err(|e2| IptablesError::NoBackend(format!("{e}; {e2}")))
            }),
            other => Err(IptablesError::NoBackend(format!(
                "unknown backend {other:?} (auto, legacy, nft)"
            ))),
        }
    }
}

/// A table as read: every chain, each rule as Some(our hash) or None (someone else's); and
/// the text of our rules in chains that are not ours, to delete them by their spec (a
/// position could be stale, and deleting by position could hit someone else's rule).
#[derive(Debug, Clone, Default)]
pub struct TableState {
    pub chains: HashMap<String, Vec<Option<u64>>>,
    pub jump_texts: HashMap<u64, String>,
}

/// Parses `iptables-save` output into tables.
pub fn parse_save(text: &str) -> HashMap<String, TableState> {
    let mut tables: HashMap<String, TableState> = HashMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            cur = Some(t.trim().to_string());
            tables.entry(t.trim().to_string()).or_default();
            continue;
        }
        let Some(t) = cur.as_ref().and_then(|t| tables.get_mut(t)) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix(':') {
            if let Some(name) = rest.split_whitespace().next() {
                t.chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let mut it = rest.splitn(2, ' ');
            let chain = it.next().unwrap_or_default();
            let body = it.next().unwrap_or_default();
            let h = rule_hash(body);
            if let (Some(h), false) = (h, chain.starts_with(CHAIN_PREFIX)) {
                t.jump_texts.insert(h, body.to_string());
            }
            t.chains.entry(chain.to_string()).or_default().push(h);
        }
    }
    tables
}

/// Packet counts of our rules in `iptables-save -c` output, by rule hash (summed when one
/// rule stands in several places).
pub fn parse_counters(text: &str) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] -A ") else {
            continue;
        };
        let packets = counts.split(':').next().and_then(|p| p.parse::<u64>().ok());
        if let (Some(p), Some(h)) = (packets, rule_hash(rule)) {
            *out.entry(h).or_insert(0) += p;
        }
    }
    out
}

/// Our hash in a rule's comment (`--comment brl:H` or `--comment "brl:H …"`).
fn rule_hash(body: &str) -> Option<u64> {
    let i = body.find("--comment ")? + "--comment ".len();
    let rest = body[i..].strip_prefix('"').unwrap_or(&body[i..]);
    let h = rest.strip_prefix(TAG)?;
    let end = h.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(h.len());
    if end != 16 {
        return None;
    }
    u64::from_str_radix(&h[..end], 16).ok()
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The tables were read from the kernel first.
    pub read: bool,
    pub chains_written: usize,
    pub chains_deleted: usize,
    pub rules_written: usize,
    pub jumps_inserted: usize,
    pub jumps_removed: usize,
    /// Rules of ours in the tables after the sync.
    pub rules_total: usize,
    pub bytes: usize,
    pub restore_time: Duration,
    pub read_time: Duration,
}

pub struct Writer {
    pub backend: Backend,
    /// `iptables` or `ip6tables`, and the ipsets' family.
    pub family: Family,
    runner: Runner,
    known: Option<HashMap<String, TableState>>,
    known_sets: Option<BTreeMap<String, Vec<IpNetwork>>>,
    known_policy_sets: Option<HashMap<String, WrittenSet>>,
    /// The policy set names after the last clean-up of stale ones.
    policy_set_names: Option<BTreeSet<String>>,
    /// The ipsets that exist (listed when unknown: at start, after a failed restore), so a
    /// set is created only when missing: a `create -exist` that differs from the existing
    /// set's size fails, and sets made by an older version have ipset's default size.
    existing_sets: Option<HashSet<String>>,
    /// Keep each sync's `iptables-restore` input in [`Writer::last_input`] (tests and
    /// benchmarks read it). Off, the input is generated straight into the tool's pipe.
    pub keep_input: bool,
    /// With `keep_input`: the input of the last sync that wrote something.
    pub last_input: Arc<String>,
    /// Successful writes so far: a read begun before one is stale ([`Writer::adopt`]).
    generation: u64,
}

impl Writer {
    /// The IPv4 writer.
    pub fn new(backend: Backend, runner: Runner) -> Writer {
        Writer::for_family(backend, Family::V4, runner)
    }

    pub fn for_family(backend: Backend, family: Family, runner: Runner) -> Writer {
        Writer {
            backend,
            family,
            runner,
            known: None,
            known_sets: None,
            known_policy_sets: None,
            policy_set_names: None,
            existing_sets: None,
            keep_input: false,
            last_input: Arc::default(),
            generation: 0,
        }
    }

    /// How many writes this writer has made; a read taken at one generation may be adopted
    /// only while it is still the current one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Takes `tables` (read by [`read_tables`] while this writer was idle, at `generation`)
    /// as what the kernel has, unless something was written since; the ipsets are written
    /// again at the next sync, as after [`Writer::invalidate`]. Returns whether it was taken.
    pub fn adopt(&mut self, tables: HashMap<String, TableState>, generation: u64) -> bool {
        if generation != self.generation {
            return false;
        }
        self.invalidate();
        self.known = Some(tables);
        true
    }

    /// Forget what the kernel has: the next sync reads it again (drift repair).
    pub fn invalidate(&mut self) {
        self.known = None;
        self.known_sets = None;
        self.known_policy_sets = None;
        self.policy_set_names = None;
        self.existing_sets = None;
    }

    /// The ipsets that exist now (listed once, then kept up to date by our own writes).
    fn existing_sets(&mut self) -> Result<HashSet<String>, IptablesError> {
        if let Some(e) = self.existing_sets.take() {
            return Ok(e);
        }
        let listed = self.runner.run(&["ipset", "list", "-n"], None)?;
        Ok(listed.lines().map(|l| l.trim().to_string()).collect())
    }

    /// Runs an `ipset restore` of sets swapped in by [`swap_in`], generated by `feed` into
    /// the pipe (given the sets that exist now); afterwards each of `names` exists (and no
    /// temporary set does).
    fn restore_sets(
        &mut self,
        mut existing: HashSet<String>,
        names: &[String],
        feed: impl FnOnce(&HashSet<String>, &mut dyn Write) -> std::io::Result<()> + Send,
    ) -> Result<(), IptablesError> {
        let have = &existing;
        self.runner.run_input(
            &["ipset", "restore", "-exist"],
            Input::Fed(Box::new(move |w| feed(have, w))),
        )?;
        existing.extend(names.iter().cloned());
        existing.retain(|n| !n.ends_with("-tmp"));
        self.existing_sets = Some(existing);
        Ok(())
    }

    fn read(&self) -> Result<HashMap<String, TableState>, IptablesError> {
        read_tables(self.backend, self.family, &self.runner)
    }

    /// Brings the ipsets to `sets` (name → members), each replaced atomically (a temporary
    /// set filled, then swapped in) when it differs from what was last written.
    pub fn sync_sets(
        &mut self,
        sets: &BTreeMap<String, Vec<IpNetwork>>,
    ) -> Result<bool, IptablesError> {
        if self.known_sets.as_ref() == Some(sets) {
            return Ok(false);
        }
        let existing = match self.existing_sets() {
            Ok(e) => e,
            Err(e) => {
                self.known_sets = None;
                return Err(e);
            }
        };
        let family = self.family;
        let names: Vec<String> = sets.keys().cloned().collect();
        let feed = |existing: &HashSet<String>, w: &mut dyn Write| {
            for (name, nets) in sets {
                swap_in(w, existing, name, "hash:net", family, nets.iter())?;
            }
            Ok(())
        };
        if let Err(e) = self.restore_sets(existing, &names, feed) {
            self.known_sets = None;
            return Err(e);
        }
        self.known_sets = Some(sets.clone());
        self.generation += 1;
        Ok(true)
    }

    /// Brings NetworkPolicy's ipsets ([`crate::policy::SetSpec`]: `hash:net`, with
    /// `nomatch` members for ipBlock excepts, and `hash:ip,port`) to `sets`: each one that
    /// differs from what was last written is filled under a temporary name and swapped in,
    /// all in one `ipset restore`. Returns how many were written. Sets no longer wanted are
    /// left for [`Writer::destroy_stale_policy_sets`], once no rule names them.
    pub fn sync_policy_sets(
        &mut self,
        sets: &[Arc<crate::policy::SetSpec>],
    ) -> Result<usize, IptablesError> {
        let known = self.known_policy_sets.take().unwrap_or_default();
        let existing = self.existing_sets()?;
        // What each wanted set is, and whether it differs from what was last written.
        let mut now: HashMap<String, WrittenSet> = HashMap::with_capacity(sets.len());
        let mut changed: Vec<&crate::policy::SetSpec> = vec![];
        for s in sets {
            let (same, w) = WrittenSet::compare(known.get(&s.name), s);
            if !same {
                changed.push(s);
            }
            now.insert(s.name.clone(), w);
        }
        drop(known);
        // Only the sets that differ, generated into the pipe (at a cluster's size the text
        // is tens of megabytes: never held whole).
        let names: Vec<String> = changed.iter().map(|s| s.name.clone()).collect();
        let written = names.len();
        if written > 0 {
            let family = self.family;
            let feed = |existing: &HashSet<String>, w: &mut dyn Write| {
                for s in changed {
                    let kind = match s.kind {
                        crate::policy::SetKind::Net => "hash:net",
                        crate::policy::SetKind::IpPort => "hash:ip,port",
                    };
                    swap_in(w, existing, &s.name, kind, family, s.members.iter())?;
                }
                Ok(())
            };
            self.restore_sets(existing, &names, feed)?;
            self.generation += 1;
        } else {
            self.existing_sets = Some(existing);
        }
        self.known_policy_sets = Some(now);
        Ok(written)
    }

    /// Destroys NetworkPolicy's ipsets that `sets` no longer has (run after the rules that
    /// named them are gone). A set still in use (a rule of someone else's names it) stays and
    /// is tried again next time. Returns the names destroyed.
    pub fn destroy_stale_policy_sets(
        &mut self,
        sets: &[Arc<crate::policy::SetSpec>],
    ) -> Result<Vec<String>, IptablesError> {
        let names: BTreeSet<&str> = sets.iter().map(|s| s.name.as_str()).collect();
        if self.policy_set_names.as_ref() == Some(&names.iter().map(|n| n.to_string()).collect()) {
            return Ok(vec![]);
        }
        let listed = self.runner.run(&["ipset", "list", "-n"], None)?;
        let mut destroyed = vec![];
        let mut failed = None;
        for name in listed.lines().map(str::trim) {
            let ours = crate::policy::SET_PREFIXES
                .iter()
                .any(|p| name.starts_with(&self.family.set_name(p)));
            if !ours || names.contains(name) {
                continue;
            }
            match self.runner.run(&["ipset", "destroy", name], None) {
                Ok(_) => {
                    if let Some(e) = self.existing_sets.as_mut() {
                        e.remove(name);
                    }
                    destroyed.push(name.to_string())
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            self.policy_set_names = None;
            return Err(e);
        }
        self.policy_set_names = Some(names.iter().map(|n| n.to_string()).collect());
        Ok(destroyed)
    }

    /// Removes every chain, jump and ipset of ours (another dataplane has taken over).
    /// Returns what was removed from the tables.
    pub fn remove_all(&mut self) -> Result<SyncReport, IptablesError> {
        self.invalidate();
        let report = self.sync(&Ruleset::default())?;
        self.invalidate();
        // ipsets are the kernel's, not a backend's: ours are the `brl40…` (`brl60…`) ones.
        let listed = self.runner.run(&["ipset", "list", "-n"], None)?;
        let prefix = self.family.set_name("brl40");
        for name in listed.lines().map(str::trim) {
            if name.starts_with(&prefix) {
                self.runner.run(&["ipset", "destroy", name], None)?;
            }
        }
        Ok(report)
    }

    /// Brings our chains and jumps to `want`, writing only what differs.
    pub fn sync(&mut self, want: &Ruleset) -> Result<SyncReport, IptablesError> {
        let mut report = SyncReport::default();
        if self.known.is_none() {
            let t = Instant::now();
            self.known = Some(self.read()?);
            report.read = true;
            report.read_time = t.elapsed();
        }
        let known = self.known.as_mut().expect("read above");
        let tables = [
            ("raw", &want.raw),
            ("nat", &want.nat),
            ("filter", &want.filter),
        ];
        let mut plans = vec![];
        for (table, rules) in tables {
            let state = known.entry(table.to_string()).or_default();
            report.rules_total += rules.rule_count();
            if let Some(p) = plan(rules, state, &mut report) {
                plans.push((table, p));
            }
        }
        if plans.is_empty() {
            return Ok(report);
        }
        // What changes, and how many bytes say so (the text itself is kept only on request;
        // otherwise it is generated into the tool's pipe, never held whole: at 10,000
        // Services it is tens of MiB).
        let mut first = Tally {
            bytes: 0,
            text: self.keep_input.then(Vec::new),
        };
        for (table, p) in &plans {
            let _ = p.write(table, &mut first);
        }
        // The last input goes before this one is sent: two of them would be twice the peak.
        self.last_input = Arc::default();
        report.bytes = first.bytes;
        let t = Instant::now();
        let restore = self.backend.tool(self.family, "restore");
        let argv = [restore.as_str(), "-w", "5", "--noflush"];
        let kept = first.text.map(|t| {
            Arc::new(
                String::from_utf8(t)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )
        });
        let r = match &kept {
            Some(text) => self.runner.run_shared(&argv, text.clone()),
            None => {
                let plans = &plans;
                let feed = move |w: &mut dyn Write| {
                    for (table, p) in plans {
                        p.write(table, w)?;
                    }
                    Ok(())
                };
                self.runner.run_input(&argv, Input::Fed(Box::new(feed)))
            }
        };
        report.restore_time = t.elapsed();
        if let Err(e) = r {
            self.known = None;
            return Err(e);
        }
        for (table, p) in plans {
            p.apply(known.entry(table.to_string()).or_default());
        }
        self.generation += 1;
        self.last_input = kept.unwrap_or_default();
        Ok(report)
    }
}

/// Counts what a [`Plan`] writes, keeping the text only when asked.
struct Tally {
    bytes: usize,
    text: Option<Vec<u8>>,
}

impl Write for Tally {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len();
        if let Some(t) = &mut self.text {
            t.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The raw, nat and filter tables as `backend` has them (what [`Writer::sync`] reads first
/// after [`Writer::invalidate`]; callable without the writer, for a read off the sync path).
pub fn read_tables(
    backend: Backend,
    family: Family,
    runner: &Runner,
) -> Result<HashMap<String, TableState>, IptablesError> {
    let save = backend.tool(family, "save");
    let mut all = HashMap::new();
    for t in ["raw", "nat", "filter"] {
        let text = runner.run(&[&save, "-t", t], None)?;
        all.extend(parse_save(&text));
    }
    Ok(all)
}

/// The packet counts of our rules in `table`, by rule hash (the kernel's counters since each
/// chain was last written).
pub fn read_counters(
    backend: Backend,
    family: Family,
    runner: &Runner,
    table: &str,
) -> Result<HashMap<u64, u64>, IptablesError> {
    let text = runner.run(&[&backend.tool(family, "save"), "-c", "-t", table], None)?;
    Ok(parse_counters(&text))
}

/// `ipset restore` lines that fill `name` under a temporary name and swap it in whole.
/// How many members one of our ipsets may hold (Calico's default `MaxIpSetSize`): ipset's
/// own default, 65,536, is less than one selector's pods in a large cluster.
pub const SET_MAXELEM: u32 = 1_048_576;

/// What was last written of a NetworkPolicy set: the set itself is not kept (at a cluster's
/// size the sets hold close to a million members, and a re-render would hold them twice),
/// only a weak pointer that finds the very same set again and the digest of its members that
/// tells an equal one from a changed one.
struct WrittenSet {
    set: std::sync::Weak<crate::policy::SetSpec>,
    kind: crate::policy::SetKind,
    digest: [u8; 20],
}

impl WrittenSet {
    /// Whether `s` is what `last` wrote, and the record of `s`.
    fn compare(last: Option<&WrittenSet>, s: &Arc<crate::policy::SetSpec>) -> (bool, WrittenSet) {
        // The weak pointer keeps its allocation: an equal address is this very set.
        if let Some(w) = last.filter(|w| std::ptr::eq(w.set.as_ptr(), Arc::as_ptr(s))) {
            let again = WrittenSet {
                set: Arc::downgrade(s),
                kind: w.kind,
                digest: w.digest,
            };
            return (true, again);
        }
        let w = WrittenSet {
            set: Arc::downgrade(s),
            kind: s.kind,
            digest: s.members.digest(),
        };
        let same = last.is_some_and(|l| l.kind == w.kind && l.digest == w.digest);
        (same, w)
    }
}

/// Appends to an `ipset restore` what replaces set `name`'s members at once: a temporary set
/// filled, then swapped in. Sets are created (at [`SET_MAXELEM`]) only when they do not
/// exist: a set made by an older version keeps its size until the swap gives it the new one.
fn swap_in(
    w: &mut dyn Write,
    existing: &HashSet<String>,
    name: &str,
    kind: &str,
    family: Family,
    members: impl Iterator<Item = impl std::fmt::Display>,
) -> std::io::Result<()> {
    let tmp = format!("{}-tmp", &name[..name.len().min(27)]);
    let f = family.ipset_family();
    if !existing.contains(name) {
        writeln!(w, "create {name} {kind} family {f} maxelem {SET_MAXELEM}")?;
    }
    if existing.contains(&tmp) {
        writeln!(w, "destroy {tmp}")?; // left by a failed run
    }
    writeln!(w, "create {tmp} {kind} family {f} maxelem {SET_MAXELEM}")?;
    for m in members {
        writeln!(w, "add {tmp} {m}")?;
    }
    writeln!(w, "swap {tmp} {name}\ndestroy {tmp}")
}

/// What one table's transaction changes, worked out once: the same plan gives the byte
/// count, the text fed to the tool, and then the state the kernel is in. Changed chains are
/// borrowed from the wanted ruleset, not copied (at 10,000 Services 60,000 chains change at
/// the first sync).
struct Plan<'w> {
    changed: Vec<&'w Chain>,
    /// Chains of ours the ruleset no longer has.
    deleted: Vec<String>,
    /// Built-in chains whose rules (ours among them) change: their contents after.
    builtins: Vec<(String, Vec<Option<u64>>)>,
    /// `-D`/`-I` edits of the built-in chains.
    edits: String,
    jump_texts: Vec<(u64, String)>,
}

impl Plan<'_> {
    fn apply(self, state: &mut TableState) {
        // Grown once to its size: growing by doubling holds the old table and the new one
        // (at the first sync of 10,000 Services, 3 and 6 MiB).
        state
            .chains
            .reserve(self.changed.len() + self.builtins.len());
        for c in self.changed {
            let hashes = c.rules.iter().map(|r| Some(r.hash)).collect();
            state.chains.insert(c.name.clone(), hashes);
        }
        for (c, v) in self.builtins {
            state.chains.insert(c, v);
        }
        for c in self.deleted {
            state.chains.remove(&c);
        }
        state.jump_texts.extend(self.jump_texts);
    }

    /// The transaction for `table`, as `iptables-restore --noflush` reads it.
    fn write(&self, table: &str, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "*{table}")?;
        for name in self.changed.iter().map(|c| &c.name).chain(&self.deleted) {
            writeln!(out, ":{name} - [0:0]")?;
        }
        out.write_all(self.edits.as_bytes())?;
        for c in &self.changed {
            for r in &c.rules {
                writeln!(out, "-A {} {r}", c.name)?;
            }
        }
        for c in &self.deleted {
            writeln!(out, "-X {c}")?;
        }
        out.write_all(b"COMMIT\n")
    }
}

/// The text of one of our jumps, as read or as we wrote it.
fn jump_text(have: &TableState, p: &Plan, h: u64) -> Option<String> {
    have.jump_texts.get(&h).cloned().or_else(|| {
        p.jump_texts
            .iter()
            .find(|(x, _)| *x == h)
            .map(|(_, t)| t.clone())
    })
}

/// The kernel's chain holds exactly these rules of ours, in this order, and nothing else.
fn same(have: Option<&Vec<Option<u64>>>, want: &[Rule]) -> bool {
    have.is_some_and(|h| {
        h.len() == want.len() && h.iter().zip(want).all(|(a, r)| *a == Some(r.hash))
    })
}

/// What brings `have` to `want` in one table, or None when nothing does.
fn plan<'w>(want: &'w TableRules, have: &TableState, report: &mut SyncReport) -> Option<Plan<'w>> {
    let mut p = Plan {
        changed: vec![],
        deleted: vec![],
        builtins: vec![],
        edits: String::new(),
        jump_texts: vec![],
    };
    // The chains to write: their rules go straight from the ruleset into the tool's input
    // (at 10,000 Services the rules are tens of MiB: no copy of them is made on the way).
    for c in &want.chains {
        if same(have.chains.get(&c.name), &c.rules) {
            continue;
        }
        p.changed.push(&**c);
        report.chains_written += 1;
        report.rules_written += c.rules.len();
    }
    let wanted: HashSet<&str> = want.chains.iter().map(|c| c.name.as_str()).collect();
    let mut stale: Vec<&String> = have
        .chains
        .keys()
        .filter(|k| k.starts_with(CHAIN_PREFIX) && !wanted.contains(k.as_str()))
        .collect();
    drop(wanted);
    stale.sort();
    report.chains_deleted += stale.len();
    p.deleted = stale.into_iter().cloned().collect();
    // Built-in chains: ours that are no longer wanted go (deleted by their text as read),
    // missing ones are inserted at the top; the rest of the chain is not ours to touch.
    let mut builtins: Vec<&str> = want.jumps.iter().map(|j| j.chain).collect();
    builtins.extend(
        have.chains
            .keys()
            .filter(|k| !k.starts_with(CHAIN_PREFIX) && k.chars().all(|c| c.is_ascii_uppercase()))
            .map(String::as_str),
    );
    builtins.sort();
    builtins.dedup();
    for b in builtins {
        let mut rules = have.chains.get(b).cloned().unwrap_or_default();
        let ours: Vec<u64> = want
            .jumps
            .iter()
            .filter(|j| j.chain == b)
            .map(|j| j.rule.hash)
            .collect();
        let before = rules.clone();
        for i in (0..rules.len()).rev() {
            let Some(h) = rules[i] else { continue };
            if ours.contains(&h) {
                continue;
            }
            if let Some(text) = have.jump_texts.get(&h) {
                p.edits.push_str(&format!("-D {b} {text}\n"));
                rules.remove(i);
                report.jumps_removed += 1;
            }
        }
        // Ours must stand in the order given (the guard before the policy's accept, the
        // policy before the Services' accepts): when one is missing or they are out of
        // order, all of ours go and are inserted again together, in one restore.
        let present: Vec<u64> = rules
            .iter()
            .flatten()
            .copied()
            .filter(|h| ours.contains(h))
            .collect();
        if present != ours {
            // Where the first of ours stood (the top when none is there): a foreign rule
            // above them stays above.
            let at = rules
                .iter()
                .position(|r| r.is_some_and(|h| ours.contains(&h)))
                .unwrap_or(0);
            for h in present {
                if let Some(text) = jump_text(have, &p, h) {
                    p.edits.push_str(&format!("-D {b} {text}\n"));
                    if let Some(i) = rules.iter().position(|r| *r == Some(h)) {
                        rules.remove(i);
                    }
                    report.jumps_removed += 1;
                }
            }
            for j in want.jumps.iter().filter(|j| j.chain == b).rev() {
                p.edits.push_str(&format!("-I {b} {} {}\n", at + 1, j.rule));
                rules.insert(at, Some(j.rule.hash));
                p.jump_texts.push((j.rule.hash, j.rule.to_string()));
                report.jumps_inserted += 1;
            }
        }
        if rules != before {
            p.builtins.push((b.to_string(), rules));
        }
    }
    if p.changed.is_empty() && p.deleted.is_empty() && p.edits.is_empty() {
        return None;
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tools_run_with_their_input_and_a_hung_one_is_killed_at_the_deadline() {
        let r = Runner::default();
        let big = "x".repeat(1 << 20);
        assert_eq!(r.run(&["cat"], Some(&big)).unwrap().len(), 1 << 20);
        let e = r.run(&["false"], None).unwrap_err();
        assert!(matches!(e, IptablesError::Failed { .. }), "{e}");
        let r = Runner {
            deadline: Duration::from_millis(300),
            ..Default::default()
        };
        let e = r.run(&["sleep", "30"], None).unwrap_err();
        assert!(matches!(e, IptablesError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("sleep 30 did not finish"), "{e}");
        // A tool that never reads its input is killed too.
        let e = r.run(&["sleep", "30"], Some(&big)).unwrap_err();
        assert!(matches!(e, IptablesError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_feed_gives_up_at_the_deadline_when_a_child_of_the_tool_holds_its_input() {
        // The tool starts a child that keeps its standard input open and never reads it,
        // then hangs; killing the tool leaves the child holding the pipe. The feed must still
        // end at the deadline (else this call would wait for the child: past nextest's 5
        // minute limit, a failure).
        let dir = tempfile_dir();
        let pidfile = dir.join("child.pid");
        let script = format!(
            "sleep 400 <&0 & echo $! > {}; exec sleep 30",
            pidfile.display()
        );
        let r = Runner {
            deadline: Duration::from_millis(500),
            ..Default::default()
        };
        let text = Arc::new("x".repeat(4 << 20));
        let e = r.run_shared(&["sh", "-c", &script], text).unwrap_err();
        let child = std::fs::read_to_string(&pidfile).unwrap_or_default();
        if let Ok(pid) = child.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(e, IptablesError::Timeout { .. }), "{e}");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("brl-feed-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        d
    }

    use super::*;

    #[test]
    fn counts_our_rules_by_hash() {
        let save = "*filter\n:BRL-PI-X - [0:0]\n\
            [7:420] -A BRL-PI-X -m comment --comment \"brl:0123456789abcdef x/p rule 0\" -j MARK --set-xmark 0x10000/0x10000\n\
            [3:180] -A BRL-PI-X -m comment --comment \"brl:0123456789abcdef x/p rule 0\" -j MARK --set-xmark 0x10000/0x10000\n\
            [5:300] -A FORWARD -j ACCEPT\nCOMMIT\n";
        let c = parse_counters(save);
        assert_eq!(c.get(&0x0123456789abcdef), Some(&10));
        assert_eq!(c.len(), 1, "foreign rules are not ours: {c:?}");
    }

    #[test]
    fn reads_our_hashes_quoted_or_not_and_marks_foreign_rules() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:BRL-X - [0:0]\n\
            -A PREROUTING -m comment --comment \"brl:0123456789abcdef brindle service portals\" -j BRL-X\n\
            -A PREROUTING -d 10.1.1.1/32 -j DNAT --to-destination 10.2.2.2\n\
            -A BRL-X -m comment --comment brl:fedcba9876543210 -j RETURN\n\
            -A BRL-X -m comment --comment brl:short -j RETURN\nCOMMIT\n";
        let t = &parse_save(save)["nat"];
        assert_eq!(t.chains["PREROUTING"], vec![Some(0x0123456789abcdef), None]);
        assert_eq!(t.chains["BRL-X"], vec![Some(0xfedcba9876543210), None]);
        assert!(t.jump_texts[&0x0123456789abcdef].ends_with("-j BRL-X"));
        assert_eq!(t.jump_texts.len(), 1);
    }
}
