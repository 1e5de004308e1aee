//! The Noise handshake, `Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s`, built with snow on its
//! ring-backed resolver (ring's ChaCha20-Poly1305; snow's own X25519 and BLAKE2s, which ring
//! lacks).
//!
//! NK: the initiator knows the responder's static key, so message 1 is encrypted to it and
//! message 2 proves the responder holds it. psk0: both hold the mesh's PSK, so nobody outside
//! the mesh can make a message 1 the responder accepts. NK does not authenticate the
//! initiator's static key, so message 1's payload carries it with a proof of possession: a
//! BLAKE2s MAC keyed by `DH(initiator static, responder static)` over the payload's fields and
//! the responder's key. Only the holder of that static secret (or the responder) can compute
//! it, and it is bound to one responder, so a payload cannot be lifted to another node.
//!
//! Message 1's payload also carries the initiator's node id and a strictly increasing
//! timestamp (the session layer refuses one that is not newer than the last accepted one) and
//! the sender index of the header, so a captured message 1 cannot be re-steered to another
//! shard. Message 2's payload carries the responder's index and node id.
//!
//! A failed read restores snow's state (snow checkpoints it), so a forged message 2 cannot
//! wedge the initiation it targets.

use snow::params::{DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Dh, Hash};
use snow::{Builder, HandshakeState};

use crate::codec::{
    HEADER_LEN, INIT_LEN, INIT_PAYLOAD_LEN, InitPayload, KEY_LEN, Kind, RESPONSE_LEN,
    RESPONSE_PAYLOAD_LEN, ResponsePayload, write_header,
};
use crate::identity::{Identity, Psk};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake: a node speaking another version cannot complete one.
const PROLOGUE: &[u8] = b"net mesh v1";
const PROOF_LABEL: &[u8] = b"net mesh v1 static key proof";

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Noise refused it (wrong PSK, wrong responder key, tampered or forged bytes).
    Noise,
    /// The payload was not what the protocol sends.
    Payload,
    /// The static key's proof did not verify.
    Proof,
}

/// The session keys a completed handshake yields.
#[derive(Clone)]
pub struct Keys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn resolver() -> Box<dyn CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(RingResolver),
        Box::new(DefaultResolver),
    ))
}

fn builder<'a>(psk: &'a Psk) -> Builder<'a> {
    Builder::with_resolver(PATTERN.parse().expect("a valid Noise name"), resolver())
        .prologue(PROLOGUE)
        .expect("prologue set once")
        .psk(0, &psk.0)
        .expect("psk set once")
}

/// A node's handshake side: its identity, the PSK, and the DH and hash it proves keys with
/// (built once, reused).
pub struct Handshaker {
    identity: Identity,
    psk: Psk,
    dh: Box<dyn Dh>,
    hash: Box<dyn Hash>,
}

impl std::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaker")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// An initiation waiting for its response.
pub struct Initiation {
    hs: HandshakeState,
}

impl std::fmt::Debug for Initiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiation(..)")
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn split(hs: &mut HandshakeState, initiator: bool) -> Keys {
    let (i_to_r, r_to_i) = hs.dangerously_get_raw_split();
    if initiator {
        Keys {
            send: i_to_r,
            recv: r_to_i,
        }
    } else {
        Keys {
            send: r_to_i,
            recv: i_to_r,
        }
    }
}

impl Handshaker {
    pub fn new(identity: Identity, psk: Psk) -> Handshaker {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow's default resolver has X25519");
        dh.set(identity.secret());
        let hash = DefaultResolver
            .resolve_hash(&HashChoice::Blake2s)
            .expect("snow's default resolver has BLAKE2s");
        Handshaker {
            identity,
            psk,
            dh,
            hash,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The proof MAC for an initiation from `initiator_key` to `responder_key`. `peer` is the
    /// other side's public key (our DH with it is the MAC key).
    fn proof(
        &mut self,
        peer: &[u8; KEY_LEN],
        p: &InitPayload,
        responder_key: &[u8; KEY_LEN],
    ) -> Option<[u8; 32]> {
        let mut shared = [0u8; 32];
        self.dh.dh(peer, &mut shared).ok()?;
        // An all-zero shared secret means a low-order point: refuse it.
        if shared.iter().all(|&b| b == 0) {
            return None;
        }
        let mut data = [0u8; PROOF_LABEL.len() + KEY_LEN + 8 + 8 + 4 + KEY_LEN];
        let mut at = 0;
        for part in [
            PROOF_LABEL,
            responder_key,
            &p.node_id.to_le_bytes(),
            &p.timestamp.to_le_bytes(),
            &p.sender.to_le_bytes(),
            &p.static_key,
        ] {
            data[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let mut mac = [0u8; 32];
        self.hash.hmac(&shared, &data, &mut mac);
        Some(mac)
    }

    /// Writes an initiation packet (header and Noise message 1) for the responder whose static
    /// key is `peer` into `out`.
    pub fn initiate(
        &mut self,
        peer: &[u8; KEY_LEN],
        sender: u32,
        timestamp: u64,
        out: &mut [u8; INIT_LEN],
    ) -> Result<Initiation, HandshakeError> {
        let mut payload = InitPayload {
            node_id: self.identity.node_id(),
            timestamp,
            sender,
            static_key: self.identity.public_key(),
            proof: [0; 32],
        };
        payload.proof = self
            .proof(peer, &payload, peer)
            .ok_or(HandshakeError::Proof)?;
        let mut plain = [0u8; INIT_PAYLOAD_LEN];
        payload.encode(&mut plain);
        let mut hs = builder(&self.psk)
            .remote_public_key(peer)
            .map_err(|_| HandshakeError::Noise)?
            .build_initiator()
            .map_err(|_| HandshakeError::Noise)?;
        write_header(out, Kind::Init, sender);
        let n = hs
            .write_message(&plain, &mut out[HEADER_LEN..])
            .map_err(|_| HandshakeError::Noise)?;
        debug_assert_eq!(HEADER_LEN + n, INIT_LEN);
        Ok(Initiation { hs })
    }

    /// Reads an initiation (`noise` is Noise message 1, `sender` the header's index): checks
    /// Noise, the payload and the proof. On success returns the payload and the responder's
    /// state for [`Handshaker::respond`].
    pub fn accept(
        &mut self,
        noise: &[u8],
        sender: u32,
    ) -> Result<(InitPayload, HandshakeState), HandshakeError> {
        let mut hs = builder(&self.psk)
            .local_private_key(self.identity.secret())
            .map_err(|_| HandshakeError::Noise)?
            .build_responder()
            .map_err(|_| HandshakeError::Noise)?;
        let mut plain = [0u8; INIT_PAYLOAD_LEN + 16];
        let n = hs
            .read_message(noise, &mut plain)
            .map_err(|_| HandshakeError::Noise)?;
        let payload = InitPayload::decode(&plain[..n]).map_err(|_| HandshakeError::Payload)?;
        if payload.sender != sender {
            return Err(HandshakeError::Payload);
        }
        let me = self.identity.public_key();
        let expect = self
            .proof(&payload.static_key, &payload, &me)
            .ok_or(HandshakeError::Proof)?;
        if !ct_eq(&expect, &payload.proof) {
            return Err(HandshakeError::Proof);
        }
        Ok((payload, hs))
    }

    /// Writes the response packet to an accepted initiation into `out` and returns the
    /// session keys.
    pub fn respond(
        &mut self,
        mut hs: HandshakeState,
        receiver: u32,
        sender: u32,
        out: &mut [u8; RESPONSE_LEN],
    ) -> Result<Keys, HandshakeError> {
        let mut plain = [0u8; RESPONSE_PAYLOAD_LEN];
        ResponsePayload {
            sender,
            node_id: self.identity.node_id(),
        }
        .encode(&mut plain);
        write_header(out, Kind::Response, receiver);
        let n = hs
            .write_message(&plain, &mut out[HEADER_LEN..])
            .map_err(|_| HandshakeError::Noise)?;
        debug_assert_eq!(HEADER_LEN + n, RESPONSE_LEN);
        Ok(split(&mut hs, false))
    }
}

impl Initiation {
    /// Reads the response (`noise` is Noise message 2). On failure the initiation is intact
    /// and can still complete with the genuine response.
    pub fn complete(&mut self, noise: &[u8]) -> Result<(ResponsePayload, Keys), HandshakeError> {
        let mut plain = [0u8; RESPONSE_PAYLOAD_LEN + 16];
        let n = self
            .hs
            .read_message(noise, &mut plain)
            .map_err(|_| HandshakeError::Noise)?;
        let payload = ResponsePayload::decode(&plain[..n]).map_err(|_| HandshakeError::Payload)?;
        Ok((payload, split(&mut self.hs, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Packet, decode};

    fn pair() -> (Handshaker, Handshaker) {
        let psk = Psk::new([7; 32]);
        (
            Handshaker::new(Identity::generate(), psk.clone()),
            Handshaker::new(Identity::generate(), psk),
        )
    }

    fn noise(b: &[u8]) -> &[u8] {
        match decode(b).unwrap() {
            Packet::Init { noise, .. } | Packet::Response { noise, .. } => noise,
            Packet::Data { .. } => panic!("not a handshake"),
        }
    }

    #[test]
    fn a_handshake_yields_matching_keys_and_identities() {
        let (mut a, mut b) = pair();
        let mut m1 = [0u8; INIT_LEN];
        let mut init = a
            .initiate(&b.identity().public_key(), 0x101, 5, &mut m1)
            .unwrap();
        let (p, hs) = b.accept(noise(&m1), 0x101).unwrap();
        assert_eq!(p.node_id, a.identity().node_id());
        assert_eq!(p.static_key, a.identity().public_key());
        assert_eq!(p.timestamp, 5);
        let mut m2 = [0u8; RESPONSE_LEN];
        let kb = b.respond(hs, 0x101, 0x202, &mut m2).unwrap();
        let (r, ka) = init.complete(noise(&m2)).unwrap();
        assert_eq!(r.sender, 0x202);
        assert_eq!(r.node_id, b.identity().node_id());
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
    }

    #[test]
    fn a_wrong_psk_or_wrong_responder_fails_noise() {
        let (mut a, mut b) = pair();
        let mut other = Handshaker::new(Identity::generate(), Psk::new([8; 32]));
        let mut m1 = [0u8; INIT_LEN];
        a.initiate(&b.identity().public_key(), 1, 1, &mut m1)
            .unwrap();
        assert_eq!(
            other.accept(noise(&m1), 1).err(),
            Some(HandshakeError::Noise)
        );
        let mut c = Handshaker::new(Identity::generate(), Psk::new([7; 32]));
        assert_eq!(c.accept(noise(&m1), 1).err(), Some(HandshakeError::Noise));
        assert!(b.accept(noise(&m1), 1).is_ok());
    }

    #[test]
    fn a_resteered_initiation_is_refused() {
        let (mut a, mut b) = pair();
        let mut m1 = [0u8; INIT_LEN];
        a.initiate(&b.identity().public_key(), 0x301, 1, &mut m1)
            .unwrap();
        assert_eq!(
            b.accept(noise(&m1), 0x300).err(),
            Some(HandshakeError::Payload)
        );
    }

    #[test]
    fn a_claimed_static_key_without_its_secret_fails_the_proof() {
        // An insider with the PSK claims another node's public key: it cannot compute the
        // proof without that node's secret.
        let (a, mut b) = pair();
        let psk = Psk::new([7; 32]);
        let mut mallory = Handshaker::new(Identity::generate(), psk);
        let victim = a.identity().public_key();
        let bk = b.identity().public_key();
        let mut payload = InitPayload {
            node_id: a.identity().node_id(),
            timestamp: 9,
            sender: 1,
            static_key: victim,
            proof: [0; 32],
        };
        // Mallory's best effort: a MAC under her own DH with the responder.
        payload.proof = mallory.proof(&bk, &payload, &bk).unwrap();
        let mut plain = [0u8; INIT_PAYLOAD_LEN];
        payload.encode(&mut plain);
        let mut hs = builder(&mallory.psk)
            .remote_public_key(&bk)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut m1 = [0u8; INIT_LEN];
        write_header(&mut m1, Kind::Init, 1);
        hs.write_message(&plain, &mut m1[HEADER_LEN..]).unwrap();
        assert_eq!(b.accept(noise(&m1), 1).err(), Some(HandshakeError::Proof));
    }

    #[test]
    fn a_forged_response_leaves_the_initiation_usable() {
        let (mut a, mut b) = pair();
        let mut m1 = [0u8; INIT_LEN];
        let mut init = a
            .initiate(&b.identity().public_key(), 1, 1, &mut m1)
            .unwrap();
        let (_, hs) = b.accept(noise(&m1), 1).unwrap();
        let mut m2 = [0u8; RESPONSE_LEN];
        b.respond(hs, 1, 2, &mut m2).unwrap();
        let mut forged = m2;
        forged[20] ^= 1;
        assert!(init.complete(noise(&forged)).is_err());
        assert!(init.complete(&[0u8; RESPONSE_LEN - HEADER_LEN]).is_err());
        assert!(init.complete(noise(&m2)).is_ok());
    }
}
