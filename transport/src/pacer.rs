//! The handshake pacer: a token bucket per source address, refusing initiations beyond the
//! rate before any cryptography is done (an initiation costs the responder two X25519
//! operations, so unpaced ones are a cheap way to burn its core).
//!
//! Buckets are keyed by IP address, not port: a flood from many ports of one host shares one
//! bucket. The table is bounded (`sources_max`, reserved at start so inserting allocates
//! nothing); when it is full, idle buckets (full again) are swept, and if none is idle the
//! new source shares one overflow bucket with the same rate, so a flood from many addresses
//! is paced as one source rather than growing the table.

use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, scaled by `SCALE` (fractions of a token accrue between refills).
    tokens: u64,
    at_ns: u64,
}

const SCALE: u64 = 1 << 20;

/// Per-source token buckets.
#[derive(Debug)]
pub struct Pacer {
    per_sec: u64,
    burst: u64,
    sources_max: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
    /// When the table was last swept: at most once per `SWEEP_EVERY_NS`, so a flood from
    /// new addresses costs one bucket each, not a walk over the table each.
    swept_ns: Option<u64>,
    sweeps: u64,
}

const SWEEP_EVERY_NS: u64 = 1_000_000_000;

impl Pacer {
    /// `per_sec` initiations a second per source, up to `burst` at once; `sources_max`
    /// sources tracked. All must be non-zero (the config checks it).
    pub fn new(per_sec: u32, burst: u32, sources_max: usize) -> Pacer {
        let full = Bucket {
            tokens: u64::from(burst) * SCALE,
            at_ns: 0,
        };
        Pacer {
            per_sec: u64::from(per_sec.max(1)),
            burst: u64::from(burst.max(1)),
            sources_max: sources_max.max(1),
            buckets: HashMap::with_capacity(sources_max.max(1)),
            overflow: full,
            swept_ns: None,
            sweeps: 0,
        }
    }

    fn refill(&self, b: &mut Bucket, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(b.at_ns);
        // tokens/ns = per_sec / 1e9; scaled.
        let add =
            u128::from(elapsed) * u128::from(self.per_sec) * u128::from(SCALE) / 1_000_000_000;
        let cap = self.burst * SCALE;
        b.tokens = u64::try_from((u128::from(b.tokens) + add).min(u128::from(cap))).unwrap_or(cap);
        b.at_ns = now_ns.max(b.at_ns);
    }

    fn take(&self, b: &mut Bucket, now_ns: u64) -> bool {
        self.refill(b, now_ns);
        if b.tokens >= SCALE {
            b.tokens -= SCALE;
            true
        } else {
            false
        }
    }

    /// Whether an initiation from `source` may be processed now (takes a token if so).
    pub fn allow(&mut self, source: IpAddr, now_ns: u64) -> bool {
        if let Some(mut b) = self.buckets.get(&source).copied() {
            let ok = self.take(&mut b, now_ns);
            self.buckets.insert(source, b);
            return ok;
        }
        if self.buckets.len() >= self.sources_max
            && self
                .swept_ns
                .is_none_or(|t| now_ns.saturating_sub(t) >= SWEEP_EVERY_NS)
        {
            self.swept_ns = Some(now_ns);
            self.sweep(now_ns);
        }
        let mut fresh = Bucket {
            tokens: self.burst * SCALE,
            at_ns: now_ns,
        };
        if self.buckets.len() < self.sources_max {
            let ok = self.take(&mut fresh, now_ns);
            self.buckets.insert(source, fresh);
            ok
        } else {
            let mut o = self.overflow;
            let ok = self.take(&mut o, now_ns);
            self.overflow = o;
            ok
        }
    }

    /// Times the table was swept (at most once a second).
    pub fn sweeps(&self) -> u64 {
        self.sweeps
    }

    /// Drops buckets that are full again (their sources have been quiet for a while).
    fn sweep(&mut self, now_ns: u64) {
        self.sweeps += 1;
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now_ns.saturating_sub(b.at_ns);
            let add = u128::from(elapsed) * u128::from(per_sec) * u128::from(SCALE) / 1_000_000_000;
            u128::from(b.tokens) + add < u128::from(burst * SCALE)
        });
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SEC: u64 = 1_000_000_000;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut p = Pacer::new(10, 3, 16);
        let t = 5 * SEC;
        assert!((0..3).all(|_| p.allow(ip(1), t)));
        assert!(!p.allow(ip(1), t));
        // Another source is unaffected.
        assert!(p.allow(ip(2), t));
        // 100 ms later: one more token.
        assert!(p.allow(ip(1), t + SEC / 10));
        assert!(!p.allow(ip(1), t + SEC / 10));
    }

    #[test]
    fn many_sources_cannot_grow_the_table() {
        let mut p = Pacer::new(1, 1, 8);
        let mut allowed = 0;
        for n in 0..10_000 {
            allowed += usize::from(p.allow(ip(n), SEC));
        }
        assert!(p.sources() <= 8);
        // 8 tracked sources and the overflow bucket's single token.
        assert_eq!(allowed, 9);
        // After a quiet while, the table frees up for new sources.
        assert!(p.allow(ip(99_999), 100 * SEC));
    }
}
