//! A lane: the bounded single-producer/single-consumer byte ring from one producer to one
//! shard. Records are written in place, length-prefixed, so sending allocates nothing.
//!
//! Layout: the ring is `capacity` bytes of 8-byte words. A record at position `p` (8-aligned)
//! is a header word `len | KIND_RECORD`, a word holding the producer's send timestamp, and the
//! payload padded to 8 bytes. A record never wraps: when it does not fit before the end of the
//! ring, a pad word (`bytes | KIND_PAD`) fills the rest and the record starts at 0.
//!
//! Positions are monotonic u64 byte counters (`pos & mask` is the ring offset):
//! - `head` (producer): end of the published records.
//! - `claim` (shard, or producer when dropping): records below it are taken.
//! - `tail`: space below it is free for the producer to overwrite.
//!
//! `tail <= claim <= head <= tail + capacity` always. The shard claims a run of records with
//! one CAS on `claim`, copies them, then releases the space with `fetch_max` on `tail`. Under
//! `drop_oldest` the producer may drop the oldest unclaimed record by the same CAS, and only
//! when `claim == tail` (the shard is not copying), so it never overwrites bytes the shard
//! reads. Both RMWs are shared by exactly two threads. Header words are atomics, so a shard
//! that parses records a producer is dropping at the same moment reads stale values, never a
//! data race; its CAS then fails and it parses again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::stats::ShardCounters;
use crate::wake::ShardSignal;

/// Bytes a lane spends per record besides the payload (header word and timestamp word).
pub const RECORD_OVERHEAD_BYTES: usize = 16;
const KIND_RECORD: u64 = 1 << 32;
const KIND_PAD: u64 = 2 << 32;
const LEN_MASK: u64 = 0xFFFF_FFFF;

fn round8(n: usize) -> usize {
    (n + 7) & !7
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
    words: Box<[AtomicU64]>,
    capacity: u64,
    pub(crate) id: u64,
    pub(crate) shard: usize,
    pub(crate) signal: Arc<ShardSignal>,
    head: CachePadded<AtomicU64>,
    pub(crate) busy: CachePadded<AtomicBool>,
    /// Shared with the bus's registry, which keeps them after the lane is freed.
    pub(crate) counters: Arc<CachePadded<LaneCounters>>,
    /// The producer was dropped: once empty and durable, the shard retires the lane and its
    /// ring is freed.
    pub(crate) producer_gone: AtomicBool,
    claim: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    /// Set by the bus at shutdown; producers check it inside their `busy` window.
    pub(crate) closed: AtomicBool,
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
        signal: Arc<ShardSignal>,
        shard_state: Arc<CachePadded<ShardCounters>>,
    ) -> Lane {
        assert!(
            capacity.is_power_of_two() && capacity >= 64,
            "lane capacity"
        );
        let words = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
        Lane {
            words,
            capacity: capacity as u64,
            id,
            shard,
            signal,
            head: CachePadded::new(AtomicU64::new(0)),
            busy: CachePadded::new(AtomicBool::new(false)),
            counters: Arc::new(CachePadded::new(LaneCounters::default())),
            producer_gone: AtomicBool::new(false),
            claim: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
            durable_pos: CachePadded::new(AtomicU64::new(0)),
            shard_state,
        }
    }

    fn word(&self, pos: u64) -> &AtomicU64 {
        let i = usize::try_from((pos & (self.capacity - 1)) / 8).expect("within the ring");
        &self.words[i]
    }

    fn base(&self) -> *mut u8 {
        self.words.as_ptr().cast::<u8>().cast_mut()
    }

    /// Size in bytes of the entry (record or pad) whose header word is `w`.
    fn entry_bytes(w: u64) -> u64 {
        let len = w & LEN_MASK;
        if w & !LEN_MASK == KIND_PAD {
            len
        } else {
            (RECORD_OVERHEAD_BYTES + round8(len as usize)) as u64
        }
    }

    /// Published head (for flush snapshots and emptiness checks).
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// Whether published records wait to be claimed.
    pub(crate) fn has_unclaimed(&self) -> bool {
        self.claim.load(Ordering::SeqCst) != self.head.load(Ordering::SeqCst)
    }
}

/// The producer's end of a lane.
#[derive(Debug)]
pub(crate) struct LaneWriter {
    pub(crate) lane: Arc<Lane>,
    head: u64,
    tail_cache: u64,
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
            lane,
            head: 0,
            tail_cache: 0,
            ingested: 0,
            dropped: 0,
            rejected: 0,
            sample_n: 0,
        }
    }

    /// Ring bytes needed to write a payload of `len` bytes at the current head.
    pub(crate) fn bytes_needed(&self, len: usize) -> u64 {
        let rec = (RECORD_OVERHEAD_BYTES + round8(len)) as u64;
        let off = self.head & (self.lane.capacity - 1);
        if off + rec > self.lane.capacity {
            self.lane.capacity - off + rec
        } else {
            rec
        }
    }

    /// Whether `need` bytes are free, refreshing the cached tail only when they seem not to be.
    pub(crate) fn has_room(&mut self, need: u64) -> bool {
        if self.head + need - self.tail_cache <= self.lane.capacity {
            return true;
        }
        self.tail_cache = self.lane.tail.load(Ordering::Acquire);
        self.head + need - self.tail_cache <= self.lane.capacity
    }

    /// Position after the last record written.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Bytes in use as last seen (for `sample`).
    pub(crate) fn fill_bytes(&mut self) -> u64 {
        self.tail_cache = self.lane.tail.load(Ordering::Acquire);
        self.head - self.tail_cache
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.lane.capacity
    }

    /// Writes one record and publishes it. The caller checked `has_room(bytes_needed(..))`.
    pub(crate) fn write(&mut self, send_ns: u64, payload: &[u8]) {
        let lane = &*self.lane;
        let rec = (RECORD_OVERHEAD_BYTES + round8(payload.len())) as u64;
        let off = self.head & (lane.capacity - 1);
        if off + rec > lane.capacity {
            let pad = lane.capacity - off;
            lane.word(self.head)
                .store(KIND_PAD | pad, Ordering::Relaxed);
            self.head += pad;
        }
        debug_assert!(self.head + rec - self.tail_cache <= lane.capacity);
        let len = u64::try_from(payload.len()).expect("payload below a quarter lane");
        lane.word(self.head)
            .store(KIND_RECORD | len, Ordering::Relaxed);
        lane.word(self.head + 8).store(send_ns, Ordering::Relaxed);
        let at = usize::try_from((self.head & (lane.capacity - 1)) + 16).expect("within the ring");
        // SAFETY: [head, head + rec) lies inside the ring (a record never wraps) and below
        // tail + capacity, so the shard neither reads nor owns these bytes until `head` is
        // published below; we are the lane's only writer.
        unsafe {
            std::ptr::copy_nonoverlapping(payload.as_ptr(), lane.base().add(at), payload.len())
        };
        self.head += rec;
        // Ingested is counted before the record becomes visible, so an observer that sees it
        // persisted also sees it ingested.
        self.ingested += 1;
        lane.counters
            .ingested
            .store(self.ingested, Ordering::Release);
        // SeqCst: the store half of the park handshake (see `wake`).
        lane.head.store(self.head, Ordering::SeqCst);
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
        let lane = &*self.lane;
        let c = lane.claim.load(Ordering::Acquire);
        if c != lane.tail.load(Ordering::Acquire) || c == self.head {
            return DropOldest::Busy;
        }
        // We wrote this header word ourselves; the shard never writes the ring.
        let w = lane.word(c).load(Ordering::Relaxed);
        let size = Lane::entry_bytes(w);
        assert!(
            size > 0 && c + size <= self.head,
            "lane entry header corrupt"
        );
        if lane
            .claim
            .compare_exchange(c, c + size, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return DropOldest::Busy;
        }
        lane.tail.fetch_max(c + size, Ordering::AcqRel);
        if w & !LEN_MASK == KIND_PAD {
            return DropOldest::Pad;
        }
        self.dropped += 1;
        lane.counters.dropped.store(self.dropped, Ordering::Release);
        DropOldest::Record
    }
}

/// The shard's end of a lane.
#[derive(Debug)]
pub(crate) struct LaneReader {
    pub(crate) lane: Arc<Lane>,
    pos: u64,
    claimed_end: u64,
    /// Lane position up to which every record is persisted (or was dropped).
    pub(crate) persisted_pos: u64,
    durable_pos: u64,
}

impl LaneReader {
    pub(crate) fn new(lane: Arc<Lane>) -> LaneReader {
        LaneReader {
            lane,
            pos: 0,
            claimed_end: 0,
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
        self.pos
    }

    /// Whether records are claimed but not yet handed over, or published but not claimed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.claimed_end && !self.lane.has_unclaimed()
    }

    /// Whether the shard may drop this lane: its producer is gone and every record it sent is
    /// durable (so no flush can still be waiting on it).
    pub(crate) fn retirable(&self) -> bool {
        self.lane.producer_gone.load(Ordering::Acquire)
            && self.is_empty()
            && self.durable_pos >= self.pos
    }

    /// Claims up to `events_max` records (about `bytes_max` lane bytes) past `pos`.
    /// Returns false if there is nothing to claim.
    fn claim_more(&mut self, events_max: usize, bytes_max: u64) -> bool {
        let lane = &*self.lane;
        loop {
            let c = lane.claim.load(Ordering::Acquire);
            // Records in [pos, c) were dropped by the producer (drop_oldest).
            self.pos = self.pos.max(c);
            self.claimed_end = self.pos;
            let h = lane.head.load(Ordering::Acquire);
            if c == h {
                return false;
            }
            let (mut end, mut events) = (c, 0);
            while end < h && events < events_max && end - c < bytes_max {
                let w = lane.word(end).load(Ordering::Relaxed);
                let size = Lane::entry_bytes(w);
                if size == 0 || end + size > h {
                    break; // a stale header of a record being dropped; the CAS below fails
                }
                events += usize::from(w & !LEN_MASK == KIND_RECORD);
                end += size;
            }
            if end == c {
                continue;
            }
            if lane
                .claim
                .compare_exchange(c, end, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.claimed_end = end;
                return true;
            }
        }
    }

    /// Hands claimed records to `f(send_ns, payload)` until it returns false (batch full), the
    /// budget is spent, or the lane is empty; then releases the consumed space. Returns the
    /// number of records consumed.
    pub(crate) fn drain(
        &mut self,
        events_max: usize,
        bytes_max: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> usize {
        let mut consumed = 0;
        'outer: while consumed < events_max {
            if self.pos == self.claimed_end && !self.claim_more(events_max - consumed, bytes_max) {
                break;
            }
            let lane = &*self.lane;
            while self.pos < self.claimed_end {
                let w = lane.word(self.pos).load(Ordering::Relaxed);
                let size = Lane::entry_bytes(w);
                if w & !LEN_MASK == KIND_RECORD {
                    let len = usize::try_from(w & LEN_MASK).expect("u32 length");
                    let send_ns = lane.word(self.pos + 8).load(Ordering::Relaxed);
                    let at =
                        usize::try_from((self.pos & (lane.capacity - 1)) + 16).expect("in ring");
                    // SAFETY: the record lies in [pos, claimed_end), which we claimed: the
                    // producer published it (Acquire on head) and will not overwrite it
                    // before we release it through `tail`.
                    let payload = unsafe { std::slice::from_raw_parts(lane.base().add(at), len) };
                    if !f(send_ns, payload) {
                        break 'outer;
                    }
                    consumed += 1;
                }
                self.pos += size;
            }
        }
        self.release();
        consumed
    }

    fn release(&self) {
        self.lane.tail.fetch_max(self.pos, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(cap: usize) -> (LaneWriter, LaneReader) {
        let state = Arc::new(CachePadded::new(ShardCounters::default()));
        let l = Arc::new(Lane::new(
            0,
            0,
            cap,
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
            w.write(u64::from(i), &p);
            expect.push(p);
        }
        assert_eq!(collect(&mut r), expect);
        assert!(r.is_empty());
    }

    #[test]
    fn drop_oldest_frees_space_and_counts() {
        let (mut w, mut r) = lane(128);
        for i in 0..4u8 {
            w.write(0, &[i; 16]); // 32 bytes each: full
        }
        assert!(!w.has_room(w.bytes_needed(16)));
        assert_eq!(w.drop_oldest(), DropOldest::Record);
        assert!(w.has_room(w.bytes_needed(16)));
        w.write(0, &[9; 16]);
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
            w.write(0, &[i]);
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
}
