//! Parking and waking a shard: an eventfd plus a `parked` flag, so that a parked shard uses no
//! CPU and a busy shard costs producers no syscall.
//!
//! The handshake is Dekker's, and both sides are `SeqCst` (the v0.10 mesh used `AcqRel` on one
//! side, which only happens to work on x86):
//! - shard: `parked = true`; check every component for work; wait on its ring (which holds a
//!   read of the eventfd) only if there is none.
//! - producer: publish `head`; then, if `parked`, write the eventfd.
//!
//! Either the shard's check sees the new head, or the producer's load sees `parked` and
//! wakes it. A wake-up with nothing to do is harmless (the counter is drained on wake).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::CachePadded;

/// The wake-up channel of one shard.
#[derive(Debug)]
pub(crate) struct ShardSignal {
    parked: CachePadded<AtomicBool>,
    fd: OwnedFd,
}

impl ShardSignal {
    pub(crate) fn new() -> io::Result<ShardSignal> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ShardSignal {
            parked: CachePadded::new(AtomicBool::new(false)),
            fd,
        })
    }

    /// The eventfd the shard's reactor keeps a read on.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Producer side, after publishing: wake the shard if it parked.
    #[inline]
    pub(crate) fn wake_if_parked(&self) {
        if self.parked.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Wakes the shard unconditionally (control messages).
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. EAGAIN (counter saturated)
        // means a wake-up is already pending, which is all we want.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Shard side: announce the intent to park. Follow with the emptiness checks, then
    /// [`ShardSignal::park`] or [`ShardSignal::unpark`].
    pub(crate) fn prepare_park(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Shard side: work was found after `prepare_park`.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }
}
