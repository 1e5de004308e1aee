//! Watches: a reader asks to be told about memory changes whose event falls in a range of
//! sequence numbers or of timestamps, and gets them through a bounded queue it drains on its
//! own thread.
//!
//! **Bounds are strict at both ends.** `WatchRange::Seq { after: Some(a), before: Some(b) }`
//! matches exactly the events with `a < seq < b`; `Time { after_ns, before_ns }` the same on
//! the event's timestamp. `None` leaves that end open. So a watch from "after the event I
//! already have" never repeats it, and `(a, a + 1)` matches nothing. A sequence number is the
//! event's number *in its shard*: a seq range applies to each shard's events (narrow it to one
//! shard with `shard`).
//!
//! **The applier never waits for a watcher.** Each change is offered with `try_send` to the
//! watcher's bounded queue (`capacity` notices). When the queue is full the change is dropped
//! and counted; the next notice the watcher receives is `Notice::Missed(n)`, placed in the
//! queue before any later change (or handed out by the receiver once its queue is empty), so a
//! watcher always learns it missed `n` changes, in the right place. A dropped `Watcher`
//! unregisters itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Which events a watch matches (strict bounds; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRange {
    /// Events with `after < seq < before` (each end open when `None`).
    Seq {
        after: Option<u64>,
        before: Option<u64>,
    },
    /// Events with `after_ns < ts_ns < before_ns` (each end open when `None`).
    Time {
        after_ns: Option<u64>,
        before_ns: Option<u64>,
    },
}

impl WatchRange {
    /// Every event.
    pub fn all() -> WatchRange {
        WatchRange::Seq {
            after: None,
            before: None,
        }
    }

    /// Whether an event with this sequence number and timestamp is inside (strictly).
    pub fn contains(&self, seq: u64, ts_ns: u64) -> bool {
        let (x, after, before) = match *self {
            WatchRange::Seq { after, before } => (seq, after, before),
            WatchRange::Time {
                after_ns,
                before_ns,
            } => (ts_ns, after_ns, before_ns),
        };
        after.is_none_or(|a| a < x) && before.is_none_or(|b| x < b)
    }
}

/// What a watch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSpec {
    /// The events it matches.
    pub range: WatchRange,
    /// Only this shard's events, or every shard's.
    pub shard: Option<u16>,
    /// Notices its queue holds before changes are dropped (and counted as missed). At least 1.
    pub capacity: usize,
}

impl WatchSpec {
    /// A watch over `range` on every shard with a queue of 1024 notices.
    pub fn new(range: WatchRange) -> WatchSpec {
        WatchSpec {
            range,
            shard: None,
            capacity: 1024,
        }
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Stored (created or replaced) at this version.
    Stored { version: u64 },
    /// Deleted (a tombstone at this version).
    Deleted { version: u64 },
    /// Pinned.
    Pinned,
    /// Unpinned.
    Unpinned,
    /// Its tags changed.
    Tagged,
}

/// One change to a memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The shard of the event that made it.
    pub shard: u16,
    /// That event's sequence number.
    pub seq: u64,
    /// That event's timestamp.
    pub ts_ns: u64,
    /// The memory.
    pub id: Arc<str>,
    /// What happened.
    pub kind: ChangeKind,
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A change inside the watch's range.
    Change(Change),
    /// This many changes were dropped here because the queue was full.
    Missed(u64),
}

/// One registered watch (shared by the appliers and its watcher).
#[derive(Debug)]
struct WatchInner {
    id: u64,
    spec: WatchSpec,
    tx: SyncSender<Notice>,
    /// Changes dropped since the last `Missed` notice went in.
    pending_missed: AtomicU64,
    missed_total: AtomicU64,
}

impl WatchInner {
    fn offer(&self, change: &Change) {
        // Dropped changes are reported before any later change goes in. Whoever swaps the
        // count out owns reporting it (the receiver does too, when its queue is empty).
        let pending = self.pending_missed.swap(0, Ordering::AcqRel);
        if pending > 0 {
            match self.tx.try_send(Notice::Missed(pending)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.pending_missed.fetch_add(pending + 1, Ordering::AcqRel);
                    self.missed_total.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        match self.tx.try_send(Notice::Change(change.clone())) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.pending_missed.fetch_add(1, Ordering::AcqRel);
                self.missed_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The receiver's side: changes dropped since the last report, once its queue is empty.
    fn take_missed(&self) -> Option<Notice> {
        match self.pending_missed.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(Notice::Missed(n)),
        }
    }
}

/// The watches of one memories fold (shared by its per-shard copies).
#[derive(Debug, Default)]
pub(crate) struct WatchHub {
    list: ArcSwap<Vec<Arc<WatchInner>>>,
    /// Whether any watch is registered: one relaxed load per change when none is.
    active: AtomicBool,
    next_id: AtomicU64,
    /// Serialises registration changes (never taken by appliers).
    edit: Mutex<()>,
}

impl WatchHub {
    /// Offers a change to every matching watch; never waits.
    pub(crate) fn publish(
        &self,
        change: impl FnOnce() -> Change,
        seq: u64,
        ts_ns: u64,
        shard: u16,
    ) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let list = self.list.load();
        let mut change_once: Option<Change> = None;
        let mut make = Some(change);
        for w in list.iter() {
            if w.spec.shard.is_some_and(|s| s != shard) || !w.spec.range.contains(seq, ts_ns) {
                continue;
            }
            if change_once.is_none() {
                change_once = make.take().map(|f| f());
            }
            if let Some(c) = &change_once {
                w.offer(c);
            }
        }
    }

    pub(crate) fn add(self: &Arc<Self>, spec: WatchSpec) -> Watcher {
        let (tx, rx) = sync_channel(spec.capacity.max(1));
        let inner = Arc::new(WatchInner {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            spec,
            tx,
            pending_missed: AtomicU64::new(0),
            missed_total: AtomicU64::new(0),
        });
        let _edit = self
            .edit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = (**self.list.load()).clone();
        list.push(inner.clone());
        self.active.store(true, Ordering::Release);
        self.list.store(Arc::new(list));
        Watcher {
            rx,
            inner,
            hub: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        let _edit = self
            .edit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list: Vec<_> = self
            .list
            .load()
            .iter()
            .filter(|w| w.id != id)
            .cloned()
            .collect();
        self.active.store(!list.is_empty(), Ordering::Release);
        self.list.store(Arc::new(list));
    }
}

/// The receiving end of a watch; drain it on your own thread. Dropping it ends the watch.
#[derive(Debug)]
pub struct Watcher {
    rx: Receiver<Notice>,
    inner: Arc<WatchInner>,
    hub: Arc<WatchHub>,
}

impl Watcher {
    /// The next notice, waiting up to `timeout`; `None` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Notice> {
        if let Some(n) = self.try_recv() {
            return Some(n);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(n) => Some(n),
            Err(_) => self.inner.take_missed(),
        }
    }

    /// The next notice if one is queued (or a `Missed` count owed once the queue is empty).
    pub fn try_recv(&self) -> Option<Notice> {
        match self.rx.try_recv() {
            Ok(n) => Some(n),
            Err(_) => self.inner.take_missed(),
        }
    }

    /// Changes dropped for this watcher so far (its queue was full).
    pub fn missed_total(&self) -> u64 {
        self.inner.missed_total.load(Ordering::Relaxed)
    }

    /// The watch's spec.
    pub fn spec(&self) -> &WatchSpec {
        &self.inner.spec
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.remove(self.inner.id);
    }
}
