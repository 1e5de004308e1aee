//! Idle strategies: a parked shard sleeps on its eventfd (its thread accrues no CPU time while
//! idle) and is woken by the first send; `spin` and `yield` shards deliver too.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use net_engine::{Bus, IdleStrategy};

/// CPU time (user + system, in clock ticks) of this process's threads named `net-shard-*`.
fn shard_cpu_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("net-shard-") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

#[test]
fn a_parked_shard_uses_no_cpu_and_wakes_on_send() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // past spin_us: both shards park
    let before = shard_cpu_ticks();
    std::thread::sleep(Duration::from_millis(1000));
    let idle = shard_cpu_ticks() - before;
    // Two spinning shards would accrue ~200 ticks (100 Hz) in this second.
    assert!(
        idle <= 5,
        "idle parked shards used {idle} ticks of CPU in 1 s"
    );
    for i in 0..10u64 {
        p.send(&i.to_le_bytes(), &common::payload(0, i, 20))
            .unwrap();
    }
    bus.flush().unwrap();
    assert_eq!(
        common::poll_all(&bus, 10).len(),
        10,
        "parked shards woke for the sends"
    );
}

#[test]
fn spin_and_yield_shards_deliver_every_event() {
    for strategy in [IdleStrategy::Spin, IdleStrategy::Yield] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = common::config(dir.path(), 2);
        cfg.idle.strategy = strategy;
        let bus = Bus::start(cfg).unwrap();
        let mut p = bus.producer().unwrap();
        for i in 0..5000u64 {
            p.send(&i.to_le_bytes(), &common::payload(0, i, 30))
                .unwrap();
        }
        bus.flush().unwrap();
        assert_eq!(common::poll_all(&bus, 5000).len(), 5000, "{strategy:?}");
        assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
    }
}
