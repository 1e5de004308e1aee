//! The local socket's framing: what a client and netd say to each other over the Unix socket.
//!
//! Every frame is a little-endian `u32` length (of what follows it), a kind byte, and a body:
//!
//! ```text
//! frame    = len:u32 kind:u8 body            len = 1 + body length, at most frame_bytes_max
//!
//! client -> netd
//!   PUBLISH  kind 0x01  flags:u8 count:u32 count * (key_len:u16 key payload_len:u32 payload)
//!                       flags bit 0: ACK this frame (reply ACK once durable); other bits 0
//!   SYNC     kind 0x02  (empty)                reply ACK once everything sent is durable
//!   READ     kind 0x03  max_events:u32 wait_ms:u32 cursor_len:u16 cursor
//!                       cursor: a cursor netd returned (`net1.`...), empty = the beginning
//!
//! netd -> client
//!   ACK      kind 0x81  through:u64 dropped:u64
//!                       every event of this connection numbered 1..=through is durable
//!                       (or was dropped by the bus's backpressure mode: `dropped` of them)
//!   EVENTS   kind 0x82  cursor_len:u16 cursor count:u32
//!                       count * (shard:u16 seq:u64 ts_ns:u64 payload_len:u32 payload)
//!   ERROR    kind 0x83  code:u16 message (UTF-8, the rest of the frame); netd then closes
//! ```
//!
//! A connection's events are numbered from 1 in the order netd received them. Decoding
//! checks every length and count against the bytes before anything is used, and a PUBLISH
//! frame is checked whole before any of its events is sent: a bad frame ingests nothing.

use std::fmt;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// Client to netd: events.
pub const PUBLISH: u8 = 0x01;
/// Client to netd: acknowledge everything sent so far.
pub const SYNC: u8 = 0x02;
/// Client to netd: events from a cursor.
pub const READ: u8 = 0x03;
/// netd to client: events up to a number are durable.
pub const ACK: u8 = 0x81;
/// netd to client: events read.
pub const EVENTS: u8 = 0x82;
/// netd to client: the connection is closed for the reason given.
pub const ERROR: u8 = 0x83;

/// PUBLISH flag: acknowledge this frame once its events are durable.
pub const FLAG_ACK: u8 = 0x01;

/// Longest key (it only chooses the shard).
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest cursor text accepted.
pub const CURSOR_BYTES_MAX: usize = 4096;

/// Error codes of ERROR frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame was malformed (truncated, garbage, bad lengths, unknown kind or flags).
    BadFrame = 1,
    /// A frame or payload above the limit.
    TooLarge = 2,
    /// The bus cannot take or keep events (a shard failed or stopped).
    Unavailable = 3,
    /// netd is shutting down.
    ShuttingDown = 4,
    /// An acknowledgement did not come within the configured time.
    Timeout = 5,
    /// The cursor is not one of this bus's.
    BadCursor = 6,
    /// Too many connections.
    Busy = 7,
    /// A frame, once begun, did not arrive whole within the configured time.
    SlowFrame = 8,
}

/// Why a frame was refused; names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The code sent back.
    pub code: ErrorCode,
    /// What was wrong, in words.
    pub what: String,
}

impl FrameError {
    fn bad(what: impl Into<String>) -> FrameError {
        FrameError {
            code: ErrorCode::BadFrame,
            what: what.into(),
        }
    }

    fn too_large(what: impl Into<String>) -> FrameError {
        FrameError {
            code: ErrorCode::TooLarge,
            what: what.into(),
        }
    }

    /// A short name of the cause, for counters and rate-limited logs.
    pub fn cause(&self) -> &'static str {
        match self.code {
            ErrorCode::BadFrame => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::Busy => "busy",
            ErrorCode::SlowFrame => "slow_frame",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for FrameError {}

/// The limits a decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame (after the length prefix).
    pub frame_bytes_max: usize,
    /// Largest payload the bus takes.
    pub payload_bytes_max: usize,
    /// Most events a READ may ask for.
    pub read_events_max: u32,
    /// Longest wait a READ may ask for, ms.
    pub read_wait_ms_max: u32,
}

/// Where the next frame ends in `buf`: `Ok(None)` until its length prefix and body are all
/// there; an error when the length itself is refused (0 or above the limit).
pub fn frame_end(buf: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Err(FrameError::bad(
            "frame length 0 (a frame holds at least its kind byte)",
        ));
    }
    if len > limits.frame_bytes_max {
        return Err(FrameError::too_large(format!(
            "frame of {len} bytes exceeds frame_bytes_max ({})",
            limits.frame_bytes_max
        )));
    }
    let end = LEN_BYTES + len;
    Ok((buf.len() >= end).then_some(end))
}

/// A decoded client frame, borrowing from the frame's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Events to ingest (already checked whole).
    Publish {
        /// Acknowledge once durable.
        ack: bool,
        /// The events.
        events: Events<'a>,
    },
    /// Acknowledge everything sent so far.
    Sync,
    /// Read events.
    Read {
        /// Most events to return.
        max_events: u32,
        /// How long to wait when none are there yet, ms.
        wait_ms: u32,
        /// The cursor's text (empty: the beginning).
        cursor: &'a str,
    },
}

/// A PUBLISH frame's events, checked: iterating cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events<'a> {
    count: u32,
    /// The payloads' summed length (counted while checking the frame).
    payload_bytes: u64,
    bytes: &'a [u8],
}

impl<'a> Events<'a> {
    /// Events in the frame.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// The payloads' summed length.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Whether the frame holds no events (never: a PUBLISH holds at least one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(key, payload)` of each event, in order.
    pub fn iter(&self) -> EventIter<'a> {
        EventIter {
            left: self.count,
            r: Reader::new(self.bytes),
        }
    }
}

/// Iterator over checked events.
#[derive(Debug, Clone)]
pub struct EventIter<'a> {
    left: u32,
    r: Reader<'a>,
}

impl<'a> Iterator for EventIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked by `decode_request`: these reads cannot fail.
        let key_len = self.r.u16().ok()? as usize;
        let key = self.r.take(key_len).ok()?;
        let len = self.r.u32().ok()? as usize;
        let payload = self.r.take(len).ok()?;
        Some((key, payload))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Decodes one client frame (`frame` = the bytes after the length prefix).
pub fn decode_request<'a>(frame: &'a [u8], limits: &Limits) -> Result<Request<'a>, FrameError> {
    let mut r = Reader::new(frame);
    let kind = r.u8().map_err(|_| FrameError::bad("empty frame"))?;
    match kind {
        PUBLISH => decode_publish(&mut r, limits),
        SYNC => {
            r.end("SYNC")?;
            Ok(Request::Sync)
        }
        READ => {
            let max_events = r.u32().map_err(|_| truncated("READ", "max_events"))?;
            let wait_ms = r.u32().map_err(|_| truncated("READ", "wait_ms"))?;
            let cursor_len = r.u16().map_err(|_| truncated("READ", "cursor_len"))? as usize;
            if cursor_len > CURSOR_BYTES_MAX {
                return Err(FrameError::bad(format!(
                    "READ cursor of {cursor_len} bytes exceeds {CURSOR_BYTES_MAX}"
                )));
            }
            let cursor = r
                .take(cursor_len)
                .map_err(|_| truncated("READ", "cursor"))?;
            r.end("READ")?;
            if max_events == 0 || max_events > limits.read_events_max {
                return Err(FrameError::bad(format!(
                    "READ max_events {max_events} is outside 1..={}",
                    limits.read_events_max
                )));
            }
            if wait_ms > limits.read_wait_ms_max {
                return Err(FrameError::bad(format!(
                    "READ wait_ms {wait_ms} exceeds {}",
                    limits.read_wait_ms_max
                )));
            }
            let cursor = std::str::from_utf8(cursor)
                .map_err(|_| FrameError::bad("READ cursor is not UTF-8"))?;
            Ok(Request::Read {
                max_events,
                wait_ms,
                cursor,
            })
        }
        other => Err(FrameError::bad(format!(
            "unknown frame kind 0x{other:02x} (a client sends PUBLISH 0x01, SYNC 0x02 or READ 0x03)"
        ))),
    }
}

fn decode_publish<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<Request<'a>, FrameError> {
    let flags = r.u8().map_err(|_| truncated("PUBLISH", "flags"))?;
    if flags & !FLAG_ACK != 0 {
        return Err(FrameError::bad(format!(
            "PUBLISH flags 0x{flags:02x} set unknown bits (only 0x01, ACK, is defined)"
        )));
    }
    let count = r.u32().map_err(|_| truncated("PUBLISH", "count"))?;
    if count == 0 {
        return Err(FrameError::bad("PUBLISH with count 0"));
    }
    // Each event takes at least 6 bytes: a count larger than that cannot be honest, and
    // checking it first bounds the loop below by the frame's size, not by the count.
    if u64::from(count) * 6 > r.left() as u64 {
        return Err(FrameError::bad(format!(
            "PUBLISH count {count} needs more bytes than the frame's {} left",
            r.left()
        )));
    }
    let bytes = r.rest();
    let mut check = Reader::new(bytes);
    let mut payload_bytes = 0u64;
    for i in 0..count {
        let key_len = check.u16().map_err(|_| truncated_event(i, "key_len"))? as usize;
        if key_len > KEY_BYTES_MAX {
            return Err(FrameError::bad(format!(
                "PUBLISH event {i}: key of {key_len} bytes exceeds {KEY_BYTES_MAX}"
            )));
        }
        check.take(key_len).map_err(|_| truncated_event(i, "key"))?;
        let len = check.u32().map_err(|_| truncated_event(i, "payload_len"))? as usize;
        if len > limits.payload_bytes_max {
            return Err(FrameError::too_large(format!(
                "PUBLISH event {i}: payload of {len} bytes exceeds the bus's maximum of {}",
                limits.payload_bytes_max
            )));
        }
        check.take(len).map_err(|_| truncated_event(i, "payload"))?;
        payload_bytes += len as u64;
    }
    check.end("PUBLISH")?;
    Ok(Request::Publish {
        ack: flags & FLAG_ACK != 0,
        events: Events {
            count,
            payload_bytes,
            bytes,
        },
    })
}

fn truncated(kind: &str, field: &str) -> FrameError {
    FrameError::bad(format!("{kind} frame truncated at {field}"))
}

fn truncated_event(i: u32, field: &str) -> FrameError {
    FrameError::bad(format!("PUBLISH event {i} truncated at {field}"))
}

/// A bounds-checked little-endian reader.
#[derive(Debug, Clone)]
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

#[derive(Debug)]
struct Short;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self.at.checked_add(n).ok_or(Short)?;
        let s = self.buf.get(self.at..end).ok_or(Short)?;
        self.at = end;
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn end(&self, kind: &str) -> Result<(), FrameError> {
        if self.left() != 0 {
            return Err(FrameError::bad(format!(
                "{kind} frame has {} bytes after its last field",
                self.left()
            )));
        }
        Ok(())
    }
}

/// Starts a frame of `kind` in `out`; [`finish`] writes its length.
pub fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.push(kind);
    at
}

/// Writes the length of the frame begun at `at`.
pub fn finish(out: &mut [u8], at: usize) {
    let len = u32::try_from(out.len() - at - LEN_BYTES).expect("frames are below 4 GiB");
    out[at..at + LEN_BYTES].copy_from_slice(&len.to_le_bytes());
}

/// Appends a PUBLISH frame of `events` (a client's side).
pub fn encode_publish<'e>(
    out: &mut Vec<u8>,
    ack: bool,
    events: impl IntoIterator<Item = (&'e [u8], &'e [u8])>,
) {
    let at = begin(out, PUBLISH);
    out.push(if ack { FLAG_ACK } else { 0 });
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    for (key, payload) in events {
        out.extend_from_slice(&u16::try_from(key.len()).expect("key").to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&u32::try_from(payload.len()).expect("payload").to_le_bytes());
        out.extend_from_slice(payload);
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    finish(out, at);
}

/// Appends a SYNC frame.
pub fn encode_sync(out: &mut Vec<u8>) {
    let at = begin(out, SYNC);
    finish(out, at);
}

/// Appends a READ frame.
pub fn encode_read(out: &mut Vec<u8>, max_events: u32, wait_ms: u32, cursor: &str) {
    let at = begin(out, READ);
    out.extend_from_slice(&max_events.to_le_bytes());
    out.extend_from_slice(&wait_ms.to_le_bytes());
    out.extend_from_slice(&u16::try_from(cursor.len()).expect("cursor").to_le_bytes());
    out.extend_from_slice(cursor.as_bytes());
    finish(out, at);
}

/// Appends an ACK frame.
pub fn encode_ack(out: &mut Vec<u8>, through: u64, dropped: u64) {
    let at = begin(out, ACK);
    out.extend_from_slice(&through.to_le_bytes());
    out.extend_from_slice(&dropped.to_le_bytes());
    finish(out, at);
}

/// Appends an ERROR frame.
pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    let at = begin(out, ERROR);
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(message.as_bytes());
    finish(out, at);
}

/// Appends an EVENTS frame: the cursor to read on from, and the events.
pub fn encode_events<'e>(
    out: &mut Vec<u8>,
    cursor: &str,
    events: impl ExactSizeIterator<Item = ReadEvent<'e>>,
) {
    let at = begin(out, EVENTS);
    let cursor_len = u16::try_from(cursor.len()).expect("a bus's cursor text is below 64 KiB");
    out.extend_from_slice(&cursor_len.to_le_bytes());
    out.extend_from_slice(cursor.as_bytes());
    let count = u32::try_from(events.len()).expect("at most read_events_max events");
    out.extend_from_slice(&count.to_le_bytes());
    for e in events {
        out.extend_from_slice(&e.shard.to_le_bytes());
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.ts_ns.to_le_bytes());
        let len = u32::try_from(e.payload.len()).expect("payloads are below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e.payload);
    }
    finish(out, at);
}

/// One event of an EVENTS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEvent<'a> {
    /// Its shard.
    pub shard: u16,
    /// Its sequence number in the shard.
    pub seq: u64,
    /// Its timestamp, ns since the epoch.
    pub ts_ns: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A decoded netd frame (a client's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Events numbered up to `through` are durable.
    Ack {
        /// Highest event number durable.
        through: u64,
        /// Of those, dropped by backpressure.
        dropped: u64,
    },
    /// Events read, and the cursor to read on from.
    Events {
        /// The next cursor.
        cursor: &'a str,
        /// The events.
        events: Vec<ReadEvent<'a>>,
    },
    /// netd closed the connection for this reason.
    Error {
        /// The code.
        code: u16,
        /// The message.
        message: &'a str,
    },
}

/// Decodes a frame netd sent (`frame` = the bytes after the length prefix).
pub fn decode_reply(frame: &[u8]) -> Result<Reply<'_>, FrameError> {
    let mut r = Reader::new(frame);
    let short = |what: &str| FrameError::bad(format!("reply truncated at {what}"));
    match r.u8().map_err(|_| short("kind"))? {
        ACK => {
            let through = r.u64().map_err(|_| short("through"))?;
            let dropped = r.u64().map_err(|_| short("dropped"))?;
            r.end("ACK")?;
            Ok(Reply::Ack { through, dropped })
        }
        EVENTS => {
            let n = r.u16().map_err(|_| short("cursor_len"))? as usize;
            let cursor = std::str::from_utf8(r.take(n).map_err(|_| short("cursor"))?)
                .map_err(|_| FrameError::bad("cursor is not UTF-8"))?;
            let count = r.u32().map_err(|_| short("count"))?;
            let mut events = Vec::with_capacity((count as usize).min(r.left() / 22));
            for _ in 0..count {
                let shard = r.u16().map_err(|_| short("shard"))?;
                let seq = r.u64().map_err(|_| short("seq"))?;
                let ts_ns = r.u64().map_err(|_| short("ts_ns"))?;
                let len = r.u32().map_err(|_| short("payload_len"))? as usize;
                let payload = r.take(len).map_err(|_| short("payload"))?;
                events.push(ReadEvent {
                    shard,
                    seq,
                    ts_ns,
                    payload,
                });
            }
            r.end("EVENTS")?;
            Ok(Reply::Events { cursor, events })
        }
        ERROR => {
            let code = r.u16().map_err(|_| short("code"))?;
            let message = std::str::from_utf8(r.rest())
                .map_err(|_| FrameError::bad("error message is not UTF-8"))?;
            Ok(Reply::Error { code, message })
        }
        other => Err(FrameError::bad(format!("unknown reply kind 0x{other:02x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        frame_bytes_max: 1 << 20,
        payload_bytes_max: 1000,
        read_events_max: 100,
        read_wait_ms_max: 1000,
    };

    fn body(frame: &[u8]) -> &[u8] {
        let end = frame_end(frame, &LIMITS).unwrap().unwrap();
        assert_eq!(end, frame.len());
        &frame[LEN_BYTES..]
    }

    #[test]
    fn a_publish_frame_round_trips_with_its_keys_and_payloads() {
        let mut f = Vec::new();
        let events: Vec<(&[u8], &[u8])> = vec![(b"k1", b"hello"), (b"", b""), (b"k3", &[0; 1000])];
        encode_publish(&mut f, true, events.iter().copied());
        let Request::Publish { ack, events: got } = decode_request(body(&f), &LIMITS).unwrap()
        else {
            panic!("not a publish")
        };
        assert!(ack);
        assert_eq!(got.iter().collect::<Vec<_>>(), events);
        assert_eq!(got.payload_bytes(), 1005);
    }

    #[test]
    fn every_truncation_of_a_good_frame_is_refused_by_name_never_read_past() {
        let mut f = Vec::new();
        encode_publish(&mut f, false, [(&b"key"[..], &b"payload"[..]); 3]);
        let b = body(&f).to_vec();
        for cut in 0..b.len() {
            let e = decode_request(&b[..cut], &LIMITS).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadFrame, "{cut}: {e}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(
            decode_request(&long, &LIMITS)
                .unwrap_err()
                .what
                .contains("after its last field")
        );
    }

    #[test]
    fn lengths_and_counts_are_checked_before_use() {
        assert_eq!(
            frame_end(&[0, 0, 0, 0], &LIMITS).unwrap_err().code,
            ErrorCode::BadFrame
        );
        let huge = (u32::MAX).to_le_bytes();
        assert_eq!(
            frame_end(&huge, &LIMITS).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert_eq!(frame_end(&[5, 0, 0], &LIMITS).unwrap(), None);
        // A count of 4 billion events in a 10-byte frame.
        let mut b = vec![PUBLISH, 0];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        assert!(
            decode_request(&b, &LIMITS)
                .unwrap_err()
                .what
                .contains("needs more bytes")
        );
        // A payload over the bus's maximum.
        let mut f = Vec::new();
        encode_publish(&mut f, false, [(&b""[..], &[0u8; 1001][..])]);
        assert_eq!(
            decode_request(body(&f), &LIMITS).unwrap_err().code,
            ErrorCode::TooLarge
        );
        // Unknown kind, unknown flags.
        assert!(
            decode_request(&[0x7f], &LIMITS)
                .unwrap_err()
                .what
                .contains("unknown frame kind 0x7f")
        );
        let mut f = Vec::new();
        encode_publish(&mut f, false, [(&b""[..], &b"x"[..])]);
        let mut b = body(&f).to_vec();
        b[1] = 0x80;
        assert!(
            decode_request(&b, &LIMITS)
                .unwrap_err()
                .what
                .contains("unknown bits")
        );
    }

    #[test]
    fn read_frames_are_bounded() {
        let mut f = Vec::new();
        encode_read(&mut f, 10, 500, "net1.x");
        assert_eq!(
            decode_request(body(&f), &LIMITS).unwrap(),
            Request::Read {
                max_events: 10,
                wait_ms: 500,
                cursor: "net1.x"
            }
        );
        for (max, wait) in [(0, 0), (101, 0), (1, 1001)] {
            let mut f = Vec::new();
            encode_read(&mut f, max, wait, "");
            assert!(decode_request(body(&f), &LIMITS).is_err(), "{max} {wait}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut f = Vec::new();
        encode_ack(&mut f, 7, 1);
        assert_eq!(
            decode_reply(body(&f)).unwrap(),
            Reply::Ack {
                through: 7,
                dropped: 1
            }
        );
        let events = [
            ReadEvent {
                shard: 1,
                seq: 42,
                ts_ns: 7,
                payload: b"abc",
            },
            ReadEvent {
                shard: 0,
                seq: 0,
                ts_ns: u64::MAX,
                payload: b"",
            },
        ];
        let mut f = Vec::new();
        encode_events(&mut f, "net1.x", events.iter().cloned());
        assert_eq!(
            decode_reply(body(&f)).unwrap(),
            Reply::Events {
                cursor: "net1.x",
                events: events.to_vec()
            }
        );
        let mut f = Vec::new();
        encode_error(&mut f, ErrorCode::Busy, "too many");
        assert_eq!(
            decode_reply(body(&f)).unwrap(),
            Reply::Error {
                code: 7,
                message: "too many"
            }
        );
    }
}
