//! The rule texts this dataplane writes, compiled to the nf_tables expressions `nft` makes of
//! them, for [`super::netlink`]. Each form is the one `nft --debug=netlink` shows for the
//! text (the same registers, lengths and byte orders), so a rule written either way lists
//! the same; `tests/nft_netlink.rs` holds the two side by side in the kernel for every rule
//! the renderers write. A text in any other form compiles to None, and the change goes
//! through `nft`: nothing is guessed.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::netlink::Attrs;

/// A register: the verdict, 16-byte register 1, or the 4-byte ones (concatenations).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;

const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;

const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_LTE: u32 = 3;
const CMP_GTE: u32 = 5;

const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;

const CT_STATE: u32 = 0;
const CT_INVALID: u32 = 1;
const CT_ESTABLISHED: u32 = 2;
const CT_RELATED: u32 = 4;
const CT_NEW: u32 = 8;

const NG_RANDOM: u32 = 1;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_SADDR: u32 = 1;
const FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NAT_DNAT: u32 = 1;
const NFPROTO_IPV4: u32 = 2;
const NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const DYNSET_OP_UPDATE: u32 = 1;
const LOOKUP_F_INV: u32 = 1;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// A value or a verdict, in a register, a set element or an immediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Verdict(i32, Option<String>),
}

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Meta {
        key: u32,
        dreg: u32,
    },
    MetaSetMark,
    /// `reg 1 = (reg 1 & mask) ^ xor`, 4 bytes.
    Bitwise {
        mask: [u8; 4],
        xor: [u8; 4],
    },
    Lookup {
        set: String,
        verdict: bool,
        inv: bool,
    },
    Immediate {
        dreg: u32,
        data: Data,
    },
    Numgen {
        modulus: u32,
    },
    Fib {
        flags: u32,
    },
    Dnat,
    DynsetUpdate {
        set: String,
    },
    Counter,
    CtState,
    Limit {
        per_second: u64,
        burst: u32,
    },
    Log {
        prefix: String,
        group: u16,
    },
}

impl Expr {
    /// The expression's name in `NFTA_EXPR_NAME`.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Meta { .. } | Expr::MetaSetMark => "meta",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Fib { .. } => "fib",
            Expr::Dnat => "nat",
            Expr::DynsetUpdate { .. } => "dynset",
            Expr::Counter => "counter",
            Expr::CtState => "ct",
            Expr::Limit { .. } => "limit",
            Expr::Log { .. } => "log",
        }
    }

    /// The expression's attributes (`NFTA_EXPR_DATA`'s content).
    pub fn encode(&self, a: &mut Attrs) {
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                a.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
            }
            Expr::Cmp { op, data } => {
                a.u32(1, REG_1)
                    .u32(2, *op)
                    .data(3, &Data::Value(data.clone()));
            }
            Expr::Meta { key, dreg } => {
                a.u32(2, *key).u32(1, *dreg);
            }
            Expr::MetaSetMark => {
                a.u32(2, META_MARK).u32(3, REG_1);
            }
            Expr::Bitwise { mask, xor } => {
                a.u32(1, REG_1).u32(2, REG_1).u32(3, 4);
                a.data(4, &Data::Value(mask.to_vec()))
                    .data(5, &Data::Value(xor.to_vec()));
            }
            Expr::Lookup { set, verdict, inv } => {
                a.str(1, set).u32(2, REG_1);
                if *verdict {
                    a.u32(3, REG_VERDICT);
                }
                if *inv {
                    a.u32(5, LOOKUP_F_INV);
                }
            }
            Expr::Immediate { dreg, data } => {
                a.u32(1, *dreg).data(2, data);
            }
            Expr::Numgen { modulus } => {
                a.u32(1, REG_1).u32(2, *modulus).u32(3, NG_RANDOM).u32(4, 0);
            }
            Expr::Fib { flags } => {
                a.u32(1, REG_1).u32(2, FIB_RESULT_ADDRTYPE).u32(3, *flags);
            }
            Expr::Dnat => {
                a.u32(1, NAT_DNAT)
                    .u32(2, NFPROTO_IPV4)
                    .u32(3, REG_1)
                    .u32(5, 2)
                    .u32(7, NAT_RANGE_PROTO_SPECIFIED);
            }
            Expr::DynsetUpdate { set } => {
                a.str(1, set).u32(3, DYNSET_OP_UPDATE).u32(4, REG_1);
            }
            Expr::Counter => {
                a.u64(1, 0).u64(2, 0);
            }
            Expr::CtState => {
                a.u32(1, REG_1).u32(2, CT_STATE);
            }
            Expr::Limit { per_second, burst } => {
                a.u64(1, *per_second)
                    .u64(2, 1)
                    .u32(3, *burst)
                    .u32(4, 0)
                    .u32(5, 0);
            }
            Expr::Log { prefix, group } => {
                a.bytes(1, &group.to_be_bytes()).str(2, prefix);
            }
        }
    }
}

fn verdict(code: i32, chain: Option<&str>) -> Expr {
    Expr::Immediate {
        dreg: REG_VERDICT,
        data: Data::Verdict(code, chain.map(str::to_string)),
    }
}

fn cmp(op: u32, data: Vec<u8>) -> Expr {
    Expr::Cmp { op, data }
}

fn load(base: u32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg: REG_1,
    }
}

fn meta(key: u32) -> Expr {
    Expr::Meta { key, dreg: REG_1 }
}

fn bitwise(mask: u32, xor: u32) -> Expr {
    Expr::Bitwise {
        mask: mask.to_ne_bytes(),
        xor: xor.to_ne_bytes(),
    }
}

/// An IP protocol's number by the name nft uses.
pub fn protocol(name: &str) -> Option<u8> {
    Some(match name {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        _ => return None,
    })
}

/// `ip saddr|daddr [!=] A[/len]` as nft writes it: a prefix on a byte boundary compares the
/// leading bytes; any other length masks the whole address first.
fn address_match(out: &mut Vec<Expr>, offset: u32, neq: bool, net: Ipv4Network) {
    let op = if neq { CMP_NEQ } else { CMP_EQ };
    let bytes = net.network().octets();
    let len = net.prefix();
    if len > 0 && len.is_multiple_of(8) {
        let n = u32::from(len / 8);
        out.push(load(PAYLOAD_NETWORK, offset, n));
        out.push(cmp(op, bytes[..n as usize].to_vec()));
    } else {
        out.push(load(PAYLOAD_NETWORK, offset, 4));
        out.push(bitwise(u32::from_ne_bytes(net.mask().octets()), 0));
        out.push(cmp(op, bytes.to_vec()));
    }
}

/// A number as nft prints it (`0x10000` or `42`).
fn number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Splits a rule's text into its body and its comment (`… comment "brl:…"`).
pub fn split_comment(text: &str) -> (&str, &str) {
    match text.rfind(" comment \"") {
        Some(at) if text.ends_with('"') => {
            let c = &text[at + 10..text.len() - 1];
            (&text[..at], c)
        }
        _ => (text, ""),
    }
}

/// The expressions of rule `body` (no comment), or None for a form not known here.
pub fn compile(body: &str) -> Option<Vec<Expr>> {
    let t: Vec<&str> = body.split_whitespace().collect();
    let mut out = vec![];
    let mut i = 0;
    let at = |i: usize| t.get(i).copied();
    while i < t.len() {
        match t[i] {
            "ip" => {
                let offset = match at(i + 1)? {
                    "saddr" => 12,
                    "daddr" => 16,
                    _ => return None,
                };
                i += 2;
                // `ip daddr . meta l4proto . th dport` (only daddr: named ports, Services)
                if at(i) == Some(".") {
                    if offset != 16
                        || t.get(i..i + 6)? != [".", "meta", "l4proto", ".", "th", "dport"]
                    {
                        return None;
                    }
                    out.push(load(PAYLOAD_NETWORK, 16, 4));
                    out.push(Expr::Meta {
                        key: META_L4PROTO,
                        dreg: REG32_01,
                    });
                    out.push(Expr::Payload {
                        base: PAYLOAD_TRANSPORT,
                        offset: 2,
                        len: 2,
                        dreg: REG32_02,
                    });
                    i += 6;
                    let verdict = match at(i)? {
                        "vmap" => {
                            i += 1;
                            true
                        }
                        _ => false,
                    };
                    let set = at(i)?.strip_prefix('@')?;
                    out.push(Expr::Lookup {
                        set: set.into(),
                        verdict,
                        inv: false,
                    });
                    i += 1;
                    continue;
                }
                let neq = at(i) == Some("!=");
                if neq {
                    i += 1;
                }
                let v = at(i)?;
                i += 1;
                if let Some(set) = v.strip_prefix('@') {
                    out.push(load(PAYLOAD_NETWORK, offset, 4));
                    out.push(Expr::Lookup {
                        set: set.into(),
                        verdict: false,
                        inv: neq,
                    });
                } else {
                    let net: Ipv4Network = match v.parse::<Ipv4Addr>() {
                        Ok(a) => Ipv4Network::from(a),
                        Err(_) => v.parse().ok()?,
                    };
                    if net.network() != net.ip() {
                        return None; // nft refuses host bits; so do we
                    }
                    address_match(&mut out, offset, neq, net);
                }
            }
            p @ ("tcp" | "udp" | "sctp") => {
                if at(i + 1)? != "dport" {
                    return None;
                }
                out.push(meta(META_L4PROTO));
                out.push(cmp(CMP_EQ, vec![protocol(p)?]));
                out.push(load(PAYLOAD_TRANSPORT, 2, 2));
                let v = at(i + 2)?;
                match v.split_once('-') {
                    None => out.push(cmp(CMP_EQ, v.parse::<u16>().ok()?.to_be_bytes().to_vec())),
                    Some((a, b)) => {
                        let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
                        if a > b {
                            return None; // nft refuses it; so do we
                        }
                        out.push(cmp(CMP_GTE, a.to_be_bytes().to_vec()));
                        out.push(cmp(CMP_LTE, b.to_be_bytes().to_vec()));
                    }
                }
                i += 3;
            }
            "meta" => match (at(i + 1)?, at(i + 2)?) {
                ("l4proto", p) => {
                    out.push(meta(META_L4PROTO));
                    out.push(cmp(CMP_EQ, vec![protocol(p)?]));
                    i += 3;
                }
                ("mark", "set") => {
                    // meta mark set meta mark {|,&,^} N
                    if t.get(i + 3..i + 5)? != ["meta", "mark"] {
                        return None;
                    }
                    let n = number(at(i + 6)?)?;
                    let (mask, xor) = match at(i + 5)? {
                        "|" => (!n, n),
                        "&" => (n, 0),
                        "^" => (u32::MAX, n),
                        _ => return None,
                    };
                    out.push(meta(META_MARK));
                    out.push(bitwise(mask, xor));
                    out.push(Expr::MetaSetMark);
                    i += 7;
                }
                ("mark", "&") => {
                    // meta mark & M == V
                    let m = number(at(i + 3)?)?;
                    if at(i + 4)? != "==" {
                        return None;
                    }
                    let v = number(at(i + 5)?)?;
                    out.push(meta(META_MARK));
                    out.push(bitwise(m, 0));
                    out.push(cmp(CMP_EQ, v.to_ne_bytes().to_vec()));
                    i += 6;
                }
                _ => return None,
            },
            name @ ("iifname" | "oifname") => {
                // the dispatch: `iifname vmap @map`
                if at(i + 1)? != "vmap" {
                    return None;
                }
                let set = at(i + 2)?.strip_prefix('@')?;
                out.push(meta(if name == "iifname" {
                    META_IIFNAME
                } else {
                    META_OIFNAME
                }));
                out.push(Expr::Lookup {
                    set: set.into(),
                    verdict: true,
                    inv: false,
                });
                i += 3;
            }
            "ct" => {
                if at(i + 1)? != "state" {
                    return None;
                }
                let mut bits = 0;
                for s in at(i + 2)?.split(',') {
                    bits |= match s {
                        "invalid" => CT_INVALID,
                        "established" => CT_ESTABLISHED,
                        "related" => CT_RELATED,
                        "new" => CT_NEW,
                        _ => return None,
                    };
                }
                out.push(Expr::CtState);
                out.push(bitwise(bits, 0));
                out.push(cmp(CMP_NEQ, 0u32.to_ne_bytes().to_vec()));
                i += 3;
            }
            "fib" => {
                let flags = match at(i + 1)? {
                    "saddr" => FIB_F_SADDR,
                    "daddr" => FIB_F_DADDR,
                    _ => return None,
                };
                if t.get(i + 2..i + 4)? != ["type", "local"] {
                    return None;
                }
                out.push(Expr::Fib { flags });
                out.push(cmp(CMP_EQ, RTN_LOCAL.to_ne_bytes().to_vec()));
                i += 4;
            }
            "numgen" => {
                // numgen random mod N == 0
                if at(i + 1)? != "random" || at(i + 2)? != "mod" || at(i + 4)? != "==" {
                    return None;
                }
                let modulus = number(at(i + 3)?)?;
                let v = number(at(i + 5)?)?;
                out.push(Expr::Numgen { modulus });
                out.push(cmp(CMP_EQ, v.to_ne_bytes().to_vec()));
                i += 6;
            }
            "update" => {
                // update @set { ip saddr }
                let set = at(i + 1)?.strip_prefix('@')?;
                if t.get(i + 2..i + 6)? != ["{", "ip", "saddr", "}"] {
                    return None;
                }
                out.push(load(PAYLOAD_NETWORK, 12, 4));
                out.push(Expr::DynsetUpdate { set: set.into() });
                i += 6;
            }
            "dnat" => {
                // dnat to A:P
                if at(i + 1)? != "to" {
                    return None;
                }
                let (a, p) = at(i + 2)?.split_once(':')?;
                let a: Ipv4Addr = a.parse().ok()?;
                let p: u16 = p.parse().ok()?;
                out.push(Expr::Immediate {
                    dreg: REG_1,
                    data: Data::Value(a.octets().to_vec()),
                });
                out.push(Expr::Immediate {
                    dreg: 2,
                    data: Data::Value(p.to_be_bytes().to_vec()),
                });
                out.push(Expr::Dnat);
                i += 3;
            }
            "counter" => {
                out.push(Expr::Counter);
                i += 1;
            }
            "limit" => {
                // limit rate N/second burst B packets
                if at(i + 1)? != "rate" || at(i + 3)? != "burst" || at(i + 5)? != "packets" {
                    return None;
                }
                let per_second = at(i + 2)?.strip_suffix("/second")?.parse().ok()?;
                let burst = number(at(i + 4)?)?;
                out.push(Expr::Limit { per_second, burst });
                i += 6;
            }
            "log" => {
                // log prefix "P" group G (a prefix without spaces)
                if at(i + 1)? != "prefix" || at(i + 3)? != "group" {
                    return None;
                }
                let p = at(i + 2)?.strip_prefix('"')?.strip_suffix('"')?;
                if p.contains('"') {
                    return None;
                }
                let group = at(i + 4)?.parse().ok()?;
                out.push(Expr::Log {
                    prefix: p.into(),
                    group,
                });
                i += 5;
            }
            "accept" | "drop" | "return" => {
                let code = match t[i] {
                    "accept" => NF_ACCEPT,
                    "drop" => NF_DROP,
                    _ => NFT_RETURN,
                };
                out.push(verdict(code, None));
                i += 1;
                if i != t.len() {
                    return None;
                }
            }
            v @ ("jump" | "goto") => {
                let chain = at(i + 1)?;
                let code = if v == "jump" { NFT_JUMP } else { NFT_GOTO };
                out.push(verdict(code, Some(chain)));
                i += 2;
                if i != t.len() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A set or map element's key (and a map's verdict) from the writer's canonical text,
/// for a set of `key` type; None for a type or form not known here.
pub fn element(key: &str, text: &str) -> Option<(Vec<u8>, Option<Data>)> {
    let (k, v) = match text.split_once(" : ") {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    let parts: Vec<&str> = k.split(" . ").collect();
    let types: Vec<&str> = key.split(" . ").collect();
    if parts.len() != types.len() {
        return None;
    }
    let mut bytes = vec![];
    for (ty, p) in types.iter().zip(&parts) {
        match *ty {
            "ipv4_addr" => bytes.extend_from_slice(&p.parse::<Ipv4Addr>().ok()?.octets()),
            // Each part of a concatenation takes whole 4-byte registers.
            "inet_proto" => bytes.extend_from_slice(&[protocol(p)?, 0, 0, 0]),
            "inet_service" => {
                bytes.extend_from_slice(&p.parse::<u16>().ok()?.to_be_bytes());
                bytes.extend_from_slice(&[0, 0]);
            }
            "ifname" => {
                let name = p.trim_matches('"');
                if name.is_empty() || name.len() >= 16 || name.contains(['"', '*']) {
                    return None;
                }
                let mut b = [0u8; 16];
                b[..name.len()].copy_from_slice(name.as_bytes());
                bytes.extend_from_slice(&b);
            }
            _ => return None,
        }
    }
    let data = match v {
        None => None,
        Some(v) => Some(match v.split_once(' ') {
            Some(("goto", c)) => Data::Verdict(NFT_GOTO, Some(c.into())),
            Some(("jump", c)) => Data::Verdict(NFT_JUMP, Some(c.into())),
            None if v == "drop" => Data::Verdict(NF_DROP, None),
            None if v == "accept" => Data::Verdict(NF_ACCEPT, None),
            None if v == "return" => Data::Verdict(NFT_RETURN, None),
            _ => return None,
        }),
    };
    Some((bytes, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_not_known_are_refused_not_guessed() {
        for body in [
            "ip saddr != { 10.0.0.0/8, 10.1.2.3 } drop",
            "masquerade fully-random",
            "iifname \"brl*\" jump from-wl-dispatch",
            "reject",
            "ip saddr 10.0.0.1/8 accept",
            "goto a b",
            "accept drop",
            "tcp sport 80 accept",
            "meta mark set 0x1",
            "log prefix \"a b\" group 3",
            "update @a { ip daddr } accept",
            "fib daddr type unicast accept",
            "tcp dport 90-80 accept",
        ] {
            assert_eq!(compile(body), None, "{body}");
        }
    }

    #[test]
    fn rules_compile_as_nft_writes_them() {
        let e = compile("ip daddr 10.96.0.1 tcp dport 80 ip saddr != @p jump m").unwrap();
        assert_eq!(
            e,
            vec![
                load(PAYLOAD_NETWORK, 16, 4),
                cmp(CMP_EQ, vec![10, 96, 0, 1]),
                meta(META_L4PROTO),
                cmp(CMP_EQ, vec![6]),
                load(PAYLOAD_TRANSPORT, 2, 2),
                cmp(CMP_EQ, vec![0, 80]),
                load(PAYLOAD_NETWORK, 12, 4),
                Expr::Lookup {
                    set: "p".into(),
                    verdict: false,
                    inv: true
                },
                verdict(NFT_JUMP, Some("m")),
            ]
        );
        // /16 compares two bytes; /20 masks.
        let e = compile("ip saddr 10.9.0.0/16 ip saddr != 10.9.16.0/20 accept").unwrap();
        assert_eq!(e[0], load(PAYLOAD_NETWORK, 12, 2));
        assert_eq!(e[1], cmp(CMP_EQ, vec![10, 9]));
        assert_eq!(e[3], bitwise(u32::from_ne_bytes([255, 255, 240, 0]), 0));
        assert_eq!(e[4], cmp(CMP_NEQ, vec![10, 9, 16, 0]));
    }

    #[test]
    fn elements_encode_padded_concatenations() {
        let (k, d) = element(
            "ipv4_addr . inet_proto . inet_service",
            "10.96.0.1 . tcp . 80 : goto svc",
        )
        .unwrap();
        assert_eq!(k, [10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(d, Some(Data::Verdict(NFT_GOTO, Some("svc".into()))));
        let (k, _) = element("ifname", "brl12 : goto tw-brl12").unwrap();
        assert_eq!(&k[..6], b"brl12\0");
        assert_eq!(k.len(), 16);
        assert_eq!(element("ipv4_addr", "10.0.0.0/8"), None);
        assert_eq!(
            element("inet_proto . inet_service", "tcp . 30080 : drop").map(|e| e.0),
            Some(vec![6, 0, 0, 0, 0x75, 0x80, 0, 0])
        );
    }
}
