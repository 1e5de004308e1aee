//! The sink driver with the JetStream backend, end to end: a bus's events (plain and mirrored
//! ones with their origin) carried to JetStream exactly once, a restart that lost its
//! checkpoint resumed from what the stream holds, a private nats-server SIGKILLed in the middle
//! of a sink run and restarted on its store, and the stream imported into another bus exactly
//! once through the source.

mod common;

use common::{bus, runtime, send};

use std::collections::BTreeMap;
use std::time::Duration;

use common::nats_server::{NatsServer, delete_stream, js_config, stream_messages};
use net_adapters::jetstream::{JetStreamConfig, JetStreamSink, JetStreamSource};
use net_adapters::{Importer, Sink, SinkStatus, SourceCursor, SourceEvent, StreamSource};
use net_engine::{Bus, Origin, ShardId};

/// Every event the stream holds, through the source, with the dedup's count of repeats.
fn read_stream(config: &JetStreamConfig) -> (Vec<SourceEvent>, u64) {
    runtime().block_on(async {
        let mut source = JetStreamSource::connect(config.clone())
            .await
            .expect("source");
        let mut cursor = SourceCursor::start("jetstream");
        let mut events = Vec::new();
        loop {
            let poll = source.poll(&cursor, 5_000).await.expect("poll");
            assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
            if poll.events.is_empty() {
                break;
            }
            events.extend(poll.events);
            cursor = poll.next;
        }
        let repeats = source.dedup().duplicates();
        source.shutdown().await;
        (events, repeats)
    })
}

/// Checks that the stream holds every event of the bus exactly once, as the bus stored it:
/// the same count of messages (no repeat stored), and per shard the same sequence numbers,
/// timestamps, origins and payloads. Compared by sequence number: after a server crash, the
/// publishes the client had buffered and sends again once it reconnects can land before the
/// sink's retry of the earlier events of their batch, so a shard's events can be stored out
/// of order (never missing, never twice).
fn assert_exactly_once(config: &JetStreamConfig, bus: &Bus) -> u64 {
    let resp = bus
        .poll(&net_engine::Cursor::start(), usize::MAX)
        .expect("poll the bus");
    let (events, repeats) = read_stream(config);
    assert_eq!(repeats, 0, "the stream holds a repeated event");
    let held = runtime().block_on(stream_messages(config));
    assert_eq!(held, resp.events.len() as u64, "messages in the stream");
    let mut got: BTreeMap<u16, Vec<&SourceEvent>> = BTreeMap::new();
    for e in &events {
        got.entry(e.shard).or_default().push(e);
    }
    for shard in 0..bus.shards() {
        let shard = u16::try_from(shard).expect("shard");
        let want: Vec<_> = resp
            .events
            .iter()
            .filter(|e| e.id.shard.0 == shard)
            .collect();
        let mut got = got.remove(&shard).unwrap_or_default();
        got.sort_by_key(|e| e.seq);
        assert_eq!(got.len(), want.len(), "shard {shard}: every event once");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.seq, w.id.seq.0, "shard {shard}");
            assert_eq!(g.ts_ns, w.ts_ns, "shard {shard} seq {}", g.seq);
            assert_eq!(g.origin, w.origin, "shard {shard} seq {}", g.seq);
            assert_eq!(g.payload, w.payload, "shard {shard} seq {}", g.seq);
        }
    }
    events.len() as u64
}

#[test]
fn a_sink_carries_the_bus_to_jetstream_exactly_once_and_resumes_from_what_it_holds() {
    let test = "js_driver";
    let Some(url) = common::nats_url(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = bus(dir.path(), 2);
    let mut config = js_config(&url, test);
    config.dedup_capacity = Some(100_000);

    let sink = Sink::start(
        &bus,
        JetStreamSink::new(config.clone()).expect("config"),
        common::sink_config(dir.path(), "jetstream"),
    )
    .expect("start");
    send(&bus, 0, 5_000);
    // Mirrored events keep their origin in the stream (Net-Origin) and back.
    let mut mirror = bus.mirror_producer().expect("mirror producer");
    for i in 0..100u64 {
        let origin = Origin {
            node: 0x5eed_0000_0000_0001,
            shard: 3,
            seq: 1_000 + i,
        };
        mirror
            .send(
                ShardId(u16::try_from(i % 2).expect("shard")),
                origin,
                b"mirrored",
            )
            .expect("mirror send");
    }
    bus.flush().expect("flush");
    sink.wait_caught_up(Duration::from_secs(30))
        .expect("caught up");
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(stats.status, SinkStatus::Stopped);
    assert_eq!(stats.backend, "jetstream");
    assert_eq!(stats.shards.iter().map(|s| s.written).sum::<u64>(), 5_100);
    assert_eq!(assert_exactly_once(&config, &bus), 5_100);

    // The checkpoint is lost; the next sink resumes after what the stream holds, not at 0.
    std::fs::remove_file(dir.path().join("checkpoints/jetstream.sink")).expect("remove");
    send(&bus, 5_000, 8_000);
    let sink = Sink::start(
        &bus,
        JetStreamSink::new(config.clone()).expect("config"),
        common::sink_config(dir.path(), "jetstream"),
    )
    .expect("start");
    sink.wait_caught_up(Duration::from_secs(30))
        .expect("caught up");
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(
        stats.shards.iter().map(|s| s.written).sum::<u64>(),
        3_000,
        "{stats:?}"
    );
    assert_eq!(assert_exactly_once(&config, &bus), 8_100);
    runtime().block_on(delete_stream(&config));
}

#[test]
fn a_nats_server_killed_during_a_sink_run_ends_with_every_event_exactly_once() {
    let test = "js_driver_kill";
    let Some(mut server) = NatsServer::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = bus(dir.path(), 2);
    let mut config = js_config(&server.url(), test);
    config.command_timeout_ms = 1_000;
    config.connect_timeout_ms = 1_000;
    config.dedup_capacity = Some(100_000);

    let sink = Sink::start(
        &bus,
        JetStreamSink::new(config.clone()).expect("config"),
        common::sink_config(dir.path(), "jetstream"),
    )
    .expect("start");
    send(&bus, 0, 10_000);
    // Killed while the sink is publishing: it has confirmed some, not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = sink.stats();
        let confirmed: u64 = s.shards.iter().map(|s| s.confirmed_end).sum();
        if confirmed > 0 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill();
    let at_kill = sink.stats();
    eprintln!("at the kill: {:?}", at_kill.shards);
    send(&bus, 10_000, 15_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let down = loop {
        let down = sink.stats();
        let transient: u64 = down.shards.iter().map(|s| s.transient_errors).sum();
        if transient > 0 || std::time::Instant::now() > deadline {
            break down;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        down.status,
        SinkStatus::Running,
        "a dead server is transient: {down:?}"
    );
    assert!(
        down.shards.iter().map(|s| s.transient_errors).sum::<u64>() > 0,
        "{down:?}"
    );
    server.restart();
    send(&bus, 15_000, 20_000);
    sink.wait_caught_up(Duration::from_secs(45))
        .expect("caught up after the restart");
    let stats = sink.stop(Duration::from_secs(5));
    eprintln!("after the kill and restart: {stats:?}");
    assert_eq!(stats.status, SinkStatus::Stopped, "{stats:?}");
    assert_eq!(
        stats.shards.iter().map(|s| s.fatal_errors).sum::<u64>(),
        0,
        "{stats:?}"
    );
    assert_eq!(assert_exactly_once(&config, &bus), 20_000);
}

#[test]
fn a_jetstream_stream_imports_into_another_bus_exactly_once() {
    let test = "js_driver_import";
    let Some(url) = common::nats_url(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let from = bus(&dir.path().join("from"), 2);
    let mut config = js_config(&url, test);
    config.dedup_capacity = Some(100_000);
    let sink = Sink::start(
        &from,
        JetStreamSink::new(config.clone()).expect("config"),
        common::sink_config(dir.path(), "jetstream"),
    )
    .expect("start");
    send(&from, 0, 3_000);
    sink.wait_caught_up(Duration::from_secs(30))
        .expect("caught up");
    drop(sink);

    let into = bus(&dir.path().join("into"), 2);
    let rt = runtime();
    let tag = 0x7ed1_5001;
    let import_all = |cursor: SourceCursor| {
        rt.block_on(async {
            let mut source = JetStreamSource::connect(config.clone())
                .await
                .expect("source");
            let mut importer = Importer::new(&into, tag).expect("importer");
            let mut cursor = cursor;
            loop {
                let r = importer
                    .step(&mut source, &cursor, 700)
                    .await
                    .expect("import step");
                assert!(
                    r.poll.failed_shards.is_empty(),
                    "{:?}",
                    r.poll.failed_shards
                );
                if r.poll.next == cursor {
                    break;
                }
                cursor = r.poll.next.clone();
            }
            into.flush().expect("flush");
            source.shutdown().await;
            (importer.totals(), cursor)
        })
    };
    let ((imported, already), _) = import_all(SourceCursor::start("jetstream"));
    assert_eq!((imported, already), (3_000, 0));
    // Again from the start (a lost cursor): everything is read, nothing stored twice.
    let ((imported, already), _) = import_all(SourceCursor::start("jetstream"));
    assert_eq!((imported, already), (0, 3_000));

    common::assert_imported_exactly(&from, &into, tag, 3_000);
    rt.block_on(delete_stream(&config));
}
