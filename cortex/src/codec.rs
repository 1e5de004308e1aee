//! Little helpers for the plain byte encodings of states and snapshots: little-endian
//! integers and length-prefixed byte strings, and a reader that says what ran short.

use crate::error::DecodeError;

/// Appends a u64, little-endian.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a u32, little-endian.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a u16, little-endian.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a byte string with its length (u64) before it.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Reads what the `put_*` functions wrote, in order; every short read names what it wanted.
#[derive(Debug)]
pub struct ByteReader<'a> {
    rest: &'a [u8],
    at: usize,
}

impl<'a> ByteReader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> ByteReader<'a> {
        ByteReader { rest: bytes, at: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::new(format!(
                "{} bytes left over at offset {}",
                self.rest.len(),
                self.at
            )))
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::new(format!(
                "{what} at offset {}: wanted {n} bytes, {} left",
                self.at,
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.at += n;
        Ok(head)
    }

    /// A u64.
    pub fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A u32.
    pub fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// A u16.
    pub fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }

    /// A u8.
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::new(format!("{what}: length {len} does not fit memory")))?;
        self.take(len, what)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let at = self.at;
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map_err(|e| DecodeError::new(format!("{what} at offset {at} is not UTF-8: {e}")))
    }

    /// A count of items that each take at least `min_item_bytes`: refuses a count the rest
    /// of the bytes cannot hold, so a damaged count cannot make the decoder reserve memory
    /// for billions of items.
    pub fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u64(what)?;
        let fits = (self.rest.len() / min_item_bytes.max(1)) as u64;
        if n > fits {
            return Err(DecodeError::new(format!(
                "{what}: {n} items cannot fit the {} bytes left",
                self.rest.len()
            )));
        }
        Ok(usize::try_from(n).expect("bounded by the input's length"))
    }
}
