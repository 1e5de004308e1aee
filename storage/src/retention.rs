//! Retention: removing the oldest whole sealed segments once a limit is exceeded. The active
//! segment is never removed, so the newest events always stay.
//!
//! The in-memory segment list is rebuilt into a new vector and swapped in before any file is
//! touched: a panic or an error while unlinking cannot leave it half rewritten (a v0.10 sweep
//! rebased offsets in place and corrupted its index when it panicked midway). Files are
//! removed `.dat` first, so a crash between the two unlinks leaves only an orphan `.idx`, which
//! the next open deletes. Limits: `max_events`, `max_bytes` (of `.dat` files), `max_age_ms`
//! (of a segment's newest record); absent means no limit, zero is rejected by the config.

use crate::error::{Result, StorageError};
use crate::log::{Log, SealedSegment};
use crate::segment;

/// Retention limits of one log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most about this many events (whole segments are removed while over).
    pub max_events: Option<u64>,
    /// Keep at most about this many bytes of `.dat`.
    pub max_bytes: Option<u64>,
    /// Remove a sealed segment once its newest record is older than this.
    pub max_age_ms: Option<u64>,
}

impl Retention {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_events.is_some() || self.max_bytes.is_some() || self.max_age_ms.is_some()
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Segments removed.
    pub segments: usize,
    /// Events removed.
    pub events: u64,
    /// `.dat` bytes removed.
    pub bytes: u64,
}

impl Log {
    /// Removes the oldest sealed segments while `policy` is exceeded at wall-clock `now_ns`.
    pub fn enforce_retention(&mut self, policy: &Retention, now_ns: u64) -> Result<Swept> {
        let k = self.segments_over(policy, now_ns);
        if k == 0 {
            return Ok(Swept::default());
        }
        let mut kept = Vec::with_capacity(self.sealed.capacity().max(self.sealed.len() - k));
        kept.extend_from_slice(&self.sealed[k..]);
        let removed: Vec<SealedSegment> = std::mem::replace(&mut self.sealed, kept)
            .into_iter()
            .take(k)
            .collect();
        self.forget_reader_below(self.first_seq());
        let mut swept = Swept::default();
        for s in &removed {
            for path in [
                segment::dat_path(&self.dir, s.base),
                segment::idx_path(&self.dir, s.base),
            ] {
                std::fs::remove_file(&path).map_err(|source| StorageError::Io {
                    op: "remove",
                    path,
                    source,
                })?;
            }
            swept.segments += 1;
            swept.events += s.end - s.base;
            swept.bytes += s.dat_bytes;
        }
        segment::sync_dir(&self.dir)?;
        Ok(swept)
    }

    /// How many of the oldest sealed segments exceed the policy.
    fn segments_over(&self, policy: &Retention, now_ns: u64) -> usize {
        let mut events = self.persisted_end - self.first_seq();
        let mut bytes =
            self.sealed.iter().map(|s| s.dat_bytes).sum::<u64>() + self.dat[self.open].end();
        let age_ns = policy.max_age_ms.map(|ms| ms.saturating_mul(1_000_000));
        let mut k = 0;
        for s in &self.sealed {
            let over = policy.max_events.is_some_and(|m| events > m)
                || policy.max_bytes.is_some_and(|m| bytes > m)
                || age_ns.is_some_and(|a| now_ns.saturating_sub(s.last_ts_ns) > a);
            if !over {
                break;
            }
            events -= s.end - s.base;
            bytes -= s.dat_bytes;
            k += 1;
        }
        k
    }
}
