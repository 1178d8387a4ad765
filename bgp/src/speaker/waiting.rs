//! Connections from addresses that are not peers yet. A node's agent learns of a new node
//! from the datastore a moment after that node's speaker does and dials: refused, the dialer
//! would wait out its retry timer (2 s in Calico's template) before trying again. The
//! speaker holds such a connection for a few seconds instead, and hands it to the session if
//! the address becomes a peer meanwhile. Bounded — a few per address, a few dozen in all —
//! beyond which connections are refused at once, as before: anyone can connect.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a connection from an unknown address is held.
pub(super) const HOLD: Duration = Duration::from_secs(3);
const PER_ADDR: usize = 2;
const TOTAL: usize = 32;

struct Held {
    addr: IpAddr,
    from: SocketAddr,
    stream: TcpStream,
    at: Instant,
}

#[derive(Default)]
pub(super) struct Waiting {
    held: VecDeque<Held>,
}

impl Waiting {
    /// Holds `stream` from `addr`; gives it back when over the bounds (to be refused).
    pub fn hold(
        &mut self,
        addr: IpAddr,
        from: SocketAddr,
        stream: TcpStream,
    ) -> Result<(), TcpStream> {
        let mine = self.held.iter().filter(|h| h.addr == addr).count();
        if mine >= PER_ADDR || self.held.len() >= TOTAL {
            return Err(stream);
        }
        self.held.push_back(Held {
            addr,
            from,
            stream,
            at: Instant::now(),
        });
        Ok(())
    }

    /// What is held from `addr`, oldest first.
    pub fn take(&mut self, addr: IpAddr) -> Vec<(TcpStream, SocketAddr)> {
        let (theirs, rest): (VecDeque<Held>, VecDeque<Held>) =
            self.held.drain(..).partition(|h| h.addr == addr);
        self.held = rest;
        theirs.into_iter().map(|h| (h.stream, h.from)).collect()
    }

    /// Closes what has been held for [`HOLD`]; their sources.
    pub fn expire(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut gone = vec![];
        while self
            .held
            .front()
            .is_some_and(|h| now.duration_since(h.at) >= HOLD)
        {
            if let Some(h) = self.held.pop_front() {
                gone.push(h.from);
            }
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }
}
