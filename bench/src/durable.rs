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
use crate::{Failure, disk, payload, progress, redex};
use hdrhistogram::Histogram;
use net_engine::{Bus, Config, FsyncPolicy};
use std::path::{Path, PathBuf};
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

    /// Record bytes (32-byte header and payload) that the read-back returned.
    pub fn poll_bytes(&self) -> u64 {
        let r = &self.readback;
        r.payload_bytes + r.events * net_storage::record::RECORD_HEADER_BYTES as u64
    }

    /// Record bytes that the read-back moved per second of `Bus::poll`, GB.
    pub fn poll_gb_per_s(&self) -> f64 {
        crate::report::per_s(self.poll_bytes(), self.readback.polling) / 1e9
    }

    /// Record bytes per second of the read-back's wall time (the visitor's included), GB.
    pub fn poll_wall_gb_per_s(&self) -> f64 {
        crate::report::per_s(self.poll_bytes(), self.readback.wall) / 1e9
    }
}

/// The `.dat` files of every shard of the bus whose data dir is `dir`, shard by shard, each
/// shard's in sequence order: the files its read-back polls.
pub fn dat_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let listing = std::fs::read_dir(dir).map_err(Failure::io(format!("listing {}", dir.display())));
    let mut shards = Vec::new();
    for entry in listing? {
        let entry = entry.map_err(Failure::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let shard = name
            .to_str()
            .and_then(net_storage::verify::parse_shard_dir_name);
        if let Some(shard) = shard {
            shards.push((shard, entry.path()));
        }
    }
    shards.sort_unstable();
    let mut files = Vec::new();
    for (_, shard_dir) in shards {
        files.extend(redex::dat_files(&shard_dir)?);
    }
    Ok(files)
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
    let closed = progress::counting("net: durable, closed loop", work.events, || {
        feed::feed(&bus, &work)
    })?;
    let saturated = bus.take_latency();
    let closed_batches = batches(&bus);
    let pace = Pace::new(plan.rate_per_s, plan.producers);
    let paced = progress::counting("net: durable, paced", work.events, || {
        feed::feed_paced(&bus, &work, &pace)
    })?;
    let paced_latency = bus.take_latency();
    let paced_batches = batches(&bus) - closed_batches;
    let dropped = closed.totals.dropped + paced.dropped;
    if dropped > 0 {
        return Err(Failure::Engine(format!("the bus dropped {dropped} events")));
    }
    let cache_dropped = disk::drop_page_cache();
    let _phase = progress::counted("net: poll everything back", 2 * plan.events);
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

#[cfg(test)]
mod tests {
    use super::*;
    use net_storage::segment::dat_path;

    #[test]
    fn dat_files_lists_every_shard_in_order_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (s0, s1) = (dir.path().join("shard-0000"), dir.path().join("shard-0001"));
        for shard in [&s0, &s1, &dir.path().join("other")] {
            std::fs::create_dir(shard).unwrap();
        }
        for path in [dat_path(&s1, 0), dat_path(&s0, 7), dat_path(&s0, 0)] {
            std::fs::write(path, b"").unwrap();
        }
        std::fs::write(
            dir.path()
                .join("other")
                .join(dat_path(&s0, 0).file_name().unwrap()),
            b"",
        )
        .unwrap();
        std::fs::write(s0.join("notes.txt"), b"").unwrap();
        let want = vec![dat_path(&s0, 0), dat_path(&s0, 7), dat_path(&s1, 0)];
        assert_eq!(dat_files(dir.path()).unwrap(), want);
    }
}
