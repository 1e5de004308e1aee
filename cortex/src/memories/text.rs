//! `Text`: an immutable string kept inline when short (ids, tag sets, small values) and behind
//! a shared `Arc<str>` otherwise, so that copying one between the fold's two maps costs a
//! memory copy or a reference count, never an allocation.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The longest string kept inline.
pub(crate) const INLINE: usize = 22;

#[derive(Clone)]
pub(crate) enum Text {
    /// `bytes[..len]` is UTF-8: only ever copied from a `&str`.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>),
}

impl Text {
    pub(crate) const EMPTY: Text = Text::Inline {
        len: 0,
        bytes: [0; INLINE],
    };

    pub(crate) fn new(s: &str) -> Text {
        if let Ok(len) = u8::try_from(s.len())
            && s.len() <= INLINE
        {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline { len, bytes }
        } else {
            Text::Shared(Arc::from(s))
        }
    }

    /// Joins `parts` with `sep` between them, inline when short (without a temporary).
    pub(crate) fn join<'a>(parts: impl Iterator<Item = &'a str> + Clone, sep: char) -> Text {
        let mut sep_buf = [0; 4];
        let sep = &*sep.encode_utf8(&mut sep_buf);
        let len = parts
            .clone()
            .enumerate()
            .map(|(i, p)| p.len() + if i > 0 { sep.len() } else { 0 })
            .sum::<usize>();
        if let Ok(short) = u8::try_from(len)
            && len <= INLINE
        {
            let mut bytes = [0; INLINE];
            let mut at = 0;
            for (i, p) in parts.enumerate() {
                for piece in [if i > 0 { sep } else { "" }, p] {
                    bytes[at..at + piece.len()].copy_from_slice(piece.as_bytes());
                    at += piece.len();
                }
            }
            Text::Inline { len: short, bytes }
        } else {
            let mut s = String::with_capacity(len);
            for (i, p) in parts.enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push_str(p);
            }
            Text::Shared(Arc::from(s))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Inline { len, bytes } => {
                let b = &bytes[..usize::from(*len)];
                // SAFETY: inline bytes are only ever written by copying whole `&str`s (and ASCII
                // separators between them) in `new` and `join`, so `b` is UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Text::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl Hash for Text {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        self.as_str().hash(h);
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_long_text_shared_and_both_read_back() {
        for s in ["", "a", "m00000001", "\u{e9}t\u{e9}", &"x".repeat(INLINE)] {
            assert!(matches!(Text::new(s), Text::Inline { .. }), "{s}");
            assert_eq!(Text::new(s).as_str(), s);
        }
        let long = "y".repeat(INLINE + 1);
        assert!(matches!(Text::new(&long), Text::Shared(_)));
        assert_eq!(Text::new(&long).as_str(), long);
        assert_eq!(
            Text::join(["a", "bc", "\u{e9}"].into_iter(), '\0').as_str(),
            "a\0bc\0\u{e9}"
        );
        let many = ["tag-one", "tag-two", "tag-three"];
        assert_eq!(
            Text::join(many.into_iter(), '\0').as_str(),
            many.join("\0"),
            "longer than inline"
        );
        assert_eq!(Text::join(std::iter::empty(), '\0').as_str(), "");
    }
}
