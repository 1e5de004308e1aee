//! The atomics the ring's protocols run on: std's in a normal build, loom's under `cfg(loom)`,
//! so that `scripts/test.sh` can model-check every interleaving of the very code that runs.
//!
//! loom 0.7 models a SeqCst load or store as AcqRel (tokio-rs/loom#180); only `fence(SeqCst)`
//! is modelled exactly. Both of the ring's Dekker handshakes (close, park) rely on what SeqCst
//! adds over AcqRel: a SeqCst store followed by a SeqCst load of another location is not
//! reordered (the store-buffering litmus test). Modelled as AcqRel they would "fail" in loom
//! although they are correct. So under loom the wrappers below put a SeqCst fence before a
//! SeqCst load whenever the same thread did a SeqCst store since its last such fence: the
//! store→load order the handshakes use (the fence also orders the accesses between the two, a
//! slight over-approximation). Weakening either access of a pair (the store to Release, or the
//! load to Acquire) removes the fence, so loom still catches it. The normal build uses std's
//! types, untouched.

pub(crate) use std::sync::atomic::Ordering;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(loom)]
pub(crate) use model::{AtomicBool, AtomicU64};

#[cfg(loom)]
mod model {
    use std::cell::Cell;
    use std::sync::atomic::Ordering;

    loom::thread_local! {
        /// This thread did a SeqCst store that no SeqCst fence has followed yet.
        static SEQ_CST_STORE_PENDING: Cell<bool> = Cell::new(false);
    }

    fn after_store(order: Ordering) {
        if order == Ordering::SeqCst {
            SEQ_CST_STORE_PENDING.with(|p| p.set(true));
        }
    }

    fn before_load(order: Ordering) {
        if order == Ordering::SeqCst && SEQ_CST_STORE_PENDING.with(|p| p.replace(false)) {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// loom's `AtomicU64` with SeqCst store→load order (see the module docs).
    #[derive(Debug)]
    pub(crate) struct AtomicU64(loom::sync::atomic::AtomicU64);

    impl AtomicU64 {
        #[track_caller]
        pub(crate) fn new(v: u64) -> AtomicU64 {
            AtomicU64(loom::sync::atomic::AtomicU64::new(v))
        }

        #[track_caller]
        pub(crate) fn load(&self, order: Ordering) -> u64 {
            before_load(order);
            self.0.load(order)
        }

        #[track_caller]
        pub(crate) fn store(&self, v: u64, order: Ordering) {
            self.0.store(v, order);
            after_store(order);
        }

        #[track_caller]
        pub(crate) fn compare_exchange(
            &self,
            current: u64,
            new: u64,
            success: Ordering,
            failure: Ordering,
        ) -> Result<u64, u64> {
            before_load(success);
            let r = self.0.compare_exchange(current, new, success, failure);
            after_store(success);
            r
        }

        #[track_caller]
        pub(crate) fn fetch_max(&self, v: u64, order: Ordering) -> u64 {
            before_load(order);
            let r = self.0.fetch_max(v, order);
            after_store(order);
            r
        }
    }

    /// loom's `AtomicBool` with SeqCst store→load order (see the module docs).
    #[derive(Debug)]
    pub(crate) struct AtomicBool(loom::sync::atomic::AtomicBool);

    impl AtomicBool {
        #[track_caller]
        pub(crate) fn new(v: bool) -> AtomicBool {
            AtomicBool(loom::sync::atomic::AtomicBool::new(v))
        }

        #[track_caller]
        pub(crate) fn load(&self, order: Ordering) -> bool {
            before_load(order);
            self.0.load(order)
        }

        #[track_caller]
        pub(crate) fn store(&self, v: bool, order: Ordering) {
            self.0.store(v, order);
            after_store(order);
        }
    }
}
