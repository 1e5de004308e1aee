//! The JetStream sink against the shared nats-server: round trip of exact headers and bytes,
//! pipelining (structurally), retry idempotence through `Nats-Msg-Id`, a missing stream,
//! shutdown and initialising again.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use net_adapters::jetstream::{JetStreamConfig, JetStreamSink, PIPELINE_WINDOW};
use net_adapters::{
    ErrorClass, OutBatch, ShardWriter, SinkBackend, SourceCursor, SourceEvent, StreamSource,
};
use net_engine::Origin;

use common::nats_server::{
    batch, connect_plain, delete_stream, js_config, stream_messages, wait_stream_messages,
    write_with_retry,
};

fn config(test: &str) -> Option<JetStreamConfig> {
    let url = common::nats_url(test)?;
    let mut config = js_config(&url, test);
    config.dedup_capacity = Some(100_000);
    Some(config)
}

/// Reads everything the source returns from the start, polling until a poll brings nothing.
async fn read_all(
    source: &mut impl StreamSource,
    limit: usize,
) -> (Vec<SourceEvent>, SourceCursor) {
    let mut cursor = SourceCursor::start("jetstream");
    let mut events = Vec::new();
    loop {
        let poll = source.poll(&cursor, limit).await.expect("poll");
        assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
        if poll.events.is_empty() {
            return (events, cursor);
        }
        events.extend(poll.events);
        cursor = poll.next;
    }
}

#[tokio::test]
async fn round_trip_keeps_headers_and_bytes_exact() {
    let Some(config) = config("js_round_trip") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    assert_eq!(sink.backend(), "jetstream");
    assert!(!sink.destination().contains("password"));
    let mut w0 = sink.writer(0).await.expect("writer 0");
    let mut w3 = sink.writer(3).await.expect("writer 3");
    let mut w5 = sink.writer(5).await.expect("writer 5");
    assert_eq!(w0.last_held().await.expect("last held"), None);

    let binary: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let origin = Origin {
        node: 0x00ab_cdef_0123_4567,
        shard: 9,
        seq: 1041,
    };
    let mut b0 = OutBatch::new(0);
    b0.push(1, 1_700_000_000_000_000_001, None, &binary);
    b0.push(2, 1_700_000_000_000_000_002, None, b"");
    b0.push(5, 1_700_000_000_000_000_005, Some(origin), &big);
    b0.push(6, u64::MAX, None, b"{\"json\":\"as bytes\"}\0\n");
    w0.write(&b0).await.expect("write shard 0");
    let mut b3 = OutBatch::new(3);
    b3.push(40, 7, None, b"three");
    w3.write(&b3).await.expect("write shard 3");

    assert_eq!(w0.last_held().await.expect("last held 0"), Some(6));
    assert_eq!(w3.last_held().await.expect("last held 3"), Some(40));
    assert_eq!(w5.last_held().await.expect("last held 5"), None);

    // The stored messages' headers, exactly.
    let client = connect_plain(&config).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&config.stream).await.expect("stream");
    let first = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(first.subject.as_str(), config.subject(0));
    let headers: Vec<(String, Vec<String>)> = {
        let mut h: Vec<_> = first
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|v| v.to_string()).collect()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(
        headers,
        vec![
            ("Nats-Msg-Id".to_owned(), vec!["0:1".to_owned()]),
            ("Net-Ts".to_owned(), vec!["1700000000000000001".to_owned()]),
        ],
        "no Net-Origin (not even an empty or null one) for an event without origin"
    );
    assert_eq!(&first.payload[..], &binary[..]);
    let third = stream.get_raw_message(3).await.expect("message 3");
    assert_eq!(
        third.headers.get("Net-Origin").map(|v| v.to_string()),
        Some("00abcdef01234567:9:1041".to_owned())
    );
    assert_eq!(&third.payload[..], &big[..]);
    let _ = client.drain().await;

    // Read back through the source: every field byte-exact.
    let mut source = sink.source().await.expect("source");
    let (events, cursor) = read_all(&mut source, 100).await;
    let want = |shard: u16, b: &OutBatch| -> Vec<SourceEvent> {
        b.iter()
            .map(|e| SourceEvent {
                shard,
                seq: e.seq,
                ts_ns: e.ts_ns,
                origin: e.origin,
                payload: bytes::Bytes::copy_from_slice(e.payload),
            })
            .collect()
    };
    let mut expected = want(0, &b0);
    expected.extend(want(3, &b3));
    let mut got = events.clone();
    got.sort_by_key(|e| (e.shard, e.seq));
    assert_eq!(got, expected);
    assert_eq!(cursor.position(0), Some("4"));
    assert_eq!(cursor.position(3), Some("5"));
    delete_stream(&config).await;
}

#[tokio::test]
async fn a_batch_is_pipelined_every_publish_before_any_ack_wait() {
    let Some(config) = config("js_pipeline") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(2).await.expect("writer");
    let seen: Rc<RefCell<Vec<usize>>> = Rc::default();
    let hook_seen = Rc::clone(&seen);
    w.set_ack_wait_hook(Some(Box::new(move |n| hook_seen.borrow_mut().push(n))));
    let b = batch(2, 1..=1000);
    w.write(&b).await.expect("write");
    let report = w.last_write();
    // At the moment the first acknowledgement was awaited, all 1000 publishes had been handed
    // to the client with their acknowledgements outstanding: one window, one round trip.
    assert_eq!(*seen.borrow(), vec![1000]);
    assert_eq!(report.in_flight_at_first_ack_wait, 1000);
    assert_eq!(report.windows, 1);
    assert_eq!(report.acked, 1000);
    assert_eq!(report.duplicates, 0);
    assert_eq!(stream_messages(&config).await, 1000);

    // A batch larger than the window goes out in windows of the window's size.
    seen.borrow_mut().clear();
    let n = PIPELINE_WINDOW as u64 + 10;
    let b = batch(2, 1001..=1000 + n);
    w.write(&b).await.expect("write a large batch");
    assert_eq!(*seen.borrow(), vec![PIPELINE_WINDOW]);
    assert_eq!(w.last_write().windows, 2);
    assert_eq!(w.last_write().acked as u64, n);
    assert_eq!(w.last_held().await.expect("last held"), Some(1000 + n));
    delete_stream(&config).await;
}

#[tokio::test]
async fn the_same_batch_twice_is_held_once() {
    let Some(config) = config("js_idempotent") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(1).await.expect("writer");
    let b = batch(1, 1..=200);
    w.write(&b).await.expect("first write");
    assert_eq!(w.last_write().duplicates, 0);
    // A retry of a batch that landed: every ack says duplicate, and that is success.
    w.write(&b).await.expect("the retry succeeds");
    assert_eq!(w.last_write().acked, 200);
    assert_eq!(w.last_write().duplicates, 200);
    // Half overlapping.
    let b2 = batch(1, 101..=300);
    w.write(&b2).await.expect("overlapping write");
    assert_eq!(w.last_write().duplicates, 100);
    assert_eq!(stream_messages(&config).await, 300);
    assert_eq!(w.last_held().await.expect("last held"), Some(300));
    assert_eq!(
        sink.stream_duplicate_window(),
        Some(std::time::Duration::from_secs(120))
    );
    delete_stream(&config).await;
}

#[tokio::test]
async fn a_missing_stream_is_fatal_without_create_stream() {
    let Some(mut config) = config("js_no_create") else {
        return;
    };
    config.create_stream = false;
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let e = sink.writer(0).await.expect_err("no stream");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        e.message
            .contains("does not exist and create_stream is false"),
        "{e}"
    );
    assert!(e.message.contains(&config.stream), "{e}");
    let e = sink.health().await.expect_err("health names it too");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
}

#[tokio::test]
async fn a_deleted_stream_is_fatal_for_write_and_last_held() {
    let Some(config) = config("js_deleted") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    sink.health().await.expect("healthy");
    let mut w = sink.writer(0).await.expect("writer");
    w.write(&batch(0, 1..=3)).await.expect("write");
    delete_stream(&config).await;
    let e = w.write(&batch(0, 4..=6)).await.expect_err("no stream");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("does not exist"), "{e}");
    let e = w.last_held().await.expect_err("no stream");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("does not exist"), "{e}");
}

#[tokio::test]
async fn shutdown_clears_the_client_and_refuses_every_later_call() {
    let Some(config) = config("js_shutdown") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(0).await.expect("writer");
    let mut source = sink.source().await.expect("source");
    w.write(&batch(0, 1..=10)).await.expect("write");
    let client = sink.client().expect("a client while running");
    sink.shutdown().await;
    assert!(sink.client().is_none(), "the client is cleared");
    assert!(sink.is_shut_down());
    assert_eq!(sink.drained_clients(), 1);
    assert!(
        sink.last_drain_error().is_none(),
        "{:?}",
        sink.last_drain_error()
    );
    // The drained client is closed: it takes nothing more.
    assert!(client.flush().await.is_err(), "the old client still works");
    for e in [
        w.write(&batch(0, 11..=12))
            .await
            .expect_err("write after shutdown"),
        w.last_held().await.expect_err("last_held after shutdown"),
        source
            .poll(&SourceCursor::start("jetstream"), 10)
            .await
            .expect_err("poll after shutdown"),
    ] {
        assert_eq!(e.class, ErrorClass::Fatal, "{e}");
        assert_eq!(e.message, "jetstream adapter has shut down");
    }
    // Initialising again makes a new connection; the old writer stays refused.
    let mut w2 = sink.writer(0).await.expect("writer after shutdown");
    assert!(!sink.is_shut_down());
    assert_eq!(w2.last_held().await.expect("last held"), Some(10));
    w2.write(&batch(0, 11..=12))
        .await
        .expect("the new writer writes");
    assert!(w.write(&batch(0, 13..=13)).await.is_err());
    assert_eq!(stream_messages(&config).await, 12);
    sink.shutdown().await;
    delete_stream(&config).await;
}

/// Shutting down, or replacing the client, while a batch's acknowledgements are outstanding:
/// the old client is drained first, so every publish handed to it reaches the stream; the
/// writer's retry (last held, then the duplicate window) finishes the batch exactly once.
#[tokio::test]
async fn replacing_or_shutting_down_mid_batch_drains_the_old_client_first() {
    let Some(config) = config("js_drain_first") else {
        return;
    };
    for shut_down in [false, true] {
        let mut sink = JetStreamSink::new(config.clone()).expect("config");
        let mut w = sink.writer(4).await.expect("writer");
        let base = if shut_down { 1000 } else { 0 };
        let mut b = batch(4, base + 1..=base + 1000);
        let ready = Arc::new(tokio::sync::Notify::new());
        let signal = Arc::clone(&ready);
        w.set_ack_wait_hook(Some(Box::new(move |_| signal.notify_one())));
        let old = sink.client().expect("client");
        let (written, replaced) = tokio::join!(w.write(&b), async {
            // At the moment every publish was handed over and the acks are outstanding.
            ready.notified().await;
            if shut_down {
                sink.shutdown().await;
                Ok(())
            } else {
                sink.reconnect().await
            }
        });
        replaced.expect("replaced");
        assert_eq!(sink.drained_clients(), 1);
        assert!(old.flush().await.is_err(), "the old client was closed");
        // Everything handed to the old client reached the stream, acknowledged or not.
        assert_eq!(
            wait_stream_messages(&config, base + 1000).await,
            base + 1000
        );
        if shut_down {
            // Initialising again; the new writer finds the batch held.
            w = sink.writer(4).await.expect("writer after shutdown");
        }
        w.set_ack_wait_hook(None);
        if written.is_err() {
            let done = write_with_retry(&mut w, &mut b, 5, |_| {})
                .await
                .expect("the retry finishes");
            assert!(done.attempts >= 1);
        }
        assert_eq!(w.last_held().await.expect("last held"), Some(base + 1000));
        assert_eq!(stream_messages(&config).await, base + 1000);
        sink.shutdown().await;
    }
    delete_stream(&config).await;
}

#[tokio::test]
async fn last_held_of_a_foreign_message_is_fatal_not_empty() {
    let Some(config) = config("js_foreign_last") else {
        return;
    };
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(7).await.expect("writer");
    w.write(&batch(7, 1..=2)).await.expect("write");
    let client = connect_plain(&config).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    js.publish(config.subject(7), "no headers".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let e = w.last_held().await.expect_err("foreign last message");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("no Nats-Msg-Id"), "{e}");
    assert!(e.message.contains("stream sequence 3"), "{e}");
    // The client's own kind for an empty subject, for the record.
    let stream = js.get_stream(&config.stream).await.expect("stream");
    let empty = stream
        .get_last_raw_message_by_subject(&config.subject(8))
        .await
        .expect_err("empty subject");
    assert_eq!(empty.kind(), LastRawMessageErrorKind::NoMessageFound);
    let _ = client.drain().await;
    delete_stream(&config).await;
}
