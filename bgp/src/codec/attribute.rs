//! Path attributes (RFC 4271 §4.3, §5), with RFC 7606's treatment of each malformation.
//!
//! ```text
//!  0                   1
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Attr. Flags  |Attr. Type Code|  then 1 octet of length (2 with Extended Length)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

use super::error::{AttrError, Treatment};
use super::update::{decode_nlri, encode_nlri, Nlri};
use super::{Afi, Ctx, AS_TRANS};

pub const OPTIONAL: u8 = 0x80;
pub const TRANSITIVE: u8 = 0x40;
pub const PARTIAL: u8 = 0x20;
pub const EXTENDED_LENGTH: u8 = 0x10;

/// IANA "BGP Path Attributes".
pub mod code {
    pub const ORIGIN: u8 = 1; // RFC 4271
    pub const AS_PATH: u8 = 2; // RFC 4271
    pub const NEXT_HOP: u8 = 3; // RFC 4271
    pub const MED: u8 = 4; // RFC 4271
    pub const LOCAL_PREF: u8 = 5; // RFC 4271
    pub const ATOMIC_AGGREGATE: u8 = 6; // RFC 4271
    pub const AGGREGATOR: u8 = 7; // RFC 4271
    pub const COMMUNITIES: u8 = 8; // RFC 1997
    pub const ORIGINATOR_ID: u8 = 9; // RFC 4456
    pub const CLUSTER_LIST: u8 = 10; // RFC 4456
    pub const MP_REACH: u8 = 14; // RFC 4760
    pub const MP_UNREACH: u8 = 15; // RFC 4760
    pub const AS4_PATH: u8 = 17; // RFC 6793
    pub const AS4_AGGREGATOR: u8 = 18; // RFC 6793
    pub const LARGE_COMMUNITY: u8 = 32; // RFC 8092
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
    ConfedSequence(Vec<u32>),
    ConfedSet(Vec<u32>),
}

impl AsSegment {
    fn kind(&self) -> u8 {
        match self {
            AsSegment::Set(_) => 1,
            AsSegment::Sequence(_) => 2,
            AsSegment::ConfedSequence(_) => 3,
            AsSegment::ConfedSet(_) => 4,
        }
    }
    pub fn asns(&self) -> &[u32] {
        match self {
            AsSegment::Set(a)
            | AsSegment::Sequence(a)
            | AsSegment::ConfedSequence(a)
            | AsSegment::ConfedSet(a) => a,
        }
    }
    /// Its weight in the path length of RFC 4271 §9.1.2.2 (a set counts 1, confederation
    /// segments 0).
    pub fn path_len(&self) -> usize {
        match self {
            AsSegment::Sequence(a) => a.len(),
            AsSegment::Set(_) => 1,
            _ => 0,
        }
    }
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub afi: Afi,
    pub safi: u8,
    /// One address, or for IPv6 a global and a link-local one.
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<Nlri>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub afi: Afi,
    pub safi: u8,
    pub withdrawn: Vec<Nlri>,
}

/// An attribute this code does not interpret, passed on as it came (with the partial bit
/// set when it is optional transitive, RFC 4271 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttribute {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub origin: Option<Origin>,
    pub as_path: Option<Vec<AsSegment>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub unknown: Vec<RawAttribute>,
}

/// RFC 1997 well-known communities.
pub mod community {
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
}

fn err(type_code: u8, reason: &'static str, treatment: Treatment, subcode: u8) -> AttrError {
    AttrError {
        type_code,
        reason,
        treatment,
        subcode,
    }
}

fn u32_at(v: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]])
}

fn ipv4_at(v: &[u8], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(v[i], v[i + 1], v[i + 2], v[i + 3])
}

/// The flags a known attribute must carry (optional, transitive); None for unknown codes.
fn expected_flags(code: u8) -> Option<(bool, bool)> {
    use code::*;
    Some(match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => (false, true),
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => (true, false),
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR | LARGE_COMMUNITY => (true, true),
        _ => return None,
    })
}

/// How a malformed instance of `code` is handled (RFC 7606 §7, RFC 6793 §6).
fn malformed(code: u8, reason: &'static str) -> AttrError {
    use code::*;
    let (t, sub) = match code {
        ORIGIN => (Treatment::TreatAsWithdraw, 6),
        AS_PATH => (Treatment::TreatAsWithdraw, 11),
        NEXT_HOP => (Treatment::TreatAsWithdraw, 8),
        MED | LOCAL_PREF | COMMUNITIES | ORIGINATOR_ID | CLUSTER_LIST | LARGE_COMMUNITY => {
            (Treatment::TreatAsWithdraw, 5)
        }
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => {
            (Treatment::AttributeDiscard, 5)
        }
        MP_REACH | MP_UNREACH => (Treatment::SessionReset, 9),
        _ => (Treatment::TreatAsWithdraw, 9),
    };
    err(code, reason, t, sub)
}

fn decode_as_path(v: &[u8], four: bool, code: u8) -> Result<Vec<AsSegment>, AttrError> {
    let width = if four { 4 } else { 2 };
    let mut out = vec![];
    let mut i = 0;
    while i < v.len() {
        if i + 2 > v.len() {
            return Err(malformed(
                code,
                "AS_PATH segment header runs past the attribute",
            ));
        }
        let (kind, n) = (v[i], v[i + 1] as usize);
        i += 2;
        if n == 0 {
            return Err(malformed(code, "empty AS_PATH segment"));
        }
        if i + n * width > v.len() {
            return Err(malformed(code, "AS_PATH segment runs past the attribute"));
        }
        let asns: Vec<u32> = (0..n)
            .map(|k| {
                let p = i + k * width;
                if four {
                    u32_at(v, p)
                } else {
                    u32::from(u16::from_be_bytes([v[p], v[p + 1]]))
                }
            })
            .collect();
        i += n * width;
        out.push(match kind {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            3 => AsSegment::ConfedSequence(asns),
            4 => AsSegment::ConfedSet(asns),
            _ => return Err(malformed(code, "unknown AS_PATH segment type")),
        });
    }
    Ok(out)
}

fn encode_as_path(path: &[AsSegment], four: bool, buf: &mut BytesMut) {
    for seg in path {
        // A segment holds at most 255 ASes: split longer ones.
        for chunk in seg.asns().chunks(255) {
            buf.put_u8(seg.kind());
            buf.put_u8(chunk.len() as u8);
            for &a in chunk {
                if four {
                    buf.put_u32(a);
                } else {
                    buf.put_u16(u16::try_from(a).unwrap_or(AS_TRANS));
                }
            }
        }
    }
}

/// RFC 6793 §4.2.3: the real path from a 2-octet AS_PATH and the AS4_PATH beside it.
fn merge_as4(as_path: &[AsSegment], as4: Vec<AsSegment>) -> Vec<AsSegment> {
    let len = |p: &[AsSegment]| p.iter().map(AsSegment::path_len).sum::<usize>();
    let (l2, l4) = (len(as_path), len(&as4));
    if l2 < l4 {
        return as_path.to_vec(); // AS4_PATH is not to be trusted
    }
    let mut keep = l2 - l4;
    let mut out = vec![];
    for seg in as_path {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Sequence(a) if a.len() > keep => {
                out.push(AsSegment::Sequence(a[..keep].to_vec()));
                keep = 0;
            }
            s => {
                keep = keep.saturating_sub(s.path_len());
                out.push(s.clone());
            }
        }
    }
    out.extend(as4);
    out
}

fn decode_mp_nexthops(afi: Afi, v: &[u8]) -> Option<Vec<IpAddr>> {
    match (afi, v.len()) {
        (Afi::Ipv4, 4) => Some(vec![IpAddr::V4(ipv4_at(v, 0))]),
        (Afi::Ipv6, 16) | (Afi::Ipv6, 32) => Some(
            v.chunks(16)
                .map(|c| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(c).unwrap_or([0; 16]))))
                .collect(),
        ),
        _ => None,
    }
}

/// The outcome of decoding the path attribute field.
pub(crate) struct Decoded {
    pub attrs: Attributes,
    pub errors: Vec<AttrError>,
}

/// Decodes the path attributes field. An error that makes the rest unparseable, or that
/// touches MP_REACH/MP_UNREACH, is a session reset (returned as Err); everything else is
/// recorded with its treatment.
pub(crate) fn decode_attributes(mut v: &[u8], ctx: &Ctx) -> Result<Decoded, AttrError> {
    let mut a = Attributes::default();
    let mut errors = vec![];
    let mut seen = [false; 256];
    let mut as4_path = None;
    let mut as4_aggregator = None;
    while !v.is_empty() {
        // RFC 7606 §4: an attribute whose header or value runs past the attribute field
        // leaves the rest of the field unreadable, but the Total Path Attribute Length still
        // locates the NLRI: treat-as-withdraw. Only an MP_REACH/MP_UNREACH that overruns
        // (its NLRI cannot be known) resets the session.
        let overrun = |code: u8, reason: &'static str, subcode: u8| {
            let t = if code == code::MP_REACH || code == code::MP_UNREACH {
                Treatment::SessionReset
            } else {
                Treatment::TreatAsWithdraw
            };
            err(code, reason, t, subcode)
        };
        let short = v.len() < 3 || (v[0] & EXTENDED_LENGTH != 0 && v.len() < 4);
        if short {
            let code = v.get(1).copied().unwrap_or(0);
            let e = overrun(code, "attribute header runs past the attribute field", 1);
            if e.treatment == Treatment::SessionReset {
                return Err(e);
            }
            errors.push(e);
            break;
        }
        let (flags, code) = (v[0], v[1]);
        let (len, hdr) = if flags & EXTENDED_LENGTH != 0 {
            (usize::from(u16::from_be_bytes([v[2], v[3]])), 4)
        } else {
            (usize::from(v[2]), 3)
        };
        if hdr + len > v.len() {
            let e = overrun(code, "attribute length runs past the attribute field", 5);
            if e.treatment == Treatment::SessionReset {
                return Err(e);
            }
            errors.push(e);
            break;
        }
        let value = &v[hdr..hdr + len];
        v = &v[hdr + len..];

        if seen[code as usize] {
            if code == code::MP_REACH || code == code::MP_UNREACH {
                return Err(err(
                    code,
                    "MP_REACH/MP_UNREACH appears twice",
                    Treatment::SessionReset,
                    1,
                ));
            }
            // RFC 7606 §3(g): keep the first, discard the repeats.
            errors.push(err(
                code,
                "attribute appears more than once",
                Treatment::AttributeDiscard,
                1,
            ));
            continue;
        }
        seen[code as usize] = true;

        if let Some((opt, trans)) = expected_flags(code) {
            if (flags & OPTIONAL != 0) != opt || (flags & TRANSITIVE != 0) != trans {
                // RFC 4271 §6.3: Attribute Flags Error, whatever the treatment.
                let e = AttrError {
                    subcode: 4,
                    ..malformed(code, "attribute flags conflict with the attribute type")
                };
                if e.treatment == Treatment::SessionReset {
                    return Err(e);
                }
                errors.push(e);
                continue;
            }
        }
        match decode_one(
            code,
            flags,
            value,
            ctx,
            &mut a,
            &mut as4_path,
            &mut as4_aggregator,
        ) {
            Ok(()) => {}
            Err(e) if e.treatment == Treatment::SessionReset => return Err(e),
            Err(e) => errors.push(e),
        }
    }
    // RFC 6793 §4.2.3: 2-octet sessions carry the real path in AS4_PATH / AS4_AGGREGATOR.
    if !ctx.four_octet_as {
        let trans = a
            .aggregator
            .is_some_and(|(asn, _)| asn == u32::from(AS_TRANS));
        if let Some(agg4) = as4_aggregator.filter(|_| trans) {
            a.aggregator = Some(agg4);
        }
        // If AGGREGATOR names a real 2-octet AS, the AS4_* attributes are stale: ignore them.
        let aggregator_ok = a.aggregator.is_none() || trans;
        if let (Some(as4), Some(path), true) = (as4_path, a.as_path.as_ref(), aggregator_ok) {
            a.as_path = Some(merge_as4(path, as4));
        }
    }
    Ok(Decoded { attrs: a, errors })
}

#[allow(clippy::too_many_arguments)]
fn decode_one(
    code: u8,
    flags: u8,
    v: &[u8],
    ctx: &Ctx,
    a: &mut Attributes,
    as4_path: &mut Option<Vec<AsSegment>>,
    as4_aggregator: &mut Option<(u32, Ipv4Addr)>,
) -> Result<(), AttrError> {
    use code::*;
    match code {
        ORIGIN => {
            a.origin = Some(match v {
                [0] => Origin::Igp,
                [1] => Origin::Egp,
                [2] => Origin::Incomplete,
                [_] => return Err(malformed(code, "ORIGIN is not 0, 1 or 2")),
                _ => return Err(malformed(code, "ORIGIN length is not 1")),
            })
        }
        AS_PATH => a.as_path = Some(decode_as_path(v, ctx.four_octet_as, code)?),
        NEXT_HOP if v.len() == 4 => a.next_hop = Some(ipv4_at(v, 0)),
        NEXT_HOP => return Err(malformed(code, "NEXT_HOP length is not 4")),
        MED if v.len() == 4 => a.med = Some(u32_at(v, 0)),
        LOCAL_PREF if v.len() == 4 => a.local_pref = Some(u32_at(v, 0)),
        MED | LOCAL_PREF => return Err(malformed(code, "length is not 4")),
        ATOMIC_AGGREGATE if v.is_empty() => a.atomic_aggregate = true,
        ATOMIC_AGGREGATE => return Err(malformed(code, "ATOMIC_AGGREGATE length is not 0")),
        AGGREGATOR => {
            a.aggregator = Some(match (v.len(), ctx.four_octet_as) {
                (8, true) => (u32_at(v, 0), ipv4_at(v, 4)),
                (6, false) => (u32::from(u16::from_be_bytes([v[0], v[1]])), ipv4_at(v, 2)),
                _ => {
                    return Err(malformed(
                        code,
                        "AGGREGATOR length does not fit the AS size",
                    ))
                }
            })
        }
        COMMUNITIES if !v.is_empty() && v.len().is_multiple_of(4) => {
            a.communities = v.chunks(4).map(|c| u32_at(c, 0)).collect()
        }
        COMMUNITIES => {
            return Err(malformed(
                code,
                "COMMUNITIES length is not a non-zero multiple of 4",
            ))
        }
        ORIGINATOR_ID if v.len() == 4 => a.originator_id = Some(ipv4_at(v, 0)),
        ORIGINATOR_ID => return Err(malformed(code, "ORIGINATOR_ID length is not 4")),
        CLUSTER_LIST if !v.is_empty() && v.len().is_multiple_of(4) => {
            a.cluster_list = v.chunks(4).map(|c| ipv4_at(c, 0)).collect()
        }
        CLUSTER_LIST => {
            return Err(malformed(
                code,
                "CLUSTER_LIST length is not a non-zero multiple of 4",
            ))
        }
        LARGE_COMMUNITY if !v.is_empty() && v.len().is_multiple_of(12) => {
            a.large_communities = v
                .chunks(12)
                .map(|c| (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8)))
                .collect()
        }
        LARGE_COMMUNITY => {
            return Err(malformed(
                code,
                "LARGE_COMMUNITY length is not a non-zero multiple of 12",
            ))
        }
        MP_REACH => {
            if v.len() < 5 {
                return Err(malformed(code, "MP_REACH_NLRI is too short"));
            }
            let afi = Afi::from_u16(u16::from_be_bytes([v[0], v[1]]));
            let safi = v[2];
            let nhl = usize::from(v[3]);
            if 4 + nhl + 1 > v.len() {
                return Err(malformed(
                    code,
                    "MP_REACH_NLRI next hop runs past the attribute",
                ));
            }
            let next_hops = decode_mp_nexthops(afi, &v[4..4 + nhl]).ok_or_else(|| {
                malformed(
                    code,
                    "MP_REACH_NLRI next hop length does not fit the family",
                )
            })?;
            let nlri = decode_nlri(&v[4 + nhl + 1..], afi, ctx.add_path(afi, safi))
                .map_err(|_| malformed(code, "MP_REACH_NLRI prefix is malformed"))?;
            a.mp_reach = Some(MpReach {
                afi,
                safi,
                next_hops,
                nlri,
            });
        }
        MP_UNREACH => {
            if v.len() < 3 {
                return Err(malformed(code, "MP_UNREACH_NLRI is too short"));
            }
            let afi = Afi::from_u16(u16::from_be_bytes([v[0], v[1]]));
            let safi = v[2];
            let withdrawn = decode_nlri(&v[3..], afi, ctx.add_path(afi, safi))
                .map_err(|_| malformed(code, "MP_UNREACH_NLRI prefix is malformed"))?;
            a.mp_unreach = Some(MpUnreach {
                afi,
                safi,
                withdrawn,
            });
        }
        AS4_PATH if !ctx.four_octet_as => *as4_path = Some(decode_as_path(v, true, code)?),
        AS4_AGGREGATOR if !ctx.four_octet_as => {
            if v.len() != 8 {
                return Err(malformed(code, "AS4_AGGREGATOR length is not 8"));
            }
            *as4_aggregator = Some((u32_at(v, 0), ipv4_at(v, 4)));
        }
        // RFC 6793 §4.1: a 4-octet session must not see AS4_*; ignore them.
        AS4_PATH | AS4_AGGREGATOR => {}
        _ if flags & OPTIONAL == 0 => {
            return Err(err(
                code,
                "unrecognized well-known attribute",
                Treatment::SessionReset,
                2,
            ));
        }
        _ => a.unknown.push(RawAttribute {
            flags,
            code,
            value: v.to_vec(),
        }),
    }
    Ok(())
}

fn put_attr(buf: &mut BytesMut, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        buf.put_u8(flags | EXTENDED_LENGTH);
        buf.put_u8(code);
        buf.put_u16(value.len() as u16);
    } else {
        buf.put_u8(flags & !EXTENDED_LENGTH);
        buf.put_u8(code);
        buf.put_u8(value.len() as u8);
    }
    buf.put_slice(value);
}

impl Attributes {
    /// Encodes every attribute in type-code order. On a 2-octet session, ASes that do not fit
    /// become AS_TRANS and the real values go in AS4_PATH / AS4_AGGREGATOR (RFC 6793 §4.2.2).
    pub fn encode(&self, ctx: &Ctx, buf: &mut BytesMut) {
        use code::*;
        const WK: u8 = TRANSITIVE;
        const OPT: u8 = OPTIONAL;
        const OPT_T: u8 = OPTIONAL | TRANSITIVE;
        let mut v = BytesMut::new();
        let emit = |buf: &mut BytesMut, flags: u8, code: u8, v: &mut BytesMut| {
            put_attr(buf, flags, code, v);
            v.clear();
        };
        let wide = |asn: u32| asn > u32::from(u16::MAX);
        let needs_as4_path = !ctx.four_octet_as
            && self
                .as_path
                .as_ref()
                .is_some_and(|p| p.iter().any(|s| s.asns().iter().any(|&a| wide(a))));
        let needs_as4_agg = !ctx.four_octet_as && self.aggregator.is_some_and(|(a, _)| wide(a));
        if let Some(o) = self.origin {
            v.put_u8(o as u8);
            emit(buf, WK, ORIGIN, &mut v);
        }
        if let Some(p) = &self.as_path {
            encode_as_path(p, ctx.four_octet_as, &mut v);
            emit(buf, WK, AS_PATH, &mut v);
        }
        if let Some(nh) = self.next_hop {
            v.put_slice(&nh.octets());
            emit(buf, WK, NEXT_HOP, &mut v);
        }
        if let Some(m) = self.med {
            v.put_u32(m);
            emit(buf, OPT, MED, &mut v);
        }
        if let Some(lp) = self.local_pref {
            v.put_u32(lp);
            emit(buf, WK, LOCAL_PREF, &mut v);
        }
        if self.atomic_aggregate {
            emit(buf, WK, ATOMIC_AGGREGATE, &mut v);
        }
        if let Some((asn, id)) = self.aggregator {
            if ctx.four_octet_as {
                v.put_u32(asn);
            } else {
                v.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
            }
            v.put_slice(&id.octets());
            emit(buf, OPT_T, AGGREGATOR, &mut v);
        }
        if !self.communities.is_empty() {
            self.communities.iter().for_each(|c| v.put_u32(*c));
            emit(buf, OPT_T, COMMUNITIES, &mut v);
        }
        if let Some(id) = self.originator_id {
            v.put_slice(&id.octets());
            emit(buf, OPT, ORIGINATOR_ID, &mut v);
        }
        if !self.cluster_list.is_empty() {
            self.cluster_list
                .iter()
                .for_each(|c| v.put_slice(&c.octets()));
            emit(buf, OPT, CLUSTER_LIST, &mut v);
        }
        if let Some(r) = &self.mp_reach {
            v.put_u16(r.afi.to_u16());
            v.put_u8(r.safi);
            let nh: Vec<u8> = r
                .next_hops
                .iter()
                .flat_map(|ip| match ip {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                })
                .collect();
            v.put_u8(nh.len() as u8);
            v.put_slice(&nh);
            v.put_u8(0); // reserved
            encode_nlri(&r.nlri, ctx.add_path(r.afi, r.safi), &mut v);
            emit(buf, OPT, MP_REACH, &mut v);
        }
        if let Some(u) = &self.mp_unreach {
            v.put_u16(u.afi.to_u16());
            v.put_u8(u.safi);
            encode_nlri(&u.withdrawn, ctx.add_path(u.afi, u.safi), &mut v);
            emit(buf, OPT, MP_UNREACH, &mut v);
        }
        if needs_as4_path {
            if let Some(p) = &self.as_path {
                // Confederation segments never go in AS4_PATH (RFC 6793 §3).
                let p: Vec<AsSegment> = p
                    .iter()
                    .filter(|s| matches!(s, AsSegment::Set(_) | AsSegment::Sequence(_)))
                    .cloned()
                    .collect();
                encode_as_path(&p, true, &mut v);
                emit(buf, OPT_T, AS4_PATH, &mut v);
            }
        }
        if needs_as4_agg {
            if let Some((asn, id)) = self.aggregator {
                v.put_u32(asn);
                v.put_slice(&id.octets());
                emit(buf, OPT_T, AS4_AGGREGATOR, &mut v);
            }
        }
        if !self.large_communities.is_empty() {
            for (a, b, c) in &self.large_communities {
                v.put_u32(*a);
                v.put_u32(*b);
                v.put_u32(*c);
            }
            emit(buf, OPT_T, LARGE_COMMUNITY, &mut v);
        }
        for u in &self.unknown {
            put_attr(buf, u.flags, u.code, &u.value);
        }
    }

    /// Prepares attributes learned from a peer for passing on (RFC 4271 §5): unrecognized
    /// optional transitive attributes get the partial bit, unrecognized non-transitive ones
    /// are dropped.
    pub fn for_passing_on(&mut self) {
        self.unknown.retain(|u| u.flags & TRANSITIVE != 0);
        for u in &mut self.unknown {
            u.flags |= PARTIAL;
        }
    }
}
