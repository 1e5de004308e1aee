//! Producers come and go (one per request, one per short-lived thread): a dropped producer's
//! lanes are retired by their shards once drained and durable, so rings do not pile up, and
//! what those producers sent stays counted and readable.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use net_engine::Bus;

#[test]
fn dropped_producers_lanes_are_retired_and_their_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let keep = bus.producer().unwrap();
    for p in 0..200u32 {
        let mut prod = bus.producer().unwrap();
        for n in 0..10u64 {
            prod.send(&n.to_le_bytes(), &common::payload(p, n, 24))
                .unwrap();
        }
    }
    bus.flush().unwrap();
    let live = (0..2500)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(2));
            bus.stats().shards.iter().map(|s| s.lanes).sum::<usize>()
        })
        .find(|&n| n == 2)
        .expect("dropped producers' lanes were not retired");
    assert_eq!(live, 2, "only the live producer's two lanes remain");
    let s = bus.stats();
    assert_eq!(
        (s.total.ingested, s.total.persisted),
        (2000, 2000),
        "retired lanes stay counted"
    );
    assert_eq!(common::poll_all(&bus, 2000).len(), 2000);
    drop(keep);
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}
