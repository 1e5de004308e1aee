//! The bus: starts the shards, hands out producers, reads, flushes, and shuts down with exact
//! accounting.
//!
//! Reads never involve a shard: each shard publishes its log's view (segment map and visible
//! end) at start, and [`Bus::poll`] reads segments on the caller's thread through pooled
//! [`Reader`]s. Flushes and durability waits are answered by the shard or read from its
//! watermarks; a shard that failed or died answers them at once with its failure.
//!
//! Shutdown order (each step is what makes the next exact):
//! 1. close every lane and wait until no producer is inside a send (`busy`), so no event can
//!    enter a lane afterwards;
//! 2. tell every shard to drain until the deadline and stop; join the threads, surfacing
//!    panics;
//! 3. with every writer of a shard's counters gone, count what each shard still held
//!    (`ingested - persisted - dropped`) as dropped, once. A `Bus` dropped without `shutdown`
//!    runs the same path with a zero deadline, so the loss is in its final stats.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use net_storage::{Ack, Log, LogConfig, LogView, Reader, StorageError};

use crate::clock::monotonic_ns;
use crate::config::{Config, FsyncPolicy, MeshConfig};
use crate::consumer::{BatchConsumer, ConsumerCounters, Consumers};
use crate::control::{Control, ShardShared};
use crate::cursor::Cursor;
use crate::error::Error;
use crate::executor;
use crate::feed::{FeedConsumer, FeedReader, RetentionHold};
use crate::ids::{EventId, Seq, ShardId};
use crate::ingest::{Ingest, IngestSettings, LATENCY_NS_MAX};
use crate::lane::{LaneFactory, LaneKind, LaneWriter};
use crate::mesh::{Inbox, MeshShard, MeshStats, Peer, PeerLink};
use crate::mesh_shard::{Mesh, MeshControl, MeshSetup};
use crate::mirror::MirrorProducer;
use crate::poll::{Event, PollResponse, merge};
use crate::producer::Producer;
use crate::reactor::Reactor;
use crate::ring::Ring;
use crate::shard::{Shard, ShardExit};
use crate::stats::{ShardCounters, ShardFailure, Stats, StatsHandle, StatsShared};
use crate::wake::ShardSignal;

/// How often a waiting caller looks at a shard's watermarks and failure.
const WAIT_POLL: Duration = Duration::from_micros(50);
/// Readers kept per shard for `poll` (each owns a small ring and read-ahead buffers).
const POOLED_READERS_MAX: usize = 4;

/// What `shutdown` did.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Whether events accepted by the bus were lost by the shutdown (deadline, failure,
    /// panic).
    pub lossy: bool,
    /// Events counted as dropped by the shutdown itself.
    pub dropped_at_shutdown: u64,
    /// Final figures; `total.in_flight == 0`.
    pub stats: Stats,
    /// Shards whose thread panicked, with the message.
    pub panicked_shards: Vec<(ShardId, String)>,
    /// Shards whose log failed or failed to close, with the error.
    pub failed_shards: Vec<(ShardId, StorageError)>,
    /// The mesh's final counters (messages still queued in peer handles at the stop are in
    /// `unsent_dropped`), if the bus ran one.
    pub mesh: Option<MeshStats>,
}

/// One running shard as the bus sees it.
#[derive(Debug)]
struct ShardHandle {
    shared: Arc<ShardShared>,
    view: LogView,
    readers: Mutex<Vec<Reader>>,
}

/// A running bus. See the crate docs for the data path.
#[derive(Debug)]
pub struct Bus {
    config: Config,
    shards: Vec<ShardHandle>,
    threads: Vec<Option<JoinHandle<Result<(), ShardExit>>>>,
    stats: StatsHandle,
    /// Makes producers' lanes (and registers them).
    lanes: LaneFactory,
    next_home: AtomicU64,
    producer_lock: Mutex<()>,
    /// Signalled by every shard when it published events (`poll_wait` sleeps on it).
    visible: Arc<crate::notify::Notify>,
    shut_down: bool,
    /// The data dir's lock, held until every shard thread has ended.
    dir_lock: Option<net_storage::DirLock>,
    /// The mesh, when configured.
    mesh: Option<MeshBus>,
}

/// The bus's side of the mesh.
#[derive(Debug)]
struct MeshBus {
    identity_public: [u8; 32],
    node_id: net_transport::identity::NodeId,
    shards: Vec<Arc<MeshShard>>,
    inbox: Mutex<Option<Inbox>>,
    message_bytes_max: usize,
    peer_queue_bytes: usize,
    /// A duplicate of every shard's socket, held for the bus's life: the reuseport group's
    /// indices (which the steering program returns) shift if a member closes, so a shard
    /// that dies must not take its socket out of the group.
    _group: Vec<std::os::fd::OwnedFd>,
    /// Subscriptions: the key tokens are signed with, the admission the shards share, the
    /// stats registry, the subscriber's stream limits.
    signing_key: net_transport::token::SigningKey,
    admission: Arc<crate::mesh_stream::Admission>,
    registry: Arc<crate::mesh_stream::StreamRegistry>,
    recv_limits: net_transport::stream::RecvLimits,
    /// The log reader thread: its control, the rings it takes at start, its handle.
    streamer: Arc<crate::streamer::StreamerControl>,
    streamer_rings: Mutex<Vec<(crate::ring::RingReader, crate::ring::RingWriter)>>,
    streamer_thread: Mutex<Option<JoinHandle<()>>>,
    frame_max: usize,
    describe_nonce: AtomicU64,
}

impl MeshBus {
    /// Starts the log reader thread once the shards' logs are open.
    fn start_streamer(&self, shards: &[ShardHandle]) -> Result<(), Error> {
        let rings = std::mem::take(
            &mut *self
                .streamer_rings
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let parts = rings
            .into_iter()
            .zip(shards)
            .map(
                |((requests, responses), shard)| crate::streamer::StreamerShard {
                    requests,
                    responses,
                    reader: shard.view.reader(),
                    signal: shard.shared.signal.clone(),
                    scratch: Vec::with_capacity(self.frame_max + 1),
                },
            )
            .collect();
        let control = self.streamer.clone();
        let frame_max = self.frame_max;
        let handle = std::thread::Builder::new()
            .name("net-mesh-reader".into())
            .spawn(move || crate::streamer::run(parts, control, frame_max))
            .map_err(|e| Error::Start {
                shard: 0,
                what: format!("the mesh's log reader thread: {e}"),
            })?;
        *self
            .streamer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops the log reader thread.
    fn stop_streamer(&self) {
        self.streamer.stop.store(true, Ordering::Release);
        self.streamer.wake.notify();
        if let Some(h) = self
            .streamer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

/// Reads the mesh's identity and PSK and binds every shard's socket; returns the setups the
/// shards are built from.
fn mesh_setup(
    config: &Config,
    mesh: &MeshConfig,
    n: usize,
) -> Result<(MeshBus, Vec<MeshSetup>), Error> {
    use net_transport::endpoint::{Endpoint, EndpointConfig};
    use net_transport::identity::{Identity, Psk};
    let bad = |field: &str, what: String| Error::Config {
        field: field.into(),
        what,
    };
    let identity_path = mesh
        .identity_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("mesh").join("identity"));
    if let Some(dir) = identity_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            bad(
                "mesh.identity_file",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    let identity = Identity::load_or_generate(&identity_path)
        .map_err(|e| bad("mesh.identity_file", e.to_string()))?;
    let psk = match (&mesh.psk, &mesh.psk_file) {
        (Some(hex), _) => {
            Psk::from_hex(hex).ok_or_else(|| bad("mesh.psk", "must be 64 hex digits".into()))?
        }
        (None, Some(path)) => Psk::load(path).map_err(|e| bad("mesh.psk_file", e.to_string()))?,
        (None, None) => return Err(bad("mesh.psk", "a PSK is required".into())),
    };
    let signing_path = mesh
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("mesh").join("signing_key"));
    if let Some(dir) = signing_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            bad(
                "mesh.signing_key_file",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    let signing_key = net_transport::token::SigningKey::load_or_generate(&signing_path)
        .map_err(|e| bad("mesh.signing_key_file", e.to_string()))?;
    let admission = Arc::new(crate::mesh_stream::Admission {
        verifier: Mutex::new(net_transport::token::Verifier::new(
            identity.node_id(),
            signing_key.public_key(),
            mesh.revocations_max,
        )),
        roster: Mutex::new(net_transport::token::Roster::new(
            mesh.subscriptions_per_node_max,
        )),
    });
    let registry = Arc::new(crate::mesh_stream::StreamRegistry::default());
    let streamer = Arc::new(crate::streamer::StreamerControl::default());
    let ms = |v: u64| v.saturating_mul(1_000_000);
    let timers = net_transport::stream::StreamTimers {
        rto_ns: ms(mesh.stream_rto_ms),
        rto_max_ns: ms(1000).max(ms(mesh.stream_rto_ms)),
        ack_interval_ns: ms(mesh.stream_ack_interval_ms),
        ack_delay_ns: ms(mesh.stream_ack_interval_ms).min(ms(2)),
        nack_interval_ns: (ms(mesh.stream_rto_ms) / 8).max(ms(1)),
    };
    let frame_max = mesh.datagram_bytes_max - net_transport::codec::DATA_OVERHEAD;
    let recv_limits = net_transport::stream::RecvLimits {
        window: mesh.stream_window_bytes,
        // Frames held out of order: a window's worth of full frames (smaller frames beyond
        // that are dropped and asked for again), so a subscription's arena is about its
        // window.
        slots: usize::try_from(mesh.stream_window_bytes / frame_max as u64)
            .unwrap_or(usize::MAX)
            .clamp(64, 16_384)
            + 64,
        slot_bytes: frame_max,
        record_bytes_max: config.payload_bytes_max(),
    };
    let mut streamer_rings = Vec::with_capacity(n);
    let shard_count = u16::try_from(n).expect("mesh shards <= 256 (config checks it)");
    let sockets = net_transport::udp::bind_group(mesh.listen, n, mesh.socket_buffer_bytes)
        .map_err(|e| bad("mesh.listen", e.to_string()))?;
    let group = sockets
        .iter()
        .map(|s| std::os::fd::AsFd::as_fd(s).try_clone_to_owned())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("mesh.listen", format!("dup of a mesh socket: {e}")))?;
    let ms = |v: u64| v.saturating_mul(1_000_000);
    let ep_cfg = EndpointConfig {
        heartbeat_ns: ms(mesh.heartbeat_ms),
        session_timeout_ns: ms(mesh.session_timeout_ms),
        rekey_after_ns: ms(mesh.rekey_after_ms),
        rekey_after_messages: mesh.rekey_after_messages,
        handshake_retry_ns: ms(mesh.handshake_retry_ms),
        handshake_retry_max_ns: ms(mesh.handshake_retry_max_ms),
        handshake_timeout_ns: ms(mesh.handshake_timeout_ms),
        handshakes_per_sec: mesh.handshakes_per_sec,
        handshake_burst: mesh.handshake_burst,
        pacer_sources: mesh.pacer_sources,
        peers_max: mesh.peers_max,
        allow_key_rotation: mesh.rotation_ids(),
        message_bytes_max: mesh.datagram_bytes_max - net_transport::codec::DATA_OVERHEAD,
    };
    let wall_offset = i128::from(crate::clock::realtime_ns()) - i128::from(monotonic_ns());
    let notify = Arc::new(crate::notify::Notify::default());
    let mut shards = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    let mut setups = Vec::with_capacity(n);
    for (i, socket) in sockets.into_iter().enumerate() {
        let shared = Arc::new(MeshShard {
            local_addr: socket.local_addr(),
            peers_max: mesh.peers_max,
            counters: Arc::new(Default::default()),
            peers: Mutex::new(Vec::new()),
            inbox_dropped: AtomicU64::new(0),
            unsent_dropped: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            control_dropped: Arc::new(AtomicU64::new(0)),
            socket_failed: Mutex::new(None),
        });
        let endpoint = Endpoint::new(
            u8::try_from(i).expect("mesh shards <= 256 (config checks it)"),
            identity.clone(),
            psk.clone(),
            ep_cfg.clone(),
            wall_offset,
        );
        let shared = Arc::new(MeshShard {
            counters: endpoint.counters().clone(),
            ..Arc::into_inner(shared).expect("not shared yet")
        });
        let ring = Arc::new(crate::ring::Ring::new(mesh.inbox_bytes));
        readers.push(crate::ring::RingReader::new(ring.clone()));
        let requests = Arc::new(crate::ring::Ring::new(64 << 10));
        let responses = Arc::new(crate::ring::Ring::new(4 << 20));
        streamer_rings.push((
            crate::ring::RingReader::new(requests.clone()),
            crate::ring::RingWriter::new(responses.clone()),
        ));
        setups.push(MeshSetup {
            socket,
            endpoint,
            inbox: crate::ring::RingWriter::new(ring),
            notify: notify.clone(),
            shared: shared.clone(),
            packet_buffers: mesh.packet_buffers,
            datagram_bytes_max: mesh.datagram_bytes_max,
            streams: crate::mesh_shard::StreamsSetup {
                shard: u16::try_from(i).expect("mesh shards <= 256"),
                shards: shard_count,
                timers,
                admission: admission.clone(),
                registry: registry.clone(),
                replies_dropped: Arc::new(AtomicU64::new(0)),
                bad_frames: Arc::new(AtomicU64::new(0)),
            },
            reads_out: crate::ring::RingWriter::new(requests),
            reads_in: crate::ring::RingReader::new(responses),
            streamer: streamer.clone(),
            publication_idle_ns: ms(mesh.session_timeout_ms).saturating_mul(3),
        });
        shards.push(shared);
    }
    Ok((
        MeshBus {
            identity_public: identity.public_key(),
            node_id: identity.node_id(),
            shards,
            inbox: Mutex::new(Some(Inbox::new(readers, notify))),
            // One byte of every message says whether it is the application's or a stream's.
            message_bytes_max: ep_cfg.message_bytes_max - 1,
            peer_queue_bytes: mesh.peer_queue_bytes,
            _group: group,
            signing_key,
            admission,
            registry,
            recv_limits,
            streamer,
            streamer_rings: Mutex::new(streamer_rings),
            streamer_thread: Mutex::new(None),
            frame_max,
            describe_nonce: AtomicU64::new(1),
        },
        setups,
    ))
}

/// Refuses to start with fewer shards than the data dir holds logs for: their events would
/// silently become unreadable (keys would also map to other shards).
fn check_no_orphan_shards(data_dir: &std::path::Path, shards: usize) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Ok(());
    };
    let mut beyond: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = usize::from(net_storage::verify::parse_shard_dir_name(&name)?);
            let has_log = net_storage::segment::inventory(&e.path())
                .is_ok_and(|inv| !inv.dats.is_empty() || !inv.idxs.is_empty())
                || net_storage::manifest::path(&e.path()).exists();
            (index >= shards && has_log).then_some(index)
        })
        .collect();
    beyond.sort_unstable();
    match beyond.last() {
        None => Ok(()),
        Some(&last) => Err(Error::Config {
            field: "shards".into(),
            what: format!(
                "{} holds logs of shards up to {last} but the bus would start {shards}; start it \
                 with at least {} shards (shard count changes need a migration)",
                data_dir.display(),
                last + 1
            ),
        }),
    }
}

fn shard_dir(config: &Config, shard: usize) -> std::path::PathBuf {
    config.data_dir.join(format!("shard-{shard:04}"))
}

/// Time left until `deadline`; no deadline (a timeout too large to add to now) is forever.
fn remaining(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    })
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

impl Bus {
    /// Validates `config`, takes the data dir's lock, runs the start-up checks, opens every
    /// shard's log (recovering it) on its own pinned thread, and returns when all shards run.
    pub fn start(config: Config) -> Result<Bus, Error> {
        config.validate()?;
        let allowed = executor::allowed_cpus();
        let n = config.shards.unwrap_or(allowed.len());
        let cores = config.cores.clone().unwrap_or_else(|| allowed.clone());
        if config.pin {
            executor::check_cores(&cores, &allowed)?;
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Config {
            field: "data_dir".into(),
            what: format!("cannot create {}: {e}", config.data_dir.display()),
        })?;
        let dir_lock = net_storage::DirLock::acquire(&config.data_dir).map_err(Error::DataDir)?;
        check_no_orphan_shards(&config.data_dir, n)?;
        let (mesh, mut mesh_setups) = match &config.mesh {
            Some(m) => {
                let (bus, setups) = mesh_setup(&config, m, n)?;
                (Some(bus), setups.into_iter().map(Some).collect())
            }
            None => (None, (0..n).map(|_| None).collect::<Vec<_>>()),
        };
        let stats = StatsHandle {
            shared: Arc::new(StatsShared {
                shards: (0..n)
                    .map(|_| Arc::new(CachePadded::new(ShardCounters::default())))
                    .collect(),
                lanes: Mutex::new(Vec::new()),
                lossy: Default::default(),
            }),
        };
        let mut bus = Bus {
            config: config.clone(),
            shards: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            lanes: LaneFactory::new(stats.shared.clone(), config.lane.capacity_bytes),
            stats,
            next_home: AtomicU64::new(0),
            producer_lock: Mutex::new(()),
            visible: Arc::new(crate::notify::Notify::default()),
            shut_down: false,
            dir_lock: Some(dir_lock),
            mesh,
        };
        let mut starting = Vec::with_capacity(n);
        for shard in 0..n {
            let cpu = config.pin.then(|| cores[shard % cores.len()]);
            match bus.spawn(shard, cpu, mesh_setups[shard].take()) {
                Ok(started) => starting.push(started),
                Err(e) => return Err(bus.abort_start(e)),
            }
        }
        for (shard, (shared, rx)) in starting.into_iter().enumerate() {
            let started = rx.recv().unwrap_or_else(|_| {
                Err(Error::Start {
                    shard: u16::try_from(shard).expect("shards <= SHARDS_MAX"),
                    what: "shard thread died while starting".into(),
                })
            });
            match started {
                Ok(view) => bus.shards.push(ShardHandle {
                    shared,
                    view,
                    readers: Mutex::new(Vec::new()),
                }),
                Err(e) => return Err(bus.abort_start(e)),
            }
        }
        if let Some(m) = &bus.mesh
            && let Err(e) = m.start_streamer(&bus.shards)
        {
            return Err(bus.abort_start(e));
        }
        Ok(bus)
    }

    /// Spawns shard `shard`'s thread: it opens the log, sets up its ring, sends back the
    /// log's view, and runs (catching a panic, which it records as the shard's failure).
    fn spawn(
        &mut self,
        shard: usize,
        cpu: Option<usize>,
        mesh: Option<MeshSetup>,
    ) -> Result<(Arc<ShardShared>, executor::StartSignal<LogView>), Error> {
        let id = u16::try_from(shard).expect("shards <= SHARDS_MAX");
        let signal = Arc::new(ShardSignal::new().map_err(|e| Error::Start {
            shard: id,
            what: format!("eventfd: {e}"),
        })?);
        let counters = self.stats.shared.shards[shard].clone();
        let shared = Arc::new(ShardShared::new(
            signal.clone(),
            counters.clone(),
            self.visible.clone(),
        ));
        let c = &self.config;
        let log_cfg = LogConfig {
            shard: id,
            segment_bytes: c.storage.segment_bytes,
            batch_bytes_max: c.batch.max_bytes,
            batch_events_max: c.batch.max_events,
            ack: if c.storage.fsync == FsyncPolicy::Never {
                Ack::Written
            } else {
                Ack::Synced
            },
            preallocate: true,
        };
        let settings = IngestSettings {
            id,
            batch_events_max: c.batch.max_events,
            batch_bytes_max: c.batch.max_bytes,
            linger_ns: c.batch.linger_us * 1000,
            fsync: c.storage.fsync,
            retention: net_storage::Retention {
                max_events: c.storage.retention.max_events,
                max_bytes: c.storage.retention.max_bytes,
                max_age_ms: c.storage.retention.max_age_ms,
            },
        };
        let idle = c.idle.clone();
        let dir = shard_dir(c, shard);
        let thread_shared = shared.clone();
        // The mesh mirrors subscribed shards into this shard's log through its own origin
        // lane, sized for a subscription's credit window (so a window's worth fits).
        let mirror = mesh.as_ref().map(|_| {
            let window = c.mesh.as_ref().map_or(0, |m| m.stream_window_bytes);
            let bytes = usize::try_from(window.saturating_mul(2))
                .unwrap_or(usize::MAX)
                .min(64 << 20);
            self.lanes.origin_writer(shard, &shared, bytes)
        });
        let (handle, rx) = executor::spawn_shard(id, cpu, move || {
            let storage = |source| Error::Storage {
                shard: ShardId(id),
                source,
            };
            let reactor = Reactor::new(signal).map_err(|e| storage(StorageError::Uring(e)))?;
            let (log, recovery) = Log::open_shared(&dir, log_cfg).map_err(storage)?;
            *counters.recovery.lock().expect("recovery") = recovery;
            let view = log.view().clone();
            let consumers = Consumers::new(ShardId(id), counters.appended_payload_bytes.clone());
            let ingest = Ingest::new(settings, log, thread_shared.clone());
            let mesh = mesh.map(|m| Mesh::new(m, view.clone(), mirror));
            let shard = Shard::new(
                id,
                idle,
                reactor,
                ingest,
                mesh,
                consumers,
                thread_shared.clone(),
            );
            Ok((view, move || run_guarded(shard, &thread_shared)))
        })?;
        self.threads.push(Some(handle));
        Ok((shared, rx))
    }

    fn abort_start(&mut self, err: Error) -> Error {
        self.stop_and_account(Duration::ZERO);
        self.shut_down = true;
        err
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn shard(&self, shard: ShardId) -> Result<&ShardHandle, Error> {
        self.shards
            .get(usize::from(shard.0))
            .ok_or(Error::NoSuchShard {
                shard,
                shards: self.shards.len(),
            })
    }

    fn mesh(&self) -> Result<&MeshBus, Error> {
        self.mesh.as_ref().ok_or_else(|| Error::Mesh {
            what: "this bus runs no mesh (the config has no `mesh` section)".into(),
        })
    }

    /// The address the mesh listens on (the actual port when `mesh.listen` asked for 0).
    pub fn mesh_addr(&self) -> Option<std::net::SocketAddr> {
        Some(self.mesh.as_ref()?.shards.first()?.local_addr)
    }

    /// This node's mesh identity: its node id and static public key.
    pub fn mesh_identity(&self) -> Option<(net_transport::identity::NodeId, [u8; 32])> {
        let m = self.mesh.as_ref()?;
        Some((m.node_id, m.identity_public))
    }

    /// A handle for sending messages to the node at `addr` whose static public key is
    /// `peer_public_key` (its shard starts a handshake at once, if it has no session). The
    /// shard is chosen by the key, so every handle to one node shares its session. Waits
    /// only for the shard to register the handle.
    pub fn connect(
        &self,
        addr: std::net::SocketAddr,
        peer_public_key: [u8; 32],
    ) -> Result<Peer, Error> {
        let mesh = self.mesh()?;
        let listen = self.mesh_addr().expect("a mesh has an address");
        if !net_transport::endpoint::routable(&addr) || (listen.is_ipv4() && addr.is_ipv6()) {
            return Err(Error::Mesh {
                what: format!(
                    "cannot send to {addr} from {listen}: a peer needs a non-zero port and a \
                     unicast address of the listen address's family"
                ),
            });
        }
        let hash = xxhash_rust::xxh3::xxh3_64(&peer_public_key);
        let shard = crate::producer::shard_for_hash(hash, self.shards.len());
        self.register_peer(shard, |link, reply| MeshControl::Connect {
            addr,
            key: peer_public_key,
            link,
            reply,
        })
        .map(|link| {
            Peer::new(
                ShardId(shard_u16(shard)),
                link,
                self.shards[shard].shared.signal.clone(),
                mesh.message_bytes_max,
            )
        })
    }

    /// A handle for answering node `node` on the session it has with shard `shard` (as told
    /// by [`crate::MeshMessage`]).
    pub fn peer(
        &self,
        shard: ShardId,
        node: net_transport::identity::NodeId,
    ) -> Result<Peer, Error> {
        let mesh = self.mesh()?;
        self.shard(shard)?;
        let i = usize::from(shard.0);
        self.register_peer(i, |link, reply| MeshControl::Attach { node, link, reply })
            .map(|link| {
                Peer::new(
                    shard,
                    link,
                    self.shards[i].shared.signal.clone(),
                    mesh.message_bytes_max,
                )
            })
    }

    fn register_peer(
        &self,
        shard: usize,
        msg: impl FnOnce(Arc<PeerLink>, mpsc::SyncSender<Result<(), String>>) -> MeshControl,
    ) -> Result<Arc<PeerLink>, Error> {
        let mesh = self.mesh()?;
        let id = ShardId(shard_u16(shard));
        self.check_alive(id)?;
        let link = Arc::new(PeerLink::new(mesh.peer_queue_bytes));
        let (tx, rx) = mpsc::sync_channel(1);
        self.shards[shard]
            .shared
            .send(Control::Mesh(msg(link.clone(), tx)))
            .map_err(|_| self.dead_error(id))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(link),
            Ok(Err(what)) => Err(Error::Mesh { what }),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what: format!("shard {shard} to register a mesh peer"),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(self.dead_error(id)),
        }
    }

    /// The inbox every peer's messages arrive in. There is one per bus: the second call
    /// fails.
    pub fn mesh_inbox(&self) -> Result<Inbox, Error> {
        self.mesh()?
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::Mesh {
                what: "the inbox was already taken (one per bus)".into(),
            })
    }

    /// The mesh's counters, per shard and per peer (`None` without a mesh).
    pub fn mesh_stats(&self) -> Option<MeshStats> {
        let m = self.mesh.as_ref()?;
        let mut shards = Vec::with_capacity(m.shards.len());
        let mut peers = Vec::new();
        let mut total = net_transport::stats::CountersSnapshot::default();
        for (i, s) in m.shards.iter().enumerate() {
            let (st, p) = s.snapshot(ShardId(shard_u16(i)));
            total.add(&st.traffic);
            shards.push(st);
            peers.extend(p);
        }
        let stream = |c: &crate::mesh_stream::StreamCounters| crate::mesh::StreamStats::read(c);
        let publications = m
            .registry
            .publications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| {
                let mut st = stream(c);
                let end = self
                    .shards
                    .get(usize::from(st.shard))
                    .map_or(0, |h| h.view.visible_end());
                st.lag_events = end.saturating_sub(st.acked);
                st
            })
            .collect();
        let subscriptions = m
            .registry
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| stream(c))
            .collect();
        Some(MeshStats {
            node_id: m.node_id,
            shards,
            peers,
            total,
            publications,
            subscriptions,
        })
    }

    /// Writers of new lanes of `kind`, one per shard (registered with the stats and the
    /// shards).
    fn lane_writers(&self, kind: LaneKind) -> Result<Vec<LaneWriter>, Error> {
        if self.shut_down {
            return Err(Error::Closed);
        }
        Ok((self.shards.iter().enumerate())
            .map(|(i, shard)| LaneWriter::new(self.lanes.lane(i, &shard.shared, kind)))
            .collect())
    }

    /// Signs a capability token that lets node `subject` (whose static mesh key is
    /// `subject_key`) subscribe to `shards` of this node (`None`: every shard), valid from
    /// now for `ttl`. Hand the bytes to the subscriber; revoke with [`Bus::revoke_token`]
    /// and the id it returns.
    pub fn issue_token(
        &self,
        subject: net_transport::identity::NodeId,
        subject_key: [u8; 32],
        shards: Option<&[u16]>,
        ttl: Duration,
    ) -> Result<(u64, Vec<u8>), Error> {
        use net_transport::token::{Actions, ShardSet, Token};
        let m = self.mesh()?;
        let set = match shards {
            None => ShardSet::all(),
            Some(list) => ShardSet::of(list).map_err(|e| Error::Mesh {
                what: e.to_string(),
            })?,
        };
        let now = crate::clock::realtime_ns() / 1_000_000_000;
        let id = crate::clock::realtime_ns() ^ m.describe_nonce.fetch_add(1, Ordering::Relaxed);
        let token = Token::issue(
            &m.signing_key,
            m.node_id,
            subject,
            subject_key,
            Actions::SUBSCRIBE,
            set,
            id,
            now,
            now.saturating_add(ttl.as_secs().max(1)),
        );
        Ok((id, token.to_bytes().to_vec()))
    }

    /// Revokes token `id`: subscriptions it authorised end (their subscribers are told why),
    /// and it authorises nothing more.
    pub fn revoke_token(&self, id: u64) -> Result<(), Error> {
        let m = self.mesh()?;
        m.admission
            .verifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoke(id)
            .map_err(|e| Error::Mesh {
                what: e.to_string(),
            })?;
        for shard in &self.shards {
            let _ = shard.shared.send(Control::Mesh(MeshControl::RecheckTokens));
        }
        Ok(())
    }

    /// Asks the node at `addr` (static key `key`) how many shards it has.
    pub fn describe_node(
        &self,
        addr: std::net::SocketAddr,
        key: [u8; 32],
        timeout: Duration,
    ) -> Result<u16, Error> {
        let m = self.mesh()?;
        self.check_alive(ShardId(0))?;
        let nonce = u32::try_from(m.describe_nonce.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
            .expect("masked");
        let (tx, rx) = mpsc::sync_channel(1);
        self.shards[0]
            .shared
            .send(Control::Mesh(MeshControl::Describe {
                addr,
                key,
                nonce,
                reply: tx,
            }))
            .map_err(|_| self.dead_error(ShardId(0)))?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(what)) => Err(Error::Mesh { what }),
            Err(_) => Err(Error::Timeout {
                what: format!("node at {addr} to say how many shards it has"),
            }),
        }
    }

    /// Subscribes to the node at `addr` (static key `key`) with `token` (issued by that
    /// node for this one): its shards `shards` (`None`: all of them) are mirrored into this
    /// bus, origin shard `k` into local shard `k`, each event keeping its origin (node,
    /// shard, seq), so local consumers `poll` them. Each origin shard resumes after the
    /// highest origin seq this bus's log already holds (found by reading the log: its cost
    /// grows with the log), so a restart neither loses nor repeats an event. Returns the
    /// origin shards and where each starts.
    pub fn subscribe(
        &self,
        addr: std::net::SocketAddr,
        key: [u8; 32],
        token: &[u8],
        shards: Option<&[u16]>,
    ) -> Result<Vec<(u16, u64)>, Error> {
        let m = self.mesh()?;
        let parsed = net_transport::token::Token::parse(token).map_err(|e| Error::Mesh {
            what: format!("the token: {e}"),
        })?;
        let origin = parsed.issuer();
        let wanted: Vec<u16> = match shards {
            Some(list) => list.to_vec(),
            None => {
                let n = self.describe_node(addr, key, Duration::from_secs(10))?;
                (0..n).collect()
            }
        };
        if let Some(&k) = wanted
            .iter()
            .find(|&&k| usize::from(k) >= self.shards.len())
        {
            return Err(Error::Mesh {
                what: format!(
                    "origin shard {k} is mirrored into local shard {k}, but this bus has {}                      shards: give it at least {} shards, or subscribe to fewer",
                    self.shards.len(),
                    k + 1
                ),
            });
        }
        let positions = self.origin_positions(Some(origin))?;
        let mut started = Vec::with_capacity(wanted.len());
        for &k in &wanted {
            let from = positions.get(&(origin, k)).copied().unwrap_or(0);
            let counters = Arc::new(crate::mesh_stream::StreamCounters::default());
            let (tx, rx) = mpsc::sync_channel(1);
            let shard = usize::from(k);
            self.check_alive(ShardId(k))?;
            self.shards[shard]
                .shared
                .send(Control::Mesh(MeshControl::Subscribe(Box::new(
                    crate::mesh_shard::SubscribeRequest {
                        addr,
                        key,
                        origin,
                        origin_shard: k,
                        from,
                        token: token.to_vec(),
                        limits: m.recv_limits,
                        counters,
                        reply: tx,
                    },
                ))))
                .map_err(|_| self.dead_error(ShardId(k)))?;
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => started.push((k, from)),
                Ok(Err(what)) => return Err(Error::Mesh { what }),
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("shard {k} to start a subscription"),
                    });
                }
            }
        }
        Ok(started)
    }

    /// Ends this node's subscriptions to `shards` of node `origin` (`None`: all of them);
    /// the publisher is told. Returns the shards that were subscribed. What was mirrored stays
    /// in the log; a later `subscribe` resumes after it.
    pub fn unsubscribe(
        &self,
        origin: net_transport::identity::NodeId,
        shards: Option<&[u16]>,
    ) -> Result<Vec<u16>, Error> {
        self.mesh()?;
        let all: Vec<u16> = (0..self.shards.len()).map(shard_u16).collect();
        let mut ended = Vec::new();
        for &k in shards.unwrap_or(&all) {
            let handle = self.shard(ShardId(k))?;
            let (tx, rx) = mpsc::sync_channel(1);
            handle
                .shared
                .send(Control::Mesh(MeshControl::Unsubscribe {
                    origin,
                    origin_shard: k,
                    reply: tx,
                }))
                .map_err(|_| self.dead_error(ShardId(k)))?;
            if rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false) {
                ended.push(k);
            }
        }
        Ok(ended)
    }

    /// A new producer with one lane per shard. Producers are `Send`, not `Sync`: one per
    /// thread.
    pub fn producer(&self) -> Result<Producer, Error> {
        let _serial = self.producer_lock.lock().expect("producer lock");
        let writers = self.lane_writers(LaneKind::Plain)?;
        let home = self.next_home.fetch_add(1, Ordering::Relaxed) % self.shards.len() as u64;
        let home = usize::try_from(home).expect("below shard count");
        Ok(Producer::new(
            writers,
            home,
            self.config.lane.backpressure,
            self.config.payload_bytes_max(),
        ))
    }

    /// A new producer of events that carry their origin (a remote node's id, shard and
    /// sequence number), with one lane per shard; see [`MirrorProducer`]. `Send`, not `Sync`:
    /// one per thread. Its payload limit is [`Producer::payload_bytes_max`] less
    /// [`net_storage::ORIGIN_BYTES`].
    pub fn mirror_producer(&self) -> Result<MirrorProducer, Error> {
        let _serial = self.producer_lock.lock().expect("producer lock");
        let writers = self.lane_writers(LaneKind::Origin)?;
        Ok(MirrorProducer::new(
            writers,
            self.config.lane.backpressure,
            self.config
                .payload_bytes_max()
                .saturating_sub(net_storage::ORIGIN_BYTES),
        ))
    }

    /// For each origin (node id, origin shard) of the events stored in this bus's logs —
    /// only node `node`'s when given — one past the highest origin sequence number stored:
    /// where mirroring that origin continues without storing an event twice (after a
    /// restart, say).
    ///
    /// Cost: a full read of every shard's log on the calling thread (all of it, every call:
    /// `O(stored bytes)` of disk reads and checksums), as of the visible end when each shard
    /// is read. Call it once at start-up; to keep the positions current afterwards, fold in
    /// only what was appended since with [`Bus::origin_positions_since`].
    pub fn origin_positions(&self, node: Option<u64>) -> Result<HashMap<(u64, u16), u64>, Error> {
        let mut positions = HashMap::new();
        self.origin_positions_since(node, &Cursor::start(), &mut positions)?;
        Ok(positions)
    }

    /// The incremental form of [`Bus::origin_positions`]: reads every shard's log from
    /// `from` (on the calling thread) to its visible end, raises `positions` for the origins
    /// found (only node `node`'s when given), and returns the cursor to continue from next
    /// time. Costs a read of what was stored after `from`.
    pub fn origin_positions_since(
        &self,
        node: Option<u64>,
        from: &Cursor,
        positions: &mut HashMap<(u64, u16), u64>,
    ) -> Result<Cursor, Error> {
        /// Records and bytes asked for per read.
        const READ_EVENTS: usize = 4096;
        const READ_BYTES: usize = 4 << 20;
        if self.shut_down {
            return Err(Error::Closed);
        }
        let n = self.shards.len();
        if let Some(bad) = from.shards().find(|s| usize::from(s.0) >= n) {
            return Err(Error::Cursor(format!(
                "shard {bad} does not exist on this bus ({n} shards)"
            )));
        }
        let mut next = from.clone();
        for s in 0..n {
            let shard = ShardId::from_index(s);
            let mut reader = self.shard_reader(shard)?;
            let mut at = from.next_seq(shard).0;
            loop {
                let batch = reader
                    .read(at, READ_EVENTS, READ_BYTES)
                    .map_err(|source| Error::Storage { shard, source })?;
                for o in batch.records.iter().filter_map(|r| r.origin) {
                    if node.is_none_or(|n| n == o.node) {
                        let end = positions.entry((o.node, o.shard)).or_insert(0);
                        *end = (*end).max(o.seq.saturating_add(1));
                    }
                }
                // An empty read at the same position is the visible end (gaps and removed
                // ranges are passed over by `next`).
                if batch.records.is_empty() && batch.next <= at {
                    break;
                }
                at = batch.next;
            }
            next.set(shard, Seq(at))?;
        }
        Ok(next)
    }

    /// Registers a consumer of `shard`'s completed batches (see [`BatchConsumer`]); `name`
    /// identifies it in the stats.
    pub fn add_batch_consumer(
        &self,
        shard: ShardId,
        name: &str,
        consumer: Box<dyn BatchConsumer>,
    ) -> Result<(), Error> {
        let handle = self.shard(shard)?;
        self.check_alive(shard)?;
        let counters = Arc::new(ConsumerCounters::new(name.to_owned()));
        let start = handle.view.visible_end();
        counters.delivered_end.store(start, Ordering::Release);
        handle
            .shared
            .counters
            .consumers
            .lock()
            .expect("consumer registry")
            .push(counters.clone());
        handle
            .shared
            .send(Control::AddConsumer(consumer, counters))
            .map_err(|_| self.dead_error(shard))
    }

    /// A feed of `shard`'s completed batches for a consumer's own thread (see [`FeedReader`]):
    /// copies of each batch's records through a ring of `capacity_bytes` (a power of two, at
    /// least 4 KiB), filled while it has room; the records that did not fit are read from the
    /// log ([`Bus::shard_reader`]). The feed starts with the next batch; `name` identifies it
    /// in the stats.
    pub fn batch_feed(
        &self,
        shard: ShardId,
        name: &str,
        capacity_bytes: usize,
    ) -> Result<FeedReader, Error> {
        if !capacity_bytes.is_power_of_two() || capacity_bytes < 4096 {
            return Err(Error::Config {
                field: "batch_feed.capacity_bytes".into(),
                what: format!("{capacity_bytes}: must be a power of two of at least 4096"),
            });
        }
        let ring = Arc::new(Ring::new(capacity_bytes));
        self.add_batch_consumer(shard, name, Box::new(FeedConsumer::new(ring.clone())))?;
        Ok(FeedReader::new(ring, shard))
    }

    /// Holds `shard`'s retention at `from`: no segment holding a sequence number at or above
    /// it is removed while the hold lives (see [`RetentionHold`]).
    pub fn hold_retention(&self, shard: ShardId, from: Seq) -> Result<RetentionHold, Error> {
        let handle = self.shard(shard)?;
        self.check_alive(shard)?;
        let at = Arc::new(AtomicU64::new(from.0));
        handle
            .shared
            .send(Control::HoldRetention(at.clone()))
            .map_err(|_| self.dead_error(shard))?;
        Ok(RetentionHold::new(at))
    }

    /// A reader of `shard`'s log for a consumer's own thread (catching up after refusing
    /// batches, or following the log without polling the whole bus).
    pub fn shard_reader(&self, shard: ShardId) -> Result<Reader, Error> {
        Ok(self.shard(shard)?.view.reader())
    }

    /// A reader of the counters that outlives the bus.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// The error for a shard that failed or died (or ended).
    fn dead_error(&self, shard: ShardId) -> Error {
        let c = &self.stats.shared.shards[usize::from(shard.0)];
        match c.failure() {
            Some(ShardFailure::Panicked(message)) => Error::ShardPanicked {
                shard,
                message: message.clone(),
            },
            Some(ShardFailure::Storage(e)) => Error::Storage {
                shard,
                source: e.clone(),
            },
            None => Error::Closed,
        }
    }

    fn check_alive(&self, shard: ShardId) -> Result<(), Error> {
        let c = &self.stats.shared.shards[usize::from(shard.0)];
        if c.is_dead() {
            return Err(self.dead_error(shard));
        }
        Ok(())
    }

    /// Reads up to `limit` events after `cursor`, interleaving shards fairly. Reads happen on
    /// the calling thread; a shard whose log cannot be read (or that failed) is reported in
    /// `failed_shards` while the others' events are returned.
    pub fn poll(&self, cursor: &Cursor, limit: usize) -> Result<PollResponse, Error> {
        if self.shut_down {
            return Err(Error::Closed);
        }
        let n = self.shards.len();
        if let Some(bad) = cursor.shards().find(|s| usize::from(s.0) >= n) {
            return Err(Error::Cursor(format!(
                "shard {bad} does not exist on this bus ({n} shards)"
            )));
        }
        let per_shard = limit.div_ceil(n).max(1);
        let bytes_max = self.config.poll.shard_bytes_max;
        let mut resp = PollResponse {
            events: Vec::new(),
            next: cursor.clone(),
            failed_shards: Vec::new(),
            skipped: false,
        };
        let mut per = Vec::with_capacity(n);
        for (s, handle) in self.shards.iter().enumerate() {
            let shard = ShardId::from_index(s);
            let from = cursor.next_seq(shard).0;
            let mut reader = handle
                .readers
                .lock()
                .expect("reader pool")
                .pop()
                .unwrap_or_else(|| handle.view.reader());
            let read = reader.read(from, per_shard, bytes_max);
            let mut pool = handle.readers.lock().expect("reader pool");
            if pool.len() < POOLED_READERS_MAX {
                pool.push(reader);
            }
            drop(pool);
            match read {
                Ok(batch) => {
                    resp.skipped |= batch.skipped;
                    let events = batch
                        .records
                        .into_iter()
                        .map(|r| Event {
                            id: EventId {
                                shard,
                                seq: Seq(r.seq),
                            },
                            ts_ns: r.ts_ns,
                            origin: r.origin,
                            payload: r.payload,
                        })
                        .collect();
                    per.push((shard, events));
                }
                Err(source) => resp
                    .failed_shards
                    .push((shard, Error::Storage { shard, source })),
            }
            if self.stats.shared.shards[s].is_failed()
                && !resp.failed_shards.iter().any(|(f, _)| *f == shard)
            {
                resp.failed_shards.push((shard, self.dead_error(shard)));
            }
        }
        resp.events = merge(per, limit, &mut resp.next);
        Ok(resp)
    }

    /// Like [`Bus::poll`], but when no event is there yet it sleeps until a shard publishes
    /// some (or one fails), up to `timeout`, instead of returning empty at once. The way to
    /// follow the tail: a consumer that polls in a loop keeps a core busy, and on a machine
    /// with few cores that starves the kernel work completing the shards' writes (see
    /// `docs/architecture.md`). Returns the first non-empty response, one reporting a failed
    /// shard or skipped events, or an empty one when `timeout` passes.
    pub fn poll_wait(
        &self,
        cursor: &Cursor,
        limit: usize,
        timeout: Duration,
    ) -> Result<PollResponse, Error> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let seen = self.visible.epoch();
            let resp = self.poll(cursor, limit)?;
            let left = remaining(deadline);
            if !resp.events.is_empty()
                || !resp.failed_shards.is_empty()
                || resp.skipped
                || left.is_zero()
            {
                return Ok(resp);
            }
            self.visible.wait(seen, left);
        }
    }

    /// Waits until every event ingested before this call is durable under the fsync policy
    /// (or dropped). Events sent after the call cannot satisfy it: it snapshots each lane's
    /// head at entry. A shard that failed or died makes it return its failure at once.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_timeout(Duration::MAX)
    }

    /// [`Bus::flush`] with a time limit (`Duration::MAX`: none).
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        if self.shut_down {
            return Err(Error::Closed);
        }
        let lanes = self.stats.shared.lanes_snapshot();
        let mut waits = Vec::with_capacity(self.shards.len());
        for (s, handle) in self.shards.iter().enumerate() {
            let shard = ShardId::from_index(s);
            let heads = lanes
                .iter()
                .filter(|l| l.shard == s)
                .map(|l| (l.id, l.head()))
                .collect();
            let (tx, rx) = mpsc::sync_channel(1);
            handle
                .shared
                .send(Control::Flush { heads, reply: tx })
                .map_err(|_| self.dead_error(shard))?;
            waits.push(rx);
        }
        let deadline = Instant::now().checked_add(timeout);
        for (s, rx) in waits.into_iter().enumerate() {
            let shard = ShardId::from_index(s);
            match rx.recv_timeout(remaining(deadline)) {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(Error::Storage { shard, source }),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        what: format!("flush of shard {shard}"),
                    });
                }
                // The shard ended with the request pending: it died or stopped.
                Err(RecvTimeoutError::Disconnected) => return Err(self.dead_error(shard)),
            }
        }
        Ok(())
    }

    /// Waits until every event in `ids` is durable under the fsync policy (written, for
    /// `never`), asking the shards to sync now rather than at the end of their interval.
    pub fn wait_durable(&self, ids: &[EventId], timeout: Duration) -> Result<(), Error> {
        if self.shut_down {
            return Err(Error::Closed);
        }
        let n = self.shards.len();
        if let Some(bad) = ids.iter().find(|id| usize::from(id.shard.0) >= n) {
            return Err(Error::NoSuchShard {
                shard: bad.shard,
                shards: n,
            });
        }
        let mut want = vec![0u64; n];
        for id in ids {
            let w = &mut want[usize::from(id.shard.0)];
            *w = (*w).max(id.seq.0.saturating_add(1));
        }
        for (s, &end) in want.iter().enumerate() {
            if end > 0 {
                let _ = self.shards[s].shared.send(Control::SyncNow);
            }
        }
        let deadline = Instant::now().checked_add(timeout);
        let never = self.config.storage.fsync == FsyncPolicy::Never;
        for (s, &end) in want.iter().enumerate() {
            let c = &self.stats.shared.shards[s];
            let shard = ShardId::from_index(s);
            loop {
                let reached = if never {
                    &c.persisted_end
                } else {
                    &c.durable_end
                };
                if reached.load(Ordering::Acquire) >= end {
                    break;
                }
                if c.is_failed() || c.stopped.load(Ordering::Acquire) {
                    return Err(self.dead_error(shard));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout {
                        what: format!("durability of shard {shard} up to seq {end}"),
                    });
                }
                std::thread::sleep(WAIT_POLL);
            }
        }
        Ok(())
    }

    /// Takes and resets the ingest-to-persisted latency histogram (nanoseconds) of every
    /// live shard, merged.
    pub fn take_latency(&self) -> Histogram<u64> {
        let mut merged = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds");
        let rxs: Vec<_> = (self.shards.iter())
            .filter_map(|s| {
                let (tx, rx) = mpsc::sync_channel(1);
                s.shared.send(Control::Latency { reply: tx }).ok()?;
                Some(rx)
            })
            .collect();
        for rx in rxs {
            if let Ok(h) = rx.recv() {
                merged.add(&h).expect("same bounds");
            }
        }
        merged
    }

    /// Test support: pauses or resumes a shard's draining; its lanes fill while paused,
    /// under the backpressure mode.
    #[cfg(any(test, feature = "testing"))]
    pub fn pause_shard(&self, shard: ShardId, paused: bool) -> Result<(), Error> {
        self.shard(shard)?
            .shared
            .send(Control::Pause(paused))
            .map_err(|_| self.dead_error(shard))
    }

    /// Test support: makes a shard's thread panic (fault injection for tests of panic
    /// surfacing).
    #[cfg(any(test, feature = "testing"))]
    pub fn inject_shard_panic(&self, shard: ShardId) -> Result<(), Error> {
        self.shard(shard)?
            .shared
            .send(Control::InjectPanic)
            .map_err(|_| self.dead_error(shard))
    }

    /// Drains until `deadline`, then stops; counts what could not be drained as dropped,
    /// exactly once.
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let report = self.stop_and_account(deadline);
        self.shut_down = true;
        report
    }

    fn stop_and_account(&mut self, deadline: Duration) -> ShutdownReport {
        if let Some(m) = &self.mesh {
            m.stop_streamer();
        }
        let lanes = self.stats.shared.lanes_snapshot();
        for lane in &lanes {
            lane.close();
        }
        for lane in &lanes {
            lane.wait_writer_outside();
        }
        let deadline_ns =
            monotonic_ns().saturating_add(u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX));
        for shard in &self.shards {
            let _ = shard.shared.send(Control::Stop { deadline_ns });
        }
        let mut panicked = Vec::new();
        let mut failed = Vec::new();
        for (s, t) in self.threads.iter_mut().enumerate() {
            let shard = ShardId::from_index(s);
            let Some(handle) = t.take() else { continue };
            let counters = &self.stats.shared.shards[s];
            let joined = handle.join();
            counters.stopped.store(true, Ordering::Release);
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(ShardExit::Storage(e))) => {
                    counters.set_failure(ShardFailure::Storage(e.clone()));
                    failed.push((shard, e));
                }
                Ok(Err(ShardExit::Ring(e))) => {
                    let e = StorageError::Uring(e);
                    counters.set_failure(ShardFailure::Storage(e.clone()));
                    failed.push((shard, e));
                }
                Ok(Err(ShardExit::Panicked(msg))) => panicked.push((shard, msg)),
                Err(payload) => {
                    let msg = panic_message(payload.as_ref());
                    counters.set_failure(ShardFailure::Panicked(msg.clone()));
                    panicked.push((shard, msg));
                }
            }
        }
        // Every writer of the data dir has ended: another bus may take it now.
        self.dir_lock = None;
        let residual = self.account_residual();
        let lossy = residual > 0 || !panicked.is_empty();
        if lossy {
            self.stats.shared.lossy.store(true, Ordering::Release);
        }
        let stats = self.stats.snapshot();
        debug_assert_eq!(stats.total.in_flight, 0);
        ShutdownReport {
            lossy,
            dropped_at_shutdown: residual,
            stats,
            panicked_shards: panicked,
            failed_shards: failed,
            mesh: self.mesh_stats(),
        }
    }

    /// Counts every event a stopped shard still held as dropped. Runs only after the shard's
    /// thread ended and its lanes are closed, so the bus is the counters' only writer.
    fn account_residual(&self) -> u64 {
        let stats = self.stats.snapshot();
        let mut residual = 0;
        for s in &stats.shards {
            let left = s.totals.in_flight;
            if left > 0 {
                self.stats.shared.shards[usize::from(s.shard.0)].add_dropped(left);
                residual += left;
            }
        }
        residual
    }
}

/// Runs a shard, turning a panic into the shard's recorded failure: the failure and its
/// message are visible at once, the control queue closes (pending requests disconnect), and
/// the thread ends normally so the bus joins it.
fn run_guarded(shard: Shard, shared: &ShardShared) -> Result<(), ShardExit> {
    let id = shard.id();
    tracing::info!(shard = id, "shard started");
    let exit = match std::panic::catch_unwind(AssertUnwindSafe(|| shard.run())) {
        Ok(result) => {
            match &result {
                Ok(()) => tracing::info!(shard = id, "shard stopped"),
                Err(ShardExit::Storage(e)) => {
                    tracing::error!(shard = id, error = %e, "shard stopped by a storage error");
                }
                Err(ShardExit::Ring(e)) => {
                    tracing::error!(shard = id, error = %e, "shard stopped by an io_uring error");
                }
                Err(ShardExit::Panicked(msg)) => {
                    tracing::error!(shard = id, panic = %msg, "shard panicked");
                }
            }
            result
        }
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            tracing::error!(shard = id, panic = %msg, "shard panicked");
            shared
                .counters
                .set_failure(ShardFailure::Panicked(msg.clone()));
            shared.counters.stopped.store(true, Ordering::Release);
            shared.close();
            Err(ShardExit::Panicked(msg))
        }
    };
    // However the shard ended, consumers sleeping in `poll_wait` wake to see it.
    shared.visible.notify();
    exit
}

impl Drop for Bus {
    fn drop(&mut self) {
        if !self.shut_down {
            self.stop_and_account(Duration::ZERO);
            self.shut_down = true;
        }
    }
}

fn shard_u16(shard: usize) -> u16 {
    u16::try_from(shard).expect("shards <= SHARDS_MAX")
}
