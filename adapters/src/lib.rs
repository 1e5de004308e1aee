//! net-adapters: sinks that carry a bus's log to Redis Streams or NATS JetStream, and sources
//! that import those streams into a bus.
//!
//! A sink is a durable consumer of the log: it follows each shard from the shard's completed
//! batches while it keeps up and by reading the log when it falls behind, writes to its backend
//! on its own thread (one thread per sink, a tokio current-thread runtime: the backends'
//! clients are tokio libraries), and checkpoints, per shard, the position the backend
//! confirmed. A slow or dead backend only grows the sink's lag; no shard ever waits for it.
//!
//! A source reads a backend's streams by a cursor that names its backend, and can import them
//! into a bus exactly once (the bus's log records where each imported event came from).

mod checkpoint;
mod error;
mod event;
mod import;
pub mod jetstream;
pub mod redis;
mod sink;
mod source;

pub use checkpoint::Checkpoint;
pub use error::{AdapterError, ErrorClass};
pub use event::{OutBatch, OutEvent};
pub use import::{ImportReport, Importer};
pub use sink::{
    RetentionPolicy, ShardWriter, Sink, SinkBackend, SinkConfig, SinkShardStats, SinkStats,
    SinkStatus,
};
pub use source::{Dedup, SourceCursor, SourceEvent, SourcePoll, StreamSource};
