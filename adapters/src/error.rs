//! The one error type of the adapters, classified so that a sink knows whether to retry.

use std::fmt;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The backend may accept the same request later: a timeout, a lost connection, a cluster
    /// in failover (`MOVED`, `ASK`, `READONLY`, `CLUSTERDOWN`, ...), a server still loading.
    /// Sinks retry these with capped backoff.
    Transient,
    /// The backend will never accept it: bad credentials, no permission, a wrong key type, a
    /// malformed request, bad configuration, an adapter already shut down. Surfaced at once,
    /// never retried.
    Fatal,
}

/// An adapter error: the backend, the class, and what went wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AdapterError {
    /// `"redis"`, `"jetstream"`, or `"sink"`/`"source"` for the adapter's own errors.
    pub backend: &'static str,
    /// Whether retrying can help.
    pub class: ErrorClass,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Transient => "transient",
            ErrorClass::Fatal => "fatal",
        };
        write!(f, "{} ({class}): {}", self.backend, self.message)
    }
}

impl AdapterError {
    /// A transient error of `backend`.
    pub fn transient(backend: &'static str, message: impl Into<String>) -> AdapterError {
        AdapterError {
            backend,
            class: ErrorClass::Transient,
            message: message.into(),
        }
    }

    /// A fatal error of `backend`.
    pub fn fatal(backend: &'static str, message: impl Into<String>) -> AdapterError {
        AdapterError {
            backend,
            class: ErrorClass::Fatal,
            message: message.into(),
        }
    }

    /// Whether retrying can help.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}
