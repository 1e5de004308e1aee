//! The producer handle: one lane per shard, shard selection, and the backpressure modes.
//!
//! A `Producer` is `Send` but not `Sync`: it is each lane's single writer, so an application
//! uses one per thread. `send` writes the record into the chosen lane in place: no
//! allocation, no lock, and no syscall unless the shard parked.
//!
//! Shutdown fencing: a send runs inside a `busy` window (`busy = true` with SeqCst, then the
//! `closed` check). The bus sets `closed` and then waits for `busy` to clear on every lane, so
//! after that no event can enter a lane and the final accounting is exact.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use crossbeam_utils::Backoff;

use crate::clock::monotonic_ns;
use crate::config::Backpressure;
use crate::error::SendError;
use crate::ids::ShardId;
use crate::lane::{DropOldest, Lane, LaneMsg, LaneWriter};

/// What happened to an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written into the lane.
    Queued,
    /// Dropped by the backpressure mode (counted in `dropped`).
    Dropped,
}

/// What [`Producer::send_batch`] did with a batch.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSent {
    /// Events written into their lanes.
    pub queued: usize,
    /// Events the backpressure mode dropped (ingested, counted as dropped).
    pub dropped: usize,
    /// Events refused (not ingested): their index in the batch and why.
    pub refused: Vec<(usize, SendError)>,
}

/// A handle that sends events into the bus. See the module docs.
#[derive(Debug)]
pub struct Producer {
    writers: Vec<LaneWriter>,
    /// Per shard: whether the batch being sent staged records in that lane.
    touched: Vec<bool>,
    home: usize,
    mode: Backpressure,
    payload_bytes_max: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        release_lanes(&self.writers);
    }
}

/// A producer's handle is gone: once drained and durable, the shards retire its lanes and
/// free their rings.
pub(crate) fn release_lanes(writers: &[LaneWriter]) {
    for w in writers {
        w.lane.producer_gone.store(true, Ordering::Release);
    }
}

/// Refuses a payload larger than `max`.
pub(crate) fn check_len(len: usize, max: usize) -> Result<(), SendError> {
    if len > max {
        return Err(SendError::TooLarge { len, max });
    }
    Ok(())
}

/// The lane of shard `shard` among `writers` (one per shard).
pub(crate) fn lane_of(
    writers: &mut [LaneWriter],
    shard: usize,
) -> Result<&mut LaneWriter, SendError> {
    let shards = writers.len();
    writers
        .get_mut(shard)
        .ok_or(SendError::NoSuchShard { shard, shards })
}

/// The unbiased map of a 64-bit hash onto `n` shards (Lemire's multiply-shift).
pub fn shard_for_hash(hash: u64, n: usize) -> usize {
    let n64 = u64::try_from(n).expect("shard count fits u64");
    usize::try_from((u128::from(hash) * u128::from(n64)) >> 64).expect("below n")
}

/// The shard an event with this key goes to on a bus of `n` shards.
pub fn shard_for_key(key: &[u8], n: usize) -> usize {
    shard_for_hash(xxhash_rust::xxh3::xxh3_64(key), n)
}

impl Producer {
    pub(crate) fn new(
        writers: Vec<LaneWriter>,
        home: usize,
        mode: Backpressure,
        payload_bytes_max: usize,
    ) -> Producer {
        Producer {
            touched: vec![false; writers.len()],
            writers,
            home,
            mode,
            payload_bytes_max,
            _not_sync: PhantomData,
        }
    }

    /// The shard `send_home` uses.
    pub fn home(&self) -> ShardId {
        ShardId::from_index(self.home)
    }

    /// The largest payload this bus accepts.
    pub fn payload_bytes_max(&self) -> usize {
        self.payload_bytes_max
    }

    /// Sends an event to the shard its key maps to. Events with the same key keep their order.
    pub fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<Sent, SendError> {
        let shard = shard_for_key(key, self.writers.len());
        self.send_to(shard, payload)
    }

    /// Sends an event and returns once it is durable under the bus's fsync policy
    /// (`every_batch`: after the fdatasync of its batch; `interval_ms`: after the next sync,
    /// at most the interval later; `never`: once written to the file). An event dropped by the
    /// backpressure mode returns `Ok(Sent::Dropped)` at once. Blocks the calling thread; for
    /// many events, `send` them and then `Bus::flush`.
    pub fn send_durable(&mut self, key: &[u8], payload: &[u8]) -> Result<Sent, SendError> {
        let shard = shard_for_key(key, self.writers.len());
        let sent = self.send_to_stamped(shard, payload, None)?;
        if sent == Sent::Dropped {
            return Ok(sent);
        }
        let w = &self.writers[shard];
        wait_lane_durable(&w.lane, w.head())
    }

    /// Waits until every event this producer sent before the call is durable under the bus's
    /// fsync policy (or was dropped by the backpressure mode), up to `timeout`: the
    /// acknowledgement of everything sent so far, for one producer, without waiting for other
    /// producers' events (unlike [`crate::Bus::flush`]). `Ok(false)` when `timeout` passed.
    /// A shard that failed, died or stopped first is its `SendError`.
    pub fn wait_durable(&self, timeout: std::time::Duration) -> Result<bool, SendError> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        for w in &self.writers {
            let head = w.head();
            if head == 0 {
                continue;
            }
            if !wait_lane_durable_until(&w.lane, head, deadline)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends an event to this producer's home shard.
    pub fn send_home(&mut self, payload: &[u8]) -> Result<Sent, SendError> {
        self.send_to(self.home, payload)
    }

    /// Sends an event to shard `shard` (`0..shards`; another index is
    /// `SendError::NoSuchShard`).
    pub fn send_to(&mut self, shard: usize, payload: &[u8]) -> Result<Sent, SendError> {
        lane_of(&mut self.writers, shard)?;
        self.send_to_stamped(shard, payload, None)
    }

    /// Like [`Producer::send`], with the event's origin time for the ingest-to-persisted
    /// latency histogram: `origin_ns` on the [`crate::monotonic_ns`] clock, such as when the
    /// event arrived or when a paced load generator meant to send it (which keeps the
    /// histogram free of coordinated omission). `send` uses the time of the call.
    pub fn send_stamped(
        &mut self,
        key: &[u8],
        payload: &[u8],
        origin_ns: u64,
    ) -> Result<Sent, SendError> {
        let shard = shard_for_key(key, self.writers.len());
        self.send_to_stamped(shard, payload, Some(origin_ns))
    }

    /// Sends many `(key, payload)` events: each goes to the shard its key maps to, as with
    /// [`Producer::send`] (same order per key, same backpressure), but each lane touched is
    /// published to its shard once for the whole batch (one release store and at most one
    /// wake-up per shard, not per event). Refused events are listed by their index in
    /// `events` with the reason; they were not ingested. Allocates only to list refusals.
    pub fn send_batch<'a, I>(&mut self, events: I) -> BatchSent
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let mut out = BatchSent::default();
        let send_ns = monotonic_ns();
        let (mode, n) = (self.mode, self.writers.len());
        for (i, (key, payload)) in events.into_iter().enumerate() {
            if let Err(e) = check_len(payload.len(), self.payload_bytes_max) {
                out.refused.push((i, e));
                continue;
            }
            let shard = shard_for_key(key, n);
            let w = &mut self.writers[shard];
            if !self.touched[shard] {
                w.enter_window();
                self.touched[shard] = true;
            }
            match send_in_window(w, mode, send_ns, LaneMsg::plain(payload), Publish::Later) {
                Ok(Sent::Queued) => out.queued += 1,
                Ok(Sent::Dropped) => out.dropped += 1,
                Err(e) => out.refused.push((i, e)),
            }
        }
        for (w, touched) in self.writers.iter_mut().zip(self.touched.iter_mut()) {
            if std::mem::take(touched) {
                w.publish();
                w.leave_window();
                w.lane.signal.wake_if_parked();
            }
        }
        out
    }

    fn send_to_stamped(
        &mut self,
        shard: usize,
        payload: &[u8],
        origin_ns: Option<u64>,
    ) -> Result<Sent, SendError> {
        check_len(payload.len(), self.payload_bytes_max)?;
        let send_ns = origin_ns.unwrap_or_else(monotonic_ns);
        send_now(
            &mut self.writers[shard],
            self.mode,
            send_ns,
            LaneMsg::plain(payload),
        )
    }
}

/// Sends one record into `w` and publishes it at once, under `mode`, inside the lane's window
/// (see the module docs); wakes the shard if it parked.
pub(crate) fn send_now(
    w: &mut LaneWriter,
    mode: Backpressure,
    send_ns: u64,
    msg: LaneMsg<'_>,
) -> Result<Sent, SendError> {
    w.enter_window();
    let result = send_in_window(w, mode, send_ns, msg, Publish::Now);
    w.leave_window();
    if result == Ok(Sent::Queued) {
        w.lane.signal.wake_if_parked();
    }
    result
}

/// How a send hands its record to the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Publish it at once (one send).
    Now,
    /// Stage it; the caller publishes the lane once for many (a batch).
    Later,
}

fn send_in_window(
    w: &mut LaneWriter,
    mode: Backpressure,
    send_ns: u64,
    msg: LaneMsg<'_>,
    publish: Publish,
) -> Result<Sent, SendError> {
    if w.is_closed() {
        return Err(SendError::Closed);
    }
    if let Backpressure::Sample { rate } = mode
        && w.fill_bytes() * 4 >= w.capacity() * 3
    {
        w.sample_n = w.sample_n.wrapping_add(1);
        if !w.sample_n.is_multiple_of(rate) {
            w.count_dropped_newest();
            return Ok(Sent::Dropped);
        }
    }
    let need = w.bytes_needed(msg.len());
    if !w.has_room(need) {
        if publish == Publish::Later {
            // What this batch staged must reach the shard before anyone waits for room.
            w.publish();
            w.lane.signal.wake_if_parked();
        }
        match mode {
            Backpressure::Fail => {
                w.count_rejected();
                return Err(SendError::Full(ShardId::from_index(w.lane.shard)));
            }
            Backpressure::DropNewest | Backpressure::Sample { .. } => {
                w.count_dropped_newest();
                return Ok(Sent::Dropped);
            }
            Backpressure::Block => wait_for_room(w, need)?,
            Backpressure::DropOldest => drop_until_room(w, need)?,
        }
    }
    match publish {
        Publish::Now => w.write(send_ns, msg),
        Publish::Later => w.stage(send_ns, msg),
    }
    Ok(Sent::Queued)
}

/// Waits until the shard publishes the lane durable up to `pos`. The producer does not send
/// meanwhile, so its own `drop_oldest` cannot drop the record being waited for.
fn wait_lane_durable(lane: &Lane, pos: u64) -> Result<Sent, SendError> {
    wait_lane_durable_until(lane, pos, None).map(|_| Sent::Queued)
}

/// [`wait_lane_durable`] up to `deadline` (`None`: none); `Ok(false)` when it passed.
fn wait_lane_durable_until(
    lane: &Lane,
    pos: u64,
    deadline: Option<std::time::Instant>,
) -> Result<bool, SendError> {
    let shard = ShardId::from_index(lane.shard);
    let backoff = Backoff::new();
    loop {
        if lane.durable_pos.load(Ordering::Acquire) >= pos {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
        let state = &lane.shard_state;
        if state.is_failed() {
            return Err(SendError::Failed(shard));
        }
        if state.stopped.load(Ordering::Acquire) {
            // The shard publishes its last durable position before it stops.
            if lane.durable_pos.load(Ordering::Acquire) >= pos {
                return Ok(true);
            }
            return Err(SendError::Stopped(shard));
        }
        if backoff.is_completed() {
            std::thread::sleep(std::time::Duration::from_micros(20));
        } else {
            backoff.snooze();
        }
    }
}

fn wait_for_room(w: &mut LaneWriter, need: u64) -> Result<(), SendError> {
    let backoff = Backoff::new();
    while !w.has_room(need) {
        if w.is_closed() {
            return Err(SendError::Closed);
        }
        // A dead shard never drains: waiting for room would never end.
        if w.lane.shard_state.is_dead() {
            return Err(SendError::Failed(ShardId::from_index(w.lane.shard)));
        }
        w.lane.signal.wake_if_parked();
        if backoff.is_completed() {
            std::thread::yield_now();
        } else {
            backoff.snooze();
        }
    }
    Ok(())
}

fn drop_until_room(w: &mut LaneWriter, need: u64) -> Result<(), SendError> {
    let backoff = Backoff::new();
    while !w.has_room(need) {
        if w.is_closed() {
            return Err(SendError::Closed);
        }
        if w.drop_oldest() == DropOldest::Busy {
            // The shard is copying its claim out; it releases the space in microseconds.
            if backoff.is_completed() {
                std::thread::yield_now();
            } else {
                backoff.snooze();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_map_covers_every_shard_evenly() {
        let n = 7;
        let mut counts = vec![0u32; n];
        for i in 0..70_000u32 {
            counts[shard_for_key(&i.to_le_bytes(), n)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_for_hash(u64::MAX, n), n - 1);
        assert_eq!(shard_for_hash(0, n), 0);
    }
}
