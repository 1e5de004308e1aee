//! A full disk: appends on a small tmpfs (mounted by the test when running as root) hit
//! ENOSPC; the log is poisoned with an error naming the file and the OS error, refuses further
//! appends, and reopens with a consistent prefix (no `.dat`/`.idx` divergence).
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::process::Command;

use net_storage::{Log, LogConfig, StorageError};

/// A tmpfs mounted for the test, unmounted on drop.
#[derive(Debug)]
pub struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// Mounts a tmpfs of `size` bytes, or says why not.
    pub fn mount(size: &str) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: the ENOSPC test mounts a tmpfs and needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "running as root but `mount -t tmpfs` failed");
        Some(SmallFs(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Makes the file system larger (as an operator freeing space would).
    #[allow(dead_code)]
    pub fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.0.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount failed");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn enospc_poisons_the_log_and_reopen_is_consistent() {
    let Some(fs) = SmallFs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("shard-0000");
    let cfg = LogConfig {
        shard: 0,
        segment_bytes: 64 << 20,
        batch_bytes_max: 64 << 10,
        batch_events_max: 500,
        ack: net_storage::Ack::Synced,
        // Writes, not a reservation, are what fills this disk.
        preallocate: false,
    };
    let (mut log, _) = Log::open(&dir, cfg).unwrap();
    let payload = [0x42u8; 100];
    let mut first_error = None;
    for _ in 0..100_000 {
        if let Err(e) = log.append(1, &payload) {
            first_error = Some(e);
            break;
        }
    }
    let err = first_error.expect("a 1 MiB tmpfs fills up");
    let text = err.to_string();
    match &err {
        StorageError::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{text}")
        }
        StorageError::ShortWrite { .. } => {}
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        text.contains("00000000000000000000."),
        "names the file: {text}"
    );
    let after = log.push(1, &payload).unwrap_err().to_string();
    assert!(
        after.contains("poisoned") && after.contains(&text),
        "later appends refused with the first failure: {after}"
    );
    assert!(log.flush(false).is_err());
    let persisted = log.persisted_end();
    drop(log);

    // Recovery needs no new space (the manifest's slots are reserved when it is created, a
    // torn tail is cut by truncation): it opens on the still-full disk.
    let (mut log, rec) = Log::open(&dir, cfg).unwrap();
    assert!(
        rec.next_seq >= persisted,
        "every completed write survives: {rec:?} < {persisted}"
    );
    let mut from = 0;
    while let Ok(recs) = log.read(from, 1000, 1 << 20) {
        if recs.is_empty() {
            break;
        }
        for r in recs {
            assert_eq!(r.seq, from);
            assert_eq!(&r.payload[..], &payload[..]);
            from += 1;
        }
    }
    assert_eq!(
        from, rec.next_seq,
        "every record up to the recovered end is readable"
    );
}
