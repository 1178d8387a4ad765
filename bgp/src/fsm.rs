//! The BGP session state machine of RFC 4271 §8, sans-IO: [`Session::process`] takes an
//! [`Input`] (an RFC event) and returns [`Output`]s (send this, arm that timer, the session
//! is up). A driver turns outputs into socket writes and timers; nothing here blocks.
//!
//! Connection collisions (§6.8) involve two connections, so the driver resolves them with
//! [`collision_keeps_incoming`] and dumps the loser with [`Input::OpenCollisionDump`].

use std::net::Ipv4Addr;

use crate::codec::{
    Afi, Capability, Ctx, DecodeError, Message, Notification, Open, Update, AS_TRANS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

/// A session's settings (one peer).
#[derive(Debug, Clone)]
pub struct Config {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// The AS the peer must have.
    pub peer_as: u32,
    /// Our hold time offer: 0 or at least 3 seconds.
    pub hold_time: u16,
    pub connect_retry_secs: u32,
    /// Wait for the peer to connect; never connect ourselves.
    pub passive: bool,
    /// Capabilities we advertise (4-octet AS is always added).
    pub capabilities: Vec<Capability>,
    /// The BGP identifier the peer must present (a cluster node's router ID): any other is
    /// refused with NOTIFICATION 2/3. None: any valid identifier.
    pub expect_id: Option<Ipv4Addr>,
}

/// RFC 4271 §8.2.2's "large value" for the hold timer before OPEN is received.
const OPEN_HOLD_SECS: u32 = 240;

/// The RFC 4271 §8.1 events this machine takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Event 1.
    ManualStart,
    /// Event 2.
    ManualStop,
    /// Events 16/17: the TCP connection is up (either direction).
    TcpConnected,
    /// Event 18.
    TcpFails,
    /// Events 9, 10, 11.
    TimerExpired(Timer),
    /// Events 19–28: a message arrived.
    Message(Message),
    /// Events 21, 22, 28: a message did not decode.
    DecodeError(DecodeError),
    /// Event 23: this connection lost a collision.
    OpenCollisionDump,
    /// Close the session with this Cease subcode and data (RFC 4486), as the owner decided:
    /// 1 when the peer sent more prefixes than it may.
    Cease { subcode: u8, data: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection.
    Disconnect,
    Send(Message),
    StartTimer(Timer, u32),
    StopTimer(Timer),
    /// The session reached Established with what was negotiated.
    Up(Negotiated),
    /// The session left Established (or never got there), and why.
    Down(String),
    /// An UPDATE for the RIB.
    Update(Box<Update>),
    /// The peer asks us to send our routes again (RFC 2918 / RFC 7313).
    RouteRefresh(crate::codec::RouteRefresh),
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    /// How to decode what the peer sends.
    pub rx: Ctx,
    /// How to encode what we send (add-path differs by direction, RFC 7911 §5).
    pub tx: Ctx,
    /// Families both sides announced (IPv4 unicast when neither used multiprotocol).
    pub families: Vec<(Afi, u8)>,
    pub route_refresh: bool,
    /// The peer's graceful-restart capability, if it sent one.
    pub peer_graceful_restart: Option<Capability>,
}

pub struct Session {
    cfg: Config,
    state: State,
    negotiated: Option<Negotiated>,
}

/// RFC 4271 §6.8: of two connections between the same speakers, the one opened by the
/// speaker with the higher BGP identifier survives. True when the connection the peer
/// opened (incoming) is the one to keep.
pub fn collision_keeps_incoming(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(remote_id) > u32::from(local_id)
}

fn notify(code: u8, subcode: u8) -> Output {
    Output::Send(Message::Notification(Notification {
        code,
        subcode,
        data: vec![],
    }))
}

impl Session {
    pub fn new(cfg: Config) -> Session {
        Session {
            cfg,
            state: State::Idle,
            negotiated: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// How to decode the peer's messages (defaults until OPENs are exchanged).
    pub fn rx_ctx(&self) -> Ctx {
        self.negotiated
            .as_ref()
            .map(|n| n.rx.clone())
            .unwrap_or_default()
    }

    fn open(&self) -> Message {
        Message::Open(Open::new(
            self.cfg.local_as,
            self.cfg.hold_time,
            self.cfg.router_id,
            self.cfg.capabilities.clone(),
        ))
    }

    /// Back to Idle: stop every timer, close the connection.
    fn drop_to_idle(&mut self, out: &mut Vec<Output>, why: String) {
        self.state = State::Idle;
        self.negotiated = None;
        out.extend([
            Output::StopTimer(Timer::ConnectRetry),
            Output::StopTimer(Timer::Hold),
            Output::StopTimer(Timer::Keepalive),
            Output::Disconnect,
        ]);
        out.push(Output::Down(why));
    }

    pub fn process(&mut self, input: Input) -> Vec<Output> {
        use State::*;
        let mut out = vec![];
        match (self.state, input) {
            (Idle, Input::ManualStart) => {
                out.push(Output::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry_secs,
                ));
                if self.cfg.passive {
                    self.state = Active;
                } else {
                    self.state = Connect;
                    out.push(Output::Connect);
                }
            }
            (Idle, _) => {} // RFC 4271 §8.2.2: other events are ignored in Idle
            (_, Input::ManualStop) => {
                if matches!(self.state, OpenSent | OpenConfirm | Established) {
                    out.push(notify(6, 2)); // Cease / administrative shutdown
                }
                self.drop_to_idle(&mut out, "stopped by the operator".into());
            }
            (_, Input::Cease { subcode, data }) => {
                if matches!(self.state, OpenSent | OpenConfirm | Established) {
                    out.push(Output::Send(Message::Notification(Notification {
                        code: 6,
                        subcode,
                        data,
                    })));
                }
                let why = match subcode {
                    1 => "closed: the peer sent more prefixes than its limit (Cease 6/1)".into(),
                    s => format!("closed with Cease 6/{s}"),
                };
                self.drop_to_idle(&mut out, why);
            }
            (Connect | Active, Input::TcpConnected) => {
                out.push(Output::StopTimer(Timer::ConnectRetry));
                out.push(Output::Send(self.open()));
                out.push(Output::StartTimer(Timer::Hold, OPEN_HOLD_SECS));
                self.state = OpenSent;
            }
            (Connect, Input::TcpFails) => {
                out.push(Output::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry_secs,
                ));
                self.state = Active;
            }
            (Connect, Input::TimerExpired(Timer::ConnectRetry)) => {
                out.push(Output::Disconnect);
                out.push(Output::Connect);
                out.push(Output::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry_secs,
                ));
            }
            (Active, Input::TimerExpired(Timer::ConnectRetry)) => {
                out.push(Output::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry_secs,
                ));
                if !self.cfg.passive {
                    out.push(Output::Connect);
                    self.state = Connect;
                }
            }
            (Connect | Active, _) => {}
            (OpenSent | OpenConfirm | Established, Input::TcpFails) => {
                self.drop_to_idle(&mut out, "the TCP connection failed".into());
            }
            (OpenSent | OpenConfirm | Established, Input::TimerExpired(Timer::Hold)) => {
                out.push(notify(4, 0));
                self.drop_to_idle(&mut out, "hold timer expired".into());
            }
            (OpenSent | OpenConfirm | Established, Input::DecodeError(e)) => {
                out.push(Output::Send(Message::Notification(
                    Notification::from_error(&e),
                )));
                self.drop_to_idle(&mut out, format!("bad message from the peer: {e}"));
            }
            (OpenSent | OpenConfirm, Input::OpenCollisionDump) => {
                out.push(notify(6, 7));
                self.drop_to_idle(
                    &mut out,
                    "connection collision: the other connection won".into(),
                );
            }
            (_, Input::Message(Message::Notification(n))) => {
                let text = n
                    .shutdown_message()
                    .map(|m| format!(": {m:?}"))
                    .unwrap_or_default();
                self.drop_to_idle(
                    &mut out,
                    format!("NOTIFICATION {}/{} from the peer{text}", n.code, n.subcode),
                );
            }
            (OpenSent, Input::Message(Message::Open(o))) => match self.check_open(&o) {
                Ok(neg) => {
                    out.push(Output::StopTimer(Timer::ConnectRetry));
                    out.push(Output::Send(Message::Keepalive));
                    if neg.hold_time > 0 {
                        out.push(Output::StartTimer(
                            Timer::Keepalive,
                            u32::from(neg.keepalive),
                        ));
                        out.push(Output::StartTimer(Timer::Hold, u32::from(neg.hold_time)));
                    } else {
                        out.push(Output::StopTimer(Timer::Hold));
                    }
                    self.negotiated = Some(neg);
                    self.state = OpenConfirm;
                }
                Err(e) => {
                    out.push(Output::Send(Message::Notification(
                        Notification::from_error(&e),
                    )));
                    self.drop_to_idle(&mut out, format!("refused the peer's OPEN: {e}"));
                }
            },
            (OpenConfirm, Input::Message(Message::Keepalive)) => {
                self.restart_hold(&mut out);
                self.state = Established;
                if let Some(n) = &self.negotiated {
                    out.push(Output::Up(n.clone()));
                }
            }
            (OpenConfirm | Established, Input::TimerExpired(Timer::Keepalive)) => {
                out.push(Output::Send(Message::Keepalive));
                if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
                    out.push(Output::StartTimer(Timer::Keepalive, u32::from(n.keepalive)));
                }
            }
            (Established, Input::Message(Message::Keepalive)) => self.restart_hold(&mut out),
            (Established, Input::Message(Message::Update(u))) => {
                self.restart_hold(&mut out);
                out.push(Output::Update(u));
            }
            (Established, Input::Message(Message::RouteRefresh(r))) => {
                self.restart_hold(&mut out);
                out.push(Output::RouteRefresh(r));
            }
            (s, Input::Message(_)) | (s, Input::TimerExpired(Timer::ConnectRetry)) => {
                // RFC 4271 §6.6: a message that makes no sense in this state (and the
                // connect-retry timer once the connection is up) is an FSM error.
                let sub = match s {
                    OpenSent => 1,
                    OpenConfirm => 2,
                    _ => 3,
                };
                out.push(notify(5, sub));
                self.drop_to_idle(&mut out, format!("finite state machine error in {s:?}"));
            }
            (_, Input::TimerExpired(Timer::Keepalive))
            | (_, Input::OpenCollisionDump)
            | (_, Input::TcpConnected) => {}
            (_, Input::ManualStart) => {}
        }
        out
    }

    fn restart_hold(&self, out: &mut Vec<Output>) {
        if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
            out.push(Output::StartTimer(Timer::Hold, u32::from(n.hold_time)));
        }
    }

    /// RFC 4271 §6.2 and RFC 6793 checks on the peer's OPEN, and what it negotiates.
    fn check_open(&self, o: &Open) -> Result<Negotiated, DecodeError> {
        let peer_four = o
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)));
        let peer_as = o.asn();
        if (!peer_four && o.my_as == AS_TRANS) || peer_as != self.cfg.peer_as {
            return Err(DecodeError::BadPeerAs(peer_as));
        }
        // RFC 6286: not zero, and an iBGP peer must not have our identifier.
        if o.bgp_id.is_unspecified()
            || (peer_as == self.cfg.local_as && o.bgp_id == self.cfg.router_id)
        {
            return Err(DecodeError::BadBgpIdentifier(o.bgp_id));
        }
        // A cluster node is the router ID its node record carries, or not that node (a pod
        // masqueraded to a node's address, say).
        if self.cfg.expect_id.is_some_and(|id| id != o.bgp_id) {
            return Err(DecodeError::BadBgpIdentifier(o.bgp_id));
        }
        if o.hold_time == 1 || o.hold_time == 2 {
            return Err(DecodeError::UnacceptableHoldTime(o.hold_time));
        }
        let hold_time = self.cfg.hold_time.min(o.hold_time);
        let ours = &self.cfg.capabilities;
        let both = |pred: &dyn Fn(&Capability) -> bool| {
            ours.iter().any(pred) && o.capabilities.iter().any(pred)
        };
        let mp = |caps: &[Capability]| -> Vec<(Afi, u8)> {
            let v: Vec<_> = caps
                .iter()
                .filter_map(|c| match c {
                    Capability::Multiprotocol { afi, safi } => Some((*afi, *safi)),
                    _ => None,
                })
                .collect();
            if v.is_empty() {
                vec![(Afi::Ipv4, 1)]
            } else {
                v
            }
        };
        let peer_families = mp(&o.capabilities);
        let families: Vec<_> = mp(ours)
            .into_iter()
            .filter(|f| peer_families.contains(f))
            .collect();
        // RFC 5492 §5: without one address family in common the session could carry
        // nothing; say which capabilities we needed (2/7, our Multiprotocol capabilities).
        if families.is_empty() {
            let data = mp(ours)
                .iter()
                .flat_map(|(afi, safi)| {
                    let a = afi.to_u16().to_be_bytes();
                    [1, 4, a[0], a[1], 0, *safi]
                })
                .collect();
            return Err(DecodeError::UnsupportedCapability(data));
        }
        // Add-path (RFC 7911 §5): we receive path identifiers where we said Receive and they
        // said Send, and send them where we said Send and they said Receive.
        let mode = |caps: &[Capability], afi: Afi, safi: u8| {
            caps.iter()
                .find_map(|c| match c {
                    Capability::AddPath(v) => v
                        .iter()
                        .find(|x| x.0 == afi && x.1 == safi)
                        .map(|x| x.2 as u8),
                    _ => None,
                })
                .unwrap_or(0)
        };
        let add_path = |we: u8, they: u8| -> Vec<(Afi, u8)> {
            families
                .iter()
                .filter(|(a, s)| {
                    mode(ours, *a, *s) & we != 0 && mode(&o.capabilities, *a, *s) & they != 0
                })
                .copied()
                .collect()
        };
        let extended_message = both(&|c| matches!(c, Capability::ExtendedMessage));
        let rx = Ctx {
            four_octet_as: peer_four,
            add_path: add_path(1, 2),
            extended_message,
        };
        let tx = Ctx {
            four_octet_as: peer_four,
            add_path: add_path(2, 1),
            extended_message,
        };
        Ok(Negotiated {
            peer_as,
            peer_id: o.bgp_id,
            hold_time,
            keepalive: hold_time / 3,
            rx,
            tx,
            families,
            route_refresh: both(&|c| matches!(c, Capability::RouteRefresh)),
            peer_graceful_restart: o
                .capabilities
                .iter()
                .find(|c| matches!(c, Capability::GracefulRestart { .. }))
                .cloned(),
        })
    }
}
