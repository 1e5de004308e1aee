//! The sink driver with the Redis backend, end to end: a bus's events carried to Redis
//! Streams exactly once, a restart that lost its checkpoint resumed from what Redis holds, a
//! private redis-server SIGKILLed in the middle of a sink run and restarted on its data dir,
//! and the streams imported into another bus exactly once through the source.

mod common;

use common::{bus, send};

use std::time::Duration;

use common::redis_server::RedisServer;
use net_adapters::redis::{RedisConfig, RedisSink, RedisSource};
use net_adapters::{Importer, Sink, SinkStatus, SourceCursor};
use net_engine::Bus;

/// Checks that Redis holds every event of the bus exactly once, as the bus stored it.
fn assert_exactly_once(url: &str, prefix: &str, bus: &Bus) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resp = bus.poll(&net_engine::Cursor::start(), usize::MAX).unwrap();
    let mut total = 0;
    for shard in 0..bus.shards() {
        let shard = u16::try_from(shard).unwrap();
        let got = rt.block_on(async {
            common::xrange(
                &mut common::redis_conn(url).await,
                &format!("{prefix}:{shard}"),
            )
            .await
        });
        let want: Vec<_> = resp
            .events
            .iter()
            .filter(|e| e.id.shard.0 == shard)
            .collect();
        assert_eq!(got.len(), want.len(), "shard {shard}: every event once");
        for (g, w) in got.iter().zip(&want) {
            let text = |name| String::from_utf8(common::field(g, name).to_vec()).expect("utf8");
            assert_eq!(text("id"), format!("{shard}:{}", w.id.seq.0));
            assert_eq!(g.0, format!("{}-{}", w.ts_ns / 1_000_000, w.id.seq.0));
            assert_eq!(text("ts").parse::<u64>().expect("ts"), w.ts_ns);
            assert_eq!(common::field(g, "data"), &w.payload[..]);
        }
        total += got.len() as u64;
    }
    total
}

#[test]
fn a_sink_carries_the_bus_to_redis_exactly_once_and_resumes_from_what_redis_holds() {
    let test = "a_sink_carries_the_bus_to_redis_exactly_once_and_resumes_from_what_redis_holds";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let mut cfg = RedisConfig::single(&url);
    cfg.prefix = common::unique("drv");

    let sink = Sink::start(
        &bus,
        RedisSink::new(cfg.clone()).unwrap(),
        common::sink_config(dir.path(), "redis"),
    )
    .unwrap();
    send(&bus, 0, 5_000);
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(stats.status, SinkStatus::Stopped);
    assert_eq!(stats.backend, "redis");
    assert_eq!(stats.shards.iter().map(|s| s.written).sum::<u64>(), 5_000);
    assert_eq!(assert_exactly_once(&url, &cfg.prefix, &bus), 5_000);

    // The checkpoint is lost; the next sink resumes after what Redis holds, not at 0.
    std::fs::remove_file(dir.path().join("checkpoints/redis.sink")).unwrap();
    send(&bus, 5_000, 8_000);
    let sink = Sink::start(
        &bus,
        RedisSink::new(cfg.clone()).unwrap(),
        common::sink_config(dir.path(), "redis"),
    )
    .unwrap();
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(
        stats.shards.iter().map(|s| s.written).sum::<u64>(),
        3_000,
        "{stats:?}"
    );
    assert_eq!(assert_exactly_once(&url, &cfg.prefix, &bus), 8_000);
}

#[test]
fn a_redis_killed_during_a_sink_run_ends_with_every_event_exactly_once() {
    let test = "a_redis_killed_during_a_sink_run_ends_with_every_event_exactly_once";
    let Some(mut server) = RedisServer::start(test, &[]) else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let mut cfg = RedisConfig::single(&url);
    cfg.prefix = common::unique("kill");
    cfg.command_timeout_ms = 1_000;
    cfg.connect_timeout_ms = 1_000;

    let sink = Sink::start(
        &bus,
        RedisSink::new(cfg.clone()).unwrap(),
        common::sink_config(dir.path(), "redis"),
    )
    .unwrap();
    send(&bus, 0, 10_000);
    // Killed while the sink is (most likely) still writing what was just sent.
    server.kill();
    send(&bus, 10_000, 15_000);
    std::thread::sleep(Duration::from_millis(300));
    let down = sink.stats();
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
    sink.wait_caught_up(Duration::from_secs(45)).unwrap();
    let stats = sink.stop(Duration::from_secs(5));
    eprintln!("after the kill and restart: {stats:?}");
    assert_eq!(stats.status, SinkStatus::Stopped, "{stats:?}");
    assert_eq!(
        stats.shards.iter().map(|s| s.fatal_errors).sum::<u64>(),
        0,
        "{stats:?}"
    );
    assert_eq!(assert_exactly_once(&url, &cfg.prefix, &bus), 20_000);
}

#[test]
fn redis_streams_import_into_another_bus_exactly_once() {
    let test = "redis_streams_import_into_another_bus_exactly_once";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = bus(&dir.path().join("from"), 2);
    let mut cfg = RedisConfig::single(&url);
    cfg.prefix = common::unique("imp");
    cfg.shards = Some(2);
    cfg.dedup_capacity = Some(100_000);
    let sink = Sink::start(
        &from,
        RedisSink::new(cfg.clone()).unwrap(),
        common::sink_config(dir.path(), "redis"),
    )
    .unwrap();
    send(&from, 0, 3_000);
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    drop(sink);

    let into = bus(&dir.path().join("into"), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tag = 0x7ed1_5000;
    let import_all = |cursor: SourceCursor| {
        rt.block_on(async {
            let mut source = RedisSource::new(cfg.clone()).unwrap();
            let mut importer = Importer::new(&into, tag).unwrap();
            let mut cursor = cursor;
            loop {
                let r = importer.step(&mut source, &cursor, 700).await.unwrap();
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
            into.flush().unwrap();
            (importer.totals(), cursor)
        })
    };
    let ((imported, already), _) = import_all(SourceCursor::start("redis"));
    assert_eq!((imported, already), (3_000, 0));
    // Again from the start (a lost cursor): everything is read, nothing stored twice.
    let ((imported, already), _) = import_all(SourceCursor::start("redis"));
    assert_eq!((imported, already), (0, 3_000));

    common::assert_imported_exactly(&from, &into, tag, 3_000);
}
