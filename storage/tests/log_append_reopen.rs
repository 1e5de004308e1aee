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
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let n = (seq % 300) as usize;
    (0..n).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// Appends `n` records through the log's pipeline and writes them; returns their seqs.
fn append(log: &mut Log, n: u64) -> Vec<u64> {
    let seqs = (0..n)
        .map(|_| {
            let seq = log.next_seq();
            log.append(1000 + seq, &payload(seq)).unwrap()
        })
        .collect();
    log.flush(false).unwrap();
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
    log.flush(false).unwrap();
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

/// The last record of a crashed (never closed, never synced) log loses its last byte: a
/// torn tail, cut.
#[test]
fn a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        append(&mut log, 20);
        std::mem::forget(log); // a crash: no close
    }
    let dat = net_storage::segment::dat_path(dir.path(), 0);
    let mut bytes = std::fs::read(&dat).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end] ^= 0xFF; // tear the last record
    std::fs::write(&dat, &bytes).unwrap();
    let (mut log, rec) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
    assert!(rec.torn_tail, "{rec:?}");
    assert_eq!(rec.next_seq, 19);
    assert_eq!(read_all(&mut log).len(), 19);
}

/// After a clean close every record is acknowledged: a cut end is damage, not a torn tail.
#[test]
fn a_log_cut_short_after_a_clean_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(dir.path(), cfg(1 << 20)).unwrap();
        append(&mut log, 20);
        log.close().unwrap();
    }
    let dat = net_storage::segment::dat_path(dir.path(), 0);
    let len = std::fs::metadata(&dat).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    f.set_len(len - 3).unwrap();
    let err = Log::open(dir.path(), cfg(1 << 20)).unwrap_err().to_string();
    assert!(err.contains("seq 19 was acknowledged"), "{err}");
    f.set_len(len - 60).unwrap(); // a whole record and more gone
    let err = Log::open(dir.path(), cfg(1 << 20)).unwrap_err().to_string();
    assert!(err.contains("acknowledged"), "{err}");
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
    assert!(
        err.contains("manifest of shard 0, expected shard 5"),
        "{err}"
    );
}
