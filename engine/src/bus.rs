//! The bus: starts the shards, hands out producers, polls, flushes, and shuts down with exact
//! accounting.
//!
//! Shutdown order (each step is what makes the next exact):
//! 1. close every lane and wait until no producer is inside a send (`busy`), so no event can
//!    enter a lane afterwards;
//! 2. tell every shard to drain until the deadline and stop; join the threads, surfacing
//!    panics;
//! 3. with every writer of a shard's counters gone, count what each shard still held
//!    (`ingested - persisted - dropped`) as dropped, once. A `Bus` dropped without `shutdown`
//!    runs the same path with a zero deadline, so the loss is in its final stats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use net_storage::{Log, LogConfig};

use crate::clock::monotonic_ns;
use crate::config::Config;
use crate::control::{Control, ShardShared};
use crate::cursor::Cursor;
use crate::error::Error;
use crate::executor;
use crate::ids::{EventId, Seq, ShardId};
use crate::lane::{Lane, LaneWriter};
use crate::poll::{Event, PollResponse, merge};
use crate::producer::Producer;
use crate::shard::{Shard, ShardSettings};
use crate::stats::{LaneEntry, ShardCounters, Stats, StatsHandle, StatsShared};
use crate::wake::ShardSignal;

/// What `shutdown` did.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub failed_shards: Vec<(ShardId, String)>,
}

/// A running bus. See the crate docs for the data path.
#[derive(Debug)]
pub struct Bus {
    config: Config,
    shards: Vec<Arc<ShardShared>>,
    threads: Vec<Option<JoinHandle<Result<(), String>>>>,
    stats: StatsHandle,
    next_lane_id: AtomicU64,
    next_home: AtomicU64,
    producer_lock: Mutex<()>,
    shut_down: bool,
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
            let digits = name.strip_prefix("shard-")?;
            let index: usize = (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())??;
            let has_segments =
                net_storage::segment::list_segments(&e.path()).is_ok_and(|s| !s.is_empty());
            (index >= shards && has_segments).then_some(index)
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

impl Bus {
    /// Validates `config`, runs the start-up checks, opens every shard's log (recovering it)
    /// on its own pinned thread, and returns when all shards run.
    pub fn start(config: Config) -> Result<Bus, Error> {
        config.validate()?;
        let allowed = executor::allowed_cpus();
        let n = config.shards.unwrap_or(allowed.len());
        let cores = config.cores.clone().unwrap_or_else(|| allowed.clone());
        if config.pin {
            executor::check_cores(&cores, &allowed)?;
        }
        executor::check_memlock(n, config.executor.io_memory_bytes)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::Config {
            field: "data_dir".into(),
            what: format!("cannot create {}: {e}", config.data_dir.display()),
        })?;
        check_no_orphan_shards(&config.data_dir, n)?;
        let mut bus = Bus {
            config: config.clone(),
            shards: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            stats: StatsHandle {
                shared: Arc::new(StatsShared {
                    shards: (0..n)
                        .map(|_| Arc::new(CachePadded::new(ShardCounters::default())))
                        .collect(),
                    lanes: Mutex::new(Vec::new()),
                    lossy: Default::default(),
                }),
            },
            next_lane_id: AtomicU64::new(0),
            next_home: AtomicU64::new(0),
            producer_lock: Mutex::new(()),
            shut_down: false,
        };
        let mut starting = Vec::with_capacity(n);
        for shard in 0..n {
            let cpu = config.pin.then(|| cores[shard % cores.len()]);
            match bus.spawn(shard, cpu) {
                Ok(rx) => starting.push(rx),
                Err(e) => return Err(bus.abort_start(e)),
            }
        }
        for rx in starting {
            let started = rx.recv().unwrap_or_else(|_| {
                Err(Error::Start {
                    shard: 0,
                    what: "shard thread died while starting".into(),
                })
            });
            if let Err(e) = started {
                return Err(bus.abort_start(e));
            }
        }
        Ok(bus)
    }

    fn spawn(
        &mut self,
        shard: usize,
        cpu: Option<usize>,
    ) -> Result<mpsc::Receiver<Result<(), Error>>, Error> {
        let id = u16::try_from(shard).expect("shards <= SHARDS_MAX");
        let signal = Arc::new(ShardSignal::new().map_err(|e| Error::Start {
            shard: id,
            what: format!("eventfd: {e}"),
        })?);
        let shared = Arc::new(ShardShared::new(
            signal,
            self.stats.shared.shards[shard].clone(),
        ));
        self.shards.push(shared.clone());
        let c = &self.config;
        let log_cfg = LogConfig {
            shard: id,
            segment_bytes: c.storage.segment_bytes,
            batch_bytes_max: c.batch.max_bytes,
            batch_events_max: c.batch.max_events,
        };
        let settings = ShardSettings {
            id,
            batch_events_max: c.batch.max_events,
            batch_bytes_max: c.batch.max_bytes,
            linger_ns: c.batch.linger_us * 1000,
            idle: c.idle.clone(),
            fsync: c.storage.fsync,
            retention: net_storage::Retention {
                max_events: c.storage.retention.max_events,
                max_bytes: c.storage.retention.max_bytes,
                max_age_ms: c.storage.retention.max_age_ms,
            },
        };
        let dir = shard_dir(c, shard);
        let fsync = c.storage.fsync;
        let (handle, rx) = executor::spawn_shard(id, cpu, c.executor.io_memory_bytes, move || {
            let (log, recovery) = Log::open(&dir, log_cfg).map_err(|source| Error::Storage {
                shard: ShardId(id),
                source,
            })?;
            *shared.counters.recovery.lock().expect("recovery") = recovery;
            let mut log = log;
            log.set_sync_on_roll(fsync != crate::config::FsyncPolicy::Never);
            let last_ts_ns = log.last_ts_ns();
            let shard = Shard::new(settings, log, last_ts_ns, shared);
            Ok(move || shard.run())
        })?;
        self.threads.push(Some(handle));
        Ok(rx)
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

    /// A new producer with one lane per shard. Producers are `Send`, not `Sync`: one per
    /// thread.
    pub fn producer(&self) -> Result<Producer, Error> {
        let _serial = self.producer_lock.lock().expect("producer lock");
        if self.shut_down {
            return Err(Error::Closed);
        }
        let mut writers = Vec::with_capacity(self.shards.len());
        let mut lanes = self.stats.shared.lanes.lock().expect("lane registry");
        for (i, shard) in self.shards.iter().enumerate() {
            let id = self.next_lane_id.fetch_add(1, Ordering::Relaxed);
            let lane = Arc::new(Lane::new(
                id,
                i,
                self.config.lane.capacity_bytes,
                shard.signal.clone(),
                shard.counters.clone(),
            ));
            lanes.push(LaneEntry {
                shard: i,
                counters: lane.counters.clone(),
                lane: Arc::downgrade(&lane),
            });
            shard.send(Control::AddLane(lane.clone()));
            writers.push(LaneWriter::new(lane));
        }
        drop(lanes);
        let home = self.next_home.fetch_add(1, Ordering::Relaxed) % self.shards.len() as u64;
        let home = usize::try_from(home).expect("below shard count");
        Ok(Producer::new(
            writers,
            home,
            self.config.lane.backpressure,
            self.config.payload_bytes_max(),
        ))
    }

    /// A reader of the counters that outlives the bus.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.poll.timeout_ms)
    }

    /// Reads up to `limit` events after `cursor`, interleaving shards fairly.
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
        let replies: Vec<_> = (0..n)
            .map(|s| {
                let (tx, rx) = mpsc::sync_channel(1);
                let from = cursor.next_seq(ShardId::from_index(s)).0;
                let bytes_max = self.config.poll.shard_bytes_max;
                self.shards[s].send(Control::Poll {
                    from,
                    limit: per_shard,
                    bytes_max,
                    reply: tx,
                });
                (from, rx)
            })
            .collect();
        let deadline = self.deadline();
        let mut resp = PollResponse {
            events: Vec::new(),
            next: cursor.clone(),
            stalled_shards: Vec::new(),
            failed_shards: Vec::new(),
            skipped: false,
        };
        let mut per = Vec::with_capacity(n);
        for (s, (from, rx)) in replies.into_iter().enumerate() {
            let shard = ShardId::from_index(s);
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(reply) => {
                    if let Some(e) = reply.error {
                        resp.failed_shards.push((shard, e));
                    }
                    resp.skipped |= from < reply.first_seq
                        && reply.records.first().is_some_and(|r| r.seq > from);
                    let events = reply
                        .records
                        .into_iter()
                        .map(|r| Event {
                            id: EventId {
                                shard,
                                seq: Seq(r.seq),
                            },
                            ts_ns: r.ts_ns,
                            payload: r.payload,
                        })
                        .collect();
                    per.push((shard, events));
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    resp.stalled_shards.push(shard)
                }
            }
        }
        for (s, c) in self.stats.shared.shards.iter().enumerate() {
            let shard = ShardId::from_index(s);
            if c.failed.load(Ordering::Acquire)
                && !resp.failed_shards.iter().any(|(f, _)| *f == shard)
            {
                let reason = c
                    .error
                    .lock()
                    .expect("shard error")
                    .clone()
                    .unwrap_or_else(|| "failed".into());
                resp.failed_shards.push((shard, reason));
            }
        }
        resp.events = merge(per, limit, &mut resp.next);
        Ok(resp)
    }

    /// Waits until every event ingested before this call is persisted (or dropped). Events
    /// sent after the call cannot satisfy it: it snapshots each lane's head at entry.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_timeout(Duration::from_secs(3600))
    }

    /// [`Bus::flush`] with a time limit.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        if self.shut_down {
            return Err(Error::Closed);
        }
        let lanes = self.stats.shared.lanes_snapshot();
        let mut waits = Vec::with_capacity(self.shards.len());
        for (s, shard) in self.shards.iter().enumerate() {
            let heads = lanes
                .iter()
                .filter(|l| l.shard == s)
                .map(|l| (l.id, l.head()))
                .collect();
            let (tx, rx) = mpsc::sync_channel(1);
            shard.send(Control::Flush { heads, reply: tx });
            waits.push(rx);
        }
        let deadline = Instant::now() + timeout;
        for (s, rx) in waits.into_iter().enumerate() {
            let shard = ShardId::from_index(s);
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => {}
                Ok(Err(what)) => {
                    return Err(Error::Storage {
                        shard,
                        source: net_storage::StorageError::Poisoned {
                            shard: shard.0,
                            reason: what,
                        },
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        what: format!("flush of shard {shard}"),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
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
            return Err(Error::Cursor(format!(
                "event {bad} names a shard this bus does not have ({n} shards)"
            )));
        }
        let mut want = vec![0u64; n];
        for id in ids {
            let w = &mut want[usize::from(id.shard.0)];
            *w = (*w).max(id.seq.0.saturating_add(1));
        }
        for (s, &end) in want.iter().enumerate() {
            if end > 0 {
                self.shards[s].send(Control::SyncNow);
            }
        }
        let deadline = Instant::now() + timeout;
        let never = self.config.storage.fsync == crate::config::FsyncPolicy::Never;
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
                if c.failed.load(Ordering::Acquire) || c.stopped.load(Ordering::Acquire) {
                    let reason = c
                        .error
                        .lock()
                        .expect("shard error")
                        .clone()
                        .unwrap_or_else(|| "stopped".into());
                    return Err(Error::Storage {
                        shard,
                        source: net_storage::StorageError::Poisoned {
                            shard: shard.0,
                            reason,
                        },
                    });
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!("durability of shard {shard} up to seq {end}"),
                    });
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// Takes and resets the ingest-to-persisted latency histogram (nanoseconds) of every
    /// shard, merged.
    pub fn take_latency(&self) -> Histogram<u64> {
        let mut merged = Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds");
        let rxs: Vec<_> = (self.shards.iter())
            .map(|s| {
                let (tx, rx) = mpsc::sync_channel(1);
                s.send(Control::Latency { reply: tx });
                rx
            })
            .collect();
        for rx in rxs {
            if let Ok(h) =
                rx.recv_timeout(self.deadline().saturating_duration_since(Instant::now()))
            {
                merged.add(&h).expect("same bounds");
            }
        }
        merged
    }

    /// Pauses or resumes a shard's draining (maintenance and tests); its lanes fill while
    /// paused, under the backpressure mode.
    pub fn pause_shard(&self, shard: ShardId, paused: bool) {
        self.shards[usize::from(shard.0)].send(Control::Pause(paused));
    }

    /// Makes a shard's thread panic (fault injection for tests of panic surfacing; not for
    /// production use).
    #[doc(hidden)]
    pub fn inject_shard_panic(&self, shard: ShardId) {
        self.shards[usize::from(shard.0)].send(Control::InjectPanic);
    }

    /// Drains until `deadline`, then stops; counts what could not be drained as dropped,
    /// exactly once.
    pub fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let report = self.stop_and_account(deadline);
        self.shut_down = true;
        report
    }

    fn stop_and_account(&mut self, deadline: Duration) -> ShutdownReport {
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
            shard.send(Control::Stop { deadline_ns });
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
                Ok(Err(e)) => {
                    failed.push((shard, e.clone()));
                    counters.error.lock().expect("shard error").get_or_insert(e);
                }
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    counters.panicked.store(true, Ordering::Release);
                    *counters.error.lock().expect("shard error") = Some(format!("panicked: {msg}"));
                    panicked.push((shard, msg));
                }
            }
        }
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

impl Drop for Bus {
    fn drop(&mut self) {
        if !self.shut_down {
            self.stop_and_account(Duration::ZERO);
            self.shut_down = true;
        }
    }
}
