//! The JetStream source: reads the shards' subjects back by cursor.
//!
//! A cursor holds, per shard, the stream sequence of the last message returned from
//! `<subject_prefix>.<shard>`. A poll reads the stream's info once (its last sequence, and
//! which shard subjects hold messages), then per shard with something new fetches up to its
//! share of the limit in one pull request from an ephemeral consumer filtered on that subject
//! and starting right after the cursor's position. The consumer is kept for the next poll
//! while the cursor continues where it stopped, so a follower costs one request per shard per
//! poll; it is never one request per message.
//!
//! Why a consumer and not the direct get API: servers before 2.11 have no batched direct get
//! (one message per request), and the client this crate uses offers none either; the
//! consumer path works on every server with JetStream.
//!
//! A failing info is a failed shard (every shard of the cursor, with the error), never an
//! empty stream. A message that cannot be decoded stops its shard: the poll returns the good
//! messages before it with the cursor on the last of them, and the next poll reports the bad
//! one (subject, stream sequence, what is wrong) in `failed_shards` and `stalled_shards`,
//! holding the shard there until the operator moves its position with
//! [`SourceCursor::set`](crate::SourceCursor::set).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::RequestError;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::classify::{classify_batch, classify_consumer, classify_request, refine};
use super::config::JetStreamConfig;
use super::conn::{BACKEND, Conn, Interrupted, Shared, concerns_api, denied, guarded, timed_out};
use super::headers::decode;
use crate::error::AdapterError;
use crate::source::{Dedup, SourceCursor, SourceEvent, SourcePoll, StreamSource};

/// The most messages one shard returns in one poll (a larger limit is shaped down to this).
pub const MAX_FETCH: usize = 4096;

/// A stream info request asking for the subjects under a filter, from `offset` on.
#[derive(Serialize)]
struct InfoRequest {
    subjects_filter: String,
    offset: usize,
}

/// The parts of a stream info reply a poll needs.
#[derive(Deserialize)]
struct InfoReply {
    state: InfoState,
    /// How many subjects match in all (present when the server pages them).
    #[serde(default)]
    total: Option<usize>,
}

#[derive(Deserialize)]
struct InfoState {
    last_seq: u64,
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

/// How long the server keeps a source's consumer after its last request.
const CONSUMER_IDLE: Duration = Duration::from_secs(60);

/// Reads a sink's stream back; see the module docs.
pub struct JetStreamSource {
    shared: Arc<Shared>,
    dedup: Dedup,
    /// Per shard, the consumer of the last poll and where it stands.
    consumers: BTreeMap<u16, Cached>,
    /// Per shard, the message it is held at.
    stalls: BTreeMap<u16, Stall>,
    /// Which shard goes first in the next poll (turns, so no shard starves the others).
    turn: usize,
}

impl fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamSource")
            .field("config", &self.shared.config)
            .field("dedup", &self.dedup)
            .field("consumers", &self.consumers.keys().collect::<Vec<_>>())
            .field("stalls", &self.stalls)
            .finish_non_exhaustive()
    }
}

struct Cached {
    consumer: PullConsumer,
    generation: u64,
    /// The stream sequence of the last message it delivered (the cursor position it serves).
    position: u64,
    /// The consumer sequence the next message must have (a jump means one was lost).
    next_consumer_seq: u64,
}

#[derive(Debug)]
struct Stall {
    position: u64,
    error: AdapterError,
}

/// What reading one shard gave.
struct ShardRead {
    events: Vec<SourceEvent>,
    /// The stream sequence of the last good message (the cursor's new position).
    position: u64,
    /// Messages consumed (returned or dropped as repeats).
    taken: usize,
    /// The first message that could not be decoded: its stream sequence and what is wrong.
    bad: Option<(u64, String)>,
}

impl JetStreamSource {
    /// Connects a source of its own for `config` (`dedup_capacity` required).
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamSource, AdapterError> {
        config.validate()?;
        let capacity = Self::capacity(&config)?;
        let shared = Shared::new(config);
        shared.connect().await?;
        Self::with_shared(shared, capacity)
    }

    pub(crate) fn capacity(config: &JetStreamConfig) -> Result<usize, AdapterError> {
        config.dedup_capacity.ok_or_else(|| {
            AdapterError::fatal(
                BACKEND,
                "jetstream config: `dedup_capacity` is required for a source: size it as \
                 events/s x the seconds two copies of one event can be apart",
            )
        })
    }

    pub(crate) fn with_shared(
        shared: Arc<Shared>,
        capacity: usize,
    ) -> Result<JetStreamSource, AdapterError> {
        Ok(JetStreamSource {
            shared,
            dedup: Dedup::new(capacity)?,
            consumers: BTreeMap::new(),
            stalls: BTreeMap::new(),
            turn: 0,
        })
    }

    /// The ids it remembers, and how many repeats it dropped.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Drains the connection (shared with the sink that made this source, if one did) and
    /// refuses every later poll.
    pub async fn shutdown(&mut self) {
        self.consumers.clear();
        if let Some(conn) = self.shared.shut_and_take() {
            // Reads only: nothing in flight is worth more than the timeout.
            let _ = super::conn::retire(conn, &self.shared.config).await;
        }
    }

    /// A handle on the stream (no request: the name was validated with the configuration).
    async fn stream(&self, conn: &Conn) -> Result<Stream<()>, AdapterError> {
        let name = &self.shared.config.stream;
        conn.js
            .get_stream_no_info(name)
            .await
            .map_err(|e| AdapterError::fatal(BACKEND, format!("stream `{name}`: {e}")))
    }

    /// The stream's last sequence and the shards whose subjects hold messages: one stream
    /// info request (more only when the server pages a very long subject list).
    async fn stream_state(&self, conn: &Conn) -> Result<(u64, Vec<u16>), AdapterError> {
        let config = &self.shared.config;
        let what = format!("reading the info of stream `{}`", config.stream);
        let prefix = format!("{}.", config.subject_prefix);
        let subject = format!("STREAM.INFO.{}", config.stream);
        let mut request = InfoRequest {
            subjects_filter: format!("{prefix}*"),
            offset: 0,
        };
        let work = async {
            let mut shards = Vec::new();
            loop {
                let reply: Response<InfoReply> = conn.js.request(subject.clone(), &request).await?;
                let info = match reply {
                    Response::Ok(info) => info,
                    Response::Err { error } => return Err(error.into()),
                };
                let page = info.state.subjects.unwrap_or_default();
                let got = page.len();
                for (subject, count) in page {
                    let shard = subject
                        .strip_prefix(prefix.as_str())
                        .and_then(|t| t.parse::<u16>().ok());
                    if let (Some(shard), true) = (shard, count > 0) {
                        shards.push(shard);
                    }
                }
                request.offset += got;
                if got == 0 || request.offset >= info.total.unwrap_or(0) {
                    return Ok::<_, RequestError>((info.state.last_seq, shards));
                }
            }
        };
        let deadline = Instant::now() + config.command_timeout();
        let mark = conn.events.mark();
        match guarded(&conn.events, mark, &concerns_api, deadline, work).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(AdapterError {
                backend: BACKEND,
                class: refine(classify_request(e.kind()), &e),
                message: format!("{what}: {e}"),
            }),
            Err(Interrupted::TimedOut) => Err(timed_out(&what, config)),
            Err(Interrupted::Denied(text)) => Err(denied(&what, &text)),
        }
    }

    /// A consumer of `shard`'s subject starting right after stream sequence `position`.
    async fn create_consumer(
        &self,
        conn: &Conn,
        subject: &str,
        position: u64,
    ) -> Result<Cached, AdapterError> {
        let config = &self.shared.config;
        let what = format!("creating a consumer of `{subject}` after stream sequence {position}");
        let consumer_config = PullConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position.saturating_add(1),
            },
            ack_policy: AckPolicy::None,
            filter_subject: subject.to_owned(),
            inactive_threshold: CONSUMER_IDLE,
            memory_storage: true,
            ..PullConfig::default()
        };
        let stream = self.stream(conn).await?;
        let deadline = Instant::now() + config.command_timeout();
        let mark = conn.events.mark();
        let got = guarded(
            &conn.events,
            mark,
            &concerns_api,
            deadline,
            stream.create_consumer(consumer_config),
        )
        .await;
        match got {
            Ok(Ok(consumer)) => Ok(Cached {
                consumer,
                generation: conn.generation,
                position,
                next_consumer_seq: 1,
            }),
            Ok(Err(e)) => Err(AdapterError {
                backend: BACKEND,
                class: refine(classify_consumer(&e.kind()), &e),
                message: format!("{what}: {e}"),
            }),
            Err(Interrupted::TimedOut) => Err(timed_out(&what, config)),
            Err(Interrupted::Denied(text)) => Err(denied(&what, &text)),
        }
    }

    /// Reads up to `share` messages of `shard` after stream sequence `position`.
    async fn read_shard(
        &mut self,
        conn: &Conn,
        shard: u16,
        position: u64,
        share: usize,
    ) -> Result<ShardRead, AdapterError> {
        let subject = self.shared.config.subject(shard);
        let cached = self
            .consumers
            .remove(&shard)
            .filter(|c| c.generation == conn.generation && c.position == position);
        let reused = cached.is_some();
        let mut consumer = match cached {
            Some(c) => c,
            None => self.create_consumer(conn, &subject, position).await?,
        };
        let mut fetched = self
            .fetch(conn, shard, &subject, &mut consumer, share)
            .await;
        if reused && fetched.as_ref().is_err() {
            // The kept consumer may be gone (idle too long, a server restart): once more with
            // a fresh one.
            consumer = self.create_consumer(conn, &subject, position).await?;
            fetched = self
                .fetch(conn, shard, &subject, &mut consumer, share)
                .await;
        }
        let (read, keep) = fetched?;
        if keep {
            consumer.position = read.position;
            self.consumers.insert(shard, consumer);
        }
        Ok(read)
    }

    /// One pull request on `consumer`. Returns what was read and whether the consumer can
    /// serve the next poll (not after a lost message, a bad one, or an error).
    async fn fetch(
        &mut self,
        conn: &Conn,
        shard: u16,
        subject: &str,
        consumer: &mut Cached,
        share: usize,
    ) -> Result<(ShardRead, bool), AdapterError> {
        let config = &self.shared.config;
        let start = consumer.position;
        let what = format!("reading `{subject}` after stream sequence {start}");
        let mut read = ShardRead {
            events: Vec::new(),
            position: start,
            taken: 0,
            bad: None,
        };
        // Why the read stopped early, when it did for something other than a bad message.
        let mut broken: Option<String> = None;
        let mut started: Option<async_nats::jetstream::consumer::pull::BatchError> = None;
        let dedup = &mut self.dedup;
        let next_seq = &mut consumer.next_consumer_seq;
        let pull = &consumer.consumer;
        let work = async {
            let mut batch = match pull.fetch().max_messages(share).messages().await {
                Ok(batch) => batch,
                Err(e) => {
                    started = Some(e);
                    return;
                }
            };
            while let Some(item) = batch.next().await {
                let message = match item {
                    Ok(message) => message,
                    Err(e) => {
                        broken = Some(e.to_string());
                        return;
                    }
                };
                let (stream_seq, consumer_seq, pending) = match message.info() {
                    Ok(i) => (i.stream_sequence, i.consumer_sequence, i.pending),
                    Err(e) => {
                        broken = Some(format!("a message without its stream position: {e}"));
                        return;
                    }
                };
                if consumer_seq != *next_seq || stream_seq <= read.position {
                    broken = Some(format!(
                        "message {consumer_seq} of the consumer (stream sequence {stream_seq}) \
                         follows message {} (stream sequence {}): one was lost on the way",
                        next_seq.saturating_sub(1),
                        read.position
                    ));
                    return;
                }
                *next_seq += 1;
                let headers = message.message.headers.as_ref();
                match decode(headers, shard) {
                    Ok(d) => {
                        read.position = stream_seq;
                        read.taken += 1;
                        // The id in its canonical form, on the stack.
                        let mut id = [0u8; 32];
                        let mut w = &mut id[..];
                        let _ = write!(w, "{}:{}", d.shard, d.seq);
                        let n = 32 - w.len();
                        if dedup.insert(&id[..n]) {
                            read.events.push(SourceEvent {
                                shard,
                                seq: d.seq,
                                ts_ns: d.ts_ns,
                                origin: d.origin,
                                payload: message.message.payload.clone(),
                            });
                        }
                    }
                    Err(why) => {
                        read.bad = Some((stream_seq, why));
                        return;
                    }
                }
                if pending == 0 {
                    // Nothing more on the subject now: no need to wait for the server to say so.
                    return;
                }
            }
        };
        let deadline = Instant::now() + config.command_timeout();
        let mark = conn.events.mark();
        let outcome = guarded(&conn.events, mark, &concerns_api, deadline, work).await;
        let failure = match outcome {
            Err(Interrupted::Denied(text)) => return Err(denied(&what, &text)),
            Err(Interrupted::TimedOut) => Some(timed_out(&what, config)),
            Ok(()) => match (started, broken) {
                (Some(e), _) => Some(AdapterError {
                    backend: BACKEND,
                    class: refine(classify_batch(e.kind()), &e),
                    message: format!("{what}: {e}"),
                }),
                (None, Some(why)) => {
                    Some(AdapterError::transient(BACKEND, format!("{what}: {why}")))
                }
                (None, None) => None,
            },
        };
        match failure {
            // What was read before the failure is good: return it (the next poll starts after
            // it with a fresh consumer, and reports the failure if it happens again first).
            Some(_) if read.taken > 0 => Ok((read, false)),
            Some(e) => Err(e),
            None => {
                let keep = read.bad.is_none();
                Ok((read, keep))
            }
        }
    }
}

impl StreamSource for JetStreamSource {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn poll(
        &mut self,
        cursor: &SourceCursor,
        limit: usize,
    ) -> Result<SourcePoll, AdapterError> {
        cursor.check_backend(BACKEND)?;
        let conn = self.shared.conn()?;
        let mut positions: BTreeMap<u16, u64> = BTreeMap::new();
        for shard in cursor.shards() {
            let text = cursor.position(shard).unwrap_or_default();
            let Ok(position) = text.parse::<u64>() else {
                return Err(AdapterError::fatal(
                    BACKEND,
                    format!(
                        "cursor position `{text}` of shard {shard} is not a JetStream stream \
                         sequence: set it to one with SourceCursor::set, or start again with \
                         SourceCursor::start(\"jetstream\")"
                    ),
                ));
            };
            positions.insert(shard, position);
        }
        let mut out = SourcePoll::empty(cursor);
        if limit == 0 {
            return Ok(out);
        }
        let (last_seq, with_messages) = match self.stream_state(&conn).await {
            Ok(state) => state,
            // Never an empty stream: every shard the cursor knows failed, with the reason; a
            // cursor that knows none has no shard to report it on.
            Err(e) if positions.is_empty() => return Err(e),
            Err(e) => {
                out.failed_shards = positions.keys().map(|s| (*s, e.clone())).collect();
                return Ok(out);
            }
        };
        let mut shards: Vec<u16> = positions.keys().copied().collect();
        shards.extend(with_messages);
        shards.sort_unstable();
        shards.dedup();
        let n = shards.len();
        if n == 0 {
            return Ok(out);
        }
        shards.rotate_left(self.turn % n);
        self.turn = self.turn.wrapping_add(1);
        let mut remaining = limit;
        for (i, shard) in shards.into_iter().enumerate() {
            let position = positions.get(&shard).copied().unwrap_or(0);
            if let Some(stall) = self.stalls.get(&shard) {
                if stall.position == position {
                    out.failed_shards.push((shard, stall.error.clone()));
                    out.stalled_shards.push(shard);
                    continue;
                }
                // The operator moved the cursor.
                self.stalls.remove(&shard);
            }
            if remaining == 0 || position >= last_seq {
                continue;
            }
            // This shard's share of what is left: shaped with saturating arithmetic, at least
            // one, at most one fetch's worth.
            let share = remaining.div_ceil(n - i).clamp(1, MAX_FETCH);
            match self.read_shard(&conn, shard, position, share).await {
                Ok(read) => {
                    remaining = remaining.saturating_sub(read.taken);
                    if read.position > position {
                        out.next.set(shard, &read.position.to_string())?;
                    }
                    out.events.extend(read.events);
                    if let Some((stream_seq, why)) = read.bad {
                        let subject = self.shared.config.subject(shard);
                        let error = AdapterError::fatal(
                            BACKEND,
                            format!(
                                "shard {shard}: the message at stream sequence {stream_seq} on \
                                 `{subject}` cannot be read: {why}; the shard is held before \
                                 it: to skip it, move the cursor with \
                                 SourceCursor::set({shard}, \"{stream_seq}\")"
                            ),
                        );
                        let fresh = read.position == position;
                        if fresh {
                            // Nothing good before it in this poll: report it now.
                            out.failed_shards.push((shard, error.clone()));
                            out.stalled_shards.push(shard);
                        }
                        self.stalls.insert(
                            shard,
                            Stall {
                                position: read.position,
                                error,
                            },
                        );
                    }
                }
                Err(e) => out.failed_shards.push((shard, e)),
            }
        }
        Ok(out)
    }
}
