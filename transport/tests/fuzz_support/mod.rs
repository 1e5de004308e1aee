//! The fuzzing properties of the receive path, shared by the stable harness
//! (`tests/fuzz_stable.rs`, proptest, run by CI) and the cargo-fuzz targets (`fuzz/`, which
//! include this file by path). Every check is an `assert!`: libFuzzer reports a panic as a
//! crash, proptest as a failure that it shrinks.
//!
//! - [`check_decode`]: the codec is total and returns exactly what the wire format says.
//! - [`Responder`]: one long-lived endpoint that holds a live session (with a real initiator),
//!   a pending initiation of its own, and receives arbitrary datagrams from arbitrary sources
//!   on an increasing clock: none may panic, deliver, answer or be taken as a control packet,
//!   and the real session must keep delivering after each of them.
//! - [`Scenario`]: two endpoints after a real handshake, with real packets captured (message 1,
//!   message 2, keepalives, data that was never delivered); an input mutates and splices them
//!   and delivers the results. Exactly the byte-identical, never-delivered data packets sent
//!   to their own receiver may be accepted; everything else is dropped without an answer; and
//!   the session still delivers fresh messages both ways afterwards.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use net_transport::codec::{
    DATA_MIN_LEN, DATA_OVERHEAD, HEADER_LEN, INIT_LEN, INIT_PAYLOAD_LEN, InitPayload, Malformed,
    Packet, RESPONSE_LEN, RESPONSE_PAYLOAD_LEN, ResponsePayload, VERSION, decode,
};
use net_transport::endpoint::{Endpoint, EndpointConfig, PeerId, Received};
use net_transport::identity::{Identity, Psk};
use net_transport::stats::DropCause;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Timers long enough that no session expires or rekeys during a run (the clock moves at most
/// a few ms per datagram); a heartbeat short enough that ticks send keepalives.
pub fn config() -> EndpointConfig {
    EndpointConfig {
        heartbeat_ns: 500 * MS,
        session_timeout_ns: u64::MAX / 8,
        rekey_after_ns: u64::MAX / 8,
        rekey_after_messages: 1 << 40,
        handshake_retry_ns: 50 * MS,
        handshake_retry_max_ns: 400 * MS,
        handshake_timeout_ns: u64::MAX / 8,
        handshakes_per_sec: 50,
        handshake_burst: 5,
        pacer_sources: 16,
        peers_max: 4,
        allow_key_rotation: vec![],
        message_bytes_max: 1400,
    }
}

/// The identity with node id `node_id` and secret `[seed; 32]` (memoised: deriving the public
/// key is an X25519 operation, and the scenario is built for every input).
fn identity(node_id: u64, seed: u8) -> Identity {
    thread_local! {
        static MADE: std::cell::RefCell<Vec<(u64, u8, Identity)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    MADE.with(|m| {
        let mut m = m.borrow_mut();
        if let Some((_, _, id)) = m.iter().find(|(n, s, _)| (*n, *s) == (node_id, seed)) {
            return id.clone();
        }
        let id = Identity::from_secret(node_id, [seed; 32]);
        m.push((node_id, seed, id.clone()));
        id
    })
}

fn psk() -> Psk {
    Psk::new([0x5a; 32])
}

/// Reads an input front to back; past its end every read is zero.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b }
    }

    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.b.split_first() {
            Some((&x, rest)) => {
                self.b = rest;
                x
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut w = [0u8; 8];
        for x in &mut w {
            *x = self.u8();
        }
        u64::from_le_bytes(w)
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.b.split_at(n.min(self.b.len()));
        self.b = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.b.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Property 1: the codec.

/// `decode` and both payload decoders on `b`: none panics, and each answer is exactly what the
/// wire format (codec.rs's module doc) says for these bytes.
pub fn check_decode(b: &[u8]) {
    let got = decode(b);
    let index = (b.len() >= HEADER_LEN).then(|| u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
    let expect: Result<u8, Malformed> = if b.len() < HEADER_LEN {
        Err(Malformed::Short)
    } else if b[0] != VERSION {
        Err(Malformed::Version(b[0]))
    } else if b[2] != 0 || b[3] != 0 {
        Err(Malformed::Reserved)
    } else {
        match b[1] {
            1 if b.len() == INIT_LEN => Ok(1),
            2 if b.len() == RESPONSE_LEN => Ok(2),
            1 | 2 => Err(Malformed::Length),
            3 if b.len() < DATA_MIN_LEN => Err(Malformed::Short),
            3 => Ok(3),
            k => Err(Malformed::Kind(k)),
        }
    };
    match (got, expect) {
        (Err(g), Err(e)) => assert_eq!(g, e, "decode({b:02x?})"),
        (Ok(Packet::Init { sender, noise }), Ok(1)) => {
            assert_eq!(Some(sender), index);
            assert!(std::ptr::eq(noise, &b[HEADER_LEN..]), "noise is the rest");
        }
        (Ok(Packet::Response { receiver, noise }), Ok(2)) => {
            assert_eq!(Some(receiver), index);
            assert!(std::ptr::eq(noise, &b[HEADER_LEN..]), "noise is the rest");
        }
        (Ok(Packet::Data { receiver, counter }), Ok(3)) => {
            assert_eq!(Some(receiver), index);
            let mut c = [0u8; 8];
            c.copy_from_slice(&b[8..16]);
            assert_eq!(counter, u64::from_le_bytes(c));
        }
        (got, expect) => panic!("decode({b:02x?}) = {got:?}, expected kind {expect:?}"),
    }
    // The payload decoders, on the whole input and on its prefixes of their exact lengths
    // (so that round trips are checked whatever the input's length).
    for p in [b, &b[..b.len().min(INIT_PAYLOAD_LEN)]] {
        match InitPayload::decode(p) {
            Ok(v) => {
                assert_eq!(p.len(), INIT_PAYLOAD_LEN);
                let mut out = [0u8; INIT_PAYLOAD_LEN];
                v.encode(&mut out);
                assert_eq!(&out[..], p, "InitPayload round trip");
            }
            Err(e) => {
                assert_ne!(p.len(), INIT_PAYLOAD_LEN);
                assert_eq!(e, Malformed::Length);
            }
        }
    }
    for p in [b, &b[..b.len().min(RESPONSE_PAYLOAD_LEN)]] {
        match ResponsePayload::decode(p) {
            Ok(v) => {
                assert_eq!(p.len(), RESPONSE_PAYLOAD_LEN);
                let mut out = [0u8; RESPONSE_PAYLOAD_LEN];
                v.encode(&mut out);
                assert_eq!(&out[..], p, "ResponsePayload round trip");
            }
            Err(e) => {
                assert_ne!(p.len(), RESPONSE_PAYLOAD_LEN);
                assert_eq!(e, Malformed::Length);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A fake network between endpoints.

/// Datagrams in flight: (from, to, bytes).
type Wire = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

/// Delivers everything in flight, and what it provokes, to whichever of `nodes` it is
/// addressed to (datagrams to other addresses are lost).
fn pump(now: u64, wire: &mut Wire, nodes: &mut [(&mut Endpoint, SocketAddr)]) {
    while !wire.is_empty() {
        let (from, to, mut bytes) = wire.remove(0);
        let Some((ep, at)) = nodes.iter_mut().find(|(_, a)| *a == to) else {
            continue;
        };
        let at = *at;
        let r = ep.receive(now, from, &mut bytes, &mut |_, dst, b| {
            wire.push((at, dst, b.to_vec()))
        });
        assert!(
            !matches!(r, Received::Dropped(_) | Received::Message { .. }),
            "setup: {r:?}"
        );
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

/// Seals `msg` from `from` to its peer `peer`; returns the datagram and where it goes.
fn seal(now: u64, from: &mut Endpoint, peer: PeerId, msg: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut out = vec![0u8; msg.len() + DATA_OVERHEAD];
    let (n, to) = from.seal(now, peer, msg, &mut out).expect("a live session");
    out.truncate(n);
    (out, to)
}

/// Delivers a genuine data packet and checks that exactly `msg` comes out.
fn deliver(now: u64, to: &mut Endpoint, src: SocketAddr, mut pkt: Vec<u8>, msg: &[u8]) {
    let r = to.receive(now, src, &mut pkt, &mut |_, _, _| {
        panic!("a data packet is never answered")
    });
    match r {
        Received::Message { range, .. } => assert_eq!(&pkt[range], msg, "plaintext"),
        r => panic!("the genuine session did not deliver {msg:02x?}: {r:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Property 2: arbitrary datagrams into a responder.

/// A responder that lives across many inputs: it has a live session with `init` (a real
/// handshake) and a pending initiation of its own to a node that never answers.
#[derive(Debug)]
pub struct Responder {
    ep: Endpoint,
    addr: SocketAddr,
    init: Endpoint,
    init_addr: SocketAddr,
    /// `init`'s id for the responder.
    peer: PeerId,
    /// The responder's index of the live session, and of its pending initiation.
    session_index: [u8; 4],
    pending_index: [u8; 4],
    now: u64,
    fed: u64,
}

impl Default for Responder {
    fn default() -> Self {
        Responder::new()
    }
}

impl Responder {
    pub fn new() -> Responder {
        let mut ep = Endpoint::new(0, identity(0x1111, 1), psk(), config(), 0);
        let mut init = Endpoint::new(0, identity(0x2222, 2), psk(), config(), 0);
        let (addr, init_addr) = (v4([127, 0, 0, 1], 1000), v4([127, 0, 0, 2], 2000));
        let mut wire = Wire::new();
        let key = ep.identity().public_key();
        let peer = init
            .connect(0, addr, key, &mut |_, to, b| {
                wire.push((init_addr, to, b.to_vec()))
            })
            .expect("connect");
        pump(0, &mut wire, &mut [(&mut ep, addr), (&mut init, init_addr)]);
        assert!(init.can_send(peer), "setup: handshake");
        // The responder dials a node that is not there: a pending initiation.
        let silent = identity(0x3333, 3).public_key();
        let mut m1 = Vec::new();
        ep.connect(0, v4([127, 0, 0, 3], 3000), silent, &mut |_, _, b| {
            m1 = b.to_vec()
        })
        .expect("connect");
        assert_eq!(m1.len(), INIT_LEN, "setup: message 1");
        let pending_index = [m1[4], m1[5], m1[6], m1[7]];
        let (d, _) = seal(0, &mut init, peer, b"setup");
        let session_index = [d[4], d[5], d[6], d[7]];
        deliver(0, &mut ep, init_addr, d, b"setup");
        Responder {
            ep,
            addr,
            init,
            init_addr,
            peer,
            session_index,
            pending_index,
            now: 1,
            fed: 0,
        }
    }

    /// The responder (its counters tell which paths the inputs reached).
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// One datagram from `input`:
    /// - byte 0 (control): bits 0-1 the source (0: the live peer's address; 1: IPv4 and port
    ///   from the next 6 bytes; 2: IPv6 and port from the next 18; 3: 203.0.113.x and port
    ///   from the next 3); bit 2: run the timers first; bit 3: frame the datagram (version 1,
    ///   reserved bits zero, kind 1-3 from its own kind byte, a handshake's exact length, a
    ///   data packet at least its minimum); bits 4-5: write the live session's (1) or the
    ///   pending initiation's (2) index into the header.
    /// - byte 1: the clock advances by 1 + 10 µs times it.
    /// - the rest: the datagram.
    ///
    /// Nothing in it can hold a key, so it must be dropped (never a message or a control
    /// packet, never answered), and the live session must then still deliver.
    pub fn feed(&mut self, input: &[u8]) {
        let mut r = Reader::new(input);
        let ctl = r.u8();
        self.now += 1 + u64::from(r.u8()) * 10 * US;
        let src = match ctl & 3 {
            0 => self.init_addr,
            1 => {
                let a = [r.u8(), r.u8(), r.u8(), r.u8()];
                v4(a, r.u16())
            }
            2 => {
                let mut a = [0u8; 16];
                for x in &mut a {
                    *x = r.u8();
                }
                SocketAddr::from((Ipv6Addr::from(a), r.u16()))
            }
            _ => v4([203, 0, 113, r.u8()], r.u16()),
        };
        let mut pkt = r.rest().to_vec();
        if ctl & 8 != 0 {
            frame(&mut pkt);
        }
        if pkt.len() >= HEADER_LEN {
            match (ctl >> 4) & 3 {
                1 => pkt[4..8].copy_from_slice(&self.session_index),
                2 => pkt[4..8].copy_from_slice(&self.pending_index),
                _ => {}
            }
        }
        if ctl & 4 != 0 {
            self.ep.tick(self.now, &mut |_, _, _| {});
        }
        let shown = pkt.clone();
        let mut answered = false;
        let got = self
            .ep
            .receive(self.now, src, &mut pkt, &mut |_, _, _| answered = true);
        assert!(
            matches!(got, Received::Dropped(_)),
            "arbitrary datagram from {src} not dropped: {got:?}; datagram {}",
            hex(&shown)
        );
        assert!(
            !answered,
            "arbitrary datagram from {src} answered; datagram {}",
            hex(&shown)
        );
        // The live session is intact.
        self.fed += 1;
        let msg = self.fed.to_le_bytes();
        let (d, to) = seal(self.now, &mut self.init, self.peer, &msg);
        assert_eq!(to, self.addr);
        deliver(self.now, &mut self.ep, self.init_addr, d, &msg);
    }
}

/// Makes `pkt` a well-framed datagram of some kind (keeping its content otherwise).
fn frame(pkt: &mut Vec<u8>) {
    if pkt.len() < HEADER_LEN {
        pkt.resize(HEADER_LEN, 0);
    }
    pkt[0] = VERSION;
    pkt[1] = 1 + pkt[1] % 3;
    pkt[2] = 0;
    pkt[3] = 0;
    match pkt[1] {
        1 => pkt.resize(INIT_LEN, 0),
        2 => pkt.resize(RESPONSE_LEN, 0),
        _ if pkt.len() < DATA_MIN_LEN => pkt.resize(DATA_MIN_LEN, 0),
        _ => {}
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Property 3: mutations of captured real packets.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// A packet captured off the wire.
#[derive(Debug)]
struct Captured {
    bytes: Vec<u8>,
    /// Its receiver and sender.
    to: Side,
    /// For a data packet not yet delivered: what it must deliver (empty: a keepalive).
    fresh: Option<Vec<u8>>,
}

/// Captured packets kept at most (ticks add keepalives).
const POOL_MAX: usize = 24;
/// Datagrams delivered per input at most.
const OPS_MAX: usize = 48;

/// Two endpoints after a real handshake (`a` initiated), and the packets captured.
#[derive(Debug)]
pub struct Scenario {
    a: Endpoint,
    b: Endpoint,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    /// a's id for b, b's id for a.
    pb: PeerId,
    pa: PeerId,
    /// Where each side's peer must be (moves only on a delivered genuine packet).
    b_seen_at: SocketAddr,
    a_seen_at: SocketAddr,
    pool: Vec<Captured>,
    now: u64,
    delivered: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    /// Handshake a → b, capturing message 1, message 2 and the confirming keepalive (all
    /// delivered), then data a → b and b → a that is captured and not delivered.
    pub fn new() -> Scenario {
        let mut a = Endpoint::new(0, identity(0xa, 0xa1), psk(), config(), 0);
        let mut b = Endpoint::new(0, identity(0xb, 0xb2), psk(), config(), 0);
        let (a_addr, b_addr) = (v4([127, 0, 0, 1], 1), v4([127, 0, 0, 2], 2));
        let mut pool = Vec::new();
        let mut m1 = Vec::new();
        let key = b.identity().public_key();
        let pb = a
            .connect(0, b_addr, key, &mut |_, _, p| m1 = p.to_vec())
            .expect("connect");
        let mut m2 = Vec::new();
        let r = b.receive(0, a_addr, &mut m1.clone(), &mut |_, _, p| m2 = p.to_vec());
        assert_eq!(r, Received::Control, "setup: message 1");
        let mut k0 = Vec::new();
        let r = a.receive(0, b_addr, &mut m2.clone(), &mut |_, _, p| k0 = p.to_vec());
        assert_eq!(r, Received::Control, "setup: message 2");
        let r = b.receive(0, a_addr, &mut k0.clone(), &mut |_, _, _| panic!());
        assert_eq!(r, Received::Control, "setup: confirming keepalive");
        let pa = b.peer_by_node(0xa).expect("b knows a");
        assert!(a.can_send(pb) && b.can_send(pa), "setup: sessions");
        for (bytes, to) in [(m1, Side::B), (m2, Side::A), (k0, Side::B)] {
            assert!(!bytes.is_empty());
            pool.push(Captured {
                bytes,
                to,
                fresh: None,
            });
        }
        let big = [0x42u8; 300];
        for msg in [&b"x"[..], b"thirteen byte", &big[..]] {
            let (bytes, _) = seal(0, &mut a, pb, msg);
            pool.push(Captured {
                bytes,
                to: Side::B,
                fresh: Some(msg.to_vec()),
            });
        }
        for msg in [&b"hello"[..], &big[..64]] {
            let (bytes, _) = seal(0, &mut b, pa, msg);
            pool.push(Captured {
                bytes,
                to: Side::A,
                fresh: Some(msg.to_vec()),
            });
        }
        Scenario {
            a,
            b,
            a_addr,
            b_addr,
            pb,
            pa,
            b_seen_at: b_addr,
            a_seen_at: a_addr,
            pool,
            now: 1,
            delivered: 0,
        }
    }

    /// Runs the operations that `input` encodes, then checks that the session still delivers
    /// fresh messages both ways. Each operation is one byte, then its arguments:
    /// - `op & 7 == 0`: advance the clock by up to 655 ms and run both sides' timers; the
    ///   keepalives they send are captured (undelivered) into the pool.
    /// - otherwise: take pool packet `u8 % len`; apply `u8 % 4` mutations (see [`mutate`]);
    ///   send it to its own receiver, or (`op & 0x80`) to the other side; from its sender's
    ///   address, or (`u8 >= 192`) from 203.0.113.x; the clock advances by up to 2.5 ms.
    pub fn run(&mut self, input: &[u8]) {
        let mut r = Reader::new(input);
        let mut ops = 0;
        while !r.is_empty() && ops < OPS_MAX {
            ops += 1;
            let op = r.u8();
            if op & 7 == 0 {
                self.now += 1 + u64::from(r.u16()) * 10 * US;
                self.tick();
                continue;
            }
            let which = usize::from(r.u8()) % self.pool.len();
            let mut pkt = self.pool[which].bytes.clone();
            for _ in 0..r.u8() % 4 {
                mutate(&mut pkt, &mut r, &self.pool);
            }
            let to = match (self.pool[which].to, op & 0x80 != 0) {
                (Side::A, false) | (Side::B, true) => Side::A,
                _ => Side::B,
            };
            let s = r.u8();
            let src = if s >= 192 {
                v4([203, 0, 113, s], u16::from(s))
            } else if to == Side::A {
                self.b_seen_at
            } else {
                self.a_seen_at
            };
            self.now += 1 + u64::from(r.u8()) * 10 * US;
            self.send(pkt, to, src);
        }
        // The genuine session still works, both ways, to the addresses it should.
        // (Both sealed before either is delivered: a delivery moves the receiver's address for
        // its peer to the packet's source.)
        let (da, to) = seal(self.now, &mut self.a, self.pb, b"fresh from a");
        assert_eq!(to, self.b_seen_at, "a's address for b");
        let (db, to) = seal(self.now, &mut self.b, self.pa, b"fresh from b");
        assert_eq!(to, self.a_seen_at, "b's address for a");
        deliver(self.now, &mut self.b, self.a_addr, da, b"fresh from a");
        deliver(self.now, &mut self.a, self.b_addr, db, b"fresh from b");
    }

    /// Genuine packets delivered so far, and the two endpoints' drops.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    pub fn drops(&self, cause: DropCause) -> u64 {
        self.a.counters().dropped(cause) + self.b.counters().dropped(cause)
    }

    fn tick(&mut self) {
        let mut out = Vec::new();
        self.a
            .tick(self.now, &mut |_, _, p| out.push((p.to_vec(), Side::B)));
        self.b
            .tick(self.now, &mut |_, _, p| out.push((p.to_vec(), Side::A)));
        for (bytes, to) in out {
            assert_eq!(
                bytes.len(),
                DATA_MIN_LEN,
                "a tick sends only keepalives here"
            );
            if self.pool.len() < POOL_MAX {
                self.pool.push(Captured {
                    bytes,
                    to,
                    fresh: Some(Vec::new()),
                });
            }
        }
    }

    /// Delivers `pkt` and checks the verdict: a byte-identical, never-delivered data packet
    /// to its own receiver delivers exactly its message (or is a keepalive); anything else is
    /// dropped unanswered.
    fn send(&mut self, mut pkt: Vec<u8>, to: Side, src: SocketAddr) {
        let genuine = self
            .pool
            .iter()
            .position(|c| c.to == to && c.fresh.is_some() && c.bytes == pkt);
        let sent = pkt.clone();
        let ep = match to {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        };
        let mut answered = false;
        let got = ep.receive(self.now, src, &mut pkt, &mut |_, _, _| answered = true);
        assert!(!answered, "answered {} sent to {to:?}", hex(&sent));
        let Some(i) = genuine else {
            assert!(
                matches!(got, Received::Dropped(_)),
                "forged or replayed {} sent to {to:?} from {src}: {got:?}",
                hex(&sent)
            );
            return;
        };
        let msg = self.pool[i].fresh.take().expect("fresh");
        self.delivered += 1;
        match got {
            Received::Message { range, .. } => {
                assert!(!msg.is_empty(), "a keepalive delivered as a message");
                assert_eq!(&pkt[range], &msg[..], "plaintext");
            }
            Received::Control => assert!(msg.is_empty(), "a message taken as a keepalive"),
            r => panic!("a genuine, never-delivered packet was refused: {r:?}"),
        }
        // Authenticated: the receiver follows its peer to `src` (roaming).
        match to {
            Side::A => self.b_seen_at = src,
            Side::B => self.a_seen_at = src,
        }
    }
}

/// One mutation of `pkt`, chosen and parametrised by the input:
/// 0 flip bits at a position; 1 xor 8 bytes at a position; 2 truncate; 3 splice with another
/// pool packet at the same offset; 4 take another packet's first 16 bytes (header and
/// counter); 5 append bytes; 6 overwrite the counter; 7 set one byte.
fn mutate(pkt: &mut Vec<u8>, r: &mut Reader<'_>, pool: &[Captured]) {
    let kind = r.u8() % 8;
    let pos = usize::from(r.u16());
    match kind {
        0 | 7 if !pkt.is_empty() => {
            let at = pos % pkt.len();
            if kind == 0 {
                pkt[at] ^= r.u8();
            } else {
                pkt[at] = r.u8();
            }
        }
        1 if !pkt.is_empty() => {
            let at = pos % pkt.len();
            for (i, x) in r.take(8).iter().enumerate() {
                if let Some(b) = pkt.get_mut(at + i) {
                    *b ^= x;
                }
            }
        }
        2 => pkt.truncate(pos % (pkt.len() + 1)),
        3 | 4 => {
            let other = &pool[usize::from(r.u8()) % pool.len()].bytes;
            if kind == 3 {
                let cut = pos % (pkt.len() + 1);
                pkt.truncate(cut);
                pkt.extend_from_slice(&other[cut.min(other.len())..]);
            } else {
                let n = 16.min(pkt.len()).min(other.len());
                pkt[..n].copy_from_slice(&other[..n]);
            }
        }
        5 => {
            let n = pos % 64;
            pkt.extend_from_slice(r.take(n));
        }
        6 if pkt.len() >= 16 => {
            pkt[8..16].copy_from_slice(&r.u64().to_le_bytes());
        }
        _ => {}
    }
}
