//! Offline checks of a data dir for the `net-admin` operator tool: [`verify`] changes nothing
//! and holds every shard to the rules recovery applies, reporting each departure with its file
//! and byte offset.
//!
//! A data dir holds one directory per shard (`shard-0000`, ...), each a RedEX log (see
//! [`crate::segment`] and [`crate::manifest`]). Per shard, verify checks:
//! - the manifest is present (beside segments) and valid, and the segments are the ones it
//!   names: none missing before the newest, none above its `first_seq` missing, no `.idx`
//!   without its `.dat`, every segment starting where the one before ends (or an accepted gap);
//! - every segment with the scan recovery uses ([`crate::scan`]): its header, every record's
//!   checksum and sequence; a sealed segment ends exactly after its last record; damage in the
//!   last segment is a torn tail (which repair cuts) only if no later intact batch, and not the
//!   clean-shutdown end in the manifest, says those records were acknowledged;
//! - every sealed segment's sparse `.idx`: present, each entry's checksum, order, and that it
//!   points at the record it names; its last entry is the segment's last record.
//!
//! Files are read through bounded windows, so a segment of any size is checked in bounded
//! memory. Nothing read from disk makes [`verify`] panic: damage is data, reported as
//! [`StorageError::Corrupt`] with its file and offset.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::log::corrupt;
use crate::manifest::{self, Manifest};
use crate::record;
use crate::scan::{self, HeaderState, Scan};
use crate::segment::{self, INDEX_STRIDE_BYTES_MIN};

pub use crate::dump::{DumpOptions, DumpReport, dump};
pub use crate::repair::{
    RepairOptions, RepairOutcome, ShardRepair, lock_data_dir, repair, repair_config, repair_shard,
};

/// Prefix of a shard directory's name; the shard number follows as at least 4 digits.
pub const SHARD_DIR_PREFIX: &str = "shard-";
/// Index problems reported one by one per segment; the rest are only counted.
pub const INDEX_PROBLEMS_MAX: usize = 8;

/// One shard's directory in a data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDir {
    /// The shard number, from the directory's name.
    pub shard: u16,
    /// The directory.
    pub dir: PathBuf,
}

/// Parses a shard directory's name (`shard-0007`) into its shard number. Only the spelling the
/// engine writes counts (`shard-7` and `shard-00007` are not shard directories).
pub fn parse_shard_dir_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix(SHARD_DIR_PREFIX)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let shard: u16 = digits.parse().ok()?;
    (format!("{shard:04}") == digits).then_some(shard)
}

/// The shard directories `path` names: itself if it is one (`.../shard-0003`), else its
/// `shard-NNNN` subdirectories, by shard number. Refuses a path that is neither.
pub fn shard_dirs(path: &Path) -> Result<Vec<ShardDir>> {
    let real = std::fs::canonicalize(path).map_err(io_err("open", path))?;
    if !real.is_dir() {
        return Err(not_found(path, "not a directory"));
    }
    let own_name = real.file_name().and_then(|n| n.to_str());
    if let Some(shard) = own_name.and_then(parse_shard_dir_name) {
        let dir = path.to_path_buf();
        return Ok(vec![ShardDir { shard, dir }]);
    }
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err("list", path))? {
        let entry = entry.map_err(io_err("list", path))?;
        let name = entry.file_name();
        let Some(shard) = name.to_str().and_then(parse_shard_dir_name) else {
            continue;
        };
        if entry.path().is_dir() {
            let dir = entry.path();
            shards.push(ShardDir { shard, dir });
        }
    }
    if shards.is_empty() {
        return Err(not_found(
            path,
            "neither a shard directory (shard-NNNN) nor a data dir holding any",
        ));
    }
    shards.sort_by_key(|s| s.shard);
    Ok(shards)
}

pub(crate) fn not_found(path: &Path, what: &str) -> StorageError {
    StorageError::Io {
        op: "find shards in",
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, what.to_owned()),
    }
}

/// What [`verify`] found in one shard.
#[derive(Debug)]
pub struct ShardReport {
    /// The shard and its directory.
    pub shard: ShardDir,
    /// Segments (`.dat` files) found.
    pub segments: usize,
    /// Valid records found, in all segments.
    pub records: u64,
    /// The first sequence number stored.
    pub first_seq: u64,
    /// One past the last valid record's sequence number.
    pub end_seq: u64,
    /// Bytes of `.dat` and `.idx` files.
    pub bytes: u64,
    /// Every problem, in the order found; each names its file and byte offset.
    pub problems: Vec<StorageError>,
    /// Harmless findings (files the log does not know, leftovers opening removes, accepted
    /// losses).
    pub notes: Vec<String>,
}

impl ShardReport {
    /// Whether the shard has no problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for ShardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shard;
        write!(
            f,
            "shard {} ({}): {} segments, ",
            s.shard,
            s.dir.display(),
            self.segments
        )?;
        if self.records == 0 {
            write!(f, "no records")?;
        } else {
            let last = self.end_seq.saturating_sub(1);
            let (records, first) = (self.records, self.first_seq);
            write!(f, "{records} valid records, seq {first}..={last}")?;
        }
        match self.problems.len() {
            0 => write!(f, ", {} bytes: clean", self.bytes)?,
            1 => write!(f, ", {} bytes: 1 problem", self.bytes)?,
            n => write!(f, ", {} bytes: {n} problems", self.bytes)?,
        }
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

/// What [`verify`] found in a data dir.
#[derive(Debug)]
pub struct VerifyReport {
    /// One report per shard, by shard number.
    pub shards: Vec<ShardReport>,
}

impl VerifyReport {
    /// Whether no shard has a problem.
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(ShardReport::is_clean)
    }

    /// Every problem, shard by shard.
    pub fn problems(&self) -> impl Iterator<Item = &StorageError> {
        self.shards.iter().flat_map(|s| &s.problems)
    }

    /// Whether some file could not be read at all (as opposed to read and found damaged).
    pub fn has_io_errors(&self) -> bool {
        self.problems()
            .any(|p| matches!(p, StorageError::Io { .. }))
    }
}

/// Checks every segment of every shard `path` names (see [`shard_dirs`]); changes nothing.
/// Fails only if `path` names no shard; problems inside shards are in the report.
pub fn verify(path: &Path) -> Result<VerifyReport> {
    let shards = shard_dirs(path)?;
    let shards = shards.into_iter().map(verify_shard).collect();
    Ok(VerifyReport { shards })
}

/// Checks one shard (see the module docs).
pub fn verify_shard(shard: ShardDir) -> ShardReport {
    let mut r = ShardReport {
        shard,
        segments: 0,
        records: 0,
        first_seq: 0,
        end_seq: 0,
        bytes: 0,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    let dir = r.shard.dir.clone();
    let mut inv = match segment::inventory(&dir) {
        Ok(inv) => inv,
        Err(e) => {
            r.problems.push(e);
            return r;
        }
    };
    for stray in &inv.strays {
        r.notes
            .push(format!("{} is not a file of the log", stray.display()));
    }
    let m = check_manifest(&mut r, &dir, !inv.dats.is_empty() || !inv.idxs.is_empty());
    if let Some(m) = &m {
        let below = inv.dats.iter().filter(|&&b| b < m.first_seq).count();
        if below > 0 {
            r.notes.push(format!(
                "{below} segment(s) below the first stored seq {} (an interrupted retention \
                 sweep; opening the log removes them)",
                m.first_seq
            ));
        }
        inv.dats.retain(|&b| b >= m.first_seq);
        inv.idxs.retain(|&b| b >= m.first_seq);
        for g in &m.gaps {
            r.notes
                .push(format!("seq {}..{} were accepted as lost", g.from, g.to));
        }
    }
    for base in inv.orphan_indexes() {
        let what = "its .dat is missing: the segment's events are lost or were moved";
        r.problems
            .push(corrupt(&segment::idx_path(&dir, base), 0, what));
    }
    check_extent(&mut r, &dir, m.as_ref(), &inv.dats);
    r.segments = inv.dats.len();
    r.first_seq = inv.dats.first().copied().unwrap_or(0);
    r.end_seq = r.first_seq;
    let mut prev: Option<(u64, u64)> = None;
    for (i, &base) in inv.dats.iter().enumerate() {
        if let Some((pbase, end)) = prev
            && end != base
            && !m.as_ref().is_some_and(|m| m.accepts_gap(end, base))
        {
            let what =
                format!("segment starts at seq {base} but segment {pbase} before it ends at {end}");
            r.problems
                .push(corrupt(&segment::dat_path(&dir, base), 0, &what));
        }
        let last = i + 1 == inv.dats.len();
        prev = check_segment(&mut r, m.as_ref(), base, last).map(|end| (base, end));
    }
    if let (Some(m), Some((base, end))) = (&m, prev)
        && let Some(clean) = m.clean_end.filter(|&c| c > end)
    {
        let what = format!(
            "the log ends at seq {end}, but records up to seq {} were acknowledged at the last \
             clean shutdown",
            clean - 1
        );
        r.problems
            .push(corrupt(&segment::dat_path(&dir, base), 0, &what));
    }
    r
}

/// Reads the manifest, reporting it missing (beside segments) or unreadable.
fn check_manifest(r: &mut ShardReport, dir: &Path, has_segments: bool) -> Option<Manifest> {
    match manifest::read(dir, r.shard.shard) {
        Ok(Some(m)) => Some(m),
        Ok(None) if has_segments => {
            let what = "missing beside segments: lost segments cannot be told from never-written \
                        ones (repair --accept-data-loss rebuilds it)";
            r.problems.push(corrupt(&manifest::path(dir), 0, what));
            None
        }
        Ok(None) => None,
        Err(e) => {
            r.problems.push(e);
            None
        }
    }
}

/// Checks that the segments reach from the manifest's first seq to its newest segment.
fn check_extent(r: &mut ShardReport, dir: &Path, m: Option<&Manifest>, dats: &[u64]) {
    let Some(m) = m else {
        return;
    };
    let mpath = manifest::path(dir);
    match (dats.first(), dats.last()) {
        (Some(&first), Some(&newest)) => {
            if first > m.first_seq && !m.accepts_gap(m.first_seq, first) {
                let what = format!(
                    "the first segment starts at seq {first}, but the manifest says the log \
                     holds seq {} onwards: segments before it are missing",
                    m.first_seq
                );
                r.problems
                    .push(corrupt(&segment::dat_path(dir, first), 0, &what));
            }
            if newest < m.active_base {
                let what = format!(
                    "the newest segment starts at seq {newest}, but the manifest names segment \
                     {} as the newest: it is missing",
                    m.active_base
                );
                r.problems.push(corrupt(&mpath, 0, &what));
            }
        }
        _ => {
            let what = format!(
                "the manifest says the log holds seq {} onwards, but no segment is left",
                m.first_seq
            );
            r.problems.push(corrupt(&mpath, 0, &what));
        }
    }
}

/// Scans one segment; returns the seq after its last valid record if its records run to a
/// clean end (so the next segment's base can be checked against it).
fn check_segment(r: &mut ShardReport, m: Option<&Manifest>, base: u64, last: bool) -> Option<u64> {
    let dir = r.shard.dir.clone();
    let path = segment::dat_path(&dir, base);
    let (dat, len) = match File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f))) {
        Ok((len, f)) => (f, len),
        Err(e) => {
            r.problems.push(io_err("open", &path)(e));
            return None;
        }
    };
    r.bytes += len;
    let stride = INDEX_STRIDE_BYTES_MIN;
    let shard = r.shard.shard;
    let s = match scan::scan(&dat, len, shard, base, stride, &mut |_, _, _| true) {
        Ok(s) => s,
        Err(e) => {
            r.problems.push(io_err("read", &path)(e));
            return None;
        }
    };
    r.records += s.records;
    r.end_seq = base.saturating_add(s.records);
    let clean = check_header(r, &path, &s, last) & check_records(r, m, &path, &s, base, last);
    if !last {
        if clean && len > s.end {
            let what = format!(
                "sealed segment has {} bytes after its last record",
                len - s.end
            );
            r.problems.push(corrupt(&path, s.end, &what));
        }
        check_index(r, &dir, base, &dat, &s);
    }
    clean.then_some(base.saturating_add(s.records))
}

fn check_header(r: &mut ShardReport, path: &Path, s: &Scan, last: bool) -> bool {
    let what = match &s.header {
        HeaderState::Valid => return true,
        HeaderState::Missing if last && s.records == 0 => return true,
        HeaderState::Missing => "segment has no header (all zero)".to_string(),
        HeaderState::Foreign(w) => w.clone(),
        HeaderState::Invalid(w) => format!("bad segment header: {w}"),
    };
    r.problems.push(corrupt(path, 0, &what));
    false
}

fn check_records(
    r: &mut ShardReport,
    m: Option<&Manifest>,
    path: &Path,
    s: &Scan,
    base: u64,
    last: bool,
) -> bool {
    let Some(d) = &s.damage else {
        return true;
    };
    if d.offset == 0 {
        return false; // the header problem is reported
    }
    let damaged = base.saturating_add(s.records);
    let acked = [
        s.committed_end,
        d.later.committed_end,
        m.and_then(|m| m.clean_end),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(base);
    let what = if !last {
        format!("damaged record in a sealed segment: {}", d.what)
    } else if damaged < acked {
        format!(
            "{}: seq {damaged} was acknowledged (records up to seq {} were): not a torn tail; \
             repair refuses to cut it",
            d.what,
            acked - 1
        )
    } else {
        let cut = s.file_len.saturating_sub(d.offset);
        format!(
            "torn tail: {}; repair cuts it (the file's last {cut} bytes)",
            d.what
        )
    };
    r.problems.push(corrupt(path, d.offset, &what));
    false
}

/// Checks a sealed segment's sparse index against its records.
fn check_index(r: &mut ShardReport, dir: &Path, base: u64, dat: &File, s: &Scan) {
    let path = segment::idx_path(dir, base);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.problems.push(corrupt(
                &path,
                0,
                "index file is missing (repair rebuilds it)",
            ));
            return;
        }
        Err(e) => {
            r.problems.push(io_err("read", &path)(e));
            return;
        }
    };
    r.bytes += bytes.len() as u64;
    let mut found = 0usize;
    let mut report = |at: usize, what: String| {
        found += 1;
        if found <= INDEX_PROBLEMS_MAX {
            r.problems.push(corrupt(&path, at as u64, &what));
        }
    };
    if !bytes.len().is_multiple_of(INDEX_ENTRY_BYTES) {
        report(
            0,
            format!("{} bytes is not a whole number of entries", bytes.len()),
        );
    }
    let end = base.saturating_add(s.records);
    let mut prev: Option<IndexEntry> = None;
    for (i, raw) in bytes.chunks_exact(INDEX_ENTRY_BYTES).enumerate() {
        let at = i * INDEX_ENTRY_BYTES;
        let Some(e) = IndexEntry::decode(raw) else {
            report(at, "entry fails its checksum".into());
            continue;
        };
        if s.damage.is_some() && e.seq >= end {
            continue; // past damage in .dat (reported): nothing to check it against
        }
        if prev.is_some_and(|p| e.seq <= p.seq || e.offset <= p.offset) {
            report(at, format!("entry for seq {} is out of order", e.seq));
        } else if e.seq < base || e.seq >= end || !points_at(dat, &e) {
            report(
                at,
                format!(
                    "entry says seq {} at offset {}: no such record there",
                    e.seq, e.offset
                ),
            );
        }
        prev = Some(e);
    }
    if s.damage.is_none() && prev.is_none_or(|p| p.seq + 1 != end) {
        report(
            bytes.len(),
            format!(
                "the last entry is not the segment's last record (seq {})",
                end.saturating_sub(1)
            ),
        );
    }
    if found > INDEX_PROBLEMS_MAX {
        let more = found - INDEX_PROBLEMS_MAX;
        r.problems.push(corrupt(
            &path,
            0,
            &format!("and {more} more index problems"),
        ));
    }
}

/// Whether the record at the entry's offset is the one it names.
fn points_at(dat: &File, e: &IndexEntry) -> bool {
    let Ok(len) = usize::try_from(e.len) else {
        return false;
    };
    if len > record::record_bytes(record::RECORD_PAYLOAD_BYTES_MAX) {
        return false;
    }
    let mut buf = vec![0u8; len];
    dat.read_exact_at(&mut buf, e.offset).is_ok()
        && record::decode(&buf).is_ok_and(|h| h.seq == e.seq && h.record_bytes() == len)
}
