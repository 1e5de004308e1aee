//! A live mesh session under attack from an on-path observer.
//!
//! Two buses, A and B (one shard each), talk through a user-space UDP relay: A dials the
//! relay's address with B's key, the relay forwards A→B and B→A and keeps a copy of every
//! datagram it forwarded, so the attacker holds real captured traffic. A sends numbered
//! messages to B for the whole run (at most `IN_FLIGHT` unanswered, so no queue on the path
//! ever overflows); B's inbox must see each exactly once and nothing else.
//!
//! The attacker sends straight to B's mesh address from its own sockets:
//! - phase 1, from the relay's vantage point (it sees each of A's packets before B does):
//!   (a) replays of captured A→B data packets, inside the receive window, at its edges and
//!   below it; (c) single-bit flips at every byte position, both raced ahead of the original
//!   (its counter still unseen) and of packets B already took; (d) truncations to every
//!   length, both ways. The relay keeps a model of B's receive window (it knows every counter
//!   it forwarded, in order), so the cause of every datagram is computed exactly; before each
//!   group of injections it waits until B has processed everything sent so far, so the model
//!   is exact whatever the scheduler does, and checks B's counters cause by cause.
//! - phase 2: (b) the captured handshake initiation replayed from 16 source addresses;
//!   truncated initiations; the captured response and B's own keepalives reflected back at B;
//!   (e) random garbage of random lengths (some oversized); (f) an initiation flood from 300
//!   ports of 127.0.0.1.
//!
//! Then: B's drop counters equal, cause by cause, what was sent (the flood's split between
//! `paced` and `auth` depends on the pacer's clock, so it is bounded, its sum exact); no
//! attacker socket ever receives a byte and everything B sent went to the relay; each side
//! completed exactly one handshake; every legit message arrived once. The legit message rate
//! before, during and after the attack is printed, not asserted.
//!
//! `MESH_ATTACK_SEED=<n>` replays a run's random choices.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_engine::{Bus, DropCause, Inbox, MeshCounters, MeshMessage, Peer, PeerSendError};

// The wire format as an observer learns it (`transport/src/codec.rs`; cross-checked below).
const VERSION: u8 = 1;
const KIND_INIT: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_DATA: u8 = 3;
const HEADER_LEN: usize = 8;
const DATA_HEADER_LEN: usize = 16;
const DATA_MIN_LEN: usize = 32;
const INIT_LEN: usize = 140;
const RESPONSE_LEN: usize = 68;
/// Counters the receive window tracks, the highest accepted one included.
const WINDOW: u64 = 8128;
/// `mesh.datagram_bytes_max` (the default): longer datagrams arrive truncated.
const DATAGRAM_MAX: usize = 1472;

/// A legit message: its number and the number's complement.
const PAYLOAD_LEN: usize = 16;
/// The datagram carrying one (its sealed plaintext starts with the byte that marks an
/// application message).
const MSG_LEN: usize = DATA_MIN_LEN + 1 + PAYLOAD_LEN;
/// Legit messages sent but not yet in B's inbox, at most.
const IN_FLIGHT: u64 = 64;
/// Legit messages before the attack (the window must have moved past its first 8128 counters
/// for replays below it).
const WARMUP_MESSAGES: u64 = 12_000;
/// Messages B sends A on the session.
const ANSWERS: usize = 20;
/// B's handshake pacer.
const PACER_PER_SEC: u32 = 4;
const PACER_BURST: u32 = 8;
/// Injections the relay makes around one legit packet.
const GROUP: usize = 8;
/// Attack datagrams sent before waiting for B to count them (phase 2).
const BATCH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Small tools.

/// SplitMix64: the test's only randomness, seeded from `MESH_ATTACK_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn below_usize(&mut self, n: usize) -> usize {
        usize::try_from(self.below(u64::try_from(n).expect("fits u64"))).expect("below n")
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.byte();
        }
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below_usize(i + 1);
            v.swap(i, j);
        }
    }
}

fn seed() -> u64 {
    match std::env::var("MESH_ATTACK_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .expect("MESH_ATTACK_SEED: a number")
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970");
            u64::try_from(t.as_nanos() % u128::from(u64::MAX)).expect("reduced")
                ^ u64::from(std::process::id())
        }
    }
}

/// Drop counts by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally([u64; DropCause::ALL.len()]);

impl Tally {
    fn slot(c: DropCause) -> usize {
        DropCause::ALL
            .iter()
            .position(|&x| x == c)
            .expect("a cause of DropCause::ALL")
    }

    fn add(&mut self, c: DropCause) {
        self.0[Tally::slot(c)] += 1;
    }

    fn get(&self, c: DropCause) -> u64 {
        self.0[Tally::slot(c)]
    }

    fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn of(s: &MeshCounters) -> Tally {
        Tally(std::array::from_fn(|i| s.dropped(DropCause::ALL[i])))
    }

    fn plus(&self, o: &Tally) -> Tally {
        Tally(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }

    fn minus(&self, o: &Tally) -> Tally {
        Tally(std::array::from_fn(|i| self.0[i].wrapping_sub(o.0[i])))
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut any = false;
        for c in DropCause::ALL {
            let n = self.get(c);
            if n != 0 {
                write!(f, "{}{}={n}", if any { " " } else { "" }, c.name())?;
                any = true;
            }
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

fn stats(bus: &Bus) -> MeshCounters {
    bus.mesh_stats().expect("the bus runs a mesh").total
}

/// Spins politely: yields first, then sleeps a little (two cores are shared by six threads).
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 200 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn bind(ip: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((ip, 0)))
        .unwrap_or_else(|e| panic!("binding a UDP socket on {ip}: {e}"))
}

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

// ---------------------------------------------------------------------------------------------
// What B does with a datagram, as the spec says.

fn index_of(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"))
}

fn counter_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"))
}

fn is_data(b: &[u8]) -> bool {
    b.len() >= DATA_MIN_LEN && b[0] == VERSION && b[1] == KIND_DATA && b[2] == 0 && b[3] == 0
}

/// Where a counter stands in B's receive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Win {
    /// At or above the window, or inside it and not accepted: goes on to the AEAD.
    Fresh,
    /// Inside the window and accepted before.
    Seen,
    /// Below the window.
    Old,
    /// `u64::MAX`, never valid.
    Invalid,
}

/// The cause B must count for `b`, which is not a genuine unseen packet (it is an attack):
/// `session` is B's index for A's session (its only one), `window` where a counter stands.
/// `None`: an initiation of the right length, whose fate is up to the pacer and the
/// cryptography.
fn expected_cause(b: &[u8], session: u32, window: &dyn Fn(u64) -> Win) -> Option<DropCause> {
    if b.len() > DATAGRAM_MAX || b.len() < HEADER_LEN || b[0] != VERSION || b[2] != 0 || b[3] != 0 {
        return Some(DropCause::Malformed);
    }
    let index = index_of(b);
    Some(match b[1] {
        KIND_INIT if b.len() == INIT_LEN => return None,
        KIND_RESPONSE if b.len() == RESPONSE_LEN => {
            // A response for a live session was used already; any other index names nothing.
            if index == session {
                DropCause::Replay
            } else {
                DropCause::UnknownReceiver
            }
        }
        KIND_DATA if b.len() >= DATA_MIN_LEN => {
            if index != session {
                DropCause::UnknownReceiver
            } else {
                match window(counter_of(b)) {
                    Win::Invalid => DropCause::Malformed,
                    Win::Old => DropCause::TooOld,
                    Win::Seen => DropCause::Replay,
                    Win::Fresh => DropCause::Auth,
                }
            }
        }
        _ => DropCause::Malformed,
    })
}

/// B's receive window for A's session, as the relay sees it: every counter it forwarded, in
/// the order B processes them (the relay waits for B before each injection).
#[derive(Default)]
struct Model {
    next: u64,
    seen: Vec<bool>,
    packets: Vec<Option<Vec<u8>>>,
}

impl Model {
    fn accept(&mut self, b: &[u8]) -> Result<(), String> {
        let c = counter_of(b);
        let i = usize::try_from(c)
            .ok()
            .filter(|&i| i < 100_000_000)
            .ok_or_else(|| format!("A sent counter {c}: not a counter of this short test"))?;
        if i >= self.seen.len() {
            self.seen.resize(i + 1, false);
            self.packets.resize(i + 1, None);
        }
        if self.seen[i] {
            return Err(format!("A sent counter {c} twice"));
        }
        self.seen[i] = true;
        self.packets[i] = Some(b.to_vec());
        self.next = self.next.max(c + 1);
        Ok(())
    }

    fn judge(&self, x: u64) -> Win {
        if x == u64::MAX {
            Win::Invalid
        } else if x >= self.next {
            Win::Fresh
        } else if self.next - x > WINDOW {
            Win::Old
        } else if usize::try_from(x).is_ok_and(|i| self.seen[i]) {
            Win::Seen
        } else {
            Win::Fresh
        }
    }

    fn packet(&self, x: u64) -> Option<&[u8]> {
        self.packets.get(usize::try_from(x).ok()?)?.as_deref()
    }
}

// ---------------------------------------------------------------------------------------------
// The relay, and the attacks made from its vantage point (phase 1).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    AToB,
    BToA,
}

/// Every datagram the relay forwarded, in order, with its direction.
type Captured = Arc<Mutex<Vec<(Dir, Vec<u8>)>>>;

#[derive(Debug, Clone, Copy)]
enum Age {
    /// Inside the window (half of them among the last 64 counters).
    Recent,
    /// The oldest counter the window still tracks.
    EdgeIn,
    /// One below it.
    EdgeOut,
    /// Anywhere below the window.
    Old,
}

/// One injection of phase 1. `ahead`: made from the packet A just sent, before the relay
/// forwards it (its counter is unseen); otherwise from a packet B already took.
#[derive(Debug, Clone, Copy)]
enum Inject {
    Replay(Age),
    Flip { pos: usize, bit: u8, ahead: bool },
    Truncate { len: usize, ahead: bool },
}

impl Inject {
    fn ahead(self) -> bool {
        match self {
            Inject::Replay(_) => false,
            Inject::Flip { ahead, .. } | Inject::Truncate { ahead, .. } => ahead,
        }
    }

    fn category(self) -> &'static str {
        match self {
            Inject::Replay(Age::Recent) => "(a) replay inside the window",
            Inject::Replay(Age::EdgeIn) => "(a) replay of the window's oldest counter",
            Inject::Replay(Age::EdgeOut) => "(a) replay one below the window",
            Inject::Replay(Age::Old) => "(a) replay below the window",
            Inject::Flip { ahead: true, .. } => "(c) bit flip raced ahead of the original",
            Inject::Flip { ahead: false, .. } => "(c) bit flip of a packet B took",
            Inject::Truncate { ahead: true, .. } => "(d) truncation raced ahead of the original",
            Inject::Truncate { ahead: false, .. } => "(d) truncation of a packet B took",
        }
    }
}

/// Phase 1's attacks, in a random order.
fn phase1_plan(rng: &mut Rng) -> Vec<Inject> {
    let mut plan = Vec::new();
    for (age, n) in [
        (Age::Recent, 2000),
        (Age::EdgeIn, 100),
        (Age::EdgeOut, 100),
        (Age::Old, 2000),
    ] {
        plan.extend(std::iter::repeat_n(Inject::Replay(age), n));
    }
    for ahead in [true, false] {
        for _ in 0..6 {
            for pos in 0..MSG_LEN {
                let bit = u8::try_from(rng.below(8)).expect("below 8");
                plan.push(Inject::Flip { pos, bit, ahead });
            }
        }
        for _ in 0..2 {
            plan.extend((0..MSG_LEN).map(|len| Inject::Truncate { len, ahead }));
        }
    }
    rng.shuffle(&mut plan);
    plan
}

#[derive(Debug)]
struct Phase1Report {
    by_category: BTreeMap<&'static str, Tally>,
    total: Tally,
    groups: u64,
    /// Byte positions flipped, raced ahead / after.
    flipped: [[bool; MSG_LEN]; 2],
    /// Lengths truncated to, raced ahead / after.
    truncated: [[bool; MSG_LEN]; 2],
    /// Replays whose target counter was not captured (a hole); none expected.
    skipped: u64,
}

impl Default for Phase1Report {
    fn default() -> Phase1Report {
        Phase1Report {
            by_category: BTreeMap::new(),
            total: Tally::default(),
            groups: 0,
            flipped: [[false; MSG_LEN]; 2],
            truncated: [[false; MSG_LEN]; 2],
            skipped: 0,
        }
    }
}

struct RelayAToB {
    from_a: UdpSocket,
    to_b: UdpSocket,
    b_addr: SocketAddr,
    injectors: Vec<UdpSocket>,
    bus_b: Arc<Bus>,
    captured: Captured,
    session: Arc<Mutex<Option<u32>>>,
    stop: Arc<AtomicBool>,
    plans: mpsc::Receiver<(Vec<Inject>, u64)>,
    reports: mpsc::Sender<Phase1Report>,
}

/// Phase 1 while it runs.
struct Active {
    plan: Vec<Inject>,
    rng: Rng,
    /// B's drops when it began.
    base: Tally,
    report: Phase1Report,
    /// The injections since the last check, described (for a failure message).
    last: Vec<String>,
}

/// Waits until B has processed every datagram sent to it and counted exactly the drops
/// expected since `base`; a difference is an error naming the last injections.
fn settle_b(bus: &Bus, sent: u64, a: &Active) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spins = 0;
    loop {
        let t = stats(bus);
        let drops = Tally::of(&t).minus(&a.base);
        let expected = &a.report.total;
        if t.packets_in == sent && drops == *expected {
            return Ok(());
        }
        let what = || {
            format!(
                "B processed {} of the {sent} datagrams sent to it; drops since phase 1 began \
                 [{drops}], expected [{expected}]; the last injections: {:#?}",
                t.packets_in, a.last
            )
        };
        if t.packets_in > sent {
            return Err(format!("someone else sends to B: {}", what()));
        }
        if t.packets_in == sent && drops.total() == expected.total() {
            return Err(format!("a drop counted under the wrong cause: {}", what()));
        }
        if Instant::now() > deadline {
            return Err(format!("timed out: {}", what()));
        }
        pause(&mut spins);
    }
}

/// Picks a captured A→B data packet of age `age` (its counter).
fn pick(model: &Model, rng: &mut Rng, age: Age) -> Option<u64> {
    let next = model.next;
    for _ in 0..50 {
        let x = match age {
            Age::Recent => {
                let back = if rng.next() & 1 == 0 {
                    1 + rng.below(64)
                } else {
                    1 + rng.below(WINDOW)
                };
                next.checked_sub(back)?
            }
            Age::EdgeIn => next.checked_sub(WINDOW)?,
            Age::EdgeOut => next.checked_sub(WINDOW + 1)?,
            Age::Old => rng.below(next.checked_sub(WINDOW)?),
        };
        if model.packet(x).is_some() {
            return Some(x);
        }
        if matches!(age, Age::EdgeIn | Age::EdgeOut) {
            return None;
        }
    }
    None
}

/// Builds one injection's datagram; `None` when its target was not captured.
fn build(inj: Inject, d: &[u8], model: &Model, rng: &mut Rng) -> Option<(Vec<u8>, String)> {
    let target = |rng: &mut Rng| {
        let age = if rng.next() & 1 == 0 {
            Age::Recent
        } else {
            Age::Old
        };
        pick(model, rng, age).and_then(|x| model.packet(x))
    };
    let (bytes, from) = match inj {
        Inject::Replay(age) => {
            let x = pick(model, rng, age)?;
            (model.packet(x)?.to_vec(), x)
        }
        Inject::Flip { pos, bit, ahead } => {
            let mut b = if ahead {
                d.to_vec()
            } else {
                target(rng)?.to_vec()
            };
            let c = counter_of(&b);
            b[pos] ^= 1 << bit;
            (b, c)
        }
        Inject::Truncate { len, ahead } => {
            let b = if ahead { d } else { target(rng)? };
            (b[..len].to_vec(), counter_of(b))
        }
    };
    let what = format!("{inj:?} of counter {from} (window next {})", model.next);
    Some((bytes, what))
}

impl RelayAToB {
    fn run(self) -> Result<(), String> {
        let mut buf = vec![0u8; 65_536];
        let mut model = Model::default();
        let mut session: Option<u32> = None;
        // Datagrams sent to B (forwarded and injected): B's `packets_in` must match.
        let mut sent: u64 = 0;
        let mut active: Option<Active> = None;
        let mut next_injector = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            if active.is_none()
                && let Ok((plan, seed)) = self.plans.try_recv()
            {
                let a = Active {
                    plan,
                    rng: Rng(seed),
                    base: Tally::of(&stats(&self.bus_b)),
                    report: Phase1Report::default(),
                    last: Vec::new(),
                };
                settle_b(&self.bus_b, sent, &a)?;
                active = Some(a);
            }
            let n = match self.from_a.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(format!("relay: receiving from A: {e}")),
            };
            let d = buf[..n].to_vec();
            self.captured
                .lock()
                .expect("capture lock")
                .push((Dir::AToB, d.clone()));
            let data = is_data(&d);
            if data {
                match session {
                    None => {
                        session = Some(index_of(&d));
                        *self.session.lock().expect("session lock") = session;
                    }
                    Some(s) if s != index_of(&d) => {
                        return Err(format!(
                            "A's data named B's index {s:#010x}, now {:#010x}: a new session",
                            index_of(&d)
                        ));
                    }
                    Some(_) => {}
                }
            }
            let group: Vec<Inject> = match &mut active {
                Some(a) if data && n == MSG_LEN => {
                    let k = a.plan.len().min(GROUP);
                    a.plan.split_off(a.plan.len() - k)
                }
                _ => Vec::new(),
            };
            let forward = |d: &[u8]| {
                self.to_b
                    .send_to(d, self.b_addr)
                    .map_err(|e| format!("relay: forwarding to B: {e}"))
            };
            let Some(a) = active.as_mut().filter(|_| !group.is_empty()) else {
                forward(&d)?;
                sent += 1;
                if data {
                    model.accept(&d)?;
                }
                continue;
            };
            let session = session.expect("a data packet came");
            a.report.groups += 1;
            a.last.clear();
            // Raced ahead of the original, then the original, then the rest; B processes
            // each step before the next, so the model is B's window at every injection.
            for step in 0..2 {
                for &inj in group.iter().filter(|i| i.ahead() == (step == 0)) {
                    let Some((bytes, what)) = build(inj, &d, &model, &mut a.rng) else {
                        a.report.skipped += 1;
                        continue;
                    };
                    let cause = expected_cause(&bytes, session, &|x| model.judge(x))
                        .ok_or_else(|| format!("{what}: became an initiation"))?;
                    let intended = match inj {
                        Inject::Replay(Age::Recent | Age::EdgeIn) => Some(DropCause::Replay),
                        Inject::Replay(Age::EdgeOut | Age::Old) => Some(DropCause::TooOld),
                        _ => None,
                    };
                    if intended.is_some_and(|i| i != cause) {
                        return Err(format!("test bug: {what} judged {cause:?}"));
                    }
                    match inj {
                        Inject::Flip { pos, ahead, .. } => {
                            a.report.flipped[usize::from(!ahead)][pos] = true;
                        }
                        Inject::Truncate { len, ahead } => {
                            a.report.truncated[usize::from(!ahead)][len] = true;
                        }
                        Inject::Replay(_) => {}
                    }
                    let sock = &self.injectors[next_injector % self.injectors.len()];
                    next_injector += 1;
                    sock.send_to(&bytes, self.b_addr)
                        .map_err(|e| format!("attacker: sending {what}: {e}"))?;
                    sent += 1;
                    a.report.total.add(cause);
                    a.report
                        .by_category
                        .entry(inj.category())
                        .or_default()
                        .add(cause);
                    a.last.push(format!("{what} -> expected {}", cause.name()));
                }
                settle_b(&self.bus_b, sent, a)?;
                if step == 0 {
                    forward(&d)?;
                    sent += 1;
                    model.accept(&d)?;
                    settle_b(&self.bus_b, sent, a)?;
                }
            }
            if a.plan.is_empty() {
                let done = active.take().expect("active");
                let _ = self.reports.send(done.report);
            }
        }
        Ok(())
    }
}

fn relay_b_to_a(
    from_b: UdpSocket,
    to_a: UdpSocket,
    a_addr: SocketAddr,
    captured: Captured,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let n = match from_b.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(format!("relay: receiving from B: {e}")),
        };
        captured
            .lock()
            .expect("capture lock")
            .push((Dir::BToA, buf[..n].to_vec()));
        to_a.send_to(&buf[..n], a_addr)
            .map_err(|e| format!("relay: forwarding to A: {e}"))?;
        forwarded.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Legit traffic.

#[derive(Default)]
struct Legit {
    sent: AtomicU64,
    received: AtomicU64,
    stop_sending: AtomicBool,
    stop_receiving: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Legit {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    fn fail(&self, what: String) {
        self.errors.lock().expect("errors lock").push(what);
    }
}

fn legit_payload(n: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..8].copy_from_slice(&n.to_le_bytes());
    p[8..].copy_from_slice(&(!n).to_le_bytes());
    p
}

/// Sends numbered messages, never more than `IN_FLIGHT` ahead of B's inbox.
fn send_legit(mut peer: Peer, legit: Arc<Legit>) -> Peer {
    let mut n = 0u64;
    let mut spins = 0;
    while !legit.stop_sending.load(Ordering::Relaxed) {
        if n - legit.received() >= IN_FLIGHT {
            pause(&mut spins);
            continue;
        }
        match peer.send(&legit_payload(n)) {
            Ok(()) => {
                n += 1;
                legit.sent.store(n, Ordering::Release);
                spins = 0;
            }
            Err(PeerSendError::Full(_)) => pause(&mut spins),
            Err(e) => {
                legit.fail(format!("A: sending message {n}: {e}"));
                break;
            }
        }
    }
    peer
}

/// Reads B's inbox: every message must be one of A's, each once. Returns which arrived.
fn receive_legit(mut inbox: Inbox, a_node: u64, legit: Arc<Legit>) -> Vec<bool> {
    let mut seen: Vec<bool> = Vec::new();
    while !legit.stop_receiving.load(Ordering::Relaxed) {
        inbox.recv_wait(256, Duration::from_millis(20), |m: MeshMessage<'_>| {
            let p = m.payload;
            let n = (p.len() == PAYLOAD_LEN)
                .then(|| u64::from_le_bytes(p[..8].try_into().expect("8 bytes")))
                .filter(|&n| u64::from_le_bytes(p[8..].try_into().expect("8 bytes")) == !n)
                .and_then(|n| usize::try_from(n).ok().filter(|&i| i < 100_000_000));
            match (m.from == a_node, n) {
                (true, Some(i)) => {
                    if i >= seen.len() {
                        seen.resize(i + 1, false);
                    }
                    if seen[i] {
                        legit.fail(format!("message {i} arrived twice"));
                    }
                    seen[i] = true;
                    legit.received.fetch_add(1, Ordering::AcqRel);
                }
                _ => legit.fail(format!(
                    "B's inbox got a message that A never sent: from {:016x}, {p:02x?}",
                    m.from
                )),
            }
        });
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The run's threads, for waits that fail with a message instead of hanging.

type RelayThread = JoinHandle<Result<(), String>>;

struct Threads {
    relays: Vec<(&'static str, Option<RelayThread>)>,
    legit: Arc<Legit>,
}

impl Threads {
    /// Panics if a helper failed or a relay stopped.
    fn check(&mut self) {
        let errors = self.legit.errors.lock().expect("errors lock").clone();
        assert!(errors.is_empty(), "legit traffic: {errors:#?}");
        for (name, h) in &mut self.relays {
            if h.as_ref().is_some_and(|h| h.is_finished()) {
                let r = h.take().expect("a handle").join();
                panic!("the {name} relay stopped: {r:?}");
            }
        }
    }

    fn wait(&mut self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            self.check();
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} (legit: {} sent, {} received)",
                self.legit.sent.load(Ordering::Relaxed),
                self.legit.received()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Legit messages per second between two readings.
fn rate(from: (Instant, u64), to: (Instant, u64)) -> f64 {
    let secs = to.0.duration_since(from.0).as_secs_f64().max(1e-9);
    // Exact below 2^53.
    let n = u32::try_from(to.1 - from.1).map_or(f64::INFINITY, f64::from);
    n / secs
}

// ---------------------------------------------------------------------------------------------
// Phase 2: an attacker with its own sockets.

struct Attacker<'a> {
    bus: &'a Bus,
    target: SocketAddr,
    /// B's drops when phase 2 began.
    base: Tally,
    /// Expected drops since, for the datagrams whose cause is determined.
    expected: Tally,
    /// Flood initiations sent: each is `paced` or, with a pacer token, `auth`.
    flood: u64,
    by_category: BTreeMap<&'static str, Tally>,
    unsettled: usize,
}

impl Attacker<'_> {
    fn send(&mut self, category: &'static str, sock: &UdpSocket, b: &[u8], cause: DropCause) {
        sock.send_to(b, self.target)
            .unwrap_or_else(|e| panic!("{category}: sending {} bytes: {e}", b.len()));
        self.expected.add(cause);
        self.by_category.entry(category).or_default().add(cause);
        self.unsettled += 1;
    }

    fn send_flood(&mut self, sock: &UdpSocket, b: &[u8]) {
        sock.send_to(b, self.target)
            .unwrap_or_else(|e| panic!("flood: sending: {e}"));
        self.flood += 1;
        self.unsettled += 1;
    }

    /// After a batch: waits until B counted every datagram, and checks the causes.
    fn settle_if_full(&mut self, threads: &mut Threads, what: &str) {
        if self.unsettled >= BATCH {
            self.settle(threads, what);
        }
    }

    fn settle(&mut self, threads: &mut Threads, what: &str) {
        self.unsettled = 0;
        let want = self.expected.total() + self.flood;
        let (bus, base) = (self.bus, self.base);
        let mut drops = Tally::default();
        threads.wait(
            &format!("B to count the drops of {what}"),
            Duration::from_secs(10),
            || {
                drops = Tally::of(&stats(bus)).minus(&base);
                drops.total() >= want
            },
        );
        let flood_auth = drops
            .get(DropCause::Auth)
            .wrapping_sub(self.expected.get(DropCause::Auth));
        let flood_paced = drops
            .get(DropCause::Paced)
            .wrapping_sub(self.expected.get(DropCause::Paced));
        let exact = DropCause::ALL
            .iter()
            .filter(|&&c| c != DropCause::Auth && c != DropCause::Paced)
            .all(|&c| drops.get(c) == self.expected.get(c));
        assert!(
            drops.total() == want && exact && flood_auth.wrapping_add(flood_paced) == self.flood,
            "{what}: B counted [{drops}] since phase 2 began, expected [{}] and {} flood \
             initiations counted as paced or auth",
            self.expected,
            self.flood
        );
    }

    /// Drops of phase 2's flood counted as `auth` (they got a pacer token).
    fn flood_auth(&self) -> u64 {
        let drops = Tally::of(&stats(self.bus)).minus(&self.base);
        drops.get(DropCause::Auth) - self.expected.get(DropCause::Auth)
    }
}

// ---------------------------------------------------------------------------------------------

fn mesh_config(dir: &std::path::Path) -> net_engine::Config {
    let mut c = common::mesh_config(dir, 1);
    let m = c.mesh.as_mut().expect("a mesh");
    // No timer may fire by accident on a slow machine: one handshake, no retry, no expiry.
    // (A responder that only receives sends its first keepalive `session_timeout` after the
    // handshake, not `heartbeat`: a long timeout keeps that out of this test.)
    m.session_timeout_ms = 60_000;
    m.handshake_retry_ms = 2000;
    m.handshake_retry_max_ms = 4000;
    m.handshakes_per_sec = PACER_PER_SEC;
    m.handshake_burst = PACER_BURST;
    assert_eq!(m.datagram_bytes_max, DATAGRAM_MAX);
    c
}

#[test]
fn an_on_path_attacker_is_refused_counted_and_never_answered() {
    use net_transport::codec;
    assert_eq!(
        (
            HEADER_LEN,
            DATA_HEADER_LEN,
            DATA_MIN_LEN,
            INIT_LEN,
            RESPONSE_LEN
        ),
        (
            codec::HEADER_LEN,
            codec::DATA_HEADER_LEN,
            codec::DATA_MIN_LEN,
            codec::INIT_LEN,
            codec::RESPONSE_LEN
        )
    );
    assert_eq!(WINDOW, net_transport::replay::WINDOW);
    let seed = seed();
    println!("seed {seed:#x} (MESH_ATTACK_SEED={seed:#x} replays this run's choices)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Bus::start(mesh_config(da.path())).unwrap();
    let b = Arc::new(Bus::start(mesh_config(db.path())).unwrap());
    let (a_addr, b_addr) = (a.mesh_addr().unwrap(), b.mesh_addr().unwrap());
    let (a_node, _) = a.mesh_identity().unwrap();
    let (b_node, b_key) = b.mesh_identity().unwrap();

    // The relay: A dials `facing_a`; `facing_b` talks to B.
    let facing_a = bind(LOCALHOST);
    let facing_b = bind(LOCALHOST);
    for s in [&facing_a, &facing_b] {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let relay_addr = facing_a.local_addr().unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    let session = Arc::new(Mutex::new(None));
    let stop_relay = Arc::new(AtomicBool::new(false));
    let b_to_a = Arc::new(AtomicU64::new(0));
    // Phase 1's attacker sockets (the relay thread sends through clones).
    let injectors: Vec<UdpSocket> = (0..4).map(|_| bind(LOCALHOST)).collect();
    let (plan_tx, plan_rx) = mpsc::channel();
    let (report_tx, report_rx) = mpsc::channel();
    let relay = RelayAToB {
        from_a: facing_a.try_clone().unwrap(),
        to_b: facing_b.try_clone().unwrap(),
        b_addr,
        injectors: injectors.iter().map(|s| s.try_clone().unwrap()).collect(),
        bus_b: b.clone(),
        captured: captured.clone(),
        session: session.clone(),
        stop: stop_relay.clone(),
        plans: plan_rx,
        reports: report_tx,
    };
    let ab = std::thread::spawn(move || relay.run());
    let ba = {
        let (from_b, to_a) = (facing_b.try_clone().unwrap(), facing_a.try_clone().unwrap());
        let (captured, forwarded, stop) = (captured.clone(), b_to_a.clone(), stop_relay.clone());
        std::thread::spawn(move || relay_b_to_a(from_b, to_a, a_addr, captured, forwarded, stop))
    };

    // Legit traffic, for the whole run.
    let legit = Arc::new(Legit::default());
    let mut threads = Threads {
        relays: vec![("A→B", Some(ab)), ("B→A", Some(ba))],
        legit: legit.clone(),
    };
    let inbox = b.mesh_inbox().unwrap();
    let receiver = {
        let legit = legit.clone();
        std::thread::spawn(move || receive_legit(inbox, a_node, legit))
    };
    let to_b = a.connect(relay_addr, b_key).unwrap();
    let sender = {
        let legit = legit.clone();
        std::thread::spawn(move || send_legit(to_b, legit))
    };

    // Phase 0: the handshake, then legit traffic alone.
    threads.wait(
        "the first 2000 legit messages",
        Duration::from_secs(20),
        || legit.received() >= 2000,
    );
    let before_from = (Instant::now(), legit.received());
    threads.wait(
        "the warm-up's legit messages",
        Duration::from_secs(25),
        || legit.received() >= WARMUP_MESSAGES && before_from.0.elapsed() >= Duration::from_secs(1),
    );
    let before_to = (Instant::now(), legit.received());
    // B answers on the session (so B→A data is captured too).
    let mut inbox_a = a.mesh_inbox().unwrap();
    let mut to_a = b.peer(net_engine::ShardId(0), a_node).unwrap();
    for i in 0..ANSWERS {
        to_a.send_timeout(format!("answer {i}").as_bytes(), Duration::from_secs(10))
            .unwrap();
    }
    let mut answers = Vec::new();
    threads.wait("B's answers in A's inbox", Duration::from_secs(10), || {
        inbox_a.recv(64, |m: MeshMessage<'_>| {
            assert_eq!(m.from, b_node, "A's inbox: a message not from B");
            answers.push(m.payload.to_vec());
        });
        answers.len() >= ANSWERS
    });
    answers.sort();
    let mut want: Vec<Vec<u8>> = (0..ANSWERS)
        .map(|i| format!("answer {i}").into_bytes())
        .collect();
    want.sort();
    assert_eq!(answers, want, "B's answers");
    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!(
        sb.dropped_total(),
        0,
        "legit traffic alone made B drop: {sb:?}"
    );
    assert_eq!(
        sa.dropped_total(),
        0,
        "legit traffic alone made A drop: {sa:?}"
    );
    assert_eq!((sa.handshakes, sb.handshakes), (1, 1), "A {sa:?}\nB {sb:?}");
    let session = session.lock().unwrap().expect("A sent data");

    // Phase 1: from the relay's vantage point, in lockstep with B.
    plan_tx.send((phase1_plan(&mut rng), rng.next())).unwrap();
    let mut report = None;
    threads.wait(
        "phase 1 (replays, bit flips, truncations)",
        Duration::from_secs(60),
        || {
            report = report_rx.try_recv().ok();
            report.is_some()
        },
    );
    let p1 = report.expect("a report");
    let phase1_to = (Instant::now(), legit.received());
    for (mode, m) in ["raced ahead", "after"].iter().enumerate() {
        let missing: Vec<usize> = (0..MSG_LEN).filter(|&i| !p1.flipped[mode][i]).collect();
        assert!(
            missing.is_empty(),
            "bit flips {m}: positions {missing:?} never flipped"
        );
        let missing: Vec<usize> = (0..MSG_LEN).filter(|&i| !p1.truncated[mode][i]).collect();
        assert!(
            missing.is_empty(),
            "truncations {m}: lengths {missing:?} never sent"
        );
    }
    assert_eq!(
        p1.skipped, 0,
        "phase 1 injections without a captured target"
    );
    let after_phase1 = Tally::of(&stats(&b));
    assert_eq!(after_phase1, p1.total, "B's drops after phase 1");

    // Phase 2: an attacker with its own sockets.
    let (a_to_b, b_to_a_packets): (Vec<Vec<u8>>, Vec<Vec<u8>>) = {
        let c = captured.lock().unwrap();
        let pick = |d: Dir| {
            c.iter()
                .filter(move |(x, _)| *x == d)
                .map(|(_, b)| b.clone())
        };
        (pick(Dir::AToB).collect(), pick(Dir::BToA).collect())
    };
    let msg1s: Vec<&Vec<u8>> = a_to_b
        .iter()
        .filter(|b| b.len() == INIT_LEN && b[1] == KIND_INIT)
        .collect();
    assert!(!msg1s.is_empty(), "the relay captured no initiation");
    let msg2s: Vec<&Vec<u8>> = b_to_a_packets
        .iter()
        .filter(|b| b.len() == RESPONSE_LEN && b[1] == KIND_RESPONSE)
        .collect();
    assert!(!msg2s.is_empty(), "the relay captured no response");
    let mut atk = Attacker {
        bus: &b,
        target: b_addr,
        base: after_phase1,
        expected: Tally::default(),
        flood: 0,
        by_category: BTreeMap::new(),
        unsettled: 0,
    };
    let mut sockets: Vec<UdpSocket> = injectors;
    let no_window = |x: u64| -> Win {
        panic!("counter {x}: no datagram of phase 2 reaches B's window undetermined")
    };

    // (b) The captured initiation, replayed: from 16 addresses, each within its pacer burst,
    // so every one reaches the cryptography, authenticates, and is refused as too old.
    for host in 2..18u8 {
        let s = bind(Ipv4Addr::new(127, 0, 0, host));
        for k in 0..PACER_BURST {
            let m = msg1s[usize::try_from(k).unwrap() % msg1s.len()];
            atk.send("(b) captured initiation replayed", &s, m, DropCause::TooOld);
        }
        atk.settle(&mut threads, "(b) initiation replays");
        sockets.push(s);
    }
    // Truncated initiations and responses; the response itself; B's own keepalives, reflected.
    let s = bind(LOCALHOST);
    for m in msg1s.iter().take(1).chain(msg2s.iter().take(1)) {
        for len in 0..m.len() {
            let cause = expected_cause(&m[..len], session, &no_window).expect("not whole");
            atk.send("(d) truncated handshake packet", &s, &m[..len], cause);
            atk.settle_if_full(&mut threads, "(d) truncated handshake packets");
        }
    }
    for m in &msg2s {
        for _ in 0..5 {
            let cause = expected_cause(m, session, &no_window).expect("a response");
            atk.send(
                "(+) captured handshake response replayed to B",
                &s,
                m,
                cause,
            );
        }
    }
    atk.settle(&mut threads, "(b) responses reflected");
    // B's keepalives carry counters of B's own sending (a few per second): if A's index
    // happens to equal B's, they land in B's window far below it.
    let floor = stats(&b).messages_in;
    for k in b_to_a_packets.iter().filter(|p| is_data(p)).take(50) {
        let cause = expected_cause(k, session, &|x| {
            assert!(
                x + WINDOW < floor,
                "B→A counter {x} too close to B's window"
            );
            Win::Old
        })
        .expect("data");
        atk.send("(+) B's own data packets reflected to B", &s, k, cause);
    }
    atk.settle(&mut threads, "B's packets reflected");
    sockets.push(s);

    // (e) Garbage of random lengths (a tenth oversized), half of it shaped like a header.
    let garbage: Vec<UdpSocket> = (0..4).map(|_| bind(LOCALHOST)).collect();
    let mut sent_garbage = 0;
    while sent_garbage < 3000 {
        let len = if rng.below(10) == 0 {
            DATAGRAM_MAX - 8 + rng.below_usize(600)
        } else {
            rng.below_usize(300)
        };
        let mut g = vec![0u8; len];
        rng.fill(&mut g);
        if rng.below(2) == 0 && len >= 4 {
            g[0] = VERSION;
            g[1] = [0, KIND_INIT, KIND_RESPONSE, KIND_DATA, KIND_DATA, 4, 0xff][rng.below_usize(7)];
            g[2] = 0;
            g[3] = 0;
        }
        let Some(cause) = expected_cause(&g, session, &|_| Win::Fresh) else {
            continue; // an initiation: the flood's business
        };
        if (HEADER_LEN..=DATAGRAM_MAX).contains(&len) && index_of(&g) == session {
            continue; // names the live session: not garbage any more
        }
        let s = &garbage[sent_garbage % garbage.len()];
        atk.send("(e) random garbage", s, &g, cause);
        atk.settle_if_full(&mut threads, "(e) garbage");
        sent_garbage += 1;
    }
    atk.settle(&mut threads, "(e) garbage");
    sockets.extend(garbage);

    // (f) An initiation flood from 300 ports of 127.0.0.1 (the relay's address too): one
    // bucket, so `burst` of them reach the cryptography (and fail it), the rest are paced;
    // the bucket refills at `PACER_PER_SEC` meanwhile.
    let flood: Vec<UdpSocket> = (0..300).map(|_| bind(LOCALHOST)).collect();
    let flood_start = Instant::now();
    for i in 0..600 {
        let mut m = [0u8; INIT_LEN];
        rng.fill(&mut m);
        m[..4].copy_from_slice(&[VERSION, KIND_INIT, 0, 0]);
        atk.send_flood(&flood[i % flood.len()], &m);
        atk.settle_if_full(&mut threads, "(f) the initiation flood");
    }
    atk.settle(&mut threads, "(f) the initiation flood");
    let flood_secs = flood_start.elapsed().as_secs_f64();
    let flood_auth = atk.flood_auth();
    sockets.extend(flood);
    let phase2_to = (Instant::now(), legit.received());

    // After: legit traffic alone again for a while.
    threads.wait(
        "legit traffic after the attack",
        Duration::from_secs(20),
        || {
            legit.received() >= phase2_to.1 + 2000
                && phase2_to.0.elapsed() >= Duration::from_millis(500)
        },
    );
    let after_to = (Instant::now(), legit.received());
    legit.stop_sending.store(true, Ordering::Relaxed);
    let to_b = sender.join().expect("the sender");
    let sent = legit.sent.load(Ordering::Acquire);
    threads.wait(
        "every legit message in B's inbox",
        Duration::from_secs(20),
        || legit.received() >= sent,
    );
    legit.stop_receiving.store(true, Ordering::Relaxed);
    let seen = receiver.join().expect("the receiver");
    threads.check();

    // Nothing came back to any attacker socket.
    std::thread::sleep(Duration::from_millis(300));
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut buf = [0u8; 2048];
        match s.recv_from(&mut buf) {
            Err(e) if is_timeout(&e) => {}
            Ok((n, from)) => panic!(
                "attacker socket {} received {n} bytes from {from}: {:02x?}",
                s.local_addr().unwrap(),
                &buf[..n]
            ),
            Err(e) => panic!("attacker socket: {e}"),
        }
    }
    // Everything B sent went to the relay (B's keepalives keep coming: compare at a quiet
    // moment).
    let mut out = (0, 0);
    threads.wait(
        "B's datagrams all at the relay",
        Duration::from_secs(5),
        || {
            let sent_by_b = stats(&b).packets_out;
            out = (sent_by_b, b_to_a.load(Ordering::Relaxed));
            out.0 == out.1 && stats(&b).packets_out == sent_by_b
        },
    );

    // The session was never disturbed.
    let (sa, sb) = (stats(&a), stats(&b));
    let stats_b = b.mesh_stats().unwrap();
    println!("A: {sa:?}");
    println!("B: {sb:?}");
    assert_eq!(
        (sa.handshakes, sb.handshakes),
        (1, 1),
        "a session was replaced"
    );
    assert_eq!((sa.rekeys, sb.rekeys), (0, 0));
    assert_eq!(sb.initiations, 0, "B started a handshake");
    assert_eq!(sa.dropped_total(), 0, "A (not attacked) dropped: {sa:?}");
    assert_eq!(sa.messages_in, u64::try_from(ANSWERS).unwrap());
    assert_eq!(
        inbox_a.recv(usize::MAX, |_| {}),
        0,
        "A's inbox got more than B's answers"
    );
    assert_eq!(
        stats_b.peers.len(),
        1,
        "an attacker became B's peer: {:?}",
        stats_b.peers
    );
    assert_eq!(stats_b.shards[0].inbox_dropped, 0);

    // Every legit message once (duplicates and strangers were checked as they came).
    assert_eq!(legit.received(), sent);
    assert_eq!(
        sb.messages_in, sent,
        "B delivered {} of {sent}",
        sb.messages_in
    );
    let missing: Vec<usize> = (0..usize::try_from(sent).unwrap())
        .filter(|&i| !seen.get(i).copied().unwrap_or(false))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "legit messages never delivered: {missing:?}..."
    );

    // Every attack datagram refused and counted under its cause.
    let observed = Tally::of(&sb);
    let exact = p1.total.plus(&atk.expected);
    let flood_paced = atk.flood - flood_auth;
    let mut expected = exact;
    for _ in 0..flood_auth {
        expected.add(DropCause::Auth);
    }
    for _ in 0..flood_paced {
        expected.add(DropCause::Paced);
    }
    assert_eq!(
        observed, expected,
        "B's drops [{observed}], expected [{expected}]"
    );
    // The flood: the bucket of 127.0.0.1 is full when it starts (A's one initiation was
    // seconds ago), so exactly `burst` reach the cryptography, plus what refills meanwhile.
    let refill = (flood_secs * f64::from(PACER_PER_SEC)).ceil();
    assert!(
        flood_auth >= u64::from(PACER_BURST)
            && f64::from(u32::try_from(flood_auth).unwrap())
                <= f64::from(PACER_BURST) + refill + 1.0,
        "flood: {flood_auth} of {} reached the cryptography in {flood_secs:.3} s, burst \
         {PACER_BURST}, {PACER_PER_SEC}/s",
        atk.flood
    );

    // The report.
    let attack_total = exact.total() + atk.flood;
    println!("--- attack datagrams, by kind and the cause B counted ---");
    for (cat, t) in p1.by_category.iter().chain(atk.by_category.iter()) {
        println!("{:>6}  {cat}: {t}", t.total());
    }
    println!(
        "{:>6}  (f) initiation flood from 300 ports: auth={flood_auth} paced={flood_paced} \
         (in {flood_secs:.3} s)",
        atk.flood
    );
    println!("{attack_total:>6}  in all; B counted [{observed}]");
    let a_index = b_to_a_packets
        .iter()
        .find(|p| is_data(p))
        .map(|p| index_of(p));
    println!(
        "phase 1: {} groups in lockstep with B; session indices: B's {session:#010x}, A's \
         {a_index:#010x?}",
        p1.groups
    );
    println!(
        "--- legit messages: {sent} sent, {} delivered, each once ---",
        legit.received()
    );
    println!(
        "rate before the attack:      {:>9.0} msg/s",
        rate(before_from, before_to)
    );
    println!(
        "rate during phase 1:         {:>9.0} msg/s (relay waits for B around each injection)",
        rate(before_to, phase1_to)
    );
    println!(
        "rate during phase 2:         {:>9.0} msg/s",
        rate(phase1_to, phase2_to)
    );
    println!(
        "rate after the attack:       {:>9.0} msg/s",
        rate(phase2_to, after_to)
    );
    println!("run: {:.1} s", started.elapsed().as_secs_f64());

    stop_relay.store(true, Ordering::Relaxed);
    for (name, h) in &mut threads.relays {
        if let Some(h) = h.take() {
            h.join()
                .unwrap_or_else(|_| panic!("the {name} relay panicked"))
                .unwrap_or_else(|e| panic!("the {name} relay: {e}"));
        }
    }
    drop((to_a, to_b));
    assert!(!a.shutdown(Duration::from_secs(5)).lossy);
    let b = Arc::try_unwrap(b).unwrap_or_else(|_| panic!("B still shared"));
    assert!(!b.shutdown(Duration::from_secs(5)).lossy);
}
