//! Reading a bus back by cursor, as a consumer does: polls from the start of every shard until
//! the expected number of events came back, handing each event to a visitor, then polls once
//! more to make sure the bus holds nothing beyond them. Shared by `demo` (which checks every
//! event against its ledger), `storage` (which times the consumer path) and `write` (which
//! acknowledges what it reads).
//!
//! Only the time spent inside `Bus::poll` is charged to net: the visitor's work and the empty
//! polls that wait for the shards (the last one only confirms the end) are not. The loop polls
//! again as soon as the visitor is done, so a reader's read-ahead is never left idle by the
//! harness; what it reads ahead while the visitor runs is not charged, and `wall` (which
//! counts the visitor too) bounds what that is worth.

use crate::Failure;
use net_engine::{Bus, Cursor, Event, PollResponse};
use std::time::{Duration, Instant};

/// Events asked for per poll: large enough that the per-call cost is amortised.
pub const POLL_LIMIT: usize = 65_536;

/// How long polls may return nothing before the read-back is declared stuck.
const POLL_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before polling again after an empty poll.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(1);

/// What reading everything back measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    pub events: u64,
    pub payload_bytes: u64,
    /// Time spent inside `Bus::poll` only.
    pub polling: Duration,
    /// From the first poll to the end of the last one that returned events: the polls and
    /// what happens between them (the visitor's work, dropping each response).
    pub wall: Duration,
}

/// Polls from the start of every shard until `expected` events were read, passing each to
/// `visit`; a visitor's error fails the read as a verification failure.
pub fn read_back(
    bus: &Bus,
    expected: u64,
    mut visit: impl FnMut(&Event) -> Result<(), String>,
) -> Result<ReadBack, Failure> {
    read_from(bus, Cursor::start(), expected, |events| {
        events
            .iter()
            .try_for_each(|e| visit(e).map_err(Failure::Verification))
    })
}

/// Polls from `cursor` until `expected` events were read, passing each poll's events to
/// `take`; fails on `take`'s error, a failed or skipping poll, more events than expected, or
/// no progress for `POLL_STALL_TIMEOUT`.
pub fn read_from(
    bus: &Bus,
    mut cursor: Cursor,
    expected: u64,
    mut take: impl FnMut(&[Event]) -> Result<(), Failure>,
) -> Result<ReadBack, Failure> {
    let mut read = ReadBack {
        events: 0,
        payload_bytes: 0,
        polling: Duration::ZERO,
        wall: Duration::ZERO,
    };
    let begun = Instant::now();
    let mut last_progress = begun;
    loop {
        let started = Instant::now();
        let response = bus
            .poll(&cursor, POLL_LIMIT)
            .map_err(|e| Failure::engine("poll", e))?;
        let done = Instant::now();
        let took = done - started;
        check_response(&response)?;
        if response.events.is_empty() {
            if response.next != cursor {
                return Err(Failure::Engine("an empty poll moved the cursor".to_owned()));
            }
            if read.events == expected {
                return Ok(read);
            }
            if last_progress.elapsed() > POLL_STALL_TIMEOUT {
                return Err(stalled(read.events, expected, &response));
            }
            std::thread::sleep(EMPTY_POLL_PAUSE);
            continue;
        }
        read.polling += took;
        read.wall = done - begun;
        take(&response.events)?;
        let bytes: usize = response.events.iter().map(|e| e.payload.len()).sum();
        read.payload_bytes += bytes as u64;
        read.events += response.events.len() as u64;
        crate::progress::set(read.events);
        if read.events > expected {
            let msg = format!("read {} events, {expected} were sent", read.events);
            return Err(Failure::Verification(msg));
        }
        last_progress = Instant::now();
        cursor = response.next;
    }
}

/// Fails on a poll that names failed shards or skipped events.
pub fn check_response(response: &PollResponse) -> Result<(), Failure> {
    if !response.failed_shards.is_empty() {
        let failed = &response.failed_shards;
        return Err(Failure::Engine(format!("poll: shards failed: {failed:?}")));
    }
    if response.skipped {
        return Err(Failure::Verification("poll skipped events".to_owned()));
    }
    Ok(())
}

/// The failure of a read that made no progress for `POLL_STALL_TIMEOUT`.
fn stalled(read: u64, expected: u64, response: &PollResponse) -> Failure {
    let failed = &response.failed_shards;
    Failure::Verification(format!(
        "read {read} of {expected} events, then nothing for {POLL_STALL_TIMEOUT:?} \
         (failed shards {failed:?})"
    ))
}
