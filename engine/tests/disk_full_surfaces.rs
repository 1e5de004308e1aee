//! A shard whose disk fills up: its log is poisoned, and the bus surfaces the failure in
//! stats, flush, poll and the shutdown report, with counters that still add up and producers
//! that are never wedged.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use net_engine::{Bus, Cursor, FsyncPolicy};

#[test]
fn a_full_disk_fails_the_shard_loudly_and_loses_no_count() {
    let Some(fs) = common::SmallFs::mount("2m") else {
        return;
    };
    let mut cfg = common::config(fs.path(), 1);
    cfg.storage.fsync = FsyncPolicy::EveryBatch;
    let bus = Bus::start(cfg).unwrap();
    let mut p = bus.producer().unwrap();
    let mut sent = 0u64;
    while !bus.stats().shards[0].failed && sent < 200_000 {
        p.send_home(&common::payload(0, sent, 100)).unwrap();
        sent += 1;
    }
    for _ in 0..1000 {
        p.send_home(&common::payload(0, sent, 100)).unwrap(); // a failed shard still drains
        sent += 1;
    }
    let stats = bus.stats();
    assert!(stats.shards[0].failed, "the disk never filled");
    let (_, why) = &stats.errors[0];
    assert!(
        why.contains("No space left on device") && why.contains("shard-0000"),
        "{why}"
    );
    let flush = bus.flush().unwrap_err().to_string();
    assert!(flush.contains("No space left on device"), "{flush}");
    let poll = bus.poll(&Cursor::start(), 10).unwrap();
    assert!(
        poll.failed_shards
            .iter()
            .any(|(_, e)| e.to_string().contains("No space left")),
        "{poll:?}"
    );
    assert!(!poll.events.is_empty(), "what was persisted stays readable");
    let report = bus.shutdown(Duration::from_secs(5));
    let t = report.stats.total;
    assert_eq!(t.ingested, sent);
    assert_eq!((t.in_flight, t.persisted + t.dropped), (0, sent));
    assert!(t.dropped >= 1000);
    assert!(
        report
            .failed_shards
            .iter()
            .any(|(_, e)| e.to_string().contains("No space left")),
        "{report:?}"
    );
}
