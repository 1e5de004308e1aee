//! Subscriptions on a shard: the publications this shard serves (its log to subscribers on
//! other nodes) and the subscriptions it holds (another node's shard mirrored into this
//! shard's log). The protocol is `net_transport::stream`; this is its state on one shard,
//! without I/O: the mesh component feeds it frames and batches, and sends what it queues.
//!
//! Placement: origin shard `k` of a publisher is subscribed from local shard `k`, whose
//! session lands on the publisher's shard `k` (the reuseport program steers by the index's
//! shard byte), so each side of a stream is owned by exactly one thread and the mirror of
//! origin shard `k` is appended to local shard `k`'s log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use net_storage::{LogView, Origin};
use net_transport::endpoint::PeerId;
use net_transport::identity::NodeId;
use net_transport::ratelimit::RateLimit;
use net_transport::stream::{
    self, Ack, Delivery, Frame, RecvLimits, RecvStream, SendStream, Status, StreamRef, StreamTimers,
};
use net_transport::token::{Actions, Roster, Verifier};

use crate::lane::OriginLaneWriter;

/// Bytes of the largest frame the shard queues as a reply (an `ACK` with every hole, a
/// `SUBSCRIBE` with its token, a `SUBSCRIBED` with its reason).
pub(crate) const REPLY_BYTES: usize = 512;
/// Replies queued at most per shard; past it they are dropped and counted (every one is
/// repeated: acknowledgements periodically, subscriptions until answered).
const REPLIES_MAX: usize = 1024;
/// Record bytes one read of new data asks for at most (the reader's answer ring holds 4 MiB;
/// it waits for the shard to drain it).
const NEW_READ_BYTES_MAX: u64 = 8 << 20;
/// A subscription not yet answered is asked again this often.
const SUBSCRIBE_RETRY_NS: u64 = 200_000_000;

/// What a publication or subscription shows in the stats (single writer: the shard).
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    pub(crate) node: AtomicU64,
    pub(crate) stream: AtomicU64,
    pub(crate) origin_shard: AtomicU64,
    /// Publisher: the first sequence number never sent. Subscriber: the next to deliver.
    pub(crate) next: AtomicU64,
    /// Publisher: the subscriber's received prefix.
    pub(crate) acked: AtomicU64,
    /// Record bytes consumed (subscriber) or acknowledged consumed (publisher), and the
    /// window: the grant is their sum, so it is never seen below what was consumed.
    pub(crate) consumed: AtomicU64,
    pub(crate) window: AtomicU64,
    pub(crate) sent_bytes: AtomicU64,
    pub(crate) skipped_events: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) no_room: AtomicU64,
    pub(crate) resent_ranges: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) subscribes: AtomicU64,
    /// Publisher: times it fell behind the batches and caught up from the log.
    pub(crate) catchups: AtomicU64,
    pub(crate) live: AtomicBool,
    pub(crate) active: AtomicBool,
    pub(crate) ended: AtomicBool,
    pub(crate) error: Mutex<Option<String>>,
}

impl StreamCounters {
    fn set(&self, c: &AtomicU64, v: u64) {
        let _ = self;
        c.store(v, Ordering::Relaxed);
    }

    pub(crate) fn fail(&self, what: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
        self.active.store(false, Ordering::Relaxed);
    }
}

/// The registry the bus reads stats from (appended to on the control path only).
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    pub(crate) publications: Mutex<Vec<Arc<StreamCounters>>>,
    pub(crate) subscriptions: Mutex<Vec<Arc<StreamCounters>>>,
}

/// Admission shared by the node's shards (locked only when a subscription starts or ends).
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) verifier: Mutex<Verifier>,
    pub(crate) roster: Mutex<Roster>,
}

/// One publication: this shard's log to one subscriber.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) peer: PeerId,
    pub(crate) node: NodeId,
    pub(crate) tx: SendStream,
    /// Fed from batches as they complete (it was at the log's end and had credit).
    pub(crate) live: bool,
    /// A read of the log is outstanding for it, up to this sequence number.
    pub(crate) reading: bool,
    pub(crate) reading_from: u64,
    pub(crate) reading_to: u64,
    /// The grant at which a read of new data sent nothing (the next record needs more
    /// credit): no new read until the grant moves.
    pub(crate) stuck_at_grant: Option<u64>,
    /// The grant when the outstanding read was asked for.
    pub(crate) reading_grant: u64,
    /// When the subscriber last acknowledged (or subscribed).
    pub(crate) heard_ns: u64,
    pub(crate) token: net_transport::token::Token,
    pub(crate) counters: Arc<StreamCounters>,
}

/// One subscription held by this shard.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) peer: PeerId,
    pub(crate) origin: NodeId,
    pub(crate) origin_shard: u16,
    pub(crate) token: Vec<u8>,
    pub(crate) limits: RecvLimits,
    pub(crate) rx: RecvStream,
    pub(crate) state: SubState,
    pub(crate) last_subscribe_ns: u64,
    pub(crate) counters: Arc<StreamCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubState {
    Subscribing,
    Active,
    Failed,
}

/// A reply waiting for a packet buffer.
pub(crate) struct Reply {
    pub(crate) peer: PeerId,
    pub(crate) len: usize,
    pub(crate) bytes: [u8; REPLY_BYTES],
}

/// What is asked of the log reader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WantRead {
    pub(crate) key: u32,
    pub(crate) stream: StreamRef,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) max_bytes: u64,
    pub(crate) oversize_ok: bool,
    pub(crate) purpose: u8,
}

/// The shard's stream state.
pub(crate) struct Streams {
    pub(crate) shard: u16,
    pub(crate) shards: u16,
    pub(crate) view: LogView,
    pub(crate) timers: StreamTimers,
    pub(crate) admission: Arc<Admission>,
    pub(crate) registry: Arc<StreamRegistry>,
    /// Publications by key (slab; `None` is free).
    pub(crate) pubs: Vec<Option<Publication>>,
    /// A subscriber node has one publication per shard: keyed by its node.
    pub(crate) pub_by_node: HashMap<NodeId, u32>,
    /// Subscriptions by key (the stream id is the key).
    pub(crate) subs: Vec<Option<Subscription>>,
    pub(crate) replies: Vec<Reply>,
    pub(crate) replies_dropped: Arc<AtomicU64>,
    /// Frames that failed to decode or named no stream of ours.
    pub(crate) bad_frames: Arc<AtomicU64>,
    /// The mirror: where subscribed records are appended (this shard's own lane).
    pub(crate) mirror: Option<OriginLaneWriter>,
    /// Describe requests waiting for an answer: nonce → reply.
    pub(crate) describes: Vec<(u32, std::sync::mpsc::SyncSender<Result<u16, String>>)>,
    pub(crate) generation_seed: u32,
    /// Log limits for what a peer can provoke per frame: bad frames, refused subscriptions
    /// (per status), and the other stream events.
    pub(crate) logs: StreamLogs,
}

/// The log rate limits of a shard's streams.
#[derive(Debug)]
pub(crate) struct StreamLogs {
    bad_frame: RateLimit,
    refused: [RateLimit; 4],
    event: RateLimit,
}

impl Default for StreamLogs {
    fn default() -> StreamLogs {
        StreamLogs {
            bad_frame: RateLimit::per_second(1),
            refused: std::array::from_fn(|_| RateLimit::per_second(1)),
            event: RateLimit::per_second(10),
        }
    }
}

/// A node id as operators see it (hex, as in every error message).
pub(crate) struct Hex(pub(crate) NodeId);

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

fn hex(node: NodeId) -> Hex {
    Hex(node)
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("shard", &self.shard)
            .field("publications", &self.pub_by_node.len())
            .finish_non_exhaustive()
    }
}

fn unix_now_s() -> u64 {
    crate::clock::realtime_ns() / 1_000_000_000
}

impl Streams {
    /// A fresh generation for a subscription (distinct from every earlier one of this
    /// process, and, through the clock, very likely from those of earlier processes).
    pub(crate) fn next_generation(&mut self) -> u32 {
        self.generation_seed = self
            .generation_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let t = crate::clock::realtime_ns();
        #[allow(clippy::cast_possible_truncation)] // mixing bits
        let g = self.generation_seed ^ (t as u32) ^ ((t >> 32) as u32);
        g.max(1)
    }

    pub(crate) fn queue_reply(&mut self, peer: PeerId, write: impl FnOnce(&mut [u8]) -> usize) {
        if self.replies.len() >= REPLIES_MAX {
            self.replies_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut bytes = [0u8; REPLY_BYTES];
        let len = write(&mut bytes);
        self.replies.push(Reply { peer, len, bytes });
    }

    /// Counts a frame from `node` that failed to decode or named no stream of ours, and logs
    /// it (rate-limited).
    pub(crate) fn bad_frame(&self, now_ns: u64, node: NodeId, why: &'static str) {
        self.bad_frames.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.logs.bad_frame.check(now_ns) {
            tracing::warn!(
                shard = self.shard,
                node = %hex(node),
                why,
                suppressed,
                "bad mesh stream frame"
            );
        }
    }

    /// Whether a stream event a peer provoked may be logged now: `Some(suppressed)`.
    fn log_event(&self, now_ns: u64) -> Option<u64> {
        self.logs.event.check(now_ns)
    }

    /// Handles one stream frame from `peer` (node `node`, static key `key`).
    pub(crate) fn on_frame(
        &mut self,
        now_ns: u64,
        peer: PeerId,
        node: NodeId,
        key: &[u8; 32],
        bytes: &[u8],
    ) {
        let frame = match stream::decode(bytes) {
            Ok(f) => f,
            Err(_) => return self.bad_frame(now_ns, node, "undecodable"),
        };
        match frame {
            Frame::Subscribe {
                stream: s,
                shard,
                from,
                window,
                token,
            } => self.on_subscribe(now_ns, peer, node, key, s, shard, from, window, token),
            Frame::Ack(a) => self.on_ack(now_ns, peer, node, &a),
            Frame::Unsubscribe { stream: s } => self.end_publication(now_ns, node, s, None),
            Frame::Describe { nonce } => {
                let shards = self.shards;
                self.queue_reply(peer, |b| stream::write_description(b, nonce, shards));
            }
            Frame::Description { nonce, shards } => {
                if let Some(i) = self.describes.iter().position(|d| d.0 == nonce) {
                    let (_, reply) = self.describes.swap_remove(i);
                    let _ = reply.send(Ok(shards));
                }
            }
            Frame::Subscribed {
                stream: s,
                status,
                first_seq,
                end_seq,
                reason,
            } => self.on_subscribed(now_ns, node, s, status, first_seq, end_seq, reason),
            Frame::Data { stream: s, .. }
            | Frame::Fragment { stream: s, .. }
            | Frame::Skip { stream: s, .. } => self.on_data(now_ns, node, s, &frame, bytes),
        }
    }

    // ---- publisher side ----

    #[allow(clippy::too_many_arguments)]
    fn on_subscribe(
        &mut self,
        now_ns: u64,
        peer: PeerId,
        node: NodeId,
        key: &[u8; 32],
        s: StreamRef,
        shard: u16,
        from: u64,
        window: u64,
        token: &[u8],
    ) {
        let end = self.view.visible_end();
        let refuse = |me: &mut Streams, status: Status, why: String| {
            let i = match status {
                Status::Unauthorized => 0,
                Status::Full => 1,
                Status::NoShard => 2,
                _ => 3,
            };
            if let Some(suppressed) = me.logs.refused[i].check(now_ns) {
                tracing::warn!(
                    shard = me.shard,
                    node = %hex(node),
                    status = ?status,
                    reason = %why,
                    suppressed,
                    "mesh subscription refused"
                );
            }
            me.answer(peer, s, status, &why);
        };
        if shard != self.shard {
            let why = format!(
                "shard {shard} is subscribed over a session with shard {shard}; this is shard {}",
                self.shard
            );
            return refuse(self, Status::NoShard, why);
        }
        let parsed = {
            let v = self
                .admission
                .verifier
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            v.verify(token, node, key, Actions::SUBSCRIBE, shard, unix_now_s())
                .and_then(|()| net_transport::token::Token::parse(token))
        };
        let token = match parsed {
            Ok(t) => t,
            Err(e) => return refuse(self, Status::Unauthorized, e.to_string()),
        };
        if from > end {
            let why = format!(
                "you ask for sequence number {from} but this shard's log ends at {end}: it \
                 was reset or is another node's log; subscribe again from an explicit position"
            );
            return refuse(self, Status::Ahead, why);
        }
        let restarted = if let Some(&k) = self.pub_by_node.get(&node) {
            // Admission holds it already (`Already` at any cap: idempotent).
            let p = self.pubs[k as usize].as_mut().expect("indexed");
            if p.tx.stream() == s {
                // The answer was lost: answer again, change nothing.
                self.answer(peer, s, Status::Accepted, "");
                return;
            }
            // The subscriber started over (a new generation, or it restarted): the stream
            // starts over from where it asks.
            p.tx = SendStream::new(s, from, window, now_ns, self.timers);
            p.peer = peer;
            p.live = from == end;
            p.reading = false;
            p.stuck_at_grant = None;
            p.heard_ns = now_ns;
            p.token = token;
            p.counters.set(&p.counters.stream, u64::from(s.id));
            p.counters.subscribes.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            let admitted = self
                .admission
                .roster
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .admit(node, shard);
            if let Err(e) = admitted {
                return refuse(self, Status::Full, e.to_string());
            }
            let counters = Arc::new(StreamCounters::default());
            counters.set(&counters.node, node);
            counters.set(&counters.stream, u64::from(s.id));
            counters.set(&counters.origin_shard, u64::from(self.shard));
            counters.subscribes.store(1, Ordering::Relaxed);
            counters.active.store(true, Ordering::Relaxed);
            self.registry
                .publications
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(counters.clone());
            let p = Publication {
                peer,
                node,
                tx: SendStream::new(s, from, window, now_ns, self.timers),
                live: from == end,
                reading: false,
                reading_from: 0,
                reading_to: 0,
                stuck_at_grant: None,
                reading_grant: 0,
                heard_ns: now_ns,
                token,
                counters,
            };
            let k = match self.pubs.iter().position(Option::is_none) {
                Some(k) => {
                    self.pubs[k] = Some(p);
                    k
                }
                None => {
                    self.pubs.push(Some(p));
                    self.pubs.len() - 1
                }
            };
            self.pub_by_node
                .insert(node, u32::try_from(k).expect("publications fit u32"));
            false
        };
        if let Some(suppressed) = self.log_event(now_ns) {
            tracing::info!(
                shard = self.shard,
                node = %hex(node),
                stream = s.id,
                from,
                restarted,
                suppressed,
                "mesh publication started"
            );
        }
        self.answer(peer, s, Status::Accepted, "");
    }

    /// Queues a `SUBSCRIBED` answer, with the log's extent now.
    fn answer(&mut self, peer: PeerId, st: StreamRef, status: Status, reason: &str) {
        let (first, end) = (self.view.first_seq(), self.view.visible_end());
        self.queue_reply(peer, |b| {
            stream::write_subscribed(b, st, status, first, end, reason)
        });
    }

    fn on_ack(&mut self, now_ns: u64, peer: PeerId, node: NodeId, a: &Ack) {
        let p = self
            .pub_by_node
            .get(&node)
            .and_then(|&k| self.pubs[k as usize].as_mut());
        match p {
            Some(p) if p.tx.stream() == a.stream => {
                p.heard_ns = now_ns;
                p.tx.on_ack(now_ns, a);
                let c = &p.counters;
                c.set(&c.acked, p.tx.acked());
                c.set(&c.consumed, a.consumed.min(p.tx.sent_bytes()));
                c.set(&c.window, a.window);
            }
            _ => {
                // Not a subscription of ours (we restarted, or it ended): say so, and the
                // subscriber subscribes again from where it is.
                self.answer(peer, a.stream, Status::Unknown, "no such subscription here");
            }
        }
    }

    /// Ends a publication (unsubscribed, or `why`: revoked, expired, peer gone).
    pub(crate) fn end_publication(
        &mut self,
        now_ns: u64,
        node: NodeId,
        s: StreamRef,
        why: Option<String>,
    ) {
        let Some(&k) = self.pub_by_node.get(&node) else {
            return;
        };
        let Some(p) = self.pubs[k as usize].as_ref() else {
            return;
        };
        if p.tx.stream() != s && why.is_none() {
            return;
        }
        let p = self.pubs[k as usize].take().expect("checked");
        self.pub_by_node.remove(&node);
        self.admission
            .roster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node, self.shard);
        p.counters.active.store(false, Ordering::Relaxed);
        p.counters.ended.store(true, Ordering::Relaxed);
        if let Some(suppressed) = self.log_event(now_ns) {
            tracing::info!(
                shard = self.shard,
                node = %hex(node),
                stream = s.id,
                reason = why.as_deref().unwrap_or("unsubscribed"),
                suppressed,
                "mesh publication ended"
            );
        }
        if let Some(why) = why {
            self.answer(p.peer, p.tx.stream(), Status::Unauthorized, &why);
            p.counters.fail(why);
        }
    }

    /// Ends publications whose subscriber has not been heard from for `idle_ns` (it went
    /// away: a restart of it subscribes again, and is readmitted).
    pub(crate) fn end_silent(&mut self, now_ns: u64, idle_ns: u64) {
        let silent: Vec<(NodeId, StreamRef)> = self
            .pubs
            .iter()
            .flatten()
            .filter(|p| now_ns.saturating_sub(p.heard_ns) >= idle_ns)
            .map(|p| (p.node, p.tx.stream()))
            .collect();
        for (node, s) in silent {
            let why = format!(
                "the subscriber was silent for {} s",
                idle_ns / 1_000_000_000
            );
            self.end_publication(now_ns, node, s, Some(why));
        }
    }

    /// Ends subscription `key` (this node unsubscribes): the publisher is told.
    pub(crate) fn unsubscribe(&mut self, origin: NodeId, origin_shard: u16) -> bool {
        let Some(key) = self.subs.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.origin == origin && s.origin_shard == origin_shard)
        }) else {
            return false;
        };
        let s = self.subs[key].take().expect("found");
        tracing::info!(
            shard = self.shard,
            origin = %hex(origin),
            origin_shard,
            next = s.rx.next(),
            "mesh subscription stopped"
        );
        s.counters.active.store(false, Ordering::Relaxed);
        s.counters.ended.store(true, Ordering::Relaxed);
        let st = s.rx.stream();
        self.queue_reply(s.peer, |b| {
            stream::write_bare(b, stream::KIND_UNSUBSCRIBE, st)
        });
        true
    }

    /// Ends publications whose token was revoked or expired.
    pub(crate) fn recheck_tokens(&mut self) {
        let now = unix_now_s();
        let mut ended = Vec::new();
        {
            let v = self
                .admission
                .verifier
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for p in self.pubs.iter().flatten() {
                if v.is_revoked(&p.token) {
                    ended.push((
                        p.node,
                        p.tx.stream(),
                        format!("token {} revoked", p.token.id()),
                    ));
                } else if now >= p.token.expires() {
                    ended.push((
                        p.node,
                        p.tx.stream(),
                        format!("token {} expired at {}", p.token.id(), p.token.expires()),
                    ));
                }
            }
        }
        let now_ns = crate::clock::monotonic_ns();
        for (node, s, why) in ended {
            self.end_publication(now_ns, node, s, Some(why));
        }
    }

    /// Publishes a publication's figures.
    pub(crate) fn publish_pub_counters(p: &Publication) {
        let c = &p.counters;
        c.set(&c.next, p.tx.next_new());
        c.set(&c.acked, p.tx.acked());
        c.set(&c.sent_bytes, p.tx.sent_bytes());
        let (resent, timeouts) = p.tx.resend_counts();
        c.set(&c.resent_ranges, resent);
        c.set(&c.timeouts, timeouts);
        c.live.store(p.live, Ordering::Relaxed);
    }

    /// The reads publications need now: holes to resend, and new data for those that
    /// fell behind and have credit.
    /// (`can_send` says whether a peer has a session now: a publication whose subscriber
    /// cannot be reached reads nothing meanwhile.)
    pub(crate) fn wanted_reads(
        &mut self,
        now_ns: u64,
        log_end: u64,
        can_send: impl Fn(PeerId) -> bool,
        out: &mut Vec<WantRead>,
    ) {
        for (k, slot) in self.pubs.iter_mut().enumerate() {
            let Some(p) = slot else {
                continue;
            };
            if p.reading || !can_send(p.peer) {
                continue;
            }
            let key = u32::try_from(k).expect("publications fit u32");
            if let Some((from, to)) = p.tx.take_resend(now_ns) {
                p.reading = true;
                p.reading_from = from;
                p.reading_to = to;
                out.push(WantRead {
                    key,
                    stream: p.tx.stream(),
                    from,
                    to,
                    max_bytes: 256 << 10,
                    oversize_ok: true,
                    purpose: crate::streamer::READ_RESEND,
                });
                continue;
            }
            // New data when there is credit, but not again at the same credit after a read
            // found the next record too large for it (that read sent nothing).
            let oversize_ok = p.tx.may_send(u64::MAX);
            if !p.live
                && p.tx.next_new() < log_end
                && (p.tx.credit() > 0 || oversize_ok)
                && p.stuck_at_grant != Some(p.tx.granted())
            {
                p.reading = true;
                p.reading_from = p.tx.next_new();
                p.reading_to = u64::MAX;
                p.reading_grant = p.tx.granted();
                out.push(WantRead {
                    key,
                    stream: p.tx.stream(),
                    from: p.tx.next_new(),
                    to: u64::MAX,
                    // Up to the whole credit: a read costs the reader thread a round trip
                    // through the shard, so it should carry as much as may be sent.
                    max_bytes: p.tx.credit().min(NEW_READ_BYTES_MAX),
                    oversize_ok,
                    purpose: crate::streamer::READ_NEW,
                });
            }
        }
    }

    /// The earliest time a publication or subscription needs the shard.
    pub(crate) fn deadline_ns(&self) -> u64 {
        let mut d = u64::MAX;
        for p in self.pubs.iter().flatten() {
            if !p.reading {
                d = d.min(p.tx.deadline_ns());
            }
        }
        for s in self.subs.iter().flatten() {
            d = d.min(match s.state {
                SubState::Active => s.rx.deadline_ns(),
                SubState::Subscribing => s.last_subscribe_ns.saturating_add(SUBSCRIBE_RETRY_NS),
                SubState::Failed => u64::MAX,
            });
        }
        d
    }

    // ---- subscriber side ----

    /// Starts (or restarts, with a new generation) subscription `key`.
    pub(crate) fn send_subscribe(&mut self, now_ns: u64, key: usize) {
        let generation = self.next_generation();
        let Some(s) = self.subs[key].as_mut() else {
            return;
        };
        let st = StreamRef {
            id: u32::try_from(key).expect("subscriptions fit u32"),
            generation,
        };
        let from = s.rx.next();
        s.rx = RecvStream::new(st, from, s.limits, self.timers);
        s.state = SubState::Subscribing;
        s.last_subscribe_ns = now_ns;
        s.counters.subscribes.fetch_add(1, Ordering::Relaxed);
        let (peer, shard, window) = (s.peer, s.origin_shard, s.limits.window);
        let token = s.token.clone();
        self.queue_reply(peer, |b| {
            stream::write_subscribe(b, st, shard, from, window, &token)
        });
    }

    /// Re-sends `SUBSCRIBE` for subscriptions still unanswered (same generation).
    fn retry_subscribes(&mut self, now_ns: u64) {
        for key in 0..self.subs.len() {
            let Some(s) = self.subs[key].as_mut() else {
                continue;
            };
            if s.state != SubState::Subscribing
                || now_ns.saturating_sub(s.last_subscribe_ns) < SUBSCRIBE_RETRY_NS
            {
                continue;
            }
            s.last_subscribe_ns = now_ns;
            let (peer, st, shard, from, window) = (
                s.peer,
                s.rx.stream(),
                s.origin_shard,
                s.rx.next(),
                s.limits.window,
            );
            let token = s.token.clone();
            self.queue_reply(peer, |b| {
                stream::write_subscribe(b, st, shard, from, window, &token)
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_subscribed(
        &mut self,
        now_ns: u64,
        node: NodeId,
        st: StreamRef,
        status: Status,
        first_seq: u64,
        end_seq: u64,
        reason: &[u8],
    ) {
        let key = st.id as usize;
        let Some(s) = self.subs.get_mut(key).and_then(Option::as_mut) else {
            return self.bad_frame(now_ns, node, "an answer for no subscription of ours");
        };
        if s.origin != node || s.rx.stream() != st {
            return; // an answer to an earlier generation
        }
        let (origin_shard, failed) = (s.origin_shard, s.state == SubState::Failed);
        match status {
            Status::Accepted => {
                if s.state == SubState::Subscribing {
                    s.state = SubState::Active;
                    s.counters.active.store(true, Ordering::Relaxed);
                    *s.counters.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    if let Some(suppressed) = self.log_event(now_ns) {
                        tracing::info!(
                            shard = self.shard,
                            origin = %hex(node),
                            origin_shard,
                            first_seq,
                            end_seq,
                            suppressed,
                            "mesh subscription accepted"
                        );
                    }
                }
            }
            Status::Unknown => {
                if let Some(suppressed) = self.log_event(now_ns) {
                    tracing::debug!(
                        shard = self.shard,
                        origin = %hex(node),
                        origin_shard,
                        suppressed,
                        "mesh publisher has no such subscription; subscribing again"
                    );
                }
                self.send_subscribe(now_ns, key);
            }
            refused => {
                s.state = SubState::Failed;
                let why = String::from_utf8_lossy(reason).into_owned();
                s.counters.fail(format!("{refused:?}: {why}"));
                if !failed && let Some(suppressed) = self.log_event(now_ns) {
                    tracing::warn!(
                        shard = self.shard,
                        origin = %hex(node),
                        origin_shard,
                        status = ?refused,
                        reason = %why,
                        suppressed,
                        "mesh subscription refused by the publisher"
                    );
                }
            }
        }
    }

    fn on_data(&mut self, now_ns: u64, node: NodeId, st: StreamRef, frame: &Frame<'_>, raw: &[u8]) {
        let key = st.id as usize;
        let Some(s) = self.subs.get_mut(key).and_then(Option::as_mut) else {
            return self.bad_frame(now_ns, node, "data for no subscription of ours");
        };
        if s.origin != node || s.rx.stream() != st || s.state == SubState::Failed {
            return; // an earlier generation's frame, late
        }
        if s.state == SubState::Subscribing {
            // Data proves the subscription was accepted (the answer may come later or not).
            s.state = SubState::Active;
            s.counters.active.store(true, Ordering::Relaxed);
        }
        let Some(mirror) = self.mirror.as_mut() else {
            return;
        };
        let (origin, shard) = (s.origin, s.origin_shard);
        MirrorSink::deliver(mirror, origin, shard, now_ns, |offer| {
            s.rx.on_frame(now_ns, frame, raw, offer);
        });
    }

    /// Delivers what subscriptions hold now that the mirror may have room, queues the
    /// acknowledgements due, retries unanswered subscriptions, and publishes the mirror.
    pub(crate) fn tick_subscriptions(&mut self, now_ns: u64) {
        self.retry_subscribes(now_ns);
        for key in 0..self.subs.len() {
            let Some(s) = self.subs[key].as_mut() else {
                continue;
            };
            if s.state != SubState::Active {
                continue;
            }
            if let Some(mirror) = self.mirror.as_mut() {
                // Room for a full frame of records: the stream may name holes again.
                let frame = mirror.bytes_needed(s.limits.slot_bytes);
                if mirror.has_room(frame) {
                    s.rx.consumer_ready();
                }
            }
            if s.rx.held() > 0
                && let Some(mirror) = self.mirror.as_mut()
            {
                let (origin, shard) = (s.origin, s.origin_shard);
                MirrorSink::deliver(mirror, origin, shard, now_ns, |offer| {
                    s.rx.pump(offer);
                });
            }
            let c = &s.counters;
            c.set(&c.next, s.rx.next());
            c.set(&c.consumed, s.rx.consumed());
            c.set(&c.window, s.limits.window);
            c.set(&c.skipped_events, s.rx.skipped_events());
            let (dups, no_room) = s.rx.drop_counts();
            c.set(&c.duplicates, dups);
            c.set(&c.no_room, no_room);
            if s.rx.ack_due(now_ns) {
                let ack = s.rx.make_ack(now_ns);
                let peer = s.peer;
                self.queue_reply(peer, |b| stream::write_ack(b, &ack));
            }
        }
    }
}

/// Where a subscription's records go: this shard's origin lane, inside its write window.
struct MirrorSink<'a> {
    mirror: &'a mut OriginLaneWriter,
    origin: NodeId,
    shard: u16,
    now_ns: u64,
    staged: bool,
}

impl MirrorSink<'_> {
    /// Runs `with` with a delivery sink into `mirror`, inside the lane's write window, and
    /// publishes what it staged. When the lane is closed (shutting down) nothing is
    /// mirrored: a restart resumes from the log.
    fn deliver(
        mirror: &mut OriginLaneWriter,
        origin: NodeId,
        shard: u16,
        now_ns: u64,
        with: impl FnOnce(&mut dyn FnMut(Delivery<'_>) -> bool),
    ) {
        mirror.enter_window();
        if !mirror.is_closed() {
            let mut sink = MirrorSink {
                mirror: &mut *mirror,
                origin,
                shard,
                now_ns,
                staged: false,
            };
            with(&mut |d| sink.offer(d));
            if sink.staged {
                sink.mirror.publish();
            }
        }
        mirror.leave_window();
    }

    /// Takes one delivery; false when the lane is full (the stream holds the rest).
    fn offer(&mut self, d: Delivery<'_>) -> bool {
        match d {
            Delivery::Record { seq, payload, .. } => {
                let need = self.mirror.bytes_needed(payload.len());
                if !self.mirror.has_room(need) {
                    return false;
                }
                let origin = Origin {
                    node: self.origin,
                    shard: self.shard,
                    seq,
                };
                self.mirror.stage(self.now_ns, &origin, payload);
                self.staged = true;
                true
            }
            // Counted by the stream (`skipped_events`) and published in the stats.
            Delivery::Skipped { .. } => true,
        }
    }
}
