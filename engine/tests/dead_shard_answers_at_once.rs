//! Hardening: after a shard's thread panicked, `flush()` waited its full hour, `send_durable`
//! to that shard never returned, and `stats()` showed nothing until shutdown. A dead shard's
//! failure is visible at once, with the panic message, to every call that needs the shard,
//! and none of them blocks on it; calls that do not need it keep working. Also: valid input
//! that used to panic (`Duration::MAX` timeouts, a shard index beyond the bus) is answered.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use net_engine::{
    Backpressure, Bus, Cursor, Error, EventId, SendError, Seq, ShardFailure, ShardId,
};

/// Waits until the stats show shard `s` dead (the panic is handled by the shard's thread,
/// a moment after the request).
fn wait_dead(bus: &Bus, s: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bus.stats().shards[s].panicked {
        assert!(
            Instant::now() < deadline,
            "the panic never showed in the stats"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn every_call_that_needs_a_dead_shard_fails_at_once_with_its_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 2);
    cfg.lane.capacity_bytes = 4096;
    let bus = Bus::start(cfg).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..20 {
        p.send_to(1, &common::payload(1, i, 32)).unwrap();
    }
    bus.flush().unwrap();
    bus.inject_shard_panic(ShardId(1)).unwrap();
    wait_dead(&bus, 1);

    let s = bus.stats();
    let failure = s.shards[1].failure.clone();
    assert!(
        matches!(&failure, Some(ShardFailure::Panicked(m)) if m.contains("injected panic")),
        "{failure:?}"
    );
    assert!(
        s.errors
            .iter()
            .any(|(id, e)| *id == ShardId(1) && e.contains("injected panic"))
    );

    let started = Instant::now();
    match bus.flush() {
        Err(Error::ShardPanicked { shard, message }) => {
            assert_eq!(shard, ShardId(1));
            assert!(message.contains("injected panic"), "{message}");
        }
        other => panic!("flush on a dead shard: {other:?}"),
    }
    let ids = [EventId {
        shard: ShardId(1),
        seq: Seq(1_000),
    }];
    assert!(matches!(
        bus.wait_durable(&ids, Duration::MAX),
        Err(Error::ShardPanicked { .. })
    ));
    let resp = bus.poll(&Cursor::start(), 100).unwrap();
    assert!(
        resp.failed_shards.iter().any(|(s, e)| *s == ShardId(1)
            && matches!(e, Error::ShardPanicked { message, .. } if message.contains("injected"))),
        "{:?}",
        resp.failed_shards
    );
    assert_eq!(
        resp.events
            .iter()
            .filter(|e| e.id.shard == ShardId(1))
            .count(),
        20,
        "what the dead shard made durable is still readable"
    );
    // A full lane to a dead shard: `block` would wait forever; it fails instead.
    let mut refused = None;
    for i in 0..1000 {
        match p.send_to(1, &common::payload(1, i, 64)) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(SendError::Failed(ShardId(1))));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "nothing waited for the dead shard"
    );

    // The live shard keeps working.
    for i in 0..20 {
        p.send_to(0, &common::payload(0, i, 32)).unwrap();
    }
    assert!(matches!(bus.flush(), Err(Error::ShardPanicked { .. })));
    let report = bus.shutdown(Duration::from_secs(5));
    assert_eq!(report.panicked_shards.len(), 1);
    assert_eq!(report.stats.shards[0].totals.persisted, 20);
    assert_eq!(report.stats.total.in_flight, 0);
}

#[test]
fn send_durable_to_a_dead_shard_returns_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 1);
    cfg.lane.backpressure = Backpressure::Block;
    let bus = Bus::start(cfg).unwrap();
    let mut p = bus.producer().unwrap();
    bus.inject_shard_panic(ShardId(0)).unwrap();
    wait_dead(&bus, 0);
    assert_eq!(
        p.send_durable(b"key", b"value"),
        Err(SendError::Failed(ShardId(0)))
    );
    drop(p);
    bus.shutdown(Duration::from_secs(1));
}

#[test]
fn valid_input_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    p.send(b"k", b"v").unwrap();
    bus.flush_timeout(Duration::MAX).unwrap();
    let resp = bus.poll(&Cursor::start(), 10).unwrap();
    let ids: Vec<EventId> = resp.events.iter().map(|e| e.id).collect();
    bus.wait_durable(&ids, Duration::MAX).unwrap();
    assert!(matches!(
        bus.pause_shard(ShardId(99), true),
        Err(Error::NoSuchShard {
            shard: ShardId(99),
            shards: 2
        })
    ));
    assert!(matches!(
        bus.inject_shard_panic(ShardId(2)),
        Err(Error::NoSuchShard { .. })
    ));
    assert!(bus.shard_reader(ShardId(7)).is_err());
    assert_eq!(
        p.send_to(2, b"x"),
        Err(SendError::NoSuchShard {
            shard: 2,
            shards: 2
        })
    );
    // Every shard id a cursor can carry: at most SHARDS_MAX of them, refused beyond.
    let mut c = Cursor::start();
    for s in 0..net_engine::config::SHARDS_MAX as u16 {
        c.set(ShardId(s), Seq(u64::from(s))).unwrap();
    }
    assert!(c.set(ShardId(u16::MAX), Seq(0)).is_err());
    let back = Cursor::decode(&c.encode()).unwrap();
    assert_eq!(back, c);
    assert!(
        bus.poll(&c, 1).is_err(),
        "shards beyond this bus are refused, not a panic"
    );
    drop(p);
    bus.shutdown(Duration::from_secs(5));
}
