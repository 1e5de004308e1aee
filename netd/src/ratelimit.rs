//! Rate-limited warnings for anything a client can cause once per frame or per connection:
//! per cause, at most one log line a second (the engine's [`net_engine::RateLimit`]), and the
//! next line that goes out carries how many were held back (`suppressed`), so a client that
//! floods the socket with garbage cannot flood the log. The counters
//! (`net_socket_closed_total{reason}`) count every one.

use net_engine::RateLimit;

/// The causes netd logs per frame or per connection; anything else shares the last slot.
const CAUSES: [&str; 12] = [
    "malformed",
    "too_large",
    "unavailable",
    "shutting_down",
    "timeout",
    "bad_cursor",
    "busy",
    "slow_frame",
    "truncated",
    "accept",
    "read_failed",
    "other",
];

/// One limiter per cause.
#[derive(Debug)]
pub struct LogLimiter {
    limits: [RateLimit; CAUSES.len()],
}

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter::new()
    }
}

impl LogLimiter {
    /// At most one line per cause per second.
    pub fn new() -> LogLimiter {
        LogLimiter {
            limits: std::array::from_fn(|_| RateLimit::per_second(1)),
        }
    }

    fn slot(cause: &str) -> usize {
        CAUSES
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(CAUSES.len() - 1)
    }

    /// Whether a line for `cause` may go out at `now_ns`; `Some(k)` with the lines held back
    /// since the last one.
    pub fn admit_at(&self, cause: &str, now_ns: u64) -> Option<u64> {
        self.limits[Self::slot(cause)].check(now_ns)
    }

    /// Logs a warning for `cause` if its limiter admits it now (the message is only built
    /// then).
    pub fn warn(&self, cause: &'static str, message: impl FnOnce() -> String) {
        if let Some(suppressed) = self.limits[Self::slot(cause)].check_now() {
            tracing::warn!(target: "netd::socket", cause, suppressed, "{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_cause_lets_one_line_through_per_second_and_counts_the_rest() {
        let l = LogLimiter::new();
        let t0 = 5_000_000_000;
        assert_eq!(l.admit_at("malformed", t0), Some(0));
        for i in 0..100_000 {
            assert_eq!(l.admit_at("malformed", t0 + i), None);
        }
        // Another cause has its own budget.
        assert_eq!(l.admit_at("too_large", t0), Some(0));
        assert_eq!(l.admit_at("malformed", t0 + 1_000_000_000), Some(100_000));
        assert_eq!(l.admit_at("malformed", t0 + 1_000_000_001), None);
    }
}
