//! Segment warming (zeros written ahead of the writer while the log is idle): it stays within
//! its bounds, the writer's batches land in warm space without a hole or a stray byte, and a
//! crash with warm zeros past the data end recovers exactly the records written (zeros are
//! the clean end), while a clean roll trims them from the sealed segment.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::{Ack, Log, LogConfig, Push, Ring, Submit, verify};

const SEGMENT_BYTES: u64 = 16 << 20;

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 256 << 10,
        batch_events_max: 512,
        ack: Ack::Written,
        preallocate: true,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let len = 40 + (seq % 700) as usize;
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// Completes everything in flight.
fn settle(log: &mut Log, ring: &mut Ring) {
    let mut done = Vec::new();
    while log.in_flight() {
        ring.flush().unwrap();
        ring.wait().unwrap();
        done.clear();
        ring.reap(|tag, res| done.push((tag, res)));
        for &(tag, res) in &done {
            log.complete(ring, tag, res).unwrap();
        }
        while log.pop_completed().is_some() {}
    }
}

/// Appends records `from..to` in batches, warming whenever the log is idle; returns how many
/// warming writes were submitted.
fn append(log: &mut Log, ring: &mut Ring, from: u64, to: u64) -> u32 {
    let mut warmed = 0;
    let mut seq = from;
    while seq < to {
        match log.push(seq, &payload(seq)).unwrap() {
            Push::Staged(s) => {
                assert_eq!(s, seq);
                seq += 1;
                if log.open_events() < 300 && seq < to {
                    continue;
                }
            }
            Push::Full => {}
        }
        while log.open_events() > 0 && !log.submit(ring, false).unwrap() {
            settle(log, ring);
        }
        settle(log, ring);
        // Idle now: warm a chunk, as the shard does between batches.
        warmed += u32::from(log.warm(ring).unwrap());
        settle(log, ring);
    }
    warmed
}

fn check_records(dir: &Path, n: u64) {
    let (mut log, _) = Log::open(dir, cfg()).unwrap();
    assert_eq!(log.next_seq(), n, "records recovered");
    let mut next = 0;
    while next < n {
        let batch = log.read(next, 1000, usize::MAX).unwrap();
        assert!(!batch.is_empty(), "stuck at {next}");
        for r in &batch {
            assert_eq!(r.seq, next);
            assert_eq!(r.payload, payload(next), "seq {next}");
            next += 1;
        }
    }
    log.close().unwrap();
}

#[test]
fn warming_stays_ahead_of_the_writer_and_within_the_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0000");
    let (mut log, _) = Log::open_shared(&dir, cfg()).unwrap();
    let mut ring = Ring::new().unwrap();
    append(&mut log, &mut ring, 0, 1000);
    // Idle: warming writes chunks until the segment's end bounds it, then stops.
    let mut chunks = 0;
    while log.warm(&mut ring).unwrap() {
        settle(&mut log, &mut ring);
        chunks += 1;
        assert!(chunks < 1000, "warming never stopped");
    }
    assert!(chunks > 0, "an idle log warmed nothing");
    assert!(
        !log.warm(&mut ring).unwrap(),
        "warming went on past its bound"
    );
    // The writer then runs through the warm space and rolls into a new segment.
    let n = 60_000;
    append(&mut log, &mut ring, 1000, n);
    assert!(log.segments() >= 2, "the writer crossed a roll");
    settle(&mut log, &mut ring);
    drop(log);
    // Crash (no close): the active segment has warm zeros past its data.
    check_records(&dir, n);
    // Every sealed segment was trimmed to its data; the log verifies clean.
    let report = verify::verify(&dir).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_crash_with_a_warming_write_in_flight_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000;
    {
        let (mut log, _) = Log::open_shared(dir.path(), cfg()).unwrap();
        let mut ring = Ring::new().unwrap();
        let warmed = append(&mut log, &mut ring, 0, n);
        assert!(warmed > 0);
        assert!(log.warm(&mut ring).unwrap(), "more to warm");
        ring.flush().unwrap();
        // Dropped with the warming write in flight: its buffer must outlive the log.
        drop(log);
    }
    check_records(dir.path(), n);
}
