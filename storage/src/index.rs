//! The `.idx` entry codec: one fixed-size entry per record of a segment, for random access by
//! sequence number without scanning `.dat`.
//!
//! Entry `i` of segment `base` describes record `base + i`:
//!
//! ```text
//! 0      8        16     20
//! | seq  | offset | len  | crc |
//! ```
//!
//! `offset` is the record's byte offset in `.dat`, `len` its total length (header and payload),
//! `crc` a CRC-32C over bytes 0..20 so that a torn or garbage entry is detected, never trusted.
//! The `.dat` file is the source of truth: recovery rebuilds `.idx` from it where they disagree.

/// Size of one index entry.
pub const INDEX_ENTRY_BYTES: usize = 24;

/// One decoded index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Sequence number of the record.
    pub seq: u64,
    /// Byte offset of the record in the segment's `.dat` file.
    pub offset: u64,
    /// Total record length (header and payload).
    pub len: u32,
}

impl IndexEntry {
    /// Encodes the entry into the first [`INDEX_ENTRY_BYTES`] of `dst`.
    pub fn encode(&self, dst: &mut [u8]) {
        let dst = &mut dst[..INDEX_ENTRY_BYTES];
        dst[0..8].copy_from_slice(&self.seq.to_le_bytes());
        dst[8..16].copy_from_slice(&self.offset.to_le_bytes());
        dst[16..20].copy_from_slice(&self.len.to_le_bytes());
        let crc = crc32c::crc32c(&dst[0..20]);
        dst[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and verifies an entry; `None` if it is short or its checksum fails.
    pub fn decode(src: &[u8]) -> Option<IndexEntry> {
        let src = src.get(..INDEX_ENTRY_BYTES)?;
        let crc = u32::from_le_bytes(src[20..24].try_into().ok()?);
        if crc != crc32c::crc32c(&src[0..20]) {
            return None;
        }
        Some(IndexEntry {
            seq: u64::from_le_bytes(src[0..8].try_into().ok()?),
            offset: u64::from_le_bytes(src[8..16].try_into().ok()?),
            len: u32::from_le_bytes(src[16..20].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(seq: u64, offset: u64, len: u32) {
            let e = IndexEntry { seq, offset, len };
            let mut buf = [0u8; INDEX_ENTRY_BYTES];
            e.encode(&mut buf);
            prop_assert_eq!(IndexEntry::decode(&buf), Some(e));
        }

        #[test]
        fn garbage_is_refused(mut buf in proptest::array::uniform24(any::<u8>()), flip in 0usize..24) {
            let e = IndexEntry { seq: 1, offset: 2, len: 3 };
            e.encode(&mut buf);
            buf[flip] ^= 0x10;
            prop_assert_eq!(IndexEntry::decode(&buf), None);
        }
    }

    #[test]
    fn zeroed_entry_is_not_valid() {
        assert_eq!(IndexEntry::decode(&[0u8; INDEX_ENTRY_BYTES]), None);
    }
}
