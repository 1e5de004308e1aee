//! A shard: one thread, one executor, one RedEX log. It drains its lanes into batches, stamps
//! `(shard, seq, timestamp)`, appends each batch with one write per file, publishes the
//! `persisted` counter and watermark, and answers control messages between batches.
//!
//! Batching is adaptive: while a write is in flight the next batch fills; it is submitted when
//! the write completes and the batch is full, the lanes ran dry, or its oldest event waited
//! `linger_us`. A shard whose log fails keeps draining its lanes and counts what it cannot
//! store as dropped, so producers never wedge on a dead shard.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use net_storage::{Log, Push, Written};

use crate::clock::{TimestampGenerator, monotonic_ns, realtime_ns};
use crate::config::{FsyncPolicy, IdleConfig, IdleStrategy};
use crate::control::{Control, PollReply, ShardShared};
use crate::lane::LaneReader;

/// How often retention re-checks ages when no segment rolled.
const RETENTION_CHECK_NS: u64 = 1_000_000_000;
/// Latency histogram bounds: 1 ns to 100 s, 3 significant digits.
const LATENCY_NS_MAX: u64 = 100_000_000_000;

/// A flush barrier: lane heads at flush entry, and where to answer.
type FlushWaiter = (
    Vec<(u64, u64)>,
    std::sync::mpsc::SyncSender<Result<(), String>>,
);

pub(crate) struct ShardSettings {
    pub(crate) id: u16,
    pub(crate) batch_events_max: usize,
    pub(crate) batch_bytes_max: usize,
    pub(crate) linger_ns: u64,
    pub(crate) idle: IdleConfig,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) retention: net_storage::Retention,
}

pub(crate) struct Shard {
    s: ShardSettings,
    log: Log,
    shared: Arc<ShardShared>,
    lanes: Vec<LaneReader>,
    rr: usize,
    ts: TimestampGenerator,
    open_send_ns: Vec<u64>,
    inflight_send_ns: Vec<u64>,
    open_since_ns: u64,
    latency: Histogram<u64>,
    flushes: Vec<FlushWaiter>,
    paused: bool,
    stop_deadline_ns: Option<u64>,
    idle_since_ns: Option<u64>,
    failure: Option<String>,
    /// When the last fdatasync was submitted (monotonic ns).
    last_sync_ns: u64,
    /// A flush or `wait_durable` asked for a sync before the interval passed.
    sync_requested: bool,
    /// Segment count and time at the last retention sweep.
    retention_checked: (usize, u64),
}

impl Shard {
    pub(crate) fn new(
        s: ShardSettings,
        log: Log,
        last_ts_ns: u64,
        shared: Arc<ShardShared>,
    ) -> Shard {
        let events = s.batch_events_max;
        let c = &shared.counters;
        c.persisted_end
            .store(log.persisted_end(), Ordering::Release);
        c.durable_end.store(log.durable_end(), Ordering::Release);
        c.retained_first.store(log.first_seq(), Ordering::Release);
        Shard {
            s,
            log,
            shared,
            lanes: Vec::new(),
            rr: 0,
            ts: TimestampGenerator::after(last_ts_ns),
            open_send_ns: Vec::with_capacity(events),
            inflight_send_ns: Vec::with_capacity(events),
            open_since_ns: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("valid histogram bounds"),
            flushes: Vec::new(),
            paused: false,
            stop_deadline_ns: None,
            idle_since_ns: None,
            failure: None,
            last_sync_ns: 0,
            sync_requested: false,
            retention_checked: (0, 0),
        }
    }

    /// Runs until stopped; returns the log's close error, if any.
    pub(crate) fn run(mut self) -> Result<(), String> {
        loop {
            let mut busy = false;
            if self.shared.has_pending() {
                busy |= self.handle_control();
            }
            if let Some(deadline) = self.stop_deadline_ns
                && self.stop_reached(deadline)
            {
                break;
            }
            let drained = if self.paused { 0 } else { self.drain() };
            busy |= drained > 0;
            busy |= self.progress(drained == 0);
            if busy {
                self.idle_since_ns = None;
            } else {
                self.idle();
            }
        }
        self.finish()
    }

    /// Whether the shard may exit: everything drained, or the deadline passed.
    fn stop_reached(&mut self, deadline_ns: u64) -> bool {
        let drained = self.lanes.iter().all(LaneReader::is_empty)
            && self.log.open_events() == 0
            && !self.log.in_flight();
        drained || monotonic_ns() >= deadline_ns
    }

    fn handle_control(&mut self) -> bool {
        let mut any = false;
        while let Some(msg) = self.shared.take() {
            any = true;
            match msg {
                Control::AddLane(lane) => self.lanes.push(LaneReader::new(lane)),
                Control::Poll {
                    from,
                    limit,
                    bytes_max,
                    reply,
                } => {
                    let _ = reply.send(self.read(from, limit, bytes_max));
                }
                Control::Flush { heads, reply } => {
                    self.flushes.push((heads, reply));
                    self.sync_requested = true;
                }
                Control::SyncNow => self.sync_requested = true,
                Control::Latency { reply } => {
                    let _ = reply.send(self.latency.clone());
                    self.latency.reset();
                }
                Control::Pause(p) => self.paused = p,
                Control::InjectPanic => panic!("injected panic in shard {}", self.s.id),
                Control::Stop { deadline_ns } => {
                    self.stop_deadline_ns = Some(deadline_ns);
                    self.paused = false;
                }
            }
        }
        self.resolve_flushes();
        any
    }

    fn read(&mut self, from: u64, limit: usize, bytes_max: usize) -> PollReply {
        let first_seq = self.log.first_seq();
        let mut records = Vec::new();
        let mut next = from.max(first_seq);
        let mut bytes = 0usize;
        while records.len() < limit && bytes < bytes_max {
            match self
                .log
                .read(next, limit - records.len(), bytes_max - bytes)
            {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    next = batch.last().map_or(next, |r| r.seq + 1);
                    bytes += batch.iter().map(|r| r.payload.len() + 32).sum::<usize>();
                    records.extend(batch);
                }
                Err(e) => {
                    return PollReply {
                        records,
                        first_seq,
                        error: Some(e.to_string()),
                    };
                }
            }
        }
        PollReply {
            records,
            first_seq,
            error: None,
        }
    }

    /// Moves records from the lanes into the open batch. Returns how many.
    fn drain(&mut self) -> usize {
        if self.lanes.is_empty() {
            return 0;
        }
        self.ts.tick(realtime_ns());
        let now_ns = monotonic_ns();
        let bytes_max = u64::try_from(self.s.batch_bytes_max).unwrap_or(u64::MAX);
        let n = self.lanes.len();
        let mut total = 0;
        for k in 0..n {
            let i = (self.rr + k) % n;
            let room_events = self.s.batch_events_max - self.log.open_events();
            if room_events == 0 {
                break;
            }
            if self.log.open_events() == 0 {
                self.open_since_ns = now_ns;
            }
            let Shard {
                log,
                lanes,
                ts,
                open_send_ns,
                failure,
                ..
            } = self;
            let (mut full, mut lost, mut refused) = (false, 0usize, 0u64);
            let got = lanes[i].drain(room_events, bytes_max, |send_ns, payload| {
                if failure.is_some() {
                    lost += 1;
                    return true;
                }
                match log.push(ts.stamp(), payload) {
                    Ok(Push::Staged(_)) => {
                        open_send_ns.push(send_ns);
                        true
                    }
                    Ok(Push::Full) => {
                        full = true;
                        false
                    }
                    // A payload the log cannot store is that event's problem, not the shard's
                    // (`send` refuses them; this is defence in depth): drop it, keep going.
                    Err(net_storage::StorageError::Invalid { .. }) => {
                        refused += 1;
                        true
                    }
                    Err(e) => {
                        *failure = Some(e.to_string());
                        lost += 1;
                        true
                    }
                }
            });
            total += got;
            if refused > 0 {
                self.shared.counters.add_dropped(refused);
            }
            if self.failure.is_some() {
                self.fail_batch(lost);
            } else if full {
                self.make_room();
            }
        }
        self.rr = self.rr.wrapping_add(1);
        total
    }

    /// Counts what a failed log cannot take as dropped: the staged batch and `lost` events
    /// consumed from lanes after the failure.
    fn fail_batch(&mut self, lost: usize) {
        let staged = self.log.discard_open();
        self.open_send_ns.clear();
        self.shared.counters.add_dropped((staged + lost) as u64);
        self.mark_failed();
    }

    fn mark_failed(&mut self) {
        if self.shared.counters.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let reason = self
            .failure
            .clone()
            .or_else(|| self.log.poisoned().map(str::to_string));
        let reason = reason.unwrap_or_else(|| "unknown failure".into());
        eprintln!("net: shard {} failed: {reason}", self.s.id);
        *self.shared.counters.error.lock().expect("shard error") = Some(reason);
    }

    /// The batch is full: finish the write in flight and submit the open batch.
    fn make_room(&mut self) {
        if self.log.in_flight() {
            self.complete(true);
        }
        self.submit();
    }

    /// Reaps the in-flight write and submits the open batch when it is due.
    fn progress(&mut self, lanes_dry: bool) -> bool {
        let mut any = false;
        if self.log.in_flight() {
            any |= self.complete(false);
        }
        if !self.log.in_flight() && self.log.open_events() > 0 {
            let full = self.log.open_events() >= self.s.batch_events_max;
            let lingered = monotonic_ns().saturating_sub(self.open_since_ns) >= self.s.linger_ns;
            if full || lanes_dry || lingered || self.stop_deadline_ns.is_some() {
                self.submit();
                any = true;
            }
        }
        if !self.log.in_flight() && self.log.open_events() == 0 && self.sync_due() {
            any = true;
            self.last_sync_ns = monotonic_ns();
            self.sync_requested = false;
            if let Err(e) = self.log.sync() {
                self.failure = Some(e.to_string());
                self.fail_batch(0);
            }
        }
        if !self.flushes.is_empty() {
            self.resolve_flushes();
        }
        self.sweep_retention();
        any
    }

    /// Applies retention after a segment rolled, and once a second for `max_age_ms`.
    fn sweep_retention(&mut self) {
        if !self.s.retention.is_limited() || self.failure.is_some() {
            return;
        }
        let now = monotonic_ns();
        let (segments, at) = self.retention_checked;
        if self.log.segments() == segments && now.saturating_sub(at) < RETENTION_CHECK_NS {
            return;
        }
        match self.log.enforce_retention(&self.s.retention, realtime_ns()) {
            Ok(swept) if swept.segments > 0 => {
                let c = &self.shared.counters;
                c.retained_first
                    .store(self.log.first_seq(), Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => eprintln!("net: shard {}: retention sweep failed: {e}", self.s.id),
        }
        self.retention_checked = (self.log.segments(), now);
    }

    /// Under `interval_ms`: written events wait for a sync and the interval passed (or a
    /// flush asked for one).
    fn sync_due(&self) -> bool {
        let FsyncPolicy::IntervalMs(ms) = self.s.fsync else {
            return false;
        };
        self.failure.is_none()
            && self.log.durable_end() < self.log.persisted_end()
            && self.interval_sync_due(ms)
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
        self.s.fsync == FsyncPolicy::Never || self.log.durable_end() == self.log.persisted_end()
    }

    fn submit(&mut self) {
        if self.failure.is_some() || self.log.open_events() == 0 {
            return;
        }
        let sync = self.sync_with_batch();
        if sync {
            self.last_sync_ns = monotonic_ns();
            self.sync_requested = false;
        }
        if let Err(e) = self.log.submit(sync) {
            self.failure = Some(e.to_string());
            self.fail_batch(0);
            return;
        }
        std::mem::swap(&mut self.open_send_ns, &mut self.inflight_send_ns);
        for lane in &mut self.lanes {
            lane.inflight_pos = lane.pos();
        }
    }

    /// Reaps the write in flight. Returns whether it completed.
    fn complete(&mut self, wait: bool) -> bool {
        match self.log.complete(wait) {
            Ok(Some(w)) => {
                self.on_written(w);
                true
            }
            Ok(None) => false,
            Err(e) => {
                let lost = self.inflight_send_ns.len() as u64;
                self.inflight_send_ns.clear();
                self.shared.counters.add_dropped(lost);
                self.failure = Some(e.to_string());
                self.fail_batch(0);
                true
            }
        }
    }

    fn on_written(&mut self, w: Written) {
        let n = w.end_seq - w.first_seq;
        debug_assert_eq!(n, self.inflight_send_ns.len() as u64);
        let now = monotonic_ns();
        for &sent in &self.inflight_send_ns {
            let _ = self
                .latency
                .record(now.saturating_sub(sent).clamp(1, LATENCY_NS_MAX));
        }
        self.inflight_send_ns.clear();
        let c = &self.shared.counters;
        c.persisted_end.store(w.end_seq, Ordering::Release);
        c.durable_end.store(w.durable_end, Ordering::Release);
        if n > 0 {
            c.batches
                .store(c.batches.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            c.add_persisted(n);
            for lane in &mut self.lanes {
                lane.persisted_pos = lane.inflight_pos;
            }
        }
        if self.written_is_durable() {
            for lane in &mut self.lanes {
                lane.publish_durable(lane.persisted_pos);
            }
        }
    }

    fn resolve_flushes(&mut self) {
        if !self.log.in_flight() && self.log.open_events() == 0 {
            // Nothing staged or in flight: everything handed over is persisted, including
            // positions skipped over by drop_oldest.
            let durable = self.written_is_durable();
            for lane in &mut self.lanes {
                lane.persisted_pos = lane.pos();
                if durable {
                    lane.publish_durable(lane.persisted_pos);
                }
            }
        }
        let failed = self.failure.clone();
        let lanes = &self.lanes;
        self.flushes.retain(|(heads, reply)| {
            if let Some(reason) = &failed {
                let _ = reply.send(Err(reason.clone()));
                return false;
            }
            let done = heads.iter().all(|&(id, head)| {
                lanes
                    .iter()
                    .find(|l| l.lane.id == id)
                    .is_none_or(|l| l.durable_pos() >= head)
            });
            if done {
                let _ = reply.send(Ok(()));
            }
            !done
        });
    }

    fn idle(&mut self) {
        // Lanes of dropped producers go once drained and durable; their rings are freed.
        self.lanes.retain(|l| !l.retirable());
        let now = monotonic_ns();
        let since = *self.idle_since_ns.get_or_insert(now);
        match self.s.idle.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            IdleStrategy::Park if now - since < self.s.idle.spin_us * 1000 => {
                std::hint::spin_loop()
            }
            IdleStrategy::Park => self.park(),
        }
    }

    fn park(&mut self) {
        if self.log.in_flight() {
            self.complete(true);
            return;
        }
        let signal = &self.shared.signal;
        signal.prepare_park();
        let work = self.shared.has_pending()
            || (!self.paused && self.lanes.iter().any(|l| l.lane.has_unclaimed()));
        if work {
            signal.unpark();
        } else {
            signal.park(self.park_us());
        }
    }

    /// How long to park: at most `park_max_us`, and no later than a pending interval sync.
    fn park_us(&self) -> u64 {
        let max = self.s.idle.park_max_us;
        match self.s.fsync {
            FsyncPolicy::IntervalMs(ms) if self.log.durable_end() < self.log.persisted_end() => {
                let due = self.last_sync_ns.saturating_add(ms * 1_000_000);
                max.min(due.saturating_sub(monotonic_ns()) / 1000 + 1)
            }
            _ => max,
        }
    }

    /// Completes or discards what is pending and closes the log.
    fn finish(mut self) -> Result<(), String> {
        if self.log.in_flight() {
            self.complete(true);
        }
        let drained = self.lanes.iter().all(LaneReader::is_empty);
        if drained && self.failure.is_none() && self.log.open_events() > 0 {
            self.submit();
            self.complete(true);
        }
        // Past the deadline: staged events are abandoned; the bus counts them as dropped.
        self.log.discard_open();
        self.open_send_ns.clear();
        self.resolve_flushes();
        for (_, reply) in self.flushes.drain(..) {
            let _ = reply.send(Err("the shard stopped before the flush completed".into()));
        }
        let result = match self.failure.take() {
            Some(f) => Err(f),
            None => self.log.close().map(|_| ()).map_err(|e| e.to_string()),
        };
        self.shared.counters.stopped.store(true, Ordering::Release);
        result
    }
}
