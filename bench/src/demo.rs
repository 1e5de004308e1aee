//! `net-bench demo`: the embedded default end to end. Start a bus on `Config::default()`
//! (every available core, pinned), ingest events from several producer threads, wait until
//! they are persisted, read every one back by cursor and check it against the ledger, shut
//! down and require a lossless report. Any mismatch fails the run with a non-zero exit.

use crate::feed::{self, Window};
use crate::ledger::Ledger;
use crate::readback::{self, ReadBack};
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::workload::Workload;
use crate::{Failure, archive, parse_payload_bytes, parse_positive, progress};
use net_engine::{Bus, Config};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time the bus gets to drain at shutdown; everything is persisted by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events to ingest and read back.
    #[arg(long, default_value_t = 10_000_000, value_parser = parse_positive)]
    events: u64,
    /// Bytes per payload (at least 12: the event's identity).
    #[arg(long, default_value_t = 100, value_parser = parse_payload_bytes)]
    payload_bytes: usize,
    /// Producer threads.
    #[arg(long, default_value_t = 4, value_parser = parse_positive)]
    producers: u64,
    /// Shards; by default the embedded default (every CPU this process may run on).
    #[arg(long, value_parser = parse_positive)]
    shards: Option<u64>,
    /// Directory for the bus's data (a temporary directory is made inside it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let dir = crate::scratch_dir(args.dir.as_deref(), "demo")?;
    let bus = start(args, dir.path())?;
    let work = Workload {
        events: args.events,
        payload_bytes: args.payload_bytes,
        shards: bus.shards(),
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
    };
    let window = progress::counting("net: ingest", work.events, || feed::feed(&bus, &work))?;
    let histogram = bus.take_latency();
    archive::latency("ingest → durable, closed loop", "net", &histogram);
    let latency = Percentiles::from_ns(&histogram);
    if window.totals.dropped > 0 {
        let dropped = window.totals.dropped;
        return Err(Failure::Verification(format!(
            "net dropped {dropped} events on ingest"
        )));
    }
    bus.flush().map_err(|e| Failure::engine("flush", e))?;
    let mut ledger = Ledger::new(&work);
    let phase = progress::counted("net: poll back and verify", ledger.expected_events());
    let read = readback::read_back(&bus, ledger.expected_events(), |e| ledger.check(e))?;
    drop(phase);
    let verified = ledger.finish().map_err(Failure::Verification)?;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    print_report(args, &work, &window, &latency, &read, verified);
    Ok(())
}

fn start(args: &Args, dir: &Path) -> Result<Bus, Failure> {
    let defaults = Config::default();
    let shards = args
        .shards
        .map(|s| usize::try_from(s).expect("shard count fits usize"));
    let config = Config {
        data_dir: dir.to_path_buf(),
        shards: shards.or(defaults.shards),
        ..defaults
    };
    Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))
}

fn print_report(
    args: &Args,
    work: &Workload,
    window: &Window,
    latency: &Percentiles,
    read: &ReadBack,
    verified: u64,
) {
    let command = command(args);
    let ingest_per_s = report::per_s(window.totals.persisted, window.elapsed);
    let ingest_mb_per_s = report::per_s(work.payload_total_bytes(), window.elapsed) / 1e6;
    let allocs_per_event = window.allocations.allocations as f64 / work.events as f64;
    let cpu_ns_per_event = window
        .cpu
        .map(|cpu| cpu.as_nanos() as f64 / work.events as f64);
    let cpu_cell = cpu_ns_per_event.map_or_else(|| "n/a".to_owned(), |ns| format!("{ns:.0}"));
    let poll_per_s = report::per_s(read.events, read.polling);
    let poll_gb_per_s = report::per_s(read.payload_bytes, read.polling) / 1e9;
    let config = if args.shards.is_some() {
        "default config, shards set"
    } else {
        "default config"
    };
    let title = format!(
        "net demo: {} events x {} B, {} producers, {} shards ({config})",
        report::format_count(work.events as f64),
        work.payload_bytes,
        work.producers,
        work.shards
    );
    let mut table = Table::new(&title, &["net"]);
    table
        .row("events", vec![report::format_count(work.events as f64)])
        .row("ingest events/s", vec![report::format_count(ingest_per_s)])
        .row("ingest MB/s", vec![format!("{ingest_mb_per_s:.1}")])
        .latency_rows("ingest->persisted", &[*latency])
        .row(
            "allocations/event (ingest)",
            vec![format!("{allocs_per_event:.4}")],
        )
        .row("CPU ns/event (ingest, process)", vec![cpu_cell])
        .row("poll events/s", vec![report::format_count(poll_per_s)])
        .row("poll GB/s", vec![format!("{poll_gb_per_s:.2}")])
        .row("verified", vec![format!("{verified} events byte-exact")])
        .row("shutdown", vec!["clean (lossy: false)".to_owned()]);
    print!("{}", table.render());
    println!("  reproduce: {command}");
    let mut json = JsonLine::default();
    json.field("scenario", "demo")
        .field("events", work.events)
        .field("payload_bytes", work.payload_bytes)
        .field("shards", work.shards)
        .field("producers", work.producers)
        .field("events_per_s", report::round_to(ingest_per_s, 0))
        .field("mb_per_s", report::round_to(ingest_mb_per_s, 2))
        .field("allocs_per_event", allocs_per_event)
        .field("cpu_ns_per_event", cpu_ns_per_event.map(f64::round))
        .latency("", latency)
        .field("poll_events_per_s", report::round_to(poll_per_s, 0))
        .field("poll_gb_per_s", report::round_to(poll_gb_per_s, 3))
        .field("verified", verified)
        .field("lossy", false)
        .field("command", command);
    archive::emit(json.render(), args.json);
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("events", args.events.to_string()),
        ("payload-bytes", args.payload_bytes.to_string()),
        ("producers", args.producers.to_string()),
    ];
    if let Some(shards) = args.shards {
        flags.push(("shards", shards.to_string()));
    }
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("demo", &flags, args.dir.as_ref())
}
