//! The mirror producer: sends events that carry their origin — the node, shard and sequence
//! number they have in another node's log — into a chosen shard of this bus, which appends
//! them with that origin (`Log::push_with_origin`); `poll` returns it as [`crate::Event`]'s
//! `origin`, and [`crate::Bus::origin_positions`] finds, after a restart, how far each origin
//! was mirrored.
//!
//! A `MirrorProducer` has one origin lane per shard (see `lane`): each entry is the origin
//! block ([`crate::ORIGIN_BYTES`]) followed by the payload, written in place like a
//! [`crate::Producer`]'s records (no allocation, no lock, no syscall unless the shard parked),
//! with the same window, backpressure and shutdown semantics, through the same code.

use std::cell::Cell;
use std::marker::PhantomData;

use net_storage::record::Origin;

use crate::clock::monotonic_ns;
use crate::config::Backpressure;
use crate::error::SendError;
use crate::ids::ShardId;
use crate::lane::{LaneMsg, LaneWriter};
use crate::producer::{Sent, check_len, lane_of, release_lanes, send_now};

/// A handle that sends events with their origin into chosen shards. `Send`, not `Sync`: one
/// per thread, like [`crate::Producer`]. Made by [`crate::Bus::mirror_producer`].
#[derive(Debug)]
pub struct MirrorProducer {
    writers: Vec<LaneWriter>,
    mode: Backpressure,
    payload_bytes_max: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl Drop for MirrorProducer {
    fn drop(&mut self) {
        release_lanes(&self.writers);
    }
}

impl MirrorProducer {
    /// A producer writing into `writers` (origin lanes, one per shard).
    pub(crate) fn new(
        writers: Vec<LaneWriter>,
        mode: Backpressure,
        payload_bytes_max: usize,
    ) -> MirrorProducer {
        MirrorProducer {
            writers,
            mode,
            payload_bytes_max,
            _not_sync: PhantomData,
        }
    }

    /// Number of shards (valid `shard` arguments are `0..shards`).
    pub fn shards(&self) -> usize {
        self.writers.len()
    }

    /// The largest payload this producer accepts: the bus's limit less the
    /// [`crate::ORIGIN_BYTES`] the origin block takes in the lane and in the record.
    pub fn payload_bytes_max(&self) -> usize {
        self.payload_bytes_max
    }

    /// Sends an event with its origin to shard `shard`, under the bus's backpressure mode
    /// (as [`crate::Producer::send_to`]: `block` waits for room, `fail` refuses with
    /// [`SendError::Full`], the drop modes drop an event and count it). Events sent to one
    /// shard keep their order.
    ///
    /// Mirroring that must lose nothing should use [`MirrorProducer::try_send`] (or a bus
    /// whose mode is `block` or `fail`): under a drop mode a dropped event is not stored, and
    /// [`crate::Bus::origin_positions`] reports the position after the highest origin seq
    /// stored, past any such hole.
    pub fn send(
        &mut self,
        shard: ShardId,
        origin: Origin,
        payload: &[u8],
    ) -> Result<Sent, SendError> {
        self.send_under(self.mode, shard, origin, payload)
    }

    /// Sends an event with its origin to shard `shard` if its lane has room now; never waits
    /// and never drops: a full lane is [`SendError::Full`] (counted as rejected; the event was
    /// not taken, so send it again later). Other refusals are as for
    /// [`MirrorProducer::send`].
    pub fn try_send(
        &mut self,
        shard: ShardId,
        origin: Origin,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.send_under(Backpressure::Fail, shard, origin, payload)
            .map(|_| ())
    }

    fn send_under(
        &mut self,
        mode: Backpressure,
        shard: ShardId,
        origin: Origin,
        payload: &[u8],
    ) -> Result<Sent, SendError> {
        let w = lane_of(&mut self.writers, usize::from(shard.0))?;
        check_len(payload.len(), self.payload_bytes_max)?;
        let block = origin.to_bytes();
        send_now(w, mode, monotonic_ns(), LaneMsg::origin(&block, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bus, Config, Cursor};
    use net_storage::record::ORIGIN_BYTES;

    /// Our writers always encode a valid block; the shard still defends against one that is
    /// not: it drops the event and counts it, and the lane goes on.
    #[test]
    fn a_malformed_origin_block_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::start(Config {
            data_dir: dir.path().into(),
            shards: Some(1),
            pin: false,
            ..Config::default()
        })
        .unwrap();
        let mut m = bus.mirror_producer().unwrap();
        let good = Origin {
            node: 5,
            shard: 6,
            seq: 7,
        };
        let mut bad = good.to_bytes();
        bad[ORIGIN_BYTES - 1] = 1; // a reserved byte
        let sent = send_now(&mut m.writers[0], m.mode, 0, LaneMsg::origin(&bad, b"bad"));
        assert_eq!(sent, Ok(Sent::Queued));
        assert_eq!(m.send(ShardId(0), good, b"good"), Ok(Sent::Queued));
        bus.flush().unwrap();
        let t = bus.stats().total;
        assert_eq!(
            (t.ingested, t.persisted, t.dropped, t.in_flight),
            (2, 1, 1, 0)
        );
        let events = bus.poll(&Cursor::start(), 10).unwrap().events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].origin, Some(good));
        assert_eq!(&events[0].payload[..], b"good");
        drop(m);
        assert!(!bus.shutdown(std::time::Duration::from_secs(5)).lossy);
    }
}
