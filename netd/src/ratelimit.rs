//! Rate-limited warnings for anything a client can cause once per frame or per connection:
//! per cause, at most one log line per interval, and the next one that goes out says how many
//! were held back, so a client that floods the socket with garbage cannot flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-cause limiter of warnings.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    causes: Mutex<HashMap<&'static str, Slot>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    last: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per cause per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            causes: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line for `cause` may go out now; `Some(k)` with the lines held back since
    /// the last one.
    pub fn admit(&self, cause: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        match causes.get_mut(cause) {
            Some(slot) if now.duration_since(slot.last) < self.interval => {
                slot.suppressed += 1;
                None
            }
            Some(slot) => {
                let held = slot.suppressed;
                *slot = Slot {
                    last: now,
                    suppressed: 0,
                };
                Some(held)
            }
            None => {
                causes.insert(
                    cause,
                    Slot {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }

    /// Logs a warning for `cause` if the limiter admits it (the message is only built then).
    pub fn warn(&self, cause: &'static str, message: impl FnOnce() -> String) {
        if let Some(suppressed) = self.admit(cause) {
            tracing::warn!(target: "netd::socket", cause, suppressed, "{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_cause_lets_one_line_through_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_millis(200));
        assert_eq!(l.admit("malformed"), Some(0));
        for _ in 0..100_000 {
            assert_eq!(l.admit("malformed"), None);
        }
        // Another cause has its own budget.
        assert_eq!(l.admit("too_large"), Some(0));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(l.admit("malformed"), Some(100_000));
        assert_eq!(l.admit("malformed"), None);
    }
}
