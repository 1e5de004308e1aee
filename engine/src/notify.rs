//! Telling waiting consumers that events became visible, without costing the shard a
//! syscall when nobody waits.
//!
//! A consumer that has caught up has two choices: poll again at once (spinning, or yielding
//! between polls), or sleep until a shard publishes more. Spinning is the wrong default on a
//! machine with few cores: a thread that holds a core busy — even one that calls
//! `sched_yield` between polls — starves the kernel's per-CPU workers on that core, and those
//! workers complete the shard's direct writes into newly reserved file space. Measured here:
//! a yielding consumer on the core where a write's completion was queued held it off for
//! ~420 ms, stalling the shard behind it. [`Bus::poll_wait`](crate::Bus::poll_wait) sleeps
//! instead, on this notifier.
//!
//! Protocol: every shard bumps `epoch` after it published a batch (its records readable) and
//! wakes the futex only if `waiters` is non-zero. A consumer reads `epoch`, polls, and if it
//! found nothing registers as a waiter and sleeps while `epoch` is still what it read. Both
//! sides order their two accesses `SeqCst`, so either the shard sees the waiter (and wakes
//! it) or the waiter's futex sees the new epoch (and does not sleep): no wake-up is lost.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// An epoch signal with a futex under it: one bus's "events became visible", and any other
/// "something moved" a publisher announces to threads that wait for it (a fold's watermark,
/// say); see the module docs. The publisher never blocks and pays a syscall only when
/// someone sleeps.
#[derive(Debug, Default)]
pub struct Notify {
    epoch: AtomicU32,
    waiters: AtomicU32,
}

impl Notify {
    /// The current epoch: read it before polling, wait on it after an empty poll.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Shard side: records were published. One atomic add and one load; a futex wake only
    /// when a consumer sleeps.
    pub fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            futex_wake_all(&self.epoch);
        }
    }

    /// Consumer side: sleeps up to `timeout` unless the epoch moved past `seen`. May return
    /// early (a signal, a spurious wake-up); callers re-check.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.epoch.load(Ordering::SeqCst) == seen {
            futex_wait(&self.epoch, seen, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Longest single sleep; a longer wait sleeps again (the kernel's timeout range is finite).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_notify_after_the_epoch_was_read_ends_the_wait_at_once() {
        let n = Notify::default();
        let seen = n.epoch();
        n.notify();
        let t = Instant::now();
        n.wait(seen, Duration::from_secs(10));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slept through a notify"
        );
    }

    #[test]
    fn a_sleeping_waiter_is_woken_by_a_notify() {
        let n = Arc::new(Notify::default());
        let seen = n.epoch();
        let waiter = {
            let n = n.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                while n.epoch() == seen && t.elapsed() < Duration::from_secs(20) {
                    n.wait(seen, Duration::from_secs(20));
                }
                t.elapsed()
            })
        };
        // Notify only once the waiter is registered, so the wake (not the epoch check) is
        // what ends its sleep.
        while n.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        n.notify();
        assert!(
            waiter.join().unwrap() < Duration::from_secs(10),
            "never woken"
        );
    }

    #[test]
    fn a_wait_without_a_notify_times_out() {
        let n = Notify::default();
        let t = Instant::now();
        n.wait(n.epoch(), Duration::from_millis(20));
        assert!(t.elapsed() >= Duration::from_millis(15));
    }
}
