//! Page-aligned, zero-initialised byte buffers for direct I/O, allocated once when a log opens.
//!
//! `O_DIRECT` requires the memory address, file offset and length of every transfer to be
//! aligned to the device's logical block size; [`BLOCK_BYTES`] (4 KiB) satisfies every device
//! we run on.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Alignment and granularity of direct I/O.
pub const BLOCK_BYTES: usize = 4096;

/// Rounds `n` up to a multiple of [`BLOCK_BYTES`].
pub const fn align_up(n: usize) -> usize {
    (n + BLOCK_BYTES - 1) & !(BLOCK_BYTES - 1)
}

/// Rounds `n` down to a multiple of [`BLOCK_BYTES`].
pub const fn align_down_u64(n: u64) -> u64 {
    n & !(BLOCK_BYTES as u64 - 1)
}

/// A heap buffer aligned to [`BLOCK_BYTES`] whose length is a multiple of it.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf exclusively owns its allocation, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: a shared AlignedBuf only hands out `&[u8]`, like a shared Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` (rounded up to a block) zeroed bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let len = align_up(len.max(BLOCK_BYTES));
        let layout = Layout::from_size_align(len, BLOCK_BYTES).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len initialised bytes and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: buffers hold at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK_BYTES).expect("valid layout");
        // SAFETY: allocated in new() with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK_BYTES, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_down_u64(8191), 4096);
    }
}
