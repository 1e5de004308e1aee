//! Retention: removing the oldest whole sealed segments once a limit is exceeded. The active
//! segment (and one being sealed) is never removed, so the newest events always stay.
//!
//! Order, so that a crash at any point leaves a log that opens without complaint:
//! 1. the segments leave the published map (a reader that already holds them keeps reading
//!    through its open descriptors), and the manifest's `first_seq` moves past them;
//! 2. only once that manifest is durable are their files unlinked, `.idx` before `.dat`, and
//!    the directory fsynced. A crash before the manifest is durable leaves the segments named
//!    by the old manifest (they are simply still there); a crash after leaves files below
//!    `first_seq`, which the next open removes. A `.dat` whose `.idx` is gone is a segment
//!    with a lost index; an `.idx` whose `.dat` is gone never results from this, so recovery
//!    may treat it as damage.
//!
//! The segment list is rebuilt into a new vector and swapped in before any file is touched: a
//! panic or an error while unlinking cannot leave it half rewritten (a v0.10 sweep rebased
//! offsets in place and corrupted its index when it panicked midway). Limits: `max_events`,
//! `max_bytes` (of `.dat` files), `max_age_ms` (of a segment's newest record); absent means no
//! limit, zero is rejected by the config.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use crate::error::{Result, StorageError, io_err};
use crate::log::{Log, SealedSegment, op, push};
use crate::segment;
use crate::uring::Submit;
use crate::view::SegmentMap;

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

/// Segments out of the map whose files wait for the manifest that drops them to be durable.
#[derive(Debug)]
pub(crate) struct Pending {
    segments: Vec<SealedSegment>,
    generation: u64,
}

impl Log {
    /// Removes the oldest sealed segments while `policy` is exceeded at wall-clock `now_ns`:
    /// they leave the map at once, and their files go once the manifest is durable (see the
    /// module docs). One sweep at a time: while one waits, this does nothing.
    pub fn retain(
        &mut self,
        sq: &mut dyn Submit,
        policy: &Retention,
        now_ns: u64,
    ) -> Result<Swept> {
        self.retain_held(sq, policy, now_ns, u64::MAX)
    }

    /// [`Log::retain`], removing no segment that holds a sequence number at or above
    /// `keep_from` (a consumer that must not lose unread events holds retention there; the
    /// limits are then exceeded until it moves on).
    pub fn retain_held(
        &mut self,
        sq: &mut dyn Submit,
        policy: &Retention,
        now_ns: u64,
        keep_from: u64,
    ) -> Result<Swept> {
        self.check_poison()?;
        if self.retention.is_some() {
            return Ok(Swept::default());
        }
        let over = self.segments_over(policy, now_ns);
        let k = self.sealed[..over].partition_point(|s| s.end <= keep_from);
        if k == 0 {
            return Ok(Swept::default());
        }
        let mut kept = Vec::with_capacity(self.sealed.capacity().max(self.sealed.len() - k));
        kept.extend_from_slice(&self.sealed[k..]);
        let removed: Vec<SealedSegment> = std::mem::replace(&mut self.sealed, kept)
            .into_iter()
            .take(k)
            .collect();
        let first = self.sealed.first().map_or_else(
            || self.sealing.as_ref().map_or(self.active.base, |s| s.base),
            |s| s.base,
        );
        let generation = self.manifest.update(|m| {
            m.first_seq = first;
            m.prune_gaps();
        });
        let map = self.view.map();
        self.view.publish_map(SegmentMap {
            first_seq: first,
            segments: map
                .segments
                .iter()
                .filter(|s| s.base >= first)
                .cloned()
                .collect(),
            gaps: self.manifest.manifest().gaps.clone(),
        });
        let swept = Swept {
            segments: removed.len(),
            events: removed.iter().map(|s| s.end - s.base).sum(),
            bytes: removed.iter().map(|s| s.dat_bytes).sum(),
        };
        tracing::debug!(
            shard = self.cfg.shard,
            segments = swept.segments,
            events = swept.events,
            bytes = swept.bytes,
            first_seq = first,
            "retention removed segments"
        );
        self.retention = Some(Pending {
            segments: removed,
            generation,
        });
        self.pump_manifest(sq)?;
        self.retention_step(sq)?;
        Ok(swept)
    }

    /// Unlinks the files of a sweep once its manifest is durable.
    pub(crate) fn retention_step(&mut self, sq: &mut dyn Submit) -> Result<()> {
        let ready = self
            .retention
            .as_ref()
            .is_some_and(|p| self.manifest.durable_generation() >= p.generation);
        if !ready {
            return Ok(());
        }
        let pending = self.retention.take().expect("checked above");
        for s in &pending.segments {
            for path in [
                segment::idx_path(&self.dir, s.base),
                segment::dat_path(&self.dir, s.base),
            ] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(StorageError::Io {
                            op: "remove",
                            path,
                            source,
                        });
                    }
                }
            }
        }
        let entry = opcode::Fsync::new(types::Fd(self.dir_fd.as_raw_fd()))
            .build()
            .user_data(op::tag(op::DIR_SYNC_RETENTION, 0));
        self.ops_in_flight += push(sq, entry).map_err(io_err("fsync directory", &self.dir))?;
        Ok(())
    }

    /// How many of the oldest sealed segments exceed the policy.
    fn segments_over(&self, policy: &Retention, now_ns: u64) -> usize {
        let mut events = self.next_seq - self.first_seq();
        let sealing_bytes = self.sealing.as_ref().map_or(0, |s| s.data_end);
        let mut bytes = self.sealed.iter().map(|s| s.dat_bytes).sum::<u64>()
            + sealing_bytes
            + self.stages[self.open].end();
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
