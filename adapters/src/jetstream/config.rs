//! The JetStream adapter's configuration: read from JSON with unknown fields refused (a
//! misspelled option is an error, not a silently ignored line), and validated before anything
//! connects, each refusal naming the field.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::AdapterError;

/// Where a JetStream sink writes and a JetStream source reads; see `docs/adapters-jetstream.md`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The server, such as `nats://127.0.0.1:4222`.
    pub url: String,
    /// User name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password, with `user`.
    #[serde(default)]
    pub password: Option<String>,
    /// Token authentication (instead of `user`/`password`).
    #[serde(default)]
    pub token: Option<String>,
    /// The stream holding every shard's subject (default `NET`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Shard `k` is written to subject `<subject_prefix>.<k>` (default `net`).
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Every request, and every batch's publish acknowledgements together, must finish within
    /// this (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Connecting must finish within this (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The stream's duplicate window (the time within which a repeated `Nats-Msg-Id` is
    /// dropped), used when the sink creates the stream (default 120000).
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
    /// Create the stream (subjects `<subject_prefix>.>`, file storage) when it is missing
    /// (default true); when false a missing stream is a fatal error.
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// For a source: how many recent event ids it remembers to drop repeats. Required for a
    /// source; size it as events per second times the seconds two copies of an event can be
    /// apart (see the docs).
    #[serde(default)]
    pub dedup_capacity: Option<usize>,
}

fn default_stream() -> String {
    "NET".to_owned()
}
fn default_subject_prefix() -> String {
    "net".to_owned()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_duplicate_window_ms() -> u64 {
    120_000
}
fn default_true() -> bool {
    true
}

// The password and token never reach a log through `{:?}`.
impl fmt::Debug for JetStreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("JetStreamConfig")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("duplicate_window_ms", &self.duplicate_window_ms)
            .field("create_stream", &self.create_stream)
            .field("dedup_capacity", &self.dedup_capacity)
            .finish()
    }
}

/// `url` without any `user:password@` part.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => host,
        None => rest,
    };
    match scheme {
        Some(s) => format!("{s}://{rest}"),
        None => rest.to_owned(),
    }
}

impl JetStreamConfig {
    /// The defaults, for the server at `url`.
    pub fn new(url: impl Into<String>) -> JetStreamConfig {
        JetStreamConfig {
            url: url.into(),
            user: None,
            password: None,
            token: None,
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            command_timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_timeout_ms(),
            duplicate_window_ms: default_duplicate_window_ms(),
            create_stream: true,
            dedup_capacity: None,
        }
    }

    /// Parses and validates the JSON form, naming the field that is wrong.
    pub fn from_json(text: &str) -> Result<JetStreamConfig, AdapterError> {
        let mut json = serde_json::Deserializer::from_str(text);
        let config: JetStreamConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("`{path}`: ")
            };
            bad(format!("cannot read the configuration: {at}{}", e.inner()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), AdapterError> {
        if self.url.trim().is_empty() {
            return Err(bad(
                "`url` is empty: name the server, such as nats://127.0.0.1:4222",
            ));
        }
        for (name, value) in [
            ("user", &self.user),
            ("password", &self.password),
            ("token", &self.token),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(bad(format!("`{name}` is empty: leave it out instead")));
            }
        }
        match (&self.user, &self.password) {
            (Some(_), None) => return Err(bad("`user` is set without `password`")),
            (None, Some(_)) => return Err(bad("`password` is set without `user`")),
            _ => {}
        }
        if self.token.is_some() && self.user.is_some() {
            return Err(bad(
                "`token` and `user`/`password` are both set: use one way to authenticate",
            ));
        }
        check_stream_name(&self.stream)?;
        check_subject_prefix(&self.subject_prefix)?;
        for (name, value) in [
            ("command_timeout_ms", self.command_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("duplicate_window_ms", self.duplicate_window_ms),
        ] {
            if value == 0 {
                return Err(bad(format!("`{name}` is 0: it must be at least 1")));
            }
        }
        if self.dedup_capacity == Some(0) {
            return Err(bad(
                "`dedup_capacity` is 0: it must hold the ids of the events two copies of one \
                 event can be apart (events/s x seconds of overlap)",
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

    /// The subject shard `shard` is written to: `<subject_prefix>.<shard>`.
    pub fn subject(&self, shard: u16) -> String {
        format!("{}.{shard}", self.subject_prefix)
    }

    /// The subjects of the stream the sink creates: `<subject_prefix>.>`.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

fn bad(message: impl Into<String>) -> AdapterError {
    AdapterError::fatal("jetstream", format!("jetstream config: {}", message.into()))
}

fn check_stream_name(name: &str) -> Result<(), AdapterError> {
    if name.is_empty() {
        return Err(bad("`stream` is empty: name the stream, such as NET"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || ['.', '*', '>', '/', '\\'].contains(c))
    {
        return Err(bad(format!(
            "`stream` `{name}` contains {c:?}: a stream name may not contain spaces, `.`, `*`, \
             `>`, `/` or `\\`"
        )));
    }
    Ok(())
}

fn check_subject_prefix(prefix: &str) -> Result<(), AdapterError> {
    if prefix.is_empty() {
        return Err(bad("`subject_prefix` is empty: use something like `net`"));
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err(bad(format!(
                "`subject_prefix` `{prefix}` has an empty token (a leading, trailing or double `.`)"
            )));
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return Err(bad(format!(
                "`subject_prefix` `{prefix}` contains a wildcard (`*` or `>`)"
            )));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "`subject_prefix` `{prefix}` contains a space or a control character"
            )));
        }
    }
    Ok(())
}
