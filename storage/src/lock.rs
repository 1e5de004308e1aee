//! The data-dir lock: one owner at a time for a data dir (a running bus, or `net-admin repair`
//! and `compact`), so that two writers never append to the same logs.
//!
//! Two buses started on one data dir would each continue the same shards' sequences from the
//! same files and overwrite each other's acknowledged records; nothing in the files themselves
//! can tell them apart. So the owner holds an exclusive `flock(2)` on `<dir>/LOCK` for its whole
//! life. The kernel drops the lock when the owner's file is closed or the process dies (also by
//! SIGKILL), so a crash never leaves a stale lock behind, and a lock is per open file, so a
//! second bus in the same process is refused too. The owner writes its pid into the file,
//! purely so that the refusal can name the holder; the pid is never trusted for anything
//! else. Readers that change nothing (`net-admin verify`, `dump`) do not take the lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError, io_err};

/// Name of the lock file inside a data dir.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Longest pid text read back from a lock file (a pid is at most 7 digits on Linux).
const PID_TEXT_BYTES_MAX: u64 = 32;

/// An exclusive lock on a data dir, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist) without waiting. Fails with
    /// [`StorageError::Locked`] naming the dir and, where the lock file says, the holder's pid.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        // SAFETY: flock takes a descriptor we own and a flag; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StorageError::Locked {
                    dir: dir.into(),
                    holder: holder_pid(&mut file),
                });
            }
            return Err(io_err("lock", &path)(err));
        }
        file.set_len(0)
            .map_err(io_err("truncate lock file", &path))?;
        file.rewind().map_err(io_err("rewind lock file", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("write lock file", &path))?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the current holder wrote, if the file holds one.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(PID_TEXT_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        match &err {
            StorageError::Locked { dir: d, holder } => {
                assert_eq!(d, dir.path());
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
