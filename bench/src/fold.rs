//! `net-bench fold`: the memories fold (net-cortex) on a bus — how fast it folds, what it
//! costs ingest, and how much faster restoring from a snapshot is than replaying the log.
//!
//! Three measurements, all in the same run:
//!
//! - **Ingest with the fold off and on.** Each round ingests `--ingest-events` memories events
//!   into a fresh bus without a fold and into a fresh bus with the memories fold registered
//!   (inline on the shard thread while it keeps up), in alternating order from round to round;
//!   the window runs from the producers' release until `flush` returns (every event
//!   persisted). `ingest_ratio` is the median of
//!   the rounds' on/off ratios. Net runs with fsync `never` here, like `ingest`, so the figure
//!   is about CPU, not the disk's sync latency (a synced run hides the fold in the sync wait).
//! - **Fold throughput.** `fold_events_per_s` is events folded per second of time spent inside
//!   the fold (`apply_ns` in the cortex's stats: the shard's inline applies and the fold
//!   thread's catch-up), per shard, median over the rounds' fold-on runs. The full replay below
//!   gives the end-to-end figure too (`replay_events_per_s`: reading the log and folding).
//! - **Restore against replay.** A log of `--events` events is written once (with the fold
//!   on) and a snapshot taken at 99% of it; then, per round, the bus is reopened and the fold
//!   started twice: from the snapshot (load it, replay the last 1%) and from nothing (replay
//!   all of it). `restore_ratio` = restore time / replay time (medians); both end states are
//!   checked equal.
//!
//! - **The fold alone.** The same events applied with `Fold::apply` on this thread, without a
//!   bus, timed in this thread's CPU time (so a busy machine's other work is not counted as
//!   the fold's): `fold_alone_ns_per_event` with a version published every 2,000 events (and
//!   held until the next one replaces it, as a reader would), `fold_alone_unpublished_ns_per_event`
//!   with none.
//!
//! Allocations per event are counted too: with the fold off (ingest allocates nothing) and
//! with it on, until every event is folded (the memories fold stores data: a record, its value
//! and its tag set per stored event, plus the copied map nodes after each published version).
//!
//! Payloads are memories events over `--ids` ids: mostly `stored` (unversioned, tags from a
//! small set, a JSON object value), with `pin`, `tags` and `deleted` mixed in, each event keyed
//! by its memory's id.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use net_cortex::memories::{Memories, MemoriesState};
use net_cortex::{Cortex, CortexConfig, Fold, FoldEvent, FoldState, FoldView, SnapshotConfig};
use net_engine::{Bus, Config, EventId, FsyncPolicy, Seq, ShardId};

use crate::report::{self, JsonLine, Table, format_count, round_to};
use crate::{Failure, alloc, parse_positive};

/// Time the bus gets to drain at shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for a fold to catch up.
const FOLD_DEADLINE: Duration = Duration::from_secs(600);
/// The fold alone: a version published every this many events.
const ALONE_PUBLISH_EVERY: u64 = 2_000;
/// The snapshot is taken after this share of the restore log (per mille).
const SNAPSHOT_AT_PER_MILLE: u64 = 990;
const NAME: &str = "memories";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the log that restore and replay are measured on.
    #[arg(long, default_value_t = 10_000_000, value_parser = parse_positive)]
    events: u64,
    /// Events per ingest run (fold off and fold on, each round).
    #[arg(long, default_value_t = 2_000_000, value_parser = parse_positive)]
    ingest_events: u64,
    /// Distinct memory ids.
    #[arg(long, default_value_t = 100_000, value_parser = parse_positive)]
    ids: u64,
    /// Shards.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    shards: u64,
    /// Producer threads.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    producers: u64,
    /// Fold on the fold's own thread only (`"inline": false`), never on the shard thread.
    #[arg(long)]
    no_inline: bool,
    /// The fold thread's nice value (`fold_thread_nice`; 0: the process's priority).
    #[arg(long, default_value_t = 10)]
    fold_nice: u8,
    /// Rounds of each measurement; the figures are medians.
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    rounds: u64,
    /// Directory under which the runs get their temporary directories.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

/// The memories event for event number `n`.
fn payload(n: u64, ids: u64) -> String {
    let id = n % ids;
    match n % 20 {
        17 => format!("{{\"pin\":{{\"id\":\"m{id:08}\"}}}}"),
        18 => format!("{{\"tags\":{{\"id\":\"m{id:08}\",\"add\":[\"hot\"],\"remove\":[\"t1\"]}}}}"),
        19 if n % 60 == 59 => format!("{{\"deleted\":{{\"id\":\"m{id:08}\"}}}}"),
        _ => format!(
            "{{\"stored\":{{\"id\":\"m{id:08}\",\"value\":{{\"n\":1.0,\"at\":{n}}},\"tags\":[\"t{}\",\"t{}\"]}}}}",
            n % 7,
            n % 3
        ),
    }
}

/// Payloads cycled through by the producers (made before any window opens).
struct Pool {
    items: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pool {
    fn new(ids: u64) -> Pool {
        let len = (ids * 3).max(4096);
        let items = (0..len)
            .map(|n| {
                let key = format!("m{:08}", n % ids).into_bytes();
                (key, payload(n, ids).into_bytes())
            })
            .collect();
        Pool { items }
    }

    fn get(&self, n: u64) -> (&[u8], &[u8]) {
        let i = usize::try_from(n % self.items.len() as u64).expect("pool index fits usize");
        let (k, p) = &self.items[i];
        (k, p)
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The fold alone over `events` of the pool's events (see the module docs): CPU ns per event,
/// a version published every `every` events (0: none).
fn fold_alone(pool: &Pool, events: u64, every: u64) -> Result<f64, Failure> {
    let mut fold = Memories::new();
    let mut state = MemoriesState::default();
    let mut held = None;
    let start = thread_cpu();
    for n in 0..events {
        let event = FoldEvent {
            id: EventId {
                shard: ShardId(0),
                seq: Seq(n),
            },
            ts_ns: n,
            origin: None,
            payload: pool.get(n).1,
        };
        fold.apply(&mut state, &event)
            .map_err(|e| Failure::Verification(format!("the fold refused an event: {e}")))?;
        if every > 0 && n % every == every - 1 {
            held = Some(state.publish());
        }
    }
    let ns = (thread_cpu() - start).as_nanos() as f64 / events.max(1) as f64;
    drop(held);
    Ok(ns)
}

fn start_bus(args: &Args, dir: &Path) -> Result<Bus, Failure> {
    let defaults = Config::default();
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        shards: Some(usize::try_from(args.shards).expect("shard count fits usize")),
        ..defaults
    };
    config.storage.fsync = FsyncPolicy::Never;
    Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))
}

/// Sends events `from..to` from `args.producers` threads and waits until all are persisted;
/// returns the window.
fn ingest(bus: &Bus, args: &Args, pool: &Pool, from: u64, to: u64) -> Result<Duration, Failure> {
    let producers = args.producers;
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<(), Failure> {
        let mut handles = Vec::new();
        for t in 0..producers {
            let mut p = bus
                .producer()
                .map_err(|e| Failure::engine("making a producer", e))?;
            handles.push(scope.spawn(move || -> Result<(), Failure> {
                let mut n = from + t;
                while n < to {
                    let (key, payload) = pool.get(n);
                    p.send(key, payload)
                        .map_err(|e| Failure::engine("sending", e))?;
                    n += producers;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().expect("producer thread")?;
        }
        Ok(())
    })?;
    bus.flush().map_err(|e| Failure::engine("flush", e))?;
    Ok(start.elapsed())
}

fn memories_config(args: &Args, snapshots: Option<&Path>) -> CortexConfig {
    let mut c = CortexConfig::new(NAME);
    c.inline = !args.no_inline;
    c.fold_thread_nice = args.fold_nice;
    c.snapshot = snapshots.map(|dir| SnapshotConfig {
        every_events: 0,
        on_shutdown: false,
        ..SnapshotConfig::in_dir(dir)
    });
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One round of the ingest comparison.
#[derive(Debug)]
struct IngestRound {
    off_per_s: f64,
    on_per_s: f64,
    fold_per_s: f64,
    lag_at_flush: u64,
    allocs_off: f64,
    allocs_on: f64,
}

/// One ingest run without a fold: its window and allocations.
fn ingest_off(args: &Args, pool: &Pool) -> Result<(Duration, u64), Failure> {
    let dir = crate::scratch_dir(args.dir.as_deref(), "fold-off")?;
    let bus = start_bus(args, dir.path())?;
    let a = alloc::snapshot();
    let t = ingest(&bus, args, pool, 0, args.ingest_events)?;
    let allocs = alloc::snapshot().since(a).allocations;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok((t, allocs))
}

/// One round: the run without the fold and the run with it, in the order given (rounds
/// alternate it, so that a disturbance that comes and goes on a shared machine does not always
/// land on the same side).
fn ingest_round(args: &Args, pool: &Pool, off_first: bool) -> Result<IngestRound, Failure> {
    let n = args.ingest_events;
    let mut off = if off_first {
        Some(ingest_off(args, pool)?)
    } else {
        None
    };
    let dir = crate::scratch_dir(args.dir.as_deref(), "fold-on")?;
    let bus = start_bus(args, dir.path())?;
    let cortex = Cortex::start(&bus, Memories::new(), memories_config(args, None))
        .map_err(|e| Failure::engine("starting the fold", e))?;
    let a = alloc::snapshot();
    let t = ingest(&bus, args, pool, 0, n)?;
    let lag_at_flush: u64 = cortex.stats().shards.iter().map(|s| s.lag).sum();
    if !cortex.wait_caught_up(FOLD_DEADLINE) {
        return Err(Failure::Verification(format!(
            "the fold did not catch up: {:?}",
            cortex.stats()
        )));
    }
    // Until everything is folded: ingest itself allocates nothing, so this is the fold's.
    let allocs_on = alloc::snapshot().since(a).allocations;
    let stats = cortex.stats();
    let folded: u64 = stats.shards.iter().map(|s| s.applied + s.skipped).sum();
    if folded != n {
        return Err(Failure::Verification(format!(
            "the fold folded {folded} of {n} events: {stats:?}"
        )));
    }
    // Per shard: events over the time spent in the fold, averaged over shards.
    let per_shard: Vec<f64> = stats
        .shards
        .iter()
        .map(|s| (s.applied + s.skipped) as f64 / (s.apply_ns.max(1) as f64 / 1e9))
        .collect();
    drop(cortex);
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    drop(dir);
    if off.is_none() {
        off = Some(ingest_off(args, pool)?);
    }
    let off = off.expect("the run without the fold ran");
    Ok(IngestRound {
        off_per_s: report::per_s(n, off.0),
        on_per_s: report::per_s(n, t),
        fold_per_s: per_shard.iter().sum::<f64>() / per_shard.len().max(1) as f64,
        lag_at_flush,
        allocs_off: off.1 as f64 / n as f64,
        allocs_on: allocs_on as f64 / n as f64,
    })
}

/// What writing the restore log measured.
#[derive(Debug)]
struct RestoreLog {
    snapshot_end: u64,
    snapshot_bytes: u64,
    snapshot_write: Duration,
}

fn write_restore_log(
    args: &Args,
    pool: &Pool,
    bus_dir: &Path,
    snap_dir: &Path,
) -> Result<RestoreLog, Failure> {
    let bus = start_bus(args, bus_dir)?;
    let cortex = Cortex::start(&bus, Memories::new(), memories_config(args, Some(snap_dir)))
        .map_err(|e| Failure::engine("starting the fold", e))?;
    let at = args.events * SNAPSHOT_AT_PER_MILLE / 1000;
    ingest(&bus, args, pool, 0, at)?;
    if !cortex.wait_caught_up(FOLD_DEADLINE) {
        return Err(Failure::Verification("the fold did not catch up".into()));
    }
    let t = Instant::now();
    let written = cortex
        .snapshot()
        .map_err(|e| Failure::engine("writing the snapshot", e))?;
    let snapshot_write = t.elapsed();
    ingest(&bus, args, pool, at, args.events)?;
    drop(cortex);
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok(RestoreLog {
        snapshot_end: written.iter().map(|w| w.end).sum(),
        snapshot_bytes: written.iter().map(|w| w.bytes).sum(),
        snapshot_write,
    })
}

/// One restore and one full replay on the reopened bus: (restore, replay) times.
fn restore_round(
    args: &Args,
    bus_dir: &Path,
    snap_dir: &Path,
) -> Result<(Duration, Duration), Failure> {
    let bus = start_bus(args, bus_dir)?;
    let t = Instant::now();
    let restored = Cortex::start(&bus, Memories::new(), memories_config(args, Some(snap_dir)))
        .map_err(|e| Failure::engine("restoring the fold", e))?;
    let restore = t.elapsed();
    for r in restored.restore_reports() {
        if r.snapshot.is_none() || r.fell_back() {
            return Err(Failure::Verification(format!(
                "restore did not use the snapshot: {r:?}"
            )));
        }
    }
    let restored_views = restored.views();
    drop(restored);
    let t = Instant::now();
    let replayed = Cortex::start(&bus, Memories::new(), memories_config(args, None))
        .map_err(|e| Failure::engine("replaying the fold", e))?;
    let replay = t.elapsed();
    let replayed_views = replayed.views();
    check_equal(&restored_views, &replayed_views, args.events)?;
    drop(replayed);
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok((restore, replay))
}

/// The restored and the replayed states agree: ends, counts and every live memory.
fn check_equal(
    a: &[FoldView<MemoriesState>],
    b: &[FoldView<MemoriesState>],
    events: u64,
) -> Result<(), Failure> {
    for (x, y) in a.iter().zip(b) {
        if x.folded_end() != y.folded_end() || x.state().counts() != y.state().counts() {
            return Err(Failure::Verification(format!(
                "restore and replay differ: end {} / {}, {:?} / {:?}",
                x.folded_end(),
                y.folded_end(),
                x.state().counts(),
                y.state().counts()
            )));
        }
        let all = net_cortex::memories::Query::default();
        let (qx, qy) = (x.state().query(&all), y.state().query(&all));
        if qx != qy {
            return Err(Failure::Verification(
                "restore and replay hold different memories".into(),
            ));
        }
    }
    let folded: u64 = a.iter().map(FoldView::folded_end).sum();
    if folded != events {
        return Err(Failure::Verification(format!(
            "restore folded {folded} of {events} events"
        )));
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let pool = Pool::new(args.ids);
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let ingest = || ingest_round(args, &pool, round % 2 == 0);
        rounds.push(crate::progress::during(
            "fold: ingest, fold on and off",
            ingest,
        )?);
    }

    let alone = fold_alone(&pool, args.ingest_events, ALONE_PUBLISH_EVERY)?;
    let alone_unpublished = fold_alone(&pool, args.ingest_events, 0)?;

    let work = crate::scratch_dir(args.dir.as_deref(), "fold-restore")?;
    let bus_dir = work.path().join("bus");
    let snap_dir = work.path().join("snapshots");
    let log = write_restore_log(args, &pool, &bus_dir, &snap_dir)?;
    let mut restores = Vec::new();
    let mut replays = Vec::new();
    for _ in 0..args.rounds {
        let restore = || restore_round(args, &bus_dir, &snap_dir);
        let (restore, replay) = crate::progress::during("fold: restore and replay", restore)?;
        restores.push(restore.as_secs_f64() * 1e3);
        replays.push(replay.as_secs_f64() * 1e3);
    }
    work.close()
        .map_err(Failure::io("removing the restore scratch directory"))?;

    let fold_per_s = median(rounds.iter().map(|r| r.fold_per_s).collect());
    let ratio = median(rounds.iter().map(|r| r.on_per_s / r.off_per_s).collect());
    let ratio_of_medians = median(rounds.iter().map(|r| r.on_per_s).collect())
        / median(rounds.iter().map(|r| r.off_per_s).collect()).max(f64::MIN_POSITIVE);
    let off = median(rounds.iter().map(|r| r.off_per_s).collect());
    let on = median(rounds.iter().map(|r| r.on_per_s).collect());
    let lag = median(rounds.iter().map(|r| r.lag_at_flush as f64).collect());
    let allocs_off = median(rounds.iter().map(|r| r.allocs_off).collect());
    let allocs_on = median(rounds.iter().map(|r| r.allocs_on).collect());
    let restore_ms = median(restores.clone());
    let replay_ms = median(replays.clone());
    let restore_ratio = restore_ms / replay_ms.max(f64::MIN_POSITIVE);
    let replay_per_s = args.events as f64 / (replay_ms / 1e3).max(f64::MIN_POSITIVE);

    let mut table = Table::new(
        &format!(
            "net-bench fold: memories over {} ids, {} shard(s), {} producer(s), fold {}, medians of {} rounds",
            args.ids,
            args.shards,
            args.producers,
            if args.no_inline {
                "on its own thread"
            } else {
                "inline while it keeps up"
            },
            args.rounds
        ),
        &["value"],
    );
    table
        .heading(&format!(
            "ingest, {} events per run (fsync never)",
            args.ingest_events
        ))
        .row("events/s, fold off", vec![format_count(off)])
        .row("events/s, fold on", vec![format_count(on)])
        .row(
            "ingest_ratio (median of rounds' on / off)",
            vec![format!("{ratio:.3}")],
        )
        .row(
            "median on / median off",
            vec![format!("{ratio_of_medians:.3}")],
        )
        .row("fold lag at flush (events)", vec![format_count(lag)])
        .row(
            "allocations/event, fold off",
            vec![format!("{allocs_off:.2}")],
        )
        .row(
            "allocations/event, fold on",
            vec![format!("{allocs_on:.2}")],
        )
        .heading("fold")
        .row(
            "events/s per shard in the fold",
            vec![format_count(fold_per_s)],
        )
        .row(
            "ns per event in the fold",
            vec![format!("{:.1}", 1e9 / fold_per_s.max(1.0))],
        )
        .row(
            &format!("fold alone, CPU ns/event, a version every {ALONE_PUBLISH_EVERY}"),
            vec![format!("{alone:.1}")],
        )
        .row(
            "fold alone, CPU ns/event, no versions",
            vec![format!("{alone_unpublished:.1}")],
        )
        .heading(&format!("restore, log of {} events", args.events))
        .row(
            "snapshot at event",
            vec![format_count(log.snapshot_end as f64)],
        )
        .row(
            "snapshot bytes",
            vec![format_count(log.snapshot_bytes as f64)],
        )
        .row(
            "snapshot write (ms)",
            vec![format!("{:.1}", log.snapshot_write.as_secs_f64() * 1e3)],
        )
        .row("restore (ms)", vec![format!("{restore_ms:.1}")])
        .row("full replay (ms)", vec![format!("{replay_ms:.1}")])
        .row("restore_ratio", vec![format!("{restore_ratio:.4}")])
        .row(
            "replay events/s (read + fold)",
            vec![format_count(replay_per_s)],
        );
    println!("{}", table.render());
    println!(
        "reproduce: {}",
        crate::reproduce_command(
            "fold",
            &[
                ("events", args.events.to_string()),
                ("ingest-events", args.ingest_events.to_string()),
                ("ids", args.ids.to_string()),
                ("shards", args.shards.to_string()),
                ("producers", args.producers.to_string()),
                ("rounds", args.rounds.to_string()),
                ("fold-nice", args.fold_nice.to_string()),
            ]
            .into_iter()
            .chain(args.no_inline.then(|| ("no-inline", String::new())))
            .collect::<Vec<_>>(),
            args.dir.as_ref(),
        )
    );
    {
        let mut json = JsonLine::default();
        json.field("scenario", "fold")
            .field("events", args.events)
            .field("ingest_events", args.ingest_events)
            .field("ids", args.ids)
            .field("shards", args.shards)
            .field("producers", args.producers)
            .field("rounds", args.rounds)
            .field("inline", !args.no_inline)
            .field("fold_thread_nice", args.fold_nice)
            .field("fold_events_per_s", round_to(fold_per_s, 0))
            .field("fold_ns_per_event", round_to(1e9 / fold_per_s.max(1.0), 1))
            .field("fold_alone_ns_per_event", round_to(alone, 1))
            .field(
                "fold_alone_unpublished_ns_per_event",
                round_to(alone_unpublished, 1),
            )
            .field("ingest_events_per_s_off", round_to(off, 0))
            .field("ingest_events_per_s_on", round_to(on, 0))
            .field("ingest_ratio", round_to(ratio, 3))
            .field("ingest_ratio_of_medians", round_to(ratio_of_medians, 3))
            .field("fold_lag_at_flush", round_to(lag, 0))
            .field("allocs_per_event_off", round_to(allocs_off, 2))
            .field("allocs_per_event_on", round_to(allocs_on, 2))
            .field("snapshot_end", log.snapshot_end)
            .field("snapshot_bytes", log.snapshot_bytes)
            .field(
                "snapshot_write_ms",
                round_to(log.snapshot_write.as_secs_f64() * 1e3, 1),
            )
            .field("restore_ms", round_to(restore_ms, 1))
            .field("replay_ms", round_to(replay_ms, 1))
            .field("restore_ratio", round_to(restore_ratio, 4))
            .field("replay_events_per_s", round_to(replay_per_s, 0))
            .field(
                "restore_ms_rounds",
                restores.iter().map(|x| round_to(*x, 1)).collect::<Vec<_>>(),
            )
            .field(
                "replay_ms_rounds",
                replays.iter().map(|x| round_to(*x, 1)).collect::<Vec<_>>(),
            )
            .field(
                "ingest_ratio_rounds",
                rounds
                    .iter()
                    .map(|r| round_to(r.on_per_s / r.off_per_s, 3))
                    .collect::<Vec<_>>(),
            );
        crate::archive::emit(json.render(), args.json);
    }
    Ok(())
}
