//! Counters and their snapshots.
//!
//! Every counter has one writer: a producer writes its lanes' `ingested`/`dropped`/`rejected`,
//! a shard writes its own `persisted`/`dropped`, and the bus writes a shard's counters only
//! after that shard's thread has ended. Writers use plain stores; there is no RMW.
//!
//! `ingested == persisted + dropped + in_flight` holds at every observation with `in_flight`
//! never negative, because an observer reads the shard counters first and the lane counters
//! last: a producer counts an event ingested before publishing it (Release on `head`), and a
//! shard publishes `persisted` after acquiring that `head`, so whatever the observer sees
//! persisted it also sees ingested. After shutdown `in_flight == 0` exactly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;

use crate::buckets::{AtomicBuckets, Buckets};
use crate::ids::ShardId;
use crate::lane::{Lane, LaneCounters};

/// Counters a shard writes.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub(crate) persisted: AtomicU64,
    /// Events the shard (or the bus after the shard ended) had to drop: I/O failure, shutdown
    /// deadline, a panicked shard.
    pub(crate) dropped: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) persisted_end: AtomicU64,
    pub(crate) durable_end: AtomicU64,
    /// First sequence number still stored (retention moves it).
    pub(crate) retained_first: AtomicU64,
    /// The shard's thread has ended (cleanly, failed, or panicked).
    pub(crate) stopped: AtomicBool,
    /// Why the shard failed or died: set once, with its reason, in one step (a reader never
    /// sees "failed" without the reason).
    pub(crate) failure: OnceLock<ShardFailure>,
    /// Payload bytes of completed batches (the shard's built-in batch consumer).
    pub(crate) appended_payload_bytes: Arc<AtomicU64>,
    /// What opening the shard's log found and repaired.
    pub(crate) recovery: std::sync::Mutex<net_storage::Recovery>,
    /// The shard's batch consumers (control plane only).
    pub(crate) consumers: std::sync::Mutex<Vec<Arc<crate::consumer::ConsumerCounters>>>,
    /// Submit to completion of batches written without an fdatasync, in µs.
    pub(crate) write_us: AtomicBuckets,
    /// Submit to completion of batches written with their fdatasync, and of syncs on their
    /// own (`interval_ms` on an idle log), in µs.
    pub(crate) sync_us: AtomicBuckets,
    /// Events per completed batch.
    pub(crate) batch_events: AtomicBuckets,
}

/// Why a shard stopped serving.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum ShardFailure {
    /// Its log failed (the first failure, with its file and OS error). The shard keeps
    /// draining its lanes and counts what it cannot store as dropped.
    Storage(net_storage::StorageError),
    /// Its thread panicked with this message. Nothing drains its lanes any more.
    Panicked(String),
}

impl std::fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardFailure::Storage(e) => write!(f, "{e}"),
            ShardFailure::Panicked(m) => write!(f, "panicked: {m}"),
        }
    }
}

impl ShardCounters {
    /// Records why the shard failed; returns false if a failure was already recorded (the
    /// first one stays).
    pub(crate) fn set_failure(&self, failure: ShardFailure) -> bool {
        self.failure.set(failure).is_ok()
    }

    /// The shard's failure, if any.
    pub(crate) fn failure(&self) -> Option<&ShardFailure> {
        self.failure.get()
    }

    /// Whether the shard can no longer make events durable (failed or died).
    pub(crate) fn is_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Whether the shard's thread died.
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.failure.get(), Some(ShardFailure::Panicked(_)))
    }

    pub(crate) fn add_persisted(&self, n: u64) {
        let v = self.persisted.load(Ordering::Relaxed) + n;
        self.persisted.store(v, Ordering::Release);
    }

    pub(crate) fn add_dropped(&self, n: u64) {
        let v = self.dropped.load(Ordering::Relaxed) + n;
        self.dropped.store(v, Ordering::Release);
    }
}

/// Event counts; `ingested == persisted + dropped + in_flight`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events the bus took responsibility for.
    pub ingested: u64,
    /// Events written to the shard's log.
    pub persisted: u64,
    /// Events dropped: by backpressure, by an I/O failure, or at shutdown.
    pub dropped: u64,
    /// Sends refused with `SendError::Full` (not ingested).
    pub rejected: u64,
    /// Events in lanes or batches, not yet persisted.
    pub in_flight: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.ingested += other.ingested;
        self.persisted += other.persisted;
        self.dropped += other.dropped;
        self.rejected += other.rejected;
        self.in_flight += other.in_flight;
    }
}

/// One shard's figures.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ShardStats {
    /// The shard.
    pub shard: ShardId,
    /// Its counts.
    pub totals: Totals,
    /// Batches written.
    pub batches: u64,
    /// One past the last persisted (written) sequence number.
    pub persisted_end: u64,
    /// One past the last sequence number known durable (fdatasync completed).
    pub durable_end: u64,
    /// The first sequence number still stored (retention removes older segments).
    pub retained_first: u64,
    /// What opening the shard's log found and repaired (torn tail cut, index rebuilt).
    pub recovery: net_storage::Recovery,
    /// Lanes alive (one per producer; a dropped producer's lane is retired once drained).
    pub lanes: usize,
    /// The log failed (poisoned) or the thread died; the reason is in `failure`.
    pub failed: bool,
    /// The shard's thread panicked.
    pub panicked: bool,
    /// Why the shard stopped serving, if it did.
    pub failure: Option<ShardFailure>,
    /// Payload bytes of every completed batch since the bus started (a built-in batch
    /// consumer).
    pub appended_payload_bytes: u64,
    /// The shard's batch consumers: how far each got.
    pub consumers: Vec<crate::consumer::ConsumerStats>,
    /// Of `totals.dropped`: events its lanes' backpressure mode dropped.
    pub dropped_backpressure: u64,
    /// Of `totals.dropped`: events the shard (or the bus for it) dropped because its log
    /// failed, it died, or shutdown's deadline passed.
    pub dropped_shard: u64,
    /// Bytes waiting in the shard's live lanes, and their capacity.
    pub lane_fill_bytes: u64,
    /// Summed capacity of the shard's live lanes.
    pub lane_capacity_bytes: u64,
    /// The fullest live lane's fill, 0.0 to 1.0.
    pub lane_fill_max: f64,
    /// Batch write latency without an fdatasync (submit to completion), µs.
    pub write_latency_us: Buckets,
    /// Batch write latency with its fdatasync, and stand-alone syncs, µs.
    pub sync_latency_us: Buckets,
    /// Events per completed batch.
    pub batch_events: Buckets,
}

/// A snapshot of the bus's figures.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per shard.
    pub shards: Vec<ShardStats>,
    /// Summed over shards.
    pub total: Totals,
    /// Whether the bus lost events it had accepted at shutdown (deadline, failure, panic, or
    /// being dropped without `shutdown`).
    pub lossy: bool,
    /// Failures by shard.
    pub errors: Vec<(ShardId, String)>,
}

/// The state every stats reader shares; outlives the bus.
#[derive(Debug)]
pub(crate) struct StatsShared {
    pub(crate) shards: Vec<Arc<CachePadded<ShardCounters>>>,
    pub(crate) lanes: std::sync::Mutex<Vec<LaneEntry>>,
    pub(crate) lossy: AtomicBool,
}

impl StatsShared {
    /// A copy of the lane registry (control plane: flush, shutdown).
    pub(crate) fn lanes_snapshot(&self) -> Vec<Arc<Lane>> {
        let entries = self.lanes.lock().expect("lane registry");
        entries.iter().filter_map(|e| e.lane.upgrade()).collect()
    }
}

/// The registry's record of one lane: its counters outlive the lane (a dropped producer's
/// lane is freed once the shard retires it; what it counted stays in the totals).
#[derive(Debug)]
pub(crate) struct LaneEntry {
    pub(crate) shard: usize,
    pub(crate) counters: Arc<CachePadded<LaneCounters>>,
    pub(crate) lane: std::sync::Weak<Lane>,
}

/// A cheap, clonable reader of the bus's counters that stays valid after the bus is gone, so
/// that the final figures of a bus dropped without `shutdown` can still be read.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    pub(crate) shared: Arc<StatsShared>,
}

impl StatsHandle {
    /// One shard's counts, reading shard counters before lane counters (see module docs).
    fn shard_totals(&self, shard: usize, lanes: &[LaneEntry]) -> Totals {
        self.shard_totals_split(shard, lanes).0
    }

    /// One shard's counts, and of its drops those by its lanes' backpressure.
    fn shard_totals_split(&self, shard: usize, lanes: &[LaneEntry]) -> (Totals, u64) {
        let c = &self.shared.shards[shard];
        let persisted = c.persisted.load(Ordering::Acquire);
        let shard_dropped = c.dropped.load(Ordering::Acquire);
        let (mut lane_dropped, mut rejected, mut ingested) = (0, 0, 0);
        for lane in lanes.iter().filter(|l| l.shard == shard) {
            lane_dropped += lane.counters.dropped.load(Ordering::Acquire);
            rejected += lane.counters.rejected.load(Ordering::Acquire);
        }
        for lane in lanes.iter().filter(|l| l.shard == shard) {
            ingested += lane.counters.ingested.load(Ordering::Acquire);
        }
        let dropped = shard_dropped + lane_dropped;
        let in_flight = ingested.checked_sub(persisted + dropped).unwrap_or_else(|| {
            panic!("counter invariant broken on shard {shard}: ingested {ingested} < persisted {persisted} + dropped {dropped}")
        });
        let totals = Totals {
            ingested,
            persisted,
            dropped,
            rejected,
            in_flight,
        };
        (totals, lane_dropped)
    }

    /// Totals over all shards. Allocates nothing (safe inside measured windows).
    pub fn totals(&self) -> Totals {
        let lanes = self.shared.lanes.lock().expect("lane registry");
        let mut t = Totals::default();
        for s in 0..self.shared.shards.len() {
            t.add(&self.shard_totals(s, &lanes));
        }
        t
    }

    /// A full snapshot.
    pub fn snapshot(&self) -> Stats {
        let lanes = self.shared.lanes.lock().expect("lane registry");
        let mut total = Totals::default();
        let shards = (0..self.shared.shards.len())
            .map(|s| {
                let (totals, dropped_backpressure) = self.shard_totals_split(s, &lanes);
                total.add(&totals);
                let (mut fill, mut capacity, mut fill_max) = (0u64, 0u64, 0f64);
                for lane in lanes.iter().filter(|e| e.shard == s) {
                    if let Some(lane) = lane.lane.upgrade() {
                        let (used, cap) = lane.fill();
                        fill += used;
                        capacity += cap;
                        fill_max = fill_max.max(used as f64 / cap as f64);
                    }
                }
                let c = &self.shared.shards[s];
                let persisted_end = c.persisted_end.load(Ordering::Acquire);
                let consumers = c.consumers.lock().expect("consumer registry");
                let failure = c.failure().cloned();
                ShardStats {
                    shard: ShardId::from_index(s),
                    totals,
                    batches: c.batches.load(Ordering::Relaxed),
                    lanes: lanes
                        .iter()
                        .filter(|e| e.shard == s && e.lane.strong_count() > 0)
                        .count(),
                    persisted_end,
                    durable_end: c.durable_end.load(Ordering::Relaxed),
                    retained_first: c.retained_first.load(Ordering::Relaxed),
                    recovery: c.recovery.lock().expect("recovery").clone(),
                    failed: failure.is_some(),
                    panicked: matches!(failure, Some(ShardFailure::Panicked(_))),
                    failure,
                    appended_payload_bytes: c.appended_payload_bytes.load(Ordering::Acquire),
                    consumers: consumers
                        .iter()
                        .map(|k| crate::consumer::ConsumerStats::read(k, persisted_end))
                        .collect(),
                    dropped_backpressure,
                    dropped_shard: totals.dropped - dropped_backpressure,
                    lane_fill_bytes: fill,
                    lane_capacity_bytes: capacity,
                    lane_fill_max: fill_max,
                    write_latency_us: c.write_us.read(),
                    sync_latency_us: c.sync_us.read(),
                    batch_events: c.batch_events.read(),
                }
            })
            .collect();
        drop(lanes);
        let errors = (self.shared.shards.iter().enumerate())
            .filter_map(|(s, c)| Some((ShardId::from_index(s), c.failure()?.to_string())))
            .collect();
        Stats {
            shards,
            total,
            lossy: self.shared.lossy.load(Ordering::Acquire),
            errors,
        }
    }
}
