//! A lock-free log rate limiter, one per cause: anything an outside party can trigger per
//! packet or per frame is logged through one, so no flood of packets becomes a flood of log
//! lines (the drop counters still count every packet).
//!
//! At most `burst` events pass per interval (intervals are aligned on the clock: `now /
//! interval`); the calls swallowed in between are counted, and the next one let through
//! carries that count (`suppressed = K`). State: two atomics, no lock, no allocation. A
//! swallowed call is one load and one uncontended add; a passing one a compare-and-swap and a
//! swap. It may be shared between threads: at most `burst` pass per interval whatever the
//! interleaving, and every swallowed call is reported by exactly one later passing call.

use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds in a second.
const SECOND_NS: u64 = 1_000_000_000;

/// Lets at most `burst` events per interval through; see the module docs.
#[derive(Debug)]
pub struct RateLimit {
    /// High 32 bits: the interval number (`now / interval`, wrapping); low 32 bits: the calls
    /// let through in it.
    window: AtomicU64,
    /// Calls swallowed since the last one let through.
    suppressed: AtomicU64,
    interval_ns: u64,
    burst: u32,
}

impl RateLimit {
    /// At most `burst` (at least 1) events per `interval_ns` (at least 1). `const`, so that a
    /// call site can keep its own in a `static`.
    pub const fn new(burst: u32, interval_ns: u64) -> RateLimit {
        RateLimit {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            interval_ns: if interval_ns == 0 { 1 } else { interval_ns },
            burst: if burst == 0 { 1 } else { burst },
        }
    }

    /// At most `burst` events per second.
    pub const fn per_second(burst: u32) -> RateLimit {
        RateLimit::new(burst, SECOND_NS)
    }

    /// Whether to log now (`now_ns` on any monotonic clock, the same for every call):
    /// `Some(suppressed)`, the calls swallowed since the last one let through, or `None`.
    #[inline]
    pub fn check(&self, now_ns: u64) -> Option<u64> {
        // Wrapping: 2^32 intervals (136 years of seconds) with no call at all in between would
        // be taken for the same interval, which only swallows a few more.
        #[allow(clippy::cast_possible_truncation)]
        let epoch = (now_ns / self.interval_ns) as u32;
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            #[allow(clippy::cast_possible_truncation)]
            let (e, n) = ((cur >> 32) as u32, cur as u32);
            // A reading behind the current interval (another thread's older clock) counts in
            // the current one; one ahead opens a new interval.
            #[allow(clippy::cast_possible_wrap)]
            let newer = epoch.wrapping_sub(e) as i32 > 0;
            let next = if newer {
                (u64::from(epoch) << 32) | 1
            } else if n < self.burst {
                cur + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// [`check`](Self::check) on `CLOCK_MONOTONIC` (for callers with no clock reading of
    /// their own; a shard passes the one it has).
    pub fn check_now(&self) -> Option<u64> {
        self.check(monotonic_ns())
    }

    /// Calls swallowed since the last one let through (not yet reported).
    pub fn pending(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    #[allow(clippy::cast_sign_loss)] // monotonic time is never negative
    let ns = (ts.tv_sec as u64)
        .saturating_mul(SECOND_NS)
        .saturating_add(ts.tv_nsec as u64);
    ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: u64 = SECOND_NS;

    #[test]
    fn a_burst_within_an_interval_lets_through_at_most_n() {
        for burst in [1u32, 3, 10] {
            let l = RateLimit::per_second(burst);
            let passed = (0..1_000_000u64)
                .filter(|i| l.check(5 * S + i % S).is_some())
                .count();
            assert_eq!(passed, burst as usize);
            assert_eq!(l.pending(), 1_000_000 - u64::from(burst));
        }
    }

    #[test]
    fn the_first_call_after_the_interval_reports_exactly_what_was_swallowed() {
        let l = RateLimit::per_second(2);
        assert_eq!(l.check(S), Some(0));
        assert_eq!(l.check(S + 1), Some(0));
        for i in 0..999_998 {
            assert_eq!(l.check(S + 2 + i), None);
        }
        assert_eq!(l.check(2 * S), Some(999_998));
        assert_eq!(l.check(2 * S + 1), Some(0));
        assert_eq!(l.check(2 * S + 2), None);
        // Quiet intervals in between change nothing; the count carries over.
        assert_eq!(l.check(10 * S), Some(1));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn a_clock_reading_behind_counts_in_the_current_interval() {
        let l = RateLimit::per_second(1);
        assert_eq!(l.check(7 * S), Some(0));
        assert_eq!(
            l.check(6 * S),
            None,
            "an older reading opens no new interval"
        );
        assert_eq!(l.check(8 * S), Some(1));
    }

    #[test]
    fn shared_across_threads_it_keeps_the_cap_and_loses_no_count() {
        const THREADS: u64 = 4;
        const CALLS: u64 = 250_000;
        let l = Arc::new(RateLimit::new(5, 1_000 * S));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let (mut passed, mut suppressed) = (0u64, 0u64);
                    for i in 0..CALLS {
                        if let Some(k) = l.check(S + i) {
                            passed += 1;
                            suppressed += k;
                        }
                    }
                    (passed, suppressed)
                })
            })
            .collect();
        let (mut passed, mut suppressed) = (0, 0);
        for h in handles {
            let (p, s) = h.join().unwrap();
            passed += p;
            suppressed += s;
        }
        assert_eq!(passed, 5, "one interval: exactly the burst passes");
        assert_eq!(suppressed + l.pending(), THREADS * CALLS - 5);
        // The next interval's first call reports the rest.
        let rest = l.pending();
        assert_eq!(l.check(2_000 * S), Some(rest));
    }

    #[test]
    fn check_now_passes_the_first_call() {
        let l = RateLimit::per_second(1);
        assert_eq!(l.check_now(), Some(0));
        assert!(l.pending() <= 1);
    }
}
