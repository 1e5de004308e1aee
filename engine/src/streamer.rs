//! The mesh's log reader: one thread per bus that reads a publisher shard's log for the
//! subscriptions that cannot be fed from the shard's batches as they complete (a new
//! subscription from an older position, one that ran out of credit and fell behind, and the
//! holes a subscriber names). The shard thread never reads its log for a consumer; it asks
//! this thread through an SPSC ring and gets back frames ready to seal through another.
//!
//! A request names a stream (the shard's key for it and its generation), a range of
//! sequence numbers and a byte budget. The answer is `DATA`/`FRAGMENT`/`SKIP` frames for a
//! prefix of the range, packed exactly as the shard packs batches, then `DONE` with where it
//! stopped (the end of the range, the budget, or the log's visible end). A range the log no
//! longer has comes back as `SKIP`, so the subscriber is told, never left waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use net_storage::Reader;
use net_transport::stream::{self, DataFrameWriter, StreamRef};

use crate::notify::Notify;
use crate::ring::{RingReader, RingWriter};
use crate::wake::ShardSignal;

/// Response entry kinds (first payload byte).
pub(crate) const RESP_FRAME: u8 = 0;
pub(crate) const RESP_DONE: u8 = 1;
pub(crate) const RESP_ERROR: u8 = 2;
/// Request purposes.
pub(crate) const READ_NEW: u8 = 0;
pub(crate) const READ_RESEND: u8 = 1;
/// Bytes of an encoded request.
const REQUEST_BYTES: usize = 4 + 4 + 4 + 8 + 8 + 8 + 1 + 1;
/// Records and bytes one log read asks for.
const READ_EVENTS: usize = 1024;
const READ_BYTES: usize = 256 << 10;

/// A read the shard asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadRequest {
    /// The shard's key for the stream (echoed).
    pub(crate) key: u32,
    pub(crate) stream: StreamRef,
    pub(crate) from: u64,
    /// One past the last sequence number wanted (`u64::MAX`: up to the visible end).
    pub(crate) to: u64,
    /// Record bytes to send at most...
    pub(crate) max_bytes: u64,
    /// ...except that the first record goes whatever its size (the subscriber consumed
    /// everything sent: a record larger than its window still goes, alone).
    pub(crate) oversize_ok: bool,
    pub(crate) purpose: u8,
}

impl ReadRequest {
    pub(crate) fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut b = [0u8; REQUEST_BYTES];
        b[0..4].copy_from_slice(&self.key.to_le_bytes());
        b[4..8].copy_from_slice(&self.stream.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.stream.generation.to_le_bytes());
        b[12..20].copy_from_slice(&self.from.to_le_bytes());
        b[20..28].copy_from_slice(&self.to.to_le_bytes());
        b[28..36].copy_from_slice(&self.max_bytes.to_le_bytes());
        b[36] = self.purpose;
        b[37] = u8::from(self.oversize_ok);
        b
    }

    fn decode(b: &[u8]) -> Option<ReadRequest> {
        if b.len() != REQUEST_BYTES {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(ReadRequest {
            key: u32_at(0),
            stream: StreamRef {
                id: u32_at(4),
                generation: u32_at(8),
            },
            from: u64_at(12),
            to: u64_at(20),
            max_bytes: u64_at(28),
            purpose: b[36],
            oversize_ok: b[37] != 0,
        })
    }

    /// The tag of its responses: key and purpose.
    pub(crate) fn tag(&self) -> u64 {
        u64::from(self.key) | (u64::from(self.purpose) << 32)
    }
}

/// Splits a response tag into key and purpose.
pub(crate) fn untag(tag: u64) -> (u32, u8) {
    (
        u32::try_from(tag & 0xffff_ffff).expect("masked"),
        u8::try_from(tag >> 32).unwrap_or(u8::MAX),
    )
}

/// A `DONE` response's payload: where the read stopped, and whether the byte budget
/// stopped it (rather than the range's end or the log's visible end).
pub(crate) fn done_payload(generation: u32, reached: u64, by_budget: bool) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0] = RESP_DONE;
    b[1..5].copy_from_slice(&generation.to_le_bytes());
    b[5..13].copy_from_slice(&reached.to_le_bytes());
    b[13] = u8::from(by_budget);
    b
}

/// Decodes a `DONE` payload: (generation, reached, stopped by the budget).
pub(crate) fn parse_done(b: &[u8]) -> Option<(u32, u64, bool)> {
    if b.len() != 14 || b[0] != RESP_DONE {
        return None;
    }
    Some((
        u32::from_le_bytes(b[1..5].try_into().ok()?),
        u64::from_le_bytes(b[5..13].try_into().ok()?),
        b[13] != 0,
    ))
}

/// One shard as the reader thread sees it.
pub(crate) struct StreamerShard {
    pub(crate) requests: RingReader,
    pub(crate) responses: RingWriter,
    pub(crate) reader: Reader,
    pub(crate) signal: Arc<ShardSignal>,
    /// One response entry being assembled (sized for the largest frame once).
    pub(crate) scratch: Vec<u8>,
}

impl std::fmt::Debug for StreamerShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamerShard").finish_non_exhaustive()
    }
}

/// What the reader thread shares with the bus.
#[derive(Debug, Default)]
pub(crate) struct StreamerControl {
    pub(crate) wake: Notify,
    pub(crate) stop: AtomicBool,
}

/// Runs the reader thread until told to stop.
pub(crate) fn run(mut shards: Vec<StreamerShard>, control: Arc<StreamerControl>, frame_max: usize) {
    let mut frame = vec![0u8; frame_max];
    let mut pending: Vec<ReadRequest> = Vec::new();
    while !control.stop.load(Ordering::Acquire) {
        let seen = control.wake.epoch();
        let mut any = false;
        for s in &mut shards {
            pending.clear();
            s.requests.drain(16, u64::MAX, |_, b| {
                if let Some(r) = ReadRequest::decode(b) {
                    pending.push(r);
                }
                true
            });
            for r in &pending {
                any = true;
                serve(s, r, &mut frame, &control);
            }
            if !pending.is_empty() {
                s.signal.wake_if_parked();
            }
        }
        if !any {
            control.wake.wait(seen, Duration::from_millis(100));
        }
    }
}

/// Writes one response entry, waiting while the shard's ring is full (the shard drains it
/// every turn); gives up when the bus stops.
fn respond(s: &mut StreamerShard, tag: u64, parts: &[&[u8]], control: &StreamerControl) -> bool {
    let entry = &mut s.scratch;
    entry.clear();
    for p in parts {
        entry.extend_from_slice(p);
    }
    let bytes = &entry[..];
    let need = s.responses.bytes_needed(bytes.len());
    let mut nap = Duration::from_micros(20);
    if !s.responses.has_room(need) {
        // What is staged must be visible to the shard, or it can never make room.
        s.responses.publish();
    }
    while !s.responses.has_room(need) {
        if control.stop.load(Ordering::Acquire) || s.responses.is_closed() {
            return false;
        }
        s.signal.wake_if_parked();
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(2));
    }
    s.responses.stage(tag, bytes);
    true
}

/// Serves one request: frames for a prefix of its range, then `DONE`.
fn serve(s: &mut StreamerShard, r: &ReadRequest, frame: &mut [u8], control: &StreamerControl) {
    let tag = r.tag();
    let (reached, by_budget) = match pack(s, r, frame, control) {
        Ok(stop) => stop,
        Err(what) => {
            respond(s, tag, &[&[RESP_ERROR], what.as_bytes()], control);
            (r.from, false)
        }
    };
    respond(
        s,
        tag,
        &[&done_payload(r.stream.generation, reached, by_budget)],
        control,
    );
    s.responses.publish();
}

fn pack(
    s: &mut StreamerShard,
    r: &ReadRequest,
    frame: &mut [u8],
    control: &StreamerControl,
) -> Result<(u64, bool), String> {
    let tag = r.tag();
    let mut at = r.from;
    let mut budget = r.max_bytes;
    // Whether the budget is strict: from the start, unless the first record may go whatever
    // its size; after any record went, always.
    let mut strict = !r.oversize_ok;
    let frame_len = frame.len();
    'reads: while at < r.to && (budget > 0 || !strict) {
        let batch = s
            .reader
            .read(at, READ_EVENTS, READ_BYTES)
            .map_err(|e| format!("reading the log at {at}: {e}"))?;
        let first = batch.records.first().map(|x| x.seq);
        // Sequence numbers the log does not have (retention, an accepted loss).
        let hole_end = match first {
            Some(f) if f > at => f,
            None if batch.next > at => batch.next,
            _ => at,
        };
        if hole_end > at {
            let to = hole_end.min(r.to);
            let n = stream::write_skip(frame, r.stream, at, to);
            if !respond(s, tag, &[&[RESP_FRAME], &frame[..n]], control) {
                return Ok((at, false));
            }
            at = to;
            continue;
        }
        if batch.records.is_empty() {
            break; // the visible end
        }
        let mut i = 0;
        while i < batch.records.len() {
            let rec = &batch.records[i];
            if rec.seq != at || rec.seq >= r.to {
                // A hole inside the batch is reported by the next read.
                continue 'reads;
            }
            let bytes = stream::record_bytes(rec.payload.len());
            if strict && bytes > budget {
                return Ok((at, true));
            }
            // Only the first record of an `oversize_ok` read gets here over the budget.
            budget = budget.max(bytes);
            if !DataFrameWriter::fits_alone(frame_len, rec.payload.len()) {
                let mut k = 0;
                while let Some(n) =
                    stream::write_fragment(frame, r.stream, rec.seq, rec.ts_ns, &rec.payload, k)
                {
                    if !respond(s, tag, &[&[RESP_FRAME], &frame[..n]], control) {
                        return Ok((at, false));
                    }
                    k += 1;
                }
                budget = budget.saturating_sub(bytes);
                strict = true;
                at += 1;
                i += 1;
                continue;
            }
            let mut w = DataFrameWriter::new(frame, r.stream, at);
            while i < batch.records.len() {
                let rec = &batch.records[i];
                let bytes = stream::record_bytes(rec.payload.len());
                if rec.seq != w.end_seq()
                    || rec.seq >= r.to
                    || !w.fits(rec.payload.len())
                    || (strict && bytes > budget)
                {
                    break;
                }
                w.push(rec.ts_ns, &rec.payload);
                budget = budget.saturating_sub(bytes);
                strict = true;
                i += 1;
            }
            let end = w.end_seq();
            let n = w.finish();
            if !respond(s, tag, &[&[RESP_FRAME], &frame[..n]], control) {
                return Ok((at, false));
            }
            at = end;
            if budget == 0 {
                return Ok((at, true));
            }
        }
    }
    Ok((at, false))
}
