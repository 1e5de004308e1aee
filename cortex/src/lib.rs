//! net-cortex: folds over a bus's log — state built event by event on each shard, with
//! honest watermarks, published to readers as immutable versions, snapshotted and restored —
//! and two folds built on it: per-origin watermarks and the memories model.
//!
//! A [`Fold`] is a function of the state and one event. [`Cortex::start`] runs it on every
//! shard of a [`net_engine::Bus`]: inline on the shard thread, right after each batch is
//! durable, while it keeps up; from the log on the fold's own thread when it does not (the
//! fold lags, the shard never waits). Readers on any thread load the latest published version
//! of a shard's state ([`Cortex::view`]) without a lock. The watermark
//! ([`Cortex::folded_through_seq`], [`Cortex::wait_for_seq`]) passes an event only once its
//! change landed or it was deliberately skipped. Snapshots pair a state with the sequence
//! number it was folded to, checksummed whole; restore loads the newest good one, falls back
//! when one is damaged, and replays only the log after it.
//!
//! `docs/cortex.md` is the user's guide: API, error policies, watermark semantics, snapshots
//! and restore, the memories event format and query semantics, watch bounds, panics.

mod codec;
mod config;
mod cortex;
mod error;
mod event;
mod fold;
mod lock;
pub mod memories;
mod runner;
mod snapshot;
pub mod watermark;

pub use codec::{ByteReader, put_bytes, put_u16, put_u32, put_u64};
pub use config::{CortexConfig, ErrorPolicy, SnapshotConfig};
pub use cortex::{Cortex, CortexShutdown, FoldShardStats, FoldStats, RestoreReport};
pub use error::{CortexError, DecodeError, FoldError, FoldFailure};
pub use event::FoldEvent;
pub use fold::{FnFold, Fold, FoldState, fold_fn};
pub use runner::{FoldStatus, FoldView};
pub use snapshot::{RejectedSnapshot, SnapshotInfo, read_snapshot};
