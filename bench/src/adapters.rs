//! `net-bench adapters`: net's sinks against the raw clients of their backends, in one run,
//! with the same events (100-byte payloads by default) and the same fields per entry:
//!
//! - Redis Streams: the bus → `RedisSink` (pipelines of `--pipeline` XADDs, 64) against a raw
//!   `redis` client writing pipelines of the same depth with the same fields;
//! - JetStream: the bus → `JetStreamSink` (batches of `--window` publishes, 1000) against a
//!   raw `async-nats` client keeping `--window` acks outstanding, with the same headers.
//!
//! A net run starts the sink, sends every event into the bus as fast as the producer can,
//! and is timed from the first send until the backend confirmed the last event; the backend
//! is then read back and every event checked present exactly once (`lost`, `duplicates`).
//! The raw runs are timed from the first write to the last confirmation. The servers come
//! from `scripts/services.sh` (`$NET_SERVICES_DIR/env`, or `--redis-url`/`--nats-url`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use net_adapters::{Sink, SinkBackend, SinkConfig};
use net_engine::{Bus, Config};

use crate::report::{self, JsonLine, Table};
use crate::{Failure, archive, parse_positive, progress};

#[derive(Debug, Parser)]
pub struct Args {
    /// Events per design.
    #[arg(long, default_value_t = 300_000, value_parser = parse_positive)]
    pub events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// XADDs per Redis pipeline (the raw client's and the sink's batches).
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    pub pipeline: u64,
    /// JetStream publishes outstanding (the raw client's window, the sink's batch).
    #[arg(long, default_value_t = 1000, value_parser = parse_positive)]
    pub window: u64,
    /// Bus shards.
    #[arg(long, default_value_t = 2, value_parser = parse_positive)]
    pub shards: u64,
    /// Redis URL (default: from scripts/services.sh's env file).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// NATS URL (default: from scripts/services.sh's env file).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Where the bus's data goes (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only one backend's pair (`redis` or `jetstream`); the other's fields are null.
    #[arg(long, value_parser = ["redis", "jetstream"])]
    pub only: Option<String>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// One design's measurement.
#[derive(Debug, Clone, Copy)]
struct Run {
    events: u64,
    elapsed: Duration,
    lost: u64,
    duplicates: u64,
}

impl Run {
    fn per_s(&self) -> f64 {
        report::per_s(self.events, self.elapsed)
    }
}

fn services_env(key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(key) {
        return Some(v);
    }
    let dir = std::env::var_os("NET_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/net-services"));
    let text = std::fs::read_to_string(dir.join("env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::io("starting a tokio runtime"))
}

fn payload(i: u64, bytes: usize) -> Vec<u8> {
    let mut p = vec![b'.'; bytes.max(8)];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p.truncate(bytes.max(8));
    p
}

fn unique(prefix: &str) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{}x{ns:x}", std::process::id())
}

fn start_bus(args: &Args, dir: &Path) -> Result<Bus, Failure> {
    let config = Config {
        data_dir: dir.to_path_buf(),
        shards: Some(usize::try_from(args.shards).expect("shards fit usize")),
        ..Config::default()
    };
    Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))
}

/// Runs the bus → `backend` sink over `args.events` events; returns the timing (lost and
/// duplicates are filled in by the caller, who reads the backend back).
fn run_sink<B: SinkBackend + Send>(
    args: &Args,
    backend: B,
    batch: u64,
    name: &str,
) -> Result<(Run, Vec<u64>), Failure> {
    let dir = crate::scratch_dir(args.dir.as_deref(), name)?;
    let bus = start_bus(args, dir.path())?;
    let mut config = SinkConfig::new(name, dir.path());
    config.batch_events_max = usize::try_from(batch).expect("batch fits usize");
    let sink =
        Sink::start(&bus, backend, config).map_err(|e| Failure::engine("starting the sink", e))?;
    let mut producer = bus
        .producer()
        .map_err(|e| Failure::engine("opening a producer", e))?;
    let start = Instant::now();
    for i in 0..args.events {
        producer
            .send(&i.to_le_bytes(), &payload(i, args.payload_bytes))
            .map_err(|e| Failure::engine("sending", e))?;
    }
    bus.flush().map_err(|e| Failure::engine("flushing", e))?;
    sink.wait_caught_up(Duration::from_secs(600))
        .map_err(|e| Failure::engine("waiting for the sink", e))?;
    let elapsed = start.elapsed();
    let stats = sink.stop(Duration::from_secs(10));
    let ends: Vec<u64> = stats.shards.iter().map(|s| s.confirmed_end).collect();
    let _ = bus.shutdown(Duration::from_secs(10));
    Ok((
        Run {
            events: args.events,
            elapsed,
            lost: 0,
            duplicates: 0,
        },
        ends,
    ))
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let want = |which: &str| args.only.as_deref().is_none_or(|o| o == which);
    let url = |given: &Option<String>, key: &str, what: &str| {
        given.clone().or_else(|| services_env(key)).ok_or_else(|| {
            Failure::Verification(format!(
                "no {what}: run scripts/services.sh start or pass its --*-url"
            ))
        })
    };
    let redis_pair = if want("redis") {
        let u = url(&args.redis_url, "NET_REDIS_URL", "Redis")?;
        let runs = || Ok::<_, Failure>((redis::raw(args, &u)?, redis::net(args, &u)?));
        Some(progress::during("redis: raw client, then RedisSink", runs)?)
    } else {
        None
    };
    let js_pair = if want("jetstream") {
        let u = url(&args.nats_url, "NET_NATS_URL", "NATS")?;
        let runs = || Ok::<_, Failure>((jetstream::raw(args, &u)?, jetstream::net(args, &u)?));
        Some(progress::during(
            "JetStream: raw client, then JetStreamSink",
            runs,
        )?)
    } else {
        None
    };
    let ratio = |pair: &Option<(Run, Run)>| pair.map(|(raw, net)| net.per_s() / raw.per_s());
    let (redis_ratio, js_ratio) = (ratio(&redis_pair), ratio(&js_pair));
    let nets = [redis_pair.map(|p| p.1), js_pair.map(|p| p.1)];
    let lost: u64 = nets.iter().flatten().map(|r| r.lost).sum();
    let duplicates: u64 = nets.iter().flatten().map(|r| r.duplicates).sum();

    let mut table = Table::new(
        &format!(
            "bus -> backend sinks: {} events x {} B, {} shards",
            report::format_count(args.events as f64),
            args.payload_bytes,
            args.shards
        ),
        &["events/s", "ratio", "lost", "dup"],
    );
    let row = |r: &Run, ratio: Option<f64>| {
        vec![
            report::format_count(r.per_s()),
            ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            r.lost.to_string(),
            r.duplicates.to_string(),
        ]
    };
    if let Some((raw, net)) = &redis_pair {
        table
            .row(
                &format!("raw redis (pipeline {})", args.pipeline),
                row(raw, None),
            )
            .row("net -> RedisSink", row(net, redis_ratio));
    }
    if let Some((raw, net)) = &js_pair {
        table
            .row(
                &format!("raw async-nats ({} acks out)", args.window),
                row(raw, None),
            )
            .row("net -> JetStreamSink", row(net, js_ratio));
    }
    print!("{}", table.render());
    let command = format!(
        "cargo run --release -p net-bench -- adapters --events {} --payload-bytes {} --pipeline {} --window {} --shards {}{}",
        args.events,
        args.payload_bytes,
        args.pipeline,
        args.window,
        args.shards,
        args.only
            .as_deref()
            .map(|o| format!(" --only {o}"))
            .unwrap_or_default()
    );
    println!("  reproduce: {command}");
    let per_s = |r: Option<Run>| r.map(|r| report::round_to(r.per_s(), 0));
    let round3 = |x: Option<f64>| x.map(|x| report::round_to(x, 3));
    let mut j = JsonLine::default();
    j.field("scenario", "adapters")
        .field("events", args.events)
        .field("payload_bytes", args.payload_bytes as u64)
        .field("shards", args.shards)
        .field("pipeline", args.pipeline)
        .field("window", args.window)
        .field("redis_events_per_s", per_s(redis_pair.map(|p| p.1)))
        .field("redis_raw_per_s", per_s(redis_pair.map(|p| p.0)))
        .field("redis_ratio", round3(redis_ratio))
        .field("jetstream_events_per_s", per_s(js_pair.map(|p| p.1)))
        .field("jetstream_raw_per_s", per_s(js_pair.map(|p| p.0)))
        .field("jetstream_ratio", round3(js_ratio))
        .field("lost", lost)
        .field("duplicates", duplicates)
        .field("command", command);
    archive::emit(j.render(), args.json);
    if lost > 0 || duplicates > 0 {
        return Err(Failure::Verification(format!(
            "the backends hold {lost} events too few and {duplicates} too many"
        )));
    }
    Ok(())
}

mod redis {
    //! The Redis side: a raw pipelined client, and the bus → RedisSink.

    use std::time::Instant;

    use super::{Args, Run, payload, runtime, unique};
    use crate::Failure;

    fn redis_err(context: &str) -> impl FnOnce(::redis::RedisError) -> Failure + '_ {
        move |e| Failure::Verification(format!("redis: {context}: {e}"))
    }

    /// The length of each stream `{prefix}:{shard}`, `shard < shards`, which are then deleted.
    async fn take_lengths(
        con: &mut ::redis::aio::MultiplexedConnection,
        prefix: &str,
        shards: u64,
    ) -> Result<Vec<u64>, Failure> {
        let mut lengths = Vec::new();
        for shard in 0..shards {
            let key = format!("{prefix}:{shard}");
            let len: u64 = ::redis::cmd("XLEN")
                .arg(&key)
                .query_async(con)
                .await
                .map_err(redis_err("XLEN"))?;
            lengths.push(len);
            let _: () = ::redis::cmd("DEL")
                .arg(&key)
                .query_async(con)
                .await
                .map_err(redis_err("DEL"))?;
        }
        Ok(lengths)
    }

    /// Pipelines of `args.pipeline` XADDs with the sink's fields (`id`, `ts`, `data`), one
    /// pipeline in flight, into one stream per shard as the sink writes them.
    pub fn raw(args: &Args, url: &str) -> Result<Run, Failure> {
        let rt = runtime()?;
        rt.block_on(async {
            let client = ::redis::Client::open(url).map_err(redis_err("opening the client"))?;
            let mut con = client
                .get_multiplexed_async_connection_with_config(
                    &::redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(std::time::Duration::from_secs(30))),
                )
                .await
                .map_err(redis_err("connecting"))?;
            let prefix = unique("netbench-raw");
            let start = Instant::now();
            let mut i = 0u64;
            while i < args.events {
                let n = args.pipeline.min(args.events - i);
                let mut pipe = ::redis::pipe();
                for k in i..i + n {
                    let shard = k % args.shards;
                    pipe.cmd("XADD")
                        .arg(format!("{prefix}:{shard}"))
                        .arg("*")
                        .arg("id")
                        .arg(format!("{shard}:{k}"))
                        .arg("ts")
                        .arg(k)
                        .arg("data")
                        .arg(payload(k, args.payload_bytes))
                        .ignore();
                }
                pipe.exec_async(&mut con)
                    .await
                    .map_err(redis_err("XADD pipeline"))?;
                i += n;
            }
            let elapsed = start.elapsed();
            let held: u64 = take_lengths(&mut con, &prefix, args.shards)
                .await?
                .iter()
                .sum();
            Ok(Run {
                events: args.events,
                elapsed,
                lost: args.events.saturating_sub(held),
                duplicates: held.saturating_sub(args.events),
            })
        })
    }

    /// The bus → RedisSink with pipelines of `args.pipeline`; then every stream is read back
    /// (`XLEN`, the last entry's `id` field) against what the sink confirmed.
    pub fn net(args: &Args, url: &str) -> Result<Run, Failure> {
        let mut config = net_adapters::redis::RedisConfig::single(url);
        config.prefix = unique("netbench-sink");
        let prefix = config.prefix.clone();
        let sink = net_adapters::redis::RedisSink::new(config)
            .map_err(|e| Failure::engine("the Redis sink's config", e))?;
        let (mut run, ends) = super::run_sink(args, sink, args.pipeline, "redis")?;
        let rt = runtime()?;
        let held = rt.block_on(async {
            let client = ::redis::Client::open(url).map_err(redis_err("opening the client"))?;
            let mut con = client
                .get_multiplexed_async_connection_with_config(
                    &::redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(std::time::Duration::from_secs(30))),
                )
                .await
                .map_err(redis_err("connecting"))?;
            let lengths = take_lengths(&mut con, &prefix, ends.len() as u64).await?;
            for (shard, (&len, &end)) in lengths.iter().zip(&ends).enumerate() {
                if len != end {
                    return Err(Failure::Verification(format!(
                        "{prefix}:{shard} holds {len} entries, the sink confirmed {end}"
                    )));
                }
            }
            let held: u64 = lengths.iter().sum();
            Ok::<u64, Failure>(held)
        })?;
        run.lost = args.events.saturating_sub(held);
        run.duplicates = held.saturating_sub(args.events);
        Ok(run)
    }
}

mod jetstream {
    //! The JetStream side: a raw async-nats client with a window of outstanding acks, and the
    //! bus → JetStreamSink.

    use std::collections::VecDeque;
    use std::time::Instant;

    use async_nats::jetstream::{self, message::PublishMessage, stream};
    use bytes::Bytes;

    use super::{Args, Run, payload, runtime, unique};
    use crate::Failure;

    fn nats_err<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> Failure + '_ {
        move |e| Failure::Verification(format!("jetstream: {context}: {e}"))
    }

    /// The number of messages stream `name` holds; the stream is then deleted.
    async fn take_count(js: &jetstream::Context, name: &str) -> Result<u64, Failure> {
        let mut stream = js.get_stream(name).await.map_err(nats_err("stream"))?;
        let held = stream
            .info()
            .await
            .map_err(nats_err("stream info"))?
            .state
            .messages;
        js.delete_stream(name)
            .await
            .map_err(nats_err("deleting the stream"))?;
        Ok(held)
    }

    /// Publishes with the sink's headers (`Nats-Msg-Id`, `Net-Ts`) keeping `args.window`
    /// acks outstanding: when the window is full, the oldest ack is awaited.
    pub fn raw(args: &Args, url: &str) -> Result<Run, Failure> {
        let rt = runtime()?;
        rt.block_on(async {
            let client = async_nats::connect(url)
                .await
                .map_err(nats_err("connecting"))?;
            let js = jetstream::new(client);
            let name = unique("NETBENCHRAW");
            let prefix = name.to_lowercase();
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                ..Default::default()
            })
            .await
            .map_err(nats_err("creating the stream"))?;
            let window = usize::try_from(args.window).expect("window fits usize");
            let mut acks = VecDeque::with_capacity(window);
            let start = Instant::now();
            for k in 0..args.events {
                let shard = k % args.shards;
                if acks.len() == window {
                    let ack: jetstream::context::PublishAckFuture =
                        acks.pop_front().expect("a full window");
                    ack.await.map_err(nats_err("ack"))?;
                }
                let publish = PublishMessage::build()
                    .payload(Bytes::from(payload(k, args.payload_bytes)))
                    .message_id(format!("{shard}:{k}"))
                    .header("Net-Ts", k.to_string());
                let ack = js
                    .send_publish(format!("{prefix}.{shard}"), publish)
                    .await
                    .map_err(nats_err("publish"))?;
                acks.push_back(ack);
            }
            for ack in acks {
                ack.await.map_err(nats_err("ack"))?;
            }
            let elapsed = start.elapsed();
            let held = take_count(&js, &name).await?;
            Ok(Run {
                events: args.events,
                elapsed,
                lost: args.events.saturating_sub(held),
                duplicates: held.saturating_sub(args.events),
            })
        })
    }

    /// The bus → JetStreamSink with batches of `args.window`; then the stream's message
    /// count is checked against what the sink confirmed.
    pub fn net(args: &Args, url: &str) -> Result<Run, Failure> {
        let name = unique("NETBENCHSINK");
        let mut config = net_adapters::jetstream::JetStreamConfig::new(url);
        config.stream = name.clone();
        config.subject_prefix = name.to_lowercase();
        let sink = net_adapters::jetstream::JetStreamSink::new(config)
            .map_err(|e| Failure::engine("the JetStream sink's config", e))?;
        let (mut run, ends) = super::run_sink(args, sink, args.window, "jetstream")?;
        let confirmed: u64 = ends.iter().sum();
        let rt = runtime()?;
        let held = rt.block_on(async {
            let client = async_nats::connect(url)
                .await
                .map_err(nats_err("connecting"))?;
            take_count(&jetstream::new(client), &name).await
        })?;
        if held != confirmed {
            return Err(Failure::Verification(format!(
                "stream {name} holds {held} messages, the sink confirmed {confirmed}"
            )));
        }
        run.lost = args.events.saturating_sub(held);
        run.duplicates = held.saturating_sub(args.events);
        Ok(run)
    }
}
