//! Fixed log2 histograms made of plain counters, for figures a shard publishes to monitoring
//! (write and sync latency, batch sizes) without a lock and without allocating.
//!
//! Bucket `i` counts values in `[2^i, 2^(i+1))` (bucket 0 also takes 0); the last bucket takes
//! everything above. One thread writes (the shard: plain load + store, no read-modify-write);
//! any thread reads a [`Buckets`] copy. A reader may see one bucket bumped before `sum`; the
//! figures are for monitoring and never feed back into the data path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets per histogram: `2^31` µs is 36 minutes, `2^31` events more than any batch.
pub const BUCKETS: usize = 32;

/// A single-writer log2 histogram of counters.
#[derive(Debug)]
pub(crate) struct AtomicBuckets {
    counts: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Default for AtomicBuckets {
    fn default() -> AtomicBuckets {
        AtomicBuckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl AtomicBuckets {
    /// Records one value. Only the owning thread calls this.
    pub(crate) fn record(&self, value: u64) {
        let i = bucket_of(value);
        let c = &self.counts[i];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.sum
            .store(self.sum.load(Ordering::Relaxed) + value, Ordering::Relaxed);
    }

    /// A copy for a reader.
    pub(crate) fn read(&self) -> Buckets {
        Buckets {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// The bucket of `value`.
fn bucket_of(value: u64) -> usize {
    let log = 63 - value.max(1).leading_zeros() as usize;
    log.min(BUCKETS - 1)
}

/// A read copy of a log2 histogram: `counts[i]` values in `[2^i, 2^(i+1))` (bucket 0 from 0,
/// the last bucket without an upper bound), and the sum of all values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    /// Values per bucket.
    pub counts: [u64; BUCKETS],
    /// Sum of the values recorded.
    pub sum: u64,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            counts: [0; BUCKETS],
            sum: 0,
        }
    }
}

impl Buckets {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The exclusive upper bound of bucket `i` (`None` for the last, unbounded one).
    pub fn upper_bound(i: usize) -> Option<u64> {
        (i + 1 < BUCKETS).then(|| 1u64 << (i + 1))
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_power_of_two_bucket_and_the_sum_is_exact() {
        let b = AtomicBuckets::default();
        for v in [0, 1, 2, 3, 4, 1023, 1024, u64::MAX] {
            b.record(v.min(1 << 40));
        }
        let r = b.read();
        assert_eq!(r.counts[0], 2); // 0 and 1
        assert_eq!(r.counts[1], 2); // 2, 3
        assert_eq!(r.counts[2], 1); // 4
        assert_eq!(r.counts[9], 1); // 1023
        assert_eq!(r.counts[10], 1); // 1024
        assert_eq!(r.counts[BUCKETS - 1], 1); // 2^40 clamps into the last bucket
        assert_eq!(r.count(), 8);
        assert_eq!(r.sum, 1 + 2 + 3 + 4 + 1023 + 1024 + (1 << 40));
        assert_eq!(Buckets::upper_bound(0), Some(2));
        assert_eq!(Buckets::upper_bound(BUCKETS - 1), None);
    }
}
