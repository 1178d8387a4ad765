//! From one peer's adverts to as few UPDATE messages as fit: consecutive announcements with
//! the same attributes share a message (attributes encoded once), IPv4 goes in the UPDATE
//! body, IPv6 in MP_REACH / MP_UNREACH (RFC 4760), each message within the negotiated size.
//!
//! A route whose attributes leave no room for its prefix (a reflected route that was near
//! the limit before ORIGINATOR_ID and CLUSTER_LIST were added, say) is never sent oversized:
//! the peer gets a withdraw for it instead, and it is logged, as BIRD does. An oversized
//! UPDATE would reset the session, and with an update group every member's.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tracing::warn;

use crate::adj_out::{Advert, Want};
use crate::codec::{
    encode_nlri, Afi, Attributes, Ctx, Message, MpReach, MpUnreach, Nlri, Update, HEADER_LEN,
    SAFI_UNICAST,
};

/// The size one NLRI takes on the wire.
fn nlri_len(n: &Nlri, add_path: bool) -> usize {
    1 + usize::from(n.prefix.prefix()).div_ceil(8) + if add_path { 4 } else { 0 }
}

fn header(buf: &mut BytesMut) -> usize {
    let start = buf.len();
    buf.put_slice(&[0xff; 16]);
    buf.put_u16(0);
    buf.put_u8(2);
    start
}

fn finish(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
}

/// Splits `nlri` into runs that each fit in `room` octets.
fn chunks(nlri: &[Nlri], add_path: bool, room: usize) -> Vec<&[Nlri]> {
    let mut out = vec![];
    let (mut start, mut used) = (0, 0);
    for (i, n) in nlri.iter().enumerate() {
        let l = nlri_len(n, add_path);
        if used + l > room && i > start {
            out.push(&nlri[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < nlri.len() {
        out.push(&nlri[start..]);
    }
    out
}

/// Splits off the prefixes that cannot fit beside attributes that leave `room` octets, and
/// logs them.
fn too_big(nlri: &[Nlri], add_path: bool, room: usize, attrs_len: usize) -> (Vec<Nlri>, Vec<Nlri>) {
    let (fit, not): (Vec<Nlri>, Vec<Nlri>) =
        nlri.iter().partition(|n| nlri_len(n, add_path) <= room);
    if let Some(first) = not.first() {
        warn!(
            prefix = %first.prefix,
            prefixes = not.len(),
            attributes = attrs_len,
            "a route's attributes leave no room for it in an UPDATE of the negotiated size: withdrawn toward this peer instead"
        );
    }
    (fit, not)
}

/// The longest NLRI of a family on the wire (a host route, with a path ID).
fn longest(v6: bool, add_path: bool) -> usize {
    1 + if v6 { 16 } else { 4 } + if add_path { 4 } else { 0 }
}

fn v4_announce(attrs: &Attributes, nlri: &[Nlri], ctx: &Ctx, out: &mut BytesMut) {
    let ap = ctx.add_path(Afi::Ipv4, SAFI_UNICAST);
    let mut a = BytesMut::new();
    attrs.encode(ctx, &mut a);
    let room = ctx.max_len().saturating_sub(HEADER_LEN + 4 + a.len());
    // The common case, room for any prefix, takes no copy of the list.
    let split;
    let nlri = if room >= longest(false, ap) {
        nlri
    } else {
        let (fit, not) = too_big(nlri, ap, room, a.len());
        if !not.is_empty() {
            v4_withdraw(&not, ctx, out);
        }
        split = fit;
        &split[..]
    };
    for c in chunks(nlri, ap, room) {
        let start = header(out);
        out.put_u16(0);
        out.put_u16(a.len() as u16);
        out.put_slice(&a);
        encode_nlri(c, ap, out);
        finish(out, start);
    }
}

fn v4_withdraw(nlri: &[Nlri], ctx: &Ctx, out: &mut BytesMut) {
    let ap = ctx.add_path(Afi::Ipv4, SAFI_UNICAST);
    for c in chunks(nlri, ap, ctx.max_len() - HEADER_LEN - 4) {
        let start = header(out);
        let len_at = out.len();
        out.put_u16(0);
        encode_nlri(c, ap, out);
        let w = (out.len() - len_at - 2) as u16;
        out[len_at..len_at + 2].copy_from_slice(&w.to_be_bytes());
        out.put_u16(0);
        finish(out, start);
    }
}

fn message(u: Update, ctx: &Ctx, out: &mut BytesMut) {
    crate::codec::encode(&Message::Update(Box::new(u)), ctx, out);
}

fn v6(attrs: Option<&Attributes>, nlri: &[Nlri], ctx: &Ctx, out: &mut BytesMut) {
    let ap = ctx.add_path(Afi::Ipv6, SAFI_UNICAST);
    // The message without prefixes, and one octet more: MP_REACH's length may need two.
    let mut probe = BytesMut::new();
    message(update_v6(attrs, &[]), ctx, &mut probe);
    let base = probe.len() + 1;
    let room = ctx.max_len().saturating_sub(base);
    let split;
    let nlri = if attrs.is_none() || room >= longest(true, ap) {
        nlri
    } else {
        let (fit, not) = too_big(nlri, ap, room, base);
        if !not.is_empty() {
            v6(None, &not, ctx, out);
        }
        split = fit;
        &split[..]
    };
    for c in chunks(nlri, ap, room) {
        message(update_v6(attrs, c), ctx, out);
    }
}

fn update_v6(attrs: Option<&Attributes>, c: &[Nlri]) -> Update {
    {
        let mut u = Update::default();
        match attrs {
            Some(a) => {
                u.attributes = a.clone();
                let nh = a.mp_reach.as_ref().map(|r| r.next_hops.clone());
                u.attributes.mp_reach = Some(MpReach {
                    afi: Afi::Ipv6,
                    safi: SAFI_UNICAST,
                    next_hops: nh.unwrap_or_default(),
                    nlri: c.to_vec(),
                });
            }
            None => {
                u.attributes.mp_unreach = Some(MpUnreach {
                    afi: Afi::Ipv6,
                    safi: SAFI_UNICAST,
                    withdrawn: c.to_vec(),
                });
            }
        }
        u
    }
}

/// Encodes wants without add-path (the first path, if any, of each) into UPDATE messages
/// appended to `out`.
pub fn pack_wants(wants: Vec<Want>, ctx: &Ctx, out: &mut BytesMut) {
    let adverts: Vec<Advert> = wants
        .into_iter()
        .map(|w| Advert {
            prefix: w.prefix,
            path_id: None,
            attrs: w.paths.into_iter().next().map(|p| p.1),
        })
        .collect();
    pack(&adverts, ctx, out);
}

/// Encodes adverts (in the order given) into UPDATE messages appended to `out`.
pub fn pack(adverts: &[Advert], ctx: &Ctx, out: &mut BytesMut) {
    let mut i = 0;
    while i < adverts.len() {
        let first = &adverts[i];
        let v4 = first.prefix.is_ipv4();
        let same = |a: &Advert| {
            a.prefix.is_ipv4() == v4
                && match (&a.attrs, &first.attrs) {
                    (None, None) => true,
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
                    _ => false,
                }
        };
        let mut j = i + 1;
        while j < adverts.len() && same(&adverts[j]) {
            j += 1;
        }
        let nlri: Vec<Nlri> = adverts[i..j]
            .iter()
            .map(|a| Nlri {
                prefix: a.prefix,
                path_id: a.path_id,
            })
            .collect();
        match (v4, &first.attrs) {
            (true, Some(a)) => v4_announce(a, &nlri, ctx, out),
            (true, None) => v4_withdraw(&nlri, ctx, out),
            (false, a) => v6(a.as_deref(), &nlri, ctx, out),
        }
        i = j;
    }
}

/// End-of-RIB for a family (RFC 4724 §2).
pub fn end_of_rib(afi: Afi, ctx: &Ctx, out: &mut BytesMut) {
    let mut u = Update::default();
    if afi != Afi::Ipv4 {
        u.attributes.mp_unreach = Some(MpUnreach {
            afi,
            safi: SAFI_UNICAST,
            withdrawn: vec![],
        });
    }
    message(u, ctx, out)
}

/// Whether an UPDATE is an End-of-RIB marker, and for which family.
pub fn is_end_of_rib(u: &Update) -> Option<Afi> {
    let a = &u.attributes;
    if !u.withdrawn.is_empty() || !u.nlri.is_empty() || a.mp_reach.is_some() {
        return None;
    }
    let bare = Attributes {
        mp_unreach: None,
        ..a.clone()
    };
    if bare != Attributes::default() {
        return None;
    }
    match &a.mp_unreach {
        None => Some(Afi::Ipv4),
        Some(m) if m.withdrawn.is_empty() => Some(m.afi),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::codec::{decode, next_message, AsSegment, Origin};
    use ipnetwork::IpNetwork;

    fn messages(buf: &BytesMut, ctx: &Ctx) -> Vec<Update> {
        let mut rest = buf.clone();
        let mut out = vec![];
        while let Some(m) = next_message(&mut rest) {
            assert!(m.len() <= ctx.max_len(), "a {}-octet message", m.len());
            match decode(&m, ctx).expect("decodes") {
                Message::Update(u) => out.push(*u),
                m => panic!("{m:?}"),
            }
        }
        assert!(rest.is_empty(), "a partial message at the end");
        out
    }

    #[test]
    fn many_prefixes_fill_messages_within_the_size_and_decode_back() {
        let a = Arc::new(Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![AsSegment::Sequence(vec![64512])]),
            next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
            ..Attributes::default()
        });
        let ads: Vec<Advert> = (0..3000u32)
            .map(|i| Advert {
                prefix: IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))), 24)
                    .unwrap(),
                path_id: None,
                attrs: Some(a.clone()),
            })
            .chain((0..5u32).map(|i| Advert {
                prefix: format!("fd00:{i}::/64").parse().unwrap(),
                path_id: None,
                attrs: None,
            }))
            .collect();
        let ctx = Ctx {
            four_octet_as: true,
            ..Ctx::default()
        };
        let mut buf = BytesMut::new();
        pack(&ads, &ctx, &mut buf);
        let ups = messages(&buf, &ctx);
        assert_eq!(
            ups.len(),
            4,
            "3000 /24s in 3 messages, then one IPv6 withdraw"
        );
        let v4: Vec<_> = ups
            .iter()
            .flat_map(|u| u.nlri.iter().map(|n| n.prefix))
            .collect();
        assert_eq!(v4, ads[..3000].iter().map(|a| a.prefix).collect::<Vec<_>>());
        assert!(ups[..3].iter().all(|u| u.attributes.next_hop == a.next_hop));
        let w = ups[3].attributes.mp_unreach.as_ref().expect("MP_UNREACH");
        assert_eq!(w.withdrawn.len(), 5);
    }

    #[test]
    fn end_of_rib_markers_are_recognized_for_both_families() {
        let ctx = Ctx::default();
        for afi in [Afi::Ipv4, Afi::Ipv6] {
            let mut buf = BytesMut::new();
            end_of_rib(afi, &ctx, &mut buf);
            let u = &messages(&buf, &ctx)[0];
            assert_eq!(is_end_of_rib(u), Some(afi));
        }
        let mut u = Update::default();
        u.attributes.med = Some(1);
        assert_eq!(is_end_of_rib(&u), None, "attributes make it an UPDATE");
    }

    /// Attributes near the limit: every message stays within it; prefixes that cannot fit
    /// beside them are withdrawn instead, never sent oversized. Both families.
    #[test]
    fn attributes_near_the_limit_never_make_an_oversized_message() {
        let ctx = Ctx {
            four_octet_as: true,
            ..Ctx::default()
        };
        for communities in [1000usize, 1010, 1017, 1030] {
            let a = Arc::new(Attributes {
                origin: Some(Origin::Igp),
                as_path: Some(vec![AsSegment::Sequence(vec![64512])]),
                next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
                communities: (0..communities as u32).collect(),
                ..Attributes::default()
            });
            let mut a6 = (*a).clone();
            a6.next_hop = None;
            a6.mp_reach = Some(MpReach {
                afi: Afi::Ipv6,
                safi: SAFI_UNICAST,
                next_hops: vec!["fd00::1".parse().unwrap()],
                nlri: vec![],
            });
            let a6 = Arc::new(a6);
            let ads: Vec<Advert> = (0..40u32)
                .map(|i| Advert {
                    prefix: IpNetwork::new(
                        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))),
                        24 + (i % 9) as u8,
                    )
                    .unwrap(),
                    path_id: None,
                    attrs: Some(a.clone()),
                })
                .chain((0..40u32).map(|i| Advert {
                    prefix: format!("fd00:{i:x}::/{}", 48 + i).parse().unwrap(),
                    path_id: None,
                    attrs: Some(a6.clone()),
                }))
                .collect();
            let mut buf = BytesMut::new();
            pack(&ads, &ctx, &mut buf);
            // `messages` asserts each is within the size and decodes.
            let ups = messages(&buf, &ctx);
            let announced = ups
                .iter()
                .map(|u| u.nlri.len() + u.attributes.mp_reach.as_ref().map_or(0, |r| r.nlri.len()))
                .sum::<usize>();
            let withdrawn = ups
                .iter()
                .map(|u| {
                    u.withdrawn.len()
                        + u.attributes
                            .mp_unreach
                            .as_ref()
                            .map_or(0, |r| r.withdrawn.len())
                })
                .sum::<usize>();
            assert_eq!(
                announced + withdrawn,
                80,
                "{communities}: every prefix accounted for"
            );
            if communities >= 1030 {
                assert_eq!(announced, 0, "{communities}: nothing fits");
            }
            if communities <= 1000 {
                assert_eq!(withdrawn, 0, "{communities}: everything fits");
            }
        }
    }
}
