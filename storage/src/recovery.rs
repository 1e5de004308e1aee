//! Opening a log: find the segments, validate the tail of the last one record by record,
//! cut a torn tail, repair the index from `.dat`, and continue the sequence.
//!
//! `.dat` is the source of truth. The scan stops at the first record that is zero (the clean
//! end), incomplete, fails its checksum, or is out of sequence; everything after it is cut. The
//! `.idx` of the last segment is compared with the entries the scan derived and rewritten where
//! they disagree (index ahead, behind, or garbage). Any repair is made durable (`sync_all` of
//! the files and an fsync of the directory) before the log accepts a write, so a crash right
//! after recovery cannot bring the torn bytes back.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::buffer::align_down_u64;
use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::log::{Log, LogConfig, SealedSegment, corrupt, create_segment};
use crate::record::{self, DecodeError};
use crate::segment::{self, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::uring::Ring;

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found (including the active one).
    pub segments: usize,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// Bytes cut from the end of the last `.dat` that did not hold valid records (zero
    /// padding of a crashed writer included).
    pub dat_bytes_cut: u64,
    /// Whether a damaged or partial record was found at the tail (not just zero padding).
    pub torn_tail: bool,
    /// Whether an `.idx` disagreed with its `.dat` and was rewritten.
    pub index_rebuilt: bool,
    /// `.idx` files without a `.dat` (an interrupted retention sweep) removed.
    pub orphan_indexes_removed: usize,
    /// Leftover directories of an interrupted compaction removed.
    pub compaction_leftovers_removed: usize,
}

impl Recovery {
    /// Whether anything on disk was changed.
    pub fn repaired(&self) -> bool {
        self.dat_bytes_cut > 0
            || self.index_rebuilt
            || self.orphan_indexes_removed > 0
            || self.compaction_leftovers_removed > 0
    }
}

/// The result of scanning one segment's `.dat`.
struct Scan {
    data: Vec<u8>,
    entries: Vec<IndexEntry>,
    end: u64,
    torn: bool,
    has_header: bool,
}

impl Log {
    /// Creates an empty log in `dir` whose first record gets sequence number `base_seq` (a
    /// compacted copy keeps its sequence numbers). `dir` must hold no segments.
    pub fn create(dir: &Path, cfg: LogConfig, base_seq: u64) -> Result<Log> {
        Log::validate_config(&cfg)?;
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        if !segment::list_segments(dir)?.is_empty() {
            return Err(corrupt(
                dir,
                0,
                "cannot create a log: the directory already holds segments",
            ));
        }
        let ring = Ring::new().map_err(StorageError::Uring)?;
        let dir_fd = std::fs::File::open(dir).map_err(io_err("open directory", dir))?;
        let active = create_segment(dir, &dir_fd, base_seq)?;
        let mut log = Log::assemble(dir.into(), dir_fd, cfg, ring, Vec::new(), active);
        start_fresh_segment(&mut log);
        log.sync_opened()?;
        Ok(log)
    }

    /// Opens (or creates) the log in `dir`, recovering its tail. Leftovers of an interrupted
    /// compaction next to `dir` are removed first (they are never the live set).
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery)> {
        Log::validate_config(&cfg)?;
        let leftovers = crate::compaction::remove_leftovers(dir)?;
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let ring = Ring::new().map_err(StorageError::Uring)?;
        let dir_fd = std::fs::File::open(dir).map_err(io_err("open directory", dir))?;
        let bases = segment::list_segments(dir)?;
        let orphans = segment::remove_orphan_indexes(dir, &bases)?;
        if orphans > 0 {
            segment::sync_dir(dir)?;
        }
        let mut report = Recovery {
            segments: bases.len().max(1),
            orphan_indexes_removed: orphans,
            compaction_leftovers_removed: leftovers,
            ..Recovery::default()
        };
        let Some((&last, sealed_bases)) = bases.split_last() else {
            let active = create_segment(dir, &dir_fd, 0)?;
            let mut log = Log::assemble(dir.into(), dir_fd, cfg, ring, Vec::new(), active);
            start_fresh_segment(&mut log);
            log.sync_opened()?;
            return Ok((log, report));
        };
        let mut sealed = Vec::with_capacity(sealed_bases.len());
        for (i, &base) in sealed_bases.iter().enumerate() {
            let meta = sealed_meta(dir, cfg.shard, base, &mut report)?;
            let (end, next) = (meta.end, bases[i + 1]);
            if end != next {
                let what =
                    format!("segment ends at seq {end} but the next segment starts at {next}");
                return Err(corrupt(&segment::dat_path(dir, base), 0, &what));
            }
            sealed.push(meta);
        }
        let mut scan = scan_dat(dir, cfg.shard, last)?;
        repair_tail(dir, last, &mut scan, &mut report)?;
        let active = create_segment(dir, &dir_fd, last)?;
        let mut log = Log::assemble(dir.into(), dir_fd, cfg, ring, sealed, active);
        let next_seq = last.checked_add(scan.entries.len() as u64).ok_or_else(|| {
            corrupt(
                &segment::dat_path(dir, last),
                0,
                "sequence numbers overflow u64",
            )
        })?;
        log.next_seq = next_seq;
        log.persisted_end = next_seq;
        log.last_ts_ns = log
            .sealed
            .last()
            .map_or(0, |s| s.last_ts_ns)
            .max(scan.last_ts_ns());
        report.next_seq = next_seq;
        if scan.has_header {
            let end = scan.end;
            let from = usize::try_from(align_down_u64(end)).expect("file in memory");
            let to = usize::try_from(end).expect("file in memory");
            log.dat[log.open].reset_at(end, |dst| copy_carry(dst, &scan.data[from..to]));
            let idx_bytes = encode_entries(&scan.entries);
            let idx_end = idx_bytes.len() as u64;
            let from = usize::try_from(align_down_u64(idx_end)).expect("in memory");
            log.idx[log.open].reset_at(idx_end, |dst| copy_carry(dst, &idx_bytes[from..]));
            log.written = (end, idx_end);
        } else {
            start_fresh_segment(&mut log);
        }
        log.sync_opened()?;
        Ok((log, report))
    }
}

fn copy_carry(dst: &mut [u8], src: &[u8]) -> usize {
    dst[..src.len()].copy_from_slice(src);
    src.len()
}

/// Stages the header block of the active segment so that it goes out with the first batch.
fn start_fresh_segment(log: &mut Log) {
    let header = SegmentHeader {
        shard: log.cfg.shard,
        base_seq: log.active.base,
    };
    let s = log.open;
    log.dat[s].reset_at(0, |_| 0);
    log.dat[s].append_with(SEGMENT_HEADER_BYTES, |d| header.encode(d));
    log.dat[s].mark_carry();
    log.idx[s].reset_at(0, |_| 0);
    log.next_seq = log.active.base;
    log.persisted_end = log.active.base;
}

fn encode_entries(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = vec![0u8; entries.len() * INDEX_ENTRY_BYTES];
    for (e, dst) in entries.iter().zip(out.chunks_exact_mut(INDEX_ENTRY_BYTES)) {
        e.encode(dst);
    }
    out
}

/// A sealed segment's extent, from the last entry of its index and the record it points at
/// (a few bytes read, not the whole files); falls back to scanning `.dat` when they do not
/// check out.
///
/// A sealed segment's records are never cut: if it is damaged, opening fails with the file
/// and offset and changes nothing (`net-admin verify` shows the damage). Only zero padding is
/// cut and a disagreeing index of an intact `.dat` rebuilt, and both are reported.
fn sealed_meta(dir: &Path, shard: u16, base: u64, report: &mut Recovery) -> Result<SealedSegment> {
    check_header(dir, shard, base)?;
    if let Some(meta) = sealed_meta_from_index(dir, base) {
        return Ok(meta);
    }
    let mut scan = scan_dat(dir, shard, base)?;
    // Zero padding after the last record is a clean end (a roll whose truncation did not
    // reach the disk); anything else is damage.
    if scan.torn {
        let what = "damaged record in a sealed segment (run `net-admin verify`)";
        return Err(corrupt(&segment::dat_path(dir, base), scan.end, what));
    }
    repair_tail(dir, base, &mut scan, report)?;
    let end = base.checked_add(scan.entries.len() as u64).ok_or_else(|| {
        corrupt(
            &segment::dat_path(dir, base),
            0,
            "sequence numbers overflow u64",
        )
    })?;
    Ok(SealedSegment {
        base,
        end,
        dat_bytes: scan.end,
        last_ts_ns: scan.last_ts_ns(),
    })
}

/// Checks that a segment's header block names this shard and base (a file moved from another
/// shard's directory, or renamed, is refused).
fn check_header(dir: &Path, shard: u16, base: u64) -> Result<()> {
    use std::io::Read;
    let path = segment::dat_path(dir, base);
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_exact(&mut block))
        .map_err(io_err("read header of", &path))?;
    verify_header(&path, &block, shard, base)
}

/// Decodes the header block at the start of `data` and checks its shard and base.
fn verify_header(path: &Path, data: &[u8], shard: u16, base: u64) -> Result<()> {
    let header = SegmentHeader::decode(data).map_err(|what| corrupt(path, 0, &what))?;
    if header.base_seq != base || header.shard != shard {
        let what = format!(
            "header says shard {} base {}, expected shard {shard} base {base}",
            header.shard, header.base_seq
        );
        return Err(corrupt(path, 0, &what));
    }
    Ok(())
}

fn sealed_meta_from_index(dir: &Path, base: u64) -> Option<SealedSegment> {
    use std::os::unix::fs::FileExt;
    let idx = std::fs::File::open(segment::idx_path(dir, base)).ok()?;
    let idx_len = idx.metadata().ok()?.len();
    let entry_bytes = INDEX_ENTRY_BYTES as u64;
    if idx_len == 0 || !idx_len.is_multiple_of(entry_bytes) {
        return None;
    }
    let count = idx_len / entry_bytes;
    let mut raw = [0u8; INDEX_ENTRY_BYTES];
    idx.read_exact_at(&mut raw, idx_len - entry_bytes).ok()?;
    let last = IndexEntry::decode(&raw).filter(|e| e.seq == base + count - 1)?;
    let dat = std::fs::File::open(segment::dat_path(dir, base)).ok()?;
    let dat_bytes = last.offset + u64::from(last.len);
    if dat.metadata().ok()?.len() != dat_bytes {
        return None;
    }
    let mut record = vec![0u8; usize::try_from(last.len).ok()?];
    dat.read_exact_at(&mut record, last.offset).ok()?;
    let header = record::decode(&record).ok().filter(|h| h.seq == last.seq)?;
    Some(SealedSegment {
        base,
        end: base.checked_add(count)?,
        dat_bytes,
        last_ts_ns: header.ts_ns,
    })
}

impl Scan {
    /// Timestamp of the last valid record (0 if none).
    fn last_ts_ns(&self) -> u64 {
        let Some(e) = self.entries.last() else {
            return 0;
        };
        let at = usize::try_from(e.offset).expect("file in memory");
        record::decode(&self.data[at..]).map_or(0, |h| h.ts_ns)
    }
}

/// Reads a segment's `.dat` and validates its records in order.
fn scan_dat(dir: &Path, shard: u16, base: u64) -> Result<Scan> {
    let path = segment::dat_path(dir, base);
    let data = std::fs::read(&path).map_err(io_err("read", &path))?;
    let header = data.get(..SEGMENT_HEADER_BYTES);
    if header.is_none_or(|h| h.iter().all(|&b| b == 0)) {
        // Created but its first write never completed: an empty segment.
        return Ok(Scan {
            data,
            entries: Vec::new(),
            end: 0,
            torn: false,
            has_header: false,
        });
    }
    verify_header(&path, &data, shard, base)?;
    let mut entries = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut torn = false;
    while pos < data.len() {
        let expected_seq = base.checked_add(entries.len() as u64);
        match record::decode(&data[pos..]) {
            Ok(h) if Some(h.seq) == expected_seq => {
                let len =
                    u32::try_from(h.record_bytes()).expect("bounded by RECORD_PAYLOAD_BYTES_MAX");
                entries.push(IndexEntry {
                    seq: h.seq,
                    offset: pos as u64,
                    len,
                });
                pos += h.record_bytes();
            }
            // Zeros to the end are the padding of the last block: a clean end. Anything
            // else from here on (garbage after a zero header, a partial record) is torn.
            Err(DecodeError::End | DecodeError::Incomplete)
                if data[pos..].iter().all(|&b| b == 0) =>
            {
                break;
            }
            _ => {
                torn = true;
                break;
            }
        }
    }
    Ok(Scan {
        end: pos as u64,
        data,
        entries,
        torn,
        has_header: true,
    })
}

/// Cuts `.dat` after the last valid record and rewrites `.idx` where it disagrees; makes both
/// durable before returning.
fn repair_tail(dir: &Path, base: u64, scan: &mut Scan, report: &mut Recovery) -> Result<()> {
    let dat_path = segment::dat_path(dir, base);
    let idx_path = segment::idx_path(dir, base);
    let end = if scan.has_header { scan.end } else { 0 };
    let dat_len = scan.data.len() as u64;
    let expected = encode_entries(&scan.entries);
    let idx = std::fs::read(&idx_path).unwrap_or_default();
    let idx_agrees = idx.len() >= expected.len()
        && idx[..expected.len()] == expected[..]
        && idx[expected.len()..].iter().all(|&b| b == 0);
    let idx_padded = idx.len() != expected.len();
    if dat_len == end && idx_agrees && !idx_padded {
        return Ok(());
    }
    if dat_len > end {
        report.dat_bytes_cut += dat_len - end;
        report.torn_tail |= scan.torn;
        let f = OpenOptions::new()
            .write(true)
            .open(&dat_path)
            .map_err(io_err("open", &dat_path))?;
        f.set_len(end).map_err(io_err("truncate", &dat_path))?;
        f.sync_all().map_err(io_err("fsync", &dat_path))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&idx_path)
        .map_err(io_err("open", &idx_path))?;
    if !idx_agrees {
        report.index_rebuilt = true;
        // On a full disk this fails and the log does not open: nothing is cut to make room.
        f.write_all(&expected)
            .map_err(io_err("rebuild index", &idx_path))?;
    }
    f.set_len(expected.len() as u64)
        .map_err(io_err("truncate", &idx_path))?;
    f.sync_all().map_err(io_err("fsync", &idx_path))?;
    segment::sync_dir(dir)?;
    if report.repaired() {
        let path: PathBuf = dat_path;
        eprintln!(
            "net-storage: recovered {}: cut {} bytes (torn: {}), index rebuilt: {}",
            path.display(),
            report.dat_bytes_cut,
            report.torn_tail,
            report.index_rebuilt
        );
    }
    Ok(())
}
