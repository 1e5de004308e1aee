//! The JetStream sink: one client shared by every shard's writer, each writer publishing its
//! shard's batches to `<subject_prefix>.<shard>`, pipelined.
//!
//! Pipelined means a batch costs about one round trip, not one per event: the writer hands
//! every publish of the batch to the client first (the client queues it and writes it out; it
//! does not wait for the server), keeping each publish's acknowledgement future, and only then
//! waits for all the acknowledgements together, under one deadline (`command_timeout_ms`).
//! A batch larger than [`PIPELINE_WINDOW`] goes out in windows of that size, one round trip
//! each, so the futures held at once stay bounded.
//!
//! Each publish carries `Nats-Msg-Id: <shard>:<seq>`: the server drops a repeat of an id it
//! stored within the stream's duplicate window and acknowledges it as a duplicate, which the
//! writer counts as success (the stream already holds the event). A batch that failed part
//! way may have left publishes on the wire whose acknowledgements were lost; the sink's retry
//! reads [`ShardWriter::last_held`] and drops what the stream holds, and the duplicate window
//! catches any that landed after that read.

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{Context, ContextBuilder, ErrorCode};
use async_nats::{Client, Subject};
use bytes::Bytes;
use tokio::time::Instant;

use super::classify::{classify_last_message, classify_publish, refine};
use super::config::{JetStreamConfig, redact_url};
use super::conn::{
    BACKEND, Conn, Interrupted, Shared, StreamFacts, concerns_api, concerns_inbox, connect, denied,
    ensure_stream, guarded, is_violation, retire, stream_facts, timed_out,
};
use super::headers::{MSG_ID, event_headers, parse_msg_id};
use super::source::JetStreamSource;
use crate::error::AdapterError;
use crate::event::OutBatch;
use crate::sink::{ShardWriter, SinkBackend};

/// The most publishes a writer has in flight at once; a larger batch goes out in windows of
/// this size, one round trip each.
pub const PIPELINE_WINDOW: usize = 4096;

/// A sink backend writing to a JetStream stream; see the module docs.
#[derive(Debug)]
pub struct JetStreamSink {
    shared: Arc<Shared>,
    /// The stream's subjects, read (or created) once per connection.
    facts: Option<(u64, StreamFacts)>,
    drained: u64,
    drain_error: Option<AdapterError>,
}

impl JetStreamSink {
    /// A sink for `config` (validated here; nothing connects until the first writer).
    pub fn new(config: JetStreamConfig) -> Result<JetStreamSink, AdapterError> {
        config.validate()?;
        Ok(JetStreamSink {
            shared: Shared::new(config),
            facts: None,
            drained: 0,
            drain_error: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &JetStreamConfig {
        &self.shared.config
    }

    /// The client in use: `None` before the first writer connects and after `shutdown`.
    pub fn client(&self) -> Option<Client> {
        self.shared.current().map(|c| c.client)
    }

    /// Whether `shutdown` ran and nothing initialised the sink again since.
    pub fn is_shut_down(&self) -> bool {
        self.shared.is_shut()
    }

    /// How many clients this sink drained (at shutdown, or before replacing one).
    pub fn drained_clients(&self) -> u64 {
        self.drained
    }

    /// The duplicate window of the stream as the server reported it when the first writer of
    /// the current connection read (or created) the stream.
    pub fn stream_duplicate_window(&self) -> Option<std::time::Duration> {
        self.facts.as_ref().map(|(_, f)| f.duplicate_window)
    }

    /// Why the last drain did not finish, if it did not.
    pub fn last_drain_error(&self) -> Option<&AdapterError> {
        self.drain_error.as_ref()
    }

    /// Replaces the client with a new connection (new credentials, a client that closed):
    /// drains the current one first, so what was handed to it still reaches the server.
    /// Writers keep working: each uses the current client on its next call.
    pub async fn reconnect(&mut self) -> Result<(), AdapterError> {
        self.init_after_shutdown();
        if let Some(old) = self.shared.take() {
            self.retire(old).await;
        }
        self.shared.connect().await?;
        Ok(())
    }

    /// A source reading this sink's stream over the sink's connection (shut down with it).
    /// Its dedup capacity is the configuration's `dedup_capacity` (required).
    pub async fn source(&mut self) -> Result<JetStreamSource, AdapterError> {
        let capacity = JetStreamSource::capacity(&self.shared.config)?;
        self.connected().await?;
        JetStreamSource::with_shared(Arc::clone(&self.shared), capacity)
    }

    /// After a shutdown, a new start: old writers keep the old (shut) state and refuse.
    fn init_after_shutdown(&mut self) {
        if self.shared.is_shut() {
            self.shared = Shared::new(self.shared.config.clone());
            self.facts = None;
        }
    }

    /// The current connection, connecting (or replacing a client that closed, draining it
    /// first) when needed.
    async fn connected(&mut self) -> Result<Conn, AdapterError> {
        self.init_after_shutdown();
        if let Some(conn) = self.shared.current() {
            if !conn.events.is_closed() {
                return Ok(conn);
            }
        }
        if let Some(old) = self.shared.take() {
            self.retire(old).await;
        }
        self.shared.connect().await
    }

    async fn retire(&mut self, conn: Conn) {
        self.drained += 1;
        self.drain_error = retire(conn, &self.shared.config).await.err();
    }
}

impl SinkBackend for JetStreamSink {
    type Writer = JetStreamWriter;

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn destination(&self) -> String {
        let c = &self.shared.config;
        format!(
            "{} stream {} subjects {}.<shard>",
            redact_url(&c.url),
            c.stream,
            c.subject_prefix
        )
    }

    async fn writer(&mut self, shard: u16) -> Result<JetStreamWriter, AdapterError> {
        let conn = self.connected().await?;
        let config = &self.shared.config;
        let facts = match &self.facts {
            Some((generation, facts)) if *generation == conn.generation => facts.clone(),
            _ => {
                let facts = ensure_stream(&conn, config).await?;
                self.facts = Some((conn.generation, facts.clone()));
                facts
            }
        };
        let subject = config.subject(shard);
        facts.check_covers(config, &subject)?;
        Ok(JetStreamWriter::new(
            Arc::clone(&self.shared),
            shard,
            subject,
        ))
    }

    async fn health(&mut self) -> Result<(), AdapterError> {
        let config = &self.shared.config;
        let (client, events) = connect(config).await?;
        let js = ContextBuilder::new()
            .timeout(config.command_timeout())
            .build(client.clone());
        let conn = Conn {
            client,
            js,
            events,
            generation: 0,
        };
        let answer = match stream_facts(&conn, config).await {
            Ok(Some(_)) => Ok(()),
            // The first writer creates it.
            Ok(None) if config.create_stream => Ok(()),
            Ok(None) => Err(AdapterError::fatal(
                BACKEND,
                format!(
                    "stream `{}` does not exist and create_stream is false",
                    config.stream
                ),
            )),
            Err(e) => Err(e),
        };
        // A health check's own connection: nothing of value is in flight on it.
        let _ = retire(conn, config).await;
        answer
    }

    async fn shutdown(&mut self) {
        if let Some(conn) = self.shared.shut_and_take() {
            self.retire(conn).await;
        }
        self.facts = None;
    }
}

/// What the last [`JetStreamWriter::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Events in the batch.
    pub events: usize,
    /// Windows the batch went out in (round trips; one unless the batch exceeded
    /// [`PIPELINE_WINDOW`]).
    pub windows: usize,
    /// Publishes handed to the client, with their acknowledgements outstanding, when the
    /// writer began waiting for the first acknowledgement.
    pub in_flight_at_first_ack_wait: usize,
    /// Acknowledgements received.
    pub acked: usize,
    /// Of those, the ones the server marked duplicate (already held; counted as success).
    pub duplicates: usize,
}

/// Called with the number of acknowledgements outstanding at the moment a write begins to
/// wait for its first one.
pub type AckWaitHook = Box<dyn FnMut(usize)>;

/// Publishes one shard's batches; see the module docs.
pub struct JetStreamWriter {
    shared: Arc<Shared>,
    shard: u16,
    subject: Subject,
    /// `"<subject>"`, as the server quotes it in a permission violation.
    quoted: String,
    /// This writer's own JetStream context (its own in-flight limit), per connection.
    context: Option<(u64, Context)>,
    acks: Vec<PublishAckFuture>,
    last: WriteReport,
    hook: Option<AckWaitHook>,
}

impl fmt::Debug for JetStreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamWriter")
            .field("shard", &self.shard)
            .field("subject", &self.subject.as_str())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// Where a failed publish was, for its error message.
struct At<'a> {
    subject: &'a str,
    shard: u16,
    seq: u64,
    index: usize,
    count: usize,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "publishing event {}:{} ({} of {}) to `{}`",
            self.shard,
            self.seq,
            self.index + 1,
            self.count,
            self.subject
        )
    }
}

impl JetStreamWriter {
    fn new(shared: Arc<Shared>, shard: u16, subject: String) -> JetStreamWriter {
        JetStreamWriter {
            shared,
            shard,
            quoted: format!("\"{subject}\""),
            subject: Subject::from(subject),
            context: None,
            acks: Vec::new(),
            last: WriteReport::default(),
            hook: None,
        }
    }

    /// The shard it writes.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// What the last write did.
    pub fn last_write(&self) -> WriteReport {
        self.last
    }

    /// Sets a hook called at the moment each write begins to wait for its first
    /// acknowledgement, with the number outstanding (diagnostics and tests).
    pub fn set_ack_wait_hook(&mut self, hook: Option<AckWaitHook>) {
        self.hook = hook;
    }

    /// The fatal or transient error for a failed publish or acknowledgement.
    async fn publish_failed(
        conn: &Conn,
        config: &JetStreamConfig,
        at: At<'_>,
        e: PublishError,
    ) -> AdapterError {
        let class = refine(classify_publish(e.kind()), &e);
        if e.kind() == PublishErrorKind::StreamNotFound {
            // Nobody answered: the stream is gone, no longer covers the subject, or is
            // briefly unavailable. The JetStream API tells which.
            return match stream_facts(conn, config).await {
                Ok(None) => AdapterError::fatal(
                    BACKEND,
                    format!(
                        "{at}: stream `{}` does not exist (was it deleted?)",
                        config.stream
                    ),
                ),
                Ok(Some(facts)) => match facts.check_covers(config, at.subject) {
                    Err(e) => AdapterError::fatal(BACKEND, format!("{at}: {}", e.message)),
                    Ok(()) => AdapterError::transient(
                        BACKEND,
                        format!("{at}: no responders (the stream is not answering yet)"),
                    ),
                },
                Err(check) => AdapterError {
                    backend: BACKEND,
                    class: check.class,
                    message: format!("{at}: no responders, and {}", check.message),
                },
            };
        }
        AdapterError {
            backend: BACKEND,
            class,
            message: format!("{at}: {e}"),
        }
    }
}

fn writer_context(
    slot: &mut Option<(u64, Context)>,
    conn: &Conn,
    config: &JetStreamConfig,
) -> Context {
    if let Some((generation, context)) = slot {
        if *generation == conn.generation {
            return context.clone();
        }
    }
    // The write's own deadline bounds every wait; the client's timeouts are only a backstop
    // (longer, so the error that ends a write names the batch, not one message).
    let context = ContextBuilder::new()
        .timeout(config.command_timeout().saturating_mul(2))
        .ack_timeout(config.command_timeout())
        .max_ack_inflight(PIPELINE_WINDOW)
        .backpressure_on_inflight(true)
        .build(conn.client.clone());
    *slot = Some((conn.generation, context.clone()));
    context
}

impl ShardWriter for JetStreamWriter {
    /// No: the client re-sends publishes it had buffered when its connection broke, once it
    /// reconnects, so the stream can hold later events of a failed batch without earlier
    /// ones. The sink then retries a failed batch whole; `Nats-Msg-Id` drops what is there.
    fn holds_a_prefix(&self) -> bool {
        false
    }

    async fn last_held(&mut self) -> Result<Option<u64>, AdapterError> {
        let conn = self.shared.conn()?;
        let config = &self.shared.config;
        let subject = self.subject.as_str();
        let what = format!(
            "reading the last message of `{subject}` in stream `{}`",
            config.stream
        );
        let stream = conn
            .js
            .get_stream_no_info(&config.stream)
            .await
            .map_err(|e| AdapterError::fatal(BACKEND, format!("{what}: {e}")))?;
        let deadline = Instant::now() + config.command_timeout();
        let mark = conn.events.mark();
        let got = guarded(
            &conn.events,
            mark,
            &concerns_api,
            deadline,
            stream.get_last_raw_message_by_subject(subject),
        )
        .await;
        let message = match got {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                let kind = e.kind();
                if kind == LastRawMessageErrorKind::NoMessageFound {
                    return Ok(None);
                }
                if let LastRawMessageErrorKind::JetStream(js) = &kind {
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND {
                        return Err(AdapterError::fatal(
                            BACKEND,
                            format!("{what}: the stream does not exist (was it deleted?): {e}"),
                        ));
                    }
                }
                let class = refine(classify_last_message(&kind), &e);
                return Err(AdapterError {
                    backend: BACKEND,
                    class,
                    message: format!("{what}: {e}"),
                });
            }
            Err(Interrupted::TimedOut) => return Err(timed_out(&what, config)),
            Err(Interrupted::Denied(text)) => return Err(denied(&what, &text)),
        };
        let foreign = |why: String| {
            AdapterError::fatal(
                BACKEND,
                format!(
                    "{what}: its last message (stream sequence {}) {why}: something other than \
                     a net sink publishes to this subject",
                    message.sequence
                ),
            )
        };
        let Some(id) = message.headers.get(MSG_ID) else {
            return Err(foreign("has no Nats-Msg-Id header".into()));
        };
        let (shard, seq) = parse_msg_id(id.as_str()).map_err(foreign)?;
        if shard != self.shard {
            return Err(foreign(format!(
                "has Nats-Msg-Id `{}`, naming shard {shard}",
                id.as_str()
            )));
        }
        Ok(Some(seq))
    }

    async fn write(&mut self, batch: &OutBatch) -> Result<(), AdapterError> {
        let conn = self.shared.conn()?;
        self.last = WriteReport {
            events: batch.len(),
            ..WriteReport::default()
        };
        if batch.is_empty() {
            return Ok(());
        }
        if batch.shard() != self.shard {
            return Err(AdapterError::fatal(
                BACKEND,
                format!(
                    "a batch of shard {} handed to the writer of shard {}",
                    batch.shard(),
                    self.shard
                ),
            ));
        }
        let JetStreamWriter {
            shared,
            shard,
            subject,
            quoted,
            context,
            acks,
            last,
            hook,
        } = self;
        let config = &shared.config;
        let context = writer_context(context, &conn, config);
        let deadline = Instant::now() + config.command_timeout();
        let mark = conn.events.mark();
        let concerns = |text: &str| {
            is_violation(text) && (text.contains(quoted.as_str()) || concerns_inbox(text))
        };
        let count = batch.len();
        let mut start = 0;
        while start < count {
            let end = start.saturating_add(PIPELINE_WINDOW).min(count);
            acks.clear();
            // 1. Hand every publish of the window to the client. Each await here only waits
            //    for the client to take the message (and for room under the in-flight
            //    limit), never for the server.
            let mut failed: Option<(usize, PublishError)> = None;
            let send = async {
                for i in start..end {
                    let e = batch.get(i);
                    let message = PublishMessage::build()
                        .payload(Bytes::copy_from_slice(e.payload))
                        .headers(event_headers(e.shard, e.seq, e.ts_ns, e.origin));
                    match context.send_publish(subject.clone(), message).await {
                        Ok(ack) => acks.push(ack),
                        Err(err) => {
                            failed = Some((i, err));
                            return;
                        }
                    }
                }
            };
            let sent = guarded(&conn.events, mark, &concerns, deadline, send).await;
            let at = |index: usize| At {
                subject: subject.as_str(),
                shard: *shard,
                seq: batch.get(index).seq,
                index,
                count,
            };
            match sent {
                Ok(()) => {}
                Err(Interrupted::TimedOut) => {
                    return Err(AdapterError::transient(
                        BACKEND,
                        format!(
                            "{}: the client did not take it within command_timeout_ms ({}) \
                             (is the connection down?)",
                            at(start + acks.len()),
                            config.command_timeout_ms
                        ),
                    ));
                }
                Err(Interrupted::Denied(text)) => {
                    return Err(denied(&at(start).to_string(), &text));
                }
            }
            if let Some((i, e)) = failed {
                return Err(Self::publish_failed(&conn, config, at(i), e).await);
            }
            if last.windows == 0 {
                last.in_flight_at_first_ack_wait = acks.len();
                if let Some(hook) = hook.as_mut() {
                    hook(acks.len());
                }
            }
            last.windows += 1;
            // 2. Wait for every acknowledgement of the window, together, under the one
            //    deadline. They were all requested above; they arrive while we wait for the
            //    first.
            let mut failed: Option<(usize, PublishError)> = None;
            let mut wrong_stream: Option<(usize, String)> = None;
            let wait = async {
                for (k, ack) in acks.drain(..).enumerate() {
                    match ack.await {
                        Ok(ack) => {
                            if ack.stream != config.stream {
                                wrong_stream = Some((start + k, ack.stream));
                                return;
                            }
                            last.acked += 1;
                            if ack.duplicate {
                                last.duplicates += 1;
                            }
                        }
                        Err(e) => {
                            failed = Some((start + k, e));
                            return;
                        }
                    }
                }
            };
            let waited = guarded(&conn.events, mark, &concerns, deadline, wait).await;
            match waited {
                Ok(()) => {}
                Err(Interrupted::TimedOut) => {
                    let done = last.acked.saturating_sub(start);
                    return Err(AdapterError::transient(
                        BACKEND,
                        format!(
                            "publishing events {}:{}..={}:{} to `{}`: {} of {} acknowledgements \
                             did not arrive within command_timeout_ms ({})",
                            shard,
                            batch.get(start).seq,
                            shard,
                            batch.get(end - 1).seq,
                            subject.as_str(),
                            end - start - done,
                            end - start,
                            config.command_timeout_ms
                        ),
                    ));
                }
                Err(Interrupted::Denied(text)) => {
                    return Err(denied(&at(start).to_string(), &text));
                }
            }
            if let Some((i, stream)) = wrong_stream {
                return Err(AdapterError::fatal(
                    BACKEND,
                    format!(
                        "{}: stored in stream `{stream}`, not `{}`: another stream holds this \
                         subject",
                        at(i),
                        config.stream
                    ),
                ));
            }
            if let Some((i, e)) = failed {
                return Err(Self::publish_failed(&conn, config, at(i), e).await);
            }
            start = end;
        }
        Ok(())
    }
}
