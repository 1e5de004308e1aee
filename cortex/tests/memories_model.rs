//! The memories model against a plain in-memory model over random event sequences (with a
//! restart from a snapshot in the middle), and its rules one by one: symmetric upsert, no
//! resurrection, empty tag filters, raw values, strict watch bounds, overflowing watchers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{WAIT, shut, start_bus, with_snapshots};
use net_cortex::memories::{
    self, ChangeKind, Memories, MemoriesState, Notice, Query, WatchRange, WatchSpec,
};
use net_cortex::{Cortex, CortexConfig, ErrorPolicy, Fold, FoldEvent, FoldState};
use net_engine::{EventId, Seq, ShardId};
use proptest::prelude::*;

// ---- the model ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct MRec {
    version: u64,
    /// value, tags, pinned; `None`: deleted.
    live: Option<(String, BTreeSet<String>, bool)>,
}

#[derive(Debug, Default, Clone)]
struct Model {
    recs: BTreeMap<String, MRec>,
    stale: u64,
    missed: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Stored {
        id: String,
        version: Option<u64>,
        value: String,
        tags: Vec<String>,
        pinned: Option<bool>,
    },
    Deleted {
        id: String,
        version: Option<u64>,
    },
    Pin(String),
    Unpin(String),
    Tags {
        id: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    Garbage(String),
}

fn json_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|t| format!("{t:?}")).collect();
    format!("[{}]", items.join(" , "))
}

impl Op {
    fn payload(&self) -> String {
        match self {
            Op::Stored {
                id,
                version,
                value,
                tags,
                pinned,
            } => {
                let mut s = format!("{{\"stored\": {{\"id\":{id:?}, \"value\": {value}");
                if let Some(v) = version {
                    s.push_str(&format!(",\"version\":{v}"));
                }
                s.push_str(&format!(", \"tags\": {}", json_list(tags)));
                if let Some(p) = pinned {
                    s.push_str(&format!(",\"pinned\":{p}"));
                }
                s + "}}"
            }
            Op::Deleted { id, version: None } => format!("{{\"deleted\":{{\"id\":{id:?}}}}}"),
            Op::Deleted {
                id,
                version: Some(v),
            } => format!("{{\"deleted\":{{\"version\":{v},\"id\":{id:?}}}}}"),
            Op::Pin(id) => format!("{{\"pin\":{{\"id\":{id:?}}}}}"),
            Op::Unpin(id) => format!(" {{ \"unpin\" : {{ \"id\" : {id:?} }} }} "),
            Op::Tags { id, add, remove } => format!(
                "{{\"tags\":{{\"id\":{id:?},\"add\":{},\"remove\":{}}}}}",
                json_list(add),
                json_list(remove)
            ),
            Op::Garbage(g) => g.clone(),
        }
    }

    fn id(&self) -> &str {
        match self {
            Op::Stored { id, .. } | Op::Deleted { id, .. } | Op::Tags { id, .. } => id,
            Op::Pin(id) | Op::Unpin(id) => id,
            Op::Garbage(_) => "garbage",
        }
    }
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Stored {
                id,
                version,
                value,
                tags,
                pinned,
            } => {
                let cur = self.recs.get(id);
                let v = match (version, cur) {
                    (Some(v), Some(c)) if *v <= c.version => {
                        self.stale += 1;
                        return;
                    }
                    (Some(v), _) => *v,
                    (None, Some(c)) => c.version + 1,
                    (None, None) => 1,
                };
                let live = (
                    value.clone(),
                    tags.iter().cloned().collect(),
                    *pinned == Some(true),
                );
                self.recs.insert(
                    id.clone(),
                    MRec {
                        version: v,
                        live: Some(live),
                    },
                );
            }
            Op::Deleted { id, version } => {
                let cur = self.recs.get(id);
                let v = match (version, cur) {
                    (Some(v), Some(c))
                        if (c.live.is_some() && *v < c.version)
                            || (c.live.is_none() && *v <= c.version) =>
                    {
                        self.stale += 1;
                        return;
                    }
                    (Some(v), _) => *v,
                    (None, Some(c)) => c.version + 1,
                    (None, None) => 1,
                };
                self.recs.insert(
                    id.clone(),
                    MRec {
                        version: v,
                        live: None,
                    },
                );
            }
            Op::Pin(id) | Op::Unpin(id) => {
                match self.recs.get_mut(id).and_then(|r| r.live.as_mut()) {
                    Some(live) => live.2 = matches!(op, Op::Pin(_)),
                    None => self.missed += 1,
                }
            }
            Op::Tags { id, add, remove } => {
                match self.recs.get_mut(id).and_then(|r| r.live.as_mut()) {
                    Some(live) => {
                        live.1.extend(add.iter().cloned());
                        for r in remove {
                            live.1.remove(r);
                        }
                    }
                    None => self.missed += 1,
                }
            }
            Op::Garbage(_) => {}
        }
    }

    fn query(&self, q: &Query) -> Vec<String> {
        let any = q.require_any_tag.clone().unwrap_or_default();
        let all = q.require_all_tags.clone().unwrap_or_default();
        self.recs
            .iter()
            .filter_map(|(id, r)| r.live.as_ref().map(|l| (id, l)))
            .filter(|(_, l)| any.is_empty() || any.iter().any(|t| l.1.contains(t)))
            .filter(|(_, l)| all.iter().all(|t| l.1.contains(t)))
            .filter(|(_, l)| q.pinned.is_none_or(|p| p == l.2))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Checks every id of the model against a lookup into the real state.
fn check(
    model: &Model,
    get: impl Fn(&str) -> Option<memories::Memory>,
    deleted: impl Fn(&str) -> Option<u64>,
) {
    for (id, r) in &model.recs {
        match &r.live {
            Some((value, tags, pinned)) => {
                let m = get(id).unwrap_or_else(|| panic!("{id} should be live: {r:?}"));
                assert_eq!(m.version, r.version, "{id}");
                assert_eq!(m.value.get(), value, "{id}: value byte for byte");
                let got: BTreeSet<String> = m.tags.iter().map(|t| t.to_string()).collect();
                assert_eq!(&got, tags, "{id}");
                assert_eq!(m.pinned, *pinned, "{id}");
            }
            None => {
                assert!(get(id).is_none(), "{id} should be deleted");
                assert_eq!(deleted(id), Some(r.version), "{id}: tombstone version");
            }
        }
    }
}

// ---- generators ----

const IDS: [&str; 5] = ["a", "b", "c", "d", "\u{e9}t\u{e9}"];
const TAGS: [&str; 4] = ["x", "y", "z", "w"];
const VALUES: [&str; 6] = [
    "{\"n\": 1.0,  \"b\":[1 ,2]}",
    "1.50",
    "\"text\"",
    "[ ]",
    "{\"z\":1,\"a\":2}",
    "1e3",
];

fn tags() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        proptest::sample::select(&TAGS[..]).prop_map(String::from),
        0..3,
    )
}

fn op() -> impl Strategy<Value = Op> {
    let id = || proptest::sample::select(&IDS[..]).prop_map(String::from);
    let version = || proptest::option::of(0u64..6);
    prop_oneof![
        4 => (id(), version(), proptest::sample::select(&VALUES[..]), tags(), proptest::option::of(any::<bool>()))
            .prop_map(|(id, version, value, tags, pinned)| Op::Stored {
                id,
                version,
                value: value.to_owned(),
                tags,
                pinned
            }),
        2 => (id(), version()).prop_map(|(id, version)| Op::Deleted { id, version }),
        1 => id().prop_map(Op::Pin),
        1 => id().prop_map(Op::Unpin),
        1 => (id(), tags(), tags()).prop_map(|(id, add, remove)| Op::Tags { id, add, remove }),
        1 => proptest::sample::select(&[
            "not json",
            "{\"stored\":{\"id\":\"a\"}}",
            "{\"exploded\":{\"id\":\"a\"}}",
            "{\"pin\":{\"id\":\"\"}}",
            "{\"pin\":{\"id\":\"a\",\"extra\":1}}",
            "{\"tags\":{\"id\":\"a\",\"add\":[\"\"]}}",
        ][..])
        .prop_map(|g| Op::Garbage(g.to_owned())),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    let list = || {
        proptest::option::of(proptest::collection::vec(
            proptest::sample::select(&TAGS[..]).prop_map(String::from),
            0..3,
        ))
    };
    (list(), list(), proptest::option::of(any::<bool>())).prop_map(|(any, all, pinned)| Query {
        require_any_tag: any,
        require_all_tags: all,
        pinned,
        limit: None,
    })
}

fn event(seq: u64, payload: &[u8]) -> FoldEvent<'_> {
    FoldEvent {
        id: EventId {
            shard: ShardId(0),
            seq: Seq(seq),
        },
        ts_ns: 1_000 + seq * 10,
        origin: None,
        payload,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// The fold alone, with a restart from an encoded snapshot at `cut`.
    #[test]
    fn memories_match_the_model_across_a_snapshot_restart(
        ops in proptest::collection::vec(op(), 0..60),
        cut in 0usize..60,
        queries in proptest::collection::vec(query(), 1..4),
    ) {
        let mut model = Model::default();
        let mut fold = Memories::new();
        let mut state = MemoriesState::default();
        for (i, op) in ops.iter().enumerate() {
            if i == cut {
                let mut bytes = Vec::new();
                state.encode(&mut bytes);
                state = MemoriesState::decode(&bytes).unwrap();
                fold = Memories::new();
            }
            let payload = op.payload();
            let result = fold.apply(&mut state, &event(i as u64, payload.as_bytes()));
            prop_assert_eq!(result.is_err(), matches!(op, Op::Garbage(_)), "{}", payload);
            model.apply(op);
        }
        check(&model, |id| state.get(id), |id| state.deleted_version(id));
        let counts = state.counts();
        prop_assert_eq!(counts.stale_ignored, model.stale);
        prop_assert_eq!(counts.missed_targets, model.missed);
        prop_assert_eq!(counts.live, model.recs.values().filter(|r| r.live.is_some()).count() as u64);
        for q in &queries {
            let got: Vec<String> = state.query(q).iter().map(|m| m.id.to_string()).collect();
            prop_assert_eq!(got, model.query(q), "{:?}", q);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Through a real bus on two shards (each memory keyed by its id), under `skip`, with the
    /// bus and the cortex restarted from a snapshot in the middle.
    #[test]
    fn memories_on_a_bus_match_the_model_across_a_restart(
        ops in proptest::collection::vec(op(), 1..120),
        cut in 0usize..120,
        q in query(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = CortexConfig {
            on_error: ErrorPolicy::Skip,
            ..with_snapshots("memories", dir.path())
        };
        let cut = cut.min(ops.len());
        let mut model = Model::default();
        let send = |bus: &net_engine::Bus, ops: &[Op]| {
            let mut p = bus.producer().unwrap();
            for op in ops {
                p.send(op.id().as_bytes(), op.payload().as_bytes()).unwrap();
            }
            bus.flush().unwrap();
        };
        {
            let bus = start_bus(dir.path(), 2);
            let cortex = Cortex::start(&bus, Memories::new(), config.clone()).unwrap();
            send(&bus, &ops[..cut]);
            prop_assert!(cortex.wait_caught_up(WAIT));
            cortex.snapshot().unwrap();
            drop(cortex);
            shut(bus);
        }
        let bus = start_bus(dir.path(), 2);
        let cortex = Cortex::start(&bus, Memories::new(), config).unwrap();
        for r in cortex.restore_reports() {
            prop_assert!(r.snapshot.is_some() && !r.fell_back(), "{:?}", r);
            prop_assert_eq!(r.replayed_events, 0);
        }
        send(&bus, &ops[cut..]);
        prop_assert!(cortex.wait_caught_up(WAIT));
        for op in &ops {
            model.apply(op);
        }
        let views = cortex.views();
        check(&model, |id| memories::get(&views, id), |id| {
            views.iter().find_map(|v| v.state().deleted_version(id))
        });
        let got: Vec<String> = memories::query(&views, &q).iter().map(|m| m.id.to_string()).collect();
        prop_assert_eq!(got, model.query(&q));
        // The counts are this run's: the events after the snapshot.
        let garbage = ops[cut..].iter().filter(|o| matches!(o, Op::Garbage(_))).count() as u64;
        let skipped: u64 = cortex.stats().shards.iter().map(|s| s.skipped).sum();
        prop_assert_eq!(skipped, garbage, "every bad payload is skipped, counted");
        drop(cortex);
        shut(bus);
    }
}

// ---- the rules one by one ----

fn apply_all(payloads: &[&str]) -> MemoriesState {
    let mut fold = Memories::new();
    let mut state = MemoriesState::default();
    for (i, p) in payloads.iter().enumerate() {
        fold.apply(&mut state, &event(i as u64, p.as_bytes()))
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    state
}

#[test]
fn upsert_is_symmetric_whether_the_id_existed_or_not() {
    let replaced = apply_all(&[
        r#"{"stored":{"id":"a","value":{"old":true},"tags":["x","old"],"pinned":true}}"#,
        r#"{"stored":{"id":"a","value":[1],"tags":["y"]}}"#,
    ]);
    let fresh = apply_all(&[r#"{"stored":{"id":"a","value":[1],"tags":["y"]}}"#]);
    let (a, b) = (replaced.get("a").unwrap(), fresh.get("a").unwrap());
    assert_eq!(a.value.get(), b.value.get());
    assert_eq!(a.tags, b.tags, "tags replaced, not merged");
    assert!(
        !a.pinned && !b.pinned,
        "pinned absent means false, either way"
    );
}

#[test]
fn a_deleted_memory_is_not_resurrected_by_an_older_or_equal_version() {
    let state = apply_all(&[
        r#"{"stored":{"id":"a","version":3,"value":1,"tags":[]}}"#,
        r#"{"deleted":{"id":"a"}}"#,
        r#"{"stored":{"id":"a","version":3,"value":2,"tags":[]}}"#,
        r#"{"stored":{"id":"a","version":4,"value":3,"tags":[]}}"#,
        r#"{"stored":{"id":"a","version":2,"value":4,"tags":[]}}"#,
    ]);
    assert!(
        state.get("a").is_none(),
        "v3, v4 (the tombstone's) and v2 stay deleted"
    );
    assert_eq!(state.deleted_version("a"), Some(4));
    assert_eq!(state.counts().stale_ignored, 3);
    // A delete that arrives before any store still keeps older stores out.
    let state = apply_all(&[
        r#"{"deleted":{"id":"b","version":7}}"#,
        r#"{"stored":{"id":"b","version":7,"value":1,"tags":[]}}"#,
    ]);
    assert!(state.get("b").is_none());
    // A newer version, or an unversioned store (the log's order), brings it back.
    let state = apply_all(&[
        r#"{"stored":{"id":"a","version":3,"value":1,"tags":[]}}"#,
        r#"{"deleted":{"id":"a","version":3}}"#,
        r#"{"stored":{"id":"a","version":5,"value":2,"tags":[]}}"#,
    ]);
    assert_eq!(state.get("a").unwrap().version, 5);
    let state = apply_all(&[
        r#"{"stored":{"id":"a","value":1,"tags":[]}}"#,
        r#"{"deleted":{"id":"a"}}"#,
        r#"{"stored":{"id":"a","value":2,"tags":[]}}"#,
    ]);
    assert_eq!(state.get("a").unwrap().version, 3);
}

#[test]
fn a_version_that_would_pass_u64_max_is_an_error_and_changes_nothing() {
    let mut fold = Memories::new();
    let mut state = MemoriesState::default();
    let max = format!(
        r#"{{"stored":{{"id":"a","version":{},"value":1,"tags":[]}}}}"#,
        u64::MAX
    );
    fold.apply(&mut state, &event(0, max.as_bytes())).unwrap();
    let next = br#"{"stored":{"id":"a","value":2,"tags":[]}}"#;
    let err = fold.apply(&mut state, &event(1, next)).unwrap_err();
    assert!(err.message().contains("u64::MAX"), "{err}");
    assert_eq!(state.get("a").unwrap().value.get(), "1");
}

#[test]
fn an_empty_tag_list_means_no_filter_in_both_filters() {
    let state = apply_all(&[
        r#"{"stored":{"id":"a","value":1,"tags":["x"]}}"#,
        r#"{"stored":{"id":"b","value":2,"tags":[]}}"#,
        r#"{"stored":{"id":"c","value":3,"tags":["x","y"],"pinned":true}}"#,
    ]);
    let ids =
        |q: Query| -> Vec<String> { state.query(&q).iter().map(|m| m.id.to_string()).collect() };
    let everything = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    assert_eq!(ids(Query::default()), everything);
    let empty_any = Query {
        require_any_tag: Some(vec![]),
        ..Query::default()
    };
    assert_eq!(
        ids(empty_any),
        everything,
        "Some(vec![]) is no filter, like None"
    );
    let empty_all = Query {
        require_all_tags: Some(vec![]),
        ..Query::default()
    };
    assert_eq!(ids(empty_all), everything);
    let any_y = Query {
        require_any_tag: Some(vec!["y".into(), "nope".into()]),
        ..Query::default()
    };
    assert_eq!(ids(any_y), vec!["c".to_owned()]);
    let all_xy = Query {
        require_all_tags: Some(vec!["x".into(), "y".into()]),
        ..Query::default()
    };
    assert_eq!(ids(all_xy), vec!["c".to_owned()]);
    let all_x_unpinned = Query {
        require_all_tags: Some(vec!["x".into()]),
        pinned: Some(false),
        limit: Some(5),
        ..Query::default()
    };
    assert_eq!(ids(all_x_unpinned), vec!["a".to_owned()]);
}

#[test]
fn raw_values_and_payloads_are_never_re_encoded() {
    let value = "{\"b\": 1.0,  \"a\":[1 ,2e0], \"s\":\"\\u00e9\"}";
    let payload = format!("{{\"stored\":{{\"id\":\"a\",\"value\":{value},\"tags\":[]}}}}");
    let state = apply_all(&[&payload]);
    assert_eq!(
        state.get("a").unwrap().value.get(),
        value,
        "kept byte for byte"
    );
    let mut bytes = Vec::new();
    state.encode(&mut bytes);
    let back = MemoriesState::decode(&bytes).unwrap();
    assert_eq!(
        back.get("a").unwrap().value.get(),
        value,
        "and through a snapshot"
    );
    let raw = "  {\"z\": 1.0, \"a\" : 10.50 }\n";
    let e = event(0, raw.as_bytes());
    assert_eq!(
        e.json().unwrap().get(),
        raw.trim(),
        "the JSON view is the payload's text"
    );
    assert!(event(1, b"{\"a\":").json().is_err());

    // And through the bus: the payload polled back and the memory's value, exactly.
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, Memories::new(), CortexConfig::new("memories")).unwrap();
    let mut p = bus.producer().unwrap();
    p.send(b"a", payload.as_bytes()).unwrap();
    bus.flush().unwrap();
    assert!(cortex.wait_for_seq(ShardId(0), 0, WAIT));
    let got = memories::get(&cortex.views(), "a").unwrap();
    assert_eq!(got.value.get(), value);
    let polled = bus.poll(&net_engine::Cursor::start(), 10).unwrap();
    assert_eq!(&polled.events[0].payload[..], payload.as_bytes());
    drop(cortex);
    shut(bus);
}

fn stored(id: &str) -> String {
    format!("{{\"stored\":{{\"id\":\"{id}\",\"value\":0,\"tags\":[]}}}}")
}

#[test]
fn watch_bounds_are_strict_at_both_ends() {
    let mut fold = Memories::new();
    let seq_watch = fold.watch(WatchSpec::new(WatchRange::Seq {
        after: Some(2),
        before: Some(5),
    }));
    // Event i has ts 1000 + 10 i: (1020, 1050) is events 3 and 4, exclusive of 2 and 5.
    let time_watch = fold.watch(WatchSpec::new(WatchRange::Time {
        after_ns: Some(1_020),
        before_ns: Some(1_050),
    }));
    let open_below = fold.watch(WatchSpec::new(WatchRange::Seq {
        after: None,
        before: Some(1),
    }));
    let empty = fold.watch(WatchSpec::new(WatchRange::Seq {
        after: Some(3),
        before: Some(4),
    }));
    let other_shard = fold.watch(WatchSpec {
        shard: Some(1),
        ..WatchSpec::new(WatchRange::all())
    });
    let mut state = MemoriesState::default();
    for i in 0..8u64 {
        fold.apply(&mut state, &event(i, stored(&format!("m{i}")).as_bytes()))
            .unwrap();
    }
    let drain = |w: &memories::Watcher| {
        let mut seqs = Vec::new();
        while let Some(n) = w.try_recv() {
            match n {
                Notice::Change(c) => {
                    assert!(matches!(c.kind, ChangeKind::Stored { version: 1 }));
                    assert_eq!(&*c.id, format!("m{}", c.seq));
                    seqs.push(c.seq);
                }
                Notice::Missed(n) => panic!("missed {n}"),
            }
        }
        seqs
    };
    assert_eq!(drain(&seq_watch), vec![3, 4]);
    assert_eq!(drain(&time_watch), vec![3, 4]);
    assert_eq!(drain(&open_below), vec![0]);
    assert_eq!(
        drain(&empty),
        Vec::<u64>::new(),
        "(a, a + 1) matches nothing"
    );
    assert_eq!(drain(&other_shard), Vec::<u64>::new());
    let r = WatchRange::Seq {
        after: Some(2),
        before: Some(5),
    };
    assert!(!r.contains(2, 0) && r.contains(3, 0) && r.contains(4, 0) && !r.contains(5, 0));
}

#[test]
fn an_overflowing_watcher_is_told_what_it_missed_and_never_blocks_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let fold = Memories::new();
    let watcher = fold.watch(WatchSpec {
        capacity: 4,
        ..WatchSpec::new(WatchRange::all())
    });
    let cortex = Cortex::start(&bus, fold, CortexConfig::new("memories")).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..5000 {
        p.send(b"k", stored(&format!("m{i}")).as_bytes()).unwrap();
    }
    // Nobody drains the watcher while 5000 changes are made.
    bus.flush().unwrap();
    assert!(cortex.wait_for_seq(ShardId(0), 4999, WAIT));
    let (mut changes, mut missed) = (Vec::new(), 0);
    while let Some(n) = watcher.recv_timeout(Duration::from_millis(50)) {
        match n {
            Notice::Change(c) => changes.push(c.seq),
            Notice::Missed(n) => missed += n,
        }
    }
    assert!(changes.len() <= 4, "{changes:?}");
    assert_eq!(
        changes.len() as u64 + missed,
        5000,
        "every change delivered or counted"
    );
    assert_eq!(watcher.missed_total(), missed);
    // After draining, new changes flow again, in order.
    p.send(b"k", stored("late").as_bytes()).unwrap();
    bus.flush().unwrap();
    match watcher.recv_timeout(WAIT) {
        Some(Notice::Change(c)) => assert_eq!(&*c.id, "late"),
        other => panic!("{other:?}"),
    }
    drop(cortex);
    shut(bus);
}
