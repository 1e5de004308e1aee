//! loom models of the ring's protocols, each over every interleaving (the larger ones up to
//! a preemption bound) at a tiny capacity: 64 bytes holds two 24-byte entries, so a third
//! wraps behind a pad. Payloads are at most one word, and each entry's bytes and aux word
//! derive from its index, so a stale or torn read shows as a wrong value. Run by
//! `scripts/test.sh`: `RUSTFLAGS="--cfg loom" cargo test -p net-engine --release --lib ring::`.
//! `LOOM_MAX_PREEMPTIONS` overrides the bound.

use std::sync::Arc;

use loom::sync::{Condvar, Mutex};
use loom::thread;

use super::*;

/// Two entries fit; the third wraps behind a pad.
const CAPACITY_BYTES: usize = 64;
/// Preemptions per execution that loom explores in the larger models (unless
/// `LOOM_MAX_PREEMPTIONS` says). Letting the writer take an entry under the reader's claim is
/// found only from 3 on; 3 keeps each model within seconds. The small models (close, park)
/// run unbounded, over every interleaving.
const PREEMPTION_BOUND: usize = 3;
/// Payload lengths, cycled: each fits one word, most leave part of it padding.
const PAYLOAD_LENS: [usize; 4] = [3, 8, 1, 5];

/// Runs `f` under loom, bounded to `preemption_bound` preemptions (None: unbounded).
fn model(preemption_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(f);
}

/// Entry `i`'s payload: bytes that differ from every other entry's and from a fresh ring's.
fn payload(i: u64) -> Vec<u8> {
    let len = PAYLOAD_LENS[usize::try_from(i).unwrap() % PAYLOAD_LENS.len()];
    (0..len)
        .map(|k| u8::try_from(16 * (i + 1) + u64::try_from(k).unwrap()).unwrap())
        .collect()
}

/// Entry `i`'s aux word.
fn aux(i: u64) -> u64 {
    0xA000 + i
}

fn index_of(aux_word: u64) -> u64 {
    aux_word - 0xA000
}

fn ring() -> (Arc<Ring>, RingWriter, RingReader) {
    let ring = Arc::new(Ring::new(CAPACITY_BYTES));
    let w = RingWriter::new(ring.clone());
    let r = RingReader::new(ring.clone());
    (ring, w, r)
}

/// Drains what is there now; returns the indices handed over, checking each entry's bytes.
fn drain_checked(r: &mut RingReader, events_max: usize) -> Vec<u64> {
    let mut got = Vec::new();
    r.drain(events_max, u64::MAX, |aux_word, p| {
        let i = index_of(aux_word);
        assert_eq!(p, payload(i), "entry {i} torn or stale");
        got.push(i);
        true
    });
    got
}

/// Writes entry `i`, waiting for the reader to make room.
fn write_waiting(w: &mut RingWriter, i: u64) {
    let p = payload(i);
    let need = w.bytes_needed(p.len());
    while !w.has_room(need) {
        thread::yield_now();
    }
    w.write(aux(i), &p);
}

/// Publish, claim and release: a reader draining (one or two entries per claim) while the
/// writer wraps sees exactly the entries written, in order, intact.
#[test]
fn model_entries_arrive_in_order_and_intact() {
    const ENTRIES: u64 = 3;
    model(Some(PREEMPTION_BOUND), || {
        let (_ring, mut w, mut r) = ring();
        let writer = thread::spawn(move || {
            for i in 0..ENTRIES {
                write_waiting(&mut w, i);
            }
        });
        let mut got = Vec::new();
        while got.len() < usize::try_from(ENTRIES).unwrap() {
            let more = drain_checked(&mut r, 2);
            if more.is_empty() {
                thread::yield_now();
            }
            got.extend(more);
        }
        writer.join().unwrap();
        assert_eq!(got, (0..ENTRIES).collect::<Vec<_>>());
        assert!(r.is_empty());
    });
}

/// Take oldest racing the claim: every entry is consumed exactly once or taken exactly once,
/// never both, never lost, never torn; consumed entries keep their order.
#[test]
fn model_take_oldest_races_the_claim() {
    const ENTRIES: u64 = 4;
    model(Some(PREEMPTION_BOUND), || {
        let (_ring, mut w, mut r) = ring();
        let writer = thread::spawn(move || {
            let mut taken = Vec::new();
            for i in 0..ENTRIES {
                let p = payload(i);
                let need = w.bytes_needed(p.len());
                while !w.has_room(need) {
                    match w.take_oldest() {
                        Taken::Entry { aux } => taken.push(index_of(aux)),
                        Taken::Pad => {}
                        Taken::Busy => thread::yield_now(),
                    }
                }
                w.write(aux(i), &p);
            }
            taken
        });
        let mut consumed = drain_checked(&mut r, 1);
        consumed.extend(drain_checked(&mut r, usize::MAX));
        let taken = writer.join().unwrap();
        consumed.extend(drain_checked(&mut r, usize::MAX));
        assert!(consumed.is_sorted(), "consumed out of order: {consumed:?}");
        let mut all: Vec<u64> = consumed.iter().chain(&taken).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..ENTRIES).collect::<Vec<_>>(),
            "consumed {consumed:?}, taken {taken:?}"
        );
        assert!(r.is_empty());
    });
}

/// Close: once the closer's wait returns, no entry is ever published again; every entry the
/// writer reported written (not refused) reaches the reader, draining meanwhile or after,
/// and nothing else does.
#[test]
fn model_close_fences_out_later_writes() {
    const SENDS: u64 = 2;
    model(None, || {
        let (ring, mut w, mut r) = ring();
        let reader = thread::spawn(move || {
            let got = drain_checked(&mut r, usize::MAX);
            (r, got)
        });
        let writer = thread::spawn(move || {
            let mut written = Vec::new();
            for i in 0..SENDS {
                w.enter_window();
                if !w.is_closed() {
                    // Two entries fit an empty ring: no wait for room.
                    w.write(aux(i), &payload(i));
                    written.push(i);
                }
                w.leave_window();
            }
            written
        });
        ring.close();
        ring.wait_writer_outside();
        let head_at_close = ring.head();
        let written = writer.join().unwrap();
        assert_eq!(
            ring.head(),
            head_at_close,
            "published after the close fence"
        );
        let (mut r, mut drained) = reader.join().unwrap();
        drained.extend(drain_checked(&mut r, usize::MAX));
        assert_eq!(drained, written);
    });
}

/// A doorbell without a timeout, so that a lost wake-up leaves the reader asleep for ever
/// and loom reports the deadlock. Rings coalesce, as an eventfd's do.
#[derive(Debug)]
struct ModelDoorbell {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Doorbell for ModelDoorbell {
    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.bell.notify_one();
    }

    fn wait(&self, _timeout_us: u64) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.bell.wait(rung).unwrap();
        }
        *rung = false;
    }
}

/// Park/wake: the reader parks when it finds nothing, the writer rings only a parked reader;
/// the reader still gets every entry (no lost wake-up, which would deadlock the model).
#[test]
fn model_park_loses_no_wakeup() {
    const ENTRIES: u64 = 2;
    model(None, || {
        let (ring, mut w, mut r) = ring();
        let parker = Arc::new(Parker::with_doorbell(ModelDoorbell {
            rung: Mutex::new(false),
            bell: Condvar::new(),
        }));
        let writer_parker = parker.clone();
        let writer = thread::spawn(move || {
            for i in 0..ENTRIES {
                w.write(aux(i), &payload(i));
                writer_parker.wake_if_parked();
            }
        });
        let mut got = Vec::new();
        loop {
            got.extend(drain_checked(&mut r, usize::MAX));
            if got.len() == usize::try_from(ENTRIES).unwrap() {
                break;
            }
            parker.prepare_park();
            if ring.has_unclaimed() {
                parker.unpark();
            } else {
                parker.park(0);
            }
        }
        writer.join().unwrap();
        assert_eq!(got, (0..ENTRIES).collect::<Vec<_>>());
    });
}
