//! Events that carry their origin: a `MirrorProducer` sends them into chosen shards, mixed with
//! a plain `Producer`'s events; `poll` returns each with its origin (plain ones `None`) and
//! its payload byte for byte; after a restart on the same data dir, `origin_positions` says
//! where mirroring each origin continues, for every node or one; the incremental form folds
//! in only what came since; and the mirror's limits and backpressure match a producer's.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use net_engine::{Bus, Cursor, Origin, SendError, Sent, ShardId};

const NODE_A: u64 = 0xA11C_E000_0000_0001;
const NODE_B: u64 = 0xB0B0_0000_0000_0002;
const EVENTS: u64 = 600;

/// The origin of mirrored event `i`: two nodes, three origin shards, increasing seqs.
fn origin(i: u64) -> Origin {
    Origin {
        node: if i.is_multiple_of(2) { NODE_A } else { NODE_B },
        shard: (i % 3) as u16,
        seq: 1_000 + i * 5,
    }
}

fn mirrored_payload(i: u64) -> Vec<u8> {
    common::payload(1, i, 12 + (i % 40) as usize)
}

fn plain_payload(i: u64) -> Vec<u8> {
    common::payload(0, i, 12 + (i % 17) as usize)
}

/// What `origin_positions(node)` should say after mirrored events `0..n`.
fn positions(n: u64, node: Option<u64>) -> HashMap<(u64, u16), u64> {
    let mut out = HashMap::new();
    for o in (0..n)
        .map(origin)
        .filter(|o| node.is_none_or(|n| n == o.node))
    {
        let end = out.entry((o.node, o.shard)).or_insert(0);
        *end = (*end).max(o.seq + 1);
    }
    out
}

#[test]
fn mirrored_events_keep_their_origin_and_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), 2);
    let bus = Bus::start(cfg.clone()).unwrap();
    let mut plain = bus.producer().unwrap();
    let mut mirror = bus.mirror_producer().unwrap();
    assert_eq!(mirror.shards(), 2);
    for i in 0..EVENTS {
        let shard = ShardId((i % 2) as u16);
        assert_eq!(
            plain.send_to(usize::from(shard.0), &plain_payload(i)),
            Ok(Sent::Queued)
        );
        assert_eq!(
            mirror.send(shard, origin(i), &mirrored_payload(i)),
            Ok(Sent::Queued)
        );
    }
    bus.flush().unwrap();
    let events = common::poll_all(&bus, 2 * EVENTS as usize);
    assert_eq!(events.len(), 2 * EVENTS as usize);
    // Per shard, in sequence order: each producer's events in the order sent.
    let mut next = [[0u64; 2]; 2]; // [shard][plain, mirrored]
    let mut by_shard: Vec<_> = events.iter().collect();
    by_shard.sort_by_key(|e| e.id);
    for e in by_shard {
        let shard = usize::from(e.id.shard.0);
        let (producer, n) = common::parse(&e.payload);
        let kind = producer as usize;
        let i = next[shard][kind] * 2 + shard as u64;
        next[shard][kind] += 1;
        assert_eq!(n, i, "shard {shard}, producer {producer}: order kept");
        match kind {
            0 => {
                assert_eq!(e.origin, None, "a plain event has no origin");
                assert_eq!(e.payload[..], plain_payload(i)[..]);
            }
            _ => {
                assert_eq!(e.origin, Some(origin(i)), "event {}", e.id);
                assert_eq!(e.payload[..], mirrored_payload(i)[..]);
            }
        }
    }
    assert_eq!(next, [[EVENTS / 2; 2]; 2]);
    assert_eq!(bus.origin_positions(None).unwrap(), positions(EVENTS, None));
    drop((plain, mirror));
    let report = bus.shutdown(Duration::from_secs(10));
    assert!(!report.lossy, "{:?}", report.stats);

    let bus = Bus::start(cfg).unwrap();
    assert_eq!(
        bus.origin_positions(None).unwrap(),
        positions(EVENTS, None),
        "every origin's next seq, from the logs alone"
    );
    assert_eq!(
        bus.origin_positions(Some(NODE_A)).unwrap(),
        positions(EVENTS, Some(NODE_A))
    );
    assert_eq!(
        bus.origin_positions(Some(NODE_B)).unwrap(),
        positions(EVENTS, Some(NODE_B))
    );
    assert!(bus.origin_positions(Some(7)).unwrap().is_empty());

    // Incremental: continue from a cursor, folding in only the events stored since.
    let mut known = HashMap::new();
    let cursor = bus
        .origin_positions_since(None, &Cursor::start(), &mut known)
        .unwrap();
    assert_eq!(known, positions(EVENTS, None));
    let mut mirror = bus.mirror_producer().unwrap();
    for i in EVENTS..EVENTS + 50 {
        mirror
            .send(ShardId((i % 2) as u16), origin(i), &mirrored_payload(i))
            .unwrap();
    }
    bus.flush().unwrap();
    let cursor2 = bus
        .origin_positions_since(None, &cursor, &mut known)
        .unwrap();
    assert_eq!(known, positions(EVENTS + 50, None));
    for s in [ShardId(0), ShardId(1)] {
        assert_eq!(
            cursor2.next_seq(s).0,
            cursor.next_seq(s).0 + 25,
            "shard {s} read only what was new"
        );
    }
    drop(mirror);
    assert!(!bus.shutdown(Duration::from_secs(10)).lossy);
}

#[test]
fn the_mirror_refuses_what_a_producer_refuses_and_try_send_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 2);
    cfg.lane.capacity_bytes = 4096;
    cfg.lane.backpressure = net_engine::Backpressure::Block;
    let bus = Bus::start(cfg).unwrap();
    let mut mirror = bus.mirror_producer().unwrap();
    let max = bus.producer().unwrap().payload_bytes_max() - net_engine::ORIGIN_BYTES;
    assert_eq!(mirror.payload_bytes_max(), max);
    let o = origin(0);
    assert_eq!(
        mirror.send(ShardId(0), o, &vec![0; max + 1]),
        Err(SendError::TooLarge { len: max + 1, max })
    );
    assert_eq!(
        mirror.try_send(ShardId(2), o, b"x"),
        Err(SendError::NoSuchShard {
            shard: 2,
            shards: 2
        })
    );
    assert_eq!(mirror.send(ShardId(0), o, &vec![1; max]), Ok(Sent::Queued));

    // A paused shard's lane fills: try_send says Full (and takes nothing) instead of
    // blocking as `send` would under this bus's mode.
    bus.pause_shard(ShardId(1), true).unwrap();
    let mut queued = 0u64;
    let full = loop {
        match mirror.try_send(ShardId(1), origin(queued), &mirrored_payload(queued)) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued < 1_000, "a 4 KiB lane never filled");
    };
    assert_eq!(full, SendError::Full(ShardId(1)));
    assert!(queued > 10);
    bus.pause_shard(ShardId(1), false).unwrap();
    bus.flush().unwrap();
    let stats = bus.stats();
    assert_eq!(stats.total.rejected, 1);
    assert_eq!(stats.total.persisted, queued + 1);
    let events = common::poll_all(&bus, queued as usize + 1);
    let got: Vec<_> = events
        .iter()
        .filter(|e| e.id.shard == ShardId(1))
        .map(|e| (e.origin, e.payload.to_vec()))
        .collect();
    let want: Vec<_> = (0..queued)
        .map(|i| (Some(origin(i)), mirrored_payload(i)))
        .collect();
    assert_eq!(got, want);
    drop(mirror);
    assert!(!bus.shutdown(Duration::from_secs(10)).lossy);
}

#[test]
fn a_closed_bus_refuses_mirrored_events() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    let mut mirror = bus.mirror_producer().unwrap();
    let report = bus.shutdown(Duration::from_secs(5));
    assert!(!report.lossy);
    assert_eq!(
        mirror.send(ShardId(0), origin(1), b"late"),
        Err(SendError::Closed)
    );
    assert_eq!(
        mirror.try_send(ShardId(0), origin(1), b"late"),
        Err(SendError::Closed)
    );
}
