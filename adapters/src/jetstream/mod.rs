//! NATS JetStream: a sink writing each shard's events to the subject `<prefix>.<shard>` of one
//! stream, and a source reading them back by cursor. `docs/adapters-jetstream.md` is the
//! user's guide (configuration, subjects and headers, error classes, shutdown, sizing).
//!
//! - [`config`]: what to connect to and how, validated before anything connects.
//! - [`classify`]: which client errors are transient (retried) and which are fatal.
//! - [`headers`]: the headers an event carries, and reading them back.
//! - `conn`: the connection shared by a sink's writers and sources, the shutdown flag, and
//!   the deadline and permission-error watch every request runs under.
//! - [`sink`]: the backend a sink drives, with a pipelined writer per shard.
//! - [`source`]: reading the stream back, batched, with stalls on undecodable messages.

pub mod classify;
pub mod config;
mod conn;
pub mod headers;
pub mod sink;
pub mod source;

pub use classify::{
    classify_batch, classify_cause, classify_code, classify_connect, classify_consumer,
    classify_core_request, classify_create_stream, classify_get_stream, classify_last_message,
    classify_publish, classify_request,
};
pub use config::JetStreamConfig;
pub use sink::{AckWaitHook, JetStreamSink, JetStreamWriter, PIPELINE_WINDOW, WriteReport};
pub use source::{JetStreamSource, MAX_FETCH};
