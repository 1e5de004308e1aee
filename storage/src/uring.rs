//! The log's view of io_uring: a [`Submit`] queue it pushes operations into, tagged so that
//! their completions can be routed back to it, and [`Ring`], a small ring of the log's own for
//! standalone use (tools, tests, compaction).
//!
//! In a running bus the log has no ring: the shard's reactor owns the one ring through which
//! everything the shard does goes, implements [`Submit`] on it by adding its own routing bits
//! to the log's tags, and hands the log each completion that carries them
//! ([`crate::Log::complete`]). Tags are the log's: below [`LOG_TAG_LIMIT`].
//!
//! Nothing here owns buffers: whoever pushes a read or write keeps its memory alive and
//! unmoved until the completion is reaped (the log's stages live as long as the log).

use std::io;

use io_uring::{IoUring, squeue};

/// Tags the log uses are below this; a reactor may use the bits above to route completions.
pub const LOG_TAG_LIMIT: u64 = 1 << 48;

/// Where the log queues its operations.
pub trait Submit {
    /// Queues `entry`, whose user data is a log tag (below [`LOG_TAG_LIMIT`]). The operation
    /// need not start before [`Submit::flush`].
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()>;
    /// Hands queued entries to the kernel without waiting.
    fn flush(&mut self) -> io::Result<()>;
}

/// Submission queue entries of a standalone ring.
const RING_ENTRIES: u32 = 64;

/// A ring of the log's own, for standalone use.
pub struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

impl Ring {
    /// Sets up a ring; its io-wq workers run off the calling thread's core where possible.
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        spread_workers(&ring);
        Ok(Ring { ring })
    }

    /// Submits what is queued and blocks until at least one completion is ready.
    pub fn wait(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Calls `f(tag, result)` for every completion ready now. Makes no syscall.
    pub fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        for cqe in self.ring.completion() {
            f(cqe.user_data(), cqe.result());
        }
    }
}

impl Submit for Ring {
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: the log keeps every buffer an entry points at alive until its completion.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }
}

/// Keeps the kernel's io-wq workers of `ring` (they run what ext4 cannot issue without
/// blocking, such as fdatasync) off the calling thread's own core when the process may use
/// others. By default they inherit the submitter's pinning, so a busy shard and its own
/// syncs take turns on one core instead of overlapping. Best effort: kernels without
/// `IORING_REGISTER_IOWQ_AFF` keep the default.
pub fn spread_workers(ring: &IoUring) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: all-zero cpu_set_t values are empty sets; sched_getaffinity fills at most
    // `size` bytes: for pid 0 the calling thread's mask, for getpid() the main thread's
    // (the process's, not a pinned shard's).
    let (mut process, mut mine): (libc::cpu_set_t, libc::cpu_set_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: as above.
    let ok = unsafe {
        libc::sched_getaffinity(libc::getpid(), size, &mut process) == 0
            && libc::sched_getaffinity(0, size, &mut mine) == 0
    };
    if !ok {
        return;
    }
    let mut others = process;
    // SAFETY: the CPU_* helpers index within the fixed-size set (cpu < CPU_SETSIZE).
    let workers = unsafe {
        for cpu in 0..usize::try_from(libc::CPU_SETSIZE).unwrap_or(0) {
            if libc::CPU_ISSET(cpu, &mine) {
                libc::CPU_CLR(cpu, &mut others);
            }
        }
        if libc::CPU_COUNT(&others) > 0 {
            others
        } else {
            process
        }
    };
    let _ = ring.submitter().register_iowq_aff(&workers);
}
