//! Segments coming and going: creating a segment, rolling to a new one, sealing the old one,
//! and keeping the shard's manifest up to date — all through the log's ring, so that a roll
//! never stalls the shard on a device flush.
//!
//! A roll (when the next record would not fit the active segment):
//! 1. creates the new `.dat` (`O_EXCL`), reserves its space (`fallocate`), and adds it to the
//!    map; an fsync of the directory goes out with the first batch, and no record of the new
//!    segment counts as durable before it completed (its name could otherwise vanish);
//! 2. once the directory fsync completed, the manifest names the new segment as the newest;
//! 3. once every write to the old segment completed, one chain seals it: `ftruncate` to its
//!    data (dropping the reserved tail), `fdatasync`, and its sparse `.idx` written and
//!    synced. A sealed segment is whole on disk: its length ends at its last record.
//!
//! Rolling again waits until the previous seal finished, so at most one segment is being
//! sealed. Manifest updates are serialised: one slot write and sync in flight, later changes
//! coalesced into the next generation.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use io_uring::{IoUring, opcode, types};

use crate::buffer::AlignedBuf;
use crate::error::{Result, StorageError, io_err};
use crate::index::{INDEX_ENTRY_BYTES, IndexEntry};
use crate::log::{Active, Log, LogConfig, SealedSegment, op, op_error, push, push_linked};
use crate::manifest::{self, Manifest, SLOT_BYTES};
use crate::segment::{self, OpenMode};
use crate::uring::Submit;
use crate::view::{LiveIndex, SegmentHandle, SegmentIndex, SegmentMap};

/// Index slots of a live segment: one per stride, the first record, and slack.
pub(crate) fn index_capacity(cfg: &LogConfig) -> usize {
    usize::try_from(cfg.segment_bytes / cfg.stride() + 2).expect("a few thousand slots")
}

/// Creates the files of the segment starting at `base` (which must not exist) and reserves
/// its space. Allocates nothing but the returned handle's index, unless it fails.
pub(crate) fn create_segment(
    dir: &Path,
    dir_fd: &File,
    cfg: &LogConfig,
    base: u64,
) -> Result<(File, Arc<SegmentHandle>)> {
    let name = segment::c_name(base, b"dat");
    let dat = segment::open_at(dir_fd, &name, OpenMode::Create)
        .map_err(segment_err("create", dir, base, "dat"))?;
    if cfg.preallocate {
        reserve(&dat, cfg.segment_bytes).map_err(segment_err("fallocate", dir, base, "dat"))?;
    }
    let handle = open_handle(dir, dir_fd, base, 0, Live(index_capacity(cfg)))?;
    Ok((dat, handle))
}

/// How a handle's index is made.
pub(crate) enum IndexKind {
    /// Written by this log, with this many slots.
    Live(usize),
    /// On disk, loaded on first use.
    OnDisk,
}
use IndexKind::Live;

/// Opens the read side of segment `base` for the map.
pub(crate) fn open_handle(
    dir: &Path,
    dir_fd: &File,
    base: u64,
    data_end: u64,
    index: IndexKind,
) -> Result<Arc<SegmentHandle>> {
    let name = segment::c_name(base, b"dat");
    let read = segment::open_at(dir_fd, &name, OpenMode::DirectRead)
        .map_err(segment_err("open", dir, base, "dat"))?;
    let index = match index {
        IndexKind::Live(n) => SegmentIndex::Live(LiveIndex::new(n)),
        IndexKind::OnDisk => SegmentIndex::OnDisk(OnceLock::new()),
    };
    Ok(Arc::new(SegmentHandle {
        base,
        end: AtomicU64::new(u64::MAX),
        data_end: AtomicU64::new(data_end),
        dat: read,
        index,
    }))
}

/// Reserves `bytes` for `file` so writes inside do not extend it; file systems without
/// `fallocate` (some network ones) simply grow the file as before.
pub(crate) fn reserve(file: &File, bytes: u64) -> std::io::Result<()> {
    let len = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: fallocate takes a descriptor we own and plain integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// An error mapper that builds the file's path only when there is an error.
pub(crate) fn segment_err<'a>(
    op: &'static str,
    dir: &'a Path,
    base: u64,
    ext: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: dir.join(format!("{base:020}.{ext}")),
        source,
    }
}

/// Whether this kernel's io_uring has `IORING_OP_FTRUNCATE` (Linux 6.9); probed once.
fn ftruncate_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(ring) = IoUring::new(2) else {
            return false;
        };
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::Ftruncate::CODE)
    })
}

/// The old segment of a roll, until it is sealed.
#[derive(Debug)]
pub(crate) struct Sealing {
    pub(crate) base: u64,
    pub(crate) end_seq: u64,
    /// `.dat` offset after its last record.
    pub(crate) data_end: u64,
    pub(crate) last_ts_ns: u64,
    pub(crate) handle: Arc<SegmentHandle>,
    dat: File,
    idx: Option<File>,
    idx_bytes: Vec<u8>,
    /// Seq up to which a completed sync covers it.
    pub(crate) synced_end: u64,
    entries: usize,
    last_record: Option<(u64, u64, u32)>,
    /// Operations of the seal chain still in flight (`None` before it starts).
    chain: Option<u32>,
}

/// The manifest, and its one slot write in flight.
#[derive(Debug)]
pub(crate) struct ManifestWriter {
    m: Manifest,
    file: File,
    buf: AlignedBuf,
    writing: Option<u64>,
    dirty: bool,
    durable_generation: u64,
}

impl ManifestWriter {
    pub(crate) fn new(m: Manifest, file: File) -> ManifestWriter {
        let durable_generation = m.generation;
        ManifestWriter {
            m,
            file,
            buf: AlignedBuf::new(SLOT_BYTES),
            writing: None,
            dirty: false,
            durable_generation,
        }
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        &self.m
    }

    /// Changes the manifest; returns the generation that will carry the change.
    pub(crate) fn update(&mut self, f: impl FnOnce(&mut Manifest)) -> u64 {
        f(&mut self.m);
        self.dirty = true;
        self.m.generation + 1
    }

    /// The newest generation known durable.
    pub(crate) fn durable_generation(&self) -> u64 {
        self.durable_generation
    }

    /// Writes the manifest if it changed and no write is in flight; returns the operations
    /// added.
    pub(crate) fn pump(&mut self, sq: &mut dyn Submit) -> std::io::Result<usize> {
        if self.writing.is_some() || !self.dirty {
            return Ok(0);
        }
        self.m.generation += 1;
        self.m.encode(self.buf.as_mut_slice());
        let write = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            self.buf.as_slice().as_ptr(),
            u32::try_from(SLOT_BYTES).expect("one block"),
        )
        .offset(self.m.slot_offset())
        .build()
        .user_data(op::tag(op::MANIFEST_WRITE, 0));
        let sync = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(op::tag(op::MANIFEST_SYNC, 0));
        let ops = push_linked(sq, write, true)? + push(sq, sync)?;
        self.writing = Some(self.m.generation);
        self.dirty = false;
        Ok(ops)
    }

    /// The slot write in flight is durable.
    pub(crate) fn on_synced(&mut self) {
        self.durable_generation = self.writing.take().expect("a manifest write in flight");
    }

    /// Writes the manifest now and waits (open, close, repair).
    pub(crate) fn write_now(&mut self, dir: &Path) -> Result<()> {
        assert!(self.writing.is_none(), "no slot write in flight");
        self.m.generation += 1;
        manifest::write_sync(dir, &self.file, &self.m)?;
        self.durable_generation = self.m.generation;
        self.dirty = false;
        Ok(())
    }
}

impl Log {
    /// Seals the active segment and starts a new one at `next_seq` (see the module docs).
    pub(crate) fn roll(&mut self) -> Result<()> {
        assert!(
            self.open_events == 0 && self.sealing.is_none(),
            "roll with staged records or a seal in flight"
        );
        let base = self.next_seq;
        let (dat, handle) =
            create_segment(&self.dir, &self.dir_fd, &self.cfg, base).map_err(|e| self.poison(e))?;
        let data_end = self.stages[self.open].end();
        let new_active = Active {
            base,
            dat,
            handle: handle.clone(),
            entries: 0,
            next_entry_at: 0,
            last_record: None,
            synced_end: base,
            dir_synced: false,
        };
        let old = std::mem::replace(&mut self.active, new_active);
        old.handle.end.store(base, Ordering::Release);
        self.sealing = Some(Sealing {
            base: old.base,
            end_seq: base,
            data_end,
            last_ts_ns: self.last_ts_ns,
            handle: old.handle,
            dat: old.dat,
            idx: None,
            idx_bytes: Vec::new(),
            synced_end: old.synced_end,
            entries: old.entries,
            last_record: old.last_record,
            chain: None,
        });
        self.dir_sync_queued = true;
        self.warm.reset();
        let map = self.view.map();
        let mut segments = map.segments.clone();
        segments.push(handle);
        self.view.publish_map(SegmentMap {
            first_seq: map.first_seq,
            segments,
            gaps: map.gaps.clone(),
        });
        self.stage_segment_header();
        tracing::debug!(shard = self.cfg.shard, base, "log segment rolled");
        Ok(())
    }

    /// Queues the directory fsync a new segment needs, before its first write.
    pub(crate) fn queue_dir_sync(&mut self, sq: &mut dyn Submit) -> Result<()> {
        if !self.dir_sync_queued {
            return Ok(());
        }
        let entry = opcode::Fsync::new(types::Fd(self.dir_fd.as_raw_fd()))
            .build()
            .user_data(op::tag(op::DIR_SYNC, 0));
        let n = push(sq, entry).map_err(|e| io_err("fsync directory", &self.dir)(e))?;
        self.ops_in_flight += n;
        self.dir_sync_queued = false;
        Ok(())
    }

    /// Starts the seal chain once every write to the old segment completed.
    pub(crate) fn continue_sealing(&mut self, sq: &mut dyn Submit) -> Result<()> {
        let due = (self.sealing.as_ref())
            .is_some_and(|s| s.chain.is_none() && self.written_end >= s.end_seq);
        if !due {
            return Ok(());
        }
        // Once per roll: the allocations below are not per batch.
        let dir = self.dir.clone();
        let s = self.sealing.as_mut().expect("checked above");
        s.idx_bytes = sealed_index_bytes(s);
        let idx_path = segment::idx_path(&dir, s.base);
        let idx = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&idx_path)
            .map_err(io_err("create", &idx_path))?;
        let mut ops = 0;
        let dat = types::Fd(s.dat.as_raw_fd());
        let sync = opcode::Fsync::new(dat)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(op::tag(op::SEAL_SYNC, 0));
        let failed = |e| io_err("submit seal", &dir)(e);
        if ftruncate_supported() {
            let cut = opcode::Ftruncate::new(dat, s.data_end)
                .build()
                .user_data(op::tag(op::SEAL_TRUNCATE, 0));
            ops += push_linked(sq, cut, true).map_err(failed)?;
        } else {
            s.dat
                .set_len(s.data_end)
                .map_err(segment_err("truncate", &dir, s.base, "dat"))?;
        }
        ops += push(sq, sync).map_err(failed)?;
        let fd = types::Fd(idx.as_raw_fd());
        let len = u32::try_from(s.idx_bytes.len()).expect("a sparse index is small");
        let write = opcode::Write::new(fd, s.idx_bytes.as_ptr(), len)
            .offset(0)
            .build()
            .user_data(op::tag(op::SEAL_INDEX_WRITE, 0));
        let idx_sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(op::tag(op::SEAL_INDEX_SYNC, 0));
        ops += push_linked(sq, write, true).map_err(failed)?;
        ops += push(sq, idx_sync).map_err(failed)?;
        s.idx = Some(idx);
        s.chain = Some(u32::try_from(ops).expect("four operations"));
        self.ops_in_flight += ops;
        Ok(())
    }

    /// Handles a completion of the seal chain; the last one seals the segment.
    pub(crate) fn on_seal_op(&mut self, tag: u64, res: i32) -> Result<()> {
        let s = self
            .sealing
            .as_mut()
            .expect("a seal op belongs to a sealing segment");
        let (what, ext, expected) = match op::kind(tag) {
            op::SEAL_TRUNCATE => ("truncate", "dat", 0),
            op::SEAL_SYNC => ("fdatasync", "dat", 0),
            op::SEAL_INDEX_WRITE => ("write", "idx", s.idx_bytes.len()),
            _ => ("fdatasync", "idx", 0),
        };
        if usize::try_from(res).ok() != Some(expected) {
            let path = self.dir.join(format!("{:020}.{ext}", s.base));
            return Err(op_error(what, path, res, expected));
        }
        if op::kind(tag) == op::SEAL_SYNC {
            s.synced_end = s.end_seq;
        }
        let left = s.chain.as_mut().expect("the chain started");
        *left -= 1;
        if *left > 0 {
            return Ok(());
        }
        let s = self.sealing.take().expect("sealing");
        self.sealed_done(&s);
        Ok(())
    }

    /// Handles the manifest's slot write and sync completions.
    pub(crate) fn on_manifest(&mut self, tag: u64, res: i32) -> Result<()> {
        let path = manifest::path(&self.dir);
        if op::kind(tag) == op::MANIFEST_WRITE {
            if usize::try_from(res).ok() != Some(SLOT_BYTES) {
                return Err(op_error("write", path, res, SLOT_BYTES));
            }
            return Ok(());
        }
        if res != 0 {
            return Err(op_error("fdatasync", path, res, 0));
        }
        self.manifest.on_synced();
        Ok(())
    }

    /// Writes the manifest if it changed.
    pub(crate) fn pump_manifest(&mut self, sq: &mut dyn Submit) -> Result<()> {
        let n = self
            .manifest
            .pump(sq)
            .map_err(|e| io_err("submit manifest write", &self.dir)(e))?;
        self.ops_in_flight += n;
        Ok(())
    }

    /// Seals the old segment with blocking calls (close, when its chain never started).
    pub(crate) fn seal_now(&mut self) -> Result<()> {
        let Some(s) = self.sealing.take() else {
            return Ok(());
        };
        let dir = &self.dir;
        s.dat
            .set_len(s.data_end)
            .and_then(|()| s.dat.sync_data())
            .map_err(segment_err("truncate and sync", dir, s.base, "dat"))?;
        let bytes = sealed_index_bytes(&s);
        let idx_path = segment::idx_path(dir, s.base);
        std::fs::write(&idx_path, &bytes)
            .and_then(|()| File::open(&idx_path)?.sync_all())
            .map_err(io_err("write", &idx_path))?;
        self.sealed_done(&s);
        Ok(())
    }

    /// The old segment is sealed (truncated, synced, indexed): readers see its final data
    /// end, and it joins the sealed list.
    fn sealed_done(&mut self, s: &Sealing) {
        s.handle.data_end.store(s.data_end, Ordering::Release);
        self.sealed.push(SealedSegment {
            base: s.base,
            end: s.end_seq,
            dat_bytes: s.data_end,
            last_ts_ns: s.last_ts_ns,
        });
    }
}

/// The `.idx` bytes of a sealed segment: its sparse entries and its last record.
fn sealed_index_bytes(s: &Sealing) -> Vec<u8> {
    let mut entries: Vec<IndexEntry> = match &s.handle.index {
        SegmentIndex::Live(live) => (0..s.entries).map(|i| live.slot(i)).collect(),
        SegmentIndex::OnDisk(_) => Vec::new(),
    };
    if let Some((seq, offset, len)) = s.last_record
        && entries.last().is_none_or(|e| e.seq != seq)
    {
        entries.push(IndexEntry { seq, offset, len });
    }
    encode_entries(&entries)
}

/// Encodes index entries back to back.
pub(crate) fn encode_entries(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = vec![0u8; entries.len() * INDEX_ENTRY_BYTES];
    for (e, dst) in entries.iter().zip(out.chunks_exact_mut(INDEX_ENTRY_BYTES)) {
        e.encode(dst);
    }
    out
}

/// Opens the active segment's `.dat` found on disk for appending.
pub(crate) fn open_active(dir: &Path, dir_fd: &File, cfg: &LogConfig, base: u64) -> Result<File> {
    let name = segment::c_name(base, b"dat");
    let dat = segment::open_at(dir_fd, &name, OpenMode::Append)
        .map_err(segment_err("open", dir, base, "dat"))?;
    if cfg.preallocate {
        reserve(&dat, cfg.segment_bytes).map_err(segment_err("fallocate", dir, base, "dat"))?;
    }
    Ok(dat)
}
