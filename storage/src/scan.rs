//! Scanning a segment's `.dat` from its header to its end, in bounded memory: the one reading
//! of segment files that recovery, `verify`, `dump` and index rebuilds share, so they can never
//! disagree about what a file holds.
//!
//! The scan validates the header block, then walks records in sequence (checksum, and each
//! `seq` one more than the last) while building the sparse index. It stops at the clean end —
//! an all-zero header with only zeros after it, up to the end of the file (DMA padding and
//! preallocated space read as zeros) — or at the first damage: a record that fails its
//! checksum, breaks the sequence, is cut short, or zeros followed by bytes that are not.
//!
//! After damage it looks further: it searches byte by byte for the next intact batch (a
//! record with [`FLAG_BATCH_FIRST`] and a plausible sequence number), walks on from there, and
//! reports the largest `committed` stamp and sequence number it finds. Recovery uses the stamp
//! to tell a torn tail (the writes in flight at a crash, never acknowledged) from damage to
//! acknowledged records, which it must not cut; an operator accepting a loss uses the sequence
//! number to continue past everything that was ever handed out.
//!
//! Files are read through [`ReadAt`], so unit tests feed byte slices.

use std::io;

use crate::index::IndexEntry;
use crate::record::{
    self, DecodeError, FLAG_BATCH_FIRST, FLAGS_KNOWN, RECORD_HEADER_BYTES, RecordHeader,
};
use crate::segment::{SEGMENT_HEADER_BYTES, SegmentHeader};

/// Bytes read from the file at a time (more when one record is larger).
const WINDOW_BYTES: usize = 1 << 20;
/// A sequence number further than this beyond the expected one is not taken for a record
/// when searching for the next intact batch (random bytes that happen to check out would
/// otherwise make an operator's repair skip absurdly far).
const RESYNC_SEQ_SPAN: u64 = 1 << 40;

/// Positioned reads of a file (or of bytes, in tests).
pub trait ReadAt {
    /// Reads into `buf` at `offset`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - at);
        buf[..n].copy_from_slice(&self[at..at + n]);
        Ok(n)
    }
}

/// A forward-moving window over a file.
struct Window<'a, R: ReadAt + ?Sized> {
    src: &'a R,
    len: u64,
    buf: Vec<u8>,
    start: u64,
    filled: usize,
}

impl<'a, R: ReadAt + ?Sized> Window<'a, R> {
    fn new(src: &'a R, len: u64) -> Self {
        Window {
            src,
            len,
            buf: Vec::new(),
            start: 0,
            filled: 0,
        }
    }

    /// Up to `n` bytes at `at` (fewer only at the end of the file).
    fn get(&mut self, at: u64, n: usize) -> io::Result<&[u8]> {
        let want = usize::try_from(self.len.saturating_sub(at)).map_or(n, |left| left.min(n));
        let end = self.start + self.filled as u64;
        if at < self.start || at + want as u64 > end {
            self.refill(at, want)?;
        }
        let from = usize::try_from(at - self.start).expect("inside the window");
        Ok(&self.buf[from..from + want.min(self.filled - from)])
    }

    fn refill(&mut self, at: u64, want: usize) -> io::Result<()> {
        let size = want.max(WINDOW_BYTES);
        let size = usize::try_from(self.len.saturating_sub(at)).map_or(size, |l| l.min(size));
        self.buf.resize(size.max(want), 0);
        self.start = at;
        self.filled = 0;
        while self.filled < size {
            let n = self
                .src
                .read_at(&mut self.buf[self.filled..size], at + self.filled as u64)?;
            if n == 0 {
                break;
            }
            self.filled += n;
        }
        Ok(())
    }
}

/// What the header block of a segment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState {
    /// It names this shard and base.
    Valid,
    /// All zero, or the file is shorter than a header: never written.
    Missing,
    /// A valid header of another shard or base: the file does not belong here.
    Foreign(String),
    /// Something else, and what is wrong with it.
    Invalid(String),
}

/// A valid record found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAt {
    /// Its sequence number.
    pub seq: u64,
    /// Its byte offset in `.dat`.
    pub offset: u64,
    /// Its total length (header and payload).
    pub len: u32,
    /// Its timestamp.
    pub ts_ns: u64,
}

/// What lies beyond damage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Later {
    /// The highest `base + committed` stamp of an intact batch after the damage: every record
    /// below it had been acknowledged before that batch was written.
    pub committed_end: Option<u64>,
    /// One past the highest sequence number of an intact record after the damage.
    pub seq_end: Option<u64>,
    /// Offset of the first intact batch after the damage.
    pub resumes_at: Option<u64>,
}

/// The first damage a scan met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset in `.dat` where the expected record should be.
    pub offset: u64,
    /// What was found there instead.
    pub what: String,
    /// What intact data follows.
    pub later: Later,
}

/// The outcome of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The header block.
    pub header: HeaderState,
    /// Valid, in-sequence records from the start.
    pub records: u64,
    /// Byte offset after the last valid record (the header's end if none).
    pub end: u64,
    /// The last valid record.
    pub last: Option<RecordAt>,
    /// Sparse index of the valid records: the first, then one per stride.
    pub index: Vec<IndexEntry>,
    /// The highest `base + committed` stamp among the valid records.
    pub committed_end: Option<u64>,
    /// Where the records stop being valid, if not at a clean end.
    pub damage: Option<Damage>,
    /// Length of the file.
    pub file_len: u64,
}

impl Scan {
    /// Whether the file holds nothing but zeros (a segment created and never written).
    pub fn is_blank(&self) -> bool {
        self.header == HeaderState::Missing && self.records == 0 && self.damage.is_none()
    }

    /// The sparse index a sealed segment keeps: [`Scan::index`] and the last record.
    pub fn sealed_index(&self) -> Vec<IndexEntry> {
        let mut entries = self.index.clone();
        if let Some(last) = self.last
            && entries.last().is_none_or(|e| e.seq != last.seq)
        {
            entries.push(IndexEntry {
                seq: last.seq,
                offset: last.offset,
                len: last.len,
            });
        }
        entries
    }
}

/// Scans the segment `base` of `shard` held by `src` (of `len` bytes); `on_record` sees every
/// valid in-sequence record with its offset and payload (past the origin block of a record
/// that has one; the header carries the decoded origin), and returns false to stop the scan
/// there (the result then covers the records seen). I/O errors are the only errors; damage
/// is in the result.
pub fn scan<R: ReadAt + ?Sized>(
    src: &R,
    len: u64,
    shard: u16,
    base: u64,
    stride: u64,
    on_record: &mut dyn FnMut(&RecordHeader, u64, &[u8]) -> bool,
) -> io::Result<Scan> {
    let mut win = Window::new(src, len);
    let header = header_state(win.get(0, SEGMENT_HEADER_BYTES)?, shard, base);
    let mut s = Scan {
        header,
        records: 0,
        end: SEGMENT_HEADER_BYTES as u64,
        last: None,
        index: Vec::new(),
        committed_end: None,
        damage: None,
        file_len: len,
    };
    if len <= SEGMENT_HEADER_BYTES as u64 {
        match &s.header {
            HeaderState::Valid => {}
            HeaderState::Missing => s.end = 0,
            HeaderState::Invalid(what) | HeaderState::Foreign(what) => {
                s.damage = Some(Damage {
                    offset: 0,
                    what: what.clone(),
                    later: Later::default(),
                });
                s.end = 0;
            }
        }
        return Ok(s);
    }
    let mut pos = SEGMENT_HEADER_BYTES as u64;
    let mut next_entry_at = pos;
    loop {
        let expected = base.saturating_add(s.records);
        match step(&mut win, pos, expected)? {
            Step::Record(h) => {
                let payload_at = pos + h.payload_offset() as u64;
                let payload = win.get(payload_at, h.payload_len())?;
                let go_on = on_record(&h, pos, payload);
                if h.is_batch_first() {
                    let end = base.saturating_add(u64::from(h.committed));
                    s.committed_end = s.committed_end.max(Some(end));
                }
                let rec_len = u32::try_from(h.record_bytes()).expect("bounded record");
                if pos >= next_entry_at {
                    s.index.push(IndexEntry {
                        seq: h.seq,
                        offset: pos,
                        len: rec_len,
                    });
                    next_entry_at = pos + stride;
                }
                s.last = Some(RecordAt {
                    seq: h.seq,
                    offset: pos,
                    len: rec_len,
                    ts_ns: h.ts_ns,
                });
                s.records += 1;
                pos += u64::from(rec_len);
                s.end = pos;
                if !go_on {
                    return Ok(s);
                }
            }
            Step::End => break,
            Step::Damaged(what) => {
                let later = look_beyond(&mut win, pos + 1, expected, base)?;
                s.damage = Some(Damage {
                    offset: pos,
                    what,
                    later,
                });
                break;
            }
        }
    }
    if s.header == HeaderState::Missing && s.records == 0 && s.damage.is_none() {
        s.end = 0;
    }
    Ok(s)
}

/// What a header block (the first [`SEGMENT_HEADER_BYTES`] of a `.dat`) says.
pub fn header_state(block: &[u8], shard: u16, base: u64) -> HeaderState {
    if block.len() < SEGMENT_HEADER_BYTES || block.iter().all(|&b| b == 0) {
        if block.iter().all(|&b| b == 0) {
            return HeaderState::Missing;
        }
        return HeaderState::Invalid(format!(
            "header block cut short: {} of {SEGMENT_HEADER_BYTES} bytes",
            block.len()
        ));
    }
    match SegmentHeader::decode(block) {
        Err(what) => HeaderState::Invalid(what),
        Ok(h) if h.shard != shard || h.base_seq != base => HeaderState::Foreign(format!(
            "header says shard {} base {}, but the file belongs to shard {shard} base {base}",
            h.shard, h.base_seq
        )),
        Ok(_) => HeaderState::Valid,
    }
}

enum Step {
    Record(RecordHeader),
    End,
    Damaged(String),
}

/// Reads the record expected at `pos`.
fn step<R: ReadAt + ?Sized>(win: &mut Window<'_, R>, pos: u64, expected: u64) -> io::Result<Step> {
    let head = win.get(pos, RECORD_HEADER_BYTES)?;
    if head.is_empty() {
        return Ok(Step::End);
    }
    if head.iter().all(|&b| b == 0) {
        return Ok(match first_nonzero(win, pos)? {
            None => Step::End,
            Some(at) => Step::Damaged(format!(
                "zeros where seq {expected} belongs, then non-zero bytes at offset {at}"
            )),
        });
    }
    if head.len() < RECORD_HEADER_BYTES {
        let n = head.len();
        return Ok(Step::Damaged(format!(
            "record header cut short: {n} of {RECORD_HEADER_BYTES} bytes"
        )));
    }
    let Some(body_len) = record::announced_len(head) else {
        return Ok(Step::Damaged(format!(
            "length {} is over the maximum {}",
            u32::from_le_bytes(head[..4].try_into().expect("4 bytes")),
            record::RECORD_PAYLOAD_BYTES_MAX
        )));
    };
    let total = RECORD_HEADER_BYTES + body_len;
    let bytes = win.get(pos, total)?;
    if bytes.len() < total {
        let got = bytes.len().saturating_sub(RECORD_HEADER_BYTES);
        return Ok(Step::Damaged(format!(
            "record body of {body_len} bytes cut short after {got}"
        )));
    }
    Ok(match record::decode(bytes) {
        Ok(h) if h.seq == expected => Step::Record(h),
        Ok(h) => Step::Damaged(format!(
            "record has seq {} where seq {expected} belongs",
            h.seq
        )),
        Err(e @ DecodeError::Checksum { .. }) => Step::Damaged(e.to_string()),
        Err(e) => Step::Damaged(format!("not a record: {e}")),
    })
}

/// The offset of the first non-zero byte at or after `from`, if any.
fn first_nonzero<R: ReadAt + ?Sized>(
    win: &mut Window<'_, R>,
    from: u64,
) -> io::Result<Option<u64>> {
    let mut at = from;
    loop {
        let chunk = win.get(at, WINDOW_BYTES)?;
        if chunk.is_empty() {
            return Ok(None);
        }
        if let Some(i) = chunk.iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += chunk.len() as u64;
    }
}

/// Searches for intact batches after damage at `from - 1` and walks them to the end of the
/// file, resyncing after further damage.
fn look_beyond<R: ReadAt + ?Sized>(
    win: &mut Window<'_, R>,
    from: u64,
    expected: u64,
    base: u64,
) -> io::Result<Later> {
    let mut later = Later::default();
    let mut at = from;
    let mut min_seq = expected;
    while let Some((start, first)) = find_batch(win, at, min_seq)? {
        later.resumes_at.get_or_insert(start);
        let mut pos = start;
        let mut seq = first;
        loop {
            match step(win, pos, seq)? {
                Step::Record(h) => {
                    if h.is_batch_first() {
                        let end = base.saturating_add(u64::from(h.committed));
                        later.committed_end = later.committed_end.max(Some(end));
                    }
                    later.seq_end = later.seq_end.max(Some(h.seq.saturating_add(1)));
                    pos += h.record_bytes() as u64;
                    seq = h.seq.saturating_add(1);
                }
                Step::End => return Ok(later),
                Step::Damaged(_) => break,
            }
        }
        at = pos + 1;
        min_seq = seq;
    }
    Ok(later)
}

/// The next offset at or after `from` holding an intact first record of a batch whose seq is
/// at least `min_seq` (and not absurdly beyond it).
fn find_batch<R: ReadAt + ?Sized>(
    win: &mut Window<'_, R>,
    from: u64,
    min_seq: u64,
) -> io::Result<Option<(u64, u64)>> {
    let mut at = from;
    while at + RECORD_HEADER_BYTES as u64 <= win.len {
        let chunk = win.get(at, WINDOW_BYTES.max(RECORD_HEADER_BYTES))?;
        let n = chunk.len();
        let mut hit = None;
        for i in 0..=n.saturating_sub(RECORD_HEADER_BYTES) {
            let h = &chunk[i..i + RECORD_HEADER_BYTES];
            // A batch's first record may carry other known flags too (an origin).
            let flags = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
            if flags & FLAG_BATCH_FIRST == 0 || flags & !FLAGS_KNOWN != 0 {
                continue;
            }
            let seq = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
            if seq >= min_seq
                && seq - min_seq < RESYNC_SEQ_SPAN
                && record::announced_len(h).is_some()
            {
                hit = Some(at + i as u64);
                break;
            }
        }
        match hit {
            Some(p) => {
                let seq = peek_seq(win, p)?;
                if let Step::Record(h) = step(win, p, seq)?
                    && h.is_batch_first()
                {
                    return Ok(Some((p, h.seq)));
                }
                at = p + 1;
            }
            None if n <= RECORD_HEADER_BYTES => return Ok(None),
            None => at += (n - RECORD_HEADER_BYTES + 1) as u64,
        }
    }
    Ok(None)
}

fn peek_seq<R: ReadAt + ?Sized>(win: &mut Window<'_, R>, at: u64) -> io::Result<u64> {
    let h = win.get(at, RECORD_HEADER_BYTES)?;
    Ok(u64::from_le_bytes(
        h[16..24].try_into().expect("a whole header"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, RecordMeta, encode_record, origin_block_bytes, record_bytes};

    const BASE: u64 = 100;

    /// A segment of `batches` (each a list of payload sizes), batch-first records stamped with
    /// `committed` as the writer would (everything before the batch, here).
    fn segment(batches: &[&[usize]]) -> (Vec<u8>, Vec<u64>) {
        segment_with(batches, |_| None)
    }

    /// [`segment`], where the record of each seq carries the origin `origin(seq)` gives.
    fn segment_with(
        batches: &[&[usize]],
        origin: impl Fn(u64) -> Option<Origin>,
    ) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES];
        SegmentHeader {
            shard: 1,
            base_seq: BASE,
        }
        .encode(&mut bytes);
        let (mut seq, mut offsets) = (BASE, Vec::new());
        for batch in batches {
            let committed = u32::try_from(seq - BASE).unwrap();
            for (i, &n) in batch.iter().enumerate() {
                let at = bytes.len();
                let o = origin(seq);
                bytes.resize(at + record_bytes(origin_block_bytes(o.is_some()) + n), 0);
                let meta = RecordMeta {
                    seq,
                    ts_ns: seq * 10,
                    flags: if i == 0 { FLAG_BATCH_FIRST } else { 0 },
                    committed: if i == 0 { committed } else { 0 },
                };
                let payload = vec![seq.to_le_bytes()[0]; n];
                encode_record(&mut bytes[at..], &meta, o.as_ref(), &payload);
                offsets.push(at as u64);
                seq += 1;
            }
        }
        (bytes, offsets)
    }

    fn run(bytes: &[u8]) -> Scan {
        scan(bytes, bytes.len() as u64, 1, BASE, 256, &mut |_, _, _| true).unwrap()
    }

    #[test]
    fn a_clean_segment_with_zero_padding_scans_to_its_end() {
        let (mut bytes, offsets) = segment(&[&[10, 20], &[300, 5, 6]]);
        let end = bytes.len() as u64;
        bytes.resize(bytes.len() + 10_000, 0);
        let s = run(&bytes);
        assert_eq!(
            (s.header.clone(), s.records, s.end),
            (HeaderState::Valid, 5, end)
        );
        assert!(s.damage.is_none());
        assert_eq!(s.last.unwrap().seq, BASE + 4);
        assert_eq!(s.index[0].offset, offsets[0]);
        assert!(
            s.index.len() >= 2,
            "a stride of 256 bytes indexes more than the first"
        );
        assert_eq!(s.sealed_index().last().unwrap().seq, BASE + 4);
    }

    #[test]
    fn damage_before_a_later_batch_reports_its_committed_stamp() {
        let (mut bytes, offsets) = segment(&[&[10, 20], &[30, 40], &[50]]);
        bytes[usize::try_from(offsets[1]).unwrap() + 40] ^= 1; // inside seq 101
        let s = run(&bytes);
        let d = s.damage.unwrap();
        assert_eq!((s.records, d.offset), (1, offsets[1]));
        assert!(d.what.contains("checksum"), "{}", d.what);
        assert_eq!(d.later.resumes_at, Some(offsets[2]));
        assert_eq!(d.later.committed_end, Some(BASE + 4));
        assert_eq!(d.later.seq_end, Some(BASE + 5));
    }

    #[test]
    fn records_with_an_origin_scan_with_their_payload_and_are_found_beyond_damage() {
        // Every record carries an origin, so every batch starts with a record flagged
        // BATCH_FIRST | ORIGIN: the search beyond damage must still find it.
        let origin = |seq: u64| {
            Some(Origin {
                node: 9,
                shard: 2,
                seq: seq * 3,
            })
        };
        let (mut bytes, offsets) = segment_with(&[&[10, 20], &[30, 40], &[50]], origin);
        let mut seen = Vec::new();
        let s = scan(
            &bytes[..],
            bytes.len() as u64,
            1,
            BASE,
            256,
            &mut |h, _, p| {
                seen.push((h.seq, h.origin, p.to_vec()));
                true
            },
        )
        .unwrap();
        assert!(s.damage.is_none(), "{:?}", s.damage);
        assert_eq!(seen.len(), 5);
        for (i, (seq, o, p)) in seen.iter().enumerate() {
            assert_eq!((*seq, *o), (BASE + i as u64, origin(BASE + i as u64)));
            assert_eq!(p, &vec![seq.to_le_bytes()[0]; [10, 20, 30, 40, 50][i]]);
        }
        bytes[usize::try_from(offsets[1]).unwrap() + 40] ^= 1; // inside seq 101
        let d = run(&bytes).damage.unwrap();
        assert_eq!(d.offset, offsets[1]);
        assert_eq!(d.later.resumes_at, Some(offsets[2]));
        assert_eq!(d.later.committed_end, Some(BASE + 4));
        assert_eq!(d.later.seq_end, Some(BASE + 5));
    }

    #[test]
    fn nonzero_reserved_origin_bytes_are_damage() {
        let origin = |_| {
            Some(Origin {
                node: 1,
                shard: 1,
                seq: 1,
            })
        };
        let (mut bytes, offsets) = segment_with(&[&[10, 20], &[30]], origin);
        let at = usize::try_from(offsets[1]).unwrap();
        bytes[at + crate::record::RECORD_HEADER_BYTES + 20] = 1; // a reserved byte of seq 101
        let total = record_bytes(crate::record::ORIGIN_BYTES + 20);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&bytes[at + 8..at + 32]),
            &bytes[at + 32..at + total],
        );
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        let s = run(&bytes);
        let d = s.damage.unwrap();
        assert_eq!((s.records, d.offset), (1, offsets[1]));
        assert!(d.what.contains("reserved"), "{}", d.what);
        assert_eq!(d.later.resumes_at, Some(offsets[2]));
    }

    #[test]
    fn a_torn_last_batch_has_nothing_beyond_it() {
        let (bytes, offsets) = segment(&[&[10, 20], &[30, 40]]);
        let cut = usize::try_from(offsets[3]).unwrap() + 10;
        let s = run(&bytes[..cut]);
        let d = s.damage.unwrap();
        assert_eq!((s.records, d.offset), (3, offsets[3]));
        assert_eq!(d.later, Later::default());
    }

    #[test]
    fn zeros_then_garbage_is_damage_and_a_blank_file_is_blank() {
        let (mut bytes, _) = segment(&[&[10]]);
        let end = bytes.len();
        bytes.resize(end + 5000, 0);
        bytes[end + 4000] = 7;
        let s = run(&bytes);
        assert_eq!(s.damage.unwrap().offset, end as u64);
        let blank = vec![0u8; 3 * SEGMENT_HEADER_BYTES];
        let s = run(&blank);
        assert!(s.is_blank() && s.end == 0, "{s:?}");
        let s = run(&[]);
        assert!(s.is_blank() && s.end == 0, "{s:?}");
    }

    #[test]
    fn a_foreign_header_is_invalid() {
        let (bytes, _) = segment(&[&[10]]);
        let s = scan(
            &bytes[..],
            bytes.len() as u64,
            2,
            BASE,
            256,
            &mut |_, _, _| true,
        )
        .unwrap();
        assert!(matches!(s.header, HeaderState::Foreign(ref w) if w.contains("shard 1")));
    }
}
