//! Codec and RIB speed on one core: decode and encode of UPDATEs packed with /24 NLRI (per
//! prefix), and Loc-RIB inserts per second.
//!
//! Run: `cargo bench -p brindle-bgp --bench codec`. Targets (issue 4): decode ≤ 10 ns per
//! prefix, RIB ≥ 2 million inserts/s.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use brindle_bgp::codec::{
    decode, encode, AsSegment, Attributes, Ctx, Message, Nlri, Origin, Update,
};
use brindle_bgp::rib::{Path, PeerInfo, Rib};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnetwork::IpNetwork;

fn attrs() -> Attributes {
    Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![AsSegment::Sequence(vec![65001, 65002])]),
        next_hop: Some(Ipv4Addr::new(198, 18, 0, 1)),
        ..Attributes::default()
    }
}

/// As many /24s as fit in one 4096-octet UPDATE.
fn packed_update(ctx: &Ctx) -> (Vec<u8>, usize) {
    let mut u = Update {
        attributes: attrs(),
        ..Update::default()
    };
    let mut i: u32 = 0;
    loop {
        let net =
            IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + (i << 8))), 24).expect("prefix");
        u.nlri.push(Nlri::new(net));
        let mut b = BytesMut::new();
        encode(&Message::Update(Box::new(u.clone())), ctx, &mut b);
        if b.len() > 4096 {
            u.nlri.pop();
            let mut b = BytesMut::new();
            let n = u.nlri.len();
            encode(&Message::Update(Box::new(u)), ctx, &mut b);
            return (b.to_vec(), n);
        }
        i += 1;
    }
}

fn codec(c: &mut Criterion) {
    let ctx = Ctx {
        four_octet_as: true,
        ..Ctx::default()
    };
    let (bytes, n) = packed_update(&ctx);
    let msg = decode(&bytes, &ctx).expect("decodes");
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("decode {n} x /24 (per prefix: time / {n})"), |b| {
        b.iter(|| decode(black_box(&bytes), &ctx).expect("decodes"))
    });
    g.bench_function(format!("encode {n} x /24"), |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            encode(black_box(&msg), &ctx, &mut buf);
        })
    });
    g.finish();
}

fn rib(c: &mut Criterion) {
    const N: u32 = 100_000;
    let prefixes: Vec<IpNetwork> = (0..N)
        .map(|i| {
            IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + (i << 8))), 24).expect("prefix")
        })
        .collect();
    let a = Arc::new(attrs());
    let mut g = c.benchmark_group("rib");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("insert 100k prefixes from one peer", |b| {
        b.iter(|| {
            let mut r = Rib::new(64512, Ipv4Addr::new(198, 18, 1, 100));
            r.add_peer(PeerInfo {
                id: 1,
                asn: 65001,
                router_id: Ipv4Addr::new(198, 18, 1, 1),
                addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                rr_client: false,
                member: false,
            });
            for p in &prefixes {
                black_box(r.insert(
                    *p,
                    Path {
                        peer: 1,
                        path_id: None,
                        attrs: a.clone(),
                        stale: false,
                    },
                ));
            }
            r
        })
    });
    g.finish();
}

criterion_group!(benches, codec, rib);
criterion_main!(benches);
