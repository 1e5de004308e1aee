//! RedEX's log driven directly from one thread, without the bus: appending full batches
//! through the pipelined cycle a shard uses, and reading a closed log back in sequence.
//!
//! The append cycle is `Log::append`'s, the one the shards run: push until the open batch is
//! full, complete the batch in flight (if any), submit the full one, so that one batch is
//! encoded while the previous one is written. No fsync per batch (the
//! log still syncs each segment it seals, and at close). The log is sized as the bus's
//! defaults size a shard's, so the figures are those of one shard at full speed.
//!
//! Payloads cycle through `PAYLOADS_DISTINCT` precomputed ones, so generating them costs next
//! to nothing and every record read back can be compared byte for byte with what was pushed.
//! Throughput counts record bytes (32-byte header and payload), which is what a consumer gets
//! back; the `.idx` entries and segment headers the log also writes are reported apart.

use crate::{Failure, payload};
use net_engine::Config;
use net_storage::record::record_bytes;
use net_storage::{Log, LogConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Distinct payloads the append phase cycles through.
pub const PAYLOADS_DISTINCT: usize = 1024;

/// Most records one read asks for, and about how many bytes.
pub const READ_EVENTS_MAX: usize = 65_536;
pub const READ_BYTES_MAX: usize = 16 << 20;

/// Record timestamps start here and grow by one per record: the log only needs them to grow.
const TS_NS_BASE: u64 = 1_000;

/// A shard's log as the bus's defaults size it: segment size, batch bytes and batch events.
pub fn log_config() -> LogConfig {
    let defaults = Config::default();
    LogConfig {
        shard: 0,
        segment_bytes: defaults.storage.segment_bytes,
        batch_bytes_max: defaults.batch.max_bytes,
        batch_events_max: defaults.batch.max_events,
        ack: net_storage::Ack::Synced,
        preallocate: true,
    }
}

/// Bytes that `events` records of `payload_bytes` occupy in `.dat` files.
pub fn records_bytes(events: u64, payload_bytes: usize) -> u64 {
    events * record_bytes(payload_bytes) as u64
}

/// The payloads records carry: record `seq` carries payload `seq % PAYLOADS_DISTINCT`.
#[derive(Debug)]
pub struct Payloads {
    bytes: Vec<u8>,
    payload_bytes: usize,
}

impl Payloads {
    pub fn new(payload_bytes: usize) -> Payloads {
        let mut bytes = vec![0u8; payload_bytes * PAYLOADS_DISTINCT];
        for (i, chunk) in bytes.chunks_mut(payload_bytes).enumerate() {
            payload::fill(chunk, 0, i as u64);
        }
        Payloads {
            bytes,
            payload_bytes,
        }
    }

    /// The payload of record `seq`.
    pub fn of(&self, seq: u64) -> &[u8] {
        let i = usize::try_from(seq % PAYLOADS_DISTINCT as u64).expect("below the pool size");
        &self.bytes[i * self.payload_bytes..(i + 1) * self.payload_bytes]
    }
}

/// What one append run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Appended {
    /// Record bytes appended (headers and payloads).
    pub bytes: u64,
    /// From the first push until the log was closed (its last write done and synced).
    pub elapsed: Duration,
    /// Bytes of every file the log left in its directory (`.dat` and `.idx`).
    pub file_bytes: u64,
}

impl Appended {
    pub fn mb_per_s(&self) -> f64 {
        crate::report::per_s(self.bytes, self.elapsed) / 1e6
    }
}

/// Appends `events` records to a new log in `dir` in full batches and closes it.
pub fn append(dir: &Path, events: u64, payloads: &Payloads) -> Result<Appended, Failure> {
    let (mut log, _) = Log::open(dir, log_config()).map_err(Failure::storage("opening the log"))?;
    let start = Instant::now();
    for seq in 0..events {
        log.append(TS_NS_BASE + seq, payloads.of(seq))
            .map_err(Failure::storage("append"))?;
    }
    log.flush(false).map_err(Failure::storage("flush"))?;
    log.close().map_err(Failure::storage("close"))?;
    Ok(Appended {
        bytes: records_bytes(events, payloads.payload_bytes),
        elapsed: start.elapsed(),
        file_bytes: dir_bytes(dir)?,
    })
}

/// The `.dat` files of the log in `dir`, in sequence order.
pub fn dat_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let inventory = net_storage::segment::inventory(dir);
    let bases = inventory
        .map_err(Failure::storage("listing a log's segments"))?
        .dats;
    Ok(bases
        .into_iter()
        .map(|base| net_storage::segment::dat_path(dir, base))
        .collect())
}

fn dir_bytes(dir: &Path) -> Result<u64, Failure> {
    let context = || format!("listing {}", dir.display());
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(Failure::io(context()))? {
        let metadata = entry.and_then(|e| e.metadata());
        total += metadata.map_err(Failure::io(context()))?.len();
    }
    Ok(total)
}

/// What one sequential read of a log measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Read {
    pub events: u64,
    /// Record bytes read (headers and payloads).
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Read {
    /// Decimal gigabytes per second.
    pub fn gb_per_s(&self) -> f64 {
        crate::report::per_s(self.bytes, self.elapsed) / 1e9
    }
}

/// Reads every record of `log` from its first, comparing each payload with the one appended
/// and checking that exactly `events` records come back in sequence.
pub fn read(log: &mut Log, events: u64, payloads: &Payloads) -> Result<Read, Failure> {
    let start = Instant::now();
    let mut next = log.first_seq();
    let mut bytes = 0u64;
    loop {
        let records = log
            .read(next, READ_EVENTS_MAX, READ_BYTES_MAX)
            .map_err(Failure::storage("read"))?;
        if records.is_empty() {
            break;
        }
        for record in &records {
            if record.seq != next || record.payload != payloads.of(record.seq) {
                let what = format!("record {} read back as seq {}", next, record.seq);
                return Err(Failure::Verification(format!(
                    "{what}, or its payload differs"
                )));
            }
            bytes += record_bytes(record.payload.len()) as u64;
            next += 1;
        }
    }
    let elapsed = start.elapsed();
    if next - log.first_seq() != events {
        let read = next - log.first_seq();
        let msg = format!("read {read} records back, {events} were appended");
        return Err(Failure::Verification(msg));
    }
    Ok(Read {
        events,
        bytes,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_config_is_the_bus_default_shard_sizing() {
        let c = log_config();
        assert_eq!(c.segment_bytes, 128 << 20);
        assert_eq!((c.batch_bytes_max, c.batch_events_max), (4 << 20, 32_768));
        assert_eq!(records_bytes(5_000_000, 100), 660_000_000);
    }

    #[test]
    fn payloads_cycle_and_differ() {
        let p = Payloads::new(40);
        assert_eq!(p.of(3), p.of(3 + PAYLOADS_DISTINCT as u64));
        assert_ne!(p.of(3), p.of(4));
        assert_eq!(p.of(PAYLOADS_DISTINCT as u64 - 1).len(), 40);
    }

    #[test]
    fn appended_records_read_back_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let payloads = Payloads::new(100);
        let appended = append(dir.path(), 70_000, &payloads).unwrap();
        assert_eq!(appended.bytes, 70_000 * 132);
        assert!(
            appended.file_bytes > appended.bytes,
            "plus .idx and headers"
        );
        let files = dat_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "one segment");
        let dat_bytes = std::fs::metadata(&files[0]).unwrap().len();
        let header = net_storage::BLOCK_BYTES as u64;
        assert_eq!(dat_bytes, header + appended.bytes, "cut at the data end");
        let (mut log, _) = Log::open(dir.path(), log_config()).unwrap();
        let read = read(&mut log, 70_000, &payloads).unwrap();
        assert_eq!((read.events, read.bytes), (70_000, appended.bytes));
        assert!(super::read(&mut log, 69_999, &payloads).is_err());
    }
}
