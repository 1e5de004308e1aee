//! The watermarking fold: the highest sequence number seen per origin.
//!
//! An event's origin is where it was first stored: for an event mirrored from another node,
//! `Event::origin`'s `(node, shard)` and the sequence number it has there; for a local event,
//! the shard that stored it and its sequence number here. The fold keeps, per origin, the
//! highest such number, and [`Watermarks::next`] is one past it: where a mirror resumes.
//!
//! The cap is `u64::MAX - 1`. A sequence number of `u64::MAX` is refused as an error (under
//! the cortex's policy: `stop` halts there, `skip` counts it), because "one past it" would
//! wrap to 0 — a resumed mirror would start again from the beginning — and the state is left
//! unchanged. No arithmetic here can wrap or panic.
//!
//! The state is a small map (one entry per origin), cloned whole at each published version.

use std::collections::HashMap;

use crate::codec::{ByteReader, put_u16, put_u64};
use crate::error::{DecodeError, FoldError};
use crate::event::FoldEvent;
use crate::fold::{Fold, FoldState};

/// The highest sequence number the fold accepts (`u64::MAX - 1`; see the module docs).
pub const SEQ_CAP: u64 = u64::MAX - 1;

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OriginKey {
    /// Stored first by this node's shard.
    Local {
        /// The shard.
        shard: u16,
    },
    /// Mirrored from another node's shard.
    Remote {
        /// The origin node's id.
        node: u64,
        /// Its shard there.
        shard: u16,
    },
}

impl std::fmt::Display for OriginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginKey::Local { shard } => write!(f, "local shard {shard}"),
            OriginKey::Remote { node, shard } => write!(f, "node {node:016x} shard {shard}"),
        }
    }
}

/// The watermarks of one shard's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    highest: HashMap<OriginKey, u64>,
}

impl Watermarks {
    /// The highest sequence number seen from `origin`.
    pub fn highest(&self, origin: OriginKey) -> Option<u64> {
        self.highest.get(&origin).copied()
    }

    /// One past the highest sequence number seen from `origin` (0 for none): never wraps,
    /// as the highest is at most [`SEQ_CAP`].
    pub fn next(&self, origin: OriginKey) -> u64 {
        self.highest(origin).map_or(0, |h| h + 1)
    }

    /// Every origin and its highest sequence number, sorted by origin.
    pub fn all(&self) -> Vec<(OriginKey, u64)> {
        let mut v: Vec<_> = self.highest.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort();
        v
    }

    /// Records `seq` from `origin`; refuses a number above the cap, leaving the state as it
    /// was.
    pub fn observe(&mut self, origin: OriginKey, seq: u64) -> Result<(), FoldError> {
        if seq > SEQ_CAP {
            return Err(FoldError::new(format!(
                "sequence number {seq} from {origin} is above the cap {SEQ_CAP} (u64::MAX - 1): \
                 one past it would wrap to 0"
            )));
        }
        let h = self.highest.entry(origin).or_insert(seq);
        *h = (*h).max(seq);
        Ok(())
    }
}

const LOCAL: u8 = 0;
const REMOTE: u8 = 1;

impl FoldState for Watermarks {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.highest.len() as u64);
        for (k, v) in self.all() {
            match k {
                OriginKey::Local { shard } => {
                    out.push(LOCAL);
                    put_u64(out, 0);
                    put_u16(out, shard);
                }
                OriginKey::Remote { node, shard } => {
                    out.push(REMOTE);
                    put_u64(out, node);
                    put_u16(out, shard);
                }
            }
            put_u64(out, v);
        }
    }

    fn decode(bytes: &[u8]) -> Result<Watermarks, DecodeError> {
        let mut r = ByteReader::new(bytes);
        let n = r.count("origin count", 19)?;
        let mut highest = HashMap::with_capacity(n);
        for i in 0..n {
            let kind = r.u8("origin kind")?;
            let node = r.u64("origin node")?;
            let shard = r.u16("origin shard")?;
            let seq = r.u64("highest seq")?;
            let key = match kind {
                LOCAL => OriginKey::Local { shard },
                REMOTE => OriginKey::Remote { node, shard },
                k => return Err(DecodeError::new(format!("origin {i}: unknown kind {k}"))),
            };
            if seq > SEQ_CAP {
                return Err(DecodeError::new(format!(
                    "origin {i}: seq {seq} is above the cap {SEQ_CAP}"
                )));
            }
            highest.insert(key, seq);
        }
        r.finish()?;
        Ok(Watermarks { highest })
    }
}

/// The watermarking fold (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct WatermarkFold;

impl Fold for WatermarkFold {
    type State = Watermarks;

    fn apply(&mut self, state: &mut Watermarks, event: &FoldEvent<'_>) -> Result<(), FoldError> {
        let (origin, seq) = match event.origin {
            Some(o) => (
                OriginKey::Remote {
                    node: o.node,
                    shard: o.shard,
                },
                o.seq,
            ),
            None => (
                OriginKey::Local {
                    shard: event.shard().0,
                },
                event.seq(),
            ),
        };
        state
            .observe(origin, seq)
            .map_err(|e| FoldError::new(format!("event {}: {}", event.id, e.message())))
    }
}
