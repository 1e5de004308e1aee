//! The Redis sink backend: one stream per shard, one pipeline of XADDs per batch.
//!
//! Idempotence comes from the entry ids. An event's entry id is `{ts_ms}-{seq}`: a shard's
//! timestamps never go back (also across restarts) and its sequence numbers strictly increase,
//! so the ids of a shard's events strictly increase, and Redis refuses an XADD whose id is not
//! above the stream's last one. A retried write of an entry that already landed is therefore
//! refused instead of stored twice. The refusal alone does not prove the entry is ours: another
//! writer on the same stream (a second sink, another bus with the same prefix) gets the same
//! answer. So a refusal counts as "already held" only if the stream's last entry before our
//! first accepted one carries an `id` at or above the refused event's sequence number;
//! otherwise it is a conflict, fatal, naming the key and both ids.
//!
//! The replies of a pipeline are read one by one (the pipeline ignores errors, so every
//! command's own answer comes back): a batch may be partly written, and each answer decides
//! alone. A fatal answer anywhere wins over a transient one.

use std::sync::Arc;

use redis::{RedisResult, Value};

use super::classify::{classify, is_id_not_above_top};
use super::config::RedisConfig;
use super::conn::{BACKEND, Link, Shared, from_redis, unexpected};
use super::entry::{self, RawEntry};
use super::source::RedisSource;
use crate::error::{AdapterError, ErrorClass};
use crate::event::OutBatch;
use crate::sink::{ShardWriter, SinkBackend};

/// Writes a bus's shards to Redis Streams `{prefix}:{shard}`. See `docs/adapters-redis.md`.
#[derive(Debug)]
pub struct RedisSink {
    shared: Arc<Shared>,
    /// The health check's own connection, so that a writer's slow pipeline never delays it
    /// and its timeout never replaces a writer's connection.
    health: Link,
}

impl RedisSink {
    /// Validates `config` and prepares the client; connects when a writer or the health check
    /// first needs it.
    pub fn new(config: RedisConfig) -> Result<RedisSink, AdapterError> {
        let shared = Shared::new(config)?;
        let health = Link::new(&shared);
        Ok(RedisSink { shared, health })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// A source reading the streams this sink writes, sharing its shutdown: after
    /// [`SinkBackend::shutdown`] the source refuses too.
    pub fn source(&self) -> Result<RedisSource, AdapterError> {
        RedisSource::with_shared(Arc::clone(&self.shared))
    }

    /// A writer for `shard` that has not connected yet (the sink's `writer` connects first).
    fn new_writer(&self, shard: u16) -> RedisWriter {
        RedisWriter {
            link: Link::new(&self.shared),
            shard,
            key: self.shared.config.key(shard),
            maxlen: self.shared.config.maxlen,
            pipe: redis::pipe(),
            scratch: String::with_capacity(64),
        }
    }
}

impl SinkBackend for RedisSink {
    type Writer = RedisWriter;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn destination(&self) -> String {
        self.shared.config.destination()
    }

    /// Connects a writer for `shard`. A fatal connect error (bad credentials) is returned; a
    /// transient one is not: the writer connects again on its first command, whose error the
    /// sink retries.
    async fn writer(&mut self, shard: u16) -> Result<RedisWriter, AdapterError> {
        let w = self.new_writer(shard);
        match w.link.conn(&format!("writer of {}", w.key)).await {
            Ok(_) => Ok(w),
            Err(e) if e.is_transient() => Ok(w),
            Err(e) => Err(e),
        }
    }

    async fn health(&mut self) -> Result<(), AdapterError> {
        let what = "PING (health check)";
        let reply: Value = self
            .health
            .run(what, |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        match reply {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::BulkString(b) if b == b"PONG" => Ok(()),
            // A cluster connection may answer for every node it pinged.
            Value::Array(_) | Value::Map(_) => Ok(()),
            other => Err(unexpected(what, format!("{other:?}"))),
        }
    }

    async fn shutdown(&mut self) {
        self.shared.shutdown();
    }
}

/// Writes one shard's events to its stream. See the module docs.
#[derive(Debug)]
pub struct RedisWriter {
    link: Link,
    shard: u16,
    key: String,
    maxlen: Option<u64>,
    /// Reused for every batch (it ignores errors, so each command's reply is returned).
    pipe: redis::Pipeline,
    /// Entry ids and fields are formatted here, not in a fresh string per event.
    scratch: String,
}

impl RedisWriter {
    /// The stream it writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The last entry of the stream at or before `end` (`+` for the newest; `(<id>` for the
    /// newest below `<id>`), with its `id` field.
    async fn top(&self, end: &str) -> Result<Option<(String, (u16, u64))>, AdapterError> {
        let what = format!("XREVRANGE {} {end} - COUNT 1", self.key);
        let key = self.key.as_str();
        let reply: Value = self
            .link
            .run(&what, |mut c| async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let entries = entry::entries(reply).map_err(|e| unexpected(&what, e))?;
        let Some(top) = entries.into_iter().next() else {
            return Ok(None);
        };
        let RawEntry { ref id, .. } = top;
        let (shard, seq) = top.event_id().map_err(|e| {
            AdapterError::fatal(
                BACKEND,
                format!(
                    "{what}: the stream's entry {id} is not one of a net sink ({e}): another \
                     writer uses this stream"
                ),
            )
        })?;
        if shard != self.shard {
            return Err(AdapterError::fatal(
                BACKEND,
                format!(
                    "{what}: the stream's entry {id} holds event {shard}:{seq}, of shard {shard}, \
                     in the stream of shard {}: another writer uses this prefix",
                    self.shard
                ),
            ));
        }
        Ok(Some((top.id, (shard, seq))))
    }

    /// Checks that the events `0..refused` of `batch`, refused as not above the stream's top,
    /// are held: the entry before our first accepted one (or the last entry) must carry an
    /// `id` at or above the last refused event's.
    async fn check_refused(
        &mut self,
        batch: &OutBatch,
        refused: usize,
        first_accepted: Option<usize>,
    ) -> Result<(), AdapterError> {
        let end = match first_accepted {
            Some(i) => {
                entry::entry_id(&mut self.scratch, &batch.get(i));
                format!("({}", self.scratch)
            }
            None => "+".to_owned(),
        };
        let last_refused = batch.get(refused - 1);
        entry::entry_id(&mut self.scratch, &last_refused);
        let ours = self.scratch.clone();
        match self.top(&end).await? {
            Some((_, (_, held))) if last_refused.seq <= held => Ok(()),
            found => {
                let found = match found {
                    Some((id, (s, q))) => format!("its last entry {id} holds event {s}:{q}"),
                    None => "it has no entry".to_owned(),
                };
                Err(AdapterError::fatal(
                    BACKEND,
                    format!(
                        "XADD {key}: entry {ours} (event {shard}:{seq}) was refused as not above \
                         the stream's top, but {found}, below it: another writer (a second sink, \
                         or another bus with the prefix `{prefix}`) writes to {key}",
                        key = self.key,
                        shard = self.shard,
                        seq = last_refused.seq,
                        prefix = self.link.shared().config.prefix,
                    ),
                ))
            }
        }
    }
}

impl ShardWriter for RedisWriter {
    async fn last_held(&mut self) -> Result<Option<u64>, AdapterError> {
        Ok(self.top("+").await?.map(|(_, (_, seq))| seq))
    }

    async fn write(&mut self, batch: &OutBatch) -> Result<(), AdapterError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.shard() != self.shard {
            return Err(AdapterError::fatal(
                BACKEND,
                format!(
                    "the writer of {} was given a batch of shard {}",
                    self.key,
                    batch.shard()
                ),
            ));
        }
        let (first, last) = (batch.get(0).seq, batch.get(batch.len() - 1).seq);
        let what = format!(
            "XADD {} (pipeline of {} entries, events {}:{first}..={}:{last})",
            self.key,
            batch.len(),
            self.shard,
            self.shard
        );
        if self.link.shared().is_closed() {
            return Err(Shared::shut_down_error(&what));
        }

        self.pipe.clear();
        self.pipe.ignore_errors();
        for e in batch.iter() {
            self.pipe.cmd("XADD").arg(self.key.as_str());
            if let Some(n) = self.maxlen {
                self.pipe.arg("MAXLEN").arg("~").arg(n);
            }
            entry::entry_id(&mut self.scratch, &e);
            self.pipe.arg(self.scratch.as_str());
            entry::id_field(&mut self.scratch, e.shard, e.seq);
            self.pipe.arg("id").arg(self.scratch.as_str());
            self.pipe.arg("ts").arg(e.ts_ns).arg("data").arg(e.payload);
            if let Some(o) = &e.origin {
                entry::origin_field(&mut self.scratch, o);
                self.pipe.arg("origin").arg(self.scratch.as_str());
            }
        }

        let pipe = &self.pipe;
        let replies: Vec<RedisResult<Value>> = self
            .link
            .run(&what, |mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        if replies.len() != batch.len() {
            return Err(unexpected(
                &what,
                format!("{} replies for {} commands", replies.len(), batch.len()),
            ));
        }

        // Refusals of ids not above the top can only form a prefix of the batch (its ids
        // increase); one after an accepted entry means another writer wrote in between.
        let mut refused = 0;
        let mut first_accepted = None;
        let mut failure: Option<(usize, AdapterError)> = None;
        for (i, reply) in replies.iter().enumerate() {
            let err = match reply {
                Ok(_) => {
                    first_accepted.get_or_insert(i);
                    continue;
                }
                Err(e) if is_id_not_above_top(e) && first_accepted.is_none() => {
                    refused = i + 1;
                    continue;
                }
                Err(e) => e,
            };
            let ev = batch.get(i);
            entry::entry_id(&mut self.scratch, &ev);
            let mut error = from_redis(
                &format!(
                    "XADD {} entry {} (event {}:{}, command {} of the batch's {})",
                    self.key,
                    self.scratch,
                    self.shard,
                    ev.seq,
                    i + 1,
                    batch.len()
                ),
                err,
            );
            if is_id_not_above_top(err) {
                error.message.push_str(
                    ": refused after an earlier entry of the same batch was accepted: another \
                     writer writes to this stream",
                );
            }
            let fatal = classify(err) == ErrorClass::Fatal || is_id_not_above_top(err);
            if fatal {
                error.class = ErrorClass::Fatal;
            }
            match &failure {
                None => failure = Some((i, error)),
                Some((_, f)) if f.is_transient() && fatal => failure = Some((i, error)),
                Some(_) => {}
            }
        }
        if let Some((_, mut error)) = failure {
            let landed = replies.iter().filter(|r| r.is_ok()).count();
            error.message.push_str(&format!(
                " ({landed} of the batch's {} entries were written, {refused} were already held \
                 or refused)",
                batch.len()
            ));
            return Err(error);
        }
        if refused > 0 {
            self.check_refused(batch, refused, first_accepted).await?;
        }
        Ok(())
    }
}
