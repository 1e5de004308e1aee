//! Control-plane messages from the bus to a shard: lane registration, polls, flush barriers,
//! latency snapshots, pause, stop. They travel through a mutex-protected queue (not on the
//! per-event path) and wake the shard through its eventfd.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use net_storage::StoredRecord;

use crate::lane::Lane;
use crate::stats::ShardCounters;
use crate::wake::ShardSignal;

/// A shard's answer to a poll.
#[derive(Debug)]
pub(crate) struct PollReply {
    pub(crate) records: Vec<StoredRecord>,
    /// The first sequence number the shard still stores.
    pub(crate) first_seq: u64,
    pub(crate) error: Option<String>,
}

/// Messages a shard handles between batches.
#[derive(Debug)]
pub(crate) enum Control {
    AddLane(Arc<Lane>),
    Poll {
        from: u64,
        limit: usize,
        bytes_max: usize,
        reply: SyncSender<PollReply>,
    },
    /// Resolve when every listed lane is persisted up to its head at flush entry.
    Flush {
        heads: Vec<(u64, u64)>,
        reply: SyncSender<Result<(), String>>,
    },
    /// Sync what is written now instead of waiting for the interval.
    SyncNow,
    Latency {
        reply: SyncSender<Histogram<u64>>,
    },
    Pause(bool),
    /// Fault injection for tests of panic surfacing.
    InjectPanic,
    /// Drain (until the deadline, on the monotonic clock) and exit.
    Stop {
        deadline_ns: u64,
    },
}

/// What the bus and the shard thread share.
#[derive(Debug)]
pub(crate) struct ShardShared {
    pub(crate) signal: Arc<ShardSignal>,
    pub(crate) counters: Arc<CachePadded<ShardCounters>>,
    queue: Mutex<VecDeque<Control>>,
    pending: CachePadded<AtomicBool>,
}

impl ShardShared {
    pub(crate) fn new(
        signal: Arc<ShardSignal>,
        counters: Arc<CachePadded<ShardCounters>>,
    ) -> ShardShared {
        ShardShared {
            signal,
            counters,
            queue: Mutex::new(VecDeque::new()),
            pending: CachePadded::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn send(&self, msg: Control) {
        self.queue.lock().expect("control queue").push_back(msg);
        self.pending.store(true, Ordering::SeqCst);
        self.signal.wake();
    }

    /// Whether messages wait (one load; checked every loop turn and before parking).
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    pub(crate) fn take(&self) -> Option<Control> {
        let mut q = self.queue.lock().expect("control queue");
        let msg = q.pop_front();
        if q.is_empty() {
            self.pending.store(false, Ordering::SeqCst);
        }
        msg
    }
}
