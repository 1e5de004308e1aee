//! The cursor codec round-trips and refuses malformed strings; a poll that makes no progress
//! echoes its cursor; shards are interleaved fairly; cursors naming unknown shards are errors.
#![allow(clippy::cast_possible_truncation)]

mod common;

use net_engine::{Bus, Cursor, Error, Seq, ShardId};
use proptest::prelude::*;

proptest! {
    #[test]
    fn cursor_round_trips(entries in proptest::collection::btree_map(0u16..1024, any::<u64>(), 0..40)) {
        let mut c = Cursor::start();
        for (&s, &q) in &entries {
            c.set(ShardId(s), Seq(q)).unwrap();
        }
        let text = c.encode();
        let back = Cursor::decode(&text).unwrap();
        prop_assert_eq!(&back, &c);
        for (&s, &q) in &entries {
            prop_assert_eq!(back.next_seq(ShardId(s)), Seq(q));
        }
    }

    #[test]
    fn garbage_never_panics(text in ".{0,80}") {
        let _ = Cursor::decode(&text);
    }
}

#[test]
fn malformed_cursors_are_refused_with_a_reason() {
    for bad in [
        "",
        "net1",
        "net2.0000",
        "net1.0",
        "net1.zz00",
        "net1.0100",
        "net1.ABCD",
        "00",
    ] {
        match Cursor::decode(bad) {
            Err(Error::Cursor(why)) => assert!(!why.is_empty()),
            other => panic!("{bad:?} decoded: {other:?}"),
        }
    }
    // Two entries for one shard: "00" and "0" style aliases cannot exist in a binary cursor,
    // and a repeated shard id is refused.
    let mut c = Cursor::start();
    c.set(ShardId(0), Seq(5)).unwrap();
    let one = c.encode();
    let body = &one["net1.".len() + 4..];
    let twice = format!("net1.0200{body}{body}");
    assert!(Cursor::decode(&twice).is_err());
}

#[test]
fn a_poll_without_progress_echoes_the_cursor_and_interleaves_shards() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..10 {
        p.send_to(0, &common::payload(0, i, 20)).unwrap();
        p.send_to(1, &common::payload(1, i, 20)).unwrap();
    }
    bus.flush().unwrap();
    let resp = bus.poll(&Cursor::start(), 6).unwrap();
    let shards: Vec<u16> = resp.events.iter().map(|e| e.id.shard.0).collect();
    assert_eq!(shards, vec![0, 1, 0, 1, 0, 1], "fair interleave");
    let rest = bus.poll(&resp.next, 100).unwrap();
    assert_eq!(rest.events.len(), 14);
    let end = rest.next.clone();
    let stalled = bus.poll(&end, 100).unwrap();
    assert!(stalled.events.is_empty());
    assert_eq!(
        stalled.next, end,
        "no progress returns the cursor it was given"
    );
    assert_eq!(stalled.next.encode(), end.encode());
    assert!(stalled.failed_shards.is_empty());
    let decoded = Cursor::decode(&resp.next.encode()).unwrap();
    assert_eq!(
        bus.poll(&decoded, 100).unwrap().events,
        rest.events,
        "a decoded cursor resumes exactly"
    );
}

#[test]
fn a_cursor_naming_a_missing_shard_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut c = Cursor::start();
    c.set(ShardId(7), Seq(0)).unwrap();
    match bus.poll(&c, 10) {
        Err(Error::Cursor(why)) => assert!(why.contains("shard 7"), "{why}"),
        other => panic!("{other:?}"),
    }
}
