//! Errors that are the protocol's own: each maps to a NOTIFICATION (RFC 4271 §4.5, §6).

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    // 1: Message Header Error
    #[error("message header: connection not synchronized (marker is not all ones)")]
    NotSynchronized,
    #[error("message header: bad message length {0}")]
    BadLength(u16),
    #[error("message header: bad message type {0}")]
    BadType(u8),
    // 2: OPEN Message Error
    #[error("OPEN: malformed ({0})")]
    MalformedOpen(&'static str),
    #[error("OPEN: unsupported version number {0}")]
    UnsupportedVersion(u8),
    #[error("OPEN: bad peer AS {0}")]
    BadPeerAs(u32),
    #[error("OPEN: bad BGP identifier {0}")]
    BadBgpIdentifier(Ipv4Addr),
    #[error("OPEN: unsupported optional parameter {0}")]
    UnsupportedOptionalParameter(u8),
    #[error("OPEN: unacceptable hold time {0}")]
    UnacceptableHoldTime(u16),
    /// RFC 5492 §5: the peer lacks a capability we require (no address family in common);
    /// the data is the capabilities we required.
    #[error("OPEN: unsupported capability (no address family in common)")]
    UnsupportedCapability(Vec<u8>),
    // 3: UPDATE Message Error
    #[error("UPDATE: malformed attribute list ({0})")]
    MalformedAttributeList(&'static str),
    #[error("UPDATE: invalid network field")]
    InvalidNetwork,
    /// An attribute error RFC 7606 still answers with a session reset.
    #[error("UPDATE: attribute {}: {}", .0.type_code, .0.reason)]
    Attribute(AttrError),
    // 6: Cease is sent, never decoded as an error.
    /// Inside another message, a field ran past its end (reported as the enclosing
    /// message's unspecific error).
    #[error("{0}: truncated")]
    Truncated(&'static str),
}

impl DecodeError {
    /// The NOTIFICATION to send: (error code, subcode, data).
    pub fn notification(&self) -> (u8, u8, Vec<u8>) {
        use DecodeError::*;
        match self {
            NotSynchronized => (1, 1, vec![]),
            BadLength(l) => (1, 2, l.to_be_bytes().to_vec()),
            BadType(t) => (1, 3, vec![*t]),
            MalformedOpen(_) => (2, 0, vec![]),
            // RFC 4271 §6.2: data is the largest supported version, 2 octets.
            UnsupportedVersion(_) => (2, 1, 4u16.to_be_bytes().to_vec()),
            BadPeerAs(_) => (2, 2, vec![]),
            BadBgpIdentifier(_) => (2, 3, vec![]),
            UnsupportedOptionalParameter(_) => (2, 4, vec![]),
            UnacceptableHoldTime(_) => (2, 6, vec![]),
            UnsupportedCapability(data) => (2, 7, data.clone()),
            MalformedAttributeList(_) => (3, 1, vec![]),
            InvalidNetwork => (3, 10, vec![]),
            Attribute(e) => (3, e.subcode, vec![]),
            Truncated("OPEN") => (2, 0, vec![]),
            Truncated(_) => (3, 1, vec![]),
        }
    }
}

/// RFC 7606 §2: what to do about a malformed attribute in an UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Drop the attribute and use the rest of the UPDATE.
    AttributeDiscard,
    /// Process the UPDATE's prefixes as withdrawn.
    TreatAsWithdraw,
    /// Reset the session (the UPDATE cannot be parsed reliably).
    SessionReset,
}

/// One attribute problem found in an UPDATE, with the treatment RFC 7606 prescribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrError {
    pub type_code: u8,
    pub reason: &'static str,
    pub treatment: Treatment,
    /// The NOTIFICATION (3, subcode) this would have been before RFC 7606.
    pub subcode: u8,
}
