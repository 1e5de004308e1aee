//! Identifier newtypes: a shard, a sequence number within a shard, and an event's id.

use std::fmt;

/// A shard's index on this bus (`0..shards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// A sequence number within one shard; contiguous from 0 across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// The id of one event: the shard that stored it and its sequence number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The shard.
    pub shard: ShardId,
    /// The sequence number within the shard.
    pub seq: Seq,
}

impl ShardId {
    /// The id of the shard at `index` (`0..shards`, at most `SHARDS_MAX`).
    ///
    /// # Panics
    /// If `index` does not fit a u16 (the config bounds the shard count far below).
    pub fn from_index(index: usize) -> ShardId {
        ShardId(u16::try_from(index).expect("shard index fits u16"))
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shard.0, self.seq.0)
    }
}
