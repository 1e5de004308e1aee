//! The events of `net-bench mesh` and the subscriber's check of every mirrored one.
//!
//! An event is `EVENT_BYTES` (100) bytes: its sequence number within its origin shard (which
//! is also the origin seq the publisher's log gives it: one producer per shard, nothing else
//! written there), the wall-clock time it was sent (`net_engine::realtime_ns`; for a paced
//! event, its intended send time), its origin shard, and a filler derived from shard and
//! sequence number, so that the subscriber recomputes every byte it should hold.

use crate::transport::{Mark, Seen};
use net_engine::Event;

/// Bytes of every event's payload.
pub const EVENT_BYTES: usize = 100;

const SEQ: std::ops::Range<usize> = 0..8;
const SENT: std::ops::Range<usize> = 8..16;
const SHARD: std::ops::Range<usize> = 16..18;
const FILLER: usize = 18;

/// Writes event `seq` of origin shard `shard`, sent at `sent_ns`, into `buf`.
pub fn write(buf: &mut [u8; EVENT_BYTES], shard: u16, seq: u64, sent_ns: u64) {
    buf[SEQ].copy_from_slice(&seq.to_le_bytes());
    buf[SENT].copy_from_slice(&sent_ns.to_le_bytes());
    buf[SHARD].copy_from_slice(&shard.to_le_bytes());
    fill(&mut buf[FILLER..], shard, seq);
}

/// The filler of event `seq` of `shard`: eight-byte words of a hash of both, each rotated
/// by its position (ten stores, not eighty).
fn fill(filler: &mut [u8], shard: u16, seq: u64) {
    let word = (seq ^ (u64::from(shard) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut chunks = filler.chunks_exact_mut(8);
    let mut rotation = 0;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word.rotate_left(rotation).to_le_bytes());
        rotation += 7;
    }
    let rest = chunks.into_remainder();
    let len = rest.len();
    rest.copy_from_slice(&word.rotate_left(rotation).to_le_bytes()[..len]);
}

fn u64_at(payload: &[u8], range: std::ops::Range<usize>) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&payload[range]);
    u64::from_le_bytes(bytes)
}

/// The wall-clock send time carried by an event's payload (of the right length).
pub fn sent_ns(payload: &[u8]) -> u64 {
    u64_at(payload, SENT)
}

/// Whether `payload` is exactly event `seq` of `shard` (whatever its send time).
fn is_event(payload: &[u8], shard: u16, seq: u64) -> bool {
    if payload.len() != EVENT_BYTES || u64_at(payload, SEQ) != seq {
        return false;
    }
    if payload[SHARD] != shard.to_le_bytes() {
        return false;
    }
    let mut want = [0u8; EVENT_BYTES - FILLER];
    fill(&mut want, shard, seq);
    payload[FILLER..] == want
}

/// Events per origin shard for `total` events over `shards` producers (one per shard): an
/// even share, the first shards taking one more when it does not divide.
pub fn per_shard(total: u64, shards: usize, shard: usize) -> u64 {
    let n = shards as u64;
    total / n + u64::from((shard as u64) < total % n)
}

/// What the subscriber found in its log: each origin shard must hold seqs `0..expected`
/// exactly once, in order, byte for byte as sent.
#[derive(Debug)]
pub struct MirrorCheck {
    origin: u64,
    expected: Vec<u64>,
    seen: Vec<Seen>,
    /// Per origin shard, the origin seq the next event should carry (for order).
    next: Vec<u64>,
    pub tally: CheckTally,
}

/// The counts of a `MirrorCheck`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckTally {
    /// Events expected in all.
    pub expected: u64,
    /// Distinct, correct events found.
    pub received: u64,
    /// Events found a second time (an origin seq already seen).
    pub duplicates: u64,
    /// Events out of origin-seq order within their shard.
    pub out_of_order: u64,
    /// Events whose payload is not what was sent for their origin seq.
    pub corrupt: u64,
    /// Events without an origin, of another node, in another shard than their origin shard,
    /// or beyond what was sent.
    pub foreign: u64,
}

impl CheckTally {
    /// Expected events never found.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Whether the mirror is exact.
    pub fn exact(&self) -> bool {
        self.lost() == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.corrupt == 0
            && self.foreign == 0
    }

    /// Sums two checks (of two runs).
    pub fn plus(self, other: CheckTally) -> CheckTally {
        CheckTally {
            expected: self.expected + other.expected,
            received: self.received + other.received,
            duplicates: self.duplicates + other.duplicates,
            out_of_order: self.out_of_order + other.out_of_order,
            corrupt: self.corrupt + other.corrupt,
            foreign: self.foreign + other.foreign,
        }
    }
}

impl MirrorCheck {
    /// A check of `total` events from node `origin` sent over `shards` origin shards.
    pub fn new(origin: u64, shards: usize, total: u64) -> MirrorCheck {
        let expected: Vec<u64> = (0..shards).map(|k| per_shard(total, shards, k)).collect();
        MirrorCheck {
            origin,
            seen: expected.iter().map(|&n| Seen::new(n)).collect(),
            next: vec![0; shards],
            tally: CheckTally {
                expected: total,
                ..CheckTally::default()
            },
            expected,
        }
    }

    /// Checks one event read from the subscriber's bus; returns its origin shard and seq
    /// when it is a new, correct event.
    pub fn check(&mut self, event: &Event) -> Option<(u16, u64)> {
        let Some(origin) = event.origin else {
            self.tally.foreign += 1;
            return None;
        };
        let k = usize::from(origin.shard);
        if origin.node != self.origin || event.id.shard.0 != origin.shard || k >= self.seen.len() {
            self.tally.foreign += 1;
            return None;
        }
        if origin.seq >= self.expected[k] {
            self.tally.foreign += 1;
            return None;
        }
        if !is_event(&event.payload, origin.shard, origin.seq) {
            self.tally.corrupt += 1;
            return None;
        }
        if origin.seq != self.next[k] {
            self.tally.out_of_order += 1;
        }
        self.next[k] = self.next[k].max(origin.seq + 1);
        match self.seen[k].mark(origin.seq) {
            Mark::New => {
                self.tally.received += 1;
                Some((origin.shard, origin.seq))
            }
            Mark::Duplicate => {
                self.tally.duplicates += 1;
                None
            }
            Mark::OutOfRange => {
                self.tally.foreign += 1;
                None
            }
        }
    }

    /// Whether every expected event was found.
    pub fn complete(&self) -> bool {
        self.tally.received == self.tally.expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use net_engine::{EventId, Origin, Seq, ShardId};

    fn event(node: u64, shard: u16, seq: u64, payload: Vec<u8>) -> Event {
        Event {
            id: EventId {
                shard: ShardId(shard),
                seq: Seq(seq),
            },
            ts_ns: 0,
            origin: Some(Origin { node, shard, seq }),
            payload: Bytes::from(payload),
        }
    }

    fn bytes(shard: u16, seq: u64) -> Vec<u8> {
        let mut buf = [0u8; EVENT_BYTES];
        write(&mut buf, shard, seq, 42);
        buf.to_vec()
    }

    #[test]
    fn events_round_trip_and_differ() {
        let a = bytes(0, 7);
        assert!(is_event(&a, 0, 7));
        assert_eq!(sent_ns(&a), 42);
        assert!(!is_event(&a, 1, 7) && !is_event(&a, 0, 8));
        assert_ne!(a[FILLER..], bytes(0, 8)[FILLER..]);
        let mut flipped = a.clone();
        flipped[EVENT_BYTES - 1] ^= 1;
        assert!(!is_event(&flipped, 0, 7));
        assert_eq!(
            (per_shard(5, 2, 0), per_shard(5, 2, 1), per_shard(4, 2, 1)),
            (3, 2, 2)
        );
    }

    #[test]
    fn the_check_counts_every_kind_of_fault() {
        let mut c = MirrorCheck::new(9, 2, 4); // seqs 0..2 on each shard
        assert_eq!(c.check(&event(9, 0, 0, bytes(0, 0))), Some((0, 0)));
        assert_eq!(c.check(&event(9, 1, 1, bytes(1, 1))), Some((1, 1))); // out of order
        assert_eq!(c.check(&event(9, 1, 0, bytes(1, 0))), Some((1, 0))); // out of order
        assert_eq!(c.check(&event(9, 0, 0, bytes(0, 0))), None); // duplicate
        assert_eq!(c.check(&event(8, 0, 1, bytes(0, 1))), None); // another node
        assert_eq!(c.check(&event(9, 0, 2, bytes(0, 2))), None); // beyond what was sent
        assert_eq!(c.check(&event(9, 0, 1, bytes(1, 1))), None); // wrong payload
        assert!(!c.complete());
        let t = c.tally;
        assert_eq!((t.received, t.lost(), t.duplicates), (3, 1, 1));
        assert_eq!((t.out_of_order, t.corrupt, t.foreign), (3, 1, 2));
        assert!(!t.exact());
        assert_eq!(c.check(&event(9, 0, 1, bytes(0, 1))), Some((0, 1)));
        assert!(c.complete());
    }
}
