//! After warm-up, ingesting 100 000 events until they are persisted allocates nothing, on any
//! thread (producer and shards), counted by a global allocator; so does mirroring 100 000
//! events with their origin. A segment roll allocates a
//! few small objects (the new segment's index and map entry, the sealed index's bytes): a
//! bounded number per roll, never per event or per batch.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use net_engine::{Bus, Config, IdleStrategy, Origin, ShardId};

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// The counter is global: the tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

        let before = common::ALLOCS.load(Ordering::SeqCst);
        for i in 0..100_000u64 {
            p.send(&i.to_le_bytes(), &payload).unwrap();
        }
        wait_persisted(&stats, 120_000);
        let allocs = common::ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(
            allocs, 0,
            "{allocs} allocations while ingesting 100 000 events ({strategy:?})"
        );
        assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    }
}

/// The same for events sent with their origin (`MirrorProducer`): the origin block is written
/// into the lane and the record in place, decoded by the shard on the stack.
#[test]
fn mirrored_ingest_to_persisted_allocates_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut m = bus.mirror_producer().unwrap();
        let payload = [7u8; 100];
        let mut send = |i: u64| {
            let origin = Origin {
                node: 42,
                shard: u16::try_from(i % 4).unwrap(),
                seq: i,
            };
            let shard = ShardId(u16::try_from(i % 2).unwrap());
            m.send(shard, origin, &payload).unwrap();
        };
        (0..20_000u64).for_each(&mut send);
        wait_persisted(&stats, 20_000);

        let before = common::ALLOCS.load(Ordering::SeqCst);
        (20_000..120_000u64).for_each(&mut send);
        wait_persisted(&stats, 120_000);
        let allocs = common::ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(
            allocs, 0,
            "{allocs} allocations while mirroring 100 000 events ({strategy:?})"
        );
        drop(m);
        assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    }
}

/// Allocations one segment roll may make (segment handle and index, map version, seal chain).
const ALLOCS_PER_ROLL_MAX: u64 = 40;

#[test]
fn segment_rolls_allocate_a_bounded_amount_each() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().into(),
        shards: Some(1),
        pin: false,
        ..Config::default()
    };
    cfg.batch.max_bytes = 256 << 10;
    cfg.storage.segment_bytes = 1 << 20;
    let bus = Bus::start(cfg).unwrap();
    let stats = bus.stats_handle();
    let mut p = bus.producer().unwrap();
    let payload = [7u8; 100];
    for i in 0..20_000u64 {
        p.send(&i.to_le_bytes(), &payload).unwrap();
    }
    wait_persisted(&stats, 20_000);
    let segments = || {
        std::fs::read_dir(dir.path().join("shard-0000"))
            .unwrap()
            .count()
    };
    let files_before = segments();
    let before = common::ALLOCS.load(Ordering::SeqCst);
    for i in 0..100_000u64 {
        p.send(&i.to_le_bytes(), &payload).unwrap();
    }
    wait_persisted(&stats, 120_000);
    let allocs = common::ALLOCS.load(Ordering::SeqCst) - before;
    // Each roll adds a .dat and an .idx.
    let rolls = ((segments() - files_before) / 2) as u64;
    assert!(
        rolls >= 8,
        "100 000 records of 132 bytes roll 1 MiB segments: {rolls}"
    );
    assert!(
        allocs <= ALLOCS_PER_ROLL_MAX * rolls,
        "{allocs} allocations for {rolls} rolls"
    );
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}
