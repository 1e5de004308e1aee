//! Counters of a shard's mesh and of each peer. Each has a single writer (the shard that owns
//! the endpoint): increments are a relaxed load and store, no read-modify-write; any thread
//! may read them.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter with a single writer.
#[derive(Debug, Default)]
pub struct Stat(AtomicU64);

impl Stat {
    /// Adds `n` (single writer: load and store, no RMW).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a datagram was dropped. Each cause has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropCause {
    /// Not a packet of this protocol (length, version, kind, reserved bits, truncated).
    Malformed = 0,
    /// A data counter already accepted, or a handshake response already used.
    Replay = 1,
    /// A data counter below the replay window, or an initiation whose timestamp is not newer
    /// than the last one accepted from that node.
    TooOld = 2,
    /// Failed authentication: AEAD tag, Noise, PSK, or the static key's proof.
    Auth = 3,
    /// An initiation beyond its source's handshake rate.
    Paced = 4,
    /// A receiver index no live session or initiation of this shard has.
    UnknownReceiver = 5,
    /// A known node id with a different static key (rotation not allowed for it).
    KeyMismatch = 6,
    /// A new peer while the peer table is full.
    PeerCap = 7,
    /// An initiation that lost the tie-break against our own concurrent one.
    Conflict = 8,
    /// A packet on a session past its lifetime.
    Expired = 9,
}

/// Number of drop causes.
pub const DROP_CAUSES: usize = 10;

impl DropCause {
    pub const ALL: [DropCause; DROP_CAUSES] = [
        DropCause::Malformed,
        DropCause::Replay,
        DropCause::TooOld,
        DropCause::Auth,
        DropCause::Paced,
        DropCause::UnknownReceiver,
        DropCause::KeyMismatch,
        DropCause::PeerCap,
        DropCause::Conflict,
        DropCause::Expired,
    ];

    /// The name used in stats and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::Replay => "replay",
            DropCause::TooOld => "too_old",
            DropCause::Auth => "auth",
            DropCause::Paced => "paced",
            DropCause::UnknownReceiver => "unknown_receiver",
            DropCause::KeyMismatch => "key_mismatch",
            DropCause::PeerCap => "peer_cap",
            DropCause::Conflict => "conflict",
            DropCause::Expired => "expired",
        }
    }
}

/// Traffic counters, kept per shard and per peer.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets_in: Stat,
    pub bytes_in: Stat,
    pub packets_out: Stat,
    pub bytes_out: Stat,
    /// Application messages delivered (data packets with a payload).
    pub messages_in: Stat,
    /// Application messages sealed for sending.
    pub messages_out: Stat,
    /// Handshakes completed (either role).
    pub handshakes: Stat,
    /// Initiations sent (first attempts and retries).
    pub initiations: Stat,
    /// Handshakes that replaced a live session (rekeys).
    pub rekeys: Stat,
    /// Handshake rounds given up after `handshake_timeout`.
    pub handshake_timeouts: Stat,
    /// Sessions closed because nothing arrived for `session_timeout`.
    pub session_timeouts: Stat,
    pub dropped: [Stat; DROP_CAUSES],
}

impl Counters {
    pub fn count_drop(&self, cause: DropCause) {
        self.dropped[cause as usize].add(1);
    }

    pub fn dropped(&self, cause: DropCause) -> u64 {
        self.dropped[cause as usize].get()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Stat::get).sum()
    }

    /// A plain copy.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            packets_in: self.packets_in.get(),
            bytes_in: self.bytes_in.get(),
            packets_out: self.packets_out.get(),
            bytes_out: self.bytes_out.get(),
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            handshakes: self.handshakes.get(),
            initiations: self.initiations.get(),
            rekeys: self.rekeys.get(),
            handshake_timeouts: self.handshake_timeouts.get(),
            session_timeouts: self.session_timeouts.get(),
            dropped: std::array::from_fn(|i| self.dropped[i].get()),
        }
    }
}

/// A plain copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub handshakes: u64,
    pub initiations: u64,
    pub rekeys: u64,
    pub handshake_timeouts: u64,
    pub session_timeouts: u64,
    pub dropped: [u64; DROP_CAUSES],
}

impl CountersSnapshot {
    pub fn dropped(&self, cause: DropCause) -> u64 {
        self.dropped[cause as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds `other` into `self` (for totals over shards).
    pub fn add(&mut self, other: &CountersSnapshot) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.handshakes += other.handshakes;
        self.initiations += other.initiations;
        self.rekeys += other.rekeys;
        self.handshake_timeouts += other.handshake_timeouts;
        self.session_timeouts += other.session_timeouts;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
    }
}
