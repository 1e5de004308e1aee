//! The sink: a durable consumer of a bus's log that writes every event to a backend.
//!
//! DRIVER: see `Sink::start` (filled in by the core commit).

use std::future::Future;

use crate::error::AdapterError;
use crate::event::OutBatch;

/// A backend a [`Sink`] writes to (Redis Streams, JetStream). Its futures run on the sink's own
/// thread, in a tokio current-thread runtime, so they need not be `Send`.
pub trait SinkBackend: 'static {
    /// Writes one shard's events; owned by that shard's task.
    type Writer: ShardWriter;

    /// `"redis"` or `"jetstream"`: recorded in the sink's checkpoint and its cursors.
    fn backend(&self) -> &'static str;

    /// Where the events go, as text (such as `redis://127.0.0.1:16379 net`), recorded in the
    /// checkpoint so that a checkpoint kept for another destination is refused.
    fn destination(&self) -> String;

    /// Connects a writer for `shard` (and creates what it writes to, if needed).
    fn writer(&mut self, shard: u16) -> impl Future<Output = Result<Self::Writer, AdapterError>>;

    /// Checks the backend answers, on a connection of its own, under the command timeout.
    fn health(&mut self) -> impl Future<Output = Result<(), AdapterError>>;

    /// Drops the connections (draining what is in flight where the client can); afterwards
    /// every writer refuses with a fatal error.
    fn shutdown(&mut self) -> impl Future<Output = ()>;
}

/// Writes one shard's events to the backend.
pub trait ShardWriter: 'static {
    /// The highest sequence number of this shard the backend already holds, if it can tell
    /// (Redis: the stream's last entry; JetStream: the subject's last message). Read under the
    /// command timeout. The sink calls it at start and before retrying a failed write, and
    /// drops what the backend already holds, so a write that landed before its answer was
    /// lost is not written twice.
    fn last_held(&mut self) -> impl Future<Output = Result<Option<u64>, AdapterError>>;

    /// Writes `batch` (pipelined: about one round trip for the batch). `Ok` once the backend
    /// confirmed every event; on an error some prefix may have been written.
    fn write(&mut self, batch: &OutBatch) -> impl Future<Output = Result<(), AdapterError>>;
}
