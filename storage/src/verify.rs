//! Offline checks of a data dir for the `net-admin` operator tool: verify every segment, dump
//! records as JSON lines, and repair each shard's tail through [`Log::open`].
//!
//! A data dir holds one directory per shard (`shard-0000`, ...), each a RedEX log (see
//! [`crate::segment`]). [`verify`] changes nothing; it holds every segment to the rules recovery
//! applies to the last one, and reports each departure with its file and byte offset: a bad
//! header, a record that fails its checksum or breaks the sequence (contiguous from the
//! segment's base, and from one segment to the next), an `.idx` entry that disagrees with its
//! record. A sealed segment ends exactly after its last record (a roll truncates and syncs it);
//! the last segment may end in zero bytes (the padded block of a writer that crashed, which
//! recovery cuts), and anything else there is a torn tail. An `.idx` without its `.dat` (an
//! interrupted retention sweep) is noted, not counted as damage: opening the log removes it.
//!
//! Files are streamed, never read whole, so a segment of any size is checked in bounded memory
//! (one record of at most [`RECORD_PAYLOAD_BYTES_MAX`] plus a read buffer), and the checks take
//! any [`Read`] so that the unit tests below feed them bytes. Nothing read from disk makes
//! [`verify`] or [`dump`] panic: damage is data, reported as [`StorageError::Corrupt`] with its
//! file and offset. [`repair`] is [`Log::open`] and [`Log::close`], with their behaviour.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::log::{Log, LogConfig, corrupt};
use crate::record::{
    self, DecodeError, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, RecordHeader,
};
use crate::recovery::Recovery;
use crate::segment::{self, SEGMENT_HEADER_BYTES, SegmentHeader};

/// Prefix of a shard directory's name; the shard number follows as at least 4 digits.
pub const SHARD_DIR_PREFIX: &str = "shard-";
/// Index disagreements reported one by one per segment; the rest are only counted.
pub const INDEX_PROBLEMS_MAX: usize = 8;
/// Read buffer for streaming segment files.
const READ_BUF_BYTES: usize = 256 << 10;
/// [`repair`] appends nothing, so its log's sizing only sizes the stages it allocates.
const REPAIR_SEGMENT_BYTES: u64 = 1 << 40;
const REPAIR_BATCH_BYTES_MAX: usize = 4 << 20;
const REPAIR_BATCH_EVENTS_MAX: usize = 32768;

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

fn not_found(path: &Path, what: &str) -> StorageError {
    StorageError::Io {
        op: "find shards in",
        path: path.into(),
        source: io::Error::new(io::ErrorKind::NotFound, what.to_owned()),
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
    /// Base of the first segment.
    pub first_seq: u64,
    /// One past the last valid record's sequence number.
    pub end_seq: u64,
    /// Bytes of `.dat` and `.idx` files.
    pub bytes: u64,
    /// Every problem, in the order found; each names its file and byte offset.
    pub problems: Vec<StorageError>,
    /// `.idx` files without their `.dat`: harmless leftovers that opening the log removes.
    pub orphan_indexes: Vec<PathBuf>,
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
        for path in &self.orphan_indexes {
            let why = "left by an interrupted retention sweep; opening the log removes it";
            write!(f, "\n  note: {} has no .dat ({why})", path.display())?;
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

/// Checks every segment of one shard, and that each starts where the one before it ends.
pub fn verify_shard(shard: ShardDir) -> ShardReport {
    let mut report = ShardReport {
        shard,
        segments: 0,
        records: 0,
        first_seq: 0,
        end_seq: 0,
        bytes: 0,
        problems: Vec::new(),
        orphan_indexes: Vec::new(),
    };
    let bases = match segment::list_segments(&report.shard.dir) {
        Ok(bases) => bases,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.orphan_indexes = orphan_indexes(&report.shard.dir, &bases);
    report.segments = bases.len();
    report.first_seq = bases.first().copied().unwrap_or(0);
    report.end_seq = report.first_seq;
    let mut expected: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        if let Some(end) = expected.filter(|&end| end != base) {
            let path = segment::dat_path(&report.shard.dir, base);
            let what = format!("segment starts at seq {base} but the one before it ends at {end}");
            report.problems.push(corrupt(&path, 0, &what));
        }
        let last = i + 1 == bases.len();
        let complete = verify_segment(&mut report, base, last);
        expected = complete.map(|records| base.saturating_add(records));
    }
    report
}

/// Lists `.idx` files whose `.dat` is gone: a retention sweep interrupted between its two
/// unlinks leaves them, and opening the log removes them, so they are noted, not damage.
fn orphan_indexes(dir: &Path, bases: &[u64]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new(); // listing the segments already reported it
    };
    let mut orphans: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let base = name.to_str().and_then(|n| segment::parse_name(n, ".idx"));
            base.is_some_and(|b| bases.binary_search(&b).is_err())
        })
        .map(|entry| entry.path())
        .collect();
    orphans.sort();
    orphans
}

/// Opens and checks one segment's files; returns its record count if its records run to a
/// clean end (so the next segment's base can be checked against it).
fn verify_segment(report: &mut ShardReport, base: u64, last: bool) -> Option<u64> {
    let dir = &report.shard.dir;
    let (dat_path, idx_path) = (segment::dat_path(dir, base), segment::idx_path(dir, base));
    let problems = &mut report.problems;
    let opened = File::open(&dat_path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (dat_bytes, dat) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            problems.push(io_err("open", &dat_path)(e));
            return None;
        }
    };
    let idx = match File::open(&idx_path).and_then(|f| Ok((f.metadata()?.len(), f))) {
        Ok((len, f)) => {
            report.bytes += len;
            Some(BufReader::with_capacity(READ_BUF_BYTES, f))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            problems.push(corrupt(&idx_path, 0, "index file is missing"));
            None
        }
        Err(e) => {
            problems.push(io_err("open", &idx_path)(e));
            None
        }
    };
    report.bytes += dat_bytes;
    let ctx = SegmentCtx {
        shard: report.shard.shard,
        base,
        last,
        dat_path: &dat_path,
        idx_path: &idx_path,
        dat_bytes,
    };
    let dat = BufReader::with_capacity(READ_BUF_BYTES, dat);
    match check_segment(&ctx, dat, idx, problems) {
        Ok(scan) => {
            report.records += scan.records;
            report.end_seq = base.saturating_add(scan.records);
            scan.complete.then_some(scan.records)
        }
        Err(e) => {
            problems.push(e);
            None
        }
    }
}

/// Where a segment belongs: what its files must agree with.
#[derive(Debug, Clone, Copy)]
struct SegmentCtx<'a> {
    shard: u16,
    base: u64,
    /// The shard's last segment (the active one when the log is open).
    last: bool,
    dat_path: &'a Path,
    idx_path: &'a Path,
    dat_bytes: u64,
}

/// The outcome of checking one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentScan {
    /// Valid, in-sequence records before the clean end or the first damage.
    records: u64,
    /// Whether the records ran to a clean end (no damaged record, header present).
    complete: bool,
}

/// What a segment's header block says about the rest of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderState {
    /// Records follow the header (which may itself be damaged: framing does not need it).
    Records,
    /// All zero or no bytes: the segment was created but never written.
    Empty,
    /// Too short to hold records: nothing more to check.
    Headless,
}

/// Checks one segment: header, records, the bytes after them, and its index if it has one.
/// Problems go to `problems`; an error means a file could not be read.
fn check_segment<D: Read, I: Read>(
    ctx: &SegmentCtx<'_>,
    dat: D,
    idx: Option<I>,
    problems: &mut Vec<StorageError>,
) -> Result<SegmentScan> {
    let mut walker = Walker::new(dat);
    let mut idx = idx.map(IndexCursor::new);
    let scan = match check_header(ctx, &mut walker, problems)? {
        HeaderState::Headless => SegmentScan {
            records: 0,
            complete: false,
        },
        HeaderState::Empty => SegmentScan {
            records: 0,
            complete: true,
        },
        HeaderState::Records => scan_records(ctx, &mut walker, idx.as_mut(), problems)?,
    };
    if scan.complete {
        check_dat_tail(ctx, &mut walker, problems)?;
    }
    if let Some(idx) = idx {
        idx.finish(ctx, scan, problems)?;
    }
    Ok(scan)
}

fn check_header<R: Read>(
    ctx: &SegmentCtx<'_>,
    walker: &mut Walker<R>,
    problems: &mut Vec<StorageError>,
) -> Result<HeaderState> {
    let block = walker
        .read_block(SEGMENT_HEADER_BYTES)
        .map_err(io_err("read", ctx.dat_path))?;
    let problem = |what: String| corrupt(ctx.dat_path, 0, &what);
    if block.iter().all(|&b| b == 0) {
        if ctx.last {
            return Ok(HeaderState::Empty);
        }
        let what = format!("sealed segment has no header ({} zero bytes)", block.len());
        problems.push(problem(what));
        return Ok(HeaderState::Headless);
    }
    let short = block.len() < SEGMENT_HEADER_BYTES;
    match SegmentHeader::decode(block) {
        Err(what) if short && ctx.last => {
            problems.push(problem(format!(
                "torn tail: {what}; repair empties the segment"
            )));
        }
        Err(what) => problems.push(problem(format!("bad segment header: {what}"))),
        Ok(h) if h.shard != ctx.shard || h.base_seq != ctx.base => {
            let (shard, base) = (ctx.shard, ctx.base);
            let what = format!(
                "header says shard {} base {}, but the file belongs to shard {shard} base {base}",
                h.shard, h.base_seq
            );
            problems.push(problem(what));
        }
        Ok(_) => {}
    }
    if short {
        return Ok(HeaderState::Headless);
    }
    walker.skip_header();
    Ok(HeaderState::Records)
}

/// Walks the records after the header, checking the sequence and each index entry.
fn scan_records<D: Read, I: Read>(
    ctx: &SegmentCtx<'_>,
    walker: &mut Walker<D>,
    mut idx: Option<&mut IndexCursor<I>>,
    problems: &mut Vec<StorageError>,
) -> Result<SegmentScan> {
    let mut records = 0u64;
    loop {
        let at = walker.pos;
        let step = walker.next().map_err(io_err("read", ctx.dat_path))?;
        let what = match step {
            Step::End => {
                let complete = true;
                return Ok(SegmentScan { records, complete });
            }
            Step::Damaged(what) => what,
            Step::Record(h) if Some(h.seq) != ctx.base.checked_add(records) => {
                let expected = ctx.base.saturating_add(records);
                format!("record has seq {} where seq {expected} belongs", h.seq)
            }
            Step::Record(h) => {
                if let Some(idx) = idx.as_deref_mut() {
                    idx.check(ctx, records, at, &h, problems)?;
                }
                records += 1;
                continue;
            }
        };
        problems.push(damage(ctx, at, &what));
        let complete = false;
        return Ok(SegmentScan { records, complete });
    }
}

/// A damaged record: the last segment's is a torn tail that recovery cuts; a sealed segment's
/// loses every record after it.
fn damage(ctx: &SegmentCtx<'_>, at: u64, what: &str) -> StorageError {
    let what = if ctx.last {
        let cut = ctx.dat_bytes.saturating_sub(at);
        format!("torn tail: {what}; repair cuts the {cut} bytes from here")
    } else {
        format!("damaged record in a sealed segment: {what}")
    };
    corrupt(ctx.dat_path, at, &what)
}

/// After the clean end: the last segment may hold zero padding, a sealed one nothing.
fn check_dat_tail<R: Read>(
    ctx: &SegmentCtx<'_>,
    walker: &mut Walker<R>,
    problems: &mut Vec<StorageError>,
) -> Result<()> {
    let end = walker.pos;
    let rest = walker.rest().map_err(io_err("read", ctx.dat_path))?;
    let bytes = rest.bytes;
    match (ctx.last, rest.first_nonzero) {
        (true, None) => {}
        (true, Some(at)) => {
            let what = format!(
                "torn tail: non-zero bytes after the clean end at byte {end}; \
                 repair cuts the {bytes} bytes from there"
            );
            problems.push(corrupt(ctx.dat_path, at, &what));
        }
        (false, _) if bytes == 0 => {}
        (false, nonzero) => {
            let kind = match nonzero {
                Some(at) => format!("first non-zero at byte {at}"),
                None => "all zero".to_owned(),
            };
            let what = format!("sealed segment has {bytes} bytes after its last record ({kind})");
            problems.push(corrupt(ctx.dat_path, end, &what));
        }
    }
    Ok(())
}

/// Reads a segment's `.idx` in step with its records.
#[derive(Debug)]
struct IndexCursor<R> {
    src: R,
    /// Set when the index ended early: (entries it holds, bytes of the partial entry).
    short: Option<(u64, usize)>,
    disagreements: u64,
}

impl<R: Read> IndexCursor<R> {
    fn new(src: R) -> Self {
        IndexCursor {
            src,
            short: None,
            disagreements: 0,
        }
    }

    /// Checks the entry of record number `i`, found at byte `at` of `.dat`.
    fn check(
        &mut self,
        ctx: &SegmentCtx<'_>,
        i: u64,
        at: u64,
        h: &RecordHeader,
        problems: &mut Vec<StorageError>,
    ) -> Result<()> {
        if self.short.is_some() {
            return Ok(());
        }
        let mut buf = [0u8; INDEX_ENTRY_BYTES];
        let n = read_full(&mut self.src, &mut buf).map_err(io_err("read", ctx.idx_path))?;
        if n < INDEX_ENTRY_BYTES {
            self.short = Some((i, n));
            return Ok(());
        }
        let len = u32::try_from(h.record_bytes()).unwrap_or(u32::MAX);
        let what = match IndexEntry::decode(&buf) {
            Some(e)
                if e == (IndexEntry {
                    seq: h.seq,
                    offset: at,
                    len,
                }) =>
            {
                return Ok(());
            }
            Some(e) => format!(
                "entry for seq {} says seq {} at offset {} ({} bytes); \
                 .dat has it at offset {at} ({len} bytes)",
                h.seq, e.seq, e.offset, e.len
            ),
            None => format!("entry for seq {} fails its checksum", h.seq),
        };
        self.disagreements += 1;
        if self.disagreements <= INDEX_PROBLEMS_MAX as u64 {
            let offset = i.saturating_mul(INDEX_ENTRY_BYTES as u64);
            problems.push(corrupt(ctx.idx_path, offset, &what));
        }
        Ok(())
    }

    /// Reports what `check` only counted, an index shorter than `.dat`, and, when the records
    /// ran to a clean end, an index longer than `.dat` (zero padding is allowed in the last
    /// segment, as in `.dat`).
    fn finish(
        mut self,
        ctx: &SegmentCtx<'_>,
        scan: SegmentScan,
        problems: &mut Vec<StorageError>,
    ) -> Result<()> {
        let entry_at = |i: u64| i.saturating_mul(INDEX_ENTRY_BYTES as u64);
        let records = scan.records;
        if self.disagreements > INDEX_PROBLEMS_MAX as u64 {
            let more = self.disagreements - INDEX_PROBLEMS_MAX as u64;
            let what = format!("and {more} more entries that disagree with .dat");
            problems.push(corrupt(ctx.idx_path, 0, &what));
        }
        if let Some((entries, partial)) = self.short {
            let what =
                format!("index ends after {entries} entries (+{partial} bytes); .dat has more");
            problems.push(corrupt(ctx.idx_path, entry_at(entries), &what));
            return Ok(());
        }
        if !scan.complete {
            return Ok(()); // entries past damage in .dat are expected; the damage is reported
        }
        let rest = scan_rest(&mut self.src).map_err(io_err("read", ctx.idx_path))?;
        if rest.bytes == 0 || (ctx.last && rest.first_nonzero.is_none()) {
            return Ok(());
        }
        let at = entry_at(records).saturating_add(rest.first_nonzero.unwrap_or(0));
        let what = format!(
            "index has {} bytes after its {records} entries (one per record of .dat)",
            rest.bytes
        );
        problems.push(corrupt(ctx.idx_path, at, &what));
        Ok(())
    }
}

/// What is left of a file after some point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rest {
    bytes: u64,
    first_nonzero: Option<u64>,
}

/// One step of walking a `.dat` file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A record whose checksum holds; its payload is [`Walker::payload`].
    Record(RecordHeader),
    /// An all-zero record header, or the end of the file: the clean end of the records.
    End,
    /// Bytes that are not a record, and why.
    Damaged(String),
}

/// Reads a `.dat` stream record by record: the I/O half of checking a segment; the record
/// codec does the format half. Holds at most one record in memory.
#[derive(Debug)]
struct Walker<R> {
    src: R,
    /// File offset of the next record.
    pos: u64,
    /// File offset of the next byte `src` yields (bytes in between are in `buf`).
    read_to: u64,
    buf: Vec<u8>,
}

impl<R: Read> Walker<R> {
    fn new(src: R) -> Self {
        Walker {
            src,
            pos: 0,
            read_to: 0,
            buf: Vec::new(),
        }
    }

    /// Reads up to `len` bytes (fewer only at the end of the file).
    fn read_block(&mut self, len: usize) -> io::Result<&[u8]> {
        self.buf.resize(len, 0);
        let n = read_full(&mut self.src, &mut self.buf)?;
        self.read_to += n as u64;
        Ok(&self.buf[..n])
    }

    /// Records start after the header block just read.
    fn skip_header(&mut self) {
        self.pos = SEGMENT_HEADER_BYTES as u64;
    }

    fn next(&mut self) -> io::Result<Step> {
        let head = self.read_block(RECORD_HEADER_BYTES)?;
        let n = head.len();
        if head.iter().all(|&b| b == 0) {
            return Ok(Step::End);
        }
        if n < RECORD_HEADER_BYTES {
            let what = format!("record header cut short: {n} of {RECORD_HEADER_BYTES} bytes");
            return Ok(Step::Damaged(what));
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let Some(payload_bytes) = usize::try_from(len)
            .ok()
            .filter(|&p| p <= RECORD_PAYLOAD_BYTES_MAX)
        else {
            let what = format!("length {len} is over the maximum {RECORD_PAYLOAD_BYTES_MAX}");
            return Ok(Step::Damaged(what));
        };
        self.buf.resize(RECORD_HEADER_BYTES + payload_bytes, 0);
        let got = read_full(&mut self.src, &mut self.buf[RECORD_HEADER_BYTES..])?;
        self.read_to += got as u64;
        if got < payload_bytes {
            let what = format!("record of {payload_bytes} payload bytes cut short after {got}");
            return Ok(Step::Damaged(what));
        }
        Ok(match record::decode(&self.buf) {
            Ok(h) => {
                self.pos += h.record_bytes() as u64;
                Step::Record(h)
            }
            Err(DecodeError::Checksum { stored, computed }) => Step::Damaged(format!(
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            )),
            Err(e) => Step::Damaged(format!("not a record: {e:?}")),
        })
    }

    /// The payload of the record `next` returned last.
    fn payload(&self) -> &[u8] {
        self.buf.get(RECORD_HEADER_BYTES..).unwrap_or_default()
    }

    /// Consumes the rest of the file after the clean end at `pos` (the bytes read past `pos`
    /// so far are known to be zero).
    fn rest(&mut self) -> io::Result<Rest> {
        let tail = scan_rest(&mut self.src)?;
        let read_past = self.read_to.saturating_sub(self.pos);
        Ok(Rest {
            bytes: read_past + tail.bytes,
            first_nonzero: tail.first_nonzero.map(|at| self.read_to + at),
        })
    }
}

/// Reads `src` to its end; offsets are relative to where it stood.
fn scan_rest(src: &mut impl Read) -> io::Result<Rest> {
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut rest = Rest::default();
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(rest),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let (None, Some(i)) = (rest.first_nonzero, buf[..n].iter().position(|&b| b != 0)) {
            rest.first_nonzero = Some(rest.bytes + i as u64);
        }
        rest.bytes += n as u64;
    }
}

/// Fills `buf` from `src`; fewer bytes only at the end of the stream.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Which records [`dump`] prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// Only this shard.
    pub shard: Option<u16>,
    /// Skip records with a lower sequence number (in every shard).
    pub from_seq: u64,
    /// Print at most this many records in all.
    pub limit: Option<u64>,
}

/// What [`dump`] printed and what stopped it.
#[derive(Debug, Default)]
pub struct DumpReport {
    /// Records printed.
    pub records: u64,
    /// One problem per shard whose output it ended early.
    pub problems: Vec<StorageError>,
}

impl DumpReport {
    fn limit_reached(&self, opts: &DumpOptions) -> bool {
        opts.limit.is_some_and(|limit| self.records >= limit)
    }
}

/// Prints the records of the shards `path` names, in (shard, seq) order, one JSON object per
/// line: `{"shard":S,"seq":N,"ts":T,"len":L,"payload_b64":"..."}` (standard base64). Reads
/// the `.dat` files directly and verifies every record it passes; damage ends that shard's
/// output and is reported. Fails if `path` names no such shard or `out` fails.
pub fn dump(path: &Path, opts: &DumpOptions, out: &mut dyn Write) -> Result<DumpReport> {
    let mut shards = shard_dirs(path)?;
    if let Some(shard) = opts.shard {
        shards.retain(|s| s.shard == shard);
        if shards.is_empty() {
            return Err(not_found(
                path,
                &format!("no {SHARD_DIR_PREFIX}{shard:04} here"),
            ));
        }
    }
    let mut report = DumpReport::default();
    let mut lines = JsonLines {
        out,
        b64: String::new(),
    };
    for shard in &shards {
        if report.limit_reached(opts) {
            break;
        }
        dump_shard(shard, opts, &mut report, &mut lines)?;
    }
    lines.out.flush().map_err(output_err)?;
    Ok(report)
}

/// Why dumping a shard stopped early.
enum Stop {
    /// A segment is damaged or unreadable: reported, and the next shard is dumped.
    Damage(StorageError),
    /// The output failed: everything stops.
    Output(io::Error),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Stop {
        Stop::Damage(e)
    }
}

fn output_err(source: io::Error) -> StorageError {
    StorageError::Io {
        op: "write dump to",
        path: PathBuf::from("the output"),
        source,
    }
}

fn dump_shard(
    shard: &ShardDir,
    opts: &DumpOptions,
    report: &mut DumpReport,
    lines: &mut JsonLines<'_>,
) -> Result<()> {
    let bases = match segment::list_segments(&shard.dir) {
        Ok(bases) => bases,
        Err(e) => {
            report.problems.push(e);
            return Ok(());
        }
    };
    // Start at the segment holding `from_seq`; earlier ones hold only lower sequence numbers.
    let first = bases
        .partition_point(|&b| b <= opts.from_seq)
        .saturating_sub(1);
    let mut next_seq = None;
    for &base in bases.get(first..).unwrap_or_default() {
        if report.limit_reached(opts) {
            return Ok(());
        }
        let seq = next_seq.unwrap_or(base);
        match dump_segment(shard, base, seq, opts, report, lines) {
            Ok(end) => next_seq = Some(end),
            Err(Stop::Damage(e)) => {
                report.problems.push(e);
                return Ok(());
            }
            Err(Stop::Output(e)) => return Err(output_err(e)),
        }
    }
    Ok(())
}

/// Dumps one segment whose first record must be `seq`; returns the sequence number after its
/// last record.
fn dump_segment(
    shard: &ShardDir,
    base: u64,
    mut seq: u64,
    opts: &DumpOptions,
    report: &mut DumpReport,
    lines: &mut JsonLines<'_>,
) -> std::result::Result<u64, Stop> {
    let path = segment::dat_path(&shard.dir, base);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let mut walker = Walker::new(BufReader::with_capacity(READ_BUF_BYTES, file));
    let block = walker
        .read_block(SEGMENT_HEADER_BYTES)
        .map_err(io_err("read", &path))?;
    if block.iter().all(|&b| b == 0) {
        return Ok(seq); // created but never written: no records
    }
    let header = SegmentHeader::decode(block)
        .map_err(|what| corrupt(&path, 0, &format!("bad segment header: {what}")))?;
    if header.shard != shard.shard || header.base_seq != base || base != seq {
        let what = format!(
            "header says shard {} base {}; expected shard {} base {seq}",
            header.shard, header.base_seq, shard.shard
        );
        return Err(corrupt(&path, 0, &what).into());
    }
    walker.skip_header();
    while !report.limit_reached(opts) {
        let at = walker.pos;
        match walker.next().map_err(io_err("read", &path))? {
            Step::End => break,
            Step::Damaged(what) => return Err(corrupt(&path, at, &what).into()),
            Step::Record(h) if h.seq != seq => {
                let what = format!("record has seq {} where seq {seq} belongs", h.seq);
                return Err(corrupt(&path, at, &what).into());
            }
            Step::Record(h) => {
                if seq >= opts.from_seq {
                    let payload = walker.payload();
                    lines
                        .record(shard.shard, &h, payload)
                        .map_err(Stop::Output)?;
                    report.records += 1;
                }
                seq = seq.saturating_add(1);
            }
        }
    }
    Ok(seq)
}

/// Writes records as JSON lines, reusing one base64 buffer.
struct JsonLines<'a> {
    out: &'a mut dyn Write,
    b64: String,
}

impl JsonLines<'_> {
    fn record(&mut self, shard: u16, h: &RecordHeader, payload: &[u8]) -> io::Result<()> {
        self.b64.clear();
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut self.b64);
        // Every value is a number or base64 text, so nothing needs JSON escaping.
        writeln!(
            self.out,
            r#"{{"shard":{shard},"seq":{},"ts":{},"len":{},"payload_b64":"{}"}}"#,
            h.seq, h.ts_ns, h.len, self.b64
        )
    }
}

/// What [`repair`] did to one shard.
#[derive(Debug)]
pub struct ShardRepair {
    /// The shard and its directory.
    pub shard: ShardDir,
    /// What happened.
    pub outcome: RepairOutcome,
}

/// The outcome of repairing one shard.
#[derive(Debug)]
pub enum RepairOutcome {
    /// The directory holds no segment; it was left alone (opening it would create one).
    NoSegments,
    /// The log opened: what recovery found and changed.
    Recovered(Recovery),
    /// The log could not be opened or closed (damage recovery does not repair, or I/O).
    Failed(StorageError),
}

impl fmt::Display for ShardRepair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shard;
        write!(f, "shard {} ({}): ", s.shard, s.dir.display())?;
        let r = match &self.outcome {
            RepairOutcome::NoSegments => return write!(f, "no segments, left alone"),
            RepairOutcome::Failed(e) => return write!(f, "not repaired: {e}"),
            RepairOutcome::Recovered(r) => r,
        };
        if r.repaired() {
            let yes_no = |b| if b { "yes" } else { "no" };
            write!(
                f,
                "repaired: cut {} bytes from the last .dat (torn record: {}), index rebuilt: {}",
                r.dat_bytes_cut,
                yes_no(r.torn_tail),
                yes_no(r.index_rebuilt)
            )?;
        } else {
            write!(f, "nothing to repair")?;
        }
        write!(f, "; {} segments, next seq {}", r.segments, r.next_seq)
    }
}

/// The sizing [`repair`] opens a shard's log with.
pub fn repair_config(shard: u16) -> LogConfig {
    LogConfig {
        shard,
        segment_bytes: REPAIR_SEGMENT_BYTES,
        batch_bytes_max: REPAIR_BATCH_BYTES_MAX,
        batch_events_max: REPAIR_BATCH_EVENTS_MAX,
    }
}

/// Opens and closes the log of every shard `path` names, so that recovery cuts torn tails and
/// rebuilds disagreeing indexes, and reports what changed. Creates no directory and leaves
/// shards without segments alone. Fails only if `path` names no shard.
///
/// Takes the data dir's lock first (see [`lock_data_dir`]): a running bus makes it fail with
/// [`StorageError::Locked`] instead of two writers touching the same logs.
pub fn repair(path: &Path) -> Result<Vec<ShardRepair>> {
    let shards = shard_dirs(path)?;
    let _lock = lock_data_dir(path)?;
    Ok(shards.into_iter().map(repair_shard).collect())
}

/// Takes the lock of the data dir `path` names: `path` itself, or its parent when `path` is
/// one shard's directory. Tools that change a data dir (`repair`, `compact`) hold it while
/// they work; `verify` and `dump` read without it.
pub fn lock_data_dir(path: &Path) -> Result<crate::DirLock> {
    let real = std::fs::canonicalize(path).map_err(io_err("open", path))?;
    let is_shard = (real.file_name().and_then(|n| n.to_str()))
        .is_some_and(|n| parse_shard_dir_name(n).is_some());
    match real.parent() {
        Some(parent) if is_shard => crate::DirLock::acquire(parent),
        _ => crate::DirLock::acquire(&real),
    }
}

/// Opens and closes one shard's log; see [`repair`].
pub fn repair_shard(shard: ShardDir) -> ShardRepair {
    let outcome = match segment::list_segments(&shard.dir) {
        Err(e) => RepairOutcome::Failed(e),
        Ok(bases) if bases.is_empty() => RepairOutcome::NoSegments,
        Ok(_) => {
            let opened = Log::open(&shard.dir, repair_config(shard.shard));
            match opened.and_then(|(log, recovery)| log.close().map(|_| recovery)) {
                Ok(recovery) => RepairOutcome::Recovered(recovery),
                Err(e) => RepairOutcome::Failed(e),
            }
        }
    };
    ShardRepair { shard, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 100;

    /// A segment of `n` records (payload `i` is `i` bytes of `i`) and its index.
    fn segment_bytes(shard: u16, n: u64) -> (Vec<u8>, Vec<u8>) {
        let mut dat = vec![0u8; SEGMENT_HEADER_BYTES];
        SegmentHeader {
            shard,
            base_seq: BASE,
        }
        .encode(&mut dat);
        let mut idx = Vec::new();
        for i in 0..n {
            let payload = vec![u8::try_from(i % 256).unwrap(); usize::try_from(i).unwrap()];
            let at = dat.len();
            dat.resize(at + record::record_bytes(payload.len()), 0);
            let len = record::encode(&mut dat[at..], BASE + i, 7, &payload);
            let mut e = [0u8; INDEX_ENTRY_BYTES];
            let (offset, len) = (at as u64, u32::try_from(len).unwrap());
            IndexEntry {
                seq: BASE + i,
                offset,
                len,
            }
            .encode(&mut e);
            idx.extend_from_slice(&e);
        }
        (dat, idx)
    }

    fn check(dat: &[u8], idx: &[u8], last: bool) -> (SegmentScan, Vec<String>) {
        let ctx = SegmentCtx {
            shard: 1,
            base: BASE,
            last,
            dat_path: Path::new("s.dat"),
            idx_path: Path::new("s.idx"),
            dat_bytes: dat.len() as u64,
        };
        let mut problems = Vec::new();
        let scan = check_segment(&ctx, dat, Some(idx), &mut problems).unwrap();
        (scan, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_clean_segment_and_zero_padding_in_the_last_one_pass() {
        let (mut dat, mut idx) = segment_bytes(1, 20);
        let (scan, problems) = check(&dat, &idx, false);
        assert_eq!((scan.records, scan.complete), (20, true));
        assert!(problems.is_empty(), "{problems:?}");
        dat.resize(dat.len() + 4000, 0);
        idx.resize(idx.len() + 100, 0);
        assert!(check(&dat, &idx, true).1.is_empty());
        let sealed = check(&dat, &idx, false).1;
        assert!(
            sealed[0].contains("4000 bytes after its last record"),
            "{sealed:?}"
        );
        assert!(sealed[1].contains("index has 100 bytes"), "{sealed:?}");
    }

    #[test]
    fn a_torn_last_record_is_reported_at_its_offset() {
        let (dat, idx) = segment_bytes(1, 10);
        let cut = dat.len() - 3;
        let at = u64::try_from(cut + 3 - record::record_bytes(9)).unwrap();
        let (scan, problems) = check(&dat[..cut], &idx, true);
        assert_eq!((scan.records, scan.complete), (9, false));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(&format!("at byte {at}: torn tail")),
            "{problems:?}"
        );
    }

    #[test]
    fn wrong_shard_out_of_sequence_and_index_damage_are_named() {
        let (mut dat, mut idx) = segment_bytes(2, 10);
        idx[3 * INDEX_ENTRY_BYTES + 9] ^= 1;
        let (_, problems) = check(&dat, &idx, false);
        assert!(
            problems[0].contains("belongs to shard 1 base 100"),
            "{problems:?}"
        );
        assert!(problems[1].contains("s.idx at byte 72: entry for seq 103 fails"));
        let second = SEGMENT_HEADER_BYTES + record::record_bytes(0);
        record::encode(&mut dat[second..], 555, 7, &[1]);
        let (scan, problems) = check(&dat, &idx, false);
        assert_eq!(scan.records, 1);
        assert!(problems.last().unwrap().contains("seq 555 where seq 101"));
    }

    #[test]
    fn an_empty_last_segment_is_clean_and_a_short_index_is_reported() {
        assert!(check(&[], &[], true).1.is_empty());
        assert!(check(&[0; 4096], &[0; 24], true).1.is_empty());
        assert!(check(&[0; 100], &[], false).1[0].contains("no header"));
        let (dat, idx) = segment_bytes(1, 5);
        let problems = check(&dat, &idx[..50], false).1;
        assert!(problems[0].contains("index ends after 2 entries (+2 bytes)"));
    }

    #[test]
    fn garbage_lengths_never_allocate_past_the_record_maximum() {
        let mut dat = segment_bytes(1, 0).0;
        dat.extend_from_slice(&[0xff; 64]);
        let problems = check(&dat, &[], true).1;
        assert!(problems[0].contains("over the maximum"), "{problems:?}");
    }
}
