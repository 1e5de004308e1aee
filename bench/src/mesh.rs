//! `net-bench mesh`: one node's log mirrored into another's over the encrypted UDP mesh
//! (subscriptions), two processes on loopback, 100-byte events, against plaintext UDP measured
//! in the same run.
//!
//! The bench process is node B, the subscriber; node A, the publisher, is a child process
//! (this executable re-run as the hidden `mesh-node --spec <json>`, see `node`), driven over
//! its stdin and stdout in lines: A starts its bus and says `READY <mesh address>`; B starts
//! its own, subscribes to every shard of A, and says `WARM`; A's producers send the warm-up
//! events (the handshake, the streams' first frames, pools and rings touched), B waits until
//! its log holds them and says `GO`; A opens its measured window and releases its producers;
//! B waits until its log holds everything and says `DONE`; A closes its window and answers
//! `RESULT <json>` (its first and last send times, its allocations and CPU time in the window,
//! its publications' counters), then shuts down and exits. The parent pre-generates both
//! nodes' identities and A's token-signing key in the run's scratch directory and issues B's
//! token itself, so nothing has to be asked of A. Any failure of the bench drops the child's
//! handle, which kills it; the child also dies with the bench (`PR_SET_PDEATHSIG`) or when its
//! stdin closes.
//!
//! Every bus has 2 shards; A runs one producer thread per shard (`Producer::send_to`); origin
//! shard `k` is mirrored into B's shard `k` (`--placement` says which cores each runs on). B
//! knows its log holds an event from a batch consumer on each of its shards (it counts the
//! records of every completed batch and notes the time: no allocation, no polling of the
//! stats), so the end of a window is the moment B's last batch completed (written; with
//! `every_batch`, also `fdatasync`ed).
//!
//! 1. Throughput, `fsync: never` on both nodes: `--events` events (half per producer) as fast
//!    as A's producers can send them; events/s = events / (A's first send → B's log holds
//!    every one). Allocations and CPU time are counted in each process over its window.
//! 2. The same with `fsync: every_batch` on both nodes (durable on both sides).
//! 3. Latency: A's producers paced at `--rate` events/s in all (`pace::send_sleeping`), each
//!    event stamped with its intended send time (wall clock, `realtime_ns`: both processes
//!    share it); a thread of B follows its bus with `poll_wait` and records, per event, the
//!    return of the poll that read it minus that time (so a producer's late wake-up counts, as
//!    in `net-bench latency`). Both nodes `fsync: never`.
//! 4. The raw ceiling: the same events as plaintext UDP, A's process `sendmmsg`ing 1472-byte
//!    datagrams (as many events per datagram as the mesh packs: `EVENTS_PER_DATAGRAM`) 64 per
//!    call to B, which `recvmmsg`s and counts them (`transport`'s raw sender and receiver, 8 MiB
//!    socket buffers, sender and receiver pinned to different cores); no crypto, no log, no
//!    flow control, so what the kernel drops is lost, not resent.
//! 5. Exactness: B reads back every mirrored event of runs 1-3 and checks that each origin
//!    shard holds seqs `0..n` exactly once, in order, byte for byte as sent (`event`); the
//!    run fails (after printing its report) if one is lost, repeated, reordered or altered.
//!
//! Placement (`--placement`): by default both nodes pin shard `k` to core `k`, so each
//! stream's two ends share a core and the two streams run side by side; crossing them (or not
//! pinning) measured lower and noisier here. To find where a run's time goes: `--only <part>`
//! runs one part (under `perf record -a`, say), `--trace-ms N` prints both nodes' stream state
//! every N ms (A: live or catching up from the log, next seq, acknowledged, lag, credit; B:
//! next seq, consumed, granted, what its log holds), and `--node-config <json>` changes both
//! nodes' config (`'{"mesh":{"stream_rto_ms":100}}'`). The latency run also splits each
//! event's time: intended send to written in A's log (A's ingest histogram, from the intended
//! time), to stamped by B's shard (`Event::ts_ns`), B's own lane-to-written histogram, and the
//! poll's return.

mod event;
mod node;
mod process;

pub use node::{NodeArgs, run as run_node};

use crate::report::{self, JsonLine, Percentiles, Table};
use crate::transport::{Buffers, bound_socket, receive_raw, two_cores};
use crate::{Failure, alloc, pace, parse_positive, progress, workload};
use event::{CheckTally, EVENT_BYTES, MirrorCheck};
use hdrhistogram::Histogram;
use net_engine::{
    AppendedBatch, BatchConsumer, Bus, Config, Cursor, ShardId, monotonic_ns, realtime_ns,
};
use net_transport::identity::Identity;
use net_transport::token::{Actions, ShardSet, SigningKey, Token};
use node::process_cpu_ns;
use process::NodeProcess;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shards of each node (and producer threads of the publisher).
const SHARDS: usize = 2;

/// Datagram bytes of the mesh (its default `datagram_bytes_max`) and of the raw reference.
const DATAGRAM_BYTES: usize = 1472;

/// Events the mesh packs into one datagram: a sealed message of `DATAGRAM_BYTES` less the
/// packet's header and tag holds a `DATA` frame header and then records of the payload plus
/// `RECORD_OVERHEAD` (length, timestamp) each. The raw reference carries as many per datagram.
const EVENTS_PER_DATAGRAM: usize =
    (DATAGRAM_BYTES - net_transport::codec::DATA_OVERHEAD - net_transport::stream::DATA_HEADER)
        / (EVENT_BYTES + net_transport::stream::RECORD_OVERHEAD);

/// Targets printed next to the figures.
const RAW_RATIO_TARGET: f64 = 0.7;
const E2E_P99_US_TARGET: f64 = 2_000.0;

/// How long the publisher gets to start, and to answer after `DONE`.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the warm-up may take to reach the subscriber's log.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A run that has not reached the subscriber's log after this long (plus a second per 100 k
/// events) is stuck: what is missing is reported lost.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often B looks at its batch consumers' counts while it waits.
const WAIT_STEP: Duration = Duration::from_millis(1);
/// Events per read-back poll, and the longest `poll_wait`.
const POLL_LIMIT: usize = 8_192;
const POLL_WAIT: Duration = Duration::from_millis(100);

/// Protocol lines from the publisher (a tag, a space, the rest).
pub(crate) mod tags {
    pub const READY: &str = "READY";
    pub const RESULT: &str = "RESULT";
}

/// Protocol lines to the publisher, newline included.
pub(crate) mod commands {
    pub const WARM: &str = "WARM\n";
    pub const GO: &str = "GO\n";
    pub const DONE: &str = "DONE\n";
}

/// Which cores the two nodes' shards run on (`shards` pinned in config order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Both nodes' shard `k` on core `k`: each stream's two ends share a core.
    Same,
    /// A's shard `k` on core `k`, B's on the other core: each stream crosses cores.
    Crossed,
    /// No pinning: the kernel places every thread.
    Unpinned,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Crossed => "crossed",
            Placement::Unpinned => "unpinned",
        }
    }
}

/// The parts of the scenario (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Never,
    Durable,
    Latency,
    Raw,
    Stalled,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Never => "never",
            Part::Durable => "durable",
            Part::Latency => "latency",
            Part::Raw => "raw",
            Part::Stalled => "stalled",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events of each throughput run (fsync never, then every_batch), over 2 producers.
    #[arg(long, default_value_t = 2_000_000, value_parser = parse_positive)]
    events: u64,
    /// Events sent and mirrored before each run's measured window.
    #[arg(long, default_value_t = 100_000)]
    warmup: u64,
    /// Paced rate of the latency run, events/s over both producers.
    #[arg(long, default_value_t = 100_000, value_parser = parse_positive)]
    rate: u64,
    /// Events of the latency run; by default 2 s at the rate, at most 2,000,000.
    #[arg(long, value_parser = parse_positive)]
    latency_events: Option<u64>,
    /// Shortest time between a paced producer's wake-ups, µs.
    #[arg(long, default_value_t = pace::WAKE_PERIOD_US_DEFAULT)]
    wake_us: u64,
    /// Datagrams per sendmmsg/recvmmsg call of the raw ceiling.
    #[arg(long, default_value_t = 64, value_parser = parse_positive)]
    batch: u64,
    /// SO_SNDBUF and SO_RCVBUF of the raw ceiling's sockets (the mesh's default is the same).
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
    /// Cores of the nodes' shards.
    #[arg(long, value_enum, default_value_t = Placement::Same)]
    placement: Placement,
    /// JSON merged into both nodes' bus config (`'{"mesh":{"stream_rto_ms":100}}'`), for
    /// experiments; by default both run the defaults but for what the scenario sets.
    #[arg(long, value_parser = parse_node_config)]
    node_config: Option<Value>,
    /// Print both nodes' stream state to stderr this often, ms (for finding out where a run
    /// spends its time; reading the stats allocates, so the allocation figures then count it).
    #[arg(long, default_value_t = 0)]
    trace_ms: u64,
    /// Run only this part (for profiling it); the others are reported as not measured.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Directory for the nodes' data (a scratch directory is made inside it; default /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object on the last line too.
    #[arg(long)]
    json: bool,
}

/// Clap parser for `--node-config`: a JSON object.
fn parse_node_config(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("must be a JSON object".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Merges `patch` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

impl Args {
    fn latency_events(&self) -> u64 {
        pace::events(self.latency_events, self.rate)
    }
}

// ---- the child's instructions -------------------------------------------------------------

/// What the child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Node A: a bus publishing `events` events after `warmup` ones.
    Publish,
    /// The raw reference's sender.
    Raw,
}

/// The child's instructions (`--spec`, JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub mode: Mode,
    /// Publish: the bus's config (JSON), the warm-up and measured events (over all shards),
    /// the paced rate (none: as fast as possible) and the paced producers' wake period.
    pub config: String,
    pub warmup: u64,
    pub events: u64,
    pub rate: Option<u64>,
    pub wake_us: u64,
    /// Print the streams' state to stderr this often (ms; 0: never).
    pub trace_ms: u64,
    /// Raw: where to send, how many datagrams of how many bytes, how many per call, the
    /// socket's buffers and the core to pin to.
    pub target: String,
    pub datagrams: u64,
    pub datagram_bytes: usize,
    pub batch: usize,
    pub socket_buffer: usize,
    pub core: Option<usize>,
}

impl Spec {
    fn publish(config: String, warmup: u64, events: u64, rate: Option<u64>, wake_us: u64) -> Spec {
        Spec {
            mode: Mode::Publish,
            config,
            warmup,
            events,
            rate,
            wake_us,
            trace_ms: 0,
            target: String::new(),
            datagrams: 0,
            datagram_bytes: 0,
            batch: 0,
            socket_buffer: 0,
            core: None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "mode": match self.mode { Mode::Publish => "publish", Mode::Raw => "raw" },
            "config": self.config,
            "warmup": self.warmup,
            "events": self.events,
            "rate": self.rate,
            "wake_us": self.wake_us,
            "trace_ms": self.trace_ms,
            "target": self.target,
            "datagrams": self.datagrams,
            "datagram_bytes": self.datagram_bytes,
            "batch": self.batch,
            "socket_buffer": self.socket_buffer,
            "core": self.core,
        })
    }

    pub(crate) fn from_json(text: &str) -> Result<Spec, Failure> {
        let bad = |what: &str| Failure::Verification(format!("mesh-node --spec: {what}"));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let u64_of = |name: &str| {
            v[name]
                .as_u64()
                .ok_or_else(|| bad(&format!("{name} is not a count")))
        };
        let usize_of = |name: &str| {
            u64_of(name).and_then(|n| usize::try_from(n).map_err(|e| bad(&e.to_string())))
        };
        let str_of = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("{name} is not a string")))
        };
        let optional = |name: &str| match &v[name] {
            Value::Null => Ok(None),
            other => other
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(&format!("{name} is not a count"))),
        };
        Ok(Spec {
            mode: match v["mode"].as_str() {
                Some("publish") => Mode::Publish,
                Some("raw") => Mode::Raw,
                _ => return Err(bad("mode is neither publish nor raw")),
            },
            config: str_of("config")?,
            warmup: u64_of("warmup")?,
            events: u64_of("events")?,
            rate: optional("rate")?,
            wake_us: u64_of("wake_us")?,
            trace_ms: u64_of("trace_ms")?,
            target: str_of("target")?,
            datagrams: u64_of("datagrams")?,
            datagram_bytes: usize_of("datagram_bytes")?,
            batch: usize_of("batch")?,
            socket_buffer: usize_of("socket_buffer")?,
            core: optional("core")?
                .map(usize::try_from)
                .transpose()
                .map_err(|e| bad(&e.to_string()))?,
        })
    }
}

// ---- keys and configs ---------------------------------------------------------------------

/// Both nodes' identities, A's signing key and the mesh's PSK, saved (0600) in the scratch
/// directory, and B's token for every shard of A.
#[derive(Debug)]
struct Keys {
    a: Identity,
    b: Identity,
    psk: String,
    a_identity: PathBuf,
    a_signing: PathBuf,
    b_identity: PathBuf,
    b_signing: PathBuf,
    token: Vec<u8>,
}

impl Keys {
    fn new(dir: &Path) -> Result<Keys, Failure> {
        let key_error = |e: net_transport::identity::IdentityError| {
            Failure::Verification(format!("saving a mesh key: {e}"))
        };
        let (a, b) = (Identity::generate(), Identity::generate());
        let (a_signing_key, b_signing_key) = (SigningKey::generate(), SigningKey::generate());
        let keys = Keys {
            psk: net_engine::Psk::generate().to_hex(),
            a_identity: dir.join("a.identity"),
            a_signing: dir.join("a.signing_key"),
            b_identity: dir.join("b.identity"),
            b_signing: dir.join("b.signing_key"),
            token: Vec::new(),
            a,
            b,
        };
        keys.a.save(&keys.a_identity).map_err(key_error)?;
        keys.b.save(&keys.b_identity).map_err(key_error)?;
        a_signing_key.save(&keys.a_signing).map_err(key_error)?;
        b_signing_key.save(&keys.b_signing).map_err(key_error)?;
        let now = realtime_ns() / 1_000_000_000;
        let token = Token::issue(
            &a_signing_key,
            keys.a.node_id(),
            keys.b.node_id(),
            keys.b.public_key(),
            Actions::SUBSCRIBE,
            ShardSet::all(),
            1,
            now.saturating_sub(60),
            now + 86_400,
        );
        Ok(Keys {
            token: token.to_bytes().to_vec(),
            ..keys
        })
    }
}

/// Which node a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    A,
    B,
}

/// A node's bus: 2 shards, a mesh on 127.0.0.1 (port picked fresh), `fsync`, the default
/// everything else (idle `park`, 200 µs linger, 4 MiB stream window, 8 MiB socket buffers).
fn config_json(
    node: Node,
    dir: &Path,
    fsync: &str,
    keys: &Keys,
    placement: Placement,
    extra: Option<&Value>,
) -> String {
    let (identity, signing) = match node {
        Node::A => (&keys.a_identity, &keys.a_signing),
        Node::B => (&keys.b_identity, &keys.b_signing),
    };
    let cores = two_cores().map(|[c0, c1]| match (placement, node) {
        (Placement::Crossed, Node::B) => [c1.id, c0.id],
        _ => [c0.id, c1.id],
    });
    let mut config = json!({
        "data_dir": dir.display().to_string(),
        "shards": SHARDS,
        "pin": placement != Placement::Unpinned && cores.is_some(),
        "storage": {"fsync": fsync},
        "mesh": {
            "listen": "127.0.0.1:0",
            "psk": keys.psk,
            "identity_file": identity.display().to_string(),
            "signing_key_file": signing.display().to_string(),
        },
    });
    if let (Some(cores), true) = (cores, placement != Placement::Unpinned) {
        config["cores"] = json!(cores);
    }
    if let Some(extra) = extra {
        merge(&mut config, extra);
    }
    config.to_string()
}

// ---- B's view of its log ------------------------------------------------------------------

/// What B's batch consumers saw: records per shard, and when each shard's last batch
/// completed (monotonic ns).
#[derive(Debug, Default)]
struct Progress {
    events: [AtomicU64; SHARDS],
    last_ns: [AtomicU64; SHARDS],
}

impl Progress {
    fn events(&self) -> u64 {
        self.events.iter().map(|e| e.load(Ordering::Acquire)).sum()
    }

    fn last_ns(&self) -> u64 {
        self.last_ns
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Waits until B's log holds `events` events, or `timeout`, or the publisher exited;
    /// whether it does. Allocates nothing.
    fn wait_for(&self, events: u64, timeout: Duration, publisher: &mut NodeProcess) -> bool {
        let deadline = Instant::now() + timeout;
        while self.events() < events {
            if Instant::now() >= deadline || publisher.exited() {
                return false;
            }
            std::thread::sleep(WAIT_STEP);
        }
        true
    }
}

/// A batch consumer on one of B's shards: counts the records of each completed batch.
struct Counter {
    progress: Arc<Progress>,
    shard: usize,
}

impl BatchConsumer for Counter {
    fn on_batch(&mut self, _shard: ShardId, batch: &AppendedBatch<'_>) -> bool {
        self.progress.last_ns[self.shard].store(monotonic_ns(), Ordering::Release);
        self.progress.events[self.shard].fetch_add(batch.len(), Ordering::Release);
        true
    }
}

// ---- one run of the mesh ------------------------------------------------------------------

/// Everything a run needs from the scenario.
struct Ctx<'a> {
    args: &'a Args,
    keys: &'a Keys,
    scratch: &'a Path,
}

/// A mesh run's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// As fast as possible with this fsync policy on both nodes.
    Throughput(&'static str),
    /// Paced, `fsync: never`.
    Latency,
}

/// What a mesh run measured.
#[derive(Debug)]
struct MeshOutcome {
    events: u64,
    /// A's first send → B's log holds every event (monotonic ns; 0 if it never did).
    elapsed_ns: u64,
    /// A's first send → its last.
    send_ns: u64,
    complete: bool,
    b_allocations: alloc::Snapshot,
    b_cpu_ns: u64,
    /// A's `RESULT`.
    a: Value,
    check: CheckTally,
    streams: StreamFigures,
    /// Latency run: intended send → poll returned it; → B's shard stamped it.
    e2e: Option<Histogram<u64>>,
    stamped: Option<Histogram<u64>>,
    after_stamp: Option<Histogram<u64>>,
    /// B's shards' latency from a mirrored record's staging in the origin lane to its batch
    /// persisted.
    b_persisted: Percentiles,
}

impl MeshOutcome {
    fn events_per_s(&self) -> f64 {
        if self.complete && self.elapsed_ns > 0 {
            self.events as f64 * 1e9 / self.elapsed_ns as f64
        } else {
            0.0
        }
    }

    fn allocs_per_event(&self) -> f64 {
        self.b_allocations.allocations as f64 / self.events.max(1) as f64
    }

    fn publisher_allocs_per_event(&self) -> f64 {
        self.a["allocations"].as_u64().unwrap_or(0) as f64 / self.events.max(1) as f64
    }

    fn publisher_send_per_s(&self) -> f64 {
        self.events as f64 * 1e9 / self.send_ns.max(1) as f64
    }
}

/// The streams' counters after a run: the publisher's (from its `RESULT`) and B's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StreamFigures {
    resent_ranges: u64,
    timeouts: u64,
    /// Times a publication fell behind the completed batches and caught up from its log.
    catchups: u64,
    stream_duplicates: u64,
    skipped_events: u64,
    no_room: u64,
    subscribes: u64,
    /// Datagrams B received and mesh drops on either node.
    datagrams_in: u64,
    dropped: u64,
    /// Datagrams the kernel dropped for want of room in a UDP socket's receive buffer
    /// (`/proc/net/snmp` `RcvbufErrors`, this network namespace, over the run).
    kernel_drops: u64,
}

impl StreamFigures {
    fn read(b: &Bus, a: &Value, kernel_drops: u64) -> StreamFigures {
        let stats = b.mesh_stats().expect("B runs a mesh");
        let sum = |f: fn(&net_engine::StreamStats) -> u64| stats.subscriptions.iter().map(f).sum();
        let a_u64 = |name: &str| a[name].as_u64().unwrap_or(0);
        StreamFigures {
            resent_ranges: a_u64("resent_ranges"),
            timeouts: a_u64("timeouts"),
            catchups: a_u64("catchups"),
            stream_duplicates: sum(|s| s.duplicates),
            skipped_events: sum(|s| s.skipped_events),
            no_room: sum(|s| s.no_room),
            subscribes: sum(|s| s.subscribes),
            datagrams_in: stats.total.packets_in,
            dropped: stats.total.dropped_total() + a_u64("dropped"),
            kernel_drops,
        }
    }

    fn plus(self, o: StreamFigures) -> StreamFigures {
        StreamFigures {
            resent_ranges: self.resent_ranges + o.resent_ranges,
            timeouts: self.timeouts + o.timeouts,
            catchups: self.catchups + o.catchups,
            stream_duplicates: self.stream_duplicates + o.stream_duplicates,
            skipped_events: self.skipped_events + o.skipped_events,
            no_room: self.no_room + o.no_room,
            subscribes: self.subscribes + o.subscribes,
            datagrams_in: self.datagrams_in + o.datagrams_in,
            dropped: self.dropped + o.dropped,
            kernel_drops: self.kernel_drops + o.kernel_drops,
        }
    }
}

/// Runs node A as a child and node B here, once.
fn mesh_run(ctx: &Ctx<'_>, name: &str, run: Run) -> Result<MeshOutcome, Failure> {
    let args = ctx.args;
    let (fsync, rate, events) = match run {
        Run::Throughput(fsync) => (fsync, None, args.events),
        Run::Latency => ("never", Some(args.rate), args.latency_events()),
    };
    let (dir_a, dir_b) = (
        ctx.scratch.join(format!("{name}-a")),
        ctx.scratch.join(format!("{name}-b")),
    );
    let config = |node, dir| {
        config_json(
            node,
            dir,
            fsync,
            ctx.keys,
            args.placement,
            args.node_config.as_ref(),
        )
    };
    let spec = Spec {
        trace_ms: args.trace_ms,
        ..Spec::publish(
            config(Node::A, &dir_a),
            args.warmup,
            events,
            rate,
            args.wake_us,
        )
    };
    let mut child = NodeProcess::spawn(&spec.to_json())?;
    let addr: SocketAddr = child
        .expect(tags::READY, CHILD_TIMEOUT)?
        .parse()
        .map_err(|e| Failure::Verification(format!("the publisher's address: {e}")))?;

    let b = Bus::start(
        Config::from_json(&config(Node::B, &dir_b))
            .map_err(|e| Failure::engine("the subscriber's config", e))?,
    )
    .map_err(|e| Failure::engine("starting the subscriber", e))?;
    let progress = Arc::new(Progress::default());
    for shard in 0..SHARDS {
        let counter = Counter {
            progress: progress.clone(),
            shard,
        };
        b.add_batch_consumer(ShardId::from_index(shard), "mesh-bench", Box::new(counter))
            .map_err(|e| Failure::engine("adding a batch consumer", e))?;
    }
    let started = b
        .subscribe(addr, ctx.keys.a.public_key(), &ctx.keys.token, None)
        .map_err(|e| Failure::engine("subscribing to the publisher", e))?;
    if started != [(0, 0), (1, 0)] {
        return Err(Failure::Verification(format!(
            "the subscription started at {started:?}, not at seq 0 of 2 shards"
        )));
    }

    let rcvbuf_errors = udp_rcvbuf_errors();
    let total = args.warmup + events;
    let timeout = RUN_TIMEOUT + Duration::from_secs(events / 100_000);
    let origin = ctx.keys.a.node_id();
    // Set when the run went wrong: the follower and the tracer stop (the scope waits for them).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let measured = std::thread::scope(|s| -> Result<_, Failure> {
        // The latency run's consumer follows B's bus from the start.
        let follower = (run == Run::Latency)
            .then(|| {
                std::thread::Builder::new()
                    .name("mesh-follower".into())
                    .spawn_scoped(s, || {
                        let stall = timeout + WARMUP_TIMEOUT;
                        follow(&b, origin, args.warmup, total, stall, &stop)
                    })
                    .map_err(Failure::io("spawning the follower"))
            })
            .transpose();
        let tracer = (args.trace_ms > 0).then(|| {
            let (b, progress, stop) = (&b, &progress, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    trace_subscriber(b, progress);
                    std::thread::sleep(Duration::from_millis(args.trace_ms));
                }
            })
        });
        // Nothing is measured when the follower could not start (its error is returned below).
        let window = match &follower {
            Ok(_) => measure_window(&mut child, &b, &progress, name, args.warmup, total, timeout),
            Err(_) => Err(Failure::Verification("the follower did not start".into())),
        };
        if !matches!(window, Ok((true, _, _))) {
            stop.store(true, Ordering::Release);
        }
        let followed = follower?
            .map(|f| f.join().expect("the follower does not panic"))
            .transpose();
        stop.store(true, Ordering::Release);
        if let Some(tracer) = tracer {
            tracer.join().expect("the tracer does not panic");
        }
        let (complete, allocations, cpu_ns) = window?;
        Ok((complete, allocations, cpu_ns, followed?))
    })?;
    let (complete, b_allocations, b_cpu_ns, followed) = measured;
    let end_ns = progress.last_ns();
    let b_persisted = Percentiles::from_ns(&b.take_latency());
    child.send(commands::DONE)?;
    let a: Value = serde_json::from_str(&child.expect(tags::RESULT, CHILD_TIMEOUT)?)
        .map_err(|e| Failure::Verification(format!("the publisher's RESULT: {e}")))?;
    child.wait(CHILD_TIMEOUT)?;
    let kernel_drops = udp_rcvbuf_errors().saturating_sub(rcvbuf_errors);
    let streams = StreamFigures::read(&b, &a, kernel_drops);
    let (check, e2e, stamped, after_stamp) = match followed {
        Some(f) => (
            f.check.tally,
            Some(f.e2e),
            Some(f.stamped),
            Some(f.after_stamp),
        ),
        None => (read_back(&b, origin, total)?, None, None, None),
    };
    crate::shut_down_cleanly(b, Duration::from_secs(10))?;
    for dir in [&dir_a, &dir_b] {
        std::fs::remove_dir_all(dir).map_err(Failure::io(format!("removing {}", dir.display())))?;
    }
    let first_ns = a["first_ns"].as_u64().unwrap_or(0);
    let last_ns = a["last_ns"].as_u64().unwrap_or(0);
    Ok(MeshOutcome {
        events,
        elapsed_ns: end_ns.saturating_sub(first_ns),
        send_ns: last_ns.saturating_sub(first_ns),
        complete,
        b_allocations,
        b_cpu_ns,
        a,
        check,
        streams,
        e2e,
        stamped,
        after_stamp,
        b_persisted,
    })
}

/// The measured window on B: tells A to warm up and waits until B's log holds the warm-up,
/// then opens the window (allocations, CPU), tells A to go and waits until B's log holds
/// `total` events or `timeout` passes. Returns whether it did, the allocations and the CPU
/// time of this process in the window.
fn measure_window(
    child: &mut NodeProcess,
    b: &Bus,
    progress: &Progress,
    name: &str,
    warmup: u64,
    total: u64,
    timeout: Duration,
) -> Result<(bool, alloc::Snapshot, u64), Failure> {
    child.send(commands::WARM)?;
    if !progress.wait_for(warmup, WARMUP_TIMEOUT, child) {
        eprintln!("warm-up stuck: {:?}", b.mesh_stats());
        return Err(Failure::Verification(format!(
            "the warm-up did not reach the subscriber's log in {WARMUP_TIMEOUT:?}: {} of \
             {warmup} events",
            progress.events(),
        )));
    }
    drop(b.take_latency()); // the warm-up's
    let cpu_before = process_cpu_ns();
    let before = alloc::snapshot();
    child.send(commands::GO)?;
    let complete = progress.wait_for(total, timeout, child);
    let allocations = alloc::snapshot().since(before);
    let cpu_ns = process_cpu_ns() - cpu_before;
    if !complete {
        let why = if child.exited() {
            "the publisher exited".to_owned()
        } else {
            format!("the {timeout:?} timeout passed")
        };
        eprintln!(
            "{name}: the subscriber's log holds {} of {total} events ({why}): {:?}",
            progress.events(),
            b.mesh_stats()
        );
    }
    Ok((complete, allocations, cpu_ns))
}

/// One `--trace-ms` line per subscription of B: the next origin seq it waits for, the record
/// bytes it consumed and granted, and what its log holds.
fn trace_subscriber(b: &Bus, progress: &Progress) {
    let Some(stats) = b.mesh_stats() else { return };
    let ms = monotonic_ns() as f64 / 1e6;
    for s in &stats.subscriptions {
        let shard = usize::from(s.shard).min(SHARDS - 1);
        eprintln!(
            "trace B {ms:.1} shard {} next {} consumed {} granted {} logged {} dup {} \
             packets_in {}",
            s.shard,
            s.next_seq,
            s.consumed_bytes,
            s.granted_bytes,
            progress.events[shard].load(Ordering::Relaxed),
            s.duplicates,
            stats.total.packets_in,
        );
    }
}

/// The namespace's count of UDP datagrams dropped for want of receive-buffer room
/// (`/proc/net/snmp`, `Udp: RcvbufErrors`); 0 where it cannot be read.
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// Reads B's whole log back and checks it.
fn read_back(b: &Bus, origin: u64, total: u64) -> Result<CheckTally, Failure> {
    let mut check = MirrorCheck::new(origin, SHARDS, total);
    let mut cursor = Cursor::start();
    loop {
        let resp = b
            .poll(&cursor, POLL_LIMIT)
            .map_err(|e| Failure::engine("reading the mirror back", e))?;
        if let Some((shard, e)) = resp.failed_shards.first() {
            return Err(Failure::engine(&format!("reading shard {shard:?}"), e));
        }
        if resp.events.is_empty() {
            return Ok(check.tally);
        }
        for e in &resp.events {
            check.check(e);
        }
        cursor = resp.next;
    }
}

/// What B's follower saw in the latency run.
struct Followed {
    check: MirrorCheck,
    e2e: Histogram<u64>,
    stamped: Histogram<u64>,
    /// B's stamp → the poll's return.
    after_stamp: Histogram<u64>,
}

/// The latency run's consumer: follows B's bus with `poll_wait` until every event was read
/// (or nothing came for `stall`, or `stop` is set), checks each, and records the latency of
/// the measured ones (past the warm-up) from their send time to the poll's return, to B's
/// stamp, and from B's stamp to the poll's return.
fn follow(
    b: &Bus,
    origin: u64,
    warmup: u64,
    total: u64,
    stall: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Followed, Failure> {
    let mut f = Followed {
        check: MirrorCheck::new(origin, SHARDS, total),
        e2e: workload::latency_histogram(),
        stamped: workload::latency_histogram(),
        after_stamp: workload::latency_histogram(),
    };
    let warm: Vec<u64> = (0..SHARDS)
        .map(|k| event::per_shard(warmup, SHARDS, k))
        .collect();
    let mut cursor = Cursor::start();
    let mut last_progress = Instant::now();
    while !f.check.complete() && last_progress.elapsed() < stall && !stop.load(Ordering::Acquire) {
        let resp = b
            .poll_wait(&cursor, POLL_LIMIT, POLL_WAIT)
            .map_err(|e| Failure::engine("following the mirror", e))?;
        let now_ns = realtime_ns();
        if let Some((shard, e)) = resp.failed_shards.first() {
            return Err(Failure::engine(&format!("following shard {shard:?}"), e));
        }
        if !resp.events.is_empty() {
            last_progress = Instant::now();
        }
        for e in &resp.events {
            if let Some((shard, seq)) = f.check.check(e)
                && seq >= warm[usize::from(shard)]
            {
                let sent = event::sent_ns(&e.payload);
                f.e2e.saturating_record(now_ns.saturating_sub(sent).max(1));
                f.stamped
                    .saturating_record(e.ts_ns.saturating_sub(sent).max(1));
                f.after_stamp
                    .saturating_record(now_ns.saturating_sub(e.ts_ns).max(1));
            }
        }
        cursor = resp.next;
    }
    Ok(f)
}

// ---- the raw ceiling ----------------------------------------------------------------------

/// What the raw ceiling measured.
#[derive(Debug)]
struct RawOutcome {
    datagrams: u64,
    received: u64,
    elapsed_ns: u64,
    buffers: Buffers,
}

impl RawOutcome {
    fn events_per_s(&self) -> f64 {
        let events = self.received * EVENTS_PER_DATAGRAM as u64;
        events as f64 * 1e9 / self.elapsed_ns.max(1) as f64
    }
}

/// Plaintext datagrams from a child process to this one: `transport`'s raw sender there,
/// its receiver here.
fn raw_run(args: &Args) -> Result<RawOutcome, Failure> {
    let (socket, buffers) = bound_socket(args.socket_buffer, true)?;
    let target = socket
        .local_addr()
        .map_err(Failure::io("reading an address"))?;
    let datagrams = args.events.div_ceil(EVENTS_PER_DATAGRAM as u64);
    let batch = usize::try_from(args.batch.min(1024)).expect("at most 1024");
    let cores = two_cores();
    let spec = Spec {
        mode: Mode::Raw,
        target: target.to_string(),
        datagrams,
        datagram_bytes: DATAGRAM_BYTES,
        batch,
        socket_buffer: args.socket_buffer,
        core: cores.map(|c| c[0].id),
        ..Spec::publish(String::new(), 0, 0, None, 0)
    };
    let mut child = NodeProcess::spawn(&spec.to_json())?;
    child.expect(tags::READY, CHILD_TIMEOUT)?;
    let (received, told) = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            crate::transport::pin(cores.map(|c| c[1]));
            let mut told = Ok(());
            let received = receive_raw(&socket, datagrams, batch, DATAGRAM_BYTES, || {
                told = child.send(commands::GO);
            });
            (received, told)
        });
        receiver.join().expect("the raw receiver does not panic")
    });
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    told?;
    let received = received?;
    received.tally.verify("raw")?;
    let a: Value = serde_json::from_str(&child.expect(tags::RESULT, CHILD_TIMEOUT)?)
        .map_err(|e| Failure::Verification(format!("the raw sender's RESULT: {e}")))?;
    child.wait(CHILD_TIMEOUT)?;
    let first_ns = a["first_ns"].as_u64().unwrap_or(0);
    let last_ns = received.last.map_or(first_ns, |last| {
        let before_now = u64::try_from(now.duration_since(last).as_nanos()).unwrap_or(0);
        now_ns.saturating_sub(before_now)
    });
    Ok(RawOutcome {
        datagrams,
        received: received.tally.received,
        elapsed_ns: last_ns.saturating_sub(first_ns),
        buffers,
    })
}

// ---- the scenario -------------------------------------------------------------------------

/// Everything one run of the scenario measured (a part left out by `--only` is `None`).
#[derive(Debug, Default)]
struct Figures {
    never: Option<MeshOutcome>,
    durable: Option<MeshOutcome>,
    latency: Option<MeshOutcome>,
    raw: Option<RawOutcome>,
    stalled: Option<StalledOutcome>,
}

/// The publisher's ingest with a subscriber that stopped consuming, against the same
/// ingest with no subscriber: both buses in this process, one after the other.
#[derive(Debug)]
struct StalledOutcome {
    alone_per_s: f64,
    stalled_per_s: f64,
    lag_events: u64,
}

impl StalledOutcome {
    fn ratio(&self) -> f64 {
        self.stalled_per_s / self.alone_per_s
    }
}

/// Ingests `n` events into `bus` from 2 producers (one per shard); returns events/s to
/// persisted (`fsync: never`).
fn ingest_rate(bus: &Bus, n: u64) -> Result<f64, Failure> {
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), Failure> {
        let workers: Vec<_> = (0..SHARDS)
            .map(|k| {
                s.spawn(move || -> Result<(), Failure> {
                    let mut p = bus
                        .producer()
                        .map_err(|e| Failure::engine("a producer", e))?;
                    let payload = [0u8; EVENT_BYTES];
                    for _ in 0..n / SHARDS as u64 {
                        p.send_to(k, &payload)
                            .map_err(|e| Failure::engine("sending", e))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a producer does not panic")?;
        }
        Ok(())
    })?;
    bus.flush().map_err(|e| Failure::engine("flush", e))?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// (d): the publisher's ingest rate with a stalled subscriber (its shards paused after it
/// subscribed, so it consumes nothing and its credit runs out) over the rate alone.
fn stalled_run(args: &Args, scratch: &Path) -> Result<StalledOutcome, Failure> {
    let psk = net_transport::identity::Psk::generate().to_hex();
    let config = |name: &str| -> Result<Config, Failure> {
        let text = json!({
            "data_dir": scratch.join(name),
            "shards": SHARDS,
            "pin": false,
            "storage": {"fsync": "never"},
            "mesh": {"listen": "127.0.0.1:0", "psk": psk},
        })
        .to_string();
        Config::from_json(&text).map_err(|e| Failure::engine("the stalled run's config", e))
    };
    let start = |name: &str| {
        Bus::start(config(name)?).map_err(|e| Failure::engine("starting a stalled-run bus", e))
    };
    let n = args.events;
    // The reference runs the same threads: a second bus, idle, with no subscription.
    let (alone, idle) = (start("stalled-alone")?, start("stalled-idle")?);
    let alone_per_s = ingest_rate(&alone, n)?;
    crate::shut_down_cleanly(alone, Duration::from_secs(10))?;
    crate::shut_down_cleanly(idle, Duration::from_secs(10))?;
    let (a, b) = (start("stalled-a")?, start("stalled-b")?);
    let (b_node, b_key) = b.mesh_identity().expect("a mesh");
    let (_, a_key) = a.mesh_identity().expect("a mesh");
    let (_, token) = a
        .issue_token(b_node, b_key, None, Duration::from_secs(600))
        .map_err(|e| Failure::engine("a token", e))?;
    let addr = a.mesh_addr().expect("a mesh");
    b.subscribe(addr, a_key, &token, None)
        .map_err(|e| Failure::engine("subscribing", e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let accepted = b
            .mesh_stats()
            .map_or(0, |m| m.subscriptions.iter().filter(|s| s.active).count());
        if accepted == SHARDS {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::Verification(
                "the stalled run's subscriptions were not accepted in 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for k in 0..SHARDS {
        b.pause_shard(ShardId::from_index(k), true)
            .map_err(|e| Failure::engine("pausing the subscriber", e))?;
    }
    let stalled_per_s = ingest_rate(&a, n)?;
    let lag_events = a
        .mesh_stats()
        .map_or(0, |m| m.publications.iter().map(|p| p.lag_events).sum());
    for k in 0..SHARDS {
        b.pause_shard(ShardId::from_index(k), false)
            .map_err(|e| Failure::engine("resuming the subscriber", e))?;
    }
    crate::shut_down_cleanly(a, Duration::from_secs(10))?;
    crate::shut_down_cleanly(b, Duration::from_secs(10))?;
    Ok(StalledOutcome {
        alone_per_s,
        stalled_per_s,
        lag_events,
    })
}

impl Figures {
    fn mesh_runs(&self) -> impl Iterator<Item = (&'static str, &MeshOutcome)> {
        [
            ("never", &self.never),
            ("durable", &self.durable),
            ("latency", &self.latency),
        ]
        .into_iter()
        .filter_map(|(name, run)| run.as_ref().map(|r| (name, r)))
    }

    fn raw_ratio(&self) -> Option<f64> {
        let raw = self.raw.as_ref()?.events_per_s();
        let never = self.never.as_ref()?.events_per_s();
        (raw > 0.0).then(|| never / raw)
    }

    fn e2e(&self) -> Option<Percentiles> {
        Some(Percentiles::from_ns(self.latency.as_ref()?.e2e.as_ref()?))
    }

    fn stamped(&self) -> Option<Percentiles> {
        Some(Percentiles::from_ns(
            self.latency.as_ref()?.stamped.as_ref()?,
        ))
    }

    fn after_stamp(&self) -> Option<Percentiles> {
        Some(Percentiles::from_ns(
            self.latency.as_ref()?.after_stamp.as_ref()?,
        ))
    }

    fn check(&self) -> CheckTally {
        self.mesh_runs()
            .fold(CheckTally::default(), |sum, (_, r)| sum.plus(r.check))
    }

    fn streams(&self) -> StreamFigures {
        self.mesh_runs()
            .fold(StreamFigures::default(), |sum, (_, r)| sum.plus(r.streams))
    }

    /// The targets this run missed, by name (a target of a part not run is not missed).
    fn missed(&self) -> Vec<&'static str> {
        let check = self.check();
        let mut missed = Vec::new();
        if self.raw.is_some()
            && self.never.is_some()
            && self.raw_ratio().is_none_or(|r| r < RAW_RATIO_TARGET)
        {
            missed.push("raw_ratio");
        }
        if let Some(e2e) = self.e2e()
            && (e2e.p99_us >= E2E_P99_US_TARGET || e2e.samples == 0)
        {
            missed.push("e2e_p99_us");
        }
        if check.lost() > 0 {
            missed.push("lost");
        }
        if check.duplicates > 0 {
            missed.push("duplicates");
        }
        if self
            .never
            .as_ref()
            .is_some_and(|n| n.b_allocations.allocations > 0)
        {
            missed.push("allocs_per_event");
        }
        missed
    }
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::storage::DIR_DEFAULT));
    let scratch = crate::scratch_dir(Some(&base), "mesh")?;
    let keys = Keys::new(scratch.path())?;
    let ctx = Ctx {
        args,
        keys: &keys,
        scratch: scratch.path(),
    };
    let wanted = |part: Part| args.only.is_none_or(|only| only == part);
    let mut figures = Figures::default();
    if wanted(Part::Never) {
        let run = || mesh_run(&ctx, "never", Run::Throughput("never"));
        figures.never = Some(progress::during("mesh, fsync never", run)?);
    }
    if wanted(Part::Durable) {
        let run = || mesh_run(&ctx, "durable", Run::Throughput("every_batch"));
        figures.durable = Some(progress::during("mesh, fsync every_batch", run)?);
    }
    if wanted(Part::Latency) {
        let run = || mesh_run(&ctx, "latency", Run::Latency);
        figures.latency = Some(progress::during("mesh, paced latency", run)?);
    }
    if wanted(Part::Raw) {
        figures.raw = Some(progress::during("raw sendmmsg → recvmmsg", || {
            raw_run(args)
        })?);
    }
    if wanted(Part::Stalled) {
        let run = || stalled_run(args, scratch.path());
        figures.stalled = Some(progress::during("a stalled subscriber", run)?);
    }
    if let Some(latency) = &figures.latency {
        let plot = "A's send → B's poll_wait, paced";
        let parts = [
            ("end to end", &latency.e2e),
            ("to B's stamp", &latency.stamped),
            ("B's stamp → poll_wait", &latency.after_stamp),
        ];
        for (series, histogram) in parts {
            if let Some(histogram) = histogram {
                crate::archive::latency(plot, series, histogram);
            }
        }
    }
    scratch
        .close()
        .map_err(Failure::io("removing the scratch directory"))?;
    print_report(args, &figures);
    let check = figures.check();
    if !check.exact() {
        return Err(Failure::Verification(format!(
            "the mirror is not exact: {check:?} (lost {})",
            check.lost()
        )));
    }
    if let Some((name, _)) = figures.mesh_runs().find(|(_, r)| !r.complete) {
        return Err(Failure::Verification(format!(
            "the {name} run never completed"
        )));
    }
    Ok(())
}

// ---- the report ---------------------------------------------------------------------------

fn print_report(args: &Args, f: &Figures) {
    let command = command(args);
    print!("{}", table(args, f).render());
    for line in notes(args, f) {
        println!("  {line}");
    }
    println!("  reproduce: {command}");
    crate::archive::emit(json_line(args, f, command).render(), args.json);
}

fn count(n: f64) -> String {
    report::format_count(n)
}

fn met(f: &Figures, target: &str) -> String {
    if f.missed().contains(&target) {
        "MISSED".into()
    } else {
        "ok".into()
    }
}

/// A figure of a part that may not have run.
fn shown<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "—".to_owned(), show)
}

fn table(args: &Args, f: &Figures) -> Table {
    let title = format!(
        "mesh subscription, 2 processes over loopback, 2 shards each ({} placement), {} B \
         events, {} per throughput run",
        args.placement.name(),
        EVENT_BYTES,
        count(args.events as f64),
    );
    let check = f.check();
    let rate = |run: &Option<MeshOutcome>| shown(run.as_ref(), |r| count(r.events_per_s()));
    let none = String::new;
    let mut t = Table::new(&title, &["value", "target", ""]);
    t.row(
        "events/s mirrored, fsync never",
        vec![rate(&f.never), none(), none()],
    )
    .row(
        "events/s mirrored, fsync every_batch (both)",
        vec![rate(&f.durable), none(), none()],
    )
    .row(
        "raw UDP events/s (sendmmsg, no crypto/log)",
        vec![
            shown(f.raw.as_ref(), |r| count(r.events_per_s())),
            none(),
            none(),
        ],
    )
    .row(
        "raw_ratio (never / raw)",
        vec![
            shown(f.raw_ratio(), |r| format!("{r:.3}")),
            format!(">= {RAW_RATIO_TARGET}"),
            met(f, "raw_ratio"),
        ],
    );
    t.heading(&format!(
        "send -> polled on the subscriber, paced at {} events/s, {} events, fsync never:",
        count(args.rate as f64),
        count(args.latency_events() as f64)
    ));
    let e2e = f.e2e();
    for (label, value) in [
        ("e2e p50 (µs)", e2e.map(|p| p.p50_us)),
        ("e2e p90 (µs)", e2e.map(|p| p.p90_us)),
        ("e2e p99 (µs)", e2e.map(|p| p.p99_us)),
        ("e2e p99.9 (µs)", e2e.map(|p| p.p999_us)),
        ("e2e max (µs)", e2e.map(|p| p.max_us)),
    ] {
        let (target, ok) = if label == "e2e p99 (µs)" {
            (format!("< {E2E_P99_US_TARGET:.0}"), met(f, "e2e_p99_us"))
        } else {
            (none(), none())
        };
        t.row(label, vec![shown(value, report::format_us), target, ok]);
    }
    t.heading("exactness (every mesh run) and allocations (the fsync never run):");
    let never = f.never.as_ref();
    t.row(
        "lost",
        vec![check.lost().to_string(), "== 0".into(), met(f, "lost")],
    )
    .row(
        "duplicates",
        vec![
            check.duplicates.to_string(),
            "== 0".into(),
            met(f, "duplicates"),
        ],
    )
    .row(
        "allocations/event, subscriber",
        vec![
            shown(never, |n| format!("{:.6}", n.allocs_per_event())),
            "== 0".into(),
            met(f, "allocs_per_event"),
        ],
    )
    .row(
        "allocations/event, publisher",
        vec![
            shown(never, |n| format!("{:.6}", n.publisher_allocs_per_event())),
            none(),
            none(),
        ],
    );
    t
}

/// CPU time per event of a run's publisher (`a`) or subscriber, ns.
fn cpu_per_event(run: &MeshOutcome, publisher: bool) -> f64 {
    let ns = if publisher {
        run.a["cpu_ns"].as_u64().unwrap_or(0)
    } else {
        run.b_cpu_ns
    };
    ns as f64 / run.events.max(1) as f64
}

fn notes(args: &Args, f: &Figures) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, run) in [("fsync never", &f.never), ("every_batch", &f.durable)] {
        let Some(run) = run else { continue };
        notes.push(format!(
            "{name}: {} events in {:.3} s; the publisher's producers sent them in {:.3} s \
             ({} events/s); CPU per event: publisher {:.0} ns, subscriber {:.0} ns; \
             allocations: subscriber {} ({} B), publisher {} ({} B)",
            count(run.events as f64),
            run.elapsed_ns as f64 / 1e9,
            run.send_ns as f64 / 1e9,
            count(run.publisher_send_per_s()),
            cpu_per_event(run, true),
            cpu_per_event(run, false),
            run.b_allocations.allocations,
            run.b_allocations.bytes,
            run.a["allocations"],
            run.a["allocated_bytes"],
        ));
    }
    if let (Some(run), Some(stamped)) = (&f.latency, f.stamped()) {
        notes.push(format!(
            "latency, where it goes (p50 / p99 µs): intended send -> written to the \
             publisher's log {} / {} (its producers woke p99 {} µs late, max {}); -> stamped \
             by the subscriber's shard {} / {}; the subscriber's lane -> written {} / {}; its \
             stamp -> returned by poll_wait {} / {}; e2e {} / {}",
            run.a["persisted_p50_us"],
            run.a["persisted_p99_us"],
            run.a["wake_lag_p99_us"],
            run.a["wake_lag_max_us"],
            report::format_us(stamped.p50_us),
            report::format_us(stamped.p99_us),
            report::format_us(run.b_persisted.p50_us),
            report::format_us(run.b_persisted.p99_us),
            report::format_us(f.after_stamp().unwrap_or_default().p50_us),
            report::format_us(f.after_stamp().unwrap_or_default().p99_us),
            report::format_us(f.e2e().unwrap_or_default().p50_us),
            report::format_us(f.e2e().unwrap_or_default().p99_us),
        ));
    }
    if let Some(raw) = &f.raw {
        notes.push(format!(
            "raw: {} datagrams of {DATAGRAM_BYTES} B ({EVENTS_PER_DATAGRAM} events each, as \
             the mesh packs), {} per call, {} received ({} lost: no flow control) in {:.3} s; {}",
            count(raw.datagrams as f64),
            args.batch,
            count(raw.received as f64),
            raw.datagrams - raw.received,
            raw.elapsed_ns as f64 / 1e9,
            raw.buffers,
        ));
    }
    for (name, run) in f.mesh_runs() {
        let s = run.streams;
        notes.push(format!(
            "streams ({name}): {} datagrams in ({:.1} events each), {} catch-ups from the \
             publisher's log, {} ranges resent, {} tail timeouts, {} duplicate frames, {} \
             without room, {} events skipped, {} mesh drops, {} kernel UDP receive-buffer \
             drops, {} subscribes",
            count(s.datagrams_in as f64),
            (args.warmup + run.events) as f64 / s.datagrams_in.max(1) as f64,
            s.catchups,
            s.resent_ranges,
            s.timeouts,
            s.stream_duplicates,
            s.no_room,
            s.skipped_events,
            s.dropped,
            s.kernel_drops,
            s.subscribes,
        ));
    }
    let check = f.check();
    notes.push(format!(
        "mirror read back: {} of {} events, {} out of order, {} corrupt, {} foreign",
        count(check.received as f64),
        count(check.expected as f64),
        check.out_of_order,
        check.corrupt,
        check.foreign,
    ));
    let missed = f.missed();
    if !missed.is_empty() {
        notes.push(format!("targets missed: {}", missed.join(", ")));
    }
    if two_cores().is_none() {
        notes.push("warning: fewer than 2 CPUs, nothing is pinned".into());
    }
    notes
}

fn json_line(args: &Args, f: &Figures, command: String) -> JsonLine {
    let check = f.check();
    let s = f.streams();
    let rate = |x: f64| report::round_to(x, 0);
    let (never, durable, latency, raw) = (
        f.never.as_ref(),
        f.durable.as_ref(),
        f.latency.as_ref(),
        f.raw.as_ref(),
    );
    let a_u64 = |run: &MeshOutcome, name: &str| run.a[name].as_u64().unwrap_or(0);
    let cpu = |run: &MeshOutcome, publisher| report::round_to(cpu_per_event(run, publisher), 1);
    let secs = |ns: u64| report::round_to(ns as f64 / 1e9, 4);
    let mut j = JsonLine::default();
    j.field("scenario", "mesh")
        .field("events", args.events)
        .field("warmup", args.warmup)
        .field("rate", args.rate)
        .field("latency_events", args.latency_events())
        .field("event_bytes", EVENT_BYTES)
        .field("placement", args.placement.name())
        .field("node_config", args.node_config.clone())
        .field("events_per_s", never.map(|r| rate(r.events_per_s())))
        .field(
            "durable_events_per_s",
            durable.map(|r| rate(r.events_per_s())),
        )
        .field("raw_events_per_s", raw.map(|r| rate(r.events_per_s())))
        .field("raw_ratio", f.raw_ratio().map(|r| report::round_to(r, 3)))
        .field(
            "stalled_ingest_ratio",
            f.stalled.as_ref().map(|s| report::round_to(s.ratio(), 3)),
        )
        .field(
            "stalled_ingest_events_per_s",
            f.stalled.as_ref().map(|s| rate(s.stalled_per_s)),
        )
        .field(
            "alone_ingest_events_per_s",
            f.stalled.as_ref().map(|s| rate(s.alone_per_s)),
        )
        .field(
            "stalled_lag_events",
            f.stalled.as_ref().map(|s| s.lag_events),
        )
        .field(
            "durable_ratio",
            never.zip(durable).map(|(n, d)| {
                report::round_to(
                    d.events_per_s() / n.events_per_s().max(f64::MIN_POSITIVE),
                    3,
                )
            }),
        )
        .latency_or_null("e2e_", f.e2e().as_ref())
        .field(
            "publisher_persisted_p50_us",
            latency.map(|r| r.a["persisted_p50_us"].clone()),
        )
        .field(
            "publisher_persisted_p99_us",
            latency.map(|r| r.a["persisted_p99_us"].clone()),
        )
        .field("stamped_p50_us", f.stamped().map(|p| p.p50_us))
        .field("stamped_p99_us", f.stamped().map(|p| p.p99_us))
        .field("stamp_to_poll_p50_us", f.after_stamp().map(|p| p.p50_us))
        .field("stamp_to_poll_p99_us", f.after_stamp().map(|p| p.p99_us))
        .field(
            "subscriber_persisted_p50_us",
            latency.map(|r| r.b_persisted.p50_us),
        )
        .field(
            "subscriber_persisted_p99_us",
            latency.map(|r| r.b_persisted.p99_us),
        )
        .field(
            "publisher_wake_lag_p99_us",
            latency.map(|r| r.a["wake_lag_p99_us"].clone()),
        )
        .field("lost", check.lost())
        .field("duplicates", check.duplicates)
        .field("out_of_order", check.out_of_order)
        .field("corrupt", check.corrupt)
        .field("foreign", check.foreign)
        .field("allocs_per_event", never.map(MeshOutcome::allocs_per_event))
        .field(
            "publisher_allocs_per_event",
            never.map(MeshOutcome::publisher_allocs_per_event),
        )
        .field("allocations", never.map(|r| r.b_allocations.allocations))
        .field(
            "publisher_allocations",
            never.map(|r| a_u64(r, "allocations")),
        )
        .field(
            "durable_allocs_per_event",
            durable.map(MeshOutcome::allocs_per_event),
        )
        .field(
            "durable_publisher_allocs_per_event",
            durable.map(MeshOutcome::publisher_allocs_per_event),
        )
        .field("cpu_ns_per_event", never.map(|r| cpu(r, false)))
        .field("publisher_cpu_ns_per_event", never.map(|r| cpu(r, true)))
        .field("durable_cpu_ns_per_event", durable.map(|r| cpu(r, false)))
        .field(
            "durable_publisher_cpu_ns_per_event",
            durable.map(|r| cpu(r, true)),
        )
        .field(
            "publisher_send_events_per_s",
            never.map(|r| rate(r.publisher_send_per_s())),
        )
        .field(
            "durable_publisher_send_events_per_s",
            durable.map(|r| rate(r.publisher_send_per_s())),
        )
        .field("elapsed_s", never.map(|r| secs(r.elapsed_ns)))
        .field("durable_elapsed_s", durable.map(|r| secs(r.elapsed_ns)))
        .field("datagrams_in", never.map(|r| r.streams.datagrams_in))
        .field("catchups", never.map(|r| r.streams.catchups))
        .field("durable_catchups", durable.map(|r| r.streams.catchups))
        .field("resent_ranges", s.resent_ranges)
        .field("tail_timeouts", s.timeouts)
        .field("stream_duplicates", s.stream_duplicates)
        .field("skipped_events", s.skipped_events)
        .field("no_room", s.no_room)
        .field("mesh_dropped", s.dropped)
        .field("kernel_udp_drops", s.kernel_drops)
        .field("subscribes", s.subscribes)
        .field("raw_datagrams", raw.map(|r| r.datagrams))
        .field("raw_lost_datagrams", raw.map(|r| r.datagrams - r.received))
        .field("raw_events_per_datagram", EVENTS_PER_DATAGRAM)
        .field("raw_datagram_bytes", DATAGRAM_BYTES)
        .field("raw_elapsed_s", raw.map(|r| secs(r.elapsed_ns)))
        .field("batch", args.batch)
        .field("rcvbuf_bytes", raw.map(|r| r.buffers.rcvbuf))
        .field("targets_missed", f.missed())
        .field("command", command);
    j
}

fn command(args: &Args) -> String {
    let mut flags = vec![
        ("events", args.events.to_string()),
        ("warmup", args.warmup.to_string()),
        ("rate", args.rate.to_string()),
        ("latency-events", args.latency_events().to_string()),
        ("wake-us", args.wake_us.to_string()),
        ("batch", args.batch.to_string()),
        ("socket-buffer", args.socket_buffer.to_string()),
        ("placement", args.placement.name().to_owned()),
    ];
    if let Some(only) = args.only {
        flags.push(("only", only.name().to_owned()));
    }
    if args.trace_ms > 0 {
        flags.push(("trace-ms", args.trace_ms.to_string()));
    }
    if let Some(extra) = &args.node_config {
        flags.push(("node-config", format!("'{extra}'")));
    }
    if args.json {
        flags.push(("json", String::new()));
    }
    crate::reproduce_command("mesh", &flags, args.dir.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        crate::parse_args("mesh", line)
    }

    #[test]
    fn defaults_and_the_command_line() {
        let a = args(&[]);
        assert_eq!((a.events, a.rate, a.warmup), (2_000_000, 100_000, 100_000));
        assert_eq!(a.latency_events(), 200_000);
        assert_eq!(a.placement, Placement::Same);
        let cmd = command(&args(&["--events", "1000", "--json"]));
        assert!(
            cmd.starts_with("cargo run --release -p net-bench -- mesh --events 1000"),
            "{cmd}"
        );
        assert!(cmd.ends_with("--placement same --json"), "{cmd}");
    }

    #[test]
    fn the_mesh_packs_twelve_events_per_datagram() {
        // 1472 - 32 (header, tag) - 19 (DATA header) = 1421 bytes of 112-byte records.
        assert_eq!(EVENTS_PER_DATAGRAM, 12);
    }

    #[test]
    fn specs_round_trip() {
        let publish = Spec::publish("{}".into(), 10, 20, Some(5), 100);
        let back = Spec::from_json(&publish.to_json().to_string()).unwrap();
        assert_eq!(back, publish);
        let raw = Spec {
            mode: Mode::Raw,
            target: "127.0.0.1:9".into(),
            datagrams: 3,
            datagram_bytes: 1472,
            batch: 64,
            socket_buffer: 1 << 20,
            core: Some(1),
            ..publish
        };
        assert_eq!(Spec::from_json(&raw.to_json().to_string()).unwrap(), raw);
        assert!(Spec::from_json("{}").is_err());
    }

    #[test]
    fn configs_pin_the_nodes_as_placed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path()).unwrap();
        Token::parse(&keys.token).unwrap();
        for placement in [Placement::Same, Placement::Crossed, Placement::Unpinned] {
            for node in [Node::A, Node::B] {
                let extra = json!({"mesh": {"stream_rto_ms": 7}});
                let text = config_json(
                    node,
                    dir.path(),
                    "every_batch",
                    &keys,
                    placement,
                    Some(&extra),
                );
                let config = Config::from_json(&text).unwrap();
                assert_eq!(config.shards, Some(SHARDS));
                assert_eq!(config.mesh.as_ref().unwrap().stream_rto_ms, 7);
                if placement == Placement::Unpinned || two_cores().is_none() {
                    assert!(!config.pin);
                    continue;
                }
                let [c0, c1] = two_cores().unwrap().map(|c| c.id);
                let want = if placement == Placement::Crossed && node == Node::B {
                    vec![c1, c0]
                } else {
                    vec![c0, c1]
                };
                assert_eq!(config.cores, Some(want));
            }
        }
    }
}
