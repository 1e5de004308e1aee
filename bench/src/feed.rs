//! Feeding a net bus from producer threads and timing the window until every event is
//! persisted: the measurement shared by `ingest` and `demo`.
//!
//! Producers are spawned, handed their `Producer` and parked on a barrier before the window
//! opens, so thread creation and lane set-up are not counted. The window opens just before the
//! barrier releases them and closes when the bus's own counters say
//! `persisted + dropped == events`. The main thread watches those counters with short
//! sleeps: `StatsHandle::totals` does not allocate, so the watcher adds nothing to the
//! allocation count it is measuring.

use crate::workload::Workload;
use crate::{Failure, alloc, cpu, payload};
use net_engine::{Bus, Producer, Totals};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
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

/// Sends `work.events` events from `work.producers` threads and waits until the bus has
/// persisted or dropped all of them.
pub fn feed(bus: &Bus, work: &Workload) -> Result<Window, Failure> {
    let stats = bus.stats_handle();
    let failed = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(work.producers + 1));
    let mut threads = Vec::with_capacity(work.producers);
    for index in 0..work.producers {
        let producer = bus
            .producer()
            .map_err(|e| Failure::engine("creating a producer", e))?;
        let spawned = spawn_producer(
            index,
            producer,
            *work,
            Arc::clone(&barrier),
            Arc::clone(&failed),
        );
        threads.push(spawned.map_err(Failure::io("spawning a producer thread"))?);
    }

    // Readings come before the release: after it, producers could get ahead of them.
    let cpu_before = cpu::process_time();
    let allocations_before = alloc::snapshot();
    let start = Instant::now();
    barrier.wait();
    let watched = watch(&|| stats.totals(), work.events, &failed);
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
    for thread in threads {
        join(thread)?;
    }
    Ok(Window {
        elapsed,
        allocations,
        cpu,
        totals,
    })
}

type ProducerThread = thread::JoinHandle<Result<(), String>>;

fn join(thread: ProducerThread) -> Result<(), Failure> {
    match thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(send_failure)) => Err(Failure::Engine(send_failure)),
        Err(_) => Err(Failure::Engine("a producer thread panicked".to_owned())),
    }
}

/// The first failure among the producer threads that have already ended.
fn finished_error(threads: Vec<ProducerThread>) -> Option<Failure> {
    threads
        .into_iter()
        .filter(|t| t.is_finished())
        .find_map(|t| join(t).err())
}

fn spawn_producer(
    index: usize,
    mut producer: Producer,
    work: Workload,
    barrier: Arc<Barrier>,
    failed: Arc<AtomicBool>,
) -> std::io::Result<ProducerThread> {
    let id = u32::try_from(index).expect("producer count fits in u32");
    thread::Builder::new()
        .name(format!("net-producer-{index}"))
        .spawn(move || {
            let events = payload::share(work.events, work.producers, index);
            let mut buf = vec![0u8; work.payload_bytes];
            barrier.wait();
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

/// Waits until `persisted + dropped` reaches `events`; fails if a producer gave up or if
/// nothing moved for `STALL_TIMEOUT`.
fn watch(totals: &dyn Fn() -> Totals, events: u64, failed: &AtomicBool) -> Result<Totals, Failure> {
    let mut last_settled = 0;
    let mut last_progress = Instant::now();
    loop {
        let now = totals();
        let settled = now.persisted + now.dropped;
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
