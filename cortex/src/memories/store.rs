//! The records of one shard's memories and how versions of them are published.
//!
//! **Two maps, swapped.** The fold writes a plain hash map that it owns alone (`map`). A
//! published version is that map shared (`Arc`) with readers, as it is: publishing costs a
//! reference count, whatever the map's size. The next write needs a map the fold owns alone
//! again; it takes the map it published the time before (`spare`) — readers have normally let
//! go of it by then: it was replaced a publication ago — and brings it up to date by
//! replaying the writes made since (`log`: each write's final record, copied). So a version
//! costs the fold one more map write per event written between publications, never a copy
//! of the map, and readers still hold whole immutable versions for as long as they like.
//!
//! When the spare is still held (a reader kept the version before last across a whole
//! publication, or a snapshot is still encoding it), or the log outgrew half the map (long
//! stretches without a publication, as in the replay at start), the fold copies the published
//! map instead: plain memory copies (records are flat, strings inline or shared), once.
//!
//! Invariant: when `spare` is `Some`, `spare` with `log` replayed in order equals `map`.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::text::Text;

/// One id's record (live or a tombstone). Flat: copying one is a memory copy (plus a reference
/// count for a string too long to be inline).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) version: u64,
    pub(crate) seq: u64,
    pub(crate) ts_ns: u64,
    pub(crate) shard: u16,
    /// `false`: deleted (a tombstone; `value` and `tags` are empty).
    pub(crate) live: bool,
    pub(crate) pinned: bool,
    /// The value's JSON text, exactly as sent.
    pub(crate) value: Text,
    /// The tags, sorted, distinct, NUL-separated.
    pub(crate) tags: Text,
}

impl Record {
    pub(crate) fn tags(&self) -> impl Iterator<Item = &str> + Clone {
        self.tags.split('\0').filter(|t| !t.is_empty())
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }
}

/// Hashes ids with xxh3 under a seed drawn at random per map, so that ids chosen by an outside
/// party cannot aim at one bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash {
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
pub(crate) struct IdHasher {
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

pub(crate) type Map = hashbrown::HashMap<Text, Record, IdHash>;

/// The records, as the fold writes them or as a published version holds them.
#[derive(Debug, Default)]
pub(crate) struct Store {
    map: Arc<Map>,
    /// The map published before `map` was (see the module docs), if it can still be caught up.
    spare: Option<Arc<Map>>,
    /// Writes since `spare`'s contents, in order.
    log: Vec<(Text, Record)>,
    /// Times the fold had to copy the map (no spare it could take).
    copies: u64,
}

impl Clone for Store {
    /// The same records; the clone's first write (and the original's next) copies them.
    fn clone(&self) -> Store {
        Store {
            map: self.map.clone(),
            spare: None,
            log: Vec::new(),
            copies: 0,
        }
    }
}

impl Store {
    pub(crate) fn from_map(map: Map) -> Store {
        Store {
            map: Arc::new(map),
            ..Store::default()
        }
    }

    pub(crate) fn map(&self) -> &Map {
        &self.map
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Record> {
        self.map.get(id)
    }

    /// A version for readers: this map, shared. The fold's next write takes another.
    pub(crate) fn publish(&mut self) -> Store {
        self.clone()
    }

    /// Stores `record` as `id`'s, replacing any.
    pub(crate) fn put(&mut self, id: &str, record: Record) {
        self.make_writable();
        let logging = self.spare.is_some();
        let map = Arc::get_mut(&mut self.map).expect("made writable just above");
        let key = match map.get_key_value_mut(id) {
            Some((key, slot)) => {
                let key = logging.then(|| key.clone());
                if let Some(key) = key {
                    self.log.push((key, record.clone()));
                }
                *slot = record;
                return self.bound_log();
            }
            None => Text::new(id),
        };
        if logging {
            self.log.push((key.clone(), record.clone()));
        }
        map.insert(key, record);
        self.bound_log();
    }

    /// Past half the map (plus some), replaying the log would cost about what copying the map
    /// does: stop logging, and copy at the next publication instead.
    fn bound_log(&mut self) {
        if self.log.len() > self.map.len() / 2 + 1024 {
            self.spare = None;
            self.log = Vec::new();
        }
    }

    /// Makes `map` the fold's alone: the spare caught up with the log, or a copy.
    fn make_writable(&mut self) {
        if Arc::get_mut(&mut self.map).is_some() {
            return;
        }
        let mut spare = self.spare.take();
        let fresh = match spare.as_mut().and_then(Arc::get_mut) {
            Some(m) => {
                for (key, record) in self.log.drain(..) {
                    match m.get_mut(key.as_str()) {
                        Some(slot) => *slot = record,
                        None => {
                            m.insert(key, record);
                        }
                    }
                }
                spare.expect("caught up just above")
            }
            None => {
                self.copies += 1;
                Arc::new(Map::clone(&self.map))
            }
        };
        self.log.clear();
        self.spare = Some(std::mem::replace(&mut self.map, fresh));
    }

    /// Times the fold copied the whole map.
    pub(crate) fn copies(&self) -> u64 {
        self.copies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64) -> Record {
        Record {
            version,
            seq: version,
            ts_ns: 0,
            shard: 0,
            live: true,
            pinned: false,
            value: Text::new("1"),
            tags: Text::EMPTY,
        }
    }

    fn versions(m: &Map) -> Vec<(String, u64)> {
        let mut v: Vec<_> = m.iter().map(|(k, r)| (k.to_string(), r.version)).collect();
        v.sort();
        v
    }

    #[test]
    fn published_versions_never_change_and_the_spare_is_reused_not_copied() {
        let mut s = Store::default();
        s.put("a", rec(1));
        let v1 = s.publish();
        s.put("a", rec(2));
        s.put("b", rec(1));
        assert_eq!(s.copies(), 1, "the first publication has no spare yet");
        let v2 = s.publish();
        drop(v1);
        s.put("c", rec(1));
        s.put("a", rec(3));
        let v3 = s.publish();
        drop(v2);
        s.put("b", rec(2));
        assert_eq!(s.copies(), 1, "later ones caught the spare up");
        assert_eq!(
            versions(v3.map()),
            [("a".into(), 3), ("b".into(), 1), ("c".into(), 1)]
        );
        assert_eq!(
            versions(s.map()),
            [("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]
        );
        // A reader still holding the version before last (v3, the spare) makes the fold copy.
        let v4 = s.publish();
        s.put("d", rec(1));
        assert_eq!(s.copies(), 2);
        assert_eq!(
            versions(v3.map()),
            [("a".into(), 3), ("b".into(), 1), ("c".into(), 1)]
        );
        assert_eq!(
            versions(v4.map()),
            [("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]
        );
        assert_eq!(s.map().len(), 4);
    }
}
