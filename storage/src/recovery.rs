//! Opening a log: check the directory against its manifest, validate the sealed segments,
//! scan the last one record by record, cut a torn tail, and continue the sequence — or refuse,
//! naming the file, when what is on disk cannot be explained by a crash.
//!
//! What a crash can leave, and is repaired (and reported in [`Recovery`]):
//! - a torn tail: the writes in flight when the process died, never acknowledged, are cut;
//! - segments below the manifest's `first_seq` (retention died before unlinking them): removed;
//! - a sealed segment whose `.idx` or reserved-space truncation did not reach the disk: its
//!   index is rebuilt from `.dat`, its zero tail cut;
//! - leftovers of an interrupted compaction next to the directory: removed.
//!
//! What a crash cannot leave, and is refused (the log does not open; `net-admin verify` shows
//! the damage, `net-admin repair --accept-data-loss` moves it aside explicitly):
//! - a missing segment: an `.idx` without its `.dat`, a first segment above the manifest's
//!   `first_seq`, a newest segment below its `active_base`, a gap between two segments that
//!   the manifest has not accepted;
//! - a damaged record in a sealed segment, or in the last one before records that a later,
//!   intact batch declares acknowledged (see [`crate::record`]), or before the end the
//!   manifest recorded at the last clean shutdown;
//! - a segment whose header names another shard or base; a missing manifest beside segments.
//!
//! Any repair is made durable (`sync_all` of the files and an fsync of the directory) before
//! the log accepts a write, so a crash right after recovery cannot bring torn bytes back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::buffer::{BLOCK_BYTES, align_down_u64};
use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::log::{Active, Log, LogConfig, STAGES, SYNCS_MAX, SealedSegment, corrupt};
use crate::manifest::{self, Manifest};
use crate::record;
use crate::roll::{self, IndexKind, ManifestWriter};
use crate::scan::{self, HeaderState, Scan};
use crate::segment::{self, Inventory, SEGMENT_HEADER_BYTES};
use crate::stage::Stage;
use crate::uring::Ring;
use crate::view::{LogView, SegmentHandle, SegmentIndex, SegmentMap};

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found (including the active one).
    pub segments: usize,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// Non-zero bytes cut from the end of the last `.dat` (a torn tail).
    pub dat_bytes_cut: u64,
    /// Whether a damaged or partial record was found at the tail (not just zero padding).
    pub torn_tail: bool,
    /// Sealed segments whose `.idx` was missing or wrong and was rebuilt from `.dat`.
    pub indexes_rebuilt: usize,
    /// Segments below the manifest's first sequence number (an interrupted retention sweep)
    /// removed.
    pub retention_finished: usize,
    /// Leftover directories of an interrupted compaction removed.
    pub compaction_leftovers_removed: usize,
}

impl Recovery {
    /// Whether anything on disk was changed.
    pub fn repaired(&self) -> bool {
        self.dat_bytes_cut > 0
            || self.torn_tail
            || self.indexes_rebuilt > 0
            || self.retention_finished > 0
            || self.compaction_leftovers_removed > 0
    }
}

/// The advice every refusal ends with.
pub(crate) const ADVICE: &str = "run `net-admin verify` to see all damage; \
    `net-admin repair --accept-data-loss` moves it aside and continues without those events";

impl Log {
    /// Opens (or creates) the log in `dir` for standalone use (it owns a small ring; see
    /// `blocking.rs`), recovering its tail.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery)> {
        let ring = Ring::new().map_err(StorageError::Uring)?;
        let (mut log, report) = open_log(dir, cfg)?;
        log.own_ring = Some(ring);
        Ok((log, report))
    }

    /// Opens (or creates) the log in `dir` for a shard that drives it through its own ring.
    pub fn open_shared(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery)> {
        open_log(dir, cfg)
    }

    /// Creates an empty standalone log in `dir` whose first record gets `base_seq` (a
    /// compacted copy keeps its sequence numbers). `dir` must hold no segments and no
    /// manifest.
    pub fn create(dir: &Path, cfg: LogConfig, base_seq: u64) -> Result<Log> {
        cfg.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let inv = segment::inventory(dir)?;
        if !inv.dats.is_empty() || !inv.idxs.is_empty() || manifest::path(dir).exists() {
            let what = "cannot create a log: the directory already holds one";
            return Err(corrupt(dir, 0, what));
        }
        let ring = Ring::new().map_err(StorageError::Uring)?;
        let mut log = fresh(dir, cfg, base_seq)?;
        log.own_ring = Some(ring);
        Ok(log)
    }
}

fn open_log(dir: &Path, cfg: LogConfig) -> Result<(Log, Recovery)> {
    cfg.validate()?;
    let leftovers = crate::compaction::remove_leftovers(dir)?;
    std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let inv = segment::inventory(dir)?;
    let mut report = Recovery {
        compaction_leftovers_removed: leftovers,
        ..Recovery::default()
    };
    let shard = cfg.shard;
    let log = match manifest::read(dir, cfg.shard)? {
        Some(m) => recover(dir, cfg, m, inv, &mut report)?,
        None if inv.dats.is_empty() && inv.idxs.is_empty() => {
            report.segments = 1;
            fresh(dir, cfg, 0)?
        }
        None => {
            let what = format!(
                "missing, but the directory holds {} segment(s): without it, lost segments \
                 cannot be told from never-written ones; {ADVICE} (it rebuilds the manifest)",
                inv.dats.len()
            );
            return Err(corrupt(&manifest::path(dir), 0, &what));
        }
    };
    tracing::info!(
        shard,
        dir = %dir.display(),
        segments = report.segments,
        first_seq = log.first_seq(),
        next_seq = log.next_seq(),
        repaired = report.repaired(),
        torn_tail = report.torn_tail,
        dat_bytes_cut = report.dat_bytes_cut,
        indexes_rebuilt = report.indexes_rebuilt,
        retention_finished = report.retention_finished,
        compaction_leftovers_removed = report.compaction_leftovers_removed,
        "log opened"
    );
    Ok((log, report))
}

/// A new log with one empty segment at `base`.
fn fresh(dir: &Path, cfg: LogConfig, base: u64) -> Result<Log> {
    let dir_fd = File::open(dir).map_err(io_err("open directory", dir))?;
    let (dat, handle) = roll::create_segment(dir, &dir_fd, &cfg, base)?;
    let mut writer = ManifestWriter::new(Manifest::new(cfg.shard, base), manifest::open(dir)?);
    writer.write_now(dir)?;
    dir_fd.sync_all().map_err(io_err("fsync directory", dir))?;
    let map = SegmentMap {
        first_seq: base,
        segments: vec![handle.clone()],
        gaps: Vec::new(),
    };
    let view = LogView::new(cfg.shard, dir.into(), map, base);
    let mut log = assemble(
        dir,
        dir_fd,
        cfg,
        view,
        writer,
        Vec::new(),
        active(base, dat, handle),
    );
    log.stage_segment_header();
    log.next_seq = base;
    log.set_watermarks(base);
    Ok(log)
}

fn active(base: u64, dat: File, handle: Arc<SegmentHandle>) -> Active {
    Active {
        base,
        dat,
        handle,
        entries: 0,
        next_entry_at: SEGMENT_HEADER_BYTES as u64,
        last_record: None,
        synced_end: base,
        dir_synced: true,
    }
}

fn assemble(
    dir: &Path,
    dir_fd: File,
    cfg: LogConfig,
    view: LogView,
    manifest: ManifestWriter,
    sealed: Vec<SealedSegment>,
    active: Active,
) -> Log {
    let dat_cap = cfg.batch_bytes_max + SEGMENT_HEADER_BYTES;
    let mut stage_free = [true; STAGES];
    stage_free[0] = false;
    Log {
        dir: dir.into(),
        dir_fd,
        cfg,
        own_ring: None,
        view,
        manifest,
        sealed,
        active,
        sealing: None,
        stages: (0..STAGES).map(|_| Stage::new(dat_cap)).collect(),
        stage_free,
        open: 0,
        open_events: 0,
        open_record_bytes: 0,
        open_first: None,
        batches: std::collections::VecDeque::with_capacity(STAGES),
        done: std::collections::VecDeque::with_capacity(STAGES),
        held: None,
        write_in_flight: false,
        syncs: [None; SYNCS_MAX],
        ops_in_flight: 0,
        next_seq: 0,
        written_end: 0,
        durable_end: 0,
        visible_end: 0,
        last_ts_ns: 0,
        poisoned: None,
        dir_sync_queued: false,
        retention: None,
        reader: None,
        warm: crate::warm::Warm::new(),
    }
}

impl Log {
    /// Everything up to `end` is written, durable and visible (what recovery found).
    fn set_watermarks(&mut self, end: u64) {
        self.written_end = end;
        self.durable_end = end;
        self.visible_end = end;
        self.active.synced_end = end;
        self.view.publish_visible(end);
    }
}

/// Recovers a log that has a manifest.
fn recover(
    dir: &Path,
    cfg: LogConfig,
    mut m: Manifest,
    mut inv: Inventory,
    report: &mut Recovery,
) -> Result<Log> {
    finish_retention(dir, &m, &mut inv, report)?;
    check_inventory(dir, &m, &inv)?;
    let dir_fd = File::open(dir).map_err(io_err("open directory", dir))?;
    let (&last, sealed_bases) = inv.dats.split_last().expect("checked non-empty");
    report.segments = inv.dats.len();
    let mut sealed = Vec::with_capacity(sealed_bases.len());
    let mut handles = Vec::with_capacity(inv.dats.len());
    for (i, &base) in sealed_bases.iter().enumerate() {
        let meta = sealed_meta(dir, cfg, base, report)?;
        check_continues(dir, &m, base, meta.end, inv.dats[i + 1])?;
        let h = roll::open_handle(dir, &dir_fd, base, meta.dat_bytes, IndexKind::OnDisk)?;
        h.end.store(meta.end, Ordering::Release);
        handles.push(h);
        sealed.push(meta);
    }
    let scan = scan_last(dir, cfg, &m, last, report)?;
    let next_seq = last.checked_add(scan.records).ok_or_else(|| {
        corrupt(
            &segment::dat_path(dir, last),
            0,
            "sequence numbers overflow u64",
        )
    })?;
    if let Some(clean) = m.clean_end.filter(|&c| c > next_seq) {
        let what = format!(
            "the log ends at seq {next_seq}, but records up to seq {} were acknowledged at the \
             last clean shutdown: its end was cut; {ADVICE}",
            clean - 1
        );
        return Err(corrupt(&segment::dat_path(dir, last), scan.end, &what));
    }
    report.next_seq = next_seq;
    let dat = roll::open_active(dir, &dir_fd, &cfg, last)?;
    let handle = roll::open_handle(
        dir,
        &dir_fd,
        last,
        scan.end,
        IndexKind::Live(roll::index_capacity(&cfg)),
    )?;
    handles.push(handle.clone());
    if m.active_base != last {
        m.active_base = last;
    }
    let mut writer = ManifestWriter::new(m, manifest::open(dir)?);
    writer.write_now(dir)?;
    let map = SegmentMap {
        first_seq: writer.manifest().first_seq,
        segments: handles,
        gaps: writer.manifest().gaps.clone(),
    };
    let view = LogView::new(cfg.shard, dir.into(), map, next_seq);
    let last_ts = sealed.last().map_or(0, |s: &SealedSegment| s.last_ts_ns);
    let mut log = assemble(
        dir,
        dir_fd,
        cfg,
        view,
        writer,
        sealed,
        active(last, dat, handle),
    );
    resume_active(&mut log, dir, &scan)?;
    log.next_seq = next_seq;
    log.last_ts_ns = last_ts.max(scan.last.map_or(0, |r| r.ts_ns));
    log.set_watermarks(next_seq);
    Ok(log)
}

/// Removes segments below `first_seq`: a retention sweep made its manifest durable and died
/// before unlinking them.
fn finish_retention(
    dir: &Path,
    m: &Manifest,
    inv: &mut Inventory,
    report: &mut Recovery,
) -> Result<()> {
    let below: Vec<u64> = (inv.dats.iter().chain(&inv.idxs))
        .copied()
        .filter(|&b| b < m.first_seq)
        .collect();
    if below.is_empty() {
        return Ok(());
    }
    for &base in &below {
        for path in [segment::idx_path(dir, base), segment::dat_path(dir, base)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
    }
    report.retention_finished = inv.dats.iter().filter(|&&b| b < m.first_seq).count();
    inv.dats.retain(|&b| b >= m.first_seq);
    inv.idxs.retain(|&b| b >= m.first_seq);
    segment::sync_dir(dir)
}

/// Refuses a directory that lacks segments the manifest says exist.
fn check_inventory(dir: &Path, m: &Manifest, inv: &Inventory) -> Result<()> {
    if let Some(&base) = inv.orphan_indexes().first() {
        let what = format!(
            "the index of segment {base} is here but its .dat is missing: its events are lost \
             or were moved; restore the file, or {ADVICE}"
        );
        return Err(corrupt(&segment::idx_path(dir, base), 0, &what));
    }
    let mpath = manifest::path(dir);
    let Some((&first, &newest)) = inv.dats.first().zip(inv.dats.last()) else {
        let what = format!(
            "the manifest says the log holds seq {} onwards, but no segment is left; {ADVICE}",
            m.first_seq
        );
        return Err(corrupt(&mpath, 0, &what));
    };
    if first > m.first_seq && !m.accepts_gap(m.first_seq, first) {
        let what = format!(
            "the first segment starts at seq {first}, but the manifest says the log holds seq \
             {} onwards: segments before it are missing; {ADVICE}",
            m.first_seq
        );
        return Err(corrupt(&segment::dat_path(dir, first), 0, &what));
    }
    if newest < m.active_base {
        let what = format!(
            "the newest segment starts at seq {newest}, but the manifest names segment {} as \
             the newest: it (and any after it) is missing; {ADVICE}",
            m.active_base
        );
        return Err(corrupt(&mpath, 0, &what));
    }
    Ok(())
}

/// Refuses two segments that do not follow each other (unless the gap was accepted).
fn check_continues(dir: &Path, m: &Manifest, base: u64, end: u64, next: u64) -> Result<()> {
    if end == next || m.accepts_gap(end, next) {
        return Ok(());
    }
    let what = if end < next {
        format!(
            "segment {base} ends at seq {end} but the next segment starts at {next}: \
             the records between are missing; {ADVICE}"
        )
    } else {
        format!("segment {base} ends at seq {end}, past the next segment's start {next}")
    };
    Err(corrupt(&segment::dat_path(dir, base), 0, &what))
}

/// A sealed segment's extent: from the last entry of its `.idx` and the record it points at
/// (a few bytes read); otherwise from a full scan, after which the index is rebuilt. A
/// sealed segment's records are never cut: damage stops the open with the file and offset.
fn sealed_meta(
    dir: &Path,
    cfg: LogConfig,
    base: u64,
    report: &mut Recovery,
) -> Result<SealedSegment> {
    let path = segment::dat_path(dir, base);
    let dat = File::open(&path).map_err(io_err("open", &path))?;
    let len = dat.metadata().map_err(io_err("stat", &path))?.len();
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES.min(usize::try_from(len).unwrap_or(0))];
    dat.read_exact_at(&mut head, 0)
        .map_err(io_err("read", &path))?;
    if let Some(meta) = meta_from_index(dir, &dat, base, len)
        && scan_header_ok(&head, cfg.shard, base)
    {
        return Ok(meta);
    }
    let s = scan::scan(&dat, len, cfg.shard, base, cfg.stride(), &mut |_, _, _| {
        true
    })
    .map_err(io_err("read", &path))?;
    match (&s.header, &s.damage) {
        (HeaderState::Valid, None) if s.records > 0 => {}
        (HeaderState::Valid, None) => {
            return Err(corrupt(
                &path,
                0,
                &format!("a sealed segment without records; {ADVICE}"),
            ));
        }
        (HeaderState::Valid, Some(d)) => {
            let what = format!("damaged record in a sealed segment: {}; {ADVICE}", d.what);
            return Err(corrupt(&path, d.offset, &what));
        }
        (HeaderState::Missing, _) => {
            return Err(corrupt(
                &path,
                0,
                &format!("sealed segment has no header; {ADVICE}"),
            ));
        }
        (HeaderState::Foreign(w) | HeaderState::Invalid(w), _) => {
            return Err(corrupt(
                &path,
                0,
                &format!("bad segment header: {w}; {ADVICE}"),
            ));
        }
    }
    // Intact records to a clean end: a tail of zeros (a roll whose truncation did not reach
    // the disk) is cut, and the index rebuilt.
    if len > s.end {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.set_len(s.end)
            .and_then(|()| f.sync_all())
            .map_err(io_err("truncate", &path))?;
    }
    let idx_path = segment::idx_path(dir, base);
    std::fs::write(&idx_path, roll::encode_entries(&s.sealed_index()))
        .and_then(|()| File::open(&idx_path)?.sync_all())
        .map_err(io_err("rebuild index", &idx_path))?;
    report.indexes_rebuilt += 1;
    let last = s.last.expect("records > 0");
    Ok(SealedSegment {
        base,
        end: last.seq + 1,
        dat_bytes: s.end,
        last_ts_ns: last.ts_ns,
    })
}

fn scan_header_ok(head: &[u8], shard: u16, base: u64) -> bool {
    segment::SegmentHeader::decode(head).is_ok_and(|h| h.shard == shard && h.base_seq == base)
}

/// The extent a sealed segment's index claims, if its last entry points at the record that
/// ends the file.
fn meta_from_index(dir: &Path, dat: &File, base: u64, dat_len: u64) -> Option<SealedSegment> {
    let idx = File::open(segment::idx_path(dir, base)).ok()?;
    let idx_len = idx.metadata().ok()?.len();
    let entry_bytes = INDEX_ENTRY_BYTES as u64;
    if idx_len == 0 || !idx_len.is_multiple_of(entry_bytes) {
        return None;
    }
    let mut raw = [0u8; INDEX_ENTRY_BYTES];
    idx.read_exact_at(&mut raw, idx_len - entry_bytes).ok()?;
    let last = IndexEntry::decode(&raw).filter(|e| e.seq >= base)?;
    if last.offset.checked_add(u64::from(last.len))? != dat_len {
        return None;
    }
    let mut record = vec![0u8; usize::try_from(last.len).ok()?];
    dat.read_exact_at(&mut record, last.offset).ok()?;
    let header = record::decode(&record).ok().filter(|h| h.seq == last.seq)?;
    Some(SealedSegment {
        base,
        end: last.seq.checked_add(1)?,
        dat_bytes: dat_len,
        last_ts_ns: header.ts_ns,
    })
}

/// Scans the last segment and cuts a torn tail, or refuses damage to acknowledged records.
fn scan_last(
    dir: &Path,
    cfg: LogConfig,
    m: &Manifest,
    base: u64,
    report: &mut Recovery,
) -> Result<Scan> {
    let path = segment::dat_path(dir, base);
    let dat = File::open(&path).map_err(io_err("open", &path))?;
    let len = dat.metadata().map_err(io_err("stat", &path))?.len();
    let mut s = scan::scan(&dat, len, cfg.shard, base, cfg.stride(), &mut |_, _, _| {
        true
    })
    .map_err(io_err("read", &path))?;
    if let HeaderState::Foreign(w) = &s.header {
        return Err(corrupt(
            &path,
            0,
            &format!("bad segment header: {w}; {ADVICE}"),
        ));
    }
    let acked = [
        s.committed_end,
        s.damage.as_ref().and_then(|d| d.later.committed_end),
        m.clean_end,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(base);
    if s.header != HeaderState::Valid && !s.is_blank() {
        // The header goes out with the first batch: if it is not intact, that write tore,
        // and nothing of this segment was acknowledged, unless something says otherwise.
        if acked > base {
            let what = format!(
                "bad segment header, but records up to seq {} were acknowledged; {ADVICE}",
                acked - 1
            );
            return Err(corrupt(&path, 0, &what));
        }
        cut_tail(&path, &dat, 0, report)?;
        return scan::scan(&[][..], 0, cfg.shard, base, cfg.stride(), &mut |_, _, _| {
            true
        })
        .map_err(io_err("read", &path));
    }
    if let Some(d) = s.damage.take() {
        let damaged = base + s.records;
        if damaged < acked {
            let what = format!(
                "{}: seq {damaged} was acknowledged (records up to seq {} were, by a later \
                 intact batch or the last clean shutdown), so this is not a torn tail; cutting \
                 here would lose acknowledged events; {ADVICE}",
                d.what,
                acked - 1
            );
            return Err(corrupt(&path, d.offset, &what));
        }
        cut_tail(&path, &dat, s.end, report)?;
    }
    Ok(s)
}

/// Cuts `.dat` at `end` (a torn tail) and makes the cut durable; reports the non-zero bytes
/// cut.
fn cut_tail(path: &Path, dat: &File, end: u64, report: &mut Recovery) -> Result<()> {
    let len = dat.metadata().map_err(io_err("stat", path))?.len();
    report.dat_bytes_cut += nonzero_extent(dat, end, len).map_err(io_err("read", path))?;
    report.torn_tail = true;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.set_len(end)
        .and_then(|()| f.sync_all())
        .map_err(io_err("truncate", path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    segment::sync_dir(dir)?;
    tracing::warn!(
        path = %path.display(),
        at = end,
        bytes_cut = report.dat_bytes_cut,
        "log recovery cut a torn tail"
    );
    Ok(())
}

/// Bytes from `from` to just after the last non-zero byte before `len`.
fn nonzero_extent(f: &File, from: u64, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut last) = (from, from);
    while at < len {
        let n = f.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last = at + i as u64 + 1;
        }
        at += n as u64;
    }
    Ok(last - from)
}

/// Positions the log's open stage after the recovered records of the active segment and
/// publishes their sparse index.
fn resume_active(log: &mut Log, dir: &Path, scan: &Scan) -> Result<()> {
    if scan.end == 0 {
        log.stage_segment_header();
        return Ok(());
    }
    let end = scan.end;
    let from = align_down_u64(end);
    let mut block = vec![0u8; BLOCK_BYTES];
    let n = usize::try_from(end - from).expect("below one block");
    let path = segment::dat_path(dir, log.active.base);
    File::open(&path)
        .and_then(|f| f.read_exact_at(&mut block[..n], from))
        .map_err(io_err("read", &path))?;
    let open = log.open;
    log.stages[open].reset_at(end, |dst| {
        dst[..n].copy_from_slice(&block[..n]);
        n
    });
    let a = &mut log.active;
    if let SegmentIndex::Live(live) = &a.handle.index {
        for e in scan.index.iter().take(live.capacity()) {
            live.set(a.entries, e.seq, e.offset, e.len);
            a.entries += 1;
        }
        live.publish(a.entries);
    }
    a.next_entry_at = scan
        .index
        .last()
        .map_or(SEGMENT_HEADER_BYTES as u64, |e| e.offset + log.cfg.stride());
    a.last_record = scan.last.map(|r| (r.seq, r.offset, r.len));
    a.handle.data_end.store(end, Ordering::Release);
    Ok(())
}
