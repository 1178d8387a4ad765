//! The message header, framing, and the small messages (RFC 4271 §4.1, §4.4, §4.5;
//! RFC 2918 / RFC 7313 ROUTE-REFRESH; RFC 8203 shutdown communication).
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           Marker (16 octets of ones)          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use bytes::{BufMut, BytesMut};

use super::open::Open;
use super::update::Update;
use super::{Afi, Ctx, DecodeError};

pub const HEADER_LEN: usize = 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    /// Cease / administrative shutdown (6/2) with an RFC 8203 message (at most 255 octets
    /// of UTF-8; longer text is cut at a character boundary).
    pub fn shutdown(message: &str) -> Notification {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = vec![end as u8];
        data.extend_from_slice(&message.as_bytes()[..end]);
        Notification {
            code: 6,
            subcode: 2,
            data,
        }
    }

    /// The RFC 8203 shutdown communication of a Cease/2 or Cease/4, if well formed.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != 6 || !(self.subcode == 2 || self.subcode == 4) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        String::from_utf8(text.to_vec()).ok()
    }

    pub fn from_error(e: &DecodeError) -> Notification {
        let (code, subcode, data) = e.notification();
        Notification {
            code,
            subcode,
            data,
        }
    }
}

/// ROUTE-REFRESH; `subtype` 0 is a plain request, 1 and 2 the beginning and end of an
/// enhanced route refresh (RFC 7313).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: Afi,
    pub subtype: u8,
    pub safi: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    /// Boxed: an UPDATE is much larger than the other messages.
    Update(Box<Update>),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// How long the message at the start of `buf` is, once its header is there; None until
/// then. Header errors (marker, length, type) are reported by [`decode`].
pub fn message_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER_LEN).then(|| usize::from(u16::from_be_bytes([buf[16], buf[17]])))
}

/// Framing for a stream: takes the first whole message (header included) off `buf` once it
/// is all there. A header claiming fewer than 19 octets yields the bare header, for
/// [`decode`] to refuse.
pub fn next_message(buf: &mut BytesMut) -> Option<BytesMut> {
    let n = message_len(buf)?.max(HEADER_LEN);
    (buf.len() >= n).then(|| buf.split_to(n))
}

/// Decodes one whole message (header included; `msg.len()` from [`message_len`]).
pub fn decode(msg: &[u8], ctx: &Ctx) -> Result<Message, DecodeError> {
    if msg.len() < HEADER_LEN {
        return Err(DecodeError::BadLength(msg.len() as u16));
    }
    if msg[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::NotSynchronized);
    }
    let len = u16::from_be_bytes([msg[16], msg[17]]);
    let kind = msg[18];
    let body = &msg[HEADER_LEN..];
    // RFC 4271 §6.1 minimum lengths per type; OPEN and KEEPALIVE stay 4096 at most
    // (RFC 8654 §4).
    let (min, max) = match kind {
        1 => (29, 4096),
        2 => (23, ctx.max_len()),
        3 => (21, ctx.max_len()),
        4 => (19, 19),
        5 => (23, ctx.max_len()),
        t => return Err(DecodeError::BadType(t)),
    };
    if usize::from(len) != msg.len() || usize::from(len) < min || usize::from(len) > max {
        return Err(DecodeError::BadLength(len));
    }
    Ok(match kind {
        1 => Message::Open(Open::decode(body)?),
        2 => Message::Update(Box::new(Update::decode(body, ctx)?)),
        3 => Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        4 => Message::Keepalive,
        _ => {
            if body.len() != 4 {
                return Err(DecodeError::BadLength(len));
            }
            Message::RouteRefresh(RouteRefresh {
                afi: Afi::from_u16(u16::from_be_bytes([body[0], body[1]])),
                subtype: body[2],
                safi: body[3],
            })
        }
    })
}

/// Appends one whole message (header included) to `buf`.
pub fn encode(m: &Message, ctx: &Ctx, buf: &mut BytesMut) {
    let start = buf.len();
    buf.put_slice(&[0xff; 16]);
    buf.put_u16(0); // length, filled in below
    match m {
        Message::Open(o) => {
            buf.put_u8(1);
            o.encode(buf);
        }
        Message::Update(u) => {
            buf.put_u8(2);
            u.encode(ctx, buf);
        }
        Message::Notification(n) => {
            buf.put_u8(3);
            buf.put_u8(n.code);
            buf.put_u8(n.subcode);
            buf.put_slice(&n.data);
        }
        Message::Keepalive => buf.put_u8(4),
        Message::RouteRefresh(r) => {
            buf.put_u8(5);
            buf.put_u16(r.afi.to_u16());
            buf.put_u8(r.subtype);
            buf.put_u8(r.safi);
        }
    }
    let len = (buf.len() - start) as u16;
    buf[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}
