//! The event a fold is handed: a borrowed view of one stored record.
//!
//! It carries what [`net_engine::Event`] carries (id, timestamp, origin, payload) but borrows
//! the payload instead of owning a `Bytes`: on the shard thread the bytes are the batch that
//! was just written, and on the catch-up path they are a slice of the reader's chunk. So
//! handing an event to a fold copies nothing and allocates nothing.
//!
//! The payload is exactly the bytes that were sent. [`FoldEvent::json`] gives a JSON view of
//! them that checks they are one JSON value and returns the same bytes, never a re-encoding:
//! whitespace, key order and number spellings such as `1.0` survive.

use net_engine::{EventId, Origin, Seq, ShardId};
use serde_json::value::RawValue;

use crate::error::FoldError;

/// One event as a fold sees it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldEvent<'a> {
    /// Where it is stored: the shard and its sequence number there.
    pub id: EventId,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where it came from, for an event mirrored from another node's log; `None` for a local
    /// one.
    pub origin: Option<Origin>,
    /// The payload, byte for byte as sent.
    pub payload: &'a [u8],
}

impl<'a> FoldEvent<'a> {
    /// The shard that stored it.
    pub fn shard(&self) -> ShardId {
        self.id.shard
    }

    /// Its sequence number in that shard.
    pub fn seq(&self) -> u64 {
        self.id.seq.0
    }

    /// The payload as one JSON value, borrowed: the returned value's `get()` is the payload's
    /// text exactly (surrounding whitespace aside), never re-encoded. Fails, naming the event,
    /// when the payload is not UTF-8 JSON.
    pub fn json(&self) -> Result<&'a RawValue, FoldError> {
        serde_json::from_slice::<&RawValue>(self.payload)
            .map_err(|e| FoldError::new(format!("event {}: payload is not JSON: {e}", self.id)))
    }

    pub(crate) fn from_parts(
        shard: ShardId,
        seq: u64,
        ts_ns: u64,
        origin: Option<Origin>,
        payload: &'a [u8],
    ) -> FoldEvent<'a> {
        FoldEvent {
            id: EventId {
                shard,
                seq: Seq(seq),
            },
            ts_ns,
            origin,
            payload,
        }
    }
}
