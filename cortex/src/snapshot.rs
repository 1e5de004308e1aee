//! Snapshot files: one fold state of one shard and the sequence number it was folded to,
//! written atomically and checked whole on load.
//!
//! Format (little-endian):
//!
//! ```text
//! magic "NETCSNAP" | format u32 (1) | shard u16 | name_len u16 | name
//! | end u64 (one past the last event folded into the state) | state_len u64 | state
//! | checksum u64 (xxh3-64 of every byte before it)
//! ```
//!
//! The checksum covers everything: header, name, `end` and the state bytes, so a flipped
//! bit anywhere (the sequence number included) is caught, and so is a truncated file (the
//! checksum is at the end, and the lengths must add up to the file's size exactly). `end` is
//! read from the same published version as the state (see `runner.rs`): a snapshot can never
//! pair a state with a sequence number it was not folded to.
//!
//! Writing: a temporary file in the same directory, `fsync`, `rename` over the final name
//! (`snap-<end, 20 digits>.snap`), then `fsync` of the directory, so a crash leaves either no
//! new snapshot or a complete one. The newest `keep` are kept; loading tries them newest
//! first and falls back to an older one (or to a full replay) when one does not check out,
//! recording why.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::{ByteReader, put_u16, put_u32, put_u64};
use crate::error::{CortexError, DecodeError};
use crate::fold::FoldState;

const MAGIC: &[u8; 8] = b"NETCSNAP";
const FORMAT: u32 = 1;
const PREFIX: &str = "snap-";
const SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".tmp-snap-";

/// A snapshot that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSnapshot {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// A snapshot that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The shard.
    pub shard: u16,
    /// The file.
    pub path: PathBuf,
    /// One past the last event folded into it.
    pub end: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The directory of one shard's snapshots.
pub(crate) fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:04}"))
}

fn file_name(end: u64) -> String {
    format!("{PREFIX}{end:020}{SUFFIX}")
}

/// Encodes a whole snapshot file.
pub(crate) fn encode<S: FoldState>(name: &str, shard: u16, end: u64, state: &S) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    put_u32(&mut out, FORMAT);
    put_u16(&mut out, shard);
    put_u16(
        &mut out,
        u16::try_from(name.len()).expect("names are at most 64 bytes (validated)"),
    );
    out.extend_from_slice(name.as_bytes());
    put_u64(&mut out, end);
    let len_at = out.len();
    put_u64(&mut out, 0);
    let state_at = out.len();
    state.encode(&mut out);
    let state_len = (out.len() - state_at) as u64;
    out[len_at..len_at + 8].copy_from_slice(&state_len.to_le_bytes());
    let sum = xxh3_64(&out);
    put_u64(&mut out, sum);
    out
}

/// Checks a whole snapshot file and decodes it: `(end, state)`.
pub(crate) fn decode<S: FoldState>(
    bytes: &[u8],
    name: &str,
    shard: u16,
) -> Result<(u64, S), DecodeError> {
    if bytes.len() < MAGIC.len() + 8 {
        return Err(DecodeError::new(format!(
            "truncated: {} bytes is shorter than any snapshot",
            bytes.len()
        )));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let stored = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
    let computed = xxh3_64(body);
    if &body[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::new("not a snapshot (bad magic)"));
    }
    if stored != computed {
        return Err(DecodeError::new(format!(
            "checksum mismatch (stored {stored:016x}, computed {computed:016x}): damaged or truncated"
        )));
    }
    let mut r = ByteReader::new(&body[MAGIC.len()..]);
    let format = r.u32("format")?;
    if format != FORMAT {
        return Err(DecodeError::new(format!(
            "format {format}, this build reads {FORMAT}"
        )));
    }
    let file_shard = r.u16("shard")?;
    if file_shard != shard {
        return Err(DecodeError::new(format!(
            "holds shard {file_shard}, not shard {shard}"
        )));
    }
    let name_len = r.u16("name length")?;
    let file_name = r.take(usize::from(name_len), "name")?;
    if file_name != name.as_bytes() {
        return Err(DecodeError::new(format!(
            "written by fold {:?}, not {name:?}",
            String::from_utf8_lossy(file_name)
        )));
    }
    let end = r.u64("end")?;
    let state = r.bytes("state")?;
    r.finish()?;
    let state = S::decode(state).map_err(|e| DecodeError::new(format!("state: {e}")))?;
    Ok((end, state))
}

/// Reads and checks one snapshot file of fold `name`'s shard `shard`: the sequence number it
/// was folded to and the state (for tools and tests; restore does this itself).
pub fn read_snapshot<S: FoldState>(
    path: &Path,
    name: &str,
    shard: u16,
) -> Result<(u64, S), DecodeError> {
    let bytes = fs::read(path)
        .map_err(|e| DecodeError::new(format!("{} cannot be read: {e}", path.display())))?;
    decode(&bytes, name, shard)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CortexError + '_ {
    move |source| CortexError::SnapshotIo {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` as the snapshot of `end` in `dir` atomically, then keeps the newest `keep`.
pub(crate) fn write(
    dir: &Path,
    end: u64,
    bytes: &[u8],
    keep: usize,
) -> Result<PathBuf, CortexError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The new directory's entry must be durable before a snapshot in it can be.
        if let Some(parent) = dir.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
    }
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!("{TEMP_PREFIX}{end:020}-{}-{n}", std::process::id()));
    let final_path = dir.join(file_name(end));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_err(&temp))?;
        f.write_all(bytes).map_err(io_err(&temp))?;
        f.sync_all().map_err(io_err(&temp))?;
        drop(f);
        fs::rename(&temp, &final_path).map_err(io_err(&final_path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    prune(dir, keep)?;
    Ok(final_path)
}

/// Snapshot files in `dir`, newest (highest end) first. Files that are not snapshots by name
/// are left alone; a missing directory has none.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CortexError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(end) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((end, entry.path()));
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Removes all but the newest `keep` snapshots, and temporary files a crash left.
fn prune(dir: &Path, keep: usize) -> Result<(), CortexError> {
    for (_, path) in list(dir)?.into_iter().skip(keep) {
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        let mine = format!("-{}-", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Another process's temporary file is a crashed writer's (the data dir has one
            // owner); this process's own are in flight only under the shard's snapshot lock,
            // which the caller holds.
            if name.starts_with(TEMP_PREFIX) && !name.contains(&mine) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// What loading found: the state to start from (if any snapshot checked out) and the
/// snapshots passed over, newest first.
pub(crate) struct Loaded<S> {
    pub(crate) found: Option<(u64, S, PathBuf)>,
    pub(crate) rejected: Vec<RejectedSnapshot>,
}

/// Loads the newest snapshot of `dir` that checks out, falling back to older ones. A snapshot
/// folded beyond `log_end` (the shard's log as it is now) is refused: it was taken from
/// another log, or from events the log no longer holds (a tail lost in a crash under a lax
/// fsync policy), and restoring it would count events that do not exist as folded.
pub(crate) fn load<S: FoldState>(
    dir: &Path,
    name: &str,
    shard: u16,
    log_end: u64,
) -> Result<Loaded<S>, CortexError> {
    let mut rejected = Vec::new();
    for (named_end, path) in list(dir)? {
        if named_end > log_end {
            rejected.push(RejectedSnapshot {
                path,
                reason: format!(
                    "folded to seq {named_end}, beyond the log's end {log_end}: it belongs to \
                     another log, or to events this log no longer holds"
                ),
            });
            continue;
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                rejected.push(RejectedSnapshot {
                    path,
                    reason: format!("cannot be read: {e}"),
                });
                continue;
            }
        };
        match decode::<S>(&bytes, name, shard) {
            Ok((end, _)) if end != named_end => rejected.push(RejectedSnapshot {
                path,
                reason: format!("named for seq {named_end} but holds seq {end}"),
            }),
            Ok((end, state)) => {
                return Ok(Loaded {
                    found: Some((end, state, path)),
                    rejected,
                });
            }
            Err(e) => rejected.push(RejectedSnapshot {
                path,
                reason: e.to_string(),
            }),
        }
    }
    Ok(Loaded {
        found: None,
        rejected,
    })
}
