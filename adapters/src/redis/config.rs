//! The Redis adapter's configuration: where Redis is, how the streams are named, how long a
//! command may take, and (for the source) how many shards to read and how many ids to remember.
//!
//! Unknown fields are refused, so a misspelt `maxlen` is an error instead of a stream that grows
//! without bound; `validate` refuses zeros and empty strings by field name, so a bad deployment
//! fails at start with the field to fix instead of later with a confusing Redis error.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::AdapterError;

/// Where and how the Redis sink and source work. See `docs/adapters-redis.md`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis node: `redis://[user:password@]host:port[/db]` (or `unix:///path`). TLS
    /// (`rediss://`) is not built in: such a URL is refused at start. Exactly one of `url` and
    /// `cluster_nodes`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each, credentials in the URLs).
    /// Exactly one of `url` and `cluster_nodes`.
    #[serde(default)]
    pub cluster_nodes: Option<Vec<String>>,
    /// The streams are `{prefix}:{shard}` (default `net`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long one command (a batch's pipeline, a read, a health check) may take before it
    /// counts as a transient failure and its connection is replaced (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub command_timeout_ms: u64,
    /// How long connecting (and authenticating) may take (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Trim every stream to about this many entries on each write (`MAXLEN ~ n`); `None`
    /// keeps everything.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// The source only: how many shard streams to read (`{prefix}:0` up to this, exclusive):
    /// the shard count of the bus that wrote them. Required by the source.
    #[serde(default)]
    pub shards: Option<u16>,
    /// The source only: how many event ids its dedup remembers. Required by the source (no
    /// default: too small a set silently lets duplicates through). Size it as events/s ×
    /// seconds of possible overlap, e.g. 10 000/s × 300 s = 3 000 000.
    #[serde(default)]
    pub dedup_capacity: Option<usize>,
}

/// Printed without credentials: a config in a log line must not leak a password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(redact))
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .as_ref()
                    .map(|n| n.iter().map(|u| redact(u)).collect::<Vec<_>>()),
            )
            .field("prefix", &self.prefix)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("maxlen", &self.maxlen)
            .field("shards", &self.shards)
            .field("dedup_capacity", &self.dedup_capacity)
            .finish()
    }
}

fn default_prefix() -> String {
    "net".to_owned()
}

fn default_timeout_ms() -> u64 {
    5000
}

fn bad(message: String) -> AdapterError {
    AdapterError::fatal("redis", format!("redis config: {message}"))
}

impl RedisConfig {
    /// A configuration for one node at `url`, everything else at its default.
    pub fn single(url: &str) -> RedisConfig {
        RedisConfig {
            url: Some(url.to_owned()),
            cluster_nodes: None,
            prefix: default_prefix(),
            command_timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_timeout_ms(),
            maxlen: None,
            shards: None,
            dedup_capacity: None,
        }
    }

    /// A configuration for a cluster seeded by `nodes`, everything else at its default.
    pub fn cluster(nodes: &[&str]) -> RedisConfig {
        RedisConfig {
            url: None,
            cluster_nodes: Some(nodes.iter().map(|n| (*n).to_owned()).collect()),
            ..RedisConfig::single("")
        }
    }

    /// Parses JSON (unknown fields refused) and validates it.
    pub fn from_json(text: &str) -> Result<RedisConfig, AdapterError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: RedisConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                bad(format!("{}", e.inner()))
            } else {
                bad(format!("`{path}`: {}", e.inner()))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses zeros, empty strings and a missing or doubled endpoint, naming the field.
    pub fn validate(&self) -> Result<(), AdapterError> {
        match (&self.url, &self.cluster_nodes) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "both `url` and `cluster_nodes` are set: give `url` for one node or \
                     `cluster_nodes` for a cluster, not both"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(bad(
                    "neither `url` nor `cluster_nodes` is set: give `url` for one node or \
                     `cluster_nodes` for a cluster"
                        .into(),
                ));
            }
            (Some(url), None) if url.trim().is_empty() => {
                return Err(bad("`url` is empty".into()));
            }
            (None, Some(nodes)) => {
                if nodes.is_empty() {
                    return Err(bad(
                        "`cluster_nodes` is empty: name at least one node".into()
                    ));
                }
                if let Some(i) = nodes.iter().position(|n| n.trim().is_empty()) {
                    return Err(bad(format!("`cluster_nodes[{i}]` is empty")));
                }
            }
            _ => {}
        }
        if self.prefix.is_empty() {
            return Err(bad("`prefix` is empty".into()));
        }
        if self.prefix.contains(char::is_whitespace) {
            return Err(bad(format!(
                "`prefix` `{}` contains whitespace",
                self.prefix
            )));
        }
        if self.command_timeout_ms == 0 {
            return Err(bad("`command_timeout_ms` is 0: it must be above 0".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(bad("`connect_timeout_ms` is 0: it must be above 0".into()));
        }
        if self.maxlen == Some(0) {
            return Err(bad(
                "`maxlen` is 0: it must be above 0 (leave it out to keep everything)".into(),
            ));
        }
        if self.shards == Some(0) {
            return Err(bad("`shards` is 0: it must be above 0".into()));
        }
        if self.dedup_capacity == Some(0) {
            return Err(bad(
                "`dedup_capacity` is 0: size it as events/s x seconds of overlap \
                 (10 000/s x 300 s = 3 000 000)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The command timeout.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The stream of `shard`: `{prefix}:{shard}`.
    pub fn key(&self, shard: u16) -> String {
        format!("{}:{shard}", self.prefix)
    }

    /// Where the events go, without credentials: `redis://host:port/db prefix` or
    /// `redis-cluster://a,b,c prefix`.
    pub fn destination(&self) -> String {
        match (&self.url, &self.cluster_nodes) {
            (Some(url), _) => format!("{} {}", redact(url), self.prefix),
            (None, Some(nodes)) => {
                let nodes: Vec<String> = nodes
                    .iter()
                    .map(|n| redact(n).trim_start_matches("redis://").to_owned())
                    .collect();
                format!("redis-cluster://{} {}", nodes.join(","), self.prefix)
            }
            (None, None) => format!("redis://? {}", self.prefix),
        }
    }
}

/// `url` without its user and password (`redis://user:pw@host:1/0` → `redis://host:1/0`).
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = match rest.rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match RedisConfig::from_json(json) {
            Ok(c) => panic!("{json} was accepted: {c:?}"),
            Err(e) => {
                assert!(!e.is_transient(), "{e}");
                e.message
            }
        }
    }

    #[test]
    fn defaults_and_a_full_config() {
        let c = RedisConfig::from_json(r#"{"url": "redis://127.0.0.1:6379"}"#).unwrap();
        assert_eq!(c.prefix, "net");
        assert_eq!(c.command_timeout_ms, 5000);
        assert_eq!(c.connect_timeout_ms, 5000);
        assert_eq!(c.maxlen, None);
        assert_eq!(c.dedup_capacity, None);
        assert_eq!(c.key(7), "net:7");
        let c = RedisConfig::from_json(
            r#"{"cluster_nodes": ["redis://a:1", "redis://b:2"], "prefix": "ev",
                "command_timeout_ms": 100, "connect_timeout_ms": 200, "maxlen": 1000,
                "shards": 4, "dedup_capacity": 3000000}"#,
        )
        .unwrap();
        assert_eq!(c.maxlen, Some(1000));
        assert_eq!(c.shards, Some(4));
        assert_eq!(c.destination(), "redis-cluster://a:1,b:2 ev");
    }

    #[test]
    fn zeros_empties_and_endpoints_are_refused_by_field_name() {
        let url = r#""url": "redis://h:1""#;
        let cases = [
            (
                format!("{{{url}, \"command_timeout_ms\": 0}}"),
                "`command_timeout_ms`",
            ),
            (
                format!("{{{url}, \"connect_timeout_ms\": 0}}"),
                "`connect_timeout_ms`",
            ),
            (format!("{{{url}, \"maxlen\": 0}}"), "`maxlen`"),
            (format!("{{{url}, \"shards\": 0}}"), "`shards`"),
            (
                format!("{{{url}, \"dedup_capacity\": 0}}"),
                "`dedup_capacity`",
            ),
            (format!("{{{url}, \"prefix\": \"\"}}"), "`prefix`"),
            (r#"{"url": ""}"#.to_owned(), "`url` is empty"),
            (
                r#"{"cluster_nodes": []}"#.to_owned(),
                "`cluster_nodes` is empty",
            ),
            (
                r#"{"cluster_nodes": ["redis://a:1", " "]}"#.to_owned(),
                "`cluster_nodes[1]`",
            ),
            (
                r#"{"url": "redis://h:1", "cluster_nodes": ["redis://a:1"]}"#.to_owned(),
                "both `url` and `cluster_nodes`",
            ),
            (
                r#"{"prefix": "x"}"#.to_owned(),
                "neither `url` nor `cluster_nodes`",
            ),
            (
                format!("{{{url}, \"max_len\": 5}}"),
                "unknown field `max_len`",
            ),
            (format!("{{{url}, \"maxlen\": -1}}"), "maxlen"),
        ];
        for (json, want) in cases {
            let msg = err(&json);
            assert!(msg.contains(want), "{json}: `{msg}` does not name {want}");
        }
    }

    #[test]
    fn destination_hides_credentials() {
        let c = RedisConfig::single("redis://user:s3cret@127.0.0.1:6379/2");
        assert_eq!(c.destination(), "redis://127.0.0.1:6379/2 net");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let c = RedisConfig::cluster(&["redis://:pw@a:1", "b:2"]);
        assert_eq!(c.destination(), "redis-cluster://a:1,b:2 net");
    }
}
