use std::net::{SocketAddr, TcpListener};

/// A loopback port that was free a moment ago. A process started on it may still lose a race
/// with another; callers retry on a failed start.
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(l.local_addr()?.port())
}
