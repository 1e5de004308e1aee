//! A lane: the ring ([`crate::ring`]) from one producer to one shard, plus what only a lane
//! has: its ids, its kind, the producer's counters, the durable position the shard publishes
//! back, the producer-gone flag, and the shard's signal and state. Records are ring entries
//! whose `aux` word is the producer's send timestamp; written in place, so sending allocates
//! nothing.
//!
//! A lane's kind is fixed when it is made and tells the shard how to read its entries: on a
//! plain lane an entry is the payload; on an origin lane it is the record's
//! [`ORIGIN_BYTES`]-byte origin block followed by the payload, and the shard appends it with
//! the origin (`Log::push_with_origin`).
//!
//! The ring owns the data path's protocols (publish, claim/release, drop oldest, close, park);
//! this module only counts. A producer counts an event ingested before the ring publishes it,
//! so an observer that sees it persisted also sees it ingested (see `stats`). Every counter
//! here has a single writer: plain stores, no RMW.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use net_storage::record::{ORIGIN_BYTES, Origin};

use crate::control::{Control, ShardShared};
use crate::ring::{ENTRY_OVERHEAD_BYTES, Ring, RingReader, RingWriter, Taken};
use crate::stats::{LaneEntry, ShardCounters, StatsShared};
use crate::wake::ShardSignal;

/// Bytes a lane spends per record besides the payload (header word and timestamp word).
pub const RECORD_OVERHEAD_BYTES: usize = ENTRY_OVERHEAD_BYTES;
/// The smallest lane the engine builds (configs allow far larger ones only).
const LANE_BYTES_MIN: usize = 64;

/// How the shard reads a lane's entries (fixed when the lane is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneKind {
    /// An entry is the payload of a record without an origin.
    Plain,
    /// An entry is an [`ORIGIN_BYTES`] origin block followed by the payload.
    Origin,
}

/// One record as a writer hands it to a lane: the payload and, for an origin lane, the
/// encoded origin block that goes before it in the ring entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneMsg<'a> {
    block: &'a [u8],
    payload: &'a [u8],
}

impl<'a> LaneMsg<'a> {
    /// A record of a plain lane.
    pub(crate) fn plain(payload: &'a [u8]) -> LaneMsg<'a> {
        LaneMsg {
            block: &[],
            payload,
        }
    }

    /// A record of an origin lane: `block` is [`Origin::to_bytes`] of its origin.
    pub(crate) fn origin(block: &'a [u8; ORIGIN_BYTES], payload: &'a [u8]) -> LaneMsg<'a> {
        LaneMsg { block, payload }
    }

    /// Bytes of the ring entry's payload (block and payload).
    pub(crate) fn len(&self) -> usize {
        self.block.len() + self.payload.len()
    }

    /// The kind of lane this record is for.
    fn kind(&self) -> LaneKind {
        if self.block.is_empty() {
            LaneKind::Plain
        } else {
            LaneKind::Origin
        }
    }
}

/// Counters a producer writes for one lane (single writer: plain stores, no RMW).
#[derive(Debug, Default)]
pub(crate) struct LaneCounters {
    /// Events the bus took responsibility for on this lane (including ones later dropped).
    pub(crate) ingested: AtomicU64,
    /// Events dropped by the backpressure mode.
    pub(crate) dropped: AtomicU64,
    /// Sends refused with `SendError::Full` (not ingested).
    pub(crate) rejected: AtomicU64,
}

/// The shared state of one lane.
#[derive(Debug)]
pub(crate) struct Lane {
    ring: Arc<Ring>,
    pub(crate) id: u64,
    pub(crate) shard: usize,
    /// How the shard reads the lane's entries.
    pub(crate) kind: LaneKind,
    pub(crate) signal: Arc<ShardSignal>,
    /// Shared with the bus's registry, which keeps them after the lane is freed.
    pub(crate) counters: Arc<CachePadded<LaneCounters>>,
    /// The producer was dropped: once empty and durable, the shard retires the lane and its
    /// ring is freed.
    pub(crate) producer_gone: AtomicBool,
    /// Lane position up to which records are durable under the fsync policy (written, for
    /// `never`) or were dropped; written by the shard, read by `send_durable` and flush.
    pub(crate) durable_pos: CachePadded<AtomicU64>,
    /// The shard's counters, so a waiting producer sees the shard fail.
    pub(crate) shard_state: Arc<CachePadded<ShardCounters>>,
}

impl Lane {
    pub(crate) fn new(
        id: u64,
        shard: usize,
        capacity: usize,
        kind: LaneKind,
        signal: Arc<ShardSignal>,
        shard_state: Arc<CachePadded<ShardCounters>>,
    ) -> Lane {
        assert!(
            capacity.is_power_of_two() && capacity >= LANE_BYTES_MIN,
            "lane capacity"
        );
        Lane {
            ring: Arc::new(Ring::new(capacity)),
            id,
            shard,
            kind,
            signal,
            counters: Arc::new(CachePadded::new(LaneCounters::default())),
            producer_gone: AtomicBool::new(false),
            durable_pos: CachePadded::new(AtomicU64::new(0)),
            shard_state,
        }
    }

    /// Published head (for flush snapshots and emptiness checks).
    pub(crate) fn head(&self) -> u64 {
        self.ring.head()
    }

    /// Bytes published and not yet released by the shard, and the lane's capacity.
    pub(crate) fn fill(&self) -> (u64, u64) {
        self.ring.fill()
    }

    /// Whether published records wait to be claimed (the shard's check before parking).
    pub(crate) fn has_unclaimed(&self) -> bool {
        self.ring.has_unclaimed()
    }

    /// Shutdown, first half: a send that starts from now on fails with `Closed`.
    pub(crate) fn close(&self) {
        self.ring.close();
    }

    /// Shutdown, second half: waits until no send is in progress; after that no event can
    /// enter the lane.
    pub(crate) fn wait_writer_outside(&self) {
        self.ring.wait_writer_outside();
    }
}

/// The producer's end of a lane.
#[derive(Debug)]
pub(crate) struct LaneWriter {
    pub(crate) lane: Arc<Lane>,
    ring: RingWriter,
    ingested: u64,
    dropped: u64,
    rejected: u64,
    pub(crate) sample_n: u32,
}

/// What one attempt to drop the oldest record did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DropOldest {
    /// A record was dropped.
    Record,
    /// A pad was skipped.
    Pad,
    /// The shard is copying or raced us; try again.
    Busy,
}

impl LaneWriter {
    pub(crate) fn new(lane: Arc<Lane>) -> LaneWriter {
        LaneWriter {
            ring: RingWriter::new(lane.ring.clone()),
            lane,
            ingested: 0,
            dropped: 0,
            rejected: 0,
            sample_n: 0,
        }
    }

    /// Ring bytes needed to write a payload of `len` bytes at the current head.
    pub(crate) fn bytes_needed(&self, len: usize) -> u64 {
        self.ring.bytes_needed(len)
    }

    /// Whether `need` bytes are free, refreshing the cached tail only when they seem not to be.
    pub(crate) fn has_room(&mut self, need: u64) -> bool {
        self.ring.has_room(need)
    }

    /// Position after the last record written.
    pub(crate) fn head(&self) -> u64 {
        self.ring.head()
    }

    /// Bytes in use as last seen (for `sample`).
    pub(crate) fn fill_bytes(&mut self) -> u64 {
        self.ring.fill_bytes()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.ring.capacity_bytes()
    }

    /// Starts a send: until [`LaneWriter::leave_window`], shutdown waits for it. Check
    /// [`LaneWriter::is_closed`] before writing.
    pub(crate) fn enter_window(&self) {
        self.ring.enter_window();
    }

    /// Whether the bus closed the lane (shutdown): no event may enter it any more.
    pub(crate) fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }

    /// Ends a send started with [`LaneWriter::enter_window`].
    pub(crate) fn leave_window(&self) {
        self.ring.leave_window();
    }

    /// Writes one record and publishes it. The caller checked
    /// `has_room(bytes_needed(msg.len()))`.
    pub(crate) fn write(&mut self, send_ns: u64, msg: LaneMsg<'_>) {
        self.stage(send_ns, msg);
        self.publish();
    }

    /// Writes one record without publishing it (see [`LaneWriter::publish`]). The caller
    /// checked `has_room(bytes_needed(msg.len()))`.
    pub(crate) fn stage(&mut self, send_ns: u64, msg: LaneMsg<'_>) {
        debug_assert_eq!(msg.kind(), self.lane.kind, "a record of the lane's kind");
        self.count_ingested();
        self.ring.stage_parts(send_ns, msg.block, msg.payload);
    }

    /// Ingested is counted before the record becomes visible, so an observer that sees it
    /// persisted also sees it ingested.
    fn count_ingested(&mut self) {
        self.ingested += 1;
        self.lane
            .counters
            .ingested
            .store(self.ingested, Ordering::Release);
    }

    /// Publishes the records staged so far to the shard.
    pub(crate) fn publish(&mut self) {
        self.ring.publish();
    }

    /// Counts an event the backpressure mode dropped at send.
    pub(crate) fn count_dropped_newest(&mut self) {
        self.ingested += 1;
        self.lane
            .counters
            .ingested
            .store(self.ingested, Ordering::Release);
        self.dropped += 1;
        self.lane
            .counters
            .dropped
            .store(self.dropped, Ordering::Release);
    }

    /// Counts a send refused with `Full`.
    pub(crate) fn count_rejected(&mut self) {
        self.rejected += 1;
        self.lane
            .counters
            .rejected
            .store(self.rejected, Ordering::Release);
    }

    /// Tries to drop the oldest unclaimed entry to make room.
    pub(crate) fn drop_oldest(&mut self) -> DropOldest {
        match self.ring.take_oldest() {
            Taken::Busy => DropOldest::Busy,
            Taken::Pad => DropOldest::Pad,
            Taken::Entry { .. } => {
                self.dropped += 1;
                self.lane
                    .counters
                    .dropped
                    .store(self.dropped, Ordering::Release);
                DropOldest::Record
            }
        }
    }
}

/// Makes lanes and registers them: with the bus's lane registry (stats, flush, shutdown)
/// and, by a control message, with their shard's ingest. The bus makes producers' lanes with
/// it; a component running on a shard can hold a clone to make an origin lane into its own
/// shard ([`LaneFactory::origin_writer`]).
#[derive(Debug, Clone)]
pub(crate) struct LaneFactory {
    next_id: Arc<AtomicU64>,
    registry: Arc<StatsShared>,
    capacity: usize,
}

impl LaneFactory {
    /// A factory of lanes of `capacity` bytes registered in `registry`.
    pub(crate) fn new(registry: Arc<StatsShared>, capacity: usize) -> LaneFactory {
        LaneFactory {
            next_id: Arc::new(AtomicU64::new(0)),
            registry,
            capacity,
        }
    }

    /// A new lane of `kind` into shard `shard` (whose shared state is `to`), registered. A
    /// dead shard drains nothing: its lane still exists so that sends to it fail with its
    /// failure instead of blocking.
    pub(crate) fn lane(&self, shard: usize, to: &ShardShared, kind: LaneKind) -> Arc<Lane> {
        self.lane_sized(shard, to, kind, self.capacity)
    }

    /// As [`LaneFactory::lane`], with a ring of `capacity` bytes (a power of two).
    fn lane_sized(
        &self,
        shard: usize,
        to: &ShardShared,
        kind: LaneKind,
        capacity: usize,
    ) -> Arc<Lane> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let lane = Arc::new(Lane::new(
            id,
            shard,
            capacity,
            kind,
            to.signal.clone(),
            to.counters.clone(),
        ));
        self.registry
            .lanes
            .lock()
            .expect("lane registry")
            .push(LaneEntry {
                shard,
                counters: lane.counters.clone(),
                lane: Arc::downgrade(&lane),
            });
        let _ = to.send(Control::AddLane(lane.clone()));
        lane
    }

    /// A writer of a new origin lane into shard `shard`, for a component that runs on that
    /// shard's own thread (the mesh, mirroring a remote log into this one). The shard takes
    /// the lane in at its next turn of the loop; what is written before then waits in it.
    /// Its ring holds `capacity` bytes (a power of two; at least the producers' lanes').
    pub(crate) fn origin_writer(
        &self,
        shard: usize,
        to: &ShardShared,
        capacity: usize,
    ) -> OriginLaneWriter {
        let capacity = capacity.max(self.capacity).next_power_of_two();
        OriginLaneWriter::new(self.lane_sized(shard, to, LaneKind::Origin, capacity))
    }
}

/// The writer of an origin lane for a component on the lane's own shard: records with an
/// origin go into the shard's log through its ingest, in order with the producers' lanes.
/// Like a producer it stages records and publishes them (one store for many); unlike one it
/// has no backpressure mode: it checks `has_room` and, when there is none, tries again on a
/// later turn of the shard's loop (which drains the lane meanwhile). The shard reads the lane
/// on its next turn, so publishing needs no wake-up. Every write happens inside the window
/// (`enter_window`, check `is_closed`, `leave_window`) so that shutdown accounts exactly.
#[derive(Debug)]
pub(crate) struct OriginLaneWriter {
    w: LaneWriter,
}

impl OriginLaneWriter {
    /// The writer of `lane`, an origin lane.
    ///
    /// # Panics
    /// If `lane` is a plain lane (a bug of the caller: the kind is fixed at creation).
    pub(crate) fn new(lane: Arc<Lane>) -> OriginLaneWriter {
        assert_eq!(lane.kind, LaneKind::Origin, "an origin lane");
        OriginLaneWriter {
            w: LaneWriter::new(lane),
        }
    }

    /// The lane written.
    #[cfg(test)]
    pub(crate) fn lane(&self) -> &Arc<Lane> {
        &self.w.lane
    }

    /// Ring bytes needed to write a record with a payload of `payload_len` bytes (and its
    /// origin block) at the current head.
    pub(crate) fn bytes_needed(&self, payload_len: usize) -> u64 {
        self.w.bytes_needed(ORIGIN_BYTES + payload_len)
    }

    /// Whether `need` bytes are free.
    pub(crate) fn has_room(&mut self, need: u64) -> bool {
        self.w.has_room(need)
    }

    /// Starts writing: shutdown waits until [`OriginLaneWriter::leave_window`].
    pub(crate) fn enter_window(&self) {
        self.w.enter_window();
    }

    /// Whether the bus closed the lane (shutdown): nothing may be written any more.
    pub(crate) fn is_closed(&self) -> bool {
        self.w.is_closed()
    }

    /// Ends what [`OriginLaneWriter::enter_window`] started.
    pub(crate) fn leave_window(&self) {
        self.w.leave_window();
    }

    /// Writes one record with its origin block, without publishing it. The caller is inside
    /// the window, saw the lane open, and checked `has_room(bytes_needed(payload.len()))`.
    pub(crate) fn stage(&mut self, send_ns: u64, origin: &Origin, payload: &[u8]) {
        let block = origin.to_bytes();
        self.w.stage(send_ns, LaneMsg::origin(&block, payload));
    }

    /// Publishes the records staged so far to the shard.
    pub(crate) fn publish(&mut self) {
        self.w.publish();
    }
}

impl Drop for OriginLaneWriter {
    fn drop(&mut self) {
        // Once drained and durable, the shard retires the lane and frees its ring.
        self.w.lane.producer_gone.store(true, Ordering::Release);
    }
}

/// The shard's end of a lane.
#[derive(Debug)]
pub(crate) struct LaneReader {
    pub(crate) lane: Arc<Lane>,
    ring: RingReader,
    /// Lane position up to which every record is persisted (or was dropped).
    pub(crate) persisted_pos: u64,
    durable_pos: u64,
}

impl LaneReader {
    pub(crate) fn new(lane: Arc<Lane>) -> LaneReader {
        LaneReader {
            ring: RingReader::new(lane.ring.clone()),
            lane,
            persisted_pos: 0,
            durable_pos: 0,
        }
    }

    /// Publishes that everything below `pos` is durable (under the policy) or dropped.
    pub(crate) fn publish_durable(&mut self, pos: u64) {
        if pos > self.durable_pos {
            self.durable_pos = pos;
            self.lane.durable_pos.store(pos, Ordering::Release);
        }
    }

    /// Lane position up to which records are durable (under the policy) or dropped.
    pub(crate) fn durable_pos(&self) -> u64 {
        self.durable_pos
    }

    /// Position after the last record handed to the shard.
    pub(crate) fn pos(&self) -> u64 {
        self.ring.pos()
    }

    /// Whether records are claimed but not yet handed over, or published but not claimed.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Whether the shard may drop this lane: its producer is gone and every record it sent is
    /// durable (so no flush can still be waiting on it).
    pub(crate) fn retirable(&self) -> bool {
        self.lane.producer_gone.load(Ordering::Acquire)
            && self.is_empty()
            && self.durable_pos >= self.pos()
    }

    /// Hands records to `f(send_ns, payload)` until it returns false (batch full), the budget
    /// is spent, or the lane is empty; then releases the consumed space. Returns the number of
    /// records consumed.
    pub(crate) fn drain(
        &mut self,
        events_max: usize,
        bytes_max: u64,
        f: impl FnMut(u64, &[u8]) -> bool,
    ) -> usize {
        self.ring.drain(events_max, bytes_max, f)
    }
}

// Not under loom: a lane's signal and counters only work outside a loom model.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn lane(cap: usize) -> (LaneWriter, LaneReader) {
        let state = Arc::new(CachePadded::new(ShardCounters::default()));
        let l = Arc::new(Lane::new(
            0,
            0,
            cap,
            LaneKind::Plain,
            Arc::new(ShardSignal::new().unwrap()),
            state,
        ));
        (LaneWriter::new(l.clone()), LaneReader::new(l))
    }

    fn collect(r: &mut LaneReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        r.drain(usize::MAX, u64::MAX, |_, p| {
            out.push(p.to_vec());
            true
        });
        out
    }

    #[test]
    fn records_wrap_with_pads_and_keep_order() {
        let (mut w, mut r) = lane(256);
        let mut expect = Vec::new();
        for i in 0..100u8 {
            let p = vec![i; usize::from(i % 40)];
            let need = w.bytes_needed(p.len());
            if !w.has_room(need) {
                assert_eq!(collect(&mut r), expect);
                expect.clear();
                assert!(w.has_room(need));
            }
            w.write(u64::from(i), LaneMsg::plain(&p));
            expect.push(p);
        }
        assert_eq!(collect(&mut r), expect);
        assert!(r.is_empty());
    }

    #[test]
    fn drop_oldest_frees_space_and_counts() {
        let (mut w, mut r) = lane(128);
        for i in 0..4u8 {
            w.write(0, LaneMsg::plain(&[i; 16])); // 32 bytes each: full
        }
        assert!(!w.has_room(w.bytes_needed(16)));
        assert_eq!(w.drop_oldest(), DropOldest::Record);
        assert!(w.has_room(w.bytes_needed(16)));
        w.write(0, LaneMsg::plain(&[9; 16]));
        assert_eq!(
            collect(&mut r),
            vec![vec![1; 16], vec![2; 16], vec![3; 16], vec![9; 16]]
        );
        assert_eq!(w.lane.counters.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(w.lane.counters.ingested.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_refused_record_stays_for_the_next_drain() {
        let (mut w, mut r) = lane(1024);
        for i in 0..5u8 {
            w.write(0, LaneMsg::plain(&[i]));
        }
        let mut got = Vec::new();
        let n = r.drain(usize::MAX, u64::MAX, |_, p| {
            if got.len() == 2 {
                return false;
            }
            got.push(p[0]);
            true
        });
        assert_eq!(n, 2);
        let rest: Vec<u8> = collect(&mut r).into_iter().map(|p| p[0]).collect();
        assert_eq!(rest, vec![2, 3, 4]);
    }

    #[test]
    fn an_origin_writer_registers_its_lane_and_writes_the_block_before_the_payload() {
        let counters = Arc::new(CachePadded::new(ShardCounters::default()));
        let shared = ShardShared::new(
            Arc::new(ShardSignal::new().unwrap()),
            counters.clone(),
            Arc::new(crate::notify::Notify::default()),
        );
        let stats = Arc::new(StatsShared {
            shards: vec![counters],
            lanes: std::sync::Mutex::new(Vec::new()),
            lossy: AtomicBool::new(false),
        });
        let factory = LaneFactory::new(stats.clone(), 1024);
        let mut w = factory.origin_writer(0, &shared, 0);
        assert_eq!(
            stats.lanes_snapshot().len(),
            1,
            "registered for flush and stats"
        );
        let lane = match shared.take() {
            Some(Control::AddLane(lane)) => lane,
            other => panic!("the shard is told of the lane, got {other:?}"),
        };
        assert!(Arc::ptr_eq(&lane, w.lane()));
        assert_eq!(lane.kind, LaneKind::Origin);
        let mut r = LaneReader::new(lane);
        let origin = Origin {
            node: 0xFEED,
            shard: 3,
            seq: 41,
        };
        let mut sent = Vec::new();
        w.enter_window();
        assert!(!w.is_closed());
        for i in 0..40u8 {
            let payload = vec![i; usize::from(i % 7)];
            let need = w.bytes_needed(payload.len());
            if !w.has_room(need) {
                break;
            }
            let o = Origin {
                seq: origin.seq + u64::from(i),
                ..origin
            };
            w.stage(u64::from(i), &o, &payload);
            sent.push((u64::from(i), o, payload));
        }
        w.publish();
        w.leave_window();
        assert!(sent.len() > 10, "{} records fit", sent.len());
        let mut got = Vec::new();
        r.drain(usize::MAX, u64::MAX, |ns, msg| {
            let (o, p) = net_storage::record::split_origin(msg).expect("a valid block");
            got.push((ns, o, p.to_vec()));
            true
        });
        assert_eq!(got, sent);
        drop(w);
        assert!(
            r.lane.producer_gone.load(Ordering::Acquire),
            "the lane retires"
        );
    }
}
