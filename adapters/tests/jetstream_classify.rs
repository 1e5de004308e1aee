//! No server needed: the error classification tables (every kind of every operation, and the
//! causes a wrapping kind is refined by), the configuration's validation (each refusal names
//! its field), and the header formats.

use async_nats::ConnectErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::pull::BatchErrorKind;
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishError, PublishErrorKind,
    RequestError, RequestErrorKind,
};
use async_nats::jetstream::stream::{
    ConsumerErrorKind, LastRawMessageError, LastRawMessageErrorKind,
};
use net_adapters::jetstream::classify::refine;
use net_adapters::jetstream::headers::{origin_text, parse_msg_id, parse_origin};
use net_adapters::jetstream::{
    JetStreamConfig, JetStreamSink, classify_batch, classify_code, classify_connect,
    classify_consumer, classify_core_request, classify_create_stream, classify_get_stream,
    classify_last_message, classify_publish, classify_request,
};
use net_adapters::{ErrorClass, SinkBackend};
use net_engine::Origin;

use ErrorClass::{Fatal, Transient};

/// A JetStream API error as the server sends it.
fn js_error(code: u64) -> async_nats::jetstream::Error {
    serde_json::from_str(&format!(
        r#"{{"code": 503, "err_code": {code}, "description": "test error {code}"}}"#
    ))
    .expect("a JetStream error")
}

#[test]
fn publish_kinds() {
    let table = [
        (PublishErrorKind::TimedOut, Transient),
        (PublishErrorKind::BrokenPipe, Transient),
        (PublishErrorKind::MaxAckPending, Transient),
        // No responders; the writer then asks the JetStream API whether the stream is gone.
        (PublishErrorKind::StreamNotFound, Transient),
        (PublishErrorKind::WrongLastMessageId, Fatal),
        (PublishErrorKind::WrongLastSequence, Fatal),
        (PublishErrorKind::Other, Fatal),
    ];
    for (kind, class) in table {
        assert_eq!(classify_publish(kind), class, "{kind:?}");
    }
}

#[test]
fn request_kinds() {
    for (kind, class) in [
        (RequestErrorKind::TimedOut, Transient),
        (RequestErrorKind::NoResponders, Transient),
        (RequestErrorKind::Other, Fatal),
    ] {
        assert_eq!(classify_request(kind), class, "{kind:?}");
    }
    for (kind, class) in [
        (async_nats::RequestErrorKind::TimedOut, Transient),
        (async_nats::RequestErrorKind::NoResponders, Transient),
        (async_nats::RequestErrorKind::Other, Fatal),
    ] {
        assert_eq!(classify_core_request(kind), class, "{kind:?}");
    }
}

#[test]
fn jetstream_codes() {
    let table = [
        (ErrorCode::CLUSTER_NOT_AVAILABLE, Transient),
        (ErrorCode::CLUSTER_NOT_LEADER, Transient),
        (ErrorCode::STREAM_OFFLINE, Transient),
        (ErrorCode::CONSUMER_OFFLINE, Transient),
        (ErrorCode::STREAM_NOT_FOUND, Fatal),
        (ErrorCode::STREAM_NAME_EXIST, Fatal),
        (ErrorCode::STREAM_SUBJECT_OVERLAP, Fatal),
        (ErrorCode::STREAM_WRONG_LAST_SEQUENCE, Fatal),
        (ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM, Fatal),
        (ErrorCode::STREAM_STORE_FAILED, Fatal),
        (ErrorCode::STORAGE_RESOURCES_EXCEEDED, Fatal),
        (ErrorCode::ACCOUNT_RESOURCES_EXCEEDED, Fatal),
        (ErrorCode::INSUFFICIENT_RESOURCES, Fatal),
        (ErrorCode::JETSTREAM_NOT_ENABLED, Fatal),
        (ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT, Fatal),
        (ErrorCode::BAD_REQUEST, Fatal),
        (ErrorCode::CONSUMER_NOT_FOUND, Fatal),
        (ErrorCode(99_999), Fatal),
    ];
    for (code, class) in table {
        assert_eq!(classify_code(code), class, "{code:?}");
    }
}

#[test]
fn connect_kinds() {
    let table = [
        (ConnectErrorKind::TimedOut, Transient),
        (ConnectErrorKind::Io, Transient),
        (ConnectErrorKind::Dns, Transient),
        (ConnectErrorKind::MaxReconnects, Transient),
        (ConnectErrorKind::ServerParse, Fatal),
        (ConnectErrorKind::Authentication, Fatal),
        (ConnectErrorKind::AuthorizationViolation, Fatal),
        (ConnectErrorKind::Tls, Fatal),
    ];
    for (kind, class) in table {
        assert_eq!(classify_connect(kind), class, "{kind:?}");
    }
}

#[test]
fn stream_and_consumer_kinds() {
    let create = [
        (CreateStreamErrorKind::TimedOut, Transient),
        (CreateStreamErrorKind::JetStreamUnavailable, Transient),
        (CreateStreamErrorKind::JetStream(js_error(10008)), Transient),
        (CreateStreamErrorKind::JetStream(js_error(10065)), Fatal),
        (CreateStreamErrorKind::EmptyStreamName, Fatal),
        (CreateStreamErrorKind::InvalidStreamName, Fatal),
        (CreateStreamErrorKind::DomainAndExternalSet, Fatal),
        (CreateStreamErrorKind::Response, Fatal),
        (CreateStreamErrorKind::NotFound, Fatal),
        (CreateStreamErrorKind::ResponseParse, Fatal),
    ];
    for (kind, class) in create {
        assert_eq!(classify_create_stream(&kind), class, "{kind:?}");
    }
    let get = [
        (GetStreamErrorKind::JetStream(js_error(10009)), Transient),
        (GetStreamErrorKind::JetStream(js_error(10059)), Fatal),
        (GetStreamErrorKind::EmptyName, Fatal),
        (GetStreamErrorKind::Request, Fatal),
        (GetStreamErrorKind::InvalidStreamName, Fatal),
    ];
    for (kind, class) in get {
        assert_eq!(classify_get_stream(&kind), class, "{kind:?}");
    }
    let last = [
        (
            LastRawMessageErrorKind::JetStream(js_error(10118)),
            Transient,
        ),
        (LastRawMessageErrorKind::JetStream(js_error(10059)), Fatal),
        (LastRawMessageErrorKind::NoMessageFound, Fatal),
        (LastRawMessageErrorKind::InvalidSubject, Fatal),
        (LastRawMessageErrorKind::Other, Fatal),
    ];
    for (kind, class) in last {
        assert_eq!(classify_last_message(&kind), class, "{kind:?}");
    }
    let consumer = [
        (ConsumerErrorKind::TimedOut, Transient),
        (ConsumerErrorKind::JetStream(js_error(10119)), Transient),
        (ConsumerErrorKind::JetStream(js_error(10026)), Fatal),
        (ConsumerErrorKind::Request, Fatal),
        (ConsumerErrorKind::InvalidConsumerType, Fatal),
        (ConsumerErrorKind::InvalidName, Fatal),
        (ConsumerErrorKind::Other, Fatal),
    ];
    for (kind, class) in consumer {
        assert_eq!(classify_consumer(&kind), class, "{kind:?}");
    }
    for kind in [
        BatchErrorKind::Subscribe,
        BatchErrorKind::Pull,
        BatchErrorKind::Flush,
        BatchErrorKind::Serialize,
    ] {
        assert_eq!(classify_batch(kind), Fatal, "{kind:?}");
    }
}

/// A kind that only wraps a cause takes the cause's class when it is a recognised transient
/// one; anything else stays fatal (an `Other` is never retried on a guess).
#[test]
fn wrapping_kinds_are_refined_by_their_cause() {
    let publish = |source: Option<async_nats::jetstream::Error>| match source {
        Some(js) => PublishError::with_source(PublishErrorKind::Other, js),
        None => PublishError::new(PublishErrorKind::Other),
    };
    let cases: Vec<(PublishError, ErrorClass)> = vec![
        // The server answered "JetStream temporarily unavailable" to the publish.
        (publish(Some(js_error(10008))), Transient),
        // The store failed, the message is too big: retrying cannot help.
        (publish(Some(js_error(10077))), Fatal),
        (publish(Some(js_error(10054))), Fatal),
        (publish(None), Fatal),
        (
            PublishError::with_source(PublishErrorKind::Other, std::io::Error::other("odd")),
            Fatal,
        ),
    ];
    for (e, class) in cases {
        assert_eq!(refine(classify_publish(e.kind()), &e), class, "{e}");
    }
    let timed_out = RequestError::with_source(
        RequestErrorKind::TimedOut,
        std::io::Error::other("deadline"),
    );
    let e = LastRawMessageError::with_source(LastRawMessageErrorKind::Other, timed_out);
    assert_eq!(
        refine(classify_last_message(&e.kind()), &e),
        Transient,
        "{e}"
    );
    let e = GetStreamError::with_source(
        GetStreamErrorKind::Request,
        RequestError::new(RequestErrorKind::NoResponders),
    );
    assert_eq!(refine(classify_get_stream(&e.kind()), &e), Transient, "{e}");
    let e = GetStreamError::with_source(
        GetStreamErrorKind::Request,
        RequestError::with_source(RequestErrorKind::Other, std::io::Error::other("closed")),
    );
    assert_eq!(refine(classify_get_stream(&e.kind()), &e), Fatal, "{e}");
    let e = GetStreamError::with_source(
        GetStreamErrorKind::Request,
        RequestError::with_source(RequestErrorKind::Other, js_error(10059)),
    );
    assert_eq!(refine(classify_get_stream(&e.kind()), &e), Fatal, "{e}");
    // A transient kind stays transient whatever it wraps.
    let e = PublishError::with_source(PublishErrorKind::TimedOut, js_error(10059));
    assert_eq!(refine(classify_publish(e.kind()), &e), Transient, "{e}");
}

fn refused(json: &str) -> String {
    let e = JetStreamConfig::from_json(json).expect_err(json);
    assert_eq!(e.class, Fatal, "{e}");
    e.message
}

#[test]
fn config_defaults_and_validation_name_the_field() {
    let c = JetStreamConfig::from_json(r#"{"url": "nats://127.0.0.1:4222"}"#).expect("minimal");
    assert_eq!(c, JetStreamConfig::new("nats://127.0.0.1:4222"));
    assert_eq!(c.stream, "NET");
    assert_eq!(c.subject_prefix, "net");
    assert_eq!(c.command_timeout_ms, 5000);
    assert_eq!(c.connect_timeout_ms, 5000);
    assert_eq!(c.duplicate_window_ms, 120_000);
    assert!(c.create_stream);
    assert_eq!(c.dedup_capacity, None);
    assert_eq!(c.subject(7), "net.7");
    assert_eq!(c.stream_subjects(), "net.>");

    let u = r#""url": "nats://h:4222""#;
    let cases: &[(String, &str)] = &[
        (r#"{"url": "nats://h", "strem": "X"}"#.into(), "strem"),
        (r#"{"url": ""}"#.into(), "`url`"),
        (r#"{"url": "   "}"#.into(), "`url`"),
        (format!(r#"{{{u}, "user": ""}}"#), "`user`"),
        (
            format!(r#"{{{u}, "password": "", "user": "a"}}"#),
            "`password`",
        ),
        (format!(r#"{{{u}, "token": ""}}"#), "`token`"),
        (format!(r#"{{{u}, "user": "a"}}"#), "`user`"),
        (format!(r#"{{{u}, "password": "p"}}"#), "`password`"),
        (
            format!(r#"{{{u}, "user": "a", "password": "p", "token": "t"}}"#),
            "`token`",
        ),
        (format!(r#"{{{u}, "stream": ""}}"#), "`stream`"),
        (format!(r#"{{{u}, "stream": "A.B"}}"#), "`stream`"),
        (format!(r#"{{{u}, "stream": "A B"}}"#), "`stream`"),
        (format!(r#"{{{u}, "stream": "A>"}}"#), "`stream`"),
        (
            format!(r#"{{{u}, "subject_prefix": ""}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": "a..b"}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": ".a"}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": "a."}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": "a.*"}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": "a.>"}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "subject_prefix": "a b"}}"#),
            "`subject_prefix`",
        ),
        (
            format!(r#"{{{u}, "command_timeout_ms": 0}}"#),
            "`command_timeout_ms`",
        ),
        (
            format!(r#"{{{u}, "connect_timeout_ms": 0}}"#),
            "`connect_timeout_ms`",
        ),
        (
            format!(r#"{{{u}, "duplicate_window_ms": 0}}"#),
            "`duplicate_window_ms`",
        ),
        (
            format!(r#"{{{u}, "dedup_capacity": 0}}"#),
            "`dedup_capacity`",
        ),
        (
            format!(r#"{{{u}, "command_timeout_ms": -1}}"#),
            "`command_timeout_ms`",
        ),
        (
            format!(r#"{{{u}, "create_stream": "yes"}}"#),
            "`create_stream`",
        ),
    ];
    for (json, field) in cases {
        let message = refused(json);
        assert!(message.contains(field), "{json}: {message}");
    }
    // JetStreamSink::new validates too.
    let mut c = JetStreamConfig::new("nats://h:4222");
    c.command_timeout_ms = 0;
    let e = JetStreamSink::new(c).expect_err("zero timeout");
    assert!(e.message.contains("`command_timeout_ms`"), "{e}");
}

#[test]
fn secrets_stay_out_of_debug_and_destination() {
    let mut c = JetStreamConfig::new("nats://alice:urlsecret@h:4222");
    c.user = Some("bob".into());
    c.password = Some("pwsecret".into());
    let text = format!("{c:?}");
    assert!(
        !text.contains("urlsecret") && !text.contains("pwsecret"),
        "{text}"
    );
    assert!(text.contains("bob"), "{text}");
    let mut t = JetStreamConfig::new("nats://h:4222");
    t.token = Some("toksecret".into());
    assert!(!format!("{t:?}").contains("toksecret"));
    let sink = JetStreamSink::new(c).expect("config");
    let d = sink.destination();
    assert_eq!(d, "nats://h:4222 stream NET subjects net.<shard>");
}

#[test]
fn header_formats() {
    assert_eq!(parse_msg_id("3:17"), Ok((3, 17)));
    assert_eq!(
        parse_msg_id("65535:18446744073709551615"),
        Ok((65535, u64::MAX))
    );
    for bad in [
        "", "3", "3:", ":17", "65536:1", "a:1", "3:x", "3:-1", "3:1:2",
    ] {
        assert!(parse_msg_id(bad).is_err(), "{bad}");
    }
    let o = Origin {
        node: 0xab,
        shard: 4,
        seq: 99,
    };
    assert_eq!(origin_text(&o), "00000000000000ab:4:99");
    assert_eq!(parse_origin("00000000000000ab:4:99"), Ok(o));
    for bad in [
        "",
        "null",
        "ab:4:99",
        "00000000000000ab:4",
        "00000000000000ab:4:99:1",
        "00000000000000zz:4:99",
        "00000000000000ab:70000:99",
        "00000000000000ab:4:x",
    ] {
        assert!(parse_origin(bad).is_err(), "{bad}");
    }
}
