//! The wire format. Every datagram starts with the same 8 bytes:
//!
//! ```text
//! 0      1      2          4                    8
//! +------+------+----------+--------------------+
//! | ver  | kind | reserved |   index (u32 LE)   |
//! +------+------+----------+--------------------+
//! ```
//!
//! `index` is the sender's index in a handshake initiation and the receiver's index in every
//! other packet. Its low byte (offset 4) is the shard that chose it: the node's reuseport
//! program steers each datagram to the socket of that shard, so a session's packets always
//! reach the shard that owns it (see `udp`).
//!
//! - `Init` (kind 1): the header, then Noise message 1 (ephemeral key, encrypted payload):
//!   exactly [`INIT_LEN`] bytes.
//! - `Response` (kind 2): the header, then Noise message 2: exactly [`RESPONSE_LEN`] bytes.
//! - `Data` (kind 3): the header, a 64-bit counter (LE), then the ChaCha20-Poly1305
//!   ciphertext and its 16-byte tag; the first 16 bytes are the AEAD's associated data, so a
//!   flipped header bit fails authentication. An empty plaintext is a keepalive.
//!
//! Every length is checked here, before anything reads past it; nothing else parses bytes.

/// Protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 8;
/// Bytes of a data packet's header (common header and counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Bytes of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes of an X25519 public key.
pub const KEY_LEN: usize = 32;
/// Plaintext bytes of the initiation payload: node id, timestamp, sender index, static
/// public key, proof of the static key.
pub const INIT_PAYLOAD_LEN: usize = 8 + 8 + 4 + KEY_LEN + 32;
/// Plaintext bytes of the response payload: responder index, responder node id.
pub const RESPONSE_PAYLOAD_LEN: usize = 4 + 8;
/// Bytes of a whole initiation packet.
pub const INIT_LEN: usize = HEADER_LEN + KEY_LEN + INIT_PAYLOAD_LEN + TAG_LEN;
/// Bytes of a whole response packet.
pub const RESPONSE_LEN: usize = HEADER_LEN + KEY_LEN + RESPONSE_PAYLOAD_LEN + TAG_LEN;
/// The smallest data packet (a keepalive).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Bytes a data packet adds to its payload.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Packet kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Init = 1,
    Response = 2,
    Data = 3,
}

/// Why a datagram is not a packet of this protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its kind's minimum.
    Short,
    /// A version this build does not speak.
    Version(u8),
    /// An unknown kind byte.
    Kind(u8),
    /// Reserved bytes not zero.
    Reserved,
    /// A handshake packet of the wrong length.
    Length,
}

/// A decoded packet; borrowed views into the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A handshake initiation: the initiator's index and its Noise message 1.
    Init { sender: u32, noise: &'a [u8] },
    /// A handshake response to the initiation that chose `receiver`.
    Response { receiver: u32, noise: &'a [u8] },
    /// A data packet for the session that chose `receiver`; the ciphertext (with its tag)
    /// starts at [`DATA_HEADER_LEN`].
    Data { receiver: u32, counter: u64 },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Parses a datagram's header; checks every length the packet's kind implies.
pub fn decode(b: &[u8]) -> Result<Packet<'_>, Malformed> {
    if b.len() < HEADER_LEN {
        return Err(Malformed::Short);
    }
    if b[0] != VERSION {
        return Err(Malformed::Version(b[0]));
    }
    if b[2] != 0 || b[3] != 0 {
        return Err(Malformed::Reserved);
    }
    let index = u32_at(b, 4);
    match b[1] {
        1 if b.len() == INIT_LEN => Ok(Packet::Init {
            sender: index,
            noise: &b[HEADER_LEN..],
        }),
        2 if b.len() == RESPONSE_LEN => Ok(Packet::Response {
            receiver: index,
            noise: &b[HEADER_LEN..],
        }),
        1 | 2 => Err(Malformed::Length),
        3 if b.len() < DATA_MIN_LEN => Err(Malformed::Short),
        3 => Ok(Packet::Data {
            receiver: index,
            counter: u64_at(b, 8),
        }),
        k => Err(Malformed::Kind(k)),
    }
}

/// Writes the common header into `out[..HEADER_LEN]`.
pub fn write_header(out: &mut [u8], kind: Kind, index: u32) {
    out[0] = VERSION;
    out[1] = kind as u8;
    out[2] = 0;
    out[3] = 0;
    out[4..8].copy_from_slice(&index.to_le_bytes());
}

/// Writes a data packet's header (common header and counter) into `out[..DATA_HEADER_LEN]`.
pub fn write_data_header(out: &mut [u8], receiver: u32, counter: u64) {
    write_header(out, Kind::Data, receiver);
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// The initiation payload (inside Noise message 1, so encrypted and authenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitPayload {
    pub node_id: u64,
    /// Strictly increasing per initiator (wall-clock ns, bumped past the last one sent).
    pub timestamp: u64,
    /// Must equal the header's index (an attacker cannot re-steer a captured initiation).
    pub sender: u32,
    pub static_key: [u8; KEY_LEN],
    /// MAC proving the initiator holds the static key's private half (see `handshake`).
    pub proof: [u8; 32],
}

impl InitPayload {
    pub fn encode(&self, out: &mut [u8; INIT_PAYLOAD_LEN]) {
        out[0..8].copy_from_slice(&self.node_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp.to_le_bytes());
        out[16..20].copy_from_slice(&self.sender.to_le_bytes());
        out[20..52].copy_from_slice(&self.static_key);
        out[52..84].copy_from_slice(&self.proof);
    }

    pub fn decode(b: &[u8]) -> Result<InitPayload, Malformed> {
        if b.len() != INIT_PAYLOAD_LEN {
            return Err(Malformed::Length);
        }
        let mut static_key = [0u8; KEY_LEN];
        static_key.copy_from_slice(&b[20..52]);
        let mut proof = [0u8; 32];
        proof.copy_from_slice(&b[52..84]);
        Ok(InitPayload {
            node_id: u64_at(b, 0),
            timestamp: u64_at(b, 8),
            sender: u32_at(b, 16),
            static_key,
            proof,
        })
    }
}

/// The response payload (inside Noise message 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePayload {
    pub sender: u32,
    pub node_id: u64,
}

impl ResponsePayload {
    pub fn encode(&self, out: &mut [u8; RESPONSE_PAYLOAD_LEN]) {
        out[0..4].copy_from_slice(&self.sender.to_le_bytes());
        out[4..12].copy_from_slice(&self.node_id.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<ResponsePayload, Malformed> {
        if b.len() != RESPONSE_PAYLOAD_LEN {
            return Err(Malformed::Length);
        }
        Ok(ResponsePayload {
            sender: u32_at(b, 0),
            node_id: u64_at(b, 4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_are_what_the_handshake_writes() {
        assert_eq!(INIT_LEN, 8 + 32 + 84 + 16);
        assert_eq!(RESPONSE_LEN, 8 + 32 + 12 + 16);
    }

    #[test]
    fn every_short_or_odd_datagram_is_refused_by_name() {
        assert_eq!(decode(&[]), Err(Malformed::Short));
        assert_eq!(decode(&[1, 3, 0, 0, 0, 0, 0]), Err(Malformed::Short));
        assert_eq!(
            decode(&[2, 3, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::Version(2))
        );
        assert_eq!(decode(&[1, 9, 0, 0, 0, 0, 0, 0]), Err(Malformed::Kind(9)));
        assert_eq!(decode(&[1, 3, 1, 0, 0, 0, 0, 0]), Err(Malformed::Reserved));
        assert_eq!(decode(&[1, 1, 0, 0, 0, 0, 0, 0]), Err(Malformed::Length));
        assert_eq!(decode(&[1, 3, 0, 0, 0, 0, 0, 0]), Err(Malformed::Short));
        let mut keepalive = [0u8; DATA_MIN_LEN];
        write_data_header(&mut keepalive, 0x0102_0304, 7);
        assert_eq!(
            decode(&keepalive),
            Ok(Packet::Data {
                receiver: 0x0102_0304,
                counter: 7
            })
        );
        // The shard byte sits at offset 4 (what the reuseport program reads).
        assert_eq!(keepalive[4], 0x04);
    }

    #[test]
    fn payloads_round_trip() {
        let p = InitPayload {
            node_id: 42,
            timestamp: 7,
            sender: 9,
            static_key: [3; 32],
            proof: [4; 32],
        };
        let mut b = [0u8; INIT_PAYLOAD_LEN];
        p.encode(&mut b);
        assert_eq!(InitPayload::decode(&b), Ok(p));
        assert_eq!(InitPayload::decode(&b[1..]), Err(Malformed::Length));
        let r = ResponsePayload {
            sender: 5,
            node_id: u64::MAX,
        };
        let mut b = [0u8; RESPONSE_PAYLOAD_LEN];
        r.encode(&mut b);
        assert_eq!(ResponsePayload::decode(&b), Ok(r));
    }

    proptest! {
        /// The decoder never panics and never returns a view past the datagram.
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match decode(&bytes) {
                Ok(Packet::Init { noise, .. }) => prop_assert_eq!(noise.len() + HEADER_LEN, bytes.len()),
                Ok(Packet::Response { noise, .. }) => prop_assert_eq!(noise.len() + HEADER_LEN, bytes.len()),
                Ok(Packet::Data { .. }) => prop_assert!(bytes.len() >= DATA_MIN_LEN),
                Err(_) => {}
            }
        }
    }
}
