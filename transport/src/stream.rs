//! Streams: a publisher shard's log delivered to a subscriber exactly once and in order, over a
//! session's datagrams, which may be lost, duplicated, reordered or late.
//!
//! This module is the I/O-free core (as the rest of the crate): frame codecs, the sender's
//! state ([`SendStream`]) and the receiver's ([`RecvStream`]). The engine moves frames between
//! them and the sockets, reads the publisher's log, and writes what the receiver delivers.
//!
//! # The protocol
//!
//! Every sealed message starts with a kind byte: [`KIND_APP`] is an application datagram (the
//! rest is the message), the others are stream frames. A stream frame names its stream by the
//! subscriber's id for it and the generation of the subscription ([`StreamRef`]): a
//! re-subscription starts a new generation, and frames of an old one are ignored.
//!
//! - The subscriber sends `SUBSCRIBE` (origin shard, first sequence number wanted, its receive
//!   window, a capability token) until the publisher answers `SUBSCRIBED` (accepted, with the
//!   log's extent, or refused with a reason).
//! - The publisher sends `DATA` frames: consecutive records of its log, `(len, ts, payload)`
//!   each, packed up to the largest message. A record too large for one frame goes as
//!   `FRAGMENT`s. A range of sequence numbers the log no longer has (retention removed it, or
//!   an operator accepted its loss) goes as `SKIP`, which the subscriber reports, never hides.
//! - The subscriber answers with `ACK`: the end of the prefix it received without a hole, the
//!   record bytes it consumed and its window (so the publisher's credit, `consumed + window`,
//!   is one value computed from one frame: never observed torn), and up to
//!   [`NACKS_MAX`] holes after that prefix. The publisher re-reads the holes from its log: the
//!   log is the retransmit buffer, so nothing sent is held in memory and nothing is dropped
//!   from a bounded queue. A hole at the tail, which the subscriber cannot see, is covered by
//!   the publisher's retransmission timeout.
//! - Credit: the publisher sends new records only while the record bytes it sent stay within
//!   `consumed + window` (a record larger than the window goes alone, once everything before
//!   it was consumed). A subscriber that stops consuming stops the publisher's sending, never
//!   its ingest: the publisher only lags in reading its log.
//!
//! Record bytes are `RECORD_OVERHEAD + payload length`, counted alike on both sides.

/// An application datagram (the rest of the message is the application's).
pub const KIND_APP: u8 = 0;
/// Subscriber → publisher: subscribe.
pub const KIND_SUBSCRIBE: u8 = 1;
/// Publisher → subscriber: the answer to a subscription.
pub const KIND_SUBSCRIBED: u8 = 2;
/// Subscriber → publisher: progress, credit and holes.
pub const KIND_ACK: u8 = 3;
/// Publisher → subscriber: consecutive records.
pub const KIND_DATA: u8 = 4;
/// Publisher → subscriber: a piece of one record too large for a frame.
pub const KIND_FRAGMENT: u8 = 5;
/// Publisher → subscriber: sequence numbers the log does not have.
pub const KIND_SKIP: u8 = 6;
/// Subscriber → publisher: end a subscription.
pub const KIND_UNSUBSCRIBE: u8 = 7;
/// Subscriber → publisher: ask for the node's shard count.
pub const KIND_DESCRIBE: u8 = 8;
/// Publisher → subscriber: the node's shard count.
pub const KIND_DESCRIPTION: u8 = 9;

/// Bytes of a stream frame's common header: kind, stream id, generation.
pub const STREAM_HEADER: usize = 9;
/// Bytes of a `DATA` frame's header (common header, first seq, record count).
pub const DATA_HEADER: usize = STREAM_HEADER + 8 + 2;
/// Bytes a record takes in a `DATA` frame besides its payload (length and timestamp); also
/// what credit counts per record besides the payload.
pub const RECORD_OVERHEAD: usize = 12;
/// Bytes of a `FRAGMENT` frame's header.
pub const FRAGMENT_HEADER: usize = STREAM_HEADER + 8 + 8 + 4 + 4 + 2;
/// Bytes of a `SKIP` frame.
pub const SKIP_LEN: usize = STREAM_HEADER + 16;
/// Holes one `ACK` names at most.
pub const NACKS_MAX: usize = 16;
/// Bytes of an `ACK` frame without holes.
pub const ACK_HEADER: usize = STREAM_HEADER + 8 + 8 + 8 + 1;
/// Bytes of the largest `ACK`.
pub const ACK_MAX: usize = ACK_HEADER + NACKS_MAX * 16;
/// Bytes of a `SUBSCRIBE` frame without its token.
pub const SUBSCRIBE_HEADER: usize = STREAM_HEADER + 2 + 8 + 8 + 2;
/// Bytes of a `SUBSCRIBED` frame without its reason.
pub const SUBSCRIBED_HEADER: usize = STREAM_HEADER + 1 + 8 + 8 + 2;
/// The longest refusal reason carried.
pub const REASON_MAX: usize = 200;
/// Bytes of a `DESCRIPTION` frame.
pub const DESCRIPTION_LEN: usize = STREAM_HEADER + 2;

/// Names a stream: the subscriber's id for it and the subscription's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamRef {
    /// Chosen by the subscriber, unique among its streams to this publisher.
    pub id: u32,
    /// Chosen by the subscriber afresh for every subscription (random), so that frames of an
    /// earlier subscription of the same id are told apart.
    pub generation: u32,
}

/// Why a stream frame could not be decoded. The frame is dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its kind requires, or a length field pointing past its end.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// A kind byte this build does not know.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A field whose value cannot be right (a record count of 0, an empty or reversed range,
    /// a fragment outside its record, bytes left over).
    #[error("invalid {0} frame: {1}")]
    Invalid(&'static str, &'static str),
}

/// A decoded stream frame, borrowing from the message. (`Ack` makes it large; it lives on the
/// stack for one step, and boxing it would allocate per acknowledgement.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Subscribe to `shard` from `from` with a receive window of `window` record bytes.
    Subscribe {
        stream: StreamRef,
        shard: u16,
        from: u64,
        window: u64,
        token: &'a [u8],
    },
    /// The publisher's answer.
    Subscribed {
        stream: StreamRef,
        status: Status,
        /// The first sequence number the log stores.
        first_seq: u64,
        /// One past the last one it stores.
        end_seq: u64,
        /// Why it refused (empty when accepted).
        reason: &'a [u8],
    },
    /// Progress and credit.
    Ack(Ack),
    /// Consecutive records starting at `first_seq`; walk them with [`DataRecords`].
    Data {
        stream: StreamRef,
        first_seq: u64,
        count: u16,
        records: &'a [u8],
    },
    /// Bytes `offset..offset + chunk.len()` of record `seq` (`total` bytes long), cut in
    /// pieces of `chunk_size` bytes.
    Fragment {
        stream: StreamRef,
        seq: u64,
        ts_ns: u64,
        total: u32,
        offset: u32,
        chunk_size: u16,
        chunk: &'a [u8],
    },
    /// The log has no records in `from..to`.
    Skip {
        stream: StreamRef,
        from: u64,
        to: u64,
    },
    /// End the subscription.
    Unsubscribe { stream: StreamRef },
    /// Ask for the shard count (`nonce` is echoed).
    Describe { nonce: u32 },
    /// The shard count.
    Description { nonce: u32, shards: u16 },
}

/// The status of a `SUBSCRIBED` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Accepted: data follows.
    Accepted = 0,
    /// Refused by the token check (the reason says which).
    Unauthorized = 1,
    /// Refused: the publisher keeps as many subscriptions as it allows.
    Full = 2,
    /// Refused: no such shard on the publisher.
    NoShard = 3,
    /// Refused: the subscriber is ahead of the publisher's log (it was reset, or this is
    /// another node's log): continuing would skip or duplicate silently.
    Ahead = 4,
    /// The publisher has no such subscription (it restarted, or ended it): subscribe again.
    Unknown = 5,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Accepted,
            1 => Status::Unauthorized,
            2 => Status::Full,
            3 => Status::NoShard,
            4 => Status::Ahead,
            5 => Status::Unknown,
            _ => return None,
        })
    }
}

/// An `ACK` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The stream.
    pub stream: StreamRef,
    /// Every sequence number below it was received (delivered or held).
    pub next: u64,
    /// Record bytes the subscriber consumed.
    pub consumed: u64,
    /// Record bytes it can take beyond them.
    pub window: u64,
    /// Holes after `next` (the first `nack_count` entries).
    pub nacks: [(u64, u64); NACKS_MAX],
    /// How many of `nacks` are set.
    pub nack_count: u8,
}

impl Ack {
    /// The holes it names.
    pub fn holes(&self) -> &[(u64, u64)] {
        &self.nacks[..usize::from(self.nack_count)]
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn stream_at(b: &[u8]) -> StreamRef {
    StreamRef {
        id: u32_at(b, 1),
        generation: u32_at(b, 5),
    }
}

/// Writes a stream frame's common header into `out[..STREAM_HEADER]`.
pub fn write_stream_header(out: &mut [u8], kind: u8, stream: StreamRef) {
    out[0] = kind;
    out[1..5].copy_from_slice(&stream.id.to_le_bytes());
    out[5..9].copy_from_slice(&stream.generation.to_le_bytes());
}

/// Decodes a stream frame (a message whose kind byte is not [`KIND_APP`]). Checks every
/// length before reading it.
pub fn decode(b: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some(&kind) = b.first() else {
        return Err(FrameError::Truncated("empty"));
    };
    let need = |n: usize, what: &'static str| {
        if b.len() < n {
            Err(FrameError::Truncated(what))
        } else {
            Ok(())
        }
    };
    match kind {
        KIND_SUBSCRIBE => {
            need(SUBSCRIBE_HEADER, "SUBSCRIBE")?;
            let len = usize::from(u16_at(b, STREAM_HEADER + 18));
            if b.len() != SUBSCRIBE_HEADER + len {
                return Err(FrameError::Truncated("SUBSCRIBE"));
            }
            let window = u64_at(b, STREAM_HEADER + 10);
            if window == 0 {
                return Err(FrameError::Invalid("SUBSCRIBE", "a window of 0 bytes"));
            }
            Ok(Frame::Subscribe {
                stream: stream_at(b),
                shard: u16_at(b, STREAM_HEADER),
                from: u64_at(b, STREAM_HEADER + 2),
                window,
                token: &b[SUBSCRIBE_HEADER..],
            })
        }
        KIND_SUBSCRIBED => {
            need(SUBSCRIBED_HEADER, "SUBSCRIBED")?;
            let len = usize::from(u16_at(b, STREAM_HEADER + 17));
            if b.len() != SUBSCRIBED_HEADER + len || len > REASON_MAX {
                return Err(FrameError::Truncated("SUBSCRIBED"));
            }
            let status = Status::from_u8(b[STREAM_HEADER])
                .ok_or(FrameError::Invalid("SUBSCRIBED", "unknown status"))?;
            let first_seq = u64_at(b, STREAM_HEADER + 1);
            let end_seq = u64_at(b, STREAM_HEADER + 9);
            if first_seq > end_seq {
                return Err(FrameError::Invalid("SUBSCRIBED", "first_seq after end_seq"));
            }
            Ok(Frame::Subscribed {
                stream: stream_at(b),
                status,
                first_seq,
                end_seq,
                reason: &b[SUBSCRIBED_HEADER..],
            })
        }
        KIND_ACK => {
            need(ACK_HEADER, "ACK")?;
            let n = b[ACK_HEADER - 1];
            if usize::from(n) > NACKS_MAX {
                return Err(FrameError::Invalid("ACK", "more holes than an ACK carries"));
            }
            if b.len() != ACK_HEADER + usize::from(n) * 16 {
                return Err(FrameError::Truncated("ACK"));
            }
            let next = u64_at(b, STREAM_HEADER);
            let mut ack = Ack {
                stream: stream_at(b),
                next,
                consumed: u64_at(b, STREAM_HEADER + 8),
                window: u64_at(b, STREAM_HEADER + 16),
                nacks: [(0, 0); NACKS_MAX],
                nack_count: n,
            };
            let mut floor = next;
            for i in 0..usize::from(n) {
                let at = ACK_HEADER + i * 16;
                let (from, to) = (u64_at(b, at), u64_at(b, at + 8));
                if from < floor || to <= from {
                    return Err(FrameError::Invalid(
                        "ACK",
                        "holes not ascending after next or empty",
                    ));
                }
                floor = to;
                ack.nacks[i] = (from, to);
            }
            Ok(Frame::Ack(ack))
        }
        KIND_DATA => {
            need(DATA_HEADER, "DATA")?;
            let count = u16_at(b, STREAM_HEADER + 8);
            if count == 0 {
                return Err(FrameError::Invalid("DATA", "no records"));
            }
            let first_seq = u64_at(b, STREAM_HEADER);
            if first_seq.checked_add(u64::from(count)).is_none() {
                return Err(FrameError::Invalid("DATA", "sequence numbers overflow"));
            }
            let records = &b[DATA_HEADER..];
            // Walk once here so that every later walk is over checked bytes.
            let mut it = DataRecords {
                bytes: records,
                seq: first_seq,
                left: count,
            };
            for _ in 0..count {
                if it.next_checked()?.is_none() {
                    return Err(FrameError::Truncated("DATA"));
                }
            }
            if !it.bytes.is_empty() {
                return Err(FrameError::Invalid("DATA", "bytes after the last record"));
            }
            Ok(Frame::Data {
                stream: stream_at(b),
                first_seq,
                count,
                records,
            })
        }
        KIND_FRAGMENT => {
            need(FRAGMENT_HEADER, "FRAGMENT")?;
            let total = u32_at(b, STREAM_HEADER + 16);
            let offset = u32_at(b, STREAM_HEADER + 20);
            let chunk_size = u16_at(b, STREAM_HEADER + 24);
            let chunk = &b[FRAGMENT_HEADER..];
            let end = u64::from(offset) + chunk.len() as u64;
            let last = end == u64::from(total);
            let fits = if last {
                chunk.len() <= usize::from(chunk_size)
            } else {
                chunk.len() == usize::from(chunk_size)
            };
            if chunk_size == 0
                || chunk.is_empty()
                || end > u64::from(total)
                || !offset.is_multiple_of(u32::from(chunk_size))
                || !fits
            {
                return Err(FrameError::Invalid("FRAGMENT", "piece outside its record"));
            }
            Ok(Frame::Fragment {
                stream: stream_at(b),
                seq: u64_at(b, STREAM_HEADER),
                ts_ns: u64_at(b, STREAM_HEADER + 8),
                total,
                offset,
                chunk_size,
                chunk,
            })
        }
        KIND_SKIP => {
            if b.len() != SKIP_LEN {
                return Err(FrameError::Truncated("SKIP"));
            }
            let (from, to) = (u64_at(b, STREAM_HEADER), u64_at(b, STREAM_HEADER + 8));
            if to <= from {
                return Err(FrameError::Invalid("SKIP", "empty range"));
            }
            Ok(Frame::Skip {
                stream: stream_at(b),
                from,
                to,
            })
        }
        KIND_UNSUBSCRIBE => {
            if b.len() != STREAM_HEADER {
                return Err(FrameError::Truncated("UNSUBSCRIBE"));
            }
            Ok(Frame::Unsubscribe {
                stream: stream_at(b),
            })
        }
        KIND_DESCRIBE => {
            if b.len() != STREAM_HEADER {
                return Err(FrameError::Truncated("DESCRIBE"));
            }
            Ok(Frame::Describe {
                nonce: stream_at(b).id,
            })
        }
        KIND_DESCRIPTION => {
            if b.len() != DESCRIPTION_LEN {
                return Err(FrameError::Truncated("DESCRIPTION"));
            }
            Ok(Frame::Description {
                nonce: stream_at(b).id,
                shards: u16_at(b, STREAM_HEADER),
            })
        }
        k => Err(FrameError::Kind(k)),
    }
}

/// One record of a `DATA` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRecord<'a> {
    /// Its sequence number in the publisher's shard.
    pub seq: u64,
    /// The publisher's timestamp.
    pub ts_ns: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// The records of a `DATA` frame (decoded by [`decode`], so its lengths are checked).
#[derive(Debug, Clone)]
pub struct DataRecords<'a> {
    bytes: &'a [u8],
    seq: u64,
    left: u16,
}

impl<'a> DataRecords<'a> {
    /// The records of a decoded `DATA` frame.
    pub fn new(first_seq: u64, count: u16, records: &'a [u8]) -> DataRecords<'a> {
        DataRecords {
            bytes: records,
            seq: first_seq,
            left: count,
        }
    }

    fn next_checked(&mut self) -> Result<Option<DataRecord<'a>>, FrameError> {
        if self.left == 0 {
            return Ok(None);
        }
        if self.bytes.len() < RECORD_OVERHEAD {
            return Err(FrameError::Truncated("DATA"));
        }
        let len = usize::try_from(u32_at(self.bytes, 0)).unwrap_or(usize::MAX);
        let ts_ns = u64_at(self.bytes, 4);
        let rest = &self.bytes[RECORD_OVERHEAD..];
        if rest.len() < len {
            return Err(FrameError::Truncated("DATA"));
        }
        let r = DataRecord {
            seq: self.seq,
            ts_ns,
            payload: &rest[..len],
        };
        self.bytes = &rest[len..];
        self.seq += 1;
        self.left -= 1;
        Ok(Some(r))
    }
}

impl<'a> Iterator for DataRecords<'a> {
    type Item = DataRecord<'a>;
    fn next(&mut self) -> Option<DataRecord<'a>> {
        self.next_checked().ok().flatten()
    }
}

/// Builds a `DATA` frame in place in a caller's buffer (a packet buffer, so that the only
/// copy of a payload is the one into the buffer the AEAD then seals in place).
#[derive(Debug)]
pub struct DataFrameWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    first_seq: u64,
    count: u16,
    record_bytes: u64,
}

impl<'a> DataFrameWriter<'a> {
    /// Starts a frame of `stream` whose first record is `first_seq`; `buf` is as long as the
    /// largest message (at least [`DATA_HEADER`] + [`RECORD_OVERHEAD`]).
    pub fn new(buf: &'a mut [u8], stream: StreamRef, first_seq: u64) -> DataFrameWriter<'a> {
        assert!(
            buf.len() > DATA_HEADER + RECORD_OVERHEAD,
            "frame buffer too small"
        );
        write_stream_header(buf, KIND_DATA, stream);
        buf[STREAM_HEADER..STREAM_HEADER + 8].copy_from_slice(&first_seq.to_le_bytes());
        DataFrameWriter {
            buf,
            len: DATA_HEADER,
            first_seq,
            count: 0,
            record_bytes: 0,
        }
    }

    /// Whether a record of `payload_len` bytes fits.
    pub fn fits(&self, payload_len: usize) -> bool {
        self.count < u16::MAX && self.len + RECORD_OVERHEAD + payload_len <= self.buf.len()
    }

    /// Whether a record of `payload_len` bytes fits in an empty frame of a buffer of
    /// `buf_len` bytes (otherwise it goes as fragments).
    pub fn fits_alone(buf_len: usize, payload_len: usize) -> bool {
        DATA_HEADER + RECORD_OVERHEAD + payload_len <= buf_len
    }

    /// Appends the next record (the caller checked [`DataFrameWriter::fits`]).
    pub fn push(&mut self, ts_ns: u64, payload: &[u8]) {
        assert!(self.fits(payload.len()), "record does not fit the frame");
        let at = self.len;
        let len = u32::try_from(payload.len()).expect("fits a frame");
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[at + 4..at + 12].copy_from_slice(&ts_ns.to_le_bytes());
        self.buf[at + RECORD_OVERHEAD..at + RECORD_OVERHEAD + payload.len()]
            .copy_from_slice(payload);
        self.len += RECORD_OVERHEAD + payload.len();
        self.count += 1;
        self.record_bytes += (RECORD_OVERHEAD + payload.len()) as u64;
    }

    /// Records so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// One past the last record's sequence number.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Record bytes so far (as credit counts them).
    pub fn record_bytes(&self) -> u64 {
        self.record_bytes
    }

    /// Writes the count; returns the frame's length.
    pub fn finish(self) -> usize {
        self.buf[STREAM_HEADER + 8..DATA_HEADER].copy_from_slice(&self.count.to_le_bytes());
        self.len
    }
}

/// Writes fragment `index` of a record too large for one frame into `buf` (as long as the
/// largest message); returns the frame's length, or `None` past the last fragment.
pub fn write_fragment(
    buf: &mut [u8],
    stream: StreamRef,
    seq: u64,
    ts_ns: u64,
    payload: &[u8],
    index: usize,
) -> Option<usize> {
    let chunk_size = fragment_chunk(buf.len());
    let offset = index.checked_mul(chunk_size)?;
    if offset >= payload.len() {
        return None;
    }
    let chunk = &payload[offset..payload.len().min(offset + chunk_size)];
    write_stream_header(buf, KIND_FRAGMENT, stream);
    let h = STREAM_HEADER;
    buf[h..h + 8].copy_from_slice(&seq.to_le_bytes());
    buf[h + 8..h + 16].copy_from_slice(&ts_ns.to_le_bytes());
    let total = u32::try_from(payload.len()).expect("records are at most 16 MiB");
    buf[h + 16..h + 20].copy_from_slice(&total.to_le_bytes());
    let off = u32::try_from(offset).expect("below total");
    buf[h + 20..h + 24].copy_from_slice(&off.to_le_bytes());
    let cs = u16::try_from(chunk_size).expect("capped at u16::MAX");
    buf[h + 24..h + 26].copy_from_slice(&cs.to_le_bytes());
    buf[FRAGMENT_HEADER..FRAGMENT_HEADER + chunk.len()].copy_from_slice(chunk);
    Some(FRAGMENT_HEADER + chunk.len())
}

/// Payload bytes per fragment for messages of `message_len` bytes.
pub fn fragment_chunk(message_len: usize) -> usize {
    message_len
        .saturating_sub(FRAGMENT_HEADER)
        .min(usize::from(u16::MAX))
        .max(1)
}

/// Writes a `SKIP` frame; returns its length.
pub fn write_skip(out: &mut [u8], stream: StreamRef, from: u64, to: u64) -> usize {
    write_stream_header(out, KIND_SKIP, stream);
    out[STREAM_HEADER..STREAM_HEADER + 8].copy_from_slice(&from.to_le_bytes());
    out[STREAM_HEADER + 8..SKIP_LEN].copy_from_slice(&to.to_le_bytes());
    SKIP_LEN
}

/// Writes a `SUBSCRIBE` frame; returns its length (`out` holds at least
/// `SUBSCRIBE_HEADER + token.len()` bytes, and the token at most `u16::MAX`).
pub fn write_subscribe(
    out: &mut [u8],
    stream: StreamRef,
    shard: u16,
    from: u64,
    window: u64,
    token: &[u8],
) -> usize {
    write_stream_header(out, KIND_SUBSCRIBE, stream);
    let h = STREAM_HEADER;
    out[h..h + 2].copy_from_slice(&shard.to_le_bytes());
    out[h + 2..h + 10].copy_from_slice(&from.to_le_bytes());
    out[h + 10..h + 18].copy_from_slice(&window.to_le_bytes());
    let len = u16::try_from(token.len()).expect("tokens are short");
    out[h + 18..h + 20].copy_from_slice(&len.to_le_bytes());
    out[SUBSCRIBE_HEADER..SUBSCRIBE_HEADER + token.len()].copy_from_slice(token);
    SUBSCRIBE_HEADER + token.len()
}

/// Writes a `SUBSCRIBED` frame (the reason cut at [`REASON_MAX`] bytes); returns its length.
pub fn write_subscribed(
    out: &mut [u8],
    stream: StreamRef,
    status: Status,
    first_seq: u64,
    end_seq: u64,
    reason: &str,
) -> usize {
    let mut cut = reason.len().min(REASON_MAX);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    write_stream_header(out, KIND_SUBSCRIBED, stream);
    let h = STREAM_HEADER;
    out[h] = status as u8;
    out[h + 1..h + 9].copy_from_slice(&first_seq.to_le_bytes());
    out[h + 9..h + 17].copy_from_slice(&end_seq.to_le_bytes());
    let len = u16::try_from(reason.len()).expect("capped");
    out[h + 17..h + 19].copy_from_slice(&len.to_le_bytes());
    out[SUBSCRIBED_HEADER..SUBSCRIBED_HEADER + reason.len()].copy_from_slice(reason);
    SUBSCRIBED_HEADER + reason.len()
}

/// Writes an `ACK`; returns its length (`out` holds at least [`ACK_MAX`] bytes).
pub fn write_ack(out: &mut [u8], ack: &Ack) -> usize {
    write_stream_header(out, KIND_ACK, ack.stream);
    let h = STREAM_HEADER;
    out[h..h + 8].copy_from_slice(&ack.next.to_le_bytes());
    out[h + 8..h + 16].copy_from_slice(&ack.consumed.to_le_bytes());
    out[h + 16..h + 24].copy_from_slice(&ack.window.to_le_bytes());
    out[ACK_HEADER - 1] = ack.nack_count;
    for (i, (from, to)) in ack.holes().iter().enumerate() {
        let at = ACK_HEADER + i * 16;
        out[at..at + 8].copy_from_slice(&from.to_le_bytes());
        out[at + 8..at + 16].copy_from_slice(&to.to_le_bytes());
    }
    ACK_HEADER + ack.holes().len() * 16
}

/// Writes an `UNSUBSCRIBE`, `DESCRIBE` (with `StreamRef { id: nonce, generation: 0 }`) or
/// other header-only frame; returns its length.
pub fn write_bare(out: &mut [u8], kind: u8, stream: StreamRef) -> usize {
    write_stream_header(out, kind, stream);
    STREAM_HEADER
}

/// Writes a `DESCRIPTION`; returns its length.
pub fn write_description(out: &mut [u8], nonce: u32, shards: u16) -> usize {
    write_stream_header(
        out,
        KIND_DESCRIPTION,
        StreamRef {
            id: nonce,
            generation: 0,
        },
    );
    out[STREAM_HEADER..DESCRIPTION_LEN].copy_from_slice(&shards.to_le_bytes());
    DESCRIPTION_LEN
}

/// Record bytes of a payload, as credit counts them.
pub fn record_bytes(payload_len: usize) -> u64 {
    (RECORD_OVERHEAD + payload_len) as u64
}

/// A few sequence ranges, kept sorted and merged; at capacity, the two closest merge (a
/// retransmission of a little more than asked, never of less).
#[derive(Debug, Clone)]
pub struct Ranges {
    list: Vec<(u64, u64)>,
    cap: usize,
}

impl Ranges {
    /// An empty set holding at most `cap` (≥ 1) ranges without merging.
    pub fn new(cap: usize) -> Ranges {
        let cap = cap.max(1);
        Ranges {
            list: Vec::with_capacity(cap + 1),
            cap,
        }
    }

    /// Adds `from..to` (ignored when empty).
    pub fn add(&mut self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let i = self.list.partition_point(|r| r.1 < from);
        let mut j = i;
        let (mut lo, mut hi) = (from, to);
        while j < self.list.len() && self.list[j].0 <= hi {
            lo = lo.min(self.list[j].0);
            hi = hi.max(self.list[j].1);
            j += 1;
        }
        self.list.splice(i..j, std::iter::once((lo, hi)));
        if self.list.len() > self.cap {
            // Merge the pair with the smallest gap between them.
            let k = (0..self.list.len() - 1)
                .min_by_key(|&k| self.list[k + 1].0 - self.list[k].1)
                .expect("at least two ranges");
            self.list[k].1 = self.list[k + 1].1;
            self.list.remove(k + 1);
        }
    }

    /// Drops everything below `floor`.
    pub fn trim_below(&mut self, floor: u64) {
        self.list.retain_mut(|r| {
            r.0 = r.0.max(floor);
            r.0 < r.1
        });
    }

    /// Drops everything at or above `ceiling`.
    pub fn trim_above(&mut self, ceiling: u64) {
        self.list.retain_mut(|r| {
            r.1 = r.1.min(ceiling);
            r.0 < r.1
        });
    }

    /// Takes the lowest range.
    pub fn pop_first(&mut self) -> Option<(u64, u64)> {
        (!self.list.is_empty()).then(|| self.list.remove(0))
    }

    /// Puts back a range taken with [`Ranges::pop_first`] (its unsent rest).
    pub fn push_front(&mut self, from: u64, to: u64) {
        self.add(from, to);
    }

    /// Whether `from..to` is wholly inside one range.
    pub fn covers(&self, from: u64, to: u64) -> bool {
        let i = self.list.partition_point(|r| r.1 < to);
        self.list.get(i).is_some_and(|r| r.0 <= from && to <= r.1)
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.list.iter().copied()
    }
}

/// Records resent when the tail timeout fires.
pub const TAIL_PROBE: u64 = 4;

/// Timers of a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimers {
    /// First retransmission timeout for a hole at the tail (doubles while nothing moves).
    pub rto_ns: u64,
    /// The longest it doubles to.
    pub rto_max_ns: u64,
    /// The subscriber acknowledges at least this often while subscribed (credit and
    /// progress keep flowing even when acknowledgements are lost).
    pub ack_interval_ns: u64,
    /// ...and within this long of new data arriving (so the publisher's timeout, which
    /// should be several times this, never fires while data flows).
    pub ack_delay_ns: u64,
    /// The subscriber names a hole again at most this often, and the publisher resends a
    /// range at most this often (duplicate requests for it are ignored).
    pub nack_interval_ns: u64,
}

impl Default for StreamTimers {
    fn default() -> StreamTimers {
        StreamTimers {
            rto_ns: 50_000_000,
            rto_max_ns: 1_000_000_000,
            ack_interval_ns: 20_000_000,
            ack_delay_ns: 2_000_000,
            nack_interval_ns: 4_000_000,
        }
    }
}

/// A publisher's state of one subscription: where new data goes on from, the credit, the
/// holes to resend. It holds no data: what it sends, new or again, is read from the log.
#[derive(Debug)]
pub struct SendStream {
    stream: StreamRef,
    timers: StreamTimers,
    /// The first sequence number never sent.
    next_new: u64,
    /// Record bytes sent as new data (retransmissions do not count).
    sent_bytes: u64,
    /// The subscriber's received prefix (everything below was received).
    acked: u64,
    /// Record bytes the subscriber consumed, and its window (from the same `ACK`).
    consumed: u64,
    window: u64,
    /// Holes to resend.
    resend: Ranges,
    /// Ranges resent lately, with when: a repeated `NACK` for them within the interval is
    /// the same request, not a new loss.
    recent: [(u64, u64, u64); 8],
    recent_at: usize,
    /// When `acked` last moved (or nothing was outstanding).
    progress_ns: u64,
    rto_ns: u64,
    /// Counters.
    resent_ranges: u64,
    timeouts: u64,
}

impl SendStream {
    /// A subscription accepted from `from` with the subscriber's initial `window`.
    pub fn new(
        stream: StreamRef,
        from: u64,
        window: u64,
        now_ns: u64,
        timers: StreamTimers,
    ) -> SendStream {
        SendStream {
            stream,
            timers,
            next_new: from,
            sent_bytes: 0,
            acked: from,
            consumed: 0,
            window,
            resend: Ranges::new(NACKS_MAX),
            recent: [(0, 0, 0); 8],
            recent_at: 0,
            progress_ns: now_ns,
            rto_ns: timers.rto_ns,
            resent_ranges: 0,
            timeouts: 0,
        }
    }

    /// The stream.
    pub fn stream(&self) -> StreamRef {
        self.stream
    }

    /// The first sequence number never sent.
    pub fn next_new(&self) -> u64 {
        self.next_new
    }

    /// The subscriber's received prefix.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Record bytes sent as new data.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes
    }

    /// The credit: record bytes the subscriber allows in total (`consumed + window`).
    pub fn granted(&self) -> u64 {
        self.consumed.saturating_add(self.window)
    }

    /// Record bytes of new data that may be sent now.
    pub fn credit(&self) -> u64 {
        self.granted().saturating_sub(self.sent_bytes)
    }

    /// Whether a new record of `bytes` record bytes may be sent now: within the credit, or
    /// alone once everything sent was consumed (so that a record larger than the window
    /// still goes).
    pub fn may_send(&self, bytes: u64) -> bool {
        self.sent_bytes.saturating_add(bytes) <= self.granted() || self.sent_bytes == self.consumed
    }

    /// New records `next_new..end` (of `bytes` record bytes) were sent.
    pub fn sent_new(&mut self, end: u64, bytes: u64) {
        debug_assert!(end >= self.next_new);
        if self.acked == self.next_new {
            // Nothing was outstanding: the timeout counts from now.
            self.progress_ns = 0;
        }
        self.next_new = end;
        self.sent_bytes += bytes;
    }

    /// Sequence numbers `next_new..to` the log does not have were reported (a `SKIP`).
    pub fn skipped_new(&mut self, to: u64) {
        self.next_new = self.next_new.max(to);
    }

    /// An `ACK` arrived. Values beyond what was sent are clamped (a confused or hostile
    /// subscriber cannot make the publisher skip data); holes are queued for resending.
    pub fn on_ack(&mut self, now_ns: u64, ack: &Ack) {
        let next = ack.next.min(self.next_new);
        if next > self.acked {
            self.acked = next;
            self.progress_ns = now_ns;
            self.rto_ns = self.timers.rto_ns;
        }
        // Credit from the newest acknowledgement (the one that consumed the most); consumed
        // and window come from the same frame.
        let consumed = ack.consumed.min(self.sent_bytes);
        if consumed >= self.consumed {
            self.consumed = consumed;
            self.window = ack.window;
        }
        if self.acked == self.next_new {
            self.progress_ns = now_ns;
        }
        for &(from, to) in ack.holes() {
            let (from, to) = (from.max(self.acked), to.min(self.next_new));
            if from >= to || self.recently_resent(now_ns, from, to) {
                continue;
            }
            self.resend.add(from, to);
        }
        self.resend.trim_below(self.acked);
    }

    fn recently_resent(&self, now_ns: u64, from: u64, to: u64) -> bool {
        self.recent.iter().any(|&(f, t, at)| {
            f <= from && to <= t && now_ns.saturating_sub(at) < self.timers.nack_interval_ns
        })
    }

    /// The next range to resend, if any: a hole the subscriber named, or, once the timeout
    /// passed with data outstanding and no progress, the last few records sent (a probe, as
    /// TCP's tail-loss probe: if more of the tail was lost, the subscriber now sees the hole
    /// and names it; resending everything outstanding would repeat a window's worth when
    /// only an acknowledgement was late).
    pub fn take_resend(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        if self.acked < self.next_new {
            if self.progress_ns == 0 {
                self.progress_ns = now_ns;
            }
            if now_ns.saturating_sub(self.progress_ns) >= self.rto_ns {
                self.timeouts += 1;
                self.progress_ns = now_ns;
                self.rto_ns = (self.rto_ns * 2).min(self.timers.rto_max_ns);
                let probe = self.next_new.saturating_sub(TAIL_PROBE).max(self.acked);
                self.resend.add(probe, self.next_new);
            }
        }
        let (from, to) = self.resend.pop_first()?;
        self.recent[self.recent_at] = (from, to, now_ns);
        self.recent_at = (self.recent_at + 1) % self.recent.len();
        self.resent_ranges += 1;
        Some((from, to))
    }

    /// Puts back the part `from..to` of a range that could not be resent yet.
    pub fn resend_later(&mut self, from: u64, to: u64) {
        self.resend
            .push_front(from.max(self.acked), to.min(self.next_new));
    }

    /// Whether holes wait to be resent.
    pub fn has_resend(&self) -> bool {
        !self.resend.is_empty()
    }

    /// When [`SendStream::take_resend`] should next be called (monotonic ns).
    pub fn deadline_ns(&self) -> u64 {
        if !self.resend.is_empty() {
            return 0;
        }
        if self.acked < self.next_new {
            if self.progress_ns == 0 {
                return 0;
            }
            return self.progress_ns.saturating_add(self.rto_ns);
        }
        u64::MAX
    }

    /// Ranges resent, and tail timeouts that fired.
    pub fn resend_counts(&self) -> (u64, u64) {
        (self.resent_ranges, self.timeouts)
    }
}

/// What a [`RecvStream`] hands to its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// The next record.
    Record {
        seq: u64,
        ts_ns: u64,
        payload: &'a [u8],
    },
    /// The publisher's log has no records `from..to` (removed by retention, or a loss it
    /// accepted): they will never come.
    Skipped { from: u64, to: u64 },
}

/// What happened to a frame given to [`RecvStream::on_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Some of it was new (delivered or held).
    New,
    /// All of it was received before.
    Duplicate,
    /// Out of order and no room to hold it: dropped (the hole is named again later).
    NoRoom,
    /// Not for this stream's state (a fragment of a record past the next one, one whose
    /// pieces disagree, one larger than records may be): dropped.
    Refused,
}

/// Limits of a subscriber's stream.
#[derive(Debug, Clone, Copy)]
pub struct RecvLimits {
    /// Record bytes the publisher may send beyond what was consumed.
    pub window: u64,
    /// Out-of-order frames held at most.
    pub slots: usize,
    /// Bytes of the largest frame (the largest message).
    pub slot_bytes: usize,
    /// The largest record payload accepted in fragments.
    pub record_bytes_max: usize,
}

/// A held frame.
#[derive(Debug, Clone, Copy)]
struct Held {
    first: u64,
    end: u64,
    slot: u32,
    len: u32,
}

/// A record being put together from fragments (only the next record is).
#[derive(Debug, Default)]
struct Reassembly {
    seq: u64,
    ts_ns: u64,
    total: usize,
    chunk_size: usize,
    have: Vec<u64>,
    missing: usize,
    bytes: Vec<u8>,
    active: bool,
}

/// A subscriber's state of one stream: the next sequence number, out-of-order frames held
/// in a fixed arena, holes to name, credit to grant.
#[derive(Debug)]
pub struct RecvStream {
    stream: StreamRef,
    timers: StreamTimers,
    limits: RecvLimits,
    next: u64,
    consumed: u64,
    /// One past the highest sequence number seen in any frame.
    seen_end: u64,
    arena: Vec<u8>,
    free: Vec<u32>,
    held: Vec<Held>,
    frag: Reassembly,
    /// Acknowledgement state.
    ack_now: bool,
    /// New data arrived since the last acknowledgement.
    fresh: bool,
    /// The consumer refused the last record offered (its queue is full): holes are not
    /// named meanwhile, since what a resend brings could not be taken either (a stalled
    /// subscriber would otherwise make its publisher read and resend in a loop).
    blocked: bool,
    last_ack_ns: u64,
    last_nack_ns: u64,
    acked_consumed: u64,
    /// Counters.
    skipped_events: u64,
    duplicates: u64,
    no_room: u64,
}

impl RecvStream {
    /// A stream expecting `from` next. The arena (`slots × slot_bytes`) is allocated here,
    /// once.
    pub fn new(stream: StreamRef, from: u64, limits: RecvLimits, timers: StreamTimers) -> Self {
        let slots = u32::try_from(limits.slots.max(1)).unwrap_or(u32::MAX);
        RecvStream {
            stream,
            timers,
            limits,
            next: from,
            consumed: 0,
            seen_end: from,
            arena: vec![0; slots as usize * limits.slot_bytes],
            free: (0..slots).rev().collect(),
            held: Vec::with_capacity(slots as usize),
            frag: Reassembly::default(),
            ack_now: true,
            fresh: false,
            blocked: false,
            last_ack_ns: 0,
            last_nack_ns: 0,
            acked_consumed: 0,
            skipped_events: 0,
            duplicates: 0,
            no_room: 0,
        }
    }

    /// The stream.
    pub fn stream(&self) -> StreamRef {
        self.stream
    }

    /// The next sequence number to deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Record bytes delivered.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The credit granted: `consumed + window` (one value; never below `consumed`).
    pub fn granted(&self) -> u64 {
        self.consumed.saturating_add(self.limits.window)
    }

    /// Events the publisher reported it does not have.
    pub fn skipped_events(&self) -> u64 {
        self.skipped_events
    }

    /// Frames received twice, and frames dropped for want of room.
    pub fn drop_counts(&self) -> (u64, u64) {
        (self.duplicates, self.no_room)
    }

    /// Frames held out of order.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Handles a decoded `DATA`, `FRAGMENT` or `SKIP` frame of this stream (`raw` is its
    /// bytes). In-order records go to `deliver` straight from `raw`; `deliver` returns
    /// `false` when it cannot take a record now (the rest is held and delivered by
    /// [`RecvStream::pump`]).
    pub fn on_frame(
        &mut self,
        now_ns: u64,
        frame: &Frame<'_>,
        raw: &[u8],
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> Arrival {
        let (first, end) = match *frame {
            Frame::Data {
                first_seq, count, ..
            } => (first_seq, first_seq + u64::from(count)),
            Frame::Skip { from, to, .. } => (from, to),
            Frame::Fragment { .. } => {
                let r = self.on_fragment(frame, deliver);
                if r == Arrival::New {
                    self.pump(deliver);
                }
                self.note_arrival(now_ns, r);
                return r;
            }
            _ => return Arrival::Refused,
        };
        self.seen_end = self.seen_end.max(end);
        let r = if end <= self.next || self.holds(first, end) {
            self.duplicates += 1;
            Arrival::Duplicate
        } else if first <= self.next && self.held_at_next().is_none() && !self.frag.active {
            let done = Self::deliver_frame(
                frame,
                &mut self.next,
                &mut self.consumed,
                &mut self.skipped_events,
                deliver,
            );
            self.blocked = !done;
            if !done && !self.hold(first, end, raw) {
                self.no_room += 1;
                Arrival::NoRoom
            } else {
                Arrival::New
            }
        } else if self.hold(first, end, raw) {
            Arrival::New
        } else {
            self.no_room += 1;
            Arrival::NoRoom
        };
        if r == Arrival::New {
            self.pump(deliver);
        }
        self.note_arrival(now_ns, r);
        r
    }

    fn note_arrival(&mut self, now_ns: u64, r: Arrival) {
        let _ = now_ns;
        if r == Arrival::New {
            self.fresh = true;
        }
        match r {
            // The publisher resends what it thinks was lost: tell it what arrived.
            Arrival::Duplicate => self.ack_now = true,
            // A hole appeared or remains: name it (rate-limited in `ack_due`).
            _ if !self.blocked && self.seen_end > self.received_through() => self.ack_now = true,
            _ => {}
        }
        if self.consumed.saturating_sub(self.acked_consumed) >= self.limits.window / 4 {
            self.ack_now = true;
        }
    }

    /// Delivers the records of an in-order frame from `next` on; returns whether all were
    /// taken.
    fn deliver_frame(
        frame: &Frame<'_>,
        next: &mut u64,
        consumed: &mut u64,
        skipped: &mut u64,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> bool {
        match *frame {
            Frame::Data {
                first_seq,
                count,
                records,
                ..
            } => {
                for r in DataRecords::new(first_seq, count, records) {
                    if r.seq < *next {
                        continue;
                    }
                    if !deliver(Delivery::Record {
                        seq: r.seq,
                        ts_ns: r.ts_ns,
                        payload: r.payload,
                    }) {
                        return false;
                    }
                    *next = r.seq + 1;
                    *consumed += record_bytes(r.payload.len());
                }
                true
            }
            Frame::Skip { to, .. } => {
                if to > *next {
                    deliver(Delivery::Skipped { from: *next, to });
                    *skipped += to - *next;
                    *next = to;
                }
                true
            }
            _ => true,
        }
    }

    fn on_fragment(
        &mut self,
        frame: &Frame<'_>,
        deliver: &mut dyn FnMut(Delivery<'_>) -> bool,
    ) -> Arrival {
        let Frame::Fragment {
            seq,
            ts_ns,
            total,
            offset,
            chunk_size,
            chunk,
            ..
        } = *frame
        else {
            return Arrival::Refused;
        };
        self.seen_end = self.seen_end.max(seq + 1);
        if seq < self.next || self.holds(seq, seq + 1) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        let total = total as usize;
        if seq != self.next || total > self.limits.record_bytes_max {
            return Arrival::Refused;
        }
        let chunk_size = usize::from(chunk_size);
        let f = &mut self.frag;
        if !f.active || f.seq != seq {
            let pieces = total.div_ceil(chunk_size);
            f.seq = seq;
            f.ts_ns = ts_ns;
            f.total = total;
            f.chunk_size = chunk_size;
            f.bytes.clear();
            f.bytes.resize(total, 0);
            f.have.clear();
            f.have.resize(pieces.div_ceil(64), 0);
            f.missing = pieces;
            f.active = true;
        } else if f.total != total || f.chunk_size != chunk_size || f.ts_ns != ts_ns {
            return Arrival::Refused;
        }
        let piece = offset as usize / chunk_size;
        let (word, bit) = (piece / 64, 1u64 << (piece % 64));
        if f.have[word] & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        f.have[word] |= bit;
        f.missing -= 1;
        let at = offset as usize;
        f.bytes[at..at + chunk.len()].copy_from_slice(chunk);
        if f.missing == 0 && self.try_finish_fragments(deliver) {
            return Arrival::New;
        }
        Arrival::New
    }

    /// Delivers a completed record put together from fragments; returns whether it went.
    fn try_finish_fragments(&mut self, deliver: &mut dyn FnMut(Delivery<'_>) -> bool) -> bool {
        let f = &mut self.frag;
        if !f.active || f.missing != 0 || f.seq != self.next {
            return false;
        }
        if !deliver(Delivery::Record {
            seq: f.seq,
            ts_ns: f.ts_ns,
            payload: &f.bytes,
        }) {
            self.blocked = true;
            return false;
        }
        self.blocked = false;
        self.next = f.seq + 1;
        self.consumed += record_bytes(f.total);
        f.active = false;
        true
    }

    /// Whether a held frame covers `first..end` wholly.
    fn holds(&self, first: u64, end: u64) -> bool {
        self.held.iter().any(|h| h.first <= first && end <= h.end)
    }

    /// The held frame that covers `next`, if any.
    fn held_at_next(&self) -> Option<usize> {
        self.held
            .iter()
            .position(|h| h.first <= self.next && self.next < h.end)
    }

    /// Copies a frame into a free slot; false when none is free.
    fn hold(&mut self, first: u64, end: u64, raw: &[u8]) -> bool {
        if raw.len() > self.limits.slot_bytes {
            return false;
        }
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let at = slot as usize * self.limits.slot_bytes;
        self.arena[at..at + raw.len()].copy_from_slice(raw);
        let i = self.held.partition_point(|h| h.first <= first);
        self.held.insert(
            i,
            Held {
                first,
                end,
                slot,
                len: u32::try_from(raw.len()).expect("a frame fits u32"),
            },
        );
        true
    }

    /// Delivers what held frames (and a finished fragmented record) now make contiguous;
    /// returns how many records and skips went. Call it again when the consumer that refused
    /// a record has room.
    pub fn pump(&mut self, deliver: &mut dyn FnMut(Delivery<'_>) -> bool) -> usize {
        let mut moved = 0;
        loop {
            if self.frag.active {
                if self.try_finish_fragments(deliver) {
                    moved += 1;
                    continue;
                }
                break;
            }
            let Some(i) = self.held_at_next() else {
                break;
            };
            let h = self.held[i];
            let at = h.slot as usize * self.limits.slot_bytes;
            let raw = &self.arena[at..at + h.len as usize];
            let before = self.next;
            let done = match decode(raw) {
                Ok(frame) => Self::deliver_frame(
                    &frame,
                    &mut self.next,
                    &mut self.consumed,
                    &mut self.skipped_events,
                    deliver,
                ),
                // Held frames were decoded before; unreachable, but never loop on it.
                Err(_) => true,
            };
            if self.next > before {
                moved += 1;
            }
            self.blocked = !done;
            if !done {
                break;
            }
            self.release_below(self.next);
        }
        self.release_below(self.next);
        moved
    }

    /// Frees held frames wholly below `seq`.
    fn release_below(&mut self, seq: u64) {
        let free = &mut self.free;
        self.held.retain(|h| {
            let keep = h.end > seq;
            if !keep {
                free.push(h.slot);
            }
            keep
        });
    }

    /// One past the prefix received without a hole (delivered or held).
    pub fn received_through(&self) -> u64 {
        let mut through = self.next;
        if self.frag.active && self.frag.seq == through && self.frag.missing == 0 {
            through += 1;
        }
        for h in &self.held {
            if h.first <= through {
                through = through.max(h.end);
            } else {
                break;
            }
        }
        through
    }

    /// The consumer can take records again (its queue has room): holes are named again.
    pub fn consumer_ready(&mut self) {
        if self.blocked {
            self.blocked = false;
            if self.seen_end > self.received_through() {
                self.ack_now = true;
            }
        }
    }

    /// Whether an `ACK` should go now.
    pub fn ack_due(&self, now_ns: u64) -> bool {
        let since_ack = now_ns.saturating_sub(self.last_ack_ns);
        if since_ack >= self.timers.ack_interval_ns
            || (self.fresh && since_ack >= self.timers.ack_delay_ns)
        {
            return true;
        }
        if !self.ack_now {
            return false;
        }
        let holes = self.seen_end > self.received_through();
        !holes || now_ns.saturating_sub(self.last_nack_ns) >= self.timers.nack_interval_ns
    }

    /// When an `ACK` is next due without anything arriving (monotonic ns).
    pub fn deadline_ns(&self) -> u64 {
        let periodic = self.last_ack_ns.saturating_add(if self.fresh {
            self.timers.ack_delay_ns
        } else {
            self.timers.ack_interval_ns
        });
        if self.ack_now {
            periodic.min(
                self.last_nack_ns
                    .saturating_add(self.timers.nack_interval_ns),
            )
        } else {
            periodic
        }
    }

    /// Builds the `ACK` to send now (and notes it as sent).
    pub fn make_ack(&mut self, now_ns: u64) -> Ack {
        let through = self.received_through();
        let mut ack = Ack {
            stream: self.stream,
            next: through,
            consumed: self.consumed,
            window: self.limits.window,
            nacks: [(0, 0); NACKS_MAX],
            nack_count: 0,
        };
        // Holes: the gaps between held frames after the prefix, up to the highest seen (none
        // while the consumer refuses: a resend could not be taken).
        let mut at = if self.blocked { u64::MAX } else { through };
        let mut n = 0;
        let mut push = |from: u64, to: u64, n: &mut usize| {
            if from < to && *n < NACKS_MAX {
                ack.nacks[*n] = (from, to);
                *n += 1;
            }
        };
        for h in &self.held {
            if h.end <= at {
                continue;
            }
            if h.first > at {
                push(at, h.first, &mut n);
            }
            at = at.max(h.end);
        }
        if !self.blocked && self.frag.active && self.frag.seq >= at && self.frag.missing > 0 {
            // The record being put together is named whole: its pieces already here are
            // ignored when they come again.
            push(at.max(self.frag.seq), self.frag.seq + 1, &mut n);
            at = self.frag.seq + 1;
        }
        push(at, self.seen_end, &mut n);
        ack.nack_count = u8::try_from(n).expect("at most NACKS_MAX");
        if n > 0 {
            self.last_nack_ns = now_ns;
        }
        self.last_ack_ns = now_ns;
        self.acked_consumed = self.consumed;
        self.ack_now = false;
        self.fresh = false;
        ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RecvLimits {
        RecvLimits {
            window: 1 << 20,
            slots: 8,
            slot_bytes: 1400,
            record_bytes_max: 10_000,
        }
    }

    fn frag(seq: u64, total: u32, offset: u32, chunk: &[u8]) -> Vec<u8> {
        frag_sized(seq, total, offset, chunk, chunk.len())
    }

    fn frag_sized(seq: u64, total: u32, offset: u32, chunk: &[u8], size: usize) -> Vec<u8> {
        let s = StreamRef {
            id: 1,
            generation: 1,
        };
        let mut b = vec![0u8; FRAGMENT_HEADER + chunk.len()];
        write_stream_header(&mut b, KIND_FRAGMENT, s);
        let h = STREAM_HEADER;
        b[h..h + 8].copy_from_slice(&seq.to_le_bytes());
        b[h + 16..h + 20].copy_from_slice(&total.to_le_bytes());
        b[h + 20..h + 24].copy_from_slice(&offset.to_le_bytes());
        let cs = u16::try_from(size).unwrap();
        b[h + 24..h + 26].copy_from_slice(&cs.to_le_bytes());
        b[FRAGMENT_HEADER..].copy_from_slice(chunk);
        b
    }

    #[test]
    fn a_hostile_fragment_cannot_make_the_subscriber_reserve_memory() {
        // v0.10 parked unfinished reassembly per (origin, seq) without a bound: here only the
        // next record is put together, and only up to the largest record allowed.
        let s = StreamRef {
            id: 1,
            generation: 1,
        };
        let mut rx = RecvStream::new(s, 0, limits(), StreamTimers::default());
        let mut got = 0;
        let mut deliver = |_: Delivery<'_>| {
            got += 1;
            true
        };
        let huge = frag(0, u32::MAX - 99, 0, &[1u8; 100]);
        let f = decode(&huge).unwrap();
        assert_eq!(rx.on_frame(0, &f, &huge, &mut deliver), Arrival::Refused);
        let ahead = frag(5, 200, 0, &[1u8; 100]);
        let f = decode(&ahead).unwrap();
        assert_eq!(rx.on_frame(0, &f, &ahead, &mut deliver), Arrival::Refused);
        assert_eq!(rx.frag.bytes.capacity(), 0, "nothing was reserved");
        // A genuine two-piece record goes through, and a repeated piece is a duplicate.
        let a = frag(0, 150, 0, &[7u8; 100]);
        let b = frag_sized(0, 150, 100, &[8u8; 50], 100);
        let (fa, fb) = (decode(&a).unwrap(), decode(&b).unwrap());
        assert_eq!(rx.on_frame(0, &fa, &a, &mut deliver), Arrival::New);
        assert_eq!(rx.on_frame(0, &fa, &a, &mut deliver), Arrival::Duplicate);
        assert_eq!(rx.on_frame(0, &fb, &b, &mut deliver), Arrival::New);
        assert_eq!(got, 1);
        assert_eq!(rx.next(), 1);
    }

    #[test]
    fn declared_counts_are_checked_against_the_bytes_before_anything_trusts_them() {
        let s = StreamRef {
            id: 1,
            generation: 1,
        };
        let mut buf = vec![0u8; 200];
        let mut w = DataFrameWriter::new(&mut buf, s, 0);
        w.push(1, b"abc");
        let n = w.finish();
        // A count larger than the records present.
        buf[STREAM_HEADER + 8..DATA_HEADER].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode(&buf[..n]), Err(FrameError::Truncated("DATA")));
        // Holes out of order, or an ACK claiming more holes than it carries.
        let ack = Ack {
            stream: s,
            next: 10,
            consumed: 0,
            window: 1,
            nacks: {
                let mut h = [(0, 0); NACKS_MAX];
                h[0] = (20, 30);
                h[1] = (25, 40);
                h
            },
            nack_count: 2,
        };
        let mut b = [0u8; ACK_MAX];
        let n = write_ack(&mut b, &ack);
        assert!(matches!(
            decode(&b[..n]),
            Err(FrameError::Invalid("ACK", _))
        ));
        b[ACK_HEADER - 1] = 200;
        assert!(decode(&b[..n]).is_err());
    }

    #[test]
    fn the_grant_is_never_below_what_was_consumed() {
        let s = StreamRef {
            id: 1,
            generation: 1,
        };
        let mut rx = RecvStream::new(s, 0, limits(), StreamTimers::default());
        let mut buf = vec![0u8; 1400];
        let mut w = DataFrameWriter::new(&mut buf, s, 0);
        for _ in 0..10 {
            w.push(0, &[0u8; 100]);
        }
        let n = w.finish();
        let f = decode(&buf[..n]).unwrap();
        rx.on_frame(0, &f, &buf[..n], &mut |_| true);
        let ack = rx.make_ack(1);
        assert_eq!(ack.consumed, 10 * record_bytes(100));
        assert_eq!(rx.granted(), ack.consumed + ack.window);
        // The publisher takes consumed and window from the same acknowledgement, and never
        // believes more was consumed than it sent.
        let mut tx = SendStream::new(s, 0, 1 << 20, 0, StreamTimers::default());
        tx.sent_new(10, 10 * record_bytes(100));
        tx.on_ack(2, &ack);
        assert_eq!(tx.granted(), ack.consumed + ack.window);
        assert!(tx.granted() >= tx.sent_bytes());
    }

    #[test]
    fn ranges_merge_and_cap() {
        let mut r = Ranges::new(2);
        r.add(10, 20);
        r.add(30, 40);
        r.add(15, 32);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        r.add(50, 60);
        r.add(100, 110);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 60), (100, 110)]);
        r.trim_below(55);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(55, 60), (100, 110)]);
        assert!(r.covers(101, 105));
        assert!(!r.covers(58, 101));
    }
}
