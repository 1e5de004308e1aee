//! The bus configuration: one JSON document parsed into typed structs and validated once.
//!
//! Unknown fields and unknown enum values are errors; zero where zero makes no sense is an
//! error; every error names the field by its dotted path (`batch.max_events`). The same
//! document is the FFI's `net_bus_new` argument and `netd`'s config file.
//! [`Config::default`] serves an embedded single-machine setup.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Upper bound of `batch.max_events` (the v0.10 batch sizing overflowed past it).
pub const BATCH_EVENTS_MAX: usize = 1_000_000;
/// Upper bound of `batch.max_bytes`.
pub const BATCH_BYTES_MAX: usize = 256 << 20;
/// Bounds of `lane.capacity_bytes`.
pub const LANE_BYTES_MIN: usize = 4 << 10;
/// Upper bound of `lane.capacity_bytes`.
pub const LANE_BYTES_MAX: usize = 1 << 30;
/// Upper bound of `batch.linger_us` (one second).
pub const LINGER_US_MAX: u64 = 1_000_000;
/// The smallest "largest payload" a configuration may leave (see
/// [`Config::payload_bytes_max`]).
pub const PAYLOAD_BYTES_MIN: usize = 1000;
// The smallest lane and batch still carry such a payload.
const _: () = assert!(LANE_BYTES_MIN / 4 - crate::lane::RECORD_OVERHEAD_BYTES >= PAYLOAD_BYTES_MIN);
const _: () = assert!(4096 - net_storage::record::RECORD_HEADER_BYTES >= PAYLOAD_BYTES_MIN);
/// Most shards one bus runs (shard ids are u16 on disk and in cursors).
pub const SHARDS_MAX: usize = 1024;

/// The whole configuration of a bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding one sub-directory of segments per shard (`shard-0000`, ...).
    pub data_dir: PathBuf,
    /// Number of shards; absent means one per CPU this process may run on.
    pub shards: Option<usize>,
    /// Pin each shard's thread to its core.
    pub pin: bool,
    /// Cores to pin shards to, in shard order (cycled); absent means the CPUs this process
    /// may run on.
    pub cores: Option<Vec<usize>>,
    /// Producer lanes.
    pub lane: LaneConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// What an idle shard does.
    pub idle: IdleConfig,
    /// RedEX segment log.
    pub storage: StorageConfig,
    /// Removed (glommio is gone; shards lock no memory): present only to refuse it by name.
    #[serde(default, skip_serializing)]
    pub executor: Option<serde_json::Value>,
    /// Consumer polls.
    pub poll: PollConfig,
    /// The encrypted UDP mesh; absent means this node runs no mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfig>,
}

/// The encrypted UDP mesh (see the README's mesh section). Durations are milliseconds; none
/// may be zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Address every shard's socket binds (`SO_REUSEPORT`); port 0 picks one
    /// ([`crate::Bus::mesh_addr`] tells which).
    pub listen: std::net::SocketAddr,
    /// The node's identity file (node id and static key; created 0600 if missing). Absent:
    /// `<data_dir>/mesh/identity`.
    pub identity_file: Option<PathBuf>,
    /// The mesh's pre-shared key as 64 hex digits; or:
    pub psk: Option<String>,
    /// a file holding it (mode 0600). Exactly one of `psk` and `psk_file` is required.
    pub psk_file: Option<PathBuf>,
    /// A keepalive goes out on a session that sent nothing for this long.
    pub heartbeat_ms: u64,
    /// A session on which nothing arrived for this long is closed.
    pub session_timeout_ms: u64,
    /// A session this old is replaced by a new handshake...
    pub rekey_after_ms: u64,
    /// ...as is one that sent this many packets.
    pub rekey_after_messages: u64,
    /// First handshake retry after this long, doubling per attempt...
    pub handshake_retry_ms: u64,
    /// ...up to this (at most 5000).
    pub handshake_retry_max_ms: u64,
    /// A handshake round is given up after this long; messages queued for it are dropped
    /// and counted.
    pub handshake_timeout_ms: u64,
    /// Handshake initiations accepted per second from one source address...
    pub handshakes_per_sec: u32,
    /// ...and at once.
    pub handshake_burst: u32,
    /// Source addresses the handshake pacer tracks (beyond them, new sources share one
    /// bucket).
    pub pacer_sources: usize,
    /// Peers one shard keeps.
    pub peers_max: usize,
    /// Node ids (16 hex digits) allowed to present a new static key for their id.
    pub allow_key_rotation: Vec<String>,
    /// `SO_RCVBUF`/`SO_SNDBUF` of each shard's socket (forced past the system cap when
    /// running as root).
    pub socket_buffer_bytes: usize,
    /// Packet buffers in each shard's pool (allocated once at start).
    pub packet_buffers: usize,
    /// Largest datagram sent or accepted; an application message may be 33 bytes less. 1472
    /// fits an Ethernet MTU without IP fragmentation.
    pub datagram_bytes_max: usize,
    /// Bytes of the ring from each shard to the application's mesh inbox (a power of two).
    pub inbox_bytes: usize,
    /// Bytes of each peer handle's ring to its shard (a power of two).
    pub peer_queue_bytes: usize,
    /// The ed25519 key this node signs subscription tokens with (created 0600 if missing).
    /// Absent: `<data_dir>/mesh/signing_key`.
    pub signing_key_file: Option<PathBuf>,
    /// Subscriptions one subscriber node may hold on this node (one per shard it
    /// subscribes to); a re-subscription to one it holds is always accepted.
    pub subscriptions_per_node_max: usize,
    /// Token ids and subjects this node can hold revoked at once.
    pub revocations_max: usize,
    /// Record bytes a subscription lets its publisher send beyond what it consumed (the
    /// credit window; also bounds its memory for frames held out of order).
    pub stream_window_bytes: u64,
    /// First retransmission timeout for a lost tail (doubles while nothing moves, up to 1 s);
    /// keep it a few times `stream_ack_interval_ms`'s 2 ms delayed acknowledgement and the
    /// round trip.
    pub stream_rto_ms: u64,
    /// A subscription acknowledges at least this often.
    pub stream_ack_interval_ms: u64,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7440)),
            identity_file: None,
            psk: None,
            psk_file: None,
            heartbeat_ms: 1000,
            session_timeout_ms: 10_000,
            rekey_after_ms: 120_000,
            rekey_after_messages: 1 << 48,
            handshake_retry_ms: 250,
            handshake_retry_max_ms: 5000,
            handshake_timeout_ms: 30_000,
            handshakes_per_sec: 20,
            handshake_burst: 10,
            pacer_sources: 4096,
            peers_max: 1024,
            allow_key_rotation: Vec::new(),
            socket_buffer_bytes: 8 << 20,
            packet_buffers: 4096,
            datagram_bytes_max: 1472,
            inbox_bytes: 8 << 20,
            peer_queue_bytes: 1 << 20,
            signing_key_file: None,
            subscriptions_per_node_max: 256,
            revocations_max: 4096,
            stream_window_bytes: 4 << 20,
            stream_rto_ms: 50,
            stream_ack_interval_ms: 20,
        }
    }
}

/// Bounds of `mesh.datagram_bytes_max` (the largest UDP payload over IPv4).
pub const DATAGRAM_BYTES_MIN: usize = 128;
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
/// Upper bound of the handshake retry interval.
pub const HANDSHAKE_RETRY_MAX_MS: u64 = 5000;
/// The mesh steers datagrams to shards by one byte.
pub const MESH_SHARDS_MAX: usize = 256;

impl MeshConfig {
    /// Checks every mesh value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("mesh.heartbeat_ms", self.heartbeat_ms),
            ("mesh.session_timeout_ms", self.session_timeout_ms),
            ("mesh.rekey_after_ms", self.rekey_after_ms),
            ("mesh.rekey_after_messages", self.rekey_after_messages),
            ("mesh.handshake_retry_ms", self.handshake_retry_ms),
            ("mesh.handshake_retry_max_ms", self.handshake_retry_max_ms),
            ("mesh.handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "mesh.handshakes_per_sec",
                u64::from(self.handshakes_per_sec),
            ),
            ("mesh.handshake_burst", u64::from(self.handshake_burst)),
            ("mesh.pacer_sources", as_u64(self.pacer_sources)),
            ("mesh.peers_max", as_u64(self.peers_max)),
            ("mesh.socket_buffer_bytes", as_u64(self.socket_buffer_bytes)),
            ("mesh.packet_buffers", as_u64(self.packet_buffers)),
            (
                "mesh.subscriptions_per_node_max",
                as_u64(self.subscriptions_per_node_max),
            ),
            ("mesh.revocations_max", as_u64(self.revocations_max)),
            ("mesh.stream_window_bytes", self.stream_window_bytes),
            ("mesh.stream_rto_ms", self.stream_rto_ms),
            ("mesh.stream_ack_interval_ms", self.stream_ack_interval_ms),
        ] {
            if value == 0 {
                reject(field, "must not be 0")?;
            }
        }
        let day = 86_400_000;
        in_range("mesh.heartbeat_ms", self.heartbeat_ms, 1, day)?;
        if self.session_timeout_ms <= self.heartbeat_ms || self.session_timeout_ms > day {
            reject(
                "mesh.session_timeout_ms",
                format!(
                    "{} must exceed mesh.heartbeat_ms ({}) and be at most a day",
                    self.session_timeout_ms, self.heartbeat_ms
                ),
            )?;
        }
        in_range("mesh.rekey_after_ms", self.rekey_after_ms, 1, 30 * day)?;
        if self.handshake_retry_max_ms < self.handshake_retry_ms
            || self.handshake_retry_max_ms > HANDSHAKE_RETRY_MAX_MS
        {
            reject(
                "mesh.handshake_retry_max_ms",
                format!(
                    "{} must be at least mesh.handshake_retry_ms ({}) and at most \
                     {HANDSHAKE_RETRY_MAX_MS}",
                    self.handshake_retry_max_ms, self.handshake_retry_ms
                ),
            )?;
        }
        in_range(
            "mesh.handshake_timeout_ms",
            self.handshake_timeout_ms,
            1,
            day,
        )?;
        in_range("mesh.peers_max", as_u64(self.peers_max), 1, 16_000)?;
        in_range(
            "mesh.subscriptions_per_node_max",
            as_u64(self.subscriptions_per_node_max),
            1,
            as_u64(MESH_SHARDS_MAX),
        )?;
        in_range(
            "mesh.revocations_max",
            as_u64(self.revocations_max),
            1,
            1 << 20,
        )?;
        in_range(
            "mesh.stream_window_bytes",
            self.stream_window_bytes,
            as_u64(4 * self.datagram_bytes_max),
            1 << 30,
        )?;
        in_range("mesh.stream_rto_ms", self.stream_rto_ms, 1, 60_000)?;
        in_range(
            "mesh.stream_ack_interval_ms",
            self.stream_ack_interval_ms,
            1,
            60_000,
        )?;
        in_range("mesh.pacer_sources", as_u64(self.pacer_sources), 1, 1 << 20)?;
        in_range(
            "mesh.socket_buffer_bytes",
            as_u64(self.socket_buffer_bytes),
            4096,
            1 << 30,
        )?;
        in_range(
            "mesh.packet_buffers",
            as_u64(self.packet_buffers),
            256,
            1 << 20,
        )?;
        in_range(
            "mesh.datagram_bytes_max",
            as_u64(self.datagram_bytes_max),
            as_u64(DATAGRAM_BYTES_MIN),
            as_u64(DATAGRAM_BYTES_MAX),
        )?;
        for (field, bytes) in [
            ("mesh.inbox_bytes", self.inbox_bytes),
            ("mesh.peer_queue_bytes", self.peer_queue_bytes),
        ] {
            if bytes < 4 * self.datagram_bytes_max || bytes > 1 << 30 {
                reject(
                    field,
                    format!(
                        "{bytes} must be at least 4 x mesh.datagram_bytes_max ({}) and at most \
                         1 GiB",
                        4 * self.datagram_bytes_max
                    ),
                )?;
            }
            if !bytes.is_power_of_two() {
                reject(field, format!("{bytes} is not a power of two"))?;
            }
        }
        match (&self.psk, &self.psk_file) {
            (None, None) => reject(
                "mesh.psk",
                "a PSK is required: set mesh.psk or mesh.psk_file",
            )?,
            (Some(_), Some(_)) => reject("mesh.psk", "set mesh.psk or mesh.psk_file, not both")?,
            (Some(hex), None) => {
                if net_transport::identity::Psk::from_hex(hex).is_none() {
                    reject("mesh.psk", "must be 64 hex digits")?;
                }
            }
            (None, Some(_)) => {}
        }
        for id in &self.allow_key_rotation {
            if id.len() != 16 || u64::from_str_radix(id, 16).is_err() {
                reject(
                    "mesh.allow_key_rotation",
                    format!(
                        "`{}` is not a node id of 16 hex digits",
                        crate::json::clip(id)
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// The node ids allowed to rotate keys (validated).
    pub(crate) fn rotation_ids(&self) -> Vec<u64> {
        self.allow_key_rotation
            .iter()
            .filter_map(|id| u64::from_str_radix(id, 16).ok())
            .collect()
    }
}

/// One lane is a bounded SPSC ring from one producer to one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneConfig {
    /// Ring size in bytes; a power of two.
    pub capacity_bytes: usize,
    /// What `send` does when the ring is full.
    pub backpressure: Backpressure,
}

/// What `send` does when a lane is full. Every dropped event is counted.
///
/// In JSON: `{"mode": "block"}`, `{"mode": "sample", "rate": 10}`, ... A field that does not
/// belong to the mode (such as `rate` with `block`) is an error, not silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BackpressureRepr", into = "BackpressureRepr")]
pub enum Backpressure {
    /// Wait until the shard makes room (or the bus shuts down).
    Block,
    /// Return [`crate::SendError::Full`]; the event is not ingested.
    Fail,
    /// Drop the event being sent.
    DropNewest,
    /// Drop the oldest events in the lane that the shard has not taken yet.
    DropOldest,
    /// Under pressure (lane at least 3/4 full) admit one event in `rate` and drop the rest;
    /// when the lane is full, drop the event being sent.
    Sample {
        /// Admit one event in this many while under pressure; at least 1.
        rate: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BackpressureMode {
    Block,
    Fail,
    DropNewest,
    DropOldest,
    Sample,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackpressureRepr {
    mode: BackpressureMode,
    /// Absent is `None`; `null` is `Some(None)`, refused (a rate is a number or left out).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    rate: Option<Option<u32>>,
}

/// Marks a field that is present in the document, so that `null` can be told from absent.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl TryFrom<BackpressureRepr> for Backpressure {
    type Error = String;
    fn try_from(r: BackpressureRepr) -> Result<Backpressure, String> {
        let rate = match r.rate {
            Some(None) => return Err("`rate` must be a number (or left out), not null".into()),
            Some(Some(rate)) => Some(rate),
            None => None,
        };
        let b = match (r.mode, rate) {
            (BackpressureMode::Sample, Some(rate)) => return Ok(Backpressure::Sample { rate }),
            (BackpressureMode::Sample, None) => return Err("mode `sample` needs `rate`".into()),
            (_, Some(_)) => return Err("`rate` is only valid with mode `sample`".into()),
            (BackpressureMode::Block, None) => Backpressure::Block,
            (BackpressureMode::Fail, None) => Backpressure::Fail,
            (BackpressureMode::DropNewest, None) => Backpressure::DropNewest,
            (BackpressureMode::DropOldest, None) => Backpressure::DropOldest,
        };
        Ok(b)
    }
}

impl From<Backpressure> for BackpressureRepr {
    fn from(b: Backpressure) -> BackpressureRepr {
        let (mode, rate) = match b {
            Backpressure::Block => (BackpressureMode::Block, None),
            Backpressure::Fail => (BackpressureMode::Fail, None),
            Backpressure::DropNewest => (BackpressureMode::DropNewest, None),
            Backpressure::DropOldest => (BackpressureMode::DropOldest, None),
            Backpressure::Sample { rate } => (BackpressureMode::Sample, Some(Some(rate))),
        };
        BackpressureRepr { mode, rate }
    }
}

/// Batching: a shard collects events from its lanes into one batch per write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most events per batch; 1 to 1 000 000.
    pub max_events: usize,
    /// Most record bytes per batch (32-byte header plus payload per event).
    pub max_bytes: usize,
    /// Longest an event waits in an open batch while more events keep arriving; an idle
    /// shard writes at once.
    pub linger_us: u64,
}

/// How an idle shard waits for work (as in Aeron's idle strategies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    /// `spin`, `yield`, or `park`.
    pub strategy: IdleStrategy,
    /// With `park`: spin this long before parking.
    pub spin_us: u64,
    /// With `park`: the longest single park; a producer's write to the shard's eventfd ends
    /// it sooner.
    pub park_max_us: u64,
}

/// Idle strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleStrategy {
    /// Busy-spin: lowest latency, one core at 100%.
    Spin,
    /// Yield the thread to the OS scheduler between checks.
    Yield,
    /// Spin briefly, then sleep on an eventfd until a producer wakes the shard.
    Park,
}

/// The RedEX log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// A segment rolls before its `.dat` grows past this many bytes.
    pub segment_bytes: u64,
    /// When written events are made durable (`fdatasync`).
    pub fsync: FsyncPolicy,
    /// When whole sealed segments are removed.
    pub retention: RetentionConfig,
}

/// Retention limits; an absent limit means none, zero is rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep at most about this many events per shard (whole segments removed while over).
    pub max_events: Option<u64>,
    /// Keep at most about this many bytes of segments per shard.
    pub max_bytes: Option<u64>,
    /// Remove a sealed segment once its newest event is older than this.
    pub max_age_ms: Option<u64>,
}

/// When a shard makes its written events durable.
///
/// In JSON: `"never"`, `"every_batch"`, or `{"interval_ms": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Never sync per batch (segments are still synced when sealed and at close); "durable"
    /// then means written to the file.
    Never,
    /// Sync at most this often: the first batch written after the interval carries a sync, and
    /// an idle shard syncs what is pending once the interval passed.
    IntervalMs(u64),
    /// Group commit: every batch's write is followed by one `fdatasync` that covers it and all
    /// batches before it; events that arrive meanwhile form the next batch.
    EveryBatch,
}

const FSYNC_NAMES: &str = "`never`, `every_batch`, or {\"interval_ms\": N}";

/// Reads exactly the three documented spellings; serde's derived form also took
/// `{"never": null}` and `{"every_batch": null}`.
impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
        d.deserialize_any(FsyncVisitor)
    }
}

struct FsyncVisitor;

impl<'de> serde::de::Visitor<'de> for FsyncVisitor {
    type Value = FsyncPolicy;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{FSYNC_NAMES}")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FsyncPolicy, E> {
        match v {
            "never" => Ok(FsyncPolicy::Never),
            "every_batch" => Ok(FsyncPolicy::EveryBatch),
            "interval_ms" => Err(E::custom(
                "`interval_ms` needs its interval: {\"interval_ms\": N}",
            )),
            other => Err(E::custom(format!(
                "unknown fsync policy `{other}`, expected {FSYNC_NAMES}"
            ))),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FsyncPolicy, A::Error> {
        use serde::de::Error as _;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "an empty object; expected {FSYNC_NAMES}"
            )));
        };
        if key != "interval_ms" {
            let hint = if key == "never" || key == "every_batch" {
                format!("write `{key}` as the string \"{key}\"")
            } else {
                format!("unknown fsync policy `{key}`")
            };
            return Err(A::Error::custom(format!("{hint}; expected {FSYNC_NAMES}")));
        }
        let ms: u64 = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom(
                "`interval_ms` takes no other field alongside it",
            ));
        }
        Ok(FsyncPolicy::IntervalMs(ms))
    }
}

/// Consumer polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// Removed (polls read segments on the caller's thread and never wait for a shard):
    /// present only to refuse it by name.
    #[serde(default, skip_serializing)]
    pub timeout_ms: Option<serde_json::Value>,
    /// Most bytes one shard returns to one poll.
    pub shard_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("net-data"),
            shards: None,
            pin: true,
            cores: None,
            lane: LaneConfig::default(),
            batch: BatchConfig::default(),
            idle: IdleConfig::default(),
            storage: StorageConfig::default(),
            executor: None,
            poll: PollConfig::default(),
            mesh: None,
        }
    }
}

impl Default for LaneConfig {
    fn default() -> LaneConfig {
        LaneConfig {
            capacity_bytes: 1 << 20,
            backpressure: Backpressure::Block,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: 32_768,
            max_bytes: 4 << 20,
            linger_us: 200,
        }
    }
}

impl Default for IdleConfig {
    fn default() -> IdleConfig {
        IdleConfig {
            strategy: IdleStrategy::Park,
            spin_us: 50,
            park_max_us: 10_000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            segment_bytes: 128 << 20,
            fsync: FsyncPolicy::EveryBatch,
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for PollConfig {
    fn default() -> PollConfig {
        PollConfig {
            timeout_ms: None,
            shard_bytes_max: 16 << 20,
        }
    }
}

fn reject(field: &str, what: impl Into<String>) -> Result<(), Error> {
    Err(Error::Config {
        field: field.into(),
        what: what.into(),
    })
}

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), Error> {
    if value < min || value > max {
        return reject(field, format!("{value} is outside {min}..={max}"));
    }
    Ok(())
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Test support (feature `testing`): the configuration the tests of the engine and of the
/// crates built on it share.
#[cfg(feature = "testing")]
impl Config {
    /// A small, unpinned, parking configuration with its logs under `data_dir`: 64 KiB lanes,
    /// batches of at most 256 events or 64 KiB, 1 MiB segments.
    pub fn for_tests(data_dir: &std::path::Path, shards: usize) -> Config {
        let mut c = Config {
            data_dir: data_dir.to_path_buf(),
            shards: Some(shards),
            pin: false,
            ..Config::default()
        };
        c.lane.capacity_bytes = 64 << 10;
        c.batch.max_events = 256;
        c.batch.max_bytes = 64 << 10;
        c.storage.segment_bytes = 1 << 20;
        c.idle.strategy = IdleStrategy::Park;
        c.idle.spin_us = 10;
        c.idle.park_max_us = 2_000;
        c
    }
}

/// Reads `text` as exactly one JSON object with unique keys (the strictness of
/// [`Config::from_json`], for documents that embed a bus's configuration): a repeated key,
/// text after the document, or a document that is not an object is refused, naming where.
pub fn read_strict_json(text: &str) -> Result<serde_json::Value, Error> {
    let template = serde_json::Value::Object(serde_json::Map::new());
    crate::json::read_object(text, &template).map_err(|r| Error::Config {
        field: r.field,
        what: r.what,
    })
}

impl Config {
    /// Parses and validates a JSON document.
    pub fn from_json(text: &str) -> Result<Config, Error> {
        let template = serde_json::to_value(Config {
            mesh: Some(MeshConfig::default()),
            ..Config::default()
        })
        .expect("the default serialises");
        let tree = crate::json::read_object(text, &template).map_err(|r| Error::Config {
            field: r.field,
            what: r.what,
        })?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                crate::json::DOCUMENT.to_string()
            } else {
                crate::json::clip(&path)
            };
            Error::Config {
                field,
                what: crate::json::clip(&e.into_inner().to_string()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises the configuration as JSON (every field, defaults included).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = self.shards {
            in_range("shards", as_u64(n), 1, as_u64(SHARDS_MAX))?;
        }
        if self.data_dir.as_os_str().is_empty() {
            reject("data_dir", "must not be empty")?;
        }
        if let Some(cores) = &self.cores
            && cores.is_empty()
        {
            reject("cores", "must list at least one core (or be absent)")?;
        }
        let cap = self.lane.capacity_bytes;
        in_range(
            "lane.capacity_bytes",
            as_u64(cap),
            as_u64(LANE_BYTES_MIN),
            as_u64(LANE_BYTES_MAX),
        )?;
        if !cap.is_power_of_two() {
            reject(
                "lane.capacity_bytes",
                format!("{cap} is not a power of two"),
            )?;
        }
        if let Backpressure::Sample { rate: 0 } = self.lane.backpressure {
            reject("lane.backpressure.rate", "must be at least 1")?;
        }
        in_range(
            "batch.max_events",
            as_u64(self.batch.max_events),
            1,
            as_u64(BATCH_EVENTS_MAX),
        )?;
        in_range(
            "batch.max_bytes",
            as_u64(self.batch.max_bytes),
            4096,
            as_u64(BATCH_BYTES_MAX),
        )?;
        in_range("batch.linger_us", self.batch.linger_us, 0, LINGER_US_MAX)?;
        in_range("idle.spin_us", self.idle.spin_us, 0, LINGER_US_MAX)?;
        in_range(
            "idle.park_max_us",
            self.idle.park_max_us,
            1,
            10 * LINGER_US_MAX,
        )?;
        let segment_min = as_u64(self.batch.max_bytes).saturating_add(2 * 4096);
        in_range(
            "storage.segment_bytes",
            self.storage.segment_bytes,
            segment_min,
            net_storage::segment::SEGMENT_BYTES_MAX,
        )?;
        let r = &self.storage.retention;
        for (field, value) in [
            ("storage.retention.max_events", r.max_events),
            ("storage.retention.max_bytes", r.max_bytes),
            ("storage.retention.max_age_ms", r.max_age_ms),
        ] {
            if value == Some(0) {
                reject(
                    field,
                    "0 would keep nothing; omit the field (or null) for no limit",
                )?;
            }
        }
        if let FsyncPolicy::IntervalMs(ms) = self.storage.fsync {
            in_range("storage.fsync.interval_ms", ms, 1, 3_600_000)?;
        }
        self.check_payload_room()?;
        if self.executor.is_some() {
            reject(
                "executor",
                "was removed: shards no longer run on glommio and lock no memory; delete the \
                 section (its io_memory_bytes has no replacement)",
            )?;
        }
        if self.poll.timeout_ms.is_some() {
            reject(
                "poll.timeout_ms",
                "was removed: a poll reads segments on the caller's thread and never waits for \
                 a shard; delete the field",
            )?;
        }
        in_range(
            "poll.shard_bytes_max",
            as_u64(self.poll.shard_bytes_max),
            4096,
            1 << 30,
        )?;
        if let Some(mesh) = &self.mesh {
            mesh.validate()?;
            if let Some(n) = self.shards
                && n > MESH_SHARDS_MAX
            {
                reject(
                    "shards",
                    format!(
                        "{n} shards with a mesh; the mesh steers datagrams to at most {MESH_SHARDS_MAX}"
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// The largest payload one event may carry: the smallest of every limit on its path, so
    /// that a payload `send` accepts can always be stored (a payload one limit accepted and a
    /// later one refused would fail the shard). The limits, in path order:
    /// - a lane holds records of at most a quarter of its ring (minus the lane's 16-byte
    ///   record overhead), so a full lane still moves;
    /// - a batch holds `batch.max_bytes` of records (32-byte header each);
    /// - the record format stores at most `RECORD_PAYLOAD_BYTES_MAX` (16 MiB);
    /// - a segment holds its 4 KiB header block and at least one record.
    pub fn payload_bytes_max(&self) -> usize {
        self.payload_limits()
            .iter()
            .map(|&(_, max)| max)
            .min()
            .expect("at least one limit")
    }

    /// Each limit on a payload's path, with the config field that sets it.
    fn payload_limits(&self) -> [(&'static str, usize); 4] {
        use net_storage::record::{RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX};
        let segment_room = usize::try_from(self.storage.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(net_storage::segment::SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES);
        [
            (
                "lane.capacity_bytes",
                (self.lane.capacity_bytes / 4).saturating_sub(crate::lane::RECORD_OVERHEAD_BYTES),
            ),
            (
                "batch.max_bytes",
                self.batch.max_bytes.saturating_sub(RECORD_HEADER_BYTES),
            ),
            ("(record format)", RECORD_PAYLOAD_BYTES_MAX),
            ("storage.segment_bytes", segment_room),
        ]
    }

    /// Refuses limits that leave events no useful room: the largest payload must be at least
    /// [`PAYLOAD_BYTES_MIN`]; the error names the field that binds.
    fn check_payload_room(&self) -> Result<(), Error> {
        let limits = self.payload_limits();
        let (field, max) = limits
            .iter()
            .min_by_key(|&&(_, max)| max)
            .copied()
            .expect("at least one limit");
        if max < PAYLOAD_BYTES_MIN {
            return reject(
                field,
                format!(
                    "leaves room for payloads of only {max} bytes; at least {PAYLOAD_BYTES_MIN} \
                     are required"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(Config::from_json("{}").unwrap(), c);
    }

    #[test]
    fn a_mesh_section_round_trips() {
        let c = Config {
            mesh: Some(MeshConfig {
                psk: Some("ab".repeat(32)),
                ..MeshConfig::default()
            }),
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    }
}
