//! A bounded pool of fixed-size packet buffers, owned by one shard thread.
//!
//! All buffers live in one contiguous allocation made at construction; a free list of `u32`
//! indices, preallocated to the pool's capacity, hands them out. `alloc` and `free` are a
//! `Vec` pop and push: no allocation, lock or syscall per packet. When the pool is empty,
//! `alloc` returns `None` and the caller applies backpressure or counts a drop; the pool never
//! grows. There is no global or thread-local state: dropping the pool frees everything.
//!
//! A [`PacketBuf`] is a handle, neither `Clone` nor `Copy`, and `free` consumes it, so a
//! buffer cannot be freed twice or used after being freed through the same handle. Handing a
//! pool a handle it did not issue is a programmer error and panics.
//!
//! Buffers never move while the pool lives, and [`PacketPool::ptr_mut`] derives its pointers
//! without materialising a reference to the whole allocation (`Vec::as_mut_ptr`), so the
//! pointers the UDP layer puts in a batch's iovecs stay valid together for one syscall.

use std::fmt;

/// A handle to one buffer of a [`PacketPool`], returned by [`PacketPool::alloc`] and consumed
/// by [`PacketPool::free`].
///
/// Deliberately neither `Clone` nor `Copy`: one handle per allocated buffer, so a freed buffer
/// has no handle left to reach it.
#[derive(Debug, PartialEq, Eq)]
pub struct PacketBuf {
    index: u32,
}

impl PacketBuf {
    /// The buffer's index in its pool, `0..capacity` (for logs and tests).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// A fixed number of fixed-size packet buffers in one allocation, with a free list.
pub struct PacketPool {
    /// `capacity * buffer_bytes` bytes; buffer `i` starts at `i * buffer_bytes`.
    memory: Vec<u8>,
    buffer_bytes: usize,
    /// Indices of free buffers; a stack, so the most recently freed (cache-warm) buffer is
    /// reused first. Its capacity is the pool's, so pushing never reallocates.
    free: Vec<u32>,
    /// Whether buffer `i` is handed out; catches handles from another pool.
    in_use: Vec<bool>,
}

impl fmt::Debug for PacketPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketPool")
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .field("buffer_bytes", &self.buffer_bytes)
            .finish()
    }
}

impl PacketPool {
    /// Allocates `buffers` zeroed buffers of `buffer_bytes` each, in one allocation.
    ///
    /// Panics if `buffer_bytes` is 0, `buffers` exceeds `u32::MAX`, or the total size
    /// overflows `usize` (configuration errors).
    pub fn new(buffers: usize, buffer_bytes: usize) -> PacketPool {
        assert!(buffer_bytes > 0, "packet pool: buffer_bytes must be > 0");
        let count = u32::try_from(buffers).expect("packet pool: more than u32::MAX buffers");
        let total = buffers
            .checked_mul(buffer_bytes)
            .expect("packet pool: buffers * buffer_bytes overflows usize");
        let mut free = Vec::with_capacity(buffers);
        // Reversed so that the first allocations hand out 0, 1, 2, ...
        free.extend((0..count).rev());
        PacketPool {
            memory: vec![0; total],
            buffer_bytes,
            free,
            in_use: vec![false; buffers],
        }
    }

    /// Takes a free buffer, or `None` when all are in use. Its contents are whatever the
    /// previous user left.
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        let index = self.free.pop()?;
        let slot = &mut self.in_use[index as usize];
        debug_assert!(!*slot, "packet pool: free list held buffer {index} in use");
        *slot = true;
        Some(PacketBuf { index })
    }

    /// Returns a buffer to the pool. Panics if this pool did not hand `b` out.
    pub fn free(&mut self, b: PacketBuf) {
        let slot = self.slot(&b);
        self.in_use[slot] = false;
        debug_assert!(
            self.free.len() < self.free.capacity(),
            "packet pool: free list overflow"
        );
        self.free.push(b.index);
    }

    /// The whole buffer (`buffer_bytes` long).
    pub fn buf(&self, b: &PacketBuf) -> &[u8] {
        let start = self.slot(b) * self.buffer_bytes;
        &self.memory[start..start + self.buffer_bytes]
    }

    /// The whole buffer (`buffer_bytes` long), mutably.
    pub fn buf_mut(&mut self, b: &PacketBuf) -> &mut [u8] {
        let start = self.slot(b) * self.buffer_bytes;
        &mut self.memory[start..start + self.buffer_bytes]
    }

    /// A pointer to the start of the buffer, valid for `buffer_bytes` reads and writes until
    /// the pool is dropped or a reference into this buffer is taken again (`buf`/`buf_mut`).
    ///
    /// For iovecs handed to the kernel: the pointer comes from `Vec::as_mut_ptr`, which does
    /// not reborrow the whole allocation, so pointers to several buffers stay valid together.
    pub fn ptr_mut(&mut self, b: &PacketBuf) -> *mut u8 {
        let start = self.slot(b) * self.buffer_bytes;
        // In bounds: slot < capacity, so start + buffer_bytes <= memory.len().
        self.memory.as_mut_ptr().wrapping_add(start)
    }

    /// Number of free buffers.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Number of buffers, free or not; fixed at construction.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    /// Size of every buffer in bytes.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// The handle's index, checked to be one this pool handed out.
    fn slot(&self, b: &PacketBuf) -> usize {
        let slot = b.index as usize;
        assert!(
            self.in_use.get(slot).copied().unwrap_or(false),
            "packet pool: buffer {} was not handed out by this pool",
            b.index
        );
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_returns_none_and_free_makes_room() {
        let mut pool = PacketPool::new(3, 16);
        let bufs: Vec<PacketBuf> = (0..3).map(|_| pool.alloc().expect("free buffer")).collect();
        assert_eq!(pool.available(), 0);
        assert!(pool.alloc().is_none());
        assert!(pool.alloc().is_none(), "still exhausted on a second try");
        let mut bufs = bufs.into_iter();
        pool.free(bufs.next().expect("three buffers"));
        assert_eq!(pool.available(), 1);
        let again = pool.alloc().expect("room after free");
        assert!(pool.alloc().is_none());
        pool.free(again);
        bufs.for_each(|b| pool.free(b));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn capacity_is_bounded_across_cycles() {
        let mut pool = PacketPool::new(4, 8);
        for _ in 0..10 {
            let mut held = Vec::new();
            while let Some(b) = pool.alloc() {
                held.push(b);
            }
            assert_eq!(held.len(), 4);
            assert_eq!(pool.capacity(), 4);
            held.into_iter().for_each(|b| pool.free(b));
            assert_eq!(pool.available(), 4);
        }
    }

    #[test]
    fn buffers_do_not_overlap() {
        let mut pool = PacketPool::new(5, 32);
        let bufs: Vec<PacketBuf> = (0..5).map(|_| pool.alloc().expect("free buffer")).collect();
        for (i, b) in bufs.iter().enumerate() {
            let fill = u8::try_from(i + 1).expect("small");
            assert_eq!(pool.buf_mut(b).len(), 32);
            pool.buf_mut(b).fill(fill);
        }
        for (i, b) in bufs.iter().enumerate() {
            let fill = u8::try_from(i + 1).expect("small");
            assert!(
                pool.buf(b).iter().all(|&x| x == fill),
                "buffer {i} was overwritten"
            );
        }
        let mut starts: Vec<usize> = bufs.iter().map(|b| pool.ptr_mut(b) as usize).collect();
        starts.sort_unstable();
        assert!(starts.windows(2).all(|w| w[1] - w[0] >= 32));
        bufs.into_iter().for_each(|b| pool.free(b));
    }

    #[test]
    fn ptr_mut_points_at_the_buffer() {
        let mut pool = PacketPool::new(2, 8);
        let a = pool.alloc().expect("free buffer");
        let b = pool.alloc().expect("free buffer");
        let pa = pool.ptr_mut(&a);
        let pb = pool.ptr_mut(&b);
        // SAFETY: both pointers are valid for 8 bytes and point at distinct buffers; no
        // reference into the pool is live while they are written.
        unsafe {
            pa.write_bytes(0xAA, 8);
            pb.write_bytes(0xBB, 8);
        }
        assert_eq!(pool.buf(&a), &[0xAA; 8]);
        assert_eq!(pool.buf(&b), &[0xBB; 8]);
        pool.free(a);
        pool.free(b);
    }

    #[test]
    #[should_panic(expected = "not handed out by this pool")]
    fn foreign_handle_panics() {
        let mut small = PacketPool::new(1, 8);
        let mut big = PacketPool::new(4, 8);
        let _first = big.alloc();
        let foreign = big.alloc().expect("free buffer"); // index 1: out of range in `small`
        small.free(foreign);
    }

    proptest::proptest! {
        /// Any interleaving of allocs and frees keeps every buffer accounted for exactly once.
        #[test]
        fn allocs_and_frees_conserve_buffers(ops in proptest::collection::vec(0u8..3, 0..200)) {
            let mut pool = PacketPool::new(8, 4);
            let mut held: Vec<PacketBuf> = Vec::new();
            for op in ops {
                if op < 2 {
                    match pool.alloc() {
                        Some(b) => held.push(b),
                        None => proptest::prop_assert_eq!(held.len(), 8),
                    }
                } else if let Some(b) = held.pop() {
                    pool.free(b);
                }
                proptest::prop_assert_eq!(pool.available() + held.len(), pool.capacity());
                let mut indices: Vec<u32> = held.iter().map(PacketBuf::index).collect();
                indices.sort_unstable();
                indices.dedup();
                proptest::prop_assert_eq!(indices.len(), held.len(), "a buffer handed out twice");
            }
        }
    }

    #[test]
    fn empty_pool_never_allocates() {
        let mut pool = PacketPool::new(0, 8);
        assert!(pool.alloc().is_none());
        assert_eq!(pool.capacity(), 0);
    }
}
