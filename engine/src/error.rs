//! The engine's error types: [`Error`] for the bus and [`SendError`] for a producer's send.

use crate::ids::ShardId;

/// Errors of the bus, grouped by cause. Every message names the field, shard or file.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("config field `{field}`: {what}")]
    Config {
        /// Dotted path of the field (`batch.max_events`).
        field: String,
        /// What was wrong.
        what: String,
    },
    /// The bus could not start; the message says what to change.
    #[error("cannot start shard {shard}: {what}")]
    Start {
        /// The shard that failed to start.
        shard: u16,
        /// What failed and how to fix it.
        what: String,
    },
    /// A shard's log failed.
    #[error("shard {shard}: {source}")]
    Storage {
        /// The shard.
        shard: ShardId,
        /// The storage error.
        #[source]
        source: net_storage::StorageError,
    },
    /// The data dir cannot be used as a whole (another bus or `net-admin` holds it).
    #[error("{0}")]
    DataDir(#[source] net_storage::StorageError),
    /// A shard index this bus does not have.
    #[error("shard {shard} does not exist on this bus ({shards} shards)")]
    NoSuchShard {
        /// The shard asked for.
        shard: ShardId,
        /// Shards of this bus.
        shards: usize,
    },
    /// A cursor string or value that this bus cannot use.
    #[error("invalid cursor: {0}")]
    Cursor(String),
    /// A shard did not answer in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// The bus is shut down or a shard has stopped.
    #[error("the bus is shut down")]
    Closed,
    /// The mesh could not do what was asked (no mesh configured, an unknown peer, a bound
    /// reached); the message says which.
    #[error("mesh: {what}")]
    Mesh {
        /// What was wrong.
        what: String,
    },
    /// A shard's thread panicked.
    #[error("shard {shard} panicked: {message}")]
    ShardPanicked {
        /// The shard.
        shard: ShardId,
        /// The panic message.
        message: String,
    },
}

/// Why a producer's `send` did not accept an event. A refused event was not ingested and the
/// caller still owns it; nothing is counted except [`SendError::Full`] as `rejected`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The lane is full and the backpressure mode is `fail`.
    #[error("lane to shard {0} is full")]
    Full(ShardId),
    /// The bus is shutting down or shut down.
    #[error("the bus is shut down")]
    Closed,
    /// The shard's log failed or its thread died; the event is not durable (and, if the
    /// shard died, was not taken). `Bus::stats` has the failure.
    #[error("shard {0} failed before the event became durable")]
    Failed(ShardId),
    /// The shard stopped (shutdown past its deadline) before the event became durable.
    #[error("shard {0} stopped before the event became durable")]
    Stopped(ShardId),
    /// `send_to` named a shard this bus does not have.
    #[error("shard {shard} does not exist on this bus ({shards} shards)")]
    NoSuchShard {
        /// The index given.
        shard: usize,
        /// Shards of this bus.
        shards: usize,
    },
    /// The payload is larger than a lane or a batch can hold.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest accepted payload.
        max: usize,
    },
}
