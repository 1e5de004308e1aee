//! Appending batches, rolling segments, reading by sequence range, and reopening a data dir
//! that continues the sequence and serves old records byte for byte.
#![allow(clippy::cast_possible_truncation)]

use net_storage::{Log, LogConfig, Push};

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes,
        batch_bytes_max: 64 << 10,
        batch_events_max: 100,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let n = (seq % 300) as usize;
    (0..n).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// Pushes `n` records through the batch cycle the engine uses; returns the seqs staged.
fn append(log: &mut Log, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut i = 0;
    while i < n {
        let seq = log.next_seq();
        match log.push(1000 + seq, &payload(seq)).unwrap() {
            Push::Staged(s) => {
                seqs.push(s);
                i += 1;
            }
            Push::Full => {
                if log.in_flight() {
                    log.complete(true).unwrap().expect("a batch was in flight");
                }
                log.submit(false).unwrap();
            }
        }
    }
    if log.in_flight() {
        log.complete(true).unwrap();
    }
    log.submit(false).unwrap();
    log.complete(true).unwrap();
    seqs
}

fn read_all(log: &mut Log) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let recs = log.read(from, 37, 1 << 20).unwrap();
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            from = r.seq + 1;
            out.push((r.seq, r.ts_ns, r.payload.to_vec()));
        }
    }
}

#[test]
fn appends_roll_segments_and_reopen_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec) = Log::open(dir.path(), cfg(64 << 10)).unwrap();
    assert_eq!(rec.next_seq, 0);
    let seqs = append(&mut log, 1000);
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    assert_eq!(log.persisted_end(), 1000);
    let got = read_all(&mut log);
    assert_eq!(got.len(), 1000);
    for (seq, ts, p) in &got {
        assert_eq!((*ts, p), (1000 + seq, &payload(*seq)));
    }
    log.close().unwrap();
    let segments = net_storage::segment::list_segments(dir.path()).unwrap();
    assert!(segments.len() > 2, "segments rolled: {segments:?}");

    let (mut log, rec) = Log::open(dir.path(), cfg(64 << 10)).unwrap();
    assert_eq!(rec.next_seq, 1000);
    assert!(!rec.repaired(), "a clean close needs no repair: {rec:?}");
    let seqs = append(&mut log, 500);
    assert_eq!(seqs.first(), Some(&1000));
    let got = read_all(&mut log);
    assert_eq!(got.len(), 1500);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (seq, _, p))| *seq == i as u64 && *p == payload(*seq))
    );
}

#[test]
fn reads_serve_only_persisted_records_and_respect_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(matches!(log.push(1, b"abc").unwrap(), Push::Staged(0)));
    assert!(
        log.read(0, 10, 1 << 20).unwrap().is_empty(),
        "staged is not readable"
    );
    log.submit(false).unwrap();
    log.complete(true).unwrap();
    let r = log.read(0, 10, 1 << 20).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].payload[..], b"abc");
    append(&mut log, 50);
    let r = log.read(5, 10, 1 << 20).unwrap();
    assert_eq!(
        r.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (5..15).collect::<Vec<_>>()
    );
    let r = log.read(5, 100, 1).unwrap();
    assert_eq!(r.len(), 1, "max_bytes still returns one record");
}

#[test]
fn crash_without_close_recovers_padding_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        append(&mut log, 77);
        std::mem::forget(log); // no close: the files keep their zero-padded last block
    }
    let (mut log, rec) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(rec.next_seq, 77);
    assert!(!rec.torn_tail);
    assert_eq!(read_all(&mut log).len(), 77);
}

#[test]
fn a_torn_tail_is_cut_and_the_index_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        append(&mut log, 20);
        log.close().unwrap();
    }
    let dat = net_storage::segment::dat_path(dir.path(), 0);
    let len = std::fs::metadata(&dat).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    f.set_len(len - 3).unwrap(); // tear the last record
    let (mut log, rec) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(rec.torn_tail && rec.index_rebuilt, "{rec:?}");
    assert_eq!(rec.next_seq, 19);
    assert_eq!(read_all(&mut log).len(), 19);
}

#[test]
fn a_segment_from_another_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        append(&mut log, 3);
        log.close().unwrap();
    }
    let other = LogConfig {
        shard: 5,
        ..cfg(1 << 20)
    };
    let err = Log::open(dir.path(), other).unwrap_err().to_string();
    assert!(err.contains("expected shard 5"), "{err}");
}
