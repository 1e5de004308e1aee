//! Event payloads and keys that can be verified byte for byte after a round trip.
//!
//! Payload layout: bytes 0..8 hold the producer's counter and 8..12 the producer id (both
//! little-endian); every later byte is a function of (producer, counter, position). A reader
//! recovers (producer, counter) from the first 12 bytes and regenerates the rest, so a torn,
//! shifted or swapped payload cannot pass. The key is the same 12 bytes, so every event has
//! its own key and a producer's events spread over all shards.

/// Bytes of a payload that identify it; payloads must be at least this long.
pub const IDENTITY_BYTES: usize = 12;

/// Key length: the identity of the event.
pub const KEY_BYTES: usize = IDENTITY_BYTES;

/// Which event a payload claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub producer: u32,
    pub counter: u64,
}

/// Writes the payload of (`producer`, `counter`) into `buf` (its whole length).
pub fn fill(buf: &mut [u8], producer: u32, counter: u64) {
    assert!(
        buf.len() >= IDENTITY_BYTES,
        "payloads hold at least {IDENTITY_BYTES} bytes"
    );
    let (identity, body) = buf.split_at_mut(IDENTITY_BYTES);
    identity.copy_from_slice(&key(producer, counter));
    // A cheap 64-bit mix (splitmix64's finaliser) so neighbouring events differ in every word.
    let mut word = mix(counter ^ (u64::from(producer) << 40));
    for chunk in body.chunks_mut(8) {
        let bytes = word.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
        word = mix(word);
    }
}

/// The key of (`producer`, `counter`).
pub fn key(producer: u32, counter: u64) -> [u8; KEY_BYTES] {
    let mut key = [0u8; KEY_BYTES];
    key[..8].copy_from_slice(&counter.to_le_bytes());
    key[8..].copy_from_slice(&producer.to_le_bytes());
    key
}

/// The identity a payload claims, or `None` when it is too short to hold one.
pub fn identity(payload: &[u8]) -> Option<Identity> {
    let counter = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let producer = u32::from_le_bytes(payload.get(8..IDENTITY_BYTES)?.try_into().ok()?);
    Some(Identity { producer, counter })
}

/// Number of events producer `producer` of `producers` sends out of `events`.
pub fn share(events: u64, producers: usize, producer: usize) -> u64 {
    let producers = producers as u64;
    events / producers + u64::from((producer as u64) < events % producers)
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_body_is_deterministic() {
        let mut a = [0u8; 100];
        let mut b = [0u8; 100];
        fill(&mut a, 3, 12345);
        fill(&mut b, 3, 12345);
        assert_eq!(a, b);
        assert_eq!(
            identity(&a),
            Some(Identity {
                producer: 3,
                counter: 12345
            })
        );
        fill(&mut b, 3, 12346);
        assert_ne!(a[IDENTITY_BYTES..], b[IDENTITY_BYTES..]);
        assert_eq!(&a[..KEY_BYTES], &key(3, 12345));
    }

    #[test]
    fn odd_lengths_fill_every_byte() {
        let mut buf = [0u8; 13];
        fill(&mut buf, 1, 1);
        assert_eq!(identity(&buf[..11]), None);
        assert_eq!(
            identity(&buf),
            Some(Identity {
                producer: 1,
                counter: 1
            })
        );
    }

    #[test]
    fn shares_add_up() {
        for (events, producers) in [(10, 3), (1, 4), (1_000_000, 2), (7, 7)] {
            let sum: u64 = (0..producers).map(|p| share(events, producers, p)).sum();
            assert_eq!(sum, events);
        }
    }
}
