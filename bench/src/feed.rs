//! Feeding a net bus from producer threads and timing the window until every event is
//! persisted: the measurement shared by `ingest` and `demo`.
//!
//! Producers are spawned, handed their `Producer` and parked on a `StartLine` before the
//! window opens, so thread creation and lane set-up are not counted. The window opens just
//! before they are released and closes when the bus's own counters say that this phase's
//! events are all persisted or dropped (the counters run over the bus's life, so a phase
//! counts from where the previous one left them). The main thread watches those counters with
//! short sleeps: `StatsHandle::totals` does not allocate, so the watcher adds nothing to the
//! allocation count it is measuring.
//!
//! `feed` is a closed loop; `feed_paced` sends on a `pace` schedule with `send_stamped`, so the
//! shards measure latency from each event's intended send time.

use crate::pace::{self, Pace};
use crate::workload::{self, StartLine, Workload};
use crate::{Failure, alloc, cpu, payload, progress};
use hdrhistogram::Histogram;
use net_engine::{Bus, Producer, Totals, monotonic_ns};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How often the main thread looks at the counters while it waits.
/// Short enough to close the window within 0.2 ms of the last write, long enough that the
/// watcher's own wake-ups cost well under 1% of a core.
const WATCH_INTERVAL: Duration = Duration::from_micros(200);

/// How long persistence may make no progress before the run is declared stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the window measured.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub elapsed: Duration,
    pub allocations: alloc::Snapshot,
    /// Process CPU time in the window (all threads, net's shards included).
    pub cpu: Option<Duration>,
    /// The bus's counters at the moment the window closed.
    pub totals: Totals,
}

/// Sends `work.events` events from `work.producers` threads as fast as the bus takes them
/// (closed loop) and waits until the bus has persisted or dropped all of them.
pub fn feed(bus: &Bus, work: &Workload) -> Result<Window, Failure> {
    let spawn = |index, producer, start_line, failed| {
        spawn_producer(index, producer, *work, start_line, failed)
    };
    let (window, _) = drive(bus, work, spawn, || ())?;
    Ok(window)
}

/// What a paced phase measured besides the bus's own latency histogram.
#[derive(Debug)]
pub struct Paced {
    /// Events persisted and dropped in this phase alone.
    pub persisted: u64,
    pub dropped: u64,
    /// How late each send started against its intended time, ns (`pace`).
    pub lag: Histogram<u64>,
    /// From the producers' release until this phase's events were all settled.
    pub elapsed: Duration,
}

/// Sends `work.events` events from `work.producers` threads on `pace`'s open-loop schedule
/// and waits until the bus has persisted or dropped all of them. The bus may have run
/// earlier phases: only this phase's events are waited for and counted.
pub fn feed_paced(bus: &Bus, work: &Workload, pace: &Pace) -> Result<Paced, Failure> {
    let before = bus.stats_handle().totals();
    let spawn = |index, producer, start_line, failed| {
        spawn_paced_producer(index, producer, *work, pace.clone(), start_line, failed)
    };
    let (window, lags) = drive(bus, work, spawn, || pace.start(monotonic_ns()))?;
    let mut lag = workload::latency_histogram();
    for producer_lag in &lags {
        lag.add(producer_lag).expect("histograms share bounds");
    }
    Ok(Paced {
        persisted: window.totals.persisted - before.persisted,
        dropped: window.totals.dropped - before.dropped,
        lag,
        elapsed: window.elapsed,
    })
}

/// Spawns the producers (`spawn` gets each one's index, `Producer`, start line and failure
/// flag), releases them (after `at_release`) and times the window until this phase's events
/// are all settled; returns what each producer thread returned.
fn drive<T, F>(
    bus: &Bus,
    work: &Workload,
    spawn: F,
    at_release: impl FnOnce(),
) -> Result<(Window, Vec<T>), Failure>
where
    F: Fn(usize, Producer, Arc<StartLine>, Arc<AtomicBool>) -> std::io::Result<ProducerThread<T>>,
{
    let stats = bus.stats_handle();
    let before = stats.totals();
    let Producers {
        threads,
        start_line,
        failed,
    } = spawn_all(bus, work, spawn)?;

    // Readings come before the release: after it, producers could get ahead of them.
    start_line.wait_ready();
    let cpu_before = cpu::process_time();
    let allocations_before = alloc::snapshot();
    let start = Instant::now();
    at_release();
    start_line.release();
    let target = before.persisted + before.dropped + work.events;
    let watched = watch(&|| stats.totals(), target, &failed);
    let elapsed = start.elapsed();
    let allocations = alloc::snapshot().since(allocations_before);
    let cpu = cpu::process_time()
        .zip(cpu_before)
        .map(|(end, start)| end - start);

    let totals = match watched {
        Ok(totals) => totals,
        // Blocked producers may never return, so only the finished ones are joined.
        Err(failure) => return Err(finished_error(threads).unwrap_or(failure)),
    };
    let returned = threads.into_iter().map(join).collect::<Result<_, _>>()?;
    let window = Window {
        elapsed,
        allocations,
        cpu,
        totals,
    };
    Ok((window, returned))
}

/// Producer threads spawned and parked on their start line, and the flag any of them raises
/// when a send fails.
#[derive(Debug)]
pub struct Producers<T> {
    pub threads: Vec<ProducerThread<T>>,
    pub start_line: Arc<StartLine>,
    pub failed: Arc<AtomicBool>,
}

/// Creates `work.producers` producers of `bus` and spawns a thread for each with `spawn`; the
/// threads wait on the start line until released.
pub fn spawn_all<T, F>(bus: &Bus, work: &Workload, spawn: F) -> Result<Producers<T>, Failure>
where
    F: Fn(usize, Producer, Arc<StartLine>, Arc<AtomicBool>) -> std::io::Result<ProducerThread<T>>,
{
    let failed = Arc::new(AtomicBool::new(false));
    let start_line = StartLine::new(work.producers);
    let mut threads = Vec::with_capacity(work.producers);
    for index in 0..work.producers {
        let producer = bus
            .producer()
            .map_err(|e| Failure::engine("creating a producer", e))?;
        let spawned = spawn(
            index,
            producer,
            Arc::clone(&start_line),
            Arc::clone(&failed),
        );
        threads.push(spawned.map_err(Failure::io("spawning a producer thread"))?);
    }
    Ok(Producers {
        threads,
        start_line,
        failed,
    })
}

pub type ProducerThread<T> = thread::JoinHandle<Result<T, String>>;

pub fn join<T>(thread: ProducerThread<T>) -> Result<T, Failure> {
    match thread.join() {
        Ok(Ok(returned)) => Ok(returned),
        Ok(Err(send_failure)) => Err(Failure::Engine(send_failure)),
        Err(_) => Err(Failure::Engine("a producer thread panicked".to_owned())),
    }
}

/// The first failure among the producer threads that have already ended.
pub fn finished_error<T>(threads: Vec<ProducerThread<T>>) -> Option<Failure> {
    threads
        .into_iter()
        .filter(|t| t.is_finished())
        .find_map(|t| join(t).err())
}

/// A closed-loop producer thread: sends its share of `work.events`, each event keyed by its
/// identity (`payload`), as fast as the bus takes them.
pub fn spawn_producer(
    index: usize,
    mut producer: Producer,
    work: Workload,
    start_line: Arc<StartLine>,
    failed: Arc<AtomicBool>,
) -> std::io::Result<ProducerThread<()>> {
    let id = u32::try_from(index).expect("producer count fits in u32");
    thread::Builder::new()
        .name(format!("net-producer-{index}"))
        .spawn(move || {
            let events = payload::share(work.events, work.producers, index);
            let mut buf = vec![0u8; work.payload_bytes];
            start_line.wait();
            for counter in 0..events {
                payload::fill(&mut buf, id, counter);
                if let Err(e) = producer.send(&payload::key(id, counter), &buf) {
                    failed.store(true, Ordering::Release);
                    return Err(format!(
                        "producer {index} failed to send event {counter}: {e}"
                    ));
                }
            }
            Ok(())
        })
}

/// A paced producer thread: sends its share of `work.events` on `pace`'s schedule, stamping
/// each event with its intended time, and returns how late its sends started (ns).
pub fn spawn_paced_producer(
    index: usize,
    mut producer: Producer,
    work: Workload,
    pace: Pace,
    start_line: Arc<StartLine>,
    failed: Arc<AtomicBool>,
) -> std::io::Result<ProducerThread<Histogram<u64>>> {
    let id = u32::try_from(index).expect("producer count fits in u32");
    thread::Builder::new()
        .name(format!("net-paced-{index}"))
        .spawn(move || {
            let events = payload::share(work.events, work.producers, index);
            let plan = PacedSends {
                id,
                events,
                payload_bytes: work.payload_bytes,
                wake_ns: pace::WAKE_PERIOD_US_DEFAULT * 1_000,
            };
            let sent = send_paced(&mut producer, plan, &pace, &start_line);
            if sent.is_err() {
                failed.store(true, Ordering::Release);
            }
            sent
        })
}

/// What one paced producer sends: events `0..events` of producer `id`, `payload_bytes` each,
/// waking at most once per `wake_ns`.
#[derive(Debug, Clone, Copy)]
pub struct PacedSends {
    pub id: u32,
    pub events: u64,
    pub payload_bytes: usize,
    pub wake_ns: u64,
}

/// Sends `plan` on `pace`'s schedule from the calling thread, sleeping while no event is due
/// (`pace::send_sleeping`: a spinning producer would hold a core the shard's kernel-side
/// write completions need), each event stamped with its own intended time; returns how late
/// its sends were (ns).
pub fn send_paced(
    producer: &mut Producer,
    plan: PacedSends,
    pace: &Pace,
    start_line: &StartLine,
) -> Result<Histogram<u64>, String> {
    let id = plan.id;
    let slack = pace::tighten_timer_slack();
    let mut buf = vec![0u8; plan.payload_bytes];
    let mut lag = workload::latency_histogram();
    start_line.wait();
    slack.map_err(|e| format!("cutting producer {id}'s timer slack: {e}"))?;
    let schedule = pace.schedule();
    let send = |counter: u64, intended_ns: u64, now_ns: u64| {
        payload::fill(&mut buf, id, counter);
        lag.saturating_record(now_ns.saturating_sub(intended_ns));
        let key = payload::key(id, counter);
        // The shard measures from `intended_ns`, not from the call: the time an event waited
        // for a late wake-up or a slow predecessor counts (coordinated omission).
        producer
            .send_stamped(&key, &buf, intended_ns)
            .map(|_| ())
            .map_err(|e| format!("producer {id} failed to send paced event {counter}: {e}"))
    };
    let (clock, sleep) = (monotonic_ns, pace::sleep_until);
    pace::send_sleeping(&schedule, plan.events, plan.wake_ns, clock, sleep, send)?;
    Ok(lag)
}

/// Waits until the bus's `persisted + dropped` reaches `events` (counted over the bus's life);
/// fails if a producer gave up or if nothing moved for `STALL_TIMEOUT`.
pub fn watch(
    totals: &dyn Fn() -> Totals,
    events: u64,
    failed: &AtomicBool,
) -> Result<Totals, Failure> {
    let mut last_settled = 0;
    let mut last_progress = Instant::now();
    loop {
        let now = totals();
        let settled = now.persisted + now.dropped;
        progress::set_remaining(events.saturating_sub(settled));
        if settled >= events {
            return Ok(now);
        }
        if failed.load(Ordering::Acquire) {
            return Err(Failure::Engine(format!(
                "a producer failed; bus totals {now:?}"
            )));
        }
        if settled != last_settled {
            (last_settled, last_progress) = (settled, Instant::now());
        } else if last_progress.elapsed() > STALL_TIMEOUT {
            let msg = format!("no event persisted for {STALL_TIMEOUT:?}: {settled} of {events}");
            return Err(Failure::Engine(format!("{msg}; bus totals {now:?}")));
        }
        thread::sleep(WATCH_INTERVAL);
    }
}
