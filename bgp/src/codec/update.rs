//! UPDATE (RFC 4271 §4.3) and NLRI encoding, with add-path path identifiers (RFC 7911).
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! |   Withdrawn Routes (variable)                       |
//! |   Total Path Attribute Length (2 octets)            |
//! |   Path Attributes (variable)                        |
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnetwork::IpNetwork;

use super::attribute::{decode_attributes, Attributes, MpUnreach};
use super::error::{AttrError, DecodeError, Treatment};
use super::{Afi, Ctx, SAFI_UNICAST};

/// One prefix, with its path identifier when add-path is on for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri {
    pub prefix: IpNetwork,
    pub path_id: Option<u32>,
}

impl Nlri {
    pub fn new(prefix: IpNetwork) -> Nlri {
        Nlri {
            prefix,
            path_id: None,
        }
    }
}

type R<'a, T> = nom::IResult<&'a [u8], T, ()>;

/// One NLRI entry (RFC 4271 §4.3; RFC 7911 §3 with a path identifier in front).
#[inline]
fn nlri_entry(i: &[u8], afi: Afi, add_path: bool) -> R<'_, Nlri> {
    use nom::bytes::complete::take;
    use nom::number::complete::{be_u32, be_u8};
    let (i, path_id) = if add_path {
        be_u32(i).map(|(i, id)| (i, Some(id)))?
    } else {
        (i, None)
    };
    let (i, len) = be_u8(i)?;
    let (i, raw) = take(usize::from(len).div_ceil(8))(i)?;
    // Trailing bits past the prefix length are irrelevant (RFC 4271 §4.3): mask them.
    let prefix = match afi {
        Afi::Ipv4 => {
            let mut b = [0u8; 4];
            b.get_mut(..raw.len())
                .ok_or(nom::Err::Error(()))?
                .copy_from_slice(raw);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            let ip = Ipv4Addr::from(u32::from_be_bytes(b) & mask);
            IpNetwork::V4(ipnetwork::Ipv4Network::new_checked(ip, len).ok_or(nom::Err::Error(()))?)
        }
        _ => {
            let mut b = [0u8; 16];
            b.get_mut(..raw.len())
                .ok_or(nom::Err::Error(()))?
                .copy_from_slice(raw);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            let ip = Ipv6Addr::from(u128::from_be_bytes(b) & mask);
            IpNetwork::V6(ipnetwork::Ipv6Network::new_checked(ip, len).ok_or(nom::Err::Error(()))?)
        }
    };
    Ok((i, Nlri { prefix, path_id }))
}

pub(crate) fn decode_nlri(v: &[u8], afi: Afi, add_path: bool) -> Result<Vec<Nlri>, DecodeError> {
    if let Afi::Other(_) = afi {
        return Err(DecodeError::InvalidNetwork);
    }
    // A /24 takes 4 octets: a fair first guess of the count.
    let mut out = Vec::with_capacity(v.len() / 4 + 1);
    let mut i = v;
    while !i.is_empty() {
        let (rest, n) = nlri_entry(i, afi, add_path).map_err(|_| DecodeError::InvalidNetwork)?;
        out.push(n);
        i = rest;
    }
    Ok(out)
}

pub(crate) fn encode_nlri(nlri: &[Nlri], add_path: bool, buf: &mut BytesMut) {
    for n in nlri {
        if add_path {
            buf.put_u32(n.path_id.unwrap_or(0));
        }
        let len = n.prefix.prefix();
        buf.put_u8(len);
        let bytes = usize::from(len).div_ceil(8);
        match n.prefix.network() {
            IpAddr::V4(a) => buf.put_slice(&a.octets()[..bytes]),
            IpAddr::V6(a) => buf.put_slice(&a.octets()[..bytes]),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 unicast prefixes withdrawn in the UPDATE body.
    pub withdrawn: Vec<Nlri>,
    pub attributes: Attributes,
    /// IPv4 unicast prefixes announced in the UPDATE body.
    pub nlri: Vec<Nlri>,
    /// Attribute problems handled the RFC 7606 way (never a session reset: those are Err).
    pub errors: Vec<AttrError>,
}

impl Update {
    /// True when an error asks for every prefix in this UPDATE to be taken as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.treatment == Treatment::TreatAsWithdraw)
    }

    /// End-of-RIB (RFC 4724 §2): an empty UPDATE for IPv4 unicast, an UPDATE with only an
    /// empty MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(&self) -> Option<(Afi, u8)> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        let a = &self.attributes;
        if *a == Attributes::default() {
            return Some((Afi::Ipv4, SAFI_UNICAST));
        }
        match &a.mp_unreach {
            Some(u)
                if u.withdrawn.is_empty()
                    && *a
                        == (Attributes {
                            mp_unreach: a.mp_unreach.clone(),
                            ..Default::default()
                        }) =>
            {
                Some((u.afi, u.safi))
            }
            _ => None,
        }
    }

    pub fn end_of_rib_marker(afi: Afi, safi: u8) -> Update {
        let mut u = Update::default();
        if (afi, safi) != (Afi::Ipv4, SAFI_UNICAST) {
            u.attributes.mp_unreach = Some(MpUnreach {
                afi,
                safi,
                withdrawn: vec![],
            });
        }
        u
    }

    /// Decodes an UPDATE body. Err is a session reset (with its NOTIFICATION); attribute
    /// errors RFC 7606 lets the session survive are in `errors`.
    pub fn decode(body: &[u8], ctx: &Ctx) -> Result<Update, DecodeError> {
        if body.len() < 4 {
            return Err(DecodeError::MalformedAttributeList(
                "UPDATE shorter than its two length fields",
            ));
        }
        let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
        if 2 + wlen + 2 > body.len() {
            return Err(DecodeError::MalformedAttributeList(
                "withdrawn routes length runs past the message",
            ));
        }
        let withdrawn = decode_nlri(
            &body[2..2 + wlen],
            Afi::Ipv4,
            ctx.add_path(Afi::Ipv4, SAFI_UNICAST),
        )?;
        let p = 2 + wlen;
        let alen = usize::from(u16::from_be_bytes([body[p], body[p + 1]]));
        if p + 2 + alen > body.len() {
            return Err(DecodeError::MalformedAttributeList(
                "total path attribute length runs past the message",
            ));
        }
        let decoded =
            decode_attributes(&body[p + 2..p + 2 + alen], ctx).map_err(DecodeError::Attribute)?;
        let nlri = decode_nlri(
            &body[p + 2 + alen..],
            Afi::Ipv4,
            ctx.add_path(Afi::Ipv4, SAFI_UNICAST),
        )?;
        let mut u = Update {
            withdrawn,
            attributes: decoded.attrs,
            nlri,
            errors: decoded.errors,
        };
        u.check_mandatory();
        Ok(u)
    }

    /// RFC 7606 §3(d): a missing well-known mandatory attribute is treat-as-withdraw.
    fn check_mandatory(&mut self) {
        let a = &self.attributes;
        let announces =
            !self.nlri.is_empty() || a.mp_reach.as_ref().is_some_and(|r| !r.nlri.is_empty());
        if !announces {
            return;
        }
        let mut missing = vec![];
        if a.origin.is_none() {
            missing.push(1);
        }
        if a.as_path.is_none() {
            missing.push(2);
        }
        if !self.nlri.is_empty() && a.next_hop.is_none() {
            missing.push(3);
        }
        for code in missing {
            // An attribute that was present but malformed is already reported.
            if !self.errors.iter().any(|e| e.type_code == code) {
                self.errors.push(AttrError {
                    type_code: code,
                    reason: "missing well-known mandatory attribute",
                    treatment: Treatment::TreatAsWithdraw,
                    subcode: 3,
                });
            }
        }
    }

    pub fn encode(&self, ctx: &Ctx, buf: &mut BytesMut) {
        let ap = ctx.add_path(Afi::Ipv4, SAFI_UNICAST);
        let mut w = BytesMut::new();
        encode_nlri(&self.withdrawn, ap, &mut w);
        buf.put_u16(w.len() as u16);
        buf.put_slice(&w);
        let mut a = BytesMut::new();
        self.attributes.encode(ctx, &mut a);
        buf.put_u16(a.len() as u16);
        buf.put_slice(&a);
        encode_nlri(&self.nlri, ap, buf);
    }
}
