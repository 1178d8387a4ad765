//! Capabilities advertised in OPEN (RFC 5492), IANA "Capability Codes".

use bytes::{BufMut, BytesMut};

use super::Afi;

/// Add-path send/receive (RFC 7911 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddPathMode {
    Receive = 1,
    Send = 2,
    Both = 3,
}

/// One family in the graceful-restart capability (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    pub afi: Afi,
    pub safi: u8,
    /// Forwarding state preserved across the restart.
    pub forwarding: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// 1: multiprotocol extensions (RFC 4760).
    Multiprotocol { afi: Afi, safi: u8 },
    /// 2: route refresh (RFC 2918).
    RouteRefresh,
    /// 6: extended message (RFC 8654).
    ExtendedMessage,
    /// 64: graceful restart (RFC 4724). `restarting` is the R bit, `time` in seconds (12 bits).
    GracefulRestart {
        restarting: bool,
        time: u16,
        families: Vec<GrFamily>,
    },
    /// 65: 4-octet AS number (RFC 6793).
    FourOctetAs(u32),
    /// 69: add-path (RFC 7911).
    AddPath(Vec<(Afi, u8, AddPathMode)>),
    /// 70: enhanced route refresh (RFC 7313).
    EnhancedRouteRefresh,
    /// Anything else, kept as received.
    Unknown { code: u8, value: Vec<u8> },
}

impl Capability {
    /// Parses one capability's value. Malformed known capabilities are kept as Unknown
    /// (RFC 5492 §3: a speaker ignores capabilities it cannot use).
    pub fn decode(code: u8, v: &[u8]) -> Capability {
        let unknown = || Capability::Unknown {
            code,
            value: v.to_vec(),
        };
        let u16_at = |i: usize| u16::from_be_bytes([v[i], v[i + 1]]);
        match (code, v.len()) {
            (1, 4) => Capability::Multiprotocol {
                afi: Afi::from_u16(u16_at(0)),
                safi: v[3],
            },
            (2, 0) => Capability::RouteRefresh,
            (6, 0) => Capability::ExtendedMessage,
            (64, n) if n >= 2 && (n - 2).is_multiple_of(4) => {
                let flags_time = u16_at(0);
                let families = v[2..]
                    .chunks(4)
                    .map(|c| GrFamily {
                        afi: Afi::from_u16(u16::from_be_bytes([c[0], c[1]])),
                        safi: c[2],
                        forwarding: c[3] & 0x80 != 0,
                    })
                    .collect();
                Capability::GracefulRestart {
                    restarting: flags_time & 0x8000 != 0,
                    time: flags_time & 0x0fff,
                    families,
                }
            }
            (65, 4) => Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            (69, n) if n.is_multiple_of(4) => {
                let mut out = vec![];
                for c in v.chunks(4) {
                    let mode = match c[3] {
                        1 => AddPathMode::Receive,
                        2 => AddPathMode::Send,
                        3 => AddPathMode::Both,
                        _ => return unknown(),
                    };
                    out.push((Afi::from_u16(u16::from_be_bytes([c[0], c[1]])), c[2], mode));
                }
                Capability::AddPath(out)
            }
            (70, 0) => Capability::EnhancedRouteRefresh,
            _ => unknown(),
        }
    }

    /// Code, then the value (the caller writes the length).
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut v = BytesMut::new();
        let code = match self {
            Capability::Multiprotocol { afi, safi } => {
                v.put_u16(afi.to_u16());
                v.put_u8(0);
                v.put_u8(*safi);
                1
            }
            Capability::RouteRefresh => 2,
            Capability::ExtendedMessage => 6,
            Capability::GracefulRestart {
                restarting,
                time,
                families,
            } => {
                v.put_u16((u16::from(*restarting) << 15) | (time & 0x0fff));
                for f in families {
                    v.put_u16(f.afi.to_u16());
                    v.put_u8(f.safi);
                    v.put_u8(if f.forwarding { 0x80 } else { 0 });
                }
                64
            }
            Capability::FourOctetAs(asn) => {
                v.put_u32(*asn);
                65
            }
            Capability::AddPath(fams) => {
                for (afi, safi, mode) in fams {
                    v.put_u16(afi.to_u16());
                    v.put_u8(*safi);
                    v.put_u8(*mode as u8);
                }
                69
            }
            Capability::EnhancedRouteRefresh => 70,
            Capability::Unknown { code, value } => {
                v.put_slice(value);
                *code
            }
        };
        buf.put_u8(code);
        buf.put_u8(v.len() as u8);
        buf.put_slice(&v);
    }
}
