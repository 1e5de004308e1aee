//! Open-loop pacing for latency phases (wrk2-style), so that latency is measured at a load the
//! design can sustain and corrected for coordinated omission.
//!
//! A closed loop sends as fast as the design accepts, so a stalled design also stalls the load
//! that would have observed the stall: its percentiles are queue-full latency, and they hide
//! the events that were never sent during a stall (Gil Tene, "How NOT to measure latency";
//! wrk2). Here producer k of n sends its i-th event at the intended time
//! `start + i * n / rate` seconds, computed from `start` rather than from the previous send so
//! the schedule never drifts; it waits until then (spinning close to the due time, yielding
//! its core before), and when it is already late it sends at
//! once and skips nothing. Latency is measured from the intended time, so the time an event
//! spent waiting behind a slow predecessor is counted, as it would be for a real client.
//!
//! All times are `net_engine::monotonic_ns` (CLOCK_MONOTONIC ns), the clock net's shards stamp
//! persistence with; the clock is a parameter so that the arithmetic can be tested with a fake.

use hdrhistogram::Histogram;
use net_engine::monotonic_ns;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Paced rate when `--rate` is not given, events/s over all producers.
pub const RATE_PER_S_DEFAULT: u64 = 1_000_000;

/// The default rate is used only below this share (%) of the baseline's measured throughput:
/// nearer saturation the baseline's queues fill and the phase measures queueing again.
pub const RATE_SHARE_OF_BASELINE_MAX_PCT: u64 = 60;

/// Share (%) of the baseline's measured throughput paced at when the default rate is too high.
pub const RATE_SHARE_OF_BASELINE_FALLBACK_PCT: u64 = 50;

/// Paced events when `--latency-events` is not given: at most this many ...
pub const EVENTS_DEFAULT_MAX: u64 = 2_000_000;

/// ... and at most this many seconds' worth at the paced rate.
pub const PHASE_S_DEFAULT: u64 = 2;

/// How far ahead of the release the schedule starts, so that producer threads are running
/// (not still being woken by the barrier) when their first event is due.
pub const START_LEAD_NS: u64 = 1_000_000;

const _: () = assert!(RATE_SHARE_OF_BASELINE_FALLBACK_PCT < RATE_SHARE_OF_BASELINE_MAX_PCT);

/// The paced rate: `requested` when given; otherwise the default unless it is at least
/// `RATE_SHARE_OF_BASELINE_MAX_PCT` of the baseline's measured throughput, in which case
/// `RATE_SHARE_OF_BASELINE_FALLBACK_PCT` of it, so that both designs can sustain the pace.
pub fn rate_per_s(requested: Option<u64>, baseline_events_per_s: u64) -> u64 {
    if let Some(rate) = requested {
        return rate;
    }
    let baseline = u128::from(baseline_events_per_s);
    if u128::from(RATE_PER_S_DEFAULT) * 100 >= baseline * u128::from(RATE_SHARE_OF_BASELINE_MAX_PCT)
    {
        let fallback = baseline * u128::from(RATE_SHARE_OF_BASELINE_FALLBACK_PCT) / 100;
        return u64::try_from(fallback).expect("below a u64 rate").max(1);
    }
    RATE_PER_S_DEFAULT
}

/// Paced events: `requested` when given, else the smaller of `EVENTS_DEFAULT_MAX` and
/// `PHASE_S_DEFAULT` seconds at `rate_per_s`.
pub fn events(requested: Option<u64>, rate_per_s: u64) -> u64 {
    requested.unwrap_or_else(|| EVENTS_DEFAULT_MAX.min(rate_per_s.saturating_mul(PHASE_S_DEFAULT)))
}

/// A paced phase shared by its producers: the rate, and the start time that the releasing
/// thread publishes just before the release (the barrier orders it before every read).
#[derive(Debug, Clone)]
pub struct Pace {
    rate_per_s: u64,
    producers: u64,
    start_ns: Arc<AtomicU64>,
}

impl Pace {
    pub fn new(rate_per_s: u64, producers: usize) -> Pace {
        assert!(
            rate_per_s > 0 && producers > 0,
            "a pace needs a rate and producers"
        );
        Pace {
            rate_per_s,
            producers: producers as u64,
            start_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the schedule `START_LEAD_NS` after `now_ns`; call before releasing producers.
    pub fn start(&self, now_ns: u64) {
        self.start_ns
            .store(now_ns + START_LEAD_NS, Ordering::Release);
    }

    /// Every producer's schedule; call after the release.
    pub fn schedule(&self) -> Schedule {
        let start_ns = self.start_ns.load(Ordering::Acquire);
        assert!(
            start_ns > 0,
            "the pace is started before producers are released"
        );
        Schedule {
            start_ns,
            rate_per_s: self.rate_per_s,
            producers: self.producers,
        }
    }
}

/// One producer's intended send times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    rate_per_s: u64,
    producers: u64,
}

impl Schedule {
    /// When event `i` of a producer is due: `start + i * producers / rate` seconds, exact in
    /// integer nanoseconds (no accumulated rounding).
    pub fn intended_ns(&self, i: u64) -> u64 {
        let offset = u128::from(i) * u128::from(self.producers) * 1_000_000_000
            / u128::from(self.rate_per_s);
        self.start_ns + u64::try_from(offset).expect("a phase lasts less than 584 years")
    }
}

/// Below this much time to wait a producer spins; above it, it yields its core.
pub const YIELD_ABOVE_NS: u64 = 1_000;

/// Waits until `clock()` reaches `intended_ns` and returns the reading that did; a late
/// caller gets its first reading back at once. Far from the due time it yields the core
/// instead of spinning: on a machine with as many busy threads as cores (2 producers and 2
/// shards here), spinning producers would starve the very shards being measured.
pub fn wait_until(intended_ns: u64, clock: impl Fn() -> u64) -> u64 {
    loop {
        let now_ns = clock();
        if now_ns >= intended_ns {
            return now_ns;
        }
        if intended_ns - now_ns > YIELD_ABOVE_NS {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Waits until event `i` is due on `schedule`, records in `lag` how many ns late the wait
/// ended (zero unless the producer is behind), and returns the intended time: the origin
/// every latency of this event is measured from.
pub fn due(schedule: &Schedule, i: u64, lag: &mut Histogram<u64>) -> u64 {
    let intended_ns = schedule.intended_ns(i);
    let now_ns = wait_until(intended_ns, monotonic_ns);
    lag.saturating_record(now_ns - intended_ns);
    intended_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn default_rate_falls_back_to_half_the_baseline_near_its_saturation() {
        assert_eq!(rate_per_s(Some(123), 10), 123, "a requested rate is kept");
        assert_eq!(rate_per_s(None, 5_000_000), RATE_PER_S_DEFAULT);
        assert_eq!(rate_per_s(None, 1_700_000), RATE_PER_S_DEFAULT);
        assert_eq!(
            rate_per_s(None, 1_666_667),
            RATE_PER_S_DEFAULT,
            "just above 60%"
        );
        assert_eq!(rate_per_s(None, 1_666_666), 833_333, "just at 60%");
        assert_eq!(rate_per_s(None, 1_500_000), 750_000);
        assert_eq!(rate_per_s(None, 1), 1, "never zero");
        assert_eq!(rate_per_s(None, u64::MAX), RATE_PER_S_DEFAULT);
    }

    #[test]
    fn default_events_are_two_seconds_capped_at_two_million() {
        assert_eq!(events(Some(7), 1_000_000), 7);
        assert_eq!(events(None, 1_000_000), 2_000_000);
        assert_eq!(events(None, 5_000_000), 2_000_000);
        assert_eq!(events(None, 300_000), 600_000);
    }

    #[test]
    fn schedule_spaces_each_producer_by_producers_over_rate_without_drift() {
        let pace = Pace::new(750_000, 2);
        pace.start(1_000);
        let s = pace.schedule();
        let start = 1_000 + START_LEAD_NS;
        assert_eq!(s.intended_ns(0), start);
        assert_eq!(s.intended_ns(1), start + 2_666); // 2/750k s = 2666.67 ns, floored
        assert_eq!(s.intended_ns(3), start + 8_000);
        assert_eq!(
            s.intended_ns(750_000),
            start + 2_000_000_000,
            "no drift after 2 s"
        );
    }

    #[test]
    fn waits_spin_until_due_and_late_callers_go_at_once() {
        let now = Cell::new(100);
        let tick = || {
            now.set(now.get() + 10);
            now.get()
        };
        assert_eq!(wait_until(150, tick), 150);
        assert_eq!(
            wait_until(100, tick),
            160,
            "late: the first reading is returned"
        );
    }
}
