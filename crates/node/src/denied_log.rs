//! `--log-denied`: a line for each packet NetworkPolicy dropped (rate-limited), naming the
//! pod, the direction, the packet (addresses, protocol, ports) and the policies that isolate
//! the pod in that direction — "which policy dropped my traffic?" (Calico #1923, #6998).
//!
//! The kernel hands the packets over on an NFLOG group ([`brindle_felix_lite::nflog`]); a
//! thread of its own reads the socket (blocking), this task names them from what the
//! Services task last rendered ([`Isolation`], by interface).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use brindle_bgp::speaker::LogLimit;
use brindle_felix_lite::nflog::{Denied, Listener};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// What isolates one of this node's pods, by its host interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// `namespace/name`.
    pub pod: String,
    /// The policies isolating it for ingress / egress (`namespace/name`).
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

pub type Isolations = Arc<BTreeMap<String, Isolation>>;

/// At most this many lines a minute; the next one logged says how many were left out.
const LINES_PER_MINUTE: u32 = 100;

/// Binds `group` now (so that a failure is known before any rule names it) and starts the
/// reading thread; the packets arrive on the returned channel.
pub fn listen(group: u16) -> std::io::Result<mpsc::Receiver<Vec<Denied>>> {
    let mut listener = Listener::bind(group)?;
    let (tx, rx) = mpsc::channel(256);
    std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || {
            let mut overruns = LogLimit::new(1, Duration::from_secs(60));
            loop {
                match listener.recv() {
                    Ok(d) if d.is_empty() => {}
                    // A full channel: the task is behind; these go unlogged (counted there).
                    Ok(d) => match tx.try_send(d) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The kernel dropped some (a burst larger than the socket's buffer).
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                        if let Some(suppressed) = overruns.allow() {
                            warn!(
                                suppressed,
                                "denied packets lost before they were read (a burst): {e}"
                            );
                        }
                    }
                    Err(e) => {
                        warn!("reading denied packets stopped: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// Logs each denied packet with what the pod is and what isolates it.
pub async fn run(
    mut packets: mpsc::Receiver<Vec<Denied>>,
    isolations: watch::Receiver<Isolations>,
    pulse: crate::supervise::Pulse,
) {
    let mut limit = LogLimit::new(LINES_PER_MINUTE, Duration::from_secs(60));
    loop {
        pulse.beat();
        tokio::select! {
            _ = pulse.due() => {}
            batch = packets.recv() => {
                let Some(batch) = batch else {
                    // The reading thread ended (logged there); the rules still drop, and
                    // this task stays alive without lines.
                    loop {
                        pulse.beat();
                        pulse.due().await;
                    }
                };
                let known = isolations.borrow().clone();
                for d in batch {
                    if let Some(suppressed) = limit.allow() {
                        log(&d, known.get(&d.veth), suppressed);
                    }
                }
            }
        }
    }
}

fn log(d: &Denied, iso: Option<&Isolation>, suppressed: u64) {
    let port = |p: Option<u16>| p.map_or_else(|| "-".to_string(), |p| p.to_string());
    let pod = iso.map_or_else(|| d.veth.clone(), |i| i.pod.clone());
    let by = iso
        .map(|i| if d.ingress { &i.ingress } else { &i.egress })
        .filter(|p| !p.is_empty())
        .map_or_else(|| "unknown".to_string(), |p| p.join(","));
    info!(
        pod = %pod,
        direction = if d.ingress { "ingress" } else { "egress" },
        src = %d.src,
        dst = %d.dst,
        protocol = %d.protocol_name(),
        sport = %port(d.ports.map(|p| p.0)),
        dport = %port(d.ports.map(|p| p.1)),
        isolated_by = %by,
        suppressed,
        "NetworkPolicy denied a packet"
    );
}
