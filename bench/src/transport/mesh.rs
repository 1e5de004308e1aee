//! The net side of `net-bench transport`: two net buses (one shard each, pinned to the two
//! cores the raw limit uses) talking over the encrypted mesh on loopback.
//!
//! - Throughput: an application thread on the first core sends `--packets` messages of
//!   `--payload-bytes` through a `Peer` handle; bus A's shard seals and `sendmmsg`s them; bus
//!   B's shard `recvmmsg`s, authenticates, decrypts and hands them to B's inbox; an
//!   application thread on the second core reads the inbox and checks every sequence number
//!   once. `mesh_pps` is received messages over first send to last receive, as for the raw
//!   limit. Allocations are counted over the whole measured window, every thread.
//! - Latency: a ping-pong between the two application threads through both shards (A's app
//!   → A's shard → B's shard → B's app → B's shard → A's shard → A's app); one-way latency is
//!   half the round trip, as for the raw ping-pong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use net_engine::{Bus, Config, MeshConfig, MeshMessage, Peer, Psk};

use net_transport::codec as net_transport_wire;

use super::{Args, Failure, Mark, MeshResult, Seen, Window, allocs_per_packet, pin, two_cores};

/// Messages sent (and awaited) before the measured window: the handshake and warm pools.
const WARMUP_MESSAGES: u64 = 20_000;
/// The receiver gives up after this long without a new message once the sender is done.
const QUIET: Duration = Duration::from_secs(1);

/// Byte 8 of a message: which phase it belongs to.
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURED: u8 = 1;

fn engine(context: &str) -> impl FnOnce(net_engine::Error) -> Failure + '_ {
    move |e| Failure::engine(context, e)
}

/// One node: a bus with one shard on `core` and a mesh on 127.0.0.1.
fn node(
    dir: &std::path::Path,
    core: Option<usize>,
    psk: &Psk,
    args: &Args,
) -> Result<Bus, Failure> {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        shards: Some(1),
        pin: core.is_some(),
        cores: core.map(|c| vec![c]),
        ..Config::default()
    };
    c.mesh = Some(MeshConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        psk: Some(psk.to_hex()),
        socket_buffer_bytes: args.socket_buffer.max(4096),
        datagram_bytes_max: (args.payload_bytes + net_transport_overhead()).max(128),
        packet_buffers: 8192,
        inbox_bytes: 32 << 20,
        peer_queue_bytes: 8 << 20,
        ..MeshConfig::default()
    });
    Bus::start(c).map_err(engine("starting a mesh node"))
}

/// Bytes a mesh datagram adds to its message (header, counter, tag).
fn net_transport_overhead() -> usize {
    // A data packet's header and tag, and the byte that marks an application message.
    net_transport::codec::DATA_OVERHEAD + 1
}

fn send_blocking(peer: &mut Peer, msg: &[u8]) -> Result<(), Failure> {
    // The product's blocking send (backing off while the queue is full).
    peer.send_timeout(msg, Duration::from_secs(60))
        .map_err(|e| Failure::engine("mesh send", e))
}

/// The two nodes and their cores.
struct Pair {
    a: Bus,
    b: Bus,
    cores: Option<[core_affinity::CoreId; 2]>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn pair(args: &Args) -> Result<Pair, Failure> {
    let cores = two_cores();
    let psk = Psk::generate();
    let da = tempfile::tempdir().map_err(Failure::io("temp dir"))?;
    let db = tempfile::tempdir().map_err(Failure::io("temp dir"))?;
    let a = node(da.path(), cores.map(|c| c[0].id), &psk, args)?;
    let b = node(db.path(), cores.map(|c| c[1].id), &psk, args)?;
    Ok(Pair {
        a,
        b,
        cores,
        _dirs: (da, db),
    })
}

pub fn run(args: &Args) -> Result<MeshResult, Failure> {
    let plain = throughput(args, false)?;
    let attacked = throughput(args, true)?;
    let latency = ping_pong(args)?;
    crate::archive::latency("one-way latency, ping-pong", "net mesh", &latency);
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(MeshResult {
        mesh_p50_us: us(0.5),
        mesh_p99_us: us(0.99),
        attacked_pps: attacked.mesh_pps,
        attack_sent: attacked.attack_sent,
        attack_dropped: attacked.attack_dropped,
        attacked_lost: attacked.lost,
        ..plain
    })
}

/// Attack datagrams per second: handshake initiations (well-formed length, forged content)
/// from many source ports, forged data packets and garbage.
pub const ATTACK_PPS: u64 = 20_000;
/// Source ports the attacker sends from.
pub const ATTACK_SOCKETS: usize = 256;

/// Sprays `target` until `stop`; returns how many datagrams it sent.
fn attacker(
    target: std::net::SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, Failure> {
    use net_transport_wire as wire;
    let sockets: Vec<std::net::UdpSocket> = (0..ATTACK_SOCKETS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(Failure::io("attacker sockets"))?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 1300];
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let due = start.elapsed().as_secs_f64() * ATTACK_PPS as f64;
        if (sent as f64) >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for b in buf.iter_mut() {
            *b = u8::try_from(next() & 0xff).expect("a byte");
        }
        let len = match sent % 3 {
            // A handshake initiation: version, kind 1, zero reserved bytes, exact length.
            0 => {
                buf[..4].copy_from_slice(&[wire::VERSION, 1, 0, 0]);
                wire::INIT_LEN
            }
            // A data packet with a random receiver index and counter.
            1 => {
                buf[..4].copy_from_slice(&[wire::VERSION, 3, 0, 0]);
                1232
            }
            _ => usize::try_from(next() % 1300).expect("small"),
        };
        let socket = &sockets[usize::try_from(sent).unwrap_or(0) % ATTACK_SOCKETS];
        if socket.send_to(&buf[..len], target).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

fn throughput(args: &Args, attack: bool) -> Result<MeshResult, Failure> {
    let p = pair(args)?;
    let (_, key_b) = p.b.mesh_identity().expect("b runs a mesh");
    let addr_b = p.b.mesh_addr().expect("b runs a mesh");
    let mut peer = p.a.connect(addr_b, key_b).map_err(engine("connect"))?;
    let mut inbox = p.b.mesh_inbox().map_err(engine("inbox"))?;
    let n = args.packets;
    let payload = args.payload_bytes;
    let window = Arc::new(Window::new(2));
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let sender_done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let sender = {
        let (window, started, done) = (window.clone(), started.clone(), sender_done.clone());
        let core = p.cores.map(|c| c[0]);
        std::thread::spawn(move || -> Result<(), Failure> {
            pin(core);
            let mut pass = window.worker();
            let mut msg = vec![0u8; payload];
            msg[8] = PHASE_WARMUP;
            for i in 0..WARMUP_MESSAGES {
                msg[..8].copy_from_slice(&i.to_le_bytes());
                send_blocking(&mut peer, &msg)?;
            }
            msg[8] = PHASE_MEASURED;
            pass.start();
            let _ = started.set(Instant::now());
            for i in 0..n {
                msg[..8].copy_from_slice(&i.to_le_bytes());
                send_blocking(&mut peer, &msg)?;
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            pass.finish();
            Ok(())
        })
    };
    let receiver = {
        let window = window.clone();
        let core = p.cores.map(|c| c[1]);
        let done = sender_done.clone();
        std::thread::spawn(move || -> (u64, u64, Option<Instant>) {
            pin(core);
            let mut pass = window.worker();
            let mut seen = Seen::new(n);
            let (mut warm, mut got, mut bad) = (0u64, 0u64, 0u64);
            let mut quiet_since = Instant::now();
            // Warm-up: the handshake, then enough messages to have touched every buffer.
            while warm < WARMUP_MESSAGES && quiet_since.elapsed() < Duration::from_secs(10) {
                if inbox.recv_wait(1024, Duration::from_millis(10), |_| warm += 1) > 0 {
                    quiet_since = Instant::now();
                }
            }
            pass.start();
            let mut last = None;
            quiet_since = Instant::now();
            loop {
                let k = inbox.recv_wait(1024, Duration::from_millis(10), |m: MeshMessage<'_>| {
                    let seq = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    if m.payload[8] != PHASE_MEASURED {
                        return;
                    }
                    match seen.mark(seq) {
                        Mark::New => got += 1,
                        Mark::Duplicate | Mark::OutOfRange => bad += 1,
                    }
                });
                if k > 0 {
                    last = Some(Instant::now());
                    quiet_since = Instant::now();
                }
                if got == n
                    || (done.load(std::sync::atomic::Ordering::Acquire)
                        && quiet_since.elapsed() > QUIET)
                {
                    break;
                }
            }
            pass.finish();
            (got, bad, last)
        })
    };
    let stop_attack = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spray = attack.then(|| {
        let stop = stop_attack.clone();
        std::thread::spawn(move || attacker(addr_b, &stop))
    });
    let allocations = window.measure();
    sender
        .join()
        .map_err(|_| Failure::Verification("mesh sender panicked".into()))??;
    let (got, bad, last) = receiver
        .join()
        .map_err(|_| Failure::Verification("mesh receiver panicked".into()))?;
    stop_attack.store(true, std::sync::atomic::Ordering::Release);
    let attack_sent = match spray {
        Some(h) => h
            .join()
            .map_err(|_| Failure::Verification("attacker panicked".into()))??,
        None => 0,
    };
    if bad > 0 {
        return Err(Failure::Verification(format!(
            "the mesh delivered {bad} duplicate or unknown messages"
        )));
    }
    let secs = match (started.get(), last) {
        (Some(s), Some(l)) => l.duration_since(*s).as_secs_f64().max(1e-9),
        _ => f64::INFINITY,
    };
    let pps = got as f64 / secs;
    let stats = p.b.mesh_stats().expect("b runs a mesh");
    if !attack
        && (stats.total.dropped_total() > 0 || stats.shards.iter().any(|s| s.inbox_dropped > 0))
    {
        eprintln!("mesh receiver drops: {:?}", stats.shards);
    }
    // Let the last attack datagrams be counted.
    std::thread::sleep(Duration::from_millis(50));
    let attack_dropped =
        p.b.mesh_stats()
            .expect("b runs a mesh")
            .total
            .dropped_total();
    if attack_dropped > attack_sent {
        // The legit traffic is never dropped: a drop beyond what the attacker sent is a bug.
        return Err(Failure::Verification(format!(
            "the attacker sent {attack_sent} datagrams but the receiver dropped {attack_dropped}: {:?}",
            p.b.mesh_stats().map(|s| s.total)
        )));
    }
    p.a.shutdown(Duration::from_secs(5));
    p.b.shutdown(Duration::from_secs(5));
    Ok(MeshResult {
        mesh_pps: pps,
        mesh_mbps: pps * payload as f64 / 1e6,
        mesh_p50_us: 0.0,
        mesh_p99_us: 0.0,
        lost: n - got,
        // Under attack the window also holds the attacker's allocations: not net's.
        allocs_per_packet: if attack {
            f64::NAN
        } else {
            allocs_per_packet(allocations, n)
        },
        attacked_pps: 0.0,
        attack_sent,
        attack_dropped,
        attacked_lost: 0,
    })
}

/// One-way latency (half the round trip) of a ping-pong between two application threads
/// through both nodes' shards, in ns.
fn ping_pong(args: &Args) -> Result<Histogram<u64>, Failure> {
    let p = pair(args)?;
    let (_, key_b) = p.b.mesh_identity().expect("b runs a mesh");
    let mut to_b =
        p.a.connect(p.b.mesh_addr().expect("mesh"), key_b)
            .map_err(engine("connect"))?;
    let mut inbox_a = p.a.mesh_inbox().map_err(engine("inbox"))?;
    let mut inbox_b = p.b.mesh_inbox().map_err(engine("inbox"))?;
    let total = args.warmup_pings + args.pings;
    let payload = args.payload_bytes;
    let b = Arc::new(p.b);
    let echo = {
        let b = b.clone();
        let core = p.cores.map(|c| c[1]);
        std::thread::spawn(move || -> Result<(), Failure> {
            pin(core);
            let mut back: Option<Peer> = None;
            let mut echoed = 0u64;
            let mut msg = vec![0u8; payload];
            let deadline = Instant::now() + Duration::from_secs(120);
            while echoed < total && Instant::now() < deadline {
                let mut from = None;
                inbox_b.recv_wait(1, Duration::from_millis(100), |m: MeshMessage<'_>| {
                    msg.copy_from_slice(m.payload);
                    from = Some((m.shard, m.from));
                });
                let Some((shard, node)) = from else { continue };
                if back.is_none() {
                    back = Some(b.peer(shard, node).map_err(engine("answer handle"))?);
                }
                send_blocking(back.as_mut().expect("set above"), &msg)?;
                echoed += 1;
            }
            Ok(())
        })
    };
    pin(p.cores.map(|c| c[0]));
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let mut msg = vec![0u8; payload];
    for i in 0..total {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        send_blocking(&mut to_b, &msg)?;
        let mut back = false;
        while !back {
            inbox_a.recv_wait(1, Duration::from_millis(100), |_| back = true);
            if t.elapsed() > Duration::from_secs(10) {
                return Err(Failure::Verification(format!(
                    "ping {i} got no answer in 10 s"
                )));
            }
        }
        if i >= args.warmup_pings {
            let one_way = u64::try_from(t.elapsed().as_nanos() / 2).unwrap_or(u64::MAX);
            h.saturating_record(one_way.max(1));
        }
    }
    echo.join()
        .map_err(|_| Failure::Verification("mesh echo panicked".into()))??;
    drop(to_b);
    p.a.shutdown(Duration::from_secs(5));
    if let Ok(b) = Arc::try_unwrap(b) {
        b.shutdown(Duration::from_secs(5));
    }
    Ok(h)
}
