//! net-engine: the thread-per-core event bus of net.
//!
//! One event's path: [`Producer::send`] writes the record in place into the lane (a bounded
//! SPSC ring) of the shard its key maps to; the shard (one thread pinned to one core, driving
//! its own io_uring) drains its lanes into a batch, stamps `(shard, seq, timestamp)`, and
//! appends the batch to its RedEX log with one write, group-committed by an `fdatasync` linked
//! behind it; completed batches go to the shard's batch consumers; [`Bus::poll`] reads events
//! back by [`Cursor`] on the caller's thread. No lock, allocation or syscall per event on
//! that path. Events mirrored from another node's log keep their [`Origin`]: a
//! [`MirrorProducer`] sends them the same way, and [`Event::origin`] returns it.

mod buckets;
mod bus;
mod clock;
pub mod config;
mod consumer;
mod control;
mod cursor;
mod error;
mod executor;
mod feed;
mod ids;
mod ingest;
mod json;
mod lane;
mod mesh;
mod mesh_shard;
mod mesh_stream;
mod mirror;
mod notify;
mod poll;
mod producer;
mod reactor;
mod ring;
mod shard;
mod stats;
mod streamer;
mod wake;

pub use buckets::{BUCKETS, Buckets};
pub use bus::{Bus, ShutdownReport};
pub use clock::{TimestampGenerator, monotonic_ns, realtime_ns};
pub use config::{
    Backpressure, BatchConfig, Config, FsyncPolicy, IdleConfig, IdleStrategy, LaneConfig,
    MeshConfig, PollConfig, RetentionConfig, StorageConfig,
};
pub use consumer::{BatchConsumer, ConsumerStats};
pub use cursor::Cursor;
pub use error::{Error, SendError};
pub use feed::{FeedReader, FeedRecord, RetentionHold};
pub use ids::{EventId, Seq, ShardId};
pub use mesh::{
    Inbox, MeshMessage, MeshShardStats, MeshStats, Peer, PeerSendError, PeerStats, StreamStats,
};
pub use mirror::MirrorProducer;
pub use net_storage::{
    AppendedBatch, AppendedRecord, LogView, ORIGIN_BYTES, Origin, ReadBatch, Reader, StorageError,
};
pub use net_transport::identity::{Identity, NodeId, Psk};
/// The log rate limiter of the library's per-packet and per-frame events, for the daemon's own.
pub use net_transport::ratelimit::RateLimit;
pub use net_transport::stats::{CountersSnapshot as MeshCounters, DropCause};
pub use notify::Notify;
pub use poll::{Event, PollResponse};
pub use producer::{BatchSent, Producer, Sent, shard_for_hash, shard_for_key};
pub use stats::{ShardFailure, ShardStats, Stats, StatsHandle, Totals};
