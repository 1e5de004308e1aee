//! A thin io_uring wrapper owned by one shard's log: the log's writes and syncs are submitted
//! here in batches and reaped without allocation (the ring's queues are fixed at setup).
//!
//! This is the only place of the crate that talks to io_uring. It holds no buffers: callers
//! keep every submitted buffer alive and unmoved until its completion is reaped (the log's
//! stages are allocated once and never freed while a write is in flight).

use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Submission queue entries: two writes and one sync per batch, with room to spare.
pub(crate) const RING_ENTRIES: u32 = 16;

pub(crate) struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

/// Lets the kernel's io-wq workers of this ring (which run the writes ext4 cannot issue
/// without blocking, such as O_DIRECT writes that extend a file) run on any CPU the process
/// may use. By default they inherit the shard thread's pinning and compete with it for its one
/// core. Best effort: kernels without `IORING_REGISTER_IOWQ_AFF` keep the default.
fn spread_workers(ring: &IoUring) {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills it for the
    // process's main thread (whose mask is the process's, not a pinned shard's).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: writes at most `size` bytes into `set`.
    if unsafe { libc::sched_getaffinity(libc::getpid(), size, &mut set) } == 0 {
        let _ = ring.submitter().register_iowq_aff(&set);
    }
}

impl Ring {
    pub(crate) fn new() -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        spread_workers(&ring);
        Ok(Ring { ring })
    }

    /// Queues a write of `len` bytes from `buf` at `offset` of `fd`. With `link`, the next
    /// queued entry starts only after this write succeeded (`IOSQE_IO_LINK`).
    ///
    /// # Safety
    /// `buf` must stay valid and unmodified for `len` bytes until the completion tagged `tag` is
    /// reaped.
    pub(crate) unsafe fn push_write(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
        tag: u64,
        link: bool,
    ) {
        let mut entry = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .user_data(tag);
        if link {
            entry = entry.flags(squeue::Flags::IO_LINK);
        }
        // SAFETY: the caller guarantees the buffer outlives the operation; the queue has room
        // because the log never has more than RING_ENTRIES operations outstanding.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .expect("io_uring submission queue full")
        };
    }

    /// Queues an `fdatasync` of `fd`. Queued right after a write pushed with `link`, it starts
    /// only once that write succeeded, and completes with `-ECANCELED` if the write failed.
    pub(crate) fn push_fdatasync(&mut self, fd: RawFd, tag: u64) {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(tag);
        // SAFETY: an fsync references no memory.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .expect("io_uring submission queue full")
        };
    }

    /// Hands queued entries to the kernel without waiting.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(|_| ())
    }

    /// Hands queued entries to the kernel and blocks until `want` completions are ready.
    pub(crate) fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Calls `f(tag, result)` for every completion ready now. Makes no syscall.
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        for cqe in self.ring.completion() {
            f(cqe.user_data(), cqe.result());
        }
    }
}
