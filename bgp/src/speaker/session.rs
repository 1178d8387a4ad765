//! One task per peer: drives [`fsm::Session`] over the current connection, turns its outputs
//! into writes and timers, resolves connection collisions (RFC 4271 §6.8), and reports to the
//! core. Writes go through a writer task so a peer that stops reading never blocks our reads.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::pack::{end_of_rib, pack, pack_wants};
use super::socket;
use super::PeerConfig;
use crate::adj_out::{Sent, Want};
use crate::codec::{
    self, Afi, Capability, Ctx, Message, Notification, Open, RouteRefresh, Update, SAFI_UNICAST,
};
use crate::fsm::{self, collision_keeps_incoming, Input, Negotiated, Output, State, Timer};
use crate::rib::PeerId;

/// What goes to a connection's writer task, in order.
pub enum Out {
    /// Encoded messages: from the session (OPEN, KEEPALIVE, NOTIFICATION), or UPDATEs the
    /// core encoded once for the peer's update group.
    Raw(Bytes),
    /// The session is up: encode routes this way from now on.
    Ctx(Ctx),
    /// Routes as the peer should now have them, packed into UPDATEs. Without add-path the
    /// core sends only changes; with it the writer keeps what was sent (the Adj-RIB-Out)
    /// and sends the difference.
    Routes(Vec<Want>),
    EndOfRib(Afi),
    /// Forget what was sent in a family (a route refresh resends all of it).
    Forget(Afi),
}

impl Out {
    /// Roughly what the message holds in memory, for the queue's bound.
    fn weight(&self) -> usize {
        match self {
            Out::Raw(b) => b.len(),
            Out::Routes(w) => 64 * w.len(),
            _ => 64,
        }
    }
}

/// What one connection's queue may hold before the peer is dropped: a peer that stops
/// reading is not buffered without end. (A whole table of a million routes is ~30 MiB.)
const MAX_QUEUED: usize = 256 << 20;

/// A connection's write queue, fed by the session and the core, drained by its writer task.
/// Bounded by what it holds: past [`MAX_QUEUED`] nothing more is taken and the connection is
/// dropped; a peer that reads nothing for its hold time is dropped too.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Out>,
    q: Queue,
}

/// What the senders and the writer task share (not the sender itself: the queue closes, and
/// the writer ends, when the last sender is gone).
#[derive(Clone, Default)]
struct Queue {
    queued: Arc<AtomicUsize>,
    overflow: Arc<tokio::sync::Notify>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

/// The connection is gone or is being dropped; the message was not queued.
#[derive(Debug)]
pub struct Closed;

impl Writer {
    pub fn send(&self, m: Out) -> Result<(), Closed> {
        let q = &self.q;
        if q.dead.load(Ordering::Relaxed) {
            return Err(Closed);
        }
        let n = m.weight();
        if q.queued.fetch_add(n, Ordering::AcqRel) + n > MAX_QUEUED {
            // Nothing after this may be queued either: the stream would have a hole.
            q.dead.store(true, Ordering::Relaxed);
            q.overflow.notify_one();
            return Err(Closed);
        }
        self.tx.send(m).map_err(|_| Closed)
    }
}

/// Backpressure from the core: a session stops reading while this many of its UPDATEs wait
/// to be processed, so a fast peer fills TCP's window, not our memory.
const MAX_INFLIGHT: usize = 64;

#[derive(Default)]
pub struct Inflight {
    n: std::sync::atomic::AtomicUsize,
    wake: tokio::sync::Notify,
}

impl Inflight {
    fn full(&self) -> bool {
        self.n.load(std::sync::atomic::Ordering::Acquire) >= MAX_INFLIGHT
    }

    /// The core has processed one UPDATE.
    pub fn done(&self) {
        self.n.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// What a session tells the core.
pub enum Event {
    Up {
        peer: PeerId,
        neg: Box<Negotiated>,
        local: SocketAddr,
        writer: Writer,
        /// How many routes the writer has advertised (its Adj-RIB-Out size).
        advertised: Arc<AtomicUsize>,
    },
    Update {
        peer: PeerId,
        update: Box<Update>,
    },
    Refresh {
        peer: PeerId,
        rr: RouteRefresh,
    },
    /// The session left Established (or an attempt failed). `keep_routes`: the peer is
    /// graceful-restart capable and the session ended without a NOTIFICATION (RFC 4724 §4.2).
    Down {
        peer: PeerId,
        reason: String,
        keep_routes: bool,
    },
    State {
        peer: PeerId,
        state: State,
    },
}

pub enum SessionCmd {
    /// A connection the peer opened (from the listener).
    Incoming(TcpStream),
    /// Stop; with `notify`, send Cease/administrative shutdown first.
    Stop {
        notify: bool,
        done: oneshot::Sender<()>,
    },
    /// Close the session with Cease and this subcode (1: over the prefix limit), and try
    /// again after the back-off.
    Cease { subcode: u8, data: Vec<u8> },
    /// Ask the peer for its routes of a family again (ROUTE-REFRESH, RFC 2918).
    Refresh(Afi),
}

/// An incoming connection whose first message (the peer's OPEN) has been read and decoded;
/// `buf` holds whatever came after it.
struct Pending {
    stream: TcpStream,
    buf: BytesMut,
    open: Open,
}

struct Conn {
    reader: OwnedReadHalf,
    buf: BytesMut,
    writer: Writer,
    local: SocketAddr,
    advertised: Arc<AtomicUsize>,
    written: tokio::task::JoinHandle<()>,
    /// Notified when the writer task ends.
    gone: Arc<tokio::sync::Notify>,
    /// How much to reserve for the next read (grows while reads fill the buffer).
    read_size: usize,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

pub struct SessionTask {
    pub id: PeerId,
    /// We are a restarting speaker that has not converged yet (shared with the core).
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
    pub inflight: Arc<Inflight>,
    pub cfg: PeerConfig,
    pub fsm_cfg: fsm::Config,
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub events: mpsc::UnboundedSender<Event>,
    pub cmds: mpsc::UnboundedReceiver<SessionCmd>,
}

/// How many connections from one peer address may wait for their OPEN at once (each for at
/// most 30 s): an address cannot hold more open.
const MAX_OPENING: usize = 4;

/// Reads the first message of an incoming connection (the peer's OPEN).
async fn read_open(mut stream: TcpStream) -> Option<Pending> {
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        loop {
            if let Some(m) = codec::next_message(&mut buf) {
                return match codec::decode(&m, &Ctx::default()) {
                    Ok(Message::Open(o)) => Some(o),
                    _ => None,
                };
            }
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    let open = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .ok()??;
    Some(Pending { stream, buf, open })
}

/// Sends a NOTIFICATION on a connection that will not carry the session, and closes it.
fn notify_and_close(p: Pending, code: u8, subcode: u8) {
    let note = encode(
        &Message::Notification(Notification {
            code,
            subcode,
            data: vec![],
        }),
        &Ctx::default(),
    );
    tokio::spawn(async move {
        let mut s = p.stream;
        let _ = s.write_all(&note).await;
        let _ = s.shutdown().await;
    });
}

/// Messages already encoded elsewhere at least this long are written from the shared
/// buffer, not copied: an update group's table, held once for all its members.
const SHARED_MIN: usize = 4096;

fn overflowed(peer: std::net::IpAddr) {
    warn!(%peer, limit_mib = MAX_QUEUED >> 20, "the peer is not reading fast enough: its write queue is full; dropping the connection");
}

/// The writer task: owns the connection's write half and its Adj-RIB-Out. It ends (and the
/// session sees the connection fail) when a write fails, when the peer has read nothing for
/// `stall`, or when the queue overflows.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    advertised: Arc<AtomicUsize>,
    q: Queue,
    peer: std::net::IpAddr,
    stall: Duration,
) {
    let mut sent = Sent::default();
    let mut ctx = Ctx::default();
    // What goes out next, in order: encoded here into `batch`, or shared buffers.
    let mut batch = BytesMut::new();
    let mut chunks: Vec<Bytes> = vec![];
    let mut handle = |m: Out, batch: &mut BytesMut, chunks: &mut Vec<Bytes>| match m {
        Out::Raw(b) if b.len() >= SHARED_MIN => {
            if !batch.is_empty() {
                chunks.push(batch.split().freeze());
            }
            chunks.push(b);
        }
        Out::Raw(b) => batch.extend_from_slice(&b),
        Out::Ctx(c) => ctx = c,
        // (Adverts are not kept between messages: a table's worth, kept by each of
        // thousands of writers, was most of a reflector's memory.)
        Out::Routes(wants) if ctx.add_path(Afi::Ipv4, SAFI_UNICAST) => {
            let mut adverts = vec![];
            for w in wants {
                sent.apply(w, &mut adverts);
            }
            pack(&adverts, &ctx, batch);
            advertised.store(sent.len(), Ordering::Relaxed);
        }
        Out::Routes(wants) => pack_wants(wants, &ctx, batch),
        Out::EndOfRib(afi) => end_of_rib(afi, &ctx, batch),
        Out::Forget(afi) => sent.forget(afi == Afi::Ipv4),
    };
    loop {
        let m = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = q.overflow.notified() => {
                return overflowed(peer);
            }
        };
        let mut taken = m.weight();
        handle(m, &mut batch, &mut chunks);
        // Coalesce what is already queued (up to a bound) into as few writes as it takes.
        let mut size = batch.len() + chunks.iter().map(Bytes::len).sum::<usize>();
        while size < 256 * 1024 {
            let Ok(more) = rx.try_recv() else { break };
            taken += more.weight();
            handle(more, &mut batch, &mut chunks);
            size = batch.len() + chunks.iter().map(Bytes::len).sum::<usize>();
        }
        if !batch.is_empty() {
            chunks.push(batch.split().freeze());
        }
        // Progress is judged per 64 KiB: a slow peer that reads is fine, one that has read
        // nothing for its hold time is gone.
        let write = async {
            for c in chunks.drain(..) {
                for piece in c.chunks(64 * 1024) {
                    match tokio::time::timeout(stall, w.write_all(piece)).await {
                        Ok(r) => r?,
                        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        tokio::select! {
            r = write => match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    warn!(%peer, secs = stall.as_secs(), "the peer has read nothing for its hold time: dropping the connection");
                    return;
                }
                Err(_) => return,
            },
            _ = q.overflow.notified() => {
                return overflowed(peer);
            }
        }
        q.queued.fetch_sub(taken, Ordering::AcqRel);
        // A table dump can grow the buffer; a thousand idle sessions should not keep it.
        if batch.capacity() > 64 * 1024 {
            batch = BytesMut::new();
        }
    }
    let _ = w.shutdown().await;
}

fn encode(m: &Message, ctx: &Ctx) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    codec::encode(m, ctx, &mut b);
    b.freeze()
}

impl SessionTask {
    pub async fn run(mut self) {
        let mut run = Run {
            fsm: fsm::Session::new(self.fsm_cfg.clone()),
            conn: None,
            connecting: None,
            timers: HashMap::new(),
            restart_at: None,
            tx_ctx: Ctx::default(),
            rx_ctx: Ctx::default(),
            established: false,
            notified: false,
            peer_gr: false,
            failures: 0,
            refused: false,
            refusals: 0,
            ceased: false,
            ceases: 0,
            up_at: None,
            hold_off: None,
            closing: None,
            log: super::loglimit::per_minute(),
        };
        let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Option<Pending>>();
        // Connections from this address still waiting for their OPEN.
        let mut opening = 0usize;
        self.restart(&mut run, self.fsm_cfg.clone());
        loop {
            let next_timer = run
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(SessionCmd::Incoming(s)) => {
                        if opening >= MAX_OPENING {
                            debug!(peer = %self.cfg.addr, "refused a connection: {MAX_OPENING} from this address are already waiting for their OPEN");
                            continue;
                        }
                        opening += 1;
                        let tx = pending_tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(read_open(s).await);
                        });
                    }
                    Some(SessionCmd::Stop { notify, done }) => {
                        self.stop(&mut run, notify).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(SessionCmd::Cease { subcode, data }) => {
                        // Only a session that is there to close (one already down ignores
                        // it). Over its prefix limit (1), a peer is retried less and less
                        // often, forgotten after 5 minutes up like BIRD's error forget; a
                        // configuration change (6) comes straight back.
                        if run.fsm.state() != State::Idle && subcode == 1 {
                            if run.up_at.is_some_and(|t| t.elapsed() > Duration::from_secs(300)) {
                                run.ceases = 0;
                            }
                            run.ceases = run.ceases.saturating_add(1);
                            run.ceased = true;
                        }
                        self.process(&mut run, Input::Cease { subcode, data });
                    }
                    Some(SessionCmd::Refresh(afi)) => {
                        if let (Some(c), true) = (&run.conn, run.established) {
                            let m = Message::RouteRefresh(RouteRefresh { afi, subtype: 0, safi: SAFI_UNICAST });
                            let _ = c.writer.send(Out::Raw(encode(&m, &run.tx_ctx)));
                        }
                    }
                    None => {
                        self.stop(&mut run, true).await;
                        return;
                    }
                },
                Some(p) = pending_rx.recv() => {
                    opening -= 1;
                    if let Some(p) = p {
                        self.incoming(&mut run, p);
                    }
                }
                _ = self.inflight.wake.notified(), if run.conn.is_some() && self.inflight.full() => {}

                r = read(run.conn.as_mut()), if run.conn.is_some() && !self.inflight.full() => match r {
                    Ok(0) | Err(_) => self.process(&mut run, Input::TcpFails),
                    Ok(_) => self.drain(&mut run),
                },
                r = connecting(&mut run.connecting), if run.connecting.is_some() => {
                    run.connecting = None;
                    match r {
                        Ok(s) => {
                            self.attach(&mut run, s, BytesMut::new());
                            self.process(&mut run, Input::TcpConnected);
                        }
                        Err(e) => {
                            debug!(peer = %self.cfg.addr, "connect failed: {e}");
                            run.refused = true;
                            // Refused outright (nothing listens yet: a node starting) is
                            // tried again soon; anything else waits the connect-retry time.
                            run.refusals = match e.kind() {
                                // (A run of refusals starts afresh after another failure: a
                                // node that was unreachable while down refuses while starting.)
                                std::io::ErrorKind::ConnectionRefused if run.refusals == u32::MAX => 1,
                                std::io::ErrorKind::ConnectionRefused => run.refusals.saturating_add(1),
                                _ => u32::MAX,
                            };
                            self.process(&mut run, Input::TcpFails);
                            // The FSM waits its connect-retry time; refused, sooner.
                            let soon = Instant::now() + self.refused_backoff(run.refusals);
                            if let Some(at) = run.timers.get_mut(&fsm::Timer::ConnectRetry) {
                                *at = (*at).min(soon);
                            }
                        }
                    }
                }
                _ = sleep_until(next_timer.map(|t| t.1)), if next_timer.is_some() => {
                    if let Some((t, _)) = next_timer {
                        run.timers.remove(&t);
                        self.process(&mut run, Input::TimerExpired(t));
                    }
                }
                _ = sleep_until(run.restart_at), if run.restart_at.is_some() => {
                    run.restart_at = None;
                    self.restart(&mut run, self.fsm_cfg.clone());
                }
            }
        }
    }

    fn restart(&self, run: &mut Run, mut cfg: fsm::Config) {
        // The restart bit (RFC 4724 §3) holds only until the speaker has converged.
        let now = self.restarting.load(Ordering::Relaxed);
        for c in &mut cfg.capabilities {
            if let Capability::GracefulRestart { restarting, .. } = c {
                *restarting = now;
            }
        }
        run.fsm = fsm::Session::new(cfg);
        run.timers.clear();
        run.established = false;
        run.notified = false;
        self.process(run, Input::ManualStart);
    }

    fn attach(&self, run: &mut Run, s: TcpStream, buf: BytesMut) {
        run.refused = false;
        run.refusals = 0;
        let local = s
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = Writer {
            tx,
            q: Queue::default(),
        };
        let advertised = Arc::new(AtomicUsize::new(0));
        let advertised_w = advertised.clone();
        // A peer that reads nothing for as long as it may stay silent is gone.
        let stall = match self.cfg.hold_time {
            0 => Duration::from_secs(240),
            h => Duration::from_secs(u64::from(h)),
        };
        let gone = Arc::new(tokio::sync::Notify::new());
        let done = gone.clone();
        let (q, peer) = (tx.q.clone(), self.cfg.addr);
        let written = tokio::spawn(async move {
            write_loop(w, rx, advertised_w, q, peer, stall).await;
            done.notify_one();
        });
        run.conn = Some(Conn {
            reader: r,
            buf,
            writer: tx,
            local,
            advertised,
            written,
            gone,
            read_size: 4096,
        });
    }

    /// RFC 4271 §6.8 with the peer's OPEN in hand.
    fn incoming(&self, run: &mut Run, p: Pending) {
        let state = run.fsm.state();
        // Cease 6/7 (collision) or 6/5 (connection rejected), RFC 4486.
        // Anyone who can reach us from the peer's address triggers these lines: limited.
        let refuse = |run: &mut Run, p: Pending, why: &str, subcode: u8| {
            if let Some(suppressed) = run.log.allow() {
                info!(peer = %self.cfg.addr, suppressed, "refused an incoming connection: {why}");
            }
            notify_and_close(p, 6, subcode);
        };
        if run.hold_off.is_some_and(|t| Instant::now() < t) {
            return refuse(
                run,
                p,
                "we closed the session and are waiting out the back-off",
                5,
            );
        }
        // Not the node this address belongs to (a pod whose connection was masqueraded to
        // the node's address, say): refused on its own connection, and the session it
        // claims is left alone, so it can neither take it over nor reset it.
        if let Some(want) = self.fsm_cfg.expect_id.filter(|id| *id != p.open.bgp_id) {
            if let Some(suppressed) = run.log.allow() {
                warn!(peer = %self.cfg.addr, expected = %want, presented = %p.open.bgp_id, suppressed,
                    "refused a connection: its BGP identifier is not the router ID of the node at this address");
            }
            return notify_and_close(p, 2, 3); // Bad BGP Identifier
        }
        match state {
            State::Established => return refuse(run, p, "a session is already established", 7),
            State::OpenSent | State::OpenConfirm => {
                if !collision_keeps_incoming(self.router_id, p.open.bgp_id) {
                    return refuse(run, p, "connection collision: our connection wins", 7);
                }
                self.process(run, Input::OpenCollisionDump);
            }
            State::Idle | State::Connect | State::Active => {}
        }
        if let Some(c) = run.conn.take() {
            drop(c);
        }
        run.connecting = None;
        run.restart_at = None;
        // A fresh machine for the accepted connection; passive so it does not dial out too.
        let mut cfg = self.fsm_cfg.clone();
        cfg.passive = true;
        self.restart(run, cfg);
        self.attach(run, p.stream, p.buf);
        self.process(run, Input::TcpConnected);
        self.process(run, Input::Message(Message::Open(p.open)));
        self.drain(run);
    }

    /// Decodes and processes every whole message in the buffer.
    fn drain(&self, run: &mut Run) {
        loop {
            let Some(conn) = run.conn.as_mut() else {
                return;
            };
            let Some(msg) = codec::next_message(&mut conn.buf) else {
                return;
            };
            let input = match codec::decode(&msg, &run.rx_ctx) {
                Ok(m) => Input::Message(m),
                Err(e) => Input::DecodeError(e),
            };
            self.process(run, input);
        }
    }

    fn process(&self, run: &mut Run, input: Input) {
        if matches!(input, Input::Message(Message::Notification(_))) {
            run.notified = true;
        }
        if let Input::Message(Message::Open(o)) = &input {
            if let Some(want) = self.fsm_cfg.expect_id.filter(|id| *id != o.bgp_id) {
                warn!(peer = %self.cfg.addr, expected = %want, presented = %o.bgp_id,
                    "refusing the session: the peer's BGP identifier is not the router ID of the node at this address (NOTIFICATION 2/3)");
            }
            run.peer_gr = o
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::GracefulRestart { .. }));
        }
        let before = run.fsm.state();
        for out in run.fsm.process(input) {
            self.output(run, out);
        }
        let after = run.fsm.state();
        if before != after {
            debug!(peer = %self.cfg.addr, "{before:?} -> {after:?}");
            let _ = self.events.send(Event::State {
                peer: self.id,
                state: after,
            });
        }
    }

    fn output(&self, run: &mut Run, out: Output) {
        match out {
            Output::Connect => {
                let cfg = self.cfg.clone();
                let local_as = self.local_as;
                run.connecting = Some(Box::pin(async move {
                    tokio::time::timeout(Duration::from_secs(10), socket::connect(&cfg, local_as))
                        .await
                        .unwrap_or_else(|_| {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "timed out",
                            ))
                        })
                }));
            }
            Output::Disconnect => {
                if let Some(c) = run.conn.take() {
                    run.closing = Some(c.written);
                }
                run.connecting = None;
            }
            Output::Send(m) => {
                if matches!(m, Message::Notification(_)) {
                    run.notified = true;
                }
                if let Some(c) = &run.conn {
                    let _ = c.writer.send(Out::Raw(encode(&m, &run.tx_ctx)));
                }
            }
            Output::StartTimer(t, secs) => {
                run.timers
                    .insert(t, Instant::now() + Duration::from_secs(u64::from(secs)));
            }
            Output::StopTimer(t) => {
                run.timers.remove(&t);
            }
            Output::Up(neg) => {
                run.tx_ctx = neg.tx.clone();
                run.rx_ctx = neg.rx.clone();
                run.established = true;
                run.failures = 0;
                run.up_at = Some(Instant::now());
                let Some(c) = &run.conn else { return };
                let _ = c.writer.send(Out::Ctx(neg.tx.clone()));
                info!(peer = %self.cfg.addr, peer_as = neg.peer_as, router_id = %neg.peer_id,
                    hold = neg.hold_time, "session established");
                let _ = self.events.send(Event::Up {
                    peer: self.id,
                    neg: Box::new(neg),
                    local: c.local,
                    writer: c.writer.clone(),
                    advertised: c.advertised.clone(),
                });
            }
            Output::Down(reason) => {
                let keep_routes = run.established && run.peer_gr && !run.notified;
                if run.established {
                    warn!(peer = %self.cfg.addr, keep_routes, "session down: {reason}");
                } else {
                    debug!(peer = %self.cfg.addr, "attempt failed: {reason}");
                }
                let wait = if run.ceased {
                    run.ceased = false;
                    let wait = self.backoff(run.ceases);
                    // Not even the peer dialling us shortens it.
                    run.hold_off = Some(Instant::now() + wait);
                    info!(peer = %self.cfg.addr, secs = wait.as_secs_f32(), "closed by us: trying again after a back-off");
                    wait
                } else if run.refused {
                    self.refused_backoff(run.refusals)
                } else {
                    run.failures = run.failures.saturating_add(u32::from(!run.established));
                    self.backoff(run.failures)
                };
                run.tx_ctx = Ctx::default();
                run.rx_ctx = Ctx::default();
                run.established = false;
                run.restart_at = Some(Instant::now() + wait);
                let _ = self.events.send(Event::Down {
                    peer: self.id,
                    reason,
                    keep_routes,
                });
            }
            Output::Update(u) => {
                self.inflight
                    .n
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let _ = self.events.send(Event::Update {
                    peer: self.id,
                    update: u,
                });
            }
            Output::RouteRefresh(rr) => {
                let _ = self.events.send(Event::Refresh { peer: self.id, rr });
            }
        }
    }

    /// After a drop: 1 s the first time, then the connect-retry time doubling per failed
    /// attempt up to 2 minutes, with ±25% jitter so two speakers do not keep colliding.
    fn backoff(&self, failures: u32) -> Duration {
        let base = if failures == 0 {
            Duration::from_secs(1)
        } else {
            (self.cfg.connect_retry * 2u32.saturating_pow(failures - 1).min(64))
                .min(Duration::from_secs(120))
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
        base.mul_f64(jitter)
    }

    /// After `n` connects in a row refused outright: every 50 ms for the first second (a
    /// peer that is starting is reached within 50 ms of listening, not BIRD's fixed 2 s),
    /// then 0.25 s doubling up to the connect-retry time; any other connect failure waits
    /// the connect-retry time. A refused connect is a SYN and a RST: twenty in the first
    /// second of a peer's start, four a second after.
    fn refused_backoff(&self, n: u32) -> Duration {
        const QUICK: u32 = 20;
        let fast = match n {
            0..=QUICK => Duration::from_millis(50),
            _ => Duration::from_millis(250) * 2u32.saturating_pow((n - QUICK - 1).min(8)),
        };
        let plain = self.backoff(1);
        if n == u32::MAX || fast >= self.cfg.connect_retry {
            plain
        } else {
            fast
        }
    }

    async fn stop(&self, run: &mut Run, notify: bool) {
        if notify {
            self.process(run, Input::ManualStop);
        }
        run.restart_at = None;
        if let Some(c) = run.conn.take() {
            run.closing = Some(c.written);
        }
        // Let the writer flush what is queued (the NOTIFICATION) and close.
        if let Some(w) = run.closing.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
    }
}

struct Run {
    fsm: fsm::Session,
    conn: Option<Conn>,
    connecting: Option<Connecting>,
    timers: HashMap<Timer, Instant>,
    restart_at: Option<Instant>,
    tx_ctx: Ctx,
    rx_ctx: Ctx,
    established: bool,
    notified: bool,
    peer_gr: bool,
    failures: u32,
    /// The last attempt never got a TCP connection (refused, unreachable): retried after
    /// the plain connect-retry time, as BIRD does, or sooner when refused outright
    /// ([`SessionTask::refused_backoff`]), not the doubling error backoff — a peer that is
    /// simply not listening yet (a node starting) is reached as soon as it is.
    refused: bool,
    /// Connects refused outright in a row (`u32::MAX` after any other connect failure).
    refusals: u32,
    /// We closed the last session ourselves (Cease): back off by `ceases`.
    ceased: bool,
    /// How often we closed it lately.
    ceases: u32,
    /// When the session last came up.
    up_at: Option<Instant>,
    /// Until then connections from the peer are refused too (after our Cease).
    hold_off: Option<Instant>,
    /// The writer of the last closed connection, still flushing.
    closing: Option<tokio::task::JoinHandle<()>>,
    /// Lines about connections refused from this address (anyone there can cause them).
    log: super::loglimit::LogLimit,
}

async fn read(conn: Option<&mut Conn>) -> std::io::Result<usize> {
    match conn {
        Some(c) => {
            // Start small (a thousand sessions at 64 KiB each add up) and grow while reads
            // fill the buffer (a peer sending a full table).
            let free = c.buf.capacity() - c.buf.len();
            if free < 1024 {
                c.buf.reserve(c.read_size);
            }
            let free = c.buf.capacity() - c.buf.len();
            // The writer giving up on the connection (write error, stalled peer, full queue)
            // fails it as a failed read does.
            let n = tokio::select! {
                n = c.reader.read_buf(&mut c.buf) => n?,
                _ = c.gone.notified() => {
                    return Err(std::io::Error::other("the writer closed the connection"))
                }
            };
            if n == free && c.read_size < 64 * 1024 {
                c.read_size *= 2;
            }
            Ok(n)
        }
        None => std::future::pending().await,
    }
}

async fn connecting(c: &mut Option<Connecting>) -> std::io::Result<TcpStream> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
