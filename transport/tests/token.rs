//! Capability tokens (`net_transport::token`): the byte format, every refusal `Verifier::verify`
//! makes (each its own error, in the documented order), revocation that is bounded and takes
//! effect at once, the roster's per-node cap, the signing key file, and that verification
//! allocates nothing (a counting global allocator, counting only on the thread under test).
//!
//! Several tests pin v0.10 findings: `Actions::contains(NONE)` was true for every token; the
//! slot cap was checked and then inserted (and overshot); a re-subscribe at the cap was refused;
//! the signed payload was built in a `Vec` per verify; a revocation needed a manual rebuild.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use net_transport::identity::{IdentityError, hex, unhex};
use net_transport::token::{
    Actions, Admitted, DOMAIN, Roster, SIGNED_LEN, ShardSet, SigningKey, TOKEN_LEN, Token,
    TokenError, Verifier,
};
use proptest::prelude::*;
use ring::signature::{ED25519, UnparsedPublicKey};

// ---------------------------------------------------------------------------------------------
// A global allocator that counts the allocations of one thread while it asks to be counted.

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: never panic inside the allocator, even during thread teardown.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; counting touches only const-initialised thread-locals, which do not
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `alloc`'s contract; forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `alloc_zeroed`'s contract; forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `realloc`'s contract; `ptr` came from `System` via us.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract; `ptr` came from `System` via us.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f`'s result and how many allocations this thread made while it ran.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let r = f();
    COUNTING.with(|on| on.set(false));
    (r, ALLOCATIONS.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

const PUBLISHER: u64 = 0x1111_2222_3333_4444;
const SUBSCRIBER: u64 = 0x5555_6666_7777_8888;
const SUBSCRIBER_KEY: [u8; 32] = [7; 32];
const NOT_BEFORE: u64 = 1_600_000_000;
const EXPIRES: u64 = 1_700_000_000;
const NOW: u64 = 1_650_000_000;

fn publisher_key() -> SigningKey {
    SigningKey::from_seed([1; 32])
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new(PUBLISHER, key.public_key(), 64)
}

/// A token from the publisher to the subscriber for `actions` on `shards`, id `id`, valid
/// `NOT_BEFORE..EXPIRES`.
fn token(key: &SigningKey, actions: Actions, shards: ShardSet, id: u64) -> Token {
    Token::issue(
        key,
        PUBLISHER,
        SUBSCRIBER,
        SUBSCRIBER_KEY,
        actions,
        shards,
        id,
        NOT_BEFORE,
        EXPIRES,
    )
}

fn subscribe_token(key: &SigningKey, id: u64) -> [u8; TOKEN_LEN] {
    token(
        key,
        Actions::SUBSCRIBE,
        ShardSet::of(&[0, 3, 200]).unwrap(),
        id,
    )
    .to_bytes()
}

/// The subscriber asks `v` to subscribe to `shard` with `bytes` at `now`.
fn subscribe(v: &Verifier, bytes: &[u8], shard: u16, now: u64) -> Result<(), TokenError> {
    v.verify(
        bytes,
        SUBSCRIBER,
        &SUBSCRIBER_KEY,
        Actions::SUBSCRIBE,
        shard,
        now,
    )
}

fn tmpdir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let d = std::env::temp_dir().join(format!(
        "net-token-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// The format.

#[test]
fn an_issued_token_round_trips_through_its_bytes_and_verifies() {
    let key = publisher_key();
    let shards = ShardSet::of(&[0, 3, 200]).unwrap();
    let t = token(&key, Actions::SUBSCRIBE, shards, 42);
    let bytes = t.to_bytes();
    let parsed = Token::parse(&bytes).unwrap();
    assert_eq!(parsed, t);
    assert_eq!(parsed.to_bytes(), bytes);
    assert_eq!(parsed.version(), 1);
    assert_eq!(parsed.issuer(), PUBLISHER);
    assert_eq!(parsed.subject_node(), SUBSCRIBER);
    assert_eq!(parsed.subject_key(), SUBSCRIBER_KEY);
    assert_eq!(parsed.actions(), Actions::SUBSCRIBE);
    assert_eq!(parsed.shards(), shards);
    assert_eq!(parsed.id(), 42);
    assert_eq!(parsed.not_before(), NOT_BEFORE);
    assert_eq!(parsed.expires(), EXPIRES);
    let v = verifier(&key);
    for shard in [0, 3, 200] {
        assert_eq!(subscribe(&v, &bytes, shard, NOW), Ok(()));
    }
}

#[test]
fn the_byte_layout_is_the_documented_one() {
    let key = publisher_key();
    let t = token(
        &key,
        Actions::SUBSCRIBE,
        ShardSet::of(&[0, 9, 255]).unwrap(),
        0x0102_0304_0506_0708,
    );
    let b = t.to_bytes();
    assert_eq!(TOKEN_LEN, 170);
    assert_eq!(SIGNED_LEN, 106);
    assert_eq!(b[0], 1, "version first");
    assert_eq!(b[1..9], PUBLISHER.to_le_bytes());
    assert_eq!(b[9..17], SUBSCRIBER.to_le_bytes());
    assert_eq!(b[17..49], SUBSCRIBER_KEY);
    assert_eq!(b[49], 0x01);
    let mut shards = [0u8; 32];
    shards[0] = 0b1; // shard 0
    shards[1] = 0b10; // shard 9
    shards[31] = 0b1000_0000; // shard 255
    assert_eq!(b[50..82], shards);
    assert_eq!(b[82..90], 0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(b[90..98], NOT_BEFORE.to_le_bytes());
    assert_eq!(b[98..106], EXPIRES.to_le_bytes());
    assert_eq!(b[106..], t.signature());

    // The signature is over DOMAIN ++ bytes[..106], and over nothing else.
    let public = key.public_key();
    let pk = UnparsedPublicKey::new(&ED25519, &public);
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&b[..SIGNED_LEN]);
    assert_eq!(DOMAIN, b"net token v1\0");
    assert!(pk.verify(&message, &b[SIGNED_LEN..]).is_ok());
    assert!(pk.verify(&b[..SIGNED_LEN], &b[SIGNED_LEN..]).is_err());
}

#[test]
fn malformed_tokens_are_refused_with_the_error_that_names_the_fault() {
    let key = publisher_key();
    let v = verifier(&key);
    let good = subscribe_token(&key, 1);

    for len in [0, 1, TOKEN_LEN - 1] {
        let want = TokenError::Length { len };
        assert_eq!(Token::parse(&good[..len]).err(), Some(want.clone()));
        assert_eq!(subscribe(&v, &good[..len], 0, NOW), Err(want.clone()));
    }
    let mut long = good.to_vec();
    long.push(0);
    let want = TokenError::Length { len: TOKEN_LEN + 1 };
    assert_eq!(Token::parse(&long).err(), Some(want.clone()));
    assert_eq!(subscribe(&v, &long, 0, NOW), Err(want.clone()));
    assert_eq!(
        want.to_string(),
        "token is 171 bytes; a version 1 token is exactly 170 bytes"
    );

    for version in [0, 2, 0xff] {
        let mut b = good;
        b[0] = version;
        let want = TokenError::UnknownVersion { version };
        assert_eq!(Token::parse(&b).err(), Some(want.clone()));
        assert_eq!(subscribe(&v, &b, 0, NOW), Err(want.clone()));
    }

    for (byte, unknown) in [(0x02, 0x02), (0x81, 0x80), (0xff, 0xfe)] {
        let mut b = good;
        b[49] = byte;
        let want = TokenError::UnknownActions { bits: unknown };
        assert_eq!(Token::parse(&b).err(), Some(want.clone()));
        assert_eq!(subscribe(&v, &b, 0, NOW), Err(want.clone()));
    }
    assert_eq!(
        Actions::from_bits(0x40),
        Err(TokenError::UnknownActions { bits: 0x40 })
    );
    assert_eq!(Actions::from_bits(0x01), Ok(Actions::SUBSCRIBE));
}

#[test]
fn every_flipped_bit_is_refused() {
    let key = publisher_key();
    let v = verifier(&key);
    let good = subscribe_token(&key, 1);
    assert_eq!(subscribe(&v, &good, 0, NOW), Ok(()));
    for at in 0..TOKEN_LEN {
        for bit in 0..8 {
            let mut b = good;
            b[at] ^= 1 << bit;
            let r = subscribe(&v, &b, 0, NOW);
            match at {
                0 => assert_eq!(r, Err(TokenError::UnknownVersion { version: b[0] })),
                49 if bit > 0 => assert_eq!(r, Err(TokenError::UnknownActions { bits: 1 << bit })),
                _ => assert!(
                    matches!(r, Err(TokenError::BadSignature { .. })),
                    "byte {at} bit {bit}: {r:?}"
                ),
            }
        }
    }
}

proptest! {
    /// Any edit of a valid token (any byte, any non-zero change) is refused.
    #[test]
    fn any_edit_of_a_token_is_refused(at in 0..TOKEN_LEN, change in 1..=255u8) {
        let key = publisher_key();
        let mut b = subscribe_token(&key, 1);
        b[at] ^= change;
        prop_assert!(subscribe(&verifier(&key), &b, 0, NOW).is_err());
    }

    /// Arbitrary bytes never verify, and never panic.
    #[test]
    fn arbitrary_bytes_never_verify(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Token::parse(&b);
        prop_assert!(subscribe(&verifier(&publisher_key()), &b, 0, NOW).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Who: the issuer's key and id, the subject's node and key.

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let forger = SigningKey::from_seed([2; 32]);
    let bytes = subscribe_token(&forger, 1); // names PUBLISHER as its issuer
    let r = subscribe(&verifier(&publisher_key()), &bytes, 0, NOW);
    assert_eq!(r, Err(TokenError::BadSignature { issuer: PUBLISHER }));
    assert!(r.unwrap_err().to_string().contains("signed by another key"));
}

#[test]
fn a_token_naming_another_issuer_is_refused() {
    let key = publisher_key();
    let other = 0x9999;
    let t = Token::issue(
        &key,
        other,
        SUBSCRIBER,
        SUBSCRIBER_KEY,
        Actions::SUBSCRIBE,
        ShardSet::all(),
        1,
        NOT_BEFORE,
        EXPIRES,
    );
    assert_eq!(
        subscribe(&verifier(&key), &t.to_bytes(), 0, NOW),
        Err(TokenError::WrongIssuer {
            issuer: other,
            node: PUBLISHER
        })
    );
}

#[test]
fn a_token_presented_by_another_node_or_key_is_refused() {
    let key = publisher_key();
    let v = verifier(&key);
    let b = subscribe_token(&key, 1);
    let r = v.verify(&b, 0xbad, &SUBSCRIBER_KEY, Actions::SUBSCRIBE, 0, NOW);
    assert_eq!(
        r,
        Err(TokenError::WrongSubjectNode {
            subject: SUBSCRIBER,
            peer: 0xbad
        })
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "token was issued to node 5555666677778888, but peer 0000000000000bad presented it"
    );

    let stolen_by = [9u8; 32];
    let r = v.verify(&b, SUBSCRIBER, &stolen_by, Actions::SUBSCRIBE, 0, NOW);
    assert_eq!(
        r,
        Err(TokenError::WrongSubjectKey {
            subject: SUBSCRIBER,
            token_key: SUBSCRIBER_KEY,
            peer_key: stolen_by
        })
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&hex(&SUBSCRIBER_KEY)) && msg.contains(&hex(&stolen_by)),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// What: actions and shards.

#[test]
fn actions_none_is_contained_in_nothing() {
    // v0.10: `(bits & 0) == 0` made every scope contain NONE.
    assert!(!Actions::SUBSCRIBE.contains(Actions::NONE));
    assert!(!Actions::ALL.contains(Actions::NONE));
    assert!(!Actions::NONE.contains(Actions::NONE));
    assert!(!Actions::NONE.contains(Actions::SUBSCRIBE));
    assert!(Actions::SUBSCRIBE.contains(Actions::SUBSCRIBE));
    assert!(Actions::NONE.is_empty());
    assert_eq!(Actions::NONE | Actions::SUBSCRIBE, Actions::SUBSCRIBE);
}

#[test]
fn a_token_granting_no_actions_authorises_nothing() {
    let key = publisher_key();
    let v = verifier(&key);
    let b = token(&key, Actions::NONE, ShardSet::all(), 7).to_bytes();
    let r = subscribe(&v, &b, 0, NOW);
    assert_eq!(
        r,
        Err(TokenError::ActionNotGranted {
            id: 7,
            requested: Actions::SUBSCRIBE,
            granted: Actions::NONE
        })
    );
    assert_eq!(
        r.unwrap_err().to_string(),
        "token 7 does not grant subscribe (it grants no actions)"
    );
    // Nor does asking it for nothing.
    assert_eq!(
        v.verify(&b, SUBSCRIBER, &SUBSCRIBER_KEY, Actions::NONE, 0, NOW),
        Err(TokenError::NoActionRequested)
    );
}

#[test]
fn asking_for_no_action_is_refused_whatever_the_token_grants() {
    let key = publisher_key();
    let v = verifier(&key);
    let b = token(&key, Actions::ALL, ShardSet::all(), 7).to_bytes();
    assert_eq!(
        v.verify(&b, SUBSCRIBER, &SUBSCRIBER_KEY, Actions::NONE, 0, NOW),
        Err(TokenError::NoActionRequested)
    );
    assert_eq!(subscribe(&v, &b, 0, NOW), Ok(()));
}

#[test]
fn a_shard_outside_the_token_is_refused() {
    let key = publisher_key();
    let v = verifier(&key);
    let b = subscribe_token(&key, 3); // shards 0, 3, 200
    for shard in [1, 2, 4, 199, 201, 255] {
        assert_eq!(
            subscribe(&v, &b, shard, NOW),
            Err(TokenError::ShardNotGranted { id: 3, shard })
        );
    }
    let all = token(&key, Actions::SUBSCRIBE, ShardSet::all(), 4).to_bytes();
    assert_eq!(subscribe(&v, &all, 255, NOW), Ok(()));
    let none = token(&key, Actions::SUBSCRIBE, ShardSet::empty(), 5).to_bytes();
    assert_eq!(
        subscribe(&v, &none, 0, NOW),
        Err(TokenError::ShardNotGranted { id: 5, shard: 0 })
    );
}

#[test]
fn shards_past_255_are_refused_everywhere() {
    let key = publisher_key();
    let all = token(&key, Actions::SUBSCRIBE, ShardSet::all(), 4).to_bytes();
    for shard in [256, 1000, u16::MAX] {
        let want = TokenError::ShardOutOfRange { shard };
        assert_eq!(
            subscribe(&verifier(&key), &all, shard, NOW),
            Err(want.clone())
        );
        assert_eq!(ShardSet::of(&[1, shard, 2]), Err(want.clone()));
        assert_eq!(ShardSet::empty().insert(shard), Err(want.clone()));
        assert!(!ShardSet::all().contains(shard));
        assert_eq!(Roster::new(4).admit(SUBSCRIBER, shard), Err(want));
    }
    assert!(
        TokenError::ShardOutOfRange { shard: 256 }
            .to_string()
            .contains("shard 256 is out of range")
    );
}

#[test]
fn shard_sets_hold_exactly_their_shards() {
    let s = ShardSet::of(&[0, 1, 2, 3, 7, 255]).unwrap();
    assert_eq!(s.len(), 6);
    assert_eq!(s.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 7, 255]);
    assert_eq!(format!("{s:?}"), "ShardSet[0..=3, 7, 255]");
    assert_eq!(ShardSet::from_bytes(s.to_bytes()), s);
    assert_eq!(ShardSet::all().len(), 256);
    assert!(ShardSet::empty().is_empty() && !s.is_empty());
    let mut t = s;
    assert_eq!(t.insert(7), Ok(false));
    assert_eq!(t.insert(8), Ok(true));
    assert!(t.remove(8) && !t.remove(8) && !t.remove(300));
    assert_eq!(t, s);
}

// ---------------------------------------------------------------------------------------------
// When: the validity window.

#[test]
fn a_token_is_valid_from_not_before_until_just_before_expires() {
    let key = publisher_key();
    let v = verifier(&key);
    let b = subscribe_token(&key, 5);
    assert_eq!(
        subscribe(&v, &b, 0, NOT_BEFORE - 1),
        Err(TokenError::NotYetValid {
            id: 5,
            not_before: NOT_BEFORE,
            now: NOT_BEFORE - 1
        })
    );
    assert_eq!(subscribe(&v, &b, 0, NOT_BEFORE), Ok(()));
    assert_eq!(subscribe(&v, &b, 0, EXPIRES - 1), Ok(()));
    assert_eq!(
        subscribe(&v, &b, 0, EXPIRES),
        Err(TokenError::Expired {
            id: 5,
            expires: EXPIRES,
            now: EXPIRES
        }),
        "at exactly `expires` the token is expired"
    );
    let late = subscribe(&v, &b, 0, EXPIRES + 100).unwrap_err();
    assert_eq!(
        late.to_string(),
        "token 5 expired at 1700000000 (now 1700000100)"
    );
    assert!(
        subscribe(&v, &b, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("not valid until 1600000000 (now 0)")
    );
}

#[test]
fn checks_run_in_the_documented_order() {
    // A token wrong in every way after its signature: each step fixes the fault reported by
    // the previous one, and the next fault in the order is reported.
    let key = publisher_key();
    let mut v = Verifier::new(0xaaaa, key.public_key(), 4);
    let b = Token::issue(
        &key,
        PUBLISHER,
        SUBSCRIBER,
        SUBSCRIBER_KEY,
        Actions::SUBSCRIBE,
        ShardSet::of(&[1]).unwrap(),
        9,
        NOT_BEFORE,
        EXPIRES,
    )
    .to_bytes();
    let (peer, peer_key, action, shard, now) = (0xbad, [0u8; 32], Actions::NONE, 0, EXPIRES);
    let other_key = SigningKey::from_seed([2; 32]).public_key();
    let wrong_key = Verifier::new(0xaaaa, other_key, 4);
    assert!(matches!(
        wrong_key.verify(&b[..169], peer, &peer_key, action, shard, now),
        Err(TokenError::Length { len: 169 })
    ));
    assert!(matches!(
        wrong_key.verify(&b, peer, &peer_key, action, shard, now),
        Err(TokenError::BadSignature { .. })
    ));
    v.revoke(9).unwrap();
    let step = |peer, peer_key: [u8; 32], action, shard, now| {
        v.verify(&b, peer, &peer_key, action, shard, now)
            .unwrap_err()
    };
    assert!(matches!(
        step(peer, peer_key, action, shard, now),
        TokenError::WrongIssuer { .. }
    ));
    v = Verifier::new(PUBLISHER, key.public_key(), 4);
    v.revoke(9).unwrap();
    let step = |peer, peer_key: [u8; 32], action, shard, now| {
        v.verify(&b, peer, &peer_key, action, shard, now)
            .unwrap_err()
    };
    let s = SUBSCRIBER;
    let k = SUBSCRIBER_KEY;
    let a = Actions::SUBSCRIBE;
    use TokenError as E;
    assert!(matches!(
        step(peer, peer_key, action, shard, now),
        E::WrongSubjectNode { .. }
    ));
    assert!(matches!(
        step(s, peer_key, action, shard, now),
        E::WrongSubjectKey { .. }
    ));
    assert!(matches!(
        step(s, k, action, shard, now),
        E::NoActionRequested
    ));
    assert!(matches!(
        step(s, k, a, shard, now),
        E::ShardNotGranted { .. }
    ));
    assert!(matches!(step(s, k, a, 1, 0), E::NotYetValid { .. }));
    assert!(matches!(step(s, k, a, 1, now), E::Expired { .. }));
    assert!(matches!(step(s, k, a, 1, NOW), E::Revoked { id: 9 }));
}

// ---------------------------------------------------------------------------------------------
// Revocation.

#[test]
fn revoking_an_id_takes_effect_at_the_next_verify() {
    // v0.10: a revocation waited for a manual rebuild of the verifier's state.
    let key = publisher_key();
    let mut v = verifier(&key);
    let (a, b) = (subscribe_token(&key, 1), subscribe_token(&key, 2));
    assert_eq!(subscribe(&v, &a, 0, NOW), Ok(()));
    v.revoke(1).unwrap();
    assert_eq!(
        subscribe(&v, &a, 0, NOW),
        Err(TokenError::Revoked { id: 1 })
    );
    assert_eq!(subscribe(&v, &b, 0, NOW), Ok(()), "only token 1 is revoked");
    assert!(v.is_revoked(&Token::parse(&a).unwrap()));
    assert!(!v.is_revoked(&Token::parse(&b).unwrap()));
    assert!(v.unrevoke(1));
    assert_eq!(subscribe(&v, &a, 0, NOW), Ok(()));
}

#[test]
fn revoking_a_subject_refuses_its_every_token_until_unrevoked() {
    let key = publisher_key();
    let mut v = verifier(&key);
    let tokens: Vec<_> = (1..=3).map(|id| subscribe_token(&key, id)).collect();
    let other = Token::issue(
        &key,
        PUBLISHER,
        0x4242,
        [4; 32],
        Actions::SUBSCRIBE,
        ShardSet::all(),
        10,
        NOT_BEFORE,
        EXPIRES,
    );
    v.revoke_subject(SUBSCRIBER).unwrap();
    for (t, id) in tokens.iter().zip(1..) {
        assert_eq!(
            subscribe(&v, t, 0, NOW),
            Err(TokenError::SubjectRevoked {
                id,
                subject: SUBSCRIBER
            })
        );
    }
    assert!(v.is_revoked(&Token::parse(&tokens[0]).unwrap()));
    assert!(!v.is_revoked(&other));
    assert_eq!(
        v.verify(
            &other.to_bytes(),
            0x4242,
            &[4; 32],
            Actions::SUBSCRIBE,
            0,
            NOW
        ),
        Ok(())
    );
    assert!(v.unrevoke_subject(SUBSCRIBER));
    assert!(!v.unrevoke_subject(SUBSCRIBER));
    for t in &tokens {
        assert_eq!(subscribe(&v, t, 0, NOW), Ok(()));
    }
}

#[test]
fn the_revocation_set_is_bounded_and_refuses_rather_than_evicts() {
    let key = publisher_key();
    let mut v = Verifier::new(PUBLISHER, key.public_key(), 3);
    v.revoke(1).unwrap();
    v.revoke(2).unwrap();
    v.revoke_subject(0x4242).unwrap();
    assert_eq!(v.revocations(), 3);
    assert_eq!(v.revoke(4), Err(TokenError::RevocationFull { capacity: 3 }));
    assert_eq!(
        v.revoke_subject(SUBSCRIBER),
        Err(TokenError::RevocationFull { capacity: 3 })
    );
    assert!(
        v.revoke(4)
            .unwrap_err()
            .to_string()
            .contains("revocation set is full (3 entries)")
    );
    v.revoke(1).unwrap(); // already revoked: idempotent, even when full
    assert_eq!(v.revocations(), 3);
    // Nothing was evicted; the refused revocation did not happen.
    assert_eq!(
        subscribe(&v, &subscribe_token(&key, 1), 0, NOW),
        Err(TokenError::Revoked { id: 1 })
    );
    assert_eq!(subscribe(&v, &subscribe_token(&key, 4), 0, NOW), Ok(()));
    // Unrevoking frees a place.
    assert!(v.unrevoke(2));
    v.revoke(4).unwrap();
    assert_eq!(v.revocation_capacity(), 3);

    let mut none = Verifier::new(PUBLISHER, key.public_key(), 0);
    assert_eq!(
        none.revoke(1),
        Err(TokenError::RevocationFull { capacity: 0 })
    );
}

// ---------------------------------------------------------------------------------------------
// Verification allocates nothing.

#[test]
fn the_counting_allocator_counts() {
    let (_, n) = allocations_in(|| std::hint::black_box(Box::new(1u64)));
    assert_eq!(n, 1);
}

#[test]
fn verifying_a_thousand_tokens_allocates_nothing() {
    // v0.10: `signed_payload()` built a 95-byte Vec per verify.
    let key = publisher_key();
    let mut v = verifier(&key);
    for id in 5000..5010 {
        v.revoke(id).unwrap(); // a non-empty revocation set is looked up on every verify
    }
    v.revoke_subject(0x4242).unwrap();
    let peers: Vec<(u64, [u8; 32])> = (0..1000u64)
        .map(|i| (SUBSCRIBER + i, [u8::try_from(i % 251).unwrap(); 32]))
        .collect();
    let tokens: Vec<[u8; TOKEN_LEN]> = peers
        .iter()
        .zip(0u64..)
        .map(|(&(node, static_key), i)| {
            let shard = u16::try_from(i % 256).unwrap();
            Token::issue(
                &key,
                PUBLISHER,
                node,
                static_key,
                Actions::SUBSCRIBE,
                ShardSet::of(&[shard]).unwrap(),
                i,
                NOT_BEFORE,
                EXPIRES,
            )
            .to_bytes()
        })
        .collect();

    let (ok, n) = allocations_in(|| {
        let mut ok = 0;
        for ((t, (node, static_key)), i) in tokens.iter().zip(&peers).zip(0u64..) {
            let shard = u16::try_from(i % 256).unwrap();
            if v.verify(t, *node, static_key, Actions::SUBSCRIBE, shard, NOW)
                .is_ok()
            {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, 1000);
    assert_eq!(n, 0, "{n} allocations verifying 1000 tokens");

    // Nor do refusals (their errors are plain data), nor revocation lookups.
    let parsed = Token::parse(&tokens[0]).unwrap();
    let mut revoked = subscribe_token(&key, 5000);
    let forged = subscribe_token(&SigningKey::from_seed([2; 32]), 1);
    let (refusals, n) = allocations_in(|| {
        let mut refusals = 0;
        for _ in 0..100 {
            refusals += usize::from(subscribe(&v, &forged, 0, NOW).is_err());
            refusals += usize::from(subscribe(&v, &revoked, 0, NOW).is_err());
            refusals += usize::from(subscribe(&v, &revoked, 0, EXPIRES).is_err());
            refusals += usize::from(subscribe(&v, &revoked[..100], 0, NOW).is_err());
            revoked[0] = 2;
            refusals += usize::from(subscribe(&v, &revoked, 0, NOW).is_err());
            revoked[0] = 1;
            refusals += usize::from(!v.is_revoked(&parsed));
        }
        refusals
    });
    assert_eq!(refusals, 600);
    assert_eq!(n, 0, "{n} allocations refusing tokens");
}

// ---------------------------------------------------------------------------------------------
// The roster.

#[test]
fn the_roster_caps_new_subscriptions_but_readmits_held_ones() {
    let (a, b) = (0xa, 0xb);
    let mut r = Roster::new(2);
    assert_eq!(r.admit(a, 1), Ok(Admitted::New));
    assert_eq!(r.admit(a, 2), Ok(Admitted::New));
    // At the cap: a new subscription is refused, naming the node and the cap...
    let refused = r.admit(a, 3);
    assert_eq!(
        refused,
        Err(TokenError::SubscriptionCap { node: a, cap: 2 })
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("node 000000000000000a already holds 2 subscriptions, its cap")
    );
    assert!(!r.holds(a, 3));
    // ...a held one is re-admitted (v0.10 refused it with TooManyChannels)...
    assert_eq!(r.admit(a, 1), Ok(Admitted::Already));
    assert_eq!(r.admit(a, 2), Ok(Admitted::Already));
    // ...and other nodes have their own caps.
    assert_eq!(r.admit(b, 3), Ok(Admitted::New));
    assert_eq!((r.len(), r.count(a), r.count(b)), (3, 2, 1));

    // Removing one frees a place.
    assert!(r.remove(a, 2));
    assert!(!r.remove(a, 2));
    assert!(!r.holds(a, 2));
    assert_eq!(r.admit(a, 3), Ok(Admitted::New));
    assert!(r.holds(a, 1) && r.holds(a, 3));

    assert_eq!(r.remove_node(a), 2);
    assert_eq!(r.remove_node(a), 0);
    assert_eq!((r.len(), r.count(a)), (1, 0));
    assert_eq!(r.admit(a, 4), Ok(Admitted::New));

    let mut closed = Roster::new(0);
    assert_eq!(
        closed.admit(a, 1),
        Err(TokenError::SubscriptionCap { node: a, cap: 0 })
    );
    assert!(closed.is_empty());
}

#[test]
fn readmitting_a_held_subscription_allocates_nothing() {
    let mut r = Roster::new(8);
    for node in 0..100 {
        for shard in 0..8 {
            r.admit(node, shard).unwrap();
        }
    }
    let (already, n) = allocations_in(|| {
        let mut already = 0;
        for node in 0..100 {
            for shard in 0..8 {
                already += usize::from(r.admit(node, shard) == Ok(Admitted::Already));
                already += usize::from(r.admit(node, 100).is_err()); // at the cap
            }
        }
        already
    });
    assert_eq!(already, 1600);
    assert_eq!(n, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Admit(u64, u16),
    Remove(u64, u16),
    RemoveNode(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4u64, 0..12u16).prop_map(|(n, s)| Op::Admit(n, s)),
        2 => (0..4u64, 0..12u16).prop_map(|(n, s)| Op::Remove(n, s)),
        1 => (0..4u64).prop_map(Op::RemoveNode),
    ]
}

proptest! {
    /// Against a model: every answer matches, and no node ever holds more than the cap
    /// (v0.10's check-then-insert overshot it).
    #[test]
    fn the_roster_never_exceeds_its_cap(
        cap in 0..5usize,
        ops in proptest::collection::vec(op(), 0..200)
    ) {
        let mut r = Roster::new(cap);
        let mut model: HashMap<u64, BTreeSet<u16>> = HashMap::new();
        for op in ops {
            match op {
                Op::Admit(node, shard) => {
                    let held = model.entry(node).or_default();
                    let want = if held.contains(&shard) {
                        Ok(Admitted::Already)
                    } else if held.len() < cap {
                        held.insert(shard);
                        Ok(Admitted::New)
                    } else {
                        Err(TokenError::SubscriptionCap { node, cap })
                    };
                    prop_assert_eq!(r.admit(node, shard), want);
                }
                Op::Remove(node, shard) => {
                    let want = model.get_mut(&node).is_some_and(|h| h.remove(&shard));
                    prop_assert_eq!(r.remove(node, shard), want);
                }
                Op::RemoveNode(node) => {
                    let want = model.remove(&node).map_or(0, |h| h.len());
                    prop_assert_eq!(r.remove_node(node), want);
                }
            }
            for node in 0..4 {
                let held = model.get(&node).map_or(0, BTreeSet::len);
                prop_assert!(r.count(node) <= cap);
                prop_assert_eq!(r.count(node), held);
            }
            prop_assert_eq!(r.len(), model.values().map(BTreeSet::len).sum::<usize>());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The signing key file.

#[test]
fn a_generated_key_file_is_0600_and_its_seed_round_trips() {
    let d = tmpdir();
    let p = d.join("token.key");
    let key = SigningKey::load_or_generate(&p).unwrap();
    let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!d.join("token.key.tmp").exists());

    // The file's seed is the key's: the same public key, and (ed25519 is deterministic) the
    // same signatures.
    let text = fs::read_to_string(&p).unwrap();
    let seed_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("seed = "))
        .unwrap()
        .to_owned();
    let seed = unhex::<32>(&seed_hex).unwrap();
    assert_eq!(SigningKey::from_seed(seed).public_key(), key.public_key());
    let again = SigningKey::load_or_generate(&p).unwrap();
    assert_eq!(again.public_key(), key.public_key());
    assert_eq!(
        subscribe_token(&again, 1),
        subscribe_token(&key, 1),
        "the loaded key signs as the saved one"
    );

    // Debug shows the public key, never the seed.
    let debug = format!("{key:?}");
    assert!(!debug.contains(&seed_hex), "{debug}");
    assert!(debug.contains(&hex(&key.public_key())), "{debug}");

    // save then load.
    let q = d.join("other.key");
    let k = SigningKey::from_seed([3; 32]);
    k.save(&q).unwrap();
    assert_eq!(SigningKey::load(&q).unwrap().public_key(), k.public_key());
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_group_readable_key_file_is_refused_by_name() {
    let d = tmpdir();
    let p = d.join("token.key");
    SigningKey::generate().save(&p).unwrap();
    for mode in [0o640, 0o604, 0o660] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        let e = SigningKey::load(&p).unwrap_err();
        assert!(matches!(e, IdentityError::Permissions { mode: m, .. } if m == mode));
        let e = e.to_string();
        assert!(
            e.contains("token.key") && e.contains(&format!("{mode:o}")),
            "{e}"
        );
        assert!(SigningKey::load_or_generate(&p).is_err(), "not replaced");
    }
    fs::remove_dir_all(d).unwrap();
}

#[test]
fn damaged_key_files_name_what_is_wrong() {
    let d = tmpdir();
    let p = d.join("token.key");
    let seed = "ab".repeat(32);
    for (text, want) in [
        (String::new(), "seed is missing"),
        ("# only a comment\n".to_owned(), "seed is missing"),
        ("seed = 00\n".to_owned(), "seed is not 64 hex digits"),
        ("seed\n".to_owned(), "a line is not `key = value`"),
        ("colour = blue\n".to_owned(), "unknown key `colour`"),
        (
            format!("seed = {seed}\nseed = {seed}\n"),
            "seed is given twice",
        ),
    ] {
        let _ = fs::remove_file(&p);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        drop(f);
        let e = SigningKey::load(&p).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("token.key"), "{text:?}: {e}");
    }
    fs::remove_dir_all(d).unwrap();
}
