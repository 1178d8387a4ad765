//! Denied packets, from the kernel to the agent (`--log-denied`, issue 29).
//!
//! With it on, an isolated pod's chain sends what it is about to drop to an nfnetlink_log
//! group first (`-m limit … -j NFLOG`, [`crate::policy::PolicyContext::log_denied`]), with a
//! prefix naming the direction and the pod's interface ([`prefix`]). [`Listener`] binds
//! that group on a netfilter netlink socket (the node's network namespace: one listener a
//! group) and [`parse`] turns each message into a [`Denied`]: which interface, which
//! direction, and the packet's addresses, protocol and ports (the first 64 bytes of it are
//! copied, never more). IPv4 and IPv6 (the IPv6 rules log to the same group).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_core::{NetlinkBuffer, NlasIterator};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// Every prefix of ours starts so; another rule's NFLOG to the same group is ignored.
pub const PREFIX: &str = "brl:D:";
/// The default group (Calico's own are 1 and 2; ulogd's examples use 1 and 2 too).
pub const DEFAULT_GROUP: u16 = 30;
/// Bytes of each packet copied to us: the IPv4 header and the ports behind it.
const COPY_RANGE: u32 = 64;

/// The NFLOG prefix of a pod's denied packets in one direction.
pub fn prefix(ingress: bool, veth: &str) -> String {
    format!("{PREFIX}{}:{veth}", if ingress { 'I' } else { 'E' })
}

/// One packet an isolated pod's chain dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Towards the pod (its ingress) or from it (its egress).
    pub ingress: bool,
    /// The pod's host interface.
    pub veth: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6…).
    pub protocol: u8,
    /// Source and destination ports, for TCP, UDP and SCTP.
    pub ports: Option<(u16, u16)>,
}

impl Denied {
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            132 => "sctp".into(),
            n => n.to_string(),
        }
    }
}

// linux/netfilter/nfnetlink.h, nfnetlink_log.h
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

/// The config message that binds `group` to the sending socket: copy packets (the first
/// [`COPY_RANGE`] bytes), and hand each over at once (queue threshold 1).
fn bind_message(group: u16, seq: u32) -> Vec<u8> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&group.to_be_bytes());
    attr(&mut body, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    attr(&mut body, NFULA_CFG_MODE, &mode);
    attr(&mut body, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The netlink messages of one datagram: (type, payload after the header). Stops at the
/// first malformed length.
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = vec![];
    let mut at = 0;
    while let Some(m) = datagram
        .get(at..)
        .and_then(|b| NetlinkBuffer::new_checked(b).ok())
    {
        out.push((m.message_type(), m.payload()));
        at += align4(m.length() as usize);
    }
    out
}

/// The attributes after a message's 4-byte nfgenmsg header: (type, value), up to the first
/// malformed one.
fn attributes(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(payload.get(4..).unwrap_or_default())
        .map_while(Result::ok)
        .map(|nla| (nla.kind(), nla.value().to_vec()))
        .collect()
}

/// Source and destination ports at the start of `l4`, for TCP, UDP and SCTP.
fn ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16)> {
    if !matches!(protocol, 6 | 17 | 132) {
        return None;
    }
    let l4 = l4.get(..4)?;
    Some((
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

/// A denied IPv4 packet, from its first bytes.
fn ipv4(ingress: bool, veth: &str, p: &[u8]) -> Option<Denied> {
    let first = *p.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let protocol = *p.get(9)?;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(16..20)?).ok()?);
    // A fragment after the first has no ports where they would be.
    let fragment_offset = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
    let ports = (fragment_offset == 0 && ihl >= 20)
        .then(|| ports(protocol, p.get(ihl..)?))
        .flatten();
    Some(Denied {
        ingress,
        veth: veth.to_string(),
        src: src.into(),
        dst: dst.into(),
        protocol,
        ports,
    })
}

/// A denied IPv6 packet, from its first bytes. The ports are read only when the fixed
/// header's next header is TCP, UDP or SCTP (behind extension headers there are none here).
fn ipv6(ingress: bool, veth: &str, p: &[u8]) -> Option<Denied> {
    if *p.first()? >> 4 != 6 {
        return None;
    }
    let protocol = *p.get(6)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
    let ports = p.get(40..).and_then(|l4| ports(protocol, l4));
    Some(Denied {
        ingress,
        veth: veth.to_string(),
        src: src.into(),
        dst: dst.into(),
        protocol,
        ports,
    })
}

/// The denied packets in one datagram from the group; anything else (another prefix, a
/// packet that is not IP, a truncated message) is skipped.
pub fn parse(datagram: &[u8]) -> Vec<Denied> {
    let packet = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
    let mut out = vec![];
    for (_, payload) in messages(datagram).into_iter().filter(|(k, _)| *k == packet) {
        let attrs = attributes(payload);
        let find = |k: u16| {
            attrs
                .iter()
                .find(|(t, _)| *t == k)
                .map(|(_, v)| v.as_slice())
        };
        let Some(prefix) = find(NFULA_PREFIX)
            .map(|v| v.split(|b| *b == 0).next().unwrap_or_default())
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.strip_prefix(PREFIX))
        else {
            continue;
        };
        let (ingress, veth) = match prefix.split_once(':') {
            Some(("I", v)) => (true, v),
            Some(("E", v)) => (false, v),
            _ => continue,
        };
        out.extend(
            find(NFULA_PAYLOAD)
                .and_then(|p| ipv4(ingress, veth, p).or_else(|| ipv6(ingress, veth, p))),
        );
    }
    out
}

/// A netfilter netlink socket bound to one NFLOG group.
pub struct Listener {
    socket: Socket,
    buf: Vec<u8>,
}

impl Listener {
    /// Binds `group` in this network namespace. Fails when another process holds the group
    /// (one listener a group) or nfnetlink_log is missing.
    pub fn bind(group: u16) -> std::io::Result<Listener> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        // Room for bursts: the kernel drops what does not fit (ENOBUFS, counted by the caller).
        socket.set_rx_buf_sz(1 << 20)?;
        socket.send(&bind_message(group, 1), 0)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = socket.recv(&mut &mut buf[..], 0)?.min(buf.len());
            for (kind, payload) in messages(&buf[..n]) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .unwrap_or(-libc::EINVAL);
                if code == 0 {
                    return Ok(Listener { socket, buf });
                }
                let e = std::io::Error::from_raw_os_error(-code);
                let why = match -code {
                    libc::EPERM | libc::EEXIST | libc::EBUSY => {
                        format!("NFLOG group {group} is held by another process (ulogd?): {e}")
                    }
                    _ => format!("cannot bind NFLOG group {group}: {e}"),
                };
                return Err(std::io::Error::new(e.kind(), why));
            }
        }
    }

    /// Waits for the next datagram and returns its denied packets (possibly none).
    pub fn recv(&mut self) -> std::io::Result<Vec<Denied>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        Ok(parse(&self.buf[..n.min(self.buf.len())]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it: nfgenmsg, a packet header attribute, the
    /// prefix (NUL-terminated) and the payload.
    fn packet_message(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0, 30];
        attr(&mut body, 1, &[0x08, 0x00, 3, 0]);
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        attr(&mut body, NFULA_PREFIX, &p);
        attr(&mut body, NFULA_PAYLOAD, payload);
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        msg.resize(align4(msg.len()), 0);
        msg
    }

    fn tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 60, 0, 1, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn reads_our_packets_and_skips_others() {
        let mut dgram = packet_message(
            &prefix(true, "brl1234abcd"),
            &tcp_syn([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80),
        );
        dgram.extend(packet_message(
            "someone else",
            &tcp_syn([1; 4], [2; 4], 1, 2),
        ));
        dgram.extend(packet_message(
            &prefix(false, "brlx"),
            &tcp_syn([10, 0, 0, 2], [10, 0, 0, 9], 5, 81),
        ));
        let got = parse(&dgram);
        assert_eq!(
            got,
            vec![
                Denied {
                    ingress: true,
                    veth: "brl1234abcd".into(),
                    src: "10.0.0.1".parse().unwrap(),
                    dst: "10.0.0.2".parse().unwrap(),
                    protocol: 6,
                    ports: Some((40000, 80)),
                },
                Denied {
                    ingress: false,
                    veth: "brlx".into(),
                    src: "10.0.0.2".parse().unwrap(),
                    dst: "10.0.0.9".parse().unwrap(),
                    protocol: 6,
                    ports: Some((5, 81)),
                },
            ]
        );
    }

    #[test]
    fn truncated_or_odd_input_yields_nothing_and_never_panics() {
        let whole = packet_message(
            &prefix(true, "brla"),
            &tcp_syn([10, 0, 0, 1], [10, 0, 0, 2], 1, 2),
        );
        for n in 0..whole.len() {
            let _ = parse(&whole[..n]);
        }
        // A later fragment carries no ports; an ICMP packet has none either.
        let mut frag = tcp_syn([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        frag[6] = 0x00;
        frag[7] = 0x10;
        let got = parse(&packet_message(&prefix(true, "brla"), &frag));
        assert_eq!(got[0].ports, None);
        let mut icmp = tcp_syn([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        icmp[9] = 1;
        assert_eq!(
            parse(&packet_message(&prefix(true, "brla"), &icmp))[0].ports,
            None
        );
        // Not IP, a truncated IPv6 header, or an unknown direction: skipped.
        assert!(parse(&packet_message(&prefix(true, "brla"), &[0x50; 40])).is_empty());
        assert!(parse(&packet_message(&prefix(true, "brla"), &[0x60; 39])).is_empty());
        assert!(parse(&packet_message("brl:D:X:brla", &icmp)).is_empty());
    }

    #[test]
    fn reads_ipv6_packets() {
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&80u16.to_be_bytes());
        let got = parse(&packet_message(&prefix(true, "brl6"), &p));
        assert_eq!(
            got,
            vec![Denied {
                ingress: true,
                veth: "brl6".into(),
                src: "fd00::1".parse().unwrap(),
                dst: "fd00::2".parse().unwrap(),
                protocol: 6,
                ports: Some((40000, 80)),
            }]
        );
        // ICMPv6: no ports. Cut anywhere: never a panic.
        p[6] = 58;
        assert_eq!(
            parse(&packet_message(&prefix(true, "brl6"), &p))[0].ports,
            None
        );
        for n in 0..p.len() {
            let _ = parse(&packet_message(&prefix(true, "brl6"), &p[..n]));
        }
    }

    #[test]
    fn the_bind_message_is_well_formed() {
        let m = bind_message(30, 7);
        let b = NetlinkBuffer::new_checked(&m[..]).unwrap();
        assert_eq!(b.length() as usize, m.len());
        assert_eq!(b.message_type(), 0x0401);
        assert_eq!(&m[16..20], &[0, 0, 0, 30]);
        let attrs = attributes(&m[16..]);
        // linux/netfilter/nfnetlink_log.h: CMD 1, MODE 2, QTHRESH 5.
        assert_eq!(attrs[0], (NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND]));
        assert_eq!(attrs[1], (NFULA_CFG_MODE, vec![0, 0, 0, 64, 2, 0]));
        assert_eq!(attrs[2], (5, vec![0, 0, 0, 1]));
    }
}
