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
use net_storage::{AppendedBatch, Submit};
use net_transport::codec::DATA_HEADER_LEN;
use net_transport::endpoint::{ConnectError, Endpoint, PeerId, Received};
use net_transport::identity::NodeId;
use net_transport::pool::{PacketBuf, PacketPool};
use net_transport::stream::{self, DataFrameWriter};
use net_transport::udp::{Backoff, RecvBatch, SendBatch, ShardSocket, SocketErrorClass, classify};

use crate::clock::monotonic_ns;
use crate::mesh::{MeshShard, PeerLink};
use crate::mesh_stream::{Streams, SubState, Subscription, WantRead};
use crate::notify::Notify;
use crate::reactor::{Component, Cx, Source};
use crate::ring::{RingReader, RingWriter};
use crate::streamer::{self, ReadRequest, StreamerControl};

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
    /// Subscriptions: the shard's stream state (completed on the shard's thread with its
    /// log's view and mirror lane).
    pub(crate) streams: StreamsSetup,
    /// The rings to and from the bus's log reader, and its wake-up.
    pub(crate) reads_out: RingWriter,
    pub(crate) reads_in: RingReader,
    pub(crate) streamer: Arc<StreamerControl>,
    pub(crate) publication_idle_ns: u64,
}

/// What [`Streams`] is built from besides the log's view and the mirror lane.
pub(crate) struct StreamsSetup {
    pub(crate) shard: u16,
    pub(crate) shards: u16,
    pub(crate) timers: net_transport::stream::StreamTimers,
    pub(crate) admission: Arc<crate::mesh_stream::Admission>,
    pub(crate) registry: Arc<crate::mesh_stream::StreamRegistry>,
    pub(crate) replies_dropped: Arc<AtomicU64>,
    pub(crate) bad_frames: Arc<AtomicU64>,
}

impl StreamsSetup {
    pub(crate) fn build(
        self,
        view: net_storage::LogView,
        mirror: Option<crate::lane::OriginLaneWriter>,
    ) -> Streams {
        Streams {
            shard: self.shard,
            shards: self.shards,
            view,
            timers: self.timers,
            admission: self.admission,
            registry: self.registry,
            pubs: Vec::new(),
            pub_by_node: std::collections::HashMap::new(),
            subs: Vec::new(),
            replies: Vec::with_capacity(64),
            replies_dropped: self.replies_dropped,
            bad_frames: self.bad_frames,
            mirror,
            describes: Vec::new(),
            generation_seed: u32::from(self.shard).wrapping_mul(0x9e37_79b9) | 1,
            logs: crate::mesh_stream::StreamLogs::default(),
        }
    }
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
    /// Subscribe (boxed: the control queue's entries stay small).
    Subscribe(Box<SubscribeRequest>),
    /// Ask the node at `addr` for its shard count.
    Describe {
        addr: SocketAddr,
        key: [u8; 32],
        nonce: u32,
        reply: std::sync::mpsc::SyncSender<Result<u16, String>>,
    },
    /// Re-check every publication's token (one was revoked).
    RecheckTokens,
    /// End the subscription to shard `origin_shard` of node `origin`.
    Unsubscribe {
        origin: NodeId,
        origin_shard: u16,
        reply: std::sync::mpsc::SyncSender<bool>,
    },
}

impl std::fmt::Debug for MeshControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshControl::Connect { .. } => "Connect",
            MeshControl::Attach { .. } => "Attach",
            MeshControl::Subscribe { .. } => "Subscribe",
            MeshControl::Describe { .. } => "Describe",
            MeshControl::RecheckTokens => "RecheckTokens",
            MeshControl::Unsubscribe { .. } => "Unsubscribe",
        })
    }
}

/// Subscribe to the publisher at `addr` (key `key`, node `origin`) for its shard
/// `origin_shard`, from `from`, mirroring into this shard's log.
pub(crate) struct SubscribeRequest {
    pub(crate) addr: SocketAddr,
    pub(crate) key: [u8; 32],
    pub(crate) origin: NodeId,
    pub(crate) origin_shard: u16,
    pub(crate) from: u64,
    pub(crate) token: Vec<u8>,
    pub(crate) limits: net_transport::stream::RecvLimits,
    pub(crate) counters: Arc<crate::mesh_stream::StreamCounters>,
    pub(crate) reply: std::sync::mpsc::SyncSender<Result<(), String>>,
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
    /// Subscriptions: publications of this shard's log and subscriptions it mirrors.
    streams: Streams,
    reads_out: RingWriter,
    reads_in: Option<RingReader>,
    streamer: Arc<StreamerControl>,
    /// One past the last record of the last completed batch.
    log_end: u64,
    wants: Vec<WantRead>,
    /// When tokens were last re-checked (expiry), and silent subscribers looked for.
    tokens_checked_ns: u64,
    /// A publication whose subscriber is silent this long ends.
    publication_idle_ns: u64,
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
    pub(crate) fn new(
        setup: MeshSetup,
        view: net_storage::LogView,
        mirror: Option<crate::lane::OriginLaneWriter>,
    ) -> Mesh {
        let log_end = view.visible_end();
        Mesh {
            streams: setup.streams.build(view, mirror),
            reads_out: setup.reads_out,
            reads_in: Some(setup.reads_in),
            streamer: setup.streamer,
            log_end,
            wants: Vec::with_capacity(16),
            tokens_checked_ns: 0,
            publication_idle_ns: setup.publication_idle_ns,
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
        let msg = match msg {
            MeshControl::Subscribe(req) => {
                let SubscribeRequest {
                    addr,
                    key,
                    origin,
                    origin_shard,
                    from,
                    token,
                    limits,
                    counters,
                    reply,
                } = *req;
                let r = self.subscribe(
                    now,
                    addr,
                    key,
                    origin,
                    origin_shard,
                    from,
                    token,
                    limits,
                    counters,
                );
                let _ = reply.send(r);
                return;
            }
            MeshControl::Describe {
                addr,
                key,
                nonce,
                reply,
            } => {
                match self.connect_held(now, addr, key) {
                    Ok(peer) => {
                        self.streams.describes.push((nonce, reply));
                        self.streams.queue_reply(peer, |b| {
                            stream::write_bare(
                                b,
                                stream::KIND_DESCRIBE,
                                stream::StreamRef {
                                    id: nonce,
                                    generation: 0,
                                },
                            )
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                return;
            }
            MeshControl::RecheckTokens => {
                self.streams.recheck_tokens();
                return;
            }
            MeshControl::Unsubscribe {
                origin,
                origin_shard,
                reply,
            } => {
                let _ = reply.send(self.streams.unsubscribe(origin, origin_shard));
                return;
            }
            other => other,
        };
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
            _ => unreachable!("handled above"),
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

    /// Makes sure `peer` has a session or a handshake under way (handshake packets go to the
    /// control queue).
    fn want(&mut self, now: u64, peer: PeerId) {
        let control = &mut self.control;
        self.endpoint
            .want(now, peer, &mut |p, to, b| control.push(p, to, b));
    }

    /// A peer for the node at `addr` with `key` (starting a handshake if it has no session),
    /// held for as long as the shard runs.
    fn connect_held(
        &mut self,
        now: u64,
        addr: SocketAddr,
        key: [u8; 32],
    ) -> Result<PeerId, String> {
        let control = &mut self.control;
        let peer = self
            .endpoint
            .connect(now, addr, key, &mut |p, to, b| control.push(p, to, b))
            .map_err(|e| match e {
                ConnectError::PeerCap => format!(
                    "this shard already keeps mesh.peers_max ({}) peers",
                    self.shared.peers_max
                ),
                ConnectError::SelfKey => "that is this node's own key".to_owned(),
            })?;
        self.endpoint.hold(peer);
        self.sync_peers();
        Ok(peer)
    }

    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &mut self,
        now: u64,
        addr: SocketAddr,
        key: [u8; 32],
        origin: NodeId,
        origin_shard: u16,
        from: u64,
        token: Vec<u8>,
        limits: net_transport::stream::RecvLimits,
        counters: Arc<crate::mesh_stream::StreamCounters>,
    ) -> Result<(), String> {
        if self.streams.mirror.is_none() {
            return Err("this shard has no mirror lane".into());
        }
        // One that was refused (or whose token was revoked) may be started again.
        for slot in &mut self.streams.subs {
            let refused = slot.as_ref().is_some_and(|s| {
                s.origin == origin && s.origin_shard == origin_shard && s.state == SubState::Failed
            });
            if refused && let Some(s) = slot.take() {
                s.counters.ended.store(true, Ordering::Relaxed);
            }
        }
        if self
            .streams
            .subs
            .iter()
            .flatten()
            .any(|s| s.origin == origin && s.origin_shard == origin_shard)
        {
            return Err(format!(
                "shard {origin_shard} of node {origin:016x} is already subscribed"
            ));
        }
        let peer = self.connect_held(now, addr, key)?;
        let key_slot = self
            .streams
            .subs
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.streams.subs.push(None);
                self.streams.subs.len() - 1
            });
        counters.node.store(origin, Ordering::Relaxed);
        counters
            .origin_shard
            .store(u64::from(origin_shard), Ordering::Relaxed);
        counters.stream.store(key_slot as u64, Ordering::Relaxed);
        counters.next.store(from, Ordering::Relaxed);
        self.streams
            .registry
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counters.clone());
        let placeholder = net_transport::stream::StreamRef::default();
        self.streams.subs[key_slot] = Some(Subscription {
            peer,
            origin,
            origin_shard,
            token,
            limits,
            rx: net_transport::stream::RecvStream::new(
                placeholder,
                from,
                limits,
                self.streams.timers,
            ),
            state: SubState::Subscribing,
            last_subscribe_ns: now,
            counters,
        });
        self.streams.send_subscribe(now, key_slot);
        tracing::info!(
            shard = self.streams.shard,
            origin = %crate::mesh_stream::Hex(origin),
            origin_shard,
            addr = %addr,
            from,
            "mesh subscription started"
        );
        Ok(())
    }

    // ---- subscriptions ----

    /// The plaintext region of a packet buffer (a whole message).
    fn plain<'a>(pool: &'a mut PacketPool, buf: &PacketBuf, max: usize) -> &'a mut [u8] {
        &mut pool.buf_mut(buf)[DATA_HEADER_LEN..DATA_HEADER_LEN + max]
    }

    /// Seals the `plain_len` bytes of plaintext already in `buf` for `peer` and queues the
    /// datagram (sending a full batch first). False, with the buffer freed, when it cannot
    /// go now.
    fn seal_and_queue(&mut self, now: u64, peer: PeerId, buf: PacketBuf, plain_len: usize) -> bool {
        if self.tx.batch.is_full() && (self.write_blocked || !self.flush(now)) {
            self.pool.free(buf);
            return false;
        }
        match self
            .endpoint
            .seal_in_place(now, peer, self.pool.buf_mut(&buf), plain_len)
        {
            Ok((len, to)) => match self.tx.push(&self.pool, buf, len, to, peer) {
                Ok(()) => true,
                Err(buf) => {
                    self.pool.free(buf);
                    false
                }
            },
            Err(_) => {
                self.pool.free(buf);
                false
            }
        }
    }

    /// A batch completed on this shard: publications at the log's end send it at once,
    /// sealed from the batch's bytes (the copy into the packet buffer is the only one).
    pub(crate) fn on_batch(&mut self, batch: &AppendedBatch<'_>) {
        self.log_end = batch.end_seq;
        if self.stopped || self.streams.pubs.is_empty() {
            return;
        }
        let now = monotonic_ns();
        for k in 0..self.streams.pubs.len() {
            let Some(p) = self.streams.pubs[k].as_ref() else {
                continue;
            };
            if !p.live {
                continue;
            }
            let ok = p.tx.next_new() == batch.first_seq && self.send_live(now, k, batch);
            if let Some(p) = self.streams.pubs[k].as_mut()
                && !ok
            {
                // It catches up from the log (the log reader sends what this batch could not).
                p.live = false;
                p.counters.catchups.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends a batch's records to publication `k` within its credit; false when it stopped
    /// short (credit, no session, no buffer, the socket full).
    fn send_live(&mut self, now: u64, k: usize, batch: &AppendedBatch<'_>) -> bool {
        let (peer, st) = {
            let p = self.streams.pubs[k]
                .as_ref()
                .expect("checked by the caller");
            (p.peer, p.tx.stream())
        };
        if !self.endpoint.can_send_at(now, peer) || self.write_blocked {
            return false;
        }
        let max = self.endpoint.message_bytes_max();
        let mut records = batch.records().peekable();
        while let Some(first) = records.peek().copied() {
            let bytes = stream::record_bytes(first.payload.len());
            let tx = &self.streams.pubs[k].as_ref().expect("live").tx;
            if !tx.may_send(bytes) {
                return false;
            }
            if !DataFrameWriter::fits_alone(max, first.payload.len()) {
                let mut i = 0;
                loop {
                    let Some(buf) = self.pool.alloc() else {
                        return false;
                    };
                    let plain = Self::plain(&mut self.pool, &buf, max);
                    let Some(n) =
                        stream::write_fragment(plain, st, first.seq, first.ts_ns, first.payload, i)
                    else {
                        self.pool.free(buf);
                        break;
                    };
                    if !self.seal_and_queue(now, peer, buf, n) {
                        return false;
                    }
                    i += 1;
                }
                let p = self.streams.pubs[k].as_mut().expect("live");
                p.tx.sent_new(first.seq + 1, bytes);
                records.next();
                continue;
            }
            let Some(buf) = self.pool.alloc() else {
                return false;
            };
            let tx = &self.streams.pubs[k].as_ref().expect("live").tx;
            let plain = &mut self.pool.buf_mut(&buf)[DATA_HEADER_LEN..DATA_HEADER_LEN + max];
            let mut w = DataFrameWriter::new(plain, st, first.seq);
            let mut out_of_credit = false;
            while let Some(r) = records.peek() {
                if !w.fits(r.payload.len()) {
                    break;
                }
                if !tx.may_send(w.record_bytes() + stream::record_bytes(r.payload.len())) {
                    out_of_credit = true;
                    break;
                }
                w.push(r.ts_ns, r.payload);
                records.next();
            }
            let (end, bytes) = (w.end_seq(), w.record_bytes());
            let n = w.finish();
            if !self.seal_and_queue(now, peer, buf, n) {
                return false;
            }
            let p = self.streams.pubs[k].as_mut().expect("live");
            p.tx.sent_new(end, bytes);
            if out_of_credit {
                return false;
            }
        }
        true
    }

    /// Sends what the log reader answered; returns whether anything was handled.
    fn drain_reads(&mut self, now: u64) -> bool {
        let Some(mut reader) = self.reads_in.take() else {
            return false;
        };
        let n = reader.drain(256, u64::MAX, |tag, bytes| self.on_read(now, tag, bytes));
        self.reads_in = Some(reader);
        n > 0
    }

    /// One answer of the log reader; false when it cannot be sent now (kept for later).
    fn on_read(&mut self, now: u64, tag: u64, bytes: &[u8]) -> bool {
        let (key, purpose) = streamer::untag(tag);
        let Some(p) = self.streams.pubs.get(key as usize).and_then(Option::as_ref) else {
            return true; // the publication ended
        };
        let st = p.tx.stream();
        let Some((&kind, body)) = bytes.split_first() else {
            return true;
        };
        match kind {
            streamer::RESP_FRAME => {
                let Ok(frame) = stream::decode(body) else {
                    return true;
                };
                let (fs, new_end, new_bytes) = match frame {
                    stream::Frame::Data {
                        stream,
                        first_seq,
                        count,
                        ..
                    } => (
                        stream,
                        Some((first_seq, first_seq + u64::from(count))),
                        (body.len() - stream::DATA_HEADER) as u64,
                    ),
                    stream::Frame::Skip { stream, from, to } => (stream, Some((from, to)), 0),
                    stream::Frame::Fragment {
                        stream,
                        seq,
                        total,
                        offset,
                        chunk,
                        ..
                    } => {
                        let last = u64::from(offset) + chunk.len() as u64 == u64::from(total);
                        let end = last.then_some((seq, seq + 1));
                        (stream, end, stream::record_bytes(total as usize))
                    }
                    _ => return true,
                };
                if fs != st {
                    return true; // an earlier generation's read
                }
                let peer = p.peer;
                if purpose == streamer::READ_NEW {
                    let first = match frame {
                        stream::Frame::Fragment { seq, .. } => seq,
                        _ => new_end.map_or(0, |e| e.0),
                    };
                    if first != p.tx.next_new() {
                        return true; // stale: what it covers went out already
                    }
                }
                if !self.endpoint.can_send_at(now, peer) {
                    // No session now: drop the frame rather than hold up the ring for the
                    // other publications. Nothing is lost: new data is counted sent only when
                    // sealed (the next read starts there), and a hole is asked for again.
                    self.want(now, peer);
                    return true;
                }
                let Some(buf) = self.pool.alloc() else {
                    return false;
                };
                let max = self.endpoint.message_bytes_max();
                Self::plain(&mut self.pool, &buf, max)[..body.len()].copy_from_slice(body);
                if !self.seal_and_queue(now, peer, buf, body.len()) {
                    return false;
                }
                if purpose == streamer::READ_NEW
                    && let Some((_, end)) = new_end
                    && let Some(p) = self.streams.pubs[key as usize].as_mut()
                {
                    match frame {
                        stream::Frame::Skip { .. } => p.tx.skipped_new(end),
                        _ => p.tx.sent_new(end, new_bytes),
                    }
                }
                true
            }
            streamer::RESP_DONE => {
                let Some((generation, reached, by_budget)) = streamer::parse_done(bytes) else {
                    return true;
                };
                if generation != st.generation {
                    return true;
                }
                let log_end = self.log_end;
                let p = self.streams.pubs[key as usize].as_mut().expect("checked");
                p.reading = false;
                if purpose == streamer::READ_NEW {
                    if p.tx.next_new() >= log_end {
                        p.live = true;
                    }
                    // A read that sent nothing (the next record needs more credit than the
                    // read had) is not asked again until the grant moves past the one it had
                    // (it may have moved already while the read was out).
                    p.stuck_at_grant = (by_budget && reached == p.reading_from && !p.live)
                        .then_some(p.reading_grant);
                } else if reached < p.reading_to {
                    p.tx.resend_later(reached, p.reading_to);
                }
                true
            }
            _ => {
                if let Some(p) = self.streams.pubs[key as usize].as_mut() {
                    p.counters.fail(String::from_utf8_lossy(body).into_owned());
                    p.reading = false;
                }
                true
            }
        }
    }

    /// Asks the log reader for what publications need; returns whether anything was asked.
    fn request_reads(&mut self, now: u64) -> bool {
        self.wants.clear();
        let endpoint = &self.endpoint;
        self.streams.wanted_reads(
            now,
            self.log_end,
            |peer| endpoint.can_send_at(now, peer),
            &mut self.wants,
        );
        if self.wants.is_empty() {
            return false;
        }
        for w in &self.wants {
            let req = ReadRequest {
                key: w.key,
                stream: w.stream,
                from: w.from,
                to: w.to,
                max_bytes: w.max_bytes,
                oversize_ok: w.oversize_ok,
                purpose: w.purpose,
            }
            .encode();
            let need = self.reads_out.bytes_needed(req.len());
            if self.reads_out.has_room(need) {
                self.reads_out.stage(0, &req);
            } else if let Some(p) = self.streams.pubs[w.key as usize].as_mut() {
                p.reading = false;
                if w.purpose == streamer::READ_RESEND {
                    p.tx.resend_later(w.from, w.to);
                }
            }
        }
        self.reads_out.publish();
        self.streamer.wake.notify();
        true
    }

    /// Sends queued stream replies (acknowledgements, subscriptions, answers) to peers
    /// with a session; returns whether any went.
    fn send_replies(&mut self, now: u64) -> bool {
        let mut i = 0;
        let mut sent = false;
        let max = self.endpoint.message_bytes_max();
        while i < self.streams.replies.len() {
            let peer = self.streams.replies[i].peer;
            if !self.endpoint.can_send_at(now, peer) {
                self.want(now, peer);
                i += 1;
                continue;
            }
            let Some(buf) = self.pool.alloc() else {
                break;
            };
            let r = &self.streams.replies[i];
            let len = r.len;
            Self::plain(&mut self.pool, &buf, max)[..len].copy_from_slice(&r.bytes[..len]);
            if !self.seal_and_queue(now, peer, buf, len) {
                break;
            }
            self.streams.replies.remove(i);
            sent = true;
        }
        sent
    }

    /// The subscription steps of one turn.
    fn work_streams(&mut self, now: u64) -> bool {
        let mut busy = self.drain_reads(now);
        self.streams.tick_subscriptions(now);
        if now.saturating_sub(self.tokens_checked_ns) >= 1_000_000_000 {
            self.tokens_checked_ns = now;
            self.streams.recheck_tokens();
            self.streams.end_silent(now, self.publication_idle_ns);
        }
        busy |= self.request_reads(now);
        busy |= self.send_replies(now);
        for p in self.streams.pubs.iter().flatten() {
            Streams::publish_pub_counters(p);
        }
        busy
    }

    /// Whether stream work is waiting that needs no completion.
    fn streams_ready(&self, now: u64) -> bool {
        self.reads_in.as_ref().is_some_and(|r| !r.is_empty())
            || self
                .streams
                .replies
                .iter()
                .any(|r| self.endpoint.can_send_at(now, r.peer))
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
                streams,
                ..
            } = self;
            let mut staged = 0usize;
            let got = socket.recv_batch(rx, pool, |buf, src, truncated| {
                if truncated {
                    endpoint.drop_truncated(now, src);
                    return;
                }
                let r = endpoint.receive(now, src, buf, &mut |p, to, b| control.push(p, to, b));
                if let Received::Message { peer, node, range } = r {
                    let message = &buf[range];
                    match message.split_first() {
                        Some((&stream::KIND_APP, payload)) => {
                            let need = inbox.bytes_needed(payload.len());
                            if inbox.has_room(need) {
                                inbox.stage(node, payload);
                                staged += 1;
                            } else {
                                shared.inbox_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(_) => {
                            let key = endpoint.peer_key(peer);
                            streams.on_frame(now, peer, node, &key, message);
                        }
                        None => streams.bad_frame(now, node, "empty"),
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
                tracing::error!(
                    addr = %self.socket.local_addr(),
                    error = %e,
                    "mesh socket failed; this shard's mesh stopped"
                );
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
                    self.want(now, peer);
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
                let plain = &mut pool.buf_mut(&buf)[net_transport::codec::DATA_HEADER_LEN..];
                plain[0] = stream::KIND_APP;
                plain[1..=msg.len()].copy_from_slice(msg);
                match endpoint.seal_in_place(now, peer, pool.buf_mut(&buf), msg.len() + 1) {
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
            self.streams.replies.retain(|r| r.peer != peer);
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
        busy |= self.work_streams(now);
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
            || (!self.write_blocked
                && (self.has_sendable(now) || !self.tx.batch.is_empty() || self.streams_ready(now)))
    }

    fn deadline_ns(&self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        let d = self.endpoint.deadline_ns().min(self.streams.deadline_ns());
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
