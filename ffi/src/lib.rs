//! net-ffi: the C API of net (`libnet.so`, `libnet.a`, `include/net.h`).
//!
//! Conventions, on every entry point:
//! - the body runs inside one panic boundary ([`boundary`]): a panic becomes
//!   `NET_ERR_PANIC` (and the `release-ffi` profile builds with `panic = "abort"` anyway);
//! - every pointer is checked for NULL and alignment before any dereference, every length is
//!   checked `<= PTRDIFF_MAX` before a slice is made of it (a sign-extended -1 is an error);
//! - outputs are zeroed (NULL for pointers) as soon as the call has checked them, and written
//!   only on success; the few outputs that carry diagnostics on a failure say so;
//! - a failure records a message, read with `net_last_error` on the same thread.
//!
//! Handles are `Box` pointers tagged with a magic number; the cold calls also look the
//! address up in the set of live handles. `net_bus_free` drops the bus but keeps the handle's
//! small shell allocated for the process's life with its tag cleared, so a freed handle is
//! refused by every call (`net_ingest*` included) and a stale handle can never name a later
//! bus at a reused address.

#![allow(non_camel_case_types)]

mod boundary;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use net_engine::{Bus, Config, Producer, StatsHandle};

pub use boundary::net_result;
use boundary::{Out, R, boundary, boundary_quiet, boundary_value, fail, slice, slice_mut, text};

const MAGIC: u64 = 0x6e65_745f_6275_7321; // "net_bus!"

/// A bus. Opaque: made by `net_bus_new`, released by `net_bus_free`.
pub struct net_bus {
    /// `MAGIC` while the handle is live, 0 once freed (atomic: a stale handle may be read
    /// by one thread while another frees it).
    magic: AtomicU64,
    id: u64,
    closed: Arc<AtomicBool>,
    bus: RwLock<Option<Bus>>,
    stats: StatsHandle,
    shards: usize,
    shutdown: Mutex<Option<net_shutdown_report>>,
}

impl std::fmt::Debug for net_bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("net_bus").field("id", &self.id).finish()
    }
}

// Handles are shared by C threads: the state behind one must be Send + Sync.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<net_bus>();
};

static NEXT_BUS_ID: AtomicU64 = AtomicU64::new(1);
/// Freed handles' shells, kept (and reachable) for the process's life: see `net_bus_free`.
static GRAVEYARD: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Addresses of live handles (cold-path check before a handle is read).
static LIVE: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<usize>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hot-path handle check: NULL, alignment, then the tag.
///
/// # Safety
/// `p`, if non-NULL and aligned, must be readable for a `net_bus` (a handle from
/// `net_bus_new`, live or freed: freed shells are never released).
unsafe fn handle<'a>(p: *const net_bus) -> R<&'a net_bus> {
    boundary::check_ptr(p, "bus")?;
    // SAFETY: non-NULL and aligned; the caller guarantees it readable. Only the tag is read
    // before it is known to be a `net_bus`.
    let magic = unsafe { &*std::ptr::addr_of!((*p).magic) }.load(Ordering::Acquire);
    if magic != MAGIC {
        return Err(fail(
            net_result::NET_ERR_BAD_HANDLE,
            "`bus` is not a net_bus handle",
        ));
    }
    // SAFETY: tagged as made by `net_bus_new`, not yet freed (the caller's contract).
    Ok(unsafe { &*p })
}

/// Cold-path handle check: also refuses an address that is not a live handle without reading
/// it (a double free, a freed handle).
///
/// # Safety
/// As [`handle`], for addresses in the live set.
unsafe fn live_handle<'a>(p: *const net_bus) -> R<&'a net_bus> {
    boundary::check_ptr(p, "bus")?;
    if !live().contains(&(p as usize)) {
        return Err(fail(
            net_result::NET_ERR_BAD_HANDLE,
            "`bus` is not a live net_bus handle (freed, or not made by net_bus_new)",
        ));
    }
    // SAFETY: a live handle, so readable.
    unsafe { handle(p) }
}

fn closed() -> boundary::Fail {
    fail(net_result::NET_ERR_CLOSED, "the bus is shut down")
}

/// One producer per (thread, bus): ingest takes no lock. Made on a thread's first ingest,
/// dropped when the thread exits, or when this thread next touches a bus that shut down.
struct Local {
    bus_id: u64,
    closed: Arc<AtomicBool>,
    producer: Producer,
}

thread_local! {
    static PRODUCERS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

fn with_producer<T>(h: &net_bus, f: impl FnOnce(&mut Producer) -> R<T>) -> R<T> {
    let gone = || fail(net_result::NET_ERR_CLOSED, "the calling thread is exiting");
    PRODUCERS
        .try_with(|cell| {
            let mut list = cell.try_borrow_mut().map_err(|_| {
                fail(
                    net_result::NET_ERR_OTHER,
                    "libnet re-entered from within a call",
                )
            })?;
            if h.closed.load(Ordering::Acquire) {
                list.retain(|l| l.bus_id != h.id);
                return Err(closed());
            }
            let i = match list.iter().position(|l| l.bus_id == h.id) {
                Some(i) => i,
                None => {
                    // Retire producers of buses that shut down since this thread used them.
                    list.retain(|l| !l.closed.load(Ordering::Acquire));
                    let guard = h.bus.read().unwrap_or_else(PoisonError::into_inner);
                    let producer = guard.as_ref().ok_or_else(closed)?.producer()?;
                    drop(guard);
                    list.push(Local {
                        bus_id: h.id,
                        closed: h.closed.clone(),
                        producer,
                    });
                    list.len() - 1
                }
            };
            f(&mut list[i].producer)
        })
        .unwrap_or_else(|_| Err(gone()))
}

fn with_bus<T>(h: &net_bus, f: impl FnOnce(&Bus) -> R<T>) -> R<T> {
    if h.closed.load(Ordering::Acquire) {
        return Err(closed());
    }
    let guard = h.bus.read().unwrap_or_else(PoisonError::into_inner);
    f(guard.as_ref().ok_or_else(closed)?)
}

/// Runs a wait in slices of at most [`WAIT_SLICE`], each under the bus's read lock, so that a
/// shutdown (which needs the write lock) never waits behind a long or endless wait: once it
/// has begun, the wait returns `NET_ERR_CLOSED` at the end of the current slice.
fn wait_sliced(h: &net_bus, timeout_ms: u64, f: impl Fn(&Bus, Duration) -> R) -> R {
    let deadline = std::time::Instant::now().checked_add(duration_ms(timeout_ms));
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        let slice = left.min(WAIT_SLICE);
        match with_bus(h, |b| f(b, slice)) {
            Err(e) if e.code == net_result::NET_ERR_TIMEOUT && left > slice => continue,
            other => return other,
        }
    }
}

/// Longest single wait a flush or wait-durable holds the bus's read lock for.
const WAIT_SLICE: Duration = Duration::from_millis(10);

fn duration_ms(ms: u64) -> Duration {
    if ms == u64::MAX {
        Duration::MAX
    } else {
        Duration::from_millis(ms)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The library's version, a static NUL-terminated string (never freed).
#[unsafe(no_mangle)]
pub extern "C" fn net_version() -> *const c_char {
    boundary_value(std::ptr::null(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}

/// The name of a result code (`"NET_ERR_FULL"`), a static NUL-terminated string; an unknown
/// code gives `"NET_ERR_UNKNOWN"`.
#[unsafe(no_mangle)]
pub extern "C" fn net_result_str(code: u32) -> *const c_char {
    boundary_value(std::ptr::null(), || {
        let s: &'static str = match code {
            0 => "NET_OK\0",
            1 => "NET_ERR_NULL\0",
            2 => "NET_ERR_INVALID_ARG\0",
            3 => "NET_ERR_CONFIG\0",
            4 => "NET_ERR_UTF8\0",
            5 => "NET_ERR_BUFFER_TOO_SMALL\0",
            6 => "NET_ERR_FULL\0",
            7 => "NET_ERR_TOO_LARGE\0",
            8 => "NET_ERR_CLOSED\0",
            9 => "NET_ERR_TIMEOUT\0",
            10 => "NET_ERR_STORAGE\0",
            11 => "NET_ERR_PANIC\0",
            12 => "NET_ERR_CURSOR\0",
            13 => "NET_ERR_START\0",
            14 => "NET_ERR_SHARD_FAILED\0",
            15 => "NET_ERR_MISALIGNED\0",
            16 => "NET_ERR_BAD_HANDLE\0",
            17 => "NET_ERR_PARTIAL\0",
            18 => "NET_ERR_OTHER\0",
            _ => "NET_ERR_UNKNOWN\0",
        };
        s.as_ptr().cast()
    })
}

/// Copies this thread's last error message (of the last failed call on this thread; a
/// successful call does not clear it) into `buf` as a NUL-terminated string. `*needed` is
/// set to the bytes the message needs, NUL included (1 when there is none). `buf` may be
/// NULL when `len` is 0 (a size query). Too small: `NET_ERR_BUFFER_TOO_SMALL`, `buf`
/// untouched. This call never replaces the message.
///
/// # Safety
/// `buf` must be writable for `len` bytes; `needed` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_last_error(
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> net_result {
    boundary_quiet(|| {
        // SAFETY: the caller's contract on `needed`.
        let needed = unsafe { Out::new(needed, "needed", 0) }?;
        boundary::with_last_error(|msg| {
            let n = msg.len() + 1;
            if len < n {
                needed.set(n);
                return Err(fail(net_result::NET_ERR_BUFFER_TOO_SMALL, ""));
            }
            // SAFETY: the caller's contract on `buf` and `len`.
            let out = unsafe { slice_mut(buf.cast::<u8>(), len, "buf") }?;
            needed.set(n);
            out[..msg.len()].copy_from_slice(msg.as_bytes());
            out[msg.len()] = 0;
            Ok(())
        })
    })
}

/// Starts a bus from a JSON configuration (`config_json`, `len` bytes, no NUL needed; the
/// keys of README's configuration reference). On success `*bus` is the handle; on failure it
/// is NULL and the last error names the bad field (`config field `shards`: ...`).
///
/// # Safety
/// `config_json` must be readable for `len` bytes; `bus` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_bus_new(
    config_json: *const c_char,
    len: usize,
    bus: *mut *mut net_bus,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { Out::new(bus, "bus", std::ptr::null_mut()) }?;
        // SAFETY: the caller's contract.
        let json = unsafe { text(config_json, len, "config_json") }?;
        let config = Config::from_json(json)?;
        let started = Bus::start(config)?;
        let h = Box::new(net_bus {
            magic: AtomicU64::new(MAGIC),
            id: NEXT_BUS_ID.fetch_add(1, Ordering::Relaxed),
            closed: Arc::new(AtomicBool::new(false)),
            stats: started.stats_handle(),
            shards: started.shards(),
            bus: RwLock::new(Some(started)),
            shutdown: Mutex::new(None),
        });
        let p = Box::into_raw(h);
        live().insert(p as usize);
        out.set(p);
        Ok(())
    })
}

/// What `net_bus_shutdown` did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct net_shutdown_report {
    /// Events accepted by the bus and then counted as dropped by the shutdown itself.
    pub dropped_at_shutdown: u64,
    /// Final totals: `ingested == persisted + dropped`.
    pub ingested: u64,
    /// Events written to the logs.
    pub persisted: u64,
    /// Events dropped (backpressure, I/O failure, shutdown).
    pub dropped: u64,
    /// Sends refused with `NET_ERR_FULL`.
    pub rejected: u64,
    /// Shards whose thread panicked.
    pub panicked_shards: u32,
    /// Shards whose log failed.
    pub failed_shards: u32,
    /// Whether events the bus had accepted were lost.
    pub lossy: bool,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<net_shutdown_report>() == 56);
    assert!(offset_of!(net_shutdown_report, rejected) == 32);
    assert!(offset_of!(net_shutdown_report, panicked_shards) == 40);
    assert!(offset_of!(net_shutdown_report, failed_shards) == 44);
    assert!(offset_of!(net_shutdown_report, lossy) == 48);
};

/// Drains the bus for up to `deadline_ms`, then stops it; what was not drained is counted as
/// dropped, once. Ingest, poll and flush return `NET_ERR_CLOSED` from the moment it starts.
/// Concurrent and repeated calls are serialised: the others wait for the first to finish
/// and all get its report. `report` may be NULL; when given it is zeroed on failure.
/// The handle stays valid until `net_bus_free`.
///
/// # Safety
/// `bus` a handle from `net_bus_new` not yet freed; `report` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_bus_shutdown(
    bus: *const net_bus,
    deadline_ms: u64,
    report: *mut net_shutdown_report,
) -> net_result {
    boundary(|| {
        let out = if report.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe { Out::new(report, "report", net_shutdown_report::default()) }?)
        };
        // SAFETY: the caller's contract.
        let h = unsafe { live_handle(bus) }?;
        let mut done = h.shutdown.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = *done {
            if let Some(o) = &out {
                o.set(r);
            }
            return Ok(());
        }
        h.closed.store(true, Ordering::Release);
        let taken = h.bus.write().unwrap_or_else(PoisonError::into_inner).take();
        let Some(b) = taken else {
            return Err(fail(
                net_result::NET_ERR_OTHER,
                "an earlier shutdown of this bus did not complete",
            ));
        };
        let rep = b.shutdown(duration_ms(deadline_ms));
        let t = rep.stats.total;
        let r = net_shutdown_report {
            dropped_at_shutdown: rep.dropped_at_shutdown,
            ingested: t.ingested,
            persisted: t.persisted,
            dropped: t.dropped,
            rejected: t.rejected,
            panicked_shards: to_u32(rep.panicked_shards.len()),
            failed_shards: to_u32(rep.failed_shards.len()),
            lossy: rep.lossy,
        };
        *done = Some(r);
        if let Some(o) = &out {
            o.set(r);
        }
        Ok(())
    })
}

/// Releases a handle (stopping the bus at once if it was not shut down: what it still held
/// is counted as dropped). NULL is a no-op; a handle already freed, or a pointer that is not
/// a handle, returns `NET_ERR_BAD_HANDLE` without being read. Calls with the handle after
/// this one return `NET_ERR_BAD_HANDLE` (the handle's small shell is never released, so a
/// stale handle can never name a later bus); calls running meanwhile finish first.
///
/// # Safety
/// `bus` NULL or a pointer; if it is a live handle, it is released.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_bus_free(bus: *mut net_bus) -> net_result {
    boundary(|| {
        if bus.is_null() {
            return Ok(());
        }
        boundary::check_ptr(bus, "bus")?;
        if !live().remove(&(bus as usize)) {
            return Err(fail(
                net_result::NET_ERR_BAD_HANDLE,
                "`bus` is not a live net_bus handle (already freed?)",
            ));
        }
        // SAFETY: it was in the live set, so it is a `net_bus` from `net_bus_new` not yet
        // freed, and it is now out of the set, so no other free can take it.
        let h = unsafe { &*bus };
        h.closed.store(true, Ordering::Release);
        // The bus itself goes (a bus not shut down runs its shutdown path with no deadline,
        // recording any loss); the small shell stays allocated for the process's life with its
        // tag cleared, so that a stale handle can never name a later bus at a reused address,
        // and any call with it, `net_ingest*` included, is refused as a bad handle.
        let taken = h.bus.write().unwrap_or_else(PoisonError::into_inner).take();
        drop(taken);
        h.magic.store(0, Ordering::Release);
        GRAVEYARD
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(bus as usize);
        Ok(())
    })
}

/// The body of `net_ingest` and `net_ingest_durable` (each runs it in its boundary).
///
/// # Safety
/// As `net_ingest`.
unsafe fn ingest(
    bus: *const net_bus,
    key: *const u8,
    key_len: usize,
    payload: *const u8,
    payload_len: usize,
    durable: bool,
) -> R {
    // SAFETY: the caller's contract.
    let h = unsafe { handle(bus) }?;
    // SAFETY: the caller's contract.
    let key = unsafe { slice(key, key_len, "key") }?;
    // SAFETY: the caller's contract.
    let payload = unsafe { slice(payload, payload_len, "payload") }?;
    with_producer(h, |p| {
        let sent = if durable {
            p.send_durable(key, payload)
        } else {
            p.send(key, payload)
        };
        sent.map(drop).map_err(Into::into)
    })
}

/// Ingests one event: the shard is chosen by `key` (events of one key keep their order).
/// Returns when the event is in the shard's lane (or was dropped by backpressure mode
/// `drop_newest`/`sample`, which counts it in `stats.dropped`). Lock-free: each calling
/// thread gets its own producer on its first call. `key` may be NULL when `key_len` is 0.
///
/// # Safety
/// `bus` a live handle; `key`/`payload` readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_ingest(
    bus: *const net_bus,
    key: *const u8,
    key_len: usize,
    payload: *const u8,
    payload_len: usize,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        unsafe { ingest(bus, key, key_len, payload, payload_len, false) }
    })
}

/// [`net_ingest`], returning once the event is durable under the bus's fsync policy.
/// Blocks the calling thread; for many events, ingest them and call `net_flush`.
///
/// # Safety
/// As `net_ingest`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_ingest_durable(
    bus: *const net_bus,
    key: *const u8,
    key_len: usize,
    payload: *const u8,
    payload_len: usize,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        unsafe { ingest(bus, key, key_len, payload, payload_len, true) }
    })
}

/// Ingests `count` events (`keys[i]`/`key_lens[i]`, `payloads[i]`/`payload_lens[i]`),
/// publishing each touched shard once. An entry that is not ingested — a NULL pointer with a
/// non-zero length, a length above `PTRDIFF_MAX`, a full lane, a payload too large — is
/// listed: `*out_failed_len` is set to how many there are (always written, 0 on success;
/// `count` when the call itself fails), and the first `out_failed_cap` of their indices, in
/// ascending order, go to `out_failed_indices` (which may be NULL: then only the count).
/// Returns `NET_OK` when every entry was ingested, `NET_ERR_PARTIAL` when some were not (the
/// last error says why the first was refused), or the call's own error.
///
/// # Safety
/// `bus` a live handle; the four arrays readable for `count` elements and each entry for
/// its length; `out_failed_indices` NULL or writable for `out_failed_cap`; `out_failed_len`
/// writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn net_ingest_batch(
    bus: *const net_bus,
    keys: *const *const u8,
    key_lens: *const usize,
    payloads: *const *const u8,
    payload_lens: *const usize,
    count: usize,
    out_failed_indices: *mut usize,
    out_failed_cap: usize,
    out_failed_len: *mut usize,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let failed_len = unsafe { Out::new(out_failed_len, "out_failed_len", count) }?;
        let failed_idx: &mut [usize] = if out_failed_indices.is_null() {
            &mut []
        } else {
            boundary::check_ptr(out_failed_indices, "out_failed_indices")?;
            if out_failed_cap > isize::MAX.unsigned_abs() / std::mem::size_of::<usize>() {
                return Err(fail(
                    net_result::NET_ERR_INVALID_ARG,
                    "`out_failed_cap` exceeds PTRDIFF_MAX",
                ));
            }
            // SAFETY: non-NULL, aligned, size within isize::MAX, writable per the contract.
            unsafe { std::slice::from_raw_parts_mut(out_failed_indices, out_failed_cap) }
        };
        let fill_all = |idx: &mut [usize]| {
            for (i, slot) in idx.iter_mut().enumerate().take(count) {
                *slot = i;
            }
        };
        let mut run = || -> R<(usize, Option<boundary::Fail>)> {
            // SAFETY: the caller's contract.
            let h = unsafe { handle(bus) }?;
            // SAFETY: the caller's contract (four arrays of `count`).
            let (kp, kl, pp, pl) = unsafe {
                (
                    slice(keys, count, "keys")?,
                    slice(key_lens, count, "key_lens")?,
                    slice(payloads, count, "payloads")?,
                    slice(payload_lens, count, "payload_lens")?,
                )
            };
            // SAFETY: the caller's contract on each entry.
            let entry = |i: usize| -> R<(&[u8], &[u8])> {
                // SAFETY: the caller's contract on entry `i`.
                unsafe {
                    Ok((
                        slice(kp[i], kl[i], "keys[i]")?,
                        slice(pp[i], pl[i], "payloads[i]")?,
                    ))
                }
            };
            let mut first: Option<boundary::Fail> = None;
            let mut bad: Vec<usize> = Vec::new();
            for i in 0..count {
                if let Err(f) = entry(i) {
                    bad.push(i);
                    first.get_or_insert(f);
                }
            }
            // Refusals are indexed among the entries given to `send_batch`: the valid ones.
            let sent = with_producer(h, |p| {
                Ok(p.send_batch((0..count).filter_map(|i| entry(i).ok())))
            })?;
            if sent.refused.is_empty() && bad.is_empty() {
                failed_len.set(0);
                return Ok((0, None));
            }
            // Map indices among the valid entries back to indices in the caller's arrays.
            let valid: Vec<usize> = (0..count)
                .filter(|i| bad.binary_search(i).is_err())
                .collect();
            let mut all = bad;
            for (j, e) in sent.refused {
                all.push(valid[j]);
                if first.is_none() {
                    first = Some(e.into());
                }
            }
            all.sort_unstable();
            for (slot, i) in failed_idx.iter_mut().zip(&all) {
                *slot = *i;
            }
            failed_len.set(all.len());
            Ok((all.len(), first))
        };
        match run() {
            Ok((0, _)) => Ok(()),
            Ok((n, first)) => {
                let why = first.map(|f| f.msg).unwrap_or_default();
                Err(fail(
                    net_result::NET_ERR_PARTIAL,
                    format!("{n} of {count} entries not ingested; the first: {why}"),
                ))
            }
            Err(f) => {
                failed_len.set(count);
                fill_all(failed_idx);
                Err(f)
            }
        }
    })
}

/// Waits until every event ingested (by any thread) before this call is durable, up to
/// `timeout_ms` (`UINT64_MAX`: no limit). A shutdown waits for a running flush.
///
/// # Safety
/// `bus` a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_flush(bus: *const net_bus, timeout_ms: u64) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let h = unsafe { live_handle(bus) }?;
        wait_sliced(h, timeout_ms, |b, slice| Ok(b.flush_timeout(slice)?))
    })
}

/// An event's id: the shard that stored it and its sequence number there (as
/// `net_event_header` gives them).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct net_event_id {
    /// Its sequence number in the shard.
    pub seq: u64,
    /// The shard.
    pub shard: u16,
    /// Zero.
    pub reserved: [u16; 3],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<net_event_id>() == 16);
    assert!(align_of::<net_event_id>() == 8);
    assert!(offset_of!(net_event_id, seq) == 0);
    assert!(offset_of!(net_event_id, shard) == 8);
};

/// Waits until every event in `ids[0..count]` is durable under the bus's fsync policy, up to
/// `timeout_ms` (`UINT64_MAX`: no limit). `NET_ERR_TIMEOUT` when the time ran out first,
/// `NET_ERR_INVALID_ARG` for a shard the bus does not have (named in the last error).
///
/// # Safety
/// `bus` a live handle; `ids` points to `count` readable ids (NULL allowed when `count` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn net_wait_durable(
    bus: *const net_bus,
    ids: *const net_event_id,
    count: usize,
    timeout_ms: u64,
) -> net_result {
    boundary(|| {
        // SAFETY: the caller's contract.
        let h = unsafe { live_handle(bus) }?;
        // SAFETY: the caller's contract for `ids`.
        let ids = unsafe { slice(ids, count, "ids") }?;
        let ids: Vec<net_engine::EventId> = ids
            .iter()
            .map(|id| net_engine::EventId {
                shard: net_engine::ShardId(id.shard),
                seq: net_engine::Seq(id.seq),
            })
            .collect();
        wait_sliced(h, timeout_ms, |b, slice| Ok(b.wait_durable(&ids, slice)?))
    })
}

mod poll;
pub use poll::*;

mod stats;
pub use stats::*;
