//! Feeds (copies of completed batches to another thread, with jumps where the ring was full)
//! and retention holds (segments a consumer has not read are kept past the limits).

mod common;

use std::time::{Duration, Instant};

use net_engine::{Bus, RetentionConfig, Seq, ShardId};

/// Follows shard 0 through the feed, reading from the log whatever the feed skipped, until
/// `total` events were seen; returns (events from the feed, events from the log).
fn follow(bus: &Bus, feed: &mut net_engine::FeedReader, total: u64) -> (u64, u64) {
    let mut reader = bus.shard_reader(ShardId(0)).unwrap();
    let (mut next, mut from_feed, mut from_log) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < total {
        assert!(Instant::now() < deadline, "stuck at {next} of {total}");
        let mut gap_at = None;
        feed.drain(1024, |r| {
            if r.seq < next {
                return true; // already read from the log
            }
            if r.seq > next {
                gap_at = Some(r.seq);
                return false; // read the gap from the log first
            }
            assert_eq!(common::parse(r.payload).1, r.seq, "byte-exact payload");
            assert!(r.ts_ns > 0);
            next += 1;
            from_feed += 1;
            true
        });
        if gap_at.is_some() || feed.is_empty() {
            let batch = reader.read(next, 4096, 1 << 20).unwrap();
            for r in &batch.records {
                assert_eq!(r.seq, next, "the log fills the gap in order");
                assert_eq!(common::parse(&r.payload).1, r.seq);
                next += 1;
                from_log += 1;
            }
            if batch.records.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    (from_feed, from_log)
}

#[test]
fn a_feed_delivers_batches_and_the_log_fills_what_did_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    // A 4 KiB ring and 300-byte events: most batches do not fit while nobody drains.
    let mut feed = bus.batch_feed(ShardId(0), "test-feed", 4096).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..5_000u64 {
        p.send_home(&common::payload(0, i, 300)).unwrap();
    }
    bus.flush().unwrap();
    let (from_feed, from_log) = follow(&bus, &mut feed, 5_000);
    assert_eq!(from_feed + from_log, 5_000);
    assert!(
        from_log > 0,
        "the small ring overflowed: the rest came from the log"
    );
    // With the reader keeping up, later batches come through the feed.
    for i in 5_000..5_010u64 {
        p.send_home(&common::payload(0, i, 100)).unwrap();
        bus.flush().unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 10 {
        feed.drain(100, |r| {
            if r.seq >= 5_000 {
                got.push(r.seq);
            }
            true
        });
    }
    assert_eq!(got, (5_000..5_010).collect::<Vec<_>>());
    let stats = bus.stats();
    let c = stats.shards[0]
        .consumers
        .iter()
        .find(|c| c.name == "test-feed")
        .expect("the feed is in the stats");
    assert!(c.batches_refused > 0 && c.batches_taken > 0, "{c:?}");
}

#[test]
fn a_feed_bad_capacity_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    let err = bus
        .batch_feed(ShardId(0), "x", 5000)
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_feed.capacity_bytes"), "{err}");
    assert!(bus.batch_feed(ShardId(9), "x", 4096).is_err());
}

#[test]
fn a_dropped_feed_reader_costs_the_shard_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    drop(bus.batch_feed(ShardId(0), "gone", 4096).unwrap());
    let mut p = bus.producer().unwrap();
    for i in 0..2_000u64 {
        p.send_home(&common::payload(0, i, 100)).unwrap();
    }
    bus.flush().unwrap();
    assert_eq!(common::poll_all(&bus, 2_000).len(), 2_000);
}

fn retained_first(bus: &Bus) -> u64 {
    bus.stats().shards[0].retained_first
}

#[test]
fn a_retention_hold_keeps_unread_segments_until_it_moves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 1);
    cfg.storage.segment_bytes = 128 << 10;
    cfg.storage.retention = RetentionConfig {
        max_events: Some(2000),
        ..RetentionConfig::default()
    };
    let bus = Bus::start(cfg).unwrap();
    let hold = bus.hold_retention(ShardId(0), Seq(0)).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..20_000u64 {
        p.send_home(&common::payload(0, i, 100)).unwrap();
    }
    bus.flush().unwrap();
    // Retention sweeps at least once a second; give it two.
    std::thread::sleep(Duration::from_millis(2_200));
    assert_eq!(retained_first(&bus), 0, "the hold at 0 kept every segment");

    hold.set(10_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while retained_first(&bus) == 0 {
        assert!(
            Instant::now() < deadline,
            "retention never moved after the hold did"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = retained_first(&bus);
    assert!(
        first <= 10_000,
        "nothing at or above the hold removed: first {first}"
    );

    drop(hold);
    let deadline = Instant::now() + Duration::from_secs(10);
    while retained_first(&bus) <= 10_000 {
        assert!(
            Instant::now() < deadline,
            "a dropped hold still held retention"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(20_000 - retained_first(&bus) <= 3000);
}
