//! Each backpressure mode: what `send` does when a lane is full, and how it is counted.
//! The shard is paused so that its lane fills deterministically.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use net_engine::{Backpressure, Bus, SendError, Sent, ShardId};

const LANE_BYTES: usize = 4096;

fn paused_bus(dir: &std::path::Path, mode: Backpressure) -> Bus {
    let mut cfg = common::config(dir, 1);
    cfg.lane.capacity_bytes = LANE_BYTES;
    cfg.lane.backpressure = mode;
    let bus = Bus::start(cfg).unwrap();
    bus.pause_shard(ShardId(0), true).unwrap();
    bus.flush().unwrap(); // control messages are handled in order: the pause is in effect
    bus
}

/// Sends `n` 48-byte events (64 lane bytes each: 64 fit a 4 KiB lane); returns the outcomes.
fn send_n(p: &mut net_engine::Producer, n: u64) -> Vec<Result<Sent, SendError>> {
    (0..n)
        .map(|i| p.send_home(&common::payload(0, i, 48)))
        .collect()
}

fn resume_and_read(bus: &Bus, expect: usize) -> Vec<u64> {
    bus.pause_shard(ShardId(0), false).unwrap();
    bus.flush().unwrap();
    common::poll_all(bus, expect)
        .iter()
        .map(|e| common::parse(&e.payload).1)
        .collect()
}

#[test]
fn fail_returns_full_and_does_not_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::Fail);
    let mut p = bus.producer().unwrap();
    let out = send_n(&mut p, 100);
    let queued = out.iter().filter(|r| **r == Ok(Sent::Queued)).count();
    assert_eq!(queued, 64);
    assert!(
        out[64..]
            .iter()
            .all(|r| *r == Err(SendError::Full(ShardId(0))))
    );
    let t = bus.stats().total;
    assert_eq!((t.ingested, t.rejected, t.dropped), (64, 36, 0));
    assert_eq!(resume_and_read(&bus, 64), (0..64).collect::<Vec<_>>());
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}

#[test]
fn drop_newest_keeps_the_first_events() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::DropNewest);
    let mut p = bus.producer().unwrap();
    let out = send_n(&mut p, 100);
    assert!(out[64..].iter().all(|r| *r == Ok(Sent::Dropped)));
    let t = bus.stats().total;
    assert_eq!((t.ingested, t.dropped, t.rejected), (100, 36, 0));
    assert_eq!(resume_and_read(&bus, 64), (0..64).collect::<Vec<_>>());
    let report = bus.shutdown(Duration::from_secs(5));
    assert_eq!(
        (report.stats.total.persisted, report.stats.total.dropped),
        (64, 36)
    );
    assert!(!report.lossy, "backpressure drops are not shutdown loss");
}

#[test]
fn drop_oldest_keeps_the_newest_events() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::DropOldest);
    let mut p = bus.producer().unwrap();
    let out = send_n(&mut p, 100);
    assert!(out.iter().all(|r| *r == Ok(Sent::Queued)));
    let t = bus.stats().total;
    assert_eq!((t.ingested, t.dropped, t.in_flight), (100, 36, 64));
    assert_eq!(resume_and_read(&bus, 64), (36..100).collect::<Vec<_>>());
    assert_eq!(
        bus.shutdown(Duration::from_secs(5)).stats.total.persisted,
        64
    );
}

#[test]
fn drop_oldest_under_a_running_shard_loses_no_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 1);
    cfg.lane.capacity_bytes = LANE_BYTES;
    cfg.lane.backpressure = Backpressure::DropOldest;
    let bus = Bus::start(cfg).unwrap();
    let mut p = bus.producer().unwrap();
    let out = send_n(&mut p, 50_000);
    assert!(out.iter().all(|r| r.is_ok()));
    bus.flush().unwrap();
    let t = bus.stats().total;
    assert_eq!(t.ingested, 50_000);
    assert_eq!(t.persisted + t.dropped, 50_000);
    let got = common::poll_all(&bus, t.persisted as usize);
    let ns: Vec<u64> = got.iter().map(|e| common::parse(&e.payload).1).collect();
    assert_eq!(ns.len() as u64, t.persisted);
    assert!(
        ns.windows(2).all(|w| w[0] < w[1]),
        "survivors keep their order"
    );
    assert_eq!(
        ns.last(),
        Some(&49_999),
        "the newest event is never the one dropped"
    );
}

#[test]
fn sample_admits_one_in_rate_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::Sample { rate: 4 });
    let mut p = bus.producer().unwrap();
    let out = send_n(&mut p, 200);
    // Below 3/4 full (48 events) everything is admitted; above it one in four, until full.
    assert!(out[..48].iter().all(|r| *r == Ok(Sent::Queued)));
    let admitted_after: Vec<usize> = (48..200).filter(|&i| out[i] == Ok(Sent::Queued)).collect();
    assert_eq!(
        admitted_after.len(),
        16,
        "the last quarter of the lane fills at one in four"
    );
    let t = bus.stats().total;
    assert_eq!((t.ingested, t.dropped), (200, 200 - 64));
    assert_eq!(resume_and_read(&bus, 64).len(), 64);
}

#[test]
fn block_waits_for_room_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::Block);
    let mut p = bus.producer().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        let out = send_n(&mut p, 1000);
        tx.send(()).unwrap();
        out
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a full lane blocks the sender"
    );
    bus.pause_shard(ShardId(0), false).unwrap();
    let out = sender.join().unwrap();
    assert!(out.iter().all(|r| *r == Ok(Sent::Queued)));
    bus.flush().unwrap();
    let t = bus.stats().total;
    assert_eq!((t.ingested, t.persisted, t.dropped), (1000, 1000, 0));
    assert_eq!(resume_and_read(&bus, 1000), (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_blocked_sender_is_released_by_shutdown_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::Block);
    let mut p = bus.producer().unwrap();
    let sender = std::thread::spawn(move || {
        let out = send_n(&mut p, 100);
        let after = p.send_home(b"late");
        (out, after)
    });
    // Wait until the sender has filled the lane and is blocked on the 65th event.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bus.stats().total.ingested < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sender never filled the lane"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = bus.shutdown(Duration::from_millis(100));
    let (out, after) = sender.join().unwrap();
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 64);
    assert!(out[64..].iter().all(|r| *r == Err(SendError::Closed)));
    assert_eq!(after, Err(SendError::Closed));
    let t = report.stats.total;
    assert_eq!(t.ingested, 64, "refused sends are not ingested");
    assert_eq!(t.persisted + t.dropped, 64);
    assert_eq!(t.in_flight, 0);
}

#[test]
fn oversized_payloads_are_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let bus = paused_bus(dir.path(), Backpressure::Block);
    let mut p = bus.producer().unwrap();
    let max = p.payload_bytes_max();
    assert_eq!(
        p.send_home(&vec![0; max + 1]),
        Err(SendError::TooLarge { len: max + 1, max })
    );
    assert_eq!(bus.stats().total.ingested, 0);
}
