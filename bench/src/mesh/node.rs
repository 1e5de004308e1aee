//! The publisher's side of `net-bench mesh`: node A, a child process (`net-bench mesh-node
//! --spec <json>`, hidden from the help). See `Spec` for what it is told and the module doc of
//! `mesh` for the protocol. It exits when its stdin closes (and, through
//! `PR_SET_PDEATHSIG`, when the bench dies), so it never outlives the run.

use super::event::{self, EVENT_BYTES};
use super::{Mode, Spec, commands, tags};
use crate::pace::{self, Pace};
use crate::transport::{bound_socket, send_raw};
use crate::workload::{self, StartLine};
use crate::{Failure, alloc};
use hdrhistogram::Histogram;
use net_engine::{Bus, Config, Producer, SendError, monotonic_ns, realtime_ns};
use serde_json::json;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// What to do, as JSON (written by the bench).
    #[arg(long)]
    spec: String,
}

pub fn run(args: &NodeArgs) -> Result<(), Failure> {
    die_with_parent();
    let spec = Spec::from_json(&args.spec)?;
    match spec.mode {
        Mode::Publish => publish(&spec),
        Mode::Raw => raw(&spec),
    }
}

/// Asks the kernel to kill this process when the bench that started it dies.
fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes only this process's
    // parent-death signal; no memory is passed.
    let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
}

/// The bench's commands, one line at a time, into a buffer reused for every line (after the
/// first read, reading one allocates nothing).
struct Commands {
    line: String,
}

impl Commands {
    fn new() -> Commands {
        Commands {
            line: String::with_capacity(64),
        }
    }

    /// Waits for `want` (a line of `commands`); end of input or any other line fails.
    fn expect(&mut self, want: &'static str) -> Result<(), Failure> {
        self.line.clear();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut self.line)
            .map_err(Failure::io("reading the bench's command"))?;
        if n == 0 {
            return Err(Failure::Verification(format!(
                "the bench closed the pipe before {}",
                want.trim_end()
            )));
        }
        if self.line != want {
            return Err(Failure::Verification(format!(
                "expected {:?} from the bench, got {:?}",
                want.trim_end(),
                self.line
            )));
        }
        Ok(())
    }
}

/// CPU time of this whole process so far, ns (every thread; no allocation).
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Ends the process on a failure that cannot be returned.
fn fatal<T>(failure: Failure) -> T {
    eprintln!("net-bench mesh-node: {failure}");
    std::process::exit(1)
}

/// What one producer thread did in the measured phase.
#[derive(Debug)]
struct Sent {
    /// How late the paced producer woke against each event's intended time, ns.
    lag: Histogram<u64>,
}

/// Node A: a bus with a mesh; one producer thread per shard sends `spec.warmup` events when
/// told `WARM`, then `spec.events` when told `GO` (paced when `spec.rate` is set), and the
/// node reports when told `DONE`.
fn publish(spec: &Spec) -> Result<(), Failure> {
    let config = Config::from_json(&spec.config)
        .map_err(|e| Failure::engine("reading the publisher's config", e))?;
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the publisher", e))?;
    let addr = bus
        .mesh_addr()
        .ok_or_else(|| Failure::Engine("the publisher runs no mesh".into()))?;
    let shards = bus.shards();
    let warm = StartLine::new(shards);
    let measured = StartLine::new(shards);
    let first_ns = AtomicU64::new(u64::MAX);
    let last_ns = AtomicU64::new(0);
    let pace = spec.rate.map(|rate| Pace::new(rate, shards));
    let mut commands = Commands::new();
    let mut producers = (0..shards)
        .map(|_| bus.producer())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::engine("creating a producer", e))?;

    let tracing = std::sync::atomic::AtomicBool::new(spec.trace_ms > 0);
    let report = std::thread::scope(|s| -> Result<serde_json::Value, Failure> {
        let mut handles = Vec::with_capacity(shards);
        for (k, producer) in producers.drain(..).enumerate() {
            let (warm, measured) = (&warm, &measured);
            let (first_ns, last_ns, pace) = (&first_ns, &last_ns, pace.as_ref());
            let handle = std::thread::Builder::new()
                .name(format!("mesh-producer-{k}"))
                .spawn_scoped(s, move || {
                    produce(
                        spec, shards, k, producer, warm, measured, first_ns, last_ns, pace,
                    )
                })
                .map_err(Failure::io("spawning a producer thread"))
                .unwrap_or_else(fatal);
            handles.push(handle);
        }
        if spec.trace_ms > 0 {
            let (bus, tracing) = (&bus, &tracing);
            s.spawn(move || {
                while tracing.load(Ordering::Acquire) {
                    trace_publisher(bus);
                    std::thread::sleep(Duration::from_millis(spec.trace_ms));
                }
            });
        }
        // From here a failure cannot return: the scope would wait for producers that wait at
        // a start line for ever. The process ends instead (the bench sees it exit).
        println!("{} {addr}", tags::READY);
        commands.expect(commands::WARM).unwrap_or_else(fatal);
        warm.wait_ready();
        warm.release();
        commands.expect(commands::GO).unwrap_or_else(fatal);
        measured.wait_ready();
        drop(bus.take_latency()); // the warm-up's
        let cpu_before = process_cpu_ns();
        let before = alloc::snapshot();
        if let Some(pace) = &pace {
            pace.start(monotonic_ns());
        }
        measured.release();
        commands.expect(commands::DONE).unwrap_or_else(fatal);
        let allocations = alloc::snapshot().since(before);
        let cpu_ns = process_cpu_ns() - cpu_before;
        tracing.store(false, Ordering::Release);
        let mut lag = workload::latency_histogram();
        for handle in handles {
            let sent = handle
                .join()
                .map_err(|_| Failure::Verification("a producer thread panicked".into()))?
                .map_err(|e| Failure::engine("sending", e))?;
            lag.add(&sent.lag).expect("histograms of the same bounds");
        }
        let persisted = bus.take_latency();
        Ok(result_json(
            &bus,
            &persisted,
            first_ns.load(Ordering::Relaxed),
            last_ns.load(Ordering::Relaxed),
            allocations,
            cpu_ns,
            &lag,
        ))
    })?;
    println!("{} {report}", tags::RESULT);
    crate::shut_down_cleanly(bus, Duration::from_secs(10))
}

/// One producer thread: event `seq` of shard `k` for `seq` in `0..warm-up share`, then the
/// measured share after `measured` opens.
#[allow(clippy::too_many_arguments)] // one thread's share of `publish`'s state
fn produce(
    spec: &Spec,
    shards: usize,
    k: usize,
    mut producer: Producer,
    warm: &StartLine,
    measured: &StartLine,
    first_ns: &AtomicU64,
    last_ns: &AtomicU64,
    pace: Option<&Pace>,
) -> Result<Sent, SendError> {
    let shard = u16::try_from(k).expect("a mesh has at most 256 shards");
    let warmup = event::per_shard(spec.warmup, shards, k);
    let events = event::per_shard(spec.events, shards, k);
    let mut lag = workload::latency_histogram();
    let mut buf = [0u8; EVENT_BYTES];
    if pace.is_some() {
        let _ = pace::tighten_timer_slack();
    }
    warm.wait();
    for seq in 0..warmup {
        event::write(&mut buf, shard, seq, realtime_ns());
        producer.send_to(k, &buf)?;
    }
    measured.wait();
    match pace {
        None => {
            first_ns.fetch_min(monotonic_ns(), Ordering::Relaxed);
            for seq in warmup..warmup + events {
                event::write(&mut buf, shard, seq, realtime_ns());
                producer.send_to(k, &buf)?;
            }
        }
        Some(pace) => {
            // A key of shard `k`, so that `send_stamped` counts each event's latency to
            // persisted from its intended time in the publisher's histogram.
            let key = (0u64..)
                .map(u64::to_le_bytes)
                .find(|key| net_engine::shard_for_key(key, shards) == k)
                .expect("some key maps to every shard");
            let schedule = pace.schedule();
            // The schedule runs on the monotonic clock; the payload carries wall-clock time,
            // which the other process can compare with its own.
            let wall_offset = realtime_ns().wrapping_sub(monotonic_ns());
            first_ns.fetch_min(schedule.intended_ns(0), Ordering::Relaxed);
            pace::send_sleeping(
                &schedule,
                events,
                spec.wake_us * 1_000,
                monotonic_ns,
                pace::sleep_until,
                |i, intended_ns, now_ns| {
                    lag.saturating_record(now_ns.saturating_sub(intended_ns).max(1));
                    let sent = intended_ns.wrapping_add(wall_offset);
                    event::write(&mut buf, shard, warmup + i, sent);
                    producer.send_stamped(&key, &buf, intended_ns).map(|_| ())
                },
            )?;
        }
    }
    last_ns.fetch_max(monotonic_ns(), Ordering::Relaxed);
    Ok(Sent { lag })
}

/// One `--trace-ms` line per publication of A: whether it is fed from completed batches
/// (live) or from the log, the next seq to send, the acknowledged prefix, its lag and the
/// credit left (record bytes).
fn trace_publisher(bus: &Bus) {
    let Some(stats) = bus.mesh_stats() else {
        return;
    };
    let ms = monotonic_ns() as f64 / 1e6;
    for p in &stats.publications {
        eprintln!(
            "trace A {ms:.1} shard {} live {} next {} acked {} lag {} credit {} resent {} \
             timeouts {} catchups {} packets_out {}",
            p.shard,
            u8::from(p.live),
            p.next_seq,
            p.acked,
            p.lag_events,
            i128::from(p.granted_bytes) - i128::from(p.sent_bytes),
            p.resent_ranges,
            p.timeouts,
            p.catchups,
            stats.total.packets_out,
        );
    }
}

/// The publisher's `RESULT`: its window's figures and its publications' counters.
fn result_json(
    bus: &Bus,
    persisted: &Histogram<u64>,
    first_ns: u64,
    last_ns: u64,
    allocations: alloc::Snapshot,
    cpu_ns: u64,
    lag: &Histogram<u64>,
) -> serde_json::Value {
    let stats = bus.mesh_stats().expect("the publisher runs a mesh");
    let sum =
        |f: fn(&net_engine::StreamStats) -> u64| stats.publications.iter().map(f).sum::<u64>();
    let lag_us = |q: f64| crate::report::us_from_ns(lag.value_at_quantile(q));
    json!({
        "first_ns": first_ns,
        "last_ns": last_ns,
        "allocations": allocations.allocations,
        "allocated_bytes": allocations.bytes,
        "cpu_ns": cpu_ns,
        "publications": stats.publications.len(),
        "resent_ranges": sum(|p| p.resent_ranges),
        "timeouts": sum(|p| p.timeouts),
        "sent_bytes": sum(|p| p.sent_bytes),
        "lag_events": sum(|p| p.lag_events),
        "subscribes": sum(|p| p.subscribes),
        "catchups": sum(|p| p.catchups),
        "packets_out": stats.total.packets_out,
        "packets_in": stats.total.packets_in,
        "dropped": stats.total.dropped_total(),
        "send_errors": stats.shards.iter().map(|s| s.send_errors).sum::<u64>(),
        "wake_lag_p50_us": lag_us(0.5),
        "wake_lag_p99_us": lag_us(0.99),
        "wake_lag_max_us": crate::report::us_from_ns(lag.max()),
        "persisted_p50_us": crate::report::us_from_ns(persisted.value_at_quantile(0.5)),
        "persisted_p99_us": crate::report::us_from_ns(persisted.value_at_quantile(0.99)),
    })
}

/// The raw reference's sender: plaintext datagrams to `spec.target`, `spec.batch` per
/// `sendmmsg`, from this process's main thread pinned to `spec.core`.
fn raw(spec: &Spec) -> Result<(), Failure> {
    let (socket, _) = bound_socket(spec.socket_buffer, true)?;
    socket
        .connect(&spec.target)
        .map_err(Failure::io(format!("connecting to {}", spec.target)))?;
    if let Some(core) = spec.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    let mut commands = Commands::new();
    println!("{}", tags::READY);
    commands.expect(commands::GO)?;
    let mut first_ns = 0;
    let sent = send_raw(
        &socket,
        spec.datagrams,
        spec.batch,
        spec.datagram_bytes,
        || first_ns = monotonic_ns(),
    )?;
    let last_ns = monotonic_ns();
    let report = json!({
        "first_ns": first_ns,
        "last_ns": last_ns,
        "send_s": sent.last.duration_since(sent.first).as_secs_f64(),
    });
    println!("{} {report}", tags::RESULT);
    Ok(())
}
