//! A minimal, fast BGP load generator for the benchmarks (bgperf's method): an injector that
//! sends precomputed UPDATEs as fast as TCP takes them, and a monitor that counts distinct
//! prefixes arriving. Sessions offer a 90 s hold time (some daemons tie their write timeout
//! to it) and keep alive every 20 s; 4-octet AS. Built on Brindle's codec, but none of its
//! speaker.
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use brindle_bgp::codec::{
    self, AsSegment, Attributes, Capability, Ctx, Message, Nlri, Open, Origin, Update,
};
use bytes::{Bytes, BytesMut};
use ipnetwork::IpNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub fn ctx() -> Ctx {
    Ctx {
        four_octet_as: true,
        ..Ctx::default()
    }
}

fn encode(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode(m, &ctx(), &mut b);
    b.freeze()
}

pub struct Conn {
    pub r: OwnedReadHalf,
    pub w: OwnedWriteHalf,
    pub buf: BytesMut,
}

/// Reads one whole message.
pub async fn read_msg(r: &mut OwnedReadHalf, buf: &mut BytesMut) -> io::Result<Message> {
    loop {
        if let Some(m) = codec::next_message(buf) {
            return codec::decode(&m, &ctx())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
        if r.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn handshake(
    s: TcpStream,
    asn: u32,
    id: Ipv4Addr,
    families: &[codec::Afi],
) -> io::Result<Conn> {
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let mut caps: Vec<Capability> = families
        .iter()
        .map(|&afi| Capability::Multiprotocol { afi, safi: 1 })
        .collect();
    caps.push(Capability::FourOctetAs(asn));
    w.write_all(&encode(&Message::Open(Open::new(asn, 90, id, caps))))
        .await?;
    let mut buf = BytesMut::with_capacity(1 << 16);
    match read_msg(&mut r, &mut buf).await? {
        Message::Open(_) => {}
        m => return Err(io::Error::other(format!("expected OPEN, got {m:?}"))),
    }
    w.write_all(&encode(&Message::Keepalive)).await?;
    loop {
        match read_msg(&mut r, &mut buf).await? {
            Message::Keepalive => break,
            Message::Notification(n) => {
                return Err(io::Error::other(format!(
                    "NOTIFICATION {}/{}",
                    n.code, n.subcode
                )))
            }
            _ => {}
        }
    }
    Ok(Conn { r, w, buf })
}

/// Connects from `local` to `remote`, retrying while refused, and completes the OPEN
/// exchange, offering IPv4 unicast.
pub async fn connect(
    local: IpAddr,
    remote: SocketAddr,
    asn: u32,
    id: Ipv4Addr,
    patience: Duration,
) -> io::Result<Conn> {
    connect_with(local, remote, asn, id, &[codec::Afi::Ipv4], patience).await
}

/// [`connect`], offering unicast of these address families.
pub async fn connect_with(
    local: IpAddr,
    remote: SocketAddr,
    asn: u32,
    id: Ipv4Addr,
    families: &[codec::Afi],
    patience: Duration,
) -> io::Result<Conn> {
    let start = Instant::now();
    loop {
        let s = TcpSocket::new_v4()?;
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::new(local, 0))?;
        match s.connect(remote).await {
            Ok(s) => match handshake(s, asn, id, families).await {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() < patience => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            },
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn accept(l: &TcpListener, asn: u32, id: Ipv4Addr) -> io::Result<Conn> {
    let (s, _) = l.accept().await?;
    handshake(s, asn, id, &[codec::Afi::Ipv4]).await
}

/// The benchmark's prefix sets: unique IPv4 prefixes of one length, numbered from 0 (up to
/// 2^20 of them), packed `per` to an UPDATE of at most 4096 octets.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub len: u8,
    base: u32,
    pub per: usize,
}

impl Shape {
    /// /28s in 10.0.0.0/8, 800 per UPDATE (5 octets each).
    pub const SLASH_28: Shape = Shape {
        len: 28,
        base: 0x0a00_0000,
        per: 800,
    };
    /// /24s from 16.0.0.0 (2^20 of them reach 31.255.255.0), 1,013 per UPDATE: 4096 − 19
    /// (header) − 4 (lengths) − 20 (ORIGIN, a one-AS AS_PATH, NEXT_HOP) leaves 4,053
    /// octets, 4 per /24. bgperf's packing.
    pub const SLASH_24: Shape = Shape {
        len: 24,
        base: 0x1000_0000,
        per: 1013,
    };

    pub fn parse(s: &str) -> Option<Shape> {
        match s.trim_start_matches('/') {
            "28" => Some(Shape::SLASH_28),
            "24" => Some(Shape::SLASH_24),
            _ => None,
        }
    }

    /// Prefix `i` of the set.
    pub fn prefix(&self, i: u32) -> IpNetwork {
        let a = self.base + (i << (32 - self.len));
        IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a)), self.len).expect("prefix")
    }

    /// The number of a prefix of the set, if it is one.
    pub fn index(&self, p: &IpNetwork) -> Option<usize> {
        match p {
            IpNetwork::V4(n) if n.prefix() == self.len => {
                let i = u32::from(n.network()).checked_sub(self.base)? >> (32 - self.len);
                (i < 1 << 20).then_some(i as usize)
            }
            _ => None,
        }
    }
}

/// `n` prefixes of `shape` packed into UPDATEs with one set of attributes.
pub fn updates(shape: Shape, n: u32, asn: u32, next_hop: Ipv4Addr) -> Vec<Bytes> {
    let attrs = Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![AsSegment::Sequence(vec![asn])]),
        next_hop: Some(next_hop),
        ..Attributes::default()
    };
    let per = shape.per;
    let msgs: Vec<Bytes> = (0..n)
        .step_by(per)
        .map(|start| {
            let nlri = (start..(start + per as u32).min(n))
                .map(|i| Nlri::new(shape.prefix(i)))
                .collect();
            encode(&Message::Update(Box::new(Update {
                attributes: attrs.clone(),
                nlri,
                ..Update::default()
            })))
        })
        .collect();
    assert!(
        msgs.iter().all(|m| m.len() <= 4096),
        "UPDATEs over 4096 octets"
    );
    msgs
}

/// One UPDATE announcing `prefix` from an iBGP client at `next_hop`.
pub fn announce(prefix: IpNetwork, next_hop: Ipv4Addr) -> Bytes {
    encode(&Message::Update(Box::new(Update {
        attributes: Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            next_hop: Some(next_hop),
            local_pref: Some(100),
            ..Attributes::default()
        },
        nlri: vec![Nlri::new(prefix)],
        ..Update::default()
    })))
}

pub fn end_of_rib() -> Bytes {
    encode(&Message::Update(Box::default()))
}

/// Sends every message, then End-of-RIB, as fast as the socket takes them.
pub async fn inject(c: &mut Conn, msgs: &[Bytes]) -> io::Result<()> {
    let mut batch = Vec::with_capacity(1 << 20);
    for m in msgs {
        batch.extend_from_slice(m);
        if batch.len() >= 1 << 20 {
            c.w.write_all(&batch).await?;
            batch.clear();
        }
    }
    batch.extend_from_slice(&end_of_rib());
    c.w.write_all(&batch).await?;
    c.w.flush().await
}

/// Keeps an idle session up: a KEEPALIVE every 20 s (and reads and drops what comes).
pub fn keep_alive(c: Conn) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Conn {
            mut r,
            mut w,
            mut buf,
        } = c;
        let mut tick = tokio::time::interval(Duration::from_secs(20));
        loop {
            tokio::select! {
                m = read_msg(&mut r, &mut buf) => if m.is_err() { return },
                _ = tick.tick() => if w.write_all(&encode(&Message::Keepalive)).await.is_err() { return },
            }
        }
    })
}

/// Reads until `want` distinct prefixes of `shape` have been announced; returns when.
pub async fn count(c: &mut Conn, shape: Shape, want: usize) -> io::Result<Instant> {
    count_with(c, want, |p| shape.index(p)).await
}

/// Like [`count`], with the prefixes numbered (below 2^20) by `index`.
pub async fn count_with(
    c: &mut Conn,
    want: usize,
    index: impl Fn(&IpNetwork) -> Option<usize>,
) -> io::Result<Instant> {
    let mut seen = vec![false; 1 << 20];
    let mut have = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(20));
    while have < want {
        let m = tokio::select! {
            m = read_msg(&mut c.r, &mut c.buf) => m?,
            _ = tick.tick() => {
                c.w.write_all(&encode(&Message::Keepalive)).await?;
                continue;
            }
        };
        if let Message::Update(u) = m {
            for n in &u.nlri {
                if let Some(i) = index(&n.prefix) {
                    if !seen[i] {
                        seen[i] = true;
                        have += 1;
                    }
                }
            }
        }
    }
    Ok(Instant::now())
}

/// Peak resident memory (VmHWM) and CPU seconds (user + system) of a process.
pub fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    let hz = 100.0; // USER_HZ on Linux
    (kb * 1024, (ticks(11) + ticks(12)) as f64 / hz)
}

/// The brindle-bgpd under test: this build's, or `BRINDLE_BENCH_BGPD` (another build, for
/// a before/after comparison on one machine).
pub fn bgpd_bin() -> String {
    std::env::var("BRINDLE_BENCH_BGPD")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_brindle-bgpd").into())
}

/// Starts `brindle-bgpd` (the benchmark's build, `bin`) in `ns` with `conf` written to `dir`,
/// logging warnings only.
pub fn spawn_bgpd(
    ns: &brindle_testsupport::Netns,
    dir: &tempfile::TempDir,
    conf: &str,
    bin: &str,
) -> brindle_testsupport::ChildGuard {
    let path = dir.path().join("bgpd.toml");
    std::fs::write(&path, conf).expect("config");
    let child = ns
        .command(&[
            bin,
            "--config",
            &path.display().to_string(),
            "--log",
            "warn",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("brindle-bgpd");
    brindle_testsupport::ChildGuard(child)
}
