//! The handle of one fold registered on a bus: start (restore from the newest good snapshot
//! and replay the log after it), read published state, wait for a sequence number, take
//! snapshots, read stats, shut down.
//!
//! One fold thread per cortex serves all of its shards: it catches a shard up from the log
//! when the shard refused a batch, writes cadence snapshots, and every `TICK` checks that no
//! shard's log got ahead of its fold unnoticed (batches that completed while the consumer was
//! being registered are never handed to it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_engine::{Bus, LogView, Reader, ShardId};

use crate::config::CortexConfig;
use crate::error::{CortexError, FoldFailure};
use crate::fold::Fold;
use crate::lock::DirLock;
use crate::runner::{FoldStatus, FoldView, Runner, Settings, ShardConsumer, ThreadControl};
use crate::snapshot::{self, RejectedSnapshot, SnapshotInfo};

/// How often the fold thread wakes on its own to look for a shard that got ahead.
const TICK: Duration = Duration::from_millis(100);

/// What starting found and did for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The shard.
    pub shard: u16,
    /// The snapshot restored (its file and the sequence number it was folded to), if one
    /// checked out.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Snapshots passed over because they did not check out, newest first, with the reason.
    /// Non-empty means restore fell back (to an older snapshot, or to a full replay).
    pub rejected: Vec<RejectedSnapshot>,
    /// Whether the state was rebuilt from the start of the log (no snapshot checked out).
    pub full_replay: bool,
    /// Events replayed from the log at start.
    pub replayed_events: u64,
    /// Time taken: loading the snapshot and replaying.
    pub elapsed: Duration,
}

impl RestoreReport {
    /// Whether a snapshot was passed over (damaged, truncated, another fold's).
    pub fn fell_back(&self) -> bool {
        !self.rejected.is_empty()
    }
}

/// One shard's fold figures.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldShardStats {
    /// The shard.
    pub shard: u16,
    /// One past the last event folded (applied or skipped); the published state's `end`.
    pub folded_end: u64,
    /// The last event folded, if any.
    pub folded_through_seq: Option<u64>,
    /// The shard's log end (visible to readers) when the stats were read.
    pub log_end: u64,
    /// Events in the log not folded yet.
    pub lag: u64,
    /// Running, stopped at a failure, panicked (with the message), closed.
    pub status: FoldStatus,
    /// Events applied.
    pub applied: u64,
    /// Events skipped under `skip`.
    pub skipped: u64,
    /// The last event skipped, with the fold's error.
    pub last_skipped: Option<FoldFailure>,
    /// Sequence numbers the log passed over without records (retention, accepted loss).
    pub log_gaps: u64,
    /// Batches folded inline on the shard thread, and their events.
    pub inline_batches: u64,
    pub inline_events: u64,
    /// Batches the fold refused (behind, busy, over budget).
    pub refused_batches: u64,
    /// Events folded from the log on the fold's thread (restore replay included).
    pub catchup_events: u64,
    /// Time spent applying events, ns (both paths).
    pub apply_ns: u64,
    /// Versions published.
    pub versions_published: u64,
    /// Snapshots written, and the sequence number of the last.
    pub snapshots_written: u64,
    pub last_snapshot_end: u64,
    /// The last snapshot write that failed, if any.
    pub snapshot_error: Option<String>,
    /// The last read of the log that failed, if any (the fold thread retries).
    pub log_error: Option<String>,
    /// What start found (snapshot used, snapshots rejected, replay).
    pub restore: RestoreReport,
}

/// A cortex's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldStats {
    /// The fold's name.
    pub name: String,
    /// Per shard.
    pub shards: Vec<FoldShardStats>,
}

/// What [`Cortex::shutdown`] did.
#[derive(Debug)]
pub struct CortexShutdown {
    /// Per shard, one past the last event folded.
    pub folded_end: Vec<u64>,
    /// Whether every shard had folded its whole log (as it was when shutdown began) before
    /// the deadline.
    pub caught_up: bool,
    /// Snapshots written (under `on_shutdown`).
    pub snapshots: Vec<SnapshotInfo>,
    /// Snapshot writes that failed.
    pub snapshot_errors: Vec<String>,
}

/// A fold running on every shard of a bus (see the crate docs).
pub struct Cortex<F: Fold> {
    config: CortexConfig,
    runners: Vec<Arc<Runner<F>>>,
    views: Vec<LogView>,
    restore: Vec<RestoreReport>,
    control: Arc<ThreadControl>,
    thread: Option<JoinHandle<()>>,
    /// Held while the cortex lives (one owner per snapshot directory).
    _lock: Option<DirLock>,
}

impl<F: Fold> std::fmt::Debug for Cortex<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cortex")
            .field("name", &self.config.name)
            .field("shards", &self.runners.len())
            .finish()
    }
}

impl<F: Fold> Cortex<F> {
    /// Starts `fold` on every shard of `bus`: per shard, loads the newest snapshot that checks
    /// out (falling back to older ones, then to the start of the log, and recording why in
    /// [`Cortex::restore_reports`]), replays the log after it on this thread, then registers
    /// the fold as a batch consumer and starts the fold thread.
    pub fn start(bus: &Bus, fold: F, config: CortexConfig) -> Result<Cortex<F>, CortexError> {
        config.validate()?;
        let lock = match &config.snapshot {
            Some(s) => Some(DirLock::take(&s.dir)?),
            None => None,
        };
        let control = Arc::new(ThreadControl::default());
        let shards = bus.shards();
        let mut runners = Vec::with_capacity(shards);
        let mut readers = Vec::with_capacity(shards);
        let mut views = Vec::with_capacity(shards);
        let mut restore = Vec::with_capacity(shards);
        let budget = Duration::from_micros(config.inline_budget_us);
        let every = config.snapshot.as_ref().map_or(0, |s| s.every_events);
        for index in 0..shards {
            let shard = ShardId::from_index(index);
            let started = Instant::now();
            let mut reader = bus.shard_reader(shard)?;
            let log_end = reader.view().visible_end();
            let (state, end, used, rejected) = match &config.snapshot {
                Some(s) => {
                    let dir = snapshot::shard_dir(&s.dir, shard.0);
                    let loaded = snapshot::load::<F::State>(&dir, &config.name, shard.0, log_end)?;
                    match loaded.found {
                        Some((end, state, path)) => {
                            (state, end, Some((path, end)), loaded.rejected)
                        }
                        None => (F::State::default(), 0, None, loaded.rejected),
                    }
                }
                None => (F::State::default(), 0, None, Vec::new()),
            };
            let runner = Arc::new(Runner::new(
                shard,
                fold.clone(),
                state,
                end,
                Settings {
                    policy: config.on_error,
                    inline: config.inline,
                    budget,
                    publish_interval: Duration::from_micros(config.publish_interval_us),
                    snapshot_every: every,
                },
                control.clone(),
            ));
            let replayed = runner.replay(&mut reader, config.catchup_read_events)?;
            views.push(reader.view().clone());
            readers.push(reader);
            restore.push(RestoreReport {
                shard: shard.0,
                full_replay: used.is_none(),
                snapshot: used,
                rejected,
                replayed_events: replayed,
                elapsed: started.elapsed(),
            });
            runners.push(runner);
        }
        let thread = {
            let runners = runners.clone();
            let control = control.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name(format!("cortex-{}", config.name))
                .spawn(move || fold_thread(runners, readers, control, config))
                .map_err(CortexError::Thread)?
        };
        let _ = control.thread.set(thread.thread().clone());
        let cortex = Cortex {
            config,
            runners,
            views,
            restore,
            control,
            thread: Some(thread),
            _lock: lock,
        };
        for runner in &cortex.runners {
            let consumer = ShardConsumer {
                runner: runner.clone(),
            };
            bus.add_batch_consumer(runner.shared.shard, &cortex.config.name, Box::new(consumer))?;
            // Batches completed while the consumer was being registered are never handed to
            // it: the fold thread reads them from the log.
            runner.shared.wake.store(true, Ordering::Release);
        }
        cortex.control.wake();
        Ok(cortex)
    }

    /// The fold's configuration.
    pub fn config(&self) -> &CortexConfig {
        &self.config
    }

    /// Shards (the bus's).
    pub fn shards(&self) -> usize {
        self.runners.len()
    }

    fn runner(&self, shard: ShardId) -> Result<&Arc<Runner<F>>, CortexError> {
        self.runners
            .get(usize::from(shard.0))
            .ok_or(CortexError::NoShard {
                shard: shard.0,
                shards: self.runners.len(),
            })
    }

    /// The latest published version of `shard`'s state (immutable; hold it as long as needed).
    pub fn view(&self, shard: ShardId) -> Result<FoldView<F::State>, CortexError> {
        Ok(self.runner(shard)?.shared.view())
    }

    /// The latest published version of every shard's state, in shard order.
    pub fn views(&self) -> Vec<FoldView<F::State>> {
        self.runners.iter().map(|r| r.shared.view()).collect()
    }

    /// The last event of `shard` folded (applied, or skipped under `skip`); `None` before the
    /// first (or for a shard that does not exist). Never passes an event whose change did not
    /// land: under `stop` it stays below the failed event for good.
    pub fn folded_through_seq(&self, shard: ShardId) -> Option<u64> {
        self.runner(shard).ok()?.shared.folded_end().checked_sub(1)
    }

    /// Waits until event `seq` of `shard` is folded and its effect is published: true then.
    /// False when the timeout passes first, when the fold stopped (failure under `stop`,
    /// panic, shutdown) below `seq` — it returns at once then — or for a shard that does not
    /// exist.
    pub fn wait_for_seq(&self, shard: ShardId, seq: u64, timeout: Duration) -> bool {
        match self.runner(shard) {
            Ok(r) => r.shared.wait_for_seq(seq, timeout),
            Err(_) => false,
        }
    }

    /// Waits until every shard folded its log as far as it was visible when this was called;
    /// false on timeout or when a fold stopped short.
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let targets: Vec<u64> = self.views.iter().map(LogView::visible_end).collect();
        for (runner, end) in self.runners.iter().zip(targets) {
            if end == 0 {
                continue;
            }
            runner.shared.wake.store(true, Ordering::Release);
            self.control.wake();
            let left = deadline.saturating_duration_since(Instant::now());
            if !runner.shared.wait_for_seq(end - 1, left) {
                return false;
            }
        }
        true
    }

    /// Why `shard`'s fold stopped, if it did (a failure under `stop`, or a panic).
    pub fn failure(&self, shard: ShardId) -> Option<FoldFailure> {
        self.runner(shard).ok()?.shared.failure()
    }

    /// What start found and did, per shard.
    pub fn restore_reports(&self) -> &[RestoreReport] {
        &self.restore
    }

    /// Writes a snapshot of every shard's latest published version (state and the sequence
    /// number it was folded to, from one version).
    pub fn snapshot(&self) -> Result<Vec<SnapshotInfo>, CortexError> {
        self.runners
            .iter()
            .map(|r| write_snapshot(r, &self.config))
            .collect()
    }

    /// The fold's figures, per shard.
    pub fn stats(&self) -> FoldStats {
        let shards = self
            .runners
            .iter()
            .zip(&self.views)
            .zip(&self.restore)
            .map(|((r, view), restore)| {
                let s = &r.shared;
                let c = &s.counters;
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let folded_end = s.folded_end();
                let log_end = view.visible_end();
                FoldShardStats {
                    shard: s.shard.0,
                    folded_end,
                    folded_through_seq: folded_end.checked_sub(1),
                    log_end,
                    lag: log_end.saturating_sub(folded_end),
                    status: s.status(),
                    applied: get(&c.applied),
                    skipped: get(&c.skipped),
                    last_skipped: s.last_skipped.load_full().map(|f| (*f).clone()),
                    log_gaps: get(&c.log_gaps),
                    inline_batches: get(&c.inline_batches),
                    inline_events: get(&c.inline_events),
                    refused_batches: get(&c.refused_batches),
                    catchup_events: get(&c.catchup_events),
                    apply_ns: get(&c.apply_ns),
                    versions_published: get(&c.versions),
                    snapshots_written: get(&c.snapshots_written),
                    last_snapshot_end: s.last_snapshot_end.load(Ordering::Acquire),
                    snapshot_error: s.snapshot_error.load_full().map(|e| (*e).clone()),
                    log_error: s.log_error.load_full().map(|e| (*e).clone()),
                    restore: restore.clone(),
                }
            })
            .collect();
        FoldStats {
            name: self.config.name.clone(),
            shards,
        }
    }

    /// Folds what the log holds now (up to `timeout`), stops the fold thread, closes the fold
    /// (its consumers refuse every batch from now on), and writes a snapshot of every shard
    /// under `snapshot.on_shutdown`. Call it once the bus takes no more events (after
    /// `flush`) to snapshot everything.
    pub fn shutdown(mut self, timeout: Duration) -> CortexShutdown {
        let caught_up = self.wait_caught_up(timeout);
        self.stop_thread();
        for r in &self.runners {
            r.shared.close();
        }
        let mut snapshots = Vec::new();
        let mut snapshot_errors = Vec::new();
        if self.config.snapshot.as_ref().is_some_and(|s| s.on_shutdown) {
            for r in &self.runners {
                match write_snapshot(r, &self.config) {
                    Ok(info) => snapshots.push(info),
                    Err(e) => snapshot_errors.push(format!("shard {}: {e}", r.shared.shard)),
                }
            }
        }
        CortexShutdown {
            folded_end: self.runners.iter().map(|r| r.shared.folded_end()).collect(),
            caught_up,
            snapshots,
            snapshot_errors,
        }
    }

    fn stop_thread(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<F: Fold> Drop for Cortex<F> {
    fn drop(&mut self) {
        self.stop_thread();
        for r in &self.runners {
            r.shared.close();
        }
    }
}

/// Writes a snapshot of `runner`'s latest published version.
fn write_snapshot<F: Fold>(
    runner: &Runner<F>,
    config: &CortexConfig,
) -> Result<SnapshotInfo, CortexError> {
    let Some(s) = &config.snapshot else {
        return Err(CortexError::NoSnapshotDir);
    };
    let shard = runner.shared.shard.0;
    let _one_writer = runner
        .snapshot_lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let view = runner.shared.view();
    // The cadence counts from this attempt, whether it succeeds or not: a failing disk is
    // tried again after another `every_events`, not at every batch.
    runner
        .shared
        .snapshot_attempt_end
        .fetch_max(view.folded_end(), Ordering::AcqRel);
    let bytes = snapshot::encode(&config.name, shard, view.folded_end(), view.state());
    let dir = snapshot::shard_dir(&s.dir, shard);
    let result = snapshot::write(&dir, view.folded_end(), &bytes, s.keep);
    match &result {
        Ok(_) => {
            let shared = &runner.shared;
            shared
                .last_snapshot_end
                .fetch_max(view.folded_end(), Ordering::AcqRel);
            shared
                .counters
                .snapshots_written
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => runner
            .shared
            .snapshot_error
            .store(Some(Arc::new(e.to_string()))),
    }
    let path = result?;
    Ok(SnapshotInfo {
        shard,
        path,
        end: view.folded_end(),
        bytes: bytes.len() as u64,
    })
}

/// The fold thread (see the module docs).
fn fold_thread<F: Fold>(
    runners: Vec<Arc<Runner<F>>>,
    mut readers: Vec<Reader>,
    control: Arc<ThreadControl>,
    config: CortexConfig,
) {
    lower_priority(config.fold_thread_nice);
    let mut last_tick = Instant::now();
    while !control.stop.load(Ordering::Acquire) {
        let tick = last_tick.elapsed() >= TICK;
        if tick {
            last_tick = Instant::now();
        }
        for (runner, reader) in runners.iter().zip(readers.iter_mut()) {
            let shared = &runner.shared;
            let behind = tick && reader.view().visible_end() > shared.folded_end();
            if (shared.wake.swap(false, Ordering::AcqRel) || behind) && shared.is_running() {
                match runner.catch_up(reader, config.catchup_read_events) {
                    Ok(_) => {
                        shared.log_error.store(None);
                    }
                    Err(e) => {
                        // Retried at the next tick (the fold is still behind then).
                        shared.log_error.store(Some(Arc::new(e.to_string())));
                    }
                }
            }
            if shared.snapshot_due.load(Ordering::Acquire) {
                // A failed write is in the stats; the next publish asks again.
                let _ = write_snapshot(runner, &config);
                shared.snapshot_due.store(false, Ordering::Release);
            }
        }
        if control.stop.load(Ordering::Acquire) {
            break;
        }
        if runners
            .iter()
            .any(|r| r.shared.wake.load(Ordering::Acquire))
        {
            continue;
        }
        let mut sleep = TICK.saturating_sub(last_tick.elapsed());
        for runner in &runners {
            if let Some(due) = runner.publish_pending() {
                sleep = sleep.min(due);
            }
        }
        std::thread::park_timeout(sleep);
    }
}

/// Raises this thread's nice value by `by` (see `CortexConfig::fold_thread_nice`). Raising it
/// needs no privilege; if it fails anyway the thread runs at the process's priority, which is
/// only a matter of speed.
fn lower_priority(by: u8) {
    if by == 0 {
        return;
    }
    // SAFETY: gettid and getpriority/setpriority take plain integers and touch no memory of
    // ours; PRIO_PROCESS with a thread id applies to that thread on Linux.
    unsafe {
        let tid = libc::gettid();
        let id = libc::id_t::try_from(tid).unwrap_or(0);
        let now = libc::getpriority(libc::PRIO_PROCESS, id);
        let target = (now + libc::c_int::from(by)).min(19);
        libc::setpriority(libc::PRIO_PROCESS, id, target);
    }
}
