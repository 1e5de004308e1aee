//! Sources: reading a backend's streams back by cursor, and importing them into a bus.
//!
//! A [`SourceCursor`] names its backend and its format, and holds one position per shard
//! stream in that backend's own terms (a Redis stream entry id, a JetStream stream sequence).
//! Handing a Redis cursor to a JetStream source, or a local bus cursor to either, is an error
//! that says how to reset, never a silent restart from the beginning.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use net_engine::Origin;

use crate::error::AdapterError;

/// One event read from a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEvent {
    /// The shard of the bus that stored it (the stream it was read from).
    pub shard: u16,
    /// Its sequence number in that shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Where it came from, if it was mirrored into the bus that stored it.
    pub origin: Option<Origin>,
    /// The payload, byte for byte.
    pub payload: Bytes,
}

impl SourceEvent {
    /// The event id as the sinks write it: `{shard}:{seq}`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.shard, self.seq)
    }
}

/// The answer to a source poll.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourcePoll {
    /// Events in order within each shard.
    pub events: Vec<SourceEvent>,
    /// The cursor to poll with next; equal to the given one when nothing was returned.
    pub next: SourceCursor,
    /// Shards whose read failed, with the error; the other shards' events are returned.
    pub failed_shards: Vec<(u16, AdapterError)>,
    /// Shards held at an entry that cannot be decoded (reported here and in `failed_shards`
    /// on the poll after the one that returned the good entries before it). Their cursor
    /// stays at the bad entry until the operator moves it ([`SourceCursor::set`]).
    pub stalled_shards: Vec<u16>,
}

impl SourcePoll {
    /// An empty answer that echoes `cursor`.
    pub fn empty(cursor: &SourceCursor) -> SourcePoll {
        SourcePoll {
            events: Vec::new(),
            next: cursor.clone(),
            failed_shards: Vec::new(),
            stalled_shards: Vec::new(),
        }
    }
}

/// A backend's streams read by cursor.
pub trait StreamSource {
    /// `"redis"` or `"jetstream"`: the backend its cursors belong to.
    fn backend(&self) -> &'static str;

    /// Reads up to `limit` events after `cursor` (the limit is shaped with saturating
    /// arithmetic; every request runs under the command timeout). A cursor of another backend
    /// is refused with a fatal error that says how to reset.
    fn poll(
        &mut self,
        cursor: &SourceCursor,
        limit: usize,
    ) -> impl Future<Output = Result<SourcePoll, AdapterError>>;
}

const PREFIX: &str = "netsrc1";

/// A position in a backend's shard streams; see the module docs. Text form:
/// `netsrc1:{backend}:{shard}={position},{shard}={position}` (shards ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCursor {
    backend: String,
    positions: BTreeMap<u16, String>,
}

impl SourceCursor {
    /// The start of every stream of `backend`.
    pub fn start(backend: &str) -> SourceCursor {
        SourceCursor {
            backend: backend.to_owned(),
            positions: BTreeMap::new(),
        }
    }

    /// The backend this cursor belongs to.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Checks the cursor belongs to `backend`, naming the mismatch and the way to reset.
    pub fn check_backend(&self, backend: &'static str) -> Result<(), AdapterError> {
        if self.backend == backend {
            return Ok(());
        }
        Err(AdapterError::fatal(
            backend,
            format!(
                "this cursor belongs to backend `{}`, not `{backend}`: positions do not carry \
                 over between backends; start again with SourceCursor::start(\"{backend}\") \
                 (and the source's dedup drops what was already imported)",
                self.backend
            ),
        ))
    }

    /// The position of `shard`'s stream (`None`: its start).
    pub fn position(&self, shard: u16) -> Option<&str> {
        self.positions.get(&shard).map(String::as_str)
    }

    /// Moves `shard`'s stream to `position` (the backend's own terms; checked by the backend
    /// when polled). `position` may not contain `,`, `=` or `:`.
    pub fn set(&mut self, shard: u16, position: &str) -> Result<(), AdapterError> {
        if position.is_empty()
            || position.contains([',', '=', ':'])
            || position.contains(char::is_whitespace)
        {
            return Err(AdapterError::fatal(
                "source",
                format!(
                    "cursor position `{position}` for shard {shard} is empty or contains `,`, `=`, `:` or a space"
                ),
            ));
        }
        self.positions.insert(shard, position.to_owned());
        Ok(())
    }

    /// The shards with a position, ascending.
    pub fn shards(&self) -> impl Iterator<Item = u16> + '_ {
        self.positions.keys().copied()
    }

    /// The text form.
    pub fn encode(&self) -> String {
        let body: Vec<String> = self
            .positions
            .iter()
            .map(|(s, p)| format!("{s}={p}"))
            .collect();
        format!("{PREFIX}:{}:{}", self.backend, body.join(","))
    }

    /// Parses the text form, naming what is wrong. A local bus cursor (`net1.`) is refused
    /// with the way to reset.
    pub fn decode(text: &str) -> Result<SourceCursor, AdapterError> {
        let bad = |what: String| Err(AdapterError::fatal("source", what));
        if text.starts_with("net1.") {
            return bad(
                "this is a cursor of a local bus (`net1.`), not of a backend source: \
                 start the source with SourceCursor::start(backend)"
                    .into(),
            );
        }
        let mut parts = text.splitn(3, ':');
        let (Some(prefix), Some(backend), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return bad(format!("expected `{PREFIX}:<backend>:<positions>`"));
        };
        if prefix != PREFIX {
            return bad(format!(
                "expected prefix `{PREFIX}` (source cursor format 1), found `{prefix}`"
            ));
        }
        if backend.is_empty() || !backend.bytes().all(|b| b.is_ascii_lowercase()) {
            return bad(format!("backend `{backend}` is not a lowercase name"));
        }
        let mut cursor = SourceCursor::start(backend);
        if body.is_empty() {
            return Ok(cursor);
        }
        let mut prev: Option<u16> = None;
        for entry in body.split(',') {
            let Some((shard, pos)) = entry.split_once('=') else {
                return bad(format!("entry `{entry}` is not `shard=position`"));
            };
            let Ok(shard) = shard.parse::<u16>() else {
                return bad(format!("shard `{shard}` is not a number below 65536"));
            };
            if prev.is_some_and(|p| p >= shard) {
                return bad(format!("shard {shard} is out of order or repeated"));
            }
            prev = Some(shard);
            cursor.set(shard, pos)?;
        }
        Ok(cursor)
    }
}

impl fmt::Display for SourceCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The most recently seen event ids, to drop events read twice (a retried write that landed,
/// a stream written by an at-least-once producer). Its capacity is explicit: size it for
/// minutes of traffic (events/s × seconds), since an id older than the newest `capacity` is
/// forgotten. Ids are kept as 128-bit hashes (xxh3-128); insertion allocates nothing once the
/// set is full-sized.
#[derive(Debug)]
pub struct Dedup {
    capacity: usize,
    seen: HashSet<u128>,
    order: VecDeque<u128>,
    dropped: u64,
}

impl Dedup {
    /// A set remembering the newest `capacity` ids; zero is refused.
    pub fn new(capacity: usize) -> Result<Dedup, AdapterError> {
        if capacity == 0 {
            return Err(AdapterError::fatal(
                "source",
                "dedup capacity 0: it must hold minutes of traffic (events/s x seconds)",
            ));
        }
        Ok(Dedup {
            capacity,
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            dropped: 0,
        })
    }

    /// Records `id`; `false` if it was seen already (the event is a duplicate).
    pub fn insert(&mut self, id: &[u8]) -> bool {
        let h = xxhash_rust::xxh3::xxh3_128(id);
        if !self.seen.insert(h) {
            self.dropped += 1;
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(h);
        true
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it remembers nothing.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_name_what_is_wrong() {
        let mut c = SourceCursor::start("redis");
        c.set(3, "1700000000000-42").unwrap();
        c.set(0, "5-0").unwrap();
        let text = c.encode();
        assert_eq!(text, "netsrc1:redis:0=5-0,3=1700000000000-42");
        assert_eq!(SourceCursor::decode(&text).unwrap(), c);
        assert_eq!(
            SourceCursor::decode("netsrc1:jetstream:").unwrap(),
            SourceCursor::start("jetstream")
        );
        for (bad, says) in [
            ("net1.0000", "local bus"),
            ("netsrc2:redis:", "format 1"),
            ("netsrc1:redis", "expected"),
            ("netsrc1:Redis:", "lowercase"),
            ("netsrc1:redis:3=1,1=2", "out of order"),
            ("netsrc1:redis:1=2,1=3", "out of order"),
            ("netsrc1:redis:x=1", "not a number"),
            ("netsrc1:redis:70000=1", "not a number"),
            ("netsrc1:redis:1", "shard=position"),
            ("netsrc1:redis:1=", "empty"),
        ] {
            let err = SourceCursor::decode(bad).unwrap_err();
            assert!(err.message.contains(says), "{bad}: {err}");
        }
        let err = c.check_backend("jetstream").unwrap_err();
        assert!(err.message.contains("start again"), "{err}");
        assert!(c.check_backend("redis").is_ok());
    }

    #[test]
    fn dedup_remembers_exactly_its_capacity() {
        assert!(Dedup::new(0).is_err());
        let mut d = Dedup::new(3).unwrap();
        assert!(d.insert(b"0:1") && d.insert(b"0:2") && d.insert(b"0:3"));
        assert!(!d.insert(b"0:1"), "a repeat within the capacity is dropped");
        assert!(d.insert(b"0:4"), "a fourth id evicts the oldest");
        assert!(d.insert(b"0:1"), "the oldest was forgotten");
        assert_eq!((d.len(), d.duplicates()), (3, 1));
    }
}
