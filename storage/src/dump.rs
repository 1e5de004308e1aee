//! `net-admin dump`: every record of a data dir as one JSON object per line, read straight
//! from the segment files with the scan recovery uses (so a record dump prints is one the log
//! would serve), without opening the logs or taking the data dir's lock.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Result, StorageError, io_err};
use crate::log::corrupt;
use crate::manifest;
use crate::record::RecordHeader;
use crate::scan;
use crate::segment::{self, INDEX_STRIDE_BYTES_MIN, SEGMENT_HEADER_BYTES};
use crate::verify::{SHARD_DIR_PREFIX, ShardDir, not_found, shard_dirs};

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
/// line: `{"shard":S,"seq":N,"ts":T,"len":L,"payload_b64":"..."}` (standard base64; `len` is
/// the payload's length), with `"origin":{"node":N,"shard":S,"seq":Q}` after `len` for a
/// record that carries an origin. Every record is verified; damage ends that shard's output
/// and is reported. Fails if `path` names
/// no such shard or `out` fails.
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
        if let Err(e) = dump_shard(shard, opts, &mut report, &mut lines) {
            match e {
                Stop::Damage(e) => report.problems.push(e),
                Stop::Output(e) => return Err(output_err(e)),
            }
        }
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
) -> std::result::Result<(), Stop> {
    let mut bases = segment::list_segments(&shard.dir)?;
    if let Ok(Some(m)) = manifest::read(&shard.dir, shard.shard) {
        bases.retain(|&b| b >= m.first_seq);
    }
    // Start at the segment holding `from_seq`; earlier ones hold only lower sequence numbers.
    let first = bases
        .partition_point(|&b| b <= opts.from_seq)
        .saturating_sub(1);
    for &base in bases.get(first..).unwrap_or_default() {
        if report.limit_reached(opts) {
            break;
        }
        dump_segment(shard, base, opts, report, lines)?;
    }
    Ok(())
}

/// Prints one segment's records (from `opts.from_seq`), ending at damage.
fn dump_segment(
    shard: &ShardDir,
    base: u64,
    opts: &DumpOptions,
    report: &mut DumpReport,
    lines: &mut JsonLines<'_>,
) -> std::result::Result<(), Stop> {
    let path = segment::dat_path(&shard.dir, base);
    let file = File::open(&path).map_err(io_err("open", &path))?;
    let len = file.metadata().map_err(io_err("stat", &path))?.len();
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
    let n =
        std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).map_err(io_err("read", &path))?;
    match scan::header_state(&head[..n], shard.shard, base) {
        scan::HeaderState::Valid => {}
        scan::HeaderState::Missing => return Ok(()), // created, never written: no records
        scan::HeaderState::Foreign(w) | scan::HeaderState::Invalid(w) => {
            return Err(corrupt(&path, 0, &format!("bad segment header: {w}")).into());
        }
    }
    let mut failed = None;
    let mut on_record = |h: &RecordHeader, _: u64, payload: &[u8]| {
        if h.seq < opts.from_seq {
            return true;
        }
        if report.limit_reached(opts) {
            return false;
        }
        if let Err(e) = lines.record(shard.shard, h, payload) {
            failed = Some(e);
            return false;
        }
        report.records += 1;
        true
    };
    let s = scan::scan(
        &file,
        len,
        shard.shard,
        base,
        INDEX_STRIDE_BYTES_MIN,
        &mut on_record,
    )
    .map_err(io_err("read", &path))?;
    if let Some(e) = failed {
        return Err(Stop::Output(e));
    }
    match &s.damage {
        Some(d) if !report.limit_reached(opts) => Err(corrupt(&path, d.offset, &d.what).into()),
        _ => Ok(()),
    }
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
        write!(
            self.out,
            r#"{{"shard":{shard},"seq":{},"ts":{},"len":{},"#,
            h.seq,
            h.ts_ns,
            payload.len()
        )?;
        if let Some(o) = h.origin {
            write!(
                self.out,
                r#""origin":{{"node":{},"shard":{},"seq":{}}},"#,
                o.node, o.shard, o.seq
            )?;
        }
        writeln!(self.out, r#""payload_b64":"{}"}}"#, self.b64)
    }
}
