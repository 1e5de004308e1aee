//! `Bus::poll_wait`: a consumer at the tail sleeps until a shard publishes events instead of
//! spinning (a spinning consumer starved the kernel work that completes the shard's writes),
//! and wakes for new events, for a shard's failure, and at its timeout.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use net_engine::{Bus, Cursor, ShardId};

#[test]
fn a_waiting_consumer_gets_every_event_sent_while_it_sleeps() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let n = 2_000u64;
    std::thread::scope(|scope| {
        let consumer = scope.spawn(|| {
            let mut cursor = Cursor::start();
            let mut got = 0u64;
            let mut empty = 0u32;
            let deadline = Instant::now() + Duration::from_secs(60);
            while got < n {
                assert!(Instant::now() < deadline, "received {got} of {n}");
                let resp = bus
                    .poll_wait(&cursor, 256, Duration::from_secs(10))
                    .unwrap();
                assert!(resp.failed_shards.is_empty());
                empty += u32::from(resp.events.is_empty());
                got += resp.events.len() as u64;
                cursor = resp.next;
            }
            (got, empty)
        });
        let mut p = bus.producer().unwrap();
        for i in 0..n {
            p.send(&i.to_le_bytes(), &common::payload(0, i, 48))
                .unwrap();
            if i % 100 == 0 {
                // Let the consumer catch up and sleep between bursts.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let (got, empty) = consumer.join().unwrap();
        assert_eq!(got, n);
        // A 10 s wait never timed out: every wake-up came from published events.
        assert_eq!(empty, 0, "poll_wait returned empty before its timeout");
    });
}

#[test]
fn with_nothing_to_read_it_returns_empty_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    let t = Instant::now();
    let resp = bus
        .poll_wait(&Cursor::start(), 10, Duration::from_millis(50))
        .unwrap();
    assert!(resp.events.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(50));
    // A zero timeout is a plain poll.
    let resp = bus.poll_wait(&Cursor::start(), 10, Duration::ZERO).unwrap();
    assert!(resp.events.is_empty());
}

#[test]
fn a_failing_shard_wakes_a_waiting_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let t = Instant::now();
            let resp = bus
                .poll_wait(&Cursor::start(), 10, Duration::from_secs(600))
                .unwrap();
            (resp, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        bus.inject_shard_panic(ShardId(1)).unwrap();
        let (resp, waited) = waiter.join().unwrap();
        assert!(
            waited < Duration::from_secs(300),
            "slept through the failure"
        );
        assert_eq!(resp.failed_shards.len(), 1, "{:?}", resp.failed_shards);
        assert_eq!(resp.failed_shards[0].0, ShardId(1));
    });
}
