//! Parking and waking a shard: the ring's park/wake handshake ([`Parker`]) over an eventfd
//! doorbell, so that a parked shard uses no CPU and a busy shard costs producers no syscall.
//!
//! The handshake (the `parked` flag and its SeqCst orderings) lives in `ring` and is
//! model-checked there; this module is only the doorbell: ringing writes the eventfd. A
//! running shard does not poll the eventfd itself: its reactor keeps a read of it outstanding
//! in the shard's io_uring, so a ring arrives as a completion while the shard waits on the
//! ring for I/O and deadlines too (`reactor.rs`). `Doorbell::wait` (a `poll` with a timeout)
//! serves anything that parks without a ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::ring::{Doorbell, Parker};

/// The wake-up channel of one shard.
pub(crate) type ShardSignal = Parker<EventFd>;

impl ShardSignal {
    pub(crate) fn new() -> io::Result<ShardSignal> {
        Ok(Parker::with_doorbell(EventFd::new()?))
    }
}

/// A non-blocking eventfd used as a doorbell.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// The descriptor a reactor reads to be woken.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }
}

impl Doorbell for EventFd {
    fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. EAGAIN (counter saturated)
        // means a wake-up is already pending, which is all we want.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn wait(&self, timeout_us: u64) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = i32::try_from(timeout_us.div_ceil(1000))
            .unwrap_or(i32::MAX)
            .max(1);
        // SAFETY: one valid pollfd; EINTR and timeouts simply end the wait.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        let mut buf = 0u64;
        // SAFETY: reads at most 8 bytes into a valid u64; the fd is non-blocking.
        unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut buf).cast(), 8) };
    }
}
