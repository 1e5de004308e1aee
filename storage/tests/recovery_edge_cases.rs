//! Recovery edge cases found by fuzzing `net-admin repair`: names near `u64::MAX`, zero padding
//! shorter than a record header, garbage after the end, sealed segments from another shard or
//! with damage (refused, never cut), a log closed before its first write, and what recovery
//! reports for the files it removes.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::manifest::{self, Manifest};
use net_storage::record::{FLAG_BATCH_FIRST, RecordMeta};
use net_storage::segment::{SEGMENT_HEADER_BYTES, SegmentHeader, dat_path, list_segments};
use net_storage::{Log, LogConfig, StorageError};

fn cfg(shard: u16) -> LogConfig {
    LogConfig {
        shard,
        segment_bytes: 16 << 10,
        batch_bytes_max: 8 << 10,
        batch_events_max: 64,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

fn append(log: &mut Log, payloads: &[Vec<u8>]) {
    for p in payloads {
        log.append(1, p).unwrap();
    }
    log.flush(false).unwrap();
}

#[test]
fn a_segment_named_near_u64_max_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = u64::MAX;
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES + 64];
    SegmentHeader {
        shard: 0,
        base_seq: base,
    }
    .encode(&mut block);
    let meta = RecordMeta {
        seq: base,
        ts_ns: 1,
        flags: FLAG_BATCH_FIRST,
        committed: 0,
    };
    net_storage::record::encode(&mut block[SEGMENT_HEADER_BYTES..], &meta, b"last");
    std::fs::write(dat_path(dir.path(), base), &block).unwrap();
    let m = Manifest::new(0, base);
    manifest::write_sync(dir.path(), &manifest::open(dir.path()).unwrap(), &m).unwrap();
    let err = Log::open(dir.path(), cfg(0)).unwrap_err().to_string();
    assert!(err.contains("overflow"), "{err}");
}

#[test]
fn short_zero_padding_is_a_clean_end_and_garbage_after_it_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(0)).unwrap();
        // 4096 header + 32 + 4044 = 8172: the record ends 20 bytes before the block boundary.
        append(&mut log, &[vec![9u8; 4044]]);
        std::mem::forget(log);
    }
    let (_, rec) = Log::open(dir.path(), cfg(0)).unwrap();
    assert!(
        !rec.torn_tail,
        "20 zero bytes of padding are not a torn record: {rec:?}"
    );
    let path = dat_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0u8; 40]);
    bytes.extend_from_slice(b"garbage after a zero header");
    std::fs::write(&path, &bytes).unwrap();
    let (mut log, rec) = Log::open(dir.path(), cfg(0)).unwrap();
    assert!(rec.torn_tail, "{rec:?}");
    assert_eq!(rec.dat_bytes_cut, bytes.len() as u64 - 8172, "{rec:?}");
    assert_eq!(log.read(0, 10, 1 << 20).unwrap().len(), 1);
}

fn sealed_log(dir: &Path, shard: u16) {
    let (mut log, _) = Log::open(dir, cfg(shard)).unwrap();
    append(
        &mut log,
        &(0..200).map(|i| vec![i as u8; 150]).collect::<Vec<_>>(),
    );
    log.close().unwrap();
    assert!(list_segments(dir).unwrap().len() > 2);
}

#[test]
fn a_sealed_segment_from_another_shard_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    sealed_log(a.path(), 0);
    sealed_log(b.path(), 1);
    std::fs::copy(dat_path(b.path(), 0), dat_path(a.path(), 0)).unwrap();
    let err = Log::open(a.path(), cfg(0)).unwrap_err().to_string();
    assert!(
        err.contains("header says shard 1") && err.contains("00000000000000000000.dat"),
        "{err}"
    );
}

#[test]
fn a_damaged_sealed_segment_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    sealed_log(dir.path(), 0);
    let path = dat_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    // Make the index disagree too, so that open must look at the data.
    std::fs::write(net_storage::segment::idx_path(dir.path(), 0), b"").unwrap();
    match Log::open(dir.path(), cfg(0)) {
        Err(StorageError::Corrupt { path: p, what, .. }) => {
            assert_eq!(p, path);
            assert!(what.contains("sealed"), "{what}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "nothing was cut from a sealed segment"
    );
}

#[test]
fn a_log_closed_before_its_first_write_reopens_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(dir.path(), cfg(0)).unwrap();
    log.close().unwrap();
    assert_eq!(std::fs::metadata(dat_path(dir.path(), 0)).unwrap().len(), 0);
    let (_, rec) = Log::open(dir.path(), cfg(0)).unwrap();
    assert!(!rec.repaired(), "{rec:?}");
}

/// A retention sweep that made its manifest durable and died before unlinking leaves
/// segments below the first stored seq: opening removes them, and compaction leftovers.
#[test]
fn an_interrupted_sweep_and_compaction_leftovers_are_finished_and_reported() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("shard-0000");
    sealed_log(&dir, 0);
    let second = list_segments(&dir).unwrap()[1];
    let mut m = manifest::read(&dir, 0).unwrap().unwrap();
    m.generation += 1;
    m.first_seq = second;
    manifest::write_sync(&dir, &manifest::open(&dir).unwrap(), &m).unwrap();
    std::fs::create_dir(root.path().join("shard-0000.compact-tmp")).unwrap();
    let (mut log, rec) = Log::open(&dir, cfg(0)).unwrap();
    assert_eq!(
        (rec.retention_finished, rec.compaction_leftovers_removed),
        (1, 1),
        "{rec:?}"
    );
    assert!(rec.repaired());
    assert_eq!(list_segments(&dir).unwrap()[0], second);
    assert_eq!(log.read(0, 1, 1 << 20).unwrap()[0].seq, second);
}

#[test]
fn a_sealed_segment_with_zero_padding_and_a_lost_index_is_repaired() {
    // What a crash leaves under fsync `never`: a rolled segment whose truncation and index
    // never reached the disk.
    let dir = tempfile::tempdir().unwrap();
    sealed_log(dir.path(), 0);
    let path = dat_path(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    bytes.resize(len.div_ceil(4096) * 4096 + 4096, 0);
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(net_storage::segment::idx_path(dir.path(), 0), b"").unwrap();
    let (mut log, rec) = Log::open(dir.path(), cfg(0)).unwrap();
    assert!(rec.indexes_rebuilt == 1 && !rec.torn_tail, "{rec:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, len);
    let second_base = list_segments(dir.path()).unwrap()[1];
    let all = log.read(0, 1000, 1 << 20).unwrap();
    let first_segment = all.iter().filter(|r| r.seq < second_base).count();
    assert_eq!(
        first_segment as u64, second_base,
        "every record of the sealed segment kept"
    );
    assert_eq!(all.len(), 200, "and every other record");
}
