//! What a user supplies: a fold (how one event changes the state) and its state (how it is
//! published to readers and written to a snapshot).
//!
//! The contract that keeps the watermark honest: when `apply` returns an error it must leave
//! the state as it was (check the event before changing anything; the built-in folds do).
//! Under `stop` the fold then halts with `folded_through_seq` just below the failed event, and
//! the published state is exactly the effect of the events below it. A fold that panics is
//! stopped the same way, except that its state after the panic is discarded: readers keep the
//! last version published before the batch that panicked, and the watermark stays with it.

use crate::error::{DecodeError, FoldError};
use crate::event::FoldEvent;

/// A fold's state (one per shard).
///
/// [`FoldState::publish`] is how a version is published to readers: the runner calls it at
/// the end of a batch it folded (at most once per `publish_interval_us`) and swaps the
/// version in (readers never lock). By default it is `clone`, so the clone's cost must not
/// grow with the state: use persistent collections or share big parts behind `Arc`, or
/// override `publish` (the memories model hands readers the map it wrote, shared, and writes
/// a second one). `encode`/`decode` are the snapshot format, a plain byte encoding of the
/// state's own choice (no JSON needed).
pub trait FoldState: Clone + Default + Send + Sync + 'static {
    /// Appends the state's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Rebuilds a state from what `encode` wrote; says what was wrong otherwise.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
    /// An immutable version of the state as it is now, for readers (and snapshots). Called
    /// on the applier's working state, which may prepare for its next writes (the version
    /// must never change afterwards). The default is `clone`.
    fn publish(&mut self) -> Self {
        self.clone()
    }
}

/// A fold over a shard's events. One instance per shard (cloned from the one given to
/// [`crate::Cortex::start`]), called in sequence order.
pub trait Fold: Clone + Send + 'static {
    /// The state it folds into.
    type State: FoldState;
    /// Applies one event. On `Err` the state must be left unchanged (see the module docs).
    fn apply(&mut self, state: &mut Self::State, event: &FoldEvent<'_>) -> Result<(), FoldError>;
}

/// A fold made of a function (`fold_fn(|state, event| ...)`).
pub struct FnFold<S, F> {
    f: F,
    _state: std::marker::PhantomData<fn() -> S>,
}

impl<S, F: Clone> Clone for FnFold<S, F> {
    fn clone(&self) -> Self {
        FnFold {
            f: self.f.clone(),
            _state: std::marker::PhantomData,
        }
    }
}

impl<S, F> std::fmt::Debug for FnFold<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnFold")
    }
}

/// A fold from a function of the state and the event.
pub fn fold_fn<S, F>(f: F) -> FnFold<S, F>
where
    S: FoldState,
    F: FnMut(&mut S, &FoldEvent<'_>) -> Result<(), FoldError> + Clone + Send + 'static,
{
    FnFold {
        f,
        _state: std::marker::PhantomData,
    }
}

impl<S, F> Fold for FnFold<S, F>
where
    S: FoldState,
    F: FnMut(&mut S, &FoldEvent<'_>) -> Result<(), FoldError> + Clone + Send + 'static,
{
    type State = S;
    fn apply(&mut self, state: &mut S, event: &FoldEvent<'_>) -> Result<(), FoldError> {
        (self.f)(state, event)
    }
}
