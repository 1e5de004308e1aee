//! The Redis source against the shared redis-server: cursors, dedup, bad entries, foreign
//! cursors, missing streams, huge limits, a failed shard beside good ones.

mod common;

use common::{batch, now_ns, redis_conn as raw};

use net_adapters::redis::{MAX_READ, RedisConfig, RedisSink, RedisSource};
use net_adapters::{ErrorClass, OutBatch, ShardWriter, SinkBackend, SourceCursor, StreamSource};

fn config(url: &str, test: &str, shards: u16) -> RedisConfig {
    let mut c = RedisConfig::single(url);
    c.prefix = common::unique(test);
    c.shards = Some(shards);
    c.dedup_capacity = Some(10_000);
    c
}

async fn xadd(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    entry_id: &str,
    fields: &[(&str, &str)],
) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(entry_id);
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(c).await.expect("XADD");
}

fn ids(events: &[net_adapters::SourceEvent]) -> Vec<String> {
    events.iter().map(|e| e.id()).collect()
}

#[tokio::test]
async fn events_come_back_by_cursor_and_the_cursor_round_trips() {
    let test = "events_come_back_by_cursor_and_the_cursor_round_trips";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "cur", 3);
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    let ts0 = now_ns();
    let mut w0 = sink.writer(0).await.unwrap();
    let mut w2 = sink.writer(2).await.unwrap();
    let mut b = OutBatch::new(0);
    b.push(
        0,
        ts0,
        Some(net_engine::Origin {
            node: 7,
            shard: 1,
            seq: 99,
        }),
        b"\x00bin\xff",
    );
    b.push(1, ts0 + 1, None, b"");
    w0.write(&b).await.unwrap();
    w2.write(&batch(2, 0..4, ts0)).await.unwrap();

    let mut source = RedisSource::new(cfg.clone()).unwrap();
    assert_eq!(source.backend(), "redis");
    let p = source
        .poll(&SourceCursor::start("redis"), 100)
        .await
        .unwrap();
    assert!(
        p.failed_shards.is_empty() && p.stalled_shards.is_empty(),
        "{:?}",
        p.failed_shards
    );
    let mut got = ids(&p.events);
    got.sort();
    assert_eq!(got, ["0:0", "0:1", "2:0", "2:1", "2:2", "2:3"]);
    let e0 = p.events.iter().find(|e| e.id() == "0:0").unwrap();
    assert_eq!((&e0.payload[..], e0.ts_ns), (&b"\x00bin\xff"[..], ts0));
    assert_eq!(
        e0.origin,
        Some(net_engine::Origin {
            node: 7,
            shard: 1,
            seq: 99
        })
    );
    assert_eq!(
        p.next.position(0),
        Some(format!("{}-1", ts0 / 1_000_000).as_str())
    );
    assert_eq!(
        p.next.position(1),
        None,
        "a missing stream keeps no position"
    );

    // Through its text form and back: nothing new, the cursor is echoed.
    let text = p.next.encode();
    assert!(text.starts_with("netsrc1:redis:"), "{text}");
    let cursor = SourceCursor::decode(&text).unwrap();
    assert_eq!(cursor, p.next);
    let again = source.poll(&cursor, 100).await.unwrap();
    assert!(again.events.is_empty() && again.failed_shards.is_empty());
    assert_eq!(again.next, cursor);

    // Only what is new after it.
    w2.write(&batch(2, 4..6, ts0)).await.unwrap();
    let more = source.poll(&cursor, 100).await.unwrap();
    assert_eq!(ids(&more.events), ["2:4", "2:5"]);

    // A limit below the shard count still makes progress over polls (the first shard read
    // rotates), and the limit is kept. A fresh source: its dedup has seen nothing.
    let mut walker = RedisSource::new(cfg.clone()).unwrap();
    let mut cursor = SourceCursor::start("redis");
    let mut seen = Vec::new();
    for _ in 0..20 {
        let p = walker.poll(&cursor, 1).await.unwrap();
        assert!(p.events.len() <= 1, "{:?}", ids(&p.events));
        seen.extend(ids(&p.events));
        cursor = p.next;
    }
    seen.sort();
    assert_eq!(
        seen,
        ["0:0", "0:1", "2:0", "2:1", "2:2", "2:3", "2:4", "2:5"]
    );
    assert_eq!(walker.dedup().duplicates(), 0);
}

#[tokio::test]
async fn dedup_drops_an_event_written_twice() {
    let test = "dedup_drops_an_event_written_twice";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "dup", 1);
    let key = format!("{}:0", cfg.prefix);
    let mut c = raw(&url).await;
    // The same event under two entry ids (an at-least-once writer that retried blindly).
    xadd(
        &mut c,
        &key,
        "1000-7",
        &[("id", "0:7"), ("ts", "1000000007"), ("data", "a")],
    )
    .await;
    xadd(
        &mut c,
        &key,
        "1001-0",
        &[("id", "0:7"), ("ts", "1000000007"), ("data", "a")],
    )
    .await;
    xadd(
        &mut c,
        &key,
        "1001-8",
        &[("id", "0:8"), ("ts", "1001000008"), ("data", "b")],
    )
    .await;
    let mut source = RedisSource::new(cfg).unwrap();
    let p = source
        .poll(&SourceCursor::start("redis"), 10)
        .await
        .unwrap();
    assert_eq!(ids(&p.events), ["0:7", "0:8"]);
    assert_eq!(source.dedup().duplicates(), 1);
    assert_eq!(
        p.next.position(0),
        Some("1001-8"),
        "the cursor moves past the duplicate"
    );
}

#[tokio::test]
async fn a_bad_entry_holds_its_shard_after_the_good_prefix() {
    let test = "a_bad_entry_holds_its_shard_after_the_good_prefix";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "bad", 2);
    let key = format!("{}:1", cfg.prefix);
    let mut c = raw(&url).await;
    xadd(
        &mut c,
        &key,
        "5-1",
        &[("id", "1:1"), ("ts", "5000001"), ("data", "one")],
    )
    .await;
    xadd(
        &mut c,
        &key,
        "5-2",
        &[("id", "1:2"), ("ts", "5000002"), ("data", "two")],
    )
    .await;
    xadd(&mut c, &key, "5-3", &[("id", "1:3"), ("ts", "5000003")]).await; // no data
    xadd(
        &mut c,
        &key,
        "5-4",
        &[("id", "1:4"), ("ts", "5000004"), ("data", "four")],
    )
    .await;
    // Shard 0 keeps flowing meanwhile.
    let key0 = format!("{}:0", cfg.prefix);
    xadd(
        &mut c,
        &key0,
        "5-1",
        &[("id", "0:1"), ("ts", "5000001"), ("data", "zero")],
    )
    .await;

    let mut source = RedisSource::new(cfg).unwrap();
    let p = source
        .poll(&SourceCursor::start("redis"), 100)
        .await
        .unwrap();
    let mut got = ids(&p.events);
    got.sort();
    assert_eq!(got, ["0:1", "1:1", "1:2"], "the good prefix");
    assert!(p.failed_shards.is_empty() && p.stalled_shards.is_empty());
    assert_eq!(
        p.next.position(1),
        Some("5-2"),
        "the cursor stops at the last good entry"
    );

    // The next poll reports the bad entry and holds the shard there.
    xadd(
        &mut c,
        &key0,
        "5-2",
        &[("id", "0:2"), ("ts", "5000002"), ("data", "zero")],
    )
    .await;
    let p2 = source.poll(&p.next, 100).await.unwrap();
    assert_eq!(
        ids(&p2.events),
        ["0:2"],
        "the other shard's events still come"
    );
    assert_eq!(p2.stalled_shards, [1]);
    assert_eq!(p2.failed_shards.len(), 1);
    let (shard, e) = &p2.failed_shards[0];
    assert_eq!(*shard, 1);
    assert_eq!(e.class, ErrorClass::Fatal);
    for part in [
        key.as_str(),
        "5-3",
        "no `data` field",
        "SourceCursor::set(1, \"5-3\")",
    ] {
        assert!(e.message.contains(part), "`{e}` does not say {part}");
    }
    assert_eq!(p2.next.position(1), Some("5-2"), "held");
    let p3 = source.poll(&p2.next, 100).await.unwrap();
    assert_eq!(p3.stalled_shards, [1], "still held");

    // The operator moves past it.
    let mut moved = p3.next.clone();
    moved.set(1, "5-3").unwrap();
    let p4 = source.poll(&moved, 100).await.unwrap();
    assert_eq!(ids(&p4.events), ["1:4"]);
    assert!(p4.failed_shards.is_empty() && p4.stalled_shards.is_empty());
}

#[tokio::test]
async fn foreign_cursors_missing_streams_huge_limits_and_a_failed_shard() {
    let test = "foreign_cursors_missing_streams_huge_limits_and_a_failed_shard";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "misc", 4);
    let mut source = RedisSource::new(cfg.clone()).unwrap();

    // A cursor of another backend is refused, saying how to reset.
    let e = source
        .poll(&SourceCursor::start("jetstream"), 10)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal);
    assert!(
        e.message.contains("jetstream") && e.message.contains("SourceCursor::start(\"redis\")"),
        "{e}"
    );

    // Streams that do not exist read as empty, not failed; so does a zero limit.
    let p = source
        .poll(&SourceCursor::start("redis"), usize::MAX)
        .await
        .unwrap();
    assert!(
        p.events.is_empty() && p.failed_shards.is_empty(),
        "{:?}",
        p.failed_shards
    );
    let p = source.poll(&SourceCursor::start("redis"), 0).await.unwrap();
    assert!(p.events.is_empty());

    // A huge limit reads everything there is (up to MAX_READ per shard and poll).
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    let ts0 = now_ns();
    let mut w = sink.writer(3).await.unwrap();
    w.write(&batch(3, 0..50, ts0)).await.unwrap();
    let p = source
        .poll(&SourceCursor::start("redis"), usize::MAX)
        .await
        .unwrap();
    assert_eq!(p.events.len(), 50);
    assert!(p.failed_shards.is_empty());
    let big = 2 * MAX_READ as u64 + 10;
    w.write(&batch(3, 50..big, ts0)).await.unwrap();
    let mut walker = RedisSource::new(cfg.clone()).unwrap();
    let mut cursor = SourceCursor::start("redis");
    let mut n = 0;
    for _ in 0..4 {
        let p = walker.poll(&cursor, usize::MAX).await.unwrap();
        assert!(p.events.len() <= MAX_READ);
        n += p.events.len();
        cursor = p.next;
    }
    assert_eq!(n as u64, big);

    // A key of the wrong type fails its shard; the others' events are returned.
    let mut c = raw(&url).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:1", cfg.prefix))
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut fresh = RedisSource::new(cfg.clone()).unwrap();
    let p = fresh
        .poll(&SourceCursor::start("redis"), 100)
        .await
        .unwrap();
    // The shards before it read nothing, so shard 3 gets the whole limit.
    assert_eq!(p.events.len(), 100);
    assert!(p.events.iter().all(|e| e.shard == 3));
    assert_eq!(p.failed_shards.len(), 1);
    let (shard, e) = &p.failed_shards[0];
    assert_eq!(*shard, 1);
    assert_eq!(e.class, ErrorClass::Fatal);
    assert!(
        e.message.contains("WRONGTYPE") && e.message.contains(&format!("XRANGE {}:1", cfg.prefix)),
        "{e}"
    );

    // A position that is not an entry id fails its shard, by name.
    let mut bad = SourceCursor::start("redis");
    bad.set(3, "yesterday").unwrap();
    let p = fresh.poll(&bad, 10).await.unwrap();
    assert!(
        p.failed_shards
            .iter()
            .any(|(s, e)| *s == 3 && e.message.contains("`yesterday`")),
        "{:?}",
        p.failed_shards
    );
}

#[test]
fn the_source_requires_its_sizing() {
    let mut cfg = RedisConfig::single("redis://127.0.0.1:1");
    cfg.shards = Some(2);
    let e = RedisSource::new(cfg.clone()).unwrap_err();
    assert!(e.message.contains("`dedup_capacity` is required"), "{e}");
    cfg.dedup_capacity = Some(0);
    let e = RedisSource::new(cfg.clone()).unwrap_err();
    assert!(e.message.contains("`dedup_capacity` is 0"), "{e}");
    cfg.dedup_capacity = Some(10);
    cfg.shards = None;
    let e = RedisSource::new(cfg).unwrap_err();
    assert!(e.message.contains("`shards` is required"), "{e}");
}
