//! What the adapter tests share: finding the servers `scripts/services.sh` started, and saying
//! loudly when a test is skipped because one is missing (a failure under CI, `CI=true`).
#![allow(dead_code)]

pub mod nats_server;
pub mod redis_server;

use std::collections::HashMap;
use std::path::PathBuf;

/// The servers of `scripts/services.sh`: read from `$NET_SERVICES_DIR/env` (default
/// `/tmp/net-services/env`), overridden by `NET_REDIS_URL` / `NET_NATS_URL` in the environment.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub redis_url: Option<String>,
    pub nats_url: Option<String>,
}

pub fn services_dir() -> PathBuf {
    std::env::var_os("NET_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/net-services"))
}

pub fn services() -> Services {
    let mut vars: HashMap<String, String> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(services_dir().join("env")) {
        for line in text.lines() {
            let line = line.trim().trim_start_matches("export ");
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_owned(), v.trim_matches(['"', '\'']).to_owned());
            }
        }
    }
    let get = |k: &str| std::env::var(k).ok().or_else(|| vars.get(k).cloned());
    Services {
        redis_url: get("NET_REDIS_URL"),
        nats_url: get("NET_NATS_URL"),
    }
}

fn skipped(what: &str, test: &str) {
    let msg = format!(
        "SKIPPED {test}: no {what} (run `scripts/services.sh start`; scripts/test.sh does)"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} -- under CI the servers must run");
    }
    eprintln!("\n!!!!!!!! {msg}\n");
}

/// The URL of the shared redis-server, or `None` after saying loudly that `test` is skipped.
pub fn redis_url(test: &str) -> Option<String> {
    let url = services().redis_url;
    if url.is_none() {
        skipped("redis-server", test);
    }
    url
}

/// The URL of the shared nats-server (JetStream on), or `None` after saying loudly that
/// `test` is skipped.
pub fn nats_url(test: &str) -> Option<String> {
    let url = services().nats_url;
    if url.is_none() {
        skipped("nats-server", test);
    }
    url
}

/// Whether `binary` is on the PATH; otherwise says loudly that `test` is skipped.
pub fn have_binary(binary: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()));
    if !found {
        skipped(binary, test);
    }
    found
}

/// A unique name for a test's streams, so tests sharing one server never see each other's data.
pub fn unique(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{prefix}{}x{ns:x}", std::process::id())
}

/// Nanoseconds since the Unix epoch now.
pub fn now_ns() -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    u64::try_from(ns).expect("ns fit u64")
}

/// Events `seqs` of `shard`, 250 µs apart from `ts0` (so several share a millisecond), with
/// payloads `event <shard>:<seq>`.
pub fn batch(shard: u16, seqs: std::ops::Range<u64>, ts0: u64) -> net_adapters::OutBatch {
    let mut b = net_adapters::OutBatch::new(shard);
    for seq in seqs {
        b.push(
            seq,
            ts0 + seq * 250_000,
            None,
            format!("event {shard}:{seq}").as_bytes(),
        );
    }
    b
}

/// A connection to Redis for a test's own reads and writes: its replies may take up to 30 s
/// (the client's default of 500 ms fails on a loaded machine).
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(std::time::Duration::from_secs(30))),
        )
        .await
        .expect("connect")
}

/// A small, unpinned, parking bus configuration with its data under `dir/data`.
pub fn bus_config(dir: &std::path::Path, shards: usize) -> net_engine::Config {
    net_engine::Config::for_tests(&dir.join("data"), shards)
}

/// A bus on [`bus_config`].
pub fn bus(dir: &std::path::Path, shards: usize) -> net_engine::Bus {
    net_engine::Bus::start(bus_config(dir, shards)).expect("bus")
}

/// A sink configuration for driver tests against real servers: small batches and feed, fast
/// retries and health checks, checkpoints under `dir/checkpoints`.
pub fn sink_config(dir: &std::path::Path, name: &str) -> net_adapters::SinkConfig {
    let mut c = net_adapters::SinkConfig::new(name, dir.join("checkpoints"));
    c.batch_events_max = 256;
    c.feed_bytes = 1 << 16;
    c.backoff_min_ms = 5;
    c.backoff_max_ms = 100;
    c.health_interval_ms = 50;
    c
}

/// Sends events `from..to` (payload `event <i>`, keyed by `i`) and flushes.
pub fn send(bus: &net_engine::Bus, from: u64, to: u64) {
    let mut p = bus.producer().expect("producer");
    for i in from..to {
        p.send(&i.to_le_bytes(), format!("event {i}").as_bytes())
            .expect("send");
    }
    bus.flush().expect("flush");
}

/// A tokio current-thread runtime with timers and I/O.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Checks that `into` holds exactly `count` events imported from `from` under `tag`: each of
/// `from`'s events once, with its origin `(tag, shard, seq)` and its payload byte for byte.
pub fn assert_imported_exactly(
    from: &net_engine::Bus,
    into: &net_engine::Bus,
    tag: u64,
    count: usize,
) {
    let original = from
        .poll(&net_engine::Cursor::start(), usize::MAX)
        .expect("poll");
    let copied = into
        .poll(&net_engine::Cursor::start(), usize::MAX)
        .expect("poll");
    assert_eq!(copied.events.len(), count);
    let mut want: Vec<_> = original
        .events
        .iter()
        .map(|e| ((e.id.shard.0, e.id.seq.0), e.payload.clone()))
        .collect();
    let mut got: Vec<_> = copied
        .events
        .iter()
        .map(|e| {
            let o = e.origin.expect("an imported event has its origin");
            assert_eq!(o.node, tag);
            ((o.shard, o.seq), e.payload.clone())
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}

/// One Redis stream entry: its entry id and its fields in order.
pub type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Every entry of `key`, read in pages of 1000.
pub async fn xrange(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<StreamEntry> {
    fn text(v: &redis::Value) -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
    let mut out: Vec<StreamEntry> = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .expect("XRANGE");
        let redis::Value::Array(entries) = v else {
            panic!("XRANGE: {v:?}")
        };
        if entries.is_empty() {
            return out;
        }
        for e in entries {
            let redis::Value::Array(pair) = e else {
                panic!("entry: {e:?}")
            };
            let redis::Value::Array(fields) = &pair[1] else {
                panic!("fields: {pair:?}")
            };
            let fields = fields
                .chunks(2)
                .map(|kv| match &kv[1] {
                    redis::Value::BulkString(b) => (text(&kv[0]), b.clone()),
                    other => panic!("not a bulk string: {other:?}"),
                })
                .collect();
            let entry_id = text(&pair[0]);
            start = format!("({entry_id}");
            out.push((entry_id, fields));
        }
    }
}

/// The value of field `name` of a stream entry.
pub fn field<'a>(entry: &'a StreamEntry, name: &str) -> &'a [u8] {
    entry
        .1
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .unwrap_or_else(|| panic!("entry {} has no field `{name}`", entry.0))
}

/// The `id` fields of `key`'s entries, in order.
pub async fn stream_ids(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    xrange(c, key)
        .await
        .iter()
        .map(|e| String::from_utf8(field(e, "id").to_vec()).expect("utf8 id"))
        .collect()
}
