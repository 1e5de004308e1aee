//! The Redis source: reads the shard streams `{prefix}:0..{prefix}:{shards}` back by cursor.
//!
//! A poll reads each shard with one `XRANGE key (<position> + COUNT n` under the command
//! timeout (the first read of a shard starts at `-`). The position of a shard is the id of the
//! last entry returned (or skipped as a duplicate), so the exclusive range never returns an
//! entry twice and never needs `limit + 1`. The limit is shared out over the shards in turn
//! (each gets an even share of what the shards before it left; the first shard read rotates
//! from poll to poll) with arithmetic that cannot overflow (`usize::MAX` is a valid limit),
//! and each read is capped at [`MAX_READ`], so a huge limit means "as much as one read per
//! shard returns", never an overflow or a count Redis refuses.
//!
//! A shard whose read fails is listed in `failed_shards`; the others' events are returned. An
//! entry that cannot be decoded stops its shard: the entries before it are returned with the
//! position at the last of them, so the next poll starts at the bad entry, and reports it (its
//! key, id and what is wrong) in `failed_shards` and `stalled_shards`, holding the shard there
//! until the operator moves past it with `SourceCursor::set(shard, "<bad entry id>")`.

use std::sync::Arc;

use redis::Value;

use super::config::RedisConfig;
use super::conn::{BACKEND, Link, Shared, unexpected};
use super::entry;
use crate::error::AdapterError;
use crate::source::{Dedup, SourceCursor, SourcePoll, StreamSource};

/// The most entries one read of one shard asks for: bounds a reply's size (and the time it
/// takes, which the command timeout must cover) whatever the limit.
pub const MAX_READ: usize = 1000;

/// Reads the shard streams a [`super::RedisSink`] writes. See the module docs.
#[derive(Debug)]
pub struct RedisSource {
    link: Link,
    shards: u16,
    dedup: Dedup,
    /// The shard the next poll reads first: rotated, so a limit below the shard count does
    /// not always serve the same shards.
    next_first: u16,
    scratch: String,
}

impl RedisSource {
    /// A source of its own (its own connection and shutdown). `config.shards` and
    /// `config.dedup_capacity` are required.
    pub fn new(config: RedisConfig) -> Result<RedisSource, AdapterError> {
        RedisSource::with_shared(Shared::new(config)?)
    }

    pub(crate) fn with_shared(shared: Arc<Shared>) -> Result<RedisSource, AdapterError> {
        let config = &shared.config;
        let Some(shards) = config.shards else {
            return Err(AdapterError::fatal(
                BACKEND,
                "redis config: `shards` is required by the source: the shard count of the bus \
                 that wrote the streams",
            ));
        };
        let Some(capacity) = config.dedup_capacity else {
            return Err(AdapterError::fatal(
                BACKEND,
                "redis config: `dedup_capacity` is required by the source: size it as events/s \
                 x seconds of overlap (10 000/s x 300 s = 3 000 000)",
            ));
        };
        let dedup = Dedup::new(capacity)?;
        Ok(RedisSource {
            link: Link::new(&shared),
            shards,
            dedup,
            next_first: 0,
            scratch: String::with_capacity(32),
        })
    }

    /// The dedup: how many duplicates it dropped, how many ids it remembers.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Drops the connection and refuses every later poll (shared with the sink it came from,
    /// if any).
    pub fn shutdown(&mut self) {
        self.link.shared().shutdown();
    }

    async fn read(&self, key: &str, start: &str, count: usize) -> Result<Value, AdapterError> {
        let what = format!("XRANGE {key} {start} + COUNT {count}");
        self.link
            .run(&what, |mut c| async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await
    }
}

impl StreamSource for RedisSource {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn poll(
        &mut self,
        cursor: &SourceCursor,
        limit: usize,
    ) -> Result<SourcePoll, AdapterError> {
        cursor.check_backend(BACKEND)?;
        if self.link.shared().is_closed() {
            return Err(Shared::shut_down_error("poll of the redis source"));
        }
        let mut out = SourcePoll::empty(cursor);
        if limit == 0 {
            return Ok(out);
        }
        let shards = self.shards;
        let mut budget = limit;
        let first = self.next_first % shards;
        self.next_first = (first + 1) % shards;
        for (visited, shard) in (first..shards).chain(0..first).enumerate() {
            if budget == 0 {
                break;
            }
            // An even share of what is left over the shards left, so what an empty shard does
            // not use goes to the others (`div_ceil` cannot overflow, even on usize::MAX).
            let left = usize::from(shards) - visited;
            let count = budget.div_ceil(left).clamp(1, MAX_READ).min(budget);
            let key = self.link.shared().config.key(shard);
            let start = match cursor.position(shard) {
                None => "-".to_owned(),
                Some(p) if entry::is_entry_id(p) => format!("({p}"),
                Some(p) => {
                    out.failed_shards.push((
                        shard,
                        AdapterError::fatal(
                            BACKEND,
                            format!(
                                "cursor position `{p}` of shard {shard} ({key}) is not a stream \
                                 entry id `<ms>-<seq>`: set it with SourceCursor::set"
                            ),
                        ),
                    ));
                    continue;
                }
            };
            let reply = match self.read(&key, &start, count).await {
                Ok(r) => r,
                Err(e) => {
                    out.failed_shards.push((shard, e));
                    continue;
                }
            };
            let what = format!("XRANGE {key} {start} + COUNT {count}");
            let entries = match entry::entries(reply) {
                Ok(es) => es,
                Err(e) => {
                    out.failed_shards.push((shard, unexpected(&what, e)));
                    continue;
                }
            };
            let mut last_good: Option<String> = None;
            for (n, raw) in entries.into_iter().enumerate() {
                let id = raw.id.clone();
                match raw.decode(shard) {
                    Ok(ev) => {
                        budget = budget.saturating_sub(1);
                        entry::id_field(&mut self.scratch, ev.shard, ev.seq);
                        if self.dedup.insert(self.scratch.as_bytes()) {
                            out.events.push(ev);
                        }
                        last_good = Some(id);
                    }
                    Err(wrong) => {
                        // Reported when it is the first entry read: the poll that returned
                        // the entries before it left the position just before it.
                        if n == 0 {
                            out.stalled_shards.push(shard);
                            out.failed_shards.push((
                                shard,
                                AdapterError::fatal(
                                    BACKEND,
                                    format!(
                                        "stream {key} entry {id} cannot be decoded: {wrong}; \
                                         shard {shard} is held at it: to move past it, \
                                         SourceCursor::set({shard}, \"{id}\")"
                                    ),
                                ),
                            ));
                        }
                        break;
                    }
                }
            }
            if let Some(id) = last_good {
                out.next.set(shard, &id)?;
            }
        }
        Ok(out)
    }
}
