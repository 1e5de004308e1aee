//! netd's configuration: one JSON document, read as strictly as the bus's own `Config`.
//! Unknown fields, zeros where a count or duration is required, duplicate keys and text after
//! the document are refused, and the error names the field by its dotted path
//! (`socket.connections_max`, `bus.batch.max_events`, `sinks[0].redis.url`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A refused configuration: the field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config field `{field}`: {what}")]
pub struct ConfigError {
    /// Dotted path of the field (`(document)` for the document as a whole).
    pub field: String,
    /// What was wrong.
    pub what: String,
}

fn refuse(field: impl Into<String>, what: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        what: what.into(),
    }
}

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetdConfig {
    /// The bus: the same document `net_engine::Config::from_json` reads (data dir, shards,
    /// lanes, batches, storage, the mesh listener).
    pub bus: Value,
    /// The local ingest socket.
    #[serde(default)]
    pub socket: SocketConfig,
    /// The Prometheus endpoint; `null` turns it off.
    #[serde(default = "MetricsConfig::default_some")]
    pub metrics: Option<MetricsConfig>,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
    /// How long SIGTERM/SIGINT may take to drain and stop, ms.
    #[serde(default = "default_deadline")]
    pub shutdown_deadline_ms: u64,
    /// Other nodes' shards to mirror into this bus over the mesh.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Sinks carrying the log to Redis Streams or JetStream.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// Folds over the log.
    #[serde(default)]
    pub folds: Vec<FoldSpec>,
}

fn default_deadline() -> u64 {
    10_000
}

/// The local socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// The socket's path. A stale socket file (nobody listening) is replaced; a live one is
    /// refused.
    pub path: PathBuf,
    /// Its permission bits, as an octal string (`"0660"`): who may publish and read.
    pub mode: String,
    /// Most connections at once; one more is told `busy` and closed.
    pub connections_max: usize,
    /// Largest frame, bytes (after the length prefix).
    pub frame_bytes_max: usize,
    /// Most events one READ may ask for.
    pub read_events_max: u32,
    /// Longest wait one READ may ask for, ms.
    pub read_wait_ms_max: u32,
    /// How long an acknowledgement may wait for durability before the connection is told
    /// `timeout` and closed, ms.
    pub ack_timeout_ms: u64,
    /// How long a frame, once begun, may take to arrive whole before the connection is told
    /// `timeout` and closed, ms: a client that sends half a frame and stalls cannot hold a
    /// connection slot for ever. An idle connection between frames is never timed out.
    pub frame_timeout_ms: u64,
}

impl Default for SocketConfig {
    fn default() -> SocketConfig {
        SocketConfig {
            path: PathBuf::from("/run/net/netd.sock"),
            mode: "0660".into(),
            connections_max: 64,
            frame_bytes_max: 4 << 20,
            read_events_max: 10_000,
            read_wait_ms_max: 30_000,
            ack_timeout_ms: 30_000,
            frame_timeout_ms: 10_000,
        }
    }
}

impl SocketConfig {
    /// The permission bits.
    pub fn mode_bits(&self) -> Result<u32, ConfigError> {
        let digits = self.mode.trim_start_matches("0o");
        let bits = u32::from_str_radix(digits, 8).map_err(|_| {
            refuse(
                "socket.mode",
                format!("{:?} is not an octal mode such as \"0660\"", self.mode),
            )
        })?;
        if bits > 0o777 {
            return Err(refuse(
                "socket.mode",
                format!("{:?} has bits beyond 0777", self.mode),
            ));
        }
        if bits & 0o600 != 0o600 {
            return Err(refuse(
                "socket.mode",
                format!("{:?} must let the owner read and write (0600)", self.mode),
            ));
        }
        Ok(bits)
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address to serve `/metrics` on (port 0 picks one; the log says which).
    pub listen: SocketAddr,
}

impl MetricsConfig {
    fn default_some() -> Option<MetricsConfig> {
        Some(MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        })
    }
}

/// Logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `net_engine=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    /// A file to append to (reopened on SIGHUP, for logrotate); absent: standard error.
    pub file: Option<PathBuf>,
    /// `text` or `json` (one object per line).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            file: None,
            format: LogFormat::Text,
        }
    }
}

/// The log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A subscription to another node's shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// The publisher's mesh address.
    pub node: SocketAddr,
    /// The publisher's static public key, 64 hex digits.
    pub key: String,
    /// A file holding the capability token the publisher issued to this node.
    pub token_file: PathBuf,
    /// The publisher's shards to mirror (each into the local shard of the same number);
    /// absent: all of them.
    #[serde(default)]
    pub shards: Option<Vec<u16>>,
}

impl SubscriptionConfig {
    /// The key's bytes.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        parse_hex32(&self.key)
    }
}

/// 64 hex digits as 32 bytes.
pub fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A sink: exactly one of `redis` and `jetstream`, and the sink's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// A Redis Streams backend (the adapters' `RedisConfig` document).
    #[serde(default)]
    pub redis: Option<Value>,
    /// A JetStream backend (the adapters' `JetStreamConfig` document).
    #[serde(default)]
    pub jetstream: Option<Value>,
    /// The sink's settings (the adapters' `SinkConfig` document: `name`, `checkpoint_dir`,
    /// batching, retention, backoff).
    pub sink: Value,
}

/// A fold: one of the built-in folds and its cortex settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldSpec {
    /// `memories` or `watermarks`.
    pub kind: FoldKind,
    /// The cortex settings (`net_cortex::CortexConfig`: `name`, `on_error`, `snapshot`).
    pub cortex: Value,
}

/// The built-in folds netd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldKind {
    /// The memories model.
    Memories,
    /// Per-origin watermarks.
    Watermarks,
}

/// A configuration read and checked whole: the typed parts of every component.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The document as given (defaults filled in).
    pub doc: NetdConfig,
    /// The bus's configuration.
    pub bus: net_engine::Config,
    /// Sinks, typed.
    pub sinks: Vec<CheckedSink>,
    /// Folds, typed.
    pub folds: Vec<(FoldKind, net_cortex::CortexConfig)>,
    /// Subscriptions with their keys and tokens read.
    pub subscriptions: Vec<CheckedSubscription>,
    /// The socket's permission bits.
    pub socket_mode: u32,
}

/// A sink's backend and settings.
#[derive(Debug, Clone)]
pub enum CheckedSink {
    /// Redis Streams.
    Redis(net_adapters::redis::RedisConfig, net_adapters::SinkConfig),
    /// JetStream.
    JetStream(
        net_adapters::jetstream::JetStreamConfig,
        net_adapters::SinkConfig,
    ),
}

/// A subscription, its key parsed and its token read.
#[derive(Debug, Clone)]
pub struct CheckedSubscription {
    /// What the document said.
    pub spec: SubscriptionConfig,
    /// The publisher's key.
    pub key: [u8; 32],
    /// The token's bytes.
    pub token: Vec<u8>,
}

impl Checked {
    /// Reads and checks the file at `path`.
    pub fn from_file(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| refuse("(file)", format!("cannot read {}: {e}", path.display())))?;
        Checked::from_json(&text)
    }

    /// Reads and checks a document.
    pub fn from_json(text: &str) -> Result<Checked, ConfigError> {
        let tree = net_engine::config::read_strict_json(text).map_err(engine_error(""))?;
        let doc: NetdConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "(document)".to_string()
            } else {
                path
            };
            refuse(field, e.into_inner().to_string())
        })?;
        let bus =
            net_engine::Config::from_json(&doc.bus.to_string()).map_err(engine_error("bus."))?;
        let s = &doc.socket;
        if s.path.as_os_str().is_empty() {
            return Err(refuse("socket.path", "must not be empty"));
        }
        if s.path.as_os_str().len() > 107 {
            return Err(refuse(
                "socket.path",
                "longer than a Unix socket path may be (107 bytes)",
            ));
        }
        let socket_mode = s.mode_bits()?;
        positive("socket.connections_max", s.connections_max as u64)?;
        positive("socket.read_events_max", u64::from(s.read_events_max))?;
        positive("socket.read_wait_ms_max", u64::from(s.read_wait_ms_max))?;
        positive("socket.ack_timeout_ms", s.ack_timeout_ms)?;
        positive("socket.frame_timeout_ms", s.frame_timeout_ms)?;
        let frame_min = bus.payload_bytes_max() + 32;
        if s.frame_bytes_max < frame_min || s.frame_bytes_max > 1 << 30 {
            return Err(refuse(
                "socket.frame_bytes_max",
                format!(
                    "{} is outside {frame_min}..={} (a frame must hold the bus's largest payload, {} bytes)",
                    s.frame_bytes_max,
                    1 << 30,
                    bus.payload_bytes_max()
                ),
            ));
        }
        positive("shutdown_deadline_ms", doc.shutdown_deadline_ms)?;
        if let Some(m) = &doc.metrics
            && !m.listen.ip().is_loopback()
        {
            return Err(refuse(
                "metrics.listen",
                format!(
                    "{} is not a loopback address: the endpoint has no authentication (put a proxy in front to expose it)",
                    m.listen
                ),
            ));
        }
        if doc.log.level.trim().is_empty() {
            return Err(refuse("log.level", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&doc.log.level)
            .map_err(|e| refuse("log.level", e.to_string()))?;
        let subscriptions = check_subscriptions(&doc, &bus)?;
        let sinks = check_sinks(&doc)?;
        let folds = check_folds(&doc)?;
        Ok(Checked {
            bus,
            sinks,
            folds,
            subscriptions,
            socket_mode,
            doc,
        })
    }

    /// The effective configuration as JSON: every field, defaults filled in (the bus's
    /// included).
    pub fn effective_json(&self) -> String {
        let mut doc = serde_json::to_value(&self.doc).expect("config serialises");
        let bus: Value = serde_json::from_str(&self.bus.to_json()).expect("bus config is JSON");
        doc["bus"] = bus;
        serde_json::to_string_pretty(&doc).expect("JSON")
    }
}

fn positive(field: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(refuse(field, "must be at least 1"));
    }
    Ok(())
}

fn engine_error(prefix: &'static str) -> impl Fn(net_engine::Error) -> ConfigError {
    move |e| match e {
        net_engine::Error::Config { field, what } => {
            let field = if field == "(document)" && !prefix.is_empty() {
                prefix.trim_end_matches('.').to_string()
            } else {
                format!("{prefix}{field}")
            };
            refuse(field, what)
        }
        other => refuse(prefix.trim_end_matches('.'), other.to_string()),
    }
}

fn check_subscriptions(
    doc: &NetdConfig,
    bus: &net_engine::Config,
) -> Result<Vec<CheckedSubscription>, ConfigError> {
    if !doc.subscriptions.is_empty() && bus.mesh.is_none() {
        return Err(refuse(
            "subscriptions",
            "subscriptions need the mesh: configure bus.mesh",
        ));
    }
    let mut out = Vec::new();
    for (i, s) in doc.subscriptions.iter().enumerate() {
        let key = s.key_bytes().ok_or_else(|| {
            refuse(
                format!("subscriptions[{i}].key"),
                "must be 64 hex digits (the publisher's static public key)",
            )
        })?;
        let token = std::fs::read(&s.token_file).map_err(|e| {
            refuse(
                format!("subscriptions[{i}].token_file"),
                format!("cannot read {}: {e}", s.token_file.display()),
            )
        })?;
        if let Some(shards) = &s.shards {
            if shards.is_empty() {
                return Err(refuse(
                    format!("subscriptions[{i}].shards"),
                    "must list at least one shard (or be absent: all)",
                ));
            }
            let local = bus.shards.unwrap_or(1);
            if let Some(k) = shards.iter().find(|&&k| usize::from(k) >= local) {
                return Err(refuse(
                    format!("subscriptions[{i}].shards"),
                    format!(
                        "origin shard {k} is mirrored into local shard {k}, but bus.shards is {local}"
                    ),
                ));
            }
        }
        out.push(CheckedSubscription {
            spec: s.clone(),
            key,
            token,
        });
    }
    Ok(out)
}

fn check_sinks(doc: &NetdConfig) -> Result<Vec<CheckedSink>, ConfigError> {
    let mut out: Vec<CheckedSink> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, s) in doc.sinks.iter().enumerate() {
        let at = |f: &str| format!("sinks[{i}].{f}");
        let sink: net_adapters::SinkConfig = serde_path_to_error::deserialize(s.sink.clone())
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    at("sink")
                } else {
                    at(&format!("sink.{path}"))
                };
                refuse(field, e.into_inner().to_string())
            })?;
        sink.validate()
            .map_err(|e| refuse(at("sink"), e.to_string()))?;
        if !names.insert(sink.name.clone()) {
            return Err(refuse(
                at("sink.name"),
                format!("{:?} names another sink too", sink.name),
            ));
        }
        let checked = match (&s.redis, &s.jetstream) {
            (Some(r), None) => CheckedSink::Redis(
                net_adapters::redis::RedisConfig::from_json(&r.to_string())
                    .map_err(|e| refuse(at("redis"), e.to_string()))?,
                sink,
            ),
            (None, Some(j)) => CheckedSink::JetStream(
                net_adapters::jetstream::JetStreamConfig::from_json(&j.to_string())
                    .map_err(|e| refuse(at("jetstream"), e.to_string()))?,
                sink,
            ),
            _ => {
                return Err(refuse(
                    format!("sinks[{i}]"),
                    "needs exactly one of `redis` and `jetstream`",
                ));
            }
        };
        out.push(checked);
    }
    Ok(out)
}

fn check_folds(doc: &NetdConfig) -> Result<Vec<(FoldKind, net_cortex::CortexConfig)>, ConfigError> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, f) in doc.folds.iter().enumerate() {
        let c = net_cortex::CortexConfig::from_json(&f.cortex.to_string())
            .map_err(|e| refuse(format!("folds[{i}].cortex"), e.to_string()))?;
        if !names.insert(c.name.clone()) {
            return Err(refuse(
                format!("folds[{i}].cortex.name"),
                format!("{:?} names another fold too", c.name),
            ));
        }
        out.push((f.kind, c));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Checked, ConfigError> {
        Checked::from_json(text)
    }

    #[test]
    fn a_minimal_document_takes_every_default() {
        let c = check(r#"{"bus": {"data_dir": "/tmp/x"}}"#).unwrap();
        assert_eq!(c.doc.socket.connections_max, 64);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.doc.shutdown_deadline_ms, 10_000);
        assert!(c.doc.metrics.is_some());
        let eff: Value = serde_json::from_str(&c.effective_json()).unwrap();
        assert_eq!(eff["bus"]["data_dir"], "/tmp/x");
        assert!(eff["bus"]["batch"]["max_events"].as_u64().unwrap() > 0);
    }

    #[test]
    fn bad_documents_are_refused_naming_the_field() {
        let cases = [
            (r#"{"bus": {"data_dir": "/x"}, "sockets": {}}"#, "sockets"),
            (r#"{"bus": {"data_dir": "/x", "shards": 0}}"#, "bus.shards"),
            (
                r#"{"bus": {"data_dir": "/x", "batch": {"max_events": 0}}}"#,
                "bus.batch.max_events",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "socket": {"connections_max": 0}}"#,
                "socket.connections_max",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "socket": {"mode": "rw"}}"#,
                "socket.mode",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "socket": {"frame_bytes_max": 10}}"#,
                "socket.frame_bytes_max",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "metrics": {"listen": "0.0.0.0:9464"}}"#,
                "metrics.listen",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "shutdown_deadline_ms": 0}"#,
                "shutdown_deadline_ms",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "log": {"format": "xml"}}"#,
                "log.format",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "sinks": [{"sink": {"name": "a"}}]}"#,
                "sinks[0]",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "sinks": [{"redis": {"url": "redis://h:1"}, "sink": {"batch_events_max": 0}}]}"#,
                "sinks[0].sink",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "folds": [{"kind": "memories", "cortex": {"nam": "m"}}]}"#,
                "folds[0].cortex",
            ),
            (
                r#"{"bus": {"data_dir": "/x"}, "subscriptions": [{"node": "127.0.0.1:1", "key": "00", "token_file": "/t"}]}"#,
                "subscriptions",
            ),
            (r#"{"bus": {"data_dir": "/x"}} {}"#, "(document)"),
            (r#"{"bus": {"data_dir": "/x"}, "bus": {}}"#, "bus"),
            (r#"{"socket": {}}"#, "(document)"),
        ];
        for (text, field) in cases {
            let e = check(text).expect_err(text);
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }
}
