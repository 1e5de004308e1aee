//! A net bus under `fsync: every_batch` (group commit, the embedded default), measured from
//! ingest to durable: a shard counts a batch persisted, and measures its events' latency, only
//! when the batch's write and the `fdatasync` linked after it have both completed, so the
//! bus's `persisted` counter and latency histogram are durability here.
//!
//! The bus runs the default configuration on a scratch directory (default shards, pinned).
//! Three phases on the same bus: a closed loop as fast as the producers can send (the most
//! durable events/s, and queue-full latency), a paced phase on `pace`'s open-loop schedule
//! (latency from each event's intended time, corrected for coordinated omission), then every
//! event of both phases read back through `Bus::poll`, the consumer path, after the page cache
//! was dropped: the shards write with `O_DIRECT`, so a consumer's reads come from the disk.

use crate::feed::{self, Paced, Window};
use crate::pace::Pace;
use crate::readback::{self, ReadBack};
use crate::workload::Workload;
use crate::{Failure, disk, payload};
use hdrhistogram::Histogram;
use net_engine::{Bus, Config, FsyncPolicy};
use std::path::Path;
use std::time::Duration;

/// Time the bus gets to drain at shutdown; everything is persisted by then, so it is a bound.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// What each phase is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Events of each of the closed-loop and paced phases.
    pub events: u64,
    pub payload_bytes: usize,
    pub producers: usize,
    /// Paced events/s over all producers.
    pub rate_per_s: u64,
}

/// What the three phases measured.
#[derive(Debug)]
pub struct Durable {
    pub shards: usize,
    pub closed: Window,
    /// Closed-loop ingest-to-durable latency, ns: queue-full latency.
    pub saturated: Histogram<u64>,
    pub paced: Paced,
    /// Paced ingest-to-durable latency, ns, from each event's intended send time.
    pub paced_latency: Histogram<u64>,
    /// Batches (each one write and one `fdatasync`) the shards wrote in each phase.
    pub closed_batches: u64,
    pub paced_batches: u64,
    pub readback: ReadBack,
    /// Whether the page cache was dropped before the read-back.
    pub cache_dropped: bool,
}

impl Durable {
    pub fn closed_events_per_s(&self) -> f64 {
        crate::report::per_s(self.closed.totals.persisted, self.closed.elapsed)
    }

    pub fn paced_events_per_s(&self) -> f64 {
        crate::report::per_s(self.paced.persisted, self.paced.elapsed)
    }

    /// Mean events per batch (per `fdatasync`) of the paced phase.
    pub fn paced_events_per_batch(&self) -> f64 {
        self.paced.persisted as f64 / self.paced_batches.max(1) as f64
    }

    /// Mean time between a shard's batches in the paced phase: how long one group commit
    /// (write and `fdatasync`) took, since a shard submits the next as soon as one completes
    /// while events wait.
    pub fn paced_batch_period_us(&self) -> f64 {
        let per_shard = self.paced_batches as f64 / self.shards.max(1) as f64;
        self.paced.elapsed.as_secs_f64() * 1e6 / per_shard.max(1.0)
    }

    /// Record bytes (32-byte header and payload) that the read-back moved per second, GB.
    pub fn poll_gb_per_s(&self) -> f64 {
        let r = &self.readback;
        let bytes = r.payload_bytes + r.events * net_storage::record::RECORD_HEADER_BYTES as u64;
        crate::report::per_s(bytes, r.polling) / 1e9
    }
}

/// Batches written so far, over all shards.
fn batches(bus: &Bus) -> u64 {
    bus.stats().shards.iter().map(|s| s.batches).sum()
}

/// Runs the three phases on a new bus in `dir` and shuts it down.
pub fn measure(dir: &Path, plan: Plan) -> Result<Durable, Failure> {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.storage.fsync = FsyncPolicy::EveryBatch;
    let bus = Bus::start(config).map_err(|e| Failure::engine("starting the bus", e))?;
    let work = Workload {
        events: plan.events,
        payload_bytes: plan.payload_bytes,
        shards: bus.shards(),
        producers: plan.producers,
    };
    bus.take_latency();
    let closed = feed::feed(&bus, &work)?;
    let saturated = bus.take_latency();
    let closed_batches = batches(&bus);
    let paced = feed::feed_paced(&bus, &work, &Pace::new(plan.rate_per_s, plan.producers))?;
    let paced_latency = bus.take_latency();
    let paced_batches = batches(&bus) - closed_batches;
    let dropped = closed.totals.dropped + paced.dropped;
    if dropped > 0 {
        return Err(Failure::Engine(format!("the bus dropped {dropped} events")));
    }
    let cache_dropped = disk::drop_page_cache();
    let readback = readback::read_back(&bus, 2 * plan.events, |event| {
        match payload::identity(&event.payload) {
            Some(_) if event.payload.len() == plan.payload_bytes => Ok(()),
            _ => Err(format!("event {} is not one that was sent", event.id)),
        }
    })?;
    crate::shut_down_cleanly(bus, SHUTDOWN_DEADLINE)?;
    Ok(Durable {
        shards: work.shards,
        closed,
        saturated,
        paced,
        paced_latency,
        closed_batches,
        paced_batches,
        readback,
        cache_dropped,
    })
}
