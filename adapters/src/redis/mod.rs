//! Redis Streams: a sink backend that writes each shard of a bus to its own stream, and a
//! source that reads those streams back by cursor.
//!
//! - [`config`]: what to connect to, the stream names, the timeouts, trimming, dedup sizing.
//! - [`classify`](classify()): which Redis errors are transient (retried) and which fatal.
//! - `conn`: connections, registered for `shutdown`, each command under the command timeout.
//! - `entry`: the entry format (`{ts_ms}-{seq}` ids; fields `id`, `ts`, `data`, `origin`).
//! - `sink`: [`RedisSink`] and its [`RedisWriter`]s (one pipeline of XADDs per batch,
//!   idempotent through the explicit entry ids).
//! - `source`: [`RedisSource`].
//!
//! One node (`url`) or a Redis Cluster (`cluster_nodes`) run the same code: both clients are
//! `redis::aio::ConnectionLike`. `docs/adapters-redis.md` is the user's guide.

mod classify;
mod config;
mod conn;
mod entry;
mod sink;
mod source;

pub use classify::classify;
pub use config::RedisConfig;
pub use sink::{RedisSink, RedisWriter};
pub use source::{MAX_READ, RedisSource};
