//! Running a fold on one shard: inline on the shard thread while it keeps up, from the log on
//! the fold's own thread when it does not, and publishing immutable versions for readers.
//!
//! **Who applies.** The fold's working state lives in a `Core` behind a mutex. The shard
//! thread only ever *tries* the lock (`try_lock`, never waits): when it gets it and the batch
//! continues exactly where the fold stopped, it applies the batch inline (the records are the
//! bytes just written, borrowed) within a time budget per batch. It refuses the batch —
//! returns `false`, which the bus records as the consumer's lag — when the fold's thread holds
//! the core, when the fold is behind (an earlier batch was refused, so this one does not
//! continue where the fold stopped), or when the budget ran out mid-batch. Each refusal wakes
//! the fold's thread, which reads the log from where the fold stopped, applies, and releases
//! the core between reads; once it reaches the log's end the next batch continues where the
//! fold stopped and the shard applies inline again. So a fold slower than ingest lags (in
//! `stats()` and in the bus's consumer stats) and never stalls the shard, and a fold that keeps
//! up costs the shard no copy, no allocation per event and no cross-thread hand-off.
//!
//! **What readers see.** After each run of applied events the applier publishes a version:
//! the state as `FoldState::publish` hands it out (a clone by default) and the sequence number it was folded to (`end`, one past the last
//! event applied or deliberately skipped), swapped in with one `ArcSwap` store; then the
//! plain `folded_end` watermark, then a wake-up for waiters. A reader loads a version and
//! holds an immutable state with the `end` it belongs to; snapshots are written from such a
//! version, so a snapshot's sequence number and state always belong together.
//!
//! **Failures.** Under `stop` an event the fold refuses halts the fold: the version published
//! ends just below it, the status records it, and the fold applies nothing more (so the
//! watermark never passes an event whose change did not land). Under `skip` it is counted and
//! passed over. A panic in the fold is caught on whichever thread applied it: the fold stops
//! with the panic's message as its failure, the state it was changing is discarded (readers
//! keep the last version published), and the shard goes on ingesting (the consumer only
//! refuses batches from then on).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use net_engine::{AppendedBatch, BatchConsumer, EventId, Origin, Reader, Seq, ShardId};

use crate::config::ErrorPolicy;
use crate::error::{CortexError, FoldFailure};
use crate::event::FoldEvent;
use crate::fold::{Fold, FoldState};
use net_engine::Notify as Signal;

/// How often the inline path looks at the clock (every this many events).
const BUDGET_CHECK_EVERY: u32 = 16;
/// The shortest and longest pause of the inline path after a batch ran out of budget.
const INLINE_PAUSE_MIN: Duration = Duration::from_millis(1);
const INLINE_PAUSE_MAX: Duration = Duration::from_millis(100);
/// Bytes per catch-up read of the log.
const CATCHUP_READ_BYTES: usize = 16 << 20;

/// A fold's state as published at some point: immutable, shared with readers.
#[derive(Debug)]
pub(crate) struct Version<S> {
    state: S,
    end: u64,
}

/// A published version of one shard's fold state (cheap to clone; never changes).
#[derive(Debug)]
pub struct FoldView<S> {
    version: Arc<Version<S>>,
}

impl<S> Clone for FoldView<S> {
    fn clone(&self) -> Self {
        FoldView {
            version: self.version.clone(),
        }
    }
}

impl<S> FoldView<S> {
    /// The state.
    pub fn state(&self) -> &S {
        &self.version.state
    }

    /// One past the last event folded into this state (applied, or skipped under `skip`).
    pub fn folded_end(&self) -> u64 {
        self.version.end
    }

    /// The last event folded into this state, if any.
    pub fn folded_through_seq(&self) -> Option<u64> {
        self.version.end.checked_sub(1)
    }
}

/// Where a shard's fold stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldStatus {
    /// Folding.
    Running,
    /// Halted under `stop` at the failed event.
    Stopped(FoldFailure),
    /// The fold panicked at this event; the message is the panic's.
    Panicked(FoldFailure),
    /// The cortex was shut down or dropped.
    Closed,
}

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const PANICKED: u8 = 2;
const CLOSED: u8 = 3;

/// Counters of one shard's fold; one writer at a time (whoever holds the core).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) log_gaps: AtomicU64,
    pub(crate) inline_batches: AtomicU64,
    pub(crate) inline_events: AtomicU64,
    pub(crate) refused_batches: AtomicU64,
    pub(crate) catchup_events: AtomicU64,
    pub(crate) apply_ns: AtomicU64,
    pub(crate) versions: AtomicU64,
    pub(crate) snapshots_written: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// What readers and the fold thread share about one shard's fold.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) shard: ShardId,
    published: ArcSwap<Version<S>>,
    folded_end: AtomicU64,
    /// Where the fold's working state is (ahead of `folded_end` until the next publication):
    /// where a catch-up read starts.
    applied_end: AtomicU64,
    pub(crate) signal: Signal,
    status: AtomicU8,
    failure: ArcSwapOption<FoldFailure>,
    pub(crate) last_skipped: ArcSwapOption<FoldFailure>,
    /// The fold thread should read the log for this shard.
    pub(crate) wake: AtomicBool,
    /// Events were folded but not published yet (the fold thread publishes them once due if
    /// no batch end does).
    pub(crate) publish_pending: AtomicBool,
    /// A cadence snapshot is due (set by the applier, cleared by the fold thread).
    pub(crate) snapshot_due: AtomicBool,
    pub(crate) last_snapshot_end: AtomicU64,
    /// The `end` of the last snapshot attempted (the cadence counts from it).
    pub(crate) snapshot_attempt_end: AtomicU64,
    pub(crate) snapshot_error: ArcSwapOption<String>,
    pub(crate) log_error: ArcSwapOption<String>,
    pub(crate) counters: Counters,
}

impl<S> Shared<S> {
    pub(crate) fn view(&self) -> FoldView<S> {
        FoldView {
            version: self.published.load_full(),
        }
    }

    pub(crate) fn folded_end(&self) -> u64 {
        self.folded_end.load(Ordering::Acquire)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.status.load(Ordering::Acquire) == RUNNING
    }

    pub(crate) fn status(&self) -> FoldStatus {
        let failure = || {
            self.failure
                .load_full()
                .map(|f| (*f).clone())
                .expect("a failure is stored before the status says so")
        };
        match self.status.load(Ordering::Acquire) {
            RUNNING => FoldStatus::Running,
            STOPPED => FoldStatus::Stopped(failure()),
            PANICKED => FoldStatus::Panicked(failure()),
            _ => FoldStatus::Closed,
        }
    }

    pub(crate) fn failure(&self) -> Option<FoldFailure> {
        self.failure.load_full().map(|f| (*f).clone())
    }

    /// Stops the fold for good (first reason wins) and wakes waiters.
    fn halt(&self, status: u8, failure: Option<FoldFailure>) {
        if let Some(f) = failure
            && self.status.load(Ordering::Acquire) == RUNNING
        {
            tracing::error!(panicked = status == PANICKED, failure = %f, "fold stopped");
            self.failure.store(Some(Arc::new(f)));
        }
        let _ = self
            .status
            .compare_exchange(RUNNING, status, Ordering::AcqRel, Ordering::Acquire);
        self.signal.notify();
    }

    pub(crate) fn close(&self) {
        self.halt(CLOSED, None);
    }

    /// Waits until the event `seq` is folded (true), the fold stops short of it, or the
    /// timeout passes (false).
    pub(crate) fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.signal.epoch();
            if self.folded_end() > seq {
                return true;
            }
            if !self.is_running() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.signal.wait(seen, deadline - now);
        }
    }
}

/// Wakes the fold's thread; set once the thread exists.
#[derive(Debug, Default)]
pub(crate) struct ThreadControl {
    pub(crate) thread: OnceLock<Thread>,
    pub(crate) stop: AtomicBool,
}

impl ThreadControl {
    pub(crate) fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// The fold's working state: the fold, its state, and the next event to fold.
struct Core<F: Fold> {
    fold: F,
    state: F::State,
    next: u64,
    /// The `end` of the last version published, and when it was.
    published_end: u64,
    published_at: Instant,
    /// Replaying at start: nobody can read the versions yet, so only the end is published
    /// (every version published costs the writes after it their path copies).
    quiet: bool,
    /// After a batch ran out of its inline budget (the fold is slower than ingest), the shard
    /// leaves batches to the fold thread until then, and the pause doubles while batches keep
    /// running out (`INLINE_PAUSE_MIN` to `INLINE_PAUSE_MAX`); a batch folded whole inline
    /// resets it. So a fold that cannot keep up takes little of the shard's time.
    inline_paused_until: Option<Instant>,
    inline_pause: Duration,
}

/// How a runner applies: the same for every shard of a cortex.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) policy: ErrorPolicy,
    /// Whether batches are applied on the shard thread.
    pub(crate) inline: bool,
    /// Inline time per batch.
    pub(crate) budget: Duration,
    /// Least time between published versions while events keep coming.
    pub(crate) publish_interval: Duration,
    /// Events between cadence snapshots (0: none).
    pub(crate) snapshot_every: u64,
}

/// One shard's fold (see the module docs).
pub(crate) struct Runner<F: Fold> {
    core: Mutex<Core<F>>,
    pub(crate) shared: Arc<Shared<F::State>>,
    settings: Settings,
    control: Arc<ThreadControl>,
    /// Serialises this shard's snapshot writes (the fold thread's and callers').
    pub(crate) snapshot_lock: Mutex<()>,
}

impl<F: Fold> std::fmt::Debug for Runner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("shard", &self.shared.shard)
            .field("folded_end", &self.shared.folded_end())
            .finish()
    }
}

/// How a run of records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every record was folded.
    Done,
    /// The inline budget ran out; the rest is left for the fold thread.
    Budget,
    /// The fold halted (a failure under `stop`, or a panic).
    Halted,
}

/// One record, whichever path it came by.
#[derive(Clone, Copy)]
struct Rec<'a> {
    seq: u64,
    ts_ns: u64,
    origin: Option<Origin>,
    payload: &'a [u8],
}

impl<F: Fold> Runner<F> {
    pub(crate) fn new(
        shard: ShardId,
        fold: F,
        state: F::State,
        end: u64,
        settings: Settings,
        control: Arc<ThreadControl>,
    ) -> Runner<F> {
        let mut state = state;
        let version = Arc::new(Version {
            state: state.publish(),
            end,
        });
        let shared = Arc::new(Shared {
            shard,
            published: ArcSwap::new(version),
            folded_end: AtomicU64::new(end),
            applied_end: AtomicU64::new(end),
            signal: Signal::default(),
            status: AtomicU8::new(RUNNING),
            failure: ArcSwapOption::empty(),
            last_skipped: ArcSwapOption::empty(),
            wake: AtomicBool::new(false),
            publish_pending: AtomicBool::new(false),
            snapshot_due: AtomicBool::new(false),
            last_snapshot_end: AtomicU64::new(end),
            snapshot_attempt_end: AtomicU64::new(end),
            snapshot_error: ArcSwapOption::empty(),
            log_error: ArcSwapOption::empty(),
            counters: Counters::default(),
        });
        Runner {
            core: Mutex::new(Core {
                fold,
                state,
                next: end,
                published_end: end,
                published_at: Instant::now(),
                quiet: false,
                inline_paused_until: None,
                inline_pause: Duration::ZERO,
            }),
            shared,
            settings,
            control,
            snapshot_lock: Mutex::new(()),
        }
    }

    /// Asks the fold thread to read the log for this shard.
    fn wake_thread(&self) {
        self.shared.wake.store(true, Ordering::Release);
        self.control.wake();
    }

    /// Applies `records` in order from `core.next` on, publishing what was applied.
    fn apply<'a>(
        &self,
        core: &mut Core<F>,
        records: impl Iterator<Item = Rec<'a>>,
        deadline: Option<Instant>,
        events_counter: &AtomicU64,
    ) -> (Outcome, u64) {
        let shard = self.shared.shard;
        let start_next = core.next;
        let mut applied = 0u64;
        let mut skipped = 0u64;
        let mut gaps = 0u64;
        let mut current = core.next;
        let started = Instant::now();
        let run = catch_unwind(AssertUnwindSafe(|| {
            let mut until_check = BUDGET_CHECK_EVERY;
            for r in records {
                if r.seq < core.next {
                    continue; // folded already (by the other path)
                }
                if r.seq > core.next {
                    // The log passed over numbers with no record (retention, accepted loss).
                    gaps += r.seq - core.next;
                    core.next = r.seq;
                }
                current = r.seq;
                let event = FoldEvent::from_parts(shard, r.seq, r.ts_ns, r.origin, r.payload);
                match core.fold.apply(&mut core.state, &event) {
                    Ok(()) => applied += 1,
                    Err(e) => match self.settings.policy {
                        ErrorPolicy::Skip => {
                            skipped += 1;
                            self.shared.last_skipped.store(Some(Arc::new(FoldFailure {
                                event: event.id,
                                message: e.message().to_owned(),
                            })));
                        }
                        ErrorPolicy::Stop => {
                            return Err(FoldFailure {
                                event: event.id,
                                message: e.message().to_owned(),
                            });
                        }
                    },
                }
                core.next = r.seq + 1;
                if let Some(deadline) = deadline {
                    until_check -= 1;
                    if until_check == 0 {
                        until_check = BUDGET_CHECK_EVERY;
                        if Instant::now() >= deadline {
                            return Ok(Outcome::Budget);
                        }
                    }
                }
            }
            Ok(Outcome::Done)
        }));
        let c = &self.shared.counters;
        Counters::add(
            &c.apply_ns,
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        match run {
            Ok(result) => {
                Counters::add(&c.applied, applied);
                Counters::add(&c.skipped, skipped);
                Counters::add(&c.log_gaps, gaps);
                // Counted before publishing, so a reader that saw the watermark sees them.
                Counters::add(events_counter, applied + skipped);
                self.shared.applied_end.store(core.next, Ordering::Release);
                let outcome = match result {
                    Ok(o) => o,
                    Err(failure) => {
                        // The state is as it was before the failed event (the fold's contract),
                        // so what was applied before it is published, and the fold halts.
                        self.publish(core);
                        self.shared.halt(STOPPED, Some(failure));
                        return (Outcome::Halted, core.next - start_next);
                    }
                };
                self.publish_if_due(core);
                (outcome, core.next - start_next)
            }
            Err(panic) => {
                let message = panic_message(&*panic);
                self.shared.halt(
                    PANICKED,
                    Some(FoldFailure {
                        event: EventId {
                            shard,
                            seq: Seq(current),
                        },
                        message: format!("the fold panicked: {message}"),
                    }),
                );
                (Outcome::Halted, 0)
            }
        }
    }

    /// Publishes the core's state as the version readers see, then the watermark.
    fn publish(&self, core: &mut Core<F>) {
        self.shared.published.store(Arc::new(Version {
            state: core.state.publish(),
            end: core.next,
        }));
        self.shared.folded_end.store(core.next, Ordering::Release);
        core.published_end = core.next;
        core.published_at = Instant::now();
        self.shared.publish_pending.store(false, Ordering::Release);
        Counters::add(&self.shared.counters.versions, 1);
        self.shared.signal.notify();
        if self.settings.snapshot_every > 0
            && core
                .next
                .saturating_sub(self.shared.snapshot_attempt_end.load(Ordering::Acquire))
                >= self.settings.snapshot_every
            && !self.shared.snapshot_due.swap(true, Ordering::AcqRel)
        {
            self.control.wake();
        }
    }

    /// Publishes what was folded if the last version is at least `publish_interval` old;
    /// otherwise leaves it to the next batch end or, if none comes, to the fold thread.
    fn publish_if_due(&self, core: &mut Core<F>) {
        if core.next == core.published_end || core.quiet {
            return;
        }
        if core.published_at.elapsed() >= self.settings.publish_interval {
            self.publish(core);
        } else if !self.shared.publish_pending.swap(true, Ordering::AcqRel) {
            self.control.wake();
        }
    }

    /// The fold thread's part of publication: publishes a pending version once it is due and
    /// the shard is not applying. Returns how long until it should look again, if something is
    /// still pending.
    pub(crate) fn publish_pending(&self) -> Option<Duration> {
        if !self.shared.publish_pending.load(Ordering::Acquire) {
            return None;
        }
        let Ok(mut core) = self.core.try_lock() else {
            // The shard (or a catch-up) is applying; it publishes when due. Look again.
            return Some(self.settings.publish_interval);
        };
        if core.next == core.published_end {
            self.shared.publish_pending.store(false, Ordering::Release);
            return None;
        }
        let age = core.published_at.elapsed();
        if age >= self.settings.publish_interval {
            self.publish(&mut core);
            None
        } else {
            Some(self.settings.publish_interval - age)
        }
    }

    /// The shard thread's path (see the module docs); never waits.
    fn on_batch(&self, batch: &AppendedBatch<'_>) -> bool {
        if !self.shared.is_running() {
            return false;
        }
        if !self.settings.inline {
            self.wake_thread();
            return false;
        }
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::WouldBlock) => {
                Counters::add(&self.shared.counters.refused_batches, 1);
                self.wake_thread();
                return false;
            }
            // Never poisoned (panics are caught inside `apply`); if it were, fold nothing more.
            Err(TryLockError::Poisoned(_)) => return false,
        };
        if core.next >= batch.end_seq {
            return true; // the fold thread folded it already
        }
        let now = Instant::now();
        // Behind (an earlier batch was refused), or pausing after a batch ran out of budget.
        if core.next < batch.first_seq || core.inline_paused_until.is_some_and(|until| now < until)
        {
            drop(core);
            Counters::add(&self.shared.counters.refused_batches, 1);
            self.wake_thread();
            return false;
        }
        let deadline = now + self.settings.budget;
        let records = batch.records().map(|r| Rec {
            seq: r.seq,
            ts_ns: r.ts_ns,
            origin: r.origin,
            payload: r.payload,
        });
        let c = &self.shared.counters;
        let (outcome, _) = self.apply(&mut core, records, Some(deadline), &c.inline_events);
        if outcome == Outcome::Budget {
            core.inline_pause = (core.inline_pause * 2).clamp(INLINE_PAUSE_MIN, INLINE_PAUSE_MAX);
            core.inline_paused_until = Some(Instant::now() + core.inline_pause);
        } else {
            core.inline_pause = Duration::ZERO;
            core.inline_paused_until = None;
        }
        drop(core);
        match outcome {
            Outcome::Done => {
                Counters::add(&c.inline_batches, 1);
                true
            }
            Outcome::Budget => {
                Counters::add(&c.refused_batches, 1);
                self.wake_thread();
                false
            }
            Outcome::Halted => false,
        }
    }

    /// Reads the log from where the fold stopped and applies it, until the log's visible end,
    /// a halt, or a read error. Runs on the fold thread (and on the starting thread for the
    /// restore replay). Returns the events folded.
    pub(crate) fn catch_up(
        &self,
        reader: &mut Reader,
        read_events: usize,
    ) -> Result<u64, CortexError> {
        self.catch_up_from_log(reader, read_events)
    }

    /// The replay at start (before any reader can see a version): as `catch_up`, publishing
    /// once at the end.
    pub(crate) fn replay(
        &self,
        reader: &mut Reader,
        read_events: usize,
    ) -> Result<u64, CortexError> {
        self.set_quiet(true);
        let result = self.catch_up_from_log(reader, read_events);
        self.set_quiet(false);
        result
    }

    fn set_quiet(&self, quiet: bool) {
        if let Ok(mut core) = self.core.lock() {
            core.quiet = quiet;
            if !quiet && core.next != core.published_end && self.shared.is_running() {
                self.publish(&mut core);
            }
        }
    }

    fn catch_up_from_log(
        &self,
        reader: &mut Reader,
        read_events: usize,
    ) -> Result<u64, CortexError> {
        let mut folded = 0;
        loop {
            if !self.shared.is_running() {
                return Ok(folded);
            }
            let from = self.shared.applied_end.load(Ordering::Acquire);
            let batch = reader
                .read(from, read_events, CATCHUP_READ_BYTES)
                .map_err(|source| CortexError::Log {
                    shard: self.shared.shard.0,
                    source,
                })?;
            let Ok(mut core) = self.core.lock() else {
                return Ok(folded);
            };
            if batch.records.is_empty() {
                if batch.next > core.next {
                    // Numbers with no record at the end of what is visible (removed, lost).
                    Counters::add(&self.shared.counters.log_gaps, batch.next - core.next);
                    core.next = batch.next;
                    self.shared.applied_end.store(core.next, Ordering::Release);
                    self.publish(&mut core);
                    continue;
                }
                // Caught up: what was folded is published now, not at the next batch.
                if core.next != core.published_end {
                    self.publish(&mut core);
                }
                return Ok(folded);
            }
            let records = batch.records.iter().map(|r| Rec {
                seq: r.seq,
                ts_ns: r.ts_ns,
                origin: r.origin,
                payload: &r.payload,
            });
            let c = &self.shared.counters;
            let (outcome, n) = self.apply(&mut core, records, None, &c.catchup_events);
            drop(core);
            folded += n;
            if outcome == Outcome::Halted {
                return Ok(folded);
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// The batch consumer registered on a shard: hands batches to its runner.
pub(crate) struct ShardConsumer<F: Fold> {
    pub(crate) runner: Arc<Runner<F>>,
}

impl<F: Fold> BatchConsumer for ShardConsumer<F> {
    fn on_batch(&mut self, _shard: ShardId, batch: &AppendedBatch<'_>) -> bool {
        self.runner.on_batch(batch)
    }
}
