//! OPEN (RFC 4271 §4.2), capabilities in optional parameter 2 (RFC 5492).
//!
//! ```text
//!  0                   1                   2                   3
//!  +-+-+-+-+-+-+-+-+
//!  |    Version    |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |     My Autonomous System      |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |           Hold Time           |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  |                         BGP Identifier                        |
//!  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!  | Opt Parm Len  |  Optional Parameters (variable)
//! ```

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u8};
use nom::IResult;

use super::capability::Capability;
use super::{DecodeError, AS_TRANS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet field; AS_TRANS when the real AS is in the 4-octet capability.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

type R<'a, T> = IResult<&'a [u8], T, ()>;

fn fields(i: &[u8]) -> R<'_, (u8, u16, u16, u32, &[u8])> {
    let (i, version) = be_u8(i)?;
    let (i, my_as) = be_u16(i)?;
    let (i, hold) = be_u16(i)?;
    let (i, id) = be_u32(i)?;
    let (i, plen) = be_u8(i)?;
    let (i, params) = take(plen)(i)?;
    Ok((i, (version, my_as, hold, id, params)))
}

impl Open {
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Open {
        if !capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
        {
            capabilities.push(Capability::FourOctetAs(asn));
        }
        Open {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The speaker's AS: the 4-octet capability's when present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }

    pub fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        let (rest, (version, my_as, hold_time, id, params)) =
            fields(body).map_err(|_| DecodeError::Truncated("OPEN"))?;
        if !rest.is_empty() {
            return Err(DecodeError::MalformedOpen(
                "optional parameter length disagrees with the message length",
            ));
        }
        if version != 4 {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let mut capabilities = vec![];
        let mut p = params;
        while !p.is_empty() {
            let (r, (ptype, value)) = param(p)
                .map_err(|_| DecodeError::MalformedOpen("optional parameter runs past its end"))?;
            p = r;
            if ptype != 2 {
                return Err(DecodeError::UnsupportedOptionalParameter(ptype));
            }
            let mut c = value;
            while !c.is_empty() {
                let (r, (code, v)) = param(c)
                    .map_err(|_| DecodeError::MalformedOpen("capability runs past its end"))?;
                c = r;
                capabilities.push(Capability::decode(code, v));
            }
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id: Ipv4Addr::from(id),
            capabilities,
        })
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.version);
        buf.put_u16(self.my_as);
        buf.put_u16(self.hold_time);
        buf.put_slice(&self.bgp_id.octets());
        let mut caps = BytesMut::new();
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        if caps.is_empty() {
            buf.put_u8(0);
            return;
        }
        // One capabilities parameter (RFC 5492 §4 allows one or several).
        buf.put_u8(caps.len() as u8 + 2);
        buf.put_u8(2);
        buf.put_u8(caps.len() as u8);
        buf.put_slice(&caps);
    }
}

fn param(i: &[u8]) -> R<'_, (u8, &[u8])> {
    let (i, t) = be_u8(i)?;
    let (i, l) = be_u8(i)?;
    let (i, v) = take(l)(i)?;
    Ok((i, (t, v)))
}
