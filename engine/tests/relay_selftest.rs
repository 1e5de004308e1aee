//! The tests' lossy UDP relay (`common/relay.rs`) against a UDP echo server: with no faults
//! every datagram comes back once and in order (and the round-trip rate is printed); with
//! faults, what the client and the echo server got agrees with the relay's counters and the
//! configured rates in both directions; many clients each get their own replies; a network
//! cut with `drop_per_mille: 1000` heals with `set_faults`; the same seed makes the same
//! decisions.
//!
//! Every datagram is `DATAGRAM_LEN` bytes: its sequence number (little-endian) repeated, so a
//! flipped bit is found and the original recovered by majority.
//!
//! The kernel may drop datagrams too if a socket buffer overflows (it should not: every socket
//! has 8 MiB and senders are paced or windowed). Its UDP error counters (`/proc/net/snmp`,
//! for the whole network namespace) are read before and after, and the exact accounting allows
//! for what they grew by; a test that saw kernel drops says so.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::relay::{BUFFER_BYTES, Faults, Relay, RelayStats, enlarge_buffers};

/// Bytes of each test datagram (about a mesh packet).
const DATAGRAM_LEN: usize = 1200;
/// Copies of the sequence number in a datagram.
const COPIES: usize = DATAGRAM_LEN / 8;
/// Datagrams the client sends in the two main tests.
const COUNT: u64 = 20_000;
/// Nothing received for this long after the last send: everything that will arrive has.
const QUIET: Duration = Duration::from_millis(300);

/// The tests share two cores; run them one at a time so each measures only itself.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn datagram(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().repeat(COPIES)
}

/// The sequence number a received datagram was made from, and how many bits differ from it;
/// `None` if it is no test datagram with at most a few bits flipped.
fn classify(data: &[u8]) -> Option<(u64, u32)> {
    if data.len() != DATAGRAM_LEN {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    // At most two copies are damaged, so three of the first five agree.
    let seq = (0..5)
        .map(word)
        .find(|&w| (0..5).filter(|&i| word(i) == w).count() >= 3)?;
    let flipped = (0..COPIES)
        .map(|i| (word(i) ^ seq).count_ones())
        .sum::<u32>();
    (flipped <= 2).then_some((seq, flipped))
}

/// The kernel's UDP receive and send errors so far (the namespace's `/proc/net/snmp`), if
/// readable.
fn kernel_udp_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let at = names.iter().position(|n| *n == name)?;
        values.get(at)?.parse().ok()
    };
    Some(field("InErrors")? + field("SndbufErrors")?)
}

/// What an echo server saw.
#[derive(Debug, Default)]
struct EchoLog {
    /// Datagrams received (each echoed once).
    received: u64,
    /// Of those, with a bit flipped on the way in.
    corrupted: u64,
    /// Datagrams that were no test datagram.
    foreign: u64,
    /// Sequence numbers seen (damaged ones recovered), with how often.
    seqs: HashMap<u64, u32>,
    /// Source addresses seen.
    peers: HashSet<SocketAddr>,
}

/// A thread echoing every datagram back to its sender.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<EchoLog>,
}

impl Echo {
    fn start() -> Echo {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("echo: bind");
        enlarge_buffers(&socket, BUFFER_BYTES);
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("echo: read timeout");
        let addr = socket.local_addr().expect("echo: local address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut log = EchoLog::default();
            let mut buf = vec![0u8; 1 << 16];
            while !stopped.load(Ordering::Relaxed) {
                let (len, from) = match socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(e) => panic!("echo: receive: {e}"),
                };
                socket
                    .send_to(&buf[..len], from)
                    .unwrap_or_else(|e| panic!("echo: send to {from}: {e}"));
                log.received += 1;
                log.peers.insert(from);
                match classify(&buf[..len]) {
                    Some((seq, flipped)) => {
                        *log.seqs.entry(seq).or_default() += 1;
                        log.corrupted += u64::from(flipped > 0);
                    }
                    None => log.foreign += 1,
                }
            }
            log
        });
        Echo { addr, stop, thread }
    }

    fn finish(self) -> EchoLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("echo thread panicked")
    }
}

/// A client socket connected to `to`, with large buffers and a receive timeout.
fn client(to: SocketAddr, timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client: bind");
    enlarge_buffers(&socket, BUFFER_BYTES);
    socket.connect(to).expect("client: connect to the relay");
    socket
        .set_read_timeout(Some(timeout))
        .expect("client: read timeout");
    socket
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Asserts that `observed` out of `trials` is within six standard deviations (plus a little)
/// of what probability `p` predicts.
fn assert_plausible(what: &str, observed: u64, trials: u64, p: f64) {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let (observed_f, trials_f) = (observed as f64, trials as f64);
    let mean = trials_f * p;
    let band = 6.0 * (trials_f * p * (1.0 - p)).sqrt() + 3.0;
    assert!(
        (observed_f - mean).abs() <= band,
        "{what}: {observed} of {trials}, expected {mean:.0} ± {band:.0}"
    );
}

#[test]
fn without_faults_every_datagram_comes_back_once_in_order() {
    let _serial = one_at_a_time();
    let echo = Echo::start();
    let relay = Relay::start(echo.addr, Faults::default());
    let socket = client(relay.addr(), Duration::from_secs(5));
    // At most WINDOW datagrams on the path at once: no buffer on it can overflow, whatever
    // the scheduler does.
    const WINDOW: u64 = 1000;
    let mut buf = vec![0u8; 1 << 16];
    let (mut sent, mut received) = (0u64, 0u64);
    let started = Instant::now();
    while received < COUNT {
        while sent < COUNT && sent - received < WINDOW {
            socket.send(&datagram(sent)).expect("client: send");
            sent += 1;
        }
        let len = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "client: datagram {received} did not come back ({e}); {:?}",
                relay.stats()
            )
        });
        assert_eq!(
            classify(&buf[..len]),
            Some((received, 0)),
            "datagram {received} comes back intact and in order"
        );
        received += 1;
    }
    let elapsed = started.elapsed();
    socket
        .set_read_timeout(Some(QUIET))
        .expect("client: read timeout");
    match socket.recv(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("nothing more comes back, got {other:?}"),
    }
    let stats = relay.stats();
    drop(relay);
    let log = echo.finish();
    assert_eq!(
        stats,
        RelayStats {
            forwarded: 2 * COUNT,
            ..RelayStats::default()
        }
    );
    assert_eq!(log.received, COUNT);
    assert_eq!(log.peers.len(), 1, "one client, one upstream peer");
    eprintln!(
        "no faults: {COUNT} round trips of {DATAGRAM_LEN} B in {elapsed:.2?} \
         ({:.0} datagrams/s through the relay, both directions together)",
        2.0 * f64::from(u32::try_from(COUNT).expect("small")) / elapsed.as_secs_f64()
    );
}

#[test]
fn faults_in_both_directions_match_the_counters_and_the_rates() {
    let _serial = one_at_a_time();
    const RATE_PER_S: u64 = 25_000;
    let faults = Faults {
        drop_per_mille: 50,
        dup_per_mille: 10,
        reorder_per_mille: 50,
        reorder_delay: Duration::from_millis(5),
        corrupt_per_mille: 10,
        seed: 0x5EED,
    };
    let kernel_errors_before = kernel_udp_errors();
    let echo = Echo::start();
    let relay = Relay::start(echo.addr, faults);
    let socket = client(relay.addr(), Duration::from_millis(20));
    let sender = {
        let socket = socket.try_clone().expect("client: clone the socket");
        std::thread::spawn(move || {
            let started = Instant::now();
            for seq in 0..COUNT {
                if seq % 50 == 0 {
                    let due = started + Duration::from_micros(seq * 1_000_000 / RATE_PER_S);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                socket.send(&datagram(seq)).expect("client: send");
            }
        })
    };

    let mut buf = vec![0u8; 1 << 16];
    let (mut received, mut corrupted, mut late) = (0u64, 0u64, 0u64);
    let mut copies: HashMap<u64, u32> = HashMap::new();
    let mut highest: Option<u64> = None;
    let mut last_arrival = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(sender.is_finished() && last_arrival.elapsed() >= QUIET) {
        assert!(Instant::now() < deadline, "the exchange takes too long");
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => panic!("client: receive: {e}"),
        };
        last_arrival = Instant::now();
        let Some((seq, flipped)) = classify(&buf[..len]) else {
            panic!("client: got a datagram that is no (slightly damaged) echo of one it sent");
        };
        assert!(seq < COUNT, "client: got {seq}, never sent");
        received += 1;
        corrupted += u64::from(flipped > 0);
        let seen = copies.entry(seq).or_default();
        *seen += 1;
        if *seen == 1 {
            if highest.is_some_and(|h| seq < h) {
                late += 1;
            }
            highest = highest.max(Some(seq));
        }
    }
    sender.join().expect("sender thread panicked");
    let stats = relay.stats();
    drop(relay);
    let log = echo.finish();
    let kernel_drops = match (kernel_errors_before, kernel_udp_errors()) {
        (Some(before), Some(after)) => after - before,
        _ => 0,
    };
    let distinct = u64::try_from(copies.len()).expect("fits");
    let repeated = copies.values().filter(|&&n| n > 1).count();
    let echo_distinct = u64::try_from(log.seqs.len()).expect("fits");
    eprintln!(
        "faults {faults:?}: sent {COUNT}; echo server got {} ({} corrupted, {echo_distinct} \
         distinct); client got {received} ({corrupted} corrupted, {distinct} distinct, \
         {repeated} more than once, {late} late); relay {stats:?}; kernel UDP errors {kernel_drops}",
        log.received, log.corrupted
    );
    if kernel_drops > 0 {
        eprintln!("the kernel dropped up to {kernel_drops} UDP datagrams meanwhile");
    }

    // Everything that arrived anywhere came from what the client sent.
    assert_eq!(
        log.foreign, 0,
        "the echo server got only the client's datagrams"
    );
    assert!(log.seqs.keys().all(|&seq| seq < COUNT));
    assert_eq!(log.peers.len(), 1, "one client, one upstream peer");

    // Conservation: the relay got the client's datagrams and the echoes, and sent on one
    // copy of each it forwarded plus one per duplicate. Exact unless the kernel dropped some.
    let relay_in = COUNT + log.received;
    let relay_out = log.received + received;
    assert!(
        (stats.forwarded + stats.dropped).abs_diff(relay_in) <= kernel_drops,
        "forwarded + dropped = datagrams into the relay ({relay_in})"
    );
    assert!(
        (stats.forwarded + stats.duplicated).abs_diff(relay_out) <= kernel_drops,
        "forwarded + duplicated = datagrams out of the relay ({relay_out})"
    );

    // Loss in each direction: a datagram dropped on the way up never reaches the echo
    // server, whose echoes are dropped on the way back at the same rate.
    let dropped_up = COUNT - echo_distinct;
    let dropped_down = stats.dropped.saturating_sub(dropped_up);
    assert_plausible("dropped on the way up", dropped_up, COUNT, 0.05);
    assert_plausible("dropped on the way down", dropped_down, log.received, 0.05);
    // A sequence number is lost if dropped up, or each copy that went up is dropped down.
    let (d, u) = (0.05, 0.01);
    let p_lost = d + (1.0 - d) * ((1.0 - u) * d + u * d * d);
    assert_plausible("lost end to end", COUNT - distinct, COUNT, p_lost);

    // The other faults happened, at their rates, and the client saw them.
    assert_plausible("duplicated", stats.duplicated, stats.forwarded, 0.01);
    assert_plausible("reordered", stats.reordered, stats.forwarded, 0.05);
    assert_plausible("corrupted", stats.corrupted, stats.forwarded, 0.01);
    assert!(repeated > 0, "the client got some datagrams twice");
    assert!(
        late > 0 && late <= stats.reordered,
        "the client got some late, each one reordered on the way ({late} late, {} reordered)",
        stats.reordered
    );
    assert!(log.corrupted > 0, "corrupted on the way up");
    assert!(
        corrupted > log.corrupted,
        "corrupted on the way down too (or up and echoed)"
    );
    // A corruption on the way up reaches the client at most four times (duplicated up and
    // down), one on the way down at most twice.
    assert!(corrupted <= 4 * stats.corrupted);
}

#[test]
fn each_client_gets_its_own_replies() {
    let _serial = one_at_a_time();
    const CLIENTS: u64 = 8;
    const EACH: u64 = 300;
    let echo = Echo::start();
    let relay = Relay::start(echo.addr, Faults::default());
    let clients: Vec<UdpSocket> = (0..CLIENTS)
        .map(|_| client(relay.addr(), Duration::from_secs(5)))
        .collect();
    // Interleaved, so that every client's link is in use at once.
    for i in 0..EACH {
        for (c, socket) in (0u64..).zip(&clients) {
            socket.send(&datagram(c * EACH + i)).expect("client: send");
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    for (c, socket) in (0u64..).zip(&clients) {
        for i in 0..EACH {
            let len = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("client {c}: reply {i} did not come ({e})"));
            assert_eq!(classify(&buf[..len]), Some((c * EACH + i, 0)), "client {c}");
        }
    }
    let stats = relay.stats();
    drop(relay);
    let log = echo.finish();
    assert_eq!(stats.forwarded, 2 * CLIENTS * EACH);
    assert_eq!(
        log.peers.len(),
        usize::try_from(CLIENTS).expect("small"),
        "each client is its own peer upstream"
    );
}

#[test]
fn a_cut_network_heals_with_set_faults() {
    let _serial = one_at_a_time();
    let echo = Echo::start();
    let cut = Faults {
        drop_per_mille: 1000,
        ..Faults::default()
    };
    let relay = Relay::start(echo.addr, cut);
    let socket = client(relay.addr(), Duration::from_millis(200));
    let mut buf = vec![0u8; 1 << 16];
    for seq in 0..10 {
        socket.send(&datagram(seq)).expect("client: send");
    }
    match socket.recv(&mut buf) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("a cut network delivers nothing, got {other:?}"),
    }
    assert_eq!(
        relay.stats(),
        RelayStats {
            dropped: 10,
            ..RelayStats::default()
        }
    );
    relay.set_faults(Faults::default());
    for seq in 10..20 {
        socket.send(&datagram(seq)).expect("client: send");
        let len = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("healed: {seq} did not come back ({e})"));
        assert_eq!(classify(&buf[..len]), Some((seq, 0)));
    }
    assert_eq!(
        relay.stats(),
        RelayStats {
            forwarded: 20,
            dropped: 10,
            ..RelayStats::default()
        }
    );
    drop(relay);
    assert_eq!(echo.finish().received, 10);
}

/// Sends `count` datagrams one way through a fresh relay with `faults` into a sink; returns
/// what the sink got (sorted: held datagrams go out at times the scheduler decides) and the
/// relay's counters.
fn one_way(faults: Faults, count: u64) -> (Vec<Vec<u8>>, RelayStats) {
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sink: bind");
    enlarge_buffers(&sink, BUFFER_BYTES);
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("sink: read timeout");
    let relay = Relay::start(sink.local_addr().expect("sink: local address"), faults);
    let socket = client(relay.addr(), Duration::from_secs(1));
    for seq in 0..count {
        socket.send(&datagram(seq)).expect("client: send");
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match sink.recv(&mut buf) {
            Ok(len) => got.push(buf[..len].to_vec()),
            Err(e) if is_timeout(&e) => break,
            Err(e) => panic!("sink: receive: {e}"),
        }
    }
    got.sort();
    (got, relay.stats())
}

#[test]
fn the_same_seed_makes_the_same_decisions() {
    let _serial = one_at_a_time();
    let faults = Faults {
        drop_per_mille: 100,
        dup_per_mille: 100,
        reorder_per_mille: 100,
        reorder_delay: Duration::from_millis(2),
        corrupt_per_mille: 100,
        seed: 7,
    };
    let (first, first_stats) = one_way(faults, 2000);
    let (second, second_stats) = one_way(faults, 2000);
    assert_eq!(first_stats, second_stats);
    assert!(first == second, "the same datagrams, damaged alike, arrive");
    assert_eq!(
        u64::try_from(first.len()).expect("fits"),
        first_stats.forwarded + first_stats.duplicated
    );
    let (other, other_stats) = one_way(Faults { seed: 8, ..faults }, 2000);
    assert!(
        other != first && other_stats != first_stats,
        "another seed, other decisions"
    );
}
