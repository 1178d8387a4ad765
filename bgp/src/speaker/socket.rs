//! Sockets with BGP's settings: the listener, outgoing connections bound to a source
//! address, TTL (1 for a directly connected eBGP peer, the multihop value otherwise; 255
//! and a minimum accepted TTL with GTSM) and TCP MD5 keys.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{sockopt, PeerConfig};

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    // The SYN-ACK leaves with the listener's TTL, before the accepted connection gets its
    // peer's: a GTSM peer dialling us drops anything under 255 (the connection's own TTL is
    // set per peer right after accept, so others see their usual TTL from then on).
    set_ttl(&SockRef::from(&s), addr.is_ipv6(), 255)?;
    // GTSM peers' connections are checked by the TTL of their SYN (see `check_syn_ttl`).
    sockopt::save_syn(&s)?;
    s.listen(1024)
}

/// For a GTSM peer, refuses an accepted connection whose SYN arrived with less TTL than
/// allowed. The minimum TTL set on the connection after accepting it stops only what
/// arrives later: without this, a peer further away could complete the handshake and have
/// its OPEN and KEEPALIVE queued before the check was in place.
pub fn check_syn_ttl(s: &TcpStream, p: &PeerConfig) -> io::Result<()> {
    let Some(hops) = p.ttl_security else {
        return Ok(());
    };
    let min = 256 - u16::from(hops.max(1));
    match sockopt::syn_ttl(s)? {
        Some(ttl) if u16::from(ttl) >= min => Ok(()),
        Some(ttl) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "its SYN arrived with TTL {ttl}, and GTSM ({hops} hops) accepts no less than {min}"
            ),
        )),
        None => Err(io::Error::other("the TTL of its SYN is unknown")),
    }
}

/// The TTL our packets to this peer carry.
pub fn ttl(p: &PeerConfig, local_as: u32) -> u32 {
    match p.multihop {
        _ if p.ttl_security.is_some() => 255,
        Some(h) => u32::from(h),
        None if p.asn != local_as => 1,
        None => 64,
    }
}

/// A connection's TTL, and with GTSM the least TTL accepted from the peer.
pub fn set_ttls(s: SockRef<'_>, v6: bool, p: &PeerConfig, local_as: u32) -> io::Result<()> {
    set_ttl(&s, v6, ttl(p, local_as))?;
    match p.ttl_security {
        Some(hops) => sockopt::set_min_ttl(&*s, v6, (256 - u16::from(hops.max(1))) as u8),
        None => Ok(()),
    }
}

fn set_ttl(s: &socket2::Socket, v6: bool, ttl: u32) -> io::Result<()> {
    if v6 {
        // A dual-stack socket may carry IPv4 (mapped) traffic too: that takes IP_TTL.
        let _ = s.set_ttl_v4(ttl);
        s.set_unicast_hops_v6(ttl)
    } else {
        s.set_ttl_v4(ttl)
    }
}

/// Connects to the peer with its source address, TTL and MD5 key.
pub async fn connect(p: &PeerConfig, local_as: u32) -> io::Result<TcpStream> {
    let v6 = p.addr.is_ipv6();
    let s = if v6 {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(key) = &p.password {
        sockopt::set_key(&s, p.addr, key.as_bytes())?;
    }
    if let Some(src) = p.source {
        s.bind(SocketAddr::new(src, 0))?;
    }
    set_ttls(SockRef::from(&s), v6, p, local_as)?;
    s.set_nodelay(true)?;
    s.connect(SocketAddr::new(p.addr, p.port)).await
}

/// Installs (or removes, with None) a peer's MD5 key on the listener.
pub fn listener_key(l: &TcpListener, peer: IpAddr, key: Option<&str>) -> io::Result<()> {
    sockopt::set_key(l, peer, key.unwrap_or("").as_bytes())
}
