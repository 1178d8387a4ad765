//! Sockets with BGP's settings: the listener, outgoing connections bound to a source
//! address, TTL (1 for a directly connected eBGP peer, the multihop value otherwise) and
//! TCP MD5 keys.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{md5, PeerConfig};

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// The TTL our packets to this peer carry.
pub fn ttl(p: &PeerConfig, local_as: u32) -> u32 {
    match p.multihop {
        Some(h) => u32::from(h),
        None if p.asn != local_as => 1,
        None => 64,
    }
}

pub fn set_ttl(s: SockRef<'_>, v6: bool, ttl: u32) -> io::Result<()> {
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
        md5::set_key(&s, p.addr, key.as_bytes())?;
    }
    if let Some(src) = p.source {
        s.bind(SocketAddr::new(src, 0))?;
    }
    set_ttl(SockRef::from(&s), v6, ttl(p, local_as))?;
    s.set_nodelay(true)?;
    s.connect(SocketAddr::new(p.addr, p.port)).await
}

/// Installs (or removes, with None) a peer's MD5 key on the listener.
pub fn listener_key(l: &TcpListener, peer: IpAddr, key: Option<&str>) -> io::Result<()> {
    md5::set_key(l, peer, key.unwrap_or("").as_bytes())
}
