//! A fold that panics is stopped and reported (its message in the stats and as the failure)
//! and the shard keeps ingesting; a fold slower than ingest lags, it never stalls the shard.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Seen, WAIT, record, shut, start_bus};
use net_cortex::{Cortex, CortexConfig, FoldError, FoldEvent, FoldStatus, fold_fn};
use net_engine::{Cursor, ShardId};

const S0: ShardId = ShardId(0);

fn panicky(state: &mut Seen, e: &FoldEvent<'_>) -> Result<(), FoldError> {
    if e.payload == b"boom" {
        panic!("the fold met boom at {}", e.id);
    }
    record(state, e)
}

fn poll_count(bus: &net_engine::Bus, want: usize) -> usize {
    let mut cursor = Cursor::start();
    let mut n = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while n < want && std::time::Instant::now() < deadline {
        let r = bus.poll(&cursor, 1000).unwrap();
        assert!(r.failed_shards.is_empty(), "{:?}", r.failed_shards);
        n += r.events.len();
        cursor = r.next;
    }
    n
}

#[test]
fn a_panicking_fold_is_surfaced_and_the_shard_keeps_ingesting() {
    // Inline (the shard thread applies) and thread mode (the fold's thread applies).
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let bus = start_bus(dir.path(), 1);
        let config = CortexConfig {
            inline,
            ..CortexConfig::new("panicky")
        };
        let cortex = Cortex::start(&bus, fold_fn(panicky), config).unwrap();
        let mut p = bus.producer().unwrap();
        for i in 0..100u32 {
            p.send_to(0, format!("e{i}").as_bytes()).unwrap();
        }
        bus.flush().unwrap();
        assert!(cortex.wait_for_seq(S0, 99, WAIT));
        p.send_to(0, b"boom").unwrap(); // seq 100
        bus.flush().unwrap();
        assert!(
            !cortex.wait_for_seq(S0, 100, WAIT),
            "a panicked event is never folded"
        );
        let stats = cortex.stats();
        match &stats.shards[0].status {
            FoldStatus::Panicked(f) => {
                assert!(f.message.contains("the fold met boom at 0:100"), "{f:?}");
                assert_eq!(f.event.seq.0, 100);
            }
            other => panic!("inline={inline}: expected panicked, got {other:?}"),
        }
        assert!(cortex.failure(S0).unwrap().message.contains("boom"));
        assert_eq!(cortex.folded_through_seq(S0), Some(99));
        assert_eq!(cortex.view(S0).unwrap().state().0.len(), 100);

        // The shard is alive: it takes, stores and serves events.
        for i in 0..1000u32 {
            p.send_to(0, format!("after {i}").as_bytes()).unwrap();
        }
        bus.flush().unwrap();
        assert_eq!(poll_count(&bus, 1101), 1101);
        let bus_stats = bus.stats();
        let shard = &bus_stats.shards[0];
        assert!(!shard.panicked && !shard.failed, "{shard:?}");
        assert_eq!(shard.persisted_end, 1101);
        assert!(shard.consumers[0].lag > 0, "the stopped fold shows as lag");
        assert_eq!(cortex.stats().shards[0].lag, 1001);
        drop(p);
        drop(cortex);
        shut(bus);
    }
}

/// Blocks every apply until opened.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[test]
fn a_fold_that_blocks_lags_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let gate = Arc::new(Gate::default());
    let fold = {
        let gate = gate.clone();
        fold_fn(move |s: &mut Seen, e: &FoldEvent<'_>| {
            gate.pass();
            record(s, e)
        })
    };
    let config = CortexConfig {
        inline: false,
        ..CortexConfig::new("gated")
    };
    let cortex = Cortex::start(&bus, fold, config).unwrap();
    let mut p = bus.producer().unwrap();
    for i in 0..5000u32 {
        p.send_to(0, format!("e{i}").as_bytes()).unwrap();
    }
    // Ingest completes while the fold cannot take a single event.
    bus.flush().unwrap();
    let stats = cortex.stats();
    assert_eq!(stats.shards[0].folded_end, 0);
    assert_eq!(stats.shards[0].lag, 5000);
    let bus_stats = bus.stats();
    assert_eq!(bus_stats.shards[0].persisted_end, 5000);
    assert!(bus_stats.shards[0].consumers[0].batches_refused > 0);
    assert!(!cortex.wait_for_seq(S0, 0, Duration::from_millis(20)));

    gate.open();
    assert!(cortex.wait_caught_up(WAIT));
    let view = cortex.view(S0).unwrap();
    assert_eq!(view.state().0.len(), 5000);
    assert!(
        view.state()
            .0
            .iter()
            .enumerate()
            .all(|(i, (s, _))| *s == i as u64)
    );
    drop(cortex);
    shut(bus);
}

#[test]
fn an_inline_fold_over_its_budget_hands_the_rest_to_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let slow = fold_fn(|s: &mut Seen, e: &FoldEvent<'_>| {
        std::thread::sleep(Duration::from_micros(50));
        record(s, e)
    });
    let config = CortexConfig {
        inline_budget_us: 100,
        ..CortexConfig::new("slow")
    };
    let cortex = Cortex::start(&bus, slow, config).unwrap();
    let mut p = bus.producer().unwrap();
    let payloads: Vec<Vec<u8>> = (0..2000u32).map(|i| format!("e{i}").into_bytes()).collect();
    // Batches of 256 events arrive at once: 16 events (800 µs) exceed the 100 µs budget.
    for chunk in payloads.chunks(500) {
        let sent = p.send_batch(chunk.iter().map(|x| (&b"k"[..], &x[..])));
        assert!(sent.refused.is_empty());
    }
    bus.flush().unwrap();
    assert!(cortex.wait_caught_up(WAIT));
    let stats = cortex.stats();
    let s = &stats.shards[0];
    assert!(
        s.refused_batches > 0,
        "over budget, batches are refused: {s:?}"
    );
    assert!(s.catchup_events > 0, "and folded from the log: {s:?}");
    assert_eq!(
        s.inline_events + s.catchup_events,
        2000,
        "each event once: {s:?}"
    );
    let view = cortex.view(S0).unwrap();
    let got: Vec<&Vec<u8>> = view.state().0.iter().map(|(_, p)| p).collect();
    assert_eq!(got, payloads.iter().collect::<Vec<_>>());
    drop(cortex);
    shut(bus);
}
