//! The sink driver's delivery protocol, against an in-memory backend that fails on purpose
//! (the real backends are tested against real servers in `redis_*` and `jetstream_*`): every
//! event delivered exactly once through transient failures whose writes landed, a fatal error
//! stopping the sink at once, resume from the checkpoint and from what the backend holds,
//! checkpoints refused for another backend, and retention held for unsent events.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bus, bus_config};
use net_adapters::{
    AdapterError, OutBatch, RetentionPolicy, ShardWriter, Sink, SinkBackend, SinkConfig, SinkStatus,
};
use net_engine::{Bus, RetentionConfig};

/// What the fake backend stores, and how it misbehaves.
#[derive(Debug, Default)]
struct Store {
    /// Per shard, the sequence numbers written, in order (duplicates kept, to be caught).
    written: BTreeMap<u16, Vec<u64>>,
    /// Payloads by (shard, seq).
    payloads: BTreeMap<(u16, u64), Vec<u8>>,
    /// Fail every n-th write transiently after applying half of it (0: never).
    fail_every: u64,
    /// Fail the next write fatally.
    fatal_next: bool,
    /// At the next write: forget the last `n` events of every shard (a server that had
    /// acknowledged them without persisting them, and restarted), then fail transiently.
    lose_tail_next: usize,
    writes: u64,
    shut_down: bool,
}

#[derive(Debug, Clone)]
struct Fake {
    name: &'static str,
    store: Arc<Mutex<Store>>,
}

struct FakeWriter {
    shard: u16,
    store: Arc<Mutex<Store>>,
}

impl SinkBackend for Fake {
    type Writer = FakeWriter;
    fn backend(&self) -> &'static str {
        self.name
    }
    fn destination(&self) -> String {
        "memory".into()
    }
    async fn writer(&mut self, shard: u16) -> Result<FakeWriter, AdapterError> {
        Ok(FakeWriter {
            shard,
            store: self.store.clone(),
        })
    }
    async fn health(&mut self) -> Result<(), AdapterError> {
        Ok(())
    }
    async fn shutdown(&mut self) {
        self.store.lock().unwrap().shut_down = true;
    }
}

impl ShardWriter for FakeWriter {
    async fn last_held(&mut self) -> Result<Option<u64>, AdapterError> {
        let s = self.store.lock().unwrap();
        Ok(s.written.get(&self.shard).and_then(|v| v.last().copied()))
    }
    async fn write(&mut self, batch: &OutBatch) -> Result<(), AdapterError> {
        let mut s = self.store.lock().unwrap();
        assert!(!s.shut_down, "written after shutdown");
        assert_eq!(batch.shard(), self.shard);
        if s.fatal_next {
            return Err(AdapterError::fatal("fake", "permission denied"));
        }
        if s.lose_tail_next > 0 {
            let n = s.lose_tail_next;
            s.lose_tail_next = 0;
            for seqs in s.written.values_mut() {
                seqs.truncate(seqs.len().saturating_sub(n));
            }
            return Err(AdapterError::transient(
                "fake",
                "connection reset by a restart",
            ));
        }
        s.writes += 1;
        let fail = s.fail_every > 0 && s.writes % s.fail_every == 0;
        // A failing write lands half its events, then "loses the answer".
        let n = if fail { batch.len() / 2 } else { batch.len() };
        for e in batch.iter().take(n) {
            s.written.entry(self.shard).or_default().push(e.seq);
            s.payloads.insert((self.shard, e.seq), e.payload.to_vec());
        }
        if fail {
            return Err(AdapterError::transient("fake", "connection reset"));
        }
        Ok(())
    }
}

fn config(dir: &std::path::Path) -> SinkConfig {
    let mut c = SinkConfig::new("test", dir);
    c.batch_events_max = 100;
    c.feed_bytes = 1 << 16;
    c.backoff_min_ms = 1;
    c.backoff_max_ms = 5;
    c
}

fn send(bus: &Bus, from: u64, to: u64) {
    let mut p = bus.producer().unwrap();
    for i in from..to {
        p.send(&i.to_le_bytes(), format!("event {i}").as_bytes())
            .unwrap();
    }
    bus.flush().unwrap();
}

fn assert_exactly_once(store: &Store, bus: &Bus) {
    for shard in 0..bus.shards() {
        let shard = u16::try_from(shard).unwrap();
        let end = bus.stats().shards[usize::from(shard)].persisted_end;
        let got = store.written.get(&shard).cloned().unwrap_or_default();
        assert_eq!(
            got,
            (0..end).collect::<Vec<_>>(),
            "shard {shard}: each event once, in order"
        );
    }
}

#[test]
fn every_event_once_through_transient_failures_that_landed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let store = Arc::new(Mutex::new(Store {
        fail_every: 3,
        ..Store::default()
    }));
    let fake = Fake {
        name: "fake",
        store: store.clone(),
    };
    let sink = Sink::start(&bus, fake, config(dir.path())).unwrap();
    send(&bus, 0, 20_000);
    sink.wait_caught_up(Duration::from_secs(60)).unwrap();
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(stats.status, SinkStatus::Stopped);
    let s = store.lock().unwrap();
    assert!(s.shut_down, "stop shuts the backend down");
    assert_exactly_once(&s, &bus);
    let retries: u64 = stats.shards.iter().map(|x| x.retries).sum();
    let held: u64 = stats.shards.iter().map(|x| x.already_held).sum();
    assert!(
        retries > 0 && held > 0,
        "the failures were retried and the landed halves dropped: {stats:?}"
    );
    assert!(s.payloads.values().all(|p| p.starts_with(b"event ")));
}

#[test]
fn a_fatal_error_stops_the_sink_within_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 1);
    let store = Arc::new(Mutex::new(Store {
        fatal_next: true,
        ..Store::default()
    }));
    let sink = Sink::start(
        &bus,
        Fake {
            name: "fake",
            store: store.clone(),
        },
        config(dir.path()),
    )
    .unwrap();
    send(&bus, 0, 1_000);
    let err = sink.wait_caught_up(Duration::from_secs(30)).unwrap_err();
    assert!(
        !err.is_transient() && err.message.contains("permission denied"),
        "{err}"
    );
    let stats = sink.stats();
    assert!(matches!(stats.status, SinkStatus::Failed(_)), "{stats:?}");
    assert_eq!(stats.shards[0].fatal_errors, 1, "not retried: {stats:?}");
    assert_eq!(stats.shards[0].retries, 0);
}

#[test]
fn a_restarted_sink_resumes_where_the_backend_and_checkpoint_say() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 1);
    let store = Arc::new(Mutex::new(Store::default()));
    let sink = Sink::start(
        &bus,
        Fake {
            name: "fake",
            store: store.clone(),
        },
        config(dir.path()),
    )
    .unwrap();
    send(&bus, 0, 3_000);
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    drop(sink);
    store.lock().unwrap().shut_down = false;
    send(&bus, 3_000, 6_000);
    let sink = Sink::start(
        &bus,
        Fake {
            name: "fake",
            store: store.clone(),
        },
        config(dir.path()),
    )
    .unwrap();
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    drop(sink);
    assert_exactly_once(&store.lock().unwrap(), &bus);

    // The checkpoint belongs to backend "fake": another backend is refused, with the reset.
    let other = Fake {
        name: "other",
        store: Arc::new(Mutex::new(Store::default())),
    };
    let err = Sink::start(&bus, other, config(dir.path())).unwrap_err();
    assert!(
        err.message.contains("belongs to fake") && err.message.contains("remove the file"),
        "{err}"
    );
}

#[test]
fn unsent_events_hold_retention_and_skip_reports_them() {
    for policy in [RetentionPolicy::Block, RetentionPolicy::Skip] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = bus_config(dir.path(), 1);
        cfg.storage.segment_bytes = 128 << 10;
        cfg.storage.retention = RetentionConfig {
            max_events: Some(2_000),
            ..RetentionConfig::default()
        };
        let bus = Bus::start(cfg).unwrap();
        let store = Arc::new(Mutex::new(Store {
            fatal_next: true,
            ..Store::default()
        }));
        // The backend refuses everything: the sink is stuck at 0.
        let mut sc = config(dir.path());
        sc.retention = policy;
        let sink = Sink::start(
            &bus,
            Fake {
                name: "fake",
                store: store.clone(),
            },
            sc,
        )
        .unwrap();
        let mut p = bus.producer().unwrap();
        for i in 0..20_000u64 {
            p.send_home(&[7u8; 100]).unwrap();
            let _ = i;
        }
        bus.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2_200));
        let first = bus.stats().shards[0].retained_first;
        drop(sink);
        match policy {
            RetentionPolicy::Block => assert_eq!(first, 0, "the stuck sink held retention"),
            RetentionPolicy::Skip => {
                assert!(first > 0, "retention ran");
                // A new sink on a healthy backend reports what was removed unsent.
                store.lock().unwrap().fatal_next = false;
                store.lock().unwrap().shut_down = false;
                let mut sc = config(dir.path());
                sc.retention = policy;
                let sink = Sink::start(
                    &bus,
                    Fake {
                        name: "fake",
                        store: store.clone(),
                    },
                    sc,
                )
                .unwrap();
                sink.wait_caught_up(Duration::from_secs(30)).unwrap();
                let stats = sink.stop(Duration::from_secs(5));
                assert_eq!(stats.shards[0].skipped, first, "{stats:?}");
                assert_eq!(stats.shards[0].written, 20_000 - first);
                assert!(
                    stats
                        .last_error
                        .is_some_and(|e| e.message.contains("removed from the log"))
                );
            }
        }
    }
}

#[test]
fn events_a_backend_lost_after_confirming_them_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 1);
    let store = Arc::new(Mutex::new(Store::default()));
    let sink = Sink::start(
        &bus,
        Fake {
            name: "fake",
            store: store.clone(),
        },
        config(dir.path()),
    )
    .unwrap();
    send(&bus, 0, 3_000);
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    // The backend "restarts" and loses the last 250 events it had confirmed.
    store.lock().unwrap().lose_tail_next = 250;
    send(&bus, 3_000, 4_000);
    sink.wait_caught_up(Duration::from_secs(30)).unwrap();
    let stats = sink.stop(Duration::from_secs(5));
    assert_eq!(stats.shards[0].resent, 250, "{stats:?}");
    assert!(
        stats
            .last_error
            .is_some_and(|e| e.message.contains("lost events 2750..3000")),
        "the loss is said"
    );
    assert_exactly_once(&store.lock().unwrap(), &bus);
}
