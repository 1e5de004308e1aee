//! Counting global allocator: every `alloc`, `alloc_zeroed` and `realloc` of the process is
//! counted, with its size, so that a scenario can report allocations per event.
//!
//! The counters are relaxed `AtomicU64`s striped over cache-line-sized slots, one slot per
//! thread (modulo `SLOTS`). A single shared counter would itself be the contended cache line
//! that the hot-path rule forbids, and it would tax the allocation-heavy baseline more than
//! net, skewing the very ratio the bench reports. Reading sums the slots; a read is exact for
//! every allocation that happened-before it (the caller joins or synchronises with the
//! threads it measures).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Number of counter stripes; more than the threads a bench run starts on a small machine.
const SLOTS: usize = 64;

#[repr(align(128))]
struct Slot {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise `STRIPES`
const EMPTY_SLOT: Slot = Slot {
    allocations: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

static STRIPES: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` init and a `Drop`-free type: no lazy registration, so reading it from inside
    // the allocator can never allocate or recurse.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The process-wide allocator: `System`, plus counting.
#[derive(Debug)]
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A reading of the counters; subtract two readings to measure a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub allocations: u64,
    pub bytes: u64,
}

impl Snapshot {
    /// Allocations and bytes from `earlier` to `self`.
    pub fn since(self, earlier: Snapshot) -> Snapshot {
        Snapshot {
            allocations: self.allocations - earlier.allocations,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// Allocations made by the process so far.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the scenarios read `snapshot` for bytes too")
)]
pub fn count() -> u64 {
    snapshot().allocations
}

/// Allocations and allocated bytes made by the process so far.
pub fn snapshot() -> Snapshot {
    STRIPES
        .iter()
        .fold(Snapshot::default(), |sum, slot| Snapshot {
            allocations: sum.allocations + slot.allocations.load(Ordering::Relaxed),
            bytes: sum.bytes + slot.bytes.load(Ordering::Relaxed),
        })
}

/// `THREAD_SLOT` of a thread whose allocations are not counted.
const UNCOUNTED: usize = usize::MAX - 1;

/// Leaves the calling thread's allocations out of the counts from now on: for the bench's
/// own bookkeeping threads (the progress bar's ticker), never for a measured design's.
pub fn uncounted() {
    THREAD_SLOT.with(|cell| cell.set(UNCOUNTED));
}

fn record(size: usize) {
    let slot = THREAD_SLOT
        .try_with(|cell| {
            if cell.get() == usize::MAX {
                cell.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS);
            }
            cell.get()
        })
        .unwrap_or(0);
    if slot == UNCOUNTED {
        return;
    }
    let stripe = &STRIPES[slot];
    stripe.allocations.fetch_add(1, Ordering::Relaxed);
    stripe.bytes.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are ours; counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with `layout`, and that `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_made_by_this_thread() {
        let before = snapshot();
        let boxed = std::hint::black_box(Box::new([0u8; 1000]));
        let after = snapshot().since(before);
        drop(boxed);
        // Other test threads may allocate concurrently, so only a lower bound holds.
        assert!(after.allocations >= 1);
        assert!(after.bytes >= 1000);
        assert!(count() > before.allocations);
    }

    #[test]
    fn an_uncounted_thread_adds_nothing() {
        let allocated = std::thread::spawn(|| {
            uncounted();
            let before = snapshot();
            // Other test threads may allocate meanwhile; a large, odd size stands out.
            let boxed = std::hint::black_box(vec![0u8; 12_345_679]);
            let bytes = snapshot().since(before).bytes;
            drop(boxed);
            bytes
        })
        .join()
        .unwrap();
        assert!(allocated < 12_345_679, "{allocated} bytes counted");
    }

    #[test]
    fn counts_realloc_as_an_allocation() {
        let mut v: Vec<u8> = Vec::with_capacity(8);
        let before = snapshot();
        v.reserve_exact(4096);
        std::hint::black_box(&v);
        let after = snapshot().since(before);
        assert!(after.allocations >= 1);
        assert!(after.bytes >= 4096);
    }
}
