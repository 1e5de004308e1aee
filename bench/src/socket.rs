//! `net-bench socket`: ingest through netd's local Unix socket against direct in-process
//! ingest (`Producer::send_batch`) in the same run, on the same workload and configuration.
//!
//! Both sides start a bus from the same JSON (`fsync: never`, `pin: false`, `--shards`
//! shards) in their own scratch directory. The direct side runs `--clients` threads that each
//! send batches of `--frame-events` events with `send_batch`. The socket side starts netd's
//! socket server (the `netd` library, the same code the daemon runs) on its bus, and runs
//! `--clients` client threads that each connect and write PUBLISH frames of `--frame-events`
//! events (encoded once, written again and again: the clients cost only their `write`s).
//! Each thread's events carry a key that maps to a shard of its own. The window runs from the
//! release until every direct thread's events are flushed, or every client's final SYNC is
//! acknowledged (so everything it sent is written). Then one client measures the round trip
//! of `--ack-frames` frames that each ask for an acknowledgement. The figure to quote is
//! `socket_ratio` = socket events/s / direct events/s (target >= 0.5).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use net_engine::{Bus, Config, shard_for_key};
use netd::client::Client;
use netd::frame::{self, Limits};
use netd::server::{Server, ServerConfig};

use crate::report::{self, JsonLine, Table};
use crate::{Failure, alloc, parse_positive};

const PAYLOAD_BYTES: usize = 100;
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events each side ingests in the measured window (rounded down to whole frames per
    /// client).
    #[arg(long, default_value_t = 5_000_000, value_parser = parse_positive)]
    events: u64,
    /// Client connections on the socket side, producer threads on the direct side.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    clients: u64,
    /// Events per PUBLISH frame (and per `send_batch` on the direct side).
    #[arg(long, default_value_t = 1000, value_parser = parse_positive)]
    frame_events: u64,
    /// Shards of each side's bus.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    shards: u64,
    /// Frames each thread sends before the window (warming the lanes, the log's first
    /// segments and the page cache).
    #[arg(long, default_value_t = 100)]
    warmup_frames: u64,
    /// Acknowledged frames whose round trip is measured after the window.
    #[arg(long, default_value_t = 2000)]
    ack_frames: u64,
    /// Rounds, each running both sides one after the other; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = parse_positive)]
    rounds: u64,
    /// Directory under which each side gets its own temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy)]
struct Side {
    events: u64,
    elapsed: Duration,
    allocations: u64,
}

impl Side {
    fn events_per_s(&self) -> f64 {
        report::per_s(self.events, self.elapsed)
    }

    fn allocs_per_event(&self) -> f64 {
        self.allocations as f64 / self.events.max(1) as f64
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let frames_per_client = args.events / args.clients / args.frame_events;
    if frames_per_client == 0 {
        return Err(Failure::Verification(
            "--events must be at least --clients x --frame-events".to_owned(),
        ));
    }
    let mut rounds = Vec::new();
    let mut acks = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..args.rounds {
        let dir = crate::scratch_dir(args.dir.as_deref(), "direct")?;
        let direct = run_direct(args, dir.path(), frames_per_client)?;
        dir.close()
            .map_err(Failure::io("removing the direct side's scratch directory"))?;
        let dir = crate::scratch_dir(args.dir.as_deref(), "socket")?;
        let (socket, round_acks) = run_socket(args, dir.path(), frames_per_client)?;
        dir.close()
            .map_err(Failure::io("removing the socket side's scratch directory"))?;
        acks.add(&round_acks).expect("same histogram bounds");
        rounds.push((socket, direct));
    }
    print_report(args, &rounds, &acks);
    Ok(())
}

/// The median of `v` (upper median for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config(args: &Args, dir: &Path) -> Result<Config, Failure> {
    let dir = serde_json::Value::from(dir.display().to_string());
    Config::from_json(&format!(
        r#"{{"data_dir":{dir},"shards":{},"pin":false,"storage":{{"fsync":"never"}}}}"#,
        args.shards
    ))
    .map_err(|e| Failure::engine("reading the config", e))
}

/// A key for client `c` that maps to a shard of its own (clients beyond the shard count
/// share).
fn key_for(c: u64, shards: u64) -> Vec<u8> {
    let n = usize::try_from(shards).expect("shards fit usize");
    let want = usize::try_from(c % shards).expect("fits");
    (0u32..)
        .map(|i| format!("client-{c}-{i}").into_bytes())
        .find(|k| shard_for_key(k, n) == want)
        .expect("some key maps to every shard")
}

fn payload(c: u64) -> [u8; PAYLOAD_BYTES] {
    let mut p = [0x5a_u8; PAYLOAD_BYTES];
    p[..8].copy_from_slice(&c.to_le_bytes());
    p
}

/// The warm-up and release barriers of `clients` threads and the measuring one.
fn barriers(clients: u64) -> (Arc<Barrier>, Arc<Barrier>) {
    let threads = usize::try_from(clients).expect("fits") + 1;
    (
        Arc::new(Barrier::new(threads)),
        Arc::new(Barrier::new(threads)),
    )
}

fn run_direct(args: &Args, dir: &Path, frames: u64) -> Result<Side, Failure> {
    let bus = Bus::start(config(args, dir)?).map_err(|e| Failure::engine("starting", e))?;
    let (warmed, release) = barriers(args.clients);
    let warmup = args.warmup_frames;
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let mut producer = bus
            .producer()
            .map_err(|e| Failure::engine("creating a producer", e))?;
        let (warmed, release) = (warmed.clone(), release.clone());
        let n = usize::try_from(args.frame_events).expect("fits");
        let key = key_for(c, args.shards);
        handles.push(
            thread::Builder::new()
                .name(format!("direct-{c}"))
                .spawn(move || -> Result<(), String> {
                    let p = payload(c);
                    let events: Vec<(&[u8], &[u8])> = vec![(&key[..], &p[..]); n];
                    let mut send = |frames: u64| -> Result<(), String> {
                        for _ in 0..frames {
                            let sent = producer.send_batch(events.iter().copied());
                            if let Some((_, e)) = sent.refused.first() {
                                return Err(e.to_string());
                            }
                        }
                        Ok(())
                    };
                    send(warmup)?;
                    warmed.wait();
                    release.wait();
                    send(frames)
                })
                .map_err(Failure::io("spawning a producer thread"))?,
        );
    }
    warmed.wait();
    bus.flush()
        .map_err(|e| Failure::engine("flushing the warm-up", e))?;
    let before = alloc::snapshot();
    let start = Instant::now();
    release.wait();
    for h in handles {
        h.join()
            .map_err(|_| Failure::Engine("a producer thread panicked".into()))?
            .map_err(Failure::Engine)?;
    }
    bus.flush().map_err(|e| Failure::engine("flushing", e))?;
    let elapsed = start.elapsed();
    let allocations = alloc::snapshot().since(before).allocations;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok(Side {
        events: frames * args.frame_events * args.clients,
        elapsed,
        allocations,
    })
}

fn run_socket(args: &Args, dir: &Path, frames: u64) -> Result<(Side, Histogram<u64>), Failure> {
    let config = config(args, dir)?;
    let payload_max = config.payload_bytes_max();
    let bus = Arc::new(Bus::start(config).map_err(|e| Failure::engine("starting", e))?);
    let path = dir.join("netd.sock");
    let server = Server::start(
        bus.clone(),
        ServerConfig {
            path: path.clone(),
            mode: 0o600,
            connections_max: 64,
            limits: Limits {
                frame_bytes_max: 16 << 20,
                payload_bytes_max: payload_max,
                read_events_max: 10_000,
                read_wait_ms_max: 1_000,
            },
            ack_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(10),
        },
    )
    .map_err(|e| Failure::Engine(format!("starting the socket server: {e}")))?;
    let (warmed, release) = barriers(args.clients);
    let warmup = args.warmup_frames;
    let mut handles = Vec::new();
    for c in 0..args.clients {
        let mut client = Client::connect(&path)
            .map_err(|e| Failure::Engine(format!("connecting to the socket: {e}")))?;
        let key = key_for(c, args.shards);
        let p = payload(c);
        let mut frame_bytes = Vec::new();
        let n = usize::try_from(args.frame_events).expect("fits");
        frame::encode_publish(&mut frame_bytes, false, vec![(&key[..], &p[..]); n]);
        let (warmed, release) = (warmed.clone(), release.clone());
        handles.push(
            thread::Builder::new()
                .name(format!("socket-client-{c}"))
                .spawn(move || -> Result<u64, String> {
                    let mut send = |frames: u64| -> Result<u64, String> {
                        for _ in 0..frames {
                            client.send_raw(&frame_bytes).map_err(|e| e.to_string())?;
                        }
                        Ok(client.sync().map_err(|e| e.to_string())?.0)
                    };
                    let warmed_up = send(warmup)?;
                    warmed.wait();
                    release.wait();
                    Ok(send(frames)? - warmed_up)
                })
                .map_err(Failure::io("spawning a client thread"))?,
        );
    }
    warmed.wait();
    let before = alloc::snapshot();
    let start = Instant::now();
    release.wait();
    let mut acked = 0;
    for h in handles {
        acked += h
            .join()
            .map_err(|_| Failure::Engine("a client thread panicked".into()))?
            .map_err(|e| Failure::Engine(format!("a socket client: {e}")))?;
    }
    let elapsed = start.elapsed();
    let allocations = alloc::snapshot().since(before).allocations;
    let events = frames * args.frame_events * args.clients;
    if acked != events {
        return Err(Failure::Verification(format!(
            "the socket acknowledged {acked} events of {events}"
        )));
    }
    // Acknowledged round trips, one client, one frame at a time.
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    if args.ack_frames > 0 {
        let mut client = Client::connect(&path)
            .map_err(|e| Failure::Engine(format!("connecting to the socket: {e}")))?;
        let key = key_for(0, args.shards);
        let p = payload(0);
        let n = usize::try_from(args.frame_events.min(100)).expect("fits");
        let mut bytes = Vec::new();
        frame::encode_publish(&mut bytes, true, vec![(&key[..], &p[..]); n]);
        for _ in 0..args.ack_frames {
            let t = Instant::now();
            client
                .send_raw(&bytes)
                .map_err(|e| Failure::Engine(e.to_string()))?;
            client
                .wait_ack()
                .map_err(|e| Failure::Engine(e.to_string()))?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = hist.record(ns.max(1));
        }
    }
    let left = server.stop(Duration::from_secs(5));
    if left > 0 {
        return Err(Failure::Engine(format!(
            "{left} socket connections did not end"
        )));
    }
    let bus = Arc::try_unwrap(bus)
        .map_err(|_| Failure::Engine("the socket server still holds the bus".into()))?;
    let persisted = bus.stats().total.persisted;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    let expected = events
        + args.warmup_frames * args.frame_events * args.clients
        + args.ack_frames * args.frame_events.min(100);
    if persisted != expected {
        return Err(Failure::Verification(format!(
            "the socket side's log holds {persisted} events, expected {expected}"
        )));
    }
    Ok((
        Side {
            events,
            elapsed,
            allocations,
        },
        hist,
    ))
}

fn print_report(args: &Args, rounds: &[(Side, Side)], acks: &Histogram<u64>) {
    let socket_rates: Vec<f64> = rounds.iter().map(|(s, _)| s.events_per_s()).collect();
    let direct_rates: Vec<f64> = rounds.iter().map(|(_, d)| d.events_per_s()).collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|(s, d)| s.events_per_s() / d.events_per_s())
        .collect();
    let (socket_rate, direct_rate) = (median(socket_rates.clone()), median(direct_rates.clone()));
    let ratio = median(ratios.clone());
    let allocs = |f: &dyn Fn(&(Side, Side)) -> &Side| {
        median(rounds.iter().map(|r| f(r).allocs_per_event()).collect())
    };
    let (socket_allocs, direct_allocs) = (allocs(&|r| &r.0), allocs(&|r| &r.1));
    let events = rounds[0].0.events;
    let title = format!(
        "ingest through netd's Unix socket vs in-process: {} events x {PAYLOAD_BYTES} B, {} \
         clients, {} events per frame, {} shards, fsync never, median of {} rounds",
        report::format_count(events as f64),
        args.clients,
        args.frame_events,
        args.shards,
        rounds.len()
    );
    let mut table = Table::new(&title, &["socket", "in-process"]);
    table
        .row(
            "events/s",
            vec![
                report::format_count(socket_rate),
                report::format_count(direct_rate),
            ],
        )
        .row(
            "allocations/event",
            vec![format!("{socket_allocs:.4}"), format!("{direct_allocs:.4}")],
        );
    print!("{}", table.render());
    println!(
        "  socket_ratio (socket / in-process events/s): {ratio:.3} (rounds: {})",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let us = |q: f64| acks.value_at_quantile(q) as f64 / 1000.0;
    if !acks.is_empty() {
        println!(
            "  acknowledged frame round trip ({} frames of {} events): p50 {:.1} us, p99 {:.1} us",
            acks.len(),
            args.frame_events.min(100),
            us(0.5),
            us(0.99)
        );
    }
    let command = command(args);
    println!("  reproduce: {command}");
    let round = |v: &[f64], digits: i32| -> Vec<f64> {
        v.iter().map(|x| report::round_to(*x, digits)).collect()
    };
    let mut json = JsonLine::default();
    json.field("scenario", "socket")
        .field("events", events)
        .field("clients", args.clients)
        .field("frame_events", args.frame_events)
        .field("shards", args.shards)
        .field("rounds", args.rounds)
        .field("socket_events_per_s", report::round_to(socket_rate, 0))
        .field("direct_events_per_s", report::round_to(direct_rate, 0))
        .field("socket_ratio", report::round_to(ratio, 3))
        .field("socket_ratio_rounds", round(&ratios, 3))
        .field("socket_events_per_s_rounds", round(&socket_rates, 0))
        .field("direct_events_per_s_rounds", round(&direct_rates, 0))
        .field("allocs_per_event", socket_allocs)
        .field("direct_allocs_per_event", direct_allocs)
        .field("ack_p50_us", report::round_to(us(0.5), 1))
        .field("ack_p99_us", report::round_to(us(0.99), 1))
        .field("command", command);
    crate::archive::emit(json.render(), args.json);
    crate::archive::latency("acknowledged frame round trip", "net socket", acks);
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("events", args.events.to_string()),
        ("clients", args.clients.to_string()),
        ("frame-events", args.frame_events.to_string()),
        ("shards", args.shards.to_string()),
        ("warmup-frames", args.warmup_frames.to_string()),
        ("ack-frames", args.ack_frames.to_string()),
        ("rounds", args.rounds.to_string()),
    ];
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("socket", &flags, args.dir.as_ref())
}
