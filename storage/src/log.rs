//! The RedEX log of one shard: appends batches of records to the active segment with one
//! aligned write per file, rolls segments, and serves reads by sequence number.
//!
//! Invariants:
//! - Sequence numbers are contiguous from the first segment's base; record `seq` is entry
//!   `seq - base` of its segment's `.idx`.
//! - At most one batch is in flight. The next batch is encoded into the other stage meanwhile,
//!   and submitted only after the previous one completed, because both rewrite the same
//!   partial block.
//! - A failed, short or refused write poisons the log: every later append and submit returns
//!   [`StorageError::Poisoned`] naming the first failure. Nothing is retried silently (the
//!   PostgreSQL fsync lesson): after an error the kernel's view of the file is unknown.
//! - Only records of completed writes are readable (`persisted_end`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::buffer::BLOCK_BYTES;
use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::record::{self, RECORD_PAYLOAD_BYTES_MAX, record_bytes};
use crate::segment::{self, OpenMode, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::stage::Stage;
use crate::uring::Ring;

const TAG_DAT: u64 = 1;
const TAG_IDX: u64 = 2;
const TAG_SYNC: u64 = 4;
/// Sealed segments the log has room for before its list grows.
const SEALED_RESERVE: usize = 4096;
/// The smallest segment that holds its header block and one small record.
pub const SEGMENT_BYTES_MIN: u64 = 2 * BLOCK_BYTES as u64;

/// Sizing of one shard's log, fixed when it opens.
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
}

impl LogConfig {
    /// The largest payload that fits a batch and a segment.
    pub fn payload_bytes_max(&self) -> usize {
        let segment_room = usize::try_from(
            self.segment_bytes
                .saturating_sub(SEGMENT_HEADER_BYTES as u64),
        )
        .unwrap_or(usize::MAX);
        self.batch_bytes_max
            .min(segment_room)
            .saturating_sub(record::RECORD_HEADER_BYTES)
            .min(RECORD_PAYLOAD_BYTES_MAX)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field, what: String| Err(StorageError::Invalid { field, what });
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is below the minimum {SEGMENT_BYTES_MIN}",
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
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The record was staged with this sequence number.
    Staged(u64),
    /// The open batch (or the segment, with a write still in flight) is full: complete the
    /// in-flight write, submit, and push again.
    Full,
}

/// A batch whose writes completed: records `first_seq..end_seq` are on the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// First sequence number of the batch.
    pub first_seq: u64,
    /// One past the last sequence number of the batch.
    pub end_seq: u64,
    /// One past the last sequence number known durable (fdatasync completed) after this
    /// completion.
    pub durable_end: u64,
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number within the shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The payload, byte for byte as appended.
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedSegment {
    pub(crate) base: u64,
    pub(crate) end: u64,
    /// Length of its `.dat` file.
    pub(crate) dat_bytes: u64,
    /// Timestamp of its newest record.
    pub(crate) last_ts_ns: u64,
}

#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub(crate) base: u64,
    pub(crate) dat: File,
    pub(crate) idx: File,
    pub(crate) dat_read: File,
    pub(crate) idx_read: File,
}

#[derive(Debug)]
struct Inflight {
    /// Whether an fdatasync covers this batch.
    synced: bool,
    first_seq: u64,
    end_seq: u64,
    dat_len: usize,
    idx_len: usize,
    pending: u64,
    /// Logical ends of `.dat` and `.idx` once this batch is written.
    ends: (u64, u64),
}

#[derive(Debug)]
struct Reader {
    base: u64,
    dat: File,
    idx: File,
}

/// The append-only segment log of one shard.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    /// The directory, open: segments are created relative to it and it is fsynced through it,
    /// so a roll allocates nothing.
    pub(crate) dir_fd: File,
    pub(crate) cfg: LogConfig,
    pub(crate) ring: Ring,
    pub(crate) sealed: Vec<SealedSegment>,
    pub(crate) active: ActiveSegment,
    pub(crate) dat: [Stage; 2],
    pub(crate) idx: [Stage; 2],
    pub(crate) open: usize,
    pub(crate) open_events: usize,
    pub(crate) open_record_bytes: usize,
    inflight: Option<Inflight>,
    pub(crate) next_seq: u64,
    pub(crate) persisted_end: u64,
    pub(crate) durable_end: u64,
    /// Ends of `.dat` and `.idx` as far as completed writes reach.
    pub(crate) written: (u64, u64),
    /// Timestamp of the newest record pushed.
    pub(crate) last_ts_ns: u64,
    /// Whether sealing a segment fdatasyncs it (see [`Log::set_sync_on_roll`]).
    sync_on_roll: bool,
    poisoned: Option<String>,
    reader: Option<Reader>,
}

impl Log {
    pub(crate) fn assemble(
        dir: PathBuf,
        dir_fd: File,
        cfg: LogConfig,
        ring: Ring,
        mut sealed: Vec<SealedSegment>,
        active: ActiveSegment,
    ) -> Log {
        cfg.validate().expect("validated by open");
        let dat_cap = cfg.batch_bytes_max + SEGMENT_HEADER_BYTES;
        let idx_cap = cfg.batch_events_max.saturating_mul(INDEX_ENTRY_BYTES);
        // Room for thousands of rolls without growing (a roll must not allocate).
        sealed.reserve(SEALED_RESERVE);
        Log {
            dir,
            dir_fd,
            cfg,
            ring,
            sealed,
            active,
            dat: [Stage::new(dat_cap), Stage::new(dat_cap)],
            idx: [Stage::new(idx_cap), Stage::new(idx_cap)],
            open: 0,
            open_events: 0,
            open_record_bytes: 0,
            inflight: None,
            next_seq: 0,
            persisted_end: 0,
            durable_end: 0,
            written: (0, 0),
            last_ts_ns: 0,
            sync_on_roll: true,
            poisoned: None,
            reader: None,
        }
    }

    pub(crate) fn validate_config(cfg: &LogConfig) -> Result<()> {
        cfg.validate()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sizing the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Sequence number the next pushed record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// One past the last sequence number whose write completed.
    pub fn persisted_end(&self) -> u64 {
        self.persisted_end
    }

    /// Whether sealing a segment fdatasyncs it first (default true). An owner that never
    /// syncs (fsync policy `never`) turns it off so that a roll does not stall on flushing the
    /// device cache; a sealed segment's index is rebuilt from `.dat` on open if it was lost.
    pub fn set_sync_on_roll(&mut self, sync: bool) {
        self.sync_on_roll = sync;
    }

    /// One past the last sequence number known durable.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// Timestamp of the newest record pushed (or recovered).
    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    /// The first sequence number still stored.
    pub fn first_seq(&self) -> u64 {
        self.sealed.first().map_or(self.active.base, |s| s.base)
    }

    /// Records staged in the open batch, not yet submitted.
    pub fn open_events(&self) -> usize {
        self.open_events
    }

    /// Whether a batch write is in flight.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// The failure that poisoned the log, if any.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                shard: self.cfg.shard,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: StorageError) -> StorageError {
        if self.poisoned.is_none() {
            self.poisoned = Some(err.to_string());
        }
        err
    }

    /// Stages one record into the open batch.
    pub fn push(&mut self, ts_ns: u64, payload: &[u8]) -> Result<Push> {
        self.check_poison()?;
        if payload.len() > self.cfg.payload_bytes_max() {
            return Err(StorageError::Invalid {
                field: "payload",
                what: format!(
                    "{} bytes exceeds the maximum {}",
                    payload.len(),
                    self.cfg.payload_bytes_max()
                ),
            });
        }
        let rec = record_bytes(payload.len());
        if self.open_events == self.cfg.batch_events_max
            || self.open_record_bytes + rec > self.cfg.batch_bytes_max
        {
            return Ok(Push::Full);
        }
        let segment_end = self.dat[self.open].end();
        if segment_end + rec as u64 > self.cfg.segment_bytes && self.next_seq > self.active.base {
            if self.open_events > 0 || self.inflight.is_some() {
                return Ok(Push::Full);
            }
            self.roll()?;
        }
        let seq = self.next_seq;
        let offset = self.dat[self.open].end();
        let len = u32::try_from(rec).expect("bounded by payload_bytes_max");
        self.dat[self.open].append_with(rec, |dst| {
            record::encode(dst, seq, ts_ns, payload);
        });
        self.idx[self.open].append_with(INDEX_ENTRY_BYTES, |dst| {
            IndexEntry { seq, offset, len }.encode(dst)
        });
        self.open_events += 1;
        self.open_record_bytes += rec;
        self.next_seq += 1;
        self.last_ts_ns = ts_ns;
        Ok(Push::Staged(seq))
    }

    /// Submits the open batch as one write per file. With `sync`, an `fdatasync` of `.dat`
    /// linked after its write makes the batch, and everything written before it, durable
    /// (group commit: one sync for every event that queued while the previous one ran).
    /// `.idx` is never synced per batch: recovery rebuilds it from `.dat`. Returns false if
    /// the batch was empty.
    ///
    /// # Panics
    /// If a batch or sync is still in flight: call [`Log::complete`] until it returns first.
    pub fn submit(&mut self, sync: bool) -> Result<bool> {
        self.check_poison()?;
        assert!(self.inflight.is_none(), "submit with a batch in flight");
        if self.open_events == 0 {
            return Ok(false);
        }
        let s = self.open;
        let dat_len = self.dat[s].seal_for_write();
        let idx_len = self.idx[s].seal_for_write();
        let (dat_fd, idx_fd) = (self.active.dat.as_raw_fd(), self.active.idx.as_raw_fd());
        let (dat, idx) = (&self.dat[s], &self.idx[s]);
        // SAFETY: both stage buffers are owned by self, never reallocated, and not written
        // again until `complete` has reaped both writes (the next batch uses the other stage).
        unsafe {
            let ptr = dat.buf.as_slice().as_ptr();
            self.ring
                .push_write(dat_fd, ptr, len_u32(dat_len), dat.start, TAG_DAT, sync);
            if sync {
                self.ring.push_fdatasync(dat_fd, TAG_SYNC);
            }
            let ptr = idx.buf.as_slice().as_ptr();
            self.ring
                .push_write(idx_fd, ptr, len_u32(idx_len), idx.start, TAG_IDX, false);
        }
        let pending = TAG_DAT | TAG_IDX | if sync { TAG_SYNC } else { 0 };
        let first_seq = self.next_seq - self.open_events as u64;
        self.start_inflight(Inflight {
            synced: sync,
            first_seq,
            end_seq: self.next_seq,
            dat_len,
            idx_len,
            pending,
            ends: (self.dat[s].end(), self.idx[s].end()),
        })?;
        let (prev, next) = pair_mut(&mut self.dat, s);
        next.carry_from(prev);
        let (prev, next) = pair_mut(&mut self.idx, s);
        next.carry_from(prev);
        self.open = 1 - s;
        self.open_events = 0;
        self.open_record_bytes = 0;
        Ok(true)
    }

    /// Appends one record, writing full batches as needed, and returns its sequence number.
    /// A blocking convenience for tools, tests and compaction; a shard drives `push`,
    /// `submit` and `complete` itself so that encoding overlaps writing.
    pub fn append(&mut self, ts_ns: u64, payload: &[u8]) -> Result<u64> {
        loop {
            match self.push(ts_ns, payload)? {
                Push::Staged(seq) => return Ok(seq),
                Push::Full => {
                    if self.in_flight() {
                        self.complete(true)?;
                    }
                    self.submit(false)?;
                }
            }
        }
    }

    /// Writes everything staged and waits for it; with `sync`, also makes it durable.
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        if self.in_flight() {
            self.complete(true)?;
        }
        if self.submit(sync)? {
            self.complete(true)?;
        }
        if sync && self.sync()? {
            self.complete(true)?;
        }
        Ok(())
    }

    /// Makes everything written so far durable with one `fdatasync` of `.dat`, when nothing
    /// is in flight. Returns false if there was nothing to make durable.
    pub fn sync(&mut self) -> Result<bool> {
        self.check_poison()?;
        assert!(self.inflight.is_none(), "sync with a batch in flight");
        if self.durable_end == self.persisted_end {
            return Ok(false);
        }
        self.ring
            .push_fdatasync(self.active.dat.as_raw_fd(), TAG_SYNC);
        let end = self.persisted_end;
        self.start_inflight(Inflight {
            synced: true,
            first_seq: end,
            end_seq: end,
            dat_len: 0,
            idx_len: 0,
            pending: TAG_SYNC,
            ends: self.written,
        })?;
        Ok(true)
    }

    fn start_inflight(&mut self, inf: Inflight) -> Result<()> {
        if let Err(e) = self.ring.submit() {
            let path = segment::dat_path(&self.dir, self.active.base);
            return Err(self.poison(StorageError::Io {
                op: "submit write",
                path,
                source: e,
            }));
        }
        self.inflight = Some(inf);
        Ok(())
    }

    /// Reaps the in-flight batch's (or sync's) completions; with `wait`, blocks until they
    /// arrive. Returns the batch once all its operations completed in full.
    pub fn complete(&mut self, wait: bool) -> Result<Option<Written>> {
        loop {
            let Some(inf) = self.inflight.as_mut() else {
                return Ok(None);
            };
            let mut failure: Option<(u64, i32)> = None;
            self.ring.reap(|tag, res| {
                let expected = match tag {
                    TAG_DAT => inf.dat_len,
                    TAG_IDX => inf.idx_len,
                    _ => 0,
                };
                if res < 0 || usize::try_from(res).ok() != Some(expected) {
                    failure.get_or_insert((tag, res));
                }
                inf.pending &= !tag;
            });
            if let Some((tag, res)) = failure {
                let inf = self.inflight.take().expect("in flight");
                return Err(self.poison(self.op_error(&inf, tag, res)));
            }
            if inf.pending == 0 {
                let inf = self.inflight.take().expect("in flight");
                let synced = inf.synced;
                self.persisted_end = inf.end_seq;
                self.written = inf.ends;
                if synced {
                    self.durable_end = inf.end_seq;
                }
                return Ok(Some(Written {
                    first_seq: inf.first_seq,
                    end_seq: inf.end_seq,
                    durable_end: self.durable_end,
                }));
            }
            if !wait {
                return Ok(None);
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                let path = segment::dat_path(&self.dir, self.active.base);
                return Err(self.poison(StorageError::Io {
                    op: "wait for write",
                    path,
                    source: e,
                }));
            }
        }
    }

    /// The error for a failed (`res < 0`) or short operation of a batch.
    fn op_error(&self, inf: &Inflight, tag: u64, res: i32) -> StorageError {
        let (path, expected, op) = match tag {
            TAG_DAT => (
                segment::dat_path(&self.dir, self.active.base),
                inf.dat_len,
                "write",
            ),
            TAG_IDX => (
                segment::idx_path(&self.dir, self.active.base),
                inf.idx_len,
                "write",
            ),
            _ => (
                segment::dat_path(&self.dir, self.active.base),
                0,
                "fdatasync",
            ),
        };
        match usize::try_from(res) {
            Ok(written) => StorageError::ShortWrite {
                path,
                written,
                expected,
                hint: space_hint(&self.dir),
            },
            Err(_) => StorageError::Io {
                op,
                path,
                source: std::io::Error::from_raw_os_error(-res),
            },
        }
    }

    /// Seals the active segment and starts a new one at `next_seq`.
    fn roll(&mut self) -> Result<()> {
        assert!(
            self.inflight.is_none() && self.open_events == 0,
            "roll with pending writes"
        );
        self.truncate_active().map_err(|e| self.poison(e))?;
        // A sealed segment is made durable unless the owner syncs nothing (fsync `never`):
        // there that sync is a device cache flush of the whole segment, which stalls the shard
        // for hundreds of milliseconds, and `never` promises nothing about power loss. An index
        // that did not reach the disk is rebuilt from `.dat` on open.
        if self.sync_on_roll {
            self.sync_active().map_err(|e| self.poison(e))?;
            self.durable_end = self.persisted_end;
        }
        self.sealed.push(SealedSegment {
            base: self.active.base,
            end: self.next_seq,
            dat_bytes: self.written.0,
            last_ts_ns: self.last_ts_ns,
        });
        let active =
            create_segment(&self.dir, &self.dir_fd, self.next_seq).map_err(|e| self.poison(e))?;
        self.active = active;
        self.written = (0, 0);
        let header = SegmentHeader {
            shard: self.cfg.shard,
            base_seq: self.next_seq,
        };
        self.dat[self.open].reset_at(0, |_| 0);
        self.dat[self.open].append_with(SEGMENT_HEADER_BYTES, |d| header.encode(d));
        self.dat[self.open].mark_carry();
        self.idx[self.open].reset_at(0, |_| 0);
        Ok(())
    }

    /// Drops the records staged in the open batch (they were never written) and returns how
    /// many; their sequence numbers are given out again.
    pub fn discard_open(&mut self) -> usize {
        let n = self.open_events;
        self.dat[self.open].discard();
        self.idx[self.open].discard();
        self.next_seq -= n as u64;
        self.open_events = 0;
        self.open_record_bytes = 0;
        n
    }

    /// fdatasyncs both files of the active segment (rare: at roll, open and close).
    fn sync_active(&self) -> Result<()> {
        let a = &self.active;
        a.dat
            .sync_data()
            .map_err(segment_err("fdatasync", &self.dir, a.base, "dat"))?;
        a.idx
            .sync_data()
            .map_err(segment_err("fdatasync", &self.dir, a.base, "idx"))?;
        Ok(())
    }

    /// Makes the active segment durable and records it (called once when the log opens, so
    /// that everything recovered counts as durable).
    pub(crate) fn sync_opened(&mut self) -> Result<()> {
        self.sync_active()?;
        self.durable_end = self.persisted_end;
        Ok(())
    }

    /// Cuts the zero padding after the logical end of the active segment's files.
    fn truncate_active(&self) -> Result<()> {
        let s = self.open;
        let a = &self.active;
        // Only what completed writes put there: a header staged but never written stays
        // unwritten rather than becoming a block of zeros.
        debug_assert!(self.written.0 <= self.dat[s].end() && self.written.1 <= self.idx[s].end());
        a.dat
            .set_len(self.written.0)
            .map_err(segment_err("truncate", &self.dir, a.base, "dat"))?;
        a.idx
            .set_len(self.written.1)
            .map_err(segment_err("truncate", &self.dir, a.base, "idx"))?;
        Ok(())
    }

    /// Waits for the in-flight batch, cuts padding, makes the segment durable, and closes the
    /// log.
    ///
    /// # Panics
    /// If records are staged but not submitted (the caller decides what happens to them).
    pub fn close(mut self) -> Result<Option<Written>> {
        assert_eq!(self.open_events, 0, "close with staged records");
        let written = self.complete(true)?;
        self.check_poison()?;
        self.truncate_active()?;
        self.sync_active()?;
        Ok(written)
    }

    /// Reads up to `max_events` records (and about `max_bytes`, at least one record) starting
    /// at `from`, from one segment. Returns an empty vector at the end of persisted data.
    pub fn read(
        &mut self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        let from = from.max(self.first_seq());
        if from >= self.persisted_end || max_events == 0 {
            return Ok(Vec::new());
        }
        let (base, end) = self.segment_of(from);
        let end = end
            .min(self.persisted_end)
            .min(from.saturating_add(max_events as u64));
        let (dat, idx, dat_path, idx_path) = self.files_of(base)?;
        let n = usize::try_from(end - from).expect("bounded by max_events");
        let mut entries = vec![0u8; n * INDEX_ENTRY_BYTES];
        idx.read_exact_at(&mut entries, (from - base) * INDEX_ENTRY_BYTES as u64)
            .map_err(io_err("read", &idx_path))?;
        let entry = |i: usize| -> Result<IndexEntry> {
            let at = i * INDEX_ENTRY_BYTES;
            IndexEntry::decode(&entries[at..])
                .filter(|e| e.seq == from + i as u64)
                .ok_or_else(|| {
                    corrupt(
                        &idx_path,
                        (from - base + i as u64) * INDEX_ENTRY_BYTES as u64,
                        "bad index entry",
                    )
                })
        };
        let first = entry(0)?;
        let mut count = 1;
        let mut last = first;
        while count < n {
            let e = entry(count)?;
            if e.offset + u64::from(e.len) - first.offset
                > u64::try_from(max_bytes).unwrap_or(u64::MAX)
            {
                break;
            }
            last = e;
            count += 1;
        }
        let data = read_span(
            dat,
            first.offset,
            last.offset + u64::from(last.len),
            &dat_path,
        )?;
        let mut out = Vec::with_capacity(count);
        let mut pos = 0usize;
        for i in 0..count {
            let h = record::decode(&data[pos..])
                .map_err(|e| corrupt(&dat_path, first.offset + pos as u64, &format!("{e:?}")))?;
            if h.seq != from + i as u64 {
                return Err(corrupt(
                    &dat_path,
                    first.offset + pos as u64,
                    "record out of sequence",
                ));
            }
            let start = pos + record::RECORD_HEADER_BYTES;
            out.push(StoredRecord {
                seq: h.seq,
                ts_ns: h.ts_ns,
                payload: data.slice(start..start + h.len as usize),
            });
            pos += h.record_bytes();
        }
        Ok(out)
    }

    /// Drops the cached reader if it names a segment below `first` (removed by retention).
    pub(crate) fn forget_reader_below(&mut self, first: u64) {
        if self.reader.as_ref().is_some_and(|r| r.base < first) {
            self.reader = None;
        }
    }

    /// Number of segments (sealed and active).
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    fn segment_of(&self, seq: u64) -> (u64, u64) {
        if seq >= self.active.base {
            return (self.active.base, u64::MAX);
        }
        let i = self.sealed.partition_point(|s| s.base <= seq);
        let s = &self.sealed[i.checked_sub(1).expect("seq >= first_seq")];
        (s.base, s.end)
    }

    fn files_of(&mut self, base: u64) -> Result<(&File, &File, PathBuf, PathBuf)> {
        let dat_path = segment::dat_path(&self.dir, base);
        let idx_path = segment::idx_path(&self.dir, base);
        if base == self.active.base {
            return Ok((
                &self.active.dat_read,
                &self.active.idx_read,
                dat_path,
                idx_path,
            ));
        }
        if self.reader.as_ref().is_none_or(|r| r.base != base) {
            let dat = segment::open_direct_read(&dat_path)?;
            let idx = segment::open_read(&idx_path)?;
            self.reader = Some(Reader { base, dat, idx });
        }
        let r = self.reader.as_ref().expect("just opened");
        Ok((&r.dat, &r.idx, dat_path, idx_path))
    }
}

/// Reads `.dat` bytes `from..to` in whole aligned blocks (the file may be open `O_DIRECT`)
/// into one buffer, and returns exactly those bytes, shared by the records sliced from them.
fn read_span(dat: &File, from: u64, to: u64, path: &Path) -> Result<Bytes> {
    let start = crate::buffer::align_down_u64(from);
    let want = usize::try_from(to - start).expect("bounded read");
    let mut buf = crate::buffer::AlignedBuf::new(want);
    let mut got = 0;
    // A sealed segment ends mid-block: the last aligned read comes back short at end of file.
    while got < want {
        let n = dat
            .read_at(&mut buf.as_mut_slice()[got..], start + got as u64)
            .map_err(io_err("read", path))?;
        if n == 0 {
            return Err(corrupt(
                path,
                start + got as u64,
                "file ends before its indexed records",
            ));
        }
        got += n;
    }
    let skip = usize::try_from(from - start).expect("below one block");
    Ok(Bytes::from_owner(buf).slice(skip..want))
}

/// Why a write may have come up short: `": No space left on device (N bytes free)"` when the
/// file system is full, else empty.
fn space_hint(dir: &Path) -> String {
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
    if free < crate::buffer::BLOCK_BYTES as u64 * 4 {
        format!(": No space left on device ({free} bytes free)")
    } else {
        String::new()
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("stage sizes are far below 4 GiB")
}

fn pair_mut(stages: &mut [Stage; 2], prev: usize) -> (&Stage, &mut Stage) {
    let (a, b) = stages.split_at_mut(1);
    if prev == 0 {
        (&a[0], &mut b[0])
    } else {
        (&b[0], &mut a[0])
    }
}

pub(crate) fn corrupt(path: &Path, offset: u64, what: &str) -> StorageError {
    StorageError::Corrupt {
        path: path.into(),
        offset,
        what: what.into(),
    }
}

/// An error mapper that builds the file's path only when there is an error (the success
/// path of a roll must not allocate).
fn segment_err<'a>(
    op: &'static str,
    dir: &'a Path,
    base: u64,
    ext: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: dir.join(format!("{base:020}.{ext}")),
        source,
    }
}

/// Creates (or opens) the files of the segment starting at `base` and makes their names
/// durable. Allocates nothing unless it fails.
pub(crate) fn create_segment(dir: &Path, dir_fd: &File, base: u64) -> Result<ActiveSegment> {
    let dat_name = segment::c_name(base, b"dat");
    let idx_name = segment::c_name(base, b"idx");
    let dat = segment::open_at(dir_fd, &dat_name, OpenMode::Append)
        .map_err(segment_err("open", dir, base, "dat"))?;
    let idx = segment::open_at(dir_fd, &idx_name, OpenMode::Append)
        .map_err(segment_err("open", dir, base, "idx"))?;
    dir_fd.sync_all().map_err(io_err("fsync directory", dir))?;
    let dat_read = segment::open_at(dir_fd, &dat_name, OpenMode::DirectRead)
        .map_err(segment_err("open", dir, base, "dat"))?;
    let idx_read = segment::open_at(dir_fd, &idx_name, OpenMode::Read)
        .map_err(segment_err("open", dir, base, "idx"))?;
    Ok(ActiveSegment {
        base,
        dat,
        idx,
        dat_read,
        idx_read,
    })
}
