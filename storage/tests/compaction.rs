//! Compaction keeps every record (sequence number, timestamp, bytes), merges segments, and is
//! atomic: an error or a crash at any step leaves the old set or the new one, never a mix,
//! and no temporary files survive the next open.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::compaction::{Fault, Step, compact_in_place, compact_in_place_with, compact_to};
use net_storage::{Log, LogConfig, Push, Retention};

fn small() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 16 << 10,
        batch_bytes_max: 4 << 10,
        batch_events_max: 32,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

fn large() -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 20,
        ..small()
    }
}

type Records = Vec<(u64, u64, Vec<u8>)>;

/// A log of 800 records with the oldest segments removed by retention (so it starts above 0).
fn build(dir: &Path) -> Records {
    let (mut log, _) = Log::open(dir, small()).unwrap();
    for seq in 0..800u64 {
        log.append(seq * 10 + 7, &vec![seq as u8; (seq % 90) as usize + 1])
            .unwrap();
    }
    log.flush(false).unwrap();
    log.enforce_retention(
        &Retention {
            max_events: Some(600),
            ..Retention::default()
        },
        0,
    )
    .unwrap();
    assert!(log.first_seq() > 0);
    let all = read(&mut log);
    log.close().unwrap();
    all
}

fn read(log: &mut Log) -> Records {
    let mut out = Vec::new();
    let mut from = log.first_seq();
    loop {
        let recs = log.read(from, 100, 1 << 20).unwrap();
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            from = r.seq + 1;
            out.push((r.seq, r.ts_ns, r.payload.to_vec()));
        }
    }
}

fn read_dir_log(dir: &Path, cfg: LogConfig) -> (Records, usize) {
    let (mut log, _) = Log::open(dir, cfg).unwrap();
    (read(&mut log), log.segments())
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("compact"))
        .collect()
}

#[test]
fn in_place_compaction_merges_segments_and_keeps_every_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shard-0000");
    let before = build(&dir);
    let done = compact_in_place(&dir, large()).unwrap();
    assert!(
        done.segments_before > 3 && done.segments_after == 1,
        "{done:?}"
    );
    assert_eq!(done.records, before.len() as u64);
    assert!(leftovers(&dir).is_empty());
    let (after, segments) = read_dir_log(&dir, large());
    assert_eq!(after, before, "same seqs, timestamps and bytes");
    assert_eq!(segments, 1);
    let (mut log, rec) = Log::open(&dir, large()).unwrap();
    assert_eq!(rec.next_seq, 800);
    assert!(matches!(log.push(1, b"after").unwrap(), Push::Staged(800)));
}

#[test]
fn compact_to_writes_a_copy_and_refuses_an_existing_destination() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("shard-0000");
    let dst = root.path().join("copy");
    let before = build(&src);
    compact_to(&src, &dst, large()).unwrap();
    assert_eq!(read_dir_log(&dst, large()).0, before);
    assert_eq!(
        read_dir_log(&src, small()).0,
        before,
        "the source is untouched"
    );
    let err = compact_to(&src, &dst, large()).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert!(leftovers(&dst).is_empty());
}

#[test]
fn a_fault_at_any_step_leaves_one_whole_set() {
    for step in [Step::Copy, Step::BeforeSwap, Step::AfterSwap] {
        for crash in [false, true] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("shard-0000");
            let before = build(&dir);
            let fault = if crash {
                Fault::Crash(step)
            } else {
                Fault::Error(step)
            };
            let err = compact_in_place_with(&dir, large(), Some(fault))
                .unwrap_err()
                .to_string();
            assert!(err.contains("injected fault"), "{err}");
            if !crash {
                assert!(
                    leftovers(&dir).is_empty(),
                    "{step:?}: an error path left {:?}",
                    leftovers(&dir)
                );
            }
            // Opening (as a restart would) removes leftovers and finds a whole set.
            let (after, segments) = read_dir_log(&dir, small());
            assert_eq!(after, before, "{fault:?}: records changed");
            let swapped = step == Step::AfterSwap;
            assert_eq!(
                segments == 1,
                swapped,
                "{fault:?}: the old set before the swap, the new one after"
            );
            assert!(
                leftovers(&dir).is_empty(),
                "{fault:?}: leftovers survived an open"
            );
        }
    }
}
