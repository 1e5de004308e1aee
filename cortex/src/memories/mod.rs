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
//! **State and publication.** The state is a plain hash map of flat records (keyed with xxh3
//! under a random seed per map, so ids chosen by an outside party cannot aim at one bucket;
//! short strings inline, longer ones shared), and a published version is that map shared with
//! readers as it is. The fold writes its own second map, caught up with the writes since the
//! version before (`store.rs`): a version costs the fold one more map write per event written
//! between publications, never a copy of the map. Events are read by a small scanner for the
//! usual shapes, with serde deciding anything else (`format.rs`). A stored memory allocates
//! nothing when its id, value and tag set are each at most 22 bytes; tags must not contain
//! NUL (the tag set is one string, NUL-separated).

mod format;
mod store;
mod text;
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
use format::{Kind, Op};
use store::{Map, Record, Store};
use text::Text;
use watch::WatchHub;

/// One live memory, as queries return it (a copy: it does not change when the state does).
#[derive(Debug, Clone)]
pub struct Memory {
    /// Its id.
    pub id: Arc<str>,
    /// Its version.
    pub version: u64,
    /// Its value: the JSON bytes exactly as sent (`value.get()`).
    pub value: Box<RawValue>,
    /// Its tags, sorted, without duplicates.
    pub tags: Vec<String>,
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
        self.tags.binary_search_by(|t| t.as_str().cmp(tag)).is_ok()
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
    /// Whether a memory with these tags and pin passes the filters.
    fn passes(&self, has_tag: impl Fn(&str) -> bool, pinned: bool) -> bool {
        let any = self.require_any_tag.as_deref().unwrap_or(&[]);
        let all = self.require_all_tags.as_deref().unwrap_or(&[]);
        (any.is_empty() || any.iter().any(|t| has_tag(t)))
            && all.iter().all(|t| has_tag(t))
            && self.pinned.is_none_or(|p| p == pinned)
    }

    /// Whether `m` passes the filters.
    pub fn matches(&self, m: &Memory) -> bool {
        self.passes(|t| m.has_tag(t), m.pinned)
    }
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
    records: Store,
    counts: MemoriesCounts,
}

impl MemoriesState {
    /// The live memory `id`, if any.
    pub fn get(&self, id: &str) -> Option<Memory> {
        let (key, r) = self.records.map().get_key_value(id)?;
        to_memory(key, r)
    }

    /// Whether `id` is deleted (has a tombstone), and at which version.
    pub fn deleted_version(&self, id: &str) -> Option<u64> {
        let r = self.records.get(id)?;
        (!r.live).then_some(r.version)
    }

    /// The memories passing `query`, sorted by id.
    pub fn query(&self, query: &Query) -> Vec<Memory> {
        let mut hits: Vec<(&Text, &Record)> = self
            .records
            .map()
            .iter()
            .filter(|(_, r)| r.live && query.passes(|t| r.has_tag(t), r.pinned))
            .collect();
        hits.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        if let Some(limit) = query.limit {
            hits.truncate(limit);
        }
        hits.into_iter()
            .filter_map(|(k, r)| to_memory(k, r))
            .collect()
    }

    /// What the events did so far.
    pub fn counts(&self) -> MemoriesCounts {
        self.counts
    }

    /// Ids with a record (live or deleted).
    pub fn ids(&self) -> usize {
        self.records.map().len()
    }

    /// Times the fold copied this shard's whole map instead of catching up its spare (a
    /// reader held the version before last across a publication, or none was published for
    /// long; see the module docs). Not part of the state: a restart counts from 0.
    pub fn map_copies(&self) -> u64 {
        self.records.copies()
    }
}

fn to_memory(id: &Text, r: &Record) -> Option<Memory> {
    if !r.live {
        return None;
    }
    Some(Memory {
        id: Arc::from(id.as_str()),
        version: r.version,
        // Checked as JSON when it came in (the event's parse, or the snapshot's decode).
        value: RawValue::from_string(r.value.to_string()).expect("a stored value is JSON"),
        tags: r.tags().map(str::to_owned).collect(),
        pinned: r.pinned,
        event: EventId {
            shard: ShardId(r.shard),
            seq: Seq(r.seq),
        },
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

/// Tags sorted, without duplicates, NUL-separated; sorts on the stack for up to 8 tags.
fn tag_text<'a>(tags: impl Iterator<Item = &'a str>) -> Text {
    let mut buf: [&str; 8] = [""; 8];
    let mut n = 0;
    let mut spill: Vec<&str> = Vec::new();
    for t in tags {
        if n < buf.len() {
            buf[n] = t;
            n += 1;
        } else {
            if spill.is_empty() {
                spill.extend_from_slice(&buf);
            }
            spill.push(t);
        }
    }
    let v: &mut [&str] = if spill.is_empty() {
        &mut buf[..n]
    } else {
        &mut spill
    };
    v.sort_unstable();
    if v.windows(2).all(|w| w[0] != w[1]) {
        return Text::join(v.iter().copied(), '\0');
    }
    let mut distinct = v.to_vec();
    distinct.dedup();
    Text::join(distinct.into_iter(), '\0')
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

    fn notify(&self, event: &FoldEvent<'_>, id: &str, kind: ChangeKind) {
        let shard = event.shard().0;
        self.hub.publish(
            || Change {
                shard,
                seq: event.seq(),
                ts_ns: event.ts_ns,
                id: Arc::from(id),
                kind,
            },
            event.seq(),
            event.ts_ns,
            shard,
        );
    }
}

/// The version an unversioned write gets: the record's + 1 (1 for none), or an error.
fn next_version(current: Option<&Record>, id: &str, event: EventId) -> Result<u64, FoldError> {
    match current {
        None => Ok(1),
        Some(r) => r.version.checked_add(1).ok_or_else(|| {
            FoldError::new(format!(
                "event {event}: memory {id:?}: version {} cannot be incremented (u64::MAX)",
                r.version
            ))
        }),
    }
}

/// `(live before, live after)` → the change in the live and tombstone counts.
fn recount(counts: &mut MemoriesCounts, before: Option<bool>, after_live: bool) {
    match before {
        Some(true) => counts.live -= 1,
        Some(false) => counts.tombstones -= 1,
        None => {}
    }
    if after_live {
        counts.live += 1;
    } else {
        counts.tombstones += 1;
    }
}

impl Memories {
    /// `stored` and `deleted`: the version rules, then the whole record replaced.
    fn write(
        &self,
        state: &mut MemoriesState,
        event: &FoldEvent<'_>,
        op: &Op<'_>,
    ) -> Result<(), FoldError> {
        let deleting = op.kind == Kind::Deleted;
        let current = state.records.get(&op.id);
        let version = match op.version {
            Some(v) => {
                let stale = current.is_some_and(|r| match (r.live, deleting) {
                    (true, true) => v < r.version,
                    _ => v <= r.version,
                });
                if stale {
                    state.counts.stale_ignored += 1;
                    return Ok(());
                }
                v
            }
            None => next_version(current, &op.id, event.id)?,
        };
        // Checks done; from here nothing fails.
        let before = current.map(|r| r.live);
        let (value, tags) = if deleting {
            (Text::EMPTY, Text::EMPTY)
        } else {
            (Text::new(op.value), tag_text(op.tags.iter()))
        };
        state.records.put(
            &op.id,
            Record {
                version,
                seq: event.seq(),
                ts_ns: event.ts_ns,
                shard: event.shard().0,
                live: !deleting,
                pinned: op.pinned && !deleting,
                value,
                tags,
            },
        );
        recount(&mut state.counts, before, !deleting);
        let kind = if deleting {
            ChangeKind::Deleted { version }
        } else {
            ChangeKind::Stored { version }
        };
        self.notify(event, &op.id, kind);
        Ok(())
    }

    /// `pin`, `unpin` and `tags`: a change to a live memory, keeping its version.
    fn change(&self, state: &mut MemoriesState, event: &FoldEvent<'_>, op: &Op<'_>) {
        let Some(current) = state.records.get(&op.id).filter(|r| r.live) else {
            state.counts.missed_targets += 1;
            return;
        };
        let (pinned, tags, kind) = match op.kind {
            Kind::Pin => (true, current.tags.clone(), ChangeKind::Pinned),
            Kind::Unpin => (false, current.tags.clone(), ChangeKind::Unpinned),
            _ => (
                current.pinned,
                tag_text(
                    current
                        .tags()
                        .chain(op.tags.iter())
                        .filter(|tag| !op.remove.contains(tag)),
                ),
                ChangeKind::Tagged,
            ),
        };
        let record = Record {
            seq: event.seq(),
            ts_ns: event.ts_ns,
            shard: event.shard().0,
            pinned,
            tags,
            ..current.clone()
        };
        state.records.put(&op.id, record);
        self.notify(event, &op.id, kind);
    }
}

impl Fold for Memories {
    type State = MemoriesState;

    fn apply(&mut self, state: &mut MemoriesState, event: &FoldEvent<'_>) -> Result<(), FoldError> {
        let op = Op::parse(event.payload)
            .map_err(|e| FoldError::new(format!("event {}: {}", event.id, e.message())))?;
        match op.kind {
            Kind::Stored | Kind::Deleted => self.write(state, event, &op)?,
            Kind::Pin | Kind::Unpin | Kind::Tags => self.change(state, event, &op),
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
        let map = self.records.map();
        put_u64(out, map.len() as u64);
        for (id, r) in map {
            put_bytes(out, id.as_bytes());
            put_u64(out, r.version);
            put_u16(out, r.shard);
            put_u64(out, r.seq);
            put_u64(out, r.ts_ns);
            if r.live {
                out.push(LIVE);
                out.push(u8::from(r.pinned));
                put_bytes(out, r.value.as_bytes());
                put_u64(out, r.tags().count() as u64);
                for t in r.tags() {
                    put_bytes(out, t.as_bytes());
                }
            } else {
                out.push(TOMBSTONE);
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
        let mut map = Map::with_capacity_and_hasher(n, store::IdHash::default());
        let (mut live_n, mut dead_n) = (0u64, 0u64);
        for i in 0..n {
            let id = r.str("id")?;
            let mut record = Record {
                version: r.u64("version")?,
                shard: r.u16("shard")?,
                seq: r.u64("seq")?,
                ts_ns: r.u64("ts")?,
                live: false,
                pinned: false,
                value: Text::EMPTY,
                tags: Text::EMPTY,
            };
            match r.u8("kind")? {
                TOMBSTONE => dead_n += 1,
                LIVE => {
                    live_n += 1;
                    record.live = true;
                    record.pinned = match r.u8("pinned")? {
                        0 => false,
                        1 => true,
                        b => {
                            return Err(DecodeError::new(format!(
                                "record {i} ({id:?}): pinned byte {b}"
                            )));
                        }
                    };
                    let value = r.str("value")?;
                    if let Err(e) = serde_json::from_str::<&RawValue>(value) {
                        return Err(DecodeError::new(format!(
                            "record {i} ({id:?}): value is not JSON: {e}"
                        )));
                    }
                    record.value = Text::new(value);
                    let t = r.count("tag count", 8)?;
                    let mut tags = Vec::with_capacity(t);
                    for _ in 0..t {
                        let tag = r.str("tag")?;
                        if tag.is_empty() || tag.contains('\0') {
                            return Err(DecodeError::new(format!(
                                "record {i} ({id:?}): tag {tag:?} is empty or holds NUL"
                            )));
                        }
                        tags.push(tag);
                    }
                    record.tags = tag_text(tags.into_iter());
                }
                k => {
                    return Err(DecodeError::new(format!(
                        "record {i} ({id:?}): unknown kind {k}"
                    )));
                }
            }
            if map.insert(Text::new(id), record).is_some() {
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
        Ok(MemoriesState {
            records: Store::from_map(map),
            counts,
        })
    }

    fn publish(&mut self) -> MemoriesState {
        MemoriesState {
            records: self.records.publish(),
            counts: self.counts,
        }
    }
}
