//! The events a sink hands its backend: a reusable batch of one shard's consecutive events,
//! kept as one byte buffer and one vector of offsets, so filling it allocates nothing once it
//! has grown to its working size.

use net_engine::Origin;

/// One event of an [`OutBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutEvent<'a> {
    /// The shard that stored it.
    pub shard: u16,
    /// Its sequence number in that shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where it came from, for an event mirrored from another node.
    pub origin: Option<Origin>,
    /// The payload, byte for byte.
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u64,
    ts_ns: u64,
    origin: Option<Origin>,
    start: usize,
    end: usize,
}

/// Consecutive events of one shard, in sequence order (sequence numbers may jump where the log
/// has a gap, never go back).
#[derive(Debug, Default)]
pub struct OutBatch {
    shard: u16,
    meta: Vec<Meta>,
    bytes: Vec<u8>,
}

impl OutBatch {
    /// An empty batch for `shard`.
    pub fn new(shard: u16) -> OutBatch {
        OutBatch {
            shard,
            ..OutBatch::default()
        }
    }

    /// The shard its events come from.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Empties it, keeping its buffers.
    pub fn clear(&mut self) {
        self.meta.clear();
        self.bytes.clear();
    }

    /// Appends an event; its `seq` must be above the last one's.
    pub fn push(&mut self, seq: u64, ts_ns: u64, origin: Option<Origin>, payload: &[u8]) {
        debug_assert!(self.meta.last().is_none_or(|m| m.seq < seq));
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.meta.push(Meta {
            seq,
            ts_ns,
            origin,
            start,
            end: self.bytes.len(),
        });
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The sequence number of the first event.
    pub fn first_seq(&self) -> Option<u64> {
        self.meta.first().map(|m| m.seq)
    }

    /// The sequence number of the last event.
    pub fn last_seq(&self) -> Option<u64> {
        self.meta.last().map(|m| m.seq)
    }

    /// The `i`-th event.
    pub fn get(&self, i: usize) -> OutEvent<'_> {
        let m = self.meta[i];
        OutEvent {
            shard: self.shard,
            seq: m.seq,
            ts_ns: m.ts_ns,
            origin: m.origin,
            payload: &self.bytes[m.start..m.end],
        }
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = OutEvent<'_>> + '_ {
        (0..self.meta.len()).map(|i| self.get(i))
    }

    /// Drops the events with `seq < from` (already held by the backend).
    pub fn drop_below(&mut self, from: u64) {
        let k = self.meta.partition_point(|m| m.seq < from);
        self.meta.drain(..k);
    }
}
