//! A reopened data dir continues every shard's sequence and serves the old events byte for
//! byte.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use net_engine::Bus;

fn send(bus: &Bus, from: u64, n: u64) {
    let mut p = bus.producer().unwrap();
    for i in from..from + n {
        p.send(
            &i.to_le_bytes(),
            &common::payload(0, i, 40 + (i % 50) as usize),
        )
        .unwrap();
    }
    bus.flush().unwrap();
}

#[test]
fn reopen_continues_sequences_and_serves_old_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), 2);
    let bus = Bus::start(cfg.clone()).unwrap();
    send(&bus, 0, 3000);
    let before = bus.stats();
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);

    let bus = Bus::start(cfg).unwrap();
    for (now, then) in bus.stats().shards.iter().zip(&before.shards) {
        assert_eq!(
            now.recovery.next_seq, then.persisted_end,
            "stats report what recovery found"
        );
        assert!(
            !now.recovery.repaired(),
            "a clean shutdown leaves nothing to repair"
        );
    }
    send(&bus, 3000, 1500);
    let events = common::poll_all(&bus, 4500);
    assert_eq!(events.len(), 4500);
    let mut per_shard: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    for e in &events {
        let (_, n) = common::parse(&e.payload);
        assert_eq!(
            &e.payload[..],
            &common::payload(0, n, 40 + (n % 50) as usize)[..]
        );
        per_shard.entry(e.id.shard.0).or_default().push(e.id.seq.0);
    }
    for (shard, seqs) in &per_shard {
        let expect: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(
            seqs, &expect,
            "shard {shard}: contiguous from 0 across the restart"
        );
        let old = before.shards[usize::from(*shard)].persisted_end;
        assert!(
            old > 0 && (seqs.len() as u64) > old,
            "shard {shard} continued after {old}"
        );
    }
    let mut ts: BTreeMap<u16, u64> = BTreeMap::new();
    for e in &events {
        let last = ts.insert(e.id.shard.0, e.ts_ns).unwrap_or(0);
        assert!(
            e.ts_ns > last,
            "timestamps strictly increase within a shard, across restarts"
        );
    }
}

#[test]
fn restarting_with_fewer_shards_than_the_data_dir_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 3)).unwrap();
    send(&bus, 0, 300);
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    match Bus::start(common::config(dir.path(), 2)) {
        Err(net_engine::Error::Config { field, what }) => {
            assert_eq!(field, "shards");
            assert!(
                what.contains("up to 2") && what.contains("at least 3"),
                "{what}"
            );
        }
        other => panic!("expected a shards error, got {other:?}"),
    }
    let bus = Bus::start(common::config(dir.path(), 3)).unwrap();
    assert_eq!(
        common::poll_all(&bus, 300).len(),
        300,
        "the same shard count still serves everything"
    );
}
