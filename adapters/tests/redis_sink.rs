//! The Redis sink backend against the shared redis-server: the entry format byte for byte,
//! idempotent retries, conflicts, trimming, shutdown. Each test writes under its own prefix.

mod common;

use common::{batch, now_ns, redis_conn as raw, stream_ids as ids, xrange};

use net_adapters::redis::{RedisConfig, RedisSink};
use net_adapters::{ErrorClass, OutBatch, ShardWriter, SinkBackend, SourceCursor, StreamSource};
use net_engine::Origin;

fn config(url: &str, test: &str) -> RedisConfig {
    let mut c = RedisConfig::single(url);
    c.prefix = common::unique(test);
    c
}

#[tokio::test]
async fn a_batch_is_written_byte_exact_with_explicit_ids() {
    let test = "a_batch_is_written_byte_exact_with_explicit_ids";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "rt");
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    assert_eq!(sink.backend(), "redis");
    assert_eq!(sink.destination(), format!("{url} {}", cfg.prefix));
    sink.health().await.unwrap();

    let ts0 = now_ns();
    let binary: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let origin = Origin {
        node: 0x1234_5678_9abc_def0,
        shard: 9,
        seq: 77,
    };
    let mut b = OutBatch::new(3);
    b.push(10, ts0, None, &binary);
    b.push(11, ts0 + 1, None, b"");
    b.push(13, ts0 + 2_000_000, None, &big); // a gap in seqs, the next millisecond
    b.push(14, ts0 + 2_000_001, Some(origin), b"mirrored");

    let mut w = sink.writer(3).await.unwrap();
    assert_eq!(w.key(), format!("{}:3", cfg.prefix));
    assert_eq!(
        w.last_held().await.unwrap(),
        None,
        "an empty stream holds nothing"
    );
    w.write(&b).await.unwrap();
    assert_eq!(w.last_held().await.unwrap(), Some(14));

    let mut c = raw(&url).await;
    let got = xrange(&mut c, &format!("{}:3", cfg.prefix)).await;
    assert_eq!(got.len(), 4);
    for (i, (entry_id, fields)) in got.iter().enumerate() {
        let e = b.get(i);
        assert_eq!(*entry_id, format!("{}-{}", e.ts_ns / 1_000_000, e.seq));
        let mut want = vec![
            ("id".to_owned(), format!("3:{}", e.seq).into_bytes()),
            ("ts".to_owned(), e.ts_ns.to_string().into_bytes()),
            ("data".to_owned(), e.payload.to_vec()),
        ];
        if let Some(o) = e.origin {
            want.push((
                "origin".to_owned(),
                format!("{:016x}:{}:{}", o.node, o.shard, o.seq).into_bytes(),
            ));
        }
        assert_eq!(*fields, want, "entry {i}");
    }
    assert_eq!(got[3].1[3].1, b"123456789abcdef0:9:77");

    // Another shard's stream is separate.
    let mut w0 = sink.writer(0).await.unwrap();
    assert_eq!(w0.last_held().await.unwrap(), None);
    w0.write(&batch(0, 0..3, ts0)).await.unwrap();
    assert_eq!(w0.last_held().await.unwrap(), Some(2));
    assert_eq!(
        ids(&mut c, &format!("{}:0", cfg.prefix)).await,
        ["0:0", "0:1", "0:2"]
    );

    // A writer refuses another shard's batch.
    let e = w0.write(&batch(1, 0..1, ts0)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
}

#[tokio::test]
async fn a_retried_or_overlapping_batch_is_held_once() {
    let test = "a_retried_or_overlapping_batch_is_held_once";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "idem");
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    let mut w = sink.writer(1).await.unwrap();
    let ts0 = now_ns();
    w.write(&batch(1, 0..10, ts0)).await.unwrap();
    // The same batch again (its first write landed but the answer was lost): Ok, nothing new.
    w.write(&batch(1, 0..10, ts0)).await.unwrap();
    // One overlapping it: the held part is refused by Redis, the rest lands.
    w.write(&batch(1, 5..15, ts0)).await.unwrap();
    // A prefix of an already held range alone.
    w.write(&batch(1, 3..8, ts0)).await.unwrap();
    let mut c = raw(&url).await;
    let want: Vec<String> = (0..15).map(|s| format!("1:{s}")).collect();
    assert_eq!(ids(&mut c, &format!("{}:1", cfg.prefix)).await, want);
    assert_eq!(w.last_held().await.unwrap(), Some(14));
}

#[tokio::test]
async fn another_writer_on_the_stream_is_a_fatal_conflict() {
    let test = "another_writer_on_the_stream_is_a_fatal_conflict";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let cfg = config(&url, "conflict");
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    let ts0 = now_ns();
    w.write(&batch(0, 0..5, ts0)).await.unwrap();

    // Someone else (another bus on this prefix, its clock ahead) writes an entry with a higher
    // entry id but a lower seq than our next batch.
    let mut c = raw(&url).await;
    let foreign_id = format!("{}-2", ts0 / 1_000_000 + 3_600_000);
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg(&foreign_id)
        .arg("id")
        .arg("0:2")
        .arg("ts")
        .arg(ts0)
        .arg("data")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let e = w.write(&batch(0, 5..8, ts0)).await.unwrap_err();
    eprintln!("conflict: {e}");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    let ours = format!("{}-7", (ts0 + 7 * 250_000) / 1_000_000);
    for part in [
        key.as_str(),
        ours.as_str(),
        foreign_id.as_str(),
        "0:2",
        "0:7",
        "another writer",
    ] {
        assert!(e.message.contains(part), "`{e}` does not name {part}");
    }
    assert_eq!(
        ids(&mut c, &key).await,
        ["0:0", "0:1", "0:2", "0:3", "0:4", "0:2"]
    );

    // An entry of another shard on top of our stream: last_held refuses it.
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("id")
        .arg("5:100")
        .arg("ts")
        .arg(ts0)
        .arg("data")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let e = w.last_held().await.unwrap_err();
    eprintln!("foreign top: {e}");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        e.message.contains("5:100") && e.message.contains(&key),
        "{e}"
    );

    // A key that is not a stream: WRONGTYPE, fatal, naming the key.
    let wrong = format!("{}:4", cfg.prefix);
    let _: () = redis::cmd("SET")
        .arg(&wrong)
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut w4 = sink.writer(4).await.unwrap();
    let e = w4.write(&batch(4, 0..2, ts0)).await.unwrap_err();
    eprintln!("wrongtype: {e}");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        e.message.contains("WRONGTYPE") && e.message.contains(&wrong),
        "{e}"
    );
}

#[tokio::test]
async fn maxlen_keeps_the_stream_near_its_bound() {
    let test = "maxlen_keeps_the_stream_near_its_bound";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let mut cfg = config(&url, "maxlen");
    cfg.maxlen = Some(100);
    let key = format!("{}:2", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(2).await.unwrap();
    let ts0 = now_ns();
    for chunk in 0..20u64 {
        w.write(&batch(2, chunk * 100..(chunk + 1) * 100, ts0))
            .await
            .unwrap();
    }
    let mut c = raw(&url).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    // Approximate trimming removes whole radix-tree nodes (100 entries each by default).
    assert!(
        (100..=300).contains(&len),
        "XLEN {len} after 2000 entries with MAXLEN ~ 100"
    );
    assert_eq!(w.last_held().await.unwrap(), Some(1999));
    let got = ids(&mut c, &key).await;
    assert_eq!(got.last().map(String::as_str), Some("2:1999"));
    // A retry of trimmed entries is still refused as held (the stream keeps its last id).
    w.write(&batch(2, 0..10, ts0)).await.unwrap();
    let len2: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len2, len);
}

#[tokio::test]
async fn after_shutdown_everything_is_refused() {
    let test = "after_shutdown_everything_is_refused";
    let Some(url) = common::redis_url(test) else {
        return;
    };
    let mut cfg = config(&url, "down");
    cfg.shards = Some(1);
    cfg.dedup_capacity = Some(1000);
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    let mut source = sink.source().unwrap();
    let ts0 = now_ns();
    w.write(&batch(0, 0..3, ts0)).await.unwrap();
    sink.health().await.unwrap();

    sink.shutdown().await;
    let e = w.write(&batch(0, 3..6, ts0)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("redis adapter has shut down"), "{e}");
    assert!(e.message.contains(&key), "{e}");
    for e in [
        w.last_held().await.unwrap_err(),
        sink.health().await.unwrap_err(),
        sink.writer(1).await.unwrap_err(),
        source
            .poll(&SourceCursor::start("redis"), 10)
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.class, ErrorClass::Fatal, "{e}");
        assert!(e.message.contains("redis adapter has shut down"), "{e}");
    }
    let mut c = raw(&url).await;
    assert_eq!(
        ids(&mut c, &key).await,
        ["0:0", "0:1", "0:2"],
        "nothing was written after shutdown"
    );
}
