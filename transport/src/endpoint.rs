//! One shard's side of the mesh, I/O-free: its sessions, its peers, its timers and its
//! handshake pacer. It takes datagrams, a source address and a clock reading, and returns what
//! to deliver and what to send (boringtun's `Tunn` is the model; here one endpoint holds every
//! session of its shard, because a shard owns one socket).
//!
//! Sessions live in a slab and are keyed by the index they chose: the index's low byte is the
//! shard, the next 16 bits the slab slot, the top byte a generation that changes each time the
//! slot is reused. A data packet finds its session with one slab lookup and one comparison;
//! a stale index (an old session's late packet) fails the comparison.
//!
//! A peer (one remote node, by node id and static key) has at most: a `current` session it
//! sends on; a `previous` one still accepted on receive while the other side moves over; a
//! `next` one (a responder session not yet confirmed by the initiator's first data packet);
//! and a `pending` initiation of ours. The rules that keep a session safe from the network:
//! - A message 1 must be newer (timestamp) than the last one accepted from that node, so a
//!   replayed or older one is dropped before it touches any session; a newer genuine one
//!   makes a `next` session and never replaces `current` until the initiator proves it holds
//!   the new keys by sending on it.
//! - A known node id presenting a different static key is refused unless the operator allowed
//!   rotation for that node id.
//! - Two initiations crossing (both sides connect at once) resolve deterministically: the
//!   initiation of the node with the lower node id wins; the other side answers it and drops
//!   its own.
//! - Data counters go through the replay window: checked before decryption, committed after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::codec::{
    DATA_HEADER_LEN, DATA_MIN_LEN, DATA_OVERHEAD, INIT_LEN, KEY_LEN, Packet, RESPONSE_LEN, TAG_LEN,
    decode, write_data_header,
};
use crate::handshake::{Handshaker, Initiation, Keys};
use crate::identity::{Identity, NodeId, Psk};
use crate::pacer::Pacer;
use crate::ratelimit::RateLimit;
use crate::replay::{Refused, ReplayWindow};
use crate::stats::{Counters, DROP_CAUSES, DropCause};

/// Timers and limits of an endpoint, in nanoseconds where they are durations. The engine's
/// config validates them (every one non-zero, the field named).
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Send a keepalive when nothing was sent on a session for this long.
    pub heartbeat_ns: u64,
    /// Close a session when nothing arrived on it for this long.
    pub session_timeout_ns: u64,
    /// Start a new handshake when the session is this old...
    pub rekey_after_ns: u64,
    /// ...or has sent this many packets.
    pub rekey_after_messages: u64,
    /// First handshake retry after this long; doubles per attempt...
    pub handshake_retry_ns: u64,
    /// ...up to this.
    pub handshake_retry_max_ns: u64,
    /// Give a handshake round up after this long.
    pub handshake_timeout_ns: u64,
    /// Initiations accepted per second per source address, and the burst.
    pub handshakes_per_sec: u32,
    pub handshake_burst: u32,
    /// Source addresses the pacer tracks.
    pub pacer_sources: usize,
    /// Peers this shard keeps.
    pub peers_max: usize,
    /// Node ids allowed to present a new static key.
    pub allow_key_rotation: Vec<NodeId>,
    /// Largest application message (datagram less [`DATA_OVERHEAD`]).
    pub message_bytes_max: usize,
}

impl EndpointConfig {
    /// A session is refused on send and receive past this age (rekeying should have replaced
    /// it long before).
    fn reject_after_ns(&self) -> u64 {
        self.rekey_after_ns.saturating_add(self.rekey_after_ns / 2)
    }

    /// A session is refused on send past this many packets.
    fn reject_after_messages(&self) -> u64 {
        self.rekey_after_messages
            .saturating_mul(2)
            .min(u64::MAX - (1 << 16))
    }
}

/// A peer of this endpoint (an index into its peer table; stable for the endpoint's life).
pub type PeerId = u32;

/// What a received datagram was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An application message from `peer`, decrypted in place at `buf[range]`.
    Message {
        peer: PeerId,
        node: NodeId,
        range: std::ops::Range<usize>,
    },
    /// A handshake message or keepalive, handled.
    Control,
    /// Dropped, and counted under this cause.
    Dropped(DropCause),
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The peer has no usable session (a handshake is under way or must be started).
    NoSession,
    /// Larger than `message_bytes_max`.
    TooLarge,
}

/// Why `connect` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// The peer table is full.
    PeerCap,
    /// The key is this node's own.
    SelfKey,
}

struct Session {
    local_index: u32,
    remote_index: u32,
    peer: PeerId,
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    send_counter: u64,
    replay: ReplayWindow,
    created_ns: u64,
    last_recv_ns: u64,
    last_send_ns: u64,
}

struct Pending {
    local_index: u32,
    peer: PeerId,
    init: Initiation,
}

#[allow(clippy::large_enum_variant)] // the slab is preallocated; boxing would allocate per session
enum Slot {
    Free,
    Pending(Pending),
    Live(Session),
}

struct Peer {
    node: Option<NodeId>,
    key: [u8; KEY_LEN],
    addr: SocketAddr,
    current: Option<u32>,
    previous: Option<u32>,
    next: Option<u32>,
    pending: Option<u32>,
    /// Highest message 1 timestamp accepted from this node.
    last_init_ts: u64,
    /// The handshake round: when it began, the next retry, the current interval.
    round_started_ns: u64,
    retry_at_ns: u64,
    retry_ns: u64,
    /// Initiations sent in this round.
    attempts: u32,
    rekey_wanted: bool,
    /// Handles the driver holds on this peer (its slot is not reused while any).
    holds: u32,
    counters: Arc<Counters>,
}

/// One shard's mesh endpoint.
pub struct Endpoint {
    shard: u8,
    cfg: EndpointConfig,
    hs: Handshaker,
    slots: Vec<Slot>,
    generations: Vec<u8>,
    free: Vec<u16>,
    peers: Vec<Peer>,
    by_node: HashMap<NodeId, PeerId>,
    by_key: HashMap<[u8; KEY_LEN], PeerId>,
    pacer: Pacer,
    /// Wall clock minus monotonic clock (ns): message 1 timestamps are wall-clock.
    wall_offset_ns: i128,
    last_ts: u64,
    counters: Arc<Counters>,
    deadline_ns: u64,
    /// Peers whose handshake round gave up, for the driver to drop their queued messages.
    failed: Vec<PeerId>,
    evictions: u64,
    /// Log limits: dropped datagrams per cause, and session events (a remote party can
    /// provoke either per packet).
    drop_log: [RateLimit; DROP_CAUSES],
    session_log: RateLimit,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("shard", &self.shard)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// Unanswered initiations after which ours yields to a crossing one whatever the node ids.
const YIELD_AFTER_ATTEMPTS: u32 = 3;

/// Whether a peer can be sent to at `addr` (roaming never follows a source one cannot send
/// to: port 0, an unspecified, broadcast or multicast address).
pub fn routable(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = match ip {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    };
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Log events per second and shard: for each drop cause, and for session events.
const DROP_LOG_PER_SEC: u32 = 1;
const SESSION_LOG_PER_SEC: u32 = 10;

/// Largest slab: 16 bits of slot.
const SLOTS_MAX: usize = 1 << 16;

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The emit callback: where control packets (handshakes, keepalives) go, with the peer they
/// belong to (so the driver can count them once they are actually sent).
pub type Emit<'a> = dyn FnMut(PeerId, SocketAddr, &[u8]) + 'a;

impl Endpoint {
    /// The endpoint of shard `shard`. `wall_offset_ns` is the wall clock minus the monotonic
    /// clock that `now_ns` arguments come from (tests pass their own).
    pub fn new(
        shard: u8,
        identity: Identity,
        psk: Psk,
        cfg: EndpointConfig,
        wall_offset_ns: i128,
    ) -> Endpoint {
        let slots = (cfg.peers_max.saturating_mul(4)).clamp(4, SLOTS_MAX - 1);
        Endpoint {
            shard,
            pacer: Pacer::new(
                cfg.handshakes_per_sec,
                cfg.handshake_burst,
                cfg.pacer_sources,
            ),
            hs: Handshaker::new(identity, psk),
            slots: (0..slots).map(|_| Slot::Free).collect(),
            // Random first generations: session indices are not predictable across runs.
            generations: random_bytes(slots),
            // Slot 0 is never used, so that index 0 never names a session.
            free: (1..u16::try_from(slots).expect("below 2^16"))
                .rev()
                .collect(),
            peers: Vec::with_capacity(cfg.peers_max),
            by_node: HashMap::with_capacity(cfg.peers_max),
            by_key: HashMap::with_capacity(cfg.peers_max),
            wall_offset_ns,
            last_ts: 0,
            counters: Arc::new(Counters::default()),
            deadline_ns: u64::MAX,
            failed: Vec::with_capacity(cfg.peers_max),
            evictions: 0,
            drop_log: std::array::from_fn(|_| RateLimit::per_second(DROP_LOG_PER_SEC)),
            session_log: RateLimit::per_second(SESSION_LOG_PER_SEC),
            cfg,
        }
    }

    pub fn identity(&self) -> &Identity {
        self.hs.identity()
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn peer_counters(&self, peer: PeerId) -> &Arc<Counters> {
        &self.peers[peer as usize].counters
    }

    pub fn peer_node(&self, peer: PeerId) -> Option<NodeId> {
        self.peers[peer as usize].node
    }

    pub fn peer_addr(&self, peer: PeerId) -> SocketAddr {
        self.peers[peer as usize].addr
    }

    /// Peers this endpoint keeps (ids are `0..peer_count()`).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn peer_by_node(&self, node: NodeId) -> Option<PeerId> {
        self.by_node.get(&node).copied()
    }

    pub fn message_bytes_max(&self) -> usize {
        self.cfg.message_bytes_max
    }

    /// When `tick` next has something to do (monotonic ns).
    pub fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }

    /// Takes one peer whose handshake round gave up since the last call.
    pub fn take_failed(&mut self) -> Option<PeerId> {
        self.failed.pop()
    }

    fn index_of(&self, slot: u16) -> u32 {
        u32::from(self.shard)
            | (u32::from(slot) << 8)
            | (u32::from(self.generations[usize::from(slot)]) << 24)
    }

    fn slot_of(&self, index: u32) -> Option<usize> {
        if index & 0xff != u32::from(self.shard) {
            return None;
        }
        let slot = usize::try_from((index >> 8) & 0xffff).expect("16 bits");
        (slot != 0 && slot < self.slots.len() && self.index_of_usize(slot) == index).then_some(slot)
    }

    fn index_of_usize(&self, slot: usize) -> u32 {
        self.index_of(u16::try_from(slot).expect("slab below 2^16"))
    }

    fn alloc_slot(&mut self) -> Option<u16> {
        let s = self.free.pop()?;
        let g = &mut self.generations[usize::from(s)];
        *g = g.wrapping_add(1);
        Some(s)
    }

    fn free_index(&mut self, index: u32) {
        if let Some(slot) = self.slot_of(index) {
            self.slots[slot] = Slot::Free;
            self.free
                .push(u16::try_from(slot).expect("slab below 2^16"));
        }
    }

    fn session(&self, index: Option<u32>) -> Option<&Session> {
        match &self.slots[self.slot_of(index?)?] {
            Slot::Live(s) => Some(s),
            _ => None,
        }
    }

    fn wall_ns(&self, now_ns: u64) -> u64 {
        u64::try_from((i128::from(now_ns) + self.wall_offset_ns).max(0)).unwrap_or(u64::MAX)
    }

    fn soon(&mut self, at_ns: u64) {
        self.deadline_ns = self.deadline_ns.min(at_ns);
    }

    /// Finds or adds the peer with static key `key` at `addr`, and makes sure it has a
    /// session or a handshake under way (sending message 1 through `emit` if not). Calling
    /// it again is cheap and idempotent.
    pub fn connect(
        &mut self,
        now_ns: u64,
        addr: SocketAddr,
        key: [u8; KEY_LEN],
        emit: &mut Emit<'_>,
    ) -> Result<PeerId, ConnectError> {
        if key == self.identity().public_key() {
            return Err(ConnectError::SelfKey);
        }
        let peer = match self.by_key.get(&key) {
            Some(&p) => p,
            None => self
                .add_peer(None, key, addr)
                .ok_or(ConnectError::PeerCap)?,
        };
        self.peers[peer as usize].addr = addr;
        self.want(now_ns, peer, emit);
        Ok(peer)
    }

    /// Makes sure `peer` has a session or a handshake under way. A responder session the
    /// initiator has not confirmed yet counts as under way (its keepalive follows at once):
    /// starting a round of our own then would only replace it.
    pub fn want(&mut self, now_ns: u64, peer: PeerId, emit: &mut Emit<'_>) {
        let p = &self.peers[peer as usize];
        if p.pending.is_some()
            || self.sendable(peer, Some(now_ns))
            || self.session(p.next).is_some()
        {
            return;
        }
        self.start_round(now_ns, peer, emit);
    }

    /// Whether `peer` has a session to send on now.
    pub fn can_send(&self, peer: PeerId) -> bool {
        self.sendable(peer, None)
    }

    /// Whether `peer`'s current session may still seal (at `now_ns`, if given): the limits
    /// `seal` applies, so that a driver never spins on a peer it cannot send to.
    fn sendable(&self, peer: PeerId, now_ns: Option<u64>) -> bool {
        self.session(self.peers[peer as usize].current)
            .is_some_and(|s| {
                s.send_counter < self.cfg.reject_after_messages()
                    && now_ns.is_none_or(|now| {
                        now.saturating_sub(s.created_ns) < self.cfg.reject_after_ns()
                    })
            })
    }

    /// As [`Endpoint::can_send`], also checking the session's age at `now_ns`.
    pub fn can_send_at(&self, now_ns: u64, peer: PeerId) -> bool {
        self.sendable(peer, Some(now_ns))
    }

    fn add_peer(
        &mut self,
        node: Option<NodeId>,
        key: [u8; KEY_LEN],
        addr: SocketAddr,
    ) -> Option<PeerId> {
        let fresh = Peer {
            node,
            key,
            addr,
            current: None,
            previous: None,
            next: None,
            pending: None,
            last_init_ts: 0,
            round_started_ns: 0,
            retry_at_ns: u64::MAX,
            retry_ns: self.cfg.handshake_retry_ns,
            attempts: 0,
            rekey_wanted: false,
            holds: 0,
            counters: Arc::new(Counters::default()),
        };
        let id = if self.peers.len() < self.cfg.peers_max {
            let id = PeerId::try_from(self.peers.len()).ok()?;
            self.peers.push(fresh);
            id
        } else {
            // Full: reuse the slot of a peer nothing refers to any more (no session, no
            // handshake, no handle). It forgets that node's last initiation timestamp: a
            // replay of an old one can then only make a responder session that is never
            // confirmed (the replayer lacks the keys) and times out.
            let id = self.evictable()?;
            let old = std::mem::replace(&mut self.peers[id as usize], fresh);
            self.by_key.remove(&old.key);
            if let Some(n) = old.node {
                self.by_node.remove(&n);
            }
            self.evictions += 1;
            id
        };
        self.by_key.insert(key, id);
        if let Some(n) = node {
            self.by_node.insert(n, id);
        }
        Some(id)
    }

    /// A peer with no session, no handshake and no handle, if any.
    fn evictable(&self) -> Option<PeerId> {
        self.peers.iter().enumerate().find_map(|(i, p)| {
            let id = PeerId::try_from(i).expect("peer ids fit u32");
            (p.holds == 0
                && !self.failed.contains(&id)
                && p.pending.is_none()
                && self.session(p.current).is_none()
                && self.session(p.previous).is_none()
                && self.session(p.next).is_none())
            .then_some(id)
        })
    }

    /// The driver holds a handle on `peer`: its slot is not reused while held.
    pub fn hold(&mut self, peer: PeerId) {
        let p = &mut self.peers[peer as usize];
        p.holds = p.holds.saturating_add(1);
    }

    /// The driver dropped a handle on `peer`.
    pub fn release(&mut self, peer: PeerId) {
        let p = &mut self.peers[peer as usize];
        p.holds = p.holds.saturating_sub(1);
    }

    /// Peers whose slot was reused for another (the table was full). A driver that keeps
    /// per-peer state by id re-reads it when this changes.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn start_round(&mut self, now_ns: u64, peer: PeerId, emit: &mut Emit<'_>) {
        let p = &mut self.peers[peer as usize];
        p.round_started_ns = now_ns;
        p.retry_ns = self.cfg.handshake_retry_ns;
        p.attempts = 0;
        self.send_initiation(now_ns, peer, emit);
    }

    /// Sends a fresh message 1 (new ephemeral key, new timestamp) for `peer`'s round, reusing
    /// the pending slot if there is one.
    fn send_initiation(&mut self, now_ns: u64, peer: PeerId, emit: &mut Emit<'_>) {
        let slot = match self.peers[peer as usize]
            .pending
            .and_then(|i| self.slot_of(i))
        {
            Some(s) => u16::try_from(s).expect("slab below 2^16"),
            None => match self.alloc_slot() {
                Some(s) => s,
                None => {
                    // No slot: try again at the next retry.
                    let p = &mut self.peers[peer as usize];
                    p.retry_at_ns = now_ns.saturating_add(p.retry_ns);
                    let at = p.retry_at_ns;
                    self.soon(at);
                    return;
                }
            },
        };
        let index = self.index_of(slot);
        let ts = self.wall_ns(now_ns).max(self.last_ts + 1);
        self.last_ts = ts;
        let key = self.peers[peer as usize].key;
        let mut m1 = [0u8; INIT_LEN];
        match self.hs.initiate(&key, index, ts, &mut m1) {
            Ok(init) => {
                self.slots[usize::from(slot)] = Slot::Pending(Pending {
                    local_index: index,
                    peer,
                    init,
                });
                let p = &mut self.peers[peer as usize];
                p.pending = Some(index);
                p.attempts = p.attempts.saturating_add(1);
                emit(peer, p.addr, &m1);
                self.counters.initiations.add(1);
                p.counters.initiations.add(1);
            }
            Err(_) => {
                // A key that yields no shared secret (a low-order point): nothing will ever
                // answer. Give the round up at once.
                self.slots[usize::from(slot)] = Slot::Free;
                self.free.push(slot);
                self.peers[peer as usize].pending = None;
                self.give_up(now_ns, peer);
                return;
            }
        }
        let p = &mut self.peers[peer as usize];
        p.retry_at_ns = now_ns.saturating_add(p.retry_ns);
        p.retry_ns = p
            .retry_ns
            .saturating_mul(2)
            .min(self.cfg.handshake_retry_max_ns);
        let at = p.retry_at_ns;
        self.soon(at);
    }

    fn give_up(&mut self, now_ns: u64, peer: PeerId) {
        let usable = self.can_send(peer);
        if let Some(suppressed) = self.session_log.check(now_ns) {
            let p = &self.peers[peer as usize];
            tracing::warn!(
                shard = self.shard,
                node = %format_args!("{:016x}", p.node.unwrap_or(0)),
                addr = %p.addr,
                attempts = p.attempts,
                suppressed,
                "mesh handshake gave up"
            );
        }
        let p = &mut self.peers[peer as usize];
        p.retry_at_ns = u64::MAX;
        p.rekey_wanted = false;
        self.counters.handshake_timeouts.add(1);
        p.counters.handshake_timeouts.add(1);
        // A rekey that gave up leaves the current session working: nothing queued for the
        // peer is lost for it.
        if !usable && self.failed.len() < self.failed.capacity() {
            self.failed.push(peer);
        }
    }

    /// Counts a datagram for `peer` that the driver actually sent (sealing or emitting one
    /// counts nothing: a send that fails must not inflate the counters).
    pub fn count_sent(&self, peer: PeerId, bytes: usize) {
        let b = bytes as u64;
        self.counters.packets_out.add(1);
        self.counters.bytes_out.add(b);
        let c = &self.peers[peer as usize].counters;
        c.packets_out.add(1);
        c.bytes_out.add(b);
    }

    /// Counts a datagram from `src` dropped for `cause`, and logs it through the cause's rate
    /// limit.
    fn drop_packet(
        &self,
        now_ns: u64,
        src: SocketAddr,
        peer: Option<PeerId>,
        cause: DropCause,
    ) -> Received {
        self.counters.count_drop(cause);
        if let Some(p) = peer {
            self.peers[p as usize].counters.count_drop(cause);
        }
        if let Some(suppressed) = self.drop_log[cause as usize].check(now_ns) {
            log_drop(self.shard, src, cause, suppressed);
        }
        Received::Dropped(cause)
    }

    /// Counts (and logs, rate-limited) a datagram the driver received truncated (larger than
    /// its buffer).
    pub fn drop_truncated(&self, now_ns: u64, src: SocketAddr) -> Received {
        self.counters.packets_in.add(1);
        self.drop_packet(now_ns, src, None, DropCause::Malformed)
    }

    /// Seals `payload` for `peer` into `out` (at least `payload.len() + DATA_OVERHEAD`
    /// bytes): returns the datagram's length and where to send it.
    pub fn seal(
        &mut self,
        now_ns: u64,
        peer: PeerId,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), SealError> {
        let n = payload.len();
        if n > self.cfg.message_bytes_max {
            return Err(SealError::TooLarge);
        }
        assert!(out.len() >= n + DATA_OVERHEAD, "seal buffer too small");
        out[DATA_HEADER_LEN..DATA_HEADER_LEN + n].copy_from_slice(payload);
        self.seal_in_place(now_ns, peer, out, n)
    }

    /// Seals the `plain_len` bytes of plaintext that the caller already wrote at
    /// `out[DATA_HEADER_LEN..]` (`out` holds at least `plain_len + DATA_OVERHEAD` bytes), in
    /// place: the only copy of a payload is the one that put it there. Returns the datagram's
    /// length and where to send it.
    pub fn seal_in_place(
        &mut self,
        now_ns: u64,
        peer: PeerId,
        out: &mut [u8],
        plain_len: usize,
    ) -> Result<(usize, SocketAddr), SealError> {
        if plain_len > self.cfg.message_bytes_max {
            return Err(SealError::TooLarge);
        }
        let len = self.seal_raw(now_ns, peer, plain_len, out)?;
        let c = &self.peers[peer as usize].counters;
        self.counters.messages_out.add(1);
        c.messages_out.add(1);
        Ok((len, self.peers[peer as usize].addr))
    }

    /// The peer's static public key.
    pub fn peer_key(&self, peer: PeerId) -> [u8; KEY_LEN] {
        self.peers[peer as usize].key
    }

    fn seal_raw(
        &mut self,
        now_ns: u64,
        peer: PeerId,
        n: usize,
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let (reject_ns, reject_msgs) =
            (self.cfg.reject_after_ns(), self.cfg.reject_after_messages());
        let (rekey_ns, rekey_msgs) = (self.cfg.rekey_after_ns, self.cfg.rekey_after_messages);
        let current = self.peers[peer as usize].current;
        let slot = current
            .and_then(|i| self.slot_of(i))
            .ok_or(SealError::NoSession)?;
        let Slot::Live(s) = &mut self.slots[slot] else {
            return Err(SealError::NoSession);
        };
        let age = now_ns.saturating_sub(s.created_ns);
        if age >= reject_ns || s.send_counter >= reject_msgs {
            self.peers[peer as usize].rekey_wanted = true;
            self.deadline_ns = now_ns;
            return Err(SealError::NoSession);
        }
        let total = n + DATA_OVERHEAD;
        assert!(out.len() >= total, "seal buffer too small");
        let counter = s.send_counter;
        s.send_counter += 1;
        s.last_send_ns = now_ns;
        write_data_header(out, s.remote_index, counter);
        let mut aad = [0u8; DATA_HEADER_LEN];
        aad.copy_from_slice(&out[..DATA_HEADER_LEN]);
        let tag = s
            .send_key
            .seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(aad),
                &mut out[DATA_HEADER_LEN..DATA_HEADER_LEN + n],
            )
            .expect("ChaCha20-Poly1305 seals any length we send");
        out[DATA_HEADER_LEN + n..total].copy_from_slice(tag.as_ref());
        if age >= rekey_ns || counter >= rekey_msgs {
            self.peers[peer as usize].rekey_wanted = true;
            self.deadline_ns = now_ns;
        }
        Ok(total)
    }

    /// Handles one received datagram (decrypting a data packet in place in `buf`); handshake
    /// replies go out through `emit`.
    pub fn receive(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        buf: &mut [u8],
        emit: &mut Emit<'_>,
    ) -> Received {
        self.counters.packets_in.add(1);
        self.counters.bytes_in.add(buf.len() as u64);
        match decode(buf) {
            Err(_) => self.drop_packet(now_ns, src, None, DropCause::Malformed),
            Ok(Packet::Data { receiver, counter }) => {
                self.receive_data(now_ns, src, receiver, counter, buf)
            }
            Ok(Packet::Init { sender, .. }) => {
                let mut m1 = [0u8; INIT_LEN];
                m1.copy_from_slice(buf);
                self.receive_init(now_ns, src, sender, &m1, emit)
            }
            Ok(Packet::Response { receiver, .. }) => {
                let mut m2 = [0u8; RESPONSE_LEN];
                m2.copy_from_slice(buf);
                self.receive_response(now_ns, src, receiver, &m2, emit)
            }
        }
    }

    fn receive_data(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        receiver: u32,
        counter: u64,
        buf: &mut [u8],
    ) -> Received {
        let reject_ns = self.cfg.reject_after_ns();
        let Some(slot) = self.slot_of(receiver) else {
            return self.drop_packet(now_ns, src, None, DropCause::UnknownReceiver);
        };
        let Slot::Live(s) = &mut self.slots[slot] else {
            return self.drop_packet(now_ns, src, None, DropCause::UnknownReceiver);
        };
        let peer = s.peer;
        if let Err(r) = s.replay.check(counter) {
            let cause = match r {
                Refused::Replay => DropCause::Replay,
                Refused::TooOld => DropCause::TooOld,
                Refused::Invalid => DropCause::Malformed,
            };
            return self.drop_packet(now_ns, src, Some(peer), cause);
        }
        if now_ns.saturating_sub(s.created_ns) >= reject_ns {
            return self.drop_packet(now_ns, src, Some(peer), DropCause::Expired);
        }
        let mut aad = [0u8; DATA_HEADER_LEN];
        aad.copy_from_slice(&buf[..DATA_HEADER_LEN]);
        let len = buf.len();
        if s.recv_key
            .open_in_place(nonce(counter), Aad::from(aad), &mut buf[DATA_HEADER_LEN..])
            .is_err()
        {
            return self.drop_packet(now_ns, src, Some(peer), DropCause::Auth);
        }
        s.replay
            .commit(counter)
            .expect("checked above; nothing else touched the window");
        s.last_recv_ns = now_ns;
        let index = s.local_index;
        let p = &mut self.peers[peer as usize];
        p.counters.packets_in.add(1);
        p.counters.bytes_in.add(len as u64);
        if p.next == Some(index) {
            // The initiator sent on the new session: it holds the keys. Promote it.
            let old_previous = p.previous.take();
            p.previous = p.current.replace(index);
            p.next = None;
            let rekey = p.previous.is_some();
            if let Some(i) = old_previous {
                self.free_index(i);
            }
            self.handshake_done(now_ns, peer, rekey);
            // A node that only receives must still send keepalives on its new session.
            let at = now_ns.saturating_add(self.cfg.heartbeat_ns);
            self.soon(at);
        }
        let p = &mut self.peers[peer as usize];
        if p.current == Some(index) && p.addr != src && routable(&src) {
            p.addr = src; // the peer moved (roaming); authenticated, so follow it
        }
        let plain = len - DATA_MIN_LEN;
        if plain == 0 {
            return Received::Control;
        }
        self.counters.messages_in.add(1);
        p.counters.messages_in.add(1);
        Received::Message {
            peer,
            node: p.node.unwrap_or(0),
            range: DATA_HEADER_LEN..DATA_HEADER_LEN + plain,
        }
    }

    fn handshake_done(&mut self, now_ns: u64, peer: PeerId, rekey: bool) {
        let p = &mut self.peers[peer as usize];
        self.counters.handshakes.add(1);
        p.counters.handshakes.add(1);
        if rekey {
            self.counters.rekeys.add(1);
            p.counters.rekeys.add(1);
        }
        if let Some(suppressed) = self.session_log.check(now_ns) {
            let (node, addr) = (format_args!("{:016x}", p.node.unwrap_or(0)), p.addr);
            if rekey {
                tracing::debug!(shard = self.shard, node = %node, addr = %addr, suppressed, "mesh session rekeyed");
            } else {
                tracing::info!(shard = self.shard, node = %node, addr = %addr, suppressed, "mesh session established");
            }
        }
    }

    fn receive_init(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        sender: u32,
        m1: &[u8; INIT_LEN],
        emit: &mut Emit<'_>,
    ) -> Received {
        if !self.pacer.allow(src.ip(), now_ns) {
            return self.drop_packet(now_ns, src, None, DropCause::Paced);
        }
        let (payload, hs) = match self.hs.accept(&m1[crate::codec::HEADER_LEN..], sender) {
            Ok(x) => x,
            Err(crate::handshake::HandshakeError::Payload) => {
                return self.drop_packet(now_ns, src, None, DropCause::Malformed);
            }
            Err(_) => return self.drop_packet(now_ns, src, None, DropCause::Auth),
        };
        let node = payload.node_id;
        if node == self.identity().node_id() || node == 0 {
            return self.drop_packet(now_ns, src, None, DropCause::Malformed);
        }
        // Which peer is this? By node id first (its key must match), then by key.
        let peer = match self.by_node.get(&node).copied() {
            Some(p) => {
                if self.peers[p as usize].key != payload.static_key {
                    if !self.cfg.allow_key_rotation.contains(&node) {
                        return self.drop_packet(now_ns, src, Some(p), DropCause::KeyMismatch);
                    }
                    if self.by_key.contains_key(&payload.static_key) {
                        // The new key already names another peer: refuse to merge them.
                        return self.drop_packet(now_ns, src, Some(p), DropCause::KeyMismatch);
                    }
                    let old = self.peers[p as usize].key;
                    self.by_key.remove(&old);
                    self.by_key.insert(payload.static_key, p);
                    self.peers[p as usize].key = payload.static_key;
                }
                p
            }
            None => match self.by_key.get(&payload.static_key).copied() {
                Some(p) if self.peers[p as usize].node.is_none() => {
                    self.peers[p as usize].node = Some(node);
                    self.by_node.insert(node, p);
                    p
                }
                // The key is bound to another node id.
                Some(p) => return self.drop_packet(now_ns, src, Some(p), DropCause::KeyMismatch),
                None => match self.add_peer(Some(node), payload.static_key, src) {
                    Some(p) => p,
                    None => return self.drop_packet(now_ns, src, None, DropCause::PeerCap),
                },
            },
        };
        let p = &self.peers[peer as usize];
        if payload.timestamp <= p.last_init_ts {
            // A replayed or older message 1: it never touches the live session.
            return self.drop_packet(now_ns, src, Some(peer), DropCause::TooOld);
        }
        // Crossing initiations: the lower node id's wins, unless ours has gone unanswered
        // through several attempts (the other side may be refusing it, e.g. our clock is
        // behind the timestamps it saw before we restarted): then we yield, so the two can
        // never livelock.
        let lose_to_ours = p.pending.is_some()
            && self.identity().node_id() < node
            && p.attempts < YIELD_AFTER_ATTEMPTS;
        let p = &mut self.peers[peer as usize];
        p.last_init_ts = payload.timestamp;
        if lose_to_ours {
            return self.drop_packet(now_ns, src, Some(peer), DropCause::Conflict);
        }
        // Our own initiation (if any) yields to theirs.
        if let Some(i) = p.pending.take() {
            p.retry_at_ns = u64::MAX;
            self.free_index(i);
        }
        let p = &mut self.peers[peer as usize];
        if let Some(i) = p.next.take() {
            self.free_index(i);
        }
        let Some(slot) = self.alloc_slot() else {
            return self.drop_packet(now_ns, src, Some(peer), DropCause::PeerCap);
        };
        let local_index = self.index_of(slot);
        let mut m2 = [0u8; RESPONSE_LEN];
        let keys = match self.hs.respond(hs, payload.sender, local_index, &mut m2) {
            Ok(k) => k,
            Err(_) => {
                self.slots[usize::from(slot)] = Slot::Free;
                self.free.push(slot);
                return self.drop_packet(now_ns, src, Some(peer), DropCause::Auth);
            }
        };
        self.slots[usize::from(slot)] = Slot::Live(new_session(
            local_index,
            payload.sender,
            peer,
            &keys,
            now_ns,
        ));
        let p = &mut self.peers[peer as usize];
        p.next = Some(local_index);
        p.addr = src;
        emit(peer, src, &m2);
        self.soon(now_ns.saturating_add(self.cfg.heartbeat_ns));
        Received::Control
    }

    fn receive_response(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        receiver: u32,
        m2: &[u8; RESPONSE_LEN],
        emit: &mut Emit<'_>,
    ) -> Received {
        let Some(slot) = self.slot_of(receiver) else {
            return self.drop_packet(now_ns, src, None, DropCause::UnknownReceiver);
        };
        let pending = match &mut self.slots[slot] {
            Slot::Pending(p) => p,
            Slot::Live(s) => {
                let peer = s.peer;
                return self.drop_packet(now_ns, src, Some(peer), DropCause::Replay);
            }
            Slot::Free => return self.drop_packet(now_ns, src, None, DropCause::UnknownReceiver),
        };
        let peer = pending.peer;
        let (payload, keys) = match pending.init.complete(&m2[crate::codec::HEADER_LEN..]) {
            Ok(x) => x,
            Err(_) => return self.drop_packet(now_ns, src, Some(peer), DropCause::Auth),
        };
        let local_index = pending.local_index;
        let node = payload.node_id;
        // The responder proved the key we dialled; check the node id it claims.
        match (
            self.peers[peer as usize].node,
            self.by_node.get(&node).copied(),
        ) {
            (Some(n), _) if n != node => {
                return self.drop_packet(now_ns, src, Some(peer), DropCause::KeyMismatch);
            }
            (None, Some(other)) if other != peer => {
                if !self.cfg.allow_key_rotation.contains(&node) {
                    return self.drop_packet(now_ns, src, Some(peer), DropCause::KeyMismatch);
                }
                self.peers[other as usize].node = None;
                self.by_node.insert(node, peer);
                self.peers[peer as usize].node = Some(node);
            }
            (None, _) => {
                self.by_node.insert(node, peer);
                self.peers[peer as usize].node = Some(node);
            }
            _ => {}
        }
        if node == 0 || node == self.identity().node_id() {
            return self.drop_packet(now_ns, src, Some(peer), DropCause::Malformed);
        }
        self.slots[slot] = Slot::Live(new_session(
            local_index,
            payload.sender,
            peer,
            &keys,
            now_ns,
        ));
        let p = &mut self.peers[peer as usize];
        p.pending = None;
        p.retry_at_ns = u64::MAX;
        p.rekey_wanted = false;
        p.addr = src;
        let old_previous = p.previous.take();
        p.previous = p.current.replace(local_index);
        let rekey = p.previous.is_some();
        if let Some(i) = old_previous {
            self.free_index(i);
        }
        self.handshake_done(now_ns, peer, rekey);
        // Confirm at once: the responder promotes the session on our first data packet.
        self.keepalive(now_ns, peer, emit);
        self.soon(now_ns.saturating_add(self.cfg.heartbeat_ns));
        Received::Control
    }

    fn keepalive(&mut self, now_ns: u64, peer: PeerId, emit: &mut Emit<'_>) {
        let mut out = [0u8; DATA_MIN_LEN];
        if let Ok(n) = self.seal_raw(now_ns, peer, 0, &mut out) {
            debug_assert_eq!(n, DATA_HEADER_LEN + TAG_LEN);
            emit(peer, self.peers[peer as usize].addr, &out);
        }
    }

    /// Runs the timers: expires sessions, sends keepalives, starts rekeys, retries and gives
    /// up handshakes. Call when `deadline_ns` has passed (calling earlier is harmless).
    pub fn tick(&mut self, now_ns: u64, emit: &mut Emit<'_>) {
        let mut next = u64::MAX;
        for peer in 0..self.peers.len() {
            let peer = PeerId::try_from(peer).expect("peer ids fit u32");
            next = next.min(self.tick_peer(now_ns, peer, emit));
        }
        self.deadline_ns = next;
    }

    /// One peer's timers; returns its next deadline.
    fn tick_peer(&mut self, now_ns: u64, peer: PeerId, emit: &mut Emit<'_>) -> u64 {
        let cfg = &self.cfg;
        let (timeout, reject, heartbeat) = (
            cfg.session_timeout_ns,
            cfg.reject_after_ns(),
            cfg.heartbeat_ns,
        );
        let mut next = u64::MAX;
        // Expire sessions.
        for which in 0..3 {
            let p = &self.peers[peer as usize];
            let index = [p.current, p.previous, p.next][which];
            let Some(s) = self.session(index) else {
                continue;
            };
            let idle_until = s.last_recv_ns.saturating_add(timeout);
            let dead_at = s.created_ns.saturating_add(reject);
            if now_ns >= idle_until || now_ns >= dead_at {
                let index = index.expect("a live session has an index");
                if which == 0 && now_ns >= idle_until {
                    self.counters.session_timeouts.add(1);
                    self.peers[peer as usize].counters.session_timeouts.add(1);
                    if let Some(suppressed) = self.session_log.check(now_ns) {
                        let p = &self.peers[peer as usize];
                        tracing::info!(
                            shard = self.shard,
                            node = %format_args!("{:016x}", p.node.unwrap_or(0)),
                            addr = %p.addr,
                            suppressed,
                            "mesh session closed: nothing arrived for session_timeout"
                        );
                    }
                }
                self.free_index(index);
                let p = &mut self.peers[peer as usize];
                match which {
                    0 => p.current = None,
                    1 => p.previous = None,
                    _ => p.next = None,
                }
            } else {
                next = next.min(idle_until).min(dead_at);
            }
        }
        // Heartbeat and rekey on the current session.
        if let Some(s) = self.session(self.peers[peer as usize].current) {
            let (created, last_send) = (s.created_ns, s.last_send_ns);
            if now_ns >= last_send.saturating_add(heartbeat) {
                self.keepalive(now_ns, peer, emit);
                next = next.min(now_ns.saturating_add(heartbeat));
            } else {
                next = next.min(last_send.saturating_add(heartbeat));
            }
            let rekey_at = created.saturating_add(self.cfg.rekey_after_ns);
            if now_ns >= rekey_at {
                self.peers[peer as usize].rekey_wanted = true;
            } else {
                next = next.min(rekey_at);
            }
        }
        let p = &self.peers[peer as usize];
        if p.pending.is_some() {
            if now_ns >= p.retry_at_ns {
                if now_ns.saturating_sub(p.round_started_ns) >= self.cfg.handshake_timeout_ns {
                    let i = self.peers[peer as usize].pending.take().expect("pending");
                    self.free_index(i);
                    self.give_up(now_ns, peer);
                } else {
                    self.send_initiation(now_ns, peer, emit);
                }
            }
        } else if p.rekey_wanted {
            let next = p.next;
            self.peers[peer as usize].rekey_wanted = false;
            // A new session from the other side awaiting confirmation is the rekey already.
            if self.session(next).is_none() {
                self.start_round(now_ns, peer, emit);
            }
        }
        let p = &self.peers[peer as usize];
        if p.pending.is_some() {
            next = next.min(p.retry_at_ns);
        }
        next
    }
}

/// The log event of a dropped datagram (already let through by the cause's rate limit):
/// `warn` for what points at an attack or a misconfiguration, `debug` for what also happens in
/// normal operation (late, duplicated or crossing packets, a peer that restarted).
#[cold]
#[inline(never)]
fn log_drop(shard: u8, src: SocketAddr, cause: DropCause, suppressed: u64) {
    macro_rules! dropped {
        ($level:expr) => {
            tracing::event!($level, shard, cause = cause.name(), src = %src, suppressed, "mesh datagram dropped")
        };
    }
    match cause {
        DropCause::Malformed
        | DropCause::Auth
        | DropCause::Paced
        | DropCause::KeyMismatch
        | DropCause::PeerCap => dropped!(tracing::Level::WARN),
        DropCause::Replay
        | DropCause::TooOld
        | DropCause::UnknownReceiver
        | DropCause::Conflict
        | DropCause::Expired => dropped!(tracing::Level::DEBUG),
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut v = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut v)
        .expect("the system's random source");
    v
}

fn new_session(
    local_index: u32,
    remote_index: u32,
    peer: PeerId,
    keys: &Keys,
    now_ns: u64,
) -> Session {
    Session {
        local_index,
        remote_index,
        peer,
        send_key: key(&keys.send),
        recv_key: key(&keys.recv),
        send_counter: 0,
        replay: ReplayWindow::new(),
        created_ns: now_ns,
        last_recv_ns: now_ns,
        last_send_ns: now_ns,
    }
}
