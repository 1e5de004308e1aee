//! The conventional design net is measured against, run on the same workload in the same
//! process: a tokio multi-thread runtime (one worker per shard), one bounded
//! `tokio::sync::mpsc` channel per shard fed by std producer threads with `blocking_send`,
//! each event its own `Vec<u8>`, and one consumer task per shard that stamps a per-shard seq,
//! encodes the record exactly as RedEX does (`record`), and writes it into a
//! `Mutex<BufWriter<File>>`, one file per shard.
//!
//! This is how the previous, tokio-based generation of net was built, and how most event
//! pipelines are: it is not a straw man. Consumers reuse one encode buffer, the BufWriter
//! batches syscalls, and nothing is fsynced (`ingest` sets net's fsync policy to `never` to
//! match). An event counts as persisted once it is in the BufWriter; the final flush of every
//! file is inside the measured window.
//!
//! `run` is the closed loop; `run_paced` sends on a `pace` schedule and measures each event's
//! latency from its intended send time, carried in the message. Every time is
//! `net_engine::monotonic_ns`, the clock net's latency is measured on.

use crate::pace::{self, Pace};
use crate::payload;
use crate::record;
use crate::workload::{self, Measurement, StartLine, Workload};
use crate::{alloc, cpu};
use hdrhistogram::Histogram;
use net_engine::monotonic_ns;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Bound of each shard's channel: the backpressure a conventional design relies on.
pub const CHANNEL_CAPACITY: usize = 8192;

/// BufWriter capacity per shard file: large enough that a write syscall moves many records.
const FILE_BUFFER_BYTES: usize = 1 << 20;

type ShardFile = Arc<Mutex<BufWriter<File>>>;

/// One event in flight: its payload and the time its latency is measured from (when the
/// producer handed it over, or in a paced phase when it was due), `monotonic_ns`.
#[derive(Debug)]
struct Message {
    origin_ns: u64,
    payload: Vec<u8>,
}

/// What a consumer task hands back: its latency samples and how many records it wrote.
type ConsumerOutcome = io::Result<(Histogram<u64>, u64)>;

/// Runs the workload through the baseline in a closed loop, writing `dir/shard-N.dat`.
pub fn run(work: &Workload, dir: &Path) -> io::Result<Measurement> {
    run_phase(work, dir, None).map(|(measured, _)| measured)
}

/// Runs the workload through a fresh baseline on `pace`'s open-loop schedule, writing
/// `dir/shard-N.dat` (replacing any earlier phase's files); latency runs from each event's
/// intended time. Also returns how late the sends started (`pace::due`), ns.
pub fn run_paced(
    work: &Workload,
    dir: &Path,
    pace: &Pace,
) -> io::Result<(Measurement, Histogram<u64>)> {
    let (measured, lag) = run_phase(work, dir, Some(pace))?;
    Ok((measured, lag.expect("paced producers record their lag")))
}

fn run_phase(
    work: &Workload,
    dir: &Path,
    pace: Option<&Pace>,
) -> io::Result<(Measurement, Option<Histogram<u64>>)> {
    let files = open_files(dir, work.shards)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(work.shards)
        .thread_name("baseline-worker")
        .build()?;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..work.shards)
        .map(|_| mpsc::channel::<Message>(CHANNEL_CAPACITY))
        .unzip();
    let consumers: Vec<_> = receivers
        .into_iter()
        .zip(&files)
        .map(|(rx, file)| runtime.spawn(consume(rx, Arc::clone(file))))
        .collect();
    let start_line = StartLine::new(work.producers);
    let producers = (0..work.producers)
        .map(|p| {
            let pace = pace.cloned();
            spawn_producer(p, *work, senders.clone(), Arc::clone(&start_line), pace)
        })
        .collect::<io::Result<Vec<_>>>()?;
    // Only the producers may keep the channels open, so consumers end when producers do.
    drop(senders);

    // Readings come before the release: after it, producers could get ahead of them.
    start_line.wait_ready();
    let cpu_before = cpu::process_time();
    let allocations_before = alloc::snapshot();
    let start = Instant::now();
    if let Some(pace) = pace {
        pace.start(monotonic_ns());
    }
    start_line.release();
    let lag = join_producers(producers)?;
    let mut latency = workload::latency_histogram();
    let mut persisted = 0;
    for consumer in consumers {
        let (samples, written) = runtime.block_on(consumer).map_err(io::Error::other)??;
        latency.add(&samples).expect("histograms share bounds");
        persisted += written;
    }
    for file in &files {
        file.lock()
            .expect("no consumer is left to poison it")
            .flush()?;
    }
    let elapsed = start.elapsed();
    let allocations = alloc::snapshot().since(allocations_before);
    let cpu = cpu::process_time()
        .zip(cpu_before)
        .map(|(end, start)| end - start);
    check_file_sizes(dir, work)?;
    if persisted != work.events {
        let msg = format!("baseline wrote {persisted} of {} events", work.events);
        return Err(io::Error::other(msg));
    }
    let measured = Measurement {
        persisted,
        dropped: 0,
        elapsed,
        allocations,
        cpu,
        latency,
    };
    Ok((measured, lag))
}

/// Waits for every producer; returns their merged lag histograms when they were paced.
fn join_producers(producers: Vec<ProducerThread>) -> io::Result<Option<Histogram<u64>>> {
    let mut merged: Option<Histogram<u64>> = None;
    for producer in producers {
        let lag = producer
            .join()
            .map_err(|_| io::Error::other("a baseline producer panicked"))?;
        match (&mut merged, lag) {
            (Some(all), Some(lag)) => all.add(&lag).expect("histograms share bounds"),
            (None, lag) => merged = lag,
            (Some(_), None) => unreachable!("every producer of a phase is paced alike"),
        }
    }
    Ok(merged)
}

fn open_files(dir: &Path, shards: usize) -> io::Result<Vec<ShardFile>> {
    (0..shards)
        .map(|shard| {
            let file = File::create(dir.join(format!("shard-{shard}.dat")))?;
            Ok(Arc::new(Mutex::new(BufWriter::with_capacity(
                FILE_BUFFER_BYTES,
                file,
            ))))
        })
        .collect()
}

/// Every record has the same length, so the files must add up to exactly `events` records:
/// a cheap check, outside the window, that the baseline did all the work it is credited with.
fn check_file_sizes(dir: &Path, work: &Workload) -> io::Result<()> {
    let mut total = 0;
    for shard in 0..work.shards {
        total += std::fs::metadata(dir.join(format!("shard-{shard}.dat")))?.len();
    }
    let expected = work.events * (record::HEADER_BYTES + work.payload_bytes) as u64;
    if total != expected {
        let msg = format!("baseline files hold {total} bytes, expected {expected}");
        return Err(io::Error::other(msg));
    }
    Ok(())
}

/// A producer thread; it returns its lag histogram when paced.
type ProducerThread = thread::JoinHandle<Option<Histogram<u64>>>;

fn spawn_producer(
    producer: usize,
    work: Workload,
    senders: Vec<mpsc::Sender<Message>>,
    start_line: Arc<StartLine>,
    pace: Option<Pace>,
) -> io::Result<ProducerThread> {
    let id = u32::try_from(producer).expect("producer count fits in u32");
    thread::Builder::new()
        .name(format!("baseline-producer-{producer}"))
        .spawn(move || {
            let events = payload::share(work.events, work.producers, producer);
            let mut lag = pace.as_ref().map(|_| workload::latency_histogram());
            if pace.is_some() {
                // Best effort, as close to net's producers as the baseline can be.
                let _ = pace::tighten_timer_slack();
            }
            start_line.wait();
            let schedule = pace.map(|pace| pace.schedule());
            // A conventional producer owns each event as a fresh buffer it can hand over.
            let send = |counter: u64, origin_ns: u64| {
                let mut bytes = vec![0u8; work.payload_bytes];
                payload::fill(&mut bytes, id, counter);
                let shard = workload::shard_of(&payload::key(id, counter), work.shards);
                let message = Message {
                    origin_ns,
                    payload: bytes,
                };
                // An error means the consumer failed; `run` reports it.
                senders[shard].blocking_send(message).map_err(|_| ())
            };
            match (&schedule, &mut lag) {
                // Paced like net's producers: sleeping while no event is due.
                (Some(schedule), Some(lag)) => {
                    let wake_ns = pace::WAKE_PERIOD_US_DEFAULT * 1_000;
                    let paced = |counter: u64, intended_ns: u64, now_ns: u64| {
                        lag.saturating_record(now_ns.saturating_sub(intended_ns));
                        send(counter, intended_ns)
                    };
                    let clock = monotonic_ns;
                    let _ = pace::send_sleeping(
                        schedule,
                        events,
                        wake_ns,
                        clock,
                        pace::sleep_until,
                        paced,
                    );
                }
                _ => {
                    for counter in 0..events {
                        if send(counter, monotonic_ns()).is_err() {
                            break;
                        }
                    }
                }
            }
            lag
        })
}

async fn consume(mut rx: mpsc::Receiver<Message>, file: ShardFile) -> ConsumerOutcome {
    let mut latency = workload::latency_histogram();
    let mut encoded = Vec::with_capacity(record::HEADER_BYTES + 4096);
    let mut seq = 0u64;
    while let Some(message) = rx.recv().await {
        encoded.clear();
        record::encode(seq, unix_ns(), &message.payload, &mut encoded);
        file.lock()
            .expect("one writer per file")
            .write_all(&encoded)?;
        seq += 1;
        latency.saturating_record(monotonic_ns().saturating_sub(message.origin_ns));
    }
    Ok((latency, seq))
}

/// The record timestamp: wall-clock nanoseconds since the Unix epoch, as net stamps it.
fn unix_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_event_as_a_valid_record_in_order_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let work = Workload {
            events: 10_000,
            payload_bytes: 40,
            shards: 3,
            producers: 2,
        };
        let measured = run(&work, dir.path()).unwrap();
        assert_eq!(measured.persisted, work.events);
        assert_eq!(measured.latency.len(), work.events);
        let mut seen = vec![false; 10_000];
        for shard in 0..work.shards {
            let bytes = std::fs::read(dir.path().join(format!("shard-{shard}.dat"))).unwrap();
            let (mut at, mut expected_seq) = (0, 0);
            let mut last_counter = [None; 2];
            while at < bytes.len() {
                let (rec, used) = record::decode(&bytes[at..]).unwrap();
                assert_eq!(rec.seq, expected_seq);
                let id = payload::identity(rec.payload).unwrap();
                let mut expected = vec![0u8; 40];
                payload::fill(&mut expected, id.producer, id.counter);
                assert_eq!(rec.payload, &expected[..]);
                assert_eq!(
                    workload::shard_of(&payload::key(id.producer, id.counter), 3),
                    shard
                );
                let p = id.producer as usize;
                assert!(
                    last_counter[p] < Some(id.counter),
                    "order kept per producer and shard"
                );
                last_counter[p] = Some(id.counter);
                let index = usize::try_from(id.counter).unwrap() * 2 + p;
                assert!(!seen[index], "duplicate");
                seen[index] = true;
                (at, expected_seq) = (at + used, expected_seq + 1);
            }
        }
        assert!(seen.iter().all(|s| *s), "every event written");
    }

    #[test]
    fn paced_run_writes_every_event_and_measures_each_one_and_its_lag() {
        let dir = tempfile::tempdir().unwrap();
        let work = Workload {
            events: 2_000,
            payload_bytes: 40,
            shards: 2,
            producers: 2,
        };
        let (measured, lag) = run_paced(&work, dir.path(), &Pace::new(200_000, 2)).unwrap();
        assert_eq!(measured.persisted, work.events);
        assert_eq!(measured.latency.len(), work.events);
        assert_eq!(lag.len(), work.events);
    }
}
