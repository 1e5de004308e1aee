//! Reading events back: into a caller buffer (`net_poll`) or an allocated result
//! (`net_poll_alloc`).

use std::ffi::{CString, c_char};

use net_engine::{Cursor, PollResponse};

use crate::boundary::{self, Out, R, boundary, fail, slice_mut, text};
use crate::{live_handle, net_bus, net_result, to_u32, with_bus};

/// The header of one event in a `net_poll` buffer. Events follow one another: a header,
/// then `payload_len` payload bytes, then zero padding to the next multiple of 8 bytes.
/// Headers are in native byte order; in a buffer aligned to 8 bytes every header is
/// aligned (otherwise read them with `memcpy`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct net_event_header {
    /// The event's sequence number in its shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The shard.
    pub shard: u16,
    /// Zero.
    pub reserved: u16,
    /// Payload bytes following the header.
    pub payload_len: u32,
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<net_event_header>() == 24);
    assert!(align_of::<net_event_header>() == 8);
    assert!(offset_of!(net_event_header, ts_ns) == 8);
    assert!(offset_of!(net_event_header, shard) == 16);
    assert!(offset_of!(net_event_header, payload_len) == 20);
};

/// The size of an event header in a `net_poll` buffer.
pub const NET_EVENT_HEADER_BYTES: usize = 24;

/// What `net_poll` returned.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct net_poll_info {
    /// Events written to the buffer.
    pub events: usize,
    /// Buffer bytes used by them.
    pub bytes_used: usize,
    /// Buffer bytes the response needs (also set on `NET_ERR_BUFFER_TOO_SMALL`).
    pub bytes_needed: usize,
    /// Length of the next cursor written to `next_cursor`, NUL excluded.
    pub cursor_len: usize,
    /// Bytes `next_cursor` needs, NUL included (also set on `NET_ERR_BUFFER_TOO_SMALL`).
    pub cursor_needed: usize,
    /// Shards that could not be read (failed or dead); the others' events are returned.
    pub failed_shards: u32,
    /// Whether sequence numbers were passed over without events (retention).
    pub skipped: bool,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<net_poll_info>() == 48);
    assert!(offset_of!(net_poll_info, failed_shards) == 40);
    assert!(offset_of!(net_poll_info, skipped) == 44);
};

fn frame_len(payload: usize) -> usize {
    NET_EVENT_HEADER_BYTES + payload.next_multiple_of(8)
}

/// Decodes the caller's cursor (NULL or length 0: the start of every shard) and polls.
///
/// # Safety
/// `bus` a live handle; `cursor` readable for `cursor_len`.
unsafe fn poll_inner(
    bus: *const net_bus,
    cursor: *const c_char,
    cursor_len: usize,
    limit: usize,
) -> R<PollResponse> {
    // SAFETY: the caller's contract.
    let h = unsafe { live_handle(bus) }?;
    let cursor = if cursor_len == 0 {
        Cursor::start()
    } else {
        // SAFETY: the caller's contract.
        Cursor::decode(unsafe { text(cursor, cursor_len, "cursor") }?)?
    };
    with_bus(h, |b| Ok(b.poll(&cursor, limit)?))
}

fn payload_u32(len: usize) -> R<u32> {
    u32::try_from(len).map_err(|_| {
        fail(
            net_result::NET_ERR_TOO_LARGE,
            "an event's payload exceeds 4 GiB and cannot be framed",
        )
    })
}

/// Reads up to `limit` events after `cursor` (the text of a previous `next_cursor`; NULL
/// with `cursor_len` 0 for the start) into `buf` (framed as described at
/// `net_event_header`), and the cursor to poll with next into `next_cursor`
/// (NUL-terminated). Nothing is consumed by a poll: the caller's cursor is the position, so
/// when `buf` or `next_cursor` is too small the call returns `NET_ERR_BUFFER_TOO_SMALL` with
/// `info->bytes_needed` and `info->cursor_needed` set (the rest of `*info` zero, `buf` and
/// `next_cursor` untouched) and a retry with the same cursor and larger buffers gets every
/// event. On another failure `*info` is zeroed. `buf` may be NULL when `buf_len` is 0.
///
/// # Safety
/// `bus` a live handle; `cursor` readable for `cursor_len`; `buf` writable for `buf_len`;
/// `next_cursor` writable for `next_cursor_cap`; `info` writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn net_poll(
    bus: *const net_bus,
    cursor: *const c_char,
    cursor_len: usize,
    limit: usize,
    buf: *mut u8,
    buf_len: usize,
    next_cursor: *mut c_char,
    next_cursor_cap: usize,
    info: *mut net_poll_info,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let info = unsafe { Out::new(info, "info", net_poll_info::default()) }?;
        // SAFETY: the caller's contract.
        let resp = unsafe { poll_inner(bus, cursor, cursor_len, limit) }?;
        let mut needed = 0usize;
        for e in &resp.events {
            payload_u32(e.payload.len())?;
            needed = needed.saturating_add(frame_len(e.payload.len()));
        }
        let next = resp.next.encode();
        let cursor_needed = next.len() + 1;
        if needed > buf_len || cursor_needed > next_cursor_cap {
            info.set(net_poll_info {
                bytes_needed: needed,
                cursor_needed,
                ..net_poll_info::default()
            });
            return Err(fail(
                net_result::NET_ERR_BUFFER_TOO_SMALL,
                format!(
                    "the response needs {needed} buffer bytes (given {buf_len}) and \
                     {cursor_needed} cursor bytes (given {next_cursor_cap})"
                ),
            ));
        }
        // SAFETY: the caller's contract.
        let out = unsafe { slice_mut(buf, buf_len, "buf") }?;
        // SAFETY: the caller's contract.
        let cur = unsafe { slice_mut(next_cursor.cast::<u8>(), next_cursor_cap, "next_cursor") }?;
        let mut at = 0;
        for e in &resp.events {
            let header = net_event_header {
                seq: e.id.seq.0,
                ts_ns: e.ts_ns,
                shard: e.id.shard.0,
                reserved: 0,
                payload_len: payload_u32(e.payload.len())?,
            };
            let frame = &mut out[at..at + frame_len(e.payload.len())];
            frame[..8].copy_from_slice(&header.seq.to_ne_bytes());
            frame[8..16].copy_from_slice(&header.ts_ns.to_ne_bytes());
            frame[16..18].copy_from_slice(&header.shard.to_ne_bytes());
            frame[18..20].copy_from_slice(&header.reserved.to_ne_bytes());
            frame[20..24].copy_from_slice(&header.payload_len.to_ne_bytes());
            let body = &mut frame[NET_EVENT_HEADER_BYTES..];
            body[..e.payload.len()].copy_from_slice(&e.payload);
            body[e.payload.len()..].fill(0);
            at += frame.len();
        }
        cur[..next.len()].copy_from_slice(next.as_bytes());
        cur[next.len()] = 0;
        info.set(net_poll_info {
            events: resp.events.len(),
            bytes_used: at,
            bytes_needed: needed,
            cursor_len: next.len(),
            cursor_needed,
            failed_shards: to_u32(resp.failed_shards.len()),
            skipped: resp.skipped,
        });
        Ok(())
    })
}

/// One event of a `net_poll_result`; `payload` points into the result's `data`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct net_event {
    /// The event's sequence number in its shard.
    pub seq: u64,
    /// The shard's timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The payload (NULL when `payload_len` is 0).
    pub payload: *const u8,
    /// Its length.
    pub payload_len: usize,
    /// The shard.
    pub shard: u16,
}

/// A poll's result allocated by libnet: the caller owns the struct, libnet its arrays.
/// Release them with `net_poll_result_free`. Do not change the fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct net_poll_result {
    /// The events (NULL when there are none).
    pub events: *mut net_event,
    /// How many.
    pub events_len: usize,
    /// Every payload, back to back (NULL when all are empty).
    pub data: *mut u8,
    /// Its length.
    pub data_len: usize,
    /// The cursor to poll with next, NUL-terminated.
    pub next_cursor: *mut c_char,
    /// Its length, NUL excluded.
    pub next_cursor_len: usize,
    /// Shards that could not be read.
    pub failed_shards: u32,
    /// Whether sequence numbers were passed over without events.
    pub skipped: bool,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<net_event>() == 40);
    assert!(offset_of!(net_event, shard) == 32);
    assert!(size_of::<net_poll_result>() == 56);
    assert!(offset_of!(net_poll_result, failed_shards) == 48);
};

impl net_poll_result {
    const EMPTY: net_poll_result = net_poll_result {
        events: std::ptr::null_mut(),
        events_len: 0,
        data: std::ptr::null_mut(),
        data_len: 0,
        next_cursor: std::ptr::null_mut(),
        next_cursor_len: 0,
        failed_shards: 0,
        skipped: false,
    };
}

fn boxed<T>(v: Vec<T>) -> (*mut T, usize) {
    if v.is_empty() {
        return (std::ptr::null_mut(), 0);
    }
    let b = v.into_boxed_slice();
    let len = b.len();
    (Box::into_raw(b).cast::<T>(), len)
}

/// [`net_poll`] into memory libnet allocates: `*out` is filled on success (zeroed first, so
/// it must not hold a result not yet freed) and released with `net_poll_result_free`.
///
/// # Safety
/// `bus` a live handle; `cursor` readable for `cursor_len`; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_poll_alloc(
    bus: *const net_bus,
    cursor: *const c_char,
    cursor_len: usize,
    limit: usize,
    out: *mut net_poll_result,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(out, "out", net_poll_result::EMPTY) }?;
        // SAFETY: the caller's contract.
        let resp = unsafe { poll_inner(bus, cursor, cursor_len, limit) }?;
        let total: usize = resp.events.iter().map(|e| e.payload.len()).sum();
        let mut data = Vec::with_capacity(total);
        for e in &resp.events {
            data.extend_from_slice(&e.payload);
        }
        let (data, data_len) = boxed(data);
        let mut events = Vec::with_capacity(resp.events.len());
        let mut at = 0;
        for e in &resp.events {
            let n = e.payload.len();
            events.push(net_event {
                seq: e.id.seq.0,
                ts_ns: e.ts_ns,
                // `at + n <= data_len`: `data` holds every payload back to back.
                payload: if n == 0 {
                    std::ptr::null()
                } else {
                    data.wrapping_add(at)
                },
                payload_len: n,
                shard: e.id.shard.0,
            });
            at += n;
        }
        let (events, events_len) = boxed(events);
        let next = resp.next.encode();
        let next_len = next.len();
        let next = CString::new(next).expect("a cursor is hex text").into_raw();
        out.set(net_poll_result {
            events,
            events_len,
            data,
            data_len,
            next_cursor: next,
            next_cursor_len: next_len,
            failed_shards: to_u32(resp.failed_shards.len()),
            skipped: resp.skipped,
        });
        Ok(())
    })
}

/// Releases what `net_poll_alloc` put in `*result` and sets its fields to NULL/0. Idempotent:
/// a second call, a zeroed result, or a NULL `result` is a no-op.
///
/// # Safety
/// `result` NULL, or a result filled by `net_poll_alloc` (or zeroed) whose fields the caller
/// did not change.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_poll_result_free(result: *mut net_poll_result) -> net_result {
    boundary(|| {
        if result.is_null() {
            return Ok(());
        }
        boundary::check_ptr(result, "result")?;
        // SAFETY: non-NULL, aligned, and per the contract a result from `net_poll_alloc`.
        let r = unsafe { result.read() };
        // Null the fields first: even if a release below panicked, nothing is freed twice.
        // SAFETY: as above.
        unsafe { result.write(net_poll_result::EMPTY) };
        if !r.events.is_null() {
            // SAFETY: made by `boxed` from a boxed slice of `events_len` events.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(r.events, r.events_len))
            });
        }
        if !r.data.is_null() {
            // SAFETY: made by `boxed` from a boxed slice of `data_len` bytes.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(r.data, r.data_len)) });
        }
        if !r.next_cursor.is_null() {
            // SAFETY: made by `CString::into_raw`.
            drop(unsafe { CString::from_raw(r.next_cursor) });
        }
        Ok(())
    })
}
