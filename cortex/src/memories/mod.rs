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
//! **State and publication.** The state is an `imbl` persistent hash map of `Arc`'d records
//! (keyed with xxh3 under a random seed per state, so ids chosen by an outside party cannot
//! aim at one bucket): publishing a version clones the map's root, whatever its size, and the
//! next writes copy only the paths they change. A stored memory costs three allocations (the
//! record, its value, its tag set) and a new id one more; tags must not contain NUL (the tag
//! set is one string, NUL-separated).

mod format;
mod watch;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use net_engine::{EventId, Seq, ShardId};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use watch::{Change, ChangeKind, Notice, WatchRange, WatchSpec, Watcher};

use crate::codec::{ByteReader, put_bytes, put_u16, put_u64};
use crate::error::{DecodeError, FoldError};
use crate::event::FoldEvent;
use crate::fold::{Fold, FoldState};
use crate::runner::FoldView;
use format::Op;
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

#[derive(Debug, Clone)]
struct Live {
    value: Box<RawValue>,
    /// Sorted, distinct, NUL-separated (one allocation for the whole set).
    tags: Box<str>,
    pinned: bool,
}

impl Live {
    fn tags(&self) -> impl Iterator<Item = &str> + Clone {
        self.tags.split('\0').filter(|t| !t.is_empty())
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }
}

/// One id's record, shared by every version of the map that holds it: the map's entries are
/// one pointer each, so a version's first write to a part of the map copies (and counts) one
/// pointer per entry there.
#[derive(Debug)]
struct Record {
    id: Arc<str>,
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

/// Hashes ids with xxh3 under a seed drawn at random per state.
#[derive(Debug, Clone, Copy)]
pub struct IdHash {
    seed: u64,
}

impl Default for IdHash {
    fn default() -> IdHash {
        IdHash {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x6e65_745f_6378_u64),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.seed }
    }
}

/// The hasher of [`IdHash`].
#[derive(Debug)]
pub struct IdHasher {
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.state = xxh3_64_with_seed(bytes, self.state);
    }
    fn write_u8(&mut self, b: u8) {
        self.state = (self.state ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.state
    }
}

/// A map entry: a record, hashed and compared by its id.
#[derive(Debug, Clone)]
struct Key(Arc<Record>);

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        (*self.0.id).hash(h);
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

type Records = imbl::GenericHashMap<Key, (), IdHash, imbl::shared_ptr::DefaultSharedPtr>;

/// One shard's memories.
#[derive(Debug, Clone, Default)]
pub struct MemoriesState {
    records: Records,
    counts: MemoriesCounts,
}

impl MemoriesState {
    /// The live memory `id`, if any.
    pub fn get(&self, id: &str) -> Option<Memory> {
        to_memory(self.record(id)?)
    }

    fn record(&self, id: &str) -> Option<&Arc<Record>> {
        self.records.get_key_value(id).map(|(k, _)| &k.0)
    }

    /// Whether `id` is deleted (has a tombstone), and at which version.
    pub fn deleted_version(&self, id: &str) -> Option<u64> {
        let r = self.record(id)?;
        r.live.is_none().then_some(r.version)
    }

    /// The memories passing `query`, sorted by id.
    pub fn query(&self, query: &Query) -> Vec<Memory> {
        let mut out: Vec<Memory> = self
            .records
            .keys()
            .map(|k| &k.0)
            .filter(|r| {
                r.live
                    .as_ref()
                    .is_some_and(|l| query.passes(|t| l.has_tag(t), l.pinned))
            })
            .filter_map(|r| to_memory(r))
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

fn to_memory(r: &Record) -> Option<Memory> {
    let live = r.live.as_ref()?;
    Some(Memory {
        id: r.id.clone(),
        version: r.version,
        value: live.value.clone(),
        tags: live.tags().map(str::to_owned).collect(),
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

/// Tags sorted, without duplicates, NUL-separated; sorts on the stack for up to 8 tags.
fn tag_text<'a>(tags: impl Iterator<Item = &'a str>) -> Box<str> {
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
    let mut out = String::with_capacity(v.iter().map(|t| t.len() + 1).sum());
    let mut last: Option<&str> = None;
    for t in v.iter() {
        if last == Some(*t) {
            continue;
        }
        if last.is_some() {
            out.push('\0');
        }
        out.push_str(t);
        last = Some(t);
    }
    out.into_boxed_str()
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
        id: &str,
        version: Option<u64>,
        live: impl FnOnce() -> Option<Live>,
        deleting: bool,
    ) -> Result<(), FoldError> {
        let at = event.id;
        let current = state.record(id).cloned();
        let current = current.as_deref();
        let version = match version {
            Some(v) => {
                let stale = current.is_some_and(|r| match (&r.live, deleting) {
                    (Some(_), true) => v < r.version,
                    _ => v <= r.version,
                });
                if stale {
                    state.counts.stale_ignored += 1;
                    return Ok(());
                }
                v
            }
            None => next_version(current, id, at)?,
        };
        // Checks done; from here nothing fails.
        let before = current.map(|r| r.live.is_some());
        let record = Arc::new(Record {
            id: current.map_or_else(|| Arc::from(id), |r| r.id.clone()),
            version,
            event: at,
            ts_ns: event.ts_ns,
            live: live(),
        });
        let after_live = record.live.is_some();
        state.records.insert(Key(record), ());
        recount(&mut state.counts, before, after_live);
        let kind = if deleting {
            ChangeKind::Deleted { version }
        } else {
            ChangeKind::Stored { version }
        };
        self.notify(event, id, kind);
        Ok(())
    }

    /// `pin`, `unpin` and `tags`: a change to a live memory, keeping its version.
    fn change(
        &self,
        state: &mut MemoriesState,
        event: &FoldEvent<'_>,
        id: &str,
        kind: ChangeKind,
        edit: impl FnOnce(&Live) -> Live,
    ) {
        let Some(record) = state.record(id).filter(|r| r.live.is_some()) else {
            state.counts.missed_targets += 1;
            return;
        };
        let live = record.live.as_ref().map(edit);
        let record = Arc::new(Record {
            id: record.id.clone(),
            event: event.id,
            ts_ns: event.ts_ns,
            live,
            version: record.version,
        });
        state.records.insert(Key(record), ());
        self.notify(event, id, kind);
    }
}

impl Fold for Memories {
    type State = MemoriesState;

    fn apply(&mut self, state: &mut MemoriesState, event: &FoldEvent<'_>) -> Result<(), FoldError> {
        let op = Op::parse(event.payload)
            .map_err(|e| FoldError::new(format!("event {}: {}", event.id, e.message())))?;
        match op {
            Op::Stored(s) => {
                let live = || {
                    Some(Live {
                        value: s.value.to_owned(),
                        tags: tag_text(s.tags.iter().map(|t| &**t)),
                        pinned: s.pinned,
                    })
                };
                self.write(state, event, &s.id, s.version, live, false)?;
            }
            Op::Deleted(d) => self.write(state, event, &d.id, d.version, || None, true)?,
            Op::Pin(p) => self.change(state, event, &p.id, ChangeKind::Pinned, |l| Live {
                pinned: true,
                ..l.clone()
            }),
            Op::Unpin(p) => self.change(state, event, &p.id, ChangeKind::Unpinned, |l| Live {
                pinned: false,
                ..l.clone()
            }),
            Op::Tags(t) => self.change(state, event, &t.id, ChangeKind::Tagged, |l| Live {
                tags: tag_text(
                    l.tags()
                        .chain(t.add.iter().map(|a| &**a))
                        .filter(|tag| !t.remove.iter().any(|r| r == tag)),
                ),
                value: l.value.clone(),
                pinned: l.pinned,
            }),
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
        for r in self.records.keys().map(|k| &k.0) {
            put_bytes(out, r.id.as_bytes());
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
                    put_u64(out, live.tags().count() as u64);
                    for t in live.tags() {
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
        let mut records = Records::default();
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
                        let tag = r.str("tag")?;
                        if tag.is_empty() || tag.contains('\0') {
                            return Err(DecodeError::new(format!(
                                "record {i} ({id:?}): tag {tag:?} is empty or holds NUL"
                            )));
                        }
                        tags.push(tag);
                    }
                    Some(Live {
                        value,
                        tags: tag_text(tags.into_iter()),
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
                id: id.clone(),
                version,
                event: EventId {
                    shard: ShardId(shard),
                    seq: Seq(seq),
                },
                ts_ns,
                live,
            };
            if records.insert(Key(Arc::new(record)), ()).is_some() {
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
