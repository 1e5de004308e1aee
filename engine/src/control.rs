//! Control-plane messages from the bus to a shard: lane registration, flush barriers, batch
//! consumers, latency snapshots, pause, stop. They travel through a mutex-protected queue (not
//! on the per-event path) and wake the shard through its doorbell.
//!
//! A shard that ends (or dies) closes its queue under the queue's lock and drops what is in
//! it: every reply channel of a pending request disconnects at once, and a message sent
//! afterwards is handed back to the sender, so no caller waits on a shard that can no longer
//! answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use crate::consumer::{BatchConsumer, ConsumerCounters};
use crate::lane::Lane;
use crate::stats::ShardCounters;
use crate::wake::ShardSignal;

/// Messages a shard handles between batches.
pub(crate) enum Control {
    AddLane(Arc<Lane>),
    AddConsumer(Box<dyn BatchConsumer>, Arc<ConsumerCounters>),
    /// Keep every segment holding a sequence number at or above the value (see
    /// [`crate::RetentionHold`]); released when the shard holds the last reference.
    HoldRetention(Arc<std::sync::atomic::AtomicU64>),
    /// Resolve when every listed lane is durable (or dropped) up to its head at flush entry.
    Flush {
        heads: Vec<(u64, u64)>,
        reply: SyncSender<Result<(), net_storage::StorageError>>,
    },
    /// Sync what is written now instead of waiting for the interval.
    SyncNow,
    Latency {
        reply: SyncSender<Histogram<u64>>,
    },
    /// Test support: stop or resume draining lanes.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Pause(bool),
    /// Test support: make the shard's thread panic.
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    InjectPanic,
    /// Drain (until the deadline, on the monotonic clock) and exit.
    Stop {
        deadline_ns: u64,
    },
    Mesh(crate::mesh_shard::MeshControl),
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Control::AddLane(_) => "AddLane",
            Control::AddConsumer(..) => "AddConsumer",
            Control::HoldRetention(_) => "HoldRetention",
            Control::Flush { .. } => "Flush",
            Control::SyncNow => "SyncNow",
            Control::Latency { .. } => "Latency",
            Control::Pause(_) => "Pause",
            Control::InjectPanic => "InjectPanic",
            Control::Stop { .. } => "Stop",
            Control::Mesh(_) => "Mesh",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Control>,
    closed: bool,
}

/// What the bus and the shard thread share.
#[derive(Debug)]
pub(crate) struct ShardShared {
    pub(crate) signal: Arc<ShardSignal>,
    pub(crate) counters: Arc<CachePadded<ShardCounters>>,
    /// The bus's "events became visible" signal, shared by every shard.
    pub(crate) visible: Arc<crate::notify::Notify>,
    queue: Mutex<Queue>,
    pending: CachePadded<AtomicBool>,
}

impl ShardShared {
    pub(crate) fn new(
        signal: Arc<ShardSignal>,
        counters: Arc<CachePadded<ShardCounters>>,
        visible: Arc<crate::notify::Notify>,
    ) -> ShardShared {
        ShardShared {
            signal,
            counters,
            visible,
            queue: Mutex::new(Queue::default()),
            pending: CachePadded::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock is a bug of ours; the queue stays usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` and wakes the shard; hands it back if the shard has ended.
    pub(crate) fn send(&self, msg: Control) -> Result<(), Control> {
        let mut q = self.lock();
        if q.closed {
            return Err(msg);
        }
        q.messages.push_back(msg);
        drop(q);
        self.pending.store(true, Ordering::SeqCst);
        self.signal.wake();
        Ok(())
    }

    /// Whether messages wait (one load; checked every loop turn and before parking).
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    pub(crate) fn take(&self) -> Option<Control> {
        let mut q = self.lock();
        let msg = q.messages.pop_front();
        if q.messages.is_empty() {
            self.pending.store(false, Ordering::SeqCst);
        }
        msg
    }

    /// The shard has ended: refuse further messages and drop pending ones (their reply
    /// channels disconnect).
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        let dropped = std::mem::take(&mut q.messages);
        drop(q);
        self.pending.store(false, Ordering::SeqCst);
        drop(dropped);
    }
}
