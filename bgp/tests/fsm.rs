//! FSM scenarios: a list of inputs, the outputs expected (RFC 4271 §8).

use std::net::Ipv4Addr;

use brindle_bgp::codec::{AddPathMode, Afi, Capability, DecodeError, Message, Notification, Open};
use brindle_bgp::fsm::{collision_keeps_incoming, Config, Input, Output, Session, State, Timer};

const US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn cfg(passive: bool) -> Config {
    Config {
        local_as: 64512,
        router_id: US,
        peer_as: 4_200_000_001,
        hold_time: 90,
        connect_retry_secs: 120,
        passive,
        capabilities: vec![
            Capability::Multiprotocol {
                afi: Afi::Ipv4,
                safi: 1,
            },
            Capability::RouteRefresh,
            Capability::AddPath(vec![(Afi::Ipv4, 1, AddPathMode::Receive)]),
        ],
        expect_id: None,
    }
}

fn peer_open(hold: u16) -> Message {
    Message::Open(Open::new(
        4_200_000_001,
        hold,
        PEER,
        vec![
            Capability::Multiprotocol {
                afi: Afi::Ipv4,
                safi: 1,
            },
            Capability::RouteRefresh,
            Capability::AddPath(vec![(Afi::Ipv4, 1, AddPathMode::Send)]),
        ],
    ))
}

fn sent(out: &[Output]) -> Vec<&Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn notification(out: &[Output]) -> Option<(u8, u8)> {
    sent(out).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

/// Drives a session to OpenSent over an outgoing connection.
fn open_sent(passive: bool) -> Session {
    let mut s = Session::new(cfg(passive));
    let out = s.process(Input::ManualStart);
    assert_eq!(out.contains(&Output::Connect), !passive);
    assert_eq!(
        s.state(),
        if passive {
            State::Active
        } else {
            State::Connect
        }
    );
    let out = s.process(Input::TcpConnected);
    assert!(matches!(sent(&out)[..], [Message::Open(o)] if o.asn() == 64512 && o.hold_time == 90));
    assert!(
        out.contains(&Output::StartTimer(Timer::Hold, 240)),
        "the large hold timer while waiting for OPEN"
    );
    assert_eq!(s.state(), State::OpenSent);
    s
}

fn established() -> Session {
    let mut s = open_sent(false);
    s.process(Input::Message(peer_open(30)));
    s.process(Input::Message(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    s
}

#[test]
fn active_open_to_established_negotiates() {
    let mut s = open_sent(false);
    let out = s.process(Input::Message(peer_open(30)));
    assert_eq!(s.state(), State::OpenConfirm);
    assert_eq!(sent(&out), vec![&Message::Keepalive]);
    assert!(
        out.contains(&Output::StartTimer(Timer::Hold, 30)),
        "the smaller hold time wins"
    );
    assert!(
        out.contains(&Output::StartTimer(Timer::Keepalive, 10)),
        "keepalive is a third of it"
    );
    let out = s.process(Input::Message(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    let up = out.iter().find_map(|o| match o {
        Output::Up(n) => Some(n.clone()),
        _ => None,
    });
    let n = up.expect("Up output");
    assert_eq!(n.peer_as, 4_200_000_001);
    assert!(n.rx.four_octet_as && n.route_refresh);
    assert_eq!(n.rx.add_path, vec![(Afi::Ipv4, 1)], "we receive, they send");
    assert!(n.tx.add_path.is_empty(), "we do not send paths");
    // Keepalives flow; an UPDATE goes to the RIB and restarts the hold timer.
    let out = s.process(Input::TimerExpired(Timer::Keepalive));
    assert_eq!(sent(&out), vec![&Message::Keepalive]);
    let out = s.process(Input::Message(Message::Update(Box::default())));
    assert!(out.contains(&Output::StartTimer(Timer::Hold, 30)));
    assert!(out.iter().any(|o| matches!(o, Output::Update(_))));
}

#[test]
fn passive_session_waits_and_retries_only_listening() {
    let mut s = Session::new(cfg(true));
    s.process(Input::ManualStart);
    assert_eq!(s.state(), State::Active);
    let out = s.process(Input::TimerExpired(Timer::ConnectRetry));
    assert!(
        !out.contains(&Output::Connect),
        "a passive session never connects"
    );
    assert_eq!(s.state(), State::Active);
    let mut s = open_sent(true);
    s.process(Input::Message(peer_open(90)));
    assert_eq!(s.state(), State::OpenConfirm);
}

#[test]
fn connect_failure_and_retry() {
    let mut s = Session::new(cfg(false));
    s.process(Input::ManualStart);
    let out = s.process(Input::TcpFails);
    assert_eq!(s.state(), State::Active);
    assert!(out.contains(&Output::StartTimer(Timer::ConnectRetry, 120)));
    let out = s.process(Input::TimerExpired(Timer::ConnectRetry));
    assert!(out.contains(&Output::Connect));
    assert_eq!(s.state(), State::Connect);
}

#[test]
fn bad_opens_get_the_right_notification() {
    let cases: Vec<(Message, (u8, u8))> = vec![
        (Message::Open(Open::new(65001, 90, PEER, vec![])), (2, 2)), // wrong peer AS
        (
            Message::Open(Open::new(4_200_000_001, 90, Ipv4Addr::UNSPECIFIED, vec![])),
            (2, 3),
        ), // zero identifier
        (
            Message::Open(Open::new(4_200_000_001, 2, PEER, vec![])),
            (2, 6),
        ), // hold time 2
        (
            // AS_TRANS without the 4-octet capability
            Message::Open(Open {
                version: 4,
                my_as: 23456,
                hold_time: 90,
                bgp_id: PEER,
                capabilities: vec![],
            }),
            (2, 2),
        ),
    ];
    for (open, want) in cases {
        let mut s = open_sent(false);
        let out = s.process(Input::Message(open.clone()));
        assert_eq!(notification(&out), Some(want), "{open:?}");
        assert!(out.contains(&Output::Disconnect));
        assert_eq!(s.state(), State::Idle);
    }
    // No address family in common: 2/7 naming the Multiprotocol capability we needed.
    let mut s = open_sent(false);
    let v6_only = Message::Open(Open::new(
        4_200_000_001,
        90,
        PEER,
        vec![Capability::Multiprotocol {
            afi: Afi::Ipv6,
            safi: 1,
        }],
    ));
    let out = s.process(Input::Message(v6_only));
    assert!(sent(&out).contains(&&Message::Notification(Notification {
        code: 2,
        subcode: 7,
        data: vec![1, 4, 0, 1, 0, 1]
    })));
    assert_eq!(s.state(), State::Idle);
    // A version the codec refuses arrives as a decode error: 2/1 with the version we speak.
    let mut s = open_sent(false);
    let out = s.process(Input::DecodeError(DecodeError::UnsupportedVersion(3)));
    assert!(sent(&out).contains(&&Message::Notification(Notification {
        code: 2,
        subcode: 1,
        data: vec![0, 4]
    })));
}

#[test]
fn hold_timer_expiry_and_fsm_errors() {
    let mut s = established();
    let out = s.process(Input::TimerExpired(Timer::Hold));
    assert_eq!(notification(&out), Some((4, 0)));
    assert_eq!(s.state(), State::Idle);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Down(w) if w.contains("hold timer"))));
    // An UPDATE before the session is up is an FSM error (5/1 in OpenSent, 5/2 in OpenConfirm).
    let mut s = open_sent(false);
    let out = s.process(Input::Message(Message::Update(Box::default())));
    assert_eq!(notification(&out), Some((5, 1)));
    let mut s = open_sent(false);
    s.process(Input::Message(peer_open(90)));
    let out = s.process(Input::Message(peer_open(90)));
    assert_eq!(notification(&out), Some((5, 2)));
    // A header error in Established: 1/x, and down.
    let mut s = established();
    let out = s.process(Input::DecodeError(DecodeError::BadType(9)));
    assert_eq!(notification(&out), Some((1, 3)));
}

#[test]
fn hold_time_zero_means_no_keepalives() {
    let mut s = open_sent(false);
    let out = s.process(Input::Message(peer_open(0)));
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::StartTimer(Timer::Keepalive | Timer::Hold, _))));
    assert!(out.contains(&Output::StopTimer(Timer::Hold)));
}

#[test]
fn stop_collision_and_peer_notification() {
    let mut s = established();
    let out = s.process(Input::ManualStop);
    assert_eq!(notification(&out), Some((6, 2)));
    assert_eq!(s.state(), State::Idle);
    // Collision: the connection opened by the higher identifier survives.
    assert!(
        collision_keeps_incoming(US, PEER),
        "the peer's id is higher: keep its connection"
    );
    assert!(!collision_keeps_incoming(PEER, US));
    let mut s = open_sent(false);
    let out = s.process(Input::OpenCollisionDump);
    assert_eq!(notification(&out), Some((6, 7)));
    // The peer's NOTIFICATION (with an RFC 8203 message) ends the session, reason kept.
    let mut s = established();
    let out = s.process(Input::Message(Message::Notification(
        Notification::shutdown("drain"),
    )));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Down(w) if w.contains("6/2") && w.contains("drain"))));
    assert!(sent(&out).is_empty(), "no NOTIFICATION in answer to one");
}

/// A cluster node must present the router ID its node record carries: another identifier
/// (a pod masqueraded to the node's address) is refused with 2/3, and the right one is taken.
#[test]
fn expected_identifier_is_enforced() {
    let mut c = cfg(false);
    c.expect_id = Some(Ipv4Addr::new(198, 18, 0, 99));
    let mut s = Session::new(c.clone());
    s.process(Input::ManualStart);
    s.process(Input::TcpConnected);
    let out = s.process(Input::Message(peer_open(90)));
    assert_eq!(notification(&out), Some((2, 3)));
    assert_eq!(s.state(), State::Idle);

    c.expect_id = Some(PEER);
    let mut s = Session::new(c);
    s.process(Input::ManualStart);
    s.process(Input::TcpConnected);
    let out = s.process(Input::Message(peer_open(90)));
    assert_eq!(notification(&out), None);
    assert_eq!(s.state(), State::OpenConfirm);
}

/// The owner closes a session over its prefix limit: Cease 6/1 with the RFC 4486 data, then
/// Idle (the driver retries after a back-off).
#[test]
fn cease_closes_with_the_given_subcode() {
    let mut s = open_sent(false);
    s.process(Input::Message(peer_open(90)));
    s.process(Input::Message(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    let data = vec![0, 1, 1, 0, 0, 0, 10];
    let out = s.process(Input::Cease {
        subcode: 1,
        data: data.clone(),
    });
    assert!(sent(&out).contains(&&Message::Notification(Notification {
        code: 6,
        subcode: 1,
        data
    })));
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(s.state(), State::Idle);
}
