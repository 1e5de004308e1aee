//! The Redis sink and source on a private 3-node Redis Cluster: the shards' streams land on
//! different nodes, and the same code (the async cluster client) writes and reads them back
//! exactly.

mod common;

use common::{batch, now_ns};

use std::collections::BTreeSet;

use common::redis_server::RedisCluster;
use net_adapters::redis::{RedisConfig, RedisSink};
use net_adapters::{ShardWriter, SinkBackend, SourceCursor, StreamSource};

#[tokio::test]
async fn a_three_node_cluster_holds_every_shard_exactly_once() {
    let test = "a_three_node_cluster_holds_every_shard_exactly_once";
    let cluster = match RedisCluster::start(test) {
        Ok(c) => c,
        Err(why) => {
            let msg = format!("SKIPPED {test}: no private Redis Cluster here: {why}");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{msg} -- under CI it must run"
            );
            eprintln!("\n!!!!!!!! {msg}\n");
            return;
        }
    };
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut cfg = RedisConfig::cluster(&nodes);
    cfg.prefix = common::unique("cluster");
    cfg.shards = Some(8);
    cfg.dedup_capacity = Some(10_000);
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    assert!(
        sink.destination().starts_with("redis-cluster://127.0.0.1:"),
        "{}",
        sink.destination()
    );
    sink.health().await.unwrap();

    let ts0 = now_ns();
    for shard in 0..8u16 {
        let mut w = sink.writer(shard).await.unwrap();
        assert_eq!(w.last_held().await.unwrap(), None);
        w.write(&batch(shard, 0..40, ts0)).await.unwrap();
        // A retried, overlapping batch: held once.
        w.write(&batch(shard, 30..50, ts0)).await.unwrap();
        assert_eq!(w.last_held().await.unwrap(), Some(49), "shard {shard}");
    }

    // The streams are spread over the nodes.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(holding >= 2, "the 8 streams landed on {holding} node(s)");

    let mut source = sink.source().unwrap();
    let mut cursor = SourceCursor::start("redis");
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let p = source.poll(&cursor, usize::MAX).await.unwrap();
        assert!(p.failed_shards.is_empty(), "{:?}", p.failed_shards);
        for e in &p.events {
            assert_eq!(
                &e.payload[..],
                format!("event {}:{}", e.shard, e.seq).as_bytes()
            );
            assert!(got.insert((e.shard, e.seq)), "{} twice", e.id());
        }
        cursor = p.next;
    }
    let want: BTreeSet<(u16, u64)> = (0..8).flat_map(|s| (0..50).map(move |q| (s, q))).collect();
    assert_eq!(got, want);
    assert_eq!(source.dedup().duplicates(), 0);

    sink.shutdown().await;
    let e = sink.writer(0).await.unwrap_err();
    assert!(e.message.contains("redis adapter has shut down"), "{e}");
}
