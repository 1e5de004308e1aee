//! Counters through the C API.

use crate::boundary::{Out, boundary};
use crate::{live_handle, net_bus, net_result, to_u32};

/// A snapshot of a bus's counters (`ingested == persisted + dropped + in_flight`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct net_stats {
    /// Events the bus took responsibility for.
    pub ingested: u64,
    /// Events written to the shards' logs.
    pub persisted: u64,
    /// Events dropped: by backpressure, by an I/O failure, or at shutdown.
    pub dropped: u64,
    /// Ingests refused with `NET_ERR_FULL` (not ingested).
    pub rejected: u64,
    /// Events in lanes or batches, not yet persisted.
    pub in_flight: u64,
    /// Shards of the bus.
    pub shards: u32,
    /// Shards whose log failed or whose thread died.
    pub failed_shards: u32,
    /// Whether the bus lost accepted events at shutdown.
    pub lossy: bool,
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<net_stats>() == 56);
    assert!(align_of::<net_stats>() == 8);
    assert!(offset_of!(net_stats, in_flight) == 32);
    assert!(offset_of!(net_stats, shards) == 40);
    assert!(offset_of!(net_stats, failed_shards) == 44);
    assert!(offset_of!(net_stats, lossy) == 48);
};

/// The bus's counters into `*stats` (zeroed on failure). Works after `net_bus_shutdown` too
/// (the final figures).
///
/// # Safety
/// `bus` a live handle; `stats` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_bus_stats(bus: *const net_bus, stats: *mut net_stats) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(stats, "stats", net_stats::default()) }?;
        // SAFETY: the caller's contract.
        let h = unsafe { live_handle(bus) }?;
        let s = h.stats.snapshot();
        out.set(net_stats {
            ingested: s.total.ingested,
            persisted: s.total.persisted,
            dropped: s.total.dropped,
            rejected: s.total.rejected,
            in_flight: s.total.in_flight,
            shards: to_u32(h.shards),
            failed_shards: to_u32(s.shards.iter().filter(|x| x.failed).count()),
            lossy: s.lossy,
        });
        Ok(())
    })
}
