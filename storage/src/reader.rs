//! Reading a log by sequence number on the caller's thread, with read-ahead.
//!
//! A [`Reader`] resolves a sequence number through the published segment map and the
//! segment's sparse index to a byte offset, then streams the segment in aligned chunks
//! through an io_uring of its own: while it decodes one chunk, the next [`READ_DEPTH`] are
//! already being read, and what it read ahead stays queued for the next call, so a consumer
//! that polls sequentially keeps the disk busy while it processes what it got. Payloads are
//! slices of the chunk buffers (one allocation per chunk, none per record); a record that
//! straddles two chunks is copied once.
//!
//! Only records below the view's visible end are returned, and every one is checked: its
//! checksum, and that its `seq` is the one expected. A chunk read before some records became
//! visible may hold zeros where they now are; such a chunk is read again. A record that fails
//! its check although it was visible before its chunk was read is damage, reported with the
//! file and offset. An index entry that does not lead to its record is skipped in favour of
//! the one before it (the index is a hint; `.dat` is the truth).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};
use std::os::fd::AsRawFd;

use crate::buffer::{AlignedBuf, BLOCK_BYTES, align_down_u64, align_up};
use crate::error::{Result, StorageError};
use crate::record::{self, RECORD_HEADER_BYTES};
use crate::segment;
use crate::view::{LogView, SegmentHandle};

/// Bytes of one read.
pub const READ_CHUNK_BYTES: usize = 1 << 20;
/// Reads a reader keeps in flight ahead of what it decodes.
pub const READ_DEPTH: usize = 2;
const RING_ENTRIES: u32 = 8;
/// Times a stream is read again because its bytes predate visibility before the data is
/// taken for damage (one suffices; data visible before a read is in it).
const STALE_RETRIES_MAX: u32 = 2;
const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(READ_DEPTH <= RING_ENTRIES as usize);

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number within the shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where the record came from, if it was appended with an origin
    /// ([`crate::Log::push_with_origin`]).
    pub origin: Option<crate::record::Origin>,
    /// The payload, byte for byte as appended (without the origin block; a slice of the
    /// bytes read, not a copy).
    pub payload: Bytes,
}

/// What one [`Reader::read`] returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records in sequence order.
    pub records: Vec<StoredRecord>,
    /// The sequence number to read from next.
    pub next: u64,
    /// Whether sequence numbers from `from` were passed over without records (removed by
    /// retention, or an accepted loss).
    pub skipped: bool,
    /// The first sequence number the log still stores.
    pub first_seq: u64,
}

/// A chunk whose bytes have arrived.
#[derive(Debug)]
struct Chunk {
    offset: u64,
    bytes: Bytes,
    /// The view's visible end when the read was submitted: records below it are in `bytes`.
    visible: u64,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

/// A read in flight.
#[derive(Debug)]
struct Slot {
    id: u64,
    offset: u64,
    buf: ChunkBuf,
    len: usize,
    /// Bytes of the read below the segment's data end when it was submitted: the rest of its
    /// last block may be rewritten since, and is not used.
    valid: usize,
    result: Option<i32>,
    visible: u64,
}

/// A sequential stream over one segment.
#[derive(Debug)]
struct Stream {
    seg: Arc<SegmentHandle>,
    /// Offset and seq of the next record.
    pos: u64,
    seq: u64,
    cur: Option<Chunk>,
    pending: VecDeque<Slot>,
    /// Where the next read starts (block-aligned) and the end of the data already asked for.
    /// At the tail the next read starts again at the block the last one ended inside, so a
    /// consumer following the writer reads each new byte about once, not from an index
    /// entry back.
    submit_at: u64,
    covered: u64,
}

/// Reads a log from any thread; see the module docs. Keep one per consumer: its read-ahead
/// serves the next call when that continues where the last one stopped.
pub struct Reader {
    view: LogView,
    ring: Option<IoUring>,
    stream: Option<Stream>,
    next_id: u64,
    bytes_read: u64,
    /// Full-size read-ahead buffers handed back once nothing refers to their bytes.
    pool: Arc<ChunkPool>,
}

/// Full-size (`READ_CHUNK_BYTES`) read-ahead buffers, kept for reuse: a reader that streams a
/// log reads into the same few buffers instead of a fresh zeroed megabyte per chunk (which
/// cost a following reader page faults, clearing and unmapping for every chunk: half the
/// CPU of the mesh's log reader when it was measured). A buffer comes back when the last
/// `Bytes` slice of its chunk (a record's payload the caller still holds) is dropped; the
/// pool keeps at most [`POOLED_MAX`].
#[derive(Debug, Default)]
struct ChunkPool {
    free: std::sync::Mutex<Vec<AlignedBuf>>,
}

/// Buffers a pool keeps.
const POOLED_MAX: usize = READ_DEPTH + 2;

impl ChunkPool {
    /// A buffer for a read of `len` bytes: a pooled full-size one when the read is
    /// full-size, else a fresh one of its size.
    fn take(self: &Arc<Self>, len: usize) -> ChunkBuf {
        if len != READ_CHUNK_BYTES {
            return ChunkBuf {
                buf: Some(AlignedBuf::new(len)),
                pool: None,
            };
        }
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        // A reused buffer holds old bytes: a read's result bounds what is used of it
        // (`wait_for` cuts the slot's length to the bytes read).
        ChunkBuf {
            buf: Some(pooled.unwrap_or_else(|| AlignedBuf::new(len))),
            pool: Some(self.clone()),
        }
    }
}

/// A read-ahead buffer that goes back to its pool when dropped.
#[derive(Debug)]
struct ChunkBuf {
    buf: Option<AlignedBuf>,
    pool: Option<Arc<ChunkPool>>,
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], AlignedBuf::as_slice)
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.take()) {
            let mut free = pool.free.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < POOLED_MAX {
                free.push(buf);
            }
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("shard", &self.view.shard())
            .finish_non_exhaustive()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // The kernel may still be writing into read-ahead buffers: wait before freeing them.
        self.drop_stream();
    }
}

impl Reader {
    pub(crate) fn new(view: LogView) -> Reader {
        Reader {
            view,
            ring: None,
            stream: None,
            next_id: 0,
            bytes_read: 0,
            pool: Arc::new(ChunkPool::default()),
        }
    }

    /// Bytes this reader has asked the disk for so far (its read amplification, against the
    /// record bytes it returned).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The log this reader reads.
    pub fn view(&self) -> &LogView {
        &self.view
    }

    /// Reads up to `max_events` records (and about `max_bytes` of record bytes, at least one
    /// record) starting at `from`. Below the first stored record it starts at the first one;
    /// it crosses segments; an empty batch means nothing more is visible yet.
    pub fn read(&mut self, from: u64, max_events: usize, max_bytes: usize) -> Result<ReadBatch> {
        let visible = self.view.visible_end();
        let map = self.view.map();
        let mut out = ReadBatch {
            next: from,
            first_seq: map.first_seq,
            ..ReadBatch::default()
        };
        let mut next = from.max(map.first_seq);
        let mut bytes = 0usize;
        while out.records.len() < max_events && bytes < max_bytes && next < visible {
            if let Some(g) = map.gap_at(next) {
                if !out.records.is_empty() {
                    break; // the next read starts at the gap and reports it
                }
                next = g.to;
                continue;
            }
            let Some((i, seg)) = map.segment_of(next) else {
                break;
            };
            let seg_end = seg.end.load(Ordering::Acquire).min(visible);
            if next >= seg_end {
                match map.segments.get(i + 1) {
                    Some(n) if n.base > next && out.records.is_empty() => next = n.base,
                    _ => break,
                }
                continue;
            }
            let seg = seg.clone();
            let budget = (max_events - out.records.len(), max_bytes - bytes);
            let got = self.read_segment(&seg, next, seg_end, budget, &mut out.records)?;
            bytes += got.1;
            next = got.0;
            if got.0 < seg_end {
                break; // the budget is spent
            }
        }
        let first = out.records.first().map_or(next, |r| r.seq);
        out.skipped = first > from;
        out.next = next.max(from);
        Ok(out)
    }

    /// Reads records `from..end` of one segment within `(events, bytes)`; returns the next seq
    /// and the record bytes read.
    fn read_segment(
        &mut self,
        seg: &Arc<SegmentHandle>,
        from: u64,
        end: u64,
        budget: (usize, usize),
        out: &mut Vec<StoredRecord>,
    ) -> Result<(u64, usize)> {
        let dir = self.view.shared.dir.clone();
        let mut below = u64::MAX;
        let mut stale = 0;
        let mark = out.len();
        loop {
            out.truncate(mark);
            self.position(seg, from, below, &dir);
            match self.stream_records(from, end, budget, out) {
                Ok(done) => return Ok(done),
                Err(Retry::Stale) if stale < STALE_RETRIES_MAX => {
                    stale += 1;
                    self.drop_stream();
                    below = u64::MAX;
                }
                Err(Retry::Stale) => {
                    let offset = self.stream.as_ref().map_or(0, |s| s.pos);
                    let err = self.damage_error(seg, offset, "the file ends before its records");
                    self.drop_stream();
                    return Err(err);
                }
                Err(Retry::BadEntry(entry_seq)) if entry_seq > seg.base => {
                    self.drop_stream();
                    below = entry_seq;
                }
                Err(e @ (Retry::BadEntry(_) | Retry::Damage(_))) => {
                    let seq = match e {
                        Retry::BadEntry(s) | Retry::Damage(s) => s,
                        _ => unreachable!("matched above"),
                    };
                    let offset = self.stream.as_ref().map_or(0, |s| s.pos);
                    let what = format!("the record of seq {seq} fails its check");
                    let err = self.damage_error(seg, offset, &what);
                    self.drop_stream();
                    return Err(err);
                }
                Err(Retry::Io(e)) => {
                    self.drop_stream();
                    return Err(e);
                }
            }
        }
    }

    fn damage_error(&self, seg: &SegmentHandle, offset: u64, what: &str) -> StorageError {
        StorageError::Corrupt {
            path: segment::dat_path(&self.view.shared.dir, seg.base),
            offset,
            what: what.into(),
        }
    }

    /// Makes the stream sit at a record at or before `from` in `seg` (keeping read-ahead if
    /// it already does).
    fn position(&mut self, seg: &Arc<SegmentHandle>, from: u64, below: u64, dir: &Path) {
        if let Some(s) = &self.stream
            && Arc::ptr_eq(&s.seg, seg)
            && s.seq == from
            && below == u64::MAX
        {
            return;
        }
        self.drop_stream();
        let (seq, pos) = seg.floor(dir, from, below);
        self.stream = Some(Stream {
            seg: seg.clone(),
            pos,
            seq,
            cur: None,
            pending: VecDeque::new(),
            submit_at: align_down_u64(pos),
            covered: align_down_u64(pos),
        });
    }

    fn stream_records(
        &mut self,
        from: u64,
        end: u64,
        (events_max, bytes_max): (usize, usize),
        out: &mut Vec<StoredRecord>,
    ) -> std::result::Result<(u64, usize), Retry> {
        let (mut events, mut bytes) = (0usize, 0usize);
        let entry_seq = self.stream.as_ref().map_or(0, |s| s.seq);
        let mut first = true;
        loop {
            let s = self.stream.as_ref().expect("positioned");
            if s.seq >= end || (s.seq >= from && (events >= events_max || bytes >= bytes_max)) {
                return Ok((s.seq.max(from), bytes));
            }
            let expected = s.seq;
            let (rec, visible) = match self.take_record() {
                Ok(Some(got)) => got,
                Ok(None) => return Err(Retry::Stale),
                Err(Retry::Damage(_)) => {
                    let visible = self.current_visible();
                    return Err(self.classify(expected, visible, first, entry_seq));
                }
                Err(e) => return Err(e),
            };
            let h = match record::decode(&rec) {
                Ok(h) if h.seq == expected => h,
                _ => return Err(self.classify(expected, visible, first, entry_seq)),
            };
            first = false;
            let s = self.stream.as_mut().expect("positioned");
            s.pos += h.record_bytes() as u64;
            s.seq += 1;
            if h.seq >= from {
                out.push(StoredRecord {
                    seq: h.seq,
                    ts_ns: h.ts_ns,
                    origin: h.origin,
                    payload: rec.slice(h.payload_offset()..),
                });
                events += 1;
                bytes += h.record_bytes();
            }
        }
    }

    fn current_visible(&self) -> u64 {
        let s = self.stream.as_ref().expect("positioned");
        s.cur.as_ref().map_or(0, |c| c.visible)
    }

    /// Why the record expected at the stream's position did not check out.
    fn classify(&self, expected: u64, visible: u64, first: bool, entry_seq: u64) -> Retry {
        if expected >= visible {
            Retry::Stale
        } else if first {
            Retry::BadEntry(entry_seq)
        } else {
            Retry::Damage(expected)
        }
    }

    /// The bytes of the record at the stream's position (its header announces the length),
    /// and the visible end that held when the oldest of them was read; `None` at the end of
    /// the readable data. A length beyond the format's maximum is `Retry::Damage`.
    fn take_record(&mut self) -> std::result::Result<Option<(Bytes, u64)>, Retry> {
        let pos = self.stream.as_ref().expect("positioned").pos;
        if !self.ensure_current(pos)? {
            return Ok(None);
        }
        let s = self.stream.as_ref().expect("positioned");
        let cur = s.cur.as_ref().expect("ensured");
        let at = usize::try_from(pos - cur.offset).expect("inside the chunk");
        let avail = &cur.bytes[at..];
        if avail.len() >= RECORD_HEADER_BYTES {
            let len = record::announced_len(avail).ok_or(Retry::Damage(s.seq))?;
            if RECORD_HEADER_BYTES + len <= avail.len() {
                let n = RECORD_HEADER_BYTES + len;
                return Ok(Some((cur.bytes.slice(at..at + n), cur.visible)));
            }
        }
        // The record straddles chunks: copy it out of as many as it spans.
        let mut joined = avail.to_vec();
        let mut visible = cur.visible;
        let mut need = RECORD_HEADER_BYTES;
        // Bytes of the current chunk already copied (all of the first one).
        let mut used = cur.bytes.len();
        loop {
            if need == RECORD_HEADER_BYTES && joined.len() >= RECORD_HEADER_BYTES {
                need += record::announced_len(&joined).ok_or(Retry::Damage(s_seq(self)))?;
            }
            if joined.len() >= need {
                joined.truncate(need);
                return Ok(Some((Bytes::from(joined), visible)));
            }
            let c = self.cur_chunk();
            if used == c.bytes.len() {
                let next_at = c.end();
                if !self.advance()? {
                    return Ok(None);
                }
                let c = self.cur_chunk();
                // A chunk that starts inside the last one's final block (re-read at the tail)
                // repeats what was already taken.
                if c.offset > next_at || c.end() <= next_at {
                    return Ok(None);
                }
                visible = visible.min(c.visible);
                used = usize::try_from(next_at - c.offset).expect("within a block");
            }
            let c = self.cur_chunk();
            let take = (need - joined.len()).min(c.bytes.len() - used);
            joined.extend_from_slice(&c.bytes[used..used + take]);
            used += take;
        }
    }

    /// The chunk being decoded (there is one once `take_record` ensured it).
    fn cur_chunk(&self) -> &Chunk {
        let s = self.stream.as_ref().expect("positioned");
        s.cur.as_ref().expect("a current chunk")
    }

    /// Makes the current chunk the one holding `pos`; false when the readable data ends
    /// before it.
    fn ensure_current(&mut self, pos: u64) -> std::result::Result<bool, Retry> {
        loop {
            let s = self.stream.as_ref().expect("positioned");
            if let Some(c) = &s.cur
                && c.offset <= pos
                && pos < c.end()
            {
                return Ok(true);
            }
            if !self.advance()? {
                return Ok(false);
            }
        }
    }

    /// Moves to the next chunk, reading ahead; false at the end of the readable data.
    fn advance(&mut self) -> std::result::Result<bool, Retry> {
        self.fill_pipeline()?;
        let Some(slot) = self
            .stream
            .as_mut()
            .expect("positioned")
            .pending
            .pop_front()
        else {
            return Ok(false);
        };
        let slot = self.wait_for(slot)?;
        let len = slot.len.min(slot.valid);
        let chunk = Chunk {
            offset: slot.offset,
            bytes: Bytes::from_owner(slot.buf).slice(..len),
            visible: slot.visible,
        };
        let s = self.stream.as_mut().expect("positioned");
        s.cur = Some(chunk);
        self.fill_pipeline()?;
        Ok(len > 0)
    }

    /// Submits reads until [`READ_DEPTH`] are pending, up to the segment's data end (its
    /// written, visible bytes).
    fn fill_pipeline(&mut self) -> std::result::Result<(), Retry> {
        if self.ring.is_none() {
            let ring = IoUring::new(RING_ENTRIES).map_err(|e| Retry::Io(StorageError::Uring(e)))?;
            self.ring = Some(ring);
        }
        let visible = self.view.visible_end();
        let s = self.stream.as_mut().expect("positioned");
        // Loaded after `visible`: it covers every record below it.
        let data_end = s.seg.data_end.load(Ordering::Acquire);
        let limit = align_up_u64(data_end);
        let mut submitted = false;
        while s.pending.len() < READ_DEPTH && s.covered < data_end {
            let len = usize::try_from((limit - s.submit_at).min(READ_CHUNK_BYTES as u64))
                .expect("below a chunk");
            let valid =
                usize::try_from((data_end - s.submit_at).min(len as u64)).expect("below a chunk");
            let buf = self.pool.take(len);
            let id = self.next_id;
            self.next_id += 1;
            let entry = opcode::Read::new(
                types::Fd(s.seg.dat.as_raw_fd()),
                buf.as_ref().as_ptr().cast_mut(),
                u32::try_from(len).expect("a chunk fits u32"),
            )
            .offset(s.submit_at)
            .build()
            .user_data(id);
            let ring = self.ring.as_mut().expect("created above");
            // SAFETY: the buffer is owned by the slot, which stays in `pending` (its heap
            // memory never moves) until the completion is reaped in `wait_for` or `drop_stream`.
            let pushed = unsafe { ring.submission().push(&entry) };
            pushed.map_err(|_| Retry::Io(io_failure("submit read", "queue full")))?;
            s.pending.push_back(Slot {
                id,
                offset: s.submit_at,
                buf,
                len,
                valid,
                result: None,
                visible,
            });
            self.bytes_read += len as u64;
            let end = s.submit_at + valid as u64;
            s.covered = end;
            // A read that ends inside a block: the next one reads that block again.
            s.submit_at = align_down_u64(end);
            submitted = true;
        }
        if submitted {
            let ring = self.ring.as_mut().expect("created above");
            ring.submit()
                .map_err(|e| Retry::Io(io_failure("submit read", &e.to_string())))?;
        }
        Ok(())
    }

    /// Waits for `slot`'s read; a short read at the end of the file is kept short.
    fn wait_for(&mut self, mut slot: Slot) -> std::result::Result<Slot, Retry> {
        while slot.result.is_none() {
            let ring = self.ring.as_mut().expect("reads were submitted");
            ring.submit_and_wait(1)
                .or_else(|e| {
                    if e.raw_os_error() == Some(libc::EINTR) {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| Retry::Io(io_failure("wait for read", &e.to_string())))?;
            let s = self.stream.as_mut().expect("positioned");
            for cqe in ring.completion() {
                if cqe.user_data() == slot.id {
                    slot.result = Some(cqe.result());
                } else if let Some(p) = s.pending.iter_mut().find(|p| p.id == cqe.user_data()) {
                    p.result = Some(cqe.result());
                }
            }
        }
        let res = slot.result.expect("completed");
        match usize::try_from(res) {
            Ok(n) => {
                slot.len = n.min(slot.len);
                Ok(slot)
            }
            Err(_) => {
                let e = std::io::Error::from_raw_os_error(-res);
                let path = segment::dat_path(
                    &self.view.shared.dir,
                    self.stream.as_ref().expect("positioned").seg.base,
                );
                Err(Retry::Io(StorageError::Io {
                    op: "read",
                    path,
                    source: e,
                }))
            }
        }
    }

    /// Forgets the stream, first waiting for its reads in flight (the kernel writes into
    /// their buffers).
    fn drop_stream(&mut self) {
        let Some(mut s) = self.stream.take() else {
            return;
        };
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut waiting = s.pending.iter().filter(|p| p.result.is_none()).count();
        while waiting > 0 {
            if ring.submit_and_wait(1).is_err() {
                // Without a completion the buffers must never be freed.
                std::mem::forget(std::mem::take(&mut s.pending));
                return;
            }
            for cqe in ring.completion() {
                if let Some(p) = s.pending.iter_mut().find(|p| p.id == cqe.user_data())
                    && p.result.is_none()
                {
                    p.result = Some(cqe.result());
                    waiting -= 1;
                }
            }
        }
    }
}

/// Why streaming a segment stopped early.
#[derive(Debug)]
enum Retry {
    /// A chunk was read before the records now wanted were visible: read again.
    Stale,
    /// The record an index entry (at this seq) points to does not check out.
    BadEntry(u64),
    /// A visible record does not check out.
    Damage(u64),
    Io(StorageError),
}

impl From<StorageError> for Retry {
    fn from(e: StorageError) -> Retry {
        Retry::Io(e)
    }
}

fn s_seq(r: &Reader) -> u64 {
    r.stream.as_ref().map_or(0, |s| s.seq)
}

fn io_failure(op: &'static str, what: &str) -> StorageError {
    StorageError::Io {
        op,
        path: std::path::PathBuf::from("(io_uring)"),
        source: std::io::Error::other(what.to_string()),
    }
}

fn align_up_u64(n: u64) -> u64 {
    let b = BLOCK_BYTES as u64;
    n.div_ceil(b) * b
}

const _: () = assert!(align_up(1) == BLOCK_BYTES);
