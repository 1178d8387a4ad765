//! Writes nf_tables changes by netlink: one batch (`NFNL_MSG_BATCH_BEGIN` … `_END`), which
//! the kernel applies as one transaction, all of it or none, exactly as `nft -f` does. What
//! this saves is the `nft` process: before applying anything it fetches every chain and set
//! of the table (0.1–0.3 s at 10,000 Services), while the kernel's own work for a change is
//! microseconds. Only the messages a partial sync needs are here (chains added, flushed and
//! deleted, rules added, set and map elements added and deleted, sets deleted); the writer
//! sends the rest (a new table, set declarations, base chains) through `nft`, and so does
//! any change holding a rule [`super::expr`] does not compile.
//!
//! Message layout (linux/netfilter/nf_tables.h, nfnetlink.h): each message is an nlmsghdr,
//! an nfgenmsg (family, version 0, resource id) and attributes; integers in attributes are
//! big-endian, data values are the packet's bytes.

use std::io;
use std::time::Duration;

use rtnetlink::packet_core::{NetlinkBuffer, NlasIterator};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::expr::{Data, Expr};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// In an ack: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// libnftnl's rule userdata: a comment is TLV type 0, its length, the text and a NUL.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// An attribute list's largest size (its length is 16 bits); elements past it go in
/// another message.
const MAX_ATTR: usize = 60_000;
/// How long the kernel may take to answer a batch (it answers within the send).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Attributes being written; nests are closed by [`Attrs::end`].
#[derive(Default)]
pub struct Attrs {
    pub buf: Vec<u8>,
}

impl Attrs {
    pub fn bytes(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }
    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.bytes(kind, &v.to_be_bytes())
    }
    pub fn u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.bytes(kind, &v.to_be_bytes())
    }
    /// A NUL-terminated string.
    pub fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        self.bytes(kind, &b)
    }
    /// Opens a nested attribute; returns where it starts, for [`Attrs::end`].
    pub fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }
    pub fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    /// `NFTA_DATA_VALUE` or `NFTA_DATA_VERDICT` inside `kind`.
    pub fn data(&mut self, kind: u16, d: &Data) -> &mut Self {
        let at = self.begin(kind);
        match d {
            Data::Value(v) => {
                self.bytes(NFTA_DATA_VALUE, v);
            }
            Data::Verdict(code, chain) => {
                let v = self.begin(NFTA_DATA_VERDICT);
                self.u32(NFTA_VERDICT_CODE, *code as u32);
                if let Some(c) = chain {
                    self.str(NFTA_VERDICT_CHAIN, c);
                }
                self.end(v);
            }
        }
        self.end(at);
        self
    }
}

/// One change of a partial sync, as the kernel takes it.
pub enum Msg<'a> {
    AddChain(&'a str),
    FlushChain(&'a str),
    DeleteChain(&'a str),
    AddRule {
        chain: &'a str,
        exprs: Vec<Expr>,
        comment: &'a str,
    },
    /// Elements (key, and data for a map) added to or deleted from `set`.
    Elements {
        add: bool,
        set: &'a str,
        items: Vec<(Vec<u8>, Option<Data>)>,
    },
    /// All elements of a set or map deleted.
    FlushSet(&'a str),
    DeleteSet(&'a str),
}

/// A batch being written: messages between BATCH_BEGIN and BATCH_END, each with its own
/// sequence number and a description for errors.
pub struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    seq: u32,
    what: Vec<String>,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Batch {
            buf: vec![],
            first_seq,
            seq: first_seq,
            what: vec![],
        };
        b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, &[]);
        b
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    /// Writes one message; `family` 0 with the nftables subsystem as resource id is the
    /// batch's own begin/end.
    fn header(&mut self, kind: u16, flags: u16, family: u8, attrs: &[u8]) {
        let len = 16 + 4 + attrs.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        let res_id = if family == 0 { NFNL_SUBSYS_NFTABLES } else { 0 };
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs);
        self.seq = self.seq.wrapping_add(1);
    }

    fn message(&mut self, kind: u16, flags: u16, attrs: &Attrs, what: String) {
        self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            NFPROTO_IPV4,
            &attrs.buf,
        );
        self.what.push(what);
    }

    /// Adds `m` for table `table`.
    pub fn push(&mut self, table: &str, m: &Msg) {
        let mut a = Attrs::default();
        match m {
            Msg::AddChain(name) => {
                a.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, name);
                self.message(
                    NFT_MSG_NEWCHAIN,
                    NLM_F_CREATE,
                    &a,
                    format!("add chain {name}"),
                );
            }
            Msg::FlushChain(name) => {
                a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, name);
                self.message(NFT_MSG_DELRULE, 0, &a, format!("flush chain {name}"));
            }
            Msg::DeleteChain(name) => {
                a.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, name);
                self.message(NFT_MSG_DELCHAIN, 0, &a, format!("delete chain {name}"));
            }
            Msg::AddRule {
                chain,
                exprs,
                comment,
            } => {
                a.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
                let list = a.begin(NFTA_RULE_EXPRESSIONS);
                for e in exprs {
                    let el = a.begin(NFTA_LIST_ELEM);
                    a.str(NFTA_EXPR_NAME, e.name());
                    let d = a.begin(NFTA_EXPR_DATA);
                    e.encode(&mut a);
                    a.end(d);
                    a.end(el);
                }
                a.end(list);
                if !comment.is_empty() {
                    let mut u = vec![NFTNL_UDATA_RULE_COMMENT, (comment.len() + 1) as u8];
                    u.extend_from_slice(comment.as_bytes());
                    u.push(0);
                    a.bytes(NFTA_RULE_USERDATA, &u);
                }
                self.message(
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND,
                    &a,
                    format!("add rule to chain {chain} ({comment})"),
                );
            }
            Msg::Elements { add, set, items } => {
                let mut rest = &items[..];
                while !rest.is_empty() {
                    let mut a = Attrs::default();
                    a.str(NFTA_SET_ELEM_LIST_TABLE, table)
                        .str(NFTA_SET_ELEM_LIST_SET, set);
                    let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    let mut n = 0;
                    for (key, data) in rest {
                        if n > 0 && a.buf.len() > MAX_ATTR {
                            break;
                        }
                        let el = a.begin(NFTA_LIST_ELEM);
                        a.data(NFTA_SET_ELEM_KEY, &Data::Value(key.clone()));
                        if let Some(d) = data {
                            a.data(NFTA_SET_ELEM_DATA, d);
                        }
                        a.end(el);
                        n += 1;
                    }
                    a.end(list);
                    rest = &rest[n..];
                    let (kind, flags, verb) = if *add {
                        (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add")
                    } else {
                        (NFT_MSG_DELSETELEM, 0, "delete")
                    };
                    self.message(kind, flags, &a, format!("{verb} {n} elements of {set}"));
                }
            }
            Msg::FlushSet(name) => {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table)
                    .str(NFTA_SET_ELEM_LIST_SET, name);
                self.message(NFT_MSG_DELSETELEM, 0, &a, format!("flush {name}"));
            }
            Msg::DeleteSet(name) => {
                a.str(NFTA_SET_TABLE, table).str(NFTA_SET_NAME, name);
                self.message(NFT_MSG_DELSET, 0, &a, format!("delete set {name}"));
            }
        }
    }

    /// Closes the batch; the last message asks for an ack, so its answer (or an error
    /// before it) ends the kernel's reply.
    fn finish(mut self) -> (Vec<u8>, u32, u32, Vec<String>) {
        let last = self.seq.wrapping_sub(1);
        // Set NLM_F_ACK on the last real message (errors come back without asking).
        if let Some(at) = last_message_at(&self.buf) {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, &[]);
        (self.buf, self.first_seq, last, self.what)
    }
}

/// Offset of the last message in `buf`.
fn last_message_at(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut last = None;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        if len < 16 {
            return None;
        }
        last = Some(at);
        at += len.next_multiple_of(4);
    }
    last
}

/// A netfilter netlink socket for nf_tables batches.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Why a batch was not applied, or why its fate is not known.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The send failed: the kernel has nothing of it.
    #[error("the batch was not sent: {0}")]
    NotSent(io::Error),
    /// The kernel refused it, and applied none of it.
    #[error("the kernel refused the batch at \"{what}\": {err}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        what: String,
        err: io::Error,
        detail: Option<String>,
    },
    /// Sent, but its answer was lost or did not come: it may or may not be committed.
    #[error("the kernel's answer to the batch was lost: {0}")]
    Unknown(String),
}

impl NetlinkError {
    /// The kernel holds nothing of the batch (writing it again another way is safe).
    pub fn nothing_applied(&self) -> bool {
        !matches!(self, NetlinkError::Unknown(_))
    }
}

impl Netlink {
    /// A socket in this process's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        // Errors say which attribute and why; acks do not echo the request.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        // A large batch in one send: the kernel refuses a message longer than the socket's
        // send buffer (EMSGSIZE), so raise it where the capability allows.
        use nix::sys::socket::{setsockopt, sockopt};
        let fd = std::os::fd::AsFd::as_fd(&socket);
        let _ = setsockopt(&fd, sockopt::SndBufForce, &(8 << 20));
        // Room for the answers of a large batch (every refused message has one).
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
        let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(Netlink {
            socket,
            seq,
            buf: vec![0; 1 << 16],
        })
    }

    /// A socket in the network namespace `/run/netns/<name>`, made on a thread of its own
    /// that enters it (the socket stays in the namespace it was made in).
    pub fn open_in(netns: &str) -> io::Result<Netlink> {
        let path = format!("/run/netns/{netns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        })
    }

    /// The largest batch one send takes.
    pub fn max_batch(&self) -> usize {
        let fd = std::os::fd::AsFd::as_fd(&self.socket);
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SndBuf)
            .map(|n| n.saturating_sub(64))
            .unwrap_or(200_000)
    }

    pub fn batch(&mut self) -> Batch {
        Batch::new(self.seq)
    }

    /// Sends `batch` and waits for the kernel's answer: Ok when it committed the whole
    /// transaction, the first refused message and the reason when it applied none of it.
    pub fn send(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        let (buf, first, last, what) = batch.finish();
        self.seq = last.wrapping_add(2);
        self.drain();
        self.socket.send(&buf, 0).map_err(NetlinkError::NotSent)?;
        let mut refused: Option<NetlinkError> = None;
        // Answers dropped for want of room (ENOBUFS): an error of this batch may be among
        // them, so its fate is unknown whatever comes after.
        let mut lost = false;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NetlinkError::Unknown(format!(
                        "no answer within {ANSWER_TIMEOUT:?}"
                    )))
                }
                Err(e) => return Err(NetlinkError::Unknown(e.to_string())),
            };
            let mut at = 0;
            while at < n {
                let Ok(msg) = NetlinkBuffer::new_checked(&self.buf[at..n]) else {
                    break;
                };
                let len = (msg.length() as usize).next_multiple_of(4);
                let (kind, flags, payload) = (msg.message_type(), msg.flags(), msg.payload());
                at += len.max(16);
                if kind != NLMSG_ERROR || payload.len() < 20 {
                    continue;
                }
                let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or_default());
                let seq = u32::from_ne_bytes(payload[12..16].try_into().unwrap_or_default());
                // A sequence number not of this batch: an answer left from an earlier one.
                if seq.wrapping_sub(first) > last.wrapping_sub(first) {
                    continue;
                }
                if code != 0 && refused.is_none() {
                    let idx = seq.wrapping_sub(first) as usize;
                    let detail = if flags & NLM_F_ACK_TLVS != 0 {
                        ext_ack_message(&payload[20..])
                    } else {
                        None
                    };
                    refused = Some(NetlinkError::Refused {
                        what: match idx {
                            0 => "the batch".into(),
                            i => what.get(i - 1).cloned().unwrap_or_default(),
                        },
                        err: io::Error::from_raw_os_error(-code),
                        detail,
                    });
                }
                // The batch's begin refused (nothing processed), or the last message's
                // answer (every error before it has come already): done.
                if seq == first || seq == last {
                    return match (refused, lost) {
                        (Some(e), _) => Err(e),
                        (None, true) => Err(NetlinkError::Unknown(
                            "answers were dropped (ENOBUFS)".into(),
                        )),
                        (None, false) => Ok(()),
                    };
                }
            }
        }
    }

    /// Reads and drops whatever is waiting (answers left from an earlier batch, a pending
    /// ENOBUFS): a congested socket would drop this batch's answer.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(_) => return,
            }
        }
    }
}

fn ext_ack_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs)
        .filter_map(|a| a.ok())
        .find(|a| a.kind() == NLMSGERR_ATTR_MSG)
        .map(|a| {
            String::from_utf8_lossy(a.value())
                .trim_end_matches('\0')
                .to_string()
        })
}
