//! The read side of a log as its writer publishes it: a versioned segment map, swapped
//! atomically, and a visible-end watermark, so that readers on any thread read segments
//! themselves and the writer (a shard thread) never does read I/O for them.
//!
//! Protocol:
//! - The writer publishes a batch by storing `visible_end` (Release) once the batch completed
//!   under the fsync policy; its live index entries are published first (Release on their
//!   count). A reader loads `visible_end` (Acquire) *before* the map, so every sequence number
//!   below it lies in a segment the map already holds (a roll adds the new segment to the map
//!   before any of its records can become visible).
//! - A segment in the map holds its `.dat` open; retention swaps in a map without it before
//!   unlinking the file, so a reader that loaded the old map keeps reading the unlinked file
//!   through its descriptor, and no file is deleted under a reader.
//! - Sealed segments found when the log opened load their sparse `.idx` on first use; entries
//!   that fail their checksum or their order are dropped (the index is derived data: a reader
//!   that lacks an entry reads from the one before it, or from the segment's start).
//!
//! Allocation happens when the map changes (a roll, a retention sweep), never per batch.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::manifest::Gap;
use crate::segment::{self, SEGMENT_HEADER_BYTES};

/// A sparse index being written by the writer: `(seq, offset, record length)` slots, of which
/// the first `published` are final and visible to readers.
#[derive(Debug)]
pub(crate) struct LiveIndex {
    slots: Box<[[AtomicU64; 3]]>,
    published: AtomicUsize,
}

impl LiveIndex {
    pub(crate) fn new(capacity: usize) -> LiveIndex {
        LiveIndex {
            slots: (0..capacity)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            published: AtomicUsize::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Writer: fills slot `i` (not yet published).
    pub(crate) fn set(&self, i: usize, seq: u64, offset: u64, len: u32) {
        self.slots[i][0].store(seq, Ordering::Relaxed);
        self.slots[i][1].store(offset, Ordering::Relaxed);
        self.slots[i][2].store(u64::from(len), Ordering::Relaxed);
    }

    /// Writer: makes the first `n` slots visible.
    pub(crate) fn publish(&self, n: usize) {
        self.published.store(n, Ordering::Release);
    }

    /// Writer: the seq of slot `i`, published or not.
    pub(crate) fn seq_at(&self, i: usize) -> u64 {
        self.slots[i][0].load(Ordering::Relaxed)
    }

    fn entry(&self, i: usize) -> (u64, u64) {
        (
            self.slots[i][0].load(Ordering::Relaxed),
            self.slots[i][1].load(Ordering::Relaxed),
        )
    }

    /// Writer: slot `i` as an index entry.
    pub(crate) fn slot(&self, i: usize) -> IndexEntry {
        IndexEntry {
            seq: self.slots[i][0].load(Ordering::Relaxed),
            offset: self.slots[i][1].load(Ordering::Relaxed),
            len: u32::try_from(self.slots[i][2].load(Ordering::Relaxed)).expect("a u32 length"),
        }
    }

    fn floor(&self, seq: u64) -> Option<(u64, u64)> {
        let n = self.published.load(Ordering::Acquire);
        // Entries are ascending by seq: the last one at or below `seq`.
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entry(mid).0 <= seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.entry(i))
    }
}

/// A segment's sparse index as readers see it.
#[derive(Debug)]
pub(crate) enum SegmentIndex {
    /// Written by this log since it opened.
    Live(LiveIndex),
    /// Found on disk when the log opened; loaded on first use.
    OnDisk(OnceLock<Box<[(u64, u64)]>>),
}

/// One segment in the map.
#[derive(Debug)]
pub(crate) struct SegmentHandle {
    pub(crate) base: u64,
    /// One past its last record once sealed (or known); `u64::MAX` while it is written.
    pub(crate) end: AtomicU64,
    /// Bytes of `.dat` that hold visible records (readers do not read ahead past it).
    pub(crate) data_end: AtomicU64,
    /// `.dat`, read-only, `O_DIRECT` where supported.
    pub(crate) dat: File,
    pub(crate) index: SegmentIndex,
}

impl SegmentHandle {
    /// The `(seq, offset)` of the last index entry at or below `seq` that is also below
    /// `below` (so a caller can step back past an entry that did not check out), or the
    /// segment's first record.
    pub(crate) fn floor(&self, dir: &Path, seq: u64, below: u64) -> (u64, u64) {
        let start = (self.base, SEGMENT_HEADER_BYTES as u64);
        let bound = seq.min(below.saturating_sub(1));
        if below <= self.base {
            return start;
        }
        let hit = match &self.index {
            SegmentIndex::Live(live) => live.floor(bound),
            SegmentIndex::OnDisk(cell) => {
                let entries = cell.get_or_init(|| load_index(dir, self.base));
                let i = entries.partition_point(|&(s, _)| s <= bound);
                i.checked_sub(1).map(|i| entries[i])
            }
        };
        hit.filter(|&(s, _)| s >= self.base).unwrap_or(start)
    }
}

/// Loads a sealed segment's `.idx`, keeping entries whose checksum holds and whose seq and
/// offset both grow; anything else (a missing file included) leaves fewer entries.
fn load_index(dir: &Path, base: u64) -> Box<[(u64, u64)]> {
    let bytes = std::fs::read(segment::idx_path(dir, base)).unwrap_or_default();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_BYTES);
    for raw in bytes.chunks_exact(INDEX_ENTRY_BYTES) {
        let Some(e) = IndexEntry::decode(raw) else {
            continue;
        };
        let grows = out.last().is_none_or(|&(s, o)| e.seq > s && e.offset > o);
        if grows && e.seq >= base && e.offset >= SEGMENT_HEADER_BYTES as u64 {
            out.push((e.seq, e.offset));
        }
    }
    out.into_boxed_slice()
}

/// One version of the segment map.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    /// The first sequence number still stored.
    pub(crate) first_seq: u64,
    /// Segments, ascending by base.
    pub(crate) segments: Vec<Arc<SegmentHandle>>,
    /// Accepted losses.
    pub(crate) gaps: Vec<Gap>,
}

impl SegmentMap {
    /// The segment holding `seq` (the last one whose base is at or below it).
    pub(crate) fn segment_of(&self, seq: u64) -> Option<(usize, &Arc<SegmentHandle>)> {
        let i = self.segments.partition_point(|s| s.base <= seq);
        let i = i.checked_sub(1)?;
        Some((i, &self.segments[i]))
    }

    pub(crate) fn gap_at(&self, seq: u64) -> Option<Gap> {
        self.gaps
            .iter()
            .copied()
            .find(|g| g.from <= seq && seq < g.to)
    }
}

/// What a log's readers share with its writer.
#[derive(Debug)]
pub(crate) struct ViewShared {
    pub(crate) shard: u16,
    pub(crate) dir: PathBuf,
    pub(crate) map: ArcSwap<SegmentMap>,
    pub(crate) visible_end: CachePadded<AtomicU64>,
}

/// A handle to read a log from any thread: cheap to clone, valid after the log is closed
/// (it then reads what the log left).
#[derive(Debug, Clone)]
pub struct LogView {
    pub(crate) shared: Arc<ViewShared>,
}

impl LogView {
    pub(crate) fn new(shard: u16, dir: PathBuf, map: SegmentMap, visible_end: u64) -> LogView {
        LogView {
            shared: Arc::new(ViewShared {
                shard,
                dir,
                map: ArcSwap::from_pointee(map),
                visible_end: CachePadded::new(AtomicU64::new(visible_end)),
            }),
        }
    }

    /// One past the last record readers may see.
    pub fn visible_end(&self) -> u64 {
        self.shared.visible_end.load(Ordering::Acquire)
    }

    /// The first sequence number still stored.
    pub fn first_seq(&self) -> u64 {
        self.shared.map.load().first_seq
    }

    /// The shard the log belongs to.
    pub fn shard(&self) -> u16 {
        self.shared.shard
    }

    /// A new reader of this log (see [`crate::Reader`]).
    pub fn reader(&self) -> crate::Reader {
        crate::Reader::new(self.clone())
    }

    /// Writer: records below `end` may be read.
    pub(crate) fn publish_visible(&self, end: u64) {
        self.shared.visible_end.store(end, Ordering::Release);
    }

    /// Writer: replaces the map.
    pub(crate) fn publish_map(&self, map: SegmentMap) {
        self.shared.map.store(Arc::new(map));
    }

    pub(crate) fn map(&self) -> Arc<SegmentMap> {
        self.shared.map.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_floor_sees_only_published_entries() {
        let idx = LiveIndex::new(8);
        idx.set(0, 10, 4096, 40);
        idx.set(1, 20, 70_000, 40);
        idx.set(2, 30, 140_000, 40);
        idx.publish(2);
        assert_eq!(idx.floor(9), None);
        assert_eq!(idx.floor(10), Some((10, 4096)));
        assert_eq!(idx.floor(25), Some((20, 70_000)));
        assert_eq!(idx.floor(35), Some((20, 70_000)), "slot 2 is not published");
        idx.publish(3);
        assert_eq!(idx.floor(35), Some((30, 140_000)));
    }

    #[test]
    fn a_damaged_on_disk_index_loses_entries_not_correctness() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 4 * INDEX_ENTRY_BYTES];
        for (i, (seq, offset)) in [(5u64, 4096u64), (9, 9000), (12, 20_000), (15, 30_000)]
            .into_iter()
            .enumerate()
        {
            IndexEntry {
                seq,
                offset,
                len: 40,
            }
            .encode(&mut bytes[i * INDEX_ENTRY_BYTES..]);
        }
        bytes[2 * INDEX_ENTRY_BYTES + 3] ^= 1;
        std::fs::write(segment::idx_path(dir.path(), 5), &bytes).unwrap();
        let loaded = load_index(dir.path(), 5);
        assert_eq!(&loaded[..], &[(5, 4096), (9, 9000), (15, 30_000)]);
        assert!(
            load_index(dir.path(), 99).is_empty(),
            "a missing index is empty"
        );
    }
}
