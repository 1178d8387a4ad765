//! `brindle-bgpd`'s configuration file (TOML). Every error names the file, the key and the
//! reason: `bgpd.toml: peer[1].asn: 0 is reserved (RFC 7607)`.
//!
//! ```toml
//! local_as = 64512
//! router_id = "198.18.0.1"
//! listen = "0.0.0.0:179"            # or "none"
//! control_socket = "/run/brindle/bgpd.sock"
//!
//! [graceful_restart]                 # on by default
//! restart_time = 120
//!
//! [kernel]                           # off unless present
//! metric = 32
//! encap = [{ prefix = "10.244.0.0/16", mode = "ipip" }]
//!
//! [[peer]]
//! address = "198.18.0.2"
//! asn = 65001
//! password = "secret"
//! import = { default = "accept", term = [{ prefix = ["10.0.0.0/8 le 32"], action = "accept" }] }
//!
//! [[originate]]
//! prefix = "10.244.1.0/26"
//! communities = ["65000:100"]
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::policy::{Action, Match, Policy, PrefixEntry, Term, Verdict};
use crate::rails::Rails;
use crate::speaker::{
    Encap, GracefulRestart, KernelConfig, Origination, PeerConfig, SpeakerConfig,
};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// The daemon's whole configuration, checked.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub speaker: SpeakerConfig,
    pub peers: Vec<PeerConfig>,
    pub originate: Vec<Origination>,
    pub control_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    local_as: u32,
    router_id: Ipv4Addr,
    #[serde(default = "default_listen")]
    listen: String,
    cluster_id: Option<Ipv4Addr>,
    next_hop_v4: Option<Ipv4Addr>,
    next_hop_v6: Option<Ipv6Addr>,
    control_socket: Option<String>,
    #[serde(default)]
    graceful_restart: GrFile,
    kernel: Option<KernelFile>,
    #[serde(default)]
    peer: Vec<PeerFile>,
    #[serde(default)]
    originate: Vec<OriginFile>,
    /// Prefixes no learned route may equal, fall inside or cover (a default route aside).
    #[serde(default)]
    protect: Vec<String>,
}

fn default_listen() -> String {
    "[::]:179".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_restart_time")]
    restart_time: u16,
    #[serde(default = "default_stale_time")]
    stale_time: u64,
}

impl Default for GrFile {
    fn default() -> Self {
        GrFile {
            enabled: true,
            restart_time: default_restart_time(),
            stale_time: default_stale_time(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_restart_time() -> u16 {
    120
}
fn default_stale_time() -> u64 {
    360
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_metric")]
    metric: u32,
    /// Seconds between re-reads of the table (our routes repaired).
    #[serde(default = "default_rescan")]
    rescan: u64,
    #[serde(default)]
    encap: Vec<EncapFile>,
}

fn default_metric() -> u32 {
    32
}
fn default_rescan() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncapFile {
    prefix: String,
    mode: Encap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    address: IpAddr,
    asn: u32,
    #[serde(default = "default_port")]
    port: u16,
    password: Option<String>,
    #[serde(default)]
    passive: bool,
    #[serde(default)]
    rr_client: bool,
    #[serde(default = "default_hold")]
    hold_time: u16,
    #[serde(default = "default_retry")]
    connect_retry: u64,
    source: Option<IpAddr>,
    multihop: Option<u8>,
    /// GTSM (RFC 5082): hops to the peer (1: directly connected).
    ttl_security: Option<u8>,
    #[serde(default = "yes")]
    graceful_restart: bool,
    #[serde(default)]
    next_hop_self: bool,
    families: Option<Vec<String>>,
    import: Option<PolicyFile>,
    export: Option<PolicyFile>,
    /// Shown as the peer's type by `brindlectl node status` (default `global`).
    peer_type: Option<String>,
    /// The BGP identifier the peer must present.
    router_id: Option<Ipv4Addr>,
    /// Cease 6/1 past this many prefixes received.
    max_prefixes: Option<u32>,
}

fn default_port() -> u16 {
    179
}
fn default_hold() -> u16 {
    90
}
fn default_retry() -> u64 {
    5
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "accept")]
    default: String,
    #[serde(default)]
    term: Vec<TermFile>,
}

fn accept() -> String {
    "accept".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TermFile {
    name: Option<String>,
    /// "10.0.0.0/8", "10.0.0.0/8 le 32", "10.0.0.0/8 ge 24 le 26"
    #[serde(default)]
    prefix: Vec<String>,
    community: Option<String>,
    large_community: Option<String>,
    set_local_pref: Option<u32>,
    set_med: Option<u32>,
    set_next_hop: Option<IpAddr>,
    #[serde(default)]
    add_community: Vec<String>,
    #[serde(default)]
    add_large_community: Vec<String>,
    /// "accept", "reject", or absent (go on to the next term)
    action: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginFile {
    prefix: String,
    #[serde(default)]
    communities: Vec<String>,
    #[serde(default)]
    large_communities: Vec<String>,
    med: Option<u32>,
    local_pref: Option<u32>,
    #[serde(default)]
    blackhole: bool,
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

fn check_asn(c: &Ctx, key: &str, asn: u32) -> Result<(), ConfigError> {
    match asn {
        0 => Err(c.err(key, "0 is reserved (RFC 7607)")),
        23456 => Err(c.err(key, "23456 is AS_TRANS, not a real AS (RFC 6793)")),
        _ => Ok(()),
    }
}

fn prefix(c: &Ctx, key: &str, s: &str) -> Result<IpNetwork, ConfigError> {
    let n: IpNetwork = s
        .parse()
        .map_err(|e| c.err(key, format!("{s:?} is not a prefix: {e}")))?;
    if n.network() != n.ip() {
        return Err(c.err(
            key,
            format!(
                "{s} has host bits set (did you mean {}/{}?)",
                n.network(),
                n.prefix()
            ),
        ));
    }
    Ok(n)
}

/// "65000:100" or a well-known name.
fn community(c: &Ctx, key: &str, s: &str) -> Result<u32, ConfigError> {
    use crate::codec::community::*;
    match s {
        "no-export" => return Ok(NO_EXPORT),
        "no-advertise" => return Ok(NO_ADVERTISE),
        _ => {}
    }
    let bad = || {
        c.err(
            key,
            format!("{s:?} is not a community (\"asn:value\", 16 bits each)"),
        )
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    Ok((u32::from(a) << 16) | u32::from(b))
}

fn large_community(c: &Ctx, key: &str, s: &str) -> Result<(u32, u32, u32), ConfigError> {
    let bad = || {
        c.err(
            key,
            format!("{s:?} is not a large community (\"a:b:c\", 32 bits each)"),
        )
    };
    let v: Vec<u32> = s
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [a, b, d] => Ok((a, b, d)),
        _ => Err(bad()),
    }
}

fn prefix_entry(c: &Ctx, key: &str, s: &str) -> Result<PrefixEntry, ConfigError> {
    let mut words = s.split_whitespace();
    let p = prefix(c, key, words.next().unwrap_or(""))?;
    let max = if p.is_ipv4() { 32 } else { 128 };
    let mut e = PrefixEntry::exact(p);
    while let Some(w) = words.next() {
        let n: u8 = words
            .next()
            .and_then(|x| x.parse().ok())
            .filter(|n| *n >= p.prefix() && *n <= max)
            .ok_or_else(|| {
                c.err(
                    key,
                    format!("in {s:?}: {w} needs a length from {} to {max}", p.prefix()),
                )
            })?;
        match w {
            "ge" => e.ge = Some(n),
            "le" => e.le = Some(n),
            _ => return Err(c.err(key, format!("in {s:?}: expected ge or le, found {w:?}"))),
        }
    }
    if let (Some(ge), Some(le)) = (e.ge, e.le) {
        if ge > le {
            return Err(c.err(key, format!("in {s:?}: ge {ge} is more than le {le}")));
        }
    }
    Ok(e)
}

fn verdict(c: &Ctx, key: &str, s: &str) -> Result<Verdict, ConfigError> {
    match s {
        "accept" => Ok(Verdict::Accept),
        "reject" => Ok(Verdict::Reject),
        o => Err(c.err(key, format!("{o:?}: expected \"accept\" or \"reject\""))),
    }
}

fn policy(c: &Ctx, key: &str, p: Option<PolicyFile>) -> Result<Policy, ConfigError> {
    let Some(p) = p else {
        return Ok(Policy::accept_all());
    };
    let mut terms = vec![];
    for (i, t) in p.term.into_iter().enumerate() {
        let k = format!("{key}.term[{i}]");
        let mut matches = vec![];
        if !t.prefix.is_empty() {
            let list = t
                .prefix
                .iter()
                .map(|s| prefix_entry(c, &format!("{k}.prefix"), s))
                .collect::<Result<_, _>>()?;
            matches.push(Match::Prefix(list));
        }
        if let Some(s) = &t.community {
            matches.push(Match::Community(community(
                c,
                &format!("{k}.community"),
                s,
            )?));
        }
        if let Some(s) = &t.large_community {
            let kk = format!("{k}.large_community");
            matches.push(Match::LargeCommunity(large_community(c, &kk, s)?));
        }
        let mut actions = vec![];
        if let Some(v) = t.set_local_pref {
            actions.push(Action::SetLocalPref(v));
        }
        if let Some(v) = t.set_med {
            actions.push(Action::SetMed(v));
        }
        if let Some(v) = t.set_next_hop {
            actions.push(Action::SetNextHop(v));
        }
        for s in &t.add_community {
            let v = community(c, &format!("{k}.add_community"), s)?;
            actions.push(Action::AddCommunity(v));
        }
        for s in &t.add_large_community {
            let v = large_community(c, &format!("{k}.add_large_community"), s)?;
            actions.push(Action::AddLargeCommunity(v));
        }
        let verdict = match &t.action {
            Some(a) => Some(verdict(c, &format!("{k}.action"), a)?),
            None => None,
        };
        terms.push(Term {
            name: t.name.unwrap_or_else(|| format!("term{i}")),
            matches,
            actions,
            verdict,
        });
    }
    Ok(Policy {
        terms,
        default: verdict(c, &format!("{key}.default"), &p.default)?,
    })
}

fn peer(c: &Ctx, i: usize, p: PeerFile, local_as: u32) -> Result<PeerConfig, ConfigError> {
    let k = |f: &str| format!("peer[{i}].{f}");
    check_asn(c, &k("asn"), p.asn)?;
    if p.address.is_unspecified() || p.address.is_multicast() {
        return Err(c.err(k("address"), format!("{} cannot be a peer", p.address)));
    }
    if p.port == 0 {
        return Err(c.err(k("port"), "0 is not a port"));
    }
    if p.hold_time == 1 || p.hold_time == 2 {
        return Err(c.err(
            k("hold_time"),
            "must be 0 or at least 3 seconds (RFC 4271 §4.2)",
        ));
    }
    if let Some(pw) = &p.password {
        if pw.is_empty() || pw.len() > crate::speaker::MD5_MAX_KEY_LEN {
            return Err(c.err(
                k("password"),
                format!(
                    "must be 1 to {} bytes (Linux TCP_MD5SIG)",
                    crate::speaker::MD5_MAX_KEY_LEN
                ),
            ));
        }
    }
    if p.multihop == Some(0) {
        return Err(c.err(k("multihop"), "a TTL of 0 reaches nobody"));
    }
    if p.multihop.is_some() && p.asn == local_as {
        return Err(c.err(
            k("multihop"),
            "only for eBGP peers (iBGP is multihop already)",
        ));
    }
    if p.ttl_security == Some(0) {
        return Err(c.err(
            k("ttl_security"),
            "hops to the peer: 1 for a directly connected one",
        ));
    }
    if p.ttl_security.is_some() && p.multihop.is_some() {
        return Err(c.err(
            k("ttl_security"),
            "replaces multihop (TTL 255 out; the hops set the least TTL accepted): give one",
        ));
    }
    if p.rr_client && p.asn != local_as {
        return Err(c.err(
            k("rr_client"),
            format!(
                "route-reflector clients are iBGP: asn {} is not local_as {local_as}",
                p.asn
            ),
        ));
    }
    if let Some(src) = p.source {
        if src.is_ipv4() != p.address.is_ipv4() {
            return Err(c.err(k("source"), "must be of the same family as address"));
        }
    }
    let (mut ipv4, mut ipv6) = (true, true);
    if let Some(f) = &p.families {
        ipv4 = false;
        ipv6 = false;
        for x in f {
            match x.as_str() {
                "ipv4" => ipv4 = true,
                "ipv6" => ipv6 = true,
                o => {
                    return Err(c.err(
                        k("families"),
                        format!("{o:?}: expected \"ipv4\" or \"ipv6\""),
                    ))
                }
            }
        }
        if !ipv4 && !ipv6 {
            return Err(c.err(k("families"), "needs at least one family"));
        }
    }
    Ok(PeerConfig {
        addr: p.address,
        port: p.port,
        asn: p.asn,
        password: p.password,
        passive: p.passive,
        rr_client: p.rr_client,
        hold_time: p.hold_time,
        connect_retry: Duration::from_secs(p.connect_retry.max(1)),
        source: p.source,
        multihop: p.multihop,
        ttl_security: p.ttl_security,
        graceful_restart: p.graceful_restart,
        next_hop_self: p.next_hop_self,
        ipv4,
        ipv6,
        import: policy(c, &k("import"), p.import)?,
        export: policy(c, &k("export"), p.export)?,
        peer_type: p.peer_type,
        member: false,
        router_id: p.router_id,
        max_prefixes: p.max_prefixes,
    })
}

/// Parses and checks a configuration.
pub fn parse(file: &str, text: &str) -> Result<DaemonConfig, ConfigError> {
    let c = Ctx { file };
    let f: File = toml::from_str(text).map_err(|e| {
        let key = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "(file)".into());
        c.err(key, e.message().to_string())
    })?;
    check_asn(&c, "local_as", f.local_as)?;
    if f.router_id.is_unspecified() {
        return Err(c.err("router_id", "0.0.0.0 is not a router ID (RFC 6286)"));
    }
    let listen = match f.listen.as_str() {
        "none" => None,
        s => Some(s.parse::<SocketAddr>().map_err(|e| {
            c.err(
                "listen",
                format!("{s:?} is not an address:port or \"none\": {e}"),
            )
        })?),
    };
    if f.graceful_restart.restart_time > 4095 {
        return Err(c.err(
            "graceful_restart.restart_time",
            "at most 4095 seconds (12 bits, RFC 4724 §3)",
        ));
    }
    let kernel = match f.kernel {
        Some(k) if k.enabled => {
            let mut encap = vec![];
            for (i, e) in k.encap.into_iter().enumerate() {
                let key = format!("kernel.encap[{i}].prefix");
                let p = prefix(&c, &key, &e.prefix)?;
                if e.mode != Encap::None && p.is_ipv6() {
                    return Err(c.err(format!("kernel.encap[{i}].mode"), "IPIP carries IPv4 only"));
                }
                encap.push((p, e.mode));
            }
            Some(KernelConfig {
                metric: k.metric,
                encap,
                // bgpd knows no subnets of its own: CrossSubnet is IPIP everywhere there.
                direct_subnets: vec![],
                rescan: Duration::from_secs(k.rescan.max(1)),
            })
        }
        _ => None,
    };
    let mut peers: Vec<PeerConfig> = vec![];
    for (i, p) in f.peer.into_iter().enumerate() {
        let p = peer(&c, i, p, f.local_as)?;
        if peers.iter().any(|q| q.addr == p.addr) {
            return Err(c.err(
                format!("peer[{i}].address"),
                format!("{} is listed twice", p.addr),
            ));
        }
        if p.passive && listen.is_none() {
            return Err(c.err(
                format!("peer[{i}].passive"),
                "a passive peer needs listen to be set",
            ));
        }
        peers.push(p);
    }
    let mut originate = vec![];
    for (i, o) in f.originate.into_iter().enumerate() {
        let k = |f: &str| format!("originate[{i}].{f}");
        let p = prefix(&c, &k("prefix"), &o.prefix)?;
        originate.push(Origination {
            prefix: Some(p),
            communities: o
                .communities
                .iter()
                .map(|s| community(&c, &k("communities"), s))
                .collect::<Result<_, _>>()?,
            large_communities: o
                .large_communities
                .iter()
                .map(|s| large_community(&c, &k("large_communities"), s))
                .collect::<Result<_, _>>()?,
            med: o.med,
            local_pref: o.local_pref,
            blackhole: o.blackhole,
        });
    }
    let protected = f
        .protect
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.parse::<IpNetwork>()
                .map_err(|e| c.err(format!("protect[{i}]"), format!("{p:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DaemonConfig {
        speaker: SpeakerConfig {
            local_as: f.local_as,
            router_id: f.router_id,
            listen,
            cluster_id: f.cluster_id,
            graceful_restart: GracefulRestart {
                enabled: f.graceful_restart.enabled,
                restart_time: f.graceful_restart.restart_time,
                stale_time: Duration::from_secs(f.graceful_restart.stale_time),
                // A per-start choice: brindle-bgpd's `--recovering`, not the file.
                recovering: false,
            },
            next_hop_v4: f.next_hop_v4,
            next_hop_v6: f.next_hop_v6,
            kernel,
            no_transit: false,
            rails: Rails {
                protected,
                ..Rails::default()
            },
        },
        peers,
        originate,
        control_socket: f.control_socket.map(PathBuf::from),
    })
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        reason: e.to_string(),
    })?;
    parse(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("bgpd.toml", text).unwrap_err().to_string()
    }

    const HEAD: &str = "local_as = 64512\nrouter_id = \"198.18.0.1\"\n";

    #[test]
    fn errors_name_the_key_and_the_reason() {
        assert_eq!(
            err(&format!(
                "{HEAD}[[peer]]\naddress = \"198.18.0.2\"\nasn = 0\n"
            )),
            "bgpd.toml: peer[0].asn: 0 is reserved (RFC 7607)"
        );
        assert_eq!(
            err(&format!("{HEAD}[[originate]]\nprefix = \"10.244.1.5/26\"\n")),
            "bgpd.toml: originate[0].prefix: 10.244.1.5/26 has host bits set (did you mean 10.244.1.0/26?)"
        );
        assert!(err(&format!(
            "{HEAD}[[peer]]\naddress = \"198.18.0.2\"\nasn = 65001\nhold_time = 2\n"
        ))
        .starts_with("bgpd.toml: peer[0].hold_time: must be 0 or at least 3"));
        assert!(err(&format!(
            "{HEAD}[[peer]]\naddress = \"198.18.0.2\"\nasn = 65001\nimport = {{ term = [{{ prefix = [\"10.0.0.0/8 le 7\"] }}] }}\n"
        ))
        .starts_with("bgpd.toml: peer[0].import.term[0].prefix: in \"10.0.0.0/8 le 7\""));
        let e = err("local_as = 64512\nrouter_id = \"nope\"\n");
        assert!(e.starts_with("bgpd.toml: line 2: "), "{e}");
        let e = err(&format!("{HEAD}colour = 1\n"));
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(err(&format!("{HEAD}[[peer]]\naddress = \"198.18.0.2\"\nasn = 65001\n[[peer]]\naddress = \"198.18.0.2\"\nasn = 65002\n"))
            .starts_with("bgpd.toml: peer[1].address: 198.18.0.2 is listed twice"));
        let peer = "[[peer]]\naddress = \"198.18.0.2\"\nasn = 65001\n";
        assert!(err(&format!("{HEAD}{peer}ttl_security = 0\n"))
            .starts_with("bgpd.toml: peer[0].ttl_security: hops to the peer"));
        assert!(
            err(&format!("{HEAD}{peer}ttl_security = 1\nmultihop = 2\n"))
                .starts_with("bgpd.toml: peer[0].ttl_security: replaces multihop")
        );
        let c = parse("bgpd.toml", &format!("{HEAD}{peer}ttl_security = 2\n")).expect("parses");
        assert_eq!(c.peers[0].ttl_security, Some(2));
    }

    #[test]
    fn a_full_file_parses_with_defaults() {
        let c = parse(
            "bgpd.toml",
            &format!(
                "{HEAD}listen = \"0.0.0.0:1179\"\n[kernel]\nencap = [{{ prefix = \"10.244.0.0/16\", mode = \"ipip\" }}]\n\
                 [[peer]]\naddress = \"198.18.0.2\"\nasn = 4200000001\npassword = \"s3cret\"\n\
                 export = {{ default = \"reject\", term = [{{ prefix = [\"10.244.0.0/16 ge 26 le 26\"], add_community = [\"64512:1\"], action = \"accept\" }}] }}\n\
                 [[originate]]\nprefix = \"10.244.1.0/26\"\nlarge_communities = [\"4200000001:1:2\"]\nblackhole = true\n"
            ),
        )
        .unwrap();
        assert_eq!(c.speaker.listen, Some("0.0.0.0:1179".parse().unwrap()));
        assert!(c.speaker.graceful_restart.enabled);
        assert_eq!(c.speaker.kernel.as_ref().unwrap().metric, 32);
        let p = &c.peers[0];
        assert_eq!((p.asn, p.port, p.hold_time), (4200000001, 179, 90));
        assert_eq!(p.export.default, Verdict::Reject);
        assert_eq!(
            p.export.terms[0].actions,
            vec![Action::AddCommunity((64512 << 16) | 1)]
        );
        assert_eq!(c.originate[0].large_communities, vec![(4200000001, 1, 2)]);
    }
}
