//! The RedEX record codec: how one event is laid out in a segment's `.dat` file.
//!
//! A record is a fixed 32-byte little-endian header followed by the payload, byte for byte:
//!
//! ```text
//! 0      4      8       12         16     24       32
//! | len  | crc  | flags | reserved | seq  | ts_ns  | payload (len bytes) |
//! ```
//!
//! `crc` is CRC-32C (Castagnoli, hardware-accelerated on x86-64 and aarch64) over header bytes
//! 8..32 and the payload, so a torn or garbled record, a record from another position (its `seq`
//! is covered) and a zeroed tail are all told apart from a valid one. An all-zero header is the
//! clean end of a segment (DMA writes pad the last block with zeros); anything else that fails
//! the checksum is damage. The codec does no I/O.

/// Size of the fixed record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// The largest payload one record may carry (the header's `len` is a u32; keep far below it so
/// that a garbled length cannot make a reader allocate gigabytes).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// The decoded header of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// Reserved for later formats; written as zero.
    pub flags: u32,
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
    Checksum { stored: u32, computed: u32 },
}

/// Bytes needed to encode a record with `payload_len` bytes of payload.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Encodes one record at the start of `dst` and returns its length.
///
/// # Panics
/// If `dst` is shorter than the record or the payload exceeds [`RECORD_PAYLOAD_BYTES_MAX`]
/// (callers size their buffers and check payloads first).
pub fn encode(dst: &mut [u8], seq: u64, ts_ns: u64, payload: &[u8]) -> usize {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "payload over the record maximum"
    );
    let total = record_bytes(payload.len());
    assert!(dst.len() >= total, "record buffer too small");
    let len = u32::try_from(payload.len()).expect("checked against RECORD_PAYLOAD_BYTES_MAX");
    dst[0..4].copy_from_slice(&len.to_le_bytes());
    dst[8..12].copy_from_slice(&0u32.to_le_bytes());
    dst[12..16].copy_from_slice(&0u32.to_le_bytes());
    dst[16..24].copy_from_slice(&seq.to_le_bytes());
    dst[24..32].copy_from_slice(&ts_ns.to_le_bytes());
    dst[RECORD_HEADER_BYTES..total].copy_from_slice(payload);
    let crc = checksum(&dst[8..RECORD_HEADER_BYTES], payload);
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
    total
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
    Ok(RecordHeader {
        len,
        crc: stored,
        flags: u32_at(head, 8),
        seq: u64_at(head, 16),
        ts_ns: u64_at(head, 24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(seq: u64, ts: u64, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = vec![0u8; record_bytes(payload.len())];
            let n = encode(&mut buf, seq, ts, &payload);
            prop_assert_eq!(n, buf.len());
            let h = decode(&buf).unwrap();
            prop_assert_eq!((h.seq, h.ts_ns, h.len as usize), (seq, ts, payload.len()));
            prop_assert_eq!(&buf[RECORD_HEADER_BYTES..], &payload[..]);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..64), bit in 0usize..8) {
            let mut buf = vec![0u8; record_bytes(payload.len())];
            encode(&mut buf, 7, 9, &payload);
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
        encode(&mut buf, 1, 2, b"abcdefgh");
        assert_eq!(decode(&buf[..39]), Err(DecodeError::Incomplete));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_payload() {
        let mut buf = [0u8; 32];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&buf), Err(DecodeError::TooLong(u32::MAX)));
    }
}
