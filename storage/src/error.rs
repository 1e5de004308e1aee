//! The storage crate's one error type, grouped by cause. Every message names the file or shard.

use std::io;
use std::path::PathBuf;

/// Errors of the RedEX log.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call on a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`open`, `write`, `read`, `truncate`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A write completed with fewer bytes than submitted.
    #[error("short write to {}: {written} of {expected} bytes{hint}", path.display())]
    ShortWrite {
        /// The file.
        path: PathBuf,
        /// Bytes the kernel reported written.
        written: usize,
        /// Bytes submitted.
        expected: usize,
        /// What the file system says about it (such as "No space left on device").
        hint: String,
    },
    /// io_uring could not be set up for this shard's log.
    #[error(
        "io_uring is unavailable ({0}); net needs Linux >= 5.10 with io_uring enabled \
         (check /proc/sys/kernel/io_uring_disabled and seccomp profiles)"
    )]
    Uring(io::Error),
    /// An earlier write or sync failed; the log refuses further appends.
    #[error("log of shard {shard} is poisoned by an earlier failure: {first}")]
    Poisoned {
        /// The shard.
        shard: u16,
        /// The failure that poisoned it (with its file and OS error).
        first: Box<StorageError>,
    },
    /// Bytes on disk are not what the format requires.
    #[error("corrupt {} at byte {offset}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What was wrong.
        what: String,
    },
    /// Another owner (a running bus, or `net-admin repair`/`compact`) holds the data dir.
    #[error(
        "data dir {} is in use by {}; stop it first (one bus or repair per data dir)",
        dir.display(),
        holder.map_or_else(|| "another process".to_string(), |p| format!("pid {p}"))
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
        /// The holder's pid, as its lock file says.
        holder: Option<u32>,
    },
    /// A configuration value the log cannot work with.
    #[error("invalid storage setting {field}: {what}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        what: String,
    },
}

impl Clone for StorageError {
    /// A copy for reporting one failure in several places (an `io::Error` is not `Clone`: its
    /// OS error code, or else its kind and text, is kept).
    fn clone(&self) -> StorageError {
        let io = |e: &io::Error| match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            StorageError::Io { op, path, source } => StorageError::Io {
                op,
                path: path.clone(),
                source: io(source),
            },
            StorageError::ShortWrite {
                path,
                written,
                expected,
                hint,
            } => StorageError::ShortWrite {
                path: path.clone(),
                written: *written,
                expected: *expected,
                hint: hint.clone(),
            },
            StorageError::Uring(e) => StorageError::Uring(io(e)),
            StorageError::Poisoned { shard, first } => StorageError::Poisoned {
                shard: *shard,
                first: first.clone(),
            },
            StorageError::Corrupt { path, offset, what } => StorageError::Corrupt {
                path: path.clone(),
                offset: *offset,
                what: what.clone(),
            },
            StorageError::Locked { dir, holder } => StorageError::Locked {
                dir: dir.clone(),
                holder: *holder,
            },
            StorageError::Invalid { field, what } => StorageError::Invalid {
                field,
                what: what.clone(),
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Maps an OS error on `path` to [`StorageError::Io`]; the path is copied only on error.
pub(crate) fn io_err<'a, P: AsRef<std::path::Path> + ?Sized>(
    op: &'static str,
    path: &'a P,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.as_ref().to_path_buf(),
        source,
    }
}
