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
//!    read of the raw baseline's file.
//! 3. Durable ingest (`durable`): a bus under `every_batch`; closed-loop durable events/s,
//!    paced CO-corrected ingest-to-durable latency, and its read-back through `Bus::poll`,
//!    against the latency of one raw 4 KiB write + `fdatasync` measured just before.
//!
//! Ratios (net / raw) are the figures to quote; the disks here are shared and virtual.

use crate::disk::{self, Transfer};
use crate::durable::{self, Durable};
use crate::redex::{self, Appended, Payloads, Read};
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::{Failure, pace, parse_payload_bytes, parse_positive};
use hdrhistogram::Histogram;
use net_storage::Log;
use std::path::{Path, PathBuf};

/// Where the scratch directory goes without `--dir`: on the disk, not tmpfs.
pub const DIR_DEFAULT: &str = "/var/tmp";

/// Runs of each side of the append comparison; the medians are compared.
const APPEND_RUNS: usize = 3;

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
    raw_read: Transfer,
    cold: Read,
    warm: Read,
    cache_dropped: bool,
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
    let sequential = measure_sequential(args, scratch.path(), &payloads)?;
    let sync_path = scratch.path().join("sync.dat");
    let (latency, direct) = disk::sync_latency(&sync_path, args.sync_samples)
        .map_err(Failure::io("raw write + fdatasync baseline"))?;
    remove_file(&sync_path)?;
    let plan = durable::Plan {
        events: args.durable_events,
        payload_bytes: args.payload_bytes,
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
        rate_per_s: args.durable_rate,
    };
    let durable = durable::measure(&scratch.path().join("bus"), plan)?;
    scratch
        .close()
        .map_err(Failure::io("removing the scratch directory"))?;
    print_report(
        args,
        &base,
        &sequential,
        &Sync { latency, direct },
        &durable,
    );
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

fn print_report(args: &Args, base: &Path, seq: &Sequential, sync: &Sync, bus: &Durable) {
    let command = command(args);
    print!("{}", throughput_table(args, base, seq, bus).render());
    print!("{}", latency_table(args, sync, bus).render());
    let (paced, raw_sync) = (paced(bus), Percentiles::from_ns(&sync.latency));
    println!(
        "  durable p99 / raw write+fdatasync p99: {:.2}x",
        ratio(paced.p99_us, raw_sync.p99_us)
    );
    for line in notes(args, seq, sync, bus) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    if args.json {
        println!("{}", json(args, seq, sync, bus, command));
    }
}

fn throughput_table(args: &Args, base: &Path, seq: &Sequential, bus: &Durable) -> Table {
    let title = format!(
        "storage: {} records x {} B against the raw disk, under {}",
        report::format_count(args.events as f64),
        args.payload_bytes,
        base.display()
    );
    let mut t = Table::new(&title, &["net", "raw disk", "net / raw"]);
    sequential_rows(&mut t, seq);
    bus_rows(&mut t, args, bus, seq.raw_read.mb_per_s() / 1e3);
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
        "log read GB/s, cold",
        three(seq.cold.gb_per_s(), seq.raw_read.mb_per_s() / 1e3, 2),
    )
    .row(
        "log read GB/s, warm",
        alone(format!("{:.2}", seq.warm.gb_per_s())),
    );
}

fn bus_rows(t: &mut Table, args: &Args, bus: &Durable, raw_read_gb_per_s: f64) {
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
        "bus poll GB/s, cold",
        three(bus.poll_gb_per_s(), raw_read_gb_per_s, 2),
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

/// Lines under the tables: anything that weakens a figure.
fn notes(args: &Args, seq: &Sequential, sync: &Sync, bus: &Durable) -> Vec<String> {
    let mut notes = Vec::new();
    if !seq.cache_dropped || !bus.cache_dropped {
        notes.push(
            "warning: the page cache could not be dropped (not root?): cold reads may \
                    come from memory"
                .to_owned(),
        );
    }
    if !seq.raw_read.direct || !sync.direct {
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

fn json(args: &Args, seq: &Sequential, sync: &Sync, bus: &Durable, command: String) -> String {
    let (paced, raw_sync) = (paced(bus), Percentiles::from_ns(&sync.latency));
    let raw_gb = seq.raw_read.mb_per_s() / 1e3;
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
        .field("cache_dropped", seq.cache_dropped && bus.cache_dropped)
        .field("direct_io", seq.raw_read.direct && sync.direct)
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
