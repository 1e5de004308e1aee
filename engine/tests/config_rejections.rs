//! Every configuration rejection names its field; unknown fields and modes are errors; the
//! `batch.max_events` cap holds; a pinned core that does not exist is refused at start.

use net_engine::{Backpressure, Bus, Config, Error};

fn field_of(json: &str) -> (String, String) {
    match Config::from_json(json) {
        Err(Error::Config { field, what }) => (field, what),
        other => panic!("{json} was not rejected as a config error: {other:?}"),
    }
}

#[test]
fn each_rejection_names_its_field() {
    let cases = [
        (r#"{"shards": 0}"#, "shards"),
        (r#"{"batch": {"max_events": 0}}"#, "batch.max_events"),
        (r#"{"batch": {"max_events": 1000001}}"#, "batch.max_events"),
        (r#"{"batch": {"max_bytes": 10}}"#, "batch.max_bytes"),
        (r#"{"batch": {"linger_us": 5000000}}"#, "batch.linger_us"),
        (
            r#"{"lane": {"capacity_bytes": 100000}}"#,
            "lane.capacity_bytes",
        ),
        (
            r#"{"lane": {"capacity_bytes": 1024}}"#,
            "lane.capacity_bytes",
        ),
        (
            r#"{"lane": {"backpressure": {"mode": "sample", "rate": 0}}}"#,
            "lane.backpressure.rate",
        ),
        (r#"{"idle": {"park_max_us": 0}}"#, "idle.park_max_us"),
        (r#"{"idle": {"strategy": "nap"}}"#, "idle.strategy"),
        (r#"{"poll": {"timeout_ms": 0}}"#, "poll.timeout_ms"),
        (
            r#"{"storage": {"segment_bytes": 0}}"#,
            "storage.segment_bytes",
        ),
        (r#"{"executor": {"io_memory_bytes": 524288}}"#, "executor"),
        (r#"{"poll": {"timeout_ms": 5000}}"#, "poll.timeout_ms"),
        (r#"{"data_dir": ""}"#, "data_dir"),
        (r#"{"cores": []}"#, "cores"),
        (r#"{"batch": {"max_events": "many"}}"#, "batch.max_events"),
    ];
    for (json, field) in cases {
        let (got, what) = field_of(json);
        assert_eq!(got, field, "{json}: {what}");
        assert!(!what.is_empty());
    }
}

/// Settings the shard reactor made meaningless are refused with an error that says they were
/// removed, not as unknown fields.
#[test]
fn removed_settings_say_so() {
    let (_, what) = field_of(r#"{"executor": {"io_memory_bytes": 524288}}"#);
    assert!(
        what.contains("removed") && what.contains("glommio"),
        "{what}"
    );
    let (_, what) = field_of(r#"{"poll": {"timeout_ms": 10}}"#);
    assert!(what.contains("removed"), "{what}");
}

#[test]
fn unknown_fields_and_modes_are_errors() {
    let (field, what) = field_of(r#"{"lane": {"backpressure": {"mode": "drop_random"}}}"#);
    assert_eq!(field, "lane.backpressure.mode");
    assert!(what.contains("drop_random"), "{what}");
    let (field, what) = field_of(r#"{"batch": {"max_event": 5}}"#);
    assert_eq!(field, "batch.max_event");
    assert!(what.contains("max_event"), "{what}");
    let (field, what) = field_of(r#"{"shard": 2}"#);
    assert_eq!(field, "shard");
    assert!(what.contains("shard"), "{what}");
    let (field, what) = field_of(r#"{"lane": {"backpressure": {"mode": "block", "rate": 3}}}"#);
    assert_eq!(field, "lane.backpressure");
    assert!(what.contains("rate"), "{what}");
    let (field, what) = field_of(r#"{"lane": {"backpressure": {"mode": "sample"}}}"#);
    assert_eq!(field, "lane.backpressure");
    assert!(what.contains("needs `rate`"), "{what}");
}

#[test]
fn valid_documents_parse_into_typed_settings() {
    let c = Config::from_json(
        r#"{"shards": 3, "batch": {"max_events": 1000000}, "lane": {"backpressure": {"mode": "sample", "rate": 10}}}"#,
    )
    .unwrap();
    assert_eq!(c.shards, Some(3));
    assert_eq!(c.batch.max_events, 1_000_000);
    assert_eq!(c.lane.backpressure, Backpressure::Sample { rate: 10 });
    assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
}

#[test]
fn a_pinned_core_that_does_not_exist_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().into(),
        shards: Some(1),
        cores: Some(vec![4095]),
        ..Config::default()
    };
    match Bus::start(cfg) {
        Err(Error::Config { field, what }) => {
            assert_eq!(field, "cores");
            assert!(what.contains("4095"), "{what}");
        }
        other => panic!("expected a cores error, got {other:?}"),
    }
}

/// Hardening: a JSON array filled structs by position, text after the document was ignored,
/// `{"never": null}` and `"rate": null` were accepted, duplicate keys named the document, and
/// rejections echoed values of any length.
#[test]
fn documents_are_read_strictly() {
    let cases = [
        ("[]", "(document)", "expected an object"),
        (r#"{"lane":[65536]}"#, "lane", "array"),
        (
            r#"{"batch": {"max_events": 5}, "storage": []}"#,
            "storage",
            "array",
        ),
        ("{}}", "(document)", "after the JSON document"),
        (
            r#"{"shards":2}{"shards":4}"#,
            "(document)",
            "after the JSON document",
        ),
        (
            r#"{"storage":{"fsync":{"never":null}}}"#,
            "storage.fsync",
            "\"never\"",
        ),
        (
            r#"{"storage":{"fsync":{"every_batch":null}}}"#,
            "storage.fsync",
            "every_batch",
        ),
        (
            r#"{"storage":{"fsync":{"interval_ms":null}}}"#,
            "storage.fsync.interval_ms",
            "null",
        ),
        (
            r#"{"storage":{"fsync":{"interval_ms":5,"x":1}}}"#,
            "storage.fsync",
            "no other field",
        ),
        (
            r#"{"storage":{"fsync":"interval_ms"}}"#,
            "storage.fsync",
            "needs its interval",
        ),
        (
            r#"{"lane":{"backpressure":{"mode":"block","rate":null}}}"#,
            "lane.backpressure",
            "not null",
        ),
        (
            r#"{"lane":{"backpressure":{"mode":"sample","rate":null}}}"#,
            "lane.backpressure",
            "not null",
        ),
        (
            r#"{"batch":{"max_events":5,"max_events":6}}"#,
            "batch.max_events",
            "more than once",
        ),
        (r#"{"shards":1,"shards":1}"#, "shards", "more than once"),
    ];
    for (json, field, what_has) in cases {
        let (got, what) = field_of(json);
        assert_eq!(got, field, "{json}: {what}");
        assert!(what.contains(what_has), "{json}: {what}");
    }
    let fsync = Config::from_json(r#"{"storage":{"fsync":{"interval_ms":7}}}"#).unwrap();
    assert_eq!(fsync.storage.fsync, net_engine::FsyncPolicy::IntervalMs(7));
}

#[test]
fn rejections_quote_at_most_a_short_prefix_of_what_they_were_given() {
    let long = "z".repeat(600_000);
    for json in [
        format!(r#"{{"idle": {{"strategy": "{long}"}}}}"#),
        format!(r#"{{"{long}": 1}}"#),
        format!(r#"{{"storage": {{"fsync": "{long}"}}}}"#),
        format!(r#"{{"data_dir": 5, "lane": {{"backpressure": {{"mode": "{long}"}}}}}}"#),
    ] {
        let (field, what) = field_of(&json);
        assert!(
            field.len() + what.len() < 2_000,
            "{} + {} bytes",
            field.len(),
            what.len()
        );
    }
}

/// Hardening: lane 128 MiB and batch 64 MiB let `send` accept a 20 MiB payload that the record
/// format (16 MiB at most) could not store; the shard failed and dropped everything after.
#[test]
fn the_largest_payload_is_the_smallest_limit_on_its_path() {
    let c = Config::from_json(
        r#"{"lane": {"capacity_bytes": 134217728}, "batch": {"max_bytes": 67108864}}"#,
    )
    .unwrap();
    assert_eq!(
        c.payload_bytes_max(),
        net_storage::record::RECORD_PAYLOAD_BYTES_MAX
    );
    let c = Config::from_json(r#"{"lane": {"capacity_bytes": 8192}}"#).unwrap();
    assert_eq!(c.payload_bytes_max(), 8192 / 4 - 16);
    let c = Config::from_json(r#"{"batch": {"max_bytes": 5000}}"#).unwrap();
    assert_eq!(c.payload_bytes_max(), 5000 - 32);
}
