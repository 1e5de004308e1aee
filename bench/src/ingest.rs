//! `net-bench ingest`: ingest-to-persisted throughput, latency and allocations of net, then,
//! in the same run and on the same workload, of the conventional tokio + mutex baseline
//! (`baseline`). Net runs first and is shut down before the baseline starts, each in its own
//! scratch directory on the same filesystem, so neither competes with the other for cores.
//!
//! Events are sent by key (the key is the event's identity), which spreads every producer over
//! all shards and exercises net's key-hash routing; the baseline routes with the same kind of
//! multiply-shift map. The figure to quote is `ratio` = net events/s / baseline events/s.

use crate::feed;
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::workload::{Measurement, Workload};
use crate::{Failure, baseline, parse_payload_bytes, parse_positive, plot};
use net_engine::{Bus, Config};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time the bus gets to drain at shutdown; everything is persisted by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

const NET: &str = "net";
const BASELINE: &str = "tokio+mutex";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events each design ingests.
    #[arg(long, default_value_t = 5_000_000, value_parser = parse_positive)]
    events: u64,
    /// Bytes per payload (at least 12: the event's identity).
    #[arg(long, default_value_t = 100, value_parser = parse_payload_bytes)]
    payload_bytes: usize,
    /// Shards (files, for the baseline); by default net's default, every available CPU.
    #[arg(long, value_parser = parse_positive)]
    shards: Option<u64>,
    /// Producer threads.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    producers: u64,
    /// Directory under which each design gets its own temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
    /// Write a latency-by-percentile plot of both designs to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// Net's measurement plus what its shutdown reported.
#[derive(Debug)]
struct NetRun {
    measured: Measurement,
    lossy: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let net_dir = crate::scratch_dir(args.dir.as_deref(), "net")?;
    let (work, net) = measure_net(args, net_dir.path())?;
    net_dir
        .close()
        .map_err(Failure::io("removing net's scratch directory"))?;

    let baseline_dir = crate::scratch_dir(args.dir.as_deref(), "baseline")?;
    let base = baseline::run(&work, baseline_dir.path()).map_err(Failure::io("baseline run"))?;
    baseline_dir
        .close()
        .map_err(Failure::io("removing the baseline's scratch directory"))?;

    if let Some(path) = &args.svg {
        let series = [(NET, &net.measured.latency), (BASELINE, &base.latency)];
        plot::write(path, "ingest -> persisted latency", &series)
            .map_err(Failure::io(format!("writing {}", path.display())))?;
    }
    print_report(args, &work, &net, &base);
    Ok(())
}

fn measure_net(args: &Args, dir: &Path) -> Result<(Workload, NetRun), Failure> {
    let defaults = Config::default();
    let shards = args
        .shards
        .map(|s| usize::try_from(s).expect("shard count fits usize"));
    let config = Config {
        data_dir: dir.to_path_buf(),
        shards: shards.or(defaults.shards),
        ..defaults
    };
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))?;
    let work = Workload {
        events: args.events,
        payload_bytes: args.payload_bytes,
        shards: bus.shards(),
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
    };
    let window = feed::feed(&bus, &work)?;
    let latency = bus.take_latency();
    let shutdown = bus.shutdown(SHUTDOWN_DEADLINE);
    if !shutdown.panicked_shards.is_empty() || !shutdown.failed_shards.is_empty() {
        let (panicked, failed) = (&shutdown.panicked_shards, &shutdown.failed_shards);
        let msg = format!("shutdown: shards panicked {panicked:?}, failed {failed:?}");
        return Err(Failure::Engine(msg));
    }
    let measured = Measurement {
        persisted: window.totals.persisted,
        dropped: window.totals.dropped,
        elapsed: window.elapsed,
        allocations: window.allocations,
        cpu: window.cpu,
        latency,
    };
    Ok((
        work,
        NetRun {
            measured,
            lossy: shutdown.lossy,
        },
    ))
}

fn print_report(args: &Args, work: &Workload, net: &NetRun, base: &Measurement) {
    let command = command(args, work);
    let (n, b) = (&net.measured, base);
    let ratio = n.events_per_s() / b.events_per_s();
    let (np, bp) = (n.percentiles(), b.percentiles());
    let title = format!(
        "ingest -> persisted: {} events x {} B, {} producers, {} shards",
        report::format_count(work.events as f64),
        work.payload_bytes,
        work.producers,
        work.shards
    );
    let both = |f: &dyn Fn(&Measurement) -> String| vec![f(n), f(b)];
    let mut table = Table::new(&title, &[NET, BASELINE]);
    table
        .row(
            "events/s",
            both(&|m| report::format_count(m.events_per_s())),
        )
        .row(
            "MB/s",
            both(&|m| format!("{:.1}", m.mb_per_s(work.payload_bytes))),
        )
        .row(
            "elapsed (s)",
            both(&|m| format!("{:.3}", m.elapsed.as_secs_f64())),
        )
        .latency_rows("latency", &[np, bp])
        .row(
            "allocations/event",
            both(&|m| format!("{:.4}", m.allocs_per_event(work.events))),
        )
        .row(
            "allocated bytes/event",
            both(&|m| bytes_per_event(m, work.events)),
        )
        .row(
            "CPU ns/event (process)",
            both(&|m| cpu_per_event(m, work.events)),
        )
        .row("dropped", both(&|m| m.dropped.to_string()));
    print!("{}", table.render());
    println!("  ratio (net / baseline events/s): {ratio:.2}x");
    if net.lossy {
        println!("  warning: net's shutdown reported a lossy run");
    }
    println!("  reproduce: {command}");
    if args.json {
        println!("{}", json(work, net, base, ratio, &np, &bp, command));
    }
}

fn cpu_per_event(m: &Measurement, events: u64) -> String {
    m.cpu_ns_per_event(events)
        .map_or_else(|| "n/a".to_owned(), |ns| format!("{ns:.0}"))
}

fn bytes_per_event(m: &Measurement, events: u64) -> String {
    format!("{:.1}", m.allocations.bytes as f64 / events.max(1) as f64)
}

fn json(
    work: &Workload,
    net: &NetRun,
    base: &Measurement,
    ratio: f64,
    np: &Percentiles,
    bp: &Percentiles,
    command: String,
) -> String {
    let n = &net.measured;
    let mut json = JsonLine::default();
    json.field("scenario", "ingest")
        .field("events", work.events)
        .field("payload_bytes", work.payload_bytes)
        .field("shards", work.shards)
        .field("producers", work.producers)
        .field("events_per_s", report::round_to(n.events_per_s(), 0))
        .field(
            "baseline_events_per_s",
            report::round_to(base.events_per_s(), 0),
        )
        .field("ratio", report::round_to(ratio, 3))
        .field("allocs_per_event", n.allocs_per_event(work.events))
        .field(
            "baseline_allocs_per_event",
            base.allocs_per_event(work.events),
        )
        .latency("", np)
        .latency("baseline_", bp)
        .field(
            "mb_per_s",
            report::round_to(n.mb_per_s(work.payload_bytes), 2),
        )
        .field(
            "baseline_mb_per_s",
            report::round_to(base.mb_per_s(work.payload_bytes), 2),
        )
        .field("elapsed_s", report::round_to(n.elapsed.as_secs_f64(), 4))
        .field(
            "baseline_elapsed_s",
            report::round_to(base.elapsed.as_secs_f64(), 4),
        )
        .field("cpu_ns_per_event", cpu_json(n, work.events))
        .field("baseline_cpu_ns_per_event", cpu_json(base, work.events))
        .field("dropped", n.dropped)
        .field("lossy", net.lossy)
        .field("command", command);
    json.render()
}

fn cpu_json(m: &Measurement, events: u64) -> Option<f64> {
    m.cpu_ns_per_event(events).map(f64::round)
}

fn command(args: &Args, work: &Workload) -> String {
    let mut flags = vec![
        ("events", work.events.to_string()),
        ("payload-bytes", work.payload_bytes.to_string()),
        ("shards", work.shards.to_string()),
        ("producers", work.producers.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    if let Some(svg) = &args.svg {
        flags.push(("svg", svg.display().to_string()));
    }
    crate::reproduce_command("ingest", &flags, args.dir.as_ref())
}
