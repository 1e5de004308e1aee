//! net-storage: RedEX, the per-shard append-only segment log of net.
//!
//! Each shard owns one [`Log`]: a directory of segments (`.dat` records, `.idx` entries), named
//! by their first sequence number. A batch of records is encoded into an aligned stage and
//! appended with one direct write per file through the shard's own io_uring, so appending
//! allocates nothing and makes no syscall per record. Opening a log recovers its tail.
//!
//! Codecs ([`record`], [`index`], [`segment`] headers) do no I/O; the [`Log`] and recovery own
//! the files.

mod buffer;
pub mod compaction;
mod error;
pub mod index;
mod lock;
mod log;
pub mod record;
mod recovery;
mod retention;
pub mod segment;
mod stage;
mod uring;
pub mod verify;

pub use buffer::{AlignedBuf, BLOCK_BYTES};
pub use error::{Result, StorageError};
pub use lock::{DirLock, LOCK_FILE_NAME};
pub use log::{Log, LogConfig, Push, SEGMENT_BYTES_MIN, StoredRecord, Written};
pub use recovery::Recovery;
pub use retention::{Retention, Swept};
pub use verify::{DumpOptions, DumpReport, ShardReport, VerifyReport, dump, repair, verify};
