//! net-storage: RedEX, the per-shard append-only segment log of net.
//!
//! Each shard owns one [`Log`]: a directory of segments (`.dat` records, sparse `.idx`
//! entries) named by their first sequence number, and a `MANIFEST`. A batch of records is
//! encoded into an aligned stage and written with one direct write through the shard's
//! io_uring; an `fdatasync` linked behind it makes it durable (group commit), and the next
//! batch's write overlaps that sync. Readers on other threads read segments themselves
//! through a published [`LogView`]. Opening a log recovers its tail and refuses damage a crash
//! cannot explain.
//!
//! Codecs ([`record`], [`index`], [`segment`] headers, [`manifest`]) do no I/O; the [`Log`],
//! recovery and [`Reader`] own the files.

mod blocking;
mod buffer;
pub mod compaction;
mod dump;
mod error;
pub mod index;
mod lock;
mod log;
pub mod manifest;
mod reader;
pub mod record;
mod recovery;
mod repair;
mod retention;
mod roll;
pub mod scan;
pub mod segment;
mod stage;
mod uring;
pub mod verify;
mod view;
mod warm;

pub use buffer::{AlignedBuf, BLOCK_BYTES};
pub use error::{Result, StorageError};
/// The io_uring crate the log's [`Submit`] entries come from.
pub use io_uring;
pub use lock::{DirLock, LOCK_FILE_NAME};
pub use log::{
    Ack, AppendedBatch, AppendedRecord, Completed, Log, LogConfig, Push, SEGMENT_BYTES_MIN,
};
pub use reader::{READ_CHUNK_BYTES, READ_DEPTH, ReadBatch, Reader, StoredRecord};
pub use record::{ORIGIN_BYTES, Origin};
pub use recovery::Recovery;
pub use retention::{Retention, Swept};
pub use uring::{LOG_TAG_LIMIT, Ring, Submit, spread_workers};
pub use verify::{
    DumpOptions, DumpReport, RepairOptions, ShardReport, VerifyReport, dump, repair, verify,
};
pub use view::LogView;
