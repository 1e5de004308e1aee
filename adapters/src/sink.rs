//! The sink: a durable consumer of a bus's log that writes every event to a backend.
//!
//! One thread per sink runs a tokio current-thread runtime (the backends' clients are tokio
//! libraries) with one task per shard. A task follows its shard through a batch feed (copies
//! of the shard's completed batches, while it keeps up) and reads the log for what the feed
//! skipped (while it is behind), fills an [`OutBatch`], and writes it with the backend's
//! [`ShardWriter`]. Nothing here ever makes a shard wait: a slow or dead backend fills the
//! feed, the shard skips it, and the sink's lag grows (in [`Sink::stats`]).
//!
//! Delivery: a batch is confirmed when the backend confirmed every event of it. A transient
//! error is retried with capped exponential backoff; before each retry the task asks the
//! backend what it already holds and drops that from the batch, so a write that landed before
//! its answer was lost is not written twice. A fatal error stops the sink at once; it is in
//! the stats and [`Sink::wait_caught_up`] returns it. The confirmed positions are checkpointed
//! (see [`Checkpoint`]) every `checkpoint_interval` and at stop; at start each shard resumes
//! after the later of its checkpoint and what the backend reports it holds.
//!
//! Retention: with [`RetentionPolicy::Block`] (the default) the sink holds each shard's
//! retention at its confirmed position, so the log keeps what the backend has not confirmed
//! (and exceeds its limits while the backend is down). With [`RetentionPolicy::Skip`]
//! retention runs as configured, and events it removed before they were sent are counted in
//! `skipped` and reported.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_engine::{Bus, FeedReader, LogView, Reader, RetentionHold, Seq, ShardId};
use serde::Deserialize;

use crate::checkpoint::Checkpoint;
use crate::error::{AdapterError, ErrorClass};
use crate::event::OutBatch;

/// What a sink does when retention would remove events it has not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionPolicy {
    /// Hold retention at the sink's confirmed position: nothing unsent is removed.
    #[default]
    Block,
    /// Let retention run; count and report what it removed unsent (`skipped`).
    Skip,
}

/// A sink's settings. `SinkConfig::new` gives the defaults; every field is validated by
/// [`SinkConfig::validate`] (zeros refused, the field named).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Names the sink: its thread, its checkpoint file, its consumers in the bus's stats.
    pub name: String,
    /// Where the checkpoint file (`<name>.sink`) is kept.
    pub checkpoint_dir: PathBuf,
    /// The shards to carry; `None`: all.
    pub shards: Option<Vec<u16>>,
    /// Most events per backend write.
    pub batch_events_max: usize,
    /// Most payload bytes per backend write (a single larger event still goes alone).
    pub batch_bytes_max: usize,
    /// Bytes of each shard's feed ring (a power of two, at least 4096).
    pub feed_bytes: usize,
    /// Retention of unsent events.
    pub retention: RetentionPolicy,
    /// How often confirmed positions are checkpointed.
    pub checkpoint_interval_ms: u64,
    /// First and largest wait between retries of a transient error.
    pub backoff_min_ms: u64,
    /// Largest wait between retries.
    pub backoff_max_ms: u64,
    /// How often the backend's health is checked.
    pub health_interval_ms: u64,
    /// How long an idle shard task sleeps before looking again.
    pub idle_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> SinkConfig {
        SinkConfig {
            name: "sink".into(),
            checkpoint_dir: PathBuf::from("."),
            shards: None,
            batch_events_max: 512,
            batch_bytes_max: 1 << 20,
            feed_bytes: 4 << 20,
            retention: RetentionPolicy::Block,
            checkpoint_interval_ms: 100,
            backoff_min_ms: 10,
            backoff_max_ms: 2_000,
            health_interval_ms: 5_000,
            idle_ms: 1,
        }
    }
}

impl SinkConfig {
    /// The defaults, named `name`, checkpointing under `checkpoint_dir`.
    pub fn new(name: &str, checkpoint_dir: impl Into<PathBuf>) -> SinkConfig {
        SinkConfig {
            name: name.to_owned(),
            checkpoint_dir: checkpoint_dir.into(),
            ..SinkConfig::default()
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |field: &str, what: &str| {
            Err(AdapterError::fatal(
                "sink",
                format!("sink config field `{field}`: {what}"),
            ))
        };
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("name", "must be non-empty letters, digits, `-` or `_`");
        }
        if self.shards.as_ref().is_some_and(Vec::is_empty) {
            return bad(
                "shards",
                "an empty list carries nothing (omit it for all shards)",
            );
        }
        for (field, v) in [
            ("batch_events_max", self.batch_events_max as u64),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("backoff_min_ms", self.backoff_min_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("health_interval_ms", self.health_interval_ms),
            ("idle_ms", self.idle_ms),
        ] {
            if v == 0 {
                return bad(field, "must be above zero");
            }
        }
        if self.batch_events_max > 100_000 {
            return bad("batch_events_max", "at most 100000");
        }
        if !self.feed_bytes.is_power_of_two() || self.feed_bytes < 4096 {
            return bad("feed_bytes", "must be a power of two of at least 4096");
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return bad("backoff_max_ms", "must be at least backoff_min_ms");
        }
        Ok(())
    }
}

/// Whether a sink runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkStatus {
    /// Connecting, delivering or waiting for events (transient errors are retried).
    Running,
    /// Stopped by a fatal error, which is given.
    Failed(AdapterError),
    /// Stopped by [`Sink::stop`].
    Stopped,
}

/// One shard's figures in [`SinkStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkShardStats {
    /// The shard.
    pub shard: u16,
    /// One past the last sequence number the backend confirmed.
    pub confirmed_end: u64,
    /// Events stored on the shard beyond `confirmed_end`.
    pub lag: u64,
    /// Events the backend confirmed.
    pub written: u64,
    /// Backend writes confirmed.
    pub batches: u64,
    /// Events taken from the feed, and read from the log.
    pub from_feed: u64,
    /// Events read from the log (the feed had skipped them).
    pub from_log: u64,
    /// Writes retried after a transient error.
    pub retries: u64,
    /// Transient errors seen (writes, reads of the backend's position).
    pub transient_errors: u64,
    /// Fatal errors (at most one: the sink stops).
    pub fatal_errors: u64,
    /// Events the backend already held when a retry was prepared (dropped, not rewritten).
    pub already_held: u64,
    /// Events the backend confirmed and later no longer held (it lost its tail), sent again
    /// from the log.
    pub resent: u64,
    /// Events removed by retention before they were sent (`retention: skip`).
    pub skipped: u64,
}

/// A sink's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Its backend.
    pub backend: &'static str,
    /// Whether it runs.
    pub status: SinkStatus,
    /// The last error, transient or fatal, in words.
    pub last_error: Option<AdapterError>,
    /// Failed health checks (reported in `last_error`; only a write's error stops the sink).
    pub health_errors: u64,
    /// Per shard.
    pub shards: Vec<SinkShardStats>,
}

#[derive(Debug, Default)]
struct ShardCounters {
    confirmed_end: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    from_feed: AtomicU64,
    from_log: AtomicU64,
    retries: AtomicU64,
    transient_errors: AtomicU64,
    fatal_errors: AtomicU64,
    already_held: AtomicU64,
    resent: AtomicU64,
    skipped: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug)]
struct Shared {
    name: String,
    backend: &'static str,
    stop: AtomicBool,
    /// Failed health checks (they change nothing else: a write's own error decides).
    health_errors: AtomicU64,
    status: Mutex<SinkStatus>,
    last_error: Mutex<Option<AdapterError>>,
    /// Transient errors and failed health checks are logged through this (a backend that
    /// is down fails every retry).
    error_log: net_engine::RateLimit,
    shards: Vec<(u16, LogView, ShardCounters)>,
    /// Per shard, the retention hold (`retention: block`); it lives as long as the [`Sink`],
    /// so a sink stopped by a fatal error still keeps what it has not sent.
    holds: Vec<Option<RetentionHold>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn note(&self, c: &ShardCounters, e: &AdapterError) {
        match e.class {
            ErrorClass::Transient => {
                add(&c.transient_errors, 1);
                if let Some(suppressed) = self.error_log.check_now() {
                    tracing::warn!(
                        sink = %self.name,
                        backend = self.backend,
                        error = %e,
                        suppressed,
                        "sink error (retrying)"
                    );
                }
            }
            ErrorClass::Fatal => add(&c.fatal_errors, 1),
        }
        *self.last_error.lock().expect("sink error") = Some(e.clone());
    }

    /// Records a fatal error: the sink stops.
    fn fail(&self, e: AdapterError) {
        let mut status = self.status.lock().expect("sink status");
        if *status == SinkStatus::Running {
            tracing::error!(
                sink = %self.name,
                backend = self.backend,
                error = %e,
                "sink failed; it stopped"
            );
            *status = SinkStatus::Failed(e.clone());
        }
        *self.last_error.lock().expect("sink error") = Some(e);
        self.stop.store(true, Ordering::Release);
    }

    fn failure(&self) -> Option<AdapterError> {
        match &*self.status.lock().expect("sink status") {
            SinkStatus::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }
}

/// A running sink (see the module docs). Dropping it stops it as [`Sink::stop`] with a
/// five-second deadline.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// One shard's task state, on the sink thread.
struct ShardTask {
    shard: u16,
    index: usize,
    feed: FeedReader,
    reader: Reader,
    /// One past the last event confirmed, and one past the last event in `batch`.
    confirmed: u64,
    filled: u64,
    batch: OutBatch,
    checkpoint_floor: u64,
}

impl Sink {
    /// Starts a sink of `bus` into `backend` (see the module docs). Checks the config and
    /// the checkpoint here; the backend is connected on the sink's thread (its errors are in
    /// the stats, and a fatal one in [`Sink::wait_caught_up`]).
    pub fn start<B: SinkBackend + Send>(
        bus: &Bus,
        backend: B,
        config: SinkConfig,
    ) -> Result<Sink, AdapterError> {
        config.validate()?;
        let shard_ids: Vec<u16> = match &config.shards {
            Some(list) => list.clone(),
            None => (0..bus.shards())
                .map(|s| u16::try_from(s).expect("shard ids fit u16"))
                .collect(),
        };
        let mut sorted = shard_ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != shard_ids.len() {
            return Err(AdapterError::fatal(
                "sink",
                "sink config field `shards`: a shard is listed twice",
            ));
        }
        std::fs::create_dir_all(&config.checkpoint_dir).map_err(|e| {
            AdapterError::fatal(
                "sink",
                format!(
                    "sink config field `checkpoint_dir`: cannot create {}: {e}",
                    config.checkpoint_dir.display()
                ),
            )
        })?;
        let path = Checkpoint::path(&config.checkpoint_dir, &config.name);
        let destination = backend.destination();
        let checkpoint = match Checkpoint::load(&path)? {
            Some(cp) => {
                cp.check(&path, backend.backend(), &destination)?;
                cp
            }
            None => Checkpoint::new(backend.backend(), &destination),
        };
        let engine_err = |e: net_engine::Error| AdapterError::fatal("sink", e.to_string());
        let mut tasks = Vec::with_capacity(shard_ids.len());
        let mut shards = Vec::with_capacity(shard_ids.len());
        let mut holds = Vec::with_capacity(shard_ids.len());
        for (index, &shard) in shard_ids.iter().enumerate() {
            let id = ShardId(shard);
            let from = checkpoint.positions.get(&shard).copied().unwrap_or(0);
            let reader = bus.shard_reader(id).map_err(engine_err)?;
            let view = reader.view().clone();
            let feed = bus
                .batch_feed(id, &format!("sink:{}", config.name), config.feed_bytes)
                .map_err(engine_err)?;
            holds.push(match config.retention {
                RetentionPolicy::Block => {
                    Some(bus.hold_retention(id, Seq(from)).map_err(engine_err)?)
                }
                RetentionPolicy::Skip => None,
            });
            let counters = ShardCounters::default();
            counters.confirmed_end.store(from, Ordering::Relaxed);
            shards.push((shard, view, counters));
            tasks.push(ShardTask {
                shard,
                index,
                feed,
                reader,
                confirmed: from,
                filled: from,
                batch: OutBatch::new(shard),
                checkpoint_floor: from,
            });
        }
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            backend: backend.backend(),
            stop: AtomicBool::new(false),
            health_errors: AtomicU64::new(0),
            status: Mutex::new(SinkStatus::Running),
            last_error: Mutex::new(None),
            error_log: net_engine::RateLimit::per_second(1),
            shards,
            holds,
        });
        tracing::info!(
            sink = %shared.name,
            backend = shared.backend,
            shards = shared.shards.len(),
            "sink started"
        );
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("net-sink-{}", config.name))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        thread_shared.fail(AdapterError::fatal(
                            "sink",
                            format!("cannot start the sink's tokio runtime: {e}"),
                        ));
                        return;
                    }
                };
                let driver = Driver {
                    shared: thread_shared,
                    config,
                    path,
                    checkpoint: RefCell::new(checkpoint),
                };
                runtime.block_on(driver.run(backend, tasks));
            })
            .map_err(|e| {
                AdapterError::fatal("sink", format!("cannot spawn the sink thread: {e}"))
            })?;
        Ok(Sink {
            shared,
            thread: Some(thread),
        })
    }

    /// The sink's figures now.
    pub fn stats(&self) -> SinkStats {
        let s = &self.shared;
        SinkStats {
            name: s.name.clone(),
            backend: s.backend,
            status: s.status.lock().expect("sink status").clone(),
            last_error: s.last_error.lock().expect("sink error").clone(),
            health_errors: s.health_errors.load(Ordering::Relaxed),
            shards: s
                .shards
                .iter()
                .map(|(shard, view, c)| {
                    let confirmed_end = c.confirmed_end.load(Ordering::Acquire);
                    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    SinkShardStats {
                        shard: *shard,
                        confirmed_end,
                        lag: view.visible_end().saturating_sub(confirmed_end),
                        written: load(&c.written),
                        batches: load(&c.batches),
                        from_feed: load(&c.from_feed),
                        from_log: load(&c.from_log),
                        retries: load(&c.retries),
                        transient_errors: load(&c.transient_errors),
                        fatal_errors: load(&c.fatal_errors),
                        already_held: load(&c.already_held),
                        resent: load(&c.resent),
                        skipped: load(&c.skipped),
                    }
                })
                .collect(),
        }
    }

    /// Waits until every shard's backend confirmed the events stored on it when this was
    /// called. Returns the sink's fatal error if it failed, and a transient error naming the
    /// shards behind if `timeout` passed first.
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<(), AdapterError> {
        let targets: Vec<u64> = self
            .shared
            .shards
            .iter()
            .map(|(_, view, _)| view.visible_end())
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.shared.failure() {
                return Err(e);
            }
            let behind: Vec<String> = self
                .shared
                .shards
                .iter()
                .zip(&targets)
                .filter_map(|((shard, _, c), &target)| {
                    let at = c.confirmed_end.load(Ordering::Acquire);
                    (at < target).then(|| format!("shard {shard} at {at} of {target}"))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if self.shared.stopping() {
                return Err(AdapterError::fatal(
                    "sink",
                    "the sink stopped before it caught up",
                ));
            }
            if Instant::now() >= deadline {
                let last = self.shared.last_error.lock().expect("sink error").clone();
                return Err(AdapterError::transient(
                    "sink",
                    format!(
                        "not caught up within {timeout:?}: {}{}",
                        behind.join(", "),
                        last.map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the sink: each shard task finishes the write in flight (bounded by the backend's
    /// command timeout), the positions are checkpointed and the backend shut down; waits up to
    /// `deadline` for that. Events not yet confirmed stay in the log for the next start.
    pub fn stop(mut self, deadline: Duration) -> SinkStats {
        self.stop_inner(deadline);
        self.stats()
    }

    fn stop_inner(&mut self, deadline: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let end = Instant::now() + deadline;
        while !thread.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        if thread.is_finished() {
            if thread.join().is_err() {
                self.shared
                    .fail(AdapterError::fatal("sink", "the sink thread panicked"));
            }
        } else {
            tracing::warn!(
                sink = %self.shared.name,
                ?deadline,
                "sink thread did not stop in time; left running detached"
            );
            *self.shared.last_error.lock().expect("sink error") = Some(AdapterError::transient(
                "sink",
                format!("the sink thread did not stop within {deadline:?}; left running detached"),
            ));
        }
        let mut status = self.shared.status.lock().expect("sink status");
        if *status == SinkStatus::Running {
            tracing::info!(sink = %self.shared.name, "sink stopped");
            *status = SinkStatus::Stopped;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop_inner(Duration::from_secs(5));
    }
}

/// The sink thread's state.
struct Driver {
    shared: Arc<Shared>,
    config: SinkConfig,
    path: PathBuf,
    checkpoint: RefCell<Checkpoint>,
}

impl Driver {
    fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .config
            .backoff_min_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.config.backoff_max_ms);
        Duration::from_millis(ms)
    }

    /// Sleeps `d`, waking early when the sink stops; returns whether it is stopping.
    async fn pause(&self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        while !self.shared.stopping() {
            let now = tokio::time::Instant::now();
            if now >= end {
                return false;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(20))).await;
        }
        true
    }

    async fn run<B: SinkBackend>(self, mut backend: B, mut tasks: Vec<ShardTask>) {
        // Connect every shard's writer.
        let mut writers: Vec<B::Writer> = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let mut attempt = 0;
            while writers.len() <= task.index && !self.shared.stopping() {
                match backend.writer(task.shard).await {
                    Ok(w) => writers.push(w),
                    Err(e) => {
                        let c = &self.shared.shards[task.index].2;
                        self.shared.note(c, &e);
                        if !e.is_transient() {
                            self.shared.fail(e);
                            break;
                        }
                        self.pause(self.backoff(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        }
        if !self.shared.stopping() {
            let me = &self;
            let shard_loops = futures_util::future::join_all(
                tasks
                    .iter_mut()
                    .zip(writers.iter_mut())
                    .map(|(t, w)| me.shard_loop(t, w)),
            );
            let upkeep = self.upkeep(&mut backend);
            futures_util::future::join(shard_loops, upkeep).await;
        }
        self.store_checkpoint();
        // Writers hold connections of the backend: drop them before shutting it down.
        drop(writers);
        backend.shutdown().await;
    }

    /// Checkpoints and health checks until the sink stops.
    async fn upkeep<B: SinkBackend>(&self, backend: &mut B) {
        let every = Duration::from_millis(self.config.checkpoint_interval_ms);
        let health_every = Duration::from_millis(self.config.health_interval_ms);
        let mut last_health = tokio::time::Instant::now();
        while !self.pause(every).await {
            self.store_checkpoint();
            if last_health.elapsed() >= health_every {
                last_health = tokio::time::Instant::now();
                if let Err(e) = backend.health().await {
                    self.shared.health_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.shared.error_log.check_now() {
                        tracing::warn!(
                            sink = %self.shared.name,
                            backend = self.shared.backend,
                            error = %e,
                            suppressed,
                            "sink health check failed"
                        );
                    }
                    *self.shared.last_error.lock().expect("sink error") = Some(e);
                }
            }
        }
    }

    fn store_checkpoint(&self) {
        let mut cp = self.checkpoint.borrow_mut();
        let mut changed = false;
        for (shard, _, c) in &self.shared.shards {
            let at = c.confirmed_end.load(Ordering::Acquire);
            if cp.positions.get(shard) != Some(&at) {
                cp.positions.insert(*shard, at);
                changed = true;
            }
        }
        if changed {
            if let Err(e) = cp.store(&self.path) {
                // The backend still reports what it holds at the next start; a checkpoint
                // that cannot be written is a fatal condition of the host, said once.
                self.shared.fail(e);
            }
        }
    }

    async fn shard_loop<W: ShardWriter>(&self, t: &mut ShardTask, writer: &mut W) {
        let c = &self.shared.shards[t.index].2;
        // Resume after the later of the checkpoint and what the backend holds.
        let mut attempt = 0;
        loop {
            if self.shared.stopping() {
                return;
            }
            match writer.last_held().await {
                Ok(held) => {
                    let held_end = held.map_or(0, |s| s.saturating_add(1));
                    // A backend whose last event is below what it confirmed lost its tail (a
                    // server that acknowledged writes it had not persisted, then died): resend
                    // from there. One that holds nothing (a deleted stream) resumes after the
                    // checkpoint.
                    let resume = match held {
                        Some(_) if held_end < t.checkpoint_floor => {
                            self.report_lost_tail(t.shard, c, held_end, t.checkpoint_floor);
                            held_end
                        }
                        _ => held_end.max(t.checkpoint_floor),
                    };
                    t.confirmed = resume;
                    t.filled = resume;
                    self.confirm(t, c, resume);
                    break;
                }
                Err(e) => {
                    self.shared.note(c, &e);
                    if !e.is_transient() {
                        self.shared.fail(e);
                        return;
                    }
                    if self.pause(self.backoff(attempt)).await {
                        return;
                    }
                    attempt += 1;
                }
            }
        }
        let idle = Duration::from_millis(self.config.idle_ms);
        while !self.shared.stopping() {
            self.fill(t, c);
            if t.batch.is_empty() {
                if self.pause(idle).await {
                    return;
                }
                continue;
            }
            if !self.deliver(t, c, writer).await {
                return;
            }
        }
    }

    /// Says that the backend lost events `held_end..confirmed` of `shard` after confirming
    /// them, and counts them as resent.
    fn report_lost_tail(&self, shard: u16, c: &ShardCounters, held_end: u64, confirmed: u64) {
        add(&c.resent, confirmed - held_end);
        let e = AdapterError::transient(
            self.shared.backend,
            format!(
                "shard {shard}: the backend's last event is {} but it had confirmed up to {confirmed}: \
                 it lost events {held_end}..{confirmed} (acknowledged before they were persisted?); \
                 sending them again from the log",
                held_end.saturating_sub(1)
            ),
        );
        self.shared.note(c, &e);
    }

    fn confirm(&self, t: &mut ShardTask, c: &ShardCounters, end: u64) {
        c.confirmed_end.store(end, Ordering::Release);
        if let Some(hold) = &self.shared.holds[t.index] {
            hold.set(end);
        }
    }

    /// Fills the batch after `t.filled`: from the feed while it continues the sequence, from
    /// the log when the feed skipped records or is empty.
    fn fill(&self, t: &mut ShardTask, c: &ShardCounters) {
        let (events_max, bytes_max) = (self.config.batch_events_max, self.config.batch_bytes_max);
        let mut gap = false;
        let batch = &mut t.batch;
        let filled = &mut t.filled;
        t.feed.drain(events_max, |r| {
            if r.seq < *filled {
                return true; // read from the log already
            }
            if r.seq > *filled {
                gap = true;
                return false;
            }
            if batch.len() >= events_max
                || (!batch.is_empty() && batch.payload_bytes() + r.payload.len() > bytes_max)
            {
                return false;
            }
            batch.push(r.seq, r.ts_ns, r.origin, r.payload);
            *filled += 1;
            true
        });

        let from_feed = t.batch.len() as u64;
        add(&c.from_feed, from_feed);
        if !t.batch.is_empty() && !gap {
            return;
        }
        if t.reader.view().visible_end() <= t.filled {
            return;
        }
        let room = events_max - t.batch.len();
        if room == 0 {
            return;
        }
        let read = match t.reader.read(t.filled, room, bytes_max) {
            Ok(r) => r,
            Err(e) => {
                let e = AdapterError::transient(
                    "sink",
                    format!("reading shard {}'s log at {}: {e}", t.shard, t.filled),
                );
                self.shared.note(c, &e);
                return;
            }
        };
        for r in &read.records {
            if r.seq > t.filled {
                // Removed by retention (or an accepted loss) before it was sent.
                let n = r.seq - t.filled;
                add(&c.skipped, n);
                let e = AdapterError::transient(
                    "sink",
                    format!(
                        "shard {}: events {}..{} were removed from the log before they were sent",
                        t.shard, t.filled, r.seq
                    ),
                );
                self.shared.note(c, &e);
            }
            t.batch.push(r.seq, r.ts_ns, r.origin, &r.payload);
            t.filled = r.seq + 1;
            add(&c.from_log, 1);
        }
        if read.records.is_empty() && read.next > t.filled {
            add(&c.skipped, read.next - t.filled);
            t.filled = read.next;
            // Nothing to write for the skipped range: it is confirmed as passed over.
            t.confirmed = t.filled;
            self.confirm(t, c, t.filled);
        }
    }

    /// Writes the batch until the backend confirmed it; `false` if the sink stops.
    async fn deliver<W: ShardWriter>(
        &self,
        t: &mut ShardTask,
        c: &ShardCounters,
        writer: &mut W,
    ) -> bool {
        let mut attempt = 0u32;
        loop {
            match writer.write(&t.batch).await {
                Ok(()) => break,
                Err(e) => {
                    self.shared.note(c, &e);
                    if !e.is_transient() {
                        self.shared.fail(e);
                        return false;
                    }
                }
            }
            // Retry: wait, then drop what the backend already holds.
            loop {
                if self.pause(self.backoff(attempt)).await {
                    return false;
                }
                attempt = attempt.saturating_add(1);
                match writer.last_held().await {
                    Ok(held) => {
                        if let Some(last) = held {
                            let held_end = last.saturating_add(1);
                            if held_end < t.confirmed {
                                // The backend lost events it had confirmed: start again
                                // from its end (read back from the log).
                                self.report_lost_tail(t.shard, c, held_end, t.confirmed);
                                t.batch.clear();
                                t.confirmed = held_end;
                                t.filled = held_end;
                                self.confirm(t, c, held_end);
                                return true;
                            }
                            if writer.holds_a_prefix() {
                                let before = t.batch.len();
                                t.batch.drop_below(held_end);
                                add(&c.already_held, (before - t.batch.len()) as u64);
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        self.shared.note(c, &e);
                        if !e.is_transient() {
                            self.shared.fail(e);
                            return false;
                        }
                    }
                }
            }
            add(&c.retries, 1);
            if t.batch.is_empty() {
                break;
            }
        }
        add(&c.written, t.batch.len() as u64);
        add(&c.batches, 1);
        t.confirmed = t.filled;
        let end = t.filled;
        self.confirm(t, c, end);
        t.batch.clear();
        true
    }
}

/// A backend a [`Sink`] writes to (Redis Streams, JetStream). Its futures run on the sink's own
/// thread, in a tokio current-thread runtime, so they need not be `Send`.
pub trait SinkBackend: 'static {
    /// Writes one shard's events; owned by that shard's task.
    type Writer: ShardWriter;

    /// `"redis"` or `"jetstream"`: recorded in the sink's checkpoint and its cursors.
    fn backend(&self) -> &'static str;

    /// Where the events go, as text (such as `redis://127.0.0.1:16379 net`), recorded in the
    /// checkpoint so that a checkpoint kept for another destination is refused.
    fn destination(&self) -> String;

    /// Connects a writer for `shard` (and creates what it writes to, if needed).
    fn writer(&mut self, shard: u16) -> impl Future<Output = Result<Self::Writer, AdapterError>>;

    /// Checks the backend answers, on a connection of its own, under the command timeout.
    fn health(&mut self) -> impl Future<Output = Result<(), AdapterError>>;

    /// Drops the connections (draining what is in flight where the client can); afterwards
    /// every writer refuses with a fatal error.
    fn shutdown(&mut self) -> impl Future<Output = ()>;
}

/// Writes one shard's events to the backend.
pub trait ShardWriter: 'static {
    /// The highest sequence number of this shard the backend already holds, if it can tell
    /// (Redis: the stream's last entry; JetStream: the subject's last message). Read under the
    /// command timeout. The sink calls it at start and before retrying a failed write, and
    /// drops what the backend already holds, so a write that landed before its answer was
    /// lost is not written twice.
    fn last_held(&mut self) -> impl Future<Output = Result<Option<u64>, AdapterError>>;

    /// Whether what the backend holds of a shard is always a prefix of its events, so that
    /// every event up to `last_held` is there (Redis: a pipeline is applied in order on one
    /// connection, and an entry id below the stream's top is refused). A backend that may hold
    /// a later event without an earlier one returns `false` (a NATS client that reconnects
    /// sends again the publishes it still had buffered, which can land after a gap): the sink
    /// then retries a failed batch whole and relies on the backend's own dedup.
    fn holds_a_prefix(&self) -> bool {
        true
    }

    /// Writes `batch` (pipelined: about one round trip for the batch). `Ok` once the backend
    /// confirmed every event; on an error some prefix may have been written.
    fn write(&mut self, batch: &OutBatch) -> impl Future<Output = Result<(), AdapterError>>;
}
