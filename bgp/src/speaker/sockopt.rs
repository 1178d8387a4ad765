//! The socket options the standard library and socket2 lack, the one place the speaker
//! needs `unsafe` (each a single `setsockopt` or `getsockopt` call): TCP MD5 signatures
//! (RFC 2385, Linux's `TCP_MD5SIG`), the minimum TTL GTSM asks for (RFC 5082, `IP_MINTTL` /
//! `IPV6_MINHOPCOUNT`), and the TTL of the SYN that opened an accepted connection
//! (`TCP_SAVE_SYN`), which GTSM checks too.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

/// Linux's `TCP_MD5SIG_MAXKEYLEN`.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: u32,
    key: [u8; MAX_KEY_LEN],
}

/// Sets (or, with an empty key, removes) the key for segments to and from `peer` on this
/// socket. On a listening socket it applies to the connections it accepts from `peer`.
pub fn set_key(sock: &impl AsFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    // An IPv6 socket (a dual-stack listener) names IPv4 peers by their mapped address.
    let v6_socket = socket2::SockRef::from(sock).domain()? == socket2::Domain::IPV6;
    let peer = match peer {
        IpAddr::V4(a) if v6_socket => IpAddr::V6(a.to_ipv6_mapped()),
        p => p,
    };
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 key longer than {MAX_KEY_LEN} bytes"),
        ));
    }
    // SAFETY: sockaddr_storage and the rest are plain integers; all-zero is valid.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
        }
        IpAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(sock, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// Drops (in the kernel) every segment of this connection that arrives with a TTL (hop
/// limit) below `min`: GTSM's check. On an IPv6 socket both options are set, since it may
/// carry IPv4 (mapped) traffic too.
pub fn set_min_ttl(sock: &impl AsFd, v6: bool, min: u8) -> io::Result<()> {
    let v = libc::c_int::from(min);
    let set = |level, name| setsockopt(sock, level, name, &v);
    if v6 {
        let _ = set(libc::IPPROTO_IP, libc::IP_MINTTL);
        set(libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT)
    } else {
        set(libc::IPPROTO_IP, libc::IP_MINTTL)
    }
}

/// Has the kernel keep the headers of the SYN that opens each connection this listener
/// accepts, for [`syn_ttl`].
pub fn save_syn(listener: &impl AsFd) -> io::Result<()> {
    setsockopt(
        listener,
        libc::IPPROTO_TCP,
        libc::TCP_SAVE_SYN,
        &1 as &libc::c_int,
    )
}

/// The TTL (IPv4) or hop limit (IPv6) the SYN that opened this accepted connection arrived
/// with; None when the listener did not save it. The kernel gives the headers once.
pub fn syn_ttl(sock: &impl AsFd) -> io::Result<Option<u8>> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the pointer and length describe `buf`; the kernel writes at most `len` bytes
    // and sets `len` to how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The network header first: IPv4's TTL is octet 8, IPv6's hop limit octet 7.
    let headers = &buf[..(len as usize).min(buf.len())];
    Ok(match headers.first().map(|b| b >> 4) {
        Some(4) => headers.get(8).copied(),
        Some(6) => headers.get(7).copied(),
        _ => None,
    })
}

/// `setsockopt(2)` with `value` as the option's bytes.
fn setsockopt<T>(
    sock: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
