//! Errors: a fold's refusal of one event, a snapshot that does not decode, and what the
//! cortex itself can fail at. Each says what was wrong and where.

use std::path::PathBuf;

use net_engine::EventId;

/// A fold could not apply an event. The error policy decides what happens next (see
/// [`crate::ErrorPolicy`]); the message is kept in the stats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FoldError {
    message: String,
}

impl FoldError {
    /// An error with this message (say what was wrong with the event).
    pub fn new(message: impl Into<String>) -> FoldError {
        FoldError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A state's bytes could not be decoded (a snapshot written by another version of the
/// state, or damaged in a way its checksum did not catch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> DecodeError {
        DecodeError(message.into())
    }
}

/// The event a fold stopped at, and why (under the `stop` policy, or a panic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldFailure {
    /// The event that failed; the fold's state and watermark stop just before it.
    pub event: EventId,
    /// What the fold said (or the panic's message).
    pub message: String,
}

impl std::fmt::Display for FoldFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {}: {}", self.event, self.message)
    }
}

/// What the cortex itself can fail at.
#[derive(Debug, thiserror::Error)]
pub enum CortexError {
    /// The configuration is invalid; says which field and why.
    #[error("cortex config: {0}")]
    Config(String),
    /// The bus refused something (registering a consumer, a reader of a shard).
    #[error("bus: {0}")]
    Bus(#[from] net_engine::Error),
    /// Reading a shard's log failed.
    #[error("reading shard {shard}'s log: {source}")]
    Log {
        shard: u16,
        source: net_engine::StorageError,
    },
    /// A snapshot file could not be written or listed.
    #[error("snapshot {path}: {source}")]
    SnapshotIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another cortex (in this process or another) holds the snapshot directory.
    #[error("snapshot directory {dir} is in use by another cortex (its LOCK is held)")]
    SnapshotDirInUse { dir: PathBuf },
    /// Snapshots were asked for but the config names no snapshot directory.
    #[error("snapshots are not configured (the config has no \"snapshot\" section)")]
    NoSnapshotDir,
    /// The shard does not exist on this bus.
    #[error("shard {shard} does not exist ({shards} shards)")]
    NoShard { shard: u16, shards: usize },
    /// The fold thread could not be started.
    #[error("starting the fold thread: {0}")]
    Thread(std::io::Error),
    /// The fold stopped (failure under `stop`, or a panic) before reaching what was asked.
    #[error("the fold on shard {shard} stopped: {failure}")]
    Stopped { shard: u16, failure: FoldFailure },
}
