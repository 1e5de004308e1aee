//! `net-bench latency`: how long one event takes through net at a modest paced load (durable,
//! visible to a consumer, and persisted while a consumer polls), each against the raw disk
//! measured in the same run on the same file system.
//!
//! Every phase runs one shard (pinned, as the default config pins) fed by one producer thread
//! with `--rate` events/s on `pace`'s open-loop schedule; the producer and the consumer are
//! pinned to the CPUs the shard leaves free (the shard owns its core, as in production). The producer sleeps while no event is
//! due (`pace::send_sleeping`; wake-ups at least `--wake-us` apart, each sending every event
//! due by then): a spinning or yielding producer would hold the core that the kernel's I/O
//! workers need on a 2-core machine. Each event is stamped with its own intended send time,
//! so latency is corrected for coordinated omission (a late wake-up counts). The schedule
//! starts `pace::START_LEAD_NS` after every thread of the phase is parked ready: a schedule
//! that starts before its threads run charges their start-up to the first events. Each phase
//! gets a fresh bus in its own data directory, removed after it, so no phase inherits another's
//! segments or backlog.
//!
//! 1. Durable: fsync `every_batch` (the default, group commit); the shard's ingest-to-durable
//!    latency (`Bus::take_latency`: a batch counts once its write and `fdatasync` completed),
//!    against one 4 KiB `O_DIRECT` write + `fdatasync` (`disk::sync_latency`) measured just
//!    before.
//! 2. Ingest: fsync `never` and no consumer; ingest-to-persisted (written) latency.
//! 3. Visible: fsync `never` and a consumer thread that follows the tail from the start of the
//!    phase with `Bus::poll_wait`: it polls again at once while there is more, and sleeps
//!    until the shard publishes when it has caught up. (A consumer that spins instead, even
//!    yielding between empty polls, starves the kernel worker that completes the shard's
//!    writes on its core: on 2 cores that stalled the shard ~0.4 s at a time.) Visible
//!    latency runs from an event's intended send time to the return of the poll that read it,
//!    against one 4 KiB `O_DIRECT` write (`disk::write_latency`) measured before phase 2. This
//!    phase's ingest latency, against phase 2's, is the poll stall: what a busy consumer costs
//!    the write path. (Phase 3 is the "with a consumer" phase of that comparison: a separate
//!    run of the same workload would measure the same thing again.)
//!
//! Payloads carry the event's identity (`payload`); its counter gives the intended send time
//! through the schedule the consumer shares, so the consumer checks order and completeness and
//! measures latency from the same bytes.

use crate::feed::{self, ProducerThread};
use crate::pace::{self, Pace};
use crate::report::{self, JsonLine, Percentiles, Table};
use crate::workload::{self, StartLine};
use crate::{
    Failure, archive, disk, parse_payload_bytes, parse_positive, payload, progress, readback,
    storage,
};
use hdrhistogram::Histogram;
use net_engine::{Bus, Config, Cursor, FsyncPolicy, Producer, monotonic_ns};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Paced rate when `--rate` is not given, events/s: well below what one shard sustains, so
/// the figures are latency, not queueing.
pub const RATE_PER_S_DEFAULT: u64 = 100_000;

/// Shards of every phase's bus.
const SHARDS: usize = 1;

/// The producer id in every payload (there is one producer).
const PRODUCER_ID: u32 = 0;

/// Events the consumer asks for per poll.
const POLL_LIMIT: usize = 1_000;

/// Longest sleep of one `poll_wait` (the consumer re-checks whether the phase failed).
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How long the consumer's polls may return nothing before the phase is declared stuck.
const POLL_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the bus gets to drain at shutdown; everything is persisted by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Paced rate of every phase, events/s.
    #[arg(long, default_value_t = RATE_PER_S_DEFAULT, value_parser = parse_positive)]
    rate: u64,
    /// Events of each phase; by default 2 s at the rate, at most 2,000,000.
    #[arg(long, value_parser = parse_positive)]
    events: Option<u64>,
    /// Bytes per payload (at least 12: the event's identity).
    #[arg(long, default_value_t = 100, value_parser = parse_payload_bytes)]
    payload_bytes: usize,
    /// Shortest time between the producer's wake-ups, µs; events due meanwhile are sent
    /// together at the next one (and their wait counts in their latency).
    #[arg(long, default_value_t = pace::WAKE_PERIOD_US_DEFAULT)]
    wake_us: u64,
    /// Samples of each raw 4 KiB write baseline (with and without fdatasync).
    #[arg(long, default_value_t = 2_000, value_parser = parse_positive)]
    raw_samples: u64,
    /// Directory under which the run makes its scratch directory (default /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

/// What every phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    rate_per_s: u64,
    events: u64,
    payload_bytes: usize,
    wake_period_us: u64,
}

fn plan(args: &Args) -> Plan {
    Plan {
        rate_per_s: args.rate,
        events: pace::events(args.events, args.rate),
        payload_bytes: args.payload_bytes,
        wake_period_us: args.wake_us,
    }
}

/// What one paced phase measured.
#[derive(Debug)]
struct Phase {
    /// The shard's ingest-to-persisted latency, ns, from each event's intended send time.
    ingest: Histogram<u64>,
    /// Intended send time to the poll that read the event, ns (phases with a consumer).
    visible: Option<Histogram<u64>>,
    /// How late the producer woke against each event's intended time, ns.
    lag: Histogram<u64>,
}

/// A raw-disk baseline: latency of one 4 KiB write (ns), and whether it was `O_DIRECT`.
#[derive(Debug)]
struct Raw {
    latency: Histogram<u64>,
    direct: bool,
}

/// Everything the run measured, in the order it ran.
#[derive(Debug)]
struct Measured {
    raw_sync: Raw,
    durable: Phase,
    raw_write: Raw,
    ingest: Phase,
    visible: Phase,
}

/// The figures quoted: p99s and their ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ratios {
    durable_p99: f64,
    visible_p99: f64,
    poll_stall: f64,
}

impl Measured {
    fn durable_percentiles(&self) -> Percentiles {
        Percentiles::from_ns(&self.durable.ingest)
    }

    fn visible_percentiles(&self) -> Percentiles {
        self.visible
            .visible
            .as_ref()
            .map(Percentiles::from_ns)
            .unwrap_or_default()
    }

    fn ratios(&self) -> Ratios {
        let p99 = |h: &Histogram<u64>| Percentiles::from_ns(h).p99_us;
        Ratios {
            durable_p99: ratio(
                self.durable_percentiles().p99_us,
                p99(&self.raw_sync.latency),
            ),
            visible_p99: ratio(
                self.visible_percentiles().p99_us,
                p99(&self.raw_write.latency),
            ),
            poll_stall: ratio(p99(&self.visible.ingest), p99(&self.ingest.ingest)),
        }
    }
}

/// `net / raw`, or 0 when the raw side measured nothing.
fn ratio(net: f64, raw: f64) -> f64 {
    if raw > 0.0 { net / raw } else { 0.0 }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(storage::DIR_DEFAULT));
    let scratch = crate::scratch_dir(Some(&base), "latency")?;
    let plan = plan(args);
    let dir = scratch.path();
    let raw_sync = raw(dir, "sync.dat", args.raw_samples, disk::sync_latency)?;
    let durable = measure_phase(dir, "durable", FsyncPolicy::EveryBatch, plan, false)?;
    let raw_write = raw(dir, "write.dat", args.raw_samples, disk::write_latency)?;
    let ingest = measure_phase(dir, "ingest", FsyncPolicy::Never, plan, false)?;
    let visible = measure_phase(dir, "visible", FsyncPolicy::Never, plan, true)?;
    scratch
        .close()
        .map_err(Failure::io("removing the scratch directory"))?;
    let measured = Measured {
        raw_sync,
        durable,
        raw_write,
        ingest,
        visible,
    };
    archive_latency(&measured);
    print_report(args, &base, plan, &measured);
    Ok(())
}

/// A raw baseline of `disk`: `disk::sync_latency` or `disk::write_latency`.
type RawBaseline = fn(&Path, u64) -> io::Result<(Histogram<u64>, bool)>;

/// Runs a raw baseline on a new file `name` in `dir`, then removes the file.
fn raw(dir: &Path, name: &str, samples: u64, measure: RawBaseline) -> Result<Raw, Failure> {
    let _progress = progress::phase(&format!("raw disk: {name}"));
    let path = dir.join(name);
    let (latency, direct) =
        measure(&path, samples).map_err(Failure::io(format!("raw baseline on {name}")))?;
    std::fs::remove_file(&path).map_err(Failure::io(format!("removing {}", path.display())))?;
    Ok(Raw { latency, direct })
}

/// Runs one paced phase on a new bus in `dir`/`name` (with a consumer following the tail when
/// `consumer`), shuts it down cleanly and removes its data.
fn measure_phase(
    dir: &Path,
    name: &str,
    fsync: FsyncPolicy,
    plan: Plan,
    consumer: bool,
) -> Result<Phase, Failure> {
    let _progress = progress::counted(&format!("net: {name} phase"), plan.events);
    let data_dir = dir.join(name);
    let mut config = Config {
        data_dir: data_dir.clone(),
        shards: Some(SHARDS),
        ..Config::default()
    };
    config.storage.fsync = fsync;
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))?;
    let phase = paced_phase(&bus, plan, consumer)
        .map_err(|failure| prefix(failure, &format!("{name} phase")))?;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    std::fs::remove_dir_all(&data_dir).map_err(Failure::io(format!("removing the {name} bus")))?;
    Ok(phase)
}

/// Says which phase a failure came from.
fn prefix(failure: Failure, phase: &str) -> Failure {
    match failure {
        Failure::Io { context, source } => Failure::Io {
            context: format!("{phase}: {context}"),
            source,
        },
        Failure::Engine(what) => Failure::Engine(format!("{phase}: {what}")),
        Failure::Storage(what) => Failure::Storage(format!("{phase}: {what}")),
        Failure::Verification(what) => Failure::Verification(format!("{phase}: {what}")),
    }
}

/// Sends `plan.events` on a new schedule from one sleeping producer (and reads them with a
/// consumer when `consumer`), waits until the bus persisted them all and checks that it did,
/// every one.
fn paced_phase(bus: &Bus, plan: Plan, consumer: bool) -> Result<Phase, Failure> {
    let pace = Pace::new(plan.rate_per_s, 1);
    let failed = Arc::new(AtomicBool::new(false));
    let start_line = StartLine::new(1 + usize::from(consumer));
    let producer = bus
        .producer()
        .map_err(|e| Failure::engine("creating a producer", e))?;
    let sender = spawn_producer(
        producer,
        plan,
        pace.clone(),
        Arc::clone(&start_line),
        Arc::clone(&failed),
    )
    .map_err(Failure::io("spawning the producer thread"))?;
    let _earlier = bus.take_latency();
    let stats = bus.stats_handle();
    let before = stats.totals();
    let target = before.persisted + before.dropped + plan.events;
    let (watched, read) = thread::scope(|scope| {
        let reader = if consumer {
            let follow = || follow_tail(bus, plan, &pace, &start_line, &failed);
            let spawned = thread::Builder::new()
                .name("net-latency-consumer".to_owned())
                .spawn_scoped(scope, follow);
            Some(spawned.map_err(Failure::io("spawning the consumer thread"))?)
        } else {
            None
        };
        start_line.wait_ready();
        pace.start(monotonic_ns());
        start_line.release();
        let watched = feed::watch(&|| stats.totals(), target, &failed);
        if watched.is_err() {
            failed.store(true, Ordering::Release);
        }
        let read = reader.map(|r| {
            r.join()
                .unwrap_or_else(|_| Err(Failure::Engine("the consumer panicked".to_owned())))
        });
        Ok::<_, Failure>((watched, read))
    })?;
    let outcome = match (watched, read.transpose()) {
        (Ok(totals), Ok(visible)) => Ok((totals, visible)),
        (_, Err(failure)) | (Err(failure), Ok(_)) => Err(failure),
    };
    let (totals, visible) = match outcome {
        Ok(done) => done,
        // The producer's failure stops the others, so it comes first; a blocked producer
        // never returns and is not joined.
        Err(other) => return Err(feed::finished_error(vec![sender]).unwrap_or(other)),
    };
    let lag = feed::join(sender)?;
    let (persisted, dropped) = (
        totals.persisted - before.persisted,
        totals.dropped - before.dropped,
    );
    if persisted != plan.events || dropped != 0 {
        return Err(Failure::Verification(format!(
            "{persisted} of {} events persisted, {dropped} dropped",
            plan.events
        )));
    }
    Ok(Phase {
        ingest: bus.take_latency(),
        visible,
        lag,
    })
}

/// The producer thread: sends `plan.events` on `pace`'s schedule, sleeping while none is due,
/// each event stamped with its own intended time; returns how late it woke for each (ns).
fn spawn_producer(
    mut producer: Producer,
    plan: Plan,
    pace: Pace,
    start_line: Arc<StartLine>,
    failed: Arc<AtomicBool>,
) -> io::Result<ProducerThread<Histogram<u64>>> {
    thread::Builder::new()
        .name("net-latency-producer".to_owned())
        .spawn(move || {
            crate::cpu::pin_off_shards(SHARDS);
            let sends = feed::PacedSends {
                id: PRODUCER_ID,
                events: plan.events,
                payload_bytes: plan.payload_bytes,
                wake_ns: plan.wake_period_us.saturating_mul(1_000),
            };
            let sent = feed::send_paced(&mut producer, sends, &pace, &start_line);
            if sent.is_err() {
                failed.store(true, Ordering::Release);
            }
            sent
        })
}

/// The consumer: follows the bus from its start with `poll_wait` (sleeping whenever it has
/// caught up) until it has read `plan.events` events, each checked to be the next one sent;
/// returns each event's visible latency (ns).
/// Gives up when another thread of the phase failed.
fn follow_tail(
    bus: &Bus,
    plan: Plan,
    pace: &Pace,
    start_line: &StartLine,
    failed: &AtomicBool,
) -> Result<Histogram<u64>, Failure> {
    crate::cpu::pin_off_shards(SHARDS);
    let read = read_all(bus, plan, pace, start_line, failed);
    if read.is_err() {
        failed.store(true, Ordering::Release);
    }
    read
}

fn read_all(
    bus: &Bus,
    plan: Plan,
    pace: &Pace,
    start_line: &StartLine,
    failed: &AtomicBool,
) -> Result<Histogram<u64>, Failure> {
    let mut latency = workload::latency_histogram();
    let mut cursor = Cursor::start();
    let mut read = 0;
    start_line.wait();
    let schedule = pace.schedule();
    let mut last_progress = Instant::now();
    while read < plan.events {
        if failed.load(Ordering::Acquire) {
            let msg = "the consumer stopped: another thread of the phase failed";
            return Err(Failure::Engine(msg.to_owned()));
        }
        // Sleeps until the shard publishes (or the stall timeout): a consumer that spins, even
        // one yielding between empty polls, holds the core on which the kernel completes the
        // shard's writes, and on a 2-core machine stalled the shard for ~0.4 s at a time.
        let response = bus
            .poll_wait(&cursor, POLL_LIMIT, POLL_WAIT)
            .map_err(|e| Failure::engine("poll", e))?;
        let read_ns = monotonic_ns();
        readback::check_response(&response)?;
        if response.events.is_empty() {
            if last_progress.elapsed() > POLL_STALL_TIMEOUT {
                return Err(Failure::Verification(format!(
                    "read {read} of {} events, then nothing for {POLL_STALL_TIMEOUT:?}",
                    plan.events
                )));
            }
            continue;
        }
        for event in &response.events {
            next_event(&event.payload, read, plan.payload_bytes).map_err(Failure::Verification)?;
            latency.saturating_record(read_ns.saturating_sub(schedule.intended_ns(read)));
            read += 1;
        }
        cursor = response.next;
        last_progress = Instant::now();
    }
    Ok(latency)
}

/// Checks that `payload` is event `expected` of the producer, whole: one shard and one
/// producer keep the events in sending order.
fn next_event(payload: &[u8], expected: u64, payload_bytes: usize) -> Result<(), String> {
    let want = payload::Identity {
        producer: PRODUCER_ID,
        counter: expected,
    };
    match payload::identity(payload) {
        Some(got) if got == want && payload.len() == payload_bytes => Ok(()),
        got => Err(format!(
            "expected event {expected} ({payload_bytes} B), read {got:?} ({} B)",
            payload.len()
        )),
    }
}

fn print_report(args: &Args, base: &Path, plan: Plan, m: &Measured) {
    let command = command(args, plan);
    let ratios = m.ratios();
    print!("{}", table(base, plan, m).render());
    println!(
        "  durable p99 / raw write+fdatasync p99: {:.2}x",
        ratios.durable_p99
    );
    println!("  visible p99 / raw write p99: {:.2}x", ratios.visible_p99);
    println!(
        "  poll stall, ingest p99 with / without a consumer: {:.2}x",
        ratios.poll_stall
    );
    for line in notes(plan, m) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    archive::emit(json(plan, m, ratios, command), args.json);
}

/// Each p99 ratio's two sides, and the ingest phases with and without a consumer, for
/// `net-bench report`'s plots.
fn archive_latency(m: &Measured) {
    archive::latency("durable ack", "net (every_batch)", &m.durable.ingest);
    archive::latency("durable ack", "write + fdatasync", &m.raw_sync.latency);
    if let Some(visible) = &m.visible.visible {
        archive::latency("send → visible", "net (fsync never)", visible);
    }
    archive::latency("send → visible", "O_DIRECT write", &m.raw_write.latency);
    archive::latency("ingest", "net, no consumer", &m.ingest.ingest);
    archive::latency("ingest", "net, consumer following", &m.visible.ingest);
}

/// The table's columns, each ratio's two sides next to each other: durable / raw sync,
/// ingest+poll / ingest (the poll stall), visible / raw write.
const COLUMNS: [&str; 6] = [
    "durable",
    "raw sync",
    "ingest",
    "ingest+poll",
    "visible",
    "raw write",
];

fn table(base: &Path, plan: Plan, m: &Measured) -> Table {
    let title = format!(
        "latency: {SHARDS} shard, 1 producer paced at {} events/s (sleeping, waking at most \
         every {} µs, CO-corrected), {} events x {} B per phase, under {}",
        report::format_count(plan.rate_per_s as f64),
        plan.wake_period_us,
        report::format_count(plan.events as f64),
        plan.payload_bytes,
        base.display()
    );
    let columns = [
        m.durable_percentiles(),
        Percentiles::from_ns(&m.raw_sync.latency),
        Percentiles::from_ns(&m.ingest.ingest),
        Percentiles::from_ns(&m.visible.ingest),
        m.visible_percentiles(),
        Percentiles::from_ns(&m.raw_write.latency),
    ];
    let lags = [&m.durable, &m.ingest, &m.visible].map(|p| Percentiles::from_ns(&p.lag));
    let lag = |pick: fn(&Percentiles) -> f64| {
        let [d, i, v] = lags.map(|p| report::format_us(pick(&p)));
        vec![d, "-".into(), i, v.clone(), v, "-".into()]
    };
    let mut t = Table::new(&title, &COLUMNS);
    t.heading("durable: ingest -> written and fdatasync'd (fsync every_batch)")
        .heading("ingest: ingest -> written (fsync never); ingest+poll: the same while a consumer")
        .heading("  polls flat out, and visible: intended send -> read by that consumer")
        .heading("raw sync, raw write: one 4 KiB O_DIRECT append, with and without fdatasync")
        .latency_rows("latency", &columns)
        .row(
            "samples",
            columns.iter().map(|p| p.samples.to_string()).collect(),
        )
        .row("send lag p99 (µs)", lag(|p| p.p99_us))
        .row("send lag max (µs)", lag(|p| p.max_us));
    t
}

/// Lines under the table: anything that weakens a figure.
fn notes(plan: Plan, m: &Measured) -> Vec<String> {
    let mut notes = Vec::new();
    if !m.raw_sync.direct || !m.raw_write.direct {
        notes.push("warning: the file system refused O_DIRECT: raw baselines are buffered".into());
    }
    for (name, phase) in [
        ("durable", &m.durable),
        ("ingest", &m.ingest),
        ("ingest+poll", &m.visible),
    ] {
        if phase.ingest.len() != plan.events {
            notes.push(format!(
                "warning: the {name} phase has {} latency samples for {} events",
                phase.ingest.len(),
                plan.events
            ));
        }
    }
    notes
}

fn json(plan: Plan, m: &Measured, ratios: Ratios, command: String) -> String {
    let lag_p99 = |phase: &Phase| Percentiles::from_ns(&phase.lag).p99_us;
    let mut json = JsonLine::default();
    json.field("scenario", "latency")
        .field("rate_per_s", plan.rate_per_s)
        .field("events", plan.events)
        .field("payload_bytes", plan.payload_bytes)
        .field("shards", SHARDS)
        .field("producers", 1)
        .field("wake_period_us", plan.wake_period_us)
        .latency("durable_", &m.durable_percentiles())
        .latency("raw_fsync_", &Percentiles::from_ns(&m.raw_sync.latency))
        .field("durable_p99_ratio", report::round_to(ratios.durable_p99, 3))
        .latency("visible_", &m.visible_percentiles())
        .latency("raw_write_", &Percentiles::from_ns(&m.raw_write.latency))
        .field("visible_p99_ratio", report::round_to(ratios.visible_p99, 3))
        .latency("ingest_", &Percentiles::from_ns(&m.ingest.ingest))
        .latency(
            "ingest_with_poller_",
            &Percentiles::from_ns(&m.visible.ingest),
        )
        .field("poll_stall_ratio", report::round_to(ratios.poll_stall, 3))
        .field("durable_send_lag_p99_us", lag_p99(&m.durable))
        .field("ingest_send_lag_p99_us", lag_p99(&m.ingest))
        .field("visible_send_lag_p99_us", lag_p99(&m.visible))
        .field("direct_io", m.raw_sync.direct && m.raw_write.direct)
        .field("command", command);
    json.render()
}

fn command(args: &Args, plan: Plan) -> String {
    let mut flags = vec![
        ("rate", plan.rate_per_s.to_string()),
        ("events", plan.events.to_string()),
        ("payload-bytes", plan.payload_bytes.to_string()),
        ("wake-us", plan.wake_period_us.to_string()),
        ("raw-samples", args.raw_samples.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("latency", &flags, args.dir.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        crate::parse_args("latency", line)
    }

    #[test]
    fn default_plan_is_two_seconds_at_a_hundred_thousand_events_per_s() {
        let default = plan(&args(&[]));
        assert_eq!(
            default,
            Plan {
                rate_per_s: 100_000,
                events: 200_000,
                payload_bytes: 100,
                wake_period_us: 100,
            }
        );
        let given = plan(&args(&["--rate", "5000", "--events", "7"]));
        assert_eq!((given.rate_per_s, given.events), (5_000, 7));
        assert_eq!(plan(&args(&["--rate", "300000"])).events, 600_000);
    }

    #[test]
    fn reproduce_command_spells_out_every_default() {
        let a = args(&["--json"]);
        assert_eq!(
            command(&a, plan(&a)),
            "cargo run --release -p net-bench -- latency --rate 100000 --events 200000 \
             --payload-bytes 100 --wake-us 100 --raw-samples 2000 --json"
        );
    }

    #[test]
    fn the_consumer_accepts_only_the_next_event_whole() {
        let mut buf = vec![0u8; 100];
        payload::fill(&mut buf, PRODUCER_ID, 41);
        assert_eq!(next_event(&buf, 41, 100), Ok(()));
        assert!(next_event(&buf, 42, 100).is_err(), "a lost event");
        assert!(next_event(&buf, 40, 100).is_err(), "a repeated event");
        assert!(next_event(&buf[..50], 41, 100).is_err(), "a short payload");
        assert!(
            next_event(&buf[..5], 41, 100).is_err(),
            "no identity at all"
        );
        payload::fill(&mut buf, PRODUCER_ID + 1, 41);
        assert!(
            next_event(&buf, 41, 100).is_err(),
            "another producer's event"
        );
    }

    #[test]
    fn ratios_guard_against_an_empty_baseline() {
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert_eq!(ratio(3.0, 0.0), 0.0);
    }
}
