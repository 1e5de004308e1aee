//! The RedEX record codec: how one event is laid out in a segment's `.dat` file.
//!
//! A record is a fixed 32-byte little-endian header followed by the payload, byte for byte:
//!
//! ```text
//! 0      4      8       12          16     24       32
//! | len  | crc  | flags | committed | seq  | ts_ns  | payload (len bytes) |
//! ```
//!
//! `crc` is CRC-32C (Castagnoli, hardware-accelerated on x86-64 and aarch64) over header bytes
//! 8..32 and the payload, so a torn or garbled record, a record from another position (its `seq`
//! is covered) and a zeroed tail are all told apart from a valid one. An all-zero header is the
//! clean end of a segment (DMA writes pad the last block with zeros, and preallocated space
//! reads as zeros); anything else that fails the checksum is damage.
//!
//! Batch framing, for recovery: the first record of every batch (one write) carries
//! [`FLAG_BATCH_FIRST`] and, in `committed`, how many records of its segment (counted from the
//! segment's base) had been acknowledged under the fsync policy when the batch was submitted.
//! A crash can only tear the writes in flight, and those are never acknowledged; so damage to a
//! record that a later, intact batch declares committed is corruption of acknowledged data, not
//! a torn tail, and recovery refuses to cut it. The stamp is written when the batch is submitted
//! ([`restamp`]), not when its first record is staged, so it is as late (as strong) as it can be.
//! The codec does no I/O.

/// Size of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// The largest payload one record may carry (the header's `len` is a u32; keep far below it so
/// that a garbled length cannot make a reader allocate gigabytes).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;
/// `flags` bit of the first record of a batch; its `committed` field is meaningful.
pub const FLAG_BATCH_FIRST: u32 = 1;
/// Every flag bit this format defines; a record with others set is not valid.
pub const FLAGS_KNOWN: u32 = FLAG_BATCH_FIRST;

/// What the writer puts in a record's header besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Sequence number within the shard.
    pub seq: u64,
    /// Timestamp stamped by the shard, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// [`FLAG_BATCH_FIRST`] or 0.
    pub flags: u32,
    /// With [`FLAG_BATCH_FIRST`]: records of the segment acknowledged before this batch.
    pub committed: u32,
}

/// The decoded header of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// [`FLAG_BATCH_FIRST`] or 0.
    pub flags: u32,
    /// With [`FLAG_BATCH_FIRST`]: records of the segment acknowledged before this batch.
    pub committed: u32,
    /// Sequence number within the shard.
    pub seq: u64,
    /// Timestamp stamped by the shard, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
}

impl RecordHeader {
    /// Total bytes of the record (header and payload).
    pub fn record_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.len as usize
    }

    /// Whether this record starts a batch (and carries a `committed` stamp).
    pub fn is_batch_first(&self) -> bool {
        self.flags & FLAG_BATCH_FIRST != 0
    }
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the payload it announces.
    Incomplete,
    /// An all-zero header: the clean end of the written data.
    End,
    /// The header announces a payload larger than [`RECORD_PAYLOAD_BYTES_MAX`].
    TooLong(u32),
    /// The checksum does not match: a torn or damaged record.
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The checksum holds but flag bits this format does not define are set.
    Flags(u32),
}

/// Bytes needed to encode a record with `payload_len` bytes of payload.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Encodes one record at the start of `dst`.
///
/// # Panics
/// If `dst` is shorter than the record or the payload exceeds [`RECORD_PAYLOAD_BYTES_MAX`]
/// (callers size their buffers and check payloads first).
pub fn encode(dst: &mut [u8], meta: &RecordMeta, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "payload over the record maximum"
    );
    let total = record_bytes(payload.len());
    assert!(dst.len() >= total, "record buffer too small");
    assert_eq!(meta.flags & !FLAGS_KNOWN, 0, "unknown record flags");
    let len = u32::try_from(payload.len()).expect("checked against RECORD_PAYLOAD_BYTES_MAX");
    dst[0..4].copy_from_slice(&len.to_le_bytes());
    write_meta(dst, meta);
    dst[RECORD_HEADER_BYTES..total].copy_from_slice(payload);
    seal(dst, total);
}

/// Rewrites the `committed` stamp of the encoded record at the start of `dst` and its
/// checksum (once per batch: the payload is checksummed again, which for the batch's first
/// record costs less than carrying a partial CRC through every record would).
pub fn restamp(dst: &mut [u8], committed: u32) {
    let len = usize::try_from(u32_at(dst, 0)).expect("a u32 fits usize");
    dst[12..16].copy_from_slice(&committed.to_le_bytes());
    seal(dst, record_bytes(len));
}

fn write_meta(dst: &mut [u8], meta: &RecordMeta) {
    dst[8..12].copy_from_slice(&meta.flags.to_le_bytes());
    dst[12..16].copy_from_slice(&meta.committed.to_le_bytes());
    dst[16..24].copy_from_slice(&meta.seq.to_le_bytes());
    dst[24..32].copy_from_slice(&meta.ts_ns.to_le_bytes());
}

/// Writes the checksum of header bytes 8..32 and the payload of the record in `dst[..total]`.
fn seal(dst: &mut [u8], total: usize) {
    let crc = checksum(
        &dst[8..RECORD_HEADER_BYTES],
        &dst[RECORD_HEADER_BYTES..total],
    );
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

fn u32_at(src: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(src[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(src: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(src[at..at + 8].try_into().expect("8-byte slice"))
}

/// The payload length a header announces, if it is within the format's bounds; cheap
/// plausibility check for scanners (no checksum).
pub fn announced_len(src: &[u8]) -> Option<usize> {
    let len = src.get(..4).map(|b| u32_at(b, 0))?;
    usize::try_from(len)
        .ok()
        .filter(|&l| l <= RECORD_PAYLOAD_BYTES_MAX)
}

/// Decodes and verifies the record at the start of `src`.
pub fn decode(src: &[u8]) -> Result<RecordHeader, DecodeError> {
    if src.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Incomplete);
    }
    let head = &src[..RECORD_HEADER_BYTES];
    if head.iter().all(|&b| b == 0) {
        return Err(DecodeError::End);
    }
    let len = u32_at(head, 0);
    if len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::TooLong(len));
    }
    let total = record_bytes(len as usize);
    if src.len() < total {
        return Err(DecodeError::Incomplete);
    }
    let stored = u32_at(head, 4);
    let computed = checksum(&head[8..], &src[RECORD_HEADER_BYTES..total]);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let flags = u32_at(head, 8);
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Flags(flags));
    }
    Ok(RecordHeader {
        len,
        crc: stored,
        flags,
        committed: u32_at(head, 12),
        seq: u64_at(head, 16),
        ts_ns: u64_at(head, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(seq: u64, ts_ns: u64) -> RecordMeta {
        RecordMeta {
            seq,
            ts_ns,
            flags: 0,
            committed: 0,
        }
    }

    proptest! {
        #[test]
        fn round_trip(seq: u64, ts: u64, first: bool, committed: u32,
                      payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = vec![0u8; record_bytes(payload.len())];
            let flags = if first { FLAG_BATCH_FIRST } else { 0 };
            let m = RecordMeta { seq, ts_ns: ts, flags, committed };
            encode(&mut buf, &m, &payload);
            let h = decode(&buf).unwrap();
            prop_assert_eq!((h.seq, h.ts_ns, h.len as usize), (seq, ts, payload.len()));
            prop_assert_eq!((h.flags, h.committed, h.is_batch_first()), (flags, committed, first));
            prop_assert_eq!(&buf[RECORD_HEADER_BYTES..], &payload[..]);
        }

        #[test]
        fn restamping_keeps_the_record_valid(committed: u32,
                                             payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = vec![0u8; record_bytes(payload.len())];
            let m = RecordMeta { seq: 5, ts_ns: 6, flags: FLAG_BATCH_FIRST, committed: 0 };
            encode(&mut buf, &m, &payload);
            restamp(&mut buf, committed);
            let h = decode(&buf).unwrap();
            prop_assert_eq!(h.committed, committed);
            let mut fresh = vec![0u8; buf.len()];
            encode(&mut fresh, &RecordMeta { committed, ..m }, &payload);
            prop_assert_eq!(buf, fresh);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..64), bit in 0usize..8) {
            let mut buf = vec![0u8; record_bytes(payload.len())];
            encode(&mut buf, &meta(7, 9), &payload);
            let byte = (bit * 31 + payload.len()) % buf.len();
            buf[byte] ^= 1 << bit;
            prop_assert!(decode(&buf).is_err());
        }
    }

    #[test]
    fn zero_header_is_the_end_and_short_input_is_incomplete() {
        assert_eq!(decode(&[0u8; 64]), Err(DecodeError::End));
        assert_eq!(decode(&[1u8; 8]), Err(DecodeError::Incomplete));
        let mut buf = [0u8; 40];
        encode(&mut buf, &meta(1, 2), b"abcdefgh");
        assert_eq!(decode(&buf[..39]), Err(DecodeError::Incomplete));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_payload() {
        let mut buf = [0u8; 32];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&buf), Err(DecodeError::TooLong(u32::MAX)));
        assert_eq!(announced_len(&buf), None);
    }

    #[test]
    fn unknown_flags_are_refused_even_with_a_valid_checksum() {
        let mut buf = [0u8; 40];
        encode(&mut buf, &meta(1, 2), b"abcdefgh");
        buf[8] = 0x80;
        let crc = checksum(&buf[8..32], &buf[32..40]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf), Err(DecodeError::Flags(0x80)));
    }
}
