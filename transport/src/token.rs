//! Capability tokens: a publisher node's signed grant that lets one subscriber node subscribe
//! to some of the publisher's shards.
//!
//! A publisher issues a [`Token`] with its [`SigningKey`] (ed25519) to a subscriber node; the
//! subscriber presents the token's bytes when it subscribes; the publisher checks them with
//! its [`Verifier`], which holds the publisher's public key and a bounded revocation set. A
//! shard that owns subscriptions admits them through a [`Roster`], which caps how many
//! subscriptions one node may hold.
//!
//! The module is I/O-free except for the signing key file.
//!
//! # The token
//!
//! Fixed size ([`TOKEN_LEN`] = 170 bytes), so that parsing and verifying allocate nothing.
//! Integers are little-endian.
//!
//! ```text
//! offset len  field
//!      0   1  version (1)
//!      1   8  issuer node id (the publisher)
//!      9   8  subject node id (the subscriber)
//!     17  32  subject's static X25519 public key
//!     49   1  actions (bitset: 0x01 subscribe; other bits are refused)
//!     50  32  shards (256-bit set: shard i is bit i % 8 of byte i / 8)
//!     82   8  id (serial, names the token for revocation)
//!     90   8  not_before (unix seconds; valid from this second)
//!     98   8  expires (unix seconds; expired from this second)
//!    106  64  ed25519 signature over DOMAIN ++ bytes 0..106
//! ```
//!
//! The signed message is [`DOMAIN`] (`b"net token v1\0"`) followed by every byte before the
//! signature, so a token's signature can never be taken for a signature over anything else the
//! key signs.
//!
//! # The signing key file
//!
//! Text, created 0600 (temporary file, fsync, rename, fsync of the directory) and refused when
//! its group or others can read or write it, like the identity file (`identity`):
//!
//! ```text
//! # net token signing key: the seed below signs this node's capability tokens; keep the file 0600
//! seed = <64 hex digits>
//! ```

use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::ops::BitOr;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::identity::{IdentityError, NodeId, hex, random, read_private, unhex, write_private};

/// The token format version this module writes and reads.
pub const TOKEN_VERSION: u8 = 1;

/// The length of a version 1 token, signature included.
pub const TOKEN_LEN: usize = 170;

/// The length of a token's ed25519 signature (its last bytes).
pub const SIGNATURE_LEN: usize = 64;

/// The length of the signed part of a token: every byte before the signature.
pub const SIGNED_LEN: usize = TOKEN_LEN - SIGNATURE_LEN;

/// The domain-separation prefix of the signed message: `DOMAIN ++ token[..SIGNED_LEN]`.
pub const DOMAIN: &[u8; 13] = b"net token v1\0";

/// How many shards a token can name: shards `0..SHARD_LIMIT`.
pub const SHARD_LIMIT: u16 = 256;

/// The length of a signing key's seed and of an ed25519 public key.
pub const ED25519_KEY_LEN: usize = 32;

// Field offsets (see the module doc).
const AT_VERSION: usize = 0;
const AT_ISSUER: usize = 1;
const AT_SUBJECT_NODE: usize = 9;
const AT_SUBJECT_KEY: usize = 17;
const AT_ACTIONS: usize = 49;
const AT_SHARDS: usize = 50;
const AT_ID: usize = 82;
const AT_NOT_BEFORE: usize = 90;
const AT_EXPIRES: usize = 98;
const MESSAGE_LEN: usize = DOMAIN.len() + SIGNED_LEN;

const _: () = assert!(AT_EXPIRES + 8 == SIGNED_LEN && SIGNED_LEN == 106 && TOKEN_LEN == 170);

/// Why a token, a revocation or a subscription was refused. Each message names the value that
/// was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is not exactly [`TOKEN_LEN`] bytes.
    #[error("token is {len} bytes; a version 1 token is exactly {TOKEN_LEN} bytes")]
    Length {
        /// The length presented.
        len: usize,
    },
    /// The token's version byte is not [`TOKEN_VERSION`].
    #[error(
        "token version {version} is unknown: this node reads version {TOKEN_VERSION} tokens \
         (issue a version {TOKEN_VERSION} token, or upgrade this node)"
    )]
    UnknownVersion {
        /// The version byte presented.
        version: u8,
    },
    /// The token (or an `Actions::from_bits` call) sets action bits this version does not know.
    #[error(
        "unknown action bits {bits:#04x} (this node knows only subscribe = 0x01); the token was \
         issued by a newer node or is damaged"
    )]
    UnknownActions {
        /// The unknown bits (the known ones masked off).
        bits: u8,
    },
    /// The signature does not verify with this node's public key: another key signed the
    /// token, or some byte of it was altered.
    #[error(
        "token signature does not verify with this node's signing key (the token names issuer \
         {issuer:016x}): it was signed by another key or altered"
    )]
    BadSignature {
        /// The issuer node id the token claims.
        issuer: NodeId,
    },
    /// The token was issued by (names as issuer) another node.
    #[error("token was issued by node {issuer:016x}, not by this node ({node:016x})")]
    WrongIssuer {
        /// The issuer the token names.
        issuer: NodeId,
        /// This node.
        node: NodeId,
    },
    /// The token was issued to another node than the peer presenting it.
    #[error("token was issued to node {subject:016x}, but peer {peer:016x} presented it")]
    WrongSubjectNode {
        /// The subject node the token names.
        subject: NodeId,
        /// The peer that presented it.
        peer: NodeId,
    },
    /// The token is bound to another static key than the one the peer's session proved.
    #[error(
        "token for node {subject:016x} is bound to static key {}, but the peer's session key is {}",
        hex(.token_key),
        hex(.peer_key)
    )]
    WrongSubjectKey {
        /// The subject node (the token's and the peer's).
        subject: NodeId,
        /// The static key the token names.
        token_key: [u8; 32],
        /// The static key the peer's session proved.
        peer_key: [u8; 32],
    },
    /// The request asked for no action: [`Actions::NONE`] authorises nothing.
    #[error(
        "no action was requested: Actions::NONE authorises nothing (ask for one, e.g. \
         Actions::SUBSCRIBE)"
    )]
    NoActionRequested,
    /// The token does not grant every requested action.
    #[error("token {id} does not grant {requested} (it grants {granted})")]
    ActionNotGranted {
        /// The token's id.
        id: u64,
        /// The actions requested.
        requested: Actions,
        /// The actions the token grants.
        granted: Actions,
    },
    /// The token does not name the requested shard.
    #[error("token {id} does not grant shard {shard}")]
    ShardNotGranted {
        /// The token's id.
        id: u64,
        /// The shard requested.
        shard: u16,
    },
    /// A shard number at or past [`SHARD_LIMIT`].
    #[error("shard {shard} is out of range: tokens and rosters name shards 0 to 255")]
    ShardOutOfRange {
        /// The shard number given.
        shard: u16,
    },
    /// The token is not valid yet.
    #[error("token {id} is not valid until {not_before} (now {now})")]
    NotYetValid {
        /// The token's id.
        id: u64,
        /// The first second the token is valid (unix seconds).
        not_before: u64,
        /// The time of the check (unix seconds).
        now: u64,
    },
    /// The token has expired (it is expired from its `expires` second on).
    #[error("token {id} expired at {expires} (now {now})")]
    Expired {
        /// The token's id.
        id: u64,
        /// The second the token expired (unix seconds).
        expires: u64,
        /// The time of the check (unix seconds).
        now: u64,
    },
    /// The token's id is revoked.
    #[error("token {id} is revoked")]
    Revoked {
        /// The token's id.
        id: u64,
    },
    /// Every token for the token's subject node is revoked.
    #[error("token {id} is revoked: every token for node {subject:016x} is revoked")]
    SubjectRevoked {
        /// The token's id.
        id: u64,
        /// The subject node.
        subject: NodeId,
    },
    /// The revocation set holds its capacity; nothing was added or evicted.
    #[error(
        "revocation set is full ({capacity} entries): raise its capacity, or unrevoke entries \
         whose tokens have expired"
    )]
    RevocationFull {
        /// The set's capacity.
        capacity: usize,
    },
    /// The node already holds as many subscriptions as its cap allows.
    #[error(
        "node {node:016x} already holds {cap} subscriptions, its cap; it must unsubscribe from \
         one first"
    )]
    SubscriptionCap {
        /// The subscribing node.
        node: NodeId,
        /// The per-node cap.
        cap: usize,
    },
}

/// A set of actions a token grants or a request asks for.
///
/// Only known bits can be set: [`Actions::from_bits`] refuses the others. The empty set,
/// [`Actions::NONE`], authorises nothing: `contains(NONE)` is false for every set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No action. A token granting `NONE` authorises no request; a request for `NONE` is
    /// refused.
    pub const NONE: Actions = Actions(0);
    /// Subscribe to the token's shards.
    pub const SUBSCRIBE: Actions = Actions(0x01);
    /// Every action this version knows.
    pub const ALL: Actions = Actions(0x01);

    /// The set with these bits, or [`TokenError::UnknownActions`] naming the unknown ones.
    pub const fn from_bits(bits: u8) -> Result<Actions, TokenError> {
        let unknown = bits & !Actions::ALL.0;
        if unknown != 0 {
            return Err(TokenError::UnknownActions { bits: unknown });
        }
        Ok(Actions(bits))
    }

    /// The set's bits (its byte in a token).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every action of `other` is in this set. False when `other` is empty: asking for
    /// nothing is never authorised (v0.10's `(bits & 0) == 0` made every token contain it).
    pub const fn contains(self, other: Actions) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    /// The actions of either set.
    pub const fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }
}

impl BitOr for Actions {
    type Output = Actions;

    fn bitor(self, other: Actions) -> Actions {
        self.union(other)
    }
}

impl fmt::Display for Actions {
    /// `no actions` or the actions' names joined by `|` (`subscribe`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no actions");
        }
        let mut sep = "";
        for (bit, name) in [(Actions::SUBSCRIBE, "subscribe")] {
            if self.contains(bit) {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({self})")
    }
}

/// A set of shards `0..256`: shard `i` is bit `i % 8` of byte `i / 8`, as in a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShardSet([u8; 32]);

impl ShardSet {
    /// No shards.
    pub const fn empty() -> ShardSet {
        ShardSet([0; 32])
    }

    /// Every shard, `0..256`.
    pub const fn all() -> ShardSet {
        ShardSet([0xff; 32])
    }

    /// These shards, or [`TokenError::ShardOutOfRange`] naming the first one past 255.
    pub fn of(shards: &[u16]) -> Result<ShardSet, TokenError> {
        let mut set = ShardSet::empty();
        for &shard in shards {
            set.insert(shard)?;
        }
        Ok(set)
    }

    /// The set whose bitmask (a token's shards field) is `bytes`.
    pub const fn from_bytes(bytes: [u8; 32]) -> ShardSet {
        ShardSet(bytes)
    }

    /// The set's bitmask, as written in a token.
    pub const fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Adds `shard`; whether it was new. [`TokenError::ShardOutOfRange`] past 255.
    pub fn insert(&mut self, shard: u16) -> Result<bool, TokenError> {
        let (byte, bit) = ShardSet::position(shard)?;
        let new = self.0[byte] & bit == 0;
        self.0[byte] |= bit;
        Ok(new)
    }

    /// Removes `shard`; whether it was there.
    pub fn remove(&mut self, shard: u16) -> bool {
        match ShardSet::position(shard) {
            Ok((byte, bit)) => {
                let was = self.0[byte] & bit != 0;
                self.0[byte] &= !bit;
                was
            }
            Err(_) => false,
        }
    }

    /// Whether `shard` is in the set (never for a shard past 255).
    pub fn contains(&self, shard: u16) -> bool {
        match ShardSet::position(shard) {
            Ok((byte, bit)) => self.0[byte] & bit != 0,
            Err(_) => false,
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 32]
    }

    /// How many shards the set holds.
    pub fn len(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// The set's shards, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..SHARD_LIMIT).filter(|&s| self.contains(s))
    }

    fn position(shard: u16) -> Result<(usize, u8), TokenError> {
        if shard >= SHARD_LIMIT {
            return Err(TokenError::ShardOutOfRange { shard });
        }
        Ok((usize::from(shard / 8), 1 << (shard % 8)))
    }
}

impl fmt::Debug for ShardSet {
    /// Runs of consecutive shards as ranges: `ShardSet[0..=3, 7]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShardSet[")?;
        let mut sep = "";
        let mut shards = self.iter().peekable();
        while let Some(first) = shards.next() {
            let mut last = first;
            while shards.peek() == Some(&(last + 1)) {
                last += 1;
                shards.next();
            }
            if first == last {
                write!(f, "{sep}{first}")?;
            } else {
                write!(f, "{sep}{first}..={last}")?;
            }
            sep = ", ";
        }
        f.write_str("]")
    }
}

/// A node's ed25519 token signing key, made from a 32-byte seed.
pub struct SigningKey {
    seed: [u8; ED25519_KEY_LEN],
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the seed.
        f.debug_struct("SigningKey")
            .field("public", &hex(&self.public_key()))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from a random seed.
    pub fn generate() -> SigningKey {
        SigningKey::from_seed(random::<ED25519_KEY_LEN>())
    }

    /// The key made from `seed`. Every 32-byte seed makes a key.
    pub fn from_seed(seed: [u8; ED25519_KEY_LEN]) -> SigningKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            // ring's only check on a seed is its length, which the type fixes at 32.
            .expect("ring accepts every 32-byte ed25519 seed");
        SigningKey { seed, pair }
    }

    /// The ed25519 public key, for a [`Verifier`].
    pub fn public_key(&self) -> [u8; ED25519_KEY_LEN] {
        let mut public = [0u8; ED25519_KEY_LEN];
        public.copy_from_slice(self.pair.public_key().as_ref());
        public
    }

    /// Loads the key at `path`, or generates one and saves it there if the file does not
    /// exist.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, IdentityError> {
        crate::identity::load_or_generate_with(
            path,
            SigningKey::load,
            SigningKey::generate,
            SigningKey::save,
        )
    }

    /// Loads the key at `path`: refused if the file's group or others can read or write it,
    /// or if it is not one `seed = <64 hex digits>` line (and comments).
    pub fn load(path: &Path) -> Result<SigningKey, IdentityError> {
        let text = read_private(path)?;
        let bad = |what: &str| IdentityError::Format {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        let mut seed = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad("a line is not `key = value`"))?;
            match k.trim() {
                "seed" => {
                    if seed.is_some() {
                        return Err(bad("seed is given twice"));
                    }
                    seed = Some(
                        unhex::<ED25519_KEY_LEN>(v.trim())
                            .ok_or_else(|| bad("seed is not 64 hex digits"))?,
                    );
                }
                other => return Err(bad(&format!("unknown key `{other}`"))),
            }
        }
        let seed = seed.ok_or_else(|| bad("seed is missing"))?;
        Ok(SigningKey::from_seed(seed))
    }

    /// Writes the key to `path` with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = format!(
            "# net token signing key: the seed below signs this node's capability tokens; keep \
             the file 0600\nseed = {}\n",
            hex(&self.seed)
        );
        write_private(path, text.as_bytes())
    }
}

/// A capability token: `issuer` lets `subject_node` (holding the static key `subject_key`)
/// perform `actions` on `shards` from `not_before` until just before `expires`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    issuer: NodeId,
    subject_node: NodeId,
    subject_key: [u8; 32],
    actions: Actions,
    shards: ShardSet,
    id: u64,
    not_before: u64,
    expires: u64,
    signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("issuer", &format_args!("{:016x}", self.issuer))
            .field("subject_node", &format_args!("{:016x}", self.subject_node))
            .field("subject_key", &hex(&self.subject_key))
            .field("actions", &self.actions)
            .field("shards", &self.shards)
            .field("not_before", &self.not_before)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Issues a token signed with `key`: `issuer` (the node whose key `key` is) lets
    /// `subject_node`, whose static X25519 key is `subject_key`, perform `actions` on `shards`
    /// from `not_before` (unix seconds) until just before `expires`. `id` names the token for
    /// revocation; the issuer keeps ids unique.
    ///
    /// A token with `expires <= not_before`, no actions or no shards is well-formed but
    /// authorises nothing.
    #[allow(clippy::too_many_arguments)] // the token's fields, in layout order
    pub fn issue(
        key: &SigningKey,
        issuer: NodeId,
        subject_node: NodeId,
        subject_key: [u8; 32],
        actions: Actions,
        shards: ShardSet,
        id: u64,
        not_before: u64,
        expires: u64,
    ) -> Token {
        let mut token = Token {
            issuer,
            subject_node,
            subject_key,
            actions,
            shards,
            id,
            not_before,
            expires,
            signature: [0; SIGNATURE_LEN],
        };
        let signature = key.pair.sign(&signed_message(&token.body()));
        token.signature.copy_from_slice(signature.as_ref());
        token
    }

    /// The token's bytes ([`TOKEN_LEN`] of them; see the module doc).
    pub fn to_bytes(&self) -> [u8; TOKEN_LEN] {
        let mut b = [0u8; TOKEN_LEN];
        b[..SIGNED_LEN].copy_from_slice(&self.body());
        b[SIGNED_LEN..].copy_from_slice(&self.signature);
        b
    }

    /// Parses a token's bytes: exactly [`TOKEN_LEN`] of them, version [`TOKEN_VERSION`], no
    /// unknown action bits. Does not check the signature (a [`Verifier`] does) and allocates
    /// nothing.
    pub fn parse(bytes: &[u8]) -> Result<Token, TokenError> {
        let b: &[u8; TOKEN_LEN] = bytes
            .try_into()
            .map_err(|_| TokenError::Length { len: bytes.len() })?;
        if b[AT_VERSION] != TOKEN_VERSION {
            return Err(TokenError::UnknownVersion {
                version: b[AT_VERSION],
            });
        }
        Ok(Token {
            issuer: le64(b, AT_ISSUER),
            subject_node: le64(b, AT_SUBJECT_NODE),
            subject_key: array(b, AT_SUBJECT_KEY),
            actions: Actions::from_bits(b[AT_ACTIONS])?,
            shards: ShardSet(array(b, AT_SHARDS)),
            id: le64(b, AT_ID),
            not_before: le64(b, AT_NOT_BEFORE),
            expires: le64(b, AT_EXPIRES),
            signature: array(b, SIGNED_LEN),
        })
    }

    /// The token's format version ([`TOKEN_VERSION`]).
    pub fn version(&self) -> u8 {
        TOKEN_VERSION
    }

    /// The node that issued the token (the publisher).
    pub fn issuer(&self) -> NodeId {
        self.issuer
    }

    /// The node the token was issued to (the subscriber).
    pub fn subject_node(&self) -> NodeId {
        self.subject_node
    }

    /// The subscriber's static X25519 public key, which its session must prove.
    pub fn subject_key(&self) -> [u8; 32] {
        self.subject_key
    }

    /// The actions the token grants.
    pub fn actions(&self) -> Actions {
        self.actions
    }

    /// The shards the token grants them on.
    pub fn shards(&self) -> ShardSet {
        self.shards
    }

    /// The token's serial, which names it for revocation.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The first second the token is valid (unix seconds).
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// The second from which the token is expired (unix seconds).
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The ed25519 signature over [`DOMAIN`] and the token's other bytes.
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        self.signature
    }

    /// Every byte before the signature.
    fn body(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[AT_VERSION] = TOKEN_VERSION;
        b[AT_ISSUER..AT_ISSUER + 8].copy_from_slice(&self.issuer.to_le_bytes());
        b[AT_SUBJECT_NODE..AT_SUBJECT_NODE + 8].copy_from_slice(&self.subject_node.to_le_bytes());
        b[AT_SUBJECT_KEY..AT_SUBJECT_KEY + 32].copy_from_slice(&self.subject_key);
        b[AT_ACTIONS] = self.actions.bits();
        b[AT_SHARDS..AT_SHARDS + 32].copy_from_slice(&self.shards.0);
        b[AT_ID..AT_ID + 8].copy_from_slice(&self.id.to_le_bytes());
        b[AT_NOT_BEFORE..AT_NOT_BEFORE + 8].copy_from_slice(&self.not_before.to_le_bytes());
        b[AT_EXPIRES..AT_EXPIRES + 8].copy_from_slice(&self.expires.to_le_bytes());
        b
    }
}

/// `DOMAIN ++ body`, on the stack.
fn signed_message(body: &[u8; SIGNED_LEN]) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..DOMAIN.len()].copy_from_slice(DOMAIN);
    m[DOMAIN.len()..].copy_from_slice(body);
    m
}

/// The `N` bytes of `b` at `at` (a constant offset within the token).
fn array<const N: usize>(b: &[u8; TOKEN_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// The little-endian u64 of `b` at `at` (a constant offset within the token).
fn le64(b: &[u8; TOKEN_LEN], at: usize) -> u64 {
    u64::from_le_bytes(array(b, at))
}

/// A revocation: one token, or every token for a subject node.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Revocation {
    Id(u64),
    Subject(NodeId),
}

/// The publisher's side: checks the tokens that subscribers present, against this node's id
/// and public key and a bounded revocation set.
///
/// Verifying allocates nothing. A revocation takes effect at the next [`Verifier::verify`].
pub struct Verifier {
    node: NodeId,
    public_key: [u8; ED25519_KEY_LEN],
    revoked: HashSet<Revocation>,
    capacity: usize,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("node", &format_args!("{:016x}", self.node))
            .field("public", &hex(&self.public_key))
            .field("revocations", &self.revoked.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Verifier {
    /// The verifier of node `node`, whose token signing key's public half is `public_key`,
    /// holding at most `revocation_capacity` revocations (ids and subjects together).
    pub fn new(
        node: NodeId,
        public_key: [u8; ED25519_KEY_LEN],
        revocation_capacity: usize,
    ) -> Verifier {
        Verifier {
            node,
            public_key,
            revoked: HashSet::new(),
            capacity: revocation_capacity,
        }
    }

    /// This node's id: the issuer a token must name.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// This node's token public key.
    pub fn public_key(&self) -> [u8; ED25519_KEY_LEN] {
        self.public_key
    }

    /// Whether `token_bytes` authorises peer `peer_node`, whose session proved the static key
    /// `peer_static_key`, to perform `action` on `shard` at `now_unix_s`. Checked in this
    /// order, each refusal its own [`TokenError`]: length, version and action bits; the
    /// signature (this node's key); issuer is this node; subject node is the peer; subject key
    /// is the peer's; `action` is not empty and granted; `shard` is granted (and below 256);
    /// not before `not_before`; not at or after `expires`; not revoked (by id or subject).
    ///
    /// Allocates nothing.
    pub fn verify(
        &self,
        token_bytes: &[u8],
        peer_node: NodeId,
        peer_static_key: &[u8; 32],
        action: Actions,
        shard: u16,
        now_unix_s: u64,
    ) -> Result<(), TokenError> {
        let b: &[u8; TOKEN_LEN] = token_bytes.try_into().map_err(|_| TokenError::Length {
            len: token_bytes.len(),
        })?;
        let token = Token::parse(b)?;
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&signed_message(&array(b, 0)), &token.signature)
            .map_err(|_| TokenError::BadSignature {
                issuer: token.issuer,
            })?;
        if token.issuer != self.node {
            return Err(TokenError::WrongIssuer {
                issuer: token.issuer,
                node: self.node,
            });
        }
        if token.subject_node != peer_node {
            return Err(TokenError::WrongSubjectNode {
                subject: token.subject_node,
                peer: peer_node,
            });
        }
        if token.subject_key != *peer_static_key {
            return Err(TokenError::WrongSubjectKey {
                subject: token.subject_node,
                token_key: token.subject_key,
                peer_key: *peer_static_key,
            });
        }
        if action.is_empty() {
            return Err(TokenError::NoActionRequested);
        }
        if !token.actions.contains(action) {
            return Err(TokenError::ActionNotGranted {
                id: token.id,
                requested: action,
                granted: token.actions,
            });
        }
        if shard >= SHARD_LIMIT {
            return Err(TokenError::ShardOutOfRange { shard });
        }
        if !token.shards.contains(shard) {
            return Err(TokenError::ShardNotGranted {
                id: token.id,
                shard,
            });
        }
        if now_unix_s < token.not_before {
            return Err(TokenError::NotYetValid {
                id: token.id,
                not_before: token.not_before,
                now: now_unix_s,
            });
        }
        if now_unix_s >= token.expires {
            return Err(TokenError::Expired {
                id: token.id,
                expires: token.expires,
                now: now_unix_s,
            });
        }
        self.check_revoked(&token)
    }

    /// Revokes the token with id `id`, from the next `verify` on. Revoking an id already
    /// revoked succeeds; a new one past the capacity is refused with
    /// [`TokenError::RevocationFull`] (the set neither grows nor evicts).
    pub fn revoke(&mut self, id: u64) -> Result<(), TokenError> {
        self.add(Revocation::Id(id))
    }

    /// Lifts the revocation of id `id` (to free capacity once that token has expired); whether
    /// it was revoked.
    pub fn unrevoke(&mut self, id: u64) -> bool {
        self.revoked.remove(&Revocation::Id(id))
    }

    /// Revokes every token issued to node `node`, from the next `verify` on, until
    /// [`Verifier::unrevoke_subject`]. Bounded as [`Verifier::revoke`] is.
    pub fn revoke_subject(&mut self, node: NodeId) -> Result<(), TokenError> {
        self.add(Revocation::Subject(node))
    }

    /// Lifts [`Verifier::revoke_subject`] for `node`; whether it was revoked. Tokens revoked
    /// by id stay revoked.
    pub fn unrevoke_subject(&mut self, node: NodeId) -> bool {
        self.revoked.remove(&Revocation::Subject(node))
    }

    /// Whether `token` is revoked, by its id or its subject. Allocates nothing.
    pub fn is_revoked(&self, token: &Token) -> bool {
        self.check_revoked(token).is_err()
    }

    /// How many revocations (ids and subjects) the set holds.
    pub fn revocations(&self) -> usize {
        self.revoked.len()
    }

    /// The most revocations the set holds.
    pub fn revocation_capacity(&self) -> usize {
        self.capacity
    }

    fn add(&mut self, r: Revocation) -> Result<(), TokenError> {
        if self.revoked.contains(&r) {
            return Ok(());
        }
        if self.revoked.len() >= self.capacity {
            return Err(TokenError::RevocationFull {
                capacity: self.capacity,
            });
        }
        self.revoked.insert(r);
        Ok(())
    }

    fn check_revoked(&self, token: &Token) -> Result<(), TokenError> {
        if self.revoked.is_empty() {
            return Ok(());
        }
        if self.revoked.contains(&Revocation::Id(token.id)) {
            return Err(TokenError::Revoked { id: token.id });
        }
        if self
            .revoked
            .contains(&Revocation::Subject(token.subject_node))
        {
            return Err(TokenError::SubjectRevoked {
                id: token.id,
                subject: token.subject_node,
            });
        }
        Ok(())
    }
}

/// What [`Roster::admit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// A new subscription, counted against the node's cap.
    New,
    /// The node already held this subscription; nothing changed.
    Already,
}

/// The subscriptions one shard has admitted, at most `cap_per_node` per subscriber node.
/// Single-threaded: owned by the shard.
///
/// Admission looks the node up once and checks the cap on the entry it found, so the cap can
/// never be exceeded; re-subscribing to a held (node, shard) is `Already` (idempotent, even at
/// the cap) and allocates nothing.
#[derive(Debug)]
pub struct Roster {
    cap: usize,
    nodes: HashMap<NodeId, ShardSet>,
    len: usize,
}

impl Roster {
    /// An empty roster admitting at most `cap_per_node` subscriptions per node.
    pub fn new(cap_per_node: usize) -> Roster {
        Roster {
            cap: cap_per_node,
            nodes: HashMap::new(),
            len: 0,
        }
    }

    /// The per-node cap.
    pub fn cap_per_node(&self) -> usize {
        self.cap
    }

    /// Admits `node`'s subscription to `shard`: [`Admitted::Already`] if it holds it,
    /// [`Admitted::New`] if it is under its cap, else [`TokenError::SubscriptionCap`].
    /// [`TokenError::ShardOutOfRange`] for a shard past 255.
    pub fn admit(&mut self, node: NodeId, shard: u16) -> Result<Admitted, TokenError> {
        if shard >= SHARD_LIMIT {
            return Err(TokenError::ShardOutOfRange { shard });
        }
        let refused = TokenError::SubscriptionCap {
            node,
            cap: self.cap,
        };
        match self.nodes.entry(node) {
            Entry::Occupied(mut e) => {
                let held = e.get_mut();
                if held.contains(shard) {
                    return Ok(Admitted::Already);
                }
                if held.len() >= self.cap {
                    return Err(refused);
                }
                held.insert(shard)?;
            }
            Entry::Vacant(e) => {
                if self.cap == 0 {
                    return Err(refused);
                }
                let mut held = ShardSet::empty();
                held.insert(shard)?;
                e.insert(held);
            }
        }
        self.len += 1;
        Ok(Admitted::New)
    }

    /// Removes `node`'s subscription to `shard`; whether it held it.
    pub fn remove(&mut self, node: NodeId, shard: u16) -> bool {
        let Some(held) = self.nodes.get_mut(&node) else {
            return false;
        };
        if !held.remove(shard) {
            return false;
        }
        if held.is_empty() {
            self.nodes.remove(&node);
        }
        self.len -= 1;
        true
    }

    /// Removes every subscription of `node`; how many it held.
    pub fn remove_node(&mut self, node: NodeId) -> usize {
        let n = self.nodes.remove(&node).map_or(0, |held| held.len());
        self.len -= n;
        n
    }

    /// Whether `node` holds a subscription to `shard`.
    pub fn holds(&self, node: NodeId, shard: u16) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|held| held.contains(shard))
    }

    /// How many subscriptions `node` holds.
    pub fn count(&self, node: NodeId) -> usize {
        self.nodes.get(&node).map_or(0, ShardSet::len)
    }

    /// How many subscriptions the roster holds, over every node.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the roster holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
