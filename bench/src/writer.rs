//! `net-bench write`: a writer for crash harnesses outside this repository. It starts a bus on
//! `--data-dir` (the embedded default config, with `--fsync`), sends `--events` events from
//! `--producers` threads (payloads from `payload`: deterministic, different for every
//! (producer, counter)), as fast as the bus takes them or paced at `--rate` events/s (so that
//! a kill can land mid-run), and with `--print-acks` prints one line per event acknowledged as
//! durable, `{"shard":S,"seq":N,"crc32":C}` (C: the IEEE CRC-32 of the payload), flushed after
//! every poll. When all events are acknowledged it shuts the bus down and exits 0.
//!
//! A harness may SIGKILL it at any moment, then run `net-admin verify D` and `net-admin dump
//! D`: every acknowledged event must be there, intact. A reopened data dir continues its
//! sequences, and the read cursor starts at each shard's end as found at start-up, so only this
//! run's events are acknowledged.
//!
//! What counts as durable: the main thread polls from that cursor and, before printing a poll's
//! events, calls `Bus::wait_durable` on them. Under `every_batch` that returns at once, since a
//! poll only serves records whose batch write and linked `fdatasync` both completed; under
//! `interval_ms` it asks the shards to sync now and waits for it; under `never` durable means
//! written to the file, which is what a poll serves. (Calling `Bus::flush` before each poll
//! would not do: an event sent after the flush but written before the poll would be served,
//! and printed, before any sync covered it.)

use crate::feed::{self, Producers};
use crate::pace::Pace;
use crate::workload::Workload;
use crate::{Failure, parse_payload_bytes, parse_positive, readback};
use net_engine::{Bus, Config, Cursor, Event, EventId, FsyncPolicy, Seq, monotonic_ns};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How long a poll's events may take to become durable before the writer gives up.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Time the bus gets to drain at shutdown; everything is durable by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Buffer of the ack stream; it is flushed after every poll in any case.
const ACK_BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bus's data directory (created if missing; an existing one is continued).
    #[arg(long)]
    data_dir: PathBuf,
    /// When written events are made durable: never, every_batch or interval_ms:N.
    #[arg(long, default_value = "every_batch", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Events to send, over all producers.
    #[arg(long, value_parser = parse_positive)]
    events: u64,
    /// Producer threads.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    producers: u64,
    /// Bytes per payload (at least 12: the event's identity).
    #[arg(long, default_value_t = 100, value_parser = parse_payload_bytes)]
    payload_bytes: usize,
    /// Send at this many events/s over all producers (`pace`'s schedule) instead of as fast
    /// as the bus takes them, so that a kill lands mid-run.
    #[arg(long, value_parser = parse_positive)]
    rate: Option<u64>,
    /// Print one JSON line per event acknowledged as durable to stdout.
    #[arg(long)]
    print_acks: bool,
}

/// Clap parser for `--fsync`: `never`, `every_batch` or `interval_ms:N` with N at least 1.
pub fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    match text {
        "never" => Ok(FsyncPolicy::Never),
        "every_batch" => Ok(FsyncPolicy::EveryBatch),
        _ => match text.strip_prefix("interval_ms:") {
            Some(ms) => parse_positive(ms).map(FsyncPolicy::IntervalMs),
            None => Err("expected never, every_batch or interval_ms:N".to_owned()),
        },
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let mut config = Config {
        data_dir: args.data_dir.clone(),
        ..Config::default()
    };
    config.storage.fsync = args.fsync;
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))?;
    // Before any producer exists: where this run's events will start on each shard.
    let mut cursor = Cursor::start();
    for shard in bus.stats().shards {
        cursor
            .set(shard.shard, Seq(shard.persisted_end))
            .map_err(|e| Failure::engine("positioning the cursor", e))?;
    }
    let work = Workload {
        events: args.events,
        payload_bytes: args.payload_bytes,
        shards: bus.shards(),
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
    };
    match args.rate {
        None => {
            let producers = feed::spawn_all(&bus, &work, |index, producer, line, failed| {
                feed::spawn_producer(index, producer, work, line, failed)
            })?;
            acknowledge_all(&bus, cursor, args, producers, None)?;
        }
        Some(rate) => {
            let pace = Pace::new(rate, work.producers);
            let producers = feed::spawn_all(&bus, &work, |index, producer, line, failed| {
                feed::spawn_paced_producer(index, producer, work, pace.clone(), line, failed)
            })?;
            acknowledge_all(&bus, cursor, args, producers, Some(&pace))?;
        }
    }
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    eprintln!(
        "net-bench write: {} events acknowledged durable in {}",
        args.events,
        args.data_dir.display()
    );
    Ok(())
}

/// Releases the producers (starting `pace` first, if paced), acknowledges every event they
/// send as it becomes durable, and joins them.
fn acknowledge_all<T>(
    bus: &Bus,
    cursor: Cursor,
    args: &Args,
    producers: Producers<T>,
    pace: Option<&Pace>,
) -> Result<(), Failure> {
    let Producers {
        threads,
        start_line,
        ..
    } = producers;
    start_line.wait_ready();
    if let Some(pace) = pace {
        pace.start(monotonic_ns());
    }
    start_line.release();
    let mut acks = args
        .print_acks
        .then(|| BufWriter::with_capacity(ACK_BUFFER_BYTES, io::stdout().lock()));
    let acknowledged = readback::read_from(bus, cursor, args.events, |events| {
        acknowledge(bus, events, acks.as_mut())
    });
    if let Err(failure) = acknowledged {
        return Err(feed::finished_error(threads).unwrap_or(failure));
    }
    for thread in threads {
        feed::join(thread)?;
    }
    Ok(())
}

/// Waits until `events` (one poll's) are durable, then prints and flushes their acks.
fn acknowledge(bus: &Bus, events: &[Event], acks: Option<&mut impl Write>) -> Result<(), Failure> {
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    bus.wait_durable(&ids, DURABLE_TIMEOUT)
        .map_err(|e| Failure::engine("waiting until polled events are durable", e))?;
    let Some(out) = acks else {
        return Ok(());
    };
    let written = events
        .iter()
        .try_for_each(|e| write_ack(out, e.id, crc32fast::hash(&e.payload)))
        .and_then(|()| out.flush());
    written.map_err(Failure::io("printing acknowledgements"))
}

/// One acknowledgement line: `{"shard":S,"seq":N,"crc32":C}`.
fn write_ack(out: &mut impl Write, id: EventId, crc32: u32) -> io::Result<()> {
    writeln!(
        out,
        r#"{{"shard":{},"seq":{},"crc32":{crc32}}}"#,
        id.shard.0, id.seq.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use net_engine::ShardId;

    #[test]
    fn fsync_policies_parse_as_the_config_names_them() {
        assert_eq!(parse_fsync("never"), Ok(FsyncPolicy::Never));
        assert_eq!(parse_fsync("every_batch"), Ok(FsyncPolicy::EveryBatch));
        assert_eq!(parse_fsync("interval_ms:5"), Ok(FsyncPolicy::IntervalMs(5)));
        assert!(parse_fsync("interval_ms:0").is_err());
        assert!(parse_fsync("interval_ms:").is_err());
        assert!(parse_fsync("always").is_err());
    }

    #[test]
    fn ack_lines_are_one_json_object_each() {
        let mut out = Vec::new();
        let id = EventId {
            shard: ShardId(3),
            seq: Seq(42),
        };
        write_ack(&mut out, id, u32::MAX).unwrap();
        write_ack(&mut out, id, 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"shard":3,"seq":42,"crc32":4294967295}"#);
        let parsed: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(parsed["crc32"], 0);
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the IEEE check value"
        );
    }
}
