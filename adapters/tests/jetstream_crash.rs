//! A private nats-server SIGKILLed in the middle of a writer loop — at the moment a batch's
//! publishes are all handed to the client and their acknowledgements outstanding — and
//! restarted on the same port and store: with the sink driver's retry protocol (back off,
//! `last_held`, drop what is held, write the rest), the stream ends up holding every event
//! exactly once.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use net_adapters::jetstream::{JetStreamSink, JetStreamSource};
use net_adapters::{ErrorClass, ShardWriter, SinkBackend, SourceCursor, StreamSource};

use common::nats_server::{NatsServer, batch, js_config, stream_messages, write_with_retry};

const PER_SHARD: u64 = 3000;
const BATCH: u64 = 250;

#[tokio::test]
async fn sigkill_mid_batch_then_restart_holds_every_event_exactly_once() {
    let Some(server) = NatsServer::start("js_crash") else {
        return;
    };
    let server = Rc::new(RefCell::new(server));
    let url = server.borrow().url();
    let mut config = js_config(&url, "js_crash");
    config.command_timeout_ms = 1000;
    config.connect_timeout_ms = 1000;
    config.dedup_capacity = Some(100_000);
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut writers = [
        sink.writer(0).await.expect("writer 0"),
        sink.writer(1).await.expect("writer 1"),
    ];
    let mut transient = 0;
    let mut killed = false;
    let mut next = [1u64, 1u64];
    let mut round = 0;
    while next.iter().any(|n| *n <= PER_SHARD) {
        for (shard, w) in writers.iter_mut().enumerate() {
            let from = next[shard];
            if from > PER_SHARD {
                continue;
            }
            let to = (from + BATCH - 1).min(PER_SHARD);
            let shard = u16::try_from(shard).expect("shard");
            let mut b = batch(shard, from..=to);
            let kill_now = round == 5 && shard == 0;
            if kill_now {
                // SIGKILL with the whole batch handed to the client, acks outstanding (once:
                // the retries wait for acks too).
                let s = Rc::clone(&server);
                let mut armed = true;
                w.set_ack_wait_hook(Some(Box::new(move |_| {
                    if std::mem::take(&mut armed) {
                        s.borrow_mut().kill();
                    }
                })));
                killed = true;
            }
            let s = Rc::clone(&server);
            let report = write_with_retry(w, &mut b, 60, move |attempt| {
                // Down for two failed attempts, then back on the same port and store.
                if kill_now && attempt == 2 {
                    s.borrow_mut().restart();
                }
            })
            .await
            .unwrap_or_else(|(e, r)| panic!("shard {shard} batch {from}..={to}: {e} after {r:?}"));
            w.set_ack_wait_hook(None);
            for e in &report.transient_errors {
                assert_eq!(e.class, ErrorClass::Transient);
            }
            if kill_now {
                assert!(
                    report.transient_errors.len() >= 2,
                    "the kill was not felt: {report:?}"
                );
            }
            transient += report.transient_errors.len();
            next[usize::from(shard)] = to + 1;
        }
        round += 1;
    }
    assert!(killed && transient >= 2);

    // The stream holds every event exactly once: no repeat stored, none missing.
    assert_eq!(stream_messages(&config).await, 2 * PER_SHARD);
    let mut source = JetStreamSource::connect(config.clone())
        .await
        .expect("source");
    let mut cursor = SourceCursor::start("jetstream");
    let mut seen: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    loop {
        let poll = source.poll(&cursor, 2000).await.expect("poll");
        assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
        if poll.events.is_empty() {
            break;
        }
        for e in &poll.events {
            assert_eq!(&e.payload[..], format!("p{}", e.seq).as_bytes());
            seen.entry(e.shard).or_default().push(e.seq);
        }
        cursor = poll.next;
    }
    assert_eq!(source.dedup().duplicates(), 0);
    for shard in [0u16, 1] {
        assert_eq!(
            seen[&shard],
            (1..=PER_SHARD).collect::<Vec<_>>(),
            "shard {shard}"
        );
        let mut w = sink.writer(shard).await.expect("writer");
        assert_eq!(w.last_held().await.expect("last held"), Some(PER_SHARD));
    }
    sink.shutdown().await;
    source.shutdown().await;
}
