//! Endpoint defects found by review, each pinned: `can_send` agrees with `seal` past the
//! message limit (a driver spun on a peer it could not send to); a restarted node whose
//! clock is behind can still connect (crossing initiations livelocked on `too_old` against
//! `conflict`); roaming never follows a source one cannot send to.

use std::collections::VecDeque;
use std::net::SocketAddr;

use net_transport::codec::DATA_OVERHEAD;
use net_transport::endpoint::{Endpoint, EndpointConfig, PeerId, Received};
use net_transport::identity::{Identity, Psk};

const MS: u64 = 1_000_000;

fn cfg() -> EndpointConfig {
    EndpointConfig {
        heartbeat_ns: 100 * MS,
        session_timeout_ns: 1000 * MS,
        rekey_after_ns: 60_000 * MS,
        rekey_after_messages: 1 << 40,
        handshake_retry_ns: 50 * MS,
        handshake_retry_max_ns: 400 * MS,
        handshake_timeout_ns: 3000 * MS,
        handshakes_per_sec: 50,
        handshake_burst: 5,
        pacer_sources: 64,
        peers_max: 16,
        allow_key_rotation: vec![],
        message_bytes_max: 1400,
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

type Wire = VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>;

struct Node {
    ep: Endpoint,
    addr: SocketAddr,
}

fn emit_into<'a>(
    wire: &'a mut Wire,
    from: SocketAddr,
) -> impl FnMut(PeerId, SocketAddr, &[u8]) + 'a {
    move |_, to, b| wire.push_back((from, to, b.to_vec()))
}

fn pump(now: u64, wire: &mut Wire, a: &mut Node, b: &mut Node) {
    while let Some((from, to, mut bytes)) = wire.pop_front() {
        let n = if to == a.addr { &mut *a } else { &mut *b };
        let mut out = Wire::new();
        let _ =
            n.ep.receive(now, from, &mut bytes, &mut emit_into(&mut out, n.addr));
        wire.extend(out);
    }
}

/// A session past `reject_after_messages` refuses to seal, yet `can_send` still says yes.
/// The engine's `Mesh::ready()` (`has_sendable`) trusts `can_send`, so the shard never
/// parks (busy loop) until the rekey completes; with a lost or refused rekey that is seconds.
#[test]
fn can_send_agrees_with_seal_past_the_message_limit() {
    let mut c = cfg();
    c.rekey_after_messages = 4; // reject after 8
    let mut a = Node {
        ep: Endpoint::new(0, Identity::generate(), Psk::new([9; 32]), c.clone(), 0),
        addr: addr(1),
    };
    let mut b = Node {
        ep: Endpoint::new(0, Identity::generate(), Psk::new([9; 32]), c, 0),
        addr: addr(2),
    };
    let mut wire = Wire::new();
    let key = b.ep.identity().public_key();
    let from = a.addr;
    let pb =
        a.ep.connect(0, b.addr, key, &mut emit_into(&mut wire, from))
            .unwrap();
    pump(0, &mut wire, &mut a, &mut b);
    // Drop whatever the rekey would send: the peer is slow to answer.
    let mut buf = vec![0u8; 16 + DATA_OVERHEAD];
    let mut sealed = 0;
    for _ in 0..20 {
        if a.ep.seal(1, pb, b"0123456789abcdef", &mut buf).is_ok() {
            sealed += 1;
        }
    }
    assert!(
        sealed < 20,
        "the message limit refuses sealing ({sealed} sealed)"
    );
    assert!(
        !a.ep.can_send(pb),
        "can_send says yes while seal refuses: the engine's ready() spins"
    );
}

/// Node A restarts with its wall clock stepped back; B is still up and remembers A's last
/// message-1 timestamp. A's initiations are refused as too old, and while A has an
/// initiation pending it refuses B's initiations as a `Conflict` (A has the lower node id).
/// Neither side ever gets a session until A's clock passes the remembered timestamp.
#[test]
fn a_restarted_node_with_a_clock_behind_can_still_connect() {
    let psk = Psk::new([9; 32]);
    // A must have the lower node id, so that its pending initiation wins conflicts.
    let (ia, ib) = loop {
        let (x, y) = (Identity::generate(), Identity::generate());
        if x.node_id() < y.node_id() {
            break (x, y);
        }
    };
    let skew: i128 = 60_000 * MS as i128; // clock stepped back one minute
    let mut a = Node {
        ep: Endpoint::new(0, ia.clone(), psk.clone(), cfg(), skew),
        addr: addr(1),
    };
    let mut b = Node {
        ep: Endpoint::new(0, ib.clone(), psk.clone(), cfg(), 0),
        addr: addr(2),
    };
    let mut wire = Wire::new();
    let (ka, kb) = (ia.public_key(), ib.public_key());
    let from = a.addr;
    let pb =
        a.ep.connect(0, b.addr, kb, &mut emit_into(&mut wire, from))
            .unwrap();
    pump(0, &mut wire, &mut a, &mut b);
    assert!(a.ep.can_send(pb));

    // A restarts: same identity, clock one minute behind.
    let mut a = Node {
        ep: Endpoint::new(0, ia, psk, cfg(), 0),
        addr: addr(1),
    };
    let mut now = 10 * MS;
    let from = a.addr;
    let pb =
        a.ep.connect(now, b.addr, kb, &mut emit_into(&mut wire, from))
            .unwrap();
    let from_b = b.addr;
    let pa =
        b.ep.connect(now, a.addr, ka, &mut emit_into(&mut wire, from_b))
            .unwrap();
    // Both applications keep wanting to talk for 20 simulated seconds.
    while now < 20_000 * MS {
        pump(now, &mut wire, &mut a, &mut b);
        now += 10 * MS;
        let (fa, fb) = (a.addr, b.addr);
        a.ep.tick(now, &mut emit_into(&mut wire, fa));
        b.ep.tick(now, &mut emit_into(&mut wire, fb));
        a.ep.want(now, pb, &mut emit_into(&mut wire, fa));
        b.ep.want(now, pa, &mut emit_into(&mut wire, fb));
        while a.ep.take_failed().is_some() {}
        while b.ep.take_failed().is_some() {}
        if a.ep.can_send(pb) && b.ep.can_send(pa) {
            return;
        }
    }
    panic!(
        "no session after 20 s: a can_send {}, b can_send {}; b dropped {} as too old, a dropped {} as conflicts",
        a.ep.can_send(pb),
        b.ep.can_send(pa),
        b.ep.counters()
            .dropped(net_transport::stats::DropCause::TooOld),
        a.ep.counters()
            .dropped(net_transport::stats::DropCause::Conflict),
    );
}

/// A data packet whose source address was rewritten to port 0 (authenticated: the header
/// and ciphertext are untouched) moves the peer there; the engine's next sendmmsg to port 0
/// fails with EINVAL, which `classify` calls Hard and which stops the whole shard's mesh.
#[test]
fn roaming_never_follows_an_unusable_source_address() {
    let mut a = Node {
        ep: Endpoint::new(0, Identity::generate(), Psk::new([9; 32]), cfg(), 0),
        addr: addr(1),
    };
    let mut b = Node {
        ep: Endpoint::new(0, Identity::generate(), Psk::new([9; 32]), cfg(), 0),
        addr: addr(2),
    };
    let mut wire = Wire::new();
    let key = b.ep.identity().public_key();
    let from = a.addr;
    let pb =
        a.ep.connect(0, b.addr, key, &mut emit_into(&mut wire, from))
            .unwrap();
    pump(0, &mut wire, &mut a, &mut b);
    let mut buf = vec![0u8; 5 + DATA_OVERHEAD];
    let (len, _) = a.ep.seal(1, pb, b"hello", &mut buf).unwrap();
    let mut pkt = buf[..len].to_vec();
    let r = b.ep.receive(1, addr(0), &mut pkt, &mut |_, _, _| {});
    let Received::Message { peer, .. } = r else {
        panic!("{r:?}")
    };
    assert_ne!(b.ep.peer_addr(peer).port(), 0, "the peer roamed to port 0");
}
