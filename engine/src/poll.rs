//! Reading back: poll responses and the merger that interleaves shards fairly.
//!
//! The merger takes one event from each shard in turn (round robin, in shard order), so no
//! shard starves another within a response, and advances the cursor of each shard only past
//! events it actually returned. A poll that returns nothing echoes the cursor it was given
//! (v0.10 returned "no cursor", which callers took as "start over").

use bytes::Bytes;
use net_storage::Origin;

use crate::cursor::Cursor;
use crate::ids::{EventId, Seq, ShardId};

/// One event read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Where it is stored.
    pub id: EventId,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where the event came from, for one sent with its origin ([`crate::MirrorProducer`]);
    /// `None` for one sent by a [`crate::Producer`].
    pub origin: Option<Origin>,
    /// The payload, byte for byte as sent.
    pub payload: Bytes,
}

/// The answer to a poll.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct PollResponse {
    /// Events, interleaved fairly across shards; in sequence order within a shard.
    pub events: Vec<Event>,
    /// The cursor to poll with next; equal to the given cursor when nothing was returned.
    pub next: Cursor,
    /// Shards whose log could not be read, or that failed or died, with the error (their
    /// events already durable are still read when the log allows).
    pub failed_shards: Vec<(ShardId, crate::Error)>,
    /// Whether sequence numbers were passed over without events (removed by retention, or
    /// recorded as lost by an operator).
    pub skipped: bool,
}

/// Interleaves per-shard event lists round robin, at most `limit` events, and advances
/// `cursor` past what was taken.
pub(crate) fn merge(
    per_shard: Vec<(ShardId, Vec<Event>)>,
    limit: usize,
    cursor: &mut Cursor,
) -> Vec<Event> {
    let total: usize = per_shard.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(total.min(limit));
    // (shard, events, next event to take, next seq after the last taken)
    let mut lists: Vec<(ShardId, std::vec::IntoIter<Event>, Option<u64>)> = per_shard
        .into_iter()
        .map(|(s, v)| (s, v.into_iter(), None))
        .collect();
    while out.len() < limit {
        let mut progressed = false;
        for (_, it, next) in &mut lists {
            if out.len() == limit {
                break;
            }
            if let Some(e) = it.next() {
                *next = Some(e.id.seq.0 + 1);
                out.push(e);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for (shard, _, next) in lists {
        if let Some(next) = next {
            cursor
                .set(shard, Seq(next))
                .expect("a shard of this bus is below SHARDS_MAX");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(shard: u16, seq: u64) -> Event {
        Event {
            id: EventId {
                shard: ShardId(shard),
                seq: Seq(seq),
            },
            ts_ns: 0,
            origin: None,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn interleaves_fairly_and_advances_only_past_returned_events() {
        let mut cursor = Cursor::start();
        let input = vec![
            (ShardId(0), (0..5).map(|s| ev(0, s)).collect()),
            (ShardId(1), (10..12).map(|s| ev(1, s)).collect()),
            (ShardId(2), vec![]),
        ];
        let out = merge(input, 5, &mut cursor);
        let ids: Vec<(u16, u64)> = out.iter().map(|e| (e.id.shard.0, e.id.seq.0)).collect();
        assert_eq!(ids, vec![(0, 0), (1, 10), (0, 1), (1, 11), (0, 2)]);
        assert_eq!(cursor.next_seq(ShardId(0)), Seq(3));
        assert_eq!(cursor.next_seq(ShardId(1)), Seq(12));
        assert_eq!(
            cursor.shards().count(),
            2,
            "an empty shard's position is untouched"
        );
    }
}
