//! Two mesh nodes in two processes exchange messages both ways at once: every message must
//! arrive exactly once with its content intact. Once over loopback (the test process is one
//! node, a child process the other), once across a veth pair between two network namespaces
//! (root only; both nodes are children, one per namespace).
//!
//! Datagrams have no flow control: a sender that outruns its receiver for longer than the
//! receiving socket's buffer lasts (16 MiB of kernel accounting for the default 8 MiB
//! `mesh.socket_buffer_bytes`: about 13 000 to 20 000 of these datagrams, some 50 ms at full
//! speed) loses what the kernel drops, and a shard starved of CPU falls behind for longer
//! than that on a loaded machine. So the exchanges that must lose nothing keep a credit
//! window: a sender keeps at most [`WINDOW`] messages beyond what the receiver acknowledged
//! (acknowledgements are messages too, sent back on the same session through a second peer
//! handle), which the receiving socket always has room for; any loss is then the mesh's.
//! [`an_unthrottled_blast_loses_only_what_the_kernel_dropped`] sends without the window and
//! checks that whatever was lost is exactly what the kernel counted as dropped at the socket.
//!
//! The child is this test binary re-executed to run only [`mesh_node_child_process`], told
//! what to do by the `NET_MESH_CHILD` environment variable (JSON). Nodes and the test talk
//! over the child's stdin/stdout in lines tagged `@@MESH`:
//! - node → test: `HELLO <addr> <node id> <public key>`; test → node: the other node's HELLO;
//! - node → test: `DONE <ok>` when it received everything (or gave up);
//! - test → node: `EXIT` once both nodes are done (so no node shuts down while the other
//!   still receives from it); node → test: `REPORT <exchange report and final stats>`.
//!
//! Each node sends `count` messages, `seq` in `0..count`: 8 bytes of `seq`, 52 to 188 bytes
//! derived from the sender and `seq`, and a CRC-32C of all that (64 to 200 bytes in all).
//! The receiver checks every one (checksum, length, content, sender) and that each `seq`
//! arrives exactly once. Reports carry the mesh's counters (drops by cause, inbox drops,
//! unsent drops, send errors), the socket's kernel drop count (`/proc/net/udp`), the
//! namespace's UDP counters (`/proc/net/snmp`), the softnet backlog drops and each thread's
//! CPU and run-queue wait, so a loss or a stall says where it happened.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use net_engine::{Bus, DropCause, Inbox, MeshCounters, MeshMessage, NodeId, Peer, PeerSendError};
use net_transport::identity::{hex, unhex};
use serde_json::{Value, json};

/// The environment variable that makes [`mesh_node_child_process`] run a node.
const CHILD_ENV: &str = "NET_MESH_CHILD";
/// The child test's name (for `--exact`).
const CHILD_TEST: &str = "mesh_node_child_process";
/// Tag of protocol lines on a child's stdout (libtest may print on the same line first).
const TAG: &str = "@@MESH ";
/// A node gives up receiving (and reports what it has) this long after the exchange began.
const EXCHANGE_TIME: Duration = Duration::from_secs(45);
/// Beyond that, how long the test waits for a node's reports before killing it.
const REPORT_SLACK: Duration = Duration::from_secs(15);
/// A node stops waiting for more once nothing arrived for this long (a datagram the kernel
/// dropped never comes: no need to wait for the deadline to report the loss).
const QUIET: Duration = Duration::from_secs(4);
/// Messages a sender may have beyond what its receiver acknowledged (when windowed): at most
/// 4096 datagrams of at most 1280 bytes of kernel accounting each wait in the receiving
/// socket, a third of its buffer.
const WINDOW: u64 = 4096;
/// A receiver acknowledges at least this often (and when it has everything).
const ACK_INTERVAL: Duration = Duration::from_millis(10);
/// The first 8 bytes of an acknowledgement (a data message is longer than one).
const ACK_MAGIC: u64 = 0x6b63_612d_6873_656d;

/// The exchanges each take both cores of a small machine; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Messages.

const MSG_MIN: u64 = 64;
const MSG_MAX: u64 = 200;

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Message `seq` from the node with salt `from` into `buf`.
fn message(from: u64, seq: u64, buf: &mut Vec<u8>) {
    let len = usize::try_from(MSG_MIN + mix(seq ^ from) % (MSG_MAX - MSG_MIN + 1)).unwrap();
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    let mut x = mix(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ from) | 1;
    while buf.len() < len - 4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (len - 4 - buf.len()).min(8);
        buf.extend_from_slice(&x.to_le_bytes()[..n]);
    }
    let crc = crc32c::crc32c(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// The salt of a node's messages (so a message sent back the other way would not pass).
fn salt(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An acknowledgement: the receiver has `n` distinct messages.
fn ack(n: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&ACK_MAGIC.to_le_bytes());
    a[8..].copy_from_slice(&n.to_le_bytes());
    a
}

fn parse_ack(p: &[u8]) -> Option<u64> {
    (p.len() == 16 && p[..8] == ACK_MAGIC.to_le_bytes())
        .then(|| u64::from_le_bytes(p[8..].try_into().unwrap()))
}

/// What a receiver saw.
#[derive(Debug)]
struct Tally {
    from_node: NodeId,
    from_salt: u64,
    seen: Vec<u8>,
    distinct: u64,
    duplicates: u64,
    bad_checksum: u64,
    bad_content: u64,
    out_of_range: u64,
    foreign: u64,
    scratch: Vec<u8>,
}

impl Tally {
    fn new(count: u64, from_node: NodeId, from_salt: u64) -> Tally {
        Tally {
            from_node,
            from_salt,
            seen: vec![0; usize::try_from(count).unwrap()],
            distinct: 0,
            duplicates: 0,
            bad_checksum: 0,
            bad_content: 0,
            out_of_range: 0,
            foreign: 0,
            scratch: Vec::with_capacity(256),
        }
    }

    fn accept(&mut self, m: &MeshMessage<'_>) {
        let p = m.payload;
        if m.from != self.from_node {
            self.foreign += 1;
            return;
        }
        let len = u64::try_from(p.len()).unwrap();
        if !(MSG_MIN..=MSG_MAX).contains(&len) {
            self.bad_content += 1;
            return;
        }
        let (body, crc) = p.split_at(p.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            self.bad_checksum += 1;
            return;
        }
        let seq = u64::from_le_bytes(p[..8].try_into().unwrap());
        let Some(slot) = usize::try_from(seq).ok().and_then(|i| self.seen.get_mut(i)) else {
            self.out_of_range += 1;
            return;
        };
        message(self.from_salt, seq, &mut self.scratch);
        if self.scratch != p {
            self.bad_content += 1;
            return;
        }
        if *slot == 0 {
            *slot = 1;
            self.distinct += 1;
        } else {
            self.duplicates += 1;
        }
    }

    fn missing(&self) -> Value {
        let n = self.seen.iter().filter(|s| **s == 0).count();
        let first: Vec<usize> = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == 0)
            .map(|(i, _)| i)
            .take(20)
            .collect();
        json!({"count": n, "first": first})
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel counters (per network namespace).

/// `/proc/net/snmp`'s UDP counters.
fn udp_snmp() -> Value {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return json!({});
    };
    let mut out = serde_json::Map::new();
    for (k, v) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        out.insert(k.to_owned(), json!(v.parse::<u64>().unwrap_or(0)));
    }
    Value::Object(out)
}

fn snmp_delta(before: &Value, after: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (k, v) in a {
            let d = v.as_u64().unwrap_or(0) - b.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.insert(k.clone(), json!(d));
        }
    }
    Value::Object(out)
}

/// The receive queue and drop count of the UDP socket bound to `port` (`/proc/net/udp`).
fn udp_socket(port: u16) -> Value {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let want = format!(":{port:04X}");
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 13 && f[1].ends_with(&want) {
            let rx_queue = f[4]
                .split(':')
                .nth(1)
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            return json!({"rx_queue_bytes": rx_queue, "drops": f[12].parse::<u64>().ok()});
        }
    }
    json!(null)
}

/// Packets the kernel dropped because a CPU's input backlog was full (`/proc/net/softnet_stat`,
/// the whole machine).
fn softnet_dropped() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum()
}

/// A thread's name, CPU time and time spent runnable but waiting for a CPU (ms), from its
/// `/proc/.../task/<tid>` directory: a starved shard shows as a long wait.
fn sched(task: &std::path::Path) -> Option<(String, Value)> {
    let comm = std::fs::read_to_string(task.join("comm")).ok()?;
    let stat = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let mut f = stat
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let (cpu_ns, wait_ns) = (f.next()?, f.next()?);
    let v = json!({"cpu_ms": cpu_ns / 1_000_000, "runqueue_wait_ms": wait_ns / 1_000_000});
    Some((comm.trim().to_owned(), v))
}

/// [`sched`] of this process's threads that ran for at least 10 ms.
fn threads_sched() -> Value {
    let mut out = serde_json::Map::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Some((name, v)) = sched(&e.path())
                && v["cpu_ms"].as_u64() >= Some(10)
            {
                out.insert(format!("{name} ({})", e.file_name().to_string_lossy()), v);
            }
        }
    }
    Value::Object(out)
}

/// [`sched`] of the calling thread.
fn this_thread_sched() -> Value {
    sched(std::path::Path::new("/proc/thread-self")).map_or(json!(null), |(_, v)| v)
}

// ---------------------------------------------------------------------------------------------
// One node.

/// What a node is told to do.
#[derive(Debug, Clone)]
struct Spec {
    /// "a" or "b" (also the salt of its messages).
    name: String,
    /// Its peer's name.
    other: String,
    /// Connect to the other node (else: answer on the session the other one opens).
    connect: bool,
    /// Address to listen on (port 0).
    listen: SocketAddr,
    /// Messages to send (and to receive).
    count: u64,
    /// The credit window ([`WINDOW`]), or 0 to send as fast as the queue takes them.
    window: u64,
}

impl Spec {
    fn to_json(&self) -> String {
        json!({
            "name": self.name, "other": self.other, "connect": self.connect,
            "listen": self.listen.to_string(), "count": self.count, "window": self.window,
        })
        .to_string()
    }

    fn from_json(s: &str) -> Spec {
        let v: Value = serde_json::from_str(s).expect("NET_MESH_CHILD is JSON");
        Spec {
            name: v["name"].as_str().unwrap().to_owned(),
            other: v["other"].as_str().unwrap().to_owned(),
            connect: v["connect"].as_bool().unwrap(),
            listen: v["listen"].as_str().unwrap().parse().unwrap(),
            count: v["count"].as_u64().unwrap(),
            window: v["window"].as_u64().unwrap(),
        }
    }
}

/// The other node, as its HELLO told.
#[derive(Debug, Clone, Copy)]
struct Hello {
    addr: SocketAddr,
    node: NodeId,
    key: [u8; 32],
}

impl Hello {
    fn line(&self) -> String {
        format!(
            "HELLO {} {} {}",
            self.addr,
            hex(&self.node.to_be_bytes()),
            hex(&self.key)
        )
    }

    fn parse(line: &str) -> Hello {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() == 4 && f[0] == "HELLO", "not a HELLO: {line:?}");
        Hello {
            addr: f[1].parse().expect("HELLO address"),
            node: u64::from_be_bytes(unhex::<8>(f[2]).expect("HELLO node id")),
            key: unhex::<32>(f[3]).expect("HELLO key"),
        }
    }
}

/// What the sending thread did.
#[derive(Debug)]
struct Sent {
    queued: u64,
    /// `send` found the queue full (and `send_timeout` waited).
    pushbacks: u64,
    /// `send_timeout` gave up after 100 ms of a full queue (and was called again).
    full_timeouts: u64,
    /// Waits for the receiver to acknowledge (the window was used up).
    window_waits: u64,
    error: Option<String>,
    elapsed: Duration,
    sched: Value,
    peer: Peer,
}

/// Queues `count` messages for `peer`, waiting while its queue is full, and (windowed) while
/// `window` messages wait for the receiver's acknowledgement (`acked`). Unwindowed, it then
/// waits until the shard sealed them all; windowed, the receiving loop waits for the last
/// acknowledgement.
fn send_all(
    mut peer: Peer,
    from: u64,
    count: u64,
    window: u64,
    acked: &AtomicU64,
    deadline: Instant,
) -> Sent {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let (mut pushbacks, mut full_timeouts, mut window_waits) = (0, 0, 0);
    let mut error = None;
    let mut queued = 0;
    'all: for seq in 0..count {
        if window > 0 && seq >= acked.load(Ordering::Acquire) + window {
            window_waits += 1;
            let (mut seen, mut since) = (acked.load(Ordering::Acquire), Instant::now());
            while seq >= acked.load(Ordering::Acquire) + window {
                let now = acked.load(Ordering::Acquire);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() >= QUIET || Instant::now() >= deadline {
                    error = Some(format!(
                        "the receiver acknowledged {now} messages and no more for {} ms; \
                         {seq} sent",
                        since.elapsed().as_millis()
                    ));
                    break 'all;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        message(from, seq, &mut buf);
        let mut r = peer.send(&buf);
        if let Err(PeerSendError::Full(_)) = r {
            pushbacks += 1;
        }
        while let Err(PeerSendError::Full(_)) = r {
            r = peer.send_timeout(&buf, Duration::from_millis(100));
            if r.is_err() {
                full_timeouts += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        if let Err(e) = r {
            error = Some(format!("send of seq {seq}: {e}"));
            break;
        }
        queued += 1;
    }
    while window == 0 && error.is_none() && peer.stats().traffic.messages_out < queued {
        if Instant::now() >= deadline {
            error = Some(format!(
                "only {} of {queued} queued messages were sealed by the deadline",
                peer.stats().traffic.messages_out
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Sent {
        queued,
        pushbacks,
        full_timeouts,
        window_waits,
        error,
        elapsed: start.elapsed(),
        sched: this_thread_sched(),
        peer,
    }
}

fn counters_json(c: &MeshCounters) -> Value {
    let drops: serde_json::Map<String, Value> = DropCause::ALL
        .iter()
        .filter(|d| c.dropped(**d) > 0)
        .map(|d| (d.name().to_owned(), json!(c.dropped(*d))))
        .collect();
    json!({
        "packets_in": c.packets_in, "packets_out": c.packets_out,
        "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
        "messages_in": c.messages_in, "messages_out": c.messages_out,
        "handshakes": c.handshakes, "initiations": c.initiations, "rekeys": c.rekeys,
        "handshake_timeouts": c.handshake_timeouts, "session_timeouts": c.session_timeouts,
        "dropped_total": c.dropped_total(), "dropped": drops,
    })
}

/// A running node: its bus, inbox and the kernel counters at its start.
struct Node {
    spec: Spec,
    bus: Bus,
    inbox: Inbox,
    snmp_start: Value,
    softnet_start: u64,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(spec: Spec) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut c = common::mesh_config(dir.path(), 1);
        let m = c.mesh.as_mut().unwrap();
        m.listen = spec.listen;
        // Smaller than the window: the queue pushes back on the sender now and then.
        m.peer_queue_bytes = 256 << 10;
        let bus = Bus::start(c).expect("start the bus");
        let inbox = bus.mesh_inbox().unwrap();
        Node {
            spec,
            bus,
            inbox,
            snmp_start: udp_snmp(),
            softnet_start: softnet_dropped(),
            _dir: dir,
        }
    }

    fn hello(&self) -> Hello {
        let (node, key) = self.bus.mesh_identity().unwrap();
        Hello {
            addr: self.bus.mesh_addr().unwrap(),
            node,
            key,
        }
    }

    /// Sends `count` messages to `other` while receiving its `count`; returns the report and
    /// the peer handles (kept open until the node finishes). `"ok"` is true when every
    /// message arrived exactly once, intact, and all were sent; `"problems"` lists what went
    /// wrong besides messages that did not arrive (`"shortfall"`).
    fn exchange(&mut self, other: &Hello, deadline: Instant) -> (Value, Vec<Peer>) {
        let start = Instant::now();
        let Spec {
            count,
            window,
            connect,
            ..
        } = self.spec;
        let own = salt(&self.spec.name);
        let mut tally = Tally::new(count, other.node, salt(&self.spec.other));
        let bus = &self.bus;
        let inbox = &mut self.inbox;
        let acked = AtomicU64::new(0);
        let mut problems: Vec<String> = Vec::new();
        let (mut first_at, mut received_in, mut last_arrival) = (None, None, None);
        let (mut acks_in, mut acks_out) = (0u64, 0u64);
        let mut receiver_sched = json!(null);
        // The handle acknowledgements go out on: a second handle on the same session.
        let mut ack_peer: Option<Peer> = None;
        let sent = std::thread::scope(|s| {
            let acked = &acked;
            let spawn = |p: Peer| {
                std::thread::Builder::new()
                    .name("mesh-sender".into())
                    .spawn_scoped(s, move || send_all(p, own, count, window, acked, deadline))
                    .unwrap()
            };
            let mut sender = None;
            if connect {
                match (
                    bus.connect(other.addr, other.key),
                    bus.connect(other.addr, other.key),
                ) {
                    (Ok(p), Ok(a)) => {
                        sender = Some(spawn(p));
                        ack_peer = Some(a);
                    }
                    (Err(e), _) | (_, Err(e)) => problems.push(format!("connect: {e}")),
                }
            }
            let mut last_ack = (u64::MAX, Instant::now());
            loop {
                let all_in = tally.distinct == count;
                let all_acked = window == 0 || acked.load(Ordering::Acquire) == count;
                if (all_in && all_acked)
                    || Instant::now() >= deadline
                    || last_arrival.is_some_and(|t: Instant| t.elapsed() >= QUIET)
                {
                    break;
                }
                let mut first = None;
                inbox.recv_wait(4096, Duration::from_millis(5), |m| {
                    first.get_or_insert((m.shard, m.from));
                    match parse_ack(m.payload) {
                        Some(n) if m.from == other.node => {
                            acked.fetch_max(n, Ordering::AcqRel);
                            acks_in += 1;
                        }
                        _ => tally.accept(&m),
                    }
                });
                if let Some((shard, from)) = first {
                    last_arrival = Some(Instant::now());
                    first_at.get_or_insert_with(|| start.elapsed());
                    if sender.is_none() && !connect && problems.is_empty() {
                        // Answer on the session the other node opened (two handles on it).
                        match (bus.peer(shard, from), bus.peer(shard, from)) {
                            (Ok(p), Ok(a)) => {
                                sender = Some(spawn(p));
                                ack_peer = Some(a);
                            }
                            (Err(e), _) | (_, Err(e)) => {
                                problems.push(format!("peer({shard:?}, {from:016x}): {e}"));
                            }
                        }
                    }
                }
                if let Some(a) = ack_peer.as_mut().filter(|_| window > 0) {
                    let n = tally.distinct;
                    let due = n >= last_ack.0.wrapping_add(WINDOW / 4)
                        || ((n != last_ack.0 || n == count)
                            && last_ack.1.elapsed() >= ACK_INTERVAL);
                    // A full queue skips this one: the next one says as much.
                    if due && a.send(&ack(n)).is_ok() {
                        acks_out += 1;
                        last_ack = (n, Instant::now());
                    }
                }
            }
            if tally.distinct == count {
                received_in = Some(start.elapsed());
                // The last word, in case the other node still waits for it.
                if let Some(a) = ack_peer.as_mut().filter(|_| window > 0) {
                    for _ in 0..3 {
                        if a.send_timeout(&ack(count), Duration::from_millis(100))
                            .is_ok()
                        {
                            acks_out += 1;
                        }
                    }
                }
            }
            receiver_sched = this_thread_sched();
            sender.map(|h| h.join().expect("the sending thread panicked"))
        });
        let shortfall = (tally.distinct < count).then(|| {
            let why = match last_arrival {
                Some(t) if t.elapsed() >= QUIET => {
                    format!("nothing more arrived for {} s", QUIET.as_secs())
                }
                _ => "the deadline passed".to_owned(),
            };
            format!(
                "received {} of {count} distinct messages ({why})",
                tally.distinct
            )
        });
        for (what, n) in [
            ("duplicates", tally.duplicates),
            ("bad checksums", tally.bad_checksum),
            ("bad contents", tally.bad_content),
            ("sequences out of range", tally.out_of_range),
            ("messages from another node", tally.foreign),
        ] {
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        }
        let acked = acked.into_inner();
        if window > 0 && acked < count {
            problems.push(format!("the other node acknowledged {acked} of {count}"));
        }
        let mut peers: Vec<Peer> = ack_peer.into_iter().collect();
        let sent_json = match sent {
            None => {
                problems.push("sent nothing (no peer handle)".into());
                json!(null)
            }
            Some(s) => {
                if let Some(e) = &s.error {
                    problems.push(e.clone());
                }
                if s.queued < count {
                    problems.push(format!("queued only {} of {count}", s.queued));
                }
                let st = s.peer.stats();
                let j = json!({
                    "queued": s.queued, "pushbacks": s.pushbacks,
                    "full_timeouts": s.full_timeouts, "window_waits": s.window_waits,
                    "ms": s.elapsed.as_millis(), "thread": s.sched,
                    "peer_messages_out": st.traffic.messages_out,
                    "peer_unsent_dropped": st.unsent_dropped,
                });
                peers.push(s.peer);
                j
            }
        };
        let report = json!({
            "node": self.spec.name,
            "window": window,
            "ok": problems.is_empty() && shortfall.is_none(),
            "problems": problems,
            "shortfall": shortfall,
            "received_distinct": tally.distinct,
            "duplicates": tally.duplicates,
            "bad_checksum": tally.bad_checksum,
            "bad_content": tally.bad_content,
            "out_of_range": tally.out_of_range,
            "foreign": tally.foreign,
            "missing": tally.missing(),
            "acks_in": acks_in,
            "acks_out": acks_out,
            "acked_by_other": acked,
            "first_message_ms": first_at.map(|d| d.as_millis()),
            "received_all_ms": received_in.map(|d| d.as_millis()),
            "receiver_thread": receiver_sched,
            "sent": sent_json,
            "at_done": self.stats(),
        });
        (report, peers)
    }

    /// The mesh's counters and the kernel's.
    fn stats(&self) -> Value {
        let s = self.bus.mesh_stats().unwrap();
        let shards: Vec<Value> = s
            .shards
            .iter()
            .map(|sh| {
                json!({
                    "shard": sh.shard.0, "addr": sh.local_addr.to_string(),
                    "inbox_dropped": sh.inbox_dropped, "unsent_dropped": sh.unsent_dropped,
                    "send_errors": sh.send_errors, "socket_failed": sh.socket_failed,
                    "kernel_socket": udp_socket(sh.local_addr.port()),
                })
            })
            .collect();
        let peers: Vec<Value> = s
            .peers
            .iter()
            .map(|p| {
                json!({
                    "node": p.node.map(|n| format!("{n:016x}")),
                    "messages_in": p.traffic.messages_in,
                    "messages_out": p.traffic.messages_out,
                    "handshakes": p.traffic.handshakes, "rekeys": p.traffic.rekeys,
                    "dropped": p.traffic.dropped_total(),
                })
            })
            .collect();
        json!({
            "total": counters_json(&s.total),
            "shards": shards,
            "peers": peers,
            "udp_snmp_delta": snmp_delta(&self.snmp_start, &udp_snmp()),
            "softnet_dropped_delta": softnet_dropped() - self.softnet_start,
            "threads": threads_sched(),
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        })
    }

    /// Final counters, then shuts the bus down.
    fn finish(self, mut report: Value, peers: Vec<Peer>) -> Value {
        report["final"] = self.stats();
        drop(peers);
        let r = self.bus.shutdown(Duration::from_secs(5));
        report["shutdown_lossy"] = json!(r.lossy);
        report
    }
}

// ---------------------------------------------------------------------------------------------
// The child side.

/// Runs one node when `NET_MESH_CHILD` says so (the tests below start this binary as a child
/// process for it); does nothing otherwise.
#[test]
fn mesh_node_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec = Spec::from_json(&spec);
    // The parent's lines; its end closing early means it is gone: so are we.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let exit = line == "EXIT";
            if tx.send(line).is_err() || exit {
                return;
            }
        }
        eprintln!("[{CHILD_TEST}] stdin closed before EXIT: the test is gone; exiting");
        std::process::exit(3);
    });
    let wait_line = |what: &str, within: Duration| -> String {
        rx.recv_timeout(within)
            .unwrap_or_else(|e| panic!("child: no {what} from the test: {e}"))
    };
    let say = |line: &str| {
        // A newline first: libtest may have printed `test ... ` on this line.
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n{TAG}{line}").unwrap();
        out.flush().unwrap();
    };

    let mut node = Node::start(spec);
    say(&node.hello().line());
    let other = Hello::parse(&wait_line("HELLO", Duration::from_secs(60)));
    let (report, peers) = node.exchange(&other, Instant::now() + EXCHANGE_TIME);
    say(&format!("DONE {}", report["ok"]));
    let exit = wait_line("EXIT", EXCHANGE_TIME + REPORT_SLACK);
    assert_eq!(exit, "EXIT");
    let report = node.finish(report, peers);
    say(&format!("REPORT {report}"));
}

// ---------------------------------------------------------------------------------------------
// The test side.

/// A node in a child process, killed when dropped (a failed test leaves nothing running).
struct ChildNode {
    name: String,
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ChildNode {
    /// Starts `spec` in a child process, inside network namespace `netns` if given.
    fn spawn(spec: &Spec, netns: Option<&str>) -> ChildNode {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec.to_json())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = process.stdin.take().unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let name = spec.name.clone();
        let echo = name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.find(TAG) {
                    Some(i) => {
                        let msg = line[i + TAG.len()..].to_owned();
                        if !msg.starts_with("REPORT") {
                            eprintln!("[node {echo}] {msg}");
                        }
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                    None if line.trim().is_empty() => {}
                    None => eprintln!("[node {echo}] {line}"),
                }
            }
        });
        ChildNode {
            name,
            process,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("node {}: write {line:?}: {e}", self.name));
    }

    /// The next protocol line starting with `tag`, or why there is none by `deadline`.
    fn expect(&mut self, tag: &str, deadline: Instant) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) if l.starts_with(tag) => Ok(l),
            Ok(l) => Err(format!("node {}: expected {tag}, got {l:?}", self.name)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("node {}: no {tag} in time", self.name))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.process.try_wait().ok().flatten();
                Err(format!(
                    "node {}: exited before {tag} (status {status:?})",
                    self.name
                ))
            }
        }
    }

    /// The node's REPORT (after EXIT), as JSON.
    fn report(&mut self, deadline: Instant) -> Value {
        match self.expect("REPORT", deadline) {
            Ok(l) => serde_json::from_str(&l["REPORT ".len()..]).expect("REPORT is JSON"),
            Err(e) => json!({"node": self.name, "ok": false, "problems": [e]}),
        }
    }

    /// Waits for the process to exit (killing it past `deadline`); returns a problem if any.
    fn wait(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.process.try_wait() {
                Ok(Some(s)) if s.success() => return None,
                Ok(Some(s)) => return Some(format!("node {} exited with {s}", self.name)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return Some(format!("node {} did not exit; killed", self.name)),
                Err(e) => return Some(format!("node {}: wait: {e}", self.name)),
            }
        }
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
        }
        let _ = self.process.wait();
    }
}

/// What a test requires of both nodes' reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every message arrived exactly once, intact.
    NoLoss,
    /// As `NoLoss`, except that messages may be missing as long as the kernel counted drops
    /// that account for them (at the node's socket, or at a full CPU backlog; one drop is
    /// up to a GSO message's worth of datagrams).
    LossOnlyToKernelDrops,
}

/// Datagrams one kernel drop can lose: a GSO send reaches a GRO socket as one skb.
const SEGMENTS_PER_DROP_MAX: u64 = net_transport::udp::GSO_SEGMENTS_MAX as u64;

/// The kernel's drops on the way to this node's socket, from its final stats.
fn kernel_drops(r: &Value) -> u64 {
    let f = &r["final"];
    let socket: u64 = f["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["kernel_socket"]["drops"].as_u64())
        .sum();
    socket + f["softnet_dropped_delta"].as_u64().unwrap_or(0)
}

/// Prints both nodes' reports and asserts what `expect` says of them.
fn verdict(started: Instant, expect: Expect, reports: &[Value], other_problems: &[String]) {
    let wall = started.elapsed();
    for r in reports {
        eprintln!(
            "node {} report:\n{}",
            r["node"],
            serde_json::to_string_pretty(r).unwrap()
        );
    }
    let mut failed: Vec<String> = other_problems.to_vec();
    for r in reports {
        let missing = r["missing"]["count"].as_u64().unwrap_or(u64::MAX);
        let dropped = kernel_drops(r);
        eprintln!(
            "node {}: {} of the other's messages missing, kernel drops on its way in {dropped}",
            r["node"], missing
        );
        let good = match expect {
            Expect::NoLoss => r["ok"] == json!(true),
            // The kernel counts dropped skbs, and with GSO/GRO one skb carries up to
            // GSO_SEGMENTS_MAX datagrams: no loss without a kernel drop, and at most that
            // many messages per drop.
            Expect::LossOnlyToKernelDrops => {
                r["problems"].as_array().is_some_and(Vec::is_empty)
                    && missing <= dropped.saturating_mul(SEGMENTS_PER_DROP_MAX)
            }
        };
        if !good {
            failed.push(format!(
                "node {}: problems {}, shortfall {}, kernel drops {dropped}",
                r["node"], r["problems"], r["shortfall"]
            ));
        }
    }
    eprintln!("wall time {:.2} s", wall.as_secs_f64());
    assert!(
        failed.is_empty(),
        "the exchange failed (reports above):\n{}",
        failed.join("\n")
    );
}

/// Runs the exchange between node `a` in this process and node `b` in a child process.
fn exchange_with_child(a: Spec, b: Spec, expect: Expect) {
    let started = Instant::now();
    let mut child = ChildNode::spawn(&b, None);
    let mut node = Node::start(a);
    let hello_b = child
        .expect("HELLO", Instant::now() + Duration::from_secs(30))
        .unwrap();
    child.send(&node.hello().line());
    let deadline = Instant::now() + EXCHANGE_TIME;
    let (report_a, peers) = node.exchange(&Hello::parse(&hello_b), deadline);
    let mut problems = Vec::new();
    if let Err(e) = child.expect("DONE", deadline + REPORT_SLACK) {
        problems.push(e);
    }
    child.send("EXIT");
    let report_a = node.finish(report_a, peers);
    let report_b = child.report(Instant::now() + REPORT_SLACK);
    problems.extend(child.wait(Instant::now() + REPORT_SLACK));
    verdict(started, expect, &[report_a, report_b], &problems);
}

/// Runs the exchange between two child nodes, each in its network namespace.
fn exchange_between_children(a: (Spec, &str), b: (Spec, &str), expect: Expect) {
    let started = Instant::now();
    let mut na = ChildNode::spawn(&a.0, Some(a.1));
    let mut nb = ChildNode::spawn(&b.0, Some(b.1));
    let t = Instant::now() + Duration::from_secs(30);
    let hello_a = na.expect("HELLO", t).unwrap();
    let hello_b = nb.expect("HELLO", t).unwrap();
    na.send(&hello_b);
    nb.send(&hello_a);
    let deadline = Instant::now() + EXCHANGE_TIME + REPORT_SLACK;
    let mut problems = Vec::new();
    for n in [&mut na, &mut nb] {
        if let Err(e) = n.expect("DONE", deadline) {
            problems.push(e);
        }
    }
    na.send("EXIT");
    nb.send("EXIT");
    let t = Instant::now() + REPORT_SLACK;
    let reports = [na.report(t), nb.report(t)];
    problems.extend(na.wait(t));
    problems.extend(nb.wait(t));
    verdict(started, expect, &reports, &problems);
}

/// Node specs over loopback: `a` (this process) answers, `b` (the child) connects.
fn loopback_specs(count: u64, window: u64) -> (Spec, Spec) {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let spec = |name: &str, other: &str, connect| Spec {
        name: name.into(),
        other: other.into(),
        connect,
        listen: lo,
        count,
        window,
    };
    (spec("a", "b", false), spec("b", "a", true))
}

/// This test answers on the session the child opens (`Bus::connect` on the child, `Bus::peer`
/// with the first message's shard and sender here): one session carries both directions, the
/// responder's side of it included, and the answering handle attaches to a live session.
#[test]
fn two_processes_exchange_a_million_messages_none_lost_or_duplicated() {
    let _serial = serial();
    let (a, b) = loopback_specs(500_000, WINDOW);
    exchange_with_child(a, b, Expect::NoLoss);
}

/// The loopback exchange without the credit window: each node sends as fast as its queue
/// takes messages. On a loaded machine a shard falls behind its peer long enough for its
/// socket to overflow; what is lost must be exactly what the kernel dropped (nothing in the
/// mesh: no inbox drop, no corruption, no duplicate), and every message must still be sent.
#[test]
fn an_unthrottled_blast_loses_only_what_the_kernel_dropped() {
    let _serial = serial();
    let (a, b) = loopback_specs(500_000, 0);
    exchange_with_child(a, b, Expect::LossOnlyToKernelDrops);
}

/// Network namespaces created for a test and deleted when dropped (on panic too).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Both nodes connect to each other here (their initiations cross and one yields), unlike the
/// loopback test, where one answers.
#[test]
fn two_network_namespaces_over_a_veth_pair() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: creating network namespaces needs root");
        return;
    }
    if !Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: no `ip` command (iproute2)");
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let (ns_a, ns_b) = (format!("netmesh-{pid}-a"), format!("netmesh-{pid}-b"));
    let namespaces = Namespaces(vec![ns_a.clone(), ns_b.clone()]);
    let x = pid % 250 + 1;
    let (addr_a, addr_b) = (format!("10.77.{x}.1"), format!("10.77.{x}.2"));
    ip(&["netns", "add", &ns_a]);
    ip(&["netns", "add", &ns_b]);
    // Created inside the namespaces: no name in the root namespace to collide with.
    ip(&[
        "link", "add", "name", "mesh0", "netns", &ns_a, "type", "veth", "peer", "name", "mesh0",
        "netns", &ns_b,
    ]);
    for (ns, addr) in [(&ns_a, &addr_a), (&ns_b, &addr_b)] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "mesh0",
        ]);
        ip(&["-n", ns, "link", "set", "mesh0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let spec = |name: &str, other: &str, addr: &str| Spec {
        name: name.into(),
        other: other.into(),
        connect: true,
        listen: format!("{addr}:0").parse().unwrap(),
        count: 100_000,
        window: WINDOW,
    };
    exchange_between_children(
        (spec("a", "b", &addr_a), &ns_a),
        (spec("b", "a", &addr_b), &ns_b),
        Expect::NoLoss,
    );
    drop(namespaces);
}
