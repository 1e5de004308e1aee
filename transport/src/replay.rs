//! The anti-replay window of RFC 6479: a ring of 128 bitmap words (8192 bits), of which the
//! newest [`WINDOW`] counters are tracked. Owned by the shard that owns the session, so it
//! needs no lock.
//!
//! The protocol: [`ReplayWindow::check`] before decryption (a replayed or too-old counter
//! costs no cipher work), [`ReplayWindow::commit`] only after the packet authenticated (a
//! forged packet never moves the window). Moving the window forward clears exactly the words
//! it passes; a counter below the window is refused whatever the jump was, so a jump never
//! makes an old counter acceptable again. `u64::MAX` is refused outright: accepting it would
//! leave no counter above it, so one packet would end the session's receive path.

/// Bitmap words.
const WORDS: usize = 128;
const WORD_BITS: u64 = 64;
/// Counters tracked below and including the highest accepted one.
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;
const _: () = assert!(WINDOW >= 8128, "the window tracks at least 8128 counters");

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Accepted before.
    Replay,
    /// Below the window: it may or may not have been seen; it is refused either way.
    TooOld,
    /// `u64::MAX`, never valid.
    Invalid,
}

/// One session's receive window.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter plus one (0: nothing accepted yet).
    next: u64,
    bits: [u64; WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

fn slot(counter: u64) -> (usize, u64) {
    let word = usize::try_from((counter / WORD_BITS) % WORDS as u64).expect("below 128");
    (word, 1u64 << (counter % WORD_BITS))
}

impl ReplayWindow {
    pub const fn new() -> ReplayWindow {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }

    /// Whether `counter` may be accepted; changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), Refused> {
        if counter == u64::MAX {
            return Err(Refused::Invalid);
        }
        if counter >= self.next {
            return Ok(());
        }
        if self.next - counter > WINDOW {
            return Err(Refused::TooOld);
        }
        let (w, bit) = slot(counter);
        if self.bits[w] & bit != 0 {
            Err(Refused::Replay)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as accepted. Call only after `check` passed and the packet
    /// authenticated; checks again so that a misuse can never accept a counter twice.
    pub fn commit(&mut self, counter: u64) -> Result<(), Refused> {
        self.check(counter)?;
        if counter >= self.next {
            // Clear the words strictly after the current top word, up to the new top word
            // (all of them when the jump spans the ring).
            let top = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / WORD_BITS)
            };
            let new_top = counter / WORD_BITS;
            let clear_from = top.map_or(new_top, |t| t + 1);
            let words = (new_top + 1).saturating_sub(clear_from).min(WORDS as u64);
            for i in 0..words {
                let (w, _) = slot((new_top - i) * WORD_BITS);
                self.bits[w] = 0;
            }
            self.next = counter + 1;
        }
        let (w, bit) = slot(counter);
        self.bits[w] |= bit;
        Ok(())
    }

    /// Highest accepted counter, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The obvious model: every accepted counter in a set.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn accept(&mut self, c: u64) -> Result<(), Refused> {
            if c == u64::MAX {
                return Err(Refused::Invalid);
            }
            if let Some(&hi) = self.seen.last()
                && c < hi
                && hi - c >= WINDOW
            {
                return Err(Refused::TooOld);
            }
            if !self.seen.insert(c) {
                return Err(Refused::Replay);
            }
            Ok(())
        }
    }

    #[test]
    fn max_is_refused_and_poisons_nothing() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(u64::MAX), Err(Refused::Invalid));
        assert_eq!(w.commit(u64::MAX), Err(Refused::Invalid));
        w.commit(5).unwrap();
        assert_eq!(w.commit(6), Ok(()));
        assert_eq!(w.commit(u64::MAX - 1), Ok(()));
        assert_eq!(w.commit(u64::MAX), Err(Refused::Invalid));
    }

    #[test]
    fn a_far_jump_never_makes_an_old_counter_acceptable() {
        let mut w = ReplayWindow::new();
        for c in 0..2000 {
            w.commit(c).unwrap();
        }
        w.commit(1_000_000).unwrap();
        for c in 0..2000 {
            assert_eq!(w.check(c), Err(Refused::TooOld), "counter {c}");
        }
        // Inside the new window, unseen counters are fine, seen ones are not.
        w.commit(1_000_000 - 5).unwrap();
        assert_eq!(w.check(1_000_000 - 5), Err(Refused::Replay));
        assert_eq!(w.check(1_000_000), Err(Refused::Replay));
    }

    #[test]
    fn the_edge_of_the_window() {
        let mut w = ReplayWindow::new();
        w.commit(WINDOW + 100).unwrap();
        assert_eq!(w.check(101), Ok(()));
        assert_eq!(w.check(100), Err(Refused::TooOld));
        w.commit(101).unwrap();
        assert_eq!(w.check(101), Err(Refused::Replay));
    }

    fn counters() -> impl Strategy<Value = Vec<u64>> {
        // Mostly close together (replays and reorderings), sometimes jumps, sometimes the
        // edges of u64.
        let step = prop_oneof![
            8 => 0u64..64,
            2 => 0u64..20_000,
            1 => Just(u64::MAX),
            1 => (u64::MAX - 10_000)..=u64::MAX,
        ];
        proptest::collection::vec(step, 1..600)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The window and the set model agree on every counter, in any order: drawn as
        /// base + offset (a wandering base), so replays, reordering and jumps all occur.
        #[test]
        fn agrees_with_a_set(steps in counters(), back in proptest::collection::vec(0u64..9000, 600)) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            let mut base = 0u64;
            for (i, s) in steps.iter().enumerate() {
                let c = if *s >= u64::MAX - 10_000 { *s } else {
                    base = base.saturating_add(*s);
                    base.saturating_sub(back[i % back.len()])
                };
                let expect = m.accept(c);
                prop_assert_eq!(w.check(c), expect, "check {}", c);
                if expect.is_ok() {
                    prop_assert_eq!(w.commit(c), Ok(()));
                    prop_assert_eq!(w.check(c), Err(Refused::Replay));
                } else {
                    prop_assert_eq!(w.commit(c), expect);
                }
            }
        }
    }
}
