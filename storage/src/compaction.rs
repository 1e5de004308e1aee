//! Compaction: rewriting a shard's log into a fresh set of full-size segments (merging small or
//! partly retained ones), keeping every record, its sequence number, timestamp, origin block
//! (for a mirrored record) and payload byte for byte.
//!
//! The new set is written under a temporary name, made durable, and only then put in place by
//! one atomic step: `rename` for [`compact_to`] (the destination must not exist) and
//! `renameat2(RENAME_EXCHANGE)` of the two directories for [`compact_in_place`], followed by an
//! fsync of the parent directory. A crash at any step therefore leaves either the old set or
//! the new one under the live name, never a mix; whatever is left under the temporary names is
//! garbage that [`remove_leftovers`] (run by every `Log::open`) deletes. Every error path
//! removes the temporaries before returning, including a failure after the swap.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError, io_err};
use crate::log::{Log, LogConfig};
use crate::segment;

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Segments before.
    pub segments_before: usize,
    /// Segments after.
    pub segments_after: usize,
    /// Records copied.
    pub records: u64,
}

/// A step of compaction, for fault-injection tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After part of the new set is written.
    Copy,
    /// After the new set is durable, before it is put in place.
    BeforeSwap,
    /// After the swap, before the old set is removed.
    AfterSwap,
}

/// How an injected fault behaves: an error (cleanup runs) or a crash (nothing more runs).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Return an error at the step.
    Error(Step),
    /// Stop dead at the step, as a crash would (the test then reopens).
    Crash(Step),
}

const TMP_SUFFIX: &str = "compact-tmp";
const OLD_SUFFIX: &str = "compact-old";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// Removes what an interrupted compaction of `dir` left next to it; returns how many
/// directories.
pub fn remove_leftovers(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for suffix in [TMP_SUFFIX, OLD_SUFFIX] {
        let path = sibling(dir, suffix);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_err("remove compaction leftover", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes a compacted copy of the log in `src` (opened and recovered) to `dst`, which must
/// not exist.
pub fn compact_to(src: &Path, dst: &Path, cfg: LogConfig) -> Result<Compacted> {
    compact_to_with(src, dst, cfg, None)
}

/// Compacts the log in `dir` in place. The log must not be open elsewhere.
pub fn compact_in_place(dir: &Path, cfg: LogConfig) -> Result<Compacted> {
    compact_in_place_with(dir, cfg, None)
}

#[doc(hidden)]
pub fn compact_to_with(
    src: &Path,
    dst: &Path,
    cfg: LogConfig,
    fault: Option<Fault>,
) -> Result<Compacted> {
    if dst.exists() {
        return Err(StorageError::Invalid {
            field: "destination",
            what: format!("{} already exists", dst.display()),
        });
    }
    let tmp = sibling(dst, TMP_SUFFIX);
    remove_leftovers(dst)?;
    let result = write_copy(src, &tmp, cfg, fault).and_then(|done| {
        inject(fault, Step::BeforeSwap)?;
        std::fs::rename(&tmp, dst).map_err(io_err("rename", &tmp))?;
        sync_parent(dst)?;
        Ok(done)
    });
    if result.is_err() && !is_crash(fault) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[doc(hidden)]
pub fn compact_in_place_with(
    dir: &Path,
    cfg: LogConfig,
    fault: Option<Fault>,
) -> Result<Compacted> {
    remove_leftovers(dir)?;
    let tmp = sibling(dir, TMP_SUFFIX);
    let old = sibling(dir, OLD_SUFFIX);
    let result = write_copy(dir, &tmp, cfg, fault).and_then(|done| {
        inject(fault, Step::BeforeSwap)?;
        exchange(&tmp, dir)?;
        sync_parent(dir)?;
        // The old set now lives under the temporary name: retire it.
        std::fs::rename(&tmp, &old).map_err(io_err("rename", &tmp))?;
        inject(fault, Step::AfterSwap)?;
        std::fs::remove_dir_all(&old).map_err(io_err("remove old segments", &old))?;
        sync_parent(dir)?;
        Ok(done)
    });
    if result.is_err() && !is_crash(fault) {
        let _ = remove_leftovers(dir);
    }
    result
}

fn is_crash(fault: Option<Fault>) -> bool {
    matches!(fault, Some(Fault::Crash(_)))
}

fn inject(fault: Option<Fault>, at: Step) -> Result<()> {
    match fault {
        Some(Fault::Error(s) | Fault::Crash(s)) if s == at => Err(StorageError::Invalid {
            field: "fault injection",
            what: format!("injected fault at {at:?}"),
        }),
        _ => Ok(()),
    }
}

/// Copies every record of the log in `src` into a new log in `tmp` and makes it durable.
fn write_copy(src: &Path, tmp: &Path, cfg: LogConfig, fault: Option<Fault>) -> Result<Compacted> {
    let (mut from, _) = Log::open(src, cfg)?;
    let segments_before = from.segments();
    let mut to = Log::create(tmp, cfg, from.first_seq())?;
    let mut next = from.first_seq();
    let mut records = 0u64;
    loop {
        let batch = from.read(next, 4096, 4 << 20)?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.seq != to.next_seq() {
                // An accepted gap in the source: the copy keeps it.
                to.skip_to(r.seq)?;
            }
            let seq = to.append_record(r.ts_ns, r.origin.as_ref(), &r.payload)?;
            assert_eq!(seq, r.seq, "compaction keeps sequence numbers");
            next = r.seq + 1;
            records += 1;
        }
        if records > 0
            && matches!(
                fault,
                Some(Fault::Error(Step::Copy) | Fault::Crash(Step::Copy))
            )
        {
            inject(fault, Step::Copy)?;
        }
    }
    to.flush(false)?;
    let segments_after = to.segments();
    to.close()?;
    Ok(Compacted {
        segments_before,
        segments_after,
        records,
    })
}

/// Atomically swaps two directories (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(|_| invalid_path(a))?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(|_| invalid_path(b))?;
    // SAFETY: two NUL-terminated paths; renameat2 reads them and returns 0 or -1.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(StorageError::Io {
            op: "exchange directories",
            path: a.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn invalid_path(p: &Path) -> StorageError {
    StorageError::Invalid {
        field: "path",
        what: format!("{} contains a NUL byte", p.display()),
    }
}

fn sync_parent(p: &Path) -> Result<()> {
    let parent = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    segment::sync_dir(parent)
}
