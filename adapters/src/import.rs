//! Importing a backend's streams into a bus, exactly once across restarts.
//!
//! Each imported event is stored with an origin `(tag, shard, seq)`: `tag` names the import
//! (one value per backend and destination, chosen by the caller), `shard` and `seq` are the
//! event's id in the bus that wrote the stream. The bus's log is then the import's durable
//! position: at start the [`Importer`] reads, per shard, the highest origin seq stored under
//! its tag ([`Bus::origin_positions`]), and drops every event at or below it, so a crash
//! between storing events and saving the source cursor imports nothing twice, and a cursor
//! that restarts from the beginning of the streams costs reading, never duplicates.
//!
//! Events go to local shard `shard % shards` through a [`MirrorProducer`] that never drops:
//! a full lane is waited on (the import slows down, nothing is lost).

use std::collections::HashMap;
use std::time::Duration;

use net_engine::{Bus, MirrorProducer, Origin, SendError, ShardId};

use crate::error::AdapterError;
use crate::source::{SourceCursor, SourcePoll, StreamSource};

/// What one [`Importer::step`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportReport {
    /// Events stored in the bus.
    pub imported: u64,
    /// Events dropped because the bus already stored them (an earlier import).
    pub already_imported: u64,
    /// The poll that was imported (its `events` emptied): `next`, `failed_shards`,
    /// `stalled_shards`.
    pub poll: SourcePoll,
}

/// Imports a source's events into a bus (see the module docs).
#[derive(Debug)]
pub struct Importer {
    producer: MirrorProducer,
    tag: u64,
    /// Per source shard, the next seq not yet stored.
    next: HashMap<u16, u64>,
    imported: u64,
    already_imported: u64,
}

impl Importer {
    /// An importer into `bus` under `tag`. Reads the bus's logs once to find what this tag
    /// already imported (a full read: do it once, at start).
    pub fn new(bus: &Bus, tag: u64) -> Result<Importer, AdapterError> {
        let engine = |e: net_engine::Error| AdapterError::fatal("source", e.to_string());
        let positions = bus.origin_positions(Some(tag)).map_err(engine)?;
        let next = positions
            .into_iter()
            .map(|((_, shard), end)| (shard, end))
            .collect();
        Ok(Importer {
            producer: bus.mirror_producer().map_err(engine)?,
            tag,
            next,
            imported: 0,
            already_imported: 0,
        })
    }

    /// Per source shard, the next sequence number the import will store.
    pub fn positions(&self) -> &HashMap<u16, u64> {
        &self.next
    }

    /// Events stored, and events dropped as already stored, since this importer started.
    pub fn totals(&self) -> (u64, u64) {
        (self.imported, self.already_imported)
    }

    /// Polls `source` after `cursor` (up to `limit` events) and stores what the bus does not
    /// hold yet. The events are in the bus's lanes when this returns (`Bus::flush` makes them
    /// durable); save `report.poll.next` after that to resume there.
    pub async fn step<S: StreamSource>(
        &mut self,
        source: &mut S,
        cursor: &SourceCursor,
        limit: usize,
    ) -> Result<ImportReport, AdapterError> {
        let mut poll = source.poll(cursor, limit).await?;
        let shards = self.producer.shards();
        let (mut imported, mut already) = (0, 0);
        for e in poll.events.drain(..) {
            let next = self.next.entry(e.shard).or_insert(0);
            if e.seq < *next {
                already += 1;
                continue;
            }
            let origin = Origin {
                node: self.tag,
                shard: e.shard,
                seq: e.seq,
            };
            let local = ShardId(u16::try_from(usize::from(e.shard) % shards).expect("< shards"));
            loop {
                match self.producer.try_send(local, origin, &e.payload) {
                    Ok(()) => break,
                    Err(SendError::Full(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(err) => {
                        return Err(AdapterError::fatal(
                            "source",
                            format!(
                                "cannot store imported event {}:{} in shard {}: {err}",
                                e.shard, e.seq, local.0
                            ),
                        ));
                    }
                }
            }
            *next = e.seq + 1;
            imported += 1;
        }
        self.imported += imported;
        self.already_imported += already;
        Ok(ImportReport {
            imported,
            already_imported: already,
            poll,
        })
    }
}
