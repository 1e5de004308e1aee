//! The panic boundary every entry point runs in, the result codes, the thread-local last
//! error, and the checked conversions of C pointers (NULL, alignment, `len <= isize::MAX`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use net_engine::{Error, SendError};

/// The result of every fallible call. The numbers are stable: a code keeps its number in every
/// later release, new codes take new numbers.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum net_result {
    /// Success.
    NET_OK = 0,
    /// A required pointer argument was NULL.
    NET_ERR_NULL = 1,
    /// An argument was out of range or inconsistent (a length above `PTRDIFF_MAX`, a NULL
    /// pointer with a non-zero length, ...).
    NET_ERR_INVALID_ARG = 2,
    /// The configuration JSON is invalid; the last error names the field.
    NET_ERR_CONFIG = 3,
    /// Text that must be UTF-8 was not.
    NET_ERR_UTF8 = 4,
    /// A caller buffer is too small; the call reported the size needed and changed nothing.
    NET_ERR_BUFFER_TOO_SMALL = 5,
    /// The lane to the event's shard is full (backpressure mode `fail`).
    NET_ERR_FULL = 6,
    /// The payload is larger than the bus accepts.
    NET_ERR_TOO_LARGE = 7,
    /// The bus is shut down.
    NET_ERR_CLOSED = 8,
    /// The call's time limit passed.
    NET_ERR_TIMEOUT = 9,
    /// A shard's log failed (the last error names the shard and the file).
    NET_ERR_STORAGE = 10,
    /// A panic was caught at the boundary; the call did not complete.
    NET_ERR_PANIC = 11,
    /// The cursor text is invalid or names a shard this bus does not have.
    NET_ERR_CURSOR = 12,
    /// The bus could not start (the last error says what to change).
    NET_ERR_START = 13,
    /// A shard failed or stopped before the event became durable.
    NET_ERR_SHARD_FAILED = 14,
    /// A pointer was not aligned for its type (checked before any dereference).
    NET_ERR_MISALIGNED = 15,
    /// The handle is not a live `net_bus` (freed, or not made by `net_bus_new`).
    NET_ERR_BAD_HANDLE = 16,
    /// Some entries of a batch were not ingested (see `out_failed_indices`).
    NET_ERR_PARTIAL = 17,
    /// An error of a kind this version has no code for; the last error describes it.
    NET_ERR_OTHER = 18,
}

/// A failed call: its code and the message `net_last_error` returns.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: net_result,
    pub(crate) msg: Cow<'static, str>,
}

pub(crate) type R<T = ()> = Result<T, Fail>;

pub(crate) fn fail(code: net_result, msg: impl Into<Cow<'static, str>>) -> Fail {
    Fail {
        code,
        msg: msg.into(),
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        use net_result::*;
        let code = match &e {
            Error::Config { .. } => NET_ERR_CONFIG,
            Error::Start { .. } => NET_ERR_START,
            Error::Storage { .. } | Error::DataDir(_) => NET_ERR_STORAGE,
            Error::NoSuchShard { .. } => NET_ERR_INVALID_ARG,
            Error::Cursor(_) => NET_ERR_CURSOR,
            Error::Timeout { .. } => NET_ERR_TIMEOUT,
            Error::Closed => NET_ERR_CLOSED,
            Error::ShardPanicked { .. } => NET_ERR_SHARD_FAILED,
            _ => NET_ERR_OTHER,
        };
        fail(code, e.to_string())
    }
}

impl From<SendError> for Fail {
    fn from(e: SendError) -> Fail {
        use net_result::*;
        // The frequent refusals carry a static message: a producer refused in a loop under
        // backpressure `fail` does not allocate per refusal.
        match e {
            SendError::Full(_) => fail(NET_ERR_FULL, "the lane to the event's shard is full"),
            SendError::Closed => fail(NET_ERR_CLOSED, "the bus is shut down"),
            SendError::Failed(_) | SendError::Stopped(_) => {
                fail(NET_ERR_SHARD_FAILED, e.to_string())
            }
            SendError::TooLarge { .. } => fail(NET_ERR_TOO_LARGE, e.to_string()),
            SendError::NoSuchShard { .. } => fail(NET_ERR_INVALID_ARG, e.to_string()),
            _ => fail(NET_ERR_OTHER, e.to_string()),
        }
    }
}

thread_local! {
    /// The message of this thread's last failed call. Reused, so recording one allocates
    /// only when it outgrows the previous one.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: &str) {
    // `try_with`: a call from a C thread-local destructor after ours is gone still returns
    // its code, it just has no message.
    let _ = LAST_ERROR.try_with(|cell| {
        if let Ok(mut s) = cell.try_borrow_mut() {
            s.clear();
            s.push_str(msg);
        }
    });
}

pub(crate) fn with_last_error<T>(f: impl FnOnce(&str) -> T) -> T {
    let mut f = Some(f);
    let mut call = |s: &str| (f.take().expect("called once"))(s);
    match LAST_ERROR.try_with(|cell| cell.try_borrow().ok().map(|s| call(&s))) {
        Ok(Some(v)) => v,
        _ => call(""),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// The boundary of every fallible entry point: runs `body`, catches a panic (NET_ERR_PANIC),
/// and records a failure's message as this thread's last error.
pub(crate) fn boundary(body: impl FnOnce() -> R) -> net_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => net_result::NET_OK,
        Ok(Err(f)) => {
            set_last_error(&f.msg);
            f.code
        }
        Err(payload) => {
            set_last_error(&format!(
                "panic in libnet (a bug; please report): {}",
                panic_text(payload.as_ref())
            ));
            net_result::NET_ERR_PANIC
        }
    }
}

/// [`boundary`] for `net_last_error` itself: a failure does not replace the message the
/// caller is trying to read.
pub(crate) fn boundary_quiet(body: impl FnOnce() -> R) -> net_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => net_result::NET_OK,
        Ok(Err(f)) => f.code,
        Err(_) => net_result::NET_ERR_PANIC,
    }
}

/// [`boundary`] for the infallible entry points that return a value: `fallback` on a panic.
pub(crate) fn boundary_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The largest length `slice::from_raw_parts` admits for elements of `T`.
fn len_max<T>() -> usize {
    isize::MAX.unsigned_abs() / std::mem::size_of::<T>().max(1)
}

/// Checks a pointer that will be dereferenced: non-NULL and aligned for `T`.
pub(crate) fn check_ptr<T>(p: *const T, what: &'static str) -> R {
    if p.is_null() {
        return Err(fail(net_result::NET_ERR_NULL, null_msg(what)));
    }
    if !p.is_aligned() {
        return Err(fail(
            net_result::NET_ERR_MISALIGNED,
            format!(
                "`{what}` is not aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
        ));
    }
    Ok(())
}

fn null_msg(what: &'static str) -> String {
    format!("`{what}` is NULL")
}

/// A C array of `len` elements of `T` as a slice: `len <= PTRDIFF_MAX / sizeof(T)` (a
/// sign-extended -1 is an error), then NULL and alignment; `len == 0` needs no pointer.
///
/// # Safety
/// When `len > 0` and the checks pass, `p` must point to `len` initialised `T`s that stay
/// valid and unmodified for `'a`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, what: &'static str) -> R<&'a [T]> {
    if len > len_max::<T>() {
        return Err(fail(
            net_result::NET_ERR_INVALID_ARG,
            format!("length of `{what}` ({len}) exceeds PTRDIFF_MAX"),
        ));
    }
    if len == 0 {
        return Ok(&[]);
    }
    check_ptr(p, what)?;
    // SAFETY: `p` is non-NULL and aligned, `len * size_of::<T>() <= isize::MAX` (checked
    // above), and the caller guarantees `len` initialised elements live for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A writable C buffer of `len` bytes; same checks as [`slice`].
///
/// # Safety
/// When `len > 0`, `p` must point to `len` writable bytes not otherwise accessed for `'a`.
pub(crate) unsafe fn slice_mut<'a>(p: *mut u8, len: usize, what: &'static str) -> R<&'a mut [u8]> {
    if len > len_max::<u8>() {
        return Err(fail(
            net_result::NET_ERR_INVALID_ARG,
            format!("length of `{what}` ({len}) exceeds PTRDIFF_MAX"),
        ));
    }
    if len == 0 {
        return Ok(&mut []);
    }
    check_ptr(p, what)?;
    // SAFETY: as in `slice`; the caller guarantees exclusive access. `u8` has no invalid bit
    // patterns, so uninitialised caller memory is only ever written through this slice
    // (callers of this function write before they read).
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// An output parameter: checked when the call starts, zeroed at once (so every failure
/// leaves it zeroed), written with the value on success.
#[derive(Debug)]
pub(crate) struct Out<T: Copy>(*mut T);

impl<T: Copy> Out<T> {
    /// Checks `p` (NULL, alignment) and writes `zero` into it.
    ///
    /// # Safety
    /// `p`, if non-NULL and aligned, must be valid for writes of a `T`.
    pub(crate) unsafe fn new(p: *mut T, what: &'static str, zero: T) -> R<Out<T>> {
        check_ptr(p, what)?;
        // SAFETY: checked non-NULL and aligned; the caller guarantees it is writable.
        unsafe { p.write(zero) };
        Ok(Out(p))
    }

    pub(crate) fn set(&self, v: T) {
        // SAFETY: checked in `new`, where the caller guaranteed it writable for the call.
        unsafe { self.0.write(v) };
    }
}

/// A C text argument given as pointer and length (no NUL needed): must be UTF-8.
///
/// # Safety
/// As [`slice`].
pub(crate) unsafe fn text<'a>(p: *const c_char, len: usize, what: &'static str) -> R<&'a str> {
    // SAFETY: forwarded contract; `c_char` and `u8` have the same size and alignment.
    let bytes = unsafe { slice(p.cast::<u8>(), len, what) }?;
    std::str::from_utf8(bytes).map_err(|e| {
        fail(
            net_result::NET_ERR_UTF8,
            format!("`{what}` is not UTF-8: {e}"),
        )
    })
}
