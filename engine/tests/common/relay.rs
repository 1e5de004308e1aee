//! A user-space lossy UDP relay: the kernel here has no `sch_netem`, so tests that need loss,
//! duplication, reordering or corruption on the path between two nodes put one of these in
//! between.
//!
//! A [`Relay`] listens on `127.0.0.1:0`. Every client (the source address of a datagram that
//! reaches the listening socket) gets its own upstream socket, bound to `127.0.0.1:0` (`[::1]:0`
//! for an IPv6 upstream) and connected to the upstream address, so each client looks like a
//! distinct peer to the upstream node; what upstream answers on that socket goes back to that
//! client from the listening socket. The upstream node may answer from any socket bound to
//! its address (several `SO_REUSEPORT` sockets share one address); an answer from any other
//! address is not accepted by the connected socket.
//!
//! [`Faults`] are applied per datagram, in both directions alike, by one thread that polls
//! every socket (`poll`, at most 1 ms asleep, so held datagrams are released on time and a
//! stop is noticed promptly).
//!
//! Loss on the path is what [`Faults`] says plus whatever the kernel drops if a socket buffer
//! overflows (the relay falls behind, or a receiver does). Every socket of the relay asks for
//! [`BUFFER_BYTES`] of receive and send buffer (`SO_*BUFFORCE` as root, else capped by
//! `net.core.[rw]mem_max`) to keep the latter at zero; [`RelayStats`] counts only the configured
//! faults, never what the kernel dropped.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Receive and send buffer each relay socket asks for.
pub const BUFFER_BYTES: usize = 8 << 20;

/// Datagrams read from one socket before the others get a turn.
const READS_PER_TURN: usize = 64;

/// Longest the relay thread sleeps in `poll` (ms): bounds how late a held datagram goes out
/// and how long a stop takes.
const POLL_MS: i32 = 1;

/// How long a send waits for room in a full send buffer before the datagram is given up (a
/// kernel-side loss, not counted).
const SEND_WAIT: Duration = Duration::from_millis(100);

/// What the relay does to the datagrams it forwards, each decided per datagram and per
/// direction. Rates are in thousandths (`50` = 5 %); `Faults::default()` is a perfect link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Datagrams dropped.
    pub drop_per_mille: u32,
    /// Datagrams sent twice, back to back.
    pub dup_per_mille: u32,
    /// Datagrams held for `reorder_delay` and sent then, after those that came later.
    pub reorder_per_mille: u32,
    /// How long a reordered datagram is held.
    pub reorder_delay: Duration,
    /// Datagrams with one bit flipped (a random bit of a random byte).
    pub corrupt_per_mille: u32,
    /// Seeds the decisions: the same seed and the same sequence of datagrams in a direction
    /// give the same decisions.
    pub seed: u64,
}

/// What a relay did so far, both directions together. A datagram is counted once the relay
/// is done with it: `dropped` when dropped, everything else just before it is sent on (a held
/// datagram only when its delay is over), so whatever a receiver got is counted already.
/// Kernel drops are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams sent on, each counted once however many copies went out.
    pub forwarded: u64,
    /// Datagrams dropped as configured.
    pub dropped: u64,
    /// Forwarded datagrams that were sent twice (the second copies).
    pub duplicated: u64,
    /// Forwarded datagrams that were held and sent late.
    pub reordered: u64,
    /// Forwarded datagrams with a bit flipped (both copies of a duplicated one carry the
    /// same flip; a corrupted datagram that was also dropped is only `dropped`).
    pub corrupted: u64,
}

/// A running relay; dropping it stops its thread and joins it (datagrams still held for
/// reordering are discarded, uncounted).
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards every datagram it receives from a client to
    /// `upstream`, and every reply from upstream back to that client, applying `faults` in
    /// both directions. An unspecified upstream IP (`0.0.0.0`, `::`) means loopback.
    pub fn start(upstream: SocketAddr, faults: Faults) -> Relay {
        let upstream = concrete(upstream);
        let listener = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("relay: bind 127.0.0.1:0");
        let granted = enlarge_buffers(&listener, BUFFER_BYTES);
        if granted < BUFFER_BYTES {
            eprintln!(
                "relay: socket buffers are {granted} bytes, not {BUFFER_BYTES} \
                 (not root and net.core.rmem_max is lower): the kernel may drop more"
            );
        }
        listener
            .set_nonblocking(true)
            .expect("relay: make the listening socket nonblocking");
        let addr = listener
            .local_addr()
            .expect("relay: local address of the listening socket");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            faults: Mutex::new(faults),
            faults_changed: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let mut worker = Worker::new(listener, upstream, faults, Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}", addr.port()))
            .spawn(move || worker.run())
            .expect("relay: spawn its thread");
        Relay {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far (each read on its own: not one snapshot while traffic flows).
    pub fn stats(&self) -> RelayStats {
        self.shared.counters.read()
    }

    /// Replaces the faults from the next datagram on (e.g. `Faults::default()` heals the
    /// network); the decisions restart from the new seed. Datagrams already held keep their
    /// release time.
    pub fn set_faults(&self, faults: Faults) {
        let mut current = self
            .shared
            .faults
            .lock()
            .expect("relay: faults lock poisoned");
        *current = faults;
        self.shared.faults_changed.store(true, Ordering::Release);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("relay: its thread panicked");
        }
    }
}

/// Asks for `bytes` of receive and send buffer on `socket` (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`
/// as root; otherwise `SO_RCVBUF`/`SO_SNDBUF`, which `net.core.[rw]mem_max` caps) and returns
/// the smaller of the two the kernel granted. For the tests' own sockets too.
pub fn enlarge_buffers(socket: &UdpSocket, bytes: usize) -> usize {
    let want = libc::c_int::try_from(bytes).expect("relay: buffer size fits a c_int");
    let mut granted = usize::MAX;
    for (option, force, name) in [
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, "SO_RCVBUF"),
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, "SO_SNDBUF"),
    ] {
        if set_int(socket, force, want).is_err() {
            set_int(socket, option, want)
                .unwrap_or_else(|e| panic!("relay: setsockopt({name}, {bytes}): {e}"));
        }
        // The kernel reports twice what it granted (the doubling covers its bookkeeping).
        let reported =
            get_int(socket, option).unwrap_or_else(|e| panic!("relay: getsockopt({name}): {e}"));
        granted = granted.min(usize::try_from(reported / 2).unwrap_or(0));
    }
    granted
}

fn set_int(socket: &UdpSocket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the kernel reads one c_int from `value`, live for the call; the fd is open for
    // as long as `socket` is borrowed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            socklen_of_int(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_int(socket: &UdpSocket, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of_int();
    // SAFETY: the kernel writes at most `len` bytes to `value` and the length to `len`, both
    // live for the call; the fd is open for as long as `socket` is borrowed.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn socklen_of_int() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("size of c_int fits socklen_t")
}

/// `addr` with an unspecified IP replaced by loopback (a connected socket only accepts
/// replies from the exact address it connected to).
fn concrete(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// What the relay's owner and its thread share.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    faults: Mutex<Faults>,
    /// Set by `set_faults`; the thread then reloads `faults`.
    faults_changed: AtomicBool,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    corrupted: AtomicU64,
}

impl Counters {
    fn read(&self) -> RelayStats {
        RelayStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            corrupted: self.corrupted.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, yes: bool) {
        if yes {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// xorshift64* seeded through splitmix64: small, fast and deterministic.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    /// The stream `stream` (one per direction) of `seed`.
    fn new(seed: u64, stream: u64) -> Rng {
        let mut z = seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift's state must not be zero.
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `per_mille` / 1000.
    fn per_mille(&mut self, per_mille: u32) -> bool {
        self.next() % 1000 < u64::from(per_mille)
    }

    /// What to do with a datagram of `len` bytes. Always draws five numbers, so a decision
    /// never shifts the ones after it.
    fn decide(&mut self, faults: &Faults, len: usize) -> Verdict {
        let drop = self.per_mille(faults.drop_per_mille);
        let duplicate = self.per_mille(faults.dup_per_mille);
        let reorder = self.per_mille(faults.reorder_per_mille);
        let corrupt = self.per_mille(faults.corrupt_per_mille);
        let position = self.next();
        let bits = u64::try_from(len).expect("a datagram length fits u64") * 8;
        let flip = (corrupt && bits > 0).then(|| {
            let bit = position % bits;
            let byte = usize::try_from(bit / 8).expect("below the datagram length, a usize");
            (byte, 1u8 << (bit % 8))
        });
        Verdict {
            drop,
            duplicate,
            reorder,
            flip,
        }
    }
}

/// The faults one datagram gets.
#[derive(Debug)]
struct Verdict {
    drop: bool,
    duplicate: bool,
    reorder: bool,
    /// Byte index and the mask of the bit to flip in it.
    flip: Option<(usize, u8)>,
}

/// Where a datagram goes: both name the client's link (an index into `Worker::links`).
#[derive(Debug, Clone, Copy)]
enum Route {
    /// From the client, to upstream (on the link's own socket).
    ToUpstream(usize),
    /// From upstream, to the client (from the listening socket).
    ToClient(usize),
}

impl Route {
    /// The decision stream of this direction.
    fn direction(self) -> usize {
        match self {
            Route::ToUpstream(_) => 0,
            Route::ToClient(_) => 1,
        }
    }
}

/// How a datagram went out, for the counters.
#[derive(Debug, Clone, Copy)]
struct Sending {
    route: Route,
    duplicate: bool,
    reordered: bool,
    corrupted: bool,
}

/// A reordered datagram waiting for its release time.
#[derive(Debug)]
struct Held {
    release_at: Instant,
    /// Tie-breaker: datagrams held until the same instant go out in arrival order.
    order: u64,
    sending: Sending,
    data: Vec<u8>,
}

impl Held {
    fn key(&self) -> (Instant, u64) {
        (self.release_at, self.order)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Held) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest release first.
    fn cmp(&self, other: &Held) -> CmpOrdering {
        other.key().cmp(&self.key())
    }
}

/// One client and the socket that stands for it upstream.
#[derive(Debug)]
struct Link {
    client: SocketAddr,
    socket: UdpSocket,
}

/// The relay thread's state.
#[derive(Debug)]
struct Worker {
    shared: Arc<Shared>,
    listener: UdpSocket,
    upstream: SocketAddr,
    /// Client address → index into `links`.
    clients: HashMap<SocketAddr, usize>,
    links: Vec<Link>,
    /// `poll`'s set: the listener first, then `links[i]`'s socket at `i + 1`.
    poll_fds: Vec<libc::pollfd>,
    faults: Faults,
    /// The decision streams, indexed by `Route::direction`.
    rngs: [Rng; 2],
    held: BinaryHeap<Held>,
    held_count: u64,
}

impl Worker {
    fn new(
        listener: UdpSocket,
        upstream: SocketAddr,
        faults: Faults,
        shared: Arc<Shared>,
    ) -> Worker {
        let poll_fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        Worker {
            shared,
            listener,
            upstream,
            clients: HashMap::new(),
            links: Vec::new(),
            poll_fds,
            faults,
            rngs: [Rng::new(faults.seed, 0), Rng::new(faults.seed, 1)],
            held: BinaryHeap::new(),
            held_count: 0,
        }
    }

    fn run(&mut self) {
        // One datagram at a time: the largest UDP payload fits.
        let mut buf = vec![0u8; 1 << 16];
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.release_due();
            self.poll();
            // Sockets added while reading are polled from the next round on.
            for index in 0..self.poll_fds.len() {
                if self.poll_fds[index].revents == 0 {
                    continue;
                }
                if index == 0 {
                    self.read_clients(&mut buf);
                } else {
                    self.read_upstream(index - 1, &mut buf);
                }
            }
        }
    }

    /// Waits until a socket is readable, the next held datagram is due, or `POLL_MS` passed.
    fn poll(&mut self) {
        let timeout_ms = match self.held.peek() {
            Some(next) if next.release_at <= Instant::now() => 0,
            _ => POLL_MS,
        };
        for fd in &mut self.poll_fds {
            fd.revents = 0;
        }
        let count = libc::nfds_t::try_from(self.poll_fds.len()).expect("socket count fits nfds_t");
        // SAFETY: `poll_fds` is a live, exclusively borrowed array of `count` pollfds; the
        // kernel writes only their `revents`. Each fd belongs to a socket `self` owns.
        let r = unsafe { libc::poll(self.poll_fds.as_mut_ptr(), count, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), ErrorKind::Interrupted, "relay: poll: {e}");
        }
    }

    /// Reads datagrams from clients (at most `READS_PER_TURN`), opening a link for each new one.
    fn read_clients(&mut self, buf: &mut [u8]) {
        for _ in 0..READS_PER_TURN {
            let (len, client) = match self.listener.recv_from(buf) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // An unconnected socket reports no ICMP errors; anything else ends the turn.
                Err(e) => {
                    eprintln!("relay: receive from clients: {e}");
                    return;
                }
            };
            let link = match self.clients.get(&client) {
                Some(&link) => link,
                None => self.open_link(client),
            };
            self.handle(Route::ToUpstream(link), &mut buf[..len]);
        }
    }

    /// Reads upstream's replies to link `link` (at most `READS_PER_TURN`).
    fn read_upstream(&mut self, link: usize, buf: &mut [u8]) {
        for _ in 0..READS_PER_TURN {
            let len = match self.links[link].socket.recv(buf) {
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // An ICMP error for an earlier send (nothing listens upstream yet, say): the
                // kernel reports it once, and the datagram was lost like on a real network.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionRefused | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "relay: receive from upstream for {}: {e}",
                        self.links[link].client
                    );
                    return;
                }
            };
            self.handle(Route::ToClient(link), &mut buf[..len]);
        }
    }

    /// Opens the upstream socket that stands for `client`; returns its link index.
    fn open_link(&mut self, client: SocketAddr) -> usize {
        let local: SocketAddr = match self.upstream {
            SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .unwrap_or_else(|e| panic!("relay: bind {local} for client {client}: {e}"));
        enlarge_buffers(&socket, BUFFER_BYTES);
        socket
            .connect(self.upstream)
            .unwrap_or_else(|e| panic!("relay: connect to upstream {}: {e}", self.upstream));
        socket
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("relay: make the socket for {client} nonblocking: {e}"));
        self.poll_fds.push(libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        self.links.push(Link { client, socket });
        let index = self.links.len() - 1;
        self.clients.insert(client, index);
        index
    }

    /// Applies the faults to one datagram and sends it on, holds it, or drops it.
    fn handle(&mut self, route: Route, data: &mut [u8]) {
        // Checked per datagram: one sent after `set_faults` returned gets the new faults.
        if self.shared.faults_changed.load(Ordering::Acquire) {
            self.reload_faults();
        }
        let verdict = self.rngs[route.direction()].decide(&self.faults, data.len());
        if verdict.drop {
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some((byte, mask)) = verdict.flip {
            data[byte] ^= mask;
        }
        let sending = Sending {
            route,
            duplicate: verdict.duplicate,
            reordered: verdict.reorder,
            corrupted: verdict.flip.is_some(),
        };
        if verdict.reorder {
            self.held.push(Held {
                release_at: Instant::now() + self.faults.reorder_delay,
                order: self.held_count,
                sending,
                data: data.to_vec(),
            });
            self.held_count += 1;
        } else {
            self.send(sending, data);
        }
    }

    /// Takes the faults `set_faults` left and restarts the decision streams from their seed.
    fn reload_faults(&mut self) {
        let shared = Arc::clone(&self.shared);
        let faults = shared.faults.lock().expect("relay: faults lock poisoned");
        // Cleared under the lock: a `set_faults` racing with this one is not lost.
        shared.faults_changed.store(false, Ordering::Relaxed);
        self.faults = *faults;
        self.rngs = [Rng::new(faults.seed, 0), Rng::new(faults.seed, 1)];
    }

    /// Sends every held datagram whose time has come.
    fn release_due(&mut self) {
        let now = Instant::now();
        while self.held.peek().is_some_and(|next| next.release_at <= now) {
            let held = self.held.pop().expect("peeked just now");
            self.send(held.sending, &held.data);
        }
    }

    /// Counts one datagram and sends it (twice if duplicated). Counted first, so that a
    /// datagram a receiver got is always in the counters already.
    fn send(&self, sending: Sending, data: &[u8]) {
        let counters = &self.shared.counters;
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
        Counters::add(&counters.duplicated, sending.duplicate);
        Counters::add(&counters.reordered, sending.reordered);
        Counters::add(&counters.corrupted, sending.corrupted);
        let copies = if sending.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            match sending.route {
                Route::ToUpstream(link) => {
                    let socket = &self.links[link].socket;
                    send_or_wait(socket, || socket.send(data));
                }
                Route::ToClient(link) => {
                    let client = self.links[link].client;
                    send_or_wait(&self.listener, || self.listener.send_to(data, client));
                }
            }
        }
    }
}

/// Runs `send` on nonblocking `socket`; while its send buffer is full, waits for room (up to
/// `SEND_WAIT` in all). A datagram the kernel refuses or that finds no room is lost, as the
/// kernel would lose it: not an error of the relay, and not counted.
fn send_or_wait(socket: &UdpSocket, mut send: impl FnMut() -> io::Result<usize>) {
    let deadline = Instant::now() + SEND_WAIT;
    loop {
        match send() {
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                let mut fd = libc::pollfd {
                    fd: socket.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one live, exclusively borrowed pollfd for an fd `socket` owns.
                unsafe { libc::poll(&raw mut fd, 1, POLL_MS) };
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}
