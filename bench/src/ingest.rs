//! `net-bench ingest`: ingest-to-persisted throughput, latency and allocations of net and, in
//! the same run and on the same workload, of the conventional tokio + mutex baseline
//! (`baseline`).
//!
//! Each design runs two phases. The throughput phase is a closed loop at full speed: it gives
//! events/s, allocations and CPU per event, and its latency is queue-full ("saturated")
//! latency. The paced phase then sends at a rate both designs can sustain on an open-loop
//! schedule (`pace`) and measures latency from each event's intended send time, corrected for
//! coordinated omission; these are the headline percentiles. The paced rate defaults to
//! `pace::RATE_PER_S_DEFAULT` unless that is near the baseline's measured throughput, so the
//! baseline's throughput phase runs first.
//!
//! Net's bus is started first (its shard count sets the workload) and stays idle, its shards
//! parked, while the baseline runs both phases in its own scratch directory on the same
//! filesystem; that directory is removed before net's phases run on the same bus, so the
//! designs never compete for cores or for writeback. A fresh baseline pipeline runs each of its
//! phases; net's paced phase reuses the warm bus, its throughput-phase latency samples taken
//! and set aside first.
//!
//! Neither design syncs: net runs with fsync `never` (`NET_FSYNC`) whatever its embedded
//! default, so for both "persisted" means handed to the file (net: an O_DIRECT write completed;
//! the baseline: in its BufWriter).
//!
//! Events are sent by key (the key is the event's identity), which spreads every producer over
//! all shards and exercises net's key-hash routing; the baseline routes with the same kind of
//! multiply-shift map. The figure to quote is `ratio` = net events/s / baseline events/s.

use crate::feed;
use crate::pace::{self, Pace};
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::workload::{Measurement, Workload};
use crate::{Failure, archive, baseline, parse_payload_bytes, parse_positive, plot, progress};
use hdrhistogram::Histogram;
use net_engine::{Bus, Config, FsyncPolicy};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time the bus gets to drain at shutdown; everything is persisted by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Net's fsync policy here: the baseline never syncs, so neither does net, whatever the
/// embedded default (`every_batch` since group commit landed) is. Persisted then means written
/// to the file, for both designs.
const NET_FSYNC: FsyncPolicy = FsyncPolicy::Never;

const NET: &str = "net";
const BASELINE: &str = "tokio+mutex";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events each design ingests in the throughput phase.
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
    /// Paced-phase rate, events/s over all producers; by default 1,000,000, or half the
    /// baseline's measured throughput when 1,000,000 is at least 60% of it.
    #[arg(long, value_parser = parse_positive)]
    rate: Option<u64>,
    /// Events each design sends in the paced phase; by default 2 s at the rate, at most
    /// 2,000,000.
    #[arg(long, value_parser = parse_positive)]
    latency_events: Option<u64>,
    /// Skip the paced latency phase (its figures are then null).
    #[arg(long)]
    no_latency: bool,
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

/// The paced phase both designs run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rate_per_s: u64,
    events: u64,
    /// The baseline's throughput when it lowered the default rate.
    lowered_for_events_per_s: Option<u64>,
}

/// What one design's paced phase measured.
#[derive(Debug)]
struct PacedRun {
    /// Ingest-to-persisted latency, ns, from each event's intended send time.
    latency: Histogram<u64>,
    /// How late each send started against its schedule, ns.
    lag: Histogram<u64>,
    persisted: u64,
    dropped: u64,
}

/// Both phases of one design.
#[derive(Debug)]
struct DesignRun {
    saturated: Measurement,
    paced: Option<PacedRun>,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let net_dir = crate::scratch_dir(args.dir.as_deref(), "net")?;
    let bus = start_bus(args, net_dir.path())?;
    let work = Workload {
        events: args.events,
        payload_bytes: args.payload_bytes,
        shards: bus.shards(),
        producers: usize::try_from(args.producers).expect("producer count fits usize"),
    };

    let baseline_dir = crate::scratch_dir(args.dir.as_deref(), "baseline")?;
    let (base, plan) = measure_baseline(args, &work, baseline_dir.path())?;
    baseline_dir
        .close()
        .map_err(Failure::io("removing the baseline's scratch directory"))?;

    let (net, lossy) = measure_net(bus, &work, plan)?;
    net_dir
        .close()
        .map_err(Failure::io("removing net's scratch directory"))?;

    if let Some(path) = &args.svg {
        write_plot(path, &net, &base, plan)?;
    }
    archive_latency(&net, &base);
    print_report(args, &work, plan, &net, &base, lossy);
    Ok(())
}

fn start_bus(args: &Args, dir: &Path) -> Result<Bus, Failure> {
    let defaults = Config::default();
    let shards = args
        .shards
        .map(|s| usize::try_from(s).expect("shard count fits usize"));
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        shards: shards.or(defaults.shards),
        ..defaults
    };
    config.storage.fsync = NET_FSYNC;
    Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))
}

/// The baseline's throughput phase, the plan it decides, then its paced phase.
fn measure_baseline(
    args: &Args,
    work: &Workload,
    dir: &Path,
) -> Result<(DesignRun, Option<Plan>), Failure> {
    let saturated = progress::during("tokio+mutex: throughput phase", || {
        baseline::run(work, dir).map_err(Failure::io("baseline run"))
    })?;
    let plan = plan(args, whole_events_per_s(&saturated));
    let paced = match plan {
        Some(plan) => {
            let _phase = progress::phase("tokio+mutex: paced phase");
            let pace = Pace::new(plan.rate_per_s, work.producers);
            let paced_work = Workload {
                events: plan.events,
                ..*work
            };
            let (measured, lag) = baseline::run_paced(&paced_work, dir, &pace)
                .map_err(Failure::io("baseline paced run"))?;
            Some(PacedRun {
                latency: measured.latency,
                lag,
                persisted: measured.persisted,
                dropped: measured.dropped,
            })
        }
        None => None,
    };
    Ok((DesignRun { saturated, paced }, plan))
}

/// Events/s in whole events, for the rate arithmetic.
fn whole_events_per_s(m: &Measurement) -> u64 {
    let per_s = u128::from(m.persisted) * 1_000_000_000 / m.elapsed.as_nanos().max(1);
    u64::try_from(per_s).unwrap_or(u64::MAX)
}

fn plan(args: &Args, baseline_events_per_s: u64) -> Option<Plan> {
    if args.no_latency {
        return None;
    }
    let rate_per_s = pace::rate_per_s(args.rate, baseline_events_per_s);
    let lowered = args.rate.is_none() && rate_per_s != pace::RATE_PER_S_DEFAULT;
    Some(Plan {
        rate_per_s,
        events: pace::events(args.latency_events, rate_per_s),
        lowered_for_events_per_s: lowered.then_some(baseline_events_per_s),
    })
}

/// Net's throughput phase, then its paced phase on the same bus; shuts the bus down and
/// returns whether the shutdown reported a lossy run.
fn measure_net(
    bus: Bus,
    work: &Workload,
    plan: Option<Plan>,
) -> Result<(DesignRun, bool), Failure> {
    let window = progress::counting("net: throughput phase", work.events, || {
        feed::feed(&bus, work)
    })?;
    // Taken before the paced phase, so that it holds only throughput-phase samples.
    let latency = bus.take_latency();
    let saturated = Measurement {
        persisted: window.totals.persisted,
        dropped: window.totals.dropped,
        elapsed: window.elapsed,
        allocations: window.allocations,
        cpu: window.cpu,
        latency,
    };
    let paced = match plan {
        Some(plan) => Some(net_paced(&bus, work, plan)?),
        None => None,
    };
    let shutdown = bus.shutdown(SHUTDOWN_DEADLINE);
    if !shutdown.panicked_shards.is_empty() || !shutdown.failed_shards.is_empty() {
        let (panicked, failed) = (&shutdown.panicked_shards, &shutdown.failed_shards);
        let msg = format!("shutdown: shards panicked {panicked:?}, failed {failed:?}");
        return Err(Failure::Engine(msg));
    }
    Ok((DesignRun { saturated, paced }, shutdown.lossy))
}

fn net_paced(bus: &Bus, work: &Workload, plan: Plan) -> Result<PacedRun, Failure> {
    let _phase = progress::counted("net: paced phase", plan.events);
    let pace = Pace::new(plan.rate_per_s, work.producers);
    let paced_work = Workload {
        events: plan.events,
        ..*work
    };
    let paced = feed::feed_paced(bus, &paced_work, &pace)?;
    Ok(PacedRun {
        latency: bus.take_latency(),
        lag: paced.lag,
        persisted: paced.persisted,
        dropped: paced.dropped,
    })
}

fn write_plot(
    path: &Path,
    net: &DesignRun,
    base: &DesignRun,
    plan: Option<Plan>,
) -> Result<(), Failure> {
    let mut series = Vec::new();
    if let (Some(n), Some(b)) = (&net.paced, &base.paced) {
        series.push(("net, paced", &n.latency));
        series.push(("tokio+mutex, paced", &b.latency));
    }
    series.push(("net, saturated", &net.saturated.latency));
    series.push(("tokio+mutex, saturated", &base.saturated.latency));
    let title = match plan {
        Some(plan) => format!(
            "ingest -> persisted latency (paced at {} events/s, and saturated)",
            report::format_count(plan.rate_per_s as f64)
        ),
        None => "ingest -> persisted latency (saturated)".to_owned(),
    };
    plot::write(path, &title, &series).map_err(Failure::io(format!("writing {}", path.display())))
}

/// Both designs' latency curves, for `net-bench report`'s plots.
fn archive_latency(net: &DesignRun, base: &DesignRun) {
    if let (Some(n), Some(b)) = (&net.paced, &base.paced) {
        archive::latency("ingest → persisted, paced", NET, &n.latency);
        archive::latency("ingest → persisted, paced", BASELINE, &b.latency);
    }
    archive::latency("ingest → persisted, saturated", NET, &net.saturated.latency);
    archive::latency(
        "ingest → persisted, saturated",
        BASELINE,
        &base.saturated.latency,
    );
}

fn print_report(
    args: &Args,
    work: &Workload,
    plan: Option<Plan>,
    net: &DesignRun,
    base: &DesignRun,
    lossy: bool,
) {
    let command = command(args, work);
    let ratio = net.saturated.events_per_s() / base.saturated.events_per_s();
    print!("{}", table(work, plan, net, base).render());
    println!("  ratio (net / baseline events/s): {ratio:.2}x");
    for line in notes(plan, net, base, lossy) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    archive::emit(
        json(work, plan, net, base, ratio, lossy, command),
        args.json,
    );
}

fn table(work: &Workload, plan: Option<Plan>, net: &DesignRun, base: &DesignRun) -> Table {
    let title = format!(
        "ingest -> persisted: {} events x {} B, {} producers, {} shards, net fsync {}",
        report::format_count(work.events as f64),
        work.payload_bytes,
        work.producers,
        work.shards,
        fsync_name()
    );
    let (n, b) = (&net.saturated, &base.saturated);
    let both = |f: &dyn Fn(&Measurement) -> String| vec![f(n), f(b)];
    let mut table = Table::new(&title, &[NET, BASELINE]);
    table
        .heading("throughput phase, closed loop:")
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
        .row("dropped", both(&|m| m.dropped.to_string()))
        .heading("latency, saturated closed loop (the phase above):")
        .latency_rows("saturated", &[n.percentiles(), b.percentiles()]);
    if let (Some(plan), Some(np), Some(bp)) = (plan, &net.paced, &base.paced) {
        paced_rows(&mut table, plan, np, bp);
    }
    table
}

fn paced_rows(table: &mut Table, plan: Plan, net: &PacedRun, base: &PacedRun) {
    let heading = format!(
        "latency, paced at {} events/s, CO-corrected, {} events:",
        report::format_count(plan.rate_per_s as f64),
        report::format_count(plan.events as f64),
    );
    let lag = |run: &PacedRun| Percentiles::from_ns(&run.lag);
    let (net_lag, base_lag) = (lag(net), lag(base));
    table
        .heading(&heading)
        .latency_rows("paced", &[paced_percentiles(net), paced_percentiles(base)])
        .row(
            "send lag p99 (µs)",
            vec![
                report::format_us(net_lag.p99_us),
                report::format_us(base_lag.p99_us),
            ],
        )
        .row(
            "send lag max (µs)",
            vec![
                report::format_us(net_lag.max_us),
                report::format_us(base_lag.max_us),
            ],
        )
        .row(
            "dropped",
            vec![net.dropped.to_string(), base.dropped.to_string()],
        );
}

fn paced_percentiles(run: &PacedRun) -> Percentiles {
    Percentiles::from_ns(&run.latency)
}

/// Lines under the table: how the rate was chosen, and anything that weakens a figure.
fn notes(plan: Option<Plan>, net: &DesignRun, base: &DesignRun, lossy: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(events_per_s) = plan.and_then(|p| p.lowered_for_events_per_s) {
        notes.push(format!(
            "pace: {} events/s is at least {}% of the baseline's {} events/s, so both \
             designs are paced at {}% of it",
            report::format_count(pace::RATE_PER_S_DEFAULT as f64),
            pace::RATE_SHARE_OF_BASELINE_MAX_PCT,
            report::format_count(events_per_s as f64),
            pace::RATE_SHARE_OF_BASELINE_FALLBACK_PCT,
        ));
    }
    for (name, run) in [(NET, &net.paced), (BASELINE, &base.paced)] {
        let Some(run) = run else { continue };
        if run.latency.len() != run.persisted {
            notes.push(format!(
                "warning: {name}'s paced phase has {} latency samples for {} persisted events",
                run.latency.len(),
                run.persisted
            ));
        }
    }
    if lossy {
        notes.push("warning: net's shutdown reported a lossy run".to_owned());
    }
    notes
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
    plan: Option<Plan>,
    net: &DesignRun,
    base: &DesignRun,
    ratio: f64,
    lossy: bool,
    command: String,
) -> String {
    let (n, b) = (&net.saturated, &base.saturated);
    let mut json = JsonLine::default();
    json.field("scenario", "ingest")
        .field("events", work.events)
        .field("payload_bytes", work.payload_bytes)
        .field("shards", work.shards)
        .field("producers", work.producers)
        .field("fsync", fsync_name())
        .field("events_per_s", report::round_to(n.events_per_s(), 0))
        .field(
            "baseline_events_per_s",
            report::round_to(b.events_per_s(), 0),
        )
        .field("ratio", report::round_to(ratio, 3))
        .field("allocs_per_event", n.allocs_per_event(work.events))
        .field("baseline_allocs_per_event", b.allocs_per_event(work.events));
    paced_json(&mut json, plan, net, base);
    json.latency("saturated_", &n.percentiles())
        .latency("baseline_saturated_", &b.percentiles())
        .field(
            "mb_per_s",
            report::round_to(n.mb_per_s(work.payload_bytes), 2),
        )
        .field(
            "baseline_mb_per_s",
            report::round_to(b.mb_per_s(work.payload_bytes), 2),
        )
        .field("elapsed_s", report::round_to(n.elapsed.as_secs_f64(), 4))
        .field(
            "baseline_elapsed_s",
            report::round_to(b.elapsed.as_secs_f64(), 4),
        )
        .field("cpu_ns_per_event", cpu_json(n, work.events))
        .field("baseline_cpu_ns_per_event", cpu_json(b, work.events))
        .field("dropped", n.dropped)
        .field("lossy", lossy)
        .field("command", command);
    json.render()
}

/// The paced phase's fields; all null without one.
fn paced_json(json: &mut JsonLine, plan: Option<Plan>, net: &DesignRun, base: &DesignRun) {
    let (np, bp) = (net.paced.as_ref(), base.paced.as_ref());
    let lag = |run: Option<&PacedRun>, pick: fn(&Percentiles) -> f64| {
        run.map(|r| pick(&Percentiles::from_ns(&r.lag)))
    };
    json.field("latency_rate_per_s", plan.map(|p| p.rate_per_s))
        .field("latency_events", plan.map(|p| p.events))
        .latency_or_null("", np.map(paced_percentiles).as_ref())
        .latency_or_null("baseline_", bp.map(paced_percentiles).as_ref())
        .field("send_lag_p99_us", lag(np, |p| p.p99_us))
        .field("send_lag_max_us", lag(np, |p| p.max_us))
        .field("baseline_send_lag_p99_us", lag(bp, |p| p.p99_us))
        .field("baseline_send_lag_max_us", lag(bp, |p| p.max_us))
        .field("latency_dropped", np.map(|r| r.dropped));
}

/// Net's fsync policy as its config spells it (`never`).
fn fsync_name() -> String {
    match serde_json::to_value(NET_FSYNC) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
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
    // The default rate and event count depend on the baseline's throughput in the run, so
    // they are passed on only when given: the rerun then applies the same rule.
    if let Some(rate) = args.rate {
        flags.push(("rate", rate.to_string()));
    }
    if let Some(events) = args.latency_events {
        flags.push(("latency-events", events.to_string()));
    }
    if args.no_latency {
        flags.push(("no-latency", String::new()));
    }
    if args.json {
        flags.push(("json", String::new()));
    }
    if let Some(svg) = &args.svg {
        flags.push(("svg", svg.display().to_string()));
    }
    crate::reproduce_command("ingest", &flags, args.dir.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        crate::parse_args("ingest", line)
    }

    fn work() -> Workload {
        Workload {
            events: 5_000_000,
            payload_bytes: 100,
            shards: 2,
            producers: 2,
        }
    }

    #[test]
    fn reproduce_command_passes_the_rate_only_when_given() {
        let given = command(&args(&["--rate", "500000", "--json"]), &work());
        assert!(
            given.ends_with("--producers 2 --rate 500000 --json"),
            "{given}"
        );
        let default = command(&args(&[]), &work());
        assert!(!default.contains("--rate") && !default.contains("--latency-events"));
        let skipped = command(&args(&["--no-latency", "--latency-events", "9"]), &work());
        assert!(
            skipped.ends_with("--latency-events 9 --no-latency"),
            "{skipped}"
        );
    }

    #[test]
    fn plan_follows_the_flags_and_says_when_the_baseline_lowered_the_rate() {
        assert!(plan(&args(&["--no-latency"]), 1_000_000).is_none());
        let given = plan(&args(&["--rate", "500000"]), 100).unwrap();
        assert_eq!((given.rate_per_s, given.events), (500_000, 1_000_000));
        assert_eq!(given.lowered_for_events_per_s, None);
        let lowered = plan(&args(&["--latency-events", "7"]), 1_500_000).unwrap();
        assert_eq!((lowered.rate_per_s, lowered.events), (750_000, 7));
        assert_eq!(lowered.lowered_for_events_per_s, Some(1_500_000));
        let default = plan(&args(&[]), 4_000_000).unwrap();
        assert_eq!(default.rate_per_s, pace::RATE_PER_S_DEFAULT);
        assert_eq!(default.lowered_for_events_per_s, None);
    }
}
