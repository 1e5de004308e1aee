//! `net-admin repair`: recovery run on purpose, and, only when the operator says so, the
//! acceptance of a loss.
//!
//! A plain repair opens and closes each shard's log, so recovery does what a crash explains
//! (cuts a torn tail, rebuilds indexes, finishes an interrupted retention sweep), then
//! verifies the shard: whatever is still wrong is reported and the outcome is "unrepaired",
//! never "nothing to repair".
//!
//! `--accept-data-loss` first makes damage recovery refuses into recorded, explained loss:
//! - files that do not belong (an `.idx` without its `.dat`, a segment whose header names
//!   another shard or base, or is garbage) are moved into `quarantine/<time>/`, never deleted;
//! - a segment damaged before records that were acknowledged is copied there, then cut at the
//!   damage; when it was the newest segment, the log continues in a new segment past every
//!   sequence number that intact data shows was handed out, so no number is given twice;
//! - the manifest is rewritten (or rebuilt, if it is missing or unreadable): the log starts
//!   at its first remaining segment, a missing newest segment is skipped past, and every hole
//!   between segments becomes an accepted gap, which readers skip and report.
//!
//! Every action is listed in the result. Both modes hold the data dir's lock.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError, io_err};
use crate::log::{Ack, Log, LogConfig, corrupt};
use crate::manifest::{self, Manifest};
use crate::record::RECORD_HEADER_BYTES;
use crate::recovery::Recovery;
use crate::scan::{self, HeaderState};
use crate::segment::{
    self, INDEX_STRIDE_BYTES_MIN, QUARANTINE_DIR_NAME, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::verify::{ShardDir, parse_shard_dir_name, shard_dirs, verify_shard};

/// What [`repair`] may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairOptions {
    /// Move damage a crash cannot explain aside and continue without those events.
    pub accept_data_loss: bool,
}

/// What [`repair`] did to one shard.
#[derive(Debug)]
pub struct ShardRepair {
    /// The shard and its directory.
    pub shard: ShardDir,
    /// Losses accepted (with `accept_data_loss`), one line each.
    pub accepted: Vec<String>,
    /// What happened.
    pub outcome: RepairOutcome,
}

/// The outcome of repairing one shard.
#[derive(Debug)]
pub enum RepairOutcome {
    /// The directory holds no log; it was left alone (opening it would create one).
    NoSegments,
    /// The log opened and verifies clean: what recovery found and changed.
    Recovered(Recovery),
    /// The log opened but damage remains (reported by verify).
    Unrepaired(Vec<StorageError>),
    /// The log could not be opened or closed (damage recovery refuses, or I/O).
    Failed(StorageError),
}

impl fmt::Display for ShardRepair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shard;
        write!(f, "shard {} ({}): ", s.shard, s.dir.display())?;
        for a in &self.accepted {
            write!(f, "\n  accepted loss: {a}\n  ")?;
        }
        let r = match &self.outcome {
            RepairOutcome::NoSegments => return write!(f, "no segments, left alone"),
            RepairOutcome::Failed(e) => return write!(f, "not repaired: {e}"),
            RepairOutcome::Unrepaired(problems) => {
                write!(f, "opened, but {} problem(s) remain:", problems.len())?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                return Ok(());
            }
            RepairOutcome::Recovered(r) => r,
        };
        if r.repaired() {
            let yes_no = |b| if b { "yes" } else { "no" };
            write!(
                f,
                "repaired: cut {} bytes of a torn tail (torn record: {}), {} index(es) rebuilt, \
                 {} segment(s) below the retained range removed",
                r.dat_bytes_cut,
                yes_no(r.torn_tail),
                r.indexes_rebuilt,
                r.retention_finished
            )?;
        } else {
            write!(f, "nothing to repair")?;
        }
        write!(f, "; {} segments, next seq {}", r.segments, r.next_seq)
    }
}

/// The sizing [`repair`] opens a shard's log with: it appends nothing, reserves no space.
pub fn repair_config(shard: u16) -> LogConfig {
    LogConfig {
        shard,
        segment_bytes: SEGMENT_BYTES_MAX,
        batch_bytes_max: 4 << 20,
        batch_events_max: 32_768,
        ack: Ack::Synced,
        preallocate: false,
    }
}

/// Repairs every shard `path` names (see the module docs). Takes the data dir's lock first (a
/// running bus makes it fail with [`StorageError::Locked`]). Fails only if `path` names no
/// shard or the lock is held.
pub fn repair(path: &Path, opts: RepairOptions) -> Result<Vec<ShardRepair>> {
    let shards = shard_dirs(path)?;
    let _lock = lock_data_dir(path)?;
    Ok(shards.into_iter().map(|s| repair_shard(s, opts)).collect())
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

/// Repairs one shard; see [`repair`].
pub fn repair_shard(shard: ShardDir, opts: RepairOptions) -> ShardRepair {
    let mut out = ShardRepair {
        shard,
        accepted: Vec::new(),
        outcome: RepairOutcome::NoSegments,
    };
    let dir = out.shard.dir.clone();
    let empty = segment::inventory(&dir)
        .is_ok_and(|inv| inv.dats.is_empty() && inv.idxs.is_empty())
        && !manifest::path(&dir).exists();
    if empty {
        return out;
    }
    if opts.accept_data_loss {
        match accept_loss(&dir, out.shard.shard) {
            Ok(actions) => out.accepted = actions,
            Err(e) => {
                out.outcome = RepairOutcome::Failed(e);
                return out;
            }
        }
    }
    if let Err(e) = drop_disagreeing_indexes(&out.shard) {
        out.outcome = RepairOutcome::Failed(e);
        return out;
    }
    let opened = Log::open(&dir, repair_config(out.shard.shard));
    out.outcome = match opened.and_then(|(log, recovery)| log.close().map(|()| recovery)) {
        Err(e) => RepairOutcome::Failed(e),
        Ok(recovery) => {
            let check = verify_shard(out.shard.clone());
            if check.is_clean() {
                RepairOutcome::Recovered(recovery)
            } else {
                RepairOutcome::Unrepaired(check.problems)
            }
        }
    };
    out
}

/// Removes the `.idx` of every sealed segment whose index verify finds wrong: it is derived
/// data, and opening the log rebuilds a missing one from `.dat` (opening alone checks only an
/// index's last entry, to stay fast).
fn drop_disagreeing_indexes(shard: &ShardDir) -> Result<()> {
    let report = verify_shard(shard.clone());
    let mut stale: Vec<PathBuf> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            StorageError::Corrupt { path, .. } => Some(path.clone()),
            _ => None,
        })
        .filter(|p| p.extension().is_some_and(|e| e == "idx") && p.with_extension("dat").exists())
        .collect();
    stale.dedup();
    for path in stale {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
    }
    Ok(())
}

/// Sequence numbers a lost newest segment could have handed out at most (every record is at
/// least a header), skipped so that none is handed out twice.
const LOST_SEGMENT_SEQS_MAX: u64 = SEGMENT_BYTES_MAX / RECORD_HEADER_BYTES as u64;

/// Where [`accept_loss`] moves files, created on first use.
struct Quarantine {
    dir: PathBuf,
    created: bool,
}

impl Quarantine {
    fn new(shard_dir: &Path) -> Quarantine {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Quarantine {
            dir: shard_dir.join(QUARANTINE_DIR_NAME).join(secs.to_string()),
            created: false,
        }
    }

    fn ensure(&mut self) -> Result<&Path> {
        if !self.created {
            std::fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
            self.created = true;
        }
        Ok(&self.dir)
    }

    /// Moves `path` into the quarantine.
    fn take(&mut self, path: &Path) -> Result<PathBuf> {
        let to = self.ensure()?.join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &to).map_err(io_err("move to quarantine", path))?;
        Ok(to)
    }

    /// Copies `path` into the quarantine.
    fn copy(&mut self, path: &Path) -> Result<PathBuf> {
        let to = self.ensure()?.join(path.file_name().unwrap_or_default());
        std::fs::copy(path, &to).map_err(io_err("copy to quarantine", path))?;
        File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync", &to))?;
        Ok(to)
    }
}

/// One segment kept by [`accept_loss`]: the seq after its last intact record, and, for a
/// newest segment cut at damage, the seq the log must continue from (past every number its
/// intact data shows was handed out).
struct Kept {
    base: u64,
    end: u64,
    resume: Option<u64>,
}

/// Turns damage recovery refuses into recorded loss (see the module docs); returns what it
/// did, one line per action.
fn accept_loss(dir: &Path, shard: u16) -> Result<Vec<String>> {
    let mut q = Quarantine::new(dir);
    let mut actions = Vec::new();
    let old = match manifest::read(dir, shard) {
        Ok(m) => m,
        Err(e) => {
            actions.push(format!(
                "the manifest is unreadable ({e}); rebuilt from the segments"
            ));
            None
        }
    };
    let inv = segment::inventory(dir)?;
    for base in inv.orphan_indexes() {
        let to = q.take(&segment::idx_path(dir, base))?;
        actions.push(format!(
            "segment {base}'s .dat is missing: its index moved to {}",
            to.display()
        ));
    }
    let dats: Vec<u64> = inv
        .dats
        .iter()
        .copied()
        .filter(|&b| old.as_ref().is_none_or(|m| b >= m.first_seq))
        .collect();
    let mut kept = Vec::new();
    for (i, &base) in dats.iter().enumerate() {
        let last = i + 1 == dats.len();
        let next_base = dats.get(i + 1).copied();
        if let Some(k) = salvage_segment(
            dir,
            shard,
            base,
            last,
            next_base,
            old.as_ref(),
            &mut q,
            &mut actions,
        )? {
            kept.push(k);
        }
    }
    let m = rebuild_manifest(dir, shard, old, &mut kept, &mut actions)?;
    let file = manifest::open(dir)?;
    manifest::write_sync(dir, &file, &m)?;
    segment::sync_dir(dir)?;
    if q.created {
        segment::sync_dir(&q.dir)?;
    }
    Ok(actions)
}

/// Checks one segment: moves it aside if its header is not its own, cuts it at damage a
/// crash cannot explain (keeping a copy); returns what is kept of it.
#[allow(clippy::too_many_arguments)]
fn salvage_segment(
    dir: &Path,
    shard: u16,
    base: u64,
    last: bool,
    next_base: Option<u64>,
    m: Option<&Manifest>,
    q: &mut Quarantine,
    actions: &mut Vec<String>,
) -> Result<Option<Kept>> {
    let path = segment::dat_path(dir, base);
    let dat = File::open(&path).map_err(io_err("open", &path))?;
    let len = dat.metadata().map_err(io_err("stat", &path))?.len();
    let s = scan::scan(
        &dat,
        len,
        shard,
        base,
        INDEX_STRIDE_BYTES_MIN,
        &mut |_, _, _| true,
    )
    .map_err(io_err("read", &path))?;
    let bad_header = match &s.header {
        HeaderState::Valid => None,
        HeaderState::Missing if last && s.is_blank() => None,
        HeaderState::Missing => Some("no header".to_string()),
        HeaderState::Foreign(w) | HeaderState::Invalid(w) => Some(w.clone()),
    };
    let acked = [
        s.committed_end,
        s.damage.as_ref().and_then(|d| d.later.committed_end),
        m.and_then(|m| m.clean_end),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(base);
    if let Some(why) = bad_header {
        if last && acked <= base && !matches!(s.header, HeaderState::Foreign(_)) {
            return Ok(Some(Kept {
                base,
                end: base,
                resume: None,
            })); // a torn first write: recovery empties it
        }
        let to = q.take(&path)?;
        take_index(dir, base, q)?;
        actions.push(format!(
            "segment {base} has a bad header ({why}): moved to {}",
            to.display()
        ));
        return Ok(None);
    }
    let Some(d) = &s.damage else {
        return Ok(Some(Kept {
            base,
            end: base + s.records,
            resume: None,
        }));
    };
    let damaged = base + s.records;
    if last && damaged >= acked {
        return Ok(Some(Kept {
            base,
            end: damaged,
            resume: None,
        })); // a torn tail: recovery cuts it
    }
    let to = q.copy(&path)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let keep = if s.records == 0 {
        SEGMENT_HEADER_BYTES as u64
    } else {
        s.end
    };
    f.set_len(keep)
        .and_then(|()| f.sync_all())
        .map_err(io_err("truncate", &path))?;
    take_index(dir, base, q)?;
    let lost_to = next_base
        .unwrap_or(0)
        .max(d.later.seq_end.unwrap_or(0))
        .max(acked)
        .max(damaged);
    actions.push(format!(
        "segment {base} is damaged at byte {} ({}): kept seq {base}..{damaged}, lost seq \
         {damaged}..{lost_to}; the whole file was copied to {}",
        d.offset,
        d.what,
        to.display()
    ));
    let resume = (last && lost_to > damaged).then_some(lost_to);
    Ok(Some(Kept {
        base,
        end: damaged,
        resume,
    }))
}

fn take_index(dir: &Path, base: u64, q: &mut Quarantine) -> Result<()> {
    let idx = segment::idx_path(dir, base);
    if idx.exists() {
        q.take(&idx)?;
    }
    Ok(())
}

/// The manifest after the salvage: the log starts at its first kept segment, continues past
/// a lost newest segment, and every hole between segments is an accepted gap.
fn rebuild_manifest(
    dir: &Path,
    shard: u16,
    old: Option<Manifest>,
    kept: &mut Vec<Kept>,
    actions: &mut Vec<String>,
) -> Result<Manifest> {
    let first = kept.first().map(|k| k.base);
    let mut m = old
        .clone()
        .unwrap_or_else(|| Manifest::new(shard, first.unwrap_or(0)));
    if let Some(first) = first
        && first != m.first_seq
    {
        if first > m.first_seq {
            actions.push(format!(
                "seq {}..{first} are missing: the log now starts at seq {first}",
                m.first_seq
            ));
        }
        m.first_seq = first;
    }
    // The log must continue past anything ever handed out: a lost newest segment, or the
    // records a damaged newest segment lost.
    let newest_known = old.as_ref().map_or(0, |m| m.active_base);
    let end = kept.last().map_or(m.first_seq, |k| k.end);
    let newest_kept = kept.last().map(|k| k.base);
    let resume = if newest_kept.is_none_or(|b| b < newest_known) {
        let resume = newest_known.saturating_add(LOST_SEGMENT_SEQS_MAX).max(end);
        actions.push(format!(
            "the newest segment (from seq {newest_known}) is missing: the log continues at seq \
             {resume}, past every number it could have handed out"
        ));
        Some(resume)
    } else {
        kept.last().and_then(|k| k.resume)
    };
    if let Some(at) = resume {
        create_blank_segment(dir, at)?;
        kept.push(Kept {
            base: at,
            end: at,
            resume: None,
        });
        if first.is_none() {
            m.first_seq = at;
        }
    }
    m.gaps.clear();
    let mut prev_end = m.first_seq;
    for k in kept.iter() {
        if k.base > prev_end {
            m.add_gap(prev_end, k.base)
                .map_err(|what| corrupt(&manifest::path(dir), 0, &what))?;
            actions.push(format!(
                "seq {prev_end}..{} are lost (accepted gap)",
                k.base
            ));
        }
        prev_end = k.end.max(k.base);
    }
    m.active_base = kept.last().map_or(m.first_seq, |k| k.base);
    m.clean_end = None;
    m.generation = old.map_or(0, |o| o.generation) + 1;
    Ok(m)
}

fn create_blank_segment(dir: &Path, base: u64) -> Result<()> {
    let path = segment::dat_path(dir, base);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("create", &path))?;
    Ok(())
}
