//! The JetStream source: cursor round trips, a bad message mid-stream (good prefix returned,
//! the bad one reported next and the shard held), foreign cursors, a failing info (a failed
//! shard, never an empty stream), a huge limit, and repeats dropped by the dedup.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use net_adapters::jetstream::{JetStreamConfig, JetStreamSink, JetStreamSource, MAX_FETCH};
use net_adapters::{ErrorClass, ShardWriter, SinkBackend, SourceCursor, SourceEvent, StreamSource};

use common::nats_server::{NatsServer, batch, connect_plain, delete_stream, js_config};

fn config_for(url: &str, test: &str) -> JetStreamConfig {
    let mut config = js_config(url, test);
    config.dedup_capacity = Some(10_000);
    config
}

fn config(test: &str) -> Option<JetStreamConfig> {
    Some(config_for(&common::nats_url(test)?, test))
}

/// Writes `seqs` of `shard` through a sink writer.
async fn write(sink: &mut JetStreamSink, shard: u16, seqs: std::ops::RangeInclusive<u64>) {
    let mut w = sink.writer(shard).await.expect("writer");
    w.write(&batch(shard, seqs)).await.expect("write");
}

fn ids(events: &[SourceEvent]) -> Vec<(u16, u64)> {
    events.iter().map(|e| (e.shard, e.seq)).collect()
}

#[tokio::test]
async fn a_cursor_round_trips_through_its_text_and_reads_everything_once() {
    let Some(config) = config("js_src_cursor") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    write(&mut sink, 1, 1..=10).await;
    write(&mut sink, 2, 1..=7).await;
    write(&mut sink, 1, 11..=13).await;
    let mut source = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    assert_eq!(source.backend(), "jetstream");
    let mut text = SourceCursor::start("jetstream").encode();
    let mut got: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    let mut polls = 0;
    loop {
        // The cursor goes through its text form every time, as a restarted reader's would.
        let cursor = SourceCursor::decode(&text).expect("decode");
        let poll = source.poll(&cursor, 4).await.expect("poll");
        assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
        assert!(poll.events.len() <= 4, "limit 4, got {}", poll.events.len());
        polls += 1;
        if poll.events.is_empty() {
            assert_eq!(poll.next, cursor, "an empty poll leaves the cursor");
            break;
        }
        for e in &poll.events {
            got.entry(e.shard).or_default().push(e.seq);
            assert_eq!(&e.payload[..], format!("p{}", e.seq).as_bytes());
            assert_eq!(e.ts_ns, e.seq * 1000);
        }
        text = poll.next.encode();
        assert!(polls < 50, "runaway");
    }
    assert_eq!(got[&1], (1..=13).collect::<Vec<_>>());
    assert_eq!(got[&2], (1..=7).collect::<Vec<_>>());
    // Positions are stream sequences: shard 1's last is 20 (10 + 7 + 3), shard 2's is 17.
    let end = SourceCursor::decode(&text).expect("decode");
    assert_eq!(end.position(1), Some("20"));
    assert_eq!(end.position(2), Some("17"));
    // New events after the end are read from there.
    write(&mut sink, 2, 8..=9).await;
    let poll = source.poll(&end, 100).await.expect("poll");
    assert_eq!(ids(&poll.events), vec![(2, 8), (2, 9)]);
    source.shutdown().await;
    delete_stream(&config).await;
}

#[tokio::test]
async fn a_bad_message_returns_the_good_prefix_then_holds_the_shard() {
    let Some(config) = config("js_src_bad") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    write(&mut sink, 0, 1..=3).await;
    write(&mut sink, 5, 1..=2).await;
    // Something else publishes to shard 0's subject, without headers.
    let client = connect_plain(&config).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let bad_seq = js
        .publish(config.subject(0), "not an event".into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence;
    assert_eq!(bad_seq, 6);
    write(&mut sink, 0, 4..=5).await;

    let mut source = sink.source().await.expect("source");
    let start = SourceCursor::start("jetstream");
    let first = source.poll(&start, 100).await.expect("poll");
    // The good prefix, with the cursor on its last message; nothing reported yet.
    let mut got = ids(&first.events);
    got.sort();
    assert_eq!(got, vec![(0, 1), (0, 2), (0, 3), (5, 1), (5, 2)]);
    assert_eq!(first.next.position(0), Some("3"));
    assert!(first.failed_shards.is_empty(), "{:?}", first.failed_shards);
    assert!(first.stalled_shards.is_empty());

    // The next poll reports the bad message and holds shard 0 there.
    for _ in 0..2 {
        let held = source.poll(&first.next, 100).await.expect("poll");
        assert!(held.events.is_empty(), "{:?}", ids(&held.events));
        assert_eq!(held.stalled_shards, vec![0]);
        assert_eq!(held.failed_shards.len(), 1);
        let (shard, e) = &held.failed_shards[0];
        assert_eq!(*shard, 0);
        assert_eq!(e.class, ErrorClass::Fatal);
        assert!(e.message.contains("stream sequence 6"), "{e}");
        assert!(e.message.contains(&config.subject(0)), "{e}");
        assert!(e.message.contains("no headers"), "{e}");
        assert!(e.message.contains("SourceCursor::set(0, \"6\")"), "{e}");
        assert_eq!(held.next, first.next, "the held shard's position stays");
    }

    // A source with no memory of it (a restarted reader) reports it at once.
    let mut fresh = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    let held = fresh.poll(&first.next, 100).await.expect("poll");
    assert!(held.events.is_empty());
    assert_eq!(held.stalled_shards, vec![0]);

    // The operator moves the cursor past it: the rest follows.
    let mut moved = first.next.clone();
    moved.set(0, &bad_seq.to_string()).expect("set");
    let rest = source.poll(&moved, 100).await.expect("poll");
    assert_eq!(ids(&rest.events), vec![(0, 4), (0, 5)]);
    assert!(rest.failed_shards.is_empty(), "{:?}", rest.failed_shards);
    assert!(rest.stalled_shards.is_empty());
    assert_eq!(rest.next.position(0), Some("8"));
    let _ = client.drain().await;
    delete_stream(&config).await;
}

#[tokio::test]
async fn a_cursor_of_another_backend_is_refused_with_how_to_reset() {
    let Some(config) = config("js_src_foreign") else {
        return;
    };
    let mut source = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    let mut redis = SourceCursor::start("redis");
    redis.set(0, "1700000000000-0").expect("set");
    let e = source.poll(&redis, 10).await.expect_err("foreign cursor");
    assert_eq!(e.class, ErrorClass::Fatal);
    assert!(e.message.contains("backend `redis`"), "{e}");
    assert!(
        e.message.contains("SourceCursor::start(\"jetstream\")"),
        "{e}"
    );
    // A JetStream cursor whose position is not a stream sequence.
    let mut odd = SourceCursor::start("jetstream");
    odd.set(3, "1700000000000-0").expect("set");
    let e = source.poll(&odd, 10).await.expect_err("not a sequence");
    assert_eq!(e.class, ErrorClass::Fatal);
    assert!(e.message.contains("shard 3"), "{e}");
    // A source without dedup capacity is refused, naming the field.
    let mut no_dedup = config.clone();
    no_dedup.dedup_capacity = None;
    let e = JetStreamSource::connect(no_dedup)
        .await
        .expect_err("no capacity");
    assert!(e.message.contains("`dedup_capacity`"), "{e}");
}

#[tokio::test]
async fn a_deleted_stream_is_a_failed_shard_not_an_empty_one() {
    let Some(config) = config("js_src_deleted") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    write(&mut sink, 4, 1..=3).await;
    let mut source = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    let poll = source
        .poll(&SourceCursor::start("jetstream"), 10)
        .await
        .expect("poll");
    assert_eq!(poll.events.len(), 3);
    delete_stream(&config).await;
    let after = source.poll(&poll.next, 10).await.expect("poll");
    assert!(after.events.is_empty());
    assert_eq!(after.failed_shards.len(), 1);
    let (shard, e) = &after.failed_shards[0];
    assert_eq!(*shard, 4);
    assert!(e.message.contains("stream not found"), "{e}");
    assert_eq!(after.next, poll.next);
    // A cursor that knows no shard has nowhere to report it: the poll fails.
    let e = source
        .poll(&SourceCursor::start("jetstream"), 10)
        .await
        .expect_err("no stream");
    assert!(e.message.contains("stream not found"), "{e}");
}

#[tokio::test]
async fn a_server_that_is_down_is_a_transient_failed_shard() {
    let Some(mut server) = NatsServer::start("js_src_down") else {
        return;
    };
    let mut config = config_for(&server.url(), "js_src_down");
    config.command_timeout_ms = 500;
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    write(&mut sink, 0, 1..=3).await;
    write(&mut sink, 1, 1..=2).await;
    let mut source = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    let poll = source
        .poll(&SourceCursor::start("jetstream"), 10)
        .await
        .expect("poll");
    assert_eq!(poll.events.len(), 5);
    server.kill();
    let down = source.poll(&poll.next, 10).await.expect("poll");
    assert!(down.events.is_empty());
    let failed: Vec<u16> = down.failed_shards.iter().map(|(s, _)| *s).collect();
    assert_eq!(failed, vec![0, 1]);
    for (_, e) in &down.failed_shards {
        assert_eq!(e.class, ErrorClass::Transient, "{e}");
    }
    assert_eq!(down.next, poll.next);
    // Back up: reading continues where it was.
    server.restart();
    write(&mut sink, 1, 3..=3).await;
    let mut tries = 0;
    let up = loop {
        let up = source.poll(&poll.next, 10).await.expect("poll");
        if up.failed_shards.is_empty() {
            break up;
        }
        tries += 1;
        assert!(tries < 40, "still failing: {:?}", up.failed_shards);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&up.events), vec![(1, 3)]);
}

/// Reading is batched: a poll costs the stream's info and one pull request per shard (plus
/// the consumer's creation the first time), whatever the number of messages.
#[tokio::test]
async fn a_poll_costs_a_few_requests_not_one_per_message() {
    let Some(config) = config("js_src_batched") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    write(&mut sink, 3, 1..=600).await;
    let mut source = sink.source().await.expect("source");
    let client = sink.client().expect("client");
    let sent = || {
        client
            .statistics()
            .out_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent();
    let first = source
        .poll(&SourceCursor::start("jetstream"), 500)
        .await
        .expect("poll");
    assert_eq!(first.events.len(), 500);
    // Stream info, consumer creation, one pull request.
    assert_eq!(sent() - before, 3);
    let before = sent();
    let second = source.poll(&first.next, 500).await.expect("poll");
    assert_eq!(
        ids(&second.events),
        (501..=600).map(|s| (3, s)).collect::<Vec<_>>()
    );
    // The consumer is kept while the cursor continues: stream info and one pull request.
    assert_eq!(sent() - before, 2);
    delete_stream(&config).await;
}

#[tokio::test]
async fn a_huge_limit_is_shaped_not_overflowed() {
    let Some(config) = config("js_src_huge") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let over = MAX_FETCH as u64 + 100;
    write(&mut sink, 0, 1..=over).await;
    write(&mut sink, 9, 1..=20).await;
    let mut source = sink.source().await.expect("source");
    let mut cursor = SourceCursor::start("jetstream");
    let mut per_shard: BTreeMap<u16, u64> = BTreeMap::new();
    let mut polls = 0;
    loop {
        let poll = source.poll(&cursor, usize::MAX).await.expect("poll");
        assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
        if poll.events.is_empty() {
            break;
        }
        polls += 1;
        let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
        for e in &poll.events {
            *counts.entry(e.shard).or_default() += 1;
            let next = per_shard.entry(e.shard).or_insert(0);
            *next += 1;
            assert_eq!(e.seq, *next, "shard {} in order, once", e.shard);
        }
        // One fetch's worth per shard and poll at most, whatever the limit.
        assert!(counts.values().all(|n| *n <= MAX_FETCH), "{counts:?}");
        cursor = poll.next;
    }
    assert_eq!(per_shard[&0], over);
    assert_eq!(per_shard[&9], 20);
    assert_eq!(polls, 2, "shard 0 needs two polls of at most {MAX_FETCH}");
    // A limit of zero reads nothing and leaves the cursor.
    let zero = source
        .poll(&SourceCursor::start("jetstream"), 0)
        .await
        .expect("poll");
    assert!(zero.events.is_empty());
    assert_eq!(zero.next, SourceCursor::start("jetstream"));
    delete_stream(&config).await;
}

#[tokio::test]
async fn repeats_outside_the_duplicate_window_are_dropped_by_the_dedup() {
    let Some(mut config) = config("js_src_dedup") else {
        return;
    };
    // A stream whose duplicate window is short, so a repeat is stored twice.
    config.duplicate_window_ms = 100;
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(6).await.expect("writer");
    w.write(&batch(6, 1..=5)).await.expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    w.write(&batch(6, 1..=5)).await.expect("write again");
    assert_eq!(w.last_write().duplicates, 0, "the window had passed");
    let mut source = sink.source().await.expect("source");
    let poll = source
        .poll(&SourceCursor::start("jetstream"), 100)
        .await
        .expect("poll");
    assert_eq!(
        ids(&poll.events),
        (1..=5).map(|s| (6, s)).collect::<Vec<_>>()
    );
    assert_eq!(
        poll.next.position(6),
        Some("10"),
        "the cursor passes the repeats"
    );
    assert_eq!(source.dedup().duplicates(), 5);
    delete_stream(&config).await;
}
