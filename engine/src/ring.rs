//! A bounded single-producer/single-consumer byte ring of length-prefixed entries written in
//! place (nothing is allocated per entry), with the protocols around it: claiming and
//! releasing entries, the writer taking the oldest entry to make room, closing, and parking the
//! reader. A lane (producer → shard) is a ring plus lane state; so should be anything that
//! later moves data between a shard and another thread.
//!
//! Layout: the ring is `capacity` bytes of 8-byte words (a power of two). An entry at position
//! `p` (8-aligned) is a header word `len | KIND_ENTRY`, one `aux` word the caller defines (a
//! lane stores the send timestamp there), and the payload padded to 8 bytes. An entry never
//! wraps: when it does not fit before the end of the ring, a pad word (`bytes | KIND_PAD`)
//! fills the rest and the entry starts at 0. An entry of at most half the capacity always fits
//! once the ring is drained.
//!
//! Positions are monotonic u64 byte counters (`pos & (capacity - 1)` is the ring offset):
//! - `head` (writer): end of the published entries.
//! - `claim` (reader, or writer when taking the oldest): entries below it are taken.
//! - `tail`: space below it is free for the writer to overwrite.
//!
//! `tail <= claim <= head <= tail + capacity` always. The protocols:
//! - Publish: the writer fills an entry's words, then stores `head` (SeqCst: it is also the
//!   store half of the park handshake); the reader loads `head` (Acquire) before parsing.
//! - Claim and release: the reader claims a run of entries with one CAS on `claim`, hands them
//!   to a closure, then releases their space with `fetch_max` on `tail`.
//! - Take oldest: the writer may take the oldest unclaimed entry by the same CAS, and only when
//!   `claim == tail` (the reader holds no claim), so it never overwrites bytes the reader reads.
//!   Both RMWs are shared by exactly two threads. Header words are atomics, so a reader parsing
//!   entries the writer is taking at that moment reads stale values, never a data race; its CAS
//!   then fails and it parses again.
//! - Close (Dekker's, both sides SeqCst): the writer writes only inside a window
//!   ([`RingWriter::enter_window`]: `busy = true`, then it checks `closed`); the closer sets
//!   `closed`, then waits until `busy` clears. Either the writer sees `closed`, or the closer
//!   sees `busy` and waits for the window to end; so once [`Ring::wait_writer_outside`]
//!   returns, no entry is ever published again.
//! - Park (Dekker's, both sides SeqCst): see [`Parker`]; the doorbell that actually sleeps is
//!   behind the [`Doorbell`] trait.
//!
//! These protocols are model-checked with loom at tiny capacities (`loom_tests`, run by
//! `scripts/test.sh` under `--cfg loom`): every interleaving for close and park, every one
//! within 3 preemptions for publish/claim/release and take oldest. Their atomics come from
//! `sync`, which is std's in a normal build and loom's in that one.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

#[cfg(all(test, loom))]
mod loom_tests;
mod sync;

use sync::{AtomicBool, AtomicU64, Ordering, yield_now};

/// Bytes an entry spends besides its payload: the header word and the `aux` word.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 16;
/// The ring's unit: entries, pads and payloads are whole words.
const WORD_BYTES: usize = 8;
/// The smallest ring holds two empty entries.
const CAPACITY_MIN_BYTES: usize = 2 * ENTRY_OVERHEAD_BYTES;
const KIND_ENTRY: u64 = 1 << 32;
const KIND_PAD: u64 = 2 << 32;
const LEN_MASK: u64 = 0xFFFF_FFFF;

/// `n` rounded up to whole words.
fn round_to_words(n: u64) -> u64 {
    let word = WORD_BYTES as u64;
    (n + word - 1) & !(word - 1)
}

/// Ring bytes of an entry with a `len`-byte payload.
fn entry_bytes(len: usize) -> u64 {
    ENTRY_OVERHEAD_BYTES as u64 + round_to_words(len as u64)
}

/// Ring bytes of the entry or pad whose header word is `header`.
fn span_bytes(header: u64) -> u64 {
    let len = header & LEN_MASK;
    if header & !LEN_MASK == KIND_PAD {
        len
    } else {
        ENTRY_OVERHEAD_BYTES as u64 + round_to_words(len)
    }
}

/// The shared state of one ring. Its two ends are one [`RingWriter`] and one [`RingReader`].
pub(crate) struct Ring {
    words: Box<[AtomicU64]>,
    capacity_bytes: u64,
    head: CachePadded<AtomicU64>,
    claim: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    /// The writer is inside its window (see the module docs, close).
    busy: CachePadded<AtomicBool>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The words are payload bytes: too many, and the reader's to interpret.
        f.debug_struct("Ring")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("claim", &self.claim.load(Ordering::Relaxed))
            .field("tail", &self.tail.load(Ordering::Relaxed))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// An empty ring of `capacity_bytes` (a power of two, at least 32).
    pub(crate) fn new(capacity_bytes: usize) -> Ring {
        assert!(
            capacity_bytes.is_power_of_two() && capacity_bytes >= CAPACITY_MIN_BYTES,
            "ring capacity"
        );
        let words = (0..capacity_bytes / WORD_BYTES)
            .map(|_| AtomicU64::new(0))
            .collect();
        Ring {
            words,
            capacity_bytes: capacity_bytes as u64,
            head: CachePadded::new(AtomicU64::new(0)),
            claim: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            busy: CachePadded::new(AtomicBool::new(false)),
            closed: AtomicBool::new(false),
        }
    }

    fn offset(&self, pos: u64) -> u64 {
        pos & (self.capacity_bytes - 1)
    }

    fn word(&self, pos: u64) -> &AtomicU64 {
        let i = usize::try_from(self.offset(pos)).expect("within the ring") / WORD_BYTES;
        &self.words[i]
    }

    /// Published head (for flush snapshots and emptiness checks). SeqCst: the load half of the
    /// park handshake.
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// Bytes published and not yet released by the reader, and the capacity (monitoring: the
    /// two loads are not one snapshot, so the figure is clamped to the capacity).
    pub(crate) fn fill(&self) -> (u64, u64) {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        (
            head.saturating_sub(tail).min(self.capacity_bytes),
            self.capacity_bytes,
        )
    }

    /// Whether published entries wait to be claimed. SeqCst: the consumer's re-check after
    /// [`Parker::prepare_park`].
    pub(crate) fn has_unclaimed(&self) -> bool {
        self.claim.load(Ordering::SeqCst) != self.head.load(Ordering::SeqCst)
    }

    /// Closer, first half: from now on a writer entering its window sees `closed`. Follow with
    /// [`Ring::wait_writer_outside`] (closing many rings first and then waiting on each
    /// overlaps their waits).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Closer, second half: waits until the writer is outside its window. After this returns
    /// no entry is ever published again (see the module docs, close).
    pub(crate) fn wait_writer_outside(&self) {
        while self.busy.load(Ordering::SeqCst) {
            yield_now();
        }
    }

    /// Copies `payload` into the ring at `pos`.
    #[cfg(not(loom))]
    #[inline]
    fn copy_in(&self, pos: u64, payload: &[u8]) {
        let at = usize::try_from(self.offset(pos)).expect("within the ring");
        let base = self.words.as_ptr().cast::<u8>().cast_mut();
        // SAFETY: the caller (`RingWriter::write`) places `[pos, pos + payload.len())` inside
        // the ring (an entry never wraps) and below `tail + capacity`, so the reader neither
        // reads nor owns these bytes until `head` is published; the writer is the ring's only
        // writer. The words are atomics (interior mutability), so writing through them is
        // allowed.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), base.add(at), payload.len()) };
    }

    /// Copies `payload` into the ring at `pos`, word by word through the atomics so that loom
    /// sees every byte (it cannot see a raw copy).
    #[cfg(loom)]
    fn copy_in(&self, pos: u64, payload: &[u8]) {
        let mut at = pos;
        for chunk in payload.chunks(WORD_BYTES) {
            let mut bytes = [0u8; WORD_BYTES];
            bytes[..chunk.len()].copy_from_slice(chunk);
            self.word(at)
                .store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            at += WORD_BYTES as u64;
        }
    }

    /// Hands `f` the `len` payload bytes at `pos`.
    ///
    /// # Safety
    /// The caller claimed the entry holding them and has not released it.
    #[cfg(not(loom))]
    #[inline]
    unsafe fn with_payload<R>(&self, pos: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let at = usize::try_from(self.offset(pos)).expect("within the ring");
        let base = self.words.as_ptr().cast::<u8>();
        // SAFETY: the caller claimed the entry: the writer published it (Acquire on `head` in
        // `claim_more`) and will not overwrite it before it is released through `tail`; an
        // entry never wraps, so the bytes lie inside the ring.
        let payload = unsafe { std::slice::from_raw_parts(base.add(at), len) };
        f(payload)
    }

    /// Hands `f` a copy of the `len` payload bytes at `pos`, read word by word (see `copy_in`).
    ///
    /// # Safety
    /// The caller claimed the entry holding them and has not released it.
    #[cfg(loom)]
    unsafe fn with_payload<R>(&self, pos: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let mut bytes = Vec::with_capacity(len + WORD_BYTES);
        let mut at = pos;
        while bytes.len() < len {
            let w = self.word(at).load(Ordering::Relaxed);
            bytes.extend_from_slice(&w.to_le_bytes());
            at += WORD_BYTES as u64;
        }
        bytes.truncate(len);
        f(&bytes)
    }
}

/// What one [`RingWriter::take_oldest`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The oldest entry was taken (dropped); `aux` was its aux word.
    Entry { aux: u64 },
    /// A pad was skipped.
    Pad,
    /// The reader holds a claim, raced us, or there is nothing to take; try again later.
    Busy,
}

/// The writer's end of a ring (one per ring).
#[derive(Debug)]
pub(crate) struct RingWriter {
    ring: Arc<Ring>,
    /// Position after the last entry written.
    head: u64,
    /// Position after the last entry published (`head` once `publish` ran).
    published: u64,
    /// `tail` as last loaded: room is rechecked only when this says there is none.
    tail_cache: u64,
}

impl RingWriter {
    /// The writer of `ring`. A ring has one writer at a time.
    pub(crate) fn new(ring: Arc<Ring>) -> RingWriter {
        let head = ring.head.load(Ordering::Acquire);
        let tail_cache = ring.tail.load(Ordering::Acquire);
        RingWriter {
            ring,
            head,
            published: head,
            tail_cache,
        }
    }

    /// Ring bytes needed to write a payload of `len` bytes at the current head (with the pad,
    /// if the entry must wrap).
    pub(crate) fn bytes_needed(&self, len: usize) -> u64 {
        let size = entry_bytes(len);
        let off = self.ring.offset(self.head);
        if off + size > self.ring.capacity_bytes {
            self.ring.capacity_bytes - off + size
        } else {
            size
        }
    }

    /// Whether `need` bytes are free, reloading `tail` only when the cached one says they are
    /// not.
    pub(crate) fn has_room(&mut self, need: u64) -> bool {
        if self.head + need - self.tail_cache <= self.ring.capacity_bytes {
            return true;
        }
        self.tail_cache = self.ring.tail.load(Ordering::Acquire);
        self.head + need - self.tail_cache <= self.ring.capacity_bytes
    }

    /// Position after the last entry written.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Bytes in use (not yet released by the reader), reloading `tail`.
    pub(crate) fn fill_bytes(&mut self) -> u64 {
        self.tail_cache = self.ring.tail.load(Ordering::Acquire);
        self.head - self.tail_cache
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.ring.capacity_bytes
    }

    /// Writes one entry and publishes it. The caller checked `has_room(bytes_needed(..))`.
    pub(crate) fn write(&mut self, aux: u64, payload: &[u8]) {
        self.stage(aux, payload);
        self.publish();
    }

    /// Publishes every entry staged so far, in one store (SeqCst: it publishes the entries
    /// (Release) and is the store half of the park handshake).
    pub(crate) fn publish(&mut self) {
        self.ring.head.store(self.head, Ordering::SeqCst);
        self.published = self.head;
    }

    /// Writes one entry without publishing it: the reader sees it with the next
    /// [`RingWriter::publish`] (a batch of entries costs one publication). The caller checked
    /// `has_room(bytes_needed(..))`.
    pub(crate) fn stage(&mut self, aux: u64, payload: &[u8]) {
        self.stage_parts(aux, &[], payload);
    }

    /// [`RingWriter::stage`] of an entry whose payload is `head` followed by `body`, copied
    /// straight into the ring (a lane's origin block and payload: no buffer in between).
    /// `head` is whole words long, so `body` starts on a word. The caller checked
    /// `has_room(bytes_needed(head.len() + body.len()))`.
    pub(crate) fn stage_parts(&mut self, aux: u64, head: &[u8], body: &[u8]) {
        debug_assert!(
            head.len().is_multiple_of(WORD_BYTES),
            "the first part is whole words"
        );
        let ring = &*self.ring;
        let payload_len = head.len() + body.len();
        let size = entry_bytes(payload_len);
        let off = ring.offset(self.head);
        if off + size > ring.capacity_bytes {
            let pad = ring.capacity_bytes - off;
            ring.word(self.head)
                .store(KIND_PAD | pad, Ordering::Relaxed);
            self.head += pad;
        }
        debug_assert!(self.head + size - self.tail_cache <= ring.capacity_bytes);
        let len = payload_len as u64;
        debug_assert!(len <= LEN_MASK, "payload length fits the header");
        ring.word(self.head)
            .store(KIND_ENTRY | len, Ordering::Relaxed);
        ring.word(self.head + WORD_BYTES as u64)
            .store(aux, Ordering::Relaxed);
        let at = self.head + ENTRY_OVERHEAD_BYTES as u64;
        ring.copy_in(at, head);
        ring.copy_in(at + head.len() as u64, body);
        self.head += size;
    }

    /// Takes (drops) the oldest unclaimed entry or pad to make room, if the reader holds no
    /// claim.
    pub(crate) fn take_oldest(&mut self) -> Taken {
        assert_eq!(
            self.published, self.head,
            "publish staged entries before taking any"
        );
        let ring = &*self.ring;
        let c = ring.claim.load(Ordering::Acquire);
        if c != ring.tail.load(Ordering::Acquire) || c == self.head {
            return Taken::Busy;
        }
        // We wrote these words ourselves; the reader never writes the ring.
        let header = ring.word(c).load(Ordering::Relaxed);
        let size = span_bytes(header);
        assert!(
            size > 0 && c + size <= self.head,
            "ring entry header corrupt"
        );
        let is_pad = header & !LEN_MASK == KIND_PAD;
        let aux = if is_pad {
            0
        } else {
            ring.word(c + WORD_BYTES as u64).load(Ordering::Relaxed)
        };
        if ring
            .claim
            .compare_exchange(c, c + size, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Taken::Busy;
        }
        ring.tail.fetch_max(c + size, Ordering::AcqRel);
        if is_pad {
            Taken::Pad
        } else {
            Taken::Entry { aux }
        }
    }

    /// Enters the writer's window (`busy`, SeqCst: the store half of the close handshake). The
    /// writer then checks [`RingWriter::is_closed`] before writing, and calls
    /// [`RingWriter::leave_window`] when done.
    pub(crate) fn enter_window(&self) {
        self.ring.busy.store(true, Ordering::SeqCst);
    }

    /// Whether the ring was closed (SeqCst: the load half of the close handshake). Inside the
    /// window, false means entries written before leaving it count.
    pub(crate) fn is_closed(&self) -> bool {
        self.ring.closed.load(Ordering::SeqCst)
    }

    /// Leaves the writer's window (Release: a closer that sees it left also sees every entry
    /// published inside).
    pub(crate) fn leave_window(&self) {
        self.ring.busy.store(false, Ordering::Release);
    }
}

/// The reader's end of a ring (one per ring).
#[derive(Debug)]
pub(crate) struct RingReader {
    ring: Arc<Ring>,
    /// Position after the last entry handed over (or taken by the writer).
    pos: u64,
    /// End of the run claimed and not yet handed over.
    claimed_end: u64,
}

impl RingReader {
    /// The reader of `ring`. A ring has one reader at a time.
    pub(crate) fn new(ring: Arc<Ring>) -> RingReader {
        let pos = ring.claim.load(Ordering::Acquire);
        RingReader {
            ring,
            pos,
            claimed_end: pos,
        }
    }

    /// Position after the last entry handed over (entries the writer took count as handed
    /// over once the reader skips them).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether no entry is claimed but not yet handed over, nor published but not claimed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.claimed_end && !self.ring.has_unclaimed()
    }

    /// Hands entries to `f(aux, payload)` until it returns false (the refused entry stays for
    /// the next drain), `events_max` were handed over, or the ring is empty; claims about
    /// `bytes_max` ring bytes at a time; then releases the consumed space. Returns the number
    /// of entries consumed.
    pub(crate) fn drain(
        &mut self,
        events_max: usize,
        bytes_max: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> usize {
        let mut consumed = 0;
        'outer: while consumed < events_max {
            if self.pos == self.claimed_end && !self.claim_more(events_max - consumed, bytes_max) {
                break;
            }
            let ring = &*self.ring;
            while self.pos < self.claimed_end {
                let header = ring.word(self.pos).load(Ordering::Relaxed);
                if header & !LEN_MASK == KIND_ENTRY {
                    let len = usize::try_from(header & LEN_MASK).expect("u32 length");
                    let aux = ring
                        .word(self.pos + WORD_BYTES as u64)
                        .load(Ordering::Relaxed);
                    let at = self.pos + ENTRY_OVERHEAD_BYTES as u64;
                    // SAFETY: the entry lies in [pos, claimed_end), which we claimed and have
                    // not released.
                    if !unsafe { ring.with_payload(at, len, |payload| f(aux, payload)) } {
                        break 'outer;
                    }
                    consumed += 1;
                }
                self.pos += span_bytes(header);
            }
        }
        self.release();
        consumed
    }

    /// Claims up to `events_max` entries (about `bytes_max` ring bytes) past `pos`. Returns
    /// false if there is nothing to claim. Called only with nothing claimed.
    fn claim_more(&mut self, events_max: usize, bytes_max: u64) -> bool {
        let ring = &*self.ring;
        loop {
            let c = ring.claim.load(Ordering::Acquire);
            // Entries in [pos, c) were taken by the writer (`take_oldest`).
            self.pos = self.pos.max(c);
            self.claimed_end = self.pos;
            let h = ring.head.load(Ordering::Acquire);
            if c == h {
                return false;
            }
            let (mut end, mut events) = (c, 0);
            while end < h && events < events_max && end - c < bytes_max {
                let header = ring.word(end).load(Ordering::Relaxed);
                let size = span_bytes(header);
                if size == 0 || end + size > h {
                    break; // a stale header of an entry being taken; the CAS below fails
                }
                events += usize::from(header & !LEN_MASK == KIND_ENTRY);
                end += size;
            }
            if end == c {
                continue;
            }
            if ring
                .claim
                .compare_exchange(c, end, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.claimed_end = end;
                return true;
            }
        }
    }

    /// Frees the space of every entry handed over (`fetch_max`: the writer may have moved
    /// `tail` past `pos` by taking entries).
    fn release(&self) {
        self.ring.tail.fetch_max(self.pos, Ordering::AcqRel);
    }
}

/// What puts the reader to sleep and wakes it: an eventfd today (`wake.rs`), an io_uring wait
/// later, a condvar in the loom models. It only sleeps and rings; when to do either is
/// [`Parker`]'s protocol, which does not depend on the doorbell.
pub(crate) trait Doorbell {
    /// Makes the sleeper's current or next `wait` return. Rings may coalesce into one.
    fn ring(&self);
    /// Sleeps until rung (consuming the rings) or `timeout_us` passes; may return early.
    #[cfg_attr(not(test), allow(dead_code))]
    fn wait(&self, timeout_us: u64);
}

/// The park/wake handshake of a reader (which may read many rings) and its writers, over a
/// [`Doorbell`]. It is Dekker's, and both sides are SeqCst (the v0.10 mesh used AcqRel on one
/// side, which only happens to work on x86):
/// - reader: [`Parker::prepare_park`] (`parked = true`); check every ring it reads
///   ([`Ring::has_unclaimed`]) and any other source of work; [`Parker::park`] if all are
///   empty, else [`Parker::unpark`].
/// - writer: publish ([`RingWriter::write`] stores `head`); then [`Parker::wake_if_parked`].
///
/// Either the reader's check sees the new head, or the writer's load sees `parked` and rings.
/// A ring with nothing to do is harmless (the doorbell is drained on wake).
#[derive(Debug)]
pub(crate) struct Parker<D> {
    parked: CachePadded<AtomicBool>,
    doorbell: D,
}

impl<D: Doorbell> Parker<D> {
    pub(crate) fn with_doorbell(doorbell: D) -> Parker<D> {
        Parker {
            parked: CachePadded::new(AtomicBool::new(false)),
            doorbell,
        }
    }

    /// Writer side, after publishing: wake the reader if it parked (SeqCst: the load half of
    /// the handshake). Costs one load, no syscall, while the reader is awake.
    #[inline]
    pub(crate) fn wake_if_parked(&self) {
        if self.parked.load(Ordering::SeqCst) {
            self.doorbell.ring();
        }
    }

    /// The doorbell (a reactor that waits on it itself needs its descriptor).
    pub(crate) fn doorbell(&self) -> &D {
        &self.doorbell
    }

    /// Wakes the reader unconditionally (work that is not in a ring, such as control
    /// messages).
    pub(crate) fn wake(&self) {
        self.doorbell.ring();
    }

    /// Reader side: announce the intent to park (SeqCst: the store half of the handshake).
    /// Follow with the emptiness checks, then [`Parker::park`] or [`Parker::unpark`].
    pub(crate) fn prepare_park(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Reader side: work was found after `prepare_park`.
    pub(crate) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Reader side: sleeps until woken or `timeout_us` passes, then clears `parked`. (A shard
    /// waits on its io_uring instead, which holds a read of the doorbell.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn park(&self, timeout_us: u64) {
        self.doorbell.wait(timeout_us);
        self.unpark();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring(capacity_bytes: usize) -> (Arc<Ring>, RingWriter, RingReader) {
        let ring = Arc::new(Ring::new(capacity_bytes));
        let w = RingWriter::new(ring.clone());
        let r = RingReader::new(ring.clone());
        (ring, w, r)
    }

    fn collect(r: &mut RingReader) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        r.drain(usize::MAX, u64::MAX, |aux, p| {
            out.push((aux, p.to_vec()));
            true
        });
        out
    }

    #[test]
    fn entries_wrap_with_pads_and_keep_order_and_aux() {
        let (ring, mut w, mut r) = ring(128);
        let mut expect = Vec::new();
        for i in 0..200u64 {
            let p = vec![u8::try_from(i % 251).unwrap(); usize::try_from(i % 29).unwrap()];
            let need = w.bytes_needed(p.len());
            if !w.has_room(need) {
                assert_eq!(collect(&mut r), expect);
                expect.clear();
                assert!(
                    w.has_room(need),
                    "a drained ring has room for half its capacity"
                );
            }
            w.write(i * 1000, &p);
            expect.push((i * 1000, p));
        }
        assert_eq!(collect(&mut r), expect);
        assert!(r.is_empty());
        assert_eq!(r.pos(), ring.head());
        assert_eq!(w.fill_bytes(), 0);
    }

    #[test]
    fn two_part_entries_read_back_as_one_payload_and_wrap() {
        let (_ring, mut w, mut r) = ring(256);
        let mut expect = Vec::new();
        for i in 0..100u64 {
            let head = [u8::try_from(i).unwrap(); 24];
            let body = vec![u8::try_from(i + 1).unwrap(); usize::try_from(i % 13).unwrap()];
            let need = w.bytes_needed(head.len() + body.len());
            if !w.has_room(need) {
                assert_eq!(collect(&mut r), expect);
                expect.clear();
                assert!(w.has_room(need));
            }
            w.stage_parts(i, &head, &body);
            w.publish();
            expect.push((i, [&head[..], &body[..]].concat()));
        }
        assert_eq!(collect(&mut r), expect);
    }

    #[test]
    fn bytes_needed_counts_the_pad_of_a_wrapping_entry() {
        let (_ring, mut w, mut r) = ring(64);
        assert_eq!(w.bytes_needed(8), 24);
        w.write(0, &[1; 8]);
        w.write(0, &[2; 8]);
        assert_eq!(w.bytes_needed(8), 16 + 24, "pad of 16, then the entry at 0");
        assert!(!w.has_room(w.bytes_needed(8)));
        assert_eq!(collect(&mut r).len(), 2);
        assert!(w.has_room(w.bytes_needed(8)));
        w.write(7, &[3; 8]);
        assert_eq!(collect(&mut r), vec![(7, vec![3; 8])]);
    }

    #[test]
    fn take_oldest_takes_entries_and_pads_but_not_under_a_claim() {
        let (_ring, mut w, mut r) = ring(64);
        assert_eq!(w.take_oldest(), Taken::Busy, "nothing to take");
        w.write(10, &[1; 8]);
        w.write(11, &[2; 8]);
        assert_eq!(w.take_oldest(), Taken::Entry { aux: 10 });
        assert!(w.has_room(w.bytes_needed(8)));
        w.write(12, &[3; 8]); // a pad of 16 at 48, then the entry at 64
        assert_eq!(w.take_oldest(), Taken::Entry { aux: 11 });
        assert_eq!(w.take_oldest(), Taken::Pad);
        // A reader holding a claim (its closure refused an entry) blocks taking.
        assert!(w.has_room(w.bytes_needed(8)));
        w.write(13, &[4; 8]);
        assert_eq!(r.drain(usize::MAX, u64::MAX, |_, _| false), 0);
        assert_eq!(w.take_oldest(), Taken::Busy);
        assert_eq!(collect(&mut r), vec![(12, vec![3; 8]), (13, vec![4; 8])]);
        assert!(r.is_empty());
    }

    #[test]
    fn the_reader_skips_what_the_writer_took() {
        let (_ring, mut w, mut r) = ring(128);
        for i in 0..4u64 {
            w.write(i, &[0; 8]);
        }
        assert_eq!(w.take_oldest(), Taken::Entry { aux: 0 });
        assert_eq!(w.take_oldest(), Taken::Entry { aux: 1 });
        let got: Vec<u64> = collect(&mut r).into_iter().map(|(aux, _)| aux).collect();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(r.pos(), w.head());
    }

    #[test]
    fn a_drain_stops_at_its_event_budget_or_a_refusal() {
        let (_ring, mut w, mut r) = ring(1024);
        for i in 0..10u64 {
            w.write(i, &[0; 8]);
        }
        assert_eq!(r.drain(3, 48, |_, _| true), 3);
        let mut seen = Vec::new();
        let n = r.drain(usize::MAX, 48, |aux, _| {
            seen.push(aux);
            aux < 5
        });
        assert_eq!((n, seen), (2, vec![3, 4, 5]), "5 was refused and stays");
        let rest: Vec<u64> = collect(&mut r).into_iter().map(|(aux, _)| aux).collect();
        assert_eq!(rest, vec![5, 6, 7, 8, 9]);
        assert!(r.is_empty());
    }

    #[test]
    fn close_is_seen_inside_the_window() {
        let (ring, w, _r) = ring(64);
        w.enter_window();
        assert!(!w.is_closed());
        w.leave_window();
        ring.close();
        ring.wait_writer_outside();
        w.enter_window();
        assert!(w.is_closed());
        w.leave_window();
    }

    #[derive(Debug, Default)]
    struct CountingDoorbell {
        rings: std::sync::atomic::AtomicU64,
    }

    impl Doorbell for CountingDoorbell {
        fn ring(&self) {
            self.rings.fetch_add(1, Ordering::Relaxed);
        }
        fn wait(&self, _timeout_us: u64) {}
    }

    #[test]
    fn a_writer_rings_only_a_parked_reader() {
        let p = Parker::with_doorbell(CountingDoorbell::default());
        p.wake_if_parked();
        assert_eq!(p.doorbell.rings.load(Ordering::Relaxed), 0);
        p.prepare_park();
        p.wake_if_parked();
        assert_eq!(p.doorbell.rings.load(Ordering::Relaxed), 1);
        p.park(0);
        p.wake_if_parked();
        assert_eq!(
            p.doorbell.rings.load(Ordering::Relaxed),
            1,
            "park clears parked"
        );
        p.wake();
        assert_eq!(p.doorbell.rings.load(Ordering::Relaxed), 2);
    }
}
