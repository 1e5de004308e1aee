//! Progress of a long run on stderr: which phase is running, for how long, and, where the
//! phase knows its size, how far along it is.
//!
//! Nothing is drawn unless stderr is a terminal (CI logs and `--json | tail -n 1` see none of
//! it; `NET_BENCH_NO_PROGRESS` turns it off in a terminal too), and nothing before the run has
//! gone on for `SHOW_AFTER`, so short runs never draw.
//!
//! The measured path pays nothing: a scenario opens a `Phase` around a phase (outside its
//! measurement windows: opening one allocates), and the phase's position is a relaxed atomic
//! that the watcher loops already polling the bus's counters store (`set`, `set_remaining`):
//! the senders' own loops are not touched. All drawing happens on one ticker thread that wakes every `TICK`, and that
//! thread's allocations are left out of the counts the scenarios report (`alloc::uncounted`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Runs shorter than this draw nothing.
const SHOW_AFTER: Duration = Duration::from_secs(2);

/// How often the ticker redraws.
const TICK: Duration = Duration::from_millis(150);

/// `REMAINING` when the position is `DONE`'s.
const UNSET: u64 = u64::MAX;

/// Units done in the innermost phase.
static DONE: AtomicU64 = AtomicU64::new(0);
/// Units left in the innermost phase, when a watcher counts down instead (`UNSET` if not).
static REMAINING: AtomicU64 = AtomicU64::new(UNSET);

static STATE: Mutex<State> = Mutex::new(State {
    phases: Vec::new(),
    first_phase: None,
    generation: 0,
    bar: None,
    ticker: false,
});

struct State {
    /// Open phases, innermost last; the innermost is drawn.
    phases: Vec<Entry>,
    first_phase: Option<Instant>,
    /// Bumped whenever the innermost phase changes, so the ticker redraws it from scratch.
    generation: u64,
    /// The bar on screen and the generation it shows.
    bar: Option<(ProgressBar, u64)>,
    ticker: bool,
}

struct Entry {
    label: String,
    total: Option<u64>,
    since: Instant,
}

/// An open phase; closing it (dropping it) takes it off the screen.
#[derive(Debug)]
#[must_use = "a phase is shown while it is alive"]
pub struct Phase {
    open: bool,
}

/// A phase of unknown size: its label and how long it has run.
pub fn phase(label: &str) -> Phase {
    open(label, None)
}

/// A phase of `total` units (events, packets, ...); its position comes from `set` or
/// `set_remaining`.
pub fn counted(label: &str, total: u64) -> Phase {
    open(label, Some(total))
}

/// Runs `f` as a `phase` labelled `label`.
pub fn during<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let _phase = phase(label);
    f()
}

/// Runs `f` as a phase of `total` units (`counted`).
pub fn counting<T>(label: &str, total: u64, f: impl FnOnce() -> T) -> T {
    let _phase = counted(label, total);
    f()
}

/// The innermost phase has done `done` units.
pub fn set(done: u64) {
    DONE.store(done, Ordering::Relaxed);
}

/// The innermost phase has `remaining` units to go.
pub fn set_remaining(remaining: u64) {
    REMAINING.store(remaining.min(UNSET - 1), Ordering::Relaxed);
}

/// Whether progress is drawn at all: stderr is a terminal and `NET_BENCH_NO_PROGRESS` unset.
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::io::stderr().is_terminal() && std::env::var_os("NET_BENCH_NO_PROGRESS").is_none()
    })
}

fn state() -> MutexGuard<'static, State> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open(label: &str, total: Option<u64>) -> Phase {
    if !enabled() {
        return Phase { open: false };
    }
    let mut state = state();
    let now = Instant::now();
    state.first_phase.get_or_insert(now);
    state.phases.push(Entry {
        label: label.to_owned(),
        total,
        since: now,
    });
    state.generation += 1;
    DONE.store(0, Ordering::Relaxed);
    REMAINING.store(UNSET, Ordering::Relaxed);
    if !state.ticker {
        state.ticker = std::thread::Builder::new()
            .name("net-bench-progress".to_owned())
            .spawn(tick)
            .is_ok();
    }
    Phase { open: true }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let mut state = state();
        state.phases.pop();
        state.generation += 1;
        // The last phase clears the screen at once: what the scenario prints next must not
        // share a line with a bar.
        if state.phases.is_empty()
            && let Some((bar, _)) = state.bar.take()
        {
            bar.finish_and_clear();
        }
    }
}

/// The ticker thread: redraws the innermost phase every `TICK`.
fn tick() {
    crate::alloc::uncounted();
    loop {
        std::thread::sleep(TICK);
        let mut state = state();
        let shown = state.first_phase.is_some_and(|t| t.elapsed() >= SHOW_AFTER);
        let Some(entry) = state.phases.last().filter(|_| shown) else {
            if let Some((bar, _)) = state.bar.take() {
                bar.finish_and_clear();
            }
            continue;
        };
        let (generation, total) = (state.generation, entry.total);
        let bar = match &state.bar {
            Some((bar, g)) if *g == generation => bar.clone(),
            _ => {
                let bar = new_bar(entry);
                if let Some((old, _)) = state.bar.replace((bar.clone(), generation)) {
                    old.finish_and_clear();
                }
                bar
            }
        };
        if let Some(total) = total {
            bar.set_position(position(total));
        } else {
            bar.tick();
        }
    }
}

fn new_bar(entry: &Entry) -> ProgressBar {
    let template = match entry.total {
        Some(_) => "{spinner} {msg} [{elapsed}] {wide_bar} {human_pos}/{human_len} (eta {eta})",
        None => "{spinner} {msg} [{elapsed}]",
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::with_draw_target(entry.total, ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(entry.label.clone())
        .with_elapsed(entry.since.elapsed())
}

/// The innermost phase's position out of `total`.
fn position(total: u64) -> u64 {
    position_of(
        total,
        DONE.load(Ordering::Relaxed),
        REMAINING.load(Ordering::Relaxed),
    )
}

fn position_of(total: u64, done: u64, remaining: u64) -> u64 {
    match remaining {
        UNSET => done.min(total),
        remaining => total.saturating_sub(remaining),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_up_or_down_and_stays_within_the_total() {
        assert_eq!(position_of(100, 30, UNSET), 30);
        assert_eq!(position_of(100, 230, UNSET), 100);
        assert_eq!(position_of(100, 30, 25), 75);
        assert_eq!(position_of(100, 30, 500), 0);
    }

    #[test]
    fn phases_are_inert_without_a_terminal() {
        // Tests run with stderr captured or piped: nothing opens, no ticker starts.
        if !std::io::stderr().is_terminal() {
            let phase = counted("test", 10);
            assert!(!phase.open);
            assert!(!state().ticker);
        }
    }
}
