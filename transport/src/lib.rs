//! net-transport: the encrypted UDP mesh between net nodes.
//!
//! The protocol core is I/O-free (boringtun's `noise/` is the model): it takes bytes, a source
//! address and a clock reading, and returns bytes to send and what happened. The engine's
//! shards drive it over their own UDP sockets (`udp`), one socket per shard on the node's
//! port, with packet buffers from a bounded pool (`pool`). Subscriptions between nodes are
//! authorised by capability tokens (`token`): ed25519-signed, fixed-size, verified without
//! allocating, with bounded revocation and a per-subscriber cap on admitted subscriptions. A subscription
//! streams a publisher shard's log exactly once and in order (`stream`): the log is the
//! retransmit buffer, and credit keeps a slow subscriber from costing the publisher anything
//! but lag.

pub mod codec;
pub mod endpoint;
pub mod handshake;
pub mod identity;
pub mod pacer;
pub mod pool;
pub mod ratelimit;
pub mod replay;
pub mod stats;
pub mod stream;
pub mod token;
pub mod udp;
