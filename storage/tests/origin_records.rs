//! Records that carry their origin (`Log::push_with_origin`): completed batches and readers
//! return the origin and the exact payload, plain records keep `origin: None`, and the origin
//! survives crash recovery, a torn tail, compaction, `verify` and `dump`; a damaged origin
//! block is refused like any damaged record.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use net_storage::compaction::compact_to;
use net_storage::record::{ORIGIN_BYTES, Origin, RECORD_HEADER_BYTES};
use net_storage::segment::{dat_path, list_segments};
use net_storage::{DumpOptions, Log, LogConfig, Push, Ring, StorageError, Submit, scan, verify};

/// The last record (seq 400) carries an origin.
const RECORDS: u64 = 401;

fn cfg() -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes: 32 << 10,
        batch_bytes_max: 8 << 10,
        batch_events_max: 40,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

/// Every third record is plain; the others come from one of two origins.
fn origin_of(seq: u64) -> Option<Origin> {
    (!seq.is_multiple_of(3)).then(|| Origin {
        node: 0xABCD_0000 + seq % 2,
        shard: (seq % 5) as u16,
        seq: 1_000 + seq * 2,
    })
}

fn payload(seq: u64) -> Vec<u8> {
    (0..(seq % 150) as usize)
        .map(|i| (seq as usize * 13 + i) as u8)
        .collect()
}

type Stored = (u64, u64, Option<Origin>, Vec<u8>);

fn expected(seqs: std::ops::Range<u64>) -> Vec<Stored> {
    seqs.map(|s| (s, 500 + s, origin_of(s), payload(s)))
        .collect()
}

/// Appends records `seqs` (with origins as `origin_of` says) and writes them.
fn append(log: &mut Log, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let got = match origin_of(seq) {
            Some(o) => log.append_with_origin(500 + seq, &o, &payload(seq)),
            None => log.append(500 + seq, &payload(seq)),
        };
        assert_eq!(got.unwrap(), seq);
    }
    log.flush(false).unwrap();
}

fn read_all(log: &mut Log) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let recs = log.read(from, 33, 1 << 20).expect("no damage is served");
        if recs.is_empty() {
            return out;
        }
        for r in recs {
            from = r.seq + 1;
            out.push((r.seq, r.ts_ns, r.origin, r.payload.to_vec()));
        }
    }
}

#[test]
fn completed_batches_and_readers_return_the_origin_and_the_exact_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open_shared(dir.path(), cfg()).unwrap();
    let mut ring = Ring::new().unwrap();
    let mut appended = Vec::new();
    let mut seq = 0;
    let mut ready = Vec::new();
    while (appended.len() as u64) < RECORDS {
        while seq < RECORDS {
            let pushed = match origin_of(seq) {
                Some(o) => log.push_with_origin(500 + seq, &o, &payload(seq)),
                None => log.push(500 + seq, &payload(seq)),
            };
            match pushed.unwrap() {
                Push::Staged(s) => assert_eq!(s, seq),
                Push::Full => break,
            }
            seq += 1;
        }
        if log.open_events() > 0 && log.submit(&mut ring, true).unwrap() {
            ring.flush().unwrap();
        }
        ring.wait().unwrap();
        ready.clear();
        ring.reap(|tag, res| ready.push((tag, res)));
        for &(tag, res) in &ready {
            log.complete(&mut ring, tag, res).unwrap();
            while let Some(c) = log.pop_completed() {
                for r in log.appended(&c).records() {
                    appended.push((r.seq, r.ts_ns, r.origin, r.payload.to_vec()));
                }
            }
        }
    }
    assert_eq!(appended, expected(0..RECORDS), "what batch consumers see");
    let mut reader = log.view().reader();
    let mut read = Vec::new();
    let mut from = 0;
    loop {
        let batch = reader.read(from, 50, 1 << 20).unwrap();
        if batch.records.is_empty() {
            break;
        }
        for r in batch.records {
            from = r.seq + 1;
            read.push((r.seq, r.ts_ns, r.origin, r.payload.to_vec()));
        }
    }
    assert_eq!(read, expected(0..RECORDS), "what readers see");
    while log.in_flight() {
        ring.wait().unwrap();
        ready.clear();
        ring.reap(|tag, res| ready.push((tag, res)));
        for &(tag, res) in &ready {
            log.complete(&mut ring, tag, res).unwrap();
        }
        while log.pop_completed().is_some() {}
    }
    log.close().unwrap();
}

#[test]
fn origins_survive_a_crash_and_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    append(&mut log, 0..RECORDS);
    std::mem::forget(log); // a crash: never closed, never synced

    let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
    assert_eq!(rec.next_seq, RECORDS);
    assert_eq!(read_all(&mut log), expected(0..RECORDS));
    std::mem::forget(log); // a crash again: nothing acknowledged yet

    // Tear the last record (one with an origin) in the middle of its origin block.
    let last = *list_segments(dir.path()).unwrap().last().unwrap();
    let path = dat_path(dir.path(), last);
    let bytes = std::fs::read(&path).unwrap();
    let mut offsets = Vec::new();
    scan::scan(
        &bytes[..],
        bytes.len() as u64,
        0,
        last,
        1 << 16,
        &mut |h, at, _| {
            offsets.push((h.seq, at));
            true
        },
    )
    .unwrap();
    let &(last_seq, at) = offsets.last().unwrap();
    assert!(
        origin_of(last_seq).is_some(),
        "the test tears an origin record"
    );
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(at + (RECORD_HEADER_BYTES + ORIGIN_BYTES / 2) as u64)
        .unwrap();
    drop(f);
    let (mut log, rec) = Log::open(dir.path(), cfg()).unwrap();
    assert!(rec.torn_tail, "{rec:?}");
    assert_eq!(rec.next_seq, last_seq);
    assert_eq!(read_all(&mut log), expected(0..last_seq));
    log.close().unwrap();
}

#[test]
fn compaction_keeps_origins_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    let (mut log, _) = Log::open(&src, cfg()).unwrap();
    append(&mut log, 0..RECORDS);
    log.close().unwrap();
    let dst = root.path().join("dst");
    let big = LogConfig {
        segment_bytes: 1 << 20,
        ..cfg()
    };
    let done = compact_to(&src, &dst, big).unwrap();
    assert_eq!(done.records, RECORDS);
    assert!(done.segments_after < done.segments_before);
    let (mut log, _) = Log::open(&dst, big).unwrap();
    assert_eq!(read_all(&mut log), expected(0..RECORDS));
    log.close().unwrap();
    // The bytes themselves: every record's body (origin block and payload) is the source's.
    let bodies = |dir: &Path| {
        let mut out = Vec::new();
        for base in list_segments(dir).unwrap() {
            let bytes = std::fs::read(dat_path(dir, base)).unwrap();
            scan::scan(
                &bytes[..],
                bytes.len() as u64,
                0,
                base,
                1 << 16,
                &mut |h, at, _| {
                    let at = at as usize;
                    out.push(bytes[at + RECORD_HEADER_BYTES..at + h.record_bytes()].to_vec());
                    true
                },
            )
            .unwrap();
        }
        out
    };
    let (before, after) = (bodies(&src), bodies(&dst));
    assert_eq!(before.len(), RECORDS as usize);
    assert!(before == after, "compaction changed a record's body");
    let with_block = before
        .iter()
        .enumerate()
        .find(|(s, _)| origin_of(*s as u64).is_some());
    let (seq, body) = with_block.unwrap();
    assert_eq!(
        body[..ORIGIN_BYTES],
        origin_of(seq as u64).unwrap().to_bytes()
    );
}

#[test]
fn the_payload_limit_counts_the_origin_block() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg()).unwrap();
    let max = cfg().payload_bytes_max();
    let o = Origin {
        node: 1,
        shard: 0,
        seq: 0,
    };
    let err = log
        .push_with_origin(1, &o, &vec![0; max - ORIGIN_BYTES + 1])
        .unwrap_err();
    match &err {
        StorageError::Invalid { field, what } => {
            assert_eq!(*field, "payload");
            assert!(what.contains("origin block"), "{what}");
            assert!(what.contains(&format!("{}", max - ORIGIN_BYTES)), "{what}");
        }
        other => panic!("{other:?}"),
    }
    let seq = log
        .append_with_origin(1, &o, &vec![7; max - ORIGIN_BYTES])
        .unwrap();
    log.flush(false).unwrap();
    let got = log.read(seq, 1, usize::MAX).unwrap();
    assert_eq!(
        (got[0].origin, got[0].payload.len()),
        (Some(o), max - ORIGIN_BYTES)
    );
    log.close().unwrap();
}

/// A data dir with one shard of origin and plain records, closed cleanly.
fn data_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&root.path().join("shard-0000"), cfg()).unwrap();
    append(&mut log, 0..RECORDS);
    log.close().unwrap();
    root
}

#[test]
fn verify_passes_and_dump_prints_the_origin() {
    let root = data_dir();
    let report = verify(root.path()).unwrap();
    assert!(
        report.is_clean(),
        "{:?}",
        report.problems().collect::<Vec<_>>()
    );
    assert_eq!(report.shards[0].records, RECORDS);
    let mut out = Vec::new();
    let dumped = net_storage::dump(root.path(), &DumpOptions::default(), &mut out).unwrap();
    assert_eq!(dumped.records, RECORDS);
    let text = String::from_utf8(out).unwrap();
    for (line, (seq, ts, origin, payload)) in text.lines().zip(expected(0..RECORDS)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(seq), "{line}");
        assert_eq!(v["ts"].as_u64(), Some(ts), "{line}");
        assert_eq!(v["len"].as_u64(), Some(payload.len() as u64), "{line}");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
        assert_eq!(v["payload_b64"].as_str(), Some(b64.as_str()), "{line}");
        match origin {
            Some(o) => {
                assert_eq!(v["origin"]["node"].as_u64(), Some(o.node), "{line}");
                assert_eq!(
                    v["origin"]["shard"].as_u64(),
                    Some(u64::from(o.shard)),
                    "{line}"
                );
                assert_eq!(v["origin"]["seq"].as_u64(), Some(o.seq), "{line}");
            }
            None => assert!(v.get("origin").is_none(), "{line}"),
        }
    }
}

/// Finds the first origin record after seq 10 of the data dir's first (sealed) segment;
/// returns the `.dat` path and the record's offset and length.
fn first_origin_record(root: &Path) -> (std::path::PathBuf, usize, usize) {
    let dir = root.join("shard-0000");
    let path = dat_path(&dir, 0);
    let bytes = std::fs::read(&path).unwrap();
    let mut found = None;
    scan::scan(
        &bytes[..],
        bytes.len() as u64,
        0,
        0,
        1 << 16,
        &mut |h, at, _| {
            if h.origin.is_some() && h.seq > 10 {
                found = Some((at as usize, h.record_bytes()));
                return false;
            }
            true
        },
    )
    .unwrap();
    let (at, len) = found.unwrap();
    (path, at, len)
}

fn patch(path: &Path, at: usize, f: impl FnOnce(&mut [u8])) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes[at..]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_an_origin_block_is_damage() {
    let root = data_dir();
    let (path, at, _) = first_origin_record(root.path());
    patch(&path, at + RECORD_HEADER_BYTES + 3, |b| b[0] ^= 0x40);
    let report = verify(root.path()).unwrap();
    let problems: Vec<String> = report.problems().map(|p| p.to_string()).collect();
    assert!(
        problems.iter().any(|p| p.contains("checksum")),
        "{problems:?}"
    );
    assert_read_refuses_damage(root.path());
}

/// Opening checks a sealed segment by its index (no full scan); reading the damaged record
/// is refused, naming the file.
fn assert_read_refuses_damage(root: &Path) {
    let (mut log, _) = Log::open(&root.join("shard-0000"), cfg()).unwrap();
    let mut from = 0;
    let err = loop {
        match log.read(from, 7, 1 << 20) {
            Ok(recs) => {
                assert!(!recs.is_empty(), "the damaged record was never refused");
                from = recs.last().unwrap().seq + 1;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000000.dat"),
        "{err}"
    );
}

#[test]
fn nonzero_reserved_origin_bytes_are_refused_even_with_a_valid_checksum() {
    let root = data_dir();
    let (path, at, len) = first_origin_record(root.path());
    patch(&path, at, |rec| {
        rec[RECORD_HEADER_BYTES + ORIGIN_BYTES - 1] = 0xFF;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[8..32]), &rec[32..len]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
    });
    let report = verify(root.path()).unwrap();
    let problems: Vec<String> = report.problems().map(|p| p.to_string()).collect();
    assert!(
        problems.iter().any(|p| p.contains("reserved")),
        "{problems:?}"
    );
    assert_read_refuses_damage(root.path());
}

#[test]
fn reserved_origin_bytes_in_the_last_segment_before_acknowledged_records_are_refused() {
    let root = data_dir();
    let dir = root.path().join("shard-0000");
    let last = *list_segments(&dir).unwrap().last().unwrap();
    let path = dat_path(&dir, last);
    let bytes = std::fs::read(&path).unwrap();
    let mut found = None;
    scan::scan(
        &bytes[..],
        bytes.len() as u64,
        0,
        last,
        1 << 16,
        &mut |h, at, _| {
            if h.origin.is_some() && h.seq > last + 5 {
                found = Some((at as usize, h.record_bytes()));
                return false;
            }
            true
        },
    )
    .unwrap();
    let (at, len) = found.unwrap();
    patch(&path, at, |rec| {
        rec[RECORD_HEADER_BYTES + 20] = 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[8..32]), &rec[32..len]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
    });
    // The log was closed cleanly: every record is acknowledged, and recovery must refuse to
    // cut the damage as a torn tail.
    let err = Log::open(&dir, cfg()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("reserved"), "{err}");
}
