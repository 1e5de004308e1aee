//! The Redis sink backend against private redis-servers it pauses, kills and locks out: a
//! timeout is transient and recoverable, bad credentials and missing permissions are fatal at
//! once, and a server SIGKILLed in the middle of a writer loop that follows the sink's retry
//! protocol ends up with every event exactly once.

mod common;

use common::now_ns;

/// The `id` fields of every entry of `key`.
async fn ids(url: &str, key: &str) -> Vec<String> {
    common::stream_ids(&mut common::redis_conn(url).await, key).await
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use net_adapters::redis::{RedisConfig, RedisSink, RedisWriter};
use net_adapters::{
    AdapterError, ErrorClass, OutBatch, ShardWriter, SinkBackend, SourceCursor, StreamSource,
};

/// A deadline no passing run comes near: only there to turn a hang into a failure.
const GENEROUS: Duration = Duration::from_secs(20);

fn batch(shard: u16, seqs: std::ops::Range<u64>, ts0: u64, size: usize) -> OutBatch {
    let mut b = OutBatch::new(shard);
    let mut payload = vec![0u8; size];
    for seq in seqs {
        payload.fill(u8::try_from(seq % 251).expect("below 251"));
        b.push(seq, ts0 + seq * 100_000, None, &payload);
    }
    b
}

fn config(url: &str, test: &str, timeout_ms: u64) -> RedisConfig {
    let mut c = RedisConfig::single(url);
    c.prefix = common::unique(test);
    c.command_timeout_ms = timeout_ms;
    c.connect_timeout_ms = timeout_ms;
    c
}

fn within<T>(what: &str, r: Result<T, tokio::time::error::Elapsed>) -> T {
    r.unwrap_or_else(|_| panic!("{what} did not return within {GENEROUS:?}"))
}

#[tokio::test]
async fn a_paused_server_times_out_transiently_and_recovers() {
    let test = "a_paused_server_times_out_transiently_and_recovers";
    let Some(server) = RedisServer::start(test, &[]) else {
        return;
    };
    let url = server.url();
    let cfg = config(&url, "pause", 300);
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    let ts0 = now_ns();
    w.write(&batch(0, 0..5, ts0, 100)).await.unwrap();
    sink.health().await.unwrap();
    // The writer and the health check each have a connection of their own (the third
    // client is redis-cli asking).
    let clients = server.cli(&["CLIENT", "LIST"]);
    assert_eq!(clients.lines().count(), 3, "{clients}");

    server.pause();
    let b = batch(0, 5..10, ts0, 100);
    let e = within(
        "a write to a paused server",
        tokio::time::timeout(GENEROUS, w.write(&b)).await,
    )
    .unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(
        e.message.contains("no answer within") && e.message.contains(&key),
        "{e}"
    );
    let e = within(
        "last_held",
        tokio::time::timeout(GENEROUS, w.last_held()).await,
    )
    .unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    let e = within(
        "a PING",
        tokio::time::timeout(GENEROUS, sink.health()).await,
    )
    .unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(e.message.contains("PING"), "{e}");
    // The source's reads time out too: each shard fails transiently, and the poll returns.
    let mut source = source_of(&sink);
    let p = within(
        "a source poll",
        tokio::time::timeout(GENEROUS, source.poll(&SourceCursor::start("redis"), 100)).await,
    )
    .unwrap();
    assert_eq!(p.failed_shards.len(), 2, "{:?}", p.failed_shards);
    assert!(
        p.failed_shards.iter().all(|(_, e)| e.is_transient()),
        "{:?}",
        p.failed_shards
    );
    assert!(
        p.failed_shards[0].1.message.contains("XRANGE"),
        "{:?}",
        p.failed_shards
    );
    server.resume();

    // The sink's retry: what the backend holds is dropped, the rest written. The abandoned
    // pipeline may have landed after the resume; either way nothing is written twice.
    let mut b = b;
    let held = within(
        "last_held",
        tokio::time::timeout(GENEROUS, w.last_held()).await,
    )
    .unwrap();
    if let Some(h) = held {
        b.drop_below(h + 1);
    }
    within(
        "the retried write",
        tokio::time::timeout(GENEROUS, w.write(&b)).await,
    )
    .unwrap();
    sink.health().await.unwrap();
    let want: Vec<String> = (0..10).map(|s| format!("0:{s}")).collect();
    assert_eq!(ids(&url, &key).await, want);
    let p = source
        .poll(&SourceCursor::start("redis"), 100)
        .await
        .unwrap();
    assert!(p.failed_shards.is_empty(), "{:?}", p.failed_shards);
    assert_eq!(p.events.len(), 10);
}

/// A source sharing `sink`'s connections' shutdown, reading its two shards.
fn source_of(sink: &RedisSink) -> net_adapters::redis::RedisSource {
    let mut cfg = sink.config().clone();
    cfg.shards = Some(2);
    cfg.dedup_capacity = Some(1000);
    RedisSink::new(cfg).unwrap().source().unwrap()
}

#[tokio::test]
async fn shutdown_closes_every_connection_even_of_writers_still_held() {
    let test = "shutdown_closes_every_connection_even_of_writers_still_held";
    let Some(server) = RedisServer::start(test, &[]) else {
        return;
    };
    let mut cfg = config(&server.url(), "close", 2000);
    cfg.shards = Some(1);
    cfg.dedup_capacity = Some(100);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w0 = sink.writer(0).await.unwrap();
    let mut w1 = sink.writer(1).await.unwrap();
    let mut source = sink.source().unwrap();
    w0.write(&batch(0, 0..2, now_ns(), 8)).await.unwrap();
    sink.health().await.unwrap();
    source
        .poll(&SourceCursor::start("redis"), 10)
        .await
        .unwrap();
    let clients = |s: &RedisServer| s.cli(&["CLIENT", "LIST"]).lines().count();
    // Two writers, the health check, the source, and redis-cli asking.
    assert_eq!(clients(&server), 5, "{}", server.cli(&["CLIENT", "LIST"]));

    sink.shutdown().await;
    // The connections' tasks close their sockets when next polled: let the runtime run.
    let deadline = Instant::now() + GENEROUS;
    while clients(&server) > 1 {
        assert!(
            Instant::now() < deadline,
            "connections still open: {}",
            server.cli(&["CLIENT", "LIST"])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The writers still exist, and refuse.
    let e = w1.write(&batch(1, 0..1, now_ns(), 8)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("redis adapter has shut down"), "{e}");
    assert_eq!(clients(&server), 1, "a refused write opens no connection");
}

#[tokio::test]
async fn bad_credentials_and_missing_permissions_are_fatal_at_once() {
    let test = "bad_credentials_and_missing_permissions_are_fatal_at_once";
    let Some(server) = RedisServer::start(test, &["--requirepass", "s3cret"]) else {
        return;
    };
    let port = server.port();
    let acl = server.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "ACL",
        "SETUSER",
        "writer",
        "on",
        ">pw",
        "~*",
        "+@all",
        "-xadd",
    ]);
    assert!(acl.contains("OK"), "ACL SETUSER: {acl}");
    let ts0 = now_ns();
    let b = batch(0, 0..3, ts0, 10);

    // A wrong password: the writer's connection is refused, fatally.
    let mut sink = RedisSink::new(config(
        &format!("redis://:wrong@127.0.0.1:{port}"),
        "auth",
        2000,
    ))
    .unwrap();
    let e = sink.writer(0).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        !e.message.contains("wrong@"),
        "the password is not printed: {e}"
    );
    let e = sink.health().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");

    // No password: connected, and the first write is refused (NOAUTH), fatally.
    let cfg = config(&format!("redis://127.0.0.1:{port}"), "noauth", 2000);
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    let e = w.write(&b).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        e.message.contains("NOAUTH") && e.message.contains(&key),
        "{e}"
    );

    // A user without +xadd: reading works, writing is refused (NOPERM), fatally.
    let cfg = config(
        &format!("redis://writer:pw@127.0.0.1:{port}"),
        "noperm",
        2000,
    );
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    assert_eq!(w.last_held().await.unwrap(), None);
    let e = w.write(&b).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(
        e.message.to_lowercase().contains("noperm") && e.message.contains(&key),
        "{e}"
    );

    // The least privileges the docs name suffice: the sink's user writes, reads its
    // position and pings; the source's user reads.
    for user in [
        "sink on >pw ~* +xadd +xrevrange +ping",
        "reader on >pw ~* +xrange",
    ] {
        let mut args = vec!["-a", "s3cret", "--no-auth-warning", "ACL", "SETUSER"];
        args.extend(user.split(' '));
        assert!(server.cli(&args).contains("OK"), "ACL SETUSER {user}");
    }
    let mut cfg = config(&format!("redis://sink:pw@127.0.0.1:{port}"), "least", 2000);
    cfg.shards = Some(1);
    cfg.dedup_capacity = Some(10);
    let mut sink = RedisSink::new(cfg.clone()).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    w.write(&b).await.unwrap();
    assert_eq!(w.last_held().await.unwrap(), Some(2));
    sink.health().await.unwrap();
    cfg.url = Some(format!("redis://reader:pw@127.0.0.1:{port}"));
    let mut source = net_adapters::redis::RedisSource::new(cfg).unwrap();
    let p = source
        .poll(&SourceCursor::start("redis"), 10)
        .await
        .unwrap();
    assert!(p.failed_shards.is_empty(), "{:?}", p.failed_shards);
    assert_eq!(p.events.len(), 3);

    // The right password writes.
    let cfg = config(&format!("redis://:s3cret@127.0.0.1:{port}"), "ok", 2000);
    let key = format!("{}:0", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(0).await.unwrap();
    w.write(&b).await.unwrap();
    assert_eq!(
        ids(&format!("redis://:s3cret@127.0.0.1:{port}"), &key).await,
        ["0:0", "0:1", "0:2"]
    );
}

/// Writes `batch` the way the sink's driver does: on a transient error back off, ask
/// `last_held`, drop what is held, retry; a fatal error is returned at once. `on_transient`
/// runs after every transient error (the test restarts a dead server there).
async fn write_with_retry(
    w: &mut RedisWriter,
    mut batch: OutBatch,
    transient: &mut u64,
    mut on_transient: impl FnMut(),
) -> Result<(), AdapterError> {
    let deadline = Instant::now() + GENEROUS;
    let mut backoff = Duration::from_millis(10);
    let mut retrying = false;
    loop {
        assert!(Instant::now() < deadline, "no progress within {GENEROUS:?}");
        if retrying {
            match w.last_held().await {
                Ok(Some(h)) => {
                    eprintln!(
                        "retrying events {:?}..={:?}: the stream holds up to {h}",
                        batch.first_seq(),
                        batch.last_seq()
                    );
                    batch.drop_below(h + 1);
                }
                Ok(None) => {}
                Err(e) if e.is_transient() => {
                    *transient += 1;
                    on_transient();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e),
            }
            if batch.is_empty() {
                return Ok(());
            }
        }
        match w.write(&batch).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                *transient += 1;
                on_transient();
                retrying = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test]
async fn a_server_killed_mid_loop_ends_with_every_event_exactly_once() {
    let test = "a_server_killed_mid_loop_ends_with_every_event_exactly_once";
    let Some(mut server) = RedisServer::start(test, &[]) else {
        return;
    };
    let url = server.url();
    let cfg = config(&url, "kill", 2000);
    let key = format!("{}:5", cfg.prefix);
    let mut sink = RedisSink::new(cfg).unwrap();
    let mut w = sink.writer(5).await.unwrap();

    const EVENTS: u64 = 8000;
    const BATCH: u64 = 400;
    let done = Arc::new(AtomicU64::new(0));
    // The killer sends SIGKILL while the 6th batch is (most likely) in flight; the test
    // thread notices and restarts the server on the same dir, and so keeps owning it.
    let pid = server.pid();
    let killer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + GENEROUS;
            while done.load(Ordering::Acquire) < 5 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            // SAFETY: kill(2) on the server's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };

    let ts0 = now_ns();
    let mut transient = 0;
    let mut restarts = 0;
    for start in (0..EVENTS).step_by(usize::try_from(BATCH).expect("fits")) {
        let b = batch(5, start..start + BATCH, ts0, 512);
        write_with_retry(&mut w, b, &mut transient, || {
            if server.exited() {
                server.restart();
                restarts += 1;
            }
        })
        .await
        .unwrap();
        done.fetch_add(1, Ordering::Release);
    }
    killer.join().unwrap();
    assert!(transient > 0, "the kill was seen");
    assert_eq!(restarts, 1, "the server was restarted once");

    let got = ids(&url, &key).await;
    let want: Vec<String> = (0..EVENTS).map(|s| format!("5:{s}")).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "every event once ({transient} transient errors)"
    );
    assert_eq!(got, want);
    assert_eq!(w.last_held().await.unwrap(), Some(EVENTS - 1));
}
