//! The connection a sink's writers (and a source made from the sink) share, its shutdown
//! flag, and the things every request needs: a deadline, and an ear for the server's
//! permission errors.
//!
//! Why the server's errors: a publish the account may not make is not answered at all — the
//! server sends the connection an asynchronous `-ERR 'Permissions Violation ...'` and drops
//! the message — so without listening for it a denied publish would look like a timeout
//! (transient) and be retried forever. Every wait here ends early, fatally, when the server
//! reports a violation that concerns it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{Context, ErrorCode};
use async_nats::{Client, ConnectOptions, Event, ServerError};
use tokio::sync::watch;
use tokio::time::Instant;

use super::classify::{classify_connect, classify_create_stream, classify_get_stream, refine};
use super::config::{JetStreamConfig, redact_url};
use crate::error::{AdapterError, ErrorClass};

pub(crate) const BACKEND: &str = "jetstream";

/// The message of every call after `shutdown`.
pub(crate) const SHUT_DOWN: &str = "jetstream adapter has shut down";

/// How many of the server's recent errors a connection remembers.
const KEPT_ERRORS: usize = 32;

/// The server's errors and the connection's closing, as the client's event callback reports
/// them.
#[derive(Debug)]
pub(crate) struct ConnEvents {
    /// The newest server errors, each with its number (counting from 1).
    errors: Mutex<VecDeque<(u64, String)>>,
    /// The number of the newest error; waiters watch it change.
    count: watch::Sender<u64>,
    /// Set once the client has closed (drained, or given up).
    closed: watch::Sender<bool>,
}

impl ConnEvents {
    fn new() -> Arc<ConnEvents> {
        Arc::new(ConnEvents {
            errors: Mutex::new(VecDeque::with_capacity(KEPT_ERRORS)),
            count: watch::channel(0).0,
            closed: watch::channel(false).0,
        })
    }

    fn errors(&self) -> MutexGuard<'_, VecDeque<(u64, String)>> {
        // A panic while holding this lock leaves the queue consistent: keep using it.
        self.errors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn server_error(&self, text: String) {
        let mut errors = self.errors();
        let n = errors.back().map_or(1, |(n, _)| n + 1);
        if errors.len() == KEPT_ERRORS {
            errors.pop_front();
        }
        errors.push_back((n, text));
        drop(errors);
        self.count.send_replace(n);
    }

    /// The number of the newest server error so far (a mark for [`Self::since`]).
    pub fn mark(&self) -> u64 {
        *self.count.borrow()
    }

    /// The first server error after `mark` that `concerns` accepts.
    pub fn since(&self, mark: u64, concerns: &dyn Fn(&str) -> bool) -> Option<String> {
        self.errors()
            .iter()
            .find(|(n, text)| *n > mark && concerns(text))
            .map(|(_, text)| text.clone())
    }

    /// Whether the client has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// The connection: the client, its JetStream context, its events.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub client: Client,
    pub js: Context,
    pub events: Arc<ConnEvents>,
    /// Which connection of its [`Shared`] this is (writers rebuild what they derived from it
    /// when it changes).
    pub generation: u64,
}

/// What a sink shares with its writers and sources: the connection, and the flag that says
/// the adapter has shut down.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: JetStreamConfig,
    shut: AtomicBool,
    slot: Mutex<Option<Conn>>,
    generations: AtomicU64,
}

impl Shared {
    pub fn new(config: JetStreamConfig) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            shut: AtomicBool::new(false),
            slot: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Option<Conn>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `shutdown` has run.
    pub fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Acquire)
    }

    /// The current connection; fatal after shutdown, or before anything connected.
    pub fn conn(&self) -> Result<Conn, AdapterError> {
        if self.is_shut() {
            return Err(AdapterError::fatal(BACKEND, SHUT_DOWN));
        }
        self.slot()
            .clone()
            .ok_or_else(|| AdapterError::fatal(BACKEND, "jetstream adapter is not connected"))
    }

    /// The current connection, if any (none after shutdown).
    pub fn current(&self) -> Option<Conn> {
        self.slot().clone()
    }

    /// Marks the adapter shut down and takes the connection out (the slot is left empty).
    pub fn shut_and_take(&self) -> Option<Conn> {
        self.shut.store(true, Ordering::Release);
        self.slot().take()
    }

    /// Takes the connection out without shutting down (to replace it).
    pub fn take(&self) -> Option<Conn> {
        self.slot().take()
    }

    /// Connects a new client and installs it. The slot must be empty: whoever replaces a
    /// connection drains the old one first ([`retire`]).
    pub async fn connect(&self) -> Result<Conn, AdapterError> {
        if self.is_shut() {
            return Err(AdapterError::fatal(BACKEND, SHUT_DOWN));
        }
        let (client, events) = connect(&self.config).await?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(self.config.command_timeout())
            .build(client.clone());
        let conn = Conn {
            client,
            js,
            events,
            generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1,
        };
        let mut slot = self.slot();
        if self.is_shut() {
            // Shut down while connecting: this client is nobody's.
            return Err(AdapterError::fatal(BACKEND, SHUT_DOWN));
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// Connects a client for `config`, listening for the server's errors.
pub(crate) async fn connect(
    config: &JetStreamConfig,
) -> Result<(Client, Arc<ConnEvents>), AdapterError> {
    let events = ConnEvents::new();
    let heard = Arc::clone(&events);
    let mut options = ConnectOptions::new()
        .name("net-adapters jetstream")
        .connection_timeout(config.connect_timeout())
        .request_timeout(Some(config.command_timeout()))
        // Reconnect quickly after a server restart, backing off to at most two seconds.
        .reconnect_delay_callback(|attempts| {
            let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
            Duration::from_millis(10u64.saturating_mul(2u64.saturating_pow(exp)))
                .min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let heard = Arc::clone(&heard);
            async move {
                match event {
                    Event::ServerError(ServerError::Other(text)) => heard.server_error(text),
                    Event::ServerError(ServerError::AuthorizationViolation) => {
                        heard.server_error("Authorization Violation".to_owned())
                    }
                    Event::Closed => {
                        heard.closed.send_replace(true);
                    }
                    _ => {}
                }
            }
        });
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    let url = redact_url(&config.url);
    // The client bounds each attempt by the connection timeout; this bounds the whole.
    let limit = config
        .connect_timeout()
        .saturating_add(Duration::from_millis(500));
    match tokio::time::timeout(limit, options.connect(config.url.as_str())).await {
        Ok(Ok(client)) => Ok((client, events)),
        Ok(Err(e)) => {
            let class = classify_connect(e.kind());
            let hint = if class == ErrorClass::Fatal {
                " (check the url, user/password or token)"
            } else {
                ""
            };
            Err(AdapterError {
                backend: BACKEND,
                class,
                message: format!("connecting to {url}: {e}{hint}"),
            })
        }
        Err(_) => Err(AdapterError::transient(
            BACKEND,
            format!(
                "connecting to {url}: no answer within connect_timeout_ms ({})",
                config.connect_timeout_ms
            ),
        )),
    }
}

/// Retires a connection being replaced or shut down, so that every publish already handed to
/// it reaches the server: first one request to the server over it (the stream's info), whose
/// answer proves the server has read everything the client wrote before it — the client's own
/// flush only waits for its socket buffer, and can report done while bytes still wait behind
/// a full socket, which its drain then drops — then the drain (its subscriptions, then the
/// connection close), and a wait for the close; all within the command timeout (each step).
/// Only answers still on their way back may be lost, which the writers' retry (last held,
/// then the duplicate window) covers.
pub(crate) async fn retire(conn: Conn, config: &JetStreamConfig) -> Result<(), AdapterError> {
    if conn.events.is_closed() {
        return Ok(());
    }
    // The answer (or its error) is not what matters: that one came back is.
    let synced = stream_facts(&conn, config).await.err();
    let deadline = Instant::now() + config.command_timeout();
    let mut closed = conn.events.closed.subscribe();
    let work = async {
        conn.client
            .drain()
            .await
            .map_err(|e| format!("draining the client: {e}"))?;
        closed
            .wait_for(|c| *c)
            .await
            .map_err(|_| "the client ended without closing".to_owned())?;
        Ok::<(), String>(())
    };
    let drained = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AdapterError::transient(BACKEND, e)),
        Err(_) => Err(AdapterError::transient(
            BACKEND,
            format!(
                "the client did not drain within command_timeout_ms ({}); what it held unsent \
                 is dropped",
                config.command_timeout_ms
            ),
        )),
    };
    match (synced, drained) {
        (Some(e), Ok(())) if e.is_transient() => Err(AdapterError::transient(
            BACKEND,
            format!(
                "before the drain, the server did not confirm it had read everything sent ({}); \
                 publishes still unsent may be dropped",
                e.message
            ),
        )),
        (_, drained) => drained,
    }
}

/// How a wait ended early.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// The deadline passed.
    TimedOut,
    /// The server reported a violation that concerns the wait.
    Denied(String),
}

/// Runs `fut` until `deadline`, ending early when the server reports an error after `mark`
/// that `concerns` accepts.
pub(crate) async fn guarded<F: Future>(
    events: &ConnEvents,
    mark: u64,
    concerns: &dyn Fn(&str) -> bool,
    deadline: Instant,
    fut: F,
) -> Result<F::Output, Interrupted> {
    let mut count = events.count.subscribe();
    if let Some(text) = events.since(mark, concerns) {
        return Err(Interrupted::Denied(text));
    }
    tokio::pin!(fut);
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            _ = &mut sleep => return Err(Interrupted::TimedOut),
            changed = count.changed() => {
                if changed.is_err() {
                    // The events outlive every wait on them; no more errors can come.
                    return Ok(fut.await);
                }
                if let Some(text) = events.since(mark, concerns) {
                    return Err(Interrupted::Denied(text));
                }
            }
        }
    }
}

/// Whether a server error concerns a JetStream API request (its subject, or the inbox its
/// answer comes back on).
pub(crate) fn concerns_api(text: &str) -> bool {
    is_violation(text) && (text.contains("$JS.API") || concerns_inbox(text))
}

/// Whether a server error says the connection may not receive answers.
pub(crate) fn concerns_inbox(text: &str) -> bool {
    is_violation(text) && (text.contains("Subscription to") || text.contains("Reply of"))
}

pub(crate) fn is_violation(text: &str) -> bool {
    text.contains("Permissions Violation") || text.contains("Authorization Violation")
}

/// The fatal error for a request the server refused.
pub(crate) fn denied(what: &str, text: &str) -> AdapterError {
    AdapterError::fatal(
        BACKEND,
        format!("{what}: the server refused it: {text} (grant the user this permission)"),
    )
}

/// The transient error for a request that did not finish in time.
pub(crate) fn timed_out(what: &str, config: &JetStreamConfig) -> AdapterError {
    AdapterError::transient(
        BACKEND,
        format!(
            "{what}: no answer within command_timeout_ms ({})",
            config.command_timeout_ms
        ),
    )
}

/// Whether `subject` matches the subject `pattern` (`*` one token, `>` the rest).
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What the stream is, as far as a writer cares.
#[derive(Debug, Clone)]
pub(crate) struct StreamFacts {
    pub subjects: Vec<String>,
    pub duplicate_window: Duration,
}

impl StreamFacts {
    /// Fatal when the stream's subjects do not include `subject`.
    pub fn check_covers(
        &self,
        config: &JetStreamConfig,
        subject: &str,
    ) -> Result<(), AdapterError> {
        if self.subjects.iter().any(|p| subject_matches(p, subject)) {
            return Ok(());
        }
        Err(AdapterError::fatal(
            BACKEND,
            format!(
                "stream `{}` holds subjects {:?}, which do not include `{subject}`: add `{}` to \
                 its subjects, or set subject_prefix to one of them",
                config.stream,
                self.subjects,
                config.stream_subjects()
            ),
        ))
    }
}

/// Reads the stream's facts; when it is missing, creates it if the configuration says so, and
/// is fatal otherwise.
pub(crate) async fn ensure_stream(
    conn: &Conn,
    config: &JetStreamConfig,
) -> Result<StreamFacts, AdapterError> {
    match stream_facts(conn, config).await? {
        Some(facts) => Ok(facts),
        None if !config.create_stream => Err(AdapterError::fatal(
            BACKEND,
            format!(
                "stream `{}` does not exist and create_stream is false: create it (subjects \
                 `{}`) or set create_stream to true",
                config.stream,
                config.stream_subjects()
            ),
        )),
        None => create_stream(conn, config).await,
    }
}

/// The stream's facts, `None` when the server says it does not exist.
pub(crate) async fn stream_facts(
    conn: &Conn,
    config: &JetStreamConfig,
) -> Result<Option<StreamFacts>, AdapterError> {
    let what = format!("reading the info of stream `{}`", config.stream);
    let deadline = Instant::now() + config.command_timeout();
    let mark = conn.events.mark();
    let got = guarded(
        &conn.events,
        mark,
        &concerns_api,
        deadline,
        conn.js.get_stream(&config.stream),
    )
    .await;
    match got {
        Ok(Ok(stream)) => {
            let c = &stream.cached_info().config;
            let subjects = if c.subjects.is_empty() {
                // A stream with no subjects listens on its own name.
                vec![c.name.clone()]
            } else {
                c.subjects.clone()
            };
            Ok(Some(StreamFacts {
                subjects,
                duplicate_window: c.duplicate_window,
            }))
        }
        Ok(Err(e)) => {
            if let GetStreamErrorKind::JetStream(js) = e.kind() {
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND {
                    return Ok(None);
                }
            }
            let class = refine(classify_get_stream(&e.kind()), &e);
            Err(AdapterError {
                backend: BACKEND,
                class,
                message: format!("{what}: {e}"),
            })
        }
        Err(Interrupted::TimedOut) => Err(timed_out(&what, config)),
        Err(Interrupted::Denied(text)) => Err(denied(&what, &text)),
    }
}

async fn create_stream(conn: &Conn, config: &JetStreamConfig) -> Result<StreamFacts, AdapterError> {
    let what = format!("creating stream `{}`", config.stream);
    let stream_config = StreamConfig {
        name: config.stream.clone(),
        subjects: vec![config.stream_subjects()],
        storage: StorageType::File,
        duplicate_window: Duration::from_millis(config.duplicate_window_ms),
        ..StreamConfig::default()
    };
    let deadline = Instant::now() + config.command_timeout();
    let mark = conn.events.mark();
    let got = guarded(
        &conn.events,
        mark,
        &concerns_api,
        deadline,
        conn.js.create_stream(stream_config),
    )
    .await;
    match got {
        Ok(Ok(stream)) => {
            let c = &stream.cached_info().config;
            Ok(StreamFacts {
                subjects: c.subjects.clone(),
                duplicate_window: c.duplicate_window,
            })
        }
        Ok(Err(e)) => {
            if let async_nats::jetstream::context::CreateStreamErrorKind::JetStream(js) = e.kind() {
                if js.error_code() == ErrorCode::STREAM_NAME_EXIST {
                    // Another writer created it meanwhile.
                    if let Some(facts) = stream_facts(conn, config).await? {
                        return Ok(facts);
                    }
                }
            }
            let class = refine(classify_create_stream(&e.kind()), &e);
            Err(AdapterError {
                backend: BACKEND,
                class,
                message: format!("{what}: {e}"),
            })
        }
        Err(Interrupted::TimedOut) => Err(timed_out(&what, config)),
        Err(Interrupted::Denied(text)) => Err(denied(&what, &text)),
    }
}
