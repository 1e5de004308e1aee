//! fsync policies and their watermarks (`send_durable`, `wait_durable`, flush honouring the
//! policy), their config, and retention as the bus applies it (polls below the retained range
//! skip forward and say so).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use net_engine::{Bus, Config, Cursor, Error, EventId, FsyncPolicy, RetentionConfig, Sent};

fn bus(dir: &std::path::Path, fsync: FsyncPolicy) -> Bus {
    let mut cfg = common::config(dir, 2);
    cfg.storage.fsync = fsync;
    Bus::start(cfg).unwrap()
}

#[test]
fn send_durable_returns_once_the_event_is_synced() {
    for policy in [
        FsyncPolicy::EveryBatch,
        FsyncPolicy::IntervalMs(20),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path(), policy);
        let mut p = bus.producer().unwrap();
        for i in 0..50u64 {
            assert_eq!(
                p.send_durable(&i.to_le_bytes(), &common::payload(0, i, 40)),
                Ok(Sent::Queued)
            );
            let stats = bus.stats();
            let reached: u64 = if policy == FsyncPolicy::Never {
                stats.shards.iter().map(|s| s.persisted_end).sum()
            } else {
                stats.shards.iter().map(|s| s.durable_end).sum()
            };
            assert_eq!(
                reached,
                i + 1,
                "{policy:?}: event {i} acknowledged before it was durable"
            );
        }
        assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    }
}

#[test]
fn flush_and_wait_durable_honour_the_interval_policy() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), FsyncPolicy::IntervalMs(60_000));
    let mut p = bus.producer().unwrap();
    for i in 0..500u64 {
        p.send(&i.to_le_bytes(), &common::payload(0, i, 40))
            .unwrap();
    }
    bus.flush().unwrap();
    let s = bus.stats();
    for sh in &s.shards {
        assert_eq!(
            sh.durable_end, sh.persisted_end,
            "flush made shard {} durable without waiting a minute",
            sh.shard
        );
    }
    for i in 500..600u64 {
        p.send(&i.to_le_bytes(), &common::payload(0, i, 40))
            .unwrap();
    }
    let mut cursor = Cursor::start();
    let mut ids: Vec<EventId> = Vec::new();
    while ids.len() < 600 {
        let resp = bus.poll(&cursor, 1000).unwrap();
        ids.extend(resp.events.iter().map(|e| e.id));
        cursor = resp.next;
    }
    bus.wait_durable(&ids, Duration::from_secs(10)).unwrap();
    let total_durable: u64 = bus.stats().shards.iter().map(|s| s.durable_end).sum();
    assert_eq!(total_durable, 600);
    let bad = EventId {
        shard: net_engine::ShardId(9),
        seq: net_engine::Seq(0),
    };
    assert!(matches!(
        bus.wait_durable(&[bad], Duration::from_millis(10)),
        Err(Error::NoSuchShard { shards: 2, .. })
    ));
}

#[test]
fn fsync_and_retention_settings_are_validated_by_field() {
    assert_eq!(
        Config::from_json(r#"{"storage": {"fsync": "never"}}"#)
            .unwrap()
            .storage
            .fsync,
        FsyncPolicy::Never
    );
    assert_eq!(
        Config::from_json(r#"{"storage": {"fsync": {"interval_ms": 5}}}"#)
            .unwrap()
            .storage
            .fsync,
        FsyncPolicy::IntervalMs(5)
    );
    for (json, field) in [
        (r#"{"storage": {"fsync": "always"}}"#, "storage.fsync"),
        (
            r#"{"storage": {"fsync": {"interval_ms": 0}}}"#,
            "storage.fsync.interval_ms",
        ),
        (
            r#"{"storage": {"retention": {"max_events": 0}}}"#,
            "storage.retention.max_events",
        ),
        (
            r#"{"storage": {"retention": {"max_bytes": 0}}}"#,
            "storage.retention.max_bytes",
        ),
        (
            r#"{"storage": {"retention": {"max_age_ms": 0}}}"#,
            "storage.retention.max_age_ms",
        ),
        (
            r#"{"storage": {"retention": {"max_ages": 5}}}"#,
            "storage.retention.max_ages",
        ),
    ] {
        match Config::from_json(json) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn retention_removes_old_segments_and_polls_skip_forward() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 1);
    cfg.storage.segment_bytes = 128 << 10;
    cfg.storage.retention = RetentionConfig {
        max_events: Some(2000),
        ..RetentionConfig::default()
    };
    let bus = Bus::start(cfg).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..20_000u64 {
        p.send_home(&common::payload(0, i, 100)).unwrap();
    }
    bus.flush().unwrap();
    let first = (0..200)
        .find_map(|_| {
            let f = bus.stats().shards[0].retained_first;
            if f > 0 {
                Some(f)
            } else {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
        })
        .expect("retention removed segments");
    assert!(
        20_000 - first <= 2000 + 1000,
        "about max_events kept: first {first}"
    );
    let resp = bus.poll(&Cursor::start(), 10).unwrap();
    assert!(
        resp.skipped,
        "the poll says events below the retained range were skipped"
    );
    assert_eq!(resp.events[0].id.seq.0, first);
    assert_eq!(
        common::parse(&resp.events[0].payload).1,
        first,
        "byte-exact event at the new start"
    );
}
