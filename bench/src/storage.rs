//! `net-bench storage`: RedEX and net's durable path against the raw disk, all in one run on
//! one file system (by default a scratch directory under /var/tmp, which is on the disk, where
//! /tmp may be tmpfs).
//!
//! 1. Append throughput: the log appends `--events` records from one thread (`redex`), and
//!    the raw baseline writes the same number of bytes with `O_DIRECT` `pwrite`s of the log's
//!    batch size (`disk`). They alternate, raw first, `APPEND_RUNS` times each, and the
//!    medians are compared: alternating spreads the shared machine's drift over both.
//! 2. Sequential read: the last appended log is reopened and read back in full, first from the
//!    disk (page cache dropped, when running as root) and then warm, against an `O_DIRECT`
//!    read of the raw baseline's file, and against a cold `O_DIRECT` read of the log's own
//!    `.dat` files in the reader's chunk size (`SEGMENT_READ_BYTES`).
//! 3. Durable ingest (`durable`): a bus under `every_batch`; closed-loop durable events/s,
//!    paced CO-corrected ingest-to-durable latency, and its read-back through `Bus::poll`,
//!    against the latency of one raw 4 KiB write + `fdatasync` measured just before. Once the
//!    bus is shut down, its shards' `.dat` files (those the read-back polled) are read cold
//!    with `O_DIRECT` in `SEGMENT_READ_BYTES` reads: the raw side of `poll_raw_ratio`.
//!
//! The raw reads of segment files read whole files (each segment's 4 KiB header too), the log
//! and the bus return record bytes: both byte counts are reported, and the ratios are of GB/s.
//!
//! Ratios (net / raw) are the figures to quote; the disks here are shared and virtual.

use crate::disk::{self, Transfer};
use crate::durable::{self, Durable};
use crate::redex::{self, Appended, Payloads, Read};
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::{Failure, archive, pace, parse_payload_bytes, parse_positive, progress};
use hdrhistogram::Histogram;
use net_storage::Log;
use std::path::{Path, PathBuf};

/// Where the scratch directory goes without `--dir`: on the disk, not tmpfs.
pub const DIR_DEFAULT: &str = "/var/tmp";

/// Runs of each side of the append comparison; the medians are compared.
const APPEND_RUNS: usize = 3;

/// Bytes of each raw read of a log's own segment files: the chunk the log's reader reads, so
/// that both sides read the same files in reads of the same size.
const SEGMENT_READ_BYTES: usize = net_storage::READ_CHUNK_BYTES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records the RedEX log appends (the raw baseline writes as many bytes).
    #[arg(long, default_value_t = 5_000_000, value_parser = parse_positive)]
    events: u64,
    /// Bytes per payload (at least 12: the event's identity).
    #[arg(long, default_value_t = 100, value_parser = parse_payload_bytes)]
    payload_bytes: usize,
    /// Producer threads of the durable phases.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    producers: u64,
    /// Events of each durable phase (closed loop, then paced).
    #[arg(long, default_value_t = 2_000_000, value_parser = parse_positive)]
    durable_events: u64,
    /// Paced rate of the durable latency phase, events/s over all producers.
    #[arg(long, default_value_t = pace::RATE_PER_S_DEFAULT, value_parser = parse_positive)]
    durable_rate: u64,
    /// Samples of the raw 4 KiB write + fdatasync baseline.
    #[arg(long, default_value_t = 2_000, value_parser = parse_positive)]
    sync_samples: u64,
    /// Directory under which the run makes its scratch directory (default /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

/// Append and read figures of the log and the raw baseline.
#[derive(Debug)]
struct Sequential {
    raw: Vec<Transfer>,
    log: Vec<Appended>,
    /// The raw baseline's own file, read in the log's batch size (not the log's files).
    raw_read: Transfer,
    /// The last appended log's `.dat` files, read raw and cold.
    raw_log_files: SegmentFiles,
    cold: Read,
    warm: Read,
    cache_dropped: bool,
}

/// A cold raw `O_DIRECT` read of a log's (or a bus's) segment files.
#[derive(Debug)]
struct SegmentFiles {
    files: usize,
    read: Transfer,
    /// Whether the page cache was dropped just before.
    cache_dropped: bool,
}

impl SegmentFiles {
    /// Drops the page cache, then reads `files` one after the other with `O_DIRECT` in
    /// `SEGMENT_READ_BYTES` reads (`what` names them in errors).
    fn read_cold(files: &[PathBuf], what: &str) -> Result<SegmentFiles, Failure> {
        if files.is_empty() {
            return Err(Failure::Storage(format!("{what}: no .dat file to read")));
        }
        let cache_dropped = disk::drop_page_cache();
        let read = disk::read_files_sequential(files, SEGMENT_READ_BYTES);
        Ok(SegmentFiles {
            files: files.len(),
            read: read.map_err(Failure::io(format!("raw O_DIRECT read of {what}")))?,
            cache_dropped,
        })
    }

    fn gb_per_s(&self) -> f64 {
        self.read.gb_per_s()
    }
}

impl Sequential {
    fn raw_mb_per_s(&self) -> f64 {
        median(self.raw.iter().map(Transfer::mb_per_s).collect())
    }

    fn log_mb_per_s(&self) -> f64 {
        median(self.log.iter().map(Appended::mb_per_s).collect())
    }

    /// Bytes the log left on disk per record byte appended (`.idx`, segment headers).
    fn amplification(&self) -> f64 {
        let last = self.log.last().expect("at least one append run");
        last.file_bytes as f64 / last.bytes as f64
    }
}

/// The durable phases and the raw read of the files their read-back polled.
#[derive(Debug)]
struct BusRun {
    durable: Durable,
    raw_files: SegmentFiles,
}

/// The raw sync baseline.
#[derive(Debug)]
struct Sync {
    latency: Histogram<u64>,
    direct: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DIR_DEFAULT));
    let scratch = crate::scratch_dir(Some(&base), "storage")?;
    let payloads = Payloads::new(args.payload_bytes);
    let sequential = progress::during("RedEX and raw disk: append and read", || {
        measure_sequential(args, scratch.path(), &payloads)
    })?;
    let sync_path = scratch.path().join("sync.dat");
    let (latency, direct) = progress::during("raw disk: write + fdatasync", || {
        disk::sync_latency(&sync_path, args.sync_samples)
    })
    .map_err(Failure::io("raw write + fdatasync baseline"))?;
    remove_file(&sync_path)?;
    let plan = durable::Plan {
        events: args.durable_events,
        payload_bytes: args.payload_bytes,
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
        rate_per_s: args.durable_rate,
    };
    let bus_dir = scratch.path().join("bus");
    let durable = durable::measure(&bus_dir, plan)?;
    // After the shutdown: every shard closed its log, which cut the active segment's reserved
    // tail, so the files hold the polled records and their segments' headers, nothing more.
    let bus_files = durable::dat_files(&bus_dir)?;
    let raw_poll_files = SegmentFiles::read_cold(&bus_files, "the bus's segment files")?;
    scratch
        .close()
        .map_err(Failure::io("removing the scratch directory"))?;
    let bus = BusRun {
        durable,
        raw_files: raw_poll_files,
    };
    archive::latency(
        "durable, paced",
        "net (every_batch)",
        &bus.durable.paced_latency,
    );
    archive::latency("durable, paced", "write + fdatasync", &latency);
    archive::latency(
        "durable, closed loop",
        "net (every_batch)",
        &bus.durable.saturated,
    );
    print_report(args, &base, &sequential, &Sync { latency, direct }, &bus);
    Ok(())
}

/// Step 1 and 2: alternating append runs, then the reads of the last ones.
fn measure_sequential(args: &Args, dir: &Path, payloads: &Payloads) -> Result<Sequential, Failure> {
    let block = redex::log_config().batch_bytes_max;
    let total = redex::records_bytes(args.events, args.payload_bytes);
    let raw_path = dir.join("raw.dat");
    let (mut raw, mut log) = (Vec::new(), Vec::new());
    let mut log_dir = PathBuf::new();
    for run in 0..APPEND_RUNS {
        if run > 0 {
            remove_file(&raw_path)?;
            std::fs::remove_dir_all(&log_dir).map_err(Failure::io("removing a log"))?;
        }
        let written = disk::write_sequential(&raw_path, total, block);
        raw.push(written.map_err(Failure::io("raw O_DIRECT write baseline"))?);
        log_dir = dir.join(format!("log-{run}"));
        log.push(redex::append(&log_dir, args.events, payloads)?);
    }
    let raw_read = disk::read_sequential(&raw_path, block)
        .map_err(Failure::io("raw O_DIRECT read baseline"))?;
    remove_file(&raw_path)?;
    // Before reopening: opening reserves the active segment's full size again, and the raw
    // read would then read its unwritten tail as well.
    let log_files = redex::dat_files(&log_dir)?;
    let raw_log_files = SegmentFiles::read_cold(&log_files, "the log's segment files")?;
    // Opening scans the active segment: the cache is dropped after it, before the read.
    let opened = Log::open(&log_dir, redex::log_config());
    let (mut opened, _) = opened.map_err(Failure::storage("reopening the log"))?;
    let cache_dropped = disk::drop_page_cache();
    let cold = redex::read(&mut opened, args.events, payloads)?;
    let warm = redex::read(&mut opened, args.events, payloads)?;
    drop(opened);
    std::fs::remove_dir_all(&log_dir).map_err(Failure::io("removing a log"))?;
    Ok(Sequential {
        raw,
        log,
        raw_read,
        raw_log_files,
        cold,
        warm,
        cache_dropped,
    })
}

fn remove_file(path: &Path) -> Result<(), Failure> {
    std::fs::remove_file(path).map_err(Failure::io(format!("removing {}", path.display())))
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "a median of something");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// `net / raw`, or 0 when the raw side measured nothing.
fn ratio(net: f64, raw: f64) -> f64 {
    if raw > 0.0 { net / raw } else { 0.0 }
}

fn print_report(args: &Args, base: &Path, seq: &Sequential, sync: &Sync, bus: &BusRun) {
    let command = command(args);
    print!("{}", throughput_table(args, base, seq, bus).render());
    print!("{}", latency_table(args, sync, &bus.durable).render());
    let (paced, raw_sync) = (paced(&bus.durable), Percentiles::from_ns(&sync.latency));
    println!(
        "  durable p99 / raw write+fdatasync p99: {:.2}x",
        ratio(paced.p99_us, raw_sync.p99_us)
    );
    for line in notes(args, seq, sync, bus) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    archive::emit(json(args, seq, sync, bus, command), args.json);
}

fn throughput_table(args: &Args, base: &Path, seq: &Sequential, bus: &BusRun) -> Table {
    let title = format!(
        "storage: {} records x {} B against the raw disk, under {}",
        report::format_count(args.events as f64),
        args.payload_bytes,
        base.display()
    );
    let mut t = Table::new(&title, &["net", "raw disk", "net / raw"]);
    sequential_rows(&mut t, seq);
    bus_rows(&mut t, args, bus);
    t
}

/// A figure of net's alone: no baseline, no ratio.
fn alone(net: String) -> Vec<String> {
    vec![net, "-".to_owned(), "-".to_owned()]
}

fn sequential_rows(t: &mut Table, seq: &Sequential) {
    let runs = |v: Vec<f64>| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let dropped = if seq.cache_dropped {
        "dropped"
    } else {
        "NOT dropped"
    };
    t.heading(&format!(
        "append, one thread, median of {APPEND_RUNS} alternating runs (raw first):"
    ))
    .row(
        "append MB/s",
        three(seq.log_mb_per_s(), seq.raw_mb_per_s(), 1),
    )
    .row(
        "append MB/s, each run",
        vec![
            runs(seq.log.iter().map(Appended::mb_per_s).collect()),
            runs(seq.raw.iter().map(Transfer::mb_per_s).collect()),
            "-".to_owned(),
        ],
    )
    .row(
        "bytes on disk / record bytes",
        alone(format!("{:.3}", seq.amplification())),
    )
    .heading(&format!("sequential read, page cache {dropped}:"))
    .row(
        &format!(
            "log read GB/s, cold (raw: raw.dat, {} MiB reads)",
            redex::log_config().batch_bytes_max >> 20
        ),
        three(seq.cold.gb_per_s(), seq.raw_read.gb_per_s(), 2),
    )
    .row(
        &format!(
            "log read GB/s, cold (raw: its {} .dat files, {} MiB reads)",
            seq.raw_log_files.files,
            SEGMENT_READ_BYTES >> 20
        ),
        three(seq.cold.gb_per_s(), seq.raw_log_files.gb_per_s(), 2),
    )
    .row(
        "  bytes read (net: records, raw: whole files)",
        bytes_read(seq.cold.bytes, seq.raw_log_files.read.bytes),
    )
    .row(
        "log read GB/s, warm",
        alone(format!("{:.2}", seq.warm.gb_per_s())),
    );
}

/// The bytes each side of a read moved, and net's share of the raw side's.
fn bytes_read(net: u64, raw: u64) -> Vec<String> {
    vec![
        report::format_count(net as f64),
        report::format_count(raw as f64),
        format!("{:.3}", ratio(net as f64, raw as f64)),
    ]
}

fn bus_rows(t: &mut Table, args: &Args, run: &BusRun) {
    let (bus, raw) = (&run.durable, &run.raw_files);
    t.heading(&format!(
        "bus, fsync every_batch, {} shards, {} producers:",
        bus.shards, args.producers
    ))
    .row(
        "durable events/s, closed loop",
        alone(report::format_count(bus.closed_events_per_s())),
    )
    .row(
        "durable events/s, paced",
        alone(report::format_count(bus.paced_events_per_s())),
    )
    .row(
        "paced events per fdatasync",
        alone(format!("{:.0}", bus.paced_events_per_batch())),
    )
    .row(
        "paced batch period per shard (µs)",
        alone(format!("{:.0}", bus.paced_batch_period_us())),
    )
    .row(
        &format!(
            "bus poll GB/s, cold (raw: its {} .dat files, {} MiB reads)",
            raw.files,
            SEGMENT_READ_BYTES >> 20
        ),
        three(bus.poll_gb_per_s(), raw.gb_per_s(), 2),
    )
    .row(
        "  the same over the read-back's wall time",
        three(bus.poll_wall_gb_per_s(), raw.gb_per_s(), 2),
    )
    .row(
        "  bytes read (net: records, raw: whole files)",
        bytes_read(bus.poll_bytes(), raw.read.bytes),
    );
}

/// A net figure, the raw one and their ratio, with `decimals` places.
fn three(net: f64, raw: f64, decimals: usize) -> Vec<String> {
    vec![
        format!("{net:.decimals$}"),
        format!("{raw:.decimals$}"),
        format!("{:.3}", ratio(net, raw)),
    ]
}

fn latency_table(args: &Args, sync: &Sync, bus: &Durable) -> Table {
    let title = format!(
        "ingest -> durable latency: paced at {}/s (CO-corrected), closed loop, and one raw \
         4 KiB write + fdatasync",
        report::format_count(args.durable_rate as f64)
    );
    let columns = [
        paced(bus),
        Percentiles::from_ns(&bus.saturated),
        Percentiles::from_ns(&sync.latency),
    ];
    let mut t = Table::new(&title, &["paced", "closed loop", "raw sync"]);
    t.latency_rows("latency", &columns).row(
        "samples",
        columns.iter().map(|p| p.samples.to_string()).collect(),
    );
    t
}

fn paced(bus: &Durable) -> Percentiles {
    Percentiles::from_ns(&bus.paced_latency)
}

/// Whether every drop of the page cache before a cold read succeeded.
fn all_cache_dropped(seq: &Sequential, bus: &BusRun) -> bool {
    seq.cache_dropped
        && seq.raw_log_files.cache_dropped
        && bus.durable.cache_dropped
        && bus.raw_files.cache_dropped
}

/// Whether every raw baseline bypassed the page cache.
fn all_direct(seq: &Sequential, sync: &Sync, bus: &BusRun) -> bool {
    seq.raw_read.direct && seq.raw_log_files.read.direct && bus.raw_files.read.direct && sync.direct
}

/// Lines under the tables: anything that weakens a figure.
fn notes(args: &Args, seq: &Sequential, sync: &Sync, run: &BusRun) -> Vec<String> {
    let bus = &run.durable;
    let mut notes = Vec::new();
    if !all_cache_dropped(seq, run) {
        notes.push(
            "warning: the page cache could not be dropped (not root?): cold reads may \
                    come from memory"
                .to_owned(),
        );
    }
    if !all_direct(seq, sync, run) {
        notes.push("warning: the file system refused O_DIRECT: raw baselines are buffered".into());
    }
    let closed = bus.closed_events_per_s();
    let share = args.durable_rate as f64 * 100.0 / closed.max(1.0);
    if share >= pace::RATE_SHARE_OF_BASELINE_MAX_PCT as f64 {
        notes.push(format!(
            "warning: the paced rate is {share:.0}% of the closed loop's {} events/s: the paced \
             latency includes queueing",
            report::format_count(closed)
        ));
    }
    let lag = Percentiles::from_ns(&bus.paced.lag);
    notes.push(format!(
        "paced send lag p99 {} µs, max {} µs (how late producers started sends)",
        report::format_us(lag.p99_us),
        report::format_us(lag.max_us)
    ));
    notes
}

/// The JSON line. `poll_gb_s`/`poll_ratio` are the standalone log's cold read against
/// `raw_read_gb_s`, a read of the raw append baseline's own file (other bytes, in 4 MiB
/// reads), kept as they were; `log_read_raw_ratio` compares the same log read with a raw read
/// of that log's own `.dat` files (`raw_log_files_gb_s`), and `poll_raw_ratio` the bus's
/// `Bus::poll` read-back (`bus_poll_gb_s`) with a raw read of the bus's own `.dat` files
/// (`raw_poll_files_gb_s`). Net's side counts record bytes, the raw side whole files
/// (segment headers too): the `*_bytes` fields give both. The log read's time includes its
/// byte-for-byte check of every payload; the bus's counts only the time inside `Bus::poll`
/// (`bus_poll_wall_gb_s` counts the read-back's checks and drops between polls too).
fn json(args: &Args, seq: &Sequential, sync: &Sync, run: &BusRun, command: String) -> String {
    let bus = &run.durable;
    let (paced, raw_sync) = (paced(bus), Percentiles::from_ns(&sync.latency));
    let raw_gb = seq.raw_read.gb_per_s();
    let (log_files, poll_files) = (&seq.raw_log_files, &run.raw_files);
    let mut json = JsonLine::default();
    json.field("scenario", "storage")
        .field("events", args.events)
        .field("payload_bytes", args.payload_bytes)
        .field("producers", args.producers)
        .field("shards", bus.shards)
        .field("append_mb_s", report::round_to(seq.log_mb_per_s(), 1))
        .field("raw_mb_s", report::round_to(seq.raw_mb_per_s(), 1))
        .field(
            "append_ratio",
            report::round_to(ratio(seq.log_mb_per_s(), seq.raw_mb_per_s()), 3),
        )
        .field("append_runs", APPEND_RUNS)
        .field(
            "append_amplification",
            report::round_to(seq.amplification(), 3),
        )
        .field("durable_events", args.durable_events)
        .field(
            "durable_events_per_s",
            report::round_to(bus.closed_events_per_s(), 0),
        )
        .field(
            "durable_paced_events_per_s",
            report::round_to(bus.paced_events_per_s(), 0),
        )
        .field("durable_rate_per_s", args.durable_rate)
        .field("durable_batches", bus.closed_batches)
        .field("durable_paced_batches", bus.paced_batches)
        .field(
            "durable_paced_batch_period_us",
            report::round_to(bus.paced_batch_period_us(), 1),
        )
        .latency("durable_", &paced)
        .latency("durable_saturated_", &Percentiles::from_ns(&bus.saturated))
        .latency("raw_fsync_", &raw_sync)
        .field(
            "durable_p99_ratio",
            report::round_to(ratio(paced.p99_us, raw_sync.p99_us), 3),
        )
        .field("poll_gb_s", report::round_to(seq.cold.gb_per_s(), 3))
        .field("poll_warm_gb_s", report::round_to(seq.warm.gb_per_s(), 3))
        .field("raw_read_gb_s", report::round_to(raw_gb, 3))
        .field(
            "poll_ratio",
            report::round_to(ratio(seq.cold.gb_per_s(), raw_gb), 3),
        )
        .field("bus_poll_gb_s", report::round_to(bus.poll_gb_per_s(), 3))
        .field(
            "bus_poll_wall_gb_s",
            report::round_to(bus.poll_wall_gb_per_s(), 3),
        )
        .field("bus_poll_bytes", bus.poll_bytes())
        .field(
            "raw_poll_files_gb_s",
            report::round_to(poll_files.gb_per_s(), 3),
        )
        .field("raw_poll_files_bytes", poll_files.read.bytes)
        .field("raw_poll_files", poll_files.files)
        .field(
            "poll_raw_ratio",
            report::round_to(ratio(bus.poll_gb_per_s(), poll_files.gb_per_s()), 3),
        )
        .field("log_read_bytes", seq.cold.bytes)
        .field(
            "raw_log_files_gb_s",
            report::round_to(log_files.gb_per_s(), 3),
        )
        .field("raw_log_files_bytes", log_files.read.bytes)
        .field(
            "log_read_raw_ratio",
            report::round_to(ratio(seq.cold.gb_per_s(), log_files.gb_per_s()), 3),
        )
        .field("cache_dropped", all_cache_dropped(seq, run))
        .field("direct_io", all_direct(seq, sync, run))
        .field("command", command);
    json.render()
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("events", args.events.to_string()),
        ("payload-bytes", args.payload_bytes.to_string()),
        ("producers", args.producers.to_string()),
        ("durable-events", args.durable_events.to_string()),
        ("durable-rate", args.durable_rate.to_string()),
        ("sync-samples", args.sync_samples.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("storage", &flags, args.dir.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn ratios_guard_against_an_empty_baseline() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert_eq!(ratio(3.0, 0.0), 0.0);
        assert_eq!(three(1.0, 2.0, 1), vec!["1.0", "2.0", "0.500"]);
        assert_eq!(bytes_read(1_000, 2_000), vec!["1,000", "2,000", "0.500"]);
    }

    #[test]
    fn reproduce_command_spells_out_every_default() {
        let args: Args = crate::parse_args("storage", &["--json"]);
        assert_eq!(
            command(&args),
            "cargo run --release -p net-bench -- storage --events 5000000 --payload-bytes 100 \
             --producers 2 --durable-events 2000000 --durable-rate 1000000 --sync-samples 2000 \
             --json"
        );
    }
}
