//! One owner per snapshot directory: a running cortex holds an exclusive `flock` on
//! `<dir>/LOCK`, released by the kernel when the file is closed or the process ends (even by
//! SIGKILL). Two cortexes writing and pruning the same snapshots would delete each other's
//! files and restore from a state the other fold wrote.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::CortexError;

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and takes its lock, or says who holds it.
    pub(crate) fn take(dir: &Path) -> Result<DirLock, CortexError> {
        let io = |source| CortexError::SnapshotIo {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| CortexError::SnapshotIo {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock takes a descriptor we own (open for the call's duration) and flags.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
                CortexError::SnapshotDirInUse {
                    dir: dir.to_path_buf(),
                }
            } else {
                CortexError::SnapshotIo { path, source: e }
            });
        }
        Ok(DirLock { _file: file })
    }
}
