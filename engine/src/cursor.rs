//! The consumer cursor: for each shard, the next sequence number to read.
//!
//! A cursor is opaque to callers and serialises to a versioned string,
//! `net1.` followed by lowercase hex of: u16 count, then per shard (ascending, unique) a u16
//! shard id and a u64 next sequence number, little-endian. Shard ids are binary, so no textual
//! key like `"00"` can alias shard 0 (a v0.10 bug). The codec does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::SHARDS_MAX;
use crate::error::Error;
use crate::ids::{Seq, ShardId};

const PREFIX: &str = "net1.";

const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);

fn check_shard(shard: u16) -> Result<(), Error> {
    if usize::from(shard) >= SHARDS_MAX {
        return Err(Error::Cursor(format!(
            "shard {shard} is beyond the largest bus ({SHARDS_MAX} shards)"
        )));
    }
    Ok(())
}

/// A position in every shard of a bus. Shards absent from the cursor start at their first
/// retained event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    next: BTreeMap<u16, u64>,
}

impl Cursor {
    /// The beginning of every shard.
    pub fn start() -> Cursor {
        Cursor::default()
    }

    /// The next sequence number to read from `shard`.
    pub fn next_seq(&self, shard: ShardId) -> Seq {
        Seq(self.next.get(&shard.0).copied().unwrap_or(0))
    }

    /// Sets the next sequence number of `shard`. Shard ids at or above
    /// [`SHARDS_MAX`](crate::config::SHARDS_MAX) belong to no bus and are refused.
    pub fn set(&mut self, shard: ShardId, next: Seq) -> Result<(), Error> {
        check_shard(shard.0)?;
        self.next.insert(shard.0, next.0);
        Ok(())
    }

    /// The shards this cursor names.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.next.keys().map(|&s| ShardId(s))
    }

    /// The string form.
    pub fn encode(&self) -> String {
        // `set` and `decode` admit only ids below SHARDS_MAX, so the count fits a u16.
        let count = u16::try_from(self.next.len()).expect("at most SHARDS_MAX shards");
        let mut bytes = Vec::with_capacity(2 + self.next.len() * 10);
        bytes.extend_from_slice(&count.to_le_bytes());
        for (&shard, &seq) in &self.next {
            bytes.extend_from_slice(&shard.to_le_bytes());
            bytes.extend_from_slice(&seq.to_le_bytes());
        }
        let mut s = String::with_capacity(PREFIX.len() + bytes.len() * 2);
        s.push_str(PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses the string form, naming what is wrong.
    pub fn decode(text: &str) -> Result<Cursor, Error> {
        let bad = |what: String| Err(Error::Cursor(what));
        let Some(hex) = text.strip_prefix(PREFIX) else {
            return bad(format!("expected prefix `{PREFIX}` (cursor format v1)"));
        };
        if hex.len() % 2 != 0
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return bad("body is not lowercase hex of whole bytes".into());
        }
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex"))
            .collect();
        if bytes.len() < 2 {
            return bad("missing shard count".into());
        }
        let count = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        if bytes.len() != 2 + count * 10 {
            return bad(format!(
                "{} bytes for {count} shards, expected {}",
                bytes.len(),
                2 + count * 10
            ));
        }
        let mut next = BTreeMap::new();
        let mut prev: Option<u16> = None;
        for entry in bytes[2..].chunks_exact(10) {
            let shard = u16::from_le_bytes([entry[0], entry[1]]);
            let seq = u64::from_le_bytes(entry[2..10].try_into().expect("8 bytes"));
            check_shard(shard)?;
            if prev.is_some_and(|p| p >= shard) {
                return bad(format!("shard {shard} is out of order or repeated"));
            }
            prev = Some(shard);
            next.insert(shard, seq);
        }
        Ok(Cursor { next })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Cursor, Error> {
        Cursor::decode(s)
    }
}
