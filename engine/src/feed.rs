//! Feeds and retention holds: what a consumer on another thread (a sink, a fold thread) uses
//! to follow a shard without polling the whole bus.
//!
//! A [`FeedReader`] receives copies of a shard's completed batches through a bounded SPSC ring
//! (the same ring as the lanes), filled on the shard thread right after each batch completes.
//! The ring is only a fast path: when it has no room the shard skips the records that do not
//! fit (never waiting), and the reader, seeing a jump in sequence numbers, reads the missing
//! range from the log. So a slow consumer costs the shard one failed room check per batch, and
//! it catches up from the log at its own pace.
//!
//! A [`RetentionHold`] keeps the segments a consumer has not read yet: retention removes no
//! segment holding a sequence number at or above the hold, so the log exceeds its limits
//! instead of losing what the consumer still has to deliver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use net_storage::{AppendedBatch, ORIGIN_BYTES, Origin};

use crate::consumer::BatchConsumer;
use crate::ids::ShardId;
use crate::ring::{Ring, RingReader, RingWriter};

/// Head of a feed entry: the timestamp, then a flags word (bit 0: an origin block follows).
const HEAD_BYTES: usize = 16;
const FLAG_ORIGIN: u64 = 1;

/// One record received through a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRecord<'a> {
    /// Sequence number within the shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where it came from, for a mirrored event.
    pub origin: Option<Origin>,
    /// The payload as sent.
    pub payload: &'a [u8],
}

/// The shard's side: copies each completed batch into the ring while there is room.
pub(crate) struct FeedConsumer {
    writer: RingWriter,
}

impl FeedConsumer {
    pub(crate) fn new(ring: Arc<Ring>) -> FeedConsumer {
        FeedConsumer {
            writer: RingWriter::new(ring),
        }
    }
}

impl BatchConsumer for FeedConsumer {
    fn on_batch(&mut self, _shard: ShardId, batch: &AppendedBatch<'_>) -> bool {
        let w = &mut self.writer;
        w.enter_window();
        if w.is_closed() {
            // The reader is gone: nothing will read the ring again.
            w.leave_window();
            return true;
        }
        let mut all = true;
        let mut head = [0u8; HEAD_BYTES + ORIGIN_BYTES];
        for r in batch.records() {
            let origin_len = if r.origin.is_some() { ORIGIN_BYTES } else { 0 };
            let len = HEAD_BYTES + origin_len + r.payload.len();
            // An entry above half the ring may never fit; such records come from the log.
            let need = w.bytes_needed(len);
            if len as u64 > w.capacity_bytes() / 2 || !w.has_room(need) {
                all = false;
                break;
            }
            head[..8].copy_from_slice(&r.ts_ns.to_le_bytes());
            let flags = if r.origin.is_some() { FLAG_ORIGIN } else { 0 };
            head[8..16].copy_from_slice(&flags.to_le_bytes());
            if let Some(o) = r.origin {
                head[HEAD_BYTES..].copy_from_slice(&o.to_bytes());
            }
            w.stage_parts(r.seq, &head[..HEAD_BYTES + origin_len], r.payload);
        }
        w.publish();
        w.leave_window();
        all
    }
}

/// The consumer's side of a feed (see the module docs). `Send`, one per consumer thread;
/// dropping it closes the feed.
#[derive(Debug)]
pub struct FeedReader {
    ring: Arc<Ring>,
    reader: RingReader,
    shard: ShardId,
}

impl FeedReader {
    pub(crate) fn new(ring: Arc<Ring>, shard: ShardId) -> FeedReader {
        FeedReader {
            reader: RingReader::new(ring.clone()),
            ring,
            shard,
        }
    }

    /// The shard it follows.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Hands up to `max_records` received records to `f`, in sequence order (with jumps where
    /// records did not fit: read those from the log). `f` returns `false` to stop before
    /// taking that record (it is then handed again by the next call). Returns the number taken.
    pub fn drain(
        &mut self,
        max_records: usize,
        mut f: impl FnMut(FeedRecord<'_>) -> bool,
    ) -> usize {
        self.reader.drain(max_records, u64::MAX, |seq, bytes| {
            let word =
                |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let ts_ns = word(0);
            let (origin, body) = if word(8) & FLAG_ORIGIN != 0 {
                (
                    Origin::decode(&bytes[HEAD_BYTES..HEAD_BYTES + ORIGIN_BYTES]),
                    &bytes[HEAD_BYTES + ORIGIN_BYTES..],
                )
            } else {
                (None, &bytes[HEAD_BYTES..])
            };
            f(FeedRecord {
                seq,
                ts_ns,
                origin,
                payload: body,
            })
        })
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
    }
}

impl Drop for FeedReader {
    fn drop(&mut self) {
        self.ring.close();
    }
}

/// Keeps a shard's retention from removing segments at or above a position (see the module
/// docs). Made by [`crate::Bus::hold_retention`]; move it forward with [`RetentionHold::set`]
/// as the consumer's position advances; dropping it releases the hold.
#[derive(Debug)]
pub struct RetentionHold {
    at: Arc<AtomicU64>,
}

impl RetentionHold {
    pub(crate) fn new(at: Arc<AtomicU64>) -> RetentionHold {
        RetentionHold { at }
    }

    /// Lets retention remove segments whose records are all below `seq`.
    pub fn set(&self, seq: u64) {
        self.at.fetch_max(seq, Ordering::AcqRel);
    }

    /// The position held.
    pub fn get(&self) -> u64 {
        self.at.load(Ordering::Acquire)
    }
}
