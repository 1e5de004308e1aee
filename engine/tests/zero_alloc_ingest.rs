//! After warm-up, ingesting 100 000 events until they are persisted allocates nothing, on any
//! thread (producer and shards), counted by a global allocator — including while segments
//! roll.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use net_engine::{Bus, Config, IdleStrategy};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn wait_persisted(bus: &net_engine::StatsHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while bus.totals().persisted < n {
        assert!(
            Instant::now() < deadline,
            "events were not persisted in time"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn ingest_to_persisted_allocates_nothing_after_warm_up() {
    for strategy in [IdleStrategy::Park, IdleStrategy::Spin] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            data_dir: dir.path().into(),
            shards: Some(2),
            pin: false,
            ..Config::default()
        };
        cfg.idle.strategy = strategy;
        let bus = Bus::start(cfg).unwrap();
        let stats = bus.stats_handle();
        let mut p = bus.producer().unwrap();
        let payload = [7u8; 100];
        for i in 0..20_000u64 {
            p.send(&i.to_le_bytes(), &payload).unwrap();
        }
        wait_persisted(&stats, 20_000);

        let before = ALLOCS.load(Ordering::SeqCst);
        for i in 0..100_000u64 {
            p.send(&i.to_le_bytes(), &payload).unwrap();
        }
        wait_persisted(&stats, 120_000);
        let allocs = ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(
            allocs, 0,
            "{allocs} allocations while ingesting 100 000 events ({strategy:?})"
        );
        assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    }
}
