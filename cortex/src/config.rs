//! A cortex's configuration: strict JSON (an unknown field, a wrong type or an out-of-range
//! value is refused, naming the field), like the bus's own config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::CortexError;

/// What happens when a fold returns an error for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPolicy {
    /// The fold halts at the failing event and reports it; its watermark stays below it.
    #[default]
    Stop,
    /// The event is recorded as skipped (a count and the last skipped id) and folding goes on.
    Skip,
}

/// When and where snapshots are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Directory holding the fold's snapshots (`<dir>/shard-NNNN/`); created if missing.
    pub dir: PathBuf,
    /// Write a snapshot of a shard each time this many more events were folded there; `0`
    /// for never (only on request and on shutdown).
    #[serde(default = "SnapshotConfig::every_events_default")]
    pub every_events: u64,
    /// Write a snapshot of every shard at [`crate::Cortex::shutdown`].
    #[serde(default = "SnapshotConfig::on_shutdown_default")]
    pub on_shutdown: bool,
    /// Snapshots kept per shard (the newest); restore falls back to an older one when the
    /// newest is damaged. At least 2.
    #[serde(default = "SnapshotConfig::keep_default")]
    pub keep: usize,
}

impl SnapshotConfig {
    fn every_events_default() -> u64 {
        1_000_000
    }
    fn on_shutdown_default() -> bool {
        true
    }
    fn keep_default() -> usize {
        3
    }

    /// Snapshots in `dir`, with the defaults for the rest.
    pub fn in_dir(dir: impl Into<PathBuf>) -> SnapshotConfig {
        SnapshotConfig {
            dir: dir.into(),
            every_events: SnapshotConfig::every_events_default(),
            on_shutdown: SnapshotConfig::on_shutdown_default(),
            keep: SnapshotConfig::keep_default(),
        }
    }
}

/// A cortex's configuration (see the module docs and `docs/cortex.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CortexConfig {
    /// The fold's name: in the bus's consumer stats, the fold thread's name, and every
    /// snapshot's header (a snapshot of another fold is refused). 1 to 64 bytes.
    pub name: String,
    /// What a failing event does.
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Whether the fold runs inline on the shard thread while it keeps up (true), or always on
    /// its own thread, fed from the log (false: for a fold whose single event may take long,
    /// such as one that does I/O; inline, the budget is checked between events, so one slow
    /// event holds the shard for its whole duration).
    #[serde(default = "CortexConfig::inline_default")]
    pub inline: bool,
    /// How long a fold may run inline on the shard thread per batch, µs. Past it the shard
    /// moves on and the fold's own thread finishes the batch from the log (the fold lags, the
    /// shard never waits). 1 to 1,000,000.
    #[serde(default = "CortexConfig::inline_budget_us_default")]
    pub inline_budget_us: u64,
    /// Least time between two published versions of a shard's state while events keep
    /// coming, µs: a version costs the fold something (`FoldState::publish`: a clone, or for
    /// memories a catch-up of its second map), so publishing every batch of a busy shard
    /// costs the fold more than the readers gain. A version is published at the first batch end past the interval, and by
    /// the fold thread about one interval after the last batch when none follows: readers see
    /// an event's effect (and `wait_for_seq` returns) within about this long. 0: every batch.
    /// At most 1,000,000.
    #[serde(default = "CortexConfig::publish_interval_us_default")]
    pub publish_interval_us: u64,
    /// The fold thread's nice value (0 to 19; raised from the process's, never lowered): the
    /// thread that catches a lagging fold up competes with producers and shards for CPU, and
    /// at a lower priority it takes what ingest leaves, so a fold slower than ingest lags
    /// instead of slowing ingest down. 0 runs it at the process's priority.
    #[serde(default = "CortexConfig::fold_thread_nice_default")]
    pub fold_thread_nice: u8,
    /// Events per log read when catching up on the fold's own thread. 1 to 1,000,000.
    #[serde(default = "CortexConfig::catchup_read_events_default")]
    pub catchup_read_events: usize,
    /// Snapshots; none when absent.
    #[serde(default)]
    pub snapshot: Option<SnapshotConfig>,
}

impl CortexConfig {
    fn inline_default() -> bool {
        true
    }
    fn inline_budget_us_default() -> u64 {
        500
    }
    fn publish_interval_us_default() -> u64 {
        1000
    }
    fn fold_thread_nice_default() -> u8 {
        10
    }
    fn catchup_read_events_default() -> usize {
        8192
    }

    /// A config with this name and every default (policy `stop`, no snapshots).
    pub fn new(name: impl Into<String>) -> CortexConfig {
        CortexConfig {
            name: name.into(),
            on_error: ErrorPolicy::default(),
            inline: CortexConfig::inline_default(),
            inline_budget_us: CortexConfig::inline_budget_us_default(),
            publish_interval_us: CortexConfig::publish_interval_us_default(),
            fold_thread_nice: CortexConfig::fold_thread_nice_default(),
            catchup_read_events: CortexConfig::catchup_read_events_default(),
            snapshot: None,
        }
    }

    /// Parses and validates a JSON document.
    pub fn from_json(text: &str) -> Result<CortexConfig, CortexError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: CortexConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| CortexError::Config(format!("{}: {}", e.path(), e.inner())))?;
        de.end()
            .map_err(|e| CortexError::Config(format!("after the document: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<(), CortexError> {
        let bad = |field: &str, what: String| Err(CortexError::Config(format!("{field}: {what}")));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad(
                "name",
                format!("must be 1 to 64 bytes, is {}", self.name.len()),
            );
        }
        if self
            .name
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
        {
            return bad(
                "name",
                format!(
                    "{:?} may hold only ASCII letters, digits, '-', '_' and '.'",
                    self.name
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.inline_budget_us) {
            return bad(
                "inline_budget_us",
                format!("{} is outside 1..=1000000", self.inline_budget_us),
            );
        }
        if self.publish_interval_us > 1_000_000 {
            return bad(
                "publish_interval_us",
                format!("{} is above 1000000", self.publish_interval_us),
            );
        }
        if self.fold_thread_nice > 19 {
            return bad(
                "fold_thread_nice",
                format!("{} is outside 0..=19", self.fold_thread_nice),
            );
        }
        if !(1..=1_000_000).contains(&self.catchup_read_events) {
            return bad(
                "catchup_read_events",
                format!("{} is outside 1..=1000000", self.catchup_read_events),
            );
        }
        if let Some(s) = &self.snapshot {
            if s.keep < 2 || s.keep > 64 {
                return bad("snapshot.keep", format!("{} is outside 2..=64", s.keep));
            }
            if s.dir.as_os_str().is_empty() {
                return bad("snapshot.dir", "is empty".to_owned());
            }
        }
        Ok(())
    }
}
