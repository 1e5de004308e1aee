//! Which Redis errors a sink retries and which stop it.
//!
//! The rule is a closed list of the transient ones: a lost or refused connection, a timeout,
//! and the server answers that mean "not now" (a cluster moving slots or failing over, a
//! replica that is read-only for now, a server still loading its data, a busy script).
//! Everything else is fatal, including anything this list does not recognise: an unknown
//! error retried with backoff would be retried forever while the sink's lag grows, whereas a
//! fatal one is reported at once with its message, and an operator can decide.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::ErrorClass;

/// Error codes Redis sends that the client does not know by name but that mean "try again
/// later". Matched on the code, the error's first word.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
    "READONLY",
    "MOVED",
    "ASK",
];

/// Whether retrying `err` can help; see the module docs.
pub fn classify(err: &RedisError) -> ErrorClass {
    match err.kind() {
        // A lost, refused, reset or timed-out connection.
        ErrorKind::Io => ErrorClass::Transient,
        // The cluster client found no connection to the node owning a slot (a node down or
        // being replaced).
        ErrorKind::ClusterConnectionNotFound => ErrorClass::Transient,
        ErrorKind::Server(
            ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading,
        ) => ErrorClass::Transient,
        // A code the client does not know by name (NOAUTH, WRONGPASS, WRONGTYPE, BUSY,
        // NOREPLICAS, ...): transient only if listed.
        ErrorKind::Extension => match err.code() {
            Some(code) if TRANSIENT_CODES.contains(&code) => ErrorClass::Transient,
            _ => ErrorClass::Fatal,
        },
        // Authentication failed, an unexpected reply, a client-side misuse, anything else.
        _ => ErrorClass::Fatal,
    }
}

/// Whether `err` is Redis refusing an XADD whose explicit id is not above the stream's last
/// id: what a retried write of an entry already written gets.
pub(crate) fn is_id_not_above_top(err: &RedisError) -> bool {
    err.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && err
            .detail()
            .is_some_and(|d| d.contains("equal or smaller than the target stream top item"))
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use ErrorClass::{Fatal, Transient};

    /// An error as the client makes it from a server's reply line.
    fn server(line: &str) -> RedisError {
        let wire = format!("-{line}\r\n");
        match redis::parse_redis_value(wire.as_bytes()) {
            Ok(v) => v.extract_error().expect_err("an error reply"),
            Err(e) => e,
        }
    }

    #[test]
    fn classification_table() {
        let io = |k: io::ErrorKind| RedisError::from(io::Error::from(k));
        let table: Vec<(&str, RedisError, ErrorClass)> = vec![
            // Connections and timeouts.
            ("refused", io(io::ErrorKind::ConnectionRefused), Transient),
            ("reset", io(io::ErrorKind::ConnectionReset), Transient),
            ("dropped", io(io::ErrorKind::BrokenPipe), Transient),
            ("eof", io(io::ErrorKind::UnexpectedEof), Transient),
            ("timed out", io(io::ErrorKind::TimedOut), Transient),
            ("io other", io(io::ErrorKind::Other), Transient),
            (
                "no cluster connection",
                (ErrorKind::ClusterConnectionNotFound, "no node").into(),
                Transient,
            ),
            // A cluster moving or failing over, a server not ready.
            ("MOVED", server("MOVED 3999 127.0.0.1:6381"), Transient),
            ("ASK", server("ASK 3999 127.0.0.1:6381"), Transient),
            (
                "READONLY",
                server("READONLY You can't write against a read only replica."),
                Transient,
            ),
            (
                "CLUSTERDOWN",
                server("CLUSTERDOWN The cluster is down"),
                Transient,
            ),
            (
                "NOREPLICAS",
                server("NOREPLICAS Not enough good replicas to write."),
                Transient,
            ),
            (
                "LOADING",
                server("LOADING Redis is loading the dataset in memory"),
                Transient,
            ),
            (
                "TRYAGAIN",
                server("TRYAGAIN Multiple keys request during rehashing of slot"),
                Transient,
            ),
            (
                "BUSY",
                server("BUSY Redis is busy running a script."),
                Transient,
            ),
            (
                "MASTERDOWN",
                server("MASTERDOWN Link with MASTER is down"),
                Transient,
            ),
            // Credentials and permissions.
            ("NOAUTH", server("NOAUTH Authentication required."), Fatal),
            (
                "WRONGPASS",
                server("WRONGPASS invalid username-password pair or user is disabled."),
                Fatal,
            ),
            (
                "auth failed",
                (
                    ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )
                    .into(),
                Fatal,
            ),
            (
                "NOPERM",
                server("NOPERM User u has no permissions to run the 'xadd' command"),
                Fatal,
            ),
            // Requests that will never succeed.
            (
                "WRONGTYPE",
                server("WRONGTYPE Operation against a key holding the wrong kind of value"),
                Fatal,
            ),
            ("syntax", server("ERR syntax error"), Fatal),
            (
                "unknown command",
                server("ERR unknown command 'XADDD', with args beginning with: "),
                Fatal,
            ),
            (
                "bad arguments",
                server("ERR wrong number of arguments for 'xadd' command"),
                Fatal,
            ),
            (
                "id not above top",
                server(
                    "ERR The ID specified in XADD is equal or smaller than the target stream top item",
                ),
                Fatal,
            ),
            (
                "CROSSSLOT",
                server("CROSSSLOT Keys in request don't hash to the same slot"),
                Fatal,
            ),
            (
                "EXECABORT",
                server("EXECABORT Transaction discarded"),
                Fatal,
            ),
            (
                "OOM",
                server("OOM command not allowed when used memory > 'maxmemory'."),
                Fatal,
            ),
            (
                "unexpected reply",
                (ErrorKind::UnexpectedReturnType, "not a stream entry").into(),
                Fatal,
            ),
            ("parse", (ErrorKind::Parse, "bad reply").into(), Fatal),
            ("client", (ErrorKind::Client, "misuse").into(), Fatal),
            (
                "config",
                (ErrorKind::InvalidClientConfig, "bad url").into(),
                Fatal,
            ),
            // Unknown means fatal, so nothing is retried forever.
            ("unknown code", server("WHATEVER something new"), Fatal),
            (
                "unknown extension",
                redis::make_extension_error("NEWTHING".into(), None),
                Fatal,
            ),
        ];
        for (name, err, want) in &table {
            assert_eq!(classify(err), *want, "{name}: {err} ({:?})", err.kind());
        }
        assert!(is_id_not_above_top(
            &table.iter().find(|t| t.0 == "id not above top").unwrap().1
        ));
        assert!(!is_id_not_above_top(&server("ERR syntax error")));
    }
}
