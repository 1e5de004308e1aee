//! The RedEX record encoding, restated here so that the baseline writes the same bytes per
//! event as net does (the storage crate keeps its codec internal).
//!
//! A record is a 32-byte little-endian header `[len: u32][crc32c: u32][flags: u32]
//! [committed: u32][seq: u64][ts_ns: u64]` followed by `len` payload bytes (the baseline writes
//! no batch framing: flags and committed stay zero, as in a record in the middle of a batch). The CRC32C
//! (Castagnoli) covers header bytes 8..32 and the payload, so a flipped bit anywhere but in
//! `len` is caught, and a wrong `len` is caught by the payload no longer matching. Pure codec:
//! no I/O. Only the encoder ships; the decoder exists to test it.

/// Size of the fixed record header.
pub const HEADER_BYTES: usize = 32;

/// Byte range of the header that the checksum covers (everything after `len` and `crc`).
const CRC_COVERED_FROM: usize = 8;

/// A decoded record, borrowing its payload from the buffer it was read from.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub ts_ns: u64,
    pub flags: u32,
    pub payload: &'a [u8],
}

/// Why a buffer does not hold a valid record.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header, or than the header plus its `len`.
    Truncated { needed: usize, available: usize },
    /// The stored checksum does not match the header and payload.
    Checksum { stored: u32, computed: u32 },
}

/// Appends the record for (`seq`, `ts_ns`, `payload`) to `out`.
pub fn encode(seq: u64, ts_ns: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("record payload must fit in u32");
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&len.to_le_bytes());
    // flags (8..12) and committed (12..16) stay zero.
    header[16..24].copy_from_slice(&seq.to_le_bytes());
    header[24..32].copy_from_slice(&ts_ns.to_le_bytes());
    let crc = checksum(&header, payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// Decodes the record at the start of `buf`; returns it and the number of bytes it spans.
/// The bench only writes records; the decoder is the encoder's test oracle.
#[cfg(test)]
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let header: &[u8; HEADER_BYTES] = buf
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError::Truncated {
            needed: HEADER_BYTES,
            available: buf.len(),
        })?;
    let len = usize::try_from(u32_at(header, 0)).expect("u32 fits in usize");
    let total = HEADER_BYTES + len;
    let payload = buf.get(HEADER_BYTES..total).ok_or(DecodeError::Truncated {
        needed: total,
        available: buf.len(),
    })?;
    let stored = u32_at(header, 4);
    let computed = checksum(header, payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let record = Record {
        flags: u32_at(header, 8),
        seq: u64_at(header, 16),
        ts_ns: u64_at(header, 24),
        payload,
    };
    Ok((record, total))
}

fn checksum(header: &[u8; HEADER_BYTES], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[CRC_COVERED_FROM..]), payload)
}

#[cfg(test)]
fn u32_at(header: &[u8; HEADER_BYTES], at: usize) -> u32 {
    u32::from_le_bytes(header[at..at + 4].try_into().expect("4-byte field"))
}

#[cfg(test)]
fn u64_at(header: &[u8; HEADER_BYTES], at: usize) -> u64 {
    u64::from_le_bytes(header[at..at + 8].try_into().expect("8-byte field"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_the_crc() {
        let mut buf = Vec::new();
        encode(7, 42, b"hello", &mut buf);
        encode(8, 43, b"", &mut buf);
        assert_eq!(buf.len(), 2 * HEADER_BYTES + 5);
        let (first, used) = decode(&buf).unwrap();
        assert_eq!(
            first,
            Record {
                seq: 7,
                ts_ns: 42,
                flags: 0,
                payload: b"hello"
            }
        );
        let (second, rest) = decode(&buf[used..]).unwrap();
        assert_eq!(
            (second.seq, second.ts_ns, second.payload),
            (8, 43, &b""[..])
        );
        assert_eq!(used + rest, buf.len());
    }

    #[test]
    fn crc_matches_crc32c_of_header_tail_and_payload() {
        let mut buf = Vec::new();
        encode(1, 2, b"payload", &mut buf);
        let mut covered = buf[8..HEADER_BYTES].to_vec();
        covered.extend_from_slice(b"payload");
        assert_eq!(
            u32::from_le_bytes(buf[4..8].try_into().unwrap()),
            crc32c::crc32c(&covered)
        );
        assert_eq!(&buf[0..4], &7u32.to_le_bytes());
    }

    #[test]
    fn encodes_exactly_like_redex() {
        for payload in [&b""[..], b"x", &[7u8; 100], &[0xA5; 4099]] {
            let mut ours = Vec::new();
            encode(41, 1_700_000_000_000_000_000, payload, &mut ours);
            let mut theirs = vec![0u8; net_storage::record::record_bytes(payload.len())];
            let meta = net_storage::record::RecordMeta {
                seq: 41,
                ts_ns: 1_700_000_000_000_000_000,
                flags: 0,
                committed: 0,
            };
            net_storage::record::encode(&mut theirs, &meta, payload);
            assert_eq!(ours, theirs, "payload of {} bytes", payload.len());
        }
    }

    #[test]
    fn any_flipped_bit_after_len_is_detected() {
        let mut clean = Vec::new();
        encode(3, 4, b"abcdefgh", &mut clean);
        for byte in 4..clean.len() {
            let mut torn = clean.clone();
            torn[byte] ^= 0x10;
            assert!(
                matches!(decode(&torn), Err(DecodeError::Checksum { .. })),
                "flip at byte {byte} went unnoticed"
            );
        }
    }

    #[test]
    fn short_buffers_are_truncated_not_panics() {
        let mut buf = Vec::new();
        encode(1, 1, b"xyz", &mut buf);
        assert_eq!(
            decode(&buf[..10]),
            Err(DecodeError::Truncated {
                needed: 32,
                available: 10
            })
        );
        assert_eq!(
            decode(&buf[..HEADER_BYTES + 1]),
            Err(DecodeError::Truncated {
                needed: 35,
                available: 33
            })
        );
    }
}
