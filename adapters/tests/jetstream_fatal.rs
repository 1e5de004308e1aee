//! Errors retrying cannot mend are fatal at once, against a private nats-server with users
//! and permissions: a user that may not publish to the shard's subject (the server drops the
//! publish and says so only asynchronously: without listening, that is a timeout, retried
//! forever), a user that may not use the JetStream API, and a wrong password.

mod common;

use net_adapters::jetstream::{JetStreamConfig, JetStreamSink, JetStreamSource};
use net_adapters::{ErrorClass, ShardWriter, SinkBackend, SourceCursor, StreamSource};

use common::nats_server::{NatsServer, batch, js_config, write_with_retry};

const USERS: &str = r#"
authorization {
  users = [
    { user: "writer", password: "right" },
    { user: "nopub", password: "right", permissions: {
        publish: { allow: ["$JS.API.>"] },
        subscribe: { allow: ["_INBOX.>"] }
    } },
    { user: "nojs", password: "right", permissions: {
        publish: { allow: ["t.>"] },
        subscribe: { allow: ["_INBOX.>"] }
    } },
    { user: "sinkonly", password: "right", permissions: {
        publish: { allow: ["t.>", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.CREATE.*",
                           "$JS.API.STREAM.MSG.GET.*"] },
        subscribe: { allow: ["_INBOX.>"] }
    } },
    { user: "sourceonly", password: "right", permissions: {
        publish: { allow: ["$JS.API.STREAM.INFO.*", "$JS.API.CONSUMER.CREATE.*",
                           "$JS.API.CONSUMER.MSG.NEXT.*.*"] },
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}
"#;

fn as_user(server: &NatsServer, test: &str, user: &str, password: &str) -> JetStreamConfig {
    let mut config = js_config(&server.url(), test);
    config.user = Some(user.to_owned());
    config.password = Some(password.to_owned());
    config.dedup_capacity = Some(1000);
    config
}

#[tokio::test]
async fn permission_errors_and_bad_credentials_are_fatal_at_once() {
    let Some(server) = NatsServer::start_with_config("js_fatal", Some(USERS)) else {
        return;
    };

    // The writer user works (the control).
    let config = as_user(&server, "js_fatal_ok", "writer", "right");
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(0).await.expect("writer");
    let mut b = batch(0, 1..=10);
    write_with_retry(&mut w, &mut b, 3, |_| {})
        .await
        .expect("the writer user may publish");

    // No publish permission on the subject: fatal on the first batch, not retried. (A wait
    // that ended by the 30 s timeout would have been transient: only the server's error makes
    // it fatal.)
    let mut config = as_user(&server, "js_fatal_nopub", "nopub", "right");
    config.command_timeout_ms = 30_000;
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let mut w = sink.writer(0).await.expect("the stream can be created");
    let mut b = batch(0, 1..=100);
    let (e, report) = write_with_retry(&mut w, &mut b, 10, |_| {})
        .await
        .expect_err("publishing is denied");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert_eq!(report.attempts, 1, "retried: {:?}", report.transient_errors);
    assert!(e.message.contains("Permissions Violation"), "{e}");
    assert!(e.message.contains(&config.subject(0)), "{e}");
    eprintln!("denied publish: {e}");
    sink.shutdown().await;

    // No JetStream API permission: the writer cannot even read the stream.
    let mut config = as_user(&server, "js_fatal_nojs", "nojs", "right");
    config.command_timeout_ms = 30_000;
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let e = sink.writer(0).await.expect_err("the API is denied");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.contains("Permissions Violation"), "{e}");
    assert!(e.message.contains("$JS.API"), "{e}");
    eprintln!("denied API: {e}");

    // A wrong password: fatal at connect, for the writer, the health check and a source.
    let config = as_user(&server, "js_fatal_pw", "writer", "wrong");
    let mut sink = JetStreamSink::new(config.clone()).expect("config");
    let e = sink.writer(0).await.expect_err("wrong password");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    assert!(e.message.to_lowercase().contains("authorization"), "{e}");
    assert!(!e.message.contains("wrong"), "the password leaked: {e}");
    eprintln!("wrong password: {e}");
    let e = sink.health().await.expect_err("wrong password");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
    let e = JetStreamSource::connect(config)
        .await
        .expect_err("wrong password");
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");

    // Nobody listening on the port: transient (a server restarting looks the same).
    let mut config = js_config("nats://127.0.0.1:1", "js_fatal_refused");
    config.connect_timeout_ms = 500;
    let mut sink = JetStreamSink::new(config).expect("config");
    let e = sink.writer(0).await.expect_err("refused");
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
}

/// The permissions `docs/adapters-jetstream.md` lists are enough: a sink user that can only
/// publish its subjects and the stream's info, create and message-get API, and a source user
/// that can only read the stream's info and create and pull an ephemeral consumer.
#[tokio::test]
async fn the_documented_least_permissions_suffice() {
    let Some(server) = NatsServer::start_with_config("js_least", Some(USERS)) else {
        return;
    };
    let sink_config = as_user(&server, "js_least", "sinkonly", "right");
    let mut sink = JetStreamSink::new(sink_config.clone()).expect("config");
    sink.health().await.expect("health");
    let mut w = sink.writer(2).await.expect("writer (creates the stream)");
    assert_eq!(w.last_held().await.expect("last held"), None);
    w.write(&batch(2, 1..=50)).await.expect("write");
    w.write(&batch(2, 41..=60))
        .await
        .expect("a retry (duplicates)");
    assert_eq!(w.last_held().await.expect("last held"), Some(60));
    sink.shutdown().await;
    assert!(
        sink.last_drain_error().is_none(),
        "{:?}",
        sink.last_drain_error()
    );

    let mut source_config = sink_config.clone();
    source_config.user = Some("sourceonly".into());
    let mut source = JetStreamSource::connect(source_config)
        .await
        .expect("source");
    let mut cursor = SourceCursor::start("jetstream");
    let mut seqs = Vec::new();
    for _ in 0..10 {
        let poll = source.poll(&cursor, 25).await.expect("poll");
        assert!(poll.failed_shards.is_empty(), "{:?}", poll.failed_shards);
        if poll.events.is_empty() {
            break;
        }
        seqs.extend(poll.events.iter().map(|e| e.seq));
        cursor = poll.next;
    }
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    source.shutdown().await;
}
