//! Waking readers that wait for a fold to reach a sequence number, without costing the
//! publisher (the shard thread) anything but an atomic add while nobody waits.
//!
//! Protocol: the publisher bumps `epoch` after it stored the new watermark, and wakes the
//! futex only if `waiters` is non-zero. A waiter reads `epoch`, checks the watermark, and if
//! it is not there yet registers as a waiter and sleeps while `epoch` is still what it read.
//! Both sides order their two accesses `SeqCst`, so either the publisher sees the waiter (and
//! wakes it) or the waiter's futex sees the new epoch (and does not sleep): no wake-up is
//! lost, and the publisher never blocks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// One shard's "the fold moved" signal; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    epoch: AtomicU32,
    waiters: AtomicU32,
}

impl Signal {
    /// The current epoch: read it before checking, wait on it after.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Publisher side: something changed (the watermark, the status).
    pub(crate) fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            futex_wake_all(&self.epoch);
        }
    }

    /// Waiter side: sleeps up to `timeout` unless the epoch moved past `seen`. May return
    /// early; callers re-check.
    pub(crate) fn wait(&self, seen: u32, timeout: Duration) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == seen {
            futex_wait(&self.epoch, seen, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest single sleep; a longer wait sleeps again.
const SLEEP_MAX: Duration = Duration::from_secs(3600);

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = timeout.min(SLEEP_MAX);
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: FUTEX_WAIT reads the u32 at `word` (a live atomic) and the timespec we pass; it
    // keeps neither. EAGAIN (the value changed), EINTR and ETIMEDOUT all just end the wait.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &raw const ts,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; no memory is accessed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}
