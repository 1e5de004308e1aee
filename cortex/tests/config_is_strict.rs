//! The cortex config is strict JSON: unknown fields, wrong types and out-of-range values are
//! refused with the field named; absent fields take their documented defaults.

use net_cortex::{CortexConfig, ErrorPolicy};

#[test]
fn a_full_config_parses_and_defaults_fill_the_rest() {
    let c = CortexConfig::from_json(
        r#"{"name":"memories","on_error":"skip","snapshot":{"dir":"/tmp/x","every_events":10}}"#,
    )
    .unwrap();
    assert_eq!(c.on_error, ErrorPolicy::Skip);
    assert!(c.inline);
    assert_eq!(c.inline_budget_us, 500);
    let s = c.snapshot.unwrap();
    assert_eq!((s.every_events, s.keep, s.on_shutdown), (10, 3, true));
    let c = CortexConfig::from_json(r#"{"name":"w"}"#).unwrap();
    assert_eq!(c.on_error, ErrorPolicy::Stop);
    assert!(c.snapshot.is_none());
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let cases = [
        (r#"{"name":"a","colour":1}"#, "colour"),
        (r#"{"name":"a","on_error":"retry"}"#, "on_error"),
        (r#"{"name":"a","inline_budget_us":0}"#, "inline_budget_us"),
        (
            r#"{"name":"a","snapshot":{"dir":"/x","keep":1}}"#,
            "snapshot.keep",
        ),
        (r#"{"name":"a","snapshot":{"dir":"/x","kept":3}}"#, "kept"),
        (r#"{"name":""}"#, "name"),
        (r#"{"name":"a/b"}"#, "name"),
        (r#"{"name":"a"} trailing"#, "after the document"),
    ];
    for (json, field) in cases {
        let err = CortexConfig::from_json(json).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
    }
}
