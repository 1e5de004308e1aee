//! Readers off the writer's thread: records of any size, straddling the reader's chunks (or
//! larger than one), come back byte for byte from any starting point; a reader following a
//! log that is being written sees every record exactly once, in order, and never one that
//! is not yet complete; retention removes a segment under a reader without breaking its read.
#![allow(clippy::cast_possible_truncation)]

use net_storage::{Log, LogConfig, READ_CHUNK_BYTES, Retention};

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        shard: 0,
        segment_bytes,
        batch_bytes_max: 4 << 20,
        batch_events_max: 1000,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

/// Payload sizes that put record boundaries everywhere relative to 1 MiB chunks, a few
/// records larger than a chunk among them.
fn size(seq: u64) -> usize {
    match seq % 97 {
        0 => READ_CHUNK_BYTES + 3 * 4096 + (seq as usize % 5000),
        1 => 2 * READ_CHUNK_BYTES + 17,
        n => (n as usize * 7919 + seq as usize * 31) % 20_000,
    }
}

fn payload(seq: u64) -> Vec<u8> {
    (0..size(seq))
        .map(|i| (seq as usize * 131 + i) as u8)
        .collect()
}

#[test]
fn records_straddling_chunks_read_back_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(64 << 20)).unwrap();
    let n = 600u64;
    for seq in 0..n {
        log.append(seq, &payload(seq)).unwrap();
    }
    log.flush(false).unwrap();
    let mut reader = log.view().reader();
    let mut next = 0;
    while next < n {
        let batch = reader.read(next, 7, 3 << 20).unwrap();
        assert!(!batch.records.is_empty(), "stuck at {next}");
        for r in &batch.records {
            assert_eq!(r.seq, next);
            assert_eq!(r.payload, payload(r.seq), "seq {}", r.seq);
            next += 1;
        }
        assert_eq!(batch.next, next);
    }
    // Random starting points: the sparse index, then a scan to the record.
    let mut x = 0x2545F4914F6CDD1Du64;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let from = x % n;
        let got = reader.read(from, 3, usize::MAX).unwrap();
        assert_eq!(got.records[0].seq, from);
        assert_eq!(got.records[0].payload, payload(from));
    }
    log.close().unwrap();
}

#[test]
fn a_follower_sees_every_record_once_in_order_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(128 << 10)).unwrap();
    let view = log.view().clone();
    let n = 5_000u64;
    let follower = std::thread::spawn(move || {
        let mut reader = view.reader();
        let mut next = 0u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next < n {
            assert!(std::time::Instant::now() < deadline, "stuck at {next}");
            let batch = reader.read(next, 100, 1 << 20).unwrap();
            for r in &batch.records {
                assert_eq!(r.seq, next);
                assert_eq!(&r.payload[..], &small(r.seq)[..]);
                next += 1;
            }
            if batch.records.is_empty() {
                std::thread::yield_now();
            }
        }
        next
    });
    for seq in 0..n {
        log.append(seq, &small(seq)).unwrap();
        if seq % 50 == 0 {
            log.flush(seq % 100 == 0).unwrap();
        }
    }
    log.flush(true).unwrap();
    assert_eq!(follower.join().unwrap(), n);
    assert!(log.segments() > 3, "the follower crossed segment rolls");
}

/// A reader at the tail of a log written in small batches reads each new byte about once: the
/// next read starts at the block the last one ended in, not at an index entry far behind
/// (which made a following consumer read the disk many times over and starve the writer).
#[test]
fn a_follower_at_the_tail_reads_each_byte_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(64 << 20)).unwrap();
    let mut reader = log.view().reader();
    let (rounds, per_round) = (2_000u64, 20u64);
    let mut next = 0u64;
    let mut record_bytes = 0u64;
    for round in 0..rounds {
        for i in 0..per_round {
            let seq = round * per_round + i;
            log.append(seq, &small(seq)).unwrap();
        }
        log.flush(false).unwrap();
        let batch = reader.read(next, usize::MAX, usize::MAX).unwrap();
        assert_eq!(batch.records.len() as u64, per_round, "round {round}");
        for r in &batch.records {
            assert_eq!(r.seq, next);
            assert_eq!(&r.payload[..], &small(r.seq)[..]);
            record_bytes += r.payload.len() as u64 + 32;
            next += 1;
        }
    }
    // Each round may read again the block the previous one ended in (and the new data's
    // blocks round up): at most two blocks per round beyond the records themselves.
    let bound = record_bytes + rounds * 2 * net_storage::BLOCK_BYTES as u64;
    assert!(
        reader.bytes_read() <= bound,
        "read {} bytes from disk for {record_bytes} record bytes in {rounds} rounds",
        reader.bytes_read()
    );
    log.close().unwrap();
}

fn small(seq: u64) -> Vec<u8> {
    vec![seq as u8; (seq % 300) as usize + 1]
}

#[test]
fn retention_under_a_reader_does_not_break_its_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), cfg(64 << 10)).unwrap();
    for seq in 0..3000u64 {
        log.append(seq, &small(seq)).unwrap();
    }
    log.flush(true).unwrap();
    let mut reader = log.view().reader();
    let first = reader.read(0, 10, 1 << 20).unwrap();
    assert_eq!(first.records.len(), 10);
    let policy = Retention {
        max_events: Some(500),
        ..Retention::default()
    };
    let swept = log.enforce_retention(&policy, 0).unwrap();
    assert!(swept.segments > 0);
    // The reader continues where it was: its segment's file is gone from the directory, but
    // the read it had started is served whole or it moves past the removed range.
    let more = reader.read(first.next, 10, 1 << 20).unwrap();
    let expected = if more.skipped {
        log.first_seq()
    } else {
        first.next
    };
    assert_eq!(more.records[0].seq, expected);
    for r in &more.records {
        assert_eq!(&r.payload[..], &small(r.seq)[..]);
    }
}
