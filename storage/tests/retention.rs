//! Retention removes whole sealed segments, oldest first, never the active one; reads below
//! the retained range start at the first retained record; a reopened log agrees; an orphan
//! `.idx` left by an interrupted sweep is removed on open.
#![allow(clippy::cast_possible_truncation)]

use net_storage::segment::{idx_path, list_segments};
use net_storage::{Log, LogConfig, Retention};

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 16 << 10,
        batch_bytes_max: 4 << 10,
        batch_events_max: 32,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

/// Appends `n` 100-byte records stamped `ts = seq * 1000` (ns).
fn append(log: &mut Log, n: u64) {
    for _ in 0..n {
        let seq = log.next_seq();
        log.append(seq * 1000, &[seq as u8; 100]).unwrap();
    }
    log.flush(false).unwrap();
}

#[test]
fn max_events_removes_oldest_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    append(&mut log, 1000);
    let before = log.segments();
    assert!(before > 4);
    let swept = log
        .enforce_retention(
            &Retention {
                max_events: Some(300),
                ..Retention::default()
            },
            0,
        )
        .unwrap();
    assert!(swept.segments > 0 && swept.events > 0);
    let first = log.first_seq();
    assert_eq!(first, swept.events, "removed from the front");
    assert!(
        1000 - first >= 1 && 1000 - first <= 300 + 130,
        "kept about max_events: {first}"
    );
    assert_eq!(log.segments(), before - swept.segments);
    let recs = log.read(0, 5, 1 << 20).unwrap();
    assert_eq!(
        recs[0].seq, first,
        "a read below the retained range starts at the first retained"
    );
    let swept = log
        .enforce_retention(
            &Retention {
                max_events: Some(1),
                ..Retention::default()
            },
            0,
        )
        .unwrap();
    assert!(swept.segments > 0);
    assert_eq!(log.segments(), 1, "the active segment stays");
    let first = log.first_seq();
    log.close().unwrap();
    let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!((log.first_seq(), rec.next_seq), (first, 1000));
    assert_eq!(log.read(0, 1, 1 << 20).unwrap()[0].seq, first);
}

#[test]
fn max_bytes_and_max_age_use_segment_sizes_and_newest_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    append(&mut log, 1000);
    let swept = log
        .enforce_retention(
            &Retention {
                max_bytes: Some(40 << 10),
                ..Retention::default()
            },
            0,
        )
        .unwrap();
    assert!(swept.bytes > 0);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        on_disk <= (40 << 10) + (16 << 10),
        "about max_bytes remain: {on_disk}"
    );
    // Newest record of the first retained segment has ts = (end - 1) * 1000 ns.
    let first = log.first_seq();
    let none = log
        .enforce_retention(
            &Retention {
                max_age_ms: Some(1),
                ..Retention::default()
            },
            first * 1000,
        )
        .unwrap();
    assert_eq!(none.segments, 0, "nothing is older than 1 ms yet");
    let now = 1_000_000 * 1000 + 2_000_000;
    let all_old = log
        .enforce_retention(
            &Retention {
                max_age_ms: Some(1),
                ..Retention::default()
            },
            now,
        )
        .unwrap();
    assert!(all_old.segments > 0);
    assert_eq!(log.segments(), 1);
}

/// Hardening: retention unlinks `.idx` before `.dat`, after its manifest is durable, so an
/// `.idx` without its `.dat` is never its leftover: it is a lost segment, and opening refuses
/// it (naming the file) instead of deleting the evidence and serving fewer events.
#[test]
fn an_index_without_its_dat_is_refused_not_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    append(&mut log, 300);
    log.close().unwrap();
    let first = list_segments(dir.path()).unwrap()[0];
    std::fs::remove_file(net_storage::segment::dat_path(dir.path(), first)).unwrap();
    let err = Log::open(dir.path(), cfg()).unwrap_err().to_string();
    assert!(err.contains(".idx") && err.contains("missing"), "{err}");
    assert!(idx_path(dir.path(), first).exists(), "the evidence stays");
}

/// After a sweep the manifest says where the log starts: a reopened log agrees, and the
/// removed segments' files are gone.
#[test]
fn a_sweep_is_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    append(&mut log, 1000);
    let policy = Retention {
        max_events: Some(300),
        ..Retention::default()
    };
    let swept = log.enforce_retention(&policy, 0).unwrap();
    let first = log.first_seq();
    log.close().unwrap();
    assert!(
        list_segments(dir.path())
            .unwrap()
            .iter()
            .all(|&b| b >= first)
    );
    let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
    assert!(!rec.repaired(), "{rec:?}");
    assert_eq!((log.first_seq(), swept.events), (first, first));
    assert_eq!(log.read(0, 1, 1 << 20).unwrap()[0].seq, first);
}
