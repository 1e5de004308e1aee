//! Warming the active segment: writing zeros ahead of the writer while the shard is idle, so
//! that batches overwrite blocks already written instead of reserved ones.
//!
//! A segment's space is reserved with `fallocate`, which leaves *unwritten* extents. A direct
//! write into one must convert the extent when it completes — work the kernel defers to a
//! worker thread — and the next `fdatasync` must commit that conversion to the journal.
//! Measured on this kind of machine (4 KiB `O_DIRECT` write + `fdatasync`): into unwritten
//! extents p50 370 µs / p99 630 µs; into written blocks p50 170 µs / p99 330 µs. Worse, ext4
//! cannot issue such a write without blocking (io_uring hands it to an io-wq worker) and
//! completes it on a per-CPU kernel worker: a write is late whenever that CPU is busy (a
//! consumer spinning on it held one off for ~0.4 s). An overwrite of written blocks is issued
//! and completed inline.
//!
//! So while the shard has nothing to do, the log writes zeros (in [`WARM_CHUNK_BYTES`] writes,
//! each followed by a linked `fdatasync` that commits its conversion at once, off the data
//! path) into the region ahead of the writer, keeping at most [`WARM_AHEAD_BYTES`] warm. It
//! starts [`WARM_LEAD_BYTES`] beyond the data end, so a warm write in flight does not overlap
//! the next batches' writes (a batch that would overlap waits for it); the writer then
//! advances into warm space. Zeros past the data end are what recovery takes for the clean
//! end, and sealing a segment truncates them away.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use crate::buffer::{AlignedBuf, align_up};
use crate::error::{Result, io_err};
use crate::log::{Log, op, push, push_linked};
use crate::uring::Submit;

/// Bytes of one warming write. Smaller chunks keep each warming `fdatasync` short, so it
/// delays a batch's own sync less: with `net-bench latency` on 2 cores, 256 KiB gave durable
/// p99 1.3–1.9 ms against 2.0–2.8 ms with 2 MiB chunks (and no gain at 64 KiB).
pub const WARM_CHUNK_BYTES: usize = 256 << 10;
/// Warming starts this far beyond the data end (the next batches write there).
pub const WARM_LEAD_BYTES: u64 = 4 << 20;
/// Warming stops this far beyond the data end.
pub const WARM_AHEAD_BYTES: u64 = 64 << 20;

const _: () = assert!(WARM_AHEAD_BYTES > WARM_LEAD_BYTES + WARM_CHUNK_BYTES as u64);

/// The warm region of the active segment and its write in flight.
#[derive(Debug)]
pub(crate) struct Warm {
    /// Offsets from where warming last started up to `to` are written (zeros or data).
    pub(crate) to: u64,
    /// The warming write in flight, `(offset, len)`, with its sync.
    pub(crate) in_flight: Option<(u64, u64)>,
    /// The write in flight failed (and was reported); its linked sync comes back cancelled.
    write_failed: bool,
}

/// The zeros every log warms with: one buffer for the process, never freed, so a warming
/// write the kernel still runs when a log is dropped never reads freed memory.
fn zeros() -> &'static AlignedBuf {
    static ZEROS: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROS.get_or_init(|| AlignedBuf::new(WARM_CHUNK_BYTES))
}

impl Warm {
    pub(crate) fn new() -> Warm {
        zeros(); // allocated when the first log opens, never on the data path
        Warm {
            to: 0,
            in_flight: None,
            write_failed: false,
        }
    }

    /// A new active segment: nothing of it is warm.
    pub(crate) fn reset(&mut self) {
        debug_assert!(self.in_flight.is_none(), "warming the old segment still");
        self.to = 0;
    }

    /// Whether a write of `start..end` would overlap the warming write in flight.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        self.in_flight
            .is_some_and(|(at, len)| start < at + len && at < end)
    }
}

impl Log {
    /// Writes the next chunk of zeros ahead of the writer if the log is idle and the region is
    /// not warm enough yet (see the module docs). Returns whether it submitted one.
    pub fn warm(&mut self, sq: &mut dyn Submit) -> Result<bool> {
        let idle = self.open_events == 0 && !self.write_in_flight && self.batches.is_empty();
        if !self.cfg.preallocate
            || self.poisoned.is_some()
            || self.warm.in_flight.is_some()
            || !idle
            || !self.active.dir_synced
        {
            return Ok(false);
        }
        let data_end = align_up_u64(self.stages[self.open].end());
        let lead = data_end + WARM_LEAD_BYTES;
        if self.warm.to < lead {
            // Not contiguous with what is warm (or nothing is): start afresh past the lead.
            self.warm.to = lead;
        }
        let limit = (data_end + WARM_AHEAD_BYTES).min(self.cfg.segment_bytes);
        if self.warm.to >= limit {
            return Ok(false);
        }
        let at = self.warm.to;
        let len = (limit - at).min(WARM_CHUNK_BYTES as u64);
        let len = u32::try_from(align_up(usize::try_from(len).expect("a chunk"))).expect("a chunk");
        let fd = types::Fd(self.active.dat.as_raw_fd());
        let write = opcode::Write::new(fd, zeros().as_slice().as_ptr(), len)
            .offset(at)
            .build()
            .user_data(op::tag(op::WARM_WRITE, 0));
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(op::tag(op::WARM_SYNC, 0));
        let failed = |e| io_err("submit warming write", &self.dir)(e);
        let ops = push_linked(sq, write, true).map_err(failed)? + push(sq, sync).map_err(failed)?;
        self.ops_in_flight += ops;
        self.warm.in_flight = Some((at, u64::from(len)));
        Ok(true)
    }

    /// Handles the warming write's and sync's completions. A failure poisons the log like any
    /// other write to the segment: the kernel's view of the file is unknown after it.
    pub(crate) fn on_warm(&mut self, tag: u64, res: i32) -> Result<()> {
        let (at, len) = self.warm.in_flight.expect("a warming write in flight");
        let path = || crate::segment::dat_path(&self.dir, self.active.base);
        if op::kind(tag) == op::WARM_WRITE {
            let expected = usize::try_from(len).expect("a chunk");
            if usize::try_from(res).ok() != Some(expected) {
                // The linked sync completes (cancelled) after this; it ends the warming write.
                self.warm.write_failed = true;
                return Err(crate::log::op_error("write", path(), res, expected));
            }
            return Ok(());
        }
        self.warm.in_flight = None;
        if std::mem::take(&mut self.warm.write_failed) {
            return Ok(());
        }
        if res != 0 {
            return Err(crate::log::op_error("fdatasync", path(), res, 0));
        }
        // Warming writes at `to` and nothing moves `to` while one is in flight.
        debug_assert_eq!(at, self.warm.to);
        self.warm.to = at + len;
        Ok(())
    }
}

fn align_up_u64(n: u64) -> u64 {
    let b = crate::buffer::BLOCK_BYTES as u64;
    n.div_ceil(b) * b
}
