//! BGP messages: decoding with `nom`, encoding with `bytes`. No sockets, no clocks.
//!
//! Framing is separate from decoding ([`message_len`], [`next_message`]), and decoding takes the [`Ctx`] the
//! session negotiated (4-octet AS, add-path, extended messages). Errors map one-to-one to a
//! NOTIFICATION code/subcode ([`DecodeError::notification`]); RFC 7606's revised handling
//! of UPDATE attribute errors is its own outcome ([`Treatment`]), recorded on the
//! [`Update`] rather than failing the session.

mod attribute;
mod capability;
mod error;
mod message;
mod open;
mod update;

pub use attribute::{
    code as attribute_code, community, AsSegment, Attributes, MpReach, MpUnreach, Origin,
    RawAttribute,
};
pub use capability::{AddPathMode, Capability, GrFamily};
pub use error::{AttrError, DecodeError, Treatment};
pub use message::{
    decode, encode, message_len, next_message, Message, Notification, RouteRefresh, HEADER_LEN,
};
pub use open::Open;
pub(crate) use update::encode_nlri;
pub use update::{Nlri, Update};

/// AS_TRANS (RFC 6793): stands in for a 4-octet AS where only 2 octets fit.
pub const AS_TRANS: u16 = 23456;

/// Address families (IANA "Address Family Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
    Other(u16),
}

impl Afi {
    pub fn from_u16(v: u16) -> Afi {
        match v {
            1 => Afi::Ipv4,
            2 => Afi::Ipv6,
            o => Afi::Other(o),
        }
    }
    pub fn to_u16(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
            Afi::Other(o) => o,
        }
    }
}

/// Unicast, the only SAFI Brindle routes (1, RFC 4760).
pub const SAFI_UNICAST: u8 = 1;

/// What the session negotiated, which changes how messages are laid out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ctx {
    /// Both sides sent the 4-octet AS capability (RFC 6793): AS numbers are 4 octets.
    pub four_octet_as: bool,
    /// Families in which NLRI carry a path identifier (RFC 7911), as (AFI, SAFI).
    pub add_path: Vec<(Afi, u8)>,
    /// Messages up to 65535 octets (RFC 8654).
    pub extended_message: bool,
}

impl Ctx {
    pub fn add_path(&self, afi: Afi, safi: u8) -> bool {
        self.add_path.contains(&(afi, safi))
    }
    pub fn max_len(&self) -> usize {
        if self.extended_message {
            65535
        } else {
            4096
        }
    }
}

#[cfg(test)]
mod tests;
