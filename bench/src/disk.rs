//! The raw-disk baselines that `storage` and `latency` measure in the same run, on the same
//! file system as RedEX: sequential `O_DIRECT` writes and reads in the log's batch size, and
//! the latency of one 4 KiB write, alone or followed by `fdatasync`.
//!
//! Each is the cheapest way to move those bytes from one thread: plain positioned syscalls
//! (`pwrite`/`pread` through `FileExt`, `fdatasync` through `sync_data`), one at a time, from a
//! page-aligned buffer (`net_storage::AlignedBuf`, as `O_DIRECT` requires). Dividing RedEX's
//! figures by these says what the log costs over the disk itself. Files are appended from
//! offset 0 and never preallocated, as the log's are, so every `fdatasync` also commits the
//! grown file size, as the log's do. Where the file system refuses `O_DIRECT` (tmpfs) the same
//! transfers go through the page cache, and `direct` says so.

use crate::{payload, report};
use hdrhistogram::Histogram;
use net_storage::{AlignedBuf, BLOCK_BYTES};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes of each write of the write- and fsync-latency baselines: one disk block.
pub const SYNC_WRITE_BYTES: usize = BLOCK_BYTES;

/// Writes made before the write- and fsync-latency samples are taken: the first ones also
/// allocate the file's first extent and warm the journal.
const SYNC_WARMUP_WRITES: u64 = 16;

/// Where the page cache is dropped from (root only).
const DROP_CACHES_PATH: &str = "/proc/sys/vm/drop_caches";

/// One sequential transfer: bytes moved, how long it took, and whether it bypassed the page
/// cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
    pub direct: bool,
}

impl Transfer {
    /// Decimal megabytes per second.
    pub fn mb_per_s(&self) -> f64 {
        report::per_s(self.bytes, self.elapsed) / 1e6
    }

    /// Decimal gigabytes per second.
    pub fn gb_per_s(&self) -> f64 {
        report::per_s(self.bytes, self.elapsed) / 1e9
    }
}

/// The writes that move `total` bytes sequentially in `block`-byte writes: (offset, length)
/// pairs, the last rounded up to a whole disk block because `O_DIRECT` moves whole blocks.
pub fn writes(total: u64, block: usize) -> impl Iterator<Item = (u64, usize)> {
    assert!(
        block > 0 && block.is_multiple_of(BLOCK_BYTES),
        "writes are whole disk blocks"
    );
    let step = block as u64;
    (0..total.div_ceil(step)).map(move |i| {
        let offset = i * step;
        let left = total - offset;
        let len = if left >= step {
            block
        } else {
            let left = usize::try_from(left).expect("below block, a usize");
            left.next_multiple_of(BLOCK_BYTES)
        };
        (offset, len)
    })
}

/// Opens `path` with `O_DIRECT` where the file system supports it; with `create`, creates it
/// or truncates it for writing. Returns whether the file is direct.
pub fn open_direct(path: &Path, create: bool) -> io::Result<(File, bool)> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(create)
            .custom_flags(flags)
            .open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e),
    }
}

/// A page-aligned buffer of `len` bytes that are not zero (a thin-provisioned or compressing
/// disk could otherwise take zeros for free).
fn filled_buffer(len: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len);
    payload::fill(buf.as_mut_slice(), u32::MAX, 0);
    buf
}

/// Writes `total` bytes to a new file at `path` in `block`-byte `pwrite`s, then `fdatasync`s it
/// once (the log's close does too); the time covers the writes and the sync.
pub fn write_sequential(path: &Path, total: u64, block: usize) -> io::Result<Transfer> {
    let (file, direct) = open_direct(path, true)?;
    let buf = filled_buffer(block);
    let start = Instant::now();
    for (offset, len) in writes(total, block) {
        file.write_all_at(&buf.as_slice()[..len], offset)?;
    }
    file.sync_data()?;
    Ok(Transfer {
        bytes: total,
        elapsed: start.elapsed(),
        direct,
    })
}

/// Reads the file at `path` from start to end in `block`-byte `pread`s.
pub fn read_sequential(path: &Path, block: usize) -> io::Result<Transfer> {
    let (file, direct) = open_direct(path, false)?;
    let mut buf = AlignedBuf::new(block);
    let start = Instant::now();
    let mut bytes = 0u64;
    loop {
        let n = file.read_at(buf.as_mut_slice(), bytes)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok(Transfer {
        bytes,
        elapsed: start.elapsed(),
        direct,
    })
}

/// Reads each file of `paths` in turn from start to end in `block`-byte `pread`s, as
/// `read_sequential` does: the bytes and times are summed (opening a file is not timed), and
/// the transfer is direct only if every file was.
pub fn read_files_sequential(paths: &[PathBuf], block: usize) -> io::Result<Transfer> {
    let mut total = Transfer {
        bytes: 0,
        elapsed: Duration::ZERO,
        direct: true,
    };
    for path in paths {
        let read = read_sequential(path, block)?;
        total.bytes += read.bytes;
        total.elapsed += read.elapsed;
        total.direct &= read.direct;
    }
    Ok(total)
}

/// Latency of `samples` appends of one 4 KiB block to a new file at `path`, each followed by
/// `fdatasync`, in nanoseconds (write and sync together); a few unrecorded appends come first.
pub fn sync_latency(path: &Path, samples: u64) -> io::Result<(Histogram<u64>, bool)> {
    append_latency(path, samples, true)
}

/// Latency of `samples` appends of one 4 KiB block to a new file at `path`, without any sync,
/// in nanoseconds: what one `O_DIRECT` write costs (where the file system refuses `O_DIRECT`,
/// a copy into the page cache). A few unrecorded appends come first.
pub fn write_latency(path: &Path, samples: u64) -> io::Result<(Histogram<u64>, bool)> {
    append_latency(path, samples, false)
}

/// The appends of `sync_latency` (`sync`: each followed by `fdatasync`) and `write_latency`.
fn append_latency(path: &Path, samples: u64, sync: bool) -> io::Result<(Histogram<u64>, bool)> {
    let (file, direct) = open_direct(path, true)?;
    let buf = filled_buffer(SYNC_WRITE_BYTES);
    let mut latency = crate::workload::latency_histogram();
    for i in 0..SYNC_WARMUP_WRITES + samples {
        let start = Instant::now();
        file.write_all_at(buf.as_slice(), i * SYNC_WRITE_BYTES as u64)?;
        if sync {
            file.sync_data()?;
        }
        if i >= SYNC_WARMUP_WRITES {
            let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            latency.saturating_record(ns);
        }
    }
    Ok((latency, direct))
}

/// Writes dirty pages back and drops the page cache, so that the next reads come from the
/// disk. Needs root; returns whether the cache was dropped.
pub fn drop_page_cache() -> bool {
    // SAFETY: sync(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::sync() };
    std::fs::write(DROP_CACHES_PATH, "1").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_cover_the_total_in_whole_blocks() {
        let block = 4 * BLOCK_BYTES;
        assert_eq!(writes(0, block).count(), 0);
        let exact: Vec<_> = writes(2 * block as u64, block).collect();
        assert_eq!(exact, vec![(0, block), (block as u64, block)]);
        let ragged: Vec<_> = writes(block as u64 + 1, block).collect();
        assert_eq!(ragged, vec![(0, block), (block as u64, BLOCK_BYTES)]);
        let small: Vec<_> = writes(5000, block).collect();
        assert_eq!(small, vec![(0, 2 * BLOCK_BYTES)]);
    }

    #[test]
    fn sequential_write_then_read_moves_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.dat");
        let written = write_sequential(&path, 3 * 8192 + 100, 8192).unwrap();
        assert_eq!(written.bytes, 3 * 8192 + 100);
        let read = read_sequential(&path, 8192).unwrap();
        let rounded = 3 * 8192 + BLOCK_BYTES as u64;
        assert_eq!(
            read.bytes, rounded,
            "the last write is rounded up to a disk block"
        );
        assert_eq!(read.direct, written.direct);
    }

    #[test]
    fn reading_several_files_sums_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.dat"), dir.path().join("b.dat"));
        write_sequential(&a, 2 * 8192, 8192).unwrap();
        write_sequential(&b, 8192, 8192).unwrap();
        let read = read_files_sequential(&[a.clone(), b], 8192).unwrap();
        assert_eq!(read.bytes, 3 * 8192);
        assert_eq!(read.direct, read_sequential(&a, 8192).unwrap().direct);
        assert_eq!(read_files_sequential(&[], 8192).unwrap().bytes, 0);
    }

    #[test]
    fn a_file_cut_inside_a_block_is_read_to_its_end() {
        // As a log segment is, at its data end.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.dat");
        std::fs::write(&path, vec![7u8; 3 * BLOCK_BYTES + 100]).unwrap();
        let read = read_sequential(&path, 2 * BLOCK_BYTES).unwrap();
        assert_eq!(read.bytes, 3 * BLOCK_BYTES as u64 + 100);
    }

    #[test]
    fn sync_latency_records_one_sample_per_synced_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.dat");
        let (latency, _) = sync_latency(&path, 5).unwrap();
        assert_eq!(latency.len(), 5);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, (SYNC_WARMUP_WRITES + 5) * SYNC_WRITE_BYTES as u64);
    }

    #[test]
    fn write_latency_records_one_sample_per_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("write.dat");
        let (latency, _) = write_latency(&path, 7).unwrap();
        assert_eq!(latency.len(), 7);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, (SYNC_WARMUP_WRITES + 7) * SYNC_WRITE_BYTES as u64);
    }
}
