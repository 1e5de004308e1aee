//! Memories: a tagged key/value model driven by events.
//!
//! Each memory has an id, a version, a JSON value (kept as the exact bytes sent), a set of
//! tags and a pinned flag. Events (`format.rs` has the format) store, delete, pin, unpin and
//! retag memories. The rules, which make replaying the same log always give the same state:
//!
//! - **Upsert is symmetric.** `stored` replaces the whole memory — value, tags, pinned (false
//!   when absent) — so the result is the same whether the id existed or not. Nothing of an
//!   earlier version leaks into it.
//! - **Versions decide, when given.** A `stored` with `version: v` applies only if the id has
//!   no record or `v` is greater than the record's version (live or deleted); otherwise it is
//!   stale and ignored (counted in `stale_ignored`). A `deleted` with `version: v` applies if
//!   the id has no record, or `v` is at least a live record's version, or greater than a
//!   tombstone's.
//! - **The log's order decides otherwise.** A `stored` or `deleted` without a version always
//!   applies, at version `previous + 1` (1 for an id never seen). Going past `u64::MAX` is an
//!   error, under the cortex's policy, and changes nothing.
//! - **Deletes leave tombstones.** A deleted id keeps its version, so `stored v3 → deleted →
//!   stored v3` (or any `v ≤` the tombstone's) does not resurrect it; only a newer version
//!   does. Tombstones are kept for good (bounded by the ids ever used).
//! - `pin`, `unpin` and `tags` change a live memory and keep its version; on an id that is
//!   not live they change nothing (counted in `missed_targets`). `tags` computes
//!   `(tags ∪ add) \ remove`. Tags are a set: stored sorted, without duplicates.
//! - A payload that is not a memories event (bad JSON, unknown operation or field, empty id or
//!   tag) is an error under the cortex's policy (`stop` or `skip`) and changes nothing.
//!
//! **Shards.** Each shard folds its own events into its own state. Send every event of one
//! memory with its id as the key, so they land on one shard, in order. [`query`] and [`get`]
//! read every shard's published version; if one id lives on several shards, the record with
//! the highest version wins (then the latest timestamp).
//!
//! **Queries** filter by tags: `require_any_tag` (at least one of them) and
//! `require_all_tags` (every one of them). An empty list means "no filter", exactly like
//! `None`, in both: `Some(vec![])` never filters everything out. Results are sorted by id.
//!
//! **State and publication.** The state is an `imbl` persistent hash map of `Arc`'d records:
//! publishing a version at the end of a batch clones the map's root, whatever its size, and
//! the next writes copy only the paths they change.

mod format;
mod watch;

use std::sync::Arc;

use net_engine::{EventId, Seq, ShardId};
use serde_json::value::RawValue;

pub use watch::{Change, ChangeKind, Notice, WatchRange, WatchSpec, Watcher};

use crate::codec::{ByteReader, put_bytes, put_u16, put_u64};
use crate::error::{DecodeError, FoldError};
use crate::event::FoldEvent;
use crate::fold::{Fold, FoldState};
use crate::runner::FoldView;
use format::Op;
use watch::WatchHub;

/// One live memory, as queries return it.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Its id.
    pub id: Arc<str>,
    /// Its version.
    pub version: u64,
    /// Its value: the JSON bytes exactly as sent (`value.get()`).
    pub value: Arc<RawValue>,
    /// Its tags, sorted, without duplicates.
    pub tags: Arc<[Arc<str>]>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// The event that last changed it.
    pub event: EventId,
    /// That event's timestamp.
    pub ts_ns: u64,
}

impl PartialEq for Memory {
    /// Equal fields, the value compared byte for byte.
    fn eq(&self, other: &Memory) -> bool {
        self.id == other.id
            && self.version == other.version
            && self.value.get() == other.value.get()
            && self.tags == other.tags
            && self.pinned == other.pinned
            && self.event == other.event
            && self.ts_ns == other.ts_ns
    }
}

impl Eq for Memory {}

impl Memory {
    /// Whether it has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.binary_search_by(|t| (**t).cmp(tag)).is_ok()
    }
}

/// A query over memories (see the module docs for the filter semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// At least one of these tags; `None` or empty: no filter.
    pub require_any_tag: Option<Vec<String>>,
    /// Every one of these tags; `None` or empty: no filter.
    pub require_all_tags: Option<Vec<String>>,
    /// Only pinned (`Some(true)`) or only unpinned (`Some(false)`) memories.
    pub pinned: Option<bool>,
    /// At most this many results (after sorting by id).
    pub limit: Option<usize>,
}

impl Query {
    /// Whether `m` passes the filters.
    pub fn matches(&self, m: &Memory) -> bool {
        let any = self.require_any_tag.as_deref().unwrap_or(&[]);
        let all = self.require_all_tags.as_deref().unwrap_or(&[]);
        (any.is_empty() || any.iter().any(|t| m.has_tag(t)))
            && all.iter().all(|t| m.has_tag(t))
            && self.pinned.is_none_or(|p| p == m.pinned)
    }
}

#[derive(Debug, Clone)]
struct Live {
    value: Arc<RawValue>,
    tags: Arc<[Arc<str>]>,
    pinned: bool,
}

#[derive(Debug, Clone)]
struct Record {
    version: u64,
    event: EventId,
    ts_ns: u64,
    /// `None`: deleted (a tombstone).
    live: Option<Live>,
}

/// Counts of what the events did (part of the state: a replay gives the same counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoriesCounts {
    /// Live memories.
    pub live: u64,
    /// Deleted ids (tombstones).
    pub tombstones: u64,
    /// `stored`/`deleted` events ignored as older than the record's version.
    pub stale_ignored: u64,
    /// `pin`/`unpin`/`tags` events on an id that was not live.
    pub missed_targets: u64,
}

/// One shard's memories.
#[derive(Debug, Clone, Default)]
pub struct MemoriesState {
    records: imbl::HashMap<Arc<str>, Arc<Record>>,
    counts: MemoriesCounts,
}

impl MemoriesState {
    /// The live memory `id`, if any.
    pub fn get(&self, id: &str) -> Option<Memory> {
        let (k, r) = self.records.get_key_value(id)?;
        to_memory(k, r)
    }

    /// Whether `id` is deleted (has a tombstone), and at which version.
    pub fn deleted_version(&self, id: &str) -> Option<u64> {
        let r = self.records.get(id)?;
        r.live.is_none().then_some(r.version)
    }

    /// The memories passing `query`, sorted by id.
    pub fn query(&self, query: &Query) -> Vec<Memory> {
        let mut out: Vec<Memory> = self
            .records
            .iter()
            .filter_map(|(k, r)| to_memory(k, r))
            .filter(|m| query.matches(m))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(limit) = query.limit {
            out.truncate(limit);
        }
        out
    }

    /// What the events did so far.
    pub fn counts(&self) -> MemoriesCounts {
        self.counts
    }

    /// Ids with a record (live or deleted).
    pub fn ids(&self) -> usize {
        self.records.len()
    }
}

fn to_memory(id: &Arc<str>, r: &Record) -> Option<Memory> {
    let live = r.live.as_ref()?;
    Some(Memory {
        id: id.clone(),
        version: r.version,
        value: live.value.clone(),
        tags: live.tags.clone(),
        pinned: live.pinned,
        event: r.event,
        ts_ns: r.ts_ns,
    })
}

/// Whichever of two records of one id wins across shards.
fn newer(a: &Memory, b: &Memory) -> bool {
    (a.version, a.ts_ns) > (b.version, b.ts_ns)
}

/// The live memory `id`, from every shard's published version.
pub fn get(views: &[FoldView<MemoriesState>], id: &str) -> Option<Memory> {
    views
        .iter()
        .filter_map(|v| v.state().get(id))
        .reduce(|a, b| if newer(&b, &a) { b } else { a })
}

/// The memories passing `query` over every shard's published version, sorted by id.
pub fn query(views: &[FoldView<MemoriesState>], query: &Query) -> Vec<Memory> {
    let unlimited = Query {
        limit: None,
        ..query.clone()
    };
    let mut all: Vec<Memory> = views
        .iter()
        .flat_map(|v| v.state().query(&unlimited))
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| b.version.cmp(&a.version)));
    all.dedup_by(|later, first| {
        if later.id != first.id {
            return false;
        }
        if newer(later, first) {
            std::mem::swap(later, first);
        }
        true
    });
    if let Some(limit) = query.limit {
        all.truncate(limit);
    }
    all
}

/// A sorted, duplicate-free tag set.
fn tag_set<'a>(tags: impl Iterator<Item = &'a str>) -> Arc<[Arc<str>]> {
    let mut v: Vec<&str> = tags.collect();
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(Arc::from).collect()
}

/// The memories fold (see the module docs). Clones share their watches.
#[derive(Debug, Clone, Default)]
pub struct Memories {
    hub: Arc<WatchHub>,
}

impl Memories {
    /// A memories fold with no watches.
    pub fn new() -> Memories {
        Memories::default()
    }

    /// Starts a watch (see `watch`: strict bounds, bounded queue, missed counts). Works for
    /// the fold given to the cortex and every clone of it.
    pub fn watch(&self, spec: WatchSpec) -> Watcher {
        self.hub.add(spec)
    }

    fn notify(&self, event: &FoldEvent<'_>, id: &Arc<str>, kind: ChangeKind) {
        let shard = event.shard().0;
        self.hub.publish(
            || Change {
                shard,
                seq: event.seq(),
                ts_ns: event.ts_ns,
                id: id.clone(),
                kind,
            },
            event.seq(),
            event.ts_ns,
            shard,
        );
    }
}

/// The version an unversioned write gets: the record's + 1 (1 for none), or an error.
fn next_version(current: Option<&Record>, id: &str) -> Result<u64, FoldError> {
    match current {
        None => Ok(1),
        Some(r) => r.version.checked_add(1).ok_or_else(|| {
            FoldError::new(format!(
                "memory {id:?}: version {} cannot be incremented (u64::MAX)",
                r.version
            ))
        }),
    }
}

impl Fold for Memories {
    type State = MemoriesState;

    fn apply(&mut self, state: &mut MemoriesState, event: &FoldEvent<'_>) -> Result<(), FoldError> {
        let op = Op::parse(event.payload)
            .map_err(|e| FoldError::new(format!("event {}: {}", event.id, e.message())))?;
        let at = EventId {
            shard: event.shard(),
            seq: Seq(event.seq()),
        };
        let ts_ns = event.ts_ns;
        match op {
            Op::Stored(s) => {
                let current = state.records.get_key_value(&*s.id);
                let version = match s.version {
                    Some(v) => {
                        if current.is_some_and(|(_, r)| v <= r.version) {
                            state.counts.stale_ignored += 1;
                            return Ok(());
                        }
                        v
                    }
                    None => next_version(current.map(|(_, r)| &**r), &s.id)
                        .map_err(|e| FoldError::new(format!("event {}: {e}", event.id)))?,
                };
                // Checks done; from here nothing fails.
                let id: Arc<str> = current.map_or_else(|| Arc::from(&*s.id), |(k, _)| k.clone());
                let was_live = current.map(|(_, r)| r.live.is_some());
                let value: Box<RawValue> = s.value.to_owned();
                let record = Record {
                    version,
                    event: at,
                    ts_ns,
                    live: Some(Live {
                        value: Arc::from(value),
                        tags: tag_set(s.tags.iter().map(|t| &**t)),
                        pinned: s.pinned,
                    }),
                };
                state.records.insert(id.clone(), Arc::new(record));
                match was_live {
                    None => state.counts.live += 1,
                    Some(false) => {
                        state.counts.live += 1;
                        state.counts.tombstones -= 1;
                    }
                    Some(true) => {}
                }
                self.notify(event, &id, ChangeKind::Stored { version });
            }
            Op::Deleted(d) => {
                let current = state.records.get_key_value(&*d.id);
                let version = match d.version {
                    Some(v) => {
                        let stale = current.is_some_and(|(_, r)| match r.live {
                            Some(_) => v < r.version,
                            None => v <= r.version,
                        });
                        if stale {
                            state.counts.stale_ignored += 1;
                            return Ok(());
                        }
                        v
                    }
                    None => next_version(current.map(|(_, r)| &**r), &d.id)
                        .map_err(|e| FoldError::new(format!("event {}: {e}", event.id)))?,
                };
                let id: Arc<str> = current.map_or_else(|| Arc::from(&*d.id), |(k, _)| k.clone());
                let was_live = current.map(|(_, r)| r.live.is_some());
                state.records.insert(
                    id.clone(),
                    Arc::new(Record {
                        version,
                        event: at,
                        ts_ns,
                        live: None,
                    }),
                );
                match was_live {
                    None => state.counts.tombstones += 1,
                    Some(true) => {
                        state.counts.live -= 1;
                        state.counts.tombstones += 1;
                    }
                    Some(false) => {}
                }
                self.notify(event, &id, ChangeKind::Deleted { version });
            }
            Op::Pin(ref p) | Op::Unpin(ref p) => {
                let pin = matches!(op, Op::Pin(_));
                let Some((id, r)) = state.records.get_key_value(&*p.id) else {
                    state.counts.missed_targets += 1;
                    return Ok(());
                };
                let Some(live) = &r.live else {
                    state.counts.missed_targets += 1;
                    return Ok(());
                };
                let id = id.clone();
                let record = Record {
                    event: at,
                    ts_ns,
                    live: Some(Live {
                        pinned: pin,
                        ..live.clone()
                    }),
                    ..(**r).clone()
                };
                state.records.insert(id.clone(), Arc::new(record));
                let kind = if pin {
                    ChangeKind::Pinned
                } else {
                    ChangeKind::Unpinned
                };
                self.notify(event, &id, kind);
            }
            Op::Tags(t) => {
                let Some((id, r)) = state.records.get_key_value(&*t.id) else {
                    state.counts.missed_targets += 1;
                    return Ok(());
                };
                let Some(live) = &r.live else {
                    state.counts.missed_targets += 1;
                    return Ok(());
                };
                let id = id.clone();
                let tags = tag_set(
                    live.tags
                        .iter()
                        .map(|t| &**t)
                        .chain(t.add.iter().map(|a| &**a))
                        .filter(|tag| !t.remove.iter().any(|r| r == tag)),
                );
                let record = Record {
                    event: at,
                    ts_ns,
                    live: Some(Live {
                        tags,
                        ..live.clone()
                    }),
                    ..(**r).clone()
                };
                state.records.insert(id.clone(), Arc::new(record));
                self.notify(event, &id, ChangeKind::Tagged);
            }
        }
        Ok(())
    }
}

const TOMBSTONE: u8 = 0;
const LIVE: u8 = 1;

impl FoldState for MemoriesState {
    fn encode(&self, out: &mut Vec<u8>) {
        let c = self.counts;
        for n in [c.live, c.tombstones, c.stale_ignored, c.missed_targets] {
            put_u64(out, n);
        }
        put_u64(out, self.records.len() as u64);
        for (id, r) in &self.records {
            put_bytes(out, id.as_bytes());
            put_u64(out, r.version);
            put_u16(out, r.event.shard.0);
            put_u64(out, r.event.seq.0);
            put_u64(out, r.ts_ns);
            match &r.live {
                None => out.push(TOMBSTONE),
                Some(live) => {
                    out.push(LIVE);
                    out.push(u8::from(live.pinned));
                    put_bytes(out, live.value.get().as_bytes());
                    put_u64(out, live.tags.len() as u64);
                    for t in live.tags.iter() {
                        put_bytes(out, t.as_bytes());
                    }
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<MemoriesState, DecodeError> {
        let mut r = ByteReader::new(bytes);
        let counts = MemoriesCounts {
            live: r.u64("live count")?,
            tombstones: r.u64("tombstone count")?,
            stale_ignored: r.u64("stale count")?,
            missed_targets: r.u64("missed count")?,
        };
        // An id (8 + 1), version, shard, seq, ts and the kind byte: at least 35 bytes.
        let n = r.count("record count", 35)?;
        let mut records = imbl::HashMap::new();
        let (mut live_n, mut dead_n) = (0u64, 0u64);
        for i in 0..n {
            let id: Arc<str> = Arc::from(r.str("id")?);
            let version = r.u64("version")?;
            let shard = r.u16("shard")?;
            let seq = r.u64("seq")?;
            let ts_ns = r.u64("ts")?;
            let live = match r.u8("kind")? {
                TOMBSTONE => {
                    dead_n += 1;
                    None
                }
                LIVE => {
                    live_n += 1;
                    let pinned = match r.u8("pinned")? {
                        0 => false,
                        1 => true,
                        b => {
                            return Err(DecodeError::new(format!(
                                "record {i} ({id:?}): pinned byte {b}"
                            )));
                        }
                    };
                    let value = r.str("value")?;
                    let value = RawValue::from_string(value.to_owned()).map_err(|e| {
                        DecodeError::new(format!("record {i} ({id:?}): value is not JSON: {e}"))
                    })?;
                    let t = r.count("tag count", 8)?;
                    let mut tags = Vec::with_capacity(t);
                    for _ in 0..t {
                        tags.push(r.str("tag")?);
                    }
                    Some(Live {
                        value: Arc::from(value),
                        tags: tag_set(tags.into_iter()),
                        pinned,
                    })
                }
                k => {
                    return Err(DecodeError::new(format!(
                        "record {i} ({id:?}): unknown kind {k}"
                    )));
                }
            };
            let record = Record {
                version,
                event: EventId {
                    shard: ShardId(shard),
                    seq: Seq(seq),
                },
                ts_ns,
                live,
            };
            if records.insert(id.clone(), Arc::new(record)).is_some() {
                return Err(DecodeError::new(format!(
                    "record {i}: id {id:?} appears twice"
                )));
            }
        }
        r.finish()?;
        if live_n != counts.live || dead_n != counts.tombstones {
            return Err(DecodeError::new(format!(
                "counts say {} live and {} deleted, the records hold {live_n} and {dead_n}",
                counts.live, counts.tombstones
            )));
        }
        Ok(MemoriesState { records, counts })
    }
}
