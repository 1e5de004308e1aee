//! Through lanes and batches, each producer's events arrive in order per shard, none is lost
//! or duplicated, and payloads come back byte for byte — over ring sizes, batch sizes and
//! shard counts.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::HashMap;

use net_engine::Bus;
use proptest::prelude::*;

fn run(
    shards: usize,
    lane_bytes: usize,
    batch_events: usize,
    producers: u32,
    per_producer: u64,
    len: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), shards);
    cfg.lane.capacity_bytes = lane_bytes;
    cfg.batch.max_events = batch_events;
    let bus = Bus::start(cfg).unwrap();
    std::thread::scope(|s| {
        for p in 0..producers {
            let mut prod = bus.producer().unwrap();
            s.spawn(move || {
                for n in 0..per_producer {
                    let key = (u64::from(p) * 1_000_003 + n % 5).to_le_bytes();
                    prod.send(&key, &common::payload(p, n, len + (n % 7) as usize))
                        .unwrap();
                }
            });
        }
    });
    bus.flush().unwrap();
    let total = (u64::from(producers) * per_producer) as usize;
    let events = common::poll_all(&bus, total);
    assert_eq!(events.len(), total);
    let mut last: HashMap<(u16, u32), u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        let (p, n) = common::parse(&e.payload);
        assert_eq!(
            &e.payload[..],
            &common::payload(p, n, len + (n % 7) as usize)[..]
        );
        assert!(seen.insert((p, n)), "duplicate event {p}/{n}");
        if let Some(prev) = last.insert((e.id.shard.0, p), n) {
            assert!(
                prev < n,
                "producer {p} out of order on shard {}: {prev} then {n}",
                e.id.shard
            );
        }
    }
    let report = bus.shutdown(std::time::Duration::from_secs(10));
    assert!(!report.lossy);
    assert_eq!(report.stats.total.persisted, total as u64);
    assert_eq!(report.stats.total.in_flight, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn order_and_completeness(
        shards in 1usize..4,
        lane_pow in 12u32..17,
        batch_events in prop_oneof![Just(1usize), 2usize..64, Just(1000usize)],
        producers in 1u32..4,
        per_producer in 1u64..3000,
        len in 12usize..200,
    ) {
        run(shards, 1 << lane_pow, batch_events, producers, per_producer, len);
    }
}

#[test]
fn a_large_run_through_small_lanes_and_rolling_segments() {
    run(2, 4096, 64, 3, 20_000, 100);
}
