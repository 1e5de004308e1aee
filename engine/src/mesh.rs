//! The mesh as the application sees it: a [`Peer`] handle to send datagram messages to one
//! remote node, the [`Inbox`] that messages from every peer arrive in, and [`MeshStats`].
//!
//! Nothing here touches a socket. A peer handle owns one SPSC ring into the shard that owns
//! the session (the engine's lane ring, written in place: sending allocates nothing); the
//! shard seals and sends what it drains, in batches. Each shard writes the messages it
//! receives into its own SPSC ring to the inbox. While a handshake is under way the handle's
//! ring is the queue: the shard drains it only once it has a session, so a full ring pushes
//! back on the sender ([`PeerSendError::Full`]) instead of anything being dropped silently;
//! if a handshake round gives up, the shard drops what was queued for it and counts it in
//! [`PeerStats::unsent_dropped`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use net_transport::identity::NodeId;
use net_transport::stats::{Counters, CountersSnapshot};

use crate::ids::ShardId;
use crate::notify::Notify;
use crate::ring::{Ring, RingReader, RingWriter};
use crate::wake::ShardSignal;

/// State shared by a peer handle and the shard that serves it.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub(crate) ring: Arc<Ring>,
    /// The remote node's id once a handshake told it (0 before).
    pub(crate) node: AtomicU64,
    /// The transport's counters of this peer (set when the shard registers the handle).
    pub(crate) counters: OnceLock<Arc<Counters>>,
    /// Messages dropped because the handshake round for them gave up.
    pub(crate) unsent_dropped: AtomicU64,
    /// The handle was dropped; the shard forgets the link once it drained it.
    pub(crate) gone: AtomicBool,
}

impl PeerLink {
    pub(crate) fn new(ring_bytes: usize) -> PeerLink {
        PeerLink {
            ring: Arc::new(Ring::new(ring_bytes)),
            node: AtomicU64::new(0),
            counters: OnceLock::new(),
            unsent_dropped: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        }
    }
}

/// Why [`Peer::send`] did not take a message. The caller still owns it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSendError {
    /// The handle's queue to its shard is full (the peer is slow, or a handshake is under
    /// way): retry later.
    #[error("the queue to shard {0} is full")]
    Full(ShardId),
    /// Larger than the mesh's largest message.
    #[error("message of {len} bytes exceeds the mesh's maximum of {max} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The largest message (`mesh.datagram_bytes_max` less 33).
        max: usize,
    },
    /// The bus is shut down.
    #[error("the bus is shut down")]
    Closed,
}

/// A handle for sending datagram messages to one remote node (from [`crate::Bus::connect`]
/// or [`crate::Bus::peer`]). `Send`, not `Sync`: one per thread. Messages are delivered at
/// most once and unordered, as datagrams are; streams come with subscriptions.
#[derive(Debug)]
pub struct Peer {
    shard: ShardId,
    writer: RingWriter,
    link: Arc<PeerLink>,
    signal: Arc<ShardSignal>,
    message_bytes_max: usize,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.link.gone.store(true, Ordering::Release);
        self.signal.wake_if_parked();
    }
}

impl Peer {
    pub(crate) fn new(
        shard: ShardId,
        link: Arc<PeerLink>,
        signal: Arc<ShardSignal>,
        message_bytes_max: usize,
    ) -> Peer {
        Peer {
            shard,
            writer: RingWriter::new(link.ring.clone()),
            link,
            signal,
            message_bytes_max,
        }
    }

    /// Queues `msg` for the peer. Returns [`PeerSendError::Full`] when the queue is full.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), PeerSendError> {
        if msg.len() > self.message_bytes_max {
            return Err(PeerSendError::TooLarge {
                len: msg.len(),
                max: self.message_bytes_max,
            });
        }
        self.writer.enter_window();
        if self.writer.is_closed() {
            self.writer.leave_window();
            return Err(PeerSendError::Closed);
        }
        let need = self.writer.bytes_needed(msg.len());
        if !self.writer.has_room(need) {
            self.writer.leave_window();
            self.signal.wake_if_parked();
            return Err(PeerSendError::Full(self.shard));
        }
        self.writer.write(0, msg);
        self.writer.leave_window();
        self.signal.wake_if_parked();
        Ok(())
    }

    /// Sends `msg`, waiting while the queue is full, up to `timeout`. The waits are sleeps
    /// that double from 20 µs to 1 ms: a full queue holds milliseconds of the shard's work,
    /// and a sender that woke every few microseconds preempted its shard (on a shared core)
    /// thousands of times a second for nothing (measured: 20 µs sleeps cut the mesh's
    /// throughput by a fifth against sleeps up to 1 ms).
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<(), PeerSendError> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            match self.send(msg) {
                Err(PeerSendError::Full(s)) => {
                    let left = timeout.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(PeerSendError::Full(s));
                    }
                    std::thread::sleep(nap.min(left));
                    nap = (nap * 2).min(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    /// The shard that owns this peer's session.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The remote node's id, once a handshake completed.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.link.node.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// The largest message `send` takes.
    pub fn message_bytes_max(&self) -> usize {
        self.message_bytes_max
    }

    /// This peer's counters.
    pub fn stats(&self) -> PeerStats {
        PeerStats {
            shard: self.shard,
            node: self.node_id(),
            traffic: self
                .link
                .counters
                .get()
                .map(|c| c.snapshot())
                .unwrap_or_default(),
            unsent_dropped: self.link.unsent_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A peer's counters.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct PeerStats {
    /// The shard that owns its sessions.
    pub shard: ShardId,
    /// Its node id, once known.
    pub node: Option<NodeId>,
    /// Packets, bytes, handshakes, rekeys and drops by cause.
    pub traffic: CountersSnapshot,
    /// Messages queued through this handle that were dropped (a handshake round gave up,
    /// the bus stopped, the socket failed). Only [`Peer::stats`] knows it: in
    /// [`MeshStats::peers`] it is 0, and the shard's total is
    /// [`MeshShardStats::unsent_dropped`].
    pub unsent_dropped: u64,
}

/// One shard's mesh, as the bus sees it (for stats and errors).
#[derive(Debug)]
pub(crate) struct MeshShard {
    pub(crate) local_addr: SocketAddr,
    pub(crate) peers_max: usize,
    pub(crate) counters: Arc<Counters>,
    /// Every peer of the shard, by the shard (registered when it first appears).
    pub(crate) peers: Mutex<Vec<(Arc<AtomicU64>, Arc<Counters>)>>,
    /// Messages received but dropped because the inbox ring was full.
    pub(crate) inbox_dropped: AtomicU64,
    /// Messages dropped because their handshake round gave up.
    pub(crate) unsent_dropped: AtomicU64,
    /// Datagrams the kernel refused to send (classified per-datagram errors).
    pub(crate) send_errors: AtomicU64,
    /// Control packets (handshake replies, keepalives) dropped because more than a step's
    /// worth queued at once (a retry or the next keepalive makes up for them).
    pub(crate) control_dropped: Arc<AtomicU64>,
    /// Set when the socket hit a hard error and the shard stopped using it.
    pub(crate) socket_failed: Mutex<Option<String>>,
}

/// A shard's mesh counters.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct MeshShardStats {
    /// The shard.
    pub shard: ShardId,
    /// Its socket's address.
    pub local_addr: SocketAddr,
    /// Packets, bytes, handshakes, rekeys and drops by cause.
    pub traffic: CountersSnapshot,
    /// Messages received but dropped because the inbox was full (nobody reads it, or too
    /// slowly).
    pub inbox_dropped: u64,
    /// Messages dropped because their handshake round gave up.
    pub unsent_dropped: u64,
    /// Datagrams the kernel refused (too large for the path, no route, and the like), and
    /// datagrams sealed but never sent when a hard socket error stopped the shard's mesh.
    pub send_errors: u64,
    /// Control packets dropped because more than a step's worth queued at once.
    pub control_dropped: u64,
    /// The hard socket error that stopped this shard's mesh, if any.
    pub socket_failed: Option<String>,
}

/// The mesh's counters: per shard and per peer.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct MeshStats {
    /// This node's id.
    pub node_id: NodeId,
    /// Per shard.
    pub shards: Vec<MeshShardStats>,
    /// Per peer and shard (a remote node with sessions on two shards appears twice).
    pub peers: Vec<PeerStats>,
    /// The sum over shards.
    pub total: CountersSnapshot,
    /// This node's shards streamed to subscribers, one entry per subscription served
    /// (ended ones stay, marked `ended`).
    pub publications: Vec<StreamStats>,
    /// Other nodes' shards this node mirrors, one entry per subscription.
    pub subscriptions: Vec<StreamStats>,
}

/// One subscription's figures, on the publisher's side ([`MeshStats::publications`]) or the
/// subscriber's ([`MeshStats::subscriptions`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// The other node: the subscriber (publication) or the publisher (subscription).
    pub node: NodeId,
    /// The publisher's shard streamed (and, on the subscriber, the local shard mirroring
    /// it).
    pub shard: u16,
    /// The stream's id (chosen by the subscriber).
    pub stream: u32,
    /// Publisher: the first sequence number not yet sent. Subscriber: the next one it
    /// waits for (everything below is mirrored or was reported skipped).
    pub next_seq: u64,
    /// Publisher: the prefix the subscriber confirmed receiving.
    pub acked: u64,
    /// Publisher: events its log holds beyond `acked` (the subscriber's lag).
    pub lag_events: u64,
    /// Record bytes consumed by the subscriber, and the credit granted: `granted` is
    /// `consumed + window` from one acknowledgement, so it is never below `consumed`.
    pub consumed_bytes: u64,
    pub granted_bytes: u64,
    /// Publisher: record bytes sent as new data.
    pub sent_bytes: u64,
    /// Subscriber: events the publisher reported it no longer has (retention removed them
    /// before they were mirrored): never skipped silently.
    pub skipped_events: u64,
    /// Subscriber: frames received twice; frames dropped for want of room to hold them
    /// out of order (asked for again).
    pub duplicates: u64,
    pub no_room: u64,
    /// Publisher: holes resent from the log, and tail timeouts.
    pub resent_ranges: u64,
    pub timeouts: u64,
    /// Times the subscription was (re)started (a publisher restart makes it subscribe
    /// again from where it is).
    pub subscribes: u64,
    /// Publisher: times it fell behind the completed batches (out of credit, the socket
    /// full) and caught up by reading its log.
    pub catchups: u64,
    /// Publisher: fed from batches as they complete (not catching up from the log).
    pub live: bool,
    /// Accepted and running.
    pub active: bool,
    /// Ended (unsubscribed, revoked, expired).
    pub ended: bool,
    /// Why it stopped (a refusal with its reason, a revoked or expired token).
    pub error: Option<String>,
}

impl StreamStats {
    pub(crate) fn read(c: &crate::mesh_stream::StreamCounters) -> StreamStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let consumed = get(&c.consumed);
        StreamStats {
            node: get(&c.node),
            shard: u16::try_from(get(&c.origin_shard)).unwrap_or(u16::MAX),
            stream: u32::try_from(get(&c.stream)).unwrap_or(u32::MAX),
            next_seq: get(&c.next),
            acked: get(&c.acked),
            lag_events: 0,
            consumed_bytes: consumed,
            granted_bytes: consumed.saturating_add(get(&c.window)),
            sent_bytes: get(&c.sent_bytes),
            skipped_events: get(&c.skipped_events),
            duplicates: get(&c.duplicates),
            no_room: get(&c.no_room),
            resent_ranges: get(&c.resent_ranges),
            timeouts: get(&c.timeouts),
            subscribes: get(&c.subscribes),
            catchups: get(&c.catchups),
            live: c.live.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            ended: c.ended.load(Ordering::Relaxed),
            error: c.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl MeshShard {
    pub(crate) fn snapshot(&self, shard: ShardId) -> (MeshShardStats, Vec<PeerStats>) {
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(node, c)| PeerStats {
                shard,
                node: match node.load(Ordering::Acquire) {
                    0 => None,
                    n => Some(n),
                },
                traffic: c.snapshot(),
                unsent_dropped: 0,
            })
            .collect();
        (
            MeshShardStats {
                shard,
                local_addr: self.local_addr,
                traffic: self.counters.snapshot(),
                inbox_dropped: self.inbox_dropped.load(Ordering::Relaxed),
                unsent_dropped: self.unsent_dropped.load(Ordering::Relaxed),
                send_errors: self.send_errors.load(Ordering::Relaxed),
                control_dropped: self.control_dropped.load(Ordering::Relaxed),
                socket_failed: self
                    .socket_failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            },
            peers,
        )
    }
}

/// One message from a peer.
#[derive(Debug, Clone, Copy)]
pub struct MeshMessage<'a> {
    /// The shard that received it (and owns the session: [`crate::Bus::peer`] with it
    /// answers on the same session).
    pub shard: ShardId,
    /// The sender's node id.
    pub from: NodeId,
    /// The message, exactly as sent.
    pub payload: &'a [u8],
}

/// Where messages from every peer arrive (from [`crate::Bus::mesh_inbox`]; one per bus).
#[derive(Debug)]
pub struct Inbox {
    readers: Vec<RingReader>,
    notify: Arc<Notify>,
    next: usize,
}

impl Inbox {
    pub(crate) fn new(readers: Vec<RingReader>, notify: Arc<Notify>) -> Inbox {
        Inbox {
            readers,
            notify,
            next: 0,
        }
    }

    /// Hands up to `max` waiting messages to `f` (shards taken in turn, so none starves);
    /// returns how many. Never waits.
    pub fn recv(&mut self, max: usize, mut f: impl FnMut(MeshMessage<'_>)) -> usize {
        let n = self.readers.len();
        let mut got = 0;
        for k in 0..n {
            if got >= max {
                break;
            }
            let i = (self.next + k) % n;
            let shard = ShardId(u16::try_from(i).expect("mesh shards fit u16"));
            got += self.readers[i].drain(max - got, u64::MAX, |node, payload| {
                f(MeshMessage {
                    shard,
                    from: node,
                    payload,
                });
                true
            });
        }
        self.next = (self.next + 1) % n.max(1);
        got
    }

    /// As [`Inbox::recv`], but sleeps (no CPU) until a message arrives or `timeout` passes.
    pub fn recv_wait(
        &mut self,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(MeshMessage<'_>),
    ) -> usize {
        let start = Instant::now();
        loop {
            let seen = self.notify.epoch();
            let got = self.recv(max, &mut f);
            if got > 0 {
                return got;
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return 0;
            }
            self.notify.wait(seen, left);
        }
    }
}
