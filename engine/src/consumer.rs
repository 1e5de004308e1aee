//! Batch consumers: code that runs on a shard right after each batch completes, handed the
//! batch's records as a borrowed view of the bytes that were just written (no copy, no
//! allocation). Folds, the mesh publisher and sink feeds are such consumers.
//!
//! The contract keeps the shard's hot path safe from slow consumers: `on_batch` runs on the
//! shard thread and must not block. A consumer that cannot take a batch now (its queue to its
//! own thread is full, its backend is down) returns `false`; the shard moves on, and the
//! consumer catches up later by reading the log by cursor on its own thread (a
//! [`net_storage::Reader`] from [`crate::Bus::shard_reader`]). The shard records, per
//! consumer, the end of the last batch it took, so its lag is in the stats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use net_storage::AppendedBatch;

use crate::ids::ShardId;

/// A consumer of a shard's completed batches (see the module docs).
pub trait BatchConsumer: Send {
    /// Called on the shard thread, in sequence order, once per completed batch (durable under
    /// the fsync policy). Returns whether the consumer took the batch; must not block.
    fn on_batch(&mut self, shard: ShardId, batch: &AppendedBatch<'_>) -> bool;
}

/// What a shard records about one consumer (one writer: the shard).
#[derive(Debug, Default)]
pub(crate) struct ConsumerCounters {
    pub(crate) name: String,
    /// One past the last record of the last batch the consumer took.
    pub(crate) delivered_end: AtomicU64,
    pub(crate) batches_taken: AtomicU64,
    pub(crate) batches_refused: AtomicU64,
}

impl ConsumerCounters {
    pub(crate) fn new(name: String) -> ConsumerCounters {
        ConsumerCounters {
            name,
            ..ConsumerCounters::default()
        }
    }
}

/// A consumer's figures in [`crate::ShardStats`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The name it was registered with.
    pub name: String,
    /// One past the last record of the last batch it took.
    pub delivered_end: u64,
    /// Records completed on the shard beyond `delivered_end`.
    pub lag: u64,
    /// Batches it took.
    pub batches_taken: u64,
    /// Batches it refused (and reads from the log instead).
    pub batches_refused: u64,
}

impl ConsumerStats {
    pub(crate) fn read(c: &ConsumerCounters, visible_end: u64) -> ConsumerStats {
        let delivered_end = c.delivered_end.load(Ordering::Acquire);
        ConsumerStats {
            name: c.name.clone(),
            delivered_end,
            lag: visible_end.saturating_sub(delivered_end),
            batches_taken: c.batches_taken.load(Ordering::Relaxed),
            batches_refused: c.batches_refused.load(Ordering::Relaxed),
        }
    }
}

/// A shard's consumers, and the tally every shard keeps.
pub(crate) struct Consumers {
    shard: ShardId,
    list: Vec<(Box<dyn BatchConsumer>, Arc<ConsumerCounters>)>,
    /// The built-in consumer: payload bytes appended (for stats).
    payload_bytes: u64,
    payload_bytes_out: Arc<AtomicU64>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("shard", &self.shard)
            .field("consumers", &self.list.len())
            .finish()
    }
}

impl Consumers {
    pub(crate) fn new(shard: ShardId, payload_bytes_out: Arc<AtomicU64>) -> Consumers {
        let payload_bytes = payload_bytes_out.load(Ordering::Relaxed);
        Consumers {
            shard,
            list: Vec::new(),
            payload_bytes,
            payload_bytes_out,
        }
    }

    pub(crate) fn add(
        &mut self,
        consumer: Box<dyn BatchConsumer>,
        counters: Arc<ConsumerCounters>,
    ) {
        self.list.push((consumer, counters));
    }

    /// Hands a completed batch to the tally and every consumer.
    pub(crate) fn deliver(&mut self, batch: &AppendedBatch<'_>) {
        for r in batch.records() {
            self.payload_bytes += r.payload.len() as u64;
        }
        self.payload_bytes_out
            .store(self.payload_bytes, Ordering::Release);
        for (consumer, counters) in &mut self.list {
            if consumer.on_batch(self.shard, batch) {
                counters
                    .delivered_end
                    .store(batch.end_seq, Ordering::Release);
                let n = counters.batches_taken.load(Ordering::Relaxed) + 1;
                counters.batches_taken.store(n, Ordering::Relaxed);
            } else {
                let n = counters.batches_refused.load(Ordering::Relaxed) + 1;
                counters.batches_refused.store(n, Ordering::Relaxed);
            }
        }
    }
}
