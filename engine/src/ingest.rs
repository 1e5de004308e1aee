//! The ingest pipeline of a shard, as one reactor component: lanes → batch → log.
//!
//! It drains the lanes round robin into the log's open batch, stamps each event with the
//! shard's timestamp (the log gives the sequence number; an origin lane's events are appended
//! with the origin their entry starts with), and submits the batch when it is
//! full, when the lanes ran dry, when its oldest event waited `linger_us`, or at shutdown —
//! as soon as the log can take it (one write in flight at a time, a sync overlapping the next
//! write). Completions publish the watermarks and counters, advance each lane's persisted and
//! durable positions, resolve flush barriers, and hand each completed batch to the shard's
//! batch consumers.
//!
//! A batch's lane positions are remembered per lane by batch number (at most [`STAGES`]
//! batches are between submission and completion), so a completion knows how far each lane
//! is persisted. A failed log keeps the shard draining its lanes, counting what it cannot
//! store as dropped, so producers never wedge on a dead log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use net_storage::record::split_origin;
use net_storage::{Log, Push, StorageError};

use crate::clock::{TimestampGenerator, monotonic_ns, realtime_ns};
use crate::config::FsyncPolicy;
use crate::consumer::Consumers;
use crate::control::ShardShared;
use crate::lane::{LaneKind, LaneReader};
use crate::reactor::{Component, Cx, Queue, Source};
use crate::stats::ShardFailure;

/// How often retention re-checks ages when no segment rolled.
const RETENTION_CHECK_NS: u64 = 1_000_000_000;
/// Latency histogram bounds: 1 ns to 100 s, 3 significant digits.
pub(crate) const LATENCY_NS_MAX: u64 = 100_000_000_000;
/// Batches between submission and completion at most (the log's stages), plus the open one.
const MARKS: usize = 8;

/// A flush barrier: lane heads at flush entry, and where to answer.
pub(crate) type FlushWaiter = (
    Vec<(u64, u64)>,
    std::sync::mpsc::SyncSender<Result<(), StorageError>>,
);

/// What the ingest pipeline is configured with.
#[derive(Debug, Clone)]
pub(crate) struct IngestSettings {
    pub(crate) id: u16,
    pub(crate) batch_events_max: usize,
    pub(crate) batch_bytes_max: usize,
    pub(crate) linger_ns: u64,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) retention: net_storage::Retention,
}

/// A lane and where each submitted batch left it.
#[derive(Debug)]
struct LaneState {
    reader: LaneReader,
    /// `(batch number, lane position)` of recent submissions, indexed by batch % MARKS.
    marks: [(u64, u64); MARKS],
}

impl Component for Ingest {
    fn source(&self) -> Source {
        Source::Log
    }

    fn work(&mut self, cx: &mut Cx<'_>) -> bool {
        self.step(&mut cx.io, cx.stopping)
    }

    fn complete(&mut self, cx: &mut Cx<'_>, tag: u64, res: i32) {
        self.on_completion(&mut cx.io, tag, res, cx.consumers, cx.mesh.as_deref_mut());
    }

    fn ready(&self) -> bool {
        self.has_work()
    }

    fn deadline_ns(&self) -> Option<u64> {
        self.next_deadline_ns()
    }

    fn completes_soon(&self) -> bool {
        self.log.write_in_flight()
    }
}

/// The lanes → batch → log component.
#[derive(Debug)]
pub(crate) struct Ingest {
    s: IngestSettings,
    log: Log,
    shared: Arc<ShardShared>,
    lanes: Vec<LaneState>,
    rr: usize,
    ts: TimestampGenerator,
    /// Send times of staged and in-flight events, in sequence order.
    send_ns: VecDeque<u64>,
    open_since_ns: u64,
    latency: Histogram<u64>,
    flushes: Vec<FlushWaiter>,
    paused: bool,
    /// When each recent batch was submitted (monotonic ns) and whether it carried an
    /// fdatasync, indexed by batch % MARKS: the write and sync latency histograms.
    submit_marks: [(u64, bool); MARKS],
    /// A stand-alone sync in flight: when it was submitted and the end it makes durable.
    sync_in_flight: Option<(u64, u64)>,
    /// Batches submitted, and batches completed.
    submitted: u64,
    completed: u64,
    failure: Option<StorageError>,
    /// When the last fdatasync was submitted (monotonic ns).
    last_sync_ns: u64,
    /// A flush or `wait_durable` asked for a sync before the interval passed.
    sync_requested: bool,
    /// Segment count and time at the last retention sweep.
    retention_checked: (usize, u64),
    /// Positions below which consumers let retention remove segments ([`crate::RetentionHold`]).
    retention_holds: Vec<Arc<AtomicU64>>,
    /// The log refused more records until I/O in flight completes (a full batch with a write
    /// in flight, or a roll waiting for the previous seal): lanes wait for a completion.
    blocked: bool,
}

impl Ingest {
    pub(crate) fn new(s: IngestSettings, log: Log, shared: Arc<ShardShared>) -> Ingest {
        let c = &shared.counters;
        c.persisted_end
            .store(log.persisted_end(), Ordering::Release);
        c.durable_end.store(log.durable_end(), Ordering::Release);
        c.retained_first.store(log.first_seq(), Ordering::Release);
        let events = s.batch_events_max;
        Ingest {
            ts: TimestampGenerator::after(log.last_ts_ns()),
            s,
            log,
            shared,
            lanes: Vec::new(),
            rr: 0,
            send_ns: VecDeque::with_capacity(events * (MARKS + 1)),
            open_since_ns: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("valid histogram bounds"),
            flushes: Vec::new(),
            paused: false,
            submit_marks: [(0, false); MARKS],
            sync_in_flight: None,
            submitted: 0,
            completed: 0,
            failure: None,
            last_sync_ns: 0,
            sync_requested: false,
            retention_holds: Vec::new(),
            retention_checked: (0, 0),
            blocked: false,
        }
    }

    pub(crate) fn add_lane(&mut self, lane: Arc<crate::lane::Lane>) {
        self.lanes.push(LaneState {
            reader: LaneReader::new(lane),
            marks: [(u64::MAX, 0); MARKS],
        });
    }

    pub(crate) fn add_flush(&mut self, waiter: FlushWaiter) {
        self.flushes.push(waiter);
        self.sync_requested = true;
    }

    pub(crate) fn request_sync(&mut self) {
        self.sync_requested = true;
    }

    pub(crate) fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Takes and resets the ingest-to-persisted latency histogram.
    pub(crate) fn take_latency(&mut self) -> Histogram<u64> {
        let h = self.latency.clone();
        self.latency.reset();
        h
    }

    /// Drains lanes and moves batches along; returns whether it made progress.
    fn step(&mut self, io: &mut Queue<'_>, stopping: bool) -> bool {
        let drained = if self.paused { 0 } else { self.drain(io) };
        let mut busy = drained > 0;
        busy |= self.submit_due(io, drained == 0 || stopping);
        busy |= self.sync_due(io);
        if !self.flushes.is_empty() {
            self.resolve_flushes();
        }
        self.sweep_retention(io);
        if !busy && !stopping && self.failure.is_none() {
            // Idle: write zeros ahead of the writer (see net_storage's `warm`).
            if let Err(e) = self.log.warm(io) {
                self.failure = Some(e);
                self.fail();
            }
        }
        busy
    }

    /// Whether there is work that needs no completion to proceed (checked before parking).
    fn has_work(&self) -> bool {
        let lanes = !self.paused
            && !self.blocked
            && self.lanes.iter().any(|l| l.reader.lane.has_unclaimed());
        lanes || (self.log.open_events() > 0 && self.log.can_submit())
    }

    /// The next time something is due without a completion (an interval sync), if any.
    fn next_deadline_ns(&self) -> Option<u64> {
        let interval = match self.s.fsync {
            FsyncPolicy::IntervalMs(ms) if self.log.durable_end() < self.log.written_end() => {
                Some(self.last_sync_ns.saturating_add(ms * 1_000_000))
            }
            _ => None,
        };
        let retention = self
            .s
            .retention
            .is_limited()
            .then(|| self.retention_checked.1 + RETENTION_CHECK_NS);
        interval.into_iter().chain(retention).min()
    }

    /// Whether the shard may exit: everything drained and written, or the deadline passed.
    pub(crate) fn stop_reached(&self, deadline_ns: u64) -> bool {
        let drained = self.lanes.iter().all(|l| l.reader.is_empty())
            && self.log.open_events() == 0
            && !self.log.in_flight();
        drained || monotonic_ns() >= deadline_ns
    }

    /// Whether any operation of the log is in flight.
    pub(crate) fn io_in_flight(&self) -> bool {
        self.log.in_flight()
    }

    /// Moves records from the lanes into the open batch. Returns how many.
    fn drain(&mut self, io: &mut Queue<'_>) -> usize {
        if self.lanes.is_empty() {
            return 0;
        }
        self.ts.tick(realtime_ns());
        let now_ns = monotonic_ns();
        let n = self.lanes.len();
        let mut total = 0;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let room = self.s.batch_events_max - self.log.open_events();
            if room == 0 && !self.submit_full(io) {
                break;
            }
            if self.log.open_events() == 0 {
                self.open_since_ns = now_ns;
            }
            let (got, full) = self.drain_lane(i);
            total += got;
            if full && !self.submit_full(io) {
                self.blocked = true;
                break;
            }
        }
        self.rr = self.rr.wrapping_add(1);
        total
    }

    /// Drains one lane into the open batch; returns (records taken, batch full).
    fn drain_lane(&mut self, i: usize) -> (usize, bool) {
        let bytes_max = u64::try_from(self.s.batch_bytes_max).unwrap_or(u64::MAX);
        let room = self.s.batch_events_max - self.log.open_events();
        let Ingest {
            log,
            lanes,
            ts,
            send_ns,
            failure,
            ..
        } = self;
        let kind = lanes[i].reader.lane.kind;
        let (mut full, mut lost, mut refused) = (false, 0u64, 0u64);
        let got = lanes[i].reader.drain(room, bytes_max, |sent, entry| {
            if failure.is_some() {
                lost += 1;
                return true;
            }
            let pushed = match kind {
                LaneKind::Plain => log.push(ts.stamp(), entry),
                LaneKind::Origin => match split_origin(entry) {
                    Some((origin, payload)) => log.push_with_origin(ts.stamp(), &origin, payload),
                    // Our writers encode the block; a malformed one is that event's problem
                    // (defence in depth, like an oversized payload below): drop it.
                    None => {
                        refused += 1;
                        return true;
                    }
                },
            };
            match pushed {
                Ok(Push::Staged(_)) => {
                    send_ns.push_back(sent);
                    true
                }
                Ok(Push::Full) => {
                    full = true;
                    false
                }
                // A payload the log cannot store is that event's problem, not the shard's
                // (`send` refuses them; this is defence in depth): drop it, keep going.
                Err(StorageError::Invalid { .. }) => {
                    refused += 1;
                    true
                }
                Err(e) => {
                    *failure = Some(e);
                    lost += 1;
                    true
                }
            }
        });
        if refused + lost > 0 {
            self.shared.counters.add_dropped(refused + lost);
        }
        if self.failure.is_some() {
            self.fail();
        }
        (got, full)
    }

    /// The open batch is full: submit it if the log can take it now.
    fn submit_full(&mut self, io: &mut Queue<'_>) -> bool {
        self.log.can_submit() && self.submit(io)
    }

    /// Submits the open batch when it is due and the log can take it.
    fn submit_due(&mut self, io: &mut Queue<'_>, lanes_dry: bool) -> bool {
        if self.failure.is_some() || self.log.open_events() == 0 || !self.log.can_submit() {
            return false;
        }
        let full = self.log.open_events() >= self.s.batch_events_max;
        let lingered = monotonic_ns().saturating_sub(self.open_since_ns) >= self.s.linger_ns;
        (full || lanes_dry || lingered) && self.submit(io)
    }

    fn submit(&mut self, io: &mut Queue<'_>) -> bool {
        let sync = self.sync_with_batch();
        match self.log.submit(io, sync) {
            Ok(false) => false,
            Ok(true) => {
                if sync {
                    self.last_sync_ns = monotonic_ns();
                    self.sync_requested = false;
                }
                let b = self.submitted;
                self.submitted += 1;
                let slot = usize::try_from(b % MARKS as u64).expect("below MARKS");
                self.submit_marks[slot] = (monotonic_ns(), sync);
                for l in &mut self.lanes {
                    l.marks[slot] = (b, l.reader.pos());
                }
                true
            }
            Err(e) => {
                self.failure = Some(e);
                self.fail();
                true
            }
        }
    }

    /// Under `interval_ms`, an idle log syncs what is written once the interval passed (or a
    /// flush asked).
    fn sync_due(&mut self, io: &mut Queue<'_>) -> bool {
        let FsyncPolicy::IntervalMs(ms) = self.s.fsync else {
            return false;
        };
        let due = self.failure.is_none()
            && self.log.open_events() == 0
            && self.log.durable_end() < self.log.written_end()
            && self.interval_sync_due(ms);
        if !due {
            return false;
        }
        match self.log.sync(io) {
            Ok(true) => {
                self.last_sync_ns = monotonic_ns();
                self.sync_in_flight = Some((self.last_sync_ns, self.log.written_end()));
                self.sync_requested = false;
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.failure = Some(e);
                self.fail();
                true
            }
        }
    }

    /// A flush asked for a sync, or `ms` passed since the last one.
    fn interval_sync_due(&self, ms: u64) -> bool {
        self.sync_requested || monotonic_ns().saturating_sub(self.last_sync_ns) >= ms * 1_000_000
    }

    /// Whether the next batch carries an fdatasync.
    fn sync_with_batch(&self) -> bool {
        match self.s.fsync {
            FsyncPolicy::Never => false,
            FsyncPolicy::EveryBatch => true,
            FsyncPolicy::IntervalMs(ms) => self.interval_sync_due(ms),
        }
    }

    /// Whether everything written counts as durable under the policy.
    fn written_is_durable(&self) -> bool {
        self.s.fsync == FsyncPolicy::Never || self.log.durable_end() >= self.log.persisted_end()
    }

    /// Handles one of the log's completions, then every batch it completed.
    fn on_completion(
        &mut self,
        io: &mut Queue<'_>,
        tag: u64,
        res: i32,
        consumers: &mut Consumers,
        mut mesh: Option<&mut crate::mesh_shard::Mesh>,
    ) {
        self.blocked = false;
        if let Err(e) = self.log.complete(io, tag, res)
            && self.failure.is_none()
        {
            self.failure = Some(e);
            self.fail();
        }
        let mut published = false;
        while let Some(c) = self.log.pop_completed() {
            self.on_completed(c.first_seq, c.end_seq);
            let batch = self.log.appended(&c);
            consumers.deliver(&batch);
            if let Some(m) = mesh.as_deref_mut() {
                m.on_batch(&batch);
            }
            published = true;
        }
        if published {
            self.shared.visible.notify();
        }
        let c = &self.shared.counters;
        c.durable_end
            .store(self.log.durable_end(), Ordering::Release);
        if let Some((at, end)) = self.sync_in_flight
            && self.log.durable_end() >= end
        {
            c.sync_us.record(monotonic_ns().saturating_sub(at) / 1_000);
            self.sync_in_flight = None;
        }
        if self.written_is_durable() {
            for l in &mut self.lanes {
                let pos = l.reader.persisted_pos;
                l.reader.publish_durable(pos);
            }
        }
        if !self.flushes.is_empty() {
            self.resolve_flushes();
        }
    }

    /// A batch completed: latency, counters, lane positions.
    fn on_completed(&mut self, first_seq: u64, end_seq: u64) {
        let n = end_seq - first_seq;
        let now = monotonic_ns();
        for _ in 0..n {
            if let Some(sent) = self.send_ns.pop_front() {
                let _ = self
                    .latency
                    .record(now.saturating_sub(sent).clamp(1, LATENCY_NS_MAX));
            }
        }
        let c = &self.shared.counters;
        c.persisted_end.store(end_seq, Ordering::Release);
        c.batches
            .store(c.batches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        c.add_persisted(n);
        let b = self.completed;
        self.completed += 1;
        let slot = usize::try_from(b % MARKS as u64).expect("below MARKS");
        let (submitted_ns, synced) = self.submit_marks[slot];
        let took_us = now.saturating_sub(submitted_ns) / 1_000;
        if synced {
            c.sync_us.record(took_us);
        } else {
            c.write_us.record(took_us);
        }
        c.batch_events.record(n);
        for l in &mut self.lanes {
            if l.marks[slot].0 == b {
                l.reader.persisted_pos = l.reader.persisted_pos.max(l.marks[slot].1);
            }
        }
    }

    /// Counts what a failed log cannot take as dropped (staged and in-flight events) and
    /// publishes the failure.
    fn fail(&mut self) {
        let staged = self.log.discard_open() as u64;
        let in_flight = self.log.next_seq() - self.log.persisted_end();
        self.send_ns.clear();
        self.shared.counters.add_dropped(staged + in_flight);
        let err = self.failure.clone().expect("failing with a failure");
        if self.shared.counters.set_failure(ShardFailure::Storage(err)) {
            tracing::error!(
                shard = self.s.id,
                error = %self.failure.as_ref().expect("set"),
                dropped = staged + in_flight,
                "shard failed: its log takes no more events"
            );
        }
    }

    fn resolve_flushes(&mut self) {
        if !self.log.batches_in_flight() && self.log.open_events() == 0 {
            // Nothing staged or in flight: everything handed over is persisted, including
            // positions skipped over by drop_oldest.
            let durable = self.written_is_durable();
            for l in &mut self.lanes {
                l.reader.persisted_pos = l.reader.pos();
                if durable {
                    let pos = l.reader.persisted_pos;
                    l.reader.publish_durable(pos);
                }
            }
        }
        let failed = self.failure.clone();
        let shard = self.s.id;
        let lanes = &self.lanes;
        self.flushes.retain(|(heads, reply)| {
            if let Some(first) = &failed {
                let _ = reply.send(Err(StorageError::Poisoned {
                    shard,
                    first: Box::new(first.clone()),
                }));
                return false;
            }
            let done = heads.iter().all(|&(id, head)| {
                lanes
                    .iter()
                    .find(|l| l.reader.lane.id == id)
                    .is_none_or(|l| l.reader.durable_pos() >= head)
            });
            if done {
                let _ = reply.send(Ok(()));
            }
            !done
        });
    }

    /// Applies retention after a segment rolled, and once a second for `max_age_ms`.
    fn sweep_retention(&mut self, io: &mut Queue<'_>) {
        if !self.s.retention.is_limited() || self.failure.is_some() {
            return;
        }
        let now = monotonic_ns();
        let (segments, at) = self.retention_checked;
        if self.log.segments() == segments && now.saturating_sub(at) < RETENTION_CHECK_NS {
            return;
        }
        // A hold whose handle was dropped is released.
        self.retention_holds.retain(|h| Arc::strong_count(h) > 1);
        let keep_from = self
            .retention_holds
            .iter()
            .map(|h| h.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        match self
            .log
            .retain_held(io, &self.s.retention, realtime_ns(), keep_from)
        {
            Ok(swept) if swept.segments > 0 => {
                let c = &self.shared.counters;
                c.retained_first
                    .store(self.log.first_seq(), Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(shard = self.s.id, error = %e, "retention sweep failed"),
        }
        self.retention_checked = (self.log.segments(), now);
    }

    /// Adds a retention hold (see [`crate::RetentionHold`]).
    pub(crate) fn add_retention_hold(&mut self, at: Arc<AtomicU64>) {
        self.retention_holds.push(at);
    }

    /// Lanes of dropped producers go once drained and durable; their rings are freed.
    pub(crate) fn retire_lanes(&mut self) {
        self.lanes.retain(|l| !l.reader.retirable());
    }

    /// Submits what is left if everything was drained (at shutdown, once the I/O in flight
    /// completed); returns whether it submitted.
    pub(crate) fn submit_rest(&mut self, io: &mut Queue<'_>) -> bool {
        let drained = self.lanes.iter().all(|l| l.reader.is_empty());
        drained && self.failure.is_none() && self.log.open_events() > 0 && self.submit(io)
    }

    /// Ends: staged events are abandoned (the bus counts them as dropped), waiting flushes are
    /// answered, and the log is closed. The caller waited for every operation in flight.
    pub(crate) fn finish(mut self) -> Result<(), StorageError> {
        self.log.discard_open();
        self.send_ns.clear();
        self.resolve_flushes();
        for (_, reply) in self.flushes.drain(..) {
            let _ = reply.send(Err(StorageError::Invalid {
                field: "flush",
                what: format!("shard {} stopped before the flush completed", self.s.id),
            }));
        }
        match self.failure.take() {
            Some(first) => Err(StorageError::Poisoned {
                shard: self.s.id,
                first: Box::new(first),
            }),
            None => self.log.close(),
        }
    }
}
