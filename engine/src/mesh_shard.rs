//! The mesh as a component of a shard's duty cycle: the shard's UDP socket, its protocol
//! endpoint, its packet pool, and the rings to and from the application.
//!
//! Readiness comes through the shard's ring (a one-shot `POLL_ADD` on the socket, re-armed
//! only after a receive found the socket drained), so a parked shard wakes for a datagram
//! exactly as it does for a disk completion; the I/O itself is `recvmmsg`/`sendmmsg` of up to
//! 64 datagrams, so the duty cycle makes one syscall per batch, none per packet. Buffers come
//! from a pool sized at start; after warm-up nothing on this path allocates.
//!
//! Per turn: receive (decrypt in place, deliver messages to the inbox ring, answer
//! handshakes), run the endpoint's timers when due, seal what the peer handles queued for
//! peers that have a session (starting handshakes for the others), and send. A socket error
//! is classified: transient ones back off exponentially, a per-datagram one drops that
//! datagram (counted), a hard one stops this shard's mesh with the error in its stats
//! instead of spinning on it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{opcode, types};
use net_storage::Submit;
use net_transport::endpoint::{ConnectError, Endpoint, PeerId, Received};
use net_transport::identity::NodeId;
use net_transport::pool::{PacketBuf, PacketPool};
use net_transport::stats::DropCause;
use net_transport::udp::{Backoff, RecvBatch, SendBatch, ShardSocket, SocketErrorClass, classify};

use crate::clock::monotonic_ns;
use crate::mesh::{MeshShard, PeerLink};
use crate::notify::Notify;
use crate::reactor::{Component, Cx, Source};
use crate::ring::{RingReader, RingWriter};

/// Completion tags of the two readiness polls.
const TAG_READABLE: u64 = 1;
const TAG_WRITABLE: u64 = 2;
/// Receive batches per turn before the other components get the core back. Receiving
/// comes first and takes the larger share: nothing pushes back on a peer's datagrams but the
/// socket buffer, which drops when full, while what this node sends waits in its handles'
/// rings (which push back on the application).
const RECV_BATCHES_PER_TURN: usize = 64;
/// Messages sealed per turn.
const SEND_PER_TURN: usize = 512;
/// Messages published to the inbox after which its reader is woken even while more
/// datagrams wait in the socket.
const NOTIFY_EVERY: usize = 256;
/// Control packets (handshakes, keepalives) one step may produce before they are sent.
const CONTROL_MAX: usize = 256;
/// Largest control packet (a handshake initiation is 140 bytes).
const CONTROL_BYTES: usize = 160;
/// Transient socket errors back off from 1 ms to 1 s.
const BACKOFF_MIN_NS: u64 = 1_000_000;
const BACKOFF_MAX_NS: u64 = 1_000_000_000;

/// What one shard's mesh is built from (made by the bus, moved into the shard's thread).
pub(crate) struct MeshSetup {
    pub(crate) socket: ShardSocket,
    pub(crate) endpoint: Endpoint,
    pub(crate) inbox: RingWriter,
    pub(crate) notify: Arc<Notify>,
    pub(crate) shared: Arc<MeshShard>,
    pub(crate) packet_buffers: usize,
    pub(crate) datagram_bytes_max: usize,
}

impl std::fmt::Debug for MeshSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSetup").finish_non_exhaustive()
    }
}

/// A control message for the mesh component (through the shard's control queue).
pub(crate) enum MeshControl {
    /// Register a peer handle for the node with this key at this address.
    Connect {
        addr: SocketAddr,
        key: [u8; 32],
        link: Arc<PeerLink>,
        reply: std::sync::mpsc::SyncSender<Result<(), String>>,
    },
    /// Register a peer handle for a node this shard already has a peer for.
    Attach {
        node: NodeId,
        link: Arc<PeerLink>,
        reply: std::sync::mpsc::SyncSender<Result<(), String>>,
    },
}

impl std::fmt::Debug for MeshControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshControl::Connect { .. } => "Connect",
            MeshControl::Attach { .. } => "Attach",
        })
    }
}

/// A peer handle's ring as the shard holds it.
struct Link {
    peer: PeerId,
    reader: RingReader,
    link: Arc<PeerLink>,
}

/// Control packets waiting for pool buffers (fixed storage: no allocation per packet).
struct ControlQueue {
    packets: Vec<(PeerId, SocketAddr, usize, [u8; CONTROL_BYTES])>,
    /// The shard's `control_dropped` counter.
    dropped: Arc<AtomicU64>,
}

impl ControlQueue {
    fn push(&mut self, peer: PeerId, to: SocketAddr, bytes: &[u8]) {
        if self.packets.len() >= CONTROL_MAX || bytes.len() > CONTROL_BYTES {
            // Handshakes retry and keepalives recur: a lost control packet costs a retry.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut b = [0u8; CONTROL_BYTES];
        b[..bytes.len()].copy_from_slice(bytes);
        self.packets.push((peer, to, bytes.len(), b));
    }
}

/// Datagrams queued for `sendmmsg`, with the peer each belongs to, so that traffic is
/// counted when the kernel took it, not when it was sealed (a failed send must not inflate
/// the counters).
struct Outbox {
    batch: SendBatch,
    peers: VecDeque<(PeerId, usize)>,
}

impl Outbox {
    fn push(
        &mut self,
        pool: &PacketPool,
        buf: PacketBuf,
        len: usize,
        to: SocketAddr,
        peer: PeerId,
    ) -> Result<(), PacketBuf> {
        self.batch.push(pool, buf, len, to)?;
        self.peers.push_back((peer, len));
        Ok(())
    }

    /// One `sendmmsg`; counts what went out and what the kernel refused outright.
    fn send(
        &mut self,
        socket: &ShardSocket,
        pool: &mut PacketPool,
        endpoint: &Endpoint,
        shared: &MeshShard,
    ) -> std::io::Result<usize> {
        let r = socket.send_batch(&mut self.batch, pool);
        match &r {
            Ok(n) => {
                for (peer, len) in self.peers.drain(..*n) {
                    endpoint.count_sent(peer, len);
                }
            }
            Err(e) if classify(e) == SocketErrorClass::Datagram => {
                // send_batch dropped the offending first datagram.
                self.peers.pop_front();
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        debug_assert_eq!(self.peers.len(), self.batch.len());
        r
    }

    fn clear(&mut self, pool: &mut PacketPool) {
        self.batch.clear(pool);
        self.peers.clear();
    }
}

pub(crate) struct Mesh {
    socket: ShardSocket,
    endpoint: Endpoint,
    pool: PacketPool,
    rx: RecvBatch,
    tx: Outbox,
    control: ControlQueue,
    links: Vec<Link>,
    inbox: RingWriter,
    notify: Arc<Notify>,
    shared: Arc<MeshShard>,
    /// Node id cells of the peers, by peer id (shared with the stats registry).
    nodes: Vec<Arc<AtomicU64>>,
    handshakes_seen: u64,
    evictions_seen: u64,
    /// The link that goes first in the next send turn (round robin).
    next_link: usize,
    /// Messages published to the inbox since the reader was last woken.
    unnotified: usize,
    readable: bool,
    read_armed: bool,
    write_armed: bool,
    /// The last send left datagrams queued (socket buffer full): wait for writability.
    write_blocked: bool,
    backoff: Backoff,
    /// A hard socket error stopped this shard's mesh.
    stopped: bool,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("socket", &self.socket)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    pub(crate) fn new(setup: MeshSetup) -> Mesh {
        Mesh {
            pool: PacketPool::new(setup.packet_buffers, setup.datagram_bytes_max),
            socket: setup.socket,
            endpoint: setup.endpoint,
            rx: RecvBatch::new(),
            tx: Outbox {
                batch: SendBatch::new(),
                peers: VecDeque::with_capacity(net_transport::udp::BATCH_DATAGRAMS_MAX),
            },
            control: ControlQueue {
                packets: Vec::with_capacity(CONTROL_MAX),
                dropped: setup.shared.control_dropped.clone(),
            },
            links: Vec::new(),
            inbox: setup.inbox,
            notify: setup.notify,
            shared: setup.shared,
            nodes: Vec::new(),
            handshakes_seen: 0,
            evictions_seen: 0,
            next_link: 0,
            unnotified: 0,
            // Look once at start: datagrams may have arrived before the first poll.
            readable: true,
            read_armed: false,
            write_armed: false,
            write_blocked: false,
            backoff: Backoff::new(BACKOFF_MIN_NS, BACKOFF_MAX_NS),
            stopped: false,
        }
    }

    /// Handles a control message for the mesh.
    pub(crate) fn control(&mut self, msg: MeshControl) {
        let now = monotonic_ns();
        let control = &mut self.control;
        let (peer, link, reply) = match msg {
            MeshControl::Connect {
                addr,
                key,
                link,
                reply,
            } => {
                let r = self
                    .endpoint
                    .connect(now, addr, key, &mut |p, to, b| control.push(p, to, b));
                match r {
                    Ok(p) => (p, link, reply),
                    Err(e) => {
                        let _ = reply.send(Err(match e {
                            ConnectError::PeerCap => format!(
                                "this shard already keeps mesh.peers_max ({}) peers",
                                self.shared.peers_max
                            ),
                            ConnectError::SelfKey => "that is this node's own key".to_owned(),
                        }));
                        return;
                    }
                }
            }
            MeshControl::Attach { node, link, reply } => match self.endpoint.peer_by_node(node) {
                Some(p) => (p, link, reply),
                None => {
                    let _ = reply.send(Err(format!(
                        "node {node:016x} has no session on this shard"
                    )));
                    return;
                }
            },
        };
        let _ = link.counters.set(self.endpoint.peer_counters(peer).clone());
        self.endpoint.hold(peer);
        self.links.push(Link {
            peer,
            reader: RingReader::new(link.ring.clone()),
            link,
        });
        self.sync_peers();
        let _ = reply.send(Ok(()));
    }

    /// Publishes peer node ids (learned by handshakes) to the stats registry and the handles.
    fn sync_peers(&mut self) {
        let n = self.endpoint.peer_count();
        if n > self.nodes.len() {
            let mut reg = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
            for p in self.nodes.len()..n {
                let peer = PeerId::try_from(p).expect("peer ids fit u32");
                let cell = Arc::new(AtomicU64::new(0));
                reg.push((cell.clone(), self.endpoint.peer_counters(peer).clone()));
                self.nodes.push(cell);
            }
        }
        if self.endpoint.evictions() != self.evictions_seen {
            // Slots were reused for other peers: their counters start afresh in the registry
            // (the shard's totals keep everything).
            self.evictions_seen = self.endpoint.evictions();
            let mut reg = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
            for (p, entry) in reg.iter_mut().enumerate() {
                let peer = PeerId::try_from(p).expect("peer ids fit u32");
                let counters = self.endpoint.peer_counters(peer);
                if !Arc::ptr_eq(&entry.1, counters) {
                    let cell = Arc::new(AtomicU64::new(0));
                    *entry = (cell.clone(), counters.clone());
                    self.nodes[p] = cell;
                }
            }
        }
        for (p, cell) in self.nodes.iter().enumerate() {
            let peer = PeerId::try_from(p).expect("peer ids fit u32");
            cell.store(
                self.endpoint.peer_node(peer).unwrap_or(0),
                Ordering::Release,
            );
        }
        for l in &self.links {
            l.link.node.store(
                self.endpoint.peer_node(l.peer).unwrap_or(0),
                Ordering::Release,
            );
        }
    }

    /// Receives up to a few batches; returns whether anything arrived.
    fn receive(&mut self, now: u64) -> bool {
        let mut any = false;
        for _ in 0..RECV_BATCHES_PER_TURN {
            let Mesh {
                socket,
                endpoint,
                pool,
                rx,
                control,
                inbox,
                shared,
                ..
            } = self;
            let mut staged = 0usize;
            let got = socket.recv_batch(rx, pool, |buf, src, truncated| {
                if truncated {
                    endpoint.counters().packets_in.add(1);
                    endpoint.counters().count_drop(DropCause::Malformed);
                    return;
                }
                let r = endpoint.receive(now, src, buf, &mut |p, to, b| control.push(p, to, b));
                if let Received::Message { node, range, .. } = r {
                    let payload = &buf[range];
                    let need = inbox.bytes_needed(payload.len());
                    if inbox.has_room(need) {
                        inbox.stage(node, payload);
                        staged += 1;
                    } else {
                        shared.inbox_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            if staged > 0 {
                self.inbox.publish();
                self.unnotified += staged;
            }
            match got {
                Ok(n) => {
                    self.backoff.on_success();
                    any |= n > 0;
                    if self.rx.drained() {
                        self.readable = false;
                        break;
                    }
                }
                Err(e) => {
                    self.socket_error(now, &e);
                    break;
                }
            }
        }
        any
    }

    fn socket_error(&mut self, now: u64, e: &std::io::Error) {
        match classify(e) {
            SocketErrorClass::Transient => {
                self.backoff.on_error(now);
            }
            SocketErrorClass::Datagram => {}
            SocketErrorClass::Hard => {
                self.stopped = true;
                *self
                    .shared
                    .socket_failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format!(
                    "{}: {e}; this shard's mesh stopped",
                    self.socket.local_addr()
                ));
                // Sealed but never sent: counted, as are the messages the handles still
                // queue (their rings close, so `send` says `Closed` instead of `Full`).
                let unsent = self.tx.batch.len() as u64;
                self.shared.send_errors.fetch_add(unsent, Ordering::Relaxed);
                self.tx.clear(&mut self.pool);
                self.control.packets.clear();
                self.close();
            }
        }
    }

    /// Moves control packets into the send batch (sending when it fills).
    fn queue_control(&mut self, now: u64) -> bool {
        let mut i = 0;
        while i < self.control.packets.len() {
            if self.tx.batch.is_full() && !self.flush(now) {
                break;
            }
            let Some(buf) = self.pool.alloc() else {
                break;
            };
            let (peer, to, len, bytes) = &self.control.packets[i];
            self.pool.buf_mut(&buf)[..*len].copy_from_slice(&bytes[..*len]);
            if let Err(buf) = self.tx.push(&self.pool, buf, *len, *to, *peer) {
                self.pool.free(buf);
                break;
            }
            i += 1;
        }
        self.control.packets.drain(..i);
        i > 0
    }

    /// Sends what is queued; returns whether the batch is empty afterwards.
    fn flush(&mut self, now: u64) -> bool {
        while !self.tx.batch.is_empty() && !self.stopped {
            if !self.backoff.ready(now) {
                return false;
            }
            match self
                .tx
                .send(&self.socket, &mut self.pool, &self.endpoint, &self.shared)
            {
                Ok(0) => {
                    self.write_blocked = true;
                    return false;
                }
                Ok(_) => self.backoff.on_success(),
                Err(e) => {
                    self.socket_error(now, &e);
                    if classify(&e) != SocketErrorClass::Datagram {
                        return false;
                    }
                }
            }
        }
        self.write_blocked = false;
        self.tx.batch.is_empty()
    }

    /// Seals what the peer handles queued, for peers with a session; starts handshakes for
    /// the others. Returns whether anything was sealed.
    fn send_queued(&mut self, now: u64) -> bool {
        let mut sent = 0usize;
        let n = self.links.len();
        // Links take turns starting first, and each takes at most its share of the turn's
        // budget: a handle with a deep backlog cannot starve the others (found with two
        // handles on one session, data and acknowledgements: the acknowledgements waited
        // behind the data until the other side's window closed).
        let share = (SEND_PER_TURN / n.max(1)).max(16);
        let first = self.next_link % n.max(1);
        self.next_link = self.next_link.wrapping_add(1);
        for k in 0..n {
            if sent >= SEND_PER_TURN || self.write_blocked {
                break;
            }
            let i = (first + k) % n;
            let peer = self.links[i].peer;
            if !self.endpoint.can_send_at(now, peer) {
                if !self.links[i].reader.is_empty() {
                    let control = &mut self.control;
                    self.endpoint
                        .want(now, peer, &mut |p, to, b| control.push(p, to, b));
                }
                continue;
            }
            let Mesh {
                socket,
                endpoint,
                pool,
                tx,
                links,
                backoff,
                shared,
                write_blocked,
                ..
            } = self;
            let budget = share.min(SEND_PER_TURN - sent);
            sent += links[i].reader.drain(budget, u64::MAX, |_, msg| {
                if tx.batch.is_full() {
                    if !backoff.ready(now) {
                        return false;
                    }
                    match tx.send(socket, pool, endpoint, shared) {
                        Ok(0) => {
                            *write_blocked = true;
                            return false;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if classify(&e) != SocketErrorClass::Datagram {
                                backoff.on_error(now);
                            }
                            return false;
                        }
                    }
                }
                let Some(buf) = pool.alloc() else {
                    return false;
                };
                match endpoint.seal(now, peer, msg, pool.buf_mut(&buf)) {
                    Ok((len, to)) => {
                        if let Err(buf) = tx.push(pool, buf, len, to, peer) {
                            pool.free(buf);
                            return false;
                        }
                        true
                    }
                    Err(_) => {
                        // The session ended (rekey due, too old): keep the message for the
                        // next session.
                        pool.free(buf);
                        false
                    }
                }
            });
        }
        sent > 0
    }

    /// Drops what handles queued for peers whose handshake round gave up, and forgets handles
    /// that were dropped and drained.
    fn settle_links(&mut self) {
        while let Some(peer) = self.endpoint.take_failed() {
            for l in self.links.iter_mut().filter(|l| l.peer == peer) {
                let n = l.reader.drain(usize::MAX, u64::MAX, |_, _| true) as u64;
                l.link.unsent_dropped.fetch_add(n, Ordering::Relaxed);
                self.shared.unsent_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
        let endpoint = &mut self.endpoint;
        self.links.retain(|l| {
            let done = l.link.gone.load(Ordering::Acquire) && l.reader.is_empty();
            if done {
                endpoint.release(l.peer);
            }
            !done
        });
    }

    fn arm(&mut self, cx: &mut Cx<'_>) {
        let fd = types::Fd(self.socket.fd());
        if !self.readable && !self.read_armed {
            let e = opcode::PollAdd::new(fd, u32::try_from(libc::POLLIN).expect("flag"))
                .build()
                .user_data(TAG_READABLE);
            if cx.io.push(e).is_ok() {
                self.read_armed = true;
            }
        }
        if self.write_blocked && !self.write_armed {
            let e = opcode::PollAdd::new(fd, u32::try_from(libc::POLLOUT).expect("flag"))
                .build()
                .user_data(TAG_WRITABLE);
            if cx.io.push(e).is_ok() {
                self.write_armed = true;
            }
        }
    }

    /// At shutdown: no handle can queue anything more, and what was still queued is counted
    /// as dropped (never silently lost).
    pub(crate) fn close(&mut self) {
        for l in &mut self.links {
            l.link.ring.close();
            l.link.ring.wait_writer_outside();
            let n = l.reader.drain(usize::MAX, u64::MAX, |_, _| true) as u64;
            l.link.unsent_dropped.fetch_add(n, Ordering::Relaxed);
            self.shared.unsent_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn has_sendable(&self, now: u64) -> bool {
        self.links
            .iter()
            .any(|l| !l.reader.is_empty() && self.endpoint.can_send_at(now, l.peer))
    }
}

impl Component for Mesh {
    fn source(&self) -> Source {
        Source::Mesh
    }

    fn work(&mut self, cx: &mut Cx<'_>) -> bool {
        if self.stopped {
            return false;
        }
        let now = monotonic_ns();
        let mut busy = false;
        if self.readable && self.backoff.ready(now) {
            busy |= self.receive(now);
        }
        if now >= self.endpoint.deadline_ns() {
            let control = &mut self.control;
            self.endpoint
                .tick(now, &mut |p, to, b| control.push(p, to, b));
        }
        self.settle_links();
        if !self.write_blocked {
            busy |= self.send_queued(now);
        }
        busy |= self.queue_control(now);
        if !self.tx.batch.is_empty() && !self.write_blocked {
            self.flush(now);
        }
        // Wake the inbox's reader once the socket is drained (or a good part of a ring is
        // waiting), not per batch: a reader woken per batch preempted the shard every few
        // datagrams where they share a core.
        if self.unnotified > 0 && (!self.readable || self.unnotified >= NOTIFY_EVERY) {
            self.unnotified = 0;
            self.notify.notify();
        }
        let hs = self.endpoint.counters().handshakes.get();
        if hs != self.handshakes_seen
            || self.endpoint.peer_count() != self.nodes.len()
            || self.endpoint.evictions() != self.evictions_seen
        {
            self.handshakes_seen = hs;
            self.sync_peers();
        }
        self.arm(cx);
        busy
    }

    fn complete(&mut self, _cx: &mut Cx<'_>, tag: u64, res: i32) {
        match tag {
            TAG_READABLE => {
                self.read_armed = false;
                self.readable = true;
            }
            TAG_WRITABLE => {
                self.write_armed = false;
                self.write_blocked = false;
            }
            _ => {}
        }
        if res < 0 && res != -libc::ECANCELED {
            // A failed poll (the socket is unusable): try the I/O, which reports the error.
            self.readable = true;
        }
    }

    fn ready(&self) -> bool {
        if self.stopped {
            return false;
        }
        let now = monotonic_ns();
        // While backing off, nothing can be sent or received: park until the retry time
        // (`deadline_ns`) rather than spin.
        if !self.backoff.ready(now) {
            return false;
        }
        self.readable
            || !self.control.packets.is_empty()
            || (!self.write_blocked && (self.has_sendable(now) || !self.tx.batch.is_empty()))
    }

    fn deadline_ns(&self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        let d = self.endpoint.deadline_ns();
        let d = if self.backoff.ready(u64::MAX) && !self.backoff.ready(monotonic_ns()) {
            d.min(self.backoff.retry_at_ns())
        } else {
            d
        };
        (d != u64::MAX).then_some(d)
    }

    fn completes_soon(&self) -> bool {
        false
    }
}
