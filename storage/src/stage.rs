//! A stage: the aligned buffers one batch is encoded into before a single write per file.
//!
//! A stage covers the file range from `start` (block-aligned) to `start + fill`. Because direct
//! writes must cover whole blocks, a stage begins with the partial last block of the data
//! before it ("the carry"), so a batch is written as one contiguous, aligned write that rewrites
//! that block with identical leading bytes. The log has a few stages: one being filled while
//! the others are written, synced, or handed to batch consumers.

use crate::buffer::{AlignedBuf, BLOCK_BYTES, align_down_u64, align_up};

#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) buf: AlignedBuf,
    /// File offset of `buf[0]`; always block-aligned.
    pub(crate) start: u64,
    /// Valid bytes in `buf`.
    pub(crate) fill: usize,
    /// Bytes at the start that belong to data before this stage's batch (the carried block,
    /// or a new segment's header); discarding the batch keeps them.
    pub(crate) carry: usize,
}

impl Stage {
    pub(crate) fn new(capacity: usize) -> Stage {
        Stage {
            buf: AlignedBuf::new(capacity + 2 * BLOCK_BYTES),
            start: 0,
            fill: 0,
            carry: 0,
        }
    }

    /// The logical end of the file once this stage is written.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.fill as u64
    }

    /// Bytes still free.
    pub(crate) fn room(&self) -> usize {
        self.buf.len() - BLOCK_BYTES - self.fill
    }

    /// Appends bytes produced by `f` into the next `len` bytes; returns what `f` returned.
    pub(crate) fn append_with<T>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
        assert!(len <= self.room(), "stage overflow");
        let at = self.fill;
        let out = f(&mut self.buf.as_mut_slice()[at..at + len]);
        self.fill += len;
        out
    }

    /// The staged bytes from `from` (a position in the buffer) to the fill.
    pub(crate) fn bytes(&self, from: usize) -> &[u8] {
        &self.buf.as_slice()[from..self.fill]
    }

    /// The staged bytes from `from`, mutably.
    pub(crate) fn bytes_mut(&mut self, from: usize) -> &mut [u8] {
        let fill = self.fill;
        &mut self.buf.as_mut_slice()[from..fill]
    }

    /// Zeroes the bytes after `fill` up to the block boundary and returns the aligned write
    /// length.
    pub(crate) fn seal_for_write(&mut self) -> usize {
        let len = align_up(self.fill);
        self.buf.as_mut_slice()[self.fill..len].fill(0);
        len
    }

    /// Starts this stage right after `prev`: copies `prev`'s partial last block.
    pub(crate) fn carry_from(&mut self, prev: &Stage) {
        self.reset_at(prev.end(), |dst| {
            let from = usize::try_from(align_down_u64(prev.end()) - prev.start).expect("in buffer");
            let n = prev.fill - from;
            dst[..n].copy_from_slice(&prev.buf.as_slice()[from..prev.fill]);
            n
        });
    }

    /// Starts this stage at logical file end `end`; `fill_carry` writes the bytes of the
    /// partial block before `end` and returns how many it wrote.
    pub(crate) fn reset_at(&mut self, end: u64, fill_carry: impl FnOnce(&mut [u8]) -> usize) {
        self.start = align_down_u64(end);
        let carry = usize::try_from(end - self.start).expect("below one block");
        let written = fill_carry(&mut self.buf.as_mut_slice()[..BLOCK_BYTES]);
        assert_eq!(written, carry, "carry must fill the partial block exactly");
        self.fill = carry;
        self.carry = carry;
    }

    /// Makes everything staged so far part of the carry (a new segment's header).
    pub(crate) fn mark_carry(&mut self) {
        self.carry = self.fill;
    }

    /// Drops the batch's bytes, keeping the carry.
    pub(crate) fn discard(&mut self) {
        self.fill = self.carry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carry_keeps_the_partial_block() {
        let mut a = Stage::new(16384);
        a.reset_at(0, |_| 0);
        a.append_with(5000, |d| d.fill(7));
        assert_eq!(a.seal_for_write(), 8192);
        let mut b = Stage::new(16384);
        b.carry_from(&a);
        assert_eq!(b.start, 4096);
        assert_eq!(b.fill, 904);
        assert!(b.buf.as_slice()[..904].iter().all(|&x| x == 7));
        assert_eq!(b.end(), 5000);
    }
}
