//! The workload a scenario runs (events, payload size, shards, producers) and what one design
//! measured running it, so that net and its baselines are described and compared alike.

use crate::{alloc, report};
use hdrhistogram::Histogram;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Highest latency a histogram records exactly; longer samples saturate to it. A minute is
/// far beyond anything a healthy run sees, and a fixed bound means recording never resizes
/// (never allocates) inside a measured window.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Significant digits of every latency histogram (hdrhistogram's usual choice).
pub const LATENCY_DIGITS: u8 = 3;

/// What every design is asked to do in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub events: u64,
    pub payload_bytes: usize,
    pub shards: usize,
    pub producers: usize,
}

impl Workload {
    pub fn payload_total_bytes(&self) -> u64 {
        self.events * self.payload_bytes as u64
    }
}

/// What one design measured: the window runs from the producers' release to the moment the
/// last event was persisted.
#[derive(Debug)]
pub struct Measurement {
    pub persisted: u64,
    pub dropped: u64,
    pub elapsed: Duration,
    pub allocations: alloc::Snapshot,
    /// CPU time of the whole process in the window, where the platform reports it.
    pub cpu: Option<Duration>,
    /// Send-to-persisted latency per event, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Measurement {
    pub fn events_per_s(&self) -> f64 {
        report::per_s(self.persisted, self.elapsed)
    }

    pub fn mb_per_s(&self, payload_bytes: usize) -> f64 {
        report::per_s(self.persisted * payload_bytes as u64, self.elapsed) / 1e6
    }

    /// Allocations in the window divided by the events asked for: exact, not sampled.
    pub fn allocs_per_event(&self, events: u64) -> f64 {
        self.allocations.allocations as f64 / events.max(1) as f64
    }

    /// Process CPU time per event in nanoseconds: all threads, both sides of every queue.
    pub fn cpu_ns_per_event(&self, events: u64) -> Option<f64> {
        self.cpu
            .map(|cpu| cpu.as_nanos() as f64 / events.max(1) as f64)
    }

    pub fn percentiles(&self) -> report::Percentiles {
        report::Percentiles::from_ns(&self.latency)
    }
}

/// Where producer threads wait before a measured window: they finish their set-up (and its
/// allocations) at `ready`, the releasing thread takes the readings that open the window, and
/// only then are they let `go`. One barrier would let a late-starting producer allocate its
/// buffers after the readings, inside the window.
#[derive(Debug)]
pub struct StartLine {
    ready: Barrier,
    go: Barrier,
}

impl StartLine {
    pub fn new(producers: usize) -> Arc<StartLine> {
        Arc::new(StartLine {
            ready: Barrier::new(producers + 1),
            go: Barrier::new(producers + 1),
        })
    }

    /// A producer: set up, now wait for the release.
    pub fn wait(&self) {
        self.ready.wait();
        self.go.wait();
    }

    /// The releasing thread: returns once every producer is set up; take readings, then
    /// call `release`.
    pub fn wait_ready(&self) {
        self.ready.wait();
    }

    pub fn release(&self) {
        self.go.wait();
    }
}

/// An empty latency histogram with the bench-wide bounds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_max(LATENCY_NS_MAX, LATENCY_DIGITS).expect("static histogram bounds")
}

/// The shard of `key` among `shards`: xxh3 of the key mapped with the unbiased multiply-shift
/// `(hash * n) >> 64` (Lemire), which needs no division and favours no shard.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    let hash = xxhash_rust::xxh3::xxh3_64(key);
    let wide = (u128::from(hash) * shards as u128) >> 64;
    usize::try_from(wide).expect("below shards, which is a usize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_spreads_keys_evenly() {
        let shards = 4;
        let mut counts = [0u32; 4];
        for i in 0u64..40_000 {
            counts[shard_of(&i.to_le_bytes(), shards)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(shard_of(b"anything", 1), 0);
    }

    #[test]
    fn shard_of_routes_keys_like_net() {
        for shards in [1, 2, 3, 8] {
            for counter in 0..1000 {
                let key = crate::payload::key(1, counter);
                assert_eq!(
                    shard_of(&key, shards),
                    net_engine::shard_for_key(&key, shards)
                );
            }
        }
    }

    #[test]
    fn allocs_per_event_is_exact() {
        let m = Measurement {
            persisted: 4,
            dropped: 0,
            elapsed: Duration::from_secs(2),
            allocations: alloc::Snapshot {
                allocations: 2,
                bytes: 0,
            },
            cpu: Some(Duration::from_micros(1)),
            latency: latency_histogram(),
        };
        assert_eq!(m.allocs_per_event(4), 0.5);
        assert_eq!(m.events_per_s(), 2.0);
        assert_eq!(m.mb_per_s(1_000_000), 2.0);
        assert_eq!(m.cpu_ns_per_event(4), Some(250.0));
    }
}
