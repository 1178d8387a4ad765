//! The NFLOG reader against the kernel: inside a namespace of the test's own, a rule sends
//! packets to the group with one of our prefixes, and [`Listener`] reads them back as
//! [`Denied`]; a second reader of the same group is refused with a message that says why.

use std::time::Duration;

use brindle_felix_lite::nflog::{prefix, Denied, Listener};
use brindle_testsupport::Netns;

/// Runs `f` on a thread that has entered `ns`'s network namespace.
fn inside<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn packets_sent_to_the_group_come_back_as_denied_and_a_second_reader_is_refused() {
    let ns = Netns::new("nflog");
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    let group = 30u16;
    let pre = prefix(true, "brltest");
    ns.ok(&[
        "iptables-legacy",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "4789",
        "-j",
        "NFLOG",
        "--nflog-group",
        &group.to_string(),
        "--nflog-prefix",
        &pre,
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    // The reader stays in its thread (the socket belongs to the namespace it was made in).
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut l = match Listener::bind(group) {
            Ok(l) => l,
            Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
        };
        let _ = tx.send(Ok(vec![]));
        loop {
            match l.recv() {
                Ok(d) if d.is_empty() => {}
                Ok(d) => {
                    if tx.send(Ok(d)).is_err() {
                        return;
                    }
                }
                Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(5)).expect("bound");
    assert_eq!(first, Ok(vec![]), "the first reader binds");
    // One reader a group in a namespace.
    let second = inside(&ns, move || Listener::bind(group).map(|_| ()));
    let e = second.expect_err("a second reader of the same group");
    assert!(e.to_string().contains("held by another process"), "{e}");
    ns.ok(&[
        "python3",
        "-c",
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('127.0.0.1',5555));s.sendto(b'x',('127.0.0.1',4789))",
    ]);
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("a packet");
    assert_eq!(
        got,
        Ok(vec![Denied {
            ingress: true,
            veth: "brltest".into(),
            src: "127.0.0.1".parse().unwrap(),
            dst: "127.0.0.1".parse().unwrap(),
            protocol: 17,
            ports: Some((5555, 4789)),
        }])
    );
}
