//! The RedEX log of one shard: stages batches of records, writes each batch with one aligned
//! direct write, makes it durable by group commit, and publishes it to readers.
//!
//! The log does no blocking I/O on its hot path: it queues operations on a [`Submit`] queue
//! (the shard's ring) and is handed their completions ([`Log::complete`]). A standalone log
//! (tools, tests) owns a small ring instead and offers blocking helpers (`append`, `flush`,
//! `close`; see `blocking.rs`).
//!
//! The pipeline (group commit, pipelined):
//! - One batch is filled in an open stage while others are in flight. A batch's write is
//!   submitted only after the previous write completed, because both rewrite the partial block
//!   where one ends and the next begins (with identical leading bytes).
//! - With `sync`, an `fdatasync` is linked behind the batch's write (`IOSQE_IO_LINK`): it starts
//!   the moment the write completes, and covers that batch and everything written before it.
//!   The next batch's write is submitted as soon as this write completes, while the sync is
//!   still running, so writing overlaps syncing.
//! - Batches complete strictly in order: a batch without a sync when its write completed, a
//!   batch with one once a sync covering it completed (a later sync of the same segment covers
//!   earlier batches too). Completion publishes the batch to readers (visible end), and the
//!   caller may hand it to batch consumers ([`Log::pop_completed`]) before its stage is reused.
//! - The first record of each batch is stamped, at submission, with how many records of the
//!   segment were acknowledged by then (written, or synced, as [`Ack`] says; see
//!   [`crate::record`]), so recovery can tell a torn tail from damaged acknowledged data.
//!
//! Invariants:
//! - Sequence numbers are contiguous within a segment and across segments, except across an
//!   accepted gap recorded in the manifest.
//! - A failed, short or cancelled write or sync poisons the log: every later push, submit and
//!   completion returns [`StorageError::Poisoned`] naming the first failure. Nothing is retried
//!   (the PostgreSQL fsync lesson): after an error the kernel's view of the file is unknown.
//! - Readers see only records of completed batches.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use io_uring::{opcode, squeue, types};

use crate::buffer::BLOCK_BYTES;
use crate::error::{Result, StorageError};
use crate::record::{
    self, FLAG_BATCH_FIRST, FLAG_ORIGIN, ORIGIN_BYTES, Origin, RECORD_HEADER_BYTES, RecordMeta,
    record_bytes,
};
use crate::roll::{ManifestWriter, Sealing};
use crate::segment::{self, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::stage::Stage;
use crate::uring::{Ring, Submit};
use crate::view::{LogView, SegmentHandle, SegmentIndex};

/// Stages one log owns: the open batch, one write in flight, and batches waiting for their
/// sync or for batch consumers.
pub(crate) const STAGES: usize = 4;
/// Syncs of batches in flight at once.
pub(crate) const SYNCS_MAX: usize = 3;
/// The smallest segment that holds its header block and one small record.
pub const SEGMENT_BYTES_MIN: u64 = 2 * BLOCK_BYTES as u64;

const _: () = assert!(SYNCS_MAX < STAGES);

/// Operation kinds in the low byte of a log tag; the rest of the tag is an id.
pub(crate) mod op {
    pub(crate) const WRITE: u64 = 1;
    pub(crate) const SYNC: u64 = 2;
    pub(crate) const DIR_SYNC: u64 = 3;
    pub(crate) const SEAL_TRUNCATE: u64 = 4;
    pub(crate) const SEAL_SYNC: u64 = 5;
    pub(crate) const SEAL_INDEX_WRITE: u64 = 6;
    pub(crate) const SEAL_INDEX_SYNC: u64 = 7;
    pub(crate) const MANIFEST_WRITE: u64 = 8;
    pub(crate) const MANIFEST_SYNC: u64 = 9;
    pub(crate) const DIR_SYNC_RETENTION: u64 = 10;
    pub(crate) const WARM_WRITE: u64 = 11;
    pub(crate) const WARM_SYNC: u64 = 12;

    pub(crate) fn tag(kind: u64, id: u64) -> u64 {
        kind | (id << 8)
    }

    pub(crate) fn kind(tag: u64) -> u64 {
        tag & 0xFF
    }

    pub(crate) fn id(tag: u64) -> u64 {
        tag >> 8
    }
}

/// When a record counts as acknowledged (what the shard promises under its fsync policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Once its write completed (fsync policy `never`).
    Written,
    /// Once an `fdatasync` covering it completed.
    Synced,
}

/// Sizing and behaviour of one shard's log, fixed when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// The shard that owns the log (written into segment headers and checked on open).
    pub shard: u16,
    /// A segment rolls before its `.dat` would grow past this many bytes.
    pub segment_bytes: u64,
    /// Most record bytes (headers and payloads) one batch may hold.
    pub batch_bytes_max: usize,
    /// Most records one batch may hold.
    pub batch_events_max: usize,
    /// When a record counts as acknowledged (stamped into batches for recovery).
    pub ack: Ack,
    /// Reserve each segment's space when it is created (`fallocate`), so that writes do not
    /// extend the file (an extending direct write is handed to a kernel worker and serialised
    /// with the file's metadata).
    pub preallocate: bool,
}

impl LogConfig {
    /// A log of `shard` with the bus's default sizing.
    pub fn new(shard: u16) -> LogConfig {
        LogConfig {
            shard,
            segment_bytes: 128 << 20,
            batch_bytes_max: 4 << 20,
            batch_events_max: 32_768,
            ack: Ack::Synced,
            preallocate: true,
        }
    }

    /// The largest payload that fits a batch and a segment. For a record with an origin
    /// ([`Log::push_with_origin`]) the limit applies to the origin block and the payload
    /// together.
    pub fn payload_bytes_max(&self) -> usize {
        let segment_room = usize::try_from(
            self.segment_bytes
                .saturating_sub(SEGMENT_HEADER_BYTES as u64),
        )
        .unwrap_or(usize::MAX);
        self.batch_bytes_max
            .min(segment_room)
            .saturating_sub(RECORD_HEADER_BYTES)
            .min(record::RECORD_PAYLOAD_BYTES_MAX)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |field, what: String| Err(StorageError::Invalid { field, what });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    self.segment_bytes
                ),
            );
        }
        if self.batch_events_max == 0 {
            return invalid("batch_events_max", "must be at least 1".into());
        }
        if self.batch_bytes_max < record_bytes(1) {
            return invalid(
                "batch_bytes_max",
                format!("{} cannot hold one record", self.batch_bytes_max),
            );
        }
        Ok(())
    }

    pub(crate) fn stride(&self) -> u64 {
        segment::index_stride_bytes(self.segment_bytes)
    }
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The record was staged with this sequence number.
    Staged(u64),
    /// Not now: the open batch is full, or the segment is full and must roll once I/O in
    /// flight completes. Submit the open batch if there is one, else wait for a completion,
    /// then push again.
    Full,
}

/// A batch that completed under the fsync policy: records `first_seq..end_seq`, readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// First sequence number of the batch.
    pub first_seq: u64,
    /// One past its last sequence number.
    pub end_seq: u64,
    stage: usize,
    from: usize,
}

/// A completed batch's records, borrowed from the stage they were written from: no copy.
#[derive(Debug, Clone, Copy)]
pub struct AppendedBatch<'a> {
    /// First sequence number of the batch.
    pub first_seq: u64,
    /// One past its last sequence number.
    pub end_seq: u64,
    bytes: &'a [u8],
}

/// One record of an [`AppendedBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRecord<'a> {
    /// Sequence number within the shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where the record came from, if it was appended with [`Log::push_with_origin`].
    pub origin: Option<Origin>,
    /// The payload as sent (without the origin block).
    pub payload: &'a [u8],
}

impl<'a> AppendedBatch<'a> {
    /// Records in sequence order.
    pub fn records(&self) -> impl Iterator<Item = AppendedRecord<'a>> + 'a {
        let mut rest = self.bytes;
        std::iter::from_fn(move || {
            let (record, len) = parse_staged(rest)?;
            rest = &rest[len..];
            Some(record)
        })
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.end_seq - self.first_seq
    }

    /// Whether the batch holds no record (never: batches are submitted non-empty).
    pub fn is_empty(&self) -> bool {
        self.first_seq == self.end_seq
    }
}

/// The record at the start of `src`, which this log encoded into a stage (no checksum or
/// reserved-byte check: the bytes never left this process), and its length; `None` if `src`
/// is shorter than the record its header announces.
fn parse_staged(src: &[u8]) -> Option<(AppendedRecord<'_>, usize)> {
    let head = src.get(..RECORD_HEADER_BYTES)?;
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    let len = usize::try_from(half(0)).ok()?;
    let body = src.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?;
    let (origin, payload) = if half(8) & FLAG_ORIGIN != 0 {
        let block = body.get(..ORIGIN_BYTES)?;
        (Some(Origin::fields(block)), &body[ORIGIN_BYTES..])
    } else {
        (None, body)
    };
    let record = AppendedRecord {
        seq: word(16),
        ts_ns: word(24),
        origin,
        payload,
    };
    Some((record, RECORD_HEADER_BYTES + len))
}

/// A sealed segment's extent, for retention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedSegment {
    pub(crate) base: u64,
    pub(crate) end: u64,
    /// Length of its `.dat` file.
    pub(crate) dat_bytes: u64,
    /// Timestamp of its newest record.
    pub(crate) last_ts_ns: u64,
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) base: u64,
    pub(crate) dat: File,
    pub(crate) handle: Arc<SegmentHandle>,
    /// Index slots filled (published up to the visible end).
    pub(crate) entries: usize,
    /// Offset from which the next record gets an index entry.
    pub(crate) next_entry_at: u64,
    /// The last record staged: (seq, offset, len).
    pub(crate) last_record: Option<(u64, u64, u32)>,
    /// Seq up to which a completed sync covers this segment.
    pub(crate) synced_end: u64,
    /// Whether the segment's directory entry is durable (its dir fsync completed).
    pub(crate) dir_synced: bool,
}

/// A submitted batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch {
    pub(crate) stage: usize,
    /// Stage offset where its records start (after the carry).
    pub(crate) from: usize,
    pub(crate) seg: u64,
    pub(crate) first_seq: u64,
    pub(crate) end_seq: u64,
    /// `.dat` offset after its last record.
    pub(crate) data_end: u64,
    pub(crate) write_len: usize,
    pub(crate) sync: bool,
    pub(crate) written: bool,
}

/// The append-only segment log of one shard.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    /// The directory, open: segments are created relative to it and it is fsynced through it.
    pub(crate) dir_fd: File,
    pub(crate) cfg: LogConfig,
    pub(crate) own_ring: Option<Ring>,
    pub(crate) view: LogView,
    pub(crate) manifest: ManifestWriter,
    pub(crate) sealed: Vec<SealedSegment>,
    pub(crate) active: Active,
    pub(crate) sealing: Option<Sealing>,
    pub(crate) stages: Vec<Stage>,
    pub(crate) stage_free: [bool; STAGES],
    pub(crate) open: usize,
    pub(crate) open_events: usize,
    pub(crate) open_record_bytes: usize,
    /// Stage offset of the open batch's first record (for its stamp).
    pub(crate) open_first: Option<usize>,
    pub(crate) batches: VecDeque<Batch>,
    pub(crate) done: VecDeque<Batch>,
    /// Stage of the batch last handed out by `pop_completed`, freed at the next call.
    pub(crate) held: Option<usize>,
    pub(crate) write_in_flight: bool,
    /// Syncs in flight: (segment base, seq end covered).
    pub(crate) syncs: [Option<(u64, u64)>; SYNCS_MAX],
    pub(crate) ops_in_flight: usize,
    pub(crate) next_seq: u64,
    /// One past the last record of a completed write.
    pub(crate) written_end: u64,
    /// One past the last record covered by a completed sync.
    pub(crate) durable_end: u64,
    /// One past the last record of a completed batch (readable).
    pub(crate) visible_end: u64,
    /// Timestamp of the newest record pushed.
    pub(crate) last_ts_ns: u64,
    pub(crate) poisoned: Option<StorageError>,
    /// A new segment's directory fsync waits to go out with its first write.
    pub(crate) dir_sync_queued: bool,
    pub(crate) retention: Option<crate::retention::Pending>,
    pub(crate) reader: Option<crate::Reader>,
    pub(crate) warm: crate::warm::Warm,
}

impl Log {
    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sizing the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// A handle for readers on other threads.
    pub fn view(&self) -> &LogView {
        &self.view
    }

    /// Sequence number the next pushed record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// One past the last record whose batch completed (readable).
    pub fn persisted_end(&self) -> u64 {
        self.visible_end
    }

    /// One past the last record whose write completed.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// One past the last record known durable.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// Timestamp of the newest record pushed (or recovered).
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    /// The first sequence number still stored.
    pub fn first_seq(&self) -> u64 {
        self.manifest.manifest().first_seq
    }

    /// Records staged in the open batch, not yet submitted.
    pub fn open_events(&self) -> usize {
        self.open_events
    }

    /// Whether any operation of the log is in flight.
    pub fn in_flight(&self) -> bool {
        self.ops_in_flight > 0
    }

    /// Whether a batch write is in flight.
    pub fn write_in_flight(&self) -> bool {
        self.write_in_flight
    }

    /// Whether submitted batches wait for their write or sync.
    pub fn batches_in_flight(&self) -> bool {
        !self.batches.is_empty()
    }

    /// Number of segments (sealed, sealing and active).
    pub fn segments(&self) -> usize {
        self.sealed.len() + usize::from(self.sealing.is_some()) + 1
    }

    /// The failure that poisoned the log, if any.
    pub fn poisoned(&self) -> Option<&StorageError> {
        self.poisoned.as_ref()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(first) => Err(StorageError::Poisoned {
                shard: self.cfg.shard,
                first: Box::new(first.clone()),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&mut self, err: StorageError) -> StorageError {
        if self.poisoned.is_none() {
            self.poisoned = Some(err.clone());
        }
        err
    }

    /// Stages one record into the open batch.
    pub fn push(&mut self, ts_ns: u64, payload: &[u8]) -> Result<Push> {
        self.push_record(ts_ns, None, payload)
    }

    /// Stages one record that carries where it came from (see [`crate::record`]): its
    /// origin block goes before the payload, and readers return it as the record's origin.
    /// The payload limit ([`LogConfig::payload_bytes_max`]) applies to the block and the
    /// payload together.
    pub fn push_with_origin(
        &mut self,
        ts_ns: u64,
        origin: &Origin,
        payload: &[u8],
    ) -> Result<Push> {
        self.push_record(ts_ns, Some(origin), payload)
    }

    /// Stages one record, with an origin block when `origin` is given.
    fn push_record(&mut self, ts_ns: u64, origin: Option<&Origin>, payload: &[u8]) -> Result<Push> {
        self.check_poison()?;
        let max = self.cfg.payload_bytes_max();
        let body = record::origin_block_bytes(origin.is_some()) + payload.len();
        if body > max {
            let what = match origin {
                None => format!("{} bytes exceeds the maximum {max}", payload.len()),
                Some(_) => format!(
                    "{} bytes plus the {ORIGIN_BYTES}-byte origin block exceeds the maximum \
                     {max} (at most {} bytes of payload with an origin)",
                    payload.len(),
                    max.saturating_sub(ORIGIN_BYTES)
                ),
            };
            return Err(StorageError::Invalid {
                field: "payload",
                what,
            });
        }
        let rec = record_bytes(body);
        if self.open_events == self.cfg.batch_events_max
            || self.open_record_bytes + rec > self.cfg.batch_bytes_max
        {
            return Ok(Push::Full);
        }
        let segment_end = self.stages[self.open].end();
        if segment_end + rec as u64 > self.cfg.segment_bytes && self.next_seq > self.active.base {
            // Roll only once every batch of this segment completed (written, and synced when
            // it asked to be): a crash then never leaves a hole between the segment and the
            // next one, whose first write could otherwise land while this one's last did not.
            let settled =
                self.batches.is_empty() && self.active.dir_synced && self.warm.in_flight.is_none();
            if self.open_events > 0 || self.sealing.is_some() || !settled {
                return Ok(Push::Full);
            }
            self.roll()?;
        }
        let seq = self.next_seq;
        let stage = &mut self.stages[self.open];
        let offset = stage.end();
        let at = stage.fill;
        let first = self.open_events == 0;
        let meta = RecordMeta {
            seq,
            ts_ns,
            flags: if first { FLAG_BATCH_FIRST } else { 0 },
            committed: 0,
        };
        stage.append_with(rec, |dst| {
            record::encode_record(dst, &meta, origin, payload)
        });
        if first {
            self.open_first = Some(at);
        }
        let len = u32::try_from(rec).expect("bounded by payload_bytes_max");
        self.index_record(seq, offset, len);
        self.open_events += 1;
        self.open_record_bytes += rec;
        self.next_seq += 1;
        self.last_ts_ns = ts_ns;
        Ok(Push::Staged(seq))
    }

    /// Gives the record a sparse index entry when it is a stride past the last one.
    fn index_record(&mut self, seq: u64, offset: u64, len: u32) {
        let a = &mut self.active;
        a.last_record = Some((seq, offset, len));
        if offset < a.next_entry_at {
            return;
        }
        if let SegmentIndex::Live(live) = &a.handle.index
            && a.entries < live.capacity()
        {
            live.set(a.entries, seq, offset, len);
            a.entries += 1;
            a.next_entry_at = offset + self.cfg.stride();
        }
    }

    /// Whether [`Log::submit`] can take the open batch now.
    pub fn can_submit(&self) -> bool {
        let stage = &self.stages[self.open];
        let write_end = stage.start + crate::buffer::align_up(stage.fill) as u64;
        self.open_events > 0
            && !self.write_in_flight
            && self.poisoned.is_none()
            && self.stage_free.iter().any(|&f| f)
            && !self.warm.overlaps(stage.start, write_end)
    }

    /// Whether a sync slot is free (a batch with `sync` needs one).
    fn sync_slot(&self) -> Option<usize> {
        self.syncs.iter().position(Option::is_none)
    }

    /// Submits the open batch as one write; with `sync`, an `fdatasync` linked behind it makes
    /// the batch, and everything written before it, durable. Returns false if there was
    /// nothing to submit or it cannot be submitted yet (a write in flight, no free stage or
    /// sync slot): wait for a completion and try again.
    pub fn submit(&mut self, sq: &mut dyn Submit, sync: bool) -> Result<bool> {
        self.check_poison()?;
        let slot = if sync { self.sync_slot() } else { None };
        if !self.can_submit() || (sync && slot.is_none()) {
            return Ok(false);
        }
        self.queue_dir_sync(sq)?;
        let s = self.open;
        self.stamp_open_batch();
        let stage = &mut self.stages[s];
        let write_len = stage.seal_for_write();
        let data_end = stage.end();
        let from = stage.carry;
        let fd = self.active.dat.as_raw_fd();
        let write = opcode::Write::new(
            types::Fd(fd),
            stage.buf.as_slice().as_ptr(),
            u32::try_from(write_len).expect("stage sizes are far below 4 GiB"),
        )
        .offset(stage.start)
        .build()
        .user_data(op::tag(op::WRITE, 0));
        let first_seq = self.next_seq - self.open_events as u64;
        let mut ops = push_linked(sq, write, sync).map_err(|e| self.submit_error(e))?;
        if let Some(slot) = slot {
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(op::tag(op::SYNC, slot as u64));
            ops += push(sq, entry).map_err(|e| self.submit_error(e))?;
            self.syncs[slot] = Some((self.active.base, self.next_seq));
        }
        self.ops_in_flight += ops;
        self.write_in_flight = true;
        self.batches.push_back(Batch {
            stage: s,
            from,
            seg: self.active.base,
            first_seq,
            end_seq: self.next_seq,
            data_end,
            write_len,
            sync,
            written: false,
        });
        self.open_next_stage(s);
        Ok(true)
    }

    /// Stamps the open batch's first record with the records of this segment acknowledged
    /// by now.
    fn stamp_open_batch(&mut self) {
        let acked = match self.cfg.ack {
            Ack::Written => self.written_end,
            Ack::Synced => self.durable_end,
        };
        let committed = acked.saturating_sub(self.active.base);
        let committed = u32::try_from(committed).expect("a segment's records fit u32");
        let at = self
            .open_first
            .take()
            .expect("a non-empty batch has a first record");
        record::restamp(self.stages[self.open].bytes_mut(at), committed);
    }

    /// Makes a free stage the open one, carrying the partial block after `prev`.
    fn open_next_stage(&mut self, prev: usize) {
        self.stage_free[prev] = false;
        let next = self
            .stage_free
            .iter()
            .position(|&f| f)
            .expect("can_submit checked a free stage");
        self.stage_free[next] = false;
        let (a, b) = two_mut(&mut self.stages, prev, next);
        b.carry_from(a);
        self.open = next;
        self.open_events = 0;
        self.open_record_bytes = 0;
    }

    fn submit_error(&mut self, e: std::io::Error) -> StorageError {
        let path = segment::dat_path(&self.dir, self.active.base);
        self.poison(StorageError::Io {
            op: "submit write",
            path,
            source: e,
        })
    }

    /// Makes everything written so far durable with one `fdatasync` of the active segment,
    /// when no write is in flight. Returns false if there was nothing to sync or no slot.
    pub fn sync(&mut self, sq: &mut dyn Submit) -> Result<bool> {
        self.check_poison()?;
        let unsynced = self.active.synced_end < self.written_end.max(self.active.base);
        let covered = self
            .syncs
            .iter()
            .flatten()
            .any(|&(seg, end)| seg == self.active.base && end >= self.written_end);
        let Some(slot) = self.sync_slot() else {
            return Ok(false);
        };
        if self.write_in_flight || !unsynced || covered {
            return Ok(false);
        }
        let entry = opcode::Fsync::new(types::Fd(self.active.dat.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(op::tag(op::SYNC, slot as u64));
        self.ops_in_flight += push(sq, entry).map_err(|e| self.submit_error(e))?;
        self.syncs[slot] = Some((self.active.base, self.written_end));
        Ok(true)
    }

    /// Handles the completion of one of the log's operations (`tag` as pushed). Completed
    /// batches are then available from [`Log::pop_completed`].
    pub fn complete(&mut self, sq: &mut dyn Submit, tag: u64, res: i32) -> Result<()> {
        self.ops_in_flight = self.ops_in_flight.saturating_sub(1);
        if self.poisoned.is_some() {
            return self.check_poison();
        }
        let outcome = match op::kind(tag) {
            op::WRITE => self.on_write(res),
            op::SYNC => self.on_sync(op::id(tag), res),
            op::DIR_SYNC => self.on_dir_sync(res),
            op::DIR_SYNC_RETENTION => Ok(()),
            op::WARM_WRITE | op::WARM_SYNC => self.on_warm(tag, res),
            op::MANIFEST_WRITE | op::MANIFEST_SYNC => self.on_manifest(tag, res),
            _ => self.on_seal_op(tag, res),
        };
        if let Err(e) = outcome {
            return Err(self.poison(e));
        }
        self.advance_durable();
        self.collect_completed();
        let next = self
            .continue_sealing(sq)
            .and_then(|()| self.retention_step(sq))
            .and_then(|()| self.pump_manifest(sq));
        next.map_err(|e| self.poison(e))
    }

    fn on_write(&mut self, res: i32) -> Result<()> {
        self.write_in_flight = false;
        let b = self
            .batches
            .iter_mut()
            .find(|b| !b.written)
            .expect("a write in flight belongs to a batch");
        if usize::try_from(res).ok() != Some(b.write_len) {
            let path = segment::dat_path(&self.dir, b.seg);
            return Err(op_error("write", path, res, b.write_len));
        }
        b.written = true;
        self.written_end = b.end_seq;
        Ok(())
    }

    fn on_sync(&mut self, slot: u64, res: i32) -> Result<()> {
        let slot = usize::try_from(slot).expect("a slot index");
        let (seg, end) = self.syncs[slot]
            .take()
            .expect("a sync in flight has a slot");
        if res != 0 {
            return Err(op_error(
                "fdatasync",
                segment::dat_path(&self.dir, seg),
                res,
                0,
            ));
        }
        if seg == self.active.base {
            self.active.synced_end = self.active.synced_end.max(end);
        } else if let Some(s) = self.sealing.as_mut()
            && s.base == seg
        {
            s.synced_end = s.synced_end.max(end);
        }
        Ok(())
    }

    fn on_dir_sync(&mut self, res: i32) -> Result<()> {
        if res != 0 {
            return Err(op_error("fsync directory", self.dir.clone(), res, 0));
        }
        self.active.dir_synced = true;
        // The new segment's name is durable: the manifest may now call it the newest.
        let base = self.active.base;
        self.manifest.update(|m| m.active_base = base);
        Ok(())
    }

    /// Recomputes the durable watermark: the sealing segment's synced prefix until it is
    /// wholly synced, then the active segment's (once its name is durable).
    pub(crate) fn advance_durable(&mut self) {
        let durable = match &self.sealing {
            Some(s) if s.synced_end < s.end_seq => s.synced_end,
            _ if self.active.dir_synced => self.active.synced_end.max(self.active.base),
            _ => self.active.base,
        };
        self.durable_end = self.durable_end.max(durable);
    }

    /// Moves batches that completed, in order, to the done queue and publishes them.
    fn collect_completed(&mut self) {
        let mut visible = None;
        while let Some(b) = self.batches.front() {
            let complete = b.written && (!b.sync || self.durable_end >= b.end_seq);
            if !complete {
                break;
            }
            let b = self.batches.pop_front().expect("front exists");
            let handle = if b.seg == self.active.base {
                Some(&self.active.handle)
            } else {
                self.sealing
                    .as_ref()
                    .map(|s| &s.handle)
                    .filter(|h| h.base == b.seg)
            };
            if let Some(h) = handle {
                h.data_end.store(b.data_end, Ordering::Release);
            }
            visible = Some(b.end_seq);
            self.done.push_back(b);
        }
        if let Some(end) = visible {
            self.visible_end = end;
            self.publish_index(end);
            self.view.publish_visible(end);
        }
    }

    /// Publishes the active segment's index entries of records below `end`.
    fn publish_index(&self, end: u64) {
        let a = &self.active;
        if let SegmentIndex::Live(live) = &a.handle.index {
            let mut n = a.entries;
            while n > 0 && live_seq(live, n - 1) >= end {
                n -= 1;
            }
            live.publish(n);
        }
    }

    /// The next completed batch, in order; the stage of the one returned before is reused
    /// from now on. Hand it to [`Log::appended`] for its records.
    pub fn pop_completed(&mut self) -> Option<Completed> {
        if let Some(stage) = self.held.take() {
            self.stage_free[stage] = true;
        }
        let b = self.done.pop_front()?;
        self.held = Some(b.stage);
        Some(Completed {
            first_seq: b.first_seq,
            end_seq: b.end_seq,
            stage: b.stage,
            from: b.from,
        })
    }

    /// The records of the batch `pop_completed` just returned, borrowed from its stage.
    ///
    /// # Panics
    /// If `c` is not the batch `pop_completed` returned last.
    pub fn appended(&self, c: &Completed) -> AppendedBatch<'_> {
        assert_eq!(self.held, Some(c.stage), "only the batch just popped");
        AppendedBatch {
            first_seq: c.first_seq,
            end_seq: c.end_seq,
            bytes: self.stages[c.stage].bytes(c.from),
        }
    }

    /// Drops the records staged in the open batch (they were never written) and returns how
    /// many; their sequence numbers are given out again.
    pub fn discard_open(&mut self) -> usize {
        let n = self.open_events;
        self.stages[self.open].discard();
        self.next_seq -= n as u64;
        self.open_events = 0;
        self.open_record_bytes = 0;
        self.open_first = None;
        let a = &mut self.active;
        if let SegmentIndex::Live(live) = &a.handle.index {
            while a.entries > 0 && live_seq(live, a.entries - 1) >= self.next_seq {
                a.entries -= 1;
            }
        }
        n
    }

    /// Stages the header block of a fresh active segment so it goes out with the first batch.
    pub(crate) fn stage_segment_header(&mut self) {
        let header = SegmentHeader {
            shard: self.cfg.shard,
            base_seq: self.active.base,
        };
        let s = &mut self.stages[self.open];
        s.reset_at(0, |_| 0);
        s.append_with(SEGMENT_HEADER_BYTES, |d| header.encode(d));
        s.mark_carry();
        self.active.next_entry_at = SEGMENT_HEADER_BYTES as u64;
    }
}

fn live_seq(live: &crate::view::LiveIndex, i: usize) -> u64 {
    live.seq_at(i)
}

/// Pushes `entry`, linked to the next one when `link`; returns how many operations it adds.
pub(crate) fn push_linked(
    sq: &mut dyn Submit,
    entry: squeue::Entry,
    link: bool,
) -> std::io::Result<usize> {
    let entry = if link {
        entry.flags(squeue::Flags::IO_LINK)
    } else {
        entry
    };
    push(sq, entry)
}

/// Queues one entry; returns 1 (one more operation in flight).
pub(crate) fn push(sq: &mut dyn Submit, entry: squeue::Entry) -> std::io::Result<usize> {
    sq.push(entry).map(|()| 1)
}

/// The error for a failed (`res < 0`) or short operation.
pub(crate) fn op_error(op: &'static str, path: PathBuf, res: i32, expected: usize) -> StorageError {
    match usize::try_from(res) {
        Ok(written) => StorageError::ShortWrite {
            hint: space_hint(path.parent().unwrap_or(&path)),
            path,
            written,
            expected,
        },
        Err(_) => StorageError::Io {
            op,
            path,
            source: std::io::Error::from_raw_os_error(-res),
        },
    }
}

/// Why a write may have come up short: `": No space left on device (N bytes free)"` when the
/// file system is full, else empty.
pub(crate) fn space_hint(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return String::new();
    };
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills one struct from a NUL-terminated path; both pointers are valid.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return String::new();
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < BLOCK_BYTES as u64 * 4 {
        format!(": No space left on device ({free} bytes free)")
    } else {
        String::new()
    }
}

fn two_mut(stages: &mut [Stage], a: usize, b: usize) -> (&Stage, &mut Stage) {
    assert_ne!(a, b, "two different stages");
    if a < b {
        let (lo, hi) = stages.split_at_mut(b);
        (&lo[a], &mut hi[0])
    } else {
        let (lo, hi) = stages.split_at_mut(a);
        (&hi[0], &mut lo[b])
    }
}

pub(crate) fn corrupt(path: &Path, offset: u64, what: &str) -> StorageError {
    StorageError::Corrupt {
        path: path.into(),
        offset,
        what: what.into(),
    }
}
