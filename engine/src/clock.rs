//! Clocks: a monotonic nanosecond clock shared by producers and shards (for latency), and the
//! per-shard event timestamp generator.
//!
//! The generator is owned by one shard thread, so it needs no CAS: each timestamp is
//! `max(now, last + 1)` with `now` re-read for every batch, so stamps are strictly increasing
//! within a shard and never fall behind real time by more than the events of one batch (1 ns
//! each). The v0.10 generator read `now` once outside its CAS loop and drifted arbitrarily far
//! behind under contention; here there is no loop to drift in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds of `CLOCK_MONOTONIC`; comparable across threads of this process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds since the Unix epoch (wall clock).
pub fn realtime_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Strictly increasing event timestamps for one shard.
#[derive(Debug, Default)]
pub struct TimestampGenerator {
    last_ns: u64,
    now_ns: u64,
}

impl TimestampGenerator {
    /// Starts after `last_ns` (the newest timestamp already in the shard's log).
    pub fn after(last_ns: u64) -> TimestampGenerator {
        TimestampGenerator { last_ns, now_ns: 0 }
    }

    /// Re-reads the wall clock; call once per batch.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    /// The next timestamp: never below the last tick, always above the previous stamp.
    pub fn stamp(&mut self) -> u64 {
        self.last_ns = self.now_ns.max(self.last_ns.saturating_add(1));
        self.last_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_and_follow_real_time() {
        let mut g = TimestampGenerator::after(100);
        g.tick(50);
        assert_eq!((g.stamp(), g.stamp()), (101, 102));
        g.tick(1_000);
        assert_eq!(g.stamp(), 1_000, "a clock jump forward is followed at once");
        g.tick(10);
        assert_eq!(
            g.stamp(),
            1_001,
            "a clock step back never makes stamps go back"
        );
        let mut g = TimestampGenerator::after(u64::MAX);
        assert_eq!(g.stamp(), u64::MAX, "saturates instead of wrapping");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
