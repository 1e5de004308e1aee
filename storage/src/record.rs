//! The RedEX record codec: how one event is laid out in a segment's `.dat` file.
//!
//! A record is a fixed 32-byte little-endian header followed by its body (`len` bytes): the
//! payload, byte for byte, or, when the record carries [`FLAG_ORIGIN`], a 24-byte origin block
//! and then the payload:
//!
//! ```text
//! 0      4      8       12          16     24       32
//! | len  | crc  | flags | committed | seq  | ts_ns  | payload (len bytes) |
//! | len  | crc  | flags | committed | seq  | ts_ns  | origin (24 bytes) | payload (len - 24) |
//!
//! origin block (all little-endian):
//! 0       8      16      18            24
//! | node  | seq  | shard | reserved: 0 |
//! ```
//!
//! The origin block says where a record mirrored from another node's log came from (its node
//! id, shard and sequence number there: [`Origin`]). Its reserved bytes are zero; a record
//! whose block is cut short (`len` below [`ORIGIN_BYTES`]) or has non-zero reserved bytes is
//! not valid, even when its checksum holds.
//!
//! `crc` is CRC-32C (Castagnoli, hardware-accelerated on x86-64 and aarch64) over header bytes
//! 8..32 and the body (origin block included), so a torn or garbled record, a record from another position (its `seq`
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
/// The largest body one record may carry: its payload and, with [`FLAG_ORIGIN`], the origin
/// block (the header's `len` is a u32; keep far below it so that a garbled length cannot make a
/// reader allocate gigabytes).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;
/// `flags` bit of the first record of a batch; its `committed` field is meaningful.
pub const FLAG_BATCH_FIRST: u32 = 1;
/// `flags` bit of a record whose body starts with an [`ORIGIN_BYTES`] origin block.
pub const FLAG_ORIGIN: u32 = 2;
/// Every flag bit this format defines; a record with others set is not valid.
pub const FLAGS_KNOWN: u32 = FLAG_BATCH_FIRST | FLAG_ORIGIN;
/// Size of the origin block of a record with [`FLAG_ORIGIN`].
pub const ORIGIN_BYTES: usize = 24;

/// Where a mirrored record came from: the node, shard and sequence number it has in the log
/// it was copied from. Stored in the record's origin block (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The origin node's id.
    pub node: u64,
    /// The shard of the origin node that stored it.
    pub shard: u16,
    /// Its sequence number in that shard.
    pub seq: u64,
}

impl Origin {
    /// The origin block: `node u64 | seq u64 | shard u16 | 6 zero bytes`, little-endian.
    pub fn to_bytes(&self) -> [u8; ORIGIN_BYTES] {
        let mut b = [0u8; ORIGIN_BYTES];
        b[0..8].copy_from_slice(&self.node.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..18].copy_from_slice(&self.shard.to_le_bytes());
        b
    }

    /// Decodes the origin block at the start of `src`; `None` if `src` is shorter than
    /// [`ORIGIN_BYTES`] or the block's reserved bytes are not zero.
    pub fn decode(src: &[u8]) -> Option<Origin> {
        let block = src.get(..ORIGIN_BYTES)?;
        if block[18..].iter().any(|&b| b != 0) {
            return None;
        }
        Some(Origin::fields(block))
    }

    /// The fields of a block already checked (or written by this process): no reserved-byte
    /// check.
    ///
    /// # Panics
    /// If `block` is shorter than [`ORIGIN_BYTES`].
    pub(crate) fn fields(block: &[u8]) -> Origin {
        Origin {
            node: u64_at(block, 0),
            seq: u64_at(block, 8),
            shard: u16::from_le_bytes(block[16..18].try_into().expect("2-byte slice")),
        }
    }
}

/// Splits a body that starts with an origin block into the origin and the payload after it;
/// `None` if the block is cut short or its reserved bytes are not zero.
pub fn split_origin(body: &[u8]) -> Option<(Origin, &[u8])> {
    Some((Origin::decode(body)?, &body[ORIGIN_BYTES..]))
}

/// What the writer puts in a record's header besides the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Sequence number within the shard.
    pub seq: u64,
    /// Timestamp stamped by the shard, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// [`FLAG_BATCH_FIRST`] or 0 ([`FLAG_ORIGIN`] is set by [`encode_with_origin`]).
    pub flags: u32,
    /// With [`FLAG_BATCH_FIRST`]: records of the segment acknowledged before this batch.
    pub committed: u32,
}

/// The decoded header of one record (and its origin block, if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Body length in bytes: the payload and, with [`FLAG_ORIGIN`], the origin block.
    pub len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// [`FLAG_BATCH_FIRST`] and [`FLAG_ORIGIN`] bits.
    pub flags: u32,
    /// With [`FLAG_BATCH_FIRST`]: records of the segment acknowledged before this batch.
    pub committed: u32,
    /// Sequence number within the shard.
    pub seq: u64,
    /// Timestamp stamped by the shard, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The origin block's contents, for a record with [`FLAG_ORIGIN`].
    pub origin: Option<Origin>,
}

impl RecordHeader {
    /// Total bytes of the record (header and body).
    pub fn record_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.len as usize
    }

    /// Whether this record starts a batch (and carries a `committed` stamp).
    pub fn is_batch_first(&self) -> bool {
        self.flags & FLAG_BATCH_FIRST != 0
    }

    /// Offset of the payload from the record's start (after the header and the origin block,
    /// if any).
    pub fn payload_offset(&self) -> usize {
        RECORD_HEADER_BYTES + origin_block_bytes(self.origin.is_some())
    }

    /// Payload length in bytes (the body without the origin block).
    pub fn payload_len(&self) -> usize {
        self.record_bytes() - self.payload_offset()
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
    /// The checksum holds and [`FLAG_ORIGIN`] is set, but the body (of this length) is shorter
    /// than the origin block.
    OriginCut(u32),
    /// The checksum holds but the origin block's reserved bytes are not zero.
    OriginReserved,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete => f.write_str("fewer bytes than the record announces"),
            DecodeError::End => f.write_str("an all-zero header (the end of the data)"),
            DecodeError::TooLong(len) => write!(
                f,
                "length {len} is over the maximum {RECORD_PAYLOAD_BYTES_MAX}"
            ),
            DecodeError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            DecodeError::Flags(flags) => write!(
                f,
                "flags {flags:#x} set bits this format does not define (known: {FLAGS_KNOWN:#x})"
            ),
            DecodeError::OriginCut(len) => write!(
                f,
                "the origin flag is set but the body of {len} bytes is shorter than the \
                 {ORIGIN_BYTES}-byte origin block"
            ),
            DecodeError::OriginReserved => {
                f.write_str("the origin block's reserved bytes are not zero")
            }
        }
    }
}

/// Bytes needed to encode a record with a body of `body_len` bytes (the payload, plus
/// [`ORIGIN_BYTES`] for a record with an origin).
pub const fn record_bytes(body_len: usize) -> usize {
    RECORD_HEADER_BYTES + body_len
}

/// Bytes of the origin block in a record's body: [`ORIGIN_BYTES`] if it has one, else 0.
pub const fn origin_block_bytes(has_origin: bool) -> usize {
    if has_origin { ORIGIN_BYTES } else { 0 }
}

/// Encodes one record without an origin at the start of `dst`.
///
/// # Panics
/// If `dst` is shorter than the record, the payload exceeds [`RECORD_PAYLOAD_BYTES_MAX`] or
/// `meta.flags` is neither 0 nor [`FLAG_BATCH_FIRST`] (callers size their buffers and check
/// payloads first).
pub fn encode(dst: &mut [u8], meta: &RecordMeta, payload: &[u8]) {
    encode_record(dst, meta, None, payload);
}

/// Encodes one record with an origin block at the start of `dst`: header, block and payload
/// are written straight into `dst`, and [`FLAG_ORIGIN`] is set.
///
/// # Panics
/// As [`encode`], with the limit applying to the origin block and the payload together.
pub fn encode_with_origin(dst: &mut [u8], meta: &RecordMeta, origin: &Origin, payload: &[u8]) {
    encode_record(dst, meta, Some(origin), payload);
}

/// Encodes one record, with an origin block when `origin` is given, at the start of `dst`.
///
/// # Panics
/// As [`encode`].
pub fn encode_record(dst: &mut [u8], meta: &RecordMeta, origin: Option<&Origin>, payload: &[u8]) {
    let block = origin_block_bytes(origin.is_some());
    let body = block + payload.len();
    assert!(
        body <= RECORD_PAYLOAD_BYTES_MAX,
        "record body over the record maximum"
    );
    let total = record_bytes(body);
    assert!(dst.len() >= total, "record buffer too small");
    assert_eq!(
        meta.flags & !FLAG_BATCH_FIRST,
        0,
        "RecordMeta::flags is FLAG_BATCH_FIRST or 0"
    );
    let len = u32::try_from(body).expect("checked against RECORD_PAYLOAD_BYTES_MAX");
    dst[0..4].copy_from_slice(&len.to_le_bytes());
    let flags = meta.flags | if origin.is_some() { FLAG_ORIGIN } else { 0 };
    write_meta(dst, &RecordMeta { flags, ..*meta });
    let payload_at = RECORD_HEADER_BYTES + block;
    if let Some(o) = origin {
        dst[RECORD_HEADER_BYTES..payload_at].copy_from_slice(&o.to_bytes());
    }
    dst[payload_at..total].copy_from_slice(payload);
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

/// Writes the checksum of header bytes 8..32 and the body of the record in `dst[..total]`.
fn seal(dst: &mut [u8], total: usize) {
    let crc = checksum(
        &dst[8..RECORD_HEADER_BYTES],
        &dst[RECORD_HEADER_BYTES..total],
    );
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(header_tail: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), body)
}

fn u32_at(src: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(src[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(src: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(src[at..at + 8].try_into().expect("8-byte slice"))
}

/// The body length a header announces, if it is within the format's bounds; cheap
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
    let origin = if flags & FLAG_ORIGIN == 0 {
        None
    } else if (len as usize) < ORIGIN_BYTES {
        return Err(DecodeError::OriginCut(len));
    } else {
        let block = &src[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + ORIGIN_BYTES];
        Some(Origin::decode(block).ok_or(DecodeError::OriginReserved)?)
    };
    Ok(RecordHeader {
        len,
        crc: stored,
        flags,
        committed: u32_at(head, 12),
        seq: u64_at(head, 16),
        ts_ns: u64_at(head, 24),
        origin,
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

    /// Rewrites the checksum of the record in `buf` after a test changed its bytes.
    fn reseal(buf: &mut [u8]) {
        let total = record_bytes(u32_at(buf, 0) as usize);
        seal(buf, total);
    }

    proptest! {
        #[test]
        fn round_trip_with_origin(seq: u64, ts: u64, first: bool, node: u64, shard: u16, oseq: u64,
                                  payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let origin = Origin { node, shard, seq: oseq };
            let mut buf = vec![0u8; record_bytes(ORIGIN_BYTES + payload.len())];
            let flags = if first { FLAG_BATCH_FIRST } else { 0 };
            let m = RecordMeta { seq, ts_ns: ts, flags, committed: 3 };
            encode_with_origin(&mut buf, &m, &origin, &payload);
            let h = decode(&buf).unwrap();
            prop_assert_eq!(h.origin, Some(origin));
            prop_assert_eq!(h.flags, flags | FLAG_ORIGIN);
            prop_assert_eq!(h.is_batch_first(), first);
            prop_assert_eq!(h.len as usize, ORIGIN_BYTES + payload.len());
            prop_assert_eq!(h.payload_len(), payload.len());
            prop_assert_eq!(&buf[h.payload_offset()..], &payload[..]);
            prop_assert_eq!(&buf[RECORD_HEADER_BYTES..h.payload_offset()], &origin.to_bytes()[..]);
            prop_assert_eq!(split_origin(&buf[RECORD_HEADER_BYTES..]), Some((origin, &payload[..])));
        }

        #[test]
        fn a_flipped_bit_in_the_origin_block_fails_the_checksum(byte in 0usize..ORIGIN_BYTES, bit in 0u8..8) {
            let origin = Origin { node: 7, shard: 3, seq: 99 };
            let mut buf = vec![0u8; record_bytes(ORIGIN_BYTES + 10)];
            encode_with_origin(&mut buf, &meta(1, 2), &origin, b"0123456789");
            buf[RECORD_HEADER_BYTES + byte] ^= 1 << bit;
            let checksum_fails = matches!(decode(&buf), Err(DecodeError::Checksum { .. }));
            prop_assert!(checksum_fails, "a changed origin block must fail the checksum");
        }

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
    fn a_plain_record_has_no_origin() {
        let mut buf = [0u8; 40];
        encode(&mut buf, &meta(1, 2), b"abcdefgh");
        let h = decode(&buf).unwrap();
        assert_eq!((h.origin, h.flags & FLAG_ORIGIN), (None, 0));
        assert_eq!(
            (h.payload_offset(), h.payload_len()),
            (RECORD_HEADER_BYTES, 8)
        );
    }

    #[test]
    fn nonzero_reserved_origin_bytes_are_refused_even_with_a_valid_checksum() {
        let origin = Origin {
            node: u64::MAX,
            shard: u16::MAX,
            seq: u64::MAX,
        };
        for at in 18..ORIGIN_BYTES {
            let mut buf = vec![0u8; record_bytes(ORIGIN_BYTES + 3)];
            encode_with_origin(&mut buf, &meta(1, 2), &origin, b"abc");
            buf[RECORD_HEADER_BYTES + at] = 1;
            reseal(&mut buf);
            assert_eq!(decode(&buf), Err(DecodeError::OriginReserved), "byte {at}");
            assert_eq!(Origin::decode(&buf[RECORD_HEADER_BYTES..]), None);
        }
    }

    #[test]
    fn an_origin_flag_with_a_body_shorter_than_the_block_is_refused() {
        // A plain record of 10 bytes, flagged as carrying an origin afterwards.
        let mut buf = vec![0u8; record_bytes(10)];
        encode(&mut buf, &meta(1, 2), &[0u8; 10]);
        buf[8..12].copy_from_slice(&FLAG_ORIGIN.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(decode(&buf), Err(DecodeError::OriginCut(10)));
        assert!(split_origin(&[0u8; ORIGIN_BYTES - 1]).is_none());
    }

    #[test]
    fn restamping_a_record_with_an_origin_keeps_it_valid() {
        let origin = Origin {
            node: 1,
            shard: 2,
            seq: 3,
        };
        let mut buf = vec![0u8; record_bytes(ORIGIN_BYTES + 5)];
        let m = RecordMeta {
            flags: FLAG_BATCH_FIRST,
            ..meta(4, 5)
        };
        encode_with_origin(&mut buf, &m, &origin, b"hello");
        restamp(&mut buf, 42);
        let h = decode(&buf).unwrap();
        assert_eq!((h.committed, h.origin), (42, Some(origin)));
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
