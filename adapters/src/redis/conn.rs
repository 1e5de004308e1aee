//! Connections: one per writer, one for the health check, one per source, all registered with
//! the adapter so that `shutdown` can drop every one of them, and every command run under the
//! command timeout.
//!
//! Why a registry instead of each owner keeping its connection: `shutdown` must leave nothing
//! open and nothing able to write, even for a writer the sink still holds. Owners take a clone
//! of their connection for each command (a handle onto the same socket); `shutdown` sets the
//! closed flag and empties the registry under one lock, so no new command starts and no
//! connection outlives the commands in flight.
//!
//! Why a timeout replaces the connection: a multiplexed connection matches replies to requests
//! by order, so a request abandoned at its timeout can leave its late reply to be read as the
//! answer to the next one. A connection that timed out or failed below the protocol (an I/O or
//! parse error) is therefore dropped, and the next command connects afresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::classify::classify;
use super::config::RedisConfig;
use crate::error::{AdapterError, ErrorClass};

pub(crate) const BACKEND: &str = "redis";

/// What the adapter connects to.
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A connection to one node or to a cluster; the same commands run on either.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Default)]
struct Registry {
    closed: bool,
    next_id: u64,
    conns: HashMap<u64, Conn>,
}

/// What a sink, its writers and its sources share: the configuration, the client, the
/// connections and the closed flag.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    target: Target,
    /// Set by `shutdown`, under the registry's lock; read without it on every command.
    closed: AtomicBool,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("destination", &self.config.destination())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Shared {
    /// Validates `config` and makes the client (no connection yet).
    pub(crate) fn new(config: RedisConfig) -> Result<Arc<Shared>, AdapterError> {
        config.validate()?;
        let fatal = |field: &str, e: RedisError| {
            AdapterError::fatal(
                BACKEND,
                format!("redis config: `{field}` is not usable: {e}"),
            )
        };
        let target = match (&config.url, &config.cluster_nodes) {
            (Some(url), _) => {
                Target::Single(redis::Client::open(url.as_str()).map_err(|e| fatal("url", e))?)
            }
            (None, Some(nodes)) => Target::Cluster(
                ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(config.connect_timeout())
                    .response_timeout(config.command_timeout())
                    .build()
                    .map_err(|e| fatal("cluster_nodes", e))?,
            ),
            // `validate` refuses this; said again rather than assumed.
            (None, None) => {
                return Err(AdapterError::fatal(
                    BACKEND,
                    "redis config: neither `url` nor `cluster_nodes` is set",
                ));
            }
        };
        Ok(Arc::new(Shared {
            config,
            target,
            closed: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
        }))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves only a map of handles behind: still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `shutdown` ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Drops every connection and refuses every later command.
    pub(crate) fn shutdown(&self) {
        let conns = {
            let mut r = self.registry();
            r.closed = true;
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut r.conns)
        };
        drop(conns);
    }

    /// The error of any command after `shutdown`.
    pub(crate) fn shut_down_error(what: &str) -> AdapterError {
        AdapterError::fatal(
            BACKEND,
            format!("redis adapter has shut down: {what} refused (nothing was written)"),
        )
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        match &self.target {
            Target::Single(client) => {
                // The client's own response timeout is off: every command runs under ours, and
                // a timeout of ours replaces the connection.
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout()))
                    .set_response_timeout(None);
                Ok(Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// One owner's connection (a writer's, the health check's, a source's): connected on first
/// use, replaced after a timeout or a connection failure, dropped with its owner or at
/// `shutdown`.
pub(crate) struct Link {
    shared: Arc<Shared>,
    id: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("id", &self.id).finish()
    }
}

impl Link {
    pub(crate) fn new(shared: &Arc<Shared>) -> Link {
        let id = {
            let mut r = shared.registry();
            r.next_id += 1;
            r.next_id
        };
        Link {
            shared: Arc::clone(shared),
            id,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This owner's connection, connecting (under the connect timeout) if it has none.
    pub(crate) async fn conn(&self, what: &str) -> Result<Conn, AdapterError> {
        {
            let r = self.shared.registry();
            if r.closed {
                return Err(Shared::shut_down_error(what));
            }
            if let Some(c) = r.conns.get(&self.id) {
                return Ok(c.clone());
            }
        }
        let config = &self.shared.config;
        let ms = config.connect_timeout_ms;
        let conn = match tokio::time::timeout(config.connect_timeout(), self.shared.connect()).await
        {
            Err(_) => {
                return Err(AdapterError::transient(
                    BACKEND,
                    format!(
                        "connecting to {} for {what}: no answer within {ms} ms",
                        config.destination()
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err(AdapterError {
                    backend: BACKEND,
                    class: classify(&e),
                    message: format!("connecting to {} for {what}: {e}", config.destination()),
                });
            }
            Ok(Ok(c)) => c,
        };
        let mut r = self.shared.registry();
        if r.closed {
            return Err(Shared::shut_down_error(what));
        }
        r.conns.insert(self.id, conn.clone());
        Ok(conn)
    }

    /// Drops this owner's connection; the next command connects afresh.
    pub(crate) fn replace(&self) {
        let old = self.shared.registry().conns.remove(&self.id);
        drop(old);
    }

    /// Runs `command` on this owner's connection under the command timeout. `what` names the
    /// command and its key, for the error. A timeout is transient and replaces the connection,
    /// as does an error below the protocol.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, command: F) -> Result<T, AdapterError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.shared.is_closed() {
            return Err(Shared::shut_down_error(what));
        }
        let conn = self.conn(what).await?;
        let timeout = self.shared.config.command_timeout();
        match tokio::time::timeout(timeout, command(conn)).await {
            Err(_) => {
                self.replace();
                Err(timed_out(what, timeout))
            }
            Ok(Err(e)) => {
                if breaks_connection(&e) {
                    self.replace();
                }
                Err(from_redis(what, &e))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.replace();
    }
}

fn timed_out(what: &str, timeout: Duration) -> AdapterError {
    AdapterError::transient(
        BACKEND,
        format!(
            "{what}: no answer within the command timeout ({} ms); the connection was replaced",
            timeout.as_millis()
        ),
    )
}

/// An adapter error from a Redis error, classified, naming the command.
pub(crate) fn from_redis(what: &str, e: &RedisError) -> AdapterError {
    AdapterError {
        backend: BACKEND,
        class: classify(e),
        message: format!("{what}: {e}"),
    }
}

/// Whether the connection an error came from can no longer be trusted.
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Parse
                | ErrorKind::UnexpectedReturnType
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// A fatal error about a reply that is not what the command returns.
pub(crate) fn unexpected(what: &str, detail: impl std::fmt::Display) -> AdapterError {
    AdapterError {
        backend: BACKEND,
        class: ErrorClass::Fatal,
        message: format!("{what}: unexpected reply: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_urls_are_refused_at_start_naming_the_field() {
        for (config, field, says) in [
            (RedisConfig::single("rediss://h:1"), "`url`", "TLS"),
            (RedisConfig::single("http://h:1"), "`url`", ""),
            (
                RedisConfig::single("redis://h:1/notadb"),
                "`url`",
                "database",
            ),
            (
                RedisConfig::cluster(&["redis://a:1", "ftp://b:2"]),
                "`cluster_nodes`",
                "",
            ),
        ] {
            let e = Shared::new(config).unwrap_err();
            assert_eq!(e.class, ErrorClass::Fatal, "{e}");
            assert!(e.message.contains(field) && e.message.contains(says), "{e}");
        }
    }
}
