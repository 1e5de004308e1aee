//! The counter invariant under concurrent producers and observers, the flush barrier, exact
//! accounting on a deadline shutdown, on a bus dropped without shutdown, and with a panicked
//! shard.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use net_engine::{Backpressure, Bus, Cursor, SendError, ShardId};

#[test]
fn invariant_holds_at_every_observation_and_a_deadline_shutdown_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 2);
    cfg.lane.capacity_bytes = 8192;
    cfg.lane.backpressure = Backpressure::DropNewest;
    let bus = Bus::start(cfg.clone()).unwrap();
    let handle = bus.stats_handle();
    let stop = AtomicBool::new(false);
    let persisted = std::thread::scope(|s| {
        for p in 0..3u32 {
            let mut prod = bus.producer().unwrap();
            let stop = &stop;
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match prod.send(&n.to_le_bytes(), &common::payload(p, n, 64)) {
                        Ok(_) => n += 1,
                        Err(SendError::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
        let observer = s.spawn(|| {
            let mut last = net_engine::Totals::default();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut observations = 0;
            // At least 2000 observations, and until the producers' traffic is under way.
            while observations < 2000 || last.persisted == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "producers never got going"
                );
                observations += 1;
                // totals() panics if in_flight would be negative (persisted + dropped > ingested).
                let t = handle.totals();
                assert_eq!(t.ingested, t.persisted + t.dropped + t.in_flight);
                assert!(
                    t.ingested >= last.ingested
                        && t.persisted >= last.persisted
                        && t.dropped >= last.dropped
                );
                last = t;
            }
            last
        });
        let seen = observer.join().unwrap();
        assert!(seen.ingested > 0);
        bus.flush().unwrap();
        // Shut down while producers still send: the deadline is too short to drain.
        let report = bus.shutdown(Duration::from_millis(1));
        stop.store(true, Ordering::Relaxed);
        let t = report.stats.total;
        assert_eq!(t.in_flight, 0);
        assert_eq!(t.ingested, t.persisted + t.dropped);
        t.persisted
    });
    // Everything counted persisted is on disk, exactly once.
    let bus = Bus::start(cfg).unwrap();
    let events = common::poll_all(&bus, persisted as usize);
    assert_eq!(events.len() as u64, persisted);
    assert!(bus.poll(&Cursor::start(), 1).is_ok());
    let resp = bus.poll(&events_cursor(&bus, persisted), 10).unwrap();
    assert!(
        resp.events.is_empty(),
        "no event beyond the persisted count"
    );
}

fn events_cursor(bus: &Bus, total: u64) -> Cursor {
    let mut cursor = Cursor::start();
    let mut read = 0;
    while read < total {
        let resp = bus.poll(&cursor, 10_000).unwrap();
        read += resp.events.len() as u64;
        cursor = resp.next;
    }
    cursor
}

#[test]
fn flush_is_not_satisfied_by_traffic_sent_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    bus.pause_shard(ShardId(0), true).unwrap();
    bus.flush().unwrap();
    for i in 0..10 {
        p.send_to(0, &common::payload(0, i, 32)).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(bus.flush()).unwrap());
        // Post-flush traffic on the other shard, much more than the pre-flush events.
        for i in 0..5000 {
            p.send_to(1, &common::payload(1, i, 32)).unwrap();
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "flush returned while pre-flush events of shard 0 were still queued"
        );
        bus.pause_shard(ShardId(0), false).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    });
    let shard0 = &bus.stats().shards[0];
    assert_eq!(
        shard0.totals.persisted, 10,
        "every pre-flush event is persisted when flush returns"
    );
}

#[test]
fn dropping_the_bus_without_shutdown_records_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    let handle = bus.stats_handle();
    let mut p = bus.producer().unwrap();
    bus.pause_shard(ShardId(0), true).unwrap();
    bus.flush().unwrap();
    for i in 0..100 {
        p.send_home(&common::payload(0, i, 32)).unwrap();
    }
    drop(bus);
    let s = handle.snapshot();
    assert!(s.lossy);
    assert_eq!(
        (s.total.ingested, s.total.dropped, s.total.in_flight),
        (100, 100, 0)
    );
    assert_eq!(p.send_home(b"after"), Err(SendError::Closed));
}

#[test]
fn a_panicked_shard_is_surfaced_and_its_events_counted() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..100 {
        p.send_to(0, &common::payload(0, i, 32)).unwrap();
    }
    bus.flush().unwrap();
    // Shard 1 is paused, so its 50 events are still in its lane when the panic (handled
    // after the pause, in order) ends its thread.
    bus.pause_shard(ShardId(1), true).unwrap();
    for i in 0..50 {
        p.send_to(1, &common::payload(1, i, 32)).unwrap();
    }
    bus.inject_shard_panic(ShardId(1)).unwrap();
    let report = bus.shutdown(Duration::from_secs(2));
    assert_eq!(report.panicked_shards.len(), 1);
    assert_eq!(report.panicked_shards[0].0, ShardId(1));
    assert!(report.panicked_shards[0].1.contains("injected panic"));
    assert!(report.lossy);
    let s1 = &report.stats.shards[1];
    assert!(s1.panicked);
    assert_eq!(
        (s1.totals.ingested, s1.totals.dropped, s1.totals.in_flight),
        (50, 50, 0)
    );
    assert_eq!(report.stats.shards[0].totals.persisted, 100);
    assert!(
        report
            .stats
            .errors
            .iter()
            .any(|(s, e)| *s == ShardId(1) && e.contains("panicked"))
    );
}
